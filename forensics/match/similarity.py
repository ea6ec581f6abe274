"""Similarity and distance between curves, and each generator's spread.

He et al.'s similarity ranks candidates in the 1-NN matchers; the Euclidean distances and spreads give
every matcher its distance ratio (see :mod:`forensics.match.base`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from forensics.errors import UsageError


def similarity(a: Any, b: Any, alpha: float = 0.5) -> float:
    """He et al.'s similarity s = α·cos(a, b) + (1 − α)/(1 + ‖a − b‖₂); α = 1 is pure cosine.

    A zero curve has cosine 0 with anything (rather than NaN).
    """
    return float(similarity_matrix(np.asarray(a, float)[None, :], np.asarray(b, float)[None, :], alpha)[0, 0])


def similarity_matrix(a: np.ndarray, b: np.ndarray, alpha: float = 0.5,
                      distances: np.ndarray | None = None) -> np.ndarray:
    """Similarities of every row of ``a`` (q × L) with every row of ``b`` (r × L): a q × r array.
    ``distances``: their :func:`pairwise_distances`, when the caller has them already."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"curves of different lengths: {a.shape[1]} and {b.shape[1]} layers")
    na = np.linalg.norm(a, axis=1)[:, None]
    nb = np.linalg.norm(b, axis=1)[None, :]
    denom = na * nb
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, (a @ b.T) / np.where(denom > 0, denom, 1.0), 0.0)
    if distances is None:
        distances = pairwise_distances(a, b)
    return alpha * cos + (1.0 - alpha) / (1.0 + distances)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances of every row of ``a`` (q × L) to every row of ``b`` (r × L): a q × r array."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))


def generator_spreads(distances: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Each generator's spread: the median, over its curves, of the distance to its nearest other curve.

    ``distances``: the n × n Euclidean distances of the reference curves (:func:`pairwise_distances`);
    ``labels``: their generators. A generator with a single curve gets the pooled median over every
    generator's curves instead; when no generator has two curves, every spread is ``None``.
    """
    labels = np.asarray(labels, dtype=object)
    nearest = {g: nearest_other(distances, np.flatnonzero(labels == g)) for g in {str(g) for g in labels}}
    return spreads_from(nearest)


def nearest_other(distances: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """For each of the curves ``idx`` (one generator's), the distance to its nearest other one of them;
    empty for fewer than two curves."""
    if len(idx) < 2:
        return np.empty(0)
    d = distances[np.ix_(idx, idx)].copy()
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def query_spreads(curves: np.ndarray, labels: np.ndarray, instances: Sequence[str],
                  queries: Mapping[str, Sequence[Any]]) -> dict[str, float | None]:
    """Each generator's spread as a single query sees it: the median, over the ``queries`` that stand for
    its instances (by instance id: curves of single sub-batches, say), of the distance from the query to
    the nearest *other* instance of the generator. ``curves`` (n × L, as matched) are the reference
    curves, ``labels`` their generators, ``instances`` their ids. A reference curve that is a mean of
    sub-batches lies closer to its kin than one batch does, so this spread, not
    :func:`generator_spreads`, is the one a query of one batch is measured against. Generators with one
    instance, or none of whose instances has queries, get the pooled median; ``None`` when nothing can
    be measured."""
    labels = np.asarray(labels, dtype=object)
    nearest: dict[str, np.ndarray] = {}
    for g in {str(g) for g in labels}:
        own = np.flatnonzero(labels == g)
        found = []
        for i in own:
            others = own[own != i]
            qs = queries.get(instances[i])
            if len(others) and qs is not None and len(qs):
                stacked = np.stack([np.asarray(q, float) for q in qs])
                found.append(pairwise_distances(stacked, curves[others]).min(axis=1))
        nearest[g] = np.concatenate(found) if found else np.empty(0)
    return spreads_from(nearest)


def spreads_from(nearest: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """:func:`generator_spreads` from each generator's nearest-other distances (:func:`nearest_other`)."""
    pooled = np.concatenate([v for v in nearest.values()]) if nearest else np.empty(0)
    fallback = float(np.median(pooled)) if len(pooled) else None
    return {g: float(np.median(v)) if len(v) else fallback for g, v in nearest.items()}


def in_spreads(distance: float, spread: float | None) -> float | None:
    """A distance in units of a spread (a zero spread: 0 for a zero distance, else infinite)."""
    if spread is None:
        return None
    if spread > 0:
        return float(distance / spread)
    return 0.0 if distance == 0 else math.inf
