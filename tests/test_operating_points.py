"""Operating points: the open-set thresholds calibration chooses when the analyst leans towards naming
(``named``) or towards "unknown" (``cautious``) among the triples balanced accuracy cannot tell apart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forensics.errors import UsageError
from forensics.match import EnrolledCurve, make_matcher
from forensics.match.calibration import OPERATING_POINTS, calibrate, thresholds
from forensics.match.types import CalibrationPoints
from forensics.protocol import Fingerprint

DIGEST = "sha256:" + "2" * 64


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


def overlapping_refs(seed=0, per=3, gens=("a", "b", "c", "d"), n_layers=5, spread=0.6):
    """Generators whose runs overlap: leave-one-out gets some wrong, so the thresholds have a choice."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(gens), n_layers))
    return [EnrolledCurve(g, f"{g}{i}", Fingerprint.from_values(DIGEST, (c + rng.normal(0, spread, n_layers)).tolist()))
            for g, c in zip(gens, centres) for i in range(per)]


def random_points(seed):
    """25 answers and 35 unknowns that overlap on every axis; a few ratios NaN (no spread to measure)."""
    rng = np.random.default_rng(seed)

    def draw(n, shift):
        score = rng.normal(0.6 + shift, 0.15, n)
        margin = np.abs(rng.normal(0.05 + shift / 4, 0.04, n))
        ratio = np.exp(rng.normal(0.3 - 2 * shift, 0.5, n))
        ratio[rng.random(n) < 0.08] = math.nan
        return [tuple(map(float, p)) for p in zip(score, margin, ratio)]

    return draw(25, 0.15), draw(35, 0.0)


def brute_force(answer, unknown):
    """Every triple of cuts at the points' own values: (share of answers kept, of unknowns caught)."""
    a, u = np.array(answer), np.array(unknown)
    both = np.concatenate([a, u])
    scores = np.unique(np.r_[-np.inf, both[:, 0]])
    margins = np.unique(np.r_[-np.inf, both[:, 1]])
    ratios = np.unique(np.r_[np.inf, both[~np.isnan(both[:, 2]), 2]])

    def passes(p):  # scores × margins × ratios × points
        return ((p[None, None, None, :, 0] >= scores[:, None, None, None])
                & (p[None, None, None, :, 1] >= margins[None, :, None, None])
                & ~(p[None, None, None, :, 2] > ratios[None, None, :, None]))

    return passes(a).mean(axis=3), 1.0 - passes(u).mean(axis=3)


@pytest.mark.parametrize("seed", range(4))
def test_operating_points_lean_within_one_standard_error_as_a_brute_force_finds(seed):
    answer, unknown = random_points(seed)

    class Given:
        def calibration_points(self, references):
            return CalibrationPoints(answer, unknown, "given", [], [])

    cal = calibrate(Given(), overlapping_refs())
    points = cal["operating_points"]
    assert list(points) == list(OPERATING_POINTS) and cal["operating_point"] == "balanced"
    kept, caught = brute_force(answer, unknown)
    ba = (kept + caught) / 2
    best = ba.max()
    top = ba >= best - 1e-12
    ka, cu = kept[top], caught[top]
    se = np.max(0.5 * np.sqrt(ka * (1 - ka) / len(answer) + cu * (1 - cu) / len(unknown)))
    near = ba >= best - se - 1e-12
    assert points["balanced"]["balanced_accuracy"] == pytest.approx(best, abs=1e-12)
    # named: the most answers any near-best triple keeps (the ratio cap never drops an answer, only catches more)
    most = kept[near].max()
    named = points["named"]
    assert named["answered_right"] == pytest.approx(most, abs=1e-12)
    assert named["unknown_right"] >= caught[near & (kept >= most - 1e-12)].max() - 1e-12
    # cautious: the most unknowns any near-best triple catches, keeping as many answers as that allows
    caught_most = caught[near].max()
    cautious = points["cautious"]
    assert cautious["unknown_right"] >= caught_most - 1e-12
    assert cautious["answered_right"] == pytest.approx(kept[near & (caught >= caught_most - 1e-12)].max(), abs=1e-12)
    for p in points.values():
        assert p["balanced_accuracy"] >= best - se - 1e-12
    assert named["answered_right"] >= points["balanced"]["answered_right"]
    assert cautious["unknown_right"] >= points["balanced"]["unknown_right"]
    # each point's recorded shares are those of its own thresholds on the points
    a, u = np.array(answer), np.array(unknown)
    for p in points.values():
        s, m, r = thresholds(p)
        ok = lambda x: (x[:, 0] >= s) & (x[:, 1] >= m) & ~(x[:, 2] > r)  # noqa: E731
        assert p["answered_right"] == pytest.approx(ok(a).mean())
        assert p["unknown_right"] == pytest.approx(1 - ok(u).mean())


def test_pass_counts_are_those_of_every_triple_counted_point_by_point():
    """The grid search's counts (a histogram's suffix sums) against each point tested at each triple, on
    more distinct values than there are cuts (so cuts fall between points, at quantiles), with ties, margins
    without a runner-up (+∞), zero spreads (ratio +∞) and ratios that cannot be measured (NaN)."""
    from forensics.match.calibration import _cuts, _passing_counts

    rng = np.random.default_rng(5)
    n = 900
    score = np.round(rng.normal(0.6, 0.1, n), 3)  # rounded: ties
    margin = np.abs(rng.normal(0.03, 0.02, n))
    margin[rng.random(n) < 0.03] = math.inf
    ratio = np.exp(rng.normal(0.2, 0.6, n))
    ratio[rng.random(n) < 0.05] = math.nan
    ratio[rng.random(n) < 0.02] = math.inf
    closeness = np.where(np.isnan(ratio), math.inf, -ratio)  # as the search tests it: value ≥ cut
    values = np.stack([score, margin, closeness], axis=1)
    values[:4, 0] = math.nan  # a score that is no number passes no cut, not even −∞
    cuts = [_cuts(values[:, k]) for k in range(3)]
    assert all(len(c) == 65 for c in cuts)
    counts = _passing_counts(values, cuts)
    assert counts.shape == (65, 65, 65)
    for k, i, j in [(0, 0, 0), (64, 64, 64), *map(tuple, rng.integers(0, 65, (300, 3)))]:
        direct = ((values[:, 0] >= cuts[0][i]) & (values[:, 1] >= cuts[1][j]) & (values[:, 2] >= cuts[2][k])).sum()
        assert counts[k, i, j] == direct, (k, i, j)
    assert counts[0, 0, 0] == n - 4


def test_the_thresholds_differ_between_points_where_balanced_accuracy_cannot_choose():
    # seeds whose near-ties keep different shares: the points are not the same triple under three names
    found = set()
    for seed in range(4):
        answer, unknown = random_points(seed)

        class Given:
            def calibration_points(self, references):
                return CalibrationPoints(answer, unknown, "given", [], [])

        pts = calibrate(Given(), overlapping_refs())["operating_points"]
        found.add(pts["named"]["answered_right"] > pts["cautious"]["answered_right"])
    assert True in found


def test_a_fitted_matcher_answers_at_another_point_from_the_same_fit():
    refs = overlapping_refs()
    m = make_matcher("alpha").fit(refs)
    assert m.calibration["calibrated"] and m.calibration["operating_point"] == "balanced"
    queries = [r.fingerprint.vector() + np.random.default_rng(i).normal(0, 0.3, 5) for i, r in enumerate(refs)]
    for point in OPERATING_POINTS:
        at = m.at_operating_point(point)
        chosen = m.calibration["operating_points"][point]
        assert at.calibration["operating_point"] == point
        assert thresholds(at.calibration) == thresholds(chosen)
        assert at.calibration["lookalikes"] == chosen["lookalikes"]
        t_score, t_margin, t_ratio = thresholds(chosen)
        for q in queries:
            res = at.attribute(q)
            assert [c.generator for c in res.candidates] == [c.generator for c in m.rank(q)]  # the same fit
            passes = (res.candidates[0].score >= t_score and (res.margin is None or res.margin >= t_margin)
                      and not (res.distance_ratio is not None and res.distance_ratio > t_ratio))
            assert (res.named is not None) == passes
            if point != "balanced":
                assert f"{point} operating point" in res.reason
            # every answer also says what each point would have answered, and that is what each point answers
            assert set(res.at_operating_points) == set(OPERATING_POINTS)
            assert res.at_operating_points[point] == {"generator": res.verdict, "family": res.family}
            for other in OPERATING_POINTS:
                there = m.at_operating_point(other).attribute(q)
                assert res.at_operating_points[other] == {"generator": there.verdict, "family": there.family}
    assert m.calibration["operating_point"] == "balanced"  # the original is untouched
    assert len({thresholds(p) for p in m.calibration["operating_points"].values()}) > 1  # they do differ here


def test_how_a_verdict_depends_on_the_point_is_one_line():
    from forensics.report.terminal import operating_points_text

    same = {p: {"generator": "ddpm", "family": None} for p in OPERATING_POINTS}
    assert operating_points_text({"at_operating_points": same}) == ("the same at every operating point", False)
    differs = {**same, "named": {"generator": None, "family": "ddpm-net"}, "cautious": {"generator": None,
                                                                                         "family": None}}
    assert operating_points_text({"at_operating_points": differs}) == (
        "depends on the operating point: balanced → ddpm · named → family ddpm-net · cautious → unknown", True)
    assert operating_points_text({"at_operating_points": {}}) is None  # not calibrated: nothing to say
    closed = make_matcher("alpha", open_set=False).fit(overlapping_refs())
    assert closed.attribute(overlapping_refs()[0].fingerprint).at_operating_points == {}


def test_an_unknown_operating_point_is_one_line_naming_the_points():
    m = make_matcher("alpha").fit(overlapping_refs())
    with pytest.raises(UsageError, match=r"unknown operating point 'lenient': choose one of balanced, named, cautious"):
        m.at_operating_point("lenient")


def test_a_calibration_recorded_before_operating_points_serves_balanced_and_is_redone_for_another():
    from forensics.api import _registry_matcher

    refs = overlapping_refs()
    cal = make_matcher("alpha").fit(refs).calibration
    old = {k: v for k, v in cal.items() if k not in ("operating_points", "operating_point")}
    m = make_matcher("alpha", calibration=old).fit(refs)
    assert m.calibration["source"] == "recorded"
    assert thresholds(m.at_operating_point("balanced").calibration) == thresholds(cal)
    with pytest.raises(UsageError, match="forensics registry calibrate"):
        m.at_operating_point("named")

    class Registry:
        def calibration(self, protocol, name):
            return old

    redone = _registry_matcher(Registry(), "p", "alpha", refs, "named")
    assert redone.calibration["source"] == "calibrated at fit" and redone.calibration["operating_point"] == "named"
    assert thresholds(redone.calibration) == thresholds(cal["operating_points"]["named"])
    kept = _registry_matcher(Registry(), "p", "alpha", refs)
    assert kept.calibration["source"] == "recorded"


def test_evaluation_answers_at_the_point_asked():
    from forensics.match import leave_generator_out, leave_one_out

    refs = overlapping_refs(per=3)
    by_point = {p: leave_one_out(refs, "alpha", operating_point=p) for p in OPERATING_POINTS}
    for p, ev in by_point.items():
        assert ev.operating_point == p and ev.to_dict()["operating_point"] == p
        assert leave_generator_out(refs, "alpha", operating_point=p)["operating_point"] == p
    # one fit per fold, so the closed-set answers are the same at every point
    assert len({ev.correct for ev in by_point.values()}) == 1
    with pytest.raises(UsageError, match="unknown operating point"):
        leave_one_out(refs, "alpha", operating_point="bold")
