"""The baselines He et al. 2024 compared their fingerprint with, as matchers (opt-in; issue 25).

The paper claims about 30 % better identification than baselines. Two of those baselines work on what
a registry holds, and are here, for ``forensics registry evaluate --matcher NAME`` beside ``alpha``,
``cosine`` and ``svm``:

- **one layer of the curve** (:class:`LayerMatcher`; registered as ``last-layer`` and ``best-layer``):
  the C_T value at a single layer, nearest neighbour on that scalar. ``last-layer`` reads the last
  layer; ``best-layer`` the layer whose values tell the *enrolled* runs apart best (leave-one-out 1-NN
  on the references alone, ties broken by the between/within variance ratio, then the later layer),
  never looking at the query.
- **a FID statistic** (:class:`FIDMatcher`; registered as ``fid``): a batch is described by its Fréchet
  distance to the real data, and a query is named after the enrolled run whose FID is nearest. The
  paper's curves carry the FID of every set (``fid_scores_fid_score.txt``, recorded in each instance's
  provenance as ``fid`` by ``registry import-paper``). The zoo's sets carry ``fd_pca`` (Fréchet distance
  to T in the 64-d PCA space of pixels, :mod:`forensics.zoo.quality`, in the zoo manifest), used there.

A FID is a property of the image set, not of the curve, while a matcher is handed curves. The FID
matcher therefore looks a query's FID up by its curve: in its option ``fids`` ({:func:`curve_key`:
FID}), then among every instance of the same protocol in the default registry
(``$FORENSICS_REGISTRY``, else the user registry over the bundled one) whose provenance records one. A
query whose FID is nowhere recorded is refused with a :class:`~forensics.errors.UsageError`: it
attributes enrolled image sets (what ``registry evaluate`` does), not new images.

Both baselines rank in their own one-dimensional space, and their open-set distance ratio is measured
there too (:meth:`ScalarBaseline.distance_ratio`), so no information from the other layers reaches
their verdicts. The paper's other baselines (mean/std images, and CNN / ResNet-50 / ViT-B/16 image
classifiers with a majority vote) need the images and are not here.
"""

from __future__ import annotations

import abc
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import PurePath
from typing import Any

import numpy as np

from forensics.errors import ForensicsError, UsageError
from forensics.match.base import Matcher
from forensics.match.similarity import generator_spreads, in_spreads
from forensics.match.types import Candidate, EnrolledCurve


def curve_key(curve: Any) -> str:
    """A short key of a curve's values (undefined values as 0, as matchers read them): how
    :class:`FIDMatcher` finds a query's FID."""
    from forensics.match.types import as_curve

    vec = np.ascontiguousarray(as_curve(curve), dtype=np.float64)
    return hashlib.sha256(vec.tobytes()).hexdigest()[:24]


class ScalarBaseline(Matcher):
    """A matcher on one number per curve: a generator scores minus the distance from the query's number
    to its nearest run's (1-NN). Subclasses say how to read the number (:meth:`features`)."""

    @abc.abstractmethod
    def features(self, curves: np.ndarray) -> np.ndarray:
        """The number of each curve (n × L → n), once fitted."""

    def prepare(self, curves: np.ndarray, labels: np.ndarray, instances: list[str]) -> None:
        """Learn what :meth:`features` needs from the references (nothing by default)."""

    def fit_curves(self, curves: np.ndarray, labels: np.ndarray, instances: list[str]) -> None:
        self.prepare(curves, labels, instances)
        self._f = np.asarray(self.features(curves), dtype=np.float64)
        self._labels, self._ids = labels, list(instances)
        self._f_spreads = generator_spreads(np.abs(self._f[:, None] - self._f[None, :]), labels)

    def candidates(self, curve: np.ndarray) -> list[Candidate]:
        f = float(self.features(curve[None, :])[0])
        d = np.abs(self._f - f)
        best: dict[str, Candidate] = {}
        for s, g, i in zip(-d, self._labels, self._ids):
            if g not in best or s > best[g].score:
                best[g] = Candidate(str(g), float(s), i)
        return list(best.values())

    def distance_ratio(self, curve: Any, generator: str) -> float | None:
        """As :meth:`Matcher.distance_ratio`, in the baseline's own one-dimensional space."""
        vec = self._query(curve)
        own = self._f[self._labels == generator]
        if not len(own):
            raise UsageError(f"no reference curve of generator {generator!r}")
        f = float(self.features(vec[None, :])[0])
        return in_spreads(float(np.abs(own - f).min()), self._f_spreads[generator])


def _loo_hits(f: np.ndarray, labels: np.ndarray) -> int:
    """How many references their nearest other reference (by ``f``) names right."""
    d = np.abs(f[:, None] - f[None, :])
    np.fill_diagonal(d, np.inf)
    hits = 0
    for i in range(len(f)):
        j = int(np.argmin(d[i]))
        hits += bool(np.isfinite(d[i, j])) and labels[j] == labels[i]
    return hits


def _fisher(f: np.ndarray, labels: np.ndarray) -> float:
    """Between-generator variance of the means over the mean within-generator variance."""
    gens = sorted({str(g) for g in labels})
    means = np.array([f[labels == g].mean() for g in gens])
    within = np.mean([f[labels == g].var() for g in gens])
    between = means.var()
    return float(between / within) if within > 0 else (math.inf if between > 0 else 0.0)


def choose_layer(curves: np.ndarray, labels: Sequence[Any]) -> int:
    """The layer whose values tell the references' generators apart best: most references named right
    by their nearest other reference at that layer alone, then the largest between/within variance
    ratio, then the later layer."""
    curves = np.asarray(curves, dtype=np.float64)
    labels = np.array([str(g) for g in labels], dtype=object)
    scores = [(_loo_hits(curves[:, j], labels), _fisher(curves[:, j], labels), j) for j in range(curves.shape[1])]
    return max(scores)[2]


class LayerMatcher(ScalarBaseline):
    """One-layer C_T fingerprint: nearest neighbour on the curve's value at one layer.

    Option ``layer``: ``"last"`` (default), ``"best"`` (chosen on the references by
    :func:`choose_layer`, recorded in :meth:`describe`), or a layer index (negative counts from the end).
    """

    name = "last-layer"
    baseline = True

    def __init__(self, *, layer: str | int = "last", **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(layer, bool) or not (layer in ("last", "best") or isinstance(layer, int)):
            raise UsageError(f"layer must be 'last', 'best' or a layer index, got {layer!r}")
        self.layer = layer
        self.chosen_layer: int | None = None

    def options(self) -> dict[str, Any]:
        return {"layer": self.layer, **super().options()}

    def prepare(self, curves: np.ndarray, labels: np.ndarray, instances: list[str]) -> None:
        n = curves.shape[1]
        if self.layer == "last":
            self.chosen_layer = n - 1
        elif self.layer == "best":
            self.chosen_layer = choose_layer(curves, labels)
        else:
            if not -n <= int(self.layer) < n:
                raise UsageError(f"layer {self.layer} does not exist: the curves have {n} layers")
            self.chosen_layer = int(self.layer) % n

    def features(self, curves: np.ndarray) -> np.ndarray:
        return np.asarray(curves, dtype=np.float64)[:, self.chosen_layer]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layer_index": self.chosen_layer}


# -- the FID baseline ----------------------------------------------------------------------------------
def recorded_fid(reference: EnrolledCurve) -> tuple[float, str] | None:
    """The FID statistic recorded for an enrolled instance, and its name: ``fid`` from the provenance (the
    paper's import), else the zoo manifest's ``fd_pca`` of the sample set enrolled (by its file's SHA-256 or
    its ``generator/instance.npz`` name under the zoo's samples folder)."""
    prov = reference.provenance or {}
    fid = prov.get("fid")
    if isinstance(fid, (int, float)) and math.isfinite(fid):
        return float(fid), "fid"
    zoo = _zoo_quality()
    sha, path = prov.get("input_sha256"), prov.get("input")
    keys = [sha.removeprefix("sha256:")] if isinstance(sha, str) else []
    if isinstance(path, str) and path:
        keys.append("/".join(PurePath(path).parts[-2:]))   # the sample set's file, as the manifest names it
    for key in keys:
        if key in zoo:
            return zoo[key], "fd_pca"
    return None


@lru_cache(maxsize=4)
def _zoo_quality_at(folder: str) -> dict[str, float]:
    from forensics.zoo.catalog import read_manifest

    try:
        found = read_manifest(folder)
    except (ForensicsError, OSError):
        return {}
    table = {}
    for z in found:
        if isinstance(z.quality.get("fd_pca"), (int, float)):
            table[z.sha256] = table[str(z.record.get("file"))] = float(z.quality["fd_pca"])
    return table


def _zoo_quality() -> dict[str, float]:
    """SHA-256 of each zoo sample set → its ``fd_pca``, from the default registry's zoo manifest."""
    from forensics.zoo.catalog import samples_dir

    try:
        folder = samples_dir()
    except ForensicsError:
        return {}
    return _zoo_quality_at(str(folder))


@lru_cache(maxsize=8)
def _registry_fids(protocol_digest: str, where: str | None) -> tuple[tuple[tuple[str, float], ...], str | None]:
    """({curve key: FID} of every instance of this protocol in the default registry, statistic name)."""
    from forensics.registry import Registry

    try:
        reg = Registry.open(strict=False)
    except (ForensicsError, OSError):
        return (), None
    table: dict[str, float] = {}
    stat = None
    for name, proto in reg.protocols.items():
        if proto.digest != protocol_digest:
            continue
        try:
            refs = reg.enrolled(name)
        except ForensicsError:
            continue
        for r in refs:
            got = recorded_fid(r)
            if got is not None:
                table[curve_key(r.fingerprint)] = got[0]
                stat = stat or got[1]
    return tuple(sorted(table.items())), stat


class FIDMatcher(ScalarBaseline):
    """FID-statistics fingerprint: a query is named after the enrolled run whose FID is nearest.

    Option ``fids``: {:func:`curve_key` of a curve: its FID} for curves whose FID the registry does not
    record (default none). See the module's notes on where FIDs come from.
    """

    name = "fid"
    baseline = True
    reads_curves = False

    def __init__(self, *, fids: Mapping[str, float] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        table = {}
        for k, v in dict(fids or {}).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise UsageError(f"fids: the FID of {k!r} must be a finite number, got {v!r}")
            table[str(k)] = float(v)
        self.fids = table
        self.statistic: str | None = None

    def options(self) -> dict[str, Any]:
        return {"fids": dict(self.fids), **super().options()}

    def fit(self, references: Sequence[EnrolledCurve],
            queries: Mapping[str, Sequence[np.ndarray]] | None = None) -> Matcher:
        references = list(references)
        table: dict[str, float] = {}
        stat = None
        digests = {r.fingerprint.protocol_digest for r in references}
        if len(digests) == 1:
            found, stat = _registry_fids(next(iter(digests)), os.environ.get("FORENSICS_REGISTRY"))
            table.update(dict(found))
        missing = []
        for r in references:
            got = recorded_fid(r)
            key = curve_key(r.fingerprint)
            if got is not None:
                table[key] = got[0]
                stat = stat or got[1]
            elif key not in self.fids and key not in table:
                missing.append(f"{r.generator}/{r.instance}")
        table.update(self.fids)
        if missing and references:
            raise UsageError(f"the fid baseline needs the FID of every reference; none is recorded for "
                             f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} (it reads `fid` from "
                             "the provenance or the zoo manifest's fd_pca; pass fids={curve_key: FID})")
        self._table = table
        self.statistic = stat or ("fid" if self.fids else None)
        return super().fit(references, queries)

    def features(self, curves: np.ndarray) -> np.ndarray:
        out = []
        for c in np.atleast_2d(curves):
            key = curve_key(c)
            if key not in self._table:
                raise UsageError("no FID is recorded for this query: the fid baseline attributes image sets whose "
                                 "FID the registry records (or that option fids gives), not new images")
            out.append(self._table[key])
        return np.array(out, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "statistic": self.statistic}
