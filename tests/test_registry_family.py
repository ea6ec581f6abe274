"""A generator's family: the model it shares with other enrolled generators (one diffusion network under
several samplers), recorded per generator and protocol, carried to the matchers by ``enrolled()``.

Registry tests run on hand-made curves of toy protocols (nothing is embedded); the command-line tests run
the real commands in-process; the shipped registry is only read."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
import yaml
from clirun import invoked

from forensics.errors import RegistryError, UsageError
from forensics.protocol import Combination, Fingerprint
from forensics.registry import Registry, bundled_registry_path, diff
from forensics.registry.model import GeneratorEntry

SHA = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


@pytest.fixture
def reg(tmp_path, toy_protocol, fingerprints) -> Registry:
    """A registry with the protocol toy (default) and two generators, gan and vae, one curve each."""
    r = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    r.add_protocol(proto, default=True)
    r.enroll("toy", "gan", fingerprints(proto, [1.0, 2.0, 3.0]), {"input_sha256": SHA, "n_images": 10},
             description="a GAN")
    r.enroll("toy", "vae", fingerprints(proto, [3.0, 2.0, 1.0]), {"input_sha256": OTHER, "n_images": 10})
    return r


@pytest.fixture
def two(tmp_path, toy_protocol, fingerprints) -> Registry:
    """Protocols a and b, generators g and h under both from the same inputs, and the combination ab."""
    r = Registry.open(tmp_path / "two", create=True)
    a, b = toy_protocol("a", layers=3), toy_protocol("b", layers=2, k=4)
    r.add_protocol(a, default=True)
    r.add_protocol(b)
    for g, sha, off in (("g", SHA, 0.0), ("h", OTHER, 5.0)):
        prov = {"input_sha256": sha, "n_images": 10}
        r.enroll("a", g, fingerprints(a, [off + 1, off + 2, off + 3]), prov, ids=["run0"])
        r.enroll("b", g, fingerprints(b, [off + 4, off + 5]), prov, ids=["run0"])
    r.add_protocol(Combination("ab", (a, b), "a then b"))
    return r


def gfile(reg: Registry, protocol: str, generator: str):
    return reg.path / protocol / "generators" / f"{generator}.yaml"


def families(reg: Registry, protocol: str) -> dict[str, str | None]:
    return {r.generator: r.family for r in reg.enrolled(protocol)}


def run(*args, code: int = 0):
    from forensics.cli.registry import app

    return invoked(app, *args, code=code)


# -- the record ----------------------------------------------------------------------------------
def test_the_field_is_last_and_written_only_when_set():
    entry = GeneratorEntry("gan", "a GAN", SHA, [])  # positional constructions keep working
    assert entry.family is None and "family" not in entry.to_dict()
    entry.family = "net"
    assert list(entry.to_dict()) == ["schema_version", "generator", "description", "family", "protocol_digest",
                                     "instances"]


def test_enrol_with_a_family_round_trips(reg, fingerprints):
    proto = reg.protocol("toy")
    before_vae = gfile(reg, "toy", "vae").read_bytes()
    reg.enroll("toy", "gan", fingerprints(proto, [1.5, 2.5, 3.5]), {"input_sha256": OTHER}, ids=["b"],
               family="gan-net")
    data = yaml.safe_load(gfile(reg, "toy", "gan").read_text())
    assert data["family"] == "gan-net"
    assert families(Registry.open(reg.path), "toy") == {"gan": "gan-net", "vae": None}
    assert gfile(reg, "toy", "vae").read_bytes() == before_vae  # a generator without one: no key, no change
    # enrolling again without a family keeps it; with another, replaces it
    reg.enroll("toy", "gan", fingerprints(proto, [1.6, 2.6, 3.6]), {}, ids=["c"])
    assert reg.generators["toy"]["gan"].family == "gan-net"
    reg.enroll("toy", "gan", fingerprints(proto, [1.7, 2.7, 3.7]), {}, ids=["d"], family="other.net+2")
    assert families(Registry.open(reg.path), "toy")["gan"] == "other.net+2"


def test_set_and_clear_change_only_the_family_line(reg):
    path = gfile(reg, "toy", "gan")
    before = path.read_text()
    assert reg.set_family("toy", "gan", "gan-net") == ["toy"]
    after = path.read_text()
    assert after.replace("family: gan-net\n", "") == before and after.count("\n") == before.count("\n") + 1
    assert families(reg, "toy")["gan"] == "gan-net"
    assert reg.set_family("toy", "gan", "gan-net") == []  # already so: nothing written
    assert reg.set_family("toy", "gan", None) == ["toy"]
    assert path.read_text() == before  # cleared: the file as it was, byte for byte
    assert not list(reg.path.rglob(".*.tmp"))
    with pytest.raises(UsageError, match="no generator 'nope'"):
        reg.set_family("toy", "nope", "x")


def test_a_write_that_fails_half_way_changes_no_file(two, monkeypatch):
    import forensics.registry.schema as schema

    paths = [gfile(two, p, "g") for p in ("a", "b")]
    before = [p.read_bytes() for p in paths]
    real, calls = schema.dump_yaml, []

    def fail_second(data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(data)

    monkeypatch.setattr(schema, "dump_yaml", fail_second)
    with pytest.raises(OSError, match="disk full"):
        two.set_family("ab", "g", "net")
    monkeypatch.setattr(schema, "dump_yaml", real)
    assert [p.read_bytes() for p in paths] == before
    assert not list(two.path.rglob(".*.tmp")) and not (two.path / ".journal.tmp").exists()
    assert Registry.open(two.path).validate() == []


HOSTILE = [
    ("a list", "[a, b]"),
    ("a mapping", "{a: 1}"),
    ("a number", "12"),
    ("a boolean", "true"),
    ("empty text", "''"),
    ("a newline", '"ddpm-net\\n"'),
    ("a space", "'ddpm net'"),
    ("a leading mark", "-x"),
    ("a path", "../../etc"),
    ("10 kB", "x" * 10_000),
]


@pytest.mark.parametrize("what, text", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_bad_family_in_a_file_is_one_line_naming_the_file(reg, what, text):
    path = gfile(reg, "toy", "gan")
    path.write_text(path.read_text().replace("description: a GAN\n", f"description: a GAN\nfamily: {text}\n"))
    problems = Registry.open(reg.path, strict=False).problems
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith("reg/toy/generators/gan.yaml: family: ") and "\n" not in problem
    assert len(problem) < 400 and "registry family gan --clear" in problem
    with pytest.raises(RegistryError, match="gan.yaml: family: "):
        Registry.open(reg.path)
    result = run("validate", "--registry", reg.path, code=1)
    assert "gan.yaml: family:" in result.output and "Traceback" not in result.output
    # the command it names opens the registry and repairs it
    doc = json.loads(run("family", "gan", "--clear", "--registry", reg.path, "--json").stdout)
    assert doc["family"] is None and doc["changed"] == ["toy"] and doc["problems"] == []
    assert Registry.open(reg.path).validate() == []
    assert "family" not in yaml.safe_load(path.read_text())


@pytest.mark.parametrize("value", ["", "a b", "x\n", "-x", "x" * 129, "a/b", 3, ["a"]])
def test_bad_family_values_are_refused_before_anything_is_written(reg, fingerprints, value):
    path = gfile(reg, "toy", "gan")
    before = path.read_bytes()
    with pytest.raises(UsageError, match="^family: expected the name") as info:
        reg.set_family("toy", "gan", value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(UsageError, match="^family: "):
        reg.enroll("toy", "gan", fingerprints(reg.protocol("toy"), [9.0, 9.0, 9.0]), {}, family=value)
    assert path.read_bytes() == before


def test_other_problems_still_stop_the_family_command(reg):
    path = gfile(reg, "toy", "vae")
    path.write_text(path.read_text().replace("protocol_digest:", "surprise: 1\nprotocol_digest:"))
    result = run("family", "gan", "net", "--registry", reg.path, code=1)
    assert "vae.yaml: surprise: unknown key" in result.output
    assert "family" not in gfile(reg, "toy", "gan").read_text()


# -- combinations ---------------------------------------------------------------------------------
def test_a_combination_carries_its_parts_family(two):
    assert families(two, "ab") == {"g": None, "h": None}
    two.set_family("b", "g", "net")  # one part has one: the combination takes it
    assert families(two, "ab") == {"g": "net", "h": None} and two.validate() == []
    assert two.set_family("ab", "h", "other") == ["a", "b"]  # set under a combination: in every part
    assert families(two, "a")["h"] == families(two, "b")["h"] == families(two, "ab")["h"] == "other"
    # the parts disagree (set under one part, the command refuses it: a file edited by hand): a problem validate
    # reports, naming both, and the family command resolves it
    with pytest.raises(UsageError, match="combination ab, where b records family net"):
        two.set_family("a", "g", "else")
    path = gfile(two, "a", "g")
    path.write_text(path.read_text().replace("protocol_digest:", "family: else\nprotocol_digest:"))
    reopened = Registry.open(two.path, strict=False)
    (problem,) = reopened.problems
    assert "g: its protocols record different families (a: else, b: net)" in problem
    assert "registry family g NAME --protocol ab" in problem and reopened.family_problems == [problem]
    doc = json.loads(run("family", "g", "net", "--protocol", "ab", "--registry", two.path, "--json").stdout)
    assert doc["changed"] == ["a"] and doc["family"] == "net" and doc["problems"] == []
    assert Registry.open(two.path).validate() == []


def test_enrolling_under_a_combination_sets_every_part(two, fingerprints):
    combo = two.protocol("ab")
    two.enroll("ab", "k", fingerprints(combo, [7.0, 8.0, 9.0, 1.0, 2.0]), {"input_sha256": "sha256:" + "ef" * 32},
               family="k-net")
    assert [families(two, p)["k"] for p in ("a", "b", "ab")] == ["k-net"] * 3


# -- diff -----------------------------------------------------------------------------------------
def test_diff_shows_a_family_change_as_a_change_of_the_generator(reg, tmp_path):
    before = tmp_path / "before"
    reg.copy_to(before)
    reg.set_family("toy", "gan", "gan-net")
    changes = diff(Registry.open(before), Registry.open(reg.path))
    assert changes == [{"change": "changed", "what": "generator", "protocol": "toy", "generator": "gan",
                        "instance": None, "detail": "family None → 'gan-net'"}]
    assert diff(Registry.open(reg.path), Registry.open(reg.path)) == []


# -- the command line -----------------------------------------------------------------------------
def test_the_family_command_shows_sets_and_clears(reg):
    from forensics import schemas

    pytest.importorskip("jsonschema")
    assert "Example" in run("family", "--help").output
    assert run("family", "gan", "--registry", reg.path).stdout.strip() == "gan under toy: family none"
    out = run("family", "gan", "gan-net", "--registry", reg.path).stdout
    assert "family none → gan-net" in out
    shown = json.loads(run("family", "gan", "--registry", reg.path, "--json").stdout)
    schemas.validate(shown)
    assert (shown["family"], shown["previous"], shown["changed"]) == ("gan-net", "gan-net", [])
    assert "already" in run("family", "gan", "gan-net", "--registry", reg.path).stdout
    # registry show prints it, and its JSON carries it (null where none)
    assert "family gan-net" in run("show", "--registry", reg.path).stdout
    doc = json.loads(run("show", "--registry", reg.path, "--json").stdout)
    schemas.validate(doc)
    assert doc["generators"]["gan"]["family"] == "gan-net" and doc["generators"]["vae"]["family"] is None
    # registry list too: only the generators that have one
    listing = json.loads(run("list", "--registry", reg.path, "--json").stdout)
    schemas.validate(listing)
    assert listing["protocols"][0]["families"] == {"gan": "gan-net"}
    assert "familygan-net" in "".join(c for c in run("list", "--registry", reg.path).stdout if c.isalnum() or c == "-")
    cleared = json.loads(run("family", "gan", "--clear", "--registry", reg.path, "--json").stdout)
    schemas.validate(cleared)
    assert (cleared["family"], cleared["previous"], cleared["changed"]) == (None, "gan-net", ["toy"])
    # wrong usage: one line, exit 2
    for args in (("gan", "x", "--clear"), ("gan", "bad name"), ("nope",), ("gan", "--protocol", "nope")):
        result = run("family", *args, "--registry", reg.path, code=2)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_enrol_takes_family_on_the_command_line(reg, tmp_path, monkeypatch):
    import forensics.engine

    assert "--family" in run("enroll", "--help").output
    images = tmp_path / "imgs.npy"
    np.save(images, np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8))
    # a bad family fails at once, before the images are read or embedded
    monkeypatch.setattr(forensics.engine, "fingerprints_and_records", None)
    result = run("enroll", "gan", images, "--family", "bad name", "--registry", reg.path, code=2)
    assert "family:" in result.output and "Traceback" not in result.output
    monkeypatch.setattr(forensics.engine, "fingerprints_and_records",
                        lambda data, protocol, **_: ([Fingerprint.from_values(protocol.digest, [5.0, 6.0, 7.0])],
                                                     None))
    run("enroll", "gan", images, "--family", "gan-net", "--registry", reg.path)
    assert families(Registry.open(reg.path), "toy")["gan"] == "gan-net"
    assert [i.values for i in Registry.open(reg.path).generators["toy"]["gan"].instances][-1] == (5.0, 6.0, 7.0)


def test_the_zoo_enrols_the_diffusion_samplers_as_one_family(tmp_path, toy_protocol, monkeypatch):
    import forensics.api
    import forensics.engine

    r = Registry.open(tmp_path / "reg", create=True)
    r.add_protocol(toy_protocol(), default=True)
    samples = tmp_path / "samples"
    entries = []
    for k, g in enumerate(("ddim", "gmm")):
        (samples / g).mkdir(parents=True)
        np.savez(samples / g / "run0.npz", images=np.full((10, 8, 8), k, dtype=np.uint8))
        entries.append({"generator": g, "instance": "run0", "file": f"{g}/run0.npz", "sha256": "0" * 64,
                        "seed": 0})
    (samples / "MANIFEST.json").write_text(json.dumps({"instances": entries}))

    class FakeEngine:
        keeps_records = False

        def __init__(self, protocol, **_):
            self.protocol = protocol

        def curves(self, images, **_):
            v = float(images.mean())
            return [types.SimpleNamespace(fingerprint=Fingerprint.from_values(self.protocol.digest,
                                                                              [v, v + 1, v + 2]))]

    monkeypatch.setattr(forensics.engine, "engine_class", lambda *a: FakeEngine)
    monkeypatch.setattr(forensics.api, "_prepare", lambda *a: None)
    forensics.api.zoo_enroll(registry=r.path, samples=samples)
    assert families(Registry.open(r.path), "toy") == {"ddim": "ddpm-net", "gmm": None}


# -- what ships -----------------------------------------------------------------------------------
def test_the_shipped_registry_records_the_diffusion_families():
    reg = Registry.open(bundled_registry_path())
    assert reg.validate() == []
    for protocol in ("mnist-effnet-lite0", "mnist-vit", "mnist-pixel", "mnist-effnet-vit", "mnist-effnet-vit-pixel"):
        got = families(reg, protocol)
        assert {g for g, f in got.items() if f is not None} == {"ddpm", "ddim", "pndm"}, protocol
        assert {got[g] for g in ("ddpm", "ddim", "pndm")} == {"ddpm-net"}
    got = families(reg, "he2024-cifar10-vitb16")
    assert got == {"BigGAN": None, "ContraGAN": None, "SNGAN": None, "DDPM": "ddpm-cifar10-32",
                   "DDIM": "ddpm-cifar10-32", "PNDM": "ddpm-cifar10-32"}


def test_importing_the_papers_curves_records_their_family(tmp_path):
    from forensics.registry.papercurves import PROTOCOL_NAME, export_paper, import_paper

    bundled = Registry.open(bundled_registry_path())
    release = export_paper(bundled, tmp_path / "release")
    import_paper(release, tmp_path / "imported")
    imported = Registry.open(tmp_path / "imported")
    assert families(imported, PROTOCOL_NAME) == families(bundled, PROTOCOL_NAME)
    for g in ("DDPM", "BigGAN"):  # the files written by the import are the shipped ones, family included
        src = bundled_registry_path() / PROTOCOL_NAME / "generators" / f"{g}.yaml"
        got = tmp_path / "imported" / PROTOCOL_NAME / "generators" / f"{g}.yaml"
        assert yaml.safe_load(got.read_text()).get("family") == yaml.safe_load(src.read_text()).get("family")
    shutil.rmtree(tmp_path / "release")


def test_a_bundled_generators_family_is_set_in_a_copy_in_the_user_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    shipped = bundled_registry_path() / "mnist-vit" / "generators" / "ddim.yaml"
    before = shipped.read_bytes()
    assert run("family", "ddim").stdout.strip().endswith("family ddpm-net")  # the default combination's
    run("family", "ddim", "ddpm-net", "--protocol", "mnist-vit")  # already so: nothing is copied
    assert not (tmp_path / "data" / "registry" / "mnist-vit").exists()
    # another family under one protocol of the default combination would contradict its other protocols'
    run("family", "ddim", "other", "--protocol", "mnist-vit", code=2)
    assert not (tmp_path / "data" / "registry" / "mnist-vit").exists()
    run("family", "ddim", "--clear", "--protocol", "mnist-vit")  # as enrol and records do: the file is copied up
    copy = tmp_path / "data" / "registry" / "mnist-vit" / "generators" / "ddim.yaml"
    assert shipped.read_bytes() == before and yaml.safe_load(copy.read_text())["family"] is None
    assert Registry.open().validate() == []
