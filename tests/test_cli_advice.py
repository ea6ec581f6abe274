"""What a command says when it cannot do what was asked, or did nothing: the right exit code, one line that
says what the user can do (never to write into the installed package), and no work before every option is
checked. Offline, on CPU, with the user registry in a temporary folder over the bundled one."""

from __future__ import annotations

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from forensics.protocol import Fingerprint
from forensics.registry import Registry, bundled_registry_path

LITE0 = "mnist-effnet-lite0"
SAMPLE = bundled_registry_path() / LITE0 / "samples" / "ddpm" / "heldout.npz"
SHA = "sha256:" + "cd" * 32
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


def cli(*args, code: int = 0):
    from forensics.cli.commands import app

    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def fake_curve(reg: Registry, protocol: str, offset: float) -> Fingerprint:
    proto = reg.protocol(protocol)
    return Fingerprint.from_values(proto.digest, [offset + 0.01 * i for i in range(len(proto.layers))])


# -- 1: family and remove of a bundled generator -----------------------------------------------------
def test_a_family_the_bundled_generator_has_already_is_nothing_to_do(user, bundled_unchanged):
    result = cli("registry", "family", "ddim", "ddpm-net", "--protocol", LITE0)  # the --help example
    assert "nothing changed" in result.stdout
    assert not (user / LITE0).exists()


def test_a_new_family_of_a_bundled_generator_is_copied_into_the_user_registry(user, bundled_unchanged):
    parts = (LITE0, "mnist-vit", "mnist-pixel")  # the default combination's: set under each, as enrol does
    result = cli("registry", "family", "ddim", "other-net")
    assert "ddpm-net → other-net" in result.stdout and str(user) in result.stdout
    for part in parts:
        copy = yaml.safe_load((user / part / "generators" / "ddim.yaml").read_text())
        assert copy["family"] == "other-net" and (user / part / "protocol.yaml").is_file()
    reg = Registry.open()
    assert reg.validate() == [] and reg.generator_entries(LITE0)["ddim"].family == "other-net"
    # a refresh keeps the family set here (the copy adds it), and so the copy
    rows = reg.refresh(None, "ddim")
    assert len(rows) == 3 and all(row["action"] != "removed" for row in rows)
    assert Registry.open().generator_entries("mnist-effnet-vit-pixel")["ddim"].family == "other-net"


def test_removing_a_bundled_generator_never_advises_writing_into_the_package(user, bundled_unchanged):
    instance = Registry.open().generator_entries(LITE0)["dcgan"].instances[0].id
    for args in (("dcgan",), ("dcgan", "--instance", instance)):
        line = error_line(cli("registry", "remove", *args, "--protocol", LITE0, code=2))
        assert f"--registry {bundled_registry_path()}" not in line
        assert "copy that folder" in line and "--registry" in line


# -- 2: a missing extra is a failed run (exit 1), as docs/install.md says ------------------------------
def test_plots_without_matplotlib_exit_1(user, without, tmp_path):
    without("matplotlib")
    line = error_line(cli("attribute", SAMPLE, "--plots", tmp_path / "figs", code=1))
    assert "pip install 'forensics-attribution[plots]'" in line
    assert not (tmp_path / "figs").exists()


def test_the_ray_engine_without_ray_exit_1(user, without):
    without("ray")
    line = error_line(cli("attribute", SAMPLE, "--engine", "ray", code=1))
    assert "forensics-attribution[ray]" in line


# -- 3: combining again what is there ----------------------------------------------------------------
def test_combining_an_existing_combination_again_says_it_is_unchanged(user, bundled_unchanged):
    result = cli("protocol", "combine", "mnist-effnet-vit", LITE0, "mnist-vit")  # the --help example
    assert "exists unchanged" in result.stdout and "written to" not in result.stdout
    assert str(bundled_registry_path() / "mnist-effnet-vit") in result.stdout.replace("\n", "")


# -- 4: the cache's own folders ------------------------------------------------------------------------
def test_the_data_sets_folder_is_forensics_own(user, tmp_path):
    import forensics

    (tmp_path / "cache" / "datasets").mkdir(parents=True)  # what a failed CIFAR-10 fetch leaves
    assert forensics.list_cache().items == ()  # a folder holding no file is no entry, and never "not written"
    (tmp_path / "cache" / "datasets" / "cifar-10-batches-py").mkdir()
    (tmp_path / "cache" / "datasets" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"0" * 10)
    (item,) = forensics.list_cache().items
    assert item.kind == "datasets" and "not written" not in item.what
    result = cli("cache", "list")
    assert "datasets" in result.stdout and "not written" not in result.stdout
    from forensics import schemas
    import json

    schemas.validate(json.loads(cli("cache", "list", "--json").stdout))
    cli("cache", "clear", "--yes")
    assert (tmp_path / "cache" / "datasets").is_dir()  # a data set is not what `cache clear` removes


# -- 5: every option before any data is fetched or image read --------------------------------------------
@pytest.mark.parametrize("protocol", ["he2024-cifar10-vitb16", LITE0])
def test_random_weights_are_refused_before_any_data_is_read(user, monkeypatch, protocol):
    import forensics.api
    import forensics.engine

    def never(*args, **kwargs):
        raise AssertionError("data read before the weights were checked")

    monkeypatch.setattr(forensics.api, "read_images", never)
    monkeypatch.setattr(forensics.engine, "load_reference_set", never)
    line = error_line(cli("attribute", SAMPLE, "--protocol", protocol, "--weights", "random", code=1))
    assert "not the weights of protocol" in line or "are not the protocol's" in line


# -- 6: a registry path that is not there is wrong usage ------------------------------------------------
@pytest.mark.parametrize("args", [
    ("registry", "list"), ("registry", "validate"), ("registry", "migrate-reference"), ("registry", "ship-scoring"),
    ("registry", "show"),
    ("registry", "default"), ("registry", "refresh"), ("registry", "calibrate"), ("cache", "list"),
    ("zoo", "list"), ("attribute", str(SAMPLE)),
])
def test_a_registry_that_is_not_there_is_a_usage_error(user, tmp_path, args):
    line = error_line(cli(*args, "--registry", tmp_path / "does-not-exist", code=2))
    assert "does-not-exist" in line and "pass --registry" in line


def test_a_registry_environment_variable_that_points_nowhere_says_so(user, tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_REGISTRY", str(tmp_path / "nowhere"))
    assert "set FORENSICS_REGISTRY" in error_line(cli("registry", "list", code=2))


# -- 8: git:REV outside a checkout ---------------------------------------------------------------------
def test_diff_against_git_outside_a_checkout_is_one_line(user, tmp_path):
    folder = tmp_path / "reg"
    shutil.copytree(bundled_registry_path() / LITE0, folder / LITE0, ignore=shutil.ignore_patterns("reference",
                                                                                                   "samples", "records"))
    Registry.open(folder, create=True).set_default(LITE0)
    line = error_line(cli("registry", "diff", "git:HEAD", "--registry", folder, code=2))
    assert "not in a git checkout" in line and "fatal" not in line
    line = error_line(cli("registry", "diff", tmp_path / "nothing", "--registry", folder, code=2))
    assert "no registry folder at" in line


# -- 9: records and calibrate under the protocol the generator is enrolled under --------------------------
def test_records_works_under_the_one_protocol_the_generator_is_enrolled_under(user, bundled_unchanged):
    reg = Registry.open()
    reg.enroll(LITE0, "my-gan", [fake_curve(reg, LITE0, 5.0)], {"input_sha256": SHA, "n_images": 500})
    # the README's next line, without --protocol: it works under mnist-effnet-lite0 (these are not the images
    # my-gan was enrolled from, so it stops there, after saying which protocol it took)
    result = cli("registry", "records", "my-gan", SAMPLE, "--conditions", "none,jpeg90", code=2)
    assert f"enrolled under {LITE0} only" in result.output
    assert f"none of my-gan's instances under {LITE0}" in error_line(result)
    # the bundled calibration no longer fits the references: the hint names the protocol
    warnings = [w for w in Registry.open().warnings if "registry calibrate" in w and f"/{LITE0}/" in w]
    assert warnings and all(f"calibrate -p {LITE0}`" in w for w in warnings)
    # enrolled under two protocols, neither the default: it asks which
    reg = Registry.open()
    reg.enroll("mnist-vit", "my-gan", [fake_curve(reg, "mnist-vit", 6.0)], {"input_sha256": SHA, "n_images": 500})
    line = error_line(cli("registry", "records", "my-gan", SAMPLE, code=2))
    assert f"{LITE0}, mnist-effnet-vit, mnist-vit" in line and "--protocol" in line


# -- 13: threads ---------------------------------------------------------------------------------------
def test_zero_threads_is_a_usage_error(user):
    result = cli("--threads", "0", "registry", "default", code=2)
    assert "positive number of threads" in result.output
