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

    def fit(self, train, test, *, device=None, **params):
        from forensics.stats.ct import FittedCT

        return FittedCT.fit(train, test, device=device, **{k: params[k] for k in self.fit_params if k in params})

    def from_arrays(self, arrays):
        from forensics.stats.ct import FittedCT

        return FittedCT.from_arrays(arrays)


@hookimpl
def forensics_statistics(register: RegisterStatistic) -> None:
    register("ct", CTStatistic(), description="C_T data-copying statistic (Meehan et al. 2020), per layer")
