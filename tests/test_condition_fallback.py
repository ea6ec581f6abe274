"""A condition whose processed reference side cannot be fitted falls back to T and P_n as they are.

k-means on T put through a condition can leave a cell that no point of P_n put through it falls in (seen:
EfficientNet-Lite0's ``blocks.0`` under WebP 90 on MNIST); the statistic refuses such a side. Enrolment and
rescoring then score that condition's records against T and P_n as they are, warn once naming the condition
and the statistic's reason, and record ``reference: none`` for it, so that queries under it are scored alike;
memorization, which has no records to follow, scores such images against T and P_n as they are and says so.
Records already kept against the processed side are not switched for some instances only. The side is made
unfittable here by refusing the fit under one condition (``unfittable``); the end-to-end parts run on
scikit-learn's digits with the project's MNIST ViT (shipped weights), m = 100.
"""

from __future__ import annotations

import errno
import json
import shutil
import warnings

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from forensics.cli.commands import app
from forensics.conditions import NONE, get_condition
from forensics.errors import RegistryError, StatisticError, UsageError
from forensics.registry import Registry

from test_reference_condition import enrol_as_before

M = 100
UNFIT = "webp90"
REASON = "cell 7 has no test points; use fewer cells (k) or a larger test set"


def run(args, **kw):
    return CliRunner().invoke(app, args, **kw)


def unfittable(monkeypatch, condition=UNFIT):
    """Make the statistic refuse T and P_n put through ``condition`` (no cached side under it is read)."""
    from forensics import engine as engines

    real_fit, real_paths = engines.Engine._fit_reference, engines.Engine._reference_paths

    def fit(self, layers, device):
        if self.condition == condition:
            raise StatisticError(REASON)
        return real_fit(self, layers, device)

    monkeypatch.setattr(engines.Engine, "_fit_reference", fit)
    monkeypatch.setattr(engines.Engine, "_reference_paths",
                        lambda self: [] if self.condition == condition else real_paths(self))


def fell_back(said, condition=UNFIT):
    """The warnings (lines, or caught warnings) that say records under ``condition`` are scored against T and P_n
    as they are."""
    lines = [w if isinstance(w, str) else str(w.message) for w in said]
    return [w for w in lines if f"records under {condition} are scored against T and P_n as they are" in w]


def processing(reg):
    return yaml.safe_load((reg / "d" / "records" / "processing.yaml").read_text())["conditions"]


def files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Protocol ``d`` on the digits with the MNIST ViT (m = 100); ``rotate`` enrolled from two batches with
    records under none and jpeg90 (scored against T and P_n put through jpeg90), and 100 other images of it
    (``query-rotate.npz``)."""
    from clirun import digits_registry

    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        yield digits_registry(tmp_path_factory.mktemp("fallback"), ("rotate",), "none,jpeg90", 100, M)
    finally:
        plugins.reset(old)


@pytest.fixture
def copy(digits, tmp_path):
    """A copy of the digits registry to write to, and the data folder."""
    reg, data = digits
    shutil.copytree(reg, tmp_path / "registry")
    return tmp_path / "registry", data


def other(tmp_path, start, kind="shuffle"):
    """100 digits from ``start`` on of T, curated as ``kind``, saved as a .npz: its path."""
    from forensics.curation import curate
    from forensics_datasets import load_digits

    path = tmp_path / f"{kind}-{start}.npz"
    np.savez(path, images=curate(load_digits("train")[start:start + M], kind, seed=start))
    return path


@pytest.mark.slow
def test_enrolment_under_a_condition_whose_side_cannot_be_fitted_scores_it_against_t_and_p_n_as_they_are(
        copy, plugin_host, tmp_path, monkeypatch):
    from forensics import api
    from forensics.engine import make_engine
    from forensics.schemas import validate

    reg, data = copy
    unfittable(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = api.enroll(data / "query-rotate.npz", "noise", registry=reg, conditions=f"none,jpeg90,{UNFIT}")
    said = fell_back(result.warnings)  # in the result (and so in `registry enroll --json`), not warned twice
    assert len(said) == 1 and said[0].startswith("d: ") and REASON in said[0] and "\n" not in said[0]
    assert not fell_back(caught)
    validate(result.to_dict())
    assert set(result.conditions) == {NONE, "jpeg90", UNFIT}
    made = processing(reg)
    assert made[UNFIT]["reference"] == NONE and made["jpeg90"]["reference"] == "jpeg90"  # the others: processed
    registry = Registry.open(reg)
    assert registry.record_reference("d", UNFIT) == NONE
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    refs = [r for r in registry.enrolled("d") if r.generator == "noise"]
    kept, problems = registry.records("d", refs, UNFIT)
    assert not problems
    images = get_condition(UNFIT).apply(np.load(data / "query-rotate.npz")["images"])
    for ref in refs:  # scored against the protocol's own side
        j = ref.provenance.get("batch", 0)
        assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7)
                   for a, b in zip(kept[ref.instance], engine.records(images[j * M:(j + 1) * M])))
    # later records under it follow the registry: as they are, with no fit tried and nothing warned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = api.enroll(other(tmp_path, 600), "again", registry=reg, conditions=f"none,{UNFIT}")
        api.add_records(data / "rotate.npz", "rotate", registry=reg, conditions=UNFIT)
    assert not fell_back(caught) and not fell_back(again.warnings) and processing(reg)[UNFIT]["reference"] == NONE
    # a query under it is scored against what those records were: T and P_n as they are, and says so
    query = get_condition(UNFIT).apply(np.load(other(tmp_path, 700))["images"])
    doc = api.attribute(query, registry=reg, condition=UNFIT).to_dict()
    validate(doc)
    assert doc["condition"]["name"] == UNFIT and doc["condition"]["processing"]["d"]["reference"] == NONE
    assert doc["curve"]["values"] == list(engine.curve(query).fingerprint.values)


@pytest.mark.slow
def test_records_kept_against_the_processed_side_are_not_switched_for_new_instances(copy, plugin_host, monkeypatch):
    from forensics import api

    reg, data = copy
    unfittable(monkeypatch, "jpeg90")  # the registry's records under jpeg90 were scored against it processed
    before = files(reg)
    with pytest.raises(StatisticError) as caught:
        api.enroll(data / "query-rotate.npz", "noise", registry=reg, conditions="none,jpeg90")
    message = str(caught.value)
    assert "put through jpeg90" in message and REASON in message and "leave jpeg90 out of --conditions" in message
    assert files(reg) == before  # nothing written


@pytest.mark.slow
def test_rescoring_falls_back_for_the_condition_that_cannot_be_fitted_and_says_so(copy, plugin_host, tmp_path,
                                                                                 monkeypatch):
    from forensics import api
    from forensics.engine import make_engine
    from forensics.schemas import validate

    reg, data = copy
    for g in ("rotate",):
        Registry.open(reg).remove("d", g)
    (reg / "d" / "records" / "processing.yaml").unlink()  # no records are left to say how they were made
    samples = enrol_as_before(monkeypatch, reg, data, tmp_path, f"none,jpeg90,{UNFIT}")
    assert {c: e["reference"] for c, e in processing(reg).items()} == {"jpeg90": NONE, UNFIT: NONE}
    unfittable(monkeypatch)
    refs = Registry.open(reg).enrolled("d")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc = api.zoo_enroll(registry=reg, samples=samples, conditions=f"jpeg90,{UNFIT}", rescore=True).to_dict()
    validate(doc)
    said = fell_back(doc["warnings"])  # in `zoo enroll --json`
    assert len(said) == 1 and REASON in said[0] and not fell_back(caught)
    assert [(d["conditions"], d["rescored"]) for d in doc["recorded"]] == [(["jpeg90", UNFIT], True)]
    assert {c: e["reference"] for c, e in processing(reg).items()} == {"jpeg90": "jpeg90", UNFIT: NONE}
    registry = Registry.open(reg)
    engine = make_engine(registry.protocol("d"), reference_dir=registry.reference_dir)
    images = np.load(data / "rotate.npz")["images"]
    for condition, side in (("jpeg90", engine.under("jpeg90")), (UNFIT, engine)):
        kept, problems = registry.records("d", refs, condition)
        assert not problems
        for ref in refs:
            j = ref.provenance.get("batch", 0)
            exact = side.records(get_condition(condition).apply(images[j * M:(j + 1) * M]))
            assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(kept[ref.instance], exact))


@pytest.mark.slow
def test_memorization_of_files_under_a_condition_that_cannot_be_fitted_says_which_reference_it_assumed(
        digits, plugin_host, tmp_path, monkeypatch):
    from PIL import Image

    from forensics import api
    from forensics.schemas import validate
    from forensics_datasets import load_digits

    reg, _ = digits
    unfittable(monkeypatch)
    folder = tmp_path / "webp"
    folder.mkdir()
    for i, im in enumerate(load_digits("train")[500:600]):  # copies of T, read back as WebP 90
        Image.fromarray(im).save(folder / f"{i:03d}.webp", format="WEBP", quality=90)
    r = run(["memorization", str(folder), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert (doc["condition"]["name"], doc["condition"]["source"]) == (UNFIT, "files")
    assert doc["condition"]["processing"]["d"]["reference"] == NONE  # what T and P_n were put through: nothing
    said = [w for w in doc["warnings"] if f"the {UNFIT} images were scored against T and P_n as they are" in w]
    assert len(said) == 1 and REASON in said[0]
    # the curve is that of the same images against T and P_n as they are
    plain = api.memorization(folder, registry=reg, condition=NONE)
    assert doc["curve"]["values"] == list(plain.curve.fingerprint.values)
    # and the report's line of what it assumed says so, not "put through the same processing"
    from forensics.report.terminal import memorization_assumed_text

    said = memorization_assumed_text(doc)
    assert "T and P_n as they are" in said and "same processing" not in said
    r = run(["memorization", str(folder), "--registry", str(reg)])
    assert r.exit_code == 0 and "T and P_n as they are" in " ".join(r.output.split()), r.output


def test_the_assumed_line_names_each_part_scored_against_t_and_p_n_as_they_are():
    from forensics.report.terminal import memorization_assumed_text

    made = {"digest": "sha256:" + "0" * 64, "pillow": "13.0.0"}
    doc = {"condition": {"name": "webp90", "source": "files",
                         "processing": {"a": {**made, "reference": "webp90"}, "b": {**made, "reference": NONE}}}}
    said = memorization_assumed_text(doc)
    assert "T and P_n put through the same processing" in said and "but as they are for b" in said
    doc["condition"]["processing"]["a"]["reference"] = NONE
    assert "T and P_n as they are" in memorization_assumed_text(doc)
    doc["condition"]["processing"] = {"a": {**made, "reference": "webp90"}}
    assert "as they are" not in memorization_assumed_text(doc)


# -- the store records what the caller scored records against, all or nothing -------------------------
@pytest.fixture
def toy(tmp_path, toy_protocol, fingerprints):
    """A registry with protocol ``toy`` and ``recs(*conditions)``: random records of 10 images under each."""
    rng = np.random.default_rng(0)
    proto = toy_protocol()
    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(proto, default=True)

    def recs(*conditions):
        return {c: [rng.random((10, 2)) for _ in proto.layers] for c in conditions}

    return reg, proto, recs


def test_the_store_records_the_reference_its_caller_scored_records_against(toy, fingerprints):
    reg, proto, recs = toy
    path = reg.path / "toy" / "records" / "processing.yaml"
    reg.enroll("toy", "g", fingerprints(proto, [1, 2, 3], [2, 3, 4]), {}, ids=["a", "b"],
               records=[recs(NONE, "crop90", UNFIT), recs(NONE)], references={"crop90": "crop90", UNFIT: {"toy": NONE}})
    made = yaml.safe_load(path.read_text())["conditions"]
    assert made["crop90"]["reference"] == "crop90" and made[UNFIT]["reference"] == NONE
    assert reg.record_reference("toy", UNFIT) == NONE
    # records scored otherwise than the registry's under that condition are refused, before anything is written
    before = files(reg.path)
    with pytest.raises(RegistryError, match=rf"records under {UNFIT} were scored against T and P_n put through "
                                            rf"{UNFIT}, the registry's against T and P_n as they are"):
        reg.enroll("toy", "h", fingerprints(proto, [3, 2, 1]), {}, ids=["b"], records=[recs(NONE, UNFIT)],
                   references={UNFIT: UNFIT})
    with pytest.raises(RegistryError, match="scored alike"):
        reg.add_records("toy", "g", "b", recs("crop90", "jpeg60"), references={"crop90": NONE, "jpeg60": "jpeg60"})
    assert files(reg.path) == before
    # without references: the registry's record (the rule for a condition it keeps nothing under yet)
    assert reg.add_records("toy", "g", "b", recs(UNFIT, "jpeg60")) == ["jpeg60", NONE, UNFIT]
    made = yaml.safe_load(path.read_text())["conditions"]
    assert made["jpeg60"]["reference"] == "jpeg60" and made[UNFIT]["reference"] == NONE


def test_rescoring_records_writes_the_references_given_all_or_nothing(toy, fingerprints, monkeypatch):
    from forensics.registry import schema

    reg, proto, recs = toy
    path = reg.path / "toy" / "records" / "processing.yaml"
    reg.enroll("toy", "g", fingerprints(proto, [1, 2, 3], [2, 3, 4]), {}, ids=["a", "b"],
               records=[recs(NONE, "jpeg90", UNFIT), recs(NONE, "jpeg90", UNFIT)],
               references={"jpeg90": NONE, UNFIT: NONE})
    again = {("g", i): recs("jpeg90", UNFIT) for i in ("a", "b")}
    references = {"jpeg90": "jpeg90", UNFIT: NONE}
    with pytest.raises(UsageError, match="without what they were scored against"):
        reg.rescore_records("toy", again, ["jpeg90", UNFIT], {"jpeg90": "jpeg90"})
    before = files(reg.path)

    def full(*_, **__):  # the records' temporary files are written; then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(schema, "dump_yaml", full)
        with pytest.raises(RegistryError, match="nothing was left half-written"):
            reg.rescore_records("toy", again, ["jpeg90", UNFIT], references)
    assert files(reg.path) == before
    assert reg.rescore_records("toy", again, ["jpeg90", UNFIT], references) == ["jpeg90", UNFIT]
    made = yaml.safe_load(path.read_text())["conditions"]
    assert made["jpeg90"]["reference"] == "jpeg90" and made[UNFIT]["reference"] == NONE
    kept, problems = Registry.open(reg.path).records("toy", Registry.open(reg.path).enrolled("toy"), UNFIT)
    assert not problems and all(np.allclose(k, g) for k, g in zip(kept["a"], again[("g", "a")][UNFIT]))

