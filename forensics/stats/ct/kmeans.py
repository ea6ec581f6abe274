"""Seeded k-means: greedy k-means++ and Lloyd iterations in float32, restarted from several seeds.

The restarts run on a sample of T (all of T when it is small); the lowest-inertia run is refined by
Lloyd on all of T; the centres are then the float64 means of the points nearest to them, and every set
is assigned to the nearest centre by one float64 rule (:func:`assign`), the same for T, P_n and Q_m.

The squared distances to the centres are one routine (:func:`_sq_dist`) for both; the rest has two
implementations, each replaying the same random numbers (:func:`_schedule`):

- :func:`kmeans`, the host's: each restart one single-threaded job (:func:`.threads.parallel`), its
  random numbers drawn as it goes, exactly as running the restarts one after the other would draw them;
- :func:`kmeans_on`, a torch device's: the restarts batched into R × n × k products, the draws made
  ahead. Its cells are the host's unless float32 rounding in another order breaks a near-tie.

They stay two routines because one batched routine would change the host's bits: numpy's reductions
over a stacked axis, float32 products of another shape and a sort's order among tied distances (where
an empty cluster restarts) are not those of one run at a time; and when the points run out of distinct
values, the host draws a centre as an integer mid-run, which a batch drawn ahead cannot do (the device
then hands the work to the host).
"""

from __future__ import annotations

import math

import numpy as np

from .threads import one_thread, optional_torch, parallel
from .tiles import _U32, row_blocks

_KMEANS_INIT = 10            # k-means restarts (like scikit-learn's n_init)
_KMEANS_SAMPLE = 8192        # restarts run on a sample of this many training points
_KMEANS_ITER = 300
_KMEANS_TOL = 1e-4           # stop when the centres move less than tol × mean feature variance


def _trials(k: int) -> int:
    """Candidates per centre of greedy k-means++."""
    return 2 + int(math.log(k))


def _sample(rng: np.random.Generator, n: int) -> np.ndarray | None:
    """Sorted indices of the restarts' sample of n training points, or None to use them all."""
    return np.sort(rng.choice(n, _KMEANS_SAMPLE, replace=False)) if n > _KMEANS_SAMPLE else None


def _schedule(rng: np.random.Generator, size: int, k: int) -> list[tuple[dict, int, np.ndarray]]:
    """Per restart, run one after the other from ``rng`` (left untouched): the generator state it starts
    from, its first centre's index among ``size`` points and its uniforms (k − 1 × trials).

    A run's draws do not depend on the data — one integer, then ``2 + ln k`` uniforms per further
    centre — except when the points run out of distinct values (a centre is then drawn as an integer
    instead); the schedule holds for every run before such a one."""
    trials = _trials(k)
    probe = np.random.Generator(type(rng.bit_generator)())
    probe.bit_generator.state = rng.bit_generator.state
    runs = []
    for _ in range(_KMEANS_INIT):
        state = probe.bit_generator.state
        first = int(probe.integers(size))
        uniforms = np.empty((max(0, k - 1), trials))
        for j in range(1, k):
            uniforms[j - 1] = probe.random(trials)
        runs.append((state, first, uniforms))
    return runs


def _sq_dist(x, x_sq, centres):
    """Squared float32 distances from the rows of ``x`` (|x|² given) to centres, by one product:
    n × k for k × d centres (the host's numpy arrays), R × n × k for a batch of R centre sets (a
    device's torch tensors). Clamped at 0, where rounding can take them below."""
    host = isinstance(x, np.ndarray)
    c_sq = np.einsum("ij,ij->i", centres, centres) if host else (centres * centres).sum(dim=-1)
    d = x @ centres.swapaxes(-1, -2)
    d *= -2.0
    d += x_sq[..., :, None]
    d += c_sq[..., None, :]
    return np.maximum(d, 0.0, out=d) if host else d.clamp_(min=0.0)


# -- the host: one run per worker thread ----------------------------------------------------------
def _kmeans_pp(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (2 + ln k candidates per centre, the one lowering the potential most kept)."""
    n = len(x)
    trials = _trials(k)
    centres = np.empty((k, x.shape[1]), dtype=x.dtype)
    centres[0] = x[rng.integers(n)]
    closest = _sq_dist(x, x_sq, centres[:1])[:, 0].astype(np.float64)
    potential = closest.sum()
    for j in range(1, k):
        if potential <= 0:  # fewer distinct points than cells: any point will do
            centres[j] = x[rng.integers(n)]
            continue
        picks = np.minimum(np.searchsorted(np.cumsum(closest), rng.random(trials) * potential), n - 1)
        dist = np.minimum(closest[:, None], _sq_dist(x, x_sq, x[picks]))
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
        d = _sq_dist(x, x_sq, centres)
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
    d = _sq_dist(x, x_sq, centres)
    return centres, float(d.min(axis=1).sum(dtype=np.float64))


def _restarts(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator, tol: float) -> list:
    """The _KMEANS_INIT runs of k-means++ and Lloyd, in parallel, with exactly the random numbers (and so
    the results) of running them one after the other from ``rng``, which ends where that would leave it.

    Each run starts from the generator state of :func:`_schedule`; a run that drew otherwise (its
    points ran out of distinct values) is detected by its end state, and the runs after it are then
    redone from the right state."""
    starts = [state for state, _, _ in _schedule(rng, len(x), k)]

    def run(state):
        own = np.random.Generator(type(rng.bit_generator)())
        own.bit_generator.state = state
        centres, inertia = _lloyd(x, x_sq, _kmeans_pp(x, x_sq, k, own), tol)
        return centres, inertia, own.bit_generator.state

    done = parallel(run, starts)
    state = rng.bit_generator.state
    for i in range(_KMEANS_INIT):
        if starts[i] != state:  # an earlier run drew differently: redo this one
            with one_thread():
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
    with one_thread():
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        tol = _KMEANS_TOL * float(np.mean(np.var(x32, axis=0, dtype=np.float64)))
        pick = _sample(rng, len(x32))
        sub = x32 if pick is None else x32[pick]
        sub_sq = np.einsum("ij,ij->i", sub, sub)
        best = None
        for centres, inertia in _restarts(sub, sub_sq, k, rng, tol):
            if best is None or inertia < best[1]:
                best = (centres, inertia)
        centres = best[0]
        if sub is not x32:
            centres, _ = _lloyd(x32, np.einsum("ij,ij->i", x32, x32), centres, tol)
        labels = assign(x, centres.astype(np.float64))
    exact = centres.astype(np.float64)
    for j in range(k):
        members = labels == j
        if members.any():
            exact[j] = x[members].mean(axis=0, dtype=np.float64)
    return exact


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (float64 squared distances) for every row of ``x``."""
    c_sq = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(len(x), dtype=np.int64)
    with one_thread():
        for s, e in row_blocks(len(x), max(x.shape[1], len(centres))):
            b = x[s:e].astype(np.float64, copy=False)
            d = c_sq[None, :] - 2.0 * (b @ centres.T)  # + |x|², the same for every centre
            out[s:e] = d.argmin(axis=1)
    return out


# -- a torch device: the restarts batched ---------------------------------------------------------
def _kmeans_pp_on(x, x_sq, k: int, firsts: list[int], uniforms: np.ndarray):
    """:func:`_kmeans_pp` for R runs at once, given each run's random numbers (first index; per further
    centre ``trials`` uniforms). None if a run's potential comes within float32 rounding of 0: the CPU
    path may then have found it 0 and drawn differently (fewer distinct points than cells)."""
    torch = optional_torch()
    runs, n = len(firsts), len(x)
    # each squared distance is within (2d + 16)·u·4·max|x|² of its exact value, here as on the CPU
    floor = 2.0 * n * (2 * x.shape[1] + 16) * _U32 * 4.0 * float(x_sq.max())
    every = torch.arange(runs, device=x.device)
    centres = torch.empty((runs, k, x.shape[1]), dtype=x.dtype, device=x.device)
    centres[:, 0] = x[torch.tensor(firsts, device=x.device)]
    closest = _sq_dist(x, x_sq, centres[:, :1])[:, :, 0].to(torch.float64)
    potential = closest.sum(dim=1)
    draws = torch.from_numpy(uniforms).to(x.device)
    for j in range(1, k):
        if bool((potential <= floor).any()):
            return None
        target = draws[:, j - 1] * potential[:, None]                              # R × trials
        picks = torch.searchsorted(closest.cumsum(dim=1), target).clamp_(max=n - 1)
        dist = torch.minimum(closest[:, :, None], _sq_dist(x, x_sq, x[picks]).to(torch.float64))
        pots = dist.sum(dim=1)                                                      # R × trials
        best = pots.argmin(dim=1)
        centres[:, j] = x[picks[every, best]]
        closest, potential = dist[every, :, best], pots[every, best]
    return centres


def _lloyd_on(x, x_sq, centres, tol: float, max_iter: int = _KMEANS_ITER):
    """:func:`_lloyd` for R runs at once (R × k × d centres); each run stops by the CPU path's rules.
    Returns the centres and each run's inertia (float64, on the host)."""
    torch = optional_torch()
    runs, k = centres.shape[0], centres.shape[1]
    n = len(x)
    labels = torch.full((runs, n), -1, dtype=torch.long, device=x.device)
    active = torch.ones(runs, dtype=torch.bool, device=x.device)
    centres = centres.clone()
    for _ in range(max_iter):
        d = _sq_dist(x, x_sq, centres)
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
    inertia = _sq_dist(x, x_sq, centres).min(dim=2).values.sum(dim=1, dtype=torch.float64)
    return centres, inertia.cpu().numpy()


def kmeans_on(x: np.ndarray, k: int, seed: int, device) -> np.ndarray:
    """:func:`kmeans` on a torch device: the same sample, random numbers and steps, the restarts as one
    batch. Falls back to :func:`kmeans` where the CPU path would draw differently (fewer distinct
    points than cells)."""
    torch = optional_torch()
    rng = np.random.default_rng(seed)
    given = torch.from_numpy(np.ascontiguousarray(x)).to(device)  # sent once; float32 and float64 made there
    whole = given.to(torch.float32)  # rounds as numpy's astype(float32) does
    tol = _KMEANS_TOL * float(whole.to(torch.float64).var(dim=0, correction=0).mean())
    pick = _sample(rng, len(x))
    runs = _schedule(rng, len(x) if pick is None else len(pick), k)
    firsts, uniforms = [first for _, first, _ in runs], np.stack([draws for _, _, draws in runs])
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
