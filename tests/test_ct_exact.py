"""The C_T statistic against hand-worked cases, scipy's Mann–Whitney U and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from test_ct import brute_ct  # the one plain float64 reference of the suite

from forensics.stats.ct import FittedCT, ct_score, mann_whitney_u, z_score
from forensics.errors import StatisticError, UsageError


def test_hand_worked_one_dimension():
    # one cell; training points 0 and 10. Test points 1, 2, 3 -> L_P = 1, 2, 3.
    # Generated points 0.5 (L=0.5) and 2 (L=2): pairs with L(q) > L(p): (2 > 1) = 1, plus the tie (2, 2) = ½
    # -> U = 1.5; Z = (1.5 - (2*3/2 - 0.5)) / sqrt(2*3*6/12) = (1.5 - 2.5) / sqrt(3) = -1/sqrt(3).
    train = np.array([[0.0], [10.0]])
    test = np.array([[1.0], [2.0], [3.0]])
    gen = np.array([[0.5], [2.0]])
    cells = (np.zeros(2, int), np.zeros(3, int), np.zeros(2, int))
    result = ct_score(train, test, gen, cells=cells, tau=0.0)
    assert result.cells[0].u == 1.5
    assert result.value == pytest.approx(-1 / math.sqrt(3), abs=1e-15)


def test_hand_worked_two_cells_weighting():
    # cell 0: train {0}, test {1, 3} (L_P = 1, 3), gen {2} (L = 2) -> U = 1, Z = (1 - 0.5) / sqrt(2*4/12)
    # cell 1: train {100}, test {101} (L_P = 1), gen {100} (L = 0) -> U = 0, Z = (0 - 0) / sqrt(3/12) = 0
    # weights n_π/n = 2/3 and 1/3 -> C_T = (2/3 · Z0 + 1/3 · 0) / 1
    train = np.array([[0.0], [100.0]])
    test = np.array([[1.0], [3.0], [101.0]])
    gen = np.array([[2.0], [100.0]])
    cells = (np.array([0, 1]), np.array([0, 0, 1]), np.array([0, 1]))
    z0 = 0.5 / math.sqrt(8 / 12)
    assert ct_score(train, test, gen, cells=cells, tau=0.0).value == pytest.approx(2 / 3 * z0, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_u_equals_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, rng.integers(1, 40)).astype(float)
    b = rng.integers(0, 6, rng.integers(1, 40)).astype(float)
    assert mann_whitney_u(a, b) == mannwhitneyu(a, b, alternative="less").statistic


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("dim", [5, 200])
def test_equals_brute_force_given_cells(distance, dim):
    rng = np.random.default_rng(dim)
    train, test = rng.normal(size=(400, dim)), rng.normal(size=(150, dim))
    gen = np.concatenate([train[:60] + 0.05 * rng.normal(size=(60, dim)), rng.normal(size=(90, dim))])
    cells = (rng.integers(0, 3, 400), rng.integers(0, 3, 150), rng.integers(0, 3, 150))
    got = ct_score(train, test, gen, cells=cells, distance=distance).value
    assert abs(got - brute_ct(train, test, gen, cells, distance)) <= 1e-9


def test_tau_is_strict():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 3)), rng.normal(size=(100, 3))
    gen = rng.normal(size=(100, 3))

    def cells_with(k):  # k generated points in cell 1, the rest in cell 0
        return (np.arange(200) % 2, np.arange(100) % 2, np.r_[np.ones(k, int), np.zeros(100 - k, int)])

    at_20 = ct_score(train, test, gen, cells=cells_with(20))  # 20/100 is not > 20/100
    assert [c.counted for c in at_20.cells] == [True, False]
    at_21 = ct_score(train, test, gen, cells=cells_with(21))
    assert [c.counted for c in at_21.cells] == [True, True]
    assert at_20.counted_weight == pytest.approx(0.5) and at_21.counted_weight == pytest.approx(1.0)


def test_kmeans_cells_are_deterministic_and_cached_reference_is_identical():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=5, size=(4, 10))
    make = lambda n: centres[rng.integers(0, 4, n)] + rng.normal(size=(n, 10))  # noqa: E731
    train, test, gen = make(800), make(300), make(300)
    a = ct_score(train, test, gen, k=4, seed=3, projection=6, distance="cosine")
    b = ct_score(train, test, gen, k=4, seed=3, projection=6, distance="cosine")
    assert a == b
    ref = FittedCT.fit(train, test, k=4, seed=3, projection=6, distance="cosine")
    again = FittedCT.from_arrays({k: np.array(v) for k, v in ref.to_arrays().items()})
    assert again.score(gen) == ref.score(gen) == a


def test_sign_copies_fresh_and_far():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=4, size=(5, 8))
    make = lambda n: centres[rng.integers(0, 5, n)] + rng.normal(size=(n, 8))  # noqa: E731
    train, test = make(2000), make(500)
    ref = FittedCT.fit(train, test, k=5)
    copies = train[:500] + 1e-3 * rng.normal(size=(500, 8))
    assert ref.score(copies).value < -10
    assert abs(ref.score(make(500)).value) < 3
    assert ref.score(make(500) * 3.0).value > 5


def test_errors_are_clear():
    rng = np.random.default_rng(0)
    train, test, gen = rng.normal(size=(50, 3)), rng.normal(size=(20, 3)), rng.normal(size=(30, 3))
    with pytest.raises(StatisticError, match="dimensions"):
        ct_score(train, test[:, :2], gen)
    with pytest.raises(StatisticError, match="NaN"):
        ct_score(np.full((50, 3), np.nan), test, gen)
    with pytest.raises(StatisticError, match="cell 1 has no test points"):
        ct_score(train, test, gen, cells=(np.arange(50) % 2, np.zeros(20, int), np.zeros(30, int)))
    with pytest.raises(StatisticError, match="no cell counts"):
        ct_score(train, test, gen[:15], k=2)
    with pytest.raises(StatisticError, match="at least k = 60"):
        ct_score(train, test, gen, k=60)
    with pytest.raises(UsageError, match="distance must be one of"):
        ct_score(train, test, gen, distance="manhattan")
    with pytest.raises(UsageError, match="projection must be"):
        ct_score(train, test, gen, projection=0)
    with pytest.raises(UsageError, match="generated_cells"):
        FittedCT.fit(train, test, train_cells=np.zeros(50, int), test_cells=np.zeros(20, int)).score(gen)


def test_z_formula():
    assert z_score(6.0, 3, 4) == pytest.approx((6 - 5.5) / math.sqrt(3 * 4 * 8 / 12))
