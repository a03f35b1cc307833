"""`tensorrt.plugin` registrations of the trtq nodes: a thin shell over `specs` (shapes) and the torch ops.

Imported by `trtq.plugins.register()` only where the real TensorRT bindings (>= 10.9) are installed. Nothing
here has run: TensorRT cannot be installed on the machines this was written on (see docs/tensorrt.md for what
is verified where). The logic it calls (attribute parsing, shape rules, the kernels through the torch ops) is
tested without TensorRT.

Implementations: `impl` (JIT, Python at run time) calls the torch op, which runs the same Triton kernels as
the launch plans. `aot_impl` (PTX in the engine, no Python at run time) exists for FP4GroupGemm nodes that run
as one kernel without workspace (`trtq.plugins.plans.fp4_aot_plan`: W4A16, or activations quantized in the
GEMM's A-load); the exporter marks exactly those nodes `aot = 1`. Its kernel, `fp4_gemm_plugin_entry`, takes
its parameters in TensorRT's order (inputs, int32 extra arguments M and N, output); the plan is checked in
Triton's interpreter in CI. Triton >= 3.3 appends two scratch-pointer parameters to every kernel (unused
here); whether TensorRT's AOT launch supplies them is not verified. Winograd nodes are JIT only (two kernels
and a workspace). Absent optional inputs (bias, act_scale, weight_tensor_scale) are read from the node's
`inputs_present` attribute, the exporter's record of which inputs are present; whether TensorRT's parser
hands a QDP plugin empty optional inputs is not verified. Autotune: the formats and the tile configs of the plans are the tactics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorrt as trt
import tensorrt.plugin as trtp  # type: ignore[import-not-found]
import torch

import trtq.ops.fp4_gemm  # noqa: F401  (registers torch.ops.trtq.fp4_group_gemm)
import trtq.ops.winograd_conv  # noqa: F401  (registers torch.ops.trtq.winograd_conv_int8)
from trtq.plugins.plans import FP4_GEMM_CONFIGS, WINOGRAD_GEMM_CONFIGS, fp4_aot_plan
from trtq.plugins.specs import FP4GemmAttrs, WinogradAttrs, fp4_output_shape, winograd_output_shape

_FLOAT = "FP32|FP16|BF16"


def _torch(t: Any) -> torch.Tensor:
    return torch.as_tensor(t, device="cuda")


def _present(inputs_present: str, n: int) -> tuple[bool, ...]:
    """Which of the node's n formal inputs are present (the exporter's `inputs_present` attribute, "1101..")."""
    if len(inputs_present) != n or set(inputs_present) - {"0", "1"}:
        raise ValueError(f"inputs_present {inputs_present!r} should be {n} characters of 0/1")
    return tuple(c == "1" for c in inputs_present)


def _maybe(t: Any, present: bool) -> torch.Tensor | None:
    return _torch(t) if present else None


def _like(x: Any, shape: tuple) -> Any:
    """x's descriptor (dtype, format) with the shape `specs` computed from the inputs' shape expressions."""
    out = x.like()
    for i, dim in enumerate(shape):
        out.shape_expr[i] = dim
    return out


# --------------------------------------------------------------------------------------- WinogradConvInt8
@trtp.register("trtq::WinogradConvInt8")
def winograd_desc(x: trtp.TensorDesc, w_int8: trtp.TensorDesc, w_scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                  at: trtp.TensorDesc, bt: trtp.TensorDesc, act_scale: trtp.TensorDesc, tile: int,
                  pads: np.ndarray, group_size: int, act_granularity: str, inputs_present: str) -> trtp.TensorDesc:
    attrs = WinogradAttrs.parse(dict(tile=tile, pads=pads, group_size=group_size, act_granularity=act_granularity))
    return _like(x, winograd_output_shape(list(x.shape_expr), list(w_int8.shape_expr), attrs))


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
                  act_granularity: str, inputs_present: str, outputs, stream: int, tactic: int) -> None:
    has = _present(inputs_present, 7)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y = torch.ops.trtq.winograd_conv_int8(_torch(x), _torch(w_int8), _torch(w_scale), _maybe(bias, has[3]),
                                              _torch(at), _torch(bt), int(tile), [int(p) for p in pads],
                                              int(group_size), str(act_granularity), _maybe(act_scale, has[6]))
        _torch(outputs[0]).copy_(y)


# --------------------------------------------------------------------------------------- FP4GroupGemm
@trtp.register("trtq::FP4GroupGemm")
def fp4_desc(x: trtp.TensorDesc, weight_packed: trtp.TensorDesc, weight_scale: trtp.TensorDesc,
             weight_tensor_scale: trtp.TensorDesc, bias: trtp.TensorDesc, act_scale: trtp.TensorDesc,
             weight_format: str, act_format: str, group_size: int, scale_format: str,
             act_clip: float, inputs_present: str) -> trtp.TensorDesc:
    FP4GemmAttrs.parse(dict(weight_format=weight_format, act_format=act_format, group_size=group_size,
                            scale_format=scale_format, act_clip=act_clip))
    return _like(x, fp4_output_shape(list(x.shape_expr), list(weight_packed.shape_expr)))


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
             act_format: str, group_size: int, scale_format: str, act_clip: float, inputs_present: str, outputs,
             stream: int, tactic: int) -> None:
    has = _present(inputs_present, 6)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y = torch.ops.trtq.fp4_group_gemm(_torch(x), _torch(weight_packed), _torch(weight_scale),
                                          _maybe(weight_tensor_scale, has[3]), _maybe(bias, has[4]),
                                          _maybe(act_scale, has[5]),
                                          str(weight_format), str(act_format), int(group_size), str(scale_format),
                                          float(act_clip))
        _torch(outputs[0]).copy_(y)


_TRT_DTYPES = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16", trt.int8: "int8",
               trt.uint8: "uint8"}


@trtp.aot_impl("trtq::FP4GroupGemm")
def fp4_aot_impl(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, weight_format: str,
                 act_format: str, group_size: int, scale_format: str, act_clip: float, inputs_present: str,
                 outputs, tactic: int) -> tuple:
    has = _present(inputs_present, 6)
    attrs = FP4GemmAttrs.parse(dict(weight_format=weight_format, act_format=act_format, group_size=group_size,
                                    scale_format=scale_format, act_clip=act_clip))
    # The plan needs concrete sizes for K and N (constexprs / weights, fixed); M is symbolic: plan with M = 1
    # and take the grid's N part from the plan, the M part from TensorRT's expression.
    k, n = 2 * weight_packed.shape_expr[1].constant_value, weight_packed.shape_expr[0].constant_value
    plan = fp4_aot_plan(attrs, (1, k), (n, k // 2), _TRT_DTYPES[x.dtype], has[4], has[3], has[5],
                        tactic=max(tactic - 1, 0))
    launch = plan.launches[0]
    major, minor = torch.cuda.get_device_capability()
    compiled = launch.compile(plan.buffers, 10 * major + minor)
    m = x.shape_expr[0]
    for i in range(1, x.ndim - 1):
        m = m * x.shape_expr[i]
    block_m, block_n = launch.constexprs["BLOCK_M"], launch.constexprs["BLOCK_N"]
    params = trtp.KernelLaunchParams()
    params.grid_x = trtp.cdiv(m, block_m) * ((n + block_n - 1) // block_n)
    params.block_x = compiled.metadata.num_warps * 32
    params.shared_mem = compiled.metadata.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(m), trtp.SymInt32(n)])
    return compiled.metadata.name.encode(), compiled.asm["ptx"].encode(), params, extra


__all__ = ["trt", "winograd_desc", "fp4_desc", "fp4_aot_impl"]
