"""Nearest-neighbour search beyond memory: exact over shards of the training points, FAISS as an option.

C_T needs, for each query (and, when fitting, each held-out point), the distance to its nearest training
point of its cell. :mod:`forensics.stats.ct.search` does that exactly within one cell, in bounded
blocks. Here a cell's training points are cut into *shards* of ``shard_rows`` rows and each shard is
searched on its own:

- **exact** (the default): each shard by :class:`forensics.stats.ct.search.Cell`, the minimum over shards
  kept. Each shard's answer is the float64 distance to its nearest point, recomputed from the original
  coordinates, so the minimum over shards is the unsharded answer bit for bit. Only one shard's search
  rows exist at a time per worker, and a memory-mapped training array (a reference side in the mapped
  layout) is read a shard at a time: the training side need not fit in memory. With ``ray=True`` the
  (cell, shard) searches are Ray tasks spread over a cluster, the shards sent once through the object
  store (which spills to disk).
- **FAISS** (``faiss-flat``, ``faiss-ivf``, ``faiss-hnsw``; ``pip install 'forensics-attribution[faiss]'``):
  an index per shard proposes one neighbour per query (for the cosine distance 1 − |cos|, the best of q
  and −q by inner product); the distance to it is then recomputed in float64 as above. ``faiss-flat``
  is exhaustive float32 (it can only miss a neighbour by rounding); ``faiss-ivf`` (``nlist`` lists,
  ``nprobe`` searched) and ``faiss-hnsw`` (``hnsw_m`` links, ``ef_search``) are approximate: a missed
  neighbour makes a distance too large, never too small. ``benchmarks/search_error.py`` measures what
  that does to C_T and to verdicts on the zoo.

:func:`with_search` gives a fitted C_T (:class:`forensics.stats.ct.statistic.FittedCT`) whose searches
go through a :class:`ShardedSearch`; :func:`fit_with_search` fits one that way (the held-out distances
found by the same search).
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from forensics.errors import UsageError
from forensics.stats.ct.search import Cell
from forensics.stats.ct.statistic import FittedCT

BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
FAISS_HINT = "pip install 'forensics-attribution[faiss]'"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:  # a missing extra: a failed run (exit 1), as every missing extra
        from forensics.extras import MissingExtra

        raise MissingExtra(f"the FAISS search backends need FAISS: {FAISS_HINT}, or use the exact search") from None
    return faiss


@dataclass(frozen=True)
class ShardedSearch:
    """How nearest-training distances are found (see the module docstring). ``shard_rows``: training
    points per shard; ``backend``: one of :data:`BACKENDS`; ``nlist``/``nprobe`` (IVF; nlist default
    ≈ √rows of the shard), ``hnsw_m``/``ef_search`` (HNSW); ``ray``: the shards' searches as Ray tasks
    (Ray must be connected, :func:`forensics.distributed.connect`)."""

    shard_rows: int = 1 << 16
    backend: str = "exact"
    nlist: int | None = None
    nprobe: int = 1
    hnsw_m: int = 32
    ef_search: int = 16
    ray: bool = False

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UsageError(f"search backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.shard_rows < 1:
            raise UsageError(f"shard_rows must be at least 1, not {self.shard_rows}")
        if self.backend != "exact":
            _faiss()

    @property
    def exact(self) -> bool:
        return self.backend == "exact"

    def shards(self, n: int) -> list[tuple[int, int]]:
        return [(a, min(n, a + self.shard_rows)) for a in range(0, n, self.shard_rows)]

    def nearest(self, queries: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
        """For each query row, the distance to its nearest row of ``points`` (exact, or as the FAISS
        backend finds it; distances always recomputed in float64)."""
        return self.nearest_many([(queries, points)], distance)[0]

    def nearest_many(self, jobs: list[tuple[np.ndarray, np.ndarray]], distance: str) -> list[np.ndarray]:
        """:meth:`nearest` of every ``(queries, points)`` job: all their shards searched together (spread
        over threads, or over Ray tasks with ``ray``)."""
        work = [(j, a, b) for j, (q, pts) in enumerate(jobs) if len(q) for a, b in self.shards(len(pts))]
        out = [np.full(len(q), np.inf) for q, _ in jobs]
        if not work:
            return out
        if self.ray:
            found = self._on_ray(jobs, work, distance)
        else:
            from forensics.stats.ct.threads import parallel

            found = parallel(lambda w: search_shard(self, jobs[w[0]][0], jobs[w[0]][1][w[1]:w[2]], distance), work,
                             [len(jobs[j][0]) * (b - a) for j, a, b in work])
        for (j, _, _), dist in zip(work, found):
            np.minimum(out[j], dist, out=out[j])
        return out

    def _on_ray(self, jobs, work, distance) -> list[np.ndarray]:
        from forensics.distributed import require_ray

        ray = require_ray()
        task = ray.remote(_search_task)
        queries = {j: ray.put(np.ascontiguousarray(jobs[j][0])) for j in {w[0] for w in work}}
        futures = [task.remote(self, queries[j], ray.put(np.ascontiguousarray(jobs[j][1][a:b])), distance)
                   for j, a, b in work]
        return ray.get(futures)


def _search_task(search: ShardedSearch, queries: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
    return search_shard(search, queries, points, distance)


def search_shard(search: ShardedSearch, queries: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
    """One shard: the distance from each query to its nearest point of ``points``."""
    points = np.asarray(points)
    if search.exact:
        return Cell(points, distance).nearest(np.asarray(queries))
    return _faiss_nearest(search, np.asarray(queries, dtype=np.float64), points, distance)


def _faiss_index(search: ShardedSearch, points32: np.ndarray, metric: str) -> Any:
    faiss = _faiss()
    n, d = points32.shape
    inner = metric == "ip"
    kind = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
    if search.backend == "faiss-flat" or n < 2:
        index = faiss.IndexFlatIP(d) if inner else faiss.IndexFlatL2(d)
    elif search.backend == "faiss-ivf":
        # FAISS wants about 39 training points a list; its default asks for √n lists
        nlist = max(1, min(n, search.nlist or min(int(round(math.sqrt(n))), n // 39)))
        quantizer = faiss.IndexFlatIP(d) if inner else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, kind)
        index.cp.seed = 0
        index.cp.min_points_per_centroid = 1  # a small shard is trained all the same, without a warning
        index.train(points32)
        index.nprobe = max(1, min(nlist, search.nprobe))
    else:
        index = faiss.IndexHNSWFlat(d, search.hnsw_m, kind)
        index.hnsw.efSearch = search.ef_search
    index.add(points32)
    return index


def _faiss_nearest(search: ShardedSearch, q: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
    """Candidates from a FAISS index over the shard, distances recomputed in float64 (as the exact search
    recomputes them)."""
    faiss = _faiss()
    p32 = np.ascontiguousarray(points, dtype=np.float32)
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    faiss.omp_set_num_threads(1)  # the same candidates on any machine; threads come from the shards
    if distance == "cosine":  # 1 − |q·p|: the best of q and −q by inner product
        index = _faiss_index(search, p32, "ip")
        cands = np.concatenate([index.search(q32, 1)[1], index.search(-q32, 1)[1]], axis=1)
    else:
        cands = _faiss_index(search, p32, "l2").search(q32, 1)[1]
    out = np.full(len(q), np.inf)
    for c in cands.T:
        ok = c >= 0  # FAISS answers -1 where it found nothing (an IVF list left empty)
        p = np.asarray(points[c[ok]], dtype=np.float64)
        if distance == "euclidean":
            diff = q[ok] - p
            dist = np.sqrt((diff * diff).sum(axis=1))
        else:
            dist = 1.0 - np.abs((q[ok] * p).sum(axis=1))
        out[ok] = np.minimum(out[ok], dist)
    return out


_BUILDING: contextvars.ContextVar[ShardedSearch | None] = contextvars.ContextVar("search", default=None)


class SearchCT(FittedCT):
    """A fitted C_T whose nearest-neighbour searches go through ``self.search`` (a :class:`ShardedSearch`).
    Built by :func:`with_search` or :func:`fit_with_search`; otherwise :class:`FittedCT` unchanged."""

    def __init__(self, **fields: Any):
        super().__init__(**fields)
        self.search = _BUILDING.get() or ShardedSearch()

    def _nearest(self, members: list[np.ndarray], points: np.ndarray, busy: list[int]) -> list[np.ndarray]:
        jobs = [(points[members[i]], self._train[self._offsets[i]:self._offsets[i + 1]]) for i in busy]
        return self.search.nearest_many(jobs, self._distance)


def _building(search: ShardedSearch | str):
    search = ShardedSearch(backend=search) if isinstance(search, str) else search
    return _BUILDING.set(search)


def with_search(fitted: FittedCT, search: ShardedSearch | str) -> SearchCT:
    """``fitted`` (its cells, training points and held-out distances as they are) scoring queries through
    ``search`` (a :class:`ShardedSearch`, or a backend name)."""
    token = _building(search)
    try:
        return SearchCT.from_arrays(fitted.to_arrays())
    finally:
        _BUILDING.reset(token)


def fit_with_search(train: np.ndarray, test: np.ndarray, search: ShardedSearch | str, **params: Any) -> SearchCT:
    """:meth:`FittedCT.fit` with its held-out distances, and later its queries, searched by ``search``."""
    token = _building(search)
    try:
        return SearchCT.fit(train, test, **params)
    finally:
        _BUILDING.reset(token)
