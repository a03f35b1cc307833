"""Kernel and model benchmarks (need a CUDA GPU); results land in docs/benchmarks/."""
