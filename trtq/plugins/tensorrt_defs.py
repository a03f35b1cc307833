"""`tensorrt.plugin` registrations of the trtq nodes: a thin shell over `specs` (shapes) and the torch ops.

Imported by `trtq.plugins.register()` only where the real TensorRT bindings (>= 10.9) are installed. Nothing
here has run: TensorRT cannot be installed on the machines this was written on (see docs/tensorrt.md for what
is verified where). The logic it calls (attribute parsing, shape rules, the kernels through the torch ops) is
tested without TensorRT.

Implementation: `impl` (JIT, Python at run time) calls the torch op, which runs the same Triton kernels as
the launch plans. An `aot_impl` (PTX in the engine, no Python at run time) needs kernels whose parameters
come in TensorRT's order (inputs, int32 extra arguments, outputs) and plans of one kernel without workspace
(`LaunchPlan.aot_ready`); the exporter therefore writes `aot = 0` on the nodes until those entry kernels
exist. Autotune: the formats and the tile configs of the plans are the tactics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorrt as trt
import tensorrt.plugin as trtp  # type: ignore[import-not-found]
import torch

import trtq.ops.fp4_gemm  # noqa: F401  (registers torch.ops.trtq.fp4_group_gemm)
import trtq.ops.winograd_conv  # noqa: F401  (registers torch.ops.trtq.winograd_conv_int8)
from trtq.plugins.plans import FP4_GEMM_CONFIGS, WINOGRAD_GEMM_CONFIGS
from trtq.plugins.specs import FP4GemmAttrs, WinogradAttrs

_FLOAT = "FP32|FP16|BF16"


def _torch(t: Any) -> torch.Tensor:
    return torch.as_tensor(t, device="cuda")


def _attrs_dict(**kwargs: Any) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}


# --------------------------------------------------------------------------------------- WinogradConvInt8
@trtp.register("trtq::WinogradConvInt8")
def winograd_desc(x: trtp.TensorDesc, w_int8: trtp.TensorDesc, w_scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                  at: trtp.TensorDesc, bt: trtp.TensorDesc, act_scale: trtp.TensorDesc, tile: int,
                  pads: np.ndarray, group_size: int, act_granularity: str) -> trtp.TensorDesc:
    attrs = WinogradAttrs.parse(_attrs_dict(tile=tile, pads=pads, group_size=group_size,
                                            act_granularity=act_granularity))
    out = x.like()
    ph, pw = attrs.pads
    out.shape_expr[1] = w_int8.shape_expr[2]
    out.shape_expr[2] = x.shape_expr[2] + (2 * ph - 2)
    out.shape_expr[3] = x.shape_expr[3] + (2 * pw - 2)
    return out


@trtp.autotune("trtq::WinogradConvInt8")
def winograd_autotune(x, w_int8, w_scale, bias, at, bt, act_scale, outputs) -> list:
    c = trtp.AutoTuneCombination()
    c.pos([0, 7], _FLOAT)  # x and the output share their float type
    c.pos([1], "INT8")
    c.pos([2, 3, 4, 5, 6], "FP32")
    c.tactics(list(range(1, len(WINOGRAD_GEMM_CONFIGS) + 1)))
    return [c]


@trtp.impl("trtq::WinogradConvInt8")
def winograd_impl(x, w_int8, w_scale, bias, at, bt, act_scale, tile: int, pads: np.ndarray, group_size: int,
                  act_granularity: str, outputs, stream: int, tactic: int) -> None:
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y = torch.ops.trtq.winograd_conv_int8(_torch(x), _torch(w_int8), _torch(w_scale), _torch(bias), _torch(at),
                                              _torch(bt), int(tile), [int(p) for p in pads], int(group_size),
                                              str(act_granularity), _torch(act_scale))
        _torch(outputs[0]).copy_(y)


# --------------------------------------------------------------------------------------- FP4GroupGemm
@trtp.register("trtq::FP4GroupGemm")
def fp4_desc(x: trtp.TensorDesc, weight_packed: trtp.TensorDesc, weight_scale: trtp.TensorDesc,
             weight_tensor_scale: trtp.TensorDesc, bias: trtp.TensorDesc, act_scale: trtp.TensorDesc,
             weight_format: str, act_format: str, group_size: int, scale_format: str,
             act_clip: float) -> trtp.TensorDesc:
    FP4GemmAttrs.parse(_attrs_dict(weight_format=weight_format, act_format=act_format, group_size=group_size,
                                   scale_format=scale_format, act_clip=act_clip))
    out = x.like()
    out.shape_expr[x.ndim - 1] = weight_packed.shape_expr[0]
    return out


@trtp.autotune("trtq::FP4GroupGemm")
def fp4_autotune(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, outputs) -> list:
    c = trtp.AutoTuneCombination()
    c.pos([0, 6], "FP16|BF16")
    c.pos([1, 2], "UINT8|FP32")  # packed codes; FP32 scales or FP8 scale codes
    c.pos([3, 4, 5], "FP32")
    c.tactics(list(range(1, len(FP4_GEMM_CONFIGS) + 1)))
    return [c]


@trtp.impl("trtq::FP4GroupGemm")
def fp4_impl(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, weight_format: str,
             act_format: str, group_size: int, scale_format: str, act_clip: float, outputs, stream: int,
             tactic: int) -> None:
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y = torch.ops.trtq.fp4_group_gemm(_torch(x), _torch(weight_packed), _torch(weight_scale),
                                          _torch(weight_tensor_scale), _torch(bias), _torch(act_scale),
                                          str(weight_format), str(act_format), int(group_size), str(scale_format),
                                          float(act_clip))
        _torch(outputs[0]).copy_(y)


__all__ = ["trt", "winograd_desc", "fp4_desc"]
