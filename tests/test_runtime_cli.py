"""`trtq run` and `trtq profile` on the zoo DiT (few steps, CPU): files written, JSON schema, plots, errors."""

from __future__ import annotations

import json

import jsonschema
import pytest
from PIL import Image

from trtq.cli import main
from trtq.runtime.profile import LAYER_CLASSES, PROFILE_JSON_SCHEMA, layer_class_times, percentile


def test_run_writes_pngs_grid_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", "digits-dit", "--labels", "3,1", "--steps", "2", "--backend", "eager",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["backend"] == "eager" and report["labels"] == [3, 1]
    assert sorted(p.name for p in out.glob("*.png")) == ["0000_label3.png", "0001_label1.png", "grid.png"]
    assert Image.open(out / "0000_label3.png").size == (128, 128)
    assert "backend eager" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--labels", "3,x"], "--labels must be comma-separated integers"),
    (["--labels", "12"], "--labels must be comma-separated integers in 0..9"),
    (["--steps", "0"], "--steps must be in"),
    (["--artifact", "/nonexistent"], "is not a directory"),
    (["--recipe", "no-such-recipe"], "no-such-recipe"),
    (["--threads", "0"], "--threads must be in"),
])
def test_run_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["run", "--model", "digits-dit", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.fixture
def keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # --threads sets it for the process


def test_profile_json_schema_and_plots(tmp_path, keep_torch_threads):
    out = tmp_path / "prof"
    assert main(["profile", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--calib-samples", "2",
                 "--steps", "1", "--warmup", "0", "--repeats", "2", "--threads", "1", "--backends", "eager,onnxruntime",
                 "--out", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text())
    jsonschema.validate(report, PROFILE_JSON_SCHEMA)
    assert report["cpu_numbers"] is True and report["device"].startswith("CPU")
    assert "1 torch threads" in report["device"]
    assert report["settings"]["onnxruntime_threads"] == 1
    rows = {(r["config"], r["backend"]) for r in report["latency"]}
    assert rows == {("fp32", "eager"), ("w8a8-minmax", "eager"), ("w8a8-minmax", "onnxruntime")}
    for r in report["latency"]:
        assert r["pipeline_ms"]["median"] <= r["pipeline_ms"]["p90"] <= max(r["pipeline_ms"]["runs"])
        assert r["per_step_ms"]["median"] == pytest.approx(r["pipeline_ms"]["median"], abs=1e-3)
    by = report["layer_classes"]["by_config"]
    assert set(by) == {"fp32", "w8a8-minmax"}
    for times in by.values():  # a DiT has linears, attention and norms; its patch embedding is a 4x4 conv
        assert times["linear"] > 0 and times["attention"] > 0 and times["norm"] > 0 and times["conv_other"] > 0
        assert times["conv3x3"] == 0
        assert sum(times[c] for c in LAYER_CLASSES) == pytest.approx(times["total"], rel=1e-3)
    for name in ("latency.png", "layers.png"):
        img = Image.open(out / name)
        assert img.format == "PNG" and img.size == (900, 420)


def test_layer_classes_of_a_unet_count_3x3_convs():
    import torch

    from trtq.zoo import load_model

    unet = load_model("digits-unet").denoiser
    x, t, ctx = torch.randn(2, 1, 32, 32), torch.tensor([10, 10]), torch.randn(2, 4, 64)
    with torch.no_grad():
        times = layer_class_times(unet, lambda: unet(x, t, encoder_hidden_states=ctx), cuda=False)
    assert times["conv3x3"] > 0 and times["conv_other"] > 0 and times["attention"] > 0
    assert times["total"] >= max(times[c] for c in LAYER_CLASSES)


def test_percentile_is_numpys_linear():
    import numpy as np

    v = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 50, 90, 100):
        assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)))


def test_run_on_a_saved_diffusers_dit_folder(tmp_path, capsys):
    """`trtq run --model DIR` on a DiTPipeline saved with save_pretrained (random weights), FP on eager and an
    artifact for its transformer on ONNX Runtime; the images are the pipeline's own (PNG per label, grid)."""
    import sys
    from pathlib import Path

    import numpy as np

    import trtq

    sys.path.insert(0, str(Path(__file__).parent))
    from runtime_pipelines import build_pipeline, quantized_copy

    pipe, _ = build_pipeline("dit")
    pipe.save_pretrained(tmp_path / "dit")
    q = quantized_copy(pipe.transformer)
    trtq.save_artifact(q, tmp_path / "art", model_name="tiny-dit")
    assert main(["run", "--model", str(tmp_path / "dit"), "--labels", "3,7", "--steps", "2", "--backend", "eager",
                 "--out", str(tmp_path / "fp"), "--quiet"]) == 0
    assert main(["run", "--model", str(tmp_path / "dit"), "--labels", "3,7", "--steps", "2", "--artifact",
                 str(tmp_path / "art"), "--backend", "onnxruntime", "--out", str(tmp_path / "q"), "--quiet"]) == 0
    for run in ("fp", "q"):
        report = json.loads((tmp_path / run / "run.json").read_text())
        assert report["model"] == "DiTPipeline" and report["labels"] == [3, 7]
        assert sorted(p.name for p in (tmp_path / run).glob("*.png")) == ["0000.png", "0001.png", "grid.png"]
    assert json.loads((tmp_path / "q" / "run.json").read_text())["backend"] == "onnxruntime"
    fp, qimg = (np.asarray(Image.open(tmp_path / r / "0000.png"), dtype=np.float32) for r in ("fp", "q"))
    assert fp.shape == qimg.shape == (16, 16, 3) and np.abs(fp - qimg).max() > 0  # the artifact was used
    assert main(["run", "--model", str(tmp_path / "dit"), "--prompt", "a cat", "--out", str(tmp_path / "x")]) == 2
    assert "generates from class labels" in capsys.readouterr().err
