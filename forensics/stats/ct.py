"""The C_T data-copying statistic (Meehan, Chaudhuri & Dasgupta 2020), exact and fast.

For training set T (l × d), held-out set P_n (n × d) and generated set Q_m (m × d), embedded alike:

1. optionally project all three by PCA fitted on T only (to ``projection`` dimensions; a layer no wider
   than that is centred and rotated, which changes no Euclidean distance);
2. partition the space into cells: k-means fitted on T (seeded), or cell ids given from outside;
3. in every cell π, for each test and generated point, the distance to its nearest training point *of
   the same cell* — Euclidean, or 1 − |cos| (He et al.'s official choice);
4. per cell, the Mann–Whitney U of the generated distances against the test distances (pairs with
   L(q) > L(p), ties ½) and its normal approximation
   Z = (U − (m_π n_π / 2 − 0.5)) / sqrt(m_π n_π (m_π + n_π + 1) / 12);
5. C_T = Σ P_n(π)·Z(π) / Σ P_n(π) over the cells with m_π / m > τ (τ = 20/m by default).

C_T ≪ 0: the generated points sit closer to the training data than fresh data does (copying);
C_T ≈ 0: no evidence; C_T ≫ 0: underfitting.

The work splits in two. :class:`FittedCT` holds everything that does not depend on the generated
set — the projection, the cells, each cell's training points and the test points' distances — so a
caller fits it once per encoder layer, caches it (:meth:`FittedCT.to_arrays`), and scores any number
of generated batches with :meth:`FittedCT.score`. :func:`ct_score` is the two steps in one.

How it is fast and still exact (equal to a plain float64 computation to ~1e-15):

- PCA comes from the d × d covariance, accumulated in float64 over blocks of rows (never an SVD of T,
  never a float64 copy of T); the small d × d eigenproblem is then solved and the leading axes kept.
  The covariance (a float64 pass over T of about l·d²/2 multiply-adds) is the one cost no exact method
  avoids: float32 would move the principal axes by ~1e-7 and reorder near-equal distances.
- k-means: greedy k-means++ and Lloyd iterations by matrix products in float32, restarted from several
  seeds on a sample of T (the restarts in parallel, with the random numbers of running them in turn);
  the best run is refined on all of T. The cells are then the float64 nearest-centre assignment, the
  same rule for T, P_n and Q_m.
- Nearest neighbours: a blocked float32 search (one matrix product per tile, the squared norms folded
  into it, bounded memory) finds, for each query, every training point whose float32 score lies within
  a proven rounding bound of the best — per row the minimum and, after masking it, the second
  minimum, so a full scan is needed only for the rare rows with several candidates; the exact distance
  to those few candidates is then recomputed in float64 from the original coordinates. The reported
  distance is therefore the float64 one, whatever float32 did.
- U is counted from the sorted test distances (ranks), not from pairwise comparisons.

Threads: the work is split into independent jobs — row groups of the covariance, row blocks of the
projection, k-means restarts, cells of the search — each run on one thread, spread over torch's
configured number of threads (:func:`_parallel`). Single-threaded jobs need no synchronisation, so they
keep their speed on a busy machine, where a threaded BLAS waits on descheduled threads (a 768 × 768
eigh took seconds on two threads and 0.06 s on one, with another job on the other core); and every job
computes the same thing on any thread, so results do not depend on the thread count. "One thread" is
set for the calling thread only (see :func:`_one_thread`), never process-wide where the libraries
allow it. Memory stays bounded: PCA and projection convert a block of rows per worker at a time, the
covariance keeps at most ``_GROUPS`` d × d accumulators, and a search tile holds at most ``_TILE`` scores.

Devices: given a torch ``device`` (``fit(..., device="cuda")`` or ``reference.to("cuda")``; the pipeline
passes its ``--device``), the PCA (float64 mean, covariance and eigenvectors), the projections and
k-means (the CPU path's float32 algorithm and random numbers, its restarts batched) run there, and the
search's float32 tiles are scored and reduced there (``DEVICE_BLOCK`` queries by up to ``_DEVICE_TILE``
scores), with the same candidates and error bound; the candidates come back to the CPU for the same
float64 re-check. So the values are the CPU path's up to the order of float64 sums (~1e-13), with the
same cells unless float32 rounding in another order breaks a near-tie in k-means. A device without
float64 (MPS) keeps the PCA and k-means on the CPU. A device whose float32 products may use TF32 or
bfloat16 is refused with a warning (the CPU path runs).
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forensics.errors import StatisticError, UsageError

DISTANCES = ("euclidean", "cosine")
BLOCK = 4096                 # query rows per block of the nearest-neighbour search
_TILE = 1 << 24              # float32 elements in one query-block × training-chunk score tile (64 MiB)
_PAIRS = 1 << 22             # float64 elements gathered at once when recomputing exact distances
_ROWS = 1 << 20              # float64 elements per row block in PCA and projection (converted at a time)
_GROUPS = 4                  # row groups of the covariance (each its own d × d float64 accumulator)
_ACCUMULATORS = 1 << 26      # bytes all the groups' accumulators may take together
_U32 = 2.0 ** -24            # unit roundoff of float32
_CACHE = 1 << 20             # scores per query block that should stay in cache (4 MiB of float32)
DEVICE_BLOCK = 16384         # query rows per block of the search on a torch device (a GPU)
_DEVICE_TILE = 1 << 26       # float32 scores in one tile there (256 MiB)
_KMEANS_INIT = 10            # k-means restarts (like scikit-learn's n_init)
_KMEANS_SAMPLE = 8192        # restarts run on a sample of this many training points
_KMEANS_ITER = 300
_KMEANS_TOL = 1e-4           # stop when the centres move less than tol × mean feature variance


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellResult:
    """One cell's part in C_T. ``u`` and ``z`` are None when no generated point fell in the cell;
    ``counted`` says whether the cell entered C_T (more than τ·m generated points)."""

    cell: int
    n_train: int
    n_test: int
    n_generated: int
    u: float | None
    z: float | None
    counted: bool


@dataclass(frozen=True)
class CTResult:
    """C_T with its per-cell details. ``value`` is never NaN (no counted cell raises instead);
    ``counted_weight`` is Σ n_π/n over the counted cells: the share of P_n that entered C_T."""

    value: float
    cells: tuple[CellResult, ...]
    tau: float
    counted_weight: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: value, tau, counted_weight and one dict per cell."""
        return {"value": self.value, "tau": self.tau, "counted_weight": self.counted_weight,
                "cells": [asdict(c) for c in self.cells]}


# -- input checks ----------------------------------------------------------------------------------
def _as_matrix(x: Any, name: str) -> np.ndarray:
    """A 2-D float32/float64 numpy array of finite values (float32 kept as is: no copy)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise StatisticError(f"{name} must be a 2-D array (points × dimensions), got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise StatisticError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    a = np.ascontiguousarray(a)
    if len(a) == 0:
        raise StatisticError(f"{name} is empty: it needs at least one point")
    # The sum is finite only if every value is (cheap to check); where it is not (a non-finite value, or an
    # overflow of large finite ones) the values decide.
    with np.errstate(over="ignore", invalid="ignore"):
        total = a.sum(dtype=a.dtype)
    if not np.isfinite(total) and not np.isfinite(a).all():
        raise StatisticError(f"{name} holds NaN or infinite values; clean the embeddings first")
    return a


def _as_cells(x: Any, n: int, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    c = np.asarray(x)
    if c.ndim != 1 or len(c) != n:
        raise StatisticError(f"cell ids for {name} must be a 1-D array of {n} integers, got shape {c.shape}")
    if c.dtype.kind not in "iu" and not (
            c.dtype.kind == "f" and np.all(np.isfinite(c)) and np.all(c == np.round(c))):
        raise StatisticError(f"cell ids for {name} must be integers, got dtype {c.dtype}")
    c = c.astype(np.int64)
    if n and c.min() < 0:
        raise StatisticError(f"cell ids for {name} must be non-negative, got {int(c.min())}")
    return c


def _check_tau(tau: Any) -> None:
    if tau is None:
        return
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)) \
            or not math.isfinite(tau) or tau < 0:
        raise UsageError(f"tau must be a non-negative number (or None for 20/m), not {tau!r}")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


# -- linear algebra ------------------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; numpy is the fallback
        return None
    return torch


def _t(a: np.ndarray):
    """A torch view of a numpy array (read-only arrays from an .npz are only ever read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _torch().from_numpy(a)


def _ieee_float32(torch, device) -> bool:
    """Whether float32 matrix products on ``device`` are IEEE float32 (no TF32 or bfloat16 shortcuts,
    which torch allows on request): the search's error bound assumes them."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    with warnings.catch_warnings():  # some of these flags are deprecated aliases in newer torch
        warnings.simplefilter("ignore")
        if device.type == "cuda":
            matmul = torch.backends.cuda.matmul
            return getattr(matmul, "fp32_precision", "none") in ("none", "ieee") and not getattr(
                matmul, "allow_tf32", False)
        if device.type == "cpu":
            return getattr(getattr(getattr(torch.backends, "mkldnn", None), "matmul", None), "fp32_precision",
                           "none") in ("none", "ieee")
    return True


def resolve_device(device: Any):
    """``None`` (the CPU path: numpy and the CPU BLAS, on worker threads) or the torch device the search
    and the covariance run on. A device whose float32 products are not IEEE (TF32 or bfloat16
    allowed) gives a warning and ``None``: the results would still be exact, but only by the CPU path."""
    if device is None:
        return None
    from forensics.encode.devices import torch_device

    torch = _torch()
    dev = torch_device(device)
    if not _ieee_float32(torch, dev):
        warnings.warn(f"float32 matrix products on {dev} may use TF32 or bfloat16 "
                      f"(torch.set_float32_matmul_precision); C_T's search runs on the CPU instead", stacklevel=3)
        return None
    return dev


# -- threads -------------------------------------------------------------------------------------
# Small products, reductions and the d × d eigenproblem lose far more to waking and synchronising
# threads than they gain, dramatically so on a busy machine (a 768 × 768 eigh took 0.06 s on one thread
# and several seconds on two, with another job holding a core). Such work runs on one thread *of the
# calling thread only*: OpenMP's thread count is a per-thread setting, and MKL and OpenBLAS have
# per-thread overrides (mkl_set_num_threads_local, openblas_set_num_threads_local), so the rest of the
# process keeps its settings. Where the libraries do not expose them, a process-wide switch is used,
# reference-counted under a lock so that concurrent users restore the original setting exactly once.
_LOCK = threading.Lock()
_NATIVE: list | None = None   # per-thread setters found, resolved once
_SHARED = {"depth": 0, "torch": 0, "limits": None}
_LOCAL = threading.local()    # per thread: depth of _one_thread, torch's thread count outside it, worker flag


def _per_thread_setters() -> list:
    """Per-thread thread-count setters of the libraries doing the work: torch's OpenMP runtime and
    MKL, numpy's OpenBLAS. Each entry is ``set(n) -> restore callable``. Empty when not all are found."""
    global _NATIVE
    if _NATIVE is not None:
        return _NATIVE
    with _LOCK:
        if _NATIVE is not None:
            return _NATIVE
        found: list = []
        try:
            found = _find_setters()
        except (OSError, AttributeError, ImportError, ValueError):  # pragma: no cover - other builds
            found = []
        _NATIVE = found
    return _NATIVE


def _find_setters() -> list:
    torch = _torch()
    names = {"linux": "libtorch_cpu.so", "darwin": "libtorch_cpu.dylib"}
    if torch is None or sys.platform not in names:  # pragma: no cover
        return []
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", names[sys.platform]))
    # symbols are looked up in libtorch_cpu and its dependencies: the OpenMP runtime torch really uses
    omp_get, omp_set = lib.omp_get_max_threads, lib.omp_set_num_threads
    omp_get.restype, omp_get.argtypes, omp_set.argtypes = ctypes.c_int, [], [ctypes.c_int]

    def openmp(n):
        torch.get_num_threads()  # torch sets a new thread's OpenMP count on first use: let it do so first
        before = omp_get()
        omp_set(n)
        return lambda: omp_set(before)

    setters = [openmp]
    if hasattr(lib, "MKL_Set_Num_Threads_Local"):
        mkl = lib.MKL_Set_Num_Threads_Local
        mkl.restype, mkl.argtypes = ctypes.c_int, [ctypes.c_int]

        def mkl_local(n):
            before = mkl(n)
            return lambda: mkl(before)

        setters.append(mkl_local)
    elif torch.backends.mkl.is_available():  # pragma: no cover - MKL without its per-thread setter
        return []
    blas = _openblas_local()
    if blas is None:  # pragma: no cover - numpy on another BLAS: no per-thread control known
        return []
    setters.append(blas)
    return setters


def _openblas_local():
    """numpy's OpenBLAS per-thread setter (OpenBLAS ≥ 0.3.27), or None."""
    from threadpoolctl import ThreadpoolController

    for controller in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if "numpy" not in controller.filepath:
            continue
        dynlib = controller.dynlib
        for name in ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local64_",
                     "scipy_openblas_set_num_threads_local"):
            if hasattr(dynlib, name):
                fn = getattr(dynlib, name)
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]

                def blas_local(n, fn=fn):
                    before = fn(n)
                    return lambda: fn(before)

                return blas_local
    return None


@contextmanager
def _one_thread():
    """Torch (OpenMP, MKL) and numpy's BLAS on one thread inside the block, for the calling thread."""
    depth = getattr(_LOCAL, "depth", 0)
    if depth == 0:
        _LOCAL.threads = _threads()
    _LOCAL.depth = depth + 1
    try:
        setters = _per_thread_setters()
        if setters:
            undo = [s(1) for s in setters]
            try:
                yield
            finally:
                for u in reversed(undo):
                    u()
        else:  # pragma: no cover - builds without per-thread setters
            with _process_wide_one_thread():
                yield
    finally:
        _LOCAL.depth = depth


def _threads() -> int:
    """Torch's thread count for the calling thread as configured (outside any :func:`_one_thread`)."""
    if getattr(_LOCAL, "depth", 0):
        return _LOCAL.threads
    torch = _torch()
    return torch.get_num_threads() if torch is not None else 1


@contextmanager
def _process_wide_one_thread():
    torch = _torch()
    with _LOCK:
        if _SHARED["depth"] == 0:
            _SHARED["torch"] = torch.get_num_threads() if torch is not None else 0
            if torch is not None:
                torch.set_num_threads(1)
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                _SHARED["limits"] = None
            else:
                _SHARED["limits"] = threadpool_limits(1, user_api="blas")
        _SHARED["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _SHARED["depth"] -= 1
            if _SHARED["depth"] == 0:
                if _SHARED["limits"] is not None:
                    _SHARED["limits"].restore_original_limits()
                if torch is not None:
                    torch.set_num_threads(_SHARED["torch"])


def _workers(items: int) -> int:
    """Worker threads for ``items`` independent single-threaded jobs: torch's configured thread count at
    most; one inside a worker (no nested pools) or where the one-thread switch is process-wide."""
    if getattr(_LOCAL, "worker", False) or not _per_thread_setters():
        return 1
    return max(1, min(items, _threads()))


def _parallel(fn, jobs: list, costs: list | None = None) -> list:
    """``[fn(job) for job in jobs]``, each call on one thread, the calls spread over :func:`_workers`
    threads (the costliest first): the calling thread and helpers from a pool kept for the process
    (starting threads costs milliseconds on a busy machine). Independent single-threaded jobs need no
    synchronisation, so they keep their speed on a busy machine, where a threaded BLAS waits on
    descheduled threads; and each job computes the same thing whichever thread runs it, so results never
    depend on the thread count. Calls from inside a job run serially (no nested pools)."""
    workers = _workers(len(jobs))
    outer = getattr(_LOCAL, "worker", False)
    _LOCAL.worker = True
    try:
        if workers <= 1:
            out = []
            for job in jobs:
                with _one_thread():
                    out.append(fn(job))
            return out
        order = iter(sorted(range(len(jobs)), key=lambda i: -(costs[i] if costs is not None else 0)))
        results: list = [None] * len(jobs)
        errors: list = []
        lock, finished, running = threading.Lock(), threading.Event(), [0]

        def runner() -> None:
            with _one_thread():
                while True:
                    with lock:
                        i = None if errors else next(order, None)
                        if i is None:  # nothing left to start: the last one to stop says so
                            if running[0] == 0:
                                finished.set()
                            return
                        running[0] += 1
                    try:
                        results[i] = fn(jobs[i])
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                        with lock:
                            errors.append(exc)
                    finally:
                        with lock:
                            running[0] -= 1

        pool = _pool(workers - 1)
        for _ in range(workers - 1):
            pool.submit(runner)
        try:
            runner()  # the calling thread works too; a helper that starts late finds nothing left to do
            finished.wait()
        except BaseException as exc:  # e.g. KeyboardInterrupt: the helpers start nothing more
            with lock:
                errors.append(exc)
            raise
        if errors:
            raise errors[0]
        return results
    finally:
        _LOCAL.worker = outer


_POOL: dict = {"pool": None, "size": 0, "pid": 0}


def _pool(size: int):
    """The process's helper threads (at least ``size``), made again after a fork or when too small."""
    from concurrent.futures import ThreadPoolExecutor

    with _LOCK:
        if _POOL["pool"] is None or _POOL["pid"] != os.getpid() or _POOL["size"] < size:
            if _POOL["pool"] is not None and _POOL["pid"] == os.getpid():
                _POOL["pool"].shutdown(wait=False)
            _POOL.update(pool=ThreadPoolExecutor(size, thread_name_prefix="forensics-ct", initializer=_mark_worker),
                         size=size, pid=os.getpid())
        return _POOL["pool"]


def _mark_worker() -> None:
    _LOCAL.worker = True


def _row_blocks(n: int, width: int, budget: int | None = None):
    step = max(1, (_ROWS if budget is None else budget) // max(1, width))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _row_groups(n: int, d: int) -> list[tuple[int, int]]:
    """A fixed split of n rows into contiguous groups for the covariance: each group sums into its own
    d × d accumulator, on whichever worker thread, and the groups are then added in order — so the
    result does not depend on the number of threads. At most _GROUPS groups, fewer when the
    accumulators would pass _ACCUMULATORS bytes or there are few rows."""
    rows = max(1, _ROWS // max(1, d))
    count = max(1, min(_GROUPS, -(-n // rows), _ACCUMULATORS // max(1, 8 * d * d)))
    edges = np.linspace(0, n, count + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _centred_block(x: np.ndarray, s: int, e: int, mean: np.ndarray, buf: np.ndarray) -> np.ndarray:
    out = buf[: e - s]
    np.subtract(x[s:e], mean, out=out, dtype=np.float64, casting="unsafe")
    return out


def _pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal axes (d × dims, float64) of ``x``, from its covariance.

    The covariance is accumulated in float64 over centred blocks of rows (bounded memory: one block
    per worker thread, never a float64 copy of ``x``) by symmetric rank-k updates (BLAS syrk: half the
    multiply-adds of a general product); the groups of rows run in parallel, each on one thread
    (:func:`_parallel`). The leading eigenvectors are kept (:func:`_axes`). On a torch device:
    :func:`_pca_on`."""
    n, d = x.shape
    groups = _row_groups(n, d)
    sums = _parallel(lambda g: x[g[0]:g[1]].sum(axis=0, dtype=np.float64), groups)
    mean = sums[0]
    for part in sums[1:]:
        mean = mean + part
    mean = mean / n

    def accumulate(group: tuple[int, int]) -> np.ndarray:
        cov = np.zeros((d, d))
        buf = np.empty((max(1, min(group[1] - group[0], _ROWS // d)), d))
        for s, e in _row_blocks(group[1] - group[0], d):
            b = _centred_block(x, group[0] + s, group[0] + e, mean, buf)
            cov += b.T @ b  # numpy sees one operand as the other's transpose: a symmetric rank-k update
        return cov

    parts = _parallel(accumulate, groups)
    cov = parts[0]
    for part in parts[1:]:
        cov += part
    # A full symmetric eigensolver (divide and conquer) is both faster and steadier here than a subset
    # one: MRRR slows down badly on the clustered eigenvalues that embeddings' noise floors produce.
    torch = _torch()
    if torch is not None:
        with _one_thread():  # a d × d problem: threads only add synchronisation (see "threads" above)
            vectors = torch.linalg.eigh(torch.from_numpy(cov)).eigenvectors.numpy()
    else:  # pragma: no cover
        vectors = np.linalg.eigh(cov)[1]
    return mean, _axes(vectors, dims)


def _axes(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The last ``dims`` columns of ascending eigenvectors, largest eigenvalue first, each sign fixed
    (largest entry positive) so that the projection is reproducible."""
    d = vectors.shape[1]
    vectors = vectors[:, d - min(dims, d):][:, ::-1]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return np.ascontiguousarray(vectors * signs)


def _project(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(x − mean) @ components in float64, a block of rows at a time, the blocks spread over the worker
    threads (each block computed the same way whatever their number)."""
    n, d = x.shape
    out = np.empty((n, components.shape[1]))
    blocks = list(_row_blocks(n, d))

    def project(block: tuple[int, int]) -> None:
        s, e = block
        b = _centred_block(x, s, e, mean, np.empty((e - s, d)))
        if _torch() is not None:
            _torch().mm(_t(b), _t(components), out=_t(out[s:e]))
        else:  # pragma: no cover
            np.matmul(b, components, out=out[s:e])

    _parallel(project, blocks)
    return out


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.any(norms == 0):
        raise StatisticError(f"{name} has a zero vector (after projection, if any), which has no "
                             f"direction for the cosine distance; use distance='euclidean' or drop it")
    return x / norms[:, None]


# -- k-means -------------------------------------------------------------------------------------
def _sq_dist32(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray) -> np.ndarray:
    c_sq = np.einsum("ij,ij->i", centres, centres)
    d = x @ centres.T
    d *= -2.0
    d += x_sq[:, None]
    d += c_sq[None, :]
    return np.maximum(d, 0.0, out=d)


def _kmeans_pp(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (2 + ln k candidates per centre, the one lowering the potential most kept)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = np.empty((k, x.shape[1]), dtype=x.dtype)
    centres[0] = x[rng.integers(n)]
    closest = _sq_dist32(x, x_sq, centres[:1])[:, 0].astype(np.float64)
    potential = closest.sum()
    for j in range(1, k):
        if potential <= 0:  # fewer distinct points than cells: any point will do
            centres[j] = x[rng.integers(n)]
            continue
        picks = np.minimum(np.searchsorted(np.cumsum(closest), rng.random(trials) * potential), n - 1)
        dist = np.minimum(closest[:, None], _sq_dist32(x, x_sq, x[picks]))
        pots = dist.sum(axis=0)
        best = int(np.argmin(pots))
        centres[j] = x[picks[best]]
        closest, potential = dist[:, best], pots[best]
    return centres


def _lloyd(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray, tol: float,
           max_iter: int = _KMEANS_ITER) -> tuple[np.ndarray, float]:
    """Lloyd iterations until the labels stop changing or the centres move less than ``tol`` (squared,
    summed). Returns the centres and the inertia (sum of squared distances to the nearest centre)."""
    n, k = len(x), len(centres)
    labels = np.full(n, -1)
    rows = np.arange(n)
    onehot = np.zeros((n, k), dtype=x.dtype)
    for _ in range(max_iter):
        d = _sq_dist32(x, x_sq, centres)
        new = d.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        if labels[0] >= 0:
            onehot[rows, labels] = 0.0
        labels = new
        onehot[rows, labels] = 1.0
        counts = np.bincount(labels, minlength=k)
        sums = onehot.T @ x
        moved = centres.copy()
        full = counts > 0
        moved[full] = sums[full] / counts[full, None]
        if not full.all():  # an empty cluster restarts at the points farthest from their centres
            far = np.argsort(d[rows, labels])[::-1][: int((~full).sum())]
            moved[~full] = x[far]
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        if shift <= tol:
            break
    d = _sq_dist32(x, x_sq, centres)
    return centres, float(d.min(axis=1).sum(dtype=np.float64))


def _restarts(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator, tol: float) -> list:
    """The _KMEANS_INIT runs of k-means++ and Lloyd, in parallel, with exactly the random numbers (and so
    the results) of running them one after the other from ``rng``, which ends where that would leave it.

    A run's draws do not depend on the data — one integer, then ``2 + ln k`` uniforms per further
    centre — except when the points run out of distinct values (a centre is then drawn as an integer
    instead). So each run starts from the generator state that the draws of the runs before it lead to,
    computed ahead; a run that took the other path is detected by its end state, and the runs after it
    are then redone from the right state."""
    trials = 2 + int(math.log(k))
    starts, probe = [], np.random.Generator(type(rng.bit_generator)())
    probe.bit_generator.state = rng.bit_generator.state
    for _ in range(_KMEANS_INIT):
        starts.append(probe.bit_generator.state)
        probe.integers(len(x))
        for _ in range(1, k):
            probe.random(trials)

    def run(state):
        own = np.random.Generator(type(rng.bit_generator)())
        own.bit_generator.state = state
        centres, inertia = _lloyd(x, x_sq, _kmeans_pp(x, x_sq, k, own), tol)
        return centres, inertia, own.bit_generator.state

    done = _parallel(run, starts)
    state = rng.bit_generator.state
    for i in range(_KMEANS_INIT):
        if starts[i] != state:  # an earlier run drew differently: redo this one
            with _one_thread():
                done[i] = run(state)
        state = done[i][2]
    rng.bit_generator.state = state
    return [(c, inertia) for c, inertia, _ in done]


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded k-means on the rows of ``x``; returns the k centres (float64).

    ``_KMEANS_INIT`` runs of greedy k-means++ plus Lloyd on a sample of at most ``_KMEANS_SAMPLE``
    points (all points when there are fewer); the lowest-inertia run is refined by Lloyd on all points,
    in float32; the centres are then the float64 means of the points nearest to them. Deterministic
    for a seed."""
    rng = np.random.default_rng(seed)
    with _one_thread():
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        tol = _KMEANS_TOL * float(np.mean(np.var(x32, axis=0, dtype=np.float64)))
        if len(x32) > _KMEANS_SAMPLE:
            sub = x32[np.sort(rng.choice(len(x32), _KMEANS_SAMPLE, replace=False))]
        else:
            sub = x32
        sub_sq = np.einsum("ij,ij->i", sub, sub)
        best = None
        for centres, inertia in _restarts(sub, sub_sq, k, rng, tol):
            if best is None or inertia < best[1]:
                best = (centres, inertia)
        centres = best[0]
        if sub is not x32:
            centres, _ = _lloyd(x32, np.einsum("ij,ij->i", x32, x32), centres, tol)
        labels = _assign(x, centres.astype(np.float64))
    exact = centres.astype(np.float64)
    for j in range(k):
        members = labels == j
        if members.any():
            exact[j] = x[members].mean(axis=0, dtype=np.float64)
    return exact


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (float64 squared distances) for every row of ``x``."""
    c_sq = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(len(x), dtype=np.int64)
    with _one_thread():
        for s, e in _row_blocks(len(x), max(x.shape[1], len(centres))):
            b = x[s:e].astype(np.float64, copy=False)
            d = c_sq[None, :] - 2.0 * (b @ centres.T)  # + |x|², the same for every centre
            out[s:e] = d.argmin(axis=1)
    return out


# -- a torch device: PCA, projection and k-means there --------------------------------------------
# The same steps as above, with the arithmetic on a torch device (a GPU) and only small results coming
# back. PCA and projection are float64 as on the CPU (the sums run in another order: the axes agree to
# ~1e-13). k-means replays the CPU's float32 algorithm with the same random numbers, its restarts
# batched: its cells are the CPU path's unless float32 rounding in another order breaks a near-tie.
_DEVICE_KEEP = 1 << 31       # bytes of a matrix kept on the device between passes (else sent again)


def _float64_on(device) -> bool:
    """Whether the projection and k-means run on ``device``: a torch device with float64 (not MPS)."""
    return device is not None and device.type != "mps"


class _DeviceRows:
    """The rows of a host matrix on a torch device, a block at a time (at most ``_DEVICE_TILE // 2``
    float64 elements once converted): with ``keep``, sent once and kept there for later passes when
    the matrix fits in ``_DEVICE_KEEP`` bytes; otherwise sent again for each pass."""

    def __init__(self, x: np.ndarray, device, keep: bool = True):
        self.x, self.device = x, device
        self.n, self.d = x.shape
        self._blocks = list(_row_blocks(self.n, self.d, budget=_DEVICE_TILE // 2))
        self._kept: list | None = [] if keep and x.nbytes <= _DEVICE_KEEP else None

    def __iter__(self):
        if self._kept is not None and len(self._kept) == len(self._blocks):  # a whole pass was kept
            yield from self._kept
            return
        torch = _torch()
        kept = []
        for s, e in self._blocks:
            block = torch.from_numpy(np.ascontiguousarray(self.x[s:e])).to(self.device)
            if self._kept is not None:
                kept.append((s, e, block))
            yield s, e, block
        if self._kept is not None:  # only a pass that ran to the end is kept (never a partial one)
            self._kept = kept


def _pca_on(x: np.ndarray, dims: int, device) -> tuple[np.ndarray, np.ndarray, _DeviceRows]:
    """:func:`_pca` on a torch device: the float64 mean and covariance (centred blocks) and the
    eigenvectors computed there. Also returns the rows on the device, for :func:`_project_on`."""
    torch = _torch()
    rows = _DeviceRows(x, device)
    total = torch.zeros(rows.d, dtype=torch.float64, device=device)
    for _, _, block in rows:
        total += block.sum(dim=0, dtype=torch.float64)
    mean = total / rows.n
    cov = torch.zeros((rows.d, rows.d), dtype=torch.float64, device=device)
    for _, _, block in rows:
        centred = block.to(torch.float64) - mean
        cov.addmm_(centred.T, centred)
    vectors = torch.linalg.eigh(cov).eigenvectors.cpu().numpy()
    return mean.cpu().numpy(), _axes(vectors, dims), rows


def _project_on(x, mean: np.ndarray, components: np.ndarray, device) -> np.ndarray:
    """:func:`_project` on a torch device (``x`` a host matrix or its :class:`_DeviceRows`)."""
    torch = _torch()
    rows = x if isinstance(x, _DeviceRows) else _DeviceRows(x, device, keep=False)  # one pass: nothing kept
    centre = torch.from_numpy(mean).to(device)
    axes = torch.from_numpy(components).to(device)
    out = np.empty((rows.n, components.shape[1]))
    for s, e, block in rows:
        out[s:e] = ((block.to(torch.float64) - centre) @ axes).cpu().numpy()
    return out


def _sq_dist_on(x, x_sq, centres):
    """:func:`_sq_dist32` on the device, for a batch of centre sets (R × k × d → R × n × k)."""
    torch = _torch()
    d = torch.matmul(x, centres.transpose(1, 2))
    d *= -2.0
    d += x_sq[None, :, None]
    d += (centres * centres).sum(dim=2)[:, None, :]
    return d.clamp_(min=0.0)


def _kmeans_pp_on(x, x_sq, k: int, firsts: list[int], uniforms: np.ndarray):
    """:func:`_kmeans_pp` for R runs at once, given each run's random numbers (first index; per further
    centre ``trials`` uniforms). None if a run's potential comes within float32 rounding of 0: the CPU
    path may then have found it 0 and drawn differently (fewer distinct points than cells)."""
    torch = _torch()
    runs, n = len(firsts), len(x)
    # each squared distance is within (2d + 16)·u·4·max|x|² of its exact value, here as on the CPU
    floor = 2.0 * n * (2 * x.shape[1] + 16) * _U32 * 4.0 * float(x_sq.max())
    every = torch.arange(runs, device=x.device)
    centres = torch.empty((runs, k, x.shape[1]), dtype=x.dtype, device=x.device)
    centres[:, 0] = x[torch.tensor(firsts, device=x.device)]
    closest = _sq_dist_on(x, x_sq, centres[:, :1])[:, :, 0].to(torch.float64)
    potential = closest.sum(dim=1)
    draws = torch.from_numpy(uniforms).to(x.device)
    for j in range(1, k):
        if bool((potential <= floor).any()):
            return None
        target = draws[:, j - 1] * potential[:, None]                              # R × trials
        picks = torch.searchsorted(closest.cumsum(dim=1), target).clamp_(max=n - 1)
        dist = torch.minimum(closest[:, :, None], _sq_dist_on(x, x_sq, x[picks]).to(torch.float64))
        pots = dist.sum(dim=1)                                                      # R × trials
        best = pots.argmin(dim=1)
        centres[:, j] = x[picks[every, best]]
        closest, potential = dist[every, :, best], pots[every, best]
    return centres


def _lloyd_on(x, x_sq, centres, tol: float, max_iter: int = _KMEANS_ITER):
    """:func:`_lloyd` for R runs at once (R × k × d centres); each run stops by the CPU path's rules.
    Returns the centres and each run's inertia (float64, on the host)."""
    torch = _torch()
    runs, k = centres.shape[0], centres.shape[1]
    n = len(x)
    labels = torch.full((runs, n), -1, dtype=torch.long, device=x.device)
    active = torch.ones(runs, dtype=torch.bool, device=x.device)
    centres = centres.clone()
    for _ in range(max_iter):
        d = _sq_dist_on(x, x_sq, centres)
        new = d.argmin(dim=2)
        active &= ~(new == labels).all(dim=1)      # labels unchanged: that run stops before updating
        if not bool(active.any()):
            break
        labels = torch.where(active[:, None], new, labels)
        onehot = torch.zeros((runs, n, k), dtype=x.dtype, device=x.device)
        onehot.scatter_(2, labels[:, :, None], 1.0)
        counts = onehot.sum(dim=1)                                                  # R × k
        sums = torch.matmul(onehot.transpose(1, 2), x)                              # R × k × d
        moved = torch.where(counts[:, :, None] > 0, sums / counts.clamp(min=1)[:, :, None], centres)
        empty = (counts == 0) & active[:, None]
        if bool(empty.any()):  # an empty cluster restarts at the points farthest from their centres
            for r in torch.nonzero(empty.any(dim=1)).flatten().tolist():
                gaps = d[r].gather(1, labels[r][:, None])[:, 0]
                missing = torch.nonzero(empty[r]).flatten()
                moved[r, missing] = x[torch.argsort(gaps, descending=True, stable=True)[:len(missing)]]
        shift = ((moved - centres) ** 2).sum(dim=(1, 2))
        centres = torch.where(active[:, None, None], moved, centres)
        active &= shift > tol
        if not bool(active.any()):
            break
    inertia = _sq_dist_on(x, x_sq, centres).min(dim=2).values.sum(dim=1, dtype=torch.float64)
    return centres, inertia.cpu().numpy()


def _kmeans_on(x: np.ndarray, k: int, seed: int, device) -> np.ndarray:
    """:func:`kmeans` on a torch device: the same sample, random numbers and steps, the restarts as one
    batch. Falls back to :func:`kmeans` where the CPU path would draw differently (fewer distinct
    points than cells)."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    given = torch.from_numpy(np.ascontiguousarray(x)).to(device)  # sent once; float32 and float64 made there
    whole = given.to(torch.float32)  # rounds as numpy's astype(float32) does
    tol = _KMEANS_TOL * float(whole.to(torch.float64).var(dim=0, correction=0).mean())
    pick = np.sort(rng.choice(len(x), _KMEANS_SAMPLE, replace=False)) if len(x) > _KMEANS_SAMPLE else None
    trials = 2 + int(math.log(k))
    firsts, uniforms = [], np.empty((_KMEANS_INIT, max(0, k - 1), trials))
    size = len(x) if pick is None else len(pick)
    for run in range(_KMEANS_INIT):  # the draws of _restarts, in its order
        firsts.append(int(rng.integers(size)))
        for j in range(1, k):
            uniforms[run, j - 1] = rng.random(trials)
    sub = whole if pick is None else whole[torch.from_numpy(pick).to(device)]
    sub_sq = (sub * sub).sum(dim=1)
    seeds = _kmeans_pp_on(sub, sub_sq, k, firsts, uniforms)
    if seeds is None:
        return kmeans(x, k, seed)
    centres, inertia = _lloyd_on(sub, sub_sq, seeds, tol)
    centres = centres[int(np.argmin(inertia))][None]
    if pick is not None:
        centres, _ = _lloyd_on(whole, (whole * whole).sum(dim=1), centres, tol)
    centres = centres[0].to(torch.float64)
    x64 = given.to(torch.float64)
    labels = ((centres * centres).sum(dim=1)[None, :] - 2.0 * (x64 @ centres.T)).argmin(dim=1)
    onehot = torch.zeros((len(x64), k), dtype=torch.float64, device=device).scatter_(1, labels[:, None], 1.0)
    counts = onehot.sum(dim=0)
    sums = onehot.T @ x64  # a product, not atomic adds: the same sums on every run
    exact = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return exact.cpu().numpy()


# -- nearest neighbours --------------------------------------------------------------------------
class _Cell:
    """One cell's training points, ready for the fast search and the float64 re-check.

    The fast search scores every (query, point) pair with one float32 matrix product: for Euclidean
    distance the points are stored as rows [−2p | |p|²] and the queries as [q | 1], so the product is
    |p|² − 2 q·p (the squared distance less |q|², the same for every point of a query); for the cosine
    distance rows of unit vectors, and the score is −|q·p|."""

    def __init__(self, points: np.ndarray, distance: str):
        self.points, self.distance = points, distance
        dim = points.shape[1]
        if distance == "euclidean":
            # centre the cell: smaller norms make the float32 scores (and their error bound) tighter
            self.shift = points.mean(axis=0, dtype=np.float64)
            centred = points - self.shift
            norms = np.sqrt(np.einsum("ij,ij->i", centred, centred))
            self.reach = float(norms.max())
        else:
            self.shift, self.reach, centred, norms = None, 1.0, points, np.ones(len(points))
        # float32 unless the scale would overflow or underflow it (then the same search in float64)
        fast = distance == "cosine" or 1e-15 < self.reach < 1e15
        self.dtype = np.float32 if fast else np.float64
        unit = _U32 if fast else 2.0 ** -53
        if distance == "euclidean":
            self.rows = np.empty((len(points), dim + 1), dtype=self.dtype)
            np.multiply(centred, -2.0, out=self.rows[:, :dim], casting="same_kind")  # exact: a power of 2
            self.rows[:, dim] = norms * norms
        else:
            self.rows = np.ascontiguousarray(centred, dtype=self.dtype)
        # Bound on |computed score − exact score|, relative to |p|² + 2|q||p|: rounding both operands,
        # a dot product of length dim + 1 (at most (dim + 1)·u·(|p|² + 2|q||p|)), the stored squared norm
        # — each counted twice over.
        self.rel = (2.0 * dim + 16.0) * unit
        self._device_rows: dict = {}   # torch device → the rows there, for nearest_on

    def nearest(self, queries: np.ndarray) -> np.ndarray:
        """Exact (float64) distance from each query row to its nearest training point in this cell."""
        out = np.full(len(queries), np.inf)
        if len(queries) == 0:
            return out
        # query blocks small enough that a block's scores stay in cache between the product and the
        # selection, at most BLOCK rows; training chunks keep a tile within _TILE scores
        n_pts = len(self.points)
        step = int(min(BLOCK, len(queries), max(64, _CACHE // max(1, n_pts))))
        chunk = max(1, min(n_pts, _TILE // step))
        scratch = np.empty(step * chunk, dtype=self.dtype)
        product = _product()
        with _one_thread():  # small products and reductions (see "threads")
            for s in range(0, len(queries), step):
                q = queries[s:s + step].astype(np.float64, copy=False)
                self._search(q, out[s:s + step], scratch, chunk, product)
        return out

    def _queries(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A block of queries in the fast search's form, with each one's bound on the score error."""
        b = len(q)
        if self.distance == "euclidean":
            qc = q - self.shift
            qn = np.sqrt(np.einsum("ij,ij->i", qc, qc))
            err = self.rel * (self.reach * self.reach + 2.0 * qn * self.reach) + 1e-300
            qf = np.empty((b, qc.shape[1] + 1), dtype=self.dtype)
            qf[:, :-1] = qc
            qf[:, -1] = 1.0
        else:
            err = np.full(b, self.rel * 3.0)
            qf = np.ascontiguousarray(q, dtype=self.dtype)
        return qf, err

    def _search(self, q: np.ndarray, out: np.ndarray, scratch: np.ndarray, chunk: int, product) -> None:
        """For a block of queries: every (query, point) pair whose fast score is within twice the error
        bound of the query's best is re-checked exactly, so the true nearest point always is."""
        qf, err = self._queries(q)
        best = np.full(len(q), np.inf)
        n_pts = len(self.points)
        for a in range(0, n_pts, chunk):
            z = min(n_pts, a + chunk)
            rows, cols, best = self._tile(qf, a, z, err, best, scratch, product)
            self._exact(q, rows, cols + a, out)

    def nearest_on(self, queries: np.ndarray, device) -> np.ndarray:
        """:meth:`nearest` with the fast search on a torch ``device`` (a CUDA GPU, or any other): the same
        float32 scores, candidates and error bound, and the same float64 re-check on the CPU, so the
        same distances. Falls back to :meth:`nearest` where the cell needs float64 scores."""
        if self.dtype != np.float32 or len(queries) == 0:
            return self.nearest(queries)
        torch = _torch()
        rows = self._device_rows.get(device)
        if rows is None:
            rows = self._device_rows[device] = torch.from_numpy(self.rows).to(device)
        out = np.full(len(queries), np.inf)
        n_pts = len(self.points)
        step = int(min(len(queries), DEVICE_BLOCK))
        chunk = max(1, min(n_pts, _DEVICE_TILE // step))
        for s in range(0, len(queries), step):
            q = queries[s:s + step].astype(np.float64, copy=False)
            qf, err = self._queries(q)
            qd = torch.from_numpy(qf).to(device)
            best = np.full(len(q), np.inf)
            every = torch.arange(len(q), device=device)
            for a in range(0, n_pts, chunk):
                z = min(n_pts, a + chunk)
                score = qd @ rows[a:z].T
                if self.distance == "cosine":  # −|q·p|
                    score = score.abs_().neg_()
                low, idx = score.min(dim=1)
                low_h, idx_h = low.cpu().numpy(), idx.cpu().numpy()
                best = np.minimum(best, low_h.astype(np.float64))
                limit = self._limit(best, err)
                hit = low_h <= limit
                found_rows, found_cols = [np.flatnonzero(hit)], [idx_h[hit]]
                if z - a > 1 and hit.any():  # the second minimum, as in _tile
                    score[every, idx] = math.inf
                    second = score.min(dim=1).values.cpu().numpy()
                    several = np.flatnonzero(hit & (second <= limit))
                    if len(several):
                        pick = torch.from_numpy(several).to(device)
                        bound = torch.from_numpy(limit[several]).to(device)
                        rr, cc = torch.nonzero(score[pick] <= bound[:, None], as_tuple=True)
                        found_rows.append(several[rr.cpu().numpy()])
                        found_cols.append(cc.cpu().numpy())
                self._exact(q, np.concatenate(found_rows), np.concatenate(found_cols) + a, out[s:s + step])
        return out

    def _limit(self, best: np.ndarray, err: np.ndarray) -> np.ndarray:
        limit = (best + 2.0 * err).astype(self.dtype)
        return np.nextafter(limit, self.dtype(np.inf))  # rounded up, never below

    def _tile(self, qf: np.ndarray, a: int, z: int, err: np.ndarray, best: np.ndarray, scratch: np.ndarray,
              product):
        """Candidates among training points a:z for a block of queries; updates the running best.

        Per row the smallest score and its place are taken; that entry is then masked and the second
        smallest taken: a row whose second best is out of reach has one candidate, and only the (rare)
        other rows are scanned in full."""
        b, w = len(qf), z - a
        score = scratch[: b * w].reshape(b, w)
        product(qf, self.rows[a:z], score)
        if self.distance == "cosine":  # −|q·p|
            np.abs(score, out=score)
            np.negative(score, out=score)
        every = np.arange(b)
        idx = score.argmin(axis=1)
        low = score[every, idx]
        best = np.minimum(best, low.astype(np.float64))
        limit = self._limit(best, err)
        hit = low <= limit
        rows, cols = [np.flatnonzero(hit)], [idx[hit]]
        if w > 1 and hit.any():
            score[every, idx] = np.inf
            several = np.flatnonzero(hit & (score.min(axis=1) <= limit))
            if len(several):
                rr, cc = np.nonzero(score[several] <= limit[several, None])
                rows.append(several[rr])
                cols.append(cc)
        return np.concatenate(rows), np.concatenate(cols), best

    def _exact(self, q: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
        step = max(1, _PAIRS // max(1, q.shape[1]))
        for s in range(0, len(rows), step):
            r, c = rows[s:s + step], cols[s:s + step]
            p = self.points[c].astype(np.float64, copy=False)
            if self.distance == "euclidean":
                diff = q[r] - p  # the plain formula, as a float64 brute force would write it
                dist = np.sqrt((diff * diff).sum(axis=1))
            else:
                dist = 1.0 - np.abs((q[r] * p).sum(axis=1))
            np.minimum.at(out, r, dist)


def _product():
    """``f(a, b, out)``: out = a @ b.T, through torch's BLAS (MKL on x86: faster than numpy's OpenBLAS)
    unless torch has been allowed to compute float32 products in reduced precision (e.g.
    ``torch.set_float32_matmul_precision("medium")``, which may use bfloat16): the search's error bound
    assumes IEEE float32 arithmetic, so numpy computes them then."""
    torch = _torch()
    if torch is None or not _ieee_float32(torch, torch.device("cpu")):
        return _numpy_product
    return lambda a, b, out: torch.mm(_t(a), _t(b).T, out=_t(out))


def _numpy_product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b.T, out=out)


def nearest_distance(queries: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
    """For each query row, the exact distance to its nearest row of ``points``
    (Euclidean, or 1 − |cos| with both sides' rows already of unit norm)."""
    if len(queries) == 0:
        return np.empty(0)
    return _Cell(np.asarray(points), distance).nearest(np.asarray(queries))


# -- Mann–Whitney --------------------------------------------------------------------------------
def mann_whitney_u(generated: np.ndarray, test: np.ndarray) -> float:
    """U = #pairs (q, p) with q > p, ties ½ — scipy's ``mannwhitneyu(generated, test, alternative='less')
    .statistic``. Counted from ranks: each q's rank among the sorted test values (the number below it,
    plus half the number equal to it), which is the average-rank formula R_Q − m(m+1)/2."""
    s = np.sort(np.asarray(test, dtype=np.float64))
    g = np.asarray(generated, dtype=np.float64)
    below = np.searchsorted(s, g, side="left")
    not_above = np.searchsorted(s, g, side="right")
    twice = int(below.sum()) * 2 + int((not_above - below).sum())  # exact in integers
    return twice / 2.0


def z_score(u: float, m: int, n: int) -> float:
    """Z of U for m generated and n test points: (U − (mn/2 − 0.5)) / sqrt(mn(m + n + 1)/12)."""
    return (u - (m * n / 2.0 - 0.5)) / math.sqrt(m * n * (m + n + 1) / 12.0)


# -- the reference side --------------------------------------------------------------------------
class FittedCT:
    """The query-independent half: projection, cells, per-cell training points and the test points'
    nearest-training distances.

    Fit it once per encoder layer with :meth:`fit`, keep it (or cache :meth:`to_arrays` in an .npz and
    rebuild it with :meth:`from_arrays`), and score any number of generated sets with :meth:`score`.
    Read-only attributes: ``k``, ``distance``, ``projection`` (int or None), ``seed``, ``n_train``,
    ``n_test``, ``dim`` (the input dimension)."""

    def __init__(self, *, k: int, distance: str, projection: int | None, seed: int, dim: int,
                 mean: np.ndarray | None, components: np.ndarray | None, centres: np.ndarray | None,
                 cells: np.ndarray, train: np.ndarray, offsets: np.ndarray, test_dist: np.ndarray,
                 test_cells: np.ndarray, device=None):
        self._k, self._distance, self._projection, self._seed, self._dim = k, distance, projection, seed, dim
        self._mean, self._components, self._centres = mean, components, centres
        self._cells = cells            # the cell ids, sorted
        self._train = train            # training points in the distance space, sorted by cell
        self._offsets = offsets        # cell i's training points are _train[offsets[i]:offsets[i + 1]]
        self._test_dist = test_dist
        self._test_cells = test_cells
        self._search: dict[int, _Cell] = {}
        self._device = device          # None: the CPU path; else the torch device the searches run on

    # read-only attributes
    k = property(lambda self: self._k, doc="Number of k-means cells asked for (ignored with given cells).")
    distance = property(lambda self: self._distance, doc='"euclidean" or "cosine" (1 − |cos|).')
    projection = property(lambda self: self._projection, doc="PCA dimensions, or None for no projection.")
    seed = property(lambda self: self._seed, doc="Seed of k-means.")
    dim = property(lambda self: self._dim, doc="Dimension of the input embeddings.")
    n_train = property(lambda self: len(self._train), doc="Number of training points.")
    n_test = property(lambda self: len(self._test_dist), doc="Number of test points.")
    device = property(lambda self: self._device, doc="The torch device the searches run on, or None (the CPU path).")

    def to(self, device) -> FittedCT:
        """This reference with its nearest-neighbour searches on a torch ``device`` (e.g. "cuda"; None for
        the CPU path). The arrays are shared, the results are the same (see :meth:`_Cell.nearest_on`)."""
        dev = resolve_device(device)
        if dev == self._device:
            return self
        other = copy.copy(self)
        other._device, other._search = dev, self._search  # the cells (and their device copies) are shared
        return other

    def _nearest(self, members: list[np.ndarray], points: np.ndarray, busy: list[int]) -> list[np.ndarray]:
        """For each cell index in ``busy``: the exact nearest-training distances of its rows of ``points``."""
        if self._device is not None:  # one device: the cells in turn, each search a few large products
            return [self._cell(i).nearest_on(points[members[i]], self._device) for i in busy]
        costs = [len(members[i]) * int(self._offsets[i + 1] - self._offsets[i]) for i in busy]
        return _parallel(lambda i: self._cell(i).nearest(points[members[i]]), busy, costs)

    @classmethod
    def fit(cls, train, test, *, k: int = 10, distance: str = "euclidean", projection: int | None = None,
            seed: int = 0, train_cells=None, test_cells=None, device=None) -> FittedCT:
        """Fit the reference side on training set ``train`` (l × d) and held-out set ``test`` (n × d).

        ``projection``: PCA dimensions fitted on ``train`` (a layer no wider than that is centred and
        rotated), or None. Cells: k-means with ``k`` cells on the (projected) training set, seeded by
        ``seed``, or cell ids given for both sets (``train_cells``, ``test_cells``), in which case
        :meth:`score` needs ``generated_cells`` too. ``device``: a torch device (e.g. "cuda") for the
        covariance and the nearest-neighbour searches, here and in :meth:`score`; None (default) for
        the CPU path. The values are the same either way."""
        if distance not in DISTANCES:
            raise UsageError(f"distance must be one of {DISTANCES}, not {distance!r}")
        if projection is not None:
            if isinstance(projection, bool) or not isinstance(projection, (int, np.integer)) or projection < 1:
                raise UsageError(f"projection must be a positive integer (or None), not {projection!r}")
            projection = int(projection)
        seed = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
        if seed is None:
            raise UsageError("seed must be an integer")
        dev = resolve_device(device)
        given = (train_cells is not None, test_cells is not None)
        if any(given) and not all(given):
            raise UsageError("give cell ids for both train and test, or for neither")
        if not all(given):
            k = _positive_int(k, "k")
        t, p = _as_matrix(train, "train"), _as_matrix(test, "test")
        if t.shape[1] != p.shape[1]:
            raise StatisticError(f"train has {t.shape[1]} dimensions but test has {p.shape[1]}; "
                                 f"embed both with the same encoder layer")
        l, dim = t.shape
        mean = components = None
        if projection is not None:
            if projection < dim and projection > l:
                raise UsageError(f"projection to {projection} dimensions needs at least {projection} training "
                                 f"points, got {l}; project to fewer dimensions or give more training points")
            if _float64_on(dev):
                mean, components, rows = _pca_on(t, min(projection, dim), dev)
                t, p = _project_on(rows, mean, components, dev), _project_on(p, mean, components, dev)
                del rows
            else:
                mean, components = _pca(t, min(projection, dim))
                t, p = _project(t, mean, components), _project(p, mean, components)
        if distance == "cosine":
            t, p = _normalise(t, "train"), _normalise(p, "test")

        centres = None
        if all(given):
            tc, pc = _as_cells(train_cells, len(t), "train"), _as_cells(test_cells, len(p), "test")
            cells = np.unique(np.concatenate([tc, pc]))
        else:
            if l < k:
                raise StatisticError(f"k-means with k = {k} cells needs at least k = {k} training points, "
                                     f"got {l}; use fewer cells")
            centres = _kmeans_on(t, k, seed, dev) if _float64_on(dev) else kmeans(t, k, seed)
            tc, pc = _assign(t, centres), _assign(p, centres)
            cells = np.arange(k)
        counts_t = np.bincount(np.searchsorted(cells, tc), minlength=len(cells))
        counts_p = np.bincount(np.searchsorted(cells, pc), minlength=len(cells))
        for c, nt, npn in zip(cells, counts_t, counts_p):
            if nt == 0:
                raise StatisticError(f"cell {int(c)} has no training points; use fewer cells (k) or other cells")
            if npn == 0:
                raise StatisticError(f"cell {int(c)} has no test points; use fewer cells (k) or a larger test set")
        order = np.argsort(tc, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts_t)]).astype(np.int64)
        ref = cls(k=int(k) if isinstance(k, (int, np.integer)) else 0, distance=distance, projection=projection,
                  seed=seed, dim=dim, mean=mean, components=components, centres=centres, cells=cells,
                  train=np.ascontiguousarray(t[order]), offsets=offsets, test_dist=np.empty(len(p)),
                  test_cells=pc, device=dev)
        members = [np.flatnonzero(pc == c) for c in cells]
        found = ref._nearest(members, p, list(range(len(cells))))
        for rows, dist in zip(members, found):
            ref._test_dist[rows] = dist
        return ref

    def _cell(self, i: int) -> _Cell:
        if i not in self._search:
            a, b = self._offsets[i], self._offsets[i + 1]
            self._search[i] = _Cell(self._train[a:b], self._distance)
        return self._search[i]

    @property
    def training_points(self) -> np.ndarray:
        """T in the statistic's space (projected, and unit-normalised for the cosine distance), grouped by
        cell; read-only."""
        view = self._train.view()
        view.flags.writeable = False
        return view

    def transform(self, points) -> np.ndarray:
        """Rows of ``points`` (m × d, the layer's embeddings) in the statistic's space, as
        :attr:`training_points` are: projected, and unit-normalised for the cosine distance."""
        return self._prepare(points, "points")

    def _prepare(self, generated, name: str = "generated") -> np.ndarray:
        q = _as_matrix(generated, name)
        if q.shape[1] != self._dim:
            raise StatisticError(f"{name} has {q.shape[1]} dimensions but the reference has {self._dim}; "
                                 f"embed it with the same encoder layer")
        if self._components is not None:
            if _float64_on(self._device):
                q = _project_on(q, self._mean, self._components, self._device)
            else:
                q = _project(q, self._mean, self._components)
        if self._distance == "cosine":
            q = _normalise(q, name)
        return q

    def assign(self, points) -> np.ndarray:
        """The k-means cell of each row of ``points`` (m × d, in the input space: projected and
        normalised here as the reference's own points were). Only for references with k-means cells."""
        if self._centres is None:
            raise UsageError("this reference was fitted on given cells: it has no centres to assign to")
        return _assign(self.transform(points), self._centres)

    def score(self, generated, *, tau: float | None = None, generated_cells=None) -> CTResult:
        """C_T of the generated set (m × d) against this reference.

        ``tau``: a cell counts when more than tau·m generated points fall in it (default 20/m, i.e. at
        least 21). ``generated_cells``: cell ids of the generated rows, required when the reference
        was fitted on given cells (otherwise the points go to the nearest k-means centre)."""
        _check_tau(tau)
        q = self._prepare(generated)
        m = len(q)
        if generated_cells is not None:
            qc = _as_cells(generated_cells, m, "generated")
        elif self._centres is None:
            raise UsageError("this reference was fitted on given cells: pass generated_cells too")
        else:
            qc = _assign(q, self._centres)
        tau = 20.0 / m if tau is None else float(tau)
        index = np.searchsorted(self._cells, qc)
        unknown = (index >= len(self._cells)) | (self._cells[np.minimum(index, len(self._cells) - 1)] != qc)
        if unknown.any():
            raise StatisticError(f"generated points fall in cell {int(qc[unknown][0])}, which has no training "
                                 f"or test points")
        counts_q = np.bincount(index, minlength=len(self._cells))
        test_index = np.searchsorted(self._cells, self._test_cells)
        busy = [i for i in range(len(self._cells)) if counts_q[i] > 0]
        members = [np.flatnonzero(index == i) for i in range(len(self._cells))]
        found = self._nearest(members, q, busy)
        nearest = dict(zip(busy, found))
        cells, num, den = [], 0.0, 0.0
        for i, c in enumerate(self._cells):
            n_train = int(self._offsets[i + 1] - self._offsets[i])
            lp = self._test_dist[test_index == i]
            mq = int(counts_q[i])
            if mq == 0:
                cells.append(CellResult(int(c), n_train, len(lp), 0, None, None, False))
                continue
            lq = nearest[i]
            u = mann_whitney_u(lq, lp)
            z = z_score(u, mq, len(lp))
            counted = mq / m > tau
            if counted:
                w = len(lp) / self.n_test
                num += w * z
                den += w
            cells.append(CellResult(int(c), n_train, len(lp), mq, float(u), float(z), bool(counted)))
        if den == 0.0:
            largest = int(counts_q.max())
            raise StatisticError(f"no cell counts: the largest cell holds {largest} of the {m} generated points "
                                 f"but τ = {tau:.4g} demands more than {tau * m:.4g}; give more generated "
                                 f"points, fewer cells (k) or a smaller tau")
        return CTResult(value=float(num / den), cells=tuple(cells), tau=tau, counted_weight=float(den))

    # -- caching ---------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything :meth:`score` needs, as numpy arrays (for ``np.savez``); see :meth:`from_arrays`."""
        arrays = {"format": np.array(2), "k": np.array(self._k), "distance": np.array(self._distance),
                  "projection": np.array(-1 if self._projection is None else self._projection),
                  "seed": np.array(self._seed), "dim": np.array(self._dim), "cells": self._cells,
                  "train": self._train, "offsets": self._offsets, "test_dist": self._test_dist,
                  "test_cells": self._test_cells}
        if self._components is not None:
            arrays["mean"], arrays["components"] = self._mean, self._components
        if self._centres is not None:
            arrays["centres"] = self._centres
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> FittedCT:
        """Rebuild a reference from :meth:`to_arrays` output (e.g. an opened .npz). Raises KeyError or
        ValueError on arrays from another format."""
        projection = int(arrays["projection"])

        def get(name: str) -> np.ndarray | None:
            return np.asarray(arrays[name], dtype=np.float64) if name in arrays else None

        if "format" not in arrays:  # the first layout: per-point training cell ids, sorted by cell
            train_cells = np.asarray(arrays["train_cells"], dtype=np.int64)
            test_cells = np.asarray(arrays["test_cells"], dtype=np.int64)
            cells = np.unique(np.concatenate([train_cells, test_cells]))
            offsets = np.searchsorted(train_cells, np.r_[cells, cells[-1] + 1]).astype(np.int64)
            arrays = {**arrays, "cells": cells, "offsets": offsets}
        elif int(arrays["format"]) != 2:
            raise ValueError(f"C_T reference arrays of format {int(arrays['format'])}, expected 2")
        return cls(k=int(arrays["k"]), distance=str(arrays["distance"]),
                   projection=None if projection < 0 else projection, seed=int(arrays["seed"]),
                   dim=int(arrays["dim"]), mean=get("mean"), components=get("components"),
                   centres=get("centres"), cells=np.asarray(arrays["cells"], dtype=np.int64),
                   train=np.asarray(arrays["train"]), offsets=np.asarray(arrays["offsets"], dtype=np.int64),
                   test_dist=np.asarray(arrays["test_dist"], dtype=np.float64),
                   test_cells=np.asarray(arrays["test_cells"], dtype=np.int64))


def ct_score(train, test, generated, *, cells=None, k: int = 10, distance: str = "euclidean",
             projection: int | None = None, tau: float | None = None, seed: int = 0, device=None) -> CTResult:
    """C_T of ``generated`` (m × d) against training set ``train`` (l × d) and held-out set ``test`` (n × d).

    ``cells``: optional (train_ids, test_ids, generated_ids) cell ids; otherwise k-means with ``k`` cells
    on the (projected) training set, seeded by ``seed``. ``distance``: "euclidean" or "cosine"
    (1 − |cos|). ``projection``: PCA dimensions fitted on ``train``, or None. ``tau``: a cell counts when
    more than tau·m generated points fall in it (default 20/m). ``device``: a torch device for the
    covariance and the searches (None: the CPU path), with the same values. Exactly
    ``FittedCT.fit(...).score(...)``. Raises :class:`StatisticError` when the value is undefined (no
    counted cell, an empty cell, mismatched dimensions, NaN) and :class:`UsageError` on bad parameters.
    """
    _check_tau(tau)
    train_cells = test_cells = generated_cells = None
    if cells is not None:
        if not isinstance(cells, (tuple, list)) or len(cells) != 3:
            raise UsageError("cells must be a tuple of three id arrays: (train, test, generated)")
        train_cells, test_cells, generated_cells = cells
    reference = FittedCT.fit(train, test, k=k, distance=distance, projection=projection, seed=seed,
                                train_cells=train_cells, test_cells=test_cells, device=device)
    return reference.score(generated, tau=tau, generated_cells=generated_cells)
