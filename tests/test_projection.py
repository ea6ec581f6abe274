"""C_T's projection on the host (forensics.stats.ct.tiles.HostRows.project): each row's projected
coordinates depend on that row alone — not on the other rows, their number, or the row's place — so a
query identical to a held-out point gets the held-out point's distance exactly, and a row's record is
the same in any batch."""

from __future__ import annotations

import numpy as np

from forensics.stats.ct import FittedCT, pca, tiles


def test_a_rows_projection_does_not_depend_on_the_other_rows():
    rng = np.random.default_rng(0)
    for n, d, k in ((1000, 96, 16), (3 * tiles.PROJECT_ROWS + 5, 40, 40), (7, 200, 3)):
        x = (rng.standard_normal((n, d)) * 3 + 1).astype(np.float32)
        mean, axes = pca.pca(tiles.HostRows(x), k)
        whole = pca.project(tiles.HostRows(x), mean, axes)
        np.testing.assert_allclose(whole, (x - mean) @ axes, rtol=0, atol=1e-9)
        for size in (1, 2, tiles.PROJECT_ROWS - 1, tiles.PROJECT_ROWS + 1, n):
            rows = rng.permutation(n)[:min(size, n)]
            np.testing.assert_array_equal(pca.project(tiles.HostRows(x[rows]), mean, axes), whole[rows])
        # float64 input, and a view with another stride
        np.testing.assert_array_equal(pca.project(tiles.HostRows(x.astype(np.float64)), mean, axes), whole)


def test_held_out_copies_get_their_distances_and_records_do_not_depend_on_the_batch():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=4.0, size=(4, 50))
    train = (centres[rng.integers(0, 4, 1200)] + rng.standard_normal((1200, 50))).astype(np.float32)
    test = (centres[rng.integers(0, 4, 700)] + rng.standard_normal((700, 50))).astype(np.float32)
    fit = FittedCT.fit(train, test, k=3, projection=12, seed=0)
    test_dist = fit.to_arrays()["test_dist"]
    pick = rng.permutation(700)[:300]
    records = fit.records(test[pick])
    np.testing.assert_array_equal(records[:, 1], test_dist[pick])  # the same points, the same distances
    for size in (1, 5, 299):
        rows = rng.permutation(300)[:size]
        np.testing.assert_array_equal(fit.records(test[pick][rows]), records[rows])
