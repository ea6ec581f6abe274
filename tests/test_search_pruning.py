"""The pruned exact search (forensics.stats.ct.search: a cell split into groups, groups skipped by
triangle-inequality bounds): the distances are those of an independent float64 brute force and of the
unpruned search, bit for bit, on random and clustered data, with duplicates, exact ties, equidistant
queries, near-copies, far queries and data far from the origin; and the pruning really skips work."""

from __future__ import annotations

import numpy as np
import pytest

from forensics.stats.ct import FittedCT, search


def brute(queries: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The float64 nearest distance, as literally as possible."""
    train = np.asarray(train, dtype=np.float64)
    return np.array([np.sqrt(((train - x) ** 2).sum(axis=1)).min() for x in np.asarray(queries, dtype=np.float64)])


def clustered(rng, n, dim, centres, spread):
    return centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim))


def cases():
    rng = np.random.default_rng(0)
    dim = 24
    centres = rng.normal(scale=10.0, size=(6, dim))
    train = clustered(rng, 900, dim, centres, 1.0)
    train = np.concatenate([train, train[:60]])                         # exact duplicates
    mid = (train[:40] + train[40:80]) / 2                               # equidistant from two points
    yield "clustered", train, np.concatenate([
        clustered(rng, 200, dim, centres, 1.0),                         # fresh points
        train[100:160] + 1e-3 * rng.standard_normal((60, dim)),         # near-copies
        train[200:230],                                                 # exact copies (distance 0)
        mid,
        rng.normal(scale=40.0, size=(20, dim)),                         # far from every cluster
    ])
    plain = rng.standard_normal((700, 16))
    yield "gaussian", plain, rng.standard_normal((150, 16))
    grid = np.array(np.meshgrid(*[np.arange(4.0)] * 4)).reshape(4, -1).T   # every distance tied many times
    yield "grid", np.concatenate([grid, grid]), np.concatenate([grid + 0.5, grid[:50]])
    far = 1e4 + clustered(rng, 600, 20, rng.normal(scale=5.0, size=(4, 20)), 0.5)
    yield "far from the origin", far, np.concatenate([far[:50] + 1e-7, far[50:100] * (1 + 1e-9)])
    f32 = clustered(rng, 640, 12, rng.normal(scale=8.0, size=(5, 12)), 1.0).astype(np.float32)
    yield "float32 points", f32, np.concatenate([f32[:40], f32[40:80] + np.float32(0.01)]).astype(np.float32)


@pytest.mark.parametrize("name,train,queries", list(cases()), ids=[c[0] for c in cases()])
def test_pruned_search_equals_the_float64_brute_force_bit_for_bit(monkeypatch, name, train, queries):
    monkeypatch.setattr(search, "_GROUP", 40)  # small cells split into groups too,
    monkeypatch.setattr(search, "_SPLIT_WORK", 0)  # for small searches,
    monkeypatch.setattr(search, "_WORTH", 2.0)  # and searched group by group even where it cannot pay
    cell = search.Cell(train, "euclidean")
    assert cell._split() is not None and cell._split().count > 2
    got = cell.nearest(queries)
    np.testing.assert_array_equal(got, brute(queries, train))
    np.testing.assert_array_equal(got, cell._brute(queries, np.full(len(queries), np.inf)))


def test_groups_bound_every_point_and_pruning_skips_work(monkeypatch):
    monkeypatch.setattr(search, "_GROUP", 40)
    monkeypatch.setattr(search, "_SPLIT_WORK", 0)
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=20.0, size=(8, 32))
    train = clustered(rng, 2000, 32, centres, 1.0)
    queries = clustered(rng, 300, 32, centres, 1.0)
    cell = search.Cell(train, "euclidean")
    groups = cell._split()
    # each group's radius covers its points (measured in float64 from the original coordinates)
    for g in range(groups.count):
        members = groups.order[groups.offsets[g]:groups.offsets[g + 1]]
        reach = np.sqrt((((train[members] - cell.shift) - groups.centres[g]) ** 2).sum(axis=1)).max()
        assert reach <= groups.radii[g]
    # the lower bounds never exceed a true distance
    low = groups.lower_bounds(queries)
    for g in range(groups.count):
        members = groups.order[groups.offsets[g]:groups.offsets[g + 1]]
        nearest = np.array([np.sqrt(((train[members] - x) ** 2).sum(axis=1)).min() for x in queries])
        assert np.all(low[:, g] <= nearest)
    visited = []
    original = search.Cell._search_group

    def counting(self, groups, g, who, *rest):
        visited.append(len(who) * int(groups.offsets[g + 1] - groups.offsets[g]))
        return original(self, groups, g, who, *rest)

    monkeypatch.setattr(search.Cell, "_search_group", counting)
    got = cell.nearest(queries)
    np.testing.assert_array_equal(got, brute(queries, train))
    assert sum(visited) < 0.5 * len(queries) * len(train)  # well-separated clusters: most groups skipped


def test_non_finite_queries_fall_back_to_the_brute_force(monkeypatch):
    monkeypatch.setattr(search, "_GROUP", 40)
    monkeypatch.setattr(search, "_SPLIT_WORK", 0)
    monkeypatch.setattr(search, "_WORTH", 2.0)
    rng = np.random.default_rng(2)
    train = rng.standard_normal((400, 8))
    queries = np.concatenate([rng.standard_normal((10, 8)), np.full((1, 8), np.inf)])
    cell = search.Cell(train, "euclidean")
    got = cell.nearest(queries)
    np.testing.assert_array_equal(got, cell._brute(queries, np.full(len(queries), np.inf)))
    np.testing.assert_array_equal(got[:10], brute(queries[:10], train))


def test_the_pruned_search_is_chosen_only_where_it_can_pay(monkeypatch):
    # points without structure: no group can be skipped, so the cell is not split (and a query batch
    # that would visit nearly every group goes to the whole-cell search); separated clusters are split,
    # but not for a search too small to repay the groups
    monkeypatch.setattr(search, "_GROUP", 40)
    rng = np.random.default_rng(4)
    small = search.Cell(clustered(rng, 2000, 32, rng.normal(scale=20.0, size=(8, 32)), 1.0), "euclidean")
    small.nearest(small.points[:10])
    assert small._groups is False  # not tried yet
    monkeypatch.setattr(search, "_SPLIT_WORK", 0)
    assert search.Cell(rng.standard_normal((2000, 32)), "euclidean")._split() is None
    centres = rng.normal(scale=20.0, size=(8, 32))
    cell = search.Cell(clustered(rng, 2000, 32, centres, 1.0), "euclidean")
    assert cell._split() is not None
    calls = []
    monkeypatch.setattr(search.Cell, "_brute", lambda self, q, out, *a: calls.append(len(q)) or out)
    # queries far away in directions orthogonal to the clusters' span: all centres nearly equally far
    basis = np.linalg.qr(np.concatenate([centres.T, rng.standard_normal((32, 24))], axis=1))[0][:, 8:]
    far = cell.shift + 1e4 * (rng.standard_normal((50, 24)) @ basis.T)
    cell.nearest(far)
    assert calls == [50]


def test_statistic_is_the_same_with_and_without_pruning(monkeypatch):
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=6.0, size=(6, 40))
    train, test = clustered(rng, 1500, 40, centres, 1.0), clustered(rng, 400, 40, centres, 1.0)
    gen = np.concatenate([train[:100] + 0.01 * rng.standard_normal((100, 40)), clustered(rng, 300, 40, centres, 1.0)])
    monkeypatch.setattr(search, "_GROUP", 10 ** 9)  # never split: the brute force
    plain = FittedCT.fit(train, test, k=3, projection=16, seed=0)
    want_test, want = plain.to_arrays()["test_dist"], plain.score(gen)
    monkeypatch.setattr(search, "_GROUP", 32)
    monkeypatch.setattr(search, "_SPLIT_WORK", 0)
    pruned = FittedCT.fit(train, test, k=3, projection=16, seed=0)
    assert any(pruned._cell(i)._split() is not None for i in range(3))
    np.testing.assert_array_equal(pruned.to_arrays()["test_dist"], want_test)
    assert pruned.score(gen) == want


# -- the cells' search layouts, stored with the fit -------------------------------------------------
def layout_fit(monkeypatch):
    monkeypatch.setattr(search, "_GROUP", 40)  # small cells split into groups too
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=6.0, size=(6, 40))
    train, test = clustered(rng, 1500, 40, centres, 1.0), clustered(rng, 400, 40, centres, 1.0)
    gen = np.concatenate([train[:100] + 0.01 * rng.standard_normal((100, 40)), clustered(rng, 300, 40, centres, 1.0),
                          train[200:220]])
    return FittedCT.fit(train, test, k=3, projection=16, seed=0), gen


def test_a_fit_read_back_searches_from_its_stored_layouts_with_the_same_distances(monkeypatch):
    fit, gen = layout_fit(monkeypatch)
    arrays = fit.to_arrays()
    assert int(arrays["layout_format"]) == search.LAYOUT and arrays["layout_rows"].dtype == np.float32
    assert len(arrays["layout_sizes"]) > 3  # groups were stored
    monkeypatch.setattr(search, "_SPLIT_WORK", 0)  # every search split, so that the stored groups are used
    want = fit.records(gen)
    built = []
    monkeypatch.setattr(search, "_groups", lambda *a: built.append(a))  # nothing is rebuilt on reading
    monkeypatch.setattr(search.Cell, "__init__", lambda *a: built.append(a))
    read = FittedCT.from_arrays(arrays)
    np.testing.assert_array_equal(read.records(gen), want)
    assert read.score(gen) == fit.score(gen)
    assert not built
    # each restored cell: the float64 brute force's distances, through its groups and through the whole cell
    for i in range(3):
        cell = read._cell(i)
        assert cell._groups is not None and cell.order is not None
        queries = read.transform(gen)
        np.testing.assert_array_equal(cell.nearest(queries), brute(queries, cell.points))
        np.testing.assert_array_equal(cell._brute(queries, np.full(len(queries), np.inf)), brute(queries, cell.points))


def test_arrays_without_layouts_or_with_another_version_are_read_and_built(monkeypatch):
    fit, gen = layout_fit(monkeypatch)
    arrays = fit.to_arrays()
    want = fit.records(gen)
    older = {k: v for k, v in arrays.items() if not k.startswith("layout_")}
    other = {**arrays, "layout_format": np.array(search.LAYOUT + 1)}
    for variant in (older, other):
        read = FittedCT.from_arrays(variant)
        np.testing.assert_array_equal(read.records(gen), want)
        assert read._cell(0).order is None  # built from the training points
    # a layout-free fit (old arrays) writes its layouts again
    assert "layout_rows" in FittedCT.from_arrays(older).to_arrays()


def test_layouts_that_do_not_fit_the_training_points_are_refused(monkeypatch):
    fit, _ = layout_fit(monkeypatch)
    arrays = fit.to_arrays()
    order = arrays["layout_order"].copy()
    order[[0, 1]] = order[0]  # a point twice, another never
    sizes = arrays["layout_sizes"].copy()
    sizes[0] += 1
    for bad in ({"layout_order": order}, {"layout_sizes": sizes}, {"layout_rows": arrays["layout_rows"][:-1]},
                {"layout_rows": arrays["layout_rows"].astype(np.float64)}, {"layout_radii": arrays["layout_radii"][1:]},
                {"layout_groups": arrays["layout_groups"][::-1].copy()}):
        with pytest.raises(ValueError):
            FittedCT.from_arrays({**arrays, **bad})


def test_cosine_and_unsplit_cells_store_their_rows_too():
    rng = np.random.default_rng(6)
    train, test, gen = rng.standard_normal((300, 12)), rng.standard_normal((100, 12)), rng.standard_normal((80, 12))
    for distance in ("cosine", "euclidean"):
        fit = FittedCT.fit(train, test, k=2, distance=distance, seed=0)
        arrays = fit.to_arrays()
        assert arrays["layout_rows"].shape == (300, 12 if distance == "cosine" else 13)
        assert len(arrays["layout_sizes"]) == 0  # too small to split
        read = FittedCT.from_arrays(arrays)
        np.testing.assert_array_equal(read.records(gen), fit.records(gen))
