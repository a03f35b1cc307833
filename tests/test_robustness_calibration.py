"""Calibration hygiene: NaN/Inf activations are refused naming the quantizer and the call (or skipped with a
warning when the recipe says `nonfinite: skip`); no scale comes out non-finite or as a silent placeholder."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

import trtq
from trtq import TrtqError
from trtq.nn import quantizers
from trtq.recipes import Recipe, get_recipe
from tiny_nets import ConvLinearNet


Net = ConvLinearNet


def batches(poison_call=None, value=float("nan")):
    torch.manual_seed(0)
    xs = [torch.randn(3, 2, 5, 5) for _ in range(3)]
    if poison_call is not None:
        xs[poison_call][0, 0, 2, 2] = value
    return xs


def loop(xs):
    def run(model):
        for x in xs:
            model(x)
    return run


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_activation_is_refused_naming_layer_and_call(value):
    model = Net()
    with pytest.raises(TrtqError, match=r"conv\.input_quantizer \(calibration call 1\) saw 1 NaN/Inf"):
        trtq.quantize(model, "w8a8-minmax", loop(batches(poison_call=1, value=value)))
    assert type(model.conv) is nn.Conv2d and type(model.lin) is nn.Linear  # left in float


def test_skip_leaves_the_poisoned_call_out_with_a_warning():
    recipe = dataclasses.replace(get_recipe("w8a8-minmax"), nonfinite="skip")
    xs, fp = batches(poison_call=1), Net()
    with pytest.warns(UserWarning, match=r"conv\.input_quantizer \(calibration call 1\).*left out"):
        q = trtq.quantize(copy.deepcopy(fp), recipe, loop(xs))
    clean = trtq.quantize(copy.deepcopy(fp), "w8a8-minmax", loop([xs[0], xs[2]]))  # same data without the bad call
    for (name, a), (_, b) in zip(quantizers(q), quantizers(clean)):
        assert torch.isfinite(a.scale).all() and torch.equal(a.scale, b.scale), name


def test_skip_with_every_call_poisoned_is_refused():
    recipe = dataclasses.replace(get_recipe("w8a8-minmax"), nonfinite="skip")
    xs = [torch.full((3, 2, 5, 5), float("nan")) for _ in range(2)]
    with pytest.warns(UserWarning), pytest.raises(TrtqError, match=r"conv\.input_quantizer: all 2 of its calibration"):
        trtq.quantize(Net(), recipe, loop(xs))


def test_activation_that_saw_only_zeros_is_refused():
    with pytest.raises(TrtqError, match=r"conv\.input_quantizer saw only zeros"):
        trtq.quantize(Net(), "w8a8-minmax", loop([torch.zeros(3, 2, 5, 5)]))


def test_nonfinite_weight_is_refused_naming_the_layer():
    model = Net()
    with torch.no_grad():
        model.lin.weight[1, 2] = float("nan")
    with pytest.raises(TrtqError, match=r"layer lin: .*weight quantizer.*NaN/Inf"):
        trtq.quantize(model, "w8a8-minmax", loop(batches()))


def test_all_zero_weight_row_keeps_its_exact_placeholder():
    model = Net()
    with torch.no_grad():
        model.lin.weight[0].zero_()
    q = trtq.quantize(model, "w8a8-minmax", loop(batches()))
    assert q.lin.weight_quantizer.scale[0].item() == 1.0 and torch.isfinite(q(batches()[0])).all()


def test_nonfinite_policy_is_recipe_data():
    r = dataclasses.replace(get_recipe("w8a8-minmax"), nonfinite="skip")
    assert Recipe.from_dict(r.to_dict()) == r
    assert "nonfinite" not in get_recipe("w8a8-minmax").to_dict()  # the default stays implicit
    with pytest.raises(TrtqError, match="nonfinite: expected one of"):
        Recipe.from_dict({**r.to_dict(), "nonfinite": "ignore"})


def test_clean_calibration_is_unchanged(tmp_path):
    """The checks cost nothing in results: same scales as before for clean data, artifact round trip exact."""
    fp = Net().eval()
    xs = batches()
    q = trtq.quantize(copy.deepcopy(fp), "w8a8-minmax", loop(xs))
    trtq.save_artifact(q, tmp_path / "a", model_name="net")
    loaded = trtq.load_artifact(copy.deepcopy(fp), tmp_path / "a")
    assert torch.equal(loaded(xs[0]), q(xs[0]))
