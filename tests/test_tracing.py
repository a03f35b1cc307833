"""Quantized models trace: `torch.compile` finds one graph with no break under no_grad, and `torch.export`
succeeds with and without grad, keeping the custom ops as themselves; the exported program computes what
the eager model computes. Every recipe family, on the zoo models and tiny configs of the diffusers classes."""

import os

import pytest
import torch
import torch._dynamo as dynamo
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn

import trtq
from trtq.architectures import build_architecture, example_inputs
from trtq.nn.fp4_linear import FP4Linear
from trtq.recipes import get_recipe
from trtq.winograd.layer import WinogradQuantConv2d
from trtq.zoo import load_model

# One recipe per family (HQ-DiT light: no GPTQ, few rows, so the test stays short).
FAMILIES = {
    "w8a8-minmax": {},
    "w8a8-group": {},
    "w8a8-winograd-f43": {"winograd.steps": 2, "winograd.progress": False},
    "w4a4-fp4-minmax": {},
    "w4a4-fp4-hqdit": {"hqdit.gptq": False, "hqdit.max_rows": 64},
    "w4a4-nvfp4": {},
    "w4a8-fp4": {},
    "w4a4-int4": {},
}
OP_OF_KIND = {WinogradQuantConv2d: "trtq.winograd_conv_int8.default", FP4Linear: "trtq.fp4_group_gemm.default"}


def _zoo(name):
    m = load_model(name)
    side = 8 if m.kind == "unet" else 32  # the UNet runs at any size; a small one keeps the test short
    x, t, labels = torch.randn(2, 1, side, side), torch.tensor([10, 500]), torch.tensor([1, 2])
    if m.kind == "unet":
        return m.denoiser, (x, t), {"encoder_hidden_states": m.label_encoder(labels)}
    return m.denoiser, (x,), {"timestep": t, "class_labels": labels}


def _tiny(name):
    torch.manual_seed(0)
    model = build_architecture(name, tiny=True)
    args, kwargs = example_inputs(name, model, batch=2)
    return model, args, kwargs


MODELS = {"digits-unet": lambda: _zoo("digits-unet"), "digits-dit": lambda: _zoo("digits-dit"),
          "sd15": lambda: _tiny("sd15"), "dit": lambda: _tiny("dit-xl-2"),
          "pixart": lambda: _tiny("pixart-alpha"), "sd3": lambda: _tiny("sd3-medium")}
# Which families apply: Winograd and w8a8-group quantize convs (UNets), the 4-bit ones transformer linears.
UNETS = ("digits-unet", "sd15")
CASES = [(m, r) for m in MODELS for r in FAMILIES
         if not (r.startswith(("w8a8-winograd", "w8a8-group")) and m not in UNETS)]


def _quantize(model, recipe_name, args, kwargs):
    recipe = get_recipe(recipe_name).with_overrides(FAMILIES[recipe_name])
    trtq.quantize(model, recipe, lambda m: m(*args, **kwargs))


class Block(nn.Module):
    """One layer of every kind the recipe families produce: a Winograd-eligible 3x3 conv, a strided conv, a conv
    whose input channels no group of 32 divides, FP4-eligible linears and a W8A8 output projection."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 32, 3, padding=1)
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.proj = nn.Linear(32, 64)
        self.proj_out = nn.Linear(64, 32)

    def forward(self, x):
        h = self.down(F.silu(self.conv(self.conv_in(x))))
        return self.proj_out(F.gelu(self.proj(h.flatten(2).transpose(1, 2))))


def _block():
    torch.manual_seed(0)
    return Block().eval(), (torch.randn(2, 4, 8, 8),), {}


def check_traces(model, args, kwargs):
    """One graph under torch.compile (no_grad), export with and without grad keeping the custom ops, and the
    exported program computing what the eager model computes."""
    expected_ops = {op for cls, op in OP_OF_KIND.items() if any(isinstance(m, cls) for m in model.modules())}
    first = lambda out: out if isinstance(out, torch.Tensor) else out[0]  # noqa: E731
    dynamo.reset()
    frames = dynamo.testing.CompileCounter()
    with torch.no_grad():
        eager = first(model(*args, **kwargs))
        compiled = first(torch.compile(model, backend=frames, fullgraph=True)(*args, **kwargs))  # raises on a break
    assert frames.frame_count == 1
    torch.testing.assert_close(compiled, eager)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            program = torch.export.export(model, args, kwargs)
        ops = {str(n.target) for n in program.graph.nodes if str(n.target).startswith("trtq.")}
        assert ops == expected_ops
    with torch.no_grad():
        torch.testing.assert_close(first(program.module()(*args, **kwargs)), eager)
    return expected_ops


@pytest.mark.parametrize("recipe_name", FAMILIES)
def test_every_family_traces_on_a_block_with_every_layer_kind(recipe_name):
    model, args, kwargs = _block()
    _quantize(model, recipe_name, args, kwargs)
    ops = check_traces(model, args, kwargs)
    if "winograd" in recipe_name:
        assert ops == {"trtq.winograd_conv_int8.default"}
    if "fp4" in recipe_name:
        assert ops == {"trtq.fp4_group_gemm.default"}


# Every model once, the families spread over them (all eight covered); the full matrix runs with
# TRTQ_FULL_TRACING=1 (minutes on 2 CPU cores).
SPREAD = [("digits-unet", "w8a8-winograd-f43"), ("digits-dit", "w4a4-nvfp4"), ("sd15", "w8a8-group"),
          ("dit", "w4a4-fp4-hqdit"), ("pixart", "w4a8-fp4"), ("sd3", "w4a4-int4"), ("sd15", "w8a8-minmax"),
          ("pixart", "w4a4-fp4-minmax")]
FULL = os.environ.get("TRTQ_FULL_TRACING") == "1"


@pytest.mark.parametrize("model_name, recipe_name", CASES if FULL else SPREAD)
def test_quantized_model_compiles_in_one_graph_and_exports(model_name, recipe_name):
    model, args, kwargs = MODELS[model_name]()
    _quantize(model, recipe_name, args, kwargs)
    check_traces(model, args, kwargs)
