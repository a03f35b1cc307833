"""Small random-weight diffusers denoisers with the block structure of SD 1.5, SDXL, DiT and PixArt, for export tests.

Random weights are fine for shapes and export numerics, never for quality. Parameters that diffusers
zero-initialises (DiT/PixArt final layers) are re-drawn, or the output would be identically zero and every
comparison trivially exact.
"""

import torch

UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=8)
SDXL = dict(UNET, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8, use_linear_projection=True)
DIT = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, num_layers=2, sample_size=16,
           patch_size=2, num_embeds_ada_norm=10)
PIXART = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
              sample_size=16, patch_size=2, caption_channels=32, cross_attention_dim=32, norm_type="ada_norm_single",
              use_additional_conditions=False)
CONFIGS = ("sd15", "sdxl", "dit", "pixart")


def build_config(kind: str) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    cls, cfg = {"sd15": (UNet2DConditionModel, UNET), "sdxl": (UNet2DConditionModel, SDXL),
                "dit": (DiTTransformer2DModel, DIT), "pixart": (PixArtTransformer2DModel, PIXART)}[kind]
    model = cls(**cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model
