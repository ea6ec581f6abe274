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

The work splits in two. :class:`CTReference` holds everything that does not depend on the generated
set — the projection, the cells, each cell's training points and the test points' distances — so a
caller fits it once per encoder layer, caches it (:meth:`CTReference.to_arrays`), and scores any number
of generated batches with :meth:`CTReference.score`. :func:`ct_score` is the two steps in one.

How it is fast and still exact (equal to a plain float64 computation to ~1e-15):

- PCA comes from the d × d covariance, accumulated in float64 over blocks of rows (never an SVD of T,
  never a float64 copy of T); the small d × d eigenproblem is then solved and the leading axes kept.
- k-means: greedy k-means++ and Lloyd iterations by matrix products in float32, restarted from several
  seeds on a sample of T; the best run is refined on all of T. The cells are then the float64
  nearest-centre assignment, the same rule for T, P_n and Q_m.
- Nearest neighbours: a blocked float32 search (matrix products, bounded memory) finds, for each query,
  every training point whose float32 score lies within a proven rounding bound of the best; the exact
  distance to those few candidates is then recomputed in float64 from the original coordinates. The
  reported distance is therefore the float64 one, whatever float32 did.
- U is counted from the sorted test distances (ranks), not from pairwise comparisons.

Large matrix products run through torch's CPU BLAS (MKL) on torch's configured threads; small ones
(k-means, assignment, small search tiles, the d × d eigenproblem) run on one thread, since on a busy
machine a threaded BLAS loses far more to synchronisation than it gains. Memory stays bounded: PCA and
projection convert a block of rows at a time, and a search tile holds at most ``_TILE`` scores.
"""

from __future__ import annotations

import math
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
_ROWS = 1 << 22              # float64 elements per row block in PCA (a block of T converted at a time)
_U32 = 2.0 ** -24            # unit roundoff of float32
_CACHE = 1 << 20             # scores per query block that should stay in cache (4 MiB of float32)
_SERIAL = 1 << 26            # multiply-adds below which a search tile runs on one torch thread
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
    if not np.isfinite(a).all():
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


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for the large products, through torch's BLAS (MKL on x86 wheels: several times faster than
    the OpenBLAS numpy ships, here) when torch is importable. Transposed views are used without copies."""
    if _torch() is None:  # pragma: no cover
        return a @ b
    return (_t(a) @ _t(b)).numpy()


@contextmanager
def _torch_threads(limit: int | None):
    """Run torch on at most ``limit`` threads inside the block (None: as configured). Small products
    lose far more to waking and synchronising threads than they gain, dramatically so on a busy
    machine (a 100 × 500 tile took 10 ms on two threads and 0.1 ms on one, on a loaded 2-core box)."""
    torch = _torch()
    if torch is None or limit is None or torch.get_num_threads() <= limit:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _small_blas():
    """numpy's BLAS on one thread: the products inside k-means and cell assignment are small, and a
    threaded BLAS spends more time waking and spinning threads than computing (dramatically so on a
    busy 2-core machine). The large products go through :func:`_mm`, which keeps torch's threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _row_blocks(n: int, width: int, budget: int | None = None):
    step = max(1, (_ROWS if budget is None else budget) // max(1, width))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _centred_block(x: np.ndarray, s: int, e: int, mean: np.ndarray, buf: np.ndarray) -> np.ndarray:
    out = buf[: e - s]
    np.subtract(x[s:e], mean, out=out, dtype=np.float64, casting="unsafe")
    return out


def _pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal axes (d × dims, float64) of ``x``, from its covariance.

    The covariance is accumulated in float64 over centred blocks of rows (bounded memory), its upper
    block triangle only; the leading eigenvectors are kept, their signs fixed (largest
    entry positive) so that the projection is reproducible."""
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d))
    edges = np.linspace(0, d, max(1, d // 256) + 1).astype(int)  # column blocks of ~256
    buf = np.empty((max(1, min(n, _ROWS // d)), d))
    for s, e in _row_blocks(n, d):
        b = _centred_block(x, s, e, mean, buf)
        for i in range(len(edges) - 1):
            a, z = edges[i], edges[i + 1]
            cov[a:z, a:] += _mm(b[:, a:z].T, b[:, a:])
    upper = np.triu(cov)
    cov = upper + np.triu(cov, 1).T
    # A full symmetric eigensolver (divide and conquer) is both faster and steadier here than a subset
    # one: MRRR slows down badly on the clustered eigenvalues that embeddings' noise floors produce.
    torch = _torch()
    if torch is not None:
        with _torch_threads(1):  # a d × d problem: threads only add synchronisation, badly so on a busy
            vectors = torch.linalg.eigh(torch.from_numpy(cov)).eigenvectors.numpy()  # machine (s, not 0.1 s)
    else:  # pragma: no cover
        vectors = np.linalg.eigh(cov)[1]
    vectors = vectors[:, d - min(dims, d):]
    vectors = vectors[:, ::-1]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return mean, np.ascontiguousarray(vectors * signs)


def _project(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(x − mean) @ components in float64, a block of rows at a time."""
    out = np.empty((len(x), components.shape[1]))
    buf = np.empty((max(1, min(len(x), _ROWS // x.shape[1])), x.shape[1]))
    for s, e in _row_blocks(len(x), x.shape[1]):
        out[s:e] = _mm(_centred_block(x, s, e, mean, buf), components)
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


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded k-means on the rows of ``x``; returns the k centres (float64).

    ``_KMEANS_INIT`` runs of greedy k-means++ plus Lloyd on a sample of at most ``_KMEANS_SAMPLE``
    points (all points when there are fewer); the lowest-inertia run is refined by Lloyd on all points,
    in float32; the centres are then the float64 means of the points nearest to them. Deterministic
    for a seed."""
    rng = np.random.default_rng(seed)
    with _small_blas():
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        tol = _KMEANS_TOL * float(np.mean(np.var(x32, axis=0, dtype=np.float64)))
        if len(x32) > _KMEANS_SAMPLE:
            sub = x32[np.sort(rng.choice(len(x32), _KMEANS_SAMPLE, replace=False))]
        else:
            sub = x32
        sub_sq = np.einsum("ij,ij->i", sub, sub)
        best = None
        for _ in range(_KMEANS_INIT):
            centres, inertia = _lloyd(sub, sub_sq, _kmeans_pp(sub, sub_sq, k, rng), tol)
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
    with _small_blas():
        for s, e in _row_blocks(len(x), max(x.shape[1], len(centres))):
            b = x[s:e].astype(np.float64, copy=False)
            d = c_sq[None, :] - 2.0 * (b @ centres.T)  # + |x|², the same for every centre
            out[s:e] = d.argmin(axis=1)
    return out


# -- nearest neighbours --------------------------------------------------------------------------
class _Cell:
    """One cell's training points, ready for the fast search and the float64 re-check."""

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
        self.sq = (norms * norms).astype(self.dtype)
        self.pts = np.ascontiguousarray(centred, dtype=self.dtype)
        # Bound on |computed score − exact score|, relative to |p|² + 2|q||p|: rounding both operands,
        # a dot product of length dim (at most dim·u·|q||p|), the stored squared norm and the final
        # operations — each counted twice over.
        self.rel = (2.0 * dim + 16.0) * unit

    def nearest(self, queries: np.ndarray) -> np.ndarray:
        """Exact (float64) distance from each query row to its nearest training point in this cell."""
        out = np.full(len(queries), np.inf)
        # query blocks small enough that a block's scores stay in cache between the product and the
        # selection (a third faster than one big block), at most BLOCK rows
        step = int(min(BLOCK, max(64, _CACHE // max(1, len(self.points)))))
        for s in range(0, len(queries), step):
            q = queries[s:s + step].astype(np.float64, copy=False)
            self._search(q, out[s:s + step])
        return out

    def _search(self, q: np.ndarray, out: np.ndarray) -> None:
        """For a block of queries: every (query, point) pair whose fast score is within twice the error
        bound of the query's best so far is re-checked exactly, so the true nearest point always is."""
        b, n_pts = len(q), len(self.points)
        if self.distance == "euclidean":
            qc = q - self.shift
            qn = np.sqrt(np.einsum("ij,ij->i", qc, qc))
            err = self.rel * (self.reach * self.reach + 2.0 * qn * self.reach) + 1e-300
            qf = np.ascontiguousarray(qc, dtype=self.dtype)
        else:
            err = np.full(b, self.rel * 3.0)
            qf = np.ascontiguousarray(q, dtype=self.dtype)
        best = np.full(b, np.inf)
        chunk = max(1, _TILE // max(1, b))
        torch = _torch()
        for a in range(0, n_pts, chunk):
            z = min(n_pts, a + chunk)
            if torch is not None:
                small = b * (z - a) * qf.shape[1] < _SERIAL
                with _torch_threads(1 if small else None):
                    rows, cols, best = self._tile(torch, qf, a, z, err, best)
            else:  # pragma: no cover - torch is a dependency
                prod = qf @ self.pts[a:z].T
                score = self.sq[None, a:z] - 2.0 * prod if self.distance == "euclidean" else -np.abs(prod)
                best = np.minimum(best, score.min(axis=1))
                rows, cols = np.nonzero(score <= self._limit(best, err)[:, None])
            self._exact(q, rows, cols + a, out)

    def _limit(self, best: np.ndarray, err: np.ndarray) -> np.ndarray:
        limit = (best + 2.0 * err).astype(self.dtype)
        return np.nextafter(limit, self.dtype(np.inf))  # rounded up, never below

    def _tile(self, torch, qf: np.ndarray, a: int, z: int, err: np.ndarray, best: np.ndarray):
        """Candidates among training points a:z for a block of queries; updates the running best."""
        qt, pt = _t(qf), _t(self.pts[a:z])
        if self.distance == "euclidean":  # |p|² − 2 q·p: the squared distance less |q|²
            score = torch.addmm(_t(self.sq[a:z])[None, :], qt, pt.T, alpha=-2.0)
        else:                              # −|q·p|: 1 − |cos| less 1
            score = (qt @ pt.T).abs_().neg_()
        # the two best of each row: a row whose second best is out of reach has one candidate, and
        # only the (rare) other rows are scanned in full
        top, idx = torch.topk(score, min(2, z - a), dim=1, largest=False)
        top_np = top.numpy()
        best = np.minimum(best, top_np[:, 0].astype(np.float64))
        limit = self._limit(best, err)
        several = top_np[:, -1] <= limit if z - a > 1 else np.zeros(len(qf), dtype=bool)
        one = np.flatnonzero((top_np[:, 0] <= limit) & ~several)
        rows, cols = [one], [idx.numpy()[one, 0]]
        if several.any():
            rs = np.flatnonzero(several)
            rr, cc = torch.nonzero(score[_t(rs)] <= _t(limit[rs])[:, None], as_tuple=True)
            rows.append(rs[rr.numpy()])
            cols.append(cc.numpy())
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
class CTReference:
    """The query-independent half: projection, cells, per-cell training points and the test points'
    nearest-training distances.

    Fit it once per encoder layer with :meth:`fit`, keep it (or cache :meth:`to_arrays` in an .npz and
    rebuild it with :meth:`from_arrays`), and score any number of generated sets with :meth:`score`.
    Read-only attributes: ``k``, ``distance``, ``projection`` (int or None), ``seed``, ``n_train``,
    ``n_test``, ``dim`` (the input dimension)."""

    def __init__(self, *, k: int, distance: str, projection: int | None, seed: int, dim: int,
                 mean: np.ndarray | None, components: np.ndarray | None, centres: np.ndarray | None,
                 cells: np.ndarray, train: np.ndarray, offsets: np.ndarray, test_dist: np.ndarray,
                 test_cells: np.ndarray):
        self._k, self._distance, self._projection, self._seed, self._dim = k, distance, projection, seed, dim
        self._mean, self._components, self._centres = mean, components, centres
        self._cells = cells            # the cell ids, sorted
        self._train = train            # training points in the distance space, sorted by cell
        self._offsets = offsets        # cell i's training points are _train[offsets[i]:offsets[i + 1]]
        self._test_dist = test_dist
        self._test_cells = test_cells
        self._search: dict[int, _Cell] = {}

    # read-only attributes
    k = property(lambda self: self._k, doc="Number of k-means cells asked for (ignored with given cells).")
    distance = property(lambda self: self._distance, doc='"euclidean" or "cosine" (1 − |cos|).')
    projection = property(lambda self: self._projection, doc="PCA dimensions, or None for no projection.")
    seed = property(lambda self: self._seed, doc="Seed of k-means.")
    dim = property(lambda self: self._dim, doc="Dimension of the input embeddings.")
    n_train = property(lambda self: len(self._train), doc="Number of training points.")
    n_test = property(lambda self: len(self._test_dist), doc="Number of test points.")

    @classmethod
    def fit(cls, train, test, *, k: int = 10, distance: str = "euclidean", projection: int | None = None,
            seed: int = 0, train_cells=None, test_cells=None) -> CTReference:
        """Fit the reference side on training set ``train`` (l × d) and held-out set ``test`` (n × d).

        ``projection``: PCA dimensions fitted on ``train`` (a layer no wider than that is centred and
        rotated), or None. Cells: k-means with ``k`` cells on the (projected) training set, seeded by
        ``seed``, or cell ids given for both sets (``train_cells``, ``test_cells``), in which case
        :meth:`score` needs ``generated_cells`` too."""
        if distance not in DISTANCES:
            raise UsageError(f"distance must be one of {DISTANCES}, not {distance!r}")
        if projection is not None:
            if isinstance(projection, bool) or not isinstance(projection, (int, np.integer)) or projection < 1:
                raise UsageError(f"projection must be a positive integer (or None), not {projection!r}")
            projection = int(projection)
        seed = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
        if seed is None:
            raise UsageError("seed must be an integer")
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
            centres = kmeans(t, k, seed)
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
                  test_cells=pc)
        for i, c in enumerate(cells):
            in_cell = np.flatnonzero(pc == c)
            ref._test_dist[in_cell] = ref._cell(i).nearest(p[in_cell])
        return ref

    def _cell(self, i: int) -> _Cell:
        if i not in self._search:
            a, b = self._offsets[i], self._offsets[i + 1]
            self._search[i] = _Cell(self._train[a:b], self._distance)
        return self._search[i]

    def _prepare(self, generated, name: str = "generated") -> np.ndarray:
        q = _as_matrix(generated, name)
        if q.shape[1] != self._dim:
            raise StatisticError(f"{name} has {q.shape[1]} dimensions but the reference has {self._dim}; "
                                 f"embed it with the same encoder layer")
        if self._components is not None:
            q = _project(q, self._mean, self._components)
        if self._distance == "cosine":
            q = _normalise(q, name)
        return q

    def assign(self, points) -> np.ndarray:
        """The k-means cell of each row of ``points`` (m × d, in the input space: projected and
        normalised here as the reference's own points were). Only for references with k-means cells."""
        if self._centres is None:
            raise UsageError("this reference was fitted on given cells: it has no centres to assign to")
        return _assign(self._prepare(points, "points"), self._centres)

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
        cells, num, den = [], 0.0, 0.0
        for i, c in enumerate(self._cells):
            n_train = int(self._offsets[i + 1] - self._offsets[i])
            lp = self._test_dist[test_index == i]
            mq = int(counts_q[i])
            if mq == 0:
                cells.append(CellResult(int(c), n_train, len(lp), 0, None, None, False))
                continue
            lq = self._cell(i).nearest(q[index == i])
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
    def from_arrays(cls, arrays) -> CTReference:
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
             projection: int | None = None, tau: float | None = None, seed: int = 0) -> CTResult:
    """C_T of ``generated`` (m × d) against training set ``train`` (l × d) and held-out set ``test`` (n × d).

    ``cells``: optional (train_ids, test_ids, generated_ids) cell ids; otherwise k-means with ``k`` cells
    on the (projected) training set, seeded by ``seed``. ``distance``: "euclidean" or "cosine"
    (1 − |cos|). ``projection``: PCA dimensions fitted on ``train``, or None. ``tau``: a cell counts when
    more than tau·m generated points fall in it (default 20/m). Exactly
    ``CTReference.fit(...).score(...)``. Raises :class:`StatisticError` when the value is undefined (no
    counted cell, an empty cell, mismatched dimensions, NaN) and :class:`UsageError` on bad parameters.
    """
    _check_tau(tau)
    train_cells = test_cells = generated_cells = None
    if cells is not None:
        if not isinstance(cells, (tuple, list)) or len(cells) != 3:
            raise UsageError("cells must be a tuple of three id arrays: (train, test, generated)")
        train_cells, test_cells, generated_cells = cells
    reference = CTReference.fit(train, test, k=k, distance=distance, projection=projection, seed=seed,
                                train_cells=train_cells, test_cells=test_cells)
    return reference.score(generated, tau=tau, generated_cells=generated_cells)
