"""The on-disk embedding cache: one file per (image set, encoder, weights, layer, pooling, preprocessing).

Embedding a reference set is the slow part of building a protocol's reference side, so embeddings are
kept under the user cache folder (``$FORENSICS_CACHE_DIR``, else ``platformdirs.user_cache_dir("forensics")``),
in ``embeddings/<2 hex>/<key>.npz``. The key is a SHA-256 of everything the values depend on: the content
hash of the images, the encoder's name, options and weights digest, the layer, the pooling, the
preprocessing and the autocast dtype. Each file also carries its key and a checksum of its array; a file
that cannot be read, or whose key or checksum does not match, is damaged: it is removed and recomputed.
Files are written through a temporary file and an atomic rename, so concurrent writers and crashes never
leave half a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forensics.io.atomic import write_atomic
from forensics.io.hashing import sha256_array, sha256_json

CACHE_FORMAT = 1


def cache_dir() -> Path:
    """The user cache folder: ``$FORENSICS_CACHE_DIR``, else the platform's cache folder for forensics."""
    env = os.environ.get("FORENSICS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("forensics"))


def embedding_key(*, images: str, encoder: Mapping[str, Any], layer: str, amp: str | None = None) -> str:
    """The cache key of one layer's embeddings of one image set.

    ``images`` is the content hash of the images; ``encoder`` what :func:`encoder_record` returns.
    """
    return sha256_json({"format": CACHE_FORMAT, "images": images, "encoder": dict(encoder), "layer": layer,
                        "amp": amp})


def encoder_record(encoder: Any) -> dict[str, Any]:
    """What of an encoder enters an embedding's cache key (everything its values depend on)."""
    return {"name": encoder.name, "options": dict(getattr(encoder, "options", {}) or {}),
            "weights": encoder.weights.digest, "pooling": encoder.pooling,
            "preprocessing": encoder.preprocessing.to_dict()}


class EmbeddingCache:
    """Embeddings on disk by key (see the module docstring). ``root`` defaults to :func:`cache_dir`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "embeddings"

    def path(self, key: str) -> Path:
        hexkey = key.removeprefix("sha256:")
        return self.root / hexkey[:2] / f"{hexkey}.npz"

    def get(self, key: str, *, rows: int | None = None) -> np.ndarray | None:
        """The cached array of ``key``, or None when absent or damaged (a damaged file is removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                array = data["embedding"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
            return self._discard(path)
        if (meta.get("format") != CACHE_FORMAT or meta.get("key") != key or sha256_array(array) != meta.get("sha256")
                or (rows is not None and array.shape[0] != rows)):
            return self._discard(path)
        return array

    def put(self, key: str, array: np.ndarray) -> Path:
        """Write ``array`` under ``key`` atomically."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        meta = json.dumps({"format": CACHE_FORMAT, "key": key, "sha256": sha256_array(array)})
        return write_atomic(self.path(key), lambda f: np.savez(f, embedding=array, meta=np.array(meta)))

    def _discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        return None

    def clear(self) -> int:
        """Remove every cached embedding; return how many files went."""
        count = 0
        if self.root.is_dir():
            for path in self.root.glob("*/*.npz"):
                path.unlink(missing_ok=True)
                count += 1
        return count
