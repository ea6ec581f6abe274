"""The digest the registry records of each shipped reference side.

A protocol's fitted reference side may be shipped in ``<registry>/<protocol>/reference/<key>.npz``. Its
fingerprints were scored against exactly that file, so the registry records its sha256 beside it, in
``reference/SHA256`` (one ``<hex>  <file name>`` line per file, the form ``sha256sum -c`` reads). The
manifest is outside the protocol record: protocol digests and enrolled curves do not depend on it. The
engine checks a shipped file against it before use, hashing the same read-only mapping of the file that it
then computes with (the bytes are read once; once per process and file version); ``registry validate``
checks every shipped file.
"""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path
from typing import Any

from forensics.errors import ForensicsError, RegistryError
from forensics.io.atomic import write_text_atomic
from forensics.io.hashing import PREFIX, sha256_file

MANIFEST = "SHA256"
#: a manifest is a few lines; a larger one is not one
MAX_MANIFEST_BYTES = 1 << 20
_LINE = re.compile(r"^([0-9a-f]{64}) [ *]([A-Za-z0-9][A-Za-z0-9_.+-]{0,127}\.npz)$")


def file_sha256(path: Path) -> str:
    """The bare sha256 hex of a regular file, as the manifest writes it (:func:`forensics.io.hashing.sha256_file`)."""
    try:
        return sha256_file(path).removeprefix(PREFIX)
    except ForensicsError as exc:
        raise RegistryError(str(exc)) from None


def read_manifest(folder: Path, label: str) -> dict[str, str] | None:
    """file name → sha256 hex recorded in ``folder/SHA256``; None when there is no manifest. A manifest that
    is not one (too large, a link, a bad line) is a :class:`RegistryError` naming ``label``."""
    from forensics.registry.schema import read_bytes_limited

    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    raw = read_bytes_limited(path, label, MAX_MANIFEST_BYTES, root=Path(folder))
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise RegistryError(f"{label}: not a manifest of sha256 digests (non-ASCII bytes)") from None
    found: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise RegistryError(f"{label}: line {n}: expected '<64 hex digits>  <file>.npz', got {line[:80]!r}")
        found[m.group(2)] = m.group(1)
    return found


def manifest_text(folder: Path, updates: dict[str, str]) -> str:
    """The text of ``folder``'s manifest with ``updates`` (file name → sha256 hex) recorded, other lines kept."""
    folder = Path(folder)
    try:
        known = read_manifest(folder, str(folder / MANIFEST)) or {}
    except RegistryError:
        known = {}
    known.update(updates)
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(known.items()))


def record(path: Path) -> Path:
    """Record the sha256 of the shipped file ``path`` in its folder's manifest (other lines kept). The caller
    holds the registry's lock; a new file and its digest are written together by
    :meth:`forensics.registry.Registry.ship_reference`."""
    path = Path(path)
    return write_text_atomic(path.parent / MANIFEST, manifest_text(path.parent, {path.name: file_sha256(path)}))


def recorded_digest(path: Path, protocol: str) -> str:
    """The sha256 hex the registry records for the shipped reference side ``path``; a
    :class:`RegistryError` when it records none, or ``path`` is a link or not a regular file."""
    path = Path(path)
    what = f"the shipped reference side of {protocol} ({path})"
    digests = read_manifest(path.parent, str(path.parent / MANIFEST))
    if digests is None or path.name not in digests:
        raise RegistryError(f"{what} has no digest recorded in the registry ({path.parent / MANIFEST}); "
                            "re-create it with `forensics protocol create … --ship-reference`, or remove it to "
                            "recompute the reference side")
    if path.is_symlink() or not stat.S_ISREG(path.stat().st_mode):
        raise RegistryError(f"{what} is a link or not a regular file; a registry holds its files itself")
    return digests[path.name]


def check(path: Path, protocol: str, data: Any = None, expected: str | None = None) -> None:
    """Refuse (:class:`RegistryError`) a shipped reference side whose sha256 is not the one the registry
    records, or for which it records none. ``data``: the file's bytes already in memory (e.g. a read-only
    mapping of it, which the caller then uses: the bytes are read once), hashed instead of reading the
    file again; ``expected``: the recorded digest when the caller has it (:func:`recorded_digest`)."""
    path = Path(path)
    expected = recorded_digest(path, protocol) if expected is None else expected
    found = file_sha256(path) if data is None else hashlib.sha256(data).hexdigest()
    if found != expected:
        raise RegistryError(f"the shipped reference side of {protocol} ({path}) does not match the digest the "
                            "registry records; restore it from the registry's source (git) or re-create it with "
                            "`forensics protocol create … --ship-reference` and re-enrol")


def migrate(folder: Path, protocol: str) -> list[tuple[Path, bool]]:
    """Lay out every reference side recorded in ``folder``'s manifest to be memory-mapped
    (:func:`forensics.io.mapped.save_mapped_npz`), the arrays unchanged bit for bit, and record the new
    digests. Each file is checked against its recorded digest first (a changed file is refused), and the
    rewritten one is read back and compared array by array before its digest is recorded. Returns
    (file, rewritten) pairs: a file already in the mapped layout is left as it is. The caller holds the
    registry's lock."""
    import numpy as np

    from forensics.io.mapped import Unmappable, open_mapped_npz, save_mapped_npz

    folder = Path(folder)
    done: list[tuple[Path, bool]] = []
    for name in sorted(read_manifest(folder, str(folder / MANIFEST)) or {}):
        path = folder / name
        if not path.exists():
            raise RegistryError(f"{path}: recorded in {folder / MANIFEST}, but the file is missing")
        check(path, protocol)
        try:
            open_mapped_npz(path, check_sums=False)
            done.append((path, False))
            continue
        except Unmappable:
            pass
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        save_mapped_npz(path, arrays)
        back = open_mapped_npz(path)
        if list(back) != list(arrays) or any(back[k].dtype != v.dtype or back[k].shape != v.shape
                                             or back[k].tobytes() != v.tobytes() for k, v in arrays.items()):
            raise RegistryError(f"{path}: the rewritten file does not hold the same arrays; restore it from the "
                                "registry's source (git)")  # pragma: no cover - a failing disk
        record(path)
        done.append((path, True))
    return done
