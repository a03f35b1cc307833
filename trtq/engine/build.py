"""`build_engine`: an ONNX export -> a TensorRT engine in the cache, built at most once per key.

    export  = read_export(dir)                          manifest type-checked, graph files present
    profile = resolve_profile(export, batch, resolution)
    key     = EngineKey(fingerprint, recipe, sha256(graph), profile, options, TensorRT, GPU, plugins)
    hit     : engines/<key>/ exists -> checked (not stale) and returned, nothing built
    miss    : under the key's lock (a second builder of the same key waits, then finds it built), the graph
              is copied into a temporary sibling, the build step writes engine.plan there, the manifest goes
              last, and one rename publishes the directory (`trtq.io.atomic.atomic_dir`): a build that fails
              or is killed leaves no engines/<key>/, and its leftovers go with the next build of that key
    then    : the timing cache TensorRT returned replaces the shared one (atomic file write)

The build step is the only part that needs TensorRT (`trtq.engine.trt_build.build_plan`); it is a parameter,
so the cache, locking and atomicity above are tested here with a fake step that writes bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from trtq.engine.cache import (FORMAT_VERSION, KIND, MANIFEST, PLAN, BuildOptions, EngineKey, EngineRecord, Target,
                               check_engine, is_engine_dir, plan_sha256, read_engine, timing_cache_path)
from trtq.engine.export_dir import OnnxExport, read_export
from trtq.engine.plugin_hook import RegisterPlugins, plugin_hooks
from trtq.engine.profile import ShapeProfile, profile_to_dict, resolve_profile
from trtq.errors import TrtqError
from trtq.io.atomic import atomic_dir, write_file_atomic


@dataclass(frozen=True)
class BuildRequest:
    """What a build step gets: the graph (already copied into the engine's temporary directory), where to
    write the plan, the profile, the options, the timing cache so far, and the plugins to register first."""

    onnx_path: Path
    plan_path: Path
    profile: ShapeProfile
    options: BuildOptions
    timing_cache: bytes | None
    plugins: tuple[str, ...]
    register_plugins: RegisterPlugins | None
    progress: bool


# Writes request.plan_path; returns the updated serialized timing cache (or None to leave it as it is).
BuildStep = Callable[[BuildRequest], "bytes | None"]


class _BuiltMeanwhile(Exception):
    """Raised inside the locked write when another process finished the same key while we waited."""


def build_engine(export: str | Path | OnnxExport, *, batch: Sequence[int] | None = None,
                 resolution: Sequence[int] | None = None, options: BuildOptions | None = None,
                 cache_dir: str | Path = "engines", plugins_version: str | None = None,
                 register_plugins: RegisterPlugins | None = None, progress: bool = True,
                 target: Target | None = None, build_step: BuildStep | None = None) -> EngineRecord:
    """Build (or find in `cache_dir`) the TensorRT engine of an ONNX export directory from `trtq export`.

    batch / resolution: MIN, OPT, MAX of the profile (default: the export's). plugins_version /
    register_plugins: the trtq plugins' version and registration (default: `trtq.plugins`, imported only
    when the graph has plugin nodes). target / build_step: this machine's TensorRT and GPU and the TensorRT
    build (defaults; tests pass their own). Raises TrtqError with one line, before anything is written, when
    TensorRT or a CUDA GPU is missing.
    """
    exp = export if isinstance(export, OnnxExport) else read_export(export)
    blockers = exp.manifest.get("tensorrt", {}).get("blockers") or []
    if blockers:
        more = f" (and {len(blockers) - 1} more kind(s): manifest.json 'tensorrt')" if len(blockers) > 1 else ""
        raise TrtqError(f"export {exp.path} cannot be built by TensorRT: {blockers[0]}{more}")
    options = options or BuildOptions()
    profile = resolve_profile(exp.manifest["inputs"], exp.manifest["profiles"], batch, resolution)
    if target is None or build_step is None:
        from trtq.engine import target as machine

        machine.require()
        target = target or machine.current_target()
        if build_step is None:
            from trtq.engine.trt_build import build_plan

            build_step = build_plan
    plugin_names = tuple(sorted({p["name"] for p in exp.plugins}))
    register, version = plugin_hooks(plugin_names, register_plugins, plugins_version)
    sha = exp.sha256()
    key = EngineKey(model_fingerprint=exp.manifest["model"]["fingerprint"], recipe=exp.recipe_name,
                    artifact_sha256=sha, profile=profile_to_dict(profile),
                    tensorrt_version=target.tensorrt_version, compute_capability=target.compute_capability,
                    plugins_version=version, options={"optimization_level": options.optimization_level},
                    model_name=exp.manifest["model"].get("name"))
    path = Path(cache_dir) / key.dirname
    if path.exists():
        return _hit(path, target, sha, version)
    timing_path = timing_cache_path(cache_dir, target)
    new_timing: bytes | None = None
    try:
        with atomic_dir(path, is_engine_dir, what="trtq engine") as tmp:
            if path.exists():
                raise _BuiltMeanwhile
            t0 = time.perf_counter()  # (after the lock: a wait for another builder is not build time)
            for f in exp.files:
                shutil.copy2(f, tmp / f.name)
            request = BuildRequest(onnx_path=tmp / exp.onnx_path.name, plan_path=tmp / PLAN, profile=profile,
                                   options=options, timing_cache=_read_optional(timing_path),
                                   plugins=plugin_names, register_plugins=register, progress=progress)
            new_timing = build_step(request)
            if not request.plan_path.is_file() or request.plan_path.stat().st_size == 0:
                raise TrtqError(f"the engine build wrote no {PLAN}")
            manifest = _manifest(exp, key, target, request.plan_path, time.perf_counter() - t0)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except _BuiltMeanwhile:
        return _hit(path, target, sha, version)
    if new_timing:
        write_file_atomic(timing_path, new_timing, what="TensorRT timing cache")
    return EngineRecord(path, read_engine(path).manifest, hit=False)


def _hit(path: Path, target: Target, sha: str, plugins_version: str | None) -> EngineRecord:
    rec = read_engine(path)
    check_engine(rec.manifest, target, sha, plugins_version, where=f"engine {path}")
    return EngineRecord(path, rec.manifest, hit=True)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _manifest(exp: OnnxExport, key: EngineKey, target: Target, plan: Path, seconds: float) -> dict:
    from trtq import __version__

    m = exp.manifest
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "key": key.dirname,
        "components": key.components(),
        "model": m["model"],
        "engine": {"file": PLAN, "sha256": plan_sha256(plan), "bytes": plan.stat().st_size},
        "onnx": {"file": exp.onnx_path.name, "external_data": m["onnx"].get("external_data"),
                 "dtype": m["onnx"]["dtype"]},
        "inputs": m["inputs"],
        "outputs": m["outputs"],
        "plugins": m["plugins"],
        "gpu": target.gpu_name,
        "source": str(exp.path),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "versions": {"trtq": __version__, "tensorrt": target.tensorrt_version},
    }
