"""The EfficientDM table and curve: FP, PTQ initialization, EfficientDM and QAT on the zoo models.

    python -m trtq.eval.tables.efficientdm [--samples N] [--steps S] [--rounds R] [--row-rounds L=R]
                                           [--distill-samples B] [--curve R1,R2,...] [--curve-rows L1,L2]
                                           [--threads T] [--out docs/efficientdm.md]

Rows per model: FP32; the PTQ initialization (the EfficientDM recipe with 0 rounds: the same layers, schemes
and per-timestep tables, min-max/MSE calibrated; on digits-dit the HQ-DiT initialization); EfficientDM
(rank-32 QALoRA + learned step sizes, `--rounds` rounds of data-free distillation, each round `--distill-
samples` random labels from random noise, one AdamW step per denoiser call); QAT (the same loss and rounds,
full weights trained; `--row-rounds LABEL=R` gives a row its own budget). Every row samples the
same labels from the same noise as FP; distillation and calibration data come from other seeds. The curve
evaluates a merged copy of the student of each row in `--curve-rows` (default: EfficientDM) after the rounds
in `--curve` (same samples as the table) and is drawn to `<out>_curve.png`. `--part MODEL --json F`
runs one model (to run models side by side), `--assemble F... --out docs/efficientdm.md` writes the doc. The
generated part of the markdown sits between two markers; the prose around it is kept when re-run.
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

from trtq.eval.evaluate import CALIB_SEED, Evaluator, SamplingConfig
from trtq.eval.metrics import summarize
from trtq.eval.tables import guidance_of, write_generated_block

BEGIN, END = "<!-- efficientdm-table:begin -->", "<!-- efficientdm-table:end -->"
# model -> (row label, recipe, rounds: None = --rounds or --row-rounds, 0 = the PTQ init, recipe overrides)
RELATIVE = {"efficientdm.step_weighting": "relative"}
ROWS = {
    "digits-unet": [("PTQ init (min-max/MSE)", "w4a4-efficientdm", 0, {}),
                    ("EfficientDM", "w4a4-efficientdm", None, {}),
                    ("EfficientDM, relative step weighting", "w4a4-efficientdm", None, RELATIVE),
                    ("EfficientDM (lr 0.003)", "w4a4-efficientdm", None, {"efficientdm.lr": 0.003}),
                    ("QAT", "w4a4-qat", None, {}),
                    ("QAT (lr 1e-4)", "w4a4-qat", None, {"efficientdm.lr": 1e-4})],
    "digits-dit": [("PTQ init (HQ-DiT)", "w4a4-fp4-efficientdm", 0, {}),
                   ("EfficientDM", "w4a4-fp4-efficientdm", None, {}),
                   ("QAT", "w4a4-fp4-qat", None, {}),
                   ("QAT (lr 1e-4)", "w4a4-fp4-qat", None, {"efficientdm.lr": 1e-4})],
}
METRICS = ("fid", "fid_ci", "accuracy", "accuracy_ci", "psnr_db", "ssim", "fid_delta", "fid_delta_ci")


def merged_copy(student: torch.nn.Module) -> torch.nn.Module:
    """What the student would deploy as now: a copy with its updates merged and its steps frozen."""
    from trtq.efficientdm.qalora import merge_adapters
    from trtq.methods.efficientdm import freeze_steps

    snap = copy.deepcopy(student)
    merge_adapters(snap)
    freeze_steps(snap)
    return snap


def artifact_round_trip(model, denoiser: torch.nn.Module) -> dict:
    """Save the fine-tuned denoiser as an artifact, load it into a fresh float copy, and compare one call:
    the artifact must hold no LoRA tensor and reproduce the model (same codes, scales, tables)."""
    import tempfile

    from safetensors.torch import load_file

    from trtq.artifact import SCALES, load_artifact, save_artifact
    from trtq.nn.timestep import table_quantizers

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "artifact"
        save_artifact(denoiser, path, model_name=model.name)
        keys = list(load_file(str(path / SCALES)))
        size = (path / SCALES).stat().st_size
        loaded = load_artifact(copy.deepcopy(model.denoiser).eval(), path, model_name=model.name)
    tables = [q for _, q in table_quantizers(denoiser)]
    t = float(tables[0].timesteps[-1]) if tables else 999.0  # a timestep the tables were calibrated on
    gen = torch.Generator().manual_seed(1)
    x, labels = torch.randn(2, 1, model.sample_size, model.sample_size, generator=gen), torch.tensor([3, 7])
    with torch.no_grad():
        diff = (model.predict_noise(x, t, labels, denoiser=loaded)
                - model.predict_noise(x, t, labels, denoiser=denoiser)).abs().max()
    return {"tensors": len(keys), "lora_tensors": sum("adapter" in k for k in keys), "bytes": size,
            "max_abs_diff": float(diff)}


def finetune(model, recipe_name: str, rounds: int, distill_samples: int, steps: int,
             overrides: dict | None = None, on_round=None) -> torch.nn.Module:
    """A fresh copy of the zoo model's denoiser quantized with the EfficientDM-family recipe: PTQ init, then
    `rounds` rounds of data-free distillation (random labels from seed CALIB_SEED + round), merged."""
    from trtq.efficientdm.distill import DigitsDistillLoop
    from trtq.methods import METHODS
    from trtq.quantize import calibrate, prepare
    from trtq.recipes import get_recipe

    recipe = get_recipe(recipe_name).with_overrides({
        "efficientdm.rounds": rounds, "efficientdm.progress": False,
        "efficientdm.guidance": model.guidance_scale, "efficientdm.cfg_order": "cond_uncond", **(overrides or {})})
    loop = DigitsDistillLoop(model, samples=distill_samples, steps=steps, seed=CALIB_SEED)
    denoiser = copy.deepcopy(model.denoiser).eval()
    prepare(denoiser, recipe, warn=False)
    METHODS[recipe.method](denoiser, recipe, loop, on_round=on_round)
    calibrate(denoiser, loop)
    return denoiser


def run_row(ev: Evaluator, model, recipe_name: str, rounds: int, distill_samples: int, curve: set[int],
            overrides: dict | None = None):
    """Quantize a fresh copy with the recipe (method on `rounds` rounds), sample, measure; plus curve points."""
    points = []

    def on_round(done: int, student) -> None:
        if done in curve and done != rounds:
            samples = ev.sample(merged_copy(student))
            m = summarize(samples, ev.fp_samples, ev.labels, ev.classifier, ev.reference)
            points.append({"rounds": done, **{k: m[k] for k in ("fid", "fid_ci", "accuracy", "psnr_db")}})
            print(f"  curve: {done} rounds: FID {m['fid']:.2f} acc {m['accuracy']:.3f}", flush=True)

    start = time.perf_counter()
    denoiser = finetune(model, recipe_name, rounds, distill_samples, ev.cfg.steps, overrides, on_round)
    stats = denoiser.trtq_efficientdm_stats
    quant_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = ev.sample(denoiser)
    sample_s = time.perf_counter() - start
    m = summarize(samples, ev.fp_samples, ev.labels, ev.classifier, ev.reference)
    try:
        artifact = artifact_round_trip(model, denoiser)
    except Exception as e:  # recorded in the slice (and the doc), never hidden; the metrics above stand
        artifact = {"error": f"{type(e).__name__}: {e}"}
    return {**{k: m[k] for k in METRICS}, "recipe": recipe_name, "artifact": artifact, "rounds": rounds,
            "overrides": overrides or {},
            "iterations": stats["iterations"], "trainable_parameters": stats["trainable_parameters"],
            "trainable_steps": stats["trainable_steps"], "peak_memory_mib": stats["peak_memory_mib"],
            "loss": [round(h["loss"], 6) for h in stats["history"]],
            "seconds": {"init": stats["seconds"]["init"], "finetune": stats["seconds"]["distill"],
                        "quantize_total": round(quant_s, 1), "sample": round(sample_s, 1)}}, points


def run_part(model_name: str, samples: int, steps: int, rounds: int, distill_samples: int, curve: set[int],
             only: set[str] | None = None, save=None, row_rounds: dict[str, int] | None = None,
             curve_rows: tuple[str, ...] = ("EfficientDM",)) -> dict:
    from trtq.zoo import load_classifier, load_digits_images, load_model

    model = load_model(model_name)
    cfg = SamplingConfig(samples=samples, steps=steps, progress=False)
    ev = Evaluator(model, cfg, load_classifier(), load_digits_images(model.sample_size)[0])
    fp = ev.run_fp()
    part = {"model": model_name, "samples": samples, "steps": steps, "rounds": rounds,
            "guidance": model.guidance_scale,
            "distill_samples": distill_samples, "date": _dt.date.today().isoformat(),
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__, "curves": {},
            "rows": [{"label": "FP32", "recipe": "fp32", **{k: fp.get(k) for k in METRICS},
                      "seconds": {"sample": fp["seconds"]["sample"]}}]}
    print(f"[{model_name}] FP32 FID {fp['fid']:.2f} acc {fp['accuracy']:.3f}", flush=True)
    for label, recipe, fixed_rounds, overrides in ROWS[model_name]:
        if only and label not in only and recipe not in only:
            continue
        r = fixed_rounds if fixed_rounds is not None else (row_rounds or {}).get(label, rounds)
        row, points = run_row(ev, model, recipe, r, distill_samples, curve if label in curve_rows else set(),
                              overrides)
        part["rows"].append({"label": label, **row})
        if points:
            part["curves"][label] = points
        print(f"[{model_name}] {label}: FID {row['fid']:.2f} PSNR {row['psnr_db']} acc {row['accuracy']:.3f} "
              f"fine-tune {row['seconds']['finetune']:.0f}s ({row['iterations']} it)", flush=True)
        if save is not None:
            save(part)  # after every row: a long slice that is stopped keeps what it measured
    return part


def curves_of(p: dict) -> dict[str, list[dict]]:
    """{row label: curve points} of a slice as written; slices from before per-row curves held one list,
    EfficientDM's. `merge_parts` normalizes to `curves`; everything after it reads that."""
    return p["curves"] if "curves" in p else ({"EfficientDM": p["curve"]} if p.get("curve") else {})


def merge_parts(parts: list[dict]) -> list[dict]:
    """Slices of the same model as one (their FP rows are the same: same seeds, same model)."""
    merged: dict[str, dict] = {}
    for p in parts:
        curves = curves_of(p)
        p = {k: v for k, v in p.items() if k != "curve"}
        if p["model"] not in merged:
            merged[p["model"]] = {**p, "rows": list(p["rows"]), "curves": dict(curves)}
        else:
            merged[p["model"]]["rows"] += [r for r in p["rows"] if r["recipe"] != "fp32"]
            merged[p["model"]]["curves"].update(curves)
    for p in merged.values():
        order = {row[0]: i for i, row in enumerate(ROWS[p["model"]])}
        p["rows"].sort(key=lambda r: -1 if r["recipe"] == "fp32" else order[r["label"]])
    return [merged[m] for m in ROWS if m in merged]


def _ci(v, ci, spec, pct=False):
    if v is None:
        return "—"
    f = (lambda x: format(x, ".1%")) if pct else (lambda x: format(x, spec))
    return f(v) + (f" [{f(ci[0])}, {f(ci[1])}]" if ci else "")


def part_command(p: dict, threads: int | None) -> str:
    """The command that produces one model's slice (what `--assemble` was given)."""
    curves = p["curves"]
    curve = ",".join(str(r) for r in sorted({c["rounds"] for pts in curves.values() for c in pts}))
    own = {r["label"]: r["rounds"] for r in p["rows"] if r.get("rounds") not in (None, 0, p["rounds"])}
    return (f"python -m trtq.eval.tables.efficientdm --part {p['model']} --json {p['model']}.json "
            f"--samples {p['samples']} --steps {p['steps']} --rounds {p['rounds']} "
            + "".join(f"--row-rounds '{label}={r}' " for label, r in own.items())
            + f"--distill-samples {p['distill_samples']}" + (f" --curve {curve}" if curve else "")
            + (f" --curve-rows '{','.join(curves)}'" if curves and list(curves) != ["EfficientDM"] else "")
            + (f" --threads {threads}" if threads else ""))


def markdown_table(parts: list[dict]) -> str:
    p0 = parts[0]
    lines = [f"{p0['samples']} samples per row, {p0['steps']} DDIM steps (trailing), each model's guidance scale "
             "(also the distillation loss's), 95% bootstrap "
             "intervals in brackets. Fine-tuning: rounds (a row's iterations ÷ the steps) × random labels per round "
             f"(beside each model's name; × 2 for guidance) × {p0['steps']} steps, one AdamW step per denoiser call. "
             f"{p0['machine']}, torch {p0['torch']}, {p0['date']}. Peak memory: increase of the process's resident "
             "memory during the method (CPU).", ""]
    for p in parts:
        fp = p["rows"][0]
        lines += [f"**{p['model']}** ({p['distill_samples']} random labels per round, "
                  f"guidance {guidance_of(p)})", "",
                  "| configuration | recipe | digits-FID ↓ | vs FP | PSNR vs FP (dB) ↑ | accuracy ↑ | "
                  "fine-tuning (s) | "
                  "iterations | peak memory (MiB) | trainable parameters |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in p["rows"]:
            fp_row = r["recipe"] == "fp32"
            rel = "" if fp_row else f"{(r['fid'] / fp['fid'] - 1):+.1%}"
            trained = not fp_row and r["rounds"] > 0
            tune = f"{r['seconds']['finetune']:.0f}" if trained else "—"
            train = f"{r['trainable_parameters']:,} + {r['trainable_steps']:,} steps" if trained else "—"
            lines.append(f"| {r['label']} | {r['recipe']} | {_ci(r['fid'], r.get('fid_ci'), '.2f')} | {rel} | "
                         f"{_ci(r.get('psnr_db'), None, '.2f')} | "
                         f"{_ci(r['accuracy'], r.get('accuracy_ci'), '', True)} | "
                         f"{tune} | {r.get('iterations', '—')} | {r.get('peak_memory_mib') or '—'} | {train} |")
        lines.append("")
        trips = [(r["label"], r["artifact"]) for r in p["rows"] if r.get("artifact")]
        for label, a in trips:
            lines.append(f"- artifact round trip, {label}: " + (a["error"] if "error" in a else
                         f"{a['tensors']} tensors ({a['bytes']:,} bytes), {a['lora_tensors']} LoRA tensors, "
                         f"loaded model vs fine-tuned one: max |Δε| = {a['max_abs_diff']:.3g}"))
        if trips:
            lines.append("")
    return "\n".join(lines)


COLOURS = [(66, 133, 244), (219, 68, 55), (244, 160, 0), (15, 157, 88), (171, 71, 188)]


def curve_lines(p: dict) -> dict[str, list[tuple[float, float]]]:
    """{row label: (iterations, digits-FID) points} of every fine-tuned row: from the PTQ init through its curve
    points to its final row; a row without curve points is its end point alone (no line is implied)."""
    init = next((r for r in p["rows"] if r.get("rounds") == 0), None)
    curves, lines = p["curves"], {}
    for r in p["rows"]:
        if r["recipe"] == "fp32" or not r.get("rounds"):
            continue
        per_round = r["iterations"] / r["rounds"]
        pts = [(c["rounds"] * per_round, c["fid"]) for c in sorted(curves.get(r["label"], []),
                                                                   key=lambda c: c["rounds"])]
        start = [(0, init["fid"])] if pts and init is not None else []
        lines[r["label"]] = start + pts + [(r["iterations"], r["fid"])]
    return lines


def draw_curve(parts: list[dict], path: Path) -> None:
    """digits-FID against fine-tuning iterations, one panel per model, a line per row with a curve, FP dashed."""
    from PIL import Image, ImageDraw

    panels = [(p, lines) for p, lines in ((p, curve_lines(p)) for p in parts)
              if any(len(v) > 1 for v in lines.values())]
    if not panels:
        return
    labels = list(dict.fromkeys(label for _, lines in panels for label in lines))  # one colour per row label
    colour_of = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}
    pw, h, left, top, bottom = 560, 440, 60, 50 + 14 * 5, 50
    img = Image.new("RGB", (pw * len(panels), h), "white")
    d = ImageDraw.Draw(img)
    for j, (p, lines) in enumerate(panels):
        x0 = j * pw
        fp_fid = p["rows"][0]["fid"]
        pts = [xy for v in lines.values() for xy in v]
        xmax = max(x for x, _ in pts) or 1
        ymax = max([y for _, y in pts] + [fp_fid]) * 1.1
        sx, sy = (pw - 20 - left) / xmax, (h - bottom - top) / ymax
        d.text((x0 + 10, 10), f"{p['model']}: digits-FID vs fine-tuning iterations (dashed: FP)", fill="black")
        for i, label in enumerate(lines):
            colour = colour_of[label]
            d.line([(x0 + 10, 32 + 14 * i), (x0 + 30, 32 + 14 * i)], fill=colour, width=3)
            d.text((x0 + 36, 26 + 14 * i), label + ("" if len(lines[label]) > 1 else " (end point)"), fill="black")
        d.line([(x0 + left, top), (x0 + left, h - bottom), (x0 + pw - 20, h - bottom)], fill="black")
        for i in range(5):
            y = h - bottom - (h - bottom - top) * i / 4
            d.text((x0 + 5, y - 6), f"{ymax * i / 4:.3g}", fill="black")
            x = x0 + left + (pw - 20 - left) * i / 4
            d.text((x - 10, h - bottom + 6), f"{xmax * i / 4:.0f}", fill="black")
        d.text((x0 + pw // 2 - 20, h - 22), "iterations", fill="black")
        yfp = h - bottom - fp_fid * sy
        for xd in range(x0 + left, x0 + pw - 20, 12):
            d.line([(xd, yfp), (xd + 6, yfp)], fill="black")
        for label, line in lines.items():
            colour = colour_of[label]
            xy = [(x0 + left + x * sx, h - bottom - y * sy) for x, y in line]
            if len(xy) > 1:
                d.line(xy, fill=colour, width=2)
            for x, y in xy:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m trtq.eval.tables.efficientdm", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=20, help="distillation rounds (sampler runs) per fine-tuning")
    p.add_argument("--distill-samples", type=int, default=8, help="random labels per round (x2 with guidance)")
    p.add_argument("--row-rounds", action="append", default=[], metavar="LABEL=R",
                   help="rounds of one row (by label) instead of --rounds; repeatable")
    p.add_argument("--curve", default="", help="rounds after which the students of --curve-rows are also evaluated")
    p.add_argument("--curve-rows", default="EfficientDM", help="row labels with a curve (comma-separated)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--part", default=None, help="one model (with --json)")
    p.add_argument("--rows", default=None, help="with --part: only these row labels or recipes (comma-separated)")
    p.add_argument("--json", default=None, help="where --part writes its slice")
    p.add_argument("--assemble", nargs="+", default=None, help="slices (JSON) to assemble into --out")
    p.add_argument("--out", default="docs/efficientdm.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    curve = {int(c) for c in args.curve.split(",") if c.strip()}
    row_rounds = {}
    for a in args.row_rounds:
        label, _, r = a.rpartition("=")
        if not label or not r.isdigit():
            p.error(f"--row-rounds expects LABEL=ROUNDS, got {a!r}")
        row_rounds[label] = int(r)
    labels = {row[0] for rows in ROWS.values() for row in rows}
    unknown = (set(row_rounds) | set(args.curve_rows.split(","))) - labels
    if unknown:  # a misspelt label would otherwise be ignored after hours of fine-tuning
        p.error(f"no row labelled {', '.join(sorted(unknown))}; rows: {', '.join(sorted(labels))}")

    def run(model, only=None, save=None):
        return run_part(model, args.samples, args.steps, args.rounds, args.distill_samples, curve, only, save,
                        row_rounds, tuple(args.curve_rows.split(",")))

    if args.part:
        save = lambda part: Path(args.json).write_text(json.dumps(part, indent=2) + "\n")  # noqa: E731
        save(run(args.part, set(args.rows.split(",")) if args.rows else None, save))
        return
    parts = merge_parts([json.loads(Path(f).read_text()) for f in args.assemble]) if args.assemble \
        else [run(m) for m in ROWS]
    p0 = parts[0]
    if args.assemble:
        command = "; ".join([part_command(p, args.threads) for p in parts] + [
            "python -m trtq.eval.tables.efficientdm --assemble "
            + " ".join(f"{p['model']}.json" for p in parts) + f" --out {args.out}"])
    else:
        command = (f"python -m trtq.eval.tables.efficientdm --samples {p0['samples']} --steps {p0['steps']} "
                   f"--rounds {p0['rounds']} --distill-samples {p0['distill_samples']}"
                   + "".join(f" --row-rounds '{a}'" for a in args.row_rounds)
                   + (f" --curve {args.curve}" if args.curve else "")
                   + (f" --curve-rows '{args.curve_rows}'" if args.curve_rows != "EfficientDM" else "")
                   + (f" --threads {args.threads}" if args.threads else "") + f" --out {args.out}")
    out = Path(args.out)
    write_generated_block(out, markdown_table(parts), command, BEGIN, END, "EfficientDM on the zoo models")
    out.with_suffix(".json").write_text(json.dumps(parts, indent=2) + "\n")
    draw_curve(parts, out.with_name(out.stem + "_curve.png"))
    print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_name(out.stem + '_curve.png')}")


if __name__ == "__main__":
    main()
