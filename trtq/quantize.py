"""The one verb: `quantize(model, recipe, calib_loop)`.

1. `prepare`: every Conv2d/Linear that a recipe rule matches is replaced in place by its quantized twin
   (same parameters); weight scales are computed at once (weights are known up front).
2. `calibrate`: static activation quantizers observe while the user's `calib_loop(model)` runs the model on
   data the user chooses (as in modelopt's forward_loop); then their scales are fixed.
The recipe is recorded on the model (`model.trtq_recipe`) so that an artifact can say what made it.

`release_float_weights(model)` then frees what inference no longer reads: the float weights of the FP4 layers
(their forward reads only the packed codes and scales), after recording the float model's fingerprint for the
artifact. `quantize` keeps them: a method, a comparison with the float layers or a second look may still need
them, and saving needs only the fingerprint, so release before saving or after, as memory demands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trtq.bias_correction import correct_biases
from trtq.errors import TrtqError
from trtq.methods import METHODS
from trtq.nn import QUANTIZABLE, TensorQuantizer, is_quantized, quantizers
from trtq.recipes import Recipe, get_recipe

CalibLoop = Callable[[nn.Module], None]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def prepare(model: nn.Module, recipe: str | Path | Recipe, warn: bool = True) -> dict[str, nn.Module]:
    """Swap matched layers for quantized ones (no calibration). Returns {name: the float layer it replaced}.
    Rules match by name, type and role (`trtq.roles`); `warn` says once what the recipe leaves in float."""
    from trtq.inspect import plan_layers

    recipe = get_recipe(recipe)
    if any(is_quantized(m) for m in model.modules()):
        raise TrtqError("this model is already quantized; start again from the float model")
    lora = next((n for n, m in model.named_modules() if type(m).__module__.startswith("peft.tuners.")), None)
    if lora is not None:  # the adapter branch would stay float beside a quantized base layer
        raise TrtqError(f"layer {lora} holds an unfused LoRA adapter: fuse it into the float weights first "
                        "(diffusers: fuse_lora() then unload_lora()), then quantize the fused model")
    plan = plan_layers(model, recipe, warn=warn)  # exact Conv2d/Linear types only (a subclass may differ)
    swapped = {}
    for name, module in list(model.named_modules()):
        rule = plan[name][0] if name in plan else None
        if rule is None:
            continue
        try:
            qcls = rule.quantized_class(module)
            _set_submodule(model, name, qcls.from_float(module, rule.weight, rule.input, **rule.layer_args))
        except TrtqError as e:
            restore(model, swapped)
            raise TrtqError(f"layer {name}: {e}") from None
        _name_quantizers(model, name)
        swapped[name] = module
    if not swapped:
        raise TrtqError(f"recipe {recipe.name!r} matched no Conv2d/Linear layer of this model")
    model.trtq_recipe = recipe
    return swapped


def _name_quantizers(model: nn.Module, layer_name: str) -> None:
    """Give a layer's quantizers their qualified names, for errors that must say which one."""
    for qname, q in model.get_submodule(layer_name).named_modules():
        if isinstance(q, TensorQuantizer):
            q.qualname = f"{layer_name}.{qname}"


def restore(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Put the float layers returned by `prepare` back (used to leave a model untouched on failure)."""
    from trtq.artifact import FLOAT_FINGERPRINT
    from trtq.nn.timestep import unroute_timesteps

    for name, module in originals.items():
        _set_submodule(model, name, module)
    unroute_timesteps(model)  # a method that made timestep tables installed a router on the model
    for attr in ("trtq_recipe", FLOAT_FINGERPRINT):
        model.__dict__.pop(attr, None)


def calibrate(model: nn.Module, calib_loop: CalibLoop) -> None:
    """Run the user's loop with the uncalibrated static quantizers observing, then fix their scales."""
    pending = {n: q for n, q in quantizers(model) if not q.calibrated}
    if not pending:
        return
    nonfinite = getattr(getattr(model, "trtq_recipe", None), "nonfinite", "error")
    for name, q in pending.items():
        q.set_mode("calibrate")
        # What observe() reports when the data are bad: the layer's name and the call, and the recipe's policy.
        q.qualname, q.calib_calls, q.calib_skipped, q.nonfinite = name, 0, 0, nonfinite
    with torch.no_grad():
        calib_loop(model)
    missed = [n for n, q in pending.items() if q.observer is None or not q.observer.seen]
    skipped = [n for n in missed if pending[n].calib_skipped]
    if skipped:
        for q in pending.values():
            q.observer = None
        raise TrtqError(f"{skipped[0]}: all {pending[skipped[0]].calib_skipped} of its calibration calls held "
                        f"NaN/Inf (nonfinite: skip left nothing to calibrate it from)"
                        + (f"; {len(skipped) - 1} more such quantizer(s)" if len(skipped) > 1 else ""))
    if missed:
        for q in pending.values():
            q.observer = None
        shown = ", ".join(missed[:3]) + (f" and {len(missed) - 3} more" if len(missed) > 3 else "")
        raise TrtqError(f"calibration never reached {len(missed)} quantized layer(s) ({shown}): "
                        "does calib_loop run the model it is given?")
    try:
        for q in pending.values():
            q.finish_calibration()
    except TrtqError:
        for q in pending.values():
            q.observer = None
        raise


def quantize(model: nn.Module, recipe: str | Path | Recipe, calib_loop: CalibLoop | None = None) -> nn.Module:
    """Quantize `model` in place with `recipe`, calibrating static activation scales with `calib_loop`.

    Returns the model (now holding fake-quantized layers), for chaining. FP4 layers keep the float weights
    beside their packed codes until `release_float_weights(model)` (before or after `save_artifact`).
    """
    recipe = get_recipe(recipe)
    if recipe.needs_calibration and calib_loop is None:
        why = "static activation scales" if not recipe.bias_correction else "bias correction"
        raise TrtqError(f"recipe {recipe.name!r} has {why}: pass calib_loop")
    originals = prepare(model, recipe)
    try:
        if recipe.method is not None:
            METHODS[recipe.method](model, recipe, calib_loop)
        if recipe.needs_calibration:
            calibrate(model, calib_loop)
        if recipe.bias_correction:
            correct_biases(model, calib_loop)
    except BaseException:
        restore(model, originals)  # nothing half-quantized is left behind
        raise
    return model


def release_float_weights(model: nn.Module) -> int:
    """Free the float weights of `model`'s FP4 layers, which its forward, `save_artifact` and the ONNX export
    no longer read (the packed 4-bit codes and scales stay). The float model's fingerprint is computed first
    and kept on the model (`trtq.artifact.module_fingerprint` answers with it), so artifacts still name the
    float model. What needs the float weights afterwards (HQ-DiT's searches, EfficientDM's QALoRA training,
    `set_rotation`, the float capture) raises a TrtqError. Other layer kinds keep theirs: their forward reads
    them. Returns the bytes released (0 when there is nothing left to release)."""
    return _release_float_weights(model, None)


def _release_float_weights(model: nn.Module, fingerprint: str | None) -> int:
    """`release_float_weights`; `fingerprint`: the float model's, when the caller has just checked it
    (`load_artifact`), so that it is not hashed twice."""
    from trtq.artifact import FLOAT_FINGERPRINT, module_fingerprint
    from trtq.nn.fp4_linear import FP4Linear

    if getattr(model, "trtq_recipe", None) is None:
        raise TrtqError("release_float_weights takes a model quantized by trtq.quantize or trtq.load_artifact")
    layers = [m for m in model.modules() if isinstance(m, FP4Linear) and not m.float_weight_released]
    if not layers:
        return 0
    # Before the first weight goes (a model released before answers with the fingerprint it recorded then).
    setattr(model, FLOAT_FINGERPRINT, fingerprint or module_fingerprint(model))
    return sum(layer.release_float_weight() for layer in layers)
