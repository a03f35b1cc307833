"""HQ-DiT: clipping search, format selection, GPTQ on the FP4 grid, the method end to end, artifacts,
argument checks, and `trtq eval` with the HQ-DiT recipe."""

import copy
import json

import pytest
import torch
from torch import nn

import trtq
from trtq import Recipe, TrtqError
from trtq.cli import main
from trtq.fp4 import FP4_FORMATS, fake_quantize_groups, group_amax, scales_from_amax
from trtq.methods.hqdit import (
    HQDiTArgs,
    gptq_fp4,
    search_act,
    search_weight_scales,
    select_formats,
)
from trtq.nn import quantizers
from trtq.nn.fp4_linear import FP4Linear
from trtq.scheme import QuantScheme


def fp4_rule(g=16, dynamic=True, act_granularity="group", scale_format=None):
    inp = ({"format": "fp4_e2m1", "granularity": "group", "axis": -1, "group_size": g, "dynamic": dynamic}
           if act_granularity == "group" else {"format": "fp4_e2m1", "granularity": "tensor"})
    if scale_format and dynamic:
        inp["scale_format"] = scale_format
    weight = {"format": "fp4_e2m1", "granularity": "group", "axis": 1, "group_size": g}
    if scale_format:
        weight["scale_format"] = scale_format
    return {"pattern": "*", "types": ["Linear"], "layer": "fp4", "layer_args": {"group_size": g},
            "weight": weight, "input": inp}


def recipe(method_args=None, **rule_kw):
    return Recipe.from_dict({"name": "t", "method": "hqdit", "method_args": method_args or {},
                             "rules": [fp4_rule(**rule_kw)]})


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 96)
        self.b = nn.Linear(96, 32)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = torch.randn(8, 16, 64)
    x[..., 3] *= 20  # an outlier channel, as DiT activations have
    return x


def layer_of(g=16, k=64, n=48, dynamic=True):
    torch.manual_seed(1)
    lin = nn.Linear(k, n)
    lin.weight.data[:, 5] *= 8
    w = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=g)
    a = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=g, dynamic=dynamic)
    return FP4Linear.from_float(lin, w, a, group_size=g)


# ----------------------------------------------------------------------------------- searches
@pytest.mark.parametrize("fmt", FP4_FORMATS)
def test_weight_clip_search_never_worse_than_minmax(fmt):
    q = layer_of()
    w = q.weight.detach()
    err = lambda s: (fake_quantize_groups(w, s, fmt, 16) - w).pow(2).sum()  # noqa: E731
    minmax = scales_from_amax(group_amax(w, 16), fmt)
    searched = search_weight_scales(q, w, fmt, clip=True)
    assert err(searched) <= err(minmax) and torch.all(searched <= minmax + 1e-7)
    assert torch.equal(search_weight_scales(q, w, fmt, clip=False), minmax)


@pytest.mark.parametrize("dynamic", [True, False])
def test_act_clip_search_never_worse_than_minmax(data, dynamic):
    q = layer_of(dynamic=dynamic)
    x = data.reshape(-1, 64)
    col = x.abs().amax(0)
    clip, static = search_act(q, x, col, "fp4_e2m1", clip=True)
    clip1, static1 = search_act(q, x, col, "fp4_e2m1", clip=False)
    assert clip1 == 1.0 and 0.5 <= clip <= 1.0
    if dynamic:
        err = lambda r: (fake_quantize_groups(x, scales_from_amax(group_amax(x, 16) * r, "fp4_e2m1"),  # noqa: E731
                                              "fp4_e2m1", 16) - x).pow(2).sum()
        assert err(clip) <= err(1.0)
    else:
        err = lambda s: (fake_quantize_groups(x, s, "fp4_e2m1", 16) - x).pow(2).sum()  # noqa: E731
        assert static.shape == (4,) and err(static) <= err(static1)


def test_format_selection_picks_lowest_error(data):
    q = layer_of()
    x = data.reshape(-1, 64)
    w = q.rotated_weight()
    cands = {f: (w, search_weight_scales(q, w, f, True)) for f in FP4_FORMATS}
    acts = {f: search_act(q, x, x.abs().amax(0), f, True) for f in FP4_FORMATS}
    (wf, af), errors = select_formats(q, x, cands, acts)
    assert len(errors) == 9 and errors[(wf, af)] == min(errors.values())
    # the errors are what the layer really produces with that pair
    q.pack_weight(w, cands[wf][1], fmt=wf)
    q.set_act(af, *acts[af])
    with torch.no_grad():
        assert abs(float((q(x) - nn.functional.linear(x, q.weight, q.bias)).pow(2).mean()) - errors[(wf, af)]) < 1e-6


def test_gptq_lowers_output_error_on_correlated_inputs():
    torch.manual_seed(0)
    x = torch.randn(2048, 8) @ torch.randn(8, 64) + 0.1 * torch.randn(2048, 64)  # low-rank: strongly correlated
    w = torch.randn(32, 64)
    scale = scales_from_amax(group_amax(w, 16), "fp4_e2m1")
    rtn = fake_quantize_groups(w, scale, "fp4_e2m1", 16)
    g = gptq_fp4(w, x.T @ x / len(x), scale, "fp4_e2m1", 16, 0.01)
    out_err = lambda wq: (x @ (wq - w).T).pow(2).mean()  # noqa: E731
    assert out_err(g) < 0.7 * out_err(rtn)
    assert torch.allclose(fake_quantize_groups(g, scale, "fp4_e2m1", 16), g)  # on the scaled FP4 grid


# ----------------------------------------------------------------------------------- method end to end
def quantized(data, method_args=None, fp=None, **rule_kw):
    fp = Net().eval() if fp is None else fp
    q = trtq.quantize(copy.deepcopy(fp), recipe(method_args, **rule_kw), lambda m: m(data))
    return fp, q


@pytest.mark.parametrize("rule_kw", [{}, {"dynamic": False}, {"act_granularity": "tensor"},
                                     {"scale_format": "fp8_e4m3"}])
def test_hqdit_artifact_round_trip(tmp_path, data, rule_kw):
    fp, q = quantized(data, {"gptq": True}, **rule_kw)
    with torch.no_grad():
        y = q(data)
        err = (y - fp(data)).pow(2).mean() / fp(data).pow(2).mean()
    assert err < 0.1
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    loaded = trtq.load_artifact(copy.deepcopy(fp), tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(data), y)
    for name in ("a", "b"):
        ql, qq = getattr(loaded, name), getattr(q, name)
        assert isinstance(ql, FP4Linear)
        assert (ql.weight_format, ql.act_format, ql.act_clip) == (qq.weight_format, qq.act_format, qq.act_clip)
        assert torch.equal(ql.hadamard_signs, qq.hadamard_signs)
        assert torch.equal(ql.weight_packed, qq.weight_packed)
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["layers"]["a"]["config"]["weight_format"] == q.a.weight_format


def test_hqdit_improves_on_minmax(data):
    fp = Net().eval()
    base = trtq.quantize(copy.deepcopy(fp), Recipe.from_dict({"name": "m", "rules": [fp4_rule()]}))
    _, hq = quantized(data, fp=fp)
    with torch.no_grad():
        ref = fp(data)
        assert (hq(data) - ref).pow(2).mean() < (base(data) - ref).pow(2).mean()


def test_hqdit_leaves_float_model_and_quantizer_modes_alone(data):
    fp, q = quantized(data)
    assert all(qz.mode == "quantize" for _, qz in quantizers(q))
    assert not any(isinstance(m, FP4Linear) for m in fp.modules())
    assert not q.a.float_forward


@pytest.mark.parametrize("args,match", [
    ({"hadamard": "yes"}, "true or false"),
    ({"formats": ["int4"]}, "subset"),
    ({"formats": []}, "subset"),
    ({"damp": 0}, "damp"),
    ({"max_rows": 3}, "max_rows"),
    ({"seed": 1.5}, "seed"),
    ({"rotate": True}, "unknown keys"),
])
def test_bad_method_args_rejected(data, args, match):
    with pytest.raises(TrtqError, match=match):
        trtq.quantize(Net(), recipe(args), lambda m: m(data))


def test_hqdit_needs_fp4_layers_and_calibration(data):
    r = Recipe.from_dict({"name": "t", "method": "hqdit", "rules": [
        {"pattern": "*", "weight": {"format": "int8", "granularity": "channel", "axis": 0}}]})
    with pytest.raises(TrtqError, match="no fp4 layers"):
        trtq.quantize(Net(), r, lambda m: m(data))
    with pytest.raises(TrtqError, match="calib_loop"):
        trtq.quantize(Net(), recipe())
    net = Net()
    trtq.quantize(net, recipe({"clip": False, "select_format": False}))  # rotation only: no data needed
    assert net.a.hadamard_signs is not None


def test_args_defaults():
    a = HQDiTArgs.parse({})
    assert a.hadamard and a.clip and a.select_format and not a.gptq and a.formats == list(FP4_FORMATS)


# ----------------------------------------------------------------------------------- CLI
def test_cli_eval_hqdit_recipe(tmp_path, capsys):
    j = tmp_path / "dit.json"
    code = main(["eval", "--model", "digits-dit", "--recipe", "w4a4-fp4-hqdit", "--samples", "4", "--steps", "2",
                 "--calib-samples", "4", "--quiet", "--json", str(j)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(j.read_text())
    assert result["recipe"] == "w4a4-fp4-hqdit" and result["model"] == "digits-dit"
    assert 0 <= result["accuracy"] <= 1 and result["psnr_db"] > 0
