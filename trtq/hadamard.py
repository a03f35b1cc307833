"""Randomized Hadamard rotations for outlier spreading (HQ-DiT's "universal identity transform").

A rotation R = D·H is a random ±1 diagonal D followed by a normalized Walsh-Hadamard matrix H. R is
orthogonal, so for a linear layer `x Wᵀ = (x R)(W R)ᵀ`: W R is folded into the weights offline and x R is
applied online with a fast Walsh-Hadamard transform (O(K log K) adds, no K×K matrix).

Dimensions that are not a power of two use a block-diagonal H whose blocks have the largest power-of-two
size dividing K (K = 384 -> blocks of 128); an odd K degrades to the sign flip alone, still orthogonal.
"""

from __future__ import annotations

import math

import torch

from trtq.errors import TrtqError


def hadamard_block_size(dim: int) -> int:
    """The largest power of two dividing `dim`: the block size of the block-diagonal transform."""
    if dim < 1:
        raise TrtqError(f"a Hadamard rotation needs a positive dimension, got {dim}")
    return dim & -dim


def fwht(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Normalized fast Walsh-Hadamard transform of the last axis, block-diagonal with blocks of `block`.

    Each block is multiplied by the Sylvester matrix H_b / sqrt(b) (symmetric and orthogonal, H_b² = b·I).
    The butterflies run in FP32 (float64 stays float64) and the result is cast back to x's dtype: the
    unnormalized partial sums reach the block's sum of |x| (three entries of 30000 give 90000, past FP16's
    65504, although the normalized result is at most 1406 at b = 4096); FP32 has the range for them.
    """
    k = x.shape[-1]
    block = hadamard_block_size(k) if block is None else block
    if block & (block - 1) or k % block:
        raise TrtqError(f"Hadamard block {block} must be a power of two dividing the dimension {k}")
    shape = x.shape
    y = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(-1, k // block, block)
    h = 1
    while h < block:
        # Butterfly on index bit log2(h): (a, c) -> (a + c, a - c).
        y = y.reshape(y.shape[0], -1, 2, h)
        a, c = y[:, :, 0], y[:, :, 1]
        y = torch.stack((a + c, a - c), dim=2)
        h *= 2
    return (y.reshape(shape) / math.sqrt(block)).to(x.dtype)


def random_signs(dim: int, seed: int) -> torch.Tensor:
    """A seeded random ±1 vector (int8: one byte per input channel is what an artifact stores)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (dim,), generator=gen, dtype=torch.int8) * 2 - 1).to(torch.int8)


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """x R with R = diag(signs)·H along the last axis. Applied to weight rows it gives W R (the offline fold)."""
    return fwht(x * signs.to(device=x.device, dtype=x.dtype))


def rotation_matrix(dim: int, signs: torch.Tensor) -> torch.Tensor:
    """The explicit K×K matrix R (for tests and small checks; the layers never build it)."""
    return rotate(torch.eye(dim), signs)
