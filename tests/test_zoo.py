"""Fast checks of the zoo: data, model bundles (random init), save/load, fingerprints, classifier shapes."""

import json

import pytest
import torch

from trtq.errors import TrtqError
from trtq.zoo import ZOO_MODELS, DigitsClassifier, build_model, load_digits_images, load_model, split_digits
from trtq.zoo.classifier import CLASSIFIER_WEIGHTS, load_classifier
from trtq.zoo.models import WEIGHTS_DIR


@pytest.fixture(scope="module")
def digits():
    return load_digits_images(32)


@pytest.fixture(scope="module", params=ZOO_MODELS)
def model(request):
    torch.manual_seed(0)
    m = build_model(request.param)
    m.denoiser.eval()
    return m


def test_digits_shape_range(digits):
    x, y = digits
    assert x.shape == (1797, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert set(y.tolist()) == set(range(10))


def test_split_deterministic(digits):
    a = split_digits(*digits, test_fraction=0.2, seed=0)
    b = split_digits(*digits, test_fraction=0.2, seed=0)
    c = split_digits(*digits, test_fraction=0.2, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert len(a[0]) + len(a[2]) == 1797 and len(a[2]) == round(1797 * 0.2)


def test_predict_noise_shapes(model):
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        eps = model.predict_noise(x, 500, torch.tensor([3, model.num_classes]))
        eps_t = model.predict_noise(x, torch.tensor(500), model.null_labels(2))
    assert eps.shape == x.shape and eps_t.shape == x.shape
    assert model.null_labels(2).tolist() == [10, 10]
    assert (model.label_encoder is not None) == (model.kind == "unet")


def test_scheduler_config_builds(model):
    from diffusers import DDPMScheduler

    s = DDPMScheduler.from_config(model.scheduler_config)
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"


def test_save_load_round_trip(model, tmp_path):
    model.save(tmp_path / "m")
    model.save(tmp_path / "m")  # overwriting an existing model directory must work too
    loaded = load_model(tmp_path / "m")
    assert loaded.kind == model.kind and loaded.fingerprint() == model.fingerprint()
    assert (tmp_path / "m" / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    meta = json.loads((tmp_path / "m" / "trtq_model.json").read_text())
    assert meta["name"] == model.name and meta["num_classes"] == 10
    x, labels = torch.randn(2, 1, 32, 32), torch.tensor([1, 10])
    with torch.no_grad():
        assert torch.equal(model.predict_noise(x, 10, labels), loaded.predict_noise(x, 10, labels))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dirs left behind


def test_fingerprint_tracks_weights(model):
    before = model.fingerprint()
    p = next(model.denoiser.parameters())
    with torch.no_grad():
        p.view(-1)[0] += 1.0
    try:
        assert model.fingerprint() != before
    finally:
        with torch.no_grad():
            p.view(-1)[0] -= 1.0


def test_unknown_model_names_the_zoo():
    with pytest.raises(TrtqError) as e:
        load_model("no-such-model")
    assert all(name in str(e.value) for name in ZOO_MODELS)
    with pytest.raises(TrtqError):
        build_model("no-such-model")


def test_classifier_shapes():
    c = DigitsClassifier().eval()
    x = torch.randn(3, 1, 32, 32)
    assert c.features(x).shape == (3, 64) and c(x).shape == (3, 10)


def test_trained_classifier_is_accurate(digits):
    if not CLASSIFIER_WEIGHTS.is_file():
        pytest.skip("zoo weights not trained: run make train-zoo")
    c = load_classifier()
    _, _, test_x, test_y = split_digits(*digits)
    with torch.no_grad():
        acc = (c(test_x).argmax(1) == test_y).double().mean().item()
    assert acc >= 0.97


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_trained_zoo_model_loads(name):
    if not (WEIGHTS_DIR / name / "trtq_model.json").is_file():
        pytest.skip("zoo weights not trained: run make train-zoo")
    m = load_model(name)
    assert m.name == name and not m.denoiser.training
    with torch.no_grad():
        assert m.predict_noise(torch.randn(2, 1, 32, 32), 999, torch.tensor([0, 10])).shape == (2, 1, 32, 32)
