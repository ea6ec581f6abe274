"""The sharded embedding cache: any shard layout reads back the same array, damage is found, entries are listed.

The Ray engine's actors write shards of their own size and the driver writes the index; the local engine
writes shards of :data:`SHARD_BYTES`. Both must read what the other wrote: that is what these tests pin
without Ray (tests/test_ray.py does it with Ray).
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from forensics.encode.cache import (
    CACHE_FORMAT, EmbeddingCache, Shard, cache_dir, embedding_key, encoder_record, iter_entries,
)
from forensics.encode.embed import embed
from forensics.io.hashing import sha256_array
from forensics.testing import sample_images

KEY = "sha256:" + "cd" * 32


@pytest.fixture(autouse=True)
def _private(monkeypatch, tmp_path):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def vit():
    from forensics.plugins import PluginHost

    return PluginHost(autoload=False).get("encoders", "vit_tiny_patch16_224.augreg_in21k").obj(
        weights="random", image_size=32)


def array(rows=23, dim=5, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


@pytest.mark.parametrize("shard_rows", [1, 4, 7, 23, 100])
def test_any_shard_layout_reads_back_the_same_array(shard_rows):
    store = EmbeddingCache()
    a = array()
    folder = store.put(KEY, a, shard_rows=shard_rows, what={"layer": "blocks.1", "encoder": "x"})
    got = store.get(KEY, rows=23)
    assert got.dtype == np.float32 and np.array_equal(got, a)
    shards = store.shards(KEY)
    assert len(shards) == -(-23 // shard_rows)
    assert [s.start for _, s in shards] == list(range(0, 23, shard_rows))
    meta = json.loads((folder / "index.json").read_text())
    assert meta["format"] == CACHE_FORMAT and meta["key"] == KEY and meta["rows"] == 23 and meta["dim"] == 5
    for path, shard in shards:  # every shard is a plain .npy, its digest the array's
        assert sha256_array(np.load(path)) == shard.sha256


def test_shards_written_in_parallel_in_any_order_then_indexed():
    """What the Ray engine does: actors write shards of rows they chose, in any order, the driver indexes."""
    store = EmbeddingCache()
    a = array(rows=50)
    cuts = [0, 8, 16, 24, 40, 50]  # uneven, as a last shard is
    pieces = list(zip(cuts[:-1], cuts[1:]))
    random.Random(0).shuffle(pieces)
    assert store.get(KEY) is None
    with ThreadPoolExecutor(4) as pool:
        shards = list(pool.map(lambda p: store.write_shard(KEY, p[0], a[p[0]:p[1]]), pieces))
    assert store.get(KEY) is None  # shards without an index are not an entry
    store.write_index(KEY, shards, rows=50, dim=5)
    assert np.array_equal(store.get(KEY, rows=50), a)
    assert store.get(KEY, rows=49) is None  # a wrong row count is damage: the entry goes
    assert store.shards(KEY) is None


@pytest.mark.parametrize("pieces", [[(0, 10)], [(0, 10), (0, 10), (10, 20)], [(0, 10), (10, 20), (20, 30)],
                                    [(0, 10), (12, 20)]], ids=["gap", "overlap", "beyond", "hole"])
def test_an_index_must_tile_the_rows(pieces):
    store = EmbeddingCache()
    a = array(rows=30)
    shards = [store.write_shard(KEY, s, a[s:e]) for s, e in pieces]
    with pytest.raises(ValueError, match="do not cover"):
        store.write_index(KEY, shards, rows=20, dim=5)
    assert store.get(KEY) is None


@pytest.mark.parametrize("damage", ["missing", "truncated", "tampered", "wrong-dtype", "index-garbage",
                                    "index-other-key", "index-path", "index-format"])
def test_damage_is_detected_and_the_entry_removed(damage):
    store = EmbeddingCache()
    a = array(rows=12)
    folder = store.put(KEY, a, shard_rows=5)
    shard = folder / "000000000005-000000000010.npy"
    index = folder / "index.json"
    meta = json.loads(index.read_text())
    if damage == "missing":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "tampered":
        np.save(shard, np.load(shard) + 1.0)
    elif damage == "wrong-dtype":
        np.save(shard, np.load(shard).astype(np.float64))
    elif damage == "index-garbage":
        index.write_bytes(os.urandom(200))
    elif damage == "index-other-key":
        index.write_text(json.dumps({**meta, "key": "sha256:" + "ef" * 32}))
    elif damage == "index-path":  # an index may only name shard files of its own folder
        meta["shards"][0]["file"] = "../../../etc/passwd"
        index.write_text(json.dumps(meta))
    else:
        index.write_text(json.dumps({**meta, "format": 1}))
    assert store.get(KEY) is None
    assert not folder.exists()
    store.put(KEY, a)
    assert np.array_equal(store.get(KEY), a)


def test_first_format_files_are_ignored_listed_and_cleared(vit, count_calls):
    """A cache of the first format (one .npz per key) is never read: recomputed once, listed as old, cleared."""
    images = sample_images(n=3, size=30)
    old = cache_dir() / "embeddings" / "ab" / ("ab" * 32 + ".npz")
    old.parent.mkdir(parents=True)
    np.savez(old, embedding=np.zeros((3, 192), np.float32), meta=np.array("{}"))
    counting = count_calls(vit)
    embed(counting, images, layers=["blocks.0"], cache=True)
    assert len(counting.calls) == 1
    kinds = sorted(e.kind for e in iter_entries())
    assert kinds == ["embeddings", "old"]
    assert EmbeddingCache().clear() == 2 and list(iter_entries()) == []


def test_local_engine_reads_entries_written_with_another_layout(vit, count_calls):
    """An entry whose shards another writer cut (as Ray's actors do) serves the local engine unchanged."""
    images = sample_images(n=11, size=30)
    direct = embed(vit, images, layers=["blocks.0", "blocks.2"], batch_size=4)
    store = EmbeddingCache()
    digest = sha256_array(images)
    for name, values in zip(["blocks.0", "blocks.2"], direct):
        key = embedding_key(images=digest, encoder=encoder_record(vit), layer=name)
        shards = [store.write_shard(key, s, values[s:s + 4]) for s in (8, 0, 4)]
        store.write_index(key, shards, rows=11, dim=values.shape[1])
    counting = count_calls(vit)
    again = embed(counting, images, layers=["blocks.0", "blocks.2"], cache=True)
    assert counting.calls == []
    for a, b in zip(direct, again):
        assert np.array_equal(a, b)


def test_iter_entries_lists_what_is_there(vit):
    images = sample_images(n=4, size=30)
    embed(vit, images, layers=["blocks.0", "blocks.1"], cache=True)
    (cache_dir() / "reference").mkdir(parents=True)
    (cache_dir() / "reference" / "0123abcd.npz").write_bytes(b"x" * 10)
    (cache_dir() / "stray.txt").write_text("?")
    entries = list(iter_entries())
    by_kind = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e)
    assert sorted(by_kind) == ["embeddings", "other", "reference"]
    emb = by_kind["embeddings"]
    assert len(emb) == 2 and all(e.size > 4 * 192 * 4 and e.mtime > 0 and e.key.startswith("sha256:") for e in emb)
    assert {e.what.split()[2] for e in emb} == {"blocks.0", "blocks.1"}
    assert all(vit.name in e.what and "4×192" in e.what for e in emb)
    assert by_kind["reference"][0].size == 10
    d = emb[0].to_dict()
    assert set(d) == {"path", "kind", "size", "mtime", "what", "key"}
    for e in entries:
        e.remove()
    assert list(iter_entries()) == []


def test_a_shard_record_round_trips():
    s = Shard("000000000000-000000000003.npy", 0, 3, "sha256:" + "0" * 64)
    assert Shard(**s.to_dict()) == s and s.stop == 3


@pytest.mark.parametrize("damage, said", [("truncate", "shard 000000000000-000000000004.npy is not what was written"),
                                          ("index", "its index cannot be read"),
                                          ("lose", "a shard is missing")])
def test_a_damaged_entry_is_said_in_one_warning_before_it_is_computed_again(caplog, damage, said):
    import logging

    store = EmbeddingCache()
    folder = store.put(KEY, np.ones((8, 3), np.float32), shard_rows=4)
    shard = folder / "000000000000-000000000004.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-8])
    elif damage == "index":
        (folder / "index.json").write_text("{")
    else:
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="forensics"):
        assert store.get(KEY, rows=8) is None
    (record,) = caplog.records
    assert record.name == "forensics.encode.cache" and "\n" not in record.getMessage()
    assert f"cached embeddings {folder} were damaged ({said}" in record.getMessage()
    assert "computed again" in record.getMessage() and not folder.exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="forensics"):
        assert store.get(KEY, rows=8) is None  # absent now: nothing more to say
    assert caplog.records == []
