"""``forensics encoders``: every encoder the plugins provide, with its layers, preprocessing and weights
(:func:`forensics.list_encoders`, which never builds a real model nor downloads anything)."""

from __future__ import annotations

import typer

from forensics.cli.common import esc, handle_errors, out, print_json


@handle_errors
def encoders(json_out: bool = typer.Option(False, "--json", help="Print as JSON (schema forensics.encoder-list/1: "
                                                                  "name, plugin, family, description, layers, "
                                                                  "preprocessing, weights)."),
             name: list[str] = typer.Argument(None, help="Only these encoders (default: all)."),
             layers: bool = typer.Option(False, "--layers", help="Show every layer in the table.")):
    """List encoders with their layers, preprocessing and whether their weights are on this machine.

    Example: forensics encoders tf_efficientnet_lite0 --layers
    """
    from rich.table import Table

    from forensics.api import list_encoders

    result = list_encoders(list(name) if name else None)
    broken = bool(name) and any("error" in e for e in result.encoders)  # asked for by name, and cannot be described
    if json_out:
        print_json(result.to_dict())
        if broken:
            raise typer.Exit(1)
        return
    entries = result.encoders
    table = Table(title="forensics encoders", title_justify="left")
    for col in ("encoder", "family", "layers", "input", "weights"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if "error" in e:
            table.add_row(esc(e["name"]), "", "", "", f"[red]error:[/] {esc(e['error'])}")
            continue
        ls = e["layers"]
        if layers or len(ls) <= 4:
            shown = ", ".join(f"{layer['name']} ({layer['dim']})" for layer in ls)
        else:
            shown = f"{len(ls)}: {ls[0]['name']} … {ls[-1]['name']} ({ls[-1]['dim']})"
        p = e["preprocessing"]
        weights = e["weights"]
        weights = f"[green]{esc(weights)}[/]" if not weights.startswith("missing") else "[yellow]missing[/]"
        table.add_row(esc(e["name"]), esc(e.get("family", "")), esc(shown), esc(f"{p['size']} px, {p['interpolation']}"),
                      weights)
    out.print(table)
    if any(str(e.get("weights", "")).startswith("missing") for e in entries):
        out.print("missing weights: `forensics encoders NAME --json` says how to supply them (a local file, a pip "
                  "package or the Hugging Face cache); weights=random builds an untrained copy.")
    if broken:
        raise typer.Exit(1)
