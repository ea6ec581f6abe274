"""``forensics registry …`` as a registry maintainer reads it: what each command says it compared, kept or wrote."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from clirun import invoked, runner

from forensics.cli.registry import app
from forensics.registry import Registry, bundled_registry_path
from forensics.registry.diff import in_git


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


run = partial(invoked, app)


@pytest.mark.skipif(not in_git(bundled_registry_path()), reason="the bundled registry of an installed package")
def test_diff_at_a_git_revision_says_it_compared_the_bundled_registry_when_yours_is_not_in_git(
        tmp_path, monkeypatch, toy_protocol):
    monkeypatch.setenv("FORENSICS_DATA_DIR", str(tmp_path / "data"))
    Registry.open(tmp_path / "data" / "registry", create=True).add_protocol(toy_protocol())  # yours: not in git
    result = run("diff", "git:HEAD")
    said = " ".join(result.stderr.split())
    assert f"{tmp_path / 'data' / 'registry'} is not in git: compared the bundled registry" in said
    assert str(bundled_registry_path()) in result.stdout  # what was compared, also where nothing differs
    assert "not in git" not in run("diff", tmp_path / "data" / "registry").stderr  # a folder compares yours


@pytest.mark.parametrize("option", [("--iters", "0"), ("--threads", "0"), ("--seed", "-1")])
def test_zoo_train_refuses_a_count_it_cannot_use_before_training(tmp_path, option):
    # --iters 0 read as "not given" trained the full schedule (minutes); --threads 0 failed after the checks
    # as an unexpected error; --seed -1 wrote a set named run-1
    from forensics.cli.zoo import app as zoo

    result = runner.invoke(zoo, ["train", "vae", *option, "--samples", str(tmp_path / "samples"),
                                 "--ckpt-dir", str(tmp_path / "ckpt")])
    assert result.exit_code == 2, (result.output, result.exception)
    assert option[0] in result.output and not (tmp_path / "samples").exists() and not (tmp_path / "ckpt").exists()


def test_evaluate_says_which_generators_leave_one_out_could_not_test(tmp_path):
    import shutil

    from forensics.registry.papercurves import PROTOCOL_NAME

    target = tmp_path / "reg"
    shutil.copytree(Registry.open().layer_of(PROTOCOL_NAME) / PROTOCOL_NAME, target / PROTOCOL_NAME)
    Registry.open(target, create=True).set_default(PROTOCOL_NAME)
    for instance in ("ddpm_2", "ddpm_3"):
        run("remove", "DDPM", "--instance", instance, "--registry", target)
    text = " ".join(run("evaluate", "--registry", target, "-m", "alpha").stdout.split())
    assert "leave-one-out leaves out DDPM: each has one instance, none left to name it (enrol another run)" in text
    assert "16 instances of 6 generators" in text


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_enrolment_interrupted_says_whether_anything_was_enrolled(tmp_path, monkeypatch, toy_protocol, when):
    import forensics.api
    from forensics.protocol import Fingerprint

    reg = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    reg.add_protocol(proto, default=True)

    def enroll(images, name, *, protocol=None, registry=None, **kwargs):  # Ctrl-C before or after the write
        if when == "after":
            fingerprints = [Fingerprint.from_values(proto.digest, (1.0, 2.0, 3.0))]
            Registry.open(registry).enroll("toy", name, fingerprints, {"input_sha256": "sha256:" + "ab" * 32})
        raise KeyboardInterrupt

    monkeypatch.setattr(forensics.api, "enroll", enroll)
    (tmp_path / "x.npz").write_bytes(b"")
    result = run("enroll", "gan", tmp_path / "x.npz", "--registry", reg.path, code=130)
    said = " ".join(result.stderr.split())
    if when == "before":
        assert f"error: interrupted: nothing was enrolled under toy in {reg.path}" in said
    else:
        assert (f"error: interrupted after the enrolment was written: 1 instance(s) of gan under toy (abababababab-0) "
                f"in {reg.path}") in said


def test_a_calibration_interrupted_says_nothing_was_recorded(tmp_path, monkeypatch, toy_protocol):
    import forensics.api

    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(toy_protocol(), default=True)

    def calibrate(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(forensics.api, "calibrate", calibrate)
    said = " ".join(run("calibrate", "--registry", reg.path, code=130).stderr.split())
    assert f"error: interrupted: no thresholds were recorded; {reg.path / 'toy' / 'calibration.yaml'} is as it was" \
        in said


def test_enrolling_without_a_condition_the_others_keep_is_warned_of(tmp_path, toy_protocol):
    # a query is matched under a condition only when every instance keeps it: `--conditions none` on one new
    # instance silently stopped JPEG matching for the whole protocol
    from pathlib import Path

    import numpy as np

    from forensics.cli.registry import _conditions_lacking
    from forensics.protocol import Fingerprint
    from forensics.results import EnrolmentResult

    reg = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    reg.add_protocol(proto, default=True)

    def enrol(name, curve, digest, conditions):
        records = [{c: [np.full((10, 2), k + curve[0]) for k in range(3)] for c in conditions}]
        ids = reg.enroll("toy", name, [Fingerprint.from_values(proto.digest, curve)], {"input_sha256": digest},
                         records=records)
        return EnrolmentResult(protocol="toy", generator=name, instances=tuple(ids), n_images=10,
                               input_sha256=digest, registry=reg.path, batch_size=10, left_out=0, n_undefined=0,
                               skipped={}, conditions=tuple(conditions), warnings=())

    first = enrol("gan", (1.0, 2.0, 3.0), "sha256:" + "ab" * 32, ["none", "jpeg90", "resize2"])
    assert _conditions_lacking("gan", Path("a.npz"), first, reg.path) is None  # nothing else enrolled
    second = enrol("vae", (4.0, 5.0, 6.0), "sha256:" + "cd" * 32, ["none"])
    said = _conditions_lacking("vae", Path("my images/vae.npz"), second, reg.path)
    assert said.startswith("the other instances of toy keep per-image records under 2 condition(s) these do not "
                           "(jpeg90, resize2)")
    assert "`forensics registry records vae 'my images/vae.npz' --protocol toy --conditions jpeg90,resize2`" in said
    third = enrol("gmm", (7.0, 8.0, 9.0), "sha256:" + "ef" * 32, ["none", "jpeg90", "resize2"])
    assert _conditions_lacking("gmm", Path("c.npz"), third, reg.path) is None  # vae keeps none of them already


def test_a_default_naming_a_protocol_removed_by_hand_is_mended_by_registry_default(tmp_path, toy_protocol):
    # the problem stopped every command, the one that mends it too
    import shutil

    reg = Registry.open(tmp_path / "reg", create=True)
    reg.add_protocol(toy_protocol(), default=True)
    reg.add_protocol(toy_protocol("gone", layers=2), default=True)
    shutil.rmtree(reg.path / "gone")
    said = " ".join(run("list", "--registry", reg.path, code=1).stderr.split())
    assert "default_protocol: 'gone' is not a protocol of this registry (known: toy); make one of them the default " \
           "with `forensics registry default NAME`" in said
    assert run("default", "toy", "--registry", reg.path).stdout.strip() == "toy"
    assert Registry.open(reg.path).default_protocol == "toy"
    (reg.path / "toy" / "protocol.yaml").write_text("schema_version: 1\n")  # another problem still stops it
    run("default", "toy", "--registry", reg.path, code=1)


def test_removing_an_instance_says_which_recorded_thresholds_it_made_stale(tmp_path, toy_protocol):
    from forensics.api import calibrate
    from forensics.protocol import Fingerprint

    reg = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    reg.add_protocol(proto, default=True)
    rng = np.random.default_rng(0)
    for g, centre, digit in (("gan", 0.0, "1"), ("vae", 3.0, "2"), ("gmm", -3.0, "3")):
        fps = [Fingerprint.from_values(proto.digest, tuple(centre + rng.normal(0, 0.3, 3))) for _ in range(3)]
        reg.enroll("toy", g, fps, {"input_sha256": "sha256:" + digit * 64})
    assert "recalibrate" not in run("remove", "gan", "--instance", "111111111111-2", "--registry", reg.path).stderr
    calibrate(protocol="toy", registry=reg.path, matchers=["alpha"])  # none recorded before: nothing to redo
    said = " ".join(run("remove", "gan", "--instance", "111111111111-1", "--registry", reg.path).stderr.split())
    assert "note: the recorded open-set thresholds of toy were made on the instances before: recalibrate with " \
           "`forensics registry calibrate -p toy`" in said
