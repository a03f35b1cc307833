"""Safe reading of files a user hands us: only regular files, bounded in size and in nesting.

Every reader opens the path once with O_NONBLOCK and checks what it got with fstat, so a FIFO never hangs
the process (opening one for reading without a writer blocks; non-blocking returns at once), a device or a
directory is refused before a byte is read, and a symlink loop is an error (ELOOP) instead of a crash.
Sizes are bounded before reading (a manifest is kilobytes; a 40 GB "manifest" is a mistake, not a file to
load into memory) and parsed JSON/YAML is bounded in nesting depth (deep nesting would otherwise raise
RecursionError in the parser or in whoever walks the result). Every failure is one `TrtqError` line naming
the file and what was expected.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MAX_TEXT_BYTES = 16 * MiB  # manifests, recipes, model metadata
MAX_DEPTH = 32  # no document of ours nests deeper than ~6

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symlink loop"
    return e.strerror or str(e)


def read_bytes(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of regular file `path` (a `what`, e.g. "artifact manifest"), at most `max_bytes` of them."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise TrtqError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise TrtqError(f"cannot open {what} {path}: {_os_reason(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise TrtqError(f"{what} {path} is {kind}, expected a regular file")
        if st.st_size > max_bytes:
            raise TrtqError(f"{what} {path} is {st.st_size} bytes, expected at most {max_bytes}")
        chunks, total = [], 0
        while True:  # read to EOF, not to st_size: the file may be growing under us
            chunk = os.read(fd, min(1 << 24, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise TrtqError(f"{what} {path} grew past {max_bytes} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise TrtqError(f"cannot read {what} {path}: {_os_reason(e)}") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TrtqError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def check_depth(data: Any, where: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse containers nested deeper than max_depth, and self-referencing ones (YAML anchors can build
    them). Iterative, so the check itself cannot overflow the stack."""
    stack: list[tuple[Any, int, tuple[int, ...]]] = [(data, 1, ())]
    while stack:
        node, depth, parents = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise TrtqError(f"{where} nests deeper than {max_depth} levels")
        if id(node) in parents:
            raise TrtqError(f"{where} contains a structure that refers to itself")
        children = node.values() if isinstance(node, dict) else node
        inner = parents + (id(node),)
        stack.extend((c, depth + 1, inner) for c in children if isinstance(c, (dict, list)))


def parse_json(text: str | bytes, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads with NaN/Infinity refused (not JSON), deep nesting refused, errors as one TrtqError line."""

    def no_constants(name: str):
        raise ValueError(f"{name} is not a JSON number")

    if _bracket_depth(text) > max_depth:  # before the parser, whose recursion would overflow
        raise TrtqError(f"{where} nests deeper than {max_depth} levels")
    try:
        data = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise TrtqError(f"{where} nests too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, our NaN refusal
        raise TrtqError(f"{where} is not valid JSON: {e}") from None
    check_depth(data, where, max_depth)
    return data


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _bracket_depth(text: str | bytes, strings: bool = True) -> int:
    """The deepest bracket nesting of a JSON (or YAML flow) text; brackets inside "strings" do not count."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if strings:
        text = _JSON_STRING.sub('""', text)
    depth = top = 0
    for ch in _BRACKETS.findall(text):
        depth += 1 if ch in "[{" else -1
        top = max(top, depth)
    return top


def read_json(path: str | Path, what: str, schema=None, max_bytes: int = MAX_TEXT_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """Read, parse and (with a `trtq.io.validate` schema) type-check a JSON file: one call for every JSON
    document trtq reads (artifact manifests, model metadata, later ONNX/engine manifests)."""
    where = f"{what} {path}"
    data = parse_json(read_text(path, what, max_bytes), where, max_depth)
    if schema is not None:
        from trtq.io.validate import check

        check(data, schema, where)
    return data


def parse_yaml(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    import yaml

    if _bracket_depth(text, strings=False) > max_depth or _indent_depth(text) > max_depth:
        raise TrtqError(f"{where} nests deeper than {max_depth} levels")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise TrtqError(f"{where} nests too deeply") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        raise TrtqError(f"{where} is not valid YAML: {problem}{at}") from None
    except yaml.YAMLError as e:
        raise TrtqError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    check_depth(data, where, max_depth)
    return data


def _indent_depth(text: str) -> int:
    """Distinct indentation levels of block-style YAML, a bound on its block nesting."""
    levels = {len(line) - len(line.lstrip(" -")) for line in text.splitlines() if line.strip()}
    return len(levels)
