"""quantize(): module swapping, calibration through the user's loop, recipes as data, failure leaves no trace."""

import copy

import pytest
import torch
from torch import nn

import trtq
from trtq import QuantScheme, Recipe, TrtqError
from trtq.nn import QuantConv2d, QuantLinear, quantizers
from trtq.recipes import LayerRule
from trtq.zoo import ZOO_MODELS, build_model


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.body(self.conv_in(x)).mean((2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny().eval(), torch.randn(4, 3, 6, 6)


def test_quantize_swaps_every_layer_and_keeps_parameters(tiny):
    model, x = tiny
    w = model.conv_in.weight
    trtq.quantize(model, "w8a8-minmax", lambda m: m(x))
    assert isinstance(model.conv_in, QuantConv2d) and isinstance(model.body[0], QuantConv2d)
    assert isinstance(model.head, QuantLinear)
    assert model.conv_in.weight is w  # same Parameter: nothing copied, names unchanged
    assert all(q.calibrated for _, q in quantizers(model))
    assert model.trtq_recipe.name == "w8a8-minmax"


def test_quantized_output_is_close_but_not_equal(tiny):
    model, x = tiny
    ref = model(x)
    trtq.quantize(model, "w8a8-minmax", lambda m: m(x))
    out = model(x)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05


def test_static_scale_is_max_abs_over_all_calibration_batches(tiny):
    model, x = tiny
    batches = [x, 3 * x]
    seen = []
    model.conv_in.register_forward_pre_hook(lambda m, a: seen.append(a[0].abs().max()))

    def loop(m):
        for b in batches:
            m(b)

    trtq.quantize(model, "w8a8-minmax", loop)
    assert torch.allclose(model.conv_in.input_quantizer.scale, max(seen) / 127)


def test_keep_float_and_patterns():
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 3, 6, 6)
    scheme = QuantScheme(format="int8", granularity="channel", axis=0)
    recipe = Recipe(name="only-convs", keep_float=("conv_in",),
                    rules=(LayerRule(pattern="body.*", types=("Conv2d",), weight=scheme),))
    trtq.quantize(model, recipe)  # weight-only: no calibration needed
    assert type(model.conv_in) is nn.Conv2d and type(model.head) is nn.Linear
    assert isinstance(model.body[0], QuantConv2d) and model.body[0].input_quantizer is None


def test_static_recipe_without_calib_loop_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(TrtqError, match="calib_loop"):
        trtq.quantize(model, "w8a8-minmax")


def test_calibration_that_misses_layers_restores_the_float_model(tiny):
    model, x = tiny
    with pytest.raises(TrtqError, match="never reached"):
        trtq.quantize(model, "w8a8-minmax", lambda m: m.conv_in(x))
    assert type(model.conv_in) is nn.Conv2d and type(model.head) is nn.Linear
    assert not hasattr(model, "trtq_recipe")


def test_failing_calib_loop_restores_the_float_model(tiny):
    model, _ = tiny

    def boom(m):
        raise RuntimeError("user loop failed")

    with pytest.raises(RuntimeError):
        trtq.quantize(model, "w8a8-minmax", boom)
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())


def test_group_size_that_does_not_divide_is_a_clear_error_and_no_change(tiny):
    model, _ = tiny
    scheme = QuantScheme(format="int4", granularity="group", axis=1, group_size=5)
    recipe = Recipe(name="bad-groups", rules=(LayerRule(weight=scheme),))
    with pytest.raises(TrtqError, match="group size 5 does not divide"):
        trtq.quantize(model, recipe)
    assert type(model.conv_in) is nn.Conv2d


def test_quantizing_twice_is_refused(tiny):
    model, x = tiny
    trtq.quantize(model, "w8a8-minmax", lambda m: m(x))
    with pytest.raises(TrtqError, match="already quantized"):
        trtq.quantize(model, "w8a8-minmax", lambda m: m(x))


def test_recipe_that_matches_nothing(tiny):
    model, x = tiny
    recipe = Recipe(name="none", rules=(LayerRule(pattern="nope*", weight=QuantScheme()),))
    with pytest.raises(TrtqError, match="matched no"):
        trtq.quantize(model, recipe)


def test_recipes_are_listed_and_round_trip():
    names = trtq.list_recipes()
    assert {"w8a8-minmax", "w8a8-percentile"} <= set(names)
    for name in names:
        r = trtq.get_recipe(name)
        assert Recipe.from_dict(r.to_dict()) == r


def test_recipe_files(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: mine\nrules:\n  - weight: {format: int8, granularity: channel, axis: 0}\n")
    assert trtq.get_recipe(str(p)).rules[0].weight.axis == 0
    p.write_text("name: mine\nrules:\n  - weight: {format: int9}\n")
    with pytest.raises(TrtqError, match="unknown number format"):
        trtq.get_recipe(str(p))
    p.write_text("name: mine\nrulez: []\n")
    with pytest.raises(TrtqError, match="unknown recipe keys"):
        trtq.get_recipe(str(p))
    with pytest.raises(TrtqError, match="unknown recipe"):
        trtq.get_recipe("no-such-recipe")


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize("recipe", ["w8a8-minmax", "w8a8-percentile"])
def test_quantize_zoo_models(name, recipe):
    """Both zoo architectures: every Conv2d/Linear of the denoiser becomes quantized and calibrated."""
    torch.manual_seed(0)
    model = build_model(name)
    denoiser = copy.deepcopy(model.denoiser).eval()
    x = torch.randn(2, 1, model.sample_size, model.sample_size)
    labels = torch.tensor([3, model.num_classes])
    with torch.no_grad():
        ref = model.predict_noise(x, 500, labels)
    float_layers = [n for n, m in denoiser.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    trtq.quantize(denoiser, recipe, lambda d: model.predict_noise(x, 500, labels, denoiser=d))
    quantized = [n for n, m in denoiser.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert quantized == float_layers
    with torch.no_grad():
        out = model.predict_noise(x, 500, labels, denoiser=denoiser)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.2
