"""FP4 group-wise GEMM benchmark: `python -m trtq.bench.fp4 --out docs/benchmarks` (needs a CUDA GPU).

1. Linear layers of DiT-XL/2 (256x256, batch 8 with CFG: 16 images × 256 tokens = M 4096; adaLN: M 16),
   PixArt-α (hidden 1152) and Flux (hidden 3072) at M = 256 ... 16384. For each shape:
   our op (W4A4 E2M1, dynamic activations) with groups of 32, 128 and per-channel (group = K: per-channel
   weight scales, per-token activation scales, one scaling in the epilogue), NVFP4 (groups of 16, FP8
   scales), the fused activation quantization, and the GEMM alone on pre-quantized activations; cuBLAS BF16
   (`torch.matmul`); FP8 E4M3 per-tensor `torch._scaled_mm` on pre-quantized operands.
   GPU time per call from CUDA-graph replays (trtq.bench.timing; host launch overhead out), rotating over
   3 input sets, median of --runs (≥ 50); the Python-launched (eager) time beside it.
2. A whole DiT-XL/2 forward (diffusers `DiTTransformer2DModel`, published config, random weights, BF16,
   256x256, batch 8 with CFG): BF16 under torch.compile vs the w4a4-fp4-hqdit and w4a8-fp4 recipes running
   these kernels under torch.compile.
Writes <out>/fp4-<gpu>.json and <out>/fp4-<gpu>.md (device, date, torch / Triton / CUDA versions).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import re
import statistics
import sys
from pathlib import Path

import torch

from trtq.bench.timing import eager_ms, graph_ms
from trtq.kernels import direct_launches

# Dense tensor-core peaks (TFLOPS, datasheet, without sparsity): BF16, FP8, by the first substring of the
# device name that matches (an H100 SXM calls itself "NVIDIA H100 80GB HBM3"). Leads for "fraction of
# peak"; the measured cuBLAS rows say what is reachable.
PEAKS = [("H100 PCIe", 756.0, 1513.0), ("H100 NVL", 835.0, 1671.0), ("H100", 989.0, 1979.0),
         ("H200", 989.0, 1979.0), ("L40S", 362.0, 733.0), ("L4", 121.0, 242.0)]

DIT_M = 16 * 256  # batch 8, CFG doubles it; 256x256 -> 32x32 latent -> 16x16 patches of 2
# (model, layer, N, K, M values)
SHAPES = [
    ("DiT-XL/2", "attn q/k/v", 1152, 1152, [DIT_M]),
    ("DiT-XL/2", "attn qkv fused", 3456, 1152, [DIT_M]),
    ("DiT-XL/2", "attn out", 1152, 1152, [DIT_M]),
    ("DiT-XL/2", "mlp fc1", 4608, 1152, [DIT_M]),
    ("DiT-XL/2", "mlp fc2", 1152, 4608, [DIT_M]),
    ("DiT-XL/2", "adaLN", 6912, 1152, [16]),
    ("PixArt-α", "attn q/k/v/out", 1152, 1152, [256, 1024, 4096, 16384]),
    ("PixArt-α", "mlp fc1", 4608, 1152, [256, 1024, 4096, 16384]),
    ("PixArt-α", "mlp fc2", 1152, 4608, [256, 1024, 4096, 16384]),
    ("Flux", "attn q/k/v/out", 3072, 3072, [256, 1024, 4096, 16384]),
    ("Flux", "mlp fc1", 12288, 3072, [256, 1024, 4096, 16384]),
    ("Flux", "mlp fc2", 3072, 12288, [256, 1024, 4096, 16384]),
]
# (name, group size (None = K), scale format, fused activation quantization)
OURS = [("fp4-g32", 32, "float32", False), ("fp4-g32-fused", 32, "float32", True),
        ("fp4-g128", 128, "float32", False), ("fp4-perchannel", None, "float32", False),
        ("nvfp4-g16", 16, "fp8_e4m3", False)]


SETS = 3  # input sets a measurement rotates over (each its own x and weights), so L2 does not hold them all


def _times(fn, sets: list, runs: int) -> dict:
    """{"ms": GPU time per call (CUDA graph of one call per input set, replayed), "eager_ms": launched from
    Python}; see trtq.bench.timing."""
    return {"ms": graph_ms(fn, sets, runs), "eager_ms": eager_ms(fn, sets, runs)}


def _device_info() -> dict:
    import triton

    name = torch.cuda.get_device_name()
    peak = next(((bf16, fp8) for key, bf16, fp8 in PEAKS if key in name), (None, None))
    return {"device": name, "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "peak_tflops_bf16": peak[0], "peak_tflops_fp8": peak[1]}


def _packed_layer(n: int, k: int, g: int, scale_format: str):
    """Random weights quantized as FP4Linear stores them: (packed, scales, tensor scale or None, bytes)."""
    from trtq.formats import get_format, pack_4bit
    from trtq.fp4 import group_amax, quantize_groups, scales_from_amax
    from trtq.quantizer import double_quantize_scale

    w = torch.randn(n, k, device="cuda")
    fp8 = None if scale_format == "float32" else scale_format
    scale = scales_from_amax(group_amax(w, g), "fp4_e2m1", fp8)
    stored, tensor_scale = scale, None
    if fp8:
        stored, tensor_scale, scale = double_quantize_scale(scale, fp8)
    codes = get_format("fp4_e2m1").encode(quantize_groups(w, scale, "fp4_e2m1", g).cpu())
    packed = pack_4bit(codes).cuda()
    return packed, stored, tensor_scale, packed.numel() + stored.numel() * stored.element_size()


def bench_linear(n: int, k: int, m: int, runs: int) -> list[dict]:
    from trtq.kernels import fp4_gemm as kernels
    from trtq.ops.fp4_gemm import reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(SETS)]
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(SETS)]
    flops = 2.0 * m * n * k
    rows = [{"impl": "bf16 torch.matmul", "weight_bytes": n * k * 2, "peak": "bf16",
             **_times(lambda xw: torch.matmul(xw[0], xw[1].T), list(zip(xs, ws)), runs)}]
    one = torch.ones((), device="cuda")
    fp8 = [(x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)) for x, w in zip(xs, ws)]
    rows.append({"impl": "fp8 torch._scaled_mm (per tensor)", "weight_bytes": n * k, "peak": "fp8",
                 **_times(lambda xw: torch._scaled_mm(xw[0], xw[1].T, one, one, out_dtype=torch.bfloat16), fp8,
                          runs)})
    for name, g, scale_format, fused in OURS:
        g = g or k
        row = {"impl": f"ours {name}", "group": g, "peak": "fp8"}
        try:
            layers = [_packed_layer(n, k, g, scale_format) for _ in range(SETS)]
            row["weight_bytes"] = layers[0][3]
            sets = [(x,) + layer[:3] for x, layer in zip(xs, layers)]
            op = lambda s: kernels.fp4_group_gemm(s[0], s[1], s[2], s[3], None, None, "fp4_e2m1", "fp4_e2m1", g,  # noqa: E731
                                                  scale_format, 1.0, fuse_act_quant=fused)
            row.update(_times(op, sets, runs))
            # the tuned kernels' result on this very shape against the op's PyTorch reference
            ref = reference(*sets[0][:4], None, None, "fp4_e2m1", "fp4_e2m1", g, scale_format, 1.0).float()
            row["rel_err_vs_reference"] = ((op(sets[0]).float() - ref).norm() / ref.norm()).item()
            if not fused:  # the two kernels apart: activation quantization, GEMM on quantized activations
                quant = lambda x: kernels.quantize_activations(x, None, "fp4_e2m1", g, scale_format != "float32", 1.0)  # noqa: E731,E501
                row["act_quant_ms"] = graph_ms(quant, xs, runs)
                row["gemm_ms"] = row["ms"] - row["act_quant_ms"]
        except Exception as e:  # reported in the table, and the other implementations still run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        rows.append(row)
    for row in rows:
        if "ms" in row:
            row["tflops"] = flops / row["ms"] / 1e9
    return rows


def _dit_xl(device: str = "cuda"):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(out_channels=8).to(device=device, dtype=torch.bfloat16).eval()


def bench_dit(runs: int, warmup: int) -> list[dict]:
    """Whole DiT-XL/2 forward at 256x256, batch 8 with CFG (16 images), BF16 vs FP4 recipes, torch.compile."""
    import trtq

    gen = torch.Generator(device="cuda").manual_seed(0)
    latents = torch.randn(16, 4, 32, 32, device="cuda", dtype=torch.bfloat16, generator=gen)
    t = torch.full((16,), 500, device="cuda")
    labels = torch.cat([torch.arange(8, device="cuda"), torch.full((8,), 1000, device="cuda")])
    base = _dit_xl()

    def calib(model):
        with torch.no_grad():
            for step in (900, 500, 100):
                model(latents, timestep=torch.full((16,), step, device="cuda"), class_labels=labels)

    results = []
    for name in ("bf16", "w4a8-fp4", "w4a4-fp4-hqdit"):
        row = {"model": "DiT-XL/2 256x256 batch 8 + CFG", "variant": name}
        try:
            model = base if name == "bf16" else trtq.quantize(copy.deepcopy(base), name, calib).eval()
            compiled = torch.compile(model)
            with torch.no_grad():
                fwd = lambda: compiled(latents, timestep=t, class_labels=labels)  # noqa: E731
                row["eager_ms"] = eager_ms(lambda _: fwd(), [None], runs, warmup)
                row["ms"] = graph_ms(lambda _: fwd(), [None], runs)
        except Exception as e:  # report, never hide: a variant that fails (or fails to capture) says why
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        results.append(row)
        torch.cuda.empty_cache()
    bf16 = next((r["ms"] for r in results if r["variant"] == "bf16" and "ms" in r), None)
    for r in results:
        if bf16 and "ms" in r:
            r["speedup_vs_bf16"] = bf16 / r["ms"]
    return results


def markdown(info: dict, linears: list[dict], models: list[dict]) -> str:
    lines = [f"# FP4 group GEMM benchmark: {info['device']}", "",
             f"{info['date']} · sm_{info['capability'].replace('.', '')} · torch {info['torch']} · "
             f"Triton {info['triton']} · CUDA {info['cuda']} · `python -m trtq.bench.fp4`", "",
             f"GPU time of one call from CUDA-graph replays, rotating over {SETS} input sets (median of the "
             "runs; host launch overhead out; `eager`: launched from Python). Ours: W4A4 E2M1 with dynamic "
             "activations (activation quantization + GEMM; `act quant` is the first kernel alone). "
             "% peak: of the dense datasheet peak (BF16 for cuBLAS BF16, FP8 otherwise).", "",
             "| model | layer | M | N | K | implementation | ms | eager ms | act quant ms | TFLOPS | % peak | "
             "x BF16 | weight MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in linears:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['layer']} | {r['M']} | {r['N']} | {r['K']} | {r['impl']} | "
                         f"failed: {r['error']} | | | | | | |")
            continue
        peak = info[f"peak_tflops_{r['peak']}"]
        pct = f"{100 * r['tflops'] / peak:.0f}" if peak else "–"
        aq = f"{r['act_quant_ms']:.4f}" if "act_quant_ms" in r else ""
        lines.append(f"| {r['model']} | {r['layer']} | {r['M']} | {r['N']} | {r['K']} | {r['impl']} | "
                     f"{r['ms']:.4f} | {r['eager_ms']:.4f} | {aq} | {r['tflops']:.0f} | {pct} | {r['speedup_vs_bf16']:.2f} | "
                     f"{r['weight_bytes'] / 2**20:.2f} |")
    if models:
        lines += ["", "| model | variant | ms / forward (CUDA graph) | eager ms | x BF16 |", "|---|---|---|---|---|"]
        for r in models:
            ms = f"{r['ms']:.2f}" if "ms" in r else "failed: " + r.get("error", "")
            eager = f"{r['eager_ms']:.2f}" if "eager_ms" in r else ""
            sp = f"{r['speedup_vs_bf16']:.2f}" if "speedup_vs_bf16" in r else ""
            lines.append(f"| {r['model']} | {r['variant']} | {ms} | {eager} | {sp} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trtq.bench.fp4", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/benchmarks", help="directory for fp4-<gpu>.json and .md")
    p.add_argument("--runs", type=int, default=100, help="timed runs per measurement (median; at least 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (compilation, autotuning)")
    p.add_argument("--models", default="DiT-XL/2,PixArt-α,Flux", help="comma-separated subset of the shapes")
    p.add_argument("--max-m", type=int, default=16384, help="skip shapes with a larger M")
    p.add_argument("--no-model", action="store_true", help="skip the whole DiT-XL/2 forward")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("trtq.bench.fp4: needs a CUDA GPU (torch.cuda.is_available() is False on this machine)",
              file=sys.stderr)
        return 2
    if args.runs < 50:
        p.error("--runs must be at least 50")
    info = _device_info()
    wanted = set(args.models.split(","))
    linears = []
    for model, layer, n, k, ms in SHAPES:
        if model not in wanted:
            continue
        for m in (m for m in ms if m <= args.max_m):
            with direct_launches():  # eager calls of the launch functions: no wrap_triton dispatch
                rows = bench_linear(n, k, m, args.runs)
            bf16 = rows[0]["ms"]
            for r in rows:
                r.update(model=model, layer=layer, M=m, N=n, K=k)
                if "error" in r:
                    print(f"{model:9s} {layer:15s} M={m:6d} {r['impl']:34s} FAILED {r['error']}", flush=True)
                    continue
                r["speedup_vs_bf16"] = bf16 / r["ms"]
                err = f" rel.err {r['rel_err_vs_reference']:.1e}" if "rel_err_vs_reference" in r else ""
                print(f"{model:9s} {layer:15s} M={m:6d} N={n:6d} K={k:6d} {r['impl']:34s} {r['ms']:.4f} ms "
                      f"(eager {r['eager_ms']:.4f}) {r['tflops']:6.0f} TFLOPS x{r['speedup_vs_bf16']:.2f}{err}",
                      flush=True)
            linears += rows
        _write(Path(args.out), info, linears, [])  # after each model's shapes: a run cut short keeps them
    models = [] if args.no_model else bench_dit(max(args.runs // 2, 50), args.warmup)
    for r in models:
        print(r, flush=True)
    _write(Path(args.out), info, linears, models)
    return 0


def _write(out: Path, info: dict, linears: list[dict], models: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    (out / f"fp4-{slug}.json").write_text(json.dumps({**info, "linears": linears, "models": models}, indent=1))
    (out / f"fp4-{slug}.md").write_text(markdown(info, linears, models))
    print(f"wrote {out / f'fp4-{slug}.json'} and .md", flush=True)


if __name__ == "__main__":
    sys.exit(main())
