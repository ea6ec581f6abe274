"""Records of processed images scored against T and P_n put through the same processing (issue 25).

A resampling round trip or a re-encoding moves every image away from T as it is, and the C_T curves of
different generators crowd together there; the registry therefore scores records under a condition against
T and P_n put through it, records what it scored them against (``processing.yaml``'s ``reference``), and a
query under that condition is scored alike. Records kept before the registry said so were scored against T and P_n as
they are, and stay comparable: new records under such a condition follow what the registry records. The
end-to-end part runs on scikit-learn's digits with the project's MNIST ViT (shipped weights), m = 100.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from forensics.cli.commands import app
from forensics.conditions import CONDITIONS, NONE, get_condition, reference_condition
from forensics.errors import RegistryError
from forensics.registry import Registry

M = 100
KINDS = ("rotate", "shuffle")


def run(args, **kw):
    return CliRunner().invoke(app, args, **kw)


def enrol_as_before(monkeypatch, registry, data, tmp_path, conditions):
    """Enrol one run of the rotate kind (``data/rotate.npz``) under ``conditions`` as an earlier version did,
    scoring records against T and P_n as they are; returns the zoo samples folder it made."""
    from forensics import api
    from forensics import conditions as conditions_module
    from forensics.registry import store

    samples = tmp_path / "samples"
    (samples / "rotate").mkdir(parents=True)
    shutil.copy(data / "rotate.npz", samples / "rotate" / "run0.npz")
    (samples / "MANIFEST.json").write_text(json.dumps({"instances": [
        {"generator": "rotate", "instance": "run0", "file": "rotate/run0.npz", "sha256": "0" * 64, "seed": 0}]}))
    with monkeypatch.context() as m:
        m.setattr(conditions_module, "reference_condition", lambda name: NONE)
        m.setattr(store, "reference_condition", lambda name: NONE)
        api.zoo_enroll(registry=registry, samples=samples, conditions=conditions)
    return samples


def test_records_under_a_condition_are_scored_against_t_and_p_n_put_through_it():
    assert reference_condition(NONE) == NONE
    for name in CONDITIONS:
        assert reference_condition(name) == name
    for name in ("resize0.5+jpeg75", "jpeg88", "webp60", "crop90+webp80"):
        assert reference_condition(name) == name
    with pytest.raises(Exception, match="unknown condition"):
        reference_condition("sepia")


@pytest.fixture(scope="module")
def resampled(tmp_path_factory):
    """A protocol on the digits with the MNIST ViT (m = 100); two generators × 2 instances enrolled with
    records under none, jpeg90 and resize2; a query set of 100 images of each."""
    from clirun import digits_registry

    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        yield digits_registry(tmp_path_factory.mktemp("reference"), KINDS, "none,jpeg90,resize2", 100, M)
    finally:
        plugins.reset(old)


@pytest.mark.slow
def test_records_under_a_resampling_are_those_of_t_and_p_n_resampled_alike(resampled, plugin_host):
    from forensics.engine import make_engine

    reg, data = resampled
    registry = Registry.open(reg)
    made = yaml.safe_load((reg / "d" / "records" / "processing.yaml").read_text())["conditions"]
    assert made["resize2"]["reference"] == "resize2" and made["jpeg90"]["reference"] == "jpeg90"
    assert registry.record_reference("d", "resize2") == "resize2" and registry.record_reference("d", NONE) == NONE
    refs = [r for r in registry.enrolled("d") if r.generator == "rotate"]
    kept, problems = registry.records("d", refs, "resize2")
    assert not problems
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    resampled_side = engine.under("resize2")
    assert resampled_side.condition == "resize2" and engine.under("resize2") is resampled_side
    assert resampled_side.encoder() is engine.encoder()  # one encoder for every reference side
    images = get_condition("resize2").apply(np.load(data / "rotate.npz")["images"])
    for ref in refs:
        rows = slice(ref.provenance["batch"] * M, (ref.provenance["batch"] + 1) * M)
        exact = resampled_side.records(images[rows])
        plain = engine.records(images[rows])
        got = list(kept[ref.instance])
        assert all(np.array_equal(a, b.astype(a.dtype)) or np.allclose(a, b, rtol=1e-6, atol=1e-7)
                   for a, b in zip(got, exact))
        assert not all(np.allclose(a, b) for a, b in zip(got, plain))  # not T and P_n as they are


@pytest.mark.slow
def test_a_resampled_query_is_scored_against_the_references_reference_side_and_the_report_says_so(resampled,
                                                                                                    plugin_host):
    from forensics.engine import make_engine
    from forensics.schemas import validate

    reg, data = resampled
    images = get_condition("resize2").apply(np.load(data / "query-shuffle.npz")["images"])
    np.savez(data / "q-resize2.npz", images=images)
    r = run(["attribute", str(data / "q-resize2.npz"), "--registry", str(reg), "--json", "--condition", "resize2"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert doc["condition"]["name"] == "resize2"
    assert doc["condition"]["processing"]["d"]["reference"] == "resize2"
    registry = Registry.open(reg)
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    assert doc["curve"]["values"] == list(engine.under("resize2").curve(images).fingerprint.values)
    from forensics.engine import reference_key
    from forensics.io.hashing import short

    # the report says which reference side the curve was scored against: T and P_n put through resize2
    assert short(reference_key(registry.protocol("d"), "resize2"), 24) in doc["reference"]["origin"]
    assert doc["curve"]["values"] != list(engine.curve(images).fingerprint.values)
    plain = run(["attribute", str(data / "q-resize2.npz"), "--registry", str(reg), "--json", "--condition", "none"])
    assert "processing" not in json.loads(plain.stdout)["condition"]
    assert json.loads(plain.stdout)["curve"]["values"] == list(engine.curve(images).fingerprint.values)


@pytest.mark.slow
def test_a_batch_processed_in_ways_scored_against_different_references_combines_its_parts(resampled, plugin_host,
                                                                                          tmp_path):
    from forensics import api
    from forensics.engine import make_engine

    reg, data = resampled
    base = np.load(data / "query-rotate.npz")["images"]
    kinds = np.array(["resize2" if i % 4 == 0 else NONE for i in range(len(base))])
    images = np.stack([get_condition(k).apply(im[None])[0] for k, im in zip(kinds, base)])
    doc = api.attribute(images, registry=reg, condition=list(kinds)).to_dict()
    assert [(x["name"], x["count"]) for x in doc["condition"]["mixture"]] == [(NONE, 75), ("resize2", 25)]
    registry = Registry.open(reg)
    proto = registry.protocol("d")
    engine = make_engine(proto, reference_dir=registry.reference_dir)
    parts = [engine.curve(images[kinds == NONE]), engine.under("resize2").curve(images[kinds == "resize2"])]
    assert doc["curve"]["values"] == list(api.parts_curve(parts, proto).fingerprint.values)
    assert doc["batches"][0]["mixture"] == {NONE: 75, "resize2": 25} and doc["compared_at"] == M
    # the references are redrawn alike: each instance's sub-batches in the same parts, each part against its own
    sized = api._Records(registry, proto, engine, registry.enrolled("d"))
    mixture = ((NONE, 75), ("resize2", 25))
    scorer = sized.scorer(mixture)
    assert isinstance(scorer, api._InParts)
    ref = sized.references[0]
    stacked = sized._stacked(mixture)[ref.instance]
    rows = np.concatenate([np.arange(0, 75), M + np.arange(75, 100)])  # 75 as generated, 25 resampled
    want = api.parts_curve([engine.curve_from_records(list(sized.records(NONE)[ref.instance]), np.arange(0, 75)),
                            engine.under("resize2").curve_from_records(list(sized.records("resize2")[ref.instance]),
                                                                       np.arange(75, 100))], proto)
    assert list(scorer.vectors_from_records(list(stacked), [rows])[0]) == list(want.fingerprint.vector())
    # conditions whose records were scored against one T and P_n are scored together, as one batch
    old = _as_before(reg, tmp_path)
    kept = api._Records(Registry.open(old), proto, engine, registry.enrolled("d"))
    assert kept.scorer(((NONE, 50), ("jpeg90", 50))) is kept.engine_for(NONE)


@pytest.mark.slow
def test_records_kept_before_the_reference_was_recorded_stay_scored_against_t_and_p_n_as_they_are(resampled,
                                                                                                     plugin_host,
                                                                                                     tmp_path):
    from forensics.engine import make_engine

    reg, data = resampled
    old = _as_before(reg, tmp_path)
    path = old / "d" / "records" / "processing.yaml"
    registry = Registry.open(old)
    assert registry.record_reference("d", "resize2") == NONE  # what those records were scored against
    r = run(["registry", "enroll", "noise", str(data / "query-shuffle.npz"), "--registry", str(old),
             "--conditions", "none,resize2"])
    assert r.exit_code == 0, r.output
    registry = Registry.open(old)
    assert "reference" not in yaml.safe_load(path.read_text())["conditions"]["resize2"]  # the file says as before
    refs = [x for x in registry.enrolled("d") if x.generator == "noise"]
    kept, _ = registry.records("d", refs, "resize2")
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    images = get_condition("resize2").apply(np.load(data / "query-shuffle.npz")["images"])
    # the new instance's records scored as the registry's others were: comparable with them
    assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(kept[refs[0].instance], engine.records(images)))


def _as_before(reg, tmp_path):
    """A copy of the registry whose ``processing.yaml`` says no ``reference``, as an earlier version wrote it."""
    old = tmp_path / "old"
    shutil.copytree(reg, old)
    path = old / "d" / "records" / "processing.yaml"
    made = yaml.safe_load(path.read_text())
    for entry in made["conditions"].values():
        del entry["reference"]
    path.write_text(yaml.safe_dump(made))
    return old


def test_two_layers_that_score_a_condition_against_different_references_are_warned_of(tmp_path, toy_protocol,
                                                                                        fingerprints):
    rng = np.random.default_rng(0)
    proto = toy_protocol()

    def recs(*conditions):
        return {c: [rng.random((10, 2)) for _ in proto.layers] for c in conditions}

    below_path, user_path = tmp_path / "bundled", tmp_path / "user"
    below = Registry.open(below_path, create=True)
    below.add_protocol(proto, default=True)
    (a,) = below.enroll("toy", "g", fingerprints(proto, [1, 2, 3]), {}, ids=["a"], records=[recs("none", "crop90")])
    path = below_path / "toy" / "records" / "processing.yaml"
    assert yaml.safe_load(path.read_text())["conditions"]["crop90"]["reference"] == "crop90"
    user = Registry.open(user_path, below=[below_path])
    (b,) = user.enroll("toy", "h", fingerprints(proto, [3, 2, 1]), {}, ids=["b"], records=[recs("none", "crop90")])
    mine = user_path / "toy" / "records" / "processing.yaml"
    assert yaml.safe_load(mine.read_text())["conditions"]["crop90"]["reference"] == "crop90"
    assert not user.reload().warnings
    made = yaml.safe_load(mine.read_text())
    made["conditions"]["crop90"]["reference"] = NONE
    mine.write_text(yaml.safe_dump(made))
    warned = [w for w in Registry.open(user_path, below=[below_path]).warnings if "crop90" in w]
    assert len(warned) == 1 and "scored against T and P_n as they are" in warned[0] and \
        "put through crop90" in warned[0] and "not comparable" in warned[0]
    made["conditions"]["crop90"]["reference"] = "sepia"
    mine.write_text(yaml.safe_dump(made))
    with pytest.raises(RegistryError, match=r"crop90\.reference.*unknown condition 'sepia'"):
        Registry.open(user_path, below=[below_path])


@pytest.mark.slow
def test_records_kept_by_an_earlier_version_are_scored_again_and_replaced_all_at_once(resampled, plugin_host,
                                                                                       tmp_path, monkeypatch):
    from forensics.engine import make_engine
    from forensics.schemas import validate

    reg, data = resampled
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    for g in KINDS:
        Registry.open(copy).remove("d", g)
    path = copy / "d" / "records" / "processing.yaml"
    path.unlink()  # no records are left to say how they were made
    samples = enrol_as_before(monkeypatch, copy, data, tmp_path, "none,jpeg90")
    assert yaml.safe_load(path.read_text())["conditions"]["jpeg90"]["reference"] == NONE
    registry = Registry.open(copy)
    assert registry.record_reference("d", "jpeg90") == NONE
    refs = registry.enrolled("d")
    plain = {p: p.read_bytes() for p in (copy / "d" / "records").rglob("none.npy")}
    r = run(["zoo", "enroll", "--samples", str(samples), "--registry", str(copy), "--conditions", "jpeg90",
             "--rescore", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert [(d["generator"], d["conditions"], d["rescored"], len(d["ids"])) for d in doc["recorded"]] == [
        ("rotate", ["jpeg90"], True, 2)]
    assert yaml.safe_load(path.read_text())["conditions"]["jpeg90"]["reference"] == "jpeg90"
    registry = Registry.open(copy)
    kept, problems = registry.records("d", refs, "jpeg90")
    assert not problems and set(kept) == {x.instance for x in refs}
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    images = get_condition("jpeg90").apply(np.load(data / "rotate.npz")["images"])
    for ref in refs:
        j = ref.provenance["batch"]
        exact = engine.under("jpeg90").records(images[j * M:(j + 1) * M])
        assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(kept[ref.instance], exact))
    assert {p: p.read_bytes() for p in (copy / "d" / "records").rglob("none.npy")} == plain  # untouched
    # an instance no zoo set stands for keeps records under jpeg90: scoring them again is refused, and nothing
    # is written (the records of one condition are all scored alike)
    r = run(["registry", "enroll", "shuffle", str(data / "query-shuffle.npz"), "--registry", str(copy),
             "--conditions", "none,jpeg90"])
    assert r.exit_code == 0, r.output
    stamp = {p: p.read_bytes() for p in (copy / "d").rglob("*") if p.is_file()}
    r = run(["zoo", "enroll", "--samples", str(samples), "--registry", str(copy), "--conditions", "jpeg90",
             "--rescore"])
    assert r.exit_code == 2 and "keep records under jpeg90 but are not given again (shuffle/" in r.output
    assert {p: p.read_bytes() for p in (copy / "d").rglob("*") if p.is_file()} == stamp
    r = run(["zoo", "enroll", "--samples", str(samples), "--registry", str(copy), "--conditions", "none",
             "--rescore"])
    assert r.exit_code == 2 and "--rescore scores records under the conditions named by --conditions" in r.output


# -- what a registry ships to score its records under a processed side ----------------------------------
@pytest.mark.parametrize("distance,projection,given", [("cosine", 8, False), ("euclidean", None, False),
                                                       ("euclidean", None, True)])
def test_the_scoring_part_of_a_fit_scores_records_as_the_whole_fit_does(distance, projection, given):
    from forensics.errors import UsageError
    from forensics.stats.ct import FittedCT

    rng = np.random.default_rng(3)
    t, p, q = rng.normal(size=(600, 12)), rng.normal(size=(150, 12)), rng.normal(size=(400, 12)) * 0.8
    cells = dict(train_cells=rng.integers(0, 4, 600), test_cells=rng.integers(0, 4, 150)) if given else {}
    fit = FittedCT.fit(t, p, k=5, distance=distance, projection=projection, seed=1, **cells)
    records = fit.records(q, generated_cells=rng.integers(0, 4, 400) if given else None)
    part = FittedCT.from_arrays(fit.scoring_part().to_arrays())
    assert part.scoring_only and not fit.scoring_only
    subsets = [None, np.arange(120), rng.permutation(400)[:250], np.arange(5)]
    for params in ({}, {"tau": 0.05}, {"batch_size": 500}):
        whole = fit.score_subsets(records, subsets[:3], **params)
        assert part.score_subsets(records, subsets[:3], **params) == whole  # every cell's U and Z, to the bit
        assert np.array_equal(part.subset_values(records, subsets, **params),
                              fit.subset_values(records, subsets, **params), equal_nan=True)
    assert part.n_train == fit.n_train and part.n_test == fit.n_test
    stored = part.to_arrays()
    assert "train" not in stored and "centres" not in stored and "components" not in stored
    assert sum(v.nbytes for v in stored.values()) < sum(np.asarray(v).nbytes for v in fit.to_arrays().values()) / 10
    for call in (lambda: part.records(q), lambda: part.score(q), lambda: part.transform(q),
                 lambda: part.training_points):
        with pytest.raises(UsageError, match="scores records only"):
            call()
    broken = {**stored, "offsets": stored["offsets"][:-1]}
    with pytest.raises(ValueError, match="do not fit together"):
        FittedCT.from_arrays(broken)
    with pytest.raises(ValueError, match="do not fit together"):
        FittedCT.from_arrays({**stored, "test_cells": stored["test_cells"] + 100})


def test_mean_z_ships_itself_as_its_scoring_part():
    from forensics_pixelstats import FittedMeanZ

    rng = np.random.default_rng(4)
    fit = FittedMeanZ.fit(rng.normal(size=(50, 1)), rng.normal(size=(80, 1)))
    records = fit.records(rng.normal(size=(60, 1)) + 0.3)
    part = FittedMeanZ.from_arrays(fit.scoring_part().to_arrays())
    subsets = [None, np.arange(20), np.arange(1)]
    assert np.array_equal(part.subset_values(records, subsets), fit.subset_values(records, subsets), equal_nan=True)

@pytest.mark.slow
def test_enrolment_ships_what_scores_its_processed_records_and_a_fresh_machine_scores_them_without_fitting(
        resampled, plugin_host, tmp_path, monkeypatch):
    from forensics import engine as engines
    from forensics.registry.reference import read_manifest

    reg, _ = resampled
    registry = Registry.open(reg)
    held = engines.make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    folder = registry.reference_dir("d")
    manifest = read_manifest(folder, "manifest")
    for condition in ("jpeg90", "resize2"):
        path = held.under(condition).scoring_path()
        assert path.parent == folder and path.name in manifest  # shipped with its digest
        whole = engines.cache_dir() / "reference" / path.name
        assert path.stat().st_size * 10 < whole.stat().st_size
    assert run(["registry", "validate", "--registry", str(reg)]).exit_code == 0
    refs = registry.enrolled("d")
    kept, problems = registry.records("d", refs, "resize2")
    assert not problems
    rows = [None, np.arange(30), np.arange(40, 100)]
    expected = [[c.fingerprint.values for c in held.under("resize2").curves_from_records(kept[r.instance], rows)]
                for r in refs]
    # a machine whose cache holds no side: the shipped part scores the records, and nothing is fitted
    engines.forget_opened()
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(engines.Engine, "_fit_reference", lambda *a, **k: pytest.fail("fitted a reference side"))
    fresh = engines.make_engine(registry.protocol("d"), reference_dir=registry.reference_dir).under("resize2")
    assert [[c.fingerprint.values for c in fresh.curves_from_records(kept[r.instance], rows)]
            for r in refs] == expected
    assert np.array_equal(fresh.vectors_from_records(kept[refs[0].instance], rows),
                          held.under("resize2").vectors_from_records(kept[refs[0].instance], rows))
    assert "the part that scores records" in fresh.reference_origin
    assert fresh.keeps_records


@pytest.mark.slow
def test_a_changed_scoring_part_is_refused_and_a_missing_one_is_shipped_again(resampled, plugin_host, tmp_path):
    from forensics import engine as engines
    from forensics.registry.reference import MANIFEST, read_manifest

    reg, _ = resampled
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    registry = Registry.open(copy)
    path = engines.make_engine(registry.protocol("d"), reference_dir=registry.reference_dir).under(
        "jpeg90").scoring_path()
    original, digest = path.read_bytes(), read_manifest(path.parent, "m")[path.name]
    kept, _ = registry.records("d", registry.enrolled("d"), "jpeg90")
    records = next(iter(kept.values()))
    data = bytearray(original)
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    engines.forget_opened()
    with pytest.raises(RegistryError, match="does not match the digest"):
        engines.make_engine(registry.protocol("d"), reference_dir=registry.reference_dir).under(
            "jpeg90").curve_from_records(records)
    assert run(["registry", "validate", "--registry", str(copy)]).exit_code == 1
    # removed, with its digest: the records are scored after fitting, and `ship-scoring` ships the same file again
    path.unlink()
    (path.parent / MANIFEST).write_text("".join(line for line in (path.parent / MANIFEST).read_text().splitlines(True)
                                                if path.name not in line))
    r = run(["registry", "validate", "--registry", str(copy)])
    assert r.exit_code == 0 and "records under jpeg90 are scored against T and P_n processed alike, and the registry " \
        "ships no part that scores them" in " ".join(r.output.split())
    r = run(["registry", "ship-scoring", "--registry", str(copy)])
    assert r.exit_code == 0, r.output
    assert f"{path.name}: shipped" in r.output.replace("\n", "")
    assert "ships no part" not in run(["registry", "validate", "--registry", str(copy)]).output
    assert path.read_bytes() == original and read_manifest(path.parent, "m")[path.name] == digest
    r = run(["registry", "ship-scoring", "--registry", str(copy)])
    assert r.exit_code == 0 and "nothing to ship" in r.output


def test_a_processed_reference_side_that_cannot_be_fitted_names_its_condition_and_why(resampled, tmp_path,
                                                                                       monkeypatch):
    # k-means on T put through a condition can leave a cell that no point of P_n put through it reaches (seen:
    # EfficientNet-Lite0's blocks.0 under WebP 90 on MNIST); the protocol's own side fits, so the error says
    # which condition and why, for its callers to fall back to T and P_n as they are (test_condition_fallback.py)
    from forensics import engine as engines
    from forensics.errors import StatisticError

    reg, _ = resampled
    registry = Registry.open(reg)
    engines.forget_opened()
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "empty"))

    def no_cell(*_, **__):
        raise StatisticError("cell 7 has no test points; use fewer cells (k) or a larger test set")

    monkeypatch.setattr(engines.Engine, "_fit_reference", no_cell)
    engine = engines.make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    with pytest.raises(engines.ProcessedSideUnfit) as caught:
        engine.under("webp90").reference_side()
    unfit = caught.value
    assert (unfit.protocol, unfit.condition) == ("d", "webp90") and unfit.reason.startswith("cell 7 has no test")
    message = str(unfit)
    assert "put through webp90" in message and "cell 7 has no test points" in message and "\n" not in message
    assert engines.fitted_references(engine, "webp90", lambda error: None) == {"d": NONE}
    with pytest.raises(engines.ProcessedSideUnfit):  # without a fall-back: the error
        engines.fitted_references(engine, "webp90")
    with pytest.raises(StatisticError, match="define one with those changed") as own:  # T and P_n as they are
        engine.reference_side()
    assert not isinstance(own.value, engines.ProcessedSideUnfit)
