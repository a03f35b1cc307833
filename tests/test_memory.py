"""Memory accounting of quantized layers: a quantized layer holds its float weight (the model's own Parameter)
plus scales, codes or packed 4-bit weights; never a float copy of its fake-quantized weight, and nothing
outside its parameters and buffers (no Python-side tensor caches), before or after a forward pass."""

import pytest
import torch
from torch import nn

import trtq
from trtq.nn import QuantConv2d, QuantLinear
from trtq.nn.fp4_linear import FP4Linear
from trtq.recipes import get_recipe
from trtq.scheme import QuantScheme
from trtq.winograd.layer import WinogradQuantConv2d

W8 = QuantScheme(format="int8", granularity="channel", axis=0)
A8 = QuantScheme(format="int8", dynamic=True)
G32 = dict(granularity="group", axis=1, group_size=32)


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _tensor_attributes(module):
    """Tensors a module keeps outside its parameters and buffers (what a cache keyed on identity would be)."""
    return [k for m in module.modules() for k, v in vars(m).items() if isinstance(v, torch.Tensor)]


def _layers():
    torch.manual_seed(0)
    lin, conv = nn.Linear(256, 128), nn.Conv2d(64, 64, 3, padding=1)
    fp4_w = QuantScheme(format="fp4_e2m1", **G32)
    fp4_a = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=32, dynamic=True)
    wg = QuantScheme(format="int8", **G32)
    return [
        (lin, QuantLinear.from_float(lin, W8, A8), torch.randn(3, 256)),
        (conv, QuantConv2d.from_float(conv, W8, A8), torch.randn(1, 64, 8, 8)),
        (lin, FP4Linear.from_float(lin, fp4_w, fp4_a, group_size=32), torch.randn(3, 256)),
        (conv, WinogradQuantConv2d.from_float(conv, wg, QuantScheme(format="int8", dynamic=True, **G32),
                                              tile=4, group_size=32), torch.randn(1, 64, 8, 8)),
    ]


@pytest.mark.parametrize("case", range(4), ids=["linear-w8a8", "conv-w8a8", "fp4", "winograd-f43"])
def test_quantized_layer_keeps_no_float_copy_of_its_weight(case):
    float_layer, q, x = _layers()[case]
    weight = float_layer.weight
    assert q.weight is weight and {n for n, _ in q.named_parameters()} == {"weight", "bias"}

    def check():
        assert _tensor_attributes(q) == []
        float_buffers = [b for b in q.buffers() if b.is_floating_point()]
        assert all(b.numel() <= weight.numel() // 8 for b in float_buffers)  # scales and transforms only
        return {n: b.data_ptr() for n, b in q.named_buffers()}

    before = check()
    with torch.no_grad():
        q(x)
    assert check() == before  # a forward pass adds and replaces nothing
    extra = _bytes(q.buffers())
    w_bytes = _bytes([weight])
    if isinstance(q, FP4Linear):  # packed codes (half a byte per weight) + one FP32 scale per group of 32
        assert extra <= w_bytes / 8 + w_bytes / 32 + 1024
    elif isinstance(q, WinogradQuantConv2d):  # INT8 codes of the 6x6 domain: 36 bytes per (Cout, Cin) pair
        assert q.weight_int8.dtype == torch.int8 and q.weight_int8.numel() == weight.numel() * 36 // 9
        persistent = set(q.state_dict())
        assert "weight_int8" not in persistent and "s_g" in persistent  # derived, recomputed on load
    else:
        assert extra <= w_bytes / 32  # per-channel scales


def test_quantized_model_adds_only_scales_to_the_float_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.Flatten(2), nn.Linear(64, 64), nn.Linear(64, 64))
    x = torch.randn(2, 8, 8, 8)
    float_bytes = _bytes(model.parameters())
    trtq.quantize(model, get_recipe("w8a8-minmax"), lambda m: m(x))
    assert _bytes(model.parameters()) == float_bytes
    assert _bytes(model.buffers()) < 0.05 * float_bytes
    assert _tensor_attributes(model) == []


def test_winograd_weight_follows_refresh():
    _, q, x = _layers()[3]
    codes = q.weight_int8.clone()
    with torch.no_grad():
        q.s_g.mul_(torch.linspace(0.5, 2, 6))
        q.refresh_weight()
    assert not torch.equal(q.weight_int8, codes)
    at, g, bt = q.transforms()
    assert torch.allclose(g[:, 0], torch.tensor([1 / 4, -1 / 6, -1 / 6, 1 / 24, 1 / 24, 0]) * q.s_g)


@pytest.mark.parametrize("scheme", [W8, QuantScheme(format="int4", **G32), QuantScheme(format="int8", symmetric=False)],
                         ids=["int8-channel", "int4-group", "int8-asym"])
def test_inference_fake_quant_is_bit_identical_to_the_autograd_one(scheme):
    from trtq.nn import TensorQuantizer
    from trtq.quantizer import fake_quantize

    w = torch.randn(64, 96) * torch.logspace(-2, 1, 64)[:, None]
    q = TensorQuantizer(scheme, "weight")
    q.calibrate_from(w)
    with torch.no_grad():
        fast = q(w)
    assert torch.equal(fast, fake_quantize(w, q.scale, q.zero_point, scheme))
