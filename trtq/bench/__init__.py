"""Kernel and model benchmarks (need a CUDA GPU); each is a module runnable with `python -m trtq.bench.<name>`,
and results land in docs/benchmarks/."""
