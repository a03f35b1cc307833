"""Artifacts: calibrated scales on disk, saying what made them.

An artifact is a directory:
    manifest.json        format version, recipe, model name + fingerprint, library versions, layer list
    scales.safetensors   every quantizer buffer, keyed "<layer>.<weight|input>_quantizer.<scale|zero_point>"
Only JSON and safetensors are read back (no pickle). Writes go to a temporary sibling directory that is
renamed into place, so a crash never leaves a half-written artifact where a good one was expected.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trtq.errors import TrtqError
from trtq.nn import TensorQuantizer, is_quantized, quantizers
from trtq.nn.timestep import route_timesteps
from trtq.recipes import Recipe
from trtq.scheme import QuantScheme

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCALES = "scales.safetensors"


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over the parameters (names, shapes, dtypes, bytes). Quantizer buffers are not parameters, so a
    quantized model has the fingerprint of the float model it came from."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import diffusers

    from trtq import __version__

    v = {"trtq": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
         "python": platform.python_version()}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        v["gpu_arch"] = f"sm_{major}{minor}"
    return v


def save_artifact(model: nn.Module, path: str | Path, model_name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write the calibrated scales of a quantized model (from `trtq.quantize`) to directory `path`."""
    recipe: Recipe | None = getattr(model, "trtq_recipe", None)
    if recipe is None:
        raise TrtqError("this model was not quantized with trtq.quantize: nothing to save")
    tensors, layers = {}, {}
    for layer_name, layer in model.named_modules():
        if not is_quantized(layer):
            continue
        entry = {"class": type(layer).__name__, "config": layer.artifact_config()}
        for qname, q in layer.named_modules():
            if isinstance(q, TensorQuantizer):
                if not q.calibrated:
                    raise TrtqError(f"quantizer {layer_name}.{qname} has no scales yet: calibrate before saving")
                entry[qname] = q.scheme.to_dict()
        # Every buffer of a quantized layer is trtq state (scales, learned transform scales, rotations...).
        for bname, buf in layer.named_buffers():
            tensors[f"{layer_name}.{bname}"] = buf.detach().cpu().contiguous()
        layers[layer_name] = entry
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "trtq-artifact",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_name, "fingerprint": module_fingerprint(model)},
        "recipe": recipe.to_dict(),
        "versions": _versions(),
        "layers": layers,
        **({"extra": extra} if extra else {}),
    }
    return _atomic_write_dir(Path(path), manifest, tensors)


def _atomic_write_dir(path: Path, manifest: dict, tensors: dict[str, torch.Tensor]) -> Path:
    if path.exists() and not (path / MANIFEST).is_file():
        raise TrtqError(f"{path} exists and is not a trtq artifact; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / SCALES), metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise TrtqError(f"{path} is not a trtq artifact (no {MANIFEST})") from None
    except ValueError as e:
        raise TrtqError(f"{path / MANIFEST} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "trtq-artifact":
        raise TrtqError(f"{path} is not a trtq artifact")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TrtqError(f"artifact {path} has format version {version}, newer than this trtq reads "
                        f"({FORMAT_VERSION}); upgrade trtq")
    return manifest


def check_artifact(path: str | Path, model: nn.Module, model_name: str | None = None) -> dict[str, Any]:
    """The manifest of artifact `path`, after checking that it was made for exactly this model's weights."""
    manifest = read_manifest(path)
    made_for = manifest["model"]
    fingerprint = module_fingerprint(model)
    if made_for["fingerprint"] != fingerprint:
        mine = f" ({model_name})" if model_name else ""
        raise TrtqError(f"artifact {path} was made for model {made_for['name']!r} "
                        f"(fingerprint {made_for['fingerprint'][:12]}), not this model{mine} "
                        f"(fingerprint {fingerprint[:12]})")
    return manifest


def load_artifact(model: nn.Module, path: str | Path, model_name: str | None = None) -> nn.Module:
    """Quantize a float `model` in place with the scales of artifact `path`. Refuses a foreign artifact."""
    from trtq.quantize import prepare, restore

    path = Path(path)
    manifest = check_artifact(path, model, model_name)
    try:
        tensors = load_file(str(path / SCALES))
    except (OSError, Exception) as e:  # safetensors raises its own error types for corrupt files
        raise TrtqError(f"cannot read {path / SCALES}: {e}") from None
    recipe = Recipe.from_dict(manifest["recipe"])
    originals = prepare(model, recipe)
    try:
        _load_scales(model, manifest["layers"], tensors, path)
        route_timesteps(model)  # per-timestep scale tables read each call's timestep (no-op without tables)
    except BaseException:
        restore(model, originals)
        raise
    return model


def _load_scales(model: nn.Module, layers: dict, tensors: dict[str, torch.Tensor], path: Path) -> None:
    quantized = {n: m for n, m in model.named_modules() if is_quantized(m)}
    if set(quantized) != set(layers):
        diff = sorted(set(quantized) ^ set(layers))
        raise TrtqError(f"artifact {path} and its recipe disagree on which layers are quantized: {diff[:3]}")
    for name, layer in quantized.items():
        entry = layers[name]
        layer.load_artifact_config(entry.get("config", {}))
        for qname, q in list(layer.named_modules()):
            if isinstance(q, TensorQuantizer) and qname in entry:
                scheme = QuantScheme.from_dict(entry[qname])
                if scheme != q.scheme:  # a method chose this layer's scheme from data (e.g. its FP4 format)
                    layer.set_submodule(qname, TensorQuantizer(scheme, q.role))
    owners = {}
    for name, layer in quantized.items():
        for mname, mod in layer.named_modules():
            for bname in mod._buffers:
                owners[f"{name}.{mname}.{bname}" if mname else f"{name}.{bname}"] = (mod, bname)
    unknown = sorted(set(tensors) - set(owners))
    if unknown:
        raise TrtqError(f"artifact {path} has tensors this model has no place for: {unknown[:3]}")
    for key, tensor in tensors.items():
        mod, bname = owners[key]
        setattr(mod, bname, tensor)
    for name, q in quantizers(model):
        q.observer = None
        if not q.calibrated:
            raise TrtqError(f"artifact {path} lacks {name}.scale")
        q.mode = "quantize"
