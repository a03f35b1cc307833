"""Resolution-dynamic forms of diffusers' DiT and PixArt transformers, applied to the lowered copy at export.

diffusers computes two things of these models in Python from the input size, so a trace holds the traced
resolution as constants:
- `PatchEmbed` uses its stored sin-cos position table when the size is the configured one and computes a new
  table only otherwise (a Python `if` on the size);
- `DiTTransformer2DModel.forward` unpatchifies with `height = width = int(sqrt(tokens))` (a Python int).
For export, `PatchEmbed` is replaced by `DynamicPatchEmbed`, which always computes the table from the
(traced) patch grid with diffusers' own `get_2d_sincos_pos_embed`, and the DiT's forward by one that
unpatchifies with the grid size taken from the input. Both compute what diffusers computes at every size
(the stored table is that function's output at the configured size), so the graph is one graph for every
resolution in the profile; tests/test_export.py runs it at other sizes against the PyTorch model.
PixArt's forward already unpatchifies with the input's grid size; its `PatchEmbed` is the only change.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


class DynamicPatchEmbed(nn.Module):
    """diffusers' `PatchEmbed` (no cropping: `pos_embed_max_size` None) with the position table always
    computed from the input's patch grid."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        e = self.inner
        h, w = latent.shape[-2] // e.patch_size, latent.shape[-1] // e.patch_size
        x = e.proj(latent)
        if e.flatten:
            x = x.flatten(2).transpose(1, 2)
        if e.layer_norm:
            x = e.norm(x)
        pos = get_2d_sincos_pos_embed(embed_dim=e.pos_embed.shape[-1], grid_size=(h, w), base_size=e.base_size,
                                      interpolation_scale=e.interpolation_scale, device=latent.device,
                                      output_type="pt")
        return (x + pos.float().unsqueeze(0)).to(x.dtype)


def _dit_forward(self, hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None,
                 return_dict=True):
    """DiT (ada_norm_zero) forward whose unpatchify takes the patch grid from the input's height and width."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    p, c = self.patch_size, self.out_channels
    h, w = hidden_states.shape[-2] // p, hidden_states.shape[-1] // p
    x = self.pos_embed(hidden_states)
    for block in self.transformer_blocks:
        x = block(x, timestep=timestep, class_labels=class_labels, cross_attention_kwargs=cross_attention_kwargs)
    emb = self.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)
    shift, scale = self.proj_out_1(F.silu(emb)).chunk(2, dim=1)
    x = self.proj_out_2(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
    # tokens [B, h*w, p*p*c] -> image [B, c, h*p, w*p]
    out = x.reshape(-1, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h * p, w * p)
    return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def supports_dynamic_resolution(model: nn.Module) -> bool:
    """Whether `make_resolution_dynamic` knows this transformer (DiT with adaLN-zero, PixArt; a PatchEmbed
    without cropping)."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel
    from diffusers.models.embeddings import PatchEmbed

    embed = getattr(model, "pos_embed", None)
    if not isinstance(embed, PatchEmbed) or embed.pos_embed is None or embed.pos_embed_max_size is not None:
        return False
    if isinstance(model, DiTTransformer2DModel):
        return model.config.norm_type == "ada_norm_zero"
    return isinstance(model, PixArtTransformer2DModel)


def make_resolution_dynamic(model: nn.Module) -> None:
    """In place, on a lowered copy (never on the user's model)."""
    from diffusers import DiTTransformer2DModel

    model.pos_embed = DynamicPatchEmbed(model.pos_embed)
    if isinstance(model, DiTTransformer2DModel):
        model.forward = types.MethodType(_dit_forward, model)
