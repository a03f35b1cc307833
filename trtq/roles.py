"""What a layer does in a diffusion model, found from the model's structure rather than from one model's names.

Recipes keep some layers in higher precision because of their role (adaLN modulation, embedders, the final
projection...). Names differ between architectures (`adaln_single.linear` in PixArt, `norm1.linear` in DiT,
`norm_out.linear` in SD3/Flux, `time_emb_proj` in UNets), so a role is found from:
- what the layer sits in: the innermost enclosing module whose class (or a base class) is a known diffusers
  building block: `TimestepEmbedding`, `LabelEmbedding`, `PixArtAlphaTextProjection`, `AdaLayerNorm*`,
  `PatchEmbed`, `ResnetBlock*`; these blocks are shared by every diffusers architecture;
- where a top-level layer sits: the model's own Conv2d/Linear/Embedding children registered before its
  block lists (`nn.ModuleList`) take the inputs, those after them produce the output. On the input side a
  layer whose input width is the model's `config.in_channels` is the latent's input projection (conv_in,
  x_embedder), any other an embedder of the text/label conditioning (SD3/Flux `context_embedder`); on the
  output side the last one is the output projection (conv_out, proj_out) and the others modulate the final
  norm (DiT's `proj_out_1`).
"""

from __future__ import annotations

from torch import nn

ROLES: dict[str, str] = {
    "timestep_embedder": "MLP embedding the timestep or another scalar condition (TimestepEmbedding)",
    "label_embedder": "class-label embedding table",
    "caption_embedder": "projection of the text/caption conditioning (caption_projection, context_embedder)",
    "adaln": "adaLN modulation: conditioning -> scale/shift/gate of a norm (AdaLayerNorm*, DiT proj_out_1)",
    "timestep_proj": "per-block projection of the timestep embedding into a UNet resnet (time_emb_proj)",
    "patch_embed": "patch embedding of the latent (PatchEmbed's strided conv)",
    "input_proj": "first layer on the latent (UNet conv_in, Flux x_embedder)",
    "output_proj": "last layer, producing the model output (UNet conv_out, DiT/SD3/Flux proj_out)",
}

# diffusers building blocks -> the role of the layers inside them (innermost block wins).
_BLOCK_ROLES = {
    "TimestepEmbedding": "timestep_embedder",
    "LabelEmbedding": "label_embedder",
    "PixArtAlphaTextProjection": "caption_embedder",
    "TextImageProjection": "caption_embedder",
    "ImageProjection": "caption_embedder",
    "PatchEmbed": "patch_embed",
}
_LEAVES = (nn.Linear, nn.Conv2d, nn.Embedding)


def _block_role(module: nn.Module, leaf: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        name = cls.__name__
        if name in _BLOCK_ROLES:
            return _BLOCK_ROLES[name]
        if name.startswith("AdaLayerNorm"):
            return "adaln"
        if name.startswith("ResnetBlock") and isinstance(leaf, nn.Linear):
            return "timestep_proj"  # a resnet's only Linear maps the timestep embedding into it
    return None


def _input_width(leaf: nn.Module) -> int | None:
    if isinstance(leaf, nn.Linear):
        return leaf.in_features
    if isinstance(leaf, nn.Conv2d):
        return leaf.in_channels
    return None


def _top_level_roles(model: nn.Module) -> dict[str, str]:
    children = list(model.named_children())
    blocks = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.ModuleList)]
    if not blocks:
        return {}
    in_channels = getattr(getattr(model, "config", None), "in_channels", None)
    roles = {}
    for name, m in children[: blocks[0]]:
        if isinstance(m, nn.Embedding):
            roles[name] = "label_embedder"
        elif isinstance(m, _LEAVES):
            latent = in_channels is None or _input_width(m) == in_channels
            roles[name] = "input_proj" if latent else "caption_embedder"
    after = [(name, m) for name, m in children[blocks[-1] + 1:] if isinstance(m, (nn.Linear, nn.Conv2d))]
    for name, _ in after[:-1]:
        roles[name] = "adaln"
    if after:
        roles[after[-1][0]] = "output_proj"
    return roles


def find_roles(model: nn.Module) -> dict[str, str]:
    """{qualified name: role} for every Linear/Conv2d/Embedding of `model` that has a role (see ROLES)."""
    roles = _top_level_roles(model)
    enclosing: dict[str, list[nn.Module]] = {"": []}  # name -> the modules enclosing it, outermost first
    for name, module in model.named_modules():
        chain = enclosing[name] + [module]
        for child_name, _ in module.named_children():
            enclosing[f"{name}.{child_name}" if name else child_name] = chain
        if not isinstance(module, _LEAVES) or name in roles:
            continue
        for parent in reversed(enclosing[name]):
            role = _block_role(parent, module)
            if role is not None:
                roles[name] = role
                break
    return roles
