"""Triton kernels behind the trtq custom ops; each has the op's PyTorch reference as its spec."""
