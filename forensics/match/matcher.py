"""Matching a query curve against reference fingerprints: ranked candidates, a verdict or "unknown".

A :class:`Matcher` is fitted on the reference fingerprints of one protocol (:class:`EnrolledCurve`, as
:meth:`forensics.registry.store.Registry.enrolled` returns them) and then attributes query curves::

    m = make_matcher("alpha")            # He et al.'s 1-NN, s = α·cos + (1 − α)/(1 + L2), α = 0.5
    m.fit(registry.enrolled("he2024-cifar10-vitb16"))
    result = m.attribute(curve)          # Attribution: candidates best first, verdict (None = unknown)

Every matcher ranks one candidate per generator (the best score any of its instances gets, or the
classifier's score of the class). With ``open_set=True`` (the default) a matcher also says "unknown"
(verdict ``None``) when the best candidate is not close enough, not far enough ahead of the
runner-up, or lies farther from the named generator's curves than they lie from each other. That last
test is the *distance ratio*: the Euclidean distance from the query to the named generator's nearest
curve, divided by the generator's *spread* (the median distance from one of its curves to the nearest
other; see :func:`generator_spreads`). It is the same for every matcher, since it looks at the curves,
not at the matcher's score, and it scales with each generator: a generator whose runs vary a lot
accepts a query farther away than one whose runs agree.

The three thresholds are calibrated at :meth:`Matcher.fit` from the references alone (see
:func:`calibrate`): every reference instance is attributed once with itself left out, and once with its
whole generator left out. The first kind should be answered when the answer is right; a wrong answer
and every answer about a left-out generator should be "unknown". The thresholds on (best score, margin,
distance ratio) are the triple that maximises the balanced accuracy of that decision; they are recorded
in :meth:`Matcher.describe` and in every :class:`Attribution`.

Some left-out generators pass those thresholds anyway, named as an enrolled generator whose runs
they resemble. Calibration records them as that generator's *lookalikes* ({named: {left out: [runs
named, runs]}}), and every verdict naming it carries them (:attr:`Attribution.lookalikes`, and a
"not exclusive" line in the reports): such a verdict cannot rule out an unenrolled generator like them.

Evaluation (``forensics registry evaluate``): :func:`leave_one_out`, :func:`leave_generator_out` and
:func:`holdout`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forensics.errors import ProtocolMismatch, UsageError
from forensics.io.hashing import sha256_json
from forensics.protocol import Fingerprint

CALIBRATION_RULE = ("thresholds on (best score, margin over the runner-up, distance ratio to the named generator's "
                    "spread) maximising balanced accuracy between leave-one-out queries attributed right (answer) "
                    "and leave-one-out queries attributed wrong or whose generator was left out entirely (unknown); "
                    "among tying triples a threshold that need not apply is not (margin, then score, then distance "
                    "ratio), else the middle of the tying range (geometric for the ratio); the left-out generators' "
                    "runs the thresholds let through are recorded as lookalikes of the generator they were named")

THRESHOLDS = ("score", "margin", "distance_ratio")  # the calibrated open-set thresholds, by their keys

# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnrolledCurve:
    """One enrolled instance: a generator's fingerprint of one batch, and where it came from."""

    generator: str
    instance: str
    fingerprint: Fingerprint
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """One generator as an answer: its score (higher = closer) and, for 1-NN, the closest instance."""

    generator: str
    score: float
    instance: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "score": float(self.score), "instance": self.instance}


@dataclass(frozen=True)
class Attribution:
    """The answer to one query curve.

    ``candidates``: one per generator, best first. ``verdict``: the generator named, or ``None`` for
    "unknown". ``margin``: best score minus the runner-up's (``None`` with a single candidate).
    ``threshold``: the open-set thresholds applied (``None`` when the matcher is closed-set).
    ``distance_ratio``: the query's distance to the best candidate's nearest curve over that generator's
    spread (``None`` when no generator has two curves to measure a spread on). ``lookalikes``: for a
    named verdict, the generators whose runs calibration saw named as the verdict when they were left
    out of the references, as {generator: [runs named, runs]}; a verdict with lookalikes does not rule
    out an unenrolled generator like them.
    """

    candidates: tuple[Candidate, ...]
    verdict: str | None
    margin: float | None
    reason: str
    matcher: str
    threshold: Mapping[str, Any] | None = None
    distance_ratio: float | None = None
    lookalikes: Mapping[str, Sequence[int]] = field(default_factory=dict)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def score(self) -> float | None:
        return None if self.best is None else float(self.best.score)

    def to_dict(self) -> dict[str, Any]:
        return {"matcher": self.matcher, "verdict": self.verdict,
                "score": self.score, "margin": None if self.margin is None else float(self.margin),
                "distance_ratio": None if self.distance_ratio is None else float(self.distance_ratio),
                "reason": self.reason, "threshold": None if self.threshold is None else dict(self.threshold),
                "lookalikes": {g: list(v) for g, v in self.lookalikes.items()},
                "candidates": [c.to_dict() for c in self.candidates]}


def lookalike_note(generator: str | None, lookalikes: Mapping[str, Sequence[int]] | None) -> str | None:
    """One sentence for a report: which left-out generators calibration saw named ``generator``; ``None``
    when there are none (or no generator was named)."""
    if generator is None or not lookalikes:
        return None
    parts = [f"{k} of {n} {g} runs" for g, (k, n) in sorted(lookalikes.items())]
    seen = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
    like = " or ".join(sorted(lookalikes))
    return (f"not exclusive: at calibration, with each generator left out of the references in turn, {seen} "
            f"were named {generator}; an unenrolled generator like {like} could be named {generator} too")


# -- similarity ----------------------------------------------------------------------------------
def similarity(a: Any, b: Any, alpha: float = 0.5) -> float:
    """He et al.'s similarity s = α·cos(a, b) + (1 − α)/(1 + ‖a − b‖₂); α = 1 is pure cosine.

    A zero curve has cosine 0 with anything (rather than NaN).
    """
    return float(similarity_matrix(np.asarray(a, float)[None, :], np.asarray(b, float)[None, :], alpha)[0, 0])


def similarity_matrix(a: np.ndarray, b: np.ndarray, alpha: float = 0.5,
                      distances: np.ndarray | None = None) -> np.ndarray:
    """Similarities of every row of ``a`` (q × L) with every row of ``b`` (r × L): a q × r array.
    ``distances``: their :func:`pairwise_distances`, when the caller has them already."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"curves of different lengths: {a.shape[1]} and {b.shape[1]} layers")
    na = np.linalg.norm(a, axis=1)[:, None]
    nb = np.linalg.norm(b, axis=1)[None, :]
    denom = na * nb
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, (a @ b.T) / np.where(denom > 0, denom, 1.0), 0.0)
    if distances is None:
        distances = pairwise_distances(a, b)
    return alpha * cos + (1.0 - alpha) / (1.0 + distances)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances of every row of ``a`` (q × L) to every row of ``b`` (r × L): a q × r array."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))


def generator_spreads(distances: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Each generator's spread: the median, over its curves, of the distance to its nearest other curve.

    ``distances``: the n × n Euclidean distances of the reference curves (:func:`pairwise_distances`);
    ``labels``: their generators. A generator with a single curve gets the pooled median over every
    generator's curves instead; when no generator has two curves, every spread is ``None``.
    """
    labels = np.asarray(labels, dtype=object)
    nearest = {g: _nearest_other(distances, np.flatnonzero(labels == g)) for g in {str(g) for g in labels}}
    return _spreads_from(nearest)


def _nearest_other(distances: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """For each of the curves ``idx`` (one generator's), the distance to its nearest other one of them;
    empty for fewer than two curves."""
    if len(idx) < 2:
        return np.empty(0)
    d = distances[np.ix_(idx, idx)].copy()
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def _spreads_from(nearest: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """:func:`generator_spreads` from each generator's nearest-other distances (:func:`_nearest_other`)."""
    pooled = np.concatenate([v for v in nearest.values()]) if nearest else np.empty(0)
    fallback = float(np.median(pooled)) if len(pooled) else None
    return {g: float(np.median(v)) if len(v) else fallback for g, v in nearest.items()}


def _ratio(distance: float, spread: float | None) -> float | None:
    """A distance in units of a spread (a zero spread: 0 for a zero distance, else infinite)."""
    if spread is None:
        return None
    if spread > 0:
        return float(distance / spread)
    return 0.0 if distance == 0 else math.inf


def references_digest(references: Sequence[EnrolledCurve]) -> str:
    """A hash of what a matcher was fitted on (generator, instance, curve), independent of order."""
    items = sorted((r.generator, r.instance, [None if v is None else float(v) for v in r.fingerprint.values])
                   for r in references)
    return sha256_json({"references": items})


def as_curve(curve: Any, digest: str | None = None) -> np.ndarray:
    """A query as a float vector; a :class:`Fingerprint` is checked against ``digest`` first."""
    if isinstance(curve, Fingerprint):
        if digest is not None and curve.protocol_digest != digest:
            raise ProtocolMismatch(f"refusing to compare a fingerprint of protocol {curve.protocol_digest[:19]}… "
                                   f"with references of protocol {digest[:19]}…")
        return curve.vector()
    arr = np.asarray(curve, dtype=np.float64).reshape(-1)
    return np.where(np.isfinite(arr), arr, 0.0)  # undefined values count as 0 (He et al.)


# -- matchers ------------------------------------------------------------------------------------
class Matcher:
    """Base class: ``fit(references)`` then ``attribute(curve)``.

    Subclasses implement :meth:`_fit` (arrays of curves, generator labels and instance ids) and
    :meth:`_rank` (one candidate per generator for one curve, any order). Options are keyword
    arguments of the constructor and are listed by :meth:`options`; every matcher takes
    ``open_set`` (bool, default True) and ``calibration`` (a recorded calibration to reuse when it was
    made on the same references, as :meth:`describe` gives it).
    """

    name = "matcher"

    def __init__(self, *, open_set: bool = True, calibration: Mapping[str, Any] | None = None):
        self.open_set = bool(open_set)
        self._given_calibration = dict(calibration) if calibration else None
        self.calibration: dict[str, Any] | None = None
        self.enrolled: list[EnrolledCurve] = []
        self.protocol_digest: str | None = None
        self.n_layers: int | None = None

    # options ----------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The options that define this matcher (what :meth:`clone` passes on)."""
        return {"open_set": self.open_set}

    def clone(self, **changes: Any) -> Matcher:
        opts = {**self.options(), **changes}
        new = type(self)(**opts)
        new.name = self.name
        return new

    # fitting ----------------------------------------------------------------------------------
    def fit(self, references: Sequence[EnrolledCurve]) -> Matcher:
        references = list(references)
        if not references:
            raise UsageError("no reference fingerprints to match against (enrol generators first)")
        digests = {r.fingerprint.protocol_digest for r in references}
        if len(digests) > 1:
            raise ProtocolMismatch("refusing to fit a matcher on fingerprints of different protocols: "
                                   + ", ".join(sorted(d[:19] + "…" for d in digests)))
        lengths = {len(r.fingerprint.values) for r in references}
        if len(lengths) > 1:
            raise UsageError(f"reference curves of different lengths: {sorted(lengths)}")
        self.enrolled = list(references)
        self.protocol_digest = digests.pop()
        self.n_layers = lengths.pop()
        x = np.stack([r.fingerprint.vector() for r in references])
        labels = np.array([r.generator for r in references], dtype=object)
        ids = [r.instance for r in references]
        self._fit(x, labels, ids)
        self._curves, self._curve_labels = x, labels
        self._spreads = generator_spreads(pairwise_distances(x, x), labels)
        self.calibration = None
        if self.open_set:
            given = self._given_calibration
            if (given and given.get("references_digest") == references_digest(references)
                    and given.get("rule") == CALIBRATION_RULE):
                self.calibration = {**given, "source": "recorded"}
            else:
                self.calibration = calibrate(self, references)
        return self

    def _fit(self, x: np.ndarray, labels: np.ndarray, ids: list[str]) -> None:
        raise NotImplementedError

    def _calibration_points(self, refs: list[EnrolledCurve]):
        """(answer points, unknown points, how held out, left out): points are (best score, margin, distance
        ratio) triples, see :func:`calibrate`; ``left out`` lists (generator left out, generator named,
        point) for each query whose generator was left out entirely (those points are among the unknown
        ones too). Subclasses may compute the same points faster."""
        return _generic_points(self, refs)

    def distance_ratio(self, curve: Any, generator: str) -> float | None:
        """How far ``curve`` lies from ``generator``'s nearest reference curve, in units of that
        generator's spread (:func:`generator_spreads`); ``None`` when no spread can be measured."""
        vec = self._query(curve)
        own = self._curves[self._curve_labels == generator]
        if not len(own):
            raise UsageError(f"no reference curve of generator {generator!r}")
        return _ratio(float(pairwise_distances(vec[None, :], own).min()), self._spreads[generator])

    def _rank(self, curve: np.ndarray) -> list[Candidate]:
        raise NotImplementedError

    @property
    def generators(self) -> list[str]:
        return sorted({r.generator for r in self.enrolled})

    # attributing ------------------------------------------------------------------------------
    def _query(self, curve: Any) -> np.ndarray:
        if self.n_layers is None:
            raise UsageError("the matcher has not been fitted (call fit(references) first)")
        vec = as_curve(curve, self.protocol_digest)
        if vec.shape[0] != self.n_layers:
            raise UsageError(f"the query curve has {vec.shape[0]} values, the references {self.n_layers} "
                             "(computed under another protocol?)")
        return vec

    def rank(self, curve: Any) -> list[Candidate]:
        """One candidate per generator, best first (ties by name)."""
        return sorted(self._rank(self._query(curve)), key=lambda c: (-c.score, c.generator))

    def attribute(self, curve: Any) -> Attribution:
        vec = self._query(curve)
        candidates = tuple(self.rank(vec))
        best = candidates[0]
        margin = float(best.score - candidates[1].score) if len(candidates) > 1 else None
        ratio = self.distance_ratio(vec, best.generator)
        cal = self.calibration

        def answer(verdict: str | None, reason: str, threshold: Mapping[str, Any] | None,
                   lookalikes: Mapping[str, Sequence[int]] | None = None) -> Attribution:
            return Attribution(candidates, verdict, margin, reason, self.name, threshold, ratio, lookalikes or {})

        if not self.open_set:
            return answer(best.generator, f"closest reference generator (closed set; score {best.score:.4f})", None)
        if cal is None or not cal.get("calibrated"):
            why = (cal or {}).get("reason", "not calibrated")
            return answer(best.generator, f"closest reference generator; open-set thresholds unavailable: {why}",
                          _threshold_info(cal))
        info = _threshold_info(cal)
        n_refs = f"calibrated on {cal['n_references']} references"
        t_score, t_margin, t_ratio = _thresholds(cal)
        m = math.inf if margin is None else margin
        if best.score < t_score:
            return answer(None, f"unknown: best score {best.score:.4f} ({best.generator}) is below the threshold "
                                f"{t_score:.4f} {n_refs}", info)
        if m < t_margin:
            return answer(None, f"unknown: {best.generator} leads {candidates[1].generator} by {m:.4f}, less than "
                                f"the margin threshold {t_margin:.4f} {n_refs}", info)
        if ratio is not None and ratio > t_ratio:
            return answer(None, f"unknown: the query lies {ratio:.2f}× {best.generator}'s spread from its nearest "
                                f"{best.generator} curve, beyond the threshold {t_ratio:.2f}× {n_refs}", info)
        passed = [f"score {best.score:.4f} ≥ {t_score:.4f}"] if t_score > -math.inf else []
        if t_margin > -math.inf and margin is not None:
            passed.append(f"margin {margin:.4f} ≥ {t_margin:.4f}")
        if t_ratio < math.inf and ratio is not None:
            passed.append(f"distance {ratio:.2f}× {best.generator}'s spread ≤ {t_ratio:.2f}×")
        reason = (("passes the open-set thresholds: " + " and ".join(passed)) if passed else
                  "no open-set threshold applies") + f" ({n_refs})"
        return answer(best.generator, reason, info, (cal.get("lookalikes") or {}).get(best.generator))

    def describe(self) -> dict[str, Any]:
        """What a report records about the matcher: its name, options and open-set calibration."""
        return {"name": self.name, "options": {k: v for k, v in self.options().items()},
                "n_references": len(self.enrolled), "generators": self.generators,
                "references_digest": references_digest(self.enrolled) if self.enrolled else None,
                "open_set": self.calibration}


def _threshold_info(cal: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if cal is None:
        return None
    return {k: cal.get(k) for k in ("calibrated", *THRESHOLDS, "n_references", "source")}


def _thresholds(cal: Mapping[str, Any]) -> tuple[float, float, float]:
    """(score, margin, distance ratio) thresholds of a calibration; one not applied (null) never rejects."""
    def get(key: str, default: float) -> float:
        return default if cal.get(key) is None else float(cal[key])

    return get("score", -math.inf), get("margin", -math.inf), get("distance_ratio", math.inf)


class SimilarityMatcher(Matcher):
    """1-nearest-neighbour under He et al.'s similarity; a generator scores its best instance."""

    name = "alpha"

    def __init__(self, *, alpha: float = 0.5, **kwargs: Any):
        super().__init__(**kwargs)
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
        self.alpha = alpha

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().options()}

    def _fit(self, x, labels, ids):
        self._x, self._labels, self._ids = x, labels, ids

    def _calibration_points(self, refs):
        """Exact leave-one-out and leave-generator-out from one similarity matrix (no refits)."""
        x = np.stack([r.fingerprint.vector() for r in refs])
        labels = np.array([r.generator for r in refs], dtype=object)
        gens = sorted(set(labels))
        dist = pairwise_distances(x, x)
        sims = similarity_matrix(x, x, self.alpha, distances=dist)
        np.fill_diagonal(sims, -np.inf)
        best = np.stack([np.where(labels == g, sims, -np.inf).max(axis=1) for g in gens], axis=1)  # n × G
        # Leaving curves out changes only their own generator's nearest-other distances (and so the
        # pooled fallback): the rest are computed once.
        nearest = {g: _nearest_other(dist, np.flatnonzero(labels == g)) for g in gens}
        without_generator = {g: _spreads_from({h: v for h, v in nearest.items() if h != g}) for g in gens}
        answer, unknown, left_out = [], [], []
        for i, own in enumerate(labels):
            k = gens.index(own)
            ranked = sorted(((-best[i, j], gens[j]) for j in range(len(gens)) if np.isfinite(best[i, j])))
            if not ranked:
                continue
            cands = [Candidate(g, -s) for s, g in ranked]
            keep = np.arange(len(labels)) != i
            rest = np.flatnonzero(keep & (labels == own))
            spreads = _spreads_from({**{h: v for h, v in nearest.items() if h != own},
                                     **({own: _nearest_other(dist, rest)} if len(rest) else {})})

            def ratio(g: str, spreads: Mapping[str, float | None]) -> float | None:
                return _ratio(float(dist[i, keep & (labels == g)].min()), spreads[g])

            ok = np.isfinite(best[i, k]) and cands[0].generator == own
            (answer if ok else unknown).append(_point(cands, ratio(cands[0].generator, spreads)))
            others = [c for c in cands if c.generator != own]
            if others:
                point = _point(others, ratio(others[0].generator, without_generator[own]))
                unknown.append(point)
                left_out.append((own, others[0].generator, point))
        return answer, unknown, "leave-one-out (exact, from the similarity matrix)", left_out

    def _rank(self, curve):
        sims = similarity_matrix(curve[None, :], self._x, self.alpha)[0]
        best: dict[str, Candidate] = {}
        for s, g, i in zip(sims, self._labels, self._ids):
            if g not in best or s > best[g].score:
                best[g] = Candidate(str(g), float(s), i)
        return list(best.values())


class SVMMatcher(Matcher):
    """A support-vector classifier over standardised curves (scikit-learn), one-vs-rest per generator.

    A generator's score is its one-vs-rest decision value (positive: on its side of the boundary).
    Options: ``kernel`` ("rbf" by default, "linear", …), ``C`` (10 by default), ``gamma`` (scikit-learn's
    "scale" by default). Needs at least two generators.

    Why RBF: its decision values fall back to the bias far from every reference, so a curve of an
    unenrolled generator scores low and the open-set threshold can catch it; a linear SVM's values grow
    without bound on one side of a hyperplane (leaving one synthetic generator out: 16/16 unknown with
    RBF, 4/16 with linear). C = 10 was picked on the paper's 18 curves (LOO 16/18 for C = 10 and 100,
    15/18 for C = 1 linear), so treat its LOO figure there as optimistic.
    """

    name = "svm"

    def __init__(self, *, kernel: str = "rbf", C: float = 10.0, gamma: str | float = "scale", **kwargs: Any):
        super().__init__(**kwargs)
        if kernel not in ("linear", "rbf", "poly", "sigmoid"):
            raise UsageError(f"svm kernel must be linear, rbf, poly or sigmoid; got {kernel!r}")
        if float(C) <= 0:
            raise UsageError(f"svm C must be positive, got {C}")
        if not (gamma in ("scale", "auto") or (isinstance(gamma, (int, float)) and gamma > 0)):
            raise UsageError(f"svm gamma must be 'scale', 'auto' or a positive number; got {gamma!r}")
        self.kernel, self.C, self.gamma = kernel, float(C), gamma

    def options(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "C": self.C, "gamma": self.gamma, **super().options()}

    def _fit(self, x, labels, ids):
        from sklearn.svm import SVC

        labels = np.array([str(v) for v in labels])
        classes = sorted({str(v) for v in labels})
        if len(classes) < 2:
            raise UsageError(f"the svm matcher needs at least two generators; the references hold {len(classes)}")
        # standardisation (a constant layer is left unscaled), then one binary SVC per generator
        self._mean = x.mean(axis=0)
        sd = x.std(axis=0)
        self._scale = np.where(sd > 0, sd, 1.0)
        z = (x - self._mean) / self._scale
        self._classes = classes
        self._models = [SVC(kernel=self.kernel, C=self.C, gamma=self.gamma).fit(z, labels == g) for g in classes]
        if self.kernel == "linear":  # decision values without scikit-learn's per-call checks
            self._w = np.stack([m.coef_[0] for m in self._models])
            self._b = np.array([m.intercept_[0] for m in self._models])

    def _rank(self, curve):
        z = ((curve - self._mean) / self._scale)[None, :]
        if self.kernel == "linear":
            values = self._w @ z[0] + self._b
        else:
            values = [m.decision_function(z)[0] for m in self._models]
        return [Candidate(g, float(v), None) for g, v in zip(self._classes, values)]


# -- open-set calibration ------------------------------------------------------------------------
def _point(candidates: Sequence[Candidate], ratio: float | None) -> tuple[float, float, float]:
    """A calibration point: (best score, margin, distance ratio); no runner-up: an infinite margin;
    no spread to measure: a NaN ratio, which no threshold rejects."""
    score = candidates[0].score
    margin = candidates[0].score - candidates[1].score if len(candidates) > 1 else math.inf
    return float(score), float(margin), math.nan if ratio is None else float(ratio)


LOO_LIMIT = 40  # above this many references, the generic calibration uses 10 folds instead of leave-one-out
FOLDS = 10


def calibrate(matcher: Matcher, references: Sequence[EnrolledCurve]) -> dict[str, Any]:
    """Open-set thresholds for ``matcher`` from ``references`` alone (see the module docstring)."""
    refs = list(references)
    base = {"rule": CALIBRATION_RULE, "n_references": len(refs), "references_digest": references_digest(refs),
            "source": "calibrated at fit"}
    answer, unknown, how, left_out = matcher._calibration_points(refs)
    base.update({"held_out": how, "n_answer": len(answer), "n_unknown": len(unknown)})
    if not answer:
        return {**base, "calibrated": False, "score": None, "margin": None,
                "reason": "no generator has two instances that leave-one-out attributes right"}
    if not unknown:
        return {**base, "calibrated": False, "score": None, "margin": None,
                "reason": "too few generators to simulate an unknown one"}
    t_score, t_margin, t_ratio, ba, acc_answer, acc_unknown = _best_thresholds(np.array(answer), np.array(unknown))
    # JSON-ready: a threshold that is not applied (±inf) is recorded as null
    return {**base, "calibrated": True, "score": _finite_or_none(t_score), "margin": _finite_or_none(t_margin),
            "distance_ratio": _finite_or_none(t_ratio),
            "balanced_accuracy": ba, "answered_right": acc_answer, "unknown_right": acc_unknown,
            "lookalikes": _lookalikes(left_out, t_score, t_margin, t_ratio)}


def _lookalikes(left_out, t_score: float, t_margin: float, t_ratio: float) -> dict[str, dict[str, list[int]]]:
    """{named generator: {left-out generator: [runs the thresholds let through as named, its runs]}}: which
    generators, missing from the references, were taken for which enrolled one."""
    runs: dict[str, int] = {}
    passed: dict[str, dict[str, int]] = {}
    for own, named, (score, margin, ratio) in left_out:
        runs[own] = runs.get(own, 0) + 1
        if score >= t_score and margin >= t_margin and not ratio > t_ratio:  # a NaN ratio passes
            passed.setdefault(named, {})
            passed[named][own] = passed[named].get(own, 0) + 1
    return {g: {o: [k, runs[o]] for o, k in sorted(d.items())} for g, d in sorted(passed.items())}


def _generic_points(matcher: Matcher, refs: list[EnrolledCurve]):
    """Refit a closed-set copy with each instance (or fold) held out, then with each generator held out."""
    answer: list[tuple[float, float, float]] = []
    unknown: list[tuple[float, float, float]] = []
    left_out: list[tuple[str, str, tuple[float, float, float]]] = []
    probe = matcher.clone(open_set=False)
    need = _min_generators(probe)
    n = len(refs)
    if n <= LOO_LIMIT:
        folds, how = [[i] for i in range(n)], "leave-one-out"
    else:
        order = sorted(range(n), key=lambda i: (refs[i].generator, refs[i].instance))
        folds = [order[k::FOLDS] for k in range(FOLDS)]
        how = f"{FOLDS}-fold (more than {LOO_LIMIT} references)"
    def fitted(rest: list[EnrolledCurve]) -> bool:
        # a split that leaves too few generators (or that the matcher cannot fit) is skipped
        if len({x.generator for x in rest}) < need:
            return False
        try:
            probe.fit(rest)
        except UsageError:
            return False
        return True

    for fold in folds:
        held = set(fold)
        rest = [r for i, r in enumerate(refs) if i not in held]
        if not fitted(rest):
            continue
        present = {x.generator for x in rest}
        for i in fold:
            r = refs[i]
            cands = probe.rank(r.fingerprint)
            ok = r.generator in present and cands[0].generator == r.generator
            (answer if ok else unknown).append(_point(cands, probe.distance_ratio(r.fingerprint, cands[0].generator)))
    for g in sorted({r.generator for r in refs}):
        if not fitted([x for x in refs if x.generator != g]):
            continue
        for r in refs:
            if r.generator == g:
                cands = probe.rank(r.fingerprint)
                point = _point(cands, probe.distance_ratio(r.fingerprint, cands[0].generator))
                unknown.append(point)
                left_out.append((g, cands[0].generator, point))
    return answer, unknown, how, left_out


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _min_generators(matcher: Matcher) -> int:
    return 2 if isinstance(matcher, SVMMatcher) else 1


def _cuts(values: np.ndarray, limit: int = 64) -> np.ndarray:
    """Candidate lower-bound thresholds for ``values``: -inf (no threshold) and the midpoints between
    consecutive distinct finite values (at most ``limit``, at quantiles, when there are more)."""
    finite = np.unique(values[np.isfinite(values)])
    mids = (finite[:-1] + finite[1:]) / 2 if len(finite) > 1 else np.array([])
    if len(mids) > limit:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, limit)))
    return np.concatenate([[-math.inf], mids])


def _best_thresholds(answer: np.ndarray, unknown: np.ndarray):
    """Grid search over (score, margin, distance ratio) cuts; among the triples with the best balanced
    accuracy, a threshold that need not be applied is not (±inf; decided for the margin, then the score,
    then the ratio), else the one in the middle of the tying range (for separable values: halfway between
    the closest "unknown" and "answer" points; for the ratio, halfway on a log scale). Returns (score,
    margin, ratio, balanced accuracy, share of answers kept, share of unknowns caught)."""
    def lower_bounds(points: np.ndarray) -> np.ndarray:
        # every test as "value ≥ cut": the ratio is an upper bound, so it is negated; NaN passes
        closeness = np.where(np.isnan(points[:, 2]), math.inf, -points[:, 2])
        return np.stack([points[:, 0], points[:, 1], closeness], axis=1)

    a, u = lower_bounds(answer), lower_bounds(unknown)
    both = np.concatenate([a, u])
    cuts = [_cuts(both[:, k]) for k in range(3)]

    def passing(points: np.ndarray, ratio_cut: float) -> np.ndarray:   # score cuts × margin cuts × points
        return ((points[None, None, :, 0] >= cuts[0][:, None, None])
                & (points[None, None, :, 1] >= cuts[1][None, :, None])
                & (points[None, None, :, 2] >= ratio_cut))

    table = []
    for tr in cuts[2]:
        acc_a = passing(a, tr).mean(axis=2)
        acc_u = 1.0 - passing(u, tr).mean(axis=2)
        ba = 0.5 * (acc_a + acc_u)
        i, j = np.nonzero(ba >= ba.max() - 1e-12)
        table.extend((float(cuts[0][p]), float(cuts[1][q]), float(tr), float(ba[p, q]), float(acc_a[p, q]),
                      float(acc_u[p, q])) for p, q in zip(i, j))
    best_ba = max(row[3] for row in table)
    ties = [row for row in table if row[3] >= best_ba - 1e-12]

    def middle(values, scale=lambda v: v):
        values = sorted(set(values))
        if values[0] == -math.inf:
            return -math.inf
        mid = (scale(values[0]) + scale(values[-1])) / 2
        return min(values, key=lambda v: (abs(scale(v) - mid), v))

    tm = middle([row[1] for row in ties])
    ties = [row for row in ties if row[1] == tm]
    ts = middle([row[0] for row in ties])
    ties = [row for row in ties if row[0] == ts]
    # a ratio's middle is geometric: halfway between 1.5× and 24× is 6×, not 12.75×
    tr = middle([row[2] for row in ties], lambda v: math.log(max(-v, 1e-12)))
    row = next(row for row in ties if row[2] == tr)
    return row[0], row[1], -row[2], *row[3:]


# -- construction --------------------------------------------------------------------------------
def make_matcher(name: str, **options: Any) -> Matcher:
    """A matcher by its registered name (bundled: alpha, cosine, svm), through the plugin host."""
    from forensics.plugins import host

    provided = host().get("matchers", name)
    try:
        matcher = provided.obj(**options)
    except TypeError as exc:
        raise UsageError(f"matcher {name!r} does not take these options: {exc}") from None
    if not isinstance(matcher, Matcher):
        raise UsageError(f"matcher {name!r} (plugin {provided.plugin!r}) did not return a forensics Matcher")
    matcher.name = name
    return matcher


def available_matchers() -> list[str]:
    from forensics.plugins import host

    return sorted(host().collect("matchers"))


# -- evaluation ----------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Leave-one-out results of one matcher on one protocol's references."""

    matcher: str
    options: dict[str, Any]
    n: int
    correct: int
    labels: list[str]
    confusion: list[list[int]]   # rows: true generator, columns: predicted (closed-set top candidate)
    predictions: list[dict[str, Any]]
    open_set: dict[str, Any] | None = None
    leave_generator_out: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    error: str | None = None

    @property
    def loo_accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {"matcher": self.matcher, "options": self.options, "loo_accuracy": self.loo_accuracy,
                "n": self.n, "correct": self.correct,
                "confusion": {"labels": self.labels, "matrix": self.confusion,
                              "rows": "true generator", "columns": "predicted generator"},
                "open_set": self.open_set, "leave_generator_out": self.leave_generator_out,
                "split": self.split, "error": self.error, "predictions": self.predictions}


def _factory(matcher: str | Matcher | Callable[[], Matcher], options: Mapping[str, Any]) -> Callable[[], Matcher]:
    if isinstance(matcher, Matcher):
        return lambda: matcher.clone(**options)
    if isinstance(matcher, str):
        return lambda: make_matcher(matcher, **options)
    return matcher


def leave_one_out(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha",
                  **options: Any) -> Evaluation:
    """Attribute every instance with itself left out of the references.

    ``correct`` counts the closed-set answer (the top candidate), as the paper does; ``open_set``
    counts how the open-set verdicts came out (answered right, answered wrong, unknown).
    """
    refs = list(references)
    make = _factory(matcher, options)
    labels = sorted({r.generator for r in refs})
    index = {g: i for i, g in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    predictions = []
    correct = right = wrong = unknown = 0
    name, opts = None, {}
    open_set_used = False
    for i, r in enumerate(refs):
        rest = refs[:i] + refs[i + 1:]
        m = make()
        name, opts = m.name, m.options()
        try:
            m.fit(rest)
            result = m.attribute(r.fingerprint)
        except UsageError as exc:
            return Evaluation(name, opts, len(refs), 0, labels, confusion, [], error=str(exc))
        open_set_used = open_set_used or m.open_set
        top = result.candidates[0].generator
        confusion[index[r.generator]][index[top]] += 1
        correct += top == r.generator
        if result.verdict is None:
            unknown += 1
        elif result.verdict == r.generator:
            right += 1
        else:
            wrong += 1
        predictions.append({"generator": r.generator, "instance": r.instance, "predicted": top,
                            "score": result.candidates[0].score, "margin": result.margin,
                            "distance_ratio": result.distance_ratio, "verdict": result.verdict})
    open_set = ({"answered_right": right, "answered_wrong": wrong, "unknown": unknown}
                if open_set_used else None)
    return Evaluation(name or str(matcher), opts, len(refs), correct, labels, confusion, predictions, open_set)


def calibration_stability(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha",
                          **options: Any) -> dict[str, Any]:
    """How far each open-set threshold moves when one reference is left out of the calibration.

    The thresholds are cut between few points, so one run more or less can move them: each reference
    is dropped in turn and :func:`calibrate` rerun on the rest. Per threshold: the full calibration's
    value, the lowest and highest over the drops, and how many drops left it unused (null); per drop,
    the run left out and the thresholds it gave."""
    refs = list(references)
    make = _factory(matcher, options)
    full = calibrate(make(), refs)
    runs = []
    for i, r in enumerate(refs):
        c = calibrate(make(), refs[:i] + refs[i + 1:])
        runs.append({"left_out": f"{r.generator}/{r.instance}", **{k: c.get(k) for k in THRESHOLDS}})
    summary = {}
    for k in THRESHOLDS:
        used = [run[k] for run in runs if run[k] is not None]
        summary[k] = {"full": full.get(k), "min": min(used) if used else None, "max": max(used) if used else None,
                      "unused": len(runs) - len(used)}
    return {"n_references": len(refs), "thresholds": summary, "runs": runs}


def leave_generator_out(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha",
                        **options: Any) -> dict[str, Any]:
    """Leave each whole generator out and attribute its instances: the open-set test.

    Every such instance should come out "unknown"; ``unknown_rate`` is the fraction that did.
    """
    refs = list(references)
    make = _factory(matcher, options)
    per: dict[str, Any] = {}
    total = unknown = 0
    for g in sorted({r.generator for r in refs}):
        rest = [r for r in refs if r.generator != g]
        held = [r for r in refs if r.generator == g]
        m = make()
        try:
            m.fit(rest)
        except UsageError as exc:
            per[g] = {"n": len(held), "error": str(exc)}
            continue
        verdicts = [m.attribute(r.fingerprint).verdict for r in held]
        n_unknown = sum(v is None for v in verdicts)
        named: dict[str, int] = {}
        for v in verdicts:
            if v is not None:
                named[v] = named.get(v, 0) + 1
        per[g] = {"n": len(held), "unknown": n_unknown, "attributed_to": named}
        total += len(held)
        unknown += n_unknown
    return {"n": total, "unknown": unknown, "unknown_rate": unknown / total if total else None,
            "per_generator": per}


def holdout(references: Sequence[EnrolledCurve], matcher: str | Matcher = "alpha",
            is_query: Callable[[EnrolledCurve], bool] | None = None, **options: Any) -> dict[str, Any]:
    """Fit on the references that are not queries, attribute the queries (the paper's split).

    By default the queries are the instances whose provenance ``role`` is ``test_batch``.
    """
    if is_query is None:
        is_query = lambda r: r.provenance.get("role") == "test_batch"  # noqa: E731
    refs = list(references)
    queries = [r for r in refs if is_query(r)]
    train = [r for r in refs if not is_query(r)]
    if not queries or not train:
        raise UsageError("a hold-out split needs both query and reference instances")
    m = _factory(matcher, options)()
    m.fit(train)
    rows = []
    for q in queries:
        res = m.attribute(q.fingerprint)
        rows.append({"generator": q.generator, "instance": q.instance, "predicted": res.candidates[0].generator,
                     "verdict": res.verdict, "score": res.candidates[0].score, "margin": res.margin,
                     "distance_ratio": res.distance_ratio})
    correct = sum(r["predicted"] == r["generator"] for r in rows)
    return {"n": len(rows), "correct": correct, "accuracy": correct / len(rows), "n_references": len(train),
            "answered_right": sum(r["verdict"] == r["generator"] for r in rows),
            "unknown": sum(r["verdict"] is None for r in rows), "queries": rows}
