"""Combinations: several protocols read as one, their curves end to end.

The registry part runs on hand-made curves; the command-line part on two real protocols over
scikit-learn's digits (a randomly initialised tiny ViT at 32 px, and the project's MNIST ViT with its
shipped weights), with two generators made from the training set by curated transforms."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from forensics.cli.commands import app
from forensics.errors import RegistryError, UsageError
from forensics.match import leave_one_out
from forensics.protocol import Combination, Fingerprint
from forensics.registry import Registry

ONE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.fixture
def two(tmp_path, toy_protocol, fingerprints):
    """A registry with protocols a (3 layers) and b (2 layers), generator g enrolled under both from the
    same two inputs, and the combination ab."""
    reg = Registry.open(tmp_path / "reg", create=True)
    a, b = toy_protocol("a", layers=3), toy_protocol("b", layers=2, k=4)
    reg.add_protocol(a, default=True)
    reg.add_protocol(b)
    for i, (ca, cb) in enumerate((([1.0, 2.0, 3.0], [4.0, None]), ([1.5, 2.5, 3.5], [4.5, 5.5]))):
        prov = {"input_sha256": ONE if i == 0 else OTHER, "n_images": 10}
        reg.enroll("a", "g", fingerprints(a, ca), prov, ids=[f"run{i}"])
        reg.enroll("b", "g", fingerprints(b, cb), prov, ids=[f"run{i}"])
    reg.add_protocol(Combination("ab", (a, b), "a then b"))
    return reg


def test_a_combination_is_its_parts_end_to_end(toy_protocol):
    a, b = toy_protocol("a", layers=3), toy_protocol("b", layers=2, k=4)
    ab = Combination("ab", (a, b))
    assert ab.layers == ("a/l0", "a/l1", "a/l2", "b/l0", "b/l1") and ab.batch_size == 10
    assert ab.parts == (a, b) and a.parts == (a,)
    # any part's change, and the order of the parts, change the digest; the names do not
    assert Combination("ab", (toy_protocol("a", layers=3, k=5), b)).digest != ab.digest
    assert Combination("ab", (b, a)).digest != ab.digest
    assert Combination("renamed", (a.with_name("x"), b)).digest == ab.digest
    with pytest.raises(RegistryError, match="at least two"):
        Combination("c", (a,))
    with pytest.raises(RegistryError, match="listed twice"):
        Combination("c", (a, a))
    with pytest.raises(RegistryError, match="same m"):
        Combination("c", (a, replace(b, batch_size=20)))


def test_references_join_the_parts_instances(two):
    refs = two.enrolled("ab")
    assert [(r.generator, r.instance) for r in refs] == [("g", "run0"), ("g", "run1")]
    assert refs[0].fingerprint.values == (1.0, 2.0, 3.0, 4.0, None)
    assert refs[1].fingerprint.vector().tolist() == [1.5, 2.5, 3.5, 4.5, 5.5]
    assert all(r.fingerprint.protocol_digest == two.protocol("ab").digest for r in refs)
    assert two.validate() == [] and two.warnings == []
    # the record on disk names the parts and their digests
    record = yaml.safe_load((two.path / "ab" / "protocol.yaml").read_text())
    assert record["digest"] == two.protocol("ab").digest
    assert [p["protocol"] for p in record["protocol"]["combines"]] == ["a", "b"]


def test_an_instance_missing_from_a_part_or_made_from_other_images_is_left_out(two, fingerprints):
    a, b = two.protocol("a"), two.protocol("b")
    two.enroll("a", "g", fingerprints(a, [9.0, 9.0, 9.0]), {"input_sha256": ONE}, ids=["only-a"])
    two.enroll("a", "h", fingerprints(a, [7.0, 7.0, 7.0]), {"input_sha256": ONE}, ids=["x"])
    two.enroll("b", "h", fingerprints(b, [7.0, 7.0]), {"input_sha256": OTHER}, ids=["x"])
    assert [r.instance for r in two.enrolled("ab")] == ["run0", "run1"]
    two.enroll("a", "g", fingerprints(a, [8.0, 8.0, 8.0], [6.0, 6.0, 6.0]), {"input_sha256": OTHER.replace("c", "e")},
               ids=["only-a2", "only-a3"])
    left = [w for w in two.warnings if "not enrolled under b" in w]  # one line for the three, not one each
    assert len(left) == 1 and "3 instance(s) of g are not enrolled under b (only-a, only-a2, only-a3)" in left[0]
    assert any("h/x was enrolled from different images" in w for w in two.warnings)
    assert two.validate() == []  # a part enrolled ahead of the other is a normal state, not a fault


def test_a_damaged_instance_is_reported_as_such_not_as_missing_or_stray(two, tmp_path):
    """An instance whose entry in one part's generator file is damaged is that file's problem; the combination
    does not call it missing there (an interrupted enrolment) nor its records stray, whose advice would lose it."""
    import shutil

    rng = np.random.default_rng(0)
    a = two.protocol("a")
    two.add_records("a", "g", "run1", {"none": [rng.normal(size=(4, 2)) for _ in a.layers]})
    gfile = two.path / "a" / "generators" / "g.yaml"
    doc = yaml.safe_load(gfile.read_text())
    doc["instances"][1]["curve"][0] = "abc"  # a hand edit gone wrong
    gfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    reg = Registry.open(two.path, strict=False)
    assert any("g.yaml" in p and "curve" in p for p in reg.problems)
    assert not any("interrupted enrolment" in p for p in reg.problems)
    assert reg.stray_records("a") == []
    assert any("until its file under a reads without problems" in w for w in reg.warnings)
    shutil.rmtree(two.path / "a" / "records" / "g")  # nothing else was touched


def test_enrolling_under_a_combination_enrols_under_every_part_or_none(two, fingerprints):
    ab, a, b = two.protocol("ab"), two.protocol("a"), two.protocol("b")
    (fp,) = fingerprints(ab, [7.0, 8.0, 9.0, 1.0, 2.0])
    ids = two.enroll("ab", "z", [fp], {"input_sha256": f"sha256:{'ef' * 32}"})
    assert two.generator_entries("a")["z"].instances[0].values == (7.0, 8.0, 9.0)
    assert two.generator_entries("b")["z"].instances[0].values == (1.0, 2.0)
    assert [r.fingerprint.values for r in two.enrolled("ab") if r.generator == "z"] == [fp.values]
    # a part that refuses stops it before anything is written: b already holds this id, a does not
    two.enroll("b", "y", fingerprints(b, [3.0, 3.0]), {}, ids=["y0"])
    generators_a = two.path / "a" / "generators"
    before = {p.name: p.read_bytes() for p in generators_a.iterdir()}
    with pytest.raises(UsageError, match="already has an instance 'y0' under b"):
        two.enroll("ab", "y", fingerprints(ab, [1.0, 1.0, 1.0, 4.0, 4.0]), {}, ids=["y0"])
    assert {p.name: p.read_bytes() for p in generators_a.iterdir()} == before
    assert "y" not in two.reload().generator_entries("a")
    # removing under a combination removes from every part that holds it
    assert two.remove("ab", "z") == ids
    assert "z" not in two.generator_entries("a") and "z" not in two.generator_entries("b")
    with pytest.raises(UsageError, match="no generator 'z'"):
        two.remove("ab", "z")
    with pytest.raises(UsageError, match="fingerprint has 3 values"):
        two.enroll("ab", "x", [Fingerprint.from_values(ab.digest, [1.0, 2.0, 3.0])], {})


def test_a_combination_holds_no_generator_files(two):
    (two.path / "ab" / "generators").mkdir()
    (two.path / "ab" / "generators" / "g.yaml").write_text("schema_version: 1\n")
    assert any("a combination holds no generators of its own" in p for p in two.reload().validate())


def test_a_combined_protocol_cannot_change_under_it(tmp_path, toy_protocol):
    # overwriting a part is refused while a combination combines it (it has no generators in this copy)
    fresh = Registry.open(tmp_path / "fresh", create=True)
    fresh.add_protocol(toy_protocol("a"))
    fresh.add_protocol(toy_protocol("b", k=4))
    fresh.add_protocol(Combination("ab", (fresh.protocol("a"), fresh.protocol("b"))))
    with pytest.raises(UsageError, match="combined in ab"):
        fresh.add_protocol(toy_protocol("a", k=7), overwrite=True)
    # edited by hand, the part no longer matches the digest the combination recorded
    pfile = fresh.path / "a" / "protocol.yaml"
    data = yaml.safe_load(pfile.read_text())
    data["protocol"]["statistic"]["params"]["k"] = 7
    data["digest"] = toy_protocol("a", k=7).digest
    pfile.write_text(yaml.safe_dump(data))
    problems = Registry.open(fresh.path, strict=False).validate()
    assert any("protocol 'a' has changed since the combination was made" in p and "--overwrite" in p
               for p in problems), problems


def test_a_combination_calibrates_and_evaluates_like_a_protocol(two, fingerprints):
    a, b = two.protocol("a"), two.protocol("b")
    for i, (ca, cb) in enumerate((([9.0, 1.0, 0.5], [2.0, 2.0]), ([9.5, 1.5, 0.5], [2.5, 2.0]))):
        digest = f"sha256:{i:064x}"
        two.enroll("a", "k", fingerprints(a, ca), {"input_sha256": digest}, ids=[f"k{i}"])
        two.enroll("b", "k", fingerprints(b, cb), {"input_sha256": digest}, ids=[f"k{i}"])
    refs = two.enrolled("ab")
    assert leave_one_out(refs, "alpha").correct == 4


# -- end to end ------------------------------------------------------------------------------------
PARTS = {"digits-vit": ["--encoder", "vit_tiny_patch16_224.augreg_in21k", "--weights", "random",
                        "--option", "image_size=32", "--k", "3", "--projection", "16"],
         "digits-mnist-vit": ["--encoder", "vit_mnist_tiny.forensics", "--k", "3", "--projection", "16"]}
KINDS = ("rotate", "shuffle")


def run(args, **kw):
    return CliRunner().invoke(app, args, **kw)


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """Two protocols on digits (m = 100), two generators × 2 instances under both, and the combination."""
    from forensics import plugins
    from forensics.curation import curate
    from forensics_datasets import load_digits

    old = plugins.reset(plugins.PluginHost(autoload=False))
    root = tmp_path_factory.mktemp("combined")
    reg, data = root / "registry", root / "data"
    data.mkdir()
    train = load_digits("train")
    try:
        for name, args in PARTS.items():
            r = run(["protocol", "create", name, "--dataset", "digits", *args, "--batch-size", "100",
                     "--registry", str(reg)])
            assert r.exit_code == 0, r.output
        for i, kind in enumerate(KINDS):
            np.savez(data / f"{kind}.npz", images=curate(train[:200], kind, seed=i))
            np.savez(data / f"query-{kind}.npz", images=curate(train[200:300], kind, seed=100 + i))
            for name in PARTS:
                r = run(["registry", "enroll", kind, str(data / f"{kind}.npz"), "-p", name, "--registry", str(reg),
                         "--conditions", "none,jpeg90"])  # each condition fits T and P_n put through it: one
                assert r.exit_code == 0, r.output
        np.savez(data / "copies.npz", images=train[300:400])
        r = run(["protocol", "combine", "digits-both", *PARTS, "--registry", str(reg), "--description", "both"])
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("combination digits-both") and "{" not in r.stdout  # JSON only with --json
        yield reg, data
    finally:
        plugins.reset(old)


@pytest.mark.slow
def test_attribute_under_a_combination_is_the_parts_curves_end_to_end(combined, plugin_host):
    reg, data = combined
    query = str(data / "query-rotate.npz")
    docs = {}
    for name in (*PARTS, "digits-both"):
        r = run(["attribute", query, "-p", name, "--registry", str(reg), "--json"])
        assert r.exit_code == 0, r.output
        docs[name] = json.loads(r.stdout)
    both = docs["digits-both"]
    assert both["verdict"]["generator"] == "rotate" and both["candidates"][0]["generator"] == "rotate"
    assert both["curve"]["values"] == docs["digits-vit"]["curve"]["values"] + docs["digits-mnist-vit"]["curve"]["values"]
    assert both["curve"]["layers"] == ([f"digits-vit/blocks.{i}" for i in range(12)]
                                       + [f"digits-mnist-vit/blocks.{i}" for i in range(8)])
    assert both["protocol"]["encoder"] == "vit_tiny_patch16_224.augreg_in21k + vit_mnist_tiny.forensics"
    assert [p["name"] for p in both["protocol"]["parts"]] == list(PARTS)
    assert both["protocol"]["digest"] == Registry.open(reg).protocol("digits-both").digest
    r = run(["attribute", query, "-p", "digits-both", "--registry", str(reg)], env={"COLUMNS": "160"})
    assert r.exit_code == 0 and "Verdict: rotate" in r.stdout and "digits-mnist-vit/blocks.7" in r.stdout


@pytest.mark.slow
def test_memorization_under_a_combination_reads_each_encoder_along_its_depth(combined, plugin_host):
    reg, data = combined
    r = run(["memorization", str(data / "copies.npz"), "-p", "digits-both", "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["curve"]["values"]) == 20 and set(doc["curve"]["readings"]) == {"copying"}
    assert doc["level"] == ("digits-vit: every layer (near-exact copies); "
                            "digits-mnist-vit: every layer (near-exact copies)")


@pytest.mark.slow
def test_registry_commands_under_a_combination(combined, plugin_host, tmp_path):
    reg, data = combined
    r = run(["registry", "calibrate", "-p", "digits-both", "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["matchers"]["alpha"]["n_references"] == 4
    r = run(["registry", "evaluate", "-p", "digits-both", "--registry", str(reg), "--json", "-m", "alpha"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["protocols"][0]["n_instances"] == 4
    r = run(["registry", "validate", "--registry", str(reg), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["instances"] == 8  # stored: 2 × 2 under each protocol
    r = run(["registry", "show", "digits-both", "--registry", str(reg)], env={"COLUMNS": "160"})
    assert r.exit_code == 0 and "combines  digits-vit, digits-mnist-vit" in r.stdout and "vit_mnist_tiny" in r.stdout
    r = run(["registry", "list", "--registry", str(reg), "--json"])
    rows = {p["name"]: p for p in json.loads(r.stdout)["protocols"]}
    assert rows["digits-both"]["combines"] == list(PARTS) and rows["digits-both"]["generators"] == {"rotate": 2,
                                                                                                    "shuffle": 2}
    # enrolling under the combination enrols under both of its protocols, from one reading of the images
    np.savez(tmp_path / "noise.npz", images=np.load(data / "copies.npz")["images"][::-1])
    r = run(["registry", "enroll", "reversed", str(tmp_path / "noise.npz"), "-p", "digits-both", "--registry",
             str(reg), "--json", "--conditions", "none,jpeg90"])
    assert r.exit_code == 0, r.output
    after = Registry.open(reg)
    (iid,) = json.loads(r.stdout)["instances"]
    for name in (*PARTS, "digits-both"):
        assert [i.id for i in after.generator_entries(name)["reversed"].instances] == [iid]
    r = run(["registry", "remove", "reversed", "-p", "digits-both", "--registry", str(reg)])
    assert r.exit_code == 0 and all("reversed" not in Registry.open(reg).generator_entries(n) for n in PARTS)
    r = run(["protocol", "combine", "nested", "digits-both", "digits-vit", "--registry", str(reg)])
    assert r.exit_code == 2 and "is itself a combination" in r.output
    (data / "w.safetensors").write_bytes(b"\0" * 16)  # a file that exists: the combination itself is refused
    r = run(["attribute", str(data / "query-rotate.npz"), "-p", "digits-both", "--weights", str(data / "w.safetensors"),
             "--registry", str(reg)])
    assert r.exit_code == 2 and "names one encoder's weights" in r.output


def test_combining_again_says_what_it_kept_and_names_the_protocols_that_differ(two):
    from forensics import api

    again = api.combine_protocols("ab", ["a", "b"], description="another", registry=two)
    assert again.combination.description == "a then b"
    assert any("keeps its description ('a then b'); --overwrite gives it the new one" in w for w in again.warnings)
    assert not any("keeps its description" in w
                   for w in api.combine_protocols("ab", ["a", "b"], registry=two).warnings)
    with pytest.raises(UsageError, match=r"combines a, b vs b, a\); pick another name, or replace it with --overwrite"):
        api.combine_protocols("ab", ["b", "a"], registry=two)
