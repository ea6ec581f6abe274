"""Running an encoder over a set of images: batched, every requested layer from one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from forensics.encoders import Encoder, preprocess

Progress = Callable[[int, int], None]


def embed(encoder: Encoder, images: np.ndarray, *, layers: Sequence[str] | None = None, batch_size: int = 64,
          progress: Progress | None = None) -> list[np.ndarray]:
    """Embed uint8 ``images`` (N, H, W[, C]) at ``layers`` (all when None).

    Returns one float32 array (N, dim) per layer, in the encoder's depth order. ``progress(done, total)``
    is called after each batch.
    """
    names = encoder.check_layers(layers)
    n = len(images)
    outputs: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, batch_size):
        pixels = preprocess(images[start:start + batch_size], encoder.preprocessing)
        with torch.inference_mode():
            feats = encoder.forward_layers(pixels, names)
        for slot, f in zip(outputs, feats):
            slot.append(f.detach().to("cpu", torch.float32).numpy())
        if progress is not None:
            progress(min(start + batch_size, n), n)
    return [np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), np.float32) for parts in outputs]
