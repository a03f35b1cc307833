"""The engine cache: what an engine is keyed by, where it lives, its manifest, and the refusal of stale ones.

    engines/
      <model>-<recipe>-<digest>/        one built engine (written whole by `trtq.io.atomic.atomic_dir`)
        engine.plan                     TensorRT's serialized engine
        model.onnx (+ model.onnx.data)  the graph it was built from
        manifest.json                   kind `trtq-engine`: every key component, I/O specs, plan sha256
      .<dir>.lock                       the per-engine lock two builders of one key take turns on
      timing-trt<version>-sm<cc>.cache  TensorRT's timing cache, shared by builds for one TensorRT and GPU

The digest is a sha256 over the key's components: model fingerprint, recipe name, artifact hash (the exported
graph's bytes), optimization profile, builder options, TensorRT version, GPU compute capability and plugins'
version. An engine is only valid for the TensorRT that built it and the GPU architecture it was tuned on;
`check_engine` refuses one that was built for another (one line naming the field), and the digest, recomputed
from the manifest, must match the directory name, so an edited manifest is refused as well.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.io.files import read_json
from trtq.io.validate import Any as AnyValue
from trtq.io.validate import Int, List, Map, Obj, Opt, Str

FORMAT_VERSION = 1
KIND = "trtq-engine"
MANIFEST = "manifest.json"
PLAN = "engine.plan"
_HEX64 = Str(nonempty=True, max_len=64)


@dataclass(frozen=True)
class Target:
    """What an engine is specific to: the TensorRT that builds/runs it and the GPU's compute capability
    ("9.0"). The GPU's name is recorded in the manifest, not keyed: TensorRT tunes per architecture."""

    tensorrt_version: str
    compute_capability: str
    gpu_name: str = ""


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings that change the engine (so they are part of the key).
    optimization_level: TensorRT's builder optimization level 0-5 (3 is TensorRT's default; higher tries more
    tactics and takes longer)."""

    optimization_level: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.optimization_level, bool) or not isinstance(self.optimization_level, int) \
                or not 0 <= self.optimization_level <= 5:
            raise TrtqError(f"builder optimization level must be an integer in [0, 5], got {self.optimization_level!r}")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. `dirname` = readable prefix + 16 hex digits of the digest."""

    model_fingerprint: str
    recipe: str | None
    artifact_sha256: str
    profile: dict[str, Any]  # profile_to_dict(...): per input min/opt/max and symbolic shape
    tensorrt_version: str
    compute_capability: str
    plugins_version: str | None  # None when the graph has no plugin nodes
    options: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None  # only in the directory name (the fingerprint identifies the weights)

    def components(self) -> dict[str, Any]:
        c = asdict(self)
        c.pop("model_name")
        return c

    def digest(self) -> str:
        return _digest(self.components())

    @property
    def dirname(self) -> str:
        return f"{_slug(self.model_name or 'model')}-{_slug(self.recipe or 'float')}-{self.digest()[:16]}"


def _digest(components: dict[str, Any]) -> str:
    text = json.dumps(components, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._")[:40] or "x"


def timing_cache_path(cache_dir: str | Path, target: Target) -> Path:
    """One timing cache per TensorRT version and GPU architecture (TensorRT refuses a foreign one anyway)."""
    return Path(cache_dir) / f"timing-trt{_slug(target.tensorrt_version)}-sm{target.compute_capability.replace('.', '')}.cache"


# ------------------------------------------------------------------------------------------ the manifest
_COMPONENTS = Obj(required={"model_fingerprint": Str(nonempty=True), "recipe": Opt(Str()),
                            "artifact_sha256": _HEX64, "profile": Map(AnyValue(), max_len=64),
                            "tensorrt_version": Str(nonempty=True), "compute_capability": Str(nonempty=True),
                            "plugins_version": Opt(Str()), "options": Map(AnyValue(), max_len=64)},
                  desc="the key components")
MANIFEST_SCHEMA = Obj(
    required={"format_version": Int(1, FORMAT_VERSION), "kind": Str((KIND,)), "key": Str(nonempty=True),
              "components": _COMPONENTS,
              "engine": Obj(required={"file": Str(nonempty=True), "sha256": _HEX64, "bytes": Int(1)},
                            desc="the engine file entry"),
              "onnx": Obj(required={"file": Str(nonempty=True), "external_data": Opt(Str())}, extra=True),
              "inputs": List(AnyValue(), nonempty=True), "outputs": List(AnyValue(), nonempty=True),
              "plugins": List(AnyValue())},
    optional={"model": AnyValue(), "gpu": Str(), "created": Str(), "build_seconds": AnyValue(),
              "versions": AnyValue(), "source": AnyValue()},
    name="engine manifest")


@dataclass(frozen=True)
class EngineRecord:
    """A built engine in the cache. `hit`: it was there already (no build ran)."""

    path: Path
    manifest: dict[str, Any]
    hit: bool = False

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def plan_path(self) -> Path:
        return self.path / self.manifest["engine"]["file"]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["onnx"]["file"]


def is_engine_dir(path: Path) -> bool:
    """What the cache may replace: a directory with an engine manifest (never a foreign directory)."""
    try:
        return path.is_dir() and json.loads((path / MANIFEST).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def read_engine(path: str | Path) -> EngineRecord:
    """An engine directory with its manifest type-checked, the digest matching the directory name, and the
    plan present with the size the manifest records (the sha256 is checked when the plan is read to run)."""
    path = Path(path)
    manifest = read_json(path / MANIFEST, "engine manifest", MANIFEST_SCHEMA)
    digest = _digest(manifest["components"])
    if manifest["key"] != path.name or not path.name.endswith(digest[:16]):
        raise TrtqError(f"engine manifest {path / MANIFEST}: its key components hash to {digest[:16]}, the "
                        f"directory is {path.name}; the manifest was edited or moved: rebuild the engine")
    rec = EngineRecord(path, manifest)
    plan = rec.plan_path
    if not plan.is_file() or plan.stat().st_size != manifest["engine"]["bytes"]:
        raise TrtqError(f"engine {path}: {plan.name} is missing or not the {manifest['engine']['bytes']} bytes "
                        "its manifest records; rebuild the engine")
    return rec


def check_engine(manifest: dict[str, Any], target: Target, artifact_sha256: str | None = None,
                 plugins_version: str | None = None, where: str = "engine") -> None:
    """Refuse an engine built for another TensorRT, GPU architecture, artifact or plugins' version: one line
    naming the field that differs and what this machine / caller has."""
    c = manifest["components"]
    checks = [("TensorRT version", c["tensorrt_version"], target.tensorrt_version),
              ("GPU compute capability", c["compute_capability"], target.compute_capability)]
    if artifact_sha256 is not None:
        checks.append(("artifact hash", c["artifact_sha256"], artifact_sha256))
    if plugins_version is not None and c["plugins_version"] is not None:
        checks.append(("plugins version", c["plugins_version"], plugins_version))
    for what, built, now in checks:
        if built != now:
            short = (lambda s: s[:12]) if what == "artifact hash" else (lambda s: s)
            raise TrtqError(f"{where} is stale: it was built for {what} {short(built)}, this is {short(now)}; "
                            "rebuild it (trtq build)")


def plan_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
