"""Pooled open-set thresholds: one triple per operating point chosen on the calibration points of many
(condition, batch size) cells, answering at every cell (``forensics.match.calibration.Pool``)."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.errors import UsageError
from forensics.match import make_matcher
from forensics.match.calibration import (
    ADOPTION_LEVEL, OPERATING_POINTS, POOL_RULE, THRESHOLDS, Pool, adoption, calibrate, pool_adoption, pool_applies,
    pool_sizes, thresholds,
)
from forensics.match.evaluation import leave_generator_out, leave_one_out
from forensics.match.types import CalibrationPoints, references_digest
from forensics.registry.schema import Problems, parse_calibration

from test_operating_points import overlapping_refs, random_points


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


def tagged(answer, unknown, seed=0, instances=("a0", "a1", "b0", "b1", "c0")):
    """The points with a held-out instance each, drawn at random (seeded)."""
    rng = np.random.default_rng(seed)
    return CalibrationPoints(answer, unknown, "given", [], [], [str(rng.choice(instances)) for _ in answer],
                             [str(rng.choice(instances)) for _ in unknown])


class Given:
    """A matcher whose calibration points are given (what `calibrate` chooses on them is the reference)."""

    def __init__(self, points):
        self.points = points

    def calibration_points(self, references):
        return self.points


def test_pool_sizes_are_shares_of_the_protocols_batch():
    assert pool_sizes(500) == [100, 200, 300, 500]
    assert pool_sizes(100) == [20, 40, 60, 100]
    assert pool_sizes(3) == [2, 3]  # (never a batch of fewer than two)


def test_a_pools_thresholds_are_those_calibration_chooses_on_all_its_cells_points_together():
    refs = overlapping_refs()
    pool, answer, unknown = Pool(), [], []
    for seed, (condition, size) in enumerate([("none", 100), ("jpeg90", 100), ("none", 300)]):
        a, u = random_points(seed)
        pool.add(condition, size, tagged(a, u, seed))
        answer += a
        unknown += u
    record = pool.record(refs)
    whole = calibrate(Given(CalibrationPoints(answer, unknown, "given", [], [])), refs)
    assert (record["n_answer"], record["n_unknown"], record["n_cells"]) == (75, 105, 3)
    assert record["conditions"] == ["jpeg90", "none"] and record["sizes"] == [100, 300]
    assert record["rule"] == POOL_RULE and record["references_digest"] == references_digest(refs)
    for point in OPERATING_POINTS:
        mine, theirs = record["operating_points"][point], whole["operating_points"][point]
        for key in (*THRESHOLDS, "balanced_accuracy", "answered_right", "unknown_right"):
            assert mine[key] == theirs[key], (point, key)


def test_leaving_instances_out_of_a_pool_is_a_pool_without_their_points():
    refs = overlapping_refs()
    full, kept = Pool(), Pool()
    for seed in range(3):
        points = tagged(*random_points(seed), seed)
        full.add("none", 100 * (seed + 1), points)
        keep_a = [i for i, who in enumerate(points.answer_from) if who not in ("a0", "b1")]
        keep_u = [i for i, who in enumerate(points.unknown_from) if who not in ("a0", "b1")]
        kept.add("none", 100 * (seed + 1), CalibrationPoints(
            [points.answer[i] for i in keep_a], [points.unknown[i] for i in keep_u], "given", [], [],
            [points.answer_from[i] for i in keep_a], [points.unknown_from[i] for i in keep_u]))
    assert full.record(refs, without=["b1", "a0"]) == kept.record(refs)
    assert full.record(refs, without=["b1", "a0"]) != full.record(refs)
    # points that do not say where they came from cannot leave a fold's own out
    untagged = Pool()
    untagged.add("none", 100, CalibrationPoints(*random_points(0), "given", [], []))
    assert untagged.record(refs) is not None and untagged.record(refs, without=["a0"]) is None
    assert Pool().record(refs) is None


def test_a_cell_answering_with_pooled_thresholds_keeps_its_own_confusions_and_finds_its_lookalikes_again():
    refs = overlapping_refs(seed=3)
    cell = make_matcher("alpha").fit(refs)
    pool = Pool()
    for seed in range(2):
        pool.add("jpeg90", 100 * (seed + 1), tagged(*random_points(seed), seed))
    record = pool.record(refs)
    pooled = cell.with_pooled_thresholds(record)
    assert cell.calibration.get("pooled") is None  # (a copy: the cell's own is as it was)
    cal = pooled.calibration
    assert cal["pooled"] == record and cal["thresholds_from"] == "pooled"
    assert cal["confusions"] == cell.calibration["confusions"]
    assert cal["n_references"] == len(refs) and cal["operating_point"] == "balanced"
    for point in OPERATING_POINTS:
        at = cal["operating_points"][point]
        assert {k: at[k] for k in THRESHOLDS} == {k: record["operating_points"][point][k] for k in THRESHOLDS}
        # lookalikes: the cell's left-out generators' points that pass the pooled thresholds
        t_score, t_margin, t_ratio = thresholds(at)
        passed: dict[str, dict[str, int]] = {}
        for own, named, (score, margin, ratio) in cell.held_out_points.left_out:
            if score >= t_score and margin >= t_margin and not ratio > t_ratio:
                passed.setdefault(named, {}).setdefault(own, 0)
                passed[named][own] += 1
        assert {g: {o: k for o, (k, _) in d.items()} for g, d in at["lookalikes"].items()} == passed
    assert {k: cal[k] for k in THRESHOLDS} == {k: record["operating_points"]["balanced"][k] for k in THRESHOLDS}
    cautious = pooled.at_operating_point("cautious").calibration
    assert cautious["margin"] == record["operating_points"]["cautious"]["margin"]
    # every verdict says its thresholds were pooled, and over how many cells
    answer = pooled.attribute(refs[0].fingerprint)
    assert answer.threshold["pooled_cells"] == 2 and "pooled over 2 (condition, batch size) cells" in answer.reason
    assert cell.attribute(refs[0].fingerprint).threshold["pooled_cells"] is None
    # a pool recorded beside a calibration but not adopted does not answer, and no verdict says it does
    from forensics.match.calibration import threshold_info

    beside = {**cell.calibration, "pooled": {**record, "adopted": False}}
    assert threshold_info(beside)["pooled_cells"] is None


def test_a_pool_answers_only_where_adopted_and_for_the_references_and_rule_it_was_chosen_under():
    refs = overlapping_refs()
    pool = Pool()
    pool.add("none", 100, tagged(*random_points(0)))
    record = {**pool.record(refs), "adopted": True}
    assert pool_applies(record, refs)
    assert not pool_applies({**record, "adopted": False}, refs)
    assert not pool_applies(record, refs[1:]) and not pool_applies(None, refs)
    assert not pool_applies({**record, "rule": "an older rule"}, refs)
    # its triples chosen by another calibration rule (one recorded before a change to it): not this version's
    assert not pool_applies({**record, "calibration_rule": "an older rule"}, refs)
    assert not pool_applies({k: v for k, v in record.items() if k != "calibration_rule"}, refs)


def brute_force_chance(own, pooled):
    """P(shortfall ≥ observed) by enumerating every sign of every discordant query (the independent reference)."""
    import itertools

    terms, observed = [], 0.0
    for mine, theirs in zip(own, pooled):
        w = 0.5 / len(mine)
        observed += sum(w * (a - b) for a, b in zip(mine, theirs))
        terms += [w for a, b in zip(mine, theirs) if a != b]
    hits = sum(sum(s * w for s, w in zip(signs, terms)) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(terms)))
    return hits / 2 ** len(terms)


def outcomes(loo_right, loo_n, lgo_caught, lgo_n):
    return [True] * loo_right + [False] * (loo_n - loo_right), [True] * lgo_caught + [False] * (lgo_n - lgo_caught)


def test_adoption_compares_the_two_calibrations_on_the_same_queries():
    own = outcomes(23, 27, 25, 27)
    same = adoption(own, own)
    assert same["adopted"] and same["chance"] == 1.0 and same["standard_error"] == 0.0
    assert same["balanced_accuracy"] == same["own_balanced_accuracy"] == pytest.approx(0.5 * (23 / 27 + 25 / 27))
    assert (same["pool_lost"], same["pool_gained"]) == (0, 0)
    assert adoption(own, outcomes(24, 27, 26, 27))["adopted"]  # better
    # every run named, but 9 more left-out runs let through: far more lost than chance would lose
    fell = adoption(own, outcomes(27, 27, 16, 27))
    assert not fell["adopted"] and (fell["pool_lost"], fell["pool_gained"]) == (9, 4)
    assert fell["balanced_accuracy"] < fell["own_balanced_accuracy"] - fell["standard_error"]


def test_one_query_lost_never_declines_a_pool_even_against_a_perfect_score():
    # a perfect own score has no spread to measure a loss against; the queries the two answer apart do
    perfect = outcomes(30, 30, 30, 30)
    one = adoption(perfect, outcomes(29, 30, 30, 30))
    assert one["adopted"] and one["chance"] == pytest.approx(0.5)
    assert adoption(perfect, outcomes(28, 30, 30, 30))["adopted"]  # two: a quarter of the time by chance
    three = adoption(perfect, outcomes(27, 30, 30, 30))
    assert not three["adopted"] and three["chance"] == pytest.approx(1 / 8)


@pytest.mark.parametrize("seed", range(12))
def test_adoptions_chance_is_exact_against_every_sign_of_the_discordant_queries(seed):
    rng = np.random.default_rng(seed)
    n_loo, n_lgo = (int(k) for k in rng.integers(3, 9, size=2))
    own = [[bool(v) for v in rng.random(n) < 0.8] for n in (n_loo, n_lgo)]
    pooled = [[a if rng.random() < 0.6 else not a for a in part] for part in own]
    found = adoption(own, pooled)
    assert found["chance"] == pytest.approx(brute_force_chance(own, pooled))
    assert found["adopted"] == (found["chance"] >= ADOPTION_LEVEL)
    discordant = [(a, b, 0.5 / len(part)) for part, theirs in zip(own, pooled) for a, b in zip(part, theirs) if a != b]
    assert found["pool_lost"] == sum(a and not b for a, b, _ in discordant)
    assert found["pool_gained"] == sum(b and not a for a, b, _ in discordant)
    assert found["standard_error"] == pytest.approx(np.sqrt(sum(w * w for *_, w in discordant)))


@pytest.mark.parametrize("seed", range(3))
def test_pool_adoption_judges_each_folds_points_at_every_cell_by_thresholds_chosen_without_them(seed):
    refs = overlapping_refs()
    pool = Pool()
    for k, (condition, size) in enumerate([("none", 100), ("jpeg90", 100), ("none", 40)]):
        pool.add(condition, size, tagged(*random_points(10 * seed + k), seed=10 * seed + k))
    found = pool_adoption(pool, folds=3)
    # the same, independently: the pool's record without the fold, each cell calibrated without it, by hand
    instances = sorted({w for p in pool.points for w in (*p.answer_from, *p.unknown_from)})
    own, pooled = ([], []), ([], [])

    def passes(v, t):
        return v[0] >= t[0] and v[1] >= t[1] and not v[2] > t[2]  # a NaN ratio passes

    for group in [instances[k::3] for k in range(3)]:
        everywhere = thresholds(pool.record(refs, without=group)["operating_points"]["balanced"])
        for p in pool.points:
            keep_a = [v for v, w in zip(p.answer, p.answer_from) if w not in group]
            keep_u = [v for v, w in zip(p.unknown, p.unknown_from) if w not in group]
            held_a = [v for v, w in zip(p.answer, p.answer_from) if w in group]
            held_u = [v for v, w in zip(p.unknown, p.unknown_from) if w in group]
            cal = calibrate(Given(CalibrationPoints(keep_a, keep_u, "given", [], [])), refs)
            if not (held_a or held_u) or not cal["calibrated"]:
                continue
            for side, t in ((own, thresholds(cal)), (pooled, everywhere)):
                side[0].extend(passes(v, t) for v in held_a)
                side[1].extend(not passes(v, t) for v in held_u)
    assert found == {**adoption(own, pooled), "folds": 3, "n_cells": 3}
    assert len(own[0]) == sum(len(p.answer) for p in pool.points)  # every point judged once, by its fold


def test_pool_adoption_needs_points_that_say_their_instance():
    pool = Pool()
    pool.add("none", 100, CalibrationPoints(*random_points(0), "given", [], []))
    assert pool_adoption(pool) is None


def test_adoption_refuses_evaluations_of_different_queries():
    with pytest.raises(UsageError, match="same queries"):
        adoption(outcomes(3, 4, 3, 4), outcomes(3, 5, 3, 4))


def test_each_fold_of_an_evaluation_chooses_the_pooled_thresholds_without_its_own_points():
    """Whatever the held-out instance's own points in the pool, its own verdicts do not move."""
    refs = overlapping_refs(seed=5)
    instances = [r.instance for r in refs]

    def pool_with(own: str, shift: float) -> Pool:
        pool = Pool()
        for seed in range(2):
            a, u = random_points(seed)
            points = tagged(a, u, seed, instances)
            # the points of ``own``: moved far, so that with them in the pool the thresholds would differ
            answer = [(s + shift, m + shift, r) if who == own else (s, m, r)
                      for (s, m, r), who in zip(points.answer, points.answer_from)]
            pool.add("none", 100 * (seed + 1), CalibrationPoints(answer, points.unknown, "given", [], [],
                                                                  points.answer_from, points.unknown_from))
        return pool

    own = refs[4]
    one, other = pool_with(own.instance, 0.0), pool_with(own.instance, 5.0)
    assert one.record(refs) != other.record(refs)  # its points would move the thresholds
    mine = [p for p in leave_one_out(refs, "alpha", pool=one).predictions if p["instance"] == own.instance]
    theirs = [p for p in leave_one_out(refs, "alpha", pool=other).predictions if p["instance"] == own.instance]
    assert mine == theirs
    ev = leave_one_out(refs, "alpha", pool=one)
    assert ev.pooled_cells == 2 and ev.to_dict()["pooled_cells"] == 2
    assert leave_one_out(refs, "alpha").pooled_cells is None
    # leaving a generator out leaves every one of its instances' points out of its pool
    gen = own.generator
    moved = pool_with(own.instance, 5.0)
    assert (leave_generator_out(refs, "alpha", pool=one)["per_generator"][gen]
            == leave_generator_out(refs, "alpha", pool=moved)["per_generator"][gen])
    untagged = Pool()
    untagged.add("none", 100, CalibrationPoints(*random_points(0), "given", [], []))
    assert "do not say which instance" in leave_one_out(refs, "alpha", pool=untagged).error


def _calibration_file(pooled):
    return {"schema_version": 1, "matchers": {"alpha": {"options": {}, "calibrated": True, "margin": 0.1,
                                                        "pooled": pooled}}}


def test_a_recorded_pool_is_checked_like_every_threshold():
    refs = overlapping_refs()
    pool = Pool()
    pool.add("jpeg90", 100, tagged(*random_points(0)))
    pool.add("none", 200, tagged(*random_points(1)))
    good = {**pool.record(refs), "adopted": True}
    problems = Problems()
    assert "alpha" in parse_calibration(_calibration_file(good), "calibration.yaml", problems) and not problems
    bad_cases = {
        "operating_points.balanced.margin": {"operating_points": {**good["operating_points"], "balanced": {
            **good["operating_points"]["balanced"], "margin": -1.0}}},
        "operating_points": {"operating_points": {"balanced": good["operating_points"]["balanced"]}},
        "sizes": {"sizes": [100, -5]},
        "conditions": {"conditions": ["jpeg90", "not-a-condition"]},
        "n_cells": {"n_cells": True},
        "adopted": {"adopted": "yes"},
        "references_digest": {"references_digest": "abc"},
    }
    for where, change in bad_cases.items():
        problems = Problems()
        found = parse_calibration(_calibration_file({**good, **change}), "calibration.yaml", problems)
        assert "alpha" not in found, where  # a matcher with a problem is left out: calibrated again at fit
        assert any(f"matchers.alpha.pooled.{where}" in str(p) for p in problems), (where, problems)
    problems = Problems()
    assert "alpha" not in parse_calibration(_calibration_file(["not", "a", "mapping"]), "calibration.yaml", problems)
    for marker, pool in (("cell", good), ("pooled", None)):  # only "pooled", and only beside the pool it names
        doc = _calibration_file(pool)
        doc["matchers"]["alpha"]["thresholds_from"] = marker
        problems = Problems()
        assert "alpha" not in parse_calibration(doc, "calibration.yaml", problems)
        assert any("matchers.alpha.thresholds_from" in p for p in problems), problems


def test_a_pool_leaves_nothing_to_choose_without_answers_or_unknowns():
    refs = overlapping_refs()
    pool = Pool()
    pool.add("none", 100, CalibrationPoints([], [(0.5, 0.1, 1.0)], "given", [], [], [], ["a0"]))
    assert pool.record(refs) is None and Pool().record(refs) is None
    assert "no points to choose" in leave_one_out(refs, "alpha", pool=pool).error
