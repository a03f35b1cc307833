"""Torch custom ops: the kernel contracts. Each op has a PyTorch reference implementation here; the GPU
kernels (Triton) and the TensorRT plugins implement exactly the same inputs and outputs."""
