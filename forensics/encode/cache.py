"""The on-disk embedding cache: per-layer embeddings of an image set, in shards, keyed by content.

Embedding a reference set is the slow part of building a protocol's reference side, so embeddings are
kept under the user cache folder (``$FORENSICS_CACHE_DIR``, else ``platformdirs.user_cache_dir("forensics")``).
One *entry* holds one layer's embeddings of one image set::

    embeddings/<2 hex>/<key hex>/index.json                      # format, key, rows, dim, what, shards
    embeddings/<2 hex>/<key hex>/<start:012d>-<stop:012d>.npy    # rows start..stop, float32 (rows, dim)

The key is a SHA-256 of everything the values depend on: the content hash of the images, the encoder's
name, options and weights digest, the layer, the pooling, the preprocessing and the autocast dtype. The
index lists the shards in order, each with its row range and the sha256 of its array; only an entry
whose index is whole, whose shards tile its rows and whose shards match their digests is read. Anything
else is damage: the entry is removed, with a warning, and recomputed.

The layout does not depend on who wrote it. The local engine writes shards of about
:data:`SHARD_BYTES`; the Ray engine (:mod:`forensics.distributed`) has each encoder actor write the shards
of the images it embedded, and the driver writes the index once every shard is there. Either engine reads
what the other wrote: a reference side embedded on a cluster is reused on a laptop, and the other way
round. Every file is written through a temporary file and an atomic rename, and the index last, so a
crash or a concurrent writer never leaves an entry that reads as whole and is not.

Entries of the first cache format (one ``.npz`` per key, ``embeddings/<2 hex>/<key hex>.npz``) are no
longer read: their keys differ, so they are recomputed once; :func:`iter_entries` lists them so that
they can be removed.

:func:`iter_entries` lists everything under the cache folder (embedding entries, reference sides,
old files) with its size, time and a one-line description: what ``forensics cache list`` shows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forensics.errors import ForensicsError
from forensics.io.atomic import write_atomic, write_text_atomic
from forensics.io.hashing import sha256_array, sha256_json, short

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "SHARD_BYTES", "CacheEntry", "EmbeddingCache", "Shard", "cache_dir", "embedding_key",
           "encoder_record", "iter_entries", "shard_rows_for"]

CACHE_FORMAT = 2
#: the size the local engine cuts a layer's embeddings into (a ViT-B layer: ~10,900 images a shard)
SHARD_BYTES = 32 << 20
INDEX = "index.json"
#: an index is a few lines per shard; a larger file is not one
_MAX_INDEX_BYTES = 64 << 20
_SHARD_NAME = re.compile(r"^([0-9]{12})-([0-9]{12})\.npy$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    """The user cache folder: ``$FORENSICS_CACHE_DIR``, else the platform's cache folder for forensics. One
    that exists as anything but a folder is a :class:`ForensicsError` now, not when the first result of
    minutes of work is written into it."""
    env = os.environ.get("FORENSICS_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        path = Path(user_cache_dir("forensics"))
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise ForensicsError(f"the cache folder {path} is not a folder: move that file away, or point "
                             "FORENSICS_CACHE_DIR at a folder")
    return path


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


def shard_rows_for(dim: int, target_bytes: int = SHARD_BYTES) -> int:
    """Rows of a float32 shard of ``dim`` columns that hold about ``target_bytes``."""
    return max(1, int(target_bytes) // (4 * max(1, int(dim))))


def shard_name(start: int, stop: int) -> str:
    """The file name of the shard of rows ``start`` to ``stop``."""
    return f"{start:012d}-{stop:012d}.npy"


@dataclass(frozen=True)
class Shard:
    """One shard of an entry: rows ``start`` to ``start + rows`` in ``file``, its array's ``sha256``."""

    file: str
    start: int
    rows: int
    sha256: str

    @property
    def stop(self) -> int:
        return self.start + self.rows

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "start": self.start, "rows": self.rows, "sha256": self.sha256}


@dataclass(frozen=True)
class CacheEntry:
    """One thing under the cache folder, as :func:`iter_entries` lists it.

    ``kind``: ``"embeddings"`` (one layer of one image set), ``"reference"`` (a protocol's fitted
    reference side), ``"old"`` (a file of an earlier cache format, no longer read) or ``"other"``.
    ``size`` is in bytes (a folder: all its files), ``mtime`` a POSIX time, ``what`` one line saying
    what it is; ``key`` the cache key of an embedding entry."""

    path: Path
    kind: str
    size: int
    mtime: float
    what: str
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "size": self.size, "mtime": self.mtime,
                "what": self.what, "key": self.key}

    def remove(self) -> None:
        """Delete it (a folder with its files)."""
        _remove(self.path)


def _remove(path: Path, *, strict: bool = True) -> None:
    """Delete a file or a folder with its files. ``strict``: one that cannot be deleted (a read-only cache
    folder) is a :class:`ForensicsError` that says so, never an entry reported removed that is still there;
    else (damage found while reading, which must not stop a run) what can go goes, quietly."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=not strict)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        if strict and (path.exists() or path.is_symlink()):  # (not another process that removed it first)
            raise ForensicsError(f"cannot remove {path} from the cache ({exc.strerror or exc}): clearing the cache "
                                 "needs its folder writable (the entries before this one were removed)") from None


class EmbeddingCache:
    """Embeddings on disk by key (see the module docstring). ``root`` defaults to ``cache_dir()/embeddings``.

    ``get``/``put`` read and write a whole layer; ``write_shard`` and ``write_index`` let several
    processes write one entry's shards in parallel, the index last; ``shards`` lists a whole entry's
    shard files for a reader that streams them."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "embeddings"

    def path(self, key: str) -> Path:
        """The folder of ``key``'s entry."""
        hexkey = key.removeprefix("sha256:")
        if not _HEX.match(hexkey):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / hexkey[:2] / hexkey

    # -- reading ----------------------------------------------------------------------------------
    def index(self, key: str, *, rows: int | None = None) -> dict[str, Any] | None:
        """The entry's index when it is whole and its shards tile its rows (their files present), else
        None; a damaged entry is removed. Shard contents are checked by :meth:`get`, not here."""
        folder = self.path(key)
        path = folder / INDEX
        if not path.is_file():
            return None
        try:
            if path.stat().st_size > _MAX_INDEX_BYTES:
                raise ValueError("index too large")
            meta = json.loads(path.read_text("utf-8"))
            shards = [Shard(str(s["file"]), int(s["start"]), int(s["rows"]), str(s["sha256"]))
                      for s in meta["shards"]]
            n, dim = int(meta["rows"]), int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return self._discard(folder, "its index cannot be read")
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key or meta.get("dtype") != "<f4" or dim < 1 \
                or (rows is not None and n != rows) or not _tiles(shards, n):
            return self._discard(folder, "its index does not describe it")
        if not all((folder / s.file).is_file() for s in shards):
            return self._discard(folder, "a shard is missing")
        meta["shards"] = shards
        return meta

    def shards(self, key: str, *, rows: int | None = None) -> list[tuple[Path, Shard]] | None:
        """The entry's shard files in row order with their records, or None (absent or damaged)."""
        meta = self.index(key, rows=rows)
        if meta is None:
            return None
        folder = self.path(key)
        return [(folder / s.file, s) for s in meta["shards"]]

    def get(self, key: str, *, rows: int | None = None) -> np.ndarray | None:
        """The cached array of ``key`` (float32, rows × dim), or None when absent or damaged (a damaged
        entry is removed). Every shard is checked against its digest."""
        meta = self.index(key, rows=rows)
        if meta is None:
            return None
        folder = self.path(key)
        out = np.empty((int(meta["rows"]), int(meta["dim"])), np.float32)
        for shard in meta["shards"]:
            part = out[shard.start:shard.stop]
            if not read_npy_into(folder / shard.file, part) or sha256_array(part) != shard.sha256:
                return self._discard(folder, f"shard {shard.file} is not what was written (truncated or changed)")
        return out

    # -- writing ----------------------------------------------------------------------------------
    def write_shard(self, key: str, start: int, array: np.ndarray) -> Shard:
        """Write rows ``start``… of ``key``'s entry (atomically); the entry is read only once
        :meth:`write_index` has listed the shard."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"a shard is a 2-D array, got shape {array.shape}")
        name = shard_name(int(start), int(start) + len(array))
        write_atomic(self.path(key) / name, lambda f: np.save(f, array, allow_pickle=False))
        return Shard(name, int(start), len(array), sha256_array(array))

    def write_index(self, key: str, shards: Sequence[Shard], *, rows: int, dim: int,
                    what: Mapping[str, Any] | None = None) -> Path:
        """Write the entry's index over ``shards`` (which must tile rows 0…``rows``), making it readable."""
        shards = sorted(shards, key=lambda s: s.start)
        if not _tiles(shards, rows):
            raise ValueError(f"the shards of {short(key)} do not cover rows 0..{rows} exactly once")
        meta = {"format": CACHE_FORMAT, "key": key, "rows": int(rows), "dim": int(dim), "dtype": "<f4",
                "what": dict(what or {}), "written": time.time(), "shards": [s.to_dict() for s in shards]}
        return write_text_atomic(self.path(key) / INDEX, json.dumps(meta, indent=1))

    def put(self, key: str, array: np.ndarray, *, what: Mapping[str, Any] | None = None,
            shard_rows: int | None = None) -> Path:
        """Write ``array`` (rows × dim) under ``key``: shards of ``shard_rows`` rows (default: about
        :data:`SHARD_BYTES` each), then the index. Returns the entry's folder. A write that fails (a full disk)
        takes the shards it wrote with it: they are never read without their index, and on a full disk they
        would keep every other write from fitting."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"embeddings are a 2-D array, got shape {array.shape}")
        step = int(shard_rows) if shard_rows else shard_rows_for(array.shape[1])
        folder = self.path(key)
        try:
            shards = [self.write_shard(key, s, array[s:s + step]) for s in range(0, max(1, len(array)), step)]
            self.write_index(key, shards, rows=len(array), dim=array.shape[1], what=what)
        except BaseException:
            if not (folder / INDEX).is_file():  # (an entry another process completed meanwhile stays)
                _remove(folder, strict=False)
            raise
        return folder

    def discard(self, key: str) -> None:
        """Remove ``key``'s entry."""
        self._discard(self.path(key))

    def _discard(self, folder: Path, why: str | None = None) -> None:
        """Remove an entry; ``why`` it is damaged, when it is, said in a warning (a disk that damages files, a
        run that takes as long again as the first), whose caller computes the embeddings again."""
        if why is not None and folder.exists():
            log.warning("cached embeddings %s were damaged (%s): removed, and computed again", folder, why)
        _remove(folder, strict=False)
        return None

    def clear(self) -> int:
        """Remove every cached embedding (entries of every format); return how many entries went."""
        count = 0
        for entry in _embedding_entries(self.root):
            entry.remove()
            count += 1
        return count


def _tiles(shards: Sequence[Shard], rows: int) -> bool:
    """Whether the shards, in order, cover rows 0…``rows`` exactly once, each under its own file name."""
    at = 0
    for s in shards:
        m = _SHARD_NAME.match(s.file)
        if m is None or s.start != at or s.rows < 0 or (s.rows == 0 and rows != 0) \
                or (int(m.group(1)), int(m.group(2))) != (s.start, s.stop):
            return False
        at = s.stop
    return at == rows


def read_npy_into(path: Path, out: np.ndarray) -> bool:
    """Read the .npy file ``path`` into ``out`` (a C-contiguous float32 array of the same shape) without
    an intermediate copy; False when the file is not exactly such an array."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            if fortran or dtype != np.dtype("<f4") or tuple(shape) != out.shape:
                return False
            view = memoryview(out).cast("B")
            got = f.readinto(view) if len(view) else 0
            return got == len(view) and not f.read(1)
    except (OSError, ValueError, SyntaxError, TypeError):
        return False


# -- listing ---------------------------------------------------------------------------------------
def _size_and_time(path: Path) -> tuple[int, float]:
    try:
        if path.is_dir() and not path.is_symlink():
            files = [p.lstat() for p in path.rglob("*") if p.is_file() or p.is_symlink()]
            st = path.lstat()
            return sum(s.st_size for s in files), max([st.st_mtime, *(s.st_mtime for s in files)])
        st = path.lstat()
        return st.st_size, st.st_mtime
    except OSError:
        return 0, 0.0


def _holds_nothing(path: Path) -> bool:
    """Whether ``path`` is a folder with no file in it, at any depth (an entry begun and never written, a fetch
    that stopped before its first byte): no entry, so not listed (``cache list`` counts what is there)."""
    try:
        return path.is_dir() and not path.is_symlink() and all(
            p.is_dir() and not p.is_symlink() for p in path.rglob("*"))
    except OSError:
        return False


def _unfinished(path: Path) -> str | None:
    """What a temporary file of :func:`~forensics.io.atomic.write_atomic` left behind is (a run stopped while
    writing it: never read, removed by ``cache clear``), or None for any other file."""
    if path.name.startswith(".") and path.name.endswith(".tmp") and not path.is_dir():
        return "an unfinished write (a run stopped while writing it; never read)"
    return None


def _describe(folder: Path) -> tuple[str, str | None]:
    """One line about an embedding entry, and its key, from its index."""
    try:
        meta = json.loads((folder / INDEX).read_text("utf-8"))
        what = meta.get("what") or {}
        parts = [str(what.get("encoder", "?")), str(what.get("layer", "?")), f"{meta['rows']}×{meta['dim']}"]
        if what.get("images"):
            parts.append(f"images {short(str(what['images']))}")
        if what.get("amp"):
            parts.append(str(what["amp"]))
        return f"embeddings: {' '.join(parts)}, {len(meta['shards'])} shard(s)", meta.get("key")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "embeddings: incomplete or damaged (no readable index; recomputed when needed)", None


def _embedding_entries(root: Path) -> Iterator[CacheEntry]:
    if not root.is_dir():
        return
    for group in sorted(root.iterdir()):
        if not group.is_dir() or group.is_symlink():
            size, mtime = _size_and_time(group)
            yield CacheEntry(group, "other", size, mtime, "not an embedding entry")
            continue
        for item in sorted(group.iterdir()):
            if _holds_nothing(item):
                continue
            size, mtime = _size_and_time(item)
            if item.is_dir() and not item.is_symlink():
                what, key = _describe(item)
                yield CacheEntry(item, "embeddings", size, mtime, what, key)
            elif item.suffix == ".npz":
                yield CacheEntry(item, "old", size, mtime, "embeddings of cache format 1 (no longer read)")
            else:
                yield CacheEntry(item, "other", size, mtime, "not an embedding entry")


def iter_entries(root: str | Path | None = None) -> Iterator[CacheEntry]:
    """Everything under the cache folder ``root`` (default :func:`cache_dir`), as :class:`CacheEntry`
    records: each embedding entry (one layer of one image set), each reference side under
    ``reference/``, each encoder's recorded layer widths under ``layers/``, old-format files, and anything
    else found there; a folder with no file in it is no entry. Nothing is read beyond the small
    indexes; ``entry.remove()`` deletes one."""
    base = Path(root) if root is not None else cache_dir()
    if not base.is_dir():
        return
    for top in sorted(base.iterdir()):
        if _holds_nothing(top):
            continue
        if top.name == "embeddings" and top.is_dir() and not top.is_symlink():
            yield from _embedding_entries(top)
        elif top.name == "reference" and top.is_dir() and not top.is_symlink():
            for item in sorted(i for i in top.iterdir() if not _holds_nothing(i)):
                size, mtime = _size_and_time(item)
                yield CacheEntry(item, "reference", size, mtime, _unfinished(item) or f"reference side {item.name}")
        elif top.name == "layers" and top.is_dir() and not top.is_symlink():
            # an encoder's layer widths, measured once (forensics_timm)
            for item in sorted(i for i in top.iterdir() if not _holds_nothing(i)):
                size, mtime = _size_and_time(item)
                yield CacheEntry(item, "layers", size, mtime,
                                 _unfinished(item) or f"layer widths of {item.stem.rsplit('-', 1)[0]}")
        elif top.name == "datasets" and top.is_dir() and not top.is_symlink():
            # data sets forensics fetches (CIFAR-10, forensics_datasets.cifar10_cache), kept by `cache clear`
            size, mtime = _size_and_time(top)
            # a data set is the folder an archive unpacked into; the archive is removed once unpacked, so one
            # still there is a download (or an unpacking) that stopped: fetched again from the start when needed
            items = [item for item in sorted(top.iterdir()) if not _holds_nothing(item)]
            held = [item.name for item in items if item.is_dir()]
            unfinished = [item.name for item in items if not item.is_dir()]
            yield CacheEntry(top, "datasets", size, mtime, "data sets fetched by forensics (CIFAR-10): "
                             + (", ".join(held) or "none whole")
                             + (f"; an unfinished download: {', '.join(unfinished)} (fetched again when needed)"
                                if unfinished else "") + "; `cache clear` keeps them")
        else:
            size, mtime = _size_and_time(top)
            yield CacheEntry(top, "other", size, mtime, "not written by this version of forensics")
