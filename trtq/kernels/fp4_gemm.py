"""Triton kernels for `trtq::fp4_group_gemm` (spec: the reference and contract in `trtq/ops/fp4_gemm.py`).

Two kernels, launched by `fp4_group_gemm` below:
- `act_quant_kernel`: activations -> FP8 E4M3 bytes holding values of the activation format, plus the
  per-(row, group) scales (and, for FP8 scales, one FP32 scale per row). Memory-bound, one pass over x
  (two for FP8 scales: the row's largest group scale must be known before any group is quantized).
- `fp4_gemm_kernel`: unpacks 4-bit weight codes to FP8 E4M3 in registers (a shift of the code's bits into
  E4M3's fields, exact for every FP4 format up to a power of two folded into the weight scales; see
  `fp4_pairs_to_fp8`), FP8 `tl.dot` with FP32 accumulation, one partial dot
  per group scaled by (activation scale × weight scale), per-tensor / per-row scales and bias in the
  epilogue. It can also quantize activations itself while loading A (`fuse_act_quant`; FP32 scales only):
  which of the two is faster depends on N / BLOCK_N (the fused path redoes the quantization once per
  column tile) and is for the benchmark to decide.

Hopper and Ada FP8 MMA take K = 32 per instruction, so a group of 16 cannot be its own dot: with g = 16
a K-step covers two groups and runs one dot per group with the other group's A columns zeroed (twice the
MMA work, exact). With g >= 32 a K-step is exactly one group. `group_size == K` (per-channel weights,
per-token activations) accumulates the whole K in the MMA and scales once in the epilogue.

TensorRT-plugin ready: the kernels take pointers, int shapes/strides, one FP32 scalar (act_clip) and
constexprs; the launch grids are pure functions of the shapes (`gemm_grid`, `act_quant_grid`). K is a
constexpr: a model has a handful of K values, the K-loop's trip count is then known to the compiler, and
the interpreter (with numpy 2) cannot loop to a run-time bound.
Numbers are reproduced bit for bit where the math allows: IEEE division (`div_rn`; Triton's `/` is an
approximate division on NVIDIA GPUs), round-half-even onto the format grid done in integer/FP32 arithmetic
(`round_to_grid`) rather than by a hardware conversion, so the interpreter and the GPU agree.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from trtq.errors import TrtqError
from trtq.kernels import tuned
from trtq.formats import FloatFormat, get_format
from trtq.fp4 import ACT_FORMATS, FP4_FORMATS, gemm_quantizes_activations

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Kernels read module globals only as constexprs.
E4M3_MAX: tl.constexpr = tl.constexpr(448.0)
E4M3_SMALLEST: tl.constexpr = tl.constexpr(2.0**-9)  # smallest positive (subnormal) E4M3: the floor of FP8 scales

# A_MODE of the GEMM: where the A operand comes from.
A_CODES, A_FLOAT, A_FUSED = 0, 1, 2


# ----------------------------------------------------------------------------------------- jit helpers
@triton.jit
def round_to_grid(v, MAN_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MAX_VALUE: tl.constexpr):
    """Round-half-even onto a float format's grid, saturating at MAX_VALUE: `FloatFormat.round`, exactly.

    The quantum of v's binade (clamped to the subnormal range) comes from v's FP32 exponent bits; scaling by a
    power of two is exact, and adding then subtracting 2^23 rounds to an integer half-to-even in FP32."""
    mag = tl.abs(v)
    exp = ((mag.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exp = tl.maximum(exp, MIN_EXP)
    quantum = ((exp - MAN_BITS + 127) << 23).to(tl.float32, bitcast=True)
    inv_quantum = ((127 - exp + MAN_BITS) << 23).to(tl.float32, bitcast=True)
    r = mag * inv_quantum
    r = (r + 8388608.0) - 8388608.0
    r = tl.minimum(r * quantum, MAX_VALUE)
    return tl.where(v < 0, -r, r)


@triton.jit
def quantize_values(x, scale, MAN_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MAX_VALUE: tl.constexpr):
    """x / scale (IEEE), clamped to ±max, rounded onto the grid: `trtq.fp4.quantize_groups`."""
    v = tl.math.div_rn(x, scale)
    v = tl.minimum(tl.maximum(v, -MAX_VALUE), MAX_VALUE)
    return round_to_grid(v, MAN_BITS, MIN_EXP, MAX_VALUE)


@triton.jit
def scale_from_amax(amax, act_clip, MAX_VALUE: tl.constexpr, ZERO_GROUP_SCALE: tl.constexpr):
    """act_clip·amax / format max (IEEE); all-zero groups get ZERO_GROUP_SCALE."""
    bound = amax * act_clip
    return tl.where(bound > 0, tl.math.div_rn(bound, MAX_VALUE), ZERO_GROUP_SCALE)


@triton.jit
def fp4_pairs_to_fp8(packed, SHIFT: tl.constexpr):
    """Packed bytes (low nibble first, sign in bit 3 of a nibble) -> (low, high) FP8 E4M3 values, each the FP4
    value times 2^(bias - 7). An FP4 code's exponent and mantissa bits, moved into E4M3's exponent (low
    bits) and mantissa (top bits) fields by one shift, read as E4M3 that same value scaled by a power of two,
    subnormals included (`fp4_decode` checks this for every code of every format): 3 integer ops a code
    against ~10 for a table lookup. The caller multiplies the weight scales by 2^(7 - bias)."""
    lo = ((packed & 0x08) << 4) | ((packed & 0x07) << SHIFT)
    hi = (packed & 0x80) | ((packed & 0x70) >> (4 - SHIFT))
    return lo.to(tl.float8e4nv, bitcast=True), hi.to(tl.float8e4nv, bitcast=True)


@triton.jit
def tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column), GROUP_M row tiles sweeping the columns together (L2 reuse)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows, (pid % per_group) // rows


# ----------------------------------------------------------------------------------------- kernels
@triton.jit
def act_quant_kernel(
    x_ptr, static_scale_ptr, q_ptr, scale_ptr, row_scale_ptr,
    M, K: tl.constexpr, act_clip,
    stride_xm, stride_xk, stride_qm, stride_sm,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    MAN_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MAX_VALUE: tl.constexpr,
    STATIC: tl.constexpr, FP8_SCALES: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Rows [BLOCK_R] × groups [BLOCK_G] × elements [GROUP_PAD] per step. Writes q (uint8 E4M3 bytes, [M, K]);
    dynamic: scale [M, K/g] (FP32 scales, or the E4M3 values of FP8 scales) and, with FP8_SCALES, row_scale [M]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    gi = tl.arange(0, BLOCK_G)
    el = tl.arange(0, GROUP_PAD)
    row_ok = rows < M
    groups: tl.constexpr = K // GROUP

    if FP8_SCALES:  # pass 1: the row's FP32 scale = its largest group scale / 448 (1 for an all-zero row)
        row_max = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for c0 in range(0, K, BLOCK_G * GROUP):
            g0 = c0 // GROUP
            g_ok = g0 + gi < groups
            cols = (g0 + gi)[None, :, None] * GROUP + el[None, None, :]
            mask = row_ok[:, None, None] & g_ok[None, :, None] & (el < GROUP)[None, None, :]
            x = tl.load(x_ptr + rows[:, None, None] * stride_xm + cols * stride_xk, mask=mask, other=0.0)
            s = scale_from_amax(tl.max(tl.abs(x.to(tl.float32)), axis=2), act_clip, MAX_VALUE, 0.0)
            row_max = tl.maximum(row_max, tl.max(s, axis=1))
        row_scale = tl.where(row_max > 0, tl.math.div_rn(row_max, E4M3_MAX), 1.0)
        tl.store(row_scale_ptr + rows, row_scale, mask=row_ok)

    for c0 in range(0, K, BLOCK_G * GROUP):
        g0 = c0 // GROUP
        g_ok = g0 + gi < groups
        cols = (g0 + gi)[None, :, None] * GROUP + el[None, None, :]
        mask = row_ok[:, None, None] & g_ok[None, :, None] & (el < GROUP)[None, None, :]
        x = tl.load(x_ptr + rows[:, None, None] * stride_xm + cols * stride_xk, mask=mask, other=0.0)
        x = x.to(tl.float32)
        s_mask = row_ok[:, None] & g_ok[None, :]
        s_ptrs = scale_ptr + rows[:, None] * stride_sm + (g0 + gi)[None, :]
        if STATIC:
            s = tl.load(static_scale_ptr + g0 + gi, mask=g_ok, other=1.0)[None, :]
        elif FP8_SCALES:
            s = scale_from_amax(tl.max(tl.abs(x), axis=2), act_clip, MAX_VALUE, 0.0)
            v = round_to_grid(tl.math.div_rn(s, row_scale[:, None]), 3, -6, E4M3_MAX)
            v = tl.maximum(v, E4M3_SMALLEST)
            tl.store(s_ptrs, v, mask=s_mask)
            s = v * row_scale[:, None]
        else:
            s = scale_from_amax(tl.max(tl.abs(x), axis=2), act_clip, MAX_VALUE, 1.0)
            tl.store(s_ptrs, s, mask=s_mask)
        q = quantize_values(x, s[:, :, None], MAN_BITS, MIN_EXP, MAX_VALUE)
        q = q.to(tl.float8e4nv).to(tl.uint8, bitcast=True)  # exact: grid values are E4M3 values
        tl.store(q_ptr + rows[:, None, None] * stride_qm + cols, q, mask=mask)


def _gemm_configs():
    """(BLOCK_M, BLOCK_N, warps, stages, LOADS_PER_STEP): LOADS_PER_STEP > 1 only matters with group scales
    (the pruning drops it for one-group GEMMs)."""
    if INTERPRETED:  # the interpreter runs one program at a time in numpy: few, large-enough tiles; 2 loads a
        # step so that the tests cover the unrolled path and its masked tail
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 4, "LOADS_PER_STEP": 2}, num_warps=4,
                              num_stages=1)]
    shapes = [(128, 128, 8, 3, 1), (128, 128, 8, 3, 2), (128, 128, 8, 3, 4), (128, 128, 8, 4, 1),
              (128, 256, 8, 3, 1), (128, 256, 8, 3, 2), (256, 128, 8, 3, 1), (64, 128, 4, 4, 1),
              (64, 128, 4, 4, 2), (128, 64, 4, 4, 1), (64, 64, 4, 3, 1)]
    return tuned([triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8, "LOADS_PER_STEP": lps},
                                num_warps=w, num_stages=st) for bm, bn, w, st, lps in shapes])


def _prune_gemm_configs(configs, named_args, **kwargs):
    """Several loads a step only with group scales and when they divide the K-blocks (no masked tail)."""
    blocks = kwargs["K"] // kwargs["BLOCK_K"] if "K" in kwargs else named_args["K"] // kwargs["BLOCK_K"]
    kept = [c for c in configs if c.kwargs["LOADS_PER_STEP"] == 1
            or (not kwargs["ONE_GROUP"] and blocks % c.kwargs["LOADS_PER_STEP"] == 0)]
    return kept or configs[:1]


@triton.jit
def fp4_gemm_kernel(
    a_ptr, a_scale_ptr, a_row_scale_ptr, w_ptr, w_scale_ptr, w_tensor_scale_ptr, bias_ptr, out_ptr,
    M, N, K: tl.constexpr, act_clip,
    stride_am, stride_ak, stride_asm, stride_asg, stride_wn, stride_wsn, stride_wsg, stride_om, stride_on,
    GROUP: tl.constexpr, ONE_GROUP: tl.constexpr, BLOCK_K: tl.constexpr,
    W_SHIFT: tl.constexpr, W_UNSCALE: tl.constexpr, W_SCALE_FP8: tl.constexpr,
    A_MODE: tl.constexpr, A_STATIC: tl.constexpr,
    A_MAN_BITS: tl.constexpr, A_MIN_EXP: tl.constexpr, A_MAX: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, LOADS_PER_STEP: tl.constexpr,
):
    """out[M, N] = dequant(A) @ dequant(W)ᵀ (+ bias), one output tile per program.

    A_MODE 0: A is uint8 E4M3 bytes with scales a_scale[m, group] (row stride 0 for static scales) and, if
    HAS_ROW_SCALE, a_row_scale[m]. 1: A is float x (W4A16), the weights are converted to its dtype.
    2: A is float x quantized here, group by group (static scales from a_scale, or dynamic FP32 scales)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kb = tl.arange(0, BLOCK_K // 2)
    m_ok = offs_m < M
    n_ok = offs_n < N
    groups: tl.constexpr = K // GROUP
    SUB: tl.constexpr = 1 if ONE_GROUP else BLOCK_K // GROUP  # groups per load
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # LOADS_PER_STEP K-blocks per loop iteration, unrolled: with group scales, the dots of one step are
    # independent, so one group's rescale (CUDA cores) can overlap the next group's MMA.
    for k_step in range(0, K, BLOCK_K * LOADS_PER_STEP):
        for j in tl.static_range(LOADS_PER_STEP):
            k0 = k_step + j * BLOCK_K
            k_ok = k0 + offs_k < K
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + (k0 + offs_k)[None, :] * stride_ak,
                        mask=m_ok[:, None] & k_ok[None, :], other=0)
            if A_MODE == 0:
                a = a.to(tl.float8e4nv, bitcast=True)
            elif A_MODE == 2:
                x = a.to(tl.float32)
                if A_STATIC:
                    a_sc = tl.load(a_scale_ptr + ((k0 + offs_k) // GROUP) * stride_asg, mask=k_ok, other=1.0)
                    x_sc = a_sc[None, :]
                else:
                    amax = tl.max(tl.abs(tl.reshape(x, (BLOCK_M, SUB, GROUP))), axis=2)
                    a_sc = scale_from_amax(amax, act_clip, A_MAX, 1.0)  # [BLOCK_M, SUB]
                    x_sc = tl.reshape(tl.broadcast_to(a_sc[:, :, None], (BLOCK_M, SUB, GROUP)), (BLOCK_M, BLOCK_K))
                a = quantize_values(x, x_sc, A_MAN_BITS, A_MIN_EXP, A_MAX).to(tl.float8e4nv)

            packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + (k0 // 2 + offs_kb)[None, :],
                             mask=n_ok[:, None] & (k0 // 2 + offs_kb < K // 2)[None, :], other=0)
            lo, hi = fp4_pairs_to_fp8(packed, W_SHIFT)
            w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))  # low nibble first: k = 2 byte + nibble
            if A_MODE == 1:
                if DOT_IEEE:  # FP32 activations (and the interpreter, whose bf16 dot is unreliable): FP32 dot
                    a = a.to(tl.float32)
                    w = w.to(tl.float32)
                else:
                    w = w.to(tl.float32).to(a.dtype)  # via FP32: sm_89 has no direct FP8 -> bf16 conversion
            w = tl.trans(w)

            if ONE_GROUP:
                if DOT_IEEE:
                    acc = tl.dot(a, w, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, w, acc)
            else:
                for sub in tl.static_range(SUB):
                    grp = k0 // GROUP + sub
                    if SUB == 1:
                        a_j = a
                    else:  # one dot per group: the other groups' columns of A are zeroed
                        a_j = tl.where((offs_k // GROUP == sub)[None, :], a, tl.zeros_like(a))
                    if DOT_IEEE:
                        partial = tl.dot(a_j, w, input_precision="ieee")
                    else:
                        partial = tl.dot(a_j, w)
                    g_ok = grp < groups
                    sw = tl.load(w_scale_ptr + offs_n * stride_wsn + grp * stride_wsg, mask=n_ok & g_ok, other=0)
                    if W_SCALE_FP8:
                        sw = sw.to(tl.float8e4nv, bitcast=True)
                    sw = sw.to(tl.float32) * W_UNSCALE
                    if A_MODE == 0:
                        sa = tl.load(a_scale_ptr + offs_m * stride_asm + grp * stride_asg, mask=m_ok & g_ok,
                                     other=0.0)
                        scale = sa[:, None] * sw[None, :]
                    elif A_MODE == 1:
                        scale = sw[None, :]
                    elif A_STATIC:
                        sa = tl.load(a_scale_ptr + grp * stride_asg, mask=g_ok, other=0.0)
                        scale = sa * sw[None, :]
                    elif SUB == 1:
                        scale = tl.reshape(a_sc, (BLOCK_M,))[:, None] * sw[None, :]
                    else:
                        sa = tl.sum(tl.where((tl.arange(0, SUB) == sub)[None, :], a_sc, 0.0), axis=1)
                        scale = sa[:, None] * sw[None, :]
                    acc = acc + partial * scale

    if ONE_GROUP:  # the single group's scales, once
        sw = tl.load(w_scale_ptr + offs_n * stride_wsn, mask=n_ok, other=0)
        if W_SCALE_FP8:
            sw = sw.to(tl.float8e4nv, bitcast=True)
        sw = sw.to(tl.float32) * W_UNSCALE
        if A_MODE == 0:
            sa = tl.load(a_scale_ptr + offs_m * stride_asm, mask=m_ok, other=0.0)
            acc = acc * (sa[:, None] * sw[None, :])
        else:
            acc = acc * sw[None, :]

    if HAS_ROW_SCALE or W_SCALE_FP8:  # per-tensor (weights) and per-row (activations) FP32 scales
        t = tl.full((BLOCK_M,), 1.0, tl.float32)
        if HAS_ROW_SCALE:
            t = tl.load(a_row_scale_ptr + offs_m, mask=m_ok, other=1.0)
        if W_SCALE_FP8:
            t = t * tl.load(w_tensor_scale_ptr)
        acc = acc * t[:, None]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def fp4_gemm_plugin_entry(
    x_ptr, w_ptr, w_scale_ptr, w_tensor_scale_ptr, bias_ptr, a_scale_ptr, M, N, out_ptr,
    K: tl.constexpr, ACT_CLIP: tl.constexpr, GROUP: tl.constexpr, ONE_GROUP: tl.constexpr, BLOCK_K: tl.constexpr,
    W_SHIFT: tl.constexpr, W_UNSCALE: tl.constexpr, W_SCALE_FP8: tl.constexpr,
    A_MODE: tl.constexpr, A_STATIC: tl.constexpr,
    A_MAN_BITS: tl.constexpr, A_MIN_EXP: tl.constexpr, A_MAX: tl.constexpr,
    HAS_BIAS: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, LOADS_PER_STEP: tl.constexpr,
):
    """`fp4_gemm_kernel` with its parameters in TensorRT's ahead-of-time plugin order: the node's six inputs
    (x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale), the int32 extra arguments (M, N),
    the output. For the one-kernel cases only (A_MODE float or fused: no activation-quantization workspace);
    contiguous tensors, so every stride follows from K, GROUP and N; act_clip is a node attribute, hence a
    constexpr here. Absent inputs are never read (HAS_BIAS, A_STATIC, W_SCALE_FP8 say which are there)."""
    fp4_gemm_kernel(
        x_ptr, a_scale_ptr, w_scale_ptr, w_ptr, w_scale_ptr, w_tensor_scale_ptr, bias_ptr, out_ptr,
        M, N, K, ACT_CLIP, K, 1, 0, 1, K // 2, K // GROUP, 1, N, 1,
        GROUP, ONE_GROUP, BLOCK_K, W_SHIFT, W_UNSCALE, W_SCALE_FP8, A_MODE, A_STATIC, A_MAN_BITS, A_MIN_EXP, A_MAX,
        False, HAS_BIAS, DOT_IEEE, BLOCK_M, BLOCK_N, GROUP_M, LOADS_PER_STEP)


fp4_gemm_kernel_tuned = triton.autotune(
    configs=_gemm_configs(), key=["M", "N", "K", "GROUP", "A_MODE", "ONE_GROUP", "W_SCALE_FP8"],
    prune_configs_by={"early_config_prune": _prune_gemm_configs})(fp4_gemm_kernel)


# ----------------------------------------------------------------------------------------- launch
def gemm_grid(M: int, N: int, BLOCK_M: int, BLOCK_N: int) -> tuple[int]:
    return (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N),)


def act_quant_blocks(group_size: int, groups: int) -> tuple[int, int, int]:
    """(GROUP_PAD, BLOCK_G, BLOCK_R) for the activation quantization: about 4K elements per step."""
    pad = triton.next_power_of_2(group_size)
    block_g = max(1, min(triton.next_power_of_2(groups), 512 // pad))
    block_r = max(1, min(8, 4096 // (pad * block_g)))
    return pad, block_g, block_r


def act_quant_grid(M: int, BLOCK_R: int) -> tuple[int]:
    return (triton.cdiv(M, BLOCK_R),)


def _format_constants(fmt_name: str) -> tuple[int, int, float]:
    """(mantissa bits, smallest normal exponent, largest value) of a float format: the rounding constants."""
    fmt = get_format(fmt_name)
    if not isinstance(fmt, FloatFormat):
        raise TrtqError(f"FP4 kernels quantize to float formats, got {fmt_name}")
    return fmt.man_bits, fmt.min_normal_exp, fmt.max_value


def fp4_decode(fmt_name: str) -> tuple[int, float]:
    """(SHIFT, UNSCALE) of `fp4_pairs_to_fp8` for an FP4 format: the shift that moves a code's exponent and
    mantissa bits into E4M3's fields, and 2^(7 - bias), the factor between the E4M3 value read and the FP4
    value. Checked on all 16 codes: a format for which the shift does not give every value exactly is
    refused (the GEMM would silently compute something else)."""
    fmt = get_format(fmt_name)
    if not isinstance(fmt, FloatFormat) or fmt.bits != 4:
        raise TrtqError(f"{fmt_name} is not a 4-bit float format")
    shift, unscale = 3 - fmt.man_bits, 2.0 ** (7 - fmt.bias)
    codes = torch.arange(16)
    e4m3 = (((codes & 8) << 4) | ((codes & 7) << shift)).to(torch.uint8).view(torch.float8_e4m3fn)
    if not torch.equal(e4m3.double() * unscale, fmt.decode(codes).double()):
        raise TrtqError(f"{fmt_name}: its codes shifted into FP8 E4M3 fields do not give its values")
    return shift, unscale


# Built once at import: under torch.compile the launch code runs on fake tensors, which hold no data.
FORMAT_CONSTANTS = {name: _format_constants(name) for name in ACT_FORMATS}
FP4_DECODE = {name: fp4_decode(name) for name in FP4_FORMATS}


def quantize_activations(rows: torch.Tensor, act_scale, act_format: str, group_size: int, fp8_scales: bool,
                         act_clip: float):
    """The activation-quantization kernel: rows [M, K] -> (q uint8 [M, K], scale, row_scale or None).

    scale is [M, K/g] (dynamic) or the static [K/g] tensor itself (the GEMM reads it with row stride 0)."""
    from torch.library import wrap_triton

    m, k = rows.shape
    groups = k // group_size
    static = act_scale is not None
    q = torch.empty(m, k, dtype=torch.uint8, device=rows.device)
    scale = act_scale.float().contiguous() if static else torch.empty(m, groups, device=rows.device)
    row_scale = torch.empty(m, device=rows.device) if fp8_scales and not static else None
    pad, block_g, block_r = act_quant_blocks(group_size, groups)
    man, min_exp, fmax = FORMAT_CONSTANTS[act_format]
    wrap_triton(act_quant_kernel)[act_quant_grid(m, block_r)](
        rows, scale, q, scale, scale if row_scale is None else row_scale,
        m, k, float(act_clip),
        rows.stride(0), rows.stride(1), q.stride(0), 0 if static else scale.stride(0),
        GROUP=group_size, GROUP_PAD=pad, MAN_BITS=man, MIN_EXP=min_exp, MAX_VALUE=fmax,
        STATIC=static, FP8_SCALES=fp8_scales and not static, BLOCK_R=block_r, BLOCK_G=block_g)
    return q, scale, row_scale


def fp4_group_gemm(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                   weight_tensor_scale: torch.Tensor | None, bias: torch.Tensor | None,
                   act_scale: torch.Tensor | None, weight_format: str, act_format: str, group_size: int,
                   scale_format: str, act_clip: float, fuse_act_quant: bool = False) -> torch.Tensor:
    """The op's Triton implementation (same arguments as `torch.ops.trtq.fp4_group_gemm`).

    fuse_act_quant: quantize activations inside the GEMM's A-load instead of in a separate kernel; only for
    FP32 activation scales (static, or dynamic with group_size < K), else the separate kernel runs."""
    from torch.library import wrap_triton

    n, k = weight_packed.shape[0], weight_packed.shape[1] * 2
    g = group_size
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    fp8_scales = scale_format != "float32"
    one_group = g == k
    static = act_scale is not None
    fuse = fuse_act_quant and gemm_quantizes_activations(act_format, g, k, scale_format, static)

    a_scale = a_row_scale = None
    if act_format == "none":
        a, mode = rows, A_FLOAT
    elif fuse:
        a, mode = rows, A_FUSED
        a_scale = act_scale.float().contiguous() if static else None
    else:
        a, a_scale, a_row_scale = quantize_activations(rows, act_scale, act_format, g, fp8_scales, act_clip)
        mode = A_CODES
    a_stride_m = 0 if (a_scale is None or static) else a_scale.stride(0)

    # The interpreter converts FP32 to bf16/fp16 by truncation (GPUs round to nearest even): store FP32 there.
    out_dtype = torch.float32 if INTERPRETED else x.dtype
    out = torch.empty(m, n, dtype=out_dtype, device=x.device)
    shift, unscale = FP4_DECODE[weight_format]
    a_man, a_min_exp, a_max = FORMAT_CONSTANTS[act_format] if mode == A_FUSED else (0, 0, 1.0)
    dummy = weight_scale  # any tensor: pointers of absent inputs are never read
    wrap_triton(fp4_gemm_kernel_tuned)[lambda meta: gemm_grid(m, n, meta["BLOCK_M"], meta["BLOCK_N"])](
        a, dummy if a_scale is None else a_scale, dummy if a_row_scale is None else a_row_scale,
        weight_packed, weight_scale, dummy if weight_tensor_scale is None else weight_tensor_scale,
        dummy if bias is None else bias, out,
        m, n, k, float(act_clip),
        a.stride(0), a.stride(1), a_stride_m, 1, weight_packed.stride(0), weight_scale.stride(0),
        weight_scale.stride(1), out.stride(0), out.stride(1),
        GROUP=g, ONE_GROUP=one_group, BLOCK_K=gemm_block_k(g, one_group),
        W_SHIFT=shift, W_UNSCALE=unscale, W_SCALE_FP8=fp8_scales,
        A_MODE=mode, A_STATIC=static, A_MAN_BITS=a_man, A_MIN_EXP=a_min_exp, A_MAX=a_max,
        HAS_ROW_SCALE=a_row_scale is not None, HAS_BIAS=bias is not None,
        # bf16/fp16 x FP4 products are exact in FP32, so an FP32 dot computes the same W4A16 block sums
        DOT_IEEE=mode == A_FLOAT and (x.dtype == torch.float32 or INTERPRETED))
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


def gemm_block_k(group_size: int, one_group: bool) -> int:
    """K per step: one group (at least 32, the FP8 MMA's K), or 128 when the whole K is one group."""
    return 128 if one_group else max(group_size, 32)
