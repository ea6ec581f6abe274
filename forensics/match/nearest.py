"""1-nearest-neighbour matching under He et al.'s similarity (the bundled ``alpha`` and ``cosine``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from forensics.errors import UsageError
from forensics.match.base import Matcher
from forensics.match.calibration import calibration_point
from forensics.match.similarity import in_spreads, nearest_other, pairwise_distances, similarity_matrix, spreads_from
from forensics.match.types import CalibrationPoints, Candidate, EnrolledCurve


class SimilarityMatcher(Matcher):
    """1-nearest-neighbour under He et al.'s similarity; a generator scores its best instance.
    Option ``alpha`` (0.5 by default; 1 is pure cosine)."""

    name = "alpha"

    def __init__(self, *, alpha: float = 0.5, **kwargs: Any):
        super().__init__(**kwargs)
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
        self.alpha = alpha

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().options()}

    def fit_curves(self, curves: np.ndarray, labels: np.ndarray, instances: list[str]) -> None:
        self._x, self._labels, self._ids = curves, labels, instances

    def candidates(self, curve: np.ndarray) -> list[Candidate]:
        sims = similarity_matrix(curve[None, :], self._x, self.alpha)[0]
        best: dict[str, Candidate] = {}
        for s, g, i in zip(sims, self._labels, self._ids):
            if g not in best or s > best[g].score:
                best[g] = Candidate(str(g), float(s), i)
        return list(best.values())

    def calibration_points(self, references: Sequence[EnrolledCurve]) -> CalibrationPoints:
        """Exact leave-one-out and leave-generator-out from one similarity matrix (no refits): the same
        points as the refitting default."""
        refs = list(references)
        x = self.weighted_curves(refs)
        labels = np.array([r.generator for r in refs], dtype=object)
        gens = sorted(set(labels))
        dist = pairwise_distances(x, x)
        sims = similarity_matrix(x, x, self.alpha, distances=dist)
        np.fill_diagonal(sims, -np.inf)
        best = np.stack([np.where(labels == g, sims, -np.inf).max(axis=1) for g in gens], axis=1)  # n × G
        # Leaving curves out changes only their own generator's nearest-other distances (and so the
        # pooled fallback): the rest are computed once.
        nearest = {g: nearest_other(dist, np.flatnonzero(labels == g)) for g in gens}
        without_generator = {g: spreads_from({h: v for h, v in nearest.items() if h != g}) for g in gens}
        answer, unknown, left_out, named = [], [], [], []
        answer_from, unknown_from = [], []
        for i, own in enumerate(labels):
            k = gens.index(own)
            ranked = sorted(((-best[i, j], gens[j]) for j in range(len(gens)) if np.isfinite(best[i, j])))
            if not ranked:
                continue
            cands = [Candidate(g, -s) for s, g in ranked]
            keep = np.arange(len(labels)) != i
            rest = np.flatnonzero(keep & (labels == own))
            spreads = spreads_from({**{h: v for h, v in nearest.items() if h != own},
                                    **({own: nearest_other(dist, rest)} if len(rest) else {})})

            def ratio(g: str, spreads: Mapping[str, float | None]) -> float | None:
                return in_spreads(float(dist[i, keep & (labels == g)].min()), spreads[g])

            ok = np.isfinite(best[i, k]) and cands[0].generator == own
            point = calibration_point(cands, ratio(cands[0].generator, spreads))
            if np.isfinite(best[i, k]):
                named.append((str(own), cands[0].generator, point))
            (answer if ok else unknown).append(point)
            (answer_from if ok else unknown_from).append(refs[i].instance)
            others = [c for c in cands if c.generator != own]
            if others:
                point = calibration_point(others, ratio(others[0].generator, without_generator[own]))
                unknown.append(point)
                unknown_from.append(refs[i].instance)
                left_out.append((own, others[0].generator, point))
        return CalibrationPoints(answer, unknown, "leave-one-out (exact, from the similarity matrix)", left_out,
                                 named, answer_from, unknown_from)
