"""The contract every encoder plugin must meet, as functions and as a pytest class to inherit.

For plugin authors::

    # tests/test_my_encoder.py
    import pytest
    from forensics.testing import EncoderContract

    class TestMyEncoder(EncoderContract):
        @pytest.fixture(scope="class")
        @classmethod
        def encoder(cls):
            return make_my_encoder(weights="random", image_size=32)

Every bundled encoder passes the same class. Without pytest, :func:`check_encoder` runs every check and
raises :class:`AssertionError` naming the first broken one. The checks:

- **declared layers**: names unique, sizes positive, and ``forward_layers`` returns one (B, dim) float
  tensor per requested layer, in order, with the declared sizes (all layers, and any subset);
- **subsets**: the embedding of a layer is the same whether asked for alone or with all the others;
- **determinism**: the same images give the same embeddings twice;
- **batch invariance**: embedding in batches of 1, 2 and all at once gives the same values;
- **identity and preprocessing recorded**: ``identity()`` is JSON-able and carries name, weights digest,
  layers, pooling and a preprocessing that round-trips; options are JSON-able;
- **unknown layers** are refused with a :class:`forensics.errors.UsageError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from forensics.encode.encoder import Encoder, Preprocessing
from forensics.errors import UsageError
from forensics.io.hashing import is_digest

RTOL = 1e-4
ATOL = 1e-4


def sample_images(n: int = 4, size: int = 40, seed: int = 0) -> np.ndarray:
    """Small deterministic uint8 RGB test images with some structure (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    images = []
    for i in range(n):
        base = np.stack([xx * (i + 1) % 1.0, yy, (xx + yy) / 2], axis=-1) * 200
        images.append(np.clip(base + rng.normal(0, 25, base.shape), 0, 255))
    return np.asarray(images, dtype=np.uint8)


def _embed(encoder: Encoder, images: np.ndarray, layers: Sequence[str] | None, batch_size: int) -> list[np.ndarray]:
    from forensics.encode.embed import embed

    return embed(encoder, images, layers=layers, batch_size=batch_size)


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    scale = max(float(np.abs(b).max()), 1.0)
    return bool(np.allclose(a, b, rtol=rtol, atol=atol * scale))


def check_declared_layers(encoder: Encoder, images: np.ndarray | None = None) -> None:
    images = sample_images() if images is None else images
    names = [layer.name for layer in encoder.layers]
    assert names, f"{encoder.name} declares no layers"
    assert len(set(names)) == len(names), f"{encoder.name} declares a layer twice: {names}"
    assert all(isinstance(layer.dim, int) and layer.dim > 0 for layer in encoder.layers), \
        f"{encoder.name} declares a non-positive layer size"
    from forensics.encode.encoder import preprocess

    pixels = preprocess(images, encoder.preprocessing)
    for request in (names, names[-1:], names[:1], names[::2]):
        outs = encoder.forward_layers(pixels, request)
        assert len(outs) == len(request), f"{encoder.name}: asked for {len(request)} layers, got {len(outs)}"
        for name, out in zip(request, outs):
            dim = encoder.layer_dims([name])[name]
            assert isinstance(out, torch.Tensor) and out.dtype == torch.float32, \
                f"{encoder.name} {name}: expected a float32 tensor, got {getattr(out, 'dtype', type(out))}"
            assert tuple(out.shape) == (len(images), dim), \
                f"{encoder.name} {name}: declared ({len(images)}, {dim}), returned {tuple(out.shape)}"
            assert torch.isfinite(out).all(), f"{encoder.name} {name}: non-finite values"


def check_layer_subsets(encoder: Encoder, images: np.ndarray | None = None, *, rtol: float = RTOL,
                        atol: float = ATOL) -> None:
    images = sample_images() if images is None else images
    full = _embed(encoder, images, None, len(images))
    names = list(encoder.layer_names)
    for i in sorted({0, len(names) // 2, len(names) - 1}):
        alone = _embed(encoder, images, [names[i]], len(images))[0]
        assert _close(alone, full[i], rtol, atol), f"{encoder.name} {names[i]}: differs when asked for alone"


def check_determinism(encoder: Encoder, images: np.ndarray | None = None) -> None:
    images = sample_images() if images is None else images
    a = _embed(encoder, images, None, len(images))
    b = _embed(encoder, images, None, len(images))
    for name, x, y in zip(encoder.layer_names, a, b):
        assert np.array_equal(x, y), f"{encoder.name} {name}: two runs on the same images differ"


def check_batch_invariance(encoder: Encoder, images: np.ndarray | None = None, *, rtol: float = RTOL,
                           atol: float = ATOL) -> None:
    images = sample_images() if images is None else images
    whole = _embed(encoder, images, None, len(images))
    for batch_size in (1, 2):
        parts = _embed(encoder, images, None, batch_size)
        for name, x, y in zip(encoder.layer_names, parts, whole):
            assert _close(x, y, rtol, atol), \
                f"{encoder.name} {name}: batch size {batch_size} changes the embedding (max diff {np.abs(x - y).max():.3g})"


def check_identity(encoder: Encoder) -> None:
    identity = encoder.identity()
    text = json.dumps(identity, allow_nan=False)  # JSON-able
    assert identity["name"] == encoder.name
    assert is_digest(identity["weights"]), f"{encoder.name}: weights digest {identity['weights']!r} is not a sha256"
    assert identity["weights_source"] in ("file", "package", "cache", "random"), identity["weights_source"]
    assert identity["layers"] == list(encoder.layer_names)
    assert isinstance(identity["pooling"], str) and identity["pooling"]
    prep = Preprocessing.from_dict(json.loads(text)["preprocessing"])
    assert prep == encoder.preprocessing, f"{encoder.name}: preprocessing does not round-trip through JSON"
    json.dumps(dict(getattr(encoder, "options", {}) or {}), allow_nan=False)
    assert encoder.identity([encoder.layer_names[-1]])["layers"] == [encoder.layer_names[-1]]


def check_unknown_layer(encoder: Encoder) -> None:
    try:
        encoder.check_layers(["no-such-layer"])
    except UsageError:
        return
    raise AssertionError(f"{encoder.name}: an unknown layer name was accepted")


CHECKS = (check_declared_layers, check_layer_subsets, check_determinism, check_batch_invariance, check_identity,
          check_unknown_layer)


def check_encoder(encoder: Encoder, images: np.ndarray | None = None) -> None:
    """Run every check of the contract on ``encoder``; an :class:`AssertionError` names what broke."""
    images = sample_images() if images is None else images
    for check in CHECKS:
        if check in (check_identity, check_unknown_layer):
            check(encoder)
        else:
            check(encoder, images)


try:
    import pytest
except ImportError:  # pragma: no cover - the class needs pytest, the functions do not
    pytest = None

if pytest is not None:

    class EncoderContract:
        """Inherit in a test module and provide an ``encoder`` fixture (class-scoped is cheapest);
        optionally override ``images`` (uint8, a few small images)."""

        @pytest.fixture(scope="class")
        @classmethod
        def images(cls) -> np.ndarray:
            return sample_images()

        def test_declared_layers(self, encoder, images):
            check_declared_layers(encoder, images)

        def test_layer_subsets(self, encoder, images):
            check_layer_subsets(encoder, images)

        def test_determinism(self, encoder, images):
            check_determinism(encoder, images)

        def test_batch_invariance(self, encoder, images):
            check_batch_invariance(encoder, images)

        def test_identity_and_preprocessing(self, encoder):
            check_identity(encoder)

        def test_unknown_layer_refused(self, encoder):
            check_unknown_layer(encoder)
