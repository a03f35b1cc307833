"""`trtq`: the command line. Each sub-command is a thin shell over one Python verb.

Errors in the user's input print one line (`trtq: error: ...`) and exit with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trtq.errors import TrtqError

EPILOG = """examples:
  trtq recipes
  trtq quantize --model digits-unet --recipe w8a8-minmax --out artifacts/unet-w8a8
  trtq eval --model digits-unet --artifact artifacts/unet-w8a8 --samples 200 --json unet.json
  trtq eval --model digits-dit --recipe modelopt-int8 --json dit-modelopt.json
  trtq demo --out out/demo

MODEL is a zoo name (digits-unet, digits-dit) or a local model directory in the same diffusers layout."""


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def cmd_recipes(args) -> None:
    from trtq.baselines import BASELINES
    from trtq.recipes import get_recipe, list_recipes

    rows = []
    for name in list_recipes():
        r = get_recipe(name)
        first = r.description.split(". ")[0].rstrip(".")
        rows.append((name, "yes" if r.needs_calibration else "no", first))
    rows += [(name, "yes", f"outside baseline: {desc}") for name, (_, desc) in BASELINES.items()]
    width = max(len(r[0]) for r in rows)
    print(f"{'recipe':<{width}}  calib  description")
    for name, calib, desc in rows:
        print(f"{name:<{width}}  {calib:<5}  {desc}")


def cmd_quantize(args) -> None:
    from trtq.artifact import save_artifact
    from trtq.baselines import BASELINES
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, quantized_denoiser
    from trtq.zoo import load_model

    if args.recipe in BASELINES:
        raise TrtqError(f"{args.recipe} is an outside baseline for comparison (trtq eval); it makes no artifact")
    spec = QuantSpec(recipe=args.recipe)
    spec.check()
    out = Path(args.out)
    if out.exists() and not (out / "manifest.json").is_file():
        raise TrtqError(f"{out} exists and is not a trtq artifact; refusing to overwrite it")
    cfg = SamplingConfig(calib_samples=args.calib_samples, steps=args.steps, progress=True)
    model = load_model(args.model)
    denoiser = quantized_denoiser(model, spec, cfg)
    save_artifact(denoiser, out, model_name=model.name,
                  extra={"calibration": {"samples": cfg.calib_samples, "steps": cfg.steps, "scheduler": cfg.scheduler}})
    print(f"wrote {out} ({spec.label} on {model.name})")


def cmd_eval(args) -> None:
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, evaluate

    spec = QuantSpec(recipe=args.recipe, artifact=args.artifact)
    cfg = SamplingConfig(samples=args.samples, steps=args.steps, scheduler=args.scheduler, seed=args.seed,
                         calib_samples=args.calib_samples, progress=not args.quiet, device=args.device)
    if args.json and Path(args.json).is_dir():
        raise TrtqError(f"--json {args.json} is a directory")
    result = evaluate(args.model, spec, cfg)
    text = json.dumps(result, indent=2)
    if args.json:
        _write_json_atomic(Path(args.json), result)
        print(f"wrote {args.json}")
    print(text)


def cmd_demo(args) -> None:
    from trtq.demo import run_demo

    run_demo(Path(args.out), samples=args.samples)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trtq", description="Quantize diffusion models and measure what it costs.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("recipes", help="list the built-in recipes and outside baselines")
    s.set_defaults(func=cmd_recipes)

    def sampling_args(s):
        s.add_argument("--steps", type=int, default=20, help="sampling steps, also for calibration (default 20)")
        s.add_argument("--calib-samples", type=int, default=20, help="calibration trajectories (default 20)")

    s = sub.add_parser("quantize", help="quantize a model with a recipe and save the artifact")
    s.add_argument("--model", required=True, help="zoo name or local model directory")
    s.add_argument("--recipe", required=True, help="recipe name (see `trtq recipes`) or YAML/JSON file")
    s.add_argument("--out", required=True, help="artifact directory to write")
    sampling_args(s)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("eval", help="sample FP and quantized from the same noise; print metrics as JSON")
    s.add_argument("--model", required=True, help="zoo name or local model directory")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--recipe", help="recipe name or file, or an outside baseline (modelopt-int8, modelopt-fp8)")
    g.add_argument("--artifact", help="artifact directory written by `trtq quantize`")
    s.add_argument("--samples", type=int, default=100, help="images per run (default 100)")
    s.add_argument("--scheduler", default="ddim", choices=["ddim", "dpmpp"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="also write the metrics to this file")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N] (sampling and quantization; default cpu)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    sampling_args(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("demo", help="FP vs w8a8-minmax vs modelopt INT8 on both zoo models: grid + report")
    s.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    s.add_argument("--samples", type=int, default=100, help="images per model and recipe (default 100)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TrtqError as e:
        print(f"trtq: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
