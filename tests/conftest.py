"""Markers for what this machine may lack: `gpu` (a CUDA device) and `tensorrt` (its Python bindings).
Marked tests are skipped with the reason, never silently passed."""

import importlib.util

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    no_trt = pytest.mark.skip(reason="needs TensorRT: the `tensorrt` Python bindings are not installed here")
    has_gpu = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(no_trt)
