"""The W8A8 table (docs/w8a8.md): where W8A8 loses quality on the zoo models, and the deployable recipes.

    python -m trtq.eval.tables.w8a8 [--samples 300] [--steps 20] [--device cpu] [--models ...] [--recipes ...]
                                    [--no-sensitivity] [--section NAME] [--out docs/w8a8.md]

1. Sensitivity: one layer class at a time (attention qkv / out, MLP fc1 / fc2, adaLN modulation, embedders,
   final layer, ...) is quantized as w8a8-minmax (INT8 per-channel weights, INT8 per-tensor static
   activations) while the rest stays float; also weights only and activations only. The measure is the SQNR
   of the noise prediction against FP on denoiser inputs from FP sampling trajectories (evaluation seed, all
   timesteps; calibration uses its own seed): forward passes only, so every class of both models is cheap.
2. Recipes: FP, w8a8-minmax, the three deployable W8A8 recipes and nvidia-modelopt's INT8 and FP8 baselines,
   sampled from the same noise, with bootstrap intervals.
Each run replaces its own generated block (`--section`) in the markdown; other blocks and the prose stay.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import time
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from trtq.eval.evaluate import Evaluator, QuantSpec, SamplingConfig, calibration_loop, device_name
from trtq.eval.metrics import format_interval
from trtq.pipeline import DigitsPipeline, balanced_labels
from trtq.quantize import quantize
from trtq.recipes import Recipe

MARKER = "<!-- w8a8-table:{section}:{end} -->"
MODELS = ("digits-dit", "digits-unet")
RECIPES = ("w8a8-minmax", "w8a8-fp8", "w8a8-smoothquant", "w8a8-dynamic", "modelopt-int8", "modelopt-fp8")

# Layer classes by module-name pattern (first match wins; every Conv2d/Linear falls in exactly one).
LAYER_CLASSES = {
    "digits-dit": {
        "patch embed (conv)": ["pos_embed.proj"],
        "timestep embedder": ["*timestep_embedder*"],
        "adaLN modulation": ["*norm1.linear"],
        "attention qkv": ["*attn1.to_[qkv]"],
        "attention out": ["*attn1.to_out.0"],
        "MLP fc1": ["*ff.net.0.proj"],
        "MLP fc2": ["*ff.net.2"],
        "final adaLN (proj_out_1)": ["proj_out_1"],
        "final linear (proj_out_2)": ["proj_out_2"],
    },
    "digits-unet": {
        "conv_in": ["conv_in"],
        "time embedding": ["time_embedding.*"],
        "resnet time_emb_proj": ["*time_emb_proj"],
        "resnet conv1/conv2": ["*resnets.*.conv[12]"],
        "resnet shortcut (1x1)": ["*conv_shortcut"],
        "down/upsamplers": ["*samplers.*"],
        "attention proj_in/out (1x1)": ["*attentions.*.proj_in", "*attentions.*.proj_out"],
        "self-attention qkv": ["*attn1.to_[qkv]"],
        "cross-attention qkv": ["*attn2.to_[qkv]"],
        "attention out": ["*to_out.0"],
        "MLP fc1": ["*ff.net.0.proj"],
        "MLP fc2": ["*ff.net.2"],
        "conv_out": ["conv_out"],
    },
}
_W = {"format": "int8", "granularity": "channel", "axis": 0}
_A = {"format": "int8", "granularity": "tensor"}


def class_recipe(patterns: list[str], weights: bool, inputs: bool, name: str) -> Recipe:
    """w8a8-minmax on the layers matching `patterns` only (weights and/or inputs); the rest stays float."""
    rule = {**({"weight": _W} if weights else {}), **({"input": _A} if inputs else {})}
    return Recipe.from_dict({"name": name, "rules": [{"pattern": p, **rule} for p in patterns]})


def check_classes(model_name: str, denoiser: nn.Module) -> None:
    """Every Conv2d/Linear belongs to exactly one class: the table accounts for every layer."""
    classes = LAYER_CLASSES[model_name]
    for name, m in denoiser.named_modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            hits = [c for c, pats in classes.items() if any(fnmatchcase(name, p) for p in pats)]
            if len(hits) != 1:
                raise AssertionError(f"{model_name}: layer {name} is in classes {hits}, expected exactly one")


def capture_inputs(model, cfg: SamplingConfig, samples: int, seed: int) -> list[tuple]:
    """(x_t, t, labels) of every denoiser call of an FP sampling run (CFG-doubled batches included)."""
    calls: list[tuple] = []
    labels = balanced_labels(samples, model.num_classes)
    both = torch.cat([labels, model.null_labels(samples)])

    def on_step(_, x, t):
        calls.append((x.detach().clone(), t, both.to(x.device)))

    DigitsPipeline(model, scheduler=cfg.scheduler)(labels, num_inference_steps=cfg.steps, seed=seed,
                                                   batch_size=samples, progress=False, on_step=on_step)
    return calls


@torch.no_grad()
def eps_sqnr_db(model, denoiser: nn.Module, calls: list[tuple], reference: list[torch.Tensor]) -> float:
    """SQNR (dB) of the noise prediction over all captured calls, pooled."""
    signal = noise = 0.0
    for (x, t, lab), ref in zip(calls, reference):
        out = model.predict_noise(x, t, lab, denoiser=denoiser).double()
        signal += (ref.double() ** 2).sum().item()
        noise += ((out - ref.double()) ** 2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


MODES = {"w8a8": (True, True), "w8": (True, False), "a8": (False, True)}


def sensitivity(model, cfg: SamplingConfig, samples: int = 20, modes=tuple(MODES)) -> list[dict]:
    """Per layer class, with W8A8 / weights only / activations only on that class alone: the SQNR of the noise
    prediction on FP trajectories (one step's error) and the PSNR of the final images against FP sampled from
    the same noise (what the errors add up to over the trajectory)."""
    from trtq.eval.metrics import psnr_db

    check_classes(model.name, model.denoiser)
    calls = capture_inputs(model, cfg, samples, seed=cfg.seed)
    pipe, labels = DigitsPipeline(model, scheduler=cfg.scheduler), balanced_labels(samples, model.num_classes)

    def images(denoiser):
        return pipe(labels, num_inference_steps=cfg.steps, seed=cfg.seed, batch_size=samples, progress=False,
                    denoiser=denoiser)

    with torch.no_grad():
        reference = [model.predict_noise(x, t, lab) for x, t, lab in calls]
    fp_images = images(model.denoiser)
    calib = calibration_loop(model, cfg)
    rows = []
    classes = {**LAYER_CLASSES[model.name], "all layers": ["*"]}
    for cls, patterns in classes.items():
        row = {"class": cls, "patterns": patterns}
        for key in modes:
            w, a = MODES[key]
            recipe = class_recipe(patterns, w, a, f"sens-{key}")
            denoiser = quantize(copy.deepcopy(model.denoiser).eval(), recipe, calib)
            row[key] = eps_sqnr_db(model, denoiser, calls, reference)
            row[f"{key}_psnr"] = psnr_db(images(denoiser), fp_images)
        rows.append(row)
        print(f"[{model.name}] {cls:<28} " + " ".join(f"{k}: eps SQNR {row[k]:6.2f} image PSNR {row[k + '_psnr']:6.2f}"
                                                    for k in modes), flush=True)
    return rows


def recipe_rows(model, cfg: SamplingConfig, classifier, reference, recipes, on_row=lambda rows: None) -> list[dict]:
    """FP and each recipe from the same noise; `on_row(rows)` after every row (the table is written as it grows)."""
    ev = Evaluator(model, cfg, classifier, reference)
    rows = [ev.run_fp()]
    print(f"[{model.name}] fp32 FID {format_interval(rows[0]['fid'], rows[0]['fid_ci'])}", flush=True)
    on_row(rows)
    for recipe in recipes:
        result, _ = ev.run(QuantSpec(recipe=recipe))
        rows.append(result)
        on_row(rows)
        print(f"[{model.name}] {recipe} FID {format_interval(result['fid'], result['fid_ci'])} "
              f"ΔFID {format_interval(result['fid_delta'], result['fid_delta_ci'], '+.2f')} "
              f"acc {format_interval(result['accuracy'], result['accuracy_ci'], '.1%')}", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", "",
             f"{result['date']}, {result['device']}, torch {result['torch']}; {result['steps']} DDIM steps with "
             "classifier-free guidance; calibration: 20 FP trajectories with their own seed.", ""]
    if result.get("sensitivity"):
        lines += ["### Sensitivity: one layer class quantized at a time", "",
                  "W8A8 = w8a8-minmax on that class only (the rest float); W8 = its weights only; A8 = its inputs "
                  "only. *eps SQNR*: SQNR (dB) of the noise prediction against FP, pooled over every denoiser call of "
                  f"{result['sensitivity_samples']} FP sampling trajectories (all timesteps, CFG batches): one step's "
                  "error. *image PSNR*: PSNR (dB) of the final images against FP from the same noise (same "
                  "trajectories): what the errors add up to. Higher is better for both.", ""]
        for name, rows in result["sensitivity"].items():
            lines += [f"**{name}**", "",
                      "| layer class | layers | eps SQNR W8A8 | W8 only | A8 only | image PSNR W8A8 | W8 only | A8 only |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                cells = [r.get(k) for k in ("w8a8", "w8", "a8", "w8a8_psnr", "w8_psnr", "a8_psnr")]
                lines.append(f"| {r['class']} | `{'`, `'.join(r['patterns'])}` | " +
                             " | ".join("—" if v is None else f"{v:.1f}" for v in cells) + " |")
            lines.append("")
    if result.get("recipes"):
        lines += ["### Recipes", "",
                  f"{result['samples']} samples per row, same noise and labels in every row. Brackets: 95% bootstrap "
                  "intervals over the samples (1000 resamples, seed 0); ΔFID is the paired difference to FP.", ""]
        for name, rows in result["recipes"].items():
            lines += [f"**{name}**", "",
                      "| recipe | digits-FID ↓ [95% CI] | ΔFID vs FP [95% CI] | PSNR vs FP (dB) ↑ | accuracy ↑ [95% CI] |"
                      " quantize (s) |", "|---|---:|---:|---:|---:|---:|"]
            for r in rows:
                fp = r["recipe"] == "fp32"
                lines.append(
                    f"| {r['recipe']} | {format_interval(r['fid'], r['fid_ci'])} | "
                    f"{'—' if fp else format_interval(r['fid_delta'], r['fid_delta_ci'], '+.2f')} | "
                    f"{'—' if fp or r['psnr_db'] is None else format(r['psnr_db'], '.2f')} | "
                    f"{format_interval(r['accuracy'], r['accuracy_ci'], '.1%')} | "
                    f"{r['seconds'].get('quantize', 0):.1f} |")
            lines.append("")
    return "\n".join(lines)


def write_doc(path: Path, text: str, section: str) -> None:
    """Replace the generated block of `section` in `path` (other sections and the prose stay), or append it."""
    begin, end = MARKER.format(section=section, end="begin"), MARKER.format(section=section, end="end")
    block = f"{begin}\n{text}\n{end}"
    old = path.read_text() if path.is_file() else "# W8A8 on the zoo models\n"
    if begin in old:
        head, rest = old.split(begin, 1)
        body = head + block + rest.split(end, 1)[1]
    else:
        body = old.rstrip("\n") + f"\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m trtq.eval.tables.w8a8", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=300, help="images per recipe row (default 300)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sensitivity-samples", type=int, default=20, help="trajectories for the SQNR probe")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), help="recipe rows (default: all; none: skip)")
    p.add_argument("--no-sensitivity", action="store_true")
    p.add_argument("--sensitivity-modes", nargs="+", default=list(MODES), choices=list(MODES),
                   help="w8a8 (both), w8 (weights only), a8 (inputs only); default all three")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="docs/w8a8.md")
    p.add_argument("--section", default="main", help="name of the generated block in --out that this run replaces")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from trtq.zoo import load_classifier, load_digits_images, load_model

    command = " ".join(["python -m trtq.eval.tables.w8a8", *(argv if argv is not None else __import__("sys").argv[1:])])
    result = {"command": command, "date": _dt.date.today().isoformat(), "device": device_name(args.device),
              "torch": torch.__version__, "samples": args.samples, "steps": args.steps,
              "sensitivity_samples": args.sensitivity_samples, "sensitivity": {}, "recipes": {}}
    classifier = load_classifier()
    out = Path(args.out)
    data = out.with_name(f"{out.stem}-{args.section}.json")

    def write() -> None:
        write_doc(out, markdown(result), args.section)
        data.write_text(json.dumps(result, indent=2) + "\n")

    for name in args.models:
        start = time.perf_counter()
        model = load_model(name).to(args.device)
        cfg = SamplingConfig(samples=args.samples, steps=args.steps, progress=False, device=args.device)
        if not args.no_sensitivity:
            result["sensitivity"][name] = sensitivity(model, cfg, args.sensitivity_samples, args.sensitivity_modes)
        if args.recipes:
            reference = load_digits_images(model.sample_size)[0]
            result["recipes"][name] = recipe_rows(model, cfg, classifier, reference, args.recipes,
                                                  on_row=lambda rows, name=name: (result["recipes"].update({name: rows}),
                                                                                  write()))
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s", flush=True)
    write()
    print(f"wrote {out} and {data}")


if __name__ == "__main__":
    main()
