"""Nearest-neighbour search in shards: exact to the bit against the unsharded search; FAISS only ever
overestimates a distance, and is exact when it searches everything."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.distributed.search import ShardedSearch, fit_with_search, with_search
from forensics.errors import UsageError
from forensics.stats.ct.search import nearest_distance
from forensics.stats.ct.statistic import FittedCT


def data(seed=0, n_train=1500, n_test=400, m=300, dim=24):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_train, dim)), rng.standard_normal((n_test, dim)),
            0.8 * rng.standard_normal((m, dim)))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("shard_rows", [1, 97, 500, 10_000])
def test_exact_shards_give_the_unsharded_statistic_bit_for_bit(distance, shard_rows):
    train, test, queries = data()
    params = dict(k=4, distance=distance, projection=12, seed=0)
    plain = FittedCT.fit(train, test, **params)
    search = ShardedSearch(shard_rows=shard_rows)
    fitted = fit_with_search(train, test, search, **params)
    assert np.array_equal(fitted.to_arrays()["test_dist"], plain.to_arrays()["test_dist"])
    expected = plain.score(queries)
    assert fitted.score(queries) == expected
    assert with_search(plain, search).score(queries) == expected


def test_a_memory_mapped_training_side_is_searched_a_shard_at_a_time(tmp_path):
    train, _, queries = data(dim=8)
    path = tmp_path / "train.npy"
    np.save(path, train)
    mapped = np.load(path, mmap_mode="r")
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    got = ShardedSearch(shard_rows=128).nearest(unit(queries), unit(np.asarray(mapped)), "cosine")
    assert np.array_equal(got, nearest_distance(unit(queries), unit(train), "cosine"))
    got = ShardedSearch(shard_rows=128).nearest(queries, mapped, "euclidean")
    assert np.array_equal(got, nearest_distance(queries, train, "euclidean"))


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-ivf", "faiss-hnsw"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_faiss_never_finds_a_point_nearer_than_the_nearest(backend, distance):
    pytest.importorskip("faiss")
    train, _, queries = data(dim=16)
    if distance == "cosine":
        train, queries = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (train, queries))
    exact = nearest_distance(queries, train, distance)
    approx = ShardedSearch(shard_rows=600, backend=backend, nprobe=1).nearest(queries, train, distance)
    assert np.all(approx >= exact)  # a missed neighbour only makes a distance larger
    if backend != "faiss-ivf":
        assert np.mean(approx == exact) > 0.9


def test_faiss_ivf_searching_every_list_is_exact():
    pytest.importorskip("faiss")
    train, _, queries = data(dim=16)
    search = ShardedSearch(shard_rows=800, backend="faiss-ivf", nlist=8, nprobe=8)
    assert np.array_equal(search.nearest(queries, train, "euclidean"), nearest_distance(queries, train, "euclidean"))


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="backend must be one of"):
        ShardedSearch(backend="annoy")
    with pytest.raises(UsageError, match="shard_rows"):
        ShardedSearch(shard_rows=0)
