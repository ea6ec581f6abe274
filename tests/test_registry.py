"""The registry: layout, validation with file and key, atomic locked writes, enrol/remove, diff."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from forensics.errors import ProtocolMismatch, RegistryError, UsageError
from forensics.protocol import Fingerprint
from forensics.registry import Registry, default_registry_path, diff, git_snapshot, open_state
from forensics.registry.papercurves import PROTOCOL_NAME
from forensics.registry.schema import MAX_FILE_BYTES, dump_yaml

SHA = "sha256:" + "ab" * 32


@pytest.fixture
def reg(tmp_path, toy_protocol) -> Registry:
    r = Registry.open(tmp_path / "reg", create=True)
    r.add_protocol(toy_protocol(), default=True)
    return r


def test_default_path_and_environment(monkeypatch, tmp_path):
    import forensics

    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    assert default_registry_path() == Path(forensics.__file__).resolve().parent.parent / "registry"
    monkeypatch.setenv("FORENSICS_REGISTRY", str(tmp_path))
    assert default_registry_path() == tmp_path
    with pytest.raises(UsageError, match="no registry at"):  # a path given that is not there: wrong usage (exit 2)
        Registry.open(tmp_path / "missing")


def test_bundled_registry_is_valid_and_holds_the_paper_protocol():
    reg = Registry.open()
    assert reg.validate() == [] and reg.default_protocol in reg.protocols
    assert PROTOCOL_NAME in reg.protocols
    refs = reg.enrolled(PROTOCOL_NAME)
    assert len(refs) == 18 and all(len(r.fingerprint.values) == 12 for r in refs)
    with pytest.raises(UsageError, match=f"known: .*{PROTOCOL_NAME}"):
        reg.protocol("nope")


def test_round_trip_is_exact_and_keeps_undefined_values(reg, fingerprints):
    proto = reg.protocol("toy")
    curves = [[0.1 + 1e-17, -2.123456789012345, None], [1 / 3, 2e-300, 5.0]]
    ids = reg.enroll("toy", "gan", fingerprints(proto, *curves), {"input_sha256": SHA, "n_images": 20, "note": "x"},
                     description="a GAN")
    assert ids == ["abababababab-0", "abababababab-1"]
    again = Registry.open(reg.path)
    refs = again.enrolled("toy")
    assert [r.fingerprint.values for r in refs] == [tuple(c) for c in curves]
    assert refs[0].fingerprint.protocol_digest == proto.digest
    prov = refs[1].provenance
    assert prov["input_sha256"] == SHA and prov["n_images"] == 20 and prov["batch"] == 1 and prov["note"] == "x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["created"])
    assert prov["tool_version"].startswith("forensics ") and prov["by"]
    text = (reg.path / "toy" / "generators" / "gan.yaml").read_text()
    assert f"curve: [{curves[0][0]!r}, -2.123456789012345, null]" in text  # one line per curve, null = undefined
    assert again.generators["toy"]["gan"].description == "a GAN"
    assert not list(reg.path.rglob(".*.tmp"))


def test_enroll_refuses_mismatches_and_duplicates(reg, fingerprints, toy_protocol):
    proto = reg.protocol("toy")
    other = toy_protocol(k=5)
    with pytest.raises(ProtocolMismatch):
        reg.enroll("toy", "gan", fingerprints(other, [1, 2, 3]), {})
    with pytest.raises(UsageError, match="3 layers"):
        reg.enroll("toy", "gan", fingerprints(proto, [1, 2]), {})
    with pytest.raises(UsageError, match="generator name"):
        reg.enroll("toy", "bad name", fingerprints(proto, [1, 2, 3]), {})
    reg.enroll("toy", "gan", fingerprints(proto, [1, 2, 3]), {"input_sha256": SHA})
    with pytest.raises(UsageError, match="enrolled twice"):
        reg.enroll("toy", "gan", fingerprints(proto, [4, 5, 6]), {"input_sha256": SHA})
    with pytest.raises(UsageError, match="already has this curve"):
        reg.enroll("toy", "gan", fingerprints(proto, [1, 2, 3]), {})
    with pytest.raises(UsageError, match="already enrolled as gan/"):
        reg.enroll("toy", "vae", fingerprints(proto, [1, 2, 3]), {})
    with pytest.raises(UsageError, match="ignoring case"):
        reg.enroll("toy", "GAN", fingerprints(proto, [7, 8, 9]), {})
    with pytest.raises(UsageError, match="no protocol 'nope'"):
        reg.enroll("nope", "gan", fingerprints(proto, [1, 2, 3]), {})


def test_enroll_refuses_curves_the_registry_would_then_refuse(reg, fingerprints):
    """Two batches of one enrolment with one curve (the same images twice in the input, or a statistic that
    scored no layer: every such curve is all null) were written, and the registry then refused to open, for
    every command and protocol ("identical to the curve of ... (enrolled twice?)")."""
    proto = reg.protocol("toy")
    with pytest.raises(UsageError, match="already has this curve as instance .* the same images twice"):
        reg.enroll("toy", "gan", fingerprints(proto, [1, 2, 3], [1, 2, 3]), {})
    with pytest.raises(UsageError, match="undefined at every layer under toy"):
        reg.enroll("toy", "gan", fingerprints(proto, [None, None, None]), {})
    assert not reg.generators.get("toy") and reg.validate() == []
    reg.enroll("toy", "gan", fingerprints(proto, [1, 2, 3], [1, 2, None]), {})  # a partly undefined curve is one
    assert len(type(reg).open(reg.path).enrolled("toy")) == 2


def test_remove_instance_and_generator(reg, fingerprints):
    proto = reg.protocol("toy")
    rng = np.random.default_rng(0)
    kept = [{"none": [rng.normal(size=(4, 2)) for _ in proto.layers]} for _ in range(2)]
    ids = reg.enroll("toy", "gan", fingerprints(proto, [1, 2, 3], [2, 3, 4]), {}, records=kept,
                     image_digests=[rng.integers(0, 256, (4, 16), dtype=np.uint8) for _ in range(2)])
    reg.enroll("toy", "vae", fingerprints(proto, [3, 2, 1]), {})
    folders = [reg.path / "toy" / "records" / "gan" / iid for iid in ids]
    assert all(sorted(f.name for f in folder.iterdir()) == ["images.npy", "none.npy"] for folder in folders)
    # a records folder linked out of the registry: read nowhere, and the removal refused before anything is written
    outside = reg.path.parent / "outside"
    folders[0].rename(outside)
    folders[0].symlink_to(outside)
    digests, problems = reg.image_digests("toy", reg.enrolled("toy"))
    assert list(digests) == [("gan", ids[1])] and len(problems) == 1 and "symbolic link" in problems[0]
    assert not reg.records("toy", reg.enrolled("toy"), "none")[0].get(ids[0])
    before = (reg.path / "toy" / "generators" / "gan.yaml").read_bytes()
    with pytest.raises(RegistryError, match="symbolic link"):
        reg.remove("toy", "gan", ids[0])
    assert (reg.path / "toy" / "generators" / "gan.yaml").read_bytes() == before and outside.is_dir()
    folders[0].unlink()
    outside.rename(folders[0])
    assert reg.remove("toy", "gan", ids[0]) == [ids[0]]
    assert [r.instance for r in reg.enrolled("toy") if r.generator == "gan"] == [ids[1]]
    assert not folders[0].exists() and folders[1].is_dir()  # its records and image digests went with it
    (folders[1] / "notes.txt").write_text("the maintainer's")
    with pytest.raises(UsageError, match="no instance"):
        reg.remove("toy", "gan", "nope")
    assert reg.remove("toy", "gan") == [ids[1]]
    assert not (reg.path / "toy" / "generators" / "gan.yaml").exists()
    assert [f.name for f in folders[1].iterdir()] == ["notes.txt"]  # what the registry did not write stays
    from forensics.api import validate_registry

    checked = validate_registry(reg.path)  # a folder no instance names: said, with what to do
    assert checked.ok and [w for w in checked.warnings if "no generator file names" in w] == [
        f"toy: records of 1 instance(s) no generator file names (gan/{ids[1]}) lie in {reg.path / 'toy' / 'records'}; "
        "nothing reads them: delete those folders"]
    with pytest.raises(UsageError, match="known: vae"):
        reg.remove("toy", "gan")


def test_protocol_writes(reg, fingerprints, toy_protocol):
    changed = toy_protocol(k=7)
    with pytest.raises(UsageError, match="other settings"):
        reg.add_protocol(changed)
    reg.add_protocol(changed, overwrite=True)  # no generators yet: allowed
    reg.enroll("toy", "gan", fingerprints(changed, [1, 2, 3]), {})
    with pytest.raises(UsageError, match="enrolled generators"):
        reg.add_protocol(toy_protocol(k=3), overwrite=True)
    reg.add_protocol(changed)  # same digest: a no-op rewrite
    reg.add_protocol(toy_protocol("second"))
    assert reg.default_protocol == "toy" and set(reg.protocols) == {"toy", "second"}
    reg.set_default("second")
    assert Registry.open(reg.path).default_protocol == "second"


# -- validation: every problem names the file and the key ----------------------------------------
def _edit(path: Path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def filled(reg, fingerprints):
    proto = reg.protocol("toy")
    reg.enroll("toy", "gan", fingerprints(proto, [1, 2, 3], [2, 3, 4]), {"input_sha256": SHA, "n_images": 20})
    reg.enroll("toy", "vae", fingerprints(proto, [3, 2, 1]), {})
    assert Registry.open(reg.path).validate() == []
    return reg


@pytest.mark.parametrize("case,file,expected", [
    ("digest", "toy/protocol.yaml", r"toy/protocol\.yaml: digest: stored .* is not the digest"),
    ("layers", "toy/protocol.yaml", r"toy/protocol\.yaml: protocol\.encoder\.layers"),
    ("nan", "toy/generators/gan.yaml", r"gan\.yaml: instances\[0\] \(abababababab-0\)\.curve\[1\]: nan is not allowed"),
    ("inf", "toy/generators/gan.yaml", r"gan\.yaml: instances\[1\] \(abababababab-1\)\.curve\[2\]: inf is not allowed"),
    ("length", "toy/generators/gan.yaml", r"gan\.yaml: instances\[0\] \(abababababab-0\)\.curve: has 2 values; "
                                          r"the protocol has 3 layers"),
    ("schema", "toy/generators/gan.yaml", r"gan\.yaml: schema_version: 2 is not supported"),
    ("name", "toy/generators/gan.yaml", r"gan\.yaml: generator: 'GAN2' does not match the file name"),
    ("dupid", "toy/generators/gan.yaml", r"gan\.yaml: instances\[1\] \(abababababab-0\)\.id: duplicate instance id"),
    ("provenance", "toy/generators/gan.yaml", r"gan\.yaml: instances\[0\] \(abababababab-0\)\.provenance\.created: "
                                              r"missing"),
    ("protodigest", "toy/generators/gan.yaml", r"gan\.yaml: protocol_digest: .* another protocol"),
    ("string", "toy/generators/gan.yaml", r"gan\.yaml: instances\[0\] \(abababababab-0\)\.curve\[0\]: expected a number"),
    ("default", "registry.yaml", r"registry\.yaml: default_protocol: 'gone' is not a protocol"),
    ("imagedigests", "toy/generators/gan.yaml", r"gan\.yaml: instances\[0\] \(abababababab-0\)\.provenance\."
                                                r"image_digests: expected a sha256 digest or null, got 'xyz'"),
    ("schematext", "toy/generators/gan.yaml", r"gan\.yaml: schema_version: the text '1', not the number 1: drop the "
                                              r"quotes"),
    ("exponent", "toy/generators/gan.yaml", r"curve\[0\]: expected a number or null, got '1e308' \(YAML reads 1e308 "
                                            r"as text: write it with a decimal point, 1\.0e308\)"),
])
def test_validate_names_file_and_key(filled, case, file, expected):
    path = filled.path / file
    edits = {
        "digest": lambda d: d.update(digest="sha256:" + "0" * 64),
        "layers": lambda d: d["protocol"]["encoder"].update(layers=["l0", "l0"]),
        "nan": lambda d: d["instances"][0]["curve"].__setitem__(1, float("nan")),
        "inf": lambda d: d["instances"][1]["curve"].__setitem__(2, float("inf")),
        "length": lambda d: d["instances"][0].update(curve=[1.0, 2.0]),
        "schema": lambda d: d.update(schema_version=2),
        "name": lambda d: d.update(generator="GAN2"),
        "dupid": lambda d: d["instances"][1].update(id=d["instances"][0]["id"]),
        "provenance": lambda d: d["instances"][0]["provenance"].pop("created"),
        "protodigest": lambda d: d.update(protocol_digest="sha256:" + "0" * 64),
        "string": lambda d: d["instances"][0]["curve"].__setitem__(0, "one"),
        "default": lambda d: d.update(default_protocol="gone"),
        "imagedigests": lambda d: d["instances"][0]["provenance"].update(image_digests="xyz"),
        "schematext": lambda d: d.update(schema_version="1"),
        "exponent": lambda d: d["instances"][0]["curve"].__setitem__(0, "1e308"),
    }
    _edit(path, edits[case])
    problems = Registry.open(filled.path, strict=False).validate()
    assert any(re.search(expected, p) for p in problems), problems
    with pytest.raises(RegistryError) as info:
        Registry.open(filled.path)
    assert info.value.args[0] in problems[0] or problems[0] in info.value.args[0]


def test_validate_reports_yaml_errors_duplicates_and_stray_files(filled):
    gdir = filled.path / "toy" / "generators"
    (gdir / "broken.yaml").write_text("schema_version: 1\ninstances: [1, 2\n")
    (gdir / "GAN.yaml").write_text((gdir / "gan.yaml").read_text().replace("generator: gan", "generator: GAN"))
    (gdir / "notes.txt").write_text("hello")
    problems = Registry.open(filled.path, strict=False).validate()
    text = "\n".join(problems)
    assert re.search(r"broken\.yaml: line \d+: not valid YAML", text)
    assert re.search(r"(GAN|gan)\.yaml: generator: .* duplicates generator", text)
    assert "notes.txt: not a .yaml file" in text


def test_validate_flags_one_curve_under_two_generators(filled):
    vae = filled.path / "toy" / "generators" / "vae.yaml"
    _edit(vae, lambda d: d["instances"][0].update(curve=[1.0, 2.0, 3.0]))
    problems = Registry.open(filled.path, strict=False).validate()
    assert any("vae.yaml" in p and "identical to the curve of gan/" in p for p in problems), problems


def test_files_are_read_with_safe_load_only(filled):
    path = filled.path / "toy" / "generators" / "vae.yaml"
    path.write_text("!!python/object/apply:os.system ['echo unsafe']\n")
    problems = Registry.open(filled.path, strict=False).validate()
    assert any("vae.yaml" in p and "not valid YAML" in p for p in problems)


# -- concurrency ----------------------------------------------------------------------------------
def _enrol_many(path: str, worker: int, n: int) -> None:
    reg = Registry.open(path)
    proto = reg.protocol("toy")
    for i in range(n):
        curve = [worker + i / 10, worker * 2.0 + i, float(i)]
        own = [v + 100.0 for v in curve]
        reg.enroll("toy", "shared", [Fingerprint.from_values(proto.digest, curve)], {"note": f"w{worker}"},
                   ids=[f"w{worker}-{i}"])
        reg.enroll("toy", f"own{worker}", [Fingerprint.from_values(proto.digest, own)], {}, ids=[f"i{i}"])


@pytest.mark.slow
def test_concurrent_enrolments_lose_nothing(reg):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_enrol_many, args=(str(reg.path), w, 6)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    final = Registry.open(reg.path)
    assert final.validate() == []
    shared = [r.instance for r in final.enrolled("toy") if r.generator == "shared"]
    assert sorted(shared) == sorted(f"w{w}-{i}" for w in range(4) for i in range(6))
    assert all(len(final.generators["toy"][f"own{w}"].instances) == 6 for w in range(4))
    assert not list(reg.path.rglob(".*.tmp"))


# -- diff -----------------------------------------------------------------------------------------
def test_diff_says_what_two_states_disagree_on(filled, tmp_path, fingerprints, toy_protocol):
    before = tmp_path / "before"
    filled.copy_to(before)
    proto = filled.protocol("toy")
    filled.enroll("toy", "gan", fingerprints(proto, [9, 9, 9]), {}, ids=["new"])
    filled.remove("toy", "vae")
    _edit(filled.path / "toy" / "generators" / "gan.yaml",
          lambda d: d["instances"][0].update(curve=[1.0, 2.5, 3.0]))
    filled.add_protocol(toy_protocol("extra"))
    changes = diff(Registry.open(before), Registry.open(filled.path))
    got = {(c["change"], c["what"], c["protocol"], c["generator"], c["instance"]) for c in changes}
    assert ("added", "instance", "toy", "gan", "new") in got
    assert ("removed", "generator", "toy", "vae", None) in got
    assert ("changed", "instance", "toy", "gan", "abababababab-0") in got
    assert ("added", "protocol", "extra", None, None) in got
    detail = next(c["detail"] for c in changes if c["instance"] == "abababababab-0")
    assert "largest difference 0.5" in detail
    assert diff(Registry.open(filled.path), Registry.open(filled.path)) == []


def test_diff_against_a_git_revision(filled, tmp_path, fingerprints):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    filled.copy_to(repo / "registry")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "registry")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "registry")
    reg = Registry.open(repo / "registry")
    reg.enroll("toy", "vae", fingerprints(reg.protocol("toy"), [7, 7, 7]), {}, ids=["later"])
    gan = reg.generators["toy"]["gan"].instances[0].id
    rng = np.random.default_rng(0)
    reg.add_records("toy", "gan", gan, {"none": [rng.normal(size=(4, 2)) for _ in reg.protocol("toy").layers]})
    old = open_state("git:HEAD", reg.path, tmp_path / "snapshot")
    assert [(c["change"], c["what"], c["instance"], c["detail"]) for c in diff(old, reg)] == [
        ("changed", "instance", gan, "records: kept under none"), ("added", "instance", "later", c_detail(reg))]
    (repo / "later").mkdir()  # a registry folder that no commit holds yet reads as an empty registry
    assert not git_snapshot("HEAD", repo / "later", tmp_path / "none").exists()
    with pytest.raises(UsageError, match="git revision 'nope'"):
        git_snapshot("nope", reg.path, tmp_path / "bad")


def c_detail(reg) -> str:
    (later,) = [i for i in reg.generators["toy"]["vae"].instances if i.id == "later"]
    return f"created {later.provenance.get('created')} by {later.provenance.get('by')}"


def test_diff_of_a_user_registry_in_git_shows_what_changed_in_it_not_the_bundled_registry(tmp_path, monkeypatch):
    """`registry diff git:REV` reads the user registry at REV over the same bundled registry: a change made in
    the user registry is the whole difference (before, the bundled registry's checkout was read at REV and the
    user registry's every file showed as added)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    import forensics

    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    forensics.combine_protocols("mine", ["mnist-effnet-lite0", "mnist-vit"])
    user = tmp_path / "data" / "registry"

    def git(*args):
        subprocess.run(["git", "-C", str(user), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "mine")
    assert forensics.diff_registry("git:HEAD").changes == ()
    forensics.combine_protocols("yours", ["mnist-vit", "mnist-pixel"])
    changes = forensics.diff_registry("git:HEAD").changes
    assert [(c["change"], c["what"], c["protocol"]) for c in changes] == [("added", "protocol", "yours")]


# -- the written form ----------------------------------------------------------------------------
def test_bundled_generator_files_are_in_the_one_written_form():
    # a file the tool rewrites with the same content comes out byte-identical (git shows no change)
    files = sorted(default_registry_path().glob("*/generators/*.yaml"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert dump_yaml(yaml.safe_load(text)) == text, path


def test_rewriting_the_same_content_changes_no_byte(filled):
    gan = filled.path / "toy" / "generators" / "gan.yaml"
    before = gan.read_bytes()
    ids = [i.id for i in filled.generators["toy"]["gan"].instances]
    filled.remove("toy", "gan", ids[-1])
    entry = yaml.safe_load(before)
    removed = entry["instances"][-1]
    filled.enroll("toy", "gan", [Fingerprint.from_values(filled.protocol("toy").digest, removed["curve"])],
                  removed["provenance"], ids=[removed["id"]])
    assert gan.read_bytes() == before


def test_oversized_files_are_refused_unread(filled, monkeypatch):
    import forensics.registry.schema as schema

    gan = filled.path / "toy" / "generators" / "gan.yaml"
    largest_other = max(p.stat().st_size for p in filled.path.rglob("*.yaml") if p != gan)
    gan.write_text(gan.read_text() + "#" * (largest_other + 10) + "\n")
    monkeypatch.setattr(schema, "MAX_FILE_BYTES", largest_other + 1)
    problems = Registry.open(filled.path, strict=False).validate()
    assert [p for p in problems if "more than a registry file holds" in p] == [
        f"reg/toy/generators/gan.yaml: {gan.stat().st_size:,} bytes is more than a registry file holds "
        f"({largest_other + 1:,} at most); is it the right file?"]
    assert MAX_FILE_BYTES >= 16 << 20  # a generator of thousands of curves stays well under the bound


def test_refresh_rebases_copies_on_the_changed_file_below_and_keeps_what_they_added(tmp_path, toy_protocol,
                                                                                      fingerprints, monkeypatch):
    """A user registry's copy of a lower layer's generator file (made when records or instances were added
    over it) hides that file; after a release changes it, ``refresh`` makes the copy the file below as it is
    now plus what the copy added, and every record it names is read back."""
    import numpy as np

    proto = toy_protocol()
    rng = np.random.default_rng(0)

    def recs():
        return {"jpeg60": [rng.random((10, 2)) for _ in proto.layers]}

    below_path = tmp_path / "bundled"
    below = Registry.open(below_path, create=True)
    below.add_protocol(proto, default=True)
    a, b = below.enroll("toy", "g", fingerprints(proto, [1, 2, 3], [1.5, 2.5, 3.5]), {}, ids=["a", "b"])
    (h,) = below.enroll("toy", "h", fingerprints(proto, [5, 5, 5]), {}, ids=["h"])
    user_path = tmp_path / "data" / "registry"
    user = Registry.open(user_path, below=[below_path])
    for inst in (a, b):
        user.add_records("toy", "g", inst, recs())
    user.add_records("toy", "h", h, recs())
    (c,) = user.enroll("toy", "g", fingerprints(proto, [9, 9, 9]), {}, ids=["c"])
    user.enroll("toy", "k", fingerprints(proto, [7, 7, 7]), {}, ids=["k"])  # the user's own generator
    assert not any("hides" in w for w in user.warnings)
    assert [r["action"] for r in user.refresh()] == ["current", "current"]  # nothing changed below: no write
    # (k, the user's own generator, is no copy: nothing of that name below)

    # a release: instance a re-fingerprinted, a new instance d, and h keeping jpeg60 itself (other bytes)
    gfile = below_path / "toy" / "generators" / "g.yaml"
    doc = yaml.safe_load(gfile.read_text())
    doc["instances"][0]["curve"] = [1.25, 2.0, 3.0]
    gfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    below = Registry.open(below_path)
    below.enroll("toy", "g", fingerprints(proto, [2, 3, 4]), {}, ids=["d"])
    below.add_records("toy", "h", h, recs())
    below.enroll("toy", "k", fingerprints(proto, [8, 8, 8]), {}, ids=["k8"])  # a release takes the user's name
    user.reload()
    assert sorted(w.split(":")[0].rsplit("/", 1)[-1] for w in user.warnings if "changed since" in w) == ["g.yaml",
                                                                                                       "h.yaml"]
    assert [w for w in user.warnings if "k.yaml" in w and "none of its instances" in w]
    assert [i.id for i in user.generator_entries("toy")["g"].instances] == ["a", "b", "c"]  # the copy, stale

    kfile = user_path / "toy" / "generators" / "k.yaml"
    before = kfile.read_bytes()
    # `forensics registry refresh`, with this toy registry as the bundled one under the user registry
    import json

    from typer.testing import CliRunner

    from forensics import schemas
    from forensics.cli.commands import app
    from forensics.registry import store

    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(store, "bundled_registry_path", lambda: below_path)
    result = CliRunner().invoke(app, ["registry", "refresh", "--protocol", "toy", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    schemas.validate(doc)
    rows = {r["generator"]: r for r in doc["copies"]}
    user.reload()
    assert rows["k"]["action"] == "not-a-copy" and kfile.read_bytes() == before  # not merged with the release's k
    assert rows["g"] == {"protocol": "toy", "generator": "g", "action": "updated", "from_below": ["a", "d"],
                         "kept": ["c"], "kept_records": ["b/jpeg60"], "dropped_records": ["a/jpeg60"]}
    assert rows["h"] == {"protocol": "toy", "generator": "h", "action": "removed", "from_below": ["h"], "kept": [],
                         "kept_records": [], "dropped_records": ["h/jpeg60"]}
    assert [w for w in user.warnings if "hides" in w] == [w for w in user.warnings if "k.yaml" in w]
    assert not user.validate()
    g = user.generator_entries("toy")["g"]
    assert [i.id for i in g.instances] == ["a", "b", "d", "c"] and g.instances[0].values == (1.25, 2.0, 3.0)
    assert {i.id: sorted(i.records) for i in g.instances} == {"a": [], "b": ["jpeg60"], "d": [], "c": []}
    assert not (user_path / "toy" / "generators" / "h.yaml").exists()
    user_records = user_path / "toy" / "records"
    assert not (user_records / "g" / "a" / "jpeg60.npy").exists() and (user_records / "g" / "b" / "jpeg60.npy").exists()
    assert not list((user_records / "h").rglob("*.npy"))  # the release's file is read, not one hidden by ours
    refs = [r for r in user.enrolled("toy") if (r.generator, r.instance) in {("g", "b"), ("h", "h")}]
    found, problems = user.records("toy", refs, "jpeg60")  # b's from this layer, h's from the release's file
    assert not problems and set(found) == {"b", "h"}
    assert Registry.open(below_path).generator_entries("toy")["h"].instances[0].records["jpeg60"] == \
        user.generator_entries("toy")["h"].instances[0].records["jpeg60"]
    # again: nothing left to do, nothing written
    stamp = {p: p.stat().st_mtime_ns for p in (user_path).rglob("*") if p.is_file()}
    assert [r["action"] for r in user.refresh()] == ["current", "not-a-copy"]
    result = CliRunner().invoke(app, ["registry", "refresh"])
    assert result.exit_code == 0 and "toy/g: up to date" in result.stdout
    assert "toy/k: not a copy of the bundled file" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in (user_path).rglob("*") if p.is_file()} == stamp
    with pytest.raises(UsageError, match="nothing to refresh"):
        user.refresh("toy", "h")
