"""The TFMQ-DM table: W4A8 / W8A8 on the zoo models, from min-max through BRECQ to full TFMQ, with ablations.

    python -m trtq.eval.tables.tfmq [--samples N] [--steps S] [--calib-samples C] [--iters I] [--tiar-iters J]
                                    [--threads T] [--out docs/tfmq.md]

Every row quantizes a fresh copy of the float denoiser with its recipe (calibration on the float model's own
DDIM trajectories, a seed apart from the evaluation noise), samples the same labels from the same noise as
FP, and reports digits-FID, PSNR vs FP, accuracy, the calibration wall time and its peak memory. `--part
MODEL:BITS --json F` runs one slice (to run slices side by side) and `--assemble F... --out docs/tfmq.md`
writes the table from slices. The generated part of the markdown sits between two markers; the prose around
it is kept when re-run.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import platform
import time
from pathlib import Path

import torch

from trtq.eval.evaluate import Evaluator, SamplingConfig, calibration_loop
from trtq.eval.metrics import summarize
from trtq.eval.tables import guidance_of, write_generated_block
from trtq.quantize import quantize
from trtq.recipes import Recipe, get_recipe

BEGIN, END = "<!-- tfmq-table:begin -->", "<!-- tfmq-table:end -->"
MODELS = ("digits-unet", "digits-dit")
BITS = ("w4a8", "w8a8")
# (bits, row label, recipe name; "*-minmax-tfmq" and "w8a8-brecq" are variants built below)
ROWS = [
    ("w4a8", "min-max", "w4a8-minmax-tfmq"),
    ("w4a8", "BRECQ", "w4a8-brecq"),
    ("w4a8", "BRECQ + TIAR", "w4a8-tfmq-tiar-only"),
    ("w4a8", "BRECQ + FSC", "w4a8-tfmq-fsc-only"),
    ("w4a8", "TFMQ (TIAR + FSC)", "w4a8-tfmq"),
    ("w8a8", "min-max", "w8a8-minmax-tfmq"),
    ("w8a8", "BRECQ", "w8a8-brecq"),
    ("w8a8", "TFMQ (TIAR + FSC)", "w8a8-tfmq"),
]


def recipe_for(name: str, iters: int | None, tiar_iters: int | None) -> Recipe:
    """The row's recipe: a built-in one, or a variant on the same layers; reconstruction lengths overridden."""
    if name.endswith("-minmax-tfmq"):  # same layers and formats as the TFMQ recipe, plain min-max PTQ
        d = get_recipe(name.replace("-minmax-tfmq", "-tfmq")).to_dict()
        d.update(name=name, method=None, method_args={},
                 description="min-max PTQ on the layers and formats of the TFMQ recipe (the floor).")
        d["rules"] = [{**r, "layer": "fake", "weight": {**r["weight"], "observer": "minmax"},
                       "input": {**r["input"], "observer": "minmax"}} for r in d["rules"]]
    elif name == "w8a8-brecq":
        d = get_recipe("w4a8-brecq").to_dict()
        d.update(name=name, description="w4a8-brecq with INT8 weights.")
        d["rules"] = [{**r, "weight": {**r["weight"], "format": "int8"}} for r in d["rules"]]
    else:
        d = get_recipe(name).to_dict()
    if d["method"] is not None:
        overrides = {"iters": iters, "tiar_iters": tiar_iters, "progress": False}
        d["method_args"] = {**d["method_args"], **{k: v for k, v in overrides.items() if v is not None}}
    return Recipe.from_dict(d)


def run_part(model_name: str, bits: str, samples: int, steps: int, calib_samples: int, iters, tiar_iters,
             only: set[str] | None = None, save=None) -> dict:
    from trtq.zoo import load_classifier, load_digits_images, load_model

    model = load_model(model_name)
    cfg = SamplingConfig(samples=samples, steps=steps, calib_samples=calib_samples, progress=False)
    ev = Evaluator(model, cfg, load_classifier(), load_digits_images(model.sample_size)[0])
    fp = ev.run_fp()
    rows = [{"bits": bits, "label": "FP32", "recipe": "fp32", "fid": fp["fid"], "fid_ci": fp["fid_ci"],
             "accuracy": fp["accuracy"], "accuracy_ci": fp["accuracy_ci"], "psnr_db": None,
             "seconds": {"sample": fp["seconds"]["sample"]}}]
    print(f"[{model_name} {bits}] FP32 FID {fp['fid']:.2f} acc {fp['accuracy']:.3f}", flush=True)
    part = {"model": model_name, "bits": bits, "samples": samples, "steps": steps, "calib_samples": calib_samples,
            "guidance": model.guidance_scale,
            "iters": iters, "tiar_iters": tiar_iters, "date": _dt.date.today().isoformat(),
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__, "rows": rows}
    for row_bits, label, name in ROWS:
        if row_bits != bits or (only and name not in only):
            continue
        recipe = recipe_for(name, iters, tiar_iters)
        denoiser = copy.deepcopy(model.denoiser).eval()
        start = time.perf_counter()
        quantize(denoiser, recipe, calibration_loop(model, cfg))
        quant_s = time.perf_counter() - start
        start = time.perf_counter()
        samples_q = ev.sample(denoiser)
        sample_s = time.perf_counter() - start
        m = summarize(samples_q, ev.fp_samples, ev.labels, ev.classifier, ev.reference)
        stats = getattr(denoiser, "trtq_tfmq_stats", None)
        rows.append({"bits": bits, "label": label, "recipe": name, **m, "method_args": recipe.method_args,
                     "seconds": {"quantize": round(quant_s, 1), "sample": round(sample_s, 1),
                                 **({"parts": stats["seconds"]} if stats else {})},
                     "peak_memory_mib": stats["peak_memory_mib"] if stats else None,
                     "tib_layers": len(stats["tib"]) if stats else None,
                     "calib": {k: stats[k] for k in ("calls", "samples", "timesteps", "reconstruction_calls")}
                     if stats else None})
        print(f"[{model_name} {bits}] {label}: FID {m['fid']:.2f} PSNR {m['psnr_db']} acc {m['accuracy']:.3f} "
              f"quantize {quant_s:.0f}s", flush=True)
        if save is not None:
            save(part)  # after every row: a long slice that is stopped keeps what it measured
    return part


def merge(parts: list[dict]) -> list[dict]:
    """Slices of the same model and bits as one (their FP rows are the same: same seeds, same model)."""
    merged: dict[tuple, dict] = {}
    for p in parts:
        key = (p["model"], p["bits"])
        if key not in merged:
            merged[key] = {**p, "rows": list(p["rows"])}
        else:
            merged[key]["rows"] += [r for r in p["rows"] if r["recipe"] != "fp32"]
    order = {name: i for i, (_, _, name) in enumerate(ROWS)}
    for p in merged.values():
        p["rows"].sort(key=lambda r: -1 if r["recipe"] == "fp32" else order[r["recipe"]])
    return list(merged.values())


def _cell(v, spec):
    return "—" if v is None else format(v, spec)


def _with_ci(row, key, spec):
    """value [lo, hi] when the row has its 95% interval (slices measured before intervals existed have none)."""
    v, ci = row.get(key), row.get(f"{key}_ci")
    if v is None:
        return "—"
    return format(v, spec) if not ci else f"{format(v, spec)} [{format(ci[0], spec)}, {format(ci[1], spec)}]"


def markdown_table(parts: list[dict]) -> str:
    p0 = parts[0]
    lines = [f"{p0['samples']} samples per row, {p0['steps']} DDIM steps (trailing), each model's own guidance "
             "scale (beside its name; calibration too); calibration "
             f"{p0['calib_samples']} labels × 2 (classifier-free guidance) × {p0['steps']} steps of the float "
             f"model's own trajectories; reconstruction {p0['iters'] or 'recipe default'} Adam iterations per "
             f"block, {p0['tiar_iters'] or 'recipe default'} for the TIB. {p0['machine']}, torch {p0['torch']}, "
             f"{p0['date']}. Peak memory: increase of the process's resident memory during the method (CPU). "
             "Brackets: 95% bootstrap intervals over the samples; ΔFID is the paired difference to FP (same noise "
             "and labels), the interval that separates two rows.", ""]
    for model in MODELS:
        mine = [p for p in parts if p["model"] == model]
        if not mine:
            continue
        lines += [f"**{model}** (guidance {guidance_of(mine[0])})", "",
                  "| bits | configuration | recipe | digits-FID ↓ [95% CI] | vs FP | ΔFID vs FP [95% CI] | "
                  "PSNR vs FP (dB) ↑ | accuracy ↑ [95% CI] | calibration (s) | peak memory (MiB) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for p in sorted(mine, key=lambda p: p["bits"]):
            fp = p["rows"][0]
            for r in p["rows"]:
                is_fp = r["recipe"] == "fp32"
                rel = "" if is_fp else f"{(r['fid'] / fp['fid'] - 1):+.1%}"
                lines.append(f"| {p['bits'].upper()} | {r['label']} | {r['recipe']} | {_with_ci(r, 'fid', '.2f')} | "
                             f"{rel} | {'' if is_fp else _with_ci(r, 'fid_delta', '+.2f')} | "
                             f"{_cell(r['psnr_db'], '.2f')} | {_with_ci(r, 'accuracy', '.1%')} | "
                             f"{_cell(r['seconds'].get('quantize'), '.0f')} | {_cell(r.get('peak_memory_mib'), '.0f')} |")
        lines.append("")
    return "\n".join(lines)


def write_doc(path: Path, table: str, command: str, section: str | None = None) -> None:
    begin, end = (BEGIN, END) if section is None else (f"<!-- tfmq-table:{section}:begin -->",
                                                       f"<!-- tfmq-table:{section}:end -->")
    write_generated_block(path, table, command, begin, end, "TFMQ-DM on the zoo models")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m trtq.eval.tables.tfmq", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--calib-samples", type=int, default=10, help="labels per calibration batch (x2 with guidance)")
    p.add_argument("--iters", type=int, default=None, help="reconstruction iterations per block (recipe default)")
    p.add_argument("--tiar-iters", type=int, default=None, help="TIAR iterations (recipe default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--part", default=None, help="MODEL:BITS, e.g. digits-unet:w4a8 (with --json)")
    p.add_argument("--json", default=None, help="where --part writes its slice")
    p.add_argument("--rows", default=None, help="with --part: only these recipes (comma-separated)")
    p.add_argument("--assemble", nargs="+", default=None, help="slices (JSON) to assemble into --out")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models of a whole run")
    p.add_argument("--bits", nargs="+", default=list(BITS), choices=BITS, help="bit widths of a whole run")
    p.add_argument("--out", default="docs/tfmq.md")
    p.add_argument("--section", default=None,
                   help="a named generated block of --out (and its own JSON) instead of the main table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    def run(model, bits, only=None, save=None):
        return run_part(model, bits, args.samples, args.steps, args.calib_samples, args.iters, args.tiar_iters,
                        only, save)

    if args.part:
        model, bits = args.part.split(":")
        save = lambda part: Path(args.json).write_text(json.dumps(part, indent=2) + "\n")  # noqa: E731
        save(run(model, bits, set(args.rows.split(",")) if args.rows else None, save))
        return
    if args.assemble:
        parts = merge([json.loads(Path(f).read_text()) for f in args.assemble])
    else:
        parts = [run(m, b) for m in args.models for b in args.bits]
    p0 = parts[0]
    models = [m for m in MODELS if any(p["model"] == m for p in parts)]
    bits = [b for b in BITS if any(p["bits"] == b for p in parts)]
    command = "python -m trtq.eval.tables.tfmq " + " ".join(
        a for a in (f"--samples {p0['samples']}", f"--steps {p0['steps']}", f"--calib-samples {p0['calib_samples']}",
                    f"--iters {p0['iters']}" if p0["iters"] else "", f"--threads {args.threads}" if args.threads else "",
                    f"--tiar-iters {p0['tiar_iters']}" if p0["tiar_iters"] else "",
                    f"--models {' '.join(models)}" if models != list(MODELS) else "",
                    f"--bits {' '.join(bits)}" if bits != list(BITS) else "",
                    f"--out {args.out}", f"--section {args.section}" if args.section else "") if a)
    out = Path(args.out)
    data = out.with_name(f"{out.stem}-{args.section}.json") if args.section else out.with_suffix(".json")
    write_doc(out, markdown_table(parts), command, args.section)
    data.write_text(json.dumps(parts, indent=2) + "\n")
    print(f"wrote {out} and {data}")


if __name__ == "__main__":
    main()
