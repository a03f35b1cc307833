"""The TensorRT-facing code type-checks with mypy against `tensorrt-stubs` (the API names, argument and return
types of TensorRT 10.13's Python bindings), since TensorRT itself cannot run here.

tensorrt-stubs 10.13.0.35.1 cannot be used as installed: its `tensorrt` package has no py.typed marker
(mypy skips it), and `tensorrt_bindings/tensorrt.pyi` has two syntax errors (parameters named `in`, a
keyword; a parameter without a default after defaulted ones in `add_scale_nd`). The test copies the stubs,
fixes exactly those two things, and points mypy at the copy (`MYPYPATH`); the configuration is
`[tool.mypy]` in pyproject.toml (errors inside the stubs are not ours to report).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The modules that call TensorRT, and those whose types they rely on.
CHECKED = ["trtq/engine"]


def _stub_dirs() -> tuple[Path, Path] | None:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(list(spec.submodule_search_locations)[0]).parent
    trt, bindings = site / "tensorrt" / "__init__.pyi", site / "tensorrt_bindings" / "tensorrt.pyi"
    return (trt.parent, bindings.parent) if trt.is_file() and bindings.is_file() else None


def fixed_stubs(dest: Path) -> Path:
    """A copy of the installed stubs that mypy can parse (see the module docstring)."""
    dirs = _stub_dirs()
    assert dirs is not None
    for src in dirs:
        shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    pyi = dest / "tensorrt_bindings" / "tensorrt.pyi"
    text = pyi.read_text()
    text, n_in = re.subn(r"([(,] *)in: ", r"\1in_: ", text)
    text, n_default = re.subn(r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", text)
    assert n_in >= 1 and n_default == 1, "the stubs changed: revisit the fix-ups in this test"
    pyi.write_text(text)
    return dest


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    if _stub_dirs() is None:
        pytest.skip("tensorrt-stubs is not installed (make install adds tensorrt-stubs==10.13.0.35.1)")
    tmp = tmp_path_factory.mktemp("mypy")
    stubs = fixed_stubs(tmp / "stubs")

    def run(*targets: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "MYPYPATH": str(stubs), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(tmp / "cache"), *targets]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    return run


def test_engine_layer_typechecks_against_tensorrt_stubs(mypy_run):
    r = mypy_run(*CHECKED)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_mypy_sees_the_tensorrt_api(mypy_run, tmp_path):
    """The check is real: a misspelled TensorRT method and a wrong argument type are reported."""
    bad = tmp_path / "bad_trt.py"
    bad.write_text("import tensorrt as trt\n\n\n"
                   "def f(config: trt.IBuilderConfig, ctx: trt.IExecutionContext) -> None:\n"
                   "    config.builder_optimisation_level = 3\n"
                   "    ctx.execute_async_v3('stream')\n")
    r = mypy_run(str(bad))
    assert r.returncode == 1
    assert 'has no attribute "builder_optimisation_level"' in r.stdout
    assert "execute_async_v3" in r.stdout and "incompatible type" in r.stdout
