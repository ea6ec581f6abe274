"""A cached reference side written before the C_T search layouts were stored is upgraded once, in place and
atomically, on its first opening: the same arrays plus the layouts, the same curve bit for bit, and the next
opening fast and writing nothing. A read-only cache or a failed write leaves the file as it was and the run
going; a shipped file is never rewritten."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from forensics import engine as engines
from forensics.io import atomic
from forensics.io.atomic import save_npz_atomic
from forensics.io.mapped import file_identity, open_mapped_npz, read_all, save_mapped_npz
from forensics.registry import reference as shipped
from forensics.stats.ct import FittedCT, search

STAT = SimpleNamespace(from_arrays=FittedCT.from_arrays)
LAYERS = ("a", "b")


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(search, "_GROUP", 40)  # small cells split into groups, so that groups are stored too
    engines.forget_opened()
    yield
    engines.forget_opened()


def fits(distance: str = "euclidean") -> list[FittedCT]:
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=5.0, size=(4, 12))

    def points(n):
        return centres[rng.integers(0, 4, n)] + rng.standard_normal((n, 12))

    return [FittedCT.fit(points(600), points(200), k=3, distance=distance, projection=None, seed=0)
            for _ in LAYERS]


def queries() -> np.ndarray:
    rng = np.random.default_rng(8)
    return rng.normal(scale=3.0, size=(150, 12))


def results(refs, q) -> list:
    """Each layer's value and per-point records: what a curve is made of."""
    return [(r.score(q, tau=0.0).value, r.records(q).tobytes()) for r in refs]


def old_arrays(refs, variant: str) -> dict[str, np.ndarray]:
    """The arrays a cache file held before the layouts were stored (or with layouts of another version)."""
    arrays = engines._pack(refs, LAYERS)
    if variant == "other version":
        return {k: (np.array(search.LAYOUT + 1) if k.endswith("/layout_format") else v) for k, v in arrays.items()}
    return {k: v for k, v in arrays.items() if "/layout_" not in k}


def write_old(path: Path, refs, variant: str) -> Path:
    arrays = old_arrays(refs, variant)
    if variant == "zip layout":  # the layout before the mapped one (np.savez), without layouts either
        return save_npz_atomic(path, arrays)
    return save_mapped_npz(path, arrays)


def refuse_writes(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the reference side was written")

    monkeypatch.setattr(engines, "save_mapped_npz", refuse)


@pytest.mark.parametrize("variant", ["no layouts", "other version", "zip layout"])
def test_an_old_cache_file_is_upgraded_on_first_opening_and_scores_the_same(tmp_path, monkeypatch, variant):
    refs, q = fits(), queries()
    want = results(refs, q)
    path = write_old(tmp_path / "ref.npz", refs, variant)
    before = read_all(path)

    first = engines.load_reference(path, LAYERS, STAT)
    assert results(first, q) == want  # bit for bit, from the file as it was
    after = open_mapped_npz(path)  # rewritten in the mapped layout, its word sums checked
    assert {f"{i}/layout_format" for i in range(len(LAYERS))} <= set(after)
    assert len(after["0/layout_sizes"]) > 1  # the cells' groups too
    for key, value in before.items():  # the same content, plus the layouts
        if "/layout_" not in key:
            assert after[key].dtype == value.dtype and np.array_equal(after[key], value), key
    assert sorted(os.listdir(tmp_path)) == ["ref.npz"]  # no temporary file left behind
    assert results(first, q) == want  # what was opened from the old file still serves after the rename

    # the next opening finds the layouts: nothing built, nothing written, the same values
    engines.forget_opened()
    refuse_writes(monkeypatch)
    identity = file_identity(path.stat())
    monkeypatch.setattr(search.Cell, "__init__", lambda *a: pytest.fail("a cell was built afresh"))
    second = engines.load_reference(path, LAYERS, STAT)
    assert not any(r.arrays_outdated for r in second)
    assert results(second, q) == want
    assert file_identity(path.stat()) == identity


def test_a_fit_without_layouts_to_store_is_not_rewritten_at_every_opening(tmp_path, monkeypatch):
    refs = fits()
    monkeypatch.setattr(search.Cell, "layout", lambda self: None)  # e.g. cells searched in float64
    path = save_mapped_npz(tmp_path / "ref.npz", engines._pack(refs, LAYERS))
    assert not any("/layout_" in k for k in read_all(path))
    refuse_writes(monkeypatch)
    for _ in range(2):
        engines.forget_opened()
        assert all(r.arrays_outdated for r in engines.load_reference(path, LAYERS, STAT))


def test_the_engine_upgrades_its_cached_reference_side_once_with_the_same_curve(toy_protocol, monkeypatch):
    from forensics.encode.cache import cache_dir

    protocol = toy_protocol("upgrade", layers=2)
    refs = [FittedCT.fit(f.training_points, np.random.default_rng(i).standard_normal((200, 12)), k=3,
                         distance="cosine", seed=0) for i, f in enumerate(fits())]
    engine = engines.Engine(protocol)
    path = cache_dir() / "reference" / engine._reference_paths()[-1].name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_mapped_npz(path, {k: v for k, v in engines._pack(refs, protocol.layers).items() if "/layout_" not in k})
    q = [queries(), queries()[::-1].copy()]
    want = [r.score(e, tau=None).value for r, e in zip(refs, q)]

    curve = engine.curve_from_embeddings(q)
    assert engine.reference_origin == str(path)
    assert list(curve.fingerprint.values) == want
    assert "0/layout_rows" in open_mapped_npz(path)

    engines.forget_opened()
    refuse_writes(monkeypatch)
    again = engines.Engine(protocol)
    assert list(again.curve_from_embeddings(q).fingerprint.values) == want
    assert not any(r.arrays_outdated for r in again.reference_side())
    path.unlink()


@pytest.mark.parametrize("variant", ["no layouts", "zip layout"])
def test_a_read_only_cache_or_a_failed_write_leaves_the_file_and_carries_on(tmp_path, monkeypatch, caplog, variant):
    refs, q = fits(), queries()
    want = results(refs, q)
    folder = tmp_path / "cache"
    folder.mkdir()
    path = write_old(folder / "ref.npz", refs, variant)
    raw, identity = path.read_bytes(), file_identity(path.stat())

    def opened_as_it_was():
        engines.forget_opened()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not even a warning
            loaded = engines.load_reference(path, LAYERS, STAT)
        assert results(loaded, q) == want
        assert path.read_bytes() == raw and file_identity(path.stat()) == identity
        assert sorted(os.listdir(folder)) == ["ref.npz"]  # no temporary file left behind

    caplog.set_level("DEBUG", logger="forensics.engine")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as it would anyone else
            def mkstemp(*a, **k):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
        opened_as_it_was()
    finally:
        folder.chmod(stat.S_IRWXU)
        monkeypatch.undo()
        monkeypatch.setattr(search, "_GROUP", 40)
    assert "not rewritten" in caplog.text

    def full_disk(fd):  # the write fails half-way: the temporary file goes, the old file stays
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    opened_as_it_was()
    monkeypatch.undo()

    # once writable again, the next opening upgrades it
    monkeypatch.setattr(search, "_GROUP", 40)
    engines.forget_opened()
    assert results(engines.load_reference(path, LAYERS, STAT), q) == want
    assert "0/layout_rows" in open_mapped_npz(path)


def test_a_shipped_file_without_layouts_is_never_rewritten(tmp_path, monkeypatch):
    refs, q = fits(), queries()
    path = write_old(tmp_path / "ref.npz", refs, "no layouts")
    shipped.record(path)
    raw, identity = path.read_bytes(), file_identity(path.stat())
    refuse_writes(monkeypatch)
    for _ in range(2):
        engines.forget_opened()
        assert results(engines.load_reference(path, LAYERS, STAT, protocol="p"), q) == results(refs, q)
    assert path.read_bytes() == raw and file_identity(path.stat()) == identity


def test_the_bundled_registry_s_reference_sides_are_left_as_shipped(bundled_registry):
    from forensics import plugins
    from forensics.engine import make_engine

    name = "mnist-effnet-lite0"
    folder = bundled_registry.reference_dir(name)
    files = {p: (file_identity(p.stat()), p.read_bytes()) for p in sorted(folder.iterdir())}
    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        engine = make_engine(bundled_registry.protocol(name), reference_dir=bundled_registry.reference_dir)
        engine.reference_side()
    finally:
        plugins.reset(old)
    assert engine.reference_origin is not None and engine.reference_origin.startswith(str(folder))
    assert {p: (file_identity(p.stat()), p.read_bytes()) for p in sorted(folder.iterdir())} == files


def test_a_fresh_fit_that_cannot_be_cached_serves_and_warns(toy_protocol, monkeypatch, tmp_path):
    # the reference side computed where the cache cannot be written (a read-only folder, a full disk): the
    # run carries on with the fit, says so, and leaves nothing behind
    protocol = toy_protocol("readonly", layers=2)
    refs = fits()
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    engine = engines.Engine(protocol)
    monkeypatch.setattr(engine, "_fit_reference", lambda layers, device: refs)

    def read_only(path, arrays):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(engines, "save_mapped_npz", read_only)
    with pytest.warns(UserWarning, match="could not be cached .*Read-only file system"):
        assert engine.reference_side() == refs
    assert engine.reference_origin.startswith("computed, not cached")
    assert not (tmp_path / "cache" / "reference").exists() or not any((tmp_path / "cache" / "reference").iterdir())
