"""The C_T data-copying statistic (Meehan, Chaudhuri & Dasgupta 2020), exact and fast.

For training set T (l × d), held-out set P_n (n × d) and generated set Q_m (m × d), embedded alike:

1. optionally project all three by PCA fitted on T only (to min(p, d) dimensions: a layer narrower than
   p is centred and rotated, which changes no Euclidean distance);
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

Speed: nearest neighbours are found by blocked matrix products (bounded memory: never more than
``BLOCK`` rows against one cell's training points at a time), in float32 when the dimension is large,
after which the distance to the few best candidates is recomputed exactly in float64; U comes from
ranks, not from pairwise comparisons; PCA comes from the d × d covariance, not an SVD of T.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forensics.errors import StatisticError, UsageError

DISTANCES = ("euclidean", "cosine")
BLOCK = 4096
_CANDIDATES = 4  # neighbours re-checked in float64 after a float32 search
_KMEANS_INIT = 4
_KMEANS_ITER = 100


@dataclass(frozen=True)
class CellResult:
    """One cell's part in C_T. ``u`` and ``z`` are None when no generated point fell in the cell."""

    cell: int
    n_train: int
    n_test: int
    n_generated: int
    u: float | None
    z: float | None
    counted: bool


@dataclass(frozen=True)
class CTResult:
    """C_T with its per-cell details. ``counted_weight`` is the share of P_n in counted cells."""

    value: float
    cells: tuple[CellResult, ...]
    tau: float
    counted_weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "tau": self.tau, "counted_weight": self.counted_weight,
                "cells": [asdict(c) for c in self.cells]}


# -- helpers -------------------------------------------------------------------------------------
def _as_matrix(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise StatisticError(f"{name} must be a 2-D array (points × dimensions), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise StatisticError(f"{name} must be numeric, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise StatisticError(f"{name} holds NaN or infinite values; clean the embeddings first")
    return a


def _as_cells(x: Any, n: int, name: str) -> np.ndarray:
    c = np.asarray(x)
    if c.ndim != 1 or len(c) != n:
        raise StatisticError(f"cell ids for {name} must be a 1-D array of {n} integers, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        if not (np.issubdtype(c.dtype, np.number) and np.all(c == np.round(c))):
            raise StatisticError(f"cell ids for {name} must be integers")
    c = c.astype(np.int64)
    if len(c) and c.min() < 0:
        raise StatisticError(f"cell ids for {name} must be non-negative")
    return c


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise StatisticError(f"{name} has a zero vector, which has no direction for the cosine distance")
    return x / norms


def _pca(train: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal axes (d × dims) of ``train``, from its covariance."""
    mean = train.mean(axis=0)
    centred = train - mean
    cov = centred.T @ centred
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dims]
    return mean, np.ascontiguousarray(vectors[:, order])


def _sq_dist(x: np.ndarray, centres: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(axis=1)[:, None] - 2.0 * (x @ centres.T) + c_sq[None, :], 0.0)


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    c_sq = (centres * centres).sum(axis=1)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), BLOCK):
        out[s:s + BLOCK] = _sq_dist(x[s:s + BLOCK], centres, c_sq).argmin(axis=1)
    return out


def _lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations from ``centres`` until the labels stop changing. Returns (centres, labels, inertia)."""
    n, k = len(x), len(centres)
    labels = np.full(n, -1)
    for _ in range(max_iter):
        d = _sq_dist(x, centres, (centres * centres).sum(axis=1))
        new = d.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        onehot = np.zeros((n, k))
        onehot[np.arange(n), labels] = 1.0
        counts = onehot.sum(axis=0)
        sums = onehot.T @ x
        empty = counts == 0
        centres = centres.copy()
        centres[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():  # re-seed an empty cell at the points farthest from their centres
            far = np.argsort(d[np.arange(n), labels])[::-1][: int(empty.sum())]
            centres[empty] = x[far]
    d = _sq_dist(x, centres, (centres * centres).sum(axis=1))
    labels = d.argmin(axis=1)
    return centres, labels, float(d[np.arange(n), labels].sum())


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    x_sq = (x * x).sum(axis=1)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    closest = np.maximum(x_sq - 2 * x @ centres[0] + centres[0] @ centres[0], 0.0)
    for j in range(1, k):
        total = closest.sum()
        centres[j] = x[rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)]
        closest = np.minimum(closest, np.maximum(x_sq - 2 * x @ centres[j] + centres[j] @ centres[j], 0.0))
    return centres


def kmeans(x: np.ndarray, k: int, seed: int, *, sample: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means: k-means++ and Lloyd from a few restarts on a sample of at most ``sample`` points,
    the best of them refined by Lloyd on all points. Returns (centres, labels); deterministic for a seed."""
    rng = np.random.default_rng(seed)
    sub = x[np.sort(rng.choice(len(x), sample, replace=False))] if len(x) > sample else x
    best = None
    for _ in range(_KMEANS_INIT):
        centres, _, inertia = _lloyd(sub, _kmeans_pp(sub, k, rng), _KMEANS_ITER)
        if best is None or inertia < best[1]:
            best = (centres, inertia)
    centres, labels, _ = _lloyd(x, best[0], _KMEANS_ITER)
    return centres, labels


def nearest_distance(queries: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
    """For each query row, the distance to its nearest row of ``points`` (rows unit-norm for cosine)."""
    out = np.empty(len(queries))
    if len(queries) == 0:
        return out
    fast = points.shape[1] > 128
    pts = points.astype(np.float32) if fast else points
    p_sq = (pts * pts).sum(axis=1) if distance == "euclidean" else None
    kk = min(_CANDIDATES, len(points))
    for s in range(0, len(queries), BLOCK):
        q = queries[s:s + BLOCK]
        qq = q.astype(np.float32) if fast else q
        prod = qq @ pts.T
        if distance == "euclidean":
            score = p_sq[None, :] - 2.0 * prod  # + |q|², constant per row
        else:
            score = -np.abs(prod)
        if fast or kk < len(points):
            cand = np.argpartition(score, kk - 1, axis=1)[:, :kk] if kk < len(points) else \
                np.broadcast_to(np.arange(len(points)), (len(q), len(points)))
        else:
            cand = np.broadcast_to(np.arange(len(points)), (len(q), len(points)))
        chosen = points[cand]  # (b, kk, d) float64
        if distance == "euclidean":
            exact = np.sqrt(((chosen - q[:, None, :]) ** 2).sum(axis=2))
        else:
            exact = 1.0 - np.abs(np.einsum("bkd,bd->bk", chosen, q))
        out[s:s + BLOCK] = exact.min(axis=1)
    return out


def mann_whitney_u(generated: np.ndarray, test: np.ndarray) -> float:
    """U = #pairs (q, p) with q > p, ties ½ — scipy's ``mannwhitneyu(generated, test).statistic``."""
    from scipy.stats import rankdata

    m = len(generated)
    ranks = rankdata(np.concatenate([generated, test]), method="average")
    return float(ranks[:m].sum() - m * (m + 1) / 2.0)


def z_score(u: float, m: int, n: int) -> float:
    return (u - (m * n / 2.0 - 0.5)) / math.sqrt(m * n * (m + n + 1) / 12.0)


# -- the reference side --------------------------------------------------------------------------
class CTReference:
    """The query-independent half of C_T: projection, cells, per-cell training points, and the test
    points' nearest-training distances. Fit once per layer with :meth:`fit`; score with :meth:`score`."""

    def __init__(self, *, k: int, distance: str, projection: int | None, seed: int, mean: np.ndarray | None,
                 components: np.ndarray | None, centres: np.ndarray | None, train: np.ndarray,
                 train_cells: np.ndarray, test_dist: np.ndarray, test_cells: np.ndarray, dim: int):
        self.k, self.distance, self.projection, self.seed = k, distance, projection, seed
        self.mean, self.components, self.centres = mean, components, centres
        order = np.argsort(train_cells, kind="stable")
        self._train = np.ascontiguousarray(train[order])
        self._train_cells = train_cells[order]
        self._cells = np.unique(np.concatenate([train_cells, test_cells]))
        starts = np.searchsorted(self._train_cells, self._cells, side="left")
        ends = np.searchsorted(self._train_cells, self._cells, side="right")
        self._span = {int(c): (int(a), int(b)) for c, a, b in zip(self._cells, starts, ends)}
        self._test_dist, self._test_cells = test_dist, test_cells
        self.n_train, self.n_test, self.dim = len(train), len(test_dist), dim

    @classmethod
    def fit(cls, train, test, *, k: int = 10, distance: str = "euclidean", projection: int | None = None,
            seed: int = 0, train_cells=None, test_cells=None) -> CTReference:
        if distance not in DISTANCES:
            raise UsageError(f"distance must be one of {DISTANCES}, not {distance!r}")
        t, p = _as_matrix(train, "train"), _as_matrix(test, "test")
        if t.shape[1] != p.shape[1]:
            raise StatisticError(f"train has {t.shape[1]} dimensions but test has {p.shape[1]}; embed both alike")
        dim = t.shape[1]
        mean = components = None
        if projection is not None:
            if isinstance(projection, bool) or not isinstance(projection, (int, np.integer)) or projection < 1:
                raise UsageError(f"projection must be a positive integer (or None), not {projection!r}")
            # a layer narrower than the projection is centred and rotated, not cut: PCA to min(p, d, l)
            mean, components = _pca(t, int(min(projection, t.shape[1], t.shape[0])))
            t, p = (t - mean) @ components, (p - mean) @ components
        if distance == "cosine":
            t, p = _normalise(t, "train"), _normalise(p, "test")
        given = (train_cells is not None, test_cells is not None)
        if any(given) and not all(given):
            raise UsageError("give cell ids for both train and test, or for neither")
        centres = None
        if all(given):
            tc, pc = _as_cells(train_cells, len(t), "train"), _as_cells(test_cells, len(p), "test")
        else:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise UsageError(f"k must be a positive integer, not {k!r}")
            if len(t) < k:
                raise StatisticError(f"k-means needs at least k = {k} training points, got {len(t)}")
            centres, tc = kmeans(t, int(k), seed)
            pc = _assign(p, centres)
        ref = cls(k=int(k), distance=distance, projection=None if projection is None else int(projection),
                  seed=int(seed), mean=mean, components=components, centres=centres, train=t, train_cells=tc,
                  test_dist=np.empty(len(p)), test_cells=pc, dim=dim)
        for c in ref._cells:
            a, b = ref._span[int(c)]
            in_test = pc == c
            if b == a:
                raise StatisticError(f"cell {int(c)} has no training points; use fewer cells (k) or other cells")
            if not in_test.any():
                raise StatisticError(f"cell {int(c)} has no test points; use fewer cells (k) or a larger test set")
            ref._test_dist[in_test] = nearest_distance(p[in_test], ref._train[a:b], distance)
        return ref

    def _prepare(self, generated) -> np.ndarray:
        q = _as_matrix(generated, "generated")
        if q.shape[1] != self.dim:
            raise StatisticError(f"generated has {q.shape[1]} dimensions but the reference has {self.dim}")
        if self.components is not None:
            q = (q - self.mean) @ self.components
        if self.distance == "cosine":
            q = _normalise(q, "generated")
        return q

    def score(self, generated, *, tau: float | None = None, generated_cells=None) -> CTResult:
        """C_T of a generated set against this reference."""
        q = self._prepare(generated)
        m = len(q)
        if m == 0:
            raise StatisticError("the generated set is empty")
        if generated_cells is not None:
            qc = _as_cells(generated_cells, m, "generated")
        elif self.centres is None:
            raise UsageError("this reference was fitted on given cells: pass generated_cells too")
        else:
            qc = _assign(q, self.centres)
        tau = 20.0 / m if tau is None else float(tau)
        unknown = np.setdiff1d(np.unique(qc), self._cells)
        if len(unknown):
            raise StatisticError(f"generated points fall in cell {int(unknown[0])}, which has no training points")
        cells = []
        num = den = 0.0
        for c in self._cells:
            c = int(c)
            a, b = self._span[c]
            in_q = qc == c
            lp = self._test_dist[self._test_cells == c]
            mq, n_p = int(in_q.sum()), len(lp)
            if mq == 0:
                cells.append(CellResult(c, b - a, n_p, 0, None, None, False))
                continue
            lq = nearest_distance(q[in_q], self._train[a:b], self.distance)
            u = mann_whitney_u(lq, lp)
            z = z_score(u, mq, n_p)
            counted = mq / m > tau
            if counted:
                w = n_p / self.n_test
                num += w * z
                den += w
            cells.append(CellResult(c, b - a, n_p, mq, u, z, counted))
        if den == 0.0:
            largest = max(c.n_generated for c in cells)
            raise StatisticError(f"no cell counts: the fullest cell holds {largest} of {m} generated points, "
                                 f"τ = {tau:.4g} needs more than {tau * m:.4g}; give more generated images or fewer cells")
        return CTResult(value=num / den, cells=tuple(cells), tau=tau, counted_weight=den)

    # -- caching ---------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"k": np.array(self.k), "distance": np.array(self.distance),
                  "projection": np.array(-1 if self.projection is None else self.projection),
                  "seed": np.array(self.seed), "dim": np.array(self.dim), "train": self._train,
                  "train_cells": self._train_cells, "test_dist": self._test_dist, "test_cells": self._test_cells}
        if self.components is not None:
            arrays["mean"], arrays["components"] = self.mean, self.components
        if self.centres is not None:
            arrays["centres"] = self.centres
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> CTReference:
        projection = int(arrays["projection"])
        return cls(k=int(arrays["k"]), distance=str(arrays["distance"]),
                   projection=None if projection < 0 else projection, seed=int(arrays["seed"]),
                   mean=arrays.get("mean"), components=arrays.get("components"), centres=arrays.get("centres"),
                   train=np.asarray(arrays["train"], dtype=np.float64),
                   train_cells=np.asarray(arrays["train_cells"], dtype=np.int64),
                   test_dist=np.asarray(arrays["test_dist"], dtype=np.float64),
                   test_cells=np.asarray(arrays["test_cells"], dtype=np.int64), dim=int(arrays["dim"]))


def ct_score(train, test, generated, *, cells=None, k: int = 10, distance: str = "euclidean",
             projection: int | None = None, tau: float | None = None, seed: int = 0) -> CTResult:
    """C_T of ``generated`` against training set ``train`` and held-out set ``test``.

    ``cells``: optional (train_ids, test_ids, generated_ids) cell ids; otherwise k-means with ``k`` cells
    on (projected) ``train``, seeded by ``seed``. ``distance``: "euclidean" or "cosine" (1 − |cos|).
    ``projection``: PCA dimensions fitted on ``train``, or None. ``tau``: a cell counts when more than
    ``tau``·m generated points fall in it (default 20/m). Raises :class:`StatisticError` when the value
    is undefined (no counted cell, an empty cell, mismatched dimensions).
    """
    train_cells = test_cells = generated_cells = None
    if cells is not None:
        if len(cells) != 3:
            raise UsageError("cells must be a tuple of three id arrays: (train, test, generated)")
        train_cells, test_cells, generated_cells = cells
    reference = CTReference.fit(train, test, k=k, distance=distance, projection=projection, seed=seed,
                                train_cells=train_cells, test_cells=test_cells)
    return reference.score(generated, tau=tau, generated_cells=generated_cells)
