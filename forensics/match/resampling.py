"""Whether a verdict rests on the batch as a whole or on a few of its images.

A batch's curve is a statistic of its images. Drawn again from the same images with replacement (a
bootstrap: :data:`RESAMPLES` resamples of the batch's size, seeded with :data:`SEED`), the curve moves by
about as much as the batch's own sampling noise, and each resample's curve is ranked by the same fitted
matcher. The verdict stands when what it names ranks first in **more than half** of the resamples — the
generator, or for a family answer any generator of that family; otherwise the answer is "unknown": the
thresholds passed on this draw of images, but a like draw would most often have ranked another generator
first. Each operating point's answer is held to the same rule.

The rule is fixed in advance (a majority), not calibrated: it only turns answers into "unknown", and the
open-set thresholds stay those calibration chose. The resamples are computed from the batch's per-image
records (:meth:`forensics.engine.Engine.curves_from_records`), so they cost no embedding: about a
millisecond each on the default protocol. Measured on the robustness benchmark: docs/robustness.md,
"Verdicts that hold when the batch is resampled".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from forensics.match.types import Attribution

RESAMPLES = 100
"""How many bootstrap resamples of a batch are ranked."""
SEED = 0
"""The resampling's seed: the same images give the same resamples, so a report is reproduced exactly."""


def bootstrap_rows(parts: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> list[np.ndarray]:
    """``resamples`` × ``len(parts)`` arrays of rows, resample after resample: in each, every part's rows
    drawn again with replacement, as many as it holds (a set of several batches is resampled batch by batch,
    each resample's curve the mean of its batches' curves, as the set's own)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(np.asarray(rows), len(rows), replace=True) for _ in range(resamples) for rows in parts]


def first_ranked(matcher: Any, vectors: Sequence[np.ndarray]) -> list[str]:
    """The generator ``matcher`` ranks first for each of ``vectors``."""
    return [matcher.rank(v)[0].generator for v in vectors]


def _leads(generator: str | None, family: str | None, firsts: Counter, families: Mapping[str, str]) -> int | None:
    """How many resamples ranked first the generator named, or a generator of the family named (None when
    nothing is named)."""
    if generator is not None:
        return firsts[generator]
    if family is not None:
        return sum(n for g, n in firsts.items() if families.get(g) == family)
    return None


def resampled(answer: Attribution, firsts: Sequence[str], families: Mapping[str, str], *, seed: int = SEED,
              decide: bool = True) -> Attribution:
    """``answer`` with its :attr:`~forensics.match.types.Attribution.resampling` recorded from ``firsts``
    (the generator ranked first in each resample), turned to "unknown" when what it names leads in at most
    half of them; each operating point's answer alike. ``families``: {generator: family} of the generators
    that share one (:attr:`forensics.match.Matcher.families`); ``seed``: the resamples' (recorded). With
    ``decide`` False (a closed-set matcher, which names its best candidate whatever the evidence) the
    resampling is recorded and the answer kept."""
    n = len(firsts)
    if n == 0:
        return answer
    counts = Counter(firsts)
    named = answer.verdict if answer.verdict is not None else answer.family
    leads = _leads(answer.verdict, answer.family if answer.verdict is None else None, counts, families)
    record = {"resamples": n, "seed": seed, "leads": leads,
              "first": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}
    points = {}
    for point, said in answer.at_operating_points.items():
        k = _leads(said.get("generator"), said.get("family"), counts, families)
        points[point] = dict(said) if k is None or 2 * k > n else {"generator": None, "family": None}
    if not decide:
        return replace(answer, resampling=record)
    if leads is None or 2 * leads > n:
        return replace(answer, resampling=record, at_operating_points=points)
    return replace(answer, verdict=None, family=None, family_members=(), lookalikes={}, resampling=record,
                   at_operating_points=points,
                   reason=f"unknown: {named} ranks first in only {leads} of {n} resamples of the batch's images "
                          f"(drawn again with replacement), not in most: the answer rests on a few of them (as drawn: "
                          f"{answer.reason})")
