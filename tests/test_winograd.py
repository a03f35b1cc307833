"""Winograd F(m,3): exact transforms, scale invariance, the INT8 op vs the layer vs the fake-quant path,
learned scales, artifacts, fallbacks and the CLI."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trtq
from trtq import LayerRule, QuantScheme, Recipe, TrtqError
from trtq.cli import main
from trtq.nn import QuantConv2d
from trtq.winograd.conv import transform_input, transform_output, transform_weight, winograd_conv2d
from trtq.winograd.layer import WinogradQuantConv2d
from trtq.winograd.learn import learn_transform_scales, sqnr_db
from trtq.winograd.quant import fake_quant_winograd_conv, quantize_weight
from trtq.winograd.transforms import cook_toom, scaled_matrices, winograd_matrices

TILES = (2, 4, 6)


def W8(gran, g=None):
    return QuantScheme(format="int8", granularity=gran, axis=1 if g else None, group_size=g)


def A8(gran, g=None, dyn=True):
    return QuantScheme(format="int8", granularity=gran, axis=1 if g else None, group_size=g, dynamic=dyn)


MINMAX = dict(weight=QuantScheme(format="int8", granularity="channel", axis=0), input=QuantScheme(format="int8"))


def winograd_rule(tile=4, g=8, per_position=False, dyn=True):
    args = {"tile": tile, "group_size": g} if g else {"tile": tile}
    if per_position:
        args["per_position"] = True
    gran = "group" if g else "tensor"
    return LayerRule(types=("Conv2d",), layer="winograd", layer_args=args, weight=W8(gran, g), input=A8(gran, g, dyn))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("tile", TILES)
def test_cook_toom_matrices_are_exact_convolutions(tile):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 14, 13, dtype=torch.float64), torch.randn(3, 5, 3, 3, dtype=torch.float64), None
    assert (winograd_conv2d(x, w, b, 1, tile) - F.conv2d(x, w, b, padding=1)).abs().max() < 1e-9
    x, w = x.float(), w.float()
    assert rel(winograd_conv2d(x, w, None, 1, tile), F.conv2d(x, w, padding=1)) < 1e-5
    at, g, bt = cook_toom(tile)  # exact rationals, not floats
    assert (len(at), len(at[0]), len(g), len(bt)) == (tile, tile + 2, tile + 2, tile + 2)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("padding", [0, 1, 2, (2, 0)])
@pytest.mark.parametrize("hw", [(3, 3), (7, 5), (9, 11)])
def test_partial_tiles_and_padding(tile, padding, hw):
    torch.manual_seed(1)
    x, w = torch.randn(3, 4, *hw, dtype=torch.float64), torch.randn(6, 4, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    ref = F.conv2d(x, w, b, padding=padding)
    out = winograd_conv2d(x, w, b, padding, tile)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-9


def test_unsupported_convs_raise_clearly():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 2, 3, 3)
    with pytest.raises(TrtqError, match="stride 1"):
        winograd_conv2d(x, w, stride=2)
    with pytest.raises(TrtqError, match="3x3"):
        winograd_conv2d(x, torch.randn(2, 2, 5, 5))
    with pytest.raises(TrtqError, match="tile"):
        winograd_conv2d(x, w, tile=3)


@pytest.mark.parametrize("tile", TILES)
def test_diagonal_scales_leave_the_float_result_exact(tile):
    torch.manual_seed(2)
    n = tile + 2
    s_b, s_g = torch.rand(n, dtype=torch.float64) * 4 + 0.1, torch.rand(n, dtype=torch.float64) * 4 + 0.1
    at, g, bt = scaled_matrices(tile, s_b, s_g)
    at0, g0, bt0 = winograd_matrices(tile, torch.float64)
    # B^T -> S_B B^T and G -> S_G G scale rows; A^T -> A^T S_A scales columns by 1 / (s_b s_g).
    assert torch.allclose(bt, torch.diag(s_b) @ bt0) and torch.allclose(g, torch.diag(s_g) @ g0)
    assert torch.allclose(at, at0 @ torch.diag(1 / (s_b * s_g)))
    x, w = torch.randn(2, 3, 10, 9, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    v, grid = transform_input(x, bt, tile, (1, 1))
    y = transform_output(transform_weight(w, g) @ v, at, grid)
    assert (y - F.conv2d(x, w, padding=1)).abs().max() < 1e-9


def test_scales_matter_only_where_positions_share_a_quantization_scale():
    torch.manual_seed(3)
    x, w = torch.randn(2, 16, 12, 12), torch.randn(8, 16, 3, 3)
    s_b, s_g = torch.rand(6) + 0.5, torch.rand(6) + 0.5
    one = torch.ones(6)
    per_pos = [fake_quant_winograd_conv(x, w, None, sb, sg, 4, (1, 1), 8, "position-group") for sb, sg in
               ((one, one), (s_b, s_g))]
    shared = [fake_quant_winograd_conv(x, w, None, sb, sg, 4, (1, 1), 8, "group") for sb, sg in
              ((one, one), (s_b, s_g))]
    assert rel(per_pos[1], per_pos[0]) < 1e-5  # a per-position scale absorbs any diagonal rescaling
    assert rel(shared[1], shared[0]) > 1e-3


def _layer(cin=32, cout=16, tile=4, g=8, per_position=False, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    return conv, WinogradQuantConv2d.from_float(copy.deepcopy(conv), W8("group", g), A8("group", g),
                                                tile=tile, group_size=g, per_position=per_position)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("per_position", [False, True])
def test_op_equals_layer_and_fake_quant_path(tile, per_position):
    conv, layer = _layer(tile=tile, per_position=per_position)
    with torch.no_grad():
        layer.s_b.copy_(torch.linspace(0.5, 2, tile + 2))
    layer.refresh_weight()  # the transforms and INT8 weight are derived from s_b, s_g at refresh time
    x = torch.randn(2, 32, 11, 9)
    at, g, bt = layer.transforms()
    codes, w_scale = quantize_weight(transform_weight(conv.weight.detach(), g), 8, layer.granularity)
    assert codes.dtype == torch.int8 and codes.shape == (tile + 2, tile + 2, 16, 32)
    with torch.no_grad():
        op = torch.ops.trtq.winograd_conv_int8(x, codes, w_scale, conv.bias, at, bt, tile, [1, 1], 8,
                                               layer.granularity, None)
        out = layer(x)
        fake = fake_quant_winograd_conv(x, conv.weight, conv.bias, layer.s_b, layer.s_g, tile, (1, 1), 8,
                                        layer.granularity)
    assert torch.equal(out, op)
    assert rel(fake, op) < 1e-5


def test_op_passes_opcheck():
    conv, layer = _layer(cin=16, cout=8, tile=2)
    at, _, bt = layer.transforms()
    codes, w_scale = layer.int8_weight()
    args = (torch.randn(1, 16, 6, 5), codes, w_scale, conv.bias.detach(), at, bt, 2, [1, 1], 8, "group", None)
    torch.library.opcheck(torch.ops.trtq.winograd_conv_int8.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("tile, granularity, bound", [(2, "group", 0.03), (4, "position-group", 0.1),
                                                      (6, "position-group", 0.2)])
def test_int8_op_is_close_to_float_conv(tile, granularity, bound):
    conv, layer = _layer(tile=tile, per_position=granularity == "position-group")
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        assert rel(layer(x), conv(x)) < bound


def test_learning_the_scales_improves_sqnr():
    torch.manual_seed(0)
    layers = {}
    for i, (cin, cout) in enumerate([(32, 32), (64, 32)]):
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        with torch.no_grad():  # real-ish: output channels of different magnitudes
            conv.weight.mul_(torch.logspace(-1, 0.5, cout)[:, None, None, None])
        layers[f"c{i}"] = WinogradQuantConv2d.from_float(conv, W8("group", 32), A8("group", 32), tile=6,
                                                         group_size=32)
    gen = torch.Generator().manual_seed(7)
    x = {k: torch.randn(2, m.in_channels, 16, 16, generator=gen) for k, m in layers.items()}

    def sqnrs():
        with torch.no_grad():
            return [sqnr_db(m(x[k]) - m.bias[None, :, None, None], F.conv2d(x[k], m.weight, padding=1))
                    for k, m in layers.items()]

    before = sqnrs()
    stats = learn_transform_scales(layers, steps=40, lr=0.05, seed=0, progress=False)
    after = sqnrs()
    assert all(a > b + 6 for a, b in zip(after, before)), (before, after)
    assert stats["loss_last"] < stats["loss_first"]
    assert torch.equal(layers["c0"].s_b, layers["c1"].s_b)  # shared by default


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(16, 8, 1)
        self.odd = nn.Conv2d(8, 8, 3, padding=1)  # 8 channels: group size 16 does not divide -> falls back
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.odd(self.proj(self.down(self.a(x)))).mean((2, 3)))


def tiny_recipe(dyn=True, steps=5):
    return Recipe(name="tiny-winograd", method="winograd", method_args={"steps": steps, "progress": False},
                  rules=(winograd_rule(tile=4, g=16, dyn=dyn), LayerRule(**MINMAX)))


@pytest.mark.parametrize("dyn", [True, False])
def test_recipe_falls_back_and_artifact_round_trips_learned_scales(tmp_path, dyn):
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 16, 12, 12)
    fresh = copy.deepcopy(model)
    trtq.quantize(model, tiny_recipe(dyn), lambda m: m(x))
    assert isinstance(model.a, WinogradQuantConv2d)
    for name in ("down", "proj", "odd"):  # strided, 1x1, group size not dividing: the next rule decides
        assert type(getattr(model, name)) is QuantConv2d
    assert not torch.equal(model.a.s_b, torch.ones(6))
    assert (model.a.input_quantizer is None) == dyn
    out = model(x)
    trtq.save_artifact(model, tmp_path / "art", "tiny")
    trtq.load_artifact(fresh, tmp_path / "art")
    assert torch.equal(fresh.a.s_b, model.a.s_b) and torch.equal(fresh.a.s_g, model.a.s_g)
    assert torch.equal(fresh(x), out)


def test_static_input_scales_are_calibrated_in_the_winograd_domain():
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 16, 12, 12)
    ref = model.a(x)
    trtq.quantize(model, tiny_recipe(dyn=False), lambda m: m(x))
    layer = model.a
    assert layer.input_quantizer.scale.shape == (1, 1)  # one group of 16 channels, shared by positions and tiles
    v, _ = transform_input(x, layer.transforms()[2], 4, (1, 1))  # the Winograd-domain input it observed
    assert torch.allclose(layer.static_act_scale(), (v.abs().max() / 127).expand(6, 6, 1))
    with torch.no_grad():
        assert rel(layer(x), ref) < 0.5


@pytest.mark.parametrize("rule_kwargs, match", [
    (dict(layer_args={"tile": 5, "group_size": 8}), "tile"),
    (dict(layer_args={"tile": 4, "group_size": 8, "bogus": 1}), "bogus"),
    (dict(layer_args={"tile": 4, "group_size": 16}), "differs"),
    (dict(layer_args={"tile": 4, "group_size": 8}, input=None), "input scheme is missing"),
    (dict(layer_args={"tile": 4, "group_size": 8}, weight=QuantScheme(format="int8", granularity="channel", axis=0)),
     "granularity"),
    (dict(layer_args={"tile": 4, "group_size": 8}, weight=QuantScheme(format="fp8_e4m3", granularity="group", axis=1,
                                                                      group_size=8)), "int8"),
    (dict(layer_args={"tile": 4, "per_position": True}, weight=W8("tensor"), input=A8("tensor")), "per_position"),
])
def test_bad_layer_args_are_rejected_when_the_recipe_is_built(rule_kwargs, match):
    kw = dict(types=("Conv2d",), layer="winograd", weight=W8("group", 8), input=A8("group", 8)) | rule_kwargs
    with pytest.raises(TrtqError, match=match):
        LayerRule(**kw)


def test_bad_method_args_are_rejected():
    model, x = Tiny().eval(), torch.randn(1, 16, 8, 8)
    recipe = Recipe(name="bad", method="winograd", method_args={"steps": -1},
                    rules=(winograd_rule(g=16), LayerRule(**MINMAX)))
    with pytest.raises(TrtqError, match="steps"):
        trtq.quantize(model, recipe, lambda m: m(x))
    assert type(model.a) is nn.Conv2d  # nothing half-quantized left behind


def test_builtin_recipes_load():
    for name in ("w8a8-group", "w8a8-winograd-f43", "w8a8-winograd-f63", "w8a8-winograd-f43-std",
                 "w8a8-winograd-f63-std", "w8a8-winograd-f43-pertensor", "w8a8-winograd-f63-pertensor"):
        assert trtq.get_recipe(name).rules


def test_cli_eval_with_a_winograd_recipe(tmp_path, capsys):
    out = tmp_path / "m.json"
    code = main(["eval", "--model", "digits-unet", "--recipe", "w8a8-winograd-f63", "--samples", "4", "--steps", "2",
                 "--calib-samples", "2", "--quiet", "--json", str(out)])
    capsys.readouterr()
    assert code == 0
    result = json.loads(out.read_text())
    assert result["recipe"] == "w8a8-winograd-f63" and result["psnr_db"] > 0


@pytest.mark.parametrize("granularity", ["tensor", "group", "position-group"])
def test_op_and_fake_quant_are_batch_invariant(granularity):
    """The contract: an image's output never depends on the other images in its batch (classifier-free guidance
    doubles batches). The other three images are 100x larger, so any scale shared with them would show."""
    g = 16 if granularity == "tensor" else 8
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    at, gm, bt = winograd_matrices(4)
    codes, w_scale = quantize_weight(transform_weight(conv.weight.detach(), gm), g, granularity)
    batch = torch.randn(4, 16, 9, 10)
    batch[1:] *= 100
    with torch.no_grad():
        outs = [torch.ops.trtq.winograd_conv_int8(x, codes, w_scale, conv.bias, at, bt, 4, [1, 1], g, granularity,
                                                  None) for x in (batch[:1], batch)]
        fakes = [fake_quant_winograd_conv(x, conv.weight, conv.bias, torch.ones(6), torch.ones(6), 4, (1, 1), g,
                                          granularity) for x in (batch[:1], batch)]
    # The reference's float stages (transforms, the fake-quant float GEMM) go through einsum/BLAS, whose
    # summation order depends on the batch size: equal up to that. A scale shared with the 100x larger images
    # would change image 0's codes and its output by percents. (The Triton kernels fix the order per element
    # and are bit-identical: tests/test_kernels_winograd.py.)
    assert rel(outs[1][:1], outs[0]) < 1e-6
    assert rel(fakes[1][:1], fakes[0]) < 1e-6
