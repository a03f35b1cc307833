"""Quantized drop-in replacements for `nn.Conv2d` and `nn.Linear`.

A quantized module *is* the float module (same class hierarchy, same Parameter objects, same name in the
model) plus two optional quantizers: `input_quantizer` for the activation and `weight_quantizer` for the
weight. Either may be None (kept in float). Swapping the class rather than wrapping keeps module names and
state_dict keys unchanged, so hooks, LoRA loaders and diffusers attention processors keep working.

Quantized layers trace: their forward reads only parameters, buffers and plain Python settings (no caches
keyed on tensor identity), so `torch.compile` gives one graph and `torch.export` succeeds. The fake-quantized
weight is recomputed from `weight` and its scale in every forward rather than stored: a stored float copy
would double the model's memory. State a layer derives from its weight (e.g. Winograd INT8 weights) is
computed once by `refresh_weight()`, which whoever changes the weight or the state it derives from calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trtq.errors import TrtqError
from trtq.nn.tensor_quantizer import TensorQuantizer
from trtq.scheme import QuantScheme


class _QuantMixin:
    """What every quantized layer kind shares. A kind (see LAYER_KINDS) overrides `check_args`/`supports` to
    take layer_args, and `artifact_config`/`load_artifact_config` for per-layer choices its artifact must keep
    (its tensors travel as registered buffers, saved and restored generically)."""

    input_quantizer: TensorQuantizer | None
    weight_quantizer: TensorQuantizer | None
    # Whether the kind's forward adds a measured `bias_correction` buffer (`trtq.bias_correction`) to its bias.
    CORRECTS_BIAS = False

    @classmethod
    def check_args(cls, weight: QuantScheme | None, input: QuantScheme | None, **layer_args) -> None:
        """Reject bad recipe options when the recipe is built, not when a model is quantized."""
        if layer_args:
            raise TrtqError(f"{cls.__name__} takes no layer_args, got {sorted(layer_args)}")

    @classmethod
    def supports(cls, module: nn.Module, **layer_args) -> bool:
        return True

    def artifact_config(self) -> dict:
        return {}

    def refresh_weight(self) -> None:
        """Recompute the state this layer derives from its float weight (none for fake-quantized layers).
        Call it after changing `weight` or a buffer the derived state depends on (methods, artifact loading)."""

    def load_artifact_config(self, config: dict) -> None:
        if config:
            raise TrtqError(f"{type(self).__name__} keeps no per-layer config, artifact has {sorted(config)}")

    @classmethod
    def from_float(cls, module: nn.Module, weight: QuantScheme | None, input: QuantScheme | None, **layer_args):
        q = cls.__new__(cls)
        q.__dict__ = dict(module.__dict__)
        q._parameters = dict(module._parameters)
        q._buffers = dict(module._buffers)
        q._modules = dict(module._modules)
        q.weight_quantizer = None if weight is None else TensorQuantizer(weight, "weight")
        q.input_quantizer = None if input is None else TensorQuantizer(input, "input")
        if q.weight_quantizer is not None:
            q.weight_quantizer.calibrate_from(q.weight.detach())
        if cls.CORRECTS_BIAS:
            q._buffers["bias_correction"] = None  # registered (artifacts carry it once set), empty until then
        return q

    def effective_bias(self) -> torch.Tensor | None:
        """The bias the layer adds: the float bias plus the per-output-channel `bias_correction` when one was
        measured (the float bias Parameter itself never changes: the model keeps its fingerprint)."""
        c = self._buffers.get("bias_correction")
        if c is None:
            return self.bias
        return c.to(self.weight.dtype) if self.bias is None else self.bias + c.to(self.bias.dtype)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight, computed from `weight` and the calibrated scale at every call: an
        elementwise pass over the weight, cheap beside the layer's matmul, and no float copy kept."""
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    CORRECTS_BIAS = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.effective_bias())


class QuantLinear(_QuantMixin, nn.Linear):
    CORRECTS_BIAS = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.effective_bias())


# Quantized layer kinds, by the float layer's class name. Methods register theirs (e.g. "winograd").
LAYER_KINDS: dict[str, dict[str, type]] = {"fake": {"Conv2d": QuantConv2d, "Linear": QuantLinear}}
QUANTIZABLE = (nn.Conv2d, nn.Linear)


def register_layer_kind(name: str, classes: dict[str, type]) -> None:
    LAYER_KINDS[name] = classes


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, _QuantMixin)


def quantizers(model: nn.Module):
    """(qualified name, TensorQuantizer) for every quantizer in a model."""
    for name, mod in model.named_modules():
        if isinstance(mod, TensorQuantizer):
            yield name, mod


class float_mode:
    """Context: every quantizer of the model off (the float model), modes restored after."""

    def __init__(self, model: nn.Module, inputs_only: bool = False):
        self.model, self.inputs_only = model, inputs_only

    def __enter__(self):
        self.modes = {n: q.mode for n, q in quantizers(self.model)}
        for _, q in quantizers(self.model):
            if not self.inputs_only or q.role == "input":
                q.mode = "off"

    def __exit__(self, *exc):
        qs = dict(quantizers(self.model))
        for n, mode in self.modes.items():
            qs[n].mode = mode
