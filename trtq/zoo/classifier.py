"""A small CNN that judges generated digits: accuracy vs. the requested label, and features for digits-FID."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from trtq.errors import TrtqError
from trtq.zoo.models import WEIGHTS_DIR

CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "digits-classifier.safetensors"
CLASSIFIER_META = WEIGHTS_DIR / "digits-classifier.json"
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """[N, 1, 32, 32] in [-1, 1] -> logits [N, 10]; ``features`` is the 64-d penultimate layer."""

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            # BatchNorm keeps training quick and stable; eval mode freezes it so features are deterministic.
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 2 * width))  # 32->4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(feature_dim, num_classes)
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes}

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(self.features(x)))


def load_classifier(weights_dir: str | Path | None = None) -> DigitsClassifier:
    """The trained judge, in eval mode (from the zoo, or from ``weights_dir`` as written by training)."""
    from safetensors.torch import load_file

    d = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    weights, meta = d / CLASSIFIER_WEIGHTS.name, d / CLASSIFIER_META.name
    if not weights.is_file():
        raise TrtqError(f"digits classifier weights missing at {weights}: run `make train-zoo`")
    config = json.loads(meta.read_text()).get("config", {}) if meta.is_file() else {}
    model = DigitsClassifier(**config)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


@torch.no_grad()
def classify(classifier: nn.Module, images: Tensor, batch: int = 500) -> Tensor:
    """Predicted labels for ``images`` (batched so large sets stay light on memory)."""
    dev = next(classifier.parameters()).device
    return torch.cat([classifier(images[i : i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(images), batch)])
