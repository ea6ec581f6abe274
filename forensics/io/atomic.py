"""Writes that never leave half a file: a temporary file in the same folder, fsync, then a rename.

:func:`check_output_path` is the one check of a path about to be written: a command calls it before its
run (so a bad ``--html`` or ``--out`` fails in a second, not after the work), and :func:`write_atomic`
enforces it again at the moment of writing. A path is refused when it is a symbolic link or exists as
anything but a regular file (a folder, a device node such as ``/dev/null``, a FIFO, a socket): the rename
would replace the link or the device itself instead of writing through it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from forensics.errors import UsageError

#: the longest part of the target's name kept in a temporary file's name (NAME_MAX is 255 bytes)
_TMP_NAME_PART = 100


def _show(path: Path | str, limit: int = 160) -> str:
    """A path for a one-line message: bytes that are not UTF-8 and unprintable characters escaped, a very
    long path cut in the middle."""
    text = str(path)
    if _has_surrogates(text):
        try:
            text = os.fsencode(text).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            text = ascii(text)[1:-1]
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name[:_TMP_NAME_PART]}."


def check_output_path(path: str | Path, *, make_parents: bool = False, probe: bool = True) -> Path:
    """Refuse, before any work is done, a path that an output file cannot safely be written to.

    A :class:`~forensics.errors.UsageError` (one line) when the path is a symbolic link, exists as anything
    but a regular file, has a name that cannot be written on this system (not encodable, too long), or its
    folder is missing (unless ``make_parents``) or cannot be written to. ``probe`` tests the folder for
    real by creating and removing an empty temporary file there, as the write will. Returns the path.
    """
    path = Path(path)
    where = _show(path)
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise UsageError(f"cannot write {where}: its name cannot be encoded as a file name here; "
                         "choose a name in plain characters") from None
    if path.name in ("", ".", "..") or encoded.endswith(b"/"):
        raise UsageError(f"cannot write {where}: it names a folder; give the path of a file")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # too long a name, a file where a folder should be, no permission, a link loop
        raise UsageError(f"cannot write {where}: {exc.strerror}") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{where} is a symbolic link; refusing to replace it: give the path of a regular file "
                         "(or of one that does not exist yet)")
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise UsageError(f"{where} is {kind}; refusing to replace it: give the path of a regular file")
    parent = path.parent
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX") if parent.is_dir() else 255
    except OSError:
        name_max = 255
    if len(os.fsencode(path.name)) > name_max:
        raise UsageError(f"cannot write {where}: its name is longer than {name_max} bytes")
    if make_parents:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write {where}: cannot make its folder ({exc.strerror})") from None
    elif not parent.is_dir():
        raise UsageError(f"cannot write {where}: its folder {_show(parent)} does not exist; make it first")
    if probe:
        try:
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=parent)
        except OSError as exc:
            raise UsageError(f"cannot write {where}: {exc.strerror} in {_show(parent)}") from None
        os.close(fd)
        os.unlink(tmp)
    return path


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` and rename it over ``path``.

    The path is checked with :func:`check_output_path` first (its folder made when missing)."""
    path = check_output_path(path, make_parents=True, probe=False)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    save = np.savez_compressed if compressed else np.savez
    return write_atomic(path, lambda f: save(f, **arrays))
