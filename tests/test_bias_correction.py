"""Empirical bias correction (`trtq.bias_correction`, recipe key `bias_correction`): the stored correction
removes each layer's mean output error on the calibration data, never touches the float model, travels in
artifacts, and every deployment form (ONNX export, the torch backend's INT8 GEMM) adds it."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trtq import load_artifact, quantize, save_artifact
from trtq.artifact import module_fingerprint
from trtq.errors import TrtqError
from trtq.recipes import Recipe, get_recipe


class _Net(nn.Module):
    """A linear after SiLU (a mostly positive input: weight rounding errors then have a mean) and a conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.silu(self.conv(x)).mean((2, 3))
        return self.fc(F.silu(h) * 4)


def _data(n=64, seed=1):
    return torch.randn(n, 4, 6, 6, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _calib(data):
    def loop(model):
        for i in range(0, len(data), 16):
            model(data[i:i + 16])
    return loop


def _recipe(bias_correction=True, base="w8a8-minmax", **weight):
    d = get_recipe(base).to_dict()
    d["rules"] = [{**r, "weight": {**r["weight"], **weight}} for r in d["rules"]]
    return Recipe.from_dict({**d, "name": "bc", "bias_correction": bias_correction})


def _layer_errors(model, data):
    """Per layer, the mean (over the data) of y_q − y_float per output channel, on the model's own inputs."""
    errs, hooks = {}, []
    for name in ("conv", "fc"):
        layer = model.get_submodule(name)

        def hook(mod, args, out, name=name):
            x = args[0]
            ref = (mod._conv_forward(x, mod.weight, mod.bias) if isinstance(mod, nn.Conv2d)
                   else F.linear(x, mod.weight, mod.bias))
            d = out - ref
            d = d.transpose(0, 1).reshape(d.shape[1], -1) if d.dim() == 4 else d.T
            errs.setdefault(name, []).append(d)
        hooks.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        _calib(data)(model)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v, 1).double().mean(1) for n, v in errs.items()}


def test_correction_removes_the_mean_output_error_and_keeps_the_float_model():
    data = _data()
    # 4-bit weights: a mean error large enough to see well above float32 summation noise
    plain = quantize(_Net().eval(), _recipe(False, format="int4"), _calib(data))
    corrected = quantize(_Net().eval(), _recipe(True, format="int4"), _calib(data))
    before, after = _layer_errors(plain, data), _layer_errors(corrected, data)
    assert before["conv"].abs().max() > 1e-2 and before["fc"].abs().max() > 1e-2
    # The first quantized layer sees the same inputs as when it was measured: its mean error is gone up to
    # float32 summation noise.
    assert after["conv"].abs().max() < 1e-5 * before["conv"].abs().max().clamp_min(1) + 1e-6
    # One pass measures every layer on uncorrected upstream outputs: downstream, the upstream correction moves
    # the input a little, so what is left is small, not zero.
    assert after["fc"].abs().max() < 0.2 * before["fc"].abs().max()
    assert torch.equal(corrected.fc.bias, _Net().fc.bias)  # the float bias Parameter never changes
    assert module_fingerprint(corrected) == module_fingerprint(_Net())


def test_artifact_round_trip_and_old_artifacts(tmp_path):
    data = _data()
    model = quantize(_Net().eval(), _recipe(True, format="int4"), _calib(data))
    assert model.fc.bias_correction is not None
    save_artifact(model, tmp_path / "bc", model_name="net")
    loaded = load_artifact(_Net().eval(), tmp_path / "bc")
    x = _data(4, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # An artifact without the key (a recipe without bias correction) loads with no correction.
    plain = quantize(_Net().eval(), _recipe(False, format="int4"), _calib(data))
    save_artifact(plain, tmp_path / "plain", model_name="net")
    assert load_artifact(_Net().eval(), tmp_path / "plain").fc.bias_correction is None


def test_bias_correction_needs_calibration_data_and_a_boolean():
    with pytest.raises(TrtqError, match="bias correction: pass calib_loop"):
        quantize(_Net().eval(), _recipe(True, base="w8a8-dynamic"))
    with pytest.raises(TrtqError, match="bias_correction"):
        Recipe.from_dict({**get_recipe("w8a8-minmax").to_dict(), "bias_correction": "yes"})
    assert "bias_correction" not in get_recipe("w8a8-minmax").to_dict()  # existing manifests unchanged
    assert get_recipe("w8a8-smoothquant-bc").bias_correction


def test_smoothquant_bc_recipe_corrects_smoothed_linears():
    from trtq.methods.smoothquant import SmoothQuantLinear

    data = _data()
    model = quantize(_Net().eval(), "w8a8-smoothquant-bc", _calib(data))
    assert isinstance(model.fc, SmoothQuantLinear) and model.fc.bias_correction is not None
    x = _data(4, seed=3)
    with torch.no_grad():
        y = model(x)
        model.fc.bias_correction = None
        assert not torch.equal(model(x), y)  # the smooth layer's forward adds it


def test_deployment_forms_add_the_correction(tmp_path):
    """The ONNX twin of a corrected layer and the torch backend's INT8 GEMM compute what the layer computes."""
    pytest.importorskip("onnxruntime")
    from trtq.export import lower
    from trtq.runtime.lower import int8_gemm_form

    sys.path.insert(0, str(Path(__file__).parent))
    from test_export import _layer_graph, _session_from

    model = quantize(_Net().eval(), _recipe(True), _calib(_data()))
    low = lower(copy.deepcopy(model))
    x = torch.randn(5, 8) * 3
    proto = _layer_graph(low.get_submodule("fc"), x, tmp_path / "fc.onnx")
    got = _session_from(proto).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model.fc(x)
        assert float((torch.from_numpy(got) - want).abs().max()) < 1e-5
        form = int8_gemm_form(model.fc)
        assert form is not None  # a correction does not stop the INT8 GEMM lowering
        assert float((form(x) - want).abs().max()) < 1e-4
        model.fc.bias_correction = None
        assert float((form(x) - model.fc(x)).abs().max()) > 1e-4  # ...and the GEMM really adds it
