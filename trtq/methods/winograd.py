"""Method "winograd": fully quantized Winograd convolution with learnable transform scales (arXiv 2412.19867).

Registers the layer kind "winograd" (3x3 stride-1 convs as INT8 Winograd F(m, 3); others fall back to the
recipe's next rule) and the method that learns the transform scales data-free before calibration.
"""

from __future__ import annotations

from trtq.errors import TrtqError
from trtq.methods import register_method
from trtq.nn.modules import register_layer_kind
from trtq.winograd.layer import WinogradQuantConv2d

register_layer_kind("winograd", {"Conv2d": WinogradQuantConv2d})

# tile_sample / channel_sample: each step learns on that many random tiles and output channels per layer
# (null: all of them). A step on a 1280-channel SD 1.5 conv took 14-40 s with every tile and channel of the
# Gaussian batch on a 2-core CPU, 0.5 s with 16 tiles x 128 channels (docs/real-size.md).
DEFAULTS = {"steps": 300, "lr": 0.05, "layers_per_step": 2, "shared": True, "seed": 0, "progress": True,
            "tile_sample": 16, "channel_sample": 128}


def _args(method_args: dict) -> dict:
    unknown = set(method_args) - set(DEFAULTS)
    if unknown:
        raise TrtqError(f"unknown winograd method_args {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    args = {**DEFAULTS, **method_args}
    for k, least in (("steps", 0), ("layers_per_step", 1), ("seed", 0)):
        if isinstance(args[k], bool) or not isinstance(args[k], int) or args[k] < least:
            raise TrtqError(f"winograd method_args {k} must be an integer >= {least}, got {args[k]!r}")
    for k in ("tile_sample", "channel_sample"):
        v = args[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise TrtqError(f"winograd method_args {k} must be an integer >= 1 or null (all), got {v!r}")
    if isinstance(args["lr"], bool) or not isinstance(args["lr"], (int, float)) or args["lr"] <= 0:
        raise TrtqError(f"winograd method_args lr must be a positive number, got {args['lr']!r}")
    for k in ("shared", "progress"):
        if not isinstance(args[k], bool):
            raise TrtqError(f"winograd method_args {k} must be true or false, got {args[k]!r}")
    return args


@register_method("winograd")
def learn_winograd_scales(model, recipe, calib_loop=None) -> dict:
    """Learn S_B, S_G for every Winograd layer of `model` (Gaussian inputs, no data) into its buffers."""
    from trtq.winograd.learn import learn_transform_scales

    args = _args(recipe.method_args)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, WinogradQuantConv2d)}
    stats = learn_transform_scales(layers, **args)
    model.trtq_winograd_stats = stats  # how long learning took, for reports
    return stats
