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
    if not NAME_RE.match(name):
        raise UsageError(f"{what} {name!r}: use letters, digits, '_', '.', '+', '-'")


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
    """A generator under one protocol: the content of ``generators/<name>.yaml``."""

    name: str
    description: str
    protocol_digest: str
    instances: list[Instance] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "generator": self.name, "description": self.description,
                "protocol_digest": self.protocol_digest, "instances": [i.to_dict() for i in self.instances]}
