"""Launch plans: what a TensorRT plugin launches for one trtq node, computed from its attributes and shapes.

A plan lists the node's buffers (inputs, workspaces, the output; each with dtype and shape) and the kernel
launches in order: the Triton kernel, its constexprs and options, the grid, and every run-time argument by
parameter name (a buffer, an int or a float). Nothing here needs a GPU, TensorRT or torch tensors: the
kernels' PTX is produced by `triton.compile` for any NVIDIA target, the grids are integer arithmetic on the
shapes, and the pointer types of the signature follow from the buffers' dtypes, as Triton's JIT would make
them. The same plan is executed by the cuda-python harness (`trtq.plugins.harness`, standing in for TensorRT)
and is what the plugins hand TensorRT (`trtq.plugins.tensorrt_defs`).

The kernels are the ones the torch ops run (`trtq.kernels`), launched with the same arguments as the torch
path's launch functions (`winograd_conv_int8_triton`, `fp4_group_gemm`) give them: a plan is checked against
the torch op, never against a copy of the kernel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from trtq.errors import TrtqError
from trtq.fp4 import gemm_quantizes_activations
from trtq.plugins.specs import FP4GemmAttrs, WinogradAttrs, fp4_output_shape, winograd_output_shape

# Buffer dtypes (torch's names): (the name Triton's signatures use, bytes per element).
DTYPES = {"float32": ("fp32", 4), "float16": ("fp16", 2), "bfloat16": ("bf16", 2), "int8": ("i8", 1), "uint8": ("u8", 1)}


def cdiv(a, b):
    """Ceiling division with + - // only, so it also works on TensorRT's symbolic shape expressions."""
    return (a + b - 1) // b


@dataclass(frozen=True)
class Buffer:
    name: str
    dtype: str  # a key of DTYPES (torch.<dtype> is the tensor dtype)
    shape: tuple[int, ...]
    role: str  # "input" | "workspace" | "output"

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype][1] * math.prod(self.shape)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: `args` maps every run-time parameter to a buffer name (str), an int or a float."""
    fn: object  # the triton.JITFunction
    constexprs: dict
    options: dict  # num_warps, num_stages
    grid: tuple[int, int, int]
    args: dict

    @property
    def params(self) -> list[str]:
        """Run-time parameters in the kernel's order (what its PTX entry takes, before Triton's two scratch
        pointers)."""
        return [name for name in self.fn.arg_names if name not in self.constexprs]

    def signature(self, buffers: dict[str, Buffer]) -> dict:
        sig = {}
        for name in self.params:
            value = self.args[name]
            if isinstance(value, str):
                sig[name] = "*" + DTYPES[buffers[value].dtype][0]
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TrtqError(f"argument {name}={value!r} of {self.fn.__name__} is not a buffer, int or float")
            else:
                sig[name] = "i32" if isinstance(value, int) else "fp32"
        return sig | {name: "constexpr" for name in self.constexprs}

    def compile(self, buffers: dict[str, Buffer], arch: int):
        """The kernel compiled for sm_<arch> (PTX in `.asm["ptx"]`, `.metadata.name/.shared/.num_warps`)."""
        sig = self.signature(buffers)
        return _compile(self.fn, tuple(sig.items()), tuple(self.constexprs.items()), tuple(self.options.items()),
                        arch)


@functools.lru_cache(maxsize=256)
def _compile(fn, signature: tuple, constexprs: tuple, options: tuple, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature=dict(signature), constexprs=dict(constexprs))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))


@dataclass(frozen=True)
class LaunchPlan:
    buffers: dict[str, Buffer]
    launches: tuple[Launch, ...]
    output: str = "y"
    notes: list[str] = field(default_factory=list)

    @property
    def workspace_bytes(self) -> int:
        """Scratch memory the plugin asks TensorRT for (256-byte aligned per buffer)."""
        return sum(cdiv(b.nbytes, 256) * 256 for b in self.buffers.values() if b.role == "workspace")

    @property
    def aot_ready(self) -> bool:
        """One kernel and no workspace: what TensorRT's ahead-of-time plugin path (one PTX) can carry."""
        return len(self.launches) == 1 and self.workspace_bytes == 0


# ----------------------------------------------------------------------------------------- WinogradConvInt8
WINOGRAD_INPUT_CONFIG = {"BLOCK_T": 8, "num_warps": 4}
WINOGRAD_GEMM_CONFIGS = (  # tactics: (BLOCK_CO, BLOCK_P, num_warps); the fused epilogue fits the first three
    (64, 16, 4), (64, 32, 4), (128, 16, 8), (128, 32, 8), (64, 64, 4), (128, 64, 8))


def winograd_plan(attrs: WinogradAttrs, x_shape: tuple[int, ...], w_shape: tuple[int, ...], dtype: str,
                  has_bias: bool, has_act_scale: bool, tactic: int = 0) -> LaunchPlan:
    """The launches of one WinogradConvInt8 node: input transform + quantization, then the INT8 GEMMs with
    the output transform fused (F(2,3), F(4,3)) or as a second pass over M (F(6,3)), as the torch op runs."""
    from trtq.kernels import winograd as wk

    tile, g = attrs.tile, attrs.group_size
    n, npos = tile + 2, (tile + 2) ** 2
    batch, cin, h, w = x_shape
    cout = w_shape[2]
    groups = cin // g
    ph, pw = attrs.pads
    out_shape = winograd_output_shape(x_shape, w_shape, attrs)
    out_h, out_w = out_shape[2], out_shape[3]
    th, tw = cdiv(out_h, tile), cdiv(out_w, tile)
    p = batch * th * tw
    if not has_act_scale and attrs.act_granularity == "tensor":
        raise TrtqError("WinogradConvInt8 with dynamic act_granularity 'tensor' reduces the image amax on the host "
                        "between two launches: no plugin plan; export with 'group' or static scales")
    mode = 0 if has_act_scale else wk.SCALE_MODES[attrs.act_granularity]
    buffers = {b.name: b for b in (
        Buffer("x", dtype, tuple(x_shape), "input"), Buffer("w_int8", "int8", tuple(w_shape), "input"),
        Buffer("w_scale", "float32", (n, n, cout, groups), "input"),
        Buffer("at", "float32", (tile, n), "input"), Buffer("bt", "float32", (n, n), "input"),
        Buffer("vq", "int8", (npos, p, cin), "workspace"), Buffer("y", dtype, tuple(out_shape), "output"))}
    if has_bias:
        buffers["bias"] = Buffer("bias", "float32", (cout,), "input")
    if has_act_scale:
        buffers["act_scale"] = Buffer("act_scale", "float32", (n, n, groups), "input")
        sa, sa_strides = "act_scale", (groups, 0, 1)
    else:
        buffers["sa"] = Buffer("sa", "float32", (npos if mode == 2 else 1, p, groups), "workspace")
        sa, sa_strides = "sa", ((p * groups) if mode == 2 else 0, groups, 1)

    block_c = 32 if mode == 0 else min(wk._pow2(g), 128)
    in_const = dict(GROUP_SIZE=g, GROUPS=groups, N_SIDE=n, TILE=tile, SCALE_MODE=mode,
                    BLOCK_T=WINOGRAD_INPUT_CONFIG["BLOCK_T"], BLOCK_C=block_c, NP=wk._pow2(n),
                    LOG_NP=wk._pow2(n).bit_length() - 1)
    in_args = dict(x_ptr="x", bt_ptr="bt", vq_ptr="vq", sa_out_ptr="bt" if has_act_scale else "sa",
                   scale_in_ptr="act_scale" if has_act_scale else "bt", amax_ptr="bt",
                   C=cin, H=h, W=w, sxn=cin * h * w, sxc=h * w, sxh=w, sxw=1, pad_h=ph, pad_w=pw, tiles_h=th,
                   tiles_w=tw, P=p, s_scale_pos=groups if has_act_scale else 0, s_scale_g=1 if has_act_scale else 0)
    launches = [Launch(wk.winograd_input_kernel, in_const, {"num_warps": WINOGRAD_INPUT_CONFIG["num_warps"]},
                       (cdiv(p, in_const["BLOCK_T"]), groups if mode in (1, 2) else cdiv(cin, block_c), 1), in_args)]

    bco, bp, warps = WINOGRAD_GEMM_CONFIGS[tactic]
    fused = tile <= 4
    y_strides = (cout * out_h * out_w, out_h * out_w, out_w, 1)

    def gemm(gemm_mode: int, src: str, dst: str, strides) -> Launch:
        const = dict(GROUP_SIZE=g, GROUPS=groups, N_SIDE=n, TILE=tile, MM=wk._pow2(tile * tile), MODE=gemm_mode,
                     HAS_BIAS=has_bias, BLOCK_CO=bco, BLOCK_P=bp, BLOCK_K=max(32, min(wk._pow2(g), 128)))
        args = dict(vq_ptr=src, w_ptr="w_int8", ws_ptr="w_scale", sa_ptr=sa,
                    m_ptr=dst if gemm_mode == 1 else src, at_ptr="at", bias_ptr="bias" if has_bias else "at",
                    y_ptr=dst, P=p, Cout=cout, Cin=cin, s_sa_pos=sa_strides[0], s_sa_p=sa_strides[1],
                    s_sa_g=sa_strides[2], tiles_h=th, tiles_w=tw, out_h=out_h, out_w=out_w,
                    syn=strides[0], syc=strides[1], syh=strides[2], syw=strides[3])
        grid = (cdiv(cout, bco), cdiv(p, bp), npos if gemm_mode == 1 else 1)
        return Launch(wk.winograd_gemm_kernel, const, {"num_warps": warps, "num_stages": 3}, grid, args)

    if fused:
        launches.append(gemm(0, "vq", "y", y_strides))
    else:
        buffers["m"] = Buffer("m", "float32", (npos, p, cout), "workspace")
        launches += [gemm(1, "vq", "m", (0, 0, 0, 0)), gemm(2, "m", "y", y_strides)]
    return LaunchPlan(buffers, tuple(launches))


# ----------------------------------------------------------------------------------------- FP4GroupGemm
FP4_GEMM_CONFIGS = ((128, 128, 8, 8, 3), (128, 128, 8, 8, 4), (128, 256, 8, 8, 3), (64, 128, 4, 4, 4),
                    (64, 64, 4, 4, 3))  # tactics: (BLOCK_M, BLOCK_N, GROUP_M, num_warps, num_stages)


def fp4_plan(attrs: FP4GemmAttrs, x_shape: tuple[int, ...], wp_shape: tuple[int, ...], dtype: str,
             has_bias: bool, has_tensor_scale: bool, has_act_scale: bool, fuse_act_quant: bool = False,
             tactic: int = 0) -> LaunchPlan:
    """The launches of one FP4GroupGemm node: [activation quantization], then the FP4 GEMM, as the torch op
    runs them (fuse_act_quant: quantize activations in the GEMM's A-load where the format allows it)."""
    from trtq.kernels import fp4_gemm as fk

    n, k = wp_shape[0], wp_shape[1] * 2
    g = attrs.group_size
    m = math.prod(x_shape[:-1])
    groups = k // g
    fp8_scales = attrs.scale_format != "float32"
    one_group, static = g == k, has_act_scale
    fuse = fuse_act_quant and gemm_quantizes_activations(attrs.act_format, g, k, attrs.scale_format, static)
    buffers = {b.name: b for b in (
        Buffer("x", dtype, tuple(x_shape), "input"), Buffer("weight_packed", "uint8", tuple(wp_shape), "input"),
        Buffer("weight_scale", "uint8" if fp8_scales else "float32", (n, groups), "input"),
        Buffer("y", dtype, tuple(fp4_output_shape(x_shape, wp_shape)), "output"))}
    for name, present, shape in (("weight_tensor_scale", has_tensor_scale, ()), ("bias", has_bias, (n,)),
                                 ("act_scale", has_act_scale, (groups,))):
        if present:
            buffers[name] = Buffer(name, "float32", shape, "input")  # the exporter stores them as FP32
    launches = []
    a_scale = a_row_scale = None
    if attrs.act_format == "none":
        a, mode = "x", fk.A_FLOAT
    elif fuse:
        a, mode = "x", fk.A_FUSED
        a_scale = "act_scale" if static else None
    else:
        buffers["q"] = Buffer("q", "uint8", (m, k), "workspace")
        if not static:
            buffers["a_scale"] = Buffer("a_scale", "float32", (m, groups), "workspace")
        a_scale = "act_scale" if static else "a_scale"
        if fp8_scales and not static:
            buffers["row_scale"] = Buffer("row_scale", "float32", (m,), "workspace")
            a_row_scale = "row_scale"
        pad, block_g, block_r = fk.act_quant_blocks(g, groups)
        man, min_exp, fmax = fk.FORMAT_CONSTANTS[attrs.act_format]
        const = dict(K=k, GROUP=g, GROUP_PAD=pad, MAN_BITS=man, MIN_EXP=min_exp, MAX_VALUE=fmax, STATIC=static,
                     FP8_SCALES=fp8_scales and not static, BLOCK_R=block_r, BLOCK_G=block_g)
        args = dict(x_ptr="x", static_scale_ptr=a_scale, q_ptr="q", scale_ptr=a_scale,
                    row_scale_ptr=a_row_scale or a_scale, M=m, act_clip=float(attrs.act_clip), stride_xm=k,
                    stride_xk=1, stride_qm=k, stride_sm=0 if static else groups)
        launches.append(Launch(fk.act_quant_kernel, const, {"num_warps": 4}, (cdiv(m, block_r), 1, 1), args))
        a, mode = "q", fk.A_CODES

    bm, bn, group_m, warps, stages = FP4_GEMM_CONFIGS[tactic]
    shift, unscale = fk.FP4_DECODE[attrs.weight_format]
    a_man, a_min_exp, a_max = fk.FORMAT_CONSTANTS[attrs.act_format] if mode == fk.A_FUSED else (0, 0, 1.0)
    const = dict(K=k, GROUP=g, ONE_GROUP=one_group, BLOCK_K=fk.gemm_block_k(g, one_group), W_SHIFT=shift,
                 W_UNSCALE=unscale,
                 W_SCALE_FP8=fp8_scales, A_MODE=mode, A_STATIC=static, A_MAN_BITS=a_man, A_MIN_EXP=a_min_exp,
                 A_MAX=a_max, HAS_ROW_SCALE=a_row_scale is not None, HAS_BIAS=has_bias,
                 DOT_IEEE=mode == fk.A_FLOAT and dtype == "float32", BLOCK_M=bm, BLOCK_N=bn, GROUP_M=group_m,
                 LOADS_PER_STEP=1)
    dummy = "weight_scale"  # pointers of absent inputs are never read
    args = dict(a_ptr=a, a_scale_ptr=a_scale or dummy, a_row_scale_ptr=a_row_scale or dummy,
                w_ptr="weight_packed", w_scale_ptr="weight_scale",
                w_tensor_scale_ptr="weight_tensor_scale" if has_tensor_scale else dummy,
                bias_ptr="bias" if has_bias else dummy, out_ptr="y", M=m, N=n, act_clip=float(attrs.act_clip),
                stride_am=k, stride_ak=1, stride_asm=0 if (a_scale is None or static) else groups, stride_asg=1,
                stride_wn=k // 2, stride_wsn=groups, stride_wsg=1, stride_om=n, stride_on=1)
    launches.append(Launch(fk.fp4_gemm_kernel, const, {"num_warps": warps, "num_stages": stages},
                           (cdiv(m, bm) * cdiv(n, bn), 1, 1), args))
    return LaunchPlan(buffers, tuple(launches))


def fp4_aot_plan(attrs: FP4GemmAttrs, x_shape: tuple[int, ...], wp_shape: tuple[int, ...], dtype: str,
                 has_bias: bool, has_tensor_scale: bool, has_act_scale: bool, tactic: int = 0) -> LaunchPlan:
    """One FP4GroupGemm node as the single kernel TensorRT's ahead-of-time path takes: `fp4_gemm_plugin_entry`,
    arguments in TensorRT's order (the six inputs, then M and N, then the output). Only where no activation
    quantization workspace is needed: W4A16, or activations quantized in the GEMM's A-load (FP32 scales, or
    static scales, and groups smaller than K)."""
    from trtq.kernels import fp4_gemm as fk

    fused = fp4_plan(attrs, x_shape, wp_shape, dtype, has_bias, has_tensor_scale, has_act_scale,
                     fuse_act_quant=True, tactic=tactic)
    if not fused.aot_ready:
        raise TrtqError(f"trtq::FP4GroupGemm with act_format {attrs.act_format}, scale_format {attrs.scale_format}, "
                        f"group_size {attrs.group_size} (K = {wp_shape[1] * 2}) needs a separate activation-"
                        "quantization kernel and its workspace: no single-kernel (ahead-of-time) plan")
    gemm = fused.launches[0]
    const = {k: v for k, v in gemm.constexprs.items() if k != "HAS_ROW_SCALE"} | {"ACT_CLIP": float(attrs.act_clip)}
    dummy = "weight_scale"
    args = dict(x_ptr="x", w_ptr="weight_packed", w_scale_ptr="weight_scale",
                w_tensor_scale_ptr="weight_tensor_scale" if has_tensor_scale else dummy,
                bias_ptr="bias" if has_bias else dummy, a_scale_ptr="act_scale" if has_act_scale else dummy,
                M=gemm.args["M"], N=gemm.args["N"], out_ptr="y")
    return LaunchPlan(fused.buffers, (Launch(fk.fp4_gemm_plugin_entry, const, gemm.options, gemm.grid, args),))
