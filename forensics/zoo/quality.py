"""Quality figures of a sample set against T and P_n: in pixel space (:func:`quality`, intensities / 255,
recorded with every zoo set) and in an encoder's space (:func:`encoder_quality`, under a protocol).

- ``fd_pca``: Fréchet distance between Gaussians fitted to the samples and to T, in the 64-d PCA
  space fitted on T. Reference: P_n's own value (``fd_pca_test``) — the floor for m-sized real sets.
- ``nn_ratio``: mean Euclidean distance from each sample to its nearest image of T, divided by the
  same mean for P_n. ≈ 1: on the data; > 1: off the manifold (under-fitting); < 1: copying.
- ``ct_pixel``: Meehan et al.'s C_T in PCA-64 pixel space (k-means k = 10 on T, Euclidean, τ = 20/m).
  ≪ 0 copying, ≈ 0 no evidence, ≫ 0 under-fitting. (The protocol's own C_T uses encoder layers.)

In an encoder's space (one layer of a protocol, in the statistic's own space: PCA fitted on T, and
unit vectors for the cosine distance), :func:`encoder_quality` gives ``fd`` and ``nn_ratio`` defined as
above, against the T points the protocol's reference side holds — nothing of T is re-embedded.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import linalg
from scipy.stats import mannwhitneyu


@lru_cache(maxsize=1)
def _reference():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from .data import mnist_split

    tr, _, te, _ = mnist_split()
    T = tr.reshape(len(tr), -1).astype(np.float64) / 255.0
    P = te.reshape(len(te), -1).astype(np.float64) / 255.0
    pca = PCA(64, random_state=0).fit(T)
    Tp, Pp = pca.transform(T), pca.transform(P)
    km = KMeans(10, n_init=10, random_state=0).fit(Tp)
    return T, P, pca, Tp, Pp, km


def _fd(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _nn(X, T, bs=500):
    t2 = (T ** 2).sum(1)
    out = []
    for i in range(0, len(X), bs):
        x = X[i:i + bs]
        d2 = (x ** 2).sum(1)[:, None] + t2[None] - 2 * x @ T.T
        out.append(np.sqrt(np.maximum(d2.min(1), 0)))
    return np.concatenate(out)


def _ct(Qp, Tp, Pp, km):
    lt, lp, lq = km.labels_, km.predict(Pp), km.predict(Qp)
    m, n = len(Qp), len(Pp)
    num = den = 0.0
    for c in range(km.n_clusters):
        q, p, t = Qp[lq == c], Pp[lp == c], Tp[lt == c]
        if len(q) / m <= 20 / m or len(p) == 0:
            continue
        Lq, Lp = _nn(q, t), _nn(p, t)
        u = mannwhitneyu(Lq, Lp, alternative="less").statistic
        mq, np_ = len(q), len(p)
        z = (u - (mq * np_ / 2 - 0.5)) / np.sqrt(mq * np_ * (mq + np_ + 1) / 12)
        w = np_ / n
        num += w * z
        den += w
    return float(num / den) if den > 0 else float("nan")


def quality(images_uint8: np.ndarray) -> dict:
    T, P, pca, Tp, Pp, km = _reference()
    Q = images_uint8.reshape(len(images_uint8), -1).astype(np.float64) / 255.0
    Qp = pca.transform(Q)
    nn_q, nn_p = _nn(Q, T).mean(), _nn(P, T).mean()
    # reference FD: a random real subset of P_n of the same size (FD is biased upwards for small sets)
    sub = np.random.default_rng(0).permutation(len(Pp))[:min(len(Q), len(Pp))]
    return {
        "fd_pca": round(_fd(Qp, Tp), 3),
        "fd_pca_test": round(_fd(Pp[sub], Tp), 3),
        "nn_dist": round(float(nn_q), 4),
        "nn_dist_test": round(float(nn_p), 4),
        "nn_ratio": round(float(nn_q / nn_p), 4),
        "ct_pixel": round(_ct(Qp, Tp, Pp, km), 3),
    }


def encoder_quality(reference, embeddings: np.ndarray, test_embeddings: np.ndarray, *, seed: int = 0) -> dict:
    """``fd`` and ``nn_ratio`` of one set in a protocol layer's space, with P_n's values for reference.

    ``reference``: the layer's fitted C_T reference (``Engine.references[i]``); ``embeddings``: the set's
    embeddings at that layer; ``test_embeddings``: P_n's. ``fd_test`` is the FD of a random subset of
    P_n as large as the set (FD grows as sets shrink), so a set on the data scores about ``fd_test`` and
    ``nn_ratio`` about 1 (below 1: closer to T than fresh data, i.e. copying)."""
    from forensics.ct import nearest_distance

    train = np.asarray(reference.training_points, dtype=np.float64)
    q, p = reference.transform(embeddings), reference.transform(test_embeddings)
    sub = np.random.default_rng(seed).permutation(len(p))[:min(len(q), len(p))]
    nn_q = nearest_distance(q, train, reference.distance).mean()
    nn_p = nearest_distance(p, train, reference.distance).mean()
    return {"fd": round(_fd(q, train), 4), "fd_test": round(_fd(p[sub], train), 4),
            "nn_ratio": round(float(nn_q / nn_p), 4)}
