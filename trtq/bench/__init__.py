"""Benchmarks, each a module runnable as `python -m trtq.bench.<name>`: `winograd` and `fp4` need a CUDA GPU
(results land in docs/benchmarks/); `memory` measures peak CPU memory of quantizing real-size models."""
