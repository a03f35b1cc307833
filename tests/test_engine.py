"""The engine layer without TensorRT: cache keys, the cached/locked/atomic build around a fake build step,
stale-engine refusal, profiles and the runner's input checks (plain Python, as the runner runs them).

The fake build step stands where `trtq.engine.trt_build.build_plan` stands on a machine with TensorRT: it gets
the same BuildRequest and writes engine.plan. A small hand-made export (one Identity node, the manifest
layout `trtq export` writes) keeps these tests fast; tests/test_engine_cli.py reads a real zoo export.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from trtq.engine import BuildOptions, EngineKey, Target, build_engine, check_engine, read_engine
from trtq.engine.cache import MANIFEST, timing_cache_path
from trtq.engine.plugin_hook import plugin_hooks
from trtq.engine.profile import check_inputs, resolve_profile
from trtq.errors import TrtqError

TARGET = Target("10.13.0.35", "9.0", "NVIDIA H100 80GB HBM3")


def make_export(path: Path, *, plugins=(), fixed_resolution: int | None = None, fingerprint="f" * 64,
                recipe="w8a8-minmax", payload=b"") -> Path:
    """A minimal export in `trtq export`'s layout: model.onnx (sample, timestep -> out_sample) + manifest."""
    hw = [fixed_resolution, fixed_resolution] if fixed_resolution else ["height", "width"]
    sample = helper.make_tensor_value_info("sample", TensorProto.FLOAT16, ["batch", 1, *hw])
    t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT16, ["batch"])
    out = helper.make_tensor_value_info("out_sample", TensorProto.FLOAT16, ["batch", 1, *hw])
    graph = helper.make_graph([helper.make_node("Identity", ["sample"], ["out_sample"])], "g", [sample, t], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.doc_string = payload.hex()  # stands for different weights
    path.mkdir(parents=True)
    onnx.save(model, str(path / "model.onnx"))
    r = fixed_resolution or 32
    manifest = {
        "format_version": 1, "kind": "trtq-onnx",
        "model": {"name": "digits-unet", "class": "UNet2DConditionModel", "fingerprint": fingerprint,
                  "signature": "unet"},
        "recipe": None if recipe is None else {"name": recipe, "rules": []},
        "artifact": None,
        "onnx": {"file": "model.onnx", "opset": 21, "ir_version": 10, "dtype": "float16", "strongly_typed": True,
                 "dynamic": True, "external_data": None},
        "inputs": [{"name": "sample", "dtype": "float16", "shape": ["batch", 1, *hw]},
                   {"name": "timestep", "dtype": "float16", "shape": ["batch"]}],
        "outputs": [{"name": "out_sample", "dtype": "float16", "shape": ["batch", 1, *hw]}],
        "profiles": {"sample": {"min": [1, 1, r, r], "opt": [2, 1, r, r], "max": [4, 1, r, r]},
                     "timestep": {"min": [1], "opt": [2], "max": [4]}},
        "plugins": [{"name": p, "namespace": "trtq", "version": "1", "nodes": 1, "aot": True} for p in plugins],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


class FakeBuild:
    """A build step that records its requests and writes a plan naming the profile."""

    def __init__(self, timing: bytes | None = b"timing-v1"):
        self.requests = []
        self.timing = timing

    def __call__(self, request):
        self.requests.append(request)
        assert request.onnx_path.is_file() and request.onnx_path.parent == request.plan_path.parent
        request.plan_path.write_bytes(b"PLAN" + json.dumps(sorted(request.profile)).encode())
        return self.timing


@pytest.fixture
def export(tmp_path):
    return make_export(tmp_path / "onnx")


def _build(export, cache, step, **kw):
    return build_engine(export, cache_dir=cache, target=kw.pop("target", TARGET), build_step=step, progress=False,
                        **kw)


# ------------------------------------------------------------------------------------------ keys
BASE = dict(model_fingerprint="a" * 64, recipe="w8a8-minmax", artifact_sha256="b" * 64,
            profile={"sample": {"min": [1], "opt": [2], "max": [4], "shape": ["batch"]}},
            tensorrt_version="10.13.0.35", compute_capability="9.0", plugins_version="1.0",
            options={"optimization_level": 3}, model_name="digits-unet")
CHANGED = dict(model_fingerprint="c" * 64, recipe="w8a8-percentile", artifact_sha256="d" * 64,
               profile={"sample": {"min": [1], "opt": [2], "max": [8], "shape": ["batch"]}},
               tensorrt_version="10.9.0.34", compute_capability="8.9", plugins_version="1.1",
               options={"optimization_level": 5})


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_each_key_component_changes_the_key(field):
    base = EngineKey(**BASE)
    assert EngineKey(**BASE).dirname == base.dirname  # deterministic
    changed = dataclasses.replace(base, **{field: CHANGED[field]})
    assert changed.digest() != base.digest() and changed.dirname != base.dirname


def test_key_dirname_is_readable_and_safe():
    key = EngineKey(**{**BASE, "model_name": "../weird name/x", "recipe": "recipes/my.yaml"})
    assert "/" not in key.dirname and not key.dirname.startswith(".")
    assert key.dirname.endswith(key.digest()[:16])
    assert EngineKey(**BASE).dirname.startswith("digits-unet-w8a8-minmax-")


# ------------------------------------------------------------------------------------------ cache
def test_build_then_cache_hit(export, tmp_path):
    step, cache = FakeBuild(), tmp_path / "engines"
    rec = _build(export, cache, step)
    assert not rec.hit and len(step.requests) == 1
    assert sorted(p.name for p in rec.path.iterdir()) == ["engine.plan", "manifest.json", "model.onnx"]
    assert rec.path.parent == cache and rec.plan_path.read_bytes().startswith(b"PLAN")
    assert (rec.path / "model.onnx").read_bytes() == (export / "model.onnx").read_bytes()
    m = read_engine(rec.path).manifest
    assert m["components"]["tensorrt_version"] == TARGET.tensorrt_version and m["gpu"] == TARGET.gpu_name
    assert m["components"]["plugins_version"] is None  # no plugin nodes: plugin releases do not rebuild it
    again = _build(export, cache, step)
    assert again.hit and again.path == rec.path and len(step.requests) == 1  # nothing built the second time
    # what the key covers, through build_engine: the profile, the builder options, the graph's bytes, the GPU
    assert _build(export, cache, step, batch=(1, 1, 2)).path != rec.path
    assert _build(export, cache, step, options=BuildOptions(optimization_level=5)).path != rec.path
    other = _build(make_export(tmp_path / "onnx2", payload=b"other weights"), cache, step)
    assert other.path != rec.path
    assert _build(export, cache, step, target=dataclasses.replace(TARGET, compute_capability="8.9")).path != rec.path
    assert len(step.requests) == 5
    assert len([p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 5


def test_timing_cache_is_shared_between_builds(export, tmp_path):
    cache = tmp_path / "engines"
    first = FakeBuild(timing=b"timing-1")
    _build(export, cache, first)
    assert first.requests[0].timing_cache is None
    path = timing_cache_path(cache, TARGET)
    assert path.read_bytes() == b"timing-1" and path.parent == cache
    second = FakeBuild(timing=b"timing-2")
    _build(export, cache, second, batch=(1, 2, 8))
    assert second.requests[0].timing_cache == b"timing-1"  # the earlier build's tuning is reused
    assert path.read_bytes() == b"timing-2"
    assert timing_cache_path(cache, dataclasses.replace(TARGET, tensorrt_version="10.9.0.34")) != path


def test_profile_from_the_export_and_overrides(export):
    from trtq.engine.export_dir import read_export

    m = read_export(export).manifest
    p = resolve_profile(m["inputs"], m["profiles"])
    assert p["sample"].min == (1, 1, 32, 32) and p["sample"].max == (4, 1, 32, 32) and p["timestep"].opt == (2,)
    p = resolve_profile(m["inputs"], m["profiles"], batch=(1, 2, 8), resolution=(16, 32, 64))
    assert p["sample"].min == (1, 1, 16, 16) and p["sample"].max == (8, 1, 64, 64) and p["timestep"].max == (8,)
    with pytest.raises(TrtqError, match="MIN <= OPT <= MAX"):
        resolve_profile(m["inputs"], m["profiles"], batch=(4, 2, 8))


def test_fixed_resolution_export_refuses_a_resolution_range(tmp_path):
    from trtq.engine.export_dir import read_export

    m = read_export(make_export(tmp_path / "dit", fixed_resolution=16)).manifest
    with pytest.raises(TrtqError, match=r"fixed resolution \(16\).*re-export"):
        resolve_profile(m["inputs"], m["profiles"], resolution=(16, 32, 32))
    p = resolve_profile(m["inputs"], m["profiles"], resolution=(16, 16, 16))  # the size it has: fine
    assert p["sample"].max == (4, 1, 16, 16)


# ------------------------------------------------------------------------------------------ atomicity, locking
def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if ".tmp-" in p.name or ".old-" in p.name) if cache.exists() else []


def test_failed_build_leaves_no_engine(export, tmp_path):
    cache = tmp_path / "engines"

    def failing(request):
        request.plan_path.write_bytes(b"half a pl")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        _build(export, cache, failing)
    assert [p for p in cache.iterdir() if p.is_dir()] == [] and _leftovers(cache) == []
    with pytest.raises(TrtqError, match="wrote no engine.plan"):
        _build(export, cache, lambda request: None)  # a step that writes nothing publishes nothing
    assert [p for p in cache.iterdir() if p.is_dir()] == []
    assert not _build(export, cache, FakeBuild()).hit


def _killed_build(export: str, cache: str) -> None:
    def die(request):
        request.plan_path.write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)

    _build(Path(export), Path(cache), die)


def test_killed_build_leaves_no_engine_and_the_next_build_cleans_up(export, tmp_path):
    cache = tmp_path / "engines"
    p = multiprocessing.get_context("fork").Process(target=_killed_build, args=(str(export), str(cache)))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert [q for q in cache.iterdir() if q.is_dir() and not q.name.startswith(".")] == []  # no engines/<key>
    assert len(_leftovers(cache)) == 1  # the dead builder's temporary directory, hidden
    rec = _build(export, cache, FakeBuild())
    assert not rec.hit and rec.plan_path.read_bytes().startswith(b"PLAN") and _leftovers(cache) == []


def _racing_build(export: str, cache: str, log: str, queue) -> None:
    def slow(request):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        request.plan_path.write_bytes(b"PLAN")
        return None

    rec = _build(Path(export), Path(cache), slow)
    queue.put((str(rec.path), rec.hit))


def test_two_processes_building_one_key_build_it_once(export, tmp_path):
    cache, log = tmp_path / "engines", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_racing_build, args=(str(export), str(cache), str(log), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1  # one build ran; the other waited on the lock, then reused it
    assert results[0][0] == results[1][0] and sorted(hit for _, hit in results) == [False, True]
    assert _leftovers(cache) == []


# ------------------------------------------------------------------------------------------ stale engines
def test_stale_engine_is_refused_naming_the_field(export, tmp_path):
    rec = _build(export, tmp_path / "engines", FakeBuild())
    m = read_engine(rec.path).manifest
    sha = m["components"]["artifact_sha256"]
    check_engine(m, TARGET, sha)  # the current one passes
    cases = [(dataclasses.replace(TARGET, tensorrt_version="10.14.1.48"), sha, None, "TensorRT version 10.13.0.35"),
             (dataclasses.replace(TARGET, compute_capability="8.9"), sha, None, "GPU compute capability 9.0"),
             (TARGET, "0" * 64, None, "artifact hash")]
    for target, artifact, plugins, words in cases:
        with pytest.raises(TrtqError, match=f"stale: it was built for {words}") as e:
            check_engine(m, target, artifact, plugins)
        assert "\n" not in str(e.value)


def test_edited_manifest_or_plan_is_refused(export, tmp_path):
    rec = _build(export, tmp_path / "engines", FakeBuild())
    mpath = rec.path / MANIFEST
    m = json.loads(mpath.read_text())
    m["components"]["tensorrt_version"] = "10.14.1.48"  # pretend it fits this machine
    mpath.write_text(json.dumps(m))
    with pytest.raises(TrtqError, match="hash to .* the directory is .*rebuild"):
        read_engine(rec.path)
    m["components"]["tensorrt_version"] = TARGET.tensorrt_version
    mpath.write_text(json.dumps(m))
    read_engine(rec.path)
    rec.plan_path.write_bytes(b"PLAN-truncated-or-swapped")
    with pytest.raises(TrtqError, match="engine.plan is missing or not the"):
        read_engine(rec.path)


def test_a_foreign_directory_at_the_key_is_not_overwritten(export, tmp_path):
    cache = tmp_path / "engines"
    rec = _build(export, cache, FakeBuild())
    (rec.path / MANIFEST).unlink()
    (rec.path / "notes.txt").write_text("mine")
    with pytest.raises(TrtqError, match="engine manifest .* does not exist"):
        _build(export, cache, FakeBuild())
    assert (rec.path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------ plugins
def test_plugin_graph_needs_the_plugins_and_keys_their_version(tmp_path, monkeypatch):
    export = make_export(tmp_path / "wino", plugins=("WinogradConvInt8",))
    monkeypatch.setitem(__import__("sys").modules, "trtq.plugins", None)  # as if trtq.plugins did not import
    with pytest.raises(TrtqError, match=r"plugin nodes \(WinogradConvInt8\) but the trtq TensorRT plugins cannot"):
        _build(export, tmp_path / "engines", FakeBuild())
    calls = []
    step = FakeBuild()
    a = _build(export, tmp_path / "engines", step, plugins_version="1.0", register_plugins=lambda: calls.append(1))
    assert step.requests[0].plugins == ("WinogradConvInt8",) and step.requests[0].register_plugins is not None
    assert read_engine(a.path).manifest["components"]["plugins_version"] == "1.0"
    b = _build(export, tmp_path / "engines", step, plugins_version="1.1", register_plugins=lambda: None)
    assert b.path != a.path  # new plugin kernels: a new engine
    with pytest.raises(TrtqError, match="built for plugins version 1.0, this is 1.1"):
        check_engine(read_engine(a.path).manifest, TARGET, None, "1.1")
    assert plugin_hooks((), None, "1.0") == (None, None)  # no plugin nodes: no hook, no version in the key


# ------------------------------------------------------------------------------------------ runner checks
def test_runner_input_checks(export):
    from trtq.engine.export_dir import read_export

    m = read_export(export).manifest
    prof = resolve_profile(m["inputs"], m["profiles"], resolution=(16, 32, 64))
    dtypes = {"sample": "float16", "timestep": "float16"}
    ok = {"sample": (2, 1, 48, 48), "timestep": (2,)}
    check_inputs(prof, dtypes, ok, dtypes)
    bad = [({"sample": (2, 1, 48, 48)}, dtypes, r"missing \['timestep'\]"),
           ({**ok, "x": (1,)}, dtypes, r"unexpected \['x'\]"),
           (ok, {**dtypes, "sample": "float32"}, "input sample: dtype float32, the engine takes float16"),
           ({**ok, "sample": (2, 48, 48)}, dtypes, "rank 3, the engine takes rank 4 .batch, 1, height, width."),
           ({**ok, "sample": (8, 1, 48, 48), "timestep": (8,)}, dtypes, r"batch = 8, the profile allows \[1, 4\]"),
           ({**ok, "sample": (2, 1, 80, 48)}, dtypes, r"height = 80, the profile allows \[16, 64\]"),
           ({**ok, "sample": (2, 3, 48, 48)}, dtypes, r"axis 1 = 3, the profile allows \[1, 1\]"),
           ({**ok, "timestep": (3,)}, dtypes, "input timestep: batch = 3, but input sample has batch = 2")]
    for shapes, got, message in bad:
        with pytest.raises(TrtqError, match=message):
            check_inputs(prof, dtypes, shapes, {n: got.get(n, "float16") for n in shapes})


def test_without_tensorrt_build_engine_stops_before_writing(export, tmp_path):
    from trtq.engine.target import missing

    if not missing():
        pytest.skip("this machine has TensorRT and a GPU: the refusal path does not apply")
    with pytest.raises(TrtqError, match="cannot build a TensorRT engine on this machine: ") as e:
        build_engine(export, cache_dir=tmp_path / "engines")
    assert "\n" not in str(e.value) and not (tmp_path / "engines").exists()


def test_build_progress_lines():
    import io
    import threading

    from trtq.engine.progress import BuildProgress

    out = io.StringIO()
    p = BuildProgress(out, depth=2)
    p.start("Building engine", None, 3)
    p.start("Tactic selection", "Building engine", 40)
    p.start("Layer conv_1", "Tactic selection", 7)  # third level: not printed
    assert all(p.step("Layer conv_1", i) for i in range(7))  # never cancels the build
    p.finish("Layer conv_1")
    threads = [threading.Thread(target=lambda n=n: (p.start(f"w{n}", "Tactic selection", 1), p.finish(f"w{n}")))
               for n in range(8)]  # TensorRT calls from several threads
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.finish("Tactic selection")
    p.finish("Building engine")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[trtq build] Building engine (3 steps)"
    assert lines[1] == "[trtq build]   Tactic selection (40 steps)"
    assert lines[-2].startswith("[trtq build]   Tactic selection done in ")
    assert lines[-1].startswith("[trtq build] Building engine done in ") and lines[-1].endswith(" s")
    assert not any("conv_1" in line or " w" in line for line in lines) and len(lines) == 4


def test_plugin_hooks_take_trtq_plugins_register_and_version(monkeypatch):
    import types

    calls = []
    mod = types.ModuleType("trtq.plugins")
    mod.register = lambda: calls.append("registered")
    mod.kernels_fingerprint = lambda: "1-0123456789abcdef"
    monkeypatch.setitem(__import__("sys").modules, "trtq.plugins", mod)
    register, version = plugin_hooks(("FP4GroupGemm",))
    assert version == "1-0123456789abcdef" and register is mod.register
    mod.__version__ = "1.2"  # an explicit version string wins
    assert plugin_hooks(("FP4GroupGemm",))[1] == "1.2"
    del mod.register
    with pytest.raises(TrtqError, match="no register"):
        plugin_hooks(("FP4GroupGemm",))
