"""`trtq build`: export (or take) an ONNX graph, check it, and build its TensorRT engine into the cache.

Wired into `trtq/cli.py` with two lines:
    from trtq.engine.cli import add_build_parser
    add_build_parser(sub)
The ONNX export is written and checked first, so a machine without TensorRT or a GPU still leaves a graph
that `trtq build --onnx DIR` (or trtexec) can build elsewhere; then the build stops with one line naming what
is missing (exit 2) before anything is written under --engines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trtq.errors import TrtqError
from trtq.runtime.cli import add_folder_args

EXAMPLES = """examples:
  trtq build --model digits-unet --recipe w8a8-minmax
  trtq build --model digits-unet --artifact artifacts/unet-w8a8 --batch 1:2:8 --resolution 16:32:64
  trtq build --onnx out/onnx/digits-unet-w8a8-minmax --batch 2:2:2 --opt-level 5
  make build-engine MODEL=digits-unet RECIPE=w8a8-minmax PROFILE=1:2:4

Engines land in engines/<model>-<recipe>-<digest>/ (engine.plan, model.onnx, manifest.json). The digest covers
the model, recipe, exported graph, profile, builder options, TensorRT version, GPU architecture and plugins'
version: the same build again is a cache hit, and an engine for another TensorRT or GPU is never loaded."""


def add_build_parser(subparsers) -> None:
    s = subparsers.add_parser("build", help="export to ONNX and build a TensorRT engine (cached in engines/)",
                              description="Build a TensorRT engine from a quantized model or an ONNX export.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--onnx", help="an export directory from `trtq export` (instead of --model)")
    s.add_argument("--model", help="zoo name, local model directory or diffusers pipeline folder: quantize/load, "
                                   "export, then build")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--recipe", help="recipe name or file (with --model)")
    g.add_argument("--artifact", help="artifact directory from `trtq quantize` (with --model)")
    s.add_argument("--export-dir", help="where the ONNX export goes (default out/onnx/<model>-<recipe>)")
    s.add_argument("--batch", help="batch profile MIN:OPT:MAX (default: the export's, 1:2:4 for a new one)")
    s.add_argument("--resolution", help="latent height = width profile MIN:OPT:MAX (default: the export's)")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="activation dtype of a new export (default float16)")
    s.add_argument("--calib-samples", type=int, default=20, help="calibration trajectories with --recipe")
    add_folder_args(s, steps=True)
    s.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0-5 (default 3)")
    s.add_argument("--engines", default="engines", help="engine cache directory (default engines)")
    s.add_argument("--quiet", action="store_true", help="no build progress")
    s.set_defaults(func=cmd_build)


def _export_args(args, out: Path) -> argparse.Namespace:
    return argparse.Namespace(model=args.model, recipe=args.recipe, artifact=args.artifact, out=str(out),
                              batch=args.batch or "1:2:4", resolution=args.resolution, dtype=args.dtype,
                              static=False, calib_samples=args.calib_samples, summary=False, reference_io=False,
                              prompts=args.prompts, labels=args.labels, device=args.device, steps=args.steps)


def cmd_build(args) -> None:
    from trtq.cli import check_output_dir
    from trtq.engine.build import build_engine
    from trtq.engine.cache import BuildOptions
    from trtq.engine.export_dir import check_graph, read_export
    from trtq.export.cli import cmd_export, parse_range

    if (args.onnx is None) == (args.model is None):
        raise TrtqError("build takes either --onnx DIR (an export) or --model with --recipe/--artifact")
    if args.onnx is not None and (args.recipe or args.artifact or args.export_dir):
        raise TrtqError("--onnx builds an existing export; --recipe, --artifact and --export-dir go with --model")
    if args.model is not None and not (args.recipe or args.artifact):
        raise TrtqError("--model needs --recipe or --artifact")
    options = BuildOptions(optimization_level=args.opt_level)
    batch = None if args.batch is None else parse_range(args.batch, "batch")
    resolution = None if args.resolution is None else parse_range(args.resolution, "resolution")
    engines = Path(args.engines)
    check_output_dir(engines, "--engines")

    if args.model is not None:
        label = Path(args.recipe).stem if args.recipe else Path(args.artifact).name
        out = Path(args.export_dir or f"out/onnx/{Path(args.model).name}-{label}")
        cmd_export(_export_args(args, out))  # checks its own arguments first; prints what it wrote
        batch = resolution = None  # the export's profile is the one asked for
    else:
        out = Path(args.onnx)
    export = read_export(out)
    check_graph(export)
    print(f"checked {export.onnx_path}: the ONNX checker passes")
    record = build_engine(export, batch=batch, resolution=resolution, options=options, cache_dir=engines,
                          progress=not args.quiet)
    if record.hit:
        print(f"engine {record.path} (cache hit: built before for this graph, profile, TensorRT and GPU)")
    else:
        print(f"built {record.path} ({record.manifest['engine']['bytes'] / 2**20:.1f} MiB, "
              f"{record.manifest['build_seconds']:.0f} s)")
