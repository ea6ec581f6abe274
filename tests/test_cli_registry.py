"""``forensics registry …`` end to end through typer: list, show, validate, enrol, remove, diff, evaluate."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import yaml
from clirun import invoked

from forensics.cli.registry import app
from forensics.protocol import Fingerprint
from forensics.registry import Registry
from forensics.registry.papercurves import PROTOCOL_NAME


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


@pytest.fixture
def paper_copy(tmp_path):
    """A registry holding only the bundled paper protocol, as its default."""
    import shutil

    bundled = Registry.open()
    target = tmp_path / "reg"
    target.mkdir()
    shutil.copytree(bundled.layer_of(PROTOCOL_NAME) / PROTOCOL_NAME, target / PROTOCOL_NAME)
    reg = Registry.open(target, create=True)
    reg.set_default(PROTOCOL_NAME)
    return target


run = partial(invoked, app)


def test_every_command_has_an_example_in_its_help():
    for cmd in ("list", "show", "validate", "enroll", "remove", "diff", "evaluate", "calibrate", "import-paper",
                "records", "refresh", "family", "default", "migrate-reference", "ship-scoring"):
        result = run(cmd, "--help")
        assert "Example" in result.output, cmd
        assert "--registry" in result.output


def test_list_show_validate(paper_copy):
    doc = json.loads(run("list", "--registry", paper_copy, "--json").stdout)
    assert doc["default_protocol"] == PROTOCOL_NAME
    (p,) = [p for p in doc["protocols"] if p["name"] == PROTOCOL_NAME]
    assert p["generators"] == {g: 3 for g in ("BigGAN", "ContraGAN", "DDIM", "DDPM", "PNDM", "SNGAN")}
    assert PROTOCOL_NAME in run("list", "--registry", paper_copy).stdout
    show = json.loads(run("show", PROTOCOL_NAME, "--registry", paper_copy, "--generator", "DDPM", "--json").stdout)
    assert list(show["generators"]) == ["DDPM"] and len(show["generators"]["DDPM"]["instances"]) == 3
    assert "ddpm_1" in run("show", "--registry", paper_copy, "--generator", "DDPM").stdout
    run("show", "--registry", paper_copy, "--generator", "nope", code=2)
    ok = json.loads(run("validate", "--registry", paper_copy, "--json").stdout)
    assert ok["ok"] and ok["instances"] == 18


def test_validate_fails_with_file_and_key(paper_copy):
    path = paper_copy / PROTOCOL_NAME / "generators" / "DDIM.yaml"
    data = yaml.safe_load(path.read_text())
    data["instances"][2]["curve"][4] = float("nan")
    path.write_text(yaml.safe_dump(data))
    result = run("validate", "--registry", paper_copy, code=1)
    assert "DDIM.yaml: instances[2] (ddim_3).curve[4]: nan is not allowed" in result.stdout
    # every other command refuses the damaged registry with one line naming the file and key
    result = run("list", "--registry", paper_copy, code=1)
    assert "DDIM.yaml" in result.output and "Traceback" not in result.output


def test_evaluate_reports_loo_confusion_and_split(paper_copy):
    doc = json.loads(run("evaluate", "--registry", paper_copy, "--protocol", PROTOCOL_NAME,
                         "-m", "alpha", "-m", "cosine", "--json").stdout)
    assert doc["schema"] == "forensics.evaluation/1"
    (p,) = doc["protocols"]
    alpha, cosine = p["matchers"]
    assert (alpha["matcher"], alpha["n"], alpha["correct"]) == ("alpha", 18, 15)
    assert alpha["loo_accuracy"] == pytest.approx(15 / 18)
    assert alpha["confusion"]["labels"] == ["BigGAN", "ContraGAN", "DDIM", "DDPM", "PNDM", "SNGAN"]
    assert sum(map(sum, alpha["confusion"]["matrix"])) == 18
    assert (alpha["split"]["correct"], alpha["split"]["n"]) == (6, 6)
    assert alpha["leave_generator_out"]["n"] == 18
    assert alpha["resampling"] is None  # published curves keep no per-image records to resample
    assert (cosine["correct"], cosine["split"]["correct"]) == (12, 4)
    text = run("evaluate", "--registry", paper_copy, "-m", "alpha").stdout
    assert "confusion" in text and "15/18" in text and "PNDM" in text


def test_evaluate_at_an_operating_point_says_so_and_answers_as_the_library(paper_copy, tmp_path):
    from forensics.match import leave_generator_out, leave_one_out

    doc = json.loads(run("evaluate", "--registry", paper_copy, "-m", "alpha", "--operating-point", "cautious",
                         "--json").stdout)
    (p,) = doc["protocols"]
    (alpha,) = p["matchers"]
    assert p["operating_point"] == alpha["operating_point"] == alpha["leave_generator_out"]["operating_point"] \
        == "cautious"
    refs = Registry.open(paper_copy).enrolled(PROTOCOL_NAME)
    assert alpha["open_set"] == leave_one_out(refs, "alpha", operating_point="cautious").open_set
    assert alpha["leave_generator_out"]["unknown"] == leave_generator_out(refs, "alpha",
                                                                          operating_point="cautious")["unknown"]
    page = tmp_path / "evaluation.html"
    assert "cautious operating point" in run("evaluate", "--registry", paper_copy, "-m", "alpha",
                                             "--operating-point", "cautious", "--html", page).stdout
    assert "leave-one-out, cautious operating point" in page.read_text()
    bad = run("evaluate", "--registry", paper_copy, "--operating-point", "bold", code=2)
    assert "unknown operating point 'bold'" in bad.output


def test_evaluate_stability_recalibrates_with_each_reference_left_out(paper_copy):
    # on the paper's 18 published curves: one calibration per reference dropped, each the calibration
    # of the other 17, summarised per threshold
    from forensics.match import calibrate, make_matcher

    doc = json.loads(run("evaluate", "--registry", paper_copy, "-m", "alpha", "--stability", "--json").stdout)
    stability = doc["protocols"][0]["matchers"][0]["calibration_stability"]
    refs = Registry.open(paper_copy).enrolled(PROTOCOL_NAME)
    runs = stability["runs"]
    assert stability["n_references"] == len(runs) == 18
    assert [r["left_out"] for r in runs] == [f"{x.generator}/{x.instance}" for x in refs]
    for i in (0, 9, 17):
        alone = calibrate(make_matcher("alpha"), refs[:i] + refs[i + 1:])
        assert {k: runs[i][k] for k in ("score", "margin", "distance_ratio")} == \
            {k: alone[k] for k in ("score", "margin", "distance_ratio")}
    full = calibrate(make_matcher("alpha"), refs)
    for k, t in stability["thresholds"].items():
        used = [r[k] for r in runs if r[k] is not None]
        assert t["full"] == full[k] and t["unused"] == 18 - len(used)
        assert (t["min"], t["max"]) == ((min(used), max(used)) if used else (None, None))
    assert len({r["distance_ratio"] for r in runs}) > 1  # one run more or less does move a threshold here
    text = run("evaluate", "--registry", paper_copy, "-m", "alpha", "--stability").stdout
    assert "alpha thresholds:" in text and "one run dropped" in text


def test_calibrate_records_thresholds_that_matchers_reuse(paper_copy):
    from forensics.match import make_matcher
    from forensics.match.calibration import POOL_RULE, Pool

    text = run("calibrate", "--registry", paper_copy, "-m", "alpha").stdout
    assert "at the named operating point: unknown when" in text and "at the cautious operating point" in text
    reg = Registry.open(paper_copy)
    recorded = reg.calibration(PROTOCOL_NAME, "alpha")
    assert recorded["calibrated"] and recorded["options"]["alpha"] == 0.5
    m = make_matcher("alpha", calibration=recorded).fit(reg.enrolled(PROTOCOL_NAME))
    assert m.calibration["source"] == "recorded" and m.calibration["distance_ratio"] == recorded["distance_ratio"]
    # every operating point is recorded, so answering at another needs no calibration
    assert set(recorded["operating_points"]) == {"balanced", "named", "cautious"}
    named = m.at_operating_point("named").calibration
    assert named["source"] == "recorded" and named["distance_ratio"] == recorded["operating_points"]["named"][
        "distance_ratio"]
    assert not reg.warnings
    # a calibration recorded by an older version (thresholds on score and margin only) is flagged
    reg.save_calibration(PROTOCOL_NAME, {"alpha": {**recorded, "rule": "thresholds on (best score, margin)"}})
    assert any("older rule" in w for w in Registry.open(paper_copy).warnings)
    # so is an adopted pool chosen under an older rule (each cell then calibrates on its own)
    pool = Pool()
    pool.add("none", 100, make_matcher("alpha").fit(reg.enrolled(PROTOCOL_NAME)).held_out_points)
    pooled = {**pool.record(reg.enrolled(PROTOCOL_NAME)), "adopted": True, "rule": "an older pooling rule"}
    reg.save_calibration(PROTOCOL_NAME, {"alpha": {**recorded, "pooled": pooled}})
    assert any("pooled thresholds were chosen under an older rule" in w for w in Registry.open(paper_copy).warnings)
    shown = " ".join(run("show", PROTOCOL_NAME, "--registry", paper_copy).stdout.split())
    assert "alpha: unknown when" in shown and "was chosen under an older rule: run `forensics registry calibrate -p he2024-cifar10-vitb16`" in shown
    # and one whose triples a former calibration rule chose (the pooling rule unchanged)
    reg.save_calibration(PROTOCOL_NAME, {"alpha": {**recorded, "pooled": {
        **pooled, "rule": POOL_RULE, "calibration_rule": "a former calibration rule"}}})
    assert any("pooled thresholds were chosen under an older rule" in w for w in Registry.open(paper_copy).warnings)
    reg.save_calibration(PROTOCOL_NAME, {"alpha": {**recorded, "pooled": {**pooled, "adopted": False}}})
    assert not Registry.open(paper_copy).warnings  # one not adopted answers nowhere: nothing to warn of
    run("remove", "DDPM", "--instance", "ddpm_3", "--registry", paper_copy)
    assert any("calibrated on other references" in w for w in Registry.open(paper_copy).warnings)


def test_remove_and_diff(paper_copy, tmp_path):
    before = tmp_path / "before"
    Registry.open(paper_copy).copy_to(before)
    out = json.loads(run("remove", "PNDM", "--registry", paper_copy, "--json").stdout)
    assert out["removed"] == ["pndm_1", "pndm_2", "pndm_3"]
    run("remove", "PNDM", "--registry", paper_copy, code=2)
    doc = json.loads(run("diff", before, "--registry", paper_copy, "--json").stdout)
    assert [(c["change"], c["what"], c["generator"]) for c in doc["changes"]] == [("removed", "generator", "PNDM")]
    assert "removed" in run("diff", before, "--registry", paper_copy).stdout
    assert "no differences" in run("diff", before, "--registry", before).stdout


@pytest.mark.slow
def test_import_paper_command(tmp_path):
    from forensics.registry.papercurves import export_paper

    src = export_paper(Registry.open(), tmp_path / "paper-curves")  # the release's curve files, from the project
    doc = json.loads(run("import-paper", src, "--registry", tmp_path / "new", "--json").stdout)
    assert doc["n_curves"] == 18
    imported = Registry.open(tmp_path / "new").enrolled(PROTOCOL_NAME)
    assert [r.fingerprint for r in imported] == [r.fingerprint for r in Registry.open().enrolled(PROTOCOL_NAME)]
    run("import-paper", src, "--registry", tmp_path / "new", code=2)  # already there: --overwrite replaces


def test_enroll_wiring_with_a_stub_pipeline(tmp_path, monkeypatch, toy_protocol):
    """The command splits into batches of m, records provenance; the pipeline itself is stubbed here."""
    import forensics.engine as pipeline

    reg = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    reg.add_protocol(proto, default=True)
    calls = {}

    def fake(images, protocol, **kw):
        calls["n"] = len(images)
        m = protocol.batch_size
        return [Fingerprint.from_values(protocol.digest, [float(i), float(images[i * m:(i + 1) * m].mean()), None])
                for i in range(len(images) // m)], None  # no per-image records

    monkeypatch.setattr(pipeline, "fingerprints_and_records", fake)
    images = np.random.default_rng(0).integers(0, 255, size=(25, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    doc = json.loads(run("enroll", "gan", tmp_path / "imgs.npz", "--registry", tmp_path / "reg",
                         "--description", "a GAN", "--note", "run 1", "--json").stdout)
    assert calls["n"] == 25 and len(doc["instances"]) == 2
    refs = Registry.open(tmp_path / "reg").enrolled("toy")
    assert [r.fingerprint.values[2] for r in refs] == [None, None]
    prov = refs[0].provenance
    assert prov["input_sha256"] == doc["input_sha256"] and prov["n_images"] == 25 and prov["note"] == "run 1"
    assert prov["command"].startswith("forensics registry enroll gan") and "--conditions" not in prov["command"]
    calls.clear()
    twice = run("enroll", "gan", tmp_path / "imgs.npz", "--registry", tmp_path / "reg", code=2)  # same images twice
    assert "gan already has the instance(s)" in twice.stderr and "enrolled twice" in twice.stderr
    renamed = run("enroll", "gan-b", tmp_path / "imgs.npz", "--registry", tmp_path / "reg", code=2)
    assert f"enrolled already as gan/{refs[0].instance}, gan/{refs[1].instance}" in renamed.stderr
    assert calls == {}  # both refused before the embedding (minutes under every condition), not after it
    # the conditions kept are part of the command that repeats an enrolment
    shifted = np.roll(images, 1, axis=0)
    np.savez(tmp_path / "more.npz", images=shifted)
    run("enroll", "gan2", tmp_path / "more.npz", "--registry", tmp_path / "reg", "--conditions", "none,jpeg90")
    (again,) = [r for r in Registry.open(tmp_path / "reg").enrolled("toy") if r.generator == "gan2"][:1]
    assert again.provenance["command"].endswith("--conditions none,jpeg90"), again.provenance["command"]
    # a family given at enrolment is the generator's: replacing one it had moves every instance, and says so
    np.savez(tmp_path / "third.npz", images=np.random.default_rng(2).integers(0, 255, size=(10, 8, 8), dtype=np.uint8))
    first = json.loads(run("enroll", "gan3", tmp_path / "third.npz", "--registry", tmp_path / "reg", "--family",
                           "net-a", "--json").stdout)
    assert first["warnings"] == []  # a first family replaces nothing
    np.savez(tmp_path / "fourth.npz", images=np.random.default_rng(3).integers(0, 255, size=(10, 8, 8), dtype=np.uint8))
    moved = run("enroll", "gan3", tmp_path / "fourth.npz", "--registry", tmp_path / "reg", "--family", "net-b")
    assert "gan3's family was net-a and is now net-b, for every instance it has" in " ".join(moved.stderr.split())
    assert {r.family for r in Registry.open(tmp_path / "reg").enrolled("toy") if r.generator == "gan3"} == {"net-b"}
    # images repeated pixel for pixel are enrolled as given, with a warning the maintainer can act on
    from forensics.schemas import validate

    other = np.random.default_rng(1).integers(0, 255, size=(20, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "again.npz", images=np.concatenate([other, other[3:8]]))
    again = run("enroll", "copier", tmp_path / "again.npz", "--registry", tmp_path / "reg", "--json")
    repeated = json.loads(again.stdout)
    validate(doc)
    validate(repeated)
    assert doc["warnings"] == [] and len(repeated["instances"]) == 2
    assert len(repeated["warnings"]) == 1 and "5 of the 25 images repeat an earlier image" in repeated["warnings"][0]
    assert "5 of the 25 images repeat an earlier image" in again.stderr


@pytest.mark.slow
def test_enroll_with_the_real_pipeline(tmp_path):
    """Fingerprints computed for real: digits under a random tiny ViT, batches of 100."""
    import forensics.engine as pipeline
    import forensics_datasets

    proto = pipeline.make_protocol("digits-tiny", dataset="digits", encoder="vit_tiny_patch16_224.augreg_in21k",
                                   encoder_options={"image_size": 32}, weights="random",
                                   statistic_params={"k": 3, "distance": "cosine", "projection": 16, "seed": 0},
                                   batch_size=100)
    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(proto, default=True)
    images = forensics_datasets.load_digits("test")[:200]
    np.savez(tmp_path / "copies.npz", images=images)
    doc = json.loads(run("enroll", "copies", tmp_path / "copies.npz", "--registry", tmp_path / "reg",
                         "--json").stdout)
    assert len(doc["instances"]) == 2
    refs = Registry.open(tmp_path / "reg").enrolled("digits-tiny")
    assert len(refs) == 2 and all(len(r.fingerprint.values) == len(proto.layers) for r in refs)
