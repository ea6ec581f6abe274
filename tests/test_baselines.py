"""The paper's baselines as matchers (issue 25): one layer of the curve, and the FID of the set.

Each passes the matcher contract; a one-layer fingerprint cannot tell apart generators whose curves
differ only at other layers (the whole curve can); the FID baseline names the run whose FID is nearest;
and they are opt-in: listed with ``baselines=True``, evaluated when named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from forensics.errors import UsageError
from forensics.match import (
    EnrolledCurve, FIDMatcher, LayerMatcher, available_matchers, choose_layer, curve_key, leave_one_out,
    make_matcher,
)
from forensics.protocol import Fingerprint
from forensics.testing import MatcherContract, sample_references

DIGEST = "sha256:" + "5" * 64
FID_OF = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 45.0}


def with_fids(refs):
    """``refs`` with a FID per instance in their provenance (well separated by generator)."""
    rng = np.random.default_rng(1)
    return [replace(r, provenance={"fid": FID_OF[r.generator] + float(rng.normal(0, 0.3))}) for r in refs]


def fid_table(refs):
    return {curve_key(r.fingerprint): r.provenance["fid"] for r in refs}


class TestLastLayer(MatcherContract):
    @pytest.fixture(scope="class")
    @classmethod
    def matcher_factory(cls):
        return lambda **o: LayerMatcher(layer="last", **o)


def level_references(per=4, n_layers=6, seed=0):
    """Generators apart at every layer (sample_references' are apart as curves, not at each layer: a
    one-layer fingerprint chosen on three of them may not tell the fourth from one of them)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n_layers)
    return [EnrolledCurve(g, f"{g}{i}", curve(level + x + rng.normal(0, 0.05, n_layers)))
            for g, level in (("a", 0.0), ("b", 3.0), ("c", 6.0), ("d", 9.0)) for i in range(per)]


class TestBestLayer(MatcherContract):
    @pytest.fixture(scope="class")
    @classmethod
    def references(cls):
        return level_references()

    @pytest.fixture(scope="class")
    @classmethod
    def matcher_factory(cls):
        return lambda **o: LayerMatcher(layer="best", **o)


class TestFID(MatcherContract):
    @pytest.fixture(scope="class")
    @classmethod
    def references(cls):
        return with_fids(sample_references())

    @pytest.fixture(scope="class")
    @classmethod
    def matcher_factory(cls, references):
        table = fid_table(references)   # the held-out queries' FIDs (the references carry their own)
        return lambda **o: FIDMatcher(**{"fids": table, **o})


def curve(values):
    return Fingerprint.from_values(DIGEST, list(values))


@pytest.mark.parametrize("seed", range(5))
def test_one_layer_cannot_separate_curves_that_differ_only_at_other_layers_and_alpha_can(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 10))
    base = rng.normal(0, 2, n)
    shift = rng.normal(0, 1, n)
    shift[-1] = 0.0                    # the generators agree at the last layer, differ at the others
    shift[:-1] += np.sign(shift[:-1]) * 1.0
    refs, queries = [], []
    for g, c in (("x", base), ("y", base + shift)):
        for i in range(3):
            refs.append(EnrolledCurve(g, f"{g}{i}", curve(c + rng.normal(0, 0.01, n) * np.r_[np.ones(n - 1), 0])))
        queries.append((g, curve(c + rng.normal(0, 0.01, n) * np.r_[np.ones(n - 1), 0])))
    last = make_matcher("last-layer", open_set=False).fit(refs)
    alpha = make_matcher("alpha", open_set=False).fit(refs)
    for g, q in queries:
        scores = {c.generator: c.score for c in last.rank(q)}
        assert scores["x"] == scores["y"]               # a tie: the one layer says nothing
        assert alpha.rank(q)[0].generator == g          # the whole curve names it
    # the same holds at any fixed layer the generators share
    refs_mid = [replace(r, fingerprint=curve(np.roll(r.fingerprint.vector(), -1))) for r in refs]
    one = LayerMatcher(layer=n - 2, open_set=False).fit(refs_mid)
    q = curve(np.roll(queries[0][1].vector(), -1))
    assert len({c.score for c in one.rank(q)}) == 1


def test_best_layer_is_chosen_on_the_references_alone():
    rng = np.random.default_rng(0)
    n = 6
    refs = []
    for g, level in (("x", 0.0), ("y", 5.0), ("z", -5.0)):
        for i in range(3):
            v = rng.normal(0, 1, n)          # noise at every layer ...
            v[2] = level + rng.normal(0, 0.05)  # ... but layer 2 separates the generators
            refs.append(EnrolledCurve(g, f"{g}{i}", curve(v)))
    x = np.stack([r.fingerprint.vector() for r in refs])
    assert choose_layer(x, [r.generator for r in refs]) == 2
    m = make_matcher("best-layer").fit(refs)
    assert m.describe()["layer_index"] == 2 and m.options()["layer"] == "best"
    assert make_matcher("last-layer").fit(refs).describe()["layer_index"] == n - 1
    with pytest.raises(UsageError, match="does not exist"):
        LayerMatcher(layer=n).fit(refs)
    with pytest.raises(UsageError, match="layer must be"):
        LayerMatcher(layer="middle")


def test_fid_nearest_neighbour_picks_the_nearest_fid():
    rng = np.random.default_rng(0)
    refs = [EnrolledCurve(g, f"{g}{i}", curve(rng.normal(0, 1, 4)), {"fid": fid + i * 0.5})
            for g, fid in (("x", 10.0), ("y", 20.0), ("z", 30.0)) for i in range(2)]
    query = curve(rng.normal(0, 1, 4))
    m = make_matcher("fid", fids={curve_key(query): 21.7}, open_set=False).fit(refs)
    ranked = m.rank(query)
    assert [c.generator for c in ranked] == ["y", "z", "x"]
    assert ranked[0].instance == "y1" and ranked[0].score == pytest.approx(-(21.7 - 20.5))
    assert m.describe()["statistic"] == "fid"
    with pytest.raises(UsageError, match="no FID is recorded"):
        m.rank(curve(rng.normal(0, 1, 4)))
    with pytest.raises(UsageError, match="needs the FID of every reference"):
        make_matcher("fid").fit([replace(r, provenance={}) for r in refs])
    with pytest.raises(UsageError, match="finite number"):
        make_matcher("fid", fids={"k": float("nan")})


def test_baselines_are_opt_in_and_evaluated_when_named(plugin_host):
    from forensics import api

    assert {"last-layer", "best-layer", "fid"} <= set(available_matchers(baselines=True))
    assert not {"last-layer", "best-layer", "fid"} & set(available_matchers())
    refs = with_fids(sample_references(generators=("a", "b", "c"), per=3))
    for name in ("last-layer", "fid"):
        ev = leave_one_out(refs, make_matcher(name, fids=fid_table(refs)) if name == "fid" else name)
        assert ev.error is None and ev.correct == ev.n == len(refs), name
    assert api._matcher_names(["alpha", "fid"]) == ["alpha", "fid"]
    assert "fid" not in api._matcher_names(None)
