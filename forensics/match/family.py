"""Telling apart the generators of one family: a discriminant fitted on single sub-batches.

Generators of one *family* (one network under several samplers) lie close together, and a small batch's
curve is noisy: at m′ = 100 the similarity ranks a held-out sub-batch first as a sibling a few times in fifty,
so a verdict naming one of them would be wrong that often. Yet the samplers differ along directions in
which a batch's noise is small: weighed by that noise (a Mahalanobis distance), they come apart.

Where a matcher is fitted with single sub-batches standing for each instance (a batch size or condition the
references are redrawn at, :mod:`forensics.match.batchsize`), each family gets a :class:`FamilyDiscriminant`:
the members' mean sub-batch curves and one within-member covariance pooled over them, shrunk towards a
multiple of the identity by Ledoit and Wolf's rule (2004, "A well-conditioned estimator for large-dimensional
covariance matrices"), the curves weighed as the matcher weighs them; a curve goes to the member whose mean
is nearest in that metric (linear discriminant analysis with equal priors). It is checked on the references
alone, as the open-set thresholds are:

- each instance held out in turn (its sub-batches classified by a discriminant fitted without it): which
  members it confuses;
- each member left out in turn (its sub-batches classified by a discriminant of the others): how far a
  sampler that is not enrolled lies from the member it is taken for.

The *reach* is the squared distance that best tells the first kind classified right (within reach) from the
second kind and the first kind classified wrong (beyond it), by balanced accuracy: the smallest such cut, placed
halfway to the next distance seen.
A verdict (:meth:`forensics.match.Matcher.attribute`) names one member of a family only where the similarity
and the discriminant agree on it, within reach, and one of the two held-out checks never took it for a sibling
nor a sibling for it: the discriminant's (within reach, and by a *lead* — the squared distance to the second
nearest member less that to the nearest — at least the query's), or calibration's through the open-set
thresholds (its ``confusions``); otherwise it names the family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forensics.match.types import EnrolledCurve

FAMILY_RULE = ("within a family, a linear discriminant (equal priors) on the single sub-batches that stand for "
               "each instance, weighed as the matcher weighs curves, with one within-member covariance pooled over "
               "the members and shrunk by Ledoit and Wolf's rule; checked holding out each instance and leaving out "
               "each member; its reach the squared Mahalanobis distance that best tells held-out sub-batches "
               "classified right from left-out members' and misclassified ones (balanced accuracy, the smallest "
               "such cut, halfway to the next distance seen); a member is named only where the similarity and the "
               "discriminant agree on it, within reach, and either the discriminant's held-out check (within reach, "
               "by a lead over the second nearest member at least the query's) or calibration's (through the "
               "open-set thresholds) took it for no sibling nor a sibling for it")


@dataclass(frozen=True)
class FamilyDiscriminant:
    """The discriminant of one family, and what holding out its instances and leaving out its members showed
    (see the module docstring). ``confusions``: {member: {member named instead: held-out sub-batches within
    reach}}, and ``leads`` the largest lead each of those was named by; ``held_out``: {member: its held-out
    sub-batches}; ``left_out``: {member left out: [its sub-batches within reach of another member, its
    sub-batches]}."""

    family: str
    members: tuple[str, ...]
    means: np.ndarray
    precision: np.ndarray
    reach: float
    held_out: Mapping[str, int]
    right: Mapping[str, int]
    confusions: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    leads: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    left_out: Mapping[str, Sequence[int]] = field(default_factory=dict)

    def classify(self, vec: np.ndarray) -> tuple[str, float, float]:
        """(the member whose mean is nearest to the weighted curve ``vec``, its squared distance, its lead: the
        squared distance to the second nearest less that)."""
        return _nearest(self.means, self.precision, self.members, np.asarray(vec, dtype=np.float64)[None, :])[0]

    def confused(self, member: str, lead: float = 0.0) -> list[tuple[str, str, int, int]]:
        """(own member, member named, held-out sub-batches, sub-batches of the own member) for every way the
        held-out check took ``member`` for a sibling or a sibling for it within reach, by a lead of at least
        ``lead`` (none: [])."""
        out = []
        for own, row in sorted(self.confusions.items()):
            for other, k in sorted(row.items()):
                if k and member in (own, other) and self.leads[own][other] >= lead:
                    out.append((own, other, int(k), int(self.held_out[own])))
        return out

    def judge(self, member: str, vec: np.ndarray, doubted: Sequence[tuple[str, str, int, int]] = ()
              ) -> tuple[bool, str]:
        """Whether a verdict may name ``member``, ranked first by the similarity for the weighted curve ``vec``,
        and why, in words for its reason (see the module docstring). ``doubted``: how calibration's held-out
        check, through the open-set thresholds, took ``member`` for a sibling or a sibling for it (own, named,
        queries, of them; :func:`forensics.match.calibration.confused`)."""
        pick, d2, lead = self.classify(vec)
        doubt = self.confused(member, lead)  # held-out confusions at least as sure as this answer
        if pick != member:
            return False, f"the {self.family} discriminant names {pick}"
        if d2 > self.reach:
            return False, f"it lies beyond the {self.family} discriminant's reach ({d2:.1f} > {self.reach:.1f})"
        if doubt and doubted:
            return False, (f"both held-out checks took it for a sibling: the discriminant's named {_times(doubt)}, by "
                           f"leads of {lead:.1f} or more, calibration's {_times(doubted)}")
        surer = f" by a lead of {lead:.1f} or more" if self.confused(member) else ""
        held = (f"held-out sub-batches of {member} within reach and named right {self.right[member]} of "
                f"{self.held_out[member]}, none confused with a sibling{surer}"
                if not doubt else "calibration's thresholds let no held-out sibling through as it, nor it as one")
        others = " and ".join(m for m in self.members if m != member)
        return True, (f"told from {others} by the {self.family} discriminant (squared distance {d2:.1f} within its "
                      f"reach {self.reach:.1f}; {held})")

    def describe(self) -> dict[str, Any]:
        """What a report records about the discriminant (JSON-ready)."""
        return {"rule": FAMILY_RULE, "members": list(self.members), "reach": round(float(self.reach), 4),
                "held_out": dict(self.held_out), "right": dict(self.right),
                "confusions": {g: dict(r) for g, r in self.confusions.items()},
                "leads": {g: {h: round(float(v), 4) for h, v in r.items()} for g, r in self.leads.items()},
                "left_out": {g: list(v) for g, v in self.left_out.items()}}


def _times(confusions: Sequence[tuple[str, str, int, int]]) -> str:
    """(own, named, k, n) confusions in words: "ddpm as pndm 2 of 48 times; …"."""
    return "; ".join(f"{own} as {other} {k} of {n} times" for own, other, k, n in confusions)


def _fit(x: np.ndarray, y: np.ndarray, members: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(member means, precision of the pooled within-member covariance shrunk by Ledoit–Wolf)."""
    from sklearn.covariance import ledoit_wolf

    means = np.stack([x[y == g].mean(axis=0) for g in members])
    residuals = x - means[np.searchsorted(np.asarray(members), y)]  # members are sorted
    cov, _ = ledoit_wolf(residuals, assume_centered=True)
    return means, np.linalg.pinv(cov, hermitian=True)


def _nearest(means: np.ndarray, precision: np.ndarray, members: Sequence[str],
             x: np.ndarray) -> list[tuple[str, float, float]]:
    """For each row of ``x``: (nearest member, squared Mahalanobis distance to its mean, that to the second
    nearest less it; infinite with one member)."""
    diff = x[:, None, :] - means[None, :, :]
    d2 = np.einsum("nkl,lm,nkm->nk", diff, precision, diff)
    k = d2.argmin(axis=1)
    second = np.sort(d2, axis=1)[:, 1] if d2.shape[1] > 1 else np.full(len(d2), np.inf)
    return [(members[j], float(d2[i, j]), float(second[i] - d2[i, j])) for i, j in enumerate(k)]


def _reach(accept: np.ndarray, refuse: np.ndarray) -> float:
    """The cut on squared distance (a curve within it is accepted) of the best balanced accuracy between
    ``accept`` and ``refuse``: of the tying cuts the smallest, placed halfway to the next value seen (every cut
    between the two splits the points alike; the middle, as the open-set calibration places its thresholds).
    No accepted value: nothing is within reach (−1)."""
    if not len(accept):
        return -1.0
    cuts = np.unique(accept)
    kept = np.searchsorted(np.sort(accept), cuts, side="right") / len(accept)
    caught = 1.0 - np.searchsorted(np.sort(refuse), cuts, side="right") / max(len(refuse), 1)
    ba = 0.5 * (kept + caught)
    cut = float(cuts[int(np.flatnonzero(ba >= ba.max() - 1e-12)[0])])
    above = np.concatenate([accept, refuse])
    above = above[above > cut]
    return cut if not len(above) else 0.5 * (cut + float(above.min()))


def fit_family(family: str, curves: Mapping[str, tuple[str, np.ndarray]]) -> FamilyDiscriminant | None:
    """The discriminant of ``family`` from ``curves`` ({instance: (member, its sub-batches' weighted curves,
    one a row)}); ``None`` where it cannot be checked: fewer than two members, a member with fewer than two
    instances (none to hold out), or fewer sub-batches beyond the members' means than layers (too few to
    estimate a batch's noise)."""
    members = tuple(sorted({g for g, _ in curves.values()}))
    by_member = {g: [i for i, (h, _) in curves.items() if h == g] for g in members}
    n = sum(len(v) for _, v in curves.values())
    n_layers = next(iter(curves.values()))[1].shape[1] if curves else 0
    if len(members) < 2 or min(len(v) for v in by_member.values()) < 2 or n - len(members) < n_layers:
        return None
    ids = sorted(curves)
    x = np.concatenate([curves[i][1] for i in ids]).astype(np.float64)
    y = np.concatenate([[curves[i][0]] * len(curves[i][1]) for i in ids]).astype(str)
    inst = np.concatenate([[i] * len(curves[i][1]) for i in ids]).astype(str)
    held: list[tuple[str, str, float, float]] = []  # (own, classified as, d², lead) of held-out sub-batches
    for i in ids:
        rest = inst != i
        means, precision = _fit(x[rest], y[rest], members)
        held += [(curves[i][0], *found) for found in _nearest(means, precision, members, x[~rest])]
    strays: list[tuple[str, float]] = []  # (member left out, d²) of its sub-batches to the others'
    for g in members:
        rest = y != g
        others = tuple(h for h in members if h != g)
        means, precision = _fit(x[rest], y[rest], others)
        strays += [(g, d) for _, d, _ in _nearest(means, precision, others, x[~rest])]
    accept = np.array([d for own, got, d, _ in held if got == own])
    refuse = np.array([d for own, got, d, _ in held if got != own] + [d for _, d in strays])
    reach = _reach(accept, refuse)
    confusions: dict[str, dict[str, int]] = {}
    leads: dict[str, dict[str, float]] = {}
    for own, got, d, lead in held:
        if got != own and d <= reach:
            confusions.setdefault(own, {})
            confusions[own][got] = confusions[own].get(got, 0) + 1
            leads.setdefault(own, {})
            leads[own][got] = max(leads[own].get(got, 0.0), lead)
    means, precision = _fit(x, y, members)
    return FamilyDiscriminant(
        family, members, means, precision, reach,
        held_out={g: int((y == g).sum()) for g in members},
        right={g: sum(1 for own, got, d, _ in held if own == g and got == g and d <= reach) for g in members},
        confusions=confusions, leads=leads,
        left_out={g: [sum(1 for h, d in strays if h == g and d <= reach), int((y == g).sum())] for g in members})


def fit_families(families: Mapping[str, str], references: Sequence[EnrolledCurve],
                 queries: Mapping[str, Sequence[np.ndarray]]) -> dict[str, FamilyDiscriminant]:
    """{family: its discriminant} for every family of ``families`` ({generator: family}) whose members'
    instances all have weighted sub-batch curves in ``queries`` (by instance id) and that can be checked."""
    out = {}
    for family in sorted(set(families.values())):
        refs = [r for r in references if families.get(r.generator) == family]
        if not refs or any(not queries.get(r.instance) for r in refs):
            continue
        found = fit_family(family, {r.instance: (r.generator, np.stack([np.asarray(q, np.float64)
                                                                         for q in queries[r.instance]]))
                                    for r in refs})
        if found is not None:
            out[family] = found
    return out
