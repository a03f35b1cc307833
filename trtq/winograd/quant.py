"""INT8 quantization in the Winograd domain: scale layouts, real codes, and the differentiable fake-quant path.

Groups run along the input channels (the GEMM reduction axis K), so every INT8 GEMM accumulates one group in
INT32 and is dequantized with one weight scale and one activation scale. Granularities:
- "tensor":         one scale for the whole transformed tensor (weights: per layer; inputs: per image when
                    dynamic, so an image's result never depends on the other images of its batch; or static);
- "group":          one scale per channel group shared by the n x n positions of a tile (inputs: per tile;
                    weights: per output channel);
- "position-group": one scale per (position, channel group), i.e. every GEMM has its own scales.
Why "group" is the default: a per-position scale already absorbs any diagonal rescaling of the transforms
(scaling position (i, j) scales its range and its scale alike), so learned transform scales can only help
where positions share a scale. With "position-group" they provably change nothing.
"""

from __future__ import annotations

import torch

from trtq.errors import TrtqError
from trtq.quantizer import fake_quantize, symmetric_scale
from trtq.scheme import QuantScheme
from trtq.winograd.conv import TileGrid, transform_input, transform_output, transform_weight
from trtq.winograd.transforms import scaled_matrices

GRANULARITIES = ("tensor", "group", "position-group")
INT8 = QuantScheme(format="int8")  # broadcastable scales: fake_quantize just divides, rounds, clamps
QMAX = INT8.fmt.max_value


def _check(granularity: str, channels: int, group_size: int) -> int:
    if granularity not in GRANULARITIES:
        raise TrtqError(f"Winograd granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if group_size < 1 or channels % group_size:
        raise TrtqError(f"group size {group_size} does not divide {channels} input channels")
    return channels // group_size


def _amax_to_scale(amax: torch.Tensor) -> torch.Tensor:
    return symmetric_scale(amax, QMAX)


def _signed_amax(a: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # max(-min, max) rather than abs().amax(): no full-size temporary (this runs on every conv call)
    return torch.maximum(-a.amin(dim=dims, keepdim=True), a.amax(dim=dims, keepdim=True))


def act_scales(v: torch.Tensor, group_size: int, granularity: str, grid: TileGrid) -> torch.Tensor:
    """Dynamic scales of the transformed input v [n, n, C, P], broadcastable to [n, n, G, g, P].

    "tensor": one scale per image (never per call: an image's result must not depend on the other images of
    its batch); "group": one per (tile, channel group); "position-group": one per (tile, position, group).
    Each is amax / 127 by IEEE division, or 1 where the amax is 0 (an all-zero block quantizes exactly)."""
    n, _, c, p = v.shape
    groups = _check(granularity, c, group_size)
    if granularity == "tensor":  # P is ordered (tile row, image, tile col), see transform_input
        amax = _signed_amax(v.reshape(-1, grid.tiles_h, grid.batch, grid.tiles_w), (0, 1, 3))
        return _amax_to_scale(amax).expand(1, grid.tiles_h, grid.batch, grid.tiles_w).reshape(1, 1, 1, 1, p)
    a = v.reshape(n, n, groups, group_size, p)
    return _amax_to_scale(_signed_amax(a, (0, 1, 3) if granularity == "group" else (3,)))


def weight_scales(u: torch.Tensor, group_size: int, granularity: str) -> torch.Tensor:
    """Scales of the transformed weight u [n, n, Cout, Cin] as [n, n, Cout, G] (repeated where shared)."""
    n, _, cout, cin = u.shape
    groups = _check(granularity, cin, group_size)
    a = u.abs().reshape(n, n, cout, groups, group_size)
    if granularity == "tensor":
        amax = a.amax().reshape(1, 1, 1, 1)
    elif granularity == "group":
        amax = a.amax(dim=(0, 1, 4))[None, None]
    else:
        amax = a.amax(dim=4)
    return _amax_to_scale(amax).expand(n, n, cout, groups)


def quantize_weight(u: torch.Tensor, group_size: int, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline: transformed weight -> (INT8 codes [n, n, Cout, Cin], scales [n, n, Cout, G])."""
    scale = weight_scales(u, group_size, granularity).contiguous()
    codes = torch.round(u / scale.repeat_interleave(group_size, dim=3)).clamp(-128, 127)
    return codes.to(torch.int8), scale


def fake_quant_winograd_conv(x, weight, bias, s_b, s_g, tile: int, padding: tuple[int, int], group_size: int,
                             granularity: str, act_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The INT8 Winograd conv in float (quantize-dequantize, straight-through rounding), differentiable in
    s_b and s_g (also through the range-derived scales). Same numbers as `trtq::winograd_conv_int8` up to
    float summation order; used to learn the transform scales. `act_scale` [n, n, G] = static scales."""
    at, g, bt = scaled_matrices(tile, s_b, s_g, dtype=x.dtype)
    u = transform_weight(weight, g)
    v, grid = transform_input(x, bt, tile, padding)
    n, _, cout, cin = u.shape
    groups = cin // group_size
    uq = fake_quantize(u, weight_scales(u, group_size, granularity).repeat_interleave(group_size, dim=3), None, INT8)
    sa = act_scales(v, group_size, granularity, grid) if act_scale is None else act_scale.reshape(n, n, groups, 1, 1)
    vq = fake_quantize(v.reshape(n, n, groups, group_size, -1), sa, None, INT8).reshape(v.shape)
    y = transform_output(uq @ vq, at, grid)
    return y if bias is None else y + bias[None, :, None, None]
