"""Optimization profiles: the min/opt/max shape of every engine input, and the check of a call against them.

An export's manifest already holds one profile (from `trtq export --batch/--resolution`); a build may narrow
or widen the batch and resolution ranges, since the graph's batch/height/width axes are symbolic (TensorRT
takes any range for a symbolic dimension). A fixed axis (a DiT's resolution, every axis of a `--static`
export) cannot be given a range: that needs a new export, and saying so is the profile's job.

The runner checks every call here before TensorRT sees it, so a shape outside the profile is one line that
names the input, the axis and the range, not a TensorRT log line and a failed enqueue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from trtq.errors import TrtqError

Shape = tuple[int, ...]
Range = tuple[int, int, int]
LEVELS = ("min", "opt", "max")
BATCH, HEIGHT, WIDTH = "batch", "height", "width"  # the exporter's symbolic axis names (trtq.export.inputs)


@dataclass(frozen=True)
class TensorProfile:
    """min/opt/max shapes of one input, and its symbolic shape (ints and axis names) from the export."""

    min: Shape
    opt: Shape
    max: Shape
    symbols: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "shape": list(self.symbols)}


ShapeProfile = dict[str, TensorProfile]


def profile_to_dict(profile: ShapeProfile) -> dict[str, dict[str, Any]]:
    return {name: p.to_dict() for name, p in profile.items()}


def profile_from_dict(data: Mapping[str, Mapping[str, Any]]) -> ShapeProfile:
    return {name: TensorProfile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]), tuple(p["shape"]))
            for name, p in data.items()}


def _range(value: Sequence[int], what: str) -> Range:
    if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value) \
            or not value[0] <= value[1] <= value[2]:
        raise TrtqError(f"{what} range must be three positive integers MIN <= OPT <= MAX, got {tuple(value)}")
    return (value[0], value[1], value[2])


def resolve_profile(inputs: Sequence[Mapping[str, Any]], exported: Mapping[str, Mapping[str, Sequence[int]]],
                    batch: Sequence[int] | None = None, resolution: Sequence[int] | None = None) -> ShapeProfile:
    """The build profile: the export's profile with the batch and (latent height = width) resolution ranges
    replaced where given. `inputs`: the export manifest's input specs (name, dtype, symbolic shape)."""
    ranges: dict[str, Range] = {}
    if batch is not None:
        ranges[BATCH] = _range(batch, "batch")
    if resolution is not None:
        ranges[HEIGHT] = ranges[WIDTH] = _range(resolution, "resolution")
    symbols_used = {d for spec in inputs for d in spec["shape"] if isinstance(d, str)}
    for axis, what in ((BATCH, "batch"), (HEIGHT, "resolution")):
        if axis in ranges and axis not in symbols_used:
            lo, _, hi = ranges[axis]
            fixed = _fixed_size(inputs, exported, axis)
            if lo != hi or (fixed is not None and lo != fixed):
                raise TrtqError(f"this export has a fixed {what}{f' ({fixed})' if fixed else ''}, so --{what} "
                                f"{lo}:{ranges[axis][1]}:{hi} cannot apply; re-export with that --{what} "
                                "(--static exports hold one of each; DiT/PixArt configurations the exporter "
                                "cannot make resolution-dynamic hold one resolution)")
    profile: ShapeProfile = {}
    for spec in inputs:
        name, symbols = spec["name"], tuple(spec["shape"])
        levels = {lv: list(exported[name][lv]) for lv in LEVELS}
        if any(len(levels[lv]) != len(symbols) for lv in LEVELS):
            raise TrtqError(f"export profile of input {name}: shapes {levels} do not have the rank of {symbols}")
        for i, d in enumerate(symbols):
            if isinstance(d, str) and d in ranges:
                for k, lv in enumerate(LEVELS):
                    levels[lv][i] = ranges[d][k]
            elif isinstance(d, int) and any(levels[lv][i] != d for lv in LEVELS):
                raise TrtqError(f"export profile of input {name}: axis {i} is fixed at {d} in the graph, "
                                f"the profile says {[levels[lv][i] for lv in LEVELS]}")
        for i in range(len(symbols)):
            _range([levels[lv][i] for lv in LEVELS], f"input {name} axis {i}")
        profile[name] = TensorProfile(tuple(levels["min"]), tuple(levels["opt"]), tuple(levels["max"]), symbols)
    return profile


def _fixed_size(inputs, exported, axis: str) -> int | None:
    """The size a fixed batch/resolution axis has in the export (from the main input's profile)."""
    index = {BATCH: 0, HEIGHT: 2}[axis]
    first = inputs[0]["name"]
    shape = exported[first]["opt"]
    return shape[index] if len(shape) > index else None


def check_inputs(profile: ShapeProfile, dtypes: Mapping[str, str], shapes: Mapping[str, Sequence[int]],
                 got_dtypes: Mapping[str, str]) -> None:
    """One call's inputs against the engine (dtypes as torch names, e.g. "float16"): names, dtypes, ranks, each axis within [min, max], and axes that
    share a symbol (every input's batch) equal. Raises one TrtqError line naming the first problem."""
    missing = [n for n in profile if n not in shapes]
    extra = [n for n in shapes if n not in profile]
    if missing or extra:
        raise TrtqError(f"engine inputs are {list(profile)}; missing {missing}, unexpected {extra}")
    seen: dict[str, tuple[str, int]] = {}
    for name, p in profile.items():
        shape = tuple(int(d) for d in shapes[name])
        if got_dtypes[name] != dtypes[name]:
            raise TrtqError(f"input {name}: dtype {got_dtypes[name]}, the engine takes {dtypes[name]}")
        if len(shape) != len(p.symbols):
            raise TrtqError(f"input {name}: shape {shape} has rank {len(shape)}, the engine takes rank "
                            f"{len(p.symbols)} {_show(p.symbols)}")
        for i, d in enumerate(shape):
            if not p.min[i] <= d <= p.max[i]:
                axis = p.symbols[i] if isinstance(p.symbols[i], str) else f"axis {i}"
                raise TrtqError(f"input {name}: shape {shape} is outside the engine's profile: {axis} = {d}, "
                                f"the profile allows [{p.min[i]}, {p.max[i]}] (min {p.min}, max {p.max}); "
                                "rebuild with a wider --batch/--resolution")
            sym = p.symbols[i]
            if isinstance(sym, str):
                if sym in seen and seen[sym][1] != d:
                    other, size = seen[sym]
                    raise TrtqError(f"input {name}: {sym} = {d}, but input {other} has {sym} = {size}")
                seen.setdefault(sym, (name, d))


# ONNX element type names (as export manifests spell them, lower case) -> torch dtype names.
_ONNX_TO_TORCH = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16",
                  "int64": "int64", "int32": "int32", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def torch_dtype_name(onnx_name: str) -> str:
    """The torch dtype name (`float32`) of an ONNX element type name from a manifest (`float`)."""
    try:
        return _ONNX_TO_TORCH[onnx_name]
    except KeyError:
        raise TrtqError(f"engine I/O dtype {onnx_name!r} has no torch dtype here; known: "
                        f"{sorted(_ONNX_TO_TORCH)}") from None


def _show(symbols: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(s) for s in symbols) + "]"


def fixed_shapes(profile: ShapeProfile, shapes: Mapping[str, Sequence[int]]) -> dict[str, Shape]:
    """`shapes` as tuples (the key a CUDA graph is captured for)."""
    return {name: tuple(int(d) for d in shapes[name]) for name in profile}
