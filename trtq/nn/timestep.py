"""Timestep-indexed activation scales: one table of scales per quantizer, one row per calibrated timestep.

A diffusion denoiser is called with a timestep from a finite set (the scheduler's steps), and its activation
ranges move with that timestep. `TimestepTensorQuantizer` keeps one scale (and zero point) per calibrated
timestep in a buffer `scale` of shape [T] beside a buffer `timesteps` [T] of the timestep values, and looks
the row up from the timestep of the current call. This file is the one home of timestep-indexed scales (FSC
in TFMQ-DM; TALSQ in EfficientDM).

How the timestep reaches the quantizer: `route_timesteps(denoiser)` installs one `TimestepRouter`, a forward
pre-hook on the denoiser that reads its `timestep` argument on every call and binds it (a tensor [B]) to
the table quantizers for the duration of that call only; a forward hook unbinds it when the call returns.
This is not hidden state: nothing is counted or carried from one call to the next, the value is the call's
own input, and a table quantizer reached outside a denoiser call (nothing bound) raises instead of guessing.
Under `torch.compile`/`torch.export` the hooks are traced with the forward, so the lookup
`scale[index(t)]` is an ordinary graph op on the step input (a `Gather` in ONNX): one graph for every step.

A timestep that was not calibrated is an error (`TrtqError`), or, with `on_unknown="nearest"`, the nearest
calibrated step's scales with a warning (the warning is raised in eager mode only; a compiled graph takes
the nearest row silently, while the strict check stays in the graph as a runtime assert).

EfficientDM's TALSQ learns these tables: `set_steps_learnable` turns a static quantizer's steps (a table or a
plain scale) into a Parameter with LSQ's gradient and back into the buffer artifacts save; `resample_table` /
`retime_tables` point a table at another sampler's timesteps explicitly (subsample exact rows, or interpolate).
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.nn.tensor_quantizer import TensorQuantizer
from trtq.observers import make_observer
from trtq.quantizer import fake_quantize, qparams_from_range, to_rows
from trtq.scheme import QuantScheme

ON_UNKNOWN = ("error", "nearest")
OBSERVED_PER_CALL = 1 << 14  # values a sampling observer keeps per call and step (bounded memory for T steps)


class TimestepTensorQuantizer(TensorQuantizer):
    """Per-tensor static activation quantizer with one scale per calibrated timestep.

    A `TensorQuantizer` (same modes, found by `trtq.nn.quantizers`, saved by artifacts) whose `scale` and
    `zero_point` are tables [T] over the calibrated `timesteps` [T]. In "calibrate" mode each timestep of
    the bound batch feeds an observer of its own; `finish_calibration` turns them into the tables.
    """

    def __init__(self, scheme: QuantScheme, on_unknown: str = "error"):
        if scheme.dynamic or scheme.granularity != "tensor":
            raise TrtqError(f"timestep tables hold static per-tensor scales, not {scheme.describe()}")
        if on_unknown not in ON_UNKNOWN:
            raise TrtqError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}")
        self.observers: dict[float, object] = {}
        super().__init__(scheme, "input")
        self.on_unknown = on_unknown
        self.router: TimestepRouter | None = None
        self.register_buffer("timesteps", None)  # [T] float32, ascending
        self.gen = torch.Generator().manual_seed(0)

    # ------------------------------------------------------------------ state
    @property
    def calibrated(self) -> bool:
        return (self.timesteps is not None and self.scale is not None
                and (self.scheme.symmetric or self.zero_point is not None))

    @property
    def observer(self):  # `trtq.quantize.calibrate` reads `observer.seen` of every quantizer
        return _Seen(bool(self.observers)) if self.observers else None

    @observer.setter
    def observer(self, value) -> None:
        if value is None:
            self.observers = {}

    def set_mode(self, mode: str) -> None:
        if mode == "quantize" and not self.calibrated:
            raise TrtqError("this timestep quantizer has no scale table yet: calibrate it first")
        super().set_mode(mode)

    def finish_calibration(self) -> None:
        if not self.observers:
            raise TrtqError("calibration never reached this timestep quantizer")
        steps = sorted(self.observers)
        lo, hi = zip(*(self.observers[t].range() for t in steps))
        scale, zp = qparams_from_range(torch.cat(lo), torch.cat(hi), self.scheme)
        self.timesteps = torch.tensor(steps, dtype=torch.float32)
        self.scale, self.zero_point = scale, zp
        self.observers = {}
        self.mode = "quantize"

    # ------------------------------------------------------------------ lookup
    def bound_timestep(self, x: torch.Tensor) -> torch.Tensor:
        t = None if self.router is None else self.router.timestep
        if t is None:
            raise TrtqError("a timestep quantizer was called outside a denoiser call: no timestep is bound "
                            "(install trtq.nn.timestep.route_timesteps on the denoiser)")
        t = t.reshape(-1).to(x.device, torch.float32)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.shape[0] != x.shape[0]:
            raise TrtqError(f"timestep batch {t.shape[0]} does not match the activation batch {x.shape[0]}")
        return t

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """Row of the table for each timestep in t [B] (graph ops only, plus an eager-mode check)."""
        dist = (t.reshape(-1, 1) - self.timesteps.reshape(1, -1)).abs()
        idx = dist.argmin(1)
        exact = dist.amin(1) == 0
        if torch.compiler.is_compiling():
            if self.on_unknown == "error":
                torch._assert_async(exact.all(), "timestep not among the calibrated timesteps")
            return idx
        if not bool(exact.all()):
            missing = sorted({float(v) for v in t[~exact].tolist()})
            known = ", ".join(f"{v:g}" for v in self.timesteps.tolist())
            if self.on_unknown == "error":
                raise TrtqError(f"timestep(s) {', '.join(f'{v:g}' for v in missing)} were not calibrated "
                                f"(calibrated: {known}); calibrate with this scheduler and step count, "
                                "or allow on_unknown='nearest'")
            warnings.warn(f"timestep(s) {missing} were not calibrated; using the nearest calibrated step's "
                          "activation scales", stacklevel=3)
        return idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        t = self.bound_timestep(x)
        if self.mode == "calibrate":
            self._observe(x, t)
            return x
        idx = self.index(t)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        scale = self.scale.index_select(0, idx).reshape(shape)
        zp = None if self.zero_point is None else self.zero_point.index_select(0, idx).reshape(shape)
        return fake_quantize(x, scale, zp, self.scheme)

    def _observe(self, x: torch.Tensor, t: torch.Tensor) -> None:
        for value in torch.unique(t).tolist():
            rows = to_rows(x[t == value].detach(), self.scheme, True)
            if self.scheme.observer != "minmax" and rows.shape[1] > OBSERVED_PER_CALL:
                rows = rows[:, torch.randint(rows.shape[1], (OBSERVED_PER_CALL,), generator=self.gen)]
            if value not in self.observers:
                self.observers[value] = make_observer(self.scheme)
            self.observers[value].observe(rows)

    def extra_repr(self) -> str:
        steps = "uncalibrated" if self.timesteps is None else f"{self.timesteps.numel()} timesteps"
        return f"input: {self.scheme.describe()} per timestep ({steps}), mode={self.mode}, on_unknown={self.on_unknown}"


class _Seen:
    def __init__(self, seen: bool):
        self.seen = seen


def timestep_position(denoiser: nn.Module) -> int:
    """Where `timestep` sits among the positional arguments of the denoiser's forward."""
    params = list(inspect.signature(denoiser.forward).parameters)
    if "timestep" not in params:
        raise TrtqError(f"{type(denoiser).__name__}.forward has no 'timestep' argument to route")
    return params.index("timestep")


def call_timestep(position: int, args: tuple, kwargs: dict) -> torch.Tensor:
    """The timestep of one denoiser call (keyword or positional at `position`, see `timestep_position`)."""
    t = kwargs.get("timestep") if "timestep" in kwargs else (args[position] if len(args) > position else None)
    if t is None:
        raise TrtqError("the denoiser was called without a timestep; per-timestep scales need it")
    return torch.as_tensor(t)


class TimestepRouter:
    """Hands the denoiser's `timestep` argument to its table quantizers for the duration of one call."""

    def __init__(self, denoiser: nn.Module):
        self.timestep: torch.Tensor | None = None
        self.handles: tuple = ()
        self.position = timestep_position(denoiser)

    def before(self, module, args, kwargs):
        self.timestep = call_timestep(self.position, args, kwargs)

    def after(self, module, args, kwargs, output):
        self.timestep = None

    def bind(self, timestep: torch.Tensor):
        """Context manager: bind a timestep for calls into parts of the denoiser (block reconstruction)."""
        router = self

        class _Bound:
            def __enter__(self):
                router.timestep = torch.as_tensor(timestep)

            def __exit__(self, *exc):
                router.timestep = None

        return _Bound()


def table_quantizers(model: nn.Module):
    """(name, TimestepTensorQuantizer) for every per-timestep quantizer in a model."""
    for name, mod in model.named_modules():
        if isinstance(mod, TimestepTensorQuantizer):
            yield name, mod


def route_timesteps(denoiser: nn.Module) -> TimestepRouter | None:
    """Install (once) the router that hands each call's timestep to the model's table quantizers.
    No-op (None) for a model without any; returns the installed router otherwise."""
    tables = [q for _, q in table_quantizers(denoiser)]
    if not tables:
        return None
    router = router_of(denoiser)
    for q in tables:
        q.router = router
    return router


def router_of(denoiser: nn.Module) -> TimestepRouter:
    """The denoiser's router, installed if it has none (the ONNX export's table twins read it too)."""
    router = getattr(denoiser, "trtq_timestep_router", None)
    if router is None:
        router = TimestepRouter(denoiser)
        router.handles = (denoiser.register_forward_pre_hook(router.before, with_kwargs=True),
                          denoiser.register_forward_hook(router.after, with_kwargs=True))
        denoiser.trtq_timestep_router = router
    return router


def unroute_timesteps(denoiser: nn.Module) -> None:
    """Remove the router (a failed quantization leaves the float model as it was)."""
    router = denoiser.__dict__.pop("trtq_timestep_router", None)
    if router is not None:
        for h in router.handles:
            h.remove()


def use_timestep_table(layer: nn.Module, on_unknown: str = "error") -> TimestepTensorQuantizer:
    """Replace a quantized layer's static per-tensor input quantizer by a (not yet calibrated) table."""
    q = layer.input_quantizer
    if q is None:
        raise TrtqError("this layer has no input quantizer to index by timestep")
    if isinstance(q, TimestepTensorQuantizer):
        return q
    table = TimestepTensorQuantizer(q.scheme, on_unknown=on_unknown)
    layer.input_quantizer = table
    return table


class TimestepTableConfig:
    """Mixin for a layer kind whose input quantizer may be a timestep table (TFMQ's AdaRound layers,
    EfficientDM's QALoRA layers): the per-layer artifact config that says so, and rebuilding the table on
    load. Always both keys (artifact loading checks a layer's config keys and types against a fresh layer's)."""

    def artifact_config(self) -> dict:
        q = self.input_quantizer
        table = isinstance(q, TimestepTensorQuantizer)
        return {"timestep_table": table, "on_unknown": q.on_unknown if table else "error"}

    def load_artifact_config(self, config: dict) -> None:
        unknown = set(config) - {"timestep_table", "on_unknown"}
        if unknown:
            raise TrtqError(f"{type(self).__name__} artifact config has unknown keys {sorted(unknown)}")
        if config.get("timestep_table"):
            use_timestep_table(self, config.get("on_unknown", "error"))


# ------------------------------------------------------------------ learned steps (TALSQ) and retiming
def set_steps_learnable(q: TensorQuantizer, learnable: bool) -> nn.Parameter | None:
    """Make a static quantizer's step sizes (`scale`: one value, a per-channel row, or a timestep table) a
    Parameter that training updates (LSQ: `fake_quantize` already gives the step its LSQ gradient), or turn
    them back into the buffer that artifacts save. Returns the Parameter (None when frozen again).

    Zero points stay buffers: LSQ learns the step, the offset is kept from calibration."""
    if q.scheme.dynamic:
        raise TrtqError(f"{q.__dict__.get('qualname') or 'this quantizer'} computes its scales per call: "
                        "there is no step size to learn")
    if not q.calibrated:
        raise TrtqError("calibrate a quantizer before learning its step sizes (LSQ starts from calibration)")
    current = q.scale
    if learnable:
        if isinstance(current, nn.Parameter):
            return current
        del q._buffers["scale"]
        q.scale = nn.Parameter(current.detach().clone())
        return q.scale
    if isinstance(current, nn.Parameter):
        del q._parameters["scale"]
        q.register_buffer("scale", current.detach().clone())
    return None


RETIME = ("subsample", "interpolate")


def resample_table(q: TimestepTensorQuantizer, timesteps, how: str = "subsample") -> None:
    """Point a table at the timesteps of another sampler (e.g. fewer steps than it was calibrated/trained for).

    - "subsample": keep the rows of exactly these timesteps; one that is not in the table is an error.
    - "interpolate": linear interpolation in t between the two nearest rows (the end rows beyond the ends);
      zero points are interpolated and rounded to the integer grid.
    Explicit by design: a table never guesses at sampling time which row a new schedule should use."""
    if how not in RETIME:
        raise TrtqError(f"retiming must be one of {RETIME}, got {how!r}")
    if not q.calibrated:
        raise TrtqError("this timestep quantizer has no table yet: calibrate it first")
    if isinstance(q.scale, nn.Parameter):
        raise TrtqError("freeze learned steps (set_steps_learnable(q, False)) before retiming the table")
    new = torch.as_tensor(timesteps, dtype=torch.float32).reshape(-1).unique()  # sorted ascending
    old = q.timesteps.to(new.device)
    if how == "subsample":
        dist = (new.reshape(-1, 1) - old.reshape(1, -1)).abs()
        exact = dist.amin(1) == 0
        if not bool(exact.all()):
            missing = ", ".join(f"{v:g}" for v in new[~exact].tolist())
            raise TrtqError(f"timestep(s) {missing} are not in the table (subsampling keeps existing rows); "
                            "use how='interpolate'")
        idx = dist.argmin(1)
        scale = q.scale.index_select(0, idx.to(q.scale.device))
        zp = None if q.zero_point is None else q.zero_point.index_select(0, idx.to(q.zero_point.device))
    else:
        hi = torch.searchsorted(old, new).clamp(1, max(old.numel() - 1, 1))
        lo = hi - 1
        if old.numel() == 1:
            lo = hi = torch.zeros_like(hi)
        span = (old[hi] - old[lo]).clamp_min(1e-12)
        w = ((new - old[lo]) / span).clamp(0, 1).to(q.scale.device)
        lo, hi = lo.to(q.scale.device), hi.to(q.scale.device)
        scale = q.scale[lo] * (1 - w) + q.scale[hi] * w
        zp = None if q.zero_point is None else (q.zero_point[lo] * (1 - w) + q.zero_point[hi] * w).round()
    q.timesteps, q.scale, q.zero_point = new.to(q.scale.device), scale.contiguous(), zp


def retime_tables(model: nn.Module, timesteps, how: str = "subsample") -> int:
    """`resample_table` on every table quantizer of a model; returns how many tables were retimed."""
    n = 0
    for _, q in table_quantizers(model):
        resample_table(q, timesteps, how)
        n += 1
    return n
