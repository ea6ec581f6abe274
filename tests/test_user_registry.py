"""The user's files change only when a command is asked to change them: without ``--registry`` every write
goes to the user registry, which lies over the bundled one (reads see both); nothing overwrites a
shipped protocol's record or an enrolled sample set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forensics.errors import UsageError
from forensics.protocol import Fingerprint
from forensics.registry import (
    Registry, bundled_registry_path, default_registry_path, registry_layers, user_registry_path,
)

DEFAULT = "mnist-effnet-vit-pixel"  # the bundled default: a combination of the three below
PARTS = ("mnist-effnet-lite0", "mnist-vit", "mnist-pixel")
PAPER = "he2024-cifar10-vitb16"
SHA = "sha256:" + "cd" * 32
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


def cli(*args: str, code: int = 0):
    from forensics.cli.commands import app

    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


def curve(reg: Registry, protocol: str, offset: float) -> Fingerprint:
    proto = reg.protocol(protocol)
    return Fingerprint.from_values(proto.digest, [offset + 0.01 * i for i in range(len(proto.layers))])


# -- where the registry is --------------------------------------------------------------------------
def test_the_bundled_registry_is_the_checkouts_or_the_installed_copy(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "forensics").mkdir(parents=True)
    (checkout / "registry").mkdir()
    (checkout / "registry" / "registry.yaml").write_text("schema_version: 1\n")
    (checkout / "pyproject.toml").write_text("")
    assert bundled_registry_path(checkout / "forensics") == checkout / "registry"
    site = tmp_path / "site-packages"
    (site / "forensics" / "_registry").mkdir(parents=True)
    (site / "registry").mkdir()  # some other package's folder of that name is not ours
    assert bundled_registry_path(site / "forensics") == site / "forensics" / "_registry"

    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    assert user_registry_path() == tmp_path / "data" / "registry"
    assert registry_layers() == (tmp_path / "data" / "registry", bundled_registry_path())
    assert registry_layers(tmp_path / "mine") == (tmp_path / "mine",)
    monkeypatch.setenv("FORENSICS_REGISTRY", str(tmp_path / "env"))
    assert registry_layers() == (tmp_path / "env",) and default_registry_path() == tmp_path / "env"


def test_reads_see_the_bundled_registry_and_write_nothing(user, bundled_unchanged):
    reg = Registry.open()
    assert reg.layers == (user, bundled_registry_path()) and reg.validate() == []
    assert reg.default_protocol == DEFAULT and {DEFAULT, *PARTS, PAPER} <= set(reg.protocols)
    assert len(reg.enrolled(DEFAULT)) == 30 and reg.reference_dir("mnist-vit").is_dir()
    cli("registry", "list")
    # validate names both folders it read, as list does: the user registry alone does not exist yet
    assert f"{user} over {bundled_registry_path()}: " in " ".join(cli("registry", "validate").output.split())
    # no copy of a bundled generator file: refresh has nothing to do, and writes nothing
    assert "nothing to refresh" in cli("registry", "refresh").output
    from forensics import schemas

    doc = json.loads(cli("registry", "refresh", "--json").stdout)
    schemas.validate(doc)
    assert doc["copies"] == [] and doc["registry"] == str(user)
    assert not user.exists()


# -- enrolment and removal --------------------------------------------------------------------------
@pytest.mark.slow  # a dozen registry loads
def test_enrolment_goes_to_the_user_registry_and_reads_see_both(user, bundled_unchanged):
    reg = Registry.open()
    ids = reg.enroll(DEFAULT, "my-gan", [curve(reg, DEFAULT, 5.0)], {"input_sha256": SHA, "n_images": 500},
                     description="the analyst's own")
    for part in PARTS:  # the combination's protocols, each with its record beside the new file
        assert (user / part / "generators" / "my-gan.yaml").is_file()
        assert (user / part / "protocol.yaml").read_bytes() == (bundled_registry_path() / part / "protocol.yaml").read_bytes()
    again = Registry.open()
    gens = again.generator_entries(DEFAULT)
    assert set(gens) == {"my-gan", "dcgan", "ddim", "ddpm", "gmm", "kde-copier", "pixelcnn", "pndm", "sngan", "vae"}
    assert [i.id for i in gens["my-gan"].instances] == ids and again.default_protocol == DEFAULT
    alone = Registry.open(user)  # the user registry reads on its own too
    assert alone.validate() == [] and set(alone.generator_entries(PARTS[0])) == {"my-gan"}

    # a further run of a bundled generator: its file is copied up with the new instance
    extra = again.enroll(PARTS[1], "ddpm", [curve(again, PARTS[1], 7.0)], {"input_sha256": SHA, "n_images": 500})
    assert len(Registry.open().generator_entries(PARTS[1])["ddpm"].instances) == 4
    assert len(yaml.safe_load((user / PARTS[1] / "generators" / "ddpm.yaml").read_text())["instances"]) == 4
    # the copy's bundled runs keep their records in the bundled registry: read over it, they are found; the
    # user registry opened alone says where they lie and how to open it, not that they were lost
    bundled_runs = [r for r in Registry.open().enrolled(PARTS[1]) if r.generator == "ddpm" and r.instance not in extra]
    found, problems = Registry.open().records(PARTS[1], bundled_runs, "none")
    assert len(bundled_runs) == 3 and set(found) == {r.instance for r in bundled_runs} and problems == []
    found, problems = Registry.open(user).records(PARTS[1], bundled_runs, "none")
    assert found == {} and len(problems) == 3
    assert all("lie in the bundled registry" in p and "without --registry" in p for p in problems)
    with pytest.raises(UsageError, match="already enrolled as vae/"):  # a bundled curve under another name
        bundled_vae = again.generator_entries(PARTS[1])["vae"].instances[0]
        again.enroll(PARTS[1], "vae-again", [Fingerprint(again.protocol(PARTS[1]).digest, bundled_vae.values)],
                     {"input_sha256": None})
    with pytest.raises(UsageError, match="ignoring case"):
        again.enroll(PARTS[1], "DDPM", [curve(again, PARTS[1], 9.0)], {"input_sha256": None})

    # removal: what the user enrolled goes; a bundled generator stays, with a message that says how
    reg = Registry.open()
    assert reg.remove(DEFAULT, "my-gan") == ids
    assert not (user / PARTS[0] / "generators" / "my-gan.yaml").exists()
    assert reg.remove(PARTS[1], "ddpm", extra[0]) == extra
    assert len(Registry.open().generator_entries(PARTS[1])["ddpm"].instances) == 3
    vae_run = reg.generator_entries(PARTS[1])["vae"].instances[0].id
    for args in ((PARTS[1], "ddpm"), (PARTS[1], "vae"), (PARTS[1], "vae", vae_run), (DEFAULT, "vae")):
        with pytest.raises(UsageError, match="bundled registry at .*(pass the copy with --registry|--instance)"):
            reg.remove(*args)
    with pytest.raises(UsageError, match="has no instance 'nope'"):
        reg.remove(PARTS[1], "vae", "nope")
    with pytest.raises(UsageError, match="then drop the copy of its file with `forensics registry refresh`"):
        reg.remove(PARTS[1], "ddpm")
    # the copy of ddpm's file adds nothing now: refresh drops it, and the bundled file is read again
    (row,) = reg.refresh(PARTS[1], "ddpm")
    assert row["action"] == "removed" and not row["from_below"] and not row["kept"]
    assert not (user / PARTS[1] / "generators" / "ddpm.yaml").exists()
    assert len(Registry.open().generator_entries(PARTS[1])["ddpm"].instances) == 3


@pytest.mark.slow
def test_calibration_and_default_go_to_the_user_registry(user, bundled_unchanged):
    cli("registry", "default", "mnist-vit")
    assert Registry.open().default_protocol == "mnist-vit"
    assert yaml.safe_load((user / "registry.yaml").read_text())["default_protocol"] == "mnist-vit"
    cli("registry", "calibrate", "--protocol", PAPER, "--matcher", "alpha")
    assert (user / PAPER / "calibration.yaml").is_file() and (user / PAPER / "protocol.yaml").is_file()
    reg = Registry.open()
    assert reg.validate() == [] and reg.calibration(PAPER, "alpha") is not None


# -- protocols --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_protocol_combine_as_the_readme_writes_it_changes_no_shipped_file(user, bundled_unchanged):
    cli("protocol", "combine", "my-combination", *PARTS)
    assert (user / "my-combination" / "protocol.yaml").is_file()
    reg = Registry.open()
    assert reg.validate() == [] and len(reg.enrolled("my-combination")) == 30
    assert Registry.open(user).validate() == []  # its parts' records were copied beside it
    # "how the default was made": the same combination again is nothing to do, its description stays
    description = reg.protocol(DEFAULT).description
    assert description
    cli("protocol", "combine", DEFAULT, *PARTS)
    assert not (user / DEFAULT).exists() and Registry.open().protocol(DEFAULT).description == description
    # other settings under a bundled name are refused, whatever --overwrite says
    cli("protocol", "combine", DEFAULT, *reversed(PARTS), "--overwrite", code=2)


def test_combining_again_keeps_the_stored_record(tmp_path):
    copy = tmp_path / "reg"
    copy.mkdir()
    for name in (DEFAULT, *PARTS):
        shutil.copytree(bundled_registry_path() / name, copy / name, ignore=shutil.ignore_patterns("reference"))
    shutil.copy(bundled_registry_path() / "registry.yaml", copy)
    before = (copy / DEFAULT / "protocol.yaml").read_bytes()
    cli("protocol", "combine", DEFAULT, *PARTS, "--registry", copy)
    assert (copy / DEFAULT / "protocol.yaml").read_bytes() == before
    cli("protocol", "combine", DEFAULT, *PARTS, "--registry", copy, "--overwrite", "--description", "new words")
    assert Registry.open(copy).protocol(DEFAULT).description == "new words"


@pytest.mark.slow  # hashes the digits and builds a ViT
def test_protocol_create_writes_the_user_registry(user, bundled_unchanged):
    cli("protocol", "create", "mine", "--dataset", "digits", "--encoder", "vit_tiny_patch16_224.augreg_in21k",
        "--weights", "random", "--option", "image_size=32", "--k", "3", "--projection", "16", "--tau", "0.25", "--batch-size", "20")
    reg = Registry.open()
    assert (user / "mine" / "protocol.yaml").is_file() and "mine" in reg.protocols
    assert reg.default_protocol == DEFAULT  # the user registry names none: the bundled default stays
    # a bundled protocol's name with other settings is refused
    with pytest.raises(UsageError, match="is bundled .* with other settings"):
        from dataclasses import replace

        reg.add_protocol(replace(reg.protocol("mine"), name="mnist-vit"))


def test_a_user_copy_with_other_settings_is_a_problem_named(user, bundled_unchanged):
    (user / "mnist-vit").mkdir(parents=True)
    (user / "registry.yaml").write_text("schema_version: 1\ndefault_protocol: null\n")
    mine = Registry.open(user)
    record = yaml.safe_load((bundled_registry_path() / "mnist-vit" / "protocol.yaml").read_text())
    from forensics.protocol import Protocol

    changed = Protocol.from_dict({**record["protocol"], "batch_size": 100}, "x")
    mine.add_protocol(changed)
    problems = Registry.open(strict=False).validate()
    assert any("other settings" in p and "mnist-vit" in p for p in problems)


# -- the zoo ----------------------------------------------------------------------------------------
def test_zoo_train_never_overwrites_a_sample_set(user, bundled_unchanged, tmp_path):
    result = cli("zoo", "train", "vae", "--seed", "1", code=2)
    assert "run1.npz exists" in result.output and "--force" in result.output and "hides the bundled" in result.output
    result = cli("zoo", "train", "ddpm-net", code=2)
    assert "ddpm.safetensors exists" in result.output
    samples = tmp_path / "samples"
    (samples / "vae").mkdir(parents=True)
    (samples / "vae" / "run1.npz").write_bytes(b"mine")
    cli("zoo", "train", "vae", "--seed", "1", "--samples", samples, code=2)
    assert (samples / "vae" / "run1.npz").read_bytes() == b"mine" and not user.exists()


def test_zoo_reads_a_user_set_over_the_bundled_one(user, bundled_unchanged):
    bundled = bundled_registry_path() / "mnist-effnet-lite0" / "samples"
    mine = user / "mnist-effnet-lite0" / "samples"
    (mine / "gmm").mkdir(parents=True)
    shutil.copy(bundled / "gmm" / "run0.npz", mine / "gmm" / "heldout.npz")
    manifest = json.loads((bundled / "MANIFEST.json").read_text())
    entry = next(e for e in manifest["instances"] if (e["generator"], e["instance"]) == ("gmm", "run0"))
    manifest["instances"] = [dict(entry, instance="heldout", file="gmm/heldout.npz")]
    (mine / "MANIFEST.json").write_text(json.dumps(manifest))
    rows = json.loads(cli("zoo", "list", "--json").stdout)["instances"]
    assert len(rows) == 39
    gmm = {r["instance"]: r for r in rows if r["generator"] == "gmm"}
    assert Path(gmm["heldout"]["file"]) == mine / "gmm" / "heldout.npz" and gmm["heldout"]["enrolled"]
    assert Path(gmm["run1"]["file"]) == bundled / "gmm" / "run1.npz"
    # the user's folder holds no set records (only a copied set): zoo manifest refuses to write an empty
    # manifest over the one that lists it, and never touches the bundled one
    before = (mine / "MANIFEST.json").read_text()
    assert "forensics zoo train" in cli("zoo", "manifest", code=2).output
    assert (mine / "MANIFEST.json").read_text() == before
