"""From images to fingerprints under a protocol.

:class:`Engine` holds what one protocol needs — its encoder (built and checked against the protocol's
record) and the fitted reference side of its statistic, one per layer — and turns image batches into
C_T curves. The reference side depends only on the protocol (and on the condition an engine puts T and
P_n through, for copies that arrived processed; none by default), so it is computed once and kept: first
looked up among the files shipped beside the protocol in the registry, then in the user cache,
otherwise computed (embedding T and P_n) and written to the cache atomically. :class:`CombinedEngine`
does the same for a combination of protocols, one engine per part; :func:`make_engine` picks.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from forensics.io.mapped import save_mapped_npz
from forensics.encode.cache import cache_dir
from forensics.encode.encoder import Encoder, Preprocessing
from forensics.errors import ForensicsError, PluginError, ProtocolMismatch, StatisticError, UsageError
from forensics.io.hashing import sha256_array, sha256_json, short
from forensics.protocol import Combination, DataRef, EncoderRef, Fingerprint, Protocol, StatisticRef
from forensics.stats.base import READINGS, Statistic, check_layer_dims, get_statistic, split_params

Progress = Callable[[str, int, int], None]
REFERENCE_FORMAT = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerValue:
    """The statistic at one layer: its value, or why it is undefined."""

    layer: str
    value: float | None
    counted_weight: float | None = None
    undefined_reason: str | None = None
    reading: str = "undefined"  # the statistic's reading of the value (forensics.stats.base.READINGS)


@dataclass(frozen=True)
class Curve:
    """A computed fingerprint with its per-layer details."""

    fingerprint: Fingerprint
    layers: tuple[LayerValue, ...]
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [lv.layer for lv in self.layers], "values": list(self.fingerprint.values),
                "counted_weight": [lv.counted_weight for lv in self.layers],
                "undefined": {lv.layer: lv.undefined_reason for lv in self.layers if lv.value is None},
                "n_images": self.n_images}


def dataset_split(name: str, split: str, options: Mapping[str, Any] | None = None, *,
                  needed_by: str | None = None) -> np.ndarray:
    """One split of the registered data set ``name``, as its loader gives it, checked against the loader's
    contract (a uint8 array (N, H, W) or (N, H, W, C)): a loader that fails, or gives anything else, is a
    :class:`PluginError` naming it (its own :class:`ForensicsError`, saying how to get the data, passes)."""
    from forensics.plugins import build, host

    provided = host().get("datasets", name, needed_by=needed_by)
    images = build(provided, object, lambda: provided.obj(split, **dict(options or {})))
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4) or not len(images):
        got = type(images).__name__ + (f" of {images.dtype}, shape {images.shape}" if isinstance(images, np.ndarray)
                                       else "")
        raise PluginError(f"data set {name} (plugin {provided.plugin}) gave a {got} for its {split!r} split, not "
                          "uint8 images (N, H, W[, C]): the plugin is broken (`forensics plugins` lists it)")
    return images


def load_reference_set(ref: DataRef) -> np.ndarray:
    """The images of a protocol's reference set, checked against its recorded count and hash."""
    images = dataset_split(ref.dataset, ref.split, ref.options, needed_by="the protocol")
    # your own images (data set "folder") changed on disk: say where, and what to do
    path = (ref.options or {}).get("path")
    where, todo = ((f" ({path})", ": put back the images the protocol was made from, or make a new protocol of "
                    "these (`forensics protocol create` under another name)") if path else ("", ""))
    if len(images) != ref.count:
        raise ProtocolMismatch(f"data set {ref.dataset}/{ref.split}{where} has {len(images)} images here, "
                               f"the protocol recorded {ref.count}{todo}")
    if ref.sha256 is not None:
        digest = sha256_array(np.asarray(images))
        if digest != ref.sha256:
            raise ProtocolMismatch(f"data set {ref.dataset}/{ref.split}{where} on this machine (sha256 "
                                   f"{short(digest)}) is not the protocol's ({short(ref.sha256)}); fingerprints "
                                   f"would not be comparable{todo}")
    return np.asarray(images)


def check_encoder_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Refuse (:class:`UsageError`) options (``protocol create --option``) that the encoder plugin ``name`` does not
    take, judged by its factory's signature, before anything is built or read."""
    import inspect

    from forensics.plugins import host

    factory = host().get("encoders", name).obj
    for reserved in ("weights", "device"):
        if reserved in (options or {}):
            raise UsageError(f"give the encoder's {reserved} as --{reserved}, not as --option {reserved}=…")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a factory without a signature: its own error answers
        return
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        taken = [p for p in params if p not in ("weights", "device")]
        unknown = sorted(set(options or {}) - set(taken))
        if unknown:
            raise UsageError(f"encoder {name} takes no option {', '.join(unknown)}; its options: "
                             f"{', '.join(taken) or 'none'}")


def new_encoder(name: str, options: Mapping[str, Any] | None, *, weights: str | None = None,
                device: str = "cpu") -> Encoder:
    """The encoder plugin ``name`` built with the user's ``options`` (``protocol create --option``), for a new
    protocol: an option it does not take (:func:`check_encoder_options`), or a value it refuses, is a
    :class:`UsageError` naming the options."""
    from forensics.plugins import build, host

    options = dict(options or {})
    check_encoder_options(name, options)
    provided = host().get("encoders", name)

    def make() -> Encoder:
        try:
            return provided.obj(weights=weights, device=device, **options)
        except (TypeError, ValueError) as exc:
            if not options:
                raise
            shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise UsageError(f"encoder {name} refused --option {shown}: {exc}") from None

    encoder = build(provided, Encoder, make)
    if encoder.name != name:  # the protocol records encoder.name and builds that one again: another encoder, or none
        raise PluginError(f"encoder {name} (plugin {provided.plugin}) built an encoder named {encoder.name!r}; a "
                          f"protocol records that name, so the plugin must set its Encoder.name to {name!r}")
    return encoder


def build_encoder(ref: EncoderRef, *, weights: str | None = None, device: str = "cpu") -> Encoder:
    """Build a protocol's encoder and check that it is the one the protocol recorded."""
    from forensics.plugins import build, host

    provided = host().get("encoders", ref.name, needed_by="the protocol")
    if weights is None and ref.weights_source == "random":
        weights = "random"
    encoder = build(provided, Encoder, lambda: provided.obj(weights=weights, device=device, **dict(ref.options)))
    if ref.weights is not None and encoder.weights.digest != ref.weights:
        if encoder.weights.source == "package":
            # weights (or a definition) the plugin's package ships: no file to pass, the installed package changed
            raise ProtocolMismatch(f"the {ref.name} encoder installed ({encoder.weights.detail}, sha256 "
                                   f"{short(encoder.weights.digest)}) is not the one the protocol was made with "
                                   f"(sha256 {short(ref.weights)}): install the version of its package the protocol "
                                   f"was made with, or make the protocol again (`forensics protocol create`) and "
                                   f"enrol its generators again")
        raise ProtocolMismatch(f"the {ref.name} weights found ({encoder.weights.source}: {encoder.weights.detail}, "
                               f"sha256 {short(encoder.weights.digest)}) are not the protocol's "
                               f"(sha256 {short(ref.weights)}); pass --weights with the protocol's weights file")
    encoder.check_layers(ref.layers)
    if encoder.pooling != ref.pooling:
        raise ProtocolMismatch(f"encoder {ref.name} pools by {encoder.pooling!r}, the protocol by {ref.pooling!r}")
    encoder.preprocessing = Preprocessing.from_dict(ref.preprocessing)
    return encoder


def reference_key(protocol: Protocol, condition: str = "none") -> str:
    """What the fitted reference side depends on: data, encoder, the statistic's fit parameters, and the
    post-processing T and P_n were put through (:mod:`forensics.conditions`; none for the protocol's own)."""
    statistic = get_statistic(protocol.statistic.name)
    fit_params, _ = split_params(statistic, protocol.statistic.params)
    content = {"format": REFERENCE_FORMAT, "train": protocol.train.to_dict(),
               "test": protocol.test.to_dict(), "encoder": protocol.encoder.to_dict(),
               "statistic": protocol.statistic.name, "fit": fit_params}
    return sha256_json(content if condition == "none" else {**content, **processing(condition)})


def reference_file(protocol: Protocol, condition: str = "none") -> str:
    """The file name of the protocol's reference side under ``condition``: in the cache, and where a registry
    ships it (T and P_n as they are) or the part of it that scores records (under a condition)."""
    return f"{short(reference_key(protocol, condition), 24)}.npz"


def processing(condition: str) -> dict[str, str]:
    """What images put through ``condition`` depend on beside the images: the condition and the Pillow that
    applies it (another Pillow may encode JPEG or WebP otherwise, and what was cached is then left aside)."""
    import PIL

    return {"condition": condition, "pillow": PIL.__version__}


def processed_hash(images_hash: str, condition: str) -> str:
    """The content key of a reference set of hash ``images_hash`` put through ``condition``, for the embedding
    cache: derived, not hashed from the processed pixels, so that the cache listing can tie it to its protocol."""
    return sha256_json({"images": images_hash, **processing(condition)})


def _read_npz(path: Path, *, remove: bool = True) -> dict[str, np.ndarray] | None:
    """Read an .npz into memory, every array's zip CRC checked; None when it cannot be read whole (a
    damaged cache file is then removed). The reader of files written before reference sides were laid
    out to be mapped (:func:`load_reference`)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if remove:
            _damaged(path, exc)
        return None


def _damaged(path: Path, why: BaseException) -> None:
    """Remove a damaged cached reference side, saying so: it is computed again (minutes for a large T), and a
    disk that damages files should not go unnoticed."""
    log.warning("the cached reference side %s was damaged (%s): removed, and computed again", path,
                str(why).splitlines()[0] if str(why) else type(why).__name__)
    path.unlink(missing_ok=True)


#: reference sides opened in this process: (path, layers, statistic) → (file version, recorded digest, refs)
_OPENED: dict[tuple, tuple[tuple, str | None, list[Any]]] = {}
_OPENED_MAX = 8
_RACY_S = 2.0  # a file changed less than this long ago may change again without its times moving
_OPENED_LOCK = threading.Lock()


def save_reference(path: Path, refs: Sequence[Any], layers: Sequence[str]) -> Path:
    """Write a fitted reference side (one fit per layer) to ``path``, atomically, laid out to be mapped
    (:mod:`forensics.io.mapped`: an ordinary .npz that loads without copying)."""
    return save_mapped_npz(path, _pack(refs, layers))


def _rewrite(path: Path, arrays: Mapping[str, np.ndarray]) -> tuple | None:
    """Write a cache file's ``arrays`` over ``path`` in the mapped layout, atomically (a new file renamed
    over the old: a reader sees one or the other whole, and one that mapped the old keeps it); the new
    file's identity, or None, with a debug line, where it cannot be written (a read-only cache folder, a
    full disk): what was read serves as it is, and the file stays as it was."""
    from forensics.io.mapped import file_identity

    try:
        save_mapped_npz(path, arrays)
        return file_identity(path.stat())
    except (OSError, ForensicsError) as exc:
        log.debug("the reference side %s was not rewritten (%s); it serves as read", path, exc)
        return None


def _upgrade(path: Path, arrays: Mapping[str, np.ndarray], refs: Sequence[Any], layers: Sequence[str]) -> tuple | None:
    """Rewrite the cache file ``path`` (read as ``arrays``) once its fits ``refs`` store more than it holds:
    a fit read without structures that its ``to_arrays`` now keeps (``arrays_outdated``: C_T's search
    layouts, written before they were stored or of another version) builds them at every opening, and
    the file with them opens at once. The same arrays plus those (bit for bit the same fits); nothing is
    written when no fit is outdated or when the arrays would be laid out as they are (a C_T cell
    searched in float64 has no layout to store). The new file's identity, or None."""
    if not any(getattr(ref, "arrays_outdated", False) for ref in refs):
        return None
    if not os.access(path.parent, os.W_OK):  # a read-only cache: nothing to build for a write that would fail
        log.debug("the reference side %s was not rewritten (its folder is read-only); it serves as read", path)
        return None
    new = _pack(refs, layers)  # builds the missing structures, which the searches then use
    if set(new) == set(arrays) and all(np.array_equal(new[k], arrays[k]) for k in new if np.ndim(new[k]) == 0):
        return None
    return _rewrite(path, new)


def load_reference(path: Path, layers: Sequence[str], statistic: Statistic, *,
                   protocol: str | None = None) -> list[Any] | None:
    """The fitted reference side stored at ``path`` (one fit per layer), or None when the file is absent,
    damaged (a cache file, ``protocol`` None, is then removed) or not one of ``layers`` and ``statistic``.

    A file in the mapped layout (:func:`save_reference`) is mapped read-only and its arrays used in place;
    its bytes are checked once: a shipped file (``protocol`` names whose registry ships it) against the
    sha256 the registry records, hashing the mapping itself; a cache file against the word sums recorded
    when it was written. A file of the older layout (zip CRCs, copied on reading) is still read; a cache
    file of that layout is rewritten in the mapped one, and one whose fits lack structures they now
    store (:func:`_upgrade`: C_T's search layouts) is rewritten with them, once, so that the next opening
    finds them; where the cache cannot be written it serves as read. A shipped file is never rewritten
    (its digest is recorded in the registry). What was opened is kept for the process: another
    engine of the same protocol reuses it while the file is unchanged (same inode, size and times, and
    those times more than two seconds old when it was opened, so that a change in place moves them)."""
    from forensics.io.mapped import Damaged, Unmappable, file_identity, open_mapped_npz
    from forensics.registry.reference import check, recorded_digest

    shipped = protocol is not None
    if not path.is_file() and not (shipped and path.is_symlink()):
        return None
    expected = recorded_digest(path, protocol) if shipped else None  # refuses an unrecorded file or a link
    try:
        version = file_identity(path.stat())
    except OSError:
        return None
    key = (str(path), tuple(layers), type(statistic).__qualname__)
    with _OPENED_LOCK:
        known = _OPENED.get(key)
    if known is not None and known[0] == version and known[1] == expected:
        return known[2]
    arrays: Any
    try:
        arrays = open_mapped_npz(path, check_sums=not shipped)
    except Unmappable:  # the older layout: read (and checked) the old way
        if shipped:
            check(path, protocol, expected=expected)
        arrays = _read_npz(path, remove=not shipped)
        refs = None if arrays is None else _unpack(arrays, layers, statistic)
        if refs is not None and shipped:
            warnings.warn(f"the reference side shipped with {protocol} ({path}) is in the older layout, read whole "
                          "on every run; `forensics registry migrate-reference` lays it out to be mapped (the same "
                          "arrays, bit for bit)", stacklevel=2)
        elif refs is not None:  # the cache file in the mapped layout (with every fit's structures) from now on
            version = _rewrite(path, _pack(refs, layers)) or version
    except (Damaged, OSError) as exc:
        if shipped:
            check(path, protocol, expected=expected)  # a changed file is refused as such
        else:
            _damaged(path, exc)
        return None
    else:
        if shipped:
            check(path, protocol, data=arrays.buffer, expected=expected)
        version = arrays.identity
        refs = _unpack(arrays, layers, statistic)
        if refs is not None and not shipped:
            version = _upgrade(path, arrays, refs, layers) or version
    if refs is not None and time.time() - max(version[3], version[4]) / 1e9 > _RACY_S:
        # kept only once the file's times are old enough that a later change in place would change them
        with _OPENED_LOCK:
            _OPENED.pop(key, None)
            _OPENED[key] = (version, expected, refs)
            while len(_OPENED) > _OPENED_MAX:
                _OPENED.pop(next(iter(_OPENED)))
    return refs


def forget_opened() -> None:
    """Drop the reference sides kept open by this process (:func:`load_reference`): the next engine maps
    and checks its file again."""
    with _OPENED_LOCK:
        _OPENED.clear()


class Engine:
    """Computes fingerprints under one protocol (see the module docstring)."""

    def __init__(self, protocol: Protocol, *, device: str = "cpu", weights: str | None = None,
                 use_cache: bool = True, shipped_dir: Path | None = None, progress: Progress | None = None,
                 batch_size: int = 64, workers: int = 0, amp: str | None = None, condition: str = "none"):
        from forensics import cpu
        from forensics.conditions import get_condition
        from forensics.encode.devices import torch_device

        get_condition(condition)  # an unknown condition fails here, in one line
        self.condition = condition
        cpu.apply_requested()  # the run's CPU thread count (--threads, FORENSICS_THREADS, or measured)
        torch_device(device)  # an unknown or absent device fails here, in one line, before any work
        self.protocol = protocol
        self.device = device
        self.weights = weights
        self.use_cache = use_cache
        self.shipped_dir = shipped_dir
        self.progress = progress
        self.batch_size = batch_size
        self.workers = workers
        self.amp = amp
        self.statistic: Statistic = get_statistic(protocol.statistic.name)
        self.fit_params, self.score_params = split_params(self.statistic, protocol.statistic.params)
        fix = getattr(self.statistic, "batch_params", None)  # optional: parameters the batch size fixes
        if callable(fix):
            self.score_params = dict(fix(self.score_params, protocol.batch_size))
        self._encoder: Encoder | None = None
        self._reference_side: list[Any] | None = None
        self._scoring_side: list[Any] | None = None
        self.reference_origin: str | None = None
        self._root = self  # the engine whose encoder every engine of :meth:`under` shares
        self._under: dict[str, Engine] = {condition: self}

    @property
    def cluster(self) -> dict[str, Any] | None:
        """What a report records (``compute.ray``) of the cluster that computed; None for this process."""
        return None

    def encoder(self) -> Encoder:
        """The protocol's encoder, built and checked against the protocol's record on first call (it loads
        the weights), then kept (one for this engine and every engine :meth:`under` gives)."""
        root = self._root
        if root._encoder is None:
            root._encoder = build_encoder(self.protocol.encoder, weights=self.weights, device=self.device)
        return root._encoder

    def under(self, condition: str | Mapping[str, str]) -> Engine:
        """This engine with T and P_n put through ``condition`` (a name, or a name per protocol, this one's
        taken; absent: as they are): the reference side that records of images under a condition are scored
        against (:func:`forensics.conditions.reference_condition`). The same encoder and options; each
        condition's engine made once and kept, so its reference side is fitted (or read) once."""
        from forensics.conditions import NONE, get_condition

        name = condition if isinstance(condition, str) else condition.get(self.protocol.name, NONE)
        found = self._under.get(name)
        if found is None:
            get_condition(name)  # an unknown condition fails here, in one line
            found = copy.copy(self)
            found.condition = name
            found._forget_reference()
            self._under[name] = found  # the dict is shared: every engine of the family finds it
        return found

    def _forget_reference(self) -> None:
        """Drop what this engine keeps of its reference side, so that it fits or reads its own (an engine of
        :meth:`under`, copied from another). Engines that keep more of it elsewhere extend this."""
        self._reference_side, self._scoring_side, self.reference_origin = None, None, None

    def embed(self, images: np.ndarray, what: str = "images", *, cache: bool = False,
              images_hash: str | None = None) -> list[np.ndarray]:
        """Embed at the protocol's layers; ``cache`` uses the on-disk embedding cache (reference sets)."""
        from forensics.encode.embed import embed

        report = None
        if self.progress is not None:
            report = lambda done, total: self.progress(what, done, total)  # noqa: E731
        return embed(self.encoder(), images, layers=self.protocol.layers, batch_size=self.batch_size, progress=report,
                     cache=cache and self.use_cache, images_hash=images_hash, workers=self.workers, amp=self.amp)

    # -- the reference side ----------------------------------------------------------------------
    def _shipped_path(self) -> Path | None:
        """Where a registry ships the protocol's own reference side (T and P_n as they are), if it may."""
        if self.shipped_dir is None or self.condition != "none":
            return None
        return self.shipped_dir / reference_file(self.protocol)

    def scoring_path(self) -> Path | None:
        """Where a registry ships what scoring records under the engine's condition needs
        (:meth:`scoring_side`), if it may: beside the protocol's own side, named as the whole side's cache file."""
        if self.shipped_dir is None or self.condition == "none":
            return None
        return self.shipped_dir / reference_file(self.protocol, self.condition)

    def _cache_path(self) -> Path:
        """Where the cache keeps the reference side under the engine's condition."""
        return cache_dir() / "reference" / reference_file(self.protocol, self.condition)

    def _reference_paths(self) -> list[Path]:
        shipped = self._shipped_path()
        paths = [] if shipped is None else [shipped]
        if self.use_cache:
            paths.append(self._cache_path())
        return paths

    def reference_side(self) -> list[Any]:
        """The reference side: the statistic fitted on T and P_n (put through the engine's condition), one per
        protocol layer (on the engine's device where the statistic can compute on one). Loaded from the
        shipped file or the cache, else computed (minutes: T and P_n are embedded), then kept."""
        if self._reference_side is None:
            self._reference_side = self._load_or_fit()
        return self._reference_side

    def scoring_side(self) -> list[Any]:
        """What scoring per-image records needs of the reference side, one per layer: the reference side when this
        engine holds it already; else, under a condition, the part of it the registry ships for scoring records
        (:meth:`ship_scoring_side`; checked against the digest the registry records), so that the records a
        registry keeps under a processed side are scored without fitting T and P_n under it; else the reference
        side itself (:meth:`reference_side`, fitted if need be). Records scored against either give the same values."""
        if self._reference_side is not None:
            return self._reference_side
        if self._scoring_side is None:
            path = self.scoring_path()
            found = None if path is None else load_reference(path, self.protocol.layers, self.statistic,
                                                            protocol=self.protocol.name)
            if found is None:
                return self.reference_side()
            self._scoring_side, self.reference_origin = found, f"{path} (the part that scores records)"
        return self._scoring_side

    def ship_scoring_side(self, registry: Any, *, fit: bool = False) -> Path | None:
        """Store the part of this engine's reference side that scores records (the statistic's ``scoring_part``)
        in ``registry``, with its digest, where :meth:`scoring_side` reads it (:meth:`scoring_path`). The side is
        the one this engine holds, else the cache's; with ``fit``, else fitted (minutes). The file's path, or None
        where there is nothing to ship: T and P_n as they are (the protocol's own side is shipped whole,
        :meth:`ship_reference`), a statistic without a scoring part, the file shipped already, or (without
        ``fit``) a side neither held nor cached."""
        path = self.scoring_path()
        if path is None or path.is_file():
            return None
        refs = self._reference_side
        if refs is None and self.use_cache:
            refs = load_reference(self._cache_path(), self.protocol.layers, self.statistic)
        if refs is None and fit:
            refs = self.reference_side()
        if refs is None or not all(callable(getattr(ref, "scoring_part", None)) for ref in refs):
            return None
        parts = [ref.scoring_part() for ref in refs]
        return registry.ship_reference(self.protocol.name, path.name,
                                       lambda target: save_reference(target, parts, self.protocol.layers))

    def _statistic_device(self) -> str | None:
        """The engine's device for the statistic, when it is not the CPU and the statistic can use it."""
        return self.device if self.device != "cpu" and self.statistic.devices else None

    def _load_or_fit(self) -> list[Any]:
        layers = self.protocol.layers
        device = self._statistic_device()
        shipped = self._shipped_path()
        for path in self._reference_paths():
            # a shipped file is checked against the digest the registry records of the file its
            # fingerprints were scored against
            refs = load_reference(path, layers, self.statistic, protocol=self.protocol.name if path == shipped else None)
            if refs is not None:
                self.reference_origin = str(path)
                return refs if device is None else [r.to(device) for r in refs]
            if path == shipped and path.is_file():
                # a registry's fingerprints were scored against exactly this file: refitting could move the
                # cells and make the query incomparable, so say so rather than silently recompute
                raise ForensicsError(f"the reference side shipped with protocol {self.protocol.name!r} ({path}) "
                                     "cannot be read by this version of forensics; re-create it with "
                                     "`forensics protocol create … --ship-reference` and re-enrol")
        try:
            refs = self._fit_reference(layers, device)
        except StatisticError as exc:  # T and P_n do not suit the protocol's settings, which are fixed
            if self.condition != "none":  # the protocol's own side fits; T and P_n processed so do not
                raise ProcessedSideUnfit(self.protocol.name, self.condition, str(exc)) from exc
            raise StatisticError(f"protocol {self.protocol.name!r} cannot fit its reference side ({exc}): a "
                                 "protocol's settings are fixed, so define one with those changed (`forensics "
                                 "protocol create`, under a name not yet written)") from exc
        self.reference_origin = "computed"
        if self.use_cache:
            path = self._cache_path()
            try:
                save_reference(path, refs, layers)
                self.reference_origin = f"computed, cached at {path}"
            except (OSError, ForensicsError) as exc:  # a read-only cache folder, a full disk: the fit serves
                self.reference_origin = f"computed, not cached ({exc})"
                warnings.warn(f"the reference side was computed but could not be cached at {path} ({exc}); the "
                              "next run computes it again (set FORENSICS_CACHE_DIR to a writable folder)",
                              stacklevel=2)
        return refs

    def _fit_reference(self, layers: Sequence[str], device: str | None) -> list[Any]:
        """Embed T and P_n (through the embedding cache) and fit the statistic at every layer: the reference
        side when neither the registry nor the cache has it. (:class:`forensics.distributed.RayEngine` does
        this on a Ray cluster.)"""
        (train, t_hash), (test, p_hash) = self.reference_sets()
        train_emb = self.embed(train, "training set T", cache=True, images_hash=t_hash)
        test_emb = self.embed(test, "held-out set P_n", cache=True, images_hash=p_hash)
        refs = []
        for layer, t, p in zip(layers, train_emb, test_emb):
            refs.append(self.statistic.fit(t, p, **self.fit_params, **({"device": device} if device else {})))
            if self.progress is not None:
                self.progress(f"fitting {self.protocol.statistic.name}", len(refs), len(layers))
        return refs

    def reference_sets(self) -> tuple[tuple[np.ndarray, str | None], tuple[np.ndarray, str | None]]:
        """(T, its content key) and (P_n, its key), put through the engine's condition (:func:`processed_hash`)."""
        from forensics.conditions import get_condition

        sets = []
        for ref in (self.protocol.train, self.protocol.test):
            images, digest = load_reference_set(ref), ref.sha256
            if self.condition != "none":
                images = get_condition(self.condition).apply(images)
                digest = processed_hash(digest, self.condition) if digest else sha256_array(images)
            sets.append((images, digest))
        return sets[0], sets[1]

    def ship_reference(self, registry: Any) -> Path:
        """Store the fitted reference side beside the protocol in ``registry``, with its digest (the engine checks
        a shipped file against it before use), both at once (:meth:`forensics.registry.Registry.ship_reference`)."""
        refs = self.reference_side()
        return registry.ship_reference(self.protocol.name, reference_file(self.protocol),
                                       lambda path: save_reference(path, refs, self.protocol.layers))

    # -- curves ----------------------------------------------------------------------------------
    def _score(self, batches: list[list[np.ndarray]]) -> list[list[Any]]:
        """Per batch (its embeddings, one array a layer), per layer: the statistic's score, or the
        :class:`StatisticError` that says why it is undefined. Engines that score elsewhere override this."""
        results: list[list[Any]] = []
        for embeddings in batches:
            scores: list[Any] = []
            for ref, q in zip(self.reference_side(), embeddings):
                try:
                    scores.append(ref.score(q, **self.score_params))
                except StatisticError as exc:
                    scores.append(exc)
            results.append(scores)
        return results

    def curve_from_embeddings(self, embeddings: Sequence[np.ndarray]) -> Curve:
        (scores,) = self._score([list(embeddings)])
        return self.curve_from_scores(scores, len(embeddings[0]) if len(embeddings) else 0)

    def curve_from_scores(self, scores: Sequence[Any], n: int) -> Curve:
        """The curve of ``n`` images from the statistic's score at each layer (a :class:`StatisticError`
        where the value is undefined), each value read by the statistic."""
        values: list[LayerValue] = []
        for layer, result in zip(self.protocol.layers, scores):
            if isinstance(result, StatisticError):
                values.append(LayerValue(layer, None, None, str(result), self._reading(None, layer)))
            else:
                value = self._value(result, layer)
                values.append(LayerValue(layer, value, result.counted_weight, None, self._reading(value, layer)))
        fp = Fingerprint.from_values(self.protocol.digest, [lv.value for lv in values])
        return Curve(fingerprint=fp, layers=tuple(values), n_images=n)

    def _value(self, score: Any, layer: str) -> float:
        """A score's value, checked: a statistic says a value is undefined by raising :class:`StatisticError`,
        so a value that is no finite number is a broken plugin, named, not a layer read as undefined."""
        from forensics.plugins import broken

        value = getattr(score, "value", None)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise broken("statistics", self.protocol.statistic.name,
                         f"scored a {type(value).__name__} at {layer}, not a number")
        if not math.isfinite(value):
            raise broken("statistics", self.protocol.statistic.name,
                         f"scored {float(value)} at {layer} (an undefined value is said by raising StatisticError)")
        return float(value)

    def _reading(self, value: float | None, layer: str) -> str:
        """The statistic's reading of ``value``, checked to be one of :data:`~forensics.stats.base.READINGS`."""
        from forensics.plugins import broken

        reading = self.statistic.reading(value)
        if reading not in READINGS:
            raise broken("statistics", self.protocol.statistic.name,
                         f"read the value {value} at {layer} as {reading!r}, not one of {', '.join(READINGS)}")
        return reading

    def curve(self, images: np.ndarray, what: str = "images") -> Curve:
        """One curve of all ``images`` as one batch, whatever their number."""
        return self.curve_from_embeddings(self.embed(images, what))

    @property
    def keeps_records(self) -> bool:
        """Whether the protocol's statistic gives per-image records (:meth:`records`), from which the
        curve of any sub-batch is computed without the images."""
        return keeps_records(self.scoring_side())

    def records(self, images: np.ndarray, what: str = "images") -> list[np.ndarray]:
        """Per protocol layer, the statistic's per-image records of ``images`` (one row per image, in
        order): what the statistic keeps of each image, so that :meth:`curve_from_records` of any rows is
        the curve of those images. Only for statistics that keep records (:attr:`keeps_records`)."""
        if not self.keeps_records:
            raise UsageError(f"statistic {self.protocol.statistic.name!r} keeps no per-image records")
        return self._records_of(self.embed(images, what))

    def _records_of(self, embeddings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer, the statistic's per-image records of the embedded images (one array a layer, as
        :meth:`embed` gives them). Engines that score elsewhere override this."""
        return [ref.records(e) for ref, e in zip(self.reference_side(), embeddings)]

    def curve_from_records(self, records: Sequence[np.ndarray], rows: np.ndarray | None = None) -> Curve:
        """The curve of the images whose per-layer :meth:`records` are ``records`` (only ``rows`` of
        them, when given): the same curve as embedding those images again."""
        return self.curves_from_records(records, [rows])[0]

    def curves_from_records(self, records: Sequence[np.ndarray],
                            subsets: Sequence[np.ndarray | None]) -> list[Curve]:
        """:meth:`curve_from_records` of each of ``subsets`` (rows, or None for all), each layer's subsets
        scored together where the statistic offers ``score_subsets`` (the same values, sooner)."""
        per_layer = [self._subset_scores(ref, r, subsets) for ref, r in zip(self.scoring_side(), records)]
        n = len(records[0]) if len(records) else 0
        return [self.curve_from_scores([layer[j] for layer in per_layer], n if rows is None else len(rows))
                for j, rows in enumerate(subsets)]

    def _subset_scores(self, ref: Any, records: np.ndarray, subsets: Sequence[np.ndarray | None]) -> list[Any]:
        """One layer's score of each subset of its ``records`` (a :class:`StatisticError` where undefined), all
        together where the statistic offers ``score_subsets``."""
        if callable(getattr(ref, "score_subsets", None)):
            try:
                return list(ref.score_subsets(records, subsets, **self.score_params))
            except StatisticError:
                pass  # some subset is undefined: each on its own, to say which
        scores: list[Any] = []
        for rows in subsets:
            try:
                scores.append(ref.score_records(records if rows is None else records[rows], **self.score_params))
            except StatisticError as exc:
                scores.append(exc)
        return scores

    def vectors_from_records(self, records: Sequence[np.ndarray], subsets: Sequence[np.ndarray | None]) -> np.ndarray:
        """The curve vectors (:meth:`~forensics.protocol.Fingerprint.vector`: undefined values as 0) of
        :meth:`curves_from_records`, one row a subset, the same numbers: a layer whose statistic offers
        ``subset_values`` (the values alone, NaN where undefined) is read from it, the others from their scores.
        What resampling and redrawing a set repeat thousands of times need, without a curve object each."""
        columns = []
        for layer, ref, r in zip(self.protocol.layers, self.scoring_side(), records):
            values = None
            if callable(getattr(ref, "subset_values", None)):
                try:
                    values = np.asarray(ref.subset_values(r, subsets, **self.score_params), dtype=np.float64)
                except StatisticError:
                    values = None  # the records themselves are refused: each subset scored, as curves are
            if values is None:
                values = np.array([np.nan if isinstance(score, StatisticError) else self._value(score, layer)
                                   for score in self._subset_scores(ref, r, subsets)], dtype=np.float64)
            elif values.shape != (len(subsets),) or np.isinf(values).any():
                from forensics.plugins import broken

                raise broken("statistics", self.protocol.statistic.name,
                             f"gave values of shape {values.shape} (or infinite) at {layer} for {len(subsets)} subsets")
            columns.append(np.where(np.isnan(values), 0.0, values))
        return np.stack(columns, axis=1) if columns else np.zeros((len(subsets), 0))

    def curves(self, images: np.ndarray, *, what: str = "query images", partial: bool = True) -> list[Curve]:
        """One curve per batch of the protocol's m images.

        With fewer than m images, one curve of them all (``partial``; its values are not on the same scale
        as the registry's and reports say so). A remainder after the last full batch is left out.
        """
        return self.curves_and_records(images, what=what, partial=partial, records=False)[0]

    def curves_and_records(self, images: np.ndarray, *, what: str = "query images", partial: bool = True,
                           records: bool = True) -> tuple[list[Curve], list[np.ndarray] | None]:
        """:meth:`curves` and, from the same embedding, the images' per-image :meth:`records` (``None``
        where the statistic keeps none, or not asked for): what resampling a batch's images needs. With
        records, the curves are scored from them (the same values: a statistic's score is that of its
        records), so the statistic's search runs once."""
        m = self.protocol.batch_size
        n = len(images)
        if n == 0:
            raise UsageError("no images to fingerprint")
        if n < m and not partial:
            raise UsageError(f"the protocol's batch size is {m} images, only {n} given")
        embeddings = self.embed(images, what)
        if records and self.keeps_records:
            kept = self._records_of(embeddings)
            rows = [None] if n < m else [np.arange(s, s + m) for s in range(0, n - m + 1, m)]
            return self.curves_from_records(kept, rows), kept
        if n < m:
            return [self.curve_from_embeddings(embeddings)], None
        batches = [[e[s:s + m] for e in embeddings] for s in range(0, n - m + 1, m)]
        return [self.curve_from_scores(scores, m) for scores in self._score(batches)], None


class ProcessedSideUnfit(StatisticError):
    """The statistic cannot be fitted on T and P_n put through a condition (not none), though the protocol's own
    side fits: k-means on the processed T can leave a cell that no processed point of P_n falls in (seen:
    EfficientNet-Lite0's ``blocks.0`` under WebP 90 on MNIST). ``reason``: the statistic's own words.
    :func:`fitted_references` falls back to T and P_n as they are where its caller allows it."""

    def __init__(self, protocol: str, condition: str, reason: str):
        super().__init__(f"protocol {protocol!r} cannot fit its reference side with T and P_n put through "
                         f"{condition} ({reason})")
        self.protocol, self.condition, self.reason = protocol, condition, reason


def fitted_references(eng: Any, references: str | Mapping[str, str],
                      fall_back: Callable[[ProcessedSideUnfit], None] | None = None) -> dict[str, str]:
    """What each protocol of ``eng`` (an :class:`Engine`, or each part of a :class:`CombinedEngine`) puts T and
    P_n through, by protocol name (what :meth:`Engine.under` takes): ``references`` (one name for all, or a name
    per protocol, absent: none) where its reference side under it can be had — read, or fitted now, then kept —
    else T and P_n as they are, where the statistic cannot be fitted on them so processed
    (:class:`ProcessedSideUnfit`) and ``fall_back(error)`` returns (it raises where the caller cannot score
    under the protocol's own side instead; without it, the error is raised). The protocol's own side (none)
    is not fitted here, and its error stays the engine's."""
    from forensics.conditions import NONE

    used = {}
    for part in getattr(eng, "engines", [eng]):
        name = part.protocol.name
        reference = references if isinstance(references, str) else references.get(name, NONE)
        if reference != NONE:
            try:
                part.under(reference).reference_side()
            except ProcessedSideUnfit as exc:
                if fall_back is None:
                    raise
                fall_back(exc)
                reference = NONE
        used[name] = reference
    return used


def keeps_records(fits: Sequence[Any]) -> bool:
    """Whether fitted statistics give per-image records: ``records(generated)`` and ``score_records(records,
    **score_params)``, the second of any subset of the first's rows being the score of that subset. Such a
    statistic may also offer ``score_subsets(records, subsets, **score_params)``, the ``score_records`` of
    each subset of rows (None: all), which :meth:`Engine.curves_from_records` then uses, and ``subset_values``
    (their values alone), which :meth:`Engine.vectors_from_records` uses."""
    return all(callable(getattr(f, "records", None)) and callable(getattr(f, "score_records", None)) for f in fits)


def one_encoder_weights(protocol: Protocol | Combination, weights: str | None) -> None:
    """Refuse a weights file for a combination: ``--weights`` names one encoder's weights."""
    if weights is not None and len(protocol.parts) > 1:
        raise UsageError(f"--weights names one encoder's weights; protocol {protocol.name!r} combines "
                         f"{', '.join(p.name for p in protocol.parts)}: use it under one of them")


def check_weights(protocol: Protocol | Combination, weights: str | None) -> None:
    """What ``--weights`` asks that the protocol refuses, refused before any data set is fetched or image read:
    a weights file for a combination (:func:`one_encoder_weights`), and random weights for an encoder whose
    recorded weights are not random (a file's digest is checked when the encoder is built)."""
    one_encoder_weights(protocol, weights)
    if weights is not None and str(weights) == "random":
        for part in protocol.parts:
            if part.encoder.weights_source != "random":
                raise ProtocolMismatch(f"--weights random: random weights are not the weights of protocol "
                                       f"{part.name!r} ({part.encoder.weights_source}); leave --weights out to use "
                                       "its own, or pass its weights file")


class CombinedEngine:
    """Computes a :class:`~forensics.protocol.Combination`'s fingerprints: every part's :class:`Engine` on
    the same images, their curves end to end, each layer named ``<part>/<layer>``."""

    def __init__(self, combination: Combination, *, shipped_dirs: Mapping[str, Path] | None = None,
                 engine: type[Engine] | None = None, **options: Any):
        one_encoder_weights(combination, options.get("weights"))
        self.protocol = combination
        dirs = dict(shipped_dirs or {})
        cls = engine or Engine
        self.engines = [cls(p, shipped_dir=dirs.get(p.name), **options) for p in combination.parts]

    def under(self, condition: str | Mapping[str, str]) -> CombinedEngine:
        """Every part's :meth:`Engine.under` (``condition``: one name for all parts, or a name per part)."""
        key = condition if isinstance(condition, str) else tuple(sorted(condition.items()))
        under = self.__dict__.setdefault("_under", {})
        if key not in under:
            engines = [e.under(condition) for e in self.engines]
            if all(a is b for a, b in zip(engines, self.engines)):
                under[key] = self  # every part's T and P_n as this engine's: this engine
            else:
                under[key] = found = copy.copy(self)
                found.engines = engines
        return under[key]

    @property
    def reference_origin(self) -> str | None:
        origins = [(e.protocol.name, e.reference_origin) for e in self.engines]
        if all(origin is None for _, origin in origins):
            return None
        return "; ".join(f"{name}: {origin}" for name, origin in origins)

    @property
    def cluster(self) -> dict[str, Any] | None:
        return self.engines[0].cluster  # every part on the one cluster (or in this process)

    def _join(self, curves: Sequence[Curve]) -> Curve:
        layers = tuple(replace(lv, layer=f"{e.protocol.name}/{lv.layer}")
                       for e, c in zip(self.engines, curves) for lv in c.layers)
        fp = Fingerprint.from_values(self.protocol.digest, [lv.value for lv in layers])
        return Curve(fingerprint=fp, layers=layers, n_images=curves[0].n_images)

    def curve(self, images: np.ndarray, what: str = "images") -> Curve:
        return self._join([e.curve(images, f"{what} ({e.protocol.name})") for e in self.engines])

    def curves(self, images: np.ndarray, *, what: str = "query images", partial: bool = True) -> list[Curve]:
        return self.curves_and_records(images, what=what, partial=partial, records=False)[0]

    def curves_and_records(self, images: np.ndarray, *, what: str = "query images", partial: bool = True,
                           records: bool = True) -> tuple[list[Curve], list[np.ndarray] | None]:
        """Every part's :meth:`Engine.curves_and_records`: the curves joined, the records end to end (``None``
        unless every part keeps them)."""
        per_part = [e.curves_and_records(images, what=f"{what} ({e.protocol.name})", partial=partial,
                                         records=records and self.keeps_records) for e in self.engines]
        kept = None if any(k is None for _, k in per_part) else [r for _, k in per_part for r in k]
        return [self._join(batch) for batch in zip(*(c for c, _ in per_part))], kept

    @property
    def keeps_records(self) -> bool:
        return all(e.keeps_records for e in self.engines)

    def records(self, images: np.ndarray, what: str = "images") -> list[np.ndarray]:
        """Every part's :meth:`Engine.records`, end to end (one array per layer of the combined curve)."""
        return [r for e in self.engines for r in e.records(images, f"{what} ({e.protocol.name})")]

    def curve_from_records(self, records: Sequence[np.ndarray], rows: np.ndarray | None = None) -> Curve:
        return self.curves_from_records(records, [rows])[0]

    def curves_from_records(self, records: Sequence[np.ndarray],
                            subsets: Sequence[np.ndarray | None]) -> list[Curve]:
        parts = [e.curves_from_records(r, subsets) for e, r in self._parts_of(records)]
        return [self._join([part[j] for part in parts]) for j in range(len(subsets))]

    def vectors_from_records(self, records: Sequence[np.ndarray], subsets: Sequence[np.ndarray | None]) -> np.ndarray:
        """Every part's :meth:`Engine.vectors_from_records`, end to end: the joined curves' vectors."""
        return np.hstack([e.vectors_from_records(r, subsets) for e, r in self._parts_of(records)])

    def _parts_of(self, records: Sequence[np.ndarray]) -> list[tuple[Engine, Sequence[np.ndarray]]]:
        """Each part's engine with its layers' share of the combined ``records``."""
        parts, start = [], 0
        for e in self.engines:
            n = len(e.protocol.layers)
            parts.append((e, records[start:start + n]))
            start += n
        return parts


ENGINES = ("local", "ray")


def engine_class(engine: str = "local", ray_address: str | None = None) -> Callable[..., Engine]:
    """What builds an :class:`Engine` of the kind ``engine`` names: ``"local"`` (this process, the default)
    or ``"ray"`` (:class:`forensics.distributed.RayEngine`, on the Ray cluster at ``ray_address``, a local
    one when None; needs the extra ``forensics[ray]``)."""
    if engine == "local":
        if ray_address is not None:
            raise UsageError("--ray-address is for --engine ray; add --engine ray or drop --ray-address")
        return Engine
    if engine == "ray":
        from functools import partial

        from forensics.distributed import RayEngine, require_ray

        require_ray()  # without the extra, one line naming it, before any work
        return partial(RayEngine, address=ray_address)
    raise UsageError(f"--engine takes {' or '.join(ENGINES)}, not {engine!r}")


def records_curves(engine: Engine | CombinedEngine
                   ) -> Callable[[np.ndarray, Sequence[np.ndarray]], list[np.ndarray]]:
    """``curves_of(records, subsets)`` for :func:`forensics.match.batchsize.references_at`: the curve vector
    (undefined values as 0) of each subset of rows of an instance's (layers, images, fields) records."""
    def curves_of(records: np.ndarray, subsets: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(engine.vectors_from_records(list(records), subsets))

    return curves_of


def make_engine(protocol: Protocol | Combination, *, reference_dir: Callable[[str], Path] | None = None,
                engine: str = "local", ray_address: str | None = None, **options: Any) -> Engine | CombinedEngine:
    """The engine for a protocol or a combination; ``reference_dir(name)`` says where a protocol's reference
    side may be shipped (:meth:`forensics.registry.Registry.reference_dir`). ``engine``: ``"local"`` or
    ``"ray"`` (:func:`engine_class`). ``options`` go to every :class:`Engine`."""
    cls = engine_class(engine, ray_address)
    dirs = {p.name: reference_dir(p.name) for p in protocol.parts} if reference_dir is not None else {}
    if isinstance(protocol, Combination):
        return CombinedEngine(protocol, shipped_dirs=dirs, engine=cls, **options)
    return cls(protocol, shipped_dir=dirs.get(protocol.name), **options)


def _pack(refs: Sequence[Any], layers: Sequence[str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"__format__": np.array(REFERENCE_FORMAT),
                                     "__layers__": np.array(list(layers))}
    for i, ref in enumerate(refs):
        for key, value in ref.to_arrays().items():
            arrays[f"{i}/{key}"] = np.asarray(value)
    return arrays


def _unpack(arrays: dict[str, np.ndarray], layers: Sequence[str], statistic: Statistic) -> list[Any] | None:
    if int(arrays.get("__format__", -1)) != REFERENCE_FORMAT or list(arrays.get("__layers__", [])) != list(layers):
        return None
    refs = []
    for i in range(len(layers)):
        prefix = f"{i}/"
        part = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        try:
            refs.append(statistic.from_arrays(part))
        except (KeyError, ValueError, ForensicsError):
            return None
    return refs


def compute_fingerprints(images: np.ndarray, protocol: Protocol | Combination, *, device: str = "cpu",
                         weights: str | None = None, progress: Progress | None = None,
                         reference_dir: Callable[[str], Path] | None = None, engine: str = "local",
                         ray_address: str | None = None) -> list[Fingerprint]:
    """One fingerprint per full batch of the protocol's m images (what ``registry enroll`` stores);
    ``engine``/``ray_address`` as :func:`make_engine` takes them."""
    if len(images) < protocol.batch_size:
        raise UsageError(f"enrolling needs at least one full batch of {protocol.batch_size} images; got {len(images)}")
    engine = make_engine(protocol, reference_dir=reference_dir, device=device, weights=weights, progress=progress,
                         engine=engine, ray_address=ray_address)
    return [c.fingerprint for c in engine.curves(images, partial=False)]


def fingerprints_and_records(images: np.ndarray, protocol: Protocol | Combination, *,
                             conditions: Sequence[str] = ("none",), device: str = "cpu", weights: str | None = None,
                             progress: Progress | None = None, reference_dir: Callable[[str], Path] | None = None,
                             engine: str = "local", ray_address: str | None = None,
                             references: Callable[[str], str | Mapping[str, str]] | None = None,
                             fall_back: Callable[[ProcessedSideUnfit], None] | None = None
                             ) -> tuple[list[Fingerprint], list[dict[str, list[np.ndarray]]] | None]:
    """What ``registry enroll`` stores: one fingerprint per full batch of the protocol's m images, and per
    batch its per-image records under each post-processing condition (:mod:`forensics.conditions`; the
    images put through it, embedded and kept by the statistic, scored against T and P_n put through
    ``references(condition)`` — the registry's :meth:`~forensics.registry.Registry.record_references` — or
    by default :func:`~forensics.conditions.reference_condition`; where the statistic cannot be fitted on them
    so processed, against T and P_n as they are if ``fall_back`` allows it: :func:`fitted_references`), or None
    when the statistic keeps no records. The fingerprints are the curves of the ``none`` records: the same as
    :meth:`Engine.curves`."""
    from forensics.conditions import get_condition

    if len(images) < protocol.batch_size:
        raise UsageError(f"enrolling needs at least one full batch of {protocol.batch_size} images; got {len(images)}")
    for c in conditions:
        get_condition(c)
    eng = make_engine(protocol, reference_dir=reference_dir, device=device, weights=weights, progress=progress,
                      engine=engine, ray_address=ray_address)
    return batch_records(eng, images, conditions, references=references, fall_back=fall_back)


def batch_records(eng: Any, images: np.ndarray, conditions: Sequence[str] = ("none",), what: str = "images", *,
                  references: Callable[[str], str | Mapping[str, str]] | None = None,
                  fall_back: Callable[[ProcessedSideUnfit], None] | None = None
                  ) -> tuple[list[Fingerprint], list[dict[str, list[np.ndarray]]] | None]:
    """:func:`fingerprints_and_records` computed by an engine already started (``eng``: one serves many
    sets); ``what`` names the images in its progress."""
    from forensics.conditions import NONE, get_condition, reference_condition

    against = references or reference_condition

    m = eng.protocol.batch_size
    conditions = [NONE] + [c for c in dict.fromkeys(conditions) if c != NONE]
    full = len(images) - len(images) % m
    if not eng.keeps_records:
        return [c.fingerprint for c in eng.curves(images, what=what, partial=False)], None
    kept = {c: eng.under(fitted_references(eng, against(c), fall_back)).records(
                get_condition(c).apply(images[:full]), what if c == NONE else f"{what} ({c})")
            for c in conditions}
    batches = [np.arange(s, s + m) for s in range(0, full, m)]
    fps = [curve.fingerprint for curve in eng.curves_from_records(kept[NONE], batches)]
    return fps, [{c: [r[rows] for r in kept[c]] for c in conditions} for rows in batches]


def make_protocol(name: str, *, dataset: str, encoder: str, encoder_options: dict[str, Any] | None = None,
                  weights: str | None = None, layers: Sequence[str] | None = None, statistic: str = "ct",
                  statistic_params: dict[str, Any] | None = None, batch_size: int = 500, description: str = "",
                  notes: dict[str, Any] | None = None, device: str = "cpu") -> Protocol:
    """Define a new protocol: hash the reference sets, build the encoder, record everything."""
    refs = []
    for split in ("train", "test"):
        images = dataset_split(dataset, split)
        refs.append(DataRef(dataset=dataset, split=split, count=len(images), sha256=sha256_array(images)))
    options = dict(encoder_options or {})
    enc = new_encoder(encoder, options, weights=weights, device=device)
    check_layer_dims(statistic, enc.layer_dims(layers))
    stat = get_statistic(statistic)
    fit, score = split_params(stat, statistic_params or {})
    return Protocol(name=name, description=description, train=refs[0], test=refs[1],
                    encoder=EncoderRef.from_identity(enc.identity(layers), options),
                    statistic=StatisticRef(statistic, {**fit, **score}), batch_size=batch_size,
                    notes=dict(notes or {}))
