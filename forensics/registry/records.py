"""Per-image records of enrolled instances: what lets a query of any size be matched.

A fingerprint is the curve of one batch of the protocol's m images, and a curve of m′ ≠ m images does
not mean the same thing (C_T's Z-scores grow with the batch). So beside each enrolled curve the registry
keeps, per layer and per image, what the statistic keeps of that image (for C_T: its cell and its
distance to the nearest training point, 16 bytes): the curve of any sub-batch of the instance's images
is computed from them exactly, without the images (:meth:`forensics.engine.Engine.curve_from_records`).

Records are kept per post-processing condition (:mod:`forensics.conditions`): under ``none`` the
instance's images as enrolled (these reproduce its enrolled curve exactly, and are float64), under any
other the same images put through that processing (float32: half the size). A records file is
``<protocol>/records/<generator>/<instance id>/<condition>.npy``: one array of shape (layers, images,
fields), loaded without pickles. The instance's entry in its generator file records each array's digest
(``records: {none: sha256:…, jpeg90: sha256:…}``); a file that is missing, malformed or does not match
it is refused in one line and the instance is matched as before, at m only.

Records under a condition are comparable only when one processing made them all: another Pillow, libjpeg
or libwebp may encode a JPEG or WebP otherwise. So each layer keeps ``<protocol>/records/processing.yaml``:
per condition, the digest of what the machine that first kept records under it makes of a fixed probe
(:func:`forensics.conditions.processing_digest`) and the versions of Pillow and its codecs; records are
kept under a condition only where this machine's digest is the one every layer records for it.

Beside them, ``<protocol>/records/<generator>/<instance id>/images.npy`` keeps one 16-byte digest per image the
instance was enrolled from (:func:`forensics.io.hashing.image_digests`; 8 KB for 500 images), its own digest
recorded in the instance's provenance (``image_digests: sha256:…``): what tells a query that holds some of those
very images (its verdict would partly match them with their own reference curve) and an enrolment that repeats
images another instance holds.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from forensics.errors import RegistryError
from forensics.io.atomic import write_atomic
from forensics.io.hashing import IMAGE_DIGEST_BYTES, sha256_array, short
from forensics.registry.schema import check_inside

RECORDS_DIR = "records"
PROCESSING_FILE = "processing.yaml"
DIGESTS_FILE = "images.npy"  # not a condition's name: conditions never read "images"
MAX_BYTES = 256 << 20  # far above any real instance (500 images × 32 layers × 2 fields is 256 KB)


def records_path(root: Path, protocol: str, generator: str, instance: str, condition: str) -> Path:
    """Where ``generator``'s ``instance``'s records under ``protocol`` and ``condition`` live in the
    registry layer ``root``."""
    return root / protocol / RECORDS_DIR / generator / instance / f"{condition}.npy"


def digests_path(root: Path, protocol: str, generator: str, instance: str) -> Path:
    """Where the digests of the images ``generator``'s ``instance`` was enrolled from live under ``protocol`` in
    the registry layer ``root``."""
    return root / protocol / RECORDS_DIR / generator / instance / DIGESTS_FILE


def processing_path(root: Path, protocol: str) -> Path:
    """The file of the registry layer ``root`` that says, per condition, what processed the images of the
    records kept there under ``protocol`` (:func:`forensics.conditions.processing_digest`)."""
    return root / protocol / RECORDS_DIR / PROCESSING_FILE


def as_records(layers: list[np.ndarray], condition: str = "none") -> np.ndarray:
    """One instance's per-layer records (each images × fields) as the stored (layers, images, fields)
    array: float64 under ``none``, float32 under any other condition."""
    shapes = {np.shape(r) for r in layers}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"per-layer records must share one (images, fields) shape, got {sorted(shapes)}")
    dtype = np.float64 if condition == "none" else np.float32
    return np.ascontiguousarray(np.stack([np.asarray(r, dtype=np.float64) for r in layers]).astype(dtype))


def _write_array(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy (no pickles) atomically to ``path``; returns its digest."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_atomic(path, lambda f: f.write(buf.getvalue()))
    return sha256_array(array)


def _read_array(path: Path, digest: str, *, root: Path, label: str, what: str, fix: str,
                fits: Callable[[np.ndarray], bool], expected: str, recorded_by: str) -> np.ndarray:
    """The array at ``path``, checked: a plain file in the registry layer ``root`` (no link on its way, folders
    included), within :data:`MAX_BYTES`, an .npy without pickles that ``fits``, whose digest is ``digest``.
    Anything else is a :class:`RegistryError` naming ``label``, ``what`` the file is, what it should hold
    (``expected``), where its digest is recorded and what to do (``fix``)."""
    if not path.exists() and not path.is_symlink():
        raise RegistryError(f"{label}: {what} {path.name} is missing; {fix}")
    check_inside(path, root, f"{label}: {what} {path.name}")
    if not path.is_file():
        raise RegistryError(f"{label}: {what} {path.name} is not a regular file; {fix}")
    if path.stat().st_size > MAX_BYTES:
        raise RegistryError(f"{label}: {what} {path.name} is larger than {MAX_BYTES >> 20} MiB; {fix}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RegistryError(f"{label}: {what} {path.name} cannot be read ({exc}); {fix}") from None
    if not isinstance(array, np.ndarray) or not fits(array):
        raise RegistryError(f"{label}: {what} {path.name} holds {getattr(array, 'dtype', '?')} "
                            f"{getattr(array, 'shape', '?')}, not {expected}; {fix}")
    got = sha256_array(array)
    if got != digest:
        raise RegistryError(f"{label}: {what} {path.name} (sha256 {short(got)}) is not the one {recorded_by} records "
                            f"({short(digest)}); {fix}")
    return array


def write_records(path: Path, array: np.ndarray) -> str:
    """Write ``array`` (:func:`as_records`) atomically to ``path``; returns its digest for the YAML."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3 or array.dtype not in (np.float32, np.float64):
        raise ValueError(f"records must be a (layers, images, fields) array, got shape {array.shape}")
    return _write_array(path, array)


def read_records(path: Path, digest: str, *, root: Path, layers: int, label: str) -> np.ndarray:
    """The records at ``path``, checked: a (``layers``, images, fields) float array of finite values whose
    digest is ``digest``. Anything else is a :class:`RegistryError` naming ``label`` and what to do."""
    fix = "add its records again (`forensics registry records`), or remove the condition from its `records:`"
    array = _read_array(path, digest, root=root, label=label, what="records file", fix=fix,
                        fits=lambda a: a.dtype in (np.float32, np.float64) and a.ndim == 3 and a.shape[0] == layers
                        and a.shape[1] > 0,
                        expected=f"({layers}, images, fields) floats", recorded_by="its generator file")
    if not np.isfinite(array).all():
        raise RegistryError(f"{label}: records file {path.name} holds NaN or infinite values; {fix}")
    return array


def write_digests(path: Path, digests: np.ndarray) -> str:
    """Write an instance's per-image digests (an (images, 16) uint8 array) atomically to ``path``; returns the
    array's digest for its provenance."""
    digests = np.ascontiguousarray(digests)
    if digests.dtype != np.uint8 or digests.ndim != 2 or digests.shape[1] != IMAGE_DIGEST_BYTES or not len(digests):
        raise ValueError(f"image digests must be an (images, {IMAGE_DIGEST_BYTES}) uint8 array, got "
                         f"{digests.dtype} {digests.shape}")
    return _write_array(path, digests)


def read_digests(path: Path, digest: str, *, root: Path, label: str) -> np.ndarray:
    """The per-image digests at ``path``, checked: an (images, 16) uint8 array whose digest is ``digest``.
    Anything else is a :class:`RegistryError` naming ``label`` and what to do."""
    return _read_array(path, digest, root=root, label=label, what="image digests file",
                       fix="add them again (`forensics registry records` with the images it was enrolled from)",
                       fits=lambda a: a.dtype == np.uint8 and a.ndim == 2 and a.shape[1] == IMAGE_DIGEST_BYTES
                       and a.shape[0] > 0,
                       expected=f"(images, {IMAGE_DIGEST_BYTES}) bytes", recorded_by="its provenance")
