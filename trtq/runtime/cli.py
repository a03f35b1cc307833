"""`trtq run` and `trtq profile`: the CLI shells over `trtq.runtime.generate` and `trtq.runtime.profile`.

Wired into `trtq/cli.py` with `add_runtime_parsers(sub)`. Every check of the user's input runs before a model
is loaded or anything is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trtq.errors import TrtqError

BACKEND_CHOICES = ("auto", "eager", "torch", "onnxruntime", "tensorrt")

RUN_EXAMPLES = """examples:
  trtq run --model digits-unet --labels 0,1,2,3 --out out/run
  trtq run --model digits-dit --artifact artifacts/dit-w8a8 --backend onnxruntime --samples 20 --out out/run-dit
  trtq run --model digits-unet --recipe w8a8-minmax --backend torch --device cuda --out out/run-cuda

Writes one PNG per image, grid.png and run.json (backend taken, seconds, device). --backend auto takes the
fastest backend this machine has (docs/runtime.md)."""

PROFILE_EXAMPLES = """examples:
  trtq profile --model digits-unet --recipe w8a8-minmax --backends eager,onnxruntime --out out/profile
  trtq profile --model digits-dit --artifact artifacts/dit-w8a8 --backends eager,torch --device cuda --out out/prof

Writes profile.json (latency per image and per step, median and p90, peak memory, time per layer class) and
latency.png / layers.png. On a CPU the numbers are labelled CPU numbers: they say nothing about GPU speed."""


def _source_args(s) -> None:
    s.add_argument("--model", required=True,
                   help="zoo name (digits-unet, digits-dit), local zoo-layout model directory, or a diffusers "
                        "pipeline folder with model_index.json (SD 1.5, SDXL, DiT, PixArt-α)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--recipe", help="quantize with this recipe first (calibrating on the zoo sampler, or through a "
                                    "diffusers folder's pipeline on built-in prompts / spread labels)")
    g.add_argument("--artifact", help="artifact directory written by `trtq quantize` for this model")
    g.add_argument("--onnx", help="ONNX export directory written by `trtq export` (graph backends)")
    s.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    s.add_argument("--calib-samples", type=int, default=20, help="calibration trajectories with --recipe")
    s.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime (default: their own)")
    s.add_argument("--fallback", choices=["torch", "eager"],
                   help="run calls outside a graph's profile on this backend (with a warning) instead of failing")


def add_folder_args(parser, steps: bool = False) -> None:
    """The calibration options of a diffusers folder (`quantize`, `export`, `build` with --model DIR)."""
    parser.add_argument("--prompts", help="diffusers text-to-image folder: calibration prompts, one per line "
                                          "(default: a small built-in set)")
    parser.add_argument("--labels", help="diffusers DiT folder: comma-separated calibration class labels "
                                         "(default: spread over the classes)")
    parser.add_argument("--device", default="cpu", help="diffusers folder: where the pipeline calibrates "
                                                        "(cpu, cuda[:N]; default cpu)")
    if steps:
        parser.add_argument("--steps", type=int, default=20, help="calibration sampling steps (default 20)")


def check_folder_args(args) -> None:
    """Checks of the folder options, before anything is loaded; the folder options on a zoo model are refused."""
    from trtq.cli import check_device
    from trtq.runtime.folder import is_diffusers_folder, pipeline_class, read_prompts

    folder = is_diffusers_folder(args.model)
    given = [f"--{k}" for k in ("prompts", "labels") if getattr(args, k, None)]
    if not folder and (given or getattr(args, "device", "cpu") != "cpu"):
        raise TrtqError(f"{' '.join(given) or '--device'} is for diffusers pipeline folders; {args.model} is not "
                        "one (no model_index.json)")
    if folder:
        pipeline_class(args.model)
        check_device(args.device)
        if args.prompts:
            read_prompts(args.prompts)
        if args.labels:
            parse_labels_any(args.labels)


def add_runtime_parsers(subparsers) -> None:
    s = subparsers.add_parser("run", help="generate images on an accelerated pipeline: PNGs and a grid",
                              description="Generate images with a zoo model on the chosen backend.",
                              epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _source_args(s)
    s.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="default auto")
    s.add_argument("--labels", help="comma-separated class labels (default: --samples labels 0..9 in turn)")
    s.add_argument("--prompt", action="append", default=[], help="a prompt (diffusers text-to-image folders; "
                                                                 "repeatable: one image each)")
    s.add_argument("--samples", type=int, default=10, help="images when --labels is not given (default 10)")
    s.add_argument("--out", default="out/run", help="output directory (default out/run)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_run)

    s = subparsers.add_parser("profile", help="latency per image/step per backend, time per layer class: JSON + plots",
                              description="Profile FP and quantized on each backend.", epilog=PROFILE_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _source_args(s)
    s.add_argument("--backends", default="eager,onnxruntime",
                   help="comma-separated backends to time (default eager,onnxruntime); FP runs on the torch-module "
                        "backends among them")
    s.add_argument("--batch", type=int, default=1, help="images per pipeline call (CFG doubles it; default 1)")
    s.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    s.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    s.add_argument("--out", default="out/profile", help="output directory (default out/profile)")
    s.set_defaults(func=cmd_profile, steps=10)


def _check(args) -> None:
    from trtq.cli import check_device, check_output_dir

    if not 1 <= args.steps <= 1000:
        raise TrtqError(f"--steps must be in [1, 1000], got {args.steps}")
    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            raise TrtqError(f"--threads must be in [1, 1024], got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    check_device(args.device)
    check_output_dir(Path(args.out), "--out")
    for flag in ("artifact", "onnx"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_dir():
            raise TrtqError(f"--{flag} {path} is not a directory")
    if args.recipe is not None:
        from trtq.recipes import get_recipe

        get_recipe(args.recipe)


def _load(args):
    """(model on its device, the source for accelerate, a label for it)."""
    from trtq.zoo import load_model

    model = load_model(args.model).to(args.device)
    if args.recipe is not None:
        from trtq.eval.evaluate import QuantSpec, SamplingConfig, quantized_denoiser

        cfg = SamplingConfig(calib_samples=args.calib_samples, steps=args.steps, progress=False, device=args.device)
        return model, quantized_denoiser(model, QuantSpec(recipe=args.recipe), cfg), args.recipe
    if args.artifact is not None:
        from trtq.artifact import check_artifact

        manifest = check_artifact(args.artifact, model.denoiser, model.name)
        return model, args.artifact, manifest["recipe"]["name"]
    if args.onnx is not None:
        return model, args.onnx, "onnx"
    return model, None, "fp32"


def cmd_run(args) -> None:
    from trtq.pipeline import balanced_labels
    from trtq.runtime.generate import generate, parse_labels

    _check(args)
    from trtq.runtime.folder import is_diffusers_folder

    if is_diffusers_folder(args.model):
        return _run_diffusers(args)
    if args.prompt:
        raise TrtqError("--prompt is for diffusers text-to-image folders; zoo models take --labels")
    if args.labels is None and not 1 <= args.samples <= 10_000:
        raise TrtqError(f"--samples must be in [1, 10000], got {args.samples}")
    model, source, label = _load(args)
    labels = parse_labels(args.labels, model.num_classes) if args.labels else balanced_labels(args.samples,
                                                                                             model.num_classes)
    report = generate(model, source, labels, Path(args.out), backend=args.backend, steps=args.steps,
                      seed=args.seed, progress=not args.quiet, fallback=args.fallback, threads=args.threads)
    print(f"{len(labels)} images ({label} on {model.name}, backend {report['backend']}, {report['device']}) in "
          f"{report['seconds']:.2f} s: {Path(args.out) / 'grid.png'}")


def _run_diffusers(args) -> None:
    from trtq.runtime.folder import load_diffusers_pipeline
    from trtq.runtime.generate import generate_diffusers

    labels = None
    if args.labels:
        labels = parse_labels_any(args.labels)
    pipe = load_diffusers_pipeline(args.model, args.device)
    source, _ = _folder_source(args, pipe)
    report = generate_diffusers(pipe, source, Path(args.out), labels=labels, prompts=args.prompt or None,
                                backend=args.backend, steps=args.steps, seed=args.seed, progress=not args.quiet,
                                fallback=args.fallback, threads=args.threads)
    print(f"{len(report['images'])} images ({report['model']}, backend {report['backend']}, {report['device']}) in "
          f"{report['seconds']:.2f} s: {Path(args.out) / 'grid.png'}")


def _folder_source(args, pipe) -> tuple[object, str]:
    """(source for accelerate, its label) of a diffusers folder: --recipe quantizes its denoiser, calibrated
    through the pipeline on the built-in prompts (labels spread over the classes for DiT); --artifact and
    --onnx are used as they are."""
    if args.recipe is not None:
        from trtq.runtime.folder import quantized_folder_denoiser

        denoiser, _ = quantized_folder_denoiser(pipe, args.model, recipe=args.recipe, samples=args.calib_samples,
                                                steps=args.steps, seed=args.seed, progress=False)
        return denoiser, args.recipe
    if args.artifact is not None:
        from trtq.artifact import read_manifest

        return args.artifact, read_manifest(args.artifact)["recipe"]["name"]
    if args.onnx is not None:
        return args.onnx, "onnx"
    return None, "fp32"


def parse_labels_any(text: str) -> list[int]:
    try:
        labels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        labels = []
    if not labels or min(labels) < 0:
        raise TrtqError(f"--labels must be comma-separated non-negative integers, got {text!r}")
    return labels


def cmd_profile(args) -> None:
    from trtq.runtime.profile import merge_reports, profile_zoo, write_profile

    _check(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKEND_CHOICES]
    if not backends or bad:
        raise TrtqError(f"--backends takes a comma-separated list of {', '.join(BACKEND_CHOICES)}, "
                        f"got {args.backends!r}")
    from trtq.runtime.folder import is_diffusers_folder

    if is_diffusers_folder(args.model):
        from trtq.runtime.folder import load_diffusers_pipeline, model_name
        from trtq.runtime.profile import profile_folder

        pipe = load_diffusers_pipeline(args.model, args.device)
        source, label = _folder_source(args, pipe)
        run = lambda configs, bks, **kw: profile_folder(pipe, model_name(args.model), configs, bks, **kw)  # noqa: E731
    else:
        model, source, label = _load(args)
        run = lambda configs, bks, **kw: profile_zoo(model, configs, bks, **kw)  # noqa: E731
    # The float model has no export (ONNX export takes quantized models), so FP is timed on the torch-module
    # backends asked for (eager if none): the baseline each quantized row is read against.
    fp_backends = [b for b in backends if b in ("eager", "torch")] or ["eager"]
    parts = [run([("fp32", None)], fp_backends, batch=args.batch, steps=args.steps, warmup=args.warmup,
                 repeats=args.repeats, seed=args.seed, threads=args.threads)]
    if source is not None:
        parts.append(run([(label, source)], backends, batch=args.batch, steps=args.steps, warmup=args.warmup,
                         repeats=args.repeats, seed=args.seed, fallback=args.fallback, threads=args.threads))
    report = merge_reports(parts)
    for path in write_profile(report, Path(args.out)):
        print(f"wrote {path}")
    for r in report["latency"]:
        print(f"  {r['config']:<20} {r['backend']:<12} per image {r['per_image_ms']['median']:9.2f} ms "
              f"(p90 {r['per_image_ms']['p90']:.2f}), per step {r['per_step_ms']['median']:8.2f} ms"
              + ("  [CPU numbers]" if report["cpu_numbers"] else ""))
