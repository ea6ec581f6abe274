"""The bundled statistic: C_T, the data-copying test of Meehan, Chaudhuri & Dasgupta (2020).

Parameters (all recorded in a protocol): ``k`` cells (k-means on T, seeded by ``seed``), ``distance``
("euclidean" or "cosine" = 1 − |cos|), ``projection`` (PCA dimensions fitted on T, or null), ``tau``
(a cell counts when more than tau·m generated points fall in it; null = 20/m).

In a protocol, null is Meehan et al.'s 20/m′ for a batch of m′ images, except in a batch too small for
its k cells to hold 20 images each on average (m′ < 20k): there a cell counts when it holds the share of
the batch that a batch of the protocol's m must hold (20/m; :meth:`CTStatistic.batch_params`,
:func:`forensics.stats.ct.statistic.default_tau`).
"""

from __future__ import annotations

from forensics.hookspecs import RegisterStatistic, hookimpl


class CTStatistic:
    """Adapter from the statistic hook's interface to :class:`forensics.stats.ct.FittedCT`."""

    fit_params = ("k", "distance", "projection", "seed")
    score_params = ("tau",)
    defaults = {"k": 10, "distance": "euclidean", "projection": None, "tau": None, "seed": 0}
    devices = True  # fit(device=…) and reference.to(device): the covariance and searches on a GPU
    # C_T is a P_n-weighted mean of per-cell Z scores, so |C_T| > 2 is significant
    reading_thresholds = {"copying_below": -2.0, "underfitting_above": 2.0}

    def reading(self, value):
        if value is None:
            return "undefined"
        if value < self.reading_thresholds["copying_below"]:
            return "copying"
        if value > self.reading_thresholds["underfitting_above"]:
            return "underfitting"
        return "no evidence"

    def batch_params(self, params, batch_size):
        """The score parameters ``params`` of a protocol whose batch size is ``batch_size``: that size goes
        with them, so that tau null can count the cells of a batch too small for 20 images a cell as a
        batch of the protocol's m would (at m′ = 100 of m = 500, k = 10, 20/m′ would count only the largest
        one or two cells, and the curve of a small batch would rest on them alone)."""
        return {**params, "batch_size": batch_size}

    def combine(self, values, counts, n_test):
        """The value of one set scored in parts — each part, the images of one condition, against T and P_n
        put through what its images went through (files processed in several ways) — from the parts' values,
        their numbers of images m_c and the number of P_n points n. A part's Mann–Whitney Z grows like the
        square root of its effective size h_c = m_c·n/(m_c + n) (the same in every cell, whose shares cancel), and
        parts scored against one P_n share its noise: the sum of √(h_c·h)/Σh_c · C_T over the parts whose
        value is defined (h: the effective size of them all) reads as one batch of them all would, under the
        null and under a shift alike (Stouffer's √(m_c/m) weights, the limit of large n, read about a tenth
        farther from 0 here). One part: its own value; None where no part's is defined."""
        import math

        defined = [(v, n) for v, n in zip(values, counts) if v is not None and n > 0]
        if not defined or n_test <= 0:
            return None

        def effective(m):
            return m * n_test / (m + n_test)

        sizes = [effective(n) for _, n in defined]
        whole = effective(sum(n for _, n in defined))
        return float(sum(v * math.sqrt(h * whole) / sum(sizes) for (v, _), h in zip(defined, sizes)))

    def fit(self, train, test, *, device=None, **params):
        from forensics.stats.ct import FittedCT

        return FittedCT.fit(train, test, device=device, **{k: params[k] for k in self.fit_params if k in params})

    def from_arrays(self, arrays):
        from forensics.stats.ct import FittedCT

        return FittedCT.from_arrays(arrays)


@hookimpl
def forensics_statistics(register: RegisterStatistic) -> None:
    register("ct", CTStatistic(), description="C_T data-copying statistic (Meehan et al. 2020), per layer")
