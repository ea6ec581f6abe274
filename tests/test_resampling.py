"""The resampling rule (forensics.match.resampling): a verdict stands only where what it names ranks first in
more than half of the bootstrap resamples of the batch's images; otherwise "unknown", each operating point
alike. The curves themselves are checked against embedding the resampled images in tests/test_any_size.py."""

from __future__ import annotations

from forensics.match.resampling import resampled
from forensics.match.types import Attribution, Candidate

FAMILIES = {"ddim": "net", "pndm": "net"}


def answer(verdict=None, family=None, points=None) -> Attribution:
    cands = (Candidate("ddim", 0.9), Candidate("pndm", 0.8), Candidate("sngan", 0.7))
    return Attribution(cands, verdict, 0.1, "passes the open-set thresholds", "alpha", {"score": 0.0}, 1.0,
                       {"pndm": [1, 3]} if verdict else {}, family, ("ddim", "pndm") if family else (),
                       points or {})


def test_a_verdict_that_leads_in_most_resamples_stands_and_says_so():
    got = resampled(answer("ddim"), ["ddim"] * 51 + ["sngan"] * 49, FAMILIES)
    assert got.verdict == "ddim" and got.lookalikes == {"pndm": [1, 3]}
    assert got.resampling == {"resamples": 100, "seed": 0, "leads": 51, "first": {"ddim": 51, "sngan": 49}}


def test_a_verdict_that_leads_in_half_or_fewer_becomes_unknown_with_the_reason():
    for firsts in (["ddim"] * 50 + ["sngan"] * 50, ["sngan"] * 70 + ["ddim"] * 30):
        got = resampled(answer("ddim"), firsts, FAMILIES)
        assert got.verdict is None and got.family is None and got.lookalikes == {}
        assert got.reason.startswith("unknown: ddim ranks first in only") and "passes the open-set" in got.reason
        assert got.candidates == answer("ddim").candidates  # the ranking is kept
        assert got.resampling["leads"] == firsts.count("ddim")


def test_a_family_answer_counts_every_member_ranked_first():
    got = resampled(answer(family="net"), ["ddim"] * 30 + ["pndm"] * 30 + ["sngan"] * 40, FAMILIES)
    assert got.family == "net" and got.resampling["leads"] == 60
    got = resampled(answer(family="net"), ["ddim"] * 30 + ["pndm"] * 20 + ["sngan"] * 50, FAMILIES)
    assert got.family is None and got.verdict is None and got.family_members == ()


def test_each_operating_points_answer_is_held_to_the_same_rule():
    points = {"balanced": {"generator": "ddim", "family": None}, "named": {"generator": "sngan", "family": None},
              "cautious": {"generator": None, "family": None}}
    got = resampled(answer("ddim", points=points), ["ddim"] * 80 + ["sngan"] * 20, FAMILIES)
    assert got.at_operating_points == {**points, "named": {"generator": None, "family": None}}


def test_unknown_stays_unknown_and_a_closed_set_answer_is_only_recorded():
    got = resampled(answer(), ["sngan"] * 100, FAMILIES)
    assert got.verdict is None and got.resampling["leads"] is None and got.resampling["first"] == {"sngan": 100}
    got = resampled(answer("ddim"), ["sngan"] * 100, FAMILIES, decide=False)
    assert got.verdict == "ddim" and got.resampling["leads"] == 0
    assert resampled(answer("ddim"), [], FAMILIES) == answer("ddim")


def test_the_report_says_how_the_answer_held():
    from forensics.report.terminal import resampling_text
    from forensics.results import Verdict

    def said(a):
        return resampling_text(Verdict.of(a).to_dict())

    assert said(answer("ddim")) is None  # not resampled
    assert said(resampled(answer("ddim"), ["ddim"] * 97 + ["pndm"] * 3, FAMILIES)) == (
        "ddim ranks first in 97 of 100 resamples of the images", False)
    assert said(resampled(answer(family="net"), ["ddim"] * 60 + ["pndm"] * 40, FAMILIES)) == (
        "a generator of net ranks first in 100 of 100 resamples of the images", False)
    turned = said(resampled(answer("ddim"), ["sngan"] * 55 + ["ddim"] * 45, FAMILIES))
    assert turned == ("ranked first in 100 resamples of the images: sngan 55, ddim 45", True)  # a warning
    assert said(resampled(answer(), ["sngan"] * 100, FAMILIES)) == (
        "ranked first in 100 resamples of the images: sngan 100", False)
