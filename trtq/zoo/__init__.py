"""The embedded default models: tiny class-conditional UNet / DiT denoisers and a judge, all on sklearn digits.

Weights live in ``trtq/zoo/weights`` and are produced by ``python -m trtq.zoo.train`` (``make train-zoo``).
"""

from trtq.zoo.classifier import DigitsClassifier, load_classifier
from trtq.zoo.data import load_digits_images, split_digits
from trtq.zoo.models import WEIGHTS_DIR, ZOO_MODELS, DigitsModel, LabelEncoder, build_model, load_model

__all__ = [
    "ZOO_MODELS",
    "WEIGHTS_DIR",
    "DigitsModel",
    "LabelEncoder",
    "DigitsClassifier",
    "build_model",
    "load_model",
    "load_classifier",
    "load_digits_images",
    "split_digits",
]
