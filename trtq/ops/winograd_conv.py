"""`trtq::winograd_conv_int8`: fully quantized W8A8 Winograd F(m, 3) convolution.

One op name, two implementations: CUDA tensors run the Triton kernels (trtq/kernels/winograd.py), launched
through `torch.library.wrap_triton` inside a `torch.library.triton_op` so torch.compile traces into them
(no graph break); every other device runs `winograd_conv_int8_reference`, the spec. Triton is optional: where
it does not import (CPU-only installs, macOS), the op exists and runs the reference.
"""

from __future__ import annotations

import torch

from trtq.winograd.conv import transform_input, transform_output
from trtq.winograd.quant import GRANULARITIES, act_scales

try:
    from trtq.kernels import winograd as _kernels
except ImportError:  # no Triton: CUDA tensors fall back to the reference too
    _kernels = None

# int8 x int8 products are at most 128 * 128 = 2^14, so a float32 sum of up to 2^10 of them is an exact
# integer (< 2^24): the reference accumulates each group in float32 when that holds (what INT32 gives a kernel).
_EXACT_FP32_TERMS = 2**24 // 2**14


@torch.library.triton_op("trtq::winograd_conv_int8", mutates_args=())
def winograd_conv_int8(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                       at: torch.Tensor, bt: torch.Tensor, tile: int, padding: list[int], group_size: int,
                       act_granularity: str, act_scale: torch.Tensor | None) -> torch.Tensor:
    """3x3, stride 1, dilation 1, groups 1 conv2d of x with INT8 Winograd-domain weights.

    Inputs (n = tile + 2, G = Cin / group_size):
      x          [N, Cin, H, W] FP16/BF16/FP32, any strides (NCHW or channels-last): the layer input.
      w_int8     [n, n, Cout, Cin] int8: G' g G'^T of the float weight, quantized offline.
      w_scale    [n, n, Cout, G] float32: one scale per (position, output channel, input-channel group)
                 (values repeat where the recipe shares a scale across positions or the whole tensor).
      bias       [Cout] float or None, added in FP32 after the output transform.
      at, bt     [tile, n] and [n, n] float32: A^T and B^T, learned diagonal scales already folded in
                 (A^T S_A, S_B B^T); any dense matrices are valid.
      tile       m of F(m, 3), in {2, 4, 6}; must match at.shape[0].
      padding    [ph, pw] zero padding.
      group_size input channels per scale group (Cin for per-tensor); divides Cin.
      act_granularity  how the INT8 scales of the transformed input are taken when act_scale is None
                 (dynamic): "tensor" (one per image: the amax over all of that image's tiles, positions and
                 channels), "group" (per tile and channel group, shared by the n x n positions),
                 "position-group" (per tile, position and group).
      act_scale  [n, n, G] float32 static (calibrated) scales, or None for dynamic.
    Computation, everything a faithful kernel must reproduce:
      Tiles: output tile (r, c) covers output rows [m r, m r + m) and columns [m c, m c + m); its input tile
        is the n x n window of x starting at row m r - ph, column m c - pw (so the grid starts at the
        padded origin, stride m). Every input pixel outside x (padding, and the overhang of the last, partial
        tiles at the bottom/right) reads 0; the overhanging outputs are computed and dropped. How the tiles
        are ordered in memory is free.
      Input transform in FP32: V = B^T d B with d = x.float().
      Scales: dynamic scale = amax / 127 over the granularity's block (IEEE division, as
        trtq.quantizer.divide), or 1 where that amax is 0 (an all-zero block quantizes exactly with any
        scale). Batch-invariant: no scale spans two images, so an image's output never depends on the
        other images in its batch (classifier-free guidance doubles batches). A static act_scale is used
        as given: V[i, j, c] is divided by act_scale[i, j, c // group_size] for every tile and image.
      Codes: q = round(V / scale) with IEEE division, rounding half to even (torch.round), then clamped
        to [-128, 127].
      GEMMs: for each of the n*n positions and each group an INT8 GEMM over the group's channels with exact
        (INT32) accumulation, times w_scale then times act_scale (FP32), summed over groups in group order
        in FP32: M = sum_k (acc_k * w_scale_k) * act_scale_k.
      Output: Y = A^T M A per tile (FP32); + bias; crop to the conv output; cast to x's dtype.
    Tolerance of a faithful implementation: the INT32 GEMMs are exact, so two faithful implementations differ
      only through FP32 summation order (in B^T d B, in A^T M A, FMA contraction). In the output transform that
      is a few FP32 ulps; in the input transform it can move a value that sits within an ulp of a rounding tie
      (k + 0.5) to the other side, changing that INT8 code by 1 (and, rarer still, a group's amax by an ulp).
      So: codes equal except a tiny fraction that differ by exactly 1; outputs within ~1e-5 relative where
      no code flipped, and within one quantization step (w_scale * act_scale * |kron(A^T, A^T)| summed over
      the flipped codes' products) where one did. Where B^T d B is exact in FP32 (integer-valued x, the
      standard transforms), implementations must agree on every code.
    Output: [N, Cout, H + 2 ph - 2, W + 2 pw - 2], dtype of x.
    """
    n = tile + 2
    if tuple(at.shape) != (tile, n) or tuple(bt.shape) != (n, n):
        raise ValueError(f"transforms for tile {tile} must be A^T [{tile}, {n}] and B^T [{n}, {n}]")
    if act_granularity not in GRANULARITIES:
        raise ValueError(f"act_granularity must be one of {GRANULARITIES}, got {act_granularity!r}")
    if x.device.type == "cuda" and _kernels is not None:
        return _kernels.winograd_conv_int8_triton(x, w_int8, w_scale, bias, at, bt, tile, padding, group_size,
                                                  act_granularity, act_scale)
    return winograd_conv_int8_reference(x, w_int8, w_scale, bias, at, bt, tile, padding, group_size,
                                        act_granularity, act_scale)


def winograd_conv_int8_reference(x, w_int8, w_scale, bias, at, bt, tile: int, padding, group_size: int,
                                 act_granularity: str, act_scale):
    """The spec of `trtq::winograd_conv_int8` in PyTorch (any device); arguments as the op's."""
    n = tile + 2
    cout, cin = w_int8.shape[2], w_int8.shape[3]
    groups = cin // group_size
    v, grid = transform_input(x.float(), bt.float(), tile, tuple(padding))
    if act_scale is None:
        sa = act_scales(v, group_size, act_granularity, grid)
    else:
        sa = act_scale.float().reshape(n, n, groups, 1, 1)
    acc_dtype = torch.float32 if group_size <= _EXACT_FP32_TERMS else torch.float64
    vq = torch.round(v.reshape(n, n, groups, group_size, -1) / sa).clamp(-128, 127).to(acc_dtype)
    wq = w_int8.reshape(n, n, cout, groups, group_size).permute(0, 1, 3, 2, 4).to(acc_dtype)
    acc = (wq @ vq).float()  # [n, n, G, Cout, P]: one exact integer GEMM per (position, group)
    ws = w_scale.float().unsqueeze(-1)  # [n, n, Cout, G, 1]
    sa = sa.expand(n, n, groups, 1, acc.shape[-1])
    mm = acc[:, :, 0].mul_(ws[:, :, :, 0]).mul_(sa[:, :, 0])
    for k in range(1, groups):  # dequantize group by group in place: the reference runs on CPU evals too
        mm.addcmul_(acc[:, :, k].mul_(ws[:, :, :, k]), sa[:, :, k])
    y = transform_output(mm, at.float(), grid)
    if bias is not None:
        y = y + bias.float()[None, :, None, None]
    return y.to(x.dtype)
