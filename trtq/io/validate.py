"""Typed schemas for the documents trtq reads from disk, checked before anything in them is used.

A schema is a small tree of checkers (`Obj`, `Map`, `List`, `Str`, `Int`, `Num`, `Bool`, `Opt`, `Any`);
`check(data, schema, where)` walks the data and raises one `TrtqError` line naming the document, the key
path and what was expected, e.g.
    recipe r.yaml: rules[0].input.dynamic: expected true or false, got the string 'false'

Why hand-written rather than pydantic or jsonschema (both installed in the dev environment): neither is a
runtime dependency of trtq, and this checker is ~100 lines with no dependency weight; its messages are
exactly one line in trtq's words (jsonschema's are multi-line and name the schema rule that failed;
pydantic's list every failing branch of a union), and its booleans and integers are strict in the way
files need (JSON `"false"` or `1` is not a boolean, `true` or `2.0` is not an integer), which pydantic's
default lax mode is not. Semantic rules (a group scheme needs a group size...) stay with the types that
own them (`QuantScheme.__post_init__`, `LayerRule`...); schemas only promise types, keys and bounds.
The same checkers serve every document: artifact manifests, recipes, model metadata, and the ONNX/engine
manifests that come later (`trtq.io.files.read_json(path, what, schema)`).
"""

from __future__ import annotations

import math
from typing import Any as _Any

from trtq.errors import TrtqError


def _show(value: _Any) -> str:
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text[:60] + '...' if len(text) > 60 else text}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


class Schema:
    desc = "a value"

    def check(self, value: _Any, path: str) -> None:
        raise NotImplementedError

    def fail(self, value: _Any, path: str, expected: str | None = None):
        raise SchemaError(path, expected or self.desc, value)


class SchemaError(TrtqError):
    def __init__(self, path: str, expected: str, value: _Any):
        self.path, self.expected = path, expected
        super().__init__(f"{path or 'top level'}: expected {expected}, got {_show(value)}")


class Any(Schema):
    """Any JSON value (already bounded in depth by the reader)."""

    def check(self, value, path):
        pass


class Str(Schema):
    def __init__(self, choices: tuple[str, ...] | None = None, nonempty: bool = False, max_len: int = 4096):
        self.choices, self.nonempty, self.max_len = choices, nonempty, max_len
        self.desc = f"one of {list(choices)}" if choices else "a non-empty string" if nonempty else "a string"

    def check(self, value, path):
        if not isinstance(value, str) or (self.nonempty and not value) or len(value) > self.max_len:
            self.fail(value, path)
        if self.choices is not None and value not in self.choices:
            self.fail(value, path)


class Bool(Schema):
    desc = "true or false"

    def check(self, value, path):
        if not isinstance(value, bool):
            self.fail(value, path)


class Int(Schema):
    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi
        bounds = f" in [{lo}, {hi}]" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
        self.desc = f"an integer{bounds}"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(value, path)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            self.fail(value, path)


class Num(Schema):
    """A finite number (integers accepted), optionally within [lo, hi]."""

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False):
        self.lo, self.hi, self.lo_open = lo, hi, lo_open
        lo_s = "(" if lo_open else "["
        self.desc = f"a number in {lo_s}{lo}, {hi}]" if lo is not None else "a finite number"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(value, path)
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            self.fail(value, path)
        if self.hi is not None and value > self.hi:
            self.fail(value, path)


class Opt(Schema):
    """`inner` or null."""

    def __init__(self, inner: Schema):
        self.inner = inner
        self.desc = f"{inner.desc} or null"

    def check(self, value, path):
        if value is not None:
            self.inner.check(value, path)


class Union(Schema):
    """The first of `options` that accepts the value (options should not overlap)."""

    def __init__(self, *options: Schema, desc: str | None = None):
        self.options = options
        self.desc = desc or " or ".join(o.desc for o in options)

    def check(self, value, path):
        for o in self.options:
            try:
                o.check(value, path)
                return
            except TrtqError:
                continue
        self.fail(value, path)


class List(Schema):
    def __init__(self, item: Schema, max_len: int = 100_000, nonempty: bool = False):
        self.item, self.max_len, self.nonempty = item, max_len, nonempty
        self.desc = f"a {'non-empty ' if nonempty else ''}list (items: {item.desc})"

    def check(self, value, path):
        if not isinstance(value, list) or len(value) > self.max_len or (self.nonempty and not value):
            self.fail(value, path)
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")


class Map(Schema):
    """A mapping of string keys to `value` (keys are free, e.g. layer names)."""

    def __init__(self, value: Schema, max_len: int = 1_000_000):
        self.value, self.max_len = value, max_len
        self.desc = f"a mapping of names to {value.desc}"

    def check(self, value, path):
        if not isinstance(value, dict) or len(value) > self.max_len:
            self.fail(value, path)
        for k, v in value.items():
            if not isinstance(k, str):  # YAML allows non-string keys
                raise SchemaError(path, "string keys", k)
            self.value.check(v, _join(path, k))


class Obj(Schema):
    """A mapping with known keys: `required` must be present, `optional` may be; others are refused unless
    `extra` (documents that readers of a newer version may extend, e.g. `versions`). `name` words the
    unknown-keys error ("unknown recipe keys [...]")."""

    def __init__(self, required: dict[str, Schema] | None = None, optional: dict[str, Schema] | None = None,
                 extra: bool = False, desc: str = "a mapping", name: str = ""):
        self.required, self.optional, self.extra = required or {}, optional or {}, extra
        self.desc, self.name = desc, name

    def check(self, value, path):
        if not isinstance(value, dict):
            self.fail(value, path)
        known = {**self.required, **self.optional}
        unknown = [k for k in value if k not in known and not (self.extra and isinstance(k, str))]
        if unknown:
            where = f"{path}: " if path else ""
            what = f"{self.name} keys" if self.name else "keys"
            raise TrtqError(f"{where}unknown {what} {sorted(map(str, unknown))}; known: {sorted(known)}")
        for k in self.required:
            if k not in value:
                raise TrtqError(f"{_join(path, k)}: missing (expected {self.required[k].desc})")
        for k, v in value.items():
            if k in known:
                known[k].check(v, _join(path, k))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check(data: _Any, schema: Schema, where: str, path: str = "") -> None:
    """Check `data` (found at key `path` of document `where`, e.g. a file) against `schema`; a failure is one
    TrtqError line starting with `where`."""
    try:
        schema.check(data, path)
    except TrtqError as e:
        raise TrtqError(f"{where}: {e}") from None


def located(where: str, path: str, error: TrtqError) -> TrtqError:
    """A semantic error (raised by the type that owns the rule) with the document and key it came from."""
    return TrtqError(f"{where}: {path + ': ' if path else ''}{error}")
