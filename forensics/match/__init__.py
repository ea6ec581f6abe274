"""Query curve against enrolled curves: similarity, matchers, open-set calibration, evaluation.

Import from this package (``from forensics.match import make_matcher``): the names below are its
public surface, whichever module inside defines them. The modules: :mod:`~forensics.match.types`
(enrolled curves, candidates, attributions, calibration points), :mod:`~forensics.match.similarity`,
:mod:`~forensics.match.base` (the :class:`Matcher` contract and the open-set verdict),
:mod:`~forensics.match.nearest` (1-NN: ``alpha``, ``cosine``), :mod:`~forensics.match.svm`,
:mod:`~forensics.match.calibration`, :mod:`~forensics.match.evaluation` and
:mod:`~forensics.match.baselines` (the paper's baselines: one layer, FID)."""

from forensics.match.base import Matcher, available_matchers, contract_problems, make_matcher
from forensics.match.baselines import FIDMatcher, LayerMatcher, ScalarBaseline, choose_layer, curve_key
from forensics.match.calibration import CALIBRATION_RULE, THRESHOLDS, calibrate, refit_points
from forensics.match.evaluation import Evaluation, calibration_stability, holdout, leave_generator_out, leave_one_out
from forensics.match.nearest import SimilarityMatcher
from forensics.match.similarity import generator_spreads, pairwise_distances, similarity, similarity_matrix
from forensics.match.svm import SVMMatcher
from forensics.match.types import (
    Attribution, CalibrationPoints, Candidate, EnrolledCurve, Point, as_curve, lookalike_note, references_digest,
)

__all__ = [
    "CALIBRATION_RULE", "THRESHOLDS", "Attribution", "CalibrationPoints", "Candidate", "EnrolledCurve", "Evaluation",
    "FIDMatcher", "LayerMatcher", "Matcher", "ScalarBaseline", "choose_layer", "curve_key", "Point", "SimilarityMatcher", "SVMMatcher", "as_curve", "available_matchers", "calibrate",
    "calibration_stability", "contract_problems", "generator_spreads", "holdout", "leave_generator_out",
    "leave_one_out", "lookalike_note", "make_matcher", "pairwise_distances", "references_digest", "refit_points",
    "similarity", "similarity_matrix",
]
