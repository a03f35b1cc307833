"""Numerics of the fast Walsh-Hadamard transform in low precision."""

import torch

from trtq.hadamard import fwht


def test_fwht_fp16_does_not_overflow_where_the_result_is_small():
    # Three entries of 30000 at K = 4096: the unnormalized butterflies reach 90000 (> FP16's 65504),
    # the normalized result is at most 90000 / 64 = 1406.25.
    x = torch.zeros(2, 4096)
    x[0, [3, 700, 4000]] = 30000.0
    x[1, [0, 1, 2]] = torch.tensor([30000.0, -30000.0, 30000.0])
    ref = fwht(x.double())
    y = fwht(x.half())
    assert y.dtype == torch.float16
    assert torch.isfinite(y).all()
    assert ref.abs().max().item() <= 1406.25
    assert torch.allclose(y.double(), ref, rtol=1e-3, atol=0.0)


def test_fwht_bf16_keeps_dtype_and_matches_fp32():
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0)) * 1e3
    y = fwht(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), fwht(x.bfloat16().float()), rtol=1e-2, atol=1e-2)
