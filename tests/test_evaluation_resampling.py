"""`registry evaluate` holds every answer to the resampling rule as `attribute` holds a batch to it
(forensics.match.resampling): a name stands only where it ranks first in more than half of the bootstrap
resamples of the query's images, and the evaluation counts what the rule turned into "unknown"."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.match import EnrolledCurve
from forensics.match.evaluation import leave_generator_out, leave_one_out
from forensics.match.resampling import RESAMPLES, SEED
from forensics.protocol import Fingerprint

DIGEST = "sha256:" + "e" * 64
X = np.linspace(0, 1, 6)
BASES = {"a": 4 * X - 1, "b": 2 * np.sin(6 * X) + 1, "c": 8 * (X - 0.5) ** 2 - 1, "d": -3 * X + 0.5}


def curves(per: int = 6, seed: int = 0) -> list[EnrolledCurve]:
    rng = np.random.default_rng(seed)
    return [EnrolledCurve(g, f"{g}{i}", Fingerprint.from_values(DIGEST, (base + rng.normal(0, 0.05, len(X))).tolist()))
            for g, base in BASES.items() for i in range(per)]


def steady(refs: list[EnrolledCurve]) -> dict[str, list[np.ndarray]]:
    """Every resample of an instance's query ranks as the query itself: its own curve, each time."""
    return {r.instance: [np.tile(r.fingerprint.vector(), (RESAMPLES, 1))] for r in refs}


def swayed(refs: list[EnrolledCurve], instance: str, towards: str, share: int) -> dict[str, list[np.ndarray]]:
    """``share`` of ``instance``'s resamples look like generator ``towards`` (its base curve), the rest like the
    query."""
    found = steady(refs)
    rows = found[instance][0].copy()
    rows[:share] = BASES[towards]
    found[instance] = [rows]
    return found


def test_resamples_that_rank_as_the_query_change_no_answer_and_say_how_many_led():
    refs = curves()
    plain = leave_one_out(refs, "alpha")
    held = leave_one_out(refs, "alpha", resamples=steady(refs))
    assert plain.open_set["answered_right"] > 0
    assert held.open_set == plain.open_set and held.correct == plain.correct
    assert held.resampling == {"resamples": RESAMPLES, "seed": SEED, "turned_unknown": 0}
    for before, after in zip(plain.predictions, held.predictions):
        assert after["verdict"] == before["verdict"]
        assert after["leads"] == (RESAMPLES if after["verdict"] is not None else None)
    assert plain.resampling is None and all(p["leads"] is None for p in plain.predictions)
    lgo = leave_generator_out(refs, "alpha", resamples=steady(refs))
    assert lgo["unknown"] == leave_generator_out(refs, "alpha")["unknown"]
    assert lgo["resampling"] == {"resamples": RESAMPLES, "seed": SEED, "turned_unknown": 0}


@pytest.mark.parametrize("share, stands", [(RESAMPLES // 2 - 1, True), (RESAMPLES // 2, False), (RESAMPLES, False)])
def test_a_name_stands_only_where_it_leads_in_more_than_half_of_the_resamples(share, stands):
    refs = curves()
    plain = {p["instance"]: p for p in leave_one_out(refs, "alpha").predictions}
    assert plain["a0"]["verdict"] == "a"
    held = leave_one_out(refs, "alpha", resamples=swayed(refs, "a0", "b", share))
    answer = {p["instance"]: p for p in held.predictions}["a0"]
    assert answer["leads"] == RESAMPLES - share  # how often what the batch as drawn named led, either way
    assert answer["verdict"] == ("a" if stands else None)
    assert answer["predicted"] == "a"  # the closed-set answer (the batch as drawn) is the batch's, whatever the rule
    assert held.resampling["turned_unknown"] == (0 if stands else 1)
    assert held.correct == leave_one_out(refs, "alpha").correct
    assert all(p["verdict"] == plain[p["instance"]]["verdict"] for p in held.predictions if p["instance"] != "a0")


def test_a_left_out_generator_named_on_a_draw_that_few_resamples_repeat_is_unknown():
    """A generator left out entirely and named as another (its curve moved onto the other's) is turned away
    when most of its resamples rank a third generator first; one whose resamples name the same steadily is not."""
    refs = curves()
    moved = [EnrolledCurve(r.generator, r.instance, Fingerprint.from_values(DIGEST, (BASES["b"] + 0.01).tolist()))
             if r.instance == "a0" else r for r in refs]
    plain = leave_generator_out(moved, "alpha")
    assert plain["per_generator"]["a"]["attributed_to"] == {"b": 1}
    kept = leave_generator_out(moved, "alpha", resamples=steady(moved))
    assert kept["per_generator"]["a"]["attributed_to"] == {"b": 1} and kept["resampling"]["turned_unknown"] == 0
    turned = leave_generator_out(moved, "alpha", resamples=swayed(moved, "a0", "c", RESAMPLES))
    assert turned["per_generator"]["a"]["attributed_to"] == {}
    assert turned["unknown"] == plain["unknown"] + 1 and turned["resampling"]["turned_unknown"] == 1


def test_a_closed_set_matcher_keeps_its_answers_and_records_no_rule():
    refs = curves()
    held = leave_one_out(refs, "alpha", open_set=False, resamples=swayed(refs, "a0", "b", RESAMPLES))
    assert held.open_set is None and held.resampling is None
    assert held.correct == leave_one_out(refs, "alpha", open_set=False).correct


def test_a_matcher_that_ranks_no_new_curve_is_evaluated_without_the_rule():
    """The fid baseline looks up the FID recorded of each known image set; a resample of images has none, so
    its answers are evaluated as they are, and the evaluation says the rule was not applied."""
    from forensics.match import FIDMatcher
    from forensics.match.baselines import curve_key

    refs = curves()
    fids = {curve_key(r.fingerprint): 10.0 * "abcd".index(r.generator) + int(r.instance[1:]) * 0.1 for r in refs}
    plain = leave_one_out(refs, FIDMatcher(fids=fids))
    held = leave_one_out(refs, FIDMatcher(fids=fids), resamples=swayed(refs, "a0", "b", RESAMPLES))
    assert held.resampling is None and held.open_set == plain.open_set and held.correct == plain.correct
    lgo = leave_generator_out(refs, FIDMatcher(fids=fids), resamples=steady(refs))
    assert lgo["resampling"] is None and lgo["unknown"] == leave_generator_out(refs, FIDMatcher(fids=fids))["unknown"]


def test_the_default_protocols_resample_vectors_are_its_curves_to_the_last_bit(bundled_registry, plugin_host,
                                                                             monkeypatch):
    """The vectors resampling ranks come from each statistic's values alone (C_T's and mean-z's
    ``subset_values``); on the bundled default, every part of it, they are the curves' own vectors exactly —
    also where a statistic gives no values alone and its layers are read from its scores."""
    from forensics.engine import make_engine
    from forensics.match.resampling import bootstrap_rows

    name = bundled_registry.resolve_protocol(None)
    engine = make_engine(bundled_registry.protocol(name), reference_dir=bundled_registry.reference_dir)
    refs = bundled_registry.enrolled(name)
    records = bundled_registry.records(name, refs[:1], "jpeg75")[0][refs[0].instance]
    n = records.shape[1]
    subsets = [None, np.arange(1), np.arange(2), *bootstrap_rows([np.arange(n)], resamples=6),
               *bootstrap_rows([np.arange(100)], resamples=6, seed=1)]
    vectors = engine.vectors_from_records(list(records), subsets)
    curves = engine.curves_from_records(list(records), subsets)
    assert vectors.shape == (len(subsets), len(engine.protocol.layers))
    assert np.array_equal(vectors, [c.fingerprint.vector() for c in curves])
    assert any(c.fingerprint.undefined for c in curves[1:3])  # one or two images: layers undefined, 0 in both
    from forensics_pixelstats import FittedMeanZ

    monkeypatch.delattr(FittedMeanZ, "subset_values")  # a statistic that only scores, beside one that does both
    assert np.array_equal(engine.vectors_from_records(list(records), subsets), vectors)
