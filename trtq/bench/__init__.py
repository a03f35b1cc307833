"""Benchmarks that need a CUDA GPU; each is a module runnable with `python -m trtq.bench.<name>`."""
