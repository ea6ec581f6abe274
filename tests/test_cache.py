"""The on-disk embedding cache: keyed by content, written atomically, damage detected and recomputed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from forensics.encode.cache import EmbeddingCache, cache_dir, embedding_key, encoder_record
from forensics.encode.embed import embed
from forensics.io.hashing import sha256_array
from forensics.testing import sample_images


@pytest.fixture(autouse=True)
def _private(monkeypatch, tmp_path):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite():
    from forensics.plugins import PluginHost

    return PluginHost(autoload=False).get("encoders", "tf_efficientnet_lite0").obj(weights="random", image_size=32)


def files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FORENSICS_CACHE_DIR")
    from platformdirs import user_cache_dir

    assert cache_dir() == Path(user_cache_dir("forensics"))


def test_second_run_reads_the_cache(lite, tmp_path, count_calls):
    images = sample_images(n=5, size=30)
    counting = count_calls(lite)
    first = embed(counting, images, cache=True, batch_size=2)
    assert len(counting.calls) == 3
    stored = files(tmp_path / "cache")
    indexes = [p for p in stored if p.name == "index.json"]  # one entry (index and shards) per layer
    assert len(indexes) == len(lite.layers) and not any(p.name.endswith(".tmp") for p in stored)
    second = embed(counting, images, cache=True)
    assert len(counting.calls) == 3  # nothing recomputed
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    embed(counting, images, cache=False)
    assert len(counting.calls) == 4  # --no-cache computes


def test_only_missing_layers_are_computed(lite, count_calls):
    images = sample_images(n=3, size=30)
    counting = count_calls(lite)
    embed(counting, images, layers=["blocks.2"], cache=True)
    out = embed(counting, images, layers=["blocks.2", "bn2"], cache=True)
    assert [layers for layers, _ in counting.calls] == [("blocks.2",), ("bn2",)]
    assert [o.shape[1] for o in out] == [40, 1280]


def test_key_covers_images_encoder_weights_layer_pooling_preprocessing(lite):
    images = sample_images(n=2, size=30)
    record = encoder_record(lite)
    base = embedding_key(images=sha256_array(images), encoder=record, layer="bn1")
    other_images = sample_images(n=2, size=30, seed=1)
    changed = [
        embedding_key(images=sha256_array(other_images), encoder=record, layer="bn1"),
        embedding_key(images=sha256_array(images), encoder={**record, "weights": "sha256:" + "0" * 64}, layer="bn1"),
        embedding_key(images=sha256_array(images), encoder={**record, "pooling": "channel_mean"}, layer="bn1"),
        embedding_key(images=sha256_array(images), encoder={**record, "preprocessing": {**record["preprocessing"],
                                                                                        "resize": 99}}, layer="bn1"),
        embedding_key(images=sha256_array(images), encoder={**record, "name": "x"}, layer="bn1"),
        embedding_key(images=sha256_array(images), encoder=record, layer="bn2"),
        embedding_key(images=sha256_array(images), encoder=record, layer="bn1", amp="bf16"),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_file_lists_are_keyed_by_their_bytes(lite, tmp_path, count_calls):
    from PIL import Image

    images = sample_images(n=2, size=30)
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    counting = count_calls(lite)
    first = embed(counting, paths, layers=["bn1"], cache=True)[0]
    copies = [tmp_path / f"copy{i}.png" for i in range(2)]
    for path, copy in zip(paths, copies):
        copy.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(embed(counting, copies, layers=["bn1"], cache=True)[0], first)
    assert len(counting.calls) == 1  # the same bytes under other names: read from the cache
    Image.fromarray(images[0]).save(paths[0], compress_level=0)  # same pixels, other bytes
    np.testing.assert_array_equal(embed(counting, paths, layers=["bn1"], cache=True)[0], first)
    assert len(counting.calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_damaged_entry_is_detected_and_recomputed(lite, tmp_path, damage, count_calls):
    images = sample_images(n=3, size=30)
    counting = count_calls(lite)
    good = embed(counting, images, layers=["bn1"], cache=True)[0]
    (path,) = [p for p in files(tmp_path / "cache") if p.suffix == ".npy"]  # the entry's one shard
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(os.urandom(500))
    else:  # a readable file whose values changed: the checksum catches it
        np.save(path, np.load(path) + 1.0)
    again = embed(counting, images, layers=["bn1"], cache=True)[0]
    assert len(counting.calls) == 2
    np.testing.assert_array_equal(good, again)
    assert EmbeddingCache().get(embedding_key(images=sha256_array(images),
                                              encoder=encoder_record(lite), layer="bn1")) is not None


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    store = EmbeddingCache(tmp_path / "c")
    key = "sha256:" + "ab" * 32
    boom = RuntimeError("disk full")

    def failing_savez(*args, **kwargs):
        raise boom

    monkeypatch.setattr(np, "save", failing_savez)
    with pytest.raises(RuntimeError):
        store.put(key, np.ones((2, 3), np.float32))
    monkeypatch.undo()
    assert files(tmp_path / "c") == []
    store.put(key, np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(store.get(key), np.ones((2, 3), np.float32))
    assert store.get(key, rows=5) is None  # wrong row count counts as damage
    assert store.clear() == 0 and files(tmp_path / "c") == []


def test_a_write_that_fails_midway_takes_the_shards_it_wrote_with_it(tmp_path, monkeypatch):
    # a full disk after two of four shards: what was written would never be read (no index), and on that full
    # disk it would keep every later write from fitting
    store = EmbeddingCache(tmp_path / "c")
    key = "sha256:" + "ab" * 32
    save, written = np.save, []

    def fills_up(f, array, **kwargs):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(len(array))
        save(f, array, **kwargs)

    monkeypatch.setattr(np, "save", fills_up)
    with pytest.raises(OSError, match="No space left"):
        store.put(key, np.ones((8, 3), np.float32), shard_rows=2)
    monkeypatch.undo()
    assert written == [2, 2] and files(tmp_path / "c") == []
    store.put(key, np.ones((8, 3), np.float32), shard_rows=2)
    written.clear()
    monkeypatch.setattr(np, "save", fills_up)
    with pytest.raises(OSError, match="No space left"):  # written again, by another process: the whole entry stays
        store.put(key, np.ones((8, 3), np.float32), shard_rows=2)
    monkeypatch.undo()
    np.testing.assert_array_equal(store.get(key, rows=8), np.ones((8, 3), np.float32))


def test_embeddings_that_cannot_be_cached_are_returned_with_a_warning(lite, monkeypatch):
    # a read-only cache folder or a full disk: the forward pass is not lost
    from forensics.encode import cache as caches

    images = sample_images(n=3, size=30)
    want = embed(lite, images, layers=["bn1"], cache=False)[0]

    def full(self, path, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(caches.EmbeddingCache, "write_shard", full)
    with pytest.warns(UserWarning, match="not cached .*No space left"):
        got = embed(lite, images, layers=["bn1"], cache=True)[0]
    np.testing.assert_array_equal(got, want)


def test_embeddings_whose_cache_folder_cannot_be_made_are_returned_with_a_warning(lite, monkeypatch, tmp_path):
    # the cache's folder on a read-only file system: its files are refused as outputs ("cannot make its
    # folder"), which failed the whole attribution as wrong usage (exit 2) where a warning was promised
    from forensics.errors import UsageError
    from forensics.encode import cache as caches

    images = sample_images(n=3, size=30)
    want = embed(lite, images, layers=["bn1"], cache=False)[0]

    def read_only(self, *a, **k):
        raise UsageError(f"cannot write {tmp_path}/x.npy: cannot make its folder (Read-only file system)")

    monkeypatch.setattr(caches.EmbeddingCache, "write_shard", read_only)
    with pytest.warns(UserWarning, match="not cached .*Read-only file system"):
        got = embed(lite, images, layers=["bn1"], cache=True)[0]
    np.testing.assert_array_equal(got, want)


def test_a_cached_layer_of_another_size_is_computed_anew(lite, count_calls):
    """A plugin that changes a layer's size without changing its identity (no learned weights: the same
    digest) got the old arrays from the cache, of the old size, as this layer's embeddings."""
    import copy
    import dataclasses

    images = sample_images(n=3, size=30)
    embed(lite, images, layers=["blocks.2"], cache=True)
    wider = copy.copy(lite)
    wider.forward_layers = lambda pixels, layers: [f.repeat_interleave(2, dim=1)
                                                   for f in lite.forward_layers(pixels, layers)]
    wider.layers = tuple(dataclasses.replace(layer, dim=layer.dim * 2) if layer.name == "blocks.2" else layer
                         for layer in lite.layers)
    counting = count_calls(wider)
    (out,) = embed(counting, images, layers=["blocks.2"], cache=True)
    assert out.shape == (3, 80) and len(counting.calls) == 1
