"""The Winograd table (docs/winograd.md) and per-layer SQNR plot (docs/winograd_sqnr.png) on digits-unet.

    python -m trtq.eval.tables.winograd [--samples 100] [--out docs/winograd.md]

Rows: FP, w8a8-minmax, w8a8-group (group-wise W8A8 without Winograd), then for F(4,3) and F(6,3): per-tensor
with standard scales, group-wise with standard scales, group-wise with learned scales. One FP run is shared.
Per-layer SQNR is measured on real inputs of each Winograd layer, captured from FP sampling trajectories
with the calibration seed (never the evaluation noise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from trtq.eval.evaluate import CALIB_SEED, Evaluator, QuantSpec, SamplingConfig, device_name, quantized_denoiser
from trtq.eval.metrics import format_interval, summarize
from trtq.pipeline import balanced_labels
from trtq.winograd.conv import unsupported_reason
from trtq.winograd.layer import WinogradQuantConv2d
from trtq.winograd.learn import sqnr_db

MODEL = "digits-unet"
ROWS = [  # (recipe, what it is)
    ("w8a8-minmax", "INT8 direct conv, per-channel W / per-tensor static A"),
    ("w8a8-group", "INT8 direct conv, group-wise (g=32) W and dynamic A"),
    ("w8a8-winograd-f43-pertensor", "F(4,3), per-tensor, standard scales"),
    ("w8a8-winograd-f43-std", "F(4,3), group-wise, standard scales"),
    ("w8a8-winograd-f43", "F(4,3), group-wise, learned scales"),
    ("w8a8-winograd-f63-pertensor", "F(6,3), per-tensor, standard scales"),
    ("w8a8-winograd-f63-std", "F(6,3), group-wise, standard scales"),
    ("w8a8-winograd-f63", "F(6,3), group-wise, learned scales"),
]
SQNR_SERIES = ["w8a8-winograd-f43-std", "w8a8-winograd-f43", "w8a8-winograd-f63-std", "w8a8-winograd-f63"]
COLORS = [(160, 190, 230), (30, 90, 200), (240, 170, 140), (200, 60, 30)]


def capture_conv_inputs(model, cfg: SamplingConfig, samples: int = 4, every: int = 5) -> dict[str, torch.Tensor]:
    """Inputs of every Winograd-capable conv of the FP denoiser, from the calibration trajectories
    (every `every`-th sampling step, so early, middle and late timesteps are all represented)."""
    from trtq.pipeline import DigitsPipeline

    convs = {n: m for n, m in model.denoiser.named_modules()
             if isinstance(m, torch.nn.Conv2d) and unsupported_reason(m) is None}
    seen: dict[str, list] = {n: [] for n in convs}
    calls = {"n": 0}

    def hook(name):
        def fn(_, args):
            if (calls["n"] // len(convs)) % every == 0:
                seen[name].append(args[0].detach().clone())
            calls["n"] += 1
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in convs.items()]
    try:
        DigitsPipeline(model, scheduler=cfg.scheduler)(balanced_labels(samples, model.num_classes),
                                                       num_inference_steps=cfg.steps, seed=CALIB_SEED, progress=False)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def layer_sqnrs(denoiser, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """SQNR (dB) of each Winograd layer's quantized output vs the exact float conv on the same input."""
    out = {}
    with torch.no_grad():
        for name, m in denoiser.named_modules():
            if isinstance(m, WinogradQuantConv2d):
                x = inputs[name]
                out[name] = sqnr_db(m(x), F.conv2d(x, m.weight, m.bias, padding=m.pad))
    return out


def bar_chart(path: Path, layers: list[str], series: dict[str, dict[str, float]]) -> None:
    """Grouped bars: one group per layer, one bar per recipe (PIL only, no plotting dependency)."""
    w, h, left, top, bottom = 1400, 620, 70, 40, 210
    vals = [v for s in series.values() for v in s.values()]
    lo, hi = min(0.0, min(vals)) - 2, max(vals) + 2
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    ph = h - top - bottom
    ypix = lambda v: top + (hi - v) / (hi - lo) * ph  # noqa: E731
    for tick in range(int(lo // 10) * 10, int(hi) + 1, 10):
        d.line([(left, ypix(tick)), (w - 10, ypix(tick))], fill=(225, 225, 225))
        d.text((8, ypix(tick) - 6), f"{tick:>4} dB", fill="black")
    d.line([(left, ypix(0)), (w - 10, ypix(0))], fill="black")
    group_w = (w - left - 10) / len(layers)
    bar_w = group_w * 0.8 / len(series)
    for i, layer in enumerate(layers):
        x0 = left + i * group_w + group_w * 0.1
        for j, (name, s) in enumerate(series.items()):
            y0, y1 = sorted((ypix(0), ypix(s[layer])))
            d.rectangle([x0 + j * bar_w, y0, x0 + (j + 1) * bar_w - 1, y1], fill=COLORS[j % len(COLORS)])
        label = layer.replace("down_blocks", "down").replace("up_blocks", "up").replace("resnets.", "r")
        txt = Image.new("RGBA", (200, 14), (255, 255, 255, 0))
        ImageDraw.Draw(txt).text((0, 0), label, fill="black")
        img.paste(txt.rotate(60, expand=True), (int(x0), h - bottom + 8), txt.rotate(60, expand=True))
    for j, name in enumerate(series):
        d.rectangle([left + j * 300, 10, left + j * 300 + 14, 24], fill=COLORS[j % len(COLORS)])
        d.text((left + j * 300 + 20, 12), name, fill="black")
    d.text((w // 2 - 250, h - 18), "per-layer SQNR of the W8A8 Winograd output vs exact conv (higher is better)",
           fill="black")
    img.save(path)


def fmt(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--out", default="docs/winograd.md")
    p.add_argument("--plot", default=None, help="default: winograd_sqnr.png beside --out")
    args = p.parse_args(argv)
    from trtq.zoo import load_classifier, load_digits_images, load_model

    torch.manual_seed(0)
    start = time.perf_counter()
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_name("winograd_sqnr.png")
    cfg = SamplingConfig(samples=args.samples, steps=args.steps, progress=False, device=args.device)
    model = load_model(MODEL).to(args.device)
    ev = Evaluator(model, cfg, load_classifier(), load_digits_images(model.sample_size)[0])
    fp = ev.run_fp()
    inputs = capture_conv_inputs(model, cfg)
    results, sqnrs = [], {}
    for recipe, what in ROWS:
        t0 = time.perf_counter()
        denoiser = quantized_denoiser(model, QuantSpec(recipe=recipe), cfg)
        t_quant = time.perf_counter() - t0
        samples = ev.sample(denoiser)
        m = summarize(samples, ev.fp_samples, ev.labels, ev.classifier, ev.reference)
        learn = getattr(denoiser, "trtq_winograd_stats", {}).get("seconds")
        results.append((recipe, what, m, t_quant, learn))
        if recipe in SQNR_SERIES:
            sqnrs[recipe] = layer_sqnrs(denoiser, inputs)
        print(f"{recipe}: fid {fmt(m['fid'])} psnr {fmt(m['psnr_db'])} acc {fmt(m['accuracy'], 3)}", flush=True)
    layers = list(sqnrs[SQNR_SERIES[0]])
    out.parent.mkdir(parents=True, exist_ok=True)
    bar_chart(plot, layers, {k: sqnrs[k] for k in SQNR_SERIES})
    write_section(out, report(args, cfg, fp, results, sqnrs, layers, plot, time.perf_counter() - start))
    print(f"wrote {out} and {plot}")


START, END = "<!-- winograd-table:start -->", "<!-- winograd-table:end -->"


def write_section(path: Path, text: str) -> None:
    """Replace the generated section of `path` (keeping the hand-written prose around it), or create it."""
    block = f"{START}\n{text}{END}\n"
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        block = head + block + rest.split(END, 1)[1].lstrip("\n")
    elif old:
        block = old.rstrip("\n") + "\n\n" + block
    path.write_text(block)


def report(args, cfg, fp, results, sqnrs, layers, plot, seconds) -> str:
    cmd = (f"python -m trtq.eval.tables.winograd --samples {args.samples} --steps {args.steps} "
           f"--device {args.device} --out {args.out}")
    lines = [
        "### Table", "",
        f"`{cmd}` on {device_name(cfg.device)}, torch {torch.__version__}, "
        f"{dt.date.today().isoformat()}; {cfg.samples} samples, {cfg.steps} DDIM steps, seed {cfg.seed}, "
        f"calibration {cfg.calib_samples} FP trajectories (seed {CALIB_SEED}). Whole run {seconds / 60:.1f} min. "
        "Brackets: 95% bootstrap intervals over the samples; ΔFID = paired difference to FP.", "",
        "| recipe | what | digits-FID [95% CI] | ΔFID vs FP [95% CI] | PSNR vs FP (dB) | SSIM vs FP | "
        "accuracy [95% CI] | quantize (s) | learning scales (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| fp32 | float | {format_interval(fp['fid'], fp['fid_ci'])} | - | - | - | "
        f"{format_interval(fp['accuracy'], fp['accuracy_ci'], '.3f')} | - | - |",
    ]
    for recipe, what, m, tq, learn in results:
        lines.append(f"| {recipe} | {what} | {format_interval(m['fid'], m['fid_ci'])} | "
                     f"{format_interval(m['fid_delta'], m['fid_delta_ci'], '+.2f')} | {fmt(m['psnr_db'])} | "
                     f"{fmt(m['ssim'], 3)} | {format_interval(m['accuracy'], m['accuracy_ci'], '.3f')} | {tq:.1f} | "
                     f"{fmt(learn, 1) if learn is not None else '-'} |")
    lines += ["", "### Per-layer SQNR of the Winograd layers (dB, real inputs)", "",
              f"![per-layer SQNR]({plot.name})", "",
              "| layer | " + " | ".join(SQNR_SERIES) + " |", "|---" * (len(SQNR_SERIES) + 1) + "|"]
    for layer in layers:
        lines.append(f"| {layer} | " + " | ".join(f"{sqnrs[s][layer]:.1f}" for s in SQNR_SERIES) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{sum(sqnrs[s].values()) / len(layers):.1f}**"
                                              for s in SQNR_SERIES) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
