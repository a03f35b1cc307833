"""Triton kernels for `trtq::winograd_conv_int8`; the op's docstring and reference (trtq/ops/winograd_conv.py)
are their spec.

Two launches, and why this split is the fast one (bytes per output element of an SD-size layer, F(4,3),
Cin = Cout = C, fp16 activations; n = 6 so a tile of m^2 = 16 outputs has n^2 = 36 Winograd positions):
  1. `winograd_input_kernel`: reads x once (2 B/elem; the halo re-reads hit L2), computes V = B^T d B and
     quantizes it to INT8 in the same program, so V's FP32 values never reach memory (FP32 V would be
     36/16 * 4 = 9 B/elem written and read again). It writes the INT8 codes, 36/16 = 2.25 B/elem, and the
     tile scales (1/C of that). A dynamic scale needs the amax over a whole group (all its channels and,
     for "group", all n^2 positions of the tile) *before* any value is quantized, so a program owns whole
     (tile block, channel group) blocks: the amax is a register reduction, with no second pass over memory.
     Per-image ("tensor") scales cannot be known by one tile: a first launch writes per-tile partial amaxes
     (P x C/BLOCK_C floats, negligible), the image amax is reduced from them, a second launch quantizes.
  2. `winograd_gemm_kernel` (fused mode): for a block of tiles x output channels it runs the n^2 INT8 GEMMs
     (INT8 `tl.dot`, INT32 accumulation per channel group, times w_scale * act_scale, summed over groups in
     FP32) and applies A^T M A + bias in its epilogue, accumulating the m^2 outputs of each tile position by
     position. M (FP32, 9 B/elem, written then read: 18 B against the 2 + 2.25 + 2 B the whole conv needs)
     therefore never leaves the chip. The price: m^2 FP32 accumulators per (channel, tile) in registers. For
     F(6,3) (36 a tile) no useful block fits, so F(6,3) defaults to the split mode (the GEMM writes M, a
     second launch of the same kernel transforms it), which also gives the per-stage timing breakdown.
The input transform runs separably on CUDA cores in FP32 (2 n^3 FMAs per tile and channel, the n^2 values
of a (tile, channel) held in registers as a tuple, any dense learned B^T). The output transform adds
kron(A^T, A^T)[:, position] * M_position per position (m^2 FMAs per position and output, FP32, in registers).
Neither uses TF32: it would move INT8 codes. See docs/kernels-winograd.md for the budget and what to try next.

Kernels take pointers, int shapes/strides and constexprs only, and their grids are pure functions of shapes
and the config (`input_grid`, `gemm_grid`), so a TensorRT plugin can compile them ahead of time with
`triton.compile(ASTSource(...))` and launch them itself (see tests/test_kernels_winograd.py).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from trtq.errors import TrtqError
from trtq.kernels import tuned
from trtq.quantizer import symmetric_scale

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# How the input kernel gets the scale of each value (SCALE_MODE).
STATIC = tl.constexpr(0)  # calibrated act_scale [n^2, G]
DYN_GROUP = tl.constexpr(1)  # amax over a tile's n^2 positions and a group's channels
DYN_POSITION_GROUP = tl.constexpr(2)  # amax over a group's channels, per tile and position
PER_IMAGE = tl.constexpr(3)  # one given scale per image (the second launch of "tensor")
IMAGE_AMAX = tl.constexpr(4)  # write per-tile partial amaxes only (the first launch of "tensor")
SCALE_MODES = {"group": 1, "position-group": 2, "tensor": 3}

# What the GEMM kernel computes (MODE).
GEMM_TO_Y = tl.constexpr(0)  # INT8 GEMMs + output transform + bias: the fast path
GEMM_TO_M = tl.constexpr(1)  # INT8 GEMMs, dequantized M [n^2, P, Cout] FP32 to memory
M_TO_Y = tl.constexpr(2)  # output transform + bias of a stored M

QMAX = 127.0


def _pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


@triton.jit
def _round_half_even(x):
    # torch.round: ties to even. floor and x - floor(x) are exact for |x| < 2^23 (x is clamped to int8 range).
    r = tl.floor(x)
    f = x - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where((f > 0.5) | ((f == 0.5) & odd), r + 1.0, r)


@triton.jit
def _scale_of(amax):
    return tl.where(amax > 0.0, tl.math.div_rn(amax, 127.0), 1.0)  # IEEE division, as quantizer.divide


@triton.jit
def _tile_block(P, tiles_h, tiles_w, BLOCK_T: tl.constexpr):
    """This program's BLOCK_T tiles, numbered p = (image, tile row, tile col): (p, p < P, image, row, col)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tiles = tiles_h * tiles_w
    return t, t < P, t // tiles, (t % tiles) // tiles_w, t % tiles_w


@triton.jit
def _transform_block(x_ptr, bt_ptr, b, ty, tx, t_ok, c, c_ok, H, W, sxn, sxc, sxh, sxw, pad_h, pad_w,
                     N_SIDE: tl.constexpr, TILE: tl.constexpr, NP: tl.constexpr):
    """V = B^T d B for a block of tiles x channels, separably in FP32 (2 n^2 NP FMAs per tile and channel):
    a tuple of n rows, row a a [BLOCK_T, NP, BLOCK_C] tensor holding V[a, e] at [:, e, :] (zero for e >= n).

    Vectorized by rows on purpose: n loads of [BLOCK_T, NP, BLOCK_C] instead of n^2 loads of
    [BLOCK_T, BLOCK_C]. Triton's coalescing pass walks the whole def-use graph once per memory op, so with
    n^2 loads and n^2 stores its time grew with about the sixth power of n (F(6,3): 140 s per compile)."""
    jj = tl.arange(0, NP)
    base = x_ptr + b[:, None, None].to(tl.int64) * sxn + c[None, None, :] * sxc
    w = tx[:, None] * TILE - pad_w + jj[None, :]  # [BLOCK_T, NP]
    w_ok = (w >= 0) & (w < W) & (jj < N_SIDE)[None, :]
    ok = t_ok[:, None, None] & c_ok[None, None, :]
    d = ()  # row i of every tile: [BLOCK_T, NP (column j), BLOCK_C]; zero fill for padding and overhang
    for i in tl.static_range(N_SIDE):
        h = ty * TILE - pad_h + i
        inside = w_ok & ((h >= 0) & (h < H))[:, None]
        d = d + (tl.load(base + (h[:, None] * sxh + w * sxw)[:, :, None], mask=ok & inside[:, :, None],
                         other=0.0).to(tl.float32),)
    # B^T as an [NP, NP] matrix, zero-padded: row e holds B^T[e, :]
    bt2 = tl.load(bt_ptr + jj[:, None] * N_SIDE + jj[None, :], mask=(jj < N_SIDE)[:, None] & (jj < N_SIDE)[None, :],
                  other=0.0)
    v = ()
    for a in tl.static_range(N_SIDE):
        u = tl.load(bt_ptr + a * N_SIDE) * d[0]  # u[a, j] = sum_i B^T[a, i] d[i, j]
        for i in tl.static_range(1, N_SIDE):
            u += tl.load(bt_ptr + a * N_SIDE + i) * d[i]
        # v[a, e] = sum_j B^T[e, j] u[a, j]: a reduction over the NP columns
        v = v + (tl.sum(bt2[None, :, :, None] * u[:, None, :, :], axis=2),)
    return v


@triton.jit
def _quantize(v, s):
    return _round_half_even(tl.minimum(tl.maximum(tl.math.div_rn(v, s), -128.0), 127.0)).to(tl.int8)


@triton.jit
def winograd_input_kernel_rows(
    x_ptr, bt_ptr, vq_ptr, sa_out_ptr, scale_in_ptr, amax_ptr,
    C, H, W, sxn, sxc, sxh, sxw, pad_h, pad_w, tiles_h, tiles_w, P, s_scale_pos, s_scale_g,
    GROUP_SIZE: tl.constexpr, GROUPS: tl.constexpr, N_SIDE: tl.constexpr, TILE: tl.constexpr,
    SCALE_MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NP: tl.constexpr,
    LOG_NP: tl.constexpr,
):
    """x [N, C, H, W] (any strides) -> INT8 codes vq [n^2, P, C] and the scales the GEMM needs.

    Program (pid_t, pid_c) owns BLOCK_T tiles and, in the dynamic group modes, the whole channel group
    pid_c (in BLOCK_C chunks; a group wider than one chunk is transformed twice: amax, then quantize);
    otherwise channels [pid_c * BLOCK_C, +BLOCK_C). Tiles are numbered p = (image, tile row, tile col).
    NP: the power of two >= n (the padded row length)."""
    pid_c = tl.program_id(1)
    t, t_ok, b, ty, tx = _tile_block(P, tiles_h, tiles_w, BLOCK_T)
    cl = tl.arange(0, BLOCK_C)
    e = tl.arange(0, NP)
    e_ok = e < N_SIDE
    row = t[:, None, None].to(tl.int64) * C  # vq[k, t, c] = vq_ptr + k P C + t C + c, k = a n + e
    pos_off = e[None, :, None].to(tl.int64) * P * C
    t_ok3 = t_ok[:, None, None] & e_ok[None, :, None]

    if SCALE_MODE == DYN_GROUP or SCALE_MODE == DYN_POSITION_GROUP:
        NCH: tl.constexpr = (GROUP_SIZE + BLOCK_C - 1) // BLOCK_C
        c0 = pid_c * GROUP_SIZE
        amax = ()  # per row a: [BLOCK_T, NP], max |V| over the group's channels
        for ch in tl.static_range(NCH):
            c_ok = ch * BLOCK_C + cl < GROUP_SIZE
            v = _transform_block(x_ptr, bt_ptr, b, ty, tx, t_ok, c0 + ch * BLOCK_C + cl, c_ok, H, W, sxn, sxc,
                                 sxh, sxw, pad_h, pad_w, N_SIDE, TILE, NP)
            new = ()
            for a in tl.static_range(N_SIDE):
                ma = tl.max(tl.abs(v[a]), axis=2)
                if ch > 0:
                    ma = tl.maximum(amax[a], ma)
                new = new + (ma,)
            amax = new
        scales = ()  # per row a: broadcastable against [BLOCK_T, NP, BLOCK_C]
        if SCALE_MODE == DYN_GROUP:  # one scale per (tile, group): the max over the n^2 positions too
            am = tl.max(amax[0], axis=1)
            for a in tl.static_range(1, N_SIDE):
                am = tl.maximum(am, tl.max(amax[a], axis=1))
            s_t = _scale_of(am)
            tl.store(sa_out_ptr + t * GROUPS + pid_c, s_t, mask=t_ok)
            for a in tl.static_range(N_SIDE):
                scales = scales + (s_t[:, None, None],)
        else:
            for a in tl.static_range(N_SIDE):
                s_a = _scale_of(amax[a])  # [BLOCK_T, NP]
                tl.store(sa_out_ptr + ((a * N_SIDE + e[None, :]) * P + t[:, None]) * GROUPS + pid_c, s_a,
                         mask=t_ok[:, None] & e_ok[None, :])
                scales = scales + (s_a[:, :, None],)
        for ch in tl.static_range(NCH):
            c_ok = ch * BLOCK_C + cl < GROUP_SIZE
            c = c0 + ch * BLOCK_C + cl
            if NCH > 1:
                v = _transform_block(x_ptr, bt_ptr, b, ty, tx, t_ok, c, c_ok, H, W, sxn, sxc, sxh, sxw,
                                     pad_h, pad_w, N_SIDE, TILE, NP)
            for a in tl.static_range(N_SIDE):
                tl.store(vq_ptr + a * N_SIDE * P * C + pos_off + row + c[None, None, :],
                         _quantize(v[a], scales[a]), mask=t_ok3 & c_ok[None, None, :])
    else:
        c = pid_c * BLOCK_C + cl
        c_ok = c < C
        v = _transform_block(x_ptr, bt_ptr, b, ty, tx, t_ok, c, c_ok, H, W, sxn, sxc, sxh, sxw, pad_h, pad_w,
                             N_SIDE, TILE, NP)
        if SCALE_MODE == IMAGE_AMAX:
            am = tl.max(tl.max(tl.abs(v[0]), axis=2), axis=1)
            for a in tl.static_range(1, N_SIDE):
                am = tl.maximum(am, tl.max(tl.max(tl.abs(v[a]), axis=2), axis=1))
            tl.store(amax_ptr + t * tl.num_programs(1) + pid_c, am, mask=t_ok)
        else:
            if SCALE_MODE == PER_IMAGE:
                s_t = tl.load(scale_in_ptr + b, mask=t_ok, other=1.0)
                tl.store(sa_out_ptr + t, s_t, mask=t_ok & (pid_c == 0))
            g = c // GROUP_SIZE
            for a in tl.static_range(N_SIDE):
                if SCALE_MODE == PER_IMAGE:
                    s = s_t[:, None, None]
                else:  # STATIC: act_scale[position a n + e, group of channel c]
                    s = tl.load(scale_in_ptr + (a * N_SIDE + e[:, None]) * s_scale_pos + g[None, :] * s_scale_g,
                                mask=e_ok[:, None] & c_ok[None, :], other=1.0)[None, :, :]
                tl.store(vq_ptr + a * N_SIDE * P * C + pos_off + row + c[None, None, :], _quantize(v[a], s),
                         mask=t_ok3 & c_ok[None, None, :])


@triton.jit
def _bit_reversed(p, BITS: tl.constexpr):
    r = tl.zeros_like(p)
    for b in tl.static_range(BITS):
        r = r | (((p >> b) & 1) << (BITS - 1 - b))
    return r


@triton.jit
def _split_positions(block, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NPOS2: tl.constexpr, BITS: tl.constexpr):
    """[BLOCK_T, BLOCK_C, NPOS2] -> a tuple of NPOS2 [BLOCK_T, BLOCK_C] tensors, by halving the last axis
    (even / odd) BITS times: slot s of the block ends up as tuple entry bit_reversed(s). Free in registers
    when the last axis is held by one thread."""
    parts = (block,)
    for lvl in tl.static_range(BITS):
        new = ()
        for i in tl.static_range(len(parts)):
            if lvl == BITS - 1:  # the last halving leaves [BLOCK_T, BLOCK_C]
                lo, hi = tl.split(tl.reshape(parts[i], (BLOCK_T, BLOCK_C, 2)))
            else:
                lo, hi = tl.split(tl.reshape(parts[i], (BLOCK_T, BLOCK_C, NPOS2 >> (lvl + 1), 2)))
            new = new + (lo, hi)
        parts = new
    return parts


@triton.jit
def _join_positions(parts, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BITS: tl.constexpr):
    """The inverse of `_split_positions`: tuple entry k lands in slot bit_reversed(k)."""
    for lvl in tl.static_range(BITS):
        new = ()
        for i in tl.static_range(len(parts) // 2):
            new = new + (tl.reshape(tl.join(parts[2 * i], parts[2 * i + 1]), (BLOCK_T, BLOCK_C, 1 << (lvl + 1))),)
        parts = new
    return parts[0]


@triton.jit
def winograd_input_kernel_positions(
    x_ptr, bt_ptr, vq_ptr, sa_out_ptr, scale_in_ptr, amax_ptr,
    C, H, W, sxn, sxc, sxh, sxw, pad_h, pad_w, tiles_h, tiles_w, P, s_scale_pos, s_scale_g,
    GROUP_SIZE: tl.constexpr, GROUPS: tl.constexpr, N_SIDE: tl.constexpr, TILE: tl.constexpr,
    SCALE_MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NP: tl.constexpr,
    LOG_NP: tl.constexpr,
):
    """`winograd_input_kernel_rows`' contract with each thread holding whole tiles: the n x n input values of
    a (tile, channel) come in one [BLOCK_T, BLOCK_C, NP^2] load, are split into n^2 [BLOCK_T, BLOCK_C]
    tensors in registers, transformed separably (2 n^3 FMAs), quantized, and joined back for one store.
    Candidate replacement for the rows kernel (0.53 ms on an H100 at SD 1.5's 2x320x64x64, ~4 µs of bytes):
    one load and one store keep Triton's coalescing pass fast (sm_90 compiles in 1-9 s; 4-10 barriers in the
    dynamic "group" mode, against the rows kernel's 89-215); run-time speed not measured yet. Dynamic group / position-group / static / per-image scales,
    one group per program (BLOCK_C >= GROUP_SIZE in the dynamic group modes)."""
    NPOS: tl.constexpr = N_SIDE * N_SIDE
    NPOS2: tl.constexpr = NP * NP
    BITS: tl.constexpr = 2 * LOG_NP
    pid_c = tl.program_id(1)
    t, t_ok, b, ty, tx = _tile_block(P, tiles_h, tiles_w, BLOCK_T)
    per_group: tl.constexpr = SCALE_MODE == DYN_GROUP or SCALE_MODE == DYN_POSITION_GROUP
    tl.static_assert(not per_group or BLOCK_C >= GROUP_SIZE, "one channel group per program")
    if per_group:
        c = pid_c * GROUP_SIZE + tl.arange(0, BLOCK_C)
        c_ok = tl.arange(0, BLOCK_C) < GROUP_SIZE
    else:
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < C
    pos = _bit_reversed(tl.arange(0, NPOS2), BITS)  # slot -> Winograd position (i n + j)
    pos_ok = pos < NPOS
    i = pos // N_SIDE
    j = pos % N_SIDE
    h = (ty * TILE - pad_h)[:, None] + i[None, :]  # [BLOCK_T, NPOS2]
    w = (tx * TILE - pad_w)[:, None] + j[None, :]
    inside = (h >= 0) & (h < H) & (w >= 0) & (w < W) & pos_ok[None, :] & t_ok[:, None]
    ptrs = (x_ptr + b[:, None, None].to(tl.int64) * sxn + c[None, :, None] * sxc
            + (h * sxh + w * sxw)[:, None, :])
    d = _split_positions(tl.load(ptrs, mask=inside[:, None, :] & c_ok[None, :, None], other=0.0).to(tl.float32),
                         BLOCK_T, BLOCK_C, NPOS2, BITS)
    coef = ()
    for q in tl.static_range(NPOS):
        coef = coef + (tl.load(bt_ptr + q),)
    u = ()  # u[a n + j] = sum_i B^T[a, i] d[i, j]
    for a in tl.static_range(N_SIDE):
        for jj in tl.static_range(N_SIDE):
            acc = coef[a * N_SIDE] * d[jj]
            for ii in tl.static_range(1, N_SIDE):
                acc += coef[a * N_SIDE + ii] * d[ii * N_SIDE + jj]
            u = u + (acc,)
    v = ()  # v[a n + e] = sum_j u[a, j] B^T[e, j]
    for a in tl.static_range(N_SIDE):
        for e in tl.static_range(N_SIDE):
            acc = coef[e * N_SIDE] * u[a * N_SIDE]
            for jj in tl.static_range(1, N_SIDE):
                acc += coef[e * N_SIDE + jj] * u[a * N_SIDE + jj]
            v = v + (acc,)

    if SCALE_MODE == IMAGE_AMAX or SCALE_MODE == DYN_GROUP:
        # max over the positions elementwise in registers first: then one reduction across the channels
        am2 = tl.abs(v[0])
        for k in tl.static_range(1, NPOS):
            am2 = tl.maximum(am2, tl.abs(v[k]))
        am = tl.max(am2, axis=1)
    if SCALE_MODE == IMAGE_AMAX:
        tl.store(amax_ptr + t * tl.num_programs(1) + pid_c, am, mask=t_ok)
    else:
        scales = ()  # per position, broadcastable against [BLOCK_T, BLOCK_C]
        if SCALE_MODE == DYN_GROUP:
            s_t = _scale_of(am)
            tl.store(sa_out_ptr + t * GROUPS + pid_c, s_t, mask=t_ok)
            for k in tl.static_range(NPOS):
                scales = scales + (s_t[:, None],)
        elif SCALE_MODE == DYN_POSITION_GROUP:
            s_pos = ()
            for k in tl.static_range(NPOS):
                s_k = _scale_of(tl.max(tl.abs(v[k]), axis=1))
                scales = scales + (s_k[:, None],)
                s_pos = s_pos + (s_k[:, None],)
            for k in tl.static_range(NPOS, NPOS2):
                s_pos = s_pos + (tl.zeros((BLOCK_T, 1), tl.float32),)
            s_all = tl.reshape(_join_positions(s_pos, BLOCK_T, 1, BITS), (BLOCK_T, NPOS2))
            tl.store(sa_out_ptr + (pos[None, :] * P + t[:, None]) * GROUPS + pid_c, s_all,
                     mask=t_ok[:, None] & pos_ok[None, :])
        elif SCALE_MODE == PER_IMAGE:
            s_t = tl.load(scale_in_ptr + b, mask=t_ok, other=1.0)
            tl.store(sa_out_ptr + t, s_t, mask=t_ok & (pid_c == 0))
            for k in tl.static_range(NPOS):
                scales = scales + (s_t[:, None],)
        else:  # STATIC: act_scale[position, group of channel c], one [NPOS2, BLOCK_C] load
            s_blk = tl.load(scale_in_ptr + pos[:, None] * s_scale_pos + (c // GROUP_SIZE)[None, :] * s_scale_g,
                            mask=pos_ok[:, None] & c_ok[None, :], other=1.0)
            s_parts = _split_positions(tl.reshape(tl.trans(s_blk), (1, BLOCK_C, NPOS2)), 1, BLOCK_C, NPOS2, BITS)
            for k in tl.static_range(NPOS):
                scales = scales + (s_parts[k],)
        q = ()
        for k in tl.static_range(NPOS):
            q = q + (_quantize(v[k], scales[k]),)
        for k in tl.static_range(NPOS, NPOS2):
            q = q + (tl.zeros((BLOCK_T, BLOCK_C), tl.int8),)
        out = vq_ptr + pos[None, None, :].to(tl.int64) * P * C + t[:, None, None].to(tl.int64) * C + c[None, :, None]
        tl.store(out, _join_positions(q, BLOCK_T, BLOCK_C, BITS),
                 mask=t_ok[:, None, None] & c_ok[None, :, None] & pos_ok[None, None, :])


# The input kernels by name, and the one the op and the plugin plans use: the rows variant is the one
# measured and checked on a GPU (2026-11-23); TRTQ_WINOGRAD_INPUT=positions selects the candidate (the
# benchmark times both side by side).
INPUT_KERNELS = {"rows": winograd_input_kernel_rows, "positions": winograd_input_kernel_positions}
INPUT_VARIANT = os.environ.get("TRTQ_WINOGRAD_INPUT", "rows")
if INPUT_VARIANT not in INPUT_KERNELS:
    raise TrtqError(f"TRTQ_WINOGRAD_INPUT={INPUT_VARIANT!r}: expected one of {sorted(INPUT_KERNELS)}")
winograd_input_kernel = INPUT_KERNELS[INPUT_VARIANT]


@triton.jit
def winograd_gemm_kernel(
    vq_ptr, w_ptr, ws_ptr, sa_ptr, m_ptr, at_ptr, bias_ptr, y_ptr,
    P, Cout, Cin, s_sa_pos, s_sa_p, s_sa_g, tiles_h, tiles_w, out_h, out_w, syn, syc, syh, syw,
    GROUP_SIZE: tl.constexpr, GROUPS: tl.constexpr, N_SIDE: tl.constexpr, TILE: tl.constexpr,
    MM: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """vq [n^2, P, Cin] int8, w [n^2, Cout, Cin] int8, ws [n^2, Cout, G], act scales (strided) ->
    y [N, Cout, out_h, out_w] (any strides) or M [n^2, P, Cout] FP32, per MODE.

    Program (pid_co, pid_p[, position]) owns BLOCK_CO output channels x BLOCK_P tiles and computes
    M^T = W V^T: output channels are the MMA's M side (>= 64 rows is what Hopper's wgmma takes; SD layers
    have >= 320 channels), tiles its N side (any multiple of 8), both operands K-major as int8 MMAs need.
    For each position the INT32 sum of every group is exact; group results are dequantized as
    (acc * w_scale) * act_scale and added in group order in FP32, the reference's order. The epilogue adds
    kron(A^T, A^T)[:, position] * M_position into the tiles' m^2 outputs, so M never goes to memory."""
    NPOS: tl.constexpr = N_SIDE * N_SIDE
    NLOOP: tl.constexpr = 1 if MODE == GEMM_TO_M else NPOS  # writing M: one position per program
    pid_co = tl.program_id(0)
    pid_p = tl.program_id(1)
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    co_ok = co < Cout
    p_ok = p < P
    ok2 = co_ok[:, None] & p_ok[None, :]
    kk = tl.arange(0, BLOCK_K)
    a = tl.arange(0, MM)
    y3 = tl.zeros((MM, BLOCK_CO, BLOCK_P), dtype=tl.float32)
    pos0 = tl.program_id(2)  # 0 unless writing M
    for i in range(NLOOP):
        pos = pos0 + i
        m_off = (pos * P + p[None, :]).to(tl.int64) * Cout + co[:, None]
        if MODE == M_TO_Y:
            acc = tl.load(m_ptr + m_off, mask=ok2, other=0.0)
        else:
            acc = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.float32)
            w_row = w_ptr + (pos * Cout + co[:, None]).to(tl.int64) * Cin
            v_col = vq_ptr + (pos * P + p[None, :]).to(tl.int64) * Cin
            for g in range(GROUPS):
                acc_i = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.int32)
                for k0 in range(0, GROUP_SIZE, BLOCK_K):
                    k_ok = k0 + kk < GROUP_SIZE
                    cin = g * GROUP_SIZE + k0 + kk
                    w_blk = tl.load(w_row + cin[None, :], mask=co_ok[:, None] & k_ok[None, :], other=0)
                    v_blk = tl.load(v_col + cin[:, None], mask=k_ok[:, None] & p_ok[None, :], other=0)
                    acc_i = tl.dot(w_blk, v_blk, acc_i, out_dtype=tl.int32)
                ws = tl.load(ws_ptr + (pos * Cout + co) * GROUPS + g, mask=co_ok, other=0.0)
                sa = tl.load(sa_ptr + pos * s_sa_pos + p * s_sa_p + g * s_sa_g, mask=p_ok, other=0.0)
                acc += (acc_i.to(tl.float32) * ws[:, None]) * sa[None, :]
        if MODE == GEMM_TO_M:
            tl.store(m_ptr + m_off, acc, mask=ok2)
        else:
            # kron(A^T, A^T)[:, pos]: A^T[r, i] A^T[s, j] for output (r, s) and position (i, j), from A^T itself
            # (one FP32 product, as torch.kron makes it), so the kernel needs no host-side precomputation.
            a_ok = a < TILE * TILE
            coef = (tl.load(at_ptr + (a // TILE) * N_SIDE + pos // N_SIDE, mask=a_ok, other=0.0)
                    * tl.load(at_ptr + (a % TILE) * N_SIDE + pos % N_SIDE, mask=a_ok, other=0.0))
            y3 += coef[:, None, None] * acc[None, :, :]
    if MODE != GEMM_TO_M:
        if HAS_BIAS:
            y3 += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :, None]
        tiles = tiles_h * tiles_w
        b = p // tiles
        oh = ((p % tiles) // tiles_w * TILE)[None, None, :] + (a // TILE)[:, None, None]
        ow = (p % tiles_w * TILE)[None, None, :] + (a % TILE)[:, None, None]
        ok = ((a < TILE * TILE)[:, None, None] & ok2[None, :, :] & (oh < out_h) & (ow < out_w))  # crop overhang
        off = b[None, None, :].to(tl.int64) * syn + co[None, :, None] * syc + oh * syh + ow * syw
        tl.store(y_ptr + off, y3.to(y_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------------
# Configs and grids. A config is a dict of the block constexprs plus num_warps; grids are pure functions of
# the shapes and the config, so a plugin computes them without Triton.

def input_grid(P: int, C: int, group_size: int, scale_mode: int, config: dict) -> tuple[int, int, int]:
    """Grid of winograd_input_kernel: tile blocks x (groups | channel blocks)."""
    per_group = scale_mode in (1, 2)
    return (triton.cdiv(P, config["BLOCK_T"]), C // group_size if per_group else triton.cdiv(C, config["BLOCK_C"]), 1)


def gemm_grid(P: int, Cout: int, n: int, mode: int, config: dict) -> tuple[int, int, int]:
    """Grid of winograd_gemm_kernel: output-channel blocks x tile blocks (x positions when writing M)."""
    return (triton.cdiv(Cout, config["BLOCK_CO"]), triton.cdiv(P, config["BLOCK_P"]), n * n if mode == 1 else 1)


def _input_configs():
    """The transform holds rows of NP values per (tile, channel) and an [T, NP, NP, C] product in registers:
    blocks of 128-512 (tiles x channels)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_T": 16}, num_warps=1)]  # few programs: the interpreter pays per op
    return tuned([triton.Config({"BLOCK_T": bt}, num_warps=w) for bt, w in ((8, 4), (4, 4), (16, 8))])


def _gemm_configs():
    """BLOCK_CO >= 64: the M side of Hopper's wgmma. Small BLOCK_P keeps the fused epilogue in registers."""
    if INTERPRET:
        return [triton.Config({"BLOCK_CO": 16, "BLOCK_P": 16}, num_warps=1)]
    shapes = ((64, 16, 4), (64, 32, 4), (128, 16, 8), (128, 32, 8), (64, 64, 4), (128, 64, 8), (128, 128, 8))
    return tuned([triton.Config({"BLOCK_CO": bco, "BLOCK_P": bp}, num_warps=w, num_stages=3)
                  for bco, bp, w in shapes])


def _prune_gemm_configs(configs, named_args, **kwargs):
    """The fused epilogue holds MM x BLOCK_CO x BLOCK_P FP32 accumulators: keep them <= 128 registers a
    thread (the smallest block when none fits, F(6,3): that is why F(6,3) defaults to the split path)."""
    mm = 1 if kwargs["MODE"] == 1 else kwargs["MM"]
    kept = [c for c in configs if mm * c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_CO"] <= 128 * 32 * c.num_warps]
    return kept or configs[:1]


# Tuned per shape class: the key holds every size that changes which block shape wins.
input_kernels_tuned = {name: triton.autotune(_input_configs(), key=["C", "P", "GROUP_SIZE", "N_SIDE", "SCALE_MODE"])(
    fn) for name, fn in INPUT_KERNELS.items()}
gemm_kernel_tuned = triton.autotune(_gemm_configs(), key=["P", "Cout", "Cin", "GROUP_SIZE", "N_SIDE", "MODE"],
                                    prune_configs_by={"early_config_prune": _prune_gemm_configs})(
    winograd_gemm_kernel)


# ---------------------------------------------------------------------------------------------------------
# Host side: the stages, launched through torch.library.wrap_triton so torch.compile traces them.

def _grid_shape(x: torch.Tensor, tile: int, padding) -> tuple[int, int, int, int]:
    ph, pw = padding
    out_h, out_w = x.shape[2] + 2 * ph - 2, x.shape[3] + 2 * pw - 2
    if out_h < 1 or out_w < 1:
        raise TrtqError(f"input {tuple(x.shape[2:])} with padding {tuple(padding)} is smaller than the 3x3 kernel")
    return out_h, out_w, -(-out_h // tile), -(-out_w // tile)


def input_stage(x: torch.Tensor, bt: torch.Tensor, tile: int, padding, group_size: int, granularity: str,
                act_scale: torch.Tensor | None, variant: str | None = None):
    """x -> (INT8 codes [n^2, P, Cin], act scales tensor, its (pos, p, g) strides). variant: an INPUT_KERNELS
    name (default INPUT_VARIANT)."""
    wrap = torch.library.wrap_triton
    input_kernel_tuned = input_kernels_tuned[variant or INPUT_VARIANT]
    n = tile + 2
    N, C, H, W = x.shape
    groups = C // group_size
    _, _, th, tw = _grid_shape(x, tile, padding)
    P = N * th * tw
    bt = bt.float().contiguous()
    vq = torch.empty(n * n, P, C, dtype=torch.int8, device=x.device)
    common = dict(C=C, H=H, W=W, sxn=x.stride(0), sxc=x.stride(1), sxh=x.stride(2), sxw=x.stride(3),
                  pad_h=padding[0], pad_w=padding[1], tiles_h=th, tiles_w=tw, P=P, GROUP_SIZE=group_size,
                  GROUPS=groups, N_SIDE=n, TILE=tile, NP=_pow2(n),
                  LOG_NP=_pow2(n).bit_length() - 1)
    dummy = bt  # an unused pointer argument still needs a tensor

    if act_scale is not None:
        sa = act_scale.float().reshape(n * n, groups).contiguous()
        wrap(input_kernel_tuned)[lambda meta: input_grid(P, C, group_size, 0, meta)](
            x, bt, vq, dummy, sa, dummy, s_scale_pos=sa.stride(0), s_scale_g=sa.stride(1), SCALE_MODE=0,
            BLOCK_C=32, **common)
        return vq, sa, (sa.stride(0), 0, sa.stride(1))
    if granularity == "tensor":
        block_c = 32
        amax = torch.empty(P, triton.cdiv(C, block_c), dtype=torch.float32, device=x.device)
        wrap(input_kernel_tuned)[lambda meta: input_grid(P, C, group_size, 4, meta)](
            x, bt, vq, dummy, dummy, amax, s_scale_pos=0, s_scale_g=0, SCALE_MODE=4, BLOCK_C=block_c, **common)
        image_scale = symmetric_scale(amax.reshape(N, -1).amax(dim=1), QMAX)  # the reference's rule, bit for bit
        sa = torch.empty(1, P, 1, dtype=torch.float32, device=x.device)
        wrap(input_kernel_tuned)[lambda meta: input_grid(P, C, group_size, 3, meta)](
            x, bt, vq, sa, image_scale, dummy, s_scale_pos=0, s_scale_g=0, SCALE_MODE=3, BLOCK_C=block_c,
            **common)
        return vq, sa, (0, 1, 0)
    mode = SCALE_MODES[granularity]
    sa = torch.empty(n * n if mode == 2 else 1, P, groups, dtype=torch.float32, device=x.device)
    wrap(input_kernel_tuned)[lambda meta: input_grid(P, C, group_size, mode, meta)](
        x, bt, vq, sa, dummy, dummy, s_scale_pos=0, s_scale_g=0, SCALE_MODE=mode,
        BLOCK_C=min(_pow2(group_size), 128), **common)
    return vq, sa, ((P * groups) if mode == 2 else 0, groups, 1)


def gemm_stage(vq, w_int8, w_scale, sa, sa_strides, at, bias, out, tile: int, group_size: int, mode: int,
               tiles: tuple[int, int], out_hw: tuple[int, int]):
    """Launch winograd_gemm_kernel in `mode` (0 fused to y, 1 to M, 2 M to y); `out` is y or M."""
    n = tile + 2
    npos, P = vq.shape[:2]
    cout, cin = w_int8.shape[2], w_int8.shape[3]
    w = w_int8.reshape(npos, cout, cin).contiguous()
    ws = w_scale.float().reshape(npos, cout, -1).contiguous()
    y_strides = out.stride() if out.dim() == 4 else (0, 0, 0, 0)
    m_buf = out if mode == 1 else vq  # M to write; in mode 2 the M to read comes in as `vq`
    at = at.float().contiguous()
    torch.library.wrap_triton(gemm_kernel_tuned)[lambda meta: gemm_grid(P, cout, n, mode, meta)](
        vq, w, ws, sa, m_buf, at, bias if bias is not None else at, out,
        P, cout, cin, *sa_strides, tiles[0], tiles[1], out_hw[0], out_hw[1], *y_strides,
        GROUP_SIZE=group_size, GROUPS=cin // group_size, N_SIDE=n, TILE=tile, MM=_pow2(tile * tile), MODE=mode,
        HAS_BIAS=bias is not None, BLOCK_K=max(32, min(_pow2(group_size), 128)))


def winograd_conv_int8_triton(x, w_int8, w_scale, bias, at, bt, tile: int, padding, group_size: int,
                              act_granularity: str, act_scale, fuse_output: bool | None = None,
                              input_variant: str | None = None) -> torch.Tensor:
    """`trtq::winograd_conv_int8` on the Triton kernels (arguments checked by the op). fuse_output None: fused
    for F(2,3), F(4,3); split for F(6,3), whose 36 outputs a tile do not fit a useful block in registers.
    input_variant: which input kernel (`INPUT_KERNELS`; default INPUT_VARIANT)."""
    fuse_output = tile <= 4 if fuse_output is None else fuse_output
    out_h, out_w, th, tw = _grid_shape(x, tile, padding)
    vq, sa, sa_strides = input_stage(x, bt, tile, padding, group_size, act_granularity, act_scale, input_variant)
    cout = w_int8.shape[2]
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    y = torch.empty(x.shape[0], cout, out_h, out_w, dtype=x.dtype, device=x.device, memory_format=fmt)
    if fuse_output:
        gemm_stage(vq, w_int8, w_scale, sa, sa_strides, at, bias, y, tile, group_size, 0, (th, tw), (out_h, out_w))
    else:
        m = torch.empty(vq.shape[0], vq.shape[1], cout, dtype=torch.float32, device=x.device)
        gemm_stage(vq, w_int8, w_scale, sa, sa_strides, at, bias, m, tile, group_size, 1, (th, tw), (out_h, out_w))
        gemm_stage(m, w_int8, w_scale, sa, sa_strides, at, bias, y, tile, group_size, 2, (th, tw), (out_h, out_w))
    return y
