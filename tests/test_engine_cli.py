"""`trtq build` on a machine without TensorRT or a GPU: the ONNX export is written and checked, then one line
names what is missing, exit 2, and nothing is written under --engines. Argument errors exit 2 before any work.
"""

from __future__ import annotations

import pytest

import trtq
from trtq.cli import main
from trtq.export.inputs import DenoiserWrapper, signature_of
from trtq.zoo import load_model
from trtq.engine.export_dir import check_graph, read_export
from trtq.engine.profile import resolve_profile
from trtq.engine.target import missing

no_tensorrt_here = pytest.mark.skipif(not missing(), reason="this machine has TensorRT and a GPU: it would build")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, always
    return err[0]


@no_tensorrt_here
def test_build_without_tensorrt_exports_checks_and_stops(tmp_path, capsys):
    # An artifact calibrated on one batch (as tests/test_export.py does): `--recipe` would calibrate on 20
    # sampling steps, minutes of CPU on a busy 2-core machine.
    dit = load_model("digits-dit").denoiser
    sig = signature_of(dit)
    calib = sig.example_inputs(2, 32, 32, seed=1)
    trtq.quantize(dit, "w8a8-minmax", lambda m: DenoiserWrapper(m, sig)(*calib.values()))
    art = trtq.save_artifact(dit, tmp_path / "art", "digits-dit")
    onnx_dir, engines = tmp_path / "onnx", tmp_path / "engines"
    rc = main(["build", "--model", "digits-dit", "--artifact", str(art), "--export-dir", str(onnx_dir),
               "--engines", str(engines), "--batch", "1:2:8"])
    out = capsys.readouterr()
    assert rc == 2
    errors = [line for line in out.err.splitlines() if line.startswith("trtq:")]  # (the exporter's warnings aside)
    assert len(errors) == 1 and out.err.strip().splitlines()[-1] == errors[0]
    assert errors[0].startswith("trtq: error: cannot build a TensorRT engine on this machine: ")
    assert ("TensorRT's Python bindings are not installed" in errors[0]) == ("TensorRT" in " ".join(missing()))
    assert "checked" in out.out and "the ONNX checker passes" in out.out
    assert not engines.exists()  # nothing under --engines, not even the directory
    # the export is there, whole, and what a machine with TensorRT would build from
    export = read_export(onnx_dir)
    check_graph(export)
    prof = resolve_profile(export.manifest["inputs"], export.manifest["profiles"])
    assert prof["sample"].max[0] == 8 and prof["class_labels"].min == (1,)
    assert export.recipe_name == "w8a8-minmax" and export.manifest["artifact"] == str(art)

    # the same export, built with --onnx: the same refusal, still nothing written
    assert main(["build", "--onnx", str(onnx_dir), "--engines", str(engines), "--batch", "2:2:2"]) == 2
    assert "cannot build a TensorRT engine" in _error_line(capsys) and not engines.exists()


@pytest.mark.parametrize("argv,message", [
    ([], "either --onnx DIR"),
    (["--onnx", "x", "--model", "digits-unet"], "either --onnx DIR"),
    (["--onnx", "x", "--recipe", "w8a8-minmax"], "--recipe, --artifact and --export-dir go with --model"),
    (["--model", "digits-unet"], "--model needs --recipe or --artifact"),
    (["--onnx", "x", "--opt-level", "7"], "optimization level must be an integer in [0, 5], got 7"),
    (["--onnx", "x", "--batch", "4:2:1"], "--batch must be MIN:OPT:MAX"),
    (["--onnx", "no/such/export"], "is not an ONNX export directory"),
])
def test_build_argument_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["build", *argv]) == 2
    line = _error_line(capsys)
    assert message in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_engines_path_that_is_a_file_is_refused_before_export(tmp_path, capsys):
    (tmp_path / "engines").write_text("")
    rc = main(["build", "--model", "digits-unet", "--recipe", "w8a8-minmax", "--export-dir", str(tmp_path / "onnx"),
               "--engines", str(tmp_path / "engines")])
    assert rc == 2 and "--engines" in _error_line(capsys) and not (tmp_path / "onnx").exists()
