"""FP4 group-wise W4A4: formats on the FP4 path, packing, group scales (incl. NVFP4 double quant),
the Hadamard transform, the custom op against a float reference, and argument checking."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trtq import LayerRule, QuantScheme, TrtqError
from trtq.formats import get_format, pack_4bit, unpack_4bit
from trtq.fp4 import FP4_FORMATS, fake_quantize_groups, group_amax, quantize_groups, scales_from_amax
from trtq.hadamard import fwht, hadamard_block_size, random_signs, rotate, rotation_matrix
from trtq.nn.fp4_linear import FP4Linear
from trtq.quantizer import double_quantize_scale, qparams_from_range

E4M3 = get_format("fp8_e4m3")


def wscheme(fmt="fp4_e2m1", g=16, **kw):
    return QuantScheme(format=fmt, granularity="group", axis=1, group_size=g, **kw)


def ascheme(fmt="fp4_e2m1", g=16, dynamic=True, **kw):
    return QuantScheme(format=fmt, granularity="group", axis=-1, group_size=g, dynamic=dynamic, **kw)


def fp4_layer(k=64, n=24, fmt="fp4_e2m1", g=16, act="fp4_e2m1", scale_format=None, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    inp = None if act is None else ascheme(act, g, scale_format=scale_format)
    return lin, FP4Linear.from_float(lin, wscheme(fmt, g, scale_format=scale_format), inp, group_size=g)


# ----------------------------------------------------------------------------------- formats on the FP4 path
@pytest.mark.parametrize("name", FP4_FORMATS)
def test_group_rounding_ties(name):
    fmt = get_format(name)
    pos = fmt.grid()[fmt.grid() >= 0]
    lo, hi = pos[:-1], pos[1:]
    mids = (lo + hi) / 2
    q = quantize_groups(torch.cat([mids, -mids])[None], torch.ones(1, 1), name, 2 * len(mids))[0]
    assert torch.equal(q[len(mids):], -q[: len(mids)])  # symmetric
    q = q[: len(mids)]
    assert torch.all((q == lo) | (q == hi))
    if fmt.man_bits:
        assert torch.all(fmt.encode(q) % 2 == 0), f"ties must round to the even mantissa: {mids} -> {q}"
    else:  # E3M0 has no mantissa bit: a tie between 2^e and 2^(e+1) goes to the larger power (1.5 -> 2 quanta)
        assert torch.equal(q[1:], hi[1:]) and q[0] == 0


@pytest.mark.parametrize("name", FP4_FORMATS)
def test_group_rounding_saturation_zero_negative_zero(name):
    fmt = get_format(name)
    x = torch.tensor([[1e6, -1e6, fmt.max_value * 1.01, 0.0, -0.0] + [0.0] * 11])
    q = quantize_groups(x, torch.ones(1, 1), name, 16)
    assert q[0, 0] == fmt.max_value and q[0, 1] == -fmt.max_value and q[0, 2] == fmt.max_value
    assert q[0, 3] == 0 and not torch.signbit(q[0, 3])
    assert q[0, 4] == 0  # -0.0 keeps its sign bit in the code, and decodes to zero
    codes = fmt.encode(q[0])
    assert codes[4] == 8 and fmt.decode(codes[4:5]).item() == 0.0


@pytest.mark.parametrize("name", FP4_FORMATS)
def test_fp4_values_are_exact_in_fp8_e4m3(name):
    grid = get_format(name).grid()
    assert torch.equal(E4M3.round(grid), grid)


# ----------------------------------------------------------------------------------- packing and scales
@pytest.mark.parametrize("name", FP4_FORMATS)
@pytest.mark.parametrize("g", [16, 32, 64])
def test_fp4_linear_packs_weights_exactly(name, g):
    lin, q = fp4_layer(k=128, fmt=name, g=g)
    assert q.weight_packed.dtype == torch.uint8 and q.weight_packed.shape == (24, 64)
    assert q.weight_scale.shape == (24, 128 // g)
    scale = group_amax(lin.weight.detach(), g) / get_format(name).max_value
    assert torch.allclose(q.weight_scale, scale)
    codes = unpack_4bit(q.weight_packed)
    assert torch.equal(pack_4bit(codes), q.weight_packed)
    expected = quantize_groups(lin.weight.detach(), scale, name, g)
    assert torch.equal(get_format(name).decode(codes), expected)
    assert torch.allclose(q.dequantized_weight(), fake_quantize_groups(lin.weight.detach(), scale, name, g))
    # low nibble first: element 0 of row 0 is the low 4 bits of byte 0
    assert codes[0, 0] == q.weight_packed[0, 0] & 0xF and codes[0, 1] == q.weight_packed[0, 0] >> 4


def test_nvfp4_double_quant_scales():
    lin, q = fp4_layer(k=64, g=16, scale_format="fp8_e4m3")
    fp32 = group_amax(lin.weight.detach(), 16) / 6.0
    assert q.weight_scale.dtype == torch.uint8 and q.weight_tensor_scale.dtype == torch.float32
    assert q.weight_tensor_scale.ndim == 0
    assert torch.isclose(q.weight_tensor_scale, fp32.max() / 448)
    fp8 = E4M3.decode(q.weight_scale)
    assert torch.equal(E4M3.round(fp8), fp8) and fp8.max() == 448
    assert torch.allclose(q.weight_group_scales(), fp8 * q.weight_tensor_scale)
    # FP8 E4M3 keeps 3 mantissa bits: each scale within 2^-4 relative of its FP32 value
    assert torch.all((q.weight_group_scales() / fp32 - 1).abs() <= 2**-4 + 1e-6)
    codes, tensor_scale, deq = double_quantize_scale(fp32, "fp8_e4m3")
    assert torch.equal(codes, q.weight_scale) and torch.allclose(deq, q.weight_group_scales())


def test_scheme_scale_format_validated_and_serialized():
    s = wscheme(scale_format="fp8_e4m3")
    assert QuantScheme.from_dict(s.to_dict()) == s and "scale_format" not in wscheme().to_dict()
    assert "fp8_e4m3-scales" in s.describe()
    for bad in ({"scale_format": "int8"}, {"scale_format": "fp8_e4m3", "granularity": "tensor", "axis": None,
                                            "group_size": None}):
        with pytest.raises(TrtqError):
            QuantScheme(**{**wscheme().to_dict(), **bad})
    with pytest.raises(TrtqError, match="symmetric"):
        QuantScheme(format="int4", granularity="group", axis=1, group_size=16, symmetric=False,
                    scale_format="fp8_e4m3")
    # the generic quantizer honours it too: scales are FP8 values times one FP32 tensor scale
    amax = torch.rand(8) + 0.1
    scale, _ = qparams_from_range(-amax, amax, QuantScheme(format="fp4_e2m1", granularity="channel", axis=0,
                                                           scale_format="fp8_e4m3"))
    ts = (amax / 6).max() / 448
    assert torch.allclose(E4M3.round(scale / ts), scale / ts, rtol=1e-5)


# ----------------------------------------------------------------------------------- Hadamard
def sylvester(n):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h / n**0.5


@pytest.mark.parametrize("dim", [1, 2, 16, 128, 96, 40, 7])
def test_rotation_is_orthogonal(dim):
    r = rotation_matrix(dim, random_signs(dim, seed=dim))
    assert torch.allclose(r @ r.T, torch.eye(dim), atol=1e-5)
    assert torch.allclose(r.T @ r, torch.eye(dim), atol=1e-5)


def test_fwht_matches_sylvester_and_block_diagonal():
    x = torch.randn(5, 64)
    assert torch.allclose(fwht(x), x @ sylvester(64), atol=1e-5)
    assert hadamard_block_size(96) == 32 and hadamard_block_size(7) == 1
    blocks = torch.block_diag(*[sylvester(32)] * 3)
    y = torch.randn(4, 96)
    assert torch.allclose(fwht(y), y @ blocks, atol=1e-5)
    with pytest.raises(TrtqError):
        fwht(y, block=64)


def test_random_signs_are_seeded_plus_minus_one():
    s = random_signs(128, seed=3)
    assert torch.equal(s, random_signs(128, seed=3)) and not torch.equal(s, random_signs(128, seed=4))
    assert set(s.tolist()) == {-1, 1} and s.dtype == torch.int8


@pytest.mark.parametrize("k", [64, 96])
def test_rotation_leaves_float_output_unchanged(k):
    torch.manual_seed(0)
    lin = nn.Linear(k, 10)
    x = torch.randn(3, 7, k)
    signs = random_signs(k, seed=1)
    assert torch.allclose(F.linear(rotate(x, signs), rotate(lin.weight, signs), lin.bias), lin(x), atol=1e-5)
    _, q = fp4_layer(k=k, g=32, act=None)
    q.set_rotation(signs)
    assert torch.allclose(F.linear(q.rotate_input(x), q.rotated_weight(), q.bias), F.linear(x, q.weight, q.bias),
                          atol=1e-5)


# ----------------------------------------------------------------------------------- custom op
def reference(q, x, act_fmt, g, scale_format=None, clip=1.0, static=None):
    """Float reference: fake-quantize activations and weights, then one F.linear."""
    xr = q.rotate_input(x).reshape(-1, q.in_features)
    if act_fmt != "none":
        # dynamic FP8 scales: each row (token) is double-quantized as a tensor of its own (batch invariance)
        scale = static if static is not None else torch.cat(
            [scales_from_amax(group_amax(row[None], g) * clip, act_fmt, scale_format) for row in xr])
        xr = fake_quantize_groups(xr, scale, act_fmt, g)
    return F.linear(xr, q.dequantized_weight(), q.bias).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("wf", FP4_FORMATS)
@pytest.mark.parametrize("af", ["fp4_e2m1", "fp4_e1m2", "fp8_e4m3", None])
def test_op_matches_float_reference(wf, af):
    _, q = fp4_layer(k=64, g=16, fmt=wf, act=af)
    x = torch.randn(2, 5, 64) * 3
    with torch.no_grad():
        assert torch.allclose(q(x), reference(q, x, af or "none", 16), atol=1e-4, rtol=1e-4)


def test_op_nvfp4_static_clip_and_rotation():
    _, q = fp4_layer(k=64, g=16, scale_format="fp8_e4m3")
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.allclose(q(x), reference(q, x, "fp4_e2m1", 16, "fp8_e4m3"), atol=1e-4, rtol=1e-4)
        q.set_rotation(random_signs(64, 0))
        q.set_act("fp4_e2m1", clip=0.8)
        assert torch.allclose(q(x), reference(q, x, "fp4_e2m1", 16, "fp8_e4m3", clip=0.8), atol=1e-4, rtol=1e-4)
    _, s = fp4_layer(k=64, g=16)
    s.input_quantizer = type(q.input_quantizer)(ascheme(dynamic=False), "input")
    static = torch.rand(4) + 0.2
    s.set_act("fp4_e2m1", static_scale=static)
    with torch.no_grad():
        assert torch.allclose(s(x), reference(s, x, "fp4_e2m1", 16, static=static), atol=1e-4, rtol=1e-4)


def test_op_contract_and_fake_kernel():
    _, q = fp4_layer(k=32, g=16)
    x = torch.randn(3, 32)
    args = (x, q.weight_packed, q.weight_scale, None, q.bias.detach(), None, "fp4_e2m1", "fp4_e2m1", 16,
            "float32", 1.0)
    torch.library.opcheck(torch.ops.trtq.fp4_group_gemm.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    assert torch.equal(torch.ops.trtq.fp4_group_gemm(*args), q(x).detach())


# ----------------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("weight,inp,layer_args,match", [
    (wscheme(), ascheme(), {"group_size": 24}, "group_size in"),
    (wscheme(), ascheme(), {}, "group_size in"),
    (wscheme(), ascheme(), {"group_size": 16, "hadamard": True}, "group_size only"),
    (None, ascheme(), {"group_size": 16}, "needs a weight"),
    (QuantScheme(format="int4", granularity="group", axis=1, group_size=16), ascheme(), {"group_size": 16},
     "weight format"),
    (wscheme(g=32), ascheme(), {"group_size": 16}, "group-wise along K"),
    (QuantScheme(format="fp4_e2m1", granularity="group", axis=0, group_size=16), None, {"group_size": 16}, "axis"),
    (wscheme(), ascheme(g=32), {"group_size": 16}, "group_size 16"),
    (wscheme(), QuantScheme(format="int8"), {"group_size": 16}, "activation format"),
    (wscheme(), ascheme(scale_format="fp8_e4m3"), {"group_size": 16}, "scale_format"),
    (wscheme(), QuantScheme(format="fp4_e2m1", granularity="channel", axis=-1), {"group_size": 16}, "group-wise"),
])
def test_bad_fp4_rules_rejected(weight, inp, layer_args, match):
    with pytest.raises(TrtqError, match=match):
        LayerRule(types=("Linear",), weight=weight, input=inp, layer="fp4", layer_args=layer_args)


def test_group_size_must_divide_k():
    rule = LayerRule(types=("Linear",), weight=wscheme(g=64), input=ascheme(g=64), layer="fp4",
                     layer_args={"group_size": 64})
    assert rule.matches("a", nn.Linear(128, 4)) and not rule.matches("a", nn.Linear(96, 4))
