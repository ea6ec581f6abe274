"""Where C_T's arithmetic runs: the host (numpy and the CPU BLAS, on worker threads) or a torch device.

The algorithms (PCA, projection, the nearest-neighbour search) are written once, over two kinds of
tiles that both places provide:

- **row tiles** of a host matrix (:class:`HostRows`, :class:`DeviceRows`): blocks of rows converted to
  float64 a block at a time, for the column sums and the covariance of PCA and for the projection;
- **score tiles** of the search (:class:`HostTiles`, :class:`DeviceTiles`): a block of queries against
  a chunk of a cell's training points, scored by one float32 matrix product and reduced per row (the
  minimum, the second minimum, every score under a bound).

The host computes each tile with numpy and the CPU BLAS, one tile per worker thread
(:mod:`.threads`); a device computes it with torch, and only small results (per-row minima, candidate
pairs, d × d matrices) come back. Both give IEEE float32 scores and float64 sums, so the search finds
the same candidates anywhere, and its float64 re-check (on the host) the same distances.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from .threads import one_thread, optional_torch, parallel

BLOCK = 4096                 # query rows per block of the host search
_TILE = 1 << 24              # float32 scores in one host score tile (64 MiB)
_CACHE = 1 << 20             # host scores per query block that should stay in cache (4 MiB of float32)
DEVICE_BLOCK = 16384         # query rows per block of the search on a torch device (a GPU)
_DEVICE_TILE = 1 << 26       # float32 scores in one device score tile (256 MiB)
_ROWS = 1 << 20              # float64 elements per host row tile (converted at a time)
PROJECT_ROWS = 256           # rows per block of the host projection (every block this high)
_GROUPS = 4                  # row groups of the covariance (each its own d × d float64 accumulator)
_ACCUMULATORS = 1 << 26      # bytes all the groups' accumulators may take together
_DEVICE_KEEP = 1 << 31       # bytes of a matrix kept on the device between passes (else sent again)
_U32 = 2.0 ** -24            # unit roundoff of float32


# -- devices -------------------------------------------------------------------------------------
def _t(a: np.ndarray):
    """A torch view of a numpy array (read-only arrays from an .npz are only ever read: torch's
    warning about them is silenced, which costs more than the view, so only for them)."""
    if a.flags.writeable:
        return optional_torch().from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return optional_torch().from_numpy(a)


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
    """``None`` (the host path: numpy and the CPU BLAS, on worker threads) or the torch device the
    statistic runs on. A device whose float32 products are not IEEE (TF32 or bfloat16 allowed) gives a
    warning and ``None``: the results would still be exact, but only by the host path."""
    if device is None:
        return None
    from forensics.encode.devices import torch_device

    torch = optional_torch()
    dev = torch_device(device)
    if not _ieee_float32(torch, dev):
        warnings.warn(f"float32 matrix products on {dev} may use TF32 or bfloat16 "
                      f"(torch.set_float32_matmul_precision); C_T's search runs on the CPU instead", stacklevel=3)
        return None
    return dev


def float64_on(device) -> bool:
    """Whether PCA, projection and k-means run on ``device``: a torch device with float64 (not MPS)."""
    return device is not None and device.type != "mps"


def product() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    """``f(a, b, out)``: out = a @ b.T on the host, by numpy's BLAS. Always IEEE float32 (the search's error
    bound assumes it; torch may be allowed to compute float32 products in bfloat16), and, measured on
    this project's machine (AMD EPYC, one thread), faster than torch's MKL on the search's tiles: 92–96
    against 44–88 GFLOP/s. Any order of summation is within the bound, so the BLAS never changes a
    distance."""
    return numpy_product


def numpy_product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite query's scores: handled by the search
        np.matmul(a, b.T, out=out)


# -- row tiles (PCA and projection) ----------------------------------------------------------------
def row_blocks(n: int, width: int, budget: int | None = None) -> Iterator[tuple[int, int]]:
    """Consecutive (start, end) row ranges of at most ``budget`` (default ``_ROWS``) elements each."""
    step = max(1, (_ROWS if budget is None else budget) // max(1, width))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def row_groups(n: int, d: int) -> list[tuple[int, int]]:
    """A fixed split of n rows into contiguous groups for the covariance: each group sums into its own
    d × d accumulator, on whichever worker thread, and the groups are then added in order — so the
    result does not depend on the number of threads. At most _GROUPS groups, fewer when the
    accumulators would pass _ACCUMULATORS bytes or there are few rows."""
    rows = max(1, _ROWS // max(1, d))
    count = max(1, min(_GROUPS, -(-n // rows), _ACCUMULATORS // max(1, 8 * d * d)))
    edges = np.linspace(0, n, count + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def centred_block(x: np.ndarray, s: int, e: int, mean: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Rows s:e of ``x`` less ``mean``, in float64, written into (the head of) ``buf``: the rows converted
    (exactly) and then the mean subtracted in place, the same values as one mixed-type subtraction at
    well under its cost."""
    out = buf[: e - s]
    if x.dtype == np.float64:
        np.subtract(x[s:e], mean, out=out)
    else:
        np.copyto(out, x[s:e], casting="unsafe")
        np.subtract(out, mean, out=out)
    return out


class RowTiles(Protocol):
    """What PCA and the projection (:mod:`.pca`) need of a matrix's rows where they run."""

    n: int
    d: int

    def put(self, a: np.ndarray) -> Any: ...  # a host array where the tiles are computed
    def host(self, a) -> np.ndarray: ...  # and back
    def column_sums(self) -> list: ...  # float64 column sums of consecutive row groups
    def grams(self, mean) -> list: ...  # float64 Σ (x − mean)ᵀ(x − mean) of the same groups
    def eigenvectors(self, sym) -> np.ndarray: ...
    def project(self, mean, components) -> np.ndarray: ...  # (x − mean) @ components, float64, on the host


class HostRows:
    """The rows of a host matrix, in row tiles on the host's worker threads.

    The covariance runs over :func:`row_groups` (one float64 accumulator each, symmetric rank-k updates
    by BLAS syrk), the projection over blocks of ``PROJECT_ROWS`` rows; each tile is one single-threaded
    job of :func:`.threads.parallel`, converted to float64 only while it is worked on."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.n, self.d = x.shape

    def put(self, a: np.ndarray) -> np.ndarray:
        return a

    def host(self, a) -> np.ndarray:
        return a

    def column_sums(self) -> list:
        """Per row group, the float64 sum of its rows."""
        x = self.x
        return parallel(lambda g: x[g[0]:g[1]].sum(axis=0, dtype=np.float64), row_groups(self.n, self.d))

    def grams(self, mean: np.ndarray) -> list:
        """Per row group, Σ (x − mean)ᵀ(x − mean) over its rows, in float64."""
        x, d = self.x, self.d

        def accumulate(group: tuple[int, int]) -> np.ndarray:
            cov = np.zeros((d, d))
            buf = np.empty((max(1, min(group[1] - group[0], _ROWS // d)), d))
            for s, e in row_blocks(group[1] - group[0], d):
                b = centred_block(x, group[0] + s, group[0] + e, mean, buf)
                cov += b.T @ b  # numpy sees one operand as the other's transpose: a symmetric rank-k update
            return cov

        return parallel(accumulate, row_groups(self.n, self.d))

    def eigenvectors(self, sym: np.ndarray) -> np.ndarray:
        """Eigenvectors (columns, ascending eigenvalues) of a symmetric matrix, on one thread: a d × d
        problem gains nothing from threads but their synchronisation. A full (divide and conquer)
        solver: a subset one (MRRR) slows down badly on the clustered eigenvalues of embeddings'
        noise floors."""
        torch = optional_torch()
        if torch is None:  # pragma: no cover
            return np.linalg.eigh(sym)[1]
        with one_thread():
            return torch.linalg.eigh(torch.from_numpy(sym)).eigenvectors.numpy()

    def project(self, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
        """(x − mean) @ components in float64, by numpy's BLAS, in blocks of exactly ``PROJECT_ROWS`` rows
        (the last one padded with zero rows), so that every row is computed by the same call shape and
        its projection depends on its own values alone: not on the other rows, their number, or its
        place among them (a BLAS takes other paths, with other roundings, for other shapes). The
        blocks run on worker threads, each thread's in one reused buffer (fresh memory for every
        block costs its page faults again)."""
        x, d = self.x, self.d
        out = np.empty((self.n, components.shape[1]))
        h = PROJECT_ROWS

        def job(s: int) -> None:
            e = min(self.n, s + h)
            buf = _scratch("project", (h, d), np.float64)
            centred_block(x, s, e, mean, buf)
            if e - s == h:
                np.matmul(buf, components, out=out[s:e])
            else:
                buf[e - s:] = 0.0
                part = _scratch("projected", (h, components.shape[1]), np.float64)
                np.matmul(buf, components, out=part)
                out[s:e] = part[: e - s]

        parallel(job, list(range(0, self.n, h)))
        return out


_LOCAL = threading.local()


def _scratch(name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A C-contiguous buffer of ``shape`` for the calling thread, in memory kept for its next use (the
    largest asked for so far; its contents undefined)."""
    size = shape[0] * shape[1]
    flat = getattr(_LOCAL, name, None)
    if flat is None or flat.size < size or flat.dtype != dtype:
        flat = np.zeros(size, dtype=dtype)
        setattr(_LOCAL, name, flat)
    return flat[:size].reshape(shape)


class DeviceRows:
    """The rows of a host matrix on a torch device, a block at a time (at most ``_DEVICE_TILE // 2``
    float64 elements once converted): with ``keep``, sent once and kept there for later passes when
    the matrix fits in ``_DEVICE_KEEP`` bytes; otherwise sent again for each pass. The tiles run in
    turn (a device runs each one across all its cores)."""

    def __init__(self, x: np.ndarray, device, keep: bool = True):
        self.x, self.device = x, device
        self.n, self.d = x.shape
        self._blocks = list(row_blocks(self.n, self.d, budget=_DEVICE_TILE // 2))
        self._kept: list | None = [] if keep and x.nbytes <= _DEVICE_KEEP else None

    def __iter__(self):
        if self._kept is not None and len(self._kept) == len(self._blocks):  # a whole pass was kept
            yield from self._kept
            return
        torch = optional_torch()
        kept = []
        for s, e in self._blocks:
            block = torch.from_numpy(np.ascontiguousarray(self.x[s:e])).to(self.device)
            if self._kept is not None:
                kept.append((s, e, block))
            yield s, e, block
        if self._kept is not None:  # only a pass that ran to the end is kept (never a partial one)
            self._kept = kept

    def put(self, a: np.ndarray):
        return optional_torch().from_numpy(a).to(self.device)

    def host(self, a) -> np.ndarray:
        return a.cpu().numpy()

    def column_sums(self) -> list:
        torch = optional_torch()
        total = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        for _, _, block in self:
            total += block.sum(dim=0, dtype=torch.float64)
        return [total]

    def grams(self, mean) -> list:
        torch = optional_torch()
        cov = torch.zeros((self.d, self.d), dtype=torch.float64, device=self.device)
        for _, _, block in self:
            centred = block.to(torch.float64) - mean
            cov.addmm_(centred.T, centred)
        return [cov]

    def eigenvectors(self, sym) -> np.ndarray:
        return optional_torch().linalg.eigh(sym).eigenvectors.cpu().numpy()

    def project(self, mean, components) -> np.ndarray:
        """(x − mean) @ components in float64, on the device, a block at a time."""
        torch = optional_torch()
        out = np.empty((self.n, components.shape[1]))
        centre, basis = self.put(mean), self.put(components)
        for s, e, block in self:
            out[s:e] = ((block.to(torch.float64) - centre) @ basis).cpu().numpy()
        return out


# -- score tiles (the nearest-neighbour search) ----------------------------------------------------
class ScoreTiles(Protocol):
    """What the search (:meth:`.search.Cell.nearest`) needs of a place to compute its score tiles. The
    per-row results and candidate pairs it returns are host numpy arrays."""

    def section(self) -> Any: ...  # a context manager around one cell's search
    def plan(self, n_queries: int, n_points: int) -> tuple[int, int]: ...  # (query rows, training chunk)
    def rows(self, cell) -> Any: ...  # the cell's score rows, where the tiles are computed
    def scorer(self, rows, step: int, chunk: int, dtype) -> Callable[[Any, int, int], Any]: ...
    def queries(self, qf: np.ndarray) -> Any: ...
    def negated_abs(self, score) -> Any: ...
    def row_min(self, score) -> tuple[np.ndarray, np.ndarray]: ...
    def second_min(self, score, idx: np.ndarray) -> np.ndarray: ...
    def within(self, score, rows: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class HostTiles:
    """Score tiles on the host: query blocks small enough that a block's scores stay in cache between
    the product and the selection (at most ``BLOCK`` rows), training chunks that keep a tile within
    ``_TILE`` scores, one reusable scratch tile per search, everything on the calling thread alone."""

    def section(self):
        return one_thread()

    def plan(self, n_queries: int, n_points: int) -> tuple[int, int]:
        step = int(min(BLOCK, n_queries, max(64, _CACHE // max(1, n_points))))
        return step, max(1, min(n_points, _TILE // step))

    def rows(self, cell) -> np.ndarray:
        return cell.rows

    def scorer(self, rows: np.ndarray, step: int, chunk: int, dtype) -> Callable[[np.ndarray, int, int], np.ndarray]:
        """``f(queries, a, z)``: the tile queries @ rows[a:z].T, written into one scratch tile."""
        scratch = np.empty(step * chunk, dtype=dtype)
        mm = product()

        def score(q: np.ndarray, a: int, z: int) -> np.ndarray:
            out = scratch[: len(q) * (z - a)].reshape(len(q), z - a)
            mm(q, rows[a:z], out)
            return out

        return score

    def queries(self, qf: np.ndarray) -> np.ndarray:
        return qf

    def negated_abs(self, score: np.ndarray) -> np.ndarray:
        np.abs(score, out=score)
        np.negative(score, out=score)
        return score

    def row_min(self, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the place and value of the smallest score."""
        idx = score.argmin(axis=1)
        return idx, score[np.arange(len(score)), idx]

    def second_min(self, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Per row, the smallest score once the entry at ``idx`` is masked (the tile is overwritten)."""
        score[np.arange(len(score)), idx] = np.inf
        return score.min(axis=1)

    def within(self, score: np.ndarray, rows: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, j) with score[rows[i], j] <= limit[i]."""
        return np.nonzero(score[rows] <= limit[:, None])


class DeviceTiles:
    """Score tiles on a torch device: ``DEVICE_BLOCK`` queries by up to ``_DEVICE_TILE`` scores, the
    cell's rows kept there, only per-row results and candidate pairs coming back to the host."""

    def __init__(self, device):
        self.device = device

    def section(self):
        return nullcontext()

    def plan(self, n_queries: int, n_points: int) -> tuple[int, int]:
        step = int(min(n_queries, DEVICE_BLOCK))
        return step, max(1, min(n_points, _DEVICE_TILE // step))

    def rows(self, cell):
        return cell.rows_on(self.device)

    def scorer(self, rows, step: int, chunk: int, dtype):
        return lambda q, a, z: q @ rows[a:z].T

    def queries(self, qf: np.ndarray):
        return optional_torch().from_numpy(qf).to(self.device)

    def negated_abs(self, score):
        return score.abs_().neg_()

    def row_min(self, score):
        low, idx = score.min(dim=1)
        return idx.cpu().numpy(), low.cpu().numpy()

    def second_min(self, score, idx: np.ndarray) -> np.ndarray:
        torch = optional_torch()
        every = torch.arange(len(score), device=self.device)
        score[every, torch.from_numpy(idx).to(self.device)] = float("inf")
        return score.min(dim=1).values.cpu().numpy()

    def within(self, score, rows: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = optional_torch()
        pick = torch.from_numpy(rows).to(self.device)
        bound = torch.from_numpy(limit).to(self.device)
        rr, cc = torch.nonzero(score[pick] <= bound[:, None], as_tuple=True)
        return rr.cpu().numpy(), cc.cpu().numpy()


HOST = HostTiles()


def tiles_for(device) -> ScoreTiles:
    """The score tiles of ``device`` (None: the host's)."""
    return HOST if device is None else DeviceTiles(device)


def rows_for(x: np.ndarray, device, keep: bool = True) -> RowTiles:
    """The row tiles of host matrix ``x`` where PCA and projection run: on ``device`` if it has float64
    (:func:`float64_on`), else on the host."""
    return DeviceRows(x, device, keep) if float64_on(device) else HostRows(x)
