"""Evaluation of matchers on one protocol's enrolled curves (``forensics registry evaluate``).

:func:`leave_one_out` (every instance attributed with itself left out), :func:`leave_generator_out` (the
open-set test: every instance of a left-out generator should be "unknown"), :func:`holdout` (the paper's
split by provenance role) and :func:`calibration_stability` (how far the open-set thresholds move with
one reference fewer). Each takes a matcher by registered name, a :class:`~forensics.match.Matcher` to
clone, or a callable that makes fresh ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forensics.errors import UsageError
from forensics.match.base import Matcher, make_matcher
from forensics.match.calibration import DEFAULT_OPERATING_POINT, THRESHOLDS, Pool, calibrate, check_operating_point
from forensics.match.resampling import SEED, first_ranked, resampled
from forensics.match.types import EnrolledCurve


@dataclass
class Evaluation:
    """Leave-one-out results of one matcher on one protocol's references."""

    matcher: str
    options: dict[str, Any]
    n: int
    correct: int
    labels: list[str]
    confusion: list[list[int]]   # rows: true generator, columns: predicted (closed-set top candidate)
    predictions: list[dict[str, Any]]
    open_set: dict[str, Any] | None = None
    leave_generator_out: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    error: str | None = None
    operating_point: str = DEFAULT_OPERATING_POINT
    pooled_cells: int | None = None
    resampling: dict[str, Any] | None = None

    @property
    def loo_accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {"matcher": self.matcher, "options": self.options, "loo_accuracy": self.loo_accuracy,
                "n": self.n, "correct": self.correct,
                "confusion": {"labels": self.labels, "matrix": self.confusion,
                              "rows": "true generator", "columns": "predicted generator"},
                "open_set": self.open_set, "operating_point": self.operating_point,
                "pooled_cells": self.pooled_cells, "resampling": self.resampling,
                "leave_generator_out": self.leave_generator_out,
                "split": self.split, "error": self.error, "predictions": self.predictions}


def _factory(matcher: str | Matcher | Callable[[], Matcher], options: Mapping[str, Any]) -> Callable[[], Matcher]:
    """A maker of fresh, unfitted matchers: by registered name, as clones of ``matcher``, or ``matcher`` itself."""
    if isinstance(matcher, Matcher):
        return lambda: matcher.clone(**options)
    if isinstance(matcher, str):
        return lambda: make_matcher(matcher, **options)
    return matcher


def _answering(m: Matcher, pool: Pool | None, references: Sequence[EnrolledCurve], held: Sequence[str]) -> Matcher:
    """The fold's fitted matcher ``m``, answering with the ``pool``'s thresholds chosen without the points of
    the ``held`` instances (by id), when there is a pool; as it is otherwise."""
    if pool is None:
        return m
    record = pool.record(references, without=held)
    if record is None and not all(p.tagged for p in pool.points):
        raise UsageError("the pooled calibration points do not say which instance each came from, so a fold's "
                         "own points cannot be left out of them")
    if record is None:
        raise UsageError("the pool leaves no points to choose thresholds on without the fold's own (it needs "
                         "answers and unknowns)")
    return m.with_pooled_thresholds(record)


def _answers(m: Matcher, queries: Sequence[Any], resamples: Sequence[np.ndarray] | None) -> list[tuple[Any, bool]]:
    """The fitted matcher ``m``'s answer to each of ``queries``, held to the resampling rule
    (:mod:`forensics.match.resampling`) over its resamples' curves (``resamples[j]``: an array, one resample a
    row) as ``attribute`` holds a batch to it; with whether the rule turned a name into "unknown". Without
    ``resamples`` (:func:`_held_to_rule`), the answers as they are."""
    found = []
    for j, q in enumerate(queries):
        answer = m.attribute(q)
        if resamples is None:
            found.append((answer, False))
            continue
        held = resampled(answer, first_ranked(m, resamples[j]), m.families, decide=m.open_set)
        found.append((held, answer.named is not None and held.named is None))
    return found


def _held_to_rule(make: Callable[[], Matcher], resamples: Mapping[str, Sequence[np.ndarray]] | None
                  ) -> Mapping[str, Sequence[np.ndarray]] | None:
    """``resamples`` where the answers of the matchers ``make`` makes can be held to the resampling rule; None
    where there are none (no per-image records) or the matcher ranks no new curve
    (:attr:`~forensics.match.Matcher.reads_curves`: the ``fid`` baseline)."""
    return resamples if resamples is not None and make().reads_curves else None


def resampling_record(turned: int, resamples: Mapping[str, Sequence[np.ndarray]] | None) -> dict[str, Any] | None:
    """What an evaluation records of the resampling rule: how many resamples each query's answer was held to,
    their seed, and how many answers the rule turned into "unknown" (None: the rule was not applied)."""
    if resamples is None:
        return None
    counts = {len(v) for per in resamples.values() for v in per}
    return {"resamples": max(counts) if counts else 0, "seed": SEED, "turned_unknown": turned}


def leave_one_out(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha", *,
                  queries: Mapping[str, Sequence[Any]] | None = None,
                  operating_point: str = DEFAULT_OPERATING_POINT, pool: Pool | None = None,
                  resamples: Mapping[str, Sequence[np.ndarray]] | None = None,
                  **options: Any) -> Evaluation:
    """Attribute every instance with itself left out of the references; an instance that is its generator's
    only one is not (no instance of its generator is left to name: it is what :func:`leave_generator_out`
    tests), and its generator's row of the confusion matrix stays empty.

    ``correct`` counts the closed-set answer (the top candidate), as the paper does; ``open_set``
    counts how the open-set verdicts came out (answered right, answered with the generator's family rather
    than the generator, answered wrong, unknown). ``queries``: the
    curves that stand for an instance when it is held out (by id; default its own curve), each attributed
    (and counted) once, and passed on to the matcher's calibration. The open-set verdicts use the
    thresholds of ``operating_point`` (:data:`~forensics.match.calibration.OPERATING_POINTS`). ``pool``: the
    calibration points of every (condition, batch size) cell, as ``registry calibrate`` pools them
    (:class:`~forensics.match.calibration.Pool`); given, each fold answers with the pooled thresholds chosen
    without the held-out instance's own points (the rest were computed with it among the references: a
    refit of every cell per fold would take the folds' number of times longer). ``resamples``: for each
    instance (by id), the curves of the bootstrap resamples of each of its queries (aligned with them; one
    array each, a resample a row), as ``attribute`` draws them from a batch's per-image records: each answer is
    held to the resampling rule (:mod:`forensics.match.resampling`) as ``attribute`` holds it, and ``resampling``
    counts what the rule turned into "unknown".
    """
    check_operating_point(operating_point)
    refs = list(references)
    queries = queries or {}
    make = _factory(matcher, options)
    labels = sorted({r.generator for r in refs})
    index = {g: i for i, g in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    predictions = []
    correct = right = wrong = unknown = family = turned = 0
    name, opts = None, {}
    open_set_used = False
    resamples = _held_to_rule(make, resamples)
    for i, r in enumerate(refs):
        rest = refs[:i] + refs[i + 1:]
        m = make()
        name, opts = m.name, m.options()
        if not any(o.generator == r.generator for o in rest):  # its generator's only instance: none left to name,
            continue  # it would count as wrong however good the curve (:func:`leave_generator_out` tests it)
        try:
            m = _answering(m.fit(rest, queries or None), pool, refs, [r.instance]).at_operating_point(operating_point)
            results = _answers(m, queries.get(r.instance) or [r.fingerprint],
                               None if resamples is None else resamples[r.instance])
        except UsageError as exc:
            return Evaluation(name, opts, len(refs), 0, labels, confusion, [], error=str(exc))
        open_set_used = open_set_used or m.open_set
        for result, turned_unknown in results:
            turned += turned_unknown
            top = result.candidates[0].generator
            confusion[index[r.generator]][index[top]] += 1
            correct += top == r.generator
            if result.named is None:
                unknown += 1
                outcome = "unknown"
            elif result.verdict == r.generator:
                right += 1
                outcome = "right"
            elif result.verdict is None and result.family == r.family:
                family += 1
                outcome = "family"
            else:
                wrong += 1
                outcome = "wrong"
            predictions.append({"generator": r.generator, "instance": r.instance, "predicted": top,
                                "score": result.candidates[0].score, "margin": result.margin,
                                "distance_ratio": result.distance_ratio, "verdict": result.verdict,
                                "family": result.family, "outcome": outcome if m.open_set else None,
                                "leads": None if result.resampling is None else result.resampling["leads"]})
    if refs and not predictions:  # every generator has one instance
        return Evaluation(name or str(matcher), opts, 0, 0, labels, confusion, [],
                          error="every generator has one instance: left out, none of its generator is left to "
                                "name it; enrol a second run of some")
    open_set = ({"answered_right": right, "answered_family": family, "answered_wrong": wrong, "unknown": unknown}
                if open_set_used else None)
    return Evaluation(name or str(matcher), opts, len(predictions), correct, labels, confusion, predictions,
                      open_set, operating_point=operating_point,
                      pooled_cells=len(pool.cells) if pool is not None and open_set_used else None,
                      resampling=resampling_record(turned, resamples) if open_set_used else None)


def calibration_stability(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha",
                          **options: Any) -> dict[str, Any]:
    """How far each open-set threshold moves when one reference is left out of the calibration.

    The thresholds are cut between few points, so one run more or less can move them: each reference
    is dropped in turn and :func:`calibrate` rerun on the rest. Per threshold: the full calibration's
    value, the lowest and highest over the drops, and how many drops left it unused (null); per drop,
    the run left out and the thresholds it gave."""
    refs = list(references)
    make = _factory(matcher, options)
    full = calibrate(make(), refs)
    runs = []
    for i, r in enumerate(refs):
        c = calibrate(make(), refs[:i] + refs[i + 1:])
        runs.append({"left_out": f"{r.generator}/{r.instance}", **{k: c.get(k) for k in THRESHOLDS}})
    summary = {}
    for k in THRESHOLDS:
        used = [run[k] for run in runs if run[k] is not None]
        summary[k] = {"full": full.get(k), "min": min(used) if used else None, "max": max(used) if used else None,
                      "unused": len(runs) - len(used)}
    return {"n_references": len(refs), "thresholds": summary, "runs": runs}


def leave_generator_out(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha", *,
                        queries: Mapping[str, Sequence[Any]] | None = None,
                        operating_point: str = DEFAULT_OPERATING_POINT, pool: Pool | None = None,
                        resamples: Mapping[str, Sequence[np.ndarray]] | None = None,
                        **options: Any) -> dict[str, Any]:
    """Leave each whole generator out and attribute its instances: the open-set test.

    Every such instance should come out "unknown"; ``unknown_rate`` is the fraction that did. A run that
    names its own generator's family (another generator of it stays enrolled) is counted as ``family``:
    neither unknown nor wrong. One named as another generator *of its own family* (a sampler of one network
    named as a sibling sampler: the network right, the sampler not) is counted in ``sibling`` as well as in
    ``attributed_to``: still wrong, but not as wrong as an unrelated generator. ``queries``, ``operating_point``,
    ``pool`` and ``resamples`` as :func:`leave_one_out` takes them (a pool's thresholds chosen without the points
    of the left-out generator's instances; ``resampling`` counts the names the rule turned into "unknown").
    """
    check_operating_point(operating_point)
    refs = list(references)
    queries = queries or {}
    make = _factory(matcher, options)
    per: dict[str, Any] = {}
    total = unknown = in_family = siblings = turned = 0
    resamples = _held_to_rule(make, resamples)
    family_of = {r.generator: r.family for r in refs}
    for g in sorted({r.generator for r in refs}):
        rest = [r for r in refs if r.generator != g]
        held = [r for r in refs if r.generator == g]
        m = make()
        try:
            m = _answering(m.fit(rest, queries or None), pool, refs,
                           [r.instance for r in held]).at_operating_point(operating_point)
        except UsageError as exc:
            per[g] = {"n": len(held), "error": str(exc)}
            continue
        held_to = [(r.instance, *found) for r in held
                   for found in _answers(m, queries.get(r.instance) or [r.fingerprint],
                                         None if resamples is None else resamples[r.instance])]
        answers = [a for _, a, _ in held_to]
        turned += sum(t for _, _, t in held_to)
        outcomes = [_left_out_outcome(a, held[0].family) for a in answers]
        n_unknown = outcomes.count("unknown")
        n_family = outcomes.count("family")
        named: dict[str, int] = {}
        for a in answers:
            if a.named is not None:
                named[a.named] = named.get(a.named, 0) + 1
        own = held[0].family
        n_sibling = 0 if own is None else sum(k for other, k in named.items() if family_of.get(other) == own)
        per[g] = {"n": len(answers), "unknown": n_unknown, "family": n_family, "sibling": n_sibling,
                  "attributed_to": named,
                  "runs": [{"instance": who, "outcome": how, "named": a.named}
                           for (who, a, _), how in zip(held_to, outcomes)]}
        total += len(answers)
        unknown += n_unknown
        in_family += n_family
        siblings += n_sibling
    return {"n": total, "unknown": unknown, "unknown_rate": unknown / total if total else None,
            "family": in_family, "sibling": siblings, "operating_point": operating_point,
            "resampling": resampling_record(turned, resamples), "per_generator": per}


def _left_out_outcome(answer: Any, family: str | None) -> str:
    """How a run of a generator left out of the references was answered: "unknown", "family" (its own
    family named, another generator of it staying enrolled) or "named" (a generator named)."""
    if answer.named is None:
        return "unknown"
    if answer.verdict is None and answer.family is not None and answer.family == family:
        return "family"
    return "named"


def holdout(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha",
            is_query: Callable[[EnrolledCurve], bool] | None = None,
            operating_point: str = DEFAULT_OPERATING_POINT, **options: Any) -> dict[str, Any]:
    """Fit on the references that are not queries, attribute the queries (the paper's split).

    By default the queries are the instances whose provenance ``role`` is ``test_batch``.
    """
    if is_query is None:
        is_query = lambda r: r.provenance.get("role") == "test_batch"  # noqa: E731
    refs = list(references)
    queries = [r for r in refs if is_query(r)]
    train = [r for r in refs if not is_query(r)]
    if not queries or not train:
        raise UsageError("a hold-out split needs both query and reference instances")
    m = _factory(matcher, options)().fit(train).at_operating_point(operating_point)
    rows = []
    for q in queries:
        res = m.attribute(q.fingerprint)
        rows.append({"generator": q.generator, "instance": q.instance, "predicted": res.candidates[0].generator,
                     "verdict": res.verdict, "family": res.family, "score": res.candidates[0].score,
                     "margin": res.margin, "distance_ratio": res.distance_ratio, "own_family": q.family})
    correct = sum(r["predicted"] == r["generator"] for r in rows)
    return {"n": len(rows), "correct": correct, "accuracy": correct / len(rows), "n_references": len(train),
            "answered_right": sum(r["verdict"] == r["generator"] for r in rows),
            "answered_family": sum(r["verdict"] is None and r["family"] is not None and r["family"] == r["own_family"]
                                   for r in rows),
            "unknown": sum(r["verdict"] is None and r["family"] is None for r in rows),
            "queries": [{k: v for k, v in r.items() if k != "own_family"} for r in rows]}
