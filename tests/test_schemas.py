"""The JSON Schemas that ship (forensics/schemas): one for every schema id the code writes, each a valid
draft 2020-12 schema, strict enough that a renamed, missing or mistyped field fails, and every real
document the commands print validates against its schema."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import forensics
from forensics import schemas
from forensics.cli.commands import app

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(forensics.__file__).resolve().parent
SCHEMA_ID = re.compile(r"""["'](forensics\.[a-z][a-z-]*/[0-9]+)["']""")


def ids_in_code() -> set[str]:
    """Every schema id written as a string in the package and the bundled plugins."""
    found = set()
    for folder in (ROOT, ROOT.parent / "plugins"):
        for path in folder.rglob("*.py"):
            found |= set(SCHEMA_ID.findall(path.read_text(encoding="utf-8")))
    return found


def cli_json(*args) -> dict:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def conforms(doc) -> None:
    schemas.validate(doc)


def fails(doc) -> str:
    with pytest.raises(jsonschema.ValidationError) as info:
        schemas.validate(doc)
    return info.value.message


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


# -- the files --------------------------------------------------------------------------------------
def test_every_schema_id_in_the_code_has_a_schema_that_ships():
    in_code = ids_in_code()
    assert "forensics.attribution/1" in in_code and len(in_code) >= 11
    assert in_code <= set(schemas.known()), f"no schema file for {sorted(in_code - set(schemas.known()))}"


@pytest.mark.parametrize("schema_id", schemas.known())
def test_each_schema_is_valid_and_names_itself(schema_id):
    schema = schemas.load(schema_id)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == schema_id and schema["$id"] == f"urn:forensics:schema:{schema_id}"
    assert schema["properties"]["schema"] == {"const": schema_id} and "schema" in schema["required"]
    assert schema["additionalProperties"] is False and schema["description"]
    assert (ROOT / "schemas" / schemas.file_name(schema_id)).is_file()


def test_the_readings_are_those_the_statistics_give():
    from forensics.stats.base import READINGS

    for schema_id in ("forensics.attribution/1", "forensics.memorization/1"):
        assert tuple(schemas.load(schema_id)["$defs"]["reading"]["enum"]) == READINGS


def test_the_schema_files_are_package_data():
    text = (ROOT.parent / "pyproject.toml").read_text()
    assert re.search(r'^"forensics\.schemas" = \["\*\.schema\.json"\]$', text, re.M)


def test_unknown_ids_and_documents_are_one_line_errors():
    with pytest.raises(forensics.UsageError, match="no schema 'forensics.nothing/1'"):
        schemas.load("forensics.nothing/1")
    with pytest.raises(forensics.UsageError, match="not a forensics schema id"):
        schemas.load("attribution")
    with pytest.raises(forensics.UsageError, match="no 'schema' field"):
        schemas.validate({"verdict": {}})


# -- real documents ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paper_registry(tmp_path_factory):
    """A registry holding a copy of the bundled paper protocol (18 curves of 6 generators)."""
    from forensics.registry.papercurves import PROTOCOL_NAME

    target = tmp_path_factory.mktemp("schemas") / "reg"
    target.mkdir()
    bundled = forensics.open_registry()
    shutil.copytree(bundled.layer_of(PROTOCOL_NAME) / PROTOCOL_NAME, target / PROTOCOL_NAME)
    forensics.Registry.open(target, create=True).set_default(PROTOCOL_NAME)
    return target


@pytest.fixture(scope="module")
def evaluation(paper_registry):
    return forensics.evaluate(registry=paper_registry, matchers=["alpha"]).to_dict()


def test_registry_documents_conform(paper_registry, tmp_path):
    conforms(cli_json("registry", "list", "--json"))                        # the bundled registry
    conforms(cli_json("registry", "show", "mnist-effnet-vit-pixel", "--json"))   # a combination's record
    conforms(cli_json("registry", "show", "--registry", paper_registry, "-g", "DDPM", "--json"))
    conforms(cli_json("registry", "validate", "--registry", paper_registry, "--json"))
    before = tmp_path / "before"
    forensics.open_registry(paper_registry).copy_to(before)
    work = tmp_path / "after"
    forensics.open_registry(paper_registry).copy_to(work)
    forensics.remove("PNDM", registry=work)
    diff = cli_json("registry", "diff", before, "--registry", work, "--json")
    assert diff["changes"]
    conforms(diff)


def test_evaluation_conforms_and_a_renamed_missing_or_mistyped_field_fails(evaluation):
    conforms(evaluation)
    assert evaluation["protocols"][0]["matchers"][0]["split"]["query_role"] == "test_batch"
    renamed = copy.deepcopy(evaluation)
    m = renamed["protocols"][0]["matchers"][0]
    m["accuracy"] = m.pop("loo_accuracy")
    fails(renamed)
    missing = copy.deepcopy(evaluation)
    del missing["protocols"][0]["matchers"][0]["confusion"]["labels"]
    assert "'labels' is a required property" in fails(missing)
    mistyped = copy.deepcopy(evaluation)
    mistyped["protocols"][0]["n_instances"] = "18"
    assert "is not of type 'integer'" in fails(mistyped)
    extra = copy.deepcopy(evaluation)
    extra["note"] = "a field no schema knows"
    assert "Additional properties are not allowed" in fails(extra)
    wrong_id = copy.deepcopy(evaluation)
    wrong_id["schema"] = "forensics.attribution/1"
    fails(wrong_id)


@pytest.mark.slow
def test_evaluation_with_stability_conforms(paper_registry):
    conforms(cli_json("registry", "evaluate", "--registry", paper_registry, "-m", "alpha", "--stability", "--json"))


def test_zoo_list_conforms():
    conforms(cli_json("zoo", "list", "--json"))


@pytest.fixture(scope="module")
def results():
    """A real attribution under the default combination (100 held-out DDPM digits: a partial batch) and a
    memorization under mnist-vit."""
    from forensics.zoo.catalog import samples_dir

    images = np.load(samples_dir() / "ddpm" / "heldout.npz")["images"][:100]
    return (forensics.attribute(images, protocol="mnist-effnet-vit-pixel").to_dict(),
            forensics.memorization(images, protocol="mnist-vit").to_dict())


@pytest.mark.slow
def test_attribution_and_memorization_conform_and_renamed_fields_fail(results):
    attribution, memorization = results
    conforms(attribution)
    conforms(memorization)
    assert attribution["protocol"]["parts"] and attribution["partial_batch"] is True
    renamed = copy.deepcopy(attribution)
    renamed["verdict"]["name"] = renamed["verdict"].pop("generator")
    fails(renamed)
    missing = copy.deepcopy(attribution)
    del missing["candidates"]
    assert "'candidates' is a required property" in fails(missing)
    bad_reading = copy.deepcopy(memorization)
    bad_reading["curve"]["readings"][0] = "copied"
    fails(bad_reading)
    bad_digest = copy.deepcopy(memorization)
    bad_digest["protocol"]["digest"] = "abc"
    fails(bad_digest)


@pytest.mark.slow
def test_zoo_documents_conform(tmp_path):
    """zoo heldout, quality and enroll on the copier's sets under the ViT protocol (a copy of it, for enroll)."""
    from forensics.registry import Registry
    from forensics.zoo.catalog import samples_dir

    conforms(cli_json("zoo", "heldout", "--protocol", "mnist-vit", "-g", "kde-copier", "--json"))
    conforms(cli_json("zoo", "quality", "--protocol", "mnist-vit", "-g", "kde-copier", "--json"))
    bundled = Registry.open()
    target = tmp_path / "reg"
    target.mkdir()
    shutil.copytree(bundled.layer_of("mnist-vit") / "mnist-vit", target / "mnist-vit",
                    ignore=shutil.ignore_patterns("samples", "models"))
    Registry.open(target, create=True).set_default("mnist-vit")
    Registry.open(target).remove("mnist-vit", "kde-copier")
    # under a condition whose records the default scores against T and P_n as they are: no side to fit (minutes)
    doc = cli_json("zoo", "enroll", "-g", "kde-copier", "-i", "run0", "--samples", samples_dir(), "--registry",
                   target, "--conditions", "none,jpeg98", "--json")
    assert doc["enrolled"]
    conforms(doc)


@pytest.mark.skipif(not hasattr(forensics, "list_cache"), reason="this build has no cache commands")
def test_cache_documents_conform(tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "not-ours.txt").write_text("x")   # an entry forensics did not write: listed, kept
    conforms(forensics.list_cache().to_dict())
    conforms(forensics.clear_cache().to_dict())


# -- the registry's writes, the plugins, the encoders, curation -----------------------------------------
def test_removal_calibration_and_paper_import_conform(paper_registry, tmp_path):
    """registry remove, calibrate and import-paper on copies of the paper's 18 curves."""
    from forensics.registry.papercurves import PROTOCOL_NAME, export_paper

    work = tmp_path / "reg"
    forensics.open_registry(paper_registry).copy_to(work)
    removed = cli_json("registry", "remove", "PNDM", "--instance", "pndm_1", "--registry", work, "--json")
    assert removed["removed"] == ["pndm_1"]
    conforms(removed)
    calibration = cli_json("registry", "calibrate", "-m", "alpha", "-m", "cosine", "--registry", work, "--json")
    assert set(calibration["matchers"]) == {"alpha", "cosine"}
    conforms(calibration)
    src = export_paper(forensics.open_registry(paper_registry), tmp_path / "paper-curves")
    imported = cli_json("registry", "import-paper", src, "--registry", tmp_path / "new", "--json")
    assert imported["protocol"] == PROTOCOL_NAME and imported["n_curves"] == 18
    conforms(imported)
    no_removal = copy.deepcopy(removed)
    no_removal["removed"] = []
    assert "should be non-empty" in fails(no_removal)
    bad_threshold = copy.deepcopy(calibration)
    record = bad_threshold["matchers"]["alpha"]
    if record.get("calibrated"):
        record["score"] = "0.5"
    else:
        del record["reason"]
    fails(bad_threshold)


def test_protocol_combination_conforms(tmp_path):
    """protocol combine of the bundled EfficientNet and ViT protocols (copied without samples): no embedding."""
    from forensics.registry import Registry

    bundled = Registry.open()
    target = tmp_path / "reg"
    target.mkdir()
    for name in ("mnist-effnet-lite0", "mnist-vit"):
        shutil.copytree(bundled.layer_of(name) / name, target / name,
                        ignore=shutil.ignore_patterns("samples", "models", "reference*"))
    Registry.open(target, create=True).set_default("mnist-vit")
    doc = cli_json("protocol", "combine", "both", "mnist-effnet-lite0", "mnist-vit", "--registry", target, "--json")
    assert doc["combines"] == ["mnist-effnet-lite0", "mnist-vit"] and doc["n_instances"] > 0
    conforms(doc)
    one_part = copy.deepcopy(doc)
    one_part["combines"] = ["mnist-vit"]
    fails(one_part)


def test_plugin_and_encoder_listings_conform_with_broken_entries(register_plugin):
    """The bundled plugins and two of their encoders, with a plugin whose hook fails and an encoder that
    cannot describe itself: both documented, both conform."""
    import types

    from forensics import hookimpl
    from forensics.plugins import KINDS

    def failing(register):
        raise RuntimeError("weights server down")

    def broken_factory(**kw):
        raise RuntimeError("no such checkpoint")

    register_plugin(types.SimpleNamespace(forensics_encoders=hookimpl(failing)), "flaky")
    register_plugin(types.SimpleNamespace(forensics_encoders=hookimpl(lambda register: register(
        "broken_encoder", broken_factory, description="cannot be built"))), "broken")
    plugins_doc = cli_json("plugins", "--json")
    by_name = {p["name"]: p for p in plugins_doc["plugins"]}
    assert by_name["flaky"]["ok"] is False and by_name["flaky"]["error"]
    conforms(plugins_doc)
    assert set(schemas.load("forensics.plugin-list/1")["$defs"]["plugin"]["properties"]["provides"]
               ["propertyNames"]["enum"]) == set(KINDS)
    asked = CliRunner().invoke(app, ["encoders", "--json", "tf_efficientnet_lite0", "broken_encoder"])
    assert asked.exit_code == 1  # one asked for by name cannot be described: said in the document, and failed
    encoders = json.loads(asked.stdout)
    by_name = {e["name"]: e for e in encoders["encoders"]}
    assert "error" in by_name["broken_encoder"] and by_name["tf_efficientnet_lite0"]["layers"]
    conforms(encoders)
    no_dim = copy.deepcopy(encoders)
    del no_dim["encoders"][0]["layers"][0]["dim"]
    fails(no_dim)
    not_ok = copy.deepcopy(plugins_doc)
    not_ok["plugins"][0]["error"] = "it broke"       # ok: true with an error
    fails(not_ok)


def test_curation_conforms_for_each_kind_of_source(tmp_path):
    from forensics.curation import KINDS

    assert tuple(schemas.load("forensics.curation/1")["properties"]["kind"]["enum"]) == KINDS
    by_dataset = cli_json("curate", "digits:train", "--kind", "rotate", "--count", "20", "--out", tmp_path / "r.npz",
                          "--json")
    assert by_dataset["source"] == {"dataset": "digits", "split": "train"} and by_dataset["subset"]["count"] == 20
    conforms(by_dataset)
    from_file = forensics.curate(tmp_path / "r.npz", "noise", seed=1).to_dict()
    assert from_file["subset"] is None and from_file["out"] is None
    conforms(from_file)
    from_array = forensics.curate(np.load(tmp_path / "r.npz")["images"][:10], "copy").to_dict()
    assert from_array["source"]["array"] is True
    conforms(from_array)
    unknown_kind = dict(from_array, kind="blur")
    fails(unknown_kind)


def test_enrolment_conforms(tmp_path, monkeypatch, toy_protocol):
    """registry enroll's document, the embedding stubbed (the real pipeline: the slow test below)."""
    import forensics.engine as pipeline
    from forensics.protocol import Fingerprint
    from forensics.registry import Registry

    reg = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    reg.add_protocol(proto, default=True)

    def fake(images, protocol, **kw):
        m = protocol.batch_size
        return [Fingerprint.from_values(protocol.digest, [float(i), float(images[i * m:(i + 1) * m].mean()), None])
                for i in range(len(images) // m)], None  # no per-image records

    monkeypatch.setattr(pipeline, "fingerprints_and_records", fake)
    images = np.random.default_rng(0).integers(0, 255, size=(25, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    doc = cli_json("registry", "enroll", "gan", tmp_path / "imgs.npz", "--registry", tmp_path / "reg", "--json")
    assert len(doc["instances"]) == 2 and doc["left_out"] == 5
    conforms(doc)
    bad_hash = dict(doc, input_sha256=doc["input_sha256"][7:])   # without its sha256: prefix
    fails(bad_hash)


@pytest.mark.slow
def test_protocol_creation_and_a_real_enrolment_conform(tmp_path):
    """protocol create on the digits with a random tiny ViT, then an enrolment fingerprinted for real."""
    from forensics_datasets import load_digits

    reg = tmp_path / "reg"
    created = cli_json("protocol", "create", "digits-tiny", "--dataset", "digits", "--encoder",
                       "vit_tiny_patch16_224.augreg_in21k", "--weights", "random", "--option", "image_size=32",
                       "--k", "3", "--projection", "16", "--batch-size", "100", "--default", "--registry", reg,
                       "--json")
    assert created["name"] == "digits-tiny"
    conforms(created)
    np.savez(tmp_path / "copies.npz", images=load_digits("test")[:150])
    doc = cli_json("registry", "enroll", "copies", tmp_path / "copies.npz", "--registry", reg, "--json")
    assert len(doc["instances"]) == 1 and doc["left_out"] == 50 and doc["protocol"] == "digits-tiny"
    conforms(doc)


def test_the_invmm_catalogue_conforms():
    from dataclasses import fields

    from forensics.inversion.measure import InvMMSettings

    doc = cli_json("invmm", "--list", "--json")
    assert {"mnist-dup", "zoo-unet"} <= set(doc["models"]) and doc["presets"]
    conforms(doc)
    settings = schemas.load("forensics.invmm-list/1")["$defs"]["settings"]
    assert set(settings["required"]) == {f.name for f in fields(InvMMSettings)}
    mistyped = copy.deepcopy(doc)
    mistyped["presets"]["mnist"]["max_steps"] = 2.5
    fails(mistyped)
