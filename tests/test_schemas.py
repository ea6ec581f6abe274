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


@pytest.fixture(autouse=True)
def _bundled_plugins_only(plugin_host):
    yield plugin_host


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
    conforms(cli_json("registry", "show", "mnist-effnet-vit", "--json"))   # a combination's record
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
    return (forensics.attribute(images, protocol="mnist-effnet-vit").to_dict(),
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
    doc = cli_json("zoo", "enroll", "-g", "kde-copier", "-i", "run0", "--samples", samples_dir(), "--registry",
                   target, "--json")
    assert doc["enrolled"]
    conforms(doc)


@pytest.mark.skipif(not hasattr(forensics, "list_cache"), reason="this build has no cache commands")
def test_cache_documents_conform(tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "not-ours.txt").write_text("x")   # an entry forensics did not write: listed, kept
    conforms(forensics.list_cache().to_dict())
    conforms(forensics.clear_cache().to_dict())
