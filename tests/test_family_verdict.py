"""A verdict that names a generator family: two samplers of one network that the curves cannot tell apart
are answered as the network, never as the wrong sampler (forensics.match.Matcher.attribute)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from forensics.match import EnrolledCurve, make_matcher
from forensics.match.batchsize import references_at
from forensics.match.calibration import confusions
from forensics.match.evaluation import leave_generator_out, leave_one_out
from forensics.protocol import Fingerprint

DIGEST = "sha256:" + "f" * 64
X = np.linspace(0, 1, 6)
SHAPES = {"c": 2 * np.sin(6 * X) + 1, "d": 8 * (X - 0.5) ** 2 - 1, "e": -3 * X + 0.5}
NET = 4 * X - 1   # the shared network: a and b differ from it by less than their noise


def curves(offset_b: float = 0.02, per: int = 8, seed: int = 0, families: bool = True) -> list[EnrolledCurve]:
    rng = np.random.default_rng(seed)
    bases = {"a": NET, "b": NET + offset_b, **SHAPES}
    refs = []
    for g, base in bases.items():
        family = "net" if families and g in ("a", "b") else None
        for i in range(per):
            v = base + rng.normal(0, 0.05, len(X))
            refs.append(EnrolledCurve(g, f"{g}{i}", Fingerprint.from_values(DIGEST, v.tolist()), family=family))
    return refs


def fitted(refs):
    return make_matcher("alpha").fit(refs)


def independent_confusions(refs, calibration):
    """An independent count: refit a closed-set matcher without each instance, rank it, and count it when
    another generator came first and the calibration's thresholds would have let it through (named)."""
    t_score, t_margin, t_ratio = (calibration[k] for k in ("score", "margin", "distance_ratio"))
    total, taken = {}, {}
    for i, r in enumerate(refs):
        probe = make_matcher("alpha", open_set=False).fit(refs[:i] + refs[i + 1:])
        first, second = probe.rank(r.fingerprint)[:2]
        ratio = probe.distance_ratio(r.fingerprint, first.generator)
        named = ((t_score is None or first.score >= t_score) and (t_margin is None or first.score - second.score >= t_margin)
                 and (t_ratio is None or ratio is None or ratio <= t_ratio))
        total[r.generator] = total.get(r.generator, 0) + 1
        if first.generator != r.generator and named:
            taken.setdefault(r.generator, {}).setdefault(first.generator, 0)
            taken[r.generator][first.generator] += 1
    return {g: {o: [k, total[g]] for o, k in row.items()} for g, row in taken.items()}


def test_confusions_are_the_held_out_instances_the_thresholds_let_through_as_another_generator():
    refs = curves()
    m = fitted(refs)
    expected = independent_confusions(refs, m.calibration)
    assert expected, "the toy must confuse a and b past the thresholds"
    assert set(expected) <= {"a", "b"}
    assert m.calibration["confusions"] == expected
    # every operating point records its own, each through its own thresholds
    for point, at in m.calibration["operating_points"].items():
        assert at["confusions"] == independent_confusions(refs, at), point
    # and every held-out query ranked first as another, let through or not
    no_thresholds = {"score": None, "margin": None, "distance_ratio": None}
    assert m.calibration["ranked_first"] == independent_confusions(refs, no_thresholds)
    p = (0.9, 0.1, 1.0)
    assert confusions([("a", "a", p), ("a", "b", p), ("a", "b", p), ("b", "b", p)]) == {"a": {"b": [2, 3]}}


def test_a_confusion_the_thresholds_turn_away_is_no_confusion():
    # ranked first as another, but by less than the margin threshold: calibration answered "unknown" there,
    # so naming was never wrong and no family answer follows from it
    near, clear = (0.9, 0.001, 1.0), (0.9, 0.2, 1.0)
    named = [("a", "b", near), ("a", "a", clear), ("b", "b", clear)]
    assert confusions(named) == {"a": {"b": [1, 2]}}
    assert confusions(named, t_margin=0.01) == {}
    assert confusions([("a", "b", (0.9, 0.2, 3.0))], t_ratio=2.0) == {}
    assert confusions([("a", "b", (0.9, 0.2, float("nan")))], t_ratio=2.0) == {"a": {"b": [1, 1]}}


def test_a_sibling_ranked_first_but_turned_away_leaves_the_name_with_a_note():
    m = fitted(curves(offset_b=0.6))
    assert not m.calibration["confusions"]
    m.calibration = {**m.calibration, "ranked_first": {"b": {"a": [2, 8]}}}
    res = m.attribute(NET)
    assert res.verdict == "a" and res.family is None
    assert res.reason.endswith("; calibration ranked held-out b 2 of 8 times first as a, each turned away by the "
                               "thresholds")
    # one of them let through: a confusion, so the family is named, and the note does not count it twice
    m.calibration = {**m.calibration, "confusions": {"b": {"a": [1, 8]}}}
    res = m.attribute(NET)
    assert res.verdict is None and res.family == "net"


def test_confused_siblings_are_answered_as_their_family_not_as_either():
    refs = curves()
    m = fitted(refs)
    for g in ("a", "b"):
        res = m.attribute(next(r for r in refs if r.generator == g).fingerprint)  # one of its own curves
        assert res.margin >= (m.calibration["margin"] or 0.0)
        assert res.verdict is None and res.family == "net" and res.named == "net"
        assert set(res.family_members) == {"a", "b"}
        assert res.reason.startswith("the family net") and "calibration named held-out" in res.reason
        assert res.to_dict()["family"] == "net" and res.to_dict()["family_members"] == sorted(res.family_members)
    # the same curves without the family: one of the two is named
    plain = fitted(curves(families=False)).attribute(refs[0].fingerprint)
    assert plain.verdict == "a" and plain.family is None and plain.family_members == ()


def test_a_well_separated_family_names_the_generator():
    m = fitted(curves(offset_b=0.6))
    assert not m.calibration["confusions"]
    for g, v in (("a", NET), ("b", NET + 0.6)):
        res = m.attribute(v)
        assert res.verdict == g and res.family is None


def test_other_generators_and_strangers_are_unaffected():
    m = fitted(curves())
    assert m.attribute(SHAPES["c"]).verdict == "c"
    stranger = m.attribute(np.full(len(X), 5.0))
    assert stranger.verdict is None and stranger.family is None and stranger.reason.startswith("unknown")


def test_a_family_of_one_enrolled_generator_is_no_family():
    refs = [r for r in curves() if r.generator != "b"]
    m = fitted(refs)
    res = m.attribute(NET)
    assert res.verdict == "a" and res.family is None


def test_a_margin_lost_to_a_sibling_stays_unknown():
    # an unenrolled generator often lies between two close ones: the family does not excuse the margin
    m = fitted(curves(offset_b=0.6))
    t_margin = m.calibration["margin"] or 0.05
    m.calibration = {**m.calibration, "margin": t_margin}
    res = m.attribute(NET + 0.3)   # halfway between the two siblings
    assert res.margin < t_margin
    assert res.verdict is None and res.family is None and res.reason.startswith("unknown")


def test_evaluation_counts_family_answers_apart():
    refs = curves()
    loo = leave_one_out(refs, "alpha").open_set
    assert loo["answered_family"] > 0
    assert sum(loo.values()) == len(refs)
    lgo = leave_generator_out(refs, "alpha")
    # a generator left out while its sibling stays: its runs may name the family, never count as unknown
    assert lgo["family"] == sum(p.get("family", 0) for p in lgo["per_generator"].values())
    assert all(p["family"] == 0 for g, p in lgo["per_generator"].items() if g not in ("a", "b"))
    # each query's outcome, as the counts tally them (what the pool's adoption pairs query by query)
    told = [p["outcome"] for p in leave_one_out(refs, "alpha").predictions]
    assert {k: told.count(k) for k in ("right", "family", "wrong", "unknown")} == {
        "right": loo["answered_right"], "family": loo["answered_family"], "wrong": loo["answered_wrong"],
        "unknown": loo["unknown"]}
    for g, p in lgo["per_generator"].items():
        runs = p["runs"]
        assert len(runs) == p["n"] and all(r["instance"].startswith(g) for r in runs)
        assert sum(r["outcome"] == "unknown" for r in runs) == p["unknown"]
        assert sum(r["outcome"] == "family" for r in runs) == p["family"]
        assert {r["named"] for r in runs if r["outcome"] != "unknown"} == set(p["attributed_to"])


def test_a_left_out_generator_named_as_its_sibling_is_counted_apart_from_unrelated_names():
    from forensics.report.terminal import left_out_text

    refs = curves(offset_b=0.02)  # a and b within each other's noise: either left out is named as the other
    lgo = leave_generator_out(refs, "alpha")
    per = lgo["per_generator"]
    assert per["a"]["attributed_to"].get("b", 0) > 0
    for g, p in per.items():  # the named ones of its own family ("net" for a and b, none for the others)
        own = "net" if g in ("a", "b") else None
        assert p["sibling"] == sum(k for other, k in p["attributed_to"].items()
                                   if own is not None and other in ("a", "b"))
    assert lgo["sibling"] == sum(p["sibling"] for p in per.values()) > 0
    assert f"({lgo['sibling']} named as a sibling)" in left_out_text(lgo)
    # without families the same names are not siblings: nothing says the network was right
    plain = leave_generator_out(curves(offset_b=0.02, families=False), "alpha")
    assert plain["sibling"] == 0 and plain["per_generator"]["a"]["attributed_to"] == per["a"]["attributed_to"]
    assert "sibling" not in left_out_text(plain)


def test_references_redrawn_at_another_size_keep_their_family():
    refs = curves(per=2)
    records = {r.instance: np.zeros((1, 10, 2)) for r in refs}
    vector = {r.instance: r.fingerprint.vector() for r in refs}
    owner = {id(rec): i for i, rec in records.items()}

    def curves_of(rec, subsets):
        return [vector[owner[id(rec)]] for _ in subsets]

    at = references_at(refs, records, 5, curves_of, draws=2, calibration_draws=2)
    assert [r.family for r in at.references] == [r.family for r in refs]


@pytest.mark.parametrize("field", ["family", "family_members"])
def test_an_attribution_without_a_family_says_so(field):
    res = fitted(curves(offset_b=0.6)).attribute(SHAPES["d"])
    assert res.to_dict()[field] in (None, [])
    assert dataclasses.asdict(res)[field] in (None, ())
