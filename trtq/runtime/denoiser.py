"""`AcceleratedDenoiser`: what `trtq.accelerate` puts at `pipe.unet` / `pipe.transformer` / `pipe.denoiser`.

A pipeline's `__call__` must run unchanged, so the replacement answers everything a pipeline asks of its
denoiser: the same call (positional and keyword arguments, `return_dict` both ways, the same output class),
`config` (sample_size, in_channels, time_cond_proj_dim, ...), `dtype` and `device`, and the few submodules
pipelines read sizes from (SDXL reads `unet.add_embedding.linear_1.in_features`). The work is done by a
*runner* (`trtq.runtime.backends`): a torch module (eager, torch.compile) called exactly like the original,
or a graph (ONNX Runtime, TensorRT) fed the named tensors of the export signature.

The float module is kept (not registered as a submodule, so `pipe.to("cuda")` does not copy float weights
to the GPU beside the accelerated ones; `accelerate` moves it to the CPU meanwhile when it was on a GPU) and
`trtq.restore(pipe)` puts it back where it was.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import nn

from trtq.errors import TrtqError

# What diffusers' LoRA/adapter loaders call on a denoiser. On an accelerated one the weights they would change
# are baked into codes, scales, a graph or an engine: refuse, and say how LoRA and quantization combine.
_ADAPTER_METHODS = ("load_lora_adapter", "load_attn_procs", "add_adapter", "set_adapter", "set_adapters",
                    "fuse_lora", "unfuse_lora", "unload_lora", "enable_lora", "disable_lora", "delete_adapters",
                    "enable_adapters", "disable_adapters", "set_attn_processor")
LORA_HINT = ("fuse the LoRA into the float model first (diffusers: load_lora_weights, fuse_lora, unload_lora_weights), "
             "then quantize and accelerate the fused model (docs/runtime.md)")


def _refuse_adapter(name: str):
    def method(self, *args, **kwargs):
        raise TrtqError(f"{name}: this denoiser is accelerated by trtq ({self.backend} backend) and its weights are "
                        f"fixed; {LORA_HINT}; trtq.restore(pipe) puts the float denoiser back")

    method.__name__ = name
    return method


class AcceleratedDenoiser(nn.Module):
    """Stands in for a diffusers denoiser (or a zoo model's) inside its pipeline; see the module docstring.

    original: the module it replaces (given back by `trtq.restore`; on the CPU meanwhile where `accelerate`
    offloaded it). runner: a `backends.Runner`.
    fallback: a torch module called like the original when a graph backend refuses a shape (with a
    warning naming fallback_backend), or None to raise.
    """

    def __init__(self, original: nn.Module, runner, backend: str, fallback: nn.Module | None = None,
                 fallback_backend: str | None = None, anchor: tuple[torch.dtype, torch.device] | None = None):
        super().__init__()
        # Not registered: neither moved by pipe.to() nor counted in parameters() (see the module docstring).
        object.__setattr__(self, "original", original)
        if isinstance(runner, nn.Module):
            self.runner = runner  # registered: it holds the (quantized) weights, which pipe.to() must move
        else:
            object.__setattr__(self, "runner", runner)
        self.fallback, self.fallback_backend = fallback, fallback_backend
        self.backend = backend
        self.skipped_backends: list[str] = []
        self._signature = inspect.signature(original.forward)
        # Pipelines find a module's device from its parameters (diffusers' `_execution_device`, the zoo sampler);
        # a graph runner has none in torch. This empty parameter says where inputs and outputs live, and moves
        # with `.to()` like any parameter.
        # anchor: (dtype, device) where the original was, when `accelerate` offloads it to the CPU meanwhile.
        ref = next(original.parameters(), None)
        dtype, device = anchor or ((ref.dtype, ref.device) if ref is not None else (torch.float32, "cpu"))
        self.device_anchor = nn.Parameter(torch.empty(0, dtype=dtype, device=device), requires_grad=False)
        self.offloaded_from: torch.device | None = None  # set by `accelerate`; `restore` moves the original back

    # ---------------------------------------------------------------- what pipelines read
    @property
    def config(self):
        return self.original.config

    @property
    def dtype(self) -> torch.dtype:
        return self.device_anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.device_anchor.device

    @property
    def add_embedding(self):  # SDXL's pipeline sizes its time ids from add_embedding.linear_1.in_features
        return self.original.add_embedding

    @property
    def encoder_hid_proj(self):  # read by pipelines only for IP-Adapters, which the forward below refuses
        return getattr(self.original, "encoder_hid_proj", None)

    def __repr__(self) -> str:
        return f"AcceleratedDenoiser({type(self.original).__name__}, backend={self.backend!r})"

    # ---------------------------------------------------------------- the call
    def forward(self, *args: Any, **kwargs: Any):
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(self.original).__name__}.forward: {e}") from None
        call = dict(bound.arguments)
        for name, p in self._signature.parameters.items():  # **kwargs collected by the signature: flatten
            if p.kind is inspect.Parameter.VAR_KEYWORD and name in call:
                call.update(call.pop(name))
        runner = self.runner
        if runner.takes_module_call:
            return runner(*args, **kwargs)
        return_dict = call.pop("return_dict", True)
        try:
            feed = runner.feed_from_call(call)
            runner.check_feed(feed)
        except ShapeOutsideProfile as e:
            if self.fallback is None:
                raise TrtqError(f"{e} (accelerate(..., fallback='torch') runs such calls on the torch backend)") \
                    from None
            warnings.warn(f"trtq: {e}; running this call on the {self.fallback_backend} backend", stacklevel=2)
            return self.fallback(*args, **kwargs)
        sample = runner.run(feed).to(device=feed["sample"].device, dtype=_sample_of(call).dtype)
        return _output(self.original, sample, return_dict)

    def save_pretrained(self, *args, **kwargs):
        raise TrtqError("this denoiser is accelerated by trtq: save the artifact or export instead, or "
                        "trtq.restore(pipe) and save the float pipeline")



for _name in _ADAPTER_METHODS:
    setattr(AcceleratedDenoiser, _name, _refuse_adapter(_name))
del _name


class ShapeOutsideProfile(Exception):
    """A call the graph cannot take (batch, resolution or dtype outside its profile): an error, or the fallback."""


def _sample_of(call: dict) -> torch.Tensor:
    for key in ("sample", "hidden_states"):
        if key in call:
            return call[key]
    raise TrtqError("the denoiser call has no sample / hidden_states tensor")


def _output(original: nn.Module, sample: torch.Tensor, return_dict: bool):
    """The original class's output: its output dataclass, or a 1-tuple with return_dict=False."""
    if not return_dict:
        return (sample,)
    cls = type(original).__name__
    if cls.startswith("UNet2D"):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=sample)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)
