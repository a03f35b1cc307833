"""Atomic, locked, self-cleaning writes of directories (artifacts, engine caches) and files (reports).

A directory write (`atomic_dir`) goes:
    lock     fcntl.flock on the sibling `.NAME.lock`, so concurrent writers of one path take turns
    clean    leftovers of dead writers (`.NAME.tmp-PID-*`, `.NAME.old-PID-*`) are removed; a lost artifact
             (only in the fallback below) is put back first
    fill     the caller writes into a fresh `.NAME.tmp-PID-RAND/` (files fsync'ed)
    swap     one rename that never leaves NAME empty: `renameat2(RENAME_EXCHANGE)` swaps the new and the old
             directory in one step (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs...); when NAME does not exist
             yet a plain rename() is atomic already
    drop     the old directory (now under the temporary name) is removed
A kill at any step leaves NAME holding the old or the new directory, and the next write cleans the rest.

Fallback where RENAME_EXCHANGE is unavailable (another OS, or a filesystem that refuses it with EINVAL):
two renames, NAME -> `.NAME.old-PID-RAND`, then tmp -> NAME. Between them NAME is briefly absent; a kill
right there leaves the old directory under its `.old-` name, which the next writer (under the lock) puts
back before doing anything else, so nothing is ever lost, only briefly hidden.
Without flock (some network filesystems refuse it) writers are not serialized, and only leftovers whose PID
is not alive are cleaned.

`STEPS` names the steps; `_step` calls `step_hook` at each one (tests kill the process there).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from trtq.errors import TrtqError

STEPS = ("locked", "cleaned", "created", "filled", "synced", "parked", "swapped", "dropped")
# "parked" happens only in the fallback, between its two renames.
step_hook: Callable[[str], None] | None = None  # tests only: called at each step of STEPS
use_exchange = True  # tests set False to exercise the fallback on Linux

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _step(name: str) -> None:
    if step_hook is not None:
        step_hook(name)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap a and b atomically. False where the OS or filesystem cannot (then the caller falls back)."""
    if not use_exchange:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _leftovers(path: Path) -> Iterator[tuple[Path, str, int]]:
    """(leftover, "tmp"|"old", writer pid) for every temporary sibling of path."""
    prefix = f".{path.name}."
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            kind, _, rest = entry.name[len(prefix):].partition("-")
            pid = rest.split("-", 1)[0]
            if kind in ("tmp", "old") and pid.isdigit():
                yield entry, kind, int(pid)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _clean(path: Path, locked: bool) -> None:
    """Remove leftovers of writers that died. Under the lock nobody else is writing, so every leftover of
    another process is stale; without it, only those whose PID is gone. A stranded old directory is put back
    first if the path itself is missing (a kill between the fallback's two renames)."""
    me = os.getpid()
    stale = [(p, kind) for p, kind, pid in _leftovers(path) if pid != me and (locked or not _pid_alive(pid))]
    if not os.path.lexists(path):
        olds = sorted((p for p, kind in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], path)
            stale = [(p, k) for p, k in stale if p != olds[-1]]
    for p, _ in stale:
        _remove(p)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    lock_path = path.parent / f".{path.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            locked = False  # documented fallback: no serialization, dead-PID cleaning only
        yield locked
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path, replaceable: Callable[[Path], bool], what: str = "directory") -> Iterator[Path]:
    """Write directory `path` atomically: yields an empty temporary directory to fill; on normal exit it
    replaces `path` in one step. An existing `path` is replaced only if `replaceable(path)` (e.g. it is an
    artifact), else refused. On an exception nothing changes at `path` and the temporary directory goes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrtqError(f"cannot create the parent directory of {what} {path}: {e.strerror}") from None
    with _lock(path) as locked:
        _step("locked")
        _clean(path, locked)
        _step("cleaned")
        if os.path.lexists(path) and not replaceable(path):
            raise TrtqError(f"{path} exists and is not a {what}; refusing to overwrite it")
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        _step("created")
        try:
            yield tmp
            _step("filled")
            _fsync_tree(tmp)
            _step("synced")
            if not os.path.lexists(path):
                os.rename(tmp, path)
            elif _renameat2_exchange(tmp, path):
                pass  # tmp now holds the old directory
            else:
                old = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(path, old)
                _step("parked")
                os.rename(tmp, path)
                tmp = old
            _fsync_dir(path.parent)
            _step("swapped")
        finally:
            _remove(tmp)  # the new dir after a failure, the old one after a swap
        _step("dropped")


def write_file_atomic(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write a file atomically (temp file in the same directory, fsync, rename over the old one)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError as e:
        raise TrtqError(f"cannot write {what} {path}: {e.strerror or e}") from None
    return path
