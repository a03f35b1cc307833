"""The zoo's model bundle: a small diffusers denoiser plus what is needed to sample from it.

Two tiny class-conditional models trained on scikit-learn's digits stand in for SD (a UNet with
cross-attention on a "text" encoder) and DiT (a transformer with adaLN class conditioning), so every
quantization path can be exercised on CPU in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from trtq.errors import TrtqError
from trtq.io.files import read_json
from trtq.io.validate import Any, Int, Map, Num, Obj, Opt, Str

ZOO_MODELS = ("digits-unet", "digits-dit")
WEIGHTS_DIR = Path(__file__).parent / "weights"

NUM_CLASSES = 10
SAMPLE_SIZE = 32
LABEL_TOKENS = 4
UNET_CROSS_DIM = 64

# The noise schedule used in training; samplers are built from this config (DDPMScheduler.from_config).
SCHEDULER_KWARGS = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    clip_sample=True,
)

# Sized so a 200-image forward stays ~1.5 s (UNet) / ~0.35 s (DiT) on 2 CPU cores.
UNET_CONFIG = dict(
    sample_size=SAMPLE_SIZE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=UNET_CROSS_DIM,
    attention_head_dim=8,
    norm_num_groups=8,
)
DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=1,
    out_channels=1,
    num_layers=6,
    sample_size=SAMPLE_SIZE,
    patch_size=4,
    num_embeds_ada_norm=NUM_CLASSES,  # its label table gets a null row at index NUM_CLASSES
)


# trtq_model.json, as `DigitsModel.save` writes it (checked before anything in it is used).
MODEL_META_SCHEMA = Obj(
    required={"kind": Str(("unet", "dit"))},
    optional={"name": Str(nonempty=True), "sample_size": Int(1, 4096), "num_classes": Int(1, 100_000),
              "guidance_scale": Num(0.0, 100.0), "label_tokens": Opt(Int(1, 4096)), "fingerprint": Opt(Str()),
              "training": Map(Any())},
    desc="a model metadata mapping")


class LabelEncoder(nn.Module):
    """SD's text encoder in small: a label becomes ``tokens`` context vectors for cross-attention.

    Index ``num_classes`` is the null label (the "empty prompt") used for classifier-free guidance.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, tokens: int = LABEL_TOKENS, dim: int = UNET_CROSS_DIM):
        super().__init__()
        self.num_classes, self.tokens, self.dim = num_classes, tokens, dim
        self.embedding = nn.Embedding(num_classes + 1, tokens * dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels).view(labels.shape[0], self.tokens, self.dim)


@dataclass
class DigitsModel:
    name: str
    kind: str  # "unet" | "dit"
    denoiser: nn.Module
    label_encoder: nn.Module | None
    scheduler_config: dict
    sample_size: int = SAMPLE_SIZE
    num_classes: int = NUM_CLASSES
    guidance_scale: float = 2.0
    path: Path | None = None
    training: dict = field(default_factory=dict)  # provenance from trtq_model.json (empty when untrained)

    def to(self, device: str | torch.device) -> DigitsModel:
        """Move the denoiser and the label encoder (in place), like nn.Module.to."""
        self.denoiser.to(device)
        if self.label_encoder is not None:
            self.label_encoder.to(device)
        return self

    def null_labels(self, n: int) -> Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.int64)

    def predict_noise(self, sample: Tensor, timestep, labels: Tensor, denoiser: nn.Module | None = None) -> Tensor:
        """Epsilon prediction; ``denoiser`` swaps in another module (e.g. a quantized copy)."""
        net = self.denoiser if denoiser is None else denoiser
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        # Both diffusers models accept [B] timesteps; broadcasting here keeps the traced graph uniform.
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        labels = labels.to(sample.device)
        if self.kind == "unet":
            ctx = self.label_encoder(labels).to(sample.dtype)
            return net(sample, t, encoder_hidden_states=ctx).sample
        return net(sample, timestep=t, class_labels=labels).sample

    def fingerprint(self) -> str:
        """sha256 over the denoiser's weights (the artifact's notion of "which model"; one definition)."""
        from trtq.artifact import module_fingerprint

        return module_fingerprint(self.denoiser)

    def save(self, path: str | Path) -> None:
        """Write the diffusers-style layout into a temp dir, then swap it in so readers never see half a model."""
        from safetensors.torch import save_file
        from diffusers import DDPMScheduler

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the final model dir should be an ordinary one
        try:
            self.denoiser.save_pretrained(tmp / "denoiser", safe_serialization=True)
            if self.label_encoder is not None:
                sd = {k: v.detach().cpu().contiguous() for k, v in self.label_encoder.state_dict().items()}
                save_file(sd, str(tmp / "label_encoder.safetensors"))
            DDPMScheduler.from_config(self.scheduler_config).save_pretrained(tmp / "scheduler")
            meta = {
                "name": self.name,
                "kind": self.kind,
                "sample_size": self.sample_size,
                "num_classes": self.num_classes,
                "guidance_scale": self.guidance_scale,
                "label_tokens": getattr(self.label_encoder, "tokens", None),
                "fingerprint": self.fingerprint(),
                "training": self.training,
            }
            (tmp / "trtq_model.json").write_text(json.dumps(meta, indent=2) + "\n")
            # os.replace cannot overwrite a non-empty directory: move the old one aside first.
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, old / "m")
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _scheduler_config() -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(**SCHEDULER_KWARGS).config)


def build_model(name: str) -> DigitsModel:
    """A fresh, randomly initialised zoo model (for training and shape tests)."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    if name == "digits-unet":
        denoiser, enc, kind = UNet2DConditionModel(**UNET_CONFIG), LabelEncoder(), "unet"
    elif name == "digits-dit":
        denoiser, enc, kind = DiTTransformer2DModel(**DIT_CONFIG), None, "dit"
    else:
        raise TrtqError(f"unknown zoo model {name!r}; choose one of: {', '.join(ZOO_MODELS)}")
    return DigitsModel(name=name, kind=kind, denoiser=denoiser, label_encoder=enc, scheduler_config=_scheduler_config())


def load_model(name_or_path: str | Path) -> DigitsModel:
    """Load a zoo model by name (from WEIGHTS_DIR) or a model directory in the same layout."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DConditionModel
    from safetensors.torch import load_file

    if str(name_or_path) in ZOO_MODELS:
        path = WEIGHTS_DIR / str(name_or_path)
        if not (path / "trtq_model.json").is_file():
            raise TrtqError(f"zoo model {name_or_path!r} has no trained weights at {path}: run `make train-zoo`")
    else:
        path = Path(name_or_path)
        if not (path / "trtq_model.json").is_file():
            raise TrtqError(
                f"{str(name_or_path)!r} is neither a zoo model ({', '.join(ZOO_MODELS)}) "
                "nor a model directory with trtq_model.json (zoo weights: run `make train-zoo`)"
            )
    meta = read_json(path / "trtq_model.json", "model metadata", MODEL_META_SCHEMA)
    kind = meta["kind"]
    cls = UNet2DConditionModel if kind == "unet" else DiTTransformer2DModel
    weights = path / "denoiser" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise TrtqError(f"model weights missing at {weights}: run `make train-zoo`")
    # low_cpu_mem_usage=False: plain construction, no dependency on accelerate's meta-device loading.
    denoiser = cls.from_pretrained(path / "denoiser", low_cpu_mem_usage=False).eval()
    enc = None
    if kind == "unet":
        state = load_file(str(path / "label_encoder.safetensors"))
        rows, width = state["embedding.weight"].shape
        tokens = int(meta.get("label_tokens") or LABEL_TOKENS)
        enc = LabelEncoder(num_classes=rows - 1, tokens=tokens, dim=width // tokens)
        enc.load_state_dict(state)
        enc.eval()
    sched = dict(DDPMScheduler.from_pretrained(path / "scheduler").config)
    return DigitsModel(
        name=meta.get("name", path.name),
        kind=kind,
        denoiser=denoiser,
        label_encoder=enc,
        scheduler_config=sched,
        sample_size=int(meta.get("sample_size", SAMPLE_SIZE)),
        num_classes=int(meta.get("num_classes", NUM_CLASSES)),
        guidance_scale=float(meta.get("guidance_scale", 2.0)),
        path=path,
        training=meta.get("training", {}),
    )
