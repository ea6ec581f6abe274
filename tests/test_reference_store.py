"""The reference side on disk: an .npz laid out to be memory-mapped, checked once, kept open; and the
command line's CPU thread policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from forensics import cpu
from forensics import engine as engines
from forensics.errors import RegistryError, UsageError
from forensics.io.mapped import ALIGN, SUMS, Damaged, Unmappable, open_mapped_npz, read_all, save_mapped_npz, word_sum
from forensics.registry import reference as shipped
from forensics.stats.ct import FittedCT

ROOT = Path(__file__).resolve().parent.parent


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"__format__": np.array(1), "__layers__": np.array(["bn1", "blocks.0"]),
            "0/train": rng.standard_normal((37, 5)), "0/cells": np.arange(3), "0/distance": np.array("cosine"),
            "0/empty": np.empty((0, 4), np.float32), "0/fortran": np.asfortranarray(rng.standard_normal((3, 4))),
            "0/strided": np.arange(20, dtype=np.int32)[::3], "0/odd": np.arange(7, dtype=np.uint8)}


def test_a_mapped_npz_is_an_ordinary_npz_whose_arrays_are_views_of_the_file(tmp_path):
    arrays = sample_arrays()
    path = save_mapped_npz(tmp_path / "r.npz", arrays)
    mapped = open_mapped_npz(path)
    assert list(mapped) == list(arrays)  # in order, the sums member kept apart
    for name, value in arrays.items():
        got = mapped[name]
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value)
        assert not got.flags.writeable or got.size == 0
        if got.size:
            assert got.ctypes.data % ALIGN == 0 and not got.flags.owndata  # in place, aligned
    with np.load(path, allow_pickle=False) as plain:  # any numpy reads it
        assert set(plain.files) == set(arrays) | {SUMS}
        assert all(np.array_equal(plain[k], v) for k, v in arrays.items())


def test_any_changed_byte_or_a_cut_is_detected(tmp_path):
    arrays = sample_arrays()
    path = save_mapped_npz(tmp_path / "r.npz", arrays)
    raw = path.read_bytes()
    where = raw.find(arrays["0/train"].tobytes())
    for offset in (where, where + 5 * 8 * 36 + 7, raw.find(b"'shape'") + 10):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises((Damaged, Unmappable)):
            open_mapped_npz(path)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(Damaged):
        open_mapped_npz(path)
    path.write_bytes(raw)
    assert np.array_equal(open_mapped_npz(path)["0/train"], arrays["0/train"])


def test_word_sum_changes_with_any_byte():
    data = bytearray(np.random.default_rng(1).integers(0, 256, 1003, dtype=np.uint8).tobytes())
    base = word_sum(data)
    for i in (0, 7, 8, 500, 1002):
        changed = bytearray(data)
        changed[i] ^= 0x01
        assert word_sum(changed) != base


def test_an_npz_of_the_older_layout_is_read_the_old_way(tmp_path):
    arrays = sample_arrays()
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(Unmappable):
        open_mapped_npz(tmp_path / "old.npz")
    got = read_all(tmp_path / "old.npz")
    assert all(np.array_equal(got[k], v) for k, v in arrays.items())


# -- the engine's reference side --------------------------------------------------------------------
def fitted_layers(n: int = 2) -> list[FittedCT]:
    rng = np.random.default_rng(2)
    return [FittedCT.fit(rng.standard_normal((300, 8)), rng.standard_normal((120, 8)), k=3, projection=4, seed=0)
            for _ in range(n)]


STAT = SimpleNamespace(from_arrays=FittedCT.from_arrays)
LAYERS = ("a", "b")


def scores(refs, q) -> list[float]:
    return [r.score(q, tau=0.0).value for r in refs]


def test_a_cached_reference_side_loads_in_place_and_scores_as_fitted(tmp_path):
    refs = fitted_layers()
    q = np.random.default_rng(3).standard_normal((60, 8))
    path = engines.save_reference(tmp_path / "ref.npz", refs, LAYERS)
    engines.forget_opened()
    loaded = engines.load_reference(path, LAYERS, STAT)
    assert scores(loaded, q) == scores(refs, q)  # bit for bit
    assert not loaded[0].training_points.base.flags.owndata  # a view of the mapped file, not a copy
    assert engines.load_reference(path, ("a",), STAT) is None  # other layers: not this file's
    engines.forget_opened()


def test_a_damaged_cache_file_is_removed_and_an_old_one_rewritten(tmp_path, caplog):
    refs = fitted_layers()
    path = engines.save_reference(tmp_path / "ref.npz", refs, LAYERS)
    raw = bytearray(path.read_bytes())
    raw[raw.find(refs[1].training_points.tobytes()) + 3] ^= 0x01
    path.write_bytes(bytes(raw))
    engines.forget_opened()
    with caplog.at_level("WARNING", logger="forensics"):
        assert engines.load_reference(path, LAYERS, STAT) is None and not path.exists()
    # said, not silent: the fit is minutes for a large T, and a disk that damages files should be noticed
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"the cached reference side {path} was damaged (")
    assert said[0].endswith("removed, and computed again")
    (tmp_path / "cut.npz").write_bytes(bytes(raw[:100]))  # cut short: neither layout reads it
    caplog.clear()
    with caplog.at_level("WARNING", logger="forensics"):
        assert engines.load_reference(tmp_path / "cut.npz", LAYERS, STAT) is None
    assert not (tmp_path / "cut.npz").exists() and "was damaged" in caplog.text
    from forensics.io.atomic import save_npz_atomic

    old = save_npz_atomic(tmp_path / "old.npz", engines._pack(refs, LAYERS))  # the previous layout
    q = np.random.default_rng(4).standard_normal((60, 8))
    assert scores(engines.load_reference(old, LAYERS, STAT), q) == scores(refs, q)
    assert isinstance(open_mapped_npz(old)["0/train"], np.ndarray)  # migrated to the mapped layout
    engines.forget_opened()


def test_a_shipped_file_is_checked_against_its_recorded_digest_every_time_it_changes(tmp_path):
    refs = fitted_layers()
    path = engines.save_reference(tmp_path / "ref.npz", refs, LAYERS)
    engines.forget_opened()
    with pytest.raises(RegistryError, match="no digest recorded"):
        engines.load_reference(path, LAYERS, STAT, protocol="p")
    shipped.record(path)
    assert engines.load_reference(path, LAYERS, STAT, protocol="p") is not None
    raw = bytearray(path.read_bytes())
    raw[raw.find(refs[0].training_points.tobytes()) + 1] ^= 0x01
    with open(path, "r+b") as f:  # changed in place, at once: the same size, maybe the same times
        f.write(bytes(raw))
    with pytest.raises(RegistryError, match="does not match the digest"):
        engines.load_reference(path, LAYERS, STAT, protocol="p")
    assert path.exists()  # a shipped file is never removed
    engines.forget_opened()


def test_an_unchanged_file_is_opened_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "_RACY_S", -1.0)  # the file is seconds old: its times would move on a change
    path = engines.save_reference(tmp_path / "ref.npz", fitted_layers(), LAYERS)
    shipped.record(path)
    engines.forget_opened()
    first = engines.load_reference(path, LAYERS, STAT, protocol="p")
    assert engines.load_reference(path, LAYERS, STAT, protocol="p") is first
    os.utime(path)  # a new modification time: opened and checked again
    assert engines.load_reference(path, LAYERS, STAT, protocol="p") is not first
    engines.forget_opened()


def test_migrating_a_shipped_file_keeps_its_arrays_and_records_the_new_digest(tmp_path):
    from forensics.io.atomic import save_npz_atomic

    refs = fitted_layers()
    path = save_npz_atomic(tmp_path / "ref.npz", engines._pack(refs, LAYERS))  # as earlier versions shipped it
    shipped.record(path)
    before = read_all(path)
    engines.forget_opened()
    with pytest.warns(UserWarning, match="migrate-reference"):  # read the old way, with a hint
        assert engines.load_reference(path, LAYERS, STAT, protocol="p") is not None
    assert shipped.migrate(tmp_path, "p") == [(path, True)]
    after = open_mapped_npz(path)
    assert all(after[k].dtype == v.dtype and after[k].tobytes() == v.tobytes() for k, v in before.items())
    shipped.check(path, "p")  # the new digest is the recorded one
    assert shipped.migrate(tmp_path, "p") == [(path, False)]  # already mapped: left as it is
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(RegistryError, match="does not match"):
        shipped.migrate(tmp_path, "p")
    engines.forget_opened()


def test_the_bundled_reference_sides_are_laid_out_to_be_mapped():
    from forensics.registry import Registry

    reg = Registry.open()
    files = [p for name in reg.protocols for p in sorted(reg.reference_dir(name).glob("*.npz"))]
    assert files
    for path in files:
        assert open_mapped_npz(path).buffer is not None


# -- threads -----------------------------------------------------------------------------------------
def test_thread_counts_are_checked_and_chosen_in_order(monkeypatch):
    assert cpu.parse_threads("auto") is None and cpu.parse_threads(None) is None and cpu.parse_threads("3") == 3
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(UsageError, match="positive number of threads"):
            cpu.parse_threads(bad)
    monkeypatch.setenv(cpu.ENV, "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu.choose(2) == cpu.Threads(2, "--threads")
    assert cpu.choose(None).count == 3
    monkeypatch.delenv(cpu.ENV)
    assert cpu.choose(None) == cpu.Threads(5, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    measured = cpu.choose(None)
    assert 1 <= measured.count <= cpu.usable_cpus() and measured.how.startswith("measured")


@pytest.mark.slow  # a fresh interpreter imports torch
def test_the_program_sets_threads_and_wait_policy_before_torch_starts():
    code = ("import os, sys\nfrom forensics import cpu\ncpu.command_line()\ncpu.request('1')\n"
            "chosen = cpu.apply_requested()\nimport torch\n"
            "print(chosen.count, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", cpu.ENV)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "PASSIVE", "True"]


def test_a_library_caller_keeps_torchs_threads_unless_asked(monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)
    monkeypatch.setitem(cpu._STATE, "command_line", False)
    monkeypatch.setitem(cpu._STATE, "applied", None)
    monkeypatch.setitem(cpu._STATE, "requested", False)
    assert cpu.apply_requested() is None


@pytest.mark.slow  # imports the whole command line
def test_a_bad_threads_option_is_a_one_line_usage_error():
    from forensics.cli.commands import run

    assert run(["--threads", "many", "registry", "list"]) == 2
