"""forensics.stats.ct: the C_T statistic — hand-worked values, scipy's U, a float64 brute force, scikit-learn's
PCA, the fast search's exactness on the host and on a torch device, caching, determinism, threads, every
error path and the statistic's sign."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from forensics.stats.ct import CellResult, CTResult, FittedCT, ct_score, mann_whitney_u, nearest_distance, z_score
from forensics.stats.ct import kmeans as km, pca, search, statistic, threads, tiles
from forensics.stats.ct.kmeans import kmeans
from forensics.errors import StatisticError, UsageError


# -- a plain float64 reference implementation (ALGORITHMS.md §1, as literally as possible) ----------
def brute_nearest(points, ids, train, train_ids, distance):
    out = np.empty(len(points))
    for i, (x, c) in enumerate(zip(points, ids)):
        t = train[train_ids == c]
        if distance == "euclidean":
            d = np.sqrt(((t - x) ** 2).sum(axis=1))
        else:
            d = 1.0 - np.abs(t @ x / (np.linalg.norm(t, axis=1) * np.linalg.norm(x)))
        out[i] = d.min()
    return out


def brute_ct(train, test, gen, cells, distance="euclidean", tau=None):
    train, test, gen = (np.asarray(a, dtype=np.float64) for a in (train, test, gen))
    tc, pc, qc = (np.asarray(c) for c in cells)
    m, n = len(gen), len(test)
    tau = 20 / m if tau is None else tau
    lp = brute_nearest(test, pc, train, tc, distance)
    lq = brute_nearest(gen, qc, train, tc, distance)
    num = den = 0.0
    for c in np.unique(tc):
        a, b = lq[qc == c], lp[pc == c]
        if len(a) == 0 or not len(a) / m > tau:
            continue
        u = mannwhitneyu(a, b, alternative="less").statistic
        z = (u - (len(a) * len(b) / 2 - 0.5)) / math.sqrt(len(a) * len(b) * (len(a) + len(b) + 1) / 12)
        num += len(b) / n * z
        den += len(b) / n
    return num / den


def mixture(rng, n, centres, scale=1.0):
    return centres[rng.integers(0, len(centres), n)] + scale * rng.normal(size=(n, centres.shape[1]))


# -- hand-worked cases ---------------------------------------------------------------------------
def test_hand_worked_single_cell_with_a_tie():
    # Train {0, 10}. Test 1, 2, 4 → L_P = 1, 2, 4 (nearest training point 0 for all).
    # Generated 0.5, 2, 9 → L_Q = 0.5, 2, 1 (9 is 1 from 10).
    # U = #(q, p) with L(q) > L(p), ties ½:
    #   0.5 beats nothing → 0;  2 beats 1 and ties 2 → 1.5;  1 beats nothing, ties 1 → 0.5.   U = 2.
    # Z = (2 − (3·3/2 − 0.5)) / sqrt(3·3·7/12) = (2 − 4) / sqrt(5.25) = −2 / sqrt(5.25).
    train = np.array([[0.0], [10.0]])
    test = np.array([[1.0], [2.0], [4.0]])
    gen = np.array([[0.5], [2.0], [9.0]])
    cells = (np.zeros(2, int), np.zeros(3, int), np.zeros(3, int))
    result = ct_score(train, test, gen, cells=cells, tau=0.0)
    (cell,) = result.cells
    assert cell == CellResult(cell=0, n_train=2, n_test=3, n_generated=3, u=2.0, z=cell.z, counted=True)
    assert cell.z == pytest.approx(-2 / math.sqrt(5.25), abs=1e-15)
    assert result.value == pytest.approx(-2 / math.sqrt(5.25), abs=1e-15)
    assert result.counted_weight == 1.0 and result.tau == 0.0


def test_hand_worked_two_cells_weighted_by_test_share():
    # cell 0: train {0}; test 1, 3 → L_P = 1, 3; gen 5 → L_Q = 5: beats both → U = 2.
    #   Z0 = (2 − (1·2/2 − 0.5)) / sqrt(1·2·4/12) = 1.5 / sqrt(2/3)
    # cell 1: train {100}; test 101, 100.5 → L_P = 1, 0.5; gen 100, 100.5 → L_Q = 0, 0.5:
    #   0 beats nothing; 0.5 ties 0.5 → ½.  U = 0.5.  Z1 = (0.5 − (2·2/2 − 0.5)) / sqrt(2·2·5/12) = −1 / sqrt(5/3)
    # cell 2: train {−50}; test −49 (one point), no generated point → not counted, u = z = None.
    # n = 5: weights 2/5 and 2/5 → C_T = (Z0 + Z1) / 2; counted weight 4/5.
    train = np.array([[0.0], [100.0], [-50.0]])
    test = np.array([[1.0], [3.0], [101.0], [100.5], [-49.0]])
    gen = np.array([[5.0], [100.0], [100.5]])
    cells = (np.array([0, 1, 2]), np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1]))
    z0, z1 = 1.5 / math.sqrt(2 / 3), -1 / math.sqrt(5 / 3)
    result = ct_score(train, test, gen, cells=cells, tau=0.0)
    assert [c.u for c in result.cells] == [2.0, 0.5, None]
    assert [c.counted for c in result.cells] == [True, True, False]
    assert result.cells[2] == CellResult(2, 1, 1, 0, None, None, False)
    assert result.value == pytest.approx((z0 + z1) / 2, abs=1e-15)
    assert result.counted_weight == pytest.approx(0.8, abs=1e-15)


def test_hand_worked_cosine_ignores_sign_and_length():
    # d(x, t) = 1 − |cos|. Train (1, 0), (0, 1).  Test (2, 0) → 0; (1, 1) → 1 − 1/√2.
    # Generated (−3, 0) → |cos| = 1 with (1, 0) → 0 (a tie with the test point at 0 → ½);
    # so U = ½ and Z = (0.5 − (1·2/2 − 0.5)) / sqrt(1·2·4/12) = 0.
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    test = np.array([[2.0, 0.0], [1.0, 1.0]])
    gen = np.array([[-3.0, 0.0]])
    cells = (np.zeros(2, int), np.zeros(2, int), np.zeros(1, int))
    result = ct_score(train, test, gen, cells=cells, distance="cosine", tau=0.0)
    assert result.cells[0].u == 0.5
    assert result.value == 0.0


def test_z_and_u_helpers():
    assert z_score(6.0, 3, 4) == pytest.approx((6 - 5.5) / math.sqrt(3 * 4 * 8 / 12))
    assert mann_whitney_u([1.0, 2.0], [1.0, 2.0]) == 2.0  # 2>1 → 1, plus ties (1,1) and (2,2) → ½ each


@pytest.mark.parametrize("seed", range(6))
def test_u_equals_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, rng.integers(1, 60)).astype(float)
    b = rng.integers(0, 5, rng.integers(1, 60)).astype(float)
    assert mann_whitney_u(a, b) == mannwhitneyu(a, b, alternative="less").statistic


def test_cell_u_equals_scipy_on_tied_distances():
    # integer coordinates on a small grid: many distances tie exactly
    rng = np.random.default_rng(3)
    train = rng.integers(0, 4, size=(60, 2)).astype(float)
    test = rng.integers(0, 4, size=(80, 2)).astype(float)
    gen = rng.integers(0, 4, size=(90, 2)).astype(float)
    cells = (rng.integers(0, 3, 60), rng.integers(0, 3, 80), rng.integers(0, 3, 90))
    result = ct_score(train, test, gen, cells=cells, tau=0.0)
    lp = brute_nearest(test, cells[1], train, cells[0], "euclidean")
    lq = brute_nearest(gen, cells[2], train, cells[0], "euclidean")
    assert len(np.unique(np.r_[lp, lq])) < 10  # plenty of ties
    for cell in result.cells:
        want = mannwhitneyu(lq[cells[2] == cell.cell], lp[cells[1] == cell.cell], alternative="less").statistic
        assert cell.u == want
    assert abs(result.value - brute_ct(train, test, gen, cells, tau=0.0)) <= 1e-12


# -- equality with the plain float64 computation, given the same cells ---------------------------
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("dim,dtype", [(3, np.float64), (40, np.float32), (300, np.float64)])
def test_equals_brute_force_given_cells(distance, dim, dtype):
    rng = np.random.default_rng(dim)
    centres = rng.normal(scale=3, size=(4, dim))
    train, test = mixture(rng, 600, centres), mixture(rng, 200, centres)
    gen = np.concatenate([train[:80] + 0.01 * rng.normal(size=(80, dim)), mixture(rng, 120, centres)])
    train, test, gen = (a.astype(dtype) for a in (train, test, gen))
    cells = (rng.integers(0, 3, 600), rng.integers(0, 3, 200), rng.integers(0, 3, 200))
    got = ct_score(train, test, gen, cells=cells, distance=distance).value
    assert abs(got - brute_ct(train, test, gen, cells, distance)) <= 1e-9


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_projection_equals_sklearn_pca_then_brute_force(distance):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(7)
    basis = rng.normal(size=(8, 60))
    make = lambda n: rng.normal(size=(n, 8)) @ basis + 0.2 * rng.normal(size=(n, 60)) + 5.0
    train, test, gen = make(700), make(250), make(250)
    gen[:50] = train[:50] + 1e-3 * rng.normal(size=(50, 60))
    pca = PCA(n_components=12, svd_solver="full").fit(train)
    cells = (rng.integers(0, 3, 700), rng.integers(0, 3, 250), rng.integers(0, 3, 250))
    want = brute_ct(pca.transform(train), pca.transform(test), pca.transform(gen), cells, distance)
    got = ct_score(train, test, gen, cells=cells, distance=distance, projection=12).value
    assert abs(got - want) <= 1e-9


def test_projection_as_wide_as_the_layer_keeps_euclidean_distances():
    rng = np.random.default_rng(3)
    train, test, gen = rng.normal(size=(300, 12)), rng.normal(size=(100, 12)), rng.normal(size=(100, 12))
    cells = (rng.integers(0, 2, 300), rng.integers(0, 2, 100), rng.integers(0, 2, 100))
    raw = ct_score(train, test, gen, cells=cells).value
    assert ct_score(train, test, gen, cells=cells, projection=12).value == pytest.approx(raw, abs=1e-9)
    assert ct_score(train, test, gen, cells=cells, projection=64).value == pytest.approx(raw, abs=1e-9)


def test_fast_search_is_exact_on_near_ties_duplicates_and_far_offsets():
    # Data far from the origin (float32 would lose everything without centring), duplicated training
    # points, and queries at almost equal distances from two training points: the float32 search
    # must still return the float64 nearest distance (to rounding: the brute force sums differently).
    rng = np.random.default_rng(11)
    dim = 200
    base = 1e4 + rng.normal(size=(400, dim))
    train = np.concatenate([base, base[:50]])                      # exact duplicates
    mid = (train[:100] + train[100:200]) / 2                       # equidistant from two points
    queries = np.concatenate([mid, train[200:300] + 1e-9, rng.normal(size=(100, dim)) + 1e4])
    for distance in ("euclidean", "cosine"):
        t, q = (train, queries) if distance == "euclidean" else (pca.normalise(train, "t"), pca.normalise(queries, "q"))
        got = nearest_distance(q, t, distance)
        if distance == "euclidean":
            want = np.array([np.sqrt(((t - x) ** 2).sum(axis=1)).min() for x in q])
        else:
            want = np.array([(1.0 - np.abs(t @ x)).min() for x in q])
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_extreme_scales_and_identical_points(scale):
    # far below or above what float32 holds, the search runs in float64; identical training points
    # make every pair a candidate (all tied) — the result must still equal the brute force
    rng = np.random.default_rng(9)
    train = np.concatenate([np.ones((40, 6)), rng.normal(size=(160, 6))]) * scale
    test = rng.normal(size=(80, 6)) * scale
    gen = np.concatenate([np.ones((30, 6)), rng.normal(size=(50, 6))]) * scale
    cells = (np.r_[np.zeros(40, int), rng.integers(0, 2, 160)], rng.integers(0, 2, 80), rng.integers(0, 2, 80))
    want = brute_ct(train, test, gen, cells)
    assert abs(ct_score(train, test, gen, cells=cells).value - want) <= 1e-9


def test_blocked_paths_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=4, size=(3, 150))
    train, test, gen = mixture(rng, 900, centres), mixture(rng, 300, centres), mixture(rng, 300, centres)
    want = [ct_score(train, test, gen, k=3, projection=20, distance=d).value for d in DIST]
    monkeypatch.setattr(tiles, "BLOCK", 37)       # query blocks
    monkeypatch.setattr(tiles, "_TILE", 37 * 29)  # training chunks inside a cell
    monkeypatch.setattr(search, "_PAIRS", 300)    # exact re-check in small gathers
    monkeypatch.setattr(tiles, "_ROWS", 150 * 41)  # PCA and projection row blocks
    monkeypatch.setattr(threads, "workers", lambda items: 1)  # every cell searched in the calling thread
    got = [ct_score(train, test, gen, k=3, projection=20, distance=d).value for d in DIST]
    assert got == pytest.approx(want, abs=1e-12)


DIST = ("euclidean", "cosine")


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    train, test, gen = rng.normal(size=(200, 5)), rng.normal(size=(80, 5)), rng.normal(size=(80, 5))
    a = ct_score(train, test, gen, k=2)
    b = ct_score(torch.from_numpy(train), torch.from_numpy(test), torch.from_numpy(gen), k=2)
    assert a == b


# -- tau ----------------------------------------------------------------------------------------
def test_tau_is_strict():
    rng = np.random.default_rng(0)
    train, test, gen = rng.normal(size=(200, 3)), rng.normal(size=(100, 3)), rng.normal(size=(100, 3))

    def cells_with(j):  # j of the 100 generated points in cell 1, the rest in cell 0
        return np.arange(200) % 2, np.arange(100) % 2, np.r_[np.ones(j, int), np.zeros(100 - j, int)]

    at_20 = ct_score(train, test, gen, cells=cells_with(20))  # default τ = 20/m: 20/100 is not > 0.2
    assert at_20.tau == pytest.approx(0.2)
    assert [c.counted for c in at_20.cells] == [True, False]
    assert at_20.cells[1].z is not None  # computed, just not counted
    assert at_20.value == at_20.cells[0].z and at_20.counted_weight == pytest.approx(0.5)
    at_21 = ct_score(train, test, gen, cells=cells_with(21))
    assert [c.counted for c in at_21.cells] == [True, True] and at_21.counted_weight == pytest.approx(1.0)
    explicit = ct_score(train, test, gen, cells=cells_with(21), tau=0.21)  # 21/100 is not > 0.21
    assert [c.counted for c in explicit.cells] == [True, False]


# -- k-means, determinism, caching ---------------------------------------------------------------
def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=20, size=(5, 16))
    labels = rng.integers(0, 5, 1500)
    train = centres[labels] + rng.normal(size=(1500, 16))
    test, gen = mixture(rng, 400, centres), mixture(rng, 400, centres)
    ref = FittedCT.fit(train, test, k=5, seed=4)
    found = ref.assign(train)
    for c in range(5):  # every k-means cell is one true cluster, and the other way round
        assert len(np.unique(labels[found == c])) == 1
    assert len(np.unique(found)) == 5
    a = ct_score(train, test, gen, k=5, seed=4, projection=8, distance="cosine")
    b = ct_score(train, test, gen, k=5, seed=4, projection=8, distance="cosine")
    assert a == b


def test_ct_score_is_fit_then_score():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=4, size=(3, 10))
    train, test, gen = mixture(rng, 600, centres), mixture(rng, 200, centres), mixture(rng, 200, centres)
    for kw in ({"k": 3, "seed": 1}, {"k": 4, "projection": 5, "distance": "cosine"}):
        assert ct_score(train, test, gen, **kw) == FittedCT.fit(train, test, **kw).score(gen)


def test_cached_reference_round_trip_is_identical(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=5, size=(4, 30))
    train = mixture(rng, 800, centres).astype(np.float32)
    test, gen = mixture(rng, 300, centres), mixture(rng, 300, centres)
    for kw in ({"k": 4, "seed": 3, "projection": 6, "distance": "cosine"}, {"k": 3}):
        ref = FittedCT.fit(train, test, **kw)
        np.savez(tmp_path / "ref.npz", **ref.to_arrays())
        with np.load(tmp_path / "ref.npz") as z:
            again = FittedCT.from_arrays(dict(z))
        assert again.score(gen) == ref.score(gen) == ct_score(train, test, gen, **kw)
        for name in ("k", "distance", "projection", "seed", "n_train", "n_test", "dim"):
            assert getattr(again, name) == getattr(ref, name)
    assert (ref.k, ref.distance, ref.projection, ref.seed, ref.n_train, ref.n_test, ref.dim) == \
        (3, "euclidean", None, 0, 800, 300, 30)
    with pytest.raises(AttributeError):
        ref.k = 5


def test_given_cells_reference_round_trip_and_old_layout():
    rng = np.random.default_rng(4)
    train, test, gen = rng.normal(size=(120, 4)), rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    tc, pc, qc = rng.integers(0, 2, 120), rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    ref = FittedCT.fit(train, test, train_cells=tc, test_cells=pc)
    want = ref.score(gen, generated_cells=qc)
    assert FittedCT.from_arrays(ref.to_arrays()).score(gen, generated_cells=qc) == want
    # format 1 arrays (per-point training cell ids instead of cell offsets) load too
    arrays = ref.to_arrays()
    old = {key: arrays[key] for key in ("k", "distance", "projection", "seed", "dim", "train", "test_dist",
                                        "test_cells")}
    old["train_cells"] = np.repeat(arrays["cells"], np.diff(arrays["offsets"]))
    assert FittedCT.from_arrays(old).score(gen, generated_cells=qc) == want
    with pytest.raises(ValueError, match="format"):
        FittedCT.from_arrays({**arrays, "format": np.array(99)})


def test_result_to_dict_is_json():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5, size=(3, 4))
    train, test, gen = mixture(rng, 300, centres), mixture(rng, 100, centres), mixture(rng, 100, centres)
    result = ct_score(train, test, gen, k=3)
    assert isinstance(result, CTResult)
    back = json.loads(json.dumps(result.to_dict()))
    assert back["value"] == result.value and len(back["cells"]) == 3
    assert set(back["cells"][0]) == {"cell", "n_train", "n_test", "n_generated", "u", "z", "counted"}



# -- threads: parallel paths, per-thread limits, reduced-precision products -----------------------
def test_parallel_paths_give_identical_results(monkeypatch):
    # the worker pool is used only where torch has several threads (the suite runs on one): force it,
    # and the results must be bit-identical to the serial run — covariance row groups, projection blocks,
    # k-means restarts and per-cell searches are each computed the same way on any thread
    rng = np.random.default_rng(8)
    centres = rng.normal(scale=4, size=(4, 90))
    train, test, gen = mixture(rng, 3000, centres), mixture(rng, 500, centres), mixture(rng, 500, centres)
    monkeypatch.setattr(tiles, "_ROWS", 90 * 200)  # several row groups and projection blocks
    monkeypatch.setattr(km, "_KMEANS_SAMPLE", 1000)
    kw = [{"k": 4, "projection": 12}, {"k": 3, "projection": 12, "distance": "cosine"}, {"k": 5}]
    monkeypatch.setattr(threads, "workers", lambda items: 1)
    serial = [ct_score(train, test, gen, seed=2, **k) for k in kw]
    monkeypatch.setattr(threads, "workers", lambda items: min(items, 3))
    assert [ct_score(train, test, gen, seed=2, **k) for k in kw] == serial


def test_parallel_map_keeps_order_and_raises_a_jobs_error(monkeypatch):
    monkeypatch.setattr(threads, "workers", lambda items: min(items, 3))
    assert threads.parallel(lambda j: j * j, list(range(20)), costs=list(range(20))) == [j * j for j in range(20)]

    def fail(j):
        if j == 7:
            raise StatisticError("job 7")
        return j

    with pytest.raises(StatisticError, match="job 7"):
        threads.parallel(fail, list(range(20)))
    # inside a job, a nested call runs serially in that thread
    assert threads.parallel(lambda j: threads.parallel(lambda i: i + j, [0, 1]), [10, 20]) == [[10, 11], [20, 21]]


@pytest.mark.parametrize("points", ["spread", "few distinct"])
def test_parallel_kmeans_restarts_draw_what_sequential_runs_draw(monkeypatch, points):
    # with fewer distinct points than cells k-means++ draws differently (an integer, not uniforms): the
    # runs after such a one must be redone from the generator state it really left
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5)) if points == "spread" else np.repeat(rng.normal(size=(3, 5)), 40, axis=0)
    x = x.astype(np.float32)
    x_sq = np.einsum("ij,ij->i", x, x)
    monkeypatch.setattr(threads, "workers", lambda items: min(items, 2))
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    got = km._restarts(x, x_sq, 6, a, 1e-6)
    want = [km._lloyd(x, x_sq, km._kmeans_pp(x, x_sq, 6, b), 1e-6) for _ in range(km._KMEANS_INIT)]
    assert len(got) == len(want)
    for (gc, gi), (wc, wi) in zip(got, want):
        assert np.array_equal(gc, wc) and gi == wi
    assert a.random() == b.random()  # and the generator is left where the sequential runs leave it


def test_one_thread_is_per_thread_and_restored():
    import threading

    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}
        with threads.one_thread():
            seen["inside"] = torch.get_num_threads()
            other = threading.Thread(target=lambda: seen.setdefault("other", torch.get_num_threads()))
            other.start()
            other.join()
            with threads.one_thread():  # nested: still one, and the outer setting comes back after it
                pass
            seen["nested"] = torch.get_num_threads()
        assert seen["inside"] == seen["nested"] == 1
        assert torch.get_num_threads() == 2
        if threads.per_thread_setters():  # the usual case: the rest of the process never saw the change
            assert seen["other"] == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("setters", ["per-thread", "process-wide"])
def test_concurrent_callers_agree_and_thread_settings_survive(monkeypatch, setters):
    import threading

    torch = pytest.importorskip("torch")
    if setters == "process-wide":  # as on builds where the per-thread setters are not found
        monkeypatch.setattr(threads, "_NATIVE", [])
    rng = np.random.default_rng(12)
    centres = rng.normal(scale=4, size=(3, 30))
    train, test, gen = mixture(rng, 1500, centres), mixture(rng, 300, centres), mixture(rng, 300, centres)
    want = ct_score(train, test, gen, k=3, projection=8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = []
        callers = [threading.Thread(target=lambda: got.append(ct_score(train, test, gen, k=3, projection=8)))
                   for _ in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert got == [want] * 4
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_reduced_precision_float32_products_are_not_used():
    # torch may compute float32 products in bfloat16 when allowed; the search's error bound assumes
    # IEEE float32, so its host products are numpy's, whatever torch is allowed — with the same results
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    centres = rng.normal(scale=4, size=(3, 20))
    train, test, gen = mixture(rng, 800, centres), mixture(rng, 200, centres), mixture(rng, 200, centres)
    want = [ct_score(train, test, gen, k=3, distance=d).value for d in DIST]
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        assert tiles.product() is tiles.numpy_product
        assert [ct_score(train, test, gen, k=3, distance=d).value for d in DIST] == pytest.approx(want, abs=1e-12)
    finally:
        torch.set_float32_matmul_precision(before)


# -- errors ---------------------------------------------------------------------------------------
@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 3)), rng.normal(size=(20, 3)), rng.normal(size=(30, 3))


def test_data_errors_say_what_to_do(data):
    train, test, gen = data
    with pytest.raises(StatisticError, match="train has 3 dimensions but test has 2"):
        ct_score(train, test[:, :2], gen, k=2)
    with pytest.raises(StatisticError, match="generated has 2 dimensions but the fit has 3"):
        ct_score(train, test, gen[:, :2], k=2)
    for bad in (np.nan, np.inf):
        poisoned = gen.copy()
        poisoned[3, 1] = bad
        with pytest.raises(StatisticError, match="generated holds NaN or infinite values"):
            ct_score(train, test, poisoned, k=2)
    with pytest.raises(StatisticError, match="train holds NaN"):
        ct_score(np.full((50, 3), np.nan), test, gen)
    for bad in (np.inf, -np.inf):  # +inf and -inf together: their sum is NaN, still caught
        poisoned = gen.astype(np.float32)
        poisoned[3, 1], poisoned[4, 2] = bad, -bad
        with pytest.raises(StatisticError, match="generated holds NaN or infinite values"):
            ct_score(train, test, poisoned, k=2)
    huge = np.full((4, 3), 3e38, dtype=np.float32)  # finite values whose float32 sum overflows: accepted
    assert statistic._as_matrix(huge, "x") is not None
    with pytest.raises(StatisticError, match="train holds values beyond ±3.4e\\+38, which k-means computes in float32"):
        ct_score(train * 1e300, test, gen, k=2)  # finite in float64, infinite once k-means casts them
    with pytest.raises(StatisticError, match="points of no dimensions"):
        ct_score(train[:, :0], test[:, :0], gen[:, :0], k=2)
    with pytest.raises(StatisticError, match="2-D"):
        ct_score(train[:, 0], test, gen)
    with pytest.raises(StatisticError, match="test is empty"):
        ct_score(train, test[:0], gen)
    with pytest.raises(StatisticError, match="at least k = 60 training points, got 50"):
        ct_score(train, test, gen, k=60)
    with pytest.raises(StatisticError, match="zero vector"):
        ct_score(np.r_[train, np.zeros((1, 3))], test, gen, k=2, distance="cosine")


def test_empty_and_unknown_cells_are_named(data):
    train, test, gen = data
    with pytest.raises(StatisticError, match="cell 1 has no test points"):
        ct_score(train, test, gen, cells=(np.arange(50) % 2, np.zeros(20, int), np.zeros(30, int)))
    with pytest.raises(StatisticError, match="cell 1 has no training points"):
        ct_score(train, test, gen, cells=(np.zeros(50, int), np.arange(20) % 3, np.zeros(30, int)))
    with pytest.raises(StatisticError, match="cell 7, which has no training or test points"):
        ct_score(train, test, gen, cells=(np.zeros(50, int), np.zeros(20, int), np.r_[np.zeros(29, int), 7]))
    with pytest.raises(StatisticError, match="1-D array of 20 integers"):
        ct_score(train, test, gen, cells=(np.zeros(50, int), np.zeros(19, int), np.zeros(30, int)))
    with pytest.raises(StatisticError, match="must be integers"):
        ct_score(train, test, gen, cells=(np.zeros(50), np.full(20, 0.5), np.zeros(30)))
    with pytest.raises(StatisticError, match="non-negative"):
        ct_score(train, test, gen, cells=(np.zeros(50, int), -np.ones(20, int), np.zeros(30, int)))


def test_no_counted_cell_says_how_far_off(data):
    train, test, gen = data
    cells = (np.arange(50) % 3, np.arange(20) % 3, np.arange(30) % 3)  # 10 generated points per cell
    with pytest.raises(StatisticError, match=r"largest cell holds 10 of the 30 generated points but τ = 0\.6667 "
                                             r"demands more than 20"):
        ct_score(train, test, gen, cells=cells)
    with pytest.raises(StatisticError, match="no cell counts"):
        ct_score(train, test, gen[:15], k=2)


def test_usage_errors(data):
    train, test, gen = data
    with pytest.raises(UsageError, match="distance must be one of"):
        ct_score(train, test, gen, distance="manhattan")
    for bad in (0, -3, True, 2.5, "64"):
        with pytest.raises(UsageError, match="projection must be a positive integer"):
            ct_score(train, test, gen, projection=bad)
    wide = np.random.default_rng(0).normal(size=(10, 40))
    with pytest.raises(UsageError, match="projection to 20 dimensions needs at least 20 training points, got 10"):
        ct_score(wide, wide, wide, projection=20)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(UsageError, match="k must be a positive integer"):
            ct_score(train, test, gen, k=bad)
    for bad in (-0.1, float("nan"), "0.1"):
        with pytest.raises(UsageError, match="tau must be a non-negative number"):
            ct_score(train, test, gen, tau=bad)
    for bad in (1.5, -1):
        with pytest.raises(UsageError, match="seed must be a whole number of at least 0"):
            ct_score(train, test, gen, seed=bad)
    with pytest.raises(UsageError, match="three id arrays"):
        ct_score(train, test, gen, cells=(np.zeros(50, int), np.zeros(20, int)))
    with pytest.raises(UsageError, match="both train and test"):
        FittedCT.fit(train, test, train_cells=np.zeros(50, int))
    ref = FittedCT.fit(train, test, train_cells=np.zeros(50, int), test_cells=np.zeros(20, int))
    with pytest.raises(UsageError, match="pass generated_cells too"):
        ref.score(gen)
    with pytest.raises(UsageError, match="no centres"):
        ref.assign(gen)


# -- the statistic's sign ------------------------------------------------------------------------
def test_sign_copies_fresh_and_far():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=4, size=(5, 8))
    train, test = mixture(rng, 3000, centres), mixture(rng, 600, centres)
    for distance in ("euclidean", "cosine"):
        ref = FittedCT.fit(train, test, k=5, distance=distance)
        copies = train[rng.choice(3000, 600, replace=False)] + 1e-3 * rng.normal(size=(600, 8))
        assert ref.score(copies).value < -10                    # data-copying
        fresh = [ref.score(mixture(rng, 600, centres)).value for _ in range(3)]
        assert all(abs(v) < 3 for v in fresh)                   # no evidence
        far = mixture(rng, 600, centres) + rng.normal(scale=3, size=(600, 8))
        assert ref.score(far).value > 5                         # underfitting: farther than fresh data


@pytest.mark.parametrize("split", [250, 400])
def test_a_set_scored_in_two_parts_and_combined_reads_as_one_batch_of_them_all(split):
    # files processed in several ways are scored in parts, each against its own processed P_n: under one
    # processing the parts combined must read as the whole set scored at once — the same mean under a shift
    # toward T or away from it, and the same spread under the null (Stouffer's √(m_c/m) weights, which ignore
    # that the parts share P_n, read about a tenth farther from 0)
    from forensics_ct import CTStatistic

    rng = np.random.default_rng(7)
    train, test = rng.normal(size=(3000, 8)), rng.normal(size=(1000, 8))
    ref = FittedCT.fit(train, test, k=10)
    combine = CTStatistic().combine
    draws = {"null": lambda: rng.normal(size=(500, 8)),
             "copying": lambda: train[rng.choice(3000, 500, replace=False)] + 0.3 * rng.normal(size=(500, 8)),
             "underfitting": lambda: 1.15 * rng.normal(size=(500, 8))}
    for kind, draw in draws.items():
        whole, parts = [], []
        for _ in range(60):
            q = draw()
            whole.append(ref.score(q, batch_size=500).value)
            a, b = ref.score(q[:split], batch_size=500).value, ref.score(q[split:], batch_size=500).value
            parts.append(combine([a, b], [split, 500 - split], len(test)))
        if kind == "null":
            assert abs(np.mean(parts)) < 0.15 and 0.8 < np.std(parts) / np.std(whole) < 1.35, (kind, split)
        else:
            assert abs(np.mean(parts) / np.mean(whole) - 1) < 0.05 and abs(np.mean(whole)) > 2, (kind, split)


# -- a torch device for the searches and the covariance --------------------------------------------
def test_device_path_gives_the_cpu_paths_values(monkeypatch, torch_device):
    # "cpu" as a torch device runs the device code (torch products, torch selection, transfers to the
    # host for the float64 re-check) — the code a GPU runs; it must give the CPU path's values. On a
    # GPU the float64 covariance is summed in another order, so the axes (and C_T) may differ in the
    # last bits: there the bound is the statistic's 1e-9.
    pytest.importorskip("torch")
    tol = 1e-12 if torch_device == "cpu" else 1e-9
    rng = np.random.default_rng(12)
    centres = rng.normal(scale=4, size=(3, 90))
    train, test = mixture(rng, 900, centres), mixture(rng, 300, centres)
    gen = np.concatenate([train[:60] + 1e-6 * rng.normal(size=(60, 90)), mixture(rng, 240, centres)])
    for distance in DIST:
        cpu = FittedCT.fit(train, test, k=3, projection=20, distance=distance)
        dev = FittedCT.fit(train, test, k=3, projection=20, distance=distance, device=torch_device)
        assert dev.device.type == torch_device and cpu.device is None
        np.testing.assert_array_equal(dev.assign(gen), cpu.assign(gen))
        np.testing.assert_allclose(dev.to_arrays()["test_dist"], cpu.to_arrays()["test_dist"], rtol=tol)
        want = cpu.score(gen)
        assert dev.score(gen).value == pytest.approx(want.value, abs=tol)
        moved = cpu.to(torch_device)  # a fitted (or loaded) reference moved to a device: arrays shared
        assert moved.device.type == torch_device and cpu.to(None) is cpu
        assert moved.score(gen).value == pytest.approx(want.value, abs=0 if torch_device == "cpu" else 1e-12)
    # small blocks and tiles: several query blocks and training chunks per cell, as on large sets
    monkeypatch.setattr(tiles, "DEVICE_BLOCK", 41)
    monkeypatch.setattr(tiles, "_DEVICE_TILE", 41 * 23)
    cells = (rng.integers(0, 3, 900), rng.integers(0, 3, 300), rng.integers(0, 3, 300))
    for distance in DIST:
        got = ct_score(train, test, gen, cells=cells, distance=distance, device=torch_device).value
        assert abs(got - brute_ct(train, test, gen, cells, distance)) <= 1e-9


def test_device_search_is_exact_on_near_ties_and_duplicates(torch_device):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    base = 1e4 + rng.normal(size=(300, 64))
    train = np.concatenate([base, base[:40]])
    queries = np.concatenate([(train[:80] + train[80:160]) / 2, train[160:220] + 1e-9])
    cell = search.Cell(train, "euclidean")
    got = cell.nearest(queries, tiles.DeviceTiles(torch.device(torch_device)))
    np.testing.assert_array_equal(got, cell.nearest(queries))
    want = np.array([np.sqrt(((train - x) ** 2).sum(axis=1)).min() for x in queries])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_pca_and_projection_on_a_device_match_the_cpu_path(monkeypatch, torch_device):
    torch = pytest.importorskip("torch")
    dev = torch.device(torch_device)
    rng = np.random.default_rng(21)
    x = (rng.normal(size=(700, 40)) * np.linspace(3, 0.1, 40)).astype(np.float32) + 5
    y = rng.normal(size=(90, 40)).astype(np.float32)
    mean, axes = pca.pca(tiles.HostRows(x), 12)
    for keep, tile in ((tiles._DEVICE_KEEP, tiles._DEVICE_TILE), (0, 2 * 40 * 64)):  # kept there / sent per pass
        monkeypatch.setattr(tiles, "_DEVICE_KEEP", keep)
        monkeypatch.setattr(tiles, "_DEVICE_TILE", tile)
        rows = tiles.DeviceRows(x, dev)
        d_mean, d_axes = pca.pca(rows, 12)
        np.testing.assert_allclose(d_mean, mean, rtol=1e-13)
        np.testing.assert_allclose(d_axes, axes, atol=1e-10)  # the same signs: the same axes
        host = pca.project(tiles.HostRows(x), mean, axes)
        np.testing.assert_allclose(pca.project(rows, d_mean, d_axes), host, atol=1e-9)
        np.testing.assert_allclose(pca.project(tiles.DeviceRows(y, dev, keep=False), d_mean, d_axes),
                                   pca.project(tiles.HostRows(y), mean, axes), atol=1e-9)
        assert (rows._kept is not None) == (keep > 0)
    fresh = tiles.DeviceRows(x, dev)  # a pass stopped early is not kept: the next pass sends every block
    next(iter(fresh))
    assert [(s, e) for s, e, _ in fresh] == [(s, e) for s, e in fresh._blocks] and len(fresh._blocks) > 1


@pytest.mark.parametrize("case", ["sampled", "all points", "few distinct points"])
def test_kmeans_on_a_device_replays_the_cpu_path(monkeypatch, torch_device, case):
    # the device k-means draws the same random numbers and runs the same float32 steps, restarts
    # batched: the same cells and (to rounding) the same centres
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    centres = rng.normal(scale=5, size=(6, 8))
    x = mixture(rng, 1500, centres)
    if case == "sampled":
        monkeypatch.setattr(km, "_KMEANS_SAMPLE", 400)  # restarts on a sample, then Lloyd on all points
    elif case == "few distinct points":  # fewer distinct points than cells: the CPU path draws otherwise
        x = np.repeat(x[:4], 50, axis=0)
    for seed in (0, 1, 2):
        want = kmeans(x, 7, seed)
        got = km.kmeans_on(x, 7, seed, torch.device(torch_device))
        np.testing.assert_array_equal(km.assign(x, got), km.assign(x, want))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_lloyd_on_a_device_restarts_an_empty_cluster_as_the_cpu_path_does(torch_device):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(41)
    x = mixture(rng, 500, rng.normal(scale=4, size=(3, 5))).astype(np.float32)
    x_sq = np.einsum("ij,ij->i", x, x)
    start = np.concatenate([x[:3], np.full((2, 5), 1e3, dtype=np.float32)])  # two centres no point is near
    want, inertia = km._lloyd(x, x_sq, start, tol=1e-6)
    dev = torch.device(torch_device)
    xd = torch.from_numpy(x).to(dev)
    got, got_inertia = km._lloyd_on(xd, xd.pow(2).sum(dim=1), torch.from_numpy(start).to(dev)[None], tol=1e-6)
    np.testing.assert_allclose(got[0].cpu().numpy(), want, rtol=1e-5, atol=1e-5)
    assert got_inertia[0] == pytest.approx(inertia, rel=1e-5)
    assert np.all(np.abs(want) < 100)  # both empty clusters were restarted at data points


def test_device_errors_and_reduced_precision():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    train, test, gen = rng.normal(size=(200, 6)), rng.normal(size=(80, 6)), rng.normal(size=(80, 6))
    with pytest.raises(UsageError, match="unknown device 'gpu0'"):
        ct_score(train, test, gen, k=2, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="sees no CUDA GPU"):
            ct_score(train, test, gen, k=2, device="cuda")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # bfloat16 / TF32 allowed: the bound would not hold
    try:
        with pytest.warns(UserWarning, match="runs on the CPU instead"):
            ref = FittedCT.fit(train, test, k=2, device="cpu")
        assert ref.device is None
    finally:
        torch.set_float32_matmul_precision(before)
    assert ref.score(gen) == ct_score(train, test, gen, k=2)


def test_a_pca_that_would_not_fit_in_memory_is_refused_in_one_line(monkeypatch):
    """An encoder plugin with a layer of 50,000 values made the PCA allocate its 50,000 × 50,000 float64
    covariance (tens of GiB): the kernel killed the run after minutes, without a word."""
    from forensics.stats.ct import pca as pca_module

    monkeypatch.setattr(pca_module, "available_memory", lambda: 1 << 20)  # 1 MiB free
    rng = np.random.default_rng(0)
    t, p, g = rng.normal(size=(300, 200)), rng.normal(size=(100, 200)), rng.normal(size=(400, 200))
    with pytest.raises(UsageError, match=r"PCA of a layer of 200 values needs its 200 × 200 covariance, about "
                                         r"[0-9.]+ GiB, more than the 0\.0 GiB free here: project with "
                                         r"--projection 0"):
        ct_score(t, p, g, k=3, projection=16)
    assert ct_score(t, p, g, k=3, projection=None).value is not None  # no PCA, no covariance
    monkeypatch.setattr(pca_module, "available_memory", lambda: None)  # not known: tried
    assert ct_score(t, p, g, k=3, projection=16).value is not None
