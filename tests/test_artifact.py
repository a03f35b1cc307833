"""Artifacts: round trip, refusal of foreign/newer artifacts, atomic writes, no pickle."""

import copy
import json

import pytest
import torch
from torch import nn

import trtq
from trtq import TrtqError
from trtq.artifact import FORMAT_VERSION, MANIFEST, SCALES, module_fingerprint
from trtq.io.fuzz import reseal
from trtq.nn import quantizers
from tiny_nets import ConvLinearNet


Net = ConvLinearNet


@pytest.fixture
def fp_and_quantized():
    torch.manual_seed(0)
    fp = Net().eval()
    x = torch.randn(3, 2, 5, 5)
    q = trtq.quantize(copy.deepcopy(fp), "w8a8-percentile", lambda m: m(x))
    return fp, q, x


def test_round_trip_gives_identical_outputs(tmp_path, fp_and_quantized):
    fp, q, x = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    loaded = trtq.load_artifact(copy.deepcopy(fp), tmp_path / "art")
    assert torch.equal(loaded(x), q(x))
    for (n1, q1), (n2, q2) in zip(quantizers(q), quantizers(loaded)):
        assert n1 == n2 and torch.equal(q1.scale, q2.scale) and q1.scheme == q2.scheme


def test_manifest_says_what_made_it(tmp_path, fp_and_quantized):
    fp, q, _ = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    m = trtq.read_manifest(tmp_path / "art")
    assert m["format_version"] == FORMAT_VERSION
    assert m["recipe"]["name"] == "w8a8-percentile"
    assert m["model"] == {"name": "net", "fingerprint": module_fingerprint(fp)}
    assert {"torch", "diffusers", "trtq", "python"} <= set(m["versions"])
    assert set(m["layers"]) == {"conv", "lin"}


def test_fingerprint_ignores_quantizers_but_not_weights(fp_and_quantized):
    fp, q, _ = fp_and_quantized
    assert module_fingerprint(q) == module_fingerprint(fp)
    other = copy.deepcopy(fp)
    with torch.no_grad():
        other.lin.bias[0] += 1e-3
    assert module_fingerprint(other) != module_fingerprint(fp)


def test_refuses_another_model(tmp_path, fp_and_quantized):
    fp, q, _ = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    other = copy.deepcopy(fp)
    with torch.no_grad():
        other.conv.weight.mul_(1.01)
    with pytest.raises(TrtqError, match="made for model 'net'"):
        trtq.load_artifact(other, tmp_path / "art")
    assert type(other.conv) is nn.Conv2d  # untouched


def test_refuses_newer_format(tmp_path, fp_and_quantized):
    fp, q, _ = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    mpath = tmp_path / "art" / MANIFEST
    m = json.loads(mpath.read_text())
    m["format_version"] = FORMAT_VERSION + 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(TrtqError, match="newer than this trtq reads"):
        trtq.load_artifact(copy.deepcopy(fp), tmp_path / "art")


def test_refuses_non_artifacts(tmp_path, fp_and_quantized):
    fp, q, _ = fp_and_quantized
    with pytest.raises(TrtqError, match="not a trtq artifact"):
        trtq.load_artifact(copy.deepcopy(fp), tmp_path)
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(TrtqError, match="refusing to overwrite"):
        trtq.save_artifact(q, tmp_path, model_name="net")
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_missing_scale_is_refused(tmp_path, fp_and_quantized):
    from safetensors.torch import load_file, save_file

    fp, q, _ = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    tensors = load_file(str(tmp_path / "art" / SCALES))
    tensors.pop("lin.input_quantizer.scale")
    save_file(tensors, str(tmp_path / "art" / SCALES), metadata={"format_version": str(FORMAT_VERSION)})
    reseal(tmp_path / "art")  # a deliberate edit: the sha256 is updated, so the layout check must catch it
    fresh = copy.deepcopy(fp)
    with pytest.raises(TrtqError, match="lacks lin.input_quantizer.scale"):
        trtq.load_artifact(fresh, tmp_path / "art")
    assert type(fresh.lin) is nn.Linear


def test_failed_write_keeps_the_previous_artifact(tmp_path, fp_and_quantized, monkeypatch):
    import trtq.artifact as art

    fp, q, _ = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    before = (tmp_path / "art" / MANIFEST).read_text()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(art, "save_file", crash)
    with pytest.raises(OSError):
        trtq.save_artifact(q, tmp_path / "art", model_name="net2")
    assert (tmp_path / "art" / MANIFEST).read_text() == before
    # no temp dirs left behind; the writers' lock file (empty, see trtq.io.atomic) stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art"]
    assert (tmp_path / ".art.lock").stat().st_size == 0


def test_artifact_holds_no_pickle(tmp_path, fp_and_quantized):
    _, q, _ = fp_and_quantized
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == [MANIFEST, SCALES]


def test_unquantized_model_cannot_be_saved(tmp_path):
    with pytest.raises(TrtqError, match="not quantized"):
        trtq.save_artifact(Net(), tmp_path / "art", model_name="net")
