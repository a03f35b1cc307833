"""Calibration data and reconstruction: recorded denoiser calls, TIAR for the TIB, BRECQ for the other blocks.

Calibration data are the denoiser calls of the user's `calib_loop` on the float model (its own sampling
trajectories: every (x_t, t, conditioning) it was called with), recorded once and replayed as often as needed.

Reconstruction learns AdaRound weight rounding (activations in float, as in BRECQ's weight stage) so that a
unit's quantized output matches the float one, loss Σ ||ŷ - y||² (summed over features, mean over samples)
+ λ · rounding regularizer:
- TIAR: the unit is the whole TIB; its outputs are every TIB layer's output, which depend on t alone
  (or t and the label), so they are computed once per calibrated step (one sample per step when they depend
  on t alone).
- BRECQ: the other units are diffusers' residual / transformer / resampling blocks (by class, the same for
  every model), and every remaining quantized layer on its own; inputs come from the partly quantized model
  (units before it already rounded), targets from the float unit on the same inputs (see `brecq`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trtq.errors import TrtqError
from trtq.nn import float_mode, quantizers
from trtq.quantizer import expand_scale
from trtq.tfmq.adaround import LAMBDA, BetaSchedule, hard_rounding, init_logits, rounding_regularizer
from trtq.tfmq.tib import split_call

BLOCK_CLASSES = ("ResnetBlock2D", "BasicTransformerBlock", "Downsample2D", "Upsample2D")


class _Stop(Exception):
    """Ends a replayed forward early, once the modules of interest have run."""


@dataclass
class Call:
    args: tuple
    kwargs: dict
    timestep: torch.Tensor  # [B]

    @property
    def batch(self) -> int:
        return self.timestep.shape[0]


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    return value


def rows_of(value, idx: torch.Tensor, batch: int):
    """Select samples idx of every tensor whose first dim is the batch."""
    if isinstance(value, torch.Tensor):
        return value[idx] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: rows_of(v, idx, batch) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(rows_of(v, idx, batch) for v in value)
    return value


def _cat(values: list):
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values) if first.ndim else first
    if isinstance(first, dict):
        return {k: _cat([v[k] for v in values]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat(list(vs)) for vs in zip(*values))
    return first


def _output(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TrtqError(f"cannot reconstruct a module returning {type(out).__name__}")


def record_calls(denoiser: nn.Module, calib_loop) -> list[Call]:
    """Every call the calibration loop makes to the denoiser, with all quantizers off (float trajectories)."""
    calls: list[Call] = []

    def hook(module, args, kwargs):
        bound = split_call(module, args, kwargs)
        t = torch.as_tensor(bound.arguments["timestep"]).reshape(-1)
        b = bound.args[0].shape[0] if bound.args else next(iter(kwargs.values())).shape[0]
        calls.append(Call(_detach(args), _detach(kwargs), t.expand(b).clone() if t.numel() == 1 else t.clone()))

    with float_mode(denoiser):
        handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                calib_loop(denoiser)
        finally:
            handle.remove()
    if not calls:
        raise TrtqError("calib_loop never called the denoiser it was given")
    return calls


# ------------------------------------------------------------------------------------ capture
def _run_until(denoiser: nn.Module, call: Call, watched: dict[str, nn.Module], expected: dict[str, int],
               on_out) -> None:
    """Run one call; on_out(name, args, kwargs, output) for each watched module; stop once all have run."""
    seen = {n: 0 for n in watched}

    def hook_for(name):
        def hook(mod, args, kwargs, out):
            on_out(name, args, kwargs, out)
            seen[name] += 1
            if all(seen[n] >= expected[n] for n in watched):
                raise _Stop
        return hook

    handles = [m.register_forward_hook(hook_for(n), with_kwargs=True) for n, m in watched.items()]
    try:
        denoiser(*call.args, **call.kwargs)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
        router = getattr(denoiser, "trtq_timestep_router", None)
        if router is not None:  # the stopped call never reached the hook that unbinds its timestep
            router.timestep = None


def count_calls(denoiser: nn.Module, call: Call, watched: dict[str, nn.Module]) -> dict[str, int]:
    counts = {n: 0 for n in watched}
    handles = [m.register_forward_hook(lambda *a, n=n: counts.__setitem__(n, counts[n] + 1))
               for n, m in watched.items()]
    try:
        with torch.no_grad(), float_mode(denoiser):
            denoiser(*call.args, **call.kwargs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, c in counts.items() if c == 0]
    if missing:
        raise TrtqError(f"the calibration call never reached {missing[:3]}")
    return counts


# ------------------------------------------------------------------------------------ learning
def _start_soft(layers: dict[str, nn.Module]) -> list[torch.Tensor]:
    logits = []
    for layer in layers.values():
        wq = layer.weight_quantizer
        s = expand_scale(wq.scale, layer.weight, wq.scheme)
        v = init_logits(layer.weight.detach() / s).requires_grad_(True)  # soft rounding starts at w
        layer.soft_rounding = v
        logits.append(v)
    return logits


def _finish_hard(layers: dict[str, nn.Module]) -> None:
    for layer in layers.values():
        layer.round_up = hard_rounding(layer.soft_rounding.detach())
        layer.soft_rounding = None


def _optimize(layers, loss_fn, iters: int, lr: float, desc: str, progress: bool) -> float:
    """Adam on the rounding logits of `layers`; loss_fn() -> reconstruction loss. Returns the last one."""
    logits = _start_soft(layers)
    opt = torch.optim.Adam(logits, lr=lr)
    beta = BetaSchedule(iters)
    rec = torch.zeros(())
    try:
        for i in tqdm(range(iters), desc=desc, disable=not progress, leave=False):
            rec = loss_fn()
            b = beta(i)
            loss = rec if b is None else rec + LAMBDA * sum(rounding_regularizer(v, b) for v in logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        _finish_hard(layers)
    return float(rec.detach())


def _weight_layers(layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return {n: m for n, m in layers.items() if m.weight_quantizer is not None and m.round_up is None}


def tiar(denoiser: nn.Module, calls: list[Call], tib_layers: dict[str, nn.Module], time_only: bool,
         iters: int, lr: float, progress: bool) -> tuple[str, int, int, float]:
    """Reconstruct the TIB: every TIB layer's output matches float, for every calibrated timestep."""
    layers = _weight_layers(tib_layers)
    if not layers or iters == 0:
        return ("tib", len(layers), 0, 0.0)
    # One call per calibrated timestep; one sample of it when the TIB depends on t alone.
    per_step: dict[float, Call] = {}
    for c in calls:
        per_step.setdefault(float(c.timestep[0]), c)
    data = list(per_step.values())
    if time_only:
        first = torch.zeros(1, dtype=torch.long)
        data = [Call(_cat([rows_of(c.args, first, c.batch) for c in data]),
                     _cat([rows_of(c.kwargs, first, c.batch) for c in data]),
                     torch.cat([c.timestep[:1] for c in data]))]
    expected = count_calls(denoiser, data[0], tib_layers)
    targets = []
    with float_mode(denoiser), torch.no_grad():
        for c in data:
            outs: dict[str, list] = {n: [] for n in tib_layers}
            _run_until(denoiser, c, tib_layers, expected, lambda n, a, k, o: outs[n].append(_output(o).detach()))
            targets.append(outs)

    def loss_fn():
        k = random.randrange(len(data))
        got: dict[str, list] = {n: [] for n in tib_layers}
        with float_mode(denoiser, inputs_only=True):
            _run_until(denoiser, data[k], tib_layers, expected, lambda n, a, kw, o: got[n].append(_output(o)))
        return sum((g - t).pow(2).flatten(1).sum(1).mean()
                   for n in tib_layers for g, t in zip(got[n], targets[k][n]))

    final = _optimize(layers, loss_fn, iters, lr, "TIAR", progress)
    return ("tib", len(layers), iters, final)


def reconstruction_units(denoiser: nn.Module, layers: dict[str, nn.Module]) -> dict[str, dict]:
    """{unit name: {layer name: layer}}: outermost BLOCK_CLASSES modules holding layers, then lone layers."""
    units: dict[str, dict] = {}
    for name, mod in denoiser.named_modules():
        if type(mod).__name__ in BLOCK_CLASSES and not any(name.startswith(u + ".") for u in units):
            inside = {n: m for n, m in layers.items() if n.startswith(name + ".")}
            if inside:
                units[name] = inside
    covered = {n for u in units.values() for n in u}
    units.update({n: {n: m} for n, m in layers.items() if n not in covered})
    return units


def batch_of(calls: list[Call]) -> Call:
    """All calls as one batch (each sample keeps its own timestep)."""
    return Call(_cat([c.args for c in calls]), _cat([c.kwargs for c in calls]), torch.cat([c.timestep for c in calls]))


def brecq(denoiser: nn.Module, calls: list[Call], layers: dict[str, nn.Module], iters: int, lr: float,
          batch: int, progress: bool) -> list[tuple[str, int, int, float]]:
    """Block reconstruction of every unit holding layers in `layers`, in execution order, in one pass.

    The recorded calls run as one batch through the model (activations float, weights quantized); when the
    pass reaches a unit, a pre-hook reconstructs it right there on the inputs it was given (so the inputs
    come from the partly quantized model: every earlier unit already has its learned rounding), with the
    float unit on those same inputs as the target (BRECQ's default, asym=False); the pass then continues
    through the reconstructed unit to the next one.
    """
    stats: list = []
    units = reconstruction_units(denoiser, layers)
    mods = dict(denoiser.named_modules())
    data = batch_of(calls)
    n = data.batch
    done: set[str] = set()
    bar = tqdm(total=len(units), desc="BRECQ blocks", disable=not progress, leave=False)

    def hook_for(unit_name: str):
        unit, unit_layers = mods[unit_name], units[unit_name]

        def hook(mod, args, kwargs):
            if unit_name in done:  # reconstructed already (also: the calls below re-enter this hook)
                return
            done.add(unit_name)
            todo = _weight_layers(unit_layers)
            if todo and iters:
                with float_mode(unit):
                    target = _output(unit(*args, **kwargs)).detach()

                def loss_fn():
                    idx = torch.randperm(n)[:batch]
                    out = _output(unit(*rows_of(args, idx, n), **rows_of(kwargs, idx, n)))
                    return (out - target[idx]).pow(2).flatten(1).sum(1).mean()

                with torch.enable_grad():
                    final = _optimize(todo, loss_fn, iters, lr, unit_name, progress)
                stats.append((unit_name, len(todo), iters, final))
                bar.set_postfix(loss=f"{final:.3g}")
            bar.update(1)
        return hook

    handles = [mods[u].register_forward_pre_hook(hook_for(u), with_kwargs=True) for u in units]
    try:
        with torch.no_grad(), float_mode(denoiser, inputs_only=True):
            denoiser(*data.args, **data.kwargs)
    finally:
        for h in handles:
            h.remove()
        bar.close()
    missed = sorted(set(units) - done)
    if missed:
        raise TrtqError(f"the calibration pass never reached {missed[:3]}")
    return stats


def calibrate_activations(denoiser: nn.Module, calls: list[Call], progress: bool) -> None:
    """Observe every uncalibrated input quantizer on the recorded calls (weights quantized), then fix scales."""
    pending = {n: q for n, q in quantizers(denoiser) if q.role == "input" and not q.calibrated}
    for q in pending.values():
        q.set_mode("calibrate")
    with torch.no_grad():
        for c in tqdm(calls, desc="activation ranges", disable=not progress, leave=False):
            denoiser(*c.args, **c.kwargs)
    for n, q in pending.items():
        q.finish_calibration()
