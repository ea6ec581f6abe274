"""A verdict that names a generator *family* (issue 25): when the matcher can tell that a batch came from
one network but not from which of its samplers, the JSON document, the terminal and HTML reports, the
per-batch tally and the zoo's held-out summary say "the family F, one of its members", and count it as
neither a generator named nor "unknown". Unknown and named answers read as they did.

The results are built here from a real matcher fitted on synthetic curves (no encoder runs): its answer
to a query between two samplers of one network (the family answer: the matcher's own when it gives one,
else its answer given the family), to a third generator's enrolled curve (named), and that answer
made "unknown"."""

from __future__ import annotations

import dataclasses
import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from forensics.engine import Curve, LayerValue
from forensics.match import EnrolledCurve, make_matcher
from forensics.protocol import DataRef, EncoderRef, Fingerprint, Protocol, StatisticRef
from forensics.results import (AttributionResult, BatchAttribution, HeldoutResult, HeldoutSet, ImageInput, Provenance,
                               answer_label)

SHA = "sha256:" + "ab" * 32
FAMILY, MEMBERS = "ddpm-net", ("ddim", "pndm")
FAMILY_REASON = ("the family ddpm-net, not which of ddim or pndm: ddim passes the open-set thresholds, but "
                 "calibration named held-out pndm as ddim 3 of 4 times")
X = np.linspace(0, 1, 6)
SHAPES = {"ddim": 4 * X - 1, "pndm": 4 * X - 0.95, "gan": 2 * np.sin(6 * X) + 1, "vae": -3 * X + 0.5}
QUERY = 4 * X - 0.97   # between ddim's and pndm's curves


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    return Protocol(
        name="toy", train=DataRef("digits", "train", 100, SHA), test=DataRef("digits", "test", 50, SHA),
        encoder=EncoderRef("tiny", SHA, "random", tuple(f"l{i}" for i in range(6)), "mean",
                           {"size": 8, "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3,
                            "std": [0.5] * 3}),
        statistic=StatisticRef("ct", {"k": 3, "distance": "cosine", "projection": None, "tau": None, "seed": 0}),
        batch_size=10, description="a toy protocol")


@pytest.fixture(scope="module")
def fitted(protocol):
    """The alpha matcher on four generators of three runs each; ddim and pndm (one network, two
    samplers) with nearly the same curve."""
    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        rng = np.random.default_rng(0)
        refs = [EnrolledCurve(g, f"{g}{i}", Fingerprint.from_values(protocol.digest, (s + rng.normal(0, 0.05, 6)).tolist()),
                              family=FAMILY if g in MEMBERS else None)
                for g, s in SHAPES.items() for i in range(3)]
        yield make_matcher("alpha").fit(refs)
    finally:
        plugins.reset(old)


def curve(protocol, values, n_images=10) -> Curve:
    fp = Fingerprint.from_values(protocol.digest, [float(v) for v in values])
    layers = tuple(LayerValue(f"l{i}", float(v), 0.9, None, "no evidence") for i, v in enumerate(values))
    return Curve(fp, layers, n_images)




def result(protocol, fitted, overall, batches=None) -> AttributionResult:
    """An attribution of 20 images (two batches of m = 10) whose overall answer is ``overall``."""
    c = curve(protocol, QUERY, 20)
    batches = batches or [overall, overall]
    return AttributionResult(
        input=ImageInput(None, 20, "sha256:" + "cd" * 32), protocol=protocol, curve=c, attribution=overall,
        batches=tuple(BatchAttribution(curve(protocol, QUERY), a) for a in batches), matcher=fitted.describe(),
        references=tuple(fitted.enrolled), reference_origin="test", partial_batch=False,
        provenance=Provenance({"forensics": "0", "python": "3", "torch": "0", "numpy": "0"}, "2026-12-04T00:00:00Z"),
        compared_at=10)


@pytest.fixture(scope="module")
def answers(fitted):
    between = fitted.attribute(QUERY)
    assert between.candidates[0].generator in MEMBERS and between.candidates[1].generator in MEMBERS
    family = between if between.family is not None else dataclasses.replace(
        between, verdict=None, reason=FAMILY_REASON, family=FAMILY, family_members=MEMBERS)
    assert family.verdict is None and family.family == FAMILY and set(family.family_members) == set(MEMBERS)
    named = fitted.attribute(next(r.fingerprint for r in fitted.enrolled if r.generator == "gan"))
    assert named.verdict == "gan" and named.family is None, named.reason
    unknown = dataclasses.replace(named, verdict=None, reason="unknown: best score below the threshold")
    return {"named": named, "family": family, "unknown": unknown}


def terminal_text(res) -> str:
    from rich.console import Console

    from forensics.report.terminal import render_attribution

    console = Console(record=True, width=160, color_system=None, file=io.StringIO())
    render_attribution(res, console)
    return re.sub(r"\s+", " ", console.export_text())


# -- the JSON document ------------------------------------------------------------------------------
def test_a_family_answer_conforms_and_carries_the_family_and_its_members(protocol, fitted, answers):
    schemas = pytest.importorskip("forensics.schemas")
    pytest.importorskip("jsonschema")
    res = result(protocol, fitted, answers["family"], [answers["family"], answers["named"]])
    doc = res.to_dict()
    schemas.validate(doc)
    v = doc["verdict"]
    assert v["generator"] is None and v["family"] == FAMILY and v["family_members"] == list(MEMBERS)
    assert v["score"] == pytest.approx(doc["candidates"][0]["score"]) and v["reason"] == answers["family"].reason
    assert [b["family"] for b in doc["batches"]] == [FAMILY, None]
    assert [b["verdict"] for b in doc["batches"]] == [None, answers["named"].verdict]
    assert res.verdict.named == FAMILY and res.verdict.label == f"family {FAMILY}"
    for bad in ({"family_members": "ddim"}, {"family": ""}, {"family_members": ["ddim", "ddim"]}):
        broken = {**doc, "verdict": {**v, **bad}}
        with pytest.raises(Exception, match="family_members|family|non-unique|should be"):
            schemas.validate(broken)


def test_unknown_and_named_answers_carry_no_family(protocol, fitted, answers):
    schemas = pytest.importorskip("forensics.schemas")
    pytest.importorskip("jsonschema")
    for kind in ("named", "unknown"):
        doc = result(protocol, fitted, answers[kind]).to_dict()
        schemas.validate(doc)
        assert doc["verdict"]["family"] is None and doc["verdict"]["family_members"] == []
        assert all(b["family"] is None for b in doc["batches"])
    named = result(protocol, fitted, answers["named"]).verdict
    assert named.generator == named.named == named.label == answers["named"].verdict and named.score is not None
    unknown = result(protocol, fitted, answers["unknown"]).verdict
    assert unknown.named is None and unknown.label == "unknown" and unknown.score is None


def test_a_family_attribution_whose_verdict_names_a_generator_keeps_the_generator(protocol, fitted, answers):
    """A generator named is the answer, whatever family it belongs to: the report does not name the family."""
    named = dataclasses.replace(answers["named"], family=FAMILY, family_members=MEMBERS)
    v = result(protocol, fitted, named).verdict
    assert v.generator == named.verdict and v.family is None and v.family_members == () and v.label == named.verdict


# -- the per-batch tally ----------------------------------------------------------------------------
def test_batch_votes_count_a_family_apart_from_generators_and_unknown(protocol, fitted, answers):
    a = answers
    res = result(protocol, fitted, a["family"], [a["family"], a["named"], a["family"], a["unknown"]])
    assert dict(res.batch_votes) == {f"family {FAMILY}": 2, a["named"].verdict: 1, "unknown": 1}
    assert res.batch_votes[0] == (f"family {FAMILY}", 2)
    assert [b.label for b in res.batches] == [f"family {FAMILY}", a["named"].verdict, f"family {FAMILY}", "unknown"]
    assert answer_label(None) == "unknown" and answer_label("x", "f") == "x" and answer_label(None, "f") == "family f"


# -- the terminal report ----------------------------------------------------------------------------
def test_the_terminal_report_names_the_family_and_its_members(protocol, fitted, answers):
    text = terminal_text(result(protocol, fitted, answers["family"], [answers["family"], answers["named"]]))
    assert f"Verdict: the family {FAMILY} — {' or '.join(answers['family'].family_members)}; its samplers are not told apart here" in text
    assert answers["family"].reason in text and "Verdict: unknown" not in text
    assert f"family {FAMILY} × 1" in text and f"{answers['named'].verdict} × 1" in text


def test_the_terminal_report_of_unknown_and_named_answers_is_unchanged(protocol, fitted, answers):
    named = answers["named"]
    text = terminal_text(result(protocol, fitted, named))
    assert re.search(rf"Verdict: {named.verdict} score {named.candidates[0].score:.3f} margin ", text)
    assert "family" not in text
    text = terminal_text(result(protocol, fitted, answers["unknown"]))
    assert "Verdict: unknown unknown: best score below the threshold" in text and "family" not in text


# -- the HTML report --------------------------------------------------------------------------------
def outlined(page: str) -> list[str]:
    """The generators whose bars the ranking (its SVG, drawn without matplotlib) outlines."""
    ranking = page[page.index("Similarity ranking"):]
    ranking = ranking[:ranking.index("</svg>")]
    return sorted(re.findall(r'<text[^>]*>([^<]+)</text><rect[^>]*stroke="#000"', ranking))


def test_the_html_report_names_the_family_its_members_and_outlines_them(protocol, fitted, answers):
    from forensics.report import html as H

    page = H.attribution_page(result(protocol, fitted, answers["family"]), plots=False).html()
    assert f"<title>forensics attribution: family {FAMILY}</title>" in page
    assert f"<h1>Attribution: the family {FAMILY} — {' or '.join(answers['family'].family_members)}; its samplers are not told apart here</h1>" in page
    assert html.escape(answers["family"].reason) in page
    assert outlined(page) == sorted(answers["family"].family_members)


def test_the_html_report_of_unknown_and_named_answers_is_unchanged(protocol, fitted, answers):
    from forensics.report import html as H

    named = answers["named"]
    page = H.attribution_page(result(protocol, fitted, named), plots=False).html()
    assert f"<h1>Attribution: {named.verdict}</h1>" in page and "the family" not in page
    assert f"score {named.candidates[0].score:.3f} · margin" in page and outlined(page) == [named.verdict]
    page = H.attribution_page(result(protocol, fitted, answers["unknown"]), plots=False).html()
    assert "<h1>Attribution: unknown</h1>" in page and "the family" not in page and outlined(page) == []


def test_the_ranking_plot_outlines_each_member_of_a_family_verdict():
    pytest.importorskip("matplotlib")
    from forensics.report import plots as P

    cands = [("ddim", 0.9), ("pndm", 0.89), ("gan", 0.1)]
    for verdict, outlined in ((list(MEMBERS), {"ddim", "pndm"}), ("ddim", {"ddim"}), (None, set())):
        fig = P.ranking_figure(cands, verdict=verdict)
        bars = fig.axes[0].patches
        assert {g for (g, _), b in zip(cands, bars) if b.get_linewidth() > 1} == outlined


# -- the zoo's held-out sets ------------------------------------------------------------------------
def heldout(protocol, answers) -> HeldoutResult:
    a = answers
    wrong_family = dataclasses.replace(a["family"], family="other-net", family_members=("x", "y"))
    sets = [("family", "pndm", a["family"]), ("right", "gan", a["named"]), ("wrong", "ddim", a["named"]),
            ("unknown", "gan", a["unknown"]), ("wrong family", "ddim", wrong_family)]
    return HeldoutResult("toy", ("alpha",), tuple(
        HeldoutSet(g, Path(f"{k}.npz"), curve(protocol, QUERY), {"alpha": ans}) for k, g, ans in sets))


def test_the_heldout_summary_counts_a_family_as_neither_right_unknown_nor_wrong(protocol, answers):
    res = heldout(protocol, answers)
    s = res.summary("alpha")
    assert s == {"top_right": s["top_right"], "verdict_right": 1, "verdict_family": 1, "verdict_unknown": 1,
                 "verdict_wrong": 2, "n": 5}
    doc = res.to_dict()
    assert doc["sets"][0]["matchers"]["alpha"]["family"] == FAMILY
    schemas = pytest.importorskip("forensics.schemas")
    pytest.importorskip("jsonschema")
    schemas.validate(doc)


def test_zoo_heldout_prints_a_family_answer_and_counts_it(protocol, answers, monkeypatch):
    import forensics.api
    from forensics.cli.commands import app

    res = heldout(protocol, answers)
    monkeypatch.setattr(forensics.api, "zoo_heldout", lambda **kw: res)
    out = CliRunner().invoke(app, ["zoo", "heldout", "--protocol", "toy"], env={"COLUMNS": "120"})
    assert out.exit_code == 0, out.output
    assert re.search(rf"\bpndm +pndm .* {FAMILY}†", out.output)   # its generator among the members
    assert re.search(r"\bddim +pndm .* other-net†", out.output)     # not among them
    assert f"† a family named, not which of its generators (its samplers are not told apart): {FAMILY} " \
           "(ddim or pndm); other-net (x or y)" in out.output
    assert "verdicts: 1 right, 1 its family (not which generator), 1 unknown, 2 wrong" in out.output


# -- registry evaluate ------------------------------------------------------------------------------
def test_registry_evaluate_shows_family_answers_beside_right_wrong_and_unknown():
    """The open-set cell of `registry evaluate` (terminal and HTML) counts the answers that named a family,
    and the leave-generator-out cell the left-out runs that named their own family."""
    from forensics.report.terminal import OPEN_SET_COLUMN, left_out_text, open_set_text

    assert OPEN_SET_COLUMN == "open set: right · family · wrong · unknown"
    assert open_set_text({"answered_right": 20, "answered_family": 3, "answered_wrong": 1, "unknown": 4}) == \
        "20 · 3 · 1 · 4"
    assert open_set_text(None) == "— · — · — · —"
    assert left_out_text({"n": 27, "unknown": 24, "family": 2}) == "24/27 (family 2)"
    assert left_out_text({"n": 27, "unknown": 25, "family": 0}) == "25/27" == left_out_text({"n": 27, "unknown": 25})
