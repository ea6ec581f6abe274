"""What matching reads and returns: enrolled curves, queries, ranked candidates, attributions.

These are the types of the matcher contract (:class:`forensics.match.Matcher`): a plugin's matcher is
fitted on :class:`EnrolledCurve` objects, ranks :class:`Candidate` objects and answers with an
:class:`Attribution`; its open-set calibration is computed from :class:`CalibrationPoints`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forensics.errors import ProtocolMismatch
from forensics.io.hashing import sha256_json
from forensics.protocol import Fingerprint

Point = tuple[float, float, float]
"""A calibration point: (best score, margin over the runner-up, distance ratio) of one held-out query."""


@dataclass(frozen=True)
class EnrolledCurve:
    """One enrolled instance: a generator's fingerprint of one batch, and where it came from. ``family``:
    the model the generator shares with other enrolled generators (one network under several samplers),
    as the registry records it; ``None`` when it shares none."""

    generator: str
    instance: str
    fingerprint: Fingerprint
    provenance: Mapping[str, Any] = field(default_factory=dict)
    family: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One generator as an answer: its score (higher = closer) and, for 1-NN, the closest instance."""

    generator: str
    score: float
    instance: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "score": float(self.score), "instance": self.instance}


@dataclass(frozen=True)
class Attribution:
    """The answer to one query curve.

    ``candidates``: one per generator, best first. ``verdict``: the generator named, or ``None`` for
    "unknown". ``margin``: best score minus the runner-up's (``None`` with a single candidate).
    ``threshold``: the open-set thresholds applied (``None`` when the matcher is closed-set).
    ``distance_ratio``: the query's distance to the best candidate's nearest curve over that generator's
    spread (``None`` when no generator has two curves to measure a spread on). ``lookalikes``: for a
    named verdict, the generators whose runs calibration saw named as the verdict when they were left
    out of the references, as {generator: [runs named, runs]}; a verdict with lookalikes does not rule
    out an unenrolled generator like them. ``family``: when the verdict names a family rather than one of
    its generators (``verdict`` is then ``None``), the family; ``family_members``: its generators between
    which the answer could not choose (see :meth:`forensics.match.Matcher.attribute`).
    ``resampling``: how often each generator ranked first over bootstrap resamples of the batch's images,
    and how often what the answer names did (:mod:`forensics.match.resampling`); ``None`` when not resampled.
    ``at_operating_points``: what the thresholds of each operating point calibration recorded would have
    answered, as {point: {"generator": …, "family": …}} (both ``None``: unknown); empty when not calibrated.
    """

    candidates: tuple[Candidate, ...]
    verdict: str | None
    margin: float | None
    reason: str
    matcher: str
    threshold: Mapping[str, Any] | None = None
    distance_ratio: float | None = None
    lookalikes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    family: str | None = None
    family_members: tuple[str, ...] = ()
    at_operating_points: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    resampling: Mapping[str, Any] | None = None

    def withheld(self, why: str) -> Attribution:
        """This answer turned to "unknown" because of ``why``, whatever the thresholds said (the
        candidates stay, ranked): for a query whose condition the references cannot stand for."""
        from dataclasses import replace

        return replace(self, verdict=None, family=None, family_members=(), lookalikes={}, reason=f"unknown: {why}",
                       at_operating_points={p: {"generator": None, "family": None} for p in self.at_operating_points})

    @property
    def named(self) -> str | None:
        """What the answer names: the generator, else the family (``None``: unknown)."""
        return self.verdict if self.verdict is not None else self.family

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def score(self) -> float | None:
        return None if self.best is None else float(self.best.score)

    def to_dict(self) -> dict[str, Any]:
        return {"matcher": self.matcher, "verdict": self.verdict,
                "score": self.score, "margin": None if self.margin is None else float(self.margin),
                "distance_ratio": None if self.distance_ratio is None else float(self.distance_ratio),
                "reason": self.reason, "threshold": None if self.threshold is None else dict(self.threshold),
                "lookalikes": {g: list(v) for g, v in self.lookalikes.items()},
                "family": self.family, "family_members": list(self.family_members),
                "at_operating_points": {p: dict(v) for p, v in self.at_operating_points.items()},
                "resampling": None if self.resampling is None else dict(self.resampling),
                "candidates": [c.to_dict() for c in self.candidates]}


@dataclass(frozen=True)
class CalibrationPoints:
    """What open-set calibration learns from (:meth:`forensics.match.Matcher.calibration_points`).

    ``answer``: points of held-out queries the closed-set matcher attributed right; ``unknown``: points of
    held-out queries attributed wrong or whose whole generator was left out; ``held_out``: how queries
    were held out, in words; ``left_out``: (generator left out, generator named, point) for each query
    whose generator was left out entirely (their points are among ``unknown`` too); ``named``: (its
    generator, generator ranked first, point) for each query of a held-out instance whose generator stayed
    in the references — what calibration records, through its thresholds, as the generators taken for one
    another.
    ``answer_from`` and ``unknown_from``: for each point of ``answer`` and ``unknown``, in order, the id of
    the held-out instance it was a query of (empty when a matcher does not say): what lets a pooled
    calibration leave one instance's or generator's points out (:class:`forensics.match.calibration.Pool`).
    """

    answer: list[Point]
    unknown: list[Point]
    held_out: str
    left_out: list[tuple[str, str, Point]]
    named: list[tuple[str, str, Point]] = field(default_factory=list)
    answer_from: list[str] = field(default_factory=list)
    unknown_from: list[str] = field(default_factory=list)

    @property
    def tagged(self) -> bool:
        """Whether every point says which held-out instance it came from."""
        return len(self.answer_from) == len(self.answer) and len(self.unknown_from) == len(self.unknown)


def lookalike_note(generator: str | None, lookalikes: Mapping[str, Sequence[int]] | None) -> str | None:
    """One sentence for a report: which left-out generators calibration saw named ``generator``; ``None``
    when there are none (or no generator was named)."""
    if generator is None or not lookalikes:
        return None
    parts = [f"{k} of {n} {g} runs" for g, (k, n) in sorted(lookalikes.items())]
    seen = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    like = " or ".join(sorted(lookalikes))
    verb = "was" if len(parts) == 1 and next(iter(lookalikes.values()))[0] == 1 else "were"
    return (f"not exclusive: at calibration, with each generator left out of the references in turn, {seen} "
            f"{verb} named {generator}; an unenrolled generator like {like} could be named {generator} too")


def references_digest(references: Sequence[EnrolledCurve]) -> str:
    """A hash of what a matcher was fitted on (generator, instance, curve), independent of order."""
    items = sorted((r.generator, r.instance, [None if v is None else float(v) for v in r.fingerprint.values])
                   for r in references)
    return sha256_json({"references": items})


def as_curve(curve: Any, digest: str | None = None) -> np.ndarray:
    """A query as a float vector; a :class:`Fingerprint` is checked against ``digest`` first."""
    if isinstance(curve, Fingerprint):
        if digest is not None and curve.protocol_digest != digest:
            raise ProtocolMismatch(f"refusing to compare a fingerprint of protocol {curve.protocol_digest[:19]}… "
                                   f"with references of protocol {digest[:19]}…")
        return curve.vector()
    arr = np.asarray(curve, dtype=np.float64).reshape(-1)
    return np.where(np.isfinite(arr), arr, 0.0)  # undefined values count as 0 (He et al.)
