"""An ONNX export as the engine builder sees it: its manifest, read through a schema, and its files.

`trtq export` writes `model.onnx` (+ `model.onnx.data` over 2 GB) and `manifest.json` (kind `trtq-onnx`, see
docs/export.md). The builder needs from it: the input/output names, dtypes and symbolic shapes, the profiles
chosen at export, the plugin list, and what identifies the weights (model fingerprint, recipe, and the bytes
of the graph itself). Everything here is plain Python; nothing needs TensorRT.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.io.files import read_json
from trtq.io.validate import Any as AnyValue
from trtq.io.validate import Bool, Int, List, Map, Obj, Opt, Str, Union

MANIFEST = "manifest.json"
_DIM = Union(Int(0), Str(nonempty=True, max_len=64), desc="a dimension (an integer or a symbolic name)")
_SHAPE = List(_DIM, max_len=16)
_VALUE = Obj(required={"name": Str(nonempty=True), "dtype": Str(nonempty=True), "shape": _SHAPE}, extra=True,
             desc="a tensor spec")
_LEVELS = Obj(required={"min": List(Int(0), max_len=16), "opt": List(Int(0), max_len=16),
                        "max": List(Int(0), max_len=16)}, desc="min/opt/max shapes")
EXPORT_SCHEMA = Obj(
    required={
        "kind": Str(choices=("trtq-onnx",)),
        "model": Obj(required={"fingerprint": Str(nonempty=True)},
                     optional={"name": Opt(Str()), "class": Str(), "signature": Str()}, extra=True),
        "recipe": Opt(Obj(required={"name": Str(nonempty=True)}, extra=True, desc="a recipe")),
        "onnx": Obj(required={"file": Str(nonempty=True), "dtype": Str(nonempty=True)},
                    optional={"external_data": Opt(Str()), "dynamic": Bool(), "opset": Int(1),
                              "ir_version": Int(1), "strongly_typed": Bool()}, extra=True),
        "inputs": List(_VALUE, nonempty=True, max_len=64),
        "outputs": List(_VALUE, nonempty=True, max_len=64),
        "profiles": Map(_LEVELS, max_len=64),
        "plugins": List(Obj(required={"name": Str(nonempty=True), "namespace": Str(nonempty=True),
                                      "version": Str(nonempty=True)}, extra=True, desc="a plugin entry")),
    },
    optional={"artifact": Opt(Str()), "format_version": Int(1), "created": Str(), "export_seconds": AnyValue(),
              "versions": AnyValue(),
              "tensorrt": Obj(optional={"blockers": List(Str(), max_len=64)}, extra=True, desc="TensorRT support")},
    extra=True, name="export manifest")


@dataclass(frozen=True)
class OnnxExport:
    """An export directory, its manifest checked; `files` are the graph's files (model.onnx, external data)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["onnx"]["file"]

    @property
    def files(self) -> list[Path]:
        data = self.manifest["onnx"].get("external_data")
        return [self.onnx_path] + ([self.path / data] if data else [])

    @property
    def plugins(self) -> list[dict[str, Any]]:
        return list(self.manifest["plugins"])

    @property
    def recipe_name(self) -> str | None:
        recipe = self.manifest["recipe"]
        return None if recipe is None else str(recipe["name"])

    def sha256(self) -> str:
        """sha256 over the graph's files: the exported weights, codes and scales, whether they came from a
        saved artifact or a calibration run just now. This is the "artifact hash" of the engine cache key."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()


def read_export(path: str | Path) -> OnnxExport:
    """An export directory (or its model.onnx), with the manifest type-checked and the graph files present."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        path = path.parent
    if not path.is_dir():
        raise TrtqError(f"{path} is not an ONNX export directory (expected model.onnx + manifest.json from "
                        "`trtq export`)")
    manifest = read_json(path / MANIFEST, "export manifest", EXPORT_SCHEMA)
    export = OnnxExport(path, manifest)
    for f in export.files:
        if not f.is_file():
            raise TrtqError(f"export {path}: {f.name} is missing (the manifest lists it)")
    names = [v["name"] for v in manifest["inputs"]]
    if sorted(manifest["profiles"]) != sorted(names):
        raise TrtqError(f"export manifest {path / MANIFEST}: profiles cover {sorted(manifest['profiles'])}, "
                        f"the inputs are {sorted(names)}")
    return export


def check_graph(export: OnnxExport) -> None:
    """The ONNX checker (full: with shape inference) on the exported graph, as one TrtqError line."""
    import onnx

    try:  # by path: a graph with external data (> 2 GB) cannot be checked as an in-memory proto
        onnx.checker.check_model(str(export.onnx_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrtqError(f"{export.onnx_path} fails the ONNX checker: {first}") from None
