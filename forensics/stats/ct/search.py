"""Exact nearest-neighbour distances within a cell: float32 score tiles, float64 candidates.

A blocked float32 search (one matrix product per score tile, the squared norms folded into it,
bounded memory) finds, for each query, every training point whose float32 score lies within a proven
rounding bound of the best — per row the minimum and, after masking it, the second minimum, so a full
scan is needed only for the rare rows with several candidates; the exact distance to those few
candidates is then recomputed in float64 from the original coordinates. The reported distance is
therefore the float64 one, whatever float32 did, and wherever the tiles ran (:mod:`.tiles`: the host
or a torch device give the same candidates and the same distances).

On the host, a large cell (Euclidean distance) is first split into groups, each with a centre and a
radius (:class:`Groups`), and searched a group at a time (:meth:`Cell._pruned`): a group whose every
point is provably farther from a query than a distance already found (the triangle inequality, with
margins far above any rounding) is skipped for that query. The tiles, candidates and re-check are
those of the whole-cell search, so the distances are the same, bit for bit; only the work differs
(on clustered data, a fraction of the pairs; on data with no structure, about the same work).

What a cell builds (its score rows, and its groups) depends on its training points alone, so a fitted
reference side stores it (:meth:`Cell.layout`, :func:`pack_layouts`) and a cell opened from the file is
ready at once (:meth:`Cell.restore`, :func:`unpack_layouts`): nothing is recomputed, and the distances
are the same as those of a cell built afresh.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .tiles import _U32, HOST, ScoreTiles, _t, product

_PAIRS = 1 << 22             # float64 elements gathered at once when recomputing exact distances
_GROUP = 1024                # training points per group of a cell's pruned search (about)
_MAX_GROUPS = 64
_GROUP_SAMPLE = 48           # the groups' k-means runs on a sample of this many points per group
_GROUP_ITER = 3
_GROUP_DIMS = 16             # ... on this many coordinates
_SPLIT_WORK = 1 << 28        # ... for a search of at least this many pairs × (dimensions + 8)
_WORTH = 0.75                # ... only where it would visit at most this share of the pairs
_SLACK = 1e-9                # relative margin of the pruning bounds, far above float64 rounding
LAYOUT = 1                   # version of the stored cell layouts (pack_layouts); another one is rebuilt


class Cell:
    """One cell's training points, ready for the fast search and the float64 re-check.

    The fast search scores every (query, point) pair with one float32 matrix product: for Euclidean
    distance the points are stored as rows [−2p | |p|²] and the queries as [q | 1], so the product is
    |p|² − 2 q·p (the squared distance less |q|², the same for every point of a query); for the cosine
    distance rows of unit vectors, and the score is −|q·p|. Row i of the score rows is point
    ``order[i]`` (``order`` None: point i); a cell restored from a stored layout keeps its rows in its
    groups' order."""

    def __init__(self, points: np.ndarray, distance: str):
        self.points, self.distance = points, distance
        self.order: np.ndarray | None = None
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
        self._groups: Groups | None | bool = False  # made on the first host search (see _split)

    def rows_on(self, device):
        """The score rows on a torch ``device``, sent there once."""
        rows = self._device_rows.get(device)
        if rows is None:
            rows = self._device_rows[device] = _t(self.rows).to(device)  # (a stored layout's rows are read-only)
        return rows

    @classmethod
    def restore(cls, points: np.ndarray, distance: str, layout: Mapping[str, np.ndarray]) -> Cell:
        """The cell of ``points`` from its stored :meth:`layout` (checked by :func:`unpack_layouts`):
        the score rows and groups used as they are, nothing recomputed."""
        cell = cls.__new__(cls)
        cell.points, cell.distance = points, distance
        cell.shift = np.asarray(layout["shift"]) if distance == "euclidean" else None
        cell.reach = float(layout["reach"])
        cell.dtype = np.float32
        cell.rows, cell.order = layout["rows"], layout["order"]
        cell.rel = (2.0 * points.shape[1] + 16.0) * _U32
        cell._device_rows = {}
        sizes = layout["sizes"]
        cell._groups = Groups.restore(cell, sizes, layout["radii"], layout["centres"]) if len(sizes) else None
        return cell

    def layout(self) -> dict[str, np.ndarray] | None:
        """What :meth:`restore` needs, as arrays (the groups made now if not yet tried), or None for a cell
        searched in float64 (an extreme scale: rebuilt when opened). The rows are in the groups' order."""
        if self.dtype != np.float32:
            return None
        groups = self._split()
        dim = self.points.shape[1]
        if groups is not None:
            rows, order, sizes = groups.rows, groups.order, np.diff(groups.offsets)
            radii, centres = groups.radii, groups.centres
        else:
            rows = self.rows
            order = np.arange(len(rows)) if self.order is None else self.order
            sizes, radii, centres = np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, dim))
        shift = self.shift if self.shift is not None else np.zeros(dim)
        return {"shift": shift, "reach": np.array(self.reach), "rows": rows, "order": order,
                "sizes": sizes, "radii": radii, "centres": centres}

    def nearest(self, queries: np.ndarray, tiles: ScoreTiles = HOST) -> np.ndarray:
        """Exact (float64) distance from each query row to its nearest training point in this cell, the
        score tiles computed by ``tiles`` (the host's, or a device's: the same distances). A cell that
        needs float64 scores (an extreme scale) is searched on the host. On the host, a cell large
        enough to split is searched group by group, skipping the groups that are provably too far
        (:meth:`_pruned`); the distances are the same."""
        out = np.full(len(queries), np.inf)
        if len(queries) == 0:
            return out
        if self.dtype != np.float32:
            tiles = HOST
        if tiles is HOST and self._split(len(queries)) is not None:
            return self._pruned(queries, out)
        return self._brute(queries, out, tiles)

    def _brute(self, queries: np.ndarray, out: np.ndarray, tiles: ScoreTiles = HOST) -> np.ndarray:
        """Every query against every point of the cell, in score tiles."""
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
                    cols = cols + a if self.order is None else self.order[cols + a]
                    self._exact(q, rows, cols, out[s:s + step])
        return out

    # -- pruning: the cell split into groups, each with a centre and a radius ---------------------
    def _split(self, queries: int | None = None) -> Groups | None:
        """The cell's groups (made once, or stored), or None where splitting cannot pay: a small cell,
        the float64 search of an extreme scale, or points whose groups, tried on a sample, would not let
        the search skip enough (:func:`_groups`); and a search smaller than ``_SPLIT_WORK`` ((query,
        point) pairs × (dimensions + 8), about 10 ms of float32 products), for which trying the groups
        (about a millisecond), or searching them one by one, would cost more than it could save."""
        if queries is not None and queries * len(self.points) * (self.points.shape[1] + 8) < _SPLIT_WORK:
            return None
        if self._groups is False:
            self._groups = None
            n, dim = self.points.shape
            if self.distance == "euclidean" and self.dtype == np.float32 and n >= 2 * _GROUP:
                found = _groups(self.rows[:, :dim], max(2, min(_MAX_GROUPS, n // _GROUP)))
                if found is not None:
                    self._groups = Groups(self, *found)
        return self._groups

    def _pruned(self, queries: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`nearest` on the host, a group at a time. Each query first searches the group whose
        centre is nearest (the same float32 tiles, candidates and float64 re-check as the whole cell);
        the distance found is an upper bound on its answer. A group is then searched for a query only
        when its lower bound — the distance to the group's centre less the group's radius (the
        triangle inequality), lowered by a margin far above any rounding — does not exceed that upper
        bound, which tightens as groups are searched. A skipped group's points are all farther than a
        distance already found, so the minimum, and the float64 value returned, are those of the
        whole cell; the running float32 best is shared across groups exactly as across the chunks of
        the brute-force search, so the true nearest point is always a candidate."""
        groups = self._groups
        q = queries.astype(np.float64, copy=False)
        qf, err = self._queries(q)
        low = groups.lower_bounds(q)             # queries × groups
        if not np.isfinite(low).all():  # a non-finite query: no bound to trust
            return self._brute(queries, out)
        home = (low + groups.radii).argmin(axis=1)  # the nearest centre
        if _share(low, groups.radii, home, np.diff(groups.offsets)) > _WORTH:
            return self._brute(queries, out)          # these queries would visit nearly every group
        run = _Run(q, qf, err, out, self.dtype)
        with HOST.section():
            for g in range(groups.count):
                self._search_group(groups, g, np.flatnonzero(home == g), run)
            run.recheck(self)                         # the upper bounds for the other groups
            low[np.arange(len(q)), home] = np.inf    # searched
            bound = out * (1.0 + _SLACK)
            for g in np.argsort(low.min(axis=0), kind="stable"):
                self._search_group(groups, g, np.flatnonzero(low[:, g] <= bound), run)
            run.recheck(self)
        return out

    def _search_group(self, groups: Groups, g: int, who: np.ndarray, run: _Run) -> None:
        """Queries ``who`` against group ``g`` in float32 tiles: the run's best scores updated, its
        candidates kept for the float64 re-check (:meth:`_Run.recheck`, once per pass: a re-check
        has a fixed cost, and a pass only needs the distances of the passes before it)."""
        if len(who) == 0:
            return
        a, z = int(groups.offsets[g]), int(groups.offsets[g + 1])
        rows = groups.rows[a:z]
        step, _ = HOST.plan(len(who), z - a)
        for s in range(0, len(who), step):
            sub = who[s:s + step]
            tile = run.scratch(len(sub), z - a)
            run.mm(run.qf[sub], rows, tile)
            r, c, run.best[sub] = self._tile(HOST, tile, run.err[sub], run.best[sub])
            run.found.append((sub[r], groups.order[a + c]))

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


_LAYOUT_KEYS = ("shift", "reach", "rows", "order", "sizes", "radii", "centres")


def pack_layouts(cells: list[Cell]) -> dict[str, np.ndarray]:
    """The :meth:`Cell.layout` of consecutive cells (a fit's, in order) as a few arrays, each cell's part
    after the previous one's: ``layout_format``, ``layout_shift`` (cells × d), ``layout_reach`` (cells),
    ``layout_rows`` and ``layout_order`` (one row per training point), ``layout_groups`` (cells + 1
    offsets into the groups' arrays), ``layout_sizes``, ``layout_radii``, ``layout_centres`` (groups × d).
    Empty when a cell has no layout (one searched in float64: then every cell is rebuilt when opened)."""
    layouts = [cell.layout() for cell in cells]
    if not layouts or any(part is None for part in layouts):
        return {}
    out = {"layout_format": np.array(LAYOUT),
           "layout_groups": np.concatenate([[0], np.cumsum([len(part["sizes"]) for part in layouts])])}
    for key in _LAYOUT_KEYS:
        parts = [part[key] for part in layouts]
        out[f"layout_{key}"] = np.stack(parts) if key in ("shift", "reach") else np.concatenate(parts)
    out["layout_order"] = out["layout_order"].astype(np.int32 if len(out["layout_order"]) < 2 ** 31 else np.int64)
    out["layout_sizes"] = out["layout_sizes"].astype(np.int64)
    return out


def unpack_layouts(arrays: Mapping[str, np.ndarray], offsets: np.ndarray, dim: int,
                   distance: str) -> list[dict[str, np.ndarray]] | None:
    """Each cell's layout from :func:`pack_layouts` arrays (views, nothing copied), for cells whose
    training points are ``offsets[i]:offsets[i + 1]`` in ``dim`` dimensions; None when the arrays hold
    none or those of another version (the cells are then built afresh). Raises ValueError on arrays
    that do not fit together (a wrong shape or type, an order that is not a permutation of each cell's
    points, group sizes that do not add up)."""
    if "layout_format" not in arrays or int(arrays["layout_format"]) != LAYOUT:
        return None
    a = {key: np.asarray(arrays[f"layout_{key}"]) for key in (*_LAYOUT_KEYS, "groups")}
    cells, n = len(offsets) - 1, int(offsets[-1])
    width = dim + 1 if distance == "euclidean" else dim
    groups, sizes = a["groups"], a["sizes"]
    problems = [
        a["shift"].shape != (cells, dim) or a["shift"].dtype != np.float64,
        a["reach"].shape != (cells,) or a["reach"].dtype != np.float64,
        a["rows"].shape != (n, width) or a["rows"].dtype != np.float32,
        a["order"].shape != (n,) or a["order"].dtype.kind != "i",
        groups.shape != (cells + 1,) or groups.dtype.kind != "i",
        sizes.ndim != 1 or sizes.dtype.kind != "i",
    ]
    if any(problems):
        raise ValueError("the stored cell layouts do not fit the training points")
    g = len(sizes)
    if (a["radii"].shape != (g,) or a["radii"].dtype != np.float64 or a["centres"].shape != (g, dim)
            or a["centres"].dtype != np.float64 or groups[0] != 0 or groups[-1] != g or np.any(np.diff(groups) < 0)
            or np.any(sizes <= 0)):
        raise ValueError("the stored cell groups do not fit together")
    counts, split = np.diff(offsets), np.diff(groups) > 0
    total = np.concatenate([[0], np.cumsum(sizes)])
    if np.any((total[groups[1:]] - total[groups[:-1]] != counts) & split):
        raise ValueError("the stored cell groups do not hold each cell's points")
    if n:  # each cell's order is a permutation of its points
        local = a["order"]
        whole = local.astype(np.int64) + np.repeat(offsets[:-1], counts)
        if local.min() < 0 or np.any(local >= np.repeat(counts, counts)) or \
                np.any(np.bincount(whole, minlength=n) != 1):
            raise ValueError("the stored cell layouts do not order each cell's points")
    out = []
    for i in range(cells):
        s, e, gs, ge = int(offsets[i]), int(offsets[i + 1]), int(groups[i]), int(groups[i + 1])
        out.append({"shift": a["shift"][i], "reach": a["reach"][i], "rows": a["rows"][s:e], "order": a["order"][s:e],
                    "sizes": sizes[gs:ge], "radii": a["radii"][gs:ge], "centres": a["centres"][gs:ge]})
    return out


class _Run:
    """One pruned search's state across groups: the queries (float64, and in the float32 tiles'
    form with their score error bounds), the running float32 best score and float64 distance of each,
    the candidates awaiting their re-check, the product, and one scratch tile reused by every group
    (fresh memory costs its page faults again)."""

    def __init__(self, q: np.ndarray, qf: np.ndarray, err: np.ndarray, out: np.ndarray, dtype):
        self.q, self.qf, self.err, self.out = q, qf, err, out
        self.best = np.full(len(q), np.inf)
        self.mm = product()
        self._scratch = np.empty(0, dtype=dtype)
        self.found: list = []   # candidate (query, point) pairs not yet re-checked

    def recheck(self, cell: Cell) -> None:
        """The float64 distances of the candidates found since the last re-check, into ``out``."""
        if self.found:
            rows, cols = (np.concatenate(part) for part in zip(*self.found))
            self.found = []
            cell._exact(self.q, rows, cols, self.out)

    def scratch(self, rows: int, cols: int) -> np.ndarray:
        if len(self._scratch) < rows * cols:
            self._scratch = np.empty(rows * cols, dtype=self._scratch.dtype)
        return self._scratch[: rows * cols].reshape(rows, cols)


class Groups:
    """A cell's training points split into groups for the pruned search (:meth:`Cell._pruned`): a
    few Lloyd iterations of k-means on a sample (seeded; the grouping only affects the speed, never a
    distance), every point then in its nearest centre's group, all in float32 from the cell's score
    rows (:func:`_groups`). Per group: its centre (a float32 vector) and a radius that bounds the
    distance from the centre to each of its points; the cell's score rows reordered group by group,
    and where each row came from."""

    def __init__(self, cell: Cell, centres: np.ndarray, labels: np.ndarray, sq: np.ndarray):
        """``centres``, ``labels``, ``sq``: :func:`_groups` of the cell's rows."""
        self.dim = cell.points.shape[1]
        self.order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(centres))
        used = counts > 0
        counts, centres = counts[used], centres[used]
        self.count = len(counts)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.rows = cell.rows[self.order]
        # radii from the squared distances of the assignment (float32 |x|² − 2x·c + |c|², each within
        # (dim + 4)·u₃₂·(|x| + |c|)² of the exact value), halved back to the points' space, plus the
        # float32 rounding of the points (each within u₃₂·|p| of its float32 copy)
        # (|x| ≤ 2·reach, the cell's largest norm, for every x)
        norms = np.sqrt(np.einsum("ij,ij->i", centres, centres, dtype=np.float64))
        largest = np.maximum.reduceat(sq[self.order], self.offsets[:-1]).astype(np.float64)
        largest += (self.dim + 8) * _U32 * (2.0 * cell.reach + norms) ** 2
        self.radii = 0.5 * np.sqrt(np.maximum(largest, 0.0)) + 2.0 * _U32 * cell.reach
        self.centres = centres.astype(np.float64) * -0.5
        self.centre_norms = np.sqrt(np.einsum("ij,ij->i", self.centres, self.centres))
        self.shift, self.reach = cell.shift, cell.reach

    @classmethod
    def restore(cls, cell: Cell, sizes: np.ndarray, radii: np.ndarray, centres: np.ndarray) -> Groups:
        """The groups of a restored cell (:meth:`Cell.restore`, whose rows are already in the groups'
        order) from their stored sizes, radii and (halved, float64) centres."""
        groups = cls.__new__(cls)
        groups.dim = cell.points.shape[1]
        groups.order, groups.rows = cell.order, cell.rows
        groups.count = len(sizes)
        groups.offsets = np.concatenate([[0], np.cumsum(sizes)])
        groups.radii, groups.centres = radii, centres
        groups.centre_norms = np.sqrt(np.einsum("ij,ij->i", centres, centres))
        groups.shift, groups.reach = cell.shift, cell.reach
        return groups

    def lower_bounds(self, q: np.ndarray) -> np.ndarray:
        """queries × groups: a lower bound on the distance from each query (float64 rows) to every
        point of each group, |q − centre| − radius, each term's rounding (a dot product's, at most
        (dim + 4)·u·(|q| + |centre|)² on the squared distance, and the centring's) more than covered
        by the margins; NaN for a query with a non-finite coordinate."""
        with np.errstate(invalid="ignore", over="ignore"):
            return self._lower_bounds(q)

    def _lower_bounds(self, q: np.ndarray) -> np.ndarray:
        qc = q - self.shift
        qn = np.sqrt(np.einsum("ij,ij->i", qc, qc))
        sq = (qn * qn)[:, None] + (self.centre_norms * self.centre_norms)[None, :] - 2.0 * (qc @ self.centres.T)
        scale = qn[:, None] + self.centre_norms[None, :]
        sq -= (self.dim + 8) * 2.0 ** -51 * scale * scale
        low = np.sqrt(np.maximum(sq, 0.0)) - self.radii[None, :]
        return low - _SLACK * (qn[:, None] + self.reach + scale + self.radii[None, :])


def _groups(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Centres (count × dim, float32), each row's group and its float32 squared distance to that
    centre, for float32 rows ``x`` (any row stride): seeded k-means++ and a few Lloyd iterations on a
    regular sample of the rows and on its ``_GROUP_DIMS`` coordinates of largest variance (cheap: the
    grouping only has to be good, not exact), the centres then the means of the sample's groups in
    every coordinate, and every row in its nearest centre's group. None, before the rows are
    assigned, when the sample's own groups would leave more than ``_WORTH`` of the pairs to search
    (:func:`_share`): on points without structure the whole-cell search is faster."""
    rng = np.random.default_rng(0)
    n, size = len(x), _GROUP_SAMPLE * count
    full = np.ascontiguousarray(x[::max(1, n // size)])  # every so many rows: spread over the cell
    s = full
    if x.shape[1] > _GROUP_DIMS:
        s = np.ascontiguousarray(full[:, np.sort(np.argsort(-full.var(axis=0), kind="stable")[:_GROUP_DIMS])])
    s_sq = np.einsum("ij,ij->i", s, s)
    centres = np.empty((count, s.shape[1]), dtype=np.float32)
    centres[0] = s[rng.integers(len(s))]
    near = np.einsum("ij,ij->i", s - centres[0], s - centres[0])
    for j in range(1, count):  # k-means++: each next centre drawn in proportion to the squared distance
        total = float(near.sum())
        pick = int(rng.integers(len(s))) if not total > 0 else min(len(s) - 1, int(np.searchsorted(
            np.cumsum(near, dtype=np.float64), rng.random() * total)))
        centres[j] = s[pick]
        np.minimum(near, np.einsum("ij,ij->i", s - centres[j], s - centres[j]), out=near)
    member = np.zeros((count, len(s)), dtype=np.float32)
    for i in range(_GROUP_ITER + 1):
        labels = _nearest_centre(s, s_sq, centres)[0]
        member[:] = 0.0
        member[labels, np.arange(len(s))] = 1.0
        counts = np.bincount(labels, minlength=count)
        filled = counts > 0
        if i == _GROUP_ITER:  # the sample's groups, now in every coordinate
            s, centres = full, np.zeros((count, full.shape[1]), dtype=np.float32)
        centres[filled] = (member @ s)[filled] / counts[filled, None]
    near, sq = _nearest_centre(full, np.einsum("ij,ij->i", full, full), centres, every=True)
    dist = np.sqrt(np.maximum(sq, 0.0))
    radii = np.zeros(count, dtype=np.float32)
    np.maximum.at(radii, near, dist[np.arange(len(full)), near])
    if _share(dist - radii, radii, near, np.bincount(near, minlength=count)) > _WORTH:
        return None
    labels = np.empty(n, dtype=np.int64)
    sq = np.empty(n, dtype=np.float32)
    step = max(1, (1 << 20) // max(1, count))
    for a in range(0, n, step):
        block = x[a:a + step]
        labels[a:a + step], sq[a:a + step] = _nearest_centre(block, np.einsum("ij,ij->i", block, block), centres)
    return centres, labels, sq


def _nearest_centre(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray,
                    every: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centre and the float32 squared distance to it (|x|² − 2x·c + |c|²), or
    with ``every`` the squared distances to every centre."""
    d = x @ centres.T
    d *= -2.0
    d += x_sq[:, None]
    d += np.einsum("ij,ij->i", centres, centres)[None, :]
    near = d.argmin(axis=1)
    return near, (d if every else d[np.arange(len(d)), near])


def _share(low: np.ndarray, radii: np.ndarray, home: np.ndarray, sizes: np.ndarray) -> float:
    """The share of the (query, point) pairs a pruned search would still visit, foreseen from lower
    bounds ``low`` (queries × groups) with, for each query, the loosest upper bound at hand: the
    distance to its home group's centre plus that group's radius. Only a forecast, for choosing
    between the pruned and the whole-cell search; it never decides a distance."""
    rows = np.arange(len(low))
    upper = low[rows, home] + 2.0 * radii[home]
    visit = low <= upper[:, None]
    return float((visit @ sizes.astype(np.float64)).sum() / max(1.0, float(len(low)) * float(sizes.sum())))
