"""What a recipe does to a model, before quantizing it: per layer, the kind and schemes it gets and why.

    rows = quantization_plan(model, "w4a4-fp4-minmax")
    print(format_plan(rows))

`plan_layers` is the decision itself (one home: `quantize.prepare` takes the same decisions); it warns once
when a recipe's special layer kind (winograd, fp4) matches no layer of the model, or when it leaves layers
of a type it quantizes elsewhere in float, with the counts. The plan needs shapes and structure only, so a
model built on the meta device (`trtq.architectures.build_architecture(name, device="meta")`) will do.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trtq.nn import QUANTIZABLE
from trtq.recipes import LayerRule, Recipe, get_recipe
from trtq.roles import find_roles


@dataclass(frozen=True)
class PlanRow:
    name: str
    type: str  # the float layer's class: Conv2d | Linear
    kind: str  # the quantized layer kind (fake, winograd, fp4...) or "float"
    scheme: str  # "w: <weight scheme> | a: <input scheme>", or "-" for float
    why: str  # the keep_float entry or rule that decided, with the role when a role decided
    role: str | None = None


def plan_layers(model: nn.Module, recipe: str | Path | Recipe, warn: bool = True) -> dict[str, tuple[LayerRule | None, str]]:
    """{layer name: (rule or None for float, why)} for every Conv2d/Linear `quantize` would look at."""
    recipe = get_recipe(recipe)
    roles = find_roles(model)
    plan = {name: recipe.decide(name, module, roles.get(name)) for name, module in model.named_modules()
            if type(module) in QUANTIZABLE}  # exact types, as prepare: a subclass may compute something else
    if warn:
        _warn_unmatched(model, recipe, plan)
    return plan


def _warn_unmatched(model: nn.Module, recipe: Recipe, plan: dict) -> None:
    types = {name: type(m).__name__ for name, m in model.named_modules() if name in plan}
    counts = Counter(types.values())
    notes = []
    for kind in sorted({r.layer for r in recipe.rules} - {"fake"}):
        wanted = sorted({t for r in recipe.rules if r.layer == kind for t in r.types})
        if not any(rule is not None and rule.layer == kind for rule, _ in plan.values()):
            have = ", ".join(f"{counts[t]} {t}" for t in wanted)
            notes.append(f"its {kind!r} rules match no layer ({have} in the model, none supported)")
    left = Counter(types[n] for n, (rule, why) in plan.items() if rule is None and why == "no rule matches")
    if left:
        notes.append("it leaves " + ", ".join(f"{c} of {counts[t]} {t}" for t, c in sorted(left.items()))
                     + " layers in float (no rule matches them)")
    if notes:
        warnings.warn(f"recipe {recipe.name!r} on {type(model).__name__}: " + "; ".join(notes), stacklevel=3)


def model_for_inspection(model: str | Path) -> nn.Module:
    """A model to plan on, without its weights where possible: a zoo model name, an architecture name of
    `trtq.architectures` (built on the meta device), or a diffusers model directory (its config.json)."""
    import json

    from trtq.architectures import ARCHITECTURES, build_architecture
    from trtq.errors import TrtqError
    from trtq.zoo import ZOO_MODELS, load_model

    if str(model) in ZOO_MODELS:
        return load_model(str(model)).denoiser
    if str(model) in ARCHITECTURES:
        return build_architecture(str(model), device="meta")
    config = Path(model) / "config.json"
    if not config.is_file():
        raise TrtqError(f"{str(model)!r} is not a zoo model ({', '.join(ZOO_MODELS)}), an architecture "
                        f"({', '.join(ARCHITECTURES)}) nor a diffusers model directory with config.json")
    import diffusers

    data = json.loads(config.read_text())
    cls = getattr(diffusers, data.get("_class_name", ""), None)
    if cls is None:
        raise TrtqError(f"{config} names no diffusers model class ({data.get('_class_name')!r})")
    with torch.device("meta"):
        return cls.from_config(data)


def _scheme(rule: LayerRule | None) -> str:
    if rule is None:
        return "-"
    w = rule.weight.describe() if rule.weight is not None else "float"
    a = rule.input.describe() if rule.input is not None else "float"
    return f"w: {w} | a: {a}"


def quantization_plan(model: nn.Module, recipe: str | Path | Recipe, warn: bool = True) -> list[PlanRow]:
    """One row per Conv2d/Linear of `model`: (name, type, kind, scheme, why, role), in model order."""
    roles = find_roles(model)
    modules = dict(model.named_modules())
    return [PlanRow(name, type(modules[name]).__name__, "float" if rule is None else rule.layer, _scheme(rule),
                    why, roles.get(name))
            for name, (rule, why) in plan_layers(model, recipe, warn).items()]


def format_plan(rows: list[PlanRow], summary: bool = True) -> str:
    """The plan as a terminal table, with a count per (kind, scheme) at the end."""
    head = ("layer", "type", "kind", "role", "scheme", "why")
    cells = [head] + [(r.name, r.type, r.kind, r.role or "", r.scheme, r.why) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1] for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    if summary:
        lines.append("")
        for (kind, scheme), n in Counter((r.kind, r.scheme) for r in rows).most_common():
            lines.append(f"{n:5d} x {kind:8s} {scheme}")
    return "\n".join(lines)
