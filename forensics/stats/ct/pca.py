"""PCA fitted on the training set, and the projection of any set onto its axes.

PCA comes from the d × d covariance, accumulated in float64 over row tiles (never an SVD of T, never a
float64 copy of T); the small d × d eigenproblem is then solved and the leading axes kept. The
covariance (a float64 pass over T of about l·d²/2 multiply-adds) is the one cost no exact method
avoids: float32 would move the principal axes by ~1e-7 and reorder near-equal distances.

Both functions take the row tiles of :mod:`.tiles` (:class:`.tiles.HostRows` or
:class:`.tiles.DeviceRows`), so one routine runs on the host and on a device. On a device the float64
sums run in another order: its axes agree with the host's to ~1e-13.
"""

from __future__ import annotations

import numpy as np

from forensics.errors import StatisticError, UsageError

from .tiles import RowTiles, row_groups


def _total(parts: list):
    """The parts added in order (so the total does not depend on which thread computed which part)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def available_memory() -> int | None:
    """Bytes this process can still allocate (Linux: MemAvailable, within a cgroup's limit), or None."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(n: int, d: int) -> None:
    """Refuse, in one line, a PCA whose d × d covariance (its accumulators, their sum, the eigenvectors and
    the solver's workspace) would not fit in memory: a layer of 50,000 values needs some 20 GiB a copy, and
    the kernel would kill the run without a word."""
    need = 8 * d * d * (len(row_groups(n, d)) + 3)
    free = available_memory()
    if free is not None and need > free:
        raise UsageError(f"PCA of a layer of {d:,} values needs its {d:,} × {d:,} covariance, about "
                         f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free here: project with "
                         f"--projection 0 (no PCA), or use an encoder whose layers are pooled to fewer values")


def pca(rows: RowTiles, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal axes (d × dims, float64) of the rows of ``rows``."""
    check_memory(rows.n, rows.d)
    mean = _total(rows.column_sums()) / rows.n
    cov = _total(rows.grams(mean))
    return rows.host(mean), axes(rows.eigenvectors(cov), dims)


def axes(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The last ``dims`` columns of ascending eigenvectors, largest eigenvalue first, each sign fixed
    (largest entry positive) so that the projection is reproducible."""
    d = vectors.shape[1]
    vectors = vectors[:, d - min(dims, d):][:, ::-1]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return np.ascontiguousarray(vectors * signs)


def project(rows: RowTiles, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(x − mean) @ components in float64 for the rows of ``rows``, a row tile at a time (each tile
    computed the same way whatever the number of threads; on the host, each row's projection
    depends on that row alone: :meth:`.tiles.HostRows.project`)."""
    return rows.project(mean, components)


def normalise(x: np.ndarray, name: str) -> np.ndarray:
    """Rows scaled to unit length (float64), for the cosine distance; a zero row is an error."""
    x = x.astype(np.float64, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.any(norms == 0):
        raise StatisticError(f"{name} has a zero vector (after projection, if any), which has no "
                             f"direction for the cosine distance; use distance='euclidean' or drop it")
    return x / norms[:, None]
