"""A quantization scheme as validated data.

`QuantScheme` says how one tensor is quantized: the number format, the granularity of its scales, symmetry,
whether scales are calibrated (static) or computed at run time (dynamic), and which observer calibrates
them. It is checked when it is built, so an impossible combination never reaches a model, and it round-trips
through plain dicts (recipes in YAML/JSON, artifact manifests).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trtq.errors import TrtqError
from trtq.formats import Format, get_format
from trtq.io.validate import Bool, Int, Num, Obj, Opt, Str, check, located

GRANULARITIES = ("tensor", "channel", "group", "token")
OBSERVERS = ("minmax", "percentile", "mse")
SCALE_FORMATS = ("fp8_e4m3",)

# The types of a scheme's fields as data (the values are checked by __post_init__).
SCHEMA = Obj(optional={
    "format": Str(nonempty=True), "granularity": Str(nonempty=True), "axis": Opt(Int(-8, 7)),
    "group_size": Opt(Int(1, 1 << 20)), "symmetric": Bool(), "dynamic": Bool(), "observer": Str(nonempty=True),
    "percentile": Opt(Num()), "scale_format": Opt(Str(nonempty=True)),
}, desc="a quantization scheme mapping", name="quantization scheme")


@dataclass(frozen=True)
class QuantScheme:
    format: str = "int8"
    granularity: str = "tensor"
    # The axis that channel/group granularity runs along (negative counts from the end).
    axis: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    dynamic: bool = False
    observer: str = "minmax"
    percentile: float | None = None
    # Number format of the scales themselves. None: FP32 scales. "fp8_e4m3": each scale is stored as FP8
    # times one FP32 scale per tensor ("double quant"; with fp4_e2m1 and group_size 16 this is NVFP4).
    scale_format: str | None = None

    def __post_init__(self) -> None:
        fmt = get_format(self.format)
        if self.granularity not in GRANULARITIES:
            raise TrtqError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity in ("tensor", "token") and self.axis is not None:
            raise TrtqError(f"per-{self.granularity} quantization takes no axis")
        if self.granularity == "token" and not self.dynamic:
            raise TrtqError("per-token scales are computed per call: granularity 'token' needs dynamic: true")
        if self.granularity in ("channel", "group") and self.axis is None:
            raise TrtqError(f"{self.granularity} granularity needs an axis")
        if self.granularity == "group":
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise TrtqError(f"group granularity needs a positive integer group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise TrtqError(f"group_size is only meaningful with granularity 'group', not {self.granularity!r}")
        if not self.symmetric and fmt.kind == "float":
            raise TrtqError(f"{self.format} is a float format: asymmetric (zero-point) quantization needs an int format")
        if self.observer not in OBSERVERS:
            raise TrtqError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")
        if self.dynamic and self.observer != "minmax":
            # Dynamic scales are computed from each tensor as it arrives; a search per call would be the cost
            # of calibration paid at every inference.
            raise TrtqError("dynamic scales are min-max of the live tensor; use observer 'minmax' with dynamic")
        if self.observer == "percentile":
            if self.percentile is None or not (50.0 < self.percentile <= 100.0):
                raise TrtqError(f"observer 'percentile' needs percentile in (50, 100], got {self.percentile!r}")
        elif self.percentile is not None:
            raise TrtqError("percentile is only meaningful with observer 'percentile'")
        if self.scale_format is not None:
            if self.scale_format not in SCALE_FORMATS:
                raise TrtqError(f"scale_format must be one of {SCALE_FORMATS} (or absent for FP32), "
                                f"got {self.scale_format!r}")
            if self.granularity == "tensor":
                raise TrtqError("scale_format needs channel or group scales: one per-tensor scale is FP32 already")
            if not self.symmetric:
                raise TrtqError("scale_format (FP8 scales) is only defined for symmetric quantization")

    @property
    def fmt(self) -> Format:
        return get_format(self.format)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "quantization scheme", path: str = "") -> QuantScheme:
        """A scheme from plain data found at key `path` of document `where` (a recipe or manifest): types
        checked first, then the rules."""
        check(data, SCHEMA, where, path)
        try:
            return cls(**data)
        except TrtqError as e:
            raise located(where, path, e) from None

    def describe(self) -> str:
        g = {"tensor": "per-tensor", "token": "per-token", "channel": f"per-channel(axis={self.axis})",
             "group": f"group(g={self.group_size}, axis={self.axis})"}[self.granularity]
        mode = "dynamic" if self.dynamic else f"static/{self.observer}"
        sym = "sym" if self.symmetric else "asym"
        scales = f" {self.scale_format}-scales" if self.scale_format else ""
        return f"{self.format} {g} {sym} {mode}{scales}"
