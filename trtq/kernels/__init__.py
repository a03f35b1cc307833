"""Triton kernels behind the trtq custom ops; each has the op's PyTorch reference as its spec."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def direct_launches():
    """Launch the kernels straight away instead of through `wrap_triton`'s dispatch.

    The launch functions use `torch.library.wrap_triton` so that torch.compile sees the kernels. Called in
    eager mode outside the ops (benchmarks, stage-by-stage checks), that dispatch costs about 1 ms per launch
    (torch's own note on `set_wrap_triton_enabled`), which would swamp microsecond kernels; the ops already
    switch it off for their eager calls. Never enter this around torch.compile: tracing needs the wrapper."""
    try:
        from torch._library.triton import set_wrap_triton_enabled
    except ImportError:  # an older torch without the switch: the dispatch cost stays
        yield
        return
    with set_wrap_triton_enabled(False):
        yield


def tuned(configs: list) -> list:
    """The autotuner's candidate configs, or only the first with TRTQ_AUTOTUNE=0: every candidate is compiled
    and timed for each new shape class, which correctness runs (and impatient first runs) can skip."""
    return configs[:1] if os.environ.get("TRTQ_AUTOTUNE", "1") == "0" else configs
