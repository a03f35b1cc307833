"""Published diffusers architectures by name, built from their configs (no download): for inspection,
role detection, memory and tracing checks at the real sizes, and tiny versions of each for tests.

`build_architecture("sd15")` builds SD 1.5's UNet with random weights; `device="meta"` builds it without
allocating weights (enough for `trtq.inspect.quantization_plan`, which looks at shapes and structure only).
The configs are the published ones (the `config.json` beside each checkpoint), written out by hand.
"""

from __future__ import annotations

import torch
from torch import nn

from trtq.errors import TrtqError

# name -> (diffusers class, published config)
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "sd15": ("UNet2DConditionModel", dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        norm_num_groups=32)),
    "sdxl": ("UNet2DConditionModel", dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32)),
    "dit-xl-2": ("DiTTransformer2DModel", dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000)),
    "pixart-alpha": ("PixArtTransformer2DModel", dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, sample_size=128, patch_size=2, norm_type="ada_norm_single",
        caption_channels=4096, use_additional_conditions=True)),
    "sd3-medium": ("SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)),
    "flux-dev": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))),
}

# The same classes at toy sizes (seconds on a CPU): every structural feature of the published config kept.
TINY: dict[str, dict] = {
    "sd15": dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8, norm_num_groups=8),
    "sdxl": dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1),
                 attention_head_dim=(4, 8), addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8),
    "dit-xl-2": dict(num_attention_heads=2, attention_head_dim=32, num_layers=1, sample_size=8,
                     num_embeds_ada_norm=10),
    "pixart-alpha": dict(num_attention_heads=3, attention_head_dim=32, num_layers=1, cross_attention_dim=96,
                         sample_size=8, caption_channels=32),
    "sd3-medium": dict(sample_size=8, num_layers=2, attention_head_dim=32, num_attention_heads=2,
                       joint_attention_dim=32, caption_projection_dim=64, pooled_projection_dim=32,
                       pos_embed_max_size=8),
    "flux-dev": dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                     axes_dims_rope=(4, 6, 6)),
}


def build_architecture(name: str, tiny: bool = False, device: str | torch.device | None = None) -> nn.Module:
    """The diffusers model `name` (see ARCHITECTURES) with random weights, in eval mode."""
    import diffusers

    if name not in ARCHITECTURES:
        raise TrtqError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    cls_name, config = ARCHITECTURES[name]
    config = {**config, **TINY[name]} if tiny else config
    with torch.device(device or "cpu"):
        return getattr(diffusers, cls_name)(**config).eval()


def example_inputs(name: str, model: nn.Module, batch: int = 1, latent: int | None = None, tokens: int = 8,
                   seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) for one forward of `model` (built by `build_architecture(name, ...)`) on random data.
    latent: the latent side (default: the config's sample_size)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    side = latent or cfg.get("sample_size", 4)
    t = torch.full((batch,), 500, dtype=torch.long)
    if name in ("sd15", "sdxl"):
        kw = {"encoder_hidden_states": rand(batch, tokens, cfg.cross_attention_dim)}
        if cfg.addition_embed_type == "text_time":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kw["added_cond_kwargs"] = {"text_embeds": rand(batch, pooled), "time_ids": rand(batch, 6)}
        return (rand(batch, cfg.in_channels, side, side), t), kw
    if name == "dit-xl-2":
        return (rand(batch, cfg.in_channels, side, side),), {"timestep": t, "class_labels": t % 10}
    if name == "pixart-alpha":
        added = {"resolution": torch.full((batch, 2), 8.0 * side), "aspect_ratio": torch.ones(batch, 1)}
        return (rand(batch, cfg.in_channels, side, side),), {
            "encoder_hidden_states": rand(batch, tokens, cfg.caption_channels), "timestep": t,
            "added_cond_kwargs": added}
    if name == "sd3-medium":
        return (rand(batch, cfg.in_channels, side, side),), {
            "encoder_hidden_states": rand(batch, tokens, cfg.joint_attention_dim),
            "pooled_projections": rand(batch, cfg.pooled_projection_dim), "timestep": t}
    if name == "flux-dev":
        kw = {"encoder_hidden_states": rand(batch, tokens, cfg.joint_attention_dim),
              "pooled_projections": rand(batch, cfg.pooled_projection_dim), "timestep": t.float() / 1000,
              "img_ids": torch.zeros(side * side, 3), "txt_ids": torch.zeros(tokens, 3)}
        if cfg.guidance_embeds:
            kw["guidance"] = torch.full((batch,), 3.5)
        return (rand(batch, side * side, cfg.in_channels),), kw
    raise TrtqError(f"no example inputs for architecture {name!r}")
