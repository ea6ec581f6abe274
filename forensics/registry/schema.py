"""Reading, checking and writing registry files.

Files are read with ``yaml.safe_load`` only, and every problem is reported with the file and the key
(``"toy/generators/gan.yaml: instances[0] (run0).curve[2]: inf is not allowed; ..."``) into a
:class:`Problems` list, so that ``validate`` lists them all at once. Files are written in one form: block
mappings in the order given, every list of scalars on one line (one curve is one line of a git diff).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from forensics.errors import RegistryError
from forensics.io.atomic import write_text_atomic
from forensics.io.hashing import is_digest, short
from forensics.protocol import Protocol
from forensics.registry.model import NAME_RE, SCHEMA_VERSION, GeneratorEntry, Instance

#: the keys every instance's provenance has (null where not known)
PROVENANCE_REQUIRED = ("created", "by", "tool_version", "input_sha256", "n_images")
#: a registry file larger than this is not one (a generator with thousands of curves is a few MiB)
MAX_FILE_BYTES = 64 << 20
#: the first line of ``registry.yaml`` and of every ``protocol.yaml``
HEADER = (f"# forensics fingerprint registry (schema {SCHEMA_VERSION}); edit with `forensics registry …`, "
          "review in git.\n")

_GENERATOR_KEYS = {"schema_version", "generator", "description", "protocol_digest", "instances"}
_INSTANCE_KEYS = {"id", "curve", "provenance"}


class Problems(list):
    """The problems found in a registry, each ``"<file>: <key>: <what is wrong>"``."""

    def add(self, label: str, key: str | None, message: str) -> None:
        self.append(f"{label}: {key}: {message}" if key else f"{label}: {message}")


# -- YAML ----------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block style for mappings, one line per list of scalars (a curve is one line of a diff)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list, tuple)) for v in data) and len(data) > 0
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def dump_yaml(data: Any) -> str:
    """The registry's text form of ``data``: keys in the order given, floats as ``repr`` writes them."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16,
                     default_flow_style=False)


def read_yaml(path: Path, label: str) -> Any:
    """``yaml.safe_load`` of a registry file; a missing, unreadable, oversized or malformed file is a
    :class:`RegistryError` naming ``label`` (and the line, for YAML errors)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RegistryError(f"{label}: {size:,} bytes is more than a registry file holds "
                                f"({MAX_FILE_BYTES:,} at most); is it the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{label}: file is missing") from None
    except OSError as exc:
        raise RegistryError(f"{label}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RegistryError(f"{label}:{where}: not valid YAML ({what})") from None


def write_yaml(path: Path, data: Any, header: str = "") -> None:
    """Write ``header`` and :func:`dump_yaml` of ``data`` to ``path`` atomically."""
    write_text_atomic(path, header + dump_yaml(data))


# -- checks --------------------------------------------------------------------------------------
def check_schema(data: Any, label: str, problems: Problems) -> bool:
    """Whether ``data`` is a mapping of this :data:`SCHEMA_VERSION`; adds the problem when not."""
    if not isinstance(data, Mapping):
        problems.add(label, None, f"expected a mapping at the top, got {type(data).__name__}")
        return False
    version = data.get("schema_version")
    if "schema_version" not in data:
        problems.add(label, "schema_version", f"missing (expected {SCHEMA_VERSION})")
        return False
    if version != SCHEMA_VERSION or isinstance(version, bool):
        problems.add(label, "schema_version", f"{version!r} is not supported by this version of forensics "
                                              f"(expected {SCHEMA_VERSION}; upgrade forensics?)")
        return False
    return True


def check_keys(data: Mapping[str, Any], allowed: set[str], label: str, problems: Problems,
               expected: str | None = None, prefix: str = "") -> None:
    """Add an "unknown key" problem for every key of ``data`` outside ``allowed``."""
    expected = expected or ", ".join(sorted(allowed))
    for key in sorted(set(data) - allowed):
        problems.add(label, f"{prefix}{key}", f"unknown key (expected {expected})")


def is_iso_time(value: Any) -> bool:
    """Whether ``value`` is a time: a datetime (YAML reads unquoted times as one) or ISO 8601 text."""
    if isinstance(value, datetime):
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def parse_generator(data: Any, label: str, stem: str, protocol: Protocol | None,
                    problems: Problems) -> GeneratorEntry | None:
    """The :class:`GeneratorEntry` of a generator file's ``data`` (read from ``<stem>.yaml``), checked
    against ``protocol`` when given. Problems go to ``problems``; the entry comes back with the instances
    that passed, or None when there is nothing usable."""
    n0 = len(problems)
    if not check_schema(data, label, problems):
        return None
    check_keys(data, _GENERATOR_KEYS, label, problems)
    name = _generator_name(data.get("generator"), label, stem, problems)
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        problems.add(label, "description", f"expected text, got {type(description).__name__}")
        description = str(description)
    digest = data.get("protocol_digest")
    if not is_digest(digest):
        problems.add(label, "protocol_digest", f"expected 'sha256:' and 64 hex digits, got {digest!r}")
    elif protocol is not None and digest != protocol.digest:
        problems.add(label, "protocol_digest", f"{short(digest)} is not the digest of protocol {protocol.name!r} "
                                               f"({short(protocol.digest)}): curves made under another protocol")
    instances = data.get("instances")
    entry = GeneratorEntry(name, description, digest if isinstance(digest, str) else "", [])
    if not isinstance(instances, list):
        problems.add(label, "instances", f"expected a list, got {type(instances).__name__}")
        return None
    if not instances:
        problems.add(label, "instances", "empty (remove the generator instead)")
    n_layers = len(protocol.layers) if protocol is not None else None
    seen: set[str] = set()
    for i, record in enumerate(instances):
        instance = _parse_instance(record, f"instances[{i}]", label, n_layers, seen, problems)
        if instance is not None:
            entry.instances.append(instance)
    return entry if len(problems) == n0 or entry.instances else None


def _generator_name(name: Any, label: str, stem: str, problems: Problems) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.add(label, "generator", f"expected a name of letters, digits, '_.+-', got {name!r}")
        return stem
    if name != stem:
        problems.add(label, "generator", f"{name!r} does not match the file name {stem!r}.yaml")
    return name


def _parse_instance(record: Any, key: str, label: str, n_layers: int | None, seen: set[str],
                    problems: Problems) -> Instance | None:
    """One entry of ``instances``; None when its id or curve is unusable."""
    if not isinstance(record, Mapping):
        problems.add(label, key, f"expected a mapping, got {type(record).__name__}")
        return None
    check_keys(record, _INSTANCE_KEYS, label, problems, "id, curve, provenance", prefix=f"{key}.")
    iid = record.get("id")
    if not isinstance(iid, str) or not NAME_RE.match(iid):
        problems.add(label, f"{key}.id", f"expected an id of letters, digits, '_.+-', got {iid!r}")
        return None
    key = f"{key} ({iid})"
    if iid in seen:
        problems.add(label, f"{key}.id", "duplicate instance id")
    seen.add(iid)
    values = _parse_curve(record.get("curve"), f"{key}.curve", label, n_layers, problems)
    if values is None:
        return None
    provenance = _parse_provenance(record.get("provenance"), f"{key}.provenance", label, problems)
    return Instance(iid, values, provenance)


def _parse_curve(curve: Any, key: str, label: str, n_layers: int | None,
                 problems: Problems) -> tuple[float | None, ...] | None:
    """A curve's values as floats (None for null); None when it is not a non-empty list."""
    if not isinstance(curve, list) or not curve:
        problems.add(label, key, f"expected a list of numbers, got {curve!r:.60}")
        return None
    if n_layers is not None and len(curve) != n_layers:
        problems.add(label, key, f"has {len(curve)} values; the protocol has {n_layers} layers")
    values: list[float | None] = []
    for j, v in enumerate(curve):
        if v is None:
            values.append(None)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v):
                problems.add(label, f"{key}[{j}]", f"{v} is not allowed; write null for an undefined value")
            values.append(float(v))
        else:
            problems.add(label, f"{key}[{j}]", f"expected a number or null, got {v!r}")
    return tuple(values)


def _parse_provenance(prov: Any, key: str, label: str, problems: Problems) -> dict[str, Any]:
    if not isinstance(prov, Mapping):
        problems.add(label, key, "missing (who, when, tool version, input hash, images)")
        return {}
    for required in PROVENANCE_REQUIRED:
        if required not in prov:
            problems.add(label, f"{key}.{required}", "missing (null when not known)")
    sha = prov.get("input_sha256")
    if sha is not None and not is_digest(sha):
        problems.add(label, f"{key}.input_sha256", f"expected a sha256 digest or null, got {sha!r}")
    n = prov.get("n_images")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        problems.add(label, f"{key}.n_images", f"expected a positive integer or null, got {n!r}")
    created = prov.get("created")
    if "created" in prov and not is_iso_time(created):
        problems.add(label, f"{key}.created", f"expected a UTC ISO time, got {created!r}")
    return dict(prov)
