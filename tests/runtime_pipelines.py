"""Tiny random-weight diffusers pipelines (SD 1.5, SDXL, DiT, PixArt-α) built in memory, and the call that
runs each one without a tokenizer: prompt embeddings (and masks, pooled embeddings) passed directly, latents out.

Random weights: fine for call plumbing and numerics against the same model, never for quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from export_configs import DIT, PIXART, SDXL, UNET  # noqa: E402

PIPELINES = ("sd15", "sdxl", "dit", "pixart")
TEXT_TOKENS = 5


def _randomize_zeros(model: torch.nn.Module) -> None:
    """diffusers zero-initialises some output layers: redraw them, or every output is 0 and comparisons trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=16).eval()


def build_pipeline(kind: str):
    """(pipeline, call kwargs) for one tiny pipeline of each class."""
    from diffusers import (DDIMScheduler, DiTPipeline, DiTTransformer2DModel, PixArtAlphaPipeline,
                           PixArtTransformer2DModel, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)

    torch.manual_seed(0)
    sched = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    gen = torch.Generator().manual_seed(5)
    if kind == "sd15":
        unet = UNet2DConditionModel(**UNET).eval()
        _randomize_zeros(unet)
        pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        emb = torch.randn(1, TEXT_TOKENS, 32, generator=gen)
        call = dict(prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), height=128, width=128,
                    output_type="latent")
    elif kind == "sdxl":
        unet = UNet2DConditionModel(**SDXL).eval()
        _randomize_zeros(unet)
        pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=unet, scheduler=sched)
        emb = torch.randn(1, TEXT_TOKENS, 32, generator=gen)
        pooled = torch.randn(1, 32, generator=gen)
        call = dict(prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), pooled_prompt_embeds=pooled,
                    negative_pooled_prompt_embeds=torch.zeros_like(pooled), height=128, width=128,
                    output_type="latent")
    elif kind == "dit":
        # DiTPipeline's null class is label 1000: a 1000-class table
        transformer = DiTTransformer2DModel(**dict(DIT, num_embeds_ada_norm=1000)).eval()
        _randomize_zeros(transformer)
        pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=sched)
        call = dict(class_labels=[3], output_type="np")  # DiTPipeline always decodes (hence its tiny VAE)
    elif kind == "pixart":
        transformer = PixArtTransformer2DModel(**PIXART).eval()
        _randomize_zeros(transformer)
        pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                   scheduler=sched)
        emb = torch.randn(1, TEXT_TOKENS, 32, generator=gen)
        mask = torch.ones(1, TEXT_TOKENS, dtype=torch.long)
        call = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=torch.zeros_like(emb),
                    negative_prompt=None, negative_prompt_attention_mask=mask, height=128, width=128,
                    use_resolution_binning=False,
                    output_type="latent")
    else:
        raise ValueError(kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(call, num_inference_steps=2, guidance_scale=3.0)


def run(pipe, call: dict, seed: int = 0) -> torch.Tensor:
    out = pipe(**call, generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(out.images if hasattr(out, "images") else out[0])  # DiTPipeline decodes to numpy


def quantized_copy(denoiser: torch.nn.Module, recipe: str = "w8a8-minmax") -> torch.nn.Module:
    """A quantized copy calibrated on random inputs of the export signature (fast; fine for plumbing tests)."""
    import copy

    import trtq
    from trtq.export.inputs import DenoiserWrapper, signature_of

    sig = signature_of(denoiser)
    size = denoiser.config.sample_size
    calib = sig.example_inputs(2, size, size, seed=1)
    return trtq.quantize(copy.deepcopy(denoiser), recipe, lambda m: DenoiserWrapper(m, sig)(*calib.values()))


def tiny_clip(path: Path, hidden: int = 32, projection: int | None = None, tokens: int = TEXT_TOKENS):
    """(tokenizer, text encoder): a CLIP tokenizer with a four-entry vocabulary (written to `path`; unknown
    words become the end token) and a small CLIP text model (with a projection head when `projection`, as
    SDXL's second encoder), so a saved pipeline runs from prompts with nothing downloaded."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=tokens)
    torch.manual_seed(0)
    config = dict(vocab_size=4, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=tokens, bos_token_id=0, eos_token_id=1,
                  pad_token_id=1)
    if projection:
        return tokenizer, CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=projection)).eval()
    return tokenizer, CLIPTextModel(CLIPTextConfig(**config)).eval()


def tiny_t5(tokens: int = TEXT_TOKENS):
    """(tokenizer, text encoder) for PixArt: a T5 tokenizer over a six-piece vocabulary and a one-layer T5
    encoder of width 32 (the tiny PixArt's caption width)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), ("\u2581a", -1.0), ("\u2581cat", -1.0)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=tokens)
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                      num_heads=2, pad_token_id=0, eos_token_id=1)).eval()
    return tokenizer, encoder


def save_pipeline_folder(kind: str, path: Path) -> Path:
    """A tiny pipeline of each class saved with save_pretrained that runs end to end from its folder: the
    text-to-image ones with their tokenizers, text encoders and a VAE (prompts in, images out), "dit" as
    `build_pipeline` makes it."""
    from diffusers import PixArtAlphaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe, _ = build_pipeline(kind)
    files = path.parent / f"{path.name}-tokenizer-files"
    if kind == "sd15":
        tokenizer, encoder = tiny_clip(files)
        pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=encoder, tokenizer=tokenizer, unet=pipe.unet,
                                       scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    elif kind == "sdxl":  # the two encoders' widths add up to the UNet's cross-attention width (16 + 16)
        tokenizer, encoder = tiny_clip(files, hidden=16)
        _, encoder_2 = tiny_clip(files, hidden=16, projection=32)
        pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=encoder, text_encoder_2=encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=pipe.unet,
                                         scheduler=pipe.scheduler)
    elif kind == "pixart":
        tokenizer, encoder = tiny_t5()
        pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=tiny_vae(),
                                   transformer=pipe.transformer, scheduler=pipe.scheduler)
    elif kind != "dit":
        raise ValueError(kind)
    pipe.save_pretrained(path)
    return path
