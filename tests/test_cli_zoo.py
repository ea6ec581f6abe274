"""``forensics zoo …``: list the shipped sample sets, enrol them (reproducing the shipped curves), rebuild one."""

from __future__ import annotations

import json
import shutil
from functools import partial

import numpy as np
import pytest
from clirun import invoked

from forensics.cli.zoo import app
from forensics.registry import Registry
from forensics.errors import UsageError
from forensics.zoo.catalog import ZooInstance, is_reference, samples_dir, select

PROTOCOL = "mnist-effnet-lite0"
DEFAULT = "mnist-effnet-vit-pixel"  # the combination of PROTOCOL, mnist-vit and mnist-pixel


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


run = partial(invoked, app)


@pytest.fixture
def registry_copy(tmp_path):
    """The default protocol's folders without the sample sets and models (tests pass --samples): the
    combination and the three protocols it combines."""
    bundled = Registry.open()
    target = tmp_path / "reg"
    target.mkdir()
    for name in [DEFAULT, *(p.name for p in bundled.protocol(DEFAULT).parts)]:
        shutil.copytree(bundled.layer_of(name) / name, target / name, ignore=shutil.ignore_patterns("samples", "models"))
    shutil.copy(bundled.layer_of(DEFAULT) / "registry.yaml", target / "registry.yaml")
    return target


def test_every_command_has_an_example_in_its_help():
    for cmd in ("list", "enroll", "train", "manifest", "quality", "heldout"):
        assert "Example" in run(cmd, "--help").output, cmd


def test_the_reference_runs_are_every_run_of_a_seed_and_never_the_heldout_set():
    def zoo(*names):
        return [ZooInstance(g, n, samples_dir() / g / f"{n}.npz", "", None, {}, {}) for g, n in names]

    every = zoo(("dcgan", "run0"), ("dcgan", "run4"), ("dcgan", "heldout"), ("vae", "run1"), ("vae", "run12"),
                ("vae", "runaway"), ("vae", "rerun1"))
    assert [(z.generator, z.instance) for z in select(every, None, None)] == [
        ("dcgan", "run0"), ("dcgan", "run4"), ("vae", "run1"), ("vae", "run12")]
    assert [z.instance for z in select(every, ["dcgan"], ["heldout"])] == ["heldout"]  # named: taken as asked
    with pytest.raises(UsageError, match="no zoo instance matches"):
        select(zoo(("vae", "heldout")), None, None)


def test_list_shows_every_set_and_what_is_enrolled():
    doc = json.loads(run("list", "--json").output)
    rows = doc["instances"]
    assert doc["protocol"] == DEFAULT and len(rows) == 39  # enrolled: under every protocol it combines
    assert all(r["present"] for r in rows)
    enrolled = {(r["generator"], r["instance"]) for r in rows if r["enrolled"]}
    assert enrolled == {(r["generator"], r["instance"]) for r in rows if is_reference(r["instance"])}
    assert len(enrolled) == 30 and {("dcgan", "run4"), ("sngan", "run4"), ("sngan", "run6")} <= enrolled
    assert all(r["quality"]["fd_pca"] > 0 for r in rows)


@pytest.mark.slow
def test_enroll_reproduces_the_shipped_curve_and_is_idempotent(registry_copy):
    shipped = {i.provenance["input"].rsplit("/", 1)[-1]: i.values
               for i in Registry.open(registry_copy).generator_entries(PROTOCOL)["gmm"].instances}
    Registry.open(registry_copy).remove(PROTOCOL, "gmm")
    samples = samples_dir()
    doc = json.loads(run("enroll", "-g", "gmm", "-i", "run0", "--samples", samples, "--registry", registry_copy,
                         "--conditions", "none", "--json").output)
    # under the default combination: enrolled where it is missing (mnist-effnet-lite0), skipped where it
    # is there (mnist-vit, mnist-pixel)
    assert doc["protocol"] == DEFAULT and doc["skipped"] == 2
    assert [(d["protocol"], d["instance"]) for d in doc["enrolled"]] == [(PROTOCOL, "run0")]
    reg = Registry.open(registry_copy)
    (inst,) = reg.generator_entries(PROTOCOL)["gmm"].instances
    np.testing.assert_allclose(inst.values, shipped["run0.npz"], rtol=0, atol=1e-9)
    assert inst.provenance["command"].startswith("forensics zoo enroll --protocol mnist-effnet-lite0")
    assert [i.id for i in reg.generator_entries(DEFAULT)["gmm"].instances] == [inst.id]
    again = json.loads(run("enroll", "-g", "gmm", "-i", "run0", "--samples", samples, "--registry", registry_copy,
                           "--conditions", "none", "--json").output)
    assert again["enrolled"] == [] and again["skipped"] == 3


def test_bad_requests_are_one_line_errors(tmp_path):
    result = run("enroll", "-g", "stylegan", code=2)
    assert "the zoo has no generator 'stylegan'" in result.output and "Traceback" not in result.output
    result = run("list", "--samples", tmp_path, code=2)
    assert "no zoo manifest" in result.output
    assert "unknown zoo generator" in run("train", "biggan", "--samples", tmp_path, code=2).output


def test_train_rebuilds_a_set_bit_for_bit(tmp_path):
    # the copier needs no training: seconds, and its output must equal the shipped run0 exactly
    run("train", "kde-copier", "--seed", "0", "--samples", tmp_path, "--ckpt-dir", tmp_path / "ckpt")
    rebuilt = np.load(tmp_path / "kde-copier" / "run0.npz")["images"]
    shipped = np.load(samples_dir() / "kde-copier" / "run0.npz")["images"]
    np.testing.assert_array_equal(rebuilt, shipped)
    run("manifest", "--samples", tmp_path)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert [e["instance"] for e in manifest["instances"]] == ["run0"]


@pytest.mark.slow
def test_quality_in_the_encoders_space_tells_copier_from_generator():
    # the ViT protocol's deepest layer: fresh data (P_n) is the yardstick, nn_ratio 1 by construction
    doc = json.loads(run("quality", "--protocol", "mnist-vit", "-g", "kde-copier", "-g", "ddpm", "--json").output)
    assert doc["layer"] == "blocks.7" and len(doc["instances"]) == 8
    for row in doc["instances"]:
        if row["generator"] == "kde-copier":
            assert row["nn_ratio"] < 0.7, row  # measured 0.44–0.49: closer to T than fresh digits
        else:
            assert row["nn_ratio"] > 1.3 and row["fd"] > row["fd_test"], row  # measured 1.81–1.94
    assert "has no layer 'head'" in run("quality", "--protocol", "mnist-vit", "--layer", "head", code=2).output
    # under the default combination a layer is named with its protocol; the same layer, the same figures
    combined = json.loads(run("quality", "-g", "kde-copier", "--layer", "mnist-vit/blocks.7", "--json").output)
    assert combined["protocol"] == DEFAULT and combined["layer"] == "mnist-vit/blocks.7"
    alone = {r["instance"]: r for r in doc["instances"] if r["generator"] == "kde-copier"}
    assert {r["instance"]: r for r in combined["instances"]} == alone


@pytest.mark.slow
def test_heldout_attributes_the_copiers_held_out_set_with_every_matcher():
    # the copier's held-out set: its curve is negative where every generator's is positive (ViT protocol)
    doc = json.loads(run("heldout", "--protocol", "mnist-vit", "-g", "kde-copier", "--json").output)
    (row,) = doc["sets"]
    assert row["generator"] == "kde-copier" and row["file"].endswith("kde-copier/heldout.npz")
    assert len(row["curve"]) == 8 and row["counted_weight_mean"] > 0.5
    assert set(row["matchers"]) == {"alpha", "cosine", "svm"}
    for name, answer in row["matchers"].items():
        assert answer["top"] == "kde-copier" and answer["margin"] > 0.1 and answer["runner_up"] != "kde-copier"
        # the ViT's curves are nearly collinear (cosine ≈ 1 between any two), so its calibrated cosine
        # threshold sits at 0.9998 and may turn even this clear answer into "unknown" -- never into a wrong one
        right = answer["verdict"] == "kde-copier"
        assert right or (name == "cosine" and answer["verdict"] is None), (name, answer)
        assert answer["distance_ratio"] < 1  # inside the spread of the copier's own runs
        assert isinstance(answer["lookalikes"], dict)
        assert doc["summary"][name] == {"top_right": 1, "verdict_right": int(right), "verdict_family": 0,
                                        "verdict_unknown": int(not right), "verdict_wrong": 0, "n": 1}
    table = run("heldout", "--protocol", "mnist-vit", "-g", "kde-copier", "-m", "alpha").output
    distance = f"{row['matchers']['alpha']['distance_ratio']:.2f}×"
    assert "dist." in table and distance in table and "kde-copier  kde-copier" in table  # 80 columns, unabridged
    assert "unknown matcher 'nearest'" in run("heldout", "--protocol", "mnist-vit", "-m", "nearest", code=2).output
    # at another operating point: its thresholds answer, and the table says which
    doc = json.loads(run("heldout", "--protocol", "mnist-vit", "-g", "kde-copier", "-m", "alpha", "--operating-point",
                         "cautious", "--json").output)
    answer = doc["sets"][0]["matchers"]["alpha"]
    assert answer["threshold"]["operating_point"] == "cautious"
    assert answer["at_operating_points"]["cautious"]["generator"] == answer["verdict"]
    assert "cautious operating point" in run("heldout", "--protocol", "mnist-vit", "-g", "kde-copier", "-m", "alpha",
                                             "--operating-point", "cautious").output
    assert "unknown operating point 'bold'" in run("heldout", "--operating-point", "bold", code=2).output
