"""`trtq::int8_gemm` (W8A8 linear, INT32 accumulation): its arithmetic, batch invariance, fake tensors."""

import pytest
import torch

from trtq.ops.int8_gemm import int8_gemm, quantize_linear_weight, token_scales


def test_int8_gemm_is_the_exact_integer_product_scaled():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, 64, generator=gen), torch.randn(24, 64, generator=gen), torch.randn(24, generator=gen)
    codes, w_scale = quantize_linear_weight(w)
    y = int8_gemm(x, codes, w_scale, b, None)
    rows = x.reshape(-1, 64)
    s = token_scales(rows)
    q = torch.round(rows / s).clamp(-128, 127).long()
    acc = (q @ codes.long().t()).float()  # exact integers
    assert torch.equal(y, ((acc * s) * w_scale[None, :] + b).reshape(3, 5, 24))
    assert ((y - torch.nn.functional.linear(x, w, b)).norm() / y.norm()).item() < 0.02  # INT8 error only


def test_static_scale_and_fp16_input():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 32, generator=gen), torch.randn(16, 32, generator=gen)
    codes, w_scale = quantize_linear_weight(w)
    scale = x.abs().max() / 127
    y32 = int8_gemm(x, codes, w_scale, None, scale)
    y16 = int8_gemm(x.half(), codes, w_scale, None, scale)
    assert y16.dtype == torch.float16 and ((y16.float() - y32).norm() / y32.norm()).item() < 2e-3
    assert torch.equal(int8_gemm(torch.zeros(2, 32), codes, w_scale, None, None), torch.zeros(2, 16))


def test_per_token_scales_make_it_batch_invariant():
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(4, 7, 32, generator=gen), torch.randn(16, 32, generator=gen)
    x[1:] *= 100
    codes, w_scale = quantize_linear_weight(w)
    assert torch.equal(int8_gemm(x, codes, w_scale, None, None)[:1], int8_gemm(x[:1], codes, w_scale, None, None))


def test_opcheck():
    codes, w_scale = quantize_linear_weight(torch.randn(8, 16))
    torch.library.opcheck(torch.ops.trtq.int8_gemm.default, (torch.randn(3, 16), codes, w_scale, None, None),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
def test_int_mm_path_equals_the_cpu_result():
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(64, 256, generator=gen), torch.randn(128, 256, generator=gen), torch.randn(128, generator=gen)
    codes, w_scale = quantize_linear_weight(w)
    cpu = int8_gemm(x, codes, w_scale, b, None)
    gpu = int8_gemm(x.cuda(), codes.cuda(), w_scale.cuda(), b.cuda(), None).cpu()
    assert ((gpu - cpu).norm() / cpu.norm()).item() < 1e-6
