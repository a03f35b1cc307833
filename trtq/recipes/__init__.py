"""Recipes: which layers get which quantization schemes, as data.

A recipe is a YAML/JSON file (the built-in ones sit beside this module) or a `Recipe` built in Python. Rules
are tried in order and the first whose `pattern` (fnmatch on the module's qualified name), `types` and
`roles` (see `trtq.roles`: what the layer does, found from the model's structure) match a layer decides its
schemes; `keep_float` patterns and `keep_float_roles` win over every rule. `method` names a quantization
method that runs on top of the schemes (later: winograd, tfmq, efficientdm, hqdit); None = plain PTQ.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from trtq.errors import TrtqError
from trtq.io.files import MiB, parse_json, parse_yaml, read_text
from trtq.io.validate import Any as AnyValue
from trtq.io.validate import Bool, Int, List, Map, Obj, Opt, Str, Union, check, located
from trtq.scheme import QuantScheme

RECIPES_DIR = Path(__file__).parent
LAYER_TYPES = ("Conv2d", "Linear")
MAX_RECIPE_BYTES = 1 * MiB


NONFINITE = ("error", "skip")  # what calibration does with a NaN/Inf activation (see trtq.quantize.calibrate)

# Types of a recipe document (its values are checked by LayerRule / Recipe / QuantScheme themselves).
# Method args are free-form per method (it parses them), bounded by the reader's depth limit. Layer args are
# integers, booleans or strings (what every layer kind takes; 16.0 for a group size is refused here, not
# discovered as a crash in a reshape).
LAYER_ARG = Union(Bool(), Int(), Str(), desc="an integer, true/false or a string")
RULE_SCHEMA = Obj(optional={
    "pattern": Str(nonempty=True), "types": List(Str(nonempty=True), max_len=8, nonempty=True),
    "weight": Opt(AnyValue()), "input": Opt(AnyValue()), "layer": Str(nonempty=True), "layer_args": Opt(Map(LAYER_ARG)),
    "roles": Opt(List(Str(nonempty=True), max_len=16)),
}, desc="a rule mapping", name="rule")
RECIPE_SCHEMA = Obj(required={"name": Str(nonempty=True, max_len=200), "rules": List(AnyValue(), nonempty=True)},
                    optional={"description": Opt(Str()), "method": Opt(Str(nonempty=True)),
                              "method_args": Opt(Map(AnyValue())), "keep_float": Opt(List(Str(nonempty=True))),
                              "keep_float_roles": Opt(List(Str(nonempty=True), max_len=16)),
                              "nonfinite": Str(NONFINITE), "bias_correction": Bool()},
                    desc="a recipe mapping", name="recipe")


@dataclass(frozen=True)
class LayerRule:
    """Layers whose name matches `pattern` and whose type is in `types` become `layer`-kind quantized layers
    (see `trtq.nn.LAYER_KINDS`: "fake" = QuantConv2d/QuantLinear) built with `layer_args`. A layer the kind
    does not support (e.g. a strided conv for "winograd") does not match, so the next rule decides it."""

    pattern: str = "*"
    types: tuple[str, ...] = LAYER_TYPES
    weight: QuantScheme | None = None
    input: QuantScheme | None = None
    layer: str = "fake"
    layer_args: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()  # empty: any layer; else only layers with one of these roles

    def __post_init__(self) -> None:
        import trtq.methods  # noqa: F401  (registers the built-in layer kinds)
        from trtq.nn import LAYER_KINDS

        bad = set(self.types) - set(LAYER_TYPES)
        if bad or not self.types:
            raise TrtqError(f"rule types must be a non-empty subset of {LAYER_TYPES}, got {list(self.types)}")
        if self.weight is None and self.input is None:
            raise TrtqError(f"rule {self.pattern!r} quantizes nothing; use keep_float to leave layers in float")
        if self.layer not in LAYER_KINDS:
            raise TrtqError(f"unknown layer kind {self.layer!r}; known: {', '.join(LAYER_KINDS)}")
        for t in self.types:
            qcls = LAYER_KINDS[self.layer].get(t)
            if qcls is None:
                raise TrtqError(f"layer kind {self.layer!r} has no quantized {t}")
            qcls.check_args(self.weight, self.input, **self.layer_args)

    def quantized_class(self, module):
        from trtq.nn import LAYER_KINDS

        return LAYER_KINDS[self.layer].get(type(module).__name__)

    def matches(self, name: str, module, role: str | None = None) -> bool:
        if type(module).__name__ not in self.types or not fnmatchcase(name, self.pattern):
            return False
        if self.roles and role not in self.roles:
            return False
        return self.quantized_class(module).supports(module, **self.layer_args)

    def __hash__(self) -> int:  # layer_args is a dict; rules are compared by value
        return hash((self.pattern, self.types, self.weight, self.input, self.layer, self.roles))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pattern": self.pattern, "types": list(self.types)}
        if self.weight is not None:
            d["weight"] = self.weight.to_dict()
        if self.input is not None:
            d["input"] = self.input.to_dict()
        if self.layer != "fake":
            d["layer"] = self.layer
        if self.layer_args:
            d["layer_args"] = dict(self.layer_args)
        if self.roles:
            d["roles"] = list(self.roles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe rule", path: str = "") -> LayerRule:
        check(data, RULE_SCHEMA, where, path)

        def scheme(k: str) -> QuantScheme | None:
            return None if data.get(k) is None else QuantScheme.from_dict(data[k], where, f"{path}.{k}".lstrip("."))

        weight, input = scheme("weight"), scheme("input")
        try:
            return cls(pattern=data.get("pattern", "*"), types=tuple(data.get("types", LAYER_TYPES)),
                       weight=weight, input=input, layer=data.get("layer", "fake"),
                       layer_args=dict(data.get("layer_args") or {}),
                       roles=tuple(data.get("roles") or ()))
        except TrtqError as e:
            raise located(where, path, e) from None


@dataclass(frozen=True)
class Recipe:
    name: str
    rules: tuple[LayerRule, ...]
    description: str = ""
    keep_float: tuple[str, ...] = ()
    method: str | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    # NaN/Inf activations seen in calibration: "error" (refuse, naming the layer) or "skip" (drop that call's
    # tensor from the statistics of that quantizer, with a warning).
    nonfinite: str = "error"
    keep_float_roles: tuple[str, ...] = ()
    # After calibration, measure each quantized layer's mean output error per output channel on the
    # calibration data and subtract it through a stored `bias_correction` (`trtq.bias_correction`).
    bias_correction: bool = False

    def __post_init__(self) -> None:
        from trtq.methods import METHODS
        from trtq.roles import ROLES

        named = set(self.keep_float_roles).union(*(r.roles for r in self.rules))
        if named - set(ROLES):
            raise TrtqError(f"recipe {self.name!r} names unknown roles {sorted(named - set(ROLES))}; "
                            f"known: {', '.join(ROLES)}")

        if not isinstance(self.name, str) or not self.name:
            raise TrtqError("a recipe needs a name (a non-empty string)")
        if self.nonfinite not in NONFINITE:
            raise TrtqError(f"recipe nonfinite must be one of {NONFINITE}, got {self.nonfinite!r}")
        if not isinstance(self.bias_correction, bool):
            raise TrtqError(f"recipe bias_correction must be true or false, got {self.bias_correction!r}")
        if not self.rules:
            raise TrtqError(f"recipe {self.name!r} has no rules")
        if self.method is not None and self.method not in METHODS:
            raise TrtqError(f"unknown method {self.method!r}; known: {', '.join(METHODS) or 'none'}")

    def __hash__(self) -> int:
        return hash((self.name, self.rules, self.keep_float, self.method, self.keep_float_roles, self.bias_correction))

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """This recipe with method knobs changed, e.g. {"winograd.steps": 50} (CLI: --set winograd.steps=50).
        A key is "<method>.<arg>" and must name this recipe's method; the method checks the values."""
        args = dict(self.method_args)
        for key, value in overrides.items():
            method, _, arg = key.partition(".")
            if not arg or method != self.method:
                raise TrtqError(f"override {key!r}: expected '{self.method or '<method>'}.<arg>' for recipe "
                                f"{self.name!r} (its method is {self.method!r})")
            args[arg] = value
        return replace(self, method_args=args)

    def rule_for(self, name: str, module, role: str | None = None) -> LayerRule | None:
        """The rule that quantizes this layer (whose role in its model is `role`), or None to keep it in float."""
        return self.decide(name, module, role)[0]

    def decide(self, name: str, module, role: str | None = None) -> tuple[LayerRule | None, str]:
        """(rule or None for float, why): which keep_float entry or rule decided, by name or by role."""
        kept = next((p for p in self.keep_float if fnmatchcase(name, p)), None)
        if kept is not None:
            return None, f"keep_float {kept!r}"
        if role is not None and role in self.keep_float_roles:
            return None, f"keep_float role {role}"
        for i, rule in enumerate(self.rules):
            if rule.matches(name, module, role):
                return rule, f"rule {i}" + (f" (role {role})" if rule.roles else f" {rule.pattern!r}")
        return None, "no rule matches"

    @property
    def needs_calibration(self) -> bool:
        return self.bias_correction or any(r.input is not None and not r.input.dynamic for r in self.rules)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "description": self.description, "method": self.method,
             "method_args": dict(self.method_args), "keep_float": list(self.keep_float),
             "rules": [r.to_dict() for r in self.rules]}
        if self.nonfinite != "error":  # the default stays implicit, so existing manifests are unchanged
            d["nonfinite"] = self.nonfinite
        if self.keep_float_roles:
            d["keep_float_roles"] = list(self.keep_float_roles)
        if self.bias_correction:
            d["bias_correction"] = True
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe", path: str = "") -> Recipe:
        """A recipe from plain data found at key `path` of document `where` (a recipe file, a manifest)."""
        check(data, RECIPE_SCHEMA, where, path)
        at = (lambda k: f"{path}.{k}") if path else (lambda k: k)  # noqa: E731
        rules = tuple(LayerRule.from_dict(r, where, at(f"rules[{i}]")) for i, r in enumerate(data["rules"]))
        try:
            return cls(name=data["name"], description=data.get("description") or "",
                       method=data.get("method"), method_args=dict(data.get("method_args") or {}),
                       keep_float=tuple(data.get("keep_float") or ()), rules=rules,
                       keep_float_roles=tuple(data.get("keep_float_roles") or ()),
                       nonfinite=data.get("nonfinite", "error"),
                       bias_correction=data.get("bias_correction", False))
        except TrtqError as e:
            raise located(where, path, e) from None

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        path = Path(path)
        where = f"recipe {path}"
        text = read_text(path, "recipe", MAX_RECIPE_BYTES)
        data = parse_json(text, where) if path.suffix == ".json" else parse_yaml(text, where)
        return cls.from_dict(data, where)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """CLI `--set winograd.steps=50 --set hqdit.formats=[fp4_e2m1]` -> {"winograd.steps": 50, ...} (values YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrtqError(f"--set expects <method>.<arg>=<value>, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise TrtqError(f"--set {item!r}: the value is not valid YAML: {e}") from None
    return out


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def get_recipe(recipe: str | Path | Recipe) -> Recipe:
    """A Recipe from itself, a built-in name, or a path to a YAML/JSON file."""
    if isinstance(recipe, Recipe):
        return recipe
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if builtin.is_file():
        return Recipe.from_file(builtin)
    if Path(recipe).is_file():
        return Recipe.from_file(recipe)
    raise TrtqError(f"unknown recipe {str(recipe)!r}: not a built-in ({', '.join(list_recipes())}) nor a file")
