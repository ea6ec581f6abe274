"""Protocols and fingerprints.

A **protocol** is everything that makes two C_T curves comparable: the reference sets T and P_n (by
data-set name and content hash), the encoder (name, options, weights digest, layers, pooling,
preprocessing), the statistic and its parameters, and the batch size m. Its :meth:`Protocol.digest`
is a hash of exactly those things (not of its name or description), so renaming a protocol never
breaks its fingerprints, while changing any one setting does.

A **fingerprint** is the curve of one statistic value per layer for one batch of m images, computed
under one protocol. It is only ever compared with fingerprints of the same protocol digest.

A **combination** reads several protocols as one: its fingerprint is their curves end to end, and its
digest a hash of theirs. Code that needs only layers, batch size and digest takes either; code that
needs an encoder iterates ``.parts`` (a plain protocol's parts are itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from forensics.errors import ProtocolMismatch, RegistryError
from forensics.io.hashing import freeze, is_digest, sha256_json, short


def _need(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping):
        raise RegistryError(f"{where}: expected a mapping, got {type(d).__name__}")
    if key not in d:
        raise RegistryError(f"{where}: missing key {key!r}")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RegistryError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` when it is plain JSON (text, finite numbers, booleans, null, lists, mappings with text keys),
    which is all a digest covers; else a :class:`RegistryError` naming ``where``."""
    if depth > 32:
        raise RegistryError(f"{where}: nested too deeply")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RegistryError(f"{where}: {value} is not allowed in a protocol record")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):
                raise RegistryError(f"{where}: key {k!r:.40} is not text")
        return {k: _plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise RegistryError(f"{where}: expected text, a number, a list or a mapping, got {type(value).__name__}")


def _mapping(d: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """``d[key]``: an optional mapping of plain values (empty when absent or null)."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RegistryError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
    return dict(_plain(value, f"{where}.{key}"))


#: keyword arguments an encoder factory is given by the engine itself; an option of the same name would collide
RESERVED_ENCODER_OPTIONS = ("weights", "device")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _preprocessing(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An encoder's ``preprocessing`` record, every key checked (what :class:`Preprocessing` is built from)."""
    pre = _need(d, "preprocessing", dict, where)
    where = f"{where}.preprocessing"
    for key in ("size", "resize", "interpolation", "mean", "std"):
        if key not in pre:
            raise RegistryError(f"{where}: missing key {key!r} (size, resize, interpolation, mean, std)")
    for key in ("size", "resize"):
        v = pre[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 65536:
            raise RegistryError(f"{where}.{key}: expected a positive number of pixels, got {v!r:.40}")
    if pre["size"] > pre["resize"]:
        raise RegistryError(f"{where}: size {pre['size']} is larger than resize {pre['resize']}")
    if pre["interpolation"] not in _INTERPOLATIONS:
        raise RegistryError(f"{where}.interpolation: expected one of {', '.join(_INTERPOLATIONS)}, "
                            f"got {pre['interpolation']!r:.40}")
    for key in ("mean", "std"):
        v = pre[key]
        if (not isinstance(v, list) or len(v) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                or (key == "std" and not all(x > 0 for x in v))):
            raise RegistryError(f"{where}.{key}: expected three finite numbers{' > 0' if key == 'std' else ''}, "
                                f"got {v!r:.60}")
    return dict(_plain(pre, where))


def _digest_field(d: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    if optional and d.get(key) is None:
        if key not in d:
            raise RegistryError(f"{where}: missing key {key!r} (null when not recorded)")
        return None
    value = _need(d, key, str, where)
    if not is_digest(value):
        raise RegistryError(f"{where}.{key}: expected 'sha256:' and 64 hex digits, got {value!r}")
    return value


#: options of a reference set that say where its images lie, not what they are: outside the digest
LOCATION_OPTIONS = ("path",)


@dataclass(frozen=True)
class DataRef:
    """A reference set: which data-set plugin gives it, which split, how many images, their content hash.

    ``sha256`` is the hash of the uint8 image array (:func:`forensics.io.hashing.sha256_array`); ``None``
    only for protocols imported from elsewhere whose data could not be hashed here (the data-set plugin
    then checks the files against their published checksums instead).

    Options named in :data:`LOCATION_OPTIONS` (``path``: where the user's own images lie on this machine) are
    recorded but left out of :meth:`to_dict`, the part a digest covers: the content hash says what the images
    are, so the same images in another folder, or on a colleague's machine, make the same protocol.
    """

    dataset: str
    split: str
    count: int
    sha256: str | None
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What the protocol's digest covers (no location)."""
        return {"dataset": self.dataset, "split": self.split, "count": self.count, "sha256": self.sha256,
                "options": freeze({k: v for k, v in self.options.items() if k not in LOCATION_OPTIONS})}

    def record(self) -> dict[str, Any]:
        """What protocol.yaml holds: :meth:`to_dict` and the location options."""
        return {**self.to_dict(), "options": freeze(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> DataRef:
        count = _need(d, "count", int, where)
        if count <= 0:
            raise RegistryError(f"{where}.count: must be positive, got {count}")
        return cls(dataset=_need(d, "dataset", str, where), split=_need(d, "split", str, where), count=count,
                   sha256=_digest_field(d, "sha256", where, optional=True), options=_mapping(d, "options", where))


@dataclass(frozen=True)
class EncoderRef:
    """The encoder of a protocol, as :meth:`forensics.encode.encoder.Encoder.identity` describes it.

    ``weights`` is the digest of the weight tensors; ``None`` only for protocols imported from elsewhere
    whose weights were not available to hash (``weights_source`` then names them exactly).
    """

    name: str
    weights: str | None
    weights_source: str
    layers: tuple[str, ...]
    pooling: str
    preprocessing: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": freeze(self.options), "weights": self.weights,
                "weights_source": self.weights_source, "layers": list(self.layers), "pooling": self.pooling,
                "preprocessing": freeze(self.preprocessing)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> EncoderRef:
        layers = _need(d, "layers", list, where)
        if not layers or not all(isinstance(x, str) and x for x in layers):
            raise RegistryError(f"{where}.layers: expected a non-empty list of layer names")
        if len(set(layers)) != len(layers):
            raise RegistryError(f"{where}.layers: a layer is listed twice")
        options = _mapping(d, "options", where)
        for key in RESERVED_ENCODER_OPTIONS:
            if key in options:
                raise RegistryError(f"{where}.options.{key}: collides with the encoder's own {key!r} argument "
                                    "(given by --weights / --device, not recorded as an option)")
        return cls(name=_need(d, "name", str, where), weights=_digest_field(d, "weights", where, optional=True),
                   weights_source=_need(d, "weights_source", str, where), layers=tuple(layers),
                   pooling=_need(d, "pooling", str, where), preprocessing=_preprocessing(d, where),
                   options=options)

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> EncoderRef:
        return cls(name=identity["name"], weights=identity["weights"], weights_source=identity["weights_source"],
                   layers=tuple(identity["layers"]), pooling=identity["pooling"],
                   preprocessing=dict(identity["preprocessing"]), options=dict(options or {}))


@dataclass(frozen=True)
class StatisticRef:
    """The statistic of a protocol and all its parameters (for C_T: k, distance, projection, tau, seed)."""

    name: str
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": freeze(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> StatisticRef:
        _need(d, "params", dict, where)
        return cls(name=_need(d, "name", str, where), params=_mapping(d, "params", where))


@dataclass(frozen=True)
class Protocol:
    """Everything that makes two fingerprints comparable. See the module docstring."""

    name: str
    train: DataRef
    test: DataRef
    encoder: EncoderRef
    statistic: StatisticRef
    batch_size: int
    description: str = ""
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return self.encoder.layers

    @property
    def parts(self) -> tuple[Protocol, ...]:
        """The plain protocols whose curves make a fingerprint: this one (see :class:`Combination`)."""
        return (self,)

    def content(self) -> dict[str, Any]:
        """The part of the protocol that the digest covers."""
        return {"train": self.train.to_dict(), "test": self.test.to_dict(), "encoder": self.encoder.to_dict(),
                "statistic": self.statistic.to_dict(), "batch_size": self.batch_size}

    @cached_property
    def digest(self) -> str:
        """sha256 of :meth:`content` (computed once: a protocol is immutable, and every curve names it)."""
        return sha256_json(self.content())

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "description": self.description, **self.content(),
             "train": self.train.record(), "test": self.test.record()}
        if self.notes:
            d["notes"] = freeze(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "protocol") -> Protocol:
        batch_size = _need(d, "batch_size", int, where)
        if batch_size <= 0:
            raise RegistryError(f"{where}.batch_size: must be positive, got {batch_size}")
        return cls(name=_need(d, "name", str, where),
                   description=str(d.get("description") or ""),
                   train=DataRef.from_dict(_need(d, "train", dict, where), f"{where}.train"),
                   test=DataRef.from_dict(_need(d, "test", dict, where), f"{where}.test"),
                   encoder=EncoderRef.from_dict(_need(d, "encoder", dict, where), f"{where}.encoder"),
                   statistic=StatisticRef.from_dict(_need(d, "statistic", dict, where), f"{where}.statistic"),
                   batch_size=batch_size, notes=_mapping(d, "notes", where))

    def with_name(self, name: str) -> Protocol:
        return replace(self, name=name)

    def differences(self, other: Protocol | Combination) -> list[str]:
        """Human-readable list of settings that differ (empty when the digests are equal)."""
        return _diff(self.content(), other.content(), "")

    def require_same(self, other: Protocol | Combination, what: str = "these fingerprints") -> None:
        if self.digest != other.digest:
            diffs = self.differences(other)
            raise ProtocolMismatch(f"refusing to compare {what}: protocols {self.name!r} and {other.name!r} differ "
                                   f"in {'; '.join(diffs[:4])}{' …' if len(diffs) > 4 else ''}")


@dataclass(frozen=True)
class Combination:
    """Two or more protocols read as one: a batch's fingerprint is its parts' curves end to end.

    Each part keeps its own encoder, reference sets and statistic; a combination adds no setting of its
    own. Its layers are the parts' layers named ``<part>/<layer>``, its batch size the parts' (they must
    agree, or the curves would describe different batches), and its :attr:`digest` a hash of the parts'
    digests in order, so changing any part changes the combination. Curves are never stored under a
    combination: the registry joins the parts' instances of the same generator and id.
    """

    name: str
    parts: tuple[Protocol, ...]
    description: str = ""

    def __post_init__(self):
        if len(self.parts) < 2:
            raise RegistryError(f"combination {self.name!r}: combine at least two protocols")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise RegistryError(f"combination {self.name!r}: a protocol is listed twice ({', '.join(names)})")
        sizes = {p.batch_size for p in self.parts}
        if len(sizes) > 1:
            raise RegistryError(f"combination {self.name!r}: its protocols fingerprint batches of different sizes "
                                f"({', '.join(f'{p.name} m={p.batch_size}' for p in self.parts)}); "
                                "combine protocols with the same m")

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(f"{p.name}/{layer}" for p in self.parts for layer in p.layers)

    @property
    def batch_size(self) -> int:
        return self.parts[0].batch_size

    def content(self) -> dict[str, Any]:
        return {"combines": [p.digest for p in self.parts]}

    @cached_property
    def digest(self) -> str:
        """sha256 of :meth:`content`, computed once."""
        return sha256_json(self.content())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "combines": [{"protocol": p.name, "digest": p.digest} for p in self.parts]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], protocols: Mapping[str, Protocol],
                  where: str = "protocol") -> Combination:
        """Read a combination record against the protocols it names (as they are now).

        A part that is missing, is itself a combination, or whose digest is no longer the one recorded
        is an error: the combination's calibration and any report made under it describe those parts.
        """
        parts = []
        for i, item in enumerate(_need(d, "combines", list, where)):
            name = _need(item, "protocol", str, f"{where}.combines[{i}]")
            _digest_field(item, "digest", f"{where}.combines[{i}]")
            if name not in protocols:
                raise RegistryError(f"{where}.combines[{i}]: no protocol {name!r} in this registry "
                                    "(a combination combines plain protocols of the same registry): put its folder "
                                    "back, or remove the combination's folder")
            part = protocols[name]
            if part.digest != item["digest"]:
                raise RegistryError(f"{where}.combines[{i}]: protocol {name!r} has changed since the combination "
                                    f"was made (digest {short(item['digest'])}, now {short(part.digest)}); "
                                    "re-create it with `forensics protocol combine --overwrite`")
            parts.append(part)
        return cls(name=_need(d, "name", str, where), parts=tuple(parts), description=str(d.get("description") or ""))

    def differences(self, other: Protocol | Combination) -> list[str]:
        """Human-readable list of what differs: the protocols combined, by name, where those differ (their order
        too), else their settings."""
        if isinstance(other, Combination):
            mine, theirs = [p.name for p in self.parts], [p.name for p in other.parts]
            if mine != theirs:
                return [f"combines {', '.join(mine)} vs {', '.join(theirs)}"]
        return _diff(self.content(), other.content(), "")


def part_spans(protocol: Protocol | Combination) -> list[tuple[Protocol, int, int]]:
    """Where each protocol's values lie in a fingerprint: (protocol, start, stop) in curve order."""
    spans, start = [], 0
    for part in protocol.parts:
        spans.append((part, start, start + len(part.layers)))
        start += len(part.layers)
    return spans


def is_combination(d: Any) -> bool:
    """Whether a protocol record (the ``protocol`` mapping of protocol.yaml) is a combination's."""
    return isinstance(d, Mapping) and "combines" in d


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                out.append(f"{sub} ({'only in ' + ('second' if key not in a else 'first')})")
            else:
                out.extend(_diff(a[key], b[key], sub))
        return out
    if a != b:
        return [f"{path}: {_abbreviate(a)} vs {_abbreviate(b)}"]
    return []


def _abbreviate(value: Any) -> str:
    """``repr(value)``, cut to 40 characters and an ellipsis when longer than 41."""
    text = repr(value)
    return text[:40] + "…" if len(text) > 41 else text


@dataclass(frozen=True)
class Fingerprint:
    """One statistic value per protocol layer for one batch; ``None`` where the value is undefined
    (no cell passed the threshold). :meth:`vector` gives the curve matchers use, undefined as 0
    (He et al.'s rule)."""

    protocol_digest: str
    values: tuple[float | None, ...]

    def __post_init__(self):
        for v in self.values:
            if v is not None and not math.isfinite(v):
                raise ValueError("fingerprint values must be finite or None")

    def vector(self) -> np.ndarray:
        return np.array([0.0 if v is None else v for v in self.values], dtype=np.float64)

    @property
    def undefined(self) -> list[int]:
        return [i for i, v in enumerate(self.values) if v is None]

    @classmethod
    def from_values(cls, protocol_digest: str, values: Sequence[float | None]) -> Fingerprint:
        clean: list[float | None] = []
        for v in values:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                clean.append(None)
            else:
                clean.append(float(v))
        return cls(protocol_digest=protocol_digest, values=tuple(clean))
