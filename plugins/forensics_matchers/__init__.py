"""The bundled matchers: He et al.'s 1-NN (``alpha``), pure cosine (``cosine``) and an SVM (``svm``);
and the paper's baselines, run only when named (``last-layer``, ``best-layer``, ``fid``:
:mod:`forensics.match.baselines`).

Every matcher takes ``open_set`` (default True: answer "unknown" when the best candidate is not close
enough, not far enough ahead, or farther from its generator's curves than they lie from each other,
with thresholds calibrated by leave-one-out on the references; see :mod:`forensics.match.base`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forensics.hookspecs import RegisterMatcher, hookimpl

if TYPE_CHECKING:
    from forensics.match import Matcher


def _alpha(**options: Any) -> Matcher:
    from forensics.match import SimilarityMatcher

    return SimilarityMatcher(**options)


def _cosine(**options: Any) -> Matcher:
    from forensics.match import SimilarityMatcher

    options.setdefault("alpha", 1.0)
    return SimilarityMatcher(**options)


def _svm(**options: Any) -> Matcher:
    from forensics.match import SVMMatcher

    return SVMMatcher(**options)


def _last_layer(**options: Any) -> Matcher:
    from forensics.match import LayerMatcher

    options.setdefault("layer", "last")
    return LayerMatcher(**options)


def _best_layer(**options: Any) -> Matcher:
    from forensics.match import LayerMatcher

    options.setdefault("layer", "best")
    return LayerMatcher(**options)


def _fid(**options: Any) -> Matcher:
    from forensics.match import FIDMatcher

    return FIDMatcher(**options)


# baselines are left out of "every matcher" (forensics.match.available_matchers) and run when named
for _f in (_last_layer, _best_layer, _fid):
    _f.baseline = True  # type: ignore[attr-defined]


@hookimpl
def forensics_matchers(register: RegisterMatcher) -> None:
    register("alpha", _alpha,
             description="He et al. 2024: 1-NN, s = α·cos + (1−α)/(1+L2), α = 0.5 (option alpha)")
    register("cosine", _cosine, description="1-NN by cosine similarity alone (α = 1)")
    register("svm", _svm,
             description="scikit-learn SVC one-vs-rest on standardised curves (rbf, C = 10; options kernel, C, gamma)")
    register("last-layer", _last_layer,
             description="baseline: 1-NN on the curve's last-layer value alone (option layer: last, best or an index)")
    register("best-layer", _best_layer,
             description="baseline: 1-NN on one layer's value, the layer chosen on the references (LOO 1-NN)")
    register("fid", _fid,
             description="baseline (He et al.): 1-NN on the set's recorded FID (paper) or fd_pca (zoo)")
