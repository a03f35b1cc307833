"""LoRA and quantization: fuse the LoRA into the float weights, then quantize (docs/runtime.md). Quantizing a
model whose LoRA is still a separate branch is refused: the branch would stay float and unquantized, and the
artifact would not hold it."""

from __future__ import annotations

import copy

import pytest
import torch

import trtq
from trtq.errors import TrtqError

peft = pytest.importorskip("peft")

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _lora_unet():
    from trtq.zoo import load_model

    model = load_model("digits-unet")
    unet = copy.deepcopy(model.denoiser).eval()
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the adapter changes the output (the default B = 0 would not)
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False))
    return model, unet


def _inputs(model):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, model.denoiser.config.in_channels, model.denoiser.config.sample_size,
                    model.denoiser.config.sample_size, generator=gen)
    return x, torch.tensor([900, 600, 300, 50]), torch.tensor([1, 4, 7, 9])


def test_fuse_then_quantize_keeps_the_lora_in_the_quantized_weights():
    from trtq.eval.evaluate import SamplingConfig, calibration_loop

    model, unet = _lora_unet()
    x, t, labels = _inputs(model)
    with torch.no_grad():
        base = model.predict_noise(x, t, labels)
        with_lora = model.predict_noise(x, t, labels, denoiser=unet)
    assert (with_lora - base).abs().max() > 1e-2  # the adapter matters

    unet.fuse_lora()
    unet.unload_lora()
    assert not any("lora" in type(m).__module__ for m in unet.modules())  # plain layers again
    with torch.no_grad():
        fused = model.predict_noise(x, t, labels, denoiser=unet)
    torch.testing.assert_close(fused, with_lora, rtol=1e-4, atol=1e-4)

    q = trtq.quantize(copy.deepcopy(unet), "w8a8-minmax",
                      calibration_loop(model, SamplingConfig(calib_samples=4, steps=4, progress=False)))
    with torch.no_grad():
        out = model.predict_noise(x, t, labels, denoiser=q)
    # the quantized model is the fused one, up to W8A8's error: at least twice as close to it as to the base
    assert (out - fused).norm() < 0.5 * (out - base).norm()


def test_quantizing_an_unfused_lora_is_refused_with_the_remedy():
    _, unet = _lora_unet()
    with pytest.raises(TrtqError, match="fuse_lora"):
        trtq.prepare(unet, "w8a8-minmax")
    assert any("lora" in type(m).__module__ for m in unet.modules())  # left as it was
