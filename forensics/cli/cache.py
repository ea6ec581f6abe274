"""``forensics cache …``: what the user cache holds (embeddings of reference sets, fitted reference sides),
and clearing it (:func:`forensics.list_cache`, :func:`forensics.clear_cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forensics.cli.common import OPT_JSON, OPT_REGISTRY, confirmed, err, esc, handle_errors, out, print_json
from forensics.report import counted

app = typer.Typer(name="cache", no_args_is_help=True,
                  help="The user cache ($FORENSICS_CACHE_DIR, else the platform's cache folder): list, clear.\n\n"
                       "Example: forensics cache list")


def size_text(n: int) -> str:
    """Bytes as a person reads them: 812 B, 3.4 kB, 69.0 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def age_text(seconds: float) -> str:
    """An age as a person reads it: 45 s, 12 min, 5 h, 3 d."""
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{seconds:.0f} s"


@app.command("list")
@handle_errors
def list_(registry: Optional[Path] = OPT_REGISTRY, json_out: bool = OPT_JSON):
    """List the cache's entries: kind, the protocols each serves, encoder, size, age; and the total.

    Example: forensics cache list --json
    """
    from rich.table import Table

    from forensics.api import list_cache

    result = list_cache(registry=registry)
    if json_out:
        print_json(result.to_dict())
        return
    if not result.items:
        out.print(f"the cache {esc(result.cache)} is empty")
        return
    table = Table(title=f"cache {esc(result.cache)}", title_justify="left")
    for col, justify in (("kind", "left"), ("protocols", "left"), ("what", "left"), ("encoder", "left"),
                         ("entries", "right"), ("size", "right"), ("age", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for kind, protocols, what, encoder, items in _groups(result.items):
        youngest, oldest = age_text(min(i.age_s for i in items)), age_text(max(i.age_s for i in items))
        age = youngest if youngest == oldest else f"{youngest}–{oldest}"
        table.add_row(esc(kind), esc(", ".join(protocols) or "—"), esc(what), esc(encoder or "—"), str(len(items)),
                      size_text(sum(i.size for i in items)), age)
    out.print(table)
    out.print(f"{counted(len(result.items), 'entry', 'entries')}, {size_text(result.total)} in all (`--json` lists each); "
              "`forensics cache clear` removes them", markup=False)


def _groups(items):
    """The entries as the table shows them: one row per reference side; the embeddings of one image set
    by one encoder together (one entry per layer); old-format and other files together."""
    from forensics.io.hashing import short

    groups: dict[tuple, list] = {}
    for i in items:
        if i.kind == "embeddings":
            what = f"embeddings of {i.reference_set}" if i.reference_set else \
                (f"embeddings of images {short(i.images)}" if i.images else "embeddings (no readable index)")
            key = (i.kind, i.protocols, what, i.encoder)
        elif i.kind == "reference":
            key = (i.kind, i.protocols, i.what, None)
        elif i.kind == "old":
            key = (i.kind, (), "embeddings of an older cache format (no longer read)", None)
        elif i.kind == "layers":
            key = (i.kind, (), "encoders' layer widths, measured once", None)
        elif i.kind == "datasets":
            key = (i.kind, (), i.what, None)
        else:
            key = (i.kind, (), "not written by this version of forensics (never removed)", None)
        groups.setdefault(key, []).append(i)
    return [(*key, found) for key, found in groups.items()]


@app.command()
@handle_errors
def clear(
    older_than: Optional[str] = typer.Option(None, "--older-than", help="Only entries last written longer ago "
                                             "than this: 30d, 12h, 90m, 2w (a plain number: days)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="Only what serves this protocol: its "
                                           "reference side and the embeddings of its reference sets."),
    unused: bool = typer.Option(False, "--unused", help="Only entries that serve none of the registry's protocols "
                                "(those of a removed protocol, say)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking (needed when not on a terminal)."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Remove cache entries (all, or --older-than, --protocol, --unused), after asking unless --yes.

    Only what forensics wrote there is removed; links and anything else are left alone. A removed
    reference side or embedding is recomputed when next needed (minutes).
    Example: forensics cache clear --older-than 30d --yes
    """
    from forensics.api import clear_cache, parse_duration

    if older_than is not None:
        parse_duration(older_than)  # a bad duration fails before anything is listed

    def ask(items) -> bool:
        return confirmed(yes, counted(len(items), 'cache entry', 'cache entries'), size_text(sum(i.size for i in items)))

    result = clear_cache(older_than=older_than, protocol=protocol, unused=unused, registry=registry, confirm=ask)
    if json_out:
        print_json(result.to_dict())
    for item, why in result.refused:
        err.print(f"[yellow]note:[/] {esc(item.path)}: {esc(why)}")
    if not result.confirmed:
        err.print("nothing removed")
    elif not json_out:
        out.print(f"removed {counted(len(result.removed), 'entry', 'entries')} ({size_text(result.freed)}) from {esc(result.cache)}")
