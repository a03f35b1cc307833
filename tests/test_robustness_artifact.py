"""Loading refuses what does not fit, one TrtqError line naming the file, the key and what was expected, and
leaves the model in float. Each case here is one the issue found accepted or crashing before."""

import copy
import json
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import trtq
from trtq import TrtqError
from trtq.artifact import FORMAT_VERSION, MANIFEST, SCALES
from trtq.io.fuzz import replace_with_oddity, reseal
from tiny_nets import ConvLinearNet


Net = ConvLinearNet


@pytest.fixture
def art(tmp_path):
    torch.manual_seed(0)
    fp = Net().eval()
    x = torch.randn(3, 2, 5, 5)
    q = trtq.quantize(copy.deepcopy(fp), "w8a8-minmax", lambda m: m(x))
    trtq.save_artifact(q, tmp_path / "art", model_name="net")
    return fp, tmp_path / "art"


def refused(fp, path, match):
    model = copy.deepcopy(fp)
    with pytest.raises(TrtqError, match=match) as e:
        trtq.load_artifact(model, path)
    assert "\n" not in str(e.value)
    assert type(model.conv) is nn.Conv2d and type(model.lin) is nn.Linear  # left in float
    return str(e.value)


def edit_tensors(path, fn, metadata=True):
    tensors = load_file(str(path / SCALES))
    fn(tensors)
    save_file(tensors, str(path / SCALES), metadata={"format_version": str(FORMAT_VERSION)} if metadata else None)
    reseal(path)


def edit_manifest(path, fn):
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("value,match", [(float("nan"), "NaN or Inf"), (float("inf"), "NaN or Inf"),
                                         (0.0, "expected scales > 0"), (-0.01, "expected scales > 0"),
                                         (1e30, "plausible range")])
def test_bad_activation_scale_values(art, value, match):
    fp, path = art
    edit_tensors(path, lambda t: t.__setitem__("lin.input_quantizer.scale", torch.tensor(value)))
    msg = refused(fp, path, match)
    assert "lin.input_quantizer.scale" in msg and SCALES in msg


@pytest.mark.parametrize("factor", [0.0, 1e-4, 1e3])
def test_weight_scales_must_fit_the_weights(art, factor):
    fp, path = art
    edit_tensors(path, lambda t: t["conv.weight_quantizer.scale"].mul_(factor))
    refused(fp, path, "conv.weight_quantizer.scale holds")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float64, torch.float16])
def test_scale_dtype_must_match(art, dtype):
    fp, path = art
    edit_tensors(path, lambda t: t.__setitem__("lin.input_quantizer.scale", t["lin.input_quantizer.scale"].to(dtype)))
    refused(fp, path, "lin.input_quantizer.scale is .*, expected F32")


def test_scale_shape_is_checked_at_load(art):
    fp, path = art
    edit_tensors(path, lambda t: t.__setitem__("conv.weight_quantizer.scale", t["conv.weight_quantizer.scale"].reshape(-1)))
    refused(fp, path, r"conv.weight_quantizer.scale has shape \[4\], expected shape \[4, 1, 1, 1\]")


def test_extra_zero_point_for_a_symmetric_quantizer(art):
    fp, path = art
    edit_tensors(path, lambda t: t.__setitem__("lin.input_quantizer.zero_point", torch.tensor(3.0)))
    refused(fp, path, "has tensors this model has no place for: \\['lin.input_quantizer.zero_point'\\]")


def test_missing_weight_scales_are_not_recomputed(art):
    fp, path = art
    edit_tensors(path, lambda t: [t.pop(k) for k in list(t) if "weight_quantizer" in k])
    refused(fp, path, r"lacks conv.weight_quantizer.scale and 1 more \(nothing is recomputed")


def test_safetensors_metadata_version_is_checked(art):
    fp, path = art
    edit_tensors(path, lambda t: None, metadata=False)
    refused(fp, path, "metadata format_version is None, expected '2'")


def test_unsealed_edit_is_refused(art):
    fp, path = art
    tensors = load_file(str(path / SCALES))
    tensors["lin.input_quantizer.scale"] *= 1.001
    save_file(tensors, str(path / SCALES), metadata={"format_version": str(FORMAT_VERSION)})
    refused(fp, path, "does not match the sha256 its manifest records")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["recipe"]["rules"][0]["input"].__setitem__("dynamic", "false"),
     r"recipe.rules\[0\].input.dynamic: expected true or false, got the string 'false'"),
    (lambda m: m["recipe"].__setitem__("keep_float", 5), "recipe.keep_float: expected"),
    (lambda m: m["recipe"]["rules"][0].__setitem__("types", 5), r"recipe.rules\[0\].types: expected"),
    (lambda m: m["recipe"]["rules"].__setitem__(0, [[1]]), r"recipe.rules\[0\]: expected a rule mapping"),
    (lambda m: m.__setitem__("layers", []), "layers: expected a mapping"),
    (lambda m: m["layers"].__setitem__("conv", 5), "layers.conv: expected a layer entry mapping"),
    (lambda m: m["layers"]["conv"].__setitem__("config", None), "layers.conv.config: expected"),
    (lambda m: m["layers"]["conv"].pop("input_quantizer"), "layers.conv.input_quantizer: missing"),
    (lambda m: m["layers"]["conv"]["weight_quantizer"].__setitem__("axis", 1), "which its recipe cannot make"),
    (lambda m: m["recipe"]["rules"][0]["weight"].__setitem__("axis", 7), "axis 7 is out of range"),
    (lambda m: m["layers"]["conv"]["weight_quantizer"].__setitem__("format", "int4"), "which its recipe cannot make"),
    (lambda m: m.__setitem__("model", "net"), "model: expected a model mapping"),
    (lambda m: m["model"].__setitem__("fingerprint", 5), "model.fingerprint: expected"),
    (lambda m: m.__setitem__("format_version", "2"), "format_version: expected an integer"),
    (lambda m: m.pop("scales"), "scales: missing"),
])
def test_manifest_fields_are_type_checked(art, edit, match):
    fp, path = art
    edit_manifest(path, edit)
    msg = refused(fp, path, match)
    assert str(path / MANIFEST) in msg


def test_deeply_nested_manifest(art):
    fp, path = art
    (path / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    refused(fp, path, "nests deeper than")


@pytest.mark.parametrize("oddity", ["dir", "fifo", "loop", "empty"])
def test_filesystem_oddities_instead_of_files(art, oddity):
    fp, path = art
    for name in (MANIFEST, SCALES):
        target = path / name
        saved = target.read_bytes()
        replace_with_oddity(target, oddity)
        done = threading.Event()
        result = {}

        def load():
            try:
                refused(fp, path, "is a directory, expected a regular file|is a FIFO, expected|symlink loop|not valid JSON|sha256")
                result["ok"] = True
            finally:
                done.set()

        threading.Thread(target=load, daemon=True).start()
        assert done.wait(20), f"{oddity} in place of {name} hangs the loader"
        assert result.get("ok"), oddity
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        else:
            target.unlink()
        target.write_bytes(saved)


def test_artifact_path_that_is_a_file_or_a_loop(art, tmp_path):
    fp, _ = art
    (tmp_path / "file").write_text("{}")
    refused(fp, tmp_path / "file", "is a file, not an artifact directory")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(fp, tmp_path / "loop", "not a trtq artifact")


def test_valid_artifact_still_loads_bit_exact(art):
    fp, path = art
    x = torch.randn(2, 2, 5, 5)
    a = trtq.load_artifact(copy.deepcopy(fp), path)(x)
    b = trtq.load_artifact(copy.deepcopy(fp), path)(x)
    assert torch.equal(a, b)
