"""Fixed signatures of the Winograd kernels for ahead-of-time compilation (what a TensorRT plugin builds).

A plugin cannot autotune or JIT at run time: it compiles each kernel once per layer class with
`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32), options=options)`,
then launches the cubin with the grid from `trtq.kernels.winograd.input_grid` / `gemm_grid` and the int
arguments in the kernels' order: pointers, then shapes and strides (all computable from the layer's shapes).
"""

from __future__ import annotations

from trtq.kernels.winograd import _pow2, winograd_gemm_kernel, winograd_input_kernel

# One config per kernel for the plugin (the torch path autotunes; a plugin build may pass a tuned one).
INPUT_CONFIG = {"BLOCK_T": 8, "num_warps": 4}
GEMM_CONFIG = {"BLOCK_CO": 64, "BLOCK_P": 16, "num_warps": 4, "num_stages": 3}
_DTYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


def plugin_signatures(tile: int, group_size: int, groups: int, dtype: str = "fp16", scale_mode: int = 1,
                      has_bias: bool = True, input_config: dict | None = None, gemm_config: dict | None = None):
    """{"input": ..., "gemm": ...}, each (jit fn, signature, constexprs, options) for the fused two-launch path
    (scale_mode 1 = dynamic per (tile, group), 2 = per (tile, position, group), 0 = static)."""
    ic, gc = input_config or INPUT_CONFIG, gemm_config or GEMM_CONFIG
    n = tile + 2
    ptr = _DTYPES[dtype]
    ints = lambda names: {name: "i32" for name in names.split()}  # noqa: E731
    inp_sig = {"x_ptr": ptr, "bt_ptr": "*fp32", "vq_ptr": "*i8", "sa_out_ptr": "*fp32", "scale_in_ptr": "*fp32",
               "amax_ptr": "*fp32", **ints("C H W sxn sxc sxh sxw pad_h pad_w tiles_h tiles_w P s_scale_pos s_scale_g")}
    inp_const = {"GROUP_SIZE": group_size, "GROUPS": groups, "N_SIDE": n, "TILE": tile, "SCALE_MODE": scale_mode, "BLOCK_T": ic["BLOCK_T"], "BLOCK_C": min(_pow2(group_size), 128),
                 "NP": _pow2(n)}
    gemm_sig = {"vq_ptr": "*i8", "w_ptr": "*i8", "ws_ptr": "*fp32", "sa_ptr": "*fp32", "m_ptr": "*fp32",
                "at_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": ptr,
                **ints("P Cout Cin s_sa_pos s_sa_p s_sa_g tiles_h tiles_w out_h out_w syn syc syh syw")}
    gemm_const = {"GROUP_SIZE": group_size, "GROUPS": groups, "N_SIDE": n, "TILE": tile, "MM": _pow2(tile * tile),
                  "MODE": 0, "HAS_BIAS": has_bias, "BLOCK_CO": gc["BLOCK_CO"], "BLOCK_P": gc["BLOCK_P"],
                  "BLOCK_K": max(32, min(_pow2(group_size), 128))}
    for sig, const in ((inp_sig, inp_const), (gemm_sig, gemm_const)):
        sig.update({name: "constexpr" for name in const})
    opts = lambda c: {k: c[k] for k in ("num_warps", "num_stages") if k in c}  # noqa: E731
    return {"input": (winograd_input_kernel, inp_sig, inp_const, opts(ic)),
            "gemm": (winograd_gemm_kernel, gemm_sig, gemm_const, opts(gc))}
