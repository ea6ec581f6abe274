"""A registry maintainer's hand edits and mistakes: files named otherwise than the commands name them, and
what the commands then read, write and say."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.errors import RegistryError
from forensics.registry import Registry

ONE = "sha256:" + "ab" * 32
TWO = "sha256:" + "cd" * 32


@pytest.fixture
def reg(tmp_path, toy_protocol, fingerprints) -> Registry:
    r = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    r.add_protocol(proto, default=True)
    r.enroll("toy", "gan", fingerprints(proto, [1.0, 2.0, 3.0]), {"input_sha256": ONE, "n_images": 10})
    return r


def test_a_generator_file_named_yml_is_a_problem_not_a_second_file_on_enrolment(reg, toy_protocol, fingerprints):
    # every command writes <generator>.yaml: a .yml file read as the generator would have enrolling write a
    # second file beside it (two files of one generator: the registry no longer opens)
    gdir = reg.path / "toy" / "generators"
    (gdir / "gan.yaml").rename(gdir / "gan.yml")
    problems = Registry.open(reg.path, strict=False).validate()
    assert any("gan.yml" in p and "rename it gan.yaml" in p for p in problems), problems
    with pytest.raises(RegistryError, match="rename it gan.yaml"):
        Registry.open(reg.path)
    assert sorted(p.name for p in gdir.iterdir()) == ["gan.yml"]


@pytest.mark.parametrize("text", ["", "# gan: taken out for now\n", "\n\n"])
def test_a_generator_file_of_comments_alone_is_said_to_be_empty(reg, text):
    (reg.path / "toy" / "generators" / "gan.yaml").write_text(text)
    problems = Registry.open(reg.path, strict=False).validate()
    assert any(p.endswith("gan.yaml: empty: no YAML document (only blank lines or comments)") for p in problems), \
        problems
    assert not any("NoneType" in p for p in problems)


@pytest.mark.parametrize("name", ["x" * 129, ".hidden", "-x", "My GAN"])
def test_a_name_refused_says_every_rule_it_may_break(name):
    from forensics.errors import UsageError
    from forensics.registry.model import check_name

    with pytest.raises(UsageError) as got:
        check_name("generator name", name)
    message = str(got.value)
    assert "at most 128" in message and "the first a letter or digit" in message
    assert len(message) < 200 and (name[:20] in message)


def three_generators(tmp_path, toy_protocol, fingerprints) -> Registry:
    """A registry of the toy protocol with three generators of three instances each, apart enough to calibrate."""
    r = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    r.add_protocol(proto, default=True)
    rng = np.random.default_rng(0)
    for g, centre, digit in (("gan", 0.0, "1"), ("vae", 3.0, "2"), ("gmm", -3.0, "3")):
        curves = [tuple(centre + rng.normal(0, 0.3, 3)) for _ in range(3)]
        r.enroll("toy", g, fingerprints(proto, *curves), {"input_sha256": "sha256:" + digit * 64, "n_images": 30})
    return r


def test_calibrating_one_matcher_keeps_the_others_thresholds(tmp_path, toy_protocol, fingerprints):
    from forensics.api import calibrate
    from forensics.registry.schema import read_yaml

    r = three_generators(tmp_path, toy_protocol, fingerprints)
    cfile = r.path / "toy" / "calibration.yaml"
    calibrate(protocol="toy", registry=r.path)
    every = read_yaml(cfile, "calibration.yaml")["matchers"]
    assert {"alpha", "cosine"} <= set(every)
    calibrate(protocol="toy", registry=r.path, matchers=["alpha"])
    again = read_yaml(cfile, "calibration.yaml")["matchers"]
    assert set(again) == set(every) and {k: v for k, v in again.items() if k != "alpha"} == \
        {k: v for k, v in every.items() if k != "alpha"}
    # once the references change, a matcher not calibrated again has no thresholds of theirs to keep
    Registry.open(r.path).enroll("toy", "gan", fingerprints(r.protocol("toy"), (0.1, 0.2, 0.3)), {"input_sha256": TWO,
                                                                                      "n_images": 10})
    calibrate(protocol="toy", registry=r.path, matchers=["alpha"])
    assert set(read_yaml(cfile, "calibration.yaml")["matchers"]) == {"alpha"}


@pytest.fixture
def two(tmp_path, toy_protocol, fingerprints) -> Registry:
    """Protocols a (3 layers) and b (2 layers), their combination ab, and g enrolled under ab."""
    from forensics.protocol import Combination

    r = Registry.open(tmp_path / "two", create=True)
    a, b = toy_protocol("a", layers=3), toy_protocol("b", layers=2, k=4)
    r.add_protocol(a, default=True)
    r.add_protocol(b)
    r.add_protocol(Combination("ab", (a, b)))
    r.enroll("ab", "g", fingerprints(r.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    return r


def test_an_instance_enrolled_under_a_combination_is_not_removed_under_one_of_its_protocols(two, fingerprints):
    # removed under one part, the combination names an instance missing under it: a problem no command could
    # open the registry past, the removal it advised included
    from forensics.errors import UsageError

    r, a = two, two.protocol("a")
    r.enroll("a", "g", fingerprints(a, [7.0, 8.0, 9.0]), {"input_sha256": TWO})  # under a alone
    before = {p: p.read_bytes() for p in sorted(r.path.rglob("*.yaml"))}
    for part, instance in (("a", None), ("b", None), ("a", "abababababab-0"), ("b", "abababababab-0")):
        with pytest.raises(UsageError, match="enrolled under the combination ab.*--protocol ab"):
            r.remove(part, "g", instance)
    assert {p: p.read_bytes() for p in sorted(r.path.rglob("*.yaml"))} == before
    assert r.remove("a", "g", "cdcdcdcdcdcd-0") == ["cdcdcdcdcdcd-0"]  # enrolled under a alone: a's to remove
    assert r.remove("ab", "g") == ["abababababab-0"]
    assert Registry.open(r.path).validate() == [] and not (r.path / "a" / "generators" / "g.yaml").exists()


def test_a_family_set_under_one_protocol_may_not_contradict_the_others_of_a_combination(two):
    # two families for one generator under a combination is a problem every command but `family` stops at
    from forensics.errors import UsageError

    assert two.set_family("ab", "g", "net") == ["a", "b"]
    with pytest.raises(UsageError, match="combination ab, where a records family net.*--protocol ab"):
        two.set_family("b", "g", "other")
    assert two.set_family("b", "g", "net") == [] and two.set_family("b", "g", None) == ["b"]  # agreeing, clearing
    assert Registry.open(two.path).validate() == [] and two.generator_entries("ab")["g"].family == "net"
    assert two.set_family("ab", "g", "other") == ["a", "b"]  # every protocol at once


def test_enrolling_under_one_protocol_with_a_family_the_combination_contradicts_is_refused(two, fingerprints):
    from forensics.errors import UsageError

    two.set_family("ab", "g", "net")
    with pytest.raises(UsageError, match="combination ab, where b records family net"):
        two.enroll("a", "g", fingerprints(two.protocol("a"), [7.0, 8.0, 9.0]), {"input_sha256": TWO}, family="other")
    assert [i.id for i in two.generators["a"]["g"].instances] == ["abababababab-0"]
    two.enroll("a", "g", fingerprints(two.protocol("a"), [7.0, 8.0, 9.0]), {"input_sha256": TWO}, family="net")
    assert Registry.open(two.path).validate() == []


def test_a_generator_file_renamed_by_hand_says_both_ways_back(reg):
    gdir = reg.path / "toy" / "generators"
    (gdir / "gan.yaml").rename(gdir / "gan2.yaml")
    problems = Registry.open(reg.path, strict=False).validate()
    assert any(p.endswith("gan2.yaml: generator: 'gan' does not match the file name gan2.yaml (renamed by hand?): "
                          "rename the file gan.yaml, or the generator gan2") for p in problems), problems


@pytest.mark.parametrize("where", ["write_yaml", "write_records"])
def test_an_enrolment_that_fails_half_way_leaves_no_records_of_instances_never_enrolled(reg, fingerprints, monkeypatch,
                                                                                        where):
    # the records and image digests are written before the generator file that names them: a full disk at that
    # file, or Ctrl-C among the records, left files that named no instance (and a registry that said "nothing
    # was left half-written")
    import errno

    from forensics.registry import store

    proto = reg.protocol("toy")
    records = [{"none": [np.full((10, 2), float(k + j)) for k in range(3)]} for j in range(2)]
    digests = [np.full((10, 16), j, np.uint8) for j in range(2)]
    before = sorted(p.relative_to(reg.path) for p in reg.path.rglob("*") if p.name != ".lock")
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        if where == "write_yaml":
            raise OSError(errno.ENOSPC, "No space left on device")
        if len(calls) == 2:  # the second instance's records
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = getattr(store, where)
    monkeypatch.setattr(store, where, fail)
    said = "No space left on device; nothing was left half-written" if where == "write_yaml" else None
    with pytest.raises(RegistryError if where == "write_yaml" else KeyboardInterrupt, match=said):
        reg.enroll("toy", "vae", fingerprints(proto, [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]), {"input_sha256": TWO},
                   records=records, image_digests=digests)
    assert sorted(p.relative_to(reg.path) for p in reg.path.rglob("*") if p.name != ".lock") == before
    monkeypatch.undo()
    again = Registry.open(reg.path, strict=False)
    assert again.validate() == [] and not again.stray_records("toy")
    assert reg.enroll("toy", "vae", fingerprints(proto, [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]), {"input_sha256": TWO},
                      records=records, image_digests=digests) == ["cdcdcdcdcdcd-0", "cdcdcdcdcdcd-1"]


def test_instances_are_not_said_redrawn_at_more_images_than_their_records_hold():
    # `registry evaluate --batch-size 1000` on instances of 50 images reported "leave-one-out at batches of 1000"
    # while every "sub-batch" was the instance's 50 images
    from forensics.errors import UsageError
    from forensics.match.batchsize import references_at
    from forensics.match.types import EnrolledCurve
    from forensics.protocol import Fingerprint

    rec = np.random.default_rng(0).normal(size=(2, 50, 1))  # (layers, images, fields)

    def curves_of(r, subsets):
        return [r[:, rows, 0].mean(axis=1) for rows in subsets]

    curve = tuple(curves_of(rec, [np.arange(50)])[0])
    enrolled = EnrolledCurve("g", "i0", Fingerprint("sha256:" + "0" * 64, curve), {})
    assert references_at([enrolled], {"i0": rec}, 50, curves_of).references[0].provenance["batch_size"] == 50
    for size, mixture in ((51, None), (1000, None), (60, [30, 30])):
        stacked = rec if mixture is None else np.concatenate([rec, rec], axis=1)
        with pytest.raises(UsageError, match=f"a batch of {size} images cannot be drawn from the 50 images g/i0"):
            references_at([enrolled], {"i0": stacked}, size, curves_of, mixture=mixture)


def test_a_protocol_name_that_differs_only_in_case_is_refused(two, toy_protocol):
    # as generator names are: on a file system that ignores case the two folders are one
    from forensics.errors import UsageError
    from forensics.protocol import Combination

    before = sorted(p.name for p in two.path.iterdir())
    for protocol in (toy_protocol("A", layers=4), Combination("AB", (two.protocol("a"), two.protocol("b")))):
        with pytest.raises(UsageError, match=f"protocol '{protocol.name.lower()}' already exists \\(names are "
                                             "compared ignoring case\\)"):
            two.add_protocol(protocol)
    assert sorted(p.name for p in two.path.iterdir()) == before


def test_leave_one_out_leaves_out_a_generators_only_instance_rather_than_count_it_wrong():
    # a new user enrols 500 images at m = 500: one instance per generator, and `registry evaluate` reported leave-
    # one-out accuracy 0.000 however well the curves tell them apart
    from forensics.match import leave_one_out
    from forensics.schemas import validate

    paper = [r for r in Registry.open().enrolled("he2024-cifar10-vitb16")]
    keep = [r for r in paper if r.generator in ("BigGAN", "SNGAN")]
    sole = [next(r for r in paper if r.generator == g) for g in ("DDPM", "ContraGAN")]
    ev = leave_one_out(keep + sole, "alpha")
    whole = leave_one_out(keep, "alpha")
    assert (ev.n, ev.correct) == (whole.n, whole.correct) == (6, 6)
    assert ev.labels == ["BigGAN", "ContraGAN", "DDPM", "SNGAN"]
    assert ev.confusion[1] == ev.confusion[2] == [0, 0, 0, 0] and ev.error is None
    every = leave_one_out(sole, "alpha")
    assert every.n == 0 and every.loo_accuracy is None and "every generator has one instance" in every.error
    validate({"schema": "forensics.evaluation/1", "registry": "r", "protocols": [
        {"protocol": "p", "digest": "sha256:" + "0" * 64, "n_generators": 2, "n_instances": 2,
         "generators": ["ContraGAN", "DDPM"], "matchers": [every.to_dict()]}]})


def test_refresh_keeps_a_bundled_generators_family_cleared_in_the_user_registry(tmp_path, monkeypatch):
    # `registry family ddim --clear` copies the bundled file without its family; refresh said the copy "added
    # nothing" and removed it, the family back. A copy that says nothing of a family (made before the bundled
    # file named one) still takes the bundled file's.
    import yaml

    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    copy = tmp_path / "data" / "registry" / "mnist-vit" / "generators" / "ddim.yaml"
    assert Registry.open().set_family("mnist-vit", "ddim", None) == ["mnist-vit"]
    assert yaml.safe_load(copy.read_text())["family"] is None
    (row,) = Registry.open().refresh("mnist-vit", "ddim")
    assert row["action"] == "current" and copy.is_file()
    reg = Registry.open()
    assert reg.generator_entries("mnist-vit")["ddim"].family is None and reg.validate() == []
    assert reg.set_family("mnist-vit", "ddim", None) == []  # already so
    copy.write_text(copy.read_text().replace("family: null\n", ""))  # a copy older than the bundled family
    (row,) = Registry.open().refresh("mnist-vit", "ddim")
    assert row["action"] == "removed" and Registry.open().generator_entries("mnist-vit")["ddim"].family == "ddpm-net"


def test_refresh_keeps_a_description_given_to_a_bundled_generator(tmp_path, monkeypatch):
    # `registry enroll dcgan … --description "…"` copies the bundled file with it; refresh put the bundled one back
    monkeypatch.delenv("FORENSICS_REGISTRY", raising=False)
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    bundled = Registry.open().layer_of("mnist-vit", "dcgan") / "mnist-vit"
    copy = tmp_path / "data" / "registry" / "mnist-vit" / "generators" / "dcgan.yaml"
    copy.parent.mkdir(parents=True)
    (copy.parent.parent / "protocol.yaml").write_bytes((bundled / "protocol.yaml").read_bytes())
    copy.write_text((bundled / "generators" / "dcgan.yaml").read_text().replace("description: ''",
                                                                                "description: our DCGAN, three runs"))
    (row,) = Registry.open().refresh("mnist-vit", "dcgan")
    assert row["action"] == "current" and copy.is_file()
    assert Registry.open().generator_entries("mnist-vit")["dcgan"].description == "our DCGAN, three runs"


def test_diff_says_a_generator_file_that_does_not_read_is_not_added_or_removed(two, tmp_path):
    from forensics.registry import diff

    old = tmp_path / "old"
    two.copy_to(old)
    (two.path / "a" / "generators" / "g.yaml").write_text("instances: [\n")  # a bad hand edit
    changes = diff(Registry.open(old, strict=False), Registry.open(two.path, strict=False))
    assert [(c["change"], c["protocol"], c["generator"]) for c in changes] == [("changed", "a", "g"),
                                                                                ("changed", "ab", "g")]
    assert all("its file does not read in the new state" in c["detail"] for c in changes)
    back = diff(Registry.open(two.path, strict=False), Registry.open(old, strict=False))
    assert all("does not read in the old state" in c["detail"] for c in back) and len(back) == 2


def test_thresholds_chosen_before_another_command_enrolled_are_not_recorded(tmp_path, toy_protocol, fingerprints):
    # `registry calibrate` takes minutes; an enrolment meanwhile made what it would record stale on arrival
    from forensics.match import make_matcher

    r = three_generators(tmp_path, toy_protocol, fingerprints)
    m = make_matcher("alpha").fit(r.enrolled("toy"))
    record = {"options": m.options(), **{k: v for k, v in m.calibration.items() if k != "source"}}
    Registry.open(r.path).enroll("toy", "gan", fingerprints(r.protocol("toy"), (0.1, 0.2, 0.3)), {"input_sha256": TWO})
    with pytest.raises(RegistryError, match="changed while it was calibrated.*nothing was written"):
        r.save_calibration("toy", {"alpha": record})
    assert not (r.path / "toy" / "calibration.yaml").exists()
    fresh = Registry.open(r.path)
    m = make_matcher("alpha").fit(fresh.enrolled("toy"))
    fresh.save_calibration("toy", {"alpha": {"options": m.options(), **{k: v for k, v in m.calibration.items()
                                                                         if k != "source"}}})
    assert Registry.open(r.path).calibration("toy", "alpha")["calibrated"] and not Registry.open(r.path).warnings


def test_a_combination_whose_protocol_was_removed_by_hand_says_how_to_mend_it(two):
    import shutil

    shutil.rmtree(two.path / "b")
    problems = Registry.open(two.path, strict=False).validate()
    assert any("ab/protocol.yaml: protocol.combines[1]: no protocol 'b' in this registry" in p
               and p.endswith("put its folder back, or remove the combination's folder") for p in problems), problems


def test_a_registry_under_a_file_is_refused_in_one_line_before_the_work(tmp_path, toy_protocol, fingerprints):
    # FORENSICS_DATA_DIR naming a file: enrol and calibrate did their minutes of work, then "unexpected
    # NotADirectoryError"
    (tmp_path / "data").write_text("not a folder\n")
    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(toy_protocol(), default=True)
    under = Registry.open(tmp_path / "data" / "registry", create=True, below=[reg.path])
    for check in (lambda: under.check_enrolment("toy", "gan"),
                  lambda: under.check_file_target(under.path / "toy" / "calibration.yaml"),
                  lambda: under.enroll("toy", "gan", fingerprints(reg.protocol("toy"), [1.0, 2.0, 3.0]), {})):
        with pytest.raises(RegistryError, match=f"{tmp_path / 'data'} is a file, not a folder; move it"):
            check()
    with pytest.raises(RegistryError, match="cannot write the registry at .*: Not a directory; nothing was left"):
        with under.lock():  # a write that finds it out only then
            pass
    assert (tmp_path / "data").read_text() == "not a folder\n"
