"""The fingerprint registry: reviewable YAML files, validated on load, written atomically under a lock.

Layout (every file carries ``schema_version``)::

    registry/
      registry.yaml                      # schema_version, default_protocol
      <protocol>/
        protocol.yaml                    # schema_version, digest, protocol: Protocol.to_dict()
        calibration.yaml                 # optional: open-set thresholds recorded by `registry calibrate`
        generators/<generator>.yaml      # schema_version, generator, description, protocol_digest,
                                         # instances: [{id, curve: [float | null, ...], provenance: {...}}]
        reference/                       # optional: the fitted reference side (pipeline's business)
      <combination>/
        protocol.yaml                    # schema_version, digest, protocol: Combination.to_dict()
        calibration.yaml                 # as above; no generators/: its instances are joined from
                                         # its protocols' (same generator, same id, same input)

One generator per file keeps git diffs small and concurrent enrolments of different generators apart;
one curve per line keeps a diff of a re-enrolment readable. Files are read with ``yaml.safe_load`` only
and every problem is reported with the file and the key (``validate()`` lists them all; ``open()``
refuses a registry that has any). Writes take ``<registry>/.lock`` and go through a temporary file and
an atomic rename, re-reading the file under the lock, so that two processes enrolling at once lose
nothing and a crash never leaves half a file.

Where it is (:func:`registry_layers`): ``--registry PATH`` or ``$FORENSICS_REGISTRY`` name one folder, read
and written as it is. Without either, the registry is two *layers*: the user registry
(:func:`user_registry_path`: ``$FORENSICS_DATA_DIR/registry``, else the platform's user data folder), where
every write goes, over the bundled registry (:func:`bundled_registry_path`: ``registry/`` of a source
checkout, else the copy installed in the package), which commands only read. Reads see both: a protocol,
a generator file or a calibration of the upper layer hides the same one below it; the first write
under a bundled protocol copies its record (and a generator file it adds to) into the user registry.
So a checkout or an installed package never changes unless a command is pointed at it with
``--registry``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from forensics.conditions import NONE, codecs, describe_codecs, get_condition, processing_digest, reference_condition
from forensics.errors import ForensicsError, ProtocolMismatch, RegistryError, UsageError
from forensics.io.atomic import write_text_atomic
from forensics.io.hashing import is_digest, sha256_array, short
from forensics.match import CALIBRATION_RULE, EnrolledCurve, references_digest
from forensics.match.calibration import pool_rules_current
from forensics.protocol import Combination, Fingerprint, Protocol, is_combination, part_spans
from forensics.provenance import tool_version, user, utc_now
from forensics.registry.diff import diff
from forensics.registry.model import SCHEMA_VERSION, GeneratorEntry, Instance, check_family, check_name
from forensics.registry import reference as shipped
from forensics.registry.records import (
    PROCESSING_FILE, RECORDS_DIR, as_records, digests_path, processing_path, read_digests, read_records, records_path,
    write_digests, write_records,
)
from forensics.registry.schema import (
    HEADER, Problems, check_inside, check_keys, check_schema, inside, parse_calibration, parse_generator,
    parse_processing, read_yaml, write_yaml,
)

log = logging.getLogger(__name__)


def _put_through(reference: str) -> str:
    """``as they are`` or ``put through resize0.5``: what a reference side was, in words."""
    return "as they are" if reference == NONE else f"put through {reference}"

#: the errors of a registry that cannot be written (read-only, no permission, full), said in one line
_FULL = {28, 122}  # ENOSPC, EDQUOT
_CANNOT_WRITE = {1, 5, 13, 20, 30, *_FULL}  # EPERM, EIO, EACCES, ENOTDIR (a file on its way), EROFS
_WHAT_TO_DO = {False: "make it writable, or write to another registry with --registry (or FORENSICS_DATA_DIR)",
               True: "free some space on its disk, then run the command again"}

ENV = "FORENSICS_REGISTRY"
#: the user's data folder (the user registry is its ``registry/``); default: platformdirs' user data folder
DATA_ENV = "FORENSICS_DATA_DIR"
#: where the bundled registry lies in an installed package (the wheel packs the checkout's ``registry/`` there)
INSTALLED_DIR = "_registry"
REGISTRY_FILE = "registry.yaml"
PROTOCOL_FILE = "protocol.yaml"
CALIBRATION_FILE = "calibration.yaml"
GENERATORS_DIR = "generators"
REFERENCE_DIR = "reference"
LOCK_FILE = ".lock"
LOCK_TIMEOUT_S = 120.0
#: a write of several files (a combination enrolment) in progress: which temporary file becomes which file
JOURNAL = ".journal.tmp"
#: the ending of a removed protocol's folder between being renamed aside and deleted (``.<name>`` before it):
#: hidden, so never read as a protocol, and a temporary name a registry's ``.gitignore`` already ignores
REMOVING = ".removing.tmp"

__all__ = ["Registry", "bundled_registry_path", "default_registry_path", "diff", "registry_layers",
           "user_registry_path", "SCHEMA_VERSION"]


def _pause(var: str) -> None:
    """Tests only: sleep ``$var`` seconds at a point where a multi-file write can be killed half-way."""
    seconds = os.environ.get(var)
    if seconds:
        import time

        time.sleep(float(seconds))


def bundled_registry_path(package: Path | None = None) -> Path:
    """The registry that comes with forensics: ``registry/`` of the source checkout the package runs from
    (a folder beside ``pyproject.toml`` and the ``forensics`` package), else the copy an installed wheel
    holds in the package (``forensics/_registry``). ``package``: the ``forensics`` package folder (tests)."""
    if package is None:
        import forensics

        package = Path(forensics.__file__).resolve().parent
    checkout = package.parent / "registry"
    if (package.parent / "pyproject.toml").is_file() and (checkout / REGISTRY_FILE).is_file():
        return checkout
    return package / INSTALLED_DIR


def default_registry_path() -> Path:
    """The registry read when none is named: ``$FORENSICS_REGISTRY`` when set, else the bundled one
    (:func:`bundled_registry_path`). Writes without ``--registry`` go to :func:`user_registry_path`."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return bundled_registry_path()


def user_registry_path() -> Path:
    """The user registry, where commands write when no registry is named: ``$FORENSICS_DATA_DIR/registry``,
    else ``registry`` in the platform's user data folder (``~/.local/share/forensics`` on Linux)."""
    data = os.environ.get(DATA_ENV, "").strip()
    if data:
        return Path(data).expanduser() / "registry"
    from platformdirs import user_data_dir

    return Path(user_data_dir("forensics", appauthor=False)) / "registry"


def registry_layers(path: str | Path | None = None) -> tuple[Path, ...]:
    """The folders a registry is read from, the one written to first: ``(path,)`` when given, else
    ``($FORENSICS_REGISTRY,)`` when set, else the user registry over the bundled one."""
    if path is not None:
        return (Path(path).expanduser(),)
    env = os.environ.get(ENV, "").strip()
    if env:
        return (Path(env).expanduser(),)
    return (user_registry_path(), bundled_registry_path())


_DIGESTS: dict[tuple[Any, ...], str] = {}


def _reference_sha256(path: Path) -> str:
    """A shipped reference file's sha256, hashed once per process while the file is unchanged (same inode,
    size and change times): every write reloads the registry, and the default's sides are 32 MB."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = shipped.file_sha256(path)
    return _DIGESTS[key]


def _there(path: Path) -> bool:
    """Whether anything lies at ``path`` where the registry keeps a file: a file, a link (dangling too), a folder, a
    FIFO. Such a path is read, and refused with its reason (:func:`read_bytes_limited`), not passed over."""
    return path.exists() or path.is_symlink()


# -- the registry --------------------------------------------------------------------------------
class Registry:
    """A registry, loaded and validated: one folder, or a writable folder over read-only ones (its
    ``layers``). Use :meth:`open`."""

    def __init__(self, path: Path, below: Sequence[Path] = ()):
        #: the folder every write goes to (the top layer)
        self.path = Path(path)
        #: folders read under it, nearest first, never written (the bundled registry)
        self.below: tuple[Path, ...] = tuple(Path(p) for p in below)
        self.default_protocol: str | None = None
        self.protocols: dict[str, Protocol | Combination] = {}
        self.generators: dict[str, dict[str, GeneratorEntry]] = {}
        self.calibrations: dict[str, dict[str, Any]] = {}
        #: per plain protocol, what processed its records in each layer that says (nearest first): (the layer,
        #: its file's label, {condition: {digest, pillow, jpeg, webp}}) (:mod:`forensics.registry.records`)
        self.processing: dict[str, list[tuple[Path, str, dict[str, dict[str, str]]]]] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        #: the problems (among ``problems``) that are a generator's family: a bad value, or a combination's
        #: protocols naming different ones; `registry family` opens a registry that has only these, to fix them
        self.family_problems: list[str] = []
        self._join_problems: list[str] = []
        #: per plain protocol, the generators whose file in some layer was not read whole (a problem in it): what
        #: their instances are is not known, so their records are never called stray nor their instances missing
        self.unread: dict[str, set[str]] = {}
        self.exists = False
        #: whether this process holds the write lock now (:meth:`lock`)
        self._holding = False

    @property
    def layers(self) -> tuple[Path, ...]:
        """Every folder read, the written one first."""
        return (self.path, *self.below)

    @property
    def location(self) -> str:
        """The registry as messages name it: its folder, or the user registry over the bundled one."""
        if not self.below:
            return str(self.path)
        return f"{self.path} (over {', '.join(map(str, self.below))})"

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, *, strict: bool = True, create: bool = False,
             below: Sequence[Path] | None = None) -> Registry:
        """Load and validate the registry at ``path``; by default (``path`` None) the layers of
        :func:`registry_layers`: ``$FORENSICS_REGISTRY``, else the user registry over the bundled one.

        ``strict``: raise :class:`RegistryError` on the first problem (with the count of others); with
        ``strict=False`` the problems are in ``.problems``. ``create``: a missing folder is an empty
        registry (written on the first change) rather than an error; a missing user registry always is.
        ``below``: read-only layers under ``path`` (what :attr:`below` of another registry holds).
        """
        if below is None:
            top, *rest = registry_layers(path)
        else:
            top, rest = Path(path).expanduser(), list(below)
        rest = [p for p in rest if p.resolve() != top.resolve()]
        reg = cls(top, rest)
        create = create or bool(rest)
        named = below is None and not rest  # one folder the user named (--registry, $FORENSICS_REGISTRY)
        for folder in reg.layers:
            if not folder.exists() and (folder != top or not create):
                if named:  # a path that is not there is a wrong value, not a damaged registry
                    how = f"set {ENV} to" if path is None else "pass --registry"
                    raise UsageError(f"no registry at {folder}: {how} the folder of a registry (one holding "
                                     f"{REGISTRY_FILE}), or leave it out to use your user registry over the bundled one")
                raise RegistryError(f"no registry at {folder} (pass --registry PATH or set {ENV})")
            if folder.exists() and not folder.is_dir():
                raise RegistryError(f"{folder}: a registry is a folder, this is a file")
        reg._load(create=create)
        if strict and reg.problems:
            more = f" (and {len(reg.problems) - 1} more; run `forensics registry validate`)" if len(reg.problems) > 1 else ""
            raise RegistryError(reg.problems[0] + more)
        return reg

    def reload(self) -> Registry:
        self.__init__(self.path, self.below)
        self._load(create=True)
        return self

    def _label(self, p: Path) -> str:
        try:
            return str(Path(self.path.name) / p.relative_to(self.path))
        except ValueError:
            return str(p)

    def _read_default(self, root: Path, create: bool, problems: Problems) -> str | None:
        """The default protocol ``root/registry.yaml`` names (None when it names none)."""
        top = root / REGISTRY_FILE
        if _there(top):
            try:
                data = read_yaml(top, self._label(top), root=root)
            except RegistryError as exc:
                problems.append(str(exc))
                return None
            if data is None:
                problems.add(self._label(top), None, "empty (expected schema_version and default_protocol)")
            elif check_schema(data, self._label(top), problems):
                check_keys(data, {"schema_version", "default_protocol", "description"}, self._label(top), problems,
                           "schema_version, default_protocol")
                default = data.get("default_protocol")
                if default is not None and not isinstance(default, str):
                    problems.add(self._label(top), "default_protocol", f"expected a protocol name, got {default!r}")
                else:
                    return default
        elif root.is_dir() and not create:
            problems.add(self._label(top), None, "missing (every registry folder has one)")
        return None

    def _load(self, *, create: bool) -> None:
        problems = Problems()
        self.exists = self.path.is_dir()
        # the nearest layer that names a default protocol decides it
        defaults = [self._read_default(root, create and root == self.path, problems) for root in self.layers]
        self.default_protocol = next((d for d in defaults if d is not None), None)
        if self.exists and (self.path / JOURNAL).exists():
            unfinished = self._finish_interrupted()
            if unfinished:
                problems.add(self._label(self.path / JOURNAL), None, unfinished)
        # protocol name -> its folders, nearest layer first: (layer, folder, record or None)
        found: dict[str, list[tuple[Path, Path, Mapping[str, Any] | None]]] = {}
        for root in self.layers:
            if not root.is_dir():
                continue
            for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not inside(folder, root):
                    problems.add(self._label(folder), None, "a symbolic link; a registry holds its protocols itself")
                    continue
                pfile = folder / PROTOCOL_FILE
                if not _there(pfile):
                    if (folder / GENERATORS_DIR).is_dir():
                        problems.add(self._label(pfile), None, "missing, but the folder holds generators")
                    continue
                data = self._read_protocol_file(pfile, problems, root)
                found.setdefault(folder.name, []).append((root, folder, data))
        # plain protocols first: a combination is read against them
        names = sorted((n for n in found if found[n][0][2] is not None),
                       key=lambda n: (is_combination(found[n][0][2].get("protocol")), n))
        for name in names:
            root, folder, data = found[name][0]
            proto = self._protocol_from(data, folder / PROTOCOL_FILE, folder.name, problems)
            if proto is None:
                continue
            for _, lower, other in found[name][1:]:  # the same protocol in a lower layer, hidden by this one
                if other is not None and other.get("digest") != proto.digest:
                    problems.add(self._label(lower / PROTOCOL_FILE), "digest",
                                 f"protocol {name!r} of {self._label(folder / PROTOCOL_FILE)} has other settings "
                                 f"({short(proto.digest)}); a registry layered over another keeps its protocols: "
                                 f"rename or remove {self._label(folder)}")
            self.protocols[proto.name] = proto
            if isinstance(proto, Combination):
                for _, at, _ in found[name]:
                    if any((at / GENERATORS_DIR).glob("*.y*ml")):
                        problems.add(self._label(at / GENERATORS_DIR), None,
                                     f"a combination holds no generators of its own; enrol them under its protocols "
                                     f"({', '.join(p.name for p in proto.parts)})")
                self.generators[proto.name] = self._join(proto)
                problems.extend(self._join_problems)
                self._join_problems = []
            else:
                merged: dict[str, GeneratorEntry] = {}
                held_at: dict[str, Path] = {}
                for layer, at, _ in reversed(found[name]):  # a generator file of a nearer layer hides a farther one
                    loaded = self._load_generators(at, proto, problems, layer)
                    for g, entry in loaded.items():
                        if g in merged:
                            self._check_copy(entry, merged[g], at / GENERATORS_DIR, held_at[g] / GENERATORS_DIR)
                        held_at[g] = at
                    merged.update(loaded)
                # in the order of their files' names, as one folder lists them
                self.generators[proto.name] = dict(sorted(merged.items(), key=lambda kv: kv[0] + ".yaml"))
            cal = next(((layer, at / CALIBRATION_FILE) for layer, at, _ in found[name]
                        if _there(at / CALIBRATION_FILE)), None)
            if cal is not None:
                self._load_calibration(cal[1], proto.name, problems, cal[0])
            if isinstance(proto, Protocol):
                for layer, at, _ in found[name]:
                    self._check_reference(at / REFERENCE_DIR, proto.name, problems, layer)
                self._load_processing(proto.name, [layer for layer, _, _ in found[name]], problems)
                self._check_processed(proto.name)
        if self.default_protocol is not None and self.default_protocol not in self.protocols:
            top = next((r / REGISTRY_FILE for r, d in zip(self.layers, defaults) if d is not None), self.path)
            problems.add(self._label(top), "default_protocol",
                         f"{self.default_protocol!r} is not a protocol of this registry "
                         f"(known: {', '.join(sorted(self.protocols)) or 'none'}); make one of them the default with "
                         "`forensics registry default NAME`")
        self.problems = list(problems)

    def _read_protocol_file(self, pfile: Path, problems: Problems, root: Path | None = None
                            ) -> Mapping[str, Any] | None:
        label = self._label(pfile)
        try:
            data = read_yaml(pfile, label, root=self.path if root is None else root)
        except RegistryError as exc:
            problems.append(str(exc))
            return None
        if not check_schema(data, label, problems):
            return None
        check_keys(data, {"schema_version", "digest", "protocol"}, label, problems, "schema_version, digest, protocol")
        return data

    def _protocol_from(self, data: Mapping[str, Any], pfile: Path, folder: str,
                       problems: Problems) -> Protocol | Combination | None:
        label = self._label(pfile)
        record = data.get("protocol")
        try:
            if is_combination(record):
                plain = {n: p for n, p in self.protocols.items() if isinstance(p, Protocol)}
                proto: Protocol | Combination = Combination.from_dict(record, plain, f"{label}: protocol")
            else:
                proto = Protocol.from_dict(record, f"{label}: protocol")
            digest = proto.digest
        except RegistryError as exc:
            problems.append(str(exc))
            return None
        except (TypeError, ValueError, OverflowError) as exc:  # a value JSON cannot hold, so no digest
            problems.add(label, "protocol", f"cannot be digested ({str(exc)[:80]}); only text, numbers, lists "
                                            "and mappings belong in a protocol record")
            return None
        if proto.name != folder:
            problems.add(label, "protocol.name", f"{proto.name!r} does not match its folder {folder!r}")
            return None
        if data.get("digest") != digest:
            problems.add(label, "digest", f"stored {data.get('digest')!r:.80} is not the digest of the protocol record "
                                          f"({digest}); the record was edited by hand?")
        return proto

    def _load_protocol(self, pfile: Path, folder: str, problems: Problems,
                       root: Path | None = None) -> Protocol | Combination | None:
        data = self._read_protocol_file(pfile, problems, root)
        return None if data is None else self._protocol_from(data, pfile, folder, problems)

    def _join(self, combo: Combination) -> dict[str, GeneratorEntry]:
        """A combination's generators: each instance enrolled, with the same id and input, under every part,
        its curve the parts' curves end to end. An instance some part lacks is left out, with a warning."""
        parts = [self.generators.get(p.name, {}) for p in combo.parts]
        label = self._label(self.path / combo.name / PROTOCOL_FILE)
        joined: dict[str, GeneratorEntry] = {}
        for g in sorted(set().union(*parts)):
            by_id = [{i.id: i for i in part[g].instances} if g in part else {} for part in parts]
            ids = list(dict.fromkeys(i for m in by_id for i in m))
            instances = []
            left_out: dict[tuple[str, ...], list[str]] = {}  # lacking parts -> the instances they leave out
            unread = [p.name for p in combo.parts if g in self.unread.get(p.name, ())]
            for iid in ids:
                got = [m.get(iid) for m in by_id]
                lacking = [p.name for p, inst in zip(combo.parts, got) if inst is None]
                if lacking:
                    if unread:  # a file of g has a problem of its own (reported apart): its instances are not known
                        continue
                    if any(inst is not None and inst.provenance.get("combination") == combo.name for inst in got):
                        self._join_problems.append(
                            f"{label}: {g}/{iid} was enrolled under the combination but is missing under "
                            f"{', '.join(lacking)} (an interrupted enrolment, or removed under one protocol alone?); "
                            "no command opens the registry until it is whole: delete the instance from "
                            + ", ".join(f"{p.name}/{GENERATORS_DIR}/{g}.yaml" for p, inst in zip(combo.parts, got)
                                        if inst is not None)
                            + " by hand (the file, where it is the last)")
                        continue
                    left_out.setdefault(tuple(lacking), []).append(iid)
                    continue
                inputs = {inst.provenance.get("input_sha256") for inst in got}
                if len(inputs) > 1:
                    self.warnings.append(f"{label}: {g}/{iid} was enrolled from different images under "
                                         f"{', '.join(p.name for p in combo.parts)}; the combination leaves it out")
                    continue
                values = tuple(v for inst in got for v in inst.values)
                instances.append(Instance(iid, values, dict(got[0].provenance)))
            if unread:
                self.warnings.append(f"{label}: {g} is read under the combination with the instances every part's "
                                     f"file holds, until its file under {', '.join(unread)} reads without problems "
                                     "(listed apart)")
            for lacking, iids in left_out.items():
                self.warnings.append(f"{label}: {len(iids)} instance(s) of {g} are not enrolled under "
                                     f"{', '.join(lacking)} ({', '.join(iids[:3])}{' …' if len(iids) > 3 else ''}); "
                                     "the combination leaves them out until they are enrolled under every part")
            if instances:
                description = next((part[g].description for part in parts if g in part and part[g].description), "")
                families = {p.name: part[g].family for p, part in zip(combo.parts, parts)
                            if g in part and part[g].family is not None}
                family = next(iter(families.values()), None)
                if len(set(families.values())) > 1:
                    problem = (f"{label}: {g}: its protocols record different families ("
                               + ", ".join(f"{p}: {f}" for p, f in families.items())
                               + f"); set one for all with `forensics registry family {g} NAME --protocol "
                               f"{combo.name}`")
                    self._join_problems.append(problem)
                    self.family_problems.append(problem)
                joined[g] = GeneratorEntry(g, description, combo.digest, instances, family)
        return joined

    def _check_copy(self, copy: GeneratorEntry, below: GeneratorEntry, folder: Path, below_folder: Path) -> None:
        """Warn when a generator file hides a farther layer's file of the same generator that holds what it
        does not. A copy (made when an instance or records were added over the bundled registry) holds every
        instance, records digest and image digests of the file below at the time; the file below holding more,
        or other values, means it changed since (a new release) and the copy hides that."""
        have = {i.id: i for i in copy.instances}
        if not any(i.id in have for i in below.instances):
            self.warnings.append(
                f"{self._label(folder / f'{copy.name}.yaml')}: hides {self._label(below_folder / f'{copy.name}.yaml')}, "
                f"a generator of the same name with none of its instances: enrol one of them under another name")
            return
        missing = [i.id for i in below.instances if i.id not in have]
        changed = [i.id for i in below.instances if i.id in have and (
            have[i.id].values != i.values or any(have[i.id].records.get(c) != d for c, d in i.records.items())
            or i.provenance.get("image_digests") and not have[i.id].provenance.get("image_digests"))]
        if missing or changed:
            ids = ", ".join([*missing, *changed][:4]) + (" …" if len(missing) + len(changed) > 4 else "")
            self.warnings.append(
                f"{self._label(folder / f'{copy.name}.yaml')}: hides {self._label(below_folder / f'{copy.name}.yaml')}, "
                f"which has changed since it was copied (instances {ids} missing or different here): the "
                f"registry reads the copy; `forensics registry refresh` brings it up to date and keeps what it "
                f"added (instances, records)")

    def _load_generators(self, folder: Path, proto: Protocol, problems: Problems,
                         root: Path | None = None) -> dict[str, GeneratorEntry]:
        root = self.path if root is None else root
        found: dict[str, GeneratorEntry] = {}
        gdir = folder / GENERATORS_DIR
        if gdir.is_symlink() or (gdir.exists() and not inside(gdir, root)):
            problems.add(self._label(gdir), None, "a symbolic link; a registry holds its generator files itself")
            return found
        if not gdir.is_dir():
            return found
        lower: dict[str, str] = {}
        curves: dict[tuple, str] = {}
        for gfile in sorted(gdir.iterdir()):
            if gfile.name.startswith(".") or (gfile.is_dir() and not gfile.is_symlink()):
                continue
            label = self._label(gfile)
            if gfile.suffix == ".yml":  # every command reads and writes <name>.yaml: enrolling would write a second
                problems.add(label, None, f"a generator file is named <generator>.yaml: rename it {gfile.stem}.yaml")
                self.unread.setdefault(proto.name, set()).add(gfile.stem)
                continue
            if gfile.suffix != ".yaml":
                problems.add(label, None, "not a .yaml file (only generator files belong in generators/)")
                continue
            try:
                data = read_yaml(gfile, label, root=root)
            except RegistryError as exc:
                problems.append(str(exc))
                self.unread.setdefault(proto.name, set()).add(gfile.stem)
                continue
            n0 = len(problems)
            entry = parse_generator(data, label, gfile.stem, proto, problems)
            self.family_problems += [p for p in problems[n0:] if Problems.is_about(p, label, "family")]
            if len(problems) > n0:
                self.unread.setdefault(proto.name, set()).add(gfile.stem)
            if entry is None:
                continue
            if entry.name.lower() in lower:
                problems.add(label, "generator", f"{entry.name!r} duplicates generator {lower[entry.name.lower()]!r} "
                                                 "(names are compared ignoring case)")
                continue
            lower[entry.name.lower()] = entry.name
            for inst in entry.instances:
                key = inst.values
                if key in curves:
                    problems.add(label, f"instances ({inst.id}).curve",
                                 f"identical to the curve of {curves[key]} (enrolled twice?)")
                else:
                    curves[key] = f"{entry.name}/{inst.id}"
            found[entry.name] = entry
        return found

    def _load_calibration(self, cfile: Path, protocol: str, problems: Problems, root: Path | None = None) -> None:
        label = self._label(cfile)
        try:
            data = read_yaml(cfile, label, root=self.path if root is None else root)
        except RegistryError as exc:
            problems.append(str(exc))
            return
        matchers = parse_calibration(data, label, problems)
        if matchers is None:
            return
        self.calibrations[protocol] = matchers
        current = references_digest(self.enrolled(protocol))
        for name, cal in self.calibrations[protocol].items():
            if cal.get("references_digest") != current:
                self.warnings.append(f"{label}: matchers.{name}: calibrated on other references than the registry "
                                     "now holds; matchers recalibrate at fit (run `forensics registry calibrate "
                                     f"-p {protocol}`)")
            elif cal.get("rule") != CALIBRATION_RULE:
                self.warnings.append(f"{label}: matchers.{name}: calibrated under an older rule than this version's; "
                                     "matchers recalibrate at fit (run `forensics registry calibrate "
                                     f"-p {protocol}`)")
            elif (cal.get("pooled") or {}).get("adopted") and not pool_rules_current(cal["pooled"]):
                self.warnings.append(f"{label}: matchers.{name}: its pooled thresholds were chosen under an older "
                                     "rule than this version's; each (condition, batch size) calibrates on its own "
                                     f"until `forensics registry calibrate -p {protocol}` pools again")

    def _load_processing(self, protocol: str, layers: Sequence[Path], problems: Problems) -> None:
        """Read what processed the records of ``protocol`` in each of ``layers`` (nearest first); two layers
        that record different processing for one condition hold records that are not comparable (a warning)."""
        found = []
        for layer in layers:
            path = processing_path(layer, protocol)
            if not _there(path):
                continue
            label = self._label(path)
            try:
                entries = parse_processing(read_yaml(path, label, root=layer), label, problems)
            except RegistryError as exc:
                problems.append(str(exc))
                continue
            if entries is not None:
                found.append((layer, label, entries))
        self.processing[protocol] = found
        for (_, near, ours), (_, far, theirs) in zip(found, found[1:]):
            for condition in sorted(set(ours) & set(theirs)):
                ref_ours, ref_theirs = (e[condition].get("reference", NONE) for e in (ours, theirs))
                if ref_ours != ref_theirs:
                    self.warnings.append(f"{near}: records under {condition} were scored against T and P_n "
                                         f"{_put_through(ref_ours)}, those of {far} {_put_through(ref_theirs)}: the "
                                         f"two are not comparable; keep them again (`forensics registry records`)")
                elif ours[condition]["digest"] != theirs[condition]["digest"]:
                    self.warnings.append(f"{near}: records under {condition} were made by another processing "
                                         f"({describe_codecs(ours[condition])}) than those of {far} "
                                         f"({describe_codecs(theirs[condition])}): the two are not comparable; "
                                         f"keep them again with one Pillow")

    def _check_processed(self, protocol: str) -> None:
        """Warn of records kept under a condition that no layer's ``processing.yaml`` records (a registry copied
        without it, a file edited by hand): what processed their images cannot be checked against this machine's,
        so they are matched unchecked."""
        kept = {c for entry in self.generators.get(protocol, {}).values() for inst in entry.instances
                for c in inst.records} - {NONE}
        unsaid = sorted(kept - set(self.processing_of(protocol)))
        if unsaid:
            self.warnings.append(f"{protocol}: records are kept under {', '.join(unsaid)} but {RECORDS_DIR}/"
                                 f"{PROCESSING_FILE} does not say what processed them, so this machine's Pillow "
                                 "cannot be checked against the one that made them: copy that file from the "
                                 "registry they came from")

    def processing_of(self, protocol_name: str) -> dict[str, dict[str, str]]:
        """What processed the records of a plain protocol, per condition, as the layers say it (the nearest
        layer's record of a condition first)."""
        merged: dict[str, dict[str, str]] = {}
        for _, _, entries in reversed(self.processing.get(protocol_name, [])):
            merged.update(entries)
        return dict(sorted(merged.items()))

    def record_reference(self, protocol_name: str, condition: str) -> str:
        """What T and P_n were put through when the records of a plain protocol under ``condition`` were scored
        (the nearest layer's ``processing.yaml`` says; records kept before it said so were scored against T and
        P_n as they are), or will be, where no layer keeps records under it yet
        (:func:`forensics.conditions.reference_condition`): records under one condition are scored alike in
        every layer, so that they can be drawn together."""
        if condition == NONE:
            return NONE
        made = self.processing_of(protocol_name).get(condition)
        return reference_condition(condition) if made is None else made.get("reference", NONE)

    def _given_reference(self, references: Mapping[str, str | Mapping[str, str]] | None, protocol: str,
                         condition: str) -> str:
        """What the records of ``protocol`` under ``condition`` about to be kept were scored against, as their
        caller says (``references``: per condition, one name for every protocol or a name per protocol — what
        scored them, which may be T and P_n as they are where the processed side cannot be fitted:
        :func:`forensics.engine.fitted_references`); without ``references``, :meth:`record_reference`."""
        if references is None:
            return self.record_reference(protocol, condition)
        given = references.get(condition)
        given = given.get(protocol) if isinstance(given, Mapping) else given
        if given is None:
            raise UsageError(f"records under {condition} are given without what they were scored against "
                             f"(protocol {protocol})")
        return get_condition(given).name

    def record_references(self, protocol_name: str, condition: str) -> dict[str, str]:
        """:meth:`record_reference` of each part of a protocol or combination, by part name (what
        :meth:`forensics.engine.Engine.under` takes)."""
        return {part.name: self.record_reference(part.name, condition) for part in self.protocol(protocol_name).parts}

    def processing_warnings(self) -> list[str]:
        """One line per layer whose records this machine would process otherwise under some condition (another
        Pillow, libjpeg or libwebp): records under those conditions cannot be kept here (:meth:`add_records`
        refuses them); queries are matched as before."""
        found = []
        for name, layers in sorted(self.processing.items()):
            for _, label, entries in layers:
                other = [c for c, made in entries.items() if made["digest"] != processing_digest(c)]
                if other:
                    found.append(f"{label}: this machine's {describe_codecs(codecs())} processes images otherwise "
                                 f"than the {describe_codecs(entries[other[0]])} that kept {name}'s records under "
                                 f"{', '.join(other)}: records under them cannot be kept here (queries are matched "
                                 "as before)")
        return found

    def _processing_writes(self, protocols: Sequence[str], conditions: Sequence[str],
                           references: Mapping[str, str | Mapping[str, str]] | None = None
                           ) -> list[tuple[Path, dict[str, Any]]]:
        """Check, before records under ``conditions`` are kept for ``protocols``, that this machine processes
        images under each as the records every layer keeps under it were processed, and that they were scored
        against the T and P_n those were (:meth:`_given_reference`; a :class:`RegistryError` naming the versions
        or the references, else); returns the written layer's processing files to write, with the conditions
        they do not record yet added, each with the reference its records were scored against."""
        conditions = [c for c in conditions if c != NONE]
        writes = []
        for protocol in protocols:
            layers = self.processing.get(protocol, [])
            scored = {c: self._given_reference(references, protocol, c) for c in conditions}
            for condition in conditions:
                here = processing_digest(condition)
                for _, label, entries in layers:
                    made = entries.get(condition)
                    if made is not None and made["digest"] != here:
                        raise RegistryError(
                            f"{protocol}: this machine's {describe_codecs(codecs())} processes images under "
                            f"{condition} otherwise than the one that kept the registry's records under it "
                            f"({describe_codecs(made)}, {label}): records kept here would not be comparable; "
                            f"keep them with that Pillow, or leave {condition} out (--conditions)")
                kept = self.processing_of(protocol).get(condition)
                if kept is not None and kept.get("reference", NONE) != scored[condition]:
                    raise RegistryError(
                        f"{protocol}: these records under {condition} were scored against T and P_n "
                        f"{_put_through(scored[condition])}, the registry's against T and P_n "
                        f"{_put_through(kept.get('reference', NONE))}: records of one condition are scored alike, "
                        f"or they are not comparable; leave {condition} out (--conditions)")
            path = processing_path(self.path, protocol)
            own = next((entries for layer, _, entries in layers if layer == self.path), {})
            new = {c: {"digest": processing_digest(c), **codecs(), "reference": scored[c]}
                   for c in conditions if c not in own}
            if new:
                writes.append((self._safe(path), {"schema_version": SCHEMA_VERSION,
                                                  "conditions": {**own, **new}}))
        return writes

    def _check_reference(self, rdir: Path, protocol: str, problems: Problems, root: Path | None = None) -> None:
        """Every shipped reference file of ``protocol`` against the digest the registry records for it."""
        root = self.path if root is None else root
        if not rdir.exists() and not rdir.is_symlink():
            return
        label = self._label(rdir)
        if not inside(rdir, root) or not rdir.is_dir():
            problems.add(label, None, "a symbolic link or not a folder; a registry holds its reference side itself")
            return
        try:
            digests = shipped.read_manifest(rdir, self._label(rdir / shipped.MANIFEST))
        except RegistryError as exc:
            problems.append(str(exc))
            return
        files = sorted(p for p in rdir.iterdir() if p.suffix == ".npz" and not p.name.startswith("."))
        for path in files:
            flabel = self._label(path)
            if not inside(path, root) or not path.is_file():
                problems.add(flabel, None, "a symbolic link or not a regular file; a registry holds its reference "
                                           "side itself")
            elif digests is None or path.name not in digests:
                problems.add(flabel, None, f"no digest recorded in {self._label(rdir / shipped.MANIFEST)}; the "
                                           "engine refuses a shipped reference side the registry does not record "
                                           "(re-create it with `forensics protocol create … --ship-reference`)")
            elif _reference_sha256(path) != digests[path.name]:
                problems.add(flabel, None, f"the shipped reference side of {protocol} does not match the digest the "
                                           f"registry records ({self._label(rdir / shipped.MANIFEST)})")
        for name in sorted(set(digests or {}) - {p.name for p in files}):
            problems.add(self._label(rdir / shipped.MANIFEST), name, "recorded, but the file is missing")

    # -- reading ---------------------------------------------------------------------------------
    def protocol(self, name: str) -> Protocol | Combination:
        if name not in self.protocols:
            known = ", ".join(sorted(self.protocols)) or "none"
            raise UsageError(f"no protocol {name!r} in the registry at {self.location}; known: {known}")
        return self.protocols[name]

    def combinations_of(self, name: str) -> list[str]:
        """The combinations that combine protocol ``name``."""
        return sorted(c.name for c in self.protocols.values()
                      if isinstance(c, Combination) and name in [p.name for p in c.parts])

    def resolve_protocol(self, name: str | None) -> str:
        """``name``, or the registry's default protocol when ``name`` is None."""
        if name is not None:
            self.protocol(name)
            return name
        if self.default_protocol is None:
            raise UsageError("the registry names no default protocol; pass --protocol "
                             f"(known: {', '.join(sorted(self.protocols)) or 'none'})")
        return self.default_protocol

    def generator_entries(self, protocol_name: str) -> dict[str, GeneratorEntry]:
        self.protocol(protocol_name)
        return self.generators.get(protocol_name, {})

    def enrolled(self, protocol_name: str) -> list[EnrolledCurve]:
        """Every enrolled instance of every generator of a protocol (generators by name, instances in file order)."""
        proto = self.protocol(protocol_name)
        refs = []
        for name in sorted(self.generators.get(protocol_name, {})):
            entry = self.generators[protocol_name][name]
            for inst in entry.instances:
                refs.append(EnrolledCurve(name, inst.id, Fingerprint(proto.digest, inst.values), dict(inst.provenance),
                                          family=entry.family))
        return refs

    def records(self, protocol_name: str, references: Sequence[EnrolledCurve], condition: str = "none"
                ) -> tuple[dict[str, Any], list[str]]:
        """The per-image records of ``references`` (enrolled under ``protocol_name``) under ``condition``,
        checked against the digests their generator files record: ``({instance id: (layers, images, fields)
        array}, problems)``. Under a combination an instance's parts are joined along the layers (a part whose
        statistic keeps fewer fields per image padded with NaN). An instance
        without records under the condition, or whose records fail a check (one line in ``problems``), is
        left out of the mapping."""
        import numpy as np

        proto = self.protocol(protocol_name)
        found: dict[str, Any] = {}
        problems: list[str] = []
        for ref in references:
            arrays = []
            for part in proto.parts:
                inst = self._instance(part.name, ref.generator, ref.instance)
                if inst is None or condition not in inst.records:
                    break
                label = f"{part.name}/{ref.generator}/{ref.instance} ({condition})"
                layer, path = self._layer_file(records_path, part.name, ref.generator, ref.instance, condition)
                bundled = None if path.is_file() else self._bundled_holding(part.name, ref.generator, ref.instance,
                                                                            condition)
                if bundled is not None:
                    problems.append(f"{label}: its records lie in the bundled registry ({bundled}), "
                                    f"not read here: open the registry over it (without --registry or "
                                    f"FORENSICS_REGISTRY)")
                    break
                try:
                    arrays.append(read_records(path, inst.records[condition], root=layer, layers=len(part.layers),
                                               label=label))
                except RegistryError as exc:
                    problems.append(str(exc))
                    break
            else:
                if len({a.shape[1] for a in arrays}) != 1:
                    problems.append(f"{ref.generator}/{ref.instance}: its records hold different numbers of images "
                                    f"under the parts of {protocol_name}; add them again")
                    continue
                # parts whose statistics keep fewer fields per image (mean-z: 1, C_T: 2) are padded with NaN
                width = max(a.shape[2] for a in arrays)
                found[ref.instance] = arrays[0] if len(arrays) == 1 else np.concatenate(
                    [np.pad(a.astype(np.float64), ((0, 0), (0, 0), (0, width - a.shape[2])), constant_values=np.nan)
                     for a in arrays])
        return found, problems

    def _layer_file(self, where: Callable[..., Path], *names: str) -> tuple[Path, Path]:
        """(layer, path): the first layer, top down, that holds the per-image file ``where(layer, *names)``
        names (anything there, a link included, so that a link is refused rather than passed over), else the
        written layer and its path."""
        paths = [(root, where(root, *names)) for root in self.layers]
        return next(((root, p) for root, p in paths if _there(p)), paths[0])

    def image_digests(self, protocol_name: str, references: Sequence[EnrolledCurve]
                      ) -> tuple[dict[tuple[str, str], Any], list[str]]:
        """The digests of the images each of ``references`` was enrolled from (:mod:`forensics.registry.records`),
        checked against the one its provenance records: ``({(generator, instance id): (images, 16) array},
        problems)``. Under a combination from the first of its protocols that keeps them. An instance enrolled
        before they were kept is left out; one whose file fails a check too, with one line in ``problems``."""
        found: dict[tuple[str, str], Any] = {}
        problems: list[str] = []
        for ref in references:
            for part in self.protocol(protocol_name).parts:
                inst = self._instance(part.name, ref.generator, ref.instance)
                digest = inst.provenance.get("image_digests") if inst is not None else None
                if digest is None:
                    continue
                layer, path = self._layer_file(digests_path, part.name, ref.generator, ref.instance)
                try:
                    found[(ref.generator, ref.instance)] = read_digests(
                        path, digest, root=layer, label=f"{part.name}/{ref.generator}/{ref.instance}")
                except RegistryError as exc:
                    problems.append(str(exc))
                break
        return found, problems

    def stray_records(self, protocol_name: str) -> list[str]:
        """The instance folders under the written layer's ``<protocol>/records/`` that no enrolled instance
        names (``generator/instance``): left by a removal before removals took them along, or copied in by
        hand. Nothing reads them."""
        base = self.path / protocol_name / RECORDS_DIR
        if not base.is_dir() or base.is_symlink():
            return []
        named = {(r.generator, r.instance) for r in self.enrolled(protocol_name)}
        unread = self.unread.get(protocol_name, set())  # a file with a problem may name them: not known
        return [f"{g.name}/{i.name}" for g in sorted(base.iterdir()) if g.is_dir() and not g.is_symlink()
                and g.name not in unread for i in sorted(g.iterdir()) if i.is_dir() and (g.name, i.name) not in named]

    def _bundled_holding(self, protocol_name: str, generator: str, instance: str, condition: str) -> Path | None:
        """The bundled registry where it is not among this registry's layers and holds an instance's records
        file, else None: a copy of a bundled generator file (made by enrolling a further run over it) keeps the
        bundled instances' records there, so a user registry opened alone lacks them."""
        bundled = bundled_registry_path()
        unread = all(root.resolve() != bundled.resolve() for root in self.layers)
        return bundled if unread and records_path(bundled, protocol_name, generator, instance, condition).is_file() \
            else None

    def record_conditions(self, protocol_name: str) -> list[str]:
        """The conditions under which every enrolled instance of a protocol keeps records."""
        have: set[str] | None = None
        for ref in self.enrolled(protocol_name):
            kept = set(self.instance_record_conditions(protocol_name, ref.generator, ref.instance))
            have = kept if have is None else have & kept
        return sorted(have or ())

    def instance_record_conditions(self, protocol_name: str, generator: str, instance: str) -> list[str]:
        """The conditions under which one enrolled instance keeps records (under a combination, in every part)."""
        have: set[str] | None = None
        for part in self.protocol(protocol_name).parts:
            inst = self._instance(part.name, generator, instance)
            kept = set(inst.records) if inst is not None else set()
            have = kept if have is None else have & kept
        return sorted(have or ())

    def _instance(self, protocol_name: str, generator: str, instance: str) -> Instance | None:
        entry = self.generators.get(protocol_name, {}).get(generator)
        return next((i for i in entry.instances if i.id == instance), None) if entry else None

    def _write_digests(self, protocol_name: str, generator: str, instance: str, digests: Any) -> str:
        return write_digests(self.check_file_target(digests_path(self.path, protocol_name, generator, instance)),
                             digests)

    def _write_records(self, protocol_name: str, generator: str, instance: str, arrays: Mapping[str, Any]) -> None:
        for condition, array in arrays.items():
            write_records(self.check_file_target(records_path(self.path, protocol_name, generator, instance,
                                                              condition)), array)

    def add_records(self, protocol_name: str, generator: str, instance: str,
                    records: Mapping[str, Sequence[Any]], image_size: Sequence[int] | None = None,
                    image_digests: Any | None = None, image_colour: bool | None = None,
                    references: Mapping[str, str | Mapping[str, str]] | None = None) -> list[str]:
        """Keep per-image records ({condition: one array per layer of the protocol}) for an instance already
        enrolled (under a combination, under every part). The caller vouches that they are the instance's
        own images (:func:`forensics.add_records` checks the images' hash and that the ``none`` records
        reproduce the enrolled curve exactly). A condition the instance keeps already is left as it is (its
        file and digest untouched). ``image_size`` ([height, width] of those images) and ``image_colour``
        (whether any of them is in colour) are recorded in the
        instance's provenance where it records none, and so are ``image_digests`` (the images' digests,
        :func:`forensics.io.hashing.image_digests`) with their file. Files first, then the generator files
        naming them, all or nothing. A generator file only a read-only layer holds (the bundled registry) is
        copied into the written layer with the new records, as :meth:`enroll` copies it with new instances; the
        records it kept already stay where they are. ``references``: what the records were scored against, as
        :meth:`enroll` takes it. Returns the conditions now kept."""
        proto = self.protocol(protocol_name)
        for c, layers in records.items():
            check_name("condition", c)
            if len(layers) != len(proto.layers):
                raise UsageError(f"records under {c} have {len(layers)} layers; protocol {protocol_name!r} has "
                                 f"{len(proto.layers)}")
        given = {"image_size": None if image_size is None else [int(n) for n in image_size],
                 "image_colour": None if image_colour is None else bool(image_colour)}
        with self.lock():
            plan = []
            for part, a, b in part_spans(proto):
                gfile = self._generator_file(part.name, generator)
                below = None if gfile.is_file() else self._entry_below(part, generator)
                entry = self._read_entry(part, gfile) or (below[1] if below else None)
                if entry is None:
                    raise UsageError(f"no generator {generator!r} under protocol {part.name!r}")
                inst = next((i for i in entry.instances if i.id == instance), None)
                if inst is None:
                    raise UsageError(f"{generator} has no instance {instance!r} under {part.name}; its instances: "
                                     + ", ".join(i.id for i in entry.instances))
                arrays = {c: as_records(list(layers[a:b]), c) for c, layers in records.items()
                          if c not in inst.records}
                facts = {k: v for k, v in given.items() if v is not None and inst.provenance.get(k) is None}
                hashed = image_digests is not None and inst.provenance.get("image_digests") is None
                if arrays or facts or hashed:
                    plan.append((part, gfile, entry, inst, arrays, facts, hashed))
            processing = self._processing_writes([part.name for part, _, _, _, arrays, _, _ in plan if arrays],
                                                 sorted({c for *_, arrays, _, _ in plan for c in arrays}),
                                                 references)
            for path, _ in [(gfile, None) for _, gfile, *_ in plan] + processing:  # before any file is written
                self.check_file_target(path)
            changes = []
            for part, gfile, entry, inst, arrays, facts, hashed in plan:
                self._write_records(part.name, generator, instance, arrays)
                inst.records = {**inst.records, **{c: sha256_array(x) for c, x in arrays.items()}}
                inst.provenance.update(facts)
                if hashed:
                    inst.provenance["image_digests"] = self._write_digests(part.name, generator, instance,
                                                                           image_digests)
                changes.append((gfile, entry.to_dict()))
            if changes:
                self._copy_up([part.name for part in proto.parts])  # the protocols they are read against
                self._write_all(changes + processing)
        self.reload()
        return sorted(self._instance(proto.parts[0].name, generator, instance).records)

    def rescore_records(self, protocol_name: str, records: Mapping[tuple[str, str], Mapping[str, Sequence[Any]]],
                        conditions: Sequence[str], references: Mapping[str, str]) -> list[str]:
        """Replace what a plain protocol's instances keep under ``conditions`` (not ``none``) with ``records``
        ({(generator, instance id): {condition: one array per layer}}), scored against T and P_n put through
        ``references[condition]`` — :func:`~forensics.conditions.reference_condition` of each, or none where the
        statistic cannot be fitted on T and P_n so processed (:func:`forensics.engine.fitted_references`) — and
        record that in ``processing.yaml``: records kept before a version scored them so are thereby made like new
        ones. Every instance that keeps records under one of ``conditions`` must be
        given, and its generator file must lie in the written layer (the records of one condition are scored
        alike or not drawn together); every file — records, generator files, ``processing.yaml`` — is replaced
        at once through the journal, all or nothing. Returns the conditions now scored so."""
        proto = self.protocol(protocol_name)
        if is_combination(proto):
            raise UsageError(f"{protocol_name} combines protocols: score the records of each of "
                             f"{', '.join(p.name for p in proto.parts)} again")
        conditions = sorted({c for c in conditions if c != NONE})
        for c in conditions:
            check_name("condition", c)
        scored = {c: self._given_reference(references, protocol_name, c) for c in conditions}
        with self.lock():
            keeping = {(name, inst.id) for name, entry in self.generators.get(protocol_name, {}).items()
                       for inst in entry.instances if set(inst.records) & set(conditions)}
            missing = sorted(keeping - set(records))
            if missing:
                raise UsageError(f"{len(missing)} instance(s) of {protocol_name} keep records under "
                                 f"{', '.join(conditions)} but are not given again ({', '.join(f'{g}/{i}' for g, i in missing[:3])}"
                                 f"{' …' if len(missing) > 3 else ''}): records of one condition must all be scored "
                                 "alike; give every one, or remove those instances")
            arrays: list[tuple[Path, Any]] = []
            changes = []
            by_generator: dict[str, dict[str, Mapping[str, Sequence[Any]]]] = {}
            for (generator, iid), kept in records.items():
                by_generator.setdefault(generator, {})[iid] = kept
            for generator, given in sorted(by_generator.items()):
                gfile = self._generator_file(protocol_name, generator)
                entry = self._read_entry(proto, gfile) if gfile.is_file() else None
                if entry is None:
                    raise UsageError(f"{protocol_name}/{generator}: its generator file is not in the written "
                                     f"registry {self.path}; score records again where it lies")
                for iid, kept in given.items():
                    inst = next((i for i in entry.instances if i.id == iid), None)
                    if inst is None:
                        raise UsageError(f"{generator} has no instance {iid!r} under {protocol_name}")
                    if sorted(kept) != conditions:
                        raise UsageError(f"{generator}/{iid}: records given under {', '.join(sorted(kept))}, "
                                         f"not {', '.join(conditions)}")
                    for c in conditions:
                        if len(kept[c]) != len(proto.layers):
                            raise UsageError(f"records under {c} have {len(kept[c])} layers; protocol "
                                             f"{protocol_name!r} has {len(proto.layers)}")
                        array = as_records(list(kept[c]), c)
                        arrays.append((records_path(self.path, protocol_name, generator, iid, c), array))
                        inst.records = {**inst.records, c: sha256_array(array)}
                changes.append((gfile, entry.to_dict()))
            own = next((entries for layer, _, entries in self.processing.get(protocol_name, [])
                        if layer == self.path), {})
            made = {c: {"digest": processing_digest(c), **codecs(), "reference": scored[c]} for c in conditions}
            changes.append((self._safe(processing_path(self.path, protocol_name)),
                            {"schema_version": SCHEMA_VERSION, "conditions": dict(sorted({**own, **made}.items()))}))
            self._write_all(changes, arrays)
        self.reload()
        return conditions

    def reference_dir(self, protocol_name: str) -> Path:
        """Where the fitted reference side of a protocol is shipped: the nearest layer that holds one (the
        engine reads it), else where the written layer would hold it. To write one, see
        :meth:`writable_reference_dir`."""
        for root in self.layers:
            folder = root / protocol_name / REFERENCE_DIR
            if folder.is_dir():
                return folder
        return self.path / protocol_name / REFERENCE_DIR

    def writable_reference_dir(self, protocol_name: str) -> Path:
        """The folder to ship a protocol's reference side to, in the written layer; a protocol record from a
        read-only layer is copied beside it first, so that the registry checks what is shipped there."""
        self.protocol(protocol_name)
        with self.lock():
            self._copy_up([protocol_name])
        self.reload()
        return self._safe(self.path / protocol_name / REFERENCE_DIR)

    def layer_of(self, protocol_name: str, generator: str | None = None) -> Path | None:
        """The nearest layer that holds a protocol's record (``generator``: that generator's file under it)."""
        for root in self.layers:
            folder = root / protocol_name
            if generator is None and (folder / PROTOCOL_FILE).is_file():
                return root
            if generator is not None and (folder / GENERATORS_DIR / f"{generator}.yaml").is_file():
                return root
        return None

    def calibration(self, protocol_name: str, matcher: str) -> dict[str, Any] | None:
        """The open-set calibration recorded for ``matcher`` (by ``registry calibrate``), if any."""
        return self.calibrations.get(protocol_name, {}).get(matcher)

    def validate(self) -> list[str]:
        """Every problem found (empty when the registry is sound): file, key and what is wrong."""
        return list(self.problems)

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the registry's write lock (``<registry>/.lock``)."""
        from filelock import Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with self._waited_lock():
                self._holding = True
                try:
                    self._recover()
                    yield
                finally:
                    self._holding = False
        except Timeout:
            raise RegistryError(f"the registry at {self.path} is locked by another process "
                                f"({self.path / LOCK_FILE}); try again when it has finished") from None
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise
            raise RegistryError(f"cannot write the registry at {self.path}: {exc.strerror or exc}; nothing was left "
                                "half-written: " + _WHAT_TO_DO[exc.errno in _FULL]) from None

    def check_writable(self) -> None:
        """Refuse, before minutes of work, a write to a registry folder this process cannot write (a read-only
        file system or folder, an immutable file): one line saying what to do, as :meth:`lock` would after."""
        folder = self.path
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():  # FORENSICS_DATA_DIR (or a folder above it) names a file
            raise RegistryError(f"cannot write the registry at {self.path}: {folder} is a file, not a folder; move "
                                "it, or write to another registry with --registry (or FORENSICS_DATA_DIR)")
        if not os.access(folder, os.W_OK) or ((self.path / LOCK_FILE).exists()
                                              and not os.access(self.path / LOCK_FILE, os.W_OK)):
            raise RegistryError(f"cannot write the registry at {self.path}: {folder} is read-only here; "
                                + _WHAT_TO_DO[False])

    @contextlib.contextmanager
    def _waited_lock(self) -> Iterator[None]:
        """The lock, saying so once when another process holds it (a write waits up to :data:`LOCK_TIMEOUT_S`
        for it in silence otherwise, behind a progress display that stands still)."""
        from filelock import Timeout

        lock = self._file_lock()
        try:
            lock.acquire(timeout=0.5)
        except Timeout:
            log.warning("the registry at %s is being written by another process; waiting for it (up to %d s)",
                        self.path, LOCK_TIMEOUT_S)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _file_lock(self) -> Any:
        """The registry's lock file as a ``filelock.FileLock`` (waiting up to :data:`LOCK_TIMEOUT_S`)."""
        from filelock import FileLock

        lockfile = self.path / LOCK_FILE
        if lockfile.is_symlink() or (lockfile.exists() and not lockfile.is_file()):
            # taking the lock opens it for writing, truncating whatever a link points at
            raise RegistryError(f"{lockfile}: the registry's lock file is a link or not a file; remove it")
        return FileLock(str(lockfile), timeout=LOCK_TIMEOUT_S)

    def _finish_interrupted(self) -> str | None:
        """On opening, a committed journal (a write of several files that was killed after it committed, or
        one in its last milliseconds): under the lock, so that a healthy write is waited for and a killed one
        completed now (:meth:`_recover`) — every command then reads the registry as that write committed it,
        rather than refusing it until some later write. What stops this is returned as the problem to record:
        a registry that cannot be written here, or stays locked."""
        from filelock import Timeout

        if self._holding:  # this process writes it: its own write finishes it
            return None
        try:
            with self._file_lock():
                if (self.path / JOURNAL).exists():
                    self._recover()
                    log.warning("completed a write of several files to the registry at %s that was interrupted "
                                "after it was committed", self.path)
        except Timeout:
            return (f"a write of several files is under way or was interrupted, and the registry stays locked by "
                    f"another process ({self.path / LOCK_FILE}): try again when it has finished")
        except RegistryError as exc:
            return str(exc)
        except OSError as exc:
            return (f"a write of several files was interrupted after it was committed, and it cannot be completed "
                    f"here: the registry cannot be written ({exc.strerror or exc}); make {self.path} writable and "
                    "run any forensics command on it")
        return None

    def check_file_target(self, path: Path) -> Path:
        """``path`` as a registry file about to be (re)written: inside the registry with no link on its way
        (:meth:`_safe`) and, where something lies there already, a regular file; else a :class:`RegistryError`
        saying what to move. Multi-file writes check every target before writing any; a registry this process
        cannot write is refused here too (:meth:`check_writable`), before the work that would be written."""
        self.check_writable()
        self._safe(path)
        if path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, device or socket)"
            raise RegistryError(f"{self._label(path)} is {kind} where the registry keeps a file: move it out of the "
                                "registry, then run the command again")
        return path

    def _safe(self, path: Path) -> Path:
        """``path``, refused when a link on its way leads out of the registry (a ``generators/`` folder linked
        to another registry would send writes there, under the wrong lock)."""
        check_inside(path, self.path, self._label(path))
        return path

    def _recover(self) -> None:
        """Under the lock: finish a multi-file write that was interrupted after it was committed (its journal
        names the temporary files and their targets), then remove the temporary files of killed writes."""
        journal = self.path / JOURNAL
        self._completed = False
        if journal.exists() or journal.is_symlink():
            self._completed = True
            try:
                pairs = read_yaml(journal, self._label(journal), root=self.path, limit=1 << 20)
            except RegistryError:
                pairs = None
            for pair in pairs if isinstance(pairs, list) else []:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)
                        and (pair[0] is None or isinstance(pair[0], str))):
                    continue
                target = self.path / pair[1]
                if pair[0] is None:  # a removal
                    if inside(target, self.path) and target.suffix == ".yaml" and target.is_file():
                        target.unlink()
                    continue
                tmp = self.path / pair[0]
                if (inside(tmp, self.path) and inside(target, self.path) and tmp.name.endswith(".tmp")
                        and tmp.name.startswith(".") and tmp.parent == target.parent and tmp.is_file()):
                    os.replace(tmp, target)
            journal.unlink(missing_ok=True)
        folders = [self.path]
        for folder in (p for p in self.path.iterdir() if not p.name.startswith(".")):
            if inside(folder, self.path) and folder.is_dir():
                folders.append(folder)
                gdir = folder / GENERATORS_DIR
                if inside(gdir, self.path) and gdir.is_dir():
                    folders.append(gdir)
                for sub in (REFERENCE_DIR, RECORDS_DIR):  # shipped reference sides and per-image records
                    below = folder / sub
                    if inside(below, self.path) and below.is_dir():
                        folders += [d for d in (below, *below.rglob("*")) if d.is_dir() and not d.is_symlink()
                                    and inside(d, self.path)]
        for aside in self.path.glob(f".*{REMOVING}"):  # a protocol's folder whose removal was killed midway
            if aside.is_dir() and not aside.is_symlink():
                _remove_tree(aside)
        for folder in folders:
            # every file of the registry is written under this lock: a temporary one is a killed write's
            for tmp in folder.glob(".*.tmp"):
                if tmp.name != JOURNAL and tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink(missing_ok=True)

    def _write_top(self, default: str | None) -> None:
        data = {"schema_version": SCHEMA_VERSION, "default_protocol": default}
        write_yaml(self.check_file_target(self.path / REGISTRY_FILE), data, HEADER)

    def _current_default(self) -> str | None:
        top = self.path / REGISTRY_FILE
        if not top.is_file():
            return None
        data = read_yaml(top, self._label(top), root=self.path)
        return data.get("default_protocol") if isinstance(data, Mapping) else None

    def add_protocol(self, protocol: Protocol | Combination, *, overwrite: bool = False, default: bool = False) -> Path:
        """Write ``<registry>/<name>/protocol.yaml``. An existing protocol of that name with the same digest
        is left as it is (its description too) unless ``overwrite`` is given; one with other settings is
        kept unless ``overwrite`` is given, and overwriting a protocol that has generators or is combined is
        refused (their curves would no longer match). A protocol of a read-only layer (the bundled
        registry) is never changed: the same protocol again is nothing to do, other settings are refused."""
        check_name("protocol name", protocol.name)
        known = self.protocols.get(protocol.name)
        if known is not None and known.digest == protocol.digest and not overwrite and \
                (not default or self.default_protocol == protocol.name) and _places(known) == _places(protocol):
            return self.layer_of(protocol.name) / protocol.name / PROTOCOL_FILE  # nothing to write
        with self.lock():
            pfile, lower, write, top = self._protocol_plan(protocol, overwrite=overwrite, default=default)
            if write and not overwrite and known is not None and known.digest == protocol.digest:
                protocol = dataclasses.replace(protocol, description=known.description)  # only its folders moved
            if write:
                if isinstance(protocol, Combination):  # the user registry reads alone too: its parts beside it
                    self._copy_up([p.name for p in protocol.parts])
                data = {"schema_version": SCHEMA_VERSION, "digest": protocol.digest, "protocol": protocol.to_dict()}
                write_yaml(pfile, data, HEADER)
            if top:
                current = self._current_default()
                self._write_top(protocol.name if default else current)
            if write or default:
                self._ensure_gitignore()
        self.reload()
        return pfile if write or lower is None else lower / protocol.name / PROTOCOL_FILE

    def check_protocol(self, protocol: Protocol | Combination, *, overwrite: bool = False,
                       default: bool = False) -> None:
        """What :meth:`add_protocol` would refuse, refused now and nothing written: to call before minutes of
        work that only a written protocol keeps (a reference side fitted to ship beside it)."""
        check_name("protocol name", protocol.name)
        with self.lock():
            self._protocol_plan(protocol, overwrite=overwrite, default=default)

    def _protocol_plan(self, protocol: Protocol | Combination, *, overwrite: bool, default: bool
                       ) -> tuple[Path, Path | None, bool, bool]:
        """Under the lock: (its protocol file in the written layer, the read-only layer that holds it or None,
        whether the file is written, whether ``registry.yaml`` is), after :meth:`add_protocol`'s refusals and a
        check that every file it would write can be."""
        taken = next((n for n in sorted(self.protocols) if n.lower() == protocol.name.lower() and n != protocol.name),
                     None)
        if taken is not None:  # one folder on a file system that ignores case (macOS, Windows): one would overwrite
            raise UsageError(f"protocol {taken!r} already exists (names are compared ignoring case); pick another "
                             f"name, or use {taken!r}")
        folder = self.path / protocol.name
        pfile = folder / PROTOCOL_FILE
        lower = None if pfile.is_file() else \
            next((root for root in self.below if (root / protocol.name / PROTOCOL_FILE).is_file()), None)
        write = True
        if lower is not None:
            old = self._load_protocol(lower / protocol.name / PROTOCOL_FILE, protocol.name, Problems(), lower)
            if old is not None and old.digest != protocol.digest:
                raise UsageError(f"protocol {protocol.name!r} is bundled ({lower}) with other settings "
                                 f"({'; '.join(old.differences(protocol)[:3])}); pick another name")
            write = overwrite  # the same protocol: a copy only to give it another description
        elif pfile.is_file():
            problems = Problems()
            old = self._load_protocol(pfile, protocol.name, problems)
            if old is not None and old.digest == protocol.digest and not overwrite:
                # the same protocol: its record (and description) stays as it is, but for where its own
                # reference folders now are (a path is outside the digest: moved folders are the same protocol)
                write = _places(old) != _places(protocol)
            if old is not None and old.digest != protocol.digest:
                if not overwrite:
                    raise UsageError(f"protocol {protocol.name!r} already exists with other settings "
                                     f"({'; '.join(old.differences(protocol)[:3])}); pick another name"
                                     + (", or replace it with --overwrite" if isinstance(protocol, Combination)
                                        else ""))
                if (folder / GENERATORS_DIR).is_dir() and any((folder / GENERATORS_DIR).glob("*.yaml")):
                    raise UsageError(f"protocol {protocol.name!r} has enrolled generators; their curves would "
                                     "no longer match a changed protocol: create a new protocol instead")
                if self.combinations_of(protocol.name):
                    raise UsageError(f"protocol {protocol.name!r} is combined in "
                                     f"{', '.join(self.combinations_of(protocol.name))}; changing it would "
                                     "break them: create a new protocol instead")
        top = default or (write and not (self.path / REGISTRY_FILE).is_file())
        for target in [pfile] * write + [self.path / REGISTRY_FILE] * top:  # both writable, or neither written
            self.check_file_target(target)
        return pfile, lower, write, top

    def _copy_up(self, names: Sequence[str]) -> list[Path]:
        """Under the lock: the records of protocols ``names`` (a combination's parts with it) that only a
        read-only layer holds, copied into the written layer, so that what is written beside them there
        (generators, calibration, a reference side) is read against them even when the user registry is
        opened alone. Returns the files written."""
        written = []
        for name in names:
            proto = self.protocol(name)
            if isinstance(proto, Combination):
                written += self._copy_up([p.name for p in proto.parts])
            target = self.path / name / PROTOCOL_FILE
            if target.is_file():
                continue
            lower = next((root for root in self.below if (root / name / PROTOCOL_FILE).is_file()), None)
            if lower is None:
                continue
            source = lower / name / PROTOCOL_FILE
            write_yaml(self._safe(target), read_yaml(source, self._label(source), root=lower), HEADER)
            written.append(target)
        if written and not (self.path / REGISTRY_FILE).is_file():
            self._write_top(None)  # the default stays the bundled registry's
        if written:
            self._ensure_gitignore()
        return written

    def set_default(self, protocol_name: str | None) -> None:
        if protocol_name is not None:
            self.protocol(protocol_name)
        with self.lock():
            self._write_top(protocol_name)
        self.reload()

    def protocol_contents(self, protocol_name: str) -> dict[str, Any]:
        """What removing ``protocol_name`` would remove (:meth:`remove_protocol`), after its refusals: the
        folder, and how many generators, instances and files (of how many bytes) lie in it."""
        check_name("protocol name", protocol_name)
        proto = self.protocol(protocol_name)
        lower = next((root for root in self.below if (root / protocol_name / PROTOCOL_FILE).is_file()), None)
        if lower is not None:
            mine = [g for g, e in self.generators.get(protocol_name, {}).items()
                    if (self.path / protocol_name / GENERATORS_DIR / f"{g}.yaml").is_file()]
            raise UsageError(f"protocol {protocol_name!r} comes with forensics (the bundled registry at {lower}, "
                             "read-only) and cannot be removed"
                             + (f"; remove what you enrolled under it with `forensics registry remove GENERATOR "
                                f"--protocol {protocol_name}` ({', '.join(mine)})" if mine else ""))
        combos = self.combinations_of(protocol_name)
        if combos:
            raise UsageError(f"protocol {protocol_name!r} is combined in {', '.join(combos)}: remove "
                             + ("that combination" if len(combos) == 1 else "those combinations")
                             + " first (`forensics protocol remove NAME`)")
        folder = self._safe(self.path / protocol_name)
        files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
        generators = self.generators.get(protocol_name, {}) if not isinstance(proto, Combination) else {}
        return {"protocol": protocol_name, "folder": folder, "combination": isinstance(proto, Combination),
                "generators": sorted(generators), "instances": sum(len(e.instances) for e in generators.values()),
                "files": len(files), "bytes": sum(p.stat().st_size for p in files),
                "default": self._current_default() == protocol_name}

    def remove_protocol(self, protocol_name: str) -> dict[str, Any]:
        """Remove a protocol the written layer holds, with everything kept beside it there (its enrolled
        generators, calibration, per-image records, shipped reference side); returns
        :meth:`protocol_contents`. Refused for a protocol of a read-only layer (the bundled registry) and for
        one a combination combines (remove the combination first). A protocol that was the written layer's
        default leaves no default there (a layer below, if any, decides it again). The folder goes at once:
        renamed aside under the lock, then deleted; a removal killed between the two is finished by the next
        write. Files a reference set of the protocol names outside the registry are never touched."""
        with self.lock():
            found = self.protocol_contents(protocol_name)
            self.check_writable()
            if found["default"]:  # first: killed after it, the protocol stays, not the default
                self._write_top(None)
            aside = self.path / f".{protocol_name}{REMOVING}"
            if aside.exists() or aside.is_symlink():
                _remove_tree(aside)
            os.replace(found["folder"], aside)
            _remove_tree(aside)
        self.reload()
        return found

    def _ensure_gitignore(self) -> None:
        gi = self.path / ".gitignore"
        if not gi.exists():
            write_text_atomic(gi, "# written by forensics: the write lock and interrupted temporary files\n"
                                  ".lock\n.*.tmp\n")

    def _read_entry(self, protocol: Protocol, gfile: Path, root: Path | None = None) -> GeneratorEntry | None:
        root = self.path if root is None else root
        check_inside(gfile, root, self._label(gfile))
        if not gfile.is_file():
            return None
        problems = Problems()
        entry = parse_generator(read_yaml(gfile, self._label(gfile), root=root), self._label(gfile), gfile.stem,
                                 protocol, problems)
        if problems:
            raise RegistryError(problems[0] + " (fix the file before writing to it)")
        return entry

    def _entry_below(self, protocol: Protocol, generator: str) -> tuple[Path, GeneratorEntry] | None:
        """``generator``'s file under ``protocol`` in the nearest read-only layer that has one, read now."""
        for root in self.below:
            gfile = root / protocol.name / GENERATORS_DIR / f"{generator}.yaml"
            if gfile.is_file():
                entry = self._read_entry(protocol, gfile, root)
                if entry is not None:
                    return root, entry
        return None

    def _generator_files(self, protocol: Protocol) -> dict[str, tuple[Path, Path]]:
        """Every generator file under ``protocol`` that reads see (name → (file, its layer)): the nearest
        layer's where two hold one."""
        found: dict[str, tuple[Path, Path]] = {}
        for root in self.layers:
            gdir = root / protocol.name / GENERATORS_DIR
            if root != self.path and not gdir.is_dir():
                continue
            if gdir.is_dir():
                for gfile in sorted(gdir.glob("*.yaml")):
                    found.setdefault(gfile.stem, (gfile, root))
        return found

    def _generator_file(self, protocol_name: str, generator: str) -> Path:
        check_name("generator name", generator)
        check_name("protocol name", protocol_name)
        return self._safe(self.path / protocol_name / GENERATORS_DIR / f"{generator}.yaml")

    def check_enrolment(self, protocol_name: str, generator: str) -> None:
        """What :meth:`enroll` refuses before anything is computed: an unknown protocol, a bad generator name,
        a generators folder that is a link, a registry that cannot be written. Call it before embedding
        (minutes) to fail at once."""
        proto = self.protocol(protocol_name)
        check_name("generator name", generator)
        for part in proto.parts:
            self._generator_file(part.name, generator)
        self.check_writable()

    def enroll(self, protocol_name: str, generator: str, fingerprints: Sequence[Fingerprint],
               provenance: Mapping[str, Any], *, description: str = "", ids: Sequence[str] | None = None,
               records: Sequence[Mapping[str, Sequence[Any]]] | None = None, family: str | None = None,
               image_digests: Sequence[Any] | None = None,
               references: Mapping[str, str | Mapping[str, str]] | None = None) -> list[str]:
        """Add ``fingerprints`` as new instances of ``generator`` under a protocol; returns their ids.

        ``provenance`` is recorded with every instance, completed with ``created`` (UTC), ``by``,
        ``tool_version`` and the batch index; ``input_sha256`` and ``n_images`` describe the input the
        fingerprints were computed from (null when unknown). Instance ids default to the first hex
        digits of ``input_sha256`` and the batch index, so enrolling the same images twice is refused.

        Under a combination each fingerprint is cut into its protocols' curves and enrolled under every
        one of them, all or nothing: a protocol that would refuse (say, the images are already there)
        stops the enrolment before any file is written.

        ``records``: per fingerprint, {condition: the statistic's per-image records of its batch under that
        post-processing condition, one array per layer} (:meth:`forensics.engine.Engine.records`); each is
        written to ``<protocol>/records/<generator>/<id>/<condition>.npy`` and its digest recorded with the
        instance, so that queries of any size and condition can be matched against it
        (:mod:`forensics.registry.records`). The files are written before the generator files that name them.
        ``references``: per condition, what T and P_n were put through when its records were scored — one name
        for every protocol, or a name per protocol (what scored them: :func:`forensics.engine.fitted_references`);
        recorded in ``processing.yaml`` for a condition the registry keeps no records under yet, and refused
        where it differs from what the registry's records under it were scored against. Default: the
        registry's record (:meth:`record_reference`).

        ``family``: the model the generator shares with other enrolled generators (:meth:`set_family`), set
        (or replaced) on its file with the new instances; None leaves its file's family as it is.

        ``image_digests``: per fingerprint, the digests of its batch's images
        (:func:`forensics.io.hashing.image_digests`), written beside its records and their digest recorded in
        its provenance (``image_digests``).
        """
        proto = self.protocol(protocol_name)
        self.check_enrolment(protocol_name, generator)
        if family is not None:
            check_family(family)
            self._check_family_agrees(protocol_name, generator, family)
        fingerprints = list(fingerprints)
        if not fingerprints:
            raise UsageError("nothing to enrol: no fingerprints")
        for fp in fingerprints:
            if fp.protocol_digest != proto.digest:
                raise ProtocolMismatch(f"a fingerprint was computed under protocol {short(fp.protocol_digest)}, "
                                       f"not {protocol_name!r} ({short(proto.digest)})")
            if len(fp.values) != len(proto.layers):
                raise UsageError(f"a fingerprint has {len(fp.values)} values; protocol {protocol_name!r} has "
                                 f"{len(proto.layers)} layers")
        if ids is not None and len(ids) != len(fingerprints):
            raise UsageError("one id per fingerprint is needed")
        if image_digests is not None and len(image_digests) != len(fingerprints):
            raise UsageError("image digests need one array per fingerprint")
        if records is not None and (len(records) != len(fingerprints) or any(
                len(layers) != len(proto.layers) for r in records for layers in r.values())):
            raise UsageError("records need one mapping per fingerprint, one array per layer of the protocol")
        base = {"created": utc_now(), "by": user(), "tool_version": tool_version(),
                "input_sha256": None, "n_images": None}
        base.update(dict(provenance))
        if isinstance(proto, Combination):
            base["combination"] = proto.name
        if base["input_sha256"] is not None and not is_digest(base["input_sha256"]):
            raise UsageError(f"input_sha256 must be a sha256 digest, got {base['input_sha256']!r}")
        prefix = short(base["input_sha256"], 12) if base["input_sha256"] else uuid.uuid4().hex[:12]
        new_ids = list(ids) if ids is not None else [f"{prefix}-{j}" for j in range(len(fingerprints))]
        for iid in new_ids:
            check_name("instance id", iid)
        kept = [[{c: as_records(list(layers[a:b]), c) for c, layers in r.items()} for r in records]
                if records is not None else None for _, a, b in part_spans(proto)]
        with self.lock():
            writes = [self._add_instances(part, generator, [fp.values[a:b] for fp in fingerprints], base, new_ids,
                                          description, complete=len(proto.parts) > 1, family=family,
                                          records=None if arrays is None else
                                          [{c: sha256_array(x) for c, x in r.items()} for r in arrays],
                                          image_digests=None if image_digests is None else
                                          [sha256_array(d) for d in image_digests])
                      for (part, a, b), arrays in zip(part_spans(proto), kept)]
            processing = self._processing_writes(
                [part.name for (part, _, _), (_, entry) in zip(part_spans(proto), writes) if entry is not None],
                list(records[0]) if records else [], references)
            for path, _ in [(gfile, None) for gfile, entry in writes if entry is not None] + processing:
                self.check_file_target(path)  # every file it would write can be, before any is
            todo = [(gfile, entry) for gfile, entry in writes if entry is not None]
            if not todo and getattr(self, "_completed", False):  # the interrupted enrolment, completed just now
                self._ensure_gitignore()
                todo = None
            elif not todo:  # every part holds them already: the same images enrolled twice
                raise UsageError(f"{generator} already has the instance(s) {', '.join(new_ids)} under every protocol "
                                 f"of {protocol_name} (the same images enrolled twice?); remove them first with "
                                 "`forensics registry remove`")
            new = [part.name for (part, _, _), (_, entry) in zip(part_spans(proto), writes) if entry is not None]
            try:
                for (part, _, _), (gfile, entry), arrays in zip(part_spans(proto), writes, kept):
                    if entry is not None and arrays is not None:  # the files first: a generator file never names
                        for iid, by_condition in zip(new_ids, arrays):  # a records file that is not there
                            self._write_records(part.name, generator, iid, by_condition)
                    if entry is not None and image_digests is not None:
                        for iid, digests in zip(new_ids, image_digests):
                            self._write_digests(part.name, generator, iid, digests)
                if todo is not None:
                    self._copy_up([part.name for part in proto.parts])  # the protocols they are read against
                    self._write_all([(gfile, entry.to_dict()) for gfile, entry in todo] + processing)
            except BaseException:  # a full disk, an interrupt: no records are left that no generator file names
                self._drop_unnamed(new, generator, new_ids)
                raise
            self._ensure_gitignore()
        self.reload()
        return new_ids

    def _write_all(self, files: Sequence[tuple[Path, Mapping[str, Any] | None]],
                   arrays: Sequence[tuple[Path, Any]] = ()) -> None:
        """Write several registry files all or nothing (under the lock): each to a temporary file beside it;
        then a journal of temporary → final names, committed by an atomic rename; then the renames; then the
        journal is removed. A write killed before the journal is committed changes nothing (its temporary
        files are removed by the next write); one killed after is completed by the next write. A file whose
        data is None is removed. ``arrays``: records files (:func:`as_records` arrays) written with them."""
        for path, _ in [*files, *arrays]:  # nothing is written where one target cannot be
            self.check_file_target(path)
        if len(files) == 1 and not arrays:
            path, data = files[0]
            if data is None:
                path.unlink()
            else:
                write_yaml(path, data)
            return
        from forensics.registry.schema import dump_yaml

        pairs = []
        try:
            for path, array in arrays:
                tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
                path.parent.mkdir(parents=True, exist_ok=True)
                pairs.append((tmp, path))
                write_records(tmp, array)
            for path, data in files:
                if data is None:
                    pairs.append((None, path))
                    continue
                text = dump_yaml(data).encode("utf-8")  # before the file exists: a failure leaves none behind
                tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
                path.parent.mkdir(parents=True, exist_ok=True)
                pairs.append((tmp, path))  # before it exists: a write that fails half-way (a full disk) is removed
                with open(tmp, "xb") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                _pause("REGISTRY_TEST_PAUSE_PARTS")
        except BaseException:
            for tmp, _ in pairs:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
            raise
        self._commit(pairs)

    def _commit(self, pairs: Sequence[tuple[Path | None, Path]]) -> None:
        """Under the lock: put the temporary files of ``pairs`` (temporary → final; None: remove the final one)
        in place all or nothing — a journal of the pairs committed by an atomic rename, then the renames, then
        the journal removed. Killed before the commit, the temporaries are removed by the next write; after it,
        the write is completed when the registry is next opened (:meth:`_finish_interrupted`)."""
        from forensics.registry.schema import dump_yaml

        try:
            write_text_atomic(self.path / JOURNAL, "# temporary file → registry file; completed when the registry "
                                                   "is next opened\n" + dump_yaml([[None if t is None else
                                                                                   str(t.relative_to(self.path)),
                                                                                   str(p.relative_to(self.path))]
                                                                                  for t, p in pairs]))
        except BaseException:
            for tmp, _ in pairs:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
            raise
        for i, (tmp, path) in enumerate(pairs):
            if tmp is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(tmp, path)
            if i == 0:
                _pause("REGISTRY_TEST_PAUSE_RENAMES")
        (self.path / JOURNAL).unlink(missing_ok=True)

    def ship_reference(self, protocol_name: str, file_name: str, write: Any) -> Path:
        """Store a fitted reference side beside ``protocol_name`` as ``reference/<file_name>``, with its digest
        in the folder's manifest, all or nothing: ``write(path)`` writes the file to a temporary name, the
        manifest is written to another, and both are committed together through the journal (:meth:`_commit`),
        so that no state has a shipped file without its digest or a digest without its file."""
        folder = self.writable_reference_dir(protocol_name)
        with self.lock():
            folder.mkdir(parents=True, exist_ok=True)
            target = self.check_file_target(folder / file_name)
            manifest = self.check_file_target(folder / shipped.MANIFEST)
            tag = uuid.uuid4().hex[:12]
            tmp, mtmp = folder / f".{file_name}.{tag}.tmp", folder / f".{shipped.MANIFEST}.{tag}.tmp"
            try:
                write(tmp)
                text = shipped.manifest_text(folder, {file_name: shipped.file_sha256(tmp)})
                with open(mtmp, "xb") as f:
                    f.write(text.encode("ascii"))
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(mtmp, 0o644)
            except BaseException:
                tmp.unlink(missing_ok=True)
                mtmp.unlink(missing_ok=True)
                raise
            _pause("REGISTRY_TEST_PAUSE_PARTS")
            self._commit([(tmp, target), (mtmp, manifest)])
        self.reload()
        return target

    def _add_instances(self, proto: Protocol, generator: str, curves: Sequence[tuple[float | None, ...]],
                       base: Mapping[str, Any], new_ids: Sequence[str], description: str,
                       complete: bool = False, records: Sequence[Mapping[str, str]] | None = None,
                       family: str | None = None, image_digests: Sequence[str] | None = None
                       ) -> tuple[Path, GeneratorEntry | None]:
        """``generator``'s file under ``proto`` with the new instances added (not yet written); refuses
        a name that differs only in case, a curve already enrolled, an id already taken. Under the lock.
        With ``complete`` (a combination's part), instances already there with the same id, curve and input
        are no error: the entry comes back None when the part holds them all (an interrupted enrolment
        is being completed)."""
        gfile = self._generator_file(proto.name, generator)
        where = f" under {proto.name}"
        files = self._generator_files(proto)  # this layer's and those below it
        for stem in files:
            if stem.lower() == generator.lower() and stem != generator:
                raise UsageError(f"generator {stem!r} already exists{where} (names are compared ignoring "
                                 f"case); enrol under {stem!r}")
        # a generator file only a read-only layer holds is copied into this one with the new instances
        below = None if gfile.is_file() else self._entry_below(proto, generator)
        entry = self._read_entry(proto, gfile) or (below[1] if below else None) or \
            GeneratorEntry(generator, description, proto.digest, [])
        elsewhere: dict[tuple, str] = {}
        for stem, (other, root) in sorted(files.items()):
            if stem != generator and other.suffix == ".yaml":
                got = self._read_entry(proto, other, root)
                for inst in got.instances if got is not None else []:
                    elsewhere[inst.values] = f"{got.name}/{inst.id}"
        for values in curves:
            if values in elsewhere:
                raise UsageError(f"this curve is already enrolled as {elsewhere[values]}{where} (the same images "
                                 "under another name?)")
        if complete and entry.instances:
            have = {i.id: i for i in entry.instances}
            same = [iid in have and have[iid].values == tuple(values)
                    and have[iid].provenance.get("input_sha256") == base.get("input_sha256")
                    and base.get("input_sha256") is not None for iid, values in zip(new_ids, curves)]
            if all(same):
                return gfile, None
        if description:
            entry.description = description
        if family is not None:
            entry.family = family
        existing = {i.id for i in entry.instances}
        existing_curves = {i.values: i.id for i in entry.instances}
        for iid, values in zip(new_ids, curves):
            if iid in existing:
                raise UsageError(f"{generator} already has an instance {iid!r}{where} (the same images enrolled "
                                 f"twice?); remove it first with `forensics registry remove`")
            if all(v is None for v in values):  # every such curve is the same: the registry would refuse the second
                raise UsageError(f"the curve of {generator}/{iid} is undefined at every layer{where}: the statistic "
                                 "scored no layer of that batch, so there is nothing to match it by (`forensics "
                                 "memorization` on the batch says why); enrol images it can score")
            if values in existing_curves:
                twice = " (two batches of the input give one curve: the same images twice?)" \
                    if existing_curves[values] in new_ids else ""
                raise UsageError(f"{generator} already has this curve as instance {existing_curves[values]!r}{where}"
                                 f"{twice}")
            existing.add(iid)
            existing_curves[values] = iid  # two new batches of one curve would make the registry invalid too
        for j, (iid, values) in enumerate(zip(new_ids, curves)):
            prov = dict(base)
            if len(curves) > 1:
                prov["batch"] = j
            if image_digests is not None:
                prov["image_digests"] = image_digests[j]
            entry.instances.append(Instance(iid, tuple(values), prov, {} if records is None else dict(records[j])))
        return gfile, entry

    def remove(self, protocol_name: str, generator: str, instance: str | None = None) -> list[str]:
        """Remove a generator (its file) or one of its instances, with their records and image digests; returns
        the ids removed. Under a combination, from every one of its protocols that holds it. Only the written
        layer changes: a generator a read-only layer (the bundled registry) holds is refused, whole or by
        instance, unless the instance is in this layer's copy of its file."""
        check_name("generator name", generator)
        if instance is not None:
            check_name("instance id", instance)
        proto = self.protocol(protocol_name)
        for part in proto.parts:
            self._generator_file(part.name, generator)
        with self.lock():
            removed: list[str] = []
            held: list[str] = []
            found = False
            changes: list[tuple[Path, dict[str, Any] | None]] = []
            for part in proto.parts:
                gfile = self._generator_file(part.name, generator)
                entry = self._read_entry(part, gfile)
                below = self._entry_below(part, generator)
                if below is not None and (entry is None or instance is None):
                    if instance is not None and instance not in [i.id for i in below[1].instances]:
                        found = True
                        held += [i.id for i in below[1].instances]
                        continue
                    raise UsageError(
                        f"{generator} under {part.name} comes with forensics (the bundled registry at {below[0]}, "
                        "read-only), and your user registry cannot hide it: "
                        + ("remove the instances enrolled here with --instance, then drop the copy of its file with "
                           "`forensics registry refresh`" if entry else
                           f"to leave it out, copy that folder and pass the copy with --registry (or set {ENV})"))
                if entry is None:
                    continue
                found = True
                held += [i.id for i in entry.instances]
                if not isinstance(proto, Combination):  # an instance a combination joins goes from all its parts
                    self._check_uncombined(part, generator, [i for i in entry.instances
                                                             if instance is None or i.id == instance])
                if instance is None:
                    removed += [i.id for i in entry.instances]
                    changes.append((gfile, None))
                    continue
                keep = [i for i in entry.instances if i.id != instance]
                if len(keep) == len(entry.instances):
                    continue
                removed.append(instance)
                if keep:
                    entry.instances = keep
                    changes.append((gfile, entry.to_dict()))
                else:
                    changes.append((gfile, None))
            if not found:
                known = ", ".join(sorted(self.generators.get(protocol_name, {}))) or "none"
                raise UsageError(f"no generator {generator!r} under protocol {protocol_name!r}; known: {known}")
            if instance is not None and not removed:
                known = ", ".join(dict.fromkeys(held))
                raise UsageError(f"{generator} has no instance {instance!r}; its instances: {known}")
            for part in proto.parts:  # a linked records folder is refused before anything is written
                for iid in dict.fromkeys(removed):
                    self._safe(records_path(self.path, part.name, generator, iid, NONE).parent)
            if changes:  # under a combination, from every part or none
                self._write_all(changes)
            for part in proto.parts:  # after the generator files: none of them names these files any more
                for iid in dict.fromkeys(removed):
                    self._remove_instance_files(part.name, generator, iid)
        self.reload()
        return list(dict.fromkeys(removed))

    def _check_uncombined(self, part: Protocol, generator: str, instances: Sequence[Instance]) -> None:
        """Refuse to remove, under ``part`` alone, an instance enrolled under a combination of it that another
        of its protocols still holds: the combination would name an instance missing under a part, a problem
        that keeps the registry from opening."""
        for inst in instances:
            combo = self.protocols.get(inst.provenance.get("combination"))
            if not isinstance(combo, Combination) or part.name not in [p.name for p in combo.parts]:
                continue
            others = [p.name for p in combo.parts
                      if p.name != part.name and generator in self.generators.get(p.name, {})
                      and any(i.id == inst.id for i in self.generators[p.name][generator].instances)]
            if others:
                raise UsageError(f"{generator}/{inst.id} was enrolled under the combination {combo.name}, which reads "
                                 f"it from {', '.join(others)} too: removed under {part.name} alone, it would leave "
                                 f"the combination broken; remove it with --protocol {combo.name} (from each of its "
                                 "protocols)")

    def _drop_unnamed(self, protocols: Sequence[str], generator: str, ids: Sequence[str]) -> None:
        """After a failed enrolment, under the lock: remove the per-image files of instances ``ids`` that the
        generator's file under each of ``protocols`` does not name (they were written for it, then it was not).
        A write committed by its journal is left for the next opening to complete."""
        if (self.path / JOURNAL).exists():
            return
        for name in protocols:
            try:
                entry = self._read_entry(self.protocols[name], self._generator_file(name, generator))
            except (ForensicsError, OSError):
                continue  # unreadable now: what it names is not known, nothing is removed
            named = {i.id for i in entry.instances} if entry is not None else set()
            for iid in ids:
                if iid not in named:
                    with contextlib.suppress(OSError):
                        self._remove_instance_files(name, generator, iid)
            with contextlib.suppress(OSError):  # made for them alone: left empty
                (self.path / name / RECORDS_DIR).rmdir()

    def _remove_instance_files(self, protocol_name: str, generator: str, instance: str) -> None:
        """Remove an instance's per-image files (records, image digests) from the written layer, and its
        generator's records folder when that is left empty; a file of another kind there is left as it is."""
        folder = self._safe(records_path(self.path, protocol_name, generator, instance, NONE).parent)
        if not folder.is_dir() or folder.is_symlink():
            return
        for f in folder.glob("*.npy"):
            if f.is_file() and not f.is_symlink():
                f.unlink()
        for empty in (folder, folder.parent):
            with contextlib.suppress(OSError):  # not empty: something else lies there
                empty.rmdir()

    def refresh(self, protocol_name: str | None = None, generator: str | None = None) -> list[dict[str, Any]]:
        """Bring the written layer's copies of generator files up to date with the read-only layers' files they
        hide. A copy is made when instances or records are added over the bundled registry; a later release
        that changes the bundled file (instances added, curves or records recomputed) is hidden by it
        (:meth:`_check_copy` warns). Each copy becomes the file below as it is now, plus what the copy added:
        instances enrolled here, and records kept here under conditions the file below does not keep, for
        instances whose curve is unchanged (for one whose curve changed they were made by another pipeline
        and are dropped). A records file of this layer that would hide the one the file below names is
        removed. A copy that adds nothing is removed. A file that shares no instance with the one below is
        not a copy (a generator enrolled here under a name a release has taken since) and is left as it is.
        ``protocol_name`` None: every protocol; a combination means its protocols; ``generator`` None: every
        generator. Returns one dict per file looked at: protocol, generator, ``action`` (``updated``,
        ``removed``, ``current`` or ``not-a-copy``), ``from_below`` (instances new or changed below),
        ``kept`` (instances enrolled here), ``kept_records`` and ``dropped_records`` (``instance/condition``)."""
        if generator is not None:
            check_name("generator name", generator)
        names = [protocol_name] if protocol_name is not None else sorted(self.protocols)
        parts: list[Protocol] = []
        for name in names:
            parts += [p for p in self.protocol(name).parts if p not in parts]
        out: list[dict[str, Any]] = []
        copies = [(part, gfile) for part in parts for gfile in self._copies(part)
                  if generator is None or gfile.stem == generator]
        if generator is not None and not copies:
            raise UsageError(f"{generator!r} has no copy of a bundled generator file in {self.path} under "
                             f"{' or '.join(p.name for p in parts)}: nothing to refresh")
        if not copies:
            return out
        with self.lock():
            changes: list[tuple[Path, dict[str, Any] | None]] = []
            stale: list[Path] = []
            for part, gfile in copies:
                below = self._entry_below(part, gfile.stem)
                copy = self._read_entry(part, self._safe(gfile)) if below is not None else None
                if copy is None:
                    continue
                entry, row, drop = self._rebase(part, copy, below[1])
                out.append(row)
                if row["action"] in ("updated", "removed"):
                    changes.append((gfile, None if row["action"] == "removed" else entry.to_dict()))
                    stale += drop
            if changes:
                self._write_all(changes)
            for path in stale:  # after the generator files: none of them names these any more
                path.unlink(missing_ok=True)
        self.reload()
        return out

    def _copies(self, part: Protocol) -> list[Path]:
        """The written layer's generator files under ``part`` that a read-only layer's file of the same name lies
        under (copies, or a generator enrolled here under a name the bundled registry took since)."""
        gdir = self.path / part.name / GENERATORS_DIR
        if not gdir.is_dir() or gdir.is_symlink():
            return []
        return [f for f in sorted(gdir.glob("*.y*ml"))
                if any((root / part.name / GENERATORS_DIR / f.name).is_file() for root in self.below)]

    def _rebase(self, part: Protocol, copy: GeneratorEntry, below: GeneratorEntry
                ) -> tuple[GeneratorEntry, dict[str, Any], list[Path]]:
        """:meth:`refresh` for one copy: the entry to write, its row, and this layer's records files to remove."""
        mine = {i.id: i for i in copy.instances}
        theirs = {i.id for i in below.instances}
        row: dict[str, Any] = {"protocol": part.name, "generator": copy.name, "action": "current", "from_below": [],
                               "kept": [i.id for i in copy.instances if i.id not in theirs],
                               "kept_records": [], "dropped_records": []}
        drop: list[Path] = []
        if not set(mine) & theirs:  # a generator enrolled here under a name the file below has taken since
            row["action"] = "not-a-copy"
            return copy, row, drop
        for inst in below.instances:
            had = mine.get(inst.id)
            if had is None or had.values != inst.values or any(had.records.get(c) != d for c, d in inst.records.items()):
                row["from_below"].append(inst.id)
            if had is None:
                continue
            if had.values == inst.values and inst.provenance.get("image_digests") is None \
                    and had.provenance.get("image_digests") is not None:  # kept here since: its file is this layer's
                inst.provenance["image_digests"] = had.provenance["image_digests"]
            for c, d in had.records.items():
                here = records_path(self.path, part.name, copy.name, inst.id, c)
                if c not in inst.records and had.values == inst.values:
                    inst.records[c] = d
                    row["kept_records"].append(f"{inst.id}/{c}")
                elif inst.records.get(c) != d:  # the file below wins; one of this layer's would hide it
                    row["dropped_records"].append(f"{inst.id}/{c}")
                    if here.is_file():
                        drop.append(self._safe(here))
        # a family set or cleared here (`registry family`) is the user's choice, kept over the bundled file's; a
        # copy that names none and says nothing of it was made before the bundled file named one: it takes that
        own_family = copy.family != below.family and (copy.family is not None or copy.family_cleared)
        own_description = copy.description not in ("", below.description)  # `registry enroll --description`
        entry = GeneratorEntry(below.name, copy.description if own_description else below.description,
                               below.protocol_digest,
                               [*below.instances, *(i for i in copy.instances if i.id not in theirs)],
                               copy.family if own_family else below.family, own_family and copy.family_cleared)
        if not row["kept"] and not row["kept_records"] and not own_family and not own_description:
            row["action"] = "removed"
        elif entry.to_dict() != copy.to_dict():
            row["action"] = "updated"
        return entry, row, drop

    def set_family(self, protocol_name: str, generator: str, family: str | None) -> list[str]:
        """Record (or, with None, clear) the model ``generator`` shares with other enrolled generators under a
        protocol, without enrolling anything: under a combination, in the file of every protocol of it that
        holds the generator, all or nothing. Returns the protocols whose file changed (none when each already
        records ``family``). Only the written layer changes: a generator file only a read-only layer (the bundled
        registry) holds is copied into it with the new family, as :meth:`enroll` copies it with new instances
        (nothing is copied where the family is already so). A file whose only problem is its family is rewritten
        with the new one."""
        check_name("generator name", generator)
        if family is not None:
            check_family(family)
        proto = self.protocol(protocol_name)
        for part in proto.parts:
            self._generator_file(part.name, generator)
        self._check_family_agrees(protocol_name, generator, family)
        with self.lock():
            changes: list[tuple[Path, dict[str, Any]]] = []
            changed: list[str] = []
            found = False
            copied: list[str] = []
            for part in proto.parts:
                gfile = self._generator_file(part.name, generator)
                if not gfile.is_file():
                    below = self._entry_below(part, generator) if not gfile.is_symlink() else None
                    if below is None:
                        continue
                    found = True
                    entry = below[1]
                    if entry.family == family:
                        continue  # already so: nothing is copied
                    # as an enrolment does: the bundled file is copied into this layer, with the new family
                    entry.family, entry.family_cleared = family, family is None  # (cleared: kept so by refresh)
                    changes.append((gfile, entry.to_dict()))
                    changed.append(part.name)
                    copied.append(part.name)
                    continue
                label = self._label(gfile)
                problems = Problems()
                data = read_yaml(gfile, label, root=self.path)
                entry = parse_generator(data, label, gfile.stem, part, problems)
                others = [p for p in problems if not Problems.is_about(p, label, "family")]
                if others or entry is None:
                    raise RegistryError((others or problems or [f"{label}: unreadable"])[0]
                                        + " (fix the file before writing to it)")
                found = True
                below = self._entry_below(part, generator)
                cleared = family is None and below is not None and below[1].family is not None  # over the bundled
                if entry.family == family and ("family" in data) == (family is not None or cleared) \
                        and (not cleared or data["family"] is None):
                    continue  # already so (a bad value, or a needless null, reads as None: written again)
                entry.family, entry.family_cleared = family, cleared
                changes.append((gfile, entry.to_dict()))
                changed.append(part.name)
            if not found:
                known = ", ".join(sorted(self.generators.get(protocol_name, {}))) or "none"
                raise UsageError(f"no generator {generator!r} under protocol {protocol_name!r}; known: {known}")
            if changes:
                self._copy_up(copied)  # the protocols a copied file is read against
                self._write_all(changes)
        self.reload()
        return changed

    def _check_family_agrees(self, protocol_name: str, generator: str, family: str | None) -> None:
        """Refuse ``family`` for ``generator`` under the plain protocol ``protocol_name`` where a combination of
        it joins the generator's instances with another protocol's that records another family: two families
        under one combination are a problem every command but `registry family` stops at."""
        if family is None or isinstance(self.protocol(protocol_name), Combination):
            return
        for combo in self.combinations_of(protocol_name):  # the family it joins the other parts' under
            others = {p.name: self.generators.get(p.name, {})[generator].family for p in self.protocols[combo].parts
                      if p.name != protocol_name and generator in self.generators.get(p.name, {})}
            clash = {p: f for p, f in others.items() if f is not None and f != family}
            if generator in self.generators.get(combo, {}) and clash:
                raise UsageError(f"{generator} is read under the combination {combo}, where "
                                 + ", ".join(f"{p} records family {f}" for p, f in clash.items())
                                 + f": set the family of every protocol with --protocol {combo}")

    def save_calibration(self, protocol_name: str, calibrations: Mapping[str, Mapping[str, Any]]) -> Path:
        """Record open-set calibrations (matcher name → :meth:`Matcher.describe`'s ``open_set`` plus options).
        The recorded calibration of a matcher not in ``calibrations`` (``registry calibrate --matcher alpha``)
        is kept where it was made on the same references, as read now under the lock; one made on others is
        dropped, as every matcher's would be recalibrated."""
        self.protocol(protocol_name)
        cfile = self.path / protocol_name / CALIBRATION_FILE
        with self.lock():
            matchers = {k: dict(v) for k, v in calibrations.items()}
            digests = {v.get("references_digest") for v in matchers.values()}
            now = Registry(self.path, self.below)  # as another process may have left it while these were chosen
            now._holding = True
            now._load(create=True)
            if protocol_name in now.protocols and digests - {None, references_digest(now.enrolled(protocol_name))}:
                raise RegistryError(f"the instances of {protocol_name} changed while it was calibrated (enrolled or "
                                    "removed by another command): these thresholds would be stale, and nothing was "
                                    f"written; run `forensics registry calibrate -p {protocol_name}` again")
            self._copy_up([protocol_name])  # a calibration is read beside its protocol's record
            if len(digests) == 1 and None not in digests:
                for name, cal in self._recorded_calibrations(protocol_name).items():
                    if name not in matchers and cal.get("references_digest") in digests:
                        matchers[name] = cal
            data = {"schema_version": SCHEMA_VERSION, "created": utc_now(), "tool_version": tool_version(),
                    "matchers": dict(sorted(matchers.items()))}
            write_yaml(self.check_file_target(cfile), data,
                       "# open-set thresholds, recorded by `forensics registry calibrate`\n")
        self.reload()
        return cfile

    def _recorded_calibrations(self, protocol_name: str) -> dict[str, dict[str, Any]]:
        """The matchers' calibrations of ``protocol_name`` as its nearest calibration file holds them now (a
        matcher with a problem left out; an unreadable file: none)."""
        for root in self.layers:
            cfile = root / protocol_name / CALIBRATION_FILE
            if _there(cfile):
                try:
                    return parse_calibration(read_yaml(cfile, self._label(cfile), root=root), self._label(cfile),
                                             Problems()) or {}
                except RegistryError:
                    return {}
        return {}

    def copy_to(self, target: Path) -> None:
        """Copy the registry's files to ``target`` (tests, snapshots): of layers, what reads see, as one folder."""
        for root in reversed(self.layers):
            if root.is_dir():
                shutil.copytree(root, target, ignore=shutil.ignore_patterns(LOCK_FILE, ".*.tmp"), dirs_exist_ok=True)
        for name, layers in self.processing.items():  # each layer's record of its own records' processing
            if len(layers) > 1:
                write_yaml(processing_path(Path(target), name), {"schema_version": SCHEMA_VERSION,
                                                                 "conditions": self.processing_of(name)})
        if self.below:  # the default the layers name together
            write_yaml(Path(target) / REGISTRY_FILE, {"schema_version": SCHEMA_VERSION,
                                                      "default_protocol": self.default_protocol}, HEADER)


def _remove_tree(path: Path) -> None:
    """Delete ``path`` and what lies under it; a link in it is removed, never followed (a link is removed as
    a file)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _places(protocol: Protocol | Combination) -> list[dict[str, Any]]:
    """Where a protocol's reference sets are read from as its file records them (a folder's path, outside the
    digest); none for a combination."""
    return [ref.record() for ref in (getattr(protocol, "train", None), getattr(protocol, "test", None)) if ref]
