"""Benchmark of the Winograd INT8 conv kernels on the 3x3 stride-1 convs of SD 1.5 and SDXL UNets.

    python -m trtq.bench.winograd --out docs/benchmarks        (needs a CUDA GPU; exits 2 without one)

For every distinct 3x3 stride-1 conv shape of the SD 1.5 UNet at 512x512 (latent 64x64) and of the SDXL UNet
at 1024x1024 (latent 128x128), batch 2 (classifier-free guidance), built from the published configs with
random weights (on the meta device: shapes only, nothing downloaded): our F(4,3) and F(6,3) against cuDNN
FP16 and BF16 (`conv2d`, channels-last, cudnn.benchmark). CUDA events, warm-up, the median of >= 50 runs,
rotating over several input sets so that L2 does not hold the input. Achieved TOPS (direct-conv operations:
2 N Cout Cin 9 Ho Wo) and bytes moved against the ceilings measured on the device (a large copy; FP16 and
INT8 matrix products). Per stage: input transform + quantization, INT8 GEMMs (writing M), output transform
(reading M), and the fused GEMM + output transform. Then one whole SD 1.5 UNet step (random weights, 512x512,
batch 2) under torch.compile: FP16 against w8a8-winograd-f43 / -f63 (transform scales left at their
standard values: learning them changes numbers, not speed), and against the Winograd convs alone.
Writes docs/benchmarks/winograd-<gpu>.json and .md (device, date, torch / Triton / CUDA versions).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trtq.bench.timing import eager_ms, graph_ms
from trtq.kernels import direct_launches

# The published UNet configs (diffusers config.json of runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-xl-base-1.0), the fields that shape the convs.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, downsample_padding=1)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=2048,
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, downsample_padding=1)
MODELS = {"sd15": (SD15_UNET, 64, 768), "sdxl": (SDXL_UNET, 128, 2048)}
BATCH = 2  # classifier-free guidance: conditional and unconditional halves in one batch
TILES = (4, 6)
GROUP_SIZE = 32


@dataclass(frozen=True, order=True)
class ConvShape:
    batch: int
    cin: int
    cout: int
    h: int
    w: int
    padding: int

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.h + 2 * self.padding - 2, self.w + 2 * self.padding - 2

    @property
    def ops(self) -> int:
        """Operations of the direct convolution (a multiply-add counts 2), the TOPS every method is rated by."""
        ho, wo = self.out_hw
        return 2 * self.batch * self.cout * self.cin * 9 * ho * wo


def unet_inputs(config: dict, latent: int, context_dim: int, batch: int, device="meta"):
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, 1280, device=device),
                                       "time_ids": torch.zeros(batch, 6, device=device)}
    return (torch.zeros(batch, 4, latent, latent, device=device), torch.tensor(999, device=device),
            torch.zeros(batch, 77, context_dim, device=device)), kwargs


def conv3x3_shapes(model: str, batch: int = BATCH) -> list[ConvShape]:
    """Every distinct 3x3 stride-1 conv shape one UNet step runs (traced on the meta device)."""
    from diffusers import UNet2DConditionModel

    config, latent, context_dim = MODELS[model]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    shapes = set()

    def record(module, args):
        x = args[0]
        shapes.add(ConvShape(x.shape[0], module.in_channels, module.out_channels, x.shape[2], x.shape[3],
                             module.padding[0]))

    for m in unet.modules():
        if (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)
                and m.dilation == (1, 1) and m.groups == 1 and m.padding[0] == m.padding[1]):
            m.register_forward_pre_hook(record)
    args, kwargs = unet_inputs(config, latent, context_dim, batch)
    with torch.no_grad():
        unet(*args, **kwargs)
    return sorted(shapes)


def ceilings(repeats: int) -> dict:
    """Measured device ceilings: copy bandwidth (read + write), FP16 and INT8 matrix-product rates."""
    n = 1 << 28  # 512 MiB of fp16
    src = torch.randn(n, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    t = graph_ms(lambda _: dst.copy_(src), [None], repeats)
    k = 8192
    a = torch.randn(k, k, device="cuda", dtype=torch.float16)
    t_mm = graph_ms(lambda _: a @ a, [None], repeats)
    ai = torch.randint(-128, 127, (k, k), device="cuda", dtype=torch.int8)
    t_int = graph_ms(lambda _: torch._int_mm(ai, ai), [None], repeats)
    return {"copy_GBps": 2 * n * 2 / t / 1e6, "fp16_mm_TFLOPS": 2 * k**3 / t_mm / 1e9,
            "int8_mm_TOPS": 2 * k**3 / t_int / 1e9}


def bench_shape(s: ConvShape, repeats: int, sets: int = 4) -> dict:
    from trtq.kernels import winograd as wk
    from trtq.winograd.conv import transform_weight
    from trtq.winograd.quant import quantize_weight
    from trtq.winograd.transforms import winograd_matrices

    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(s.batch, s.cin, s.h, s.w, device="cuda", generator=gen).to(memory_format=torch.channels_last)
          for _ in range(sets)]
    weight = torch.randn(s.cout, s.cin, 3, 3, device="cuda", generator=gen) * (2 / (9 * s.cin)) ** 0.5
    bias = torch.randn(s.cout, device="cuda", generator=gen)
    row = asdict(s) | {"gops": s.ops / 1e9}
    ho, wo = s.out_hw
    act_bytes = 2 * s.batch * (s.cin * s.h * s.w + s.cout * ho * wo)  # FP16 input read + output written once
    for name, dtype in (("cudnn_fp16", torch.float16), ("cudnn_bf16", torch.bfloat16)):
        x16 = [x.to(dtype) for x in xs]
        w16, b16 = weight.to(dtype).to(memory_format=torch.channels_last), bias.to(dtype)
        conv = lambda x: F.conv2d(x, w16, b16, padding=s.padding)  # noqa: E731
        ms = graph_ms(conv, x16, repeats)
        row[name] = {"ms": ms, "eager_ms": eager_ms(conv, x16, repeats), "TOPS": s.ops / ms / 1e9,
                     "GBps": (act_bytes + 2 * weight.numel()) / ms / 1e6}
    if s.cin % GROUP_SIZE:
        row["note"] = f"Cin {s.cin} is not a multiple of {GROUP_SIZE}: the recipes run this conv as w8a8-minmax"
        return row
    x16 = [x.half() for x in xs]
    pad = (s.padding, s.padding)
    for tile in TILES:
        at, g, bt = (m.cuda() for m in winograd_matrices(tile))
        codes, w_scale = quantize_weight(transform_weight(weight, g), GROUP_SIZE, "group")
        n = tile + 2
        args = (codes, w_scale, bias, at, bt, tile, list(pad), GROUP_SIZE, "group", None)
        out = {}
        for variant in wk.INPUT_KERNELS:
            for label, fuse in (("fused", True), ("split", False)):
                op = lambda x: wk.winograd_conv_int8_triton(x, *args, fuse_output=fuse, input_variant=variant)  # noqa: E731,E501
                ms = graph_ms(op, x16, repeats)
                out[label if variant == "rows" else f"{label}-{variant}"] = {
                    "ms": ms, "eager_ms": eager_ms(op, x16, repeats), "TOPS": s.ops / ms / 1e9,
                    "GBps": (act_bytes + codes.numel() + 4 * w_scale.numel()) / ms / 1e6}
        # The variants against the op's PyTorch reference on the first input set (relative L2 error).
        from trtq.ops.winograd_conv import winograd_conv_int8_reference
        ref = winograd_conv_int8_reference(x16[0], *args).float()
        for variant in wk.INPUT_KERNELS:
            y_v = wk.winograd_conv_int8_triton(x16[0], *args, input_variant=variant).float()
            out[f"rel_err_{variant}"] = ((y_v - ref).norm() / ref.norm()).item()
        # Per stage, each launched alone on the same data.
        out_h, out_w, th, tw = wk._grid_shape(x16[0], tile, pad)
        vq, sa, strides = wk.input_stage(x16[0], bt, tile, pad, GROUP_SIZE, "group", None)
        y = torch.empty(s.batch, s.cout, out_h, out_w, device="cuda", dtype=torch.float16,
                        memory_format=torch.channels_last)
        m = torch.empty(n * n, vq.shape[1], s.cout, device="cuda")
        stage = lambda mode, src, dst: (lambda _: wk.gemm_stage(  # noqa: E731
            src, codes, w_scale, sa, strides, at, bias, dst, tile, GROUP_SIZE, mode, (th, tw), (out_h, out_w)))
        out["stages_ms"] = {
            "input_transform_quant": graph_ms(lambda x: wk.input_stage(x, bt, tile, pad, GROUP_SIZE, "group", None,
                                                                       "rows"), x16, repeats),
            "input_transform_quant_positions": graph_ms(
                lambda x: wk.input_stage(x, bt, tile, pad, GROUP_SIZE, "group", None, "positions"), x16, repeats),
            "gemm_to_M": graph_ms(stage(1, vq, m), [None], repeats),
            "output_transform_from_M": graph_ms(stage(2, m, y), [None], repeats),
            "gemm_fused_output": graph_ms(stage(0, vq, y), [None], repeats),
        }
        best = min(v["ms"] for k, v in out.items() if k.startswith(("fused", "split")))
        out["best_ms"] = best
        out["speedup_vs_cudnn_fp16"] = row["cudnn_fp16"]["ms"] / best
        row[f"F({tile},3)"] = out
    return row


# ---------------------------------------------------------------------------------------------------------
# Whole SD 1.5 UNet step

def unet_step(repeats: int, only: list[str] | None = None) -> dict:
    from diffusers import UNet2DConditionModel

    import trtq
    from trtq.recipes import LayerRule, Recipe

    torch.manual_seed(0)
    config, latent, context_dim = MODELS["sd15"]
    base = UNet2DConditionModel(**config).eval()
    args, kwargs = unet_inputs(config, latent, context_dim, BATCH, device="cuda")
    args = (torch.randn_like(args[0]).half(), args[1], torch.randn_like(args[2]).half())
    winograd_rule = lambda tile: trtq.get_recipe(f"w8a8-winograd-f{tile}3").rules[0]  # noqa: E731
    variants = {
        "fp16": None,
        "w8a8-winograd-f43": "w8a8-winograd-f43",
        "w8a8-winograd-f63": "w8a8-winograd-f63",
        "winograd-f43-convs-only": Recipe(name="winograd-f43-convs-only", rules=(winograd_rule(4),)),
    }
    results = {}
    for name, recipe in variants.items():
        if only and name not in only:
            continue
        model = copy.deepcopy(base)
        if recipe is not None:
            # prepare + calibrate, not the recipe's method: learned transform scales change numbers, not speed.
            trtq.prepare(model, recipe)
            model = model.cuda().half().to(memory_format=torch.channels_last)
            trtq.calibrate(model, lambda m: m(*args, **kwargs))
        else:
            model = model.cuda().half().to(memory_format=torch.channels_last)
        compiled = torch.compile(model)
        with torch.no_grad():
            try:
                step = lambda _: compiled(*args, **kwargs)  # noqa: E731
                results[name] = {"eager_ms": eager_ms(step, [None], repeats, warmup=3)}
                results[name]["ms"] = graph_ms(step, [None], repeats)
            except Exception as e:  # a variant that does not compile (or capture) is reported, not hidden
                results.setdefault(name, {})["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        del model, compiled
        torch.cuda.empty_cache()
    if "ms" in results.get("fp16", {}):
        for r in results.values():
            if "ms" in r:
                r["speedup_vs_fp16_compile"] = results["fp16"]["ms"] / r["ms"]
    return results


# ---------------------------------------------------------------------------------------------------------

def environment() -> dict:
    import triton

    return {"device": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version()}


def _best(f: dict) -> str:
    """'ms (which)': the fastest of the op's variants (fused/split output x rows/positions input kernel)."""
    name = min((k for k in f if k.startswith(("fused", "split"))), key=lambda k: f[k]["ms"])
    return f"{f[name]['ms']:.4f} ({name})"


def markdown(result: dict) -> str:
    env, lines = result["environment"], []
    lines += [f"# Winograd INT8 conv benchmark: {env['device']}", "",
              f"{env['date']}; torch {env['torch']}, Triton {env['triton']}, CUDA {env['cuda']}, "
              f"cuDNN {env['cudnn']}. Batch {BATCH}, channels-last, group size {GROUP_SIZE}. GPU time of one "
              f"call from CUDA-graph replays (median of {result['repeats']}; trtq.bench.timing), so host launch "
              "overhead is out; `eager` is the same call launched from Python.", "",
              "Measured ceilings: " + ", ".join(f"{k} {v:.0f}" for k, v in result["ceilings"].items()), ""]
    for model, rows in result["shapes"].items():
        lines += [f"## {model}: 3x3 stride-1 convs", "",
                  "| N x Cin x H x W -> Cout | cuDNN FP16 ms | BF16 ms | F(4,3) ms (variant) | F(6,3) ms (variant) | "
                  "F(4,3) x | F(6,3) x | F(4,3) eager ms | F(4,3) stages in rows/in positions/gemm/out/fused ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            shape = f"{r['batch']}x{r['cin']}x{r['h']}x{r['w']} -> {r['cout']}"
            if "error" in r:
                lines.append(f"| {shape} | failed: {r['error']} | | | | | | | |")
                continue
            if "note" in r:
                lines.append(f"| {shape} | {r['cudnn_fp16']['ms']:.4f} | {r['cudnn_bf16']['ms']:.4f} | {r['note']} "
                             "| | | | | |")
                continue
            f4, f6 = r["F(4,3)"], r["F(6,3)"]
            st = f4["stages_ms"]
            lines.append(
                f"| {shape} | {r['cudnn_fp16']['ms']:.4f} | {r['cudnn_bf16']['ms']:.4f} | {_best(f4)} | {_best(f6)} | "
                f"{f4['speedup_vs_cudnn_fp16']:.2f} | {f6['speedup_vs_cudnn_fp16']:.2f} | "
                f"{min(v['eager_ms'] for k, v in f4.items() if k.startswith(('fused', 'split'))):.4f} | "
                f"{st['input_transform_quant']:.4f} / {st.get('input_transform_quant_positions', float('nan')):.4f} / "
                f"{st['gemm_to_M']:.4f} / {st['output_transform_from_M']:.4f} / {st['gemm_fused_output']:.4f} |")
        speed = sorted(r["F(4,3)"]["speedup_vs_cudnn_fp16"] for r in rows if "F(4,3)" in r)
        if speed:
            lines += ["", f"Median F(4,3) speed-up over cuDNN FP16: {statistics.median(speed):.2f}x", ""]
    if "unet_step" in result:
        lines += ["## Whole SD 1.5 UNet step (512x512, batch 2, torch.compile)", "",
                  "| variant | ms (CUDA graph) | eager ms | x FP16 |", "|---|---|---|---|"]
        for name, r in result["unet_step"].items():
            graph = f"{r['ms']:.2f}" if "ms" in r else f"failed: {r.get('error', '')}"
            eager = f"{r['eager_ms']:.2f}" if "eager_ms" in r else ""
            lines.append(f"| {name} | {graph} | {eager} | {r.get('speedup_vs_fp16_compile', 0):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtq.bench.winograd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="folder for the .json and .md")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per measurement (median; >= 50)")
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--shapes", default="", help="only these convs, as CINxCOUTxH (e.g. 320x320x64); default all")
    parser.add_argument("--no-unet", action="store_true", help="skip the whole SD 1.5 UNet step")
    parser.add_argument("--unet-variants", default="", help="comma-separated subset of the UNet-step variants "
                        "(fp16, w8a8-winograd-f43, w8a8-winograd-f63, winograd-f43-convs-only); default all")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("trtq.bench.winograd: a CUDA GPU is needed (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result = {"environment": environment(), "repeats": args.repeats, "ceilings": ceilings(args.repeats), "shapes": {}}
    for model in args.models.split(","):
        result["shapes"][model] = []
        wanted = {w for w in args.shapes.split(",") if w}
        for s in conv3x3_shapes(model):
            if wanted and f"{s.cin}x{s.cout}x{s.h}" not in wanted:
                continue
            try:
                with direct_launches():  # eager calls of the launch functions: no wrap_triton dispatch
                    row = bench_shape(s, args.repeats)
            except Exception as e:  # a shape that fails is reported with its error, and the others still run
                row = asdict(s) | {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
                print(f"{model} {s}: FAILED {row['error']}", flush=True)
                result["shapes"][model].append(row)
                continue
            gains = row.get("note") or ", ".join(f"{k} x{row[k]['speedup_vs_cudnn_fp16']:.2f}"
                                                 for k in ("F(4,3)", "F(6,3)"))
            print(f"{model} {s}: cuDNN FP16 {row['cudnn_fp16']['ms']:.4f} ms; {gains}", flush=True)
            result["shapes"][model].append(row)
            write(result, args.out)  # after each shape, so a run cut short still leaves its numbers
    if not args.no_unet:
        result["unet_step"] = unet_step(args.repeats, [v for v in args.unet_variants.split(",") if v])
    write(result, args.out)
    print(markdown(result))
    return 0


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gpu = re.sub(r"[^a-z0-9]+", "-", result["environment"]["device"].lower()).strip("-")
    (out / f"winograd-{gpu}.json").write_text(json.dumps(result, indent=1))
    (out / f"winograd-{gpu}.md").write_text(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
