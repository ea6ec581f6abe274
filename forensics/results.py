"""What the library's jobs return: frozen result objects, each with ``to_dict()``, the versioned JSON
document the command line prints with ``--json``.

A result holds the typed outcome (curves, the matcher's :class:`~forensics.match.Attribution`, the
protocol) and the provenance a report records (tool versions, creation time, the input's hash), taken
once when the job ran, so that ``to_dict()`` gives the same document however often it is called.

JSON schema ``forensics.attribution/1`` (stable; fields are only ever added)::

    {
      "schema": "forensics.attribution/1",
      "tool": {"forensics": "0.1.0", "python": "3.11.7", "torch": "...", "numpy": "..."},
      "created": "2026-11-23T06:30:00Z",
      "input": {"path": "..." | null, "n_images": 500, "sha256": "sha256:..."},
      "protocol": {"name": "...", "digest": "sha256:...", "encoder": "...", "batch_size": 500,
                   "record": {...the full protocol...}, "parts": [...each combined protocol, if any]},
      "curve": {"layers": [...], "values": [float | null, ...], "counted_weight": [...],
                "undefined": {layer: reason}, "n_images": 500,
                "readings": ["copying" | "no evidence" | "underfitting" | "undefined", ...]},
      "batches": [{"values": [...], "verdict": "..." | null,          # one per batch of m images, then
                   "family": "..." | null,                            # a family named instead (see below)
                   "n_images": 500, "partial": false,                 # a remainder of >= 100 as its own
                   "resampling": {...}}, ...],                        # as the verdict's, for this batch
      "partial_batch": false,                                         # fewer than m images were given
      "left_out": 0,                     # images after the last full batch, too few to attribute (< 100;
                                         # < m/2 where the references cannot be redrawn at their size)
      "matcher": {"name": "alpha", ...},
      "candidates": [{"generator": "...", "score": 0.93, "instance": "..."}, ...],   # best first
      "verdict": {"generator": "..." | null, "score": float | null, "margin": float | null,
                  "distance_ratio": float | null,   # to the best candidate's nearest curve, in its spreads
                  "reason": "...",
                  "lookalikes": {generator: [runs named, runs]},  # left out at calibration, named this verdict
                  "family": "..." | null,          # generator null: the family named, not which of its
                  "family_members": ["...", ...],   # generators (those it could not choose between)
                  "at_operating_points": {"named": {"generator": ..., "family": ...}, ...},  # each point's answer
                  "resampling": {"resamples": 100, "seed": 0, "leads": 97 | null,   # bootstrap resamples of the
                                 "first": {generator: resamples ranked first}} | null},  # images: a name must lead in most
      "reference": {"origin": "...", "n_references": 15},
      "compute": {"device": "cpu", "amp": null | "bf16" | "fp16", "engine": "local" | "ray",  # where, how, in which
                  "ray": {"address", "version", "nodes", "actors", "threads"}}  # precision; the cluster, under Ray
    }

Schema ``forensics.memorization/1``: schema, tool, created, input, protocol, curve (as above), level
(where along the depth copying shows), partial_batch, thresholds (the statistic's reading cut-offs),
reference {origin}, compute {device, amp}, condition, warnings; and for files processed in several ways,
parts: [{condition, n_images, curve, level}], each condition's images scored against T and P_n put through
it (the curve above is the statistic's combination of the parts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from forensics.engine import Curve
    from forensics.match import Attribution, EnrolledCurve, Evaluation
    from forensics.plugins import PluginInfo
    from forensics.protocol import Combination, Protocol
    from forensics.registry import GeneratorEntry

ATTRIBUTION_SCHEMA = "forensics.attribution/1"
MEMORIZATION_SCHEMA = "forensics.memorization/1"
EVALUATION_SCHEMA = "forensics.evaluation/1"
HELDOUT_SCHEMA = "forensics.zoo-heldout/1"
ZOO_LIST_SCHEMA = "forensics.zoo-list/1"
ZOO_ENROLL_SCHEMA = "forensics.zoo-enroll/1"
ZOO_QUALITY_SCHEMA = "forensics.zoo-quality/1"
REGISTRY_LIST_SCHEMA = "forensics.registry-list/1"
REGISTRY_SHOW_SCHEMA = "forensics.registry-show/1"
REGISTRY_VALIDATE_SCHEMA = "forensics.registry-validate/1"
REGISTRY_DIFF_SCHEMA = "forensics.registry-diff/1"
REGISTRY_FAMILY_SCHEMA = "forensics.registry-family/1"
ENCODERS_SCHEMA = "forensics.encoder-list/1"
ENROLMENT_SCHEMA = "forensics.enrolment/1"
REMOVAL_SCHEMA = "forensics.removal/1"
REFRESH_SCHEMA = "forensics.registry-refresh/1"
CALIBRATION_SCHEMA = "forensics.calibration/1"
PROTOCOL_CREATION_SCHEMA = "forensics.protocol-creation/1"
PROTOCOL_COMBINATION_SCHEMA = "forensics.protocol-combination/1"
PROTOCOL_REMOVAL_SCHEMA = "forensics.protocol-removal/1"
PAPER_IMPORT_SCHEMA = "forensics.paper-import/1"
PLUGINS_SCHEMA = "forensics.plugin-list/1"
CURATION_SCHEMA = "forensics.curation/1"


# -- shared parts of the documents ----------------------------------------------------------------
@dataclass(frozen=True)
class ImageInput:
    """The image set a job read: where from (``None`` for an array given in memory), how many, its hash;
    for a folder, whether its subfolders were searched and what was skipped (reason → how many); how many
    images repeat an earlier one exactly, how many are images enrolled instances were made from, and whether
    those were dropped."""

    path: str | None
    n_images: int
    sha256: str
    recursive: bool | None = None               # None: not a folder
    skipped: Mapping[str, int] = field(default_factory=dict)
    files: tuple[Any, ...] = field(default=(), repr=False, compare=False)  # a folder's files read, in order
    sizes: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)  # (height, width) as read
    image_sizes: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)  # several: each image's
    conditions: tuple[str, ...] = field(default=(), repr=False, compare=False)  # an .npz's: each image's condition
    repeats: int = 0                            # images that repeat an earlier one of the set pixel for pixel
    repeats_dropped: bool = False               # whether those were left out (``n_images`` counts the rest)
    enrolled: Mapping[str, int] = field(default_factory=dict)  # generator/instance → how many of its images these are
    enrolled_images: int = 0                    # images some enrolled instance was made from
    enrolled_dropped: bool = False              # whether those were left out (``n_images`` counts the rest)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "n_images": self.n_images, "sha256": self.sha256}
        if self.recursive is not None:
            d["recursive"] = self.recursive
            d["skipped"] = dict(self.skipped)
        if self.repeats:
            d["repeats"] = {"images": self.repeats, "dropped": self.repeats_dropped}
        if self.enrolled_images:
            d["enrolled"] = {"images": self.enrolled_images, "instances": dict(self.enrolled),
                             "dropped": self.enrolled_dropped}
        return d


@dataclass(frozen=True)
class Provenance:
    """When a result was made and with which versions (:mod:`forensics.provenance`)."""

    tool: Mapping[str, str]
    created: str

    @classmethod
    def now(cls) -> Provenance:
        from forensics.provenance import tool_versions, utc_now

        return cls(tool=tool_versions(), created=utc_now())


def protocol_section(protocol: Protocol | Combination) -> dict[str, Any]:
    """A report's record of the protocol (or combination) it was made under: name, digest, encoder(s),
    batch size, the full record, and for a combination each combined protocol's full record."""
    section = {"name": protocol.name, "digest": protocol.digest,
               "encoder": " + ".join(p.encoder.name for p in protocol.parts), "batch_size": protocol.batch_size,
               "record": protocol.to_dict()}
    if len(protocol.parts) > 1:
        section["parts"] = [p.to_dict() for p in protocol.parts]
    return section


def statistic_label(section: Mapping[str, Any]) -> str:
    """What a curve's values are, from a report's protocol section (:func:`protocol_section`): ``C_T``, or the
    statistics of a combination's parts in order (``C_T · mean-z``)."""
    names: list[str] = []
    for part in section.get("parts") or [section["record"]]:
        name = (part.get("statistic") or {}).get("name", "ct")
        if name not in names:
            names.append(name)
    return " · ".join("C_T" if n == "ct" else n for n in names)


def value_heading(label: str) -> str:
    """The heading of a curve table's value column for the curve's :func:`statistic_label`: the statistic's
    name when it has one, else ``value`` (a combination's parts compute different statistics)."""
    return "value" if " · " in label else label


def readings(curve: Curve) -> list[str]:
    """Each layer's reading, as the statistic gave it (:attr:`forensics.engine.LayerValue.reading`)."""
    return [lv.reading for lv in curve.layers]


def curve_section(curve: Curve) -> dict[str, Any]:
    """A curve in a report: layers, values, counted weights, why values are undefined, and readings."""
    section = curve.to_dict()
    section["readings"] = readings(curve)
    return section


# -- attribution ----------------------------------------------------------------------------------
def answer_label(verdict: str | None, family: str | None = None) -> str:
    """An answer in a word or two, as tallies and tables show it: the generator named, ``family F`` when
    it named the family F but not which of its generators, else ``unknown``."""
    if verdict is not None:
        return verdict
    return "unknown" if family is None else f"family {family}"


def members_text(members: Sequence[str]) -> str:
    """A family's generators as a phrase: ``ddim or pndm``, ``a, b or c``."""
    names = list(members)
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)


@dataclass(frozen=True)
class Verdict:
    """The answer of an attribution: the generator named, or ``None``, and why. With ``generator``
    ``None``, a ``family`` means the answer named the family (one network whose generators, its samplers,
    calibration saw taken for one another) but not which of ``family_members``; no family: "unknown"."""

    generator: str | None
    score: float | None       # the best candidate's score when something was named; None when "unknown"
    margin: float | None      # best score minus the runner-up's
    distance_ratio: float | None  # to the best candidate's nearest curve, in that generator's spreads
    reason: str
    lookalikes: Mapping[str, Sequence[int]]  # left out at calibration, their runs named this verdict
    family: str | None = None                # the family named when no generator could be
    family_members: Sequence[str] = ()       # its generators the answer could not choose between
    # what each operating point's thresholds would have answered: {point: {"generator": …, "family": …}}
    at_operating_points: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    # bootstrap resamples of the batch's images: how many, their seed, how often each generator ranked first and
    # how often what the answer names did (forensics.match.resampling); None when not resampled
    resampling: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, attribution: Attribution) -> Verdict:
        best = attribution.candidates[0] if attribution.candidates else None
        family = attribution.family if attribution.verdict is None else None
        named = attribution.verdict is not None or family is not None
        return cls(generator=attribution.verdict,
                   score=float(best.score) if best is not None and named else None,
                   margin=None if attribution.margin is None else float(attribution.margin),
                   distance_ratio=None if attribution.distance_ratio is None else float(attribution.distance_ratio),
                   reason=attribution.reason,
                   lookalikes={g: list(v) for g, v in attribution.lookalikes.items()},
                   family=family, family_members=tuple(attribution.family_members) if family is not None else (),
                   at_operating_points={p: dict(v) for p, v in attribution.at_operating_points.items()},
                   resampling=None if attribution.resampling is None else dict(attribution.resampling))

    @property
    def named(self) -> str | None:
        """What the answer names: the generator, else the family (``None``: unknown)."""
        return self.generator if self.generator is not None else self.family

    @property
    def label(self) -> str:
        """The answer in a word or two (:func:`answer_label`)."""
        return answer_label(self.generator, self.family)

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "score": self.score, "margin": self.margin,
                "distance_ratio": self.distance_ratio, "reason": self.reason,
                "lookalikes": {g: list(v) for g, v in self.lookalikes.items()},
                "family": self.family, "family_members": list(self.family_members),
                "at_operating_points": {p: dict(v) for p, v in self.at_operating_points.items()},
                "resampling": None if self.resampling is None else dict(self.resampling)}


@dataclass(frozen=True)
class BatchAttribution:
    """One batch of images: its curve and the matcher's answer to it. A ``partial`` batch holds fewer
    than the protocol's m images (a smaller set, or the remainder of a larger one; a remainder's curve is
    not in the mean curve). ``compared_at``: the batch size the references it was matched against mean —
    m, or the batch's own size m′ when the enrolled instances were redrawn at m′ from their per-image
    records; None when they could not be (no records) and a partial batch met curves of m: C_T values
    shrink with fewer images, so that verdict is not reliable. ``mixture``: for files processed in several
    ways, how many of the batch's images arrived under each condition (its references hold as many)."""

    curve: Curve
    attribution: Attribution
    partial: bool = False
    compared_at: int | None = None  # the batch size of the references it was matched against; None: not comparable
    mixture: Mapping[str, int] | None = None  # files processed in several ways: how many images under each condition

    @property
    def verdict(self) -> str | None:
        return self.attribution.verdict

    @property
    def family(self) -> str | None:
        """The family named when the batch's answer named no generator of it (else ``None``)."""
        return self.attribution.family if self.attribution.verdict is None else None

    @property
    def label(self) -> str:
        """The batch's answer in a word or two: the generator, ``family F`` or ``unknown``."""
        return answer_label(self.verdict, self.family)

    def to_dict(self) -> dict[str, Any]:
        out = {"values": list(self.curve.fingerprint.values), "verdict": self.attribution.verdict,
               "family": self.family, "n_images": self.curve.n_images, "partial": self.partial,
               "compared_at": self.compared_at}
        if self.mixture is not None:
            out["mixture"] = dict(self.mixture)
        if self.attribution.resampling is not None:
            out["resampling"] = dict(self.attribution.resampling)
        return out


def as_generated() -> dict[str, Any]:
    """A report's ``condition`` when none was read or declared: the images as generated."""
    return {"name": "none", "source": "default", "detail": "", "description": ""}


@dataclass(frozen=True)
class AttributionResult:
    """``forensics.attribute``: the curve of the images (the mean of their batches' curves when there are
    several), the matcher's answer to it, and each batch's own answer."""

    input: ImageInput
    protocol: Protocol | Combination
    curve: Curve
    attribution: Attribution
    batches: tuple[BatchAttribution, ...]
    matcher: Mapping[str, Any]          # the matcher's own record (name, options, calibration)
    references: tuple[EnrolledCurve, ...]  # the enrolled curves it was matched against
    reference_origin: str | None        # where the protocol's reference side came from
    partial_batch: bool                 # fewer images than the protocol's batch size m
    provenance: Provenance = field(default_factory=Provenance.now)
    compute: Mapping[str, Any] = field(default_factory=lambda: {"device": "cpu", "amp": None})  # both move curves
    left_out: int = 0                   # images after the last full batch, too few to attribute on their own
    compared_at: int | None = None      # the batch size the overall verdict's references mean (None: not comparable)
    redrawn: tuple[Mapping[str, Any], ...] = ()  # the references redrawn (condition, batch size, draws) for it
    condition: Mapping[str, Any] = field(default_factory=as_generated)
    warnings: tuple[str, ...] = ()      # records the registry could not use, a condition guessed; a line each

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(self.attribution)

    @property
    def candidates(self):
        """One candidate per generator, best first."""
        return self.attribution.candidates

    @property
    def batch_votes(self) -> list[tuple[str, int]]:
        """How many full batches named each generator ("family F" for a batch that named only the family
        F, "unknown" for none), most first; a tie in the order the batches came. A remainder attributed as
        a batch of its own is not counted (:attr:`remainder`)."""
        from collections import Counter

        return Counter(b.label for b in self.batches if not b.partial or self.partial_batch).most_common()

    @property
    def remainder(self) -> BatchAttribution | None:
        """The images after the last full batch, attributed as a batch of their own (when there were
        enough of them), else None; its curve is not in the mean curve. (A set smaller than m is one
        partial batch, :attr:`partial_batch`, not a remainder.)"""
        last = self.batches[-1] if self.batches else None
        return last if last is not None and last.partial and not self.partial_batch else None

    def generator_similarity(self) -> tuple[list[str], np.ndarray]:
        """The enrolled generators (by name) and the mean similarity between the curves of every pair of
        them (diagonal: within a generator, an instance never with itself), as the matcher's similarity
        reads curves; an undefined mean (a generator of one instance) shows as the largest one."""
        import numpy as np

        from forensics.match import similarity

        names = sorted({r.generator for r in self.references})
        by = {g: [r.fingerprint.vector() for r in self.references if r.generator == g] for g in names}
        m = np.zeros((len(names), len(names)))
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                pairs = [similarity(x, y) for ix, x in enumerate(by[a]) for iy, y in enumerate(by[b])
                         if not (a == b and ix == iy)]
                m[i, j] = float(np.mean(pairs)) if pairs else np.nan
        return names, np.nan_to_num(m, nan=float(np.nanmax(m)) if np.isfinite(m).any() else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ATTRIBUTION_SCHEMA,
            "tool": dict(self.provenance.tool),
            "created": self.provenance.created,
            "input": self.input.to_dict(),
            "protocol": protocol_section(self.protocol),
            "curve": curve_section(self.curve),
            "batches": [b.to_dict() for b in self.batches],
            "partial_batch": self.partial_batch,
            "left_out": self.left_out,
            "compared_at": self.compared_at,
            "condition": dict(self.condition),
            "redrawn": [dict(v) for v in self.redrawn],
            "warnings": list(self.warnings),
            "matcher": dict(self.matcher),
            "candidates": [{"generator": c.generator, "score": float(c.score), "instance": c.instance}
                           for c in self.attribution.candidates],
            "verdict": self.verdict.to_dict(),
            "reference": {"origin": self.reference_origin, "n_references": len(self.references)},
            "compute": dict(self.compute),
        }


# -- memorization ---------------------------------------------------------------------------------
def copying_level(layer_readings: Sequence[str], layers: Sequence[str] = ()) -> str:
    """Where along the depth copying shows: early layers see colour and texture, late ones meaning; copying at
    both ends says at which ``layers`` (names; else positions from 0), adjacent ones as a run. Where none does,
    how many layers could not be read: "none" of layers that were all undefined is no finding."""
    n = len(layer_readings)
    hits = [i for i, r in enumerate(layer_readings) if r == "copying"]
    if not hits:
        undefined = sum(r == "undefined" for r in layer_readings)
        if n and undefined == n:
            return "undefined (no layer could be read)"
        return f"none ({undefined} of {n} layers undefined)" if undefined else "none"
    if len(hits) == n:
        return "every layer (near-exact copies)"
    third = max(1, n // 3)
    early = any(i < third for i in hits)
    late = any(i >= n - third for i in hits)
    if early and not late:
        return "low-level (early layers: colour, texture)"
    if late and not early:
        return "semantic (late layers: content, meaning)"
    names = list(layers) if len(layers) == n else [str(i) for i in range(n)]
    runs: list[list[int]] = []
    for i in hits:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    where = ", ".join(names[r[0]] if len(r) == 1 else f"{names[r[0]]} … {names[r[-1]]}" for r in runs)
    return f"mixed (early and late layers: {where}; {len(hits)} of {n} layers)"


def copying_levels(protocol: Protocol | Combination, layer_readings: Sequence[str]) -> str:
    """:func:`copying_level` along each encoder's depth; for a combination, one per combined protocol. A
    protocol whose statistic never reads copying (mean-z: a difference either way reads as underfitting) says
    so, not "none": it never looked."""
    from forensics.protocol import part_spans

    def level(part: Protocol, readings: Sequence[str]) -> str:
        if "copying" not in readings and not _reads_copying(part.statistic.name):
            return f"not read ({part.statistic.name} never reads copying)"
        return copying_level(readings, part.layers)

    if len(protocol.parts) == 1:
        return level(protocol.parts[0], layer_readings)
    return "; ".join(f"{part.name}: {level(part, layer_readings[a:b])}" for part, a, b in part_spans(protocol))


def _reads_copying(statistic: str) -> bool:
    """Whether the statistic named reads any value as copying (asked of its ``reading`` at both extremes)."""
    from forensics.stats.base import get_statistic

    reading = get_statistic(statistic).reading
    try:
        return any(reading(v) == "copying" for v in (-1e12, 1e12))
    except Exception:  # noqa: BLE001 - a plugin's reading that cannot take the extremes: the level as before
        return True


def reading_spans(protocol: Protocol | Combination) -> list[tuple[str, int, int, dict[str, float]]]:
    """Each combined protocol's layers in a curve and the reading cut-offs of its statistic: (name, first,
    stop, thresholds), in curve order; one for a single protocol. A combination's statistics read alike
    only where they are one statistic: C_T's copying below −2 is mean-z's underfitting."""
    from forensics.protocol import part_spans
    from forensics.stats.base import get_statistic

    return [(part.name, a, b, dict(get_statistic(part.statistic.name).reading_thresholds))
            for part, a, b in part_spans(protocol)]


@dataclass(frozen=True)
class MemorizationResult:
    """``forensics.memorization``: the curve of all the images as one batch, each layer's reading, and the
    level (along the encoder's depth) at which copying shows."""

    input: ImageInput
    protocol: Protocol | Combination
    curve: Curve
    thresholds: Mapping[str, float]     # the statistic's reading cut-offs
    reference_origin: str | None
    partial_batch: bool
    provenance: Provenance = field(default_factory=Provenance.now)
    compute: Mapping[str, Any] = field(default_factory=lambda: {"device": "cpu", "amp": None})
    condition: Mapping[str, Any] = field(default_factory=as_generated)
    warnings: tuple[str, ...] = ()      # a condition guessed; a line each
    # files processed in several ways: (condition, curve of its images against T and P_n put through it),
    # in the order of condition.mixture; ``curve`` is then the statistic's combination of these
    parts: tuple[tuple[str, Curve], ...] = ()

    @property
    def readings(self) -> list[str]:
        return readings(self.curve)

    @property
    def level(self) -> str:
        return copying_levels(self.protocol, self.readings)

    @property
    def copying(self) -> bool:
        """Whether any layer reads as copying."""
        return "copying" in self.readings

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MEMORIZATION_SCHEMA, "tool": dict(self.provenance.tool), "created": self.provenance.created,
            "input": self.input.to_dict(), "protocol": protocol_section(self.protocol),
            "curve": curve_section(self.curve), "level": self.level, "partial_batch": self.partial_batch,
            "thresholds": dict(self.thresholds), "reference": {"origin": self.reference_origin},
            "compute": dict(self.compute), "condition": dict(self.condition), "warnings": list(self.warnings),
            **({"parts": [{"condition": name, "n_images": curve.n_images, "curve": curve_section(curve),
                           "level": copying_levels(self.protocol, readings(curve))} for name, curve in self.parts]}
               if self.parts else {}),
        }


# -- the registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnrolmentResult:
    """``forensics.enroll``: the instances stored, one per full batch of m images."""

    protocol: str
    generator: str
    instances: tuple[str, ...]
    n_images: int
    input_sha256: str
    registry: Path
    batch_size: int      # the protocol's m: images per instance
    left_out: int        # images after the last full batch, not enrolled
    n_undefined: int     # layer values undefined (stored as null) over all instances
    skipped: Mapping[str, int] = field(default_factory=dict)  # a folder's entries skipped, by reason
    conditions: tuple[str, ...] = ()  # the conditions each instance keeps per-image records under (none: no records)
    warnings: tuple[str, ...] = ()    # what the maintainer should know of the images enrolled

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ENROLMENT_SCHEMA, "protocol": self.protocol, "generator": self.generator,
                "instances": list(self.instances), "n_images": self.n_images, "input_sha256": self.input_sha256,
                "registry": str(self.registry), "batch_size": self.batch_size, "left_out": self.left_out,
                "n_undefined": self.n_undefined, "skipped": dict(self.skipped), "conditions": list(self.conditions),
                "warnings": list(self.warnings)}


@dataclass(frozen=True)
class RemovalResult:
    """``forensics.remove``: the instances removed."""

    protocol: str
    generator: str
    removed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REMOVAL_SCHEMA, "protocol": self.protocol, "generator": self.generator,
                "removed": list(self.removed)}


@dataclass(frozen=True)
class RefreshResult:
    """``forensics.refresh``: the user registry's copies of bundled generator files, each brought up to date
    with the file it hides (:meth:`forensics.registry.Registry.refresh`): one row per copy looked at."""

    registry: Path
    copies: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REFRESH_SCHEMA, "registry": str(self.registry), "copies": [dict(c) for c in self.copies]}


@dataclass(frozen=True)
class MatcherEvaluation:
    """One matcher on one protocol: leave-one-out (with leave-generator-out and the hold-out split
    filled in), or ``evaluation=None`` when the protocol has no references; with ``stability``, how far
    its open-set thresholds move when one reference is left out."""

    matcher: str
    evaluation: Evaluation | None
    calibration_stability: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.evaluation is None:
            return {"matcher": self.matcher, "loo_accuracy": None, "n": 0, "correct": 0, "error": "no references"}
        doc = self.evaluation.to_dict()
        if self.calibration_stability is not None:
            doc["calibration_stability"] = dict(self.calibration_stability)
        return doc


@dataclass(frozen=True)
class ProtocolEvaluation:
    protocol: str
    digest: str
    generators: tuple[str, ...]
    n_instances: int
    matchers: tuple[MatcherEvaluation, ...]
    batch_size: int | None = None   # the batch size the curves mean (redrawn from records when not the protocol's)
    condition: str = "none"         # the post-processing condition they were redrawn under
    redrawn: bool = False           # whether the curves were redrawn from the instances' per-image records
    operating_point: str = "balanced"  # which calibrated thresholds the open-set verdicts used

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "digest": self.digest, "n_generators": len(self.generators),
                "n_instances": self.n_instances, "generators": list(self.generators),
                "batch_size": self.batch_size, "condition": self.condition, "redrawn": self.redrawn,
                "operating_point": self.operating_point, "matchers": [m.to_dict() for m in self.matchers]}


@dataclass(frozen=True)
class EvaluationResult:
    """``forensics.evaluate``: each protocol's matchers side by side, and the protocols left out (why)."""

    registry: str  # the registry evaluated as messages name it: its folder, or the user registry over the bundled one
    protocols: tuple[ProtocolEvaluation, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)  # protocol → why it was left out

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": EVALUATION_SCHEMA, "registry": str(self.registry),
             "protocols": [p.to_dict() for p in self.protocols]}
        if self.skipped:
            d["skipped"] = dict(self.skipped)
        return d


@dataclass(frozen=True)
class CalibrationResult:
    """``forensics.calibrate``: each matcher's open-set thresholds, as recorded in ``file``."""

    protocol: str
    file: Path
    matchers: Mapping[str, Mapping[str, Any]]
    skipped: Mapping[str, str] = field(default_factory=dict)  # matcher → why it was not calibrated

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CALIBRATION_SCHEMA, "protocol": self.protocol, "file": str(self.file),
                "matchers": {name: dict(record) for name, record in self.matchers.items()},
                **({"skipped": dict(self.skipped)} if self.skipped else {})}


@dataclass(frozen=True)
class ProtocolCreation:
    """``forensics.create_protocol``: the protocol written, and where its shipped reference side went."""

    protocol: Protocol
    registry: Path
    reference_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PROTOCOL_CREATION_SCHEMA, "name": self.protocol.name, "digest": self.protocol.digest,
                "registry": str(self.registry)}


@dataclass(frozen=True)
class CombinationResult:
    """``forensics.combine_protocols``: the combination written, the instances enrolled under all its
    protocols, and the registry's notes about it."""

    combination: Combination
    n_instances: int
    registry: Path
    warnings: tuple[str, ...] = ()
    written: bool = True                 # False: the same combination was there already, nothing was written
    file: Path | None = None             # its protocol.yaml, where it is stored (a read-only layer's where unchanged)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PROTOCOL_COMBINATION_SCHEMA, "name": self.combination.name,
                "digest": self.combination.digest,
                "combines": [p.name for p in self.combination.parts], "n_instances": self.n_instances,
                "registry": str(self.registry)}


@dataclass(frozen=True)
class ProtocolRemoval:
    """``forensics.remove_protocol``: the protocol removed from the written registry (none when not
    confirmed) with what lay beside it there, the user cache's entries that served it and no other of the
    registry's protocols (left in the cache, which every registry shares), and the registry's default
    protocol after it."""

    protocol: str
    registry: Path
    combination: bool
    generators: tuple[str, ...]
    n_instances: int
    n_files: int
    size: int
    cache_served: tuple[CacheItem, ...]
    was_default: bool
    default_protocol: str | None
    confirmed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PROTOCOL_REMOVAL_SCHEMA, "protocol": self.protocol, "registry": str(self.registry),
                "confirmed": self.confirmed, "combination": self.combination, "generators": list(self.generators),
                "n_instances": self.n_instances, "n_files": self.n_files, "size_bytes": self.size,
                "cache_served": [i.to_dict() for i in self.cache_served],
                "was_default": self.was_default, "default_protocol": self.default_protocol}


# -- reading the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtocolSummary:
    """One protocol (or combination) of a registry listing: its identity and its generators' instance counts."""

    name: str
    digest: str
    default: bool                        # the registry's default protocol
    description: str
    encoder: str                         # the encoders' names, joined by " + " for a combination
    combines: tuple[str, ...] | None     # a combination's protocols, in curve order; None for a protocol
    n_layers: int
    batch_size: int
    generators: Mapping[str, int]        # generator → enrolled instances, by name
    families: Mapping[str, str] = field(default_factory=dict)  # generator → its family, those that have one

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "default": self.default, "description": self.description,
                "encoder": self.encoder, "combines": None if self.combines is None else list(self.combines),
                "n_layers": self.n_layers, "batch_size": self.batch_size, "generators": dict(self.generators),
                "families": dict(self.families)}


@dataclass(frozen=True)
class RegistryListing:
    """``forensics.list_protocols``: every protocol of a registry, by name, with its generators."""

    registry: Path
    default_protocol: str | None
    protocols: tuple[ProtocolSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REGISTRY_LIST_SCHEMA, "registry": str(self.registry),
                "default_protocol": self.default_protocol, "protocols": [p.to_dict() for p in self.protocols]}


@dataclass(frozen=True)
class ProtocolDetail:
    """``forensics.show_protocol``: a protocol's record and its generators (all, or the one asked for),
    each with its instances' curves and provenance."""

    registry: Path
    protocol: Protocol | Combination
    generators: Mapping[str, GeneratorEntry]   # by name
    #: per plain protocol of it, what processed the images of its records, per condition (the nearest layer's
    #: record of each: {digest, pillow, jpeg, webp}; :mod:`forensics.registry.records`)
    processing: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)
    #: per matcher calibrated (``registry calibrate``), whose thresholds answer and which:
    #: :func:`forensics.api.calibration_summary`
    calibration: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REGISTRY_SHOW_SCHEMA, "registry": str(self.registry), "name": self.protocol.name,
                "digest": self.protocol.digest, "protocol": self.protocol.to_dict(),
                "generators": {g: {"description": e.description, "family": e.family,
                                   "instances": [i.to_dict() for i in e.instances]}
                               for g, e in self.generators.items()},
                "processing": {name: {c: dict(v) for c, v in found.items()} for name, found in self.processing.items()},
                "calibration": {m: dict(c) for m, c in self.calibration.items()}}


@dataclass(frozen=True)
class ValidationResult:
    """``forensics.validate_registry``: every problem of a registry's files (none: it is sound), the
    warnings it loads with, and what it holds."""

    registry: Path
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    n_protocols: int
    n_instances: int      # instances stored in files (a combination's are its protocols', not counted again)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REGISTRY_VALIDATE_SCHEMA, "registry": str(self.registry), "ok": self.ok,
                "problems": list(self.problems), "warnings": list(self.warnings), "protocols": self.n_protocols,
                "instances": self.n_instances}


@dataclass(frozen=True)
class RegistryDiff:
    """``forensics.diff_registry``: what two registry states disagree on, from ``old`` to ``new``; each
    change as :func:`forensics.registry.diff` gives it (change, what, protocol, generator, instance, detail)."""

    old: str              # the other state as it was named: a folder or git:REV
    new: Path
    changes: tuple[Mapping[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REGISTRY_DIFF_SCHEMA, "old": self.old, "new": str(self.new),
                "changes": [dict(c) for c in self.changes]}


@dataclass(frozen=True)
class FamilyResult:
    """``forensics.generator_family``: a generator's family under a protocol (the model it shares with other
    enrolled generators), as it was and as it is, and the protocols whose file changed (none: shown only)."""

    registry: Path
    protocol: str
    generator: str
    family: str | None
    previous: str | None
    changed: tuple[str, ...]
    problems: tuple[str, ...] = ()   # the registry's family problems left (`registry validate` lists them)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REGISTRY_FAMILY_SCHEMA, "registry": str(self.registry), "protocol": self.protocol,
                "generator": self.generator, "family": self.family, "previous": self.previous,
                "changed": list(self.changed), "problems": list(self.problems)}


@dataclass(frozen=True)
class PaperImport:
    """``forensics.import_paper``: He et al.'s published curves written as a protocol of the registry."""

    protocol: str
    digest: str
    generators: Mapping[str, Sequence[str]]   # generator → its instance ids, in the release's order
    n_curves: int
    registry: Path

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PAPER_IMPORT_SCHEMA, "protocol": self.protocol, "digest": self.digest,
                "generators": {g: list(ids) for g, ids in self.generators.items()}, "n_curves": self.n_curves,
                "registry": str(self.registry)}


# -- plugins and encoders -------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginListing:
    """``forensics.list_plugins``: every plugin, bundled or installed, with what it provides or why it failed."""

    plugins: tuple[PluginInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PLUGINS_SCHEMA, "plugins": [p.to_dict() for p in self.plugins]}


@dataclass(frozen=True)
class EncoderListing:
    """``forensics.list_encoders``: one entry per encoder: name, plugin, family, description, layers (name,
    dim), pooling(s), preprocessing, ``weights`` (where they come from on this machine, or ``missing: how
    to supply them``) and ``weights_available``; an encoder that cannot describe itself has its ``error``."""

    encoders: tuple[Mapping[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ENCODERS_SCHEMA, "encoders": [dict(e) for e in self.encoders]}


# -- curation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurationResult:
    """``forensics.curate``: the curated images and the record of how they were made."""

    images: np.ndarray
    kind: str
    seed: int
    source: Mapping[str, Any]            # {"dataset", "split"}, {"path", "sha256"} or {"array", "sha256"}
    subset: Mapping[str, Any] | None     # the random subset curated, when not all
    sha256: str
    out: Path | None = None              # where the set was written

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CURATION_SCHEMA, "kind": self.kind, "seed": self.seed, "n_images": len(self.images),
                "source": dict(self.source),
                "subset": None if self.subset is None else dict(self.subset),
                "out": None if self.out is None else str(self.out), "sha256": self.sha256}


# -- the zoo --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldoutSet:
    """One zoo generator's held-out set: its curve and each matcher's answer."""

    generator: str
    file: Path
    curve: Curve
    answers: Mapping[str, Attribution]

    @property
    def counted_weight_mean(self) -> float | None:
        """The mean share of P_n's weight counted over the layers that have one."""
        import numpy as np

        counted = [lv.counted_weight for lv in self.curve.layers if lv.counted_weight is not None]
        return float(np.mean(counted)) if counted else None

    def answer_dict(self, matcher: str) -> dict[str, Any]:
        a = self.answers[matcher]
        return {"top": a.candidates[0].generator, "top_right": a.candidates[0].generator == self.generator,
                "runner_up": a.candidates[1].generator if len(a.candidates) > 1 else None, **a.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        return {"generator": self.generator, "file": str(self.file), "curve": list(self.curve.fingerprint.values),
                "counted_weight_mean": self.counted_weight_mean,
                "matchers": {name: self.answer_dict(name) for name in self.answers}}


@dataclass(frozen=True)
class HeldoutResult:
    """``forensics.zoo_heldout``: every chosen held-out set attributed by every chosen matcher."""

    protocol: str
    matchers: tuple[str, ...]
    sets: tuple[HeldoutSet, ...]

    def summary(self, matcher: str) -> dict[str, int]:
        """How one matcher did: top candidate right; verdicts right (the set's generator named), family
        (its family named, the set's generator among the members), unknown, and wrong (another generator,
        or a family the generator is not among), of n sets."""
        verdicts = [(s.generator, s.answers[matcher]) for s in self.sets]
        family = [a.verdict is None and a.family is not None and g in a.family_members for g, a in verdicts]
        right = [a.verdict == g for g, a in verdicts]
        unknown = [a.verdict is None and a.family is None for _, a in verdicts]
        return {"top_right": sum(a.candidates[0].generator == g for g, a in verdicts),
                "verdict_right": sum(right), "verdict_family": sum(family), "verdict_unknown": sum(unknown),
                "verdict_wrong": sum(not (r or f or u) for r, f, u in zip(right, family, unknown)),
                "n": len(verdicts)}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": HELDOUT_SCHEMA, "protocol": self.protocol, "sets": [s.to_dict() for s in self.sets],
                "summary": {name: self.summary(name) for name in self.matchers}}


@dataclass(frozen=True)
class ZooListing:
    """``forensics.zoo_list``: the zoo's sample sets (generator, instance, seed, file, present, quality,
    enrolled) under one protocol."""

    samples: Path
    protocol: str
    rows: tuple[Mapping[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ZOO_LIST_SCHEMA, "samples": str(self.samples), "protocol": self.protocol,
                "instances": [dict(r) for r in self.rows]}


@dataclass(frozen=True)
class ZooEnrolment:
    """``forensics.zoo_enroll``: the zoo sets enrolled (protocol, generator, instance, ids), those enrolled
    before that were given records under conditions they lacked (the same, and ``conditions``), how many
    were there already with every condition asked for, how many instances were given their images' digests
    (kept since), and what the user should know (``warnings``: a condition scored against T and P_n as they are)."""

    protocol: str
    parts: tuple[str, ...]
    enrolled: tuple[Mapping[str, Any], ...]
    skipped: int
    recorded: tuple[Mapping[str, Any], ...] = ()
    hashed: int = 0  # instances (per protocol) given the digests of their images, kept since
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ZOO_ENROLL_SCHEMA, "protocol": self.protocol,
                "enrolled": [dict(d) for d in self.enrolled], "recorded": [dict(d) for d in self.recorded],
                "skipped": self.skipped, "hashed": self.hashed, "warnings": list(self.warnings)}


@dataclass(frozen=True)
class ZooQuality:
    """``forensics.zoo_quality``: each zoo set's Fréchet distance and nearest-neighbour ratio in one
    layer of a protocol's encoder."""

    protocol: str
    layer: str
    rows: tuple[Mapping[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ZOO_QUALITY_SCHEMA, "protocol": self.protocol, "layer": self.layer,
                "instances": [dict(r) for r in self.rows]}


# -- the user cache -------------------------------------------------------------------------------
CACHE_LIST_SCHEMA = "forensics.cache-list/1"
CACHE_CLEAR_SCHEMA = "forensics.cache-clear/1"


@dataclass(frozen=True)
class CacheItem:
    """One entry of the user cache (:func:`forensics.list_cache`): ``kind`` is ``embeddings`` (one layer
    of one image set), ``reference`` (a protocol's fitted reference side), ``layers`` (an encoder's layer
    widths, recorded so that a build need not measure them), ``datasets`` (the data sets forensics fetches,
    CIFAR-10: kept by :func:`forensics.clear_cache`), ``old`` (a file of an earlier cache format, no longer
    read) or ``other`` (not written by this version of forensics: never removed); ``protocols``
    the registry's protocols it serves (by their reference sets' hashes and encoder), ``age_s`` seconds
    since it was last written."""

    path: Path
    kind: str
    size: int
    age_s: float
    what: str
    protocols: tuple[str, ...] = ()
    encoder: str | None = None
    images: str | None = None           # embeddings: the content hash of the image set
    reference_set: str | None = None    # embeddings of a protocol's reference set: "T" or "P_n"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "size": self.size, "age_s": round(self.age_s, 1),
                "what": self.what, "protocols": list(self.protocols), "encoder": self.encoder,
                "images": self.images, "reference_set": self.reference_set}


@dataclass(frozen=True)
class CacheListing:
    """``forensics.list_cache``: what the user cache folder holds, and its total size."""

    cache: Path
    items: tuple[CacheItem, ...]

    @property
    def total(self) -> int:
        return sum(i.size for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CACHE_LIST_SCHEMA, "cache": str(self.cache), "n_entries": len(self.items),
                "total_bytes": self.total, "entries": [i.to_dict() for i in self.items]}


@dataclass(frozen=True)
class CacheClearing:
    """``forensics.clear_cache``: the entries removed (none when not confirmed), those refused (a link,
    or anything found outside the cache folder) with the reason, and whether the removal was confirmed."""

    cache: Path
    removed: tuple[CacheItem, ...]
    refused: tuple[tuple[CacheItem, str], ...]
    confirmed: bool

    @property
    def freed(self) -> int:
        return sum(i.size for i in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CACHE_CLEAR_SCHEMA, "cache": str(self.cache), "confirmed": self.confirmed,
                "n_removed": len(self.removed), "freed_bytes": self.freed,
                "removed": [i.to_dict() for i in self.removed],
                "refused": [{**i.to_dict(), "reason": why} for i, why in self.refused]}


# -- InvMM ----------------------------------------------------------------------------------------
INVMM_SCHEMA = "forensics.invmm/1"
INVMM_LIST_SCHEMA = "forensics.invmm-list/1"   # `forensics invmm --list --json`: forensics.api.invmm_catalogue()


@dataclass(frozen=True)
class InvMMResult:
    """``forensics.invmm``: for each input image (in input order) how memorized the diffusion model holds it:
    InvMM's score (KL at the first successful verification; +inf, null in JSON, when it never succeeded),
    success, steps and time, and the verification samples."""

    input: ImageInput
    model: Mapping[str, Any]            # the model's describe()
    preset: str
    settings: Mapping[str, Any]          # every parameter the run used
    similarity: Mapping[str, Any]        # the copy similarity's describe(), threshold β included
    seed: int
    group: int
    inversions: tuple[Any, ...]          # forensics.inversion.measure.Inversion, one per image
    targets: np.ndarray                  # the images as the model saw them, uint8 (N, H, W[, C])
    timing: Any                          # forensics.inversion.measure.Timing
    seconds: float
    provenance: Provenance = field(default_factory=Provenance.now)
    compute: Mapping[str, Any] = field(default_factory=lambda: {"device": "cpu", "amp": None})
    warnings: tuple[str, ...] = ()       # what reading the images left out or dropped (frames, transparency)

    @property
    def scores(self) -> list[float]:
        return [float(r.score) for r in self.inversions]

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self.inversions if r.success)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        finite = sorted(r.score for r in self.inversions if r.success)
        return {"n_images": len(self.inversions), "succeeded": len(finite),
                "median_score": float(np.median(finite)) if finite else None,
                "min_score": finite[0] if finite else None, "max_score": finite[-1] if finite else None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": INVMM_SCHEMA, "tool": dict(self.provenance.tool), "created": self.provenance.created,
            "input": self.input.to_dict(), "model": dict(self.model), "preset": self.preset,
            "settings": dict(self.settings), "similarity": dict(self.similarity), "seed": self.seed,
            "group": self.group, "compute": dict(self.compute), "seconds": round(self.seconds, 3),
            "timing": self.timing.to_dict(), "summary": self.summary(),
            "images": [dict(r.to_dict(), **({"file": f} if f else {}))
                       for r, f in zip(self.inversions, self.files)],
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }

    @property
    def files(self) -> list[str | None]:
        """Each image's file relative to the input folder (POSIX), in input order; None for an array input."""
        if not self.input.files or self.input.path is None:
            return [None] * len(self.inversions)
        root = Path(self.input.path).expanduser()
        return [Path(f).name if Path(f) == root else  # one image file given: its name, not "."
                Path(f).relative_to(root).as_posix() if Path(f).is_relative_to(root) else str(f)
                for f in self.input.files]
