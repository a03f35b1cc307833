"""Outside baselines that trtq's recipes are measured against (not trtq recipes; never saved as artifacts).

`modelopt-int8` is nvidia-modelopt's INT8_DEFAULT_CFG (INT8 weights per output channel, activations per
tensor, max calibration), the configuration its TensorRT deployment path uses for INT8 diffusion models.
`modelopt-fp8` is its FP8_DEFAULT_CFG (E4M3 per tensor); it runs as fake quantization on any device.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from trtq.errors import TrtqError

BASELINES = {
    "modelopt-int8": ("INT8_DEFAULT_CFG", "nvidia-modelopt INT8 (weights per channel, activations per tensor, max calib)"),
    "modelopt-fp8": ("FP8_DEFAULT_CFG", "nvidia-modelopt FP8 E4M3 (per tensor, max calib)"),
    "modelopt-nvfp4": ("NVFP4_DEFAULT_CFG", "nvidia-modelopt NVFP4 W4A4 (E2M1, g=16, FP8 scales; needs CUDA)"),
}


def run_baseline(name: str, model: nn.Module, calib_loop: Callable[[nn.Module], None]) -> nn.Module:
    """Quantize `model` in place with an outside baseline, calibrating through `calib_loop`."""
    if name not in BASELINES:
        raise TrtqError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise TrtqError(f"baseline {name} needs nvidia-modelopt: pip install 'trtq[modelopt]'") from None
    import contextlib
    import io
    import warnings

    cfg = getattr(mtq, BASELINES[name][0])
    # modelopt warns about optional integrations (transformers, ...) and prints a quantizer count.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return mtq.quantize(model, cfg, forward_loop=calib_loop)
