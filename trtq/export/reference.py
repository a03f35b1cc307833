"""Reference decompositions of the `trtq` plugin nodes in ONNX-friendly torch ops.

Each function here computes exactly what its kernel contract says (`trtq.ops.*`, `trtq.quantizer`) using
only ops the ONNX exporter maps to standard ONNX (Conv, MatMul, Reshape, Transpose, Gather, Round, ...):
no unfold, no frexp, no Python loops over data-dependent sizes. Sizes taken from `x.shape` are traced as
Shape ops, so one decomposition serves every batch size and resolution.

They are used twice: as the forward of the export twins (so PyTorch checks them against the original ops)
and, traced on their own, as the bodies of the ONNX local functions that stand behind each plugin node
(so ONNX Runtime, or TensorRT without the plugin, executes the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtq.formats import FloatFormat, get_format


# --------------------------------------------------------------------------------------- rounding
def float_grid_tables(fmt_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(magnitudes [V], midpoints [2^k - 1], round_up_at_tie [2^k - 1]) for `round_to_float_grid`.

    Which way a value exactly on a midpoint rounds is decided by the format's own `round` (ties to even
    mantissa, subnormals, saturation), so the table search reproduces `FloatFormat.round` bit for bit. The
    midpoints are padded with +inf to a power-of-two length minus one for a fixed-depth binary search.
    """
    fmt = get_format(fmt_name)
    assert isinstance(fmt, FloatFormat)
    mags = fmt.grid()
    mags = mags[mags >= 0]
    mids = (mags[:-1] + mags[1:]) / 2
    up = fmt.round(mids) == mags[1:]
    size = 1
    while size - 1 < mids.numel():
        size *= 2
    pad = size - 1 - mids.numel()
    mids = torch.cat([mids, torch.full((pad,), float("inf"))])
    up = torch.cat([up, torch.zeros(pad, dtype=torch.bool)])
    return mags, mids, up


def round_to_float_grid(v: torch.Tensor, fmt_name: str) -> torch.Tensor:
    """Round float32 v (already clamped to ±max) to the nearest value of a float format: a binary search over
    the midpoints between representable magnitudes (log2(V) Gather/compare steps, memory O(numel))."""
    mags, mids, up = float_grid_tables(fmt_name)
    a = v.abs()
    idx = torch.zeros_like(a, dtype=torch.int64)
    step = (mids.numel() + 1) // 2
    while step >= 1:
        cand = idx + step
        mid, tie_up = mids[cand - 1], up[cand - 1]
        go = (a > mid) | ((a == mid) & tie_up)
        idx = torch.where(go, cand, idx)
        step //= 2
    r = mags[idx]
    return torch.where(v < 0, -r, r)


def round_to_format(v: torch.Tensor, fmt_name: str) -> torch.Tensor:
    """Values on the grid of an int or float format, saturating (v is float32, already divided by its scale)."""
    fmt = get_format(fmt_name)
    if isinstance(fmt, FloatFormat):
        return round_to_float_grid(v.clamp(-fmt.max_value, fmt.max_value), fmt_name)
    return torch.round(v).clamp(fmt.qmin, fmt.qmax)


def symmetric_scale(amax: torch.Tensor, max_value: float) -> torch.Tensor:
    """`trtq.quantizer.symmetric_scale` without scale_format: amax / max, or 1 where amax is 0."""
    return torch.where(amax > 0, amax / torch.tensor(max_value, dtype=amax.dtype), torch.ones_like(amax))


# --------------------------------------------------------------------------------------- dynamic group QDQ
def dynamic_group_qdq(x: torch.Tensor, fmt_name: str, axis: int, group_size: int) -> torch.Tensor:
    """Symmetric fake quantization with scales from the live tensor, one per group of `group_size`
    consecutive elements along `axis` for every other index (TensorQuantizer with a dynamic group scheme).
    group_size 0: the whole axis is one group (its length may be dynamic): per token along a linear's last
    axis, per sample for an input flattened to [N, -1]."""
    fmt = get_format(fmt_name)
    axis = axis % x.dim()
    perm = [d for d in range(x.dim()) if d != axis] + [axis]  # explicit perms: no negative axes in Transpose
    inverse = [perm.index(d) for d in range(x.dim())]
    moved = x.float().permute(perm)
    groups = moved.reshape(-1, group_size or moved.shape[-1])
    amax = groups.abs().amax(-1, keepdim=True)
    scale = symmetric_scale(amax, fmt.max_value)
    q = round_to_format(groups / scale, fmt_name) * scale
    return q.reshape(moved.shape).permute(inverse).to(x.dtype)


# --------------------------------------------------------------------------------------- Winograd conv
def winograd_conv_int8(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                       at: torch.Tensor, bt: torch.Tensor, tile: int, pads: list[int], group_size: int,
                       act_granularity: str, act_scale: torch.Tensor | None) -> torch.Tensor:
    """`trtq::winograd_conv_int8` (see its contract), formulated for ONNX:
    - input transform B^T d B of all overlapping n x n tiles (stride m) = one depthwise Conv with the n*n
      kernels bt[i] ⊗ bt[l], stride m, over every channel;
    - the per-(position, group) INT8 GEMMs = one batched MatMul of integer-valued float32 (exact: a group of
      g <= 1024 int8 products sums below 2^24);
    - output transform A^T M A = a MatMul with A^T ⊗ A^T, then a depth-to-space reshuffle of the m x m tiles.
    """
    m, n = tile, tile + 2
    ph, pw = pads
    batch, cin, h, w = x.shape
    cout = w_int8.shape[2]
    groups = cin // group_size
    out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = (out_h + m - 1) // m, (out_w + m - 1) // m
    # Zero-extend bottom/right by m (enough to complete the last tile), then keep exactly th x tw tiles.
    xp = F.pad(x.float(), (pw, pw + m, ph, ph + m))
    kernels = (bt[:, None, :, None] * bt[None, :, None, :]).reshape(n * n, 1, n, n).float()
    v = F.conv2d(xp.reshape(batch * cin, 1, xp.shape[2], xp.shape[3]), kernels, stride=m)
    v = v[:, :, :th, :tw]  # [N*C, n*n, th, tw]
    tiles = th * tw
    v = v.reshape(batch, groups, group_size, n * n, tiles).permute(3, 1, 2, 0, 4)  # [nn, G, g, N, T]
    v = v.reshape(n * n, groups, group_size, batch * tiles)
    if act_scale is not None:
        sa = act_scale.float().reshape(n * n, groups, 1, 1)
    else:
        absmax = v.abs()
        if act_granularity == "tensor":  # one scale per image (batch-invariant), P ordered (image, tile)
            per_image = absmax.reshape(n * n, groups, group_size, batch, tiles).amax(dim=(0, 1, 2, 4))
            amax = per_image.repeat_interleave(tiles).reshape(1, 1, 1, batch * tiles)
        elif act_granularity == "group":
            amax = absmax.amax(dim=2, keepdim=True).amax(dim=0, keepdim=True)
        else:  # position-group
            amax = absmax.amax(dim=2, keepdim=True)
        sa = symmetric_scale(amax, 127.0)
    vq = torch.round(v / sa).clamp(-128, 127)
    wq = w_int8.float().reshape(n * n, cout, groups, group_size).permute(0, 2, 1, 3)  # [nn, G, Cout, g]
    acc = torch.matmul(wq, vq)  # [nn, G, Cout, P]: exact integers
    ws = w_scale.float().reshape(n * n, cout, groups).permute(0, 2, 1).unsqueeze(-1)  # [nn, G, Cout, 1]
    mm = (acc * ws * sa).sum(1)  # [nn, Cout, P]
    a2 = (at.float()[:, None, :, None] * at.float()[None, :, None, :]).reshape(m * m, n * n)  # A^T ⊗ A^T
    mm = mm.reshape(n * n, cout, batch, th, tw).permute(2, 1, 3, 4, 0)  # [N, Cout, th, tw, nn]
    y = torch.matmul(mm, a2.t()).reshape(batch, cout, th, tw, m, m).permute(0, 1, 2, 4, 3, 5)
    y = y.reshape(batch, cout, th * m, tw * m)[:, :, :out_h, :out_w]
    if bias is not None:
        y = y + bias.float().reshape(1, cout, 1, 1)
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------- FP4 group GEMM
def _decode(codes: torch.Tensor, fmt_name: str) -> torch.Tensor:
    fmt = get_format(fmt_name)
    table = fmt.decode(torch.arange(2**fmt.bits))
    return table[codes.long()]


def fp4_group_gemm(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                   weight_tensor_scale: torch.Tensor | None, bias: torch.Tensor | None,
                   act_scale: torch.Tensor | None, weight_format: str, act_format: str, group_size: int,
                   scale_format: str, act_clip: float) -> torch.Tensor:
    """`trtq::fp4_group_gemm` (see its contract), formulated for ONNX: nibbles unpacked with BitwiseAnd /
    BitShift and decoded by table Gather; activations quantized per (row, group); one MatMul of the
    dequantized operands (each value × its group scale is exact in FP32: an FP4 value has 2 significant
    bits, an FP8 one 4), so only the summation order differs from the blocked reference."""
    g = group_size
    n, k = weight_packed.shape[0], weight_packed.shape[1] * 2
    groups = k // g
    rows = x.reshape(-1, k).float()
    lo = torch.bitwise_and(weight_packed, 15)
    hi = torch.bitwise_right_shift(weight_packed, 4)
    codes = torch.stack([lo, hi], dim=-1).reshape(n, k)
    w_vals = _decode(codes, weight_format)
    if scale_format == "float32":
        w_scale = weight_scale.float()
    else:
        w_scale = _decode(weight_scale, scale_format) * weight_tensor_scale.float()
    w = (w_vals.reshape(n, groups, g) * w_scale.reshape(n, groups, 1)).reshape(n, k)

    if act_format != "none":
        grouped = rows.reshape(-1, groups, g)
        if act_scale is None:
            amax = grouped.abs().amax(-1, keepdim=True) * act_clip
            a_scale = symmetric_scale(amax, get_format(act_format).max_value)
            if scale_format != "float32":  # FP8 scales per (row, group) × one FP32 scale per row
                # all-zero groups do not count toward the row's FP32 scale (1 for an all-zero row)
                top = torch.where(amax > 0, a_scale, torch.zeros_like(a_scale)).amax(dim=1, keepdim=True)
                row_scale = symmetric_scale(top, get_format(scale_format).max_value)
                smallest = float(_smallest_positive(scale_format))
                a_scale = round_to_format(a_scale / row_scale, scale_format).clamp(min=smallest) * row_scale
        else:
            a_scale = act_scale.float().reshape(1, groups, 1)
        rows = (round_to_format(grouped / a_scale, act_format) * a_scale).reshape(-1, k)
    out = torch.matmul(rows, w.t())
    if bias is not None:
        out = out + bias.float()
    return out.reshape(list(x.shape[:-1]) + [n]).to(x.dtype)


def _smallest_positive(fmt_name: str) -> float:
    grid = get_format(fmt_name).grid()
    return float(grid[grid > 0][0])
