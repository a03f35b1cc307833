"""What the distillation loss sees and what sampling sees: the EfficientDM student along training.

    python -m trtq.eval.tables.efficientdm_drift [--model digits-unet] [--samples 48] [--steps 10]
        [--rounds 5] [--points 1,3,5] [--config NAME=key=value,key=value ...] [--threads T]
        [--out docs/efficientdm.md]

For each configuration (recipe overrides; `uniform` = the recipe as it is) and for the PTQ init and the merged
student after each point (rounds of distillation), on `--samples` labels from the evaluation's noise:
- teacher-forced error: MSE of the guided noise prediction against the float model at the float model's own
  x_t (what the distillation loss measures), mean over steps, and at the first (t = 999) and last step;
- free-running error: the same MSE at the student's own x_t (what sampling meets), and its DC part (the
  squared per-image mean of the error), the component that steers a whole image;
- the images: PSNR vs FP from the same noise and the classifier's accuracy.
The table goes between its own markers in `--out` (the EfficientDM doc); the prose around it is kept.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from trtq.efficientdm.distill import guided
from trtq.eval.evaluate import Evaluator, SamplingConfig
from trtq.eval.metrics import summarize
from trtq.eval.tables import write_generated_block
from trtq.eval.tables.efficientdm import finetune, merged_copy

BEGIN, END = "<!-- efficientdm-drift:begin -->", "<!-- efficientdm-drift:end -->"
RECIPES = {"digits-unet": "w4a4-efficientdm", "digits-dit": "w4a4-fp4-efficientdm"}


def guide_of(model):
    """The guided noise prediction of a zoo denoiser's output (zoo CFG batches: cond first)."""
    return lambda out: guided(out.sample, model.guidance_scale, "cond_uncond")


class _Recorder(nn.Module):
    """Runs `net` and keeps every call's arguments and guided prediction (the float model's trajectory,
    recorded once: the teacher-forced target of every probe)."""

    def __init__(self, net: nn.Module, guide):
        super().__init__()
        self.net, self.guide, self.calls = net, guide, []

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        self.calls.append((args, kwargs, self.guide(out)))
        return out


class _FreeRun(nn.Module):
    """Samples with the student; records, per call, the guided error against the teacher at the same x_t."""

    def __init__(self, student: nn.Module, teacher: nn.Module, guide):
        super().__init__()
        self.student, self.teacher, self.guide, self.errors = student, teacher, guide, []

    def forward(self, *args, **kwargs):
        out = self.student(*args, **kwargs)
        self.errors.append(self.guide(out) - self.guide(self.teacher(*args, **kwargs)))
        return out


def probe(ev: Evaluator, fp_calls: list, student: nn.Module) -> dict:
    guide = guide_of(ev.model)
    with torch.no_grad():
        forced = [float((guide(student(*a, **k)) - target).square().mean()) for a, k, target in fp_calls]
        free = _FreeRun(student, ev.model.denoiser, guide)
        samples = ev.sample(free)
    m = summarize(samples, ev.fp_samples, ev.labels, ev.classifier, ev.reference)
    return {"forced": forced, "free": [float(e.square().mean()) for e in free.errors],
            "free_dc": [float(e.mean(dim=tuple(range(1, e.dim()))).square().mean()) for e in free.errors],
            "psnr_db": m["psnr_db"], "accuracy": m["accuracy"]}


def run_config(ev: Evaluator, fp_calls: list, recipe: str, overrides: dict, rounds: int, points: set[int],
               distill_samples: int) -> list[dict]:
    rows = [{"rounds": 0, **probe(ev, fp_calls, finetune(ev.model, recipe, 0, distill_samples, ev.cfg.steps,
                                                         overrides))}]

    def on_round(done, student):
        if done in points:
            rows.append({"rounds": done, **probe(ev, fp_calls, merged_copy(student))})
            print(f"  {done} rounds: accuracy {rows[-1]['accuracy']:.3f}, PSNR {rows[-1]['psnr_db']:.2f}", flush=True)

    finetune(ev.model, recipe, rounds, distill_samples, ev.cfg.steps, overrides, on_round)
    return rows


def parse_config(text: str) -> tuple[str, dict]:
    """`NAME=key=value,key=value` (values as YAML scalars) -> (NAME, {key: value}); `NAME=` is no override."""
    import yaml

    name, _, rest = text.partition("=")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config {text!r}: expected key=value, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def markdown(results: dict, args) -> str:
    f = lambda v: format(v, ".4f")  # noqa: E731
    lines = [f"{args.model}, recipe `{RECIPES[args.model]}`; {args.samples} labels from the evaluation's noise, "
             f"{args.steps} DDIM steps, guidance {args.guidance}; distillation: {args.distill_samples} random labels "
             "per round. Errors: MSE of the guided noise prediction against the float model per denoiser call, "
             "mean over the steps (and at the first and the last step); DC: the squared per-image mean of the "
             "free-running error, ×10³.", "",
             "| configuration | rounds | teacher-forced: mean | t=999 | last step | free-running: mean | t=999 | "
             "DC at t=999 (×10³) | PSNR vs FP (dB) | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in results.items():
        for r in rows:
            fo, fr = r["forced"], r["free"]
            lines.append(f"| {name} | {r['rounds']} | {f(sum(fo) / len(fo))} | {f(fo[0])} | {f(fo[-1])} | "
                         f"{f(sum(fr) / len(fr))} | {f(fr[0])} | {r['free_dc'][0] * 1e3:.3f} | {r['psnr_db']:.2f} | "
                         f"{r['accuracy']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from pathlib import Path

    from trtq.zoo import load_classifier, load_digits_images, load_model

    p = argparse.ArgumentParser(prog="python -m trtq.eval.tables.efficientdm_drift",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits-unet", choices=sorted(RECIPES))
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--points", default="1,3,5", help="rounds after which the student is probed")
    p.add_argument("--distill-samples", type=int, default=8)
    p.add_argument("--config", action="append", default=None,
                   help="NAME=key=value,... recipe overrides (repeatable; default: uniform=)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="docs/efficientdm.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = dict(parse_config(c) for c in (args.config or ["uniform="]))
    points = {int(x) for x in args.points.split(",") if x.strip()}
    model = load_model(args.model)
    args.guidance = model.guidance_scale
    ev = Evaluator(model, SamplingConfig(samples=args.samples, steps=args.steps, progress=False), load_classifier(),
                   load_digits_images(model.sample_size)[0])
    ev.run_fp()
    recorder = _Recorder(model.denoiser, guide_of(model))
    with torch.no_grad():
        ev.sample(recorder)  # the float model's own trajectory (the same noise and labels as ev.fp_samples)
    results = {}
    for name, overrides in configs.items():
        print(f"[{name}] {overrides}", flush=True)
        results[name] = run_config(ev, recorder.calls, RECIPES[args.model], overrides, args.rounds, points,
                                   args.distill_samples)
    command = (f"python -m trtq.eval.tables.efficientdm_drift --model {args.model} --samples {args.samples} "
               f"--steps {args.steps} --rounds {args.rounds} --points {args.points} "
               f"--distill-samples {args.distill_samples} "
               + " ".join(f"--config {c}" for c in (args.config or ["uniform="]))
               + (f" --threads {args.threads}" if args.threads else "") + f" --out {args.out}")
    write_generated_block(Path(args.out), markdown(results, args), command, BEGIN, END, "EfficientDM")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
