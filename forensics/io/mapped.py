"""Arrays that load without copying: an ``.npz`` laid out to be memory-mapped.

:func:`save_mapped_npz` writes an ordinary ``.npz`` (any numpy reads it with ``np.load``) whose members are
stored, not compressed, and whose array data start on a 64-byte boundary *of the file*: each member's
``.npy`` header is padded so. :func:`open_mapped_npz` maps the file once, read-only, and returns every
array as a view of the mapping — no copy, no per-array read — so opening a file of any size takes a
fraction of a millisecond, and the pages are read from disk (or the page cache) only when used.

Integrity without reading twice: the file carries one extra member, ``__sums__``, the sum of each other
member's bytes as 64-bit words, taken as it was written. :func:`open_mapped_npz` checks them on the mapped
bytes (a pass at memory speed, several times faster than the zip CRCs that ``np.load`` checks); a caller
that has already hashed the whole mapping (a shipped file checked against its recorded sha256) skips
them. Any changed byte changes its word's sum, so damage is detected; a truncated file fails the layout
checks before anything is mapped.

One caution comes with any memory map: if the file is truncated *in place* while mapped, touching the lost
pages kills the process (SIGBUS). The writers here never do that (they write a new file and rename it over
the old one, which leaves a mapped old file whole).
"""

from __future__ import annotations

import ast
import mmap
import os
import stat
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forensics.io.atomic import write_atomic

ALIGN = 64                     # array data start on this boundary of the file
SUMS = "__sums__"              # the member holding the other members' word sums
_MAGIC = b"\x93NUMPY\x01\x00"  # .npy format 1.0
_LOCAL = struct.Struct("<4s5H3L2H")  # a zip local file header (30 bytes)
_MAX_HEADER = 10_000           # an .npy header longer than this is not one of ours


class Unmappable(Exception):
    """The file is an ``.npz`` in another layout (compressed, not aligned, no sums): read it with ``np.load``."""


class Damaged(Exception):
    """The file is not whole: a layout check or a word sum failed."""


def word_sum(data: Any) -> int:
    """The sum, modulo 2**64, of ``data``'s bytes read as little-endian 64-bit words (the last one padded
    with zero bytes). A change of any byte changes the sum."""
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % 8
    total = 0
    if whole:
        words = np.frombuffer(view[:whole], dtype="<u8")
        total = int(np.add.reduce(words, dtype=np.uint64)) if words.size else 0
    if whole < len(view):
        total += int.from_bytes(bytes(view[whole:]).ljust(8, b"\0"), "little")
    return total % (1 << 64)


def _npy_header(array: np.ndarray, start: int) -> bytes:
    """An .npy 1.0 header for ``array`` (C order) padded so that the data after it begin on an ALIGN
    boundary of the file, the header itself starting at byte ``start``."""
    descr = np.lib.format.dtype_to_descr(array.dtype)
    text = "{" + f"'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(array.shape)!r}, " + "}"
    body = len(_MAGIC) + 2 + len(text) + 1  # magic, length, text, final newline
    pad = (-(start + body)) % ALIGN
    header = (text + " " * pad + "\n").encode("latin1")
    return _MAGIC + struct.pack("<H", len(header)) + header


def save_mapped_npz(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (name → array; no object arrays) as a mappable ``.npz`` at ``path``, atomically."""
    names = list(arrays)
    if SUMS in names:
        raise ValueError(f"{SUMS!r} is reserved")

    def write(f) -> None:
        sums: list[int] = []
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in [*names, SUMS]:
                array = np.asarray(np.array(sums, dtype="<u8") if name == SUMS else arrays[name])
                if array.dtype.hasobject:
                    raise ValueError(f"array {name!r} holds Python objects; only plain arrays can be mapped")
                array = array if array.flags.c_contiguous else array.copy(order="C")  # (0-d stays 0-d)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                info.file_size = 256 + len(repr(array.shape)) + array.nbytes + ALIGN  # bounds the real size
                with zf.open(info, "w") as member:
                    header = _npy_header(array, f.tell())  # the local header is written: data start here
                    member.write(header)
                    data = memoryview(array).cast("B") if array.nbytes else b""
                    for s in range(0, len(data), 1 << 24):
                        member.write(data[s:s + (1 << 24)])
                sums.append((word_sum(header) + word_sum(data)) % (1 << 64))

    return write_atomic(path, write)


class MappedNpz(Mapping[str, np.ndarray]):
    """The arrays of a mappable ``.npz``, views of one read-only mapping of the file (:attr:`buffer`, which
    a caller may hash: it is the file's bytes). :attr:`identity` says which file version was mapped."""

    def __init__(self, arrays: dict[str, np.ndarray], buffer: Any, identity: tuple):
        self._arrays, self.buffer, self.identity = arrays, buffer, identity

    def __getitem__(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


def file_identity(st: os.stat_result) -> tuple:
    """What changes when a file is replaced or written: device, inode, size, modification and change times."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_mapped_npz(path: str | Path, *, check_sums: bool = True) -> MappedNpz:
    """Map ``path`` and view its arrays in place (see the module docstring).

    Raises :class:`Unmappable` for an ``.npz`` in another layout, :class:`Damaged` when a check fails,
    OSError when the file cannot be opened (a link is refused: it is opened without following it)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Damaged(f"{path} is not a regular file")
        if st.st_size == 0:
            raise Damaged(f"{path} is empty")
        with os.fdopen(os.dup(fd), "rb") as f:
            try:
                infos = zipfile.ZipFile(f).infolist()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise Damaged(f"{path}: not a whole .npz ({exc})") from None
        buffer = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    view = memoryview(buffer)
    members: list[tuple[str, int, int]] = []  # name, data start, data size
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise Unmappable(f"{path}: member {info.filename} is compressed or encrypted")
        if not info.filename.endswith(".npy"):
            raise Unmappable(f"{path}: member {info.filename} is not an array")
        start = info.header_offset
        if start + _LOCAL.size > len(view):
            raise Damaged(f"{path}: member {info.filename} lies outside the file")
        head = _LOCAL.unpack_from(view, start)
        if head[0] != b"PK\x03\x04":
            raise Damaged(f"{path}: member {info.filename} has no local header")
        name_len, extra_len = head[-2], head[-1]
        data = start + _LOCAL.size + name_len + extra_len
        if data + info.file_size > len(view) or info.compress_size != info.file_size:
            raise Damaged(f"{path}: member {info.filename} is cut short")
        members.append((info.filename[:-4], data, info.file_size))
    if not members or members[-1][0] != SUMS:
        raise Unmappable(f"{path}: no {SUMS} member (an .npz not written to be mapped)")
    arrays: dict[str, np.ndarray] = {}
    sums: list[int] = []
    for name, start, size in members:
        array, header_len = _view(view, buffer, start, size, f"{path}: member {name}")
        arrays[name] = array
        if check_sums and name != SUMS:
            sums.append((word_sum(view[start:start + header_len]) + word_sum(view[start + header_len:start + size]))
                        % (1 << 64))
    recorded = arrays.pop(SUMS)
    if recorded.dtype != np.dtype("<u8") or recorded.shape != (len(members) - 1,):
        raise Damaged(f"{path}: its {SUMS} member does not match its members")
    if check_sums and [int(v) for v in recorded] != sums:
        bad = next(name for (name, _, _), a, b in zip(members, recorded, sums) if int(a) != b)
        raise Damaged(f"{path}: member {bad} does not match the sum recorded when it was written")
    return MappedNpz(arrays, buffer, file_identity(st))


def _view(view: memoryview, buffer: Any, start: int, size: int, what: str) -> tuple[np.ndarray, int]:
    """The array stored in ``view[start:start + size]`` (an .npy) as a view of ``buffer``, and its header's
    length."""
    if size < len(_MAGIC) + 2 or bytes(view[start:start + len(_MAGIC)]) != _MAGIC:
        raise Unmappable(f"{what} is not an .npy of format 1.0")
    (length,) = struct.unpack_from("<H", view, start + len(_MAGIC))
    header_len = len(_MAGIC) + 2 + length
    if length > _MAX_HEADER or header_len > size:
        raise Damaged(f"{what} has a damaged header")
    try:
        d = ast.literal_eval(bytes(view[start + len(_MAGIC) + 2:start + header_len]).decode("latin1"))
        shape, fortran, dtype = tuple(d["shape"]), d["fortran_order"], np.lib.format.descr_to_dtype(d["descr"])
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as exc:
        raise Damaged(f"{what} has a damaged header ({type(exc).__name__})") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"} or fortran is not False \
            or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise Unmappable(f"{what} is not a C-ordered array")
    if dtype.hasobject:
        raise Damaged(f"{what} holds Python objects")
    offset = start + header_len
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != size - header_len:
        raise Damaged(f"{what}: its header does not match its size")
    if count == 0:
        return np.empty(shape, dtype=dtype), header_len
    if offset % ALIGN:
        return np.frombuffer(view[offset:offset + size - header_len], dtype=dtype).reshape(shape).copy(), header_len
    return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset), header_len


def read_all(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` of either layout, checked (mapped views, or copies read by ``np.load``)."""
    try:
        return dict(open_mapped_npz(path))
    except Unmappable:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


__all__ = ["ALIGN", "Damaged", "MappedNpz", "SUMS", "Unmappable", "file_identity", "open_mapped_npz", "read_all",
           "save_mapped_npz", "word_sum"]
