"""The TensorRT plugins' pure parts: attribute parsing, shape rules, launch plans and their PTX, on CPU.

The plans are executed against the torch ops on a GPU by tests/test_plugins_gpu.py (the cuda-python launch
harness); here every plan the exporter can produce is checked for completeness, and a sample of them is
compiled for sm_90 and sm_89 with the PTX entry's parameters compared with the plan's argument list.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="the plugin plans compile Triton kernels")
sympy = pytest.importorskip("sympy", reason="symbolic shapes stand in for TensorRT's shape expressions")

import trtq.plugins as plugins  # noqa: E402
from trtq.errors import TrtqError  # noqa: E402
from trtq.plugins.plans import Buffer, fp4_plan, winograd_plan  # noqa: E402
from trtq.plugins.specs import FP4GemmAttrs, WinogradAttrs, fp4_output_shape, winograd_output_shape  # noqa: E402

WINO = {"tile": 4, "pads": [1, 1], "group_size": 32, "act_granularity": "group"}
FP4 = {"weight_format": "fp4_e2m1", "act_format": "fp4_e2m1", "group_size": 32, "scale_format": "float32",
       "act_clip": 1.0}


# --- attributes -----------------------------------------------------------------------------------------------

def test_attributes_parse_from_onnx_values():
    import numpy as np

    a = WinogradAttrs.parse({**WINO, "pads": np.array([1, 0]), "act_granularity": b"position-group"})
    assert a == WinogradAttrs(4, (1, 0), 32, "position-group")
    f = FP4GemmAttrs.parse({**FP4, "act_clip": 1, "group_size": np.int64(16)})
    assert f.act_clip == 1.0 and f.group_size == 16


@pytest.mark.parametrize("op, base, name, value, words", [
    ("w", WINO, "tile", 3, "tile 3"), ("w", WINO, "pads", [1], "pads"), ("w", WINO, "group_size", 0, "group_size"),
    ("w", WINO, "act_granularity", "row", "act_granularity"), ("w", WINO, "tile", "4", "should be int"),
    ("f", FP4, "weight_format", "int4", "weight_format"), ("f", FP4, "act_format", "fp16", "act_format"),
    ("f", FP4, "scale_format", "e8m0", "scale_format"), ("f", FP4, "act_clip", 0.0, "act_clip"),
    ("f", FP4, "act_clip", 1.5, "act_clip"), ("f", FP4, "group_size", True, "should be int"),
])
def test_bad_attributes_are_refused_with_their_name(op, base, name, value, words):
    cls = WinogradAttrs if op == "w" else FP4GemmAttrs
    with pytest.raises(TrtqError, match=words):
        cls.parse({**base, name: value})
    missing = dict(base)
    del missing[name]
    with pytest.raises(TrtqError, match=f"'{name}' is missing"):
        cls.parse(missing)


# --- shape rules ----------------------------------------------------------------------------------------------

def test_output_shapes_concrete_and_symbolic():
    a = WinogradAttrs.parse({**WINO, "pads": [1, 0]})
    assert winograd_output_shape((2, 64, 13, 11), (6, 6, 32, 64), a) == (2, 32, 13, 9)
    n, h, w = sympy.symbols("n h w", positive=True, integer=True)  # TensorRT's expressions support + - * //
    out = winograd_output_shape((n, 64, h, w), (6, 6, 32, 64), a)
    assert out == (n, 32, h, w - 2)
    m = sympy.Symbol("m", positive=True, integer=True)
    assert fp4_output_shape((m, 77, 1152), (4608, 576)) == (m, 77, 4608)


@pytest.mark.parametrize("x, w, words", [
    ((2, 64, 13, 11), (4, 4, 32, 64), "6x6 positions"), ((2, 48, 13, 11), (6, 6, 32, 64), "48 channels"),
    ((2, 64, 13), (6, 6, 32, 64), "ranks"), ((2, 48, 13, 11), (6, 6, 32, 48), "does not divide"),
])
def test_winograd_shape_errors(x, w, words):
    with pytest.raises(TrtqError, match=words):
        winograd_output_shape(x, w, WinogradAttrs.parse(WINO))


def test_fp4_shape_errors():
    with pytest.raises(TrtqError, match="K = 64"):
        fp4_output_shape((3, 64), (8, 16))
    with pytest.raises(TrtqError, match="rank"):
        fp4_output_shape((3, 64), (8, 16, 2))


# --- launch plans ---------------------------------------------------------------------------------------------

def _check_plan(plan):
    """Every parameter bound, to a buffer of the plan or a number; grids positive; one output."""
    outputs = [b for b in plan.buffers.values() if b.role == "output"]
    assert [b.name for b in outputs] == [plan.output]
    for launch in plan.launches:
        assert set(launch.args) == set(launch.params), launch.fn.__name__
        for name, value in launch.args.items():
            assert not isinstance(value, str) or value in plan.buffers, (name, value)
        assert all(isinstance(d, int) and d >= 1 for d in launch.grid), launch.grid
        sig = launch.signature(plan.buffers)
        assert list(sig)[: len(launch.params)] == launch.params
    written = {launch.args[p] for launch in plan.launches for p in ("vq_ptr", "y_ptr", "q_ptr", "out_ptr",
                                                                  "sa_out_ptr", "scale_ptr", "m_ptr")
               if p in launch.args}
    assert plan.output in written


WINOGRAD_CASES = [(tile, gran, static, bias) for tile in (2, 4, 6) for gran in ("group", "position-group")
                  for static in (False, True) for bias in (False, True)]


@pytest.mark.parametrize("tile, gran, static, bias", WINOGRAD_CASES)
def test_winograd_plans(tile, gran, static, bias):
    a = WinogradAttrs.parse({**WINO, "tile": tile, "act_granularity": gran})
    n = tile + 2
    plan = winograd_plan(a, (2, 64, 13, 11), (n, n, 40, 64), "float16", bias, static)
    _check_plan(plan)
    assert len(plan.launches) == (2 if tile <= 4 else 3)  # the output transform is fused up to F(4,3)
    p = 2 * -(-13 // tile) * -(-11 // tile)
    assert plan.buffers["vq"] == Buffer("vq", "int8", (n * n, p, 64), "workspace")
    assert ("sa" in plan.buffers) == (not static) and ("act_scale" in plan.buffers) == static
    assert plan.buffers["y"].shape == (2, 40, 13, 11) and not plan.aot_ready


def test_winograd_tensor_granularity_has_no_plan():
    a = WinogradAttrs.parse({**WINO, "act_granularity": "tensor"})
    with pytest.raises(TrtqError, match="host"):
        winograd_plan(a, (2, 64, 8, 8), (6, 6, 32, 64), "float16", True, False)
    winograd_plan(a, (2, 64, 8, 8), (6, 6, 32, 64), "float16", True, True)  # static scales: no reduction


FP4_CASES = [(af, sf, g, static, fused) for af in ("fp4_e2m1", "fp8_e4m3", "none") for sf in ("float32", "fp8_e4m3")
             for g in (16, 32, 64) for static in (False, True) for fused in (False, True)
             if not (af == "none" and static)]


@pytest.mark.parametrize("af, sf, g, static, fused", FP4_CASES)
def test_fp4_plans(af, sf, g, static, fused):
    f = FP4GemmAttrs.parse({**FP4, "act_format": af, "scale_format": sf, "group_size": g})
    plan = fp4_plan(f, (3, 5, 128), (48, 64), "bfloat16", True, sf != "float32", static, fuse_act_quant=fused)
    _check_plan(plan)
    single = af == "none" or (fused and (static or sf == "float32"))
    assert len(plan.launches) == (1 if single else 2)
    assert plan.aot_ready == single
    assert plan.buffers["y"].shape == (3, 5, 48)
    if not single:
        assert plan.buffers["q"].shape == (15, 128)


def test_fp4_per_channel_plan_quantizes_first():
    f = FP4GemmAttrs.parse({**FP4, "group_size": 128})
    plan = fp4_plan(f, (7, 128), (16, 64), "float16", False, False, False, fuse_act_quant=True)
    assert [launch.fn.__name__ for launch in plan.launches] == ["act_quant_kernel", "fp4_gemm_kernel"]


# --- PTX for the engine's GPU ---------------------------------------------------------------------------------

def test_plans_compile_to_ptx_whose_entry_takes_the_plan_arguments():
    """What aot_impl hands TensorRT: PTX for sm_90 / sm_89 whose entry parameters are the plan's arguments in
    order (pointers .u64, i32 .u32, floats .f32) plus Triton's two scratch pointers. In a subprocess: the
    interpreter, which tests use on CPU, replaces triton.jit."""
    code = textwrap.dedent("""
        import re
        from trtq.plugins.plans import fp4_plan, winograd_plan
        from trtq.plugins.specs import FP4GemmAttrs, WinogradAttrs
        W = dict(tile=2, pads=[1, 1], group_size=32, act_granularity="group")
        F = dict(weight_format="fp4_e2m1", act_format="fp4_e2m1", group_size=16, scale_format="fp8_e4m3",
                 act_clip=1.0)
        plans = [winograd_plan(WinogradAttrs.parse(W), (1, 64, 8, 8), (4, 4, 32, 64), "float16", True, False),
                 fp4_plan(FP4GemmAttrs.parse(F), (4, 64), (32, 32), "bfloat16", True, True, False)]
        kinds = {"u64": "ptr", "u32": "i32", "f32": "fp32"}
        for arch in (90, 89):
            for plan in plans:
                for launch in plan.launches:
                    if arch == 89 and launch.fn.__name__.startswith("winograd_input_kernel"):
                        continue  # the same FP32 code on both; the MMAs are what differ
                    k = launch.compile(plan.buffers, arch)
                    ptx = k.asm["ptx"]
                    entry = ptx[ptx.index(".entry " + k.metadata.name):]
                    entry = entry[: entry.index(")")]
                    got = [kinds[t] for t in re.findall(r"\\.param \\.(u64|u32|f32|b32|b64)", entry)]
                    sig = launch.signature(plan.buffers)
                    want = ["ptr" if sig[p].startswith("*") else sig[p] for p in launch.params] + ["ptr", "ptr"]
                    assert got == want, (launch.fn.__name__, got, want)
                    assert f".target sm_{arch}" in ptx and k.metadata.num_warps == launch.options["num_warps"]
                    print(arch, launch.fn.__name__, len(got))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.splitlines()) == 2 * 2 + 1 * 2 + 1  # sm_90: 4 kernels; sm_89: 3 (no input transform)


# --- the package ----------------------------------------------------------------------------------------------

def test_register_without_tensorrt_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(plugins, "tensorrt_available", lambda: False)
    with pytest.raises(TrtqError, match="TensorRT Python bindings"):
        plugins.register()


def test_kernels_fingerprint_names_the_plugin_version():
    fp = plugins.kernels_fingerprint()
    assert fp.startswith(plugins.PLUGIN_VERSION + "-") and len(fp.split("-")[1]) == 16
    assert fp == plugins.kernels_fingerprint()


# --- the plans computed: in Triton's interpreter here (the same grids, arguments, workspaces; the GPU runs
# them from PTX through the cuda-python harness in tests/test_plugins_gpu.py) ------------------------------

from trtq.kernels.fp4_gemm import INTERPRETED  # noqa: E402

interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs the kernels in Triton's CPU interpreter "
                                 "(TRITON_INTERPRET=1, set by conftest where there is no GPU)")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@interpreted
@pytest.mark.parametrize("tile, scales", [(2, "position-group"), (4, "group"), (6, "static")])
def test_winograd_plans_compute_the_op(tile, scales):
    import torch

    from trtq.ops.winograd_conv import winograd_conv_int8_reference
    from trtq.plugins.harness import interpret_plan
    from trtq.winograd.conv import transform_weight
    from trtq.winograd.quant import quantize_weight
    from trtq.winograd.transforms import winograd_matrices

    gen = torch.Generator().manual_seed(tile)
    n, cin, cout, g = tile + 2, 64, 20, 32
    at, gm, bt = winograd_matrices(tile)
    codes, w_scale = quantize_weight(transform_weight(torch.randn(cout, cin, 3, 3, generator=gen), gm), g, "group")
    x = torch.randint(-4, 5, (2, cin, 9, 7), generator=gen).float()  # B^T d B exact: every code is determined
    static = scales == "static"
    act_scale = torch.rand(n, n, cin // g, generator=gen) + 0.5 if static else None
    bias = torch.randn(cout, generator=gen)
    gran = "group" if static else scales
    inputs = {"x": x, "w_int8": codes.contiguous(), "w_scale": w_scale.float().contiguous(), "bias": bias,
              "at": at.float().contiguous(), "bt": bt.float().contiguous()}
    if static:
        inputs["act_scale"] = act_scale
    attrs = WinogradAttrs(tile, (1, 1), g, gran)
    plan = winograd_plan(attrs, tuple(x.shape), tuple(codes.shape), "float32", True, static)
    got = interpret_plan(plan, inputs)
    want = winograd_conv_int8_reference(x, codes, w_scale, bias, at, bt, tile, [1, 1], g, gran, act_scale)
    assert torch.isfinite(got).all() and _rel(got, want) < 1e-5, _rel(got, want)


@interpreted
@pytest.mark.parametrize("af, sf, g, static, aot", [
    ("fp4_e2m1", "fp8_e4m3", 16, False, False),  # NVFP4: activation quantization kernel + GEMM
    ("fp4_e2m1", "float32", 32, False, True),  # fused quantization: the one-kernel (ahead-of-time) entry
    ("fp4_e2m1", "float32", 32, True, True),
    ("none", "float32", 32, False, True),  # W4A16
    ("fp4_e2m1", "float32", 64, False, False),  # per channel (g = K): quantization kernel + GEMM
])
def test_fp4_plans_compute_the_op(af, sf, g, static, aot):
    import torch

    from trtq.formats import get_format, pack_4bit
    from trtq.fp4 import group_amax, quantize_groups, scales_from_amax
    from trtq.ops.fp4_gemm import reference
    from trtq.plugins.harness import interpret_plan
    from trtq.plugins.plans import fp4_aot_plan
    from trtq.quantizer import double_quantize_scale

    gen = torch.Generator().manual_seed(g)
    m, n, k = 9, 40, 64
    w = torch.randn(n, k, generator=gen)
    fp8 = None if sf == "float32" else sf
    scale = scales_from_amax(group_amax(w, g), "fp4_e2m1", fp8)
    stored, tensor_scale = scale, None
    if fp8:
        stored, tensor_scale, scale = double_quantize_scale(scale, fp8)
    packed = pack_4bit(get_format("fp4_e2m1").encode(quantize_groups(w, scale, "fp4_e2m1", g)))
    x = torch.randn(1, m, k, generator=gen) * 3
    bias = torch.randn(n, generator=gen)
    act_scale = torch.rand(k // g, generator=gen) + 0.2 if static else None
    attrs = FP4GemmAttrs("fp4_e2m1", af, g, sf, 1.0)
    make = fp4_aot_plan if aot else fp4_plan
    plan = make(attrs, tuple(x.shape), tuple(packed.shape), "float32", True, tensor_scale is not None, static)
    assert plan.aot_ready == aot
    inputs = {"x": x, "weight_packed": packed, "weight_scale": stored.contiguous(), "bias": bias}
    if tensor_scale is not None:
        inputs["weight_tensor_scale"] = tensor_scale.float().reshape(())
    if static:
        inputs["act_scale"] = act_scale
    got = interpret_plan(plan, inputs)
    want = reference(x, packed, stored, tensor_scale, bias, act_scale, "fp4_e2m1", af, g, sf, 1.0)
    assert torch.isfinite(got).all() and _rel(got, want) < 1e-5, _rel(got, want)
    if aot:  # TensorRT's order: the node's six inputs, then M and N, then the output
        launch = plan.launches[0]
        assert launch.params == ["x_ptr", "w_ptr", "w_scale_ptr", "w_tensor_scale_ptr", "bias_ptr", "a_scale_ptr",
                                 "M", "N", "out_ptr"]


def test_fp4_aot_plan_refuses_the_two_kernel_cases():
    f = FP4GemmAttrs.parse({**FP4, "group_size": 16, "scale_format": "fp8_e4m3"})
    with pytest.raises(TrtqError, match="no single-kernel"):
        fp4_aot_plan(f, (4, 64), (32, 32), "bfloat16", True, True, False)


from trtq.plugins.plans import fp4_aot_plan  # noqa: E402
