"""Content hashes: the identity of data, weights and protocols.

A hash here is always ``"sha256:" + hexdigest`` of a canonical byte form, so that two things with the
same content have the same identity whatever file, order of keys or array layout they came from.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "sha256:"


def sha256_bytes(data: bytes) -> str:
    """Hash of bytes."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the byte form that digests are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_json(obj: Any) -> str:
    """Hash of :func:`canonical_json` of ``obj``: the identity of a record, whatever the order of its keys."""
    return sha256_bytes(canonical_json(obj).encode("ascii"))


def _feed(h: Any, array: np.ndarray, header: str) -> None:
    """Feed ``header`` (ASCII) and the C-ordered bytes of ``array`` to the hash ``h``."""
    h.update(header.encode("ascii"))
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))


def sha256_array(array: np.ndarray) -> str:
    """Hash of an array's dtype, shape and C-ordered bytes."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256()
    _feed(h, array, f"{array.dtype.str}{array.shape}")
    return PREFIX + h.hexdigest()


def sha256_images(images: Iterable[np.ndarray]) -> str:
    """Hash of a sequence of uint8 images, in order: each one's shape and pixels (the hash of a folder of
    image files: it does not depend on how the files were compressed)."""
    h = hashlib.sha256()
    for pixels in images:
        _feed(h, pixels, f"{pixels.shape}")
    return PREFIX + h.hexdigest()


IMAGE_DIGEST_BYTES = 16


def image_digests(images: Iterable[np.ndarray]) -> np.ndarray:
    """One 16-byte BLAKE2b digest per image (an (n, 16) uint8 array) of its decoded pixels and their shape, a
    colour image whose three channels are equal taken as the grey image it is: the identity of an image
    whatever file or array it was read from (a grey digit saved as RGB is the same image)."""
    out = []
    for pixels in images:
        pixels = np.ascontiguousarray(pixels)
        if pixels.ndim == 3 and pixels.shape[-1] == 3 and (pixels[..., 0] == pixels[..., 1]).all() \
                and (pixels[..., 0] == pixels[..., 2]).all():
            pixels = np.ascontiguousarray(pixels[..., 0])
        h = hashlib.blake2b(digest_size=IMAGE_DIGEST_BYTES)
        _feed(h, pixels, f"{pixels.dtype.str}{pixels.shape}")
        out.append(np.frombuffer(h.digest(), dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, IMAGE_DIGEST_BYTES), dtype=np.uint8)


def sha256_tensors(named: Iterable[tuple[str, Any]]) -> str:
    """Hash of named tensors (a state dict), independent of the order they come in."""
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        array = tensor.detach().cpu().contiguous().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        h.update(name.encode("utf-8"))
        _feed(h, array, f"{array.dtype.str}{array.shape}")
    return PREFIX + h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hash of a regular file's bytes, read in chunks; anything else (a FIFO would block, a device never
    end) is refused before it is opened."""
    from forensics.errors import ForensicsError

    if not stat.S_ISREG(Path(path).stat().st_mode):
        raise ForensicsError(f"{path}: not a regular file; only files can be hashed")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return PREFIX + h.hexdigest()


def short(digest: str, n: int = 12) -> str:
    """The first ``n`` hex digits of a digest, for display."""
    return digest.removeprefix(PREFIX)[:n]


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a digest as written here: ``"sha256:"`` and 64 lower-case hex digits."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return False
    hexpart = value[len(PREFIX):]
    return len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)


def freeze(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-JSON copy of a mapping (tuples become lists), checked to be serialisable."""
    return json.loads(canonical_json(mapping))
