"""TFMQ-DM: TIB detection, per-timestep scale tables (FSC), AdaRound reconstruction (TIAR/BRECQ), artifacts."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from trtq import quantize
from trtq.artifact import load_artifact, save_artifact
from trtq.errors import TrtqError
from trtq.nn.timestep import TimestepTensorQuantizer, route_timesteps, table_quantizers
from trtq.quantizer import fake_quantize
from trtq.recipes import Recipe, get_recipe
from trtq.scheme import QuantScheme
from trtq.tfmq.adaround import BetaSchedule, hard_rounding, init_logits, rectified_sigmoid, rounding_regularizer
from trtq.tfmq.layers import AdaRoundLinear
from trtq.tfmq.reconstruct import Call, brecq
from trtq.tfmq.tib import detect_temporal_modules

ACT = QuantScheme(format="int8", symmetric=False, observer="minmax")
W4 = QuantScheme(format="int4", granularity="channel", axis=0, symmetric=False, observer="minmax")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=4, norm_num_groups=4).eval()


def tiny_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1,
                                 num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()


def tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=2, cross_attention_dim=16, sample_size=8, patch_size=2,
                                    caption_channels=12, norm_num_groups=2).eval()


def dit_call(n=4, t=500):
    return (torch.randn(n, 1, 8, 8),), {"timestep": torch.full((n,), t), "class_labels": torch.arange(n) % 10}


# ------------------------------------------------------------------------------------------------ TIB
def test_tib_unet_random():
    r = detect_temporal_modules(tiny_unet(), (torch.randn(2, 1, 8, 8), torch.full((2,), 300)),
                                {"encoder_hidden_states": torch.randn(2, 3, 8)})
    assert {"time_proj", "time_embedding.linear_1", "time_embedding.linear_2"} <= set(r.time_only)
    projs = [n for n in r.time_only if n.endswith("time_emb_proj")]
    assert len(projs) == 2 + 2 + 4  # one per resnet: 2 down, 2 mid, 2 x 2 up
    assert not any("conv" in n or "attn" in n or "to_k" in n for n in r.tib())
    assert r.time_and_condition == []


def test_tib_dit_random_splits_time_and_label():
    args, kwargs = dit_call()
    r = detect_temporal_modules(tiny_dit(), args, kwargs)
    assert "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2" in r.time_only
    # adaLN modulation sees t and the class label: temporal, but not t alone.
    assert {"transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1.linear", "proj_out_1"} <= set(
        r.time_and_condition)
    assert not any("attn" in n or ".ff." in n or "pos_embed" in n for n in r.tib())
    assert "proj_out_1" not in r.tib(include_condition=False)


def test_tib_pixart_random():
    r = detect_temporal_modules(tiny_pixart(), (torch.randn(2, 4, 8, 8),),
                                {"encoder_hidden_states": torch.randn(2, 3, 12), "timestep": torch.tensor([10, 10]),
                                 "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}})
    assert {"adaln_single.emb.timestep_embedder.linear_1", "adaln_single.linear"} <= set(r.time_only)
    assert not any("caption" in n or "attn" in n for n in r.tib())


@pytest.mark.parametrize("name", ["digits-unet", "digits-dit"])
def test_tib_zoo(name):
    from trtq.zoo import load_model

    m = load_model(name)
    x, t, lab = torch.randn(2, 1, 32, 32), torch.full((2,), 700), torch.tensor([1, 10])
    if m.kind == "unet":
        r = detect_temporal_modules(m.denoiser, (x, t), {"encoder_hidden_states": m.label_encoder(lab)})
        assert sum(n.endswith("time_emb_proj") for n in r.time_only) == 11  # 3 down, 2 mid, 6 up resnets
        assert "time_embedding.linear_2" in r.time_only
    else:
        r = detect_temporal_modules(m.denoiser, (x,), {"timestep": t, "class_labels": lab})
        assert sum(n.endswith("norm1.linear") for n in r.time_and_condition) == 6
        assert sum(n.endswith("timestep_embedder.linear_2") for n in r.time_only) == 6


# ------------------------------------------------------------------------------------------------ FSC
class Toy(nn.Module):
    """A denoiser-shaped toy: its activation range grows with the timestep."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 8)

    def forward(self, sample, timestep):
        return self.lin(sample)


def calibrated_toy(on_unknown="error", steps=(10, 500, 990)):
    m = Toy()
    m.lin = AdaRoundLinear.from_float(m.lin, W4, ACT)
    m.lin.round_up = (torch.rand(m.lin.weight.shape) > 0.5).float()  # some learned rounding
    m.lin.input_quantizer = TimestepTensorQuantizer(ACT, on_unknown=on_unknown)
    route_timesteps(m)
    for t in steps:
        m(torch.randn(4, 8) * (1 + t / 100), torch.full((4,), t))
    m.lin.input_quantizer.finish_calibration()
    return m


def test_table_rows_selected_by_timestep():
    m = calibrated_toy()
    q = m.lin.input_quantizer
    assert q.timesteps.tolist() == [10, 500, 990] and q.scale.shape == (3,)
    assert q.scale[0] < q.scale[1] < q.scale[2]  # wider ranges at later steps
    x = torch.randn(3, 8) * 5
    steps = torch.tensor([990, 10, 500])
    rows = [2, 0, 1]
    want = torch.stack([fake_quantize(x[i], q.scale[r], q.zero_point[r], ACT) for i, r in enumerate(rows)])
    with q.router.bind(steps):
        assert torch.equal(q(x), want)
    with q.router.bind(torch.tensor(10)):  # one timestep for the whole batch
        assert torch.equal(q(x), fake_quantize(x, q.scale[0], q.zero_point[0], ACT))


def test_table_outside_a_call_raises():
    m = calibrated_toy()
    with pytest.raises(TrtqError, match="outside a denoiser call"):
        m.lin.input_quantizer(torch.randn(2, 8))


def test_uncalibrated_timestep_error_and_nearest():
    m = calibrated_toy()
    with pytest.raises(TrtqError, match=r"timestep\(s\) 400 were not calibrated"):
        m(torch.randn(2, 8), torch.full((2,), 400))
    near = calibrated_toy(on_unknown="nearest")
    x = torch.randn(2, 8)
    with pytest.warns(UserWarning, match="nearest calibrated"):
        y = near(x, torch.full((2,), 400))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(y, near(x, torch.full((2,), 500)))


def test_table_quantizer_compiles_without_graph_break_and_exports():
    import torch._dynamo

    m = calibrated_toy()
    x, t = torch.randn(4, 8), torch.full((4,), 500)
    with torch.no_grad():
        ref = m(x, t)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = torch.compile(m, backend="eager", fullgraph=True)  # fullgraph: any graph break raises
        assert torch.equal(compiled(x, t), ref)
        assert torch.equal(compiled(x, torch.full((4,), 10)), m(x, torch.full((4,), 10)))  # same graph, other row
        assert not torch._dynamo.utils.counters["graph_break"]
    ep = torch.export.export(m, (x, t))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.index_select.default" in ops and "aten.argmin.default" in ops  # the lookup is in the graph
    assert torch.equal(ep.module()(x, t), ref)
    assert torch.equal(ep.module()(x, torch.full((4,), 990)), m(x, torch.full((4,), 990)))


# ------------------------------------------------------------------------------------------------ AdaRound
def test_adaround_regularizer_and_schedule():
    zeta_v = torch.tensor([-20.0, 20.0])  # h = 0 and h = 1 exactly (rectified)
    assert torch.equal(rectified_sigmoid(zeta_v), torch.tensor([0.0, 1.0]))
    assert rounding_regularizer(zeta_v, 2.0).item() == 0.0
    half = torch.zeros(5)  # h(0) = 0.5: the regularizer's maximum, 1 per weight
    assert rounding_regularizer(half, 20.0).item() == pytest.approx(5.0)
    frac = torch.tensor([0.1, 0.5, 0.9, 3.25])
    assert torch.allclose(rectified_sigmoid(init_logits(frac)), frac - frac.floor(), atol=1e-5)
    beta = BetaSchedule(100)
    assert beta(0) is None and beta(19) is None and beta(20) == 20.0 and beta(99) == pytest.approx(2.225)
    assert torch.equal(hard_rounding(torch.tensor([-0.1, 0.0, 2.0])), torch.tensor([0.0, 1.0, 1.0]))


def test_block_reconstruction_learns_then_rounds_hard():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

        def forward(self, sample, timestep):
            return self.b(torch.relu(self.a(sample)))

    net = Net()
    x = torch.randn(64, 16)
    fp = net(x, None).detach()
    for n in ("a", "b"):
        setattr(net, n, AdaRoundLinear.from_float(getattr(net, n), W4, None))
    with torch.no_grad():
        nearest = (net(x, None) - fp).pow(2).sum(1).mean().item()
    layers = {"a": net.a, "b": net.b}
    stats = brecq(net, [Call((x, torch.zeros(64)), {}, torch.zeros(64))], layers, iters=60, lr=1e-2, batch=64,
                  progress=False)
    assert [s[0] for s in stats] == ["a", "b"]
    for layer in layers.values():
        assert layer.soft_rounding is None
        assert set(layer.round_up.unique().tolist()) <= {0.0, 1.0}
        wq = layer.weight_quantizer
        codes = layer.quantized_weight() / wq.scale + wq.zero_point
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.round().min() >= 0 and codes.round().max() <= 15
        # hard rounding is floor or ceil of every weight: within one step of the float weight
        assert ((layer.quantized_weight() - layer.weight).abs() <= wq.scale + 1e-6).all()
    with torch.no_grad():
        learned = (net(x, None) - fp).pow(2).sum(1).mean().item()
    assert learned < nearest


# ------------------------------------------------------------------------------------------------ end to end
def tiny_recipe(**method_args) -> Recipe:
    d = get_recipe("w4a8-tfmq").to_dict()
    d["method_args"] = {"tiar_iters": 3, "iters": 2, "progress": False, **method_args}
    return Recipe.from_dict(d)


def dit_calib_loop(steps=(999, 500, 1)):
    def loop(model):
        for t in steps:
            torch.manual_seed(t)
            args, kwargs = dit_call(4, t)
            model(*args, **kwargs)
    return loop


def test_tfmq_artifact_round_trip_with_tables(tmp_path):
    float_model = tiny_dit()
    q = quantize(copy.deepcopy(float_model), tiny_recipe(), dit_calib_loop())
    stats = q.trtq_tfmq_stats
    assert "transformer_blocks.0.norm1.linear" in stats["tib"] and stats["timesteps"] == 3
    tables = dict(table_quantizers(q))
    assert tables and all(t.timesteps.tolist() == [1, 500, 999] for t in tables.values())
    assert all(m.round_up is not None for n, m in q.named_modules() if hasattr(m, "round_up"))
    args, kwargs = dit_call(4, 500)
    with torch.no_grad():
        ref = q(*args, **kwargs).sample
    save_artifact(q, tmp_path / "a", "tiny-dit")
    loaded = load_artifact(copy.deepcopy(float_model), tmp_path / "a")
    assert set(dict(table_quantizers(loaded))) == set(tables)
    with torch.no_grad():
        assert torch.equal(loaded(*args, **kwargs).sample, ref)
        with pytest.raises(TrtqError, match="not calibrated"):
            loaded(*dit_call(4, 250)[0], **dit_call(4, 250)[1])
    dup = copy.deepcopy(loaded)  # a copy routes its own timesteps
    with torch.no_grad():
        assert torch.equal(dup(*args, **kwargs).sample, ref)


def test_brecq_baseline_keeps_mixed_ranges_and_tib_inside_blocks():
    d = get_recipe("w4a8-brecq").to_dict()
    d["method_args"] = {"iters": 2, "progress": False}
    q = quantize(tiny_dit(), Recipe.from_dict(d), dit_calib_loop())
    assert not list(table_quantizers(q))
    assert not any(u["name"] == "tib" for u in q.trtq_tfmq_stats["units"])
    with pytest.raises(TrtqError, match="unknown brecq method_args"):
        Recipe.from_dict({**d, "method_args": {"fsc": "all"}}) and quantize(tiny_dit(), Recipe.from_dict(
            {**d, "method_args": {"fsc": "all"}}), dit_calib_loop())


def test_bad_method_args_are_refused():
    with pytest.raises(TrtqError, match="fsc must be"):
        quantize(tiny_dit(), tiny_recipe(fsc="some"), dit_calib_loop())


def test_table_sections_keep_the_main_table(tmp_path):
    """`--section NAME` writes its own block (appended once, replaced when re-run); the main table and the
    prose around both stay as they were."""
    from trtq.eval.tables.tfmq import write_doc

    doc = tmp_path / "tfmq.md"
    write_doc(doc, "main table", "cmd main")
    doc.write_text("# TFMQ\n\nprose before\n\n" + doc.read_text().split("\n", 2)[2] + "\nprose after\n")
    write_doc(doc, "longer run v1", "cmd longer", section="longer")
    write_doc(doc, "longer run v2", "cmd longer", section="longer")
    text = doc.read_text()
    assert text.count("<!-- tfmq-table:longer:begin -->") == 1 and "longer run v2" in text and "v1" not in text
    assert "main table" in text and "prose before" in text and "prose after" in text
    assert text.index("<!-- tfmq-table:end -->") < text.index("<!-- tfmq-table:longer:begin -->")
