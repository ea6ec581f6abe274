"""Quality figures of a sample set against T and P_n: in pixel space (:func:`quality`, intensities / 255,
recorded with every zoo set) and in an encoder's space (:func:`encoder_quality`, under a protocol).

- ``fd_pca``: Fréchet distance between Gaussians fitted to the samples and to T, in the 64-d PCA
  space fitted on T. EnrolledCurve: P_n's own value (``fd_pca_test``) — the floor for m-sized real sets.
- ``nn_ratio``: mean Euclidean distance from each sample to its nearest image of T, divided by the
  same mean for P_n. ≈ 1: on the data; > 1: off the manifold (under-fitting); < 1: copying.
- ``ct_pixel``: Meehan et al.'s C_T (``forensics.stats.ct``) in PCA-64 pixel space (k = 10 cells on T, seed 0,
  Euclidean, τ = 20/m).
  ≪ 0 copying, ≈ 0 no evidence, ≫ 0 under-fitting. (The protocol's own C_T uses encoder layers.)

In an encoder's space (one layer of a protocol, in the statistic's own space: PCA fitted on T, and
unit vectors for the cosine distance), :func:`encoder_quality` gives ``fd`` and ``nn_ratio`` defined as
above, against the T points the protocol's reference side holds — nothing of T is re-embedded.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import linalg

from forensics.stats.ct import FittedCT, nearest_distance


@lru_cache(maxsize=1)
def _reference():
    """T and P_n as float pixel rows, the pixel-space C_T reference (PCA-64 and k = 10 cells on T) and
    P_n's mean nearest-T distance."""
    from .data import mnist_split

    tr, _, te, _ = mnist_split()
    T = tr.reshape(len(tr), -1).astype(np.float64) / 255.0
    P = te.reshape(len(te), -1).astype(np.float64) / 255.0
    return T, P, FittedCT.fit(T, P, k=10, distance="euclidean", projection=64, seed=0), \
        float(nearest_distance(P, T, "euclidean").mean())


def _fd(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def quality(images_uint8: np.ndarray) -> dict:
    T, P, ref, nn_p = _reference()
    Q = images_uint8.reshape(len(images_uint8), -1).astype(np.float64) / 255.0
    Tp, Pp, Qp = ref.training_points, ref.transform(P), ref.transform(Q)
    nn_q = nearest_distance(Q, T, "euclidean").mean()
    # reference FD: a random real subset of P_n of the same size (FD is biased upwards for small sets)
    sub = np.random.default_rng(0).permutation(len(Pp))[:min(len(Q), len(Pp))]
    return {
        "fd_pca": round(_fd(Qp, Tp), 3),
        "fd_pca_test": round(_fd(Pp[sub], Tp), 3),
        "nn_dist": round(float(nn_q), 4),
        "nn_dist_test": round(float(nn_p), 4),
        "nn_ratio": round(float(nn_q / nn_p), 4),
        "ct_pixel": round(ref.score(Q).value, 3),
    }


def encoder_quality(reference, sets: list[np.ndarray], test_embeddings: np.ndarray, *, seed: int = 0) -> list[dict]:
    """``fd`` and ``nn_ratio`` of each set in a protocol layer's space, with P_n's FD for reference.

    ``reference``: the layer's fitted C_T reference (``Engine.reference_side()[i]``); ``sets``: each set's
    embeddings at that layer; ``test_embeddings``: P_n's. ``fd_test`` is the FD of a random subset of
    P_n as large as the set (FD grows as sets shrink), so a set on the data scores about ``fd_test`` and
    ``nn_ratio`` about 1 (below 1: closer to T than fresh data, i.e. copying). P_n's side is computed once."""
    train = np.asarray(reference.training_points, dtype=np.float64)
    p = reference.transform(test_embeddings)
    nn_p = nearest_distance(p, train, reference.distance).mean()
    order = np.random.default_rng(seed).permutation(len(p))
    fd_test: dict[int, float] = {}
    out = []
    for embeddings in sets:
        q = reference.transform(embeddings)
        size = min(len(q), len(p))
        if size not in fd_test:
            fd_test[size] = round(_fd(p[order[:size]], train), 4)
        nn_q = nearest_distance(q, train, reference.distance).mean()
        out.append({"fd": round(_fd(q, train), 4), "fd_test": fd_test[size], "nn_ratio": round(float(nn_q / nn_p), 4)})
    return out
