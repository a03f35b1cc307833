"""Diffusers pipeline folders as models: calibration through the pipeline itself (`trtq.runtime.folder`) and the
CLI's quantize / export / build / run on folders saved with save_pretrained (tiny random-weight pipelines:
plumbing and numerics against the same model, never quality)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from runtime_pipelines import build_pipeline, save_pipeline_folder  # noqa: E402

from trtq.cli import main  # noqa: E402
from trtq.errors import TrtqError  # noqa: E402
from trtq.runtime import folder  # noqa: E402


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_pipeline_folder("sd15", tmp_path_factory.mktemp("folders") / "sd")


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory) -> Path:
    return save_pipeline_folder("dit", tmp_path_factory.mktemp("folders") / "dit")


def test_calibration_conditions_prompts_labels_and_refusals():
    sd, _ = build_pipeline("sd15")
    dit, _ = build_pipeline("dit")
    assert folder.calibration_conditions(sd, 10)["prompts"] == list(folder.DEFAULT_PROMPTS) + list(
        folder.DEFAULT_PROMPTS[:2])
    assert folder.calibration_conditions(sd, 3, prompts=["x", "y"]) == {"prompts": ["x", "y", "x"]}
    assert folder.calibration_conditions(dit, 4) == {"labels": [0, 250, 500, 750]}  # spread over 1000 classes
    assert folder.calibration_conditions(dit, 3, labels=[7]) == {"labels": [7, 7, 7]}
    with pytest.raises(TrtqError, match="class labels: give --labels"):
        folder.calibration_conditions(dit, 2, prompts=["a cat"])
    with pytest.raises(TrtqError, match="conditioned on prompts"):
        folder.calibration_conditions(sd, 2, labels=[1])
    with pytest.raises(TrtqError, match=r"0\.\.999"):
        folder.calibration_conditions(dit, 2, labels=[1000])
    with pytest.raises(TrtqError, match="calib-samples"):
        folder.calibration_conditions(sd, 0)


def test_recorded_inputs_are_the_float_pipelines_denoiser_calls(sd_folder):
    """One record per denoiser call (steps x batches of CALIB_BATCH prompts), copied to the CPU, with the
    classifier-free-guidance batch; replaying them reproduces the pipeline's own denoiser outputs."""
    pipe = folder.load_diffusers_pipeline(sd_folder)
    conditions = folder.calibration_conditions(pipe, folder.CALIB_BATCH + 1)
    seen = []
    hook = pipe.unet.register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
    calls = folder.record_denoiser_inputs(pipe, conditions, steps=3, progress=False)
    hook.remove()
    assert len(calls) == 3 * 2 and len(seen) == len(calls)
    args, kwargs = calls[0]
    assert args[0].shape == (2 * folder.CALIB_BATCH, 4, 16, 16) and args[0].device.type == "cpu"
    assert kwargs["encoder_hidden_states"].shape == (2 * folder.CALIB_BATCH, 5, 32)
    with torch.no_grad():
        for (args, kwargs), want in zip(calls, seen):
            assert torch.equal(pipe.unet(*args, **kwargs)[0], want)


def test_replay_loop_calibrates_like_the_pipeline_and_leaves_the_float_denoiser(sd_folder):
    pipe = folder.load_diffusers_pipeline(sd_folder)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    q, info = folder.quantized_folder_denoiser(pipe, sd_folder, recipe="w8a8-minmax", samples=2, steps=2,
                                               progress=False)
    q2, _ = folder.quantized_folder_denoiser(pipe, sd_folder, recipe="w8a8-minmax", samples=2, steps=2,
                                             progress=False)
    assert info["denoiser_calls"] == 2 and info["prompts"] == list(folder.DEFAULT_PROMPTS[:2])
    scales = {k: v for k, v in q.state_dict().items() if k.endswith("input_quantizer.scale")}
    assert scales and all(torch.equal(v, q2.state_dict()[k]) for k, v in scales.items())  # deterministic
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())  # float model untouched


def test_cli_quantize_export_run_build_on_a_saved_sd_folder(sd_folder, tmp_path, capsys):
    """The whole CLI path on a folder: calibrate through the pipeline on a prompt file, export the artifact
    to ONNX with the pipeline's prompt length, run the pipeline from a prompt on ONNX Runtime; build exports
    and then says TensorRT is missing (this machine has none)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# calibration\na cat\n\na cat on a hill\n")
    art, onnx = tmp_path / "art", tmp_path / "onnx"
    assert main(["quantize", "--model", str(sd_folder), "--recipe", "w8a8-minmax", "--prompts", str(prompts),
                 "--calib-samples", "3", "--steps", "2", "--out", str(art)]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    calib = manifest["extra"]["calibration"]
    assert calib["prompts"] == ["a cat", "a cat on a hill", "a cat"] and calib["denoiser_calls"] == 2
    assert calib["seconds"] > 0 and calib["peak_memory"]["peak_bytes"] > 0
    assert manifest["model"]["name"] == "StableDiffusionPipeline:sd"
    assert "calibrated on cpu" in capsys.readouterr().out

    assert main(["export", "--model", str(sd_folder), "--artifact", str(art), "--out", str(onnx), "--dtype",
                 "float32", "--batch", "2:2:2"]) == 0
    export = json.loads((onnx / "manifest.json").read_text())
    assert export["model"]["name"] == "StableDiffusionPipeline:sd"
    assert main(["run", "--model", str(sd_folder), "--artifact", str(art), "--backend", "onnxruntime",
                 "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["backend"] == "onnxruntime"
    assert (tmp_path / "run" / "0000.png").is_file()
    capsys.readouterr()

    from trtq.runtime.backends import tensorrt_missing

    if tensorrt_missing():  # the export is written, then the build stops at the missing TensorRT, in one line
        assert main(["build", "--model", str(sd_folder), "--artifact", str(art), "--export-dir",
                     str(tmp_path / "build-onnx"), "--dtype", "float32", "--engines", str(tmp_path / "eng")]) != 0
        assert (tmp_path / "build-onnx" / "model.onnx").is_file()
        assert "TensorRT" in capsys.readouterr().err


def test_cli_quantize_a_dit_folder_on_labels(dit_folder, tmp_path):
    art = tmp_path / "art"
    assert main(["quantize", "--model", str(dit_folder), "--recipe", "w8a8-minmax", "--labels", "3,7",
                 "--calib-samples", "2", "--steps", "2", "--out", str(art)]) == 0
    assert json.loads((art / "manifest.json").read_text())["extra"]["calibration"]["labels"] == [3, 7]


@pytest.mark.parametrize("argv,message", [
    (["--model", "digits-unet", "--prompts", "p.txt"], "is for diffusers pipeline folders"),
    (["--model", "digits-unet", "--device", "cuda"], "is for diffusers pipeline folders"),
    (["--model", "{dit}", "--labels", "x"], "--labels must be comma-separated"),
    (["--model", "{dit}", "--prompts", "missing.txt"], "cannot be read"),
])
def test_folder_options_are_checked_before_work(argv, message, dit_folder, tmp_path, capsys):
    argv = [a.replace("{dit}", str(dit_folder)) for a in argv]
    assert main(["quantize", "--recipe", "w8a8-minmax", "--out", str(tmp_path / "a"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_cli_profile_and_run_with_a_recipe_on_a_saved_dit_folder(dit_folder, tmp_path):
    """profile --model DIR: FP and a recipe calibrated through the pipeline, latency rows and layer classes of
    the pipeline's own denoiser call, the JSON valid against its schema; run --recipe on the folder."""
    import jsonschema

    from trtq.runtime.profile import PROFILE_JSON_SCHEMA

    out = tmp_path / "prof"
    assert main(["profile", "--model", str(dit_folder), "--recipe", "w8a8-minmax", "--backends", "eager",
                 "--steps", "2", "--repeats", "1", "--warmup", "0", "--calib-samples", "2", "--out", str(out)]) == 0
    report = json.loads((out / "profile.json").read_text())
    jsonschema.validate(report, PROFILE_JSON_SCHEMA)
    assert report["model"] == "DiTPipeline:dit" and report["cpu_numbers"]
    assert [(r["config"], r["backend"]) for r in report["latency"]] == [("fp32", "eager"), ("w8a8-minmax", "eager")]
    linear = {cfg: v["linear"] for cfg, v in report["layer_classes"]["by_config"].items()}
    assert set(linear) == {"fp32", "w8a8-minmax"} and all(v > 0 for v in linear.values())
    assert main(["run", "--model", str(dit_folder), "--recipe", "w8a8-minmax", "--labels", "2", "--steps", "2",
                 "--calib-samples", "2", "--backend", "eager", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "0000.png").is_file()


@pytest.mark.parametrize("kind", ["sdxl", "pixart"])
def test_cli_quantize_and_export_the_other_text_to_image_folders(kind, tmp_path):
    """SDXL (two CLIP encoders, pooled embeddings, time ids) and PixArt-α (T5, padded to the pipeline's own
    max_sequence_length) folders: calibrated through their pipelines on the built-in prompts, exported with
    the prompt length the pipeline feeds its denoiser."""
    folder_path = save_pipeline_folder(kind, tmp_path / kind)
    art, onnx = tmp_path / "art", tmp_path / "onnx"
    assert main(["quantize", "--model", str(folder_path), "--recipe", "w8a8-minmax", "--calib-samples", "1",
                 "--steps", "1", "--out", str(art)]) == 0
    assert json.loads((art / "manifest.json").read_text())["extra"]["calibration"]["denoiser_calls"] == 1
    assert main(["export", "--model", str(folder_path), "--artifact", str(art), "--out", str(onnx), "--dtype",
                 "float32", "--batch", "2:2:2"]) == 0
    pipe = folder.load_diffusers_pipeline(folder_path)
    tokens = {"sdxl": 5, "pixart": 120}[kind]  # CLIP: the tokenizer's length; PixArt: max_sequence_length
    from trtq.runtime.accelerate import text_tokens_of

    assert text_tokens_of(pipe) == tokens
    profile = json.loads((onnx / "manifest.json").read_text())["profiles"]["encoder_hidden_states"]
    assert profile["opt"][:2] == [2, tokens]  # the token axis is static: the graph takes what the pipeline feeds
