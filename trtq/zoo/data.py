"""scikit-learn's digits as small 1-channel images in [-1, 1].

The data set ships inside scikit-learn (no download), so the zoo trains and evaluates offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def load_digits_images(size: int = 32) -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``[N, 1, size, size]`` float32 in [-1, 1] and int64 labels ``[N]``."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    digits = load_digits()
    # Pixel values are 0..16; map to [-1, 1], the range the diffusion models work in.
    x = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
    if size != 8:
        # Bilinear upsampling gives smooth strokes; 32x32 is what the denoisers and classifier expect.
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(digits.target).to(torch.int64)
    return x.contiguous(), y


def split_digits(
    images: Tensor, labels: Tensor, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Deterministic train/test split: a permutation from a seeded generator, never the global RNG."""
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
