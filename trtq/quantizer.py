"""Quantizer primitives: scales from ranges, fake quantization with a straight-through estimator, real codes.

Layout of scales (`scale.shape`), for a tensor x and a scheme:
- tensor:  a 0-d tensor.
- channel: x.shape with every dim but `axis` set to 1 (broadcasts against x).
- group:   x.shape with `axis` divided by the group size. When scales are *shared* (static activations) every
           other dim is 1 as well: one scale per group of channels for all tokens/pixels. Weights and dynamic
           activations keep the other dims: one scale per (row, group).
- token:   x.shape with the last dim set to 1: one scale per row of the last axis (per token of a linear's
           input; dynamic only).
Dynamic (per-call) scales never span two samples: dim 0 is the batch, and a "tensor" scale becomes one scale
per sample, a "channel" scale one per (sample, channel). An image's result then does not depend on the
other images in its batch (classifier-free guidance doubles every batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trtq.errors import TrtqError
from trtq.formats import FloatFormat, IntFormat, get_format, pack_4bit, unpack_4bit
from trtq.scheme import QuantScheme


# --------------------------------------------------------------------------------------- layouts
def _axis(x: torch.Tensor, scheme: QuantScheme) -> int:
    axis = scheme.axis
    if not -x.ndim <= axis < x.ndim:
        raise TrtqError(f"quantization axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    return axis % x.ndim


def check_group_size(x: torch.Tensor, scheme: QuantScheme) -> None:
    if scheme.granularity == "group":
        a = _axis(x, scheme)
        if x.shape[a] % scheme.group_size:
            raise TrtqError(
                f"group size {scheme.group_size} does not divide axis {a} of size {x.shape[a]} "
                f"(tensor shape {tuple(x.shape)}); pick a group size that divides it"
            )


def to_rows(x: torch.Tensor, scheme: QuantScheme, shared: bool) -> torch.Tensor:
    """View x as [K, M]: one row per scale entry, in the order of the scale layout."""
    if scheme.granularity == "tensor":
        return x.reshape(1, -1)
    if scheme.granularity == "token":
        return x.reshape(-1, x.shape[-1])
    a = _axis(x, scheme)
    if scheme.granularity == "channel":
        return x.movedim(a, 0).reshape(x.shape[a], -1)
    check_group_size(x, scheme)
    g = scheme.group_size
    if shared:
        return x.movedim(a, 0).reshape(x.shape[a] // g, -1)
    return x.movedim(a, -1).reshape(-1, g)


def scale_shape(x: torch.Tensor, scheme: QuantScheme, shared: bool) -> tuple[int, ...]:
    if scheme.granularity == "tensor":
        return ()
    if scheme.granularity == "token":
        return (*x.shape[:-1], 1)
    a = _axis(x, scheme)
    n = x.shape[a] if scheme.granularity == "channel" else x.shape[a] // scheme.group_size
    if scheme.granularity == "channel" or shared:
        return tuple(n if d == a else 1 for d in range(x.ndim))
    return tuple(n if d == a else s for d, s in enumerate(x.shape))


def rows_to_scale(values: torch.Tensor, x: torch.Tensor, scheme: QuantScheme, shared: bool) -> torch.Tensor:
    """Reshape a per-row statistic [K] into the scale layout for x."""
    shape = scale_shape(x, scheme, shared)
    if scheme.granularity == "group" and not shared:
        a = _axis(x, scheme)
        moved = list(shape)
        moved.append(moved.pop(a))
        return values.reshape(moved).movedim(-1, a)
    return values.reshape(shape)


def expand_scale(scale: torch.Tensor, x: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """A scale (or zero point) in its layout -> broadcastable against x."""
    if scheme.granularity == "group":
        return scale.repeat_interleave(scheme.group_size, dim=_axis(x, scheme))
    return scale


# --------------------------------------------------------------------------------------- qparams
def divide(x: torch.Tensor, constant: float) -> torch.Tensor:
    """x / constant with IEEE division on every device.

    CUDA divides by a Python scalar as a multiplication by its reciprocal, one ulp away from the CPU's
    result; a scale one ulp off flips INT8 codes that sit on rounding ties, so the same model would quantize
    differently on CPU and GPU (seen on an H100). Dividing by a 0-d tensor on x's device is exact on both.
    """
    return x / torch.full((), constant, dtype=x.dtype, device=x.device)


def qparams_from_range(amin: torch.Tensor, amax: torch.Tensor, scheme: QuantScheme):
    """(scale, zero_point) so that [amin, amax] maps onto the format's range. zero_point is None if symmetric."""
    fmt = scheme.fmt
    amin = amin.float()
    amax = amax.float()
    if scheme.symmetric:
        return symmetric_scale(torch.maximum(amin.abs(), amax.abs()), fmt.max_value, scheme.scale_format), None
    levels = 2**fmt.bits - 1
    lo = torch.clamp(amin, max=0.0)  # zero must be exactly representable (padding, ReLU zeros)
    hi = torch.clamp(amax, min=0.0)
    scale = divide(hi - lo, levels)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale).clamp(0, levels)
    return scale, zero_point


def double_quantize_scale(scale: torch.Tensor, scale_format: str, dim: int | None = None):
    """Store scales in a small float format times an FP32 scale (NVFP4's "double quant").

    The FP32 scale maps the largest scale onto the format's maximum (448 for E4M3): one for the whole tensor
    (dim None) or one per slice along `dim` (kept as a size-1 dim; e.g. dim=-1 on [rows, groups]: one per row).
    A scale <= 0 marks an all-zero group: it does not count toward the FP32 scale and is stored as the smallest
    positive value (its codes are 0 whatever its scale), as is any scale that would underflow to zero, so no
    group divides by zero. All-zero tensors (slices) get FP32 scale 1.
    Returns (codes uint8, FP32 scale: 0-d or keepdim, the dequantized scales codes * FP32 scale).
    """
    fmt = get_format(scale_format)
    scale = scale.float()
    top = scale.max() if dim is None else scale.amax(dim, keepdim=True)
    tensor_scale = torch.where(top > 0, divide(top, fmt.max_value), torch.ones_like(top))
    smallest = float(fmt.grid()[fmt.grid() > 0][0])
    values = fmt.round(scale / tensor_scale).clamp(min=smallest)
    codes = fmt.encode(values.cpu()).to(values.device)  # encode() looks codes up in a CPU table
    return codes, tensor_scale, values * tensor_scale


def symmetric_scale(bound: torch.Tensor, max_value: float, scale_format: str | None = None) -> torch.Tensor:
    """The scale that maps |x| <= bound onto [-max_value, max_value] (FP8-rounded with a scale_format)."""
    if scale_format is None:
        # An all-zero tensor quantizes exactly with any scale; 1 avoids 0/0.
        return torch.where(bound > 0, divide(bound, max_value), torch.ones_like(bound))
    # All-zero groups pass 0, not a placeholder: a placeholder of 1 would become the largest scale and set the
    # FP32 tensor scale (1/448 instead of NVFP4's amax / (6 * 448) whenever amax < 6).
    scale = torch.where(bound > 0, divide(bound, max_value), torch.zeros_like(bound))
    return double_quantize_scale(scale, scale_format)[2]


def _round_ste(v: torch.Tensor, fmt, asymmetric: bool) -> torch.Tensor:
    """Clamp (gradient 0 outside the range) then round with a straight-through gradient (1 inside)."""
    if isinstance(fmt, IntFormat):
        lo, hi = (0, 2**fmt.bits - 1) if asymmetric else (fmt.qmin, fmt.qmax)
        v = v.clamp(lo, hi)
        return v + (torch.round(v) - v).detach()
    v = v.clamp(-fmt.max_value, fmt.max_value)
    return v + (fmt.round(v) - v).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: QuantScheme):
    """Quantize then dequantize in float.

    Differentiable through straight-through estimators, not exact derivatives (those are 0 almost
    everywhere): x gets gradient 1 inside the clamp range and 0 outside; the scale gets LSQ's gradient,
    round(x/s) - x/s inside the range and the clamp bound outside (without LSQ's 1/sqrt(N·qmax) factor).
    """
    s = expand_scale(scale, x, scheme).to(x.dtype)
    if zero_point is None:
        return _round_ste(x / s, scheme.fmt, False) * s
    z = expand_scale(zero_point, x, scheme).to(x.dtype)
    return (_round_ste(x / s + z, scheme.fmt, True) - z) * s


def _per_sample_rows(x: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Dynamic tensor/channel layouts split by sample (dim 0): (rows [K, M], the scale shape)."""
    b = x.shape[0]
    if scheme.granularity == "tensor" or _axis(x, scheme) == 0:
        return x.reshape(b, -1), (b, *[1] * (x.ndim - 1))
    a = _axis(x, scheme)
    c = x.shape[a]
    # [B, C, rest]: rows in (sample, channel) order, which is also the order of the scale layout below.
    return x.movedim(a, 1).reshape(b * c, -1), tuple(b if d == 0 else c if d == a else 1 for d in range(x.ndim))


def dynamic_qparams(x: torch.Tensor, scheme: QuantScheme):
    """Scales from the live tensor (per call), no gradient; never across samples (see the module docstring).

    Group and token scales already cover one row of one sample; tensor and channel scales are taken per
    sample. FP8-coded scales (`scale_format`) share an FP32 scale, which is taken per sample as well.
    """
    x = x.detach()
    if scheme.scale_format is not None and x.ndim > 1 and x.shape[0] > 1:
        parts = [dynamic_qparams(x[i:i + 1], scheme)[0] for i in range(x.shape[0])]
        return torch.cat(parts), None  # scale_format implies symmetric
    if scheme.granularity in ("tensor", "channel") and x.ndim > 1:
        rows, shape = _per_sample_rows(x, scheme)
        scale, zp = qparams_from_range(rows.amin(1), rows.amax(1), scheme)
        return scale.reshape(shape), None if zp is None else zp.reshape(shape)
    rows = to_rows(x, scheme, shared=False)
    scale, zp = qparams_from_range(rows.amin(1), rows.amax(1), scheme)
    return rows_to_scale(scale, x, scheme, False), None if zp is None else rows_to_scale(zp, x, scheme, False)


# --------------------------------------------------------------------------------------- real codes
@dataclass
class QuantizedTensor:
    """Stored codes + scales. int8: torch.int8 (uint8 when asymmetric); 4-bit: packed two per byte along the
    last axis, low nibble first; fp8: uint8 whose bits are the OCP E4M3 encoding (view as float8_e4m3fn)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    scheme: QuantScheme
    shape: tuple[int, ...]

    def dequantize(self) -> torch.Tensor:
        fmt = self.scheme.fmt
        codes = unpack_4bit(self.codes) if fmt.bits == 4 else self.codes
        codes = codes.reshape(self.shape)
        if isinstance(fmt, FloatFormat):
            q = fmt.decode(codes)
        elif self.zero_point is not None:
            q = codes.to(torch.float32)  # unsigned codes
        else:
            q = fmt.decode(codes) if fmt.bits == 4 else codes.to(torch.float32)
        ref = torch.empty(self.shape)
        s = expand_scale(self.scale, ref, self.scheme)
        if self.zero_point is not None:
            q = q - expand_scale(self.zero_point, ref, self.scheme)
        return q * s


def quantize_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: QuantScheme):
    """Real quantization: x -> QuantizedTensor whose dequantize() equals fake_quantize(x)."""
    fmt = scheme.fmt
    s = expand_scale(scale, x, scheme)
    v = x.detach().float() / s
    if isinstance(fmt, FloatFormat):
        codes = fmt.encode(fmt.round(v.clamp(-fmt.max_value, fmt.max_value)))
    elif zero_point is not None:
        q = fmt.round(v + expand_scale(zero_point, x, scheme), unsigned_range=True)
        codes = q.to(torch.uint8)
    else:
        q = fmt.round(v)
        codes = fmt.encode(q) if fmt.bits == 4 else q.to(torch.int8)
    if fmt.bits == 4:
        codes = pack_4bit(codes)
    return QuantizedTensor(codes, scale.detach().clone(), None if zero_point is None else zero_point.clone(),
                           scheme, tuple(x.shape))
