"""`trtq demo`: FP vs trtq's w8a8-minmax vs nvidia-modelopt INT8 on both zoo models, then the deployment.

Writes into the output directory: grid.png (per model, one row per recipe, same seeds and labels),
report.md and report.json (metrics and the wall time of each stage), and onnx/<model>/ (the w8a8-minmax
denoiser exported for the pipeline's batch). The deployment section times the pipeline with the float
denoiser (eager) and with the quantized one accelerated on the best backend this machine has
(`trtq.accelerate(..., backend="auto")`), labelled by device and backend, beside the exported file sizes.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from trtq.eval.evaluate import Evaluator, QuantSpec, SamplingConfig, device_name
from trtq.eval.metrics import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, format_interval
from trtq.pipeline import balanced_labels
from trtq.zoo import ZOO_MODELS, load_classifier, load_digits_images, load_model

DEMO_RECIPES = ("w8a8-minmax", "modelopt-int8")
DEPLOY_RECIPE = "w8a8-minmax"  # the recipe the demo exports and accelerates
DEPLOY_IMAGES, DEPLOY_REPEATS = 10, 3  # images per timed pipeline call; timed calls (median) after one warm-up
GRID_COLUMNS = 20
CELL = 48


def _grid(rows: list[tuple[str, torch.Tensor]], title: str) -> Image.Image:
    """One labelled row of digit images per recipe."""
    label_w, head = 130, 22
    img = Image.new("L", (label_w + GRID_COLUMNS * CELL, head + len(rows) * CELL), color=255)
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title, fill=0)
    for r, (name, samples) in enumerate(rows):
        y = head + r * CELL
        draw.text((4, y + CELL // 2 - 6), name, fill=0)
        pix = ((samples[:GRID_COLUMNS, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        for c, p in enumerate(pix):
            tile = Image.fromarray(p, mode="L").resize((CELL - 2, CELL - 2), Image.NEAREST)
            img.paste(tile, (label_w + c * CELL + 1, y + 1))
    return img


def _balanced_real_subset(images: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """n real digits with the samples' label mix (0, 1, ..., 9, 0, ...): a like-for-like FID reference."""
    gen = torch.Generator().manual_seed(0)
    pools = {c: images[labels == c][torch.randperm(int((labels == c).sum()), generator=gen)] for c in range(10)}
    return torch.stack([pools[c][(i // 10) % len(pools[c])] for i, c in enumerate(balanced_labels(n).tolist())])


def _fmt(v, spec: str) -> str:
    return "identical" if v is None else format(v, spec)


def _markdown(report: dict) -> str:
    lines = [
        "# trtq demo report", "",
        f"{report['date']} · {report['machine']} · torch {report['versions']['torch']} · "
        f"diffusers {report['versions']['diffusers']}", "",
        f"{report['sampling']['samples']} samples per row (labels 0-9 in turn), "
        f"{report['sampling']['steps']} DDIM steps, classifier-free guidance; PSNR/SSIM against the FP samples "
        "from the same noise; digits-FID against the 1797 real digits in the classifier's feature space; "
        "accuracy = the classifier agrees with the requested digit. Brackets: 95% bootstrap intervals over the "
        f"samples ({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}); "
        "ΔFID is the paired difference to FP (same noise, same resamples), the one to read when comparing rows.", "",
        "| model | recipe | digits-FID ↓ [95% CI] | ΔFID vs FP [95% CI] | PSNR vs FP (dB) ↑ | SSIM vs FP ↑ | "
        "accuracy ↑ [95% CI] | quantize (s) | sample (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report["models"]:
        for r in m["results"]:
            fp = r["recipe"] == "fp32"
            delta = "—" if fp else format_interval(r["fid_delta"], r["fid_delta_ci"], "+.2f")
            lines.append(
                f"| {m['model']} | {r['recipe']} | {format_interval(r['fid'], r['fid_ci'])} | {delta} | "
                f"{'—' if fp else _fmt(r['psnr_db'], '.2f')} | {'—' if fp else _fmt(r['ssim'], '.4f')} | "
                f"{format_interval(r['accuracy'], r['accuracy_ci'], '.1%')} | "
                f"{r['seconds'].get('quantize', 0):.1f} | {r['seconds']['sample']:.1f} |")
        lines.append(f"| {m['model']} | *{report['sampling']['samples']} real digits* | "
                     f"{m['real_digits_fid']:.2f} | | | | | | |")
    lines += ["", "The *real digits* row is the digits-FID of as many real images (same label mix) as there are "
              "samples: what that sample size gives for the data itself.", ""]
    if report.get("deployment"):
        d = report["deployment"]
        lines += ["## Deployment on this machine", "",
                  f"The pipeline generating {d['images']} images ({d['steps']} steps, guidance), median of "
                  f"{d['repeats']} timed calls after a warm-up, on {d['device']}"
                  + (" (CPU numbers: they say nothing about GPU speed)" if d["cpu_numbers"] else "") + ". "
                  f"FP runs its float denoiser eagerly; {DEPLOY_RECIPE} runs on the backend `trtq.accelerate` "
                  "picks here (backend=\"auto\"). Export: the quantized denoiser as written to onnx/<model>/ "
                  "(graph + external weights).", "",
                  "| model | config | backend | ms per image | x FP | weights / export MB |",
                  "|---|---|---|---:|---:|---:|"]
        for r in d["rows"]:
            lines.append(f"| {r['model']} | {r['config']} | {r['backend']} | {r['ms_per_image']:.1f} | "
                         f"{r['speedup']:.2f} | {r['megabytes']:.2f} |")
        lines.append("")
    lines += [f"Stage wall times (s): {json.dumps(report['stages'])}", "", "![grid](grid.png)", ""]
    return "\n".join(lines)


def _timed_images(pipe, labels, steps: int) -> float:
    """Median ms per image over DEPLOY_REPEATS pipeline calls, after one untimed call."""
    import statistics

    pipe(labels, num_inference_steps=steps, seed=0, progress=False)
    times = []
    for _ in range(DEPLOY_REPEATS):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe(labels, num_inference_steps=steps, seed=0, progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000 / len(labels))
    return statistics.median(times)


def deployment(model, quantized, out: Path, steps: int) -> list[dict]:
    """FP eager vs the quantized denoiser on the best backend here: latency per image, weights/export size."""
    from trtq.pipeline import DigitsPipeline
    from trtq.runtime import accelerate, restore

    pipe = DigitsPipeline(model)
    labels = balanced_labels(DEPLOY_IMAGES, model.num_classes)
    fp_ms = _timed_images(pipe, labels, steps)
    fp_mb = sum(p.numel() * p.element_size() for p in model.denoiser.parameters()) / 2**20
    onnx_dir = out / "onnx" / model.name
    cfg_batch = 2 * DEPLOY_IMAGES
    accelerate(pipe, quantized, backend="auto", batch=(1, cfg_batch, cfg_batch), onnx_dir=onnx_dir)
    backend = pipe.denoiser.backend
    try:
        q_ms = _timed_images(pipe, labels, steps)
    finally:
        restore(pipe)
    export_mb = sum(f.stat().st_size for f in onnx_dir.rglob("*") if f.is_file()) / 2**20 if onnx_dir.is_dir() else 0.0
    return [{"model": model.name, "config": "fp32", "backend": "eager", "ms_per_image": fp_ms, "speedup": 1.0,
             "megabytes": fp_mb},
            {"model": model.name, "config": DEPLOY_RECIPE, "backend": backend, "ms_per_image": q_ms,
             "speedup": fp_ms / q_ms, "megabytes": export_mb}]


def run_demo(out: Path, samples: int = 100) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages: dict[str, float] = {}
    cfg = SamplingConfig(samples=samples)
    classifier = load_classifier()
    reference, reference_labels = load_digits_images()
    real_subset = _balanced_real_subset(reference, reference_labels, samples)
    from trtq.eval.metrics import digits_fid

    models, grids, deploy_rows = [], [], []
    for name in ZOO_MODELS:
        t0 = time.perf_counter()
        model = load_model(name)
        ev = Evaluator(model, cfg, classifier, reference)
        print(f"[{name}] sampling FP32 ...", flush=True)
        results = [ev.run_fp()]
        rows = [("fp32", ev.fp_samples)]
        for recipe in DEMO_RECIPES:
            print(f"[{name}] {recipe}: quantize + sample ...", flush=True)
            res, s = ev.run(QuantSpec(recipe=recipe))
            results.append(res)
            rows.append((recipe, s))
        models.append({"model": name, "results": results,
                       "real_digits_fid": digits_fid(classifier, real_subset, reference)})
        print(f"[{name}] deployment: export {DEPLOY_RECIPE}, accelerate (auto), time ...", flush=True)
        from trtq.eval.evaluate import quantized_denoiser

        deploy_rows += deployment(model, quantized_denoiser(model, QuantSpec(recipe=DEPLOY_RECIPE), cfg), out,
                                  cfg.steps)
        grids.append(_grid(rows, f"{name}: rows = recipes, same noise and labels"))
        stages[name] = round(time.perf_counter() - t0, 1)
        for r in results:
            print(f"  {r['recipe']:<16} FID {format_interval(r['fid'], r['fid_ci']):<22} "
                  f"acc {format_interval(r['accuracy'], r['accuracy_ci'], '.1%'):<24} "
                  f"PSNR {_fmt(r['psnr_db'], '.2f') if r['recipe'] != 'fp32' else '—'}")

    width = max(g.width for g in grids)
    canvas = Image.new("L", (width, sum(g.height for g in grids)), 255)
    y = 0
    for g in grids:
        canvas.paste(g, (0, y))
        y += g.height
    canvas.save(out / "grid.png")

    import diffusers

    stages["total"] = round(time.perf_counter() - start, 1)
    report = {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, CPU".strip(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "sampling": {"samples": samples, "steps": cfg.steps, "scheduler": cfg.scheduler,
                     "calib_samples": cfg.calib_samples},
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": BOOTSTRAP_LEVEL},
        "models": models,
        "deployment": {"device": device_name("cuda" if torch.cuda.is_available() else "cpu"),
                       "cpu_numbers": not torch.cuda.is_available(), "images": DEPLOY_IMAGES, "steps": cfg.steps,
                       "repeats": DEPLOY_REPEATS, "rows": deploy_rows},
        "stages": stages,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    print(f"wrote {out / 'grid.png'}, {out / 'report.md'}, {out / 'report.json'} in {stages['total']} s")
    return report
