"""Observers turn calibration data into a range [amin, amax] per scale entry.

All observers see tensors already laid out as rows ([K, M]: one row per scale entry, see
`trtq.quantizer.to_rows`) and may be fed many batches. Min-max keeps running extremes; percentile and MSE
keep a bounded, seeded random sample of each row so that memory stays flat however long calibration runs.
"""

from __future__ import annotations

import torch

from trtq.quantizer import fake_quantize, qparams_from_range
from trtq.scheme import QuantScheme

SAMPLE_CAP = 1 << 20  # values kept per observer, across all rows
MSE_CLIP_RATIOS = torch.linspace(0.3, 1.0, 36)


class MinMaxObserver:
    def __init__(self, scheme: QuantScheme):
        self.scheme = scheme
        self.amin: torch.Tensor | None = None
        self.amax: torch.Tensor | None = None

    @property
    def seen(self) -> bool:
        return self.amin is not None

    def observe(self, rows: torch.Tensor) -> None:
        lo, hi = rows.detach().float().amin(1), rows.detach().float().amax(1)
        if self.amin is None:
            self.amin, self.amax = lo, hi
        else:
            self.amin, self.amax = torch.minimum(self.amin, lo), torch.maximum(self.amax, hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.amin, self.amax


class _SampleObserver:
    """Keeps a uniform random sample of each row (the same columns for every row), capped in size."""

    def __init__(self, scheme: QuantScheme, seed: int = 0):
        self.scheme = scheme
        self.samples: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def seen(self) -> bool:
        return self.samples is not None

    def observe(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float()
        cap = max(SAMPLE_CAP // rows.shape[0], 64)
        if rows.shape[1] > cap:  # draw with replacement: a randperm of every batch costs more than it is worth
            rows = rows[:, torch.randint(rows.shape[1], (cap,), generator=self.gen)]
        self.samples = rows if self.samples is None else torch.cat([self.samples, rows], 1)
        if self.samples.shape[1] > cap:
            keep = torch.randperm(self.samples.shape[1], generator=self.gen)[:cap]
            self.samples = self.samples[:, keep]


class PercentileObserver(_SampleObserver):
    """Clips the tails: the range is the p-th percentile (of |x| when symmetric)."""

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.scheme.percentile / 100.0
        if self.scheme.symmetric:
            bound = torch.quantile(self.samples.abs(), q, dim=1)
            return -bound, bound
        return torch.quantile(self.samples, 1 - q, dim=1), torch.quantile(self.samples, q, dim=1)


class MSEObserver(_SampleObserver):
    """Searches a clipping ratio of the min-max range per row that minimizes the quantization MSE."""

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.samples
        lo, hi = x.amin(1), x.amax(1)
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        row_scheme = QuantScheme(**{**self.scheme.to_dict(), "granularity": "channel", "axis": 0,
                                    "group_size": None, "observer": "minmax", "percentile": None})
        for ratio in MSE_CLIP_RATIOS:
            c_lo, c_hi = lo * ratio, hi * ratio
            scale, zp = qparams_from_range(c_lo, c_hi, self.scheme)
            scale = scale[:, None]
            zp = None if zp is None else zp[:, None]
            err = (fake_quantize(x, scale, zp, row_scheme) - x).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, c_lo, best_lo)
            best_hi = torch.where(better, c_hi, best_hi)
        return best_lo, best_hi


OBSERVER_TYPES = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(scheme: QuantScheme):
    return OBSERVER_TYPES[scheme.observer](scheme)
