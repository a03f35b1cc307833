"""A seeded fuzzer that holds trtq's readers to their promises: `python -m trtq.io.fuzz --cases 20000`.

Each case takes a valid artifact (or recipe) of a tiny quantized model, applies one seeded mutation and
loads the result the way `trtq eval --artifact` does. Outcomes:
    refused      a TrtqError (the promise: one clear line)
    identical    accepted, model output bit-identical to the valid artifact's
    tolerated    accepted, output finite and within the tolerance of the mutation's kind
    FAIL         any other exception, or an accepted artifact whose output is non-finite or off by more
                 than its kind allows
Mutation kinds and their tolerance (relative L2 error of the model output vs the valid artifact's):
    bytes        byte flips / truncation / appended bytes / zeroed runs in manifest.json or
                 scales.safetensors, not resealed                                      -> identical (0)
    fs           a file or the artifact replaced by a directory, FIFO, symlink loop, dangling
                 symlink, empty file, or missing                                       -> identical (0)
    tree         the manifest's JSON tree: keys deleted/added, values replaced by other types, boundary
                 numbers, strings like "false", other valid vocabulary, deep nesting   -> identical (0),
                 except a quantizer's format swapped within its family (e.g. fp4_e2m1 -> fp4_e3m0 on a
                 dynamic FP4 input: what HQ-DiT's format choice records)               -> 1.0
    structure    tensors dropped/added/renamed, dtype or shape changed, a zero_point added to a symmetric
                 quantizer, metadata changed; resealed (sha256 updated, as a deliberate edit would be)
                                                                                       -> identical (0)
    poison       a scale-like tensor gets NaN/Inf/0/negative/implausible magnitudes, non-integral or
                 out-of-range zero points, Hadamard signs other than ±1; resealed      -> refused only
    perturb      a scale-like tensor scaled by 1 +- 1e-6..1e-3; resealed              -> 0.05
    recipe       a recipe YAML/JSON document mutated (tree, bytes, nesting) and read with
                 Recipe.from_file; accepted recipes must round-trip and prepare the model or refuse
Value edits of packed 4-bit weight codes, and flips of valid ±1 Hadamard signs, are not generated resealed:
like a different GPTQ result they are another plausible quantization of the same weights, which only the
sha256 (the bytes kind) tells from the original. (A dropped rotation or codes for other weights are caught:
the packed weights must quantize the model's own weights, see trtq.artifact.)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trtq.errors import TrtqError

KINDS = ("bytes", "fs", "tree", "structure", "poison", "perturb", "recipe")
TOLERANCE = {"bytes": 0.0, "fs": 0.0, "tree": 0.0, "structure": 0.0, "poison": None, "perturb": 0.05}
FAMILY_SWAP_TOLERANCE = 1.0


def reseal(art: Path) -> None:
    """Record the current sha256 of an artifact's tensor file in its manifest (what a deliberate edit does)."""
    from trtq.artifact import MANIFEST, SCALES

    m = json.loads((art / MANIFEST).read_text())
    data = (art / SCALES).read_bytes()
    m["scales"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / MANIFEST).write_text(json.dumps(m))


# ------------------------------------------------------------------------------------------------ the model
class TinyNet(nn.Module):
    """Every artifact feature in four small layers: per-channel weights + static per-tensor input (conv),
    a Winograd conv with learned-transform buffers and static group input scales (wino), a static
    asymmetric input with a zero point (lin), and an NVFP4 layer with FP8 scale codes, a tensor scale and
    Hadamard signs (fp4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.wino = nn.Conv2d(8, 8, 3, padding=1)
        self.lin = nn.Linear(8, 32)
        self.fp4 = nn.Linear(32, 8)

    def forward(self, x):
        h = self.wino(torch.relu(self.conv(x))).mean((2, 3))
        return self.fp4(torch.nn.functional.gelu(self.lin(h)))


def tiny_recipe() -> dict:
    int8_w = {"format": "int8", "granularity": "channel", "axis": 0}
    return {"name": "fuzz-tiny", "description": "every artifact feature", "rules": [
        {"pattern": "conv", "types": ["Conv2d"], "weight": int8_w, "input": {"format": "int8"}},
        {"pattern": "wino", "types": ["Conv2d"], "layer": "winograd", "layer_args": {"tile": 4, "group_size": 4},
         "weight": {"format": "int8", "granularity": "group", "axis": 1, "group_size": 4},
         "input": {"format": "int8", "granularity": "group", "axis": 1, "group_size": 4}},
        {"pattern": "lin", "types": ["Linear"], "weight": int8_w, "input": {"format": "int8", "symmetric": False}},
        {"pattern": "fp4", "types": ["Linear"], "layer": "fp4", "layer_args": {"group_size": 16},
         "weight": {"format": "fp4_e2m1", "granularity": "group", "axis": 1, "group_size": 16,
                    "scale_format": "fp8_e4m3"},
         "input": {"format": "fp4_e2m1", "granularity": "group", "axis": -1, "group_size": 16, "dynamic": True,
                   "scale_format": "fp8_e4m3"}},
    ]}


@dataclass
class Base:
    """A valid artifact held in memory, the float model it loads into, and the output it must give."""

    fp: nn.Module
    manifest: dict
    manifest_bytes: bytes
    scales_bytes: bytes
    tensors: dict
    metadata: dict
    y: torch.Tensor
    recipe_text: str
    model_factory: Callable[[], nn.Module]  # a fresh float model to load into
    forward: Callable[[nn.Module], torch.Tensor]  # the model's output on the fuzzer's fixed input


def build_tiny_base(root: Path) -> Base:
    import trtq
    from trtq.hadamard import random_signs
    from trtq.recipes import Recipe

    torch.manual_seed(0)
    fp = TinyNet().eval()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, 2, 8, 8, generator=gen) for _ in range(2)]
    q = trtq.quantize(copy.deepcopy(fp), Recipe.from_dict(tiny_recipe()), lambda m: [m(x) for x in xs])
    with torch.no_grad():
        q.wino.s_b.copy_(torch.tensor([1.0, 1.1, 0.9, 1.05, 0.95, 1.0]))  # learned-looking transform scales
        q.wino.s_g.copy_(torch.tensor([1.0, 0.9, 1.1, 0.97, 1.02, 1.0]))
    q.wino.refresh_weight()  # derived INT8 weights follow the transform scales explicitly
    q.fp4.set_rotation(random_signs(32, 3))
    state = fp.state_dict()

    def fresh() -> nn.Module:
        m = TinyNet()
        m.load_state_dict(state)
        return m

    x = xs[0]
    return _base_from(q, fp, root, "tiny", fresh, lambda m: m(x), json.dumps(tiny_recipe(), indent=1))


def build_zoo_base(root: Path, name: str = "digits-dit", recipe: str = "w8a8-minmax") -> Base:
    """A zoo model's artifact (slower per case: for `make fuzz`, a few hundred cases)."""
    import trtq
    from trtq.recipes import RECIPES_DIR
    from trtq.zoo import load_model

    model = load_model(name)
    den = model.denoiser.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, model.sample_size, model.sample_size, generator=gen)
    t = torch.tensor([500, 20])
    labels = torch.tensor([3, 7])

    class Wrapped(nn.Module):  # one call signature for the fuzzer: x -> output
        def __init__(self, denoiser):
            super().__init__()
            self.d = denoiser

        def forward(self, x):
            return model.predict_noise(x, t, labels, denoiser=self.d)

    q = trtq.quantize(copy.deepcopy(den), recipe, lambda d: Wrapped(d)(x))
    return _base_from(q, den, root, name, lambda: copy.deepcopy(den), lambda m: Wrapped(m)(x),
                      (RECIPES_DIR / f"{recipe}.yaml").read_text())


def _base_from(q, fp, root: Path, name: str, factory, forward, recipe_text: str) -> Base:
    import trtq
    from safetensors.torch import load as load_bytes
    from safetensors import safe_open

    from trtq.artifact import MANIFEST, SCALES

    art = root / name
    trtq.save_artifact(q, art, model_name=name)
    scales_bytes = (art / SCALES).read_bytes()
    with safe_open(str(art / SCALES), "pt") as f:
        metadata = dict(f.metadata() or {})
    manifest_bytes = (art / MANIFEST).read_bytes()
    base = Base(fp=fp, manifest=json.loads(manifest_bytes), manifest_bytes=manifest_bytes,
                scales_bytes=scales_bytes, tensors=load_bytes(scales_bytes), metadata=metadata, y=None,
                recipe_text=recipe_text, model_factory=factory, forward=forward)
    with torch.no_grad():
        base.y = forward(_load_into(base, art)).detach()
        assert torch.equal(base.y, forward(q)), "the valid artifact does not reproduce its model"
    return base


def _load_into(base: Base, art: Path) -> nn.Module:
    import trtq

    return trtq.load_artifact(base.model_factory().eval(), art)


# -------------------------------------------------------------------------------------------- mutations
POOL: list[Any] = [None, True, False, 0, 1, -1, 2, 3, 4, 6, 16, 32, 64, 1.5, 0.5, -0.0, 99.9, 1e308, -1e308, 2**63,
                   10**30, "", "x", "false", "true", "1", "NaN", [], {}, [1, 2], {"a": 1}, ["int8"],
                   "int8", "int4", "fp8_e4m3", "fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "tensor", "channel", "group",
                   "minmax", "mse", "percentile", "winograd", "fake", "fp4", "Conv2d", "Linear", "*", "trtq-artifact",
                   "QuantLinear", "FP4Linear", "0" * 64, "a" * 10000]
FP4 = ("fp4_e2m1", "fp4_e3m0", "fp4_e1m2")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _nest(value, depth):
    """Deep nesting as a marker that `dumps` expands in the text (json.dumps itself would overflow)."""
    return f"__NEST_{depth}__"


def dumps(doc: Any, yaml_text: bool = False) -> bytes:
    import re

    if yaml_text:
        import yaml

        text = yaml.safe_dump(doc)
        pattern = r"'?__NEST_(\d+)__'?"
    else:
        text = json.dumps(doc)
        pattern = r'"__NEST_(\d+)__"'
    return re.sub(pattern, lambda m: "[" * int(m.group(1)) + "0" + "]" * int(m.group(1)), text).encode()


def mutate_tree(doc: Any, rng: random.Random) -> tuple[Any, str, bool]:
    """One structural/type mutation of a JSON-like tree. Returns (new doc, description, family_swap)."""
    doc = copy.deepcopy(doc)
    paths = _paths(doc)
    path = rng.choice(paths)
    op = rng.choice(["delete", "add", "replace", "replace", "replace", "wrap", "nest", "number", "string", "swap"])
    desc = f"{op} at {'.'.join(map(str, path)) or 'top'}"
    if not path:
        if op in ("replace", "delete"):
            return rng.choice(POOL), desc, False
        return _nest(doc, rng.choice([2, 40])), desc, False
    parent, key = _get(doc, path[:-1]), path[-1]
    value = parent[key]
    if op == "delete":
        del parent[key]
    elif op == "add" and isinstance(value, dict):
        value[rng.choice(["zzz", "scale", "format", "dynamic", "__proto__", ""])] = rng.choice(POOL)
    elif op == "replace" or op == "add":
        parent[key] = rng.choice(POOL)
    elif op == "wrap":
        parent[key] = rng.choice([[value], {"v": value}])
    elif op == "nest":
        parent[key] = _nest(value, rng.choice([33, 200, 5000]))
    elif op == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = rng.choice([value + 1, value - 1, -value, value * 2, value * (1 + 1e-3), float(value),
                                  math.nextafter(float(value), math.inf)])
    elif op == "string" and isinstance(value, str):
        parent[key] = rng.choice([value + "x", value.upper(), "", value[:-1], " " + value])
    elif op == "swap" and isinstance(parent, dict) and len(parent) > 1:
        other = rng.choice([k for k in parent if k != key])
        parent[key] = copy.deepcopy(parent[other])
    else:
        parent[key] = rng.choice(POOL)
    new = parent[key] if (isinstance(parent, dict) and key in parent) or \
        (isinstance(parent, list) and key < len(parent)) else None
    family_swap = op != "delete" and isinstance(value, str) and value in FP4 and isinstance(new, str) \
        and new in FP4 and new != value
    return doc, desc, family_swap


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    op = rng.choice(["flip", "flip", "flip", "truncate", "append", "zero", "byte"])
    if op == "flip" or not b:
        for _ in range(rng.choice([1, 1, 2, 8])):
            if b:
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"{op} bits"
    if op == "truncate":
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncate to {n}"
    if op == "append":
        return bytes(b) + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100]))), "append"
    if op == "zero":
        i = rng.randrange(len(b))
        n = rng.choice([1, 8, 64])
        b[i:i + n] = bytes(len(b[i:i + n]))
        return bytes(b), f"zero {n} at {i}"
    i = rng.randrange(len(b))
    b[i] = rng.randrange(256)
    return bytes(b), f"byte {i}"


SCALE_LIKE = ("scale", "zero_point", "s_b", "s_g", "weight_tensor_scale", "hadamard_signs")


def _scale_like(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in SCALE_LIKE and not key.endswith("weight_scale") or key.endswith("tensor_scale")


def mutate_poison(tensors: dict, rng: random.Random) -> tuple[dict, str]:
    tensors = dict(tensors)
    key = rng.choice([k for k in tensors if _scale_like(k)])
    t = tensors[key].clone()
    flat = t.view(-1)
    i = rng.randrange(flat.numel())
    last = key.rsplit(".", 1)[-1]
    if last == "hadamard_signs":
        flat[i] = rng.choice([0, 2, -2, 127])  # invalid; a valid flip is like an edited code (see above)
        return {**tensors, key: t}, f"poison {key}[{i}] sign"
    if last == "zero_point":
        flat[i] = rng.choice([float("nan"), float("inf"), -1.0, 256.0, flat[i].item() + 0.5, 1e9])
        return {**tensors, key: t}, f"poison {key}[{i}] zero point"
    weightish = "weight" in key
    factor_choices = [1e3, 1e-4, 1e6] if weightish else [1e16, 1e-16, 1e30, 1e-30]
    if last in ("s_b", "s_g"):
        factor_choices = [1e9, 1e-9]
    what = rng.choice(["nan", "inf", "-inf", "zero", "negative", "magnitude", "magnitude"])
    value = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf"), "zero": 0.0,
             "negative": -abs(flat[i].item())}.get(what)
    if value is None:
        value = flat[i].item() * rng.choice(factor_choices)
    flat[i] = value
    return {**tensors, key: t}, f"poison {key}[{i}] {what}"


def mutate_perturb(tensors: dict, rng: random.Random) -> tuple[dict, str]:
    tensors = dict(tensors)
    keys = [k for k in tensors if _scale_like(k) and k.rsplit(".", 1)[-1] not in ("zero_point", "hadamard_signs")]
    key = rng.choice(keys)
    t = tensors[key].clone()
    eps = rng.choice([1e-6, 1e-4, 1e-3]) * rng.choice([1, -1])
    t.view(-1)[rng.randrange(t.numel())] *= 1 + eps
    return {**tensors, key: t}, f"perturb {key} by {eps:g}"


def mutate_structure(tensors: dict, metadata: dict, rng: random.Random) -> tuple[dict, dict, str]:
    tensors, metadata = dict(tensors), dict(metadata)
    key = rng.choice(sorted(tensors))
    t = tensors[key]
    op = rng.choice(["drop", "add", "rename", "dtype", "shape", "zero_point", "metadata", "empty", "drop_all_scales"])
    if op == "drop":
        del tensors[key]
    elif op == "add":
        tensors[key + rng.choice(["x", ".extra", "_"])] = t.clone()
    elif op == "rename":
        tensors[key.replace(".", "_", 1)] = tensors.pop(key)
    elif op == "dtype":
        options = [torch.float64, torch.float16, torch.int32, torch.bfloat16] if t.is_floating_point() else \
            [torch.int16, torch.float32, torch.uint8 if t.dtype == torch.int8 else torch.int8]
        tensors[key] = t.to(rng.choice(options))
    elif op == "shape":
        shapes = [t.reshape(-1), t.reshape(1, *t.shape), t.reshape(*t.shape, 1),
                  torch.cat([t.reshape(-1), t.reshape(-1)[:1]]), t.reshape(-1)[:-1] if t.numel() > 1 else t[None]]
        if t.ndim >= 2:
            shapes.append(t.transpose(0, -1).contiguous())
        new = rng.choice(shapes)
        op += f" {list(t.shape)}->{list(new.shape)}"
        tensors[key] = new.contiguous()
    elif op == "zero_point":
        scale_keys = [k for k in tensors if k.endswith("_quantizer.scale")]
        k = rng.choice(scale_keys)
        zp = k[: -len("scale")] + "zero_point"
        if zp in tensors:
            del tensors[zp]
            op = f"drop {zp}"
        else:
            tensors[zp] = torch.zeros_like(tensors[k])
            op = f"add {zp}"
    elif op == "metadata":
        metadata = rng.choice([{}, {"format_version": "1"}, {"format_version": "3"}, {"format_version": "two"},
                               {**metadata, "x": "y"}])
    elif op == "empty":
        tensors = {}
    else:
        tensors = {k: v for k, v in tensors.items() if not k.endswith("scale")}
    return tensors, metadata, f"{op} {key}"


# ---------------------------------------------------------------------------------------------- one case
@dataclass
class Outcome:
    kind: str
    cls: str  # refused | identical | tolerated | FAIL
    desc: str
    detail: str = ""


def _write_artifact(art: Path, manifest_bytes: bytes, scales_bytes: bytes) -> None:
    from trtq.artifact import MANIFEST, SCALES

    art.mkdir(parents=True, exist_ok=True)
    (art / MANIFEST).write_bytes(manifest_bytes)
    (art / SCALES).write_bytes(scales_bytes)


def _sealed(base: Base, tensors: dict, metadata: dict) -> tuple[bytes, bytes]:
    from safetensors.torch import save

    scales = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata or None)
    m = copy.deepcopy(base.manifest)
    m["scales"] = {"sha256": hashlib.sha256(scales).hexdigest(), "bytes": len(scales)}
    return json.dumps(m).encode(), scales


def _fs_case(art: Path, base: Base, rng: random.Random) -> str:
    from trtq.artifact import MANIFEST, SCALES

    _write_artifact(art, base.manifest_bytes, base.scales_bytes)
    target = rng.choice([art / MANIFEST, art / SCALES, art])
    op = rng.choice(["dir", "fifo", "loop", "dangling", "empty", "missing", "symlink_ok"])
    if op == "symlink_ok" and target != art:
        real = art.parent / f"real-{target.name}"
        shutil.move(target, real)
        target.symlink_to(real)
        return f"{op} {target.name}"
    replace_with_oddity(target, op)
    return f"{op} {target.name}"


def replace_with_oddity(target: Path, op: str) -> None:
    """Put a filesystem oddity where `target` (a file or directory) was: "dir", "fifo", "loop" (a symlink to
    itself), "dangling" (a symlink to nothing), "empty" (a 0-byte file) or "missing"."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()
    if op == "dir":
        target.mkdir()
    elif op == "fifo":
        os.mkfifo(target)
    elif op == "loop":
        target.symlink_to(target)
    elif op == "dangling":
        target.symlink_to(target.parent / "nowhere")
    elif op == "empty":
        target.write_bytes(b"")


def run_case(base: Base, kind: str, seed: int, workdir: Path) -> Outcome:
    from trtq.artifact import MANIFEST, SCALES

    rng = random.Random(seed)
    art = workdir / f"case-{seed}"
    tolerance = TOLERANCE.get(kind)
    try:
        if kind == "recipe":
            return _recipe_case(base, rng, art)
        if kind == "bytes":
            if rng.random() < 0.5:
                data, desc = mutate_bytes(base.manifest_bytes, rng)
                _write_artifact(art, data, base.scales_bytes)
                desc = f"{MANIFEST}: {desc}"
            else:
                data, desc = mutate_bytes(base.scales_bytes, rng)
                _write_artifact(art, base.manifest_bytes, data)
                desc = f"{SCALES}: {desc}"
        elif kind == "fs":
            desc = _fs_case(art, base, rng)
        elif kind == "tree":
            doc, desc, family_swap = mutate_tree(base.manifest, rng)
            if family_swap:
                tolerance = FAMILY_SWAP_TOLERANCE
            _write_artifact(art, dumps(doc), base.scales_bytes)
        else:
            metadata = base.metadata
            if kind == "structure":
                tensors, metadata, desc = mutate_structure(base.tensors, base.metadata, rng)
            elif kind == "poison":
                tensors, desc = mutate_poison(base.tensors, rng)
            else:
                tensors, desc = mutate_perturb(base.tensors, rng)
            _write_artifact(art, *_sealed(base, tensors, metadata))
        return _judge(base, art, kind, desc, tolerance)
    except TrtqError as e:  # raised while writing a case cannot happen; kept so a case never escapes
        return Outcome(kind, "FAIL", "case setup", str(e))
    finally:
        if art.is_symlink() or art.is_file() or (art.exists() and not art.is_dir()):
            art.unlink()
        elif art.exists() or os.path.lexists(art):
            shutil.rmtree(art, ignore_errors=True)
        for p in workdir.glob("real-*"):
            p.unlink()


def _judge(base: Base, art: Path, kind: str, desc: str, tolerance: float | None) -> Outcome:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _load_into(base, art)
            with torch.no_grad():
                y = base.forward(model)
    except TrtqError as e:
        msg = str(e)
        if "\n" in msg or not msg:
            return Outcome(kind, "FAIL", desc, f"TrtqError not one line: {msg!r}")
        return Outcome(kind, "refused", desc, msg)
    except Exception as e:  # noqa: BLE001 - the fuzzer's whole point
        return Outcome(kind, "FAIL", desc, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    if y.shape != base.y.shape or not torch.isfinite(y).all():
        return Outcome(kind, "FAIL", desc, f"accepted, output shape {tuple(y.shape)} or non-finite")
    if torch.equal(y, base.y):
        return Outcome(kind, "identical", desc)
    rel = ((y - base.y).norm() / base.y.norm()).item()
    if tolerance is None or rel > tolerance:
        return Outcome(kind, "FAIL", desc, f"accepted, output relative error {rel:.3g} > tolerance {tolerance}")
    return Outcome(kind, "tolerated", desc, f"relative error {rel:.3g}")


def _recipe_case(base: Base, rng: random.Random, art: Path) -> Outcome:
    from trtq.quantize import prepare
    from trtq.recipes import Recipe

    art.mkdir(parents=True, exist_ok=True)
    suffix = rng.choice([".json", ".yaml"])
    doc = json.loads(json.dumps(tiny_recipe()))
    r = rng.random()
    if r < 0.6:
        doc, desc, _ = mutate_tree(doc, rng)
        text = dumps(doc, yaml_text=suffix == ".yaml" and rng.random() < 0.5)  # JSON is YAML too
    else:
        text, desc = mutate_bytes(json.dumps(doc, indent=1).encode(), rng)
    path = art / f"recipe{suffix}"
    path.write_bytes(text)
    desc = f"recipe{suffix}: {desc}"
    try:
        recipe = Recipe.from_file(path)
        if Recipe.from_dict(recipe.to_dict()) != recipe:
            return Outcome("recipe", "FAIL", desc, "accepted recipe does not round-trip")
        try:
            prepare(TinyNet(), recipe, warn=False)  # a mutated recipe may well leave layers float
        except TrtqError as e:
            return Outcome("recipe", "tolerated", desc, f"accepted; prepare refused: {e}")
        return Outcome("recipe", "identical" if recipe.to_dict() == Recipe.from_dict(tiny_recipe()).to_dict()
                       else "tolerated", desc)
    except TrtqError as e:
        return Outcome("recipe", "refused", desc, str(e))
    except Exception as e:  # noqa: BLE001
        return Outcome("recipe", "FAIL", desc, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")


# ---------------------------------------------------------------------------------------------- the runner
def run_fuzz(cases: int, seed: int = 0, base: Base | None = None, workdir: Path | None = None,
             kinds: tuple[str, ...] = KINDS) -> list[Outcome]:
    """`cases` seeded cases spread over `kinds` (case i uses seed `seed * 1_000_003 + i`)."""
    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs: no disk in the loop
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trtq-fuzz-", dir=shm)))
        if base is None:
            base = build_tiny_base(workdir / "base")
        results = []
        for i in range(cases):
            kind = kinds[i % len(kinds)]
            if kind == "recipe" and base.recipe_text != json.dumps(tiny_recipe(), indent=1):
                kind = "tree"  # recipe cases prepare the tiny model
            results.append(run_case(base, kind, seed * 1_000_003 + i, workdir))
        return results


def summarize(results: list[Outcome]) -> str:
    counts = collections.Counter((r.kind, r.cls) for r in results)
    classes = ("refused", "identical", "tolerated", "FAIL")
    kinds = sorted({r.kind for r in results}, key=lambda k: KINDS.index(k) if k in KINDS else 99)
    lines = [f"{'kind':<10} " + " ".join(f"{c:>9}" for c in classes) + f" {'total':>7}"]
    for k in kinds:
        lines.append(f"{k:<10} " + " ".join(f"{counts[(k, c)]:>9}" for c in classes)
                     + f" {sum(counts[(k, c)] for c in classes):>7}")
    lines.append(f"{'all':<10} " + " ".join(f"{sum(counts[(k, c)] for k in kinds):>9}" for c in classes)
                 + f" {len(results):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trtq.io.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=2000, help="cases on the tiny model (default 2000)")
    p.add_argument("--zoo-cases", type=int, default=0, help="cases on a digits-dit w8a8-minmax artifact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=10, help="failures to print")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="trtq-fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                     else None) as d:
        base = build_tiny_base(Path(d) / "base")
        for chunk in range(0, args.cases, 1000):  # seeds as in one run: case i has seed seed*1_000_003 + i
            n = min(1000, args.cases - chunk)
            part = [run_case(base, KINDS[i % len(KINDS)], args.seed * 1_000_003 + i, Path(d))
                    for i in range(chunk, chunk + n)]
            results += part
            print(f"{len(results)} cases, {sum(r.cls == 'FAIL' for r in results)} failures, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if args.zoo_cases:
        with tempfile.TemporaryDirectory(prefix="trtq-fuzz-zoo-") as d:
            base = build_zoo_base(Path(d) / "base")
            results += run_fuzz(args.zoo_cases, args.seed + 1, base=base, workdir=Path(d),
                                kinds=tuple(k for k in KINDS if k != "recipe"))
    print(summarize(results))
    fails = [r for r in results if r.cls == "FAIL"]
    print(f"{len(results)} cases in {time.perf_counter() - start:.1f} s; {len(fails)} failures")
    for r in fails[: args.show]:
        print(f"FAIL [{r.kind}] {r.desc}: {r.detail}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
