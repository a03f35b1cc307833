"""Kernel and model benchmarks (the kernel ones need a CUDA GPU; `memory` runs anywhere); each is a module runnable with `python -m trtq.bench.<name>`,
and results land in docs/benchmarks/."""
