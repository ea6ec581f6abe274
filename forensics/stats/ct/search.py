"""Exact nearest-neighbour distances within a cell: float32 score tiles, float64 candidates.

A blocked float32 search (one matrix product per score tile, the squared norms folded into it,
bounded memory) finds, for each query, every training point whose float32 score lies within a proven
rounding bound of the best — per row the minimum and, after masking it, the second minimum, so a full
scan is needed only for the rare rows with several candidates; the exact distance to those few
candidates is then recomputed in float64 from the original coordinates. The reported distance is
therefore the float64 one, whatever float32 did, and wherever the tiles ran (:mod:`.tiles`: the host
or a torch device give the same candidates and the same distances).
"""

from __future__ import annotations

import numpy as np

from .tiles import _U32, HOST, ScoreTiles

_PAIRS = 1 << 22             # float64 elements gathered at once when recomputing exact distances


class Cell:
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
        self._device_rows: dict = {}   # torch device → the rows there

    def rows_on(self, device):
        """The score rows on a torch ``device``, sent there once."""
        rows = self._device_rows.get(device)
        if rows is None:
            import torch

            rows = self._device_rows[device] = torch.from_numpy(self.rows).to(device)
        return rows

    def nearest(self, queries: np.ndarray, tiles: ScoreTiles = HOST) -> np.ndarray:
        """Exact (float64) distance from each query row to its nearest training point in this cell, the
        score tiles computed by ``tiles`` (the host's, or a device's: the same distances). A cell that
        needs float64 scores (an extreme scale) is searched on the host."""
        out = np.full(len(queries), np.inf)
        if len(queries) == 0:
            return out
        if self.dtype != np.float32:
            tiles = HOST
        n_pts = len(self.points)
        step, chunk = tiles.plan(len(queries), n_pts)
        score = tiles.scorer(tiles.rows(self), step, chunk, self.dtype)
        with tiles.section():
            for s in range(0, len(queries), step):
                q = queries[s:s + step].astype(np.float64, copy=False)
                qf, err = self._queries(q)
                qt = tiles.queries(qf)
                best = np.full(len(q), np.inf)
                for a in range(0, n_pts, chunk):
                    z = min(n_pts, a + chunk)
                    rows, cols, best = self._tile(tiles, score(qt, a, z), err, best)
                    self._exact(q, rows, cols + a, out[s:s + step])
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

    def _limit(self, best: np.ndarray, err: np.ndarray) -> np.ndarray:
        limit = (best + 2.0 * err).astype(self.dtype)
        return np.nextafter(limit, self.dtype(np.inf))  # rounded up, never below

    def _tile(self, tiles: ScoreTiles, score, err: np.ndarray, best: np.ndarray):
        """Candidates in one score tile (a query block × a chunk of the training points, overwritten
        here); updates the running best. Every (query, point) pair whose score is within twice the
        error bound of the query's best is a candidate, so the true nearest point always is one.

        Per row the smallest score and its place are taken; that entry is then masked and the second
        smallest taken: a row whose second best is out of reach has one candidate, and only the (rare)
        other rows are scanned in full."""
        if self.distance == "cosine":  # −|q·p|
            score = tiles.negated_abs(score)
        idx, low = tiles.row_min(score)
        best = np.minimum(best, low.astype(np.float64))
        limit = self._limit(best, err)
        hit = low <= limit
        rows, cols = [np.flatnonzero(hit)], [idx[hit]]
        if score.shape[1] > 1 and hit.any():
            several = np.flatnonzero(hit & (tiles.second_min(score, idx) <= limit))
            if len(several):
                rr, cc = tiles.within(score, several, limit[several])
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


def nearest_distance(queries: np.ndarray, points: np.ndarray, distance: str) -> np.ndarray:
    """For each query row, the exact distance to its nearest row of ``points``
    (Euclidean, or 1 − |cos| with both sides' rows already of unit norm)."""
    if len(queries) == 0:
        return np.empty(0)
    return Cell(np.asarray(points), distance).nearest(np.asarray(queries))
