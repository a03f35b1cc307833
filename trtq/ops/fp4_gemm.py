"""`trtq::fp4_group_gemm`: the W4A4 (or W4A8 / W4A16) group-wise FP4 linear, as a torch custom op.

Contract (what a GPU kernel or TensorRT plugin must reproduce):

    y = fp4_group_gemm(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale,
                       weight_format, act_format, group_size, scale_format, act_clip)

Inputs
- x: [..., K] float (any float dtype; the result has x's dtype). Rows are x.reshape(-1, K), taken to FP32.
- weight_packed: uint8 [N, K/2], 4-bit codes of `weight_format` (fp4_e2m1 | fp4_e3m0 | fp4_e1m2), two per
  byte along K, low nibble first (element 2i in bits 0-3, 2i+1 in bits 4-7). Every value of the three FP4
  formats is exact in FP8 E4M3.
- weight_scale: [N, K/g] one scale per (output row, group of g along K). FP32 when scale_format is
  "float32"; uint8 FP8-E4M3 codes when scale_format is "fp8_e4m3" (then weight_tensor_scale, a 0-d FP32
  tensor, multiplies every scale: NVFP4's double quant).
- bias: [N] or None.
- group_size g: 16, 32, 64, 128, or K itself (one group per row: per-channel weight scales, per-token
  activation scales). K % g == 0.
- act_format: "none" (activations stay float: W4A16), an FP4 format (W4A4) or "fp8_e4m3" (W4A8).
- act_scale: a float [K/g] tensor of static scales shared by all rows (FP8-rounded already if the recipe
  asked for it), or None = dynamic scales computed here, per row (below). act_clip in (0, 1].

Activation quantization (per row r, group i; all arithmetic FP32, divisions IEEE round-to-nearest-even)
- Dynamic scale: s = (act_clip · amax) / fmt_max, amax = max |x| over the group's g values; s = 1 for an
  all-zero group (any scale quantizes zeros exactly).
- Dynamic with scale_format "fp8_e4m3" (NVFP4): each row is double-quantized on its own. Its FP32 scale
  t_r = max_i s_i / 448 over the groups that are not all zero (t_r = 1 for an all-zero row); the FP8 scale
  v_i = E4M3(s_i / t_r), rounded half-to-even, saturating at 448, held at least 2^-9 (the smallest positive
  E4M3 value; all-zero groups get it); the group quantizes with v_i · t_r. Per row and not per call, so a
  row's (an image's) result never depends on the other rows of the batch.
- Codes: q = round_fmt(clamp(x / scale, ±fmt_max)), round_fmt rounding half-to-even onto the format grid
  (`FloatFormat.round`; saturating). q is a value of the format, hence exact in E4M3.

Accumulation (the Hopper plan; Hopper and Ada have no FP4 MMA)
- For each K-block i = one group, in increasing i: P_i[m, n] = Σ_k q[m, k] · w[n, k] in FP32 over the
  group's k (w: the weight code's value, unscaled), then acc ← acc + P_i · (sa[m, i] · sw[n, i]), the scale
  product first (sa: the activation scale, v_i for FP8 scales, 1 for "none"; sw: the FP32 weight scale or the
  E4M3 value of its code). With group_size = K this is one block: y = P · (sa · sw).
- Epilogue: y = acc · (t_r · t_w) (t_r: the per-row FP32 scale of dynamic FP8 scales, else 1; t_w: the
  weight tensor scale, else 1), + bias, rounded to x's dtype (half-to-even).
- Exactness: an FP4 or E4M3 value times an FP4 value is exact in FP32, and for W4A4 every partial sum of a
  block is a multiple of the smallest product quantum (2^-4) below 2^19 of them, so P_i is exact in any
  summation order. For W4A8 / W4A16, P_i depends on the summation order (rounding of FP32 sums).

Tolerance of a faithful implementation: identical activation codes and scales; y within
‖y − y_ref‖ / ‖y_ref‖ ≤ 1e-5 (FP32 out), from fusing acc + P·s into one FMA (one rounding instead of two
per block), the MMA's summation order for W4A8 / W4A16, and a tensor core's internal accumulation.

This reference runs on CPU and CUDA tensors alike. Where Triton is installed, CUDA tensors run the Triton
kernels of `trtq.kernels.fp4_gemm` (registered with `torch.library.triton_op`, so `torch.compile` traces
into them); CPU tensors always run this reference.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

import torch

from trtq.errors import TrtqError
from trtq.fp4 import ACT_FORMATS, FP4_FORMATS, FP32_SCALES, GROUP_SIZES, code_values, dynamic_act_scales, \
    quantize_groups
from trtq.formats import unpack_4bit

try:
    import triton  # noqa: F401
except ImportError:  # `import trtq` works without Triton: CUDA tensors then run the reference
    triton = None


_state = threading.local()


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Run the PyTorch reference on CUDA tensors too (kernels-vs-reference checks; eager mode only)."""
    previous = getattr(_state, "reference_only", False)
    _state.reference_only = True
    try:
        yield
    finally:
        _state.reference_only = previous


def check_args(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
               weight_tensor_scale: Optional[torch.Tensor], act_scale: Optional[torch.Tensor], weight_format: str,
               act_format: str, group_size: int, scale_format: str, act_clip: float) -> None:
    k = weight_packed.shape[1] * 2
    if x.shape[-1] != k:
        raise TrtqError(f"fp4_group_gemm: x has K = {x.shape[-1]}, the packed weights K = {k}")
    if group_size not in GROUP_SIZES and group_size != k or k % group_size:
        raise TrtqError(f"fp4_group_gemm: group_size {group_size} must be one of {GROUP_SIZES} dividing K = {k}, "
                        f"or K itself")
    if weight_format not in FP4_FORMATS or act_format not in ACT_FORMATS + ("none",):
        raise TrtqError(f"fp4_group_gemm: weight format {weight_format!r} (known {FP4_FORMATS}), activation "
                        f"format {act_format!r} (known {ACT_FORMATS + ('none',)})")
    if scale_format not in (FP32_SCALES, "fp8_e4m3") or (scale_format != FP32_SCALES) != (
            weight_tensor_scale is not None):
        raise TrtqError(f"fp4_group_gemm: scale_format {scale_format!r} must be 'float32' (no weight tensor "
                        f"scale) or 'fp8_e4m3' (with one)")
    if tuple(weight_scale.shape) != (weight_packed.shape[0], k // group_size):
        raise TrtqError(f"fp4_group_gemm: weight_scale shape {tuple(weight_scale.shape)}, expected "
                        f"{(weight_packed.shape[0], k // group_size)}")
    if act_scale is not None and act_scale.numel() != k // group_size:
        raise TrtqError(f"fp4_group_gemm: act_scale has {act_scale.numel()} scales, expected K/g = {k // group_size}")
    if not 0.0 < act_clip <= 1.0:
        raise TrtqError(f"fp4_group_gemm: act_clip must lie in (0, 1], got {act_clip}")


def reference(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
              weight_tensor_scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              act_scale: Optional[torch.Tensor], weight_format: str, act_format: str, group_size: int,
              scale_format: str, act_clip: float) -> torch.Tensor:
    """The contract above, step by step, in PyTorch."""
    check_args(x, weight_packed, weight_scale, weight_tensor_scale, act_scale, weight_format, act_format,
               group_size, scale_format, act_clip)
    g = group_size
    n, k = weight_packed.shape[0], weight_packed.shape[1] * 2
    groups = k // g
    rows = x.reshape(-1, k).float()
    m = rows.shape[0]

    w_vals = code_values(weight_format, x.device)[unpack_4bit(weight_packed).long()]  # [N, K], unscaled
    if scale_format == FP32_SCALES:
        w_scale, w_tensor = weight_scale.float(), 1.0
    else:
        w_scale = code_values(scale_format, x.device)[weight_scale.long()]
        w_tensor = weight_tensor_scale.float()

    a_tensor = 1.0
    if act_format == "none":
        a_vals, a_scale = rows, torch.ones(m, groups, device=x.device)
    else:
        if act_scale is None:
            a_scale, row_scale = dynamic_act_scales(rows, act_format, g, act_clip, scale_format)
            if row_scale is not None:
                a_tensor = row_scale  # [M, 1]
        else:
            a_scale = act_scale.float().reshape(1, groups).expand(m, groups)
        a_vals = quantize_groups(rows, a_scale * a_tensor, act_format, g)

    # One K-block per group: the FP32 partial dot of unscaled values, then its scales (a weight value times
    # its FP32 scale is not exact in general, e.g. E1M2's 3.5 = 1.11b times a 24-bit scale).
    w_blocks = w_vals.T.reshape(groups, g, n)
    a_blocks = a_vals.reshape(m, groups, g).transpose(0, 1)  # [G, M, g]
    acc = torch.zeros(m, n, device=x.device, dtype=torch.float32)
    for i in range(groups):
        partial = a_blocks[i] @ w_blocks[i]
        acc = acc + partial * (a_scale[:, i : i + 1] * w_scale[:, i][None, :])
    out = acc * (a_tensor * w_tensor)
    if bias is not None:
        out = out + bias.float()
    return out.reshape(*x.shape[:-1], n).to(x.dtype)


def _fake(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, weight_format, act_format,
          group_size, scale_format, act_clip):
    return x.new_empty(*x.shape[:-1], weight_packed.shape[0])


if triton is None:
    fp4_group_gemm = torch.library.custom_op("trtq::fp4_group_gemm", reference, mutates_args=())
else:
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    from trtq.kernels import fp4_gemm as kernels

    def _cuda_or_reference(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                           weight_tensor_scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                           act_scale: Optional[torch.Tensor], weight_format: str, act_format: str, group_size: int,
                           scale_format: str, act_clip: float) -> torch.Tensor:
        args = (x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, weight_format, act_format,
                group_size, scale_format, act_clip)
        if x.device.type != "cuda" or getattr(_state, "reference_only", False):
            return reference(*args)
        check_args(*args[:4], *args[5:])
        return kernels.fp4_group_gemm(*args)

    fp4_group_gemm = torch.library.triton_op("trtq::fp4_group_gemm", _cuda_or_reference, mutates_args=())
    fp4_group_gemm.register_kernel("cpu", reference)
    # triton_op inlines the function under torch.compile for every device. Inline it for CUDA only (the graph
    # then holds the Triton kernels); elsewhere the op stays one opaque node running the reference, which
    # builds lookup tables from data and so cannot be traced.
    _inline = fp4_group_gemm._torch_dispatch_fns[FunctionalTensorMode]

    def _inline_cuda_only(mode, op, types, args, kwargs):
        if args[0].device.type == "cuda":
            return _inline(mode, op, types, args, kwargs)
        return mode.__torch_dispatch__(op, types, args, kwargs)

    fp4_group_gemm.register_torch_dispatch(FunctionalTensorMode, _inline_cuda_only)

# Shapes only (triton_op would trace the whole function on fake tensors).
fp4_group_gemm.register_fake(_fake)
