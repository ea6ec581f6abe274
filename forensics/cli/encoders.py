"""``forensics encoders``: every encoder the plugins provide, with its layers, preprocessing and weights.

Listing never builds a real model nor downloads anything: encoders describe themselves through their
factory's ``describe()`` (bundled ones read layer sizes from a forward pass on the meta device); an
encoder whose plugin offers no ``describe`` is built with random weights.
"""

from __future__ import annotations

from typing import Any

import typer

from forensics.cli.common import handle_errors, out, print_json

SCHEMA = 1


def list_encoders(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per encoder: name, plugin, family, description, layers (name, dim), pooling(s),
    preprocessing and ``weights`` (where they come from on this machine, or ``missing: how to supply``).
    An encoder that cannot describe itself is listed with its ``error``."""
    from forensics.encode.encoder import describe_encoder
    from forensics.errors import UsageError
    from forensics.plugins import host

    found = host().collect("encoders")
    if names:
        unknown = [n for n in names if n not in found]
        if unknown:
            raise UsageError(f"no encoder named {', '.join(unknown)}; available: {', '.join(sorted(found))}")
    entries = []
    for name in sorted(found) if not names else names:
        provided = found[name]
        entry: dict[str, Any] = {"name": name, "plugin": provided.plugin}
        try:
            spec = describe_encoder(name, provided.obj, provided.description)
            entry.update(spec.to_dict())
            entry["name"] = name
            entry["weights_available"] = not spec.weights.startswith(("missing", "unknown"))
        except Exception as exc:  # one broken encoder must not hide the others
            entry.update({"description": provided.description, "layers": [], "weights": "unknown",
                          "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        entries.append(entry)
    return entries


@handle_errors
def encoders(json_out: bool = typer.Option(False, "--json", help="Print as JSON (schema 1: name, plugin, family, "
                                                                  "description, layers, preprocessing, weights)."),
             name: list[str] = typer.Argument(None, help="Only these encoders (default: all)."),
             layers: bool = typer.Option(False, "--layers", help="Show every layer in the table.")):
    """List encoders with their layers, preprocessing and whether their weights are on this machine.

    Example: forensics encoders tf_efficientnet_lite0 --layers
    """
    entries = list_encoders(list(name) if name else None)
    if json_out:
        print_json({"schema": SCHEMA, "encoders": entries})
        return
    from rich.table import Table

    table = Table(title="forensics encoders", title_justify="left")
    for col in ("encoder", "family", "layers", "input", "weights"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if "error" in e:
            table.add_row(e["name"], "", "", "", f"[red]error:[/] {e['error']}")
            continue
        ls = e["layers"]
        if layers or len(ls) <= 4:
            shown = ", ".join(f"{layer['name']} ({layer['dim']})" for layer in ls)
        else:
            shown = f"{len(ls)}: {ls[0]['name']} … {ls[-1]['name']} ({ls[-1]['dim']})"
        p = e["preprocessing"]
        weights = e["weights"]
        weights = f"[green]{weights}[/]" if not weights.startswith("missing") else "[yellow]missing[/]"
        table.add_row(e["name"], e.get("family", ""), shown, f"{p['size']} px, {p['interpolation']}", weights)
    out.print(table)
    if any(str(e.get("weights", "")).startswith("missing") for e in entries):
        out.print("missing weights: `forensics encoders NAME --json` says how to supply them (a local file, a pip "
                  "package or the Hugging Face cache); weights=random builds an untrained copy.")
