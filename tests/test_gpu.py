"""Checks that need a CUDA GPU (run on the lent GPU machine with `pytest -m gpu`; skipped elsewhere)."""

import copy

import pytest
import torch

import trtq
from trtq.eval.evaluate import SamplingConfig, calibration_loop
from trtq.pipeline import DigitsPipeline, balanced_labels
from trtq.zoo import load_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["digits-unet", "digits-dit"])
def test_quantized_zoo_model_samples_the_same_on_cuda_and_cpu(name):
    """quantize() + sampling on CUDA give the CPU result up to float rounding (same scales, same noise)."""
    model = load_model(name)
    cfg = SamplingConfig(samples=10, steps=4, calib_samples=4, progress=False)
    q = trtq.quantize(copy.deepcopy(model.denoiser), "w8a8-minmax", calibration_loop(model, cfg))
    labels = balanced_labels(10)
    pipe = DigitsPipeline(model)
    cpu = pipe(labels, num_inference_steps=4, denoiser=q, progress=False)
    model.to("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = pipe(labels, num_inference_steps=4, denoiser=q.to("cuda"), progress=False)
    assert gpu.device.type == "cpu"
    # A value on a rounding boundary can land one INT8 step apart between devices; most pixels agree tightly.
    close = (gpu - cpu).abs() < 1e-3
    assert close.float().mean() > 0.99
    assert ((gpu - cpu).norm() / cpu.norm()).item() < 0.02
