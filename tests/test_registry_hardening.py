"""The registry against hostile files and faults (issue 26): names and links that would reach outside the
registry, git revisions read as options, multi-file writes killed half-way (real SIGKILL), the shipped
reference side tied to a digest, calibration numbers, bounded reads (devices, FIFOs, alias bombs), and
property tests: any bytes, any YAML document, in any registry file, load or fail with RegistryError."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics.errors import ForensicsError, RegistryError, UsageError
from forensics.protocol import Combination, Fingerprint
from forensics.registry import Registry
from forensics.registry import reference as shipped
from forensics.registry.schema import dump_yaml, read_yaml

ONE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
FORENSICS = str(Path(sys.executable).parent / "forensics")


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([FORENSICS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def failed_validation(proc: subprocess.CompletedProcess) -> None:
    """``registry validate`` found problems: exit 1, each listed, no traceback."""
    assert proc.returncode == 1 and proc.stdout.strip(), (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout and "unexpected" not in proc.stderr


def one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def reg(tmp_path, toy_protocol, fingerprints) -> Registry:
    r = Registry.open(tmp_path / "reg", create=True)
    proto = toy_protocol()
    r.add_protocol(proto, default=True)
    r.enroll("toy", "gan", fingerprints(proto, [1.0, 2.0, 3.0]), {"input_sha256": ONE, "n_images": 10})
    return r


@pytest.fixture
def two(tmp_path, toy_protocol) -> Registry:
    """Protocols a (3 layers) and b (2 layers) and their combination ab, nothing enrolled."""
    r = Registry.open(tmp_path / "two", create=True)
    a, b = toy_protocol("a", layers=3), toy_protocol("b", layers=2, k=4)
    r.add_protocol(a, default=True)
    r.add_protocol(b)
    r.add_protocol(Combination("ab", (a, b)))
    return r


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


# -- 1. names that leave the registry ------------------------------------------------------------
def test_remove_refuses_a_generator_name_that_is_a_path(reg, tmp_path):
    victim = tmp_path / "victim.yaml"
    victim.write_text("precious\n")
    before = snapshot(reg.path)
    proc = cli("registry", "remove", "../../victim", "--registry", str(reg.path), "--protocol", "toy")
    assert "generator name" in one_line_error(proc, 2)
    proc = cli("registry", "remove", "gan", "--instance", "../x", "--registry", str(reg.path), "--protocol", "toy")
    assert "instance id" in one_line_error(proc, 2)
    for name in (str(victim.with_suffix("")), "../generators/gan", "a/b", ".hidden", ""):
        with pytest.raises(UsageError, match="generator name"):
            reg.remove("toy", name)
    assert victim.read_text() == "precious\n" and snapshot(reg.path) == before


def test_enrolment_names_are_checked_before_anything_is_computed(reg):
    for name in ("../x", "/etc/passwd", "a/b"):
        with pytest.raises(UsageError, match="generator name"):
            reg.check_enrolment("toy", name)
    with pytest.raises(UsageError, match="no protocol"):
        reg.check_enrolment("nope", "gan")
    reg.check_enrolment("toy", "new-one")  # a good name passes


@pytest.mark.slow
def test_enroll_refuses_a_bad_name_before_it_reads_the_images(reg, tmp_path):
    # the images do not exist: only a check made before reading them can answer about the name
    proc = cli("registry", "enroll", "../../x", str(tmp_path / "no-such-images.npz"), "--registry", str(reg.path),
               "--protocol", "toy")
    assert "generator name" in one_line_error(proc, 2)


@pytest.mark.slow
def test_the_registry_file_size_limit_can_be_lowered_and_raised(reg):
    small = cli("registry", "validate", "--registry", str(reg.path), env={"FORENSICS_MAX_REGISTRY_BYTES": "64"})
    failed_validation(small)
    assert "more than a registry file holds" in small.stdout
    assert cli("registry", "validate", "--registry", str(reg.path),
               env={"FORENSICS_MAX_REGISTRY_BYTES": str(1 << 30)}).returncode == 0
    bad = cli("registry", "validate", "--registry", str(reg.path), env={"FORENSICS_MAX_REGISTRY_BYTES": "lots"})
    assert "FORENSICS_MAX_REGISTRY_BYTES" in one_line_error(bad, 2)


# -- 2. git revisions are not options --------------------------------------------------------------
@pytest.mark.slow
def test_diff_refuses_a_git_revision_that_is_an_option(tmp_path, reg):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    shutil.copytree(reg.path, repo / "registry")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for rev in (f"--output={victim}", "-o", "--remote=/nonexistent"):
        proc = cli("registry", "diff", f"git:{rev}", "--registry", str(repo / "registry"))
        assert "git revision" in one_line_error(proc, 2)
    assert victim.read_text() == "precious\n"
    proc = cli("registry", "diff", "git:no-such-branch", "--registry", str(repo / "registry"))
    assert "no such commit" in one_line_error(proc, 2)
    proc = cli("registry", "diff", "git:HEAD", "--registry", str(repo / "registry"))
    assert proc.returncode == 0 and "no differences" in proc.stdout


# -- 4. links that leave the registry ---------------------------------------------------------------
def test_a_generators_folder_linked_to_another_registry_is_refused(tmp_path, toy_protocol, fingerprints, reg):
    other = Registry.open(tmp_path / "other", create=True)
    other.add_protocol(toy_protocol(), default=True)
    other.enroll("toy", "keep", fingerprints(toy_protocol(), [4.0, 5.0, 6.0]), {"input_sha256": OTHER})
    before = snapshot(other.path)
    gdir = reg.path / "toy" / "generators"
    shutil.rmtree(gdir)
    gdir.symlink_to(other.path / "toy" / "generators")
    problems = Registry.open(reg.path, strict=False).validate()
    assert any("reg/toy/generators: a symbolic link" in p for p in problems), problems
    failed_validation(cli("registry", "validate", "--registry", str(reg.path)))
    r = Registry.open(reg.path, strict=False)
    with pytest.raises(RegistryError, match="symbolic link"):
        r.remove("toy", "keep")
    with pytest.raises(RegistryError, match="symbolic link"):
        r.enroll("toy", "new", fingerprints(r.protocol("toy"), [7.0, 8.0, 9.0]), {"input_sha256": OTHER})
    assert snapshot(other.path) == before


def test_generator_files_that_are_links_devices_or_pipes_are_refused_unread(reg, tmp_path):
    gdir = reg.path / "toy" / "generators"
    outside = tmp_path / "elsewhere.yaml"
    shutil.copy(gdir / "gan.yaml", outside)
    (gdir / "linked.yaml").symlink_to(outside)
    (gdir / "zero.yaml").symlink_to("/dev/zero")
    os.mkfifo(gdir / "pipe.yaml")
    t0 = time.monotonic()
    problems = Registry.open(reg.path, strict=False).validate()
    assert time.monotonic() - t0 < 5  # neither /dev/zero read to the end nor the FIFO waited on
    assert any(p.startswith("reg/toy/generators/linked.yaml: a symbolic link") for p in problems), problems
    assert any(p.startswith("reg/toy/generators/zero.yaml: a symbolic link") for p in problems), problems
    assert any(p.startswith("reg/toy/generators/pipe.yaml: not a regular file") for p in problems), problems
    # inside the registry but not a regular file: bounded by type, and by size whatever stat says
    with pytest.raises(RegistryError, match="not a regular file"):
        read_yaml(Path("/dev/zero"), "zero.yaml")
    failed_validation(cli("registry", "validate", "--registry", str(reg.path), timeout=20))


def test_a_lock_file_linked_elsewhere_is_not_truncated(reg, tmp_path, fingerprints):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (reg.path / ".lock").unlink(missing_ok=True)
    (reg.path / ".lock").symlink_to(victim)
    with pytest.raises(RegistryError, match="lock file is a link"):
        reg.enroll("toy", "new", fingerprints(reg.protocol("toy"), [7.0, 8.0, 9.0]), {"input_sha256": OTHER})
    assert victim.read_text() == "precious\n"


def test_a_protocol_folder_or_registry_file_linked_out_is_refused(reg, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(reg.path / "toy", elsewhere)
    (reg.path / "copy").symlink_to(elsewhere)
    problems = Registry.open(reg.path, strict=False).validate()
    assert any(p.startswith("reg/copy: a symbolic link") for p in problems), problems


# -- 5. a combination enrolment killed half-way ------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    from forensics.protocol import Fingerprint
    from forensics.registry import Registry
    reg = Registry.open(sys.argv[1])
    fp = Fingerprint.from_values(reg.protocol("ab").digest, [1.0, 2.0, 3.0, 4.0, 5.0])
    reg.enroll("ab", "g", [fp], {"input_sha256": "sha256:" + "ab" * 32, "n_images": 10})
    print("done", flush=True)
""")


def enrol_and_kill(path: Path, pause: str, marker) -> None:
    """Start a real enrolment under the combination, SIGKILL it while it sleeps at ``pause``."""
    run_and_kill(CHILD, path, pause, marker)


def run_and_kill(child: str, path: Path, pause: str, marker) -> None:
    """Run the registry write ``child`` (a script given the registry's ``path``) and SIGKILL it once ``marker()``
    says it sleeps at ``pause``."""
    proc = subprocess.Popen([sys.executable, "-c", child, str(path)], env={**os.environ, pause: "30"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not marker() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker(), proc.stderr.read().decode() if proc.poll() is not None else "never reached the pause"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def temps(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


def test_killed_before_commit_changes_nothing_and_its_temporaries_are_cleaned(two, fingerprints):
    before = snapshot(two.path)
    enrol_and_kill(two.path, "REGISTRY_TEST_PAUSE_PARTS", lambda: len(temps(two.path)) >= 1)
    left = temps(two.path)
    assert left and all(p.name.startswith(".g.yaml.") for p in left)
    assert {k: v for k, v in snapshot(two.path).items() if not Path(k).name.startswith(".")} == \
        {k: v for k, v in before.items() if not Path(k).name.startswith(".")}
    r = Registry.open(two.path)
    assert r.validate() == [] and r.generators["a"] == {} and r.generators["b"] == {}
    # the next write under the lock cleans the temporary files; the enrolment then goes through whole
    ids = r.enroll("ab", "g", fingerprints(r.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    assert temps(two.path) == []
    r = Registry.open(two.path)
    assert [i.id for i in r.generators["ab"]["g"].instances] == ids


def test_killed_between_renames_is_completed_when_the_registry_is_next_opened(two, fingerprints):
    # the write was committed (its journal written) when it was killed: any command that opens the registry
    # completes it, under the lock, rather than refusing the whole registry until some later write
    journal = two.path / ".journal.tmp"
    enrol_and_kill(two.path, "REGISTRY_TEST_PAUSE_RENAMES", journal.exists)
    assert (two.path / "a" / "generators" / "g.yaml").is_file()  # one part renamed, the other not
    assert not (two.path / "b" / "generators" / "g.yaml").exists()
    r = Registry.open(two.path)  # strict: no problem left to refuse it for
    assert r.validate() == [] and not journal.exists() and temps(two.path) == []
    assert r.generators["ab"]["g"].instances[0].values == (1.0, 2.0, 3.0, 4.0, 5.0)
    # the retry of the same enrolment is now the same images enrolled twice
    with pytest.raises(UsageError, match="enrolled twice"):
        r.enroll("ab", "g", fingerprints(r.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})


def test_a_reader_waits_for_a_write_in_its_last_moments_instead_of_calling_it_interrupted(two, fingerprints):
    journal = two.path / ".journal.tmp"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(two.path)],
                            env={**os.environ, "REGISTRY_TEST_PAUSE_RENAMES": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not journal.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert journal.exists(), proc.stderr.read().decode() if proc.poll() is not None else "never paused"
        r = Registry.open(two.path)  # waits for the writer's lock, then reads what it wrote
        assert r.validate() == [] and "g" in r.generators["ab"]
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0 and b"done" in proc.stdout.read()


def test_an_interrupted_write_that_cannot_be_completed_here_says_what_to_do(two, fingerprints, monkeypatch):
    enrol_and_kill(two.path, "REGISTRY_TEST_PAUSE_RENAMES", (two.path / ".journal.tmp").exists)

    def unwritable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Registry, "_file_lock", unwritable)  # as on a read-only file system
    problems = Registry.open(two.path, strict=False).validate()
    assert any("cannot be completed here" in p and "make" in p and "writable" in p for p in problems), problems
    monkeypatch.undo()
    assert Registry.open(two.path).validate() == []  # writable again: any command completes it


SHIP_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from forensics.registry import Registry
    Registry.open(sys.argv[1]).ship_reference("a", "side.npz", lambda p: Path(p).write_bytes(b"a fitted side"))
    print("done", flush=True)
""")


@pytest.mark.parametrize("pause", ["REGISTRY_TEST_PAUSE_PARTS", "REGISTRY_TEST_PAUSE_RENAMES"])
def test_a_shipped_reference_side_killed_half_way_leaves_no_file_without_its_digest(two, pause):
    # `protocol create --ship-reference` wrote the file, then its digest: killed between the two, every command
    # refused the registry ("no digest recorded") and the advice to create it again met the same refusal
    from forensics.registry.reference import file_sha256, read_manifest

    folder = two.path / "a" / "reference"

    def paused() -> bool:  # the parts are written before the journal: under RENAMES, wait for both
        parts = bool(list(folder.glob(".SHA256.*.tmp")))
        return parts and (two.path / ".journal.tmp").exists() if pause.endswith("RENAMES") else parts

    run_and_kill(SHIP_CHILD, two.path, pause, paused)
    r = Registry.open(two.path)  # strict: every command reads it
    assert r.validate() == []
    if pause.endswith("RENAMES"):  # committed: completed on opening, the file with its digest
        assert read_manifest(folder, "m") == {"side.npz": file_sha256(folder / "side.npz")}
    else:  # not committed: nothing shipped; the next write removes the temporaries
        assert not (folder / "side.npz").exists() and read_manifest(folder, "m") is None
        r.set_default("a")
        assert not list(folder.glob(".*.tmp"))
    r.ship_reference("a", "side.npz", lambda p: Path(p).write_bytes(b"a fitted side"))  # the retry goes through
    assert Registry.open(two.path).validate() == []


REMOVE_CHILD = textwrap.dedent("""
    import sys
    from forensics.registry import Registry
    Registry.open(sys.argv[1]).remove("ab", "g")
""")


def test_a_removal_under_a_combination_killed_half_way_is_completed_on_the_next_opening(two, fingerprints):
    two.enroll("ab", "g", fingerprints(two.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    journal = two.path / ".journal.tmp"
    proc = subprocess.Popen([sys.executable, "-c", REMOVE_CHILD, str(two.path)],
                            env={**os.environ, "REGISTRY_TEST_PAUSE_RENAMES": "30"})
    try:
        deadline = time.monotonic() + 20
        first = two.path / "a" / "generators" / "g.yaml"  # the journal's first pair: done before the pause
        while not (journal.exists() and not first.exists()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)  # (the journal alone exists a moment before its first rename, on a busy machine)
        assert journal.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (two.path / "a" / "generators" / "g.yaml").exists()
    assert (two.path / "b" / "generators" / "g.yaml").exists()
    r = Registry.open(two.path)  # opening it completes the removal
    assert r.validate() == [] and r.generators["b"] == {} and not journal.exists()


def test_a_combination_instance_missing_from_a_part_is_a_problem_and_a_retry_completes_it(two, fingerprints):
    # the state an older version left when killed between the parts: the instance under a only
    r = two
    r.enroll("ab", "g", fingerprints(r.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    (two.path / "b" / "generators" / "g.yaml").unlink()
    problems = Registry.open(two.path, strict=False).validate()
    assert any("g/abababababab-0 was enrolled under the combination but is missing under b" in p
               for p in problems), problems
    r = Registry.open(two.path, strict=False)
    assert r.enroll("ab", "g", fingerprints(r.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]),
                    {"input_sha256": ONE}) == ["abababababab-0"]
    r = Registry.open(two.path)
    assert r.validate() == [] and len(r.generators["ab"]["g"].instances) == 1
    # an instance enrolled under one protocol alone stays a warning: the combination leaves it out
    r.enroll("a", "h", fingerprints(r.protocol("a"), [7.0, 8.0, 9.0]), {"input_sha256": OTHER})
    r = Registry.open(two.path)
    assert r.validate() == [] and any("of h are not enrolled under b" in w for w in r.warnings)


# -- 7. the shipped reference side is tied to the registry -----------------------------------------
def test_the_bundled_reference_sides_have_their_digests_recorded():
    bundled = Registry.open()
    for name, proto in bundled.protocols.items():
        folder = bundled.reference_dir(name)
        if folder.is_dir():
            digests = shipped.read_manifest(folder, "SHA256")
            assert digests and set(digests) == {p.name for p in folder.glob("*.npz")}
            for file, digest in digests.items():
                assert shipped.file_sha256(folder / file) == digest


def test_a_changed_shipped_reference_side_is_refused_by_validate_and_the_engine(reg, tmp_path):
    from forensics.engine import Engine, reference_key
    from forensics.io.hashing import short

    proto = reg.protocol("toy")
    rdir = reg.reference_dir("toy")
    rdir.mkdir()
    path = rdir / f"{short(reference_key(proto), 24)}.npz"
    np.savez(path, x=np.arange(4))  # a valid file, but not a reference side this version reads
    shipped.record(path)
    assert Registry.open(reg.path).validate() == []
    with pytest.raises(ForensicsError, match="cannot be read by this version"):
        Engine(proto, shipped_dir=rdir, use_cache=False).reference_side()
    np.savez(path, x=np.arange(4)[::-1])  # the same file, its content changed
    problems = Registry.open(reg.path, strict=False).validate()
    assert problems == [f"reg/toy/reference/{path.name}: the shipped reference side of toy does not match the "
                        "digest the registry records (reg/toy/reference/SHA256)"]
    with pytest.raises(RegistryError, match="the shipped reference side of toy .* does not match the digest the "
                                            "registry records"):
        Engine(proto, shipped_dir=rdir, use_cache=False).reference_side()
    (rdir / "SHA256").unlink()
    assert any("no digest recorded" in p for p in Registry.open(reg.path, strict=False).validate())
    with pytest.raises(RegistryError, match="no digest recorded"):
        Engine(proto, shipped_dir=rdir, use_cache=False).reference_side()
    (rdir / "SHA256").write_text("not a manifest\n")
    assert any("SHA256: line 1" in p for p in Registry.open(reg.path, strict=False).validate())


# -- 8. calibration values ----------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("margin", -0.5), ("margin", float("nan")), ("score", float("inf")),
                                       ("distance_ratio", 0), ("distance_ratio", "big"), ("score", True),
                                       ("n_references", -1), ("balanced_accuracy", 2.0)])
def test_calibration_numbers_are_checked_on_load(reg, key, value):
    cfile = reg.path / "toy" / "calibration.yaml"
    cfile.write_text(dump_yaml({"schema_version": 1, "matchers": {"alpha": {"score": 0.5, "margin": 0.1,
                                                                             "distance_ratio": 2.0, key: value}}}))
    problems = Registry.open(reg.path, strict=False).validate()
    assert len(problems) == 1 and problems[0].startswith(f"reg/toy/calibration.yaml: matchers.alpha.{key}: "), problems
    with pytest.raises(RegistryError, match=f"calibration.yaml: matchers.alpha.{key}"):
        Registry.open(reg.path)
    assert Registry.open(reg.path, strict=False).calibration("toy", "alpha") is None


@pytest.mark.parametrize("point,key,value,problem", [
    ("named", "score", float("nan"), "matchers.alpha.operating_points.named.score: expected a finite number"),
    ("cautious", "distance_ratio", -1.0, "matchers.alpha.operating_points.cautious.distance_ratio: expected a finite"),
    ("cautious", "lookalikes", [1], "matchers.alpha.operating_points.cautious.lookalikes: expected a mapping"),
    ("bold", "score", 0.5, "matchers.alpha.operating_points.bold: not an operating point"),
])
def test_operating_point_thresholds_are_checked_on_load(reg, point, key, value, problem):
    # an operating point's thresholds decide verdicts as the top-level ones do: checked alike
    cfile = reg.path / "toy" / "calibration.yaml"
    good = {"score": 0.5, "margin": 0.1, "distance_ratio": 2.0}
    cfile.write_text(dump_yaml({"schema_version": 1, "matchers": {"alpha": {
        **good, "calibrated": True, "operating_points": {"balanced": good, point: {**good, key: value}}}}}))
    problems = Registry.open(reg.path, strict=False).validate()
    assert len(problems) == 1 and problems[0].startswith(f"reg/toy/calibration.yaml: {problem}"), problems
    assert Registry.open(reg.path, strict=False).calibration("toy", "alpha") is None


def test_an_object_written_twice_is_written_out_not_aliased(reg):
    shared = {"pndm": [1, 3]}
    text = dump_yaml({"schema_version": 1, "matchers": {"alpha": {"lookalikes": shared, "operating_points": {
        "balanced": {"lookalikes": shared}}}}})
    assert "&" not in text and "*" not in text
    (reg.path / "toy" / "calibration.yaml").write_text(text)
    cal = Registry.open(reg.path).calibration("toy", "alpha")
    assert cal["lookalikes"] == cal["operating_points"]["balanced"]["lookalikes"] == shared


# -- 10. bounded reads -------------------------------------------------------------------------------
@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_loader(request, monkeypatch):
    """Each registry read test runs with libyaml's parser (where PyYAML has it) and with PyYAML's own."""
    if request.param == "libyaml" and not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml here")
    monkeypatch.setattr(yaml, "__with_libyaml__", request.param == "libyaml")
    return request.param


def test_the_bundled_registry_reads_the_same_with_either_parser(monkeypatch):
    from forensics.registry.schema import parse_yaml

    files = sorted((Path(__file__).resolve().parent.parent / "registry").rglob("*.yaml"))
    assert len(files) > 10
    docs = {}
    for flag in (True, False):
        monkeypatch.setattr(yaml, "__with_libyaml__", flag)
        docs[flag] = [parse_yaml(f.read_bytes(), f.name) for f in files]
    assert docs[True] == docs[False]


def test_a_yaml_alias_bomb_is_refused(reg, yaml_loader):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(bomb) < 800
    (reg.path / "toy" / "generators" / "bomb.yaml").write_text(bomb)
    t0 = time.monotonic()
    problems = Registry.open(reg.path, strict=False).validate()
    assert time.monotonic() - t0 < 5
    assert any(p.startswith("reg/toy/generators/bomb.yaml: line 2: not valid YAML (aliases") for p in problems), problems


@pytest.mark.parametrize("content", [b"[" * 100_000, b"\xff\xfe garbage", b"created: 2024-13-45\n",
                                     b"{? [1]: 2}", b"1: 2\n'a': 3\n", b"\x00", b"!!python/object:os.system x"])
def test_malformed_files_are_registry_errors(tmp_path, content, yaml_loader):
    path = tmp_path / "x.yaml"
    path.write_bytes(content)
    try:
        read_yaml(path, "x.yaml")
    except RegistryError as exc:
        assert str(exc).startswith("x.yaml")


# -- 13. validate: NaN/inf curves, bad protocol records, an empty registry.yaml ------------------------
def test_validate_reports_nan_and_inf_curve_values_per_file(two, fingerprints):
    two.enroll("ab", "g", fingerprints(two.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    for part, bad in (("a", ".nan"), ("b", "-.inf")):
        gfile = two.path / part / "generators" / "g.yaml"
        gfile.write_text(gfile.read_text().replace("curve: [", f"curve: [{bad}, ", 1).replace(", 2.0", "", 1)
                         .replace(", 5.0", "", 1))
    proc = cli("registry", "validate", "--registry", str(two.path))
    failed_validation(proc)
    assert "two/a/generators/g.yaml: instances[0] (abababababab-0).curve[0]: nan is not allowed" in proc.stdout
    assert "two/b/generators/g.yaml: instances[0] (abababababab-0).curve[0]: -inf is not allowed" in proc.stdout


def test_validate_reports_an_image_size_that_is_not_height_and_width(two, fingerprints):
    two.enroll("ab", "g", fingerprints(two.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]),
               {"input_sha256": ONE, "image_size": [28, 28]})
    gfile = two.path / "a" / "generators" / "g.yaml"
    assert "image_size: [28, 28]" in gfile.read_text()
    gfile.write_text(gfile.read_text().replace("image_size: [28, 28]", "image_size: [28, -1]"))
    proc = cli("registry", "validate", "--registry", str(two.path))
    failed_validation(proc)
    assert "two/a/generators/g.yaml: instances[0] (abababababab-0).provenance.image_size: expected [height, width] " \
           "in pixels, got [28, -1]" in proc.stdout
    gfile.write_text(gfile.read_text().replace("image_size: [28, -1]", "image_size: [28, 28]\n    image_colour: 'no'"))
    proc = cli("registry", "validate", "--registry", str(two.path))
    failed_validation(proc)
    assert "instances[0] (abababababab-0).provenance.image_colour: expected true or false (whether any image is in " \
           "colour), got 'no'" in proc.stdout
    gfile.write_text(gfile.read_text().replace("image_colour: 'no'", "image_colour: false"))
    assert "image_colour" not in cli("registry", "validate", "--registry", str(two.path)).stdout
    gfile.write_text(gfile.read_text().replace("image_size: [28, 28]", "image_size: [28, -1]"))
    # sizes that disagree (or instances that record none) leave queries of another size as they are: said
    gfile.write_text(gfile.read_text().replace("image_size: [28, -1]", "image_size: [32, 32]"))
    proc = cli("registry", "validate", "--registry", str(two.path), "--json")
    doc = json.loads(proc.stdout)
    assert doc["ok"] and not any(w.startswith("a: the instances record") for w in doc["warnings"])
    two.enroll("ab", "h", fingerprints(two.protocol("ab"), [2.5, 2.0, 6.0, 7.0, 8.0]),
               {"input_sha256": OTHER, "image_size": [28, 28]})
    doc = json.loads(cli("registry", "validate", "--registry", str(two.path), "--json").stdout)
    assert "a: the instances record 2 image size(s): queries of another size are matched as they are, not brought " \
           "back to the size the generators write" in doc["warnings"]
    # and instances that disagree on colour (or record none) leave a query's colour unchecked: said, with the fix
    (line,) = [w for w in doc["warnings"] if "colour" in w]
    assert line.startswith("a: the instances record 1 grey, 1 no colour (h/") and line.endswith(
        "`forensics registry records NAME IMAGES` records it): a query in colour, or grey, is not told it is unlike "
        "the generators' images")


def test_validate_reports_bad_protocol_records_and_an_empty_registry_file(reg):
    pfile = reg.path / "toy" / "protocol.yaml"
    good = yaml.safe_load(pfile.read_text())
    cases = {
        "preprocessing: missing key 'mean'": lambda p: p["encoder"]["preprocessing"].pop("mean"),
        "preprocessing.std: expected three finite numbers > 0": lambda p: p["encoder"]["preprocessing"].update(std=[0, 1, 1]),
        "preprocessing.interpolation": lambda p: p["encoder"]["preprocessing"].update(interpolation="lanczos9"),
        "options.weights: collides": lambda p: p["encoder"].update(options={"weights": "x"}),
        "options.device: collides": lambda p: p["encoder"].update(options={"device": "cuda"}),
        "train.options: expected a mapping": lambda p: p["train"].update(options=[1, 2]),
        "statistic.params.k: nan is not allowed": lambda p: p["statistic"]["params"].update(k=float("nan")),
    }
    for expected, edit in cases.items():
        data = {**good, "protocol": yaml.safe_load(dump_yaml(good["protocol"]))}
        edit(data["protocol"])
        pfile.write_text(dump_yaml(data))
        problems = Registry.open(reg.path, strict=False).validate()
        assert any(expected in p and p.startswith("reg/toy/protocol.yaml: protocol.") for p in problems), \
            (expected, problems)
    pfile.write_text(dump_yaml(good))
    assert Registry.open(reg.path).validate() == []
    (reg.path / "registry.yaml").write_text("")
    problems = Registry.open(reg.path, strict=False).validate()
    assert problems == ["reg/registry.yaml: empty (expected schema_version and default_protocol)"]
    failed_validation(cli("registry", "validate", "--registry", str(reg.path)))


# -- property tests: anything in a registry file loads or is a RegistryError ---------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
documents = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), kids, max_size=5)),
    max_leaves=20)


def _mutations(base: dict) -> st.SearchStrategy:
    """``base`` with one value somewhere in it replaced by an arbitrary document."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    walk(base, ())

    def replace(path, value):
        import copy

        doc = copy.deepcopy(base)
        if not path:
            return value
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return doc

    return st.builds(replace, st.sampled_from(paths[1:]), documents)


def _load_any(root: Path) -> None:
    try:
        r = Registry.open(root, strict=False)
        r.validate()
        for name in r.protocols:
            r.enrolled(name)
    except RegistryError:
        pass
    try:
        Registry.open(root)
    except RegistryError:
        pass


def _toy():
    from forensics.protocol import DataRef, EncoderRef, Protocol, StatisticRef

    return Protocol(name="toy", train=DataRef("digits", "train", 100, ONE), test=DataRef("digits", "test", 50, ONE),
                    encoder=EncoderRef("tiny", ONE, "random", ("l0", "l1", "l2"), "mean",
                                       {"size": 8, "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3,
                                        "std": [0.5] * 3}),
                    statistic=StatisticRef("ct", {"k": 3, "distance": "cosine", "projection": None, "tau": None,
                                                  "seed": 0}), batch_size=10)


@pytest.fixture(scope="module")
def base_registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prop") / "reg"
    r = Registry.open(root, create=True)
    proto = _toy()
    r.add_protocol(proto, default=True)
    r.enroll("toy", "gan", [Fingerprint.from_values(proto.digest, [1.0, None, 3.0])], {"input_sha256": ONE,
                                                                                        "n_images": 10})
    r.save_calibration("toy", {"alpha": {"score": 0.5, "margin": 0.1, "distance_ratio": 2.0}})
    return root


FILES = ["registry.yaml", "toy/protocol.yaml", "toy/generators/gan.yaml", "toy/calibration.yaml"]
PROPERTY = settings(max_examples=int(os.environ.get("REGISTRY_PROPERTY_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _with(base: Path, tmp: Path, rel: str, content: bytes) -> Path:
    root = tmp / "r"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base, root)
    (root / rel).write_bytes(content)
    return root


@PROPERTY
@given(rel=st.sampled_from(FILES), content=st.binary(max_size=300))
def test_any_bytes_in_a_registry_file_load_or_fail_with_registry_error(base_registry, tmp_path, rel, content):
    _load_any(_with(base_registry, tmp_path, rel, content))


@PROPERTY
@given(rel=st.sampled_from(FILES), doc=documents)
def test_any_yaml_document_in_a_registry_file_loads_or_fails_with_registry_error(base_registry, tmp_path, rel, doc):
    _load_any(_with(base_registry, tmp_path, rel, dump_yaml(doc).encode()))


@PROPERTY
@given(data=st.data(), rel=st.sampled_from(FILES))
def test_a_valid_registry_file_with_any_value_changed_loads_or_fails_with_registry_error(base_registry, tmp_path,
                                                                                         data, rel):
    base = yaml.safe_load((base_registry / rel).read_text())
    doc = data.draw(_mutations(base))
    _load_any(_with(base_registry, tmp_path, rel, dump_yaml(doc).encode()))


def test_property_tests_see_real_errors(base_registry, tmp_path):
    # the base registry is sound, and a broken curve value is reported, not raised as something else
    assert Registry.open(base_registry).validate() == []
    root = _with(base_registry, tmp_path, "toy/generators/gan.yaml",
                 (base_registry / "toy/generators/gan.yaml").read_bytes().replace(b"1.0", b".nan"))
    assert any("nan is not allowed" in p for p in Registry.open(root, strict=False).validate())


def test_a_folder_where_the_registry_keeps_a_file_is_reported_and_nothing_is_written(reg, toy_protocol):
    """registry.yaml, a protocol's calibration.yaml or its records' processing.yaml replaced by a folder: `validate`
    names it, and a write that would replace it is refused before any of its files is written (exit 1: the
    registry is damaged, not the command)."""
    rng = np.random.default_rng(0)
    proto = reg.protocol("toy")
    (iid,) = [r.instance for r in reg.enrolled("toy")]
    gfile = reg.path / "toy" / "generators" / "gan.yaml"
    before = gfile.read_bytes()
    processing = reg.path / "toy" / "records" / "processing.yaml"
    processing.mkdir(parents=True)
    assert any("processing.yaml" in p and "not a regular file" in p for p in Registry.open(reg.path,
                                                                                           strict=False).problems)
    with pytest.raises(RegistryError, match="processing.yaml is a folder where the registry keeps a file"):
        reg.add_records("toy", "gan", iid, {"jpeg90": [rng.normal(size=(4, 2)) for _ in proto.layers]})
    assert gfile.read_bytes() == before and not (reg.path / "toy" / "records" / "gan").exists()
    assert not list(reg.path.rglob("*.tmp")) and not (reg.path / ".journal.yaml").exists()
    processing.rmdir()

    calibration = reg.path / "toy" / "calibration.yaml"
    calibration.mkdir()
    assert any("calibration.yaml" in p and "not a regular file" in p for p in Registry.open(reg.path,
                                                                                            strict=False).problems)
    with pytest.raises(RegistryError, match="calibration.yaml is a folder"):
        reg.save_calibration("toy", {})
    calibration.rmdir()

    top = reg.path / "registry.yaml"
    top.unlink()
    top.mkdir()
    assert any("registry.yaml" in p and "not a regular file" in p for p in Registry.open(reg.path,
                                                                                         strict=False).problems)
    with pytest.raises(RegistryError, match="registry.yaml is a folder"):
        reg.add_protocol(toy_protocol("other"), default=True)
    assert not (reg.path / "other").exists()  # the protocol was not written without its default


def test_a_key_written_twice_in_a_registry_file_is_a_problem_not_a_silent_choice(reg):
    gfile = reg.path / "toy" / "generators" / "gan.yaml"
    text = gfile.read_text()
    gfile.write_text(text.replace("  curve:", "  curve: [9.0, 9.0, 9.0]\n  curve:", 1))
    problems = Registry.open(reg.path, strict=False).problems
    assert any("gan.yaml" in p and "the key 'curve' appears twice in one mapping" in p for p in problems), problems
    failed_validation(cli("registry", "validate", "--registry", str(reg.path)))


def test_calibrating_every_matcher_on_one_generator_calibrates_what_can_be_and_says_what_cannot(reg):
    from forensics import api
    from forensics.schemas import validate

    result = api.calibrate(registry=reg)
    assert set(result.matchers) == {"alpha", "cosine"} and "needs at least 2 generators" in result.skipped["svm"]
    validate(result.to_dict())
    assert (reg.path / "toy" / "calibration.yaml").is_file()
    with pytest.raises(UsageError, match="needs at least two generators; the references hold 1: enrol another"):
        api.calibrate(registry=reg, matchers=["svm"])  # asked by name: refused


def test_the_next_write_removes_killed_writes_temporaries_in_records_and_reference(two):
    # records and shipped reference sides are written under the lock too: a temporary file there is a killed
    # write's, and it was left for ever (2.4 MB in one sweep)
    left = [two.path / "a" / "records" / "g" / "0123" / ".none.npy.k3j2.tmp", two.path / "a" / "reference" /
            ".side.npz.9f8e.tmp", two.path / "b" / "records" / "g" / ".digests.npy.x1.tmp"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    kept = two.path / "a" / "records" / "g" / "0123" / "none.npy"
    kept.write_bytes(b"not a temporary")
    two.set_default("a")
    assert not any(p.exists() for p in left) and kept.exists()


def test_a_registry_that_cannot_be_written_is_one_line_before_the_work(two, fingerprints, monkeypatch):
    # a read-only file system or folder: `unexpected PermissionError … .lock` after all the work, before
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode == os.W_OK else real(p, mode, *a, **k))
    with pytest.raises(RegistryError, match=r"cannot write the registry at .*read-only here; make it writable"):
        two.check_file_target(two.path / "a" / "calibration.yaml")
    with pytest.raises(RegistryError, match="cannot write the registry"):
        two.enroll("ab", "g", fingerprints(two.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    monkeypatch.undo()
    assert Registry.open(two.path).generators["ab"] == {}  # nothing written


def test_a_full_disk_is_one_line_and_leaves_no_temporary_behind(two, fingerprints, monkeypatch):
    import builtins
    import errno

    real_open = builtins.open

    def full(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "x" in mode and str(file).endswith(".tmp"):
            def no_space(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = no_space
        return f

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(RegistryError, match="No space left on device.*free some space"):
        two.enroll("ab", "g", fingerprints(two.protocol("ab"), [1.0, 2.0, 3.0, 4.0, 5.0]), {"input_sha256": ONE})
    monkeypatch.undo()
    assert temps(two.path) == [] and Registry.open(two.path).generators["ab"] == {}


def test_a_write_that_waits_for_the_lock_says_so_and_then_gives_up_in_one_line(two, fingerprints, monkeypatch,
                                                                                   caplog):
    from filelock import FileLock

    import forensics.registry.store as store

    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 1.0)
    held = FileLock(str(two.path / ".lock"))
    held.acquire()  # another writer (filelock's locks are per open file: this one excludes the registry's own)
    try:
        with caplog.at_level("WARNING", logger="forensics"):
            with pytest.raises(RegistryError, match="locked by another process"):
                two.set_default("b")
    finally:
        held.release()
    assert any("being written by another process; waiting for it" in r.getMessage() for r in caplog.records)
    two.set_default("b")  # released: it goes through
