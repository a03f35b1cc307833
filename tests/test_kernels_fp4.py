"""Triton kernels of `trtq::fp4_group_gemm` against the op's PyTorch reference, and the numerics of its contract.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1), where
FP8 `tl.dot` is exact. W4A4 then matches the reference bit for bit: an FP4 value times an FP4 value is exact in
FP32, and every partial sum of a K-block is a multiple of 2^-4 below 2^19 of them, so the block's dot is exact
in any summation order, and the per-block scaling and the epilogue are the same FP32 operations in the same
order. W4A8 / W4A16 block dots depend on the summation order: there the bound is the contract's tolerance.
On CUDA (tests marked gpu) the contract's tolerance applies throughout (FMA contraction, MMA accumulation).
"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from trtq import QuantScheme
from trtq.errors import TrtqError
from trtq.formats import get_format, pack_4bit, unpack_4bit
from trtq.fp4 import dynamic_act_scales, group_amax, quantize_groups, scales_from_amax
from trtq.nn.fp4_linear import FP4Linear
from trtq.ops.fp4_gemm import reference
from trtq.quantizer import double_quantize_scale

triton = pytest.importorskip("triton")
from trtq.kernels import fp4_gemm as kernels  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not kernels.INTERPRETED, reason="CPU tensors run the "
                                                        "kernels only in the interpreter (TRITON_INTERPRET=1)")),
           pytest.param("cuda", marks=pytest.mark.gpu)]
TOLERANCE = 1e-5  # the contract's ‖y − y_ref‖ / ‖y_ref‖ for a faithful implementation


def weights(n, k, g, fmt, scale_format, seed=0, zero_group=False, scale_bits=False):
    """Packed weights as FP4Linear stores them: (packed, weight_scale, weight_tensor_scale)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    if zero_group:
        w[0, :g] = 0
    fp8 = None if scale_format == "float32" else scale_format
    scale = scales_from_amax(group_amax(w, g), fmt, fp8)
    if scale_bits:  # FP32 scales with full 24-bit mantissas: value × scale is then rarely exact
        scale = scale * (1 + torch.randint(1, 2**22, scale.shape, generator=gen).float() * 2**-23)
    tensor_scale = None
    stored = scale
    if fp8:
        stored, tensor_scale, scale = double_quantize_scale(scale, fp8)
    codes = get_format(fmt).encode(quantize_groups(w, scale, fmt, g))
    return pack_4bit(codes), stored, tensor_scale


def op_args(m, n, k, g, wf, af, sf, static=False, bias=True, seed=0, device="cpu", dtype=torch.float32, clip=1.0,
            **wkw):
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, k, generator=gen) * 3
    x[0, :g] = 0  # an all-zero group (scale 1, or the smallest FP8 scale)
    packed, ws, wts = weights(n, k, g, wf, sf, seed, **wkw)
    act_scale = torch.rand(k // g, generator=gen) + 0.2 if static else None
    b = torch.randn(n, generator=gen) if bias else None
    args = [x.to(dtype), packed, ws, wts, b, act_scale, wf, af, g, sf, clip]
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def check(y, ref, exact):
    assert y.dtype == ref.dtype and y.shape == ref.shape and torch.isfinite(y).all()
    if exact:
        assert torch.equal(y, ref), f"max |diff| {(y - ref).abs().max().item()}"
    else:
        rel = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
        assert rel <= TOLERANCE, rel


# (M, N, K, g, weight format, act format, scale format, static act scales, bias): M = 1 and M not a multiple of
# the tile, K = g / 2g / 3g (g = 16 leaves half a K-step), every format and group size, K = g = 96 (one group:
# per-channel, not a power of two), both scale formats, static and dynamic scales, with and without bias.
W4A4 = [
    (1, 24, 16, 16, "fp4_e2m1", "fp4_e2m1", "fp8_e4m3", False, True),
    (5, 24, 32, 16, "fp4_e2m1", "fp4_e2m1", "fp8_e4m3", False, False),
    (33, 40, 48, 16, "fp4_e3m0", "fp4_e1m2", "float32", False, True),
    (33, 24, 64, 32, "fp4_e1m2", "fp4_e2m1", "float32", True, True),
    (7, 24, 64, 32, "fp4_e2m1", "fp4_e3m0", "fp8_e4m3", False, False),
    (7, 40, 128, 64, "fp4_e3m0", "fp4_e2m1", "float32", False, True),
    (5, 24, 128, 128, "fp4_e2m1", "fp4_e2m1", "fp8_e4m3", False, True),
    (5, 24, 256, 128, "fp4_e1m2", "fp4_e1m2", "float32", True, False),
    (3, 24, 96, 96, "fp4_e2m1", "fp4_e2m1", "float32", False, True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", W4A4, ids=lambda c: "-".join(map(str, c)))
def test_w4a4_kernels_match_reference_exactly(case, device):
    m, n, k, g, wf, af, sf, static, bias = case
    args = op_args(m, n, k, g, wf, af, sf, static, bias, device=device, clip=0.9 if not static else 1.0)
    check(kernels.fp4_group_gemm(*args), reference(*args), exact=device == "cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [
    (7, 24, 96, 32, "fp4_e2m1", "fp8_e4m3", "float32", True, True),  # the w4a8-fp4 recipe's layout
    (33, 24, 64, 16, "fp4_e3m0", "fp8_e4m3", "fp8_e4m3", False, False),
    (5, 40, 64, 32, "fp4_e2m1", "none", "float32", False, True),  # W4A16
], ids=lambda c: "-".join(map(str, c)))
def test_w4a8_w4a16_kernels_match_reference(case, device):
    m, n, k, g, wf, af, sf, static, bias = case
    args = op_args(m, n, k, g, wf, af, sf, static, bias, device=device)
    check(kernels.fp4_group_gemm(*args), reference(*args), exact=False)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_activations_and_output(device):
    for af in ("fp4_e2m1", "none"):
        args = op_args(9, 24, 64, 32, "fp4_e2m1", af, "float32", device=device, dtype=torch.bfloat16)
        y, ref = kernels.fp4_group_gemm(*args), reference(*args)
        assert y.dtype == torch.bfloat16
        assert ((y.float() - ref.float()).norm() / ref.float().norm()).item() < 2**-8  # one bf16 rounding


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [
    (33, 40, 64, 16, "fp4_e2m1", "fp4_e2m1", False),
    (7, 24, 128, 32, "fp4_e1m2", "fp8_e4m3", True),
    (5, 24, 128, 64, "fp4_e2m1", "fp4_e3m0", False),
], ids=lambda c: "-".join(map(str, c)))
def test_activation_quantization_fused_into_the_gemm(case, device):
    m, n, k, g, wf, af, static = case
    args = op_args(m, n, k, g, wf, af, "float32", static, device=device, clip=1.0 if static else 0.8)
    fused = kernels.fp4_group_gemm(*args, fuse_act_quant=True)
    check(fused, reference(*args), exact=device == "cpu" and af != "fp8_e4m3")
    check(fused, kernels.fp4_group_gemm(*args), exact=device == "cpu" and af != "fp8_e4m3")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("af,g,scale_format,static", [
    ("fp4_e2m1", 16, "fp8_e4m3", False), ("fp4_e3m0", 32, "float32", False), ("fp4_e1m2", 64, "float32", True),
    ("fp8_e4m3", 32, "float32", False), ("fp4_e2m1", 96, "float32", False),
])
def test_activation_quantization_kernel_codes_and_scales_exact(af, g, scale_format, static, device):
    """Codes and scales are exact on every device: IEEE division and integer rounding, no MMA involved."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 192, generator=gen) * torch.logspace(-3, 2, 6)[:, None]
    x[1] = 0  # an all-zero row
    x[2, :g] = 0  # an all-zero group
    static_scale = torch.rand(192 // g, generator=gen) + 0.1 if static else None
    clip = 1.0 if static else 0.85
    q, scale, row_scale = kernels.quantize_activations(x.to(device), None if not static else static_scale.to(device),
                                                       af, g, scale_format == "fp8_e4m3", clip)
    if static:
        ref_scale, ref_rows = static_scale, None
        eff = static_scale.expand(6, -1)
    else:
        ref_scale, ref_rows = dynamic_act_scales(x, af, g, clip, scale_format)
        eff = ref_scale if ref_rows is None else ref_scale * ref_rows
        assert torch.equal(scale.cpu(), ref_scale)
    assert (row_scale is None) == (ref_rows is None)
    if ref_rows is not None:
        assert torch.equal(row_scale.cpu(), ref_rows.reshape(-1))
    values = q.cpu().view(torch.float8_e4m3fn).float()
    assert torch.equal(values, quantize_groups(x, eff, af, g))


# ----------------------------------------------------------------------------------- the contract's numerics
def test_e1m2_weight_scales_apply_to_the_partial_sums():
    """A weight value times its FP32 scale is not exact (E1M2's 3.5 = 1.11b times a 24-bit mantissa): the
    reference scales each block's FP32 partial sum, as a kernel does, and the kernel matches it exactly."""
    args = op_args(9, 24, 64, 16, "fp4_e1m2", "fp4_e2m1", "float32", scale_bits=True)
    y = kernels.fp4_group_gemm(*args) if kernels.INTERPRETED else None
    ref = reference(*args)
    if y is not None:
        assert torch.equal(y, ref)
    # scaling the weights first (the old reference) is not exact on these scales
    _, packed, ws, *_ = args
    vals = get_format("fp4_e1m2").decode(unpack_4bit(packed))
    scales = ws.repeat_interleave(16, dim=1)
    assert not torch.equal((vals * scales).double(), vals.double() * scales.double())


def test_nvfp4_tensor_scale_follows_modelopt_with_all_zero_groups():
    """modelopt / TensorRT: tensor scale = amax / (6 * 448). An all-zero group must not pull it to 1/448."""
    lin = nn.Linear(64, 8)
    with torch.no_grad():
        lin.weight.mul_(0.05)  # amax < 6
        lin.weight[3, 16:32] = 0  # an all-zero group
    scheme = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=16, scale_format="fp8_e4m3")
    q = FP4Linear.from_float(lin, scheme, None, group_size=16)
    amax = lin.weight.detach().abs().max()
    assert torch.isclose(q.weight_tensor_scale, amax / (6 * 448), rtol=2**-22, atol=0)
    assert get_format("fp8_e4m3").decode(q.weight_scale).max() == 448
    assert torch.all(q.dequantized_weight()[3, 16:32] == 0)
    # an all-zero tensor: tensor scale 1, every code 0
    codes, tensor_scale, _ = double_quantize_scale(torch.zeros(4, 2), "fp8_e4m3")
    assert tensor_scale == 1
    assert torch.equal(scales_from_amax(torch.zeros(4, 2), "fp4_e2m1", "fp8_e4m3"),
                       torch.full((4, 2), 2.0**-9))
    # dynamic activations, per row: the row's amax / (6 * 448), whatever its all-zero groups
    x = torch.randn(3, 64) * 0.1
    x[:, :16] = 0
    _, row_scale = dynamic_act_scales(x, "fp4_e2m1", 16, 1.0, "fp8_e4m3")
    assert torch.allclose(row_scale[:, 0], x.abs().amax(1) / (6 * 448), rtol=2**-22, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_nvfp4_dynamic_output_is_batch_invariant(device):
    """One image's output is the same alone and in a batch of 4 (CFG doubles batches), for the op on CPU
    (the reference) and for the kernels."""
    torch.manual_seed(0)
    wscheme = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=16, scale_format="fp8_e4m3")
    ascheme = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=16, dynamic=True,
                          scale_format="fp8_e4m3")
    q = FP4Linear.from_float(nn.Linear(64, 24), wscheme, ascheme, group_size=16).eval()
    x = torch.randn(4, 5, 64) * torch.tensor([0.01, 1.0, 30.0, 0.3])[:, None, None]  # very different images
    args = lambda t: (t, q.weight_packed, q.weight_scale, q.weight_tensor_scale, q.bias.detach(), None,  # noqa: E731
                      "fp4_e2m1", "fp4_e2m1", 16, "fp8_e4m3", 1.0)
    with torch.no_grad():
        batch, alone = q(x), q(x[:1])
    assert torch.equal(batch[:1], alone)
    if device == "cpu" and not kernels.INTERPRETED:
        return
    dev = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args(x)]
    out = kernels.fp4_group_gemm(*dev)
    for i in range(4):
        dev[0] = x[i : i + 1].to(device)
        assert torch.equal(out[i : i + 1], kernels.fp4_group_gemm(*dev))


# ----------------------------------------------------------------------------------- registration and packaging
def test_op_runs_the_reference_on_cpu_and_compiles_without_graph_break():
    torch.manual_seed(0)
    wscheme = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=32)
    ascheme = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=32, dynamic=True)
    q = FP4Linear.from_float(nn.Linear(64, 16), wscheme, ascheme, group_size=32).eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        eager = q(x)
        args = (x, q.weight_packed, q.weight_scale, None, q.bias, None, "fp4_e2m1", "fp4_e2m1", 32, "float32", 1.0)
        assert torch.equal(eager, reference(*args))
        compiled = torch.compile(q, backend="aot_eager", fullgraph=True)(x)
    assert torch.equal(compiled, eager)


def test_trtq_imports_and_runs_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, trtq, trtq.nn.fp4_linear, trtq.ops.fp4_gemm as op\n"
            "assert op.triton is None\n"
            "x = torch.randn(2, 32); w = torch.randint(0, 255, (4, 16), dtype=torch.uint8)\n"
            "y = torch.ops.trtq.fp4_group_gemm(x, w, torch.rand(4, 2), None, None, None, 'fp4_e2m1', 'fp4_e2m1',"
            " 16, 'float32', 1.0)\n"
            "assert y.shape == (2, 4) and torch.isfinite(y).all()\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_kernels_compile_for_hopper_and_ada_without_a_gpu():
    """triton.compile for sm_90 and sm_89 on this CPU machine: FP8 E4M3 MMA (wgmma on Hopper, mma.sync on Ada).
    A subprocess: TRITON_INTERPRET changes what triton.jit returns."""
    code = (
        "from trtq.plugins.plans import fp4_plan\n"
        "from trtq.plugins.specs import FP4GemmAttrs\n"
        "def kernels(arch, g=32, sf='float32', af='fp4_e2m1'):\n"
        "    a = FP4GemmAttrs(weight_format='fp4_e2m1', act_format=af, group_size=g, scale_format=sf, act_clip=1.0)\n"
        "    plan = fp4_plan(a, (64, 1152), (256, 576), 'bfloat16', True, sf != 'float32', False)\n"
        "    return [launch.compile(plan.buffers, arch) for launch in plan.launches]\n"
        "quant, gemm = kernels(90)\n"
        "ptx = gemm.asm['ptx']; assert 'wgmma.mma_async' in ptx and 'e4m3.e4m3' in ptx, 'no FP8 wgmma'\n"
        "assert 'div.rn.f32' in quant.asm['ptx']  # IEEE division\n"
        "quant, gemm = kernels(90, g=16, sf='fp8_e4m3')\n"
        "assert 'wgmma.mma_async' in gemm.asm['ptx'] and gemm.asm['cubin']\n"
        "quant, gemm = kernels(89, g=128, af='fp8_e4m3')\n"
        "assert 'mma.sync' in gemm.asm['ptx'] and 'e4m3' in gemm.asm['ptx'] and 'div.rn.f32' in quant.asm['ptx']\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_launch_grids_are_functions_of_the_shapes():
    assert kernels.gemm_grid(1, 24, 128, 128) == (1,)
    assert kernels.gemm_grid(257, 4608, 128, 256) == (3 * 18,)
    pad, block_g, block_r = kernels.act_quant_blocks(16, 72)
    assert (pad, block_g, block_r) == (16, 32, 8) and kernels.act_quant_grid(33, block_r) == (5,)
    assert kernels.act_quant_blocks(1152, 1) == (2048, 1, 2)


def test_fp4_decode_by_shift_gives_every_value_of_every_format():
    """The GEMM's decode (`fp4_pairs_to_fp8`, run in the interpreter on all 256 packed bytes) times UNSCALE is
    the format's decode of both nibbles, for every FP4 format."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_kernel(p_ptr, lo_ptr, hi_ptr, SHIFT: tl.constexpr):
        i = tl.arange(0, 256)
        lo, hi = kernels.fp4_pairs_to_fp8(tl.load(p_ptr + i), SHIFT)
        tl.store(lo_ptr + i, lo.to(tl.float32))
        tl.store(hi_ptr + i, hi.to(tl.float32))

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on CPU tensors, else the GPU
    packed = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(dev)
    for fmt, (shift, unscale) in kernels.FP4_DECODE.items():
        lo, hi = torch.empty(256, device=dev), torch.empty(256, device=dev)
        decode_kernel[(1,)](packed, lo, hi, SHIFT=shift)
        lo, hi = lo.cpu(), hi.cpu()
        want = get_format(fmt).decode(torch.arange(256) % 16), get_format(fmt).decode(torch.arange(256) // 16)
        assert torch.equal(lo * unscale, want[0].float()) and torch.equal(hi * unscale, want[1].float()), fmt


def test_fp4_decode_refuses_a_format_the_shift_cannot_give():
    with pytest.raises(TrtqError, match="4-bit"):
        kernels.fp4_decode("fp8_e4m3")


def test_benchmark_needs_a_cuda_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "trtq.bench.fp4", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "CUDA GPU" in res.stderr
    assert not any(tmp_path.iterdir())
