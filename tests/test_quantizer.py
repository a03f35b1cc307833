"""Tests for trtq.scheme, trtq.quantizer, trtq.observers and trtq.nn.

Scales are checked against explicit per-group loops, fake quantization against the grid and its error bound,
real codes against fake quantization (bit-exact), observers against direct statistics of the data, and the
quantized modules against a hand-written fake-quant forward.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trtq.errors import TrtqError
from trtq.formats import get_format, unpack_4bit
from trtq.nn import QuantConv2d, QuantLinear, TensorQuantizer, quantizers
from trtq.observers import MinMaxObserver, MSEObserver, PercentileObserver, make_observer
from trtq.quantizer import (
    check_group_size,
    dynamic_qparams,
    expand_scale,
    fake_quantize,
    qparams_from_range,
    quantize_tensor,
    rows_to_scale,
    scale_shape,
    to_rows,
)
from trtq.scheme import QuantScheme


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _static_qparams(x, scheme, shared):
    """Min-max qparams in the scheme's layout, through the public row helpers."""
    rows = to_rows(x, scheme, shared)
    scale, zp = qparams_from_range(rows.amin(1), rows.amax(1), scheme)
    return (rows_to_scale(scale, x, scheme, shared),
            None if zp is None else rows_to_scale(zp, x, scheme, shared))


# =============================================================================== scheme validation
@pytest.mark.parametrize("kwargs", [
    dict(granularity="group", axis=1),                                 # group without group_size
    dict(granularity="group", axis=1, group_size=0),                   # non-positive group size
    dict(granularity="group", axis=1, group_size=-4),
    dict(granularity="group", axis=1, group_size=2.0),                 # not an int
    dict(granularity="tensor", group_size=4),                          # group_size with tensor
    dict(granularity="channel", axis=0, group_size=4),                 # group_size with channel
    dict(granularity="channel"),                                       # channel without axis
    dict(granularity="group", group_size=4),                           # group without axis
    dict(granularity="tensor", axis=0),                                # axis with tensor
    dict(granularity="block"),                                         # unknown granularity
    dict(format="fp8_e4m3", symmetric=False),                          # asymmetric float
    dict(format="fp4_e2m1", symmetric=False),
    dict(format="int3"),                                               # unknown format
    dict(observer="kl"),                                               # unknown observer
    dict(dynamic=True, observer="percentile", percentile=99.0),        # dynamic + percentile
    dict(dynamic=True, observer="mse"),                                # dynamic + mse
    dict(observer="percentile"),                                       # percentile without value
    dict(observer="percentile", percentile=50.0),                      # out of (50, 100]
    dict(observer="percentile", percentile=100.5),
    dict(observer="percentile", percentile=0.0),
    dict(observer="percentile", percentile=-99.0),
    dict(observer="minmax", percentile=99.0),                          # percentile with wrong observer
])
def test_scheme_rejects_impossible_combinations(kwargs):
    with pytest.raises(TrtqError):
        QuantScheme(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(format="int4", granularity="channel", axis=0),
    dict(format="fp4_e2m1", granularity="group", axis=-1, group_size=16, dynamic=True),
    dict(format="int8", symmetric=False, observer="mse"),
    dict(format="fp8_e4m3", observer="percentile", percentile=99.9),
    dict(observer="percentile", percentile=100.0),
])
def test_scheme_valid_and_roundtrips(kwargs):
    s = QuantScheme(**kwargs)
    d = s.to_dict()
    assert all(v is not None for v in d.values())
    assert QuantScheme.from_dict(d) == s
    assert QuantScheme.from_dict(dict(d)).to_dict() == d
    for k, v in kwargs.items():
        assert d[k] == v


def test_scheme_from_dict_rejects_unknown_keys_and_non_mapping():
    with pytest.raises(TrtqError, match="grp_size"):
        QuantScheme.from_dict({"format": "int8", "grp_size": 4})
    with pytest.raises(TrtqError):
        QuantScheme.from_dict(["int8"])
    with pytest.raises(TrtqError):  # validation still runs through from_dict
        QuantScheme.from_dict({"granularity": "channel"})


def test_scheme_is_frozen():
    s = QuantScheme()
    with pytest.raises(Exception):
        s.format = "int4"


# =============================================================================== group size
def test_group_size_not_dividing_raises_with_sizes():
    x = torch.zeros(8, 12)
    s = QuantScheme(granularity="group", axis=1, group_size=5)
    with pytest.raises(TrtqError) as ei:
        check_group_size(x, s)
    msg = str(ei.value)
    assert "5" in msg and "12" in msg
    for fn in (lambda: to_rows(x, s, False), lambda: to_rows(x, s, True),
               lambda: dynamic_qparams(x, QuantScheme(granularity="group", axis=1, group_size=5, dynamic=True))):
        with pytest.raises(TrtqError):
            fn()


@pytest.mark.parametrize("shape,axis,g", [((8, 12), 1, 3), ((4, 64), 1, 16), ((4, 64), -1, 64),
                                          ((12, 5), 0, 3), ((8, 12), 1, 1), ((8, 12), 1, 12)])
def test_any_divisor_group_size_works(shape, axis, g):
    x = torch.randn(shape, generator=_gen(3))
    s = QuantScheme(granularity="group", axis=axis, group_size=g)
    check_group_size(x, s)
    scale, _ = _static_qparams(x, s, shared=False)
    a = axis % x.ndim
    assert scale.shape[a] == x.shape[a] // g
    y = fake_quantize(x, scale, None, s)
    assert y.shape == x.shape
    assert (y - x).abs().max() <= expand_scale(scale, x, s).max() / 2 + 1e-6


# =============================================================================== scale layouts
W = torch.randn(8, 12, generator=_gen(1))
A = torch.randn(2, 12, 5, 5, generator=_gen(2))


@pytest.mark.parametrize("x,kwargs,shared,shape", [
    (W, dict(), False, ()),
    (W, dict(granularity="channel", axis=0), False, (8, 1)),
    (W, dict(granularity="channel", axis=1), False, (1, 12)),
    (W, dict(granularity="channel", axis=-1), False, (1, 12)),
    (W, dict(granularity="group", axis=1, group_size=4), False, (8, 3)),
    (W, dict(granularity="group", axis=1, group_size=4), True, (1, 3)),
    (W, dict(granularity="group", axis=0, group_size=2), False, (4, 12)),
    (W, dict(granularity="group", axis=0, group_size=2), True, (4, 1)),
    (A, dict(), True, ()),
    (A, dict(granularity="channel", axis=1), True, (1, 12, 1, 1)),
    (A, dict(granularity="group", axis=1, group_size=4), True, (1, 3, 1, 1)),
    (A, dict(granularity="group", axis=1, group_size=4), False, (2, 3, 5, 5)),
    (A, dict(granularity="group", axis=-1, group_size=5), False, (2, 12, 5, 1)),
])
def test_scale_layout_shapes(x, kwargs, shared, shape):
    s = QuantScheme(**kwargs)
    assert scale_shape(x, s, shared) == shape
    scale, _ = _static_qparams(x, s, shared)
    assert tuple(scale.shape) == shape
    # expanded scale broadcasts to x
    assert torch.broadcast_shapes(expand_scale(scale, x, s).shape, x.shape) == x.shape


def _expected_group_scales(x, axis, g, shared, qmax=127.0):
    """Explicit loops: max|x| over each group (and, unshared, per position of the other dims) / qmax."""
    xm = x.movedim(axis, 0)  # [C, ...rest]
    C = xm.shape[0]
    rest = xm.shape[1:]
    ng = C // g
    if shared:
        out = torch.empty(ng)
        for j in range(ng):
            out[j] = xm[j * g:(j + 1) * g].abs().max() / qmax
        shape = [1] * x.ndim
        shape[axis] = ng
        return out.reshape(shape)
    out = torch.empty((ng,) + tuple(rest))
    for j in range(ng):
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in rest]).reshape(-1, len(rest)).tolist():
            sl = (slice(j * g, (j + 1) * g),) + tuple(idx)
            out[(j,) + tuple(idx)] = xm[sl].abs().max() / qmax
    return out.movedim(0, axis)


@pytest.mark.parametrize("x,axis,g", [(W, 1, 4), (W, 0, 2), (W, 1, 3), (A, 1, 4), (A, 1, 6), (A, 3, 5)])
@pytest.mark.parametrize("shared", [False, True])
def test_group_scale_values_match_loops(x, axis, g, shared):
    s = QuantScheme(granularity="group", axis=axis, group_size=g)
    scale, zp = _static_qparams(x, s, shared)
    assert zp is None
    expected = _expected_group_scales(x, axis, g, shared)
    assert scale.shape == expected.shape
    assert torch.allclose(scale, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("x,axis", [(W, 0), (W, 1), (A, 1), (A, 0)])
def test_channel_scale_values(x, axis):
    s = QuantScheme(granularity="channel", axis=axis)
    scale, _ = _static_qparams(x, s, True)
    other = [d for d in range(x.ndim) if d != axis]
    expected = x.abs().amax(dim=other, keepdim=True) / 127
    assert torch.allclose(scale, expected, rtol=1e-6, atol=0)


def test_tensor_scale_value_and_formats():
    for name in ["int8", "int4", "fp8_e4m3", "fp4_e2m1", "fp4_e3m0", "fp4_e1m2"]:
        s = QuantScheme(format=name)
        scale, _ = _static_qparams(W, s, False)
        assert scale.shape == ()
        assert torch.allclose(scale, W.abs().max() / get_format(name).max_value, rtol=1e-6)


def test_zero_tensor_gets_unit_scale():
    x = torch.zeros(4, 8)
    for sym in (True, False):
        s = QuantScheme(granularity="channel", axis=0, symmetric=sym)
        scale, zp = _static_qparams(x, s, False)
        assert torch.all(scale == 1.0)
        assert torch.equal(fake_quantize(x, scale, zp, s), x)


def test_asymmetric_qparams_values():
    s = QuantScheme(symmetric=False)
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), s)
    assert torch.isclose(scale, torch.tensor(4.0 / 255))
    assert zp.item() == round(1.0 / (4.0 / 255))  # 63.75 -> 64
    # all-positive range: lo is pulled to 0 so zero is representable, zero point 0
    scale, zp = qparams_from_range(torch.tensor(2.0), torch.tensor(5.1), s)
    assert torch.isclose(scale, torch.tensor(5.1 / 255)) and zp.item() == 0
    # all-negative range: hi pulled to 0, zero point at the top
    scale, zp = qparams_from_range(torch.tensor(-5.1), torch.tensor(-2.0), s)
    assert torch.isclose(scale, torch.tensor(5.1 / 255)) and zp.item() == 255
    s4 = QuantScheme(format="int4", symmetric=False)
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(2.0), s4)
    assert torch.isclose(scale, torch.tensor(3.0 / 15)) and zp.item() == 5


# =============================================================================== fake quantization
@pytest.mark.parametrize("name", ["int8", "int4", "fp8_e4m3", "fp4_e2m1", "fp4_e3m0", "fp4_e1m2"])
@pytest.mark.parametrize("kwargs", [dict(), dict(granularity="channel", axis=0),
                                    dict(granularity="group", axis=1, group_size=4)])
def test_fake_quant_lies_on_scaled_grid(name, kwargs):
    s = QuantScheme(format=name, **kwargs)
    x = W * 3
    scale, _ = _static_qparams(x, s, False)
    y = fake_quantize(x, scale, None, s)
    se = expand_scale(scale, x, s).expand_as(x)
    q = y / se
    grid = s.fmt.grid()
    # q is within float error of a grid value; the nearest grid value times the scale reproduces y exactly
    nearest = grid[(q[..., None] - grid).abs().argmin(-1)]
    assert torch.allclose(q, nearest, rtol=1e-6, atol=1e-6)
    assert torch.allclose(y, nearest * se, rtol=1e-6, atol=0)
    # and it is the nearest grid point to x / scale
    v = x / se
    best = (v[..., None] - grid).abs().min(-1).values
    assert torch.allclose((v - nearest).abs(), best, atol=1e-5)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_int_fake_quant_error_bound(name):
    s = QuantScheme(format=name, granularity="channel", axis=0)
    x = torch.randn(16, 200, generator=_gen(4))
    scale, _ = _static_qparams(x, s, False)
    y = fake_quantize(x, scale, None, s)
    err = (y - x).abs()
    assert torch.all(err <= scale / 2 * (1 + 1e-5))
    # the max of each row is exactly representable (it maps to qmax)
    idx = x.abs().argmax(1)
    rows = torch.arange(16)
    assert torch.allclose(y[rows, idx], x[rows, idx], rtol=1e-6, atol=0)
    # values on the grid are fixed points
    grid_vals = torch.arange(-5, 6).float()[None, :] * scale
    assert torch.allclose(fake_quantize(grid_vals, scale, None, s), grid_vals, rtol=1e-6, atol=0)


def test_int8_symmetric_known_values():
    s = QuantScheme()
    scale = torch.tensor(0.5)
    x = torch.tensor([0.0, 0.24, 0.26, 0.75, -0.75, 1.25, 63.5, 63.8, 100.0, -64.0, -64.3, -100.0])
    # 0.75/0.5 = 1.5 -> 2 ; 1.25/0.5 = 2.5 -> 2 (ties to even); clamp to [-128, 127] * 0.5
    expected = [0.0, 0.0, 0.5, 1.0, -1.0, 1.0, 63.5, 63.5, 63.5, -64.0, -64.0, -64.0]
    assert fake_quantize(x, scale, None, s).tolist() == expected


def test_int8_asymmetric():
    s = QuantScheme(symmetric=False)
    x = torch.randn(1000, generator=_gen(5)) * 2 + 0.7
    scale, zp = _static_qparams(x, s, False)
    y = fake_quantize(x, scale, zp, s)
    # zero is exactly representable
    assert fake_quantize(torch.zeros(3), scale, zp, s).tolist() == [0.0, 0.0, 0.0]
    assert (y - x).abs().max() <= scale / 2 * (1 + 1e-4)
    qt = quantize_tensor(x, scale, zp, s)
    assert qt.codes.dtype == torch.uint8
    assert qt.codes.min().item() == 0 and qt.codes.max().item() >= 254
    # codes relate to values affinely: y = (code - zp) * scale
    assert torch.allclose(y, (qt.codes.float() - zp) * scale, rtol=0, atol=1e-6)
    # y lies on scale * (integers - zp) grid
    q = y / scale + zp
    assert torch.allclose(q, q.round(), atol=1e-3)
    assert q.round().min() >= 0 and q.round().max() <= 255


def test_asymmetric_relu_like_data_uses_full_range():
    s = QuantScheme(symmetric=False, granularity="channel", axis=1)
    x = torch.rand(64, 4, generator=_gen(6)) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    x[0] = 0.0
    scale, zp = _static_qparams(x, s, True)
    assert torch.all(zp == 0)
    assert torch.allclose(scale.flatten(), x.amax(0) / 255, rtol=1e-6)
    y = fake_quantize(x, scale, zp, s)
    assert torch.all(y[0] == 0)
    assert torch.all((y - x).abs() <= scale / 2 * (1 + 1e-4))
    # asymmetric int8 over [0, m] is finer than symmetric over [-m, m]
    ys = fake_quantize(x, *_static_qparams(x, QuantScheme(granularity="channel", axis=1), True), QuantScheme(
        granularity="channel", axis=1))
    assert (y - x).pow(2).mean() < (ys - x).pow(2).mean()


# =============================================================================== STE
@pytest.mark.parametrize("name", ["int8", "int4", "fp8_e4m3", "fp4_e2m1"])
def test_ste_gradient(name):
    s = QuantScheme(format=name)
    fmt = s.fmt
    scale = torch.tensor(1.0 / fmt.max_value)  # representable range about [-1, 1]
    x = torch.linspace(-2.0, 2.0, 401)
    # keep away from the exact clip boundaries
    lo = (fmt.qmin if fmt.kind == "int" else -fmt.max_value) * scale.item()
    hi = fmt.max_value * scale.item()
    x = x[((x - lo).abs() > 1e-3) & ((x - hi).abs() > 1e-3)].clone().requires_grad_(True)
    y = fake_quantize(x, scale, None, s)
    (y * torch.arange(x.numel()).float()).sum().backward()  # weighted so a per-element mix-up shows
    inside = (x.detach() > lo) & (x.detach() < hi)
    assert inside.any() and (~inside).any()
    w = torch.arange(x.numel()).float()
    # (w * s) / s in the backward pass may be off by an ulp; zeros outside must be exact
    assert torch.allclose(x.grad, torch.where(inside, w, torch.zeros_like(w)), rtol=1e-6, atol=0)
    assert torch.all(x.grad[~inside] == 0) and torch.all(x.grad[inside & (w > 0)] > 0)


def test_ste_gradient_asymmetric_and_scale_has_grad():
    s = QuantScheme(symmetric=False)
    scale = torch.tensor(0.01, requires_grad=True)
    zp = torch.tensor(100.0)
    # range: [(0 - 100) * 0.01, (255 - 100) * 0.01] = [-1, 1.55]
    x = torch.tensor([-1.5, -0.5, 0.0, 0.333, 1.5, 2.0, 5.0], requires_grad=True)
    y = fake_quantize(x, scale, zp, s)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert scale.grad is not None and torch.isfinite(scale.grad)
    assert y.detach()[0].item() == pytest.approx(-1.0) and y.detach()[-1].item() == pytest.approx(1.55)


# =============================================================================== real codes
CASES = [
    ("int8", True, dict(granularity="channel", axis=0)),
    ("int8", True, dict(granularity="group", axis=1, group_size=4)),
    ("int8", False, dict(granularity="channel", axis=0)),
    ("int8", False, dict(granularity="group", axis=1, group_size=4)),
    ("int8", True, dict()),
    ("int4", True, dict(granularity="channel", axis=0)),
    ("int4", True, dict(granularity="group", axis=1, group_size=4)),
    ("int4", False, dict(granularity="group", axis=1, group_size=6)),
    ("fp8_e4m3", True, dict(granularity="channel", axis=0)),
    ("fp8_e4m3", True, dict(granularity="group", axis=1, group_size=4)),
    ("fp4_e2m1", True, dict(granularity="channel", axis=0)),
    ("fp4_e2m1", True, dict(granularity="group", axis=1, group_size=4)),
    ("fp4_e3m0", True, dict(granularity="channel", axis=0)),
    ("fp4_e3m0", True, dict(granularity="group", axis=1, group_size=4)),
    ("fp4_e1m2", True, dict(granularity="channel", axis=0)),
    ("fp4_e1m2", True, dict(granularity="group", axis=1, group_size=4)),
]


@pytest.mark.parametrize("name,sym,kwargs", CASES)
def test_quantize_tensor_dequantize_equals_fake_quant(name, sym, kwargs):
    s = QuantScheme(format=name, symmetric=sym, **kwargs)
    x = torch.randn(8, 12, generator=_gen(7)) * 3
    x[0, 0] = 0.0
    x[1, 1] = -1e-9  # tiny negative: -0 in float formats
    scale, zp = _static_qparams(x, s, False)
    # shrink scales a little so some values clip: codes must saturate the same way in both paths
    scale = scale * 0.8
    fq = fake_quantize(x, scale, zp, s)
    qt = quantize_tensor(x, scale, zp, s)
    assert qt.shape == (8, 12)
    deq = qt.dequantize()
    assert deq.shape == x.shape
    assert torch.equal(deq, fq)
    fmt = s.fmt
    if fmt.bits == 4:
        assert qt.codes.dtype == torch.uint8
        assert qt.codes.shape == (8, 6)
        codes = unpack_4bit(qt.codes)
        assert codes.max() <= 15
    elif name == "int8":
        assert qt.codes.dtype == (torch.int8 if sym else torch.uint8)
        assert qt.codes.shape == (8, 12)
        codes = qt.codes
    else:  # fp8: uint8 whose bits are float8_e4m3fn
        assert qt.codes.dtype == torch.uint8 and qt.codes.shape == (8, 12)
        as_f8 = qt.codes.view(torch.float8_e4m3fn).float()
        assert torch.equal(as_f8 * expand_scale(scale, x, s), fq)
        assert torch.equal(as_f8, fmt.round((x / expand_scale(scale, x, s)).clamp(-448, 448)))
        codes = None
    # codes decode to the quantized values (before the scale)
    if codes is not None and fmt.kind == "int":
        se = expand_scale(scale, x, s)
        if sym:
            q = fmt.decode(codes) if fmt.bits == 4 else codes.float()
            assert q.min() >= fmt.qmin and q.max() <= fmt.qmax
            assert torch.allclose(q * se, fq, rtol=0, atol=0)
        else:
            assert codes.min() >= 0 and codes.max() <= 2**fmt.bits - 1
            assert torch.equal((codes.float() - expand_scale(zp, x, s)) * se, fq)
    # the scale is a copy, not an alias
    assert qt.scale is not scale


def test_quantize_tensor_4d_activation_group_shared():
    s = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=4)
    x = torch.randn(2, 12, 5, 6, generator=_gen(12))
    scale, _ = _static_qparams(x, s, True)
    assert scale.shape == (1, 3, 1, 1)
    qt = quantize_tensor(x, scale, None, s)
    assert qt.codes.shape == (2, 12, 5, 3)  # last dim 6 -> 3 packed bytes
    assert torch.equal(qt.dequantize(), fake_quantize(x, scale, None, s))
    # 4-bit codes cannot be packed along an odd last dimension
    scale, _ = _static_qparams(A, s, True)
    with pytest.raises(TrtqError):
        quantize_tensor(A, scale, None, s)


# =============================================================================== dynamic
def test_dynamic_qparams_per_group_per_row():
    s = QuantScheme(granularity="group", axis=-1, group_size=4, dynamic=True)
    x = torch.randn(5, 16, generator=_gen(8))
    scale, zp = dynamic_qparams(x, s)
    assert zp is None and scale.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            assert scale[i, j].item() == pytest.approx(x[i, 4 * j:4 * j + 4].abs().max().item() / 127, rel=1e-6)
    sa = QuantScheme(granularity="group", axis=-1, group_size=4, dynamic=True, symmetric=False)
    scale, zp = dynamic_qparams(x, sa)
    assert scale.shape == (5, 4) and zp.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            g = x[i, 4 * j:4 * j + 4]
            lo, hi = min(g.min().item(), 0.0), max(g.max().item(), 0.0)
            assert scale[i, j].item() == pytest.approx((hi - lo) / 255, rel=1e-6)
            assert zp[i, j].item() == round(-lo / ((hi - lo) / 255))


def test_dynamic_qparams_3d_tokens():
    s = QuantScheme(format="fp8_e4m3", granularity="group", axis=-1, group_size=8, dynamic=True)
    x = torch.randn(2, 3, 16, generator=_gen(9))
    scale, _ = dynamic_qparams(x, s)
    assert scale.shape == (2, 3, 2)
    expected = x.reshape(2, 3, 2, 8).abs().amax(-1) / 448
    assert torch.allclose(scale, expected, rtol=1e-6)
    # per-tensor dynamic: one scale per sample (dim 0), never across the batch
    st = QuantScheme(dynamic=True)
    scale, _ = dynamic_qparams(x, st)
    assert scale.shape == (2, 1, 1)
    assert torch.allclose(scale.flatten(), x.abs().amax((1, 2)) / 127, rtol=1e-6)
    # per-token dynamic: one scale per row of the last axis
    sk = QuantScheme(granularity="token", dynamic=True)
    scale, _ = dynamic_qparams(x, sk)
    assert scale.shape == (2, 3, 1)
    assert torch.allclose(scale, x.abs().amax(-1, keepdim=True) / 127, rtol=1e-6)
    # per-channel dynamic: one scale per (sample, channel)
    sc = QuantScheme(granularity="channel", axis=1, dynamic=True, symmetric=False)
    scale, zp = dynamic_qparams(x, sc)
    assert scale.shape == zp.shape == (2, 3, 1)
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    assert torch.allclose(scale, (hi - lo) / 255, rtol=1e-6)


def test_token_granularity_is_dynamic_only():
    with pytest.raises(TrtqError, match="dynamic"):
        QuantScheme(granularity="token")
    with pytest.raises(TrtqError, match="axis"):
        QuantScheme(granularity="token", axis=-1, dynamic=True)
    assert "per-token" in QuantScheme(granularity="token", dynamic=True).describe()


def _assert_batch_invariant(layer, x):
    """The quantized input of each image is bit-identical alone and in the batch; the layer output agrees to
    float rounding (the float conv/GEMM itself may sum in another order for another batch size)."""
    q_batch, out_batch = layer.input_quantizer(x), layer(x)
    for i in range(x.shape[0]):
        assert torch.equal(layer.input_quantizer(x[i:i + 1]), q_batch[i:i + 1])
        assert torch.allclose(layer(x[i:i + 1]), out_batch[i:i + 1], rtol=1e-5, atol=1e-5)


_DYNAMIC_INPUTS = [
    dict(granularity="tensor"),
    dict(granularity="tensor", symmetric=False),
    dict(granularity="token"),
    dict(granularity="channel", axis=1),
    dict(granularity="group", axis=-1, group_size=4),
    dict(format="fp8_e4m3", granularity="group", axis=-1, group_size=4, scale_format="fp8_e4m3"),
]


@pytest.mark.parametrize("inp", _DYNAMIC_INPUTS, ids=lambda d: "-".join(str(v) for v in d.values()))
def test_dynamic_linear_is_batch_invariant(inp):
    """An image's output is the same alone and in a batch of 4 (classifier-free guidance doubles batches)."""
    torch.manual_seed(0)
    lin = QuantLinear.from_float(torch.nn.Linear(16, 8), QuantScheme(granularity="channel", axis=0),
                                 QuantScheme(dynamic=True, **inp))
    x = torch.randn(4, 5, 16, generator=_gen(21))
    x[1] *= 50.0  # one loud image: with batch-wide scales it would coarsen the others' quantization
    _assert_batch_invariant(lin, x)


@pytest.mark.parametrize("inp", [dict(granularity="tensor"), dict(granularity="channel", axis=1),
                                 dict(granularity="group", axis=1, group_size=4)], ids=["tensor", "channel", "group"])
def test_dynamic_conv_is_batch_invariant(inp):
    torch.manual_seed(0)
    conv = QuantConv2d.from_float(torch.nn.Conv2d(8, 4, 3, padding=1), QuantScheme(granularity="channel", axis=0),
                                  QuantScheme(dynamic=True, **inp))
    x = torch.randn(4, 8, 6, 6, generator=_gen(22))
    x[2] *= 50.0
    _assert_batch_invariant(conv, x)


def test_dynamic_tensor_quantizer_uses_live_tensor():
    s = QuantScheme(granularity="group", axis=-1, group_size=4, dynamic=True)
    tq = TensorQuantizer(s, "input")
    assert tq.mode == "quantize" and tq.calibrated
    for seed in (10, 11):
        x = torch.randn(3, 8, generator=_gen(seed)) * seed
        scale, _ = dynamic_qparams(x, s)
        assert torch.equal(tq(x), fake_quantize(x, scale, None, s))
    with pytest.raises(TrtqError):
        tq(torch.randn(3, 6))


# =============================================================================== observers
def test_minmax_observer_over_batches():
    s = QuantScheme(granularity="channel", axis=1)
    batches = [torch.randn(4, 6, 3, 3, generator=_gen(20 + i)) * (i + 1) for i in range(4)]
    obs = MinMaxObserver(s)
    assert not obs.seen
    for b in batches:
        obs.observe(to_rows(b, s, True))
    assert obs.seen
    allx = torch.cat(batches)
    rows = to_rows(allx, s, True)
    lo, hi = obs.range()
    assert torch.equal(lo, rows.amin(1)) and torch.equal(hi, rows.amax(1))
    assert torch.equal(lo, allx.amin(dim=(0, 2, 3)))
    assert torch.equal(hi, allx.amax(dim=(0, 2, 3)))


def test_percentile_100_equals_minmax_symmetric():
    s_mm = QuantScheme(granularity="channel", axis=0)
    s_p = QuantScheme(granularity="channel", axis=0, observer="percentile", percentile=100.0)
    x = torch.randn(4, 500, generator=_gen(21))
    mm, pc = MinMaxObserver(s_mm), PercentileObserver(s_p)
    for chunk in x.split(100, dim=1):
        mm.observe(chunk)
        pc.observe(chunk)
    sc_mm, _ = qparams_from_range(*mm.range(), s_mm)
    sc_p, _ = qparams_from_range(*pc.range(), s_p)
    assert torch.equal(sc_mm, sc_p)
    lo, hi = pc.range()
    assert torch.equal(hi, x.abs().amax(1)) and torch.equal(lo, -x.abs().amax(1))


def test_percentile_99_clips_outlier():
    s = QuantScheme(observer="percentile", percentile=99.0)
    x = torch.randn(1, 10000, generator=_gen(22))
    x[0, 123] = 100.0
    obs = make_observer(s)
    assert isinstance(obs, PercentileObserver)
    obs.observe(x)
    lo, hi = obs.range()
    expected = torch.quantile(x.abs(), 0.99, dim=1)
    assert torch.allclose(hi, expected)
    assert hi.item() < 5.0 < x.abs().max().item()
    assert lo.item() == -hi.item()
    # asymmetric: tails clipped on both sides separately
    sa = QuantScheme(observer="percentile", percentile=99.0, symmetric=False)
    oa = make_observer(sa)
    oa.observe(x)
    lo, hi = oa.range()
    assert torch.allclose(lo, torch.quantile(x, 0.01, dim=1)) and torch.allclose(hi, torch.quantile(x, 0.99, dim=1))
    assert hi.item() < 5.0 and lo.item() > -5.0


def _quant_mse(x, lo, hi, scheme):
    scale, zp = qparams_from_range(lo, hi, scheme)
    return (fake_quantize(x, scale, zp, scheme) - x).pow(2).mean().item()


@pytest.mark.parametrize("fmt,sym", [("int4", True), ("int8", True), ("fp4_e2m1", True),
                                     ("int4", False), ("int8", False)])
@pytest.mark.parametrize("dist", ["t", "laplace", "uniform", "normal"])
def test_mse_observer_never_worse_than_minmax(fmt, dist, sym):
    g = _gen(23)
    n = 8000
    if dist == "t":
        u = torch.randn(n, generator=g)
        chi = torch.randn(n, 3, generator=g).pow(2).sum(1) / 3
        x = u / chi.sqrt()  # Student-t with 3 dof, built from the seeded generator
    elif dist == "laplace":
        e = -torch.log(torch.rand(n, generator=g))
        x = e * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    elif dist == "uniform":
        x = torch.rand(n, generator=g) * 2 - 0.5
    else:
        x = torch.randn(n, generator=g) + 0.3
    x = x[None, :]
    s_mse = QuantScheme(format=fmt, observer="mse", symmetric=sym)
    s_mm = QuantScheme(format=fmt, symmetric=sym)
    mse_obs, mm_obs = MSEObserver(s_mse), MinMaxObserver(s_mm)
    for chunk in x.split(2000, dim=1):
        mse_obs.observe(chunk)
        mm_obs.observe(chunk)
    err_mse = _quant_mse(x, *mse_obs.range(), s_mm)
    err_mm = _quant_mse(x, *mm_obs.range(), s_mm)
    assert err_mse <= err_mm * (1 + 1e-6)
    if dist in ("t", "laplace") and fmt == "int4":
        # heavy tails: clipping must pay off clearly
        assert err_mse < 0.8 * err_mm
        lo, hi = mse_obs.range()
        assert hi.item() < x.max().item()


def test_mse_observer_per_channel_shape_and_bound():
    s = QuantScheme(format="int4", granularity="channel", axis=0, observer="mse")
    x = torch.randn(3, 2000, generator=_gen(24)) * torch.tensor([[1.0], [5.0], [0.1]])
    obs = make_observer(s)
    obs.observe(x)
    lo, hi = obs.range()
    assert lo.shape == (3,) and hi.shape == (3,)
    assert torch.all(hi <= x.amax(1)) and torch.all(lo >= x.amin(1))
    assert torch.all(hi >= 0.3 * x.amax(1) - 1e-6)


# =============================================================================== TensorQuantizer
def test_tensor_quantizer_calibrate_then_quantize():
    s = QuantScheme(granularity="channel", axis=1)
    tq = TensorQuantizer(s, "input")
    assert tq.mode == "calibrate" and not tq.calibrated
    batches = [torch.randn(2, 4, 3, 3, generator=_gen(30 + i)) for i in range(3)]
    for b in batches:
        out = tq(b)
        assert torch.equal(out, b)
    tq.finish_calibration()
    assert tq.mode == "quantize" and tq.calibrated
    allx = torch.cat(batches)
    expected_scale = allx.abs().amax(dim=(0, 2, 3), keepdim=True) / 127
    assert tq.scale.shape == (1, 4, 1, 1)
    assert torch.allclose(tq.scale, expected_scale, rtol=1e-6)
    x = torch.randn(5, 4, 3, 3, generator=_gen(40)) * 2  # other batch size, some values clip
    assert torch.equal(tq(x), fake_quantize(x, tq.scale, None, s))
    # scales live in buffers -> state_dict
    assert "scale" in tq.state_dict()
    tq.set_mode("off")
    assert torch.equal(tq(x), x)


def test_tensor_quantizer_asym_group_shared():
    s = QuantScheme(granularity="group", axis=1, group_size=2, symmetric=False)
    tq = TensorQuantizer(s, "input")
    x = torch.randn(3, 6, 4, generator=_gen(41))
    tq(x)
    tq.finish_calibration()
    assert tq.scale.shape == (1, 3, 1) and tq.zero_point.shape == (1, 3, 1)
    for j in range(3):
        grp = x[:, 2 * j:2 * j + 2]
        lo, hi = min(grp.min().item(), 0.0), max(grp.max().item(), 0.0)
        assert tq.scale[0, j, 0].item() == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert torch.equal(tq(x), fake_quantize(x, tq.scale, tq.zero_point, s))


def test_tensor_quantizer_weight_role_unshared_groups():
    s = QuantScheme(format="int4", granularity="group", axis=1, group_size=4)
    tq = TensorQuantizer(s, "weight")
    tq.calibrate_from(W)
    assert tq.scale.shape == (8, 3)
    assert torch.allclose(tq.scale, _expected_group_scales(W, 1, 4, False, qmax=7.0), rtol=1e-6)


def test_tensor_quantizer_quantize_before_calibration_raises():
    tq = TensorQuantizer(QuantScheme(), "input")
    with pytest.raises(TrtqError):
        tq.set_mode("quantize")
    with pytest.raises(TrtqError):
        tq.finish_calibration()
    with pytest.raises(ValueError):
        TensorQuantizer(QuantScheme(), "bias")
    with pytest.raises(ValueError):
        tq.set_mode("train")


# =============================================================================== modules
def _fq_int8(x, scale):
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def test_quant_linear_from_float():
    torch.manual_seed(0)
    lin = nn.Linear(12, 8)
    q = QuantLinear.from_float(lin, None, None)
    assert isinstance(q, nn.Linear) and isinstance(q, QuantLinear)
    assert q.weight is lin.weight and q.bias is lin.bias
    x = torch.randn(5, 12, generator=_gen(50))
    assert torch.equal(q(x), lin(x))
    with torch.no_grad():
        assert torch.equal(q(x), lin(x))

    qw = QuantScheme(granularity="channel", axis=0)
    qi = QuantScheme()
    q = QuantLinear.from_float(lin, qw, qi)
    assert q.weight is lin.weight and q.bias is lin.bias
    assert set(dict(q.named_parameters())) == {"weight", "bias"}
    assert {n for n, _ in quantizers(q)} == {"weight_quantizer", "input_quantizer"}
    calib = [torch.randn(5, 12, generator=_gen(51 + i)) for i in range(3)]
    for c in calib:
        assert torch.equal(q(c), F.linear(c, _fq_int8(lin.weight, lin.weight.detach().abs().amax(1, keepdim=True) / 127),
                                          lin.bias))
    q.input_quantizer.finish_calibration()
    w_scale = lin.weight.detach().abs().amax(1, keepdim=True) / 127
    x_scale = torch.cat(calib).abs().max() / 127
    expected = F.linear(_fq_int8(x, x_scale), _fq_int8(lin.weight, w_scale), lin.bias)
    assert torch.allclose(q(x), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        out1 = q(x)
        assert torch.allclose(out1, expected, rtol=1e-5, atol=1e-6)
        # the shared weight changes -> the cached quantized weight is refreshed
        lin.weight.mul_(0.5)
        out2 = q(x)
        w_scale2 = lin.weight.abs().amax(1, keepdim=True) / 127
        assert torch.allclose(w_scale2, q.weight_quantizer.scale * 0.5, rtol=1e-6)
        # scale still the old one: weights re-quantized with the calibrated scale
        exp2 = F.linear(_fq_int8(x, x_scale), _fq_int8(lin.weight, q.weight_quantizer.scale), lin.bias)
        assert torch.allclose(out2, exp2, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out1, out2)
    # gradients flow to the shared parameters
    q(x).sum().backward()
    assert lin.weight.grad is not None and lin.bias.grad is not None


def test_quant_conv2d_from_float():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    q = QuantConv2d.from_float(conv, None, None)
    assert q.weight is conv.weight and q.bias is conv.bias
    x = torch.randn(2, 4, 7, 7, generator=_gen(60))
    assert torch.equal(q(x), conv(x))

    qw = QuantScheme(format="int8", granularity="channel", axis=0)
    qi = QuantScheme(format="int8", granularity="channel", axis=1)
    q = QuantConv2d.from_float(conv, qw, qi)
    assert q.weight is conv.weight and q.bias is conv.bias
    assert q.weight_quantizer.scale.shape == (6, 1, 1, 1)
    q(x)  # calibrate input
    q.input_quantizer.finish_calibration()
    w_scale = conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    x_scale = x.abs().amax(dim=(0, 2, 3), keepdim=True) / 127
    expected = F.conv2d(_fq_int8(x, x_scale), _fq_int8(conv.weight, w_scale), conv.bias, padding=1)
    assert torch.allclose(q(x), expected, rtol=1e-5, atol=1e-5)
    # and it differs from the float output (quantization did something)
    assert not torch.equal(q(x), conv(x))


def test_quant_conv2d_fp4_group_weight_matches_manual():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 4, 1, bias=False)
    qw = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=4)
    q = QuantConv2d.from_float(conv, qw, None)
    x = torch.randn(1, 8, 3, 3, generator=_gen(61))
    w = conv.weight.detach()  # [4, 8, 1, 1]
    scale = w.reshape(4, 2, 4).abs().amax(-1) / 6.0  # [4, 2]
    se = scale.repeat_interleave(4, dim=1)[:, :, None, None]
    e2m1 = get_format("fp4_e2m1")
    wq = e2m1.round((w / se).clamp(-6, 6)) * se
    assert torch.allclose(q(x), F.conv2d(x, wq), rtol=1e-5, atol=1e-6)


def test_fake_quantize_scale_gradient_is_lsq_straight_through():
    """The docstring's claim: d/ds of fake_quantize is LSQ's round(x/s) - x/s inside the range and the clamp
    bound outside (the exact derivative would be 0 almost everywhere)."""
    s = QuantScheme()
    x = torch.tensor([0.3, -1.26, 2.0, 100.0, -100.0])
    scale = torch.tensor(0.1, requires_grad=True)
    fake_quantize(x, scale, None, s).sum().backward()
    v = x / 0.1
    inside = v.abs() <= 127
    expected = torch.where(inside, torch.round(v) - v, v.clamp(-128, 127).round())
    assert scale.grad.item() == pytest.approx(expected.sum().item(), abs=1e-4)
