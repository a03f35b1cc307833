"""The deployable W8A8 recipes: SmoothQuant's smoothing is exact in float and helps where activations have
outlier channels, artifacts carry it, and dynamic recipes keep every image independent of its batch."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trtq import load_artifact, quantize, save_artifact
from trtq.errors import TrtqError
from trtq.methods.smoothquant import SmoothQuantLinear, smoothing_scale
from trtq.recipes import Recipe, get_recipe
from trtq.scheme import QuantScheme

W = QuantScheme(granularity="channel", axis=0)
OUTLIERS = [3, 17, 30]
A = QuantScheme()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _outlier_inputs(n=64, k=32, seed=0):
    """Activations with three outlier channels 60x louder than the rest (what LayerNorm outputs look like)."""
    x = torch.randn(n, 5, k, generator=_gen(seed))
    x[..., OUTLIERS] *= 60.0
    return x


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 8)
        with torch.no_grad():  # the outlier channels' weights are small, so every channel matters to the output
            self.fc1.weight[:, OUTLIERS] /= 60.0

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def _calib(data):
    def loop(model):
        for i in range(0, len(data), 16):
            model(data[i:i + 16])
    return loop


def test_smoothing_is_exact_in_float():
    lin = nn.Linear(32, 16)
    q = SmoothQuantLinear.from_float(copy.deepcopy(lin), W, A)
    q.set_smoothing(torch.rand(32, generator=_gen(1)) * 10 + 0.1)
    q.weight_quantizer.set_mode("off")
    q.input_quantizer.set_mode("off")
    x = _outlier_inputs(4)
    assert torch.allclose(q(x), lin(x), rtol=1e-5, atol=1e-4)
    assert torch.equal(q.weight, lin.weight)  # the float weight itself is never modified


def test_smoothing_scale_formula_and_dead_channels():
    act = torch.tensor([4.0, 0.0, 9.0])
    w = torch.tensor([[1.0, 2.0, 0.0], [-4.0, 1.0, 0.0]])
    s = smoothing_scale(act, w, 0.5)
    assert s[0].item() == pytest.approx(4.0 ** 0.5 / 4.0 ** 0.5)
    assert s[1].item() == 1.0 and s[2].item() == 1.0  # zero activation / zero weight column: left alone


def test_smoothquant_beats_minmax_on_outlier_channels():
    data = _outlier_inputs(64, seed=2)
    test = _outlier_inputs(16, seed=3)
    model = _Tiny().eval()
    with torch.no_grad():
        ref = model(test)
    sq = quantize(copy.deepcopy(model), "w8a8-smoothquant", _calib(data))
    mm = quantize(copy.deepcopy(model), "w8a8-minmax", _calib(data))
    assert isinstance(sq.fc1, SmoothQuantLinear) and sq.trtq_smoothquant_alphas["fc1"] is not None
    with torch.no_grad():
        err_sq, err_mm = (sq(test) - ref).pow(2).mean(), (mm(test) - ref).pow(2).mean()
    assert err_sq < 0.5 * err_mm


def test_smoothquant_alpha_from_recipe_and_bad_args():
    base = get_recipe("w8a8-smoothquant").to_dict()
    fixed = Recipe.from_dict({**base, "method_args": {"alpha": 0.5}})
    data = _outlier_inputs(32, seed=4)
    model = quantize(_Tiny().eval(), fixed, _calib(data))
    assert set(model.trtq_smoothquant_alphas.values()) == {0.5}
    with pytest.raises(TrtqError, match="alpha"):
        quantize(_Tiny().eval(), Recipe.from_dict({**base, "method_args": {"alpha": 2}}), _calib(data))
    with pytest.raises(TrtqError, match="static symmetric per-tensor"):
        Recipe.from_dict({**base, "rules": [{"types": ["Linear"], "layer": "smooth", "weight": W.to_dict(),
                                             "input": {"granularity": "token", "dynamic": True}}]})


def test_smoothquant_artifact_round_trip(tmp_path):
    data = _outlier_inputs(32, seed=5)
    model = quantize(_Tiny().eval(), "w8a8-smoothquant", _calib(data))
    save_artifact(model, tmp_path / "art", model_name="tiny")
    loaded = load_artifact(_Tiny().eval(), tmp_path / "art")
    assert not torch.all(loaded.fc1.smooth_scale == 1)
    x = _outlier_inputs(4, seed=6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class _Timed(nn.Module):
    """_Tiny with a timestep argument whose value scales the input (ranges that move with t, as adaLN's do)."""

    def __init__(self):
        super().__init__()
        self.net = _Tiny()

    def forward(self, x, timestep):
        return self.net(x * (1 + timestep.reshape(-1, 1, 1) / 250))


def _timed_calib(data, steps=(999, 500, 1)):
    def loop(model):
        for i, t in enumerate(steps):
            batch = data[16 * i:16 * (i + 1)]
            model(batch, torch.full((len(batch),), float(t)))
    return loop


def test_smoothquant_per_timestep_tables(tmp_path):
    """per_timestep: every smoothed Linear gets one scale per calibrated timestep, the scales follow each step's
    range, an uncalibrated step is refused, and an artifact brings the tables back bit for bit."""
    from trtq.nn.timestep import TimestepTensorQuantizer, table_quantizers

    data = _outlier_inputs(48, seed=8)
    model = quantize(_Timed().eval(), "w8a8-smoothquant-timestep", _timed_calib(data))
    tables = dict(table_quantizers(model))
    assert sorted(n.rpartition(".")[0] for n in tables) == ["net.fc1", "net.fc2"]
    fc1 = model.net.fc1.input_quantizer
    assert isinstance(fc1, TimestepTensorQuantizer) and fc1.timesteps.tolist() == [1.0, 500.0, 999.0]
    # The inputs at t=999 are ~4.4x those at t=1 (after the same smoothing): so is the scale.
    assert fc1.scale[2] / fc1.scale[0] > 3
    x, t = _outlier_inputs(4, seed=9), torch.full((4,), 500.0)
    with pytest.raises(TrtqError, match="250 were not calibrated"):
        model(x, torch.full((4,), 250.0))
    save_artifact(model, tmp_path / "art", model_name="tiny")
    loaded = load_artifact(_Timed().eval(), tmp_path / "art")
    assert torch.equal(loaded.net.fc1.input_quantizer.scale, fc1.scale)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    # One table scale per step beats one scale for every step on inputs whose range moves with t.
    static = quantize(_Timed().eval(), "w8a8-smoothquant", _timed_calib(data))
    float_model = _Timed().eval()
    test = _outlier_inputs(16, seed=10)
    with torch.no_grad():
        t1 = torch.full((16,), 1.0)
        ref = float_model(test, t1)
        assert (model(test, t1) - ref).pow(2).mean() < 0.5 * (static(test, t1) - ref).pow(2).mean()


def test_failed_per_timestep_quantization_leaves_no_router():
    """The method installs the timestep router before calibration; a calibration that fails must take it off
    the float model again (with the float layers)."""
    data = _outlier_inputs(48, seed=8)
    calls = []

    def loop(model):
        calls.append(1)
        if len(calls) == 2:  # the method's pass succeeds; the calibration pass fails
            raise RuntimeError("calibration data went away")
        _timed_calib(data)(model)

    model = _Timed().eval()
    with pytest.raises(RuntimeError, match="went away"):
        quantize(model, "w8a8-smoothquant-timestep", loop)
    assert isinstance(model.net.fc1, nn.Linear) and not isinstance(model.net.fc1, SmoothQuantLinear)
    assert "trtq_timestep_router" not in model.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_smoothquant_per_timestep_bad_args():
    base = get_recipe("w8a8-smoothquant-timestep").to_dict()
    data = _outlier_inputs(48, seed=8)
    for bad, match in (({"per_timestep": "yes"}, "per_timestep"), ({"on_unknown": "guess"}, "on_unknown")):
        with pytest.raises(TrtqError, match=match):
            quantize(_Timed().eval(), Recipe.from_dict({**base, "method_args": {**base["method_args"], **bad}}),
                     _timed_calib(data))


@pytest.mark.parametrize("recipe", ["w8a8-dynamic", "w8a8-fp8", "w8a8-smoothquant", "w8a8-smoothquant-timestep"])
def test_recipes_keep_nothing_float(recipe):
    r = get_recipe(recipe)
    assert r.keep_float == ()
    assert all(rule.weight is not None and rule.input is not None for rule in r.rules)


def test_w8a8_dynamic_dit_image_independent_of_its_batch():
    """With dynamic activations, an image's noise prediction is the same alone and in a CFG-style batch of 4."""
    from trtq.zoo import load_model

    model = load_model("digits-dit")
    # float64: the float GEMMs of another batch size may sum in another order, and in float32 that moves
    # values across INT8 rounding ties; in float64 the only way an image could change is the scales.
    model.denoiser.double()
    q = quantize(copy.deepcopy(model.denoiser).eval(), "w8a8-dynamic")
    x = torch.randn(4, 1, 32, 32, generator=_gen(7), dtype=torch.float64)
    x[1] *= 8.0  # one loud sample: batch-wide scales would coarsen the others
    labels = torch.tensor([3, 10, 5, 10])
    t = torch.tensor(500)
    with torch.no_grad():
        batch = model.predict_noise(x, t, labels, denoiser=q)
        for i in range(4):
            alone = model.predict_noise(x[i:i + 1], t, labels[i:i + 1], denoiser=q)
            assert torch.equal(alone, batch[i:i + 1])
