"""Markers for what this machine may lack: `gpu` (a CUDA device) and `tensorrt` (its Python bindings).
Marked tests are skipped with the reason, never silently passed."""

import importlib.util
import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. It is chosen when a kernel is decorated, so
# it must be set before any trtq kernel module is imported (collection imports the test modules after this).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _has_tensorrt() -> bool:
    """The real bindings, not `tensorrt-stubs` alone (installed for mypy: it leaves `tensorrt` an empty
    namespace package, which imports fine and has no Builder)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import tensorrt

    return hasattr(tensorrt, "Builder")


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    no_trt = pytest.mark.skip(reason="needs TensorRT: the `tensorrt` Python bindings are not installed here")
    has_gpu = torch.cuda.is_available()
    has_trt = _has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(no_trt)


@pytest.fixture
def one_thread():
    """Small models on a shared 2-core machine: one thread avoids the thread pool's spin-waits (50x slower
    there). Modules of many tiny-model tests use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
