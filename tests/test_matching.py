"""Matchers: He et al.'s similarity and 1-NN, cosine, SVM, open-set "unknown", evaluation."""

from __future__ import annotations

import math
import types
from dataclasses import astuple, replace

import numpy as np
import pytest

from forensics import hookimpl
from forensics.errors import ProtocolMismatch, UsageError
from forensics.match import (
    Candidate,
    EnrolledCurve,
    Matcher,
    holdout,
    refit_points,
    leave_generator_out,
    leave_one_out,
    lookalike_note,
    make_matcher,
    generator_spreads,
    pairwise_distances,
    similarity,
    similarity_matrix,
)
from forensics.protocol import Fingerprint
from forensics.registry import Registry
from forensics.registry.papercurves import PROTOCOL_NAME, paper_split

DIGEST = "sha256:" + "1" * 64


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


@pytest.fixture(scope="module")
def paper_refs():
    return Registry.open().enrolled(PROTOCOL_NAME)


def toy_refs(seed=0, per=4, gens=("a", "b", "c"), n_layers=6, spread=0.05):
    """Well-separated synthetic generators: each a distinct curve shape plus small noise."""
    rng = np.random.default_rng(seed)
    refs = []
    x = np.linspace(0, 1, n_layers)
    shapes = [4 * x - 1, 2 * np.sin(6 * x) + 1, 8 * (x - 0.5) ** 2 - 1, -3 * x + 0.5, 2 * np.cos(9 * x)]
    for k, g in enumerate(gens):
        base = shapes[k]
        for i in range(per):
            v = base + rng.normal(0, spread, n_layers)
            refs.append(EnrolledCurve(g, f"{g}{i}", Fingerprint.from_values(DIGEST, v.tolist())))
    return refs


# -- similarity -----------------------------------------------------------------------------------
def test_similarity_is_the_papers_formula():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 4.0])
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    l2 = np.linalg.norm(a - b)
    assert similarity(a, b) == pytest.approx(0.5 * cos + 0.5 / (1 + l2), abs=1e-15)
    assert similarity(a, b, alpha=1.0) == pytest.approx(cos, abs=1e-15)
    assert similarity(a, b, alpha=0.2) == pytest.approx(0.2 * cos + 0.8 / (1 + l2), abs=1e-15)
    assert similarity(a, a) == pytest.approx(1.0)
    m = similarity_matrix(np.stack([a, b]), np.stack([a, b, np.zeros(3)]))
    assert m.shape == (2, 3) and np.isfinite(m).all()
    assert m[0, 2] == pytest.approx(0.5 / (1 + np.linalg.norm(a)))  # zero curve: cosine counts as 0


def test_bundled_matchers_come_through_the_plugin_host(plugin_host):
    found = plugin_host.collect("matchers")
    assert {"alpha", "cosine", "svm"} <= set(found)
    assert all(p.plugin == "matchers" for n, p in found.items() if n in ("alpha", "cosine", "svm"))
    assert make_matcher("alpha").alpha == 0.5 and make_matcher("cosine").alpha == 1.0
    assert make_matcher("alpha", alpha=0.3).options()["alpha"] == 0.3
    with pytest.raises(UsageError, match="available: .*alpha"):
        make_matcher("nope")
    with pytest.raises(UsageError, match="does not take"):
        make_matcher("alpha", bogus=1)
    with pytest.raises(UsageError, match="between 0 and 1"):
        make_matcher("alpha", alpha=2)


# -- the paper's numbers --------------------------------------------------------------------------
def test_paper_curves_leave_one_out_alpha_is_15_of_18(paper_refs):
    ev = leave_one_out(paper_refs, "alpha")
    assert (ev.correct, ev.n) == (15, 18)
    assert ev.loo_accuracy == pytest.approx(15 / 18)
    assert ev.labels == ["BigGAN", "ContraGAN", "DDIM", "DDPM", "PNDM", "SNGAN"]
    assert sum(map(sum, ev.confusion)) == 18
    assert sum(ev.confusion[i][i] for i in range(6)) == 15
    # the three misses: DDPM → SNGAN once, PNDM → DDIM twice
    assert ev.confusion[3][5] == 1 and ev.confusion[4][2] == 2


@pytest.mark.parametrize("matcher,full,small", [("alpha", 6, 5), ("cosine", 4, 4)])
def test_paper_split_full_and_small(paper_refs, matcher, full, small):
    for which, expected in (("full", full), ("small", small)):
        refs, queries = paper_split(paper_refs, which)
        assert len(queries) == 6 and len(refs) == (12 if which == "full" else 6)
        m = make_matcher(matcher, open_set=False).fit(refs)
        right = sum(m.attribute(q.fingerprint).verdict == q.generator for q in queries)
        assert right == expected, (matcher, which)


def test_holdout_uses_the_test_batch_role(paper_refs):
    result = holdout(paper_refs, "alpha")
    assert (result["correct"], result["n"], result["n_references"]) == (6, 6, 12)


@pytest.mark.slow
def test_cosine_and_svm_on_paper_curves(paper_refs):
    assert leave_one_out(paper_refs, "cosine").correct == 12
    ev = leave_one_out(paper_refs, "svm")  # rbf, C = 10: one better than the paper's 1-NN
    assert (ev.correct, ev.n) == (16, 18)
    assert holdout(paper_refs, "svm")["correct"] == 6
    assert leave_one_out(paper_refs, "svm", kernel="linear", C=1.0).correct == 15


@pytest.mark.parametrize("kernel,gamma", [("rbf", "scale"), ("rbf", "auto"), ("rbf", 0.3), ("linear", "scale"),
                                          ("poly", "scale")])
def test_svm_scores_are_scikit_learns_decision_values(kernel, gamma):
    from forensics.match.svm import SVMMatcher

    rng = np.random.default_rng(0)
    curves = rng.normal(size=(27, 17)) + np.repeat(rng.normal(size=(9, 17)), 3, axis=0)
    labels = np.repeat([f"g{i}" for i in range(9)], 3)
    m = SVMMatcher(kernel=kernel, gamma=gamma)
    m.fit_curves(curves, labels, [f"i{i}" for i in range(27)])
    for query in [*curves[:3], *rng.normal(size=(20, 17)) * 2]:
        z = ((query - m._mean) / m._scale)[None, :]
        want = [model.decision_function(z)[0] for model in m._models]  # scikit-learn's own, per call
        assert [c.score for c in m.candidates(query)] == pytest.approx(want, rel=0, abs=1e-12)


# -- attribution ----------------------------------------------------------------------------------
def test_attribution_ranks_one_candidate_per_generator(paper_refs):
    m = make_matcher("alpha", open_set=False).fit(paper_refs)
    q = paper_refs[0]
    res = m.attribute(q.fingerprint)
    gens = [c.generator for c in res.candidates]
    assert sorted(gens) == sorted(set(r.generator for r in paper_refs))
    scores = [c.score for c in res.candidates]
    assert scores == sorted(scores, reverse=True)
    assert res.candidates[0].score == pytest.approx(1.0)  # the query itself is a reference
    assert res.margin == pytest.approx(scores[0] - scores[1])
    assert res.verdict == q.generator and res.candidates[0].instance == q.instance
    assert res.threshold is None and res.to_dict()["candidates"][0]["generator"] == q.generator
    # an array works too, NaN counting as 0 (He et al.)
    v = q.fingerprint.vector().copy()
    v[0] = math.nan
    assert m.attribute(v).verdict == q.generator


def test_refuses_other_protocols_and_lengths():
    refs = toy_refs()
    m = make_matcher("alpha").fit(refs)
    with pytest.raises(ProtocolMismatch):
        m.attribute(Fingerprint.from_values("sha256:" + "2" * 64, [0.0] * 6))
    with pytest.raises(UsageError, match="5 values"):
        m.attribute(np.zeros(5))
    mixed = refs + [EnrolledCurve("d", "d0", Fingerprint.from_values("sha256:" + "2" * 64, [0.0] * 6))]
    with pytest.raises(ProtocolMismatch):
        make_matcher("alpha").fit(mixed)
    with pytest.raises(UsageError, match="no reference"):
        make_matcher("alpha").fit([])
    with pytest.raises(UsageError, match="two generators"):
        make_matcher("svm").fit([r for r in refs if r.generator == "a"])
    with pytest.raises(UsageError, match="not been fitted"):
        make_matcher("alpha").attribute(np.zeros(6))


# -- open set -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alpha", "cosine", "svm"])
def test_open_set_says_unknown_for_a_generator_left_out(name):
    refs = toy_refs(per=4, gens=("a", "b", "c", "d"))
    known = [r for r in refs if r.generator != "d"]
    m = make_matcher(name).fit(known)
    cal = m.calibration
    assert cal["calibrated"] and cal["n_references"] == 12 and "balanced accuracy" in cal["rule"]
    assert cal["references_digest"] == m.describe()["references_digest"]
    for r in refs:
        res = m.attribute(r.fingerprint)
        if r.generator == "d":
            assert res.verdict is None and res.reason.startswith("unknown"), (name, res)
            assert res.candidates  # still ranked
        else:
            assert res.verdict == r.generator, (name, res.reason)
        assert res.threshold["score"] == cal["score"]
    lgo = leave_generator_out(refs, name)
    assert lgo["unknown"] == lgo["n"] == 16


def test_open_set_on_paper_curves_leaving_each_generator_out(paper_refs):
    closed = leave_one_out(paper_refs, "alpha", open_set=False)
    assert closed.open_set is None and closed.correct == 15  # 1-NN over the paper's 18 published curves
    ev = leave_one_out(paper_refs, "alpha")
    # the open set trades answers for safety: fewer wrong answers than the closed set's, most right ones kept
    assert ev.open_set["answered_wrong"] < len(paper_refs) - closed.correct
    # DDPM, DDIM and PNDM share one network (their family): where calibration confuses them it is named
    assert ev.open_set["answered_right"] + ev.open_set["answered_family"] >= closed.correct // 2
    lgo = leave_generator_out(paper_refs, "alpha")
    # a floor: a generator the references do not hold is "unknown" in at least two runs of three
    assert lgo["n"] == 18 and lgo["unknown"] >= 12


def test_spread_is_the_median_nearest_neighbour_distance_within_a_generator():
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    labels = np.array(["a", "a", "a", "b"], dtype=object)
    spreads = generator_spreads(pairwise_distances(x, x), labels)
    assert spreads["a"] == 1.0  # nearest-other distances 1, 1, 2
    assert spreads["b"] == 1.0  # one curve: the pooled median over every generator's curves
    assert generator_spreads(pairwise_distances(x[2:], x[2:]), labels[2:]) == {"a": None, "b": None}


def sibling_refs(offset=0.4):
    """Generators a, b, c and two near siblings (as two samplers of one network): b2 and a2, the shapes
    of b and a shifted by ``offset`` in every layer -- far closer to their sibling than to anything
    else, yet many spreads away from it."""
    refs = toy_refs(per=4, gens=("a", "b", "c"), spread=0.03)
    for r in toy_refs(per=4, gens=("a", "b"), spread=0.03, seed=1):
        shifted = Fingerprint.from_values(DIGEST, (np.array(r.fingerprint.values) + offset).tolist())
        refs.append(EnrolledCurve(r.generator + "2", "sibling-" + r.instance, shifted))
    return refs


def test_a_near_sibling_left_out_is_unknown_by_the_distance_ratio():
    # calibrated with one pair of siblings (b, b2) enrolled, the matcher meets a2, whose sibling a is enrolled
    refs = sibling_refs()
    known = [r for r in refs if r.generator != "a2"]
    m = make_matcher("alpha").fit(known)
    assert m.calibration["distance_ratio"] is not None
    for r in refs:
        res = m.attribute(r.fingerprint)
        if r.generator == "a2":
            # a is by far the best candidate, but the query sits many of a's spreads from a's curves
            assert res.candidates[0].generator == "a" and res.verdict is None, res.reason
            assert res.distance_ratio > m.calibration["distance_ratio"]
            assert res.reason.startswith("unknown: the query lies") and "spread" in res.reason
        else:
            assert res.verdict == r.generator and res.distance_ratio <= m.calibration["distance_ratio"]
            assert res.to_dict()["distance_ratio"] == res.distance_ratio
    # with a2 enrolled, every instance of both siblings is answered right
    assert leave_one_out(refs, "alpha").open_set == {"answered_right": 20, "answered_family": 0, "answered_wrong": 0, "unknown": 0}
    assert leave_generator_out(refs, "alpha")["unknown"] == 20


def test_distance_ratio_is_measured_on_the_curves_for_any_matcher():
    refs = toy_refs()
    alpha, svm = make_matcher("alpha").fit(refs), make_matcher("svm").fit(refs)
    q = np.array(refs[0].fingerprint.values) + 0.01
    assert alpha.distance_ratio(q, "a") == pytest.approx(svm.distance_ratio(q, "a"), abs=1e-15)
    with pytest.raises(UsageError, match="no reference curve"):
        alpha.distance_ratio(q, "zz")


def test_uncalibratable_references_fall_back_to_closed_set():
    refs = toy_refs(per=1)
    m = make_matcher("alpha").fit(refs)
    assert m.calibration["calibrated"] is False
    res = m.attribute(refs[0].fingerprint)
    assert res.verdict == "a" and "unavailable" in res.reason


def test_recorded_calibration_is_reused_only_for_the_same_references():
    refs = toy_refs()
    cal = make_matcher("alpha").fit(refs).calibration
    points = cal["operating_points"]
    recorded = {**cal, "operating_points": {**points, "balanced": {**points["balanced"], "score": 0.123}}}
    m = make_matcher("alpha", calibration=recorded).fit(refs)
    assert m.calibration["score"] == 0.123 and m.calibration["source"] == "recorded"
    m2 = make_matcher("alpha", calibration=recorded).fit(refs[:-1])
    assert m2.calibration["source"] == "calibrated at fit" and m2.calibration["score"] != 0.123
    # a calibration recorded under an older rule (no distance ratio) is not reused either
    older = {k: v for k, v in recorded.items() if k != "distance_ratio"} | {"rule": "thresholds on (score, margin)"}
    m3 = make_matcher("alpha", calibration=older).fit(refs)
    assert m3.calibration["source"] == "calibrated at fit" and "distance ratio" in m3.calibration["rule"]


def test_describe_is_json_ready():
    import json

    m = make_matcher("svm", kernel="rbf", C=3).fit(toy_refs())
    d = m.describe()
    assert d["name"] == "svm" and d["options"] == {"kernel": "rbf", "C": 3.0, "gamma": "scale", "open_set": True}
    json.dumps(d, allow_nan=False)
    alpha = make_matcher("alpha").fit(Registry.open().enrolled(PROTOCOL_NAME))
    assert alpha.calibration["score"] is None  # not applied: recorded as null, never -inf
    json.dumps(alpha.describe(), allow_nan=False)


class Mean(Matcher):
    """A plugin author's matcher: closeness to each generator's mean curve."""

    def fit_curves(self, curves, labels, instances):
        self.means = {g: curves[labels == g].mean(axis=0) for g in set(labels)}

    def candidates(self, curve):
        return [Candidate(g, -float(np.linalg.norm(curve - mu))) for g, mu in self.means.items()]


def test_a_matcher_implementing_two_methods_gets_evaluation_and_open_set():
    refs = toy_refs()
    assert leave_one_out(refs, Mean()).correct == len(refs)
    m = Mean().fit(refs)
    assert m.calibration["calibrated"] and m.calibration["held_out"] == "leave-one-out"
    assert m.attribute(refs[0].fingerprint).verdict == "a"


def test_min_generators_is_enforced_for_any_matcher():
    class Pairwise(Mean):
        min_generators = 3

    with pytest.raises(UsageError, match="needs at least three generators; the references hold 2"):
        Pairwise().fit([r for r in toy_refs() if r.generator != "c"])


def test_an_incomplete_matcher_class_is_refused_at_registration(register_plugin):
    class Half(Matcher):
        def fit_curves(self, curves, labels, instances):
            pass

    def forensics_matchers(register):
        register("half", Half)

    host = register_plugin(types.SimpleNamespace(forensics_matchers=hookimpl(forensics_matchers)), "half")
    assert "half" not in host.collect("matchers")
    error = {i.name: i for i in host.describe()}["half"].error
    assert "does not meet its contract" in error and "candidates" in error


def assert_same_named(fast, slow):
    """The same confusions from both paths: (own, ranked first) exactly, each with its point."""
    def in_order(named):
        return sorted(named, key=lambda n: (n[0], n[1], *np.round(np.nan_to_num(n[2], nan=-1.0), 9)))
    assert [n[:2] for n in in_order(fast)] == [n[:2] for n in in_order(slow)]
    np.testing.assert_allclose([n[2] for n in in_order(fast)], [n[2] for n in in_order(slow)], rtol=0, atol=1e-12)


def test_fast_similarity_calibration_equals_the_generic_refits(paper_refs):
    for name in ("alpha", "cosine"):
        m = make_matcher(name)
        fast, slow = m.calibration_points(paper_refs), refit_points(m, paper_refs)
        fast_a, fast_u, _, fast_left, fast_named = astuple(fast)[:5]
        slow_a, slow_u, how, slow_left, slow_named = astuple(slow)[:5]
        assert_same_named(fast_named, slow_named)
        assert how == "leave-one-out"
        np.testing.assert_allclose(sorted(fast_a), sorted(slow_a), rtol=0, atol=1e-12)
        np.testing.assert_allclose(sorted(fast_u), sorted(slow_u), rtol=0, atol=1e-12)
        assert sorted(x[:2] for x in fast_left) == sorted(x[:2] for x in slow_left)
        # each point says the held-out instance it came from, the same in both
        assert fast.tagged and slow.tagged
        for kind in ("answer", "unknown"):
            mine = sorted(zip(getattr(fast, kind + "_from"), np.round(getattr(fast, kind), 9).tolist()))
            theirs = sorted(zip(getattr(slow, kind + "_from"), np.round(getattr(slow, kind), 9).tolist()))
            assert mine == theirs


def test_fast_similarity_calibration_equals_the_generic_refits_with_one_and_two_curve_generators():
    """Leaving a curve out of a two-curve generator leaves it one curve, which takes the pooled spread;
    a one-curve generator left out disappears. The fast path must follow the refits in both."""
    refs = toy_refs(per=4, gens=("a", "b", "c"), spread=0.3)
    refs += toy_refs(per=2, gens=("a", "b", "c", "d"), spread=0.3, seed=1)[6:]   # d: two curves
    refs += toy_refs(per=1, gens=("a", "b", "c", "d", "e"), spread=0.3, seed=2)[4:]  # e: one curve
    assert sorted({r.generator for r in refs}) == ["a", "b", "c", "d", "e"]
    for name in ("alpha", "cosine"):
        m = make_matcher(name)
        fast_a, fast_u, _, fast_left, fast_named = astuple(m.calibration_points(refs))[:5]
        slow_a, slow_u, _, slow_left, slow_named = astuple(refit_points(m, refs))[:5]
        assert_same_named(fast_named, slow_named)
        assert all(own != "e" for own, _, _ in fast_named)
        assert len(fast_a) + len(fast_u) == 2 * len(refs) and len(fast_left) == len(refs)
        np.testing.assert_allclose(sorted(fast_a), sorted(slow_a), rtol=0, atol=1e-12)
        np.testing.assert_allclose(sorted(fast_u), sorted(slow_u), rtol=0, atol=1e-12)
        assert sorted(x[:2] for x in fast_left) == sorted(x[:2] for x in slow_left)


def test_calibration_thresholds_on_paper_curves_maximise_balanced_accuracy(paper_refs):
    matcher = make_matcher("alpha")
    cal = matcher.fit(paper_refs).calibration
    points = matcher.calibration_points(paper_refs)
    answer, unknown = np.array(points.answer, float), np.array(points.unknown, float)
    # 1-NN leave-one-out on the paper's curves: 15 right; 3 wrong and 18 with the generator left out
    assert (cal["n_answer"], cal["n_unknown"]) == (len(answer), len(unknown)) == (15, 21)

    def passes(p, score, margin, ratio):  # NaN ratios (no spread to measure) pass every ratio threshold
        return (p[:, 0] >= score) & (p[:, 1] >= margin) & ~(p[:, 2] > ratio)

    def balanced(score, margin, ratio):
        return 0.5 * (passes(answer, score, margin, ratio).mean() + 1 - passes(unknown, score, margin, ratio).mean())

    limit = lambda key, default: default if cal[key] is None else cal[key]  # noqa: E731
    recorded = balanced(limit("score", -np.inf), limit("margin", -np.inf), limit("distance_ratio", np.inf))
    assert recorded == pytest.approx(cal["balanced_accuracy"], abs=1e-12)
    # no triple of cuts at the points' own values does better (brute force, independent of the grid search)
    both = np.concatenate([answer, unknown])
    cuts = [np.unique(np.r_[-np.inf, both[:, k]]) for k in (0, 1)]
    ratios = np.unique(np.r_[np.inf, both[~np.isnan(both[:, 2]), 2]])
    best = max(balanced(s, m, r) for s in cuts[0] for m in cuts[1] for r in ratios)
    assert recorded == pytest.approx(best, abs=1e-12)


def twin_refs():
    """a, b, c well apart, and b-twin: four more runs of b's own distribution under another name."""
    refs = toy_refs(per=4, gens=("a", "b", "c"), spread=0.05)
    return refs + [EnrolledCurve("b-twin", f"t{i}", r.fingerprint)
                   for i, r in enumerate(toy_refs(per=4, gens=("a", "b"), spread=0.05, seed=7)[4:])]


@pytest.mark.parametrize("name", ["alpha", "cosine", "svm"])
def test_calibration_records_which_left_out_generators_pass_as_which(name):
    cal = make_matcher(name).fit(twin_refs()).calibration
    looks = cal["lookalikes"]
    # b and b-twin are one distribution: left out, either is taken for the other, and nothing else is
    assert set(looks) == {"b", "b-twin"}
    assert set(looks["b"]) == {"b-twin"} and set(looks["b-twin"]) == {"b"}
    for seen in looks.values():
        for named, runs in seen.values():
            assert runs == 4 and 1 <= named <= 4


def test_a_named_verdict_carries_its_lookalikes_and_says_so():
    m = make_matcher("cosine").fit(twin_refs())
    b_query = toy_refs(per=1, gens=("a", "b"), spread=0.05, seed=9)[1]
    result = m.attribute(b_query.fingerprint)
    assert result.verdict == "b"  # measured: cosine names it (alpha's margin threshold says unknown)
    assert dict(result.lookalikes) == m.calibration["lookalikes"]["b"] == {"b-twin": [4, 4]}
    assert result.to_dict()["lookalikes"] == {"b-twin": [4, 4]}
    a_query = toy_refs(per=1, gens=("a",), spread=0.05, seed=9)[0]
    assert m.attribute(a_query.fingerprint).lookalikes == {}
    note = lookalike_note("b", result.lookalikes)
    assert note.startswith("not exclusive") and "4 of 4 b-twin runs were named b" in note
    assert lookalike_note("a", {}) is None
    assert "1 of 3 x runs, 2 of 2 y runs and 3 of 3 z runs were named a" in lookalike_note(
        "a", {"z": [3, 3], "x": [1, 3], "y": [2, 2]})
    assert "with each generator left out of the references in turn, 1 of 48 x runs was named a;" in lookalike_note(
        "a", {"x": [1, 48]})


def test_a_distance_ratio_the_separation_does_not_need_is_capped_at_the_farthest_answer():
    from forensics.match.calibration import calibrate
    from forensics.match.types import CalibrationPoints

    # the score alone separates these points (answers 0.9, unknowns 0.1): no ratio cut is needed on them
    answer = [(0.9, 0.2, r) for r in (0.5, 1.0, 1.5, math.nan)]
    unknown = [(0.1, 0.2, r) for r in (0.7, 3.0)]

    class Given:
        def calibration_points(self, references):
            return CalibrationPoints(answer, unknown, "given", [], [])

    cal = calibrate(Given(), toy_refs())
    assert cal["score"] == pytest.approx(0.5) and cal["margin"] is None
    # still applied, at the farthest answer: every answer passes (a NaN ratio always does), nothing farther
    assert cal["distance_ratio"] == 1.5
    assert (cal["balanced_accuracy"], cal["answered_right"], cal["unknown_right"]) == (1.0, 1.0, 1.0)


def test_a_needed_distance_ratio_stays_within_where_right_answers_end():
    from forensics.match.calibration import answer_end, calibrate
    from forensics.match.types import CalibrationPoints

    def calibrated(answer_ratios, unknown_ratios):
        # score and margin alike for every point: only the ratio separates answers from unknowns
        answer = [(0.5, 0.1, r) for r in answer_ratios]
        unknown = [(0.5, 0.1, r) for r in unknown_ratios]

        class Given:
            def calibration_points(self, references):
                return CalibrationPoints(answer, unknown, "given", [], [])

        return calibrate(Given(), toy_refs())

    # the nearest unknown far away: the middle of the gap (about 2.4) would name what lies 1.7× away, where
    # no right answer came; the ratio stops where the answers point to, 1.44 · 1.44/1.2 (Robson–Whitlock)
    far = calibrated((1.0, 1.2, 1.44, 1.44), (4.0, 5.0))
    assert far["distance_ratio"] == pytest.approx(1.44 * 1.44 / 1.2) == answer_end(np.array([1.0, 1.2, 1.44]))
    assert (far["answered_right"], far["unknown_right"]) == (1.0, 1.0)  # every answer kept, as before
    # an unknown near the answers: the middle of the gap lies within that end and stays the threshold
    near = calibrated((1.0, 1.2, 1.44), (1.5, 5.0))
    assert 1.44 < near["distance_ratio"] < 1.5
    assert answer_end(np.array([1.3])) == 1.3  # one answer: its own ratio


def test_a_matcher_that_scores_nan_is_named_as_broken_not_ranked():
    from forensics.errors import PluginError
    from forensics.match.nearest import SimilarityMatcher

    class NanMatcher(SimilarityMatcher):
        name = "nanm"

        def candidates(self, curve):
            return [replace(c, score=float("nan")) for c in super().candidates(curve)]

    refs = toy_refs()
    matcher = NanMatcher().fit(refs)
    with pytest.raises(PluginError, match="the nanm matcher scored a nan, not a finite number: the matcher is broken"):
        matcher.attribute(refs[0].fingerprint)
