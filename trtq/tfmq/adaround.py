"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up.

A weight w with scale s is represented as s * (floor(w / s) + h(V)) where h is the rectified sigmoid
h(V) = clamp(sigmoid(V) * (ζ - γ) + γ, 0, 1) with ζ = 1.1, γ = -0.1 (it reaches 0 and 1 exactly, so hard
rounding is a fixed point). The regularizer λ Σ (1 - |2h(V) - 1|^β) pushes every h to 0 or 1; β is annealed
from 20 to 2 after a warm-up (20% of the iterations) during which only the reconstruction loss counts.
At the end h is replaced by the hard decision V >= 0.
"""

from __future__ import annotations

import math

import torch

ZETA, GAMMA = 1.1, -0.1
LAMBDA = 0.01


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def init_logits(w_over_s: torch.Tensor) -> torch.Tensor:
    """V such that h(V) equals the fractional part of w / s (soft rounding starts at the float weight)."""
    rest = (w_over_s - torch.floor(w_over_s)).clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def hard_rounding(v: torch.Tensor) -> torch.Tensor:
    """The final decision: 1 (round up) where h(V) >= 0.5, i.e. V >= 0."""
    return (v >= 0).to(torch.float32)


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()


class BetaSchedule:
    """β for iteration i: None during warm-up (no regularizer), then linear from `start` down to `end`."""

    def __init__(self, iters: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0):
        self.iters, self.start, self.end = iters, start, end
        self.warmup_iters = int(math.ceil(warmup * iters))

    def __call__(self, i: int) -> float | None:
        if i < self.warmup_iters:
            return None
        span = max(self.iters - self.warmup_iters, 1)
        frac = (i - self.warmup_iters) / span
        return self.end + (self.start - self.end) * max(0.0, 1.0 - frac)
