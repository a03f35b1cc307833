"""The plugins' launch plans executed by the cuda-python harness (TensorRT's part) against the torch ops.

If these agree, the PTX the plugins give TensorRT, their grids, block sizes, shared memory and argument
order are right: the harness loads the PTX with the CUDA driver and launches it exactly as the plan says.
Every tile / granularity / format / scale combination the exporter produces is covered. Needs a CUDA GPU
and cuda-python; on CPU the plans are checked by tests/test_plugins.py.
"""

import pytest
import torch

pytest.importorskip("triton", reason="the plugin plans compile Triton kernels")
pytestmark = pytest.mark.gpu

from trtq.plugins.plans import fp4_plan, winograd_plan  # noqa: E402
from trtq.plugins.specs import FP4GemmAttrs, WinogradAttrs  # noqa: E402

DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _harness():
    return pytest.importorskip("trtq.plugins.harness")


@pytest.mark.parametrize("tile", [2, 4, 6])
@pytest.mark.parametrize("scales", ["group", "position-group", "static"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_winograd_plan_on_the_harness_equals_the_op(tile, scales, dtype):
    from trtq.winograd.conv import transform_weight
    from trtq.winograd.quant import quantize_weight
    from trtq.winograd.transforms import winograd_matrices

    torch.manual_seed(tile)
    n, cin, cout, g = tile + 2, 64, 72, 32
    at, gm, bt = winograd_matrices(tile)
    codes, w_scale = quantize_weight(transform_weight(torch.randn(cout, cin, 3, 3) * 0.1, gm), g, "group")
    static = scales == "static"
    act_scale = (torch.rand(n, n, cin // g) + 0.05).cuda() if static else None
    x = torch.randn(2, cin, 19, 23, device="cuda", dtype=dtype)
    bias = torch.randn(cout, device="cuda")
    codes, w_scale = codes.cuda().contiguous(), w_scale.float().cuda().contiguous()
    at, bt = at.float().cuda().contiguous(), bt.float().cuda().contiguous()
    gran = "group" if static else scales
    want = torch.ops.trtq.winograd_conv_int8(x, codes, w_scale, bias, at, bt, tile, [1, 1], g, gran, act_scale)
    attrs = WinogradAttrs.parse({"tile": tile, "pads": [1, 1], "group_size": g, "act_granularity": gran})
    for tactic in (0, 1):
        plan = winograd_plan(attrs, tuple(x.shape), tuple(codes.shape), DTYPES[dtype], True, static, tactic)
        inputs = {"x": x, "w_int8": codes, "w_scale": w_scale, "bias": bias, "at": at, "bt": bt}
        if static:
            inputs["act_scale"] = act_scale
        got = _harness().run_plan(plan, inputs)
        torch.cuda.synchronize()
        assert got.shape == want.shape and got.dtype == dtype and torch.isfinite(got).all()
        assert rel(got, want) < 1e-6, (tactic, rel(got, want))


FP4_CASES = [  # (act_format, scale_format, group, static, fused): what the FP4 recipes export
    ("fp4_e2m1", "float32", 32, False, False), ("fp4_e2m1", "float32", 32, False, True),
    ("fp4_e2m1", "fp8_e4m3", 16, False, False), ("fp4_e2m1", "float32", 128, False, False),
    ("fp4_e2m1", "float32", 64, True, True), ("fp8_e4m3", "float32", 32, False, False),
    ("none", "float32", 32, False, False), ("fp4_e1m2", "fp8_e4m3", 32, True, False),
]


@pytest.mark.parametrize("af, sf, g, static, fused", FP4_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp4_plan_on_the_harness_equals_the_op(af, sf, g, static, fused, dtype):
    from trtq.formats import get_format, pack_4bit
    from trtq.fp4 import group_amax, quantize_groups, scales_from_amax
    from trtq.quantizer import double_quantize_scale

    torch.manual_seed(g)
    m, n, k = 77, 96, 256
    w = torch.randn(n, k)
    fp8 = None if sf == "float32" else sf
    scale = scales_from_amax(group_amax(w, g), "fp4_e2m1", fp8)
    stored, tensor_scale = scale, None
    if fp8:
        stored, tensor_scale, scale = double_quantize_scale(scale, fp8)
    packed = pack_4bit(get_format("fp4_e2m1").encode(quantize_groups(w, scale, "fp4_e2m1", g))).cuda()
    stored = stored.cuda().contiguous()
    tensor_scale = None if tensor_scale is None else tensor_scale.float().cuda().reshape(())
    x = torch.randn(2, m, k, device="cuda", dtype=dtype) * 3
    bias = torch.randn(n, device="cuda")
    act_scale = (torch.rand(k // g) + 0.2).cuda() if static else None
    want = torch.ops.trtq.fp4_group_gemm(x, packed, stored, tensor_scale, bias, act_scale, "fp4_e2m1", af, g, sf, 1.0)
    attrs = FP4GemmAttrs.parse({"weight_format": "fp4_e2m1", "act_format": af, "group_size": g, "scale_format": sf,
                                "act_clip": 1.0})
    plan = fp4_plan(attrs, tuple(x.shape), tuple(packed.shape), DTYPES[dtype], True, tensor_scale is not None,
                    static, fuse_act_quant=fused)
    inputs = {"x": x, "weight_packed": packed, "weight_scale": stored, "bias": bias}
    if tensor_scale is not None:
        inputs["weight_tensor_scale"] = tensor_scale
    if static:
        inputs["act_scale"] = act_scale
    got = _harness().run_plan(plan, inputs)
    torch.cuda.synchronize()
    assert got.shape == want.shape and got.dtype == dtype and torch.isfinite(got).all()
    assert rel(got, want) < 1e-5, rel(got, want)  # the contract's tolerance (the op may pick another fusion)
