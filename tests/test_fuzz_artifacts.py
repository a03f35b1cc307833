"""The artifact fuzzer in CI (trtq.io.fuzz): seeded mutations of manifests, recipes and safetensors files, and
filesystem oddities, 2,000 cases on a tiny model that has every artifact feature (4 x 500, so no single test
runs long). Any exception other than TrtqError, and any accepted artifact whose output is non-finite or off by
more than its mutation kind allows, fails. `make fuzz` runs 20,000 cases plus a zoo model's artifact."""

import collections
import os
import tempfile
from pathlib import Path

import pytest

from trtq.io.fuzz import KINDS, build_tiny_base, run_fuzz, summarize

CASES_PER_TEST = 500


@pytest.fixture(scope="module")
def tiny():
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="trtq-fuzz-test-", dir=shm) as d:
        yield build_tiny_base(Path(d) / "base"), Path(d)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_tiny_model(tiny, seed):
    base, workdir = tiny
    results = run_fuzz(CASES_PER_TEST, seed=seed, base=base, workdir=workdir)
    print(summarize(results))
    fails = [f"[{r.kind}] {r.desc}: {r.detail}" for r in results if r.cls == "FAIL"]
    assert not fails, "\n".join(fails[:20])
    by_kind = collections.Counter((r.kind, r.cls) for r in results)
    for kind in KINDS:  # every kind really reaches the checks: each is refused at least sometimes...
        assert by_kind[(kind, "refused")] > 0 or kind == "perturb", kind
    assert by_kind[("perturb", "tolerated")] > 0  # ...small edits are accepted and their effect measured...
    assert by_kind[("fs", "identical")] > 0  # ...and harmless changes (a symlink to the real file) pass as they are
