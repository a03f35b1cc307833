"""The Triton kernels of `trtq::winograd_conv_int8` against its reference (the spec).

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on
tiny shapes. The same checks run on CUDA where one is present (DEVICE below); tests/test_gpu.py adds the
torch.compile, zoo-model and scale checks that only mean something on a GPU.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the `triton` package")

from trtq.kernels import winograd as wk  # noqa: E402
from trtq.ops.winograd_conv import winograd_conv_int8_reference  # noqa: E402
from trtq.winograd.conv import transform_input, transform_weight  # noqa: E402
from trtq.winograd.quant import act_scales, quantize_weight  # noqa: E402
from trtq.winograd.transforms import scaled_matrices, winograd_matrices  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def make_layer(tile, cin, cout, group_size, granularity, seed=0, learned=False):
    """INT8 Winograd weights of a random 3x3 conv, with standard or learned (scaled) transforms."""
    gen = torch.Generator().manual_seed(seed)
    n = tile + 2
    if learned:
        s_b, s_g = torch.rand(n, generator=gen) + 0.5, torch.rand(n, generator=gen) + 0.5
        at, g, bt = scaled_matrices(tile, s_b, s_g)
    else:
        at, g, bt = winograd_matrices(tile)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    codes, w_scale = quantize_weight(transform_weight(w, g), group_size, granularity)
    bias = torch.randn(cout, generator=gen)
    return [t.to(DEVICE) for t in (codes, w_scale, bias, at, bt)]


def integer_input(shape, seed, dtype=torch.float32, channels_last=False):
    """Small integers: B^T d B is exact in FP32 for the standard transforms, so every INT8 code is determined
    and any faithful implementation must agree on all of them (the docstring's tolerance rule)."""
    x = torch.randint(-4, 5, shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def kernel_order(v, grid):
    """Reference Winograd domain [n, n, C, P (tile row, image, tile col)] -> the kernels' [n^2, P (image, tile
    row, tile col), C]."""
    n, _, c, _ = v.shape
    v = v.reshape(n, n, c, grid.tiles_h, grid.batch, grid.tiles_w).permute(0, 1, 4, 3, 5, 2)
    return v.reshape(n * n, -1, c)


# --- stage 2 on given INT8 inputs: the INT32 GEMMs are exact ------------------------------------------------

@pytest.mark.parametrize("tile, cin, group_size", [(4, 64, 32), (2, 5, 5), (6, 24, 8)])
def test_gemm_stage_is_exact_on_given_int8_codes(tile, cin, group_size):
    """The INT32 sums are exact, and power-of-two scales make every product exact too, so M must equal the
    exact integer GEMMs scaled and summed over the groups in FP32 in group order (the contract's order)."""
    gen = torch.Generator().manual_seed(tile)
    n, P, cout, groups = tile + 2, 11 if tile < 6 else 5, 20 if tile < 6 else 16, cin // group_size
    vq = torch.randint(-128, 128, (n * n, P, cin), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, n, cout, cin), generator=gen, dtype=torch.int8)
    ws = 2.0 ** torch.randint(-12, -4, (n, n, cout, groups), generator=gen).float()
    sa = 2.0 ** torch.randint(-8, 0, (n * n, P, groups), generator=gen).float()
    m = torch.full((n * n, P, cout), float("nan"))  # poisoned: every element must be written
    at, _, _ = winograd_matrices(tile)
    args = [t.to(DEVICE) for t in (vq, w, ws, sa, at, m)]
    wk.gemm_stage(args[0], args[1], args[2], args[3], (P * groups, groups, 1), args[4], None, args[5], tile,
                  group_size, mode=1, tiles=(1, P), out_hw=(tile, tile * P))
    acc = torch.einsum("qpgk,qogk->gqpo", vq.long().reshape(n * n, P, groups, -1),
                       w.long().reshape(n * n, cout, groups, -1))  # exact integers, < 2^24 here
    assert acc.abs().max() < 2**24
    ws_g = ws.reshape(n * n, cout, groups).permute(2, 0, 1)[:, :, None, :]  # [G, n^2, 1, Cout]
    sa_g = sa.permute(2, 0, 1)[..., None]  # [G, n^2, P, 1]
    expected = (acc[0].float() * ws_g[0]) * sa_g[0]
    for k in range(1, groups):
        expected = expected + (acc[k].float() * ws_g[k]) * sa_g[k]
    assert torch.equal(args[5].cpu(), expected)


# --- stage 1: input transform + quantization gives the reference's codes and scales -------------------------

@pytest.mark.parametrize("tile, granularity, cin, group_size, padding", [
    (4, "group", 64, 32, 1), (6, "position-group", 16, 8, 0), (2, "tensor", 5, 5, 1), (4, "tensor", 40, 40, 0)])
def test_input_stage_codes_and_scales_equal_the_reference(tile, granularity, cin, group_size, padding):
    x = integer_input((2, cin, 9, 7), seed=tile)
    _, _, _, at, bt = make_layer(tile, cin, 4, group_size, "tensor" if granularity == "tensor" else "group")
    vq, sa, strides = wk.input_stage(x, bt, tile, (padding, padding), group_size, granularity, None)
    v, grid = transform_input(x.float(), bt, tile, (padding, padding))
    s = act_scales(v, group_size, granularity, grid)
    n, groups = tile + 2, cin // group_size
    s = s.expand(n, n, groups, 1, v.shape[-1]).reshape(n, n, groups, v.shape[-1])
    ref_codes = torch.round(v / s.repeat_interleave(group_size, dim=2)).clamp(-128, 127)
    assert torch.equal(vq.cpu().float(), kernel_order(ref_codes, grid).cpu())
    ref_scale = kernel_order(s.repeat_interleave(group_size, dim=2), grid)  # [n^2, P, C]
    pos, p, g = torch.meshgrid(torch.arange(n * n), torch.arange(v.shape[-1]), torch.arange(cin), indexing="ij")
    got = sa.flatten()[(pos * strides[0] + p * strides[1] + (g // group_size) * strides[2]).flatten()]
    assert torch.equal(got.reshape(ref_scale.shape).cpu(), ref_scale.cpu())


def test_rounding_is_half_to_even_and_clamped():
    """Values on exact ties (k + 0.5 after the static scale) and far out of range."""
    tile, cin = 2, 4
    x = torch.tensor([-700.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 900.0]).repeat(cin, 8, 1)[None].to(DEVICE)
    bt = torch.eye(4).to(DEVICE)  # identity transform: V is the input pixels themselves
    act_scale = torch.ones(4, 4, 1, device=DEVICE)
    vq, _, _ = wk.input_stage(x, bt, tile, (0, 0), cin, "tensor", act_scale)
    assert set(vq.cpu().unique().tolist()) == {-128, -2, 0, 2, 127}


# --- the whole op ---------------------------------------------------------------------------------------------

CASES = [  # tile, granularity, cin, group_size, padding, batch, dtype, channels_last, H, W
    (4, "group", 64, 32, 1, 2, torch.float32, False, 9, 7),
    (4, "group", 64, 32, 0, 1, torch.float16, True, 8, 10),
    (6, "group", 32, 32, 1, 1, torch.float32, True, 7, 9),
    (6, "position-group", 16, 8, 1, 2, torch.float16, False, 6, 6),
    (4, "tensor", 5, 5, 1, 2, torch.float32, False, 5, 7),
    (6, "tensor", 7, 7, 0, 1, torch.float16, True, 9, 8),
    (2, "group", 32, 32, 1, 2, torch.float32, True, 5, 6),
    (2, "tensor", 3, 3, 0, 1, torch.float32, False, 4, 4),
]


@pytest.mark.parametrize("tile, granularity, cin, group_size, padding, batch, dtype, channels_last, h, w", CASES)
def test_op_matches_reference_on_exact_transforms(tile, granularity, cin, group_size, padding, batch, dtype,
                                                   channels_last, h, w):
    """Integer inputs: every INT8 code is equal, so only the FP32 order of the dequantized sums and of A^T M A
    differs: a few FP32 ulps (< 1e-5 relative), or one output-dtype rounding for FP16 (< 2^-11 relative)."""
    codes, w_scale, bias, at, bt = make_layer(tile, cin, 12, group_size, "tensor" if granularity == "tensor"
                                              else "group", seed=cin)
    x = integer_input((batch, cin, h, w), seed=h * w, dtype=dtype, channels_last=channels_last)
    args = (x, codes, w_scale, bias, at, bt, tile, [padding, padding], group_size, granularity, None)
    ref = winograd_conv_int8_reference(*args)
    out = wk.winograd_conv_int8_triton(*args, fuse_output=True)
    assert out.shape == ref.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert rel(out, ref) < (1e-5 if dtype == torch.float32 else 2**-11), rel(out, ref)


@pytest.mark.parametrize("tile", [4, 6])
def test_split_path_equals_fused_path(tile):
    """GEMM -> M in memory -> output transform computes the same numbers as the fused kernel."""
    codes, w_scale, bias, at, bt = make_layer(tile, 16, 12, 16, "group", seed=tile)
    x = integer_input((1, 16, 5, 7), seed=tile)
    args = (x, codes, w_scale, bias, at, bt, tile, [1, 1], 16, "group", None)
    fused, split = (wk.winograd_conv_int8_triton(*args, fuse_output=f) for f in (True, False))
    assert rel(split, fused) < 1e-6
    assert rel(split, winograd_conv_int8_reference(*args)) < 1e-5


def test_op_with_static_scales_and_no_bias():
    tile, cin, g = 4, 32, 16
    codes, w_scale, _, at, bt = make_layer(tile, cin, 8, g, "group", seed=3)
    x = integer_input((2, cin, 7, 6), seed=4)
    act_scale = (torch.rand(6, 6, 2, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.05).to(DEVICE)
    args = (x, codes, w_scale, None, at, bt, tile, [1, 1], g, "group", act_scale)
    assert rel(wk.winograd_conv_int8_triton(*args), winograd_conv_int8_reference(*args)) < 1e-5


def test_op_on_real_valued_inputs_and_learned_transforms():
    """Random FP32 inputs and learned (non-dyadic) transforms: FP32 summation order may put a value that sits
    within an ulp of a rounding tie on the other side, so a few codes may differ by exactly 1 (the contract's
    tolerance). Each flip moves a few outputs by about one quantization step, 1/127 of a tile's range, so the
    relative error stays far below the INT8 error itself (~1e-2)."""
    tile, cin, g = 4, 32, 32
    codes, w_scale, bias, at, bt = make_layer(tile, cin, 8, g, "group", seed=5, learned=True)
    x = torch.randn(2, cin, 9, 9, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    vq, _, _ = wk.input_stage(x, bt, tile, (1, 1), g, "group", None)
    v, grid = transform_input(x, bt, tile, (1, 1))
    ref_codes = kernel_order(torch.round(v / act_scales(v, g, "group", grid).squeeze(3)).clamp(-128, 127), grid)
    diff = (vq.cpu().float() - ref_codes.cpu()).abs()
    assert diff.max() <= 1 and diff.count_nonzero() <= 1e-3 * diff.numel()
    args = (x, codes, w_scale, bias, at, bt, tile, [1, 1], g, "group", None)
    assert rel(wk.winograd_conv_int8_triton(*args), winograd_conv_int8_reference(*args)) < 1e-4


@pytest.mark.parametrize("granularity", ["tensor", "group", "position-group"])
def test_kernels_are_batch_invariant(granularity):
    """An image's output is bit-identical alone and in a batch of 4 (classifier-free guidance doubles
    batches); the other images are 100x larger, so a scale shared across the batch could not hide."""
    tile, cin, g = 4, 8, 8
    codes, w_scale, bias, at, bt = make_layer(tile, cin, 8, g, "tensor" if granularity == "tensor" else "group")
    gen = torch.Generator().manual_seed(7)
    batch = torch.randn(4, cin, 5, 6, generator=gen).to(DEVICE)
    batch[1:] *= 100
    rest = (codes, w_scale, bias, at, bt, tile, [1, 1], g, granularity, None)
    alone = wk.winograd_conv_int8_triton(batch[:1], *rest)
    assert torch.equal(wk.winograd_conv_int8_triton(batch, *rest)[:1], alone)


# --- packaging: Triton optional, kernels compile ahead of time for a TensorRT plugin ------------------------

def _run(code: str, env_drop=("TRITON_INTERPRET",)) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_trtq_imports_and_the_op_runs_without_triton():
    res = _run("""
        import sys
        sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is not installed
        import torch, trtq
        from trtq.ops import winograd_conv
        from trtq.winograd.transforms import winograd_matrices
        assert winograd_conv._kernels is None
        at, _, bt = winograd_matrices(2)
        x, w = torch.randn(1, 4, 5, 5), torch.randint(-5, 5, (4, 4, 3, 4), dtype=torch.int8)
        y = torch.ops.trtq.winograd_conv_int8(x, w, torch.ones(4, 4, 3, 1), None, at, bt, 2, [1, 1], 4, "group", None)
        print(tuple(y.shape))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(1, 3, 5, 5)"


def test_kernels_compile_ahead_of_time_for_sm90_and_sm89():
    """What a TensorRT plugin does: triton.compile(ASTSource(...)) for a fixed signature and target, on a
    machine without a GPU (the interpreter is off in the subprocess: it replaces triton.jit)."""
    res = _run("""
        from trtq.plugins.plans import winograd_plan
        from trtq.plugins.specs import WinogradAttrs
        # F(2,3)'s input transform keeps the compile short for CI; the GEMM is F(4,3)'s.
        def plan(tile):
            attrs = WinogradAttrs(tile=tile, pads=(1, 1), group_size=32, act_granularity="group")
            return winograd_plan(attrs, (2, 320, 16, 16), (tile + 2, tile + 2, 64, 320), "float16", True, False)
        p2, p4 = plan(2), plan(4)
        kernels = {"input": (p2, p2.launches[0]), "gemm": (p4, p4.launches[1])}
        for arch in (90, 89):
            for name, (p, launch) in kernels.items():
                if arch == 89 and name == "input":
                    continue  # the same FP32 code on both; the GEMM's MMA is what differs
                k = launch.compile(p.buffers, arch)
                ptx = k.asm["ptx"]
                assert f".target sm_{arch}" in ptx and k.metadata.shared >= 0 and len(k.asm["cubin"]) > 0
                mma = "wgmma" if arch == 90 else "mma.sync"
                print(arch, name, k.metadata.num_warps, mma in ptx)
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.split()
    assert len(lines) == 3 * 4
    # The GEMM's INT8 dot must be on the tensor cores: wgmma on sm_90, mma.sync on sm_89.
    assert [row for row in res.stdout.splitlines() if "gemm" in row] and all(
        row.endswith("True") for row in res.stdout.splitlines() if "gemm" in row), res.stdout


# --- the benchmark: ready to run on a GPU, refuses clearly without one ----------------------------------------

def test_benchmark_needs_a_cuda_gpu(capsys, monkeypatch):
    from trtq.bench import winograd as bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA GPU is needed" in err[0]


def test_benchmark_enumerates_the_sd15_3x3_convs():
    """SD 1.5 at 512x512 (latent 64x64), batch 2: 18 distinct 3x3 stride-1 conv shapes, from conv_in (4 -> 320)
    down to the 8x8 mid-block convs and the 2560-channel skip concatenations of the up path."""
    from trtq.bench.winograd import ConvShape, conv3x3_shapes

    shapes = conv3x3_shapes("sd15")
    assert len(shapes) == 18 and len(set(shapes)) == 18
    assert all(s.batch == 2 and s.padding == 1 for s in shapes)
    for expected in [(4, 320, 64), (320, 320, 64), (1280, 1280, 8), (2560, 1280, 16), (320, 4, 64)]:
        assert ConvShape(2, expected[0], expected[1], expected[2], expected[2], 1) in shapes
    assert {s.h for s in shapes} == {64, 32, 16, 8}


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter check; on a GPU the benchmark compares the variants")
def test_positions_input_kernel_gives_the_reference_codes_and_scales():
    """The candidate input kernel (TRTQ_WINOGRAD_INPUT=positions: whole tiles per thread, one load and one
    store) against the reference, every granularity, in a fresh interpreter process (the variant is chosen
    at import)."""
    env = {**os.environ, "TRTQ_WINOGRAD_INPUT": "positions", "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "input_stage or rounding or batch_invariant or learned"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:]
    assert " passed" in res.stdout and "failed" not in res.stdout
