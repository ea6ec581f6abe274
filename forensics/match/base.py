"""The matcher contract, and the open-set logic every matcher shares.

A matcher is fitted on the enrolled curves of one protocol and then attributes query curves::

    m = make_matcher("alpha")            # He et al.'s 1-NN, s = α·cos + (1 − α)/(1 + L2), α = 0.5
    m.fit(registry.enrolled("he2024-cifar10-vitb16"))
    result = m.attribute(curve)          # Attribution: candidates best first, verdict (None = unknown)

A plugin's matcher subclasses :class:`Matcher` and implements two methods: :meth:`Matcher.fit_curves`
(learn from the curves as arrays) and :meth:`Matcher.candidates` (one candidate per generator for one
query). Everything else has a default here: the checks on references and queries, ranking, the open-set
verdict, calibration by refitting (:meth:`Matcher.calibration_points`, which a matcher may override with
a faster exact computation), the options, a clone and a description for reports. A matcher that needs
more than one generator says so in :attr:`Matcher.min_generators`.

Every matcher ranks one candidate per generator (the best score any of its instances gets, or the
classifier's score of the class). With ``open_set=True`` (the default) a matcher also says "unknown"
(verdict ``None``) when the best candidate is not close enough, not far enough ahead of the runner-up,
or lies farther from the named generator's curves than they lie from each other. That last test is the
*distance ratio*: the Euclidean distance from the query to the named generator's nearest curve, divided
by the generator's *spread* (the median distance from one of its curves to the nearest other; see
:func:`forensics.match.generator_spreads`). It is the same for every matcher, since it looks at the
curves, not at the matcher's score, and it scales with each generator: a generator whose runs vary a lot
accepts a query farther away than one whose runs agree.

The three thresholds are calibrated at :meth:`Matcher.fit` from the references alone (see
:mod:`forensics.match.calibration`) and recorded in :meth:`Matcher.describe` and in every
:class:`~forensics.match.Attribution`. Some left-out generators pass those thresholds anyway, named as an
enrolled generator whose runs they resemble; calibration records them as that generator's *lookalikes*,
and every verdict naming it carries them: such a verdict cannot rule out an unenrolled generator like
them.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from forensics.errors import ForensicsError, PluginError, ProtocolMismatch, UsageError
from forensics.match.calibration import (
    CALIBRATION_RULE, DEFAULT_OPERATING_POINT, at_operating_point, calibrate, check_operating_point, confused,
    held_out_points, pooled_calibration, refit_points, threshold_info, thresholds,
)
from forensics.match.family import FamilyDiscriminant, fit_families
from forensics.match.similarity import generator_spreads, in_spreads, pairwise_distances, query_spreads
from forensics.match.types import (
    Attribution, CalibrationPoints, Candidate, EnrolledCurve, as_curve, references_digest,
)

_COUNTS = {1: "one", 2: "two", 3: "three", 4: "four"}


class Matcher(abc.ABC):
    """The matcher contract: ``fit(references)``, then ``rank(curve)`` and ``attribute(curve)``.

    Subclasses implement :meth:`fit_curves` and :meth:`candidates`. Options are keyword arguments of
    the constructor and :meth:`options` returns them, so that ``type(m)(**m.options())`` builds the same
    matcher (what :meth:`clone` does); every matcher takes ``open_set`` (bool, default True),
    ``calibration`` (a recorded calibration to reuse when it was made on the same references, as
    :meth:`describe` gives it under ``open_set``) and ``layer_weights`` (one factor per layer that every
    curve, reference or query, is multiplied by before it is compared: how a batch of another size or
    condition is matched with each layer in units of its noise, weighted by what it tells apart, see
    :mod:`forensics.match.batchsize`;
    default none).

    After :meth:`fit`: ``enrolled`` (the references), ``protocol_digest``, ``n_layers``,
    ``calibration`` (the open-set calibration, ``None`` for a closed-set matcher) and ``held_out_points``
    (the :class:`~forensics.match.CalibrationPoints` it was calibrated on; ``None`` when a recorded
    calibration was reused).
    """

    name: str = "matcher"
    """The registered name (set by :func:`make_matcher`); recorded in every attribution."""
    min_generators: int = 1
    """The fewest generators the matcher can be fitted on (a classifier needs two)."""
    reads_curves: bool = True
    """Whether it ranks any curve of the protocol's layers, as the resampling rule needs (a resample's curve is
    new); False for one that looks up what is recorded of known image sets instead (the ``fid`` baseline)."""

    def __init__(self, *, open_set: bool = True, calibration: Mapping[str, Any] | None = None,
                 layer_weights: Sequence[float] | None = None):
        self.open_set = bool(open_set)
        self.layer_weights = _weights(layer_weights)
        self._given_calibration = dict(calibration) if calibration else None
        self.calibration: dict[str, Any] | None = None
        self.held_out_points: CalibrationPoints | None = None
        self.enrolled: list[EnrolledCurve] = []
        self.protocol_digest: str | None = None
        self.n_layers: int | None = None
        self._families: dict[str, str] = {}
        self._discriminants: dict[str, FamilyDiscriminant] = {}

    # -- what a matcher implements ----------------------------------------------------------------
    @abc.abstractmethod
    def fit_curves(self, curves: np.ndarray, labels: np.ndarray, instances: list[str]) -> None:
        """Learn from the references: ``curves`` (n × L floats, undefined values as 0), ``labels`` (their
        generators, an object array) and ``instances`` (their instance ids). Raise
        :class:`~forensics.errors.UsageError` for references the matcher cannot be fitted on."""

    @abc.abstractmethod
    def candidates(self, curve: np.ndarray) -> list[Candidate]:
        """One :class:`~forensics.match.Candidate` per enrolled generator for the query ``curve`` (L floats),
        in any order; a higher score is a closer match."""

    def calibration_points(self, references: Sequence[EnrolledCurve]) -> CalibrationPoints:
        """The held-out queries open-set calibration learns from (see
        :class:`~forensics.match.CalibrationPoints`). By default a closed-set clone is refitted with each
        instance, then each generator, held out (:func:`forensics.match.calibration.refit_points`); a
        matcher may compute the same points faster."""
        return refit_points(self, references)

    def options(self) -> dict[str, Any]:
        """The options that define this matcher (what :meth:`clone` passes on); subclasses add theirs."""
        opts: dict[str, Any] = {"open_set": self.open_set}
        if self.layer_weights is not None:
            opts["layer_weights"] = [float(w) for w in self.layer_weights]
        return opts

    # -- what the core calls ----------------------------------------------------------------------
    def clone(self, **changes: Any) -> Matcher:
        """A new, unfitted matcher of the same kind and name with these options changed."""
        opts = {**self.options(), **changes}
        new = type(self)(**opts)
        new.name = self.name
        return new

    def fit(self, references: Sequence[EnrolledCurve],
            queries: Mapping[str, Sequence[np.ndarray]] | None = None) -> Matcher:
        """Fit on one protocol's enrolled curves, then calibrate the open-set thresholds (or reuse the
        recorded calibration when it was made on these references under the current rule). ``queries``:
        the curves that stand for each instance when it is held out in calibration (by instance id; see
        :func:`~forensics.match.calibration.calibrate`); given, calibration is always computed."""
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
        if self.layer_weights is not None and len(self.layer_weights) != self.n_layers:
            raise UsageError(f"{len(self.layer_weights)} layer weights for curves of {self.n_layers} layers")
        x = self.weighted_curves(references)
        labels = np.array([r.generator for r in references], dtype=object)
        n_generators = len({str(g) for g in labels})
        if n_generators < self.min_generators:
            need = _COUNTS.get(self.min_generators, str(self.min_generators))
            raise UsageError(f"the {self.name} matcher needs at least {need} generators; the references hold "
                             f"{n_generators}: enrol another, or choose another matcher")
        self._own("fit", lambda: self.fit_curves(x, labels, [r.instance for r in references]))
        # a family is what two or more enrolled generators share
        named = {r.generator: r.family for r in references if r.family}
        shared = {f for f in named.values() if sum(v == f for v in named.values()) > 1}
        self._families = {g: f for g, f in named.items() if f in shared}
        self._curves, self._curve_labels = x, labels
        self._discriminants = {}
        if queries is None:
            self._spreads = generator_spreads(pairwise_distances(x, x), labels)
        else:  # the spread a query of one batch sees (the references are means of several)
            weighted = {k: [self._query(q) for q in v] for k, v in queries.items()}
            self._spreads = query_spreads(x, labels, [r.instance for r in references], weighted)
            if self.open_set and self._families:  # what tells a family's members apart at this batch size
                self._discriminants = fit_families(self._families, references, weighted)
        self.calibration, self.held_out_points = None, None
        if self.open_set:
            given = self._given_calibration
            if (queries is None and given and given.get("references_digest") == references_digest(references)
                    and given.get("rule") == CALIBRATION_RULE):
                self.calibration = at_operating_point({**given, "source": "recorded"}, DEFAULT_OPERATING_POINT)
            else:
                self.held_out_points = held_out_points(self, references, queries)
                self.calibration = calibrate(self, references, queries, self.held_out_points)
        return self

    def at_operating_point(self, point: str) -> Matcher:
        """This fitted matcher answering at another operating point (a copy sharing its fit): its verdicts
        use the thresholds calibration chose for ``point`` (:data:`~forensics.match.calibration.OPERATING_POINTS`;
        ``balanced`` is what :meth:`fit` answers at). A one-line error when the calibration records no
        thresholds for it (one recorded before operating points existed: recalibrate)."""
        other = copy.copy(self)
        if self.calibration is not None:
            other.calibration = at_operating_point(self.calibration, point)
        else:
            check_operating_point(point)
        return other

    def with_pooled_thresholds(self, pooled: Mapping[str, Any]) -> Matcher:
        """This fitted matcher answering with the thresholds of a pooled calibration (a copy sharing its
        fit; :func:`forensics.match.calibration.pooled_calibration`): one triple for every (condition,
        batch size) instead of its own. A closed-set matcher is returned as it is."""
        other = copy.copy(self)
        if self.open_set and self.calibration is not None:
            other.calibration = pooled_calibration(self.calibration, pooled, self.held_out_points)
        return other

    @property
    def generators(self) -> list[str]:
        return sorted({r.generator for r in self.enrolled})

    def distance_ratio(self, curve: Any, generator: str) -> float | None:
        """How far ``curve`` lies from ``generator``'s nearest reference curve, in units of that
        generator's spread (:func:`~forensics.match.generator_spreads`); ``None`` when no spread can be
        measured."""
        vec = self._query(curve)
        own = self._curves[self._curve_labels == generator]
        if not len(own):
            raise UsageError(f"no reference curve of generator {generator!r}")
        return in_spreads(float(pairwise_distances(vec[None, :], own).min()), self._spreads[generator])

    def weighted_curves(self, references: Sequence[EnrolledCurve]) -> np.ndarray:
        """The references' curves as the matcher compares them (n × L): undefined values as 0, each layer
        times its :attr:`layer_weights` when the matcher has them."""
        x = np.stack([r.fingerprint.vector() for r in references])
        return x if self.layer_weights is None else x * self.layer_weights

    def _query(self, curve: Any) -> np.ndarray:
        if self.n_layers is None:
            raise UsageError("the matcher has not been fitted (call fit(references) first)")
        vec = as_curve(curve, self.protocol_digest)
        if vec.shape[0] != self.n_layers:
            raise UsageError(f"the query curve has {vec.shape[0]} values, the references {self.n_layers} "
                             "(computed under another protocol?)")
        return vec if self.layer_weights is None else vec * self.layer_weights

    def rank(self, curve: Any) -> list[Candidate]:
        """One candidate per generator, best first (ties by name). A score that is not a finite number (a
        matcher plugin's fault, which no ranking can order) is a :class:`PluginError` naming the matcher."""
        query = self._query(curve)
        found = self._own("rank", lambda: self.candidates(query))
        if not isinstance(found, (list, tuple)) or not found or not all(isinstance(c, Candidate) for c in found):
            raise PluginError(f"the {self.name} matcher gave {type(found).__name__} {str(found)[:40]!r}, not one "
                              "Candidate per generator: the matcher is broken; choose another (`forensics plugins` "
                              "lists them)")
        bad = [c for c in found if not isinstance(c.score, (int, float, np.floating)) or not math.isfinite(c.score)]
        if bad:
            raise PluginError(f"the {self.name} matcher scored {bad[0].generator} {bad[0].score!r}, not a finite "
                              "number: the matcher is broken; choose another (`forensics plugins` lists them)")
        return sorted(found, key=lambda c: (-c.score, c.generator))

    def _own(self, what: str, call: Any) -> Any:
        """``call()``: the matcher's own code (``fit_curves``, ``candidates``), whose failure that is not the
        tool's own error is a :class:`PluginError` naming the matcher."""
        try:
            return call()
        except ForensicsError:
            raise
        except Exception as exc:  # noqa: BLE001 - a matcher plugin's fault, said as one line naming it
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PluginError(f"the {self.name} matcher failed to {what}: {type(exc).__name__}: {text}; the matcher "
                              "is broken: choose another (`forensics plugins` lists them)") from exc

    def attribute(self, curve: Any) -> Attribution:
        """The ranked candidates and the verdict: the best candidate, or ``None`` ("unknown") when an
        open-set threshold rejects it.

        Generators of one *family* (one network under several samplers, as the registry records it on
        the references) can be told apart less well than the rest. When the best candidate passes every
        threshold but calibration, through the same thresholds, named it for another generator of its family
        or that one for it (its ``confusions``), naming either would be wrong that often: the answer names
        the family instead
        (``verdict`` ``None``, ``family`` and ``family_members`` set). A query the thresholds reject stays
        "unknown", whatever its family: an unenrolled generator often lies between two close ones.

        ``at_operating_points`` says what each operating point's thresholds would have answered (how far
        the verdict depends on the choice of point).
        """
        vec = as_curve(curve, self.protocol_digest)  # as given: rank and distance_ratio weigh it
        result = self._decide(vec)
        points = (self.calibration or {}).get("operating_points") if self.open_set else None
        if not points or not (self.calibration or {}).get("calibrated"):
            return result
        own = self.calibration.get("operating_point")
        at = {p: result if p == own else self.at_operating_point(p)._decide(vec) for p in points}
        return dataclasses.replace(result, at_operating_points={p: {"generator": r.verdict, "family": r.family}
                                                                for p, r in at.items()})

    def _decide(self, vec: np.ndarray) -> Attribution:
        """:meth:`attribute` at this matcher's operating point alone."""
        candidates = tuple(self.rank(vec))
        best = candidates[0]
        margin = float(best.score - candidates[1].score) if len(candidates) > 1 else None
        ratio = self.distance_ratio(vec, best.generator)
        cal = self.calibration

        def answer(verdict: str | None, reason: str, threshold: Mapping[str, Any] | None,
                   lookalikes: Mapping[str, Sequence[int]] | None = None, family: str | None = None,
                   members: Sequence[str] = ()) -> Attribution:
            return Attribution(candidates, verdict, margin, reason, self.name, threshold, ratio, lookalikes or {},
                               family, tuple(members))

        if not self.open_set:
            return answer(best.generator, f"closest reference generator (closed set; score {best.score:.4f})", None)
        if cal is None or not cal.get("calibrated"):
            why = (cal or {}).get("reason", "not calibrated")
            return answer(best.generator, f"closest reference generator; open-set thresholds unavailable: {why}",
                          threshold_info(cal))
        info = threshold_info(cal)
        n_refs = f"calibrated on {cal['n_references']} references"
        if cal.get("thresholds_from") == "pooled":
            n_refs += f", pooled over {cal['pooled']['n_cells']} (condition, batch size) cells"
        if cal.get("operating_point", DEFAULT_OPERATING_POINT) != DEFAULT_OPERATING_POINT:
            n_refs += f", {cal['operating_point']} operating point"
        t_score, t_margin, t_ratio = thresholds(cal)
        m = math.inf if margin is None else margin
        lookalikes = (cal.get("lookalikes") or {}).get(best.generator)
        family = self._families.get(best.generator)
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
        taken = [seen for g, f in sorted(self._families.items()) if f == family and g != best.generator
                 for seen in confused(cal, best.generator, g)] if family is not None else []
        disc = self._discriminants.get(family) if family is not None else None
        if disc is not None:  # the family's discriminant decides whether its member is named
            named, words = disc.judge(best.generator, self._query(vec), taken)
            if not named:
                return answer(None, f"the family {family}, not which of {' or '.join(disc.members)}: "
                                    f"{best.generator} {reason}, but {words}", info, lookalikes, family, disc.members)
            reason += f"; {words}"
            taken = []
        if taken:
            members = sorted({best.generator, *(own for own, _, _, _ in taken), *(o for _, o, _, _ in taken)})
            how = "; ".join(f"{own} as {other} {k} of {n} times" for own, other, k, n in taken)
            return answer(None, f"the family {family}, not which of {' or '.join(members)}: {best.generator} "
                                f"{reason}, but calibration named held-out {how}", info, lookalikes, family, members)
        named_as = {own: row[best.generator] for own, row in (cal.get("confusions") or {}).items()
                    if best.generator in row}
        if named_as:
            reason += "; calibration named held-out " + ", ".join(
                f"{own} as {best.generator} {k} of {n} times" for own, (k, n) in sorted(named_as.items()))
        # ranked first as the verdict but turned away by the thresholds: no wrong name, yet near ones
        through = {own: k for own, (k, _) in named_as.items()}
        turned = [f"{own} {row[best.generator][0] - through.get(own, 0)} of {row[best.generator][1]} times"
                  for own, row in sorted((cal.get("ranked_first") or {}).items())
                  if best.generator in row and row[best.generator][0] > through.get(own, 0)]
        if turned:
            reason += (f"; calibration ranked held-out {', '.join(turned)} first as {best.generator}, "
                       "each turned away by the thresholds")
        return answer(best.generator, reason, info, lookalikes)

    @property
    def families(self) -> dict[str, str]:
        """{generator: family} of the fitted references' generators that share a family with another."""
        return dict(self._families)

    @property
    def discriminants(self) -> dict[str, FamilyDiscriminant]:
        """{family: its discriminant} where the matcher was fitted with single sub-batches standing for each
        instance and the family's members can be told apart by one (:mod:`forensics.match.family`)."""
        return dict(self._discriminants)

    def describe(self) -> dict[str, Any]:
        """What a report records about the matcher: its name, options and open-set calibration."""
        return {"name": self.name, "options": {k: v for k, v in self.options().items()},
                "n_references": len(self.enrolled), "generators": self.generators,
                "references_digest": references_digest(self.enrolled) if self.enrolled else None,
                "open_set": self.calibration,
                **({"families": {f: d.describe() for f, d in sorted(self._discriminants.items())}}
                   if self._discriminants else {})}


def _weights(weights: Sequence[float] | None) -> np.ndarray | None:
    """Layer weights as an array (None: none); they must be finite and not negative."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any():
        raise UsageError("layer_weights must be one finite, non-negative number per layer of the curve")
    return w


def contract_problems(factory: Any) -> list[str]:
    """What a registered matcher factory lacks: it must be callable, and a class must be a concrete
    :class:`Matcher` (an empty list when it meets the contract)."""
    if not callable(factory):
        return [f"a matcher factory must be callable, got {type(factory).__name__}"]
    if isinstance(factory, type):
        if not issubclass(factory, Matcher):
            return [f"{factory.__name__} is not a forensics.match.Matcher"]
        if inspect.isabstract(factory):
            return [f"{factory.__name__} does not implement {', '.join(sorted(factory.__abstractmethods__))}"]
    return []


def make_matcher(name: str, **options: Any) -> Matcher:
    """A matcher by its registered name (bundled: alpha, cosine, svm), through the plugin host."""
    from forensics.plugins import build, host

    provided = host().get("matchers", name)

    def make() -> Matcher:
        try:
            return provided.obj(**options)
        except TypeError as exc:
            raise UsageError(f"matcher {name!r} does not take these options: {exc}") from None

    matcher = build(provided, Matcher, make)
    matcher.name = name
    return matcher


def available_matchers(*, baselines: bool = False) -> list[str]:
    """The names of every registered matcher, sorted; the paper's baselines (a factory or class with
    ``baseline = True``: ``last-layer``, ``best-layer``, ``fid``) only with ``baselines``."""
    from forensics.plugins import host

    found = host().collect("matchers")
    return sorted(n for n, p in found.items() if baselines or not getattr(p.obj, "baseline", False))
