"""``forensics cache list|clear`` and the library calls behind them: what the user cache holds, tied to the
registry's protocols; clearing all, by age or by protocol, after confirmation; nothing outside the cache
folder and nothing forensics did not write is ever removed."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import forensics
from forensics.cli.commands import app
from forensics.encode.cache import EmbeddingCache, embedding_key
from forensics.engine import reference_key
from forensics.errors import UsageError
from forensics.io.hashing import short

VIT = "mnist-vit"


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A private cache folder holding what runs under mnist-vit write (its reference side, embeddings of
    its P_n at two layers), embeddings of an unrelated image set, a file of the old format, and a
    user's file that forensics did not write."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(root))
    proto = forensics.open_protocol(VIT)
    store = EmbeddingCache()
    for layer in proto.layers[:2]:
        key = embedding_key(images=proto.test.sha256, encoder={"name": proto.encoder.name}, layer=layer)
        store.put(key, np.ones((10, 4), np.float32), what={"images": proto.test.sha256, "encoder": proto.encoder.name,
                                                            "layer": layer})
    other = embedding_key(images="sha256:" + "ab" * 32, encoder={"name": "x"}, layer="l")
    store.put(other, np.zeros((3, 2), np.float32), what={"images": "sha256:" + "ab" * 32, "encoder": "x",
                                                         "layer": "l"})
    (root / "reference").mkdir(parents=True)
    (root / "reference" / f"{short(reference_key(proto), 24)}.npz").write_bytes(b"0" * 100)
    (root / "embeddings" / "aa").mkdir(parents=True, exist_ok=True)
    (root / "embeddings" / "aa" / ("aa" * 32 + ".npz")).write_bytes(b"1" * 50)
    (root / "notes.txt").write_text("mine")
    return root


def cli(*args, input=None):
    return CliRunner().invoke(app, list(map(str, args)), input=input)


def kinds(listing):
    return sorted(i.kind for i in listing.items)


def test_list_names_every_entry_with_its_protocol_size_and_age(cache):
    listing = forensics.list_cache()
    assert listing.cache == cache
    assert kinds(listing) == ["embeddings"] * 3 + ["old", "other", "reference"]
    served = {(i.kind, i.reference_set) for i in listing.items if i.protocols == (VIT,)}
    assert served == {("embeddings", "P_n"), ("reference", None)}  # tied by content hash and reference key
    assert listing.total == sum(i.size for i in listing.items) > 0
    assert all(i.age_s >= 0 for i in listing.items)
    doc = json.loads(cli("cache", "list", "--json").stdout)
    assert doc["schema"] == "forensics.cache-list/1" and doc["n_entries"] == 6
    assert doc["total_bytes"] == listing.total
    table = cli("cache", "list")
    assert table.exit_code == 0 and "mnist-vit" in table.stdout and "6 entries" in table.stdout


def test_clear_all_removes_what_forensics_wrote_and_nothing_else(cache):
    result = cli("cache", "clear", "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["confirmed"] and doc["n_removed"] == 5
    left = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert left == ["notes.txt"]  # the user's own file stays
    assert kinds(forensics.list_cache()) == ["other"]
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]  # the folders the entries emptied went too


def test_clear_by_protocol_removes_only_what_serves_it(cache):
    result = forensics.clear_cache(protocol=VIT)
    assert {(i.kind, i.protocols) for i in result.removed} == {("embeddings", (VIT,)), ("reference", (VIT,))}
    assert len(result.removed) == 3
    assert kinds(forensics.list_cache()) == ["embeddings", "old", "other"]
    assert (cache / "embeddings").is_dir() and not (cache / "reference").exists()  # a folder still holding stays
    with pytest.raises(forensics.ForensicsError, match="nope"):
        forensics.clear_cache(protocol="nope")


def test_clear_older_than_keeps_younger_entries(cache):
    old = time.time() - 40 * 86400
    for entry in cache.rglob("*"):
        if "reference" in entry.parts:
            os.utime(entry, (old, old))
    result = cli("cache", "clear", "--older-than", "30d", "--yes")
    assert result.exit_code == 0, result.output
    assert "removed 1 entry (" in result.stdout  # one, said as one
    assert "reference" not in kinds(forensics.list_cache())
    assert kinds(forensics.list_cache()).count("embeddings") == 3


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 14 * 86400),
                                           ("45s", 45), ("7", 7 * 86400), ("1.5h", 5400)])
def test_durations(text, seconds):
    from forensics.api import parse_duration  # imported here: alone in a worker, forensics.api may not be yet

    assert parse_duration(text) == seconds


def test_a_bad_duration_fails_before_anything_is_touched(cache):
    result = cli("cache", "clear", "--older-than", "a month", "--yes")
    assert result.exit_code == 2 and "--older-than takes a duration" in result.output
    assert len(forensics.list_cache().items) == 6


def test_clear_asks_first_and_refuses_without_a_terminal(cache):
    # CliRunner's stdin is not a terminal: without --yes nothing goes, and the error says what to do
    result = cli("cache", "clear")
    assert result.exit_code == 2 and "add --yes" in result.output
    assert len(forensics.list_cache().items) == 6
    # the user is asked (on a terminal): "no" keeps everything, "yes" removes what was listed
    said_no = forensics.clear_cache(confirm=lambda items: False)
    assert not said_no.confirmed and not said_no.removed and len(forensics.list_cache().items) == 6
    asked = []
    forensics.clear_cache(confirm=lambda items: asked.append(len(items)) or True)
    assert asked == [5] and kinds(forensics.list_cache()) == ["other"]


def test_links_are_refused_and_what_they_point_at_survives(cache, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.npz").write_bytes(b"keep")
    (cache / "reference" / "linked.npz").symlink_to(outside / "data.npz")
    (cache / "embeddings" / "cd").mkdir()
    (cache / "embeddings" / "cd" / ("cd" * 32)).symlink_to(outside, target_is_directory=True)
    result = forensics.clear_cache()
    refused = {i.path.name: why for i, why in result.refused}
    assert set(refused) == {"linked.npz"} and "link" in refused["linked.npz"]
    assert (outside / "data.npz").read_bytes() == b"keep"
    assert (cache / "reference" / "linked.npz").is_symlink()
    # a link to a folder is not an entry forensics wrote: listed as other, never followed nor removed
    assert (cache / "embeddings" / "cd" / ("cd" * 32)).is_symlink()


def test_a_cache_folder_that_is_a_link_is_cleared_inside_only(tmp_path, monkeypatch, cache):
    link = tmp_path / "cache-link"
    link.symlink_to(cache, target_is_directory=True)
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(link))
    result = forensics.clear_cache()
    assert len(result.removed) == 5 and not result.refused
    assert (cache / "notes.txt").is_file()


def test_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "none"))
    assert forensics.list_cache().items == ()
    assert "is empty" in cli("cache", "list").stdout
    result = cli("cache", "clear")  # nothing to remove: nothing asked
    assert result.exit_code == 0, result.output


def test_usage_errors_are_usage_errors():
    with pytest.raises(UsageError):
        forensics.api.parse_duration("-3d")


def test_recorded_layer_widths_are_listed_and_cleared_as_forensics_own(cache):
    from forensics.schemas import validate
    from forensics_timm.base import widths_path

    path = widths_path("efficientnet_lite0", {"any": "key"})
    assert path.parent == cache / "layers"  # where the timm plugin keeps them
    path.parent.mkdir()
    path.write_text("{}")
    (item,) = [i for i in forensics.list_cache().items if i.kind == "layers"]
    assert item.path == path and "efficientnet_lite0" in item.what
    doc = json.loads(cli("cache", "list", "--json").stdout)
    validate(doc)  # "layers" is a kind the schema knows
    assert any(e["kind"] == "layers" for e in doc["entries"])
    from forensics.cli.cache import _groups

    (row,) = [g for g in _groups(forensics.list_cache().items) if g[0] == "layers"]
    assert row[2] == "encoders' layer widths, measured once"  # the table's line: forensics' own, not a user's
    assert forensics.clear_cache(protocol=VIT).removed and path.exists()  # serves no protocol in particular
    assert path in {i.path for i in forensics.clear_cache().removed} and not path.exists()


def test_a_cache_folder_that_is_a_file_or_a_registry_that_is_not_there_is_said_at_once(tmp_path, monkeypatch):
    from forensics.errors import ForensicsError, UsageError

    (tmp_path / "cfile").write_text("x")
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cfile"))
    with pytest.raises(ForensicsError, match="cfile is not a folder: move that file away, or point "
                                             "FORENSICS_CACHE_DIR at a folder"):
        forensics.list_cache()
    result = cli("cache", "list")
    assert result.exit_code == 1 and "is not a folder" in result.stderr
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UsageError, match="no registry at"):  # a path given that is not there: wrong usage
        forensics.list_cache(registry=tmp_path / "nowhere")
    assert cli("cache", "list", "--registry", tmp_path / "nowhere").exit_code == 2


def test_folders_holding_no_file_are_no_entries(tmp_path, monkeypatch, cache):
    """An entry folder begun and never written, a fetch that stopped before its first byte, an empty folder of
    the user's: nothing there, so nothing listed or counted; an empty cache says so."""
    for folder in ("embeddings/cd/" + "cd" * 32, "reference/half", "layers/none", "datasets/cifar10", "mine/deep"):
        (cache / folder).mkdir(parents=True)
    listing = forensics.list_cache()
    assert kinds(listing) == ["embeddings"] * 3 + ["old", "other", "reference"]  # what the fixture wrote, only
    assert "datasets" not in {i.kind for i in listing.items}
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "bare"))
    (tmp_path / "bare" / "embeddings" / "ab" / ("ab" * 32)).mkdir(parents=True)
    (tmp_path / "bare" / "datasets").mkdir()
    assert forensics.list_cache().items == ()
    assert "is empty" in cli("cache", "list").stdout


def test_an_archive_left_by_a_download_that_stopped_is_listed_as_unfinished_not_as_a_data_set(cache):
    datasets = cache / "datasets"
    (datasets / "cifar-10-batches-py").mkdir(parents=True)
    (datasets / "cifar-10-batches-py" / "test_batch").write_bytes(b"x" * 30)
    (item,) = [i for i in forensics.list_cache().items if i.kind == "datasets"]
    assert item.what == "data sets fetched by forensics (CIFAR-10): cifar-10-batches-py; `cache clear` keeps them"
    (datasets / "cifar-10-python.tar.gz").write_bytes(b"x" * 20)  # a third of the archive, the connection dropped
    (item,) = [i for i in forensics.list_cache().items if i.kind == "datasets"]
    assert "an unfinished download: cifar-10-python.tar.gz (fetched again when needed)" in item.what
    assert item.what.startswith("data sets fetched by forensics (CIFAR-10): cifar-10-batches-py;")
    (datasets / "cifar-10-batches-py" / "test_batch").unlink()
    (item,) = [i for i in forensics.list_cache().items if i.kind == "datasets"]
    assert item.what.startswith("data sets fetched by forensics (CIFAR-10): none whole; an unfinished download")
    assert item.size == 20


def test_a_write_that_a_run_stopped_midway_is_listed_as_unfinished_and_cleared(cache):
    reference = cache / "reference" / f".{short(reference_key(forensics.open_protocol(VIT)), 24)}.npz.k2j3x9.tmp"
    reference.write_bytes(b"0" * 40)  # what write_atomic leaves when the process is killed before its rename
    (cache / "layers").mkdir()
    (cache / "layers" / ".efficientnet_lite0-ab12.json.q8w.tmp").write_text("{")
    unfinished = [i for i in forensics.list_cache().items if i.path.name.endswith(".tmp")]
    assert sorted(i.kind for i in unfinished) == ["layers", "reference"]
    assert {i.what for i in unfinished} == {"an unfinished write (a run stopped while writing it; never read)"}
    forensics.clear_cache()
    assert not reference.exists() and not (cache / "layers" / ".efficientnet_lite0-ab12.json.q8w.tmp").exists()


def test_one_entry_is_said_as_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "c"))
    (tmp_path / "c" / "layers").mkdir(parents=True)
    (tmp_path / "c" / "layers" / "efficientnet_lite0-ab12.json").write_text("{}")
    listed = cli("cache", "list")
    assert "1 entry, 2 B in all" in listed.stdout and "entries," not in listed.stdout
    assert "1 cache entry would be removed" in cli("cache", "clear").output
    assert "removed 1 entry (2 B)" in cli("cache", "clear", "--yes").stdout


def test_a_cache_that_cannot_be_written_is_not_said_cleared(cache, monkeypatch):
    # a read-only cache folder (a shared or mounted one): an entry that cannot be deleted was reported removed
    # (a folder) or ended the command as an unexpected OSError (a file)
    import errno
    import shutil
    from pathlib import Path

    def read_only(path, *args, ignore_errors=False, **kwargs):
        if not ignore_errors:
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def read_only_file(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "rmtree", read_only)
        patched.setattr(Path, "unlink", read_only_file)
        result = cli("cache", "clear", "--yes")
    assert result.exit_code == 1 and "removed" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot remove ") and "(Read-only file system): clearing the cache needs" in line
    assert len(forensics.list_cache().items) == 6  # all still there, as said
