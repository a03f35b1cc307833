"""What a trtq plugin node is: its attributes, parsed and checked, and its output shape and dtype rules.

Plain functions over ints, so TensorRT's symbolic shape expressions (which support + - * //) go through the
same rules in `register` as concrete shapes do in the plans and tests. Names and attributes are the ONNX
export's (`trtq.export.twins.PLUGINS`): the node `trtq::WinogradConvInt8` is the plugin of that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from trtq.errors import TrtqError
from trtq.export.twins import PLUGIN_DOMAIN, PLUGINS
from trtq.fp4 import ACT_FORMATS as ACT_FP4_FORMATS
from trtq.fp4 import FP4_FORMATS, FP32_SCALES
from trtq.winograd.conv import TILES
from trtq.winograd.quant import GRANULARITIES as ACT_GRANULARITIES

WINOGRAD, FP4_GEMM = "WinogradConvInt8", "FP4GroupGemm"
PLUGIN_IDS = tuple(f"{PLUGIN_DOMAIN}::{name}" for name in (WINOGRAD, FP4_GEMM))
# What the ops accept, from where the ops define it.
ACT_FORMATS = ACT_FP4_FORMATS + ("none",)  # "none": W4A16
SCALE_FORMATS = (FP32_SCALES, "fp8_e4m3")


def _get(attrs: dict, op: str, name: str, kind):
    if name not in attrs:
        raise TrtqError(f"trtq::{op}: attribute {name!r} is missing (expected {', '.join(PLUGINS[op][1])})")
    value = attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    if hasattr(value, "tolist"):  # numpy arrays / scalars from TensorRT's attribute parsing
        value = value.tolist()
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = (isinstance(value, list) and all(isinstance(v, int) for v in value)) if kind is list else \
        isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise TrtqError(f"trtq::{op}: attribute {name}={value!r} should be {kind.__name__}")
    return value


def _one_of(op: str, name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise TrtqError(f"trtq::{op}: {name} {value!r} is not one of {choices}")


@dataclass(frozen=True)
class WinogradAttrs:
    tile: int
    pads: tuple[int, int]
    group_size: int
    act_granularity: str

    @classmethod
    def parse(cls, attrs: dict) -> "WinogradAttrs":
        op = WINOGRAD
        tile, pads = _get(attrs, op, "tile", int), _get(attrs, op, "pads", list)
        group, gran = _get(attrs, op, "group_size", int), _get(attrs, op, "act_granularity", str)
        _one_of(op, "tile", tile, TILES)
        if len(pads) != 2 or min(pads) < 0:
            raise TrtqError(f"trtq::{op}: pads {pads} should be [pad_h, pad_w] >= 0")
        if group < 1:
            raise TrtqError(f"trtq::{op}: group_size {group} should be >= 1")
        _one_of(op, "act_granularity", gran, ACT_GRANULARITIES)
        return cls(tile, (pads[0], pads[1]), group, gran)


@dataclass(frozen=True)
class FP4GemmAttrs:
    weight_format: str
    act_format: str
    group_size: int
    scale_format: str
    act_clip: float

    @classmethod
    def parse(cls, attrs: dict) -> "FP4GemmAttrs":
        op = FP4_GEMM
        wf, af = _get(attrs, op, "weight_format", str), _get(attrs, op, "act_format", str)
        group, sf = _get(attrs, op, "group_size", int), _get(attrs, op, "scale_format", str)
        clip = _get(attrs, op, "act_clip", float)
        _one_of(op, "weight_format", wf, FP4_FORMATS)
        _one_of(op, "act_format", af, ACT_FORMATS)
        _one_of(op, "scale_format", sf, SCALE_FORMATS)
        if group < 1:
            raise TrtqError(f"trtq::{op}: group_size {group} should be >= 1")
        if not 0.0 < clip <= 1.0:
            raise TrtqError(f"trtq::{op}: act_clip {clip} should lie in (0, 1]")
        return cls(wf, af, group, sf, clip)


def winograd_output_shape(x_shape, w_shape, attrs: WinogradAttrs) -> tuple:
    """[N, Cin, H, W] and w_int8 [n, n, Cout, Cin] -> [N, Cout, H + 2 ph - 2, W + 2 pw - 2]."""
    n = attrs.tile + 2
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise TrtqError(f"trtq::{WINOGRAD}: x must be [N, C, H, W] and w_int8 [n, n, Cout, Cin], got ranks "
                        f"{len(x_shape)} and {len(w_shape)}")
    if _known(w_shape[0]) and (w_shape[0], w_shape[1]) != (n, n):
        raise TrtqError(f"trtq::{WINOGRAD}: w_int8 {tuple(w_shape)} does not hold {n}x{n} positions for tile "
                        f"{attrs.tile}")
    if _known(x_shape[1]) and _known(w_shape[3]) and x_shape[1] != w_shape[3]:
        raise TrtqError(f"trtq::{WINOGRAD}: x has {x_shape[1]} channels, w_int8 expects {w_shape[3]}")
    if _known(w_shape[3]) and w_shape[3] % attrs.group_size:
        raise TrtqError(f"trtq::{WINOGRAD}: group_size {attrs.group_size} does not divide Cin {w_shape[3]}")
    ph, pw = attrs.pads
    return (x_shape[0], w_shape[2], x_shape[2] + (2 * ph - 2), x_shape[3] + (2 * pw - 2))


def fp4_output_shape(x_shape, wp_shape) -> tuple:
    """x [..., K] and weight_packed [N, K/2] -> [..., N]."""
    if len(wp_shape) != 2:
        raise TrtqError(f"trtq::{FP4_GEMM}: weight_packed must be [N, K/2], got rank {len(wp_shape)}")
    if _known(x_shape[-1]) and _known(wp_shape[1]) and x_shape[-1] != 2 * wp_shape[1]:
        raise TrtqError(f"trtq::{FP4_GEMM}: x has K = {x_shape[-1]}, weight_packed {tuple(wp_shape)} holds "
                        f"K = {2 * wp_shape[1]}")
    return tuple(x_shape[:-1]) + (wp_shape[0],)


def _known(v) -> bool:
    return isinstance(v, int)
