"""Artifacts: calibrated scales on disk, saying what made them.

An artifact is a directory:
    manifest.json        format version, recipe, model name + fingerprint, library versions, layer list,
                         and the sha256 of the tensor file
    scales.safetensors   every quantizer buffer, keyed "<layer>.<weight|input>_quantizer.<scale|zero_point>"
                         (and a layer kind's own buffers, e.g. Winograd `s_b`/`s_g`, FP4 packed weights)
Only JSON and safetensors are read back (no pickle). Writes are atomic (`trtq.io.atomic.atomic_dir`).

Loading trusts nothing on disk (see docs/robustness.md): the manifest is type-checked against
`MANIFEST_SCHEMA`, the recipe and per-layer schemes and configs against theirs, and the tensors against
the layout the model's quantized layers expect (built from the model before a tensor is read): no unknown or
missing tensor, exact dtypes and shapes, every scale finite and > 0 (weight scales also within a bounded
ratio of the weights' own min-max scale), zero points integral and in range, and the file's sha256.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import platform
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

from trtq.errors import TrtqError
from trtq.io.atomic import atomic_dir
from trtq.io.files import MiB, read_json
from trtq.io.tensors import TensorSpec, read_safetensors
from trtq.io.validate import Any as AnyValue
from trtq.io.validate import Int, Map, Obj, Str, check, located
from trtq.nn import TensorQuantizer, is_quantized, quantizers
from trtq.nn.timestep import route_timesteps
from trtq.recipes import Recipe
from trtq.scheme import QuantScheme

FORMAT_VERSION = 2  # 2: the manifest records the sha256 of scales.safetensors
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SCALES = "scales.safetensors"
MAX_MANIFEST_BYTES = 16 * MiB

# Plausible magnitudes. Activation scales have no ground truth at load time (they come from data), so
# only their order of magnitude is bounded; weight scales are compared with the weights they quantize.
ACT_SCALE_RANGE = (1e-12, 1e12)
WEIGHT_SCALE_RATIO = (1 / 256, 4.0)  # vs the min-max scale of the same weights (methods clip or learn within)
TRANSFORM_SCALE_RANGE = (1e-6, 1e6)  # Winograd s_b / s_g (exp of a learned log)
# 4-bit weights sit ~0.1 (relative L2) from the weights they quantize, clipped/GPTQ'd ones a little more;
# codes for other weights (or another rotation) sit ~1 away.
MAX_PACKED_WEIGHT_ERROR = 0.5
# Stored codes fine-tuned away from the float weights (EfficientDM's merged W0 + B·A) may sit further: the
# manifest then records the error measured at save time ("packed_weight_error"), and loading requires the
# same error again (same codes, scales, rotation and float weights), up to this relative tolerance.
PACKED_WEIGHT_ERROR_RTOL = 1e-3
MAX_RECORDED_PACKED_WEIGHT_ERROR = 2.0
PACKED_WEIGHT_ERROR = "packed_weight_error"

_HEX64 = Str(nonempty=True, max_len=64)
LAYER_SCHEMA = Obj(required={"class": Str(nonempty=True), "config": Map(AnyValue())}, extra=True,
                   desc="a layer entry mapping")  # the extra keys are its quantizers' schemes
MANIFEST_SCHEMA = Obj(
    required={"format_version": Int(1), "kind": Str(("trtq-artifact",)),
              "model": Obj(required={"name": Str(nonempty=True), "fingerprint": _HEX64}, desc="a model mapping"),
              "recipe": AnyValue(), "layers": Map(LAYER_SCHEMA)},
    optional={"created": Str(), "versions": Map(Str()), "extra": AnyValue(),
              "scales": Obj(required={"sha256": _HEX64, "bytes": Int(0)}, desc="a scales mapping")},
    desc="an artifact manifest mapping")


FLOAT_FINGERPRINT = "trtq_float_fingerprint"  # the attribute `release_float_weights` records it under


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over the parameters (names, shapes, dtypes, bytes). Quantizer buffers are not parameters, so a
    quantized model has the fingerprint of the float model it came from. A model whose FP4 float weights were
    released (`trtq.release_float_weights`) answers with the fingerprint recorded before they went; a part of
    it, which records none, cannot be fingerprinted."""
    recorded = getattr(module, FLOAT_FINGERPRINT, None)
    if recorded is not None:
        return recorded
    released = next((n for n, m in module.named_modules() if getattr(m, "float_weight_released", False)), None)
    if released is not None:
        raise TrtqError(f"cannot fingerprint this module: the float weights of {released or 'it'} were released and "
                        "it records no fingerprint of its own (fingerprint the whole model they were released from)")
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import diffusers

    from trtq import __version__

    v = {"trtq": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
         "python": platform.python_version()}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        v["gpu_arch"] = f"sm_{major}{minor}"
    return v


def is_artifact_dir(path: Path) -> bool:
    """What `save_artifact` may replace: a directory holding a manifest (never a file or a foreign dir)."""
    return path.is_dir() and (path / MANIFEST).is_file()


def save_artifact(model: nn.Module, path: str | Path, model_name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write the calibrated scales of a quantized model (from `trtq.quantize`) to directory `path`."""
    recipe: Recipe | None = getattr(model, "trtq_recipe", None)
    if recipe is None:
        raise TrtqError("this model was not quantized with trtq.quantize: nothing to save")
    tensors, layers = {}, {}
    for layer_name, layer in model.named_modules():
        if not is_quantized(layer):
            continue
        entry = {"class": type(layer).__name__, "config": layer.artifact_config()}
        error = _packed_weight_error(layer)
        if error is None:  # float weights released after loading: what the loaded artifact recorded
            error = getattr(layer, "trtq_packed_weight_error", None)
        if error is not None and error > MAX_PACKED_WEIGHT_ERROR:  # fine-tuned codes: see PACKED_WEIGHT_ERROR
            entry[PACKED_WEIGHT_ERROR] = error
        for qname, q in layer.named_modules():
            if isinstance(q, TensorQuantizer):
                if not q.calibrated:
                    raise TrtqError(f"quantizer {layer_name}.{qname} has no scales yet: calibrate before saving")
                entry[qname] = q.scheme.to_dict()
        # Every persistent buffer of a quantized layer is trtq state (scales, learned transform scales,
        # rotations...); non-persistent ones are derived from those and the weight (`refresh_weight`).
        persistent = layer.state_dict(keep_vars=True)
        for bname, buf in layer.named_buffers():
            if bname in persistent:
                tensors[f"{layer_name}.{bname}"] = buf.detach().cpu().contiguous()
        layers[layer_name] = entry
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "trtq-artifact",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_name, "fingerprint": module_fingerprint(model)},
        "recipe": recipe.to_dict(),
        "versions": _versions(),
        "layers": layers,
        **({"extra": extra} if extra else {}),
    }
    path = Path(path)
    with atomic_dir(path, is_artifact_dir, what="trtq artifact") as tmp:
        save_file(tensors, str(tmp / SCALES), metadata={"format_version": str(FORMAT_VERSION)})
        data = (tmp / SCALES).read_bytes()
        manifest["scales"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of artifact directory `path`, type-checked (its recipe is checked by `Recipe.from_dict`)."""
    path = Path(path)
    if not path.is_dir():
        kind = "does not exist" if not path.exists() else "is a file, not an artifact directory"
        raise TrtqError(f"{path} is not a trtq artifact: it {kind}")
    if not (path / MANIFEST).exists() and not (path / MANIFEST).is_symlink():
        raise TrtqError(f"{path} is not a trtq artifact (no {MANIFEST})")
    mpath = path / MANIFEST
    manifest = read_json(mpath, "artifact manifest", max_bytes=MAX_MANIFEST_BYTES)
    where = f"artifact manifest {mpath}"
    if not isinstance(manifest, dict) or manifest.get("kind") != "trtq-artifact":
        raise TrtqError(f"{path} is not a trtq artifact ({MANIFEST} lacks kind: trtq-artifact)")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise TrtqError(f"artifact {path} has format version {version}, newer than this trtq reads "
                        f"({FORMAT_VERSION}); upgrade trtq")
    check(manifest, MANIFEST_SCHEMA, where)
    if version not in READABLE_VERSIONS:
        raise TrtqError(f"{where}: format_version {version} is not one this trtq reads {list(READABLE_VERSIONS)}")
    if version >= 2 and "scales" not in manifest:
        raise TrtqError(f"{where}: scales: missing (format version 2 records the sha256 of {SCALES})")
    return manifest


def check_artifact(path: str | Path, model: nn.Module, model_name: str | None = None) -> dict[str, Any]:
    """The manifest of artifact `path`, after checking that it was made for exactly this model's weights."""
    manifest = read_manifest(path)
    made_for = manifest["model"]
    fingerprint = module_fingerprint(model)
    if made_for["fingerprint"] != fingerprint:
        mine = f" ({model_name})" if model_name else ""
        raise TrtqError(f"artifact {path} was made for model {made_for['name']!r} "
                        f"(fingerprint {made_for['fingerprint'][:12]}), not this model{mine} "
                        f"(fingerprint {fingerprint[:12]})")
    return manifest


def load_artifact(model: nn.Module, path: str | Path, model_name: str | None = None,
                  keep_float_weights: bool = False) -> nn.Module:
    """Quantize a float `model` in place with the scales of artifact `path`. Refuses a foreign artifact and
    anything in it that does not fit this model; on refusal the model is left as it was.

    The result is for inference, so the float weights of its FP4 layers are released once the stored codes
    are checked against them (`trtq.release_float_weights`; the fingerprint stays on the model): a 4-bit
    model then holds less than the float one. `keep_float_weights=True` keeps them, for whatever must still
    read them (re-running HQ-DiT's searches, QALoRA training, comparing with the float layers)."""
    from trtq.nn.fp4_linear import packing_deferred
    from trtq.quantize import _release_float_weights, prepare, restore

    path = Path(path)
    manifest = check_artifact(path, model, model_name)
    where = f"artifact manifest {path / MANIFEST}"
    recipe = Recipe.from_dict(manifest["recipe"], where, "recipe")
    try:
        # FP4 layers skip encoding their weights: the artifact's packed codes (a required tensor of every
        # artifact with FP4 layers) replace them, and `_check_packed_weights` checks those against the weights.
        with packing_deferred():
            originals = prepare(model, recipe, warn=False)  # quantize already said what stays float
    except TrtqError as e:
        raise located(where, "recipe", e) from None
    try:
        quantized = _apply_layer_entries(model, manifest["layers"], where)
        scales = manifest.get("scales")
        tensors = read_safetensors(path / SCALES, "artifact tensors", expected_layout(quantized),
                                   metadata={"format_version": str(manifest["format_version"])} if scales else None,
                                   sha256=scales["sha256"] if scales else None)
        for key, tensor in tensors.items():
            mod, bname = _owner(quantized, key)
            setattr(mod, bname, tensor)
        for layer in quantized.values():
            layer.refresh_weight()  # derived state (e.g. Winograd INT8 weights) from the loaded tensors
        _check_packed_weights(quantized, manifest["layers"], path / SCALES)
        for name, q in quantizers(model):
            q.observer = None
            if not q.calibrated:  # unreachable after expected_layout; kept as the invariant it guards
                raise TrtqError(f"artifact {path} lacks {name}.scale")
            q.mode = "quantize"
        route_timesteps(model)  # per-timestep scale tables read each call's timestep (no-op without tables)
    except BaseException:
        restore(model, originals)
        raise
    if not keep_float_weights:
        _release_float_weights(model, manifest["model"]["fingerprint"])  # checked equal above: no second hash
    return model


def _apply_layer_entries(model: nn.Module, layers: dict, where: str) -> dict[str, nn.Module]:
    """Check each layer entry against the layer `prepare` built for it and apply its config and schemes."""
    quantized = {n: m for n, m in model.named_modules() if is_quantized(m)}
    if set(quantized) != set(layers):
        diff = sorted(set(quantized) ^ set(layers))
        raise TrtqError(f"{where}: its layers and its recipe disagree on which layers are quantized: {diff[:3]}")
    for name, layer in quantized.items():
        entry, at = layers[name], f"layers.{name}"
        if entry["class"] != type(layer).__name__:
            raise TrtqError(f"{where}: {at}.class is {entry['class']!r}, expected {type(layer).__name__!r} "
                            "(what its recipe makes of this layer)")
        _check_config(entry["config"], layer.artifact_config(), where, f"{at}.config")
        try:
            layer.load_artifact_config(entry["config"])
        except TrtqError as e:
            raise located(where, f"{at}.config", e) from None
        own = {qn: q for qn, q in layer.named_modules() if isinstance(q, TensorQuantizer)}
        _check_recorded_error(entry, where, at)
        for qname in sorted(set(entry) - {"class", "config", PACKED_WEIGHT_ERROR} - set(own)):
            raise TrtqError(f"{where}: {at}.{qname}: this layer has no such quantizer (it has {sorted(own)})")
        for qname, q in own.items():
            if qname not in entry:
                raise TrtqError(f"{where}: {at}.{qname}: missing (the scheme of this layer's {q.role} quantizer)")
            scheme = QuantScheme.from_dict(entry[qname], where, f"{at}.{qname}")
            if scheme != q.scheme:  # a method chose this layer's format from data (HQ-DiT's FP4 choice)
                if not _same_family(scheme, q.scheme):
                    raise TrtqError(f"{where}: {at}.{qname} is {scheme.describe()}, which its recipe cannot "
                                    f"make of this layer ({q.scheme.describe()})")
                layer.set_submodule(qname, TensorQuantizer(scheme, q.role))
    return quantized


def _check_recorded_error(entry: dict, where: str, at: str) -> None:
    if PACKED_WEIGHT_ERROR not in entry:
        return
    v = entry[PACKED_WEIGHT_ERROR]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not MAX_PACKED_WEIGHT_ERROR < v <= MAX_RECORDED_PACKED_WEIGHT_ERROR:
        raise TrtqError(f"{where}: {at}.{PACKED_WEIGHT_ERROR}: expected a number in ({MAX_PACKED_WEIGHT_ERROR}, "
                        f"{MAX_RECORDED_PACKED_WEIGHT_ERROR}] (the error of fine-tuned codes), got {v!r}")


def _same_family(a: QuantScheme, b: QuantScheme) -> bool:
    """Schemes that differ at most in the format, between formats of one family (e.g. the 4-bit floats)."""
    fa, fb = a.fmt, b.fmt
    return dataclasses.replace(a, format=b.format) == b and (fa.kind, fa.bits) == (fb.kind, fb.bits)


def _check_config(config: dict, mine: dict, where: str, at: str) -> None:
    """Same keys as the layer's own config, each of the same JSON type (the layer checks the values)."""
    for k in sorted(set(config) ^ set(mine)):
        state = "unknown key" if k in config else "missing"
        raise TrtqError(f"{where}: {at}.{k}: {state}; this layer's config has {sorted(mine)}")
    for k, ref in mine.items():
        v = config[k]
        if isinstance(ref, bool) or isinstance(v, bool):
            ok = isinstance(v, bool) and isinstance(ref, bool)
        elif isinstance(ref, (int, float)):
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (isinstance(ref, float) or isinstance(v, int))
        else:
            ok = type(v) is type(ref)
        if not ok:
            raise TrtqError(f"{where}: {at}.{k}: expected {type(ref).__name__} like {ref!r}, got {v!r}")


def _packed_weight_error(layer: nn.Module) -> float | None:
    """Relative L2 distance of a layer's stored low-bit weights from its float weights (in their rotated
    basis); None for a layer without stored codes, or whose float weights were released."""
    if not hasattr(layer, "dequantized_weight") or getattr(layer, "weight", None) is None:
        return None
    with torch.no_grad():
        ref = layer.rotated_weight()
        return ((layer.dequantized_weight().float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _check_packed_weights(quantized: dict[str, nn.Module], layers: dict, where: Path) -> None:
    """Stored low-bit weights must be a quantization of *this* model's weights (in their rotated basis): a
    missing or edited rotation, or codes packed for other weights, is refused rather than computed with.
    Codes fine-tuned away from the weights must sit exactly as far from them as when they were saved."""
    for name, layer in quantized.items():
        rel = _packed_weight_error(layer)
        if rel is None:
            continue
        recorded = layers[name].get(PACKED_WEIGHT_ERROR)
        if recorded is None and not rel <= MAX_PACKED_WEIGHT_ERROR:
            raise TrtqError(f"artifact tensors {where}: the packed weights of {name} do not quantize this "
                            f"model's weights (relative error {rel:.3g}, expected <= {MAX_PACKED_WEIGHT_ERROR}: "
                            "a rotation or scales that do not belong to them)")
        if recorded is not None and not math.isclose(rel, recorded, rel_tol=PACKED_WEIGHT_ERROR_RTOL):
            raise TrtqError(f"artifact tensors {where}: the fine-tuned weights of {name} sit {rel:.6g} (relative "
                            f"error) from this model's weights, but {recorded:.6g} when they were saved: codes, "
                            "scales or a rotation that do not belong to them")
        layer.trtq_packed_weight_error = rel  # kept for a later save_artifact after the float weights go


def _owner(quantized: dict[str, nn.Module], key: str) -> tuple[nn.Module, str]:
    layer_name = next(n for n in sorted(quantized, key=len, reverse=True) if key.startswith(n + "."))
    mod_path, _, bname = key[len(layer_name) + 1:].rpartition(".")
    layer = quantized[layer_name]
    return (layer.get_submodule(mod_path) if mod_path else layer), bname


# ----------------------------------------------------------------------------------------- expected layout
def _positive(lo: float, hi: float, ref: torch.Tensor | None = None) -> Callable[[torch.Tensor], str | None]:
    """Finite and > 0; within [lo, hi], or within [lo, hi] times `ref` (same shape) when given."""

    def check_values(t: torch.Tensor) -> str | None:
        t = t.float()
        if not torch.isfinite(t).all():
            return "NaN or Inf, expected finite scales > 0"
        if t.numel() and t.min() <= 0:
            return f"a scale of {t.min().item():g}, expected scales > 0"
        bound_lo, bound_hi = (lo, hi) if ref is None else (ref.float() * lo, ref.float() * hi)
        if t.numel() and ((t < bound_lo).any() or (t > bound_hi).any()):
            rel = "" if ref is None else " times the weights' own min-max scale"
            return f"a scale out of the plausible range [{lo:g}, {hi:g}]{rel}"
        return None

    return check_values


def _zero_point(bits: int) -> Callable[[torch.Tensor], str | None]:
    def check_values(t: torch.Tensor) -> str | None:
        if not torch.isfinite(t).all() or (t != t.round()).any() or (t < 0).any() or (t > 2**bits - 1).any():
            return f"a zero point that is not an integer in [0, {2**bits - 1}]"
        return None

    return check_values


def _finite(t: torch.Tensor) -> str | None:
    return None if torch.isfinite(t).all() else "NaN or Inf"


def _zero_one(t: torch.Tensor) -> str | None:
    return None if ((t == 0) | (t == 1)).all() else "values other than 0 and 1, expected rounding decisions"


def _signs(t: torch.Tensor) -> str | None:
    return None if ((t == 1) | (t == -1)).all() else "values other than ±1, expected Hadamard signs"


def _fp8_scale_codes(fmt: str) -> Callable[[torch.Tensor], str | None]:
    from trtq.fp4 import code_values

    def check_values(t: torch.Tensor) -> str | None:
        v = code_values(fmt)[t.long()]
        return None if (torch.isfinite(v) & (v > 0)).all() else f"{fmt} scale codes that are NaN or <= 0"

    return check_values


def _input_scale_rule(layer: nn.Module, q: TensorQuantizer) -> Callable[[tuple[int, ...]], str | None]:
    """Static activation scales are laid out for the input seen in calibration: () per tensor; otherwise all
    ones but the scheme's axis, which holds one entry per channel (or group). The rank is the layer's input
    rank where the layer fixes it (Conv2d: NCHW; Winograd: its [rows, channels] observation layout)."""
    s = q.scheme
    if s.granularity == "tensor":
        return lambda shape: None if shape == () else "[] (one per-tensor scale)"
    kind = type(layer).__name__
    if kind == "WinogradQuantConv2d":
        ranks = (2,)
        n = (layer.tile + 2) ** 2 * layer.in_channels if layer.granularity == "position-group" else layer.in_channels
    elif isinstance(layer, nn.Conv2d):
        ranks, n = (4,), layer.in_channels if s.axis in (1, -3) else None
    else:  # Linear: [..., features]; the leading dims are the model's (tokens, batch)
        ranks, n = (1, 2, 3, 4), layer.in_features if s.axis == -1 else None
    if n is not None and s.granularity == "group":
        n //= s.group_size

    def rule(shape: tuple[int, ...]) -> str | None:
        expected = f"rank {' or '.join(map(str, ranks))}, all dims 1 but axis {s.axis}" + (f" = {n}" if n else "")
        if len(shape) not in ranks or not -len(shape) <= s.axis < len(shape):
            return expected
        a = s.axis % len(shape)
        if any(d != 1 for i, d in enumerate(shape) if i != a) or shape[a] < 1 or (n is not None and shape[a] != n):
            return expected
        return None

    return rule


def _timestep_table_spec(q: nn.Module, bname: str) -> TensorSpec | None:
    """`timesteps` [T] ascending and finite; `scale` (and `zero_point` when asymmetric) one row per timestep."""

    def timesteps(t: torch.Tensor) -> str | None:
        ok = torch.isfinite(t).all() and (t.numel() < 2 or bool((t[1:] > t[:-1]).all()))
        return None if ok else "finite timesteps in ascending order"

    rows = lambda shape: None if len(shape) >= 1 and shape[0] >= 1 else "[T, ...] (one row per timestep)"  # noqa: E731
    if bname == "timesteps":
        return TensorSpec(torch.float32, shape_rule=lambda shape: None if len(shape) == 1 else "[T]", values=timesteps)
    if bname == "zero_point" and q.scheme.symmetric:
        return None
    values = _positive(*ACT_SCALE_RANGE) if bname == "scale" else _zero_point(q.scheme.fmt.bits)
    return TensorSpec(torch.float32, shape_rule=rows, values=values)


def expected_layout(quantized: dict[str, nn.Module]) -> dict[str, TensorSpec]:
    """What an artifact must hold for these quantized layers (as `prepare` built them, configs applied):
    one TensorSpec per tensor key. Buffers `prepare` already filled from the weights give the exact shape and
    dtype, and their values bound the weight scales; static activation scales follow `_input_scale_rule`."""
    specs: dict[str, TensorSpec] = {}
    for lname, layer in quantized.items():
        for mname, mod in layer.named_modules():
            for bname, ref in mod._buffers.items():
                if bname in mod._non_persistent_buffers_set:
                    continue  # derived at load by `refresh_weight`, never stored
                key = ".".join(p for p in (lname, mname, bname) if p)
                spec = _buffer_spec(layer, mod, bname, ref)
                if spec is not None:
                    specs[key] = spec
    return specs


def _buffer_spec(layer: nn.Module, mod: nn.Module, bname: str, ref: torch.Tensor | None) -> TensorSpec | None:
    from trtq.nn.timestep import TimestepTensorQuantizer

    if isinstance(mod, TimestepTensorQuantizer):  # tables keyed by the calibrated timesteps (TFMQ's FSC)
        return _timestep_table_spec(mod, bname)
    if isinstance(mod, TensorQuantizer):
        s = mod.scheme
        if s.dynamic:
            return None  # scales come from the live tensor: none may be stored
        if bname == "zero_point" and s.symmetric:
            return None  # an extra zero_point would silently switch the quantizer to asymmetric math
        if mod.role == "weight" and ref is not None and getattr(layer, "smooth_scale", None) is not None:
            # SmoothQuant: the scales are of W·diag(s) with the stored s, unknown before loading
            return TensorSpec(ref.dtype, tuple(ref.shape), values=_positive(*ACT_SCALE_RANGE))
        if mod.role == "weight" and ref is not None:  # computed by prepare from the weights themselves
            values = _positive(*WEIGHT_SCALE_RATIO, ref=ref) if bname == "scale" else _zero_point(s.fmt.bits)
            return TensorSpec(ref.dtype, tuple(ref.shape), values=values)
        rule = _input_scale_rule(layer, mod)
        values = _positive(*ACT_SCALE_RANGE) if bname == "scale" else _zero_point(s.fmt.bits)
        return TensorSpec(torch.float32, shape_rule=rule, values=values)
    # A layer kind's own buffers.
    if bname == "round_up":  # AdaRound's learned rounding (TFMQ/BRECQ): 0/1 per weight, absent before learning
        return TensorSpec(torch.float32, tuple(layer.weight.shape), required=False, values=_zero_one)
    if bname == "bias_correction":  # mean output error per output channel, absent unless the recipe asks
        return TensorSpec(torch.float32, (layer.weight.shape[0],), required=False, values=_finite)
    if bname == "smooth_scale":  # SmoothQuant's per-input-channel migration factors
        return TensorSpec(ref.dtype, tuple(ref.shape), values=_positive(*TRANSFORM_SCALE_RANGE))
    if bname in ("s_b", "s_g"):
        return TensorSpec(ref.dtype, tuple(ref.shape), values=_positive(*TRANSFORM_SCALE_RANGE))
    if bname == "hadamard_signs":
        return TensorSpec(torch.int8, (layer.in_features,), required=False, values=_signs)
    if ref is None:
        return None  # an empty slot of this configuration (e.g. no FP8 tensor scale): nothing may be stored
    if bname == "weight_scale" and getattr(layer, "scale_format", None):
        return TensorSpec(ref.dtype, tuple(ref.shape), values=_fp8_scale_codes(layer.scale_format))
    if bname in ("weight_scale", "weight_tensor_scale"):
        # prepare's scales are for the unrotated weights in the recipe's format, while a method may rotate and
        # pick another format: these are bounded after loading, by `_check_packed_weights`.
        return TensorSpec(ref.dtype, tuple(ref.shape), values=_positive(*ACT_SCALE_RANGE))
    return TensorSpec(ref.dtype, tuple(ref.shape))  # e.g. packed 4-bit codes: every byte is a valid code pair
