"""`trtq export` and `trtq inspect`: the CLI shells over `export_onnx` and `summarize`.

Wired into `trtq/cli.py` with two lines:
    from trtq.export.cli import add_export_parser
    add_export_parser(sub)          # adds `export` and `inspect`; each sets args.func
Every check of the user's input runs before the model is loaded or anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trtq.errors import TrtqError
from trtq.runtime.cli import add_folder_args

EXAMPLES = """examples:
  trtq export --model digits-unet --recipe w8a8-minmax --out onnx/unet-w8a8
  trtq export --model digits-unet --artifact artifacts/unet-w8a8 --out onnx/unet-w8a8 --batch 1:2:8 --resolution 16:32:64
  trtq export --model digits-dit --recipe w4a4-nvfp4 --out onnx/dit-nvfp4 --dtype bfloat16 --summary
  trtq inspect onnx/dit-nvfp4/model.onnx

The graph is strongly typed (precisions come from its Q/DQ nodes and dtypes); Winograd and FP4 layers are
trtq plugin nodes, each backed by an ONNX local function, so ONNX Runtime runs the file as it is.
manifest.json beside model.onnx holds the profiles (min/opt/max shapes) and plugin list a builder needs."""


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """"MIN:OPT:MAX" (or one number for all three) -> three ints, MIN <= OPT <= MAX."""
    parts = text.split(":")
    if len(parts) == 1:
        parts = parts * 3
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1 or not values[0] <= values[1] <= values[2]:
        raise TrtqError(f"--{what} must be MIN:OPT:MAX positive integers with MIN <= OPT <= MAX, got {text!r}")
    return values  # type: ignore[return-value]


def add_export_parser(subparsers) -> None:
    s = subparsers.add_parser("export", help="export a quantized denoiser to ONNX (+ manifest.json)",
                              description="Export a quantized denoiser as a strongly typed ONNX graph.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="zoo name (digits-unet, digits-dit), local model directory, or a "
                                                  "diffusers pipeline folder (model_index.json)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--recipe", help="recipe name or file: quantize (calibrating on the zoo sampler) and export")
    g.add_argument("--artifact", help="artifact directory written by `trtq quantize` for this model")
    s.add_argument("--out", required=True, help="directory for model.onnx and manifest.json")
    s.add_argument("--batch", default="1:2:4", help="batch profile MIN:OPT:MAX (default 1:2:4)")
    s.add_argument("--resolution", help="latent height = width profile MIN:OPT:MAX (default: the model's size)")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="activation dtype of the graph (default float16)")
    s.add_argument("--static", action="store_true", help="fixed shapes (the opt profile) instead of dynamic axes")
    s.add_argument("--calib-samples", type=int, default=20, help="calibration trajectories with --recipe")
    s.add_argument("--summary", action="store_true", help="print the graph summary after exporting")
    s.add_argument("--reference-io", action="store_true",
                   help="also write io/inputs.json and io/outputs.json (the PyTorch quantized model's output) for "
                        "`polygraphy run model.onnx --onnxrt|--trt --load-inputs ... --load-outputs ...`")
    add_folder_args(s, steps=True)
    s.set_defaults(func=cmd_export)


def cmd_export(args) -> None:
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, quantized_denoiser
    from trtq.export.onnx import check_out_dir, export_onnx, format_summary, summarize

    out = Path(args.out)
    check_out_dir(out)
    if args.reference_io:  # refused before quantizing, not after
        from trtq.export.reference_io import check_reference_io

        check_reference_io(args.dtype)
    batch = parse_range(args.batch, "batch")
    resolution = None if args.resolution is None else parse_range(args.resolution, "resolution")
    spec = QuantSpec(recipe=args.recipe, artifact=args.artifact)
    spec.check()  # unknown recipe / unreadable artifact: refused before the model is loaded
    if args.recipe is not None:
        from trtq.baselines import BASELINES

        if args.recipe in BASELINES:
            raise TrtqError(f"{args.recipe} is an outside baseline (trtq eval); it has no trtq layers to export")
    from trtq.runtime.cli import check_folder_args
    from trtq.runtime.folder import is_diffusers_folder

    check_folder_args(args)
    if is_diffusers_folder(args.model):
        return _export_folder(args, spec, out, batch, resolution)
    from trtq.zoo import load_model

    model = load_model(args.model)
    if args.artifact is not None:
        from trtq.artifact import check_artifact

        check_artifact(args.artifact, model.denoiser, model.name)  # a foreign artifact: refused before work
    cfg = SamplingConfig(calib_samples=args.calib_samples, progress=False)
    denoiser = quantized_denoiser(model, spec, cfg)
    export_onnx(denoiser, out, dynamic=not args.static, dtype=args.dtype, batch=batch, resolution=resolution,
                model_name=model.name, artifact=args.artifact, reference_io=args.reference_io)
    print(f"wrote {out / 'model.onnx'} and {out / 'manifest.json'} ({spec.label} on {model.name}, {args.dtype})")
    if args.summary:
        print(format_summary(summarize(out)))


def _export_folder(args, spec, out: Path, batch, resolution) -> None:
    """--model DIR: the pipeline's denoiser, quantized (calibrated through the pipeline) or loaded from an
    artifact, exported with the pipeline's prompt length; calibration on --device, export on the CPU."""
    from trtq.export.inputs import signature_of
    from trtq.export.onnx import export_onnx, format_summary, summarize
    from trtq.runtime.accelerate import text_tokens_of
    from trtq.runtime.folder import folder_denoiser_from_args, model_name

    pipe, denoiser, _ = folder_denoiser_from_args(
        args, recipe=spec.resolved_recipe() if args.recipe else None, artifact=args.artifact, progress=False)
    denoiser = denoiser.cpu()
    signature = signature_of(denoiser)
    tokens = text_tokens_of(pipe)
    if tokens:
        signature.text_tokens = tokens
    size = int(getattr(denoiser.config, "sample_size", 32) or 32)
    opt = resolution[1] if resolution else size
    export_onnx(denoiser, out, signature.example_inputs(batch[1], opt, opt), dynamic=not args.static,
                dtype=args.dtype, batch=batch, resolution=resolution, model_name=model_name(args.model),
                artifact=args.artifact, reference_io=args.reference_io)
    print(f"wrote {out / 'model.onnx'} and {out / 'manifest.json'} ({spec.label} on {model_name(args.model)}, "
          f"{args.dtype})")
    if args.summary:
        print(format_summary(summarize(out)))


def cmd_inspect_onnx(args) -> None:
    """`trtq inspect PATH` (wired in trtq.cli, which also inspects recipes on models)."""
    from trtq.export.onnx import format_summary, summarize

    path = Path(args.path)
    if not path.exists():
        raise TrtqError(f"{path} does not exist")
    s = summarize(path)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
