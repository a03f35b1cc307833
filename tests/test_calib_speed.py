"""Calibration speed (issue 16): the fast FP4 encoding is bit for bit the reference rounding, artifacts load
their packed codes without re-encoding, and the batched HQ-DiT searches choose what the loops chose."""

import copy

import pytest
import torch
from torch import nn

import trtq
from trtq import Recipe
from trtq.formats import FORMATS, pack_4bit
from trtq.fp4 import FP4_FORMATS, group_amax, quantize_groups, scales_from_amax
from trtq.nn import fp4_linear
from trtq.nn.fp4_linear import FP4Linear, encode_groups

FLOAT_FORMATS = [name for name, f in FORMATS.items() if f.kind == "float"]


def edge_values(fmt) -> torch.Tensor:
    """Grid values, every tie, the floats either side of each tie, zeros, subnormals, ±max, beyond max, inf."""
    mags = fmt._magnitudes.float()
    mids = (mags[1:] + mags[:-1]) / 2
    inf = torch.tensor(float("inf"))
    pos = torch.cat([mags, mids, torch.nextafter(mids, inf), torch.nextafter(mids, -inf),
                     torch.tensor([0.0, 1e-45, 1e-40, 1e-38, fmt.max_value, fmt.max_value * 1.01, 3e38, float("inf")])])
    return torch.cat([pos, -pos])


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_encode_nearest_is_encode_of_round(name):
    fmt = FORMATS[name]
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(-2**31, 2**31 - 1, (200_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    anything = bits.view(torch.float32)  # every exponent, subnormals included
    anything = anything[~torch.isnan(anything)]
    near = torch.randn(200_000, generator=gen) * fmt.max_value / 3
    for x in (edge_values(fmt), anything, near):
        assert torch.equal(fmt.encode_nearest(x), fmt.encode(fmt.round(x)))
        assert torch.equal(fmt.encode_nearest(x.double()), fmt.encode(fmt.round(x.double())))
    # -0 and small negatives keep the sign bit, as round() then encode() give them
    assert fmt.encode_nearest(torch.tensor([-0.0, -1e-30])).tolist() == [1 << (fmt.bits - 1)] * 2
    # float64 is rounded once, in float64 (through float32 first, 0.25 + 2^-40 would tie and round to 0)
    if name == "fp4_e2m1":
        assert fmt.encode_nearest(torch.tensor([0.25 + 2**-40], dtype=torch.float64)).item() == 1


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_encode_nearest_refuses_nan_as_encode_does(name):
    fmt = FORMATS[name]
    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError):
        fmt.encode(fmt.round(x))
    with pytest.raises(ValueError, match="NaN"):
        fmt.encode_nearest(x)


@pytest.mark.parametrize("name", FP4_FORMATS)
@pytest.mark.parametrize("g", [16, 128])
def test_encode_groups_is_the_reference_packing(name, g, monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(300, 256) * torch.logspace(-3, 2, 300)[:, None]  # many binades, rows across slices
    w[0, :5] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, float("inf")])
    scale = scales_from_amax(group_amax(w.clamp(-1e3, 1e3), g), name)
    monkeypatch.setattr(fp4_linear, "ENCODE_ROWS", 64)  # several slices, the last one partial
    ref = pack_4bit(FORMATS[name].encode(quantize_groups(w, scale, name, g)))
    assert torch.equal(encode_groups(w, scale, name, g), ref)


def fp4_recipe(method=None, **method_args):
    w = {"format": "fp4_e2m1", "granularity": "group", "axis": 1, "group_size": 16}
    a = {"format": "fp4_e2m1", "granularity": "group", "axis": -1, "group_size": 16, "dynamic": True}
    rule = {"pattern": "*", "types": ["Linear"], "layer": "fp4", "layer_args": {"group_size": 16},
            "weight": w, "input": a}
    return Recipe.from_dict({"name": "t", "rules": [rule], **({"method": method, "method_args": method_args}
                                                              if method else {})})


def test_load_artifact_takes_the_stored_codes_without_encoding(tmp_path, monkeypatch):
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 32))
    x = torch.randn(40, 64)
    q = trtq.quantize(copy.deepcopy(fp), fp4_recipe("hqdit", progress=False), lambda m: m(x))
    trtq.save_artifact(q, tmp_path / "a", "mlp")

    def no_encoding(*args, **kwargs):
        raise AssertionError("load_artifact encoded weights the artifact already holds")

    monkeypatch.setattr(fp4_linear, "encode_groups", no_encoding)
    loaded = trtq.load_artifact(copy.deepcopy(fp), tmp_path / "a")
    for a, b in zip(q.modules(), loaded.modules()):
        if isinstance(a, FP4Linear):
            assert torch.equal(a.weight_packed, b.weight_packed) and a.weight_format == b.weight_format
    assert torch.equal(loaded(x), q(x))
    # outside load_artifact, building a layer encodes its weights again
    with pytest.raises(AssertionError, match="already holds"):
        trtq.quantize(copy.deepcopy(fp), fp4_recipe())


# ----------------------------------------------------------------------------------- HQ-DiT searches
def hqdit_layer(n=96, k=128, g=16, dynamic=True, scale_format=None, seed=0):
    from trtq import QuantScheme

    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    lin.weight.data *= torch.logspace(-2, 1, n)[:, None]  # rows over several binades
    w = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=g, scale_format=scale_format)
    a = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=g, dynamic=dynamic,
                    scale_format=scale_format if dynamic else None)
    return FP4Linear.from_float(lin, w, a, group_size=g)


@pytest.mark.parametrize("name", FP4_FORMATS)
def test_hqdit_fake_quantize_is_fake_quantize_groups(name):
    from trtq.fp4 import fake_quantize_groups
    from trtq.methods.hqdit import fake_quantize

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 64, generator=gen) * 4
    x[0, :3] = torch.tensor([0.0, -0.0, -1e-30])
    for scale in (torch.rand(50, 4, generator=gen) + 0.05, torch.rand(4, generator=gen) + 0.05):
        assert torch.equal(fake_quantize(x, scale, name, 16), fake_quantize_groups(x, scale, name, 16))
        assert torch.equal(fake_quantize(x.double(), scale.double(), name, 16),  # GPTQ's float64 columns
                           fake_quantize_groups(x.double(), scale.double(), name, 16))


@pytest.mark.parametrize("name", FP4_FORMATS)
def test_batched_weight_clip_search_equals_the_loop_over_ratios(name, monkeypatch):
    from trtq.fp4 import fake_quantize_groups
    from trtq.methods import hqdit

    layer = hqdit_layer()
    w = layer.weight.detach()
    # the search as one loop over ratios, each over the whole weight (the first least error wins)
    amax = group_amax(w, 16)
    best_err, best = torch.full_like(amax, float("inf")), amax.clone()
    for r in hqdit.CLIP_RATIOS:
        err = (fake_quantize_groups(w, scales_from_amax(amax * r, name), name, 16) - w).pow(2)
        err = err.reshape(*amax.shape, 16).sum(-1)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, amax * r, best)
    expected = layer.weight_scales(w, clip=best / amax.clamp_min(1e-30), fmt=name)
    monkeypatch.setattr(hqdit, "SEARCH_ELEMENTS", 11 * 128 * 7)  # slices of 7 rows, the last one partial
    got = hqdit.search_weight_scales(layer, w, name, clip=True)
    assert torch.equal(got, expected)
    assert (best < amax).any()  # the search clipped some groups (it is not comparing min-max with itself)


@pytest.mark.parametrize("dynamic,scale_format", [(True, None), (True, "fp8_e4m3"), (False, None)])
def test_format_choice_errors_are_the_layer_forward_errors(dynamic, scale_format):
    from trtq.hadamard import random_signs
    from trtq.methods.hqdit import search_act, search_weight_scales, select_formats

    layer = hqdit_layer(dynamic=dynamic, scale_format=scale_format)
    layer.set_rotation(random_signs(layer.in_features, 3))
    x = torch.randn(200, layer.in_features) * torch.logspace(-1, 1, layer.in_features)
    xr = layer.rotate_input(x)
    w = layer.rotated_weight()
    wc = {f: (w, search_weight_scales(layer, w, f, True)) for f in FP4_FORMATS}
    ac = {f: search_act(layer, xr, xr.abs().amax(0), f, True) for f in FP4_FORMATS}
    choice, errors = select_formats(layer, x, wc, ac)
    forward = {}  # each pair through the layer's own forward (trtq::fp4_group_gemm)
    with torch.no_grad():
        ref = nn.functional.linear(x, layer.weight, layer.bias)
        for wf, (ww, scale) in wc.items():
            layer.pack_weight(ww, scale, fmt=wf)
            for af, act in ac.items():
                layer.set_act(af, *act)
                forward[(wf, af)] = float((layer(x) - ref).pow(2).mean())
    assert errors.keys() == forward.keys()
    for pair, e in forward.items():
        assert errors[pair] == pytest.approx(e, rel=1e-5), pair
    assert choice == min(forward, key=forward.get)
    assert len(set(round(e, 12) for e in forward.values())) == 9  # nine distinct errors: the choice is a real one


# ----------------------------------------------------------------------------------- Winograd scale learning
def winograd_layer(cin=32, cout=64, tile=4, granularity="group"):
    from trtq import QuantScheme
    from trtq.winograd.layer import WinogradQuantConv2d

    conv = nn.Conv2d(cin, cout, 3, padding=1)
    with torch.no_grad():  # output channels of different magnitudes
        conv.weight.mul_(torch.logspace(-1, 0.5, cout)[:, None, None, None])
    if granularity == "tensor":
        w, a = QuantScheme(format="int8"), QuantScheme(format="int8", dynamic=True)
        return WinogradQuantConv2d.from_float(conv, w, a, tile=tile)
    w = QuantScheme(format="int8", granularity="group", axis=1, group_size=32)
    a = QuantScheme(format="int8", granularity="group", axis=1, group_size=32, dynamic=True)
    return WinogradQuantConv2d.from_float(conv, w, a, tile=tile, group_size=32)


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_tile_sample_is_a_strip_of_whole_tiles(tile):
    import torch.nn.functional as F

    from trtq.winograd.conv import extract_tiles
    from trtq.winograd.learn import relative_error, sample_problem

    layer = winograd_layer(tile=tile)
    gen = torch.Generator().manual_seed(0)
    x, padding, channels = sample_problem(layer, gen, 5, 16)
    assert padding == (0, 0) and x.shape == (1, 32, tile + 2, 5 * tile + 2)
    _, grid = extract_tiles(x, tile, padding)
    assert (grid.tiles_h, grid.tiles_w, grid.out_h, grid.out_w) == (1, 5, tile, 5 * tile)  # no partial tile
    assert channels.tolist() == sorted(set(channels.tolist())) and len(channels) == 16
    # the loss is the relative error over exactly those output channels
    s = torch.ones(tile + 2)
    w = layer.weight.detach()[channels]
    y = F.conv2d(x, w)
    from trtq.winograd.quant import fake_quant_winograd_conv

    yq = fake_quant_winograd_conv(x, w, None, s, s, tile, (0, 0), 32, "group")
    expected = ((yq - y) ** 2).sum() / (y**2).sum()
    assert torch.allclose(relative_error(layer, x, s, s, padding, channels), expected)
    # per-tensor weight scales span every channel: no channel sample there; None: the old full batch
    assert sample_problem(winograd_layer(granularity="tensor"), gen, 5, 16)[2] is None
    x, padding, channels = sample_problem(layer, gen, None, None)
    assert x.shape == (4, 32, 24, 24) and padding is None and channels is None


def test_learning_on_a_sample_of_tiles_and_channels_improves_sqnr():
    import torch.nn.functional as F

    from trtq.winograd.learn import learn_transform_scales, sqnr_db
    from trtq.winograd.quant import fake_quant_winograd_conv

    torch.manual_seed(0)
    layers = {"c0": winograd_layer(32, 64, tile=6), "c1": winograd_layer(64, 64, tile=6)}
    gen = torch.Generator().manual_seed(7)
    x = {k: torch.randn(2, m.in_channels, 16, 16, generator=gen) for k, m in layers.items()}

    def sqnrs():  # of the fake-quant Winograd conv (the op's numbers up to summation order; much faster here)
        with torch.no_grad():
            return [sqnr_db(fake_quant_winograd_conv(x[k], m.weight, None, m.s_b, m.s_g, 6, (1, 1), 32, "group"),
                            F.conv2d(x[k], m.weight, padding=1)) for k, m in layers.items()]

    before = sqnrs()
    stats = learn_transform_scales(layers, steps=40, seed=0, progress=False, tile_sample=4, channel_sample=16)
    after = sqnrs()
    assert all(a > b + 6 for a, b in zip(after, before)), (before, after)
    assert stats["loss_last"] < stats["loss_first"]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_sample_knobs_are_checked(value):
    from trtq import TrtqError
    from trtq.methods.winograd import _args

    assert _args({"tile_sample": None, "channel_sample": 7})["channel_sample"] == 7
    for knob in ("tile_sample", "channel_sample"):
        with pytest.raises(TrtqError, match=f"{knob} must be an integer >= 1 or null"):
            _args({knob: value})


def test_blocked_gptq_equals_column_by_column_gptq(monkeypatch):
    from trtq.methods import hqdit
    from trtq.methods.hqdit import fake_quantize, gptq_fp4

    torch.manual_seed(0)
    w = torch.randn(24, 96)
    x = torch.randn(300, 96) * torch.logspace(-1, 1, 96)
    h = x.T.double() @ x.double()
    h[5, :], h[:, 5] = 0, 0  # a dead input column
    scale = scales_from_amax(group_amax(w, 16), "fp4_e2m1")
    # the unblocked algorithm, spelled out
    ww, hh = w.double().clone(), h.clone()
    dead = torch.diag(hh) == 0
    hh[dead, dead] = 1.0
    ww[:, dead] = 0.0
    hh += 0.01 * torch.diag(hh).mean() * torch.eye(96, dtype=hh.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hh)), upper=True)
    s = scale.double().repeat_interleave(16, dim=1)
    q = torch.zeros_like(ww)
    for i in range(96):
        q[:, i] = fake_quantize(ww[:, i : i + 1], s[:, i : i + 1], "fp4_e2m1", 1)[:, 0]
        ww[:, i + 1 :] -= ((ww[:, i] - q[:, i]) / hinv[i, i])[:, None] * hinv[i, i + 1 :][None, :]
    monkeypatch.setattr(hqdit, "GPTQ_BLOCK", 40)  # blocks of 40, 40, 16
    assert torch.equal(gptq_fp4(w, h, scale, "fp4_e2m1", 16, 0.01), q.float())
