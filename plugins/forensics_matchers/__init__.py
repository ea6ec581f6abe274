"""The bundled matchers: He et al.'s 1-NN (``alpha``), pure cosine (``cosine``) and an SVM (``svm``).

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


@hookimpl
def forensics_matchers(register: RegisterMatcher) -> None:
    register("alpha", _alpha,
             description="He et al. 2024: 1-NN, s = α·cos + (1−α)/(1+L2), α = 0.5 (option alpha)")
    register("cosine", _cosine, description="1-NN by cosine similarity alone (α = 1)")
    register("svm", _svm,
             description="scikit-learn SVC one-vs-rest on standardised curves (rbf, C = 10; options kernel, C, gamma)")
