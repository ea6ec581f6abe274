"""Reading, checking and writing registry files.

Files are read with ``yaml.safe_load`` only, and every problem is reported with the file and the key
(``"toy/generators/gan.yaml: instances[0] (run0).curve[2]: inf is not allowed; ..."``) into a
:class:`Problems` list, so that ``validate`` lists them all at once. Files are written in one form: block
mappings in the order given, every list of scalars on one line (one curve is one line of a git diff).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from forensics.conditions import get_condition
from forensics.errors import RegistryError, UsageError
from forensics.io.atomic import write_text_atomic
from forensics.io.hashing import is_digest, short
from forensics.match.calibration import OPERATING_POINTS
from forensics.protocol import Protocol
from forensics.registry.model import NAME_RE, SCHEMA_VERSION, GeneratorEntry, Instance, family_problem

#: the keys every instance's provenance has (null where not known)
PROVENANCE_REQUIRED = ("created", "by", "tool_version", "input_sha256", "n_images")
#: a registry file larger than this is not one (a generator with thousands of curves is a few MiB), unless
#: FORENSICS_MAX_REGISTRY_BYTES says otherwise
MAX_FILE_BYTES = 64 << 20
#: the first line of ``registry.yaml`` and of every ``protocol.yaml``
HEADER = (f"# forensics fingerprint registry (schema {SCHEMA_VERSION}); edit with `forensics registry …`, "
          "review in git.\n")

_GENERATOR_KEYS = {"schema_version", "generator", "description", "family", "protocol_digest", "instances"}
_INSTANCE_KEYS = {"id", "curve", "provenance", "records"}


class Problems(list):
    """The problems found in a registry, each ``"<file>: <key>: <what is wrong>"``."""

    def add(self, label: str, key: str | None, message: str) -> None:
        self.append(f"{label}: {key}: {message}" if key else f"{label}: {message}")

    @staticmethod
    def is_about(problem: str, label: str, key: str) -> bool:
        """Whether ``problem`` (as :meth:`add` wrote it) is about ``key`` of the file ``label``."""
        return problem.startswith(f"{label}: {key}: ")


# -- YAML ----------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block style for mappings, one line per list of scalars (a curve is one line of a diff); an object
    met twice is written out twice, never as an alias, which the registry's reader refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list, tuple)) for v in data) and len(data) > 0
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def dump_yaml(data: Any) -> str:
    """The registry's text form of ``data``: keys in the order given, floats as ``repr`` writes them."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16,
                     default_flow_style=False)


class _UniqueKeys:
    """A safe constructor that refuses a key met twice in one mapping, which YAML forbids and PyYAML would
    read as the last value silently (a second ``curve:`` line hand-edited into an instance would win)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice in one "
                                                            "mapping", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)  # type: ignore[misc]


class _CLoader(_UniqueKeys, yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader):
    """libyaml's safe loader, refusing repeated keys (its events are read for aliases first: :func:`_load`)."""


class _Loader(_UniqueKeys, yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases: a registry file never needs one, and a few hundred bytes of
    nested aliases (a "billion laughs") would otherwise expand to more than the machine holds; and repeated keys.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            _no_alias(self.peek_event())
        return super().compose_node(parent, index)


def _no_alias(event: Any) -> None:
    raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a registry file",
                                      event.start_mark)


def _load(text: str) -> Any:
    """The document in ``text`` with a safe loader and no aliases: libyaml's (C) where PyYAML has it — its
    events read once for aliases, then the document — else :class:`_Loader`. The same document either way;
    the C one about ten times sooner, which every command opening the registry pays."""
    if not getattr(yaml, "__with_libyaml__", False):
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            _no_alias(event)
    return yaml.load(text, Loader=_CLoader)  # noqa: S506 (libyaml's SafeLoader)


def inside(path: Path, root: Path | None) -> bool:
    """Whether ``path`` is inside ``root`` with no symbolic link on the way (``root`` itself may be one)."""
    if root is None:
        return True
    root = Path(root)
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return False
    here = root
    for part in rel.parts:
        if part in ("..", ""):
            return False
        here = here / part
        if here.is_symlink():
            return False
    try:
        return Path(path).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def check_inside(path: Path, root: Path | None, label: str) -> None:
    """Refuse (:class:`RegistryError`) a ``path`` that is a link or leaves the registry folder ``root``."""
    if not inside(path, root):
        raise RegistryError(f"{label}: a symbolic link or a path that leaves the registry; a registry holds its "
                            "files itself (replace the link with the file)")


def max_file_bytes() -> int:
    """The registry file size limit: ``$FORENSICS_MAX_REGISTRY_BYTES`` when set, else :data:`MAX_FILE_BYTES`."""
    raw = os.environ.get("FORENSICS_MAX_REGISTRY_BYTES")
    if raw is None:
        return MAX_FILE_BYTES
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise UsageError(f"FORENSICS_MAX_REGISTRY_BYTES must be a positive whole number of bytes, not {raw!r}")
    return int(raw)


def read_bytes_limited(path: Path, label: str, limit: int | None = None, root: Path | None = None) -> bytes:
    """The bytes of a regular registry file, refused (:class:`RegistryError`) when it is missing, a link out of
    ``root``, not a regular file (a FIFO, a device) or larger than ``limit`` (at most ``limit + 1`` bytes are
    read, whatever ``stat`` says)."""
    limit = max_file_bytes() if limit is None else limit
    check_inside(path, root, label)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise RegistryError(f"{label}: not a regular file (a device, a pipe or a folder); a registry holds "
                                "only files")
        if st.st_size > limit:
            raise RegistryError(f"{label}: {st.st_size:,} bytes is more than a registry file holds "
                                f"({limit:,} at most); is it the right file?")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
                     if root is not None else os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise RegistryError(f"{label}: not a regular file; a registry holds only files")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise RegistryError(f"{label}: file is missing") from None
    except OSError as exc:
        raise RegistryError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise RegistryError(f"{label}: more than {limit:,} bytes, more than a registry file holds; is it the "
                            "right file?")
    return data


def parse_yaml(data: bytes | str, label: str) -> Any:
    """The document in ``data`` (safe loader, no aliases); anything unreadable is a :class:`RegistryError`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{label}: not UTF-8 text (byte {exc.start}); is it the right file?") from None
    try:
        return _load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]
        raise RegistryError(f"{label}{where}: not valid YAML ({what})") from None
    except RecursionError:
        raise RegistryError(f"{label}: not valid YAML (nested too deeply)") from None
    except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:  # e.g. a date 2024-13-45
        raise RegistryError(f"{label}: not valid YAML ({type(exc).__name__}: {str(exc)[:80]})") from None


def read_yaml(path: Path, label: str, *, root: Path | None = None, limit: int | None = None) -> Any:
    """The document of a registry file (safe loader, no aliases); a missing, unreadable, oversized,
    non-regular or malformed file, or one reached through a link out of ``root``, is a
    :class:`RegistryError` naming ``label`` (and the line, for YAML errors)."""
    return parse_yaml(read_bytes_limited(path, label, limit, root), label)


def write_yaml(path: Path, data: Any, header: str = "") -> None:
    """Write ``header`` and :func:`dump_yaml` of ``data`` to ``path`` atomically."""
    write_text_atomic(path, header + dump_yaml(data))


def _as_yaml_float(text: Any) -> str | None:
    """How a number PyYAML (YAML 1.1) read as text, for want of a decimal point (``1e308``), is written as one."""
    import re

    found = isinstance(text, str) and re.fullmatch(r"([-+]?\d+)([eE][-+]?\d+)", text.strip())
    return f"{found.group(1)}.0{found.group(2)}" if found else None


# -- checks --------------------------------------------------------------------------------------
def check_schema(data: Any, label: str, problems: Problems) -> bool:
    """Whether ``data`` is a mapping of this :data:`SCHEMA_VERSION`; adds the problem when not."""
    if data is None:  # an empty file, or one of comments alone (a hand edit, or a write cut short elsewhere)
        problems.add(label, None, "empty: no YAML document (only blank lines or comments)")
        return False
    if not isinstance(data, Mapping):
        problems.add(label, None, f"expected a mapping at the top, got {type(data).__name__}")
        return False
    version = data.get("schema_version")
    if "schema_version" not in data:
        problems.add(label, "schema_version", f"missing (expected {SCHEMA_VERSION})")
        return False
    if version != SCHEMA_VERSION or isinstance(version, bool):
        problems.add(label, "schema_version", f"the text {version!r}, not the number {SCHEMA_VERSION}: drop the quotes"
                     if str(version) == str(SCHEMA_VERSION) else
                     f"{version!r} is not supported by this version of forensics (expected {SCHEMA_VERSION}; upgrade "
                     "forensics?)")
        return False
    return True


def check_keys(data: Mapping[str, Any], allowed: set[str], label: str, problems: Problems,
               expected: str | None = None, prefix: str = "") -> None:
    """Add an "unknown key" problem for every key of ``data`` outside ``allowed``."""
    expected = expected or ", ".join(sorted(allowed))
    for key in sorted(set(data) - allowed, key=repr):
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
    family = data.get("family")
    wrong = None if family is None else family_problem(family)
    if wrong is not None:
        where = f" --protocol {protocol.name}" if protocol is not None else ""
        problems.add(label, "family", f"{wrong}; correct it, or clear it with "
                                      f"`forensics registry family {stem if NAME_RE.fullmatch(stem) else 'GENERATOR'} "
                                      f"--clear{where}`")
        family = None
    digest = data.get("protocol_digest")
    if not is_digest(digest):
        problems.add(label, "protocol_digest", f"expected 'sha256:' and 64 hex digits, got {digest!r}")
    elif protocol is not None and digest != protocol.digest:
        problems.add(label, "protocol_digest", f"{short(digest)} is not the digest of protocol {protocol.name!r} "
                                               f"({short(protocol.digest)}): curves made under another protocol")
    instances = data.get("instances")
    entry = GeneratorEntry(name, description, digest if isinstance(digest, str) else "", [], family,
                           "family" in data and data["family"] is None)
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
        problems.add(label, "generator", f"{name!r} does not match the file name {stem}.yaml (renamed by hand?): "
                                         f"rename the file {name}.yaml"
                                         + (f", or the generator {stem}" if NAME_RE.fullmatch(stem) else ""))
    return name


def _parse_instance(record: Any, key: str, label: str, n_layers: int | None, seen: set[str],
                    problems: Problems) -> Instance | None:
    """One entry of ``instances``; None when its id or curve is unusable."""
    if not isinstance(record, Mapping):
        problems.add(label, key, f"expected a mapping, got {type(record).__name__}")
        return None
    check_keys(record, _INSTANCE_KEYS, label, problems, "id, curve, provenance, records", prefix=f"{key}.")
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
    records = record.get("records") or {}
    if not isinstance(records, Mapping) or not all(
            isinstance(c, str) and NAME_RE.match(c) and is_digest(d) for c, d in records.items()):
        problems.add(label, f"{key}.records", "expected a mapping of condition name to the sha256 digest of its "
                                              f"records file, got {records!r:.60}")
        records = {}
    return Instance(iid, values, provenance, dict(records))


def _parse_curve(curve: Any, key: str, label: str, n_layers: int | None,
                 problems: Problems) -> tuple[float | None, ...] | None:
    """A curve's values as floats (None for null); None when it is not a non-empty list."""
    if not isinstance(curve, list) or not curve:
        problems.add(label, key, f"expected a list of numbers, got {curve!r:.60}")
        return None
    if n_layers is not None and len(curve) != n_layers:
        problems.add(label, key, f"has {len(curve)} values; the protocol has {n_layers} layers")
    values: list[float | None] = []
    usable = True
    for j, v in enumerate(curve):
        if v is None:
            values.append(None)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                x = float(v)
            except OverflowError:
                x = math.inf
            if not math.isfinite(x):
                problems.add(label, f"{key}[{j}]", f"{v!r:.40} is not allowed; write null for an undefined value")
                usable = False
            values.append(x)
        else:
            problems.add(label, f"{key}[{j}]", f"expected a number or null, got {v!r:.40}" + (
                f" (YAML reads {v} as text: write it with a decimal point, {_as_yaml_float(v)})"
                if _as_yaml_float(v) else ""))
            usable = False
    return tuple(values) if usable else None


def _parse_provenance(prov: Any, key: str, label: str, problems: Problems) -> dict[str, Any]:
    if not isinstance(prov, Mapping):
        problems.add(label, key, "missing (who, when, tool version, input hash, images)")
        return {}
    for required in PROVENANCE_REQUIRED:
        if required not in prov:
            problems.add(label, f"{key}.{required}", "missing (null when not known)")
    for field_ in ("input_sha256", "image_digests"):
        sha = prov.get(field_)
        if sha is not None and not is_digest(sha):
            problems.add(label, f"{key}.{field_}", f"expected a sha256 digest or null, got {sha!r}")
    n = prov.get("n_images")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        problems.add(label, f"{key}.n_images", f"expected a positive integer or null, got {n!r}")
    size = prov.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)):
        problems.add(label, f"{key}.image_size", f"expected [height, width] in pixels, got {size!r:.40}")
    colour = prov.get("image_colour")
    if colour is not None and not isinstance(colour, bool):
        problems.add(label, f"{key}.image_colour", f"expected true or false (whether any image is in colour), got "
                                                    f"{colour!r:.40}")
    created = prov.get("created")
    if "created" in prov and not is_iso_time(created):
        problems.add(label, f"{key}.created", f"expected a UTC ISO time, got {created!r}")
    return dict(prov)


# -- calibration ---------------------------------------------------------------------------------
#: a recorded calibration's numbers: key → (what it must be, whether null is allowed)
_CALIBRATION_NUMBERS: dict[str, tuple[str, Any]] = {
    "score": ("a finite number", lambda x: True),
    "margin": ("a finite number >= 0", lambda x: x >= 0),
    "distance_ratio": ("a finite number > 0", lambda x: x > 0),
    "balanced_accuracy": ("a fraction in [0, 1]", lambda x: 0 <= x <= 1),
    "answered_right": ("a fraction in [0, 1]", lambda x: 0 <= x <= 1),
    "unknown_right": ("a fraction in [0, 1]", lambda x: 0 <= x <= 1),
}
_CALIBRATION_COUNTS = ("n_references", "n_answer", "n_unknown")


def _named_entries(entries: Mapping[Any, Any], field_: str, label: str, problems: Problems,
                   check_name: Callable[[Any], str | None]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """``(name, key, entry)`` of each entry of ``entries`` (a file's mapping ``field_``) whose name passes
    ``check_name`` (None, else the problem) and that is a mapping; each other one is a problem."""
    for name, entry in entries.items():
        key = f"{field_}.{name}"
        if (problem := check_name(name)) is not None:
            problems.add(label, key, problem)
        elif not isinstance(entry, Mapping):
            problems.add(label, key, f"expected a mapping, got {type(entry).__name__}")
        else:
            yield name, key, entry


def parse_calibration(data: Any, label: str, problems: Problems) -> dict[str, dict[str, Any]] | None:
    """The matchers' calibrations of a ``calibration.yaml``'s ``data``, every threshold checked (a negative,
    NaN or non-numeric threshold would flip verdicts); a matcher with a problem is left out."""
    if not check_schema(data, label, problems):
        return None
    matchers = data.get("matchers")
    if not isinstance(matchers, Mapping):
        problems.add(label, "matchers", "expected a mapping of matcher name to calibration")
        return None
    found: dict[str, dict[str, Any]] = {}
    for name, key, cal in _named_entries(matchers, "matchers", label, problems,
                                         lambda n: None if isinstance(n, str) else "expected a matcher name"):
        n0 = len(problems)
        _check_thresholds(cal, label, key, problems)
        for field_ in _CALIBRATION_COUNTS:
            v = cal.get(field_)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                problems.add(label, f"{key}.{field_}", f"expected a count (an integer >= 0) or null, got {v!r:.40}")
        if cal.get("options") is not None and not isinstance(cal.get("options"), Mapping):
            problems.add(label, f"{key}.options", f"expected a mapping, got {type(cal.get('options')).__name__}")
        points = cal.get("operating_points")
        if points is not None and not isinstance(points, Mapping):
            problems.add(label, f"{key}.operating_points", f"expected a mapping, got {type(points).__name__}")
        if isinstance(points, Mapping):
            _check_operating_points(points, label, key, problems)
        if cal.get("pooled") is not None:
            _check_pool(cal["pooled"], label, f"{key}.pooled", problems)
        if cal.get("thresholds_from") not in (None, "pooled") or (cal.get("thresholds_from") and not cal.get("pooled")):
            problems.add(label, f"{key}.thresholds_from", "expected pooled, beside the pool it names")
        if len(problems) == n0:
            found[name] = dict(cal)
    return found


def _check_pool(pool: Any, label: str, key: str, problems: Problems) -> None:
    """A pooled calibration (:meth:`forensics.match.calibration.Pool.record`): its cells' conditions and sizes,
    its counts, and every operating point's thresholds checked as a calibration's are."""
    if not isinstance(pool, Mapping):
        problems.add(label, key, f"expected a mapping, got {type(pool).__name__}")
        return
    if not isinstance(pool.get("adopted"), bool):
        problems.add(label, f"{key}.adopted", f"expected true or false, got {pool.get('adopted')!r:.40}")
    for field_ in ("n_cells", "n_answer", "n_unknown"):
        v = pool.get(field_)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            problems.add(label, f"{key}.{field_}", f"expected a count (an integer >= 1), got {v!r:.40}")
    sizes, conditions = pool.get("sizes"), pool.get("conditions")
    if not isinstance(sizes, list) or not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                           for v in sizes):
        problems.add(label, f"{key}.sizes", f"expected a list of batch sizes, got {sizes!r:.40}")
    if not isinstance(conditions, list) or not conditions or any(_condition_name_problem(c) for c in conditions):
        problems.add(label, f"{key}.conditions", f"expected a list of condition names, got {conditions!r:.40}")
    if not is_digest(pool.get("references_digest")):
        problems.add(label, f"{key}.references_digest",
                     f"expected a sha256 digest, got {pool.get('references_digest')!r:.40}")
    points = pool.get("operating_points")
    if not isinstance(points, Mapping) or not all(p in points for p in OPERATING_POINTS):
        problems.add(label, f"{key}.operating_points", f"expected the thresholds of every operating point "
                                                       f"({', '.join(OPERATING_POINTS)})")
        return
    _check_operating_points(points, label, key, problems)


def _check_operating_points(points: Mapping[str, Any], label: str, key: str, problems: Problems) -> None:
    """Each entry of ``key``'s ``operating_points``: an operating point whose thresholds are checked."""
    for point, at in points.items():
        if point not in OPERATING_POINTS:
            problems.add(label, f"{key}.operating_points.{point}",
                         f"not an operating point (expected one of {', '.join(OPERATING_POINTS)})")
        elif not isinstance(at, Mapping):
            problems.add(label, f"{key}.operating_points.{point}", f"expected a mapping, got {type(at).__name__}")
        else:
            _check_thresholds(at, label, f"{key}.operating_points.{point}", problems)


def parse_processing(data: Any, label: str, problems: Problems) -> dict[str, dict[str, str]] | None:
    """The conditions of a records ``processing.yaml``'s ``data``: {condition: {digest, pillow, the jpeg
    and webp libraries where known, and ``reference``: what T and P_n were put through when the records were
    scored, where said (records kept before it was said were scored against T and P_n as they are)}}; a
    condition with a problem is left out, a file with one at the top gives None."""
    if not check_schema(data, label, problems):
        return None
    check_keys(data, {"schema_version", "conditions"}, label, problems)
    conditions = data.get("conditions")
    if not isinstance(conditions, Mapping):
        problems.add(label, "conditions", "expected a mapping of condition name to its processing")
        return None
    found: dict[str, dict[str, str]] = {}
    for name, key, entry in _named_entries(conditions, "conditions", label, problems, _condition_name_problem):
        n0 = len(problems)
        check_keys(entry, set(_PROCESSING_KEYS), label, problems, prefix=f"{key}.")
        if not is_digest(entry.get("digest")):
            problems.add(label, f"{key}.digest", f"expected a sha256 digest, got {entry.get('digest')!r:.40}")
        for field_ in _PROCESSING_KEYS[1:4]:
            if field_ in entry and not isinstance(entry[field_], str):
                problems.add(label, f"{key}.{field_}", f"expected a version, got {entry[field_]!r:.40}")
        if "reference" in entry and (why := _condition_name_problem(entry["reference"])) is not None:
            problems.add(label, f"{key}.reference", f"{why} (what T and P_n were put through)")
        if "pillow" not in entry:
            problems.add(label, f"{key}.pillow", "missing (the Pillow version that made the records)")
        if len(problems) == n0:
            found[name] = dict(entry)
    return found


_PROCESSING_KEYS = ("digest", "pillow", "jpeg", "webp", "reference")


def _condition_name_problem(name: Any) -> str | None:
    """What is wrong with ``name`` as a condition's name in a records file, or None."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return "expected a condition name"
    try:
        get_condition(name)
    except UsageError as exc:
        return str(exc)
    return None


def _check_thresholds(cal: Mapping[str, Any], label: str, key: str, problems: Problems) -> None:
    """Every threshold and accuracy of ``cal`` (a calibration, or one of its operating points) a number of
    its range or null, its lookalikes a mapping."""
    for field_, (what, ok) in _CALIBRATION_NUMBERS.items():
        v = cal.get(field_)
        if v is None:
            continue
        good = isinstance(v, (int, float)) and not isinstance(v, bool)
        if good:
            try:
                good = math.isfinite(float(v)) and ok(float(v))
            except OverflowError:
                good = False
        if not good:
            problems.add(label, f"{key}.{field_}", f"expected {what} or null, got {v!r:.40}")
    if cal.get("lookalikes") is not None and not isinstance(cal.get("lookalikes"), Mapping):
        problems.add(label, f"{key}.lookalikes", f"expected a mapping, got {type(cal.get('lookalikes')).__name__}")
