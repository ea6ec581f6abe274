"""The statistic interface that statistic plugins implement (C_T is the bundled one).

A statistic is fitted once on the reference side of a protocol (training set T and held-out set P_n,
embedded at one layer) and then scores any number of generated batches::

    reference = statistic.fit(train, test, **fit_params)     # query-independent, cacheable
    result = reference.score(generated, **score_params)      # result.value is a float
    arrays = reference.to_arrays()                           # dict of numpy arrays, for an .npz cache
    reference = statistic.from_arrays(arrays)

``fit_params`` and ``score_params`` name the parameters each step takes; ``defaults`` gives every
parameter's default. All of them are recorded in a protocol.

A statistic that can compute on a torch device (a GPU) says so with ``devices = True``: its ``fit`` then
also takes ``device=`` and its references have ``.to(device)``, and the engine passes them its own
device whenever that is not the CPU. The device may change how fast a value comes, never the value.

A statistic whose score parameters depend on the protocol's batch size m may also have
``batch_params(score_params, m)``, returning them resolved for m (C_T adds m, by which a small batch
counts its cells); the engine scores batches of every size with what it returns.

A statistic may also have ``combine(values, counts, n_test)``: the value of one set scored in parts, each
part (``counts[i]`` points, value ``values[i]``, None where undefined) against references of ``n_test`` P_n
points processed as its images were, None when it cannot be given (C_T: its Z scores combined by their
effective sizes, so that the parts read as one batch of them all would). ``memorization`` of
files processed in several ways scores each condition's images against T and P_n put through it and
combines them so; without ``combine`` it scores them all under one condition (as the files read as one give
it), with a warning.

A statistic whose score splits exactly into a part per generated point lets sets of any size and condition
be matched without embedding anything again: its fitted objects have ``records(generated)`` (one row per
point) and ``score_records(records, **score_params)``, the score of any subset of those rows being the
score of those points; they may add ``score_subsets(records, subsets, **score_params)``, the
``score_records`` of each subset of rows (None: all), which the engine then uses to redraw references, and
``subset_values(records, subsets, **score_params)``, those scores' values alone as a float array (NaN where a
subset's score is undefined), the same numbers, which resampling and redrawing read thousands at a time
(:meth:`forensics.engine.Engine.vectors_from_records`; the bundled C_T and mean-z are tested to give their
scores' values bit for bit). Such a fit may also offer ``scoring_part()``: a fit (``to_arrays``/``from_arrays``
like any) that scores records as it does, to the bit, without what making them needs (C_T's: the cells and
P_n's distances, not T's points); a registry ships it for records kept under a condition whose T and P_n were
processed alike, so that they are scored without fitting that side
(:meth:`forensics.engine.Engine.scoring_side`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from forensics.errors import UsageError


READINGS = ("copying", "no evidence", "underfitting", "undefined")
"""What one layer's value can say; reports and the copying level read these words, never the numbers."""


@runtime_checkable
class Score(Protocol):
    """What :meth:`FittedStatistic.score` returns: the value, and the share of the reference weight that
    counted towards it (``None`` when the statistic has no such notion)."""

    value: float
    counted_weight: float | None


@runtime_checkable
class FittedStatistic(Protocol):
    """A statistic fitted on one layer's T and P_n embeddings: scores any number of generated batches."""

    def score(self, generated: np.ndarray, **params: Any) -> Score: ...

    def to_arrays(self) -> dict[str, np.ndarray]: ...

    def to(self, device: str) -> FittedStatistic:
        """The same fit, computing on ``device``; only called when the statistic declares ``devices``."""
        ...


@runtime_checkable
class Statistic(Protocol):
    """A statistic plugin. ``devices``: whether ``fit`` takes ``device=`` and fits have ``.to(device)``.
    ``reading(value)`` says what a value means, one of :data:`READINGS` (``None`` is "undefined");
    ``reading_thresholds`` are the cut-offs behind it, recorded in reports. Optional: ``layer_dim``, the one
    embedding size the statistic scores (``mean-z``: 1), checked when a protocol is defined
    (:func:`check_layer_dims`), before any image is embedded."""

    fit_params: tuple[str, ...]
    score_params: tuple[str, ...]
    defaults: Mapping[str, Any]
    devices: bool
    reading_thresholds: Mapping[str, float]

    def fit(self, train: np.ndarray, test: np.ndarray, **params: Any) -> FittedStatistic: ...

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> FittedStatistic: ...

    def reading(self, value: float | None) -> str: ...


_ATTRIBUTES = {"fit_params": "a tuple of parameter names", "score_params": "a tuple of parameter names",
               "defaults": "a mapping of parameter name to default", "devices": "a bool",
               "reading_thresholds": "a mapping of name to number"}
_METHODS = ("fit", "from_arrays", "reading")


def contract_problems(statistic: object) -> list[str]:
    """What ``statistic`` lacks of the :class:`Statistic` contract, one phrase each (empty: it meets it).
    The plugin host runs this when a statistic is registered, so a broken one is reported there."""
    problems = [f"no {name}() method" for name in _METHODS if not callable(getattr(statistic, name, None))]
    for name, what in _ATTRIBUTES.items():
        if not hasattr(statistic, name):
            problems.append(f"no {name} ({what})")
    if problems:
        return problems
    for name in ("fit_params", "score_params"):
        names = getattr(statistic, name)
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            problems.append(f"{name} must be {_ATTRIBUTES[name]}, got {names!r}")
    if not isinstance(statistic.defaults, Mapping):
        problems.append(f"defaults must be {_ATTRIBUTES['defaults']}")
    if hasattr(statistic, "batch_params") and not callable(statistic.batch_params):
        problems.append("batch_params must be a method (score_params, batch_size) → score_params")
    dim = getattr(statistic, "layer_dim", None)
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        problems.append(f"layer_dim must be None or a positive int, got {dim!r}")
    if hasattr(statistic, "combine") and not callable(statistic.combine):
        problems.append("combine must be a method (values, counts, n_test) → value or None")
    if not isinstance(statistic.devices, bool):
        problems.append(f"devices must be a bool, got {statistic.devices!r}")
    thresholds = statistic.reading_thresholds
    if not isinstance(thresholds, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in thresholds.items()):
        problems.append(f"reading_thresholds must be {_ATTRIBUTES['reading_thresholds']}")
    if not problems and set(statistic.fit_params) & set(statistic.score_params):
        problems.append("a parameter is both a fit and a score parameter: "
                        + ", ".join(sorted(set(statistic.fit_params) & set(statistic.score_params))))
    return problems


def get_statistic(name: str) -> Statistic:
    """The registered statistic ``name`` (bundled: ``ct``), through the plugin host."""
    from forensics.plugins import host

    return host().get("statistics", name).obj


def resolve_params(statistic: Statistic, params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of ``statistic`` with defaults filled in; unknown names are a UsageError."""
    known = set(statistic.fit_params) | set(statistic.score_params)
    unknown = sorted(set(params) - known)
    if unknown:
        raise UsageError(f"unknown statistic parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {name: params.get(name, statistic.defaults.get(name)) for name in sorted(known)}


def check_layer_dims(name: str, dims: Mapping[str, int]) -> None:
    """Refuse layers (name → embedding size) that the statistic ``name`` cannot score: one whose ``layer_dim``
    is set scores layers of that size only."""
    want = getattr(get_statistic(name), "layer_dim", None)
    wrong = {layer: d for layer, d in dims.items() if want is not None and d != want}
    if wrong:
        shown = ", ".join(f"{layer} ({d})" for layer, d in list(wrong.items())[:3])
        raise UsageError(f"statistic {name} scores layers of size {want}, and the encoder's {shown} are not: choose "
                         f"an encoder whose layers are (pixel-statistics), or another --statistic")


def split_params(statistic: Statistic, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fit parameters, score parameters) of ``statistic``, defaults filled in (:func:`resolve_params`)."""
    full = resolve_params(statistic, params)
    return ({k: full[k] for k in statistic.fit_params}, {k: full[k] for k in statistic.score_params})
