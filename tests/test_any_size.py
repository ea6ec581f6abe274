"""Queries of any batch size and post-processing condition (issue 25).

The statistic's per-image records must give back exactly the curve of any subset of a set's images;
the registry keeps them per condition, hash-checked, and refuses what does not match; a query of m′ ≠ m
images is matched against the instances redrawn at m′; a query's condition is read from its files or
declared. The end-to-end part runs on scikit-learn's digits with the project's MNIST ViT (shipped
weights), m = 100, and generators made from the training set by curated transforms.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from forensics.cli.commands import app
from forensics.conditions import (CONDITIONS, NONE, detect, file_jpeg, file_webp, get_condition, ijg_table, jpeg_quality,
                                  mixture_of, parse_conditions, records_hint, resample, scaled, scaled_mixture,
                                  webp_quantiser)
from forensics.errors import RegistryError, StatisticError, UsageError
from forensics.match.batchsize import CALIBRATION_DRAWS, layer_weights, mixed_subbatches, references_at, subbatches
from forensics.registry import Registry
from forensics.registry.records import read_records, write_records
from forensics.stats.ct import FittedCT


def run(args, **kw):
    return CliRunner().invoke(app, args, **kw)


# -- the statistic's records ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 12)) * 3
    train = np.concatenate([c + rng.normal(size=(60, 12)) for c in centres])
    test = np.concatenate([c + rng.normal(size=(30, 12)) for c in centres])
    generated = np.concatenate([c + rng.normal(size=(40, 12)) * 0.8 for c in centres])
    return FittedCT.fit(train, test, k=4, distance="cosine", projection=8, seed=0), generated


def test_records_of_any_subset_score_exactly_as_that_subset(fitted):
    fit, generated = fitted
    records = fit.records(generated)
    assert records.shape == (len(generated), 2) and records.dtype == np.float64
    assert fit.score_records(records).to_dict() == fit.score(generated).to_dict()
    rng = np.random.default_rng(1)
    for size, tau in ((30, 0.0), (90, None), (121, None)):
        rows = np.sort(rng.choice(len(generated), size, replace=False))
        assert fit.score_records(records[rows], tau=tau).to_dict() == fit.score(generated[rows], tau=tau).to_dict()
    with pytest.raises(StatisticError, match="no cell counts"):  # undefined on both paths alike
        fit.score_records(records[::8])
    shuffled = rng.permutation(len(generated))  # the order of the rows does not matter
    assert fit.score_records(records[shuffled]).value == fit.score(generated).value


def test_many_subsets_scored_together_are_each_subsets_own_score(fitted):
    from scipy.stats import mannwhitneyu

    fit, generated = fitted
    records = fit.records(generated)
    rng = np.random.default_rng(2)
    subsets = [rng.choice(len(generated), size, replace=False) for size in (40, 90, 90, 160)] + [None]
    together = fit.score_subsets(records, subsets, batch_size=160)
    for rows, result in zip(subsets, together):
        alone = generated if rows is None else generated[rows]
        assert result.to_dict() == fit.score(alone, batch_size=160).to_dict()
    # each cell's U is scipy's on that subset's distances (the ranks are summed, not recounted)
    rows = subsets[1]
    arrays = fit.to_arrays()
    test_cells, test_dist = arrays["test_cells"], arrays["test_dist"]
    for cell in together[1].cells:
        if cell.n_generated:
            lq = records[rows][records[rows][:, 0] == cell.cell, 1]
            assert cell.u == mannwhitneyu(lq, test_dist[test_cells == cell.cell], alternative="less").statistic
    with pytest.raises(StatisticError, match="no cell counts"):  # an undefined subset fails as it alone would
        fit.score_subsets(records, [subsets[0], np.arange(0, 160, 40)])


def test_the_values_of_many_subsets_are_their_scores_to_the_last_bit(fitted):
    """What resampling and redrawing use (FittedCT.subset_values): each subset's C_T value alone, bit for bit
    the value of scoring it, NaN where it is undefined; every τ rule, repeated rows, subsets of every size."""
    fit, generated = fitted
    records = fit.records(generated)
    rng = np.random.default_rng(5)
    subsets = [None, *(rng.choice(len(generated), size, replace=True) for size in (12, 40, 77, 160, 300)),
               *(rng.choice(len(generated), size, replace=False) for size in (30, 90, 121)), np.arange(0, 160, 40)]
    undefined = 0
    for params in ({}, {"batch_size": 160}, {"tau": 0.0}, {"tau": 0.3}):
        values = fit.subset_values(records, subsets, **params)
        undefined += int(np.isnan(values).sum())
        assert values.shape == (len(subsets),)
        for rows, value in zip(subsets, values):
            try:
                expected = fit.score_records(records if rows is None else records[rows], **params).value
            except StatisticError:
                assert np.isnan(value)
            else:
                assert value == expected  # exactly: the same sums in the same order
    assert undefined  # some subset undefined under some τ: the NaN path is taken
    with pytest.raises(StatisticError, match="no generated points"):
        fit.subset_values(records, [np.arange(0)])
    with pytest.raises(StatisticError, match="must be a non-empty"):
        fit.subset_values(records[:, :1], [None])


@pytest.mark.slow  # the digits registry
def test_the_engine_scores_many_subsets_as_it_scores_each(digits, plugin_host):
    from forensics.engine import make_engine
    from forensics.registry import Registry

    reg_path, data = digits
    reg = Registry.open(reg_path)
    proto = reg.protocol(reg.resolve_protocol(None))
    engine = make_engine(proto, reference_dir=reg.reference_dir)
    refs = reg.enrolled(proto.name)
    records = reg.records(proto.name, refs, "none")[0][refs[0].instance]
    n = records.shape[1]
    subsets = [None, np.arange(3), np.arange(n // 2, n)]

    def same_as_alone():
        together = engine.curves_from_records(list(records), subsets)
        for rows, curve in zip(subsets, together):
            alone = engine.curve_from_records(list(records), rows)
            assert curve.fingerprint.values == alone.fingerprint.values
            assert curve.n_images == (n if rows is None else len(rows))
            assert [v.undefined_reason for v in curve.layers] == [v.undefined_reason for v in alone.layers]
        return together

    assert same_as_alone()[0].fingerprint.values == refs[0].fingerprint.values  # all its rows: its enrolled curve
    engine.score_params = {**engine.score_params, "tau": 0.5}  # a cell must hold half a subset: some cannot
    undefined = [v for curve in same_as_alone() for v in curve.layers if v.value is None]
    assert undefined and all("no cell counts" in v.undefined_reason for v in undefined)
    # the vectors alone (what resampling ranks): the curves' own, undefined values as 0
    vectors = engine.vectors_from_records(list(records), subsets)
    assert np.array_equal(vectors, [c.fingerprint.vector() for c in engine.curves_from_records(list(records), subsets)])


def test_the_default_cell_threshold_keeps_the_cells_of_a_batch_of_m_in_a_small_batch(fitted):
    from forensics.stats.ct.statistic import default_tau

    assert default_tau(500, 10) == default_tau(500, 10, 500) == 20 / 500       # Meehan et al.'s 20/m
    assert default_tau(100, 10) == 20 / 100                                    # no protocol: 20/m′
    assert default_tau(100, 10, 500) == 20 / 500     # 100 < 20k: the share a batch of 500 must hold
    assert default_tau(199, 10, 500) == 20 / 500 and default_tau(200, 10, 500) == 20 / 200  # from 20k on: 20/m′
    assert default_tau(150, 10, 100) == 20 / 150     # larger than m: never stricter than 20/m′
    fit, generated = fitted                          # k = 4: below 80 points the protocol's m decides
    records = fit.records(generated)
    rows = np.arange(0, 160, 3)                      # 54 points
    small = fit.score_records(records[rows], batch_size=160)
    assert small.tau == 20 / 160 and small.to_dict() == fit.score(generated[rows], batch_size=160).to_dict()
    assert small.to_dict() == fit.score_records(records[rows], tau=20 / 160).to_dict()
    with pytest.raises(UsageError, match="batch_size"):
        fit.score_records(records, batch_size=0)


def test_records_that_cannot_be_a_sets_records_are_refused(fitted):
    fit, generated = fitted
    records = fit.records(generated)
    for bad in (records[:, :1], records.astype(np.int64), np.empty((0, 2))):
        with pytest.raises(StatisticError, match="records must be"):
            fit.score_records(bad)
    broken = records.copy()
    broken[0, 1] = np.nan
    with pytest.raises(StatisticError, match="finite"):
        fit.score_records(broken)
    broken = records.copy()
    broken[0, 0] = 99
    with pytest.raises(StatisticError, match="cell 99"):
        fit.score_records(broken)


# -- sub-batches and references at m′ -----------------------------------------------------------
def test_subbatches_are_seeded_draws_without_replacement():
    a = subbatches(500, 120, 5, seed=0)
    assert len(a) == 5 and all(len(r) == 120 and len(set(r.tolist())) == 120 for r in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, subbatches(500, 120, 5, seed=0)))
    assert not np.array_equal(a[0], subbatches(500, 120, 5, seed=0, purpose=1)[0])
    assert [r.tolist() for r in subbatches(100, 100, 5, seed=0)] == [list(range(100))]


def test_references_at_the_enrolled_size_are_the_enrolled_curves(fitted):
    from forensics.match.types import EnrolledCurve
    from forensics.protocol import Fingerprint

    fit, generated = fitted
    rec = fit.records(generated)[None]  # one layer

    def curves_of(r, subsets):
        return [np.array([fit.score_records(r[0][rows]).value]) for rows in subsets]

    enrolled = EnrolledCurve("g", "i0", Fingerprint("sha256:" + "0" * 64, (fit.score(generated).value,)), {})
    same = references_at([enrolled], {"i0": rec}, len(generated), curves_of)
    assert same.references[0].fingerprint.values == enrolled.fingerprint.values
    smaller = references_at([enrolled], {"i0": rec}, 100, curves_of, draws=6)
    rows = subbatches(len(generated), 100, 6, seed=0)
    assert smaller.references[0].fingerprint.values[0] == pytest.approx(
        np.mean([fit.score(generated[r]).value for r in rows]), abs=1e-12)
    assert len(smaller.queries["i0"]) == CALIBRATION_DRAWS and smaller.references[0].provenance["batch_size"] == 100
    assert references_at([enrolled], {}, 100, curves_of).without_records == ("g/i0",)


def test_a_mixture_is_named_as_conditions_with_shares():
    from forensics.conditions import parse_mixture

    assert parse_mixture("jpeg90", 100) is None
    assert parse_mixture("none/jpeg90", 101) == (("jpeg90", 51), ("none", 50))
    assert parse_mixture("none:3/jpeg90:1", 200) == (("none", 150), ("jpeg90", 50))
    for bad in ("none/none", "none/jpeg90:0", "none/jpeg90:x", "none/jpeg90:nan"):
        with pytest.raises(UsageError, match="name each condition once"):
            parse_mixture(bad, 100)
    with pytest.raises(UsageError, match="unknown condition 'sepia'"):
        parse_mixture("none/sepia", 100)
    with pytest.raises(UsageError, match="leaves a batch of 10 images under one condition"):
        parse_mixture("none:1000/jpeg90:1", 10)


def test_a_set_scored_in_parts_combines_the_parts_defined_by_their_effective_sizes():
    from forensics.api import parts_curve
    from forensics.engine import Curve, LayerValue
    from forensics.protocol import Fingerprint

    proto = Registry.open(None).protocol("mnist-vit")
    n = len(proto.layers)

    def curve(values, images, weight):
        layers = tuple(LayerValue(name, v, None if v is None else weight, None if v is not None else "no cell counted",
                                  "undefined" if v is None else "no evidence") for name, v in zip(proto.layers, values))
        return Curve(Fingerprint.from_values(proto.digest, list(values)), layers, images)

    a = curve([-4.0] * (n - 2) + [None, None], 300, 0.5)
    b = curve([1.0] * (n - 2) + [2.0, None], 100, 0.9)
    assert parts_curve([a], proto) is a
    both = parts_curve([a, b], proto)
    n_test = proto.parts[0].test.count  # each part's Z grows like the root of its effective size m·n / (m + n)
    h = [k * n_test / (k + n_test) for k in (300, 100)]
    whole = 400 * n_test / (400 + n_test)
    assert both.n_images == 400 and both.layers[0].value == pytest.approx(
        (-4 * h[0] ** 0.5 + 1 * h[1] ** 0.5) * whole ** 0.5 / sum(h), rel=1e-12)
    assert both.layers[0].reading == "copying" and both.layers[0].counted_weight == pytest.approx(0.6)
    # a part undefined at a layer: the others stand for the set there, weighted among themselves
    assert (both.layers[n - 2].value, both.layers[n - 2].counted_weight) == (2.0, 0.9)
    # every part undefined: undefined, saying why for each
    last = both.layers[n - 1]
    assert last.value is None and last.reading == "undefined" and "(300 images)" in last.undefined_reason
    assert both.fingerprint.values[n - 1] is None
    # the order of the parts does not matter
    swapped = parts_curve([b, a], proto).fingerprint.values
    assert swapped[-1] is None and swapped[:-1] == pytest.approx(both.fingerprint.values[:-1], rel=1e-12)


def test_mixed_subbatches_take_each_image_once_under_the_batchs_counts_of_each_condition():
    n, counts = 200, (70, 30, 20)
    drawn = mixed_subbatches(n, counts, 6, seed=0)
    for rows in drawn:
        block = rows // n
        assert [int((block == c).sum()) for c in range(3)] == list(counts)
        images = rows % n
        assert len(set(images.tolist())) == len(rows)  # no image twice, under any condition
    assert all(np.array_equal(a, b) for a, b in zip(drawn, mixed_subbatches(n, counts, 6, seed=0)))
    assert not np.array_equal(drawn[0], mixed_subbatches(n, counts, 6, seed=0, purpose=1)[0])
    assert len({tuple(r) for r in mixed_subbatches(100, (50, 50), 8, seed=0)}) == 8  # all images: still drawn
    (more,) = mixed_subbatches(100, (150, 50), 1, seed=0)  # more than the instance has: its n, in proportion
    assert len(more) == 100 and int((more < 100).sum()) == 75
    assert scaled_mixture((("jpeg90", 600), ("none", 400)), 500) == (("jpeg90", 300), ("none", 200))
    assert scaled_mixture((("none", 998), ("jpeg90", 2)), 100) == (("none", 100),)
    assert sum(k for _, k in scaled_mixture((("a", 1), ("b", 1), ("c", 1)), 100)) == 100
    assert mixture_of(["none", "jpeg90", "none"]) == (("none", 2), ("jpeg90", 1))


def test_references_of_a_mixed_batch_are_the_curves_of_batches_processed_in_those_proportions(fitted):
    from forensics.match.types import EnrolledCurve
    from forensics.protocol import Fingerprint

    fit, generated = fitted
    processed = generated + np.random.default_rng(5).normal(size=generated.shape) * 0.6  # another condition
    stacked = np.concatenate([fit.records(generated), fit.records(processed)])[None]  # (1 layer, 2n, fields)
    n = len(generated)

    def curves_of(r, subsets):
        return [np.array([fit.score_records(r[0][rows]).value]) for rows in subsets]

    enrolled = EnrolledCurve("g", "i0", Fingerprint("sha256:" + "0" * 64, (0.0,)), {})
    at = references_at([enrolled], {"i0": stacked}, 100, curves_of, draws=5, mixture=[60, 40])
    expected = []  # independently: the images themselves, each put through its condition, scored as a set
    for rows in mixed_subbatches(n, (60, 40), 5, seed=0):
        images = np.concatenate([generated[rows[rows < n]], processed[rows[rows >= n] - n]])
        expected.append(fit.score(images).value)
    assert at.references[0].fingerprint.values[0] == pytest.approx(np.mean(expected), abs=1e-12)
    assert len(at.queries["i0"]) == CALIBRATION_DRAWS and at.references[0].provenance["sub_batches"] == 5
    with pytest.raises(ValueError, match="a mixture of 90 images for batches of 100"):
        references_at([enrolled], {"i0": stacked}, 100, curves_of, mixture=[60, 30])


# -- conditions -------------------------------------------------------------------------------------
# -- matching a batch of m′ in units of its noise ------------------------------------------------
def _curves(values, generators, digest="sha256:" + "0" * 64):
    from forensics.match.types import EnrolledCurve
    from forensics.protocol import Fingerprint

    return [EnrolledCurve(g, f"{g}-{i}", Fingerprint(digest, tuple(map(float, v))), {})
            for i, (v, g) in enumerate(zip(values, generators))]


def test_layer_weights_are_the_root_of_each_layers_signal_over_its_noise_over_its_noise():
    rng = np.random.default_rng(3)
    gens = ["a", "a", "b", "b", "b", "c"]
    values = rng.normal(size=(6, 5)) * [1, 1, 3, 1, 1]
    values[:, 4] = [0, 0, 1, 1, 1, 2]  # the last layer: each generator's runs alike, and no batch noise
    refs = _curves(values, gens)
    queries = {r.instance: list(r.fingerprint.vector() + rng.normal(size=(7, 5)) * [1, 2, 4, 1, 0]) for r in refs}
    queries["b-4"] = []  # an instance without queries adds nothing
    w = np.array(layer_weights(refs, queries))
    # independent reference, by hand: every residual against its generator's mean reference (the noise), the
    # spread of the generators' means (the signal)
    res, means = [], []
    for g in "abc":
        mean = np.mean([r.fingerprint.vector() for r in refs if r.generator == g], axis=0)
        means.append(mean)
        res += [q - mean for r in refs if r.generator == g for q in queries[r.instance]]
    sd = np.sqrt((np.array(res) ** 2).mean(axis=0))[:4]
    root = np.sqrt(np.array(means).std(axis=0)[:4] / sd)
    assert np.allclose(w[:4], root / sd / np.sqrt(np.mean(root ** 2)), rtol=1e-12)
    assert w[4] == 0.0  # a layer with no noise at all has weight 0, never an infinite one
    # on average a curve is still in units of one batch's noise: √(b/σ) has a root-mean-square of 1
    assert np.isclose(np.sqrt(np.mean((w[:4] * sd) ** 2)), 1.0, rtol=1e-12)


def test_layer_weights_do_not_depend_on_a_layers_units_and_ignore_what_tells_no_generator_apart():
    rng = np.random.default_rng(4)
    gens = ["a", "a", "b", "b"]
    base = rng.normal(size=(4, 3))
    base[:, 2] = 0.5  # every generator alike on the last layer
    refs = _curves(base, gens)
    noise = {r.instance: rng.normal(size=(5, 3)) for r in refs}
    queries = {r.instance: list(r.fingerprint.vector() + noise[r.instance]) for r in refs}
    w = np.array(layer_weights(refs, queries))
    assert w[2] == 0.0 and (w[:2] > 0).all()
    # a layer read in other units (times 10) is weighted by a tenth: the weighted curves do not change
    scale = np.array([10.0, 1.0, 1.0])
    scaled = np.array(layer_weights(_curves(base * scale, gens),
                                    {k: [q * scale for q in v] for k, v in queries.items()}))
    assert np.allclose(scaled * scale, w, rtol=1e-12)
    # one generator: nothing to tell apart, each layer is one over its noise
    one = [r for r in refs if r.generator == "a"]
    solo = np.array(layer_weights(one, queries))
    res = np.array([q - np.mean([r.fingerprint.vector() for r in one], axis=0) for r in one for q in queries[r.instance]])
    assert np.allclose(solo, 1 / np.sqrt((res ** 2).mean(axis=0)), rtol=1e-12)


def test_a_weighted_matcher_is_the_matcher_on_weighted_curves():
    from forensics.match import make_matcher

    rng = np.random.default_rng(4)
    gens = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    base = {"a": rng.normal(size=5) * 3, "b": rng.normal(size=5) * 3, "c": rng.normal(size=5) * 3}
    values = [base[g] + rng.normal(size=5) * 0.3 for g in gens]
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0])
    refs, scaled = _curves(values, gens), _curves([v * w for v in values], gens)
    queries = {r.instance: [r.fingerprint.vector() + rng.normal(size=5) * 0.5 for _ in range(3)] for r in refs}
    weighted = make_matcher("alpha", layer_weights=list(w)).fit(refs, queries)
    plain = make_matcher("alpha").fit(scaled, {k: [q * w for q in v] for k, v in queries.items()})
    assert weighted.options()["layer_weights"] == list(w)
    for probe in [base["b"] + 0.1, base["a"] * 0.5 + base["c"] * 0.5, rng.normal(size=5)]:
        x, y = weighted.attribute(probe), plain.attribute(probe * w)
        assert [(c.generator, c.score) for c in x.candidates] == [(c.generator, c.score) for c in y.candidates]
        assert x.verdict == y.verdict and x.distance_ratio == y.distance_ratio
    assert weighted.calibration["score"] == plain.calibration["score"]
    with pytest.raises(UsageError, match="layer"):
        make_matcher("alpha", layer_weights=[1.0, -1.0, 1.0, 1.0, 1.0])
    with pytest.raises(UsageError, match="layer weights"):
        make_matcher("alpha", layer_weights=[1.0] * 4).fit(refs)


def test_a_generators_spread_at_m_prime_is_what_single_batches_see():
    from forensics.match.similarity import query_spreads

    curves = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    labels = np.array(["a", "a", "b"], dtype=object)
    # a-0's queries lie 2 and 4 from a-1, a-1's lie 3 from a-0: median of {2, 4, 3}
    queries = {"a-0": [np.array([1.0, 2.0]), np.array([1.0, -4.0])], "a-1": [np.array([0.0, 3.0])],
               "b-2": [np.array([10.0, 1.0])]}
    spreads = query_spreads(curves, labels, ["a-0", "a-1", "b-2"], queries)
    assert spreads["a"] == 3.0 and spreads["b"] == 3.0  # one instance: the pooled median


def test_jpeg_quality_is_read_from_the_quantisation_tables(tmp_path):
    img = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    for q in (95, 90, 83, 75, 70, 40):
        Image.fromarray(img).save(tmp_path / f"q{q}.jpg", quality=q)
        assert file_jpeg(tmp_path / f"q{q}.jpg").quality == q
    Image.fromarray(img).save(tmp_path / "a.png")
    assert file_jpeg(tmp_path / "a.png") is None
    assert jpeg_quality(list(range(1, 65))) [1] is False  # not a libjpeg table: the nearest, not exact
    kept = [n for n in CONDITIONS if n == "none" or n.startswith("jpeg")]  # 98, and every 5 from 95 to 70
    found = detect([tmp_path / "q75.jpg", tmp_path / "q75.jpg", tmp_path / "a.png"], kept)
    assert found.name == "jpeg75" and "quality 75" in found.detail and "1 of 3 files differ" in found.detail
    assert "1 of the 3 files are not JPEG at quality 75" in found.warning  # a guess, and said so
    q90 = detect([tmp_path / "q90.jpg"], kept)
    assert q90.name == "jpeg90" and q90.warning is None
    q83 = detect([tmp_path / "q83.jpg"], kept)  # between kept qualities: the nearest, within the tolerance
    assert q83.name == "jpeg85" and q83.warning is None
    low = detect([tmp_path / "q40.jpg"], kept)  # below every kept quality: the nearest, but not what it is
    assert low.name == "jpeg70" and "quality 40 lies more than 2 from every quality the references keep (70, 75, " \
        "80, 85, 90, 95, 98)" in low.warning
    # any quality is a condition: the commands that keep records under the files' own
    assert "`forensics registry records NAME IMAGES --conditions jpeg40` keeps records under it" in low.warning
    assert "`forensics zoo enroll --conditions jpeg40` for the zoo's" in low.warning
    # a registry that keeps fewer qualities (enrolled with --conditions): the nearest, with the way to keep the one
    older = detect([tmp_path / "q75.jpg"], ["none", "jpeg95", "jpeg90", "jpeg80", "jpeg70"])
    assert older.name == "jpeg80" and "quality 75 lies more than 2" in older.warning
    assert "`forensics registry records NAME IMAGES --conditions jpeg75` keeps records" in older.warning
    assert "quality 83 lies more than 2" in detect([tmp_path / "q83.jpg"], ["none", "jpeg95"]).warning
    assert detect([tmp_path / "a.png"], kept).name == "none" and detect([tmp_path / "a.png"], kept).warning is None
    assert detect(None, kept).source == "default"
    # tables another encoder wrote (a camera's, an editor's): the nearest libjpeg quality, and said to be a guess
    own = [int(v) + (i % 3 == 0) for i, v in enumerate(ijg_table(85))]
    Image.fromarray(img).save(tmp_path / "camera.jpg", qtables=[own, own])
    assert file_jpeg(tmp_path / "camera.jpg")[:2] == (85, False) and file_jpeg(tmp_path / "q90.jpg")[:2] == (90, True)
    camera = detect([tmp_path / "camera.jpg", tmp_path / "camera.jpg", tmp_path / "q90.jpg"], kept)
    assert camera.name == "jpeg85" and "2 of the 3 JPEG files have quantisation tables other than libjpeg's" \
        in camera.warning
    assert "other than libjpeg's" not in (detect([tmp_path / "q90.jpg", tmp_path / "q75.jpg"], kept).warning or "")
    # quality 100 quantises nothing (every step 1): as generated, unless colour lost its chroma resolution
    Image.fromarray(img).save(tmp_path / "q100.jpg", quality=100)
    top = detect([tmp_path / "q100.jpg"] * 2, kept)
    assert top.name == "none" and "nothing quantised" in top.detail and top.warning is None
    assert "1 of the 2 files are not JPEG at quality 100" in detect([tmp_path / "q100.jpg", tmp_path / "a.png"],
                                                                    kept).warning
    rgb = np.stack([img, img[::-1], img.T], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c420.jpg", quality=100)  # libjpeg's default for colour: 4:2:0
    Image.fromarray(rgb).save(tmp_path / "c444.jpg", quality=100, subsampling=0)
    assert file_jpeg(tmp_path / "c420.jpg") == (100, True, True) and file_jpeg(tmp_path / "c444.jpg")[2] is False
    assert detect([tmp_path / "c420.jpg"], kept).name == "jpeg98" and detect([tmp_path / "c444.jpg"], kept).name == "none"
    assert detect([tmp_path / "q95.jpg"], kept).name == "jpeg95"
    for q in (96, 97, 99, 93):
        Image.fromarray(img).save(tmp_path / f"q{q}.jpg", quality=q)
    # within 2 of a kept quality, but near the top one quality is a large step of quantisation: said so
    q96 = detect([tmp_path / "q96.jpg"], kept)
    assert q96.name == "jpeg95" and q96.warning is None  # 0.8× the step of 95: close enough
    q97 = detect([tmp_path / "q97.jpg"], kept)
    assert q97.name == "jpeg98" and "quality 97 quantises 1.5× as coarsely as 98" in q97.warning
    assert "quality 99 quantises 2× as finely as 98" in detect([tmp_path / "q99.jpg"], kept).warning
    assert "quality 93 quantises 1.4× as coarsely as 95" in detect([tmp_path / "q93.jpg"], kept).warning
    assert detect([tmp_path / "q83.jpg"], kept).warning is None
    unkept = detect([tmp_path / "q90.jpg"], ["none"])  # no JPEG records: matched as generated, with a warning
    assert unkept.name == "none" and "keep no JPEG condition" in unkept.warning


def test_conditions_are_deterministic_and_png_changes_nothing(tmp_path):
    x = (np.random.default_rng(0).random((4, 28, 28)) * 255).astype(np.uint8)
    rgb = np.stack([x] * 3, axis=-1)
    for name, cond in CONDITIONS.items():
        for images in (x, rgb):
            out = cond.apply(images)
            assert out.shape == images.shape and out.dtype == np.uint8
            assert np.array_equal(out, cond.apply(images)), name
    assert np.array_equal(get_condition("none").apply(x), x)
    buf = io.BytesIO()
    Image.fromarray(x[0]).save(buf, format="PNG")
    assert np.array_equal(np.asarray(Image.open(buf)), x[0])
    assert parse_conditions("jpeg90, none,jpeg90") == ["none", "jpeg90"]
    assert parse_conditions("all") == list(CONDITIONS)
    with pytest.raises(UsageError, match="unknown condition 'jpeg120'"):
        parse_conditions("jpeg120")


def _one_way(images: np.ndarray, kind: str) -> list:
    """The first half of a resampling condition alone, as PIL images: what an analyst receives."""
    out = []
    for a in images:
        im = Image.fromarray(a)
        w, h = im.size
        if kind == "crop90":
            cw, ch = scaled((w, h), 0.9)
            out.append(im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)))
        else:
            out.append(im.resize(scaled((w, h), CONDITIONS[kind].scale), Image.BICUBIC))
    return out


def _files(folder, images, suffix: str, **options):
    """``folder`` holding each PIL image as a file of that kind, in order."""
    folder.mkdir()
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.{suffix}", **options)
    return folder


def test_images_brought_back_to_the_generators_size_are_the_resampling_conditions_exactly():
    # the tool brings images of another size back to the generators' (bicubic): for images that went
    # through the first half of a resize or crop round trip, that is the condition, bit for bit
    x = (np.random.default_rng(1).random((5, 28, 28)) * 255).astype(np.uint8)
    for images in (x, np.stack([x, x[::-1], x], axis=-1)):
        for kind in ("resize2", "resize0.5", "crop90"):
            halves = np.stack([np.asarray(im) for im in _one_way(images, kind)])
            assert np.array_equal(resample(halves, (28, 28)), CONDITIONS[kind].apply(images)), kind


def test_a_resampling_is_read_from_the_images_size():
    kept = list(CONDITIONS)
    native = (28, 28)
    for size, name in (((56, 56), "resize2"), ((14, 14), "resize0.5"), ((25, 25), "crop90")):
        found = detect(None, kept, sizes=[size], native=native)
        assert (found.name, found.source, found.resample_to, found.warning) == (name, "files", native, None), size
        assert found.to_dict()["resampled_to"] == [28, 28]
    # a scale no condition has: the nearest one (in log scale), said to be a guess
    odd = detect(None, kept, sizes=[(42, 42)], native=native)
    assert odd.name == "resize2" and "×1.5 the 28×28 the generators write" in odd.warning
    assert detect(None, kept, sizes=[(16, 16)], native=native).name == "resize0.5"  # nearer ×0.5 than ×0.9
    stretched = detect(None, kept, sizes=[(56, 28)], native=native)  # 28 wide, 56 high
    assert stretched.resample_to == native and "28×56" in stretched.warning
    # the condition not kept: brought back all the same, matched as generated, and the command that adds it
    unkept = detect(None, ["none", "jpeg90"], sizes=[(56, 56)], native=native)
    assert unkept.name == "none" and unkept.resample_to == native
    assert "`forensics registry records NAME IMAGES --conditions resize2` keeps records" in unkept.warning
    # the generators' own size, no size known, or sizes that say nothing: as the encoding says
    for sizes, gen in (([native], native), ([(56, 56)], None), ([], native)):
        plain = detect(None, kept, sizes=sizes, native=gen)
        assert (plain.name, plain.source, plain.resample_to) == ("none", "default", None)
    mixed = detect(None, kept, sizes=[(28, 28), (56, 56)], native=native)
    assert mixed.name == "none" and mixed.resample_to is None and "come in 2 sizes (28×28, 56×56)" in mixed.warning
    assert "resampled_to" not in mixed.to_dict()


def test_resized_then_re_encoded_images_brought_back_are_the_combined_conditions_exactly(tmp_path):
    # a platform resizes, then saves as JPEG or WebP at the new size; the tool reads the files and brings
    # them back: for PIL-written files that is the combined condition, bit for bit
    x = (np.random.default_rng(4).random((4, 28, 28)) * 255).astype(np.uint8)
    for images in (x, np.stack([x, x[::-1], x], axis=-1)):
        for kind, encoding, options in (("resize2", "jpeg90", {"quality": 90}), ("resize0.5", "jpeg75", {"quality": 75}),
                                        ("crop90", "webp80", {"quality": 80})):
            suffix = "jpg" if encoding.startswith("jpeg") else "webp"
            folder = _files(tmp_path / f"{kind}-{encoding}-{images.ndim}", _one_way(images, kind), suffix, **options)
            read = np.stack([np.asarray(Image.open(f).convert("RGB" if images.ndim == 4 else "L"))
                             for f in sorted(folder.iterdir())])
            assert np.array_equal(resample(read, (28, 28)), get_condition(f"{kind}+{encoding}").apply(images))
    combined = get_condition("crop90+webp80")
    assert (combined.scale, combined.webp_quality, combined.resampling, combined.encoding) == (0.9, 80, "crop90",
                                                                                            "webp80")
    for wrong in ("jpeg90+resize2", "resize2+crop90", "jpeg90+webp80", "resize2+sepia"):
        with pytest.raises(UsageError, match="unknown condition|a resampling and then a re-encoding"):
            get_condition(wrong)
    assert {n for n in CONDITIONS if "+" in n} == {f"{r}+{e}" for r in ("resize2", "resize0.5", "crop90")
                                                   for e in ("jpeg90", "jpeg75", "webp80")}


def test_any_jpeg_or_webp_quality_is_a_condition_and_memorization_reads_the_files_own(tmp_path):
    from forensics.conditions import applicable

    q62 = get_condition("jpeg62")
    assert (q62.jpeg_quality, q62.encoding, q62.resample) == (62, "jpeg62", None)
    assert get_condition("webp40").webp_quality == 40 and get_condition("crop90+jpeg33").jpeg_quality == 33
    x = (np.random.default_rng(5).random((3, 28, 28)) * 255).astype(np.uint8)
    assert np.array_equal(q62.apply(x), np.stack([np.asarray(Image.open(io.BytesIO(_jpeg_bytes(a, 62)))) for a in x]))
    for bad in ("jpeg0", "jpeg101", "jpeg062", "jpeg", "webpx"):
        with pytest.raises(UsageError, match="unknown condition"):
            get_condition(bad)
    folder = _files(tmp_path / "q62", [Image.fromarray(a) for a in x], "jpg", quality=62)
    files = sorted(folder.iterdir())
    # against a registry's records: the nearest kept quality, said to be a guess
    kept = detect(files, list(CONDITIONS))
    assert kept.name == "jpeg70" and "quality 62" in kept.warning
    # where T and P_n can be put through any (memorization): the files' own, no guess
    own = detect(files, applicable())
    assert (own.name, own.warning) == ("jpeg62", None)
    up = _files(tmp_path / "up62", _one_way(x, "resize2"), "jpg", quality=62)
    assert detect(sorted(up.iterdir()), applicable(), sizes=[(56, 56)], native=(28, 28)).name == "resize2+jpeg62"


def test_a_lossy_webp_files_own_quality_is_found_by_re_encoding_at_every_quality(tmp_path):
    from pathlib import Path

    from forensics.conditions import WEBP_TOLERANCE, applicable, webp_quality

    images = np.load(Path(__file__).resolve().parent.parent / "registry" / "mnist-effnet-lite0" / "samples" / "vae"
                     / "heldout.npz")["images"][:16]
    files = {q: sorted(_files(tmp_path / f"q{q}", [Image.fromarray(a) for a in images], "webp", quality=q).iterdir())
             for q in (20, 42, 60, 83, 95)}
    for q, written in files.items():  # within one quality of the one they were written at, searched coarse to fine
        found, change = webp_quality(written)
        assert abs(found - q) <= 1 and change <= WEBP_TOLERANCE, (q, found, change)
    # against a registry's records: the nearest kept quality, a guess, and the commands that keep the files' own
    kept = detect(files[60], list(CONDITIONS))
    own = webp_quality(files[60])[0]
    assert kept.name == "webp75" and f"they are about quality {own}" in kept.warning
    assert f"`forensics zoo enroll --conditions webp{own}` for the zoo's" in kept.warning
    # where T and P_n can be put through any (memorization): the files' own, no guess, and it is what the files hold
    mem = detect(files[60], applicable())
    assert (mem.name, mem.warning) == (f"webp{own}", None)
    if own == 60:
        assert np.array_equal(np.stack([np.asarray(Image.open(f).convert("L")) for f in files[60]]),
                              get_condition("webp60").apply(images))
    up = sorted(_files(tmp_path / "up60", _one_way(images, "resize2"), "webp", quality=60).iterdir())
    assert detect(up, applicable(), sizes=[(56, 56)], native=(28, 28)).name == f"resize2+webp{webp_quality(up)[0]}"


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_resized_jpeg_files_are_matched_under_the_combination_their_size_and_tables_say(tmp_path):
    x = (np.random.default_rng(2).random((2, 56, 56)) * 255).astype(np.uint8)
    folders = {q: _files(tmp_path / f"q{q}", [Image.fromarray(a) for a in x], "jpg", quality=q) for q in (90, 85, 75)}
    files = {q: sorted(f.iterdir()) for q, f in folders.items()}
    native = (28, 28)
    found = detect(files[90], list(CONDITIONS), sizes=[(56, 56)], native=native)
    assert (found.name, found.resample_to, found.warning) == ("resize2+jpeg90", native, None)
    assert "JPEG quality 90 read from the quantisation tables" in found.detail and found.detail.endswith(
        "matched as resize2+jpeg90")
    assert detect(files[75], list(CONDITIONS), sizes=[(14, 14)], native=native).name == "resize0.5+jpeg75"
    # a quality between the kept combinations: the nearest, said to be a guess as for a plain JPEG
    near = detect(files[85], list(CONDITIONS), sizes=[(56, 56)], native=native)
    assert near.name == "resize2+jpeg90" and "quality 85" in near.warning and "(75, 90)" in near.warning
    # the combination not kept: the resampling alone, and the command that adds the combination
    alone = detect(files[90], [n for n in CONDITIONS if "+" not in n], sizes=[(56, 56)], native=native)
    assert alone.name == "resize2" and "also re-encoded (JPEG quality 90" in alone.warning
    assert "`forensics zoo enroll --conditions resize2+jpeg90` for the zoo's" in alone.warning
    # lossy WebP where only JPEG is kept with the resampling: the resampling alone, said, not withheld
    Image.fromarray(x[0]).save(tmp_path / "a.webp", quality=80)
    jpeg_only = [n for n in CONDITIONS if not n.endswith("+webp80")]
    webp = detect([tmp_path / "a.webp"], jpeg_only, sizes=[(56, 56)], native=native)
    assert webp.name == "resize2" and webp.withhold is None and "under resize2+webp80" in webp.warning
    kept = detect([tmp_path / "a.webp"], list(CONDITIONS), sizes=[(56, 56)], native=native)
    assert kept.name == "resize2+webp80" and kept.warning is None


def test_files_processed_in_several_ways_each_keep_their_own_condition(tmp_path):
    images = (np.random.default_rng(4).random((6, 28, 28)) * 255).astype(np.uint8)
    kinds = ["png", "jpeg90", "png", "jpeg75", "jpeg90", "png"]
    files = []
    for i, (x, kind) in enumerate(zip(images, kinds)):
        files.append(tmp_path / f"{i}.{'png' if kind == 'png' else 'jpg'}")
        Image.fromarray(x).save(files[-1], **({} if kind == "png" else {"quality": int(kind[4:])}))
    kept = list(CONDITIONS)
    found = detect(files, kept, mixtures=True)
    assert found.mixture == ("none", "jpeg90", "none", "jpeg75", "jpeg90", "none")  # in reading order
    assert found.name == "none" and found.source == "files" and found.warning is None
    assert "3 as none" in found.detail and "2 as jpeg90: JPEG quality 90" in found.detail
    assert found.of(slice(0, 3)) == (("none", 2), ("jpeg90", 1)) and found.of(slice(1, 2)) == "jpeg90"
    assert [m["count"] for m in found.to_dict()["mixture"]] == [3, 2, 1]
    as_before = detect(files, kept)  # without mixtures: all as the most common, with a warning
    assert as_before.mixture is None and "attribute each kind of file on its own" in as_before.warning
    # files that differ but fall under one kept condition are that condition, and nothing to warn of
    near = [tmp_path / "88.jpg", tmp_path / "90.jpg", tmp_path / "100.jpg", files[0]]
    for path, q in zip(near, (88, 90, 100)):
        Image.fromarray(images[0]).save(path, quality=q)
    one = detect(near[:2], kept, mixtures=True)
    assert (one.name, one.mixture, one.warning) == ("jpeg90", None, None) and "quality 88" in one.detail
    assert "not JPEG at quality" in detect(near[:2], kept).warning  # read as one folder: they differ
    clean = detect(near[2:], kept, mixtures=True)  # JPEG 100 quantises nothing: as generated, like the PNG
    assert (clean.name, clean.mixture, clean.warning) == ("none", None, None)
    Image.fromarray(images[0]).save(tmp_path / "40.jpg", quality=40)
    far = detect([tmp_path / "40.jpg", *near[:2]], [NONE, "jpeg90"], mixtures=True)  # 40 nearest 90 too, a guess
    assert far.name == "jpeg90" and far.warning.startswith("1 of the 3 files: JPEG quality 40 lies more than 2")
    # a kind that cannot be matched as itself (lossy WebP with no WebP kept) is no part of a mixture
    Image.fromarray(images[0]).save(tmp_path / "a.webp", quality=80)
    no_webp = [n for n, c in CONDITIONS.items() if c.webp_quality is None]
    assert detect([files[0], files[1], tmp_path / "a.webp"], no_webp, mixtures=True).mixture is None
    # one size for all, not the generators': as the resampling it says, for all of them
    assert detect(files, kept, sizes=[(56, 56)], native=(28, 28), mixtures=True).mixture is None


def test_files_of_several_sizes_are_each_brought_back_and_read_as_their_own_resampling(tmp_path):
    from forensics.io.images import read_image_set

    images = (np.random.default_rng(6).random((6, 28, 28)) * 255).astype(np.uint8)
    folder = tmp_path / "sizes"
    folder.mkdir()
    ims = [Image.fromarray(x) for x in images]
    ims[1].resize((56, 56), Image.BICUBIC).save(folder / "1.png")  # ×2, one way
    ims[3].resize((14, 14), Image.BICUBIC).save(folder / "3.png")  # ×0.5
    ims[4].resize((56, 56), Image.BICUBIC).save(folder / "4.jpg", quality=90)  # ×2, then JPEG 90 at that size
    for i in (0, 2, 5):
        ims[i].save(folder / f"{i}.png")
    found = read_image_set(folder, native=(28, 28))
    assert found.sizes == ((14, 14), (28, 28), (56, 56))
    assert found.image_sizes == ((28, 28), (56, 56), (28, 28), (14, 14), (56, 56), (28, 28))
    # each brought back as its resampling condition brings it: that condition of the image, bit for bit
    assert np.array_equal(found.images[[0, 2, 5]], images[[0, 2, 5]])
    assert np.array_equal(found.images[1], get_condition("resize2").apply(images[1:2])[0])
    assert np.array_equal(found.images[3], get_condition("resize0.5").apply(images[3:4])[0])
    assert np.array_equal(found.images[4], get_condition("resize2+jpeg90").apply(images[4:5])[0])
    kept = list(CONDITIONS)
    each = detect(list(found.files), kept, sizes=found.sizes, native=(28, 28), mixtures=True,
                  image_sizes=found.image_sizes)
    assert each.mixture == ("none", "resize2", "none", "resize0.5", "resize2+jpeg90", "none")
    assert each.resample_to is None and each.warning is None  # brought back when read, each alone
    assert "1 as resize0.5: the images are 14×14" in each.detail
    # as one condition (without mixtures, or a size no condition is kept for): warned of
    one = detect(list(found.files), kept, sizes=found.sizes, native=(28, 28), image_sizes=found.image_sizes)
    assert one.mixture is None and "come in 3 sizes (14×14, 28×28, 56×56), each brought back" in one.warning
    unkept = detect(list(found.files), ["none", "jpeg90"], sizes=found.sizes, native=(28, 28), mixtures=True,
                    image_sizes=found.image_sizes)
    assert unkept.mixture is None and "keep no records under resize2" in unkept.warning


def test_lossy_webp_files_are_said_to_be_re_encoded(tmp_path):
    x = (np.random.default_rng(3).random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(x).save(tmp_path / "lossy.webp", quality=80)
    Image.fromarray(x).save(tmp_path / "lossless.webp", lossless=True)
    Image.fromarray(x).save(tmp_path / "a.png")
    (tmp_path / "short.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP")
    assert [file_webp(tmp_path / n) for n in ("lossy.webp", "lossless.webp", "a.png", "short.webp")] == [
        "lossy", "lossless", None, None]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lossless.webp").convert("L")), x)
    kept = [n for n, c in CONDITIONS.items() if c.webp_quality is None]  # references that keep no WebP
    # matched as generated, lossy WebP is named wrong: no generator is named, unless declared
    lossy = detect([tmp_path / "lossy.webp", tmp_path / "a.png"], kept)
    assert lossy.name == "none" and "1 of the 2 files are lossy WebP" in lossy.warning and lossy.withhold
    few = detect([tmp_path / "lossy.webp", tmp_path / "a.png", tmp_path / "lossless.webp"], kept)
    assert few.withhold is None and "1 of the 3 files are lossy WebP" in few.warning
    clean = detect([tmp_path / "lossless.webp"], kept)
    assert clean.warning is None and clean.withhold is None
    assert detect([tmp_path / "lossy.webp"], kept, sizes=[(56, 56)], native=(28, 28)).withhold  # kept when resized
    assert webp_quantiser((tmp_path / "lossless.webp").read_bytes()) is None
    assert webp_quantiser((tmp_path / "short.webp").read_bytes()) is None


def test_a_lossy_webp_quality_is_read_by_re_encoding_its_files(tmp_path):
    from pathlib import Path

    images = np.load(Path(__file__).resolve().parent.parent / "registry" / "mnist-effnet-lite0" / "samples" / "vae"
                     / "heldout.npz")["images"][:8]
    kept = list(CONDITIONS)
    folders = {q: _files(tmp_path / f"q{q}", [Image.fromarray(a) for a in images], "webp", quality=q)
               for q in (95, 90, 85, 80, 75)}
    files = {q: sorted(folder.iterdir()) for q, folder in folders.items()}
    for q in (90, 85, 80, 75):  # a kept quality: read, no guess
        found = detect(files[q], kept)
        assert (found.name, found.source, found.warning, found.withhold) == (f"webp{q}", "files", None, None)
        # and the files are the condition of their images, bit for bit
        assert np.array_equal(np.stack([np.asarray(Image.open(f).convert("L")) for f in files[q]]),
                              CONDITIONS[f"webp{q}"].apply(images))
    above = detect(files[95], kept)
    assert above.name == "webp90" and "match no kept WebP quality (75, 80, 85, 90)" in above.warning
    # a lossy file whose frame header cannot be read: no quality, no name
    broken = tmp_path / "broken.webp"
    broken.write_bytes(files[90][0].read_bytes().replace(b"\x9d\x01\x2a", b"\x00\x00\x00", 1))
    unread = detect([broken], kept)
    assert unread.name == "none" and "none has a lossy frame whose quality can be read" in unread.withhold
    assert webp_quantiser(files[90][0].read_bytes()) < webp_quantiser(files[75][0].read_bytes())


# -- the registry's records files -------------------------------------------------------------------
def test_a_records_file_is_read_only_when_it_is_the_one_recorded(tmp_path):
    array = np.random.default_rng(0).random((3, 10, 2))
    layer = tmp_path / "layer"
    path = layer / "p" / "records" / "g" / "i" / "none.npy"
    digest = write_records(path, array)
    assert np.array_equal(read_records(path, digest, root=layer, layers=3, label="x"), array)
    with pytest.raises(RegistryError, match="not the one its generator file records"):
        read_records(path, "sha256:" + "0" * 64, root=layer, layers=3, label="x")
    with pytest.raises(RegistryError, match=r"not \(4, images, fields\)"):
        read_records(path, digest, root=layer, layers=4, label="x")
    with pytest.raises(RegistryError, match="missing"):
        read_records(path.parent / "gone.npy", digest, root=layer, layers=3, label="x")
    # a folder on the way linked out of the registry is refused, though the file there is the one recorded
    outside = tmp_path / "outside"
    path.parent.rename(outside)
    path.parent.symlink_to(outside)
    with pytest.raises(RegistryError, match="symbolic link or a path that leaves the registry"):
        read_records(path, digest, root=layer, layers=3, label="x")
    path.parent.unlink()
    path.mkdir(parents=True)  # not a file
    with pytest.raises(RegistryError, match="none.npy is not a regular file"):
        read_records(path, digest, root=layer, layers=3, label="x")
    path.rmdir()
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RegistryError, match="cannot be read"):
        read_records(path, digest, root=layer, layers=3, label="x")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle is never loaded
    with pytest.raises(RegistryError, match="cannot be read"):
        read_records(path, digest, root=layer, layers=3, label="x")


def test_processing_digest_is_what_the_probe_becomes_under_the_condition():
    from forensics.conditions import CONDITIONS, codecs, describe_codecs, processing_digest

    digests = {c: processing_digest(c) for c in CONDITIONS}
    assert len(set(digests.values())) == len(digests)  # every condition processes the probe otherwise
    processing_digest.cache_clear()
    assert {c: processing_digest(c) for c in CONDITIONS} == digests  # the same machine, the same digest
    assert processing_digest("jpeg61") not in digests.values()  # one quality more is another processing
    found = codecs()
    assert found["pillow"] == __import__("PIL").__version__
    assert describe_codecs(found).startswith(f"Pillow {found['pillow']}")
    assert describe_codecs({"pillow": "9.9", "jpeg": "libjpeg 8.0", "webp": "1.0"}) == \
        "Pillow 9.9 (libjpeg 8.0, libwebp 1.0)"


def test_records_are_kept_only_where_this_machine_processes_as_the_registrys_were(tmp_path, toy_protocol,
                                                                                     fingerprints, monkeypatch):
    """Each layer records, per condition, what processed the images of its records (a digest of a probe, and
    the versions); records under a condition are kept only by a machine that processes it alike."""
    from forensics import api
    from forensics.conditions import processing_digest
    from forensics.registry import store

    proto = toy_protocol()
    rng = np.random.default_rng(0)

    def recs(*conditions):
        return {c: [rng.random((10, 2)) for _ in proto.layers] for c in conditions}

    below_path, user_path = tmp_path / "bundled", tmp_path / "user"
    below = Registry.open(below_path, create=True)
    below.add_protocol(proto, default=True)
    a, b, c, e = below.enroll("toy", "g", fingerprints(proto, [1, 2, 3], [2, 2, 2], [3, 2, 1], [3, 3, 3]), {},
                              ids=["a", "b", "c", "e"],
                              records=[recs("none", "jpeg60"), recs("none", "jpeg60"), recs("none"), recs("none")])
    made = yaml.safe_load((below_path / "toy" / "records" / "processing.yaml").read_text())
    assert set(made["conditions"]) == {"jpeg60"}  # none processes nothing
    assert made["conditions"]["jpeg60"]["digest"] == processing_digest("jpeg60")
    assert made["conditions"]["jpeg60"]["pillow"] == __import__("PIL").__version__
    user = Registry.open(user_path, below=[below_path])
    assert user.add_records("toy", "g", c, recs("jpeg60", "crop90")) == ["crop90", "jpeg60", "none"]
    mine = yaml.safe_load((user_path / "toy" / "records" / "processing.yaml").read_text())["conditions"]
    assert set(mine) == {"jpeg60", "crop90"} and mine["jpeg60"] == made["conditions"]["jpeg60"]
    assert not user.reload().problems and not user.processing_warnings()
    shown = api.show_protocol("toy", registry=user).to_dict()["processing"]  # `registry show` names it
    assert shown == {"toy": user.processing_of("toy")} and set(shown["toy"]) == {"crop90", "jpeg60"}
    user.copy_to(tmp_path / "copy")  # as one folder, what both layers say of their records' processing
    assert Registry.open(tmp_path / "copy").processing["toy"][0][2] == {**made["conditions"], **mine}
    assert not [w for w in Registry.open(tmp_path / "copy").warnings if "does not say what processed" in w]
    (tmp_path / "copy" / "toy" / "records" / "processing.yaml").unlink()  # a copy that left it behind
    (said,) = [w for w in Registry.open(tmp_path / "copy").warnings if "does not say what processed" in w]
    assert said.startswith("toy: records are kept under crop90, jpeg60 but records/processing.yaml")
    assert said in api.validate_registry(tmp_path / "copy").warnings

    # another Pillow, whose JPEG at quality 60 comes out otherwise: its records would not be comparable
    real = store.processing_digest
    monkeypatch.setattr(store, "processing_digest",
                        lambda name: "sha256:" + "0" * 64 if name.startswith("jpeg") else real(name))
    monkeypatch.setattr(store, "codecs", lambda: {"pillow": "99.0", "jpeg": "libjpeg 9f"})
    user = Registry.open(user_path, below=[below_path])
    before = {p: p.read_bytes() for p in user_path.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(RegistryError, match=r"Pillow 99\.0 \(libjpeg 9f\) processes images under jpeg60 otherwise "
                                            r"than the one that kept .*Pillow .*leave jpeg60 out"):
        user.add_records("toy", "g", e, recs("crop90", "jpeg60"))
    with pytest.raises(RegistryError, match="under jpeg60 otherwise"):
        user.enroll("toy", "g", fingerprints(proto, [4, 4, 4]), {}, ids=["d"], records=[recs("none", "jpeg60")])
    assert {p: p.read_bytes() for p in user_path.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert not (user_path / "toy" / "records" / "g" / "d").exists()
    assert not (user_path / "toy" / "records" / "g" / "e").exists()
    # a condition it processes alike is kept, and one no layer has kept yet is recorded with its versions
    user.add_records("toy", "g", a, recs("crop90", "webp70"))
    mine = yaml.safe_load((user_path / "toy" / "records" / "processing.yaml").read_text())["conditions"]
    assert mine["webp70"] == {"digest": real("webp70"), "pillow": "99.0", "jpeg": "libjpeg 9f", "reference": "webp70"}
    warned = user.reload().processing_warnings()
    assert len(warned) == 2 and all("Pillow 99.0 (libjpeg 9f) processes images otherwise than the Pillow" in w
                                    and "records under jpeg60: records under them cannot be kept here" in w
                                    for w in warned)
    assert not user.problems

    # two layers that disagree hold records that are not comparable; a malformed file is a problem
    pfile = user_path / "toy" / "records" / "processing.yaml"
    doc = yaml.safe_load(pfile.read_text())
    doc["conditions"]["jpeg60"]["digest"] = "sha256:" + "1" * 64
    pfile.write_text(yaml.safe_dump(doc))
    assert [w for w in Registry.open(user_path, below=[below_path]).warnings
            if "records under jpeg60 were made by another processing" in w and "not comparable" in w]
    doc["conditions"]["jpeg60"] = {"digest": "md5:1", "pillow": 13}
    doc["conditions"]["jpeg999"] = {"digest": real("jpeg60"), "pillow": "1"}
    doc["conditions"]["webp80"] = "libwebp"
    doc["conditions"]["../x"] = {"digest": real("jpeg60"), "pillow": "1"}
    pfile.write_text(yaml.safe_dump(doc))
    problems = api.validate_registry(user_path).problems
    assert any("conditions.webp80: expected a mapping, got str" in p for p in problems)
    assert any("conditions.../x: expected a condition name" in p for p in problems)
    assert any("conditions.jpeg60.digest" in p for p in problems)
    assert any("conditions.jpeg60.pillow" in p for p in problems)
    assert any("conditions.jpeg999" in p and "unknown condition" in p for p in problems)


def test_the_bundled_registry_says_what_processed_its_records(bundled_registry):
    kept_by = {}
    for name, proto in bundled_registry.protocols.items():
        if len(proto.parts) > 1:
            continue
        kept = {c for r in bundled_registry.enrolled(name)
                for c in bundled_registry.instance_record_conditions(name, r.generator, r.instance)} - {"none"}
        recorded = {c for _, _, entries in bundled_registry.processing.get(name, []) for c in entries}
        assert kept <= recorded, (name, sorted(kept - recorded))
        kept_by[name] = kept
    shown = run(["registry", "show", "mnist-vit"])
    assert shown.exit_code == 0 and (f"records   under {len(kept_by['mnist-vit'])} conditions besides none, made with "
                                     "Pillow ") in shown.output


# -- end to end on the digits -----------------------------------------------------------------------
M = 100
KINDS = ("rotate", "shuffle", "noise")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A protocol on the digits with the MNIST ViT (m = 100); three generators × 2 instances enrolled with
    records under none and jpeg90; a query set of 150 images of each generator."""
    from clirun import digits_registry

    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        yield digits_registry(tmp_path_factory.mktemp("anysize"), KINDS, "none,jpeg90", 150, M)
    finally:
        plugins.reset(old)


@pytest.mark.slow
def test_enrolment_keeps_records_that_give_back_its_curve(digits, plugin_host):
    from forensics.engine import make_engine

    reg, data = digits
    registry = Registry.open(reg)
    refs = registry.enrolled("d")
    assert registry.record_conditions("d") == ["jpeg90", "none"]
    records, problems = registry.records("d", refs)
    assert not problems and set(records) == {r.instance for r in refs}
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    for ref in refs:
        assert engine.curve_from_records(list(records[ref.instance])).fingerprint.values == ref.fingerprint.values
    jpeg, _ = registry.records("d", refs, "jpeg90")
    assert all(a.dtype == np.float32 for a in jpeg.values())
    # the records of the rotate instance give back its sub-batches' curves, as embedding them would
    images = np.load(data / "rotate.npz")["images"]
    ref = next(r for r in refs if r.generator == "rotate" and r.provenance["batch"] == 1)
    rows = np.arange(0, M, 2)
    assert engine.curve_from_records(list(records[ref.instance]), rows).fingerprint.values == \
        engine.curve(images[M:][rows]).fingerprint.values
    # a batch too small for its k = 3 cells to hold 20 images each (50 < 60) counts a cell when it holds
    # the share a batch of m must hold (τ = 20/m, not 20/m′): more of its cells count
    sides = engine.reference_side()
    embedded = engine.embed(images[M:][rows])
    at_m = [side.score(e, tau=20 / M) for side, e in zip(sides, embedded)]
    at_m_prime = [side.score(e, tau=20 / len(rows)) for side, e in zip(sides, embedded)]
    assert any(sum(x.counted for x in a.cells) > sum(x.counted for x in b.cells) for a, b in zip(at_m, at_m_prime))
    assert engine.curve(images[M:][rows]).fingerprint.values == tuple(c.value for c in at_m)
    # one that can (60 ≥ 60) is scored as Meehan et al. say, τ = 20/m′
    sixty = images[M:M + 60]
    assert engine.curve(sixty).fingerprint.values == tuple(
        side.score(e, tau=20 / 60).value for side, e in zip(sides, engine.embed(sixty)))


@pytest.mark.slow
def test_a_smaller_query_is_matched_against_the_instances_redrawn_at_its_size(digits, plugin_host):
    reg, data = digits
    r = run(["attribute", str(data / "query-rotate.npz"), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # 150 images: one batch of 100, and the last 50 redrawn at 50
    assert [b["compared_at"] for b in doc["batches"]] == [M, 50] and doc["compared_at"] == M
    assert doc["redrawn"] and doc["redrawn"][0]["batch_size"] == 50 and doc["redrawn"][0]["condition"] == "none"
    assert doc["condition"]["name"] == "none" and doc["condition"]["source"] == "default"
    half = np.load(data / "query-shuffle.npz")["images"][:60]
    np.savez(data / "sixty.npz", images=half)
    r = run(["attribute", str(data / "sixty.npz"), "--registry", str(reg), "--json"])
    doc = json.loads(r.stdout)
    assert doc["compared_at"] == 60 and doc["candidates"][0]["generator"] == "shuffle", r.output
    assert "calibrated at fit" in json.dumps(doc["matcher"])  # thresholds calibrated at 60, not carried over
    from forensics.schemas import validate

    validate(doc)


@pytest.mark.slow
def test_the_condition_is_read_from_jpeg_files_or_declared(digits, plugin_host, tmp_path):
    reg, data = digits
    images = np.load(data / "query-noise.npz")["images"][:M]
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.jpg", quality=88)
    r = run(["attribute", str(folder), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["condition"]["name"] == "jpeg90" and doc["condition"]["source"] == "files"
    assert "quality 88" in doc["condition"]["detail"] and doc["compared_at"] == M
    assert not doc["warnings"]  # between kept qualities: the nearest is measured, no guess
    Image.fromarray(images[0]).save(folder / "000.jpg", quality=40)  # one file of another quality, far from 90
    r = run(["attribute", str(folder), "--registry", str(reg), "--json"])
    (warning,) = json.loads(r.stdout)["warnings"]
    assert warning.startswith(f"1 of the {M} files: JPEG quality 40 lies more than 2 from every quality the "
                              "references keep (90): matched as jpeg90, which it is not")
    assert "warning: 1 of the" in r.stderr
    r = run(["attribute", str(folder), "--registry", str(reg), "--json", "--condition", "none"])
    assert json.loads(r.stdout)["condition"]["name"] == "none"
    r = run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg), "--condition", "resize2"])
    assert r.exit_code != 0 and "no records under condition 'resize2'" in r.output
    r = run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg), "--condition", "sepia"])
    assert r.exit_code != 0 and "unknown condition 'sepia'" in r.output


@pytest.mark.slow
def test_a_folder_processed_in_two_ways_is_matched_against_references_processed_alike(digits, plugin_host, tmp_path):
    from forensics.schemas import validate

    reg, data = digits
    images = np.load(data / "query-noise.npz")["images"]  # 150: a batch of 100, then 50
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, im in enumerate(images):  # every third file re-saved as JPEG 90, the rest PNG
        Image.fromarray(im).save(folder / f"{i:03d}.jpg", quality=90) if i % 3 == 0 else \
            Image.fromarray(im).save(folder / f"{i:03d}.png")
    r = run(["attribute", str(folder), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert doc["condition"]["name"] == "none" and doc["condition"]["source"] == "files"
    assert [(m["name"], m["count"]) for m in doc["condition"]["mixture"]] == [("none", 100), ("jpeg90", 50)]
    assert "processing" in doc["condition"]["mixture"][1] and "processing" not in doc["condition"]["mixture"][0]
    assert [b.get("mixture") for b in doc["batches"]] == [{"none": 66, "jpeg90": 34}, {"none": 34, "jpeg90": 16}]
    assert [b["compared_at"] for b in doc["batches"]] == [M, 50]
    assert [w.split(":")[0] for w in doc["warnings"]] == ["a batch of fewer than 100 images"]  # the remainder of 50
    shown = {(x["condition"], x["batch_size"]): x.get("mixture") for x in doc["redrawn"]}
    assert shown == {("mixed", M): {"none": 66, "jpeg90": 34}, ("mixed", 50): {"none": 34, "jpeg90": 16}}
    r = run(["attribute", str(folder), "--registry", str(reg)])
    assert "processed in several ways, each image matched as its own: 100 as generated, 50 jpeg90" in \
        " ".join(r.stdout.split())
    # declared, one condition stands for all the files again
    r = run(["attribute", str(folder), "--registry", str(reg), "--json", "--condition", "none"])
    assert "mixture" not in json.loads(r.stdout)["condition"]
    # an array cannot say how each image was processed: declared image by image, it is matched as the files were
    from forensics import api

    kinds = ["jpeg90" if i % 3 == 0 else "none" for i in range(len(images))]
    as_read = np.stack([np.asarray(Image.open(f)) for f in sorted(folder.iterdir())])
    declared = api.attribute(as_read, registry=reg, condition=kinds).to_dict()
    assert declared["condition"]["source"] == "declared" and declared["condition"]["mixture"] == doc["condition"][
        "mixture"] and "declared image by image (100 as none, 50 as jpeg90)" in declared["condition"]["detail"]
    assert [(b["values"], b["verdict"], b.get("mixture")) for b in declared["batches"]] == [
        (b["values"], b["verdict"], b.get("mixture")) for b in doc["batches"]]
    # or in an .npz beside its images, for the command line: the same again
    np.savez(tmp_path / "declared.npz", images=as_read, conditions=np.array(kinds))
    r = run(["attribute", str(tmp_path / "declared.npz"), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    in_file = json.loads(r.stdout)
    assert in_file["condition"]["mixture"] == doc["condition"]["mixture"] and in_file["curve"] == doc["curve"]
    assert [b["verdict"] for b in in_file["batches"]] == [b["verdict"] for b in doc["batches"]]
    # fewer images than a batch: the one batch, matched under its own mixture at its own size, is the verdict
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(folder.iterdir())[:60]:
        (few / f.name).write_bytes(f.read_bytes())
    r = run(["attribute", str(few), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    small = json.loads(r.stdout)
    validate(small)
    (batch,) = small["batches"]
    assert batch["mixture"] == {"none": 40, "jpeg90": 20} and batch["compared_at"] == small["compared_at"] == 60
    assert small["verdict"]["distance_ratio"] is not None and small["matcher"]["name"] == doc["matcher"]["name"]
    assert "warning: a batch of fewer than 100 images: below that size attribution was measured only as generated" \
        in " ".join(r.stderr.split())
    r = run(["attribute", str(tmp_path / "declared.npz"), "--registry", str(reg), "--json", "--condition", "none"])
    assert "mixture" not in json.loads(r.stdout)["condition"]  # declared on the command line: that one for all
    for job in (api.enroll, api.add_records):  # a generator's fingerprint is of the images it wrote
        with pytest.raises(UsageError, match=r"declares its images processed \(jpeg90\); enrol the images as"):
            job(tmp_path / "declared.npz", "noise", registry=reg)
    for name, conditions, message in (
            ("short", np.array(kinds[:-1]), "names 149 conditions for 150 images"),
            ("sepia", np.array(["none", "sepia"] * 75), "its 'conditions': unknown condition 'sepia'"),
            ("numbers", np.arange(150), "its 'conditions' must be condition names"),
            ("long", np.array(["x" * 40] * 150), "its 'conditions' must be condition names")):
        np.savez(tmp_path / f"{name}.npz", images=as_read, conditions=conditions)
        r = run(["attribute", str(tmp_path / f"{name}.npz"), "--registry", str(reg)])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (name, r.output)
    for wrong, message in ((kinds[:-1], "149 conditions declared for 150 images"), (["none", 3] * 75, "strings"),
                           (["none", "sepia"] * 75, "unknown condition 'sepia'"),
                           (["none", "resize2"] * 75, "no records under condition 'resize2'")):
        with pytest.raises(UsageError, match=message):
            api.attribute(as_read, registry=reg, condition=wrong)


@pytest.mark.slow
def test_images_of_another_size_are_brought_back_to_the_size_the_generators_write(digits, plugin_host, tmp_path):
    from forensics.schemas import validate

    reg, data = digits
    images = np.load(data / "query-noise.npz")["images"][:M]
    h, w = images.shape[1:3]  # the digits: 8×8
    assert [r.provenance.get("image_size") for r in Registry.open(reg).enrolled("d")] == [[h, w]] * 6
    assert [r.provenance.get("image_colour") for r in Registry.open(reg).enrolled("d")] == [False] * 6
    folder = _files(tmp_path / "up", _one_way(images, "resize2"), "png")
    r = run(["attribute", str(folder), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    cond = doc["condition"]
    assert cond["resampled_to"] == [h, w] and cond["source"] == "files"
    assert f"the images are {2 * w}×{2 * h}, the generators write {w}×{h}" in cond["detail"]
    # the fixture keeps no resize2 records: brought back, matched as generated, and said so
    assert cond["name"] == "none" and any("--conditions resize2` keeps records" in w for w in doc["warnings"])
    # brought back, they are the resize2 round trip of the generator's images, to the last bit
    np.savez(tmp_path / "round.npz", images=get_condition("resize2").apply(images))
    r = run(["attribute", str(tmp_path / "round.npz"), "--registry", str(reg), "--json"])
    assert json.loads(r.stdout)["curve"] == doc["curve"]
    # a declared condition does not stop the size from being read: the images are brought back all the same
    r = run(["attribute", str(folder), "--registry", str(reg), "--json", "--condition", "none"])
    declared = json.loads(r.stdout)
    assert declared["condition"]["detail"] == (f"as declared; the images, {2 * w}×{2 * h}, brought back to the "
                                               f"{w}×{h} the generators write (bicubic)")
    assert declared["curve"] == doc["curve"]
    # files of several sizes: each brought back to the generators' size as it is read, each size read for
    # the resampling it says (no records under resize2 here: all as generated, said of those files)
    Image.fromarray(images[0]).save(folder / "zz.png")
    mixed = json.loads(run(["attribute", str(folder), "--registry", str(reg), "--json"]).stdout)
    assert "resampled_to" not in mixed["condition"] and mixed["condition"]["name"] == "none"
    assert any(x.startswith(f"{M} of the {M + 1} files: the references keep no records under resize2")
               for x in mixed["warnings"]), mixed["warnings"]
    np.savez(tmp_path / "each.npz", images=np.concatenate([get_condition("resize2").apply(images), images[:1]]))
    each = json.loads(run(["attribute", str(tmp_path / "each.npz"), "--registry", str(reg), "--json"]).stdout)
    assert each["curve"] == mixed["curve"]
    # declared, one condition for all: said that the sizes differ
    mixed = json.loads(run(["attribute", str(folder), "--registry", str(reg), "--json", "--condition", "none"]).stdout)
    assert "resampled_to" not in mixed["condition"] and mixed["curve"] == each["curve"]
    assert any(f"come in 2 sizes ({w}×{h}, {2 * w}×{2 * h}), each brought back" in x for x in mixed["warnings"])


@pytest.mark.slow
def test_resized_jpeg_files_are_matched_against_records_kept_under_the_combination(digits, plugin_host, tmp_path):
    import shutil

    src, data = digits
    reg = tmp_path / "registry"
    shutil.copytree(src, reg)  # the module's registry stays as it is
    for kind in KINDS:  # the combination kept for every instance, as `registry records` adds it
        r = run(["registry", "records", kind, str(data / f"{kind}.npz"), "--registry", str(reg),
                 "--conditions", "resize2+jpeg90"])
        assert r.exit_code == 0, r.output
    assert Registry.open(reg).record_conditions("d") == ["jpeg90", "none", "resize2+jpeg90"]
    assert run(["registry", "validate", "--registry", str(reg)]).exit_code == 0
    images = np.load(data / "query-noise.npz")["images"][:M]
    h, w = images.shape[1:3]
    folder = _files(tmp_path / "served", _one_way(images, "resize2"), "jpg", quality=90)
    doc = json.loads(run(["attribute", str(folder), "--registry", str(reg), "--json"]).stdout)
    cond = doc["condition"]
    assert (cond["name"], cond["source"], cond["resampled_to"]) == ("resize2+jpeg90", "files", [h, w])
    assert cond["description"] == get_condition("resize2+jpeg90").description and not doc["warnings"]
    assert doc["compared_at"] == M  # matched against the instances redrawn under the combination
    made = yaml.safe_load((reg / "d" / "records" / "processing.yaml").read_text())["conditions"]["resize2+jpeg90"]
    assert cond["processing"] == {"d": made}  # what processed the records it was matched against
    from forensics.conditions import describe_codecs
    from forensics.report.terminal import assumed_text

    assert f"(their images processed alike by {describe_codecs(made)}; each set scored against T and P_n " \
           "processed alike)" in assumed_text(doc)
    # the same images as the combined condition makes them from the generator's, declared: the same curve
    np.savez(tmp_path / "combined.npz", images=get_condition("resize2+jpeg90").apply(images))
    declared = json.loads(run(["attribute", str(tmp_path / "combined.npz"), "--registry", str(reg), "--json",
                               "--condition", "resize2+jpeg90"]).stdout)
    assert declared["curve"] == doc["curve"] and declared["condition"]["source"] == "declared"
    # the module's registry keeps no combination: the resampling alone (not kept either: as generated), said
    alone = json.loads(run(["attribute", str(folder), "--registry", str(src), "--json"]).stdout)
    assert alone["condition"]["name"] == "none" and any("resize2+jpeg90" in x for x in alone["warnings"])
    assert "processing" not in alone["condition"]  # as generated: nothing processed the references


@pytest.mark.slow
def test_lossy_webp_files_name_no_generator_unless_a_condition_is_declared(digits, plugin_host, tmp_path):
    reg, data = digits
    images = np.load(data / "query-rotate.npz")["images"][:M]
    folder = _files(tmp_path / "webp", [Image.fromarray(im) for im in images], "webp", quality=75)
    doc = json.loads(run(["attribute", str(folder), "--registry", str(reg), "--json"]).stdout)
    answer = doc["verdict"]
    assert answer["generator"] is None and answer["family"] is None
    assert answer["reason"].startswith(f"unknown: {M} of the {M} files are lossy WebP")
    assert all(v == {"generator": None, "family": None} for v in answer["at_operating_points"].values())
    assert all(b["verdict"] is None and b["family"] is None for b in doc["batches"])
    assert doc["candidates"] and any("`--condition none` matches them" in w for w in doc["warnings"])
    declared = json.loads(run(["attribute", str(folder), "--registry", str(reg), "--json", "--condition",
                               "none"]).stdout)
    assert declared["condition"]["source"] == "declared" and not declared["verdict"]["reason"].startswith(
        f"unknown: {M} of the")
    assert declared["curve"] == doc["curve"]
    # references that keep the quality: matched as it, and answered
    import shutil

    from forensics import api

    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    for kind in KINDS:
        api.add_records(str(data / f"{kind}.npz"), kind, registry=copy, conditions="webp75")
    kept = json.loads(run(["attribute", str(folder), "--registry", str(copy), "--json"]).stdout)
    assert kept["condition"]["name"] == "webp75" and kept["condition"]["source"] == "files" and not kept["warnings"]
    assert not kept["verdict"]["reason"].startswith(f"unknown: {M} of the")
    # scored against T and P_n re-encoded alike, as the references' records under it were
    assert kept["condition"]["processing"]["d"]["reference"] == "webp75" and kept["curve"] != doc["curve"]


@pytest.mark.slow
def test_records_that_fail_their_check_are_reported_and_not_used(digits, plugin_host, tmp_path):
    import shutil

    reg, data = digits
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    victim = sorted((copy / "d" / "records").rglob("none.npy"))[0]
    array = np.load(victim)
    array[0, 0, 1] += 1e-6
    np.save(victim, array)
    np.savez(tmp_path / "sixty.npz", images=np.load(data / "query-shuffle.npz")["images"][:60])
    r = run(["attribute", str(tmp_path / "sixty.npz"), "--registry", str(copy), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["compared_at"] is None and any("is not the one its generator file records" in w
                                              for w in doc["warnings"])
    assert "is not the one its generator file records" in r.stderr
    # files processed in two ways cannot meet references redrawn from broken records: read as one condition
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, im in enumerate(np.load(data / "query-shuffle.npz")["images"][:M]):
        Image.fromarray(im).save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}", **({"quality": 90} if i % 2 else {}))
    doc = json.loads(run(["attribute", str(folder), "--registry", str(copy), "--json"]).stdout)
    assert "mixture" not in doc["condition"] and doc["condition"]["name"] == "jpeg90"
    assert any("attribute each kind of file on its own" in w for w in doc["warnings"])
    r = run(["registry", "validate", "--registry", str(copy), "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code != 0 and not doc["ok"] and any("none.npy" in p for p in doc["problems"])
    r = run(["registry", "validate", "--registry", str(reg), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"]


@pytest.mark.slow
def test_records_are_added_only_from_the_instances_own_images(digits, plugin_host, tmp_path, monkeypatch):
    import shutil

    from forensics import api
    from forensics import engine as engines

    reg, data = digits
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    with pytest.raises(UsageError, match="none of rotate's instances"):
        api.add_records(str(data / "shuffle.npz"), "rotate", registry=copy, conditions="none")
    folder = copy / "d" / "records" / "rotate"
    before = {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.npy")}
    kept = api.add_records(str(data / "rotate.npz"), "rotate", registry=copy, conditions="none,crop90")
    assert len(kept) == 2 and all(v == ["crop90", "jpeg90", "none"] for v in kept.values())
    assert Registry.open(copy).record_conditions("d") == ["jpeg90", "none"]  # crop90: only rotate's
    checked = api.validate_registry(copy)  # which is no problem, but said, with the instances that lack it
    assert checked.ok and any(w.startswith("d: records under crop90 are kept by 2 of 6 instances") and
                              "lacking: " in w and "--conditions crop90` keeps records" in w
                              for w in checked.warnings)
    assert not any("records under jpeg90" in w for w in checked.warnings)
    # the conditions it kept already are left as they are, not written again (recomputed elsewhere, with
    # other threads, they can differ in the last bits from what the generator file's digests vouch for)
    assert all((p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) == b for p, b in before.items())
    after = {p: p.read_bytes() for p in folder.rglob("*.npy")}
    assert len(after) == len(before) + 2
    gen_file = copy / "d" / "generators" / "rotate.yaml"
    stamp = (gen_file.stat().st_ino, gen_file.stat().st_mtime_ns)
    embedded = []
    real = engines.fingerprints_and_records
    monkeypatch.setattr(engines, "fingerprints_and_records",
                        lambda *a, conditions, **k: embedded.append(conditions) or real(*a, conditions=conditions, **k))
    assert api.add_records(str(data / "rotate.npz"), "rotate", registry=copy, conditions="none,crop90") == kept
    assert embedded == []  # what every instance keeps is not embedded again: nothing lacks, nothing to check
    assert (gen_file.stat().st_ino, gen_file.stat().st_mtime_ns) == stamp  # nothing new: nothing written
    assert {p: p.read_bytes() for p in folder.rglob("*.npy")} == after
    with pytest.raises(UsageError, match="no generator 'nobody'"):
        api.add_records(str(data / "rotate.npz"), "nobody", registry=copy)
    # an instance enrolled before the image size and colour were recorded gets them from its own images,
    # nothing else moves
    import yaml

    doc = yaml.safe_load(gen_file.read_text())
    for inst in doc["instances"]:
        del inst["provenance"]["image_size"], inst["provenance"]["image_colour"]
    gen_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert all("image_size" not in r.provenance and "image_colour" not in r.provenance
               for r in Registry.open(copy).enrolled("d") if r.generator == "rotate")
    assert api.add_records(str(data / "rotate.npz"), "rotate", registry=copy, conditions="none") == kept
    assert [(r.provenance["image_size"], r.provenance["image_colour"]) for r in Registry.open(copy).enrolled("d")
            if r.generator == "rotate"] == [([8, 8], False), ([8, 8], False)]
    assert {p: p.read_bytes() for p in folder.rglob("*.npy")} == after


@pytest.mark.slow
def test_the_zoo_enrolment_keeps_records_and_adds_the_conditions_an_enrolled_set_lacks(digits, plugin_host,
                                                                                       tmp_path):
    import shutil

    from forensics import api
    from forensics.engine import make_engine
    from forensics.schemas import validate

    reg, data = digits
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    Registry.open(copy).remove("d", "noise")
    samples = tmp_path / "samples"
    entries = []
    for g in ("rotate", "noise"):  # as a zoo: one sample set per generator, listed in a manifest
        (samples / g).mkdir(parents=True)
        shutil.copy(data / f"{g}.npz", samples / g / "run0.npz")
        entries.append({"generator": g, "instance": "run0", "file": f"{g}/run0.npz", "sha256": "0" * 64, "seed": 0})
    (samples / "MANIFEST.json").write_text(json.dumps({"instances": entries}))
    folder = copy / "d" / "records" / "rotate"
    before = {p: p.read_bytes() for p in folder.rglob("*.npy")}
    result = api.zoo_enroll(registry=copy, samples=samples, conditions="none,crop90")
    # noise, not enrolled: enrolled (two batches of m: two instances) with records under none and crop90
    assert [(d["generator"], len(d["ids"])) for d in result.enrolled] == [("noise", 2)]
    # rotate, enrolled with none and jpeg90: given crop90 alone, its other records left as they were
    assert [(d["generator"], d["conditions"], len(d["ids"])) for d in result.recorded] == [("rotate", ["crop90"], 2)]
    assert all(p.read_bytes() == b for p, b in before.items())
    registry = Registry.open(copy)
    refs = [r for r in registry.enrolled("d") if r.generator in ("rotate", "noise")]
    kept = {(r.generator, r.instance): registry.instance_record_conditions("d", r.generator, r.instance) for r in refs}
    assert len(kept) == 4 and all(v == (["crop90", "jpeg90", "none"] if g == "rotate" else ["crop90", "none"])
                                  for (g, _), v in kept.items())
    # what is kept is the images' records under the condition, batch by batch, against T and P_n put through it
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir).under("crop90")
    records, problems = registry.records("d", refs, "crop90")
    assert not problems
    for g in ("rotate", "noise"):
        images = get_condition("crop90").apply(np.load(data / f"{g}.npz")["images"][:2 * M])
        direct = engine.records(images)
        for ref in (r for r in refs if r.generator == g):
            j = ref.provenance["batch"]
            for kept, layer in zip(records[ref.instance], direct):
                np.testing.assert_array_equal(kept, layer[j * M:(j + 1) * M].astype(np.float32))
    # a set enrolled before its images' digests were kept is given them, from its images, embedding nothing
    from forensics.io.hashing import image_digests

    gen_file = copy / "d" / "generators" / "rotate.yaml"
    doc = yaml.safe_load(gen_file.read_text())
    for inst in doc["instances"]:
        del inst["provenance"]["image_digests"]
        (folder / inst["id"] / "images.npy").unlink()
    gen_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    again = api.zoo_enroll(registry=copy, samples=samples, conditions="none,crop90")
    assert (again.hashed, again.enrolled, again.recorded, again.skipped) == (2, (), (), 2)
    digests, problems = Registry.open(copy).image_digests("d", [r for r in refs if r.generator == "rotate"])
    assert not problems and len(digests) == 2
    whole = image_digests(np.load(data / "rotate.npz")["images"])
    for ref in (r for r in refs if r.generator == "rotate"):
        j = ref.provenance["batch"]
        assert np.array_equal(digests[("rotate", ref.instance)], whole[j * M:(j + 1) * M])
    # again, through the CLI: nothing lacks, nothing is embedded or written
    stamp = {p: p.stat().st_mtime_ns for p in (copy / "d").rglob("*") if p.is_file()}
    r = run(["zoo", "enroll", "--samples", str(samples), "--registry", str(copy), "--conditions", "none,crop90",
             "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert doc["enrolled"] == [] and doc["recorded"] == [] and doc["skipped"] == 2 and doc["hashed"] == 0
    assert {p: p.stat().st_mtime_ns for p in (copy / "d").rglob("*") if p.is_file()} == stamp
    # over a read-only layer (the bundled registry of an installed package): the generator files are copied
    # into the written one with the new records, as enrolment copies them; the layer below is not touched
    user = tmp_path / "user"
    layered = Registry.open(user, create=True, below=[copy])
    result = api.zoo_enroll(registry=layered, samples=samples, conditions="resize2")
    assert sorted(d["generator"] for d in result.recorded) == ["noise", "rotate"] and not result.enrolled
    assert {p: p.stat().st_mtime_ns for p in (copy / "d").rglob("*") if p.is_file()} == stamp
    assert sorted(p.name for p in (user / "d" / "generators").iterdir()) == ["noise.yaml", "rotate.yaml"]
    assert len(list((user / "d" / "records").rglob("*.npy"))) == 4  # resize2 alone: the rest stays below
    layered = Registry.open(user, below=[copy])
    assert all(layered.instance_record_conditions("d", r.generator, r.instance) == (
        ["crop90", "jpeg90", "none", "resize2"] if r.generator == "rotate" else ["crop90", "none", "resize2"])
        for r in refs)
    for condition in ("resize2", "crop90", "none"):  # read where each lies, against the copied digests
        found, problems = layered.records("d", refs, condition)
        assert not problems and set(found) == {r.instance for r in refs}
    assert not any("hides" in w for w in layered.warnings)
    # a later release changes the file below (records recomputed): the copy hides it, and the registry says so
    below = copy / "d" / "generators" / "rotate.yaml"
    doc = yaml.safe_load(below.read_text())
    doc["instances"][0]["records"]["jpeg90"] = "sha256:" + "0" * 64
    below.write_text(yaml.safe_dump(doc, sort_keys=False))
    (warned,) = [w for w in Registry.open(user, below=[copy]).warnings if "hides" in w]
    assert "rotate.yaml" in warned and doc["instances"][0]["id"] in warned and "has changed since it was copied" in warned
    assert "`forensics registry refresh`" in warned
    (row,) = api.refresh(registry=Registry.open(user, below=[copy]), generator="rotate").copies
    ids = [i["id"] for i in doc["instances"]]
    assert row["action"] == "updated" and row["from_below"] == ids[:1] and not row["kept"]
    assert row["kept_records"] == [f"{i}/resize2" for i in ids] and row["dropped_records"] == [f"{ids[0]}/jpeg90"]
    assert not any("hides" in w for w in Registry.open(user, below=[copy]).warnings)


def held_to_the_rule(ev: dict) -> None:
    """An evaluation whose answers were held to the resampling rule as `attribute` holds a batch to it: every
    name it gave led in most of the resamples, and it says how many it turned away."""
    from forensics.match.resampling import RESAMPLES

    assert ev["resampling"]["resamples"] == ev["leave_generator_out"]["resampling"]["resamples"] == RESAMPLES
    named = [p for p in ev["predictions"] if p["verdict"] is not None or p["family"] is not None]
    assert all(2 * p["leads"] > RESAMPLES for p in named)
    turned = ev["resampling"]["turned_unknown"]
    assert 0 <= turned <= ev["open_set"]["unknown"]


@pytest.mark.slow
def test_registry_evaluate_at_another_batch_size_and_condition(digits, plugin_host):
    reg, _ = digits
    r = run(["registry", "evaluate", "--registry", str(reg), "--json", "-m", "alpha"])
    plain = json.loads(r.stdout)["protocols"][0]
    assert plain["batch_size"] == M and plain["condition"] == "none" and plain["matchers"][0]["n"] == 6
    held_to_the_rule(plain["matchers"][0])  # as generated, at m: each instance's own images resampled
    text = " ".join(run(["registry", "evaluate", "--registry", str(reg), "-m", "alpha"]).stdout.split())
    assert "alpha: every answer held to the resampling rule as `attribute` holds a batch" in text
    assert f"it turned {plain['matchers'][0]['resampling']['turned_unknown']} leave-one-out and" in text
    r = run(["registry", "evaluate", "--registry", str(reg), "--json", "-m", "alpha", "--batch-size", "60",
             "--condition", "jpeg90"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    got = doc["protocols"][0]
    assert got["batch_size"] == 60 and got["condition"] == "jpeg90"
    ev = got["matchers"][0]
    assert ev["n"] == 6 * CALIBRATION_DRAWS  # each held-out instance queried by single sub-batches of 60
    assert ev["leave_generator_out"]["n"] == 6 * CALIBRATION_DRAWS
    held_to_the_rule(ev)
    from forensics.schemas import validate

    validate(doc)
    r = run(["registry", "evaluate", "--registry", str(reg), "--json", "--condition", "resize2"])
    assert r.exit_code == 2 and "no protocol keeps the per-image records" in r.output
    assert "d: 6 of its 6 instances keep no per-image records under resize2" in r.output
    # batches processed in several ways: each held-out instance queried by mixed sub-batches
    r = run(["registry", "evaluate", "--registry", str(reg), "--json", "-m", "alpha", "--batch-size", "60",
             "--condition", "none/jpeg90"])
    assert r.exit_code == 0, r.output
    validate(json.loads(r.stdout))
    got = json.loads(r.stdout)["protocols"][0]
    assert got["condition"] == "none/jpeg90" and got["matchers"][0]["n"] == 6 * CALIBRATION_DRAWS
    r = run(["registry", "evaluate", "--registry", str(reg), "--json", "--condition", "none/resize2", "-p", "d"])
    assert r.exit_code == 2 and "d: 6 of its 6 instances keep no per-image records under resize2" in r.output


def test_evaluating_every_protocol_at_a_batch_size_leaves_out_those_without_records(digits, plugin_host, tmp_path,
                                                                                      monkeypatch):
    """A protocol whose instances keep no records for the asked batch size or condition is left out, said
    and recorded, found from its generator files alone (no reference side is fitted to find it out)."""
    import shutil

    from forensics import engine as engines
    from forensics.schemas import validate

    reg, data = digits
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    r = run(["protocol", "create", "e", "--dataset", "digits", "--encoder", "vit_mnist_tiny.forensics", "--k", "3",
             "--projection", "8", "--batch-size", str(M), "--registry", str(copy)])
    assert r.exit_code == 0, r.output
    r = run(["registry", "enroll", "rotate", str(data / "rotate.npz"), "-p", "e", "--registry", str(copy),
             "--conditions", "none"])
    assert r.exit_code == 0, r.output
    fitted = []
    real = engines.Engine.reference_side
    monkeypatch.setattr(engines.Engine, "reference_side", lambda self: fitted.append(self.protocol.name) or real(self))
    r = run(["registry", "evaluate", "--registry", str(copy), "--json", "-m", "alpha", "--batch-size", "60",
             "--condition", "jpeg90"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert [p["protocol"] for p in doc["protocols"]] == ["d"] and "d" in fitted and "e" not in fitted
    assert doc["skipped"] == {"e": "2 of its 2 instances keep no per-image records under jpeg90 ("
                                    + ", ".join(f"rotate/{r.instance}" for r in Registry.open(copy).enrolled("e"))
                                    + "); " + records_hint("jpeg90")}
    assert f"note: e left out: {doc['skipped']['e']}" in " ".join(r.stderr.split())
    plain = json.loads(run(["registry", "evaluate", "--registry", str(copy), "--json", "-m", "alpha"]).stdout)
    assert [p["protocol"] for p in plain["protocols"]] == ["d", "e"] and "skipped" not in plain


@pytest.mark.slow
def test_calibration_pools_every_kept_condition_and_size_and_every_batch_answers_with_it(digits, plugin_host,
                                                                                          tmp_path):
    import shutil

    from forensics import api
    from forensics.match.calibration import ADOPTION_LEVEL, pool_sizes

    src, data = digits
    reg = tmp_path / "registry"
    shutil.copytree(src, reg)  # the module's registry stays as it is
    result = api.calibrate(registry=reg, matchers=["alpha"])
    pooled = result.matchers["alpha"]["pooled"]
    # adopted: on the enrolled runs as generated, not behind each fold on its own by more than chance puts it
    assert pooled["adopted"] is True and pooled["chance"] >= ADOPTION_LEVEL
    # every condition every instance keeps, at 1/5 to all of m: 2 × 4 cells, every held-out point of each
    assert pooled["conditions"] == ["jpeg90", "none"] and pooled["sizes"] == pool_sizes(M) == [20, 40, 60, 100]
    assert pooled["n_cells"] == 8
    refs = Registry.open(reg).enrolled("d")
    per_cell = 2 * len(refs) * 16  # 16 single sub-batches per instance, held out and with its generator left out
    assert pooled["n_answer"] + pooled["n_unknown"] == 6 * per_cell + 2 * 2 * len(refs)  # (m: the curves themselves)
    assert run(["registry", "validate", "--registry", str(reg)]).exit_code == 0
    recorded = Registry.open(reg).calibration("d", "alpha")
    assert recorded["pooled"] == pooled
    # the command says what it pooled, and its JSON is its schema's
    from forensics import schemas

    said = run(["registry", "calibrate", "--registry", str(reg), "--matcher", "alpha"])
    assert said.exit_code == 0 and "held-out queries of 8 (condition, batch size) cells pooled: 2 conditions at 20, " \
                                   "40, 60, 100 images" in said.stdout, said.output
    schemas.validate(json.loads(run(["registry", "calibrate", "--registry", str(reg), "--matcher", "alpha",
                                     "--json"]).stdout))

    def shown() -> dict:  # what `registry show` says of alpha's calibration
        doc = json.loads(run(["registry", "show", "d", "--registry", str(reg), "--json"]).stdout)
        schemas.validate(doc)
        return doc["calibration"]["alpha"]

    assert shown()["thresholds_from"] == "pooled" and shown()["pool"]["n_cells"] == 8
    said = run(["registry", "show", "d", "--registry", str(reg)]).stdout
    assert "for every batch (pooled over 8 (condition, batch size) cells)" in " ".join(said.split())
    for point, at in pooled["operating_points"].items():  # the thresholds at (none, m) are the pool's
        assert {k: recorded["operating_points"][point][k] for k in ("score", "margin", "distance_ratio")} == \
               {k: at[k] for k in ("score", "margin", "distance_ratio")}
    # a batch of 60 under JPEG 90 and one of m as generated: both answered with the pooled triple
    balanced = pooled["operating_points"]["balanced"]
    images = np.load(data / "query-noise.npz")["images"]
    for rows, condition in ((slice(0, 60), "jpeg90"), (slice(0, M), "none")):
        res = api.attribute(images[rows], registry=reg, condition=condition)
        threshold = res.attribution.threshold
        assert threshold["pooled_cells"] == 8, condition
        assert {k: threshold[k] for k in ("score", "margin", "distance_ratio")} == \
               {k: balanced[k] for k in ("score", "margin", "distance_ratio")}
    # an evaluation with them chooses each fold's thresholds on the same cells, without the fold's points
    ev = api.evaluate(registry=reg, matchers=["alpha"], batch_size=40, condition="jpeg90")
    (matcher,) = ev.protocols[0].matchers
    assert matcher.evaluation.pooled_cells == 8
    schemas.validate(ev.to_dict())
    said = run(["registry", "evaluate", "--registry", str(reg), "--matcher", "alpha"])
    assert said.exit_code == 0 and "alpha: open-set thresholds pooled over the 8 (condition, batch size) cells" \
        in " ".join(said.stdout.split()), said.output
    # a pool chosen on other references answers no more: each cell its own thresholds, and the report says so
    cal_file = reg / "d" / "calibration.yaml"
    doc = yaml.safe_load(cal_file.read_text())
    doc["matchers"]["alpha"]["pooled"]["references_digest"] = "sha256:" + "1" * 64
    cal_file.write_text(yaml.safe_dump(doc))
    res = api.attribute(images[:60], registry=reg, condition="jpeg90")
    assert res.attribution.threshold["pooled_cells"] is None
    assert any("pooled thresholds were calibrated on other references" in w for w in res.warnings)
    assert shown()["thresholds_from"] == "own"  # (the calibration at m is current, the pool is not)
    # a pool recorded but not adopted: each cell its own thresholds, nothing to warn of
    doc["matchers"]["alpha"]["pooled"].update(references_digest=pooled["references_digest"], adopted=False)
    cal_file.write_text(yaml.safe_dump(doc))
    res = api.attribute(images[:60], registry=reg, condition="jpeg90")
    assert res.attribution.threshold["pooled_cells"] is None and not [w for w in res.warnings if "pooled" in w]
    assert api.evaluate(registry=reg, matchers=["alpha"]).protocols[0].matchers[0].evaluation.pooled_cells is None
    assert shown()["thresholds_from"] == "own" and shown()["pool"]["adopted"] is False


@pytest.mark.slow
def test_a_batch_resampled_from_its_records_is_the_curve_of_its_images_drawn_again(digits, plugin_host):
    """The resampling check's curves (forensics.match.resampling) are the curves of the images drawn with
    replacement, embedded anew: repeated images included."""
    from forensics.engine import make_engine
    from forensics.match.resampling import bootstrap_rows

    reg, data = digits
    registry = Registry.open(reg)
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    images = np.load(data / "query-rotate.npz")["images"]
    curves, records = engine.curves_and_records(images)
    assert [c.fingerprint.values for c in curves] == [c.fingerprint.values for c in engine.curves(images)]
    assert all(np.array_equal(a, b) for a, b in zip(records, engine.records(images)))
    parts = [np.arange(0, M), np.arange(M, len(images))]
    rows = bootstrap_rows(parts, resamples=2, seed=3)
    assert [len(r) for r in rows] == [M, len(images) - M] * 2
    assert all(set(r) <= set(p) for r, p in zip(rows, parts * 2)) and any(len(set(r)) < len(r) for r in rows)
    assert all(np.array_equal(a, b) for a, b in zip(rows, bootstrap_rows(parts, resamples=2, seed=3)))
    for r, curve in zip(rows, engine.curves_from_records(records, rows)):
        assert curve.fingerprint.values == engine.curve(images[r]).fingerprint.values
    assert engine.curves_and_records(images, records=False)[1] is None
    # what attribute ranks: resample j of batch i is the curve of rows[j·parts + i]; the set's, their mean
    from forensics.api import mean_curve, resample_vectors

    drawn = resample_vectors(engine, records, parts)
    assert drawn.shape == (100, 2, len(engine.protocol.layers))
    everything = engine.curves_from_records(records, bootstrap_rows(parts))
    for j in (0, 57):
        pair = everything[2 * j:2 * j + 2]
        assert [list(drawn[j, i]) for i in (0, 1)] == [list(c.fingerprint.vector()) for c in pair]
        assert np.array_equal(drawn.mean(axis=1)[j], mean_curve(pair, engine.protocol).fingerprint.vector())


@pytest.mark.slow
def test_every_verdict_on_images_says_how_it_held_over_resamples(digits, plugin_host):
    reg, data = digits
    r = run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    from forensics.match.resampling import RESAMPLES, SEED
    from forensics.schemas import validate

    validate(doc)
    every = [doc["verdict"]["resampling"], *(b["resampling"] for b in doc["batches"])]
    for res in every:
        assert res["resamples"] == RESAMPLES and res["seed"] == SEED
        assert sum(res["first"].values()) == RESAMPLES and list(res["first"].values()) == sorted(
            res["first"].values(), reverse=True)
    named = doc["verdict"]["generator"]
    if named is not None:  # a name stands only where it leads in most resamples
        assert 2 * doc["verdict"]["resampling"]["leads"] > RESAMPLES
        assert doc["verdict"]["resampling"]["first"].get(named) == doc["verdict"]["resampling"]["leads"]
    again = json.loads(run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg), "--json"]).stdout)
    assert again["verdict"]["resampling"] == doc["verdict"]["resampling"]  # seeded: the same report twice
    shown = run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg)])
    assert "resamples of the images" in shown.output
