"""Open-set calibration: thresholds on (best score, margin, distance ratio) learnt from the references.

Every reference instance is attributed once with itself left out, and once with its whole generator
left out (:meth:`forensics.match.Matcher.calibration_points`). The first kind should be answered when
the answer is right; a wrong answer and every answer about a left-out generator should be "unknown".
The thresholds are the triple that maximises the balanced accuracy of that decision
(:data:`CALIBRATION_RULE`). Left-out generators that pass them anyway are recorded as *lookalikes* of
the generator they were named, and held-out instances whose generator stayed enrolled but that the thresholds
let through named as another as *confusions* (which generators calibration would have named for one another;
a verdict naming one of a family whose generators were confused names the family instead, see
:meth:`forensics.match.Matcher.attribute`). Both are the thresholds' own: each operating point records its.

That is the *balanced* operating point. Calibration also records the thresholds of two others
(:data:`OPERATING_POINTS`, under ``operating_points``), chosen among the triples whose balanced accuracy
is within one standard error of the best: ``named`` keeps the most answers, ``cautious`` catches the most
unknowns. A fitted matcher answers at the balanced one, and at another through
:meth:`forensics.match.Matcher.at_operating_point`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from forensics.errors import UsageError
from forensics.match.types import CalibrationPoints, Candidate, EnrolledCurve, Point, references_digest

if TYPE_CHECKING:
    from forensics.match.base import Matcher

CALIBRATION_RULE = ("thresholds on (best score, margin over the runner-up, distance ratio to the named generator's "
                    "spread) maximising balanced accuracy between leave-one-out queries attributed right (answer) "
                    "and leave-one-out queries attributed wrong or whose generator was left out entirely (unknown); "
                    "among tying triples a threshold that need not apply is not (margin, then score, then distance "
                    "ratio), else the middle of the tying range (geometric for the ratio); a distance ratio that need "
                    "not apply is set at the farthest answer that passes the other two, so that nothing farther from "
                    "a generator than calibration ever saw a right answer lie is named, and one that is needed at "
                    "most at the upper end of the answers' ratios estimated from the two farthest (Robson and "
                    "Whitlock); the left-out generators' runs the thresholds let through are recorded as lookalikes "
                    "of the generator they were named, and the held-out queries they let through named as another "
                    "generator of the references as confusions")

THRESHOLDS = ("score", "margin", "distance_ratio")  # the calibrated open-set thresholds, by their keys

OPERATING_POINTS = {
    "balanced": "the thresholds of the best balanced accuracy (the default)",
    "named": "among the thresholds whose balanced accuracy lies within one standard error of the best, those "
             "that keep the most of calibration's right answers: more batches named, more unenrolled "
             "generators let through",
    "cautious": "among the thresholds whose balanced accuracy lies within one standard error of the best, those "
                "that catch the most of calibration's unknowns: fewer batches named, fewer unenrolled "
                "generators let through",
}
"""The operating points calibration records thresholds for, and how each is chosen. Balanced accuracy
cannot tell apart triples within about one standard error of the best (Breiman et al.'s one-standard-error
rule), yet such triples can keep very different shares of answers; the analyst chooses which way to lean."""

DEFAULT_OPERATING_POINT = "balanced"

# what an operating point sets in a calibration: its thresholds, how they do on calibration's points, and
# which left-out generators they let through
_AT_POINT = (*THRESHOLDS, "balanced_accuracy", "answered_right", "unknown_right", "lookalikes", "confusions")


def check_operating_point(point: str) -> str:
    """``point`` if it is an operating point, else a :class:`~forensics.errors.UsageError` naming them."""
    if point not in OPERATING_POINTS:
        raise UsageError(f"unknown operating point {point!r}: choose one of {', '.join(OPERATING_POINTS)}")
    return point


LOO_LIMIT = 40  # above this many references, the refitting calibration holds out 10 folds, not one at a time
FOLDS = 10


def calibration_point(candidates: Sequence[Candidate], ratio: float | None) -> Point:
    """A calibration point: (best score, margin, distance ratio); no runner-up: an infinite margin;
    no spread to measure: a NaN ratio, which no threshold rejects."""
    score = candidates[0].score
    margin = candidates[0].score - candidates[1].score if len(candidates) > 1 else math.inf
    return float(score), float(margin), math.nan if ratio is None else float(ratio)


def held_out_points(matcher: Matcher, references: Sequence[EnrolledCurve],
                    queries: Mapping[str, Sequence[np.ndarray]] | None = None) -> CalibrationPoints:
    """The points :func:`calibrate` learns from: the matcher's own (:meth:`Matcher.calibration_points`),
    or with ``queries`` standing for the held-out instances, refits (:func:`refit_points`)."""
    refs = list(references)
    return matcher.calibration_points(refs) if queries is None else refit_points(matcher, refs, queries=queries)


def calibrate(matcher: Matcher, references: Sequence[EnrolledCurve],
              queries: Mapping[str, Sequence[np.ndarray]] | None = None,
              points: CalibrationPoints | None = None) -> dict[str, Any]:
    """Open-set thresholds for ``matcher`` from ``references`` alone (see the module docstring).
    ``queries``: for an instance id, the curves to hold out in its place (for example sub-batches of its
    images, when the references are curves of a batch size the queries do not have); by default each
    reference is its own held-out query. ``points``: those :func:`held_out_points` gives, when they are at
    hand."""
    refs = list(references)
    base = {"rule": CALIBRATION_RULE, "n_references": len(refs), "references_digest": references_digest(refs),
            "source": "calibrated at fit"}
    points = held_out_points(matcher, refs, queries) if points is None else points
    answer, unknown = points.answer, points.unknown
    # through no thresholds: every query ranked first as another (and the confusions until some are chosen;
    # two tables, not one shared, so that a record written as YAML holds no aliases)
    base.update({"held_out": points.held_out, "n_answer": len(answer), "n_unknown": len(unknown),
                 "confusions": confusions(points.named), "ranked_first": confusions(points.named)})
    if not answer:
        return {**base, "calibrated": False, "score": None, "margin": None,
                "reason": "no generator has two instances that leave-one-out attributes right"}
    if not unknown:
        return {**base, "calibrated": False, "score": None, "margin": None,
                "reason": "too few generators to simulate an unknown one"}
    chosen = {}
    for name, found in _best_thresholds(np.array(answer), np.array(unknown)).items():
        t_score, t_margin, t_ratio, ba, acc_answer, acc_unknown = found
        # JSON-ready: a threshold that is not applied (±inf) is recorded as null
        chosen[name] = {"chosen_by": OPERATING_POINTS[name], "score": _finite_or_none(t_score),
                        "margin": _finite_or_none(t_margin), "distance_ratio": _finite_or_none(t_ratio),
                        "balanced_accuracy": ba,
                        "answered_right": acc_answer, "unknown_right": acc_unknown,
                        "lookalikes": _lookalikes(points.left_out, t_score, t_margin, t_ratio),
                        "confusions": confusions(points.named, t_score, t_margin, t_ratio)}
    return at_operating_point({**base, "calibrated": True, "operating_points": chosen}, DEFAULT_OPERATING_POINT)


def at_operating_point(cal: Mapping[str, Any], point: str) -> dict[str, Any]:
    """The calibration ``cal`` answering at operating ``point``: its thresholds, their accuracies and
    lookalikes (the top-level keys a verdict reads) taken from ``cal["operating_points"][point]``. A
    calibration that records no operating points (made before they existed) holds the balanced one only."""
    check_operating_point(point)
    points = cal.get("operating_points")
    if not cal.get("calibrated") or (points is None and point == DEFAULT_OPERATING_POINT):
        return {**cal, "operating_point": point} if cal.get("calibrated") else dict(cal)
    if not points or point not in points:
        raise UsageError(f"this calibration records no thresholds for the {point!r} operating point "
                         "(recalibrate: `forensics registry calibrate`)")
    # a point's record alone decides (a threshold it does not record is not applied, as at the top level)
    return {**cal, **{k: points[point].get(k) for k in _AT_POINT}, "operating_point": point}


def _lookalikes(left_out: Sequence[tuple[str, str, Point]], t_score: float, t_margin: float,
                t_ratio: float) -> dict[str, dict[str, list[int]]]:
    """{named generator: {left-out generator: [runs the thresholds let through as named, its runs]}}: which
    generators, missing from the references, were taken for which enrolled one."""
    runs: dict[str, int] = {}
    passed: dict[str, dict[str, int]] = {}
    through = _passes(np.array([p for _, _, p in left_out], float).reshape(-1, 3), t_score, t_margin, t_ratio)
    for (own, named, _), ok in zip(left_out, through):
        runs[own] = runs.get(own, 0) + 1
        if ok:
            passed.setdefault(named, {})
            passed[named][own] = passed[named].get(own, 0) + 1
    return {g: {o: [k, runs[o]] for o, k in sorted(d.items())} for g, d in sorted(passed.items())}


def confusions(named: Sequence[tuple[str, str, Point]], t_score: float = -math.inf, t_margin: float = -math.inf,
               t_ratio: float = math.inf) -> dict[str, dict[str, list[int]]]:
    """{generator: {generator named instead: [held-out queries, queries of the generator]}} from (own
    generator, generator ranked first, point) triples: the queries ranked first as another *and let through*
    by the thresholds (by default none: every one ranked first as another), which is what naming would have
    got wrong — one the thresholds turn away answers "unknown". Generators never named as another are left
    out."""
    total: dict[str, int] = {}
    taken: dict[str, dict[str, int]] = {}
    through = _passes(np.array([p for _, _, p in named], float).reshape(-1, 3), t_score, t_margin, t_ratio)
    for (own, first, _), ok in zip(named, through):
        total[own] = total.get(own, 0) + 1
        if first != own and ok:
            taken.setdefault(own, {})
            taken[own][first] = taken[own].get(first, 0) + 1
    return {g: {o: [k, total[g]] for o, k in sorted(d.items())} for g, d in sorted(taken.items())}


def confused(calibration: Mapping[str, Any] | None, a: str, b: str) -> list[tuple[str, str, int, int]]:
    """How calibration took ``a`` and ``b`` for each other: (own generator, generator ranked first,
    held-out queries, queries of the own generator) for each direction it happened in (none: [])."""
    table = (calibration or {}).get("confusions") or {}
    out = []
    for own, other in ((a, b), (b, a)):
        seen = (table.get(own) or {}).get(other)
        if seen and int(seen[0]) > 0:
            out.append((own, other, int(seen[0]), int(seen[1])))
    return out


def refit_points(matcher: Matcher, refs: Sequence[EnrolledCurve], *, loo_limit: int | None = None,
                 queries: Mapping[str, Sequence[np.ndarray]] | None = None) -> CalibrationPoints:
    """Calibration points of any matcher: refit a closed-set copy with each instance (or fold) held out,
    then with each generator held out. Up to ``loo_limit`` references (default :data:`LOO_LIMIT`) one
    instance is held out at a time, beyond it :data:`FOLDS` folds. ``queries``: the curves that stand for a
    held-out instance (by id; default: its own curve), one point each."""
    refs = list(refs)
    queries = queries or {}

    def standing_in(r: EnrolledCurve) -> Sequence[Any]:
        return queries.get(r.instance) or [r.fingerprint]
    limit = LOO_LIMIT if loo_limit is None else loo_limit
    answer: list[Point] = []
    unknown: list[Point] = []
    answer_from: list[str] = []
    unknown_from: list[str] = []
    left_out: list[tuple[str, str, Point]] = []
    named: list[tuple[str, str]] = []
    probe = matcher.clone(open_set=False)
    need = probe.min_generators
    n = len(refs)
    if n <= limit:
        folds, how = [[i] for i in range(n)], "leave-one-out"
    else:
        order = sorted(range(n), key=lambda i: (refs[i].generator, refs[i].instance))
        folds = [order[k::FOLDS] for k in range(FOLDS)]
        how = f"{FOLDS}-fold (more than {limit} references)"

    def fitted(rest: list[EnrolledCurve]) -> bool:
        # a split that leaves too few generators (or that the matcher cannot fit) is skipped
        if len({x.generator for x in rest}) < need:
            return False
        try:
            probe.fit(rest, {r.instance: queries[r.instance] for r in rest if r.instance in queries} or None)
        except UsageError:
            return False
        return True

    for fold in folds:
        held = set(fold)
        rest = [r for i, r in enumerate(refs) if i not in held]
        if not fitted(rest):
            continue
        present = {x.generator for x in rest}
        for i in fold:
            r = refs[i]
            for q in standing_in(r):
                cands = probe.rank(q)
                ok = r.generator in present and cands[0].generator == r.generator
                point = calibration_point(cands, probe.distance_ratio(q, cands[0].generator))
                if r.generator in present:
                    named.append((r.generator, cands[0].generator, point))
                (answer if ok else unknown).append(point)
                (answer_from if ok else unknown_from).append(r.instance)
    for g in sorted({r.generator for r in refs}):
        if not fitted([x for x in refs if x.generator != g]):
            continue
        for r in refs:
            if r.generator == g:
                for q in standing_in(r):
                    cands = probe.rank(q)
                    point = calibration_point(cands, probe.distance_ratio(q, cands[0].generator))
                    unknown.append(point)
                    unknown_from.append(r.instance)
                    left_out.append((g, cands[0].generator, point))
    if queries:
        n = {len(standing_in(r)) for r in refs}
        how += f", each held-out instance queried by {'/'.join(map(str, sorted(n)))} curve(s) standing for it"
    return CalibrationPoints(answer, unknown, how, left_out, named, answer_from, unknown_from)


POOL_RULE = ("one threshold triple per operating point, chosen by the calibration rule on the calibration points of "
             "every (condition, batch size) cell the references can be redrawn at, pooled: every condition the "
             "registry keeps records under for every instance, at 1/5, 2/5, 3/5 and all of the protocol's m; the "
             "thresholds answer at every cell, each cell keeping its own spreads, layer weights (one over each "
             "layer's noise times the root of its signal over it: forensics.match.batchsize.layer_weights) and "
             "confusions; "
             "adopted for a matcher only where, on the held-out queries of every cell it pools, in 10 folds of "
             "instances each judged by the cell's own thresholds and by the pool's, both chosen without the fold's "
             "points, it does not fall behind the cells' own by more than chance would put it: the probability of a "
             "shortfall in balanced accuracy as large, each query the two judge differently as likely to have gone "
             "either way, is at least the one-sided tail beyond one standard error (0.159)")

POOL_SHARES = (0.2, 0.4, 0.6, 1.0)
"""The batch sizes a pooled calibration draws its cells at, as shares of the protocol's m (100, 200, 300 and
500 images at m = 500: the sizes the attribution is measured at)."""

# what a pool records of each operating point: the thresholds and how they did on the pooled points
_POOLED = (*THRESHOLDS, "balanced_accuracy", "answered_right", "unknown_right")


def pool_sizes(m: int) -> list[int]:
    """The batch sizes of a pooled calibration for a protocol of batch size ``m`` (:data:`POOL_SHARES`)."""
    return sorted({max(2, round(share * m)) for share in POOL_SHARES})


class Pool:
    """The calibration points of many (condition, batch size) cells, from which one threshold triple per
    operating point is chosen (:data:`POOL_RULE`). A cell's thresholds, chosen on its own ~850 points, jump
    from cell to cell between near-ties; margins and distance ratios are in units of one batch's noise at
    each cell, so one triple from all of them carries to cells between (docs/robustness.md)."""

    def __init__(self) -> None:
        self.cells: list[tuple[str, int]] = []
        self.points: list[CalibrationPoints] = []

    def add(self, condition: str, size: int, points: CalibrationPoints) -> None:
        self.cells.append((condition, int(size)))
        self.points.append(points)

    def record(self, references: Sequence[EnrolledCurve], without: Sequence[str] = ()) -> dict[str, Any] | None:
        """The pooled thresholds (JSON-ready: what ``calibration.yaml`` records under ``pooled``), chosen
        on every cell's points but those of the instances ``without`` (by id: how an evaluation leaves a
        fold's own points out); ``references``: the instances the cells were drawn from. None when the
        points leave nothing to choose from, or ``without`` is asked of points that do not say their
        instance."""
        leave = set(without)
        if leave and not all(p.tagged for p in self.points):
            return None

        def kept(values: Sequence[Point], sources: Sequence[str]) -> list[Point]:
            return list(values) if not leave else [v for v, who in zip(values, sources) if who not in leave]

        answer = [v for p in self.points for v in kept(p.answer, p.answer_from)]
        unknown = [v for p in self.points for v in kept(p.unknown, p.unknown_from)]
        if not self.cells or not answer or not unknown:
            return None
        chosen = {}
        for name, found in _best_thresholds(np.array(answer, float), np.array(unknown, float)).items():
            chosen[name] = dict(zip(_POOLED, (*(_finite_or_none(v) for v in found[:3]), *found[3:])))
        return {"rule": POOL_RULE, "calibration_rule": CALIBRATION_RULE,
                "references_digest": references_digest(list(references)),
                "conditions": sorted({c for c, _ in self.cells}), "sizes": sorted({s for _, s in self.cells}),
                "n_cells": len(self.cells), "n_answer": len(answer), "n_unknown": len(unknown),
                "operating_points": chosen}


def pooled_calibration(cal: Mapping[str, Any], pooled: Mapping[str, Any],
                       points: CalibrationPoints | None = None) -> dict[str, Any]:
    """The calibration ``cal`` of one cell answering with the ``pooled`` thresholds (a :meth:`Pool.record`):
    each operating point takes the pool's triple and accuracies, and its lookalikes and confusions are the
    cell's left-out generators and held-out queries those thresholds let through (``points``: the cell's
    calibration points; without them the cell's own stay). The cell keeps everything else (its reference
    count, the queries it ranked first as another), and answers at the operating point it answered at; ``thresholds_from`` says the pool answers (a pool recorded
    but not adopted sits under ``pooled`` without it)."""
    own = cal.get("operating_points") or {}
    chosen = {}
    for name, at in pooled["operating_points"].items():
        t = thresholds(at)
        if points is not None:
            lookalikes, confused_here = _lookalikes(points.left_out, *t), confusions(points.named, *t)
        else:
            lookalikes, confused_here = ((own.get(name) or {}).get(k) or {} for k in ("lookalikes", "confusions"))
        chosen[name] = {"chosen_by": f"{OPERATING_POINTS[name]}, on the points of {pooled['n_cells']} (condition, "
                                     "batch size) cells pooled",
                        **{k: at.get(k) for k in _POOLED}, "lookalikes": lookalikes, "confusions": confused_here}
    out = {k: v for k, v in cal.items() if k != "reason"}
    out.update({"calibrated": True, "operating_points": chosen, "pooled": dict(pooled), "thresholds_from": "pooled"})
    return at_operating_point(out, cal.get("operating_point") or DEFAULT_OPERATING_POINT)


def pool_rules_current(pooled: Mapping[str, Any]) -> bool:
    """Whether a recorded pool was chosen under this version's rules: the pool's and the calibration rule it
    chose its triples by."""
    return pooled.get("rule") == POOL_RULE and pooled.get("calibration_rule") == CALIBRATION_RULE


def pool_applies(pooled: Mapping[str, Any] | None, references: Sequence[EnrolledCurve]) -> bool:
    """Whether a recorded pool answers: adopted (:func:`adoption`), and chosen under this version's rules
    (:func:`pool_rules_current`) on these ``references``."""
    return bool(pooled) and pooled.get("adopted") is True and pool_rules_current(pooled) and \
        pooled.get("references_digest") == references_digest(list(references))


ADOPTION_LEVEL = 0.5 * math.erfc(1 / math.sqrt(2))
"""How unlikely, by chance alone, a pool's shortfall against each cell calibrated on its own must be for the pool
to be declined: the one-sided tail beyond one standard error of a normal (0.159)."""


def adoption(own: tuple[Sequence[bool], Sequence[bool]], pooled: tuple[Sequence[bool], Sequence[bool]]
             ) -> dict[str, Any]:
    """Whether a pool is adopted, from the same queries judged by each cell's own thresholds (``own``) and by
    the pool's (``pooled``), each as (for every query that should be answered, whether it was; for every query
    that should be "unknown", whether it was), the two aligned query by query (:func:`pool_adoption` makes them).

    Only the queries the two judge differently (discordant) say which does better. The pool is declined where it
    falls behind in balanced accuracy by more than chance would put it, were each discordant query as likely to
    have gone either way: where the exact probability of a shortfall at least as large under that null (every
    sign flip of the discordant queries' weights, ``1/(2 n)`` of their half of the balanced accuracy) is below
    :data:`ADOPTION_LEVEL`. One query lost and none gained is never enough, whatever the own accuracy (a perfect
    one included). Returns the two balanced accuracies, the discordant queries each way, that probability, and
    the standard error of the difference under the null."""
    mine, theirs = ([np.asarray(part, bool) for part in side] for side in (own, pooled))
    if any(a.shape != b.shape or not len(a) for a, b in zip(mine, theirs)):
        raise UsageError("the own and pooled evaluations must answer the same queries, and at least one of each kind")
    weights = [0.5 / len(a) for a in mine]
    balanced = [float(sum(w * a.sum() for w, a in zip(weights, side))) for side in (mine, theirs)]
    # per part: queries the pool lost (own right, pool not) and gained
    lost = [int((a & ~b).sum()) for a, b in zip(mine, theirs)]
    gained = [int((b & ~a).sum()) for a, b in zip(mine, theirs)]
    shortfall = balanced[0] - balanced[1]
    chance = _sign_flip_tail([k + g for k, g in zip(lost, gained)], weights, shortfall)
    se = math.sqrt(sum((k + g) * w * w for k, g, w in zip(lost, gained, weights)))
    return {"adopted": chance >= ADOPTION_LEVEL, "balanced_accuracy": balanced[1],
            "own_balanced_accuracy": balanced[0], "standard_error": se,
            "pool_lost": sum(lost), "pool_gained": sum(gained), "chance": chance}


def _sign_flip_tail(counts: Sequence[int], weights: Sequence[float], observed: float) -> float:
    """P(sum of ``counts[j]`` terms ±``weights[j]``, each sign even odds, ≥ ``observed``) for two parts:
    exact, over how many of the first part's terms come out positive, with the second's binomial tail."""
    (k1, k2), (w1, w2) = counts, weights

    def pmf(k: int) -> np.ndarray:  # Binomial(k, 1/2), from log-factorials (no overflow at any k)
        logs = np.array([math.lgamma(j + 1.0) for j in range(k + 1)])
        return np.exp(logs[k] - logs - logs[::-1] - k * math.log(2))

    first, second = pmf(k1), pmf(k2)
    at_least = np.concatenate([np.cumsum(second[::-1])[::-1], [0.0]])  # P(v ≥ j), j = 0 … k2 + 1
    # the first part's value for each count u of positive terms, and the fewest positive terms v of the
    # second that bring the sum to the observed value
    rest = observed - w1 * (2 * np.arange(k1 + 1) - k1) - 1e-12
    need = np.clip(np.ceil((rest / w2 + k2) / 2 - 1e-9), 0, k2 + 1).astype(int)
    return float(min(1.0, np.sum(first * at_least[need])))


ADOPTION_FOLDS = 10
"""The folds of instances the adoption check holds out in turn (every instance where there are fewer)."""


def pool_adoption(pool: Pool, point: str = DEFAULT_OPERATING_POINT, folds: int = ADOPTION_FOLDS
                  ) -> dict[str, Any] | None:
    """Whether ``pool`` is adopted (:func:`adoption`), judged where it answers: at every cell it pools, the
    held-out queries of each fold of instances (:data:`ADOPTION_FOLDS`, instances dealt out in order) judged once
    by the cell's own thresholds and once by the pool's, both chosen at operating ``point`` on the points that
    remain without the fold's — an answer point judged right where it passes them, an unknown point where it
    does not. A cell left with no answer or no unknown point without the fold judges none of its points for it.
    None where the points do not say which instance each came from."""
    if not pool.points or not all(p.tagged for p in pool.points):
        return None
    cells = [(np.asarray(p.answer, float).reshape(-1, 3), np.asarray(p.answer_from, object),
              np.asarray(p.unknown, float).reshape(-1, 3), np.asarray(p.unknown_from, object)) for p in pool.points]
    instances = sorted({str(w) for _, af, _, uf in cells for w in (*af, *uf)})
    groups = [instances[k::folds] for k in range(min(folds, len(instances)))]
    own: tuple[list[bool], list[bool]] = ([], [])
    pooled: tuple[list[bool], list[bool]] = ([], [])

    def chosen(answer: np.ndarray, unknown: np.ndarray) -> tuple[float, float, float] | None:
        if not len(answer) or not len(unknown):
            return None
        return tuple(_best_thresholds(answer, unknown, (point,))[point][:3])  # type: ignore[return-value]

    for group in groups:
        held = [(np.isin(af, group), np.isin(uf, group)) for _, af, _, uf in cells]
        everywhere = chosen(np.concatenate([a[~ha] for (a, _, _, _), (ha, _) in zip(cells, held)]),
                            np.concatenate([u[~hu] for (_, _, u, _), (_, hu) in zip(cells, held)]))
        if everywhere is None:
            continue
        for (a, _, u, _), (ha, hu) in zip(cells, held):
            if not ha.any() and not hu.any():
                continue
            mine = chosen(a[~ha], u[~hu])
            if mine is None:
                continue
            for side, t in ((own, mine), (pooled, everywhere)):
                side[0].extend(_passes(a[ha], *t).tolist())
                side[1].extend((~_passes(u[hu], *t)).tolist())
    if not own[0] or not own[1]:
        return None
    return {**adoption(own, pooled), "folds": len(groups), "n_cells": len(cells)}


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _cuts(values: np.ndarray, limit: int = 64) -> np.ndarray:
    """Candidate lower-bound thresholds for ``values``: -inf (no threshold) and the midpoints between
    consecutive distinct finite values (at most ``limit``, at quantiles, when there are more)."""
    finite = np.unique(values[np.isfinite(values)])
    mids = (finite[:-1] + finite[1:]) / 2 if len(finite) > 1 else np.array([])
    if len(mids) > limit:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, limit)))
    return np.concatenate([[-math.inf], mids])


def _best_thresholds(answer: np.ndarray, unknown: np.ndarray,
                     points: Sequence[str] = tuple(OPERATING_POINTS)) -> dict[str, tuple[float, ...]]:
    """Grid search over (score, margin, distance ratio) cuts, the thresholds of each operating point of
    ``points``. ``balanced``: among the triples with the best balanced accuracy, a threshold that need not be
    applied is not (±inf; decided for the margin, then the score, then the ratio), else the one in the middle
    of the tying range (for separable values: halfway between the closest "unknown" and "answer" points; for
    the ratio, halfway on a log scale). ``named`` and ``cautious`` (:data:`OPERATING_POINTS`): among the
    triples within one standard error of the best balanced accuracy, those keeping the most answers (catching
    the most unknowns), then the best balanced accuracy among them, then the same tie rule. A ratio that need
    not apply is capped at the largest among the answers that pass the score and the margin, one that does at
    :func:`answer_end` of them when the middle lies beyond it. Returns, per
    point, (score, margin, ratio, balanced accuracy, share of answers kept, share of unknowns caught)."""
    def lower_bounds(values: np.ndarray) -> np.ndarray:
        # every test as "value ≥ cut": the ratio is an upper bound, so it is negated; NaN passes
        closeness = np.where(np.isnan(values[:, 2]), math.inf, -values[:, 2])
        return np.stack([values[:, 0], values[:, 1], closeness], axis=1)

    a, u = lower_bounds(answer), lower_bounds(unknown)
    both = np.concatenate([a, u])
    cuts = [_cuts(both[:, k]) for k in range(3)]
    # (ratio cut, score cut, margin cut) → share of answers kept, share of unknowns caught
    kept = _passing_counts(a, cuts) / len(a)
    caught = 1.0 - _passing_counts(u, cuts) / len(u)
    ba = 0.5 * (kept + caught)
    top = ba >= ba.max() - 1e-12
    # the standard error of a balanced accuracy at the best (the largest, where several triples reach it)
    ka, cu = kept[top], caught[top]
    se = float(np.max(0.5 * np.sqrt(ka * (1 - ka) / len(a) + cu * (1 - cu) / len(u))))
    return {point: _chosen(answer, unknown, cuts, _leaning(point, top, ba, kept, caught, se)) for point in points}


def _passing_counts(values: np.ndarray, cuts: Sequence[np.ndarray]) -> np.ndarray:
    """How many of the points ``values`` (n × 3, each test "value ≥ cut") pass each triple of ``cuts``
    (ascending, the first −∞): a (ratio cut, score cut, margin cut) array of counts. Each point falls in the
    cell of the last cut it passes on each axis, and passes every triple at or below that cell, so the
    counts are the suffix sums of a 3-d histogram: time linear in the points, not in points × triples."""
    values = values[~np.isnan(values).any(axis=1)]  # NaN ≥ any cut is false: such a point passes nothing
    last = [np.searchsorted(cuts[k], values[:, k], side="right") - 1 for k in (2, 0, 1)]
    shape = tuple(len(cuts[k]) for k in (2, 0, 1))
    hist = np.bincount(np.ravel_multi_index(last, shape), minlength=math.prod(shape)).reshape(shape)
    for axis in range(3):
        hist = np.flip(np.cumsum(np.flip(hist, axis), axis), axis)
    return hist


def _leaning(point: str, top: np.ndarray, ba: np.ndarray, kept: np.ndarray, caught: np.ndarray,
             se: float) -> np.ndarray:
    """Which triples of the table the operating ``point`` chooses among (see :func:`_best_thresholds`)."""
    check_operating_point(point)
    if point == DEFAULT_OPERATING_POINT:
        return top
    near = ba >= ba.max() - se - 1e-12
    lean = kept if point == "named" else caught
    near &= lean >= lean[near].max() - 1e-12
    return near & (ba >= ba[near].max() - 1e-12)


def _chosen(answer: np.ndarray, unknown: np.ndarray, cuts: Sequence[np.ndarray],
            among: np.ndarray) -> tuple[float, ...]:
    """The one triple of ``among`` (a mask over ratio × score × margin cuts) the tie rule picks, its ratio
    capped where it need not apply, and how it does on the points."""
    k, i, j = np.nonzero(among)
    ties = [(float(cuts[0][p]), float(cuts[1][q]), float(cuts[2][r])) for r, p, q in zip(k, i, j)]

    def middle(values, scale=lambda v: v):
        values = sorted(set(values))
        if values[0] == -math.inf:
            return -math.inf
        mid = (scale(values[0]) + scale(values[-1])) / 2
        return min(values, key=lambda v: (abs(scale(v) - mid), v))

    tm = middle([row[1] for row in ties])
    ties = [row for row in ties if row[1] == tm]
    ts = middle([row[0] for row in ties])
    ties = [row for row in ties if row[0] == ts]
    # a ratio's middle is geometric: halfway between 1.5× and 24× is 6×, not 12.75×
    ratio = -middle([row[2] for row in ties], lambda v: math.log(max(-v, 1e-12)))
    far = answer[_passes(answer, ts, tm, math.inf), 2]
    far = np.unique(far[np.isfinite(far)])
    if ratio == math.inf and len(far):
        # Unneeded on these points, but not on what calibration never saw (a batch of curated copies of
        # T lies far from every generator and may still pass the score and the margin): the ratio is
        # capped at the farthest answer that passes the other two, which keeps every answer it kept.
        ratio = float(far[-1])
    elif len(far):
        # Needed, and the middle of the gap to the nearest unknown may lie well beyond every answer when no
        # simulated unknown came close; an unenrolled generator may. The ratio is kept within where right
        # answers end (answer_end's estimate of it), which keeps every answer it kept.
        ratio = min(ratio, answer_end(far))
    acc_a = float(_passes(answer, ts, tm, ratio).mean())
    acc_u = 1.0 - float(_passes(unknown, ts, tm, ratio).mean())
    return ts, tm, ratio, 0.5 * (acc_a + acc_u), acc_a, acc_u


def answer_end(ratios: np.ndarray) -> float:
    """Where right answers' distance ratios end, estimated from the distinct finite ``ratios`` (ascending) by
    the two farthest, as Robson and Whitlock (1964) estimate a truncation point, on a log scale: x(n)·x(n)/x(n−1),
    the farthest itself when there is one. The farthest answer alone would turn away one new right answer in
    n + 1 (the chance that it lies beyond n others); one step more bounds the end the answers point to, not
    the one they reached."""
    if len(ratios) < 2 or ratios[-2] <= 0:
        return float(ratios[-1])
    return float(ratios[-1] * (ratios[-1] / ratios[-2]))


def _passes(points: np.ndarray, t_score: float, t_margin: float, t_ratio: float) -> np.ndarray:
    """Which (score, margin, ratio) points (n × 3) pass the thresholds (a NaN ratio passes)."""
    return (points[:, 0] >= t_score) & (points[:, 1] >= t_margin) & ~(points[:, 2] > t_ratio)


def threshold_info(cal: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a calibration an :class:`~forensics.match.Attribution` records as its ``threshold``."""
    if cal is None:
        return None
    info = {k: cal.get(k) for k in ("calibrated", *THRESHOLDS, "operating_point", "n_references", "source")}
    info["pooled_cells"] = cal["pooled"]["n_cells"] if cal.get("thresholds_from") == "pooled" else None
    return info


def thresholds(cal: Mapping[str, Any]) -> tuple[float, float, float]:
    """(score, margin, distance ratio) thresholds of a calibration; one not applied (null) never rejects."""
    def get(key: str, default: float) -> float:
        return default if cal.get(key) is None else float(cal[key])

    return get("score", -math.inf), get("margin", -math.inf), get("distance_ratio", math.inf)
