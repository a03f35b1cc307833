"""The demo's deployment section: the quantized zoo denoiser exported and run on the best backend here,
timed against FP, with sizes; and its rendering in report.md (the whole demo is `make demo`, too slow here)."""

from __future__ import annotations

import pytest

from trtq import demo


def test_deployment_exports_accelerates_and_times(tmp_path, monkeypatch):
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, quantized_denoiser
    from trtq.runtime.backends import auto_order
    from trtq.zoo import load_model

    monkeypatch.setattr(demo, "DEPLOY_IMAGES", 2)
    monkeypatch.setattr(demo, "DEPLOY_REPEATS", 1)
    model = load_model("digits-dit")
    q = quantized_denoiser(model, QuantSpec(recipe=demo.DEPLOY_RECIPE),
                           SamplingConfig(calib_samples=2, steps=2, progress=False))
    fp, qrow = demo.deployment(model, q, tmp_path, steps=2)
    assert (fp["config"], fp["backend"], fp["speedup"]) == ("fp32", "eager", 1.0)
    import torch

    assert qrow["config"] == demo.DEPLOY_RECIPE and qrow["backend"] in auto_order(torch.device("cpu"))
    assert qrow["ms_per_image"] > 0 and qrow["speedup"] == pytest.approx(fp["ms_per_image"] / qrow["ms_per_image"])
    if qrow["backend"] == "onnxruntime":  # the export the backend ran is kept beside the report, and sized
        assert (tmp_path / "onnx" / "digits-dit" / "model.onnx").is_file() and qrow["megabytes"] > 0
    report = {"date": "d", "machine": "m", "versions": {"torch": "t", "diffusers": "d"},
              "sampling": {"samples": 1, "steps": 2}, "bootstrap": {"resamples": 1, "seed": 0}, "models": [],
              "deployment": {"device": "cpu (x86_64)", "cpu_numbers": True, "images": 2, "steps": 2, "repeats": 1,
                             "rows": [fp, qrow]}, "stages": {}}
    md = demo._markdown(report)
    assert "## Deployment on this machine" in md and "CPU numbers" in md
    assert f"| digits-dit | {demo.DEPLOY_RECIPE} | {qrow['backend']} |" in md
