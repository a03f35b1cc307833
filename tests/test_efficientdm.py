"""EfficientDM: QALoRA merge-before-quantize, scale-aware learning rates, TALSQ tables, data-free distillation
with checkpoint/resume, and artifacts that hold merged quantized weights only."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from trtq import quantize
from trtq.artifact import load_artifact, save_artifact
from trtq.efficientdm.distill import DistillConfig, DistillStep, StepLossScale, guided, lr_factor
from trtq.efficientdm.qalora import (
    FullDelta,
    LowRankDelta,
    QALoRAConv2d,
    QALoRAFP4Train,
    QALoRALinear,
    attach_adapters,
    merge_adapters,
)
from trtq.errors import TrtqError
from trtq.methods.efficientdm import float_teacher, param_groups, parse_args
from trtq.nn.fp4_linear import FP4Linear
from trtq.nn.timestep import (
    TimestepTensorQuantizer,
    resample_table,
    set_steps_learnable,
    table_quantizers,
)
from trtq.recipes import Recipe, get_recipe
from trtq.scheme import QuantScheme

W4 = QuantScheme(format="int4", granularity="channel", axis=0, symmetric=True, observer="minmax")
W4_ASYM = QuantScheme(format="int4", granularity="channel", axis=0, symmetric=False, observer="minmax")
A8 = QuantScheme(format="int8", symmetric=False, observer="minmax")


pytestmark = pytest.mark.usefixtures("one_thread")


def nonzero_b(adapter: LowRankDelta, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.B.copy_(torch.randn(adapter.B.shape, generator=gen) * 0.05)


# ----------------------------------------------------------------------------------------- QALoRA
def test_low_rank_delta_is_kxk_conv_then_1x1_conv_and_linear_branch():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    ad = LowRankDelta(conv.weight, rank=2)
    nonzero_b(ad)
    x = torch.randn(2, 3, 9, 9)
    merged = F.conv2d(x, conv.weight + ad.delta(), conv.bias, stride=2, padding=1)
    a_conv = F.conv2d(x, ad.A.reshape(2, 3, 3, 3), stride=2, padding=1)  # k×k conv Cin -> r
    branch = F.conv2d(a_conv, ad.B.reshape(5, 2, 1, 1))  # 1×1 conv r -> Cout
    torch.testing.assert_close(merged, conv(x) + branch, rtol=1e-5, atol=1e-5)

    lin = nn.Linear(6, 4)
    ad = LowRankDelta(lin.weight, rank=3)
    nonzero_b(ad)
    x = torch.randn(5, 6)
    branch = F.linear(F.linear(x, ad.A), ad.B)  # x -> A -> B beside the layer
    torch.testing.assert_close(F.linear(x, lin.weight + ad.delta(), lin.bias), lin(x) + branch)
    assert torch.count_nonzero(LowRankDelta(lin.weight, rank=3).delta()) == 0  # B = 0: starts at the PTQ init


@pytest.mark.parametrize("kind,weight", [("conv", W4), ("conv", W4_ASYM), ("linear", W4), ("linear", W4_ASYM)])
def test_merged_layer_equals_unmerged_quantized_forward(kind, weight):
    torch.manual_seed(0)
    if kind == "conv":
        layer = QALoRAConv2d.from_float(nn.Conv2d(4, 6, 3, padding=1), weight, None)
        x = torch.randn(2, 4, 5, 5)
    else:
        layer = QALoRALinear.from_float(nn.Linear(8, 6), weight, None)
        x = torch.randn(3, 8)
    w0 = layer.weight.detach().clone()
    init = layer(x)
    layer.adapter = LowRankDelta(layer.weight, rank=2)
    torch.testing.assert_close(layer(x), init, rtol=0, atol=0)  # B = 0: exactly the PTQ layer
    nonzero_b(layer.adapter, seed=3)
    unmerged = layer(x)  # Q(W0 + B·A), differentiable
    layer.merge()
    assert layer.adapter is None
    torch.testing.assert_close(layer(x), unmerged, rtol=0, atol=0)  # stored codes reproduce it bit for bit
    assert torch.equal(layer.weight, w0)  # the float weight (the model's fingerprint) never changes
    assert not torch.equal(layer(x), init)
    assert layer.weight_codes.dtype == (torch.int8 if weight.symmetric else torch.uint8)


def test_fp4_training_twin_merges_into_packed_weights():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    wq = QuantScheme(format="fp4_e2m1", granularity="group", axis=1, group_size=32, observer="minmax")
    aq = QuantScheme(format="fp4_e2m1", granularity="group", axis=-1, group_size=32, dynamic=True)
    layer = FP4Linear.from_float(lin, wq, aq, group_size=32)
    layer.set_rotation(torch.tensor([1, -1] * 32))
    model = nn.Sequential(layer)
    x = torch.randn(5, 64)
    init = model(x)
    adapters = attach_adapters(model, "lora", rank=4)
    assert isinstance(model[0], QALoRAFP4Train)
    torch.testing.assert_close(model(x), init, rtol=1e-5, atol=1e-5)  # the twin computes what the op does
    nonzero_b(adapters["0"])
    trained = model(x)
    assert merge_adapters(model) == 1
    assert type(model[0]) is FP4Linear and not any("adapter" in k for k in model.state_dict())
    torch.testing.assert_close(model(x), trained, rtol=1e-5, atol=1e-5)


def test_gradients_reach_a_b_and_step_sizes():
    torch.manual_seed(0)
    layer = QALoRALinear.from_float(nn.Linear(8, 6), W4, A8)
    layer.input_quantizer.calibrate_from(torch.randn(64, 8))
    layer.requires_grad_(False)  # as the method does: only the update and the steps train
    layer.adapter = LowRankDelta(layer.weight, rank=2)
    w_step = set_steps_learnable(layer.weight_quantizer, True)
    a_step = set_steps_learnable(layer.input_quantizer, True)
    x = torch.randn(16, 8)
    layer(x).pow(2).sum().backward()
    assert layer.adapter.B.grad.abs().sum() > 0
    assert layer.adapter.A.grad.abs().sum() == 0  # B = 0 at start: A learns once B has moved (as in LoRA)
    nonzero_b(layer.adapter)
    layer.zero_grad()
    layer(x).pow(2).sum().backward()
    for g in (layer.adapter.A.grad, layer.adapter.B.grad, w_step.grad, a_step.grad):
        assert g is not None and g.abs().sum() > 0
    assert layer.weight.grad is None  # the float weight itself is never trained
    set_steps_learnable(layer.weight_quantizer, False)
    assert "scale" in layer.weight_quantizer._buffers and "scale" not in layer.weight_quantizer._parameters


def test_scale_aware_learning_rates_follow_the_rule():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    small = QALoRALinear.from_float(copy.deepcopy(lin), W4, None)
    with torch.no_grad():
        lin.weight.mul_(10)  # the same weights ten times larger: ten times the weight steps
    big = QALoRALinear.from_float(lin, W4, None)
    model = nn.ModuleDict({"big": big, "small": small})
    steps = {n: float(m.weight_quantizer.scale.mean()) for n, m in model.items()}
    adapters = attach_adapters(model, "lora", rank=2)
    a, cfg = parse_args({"lr": 0.5, "step_lr": 0.01})
    learned = {"big.weight_quantizer": set_steps_learnable(big.weight_quantizer, True)}
    groups = param_groups(steps, adapters, learned, a, cfg)
    lr = {(g["name"], id(g["params"][0])): g["lr"] for g in groups}
    for name in ("big", "small"):
        for p in adapters[name].parameters():
            assert lr[(name, id(p))] == pytest.approx(0.5 * steps[name])
    assert steps["big"] == pytest.approx(10 * steps["small"], rel=1e-5)
    s = learned["big.weight_quantizer"]
    assert lr[("big.weight_quantizer", id(s))] == pytest.approx(0.01 * float(s.detach().mean()))
    a, cfg = parse_args({"adapter": "full", "lr": 1e-4})  # QAT: one plain learning rate
    adapters = {"big": FullDelta(big.weight)}
    assert {g["lr"] for g in param_groups(steps, adapters, {}, a, cfg)} == {1e-4}


# ----------------------------------------------------------------------------------------- TALSQ
class TimeToy(nn.Module):
    """A denoiser-shaped toy: conv, linear and conv, with the timestep scaling the features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv_a = nn.Conv2d(2, 8, 3, padding=1)
        self.lin = nn.Linear(8, 8)
        self.conv_b = nn.Conv2d(8, 2, 1)

    def forward(self, sample, timestep):
        h = self.conv_a(sample) * (1 + timestep.reshape(-1, 1, 1, 1) / 500)
        h = F.silu(self.lin(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.conv_b(h)


STEPS = (900, 500, 100)


class ToyLoop:
    """Round r: 4 samples from noise seeded r through 3 steps (advancing with the denoiser's prediction)."""

    def round(self, denoiser, r):
        x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(r))
        with torch.no_grad():
            for t in STEPS:
                x = x - 0.1 * denoiser(x, torch.full((4,), float(t)))

    def __call__(self, denoiser):
        self.round(denoiser, 0)


def toy_recipe(**method_args) -> Recipe:
    return Recipe.from_dict({"name": "toy-efficientdm", "method": "efficientdm",
                             "method_args": {"rank": 2, "rounds": 2, "progress": False, "lr": 0.05, **method_args},
                             "rules": [{"pattern": "*", "layer": "qalora", "weight": W4.to_dict(),
                                        "input": {"format": "int4", "symmetric": False, "observer": "minmax"}}]})


def test_talsq_tables_indexed_by_the_explicit_timestep_and_learned_per_row():
    model = quantize(TimeToy(), toy_recipe(rounds=0), ToyLoop())
    tables = dict(table_quantizers(model))
    assert set(tables) == {"conv_a.input_quantizer", "lin.input_quantizer", "conv_b.input_quantizer"}
    q = tables["lin.input_quantizer"]
    assert q.timesteps.tolist() == sorted(STEPS)
    assert len(set(q.scale.tolist())) == 3  # one calibrated step per timestep (the ranges move with t)
    step = set_steps_learnable(q, True)
    x = torch.randn(2, 2, 6, 6)
    model(x, torch.tensor([500.0, 500.0])).pow(2).sum().backward()
    assert step.grad[1] != 0 and step.grad[0] == 0 and step.grad[2] == 0  # only t=500's row learns
    set_steps_learnable(q, False)
    with pytest.raises(TrtqError, match="outside a denoiser call"):
        q(torch.randn(2, 8))


def test_talsq_table_subsample_and_interpolate():
    q = TimestepTensorQuantizer(A8)
    q.timesteps = torch.tensor([100.0, 500.0, 900.0])
    q.scale = torch.tensor([1.0, 2.0, 4.0])
    q.zero_point = torch.tensor([10.0, 20.0, 40.0])
    sub = copy.deepcopy(q)
    resample_table(sub, [900, 100], "subsample")
    assert sub.timesteps.tolist() == [100.0, 900.0] and sub.scale.tolist() == [1.0, 4.0]
    assert sub.zero_point.tolist() == [10.0, 40.0]
    with pytest.raises(TrtqError, match="not in the table"):
        resample_table(copy.deepcopy(q), [300], "subsample")
    inter = copy.deepcopy(q)
    resample_table(inter, [0, 300, 700, 900, 999], "interpolate")
    assert inter.scale.tolist() == pytest.approx([1.0, 1.5, 3.0, 4.0, 4.0])
    assert inter.zero_point.tolist() == [10.0, 15.0, 30.0, 40.0, 40.0]
    with pytest.raises(TrtqError, match="retiming must be one of"):
        resample_table(copy.deepcopy(q), [100], "nearest")


# ----------------------------------------------------------------------------------------- distillation
def trained_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("weight_codes", "scale"))}


def test_distillation_lowers_the_loss_and_moves_weights_and_steps():
    init = trained_tensors(quantize(TimeToy(), toy_recipe(rounds=0), ToyLoop()))
    replay = lambda denoiser: ToyLoop().round(denoiser, 0)  # noqa: E731  (a plain loop: the same data each round)
    model = quantize(TimeToy(), toy_recipe(rounds=20, lr=0.2, step_lr=0.01), replay)
    stats = model.trtq_efficientdm_stats
    assert stats["iterations"] == 20 * len(STEPS) and stats["layers"] == 3
    assert stats["trainable_parameters"] == sum(2 * (m.weight.shape[0] + m.weight[0].numel())
                                                for m in (model.conv_a, model.lin, model.conv_b))
    assert stats["history"][-1]["loss"] < 0.7 * stats["history"][0]["loss"]  # same data: the loss must fall
    after = trained_tensors(model)
    assert any(not torch.equal(init[k], after[k]) for k in init if k.endswith("weight_codes"))
    assert any(not torch.equal(init[k], after[k]) for k in init if k.endswith("input_quantizer.scale"))
    assert not any(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("weighting", ["uniform", "relative"])
def test_resume_equals_an_uninterrupted_run(tmp_path, weighting):
    whole = trained_tensors(quantize(TimeToy(), toy_recipe(rounds=3, step_weighting=weighting), ToyLoop()))
    ckpt = str(tmp_path / "ckpt")
    # "interrupted" after 2 rounds (relative: the per-timestep running means must come back too)
    quantize(TimeToy(), toy_recipe(rounds=2, checkpoint=ckpt, step_weighting=weighting), ToyLoop())
    resumed = quantize(TimeToy(), toy_recipe(rounds=3, checkpoint=ckpt, step_weighting=weighting), ToyLoop())
    assert resumed.trtq_efficientdm_stats["resumed_from_round"] == 2
    assert resumed.trtq_efficientdm_stats["iterations"] == 3 * len(STEPS)
    got = trained_tensors(resumed)
    assert got.keys() == whole.keys()
    for k in whole:
        assert torch.equal(got[k], whole[k]), k
    with pytest.raises(TrtqError, match="another configuration"):
        quantize(TimeToy(), toy_recipe(rounds=3, lr=0.01, checkpoint=ckpt, step_weighting=weighting), ToyLoop())


class FailingLoop(ToyLoop):
    """ToyLoop that dies in round `fail_at` (an interrupted run)."""

    def __init__(self, fail_at: int):
        self.fail_at = fail_at

    def round(self, denoiser, r):
        if r == self.fail_at:
            raise KeyboardInterrupt
        super().round(denoiser, r)


def test_resume_with_a_learning_rate_schedule_equals_an_uninterrupted_run(tmp_path):
    args = {"rounds": 3, "warmup": 4, "lr_schedule": "cosine"}
    whole = trained_tensors(quantize(TimeToy(), toy_recipe(**args), ToyLoop()))
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):  # the same run, killed in its last round
        quantize(TimeToy(), toy_recipe(**args, checkpoint=ckpt), FailingLoop(fail_at=2))
    resumed = quantize(TimeToy(), toy_recipe(**args, checkpoint=ckpt), ToyLoop())
    assert resumed.trtq_efficientdm_stats["resumed_from_round"] == 2
    got = trained_tensors(resumed)
    for k in whole:
        assert torch.equal(got[k], whole[k]), k
    # the cosine depends on the round count: a longer run is another schedule, not a continuation
    with pytest.raises(TrtqError, match="another configuration"):
        quantize(TimeToy(), toy_recipe(**{**args, "rounds": 4}, checkpoint=ckpt), ToyLoop())


def test_lr_schedule_warms_up_per_step_and_decays_per_round(monkeypatch):
    cfg = DistillConfig(rounds=4, warmup=5, lr_schedule="cosine")
    assert [lr_factor(cfg, i, 0) for i in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert [lr_factor(cfg, 10, r) for r in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    assert lr_factor(DistillConfig(), 0, 3) == 1.0
    # the rates the optimizer actually steps with: every group's own rate times the factor
    seen = []
    original = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        seen.append([(g["lr"], g["base_lr"]) for g in self.param_groups])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    quantize(TimeToy(), toy_recipe(rounds=4, warmup=5, lr_schedule="cosine"), ToyLoop())
    assert len(seen) == 4 * len(STEPS)
    assert len({b for groups in seen for _, b in groups}) > 1  # several base rates (scale-aware + steps)
    for i, groups in enumerate(seen):
        f = lr_factor(cfg, i, i // len(STEPS))
        for lr, base in groups:
            assert lr == pytest.approx(base * f, rel=1e-12)
    with pytest.raises(TrtqError, match="lr_schedule"):
        DistillConfig(lr_schedule="step").check()
    with pytest.raises(TrtqError, match="warmup"):
        DistillConfig(warmup=-1).check()


def test_relative_step_weighting_divides_each_call_by_its_timesteps_running_mean():
    scale = StepLossScale(TimeToy(), momentum=0.5)
    x = torch.zeros(2, 2, 4, 4)
    call = lambda t, loss: scale.weight((x, torch.full((2,), float(t))), {}, torch.tensor(loss))  # noqa: E731
    assert call(900, 0.01) == pytest.approx(100.0)  # first call at a timestep: its own loss, weight 1/loss
    assert call(100, 2.0) == pytest.approx(0.5)     # another timestep keeps its own mean
    assert call(900, 0.03) == pytest.approx(1 / 0.02)  # 0.5 · 0.01 + 0.5 · 0.03
    assert scale.weight((x,), {"timestep": torch.tensor(100.0)}, torch.tensor(4.0)) == pytest.approx(1 / 3.0)
    assert scale.means == {"900": pytest.approx(0.02), "100": pytest.approx(3.0)}
    with pytest.raises(TrtqError, match="one timestep per denoiser call"):
        scale.weight((x, torch.tensor([900.0, 100.0])), {}, torch.tensor(1.0))


def test_relative_step_weighting_evens_out_the_timesteps_gradients():
    """Two calls whose MSEs differ 100-fold: uniform weighting hands the large one 100x the gradient,
    relative weighting the same (each call's first loss is its running mean)."""
    def grad_norms(weighting):
        model = quantize(TimeToy(), toy_recipe(rounds=0), ToyLoop())
        teacher = float_teacher(model)
        adapters = attach_adapters(model, "lora", 2)
        params = [p for a in adapters.values() for p in a.parameters()]
        for a in adapters.values():
            nonzero_b(a)
        cfg = DistillConfig(step_weighting=weighting)
        sink = []
        step = DistillStep(model, teacher, torch.optim.SGD(params, lr=0.0), [], cfg, sink.append,
                           StepLossScale(model) if weighting == "relative" else None)
        norms = []
        for t, amp in ((900, 10.0), (100, 1.0)):  # the first call's input is 10x larger: ~100x the MSE
            x = amp * torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(t))
            step(x, torch.full((4,), float(t)))
            norms.append(sum(float(p.grad.square().sum()) for p in params if p.grad is not None) ** 0.5)
        return sink, norms
    losses, uniform = grad_norms("uniform")
    assert losses[0] > 30 * losses[1]
    _, relative = grad_norms("relative")
    assert uniform[0] / uniform[1] > 10 * (relative[0] / relative[1])
    # exactly: each call's gradient divided by its own loss (its running mean after one call)
    assert relative[0] / relative[1] == pytest.approx(uniform[0] / uniform[1] / (losses[0] / losses[1]), rel=1e-4)


def test_artifact_round_trip_holds_merged_weights_and_no_lora(tmp_path):
    model = quantize(TimeToy(), toy_recipe(rounds=2), ToyLoop())
    save_artifact(model, tmp_path / "art", model_name="toy")
    keys = load_file(str(tmp_path / "art" / "scales.safetensors")).keys()
    assert not [k for k in keys if "adapter" in k or k.endswith((".A", ".B", ".D"))]
    assert {"conv_a.weight_codes", "lin.weight_codes", "conv_b.weight_codes"} <= set(keys)
    loaded = load_artifact(TimeToy(), tmp_path / "art", model_name="toy")
    x, t = torch.randn(3, 2, 6, 6), torch.tensor([100.0, 500.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)
    assert {n for n, _ in table_quantizers(loaded)} == {n for n, _ in table_quantizers(model)}


class TokenToy(nn.Module):
    """Two linears on [B, tokens, 32] with the timestep scaling the features: fp4-sized layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin_a, self.lin_b = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, sample, timestep):
        return self.lin_b(F.gelu(self.lin_a(sample) * (1 + timestep.reshape(-1, 1, 1) / 500)))


class TokenLoop(ToyLoop):
    def round(self, denoiser, r):
        x = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(r))
        with torch.no_grad():
            for t in STEPS:
                x = x - 0.1 * denoiser(x, torch.full((4,), float(t)))


def test_fp4_efficientdm_artifact_round_trip(tmp_path):
    fp4 = {"types": ["Linear"], "layer": "fp4", "layer_args": {"group_size": 16},
           "weight": {"format": "fp4_e2m1", "granularity": "group", "axis": 1, "group_size": 16},
           "input": {"format": "fp4_e2m1", "granularity": "group", "axis": -1, "group_size": 16, "dynamic": True}}
    recipe = Recipe.from_dict({"name": "toy-fp4-efficientdm", "method": "efficientdm", "rules": [fp4],
                               "method_args": {"rank": 2, "rounds": 2, "progress": False, "init": "hqdit",
                                               "hqdit": {"gptq": False, "select_format": False}}})
    init = quantize(TokenToy(), Recipe.from_dict({**recipe.to_dict(), "method_args": {
        **recipe.method_args, "rounds": 0}}), TokenLoop())
    model = quantize(TokenToy(), recipe, TokenLoop())
    assert all(type(m) is FP4Linear for m in (model.lin_a, model.lin_b))
    assert not torch.equal(model.lin_a.weight_packed, init.lin_a.weight_packed)  # the update was merged
    save_artifact(model, tmp_path / "art", model_name="toy")
    assert not [k for k in load_file(str(tmp_path / "art" / "scales.safetensors")) if "adapter" in k]
    loaded = load_artifact(TokenToy(), tmp_path / "art", model_name="toy")
    x, t = torch.randn(2, 3, 32), torch.tensor([100.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)


def test_guided_loss_and_bad_arguments():
    eps = torch.tensor([[1.0], [3.0]])  # [cond; uncond]
    assert guided(eps, 2.0, "cond_uncond").item() == pytest.approx(3 + 2 * (1 - 3))
    assert guided(eps, 2.0, "uncond_cond").item() == pytest.approx(1 + 2 * (3 - 1))
    with pytest.raises(TrtqError, match="unknown efficientdm method_args"):
        parse_args({"iters": 3})
    with pytest.raises(TrtqError, match="adapter must be"):
        parse_args({"adapter": "dora"})
    with pytest.raises(TrtqError, match="cfg_order"):
        DistillConfig(cfg_order="x").check()
    with pytest.raises(TrtqError, match="step_weighting"):
        DistillConfig(step_weighting="snr").check()
    with pytest.raises(TrtqError, match="calib_loop"):
        quantize(TimeToy(), toy_recipe(), None)


@pytest.mark.parametrize("name", ["w4a4-efficientdm", "w4a8-efficientdm", "w4a4-qat", "w4a4-fp4-efficientdm",
                                  "w4a4-fp4-qat"])
def test_builtin_recipes_parse(name):
    r = get_recipe(name)
    assert r.method == "efficientdm"
    parse_args(dict(r.method_args))


class CudaToyLoop(ToyLoop):
    def round(self, denoiser, r):
        x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(r)).cuda()
        with torch.no_grad():
            for t in STEPS:
                x = x - 0.1 * denoiser(x, torch.full((4,), float(t), device="cuda"))


@pytest.mark.gpu
def test_distillation_on_cuda_with_autocast_matches_its_merged_model(tmp_path):
    model = quantize(TimeToy().cuda(), toy_recipe(rounds=2, amp=True), CudaToyLoop())
    assert all(h["loss"] == h["loss"] for h in model.trtq_efficientdm_stats["history"])  # finite, not NaN
    save_artifact(model, tmp_path / "art", model_name="toy")
    loaded = load_artifact(TimeToy().cuda(), tmp_path / "art", model_name="toy")
    x, t = torch.randn(3, 2, 6, 6, device="cuda"), torch.tensor([100.0, 500.0, 900.0], device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t))


def test_drift_table_configurations_parse():
    from trtq.eval.tables.efficientdm_drift import parse_config

    assert parse_config("uniform=") == ("uniform", {})
    assert parse_config("rel=efficientdm.step_weighting=relative,efficientdm.lr=0.002") == (
        "rel", {"efficientdm.step_weighting": "relative", "efficientdm.lr": 0.002})
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_config("bad=efficientdm.lr")


def _slice(rows, curves=None, legacy_curve=None, rounds=30):
    part = {"model": "digits-unet", "samples": 200, "steps": 10, "rounds": rounds, "distill_samples": 16,
            "rows": [{"label": "FP32", "recipe": "fp32", "fid": 1.0}] + rows}
    if legacy_curve is not None:
        part["curve"] = legacy_curve
    else:
        part["curves"] = curves or {}
    return part


def test_efficientdm_table_merges_per_row_curves_and_states_the_command_that_makes_them():
    """Slices (one with the single EfficientDM curve of older slices) merge into one part whose per-row
    curves draw from the PTQ init through the points to each row's end; the command regenerates them all."""
    from trtq.eval.tables.efficientdm import curve_lines, merge_parts, part_command

    pt = lambda r, fid: {"rounds": r, "fid": fid}  # noqa: E731
    edm = _slice([{"label": "PTQ init (min-max/MSE)", "recipe": "w4a4-efficientdm", "rounds": 0, "fid": 4.0},
                  {"label": "EfficientDM", "recipe": "w4a4-efficientdm", "rounds": 30, "iterations": 300,
                   "fid": 2.0}], legacy_curve=[pt(10, 6.0), pt(20, 2.5)])
    qat = _slice([{"label": "QAT", "recipe": "w4a4-qat", "rounds": 200, "iterations": 2000, "fid": 3.0}],
                 curves={"QAT": [pt(100, 3.5), pt(30, 4.5)]})
    (part,) = merge_parts([qat, edm])
    assert [r["label"] for r in part["rows"]] == ["FP32", "PTQ init (min-max/MSE)", "EfficientDM", "QAT"]
    assert curve_lines(part) == {"EfficientDM": [(0, 4.0), (100, 6.0), (200, 2.5), (300, 2.0)],
                                 "QAT": [(0, 4.0), (300, 4.5), (1000, 3.5), (2000, 3.0)]}
    cmd = part_command(part, 1)
    assert "--rounds 30 --row-rounds 'QAT=200' " in cmd and "--curve 10,20,30,100 " in cmd
    assert "--curve-rows 'QAT,EfficientDM'" in cmd
    # a row without curve points is its end point alone; without per-row curves the command says nothing more
    (plain,) = merge_parts([_slice([{"label": "QAT", "recipe": "w4a4-qat", "rounds": 30, "iterations": 300,
                                     "fid": 3.0}])])
    assert curve_lines(plain) == {"QAT": [(300, 3.0)]}
    assert "--row-rounds" not in part_command(plain, None) and "--curve" not in part_command(plain, None)


@pytest.mark.parametrize("args", [["--curve-rows", "QAT (lr 3e-5)"], ["--row-rounds", "QATT=200"],
                                  ["--row-rounds", "QAT=x"]])
def test_efficientdm_table_refuses_unknown_row_labels_before_any_work(tmp_path, args):
    from trtq.eval.tables.efficientdm import main

    with pytest.raises(SystemExit):
        main(["--part", "digits-unet", "--json", str(tmp_path / "s.json"), *args])
    assert not (tmp_path / "s.json").exists()


def _finetune_far(model: nn.Module, factor: float = -1.6) -> nn.Module:
    """Merge a full update D = factor · W0 into every adaptable layer: codes of -0.6 W0, ~1.6 (relative L2)
    from the float weights. Long EfficientDM runs move layers this way (digits-dit after 2000 iterations:
    one layer 0.54 away, beyond the 0.5 that load_artifact allowed before the manifest recorded it)."""
    attach_adapters(model, "full")
    for mod in model.modules():
        if isinstance(mod, QALoRAFP4Train) or getattr(mod, "adapter", None) is not None:
            w = mod.layer.weight if isinstance(mod, QALoRAFP4Train) else mod.weight
            with torch.no_grad():
                mod.adapter.D.copy_(factor * w)
    merge_adapters(model)
    return model


@pytest.mark.parametrize("kind", ["qalora", "fp4"])
def test_fine_tuned_codes_far_from_the_weights_round_trip_and_stay_checked(tmp_path, kind):
    import json

    if kind == "fp4":
        fp4 = {"types": ["Linear"], "layer": "fp4", "layer_args": {"group_size": 16},
               "weight": {"format": "fp4_e2m1", "granularity": "group", "axis": 1, "group_size": 16},
               "input": {"format": "fp4_e2m1", "granularity": "group", "axis": -1, "group_size": 16,
                         "dynamic": True}}
        recipe = Recipe.from_dict({"name": "toy-fp4", "method": "efficientdm", "rules": [fp4], "method_args": {
            "rank": 2, "rounds": 0, "progress": False, "init": "hqdit", "hqdit": {"gptq": False,
                                                                                    "select_format": False}}})
        net, loop, x, t = TokenToy, TokenLoop, torch.randn(2, 3, 32), torch.tensor([100.0, 900.0])
    else:
        recipe, net, loop = toy_recipe(rounds=0), TimeToy, ToyLoop
        x, t = torch.randn(3, 2, 6, 6), torch.tensor([100.0, 500.0, 900.0])
    model = _finetune_far(quantize(net(), recipe, loop()))
    save_artifact(model, tmp_path / "art", model_name="toy")
    manifest_path = tmp_path / "art" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    recorded = {n: e["packed_weight_error"] for n, e in manifest["layers"].items() if "packed_weight_error" in e}
    assert recorded and all(0.5 < v <= 2.0 for v in recorded.values())  # beyond the plain bound: recorded
    loaded = load_artifact(net(), tmp_path / "art", model_name="toy")  # float weights released (fp4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)
    save_artifact(loaded, tmp_path / "again", model_name="toy")  # the record survives a released model
    load_artifact(net(), tmp_path / "again", model_name="toy")

    name = next(iter(recorded))
    for value, match in ((recorded[name] * 1.1, "fine-tuned weights of"), (5.0, "expected a number"),
                         ("x", "expected a number"), (None, "do not quantize this model's weights")):
        edited = json.loads(json.dumps(manifest))
        if value is None:
            del edited["layers"][name]["packed_weight_error"]  # without the record: the plain bound
        else:
            edited["layers"][name]["packed_weight_error"] = value
        manifest_path.write_text(json.dumps(edited))
        fresh = net()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(TrtqError, match=match):
            load_artifact(fresh, tmp_path / "art", model_name="toy")
        assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # left as it was
