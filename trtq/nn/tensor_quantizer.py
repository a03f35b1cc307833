"""`TensorQuantizer`: the module that applies one `QuantScheme` to one tensor of a layer.

It has three modes, switched explicitly by whoever drives it (never by counting calls):
- "calibrate": feed the observer, pass the float tensor through unchanged;
- "quantize":  fake-quantize with the calibrated scales (static) or with scales from the live tensor (dynamic);
- "off":       identity.
Calibrated scales live in buffers (`scale`, `zero_point`) so they travel with `state_dict` and artifacts.
"""

from __future__ import annotations

import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.observers import make_observer
from trtq.formats import IntFormat
from trtq.quantizer import (
    check_group_size,
    dynamic_qparams,
    expand_scale,
    fake_quantize,
    qparams_from_range,
    rows_to_scale,
    to_rows,
)
from trtq.scheme import QuantScheme

MODES = ("calibrate", "quantize", "off")


def _fake_quantize_int_inference(x, scale, zero_point, scheme: QuantScheme) -> torch.Tensor:
    """`fake_quantize` for integer formats without autograd, bit for bit the same numbers (its straight-through
    v + (round(v) - v) is exactly round(v)), computed in one buffer instead of four temporaries: weights are
    fake-quantized in every forward, and for a 1280x2560x3x3 conv each temporary is 118 MB."""
    fmt = scheme.fmt
    s = expand_scale(scale, x, scheme).to(x.dtype)
    q = x / s
    if zero_point is None:
        return q.clamp_(fmt.qmin, fmt.qmax).round_().mul_(s)
    z = expand_scale(zero_point, x, scheme).to(x.dtype)
    return q.add_(z).clamp_(0, 2**fmt.bits - 1).round_().sub_(z).mul_(s)


class TensorQuantizer(nn.Module):
    def __init__(self, scheme: QuantScheme, role: str):
        super().__init__()
        if role not in ("weight", "input"):
            raise ValueError(f"role must be 'weight' or 'input', got {role!r}")
        self.scheme = scheme
        self.role = role
        # Weights keep one scale per (row, group); static activation groups share a scale over tokens/pixels.
        self.shared = role == "input" and not scheme.dynamic
        self.mode = "quantize" if scheme.dynamic else "calibrate"
        self.observer = None if scheme.dynamic else make_observer(scheme)
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)

    @property
    def calibrated(self) -> bool:
        if self.scheme.dynamic:
            return True
        return self.scale is not None and (self.scheme.symmetric or self.zero_point is not None)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode == "calibrate" and self.observer is None:
            self.observer = make_observer(self.scheme)
        if mode == "quantize" and not self.calibrated:
            raise TrtqError("this quantizer has no scales yet: calibrate it first")
        self.mode = mode

    def observe(self, x: torch.Tensor) -> None:
        """Feed one tensor to the observer. NaN/Inf never reach the statistics: they raise a TrtqError naming
        this quantizer (`qualname`, set by `trtq.quantize.calibrate`) and the call, or, when the recipe says
        `nonfinite: skip`, the whole tensor of that call is left out with a warning."""
        call = self.__dict__.get("calib_calls", 0)
        self.calib_calls = call + 1
        if not bool(torch.isfinite(x).all()):
            where = f"{self.__dict__.get('qualname') or f'this {self.role} quantizer'} (calibration call {call})"
            bad = int((~torch.isfinite(x)).sum())
            if self.__dict__.get("nonfinite", "error") != "skip":
                raise TrtqError(f"{where} saw {bad} NaN/Inf value(s) in its {self.role}; fix the data or the "
                                "model, or set `nonfinite: skip` in the recipe to leave such calls out")
            import warnings

            warnings.warn(f"trtq: {where}: {bad} NaN/Inf value(s); this call is left out of calibration",
                          stacklevel=2)
            self.calib_skipped = self.__dict__.get("calib_skipped", 0) + 1
            return
        self._template = x.shape  # scale layout depends on the shape seen in calibration
        self.observer.observe(to_rows(x, self.scheme, self.shared))

    def finish_calibration(self) -> None:
        """Turn the observed ranges into scales and switch to 'quantize'. A scale that would come out
        non-finite or zero is an error, never a silent placeholder; the one exception is an all-zero *weight*
        group, which quantizes exactly with any scale (it keeps the placeholder 1)."""
        if self.scheme.dynamic:
            self.mode = "quantize"
            return
        where = self.__dict__.get("qualname") or f"this {self.role} quantizer"
        if self.observer is None or not self.observer.seen:
            skipped = self.__dict__.get("calib_skipped", 0)
            why = f": all {skipped} of its calls held NaN/Inf" if skipped else ""
            raise TrtqError(f"calibration never reached {where}{why}")
        amin, amax = self.observer.range()
        if not (torch.isfinite(amin).all() and torch.isfinite(amax).all()):
            raise TrtqError(f"{where}: its observer produced a non-finite range; refusing a NaN/Inf scale")
        if self.role == "input":
            zero = (amin == 0) & (amax == 0)
            if bool(zero.all()):
                raise TrtqError(f"{where} saw only zeros in calibration: no scale can be derived (does the "
                                "calibration data reach this layer with real values?)")
            if bool(zero.any()):
                import warnings

                warnings.warn(f"trtq: {where}: {int(zero.sum())} of {zero.numel()} scale entries saw only zeros "
                              "in calibration and keep the placeholder scale 1", stacklevel=2)
        template = torch.empty(self._template, device="meta")
        scale, zp = qparams_from_range(amin, amax, self.scheme)
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise TrtqError(f"{where}: calibration produced a scale that is not finite and > 0 "
                            f"(range [{amin.min().item():g}, {amax.max().item():g}])")
        self.scale = rows_to_scale(scale, template, self.scheme, self.shared)
        self.zero_point = None if zp is None else rows_to_scale(zp, template, self.scheme, self.shared)
        self.observer = None
        self.mode = "quantize"

    def calibrate_from(self, x: torch.Tensor) -> None:
        """One-shot calibration (weights: the whole tensor is known up front)."""
        self.set_mode("calibrate")
        self.observe(x)
        self.finish_calibration()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "calibrate":
            self.observe(x)
            return x
        if self.scheme.dynamic:
            check_group_size(x, self.scheme)
            scale, zp = dynamic_qparams(x, self.scheme)
        else:
            scale, zp = self.scale, self.zero_point
        if not torch.is_grad_enabled() and isinstance(self.scheme.fmt, IntFormat):
            return _fake_quantize_int_inference(x, scale, zp, self.scheme)
        return fake_quantize(x, scale, zp, self.scheme)

    def extra_repr(self) -> str:
        return f"{self.role}: {self.scheme.describe()}, mode={self.mode}"
