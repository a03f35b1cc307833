"""GPU timing for the benchmarks: one home for how a kernel's time is measured.

Two numbers per measurement, because they answer different questions:
- `graph_ms`: the GPU time of one call, from a CUDA graph that holds several calls (one per input set, so
  L2 does not serve the inputs of the next call) and is replayed; CUDA events around each replay, the median
  over replays divided by the calls it holds. Host work (Python, Triton's launcher, the autotuner's key)
  is outside: this is what a call costs in a deployment that launches through CUDA graphs or TensorRT, and
  the number kernels are compared by.
- `eager_ms`: one call launched from Python between two CUDA events, the median of several. The host's launch
  overhead is inside whenever it exceeds the GPU's work (the first H100 session's small shapes measured
  ~0.2 ms per op that way); it is what an eager PyTorch user sees.
Every callable is run (warm-up) before capture: compilation and autotuning must not happen inside a graph.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

import torch


def eager_ms(fn: Callable, inputs: Sequence, repeats: int, warmup: int = 10) -> float:
    """Median of `repeats` calls launched from Python, each on the next input set in turn."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fn: Callable, inputs: Sequence, repeats: int, warmup: int = 3) -> float:
    """GPU time of one call: the median over `repeats` replays of a CUDA graph holding one call per input set,
    divided by the number of sets."""
    for i in range(max(warmup, len(inputs))):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # a side-stream warm-up, as torch.cuda.graphs asks before capture
        for x in inputs:
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for x in inputs:
            fn(x)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(inputs))
    del graph
    return statistics.median(times)


def both(fn: Callable, inputs: Sequence, repeats: int) -> dict:
    """{"ms": graph time (the kernel comparison), "eager_ms": Python-launched time}."""
    return {"ms": graph_ms(fn, inputs, repeats), "eager_ms": eager_ms(fn, inputs, repeats)}
