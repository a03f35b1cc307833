"""Checks that need a CUDA GPU (run on the lent GPU machine with `pytest -m gpu`; skipped elsewhere)."""

import copy

import pytest
import torch

import trtq
from trtq.eval.evaluate import SamplingConfig, calibration_loop
from trtq.zoo import load_model

pytestmark = pytest.mark.gpu


def _cpu_vs_cuda(name: str, recipe: str, atol: float = 1e-3):
    """One denoiser forward with a quantized model on the CPU and on CUDA (same scales, same inputs)."""
    model = load_model(name)
    cfg = SamplingConfig(samples=4, steps=2, calib_samples=2, progress=False)
    q = trtq.quantize(copy.deepcopy(model.denoiser), recipe, calibration_loop(model, cfg)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, model.sample_size, model.sample_size, generator=gen)
    labels = torch.tensor([0, 3, 7, model.num_classes])
    with torch.no_grad():
        cpu = model.predict_noise(x, 400, labels, denoiser=q)
        model.to("cuda")
        gpu = model.predict_noise(x.cuda(), 400, labels.cuda(), denoiser=q.to("cuda")).cpu()
    rel = ((gpu - cpu).norm() / cpu.norm()).item()
    assert torch.isfinite(gpu).all()
    assert rel < 0.02, rel


@pytest.mark.parametrize("name", ["digits-unet", "digits-dit"])
def test_w8a8_zoo_model_on_cuda_matches_cpu(name):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _cpu_vs_cuda(name, "w8a8-minmax")


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_winograd_op_on_cuda_equals_cpu_exactly_where_the_transform_is_exact(tile):
    """Integer-valued inputs make B^T d B exact in fp32 on both devices, so the INT8 codes, and the INT8
    GEMMs, are identical: only the float dequantization and output transform may differ by rounding.
    (On real activations a last-bit difference can flip an INT8 code; that is not a kernel error.)"""
    from torch import nn

    from trtq import LayerRule, QuantScheme, Recipe

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(tile)
    conv = nn.Conv2d(64, 32, 3, padding=1)
    g = 32
    recipe = Recipe(name="wino", rules=(LayerRule(
        types=("Conv2d",), layer="winograd", layer_args={"tile": tile, "group_size": g},
        weight=QuantScheme(format="int8", granularity="group", axis=1, group_size=g),
        input=QuantScheme(format="int8", granularity="group", axis=1, group_size=g, dynamic=True)),))
    model = trtq.quantize(nn.Sequential(conv), recipe).eval()
    x = torch.randint(-3, 4, (2, 64, 13, 11)).float()
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to("cuda")(x.cuda()).cpu()
    assert ((gpu - cpu).norm() / cpu.norm()).item() < 1e-5


@pytest.mark.parametrize("recipe", ["w4a4-fp4-minmax", "w4a4-nvfp4"])
def test_fp4_op_on_cuda_matches_cpu(recipe):
    torch.backends.cuda.matmul.allow_tf32 = False
    _cpu_vs_cuda("digits-dit", recipe)


# --- Winograd INT8 conv: the Triton kernels on CUDA (issue 7) ------------------------------------------------

def test_winograd_kernel_checks_run_on_cuda():
    """The interpreter checks of tests/test_kernels_winograd.py, on the GPU (its DEVICE is cuda there)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_kernels_winograd.py"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:]


@pytest.mark.parametrize("tile", [4, 6])
def test_winograd_layer_compiles_into_the_triton_kernels_without_graph_breaks(tile):
    from torch import nn

    from trtq import LayerRule, QuantScheme, Recipe

    torch.manual_seed(0)
    g = 32
    recipe = Recipe(name="wino", rules=(LayerRule(
        types=("Conv2d",), layer="winograd", layer_args={"tile": tile, "group_size": g},
        weight=QuantScheme(format="int8", granularity="group", axis=1, group_size=g),
        input=QuantScheme(format="int8", granularity="group", axis=1, group_size=g, dynamic=True)),))
    model = trtq.quantize(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 32, 3, padding=1)),
                          recipe).eval().cuda().half()
    x = torch.randn(2, 64, 30, 22, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = model(x)
        explained = torch._dynamo.explain(model)(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert explained.graph_break_count == 0
    assert ((compiled.float() - eager.float()).norm() / eager.float().norm()).item() < 1e-3


def test_winograd_zoo_unet_sampled_with_kernels_vs_reference_on_cuda(capsys):
    """digits-unet with w8a8-winograd-f43, sampled on CUDA with the Triton kernels and with the reference op:
    PSNR between the two sample sets (reported; the kernels may flip INT8 codes sitting on rounding ties, so
    the two are close, not equal)."""
    from trtq.eval.evaluate import quantized_denoiser, QuantSpec
    from trtq.eval.metrics import psnr_db
    from trtq.ops import winograd_conv
    from trtq.pipeline import DigitsPipeline, balanced_labels

    model = load_model("digits-unet")
    cfg = SamplingConfig(samples=16, steps=10, calib_samples=8, progress=False)
    q = quantized_denoiser(model, QuantSpec(recipe="w8a8-winograd-f43"), cfg).cuda().eval()
    model.to("cuda")
    pipe = DigitsPipeline(model, denoiser=q)
    labels = balanced_labels(16, model.num_classes)
    kernels = pipe(labels, num_inference_steps=10, seed=0, progress=False)
    saved = winograd_conv._kernels
    winograd_conv._kernels = None  # the op falls back to the reference on CUDA tensors
    try:
        reference = pipe(labels, num_inference_steps=10, seed=0, progress=False)
    finally:
        winograd_conv._kernels = saved
    psnr = psnr_db(kernels, reference)
    with capsys.disabled():
        print(f"\ndigits-unet w8a8-winograd-f43 on CUDA: kernels vs reference PSNR {psnr:.2f} dB")
    assert torch.isfinite(kernels).all() and psnr > 35


def test_divide_based_scales_are_equal_on_cuda_and_cpu():
    """trtq.quantizer.divide makes amax / 127 the IEEE quotient on both devices (CUDA divides by a Python
    scalar as a multiplication by its reciprocal); re-checked on the GPU, for the quantizer and for the
    Winograd input scales the kernels compute with div_rn."""
    from trtq.kernels import winograd as wk
    from trtq.quantizer import symmetric_scale
    from trtq.winograd.conv import transform_input
    from trtq.winograd.quant import act_scales
    from trtq.winograd.transforms import winograd_matrices

    amax = torch.rand(1 << 20) * torch.logspace(-6, 6, 1 << 20)
    assert torch.equal(symmetric_scale(amax.cuda(), 127.0).cpu(), symmetric_scale(amax, 127.0))
    at, _, bt = winograd_matrices(4)
    x = torch.randint(-50, 51, (2, 64, 17, 13)).float()  # exact transforms: the amaxes are equal
    v, grid = transform_input(x, bt, 4, (1, 1))
    cpu = act_scales(v, 32, "group", grid).reshape(1, 2, -1)  # [1, G, P (tile row, image, tile col)]
    _, sa, _ = wk.input_stage(x.cuda(), bt.cuda(), 4, (1, 1), 32, "group", None)
    gpu = sa.cpu().reshape(grid.batch, grid.tiles_h, grid.tiles_w, 2).permute(3, 1, 0, 2).reshape(1, 2, -1)
    assert torch.equal(gpu, cpu)


# --- FP4 group GEMM: the Triton kernels on CUDA (issue 8) ----------------------------------------------------

@pytest.mark.parametrize("recipe", ["w4a8-fp4", "w4a4-nvfp4"])
def test_fp4_kernels_sample_like_the_reference(recipe):
    """digits-dit sampled on CUDA with the Triton kernels and with the PyTorch reference (same scales, same
    noise): the images agree (PSNR printed; -s shows it). Only rounding differs (FMA contraction, MMA
    accumulation), and a flipped activation code here and there along the sampling trajectory."""
    from trtq.eval.metrics import psnr_db
    from trtq.ops.fp4_gemm import reference_only
    from trtq.pipeline import DigitsPipeline, balanced_labels

    model = load_model("digits-dit")
    cfg = SamplingConfig(samples=4, steps=2, calib_samples=2, progress=False)
    q = trtq.quantize(copy.deepcopy(model.denoiser), recipe, calibration_loop(model, cfg)).eval()
    model.to("cuda")
    q.to("cuda")
    pipe = DigitsPipeline(model)
    labels = balanced_labels(20, model.num_classes)
    kernels = pipe(labels, num_inference_steps=10, seed=0, progress=False, denoiser=q)
    with reference_only():
        ref = pipe(labels, num_inference_steps=10, seed=0, progress=False, denoiser=q)
    psnr = psnr_db(kernels, ref)
    print(f"{recipe}: kernels vs reference PSNR {psnr:.1f} dB")
    assert torch.isfinite(kernels).all() and psnr > 35, psnr


def test_fp4_op_compiles_into_the_triton_kernels():
    """torch.compile traces into trtq::fp4_group_gemm on CUDA (triton_op): no graph break, same numbers."""
    from torch import nn

    from trtq import QuantScheme
    from trtq.nn.fp4_linear import FP4Linear

    torch.manual_seed(0)
    w = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=32)
    a = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=32, dynamic=True)
    layer = FP4Linear.from_float(nn.Linear(256, 128), w, a, group_size=32).eval().cuda()
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        eager = layer(x)
        compiled = torch.compile(layer, fullgraph=True)(x)
    assert ((compiled.float() - eager.float()).norm() / eager.float().norm()).item() < 1e-2
