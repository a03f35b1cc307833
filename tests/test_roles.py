"""Roles found from structure on every supported architecture; recipes that decide by role; the plan table and
its warning when a recipe's special layer kind matches nothing."""

import re
import warnings

import pytest
import torch
from torch import nn

from trtq import TrtqError
from trtq.architectures import ARCHITECTURES, build_architecture
from trtq.inspect import format_plan, plan_layers, quantization_plan
from trtq.recipes import LayerRule, Recipe, get_recipe
from trtq.roles import ROLES, find_roles
from trtq.scheme import QuantScheme


def _pattern_roles(model):
    """{name with block indices as N: role}: one entry per kind of layer."""
    return {re.sub(r"\.\d+(?=\.)", ".N", n): r for n, r in find_roles(model).items()}


EXPECTED = {
    "sd15": {"conv_in": "input_proj", "conv_out": "output_proj", "time_embedding.linear_1": "timestep_embedder",
             "time_embedding.linear_2": "timestep_embedder",
             "down_blocks.N.resnets.N.time_emb_proj": "timestep_proj",
             "up_blocks.N.resnets.N.time_emb_proj": "timestep_proj",
             "mid_block.resnets.N.time_emb_proj": "timestep_proj"},
    "dit-xl-2": {"pos_embed.proj": "patch_embed", "proj_out_1": "adaln", "proj_out_2": "output_proj",
                 "transformer_blocks.N.norm1.linear": "adaln",
                 "transformer_blocks.N.norm1.emb.timestep_embedder.linear_1": "timestep_embedder",
                 "transformer_blocks.N.norm1.emb.timestep_embedder.linear_2": "timestep_embedder",
                 "transformer_blocks.N.norm1.emb.class_embedder.embedding_table": "label_embedder"},
    "pixart-alpha": {"pos_embed.proj": "patch_embed", "proj_out": "output_proj", "adaln_single.linear": "adaln",
                     "caption_projection.linear_1": "caption_embedder",
                     "caption_projection.linear_2": "caption_embedder"},
    "sd3-medium": {"pos_embed.proj": "patch_embed", "context_embedder": "caption_embedder",
                   "proj_out": "output_proj", "norm_out.linear": "adaln",
                   "transformer_blocks.N.norm1.linear": "adaln", "transformer_blocks.N.norm1_context.linear": "adaln",
                   "time_text_embed.timestep_embedder.linear_1": "timestep_embedder",
                   "time_text_embed.text_embedder.linear_1": "caption_embedder"},
    "flux-dev": {"x_embedder": "input_proj", "context_embedder": "caption_embedder", "proj_out": "output_proj",
                 "norm_out.linear": "adaln", "single_transformer_blocks.N.norm.linear": "adaln",
                 "transformer_blocks.N.norm1_context.linear": "adaln",
                 "time_text_embed.guidance_embedder.linear_2": "timestep_embedder",
                 "time_text_embed.text_embedder.linear_2": "caption_embedder"},
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_roles_found_from_structure_at_published_size(arch):
    roles = _pattern_roles(build_architecture(arch, device="meta"))
    assert set(roles.values()) <= set(ROLES)
    for name, role in EXPECTED.get(arch, {}).items():
        assert roles.get(name) == role, name
    # the compute layers of the blocks have no role: attention and MLP linears, resnet convs
    assert not any(re.search(r"(to_[qkv]|ff\.net|proj_mlp|resnets\.N\.conv\d)$", n) for n in roles)


def test_sdxl_added_conditioning_is_an_embedder():
    roles = find_roles(build_architecture("sdxl", device="meta"))
    assert roles["add_embedding.linear_1"] == roles["add_embedding.linear_2"] == "timestep_embedder"
    assert roles["conv_in"] == "input_proj" and roles["conv_out"] == "output_proj"


def test_roles_do_not_depend_on_names():
    class Renamed(nn.Module):  # a UNet-shaped model whose layers have names no recipe knows
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(4, 8, 3)
            self.stack = nn.ModuleList([nn.Conv2d(8, 8, 3)])
            self.modulate = nn.Linear(8, 16)
            self.last = nn.Conv2d(8, 4, 3)

    roles = find_roles(Renamed())
    assert roles == {"first": "input_proj", "modulate": "adaln", "last": "output_proj"}


FP4_FAMILY = ("w4a4-fp4-minmax", "w4a4-fp4-hqdit", "w4a4-nvfp4", "w4a8-fp4", "w4a4-int4")


@pytest.mark.parametrize("recipe", FP4_FAMILY)
@pytest.mark.parametrize("arch", ("pixart-alpha", "dit-xl-2", "sd3-medium", "flux-dev"))
def test_4bit_recipes_keep_conditioning_and_projections_at_w8a8_by_role(arch, recipe):
    model = build_architecture(arch, tiny=True, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = quantization_plan(model, recipe)
    for r in rows:
        if r.role in ("adaln", "timestep_embedder", "caption_embedder", "output_proj", "input_proj"):
            assert r.kind == "fake" and r.scheme.startswith("w: int8"), r
        elif r.role == "patch_embed":
            assert r.kind == "float"
    assert any(r.role is None and r.scheme.startswith(("w: fp4", "w: int4")) for r in rows)


def test_pixart_adaln_and_caption_projection_decided_by_role():
    rows = {r.name: r for r in quantization_plan(build_architecture("pixart-alpha", device="meta"),
                                                 "w4a4-fp4-minmax")}
    for name in ("adaln_single.linear", "caption_projection.linear_1", "caption_projection.linear_2"):
        assert rows[name].kind == "fake" and "role" in rows[name].why
    assert rows["transformer_blocks.3.attn1.to_q"].kind == "fp4"
    table = format_plan(list(rows.values()))
    assert "adaln_single.linear" in table and "x fp4" in table


def _warnings(model, recipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan_layers(model, recipe)
    return [str(w.message) for w in caught]


def test_a_recipe_whose_layer_kind_matches_nothing_warns_once_with_counts():
    dit = build_architecture("dit-xl-2", tiny=True, device="meta")
    (msg,) = _warnings(dit, "w8a8-winograd-f43")
    assert "'winograd' rules match no layer" in msg and "1 Conv2d" in msg
    unet = build_architecture("sd15", tiny=True, device="meta")
    convs = sum(type(m) is nn.Conv2d for m in unet.modules())
    (msg,) = _warnings(unet, "w4a4-fp4-minmax")
    assert f"leaves {convs - 2} of {convs} Conv2d layers in float" in msg  # conv_in / conv_out by role
    assert _warnings(unet, "w8a8-minmax") == [] and _warnings(unet, "w8a8-winograd-f43") == []


W8 = QuantScheme(format="int8", granularity="channel", axis=0)


def test_rules_by_role_round_trip_and_unknown_roles_are_refused():
    recipe = Recipe(name="r", keep_float_roles=("patch_embed",),
                    rules=(LayerRule(roles=("adaln",), weight=W8), LayerRule(weight=QuantScheme(format="int4"))))
    again = Recipe.from_dict(recipe.to_dict())
    assert again == recipe
    lin = nn.Linear(4, 4)
    assert recipe.rule_for("x", lin, "adaln") is recipe.rules[0]
    assert recipe.rule_for("x", lin, None) is recipe.rules[1]
    assert recipe.decide("x", nn.Conv2d(1, 1, 1), "patch_embed") == (None, "keep_float role patch_embed")
    with pytest.raises(TrtqError, match="unknown roles"):
        Recipe(name="r", rules=(LayerRule(roles=("adaLN",), weight=W8),))


def test_method_knobs_set_without_writing_a_recipe():
    recipe = get_recipe("w8a8-winograd-f43").with_overrides({"winograd.steps": 5})
    assert recipe.method_args["steps"] == 5 and recipe.method_args["lr"] == 0.05
    with pytest.raises(TrtqError, match="winograd.<arg>"):
        get_recipe("w8a8-winograd-f43").with_overrides({"hqdit.steps": 5})
    with pytest.raises(TrtqError):
        get_recipe("w8a8-minmax").with_overrides({"winograd.steps": 5})
