"""Atomic directory writes (trtq.io.atomic): a kill -9 at any step leaves the old or the new directory, the next
write cleans what the dead writer left, and concurrent writers of one path take turns."""

import multiprocessing as mp
import os
import time

import pytest

from trtq import TrtqError
from trtq.io import atomic
from trtq.io.atomic import STEPS, atomic_dir

FORK = mp.get_context("fork")


def ours(p):
    return (p / "m").is_file()


def write(path, payload: str, pause: float = 0.0):
    with atomic_dir(path, ours, "test dir") as tmp:
        (tmp / "m").write_text(payload)
        (tmp / "data").write_bytes(payload.encode() * 1000)
        time.sleep(pause)


def _killed_writer(path, payload, kill_at, exchange):
    atomic.use_exchange = exchange

    def hook(step):
        if step == kill_at:
            os._exit(9)  # what kill -9 does: no finally, no atexit

    atomic.step_hook = hook
    write(path, payload)
    os._exit(0)


def state(path):
    return (path / "m").read_text() if (path / "m").is_file() else None


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
@pytest.mark.parametrize("kill_at", STEPS)
def test_kill_at_every_step_leaves_old_or_new(tmp_path, kill_at, exchange):
    path = tmp_path / "art"
    write(path, "old")
    child = FORK.Process(target=_killed_writer, args=(path, "new", kill_at, exchange))
    child.start()
    child.join(30)
    if kill_at == "parked" and exchange:
        assert child.exitcode == 0  # the exchange path has no such step
    else:
        assert child.exitcode == 9
    got = state(path)
    if kill_at == "parked" and not exchange:
        # The fallback's one window: the old directory is parked under .art.old-PID-*, the path is empty...
        assert got is None and any(n.startswith(".art.old-") for n in siblings(path))
        atomic._clean(path, locked=True)  # ...and the next writer puts it back before anything else
        assert state(path) == "old"
    else:
        completed = child.exitcode == 0 or STEPS.index(kill_at) >= STEPS.index("swapped")
        expected = "new" if completed else "old"
        assert got == expected, (kill_at, got)
    assert ((path / "data").read_bytes() == (state(path) or "").encode() * 1000)  # never a torn directory
    write(path, "next")  # the next write cleans everything the dead writer left
    assert state(path) == "next"
    assert siblings(path) == [".art.lock"]


def test_failure_inside_the_write_changes_nothing(tmp_path):
    path = tmp_path / "art"
    write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(path, ours) as tmp:
            (tmp / "m").write_text("half")
            raise RuntimeError("disk full")
    assert state(path) == "old" and siblings(path) == [".art.lock"]


def test_refuses_to_replace_what_is_not_ours(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("precious")
    (tmp_path / "file").write_text("precious")
    for target in ("foreign", "file"):
        with pytest.raises(TrtqError, match="refusing to overwrite"):
            write(tmp_path / target, "new")
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "precious"
    assert (tmp_path / "file").read_text() == "precious"


def _slow_writer(path, payload, log):
    write(path, payload, pause=0.3)
    with open(log, "a") as f:
        f.write(f"{payload} {time.monotonic()}\n")
    os._exit(0)


def test_concurrent_writers_serialize(tmp_path):
    """Two writers of one path, each holding its temp dir for 0.3 s: with the lock they take turns (>= 0.6 s
    in all, no interleaving, the final directory is one writer's whole content)."""
    path, log = tmp_path / "art", tmp_path / "log"
    write(path, "old")
    start = time.monotonic()
    procs = [FORK.Process(target=_slow_writer, args=(path, name, log)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ends = sorted(float(line.split()[1]) for line in log.read_text().splitlines())
    assert ends[1] - start >= 0.6 and ends[1] - ends[0] >= 0.3  # the second waited for the first
    final = state(path)
    assert final in ("a", "b") and (path / "data").read_bytes() == final.encode() * 1000
    assert siblings(path) == [".art.lock", "log"]
