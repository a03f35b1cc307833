"""Denoiser signatures for export: a wrapper taking plain tensors, example inputs, and the dynamic axes.

diffusers denoisers take keyword arguments and nested dicts (SDXL's `added_cond_kwargs`) and return an output
object; an ONNX graph (and a TensorRT engine) takes named tensors and returns tensors. `DenoiserSignature`
says, per model class, which tensors go in, how they are shaped, which axes are the batch and the latent
resolution, and how they are handed to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trtq.errors import TrtqError

BATCH, HEIGHT, WIDTH = "batch", "height", "width"


@dataclass
class DenoiserSignature:
    kind: str  # "unet" | "unet-sdxl" | "dit" | "pixart"
    in_channels: int
    cross_dim: int | None = None
    text_tokens: int = 4
    text_embeds_dim: int | None = None  # SDXL pooled text embedding width
    time_ids: int = 6
    patch_grid_dynamic: bool = False  # a DiT/PixArt whose patch grid the export computes from the input size

    def input_names(self) -> list[str]:
        names = ["sample", "timestep"]
        if self.kind in ("unet", "unet-sdxl", "pixart"):
            names.append("encoder_hidden_states")
        if self.kind == "unet-sdxl":
            names += ["text_embeds", "time_ids"]
        if self.kind == "dit":
            names.append("class_labels")
        return names

    def example_inputs(self, batch: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        x = {"sample": torch.randn(batch, self.in_channels, height, width, generator=gen),
             "timestep": torch.randint(0, 1000, (batch,), generator=gen).float()}
        if "encoder_hidden_states" in self.input_names():
            x["encoder_hidden_states"] = torch.randn(batch, self.text_tokens, self.cross_dim, generator=gen)
        if self.kind == "unet-sdxl":
            x["text_embeds"] = torch.randn(batch, self.text_embeds_dim, generator=gen)
            x["time_ids"] = torch.tensor([float(height * 8), float(width * 8), 0.0, 0.0, float(height * 8),
                                          float(width * 8)]).repeat(batch, 1)
        if self.kind == "dit":
            x["class_labels"] = torch.randint(0, 10, (batch,), generator=gen)
        return x

    @property
    def resolution_dynamic(self) -> bool:
        """UNets are fully convolutional in H, W. diffusers' DiT/PixArt compute their sin-cos position table
        and unpatchify sizes in Python; the exporter swaps in forms that compute them in the graph
        (`trtq.export.dynamic`) for the configurations it knows (`patch_grid_dynamic`)."""
        return self.kind in ("unet", "unet-sdxl") or self.patch_grid_dynamic

    def dynamic_axes(self, resolution: bool) -> dict[str, dict[int, str]]:
        axes = {name: {0: BATCH} for name in self.input_names()}
        if resolution and self.resolution_dynamic:
            axes["sample"] = {0: BATCH, 2: HEIGHT, 3: WIDTH}
        axes["out_sample"] = dict(axes["sample"])
        return axes


def signature_of(denoiser: nn.Module) -> DenoiserSignature:
    """The export signature of a diffusers denoiser, from its class and config."""
    cls = type(denoiser).__name__
    cfg = denoiser.config
    if cls == "UNet2DConditionModel":
        cross = cfg.cross_attention_dim
        cross = cross[0] if isinstance(cross, (list, tuple)) else cross
        if cfg.addition_embed_type == "text_time":
            text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            return DenoiserSignature("unet-sdxl", cfg.in_channels, cross, text_embeds_dim=text_dim)
        if cfg.addition_embed_type is not None or cfg.class_embed_type is not None:
            raise TrtqError(f"UNet2DConditionModel with addition_embed_type={cfg.addition_embed_type!r}, "
                            f"class_embed_type={cfg.class_embed_type!r}: no export signature for it yet")
        return DenoiserSignature("unet", cfg.in_channels, cross)
    if cls in ("DiTTransformer2DModel", "PixArtTransformer2DModel"):
        from trtq.export.dynamic import supports_dynamic_resolution

        grid = supports_dynamic_resolution(denoiser)
        if cls == "DiTTransformer2DModel":
            return DenoiserSignature("dit", cfg.in_channels, patch_grid_dynamic=grid)
        return DenoiserSignature("pixart", cfg.in_channels, cfg.caption_channels, patch_grid_dynamic=grid)
    raise TrtqError(f"no export signature for denoiser class {cls}; supported: UNet2DConditionModel, "
                    "DiTTransformer2DModel, PixArtTransformer2DModel")


class DenoiserWrapper(nn.Module):
    """forward(*tensors in signature order) -> the predicted sample tensor."""

    def __init__(self, denoiser: nn.Module, signature: DenoiserSignature):
        super().__init__()
        self.denoiser, self.signature = denoiser, signature

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.signature.input_names(), args))
        kind = self.signature.kind
        if kind in ("unet", "unet-sdxl"):
            extra = {}
            if kind == "unet-sdxl":
                extra["added_cond_kwargs"] = {"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}
            return self.denoiser(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
                                 **extra).sample
        if kind == "dit":
            return self.denoiser(x["sample"], timestep=x["timestep"], class_labels=x["class_labels"]).sample
        return self.denoiser(x["sample"], encoder_hidden_states=x["encoder_hidden_states"], timestep=x["timestep"],
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
