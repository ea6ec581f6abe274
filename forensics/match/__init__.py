"""Query curve against enrolled curves: similarity, matchers, open-set calibration, evaluation.

Import from this package (``from forensics.match import make_matcher``): the names below are its
public surface, whichever module inside defines them."""

from forensics.match.matcher import (
    CALIBRATION_RULE, THRESHOLDS, Attribution, Candidate, EnrolledCurve, Evaluation, Matcher, SimilarityMatcher,
    SVMMatcher, as_curve, available_matchers, calibrate, calibration_stability, generator_spreads, holdout,
    leave_generator_out, leave_one_out, lookalike_note, make_matcher, pairwise_distances, references_digest,
    similarity, similarity_matrix,
)

__all__ = [
    "CALIBRATION_RULE", "THRESHOLDS", "Attribution", "Candidate", "EnrolledCurve", "Evaluation", "Matcher",
    "SimilarityMatcher", "SVMMatcher", "as_curve", "available_matchers", "calibrate", "calibration_stability",
    "generator_spreads", "holdout", "leave_generator_out", "leave_one_out", "lookalike_note", "make_matcher",
    "pairwise_distances", "references_digest", "similarity", "similarity_matrix",
]
