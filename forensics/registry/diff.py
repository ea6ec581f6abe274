"""What two registry states disagree on, and the registry as it is at a git revision."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forensics.errors import UsageError
from forensics.io.hashing import short

if TYPE_CHECKING:
    from forensics.registry.store import Registry


def diff(a: Registry, b: Registry) -> list[dict[str, Any]]:
    """What two registry states disagree on, from ``a`` (old) to ``b`` (new).

    Each change is ``{"change": "added" | "removed" | "changed", "what": "default_protocol" | "protocol" |
    "generator" | "instance", "protocol", "generator", "instance", "detail"}``.
    """
    changes: list[dict[str, Any]] = []

    def add(change, what, protocol=None, generator=None, instance=None, detail=""):
        changes.append({"change": change, "what": what, "protocol": protocol, "generator": generator,
                        "instance": instance, "detail": detail})

    if a.default_protocol != b.default_protocol:
        add("changed", "default_protocol", detail=f"{a.default_protocol!r} → {b.default_protocol!r}")
    for name in sorted(set(a.protocols) | set(b.protocols)):
        pa, pb = a.protocols.get(name), b.protocols.get(name)
        if pa is None or pb is None:
            owner = pb or pa
            n = len((b if pa is None else a).generators.get(name, {}))
            add("added" if pa is None else "removed", "protocol", name,
                detail=f"digest {short(owner.digest)}, {n} generator(s)")
            continue
        if pa.digest != pb.digest:
            add("changed", "protocol", name, detail="; ".join(pa.differences(pb)))
        elif pa.to_dict() != pb.to_dict():
            add("changed", "protocol", name, detail="description or notes")
        ga, gb = a.generators.get(name, {}), b.generators.get(name, {})
        for g in sorted(set(ga) | set(gb)):
            ea, eb = ga.get(g), gb.get(g)
            if (ea is None or eb is None) and any(g in (a if ea is None else b).unread.get(part.name, ())
                                                  for part in (pa if ea is None else pb).parts):
                # its file is there but does not read: neither added nor removed
                state = "old" if ea is None else "new"
                add("changed", "generator", name, g, detail=f"its file does not read in the {state} state "
                                                          "(`forensics registry validate` on it says why)")
                continue
            if ea is None or eb is None:
                owner = eb or ea
                add("added" if ea is None else "removed", "generator", name, g,
                    detail=f"{len(owner.instances)} instance(s)")
                continue
            if ea.description != eb.description:
                add("changed", "generator", name, g, detail=f"description {ea.description!r} → {eb.description!r}")
            if ea.family != eb.family:
                add("changed", "generator", name, g, detail=f"family {ea.family!r} → {eb.family!r}")
            ia = {i.id: i for i in ea.instances}
            ib = {i.id: i for i in eb.instances}
            for iid in sorted(set(ia) | set(ib)):
                xa, xb = ia.get(iid), ib.get(iid)
                if xa is None or xb is None:
                    owner = xb or xa
                    add("added" if xa is None else "removed", "instance", name, g, iid,
                        detail=f"created {owner.provenance.get('created')} by {owner.provenance.get('by')}")
                    continue
                if xa.values != xb.values:
                    delta = max((abs((u or 0.0) - (v or 0.0)) for u, v in zip(xa.values, xb.values)), default=0.0)
                    detail = (f"curve length {len(xa.values)} → {len(xb.values)}" if len(xa.values) != len(xb.values)
                              else f"curve changed (largest difference {delta:.3g})")
                    add("changed", "instance", name, g, iid, detail=detail)
                if xa.provenance != xb.provenance:
                    keys = sorted(k for k in set(xa.provenance) | set(xb.provenance)
                                  if xa.provenance.get(k) != xb.provenance.get(k))
                    add("changed", "instance", name, g, iid, detail=f"provenance: {', '.join(keys)}")
                if xa.records != xb.records:  # per-image records kept, dropped or made again
                    said = [f"{how} {', '.join(cs)}" for how, cs in (
                        ("kept under", sorted(set(xb.records) - set(xa.records))),
                        ("no longer under", sorted(set(xa.records) - set(xb.records))),
                        ("made again under", sorted(c for c in set(xa.records) & set(xb.records)
                                                    if xa.records[c] != xb.records[c]))) if cs]
                    add("changed", "instance", name, g, iid, detail=f"records: {'; '.join(said)}")
    return changes


def in_git(folder: str | Path) -> bool:
    """Whether ``folder`` exists inside a git work tree."""
    if not Path(folder).is_dir():
        return False
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def git_snapshot(rev: str, registry: str | Path, into: str | Path) -> Path:
    """Extract the registry folder ``registry`` as it is at git revision ``rev`` (``HEAD``, ``main``, a
    commit) into the folder ``into``; returns the registry's folder there. Where the revision holds no
    registry, the path returned does not exist (open it with ``create=True``: an empty registry)."""
    rev = rev or "HEAD"
    if rev.startswith("-") or any(c in rev for c in "\0\n\r") or len(rev) > 256:
        # git would read it as an option ('--output=FILE' truncates FILE)
        raise UsageError(f"{rev!r} is not a git revision (a branch, a tag or a commit; not an option)")
    into = Path(into)
    folder = Path(registry).resolve()
    if not in_git(folder):  # an installed package's registry, or a folder outside any checkout
        raise UsageError(f"git:{rev} reads the registry from git, but {folder} is not in a git checkout: compare "
                         "with a registry folder instead (forensics registry diff FOLDER)")
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], check=True,
                             capture_output=True, text=True).stdout.strip()
        rel = folder.relative_to(Path(top).resolve()).as_posix()
        commit = subprocess.run(["git", "-C", top, "rev-parse", "--verify", "--quiet", "--end-of-options",
                                 f"{rev}^{{commit}}"], capture_output=True, text=True).stdout.strip()
        if not re.fullmatch(r"[0-9a-f]{40,64}", commit):
            raise UsageError(f"cannot read the registry at git revision {rev!r}: no such commit in {top}")
        archive = subprocess.run(["git", "-C", top, "archive", "--format=tar", commit, "--", rel], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        detail = detail.decode() if isinstance(detail, bytes) else str(detail)
        if "did not match any files" in detail:
            return into / "empty-registry"
        raise UsageError(f"cannot read the registry at git revision {rev!r}: "
                         f"{detail.strip().splitlines()[0] if detail.strip() else exc}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(into)
    return into / rel


def open_state(spec: str, registry: str | Path | None, into: str | Path, below: Sequence[Path] = ()) -> Registry:
    """The registry state ``spec`` names: ``git:REV`` (the registry ``registry``, default
    :func:`default_registry_path`, at that revision, extracted into ``into``) or a registry folder, read over
    the read-only layers ``below`` (those of the registry it is compared with, so that only what differs in
    the folder shows). Opened without ``strict``: its problems are in ``.problems``."""
    from forensics.registry.store import Registry, default_registry_path

    if spec.startswith("git:"):
        path = git_snapshot(spec[4:], registry or default_registry_path(), into)
        return Registry.open(path, strict=False, create=True, below=below)
    if not Path(spec).expanduser().is_dir():  # a wrong path given on the command line: usage, not a damaged registry
        raise UsageError(f"no registry folder at {spec}: give the folder of a registry (one holding registry.yaml), "
                         "or git:REV for the registry at a git revision")
    return Registry.open(Path(spec).expanduser(), strict=False, below=below)
