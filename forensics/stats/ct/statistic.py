"""The C_T statistic itself: cells, nearest-training distances, Mann–Whitney U, Z and the aggregate.

:class:`FittedCT` holds everything that does not depend on the generated set — the projection, the
cells, each cell's training points and the test points' distances — so a caller fits it once per
encoder layer, caches it (:meth:`FittedCT.to_arrays`), and scores any number of generated batches with
:meth:`FittedCT.score`. :func:`ct_score` is the two steps in one. U is counted from the sorted test
distances (ranks), not from pairwise comparisons.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forensics.errors import StatisticError, UsageError

from .kmeans import assign, kmeans, kmeans_on
from .pca import normalise, pca, project
from .search import Cell, pack_layouts, unpack_layouts
from .threads import parallel
from .tiles import float64_on, resolve_device, rows_for, tiles_for

DISTANCES = ("euclidean", "cosine")


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
    if a.shape[1] == 0:
        raise StatisticError(f"{name} has points of no dimensions (shape {a.shape}); give embeddings with values")
    if a.dtype == np.float64 and max(float(a.max()), -float(a.min())) > float(np.finfo(np.float32).max):
        raise StatisticError(f"{name} holds values beyond ±{float(np.finfo(np.float32).max):.3g}, which k-means "
                             "computes in float32; scale the embeddings down first")
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


def default_tau(n: int, k: int, batch_size: int | None = None) -> float:
    """τ when none is given, for a batch of ``n`` generated points over ``k`` cells: Meehan et al.'s 20/n
    (a cell needs more than 20 points). A batch too small for its k cells to hold 20 points each on average
    (n < 20k) would count only its largest one or two cells that way; given the protocol's ``batch_size``
    m, such a batch counts a cell when it holds the share of the batch a batch of m must hold: 20/max(n, m)."""
    if batch_size is None or n >= 20 * k:
        return 20.0 / n
    return 20.0 / max(n, batch_size)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _fit_options(distance: Any, projection: Any, seed: Any) -> tuple[int | None, int]:
    """The checked projection (int or None) and seed; a UsageError names a bad option."""
    if distance not in DISTANCES:
        raise UsageError(f"distance must be one of {DISTANCES}, not {distance!r}")
    if projection is not None:
        if isinstance(projection, bool) or not isinstance(projection, (int, np.integer)) or projection < 1:
            raise UsageError(f"projection must be a positive integer (or None), not {projection!r}")
        projection = int(projection)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a whole number of at least 0, not {seed!r}")
    return projection, int(seed)


def _project_both(t: np.ndarray, p: np.ndarray, projection: int, device) -> tuple:
    """T and P_n projected by PCA fitted on T (``projection`` dimensions at most: a layer no wider is
    centred and rotated), with the mean and the axes."""
    l, dim = t.shape
    if dim > projection > l:
        raise UsageError(f"projection to {projection} dimensions needs at least {projection} training "
                         f"points, got {l}; project to fewer dimensions or give more training points")
    rows = rows_for(t, device)  # kept on a device for the projection that follows
    mean, components = pca(rows, min(projection, dim))
    return project(rows, mean, components), project(rows_for(p, device, keep=False), mean, components), \
        mean, components


def _kmeans_centres(t: np.ndarray, k: int, seed: int, device) -> np.ndarray:
    """The k-means centres of T, on ``device`` where it has float64."""
    if len(t) < k:
        raise StatisticError(f"k-means with k = {k} cells needs at least k = {k} training points, "
                             f"got {len(t)}; use fewer cells")
    return kmeans_on(t, k, seed, device) if float64_on(device) else kmeans(t, k, seed)


def _checked_counts(cells: np.ndarray, train_cells: np.ndarray, test_cells: np.ndarray) -> np.ndarray:
    """Training points per cell; every cell needs training and test points."""
    counts_t = np.bincount(np.searchsorted(cells, train_cells), minlength=len(cells))
    counts_p = np.bincount(np.searchsorted(cells, test_cells), minlength=len(cells))
    for c, nt, npn in zip(cells, counts_t, counts_p):
        if nt == 0:
            raise StatisticError(f"cell {int(c)} has no training points; use fewer cells (k) or other cells")
        if npn == 0:
            raise StatisticError(f"cell {int(c)} has no test points; use fewer cells (k) or a larger test set")
    return counts_t


# -- Mann–Whitney --------------------------------------------------------------------------------
def mann_whitney_u(generated: np.ndarray, test: np.ndarray) -> float:
    """U = #pairs (q, p) with q > p, ties ½ — scipy's ``mannwhitneyu(generated, test, alternative='less')
    .statistic``. Counted from ranks: each q's rank among the sorted test values (the number below it,
    plus half the number equal to it), which is the average-rank formula R_Q − m(m+1)/2 (what
    :meth:`FittedCT.score_subsets` sums per record)."""
    s = np.sort(np.asarray(test, dtype=np.float64))
    g = np.asarray(generated, dtype=np.float64)
    below = np.searchsorted(s, g, side="left")
    not_above = np.searchsorted(s, g, side="right")
    twice = int(below.sum()) * 2 + int((not_above - below).sum())  # exact in integers
    return twice / 2.0


def z_score(u: float, m: int, n: int) -> float:
    """Z of U for m generated and n test points: (U − (mn/2 − 0.5)) / sqrt(mn(m + n + 1)/12)."""
    return (u - (m * n / 2.0 - 0.5)) / math.sqrt(m * n * (m + n + 1) / 12.0)


# -- the fitted statistic ------------------------------------------------------------------------
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
                 test_cells: np.ndarray, device=None, layouts: list | None = None):
        self._k, self._distance, self._projection, self._seed, self._dim = k, distance, projection, seed, dim
        self._mean, self._components, self._centres = mean, components, centres
        self._cells = cells            # the cell ids, sorted
        self._train = train            # training points in the distance space, sorted by cell
        self._offsets = offsets        # cell i's training points are _train[offsets[i]:offsets[i + 1]]
        self._test_dist = test_dist
        self._test_cells = test_cells
        self._search: dict[int, Cell] = {}
        self._layouts = layouts        # each cell's stored search layout (from_arrays), or None: built
        self._outdated = False         # read from arrays without this version's layouts (from_arrays)
        self._device = device          # None: the CPU path; else the torch device the searches run on
        self._test_sorted: list[np.ndarray] | None = None  # each cell's test distances, sorted (built once)
        self._scoring_only = False     # :meth:`scoring_part`: no projection, centres or training points

    # read-only attributes
    k = property(lambda self: self._k, doc="Number of k-means cells asked for (ignored with given cells).")
    distance = property(lambda self: self._distance, doc='"euclidean" or "cosine" (1 − |cos|).')
    projection = property(lambda self: self._projection, doc="PCA dimensions, or None for no projection.")
    seed = property(lambda self: self._seed, doc="Seed of k-means.")
    dim = property(lambda self: self._dim, doc="Dimension of the input embeddings.")
    n_train = property(lambda self: int(self._offsets[-1]), doc="Number of training points.")
    n_test = property(lambda self: len(self._test_dist), doc="Number of test points.")
    device = property(lambda self: self._device, doc="The torch device the searches run on, or None (the CPU path).")

    @property
    def scoring_only(self) -> bool:
        """Whether this is a :meth:`scoring_part`: it scores records (:meth:`score_records`,
        :meth:`score_subsets`, :meth:`subset_values`) but cannot make them."""
        return self._scoring_only

    def scoring_part(self) -> FittedCT:
        """What scoring records needs of this fit, and nothing more: the cells, each cell's number of training
        points and the test points' cells and nearest-training distances (a few KB a layer, where the whole fit
        holds T's points and the cells' search layouts). Records scored against it give the values they give
        against the whole fit, to the last bit; it cannot make records (no projection, centres or training
        points): what a registry ships so that the records it keeps under a condition whose T and P_n were
        processed alike can be scored without fitting that side (:meth:`forensics.engine.Engine.scoring_side`)."""
        return self._scoring(k=self._k, distance=self._distance, projection=self._projection, seed=self._seed,
                             dim=self._dim, cells=self._cells, offsets=self._offsets, test_dist=self._test_dist,
                             test_cells=self._test_cells)

    @classmethod
    def _scoring(cls, **given: Any) -> FittedCT:
        part = cls(mean=None, components=None, centres=None, train=np.empty((0, 0)), **given)
        part._scoring_only = True
        return part

    def _makes_records(self) -> None:
        if self._scoring_only:
            raise UsageError("this C_T fit is the part that scores records only (cells and P_n's distances): fit "
                             "it on T and P_n to embed or score images")

    @property
    def arrays_outdated(self) -> bool:
        """Whether this fit was read (:meth:`from_arrays`) from arrays without the cells' search layouts,
        or with those of another version, so that every opening of them builds the cells afresh:
        :meth:`to_arrays` stores them (except for a cell searched in float64, which has none)."""
        return self._outdated

    def to(self, device) -> FittedCT:
        """This fit with its nearest-neighbour searches on a torch ``device`` (e.g. "cuda"; None for
        the CPU path). The arrays are shared, the results are the same (see :meth:`.search.Cell.nearest`)."""
        dev = resolve_device(device)
        if dev == self._device:
            return self
        other = copy.copy(self)
        other._device, other._search = dev, self._search  # the cells (and their device copies) are shared
        return other

    def _nearest(self, members: list[np.ndarray], points: np.ndarray, busy: list[int]) -> list[np.ndarray]:
        """For each cell index in ``busy``: the exact nearest-training distances of its rows of ``points``."""
        if self._device is not None:  # one device: the cells in turn, each search a few large products
            tiles = tiles_for(self._device)
            return [self._cell(i).nearest(points[members[i]], tiles) for i in busy]
        costs = [len(members[i]) * int(self._offsets[i + 1] - self._offsets[i]) for i in busy]
        return parallel(lambda i: self._cell(i).nearest(points[members[i]]), busy, costs)

    @classmethod
    def fit(cls, train, test, *, k: int = 10, distance: str = "euclidean", projection: int | None = None,
            seed: int = 0, train_cells=None, test_cells=None, device=None) -> FittedCT:
        """Fit C_T on training set ``train`` (l × d) and held-out set ``test`` (n × d).

        ``projection``: PCA dimensions fitted on ``train`` (a layer no wider than that is centred and
        rotated), or None. Cells: k-means with ``k`` cells on the (projected) training set, seeded by
        ``seed``, or cell ids given for both sets (``train_cells``, ``test_cells``), in which case
        :meth:`score` needs ``generated_cells`` too. ``device``: a torch device (e.g. "cuda") for the
        covariance and the nearest-neighbour searches, here and in :meth:`score`; None (default) for
        the CPU path. The values are the same either way."""
        projection, seed = _fit_options(distance, projection, seed)
        dev = resolve_device(device)
        given = train_cells is not None or test_cells is not None
        if given and (train_cells is None or test_cells is None):
            raise UsageError("give cell ids for both train and test, or for neither")
        if not given:
            k = _positive_int(k, "k")
        t, p = _as_matrix(train, "train"), _as_matrix(test, "test")
        if t.shape[1] != p.shape[1]:
            raise StatisticError(f"train has {t.shape[1]} dimensions but test has {p.shape[1]}; "
                                 f"embed both with the same encoder layer")
        dim = t.shape[1]
        mean = components = None
        if projection is not None:
            t, p, mean, components = _project_both(t, p, projection, dev)
        if distance == "cosine":
            t, p = normalise(t, "train"), normalise(p, "test")
        if given:
            centres = None
            tc, pc = _as_cells(train_cells, len(t), "train"), _as_cells(test_cells, len(p), "test")
            cells = np.unique(np.concatenate([tc, pc]))
        else:
            centres = _kmeans_centres(t, k, seed, dev)
            tc, pc = assign(t, centres), assign(p, centres)
            cells = np.arange(k)
        counts_t = _checked_counts(cells, tc, pc)
        order = np.argsort(tc, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts_t)]).astype(np.int64)
        fitted = cls(k=int(k) if isinstance(k, (int, np.integer)) else 0, distance=distance, projection=projection,
                     seed=seed, dim=dim, mean=mean, components=components, centres=centres, cells=cells,
                     train=np.ascontiguousarray(t[order]), offsets=offsets, test_dist=np.empty(len(p)),
                     test_cells=pc, device=dev)
        members = [np.flatnonzero(pc == c) for c in cells]
        found = fitted._nearest(members, p, list(range(len(cells))))
        for rows, dist in zip(members, found):
            fitted._test_dist[rows] = dist
        return fitted

    def _cell(self, i: int) -> Cell:
        """Cell ``i``'s search: restored from its stored layout where the fit was read with one, else
        built from its training points (once)."""
        if i not in self._search:
            a, b = self._offsets[i], self._offsets[i + 1]
            points = self._train[a:b]
            self._search[i] = Cell(points, self._distance) if self._layouts is None else \
                Cell.restore(points, self._distance, self._layouts[i])
        return self._search[i]

    @property
    def training_points(self) -> np.ndarray:
        """T in the statistic's space (projected, and unit-normalised for the cosine distance), grouped by
        cell; read-only."""
        self._makes_records()
        view = self._train.view()
        view.flags.writeable = False
        return view

    def transform(self, points) -> np.ndarray:
        """Rows of ``points`` (m × d, the layer's embeddings) in the statistic's space, as
        :attr:`training_points` are: projected, and unit-normalised for the cosine distance."""
        return self._prepare(points, "points")

    def _prepare(self, generated, name: str = "generated") -> np.ndarray:
        self._makes_records()
        q = _as_matrix(generated, name)
        if q.shape[1] != self._dim:
            raise StatisticError(f"{name} has {q.shape[1]} dimensions but the fit has {self._dim}; "
                                 f"embed it with the same encoder layer")
        if self._components is not None:
            q = project(rows_for(q, self._device, keep=False), self._mean, self._components)
        if self._distance == "cosine":
            q = normalise(q, name)
        return q

    def assign(self, points) -> np.ndarray:
        """The k-means cell of each row of ``points`` (m × d, in the input space: projected and
        normalised here as the fit's own points were). Only for fits with k-means cells."""
        if self._centres is None:
            raise UsageError("this C_T was fitted on given cells: it has no centres to assign to")
        return assign(self.transform(points), self._centres)

    def records(self, generated, *, generated_cells=None) -> np.ndarray:
        """What :meth:`score` needs of each generated row (m × d), as an (m, 2) float64 array: the row's
        cell id and its distance to the nearest training point in that cell. A row's record does not
        depend on the other rows, so :meth:`score_records` of any subset of the rows is exactly the
        :meth:`score` of that subset: a set's records are kept (compactly: 16 bytes a row) to score its
        sub-batches without embedding them again. ``generated_cells`` as :meth:`score` takes it."""
        q = self._prepare(generated)
        m = len(q)
        if generated_cells is not None:
            qc = _as_cells(generated_cells, m, "generated")
        elif self._centres is None:
            raise UsageError("this C_T was fitted on given cells: pass generated_cells too")
        else:
            qc = assign(q, self._centres)
        index = self._cell_index(qc)
        counts_q = np.bincount(index, minlength=len(self._cells))
        busy = [i for i in range(len(self._cells)) if counts_q[i] > 0]
        members = [np.flatnonzero(index == i) for i in range(len(self._cells))]
        out = np.empty((m, 2), dtype=np.float64)
        out[:, 0] = qc
        for i, dist in zip(busy, self._nearest(members, q, busy)):
            out[members[i], 1] = dist
        return out

    def _test_by_cell(self) -> list[np.ndarray]:
        """Each cell's test points' nearest-training distances, sorted: the fixed side of every
        Mann–Whitney U the scores take (computed once a fit, not once a score)."""
        if self._test_sorted is None:
            index = np.searchsorted(self._cells, self._test_cells)
            self._test_sorted = [np.sort(self._test_dist[index == i]) for i in range(len(self._cells))]
        return self._test_sorted

    def _cell_index(self, qc: np.ndarray) -> np.ndarray:
        """Each generated cell id's position among the fit's cells; an unknown cell is an error."""
        index = np.searchsorted(self._cells, qc)
        unknown = (index >= len(self._cells)) | (self._cells[np.minimum(index, len(self._cells) - 1)] != qc)
        if unknown.any():
            raise StatisticError(f"generated points fall in cell {int(qc[unknown][0])}, which has no training "
                                 f"or test points")
        return index

    def score(self, generated, *, tau: float | None = None, batch_size: int | None = None,
              generated_cells=None) -> CTResult:
        """C_T of the generated set (m × d) against this fit.

        ``tau``: a cell counts when more than tau·m generated points fall in it (default 20/m, i.e. at
        least 21; see :func:`default_tau` for ``batch_size``, a protocol's batch size). ``generated_cells``:
        cell ids of the generated rows, required when this C_T was fitted on given cells (otherwise the
        points go to the nearest k-means centre)."""
        _check_tau(tau)
        return self.score_records(self.records(generated, generated_cells=generated_cells), tau=tau,
                                  batch_size=batch_size)

    def score_records(self, records, *, tau: float | None = None, batch_size: int | None = None) -> CTResult:
        """C_T of the set whose rows' :meth:`records` are ``records`` (any subset of a set's records, in
        any order of cells: the value is that subset's :meth:`score`)."""
        return self.score_subsets(records, [None], tau=tau, batch_size=batch_size)[0]

    def score_subsets(self, records, subsets, *, tau: float | None = None,
                      batch_size: int | None = None) -> list[CTResult]:
        """:meth:`score_records` of each subset of ``records`` (row indices, or None for all of them), the
        same values to the last bit: a record's Mann–Whitney rank among its cell's test distances does not
        depend on the other records, so each is found once and a subset's U is the sum of its rows' ranks.
        This is what redrawing a set at m′ repeats (:func:`forensics.match.batchsize.references_at`)."""
        _check_tau(tau)
        if batch_size is not None:
            _positive_int(batch_size, "batch_size")
        index, twice = self._ranked(records)
        return [self._aggregate(index if rows is None else index[rows], twice if rows is None else twice[rows],
                                tau, batch_size) for rows in subsets]

    def subset_values(self, records, subsets, *, tau: float | None = None,
                      batch_size: int | None = None) -> np.ndarray:
        """The value of :meth:`score_subsets` for each subset, to the last bit, NaN where it is undefined (no
        cell counts), without the per-cell results: every subset's cell counts and rank sums at once, then
        each cell's Z added in the order :meth:`score_subsets` adds it. What resampling and redrawing a set
        repeat thousands of times (:meth:`forensics.engine.Engine.vectors_from_records`)."""
        _check_tau(tau)
        if batch_size is not None:
            _positive_int(batch_size, "batch_size")
        index, twice = self._ranked(records)
        rows = [np.arange(len(index)) if r is None else np.asarray(r) for r in subsets]
        if not rows:
            return np.empty(0)
        sizes = np.array([len(r) for r in rows])
        if (sizes == 0).any():
            raise StatisticError("C_T of no generated points: give at least one")
        k = len(self._cells)
        which = np.repeat(np.arange(len(rows)), sizes)
        flat = np.concatenate(rows)
        slots = which * k + index[flat]
        counts = np.bincount(slots, minlength=len(rows) * k).reshape(len(rows), k)
        twice_u = np.bincount(slots, weights=twice[flat], minlength=len(rows) * k).reshape(len(rows), k)
        taus = np.array([default_tau(int(m), k, batch_size) if tau is None else float(tau) for m in sizes])
        num, den = np.zeros(len(rows)), np.zeros(len(rows))
        for i, lp in enumerate(self._test_by_cell()):
            mq, n = counts[:, i], len(lp)
            counted = (mq > 0) & (mq / sizes > taus)
            if not counted.any():
                continue
            m_c = mq[counted]
            z = (twice_u[counted, i] / 2.0 - (m_c * n / 2.0 - 0.5)) / np.sqrt(m_c * n * (m_c + n + 1) / 12.0)
            w = n / self.n_test
            num[counted] += w * z
            den[counted] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den == 0.0, np.nan, num / np.where(den == 0.0, 1.0, den))

    def _ranked(self, records) -> tuple[np.ndarray, np.ndarray]:
        """Of each checked record: its cell's position among the fit's cells, and twice its Mann–Whitney
        rank among that cell's test distances (the number below it, twice, plus the number equal to it),
        an exact integer."""
        r = np.asarray(records)
        if r.ndim != 2 or r.shape[1] != 2 or r.dtype.kind != "f" or len(r) == 0:
            raise StatisticError(f"C_T records must be a non-empty (m, 2) float array of (cell id, distance), "
                                 f"got shape {r.shape} and dtype {r.dtype}")
        qc, dist = r[:, 0], r[:, 1].astype(np.float64)
        if not (np.isfinite(r).all() and (qc == np.round(qc)).all()):
            raise StatisticError("C_T records hold a cell id that is not an integer or a distance that is not "
                                 "finite; recompute them")
        index = self._cell_index(qc.astype(np.int64))
        twice = np.empty(len(r), dtype=np.int64)
        for i, lp in enumerate(self._test_by_cell()):
            rows = np.flatnonzero(index == i)
            below = np.searchsorted(lp, dist[rows], side="left")
            twice[rows] = below + np.searchsorted(lp, dist[rows], side="right")
        return index, twice

    def _aggregate(self, index: np.ndarray, twice: np.ndarray, tau: float | None,
                   batch_size: int | None) -> CTResult:
        """C_T of the records whose cell positions and twice-ranks (:meth:`_ranked`) are these."""
        m = len(index)
        if m == 0:
            raise StatisticError("C_T of no generated points: give at least one")
        tau = default_tau(m, len(self._cells), batch_size) if tau is None else float(tau)
        counts_q = np.bincount(index, minlength=len(self._cells))
        twice_u = np.bincount(index, weights=twice, minlength=len(self._cells))  # integer sums, exact in float64
        cells, num, den = [], 0.0, 0.0
        for i, (c, lp) in enumerate(zip(self._cells, self._test_by_cell())):
            n_train = int(self._offsets[i + 1] - self._offsets[i])
            mq = int(counts_q[i])
            if mq == 0:
                cells.append(CellResult(int(c), n_train, len(lp), 0, None, None, False))
                continue
            u = float(twice_u[i]) / 2.0
            z = z_score(u, mq, len(lp))
            counted = mq / m > tau
            if counted:
                w = len(lp) / self.n_test
                num += w * z
                den += w
            cells.append(CellResult(int(c), n_train, len(lp), mq, u, float(z), bool(counted)))
        if den == 0.0:
            largest = int(counts_q.max())
            raise StatisticError(f"no cell counts: the largest cell holds {largest} of the {m} generated points "
                                 f"but τ = {tau:.4g} demands more than {tau * m:.4g}; give more generated "
                                 f"points, fewer cells (k) or a smaller tau")
        return CTResult(value=float(num / den), cells=tuple(cells), tau=tau, counted_weight=float(den))

    # -- caching ---------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything :meth:`score` needs, as numpy arrays (for ``np.savez``); see :meth:`from_arrays`.
        With them, each cell's search layout (:func:`.search.pack_layouts`: its float32 score rows and
        its groups, made now where not yet), so that a fit read back searches at once. Of a
        :meth:`scoring_part`: what it holds, marked ``part: scoring``."""
        if self._scoring_only:
            return {"format": np.array(2), "part": np.array("scoring"), "k": np.array(self._k),
                    "distance": np.array(self._distance),
                    "projection": np.array(-1 if self._projection is None else self._projection),
                    "seed": np.array(self._seed), "dim": np.array(self._dim), "cells": self._cells,
                    "offsets": self._offsets, "test_dist": self._test_dist, "test_cells": self._test_cells}
        arrays = {"format": np.array(2), "k": np.array(self._k), "distance": np.array(self._distance),
                  "projection": np.array(-1 if self._projection is None else self._projection),
                  "seed": np.array(self._seed), "dim": np.array(self._dim), "cells": self._cells,
                  "train": self._train, "offsets": self._offsets, "test_dist": self._test_dist,
                  "test_cells": self._test_cells}
        if self._components is not None:
            arrays["mean"], arrays["components"] = self._mean, self._components
        if self._centres is not None:
            arrays["centres"] = self._centres
        arrays.update(pack_layouts([self._cell(i) for i in range(len(self._cells))]))
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> FittedCT:
        """Rebuild a fit from :meth:`to_arrays` output (e.g. an opened .npz), using the arrays in place
        (a mapped file's stay mapped). Arrays without the cells' search layouts (written before they
        were stored) are read too: the cells are then built on first use (:attr:`arrays_outdated`). Raises KeyError or
        ValueError on arrays from another format or layouts that do not fit the training points."""
        projection = int(arrays["projection"])

        def get(name: str) -> np.ndarray | None:
            return np.asarray(arrays[name], dtype=np.float64) if name in arrays else None

        if "format" not in arrays:  # format 1: per-point training cell ids, sorted by cell
            train_cells = np.asarray(arrays["train_cells"], dtype=np.int64)
            test_cells = np.asarray(arrays["test_cells"], dtype=np.int64)
            cells = np.unique(np.concatenate([train_cells, test_cells]))
            offsets = np.searchsorted(train_cells, np.r_[cells, cells[-1] + 1]).astype(np.int64)
            arrays = {**arrays, "cells": cells, "offsets": offsets}
        elif int(arrays["format"]) != 2:
            raise ValueError(f"C_T arrays of format {int(arrays['format'])}, expected 2")
        if "part" in arrays:
            return cls._scoring_from_arrays(arrays, projection)
        train, offsets = np.asarray(arrays["train"]), np.asarray(arrays["offsets"], dtype=np.int64)
        distance = str(arrays["distance"])
        if train.ndim != 2 or offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(train):
            raise ValueError("C_T arrays whose training points and cell offsets do not fit together")
        layouts = unpack_layouts(arrays, offsets, train.shape[1], distance)
        fitted = cls(k=int(arrays["k"]), distance=distance,
                     projection=None if projection < 0 else projection, seed=int(arrays["seed"]),
                     dim=int(arrays["dim"]), mean=get("mean"), components=get("components"),
                     centres=get("centres"), cells=np.asarray(arrays["cells"], dtype=np.int64),
                     train=train, offsets=offsets,
                     test_dist=np.asarray(arrays["test_dist"], dtype=np.float64),
                     test_cells=np.asarray(arrays["test_cells"], dtype=np.int64), layouts=layouts)
        fitted._outdated = layouts is None
        return fitted

    @classmethod
    def _scoring_from_arrays(cls, arrays, projection: int) -> FittedCT:
        """A :meth:`scoring_part` from its :meth:`to_arrays`, its cells, offsets and test points checked to fit."""
        if str(arrays["part"]) != "scoring":
            raise ValueError(f"C_T arrays of a part {str(arrays['part'])!r}, expected 'scoring'")
        cells = np.asarray(arrays["cells"], dtype=np.int64)
        offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        test_dist = np.asarray(arrays["test_dist"], dtype=np.float64)
        test_cells = np.asarray(arrays["test_cells"], dtype=np.int64)
        if (cells.ndim != 1 or offsets.shape != (len(cells) + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any()
                or test_dist.ndim != 1 or test_cells.shape != test_dist.shape or not np.isfinite(test_dist).all()
                or not np.isin(test_cells, cells).all()):
            raise ValueError("C_T scoring arrays whose cells, offsets and test points do not fit together")
        return cls._scoring(k=int(arrays["k"]), distance=str(arrays["distance"]),
                            projection=None if projection < 0 else projection, seed=int(arrays["seed"]),
                            dim=int(arrays["dim"]), cells=cells, offsets=offsets, test_dist=test_dist,
                            test_cells=test_cells)


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
    fitted = FittedCT.fit(train, test, k=k, distance=distance, projection=projection, seed=seed,
                                train_cells=train_cells, test_cells=test_cells, device=device)
    return fitted.score(generated, tau=tau, generated_cells=generated_cells)
