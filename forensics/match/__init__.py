"""Query curve against enrolled curves: similarity, matchers, open-set calibration, evaluation."""
