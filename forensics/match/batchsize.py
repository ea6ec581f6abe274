"""Matching a batch of any size: the references and the open-set thresholds at the query's size.

An enrolled fingerprint is the curve of m images, and C_T is a sum of Mann–Whitney Z-scores whose size
grows with the number of generated points, so the curve of m′ ≠ m images of the same generator is
another curve: smaller in size, and noisier. Comparing it with curves of m images names the wrong
generator. Instead, where the registry keeps each instance's per-image records
(:mod:`forensics.registry.records`), every instance is redrawn at m′: its reference curve at m′ is the
mean curve of :data:`DRAWS` seeded sub-batches of m′ of its own images (exact curves of real sub-batches,
computed from the records without the images), and the open-set calibration points are computed at m′ too,
each held-out instance standing in as :data:`CALIBRATION_DRAWS` single sub-batches of m′ — what a real
query of m′ images looks like — so that the thresholds hold at every m′ rather than being carried over
from m (those of one (condition, m′) alone, or one set pooled over many:
:class:`forensics.match.calibration.Pool`).

Two more things change at m′ (or under a condition), both measured from the same single sub-batches:
each layer is compared in units of its noise and by what it tells apart (:func:`layer_weights`: one over
the spread of single sub-batches around their generator's mean curve, pooled over generators, times the root
of the generators' spread over it; a layer that varies more from batch to batch, or from run to run, counts
less, one on which the generators lie farther apart more), and each generator's spread, against which the distance
ratio of a query is measured, is the spread a single batch shows
(:func:`forensics.match.similarity.query_spreads`), not that of the mean curves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forensics.errors import UsageError
from forensics.match.types import EnrolledCurve
from forensics.protocol import Fingerprint

DRAWS = 16
"""Sub-batches of m′ per enrolled instance whose mean curve is the instance's reference at m′."""

CALIBRATION_DRAWS = 16
"""Single sub-batches of m′ per instance that stand for it, held out, in the calibration at m′."""

SMALLEST_MEASURED = 100
"""The smallest batch the attribution was measured at (README); below it a verdict carries a warning."""


def subbatches(n: int, size: int, draws: int, seed: int, purpose: int = 0) -> list[np.ndarray]:
    """``draws`` seeded sub-batches (sorted row indices) of ``size`` of ``n`` rows, without replacement
    inside each; all rows once when ``size`` ≥ ``n``. ``purpose`` separates independent streams (the
    references, the calibration queries) drawn with one seed."""
    if size >= n:
        return [np.arange(n)]
    rng = np.random.default_rng([seed, purpose, n, size])
    return [np.sort(rng.choice(n, size, replace=False)) for _ in range(draws)]


def mixed_subbatches(n: int, counts: Sequence[int], draws: int, seed: int, purpose: int = 0) -> list[np.ndarray]:
    """``draws`` seeded sub-batches of images processed in several ways, as rows of records stacked one
    condition after another (rows ``c·n … c·n + n − 1`` are the ``n`` images under the c-th condition): each
    takes ``counts[c]`` images under the c-th condition, no image twice, so that it is a batch of
    ``sum(counts)`` distinct images of which that many arrived under each condition. Counts that add up to
    more than ``n`` are scaled down to ``n`` in the same proportions."""
    counts = [int(k) for k in counts]
    if sum(counts) > n:
        exact = [k * n / sum(counts) for k in counts]
        counts = [int(x) for x in exact]
        for c in sorted(range(len(exact)), key=lambda c: -(exact[c] - counts[c]))[:n - sum(counts)]:
            counts[c] += 1
    rng = np.random.default_rng([seed, purpose, n, *counts])
    bounds = np.cumsum([0, *counts])
    out = []
    for _ in range(draws):
        picked = rng.choice(n, int(bounds[-1]), replace=False)
        out.append(np.sort(np.concatenate([picked[a:b] + c * n for c, (a, b) in enumerate(zip(bounds, bounds[1:]))])))
    return out


@dataclass(frozen=True)
class AtBatchSize:
    """The enrolled instances redrawn at a batch size: their reference curves (``references``), the
    single sub-batch curves that stand for each instance in calibration (``queries``, by instance id), the
    rows of its records each of those sub-batches holds (``query_rows``, in the same order), and the
    instances left out for lack of records (``without_records``)."""

    size: int
    references: tuple[EnrolledCurve, ...]
    queries: Mapping[str, Sequence[np.ndarray]]
    draws: int
    calibration_draws: int
    without_records: tuple[str, ...] = field(default=())
    layer_weights: tuple[float, ...] | None = None
    query_rows: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What the references at this size are, for a report."""
        return {"batch_size": self.size, "references": "sub-batches", "draws": self.draws,
                "calibration_draws": self.calibration_draws, "n_references": len(self.references),
                "without_records": list(self.without_records),
                "layer_weights": None if self.layer_weights is None else list(self.layer_weights)}


def layer_weights(references: Sequence[EnrolledCurve],
                  queries: Mapping[str, Sequence[np.ndarray]]) -> tuple[float, ...]:
    """One weight per layer: one over the noise a query of one batch carries on it, times the square root of
    how far the generators lie apart there in units of that noise.

    The noise σ: the root-mean-square of the ``queries`` (single sub-batches, by instance id) around the
    mean reference curve of their generator, pooled over every generator — the batch-to-batch spread and,
    for generators with several instances, the run-to-run one. The signal b: the standard deviation of the
    generators' mean reference curves. Each layer is multiplied by √(b/σ)/σ, the whole rescaled so that
    √(b/σ) has a root-mean-square of 1 over the layers that move: a curve is still measured in units of one
    batch's noise on average, a layer that tells the enrolled generators apart counts more, and one that
    does not still counts, for an unenrolled generator or a copy of the training set may differ there
    (halfway, geometrically, between the noise alone and a diagonal Fisher weighting b/σ²). A layer with no
    noise at all, or on which every generator lies alike, gets weight 0; with one generator (no signal to
    measure) each layer is 1/σ."""
    centre: dict[str, list[np.ndarray]] = {}
    for r in references:
        centre.setdefault(r.generator, []).append(r.fingerprint.vector())
    means = {g: np.mean(v, axis=0) for g, v in centre.items()}
    residuals = [np.asarray(q, dtype=np.float64) - means[r.generator]
                 for r in references for q in queries.get(r.instance, ())]
    if not residuals:
        raise ValueError("no queries to measure the layers' noise from")
    sd = np.sqrt(np.mean(np.square(residuals), axis=0))
    moves = sd > 0
    inverse = np.divide(1.0, sd, out=np.zeros_like(sd), where=moves)
    signal = np.sqrt(np.std(np.stack(list(means.values())), axis=0) * inverse)  # √(b/σ), 0 where nothing moves
    scale = np.sqrt(np.mean(np.square(signal[moves]))) if moves.any() else 0.0
    weights = inverse * signal / scale if scale > 0 else inverse
    return tuple(float(w) for w in weights)


def references_at(references: Sequence[EnrolledCurve], records: Mapping[str, np.ndarray], size: int,
                  curves_of: Callable[[np.ndarray, Sequence[np.ndarray]], list[np.ndarray]], *, draws: int = DRAWS,
                  calibration_draws: int = CALIBRATION_DRAWS, seed: int = 0,
                  mixture: Sequence[int] | None = None) -> AtBatchSize:
    """Every instance of ``references`` that has ``records`` (by instance id: its (layers, images, fields)
    array) redrawn at ``size`` images. ``curves_of(records, subsets)`` is the curve vector of each subset of
    rows (:func:`forensics.engine.records_curves`, undefined values as 0). ``mixture``: a batch whose images
    arrived processed in several ways, as many images under each condition (adding up to ``size``); each
    instance's records are then its records under those conditions stacked along the images, in that order,
    and every sub-batch is drawn as :func:`mixed_subbatches` draws it."""
    if mixture is not None and sum(mixture) != size:
        raise ValueError(f"a mixture of {sum(mixture)} images for batches of {size}")
    refs: list[EnrolledCurve] = []
    queries: dict[str, list[np.ndarray]] = {}
    rows: dict[str, list[np.ndarray]] = {}
    missing: list[str] = []
    for r in references:
        rec = records.get(r.instance)
        if rec is None:
            missing.append(f"{r.generator}/{r.instance}")
            continue
        n = rec.shape[1] if mixture is None else rec.shape[1] // len(mixture)
        if size > n:  # a sub-batch of size would be all n images, then called a batch of size
            raise UsageError(f"a batch of {size} images cannot be drawn from the {n} images {r.generator}/"
                             f"{r.instance} keeps records of (the protocol's batch size m): ask for at most {n}")
        if mixture is None:
            drawn = subbatches(n, size, draws, seed, 0)
            calibration = subbatches(n, size, calibration_draws, seed, 1)
        else:
            drawn = mixed_subbatches(n, mixture, draws, seed, 0)
            calibration = mixed_subbatches(n, mixture, calibration_draws, seed, 1)
        curves = curves_of(rec, [*drawn, *calibration])
        mean = np.mean(curves[:len(drawn)], axis=0)
        prov = {**dict(r.provenance), "batch_size": min(size, n), "sub_batches": len(drawn)}
        refs.append(EnrolledCurve(r.generator, r.instance,
                                  Fingerprint(r.fingerprint.protocol_digest, tuple(float(v) for v in mean)), prov,
                                  r.family))
        queries[r.instance] = list(curves[len(drawn):])
        rows[r.instance] = list(calibration)
    weights = layer_weights(refs, queries) if refs else None
    return AtBatchSize(size, tuple(refs), queries, draws, calibration_draws, tuple(missing), weights, rows)
