"""`trtq`: the command line. Each sub-command is a thin shell over one Python verb.

Errors in the user's input print one line (`trtq: error: ...`) and exit with status 2, having written nothing:
every argument, and every output path (`--out`, `--json`), is checked before any work starts, so a typo costs
nothing and a minute of calibration is never lost to an unwritable path. `--debug` (or TRTQ_DEBUG=1) adds
the traceback, for bug reports. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from trtq.errors import TrtqError
from trtq.engine.cli import add_build_parser
from trtq.export.cli import add_export_parser
from trtq.runtime.cli import add_folder_args, add_runtime_parsers

# Bounds that keep a typo from turning into days of work or an out-of-memory kill.
MAX_SAMPLES = 100_000
MAX_STEPS = 1_000
MAX_CALIB_SAMPLES = 10_000
CUDA_ONLY_BASELINES = ("modelopt-nvfp4",)

EPILOG = """examples:
  trtq recipes
  trtq quantize --model digits-unet --recipe w8a8-minmax --out artifacts/unet-w8a8
  trtq eval --model digits-unet --artifact artifacts/unet-w8a8 --samples 200 --json unet.json
  trtq eval --model digits-dit --recipe modelopt-int8 --json dit-modelopt.json
  trtq demo --out out/demo
  trtq build --model digits-unet --recipe w8a8-minmax      # ONNX export + TensorRT engine in engines/

MODEL is a zoo name (digits-unet, digits-dit) or a local model directory in the same diffusers layout."""


# ------------------------------------------------------------------------------------------ pre-flight checks
def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, flag: str) -> None:
    """Everything above `path` that exists is a directory we can write into (probed with an empty temp dir,
    removed at once: permissions, read-only mounts and root-only places all answer the same way)."""
    anchor = _nearest_existing(path.parent)
    if anchor.exists() and not anchor.is_dir():
        raise TrtqError(f"{flag} {path}: {anchor} is a file, so nothing can be created under it")
    if not anchor.exists():  # a dangling symlink or a symlink loop
        raise TrtqError(f"{flag} {path}: {anchor} is a broken symlink")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trtq-probe-", dir=anchor))
    except OSError as e:
        raise TrtqError(f"{flag} {path}: cannot write in {anchor} ({e.strerror or e})") from None


def check_output_dir(path: Path, flag: str, replaceable=None, what: str = "directory") -> None:
    """An output directory: creatable, or existing as a directory (and `replaceable(path)` if given)."""
    if os.path.lexists(path):
        if not path.is_dir():
            raise TrtqError(f"{flag} {path} exists and is not a directory")
        if replaceable is not None and not replaceable(path):
            raise TrtqError(f"{path} exists and is not a {what}; refusing to overwrite it")
        _check_creatable(path / "x", flag)
    _check_creatable(path, flag)


def check_output_file(path: Path, flag: str) -> None:
    if os.path.lexists(path) and not path.is_file():
        raise TrtqError(f"{flag} {path} exists and is not a regular file")
    _check_creatable(path, flag)


def check_counts(args) -> None:
    for flag, attr, lo, hi in (("--samples", "samples", 2, MAX_SAMPLES), ("--steps", "steps", 1, MAX_STEPS),
                               ("--calib-samples", "calib_samples", 1, MAX_CALIB_SAMPLES)):
        value = getattr(args, attr, None)
        if value is not None and not lo <= value <= hi:
            extra = " (the Fréchet distance needs two samples)" if attr == "samples" and value < 2 else ""
            raise TrtqError(f"{flag} must be in [{lo}, {hi}], got {value}{extra}")


def check_device(device: str) -> None:
    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise TrtqError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrtqError(f"--device {device}: no CUDA device is visible to torch on this machine")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise TrtqError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_baseline_device(recipe: str | None, device: str) -> None:
    if recipe in CUDA_ONLY_BASELINES and not device.startswith("cuda"):
        raise TrtqError(f"{recipe} runs only on a CUDA GPU (its FP4 kernels have no CPU path): use --device cuda")


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
    from trtq.recipes import parse_overrides
    from trtq.baselines import BASELINES
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, quantized_denoiser
    from trtq.zoo import load_model

    from trtq.artifact import is_artifact_dir
    from trtq.runtime.cli import check_folder_args
    from trtq.runtime.folder import folder_denoiser_from_args, is_diffusers_folder, model_name

    if args.recipe in BASELINES:
        raise TrtqError(f"{args.recipe} is an outside baseline for comparison (trtq eval); it makes no artifact")
    check_counts(args)
    out = Path(args.out)
    check_output_dir(out, "--out", is_artifact_dir, "trtq artifact")
    spec = QuantSpec(recipe=args.recipe, overrides=tuple(parse_overrides(args.set).items()))
    spec.check()
    check_folder_args(args)
    if is_diffusers_folder(args.model):
        _, denoiser, info = folder_denoiser_from_args(args, recipe=spec.resolved_recipe())
        save_artifact(denoiser, out, model_name=model_name(args.model), extra={"calibration": info})
        peak = info["peak_memory"]["peak_bytes"] / 2**30
        print(f"wrote {out} ({spec.label} on {model_name(args.model)}; calibrated on {args.device} in "
              f"{info['seconds']:.1f} s, peak memory {peak:.2f} GiB ({info['peak_memory']['kind']}))")
        return
    cfg = SamplingConfig(calib_samples=args.calib_samples, steps=args.steps, progress=True)
    model = load_model(args.model)
    denoiser = quantized_denoiser(model, spec, cfg)
    save_artifact(denoiser, out, model_name=model.name,
                  extra={"calibration": {"samples": cfg.calib_samples, "steps": cfg.steps, "scheduler": cfg.scheduler}})
    print(f"wrote {out} ({spec.label} on {model.name})")


def cmd_eval(args) -> None:
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, evaluate

    from trtq.io.atomic import write_file_atomic

    check_counts(args)
    check_device(args.device)
    check_baseline_device(args.recipe, args.device)
    if args.json:
        check_output_file(Path(args.json), "--json")
    spec = QuantSpec(recipe=args.recipe, artifact=args.artifact)
    cfg = SamplingConfig(samples=args.samples, steps=args.steps, scheduler=args.scheduler, seed=args.seed,
                         calib_samples=args.calib_samples, progress=not args.quiet, device=args.device)
    result = evaluate(args.model, spec, cfg)
    text = json.dumps(result, indent=2)
    if args.json:
        write_file_atomic(Path(args.json), (text + "\n").encode(), what="--json")
        print(f"wrote {args.json}")
    print(text)


def cmd_demo(args) -> None:
    from trtq.demo import run_demo

    check_counts(args)
    check_output_dir(Path(args.out), "--out")
    run_demo(Path(args.out), samples=args.samples)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as trtq's one line (exit status 2 as before)."""

    def error(self, message: str):
        print(f"trtq: error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trtq", description="Quantize diffusion models and measure what it costs.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (also: environment variable TRTQ_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("recipes", help="list the built-in recipes and outside baselines")
    s.set_defaults(func=cmd_recipes)

    def sampling_args(s):
        s.add_argument("--steps", type=int, default=20, help="sampling steps, also for calibration (default 20)")
        s.add_argument("--calib-samples", type=int, default=20, help="calibration trajectories (default 20)")

    s = sub.add_parser("quantize", help="quantize a model with a recipe and save the artifact")
    s.add_argument("--model", required=True, help="zoo name, local model directory, or a diffusers pipeline folder "
                                                  "(model_index.json: SD 1.5, SDXL, DiT, PixArt-α), calibrated "
                                                  "through the pipeline on --prompts / --labels")
    s.add_argument("--recipe", required=True, help="recipe name (see `trtq recipes`) or YAML/JSON file")
    s.add_argument("--out", required=True, help="artifact directory to write")
    s.add_argument("--set", action="append", default=[], metavar="METHOD.KNOB=VALUE",
                   help="change a method knob without writing a recipe, e.g. --set winograd.steps=50 (repeatable)")
    sampling_args(s)
    add_folder_args(s)
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

    add_export_parser(sub)
    add_runtime_parsers(sub)  # run, profile
    add_build_parser(sub)

    s = sub.add_parser("inspect", help="what a recipe does to a model, layer by layer; or an exported ONNX graph",
                       description="trtq inspect --model M --recipe R: per layer, the kind and scheme it gets and "
                                   "the rule or role that decided. trtq inspect PATH: an exported ONNX graph's "
                                   "nodes per op and precision, plugin nodes, initializer bytes by dtype, and what "
                                   "TensorRT's parser would refuse.")
    s.add_argument("path", nargs="?", help="model.onnx or an export directory")
    s.add_argument("--model", help="zoo name, architecture name (sd15, sdxl, dit-xl-2, pixart-alpha, sd3-medium, "
                                   "flux-dev: built on the meta device) or a diffusers model directory")
    s.add_argument("--recipe", help="recipe name or YAML/JSON file")
    s.add_argument("--set", action="append", default=[], metavar="METHOD.KNOB=VALUE", help="method knob override")
    s.add_argument("--json", action="store_true", help="ONNX summary as JSON")
    s.set_defaults(func=cmd_inspect)
    return p


def cmd_inspect(args) -> None:
    if args.path is not None:
        if args.model or args.recipe:
            raise TrtqError("inspect takes either an ONNX PATH or --model and --recipe, not both")
        from trtq.export.cli import cmd_inspect_onnx

        return cmd_inspect_onnx(args)
    if not (args.model and args.recipe):
        raise TrtqError("inspect needs an ONNX PATH, or --model and --recipe")
    from trtq.inspect import format_plan, model_for_inspection, quantization_plan
    from trtq.recipes import get_recipe, parse_overrides

    recipe = get_recipe(args.recipe).with_overrides(parse_overrides(args.set))
    print(format_plan(quantization_plan(model_for_inspection(args.model), recipe)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("TRTQ_DEBUG", "") not in ("", "0")
    try:
        args.func(args)
    except TrtqError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"trtq: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, always
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
