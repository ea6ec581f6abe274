"""The registry's records: a generator's file (:class:`GeneratorEntry`) and its enrolled curves
(:class:`Instance`), with the names and version every registry file uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from forensics.errors import UsageError

#: the version of the file format; every registry file carries it as ``schema_version``
SCHEMA_VERSION = 1

#: what a protocol, generator or instance name may be: letters, digits and ``_.+-``, not starting with a mark
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def check_name(what: str, name: str) -> None:
    """Refuse a ``what`` (``"generator name"``, ...) that :data:`NAME_RE` does not accept."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # fullmatch: '$' would let a final newline by
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:79] + "…"
        raise UsageError(f"{what} {shown}: use letters, digits, '_', '.', '+', '-', at most 128 of them, the first "
                         "a letter or digit")


def family_problem(family: object) -> str | None:
    """What is wrong with ``family`` as a generator's family (a name as :data:`NAME_RE` accepts), else None."""
    if isinstance(family, str) and NAME_RE.fullmatch(family):
        return None
    got = f"{family!r:.60}" if isinstance(family, str) else f"a {type(family).__name__}"
    return (f"expected the name of the model the generator shares with others (letters, digits, '_.+-', at most "
            f"128, e.g. ddpm-net), got {got}")


def check_family(family: object) -> None:
    """Refuse (:class:`UsageError`) a family that :func:`family_problem` finds wrong."""
    problem = family_problem(family)
    if problem is not None:
        raise UsageError(f"family: {problem}")


@dataclass
class Instance:
    """One enrolled curve: its id, one value per layer (None where undefined), its provenance and the digest
    of its per-image records under each post-processing condition kept (:mod:`forensics.registry.records`)."""

    id: str
    values: tuple[float | None, ...]
    provenance: dict[str, Any]
    records: dict[str, str] = field(default_factory=dict)  # condition → digest of its per-image records file

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "curve": list(self.values), "provenance": dict(self.provenance)}
        if self.records:
            out["records"] = dict(self.records)
        return out


@dataclass
class GeneratorEntry:
    """A generator under one protocol: the content of ``generators/<name>.yaml``. ``family``: the model it
    shares with other enrolled generators (one diffusion network under several samplers), or None; written
    only when set, so that the files of generators without one read as before."""

    name: str
    description: str
    protocol_digest: str
    instances: list[Instance] = field(default_factory=list)
    family: str | None = None
    #: the family cleared here over a file below that names one (``family: null``, written): a user registry's
    #: copy of a bundled file keeps it cleared through ``registry refresh``, where a copy with no ``family`` key
    #: (one made before the bundled file named it) takes the bundled file's
    family_cleared: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "generator": self.name,
                               "description": self.description}
        if self.family is not None or self.family_cleared:
            out["family"] = self.family
        out["protocol_digest"] = self.protocol_digest
        out["instances"] = [i.to_dict() for i in self.instances]
        return out
