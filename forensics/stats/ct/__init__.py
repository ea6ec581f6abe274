"""The C_T data-copying statistic (Meehan, Chaudhuri & Dasgupta 2020), exact and fast.

For training set T (l × d), held-out set P_n (n × d) and generated set Q_m (m × d), embedded alike:

1. optionally project all three by PCA fitted on T only (to ``projection`` dimensions; a layer no wider
   than that is centred and rotated, which changes no Euclidean distance);
2. partition the space into cells: k-means fitted on T (seeded), or cell ids given from outside;
3. in every cell π, for each test and generated point, the distance to its nearest training point *of
   the same cell* — Euclidean, or 1 − |cos| (He et al.'s official choice);
4. per cell, the Mann–Whitney U of the generated distances against the test distances (pairs with
   L(q) > L(p), ties ½) and its normal approximation
   Z = (U − (m_π n_π / 2 − 0.5)) / sqrt(m_π n_π (m_π + n_π + 1) / 12);
5. C_T = Σ P_n(π)·Z(π) / Σ P_n(π) over the cells with m_π / m > τ (τ = 20/m by default).

C_T ≪ 0: the generated points sit closer to the training data than fresh data does (copying);
C_T ≈ 0: no evidence; C_T ≫ 0: underfitting.

The modules, one concern each:

- :mod:`.statistic` — :class:`FittedCT` (fit once per layer, cache, score many generated sets),
  :func:`ct_score`, the results, Mann–Whitney U and Z;
- :mod:`.pca` — PCA fitted on T from its float64 covariance, and the projection;
- :mod:`.kmeans` — seeded greedy k-means++ and Lloyd, restarts, the nearest-centre cells;
- :mod:`.search` — exact nearest-training distances within a cell (float32 tiles, float64 candidates);
- :mod:`.tiles` — where the arithmetic runs: row and score tiles on the host or on a torch device;
- :mod:`.threads` — one-thread sections and the pool of single-threaded workers.

Exactness: every distance, U and Z equals a plain float64 computation to ~1e-15. Devices: given a torch
``device`` (``fit(..., device="cuda")`` or ``fitted.to("cuda")``), PCA, projection, k-means and the
search's score tiles run there; the values are the host path's up to the order of float64 sums
(~1e-13), with the same cells unless float32 rounding in another order breaks a near-tie in k-means. A
device without float64 (MPS) keeps PCA and k-means on the host. A device whose float32 products may use
TF32 or bfloat16 is refused with a warning (the host path runs).
"""

from .search import nearest_distance
from .statistic import DISTANCES, CellResult, CTResult, FittedCT, ct_score, mann_whitney_u, z_score
from .tiles import resolve_device

__all__ = ["CTResult", "CellResult", "DISTANCES", "FittedCT", "ct_score", "mann_whitney_u", "nearest_distance",
           "resolve_device", "z_score"]
