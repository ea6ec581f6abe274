"""The project's own MNIST encoder, as the product runs it: a small timm ViT and its shipped weights.

A timm ViT with patch 4 on the native 28 × 28 digits (49 patch tokens and a CLS token), trained as a
10-class classifier on the 4,000 training digits of :func:`forensics.zoo.data.mnist_split`; the
``mnist-vit`` protocol reads its CLS token after every block. Images reach the network exactly as
:func:`forensics.encode.encoder.preprocess` feeds the encoder plugin (:data:`PREPROCESSING`), so the
weights and the embeddings agree. The weights (classifier head included) ship in
``forensics/zoo/weights/``, with a json record of how they were trained and what they score.

Training lives apart, in :mod:`forensics.zoo.training.encoder` (the ``zoo`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from forensics.encode.encoder import Preprocessing, preprocess

ARCHITECTURE = "vit_tiny_patch16_224"  # timm's ViT builder; every size below overrides its defaults
ARCH_KWARGS: dict[str, Any] = {"img_size": 28, "patch_size": 4, "in_chans": 3, "embed_dim": 128, "depth": 8,
                               "num_heads": 4, "mlp_ratio": 4.0}
#: the encoder's preprocessing: native 28 px (no resize for MNIST), the usual MNIST mean / std
PREPROCESSING = Preprocessing(size=28, resize=28, interpolation="bilinear", mean=(0.1307,) * 3,
                              std=(0.3081,) * 3)
NUM_CLASSES = 10
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "vit_mnist.safetensors"
RECORD_FILE = "vit_mnist.json"


def weights_path() -> str:
    """The shipped weights file (for the encoder plugin's ``package`` source)."""
    return str(WEIGHTS_DIR / WEIGHTS_FILE)


def build_model(*, num_classes: int = NUM_CLASSES, drop_path: float = 0.0) -> torch.nn.Module:
    """The untrained ViT, as the encoder plugin builds it (plus a ``num_classes`` head)."""
    import timm

    return timm.create_model(ARCHITECTURE, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path,
                             **ARCH_KWARGS)


def load_classifier(path: str | Path | None = None) -> torch.nn.Module:
    """The trained classifier (head included), in eval mode."""
    from safetensors.torch import load_file

    model = build_model()
    model.load_state_dict(load_file(str(path or weights_path())))
    return model.eval()


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """Class predictions for uint8 digits (N, 28, 28), preprocessed as the encoder plugin does."""
    model.eval()
    out = [model(preprocess(images[i:i + batch], PREPROCESSING)).argmax(1) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()
