"""The HQ-DiT table: FP4 W4A4 ablations against INT8/INT4 and NVFP4 on the zoo models.

    python -m trtq.eval.tables.hqdit [--samples N] [--steps S] [--threads T] [--all-rows] [--out docs/hqdit.md]

digits-dit gets every row; digits-unet (whose recipes touch only its Linear layers: attention, feed-forward
and time-embedding projections; convolutions stay float) gets the short list unless --all-rows. The
generated part of the markdown sits between two markers; the prose around it is kept when re-run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import io
import json
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import yaml
from torch import nn

from trtq.eval.evaluate import Evaluator, QuantSpec, SamplingConfig, calibration_loop, device_name, quantized_denoiser
from trtq.eval.metrics import format_interval, summarize
from trtq.eval.tables import write_generated_block
from trtq.formats import get_format
from trtq.nn.fp4_linear import FP4Linear
from trtq.nn.modules import is_quantized
from trtq.recipes import get_recipe

BEGIN, END = "<!-- hqdit-table:begin -->", "<!-- hqdit-table:end -->"
# (row label, recipe name or a variant key below, or "modelopt-nvfp4")
DIT_ROWS = [
    ("w8a8-minmax", "w8a8-minmax"),
    ("w4a4-int4", "w4a4-int4"),
    ("FP4 min-max", "w4a4-fp4-minmax"),
    ("+ clipping", "w4a4-fp4-clip"),
    ("+ Hadamard", "w4a4-fp4-hadamard"),
    ("+ format selection", "w4a4-fp4-format"),
    ("+ GPTQ = HQ-DiT", "w4a4-fp4-hqdit"),
    ("NVFP4 (min-max)", "w4a4-nvfp4"),
    ("W4A8 (FP4 w, FP8 a)", "w4a8-fp4"),
    ("modelopt NVFP4_DEFAULT_CFG", "modelopt-nvfp4"),
]
UNET_SHORT = ("w8a8-minmax", "w4a4-int4", "FP4 min-max", "+ GPTQ = HQ-DiT", "NVFP4 (min-max)",
              "modelopt NVFP4_DEFAULT_CFG")


def _variants(tmp: Path) -> dict[str, str]:
    """Recipes that exist only for this table, written as YAML files (QuantSpec takes names or files)."""
    full = get_recipe("w4a4-fp4-hqdit").to_dict()
    fmt = {**full, "name": "w4a4-fp4-format", "method_args": {**full["method_args"], "gptq": False},
           "description": "HQ-DiT without GPTQ (Hadamard + clipping + format selection)."}
    w8 = get_recipe("w8a8-minmax").to_dict()
    w8_linear = {**w8, "name": "w8a8-minmax-linear",
                 "rules": [{**r, "types": ["Linear"]} for r in w8["rules"]],
                 "description": "w8a8-minmax on Linear layers only (convolutions float)."}
    paths = {}
    for d in (fmt, w8_linear):
        p = tmp / f"{d['name']}.yaml"
        p.write_text(yaml.safe_dump(d, sort_keys=False))
        paths[d["name"]] = str(p)
    return paths


def stored_weight_bytes(denoiser: nn.Module) -> int:
    """Bytes of the denoiser's weights as a deployment stores them: FP4 layers = packed codes + scales (+ signs,
    static activation scales); fake-quantized layers = weight bits + FP32 scales; everything else FP32/as is."""
    total, counted = 0, set()
    for mod in denoiser.modules():
        if isinstance(mod, FP4Linear):
            total += sum(b.numel() * b.element_size() for b in mod.buffers())
            counted.add(id(mod.weight))
        elif is_quantized(mod) and mod.weight_quantizer is not None:
            wq = mod.weight_quantizer
            total += mod.weight.numel() * get_format(wq.scheme.format).bits // 8
            total += sum(b.numel() * 4 for b in wq.buffers())
            counted.add(id(mod.weight))
    total += sum(p.numel() * p.element_size() for p in denoiser.parameters() if id(p) not in counted)
    return total


def _formats(denoiser: nn.Module) -> str:
    layers = [m for m in denoiser.modules() if isinstance(m, FP4Linear)]
    if not layers:
        return ""
    short = lambda f: f.replace("fp4_", "").replace("fp8_", "").upper()  # noqa: E731
    w = Counter(short(m.weight_format) for m in layers)
    a = Counter(short(m.act_format) for m in layers)
    fmt = lambda c: " ".join(f"{k}×{v}" for k, v in sorted(c.items()))  # noqa: E731
    return f"w: {fmt(w)}; a: {fmt(a)}"


def _modelopt_nvfp4(model, cfg: SamplingConfig) -> nn.Module:
    """nvidia-modelopt's NVFP4_DEFAULT_CFG on the same layers as the FP4 recipes (the rest stays float)."""
    import modelopt.torch.quantization as mtq

    qcfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    # Later entries win: switch off what the FP4 recipes keep out of FP4 (convolutions, embedders, adaLN,
    # final layer); those stay float here rather than W8A8.
    for pattern in ("*pos_embed*", "*emb*", "*norm*", "*proj_out*", "*proj_in*", "*conv*"):
        qcfg["quant_cfg"].append({"quantizer_name": pattern, "enable": False})
    denoiser = copy.deepcopy(model.denoiser).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return mtq.quantize(denoiser, qcfg, forward_loop=calibration_loop(model, cfg))


def _row(ev: Evaluator, label: str, key: str, variants: dict) -> dict:
    times = {}
    start = time.perf_counter()
    try:
        if key == "modelopt-nvfp4":
            denoiser = _modelopt_nvfp4(ev.model, ev.cfg)
        else:
            denoiser = quantized_denoiser(ev.model, QuantSpec(recipe=variants.get(key, key)), ev.cfg)
        times["quantize"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        samples = ev.sample(denoiser)
        times["sample"] = round(time.perf_counter() - start, 1)
    except Exception as e:  # an outside tool that cannot run here gets a row saying so, never a number
        return {"label": label, "recipe": key, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    metrics = summarize(samples, ev.fp_samples, ev.labels, ev.classifier, ev.reference)
    size = None if key == "modelopt-nvfp4" else stored_weight_bytes(denoiser)
    return {"label": label, "recipe": key, **metrics, "bytes": size, "formats": _formats(denoiser), "seconds": times}


def run(samples: int, steps: int, all_rows: bool, device: str = "cpu") -> dict:
    from trtq.zoo import load_classifier, load_model

    classifier = load_classifier()
    out = {"date": _dt.date.today().isoformat(), "samples": samples, "steps": steps,
           "machine": device_name(device),
           "torch": torch.__version__, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        variants = _variants(Path(tmp))
        for name in ("digits-dit", "digits-unet"):
            from trtq.zoo import load_digits_images

            model = load_model(name).to(device)
            cfg = SamplingConfig(samples=samples, steps=steps, progress=False, device=device)
            ev = Evaluator(model, cfg, classifier, load_digits_images(model.sample_size)[0])
            fp = ev.run_fp()
            rows = [{"label": "FP32", "recipe": "fp32",
                     **{k: fp[k] for k in ("fid", "fid_ci", "accuracy", "accuracy_ci")},
                     "psnr_db": None, "ssim": None, "bytes": stored_weight_bytes(model.denoiser), "formats": "",
                     "seconds": fp["seconds"]}]
            print(f"[{name}] FP32 FID {fp['fid']:.2f}", flush=True)
            for label, key in DIT_ROWS:
                if name == "digits-unet" and not all_rows and label not in UNET_SHORT:
                    continue
                if name == "digits-unet" and key == "w8a8-minmax":
                    key = "w8a8-minmax-linear"
                r = _row(ev, label, key, variants)
                rows.append(r)
                msg = r["error"] if "error" in r else f"FID {r['fid']:.2f} PSNR {r['psnr_db']:.2f}"
                print(f"[{name}] {label}: {msg}", flush=True)
            out["models"].append({"model": name, "rows": rows})
    return out


def _cell(v, spec):
    return "—" if v is None else format(v, spec)


def markdown_table(result: dict) -> str:
    lines = [f"{result['samples']} samples per row, {result['steps']} DDIM steps, {result['machine']}, "
             f"torch {result['torch']}, {result['date']}. Brackets: 95% bootstrap intervals over the samples; "
             "ΔFID = paired difference to FP (same noise, same resamples).", ""]
    for m in result["models"]:
        lines += [f"**{m['model']}**", "",
                  "| configuration | recipe | digits-FID ↓ [95% CI] | ΔFID vs FP | PSNR vs FP (dB) ↑ | SSIM vs FP ↑ | "
                  "accuracy ↑ [95% CI] | weights (bytes) | FP4 formats chosen | quantize (s) | sample (s) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for r in m["rows"]:
            if "error" in r:
                why = f"needs CUDA; {r['error']}" if "CUDA" in r["error"] else r["error"]
                lines.append(f"| {r['label']} | {r['recipe']} | could not be measured here ({why}) | | | | | | | | |")
                continue
            s = r["seconds"]
            size = "—" if r["bytes"] is None else f"{r['bytes']:,}"
            delta = format_interval(r["fid_delta"], r["fid_delta_ci"], "+.2f") if "fid_delta" in r else "—"
            lines.append(f"| {r['label']} | {r['recipe']} | {format_interval(r['fid'], r.get('fid_ci'))} | {delta} | "
                         f"{_cell(r['psnr_db'], '.2f')} | {_cell(r['ssim'], '.4f')} | "
                         f"{format_interval(r['accuracy'], r.get('accuracy_ci'), '.1%')} | {size} | {r['formats']} | "
                         f"{s.get('quantize', 0):.1f} | {s['sample']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_doc(path: Path, table: str, command: str) -> None:
    write_generated_block(path, table, command, BEGIN, END, "HQ-DiT: FP4 W4A4 on the zoo models")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m trtq.eval.tables.hqdit", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--all-rows", action="store_true", help="every configuration on digits-unet as well")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--out", default="docs/hqdit.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.samples, args.steps, args.all_rows, args.device)
    out = Path(args.out)
    command = "python -m trtq.eval.tables.hqdit " + " ".join(
        a for a in (f"--samples {args.samples}", f"--steps {args.steps}" if args.steps != 20 else "",
                    f"--threads {args.threads}" if args.threads else "", "--all-rows" if args.all_rows else "",
                    f"--device {args.device}" if args.device != "cpu" else "",
                    f"--out {args.out}") if a)
    write_doc(out, markdown_table(result), command)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
