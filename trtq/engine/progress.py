"""Build progress as lines on a stream: what TensorRT's `IProgressMonitor` reports, printed two levels deep.

TensorRT reports nested phases ("Building engine" > "Tactic selection" > per-layer phases...) with a step
count, from several threads. `BuildProgress` keeps the nesting and timing, prints a line when a phase of the
top `depth` levels starts (with its step count) and one when it finishes (with its duration), and is
thread-safe. It is plain Python: `trtq.engine.trt_build.ProgressMonitor` forwards TensorRT's calls to it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

PREFIX = "[trtq build]"


class BuildProgress:
    def __init__(self, out: TextIO | None = None, depth: int = 2) -> None:
        self._out = out if out is not None else sys.stderr
        self._depth = depth
        self._lock = threading.Lock()
        self._level: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def start(self, phase: str, parent: str | None, steps: int) -> None:
        with self._lock:
            level = 0 if not parent else self._level.get(parent, 0) + 1
            self._level[phase] = level
            self._started[phase] = time.perf_counter()
            if level < self._depth:
                self._print(level, f"{phase} ({steps} step{'s' if steps != 1 else ''})")

    def step(self, phase: str, step: int) -> bool:
        """True: go on (returning False would ask TensorRT to cancel the build)."""
        return True

    def finish(self, phase: str) -> None:
        with self._lock:
            level = self._level.pop(phase, 0)
            seconds = time.perf_counter() - self._started.pop(phase, time.perf_counter())
            if level < self._depth:
                self._print(level, f"{phase} done in {seconds:.1f} s")

    def _print(self, level: int, text: str) -> None:
        print(f"{PREFIX} {'  ' * level}{text}", file=self._out, flush=True)
