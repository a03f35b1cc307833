"""Reading a safetensors file against the layout its reader expects, before any tensor is used.

`TensorSpec` says what one tensor must be (dtype, shape or a shape rule, required or optional, a value
check). `read_safetensors(path, what, specs)` reads the file with `trtq.io.files.read_bytes` (regular file,
bounded size), parses and type-checks its JSON header itself (the header is attacker-controlled text like
any other), refuses unknown and missing tensors and wrong dtypes/shapes from the header alone, only then
lets safetensors build the tensors, and finally runs each value check. Every failure is one `TrtqError`
line naming the file and the tensor.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trtq.errors import TrtqError
from trtq.io.files import GiB, MiB, parse_json, read_bytes
from trtq.io.validate import Int, List, Map, Obj, Str, check

MAX_HEADER_BYTES = 64 * MiB
MAX_TENSOR_FILE_BYTES = 64 * GiB

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}

_ENTRY = Obj(required={"dtype": Str(tuple(DTYPES)), "shape": List(Int(0, 1 << 40), max_len=8),
                       "data_offsets": List(Int(0), max_len=2, nonempty=True)}, desc="a tensor entry")


@dataclass(frozen=True)
class TensorSpec:
    dtype: torch.dtype
    shape: tuple[int, ...] | None = None  # exact shape, or None: `shape_rule` decides
    shape_rule: Callable[[tuple[int, ...]], str | None] | None = None  # returns what was expected, or None if ok
    required: bool = True
    values: Callable[[torch.Tensor], str | None] | None = None  # returns what was expected, or None if ok

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        if self.shape is not None:
            return None if shape == self.shape else f"shape {list(self.shape)}"
        return None if self.shape_rule is None else self.shape_rule(shape)


def _dtype_name(dtype: torch.dtype) -> str:
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype))


def read_safetensors(path: str | Path, what: str, specs: dict[str, TensorSpec],
                     metadata: dict[str, str] | None = None, sha256: str | None = None,
                     max_bytes: int = MAX_TENSOR_FILE_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of `path`, each checked against `specs` (keys must match: none unknown, none missing
    unless optional). `metadata`: entries its `__metadata__` must hold. `sha256`: the file's expected hash."""
    from safetensors.torch import load as load_bytes

    where = f"{what} {path}"
    data = read_bytes(path, what, max_bytes)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise TrtqError(f"{where} does not match the sha256 its manifest records: the file is corrupt or was "
                        "edited after it was written")
    if len(data) < 8:
        raise TrtqError(f"{where} is truncated ({len(data)} bytes; a safetensors file starts with an 8-byte "
                        "header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise TrtqError(f"{where} declares a {n}-byte header in a {len(data)}-byte file (truncated or corrupt)")
    try:
        header_text = data[8:8 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise TrtqError(f"{where}: its header is not UTF-8 (corrupt)") from None
    header = parse_json(header_text, f"{where} header")
    if not isinstance(header, dict):
        raise TrtqError(f"{where}: its header is not a mapping (corrupt)")
    meta = header.pop("__metadata__", {})
    check(meta, Map(Str()), f"{where} header", "__metadata__")
    for key, value in (metadata or {}).items():
        if meta.get(key) != value:
            raise TrtqError(f"{where}: metadata {key} is {meta.get(key)!r}, expected {value!r}")
    check(header, Map(_ENTRY), f"{where} header")

    unknown = sorted(set(header) - set(specs))
    if unknown:
        raise TrtqError(f"{where} has tensors this model has no place for: {unknown[:3]}"
                        f"{f' and {len(unknown) - 3} more' if len(unknown) > 3 else ''}")
    missing = sorted(k for k, s in specs.items() if s.required and k not in header)
    if missing:
        raise TrtqError(f"{where} lacks {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
                        " (nothing is recomputed or defaulted at load time)")
    body = len(data) - 8 - n
    for key, entry in header.items():
        spec = specs[key]
        dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
        if dtype != spec.dtype:
            raise TrtqError(f"{where}: {key} is {entry['dtype']}, expected {_dtype_name(spec.dtype)}")
        problem = spec.shape_problem(shape)
        if problem is not None:
            raise TrtqError(f"{where}: {key} has shape {list(shape)}, expected {problem}")
        offsets = entry["data_offsets"]
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if len(offsets) != 2 or offsets[1] - offsets[0] != nbytes or offsets[1] > body:
            raise TrtqError(f"{where}: {key} has data offsets {offsets} that do not hold its {nbytes} bytes "
                            "(truncated or corrupt)")
    try:
        tensors = load_bytes(data)
    except Exception as e:  # safetensors' own error types; the header above was already checked
        raise TrtqError(f"{where} is corrupt: {' '.join(str(e).split())}") from None
    for key, t in tensors.items():
        check_values = specs[key].values
        problem = None if check_values is None else check_values(t)
        if problem is not None:
            raise TrtqError(f"{where}: {key} holds {problem}")
    return tensors
