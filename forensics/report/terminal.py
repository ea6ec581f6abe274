"""Reports of an attribution: the rich terminal view and the versioned JSON document.

JSON schema ``forensics.attribution/1`` (stable; fields are only ever added)::

    {
      "schema": "forensics.attribution/1",
      "tool": {"forensics": "0.1.0", "python": "3.11.7", "torch": "...", "numpy": "..."},
      "created": "2026-11-23T06:30:00Z",
      "input": {"path": "...", "n_images": 500, "sha256": "sha256:..."},
      "protocol": {"name": "...", "digest": "sha256:...", "record": {...the full protocol...}},
      "curve": {"layers": [...], "values": [float | null, ...], "counted_weight": [...],
                "undefined": {layer: reason}, "n_images": 500, "readings": ["copying" | "no evidence" | "underfitting" | "undefined", ...]},
      "batches": [{"values": [...], "verdict": "..." | null}, ...],   # one per batch of m images
      "partial_batch": false,                                         # fewer than m images were given
      "matcher": {"name": "alpha", ...},
      "candidates": [{"generator": "...", "score": 0.93, "instance": "..."}, ...],   # best first
      "verdict": {"generator": "..." | null, "score": float | null, "margin": float | null,
                  "distance_ratio": float | null,   # to the best candidate's nearest curve, in its spreads
                  "reason": "...",
                  "lookalikes": {generator: [runs named, runs]}},  # left out at calibration, named this verdict
      "reference": {"origin": "...", "n_references": 15}
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from forensics.match.matcher import lookalike_note
from forensics.protocol import part_spans
from forensics.provenance import tool_versions, utc_now

SCHEMA = "forensics.attribution/1"
COPYING_BELOW = -2.0
UNDERFIT_ABOVE = 2.0
_SPARK = "▁▂▃▄▅▆▇█"


def reading(value: float | None) -> str:
    """What one layer's C_T says: C_T is a weighted mean of per-cell Z scores, so |C_T| > 2 is significant."""
    if value is None:
        return "undefined"
    if value < COPYING_BELOW:
        return "copying"
    if value > UNDERFIT_ABOVE:
        return "underfitting"
    return "no evidence"


def sparkline(values: Sequence[float | None]) -> str:
    finite = [v for v in values if v is not None]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join("·" if v is None else _SPARK[min(7, int((v - lo) / span * 7.999))] for v in values)


def bar(value: float | None, scale: float, width: int = 20) -> str:
    """A bar centred on zero: left for negative C_T (copying), right for positive."""
    if value is None:
        return " " * width + "│" + " " * width
    n = min(width, int(round(abs(value) / scale * width))) if scale > 0 else 0
    if value < 0:
        return " " * (width - n) + "█" * n + "│" + " " * width
    return " " * width + "│" + "█" * n + " " * (width - n)


def attribution_document(*, input_path: str, n_images: int, input_sha256: str, protocol, curve, batches,
                         attribution, matcher_info: dict[str, Any], reference_origin: str | None,
                         n_references: int, partial: bool) -> dict[str, Any]:
    cd = curve.to_dict()
    cd["readings"] = [reading(v) for v in curve.fingerprint.values]
    best = attribution.candidates[0] if attribution.candidates else None
    return {
        "schema": SCHEMA,
        "tool": tool_versions(),
        "created": utc_now(),
        "input": {"path": input_path, "n_images": n_images, "sha256": input_sha256},
        "protocol": protocol_section(protocol),
        "curve": cd,
        "batches": batches,
        "partial_batch": partial,
        "matcher": matcher_info,
        "candidates": [{"generator": c.generator, "score": float(c.score), "instance": c.instance}
                       for c in attribution.candidates],
        "verdict": {"generator": attribution.verdict,
                    "score": float(best.score) if best is not None and attribution.verdict is not None else None,
                    "margin": None if attribution.margin is None else float(attribution.margin),
                    "distance_ratio": None if attribution.distance_ratio is None else float(attribution.distance_ratio),
                    "reason": attribution.reason,
                    "lookalikes": {g: list(v) for g, v in attribution.lookalikes.items()}},
        "reference": {"origin": reference_origin, "n_references": n_references},
    }


def render_attribution(doc: dict[str, Any], console, *, top: int = 6) -> None:
    """Print an attribution document as the terminal report."""
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    proto = doc["protocol"]
    inp = doc["input"]
    verdict = doc["verdict"]
    header = Text()
    header.append(f"{inp['n_images']} images", style="bold")
    header.append(f" from {inp['path']}  (sha256 {inp['sha256'][7:19]})\n")
    header.append("protocol ", style="dim")
    header.append(proto["name"], style="bold")
    header.append(f"  digest {proto['digest'][7:19]}\n", style="dim")
    header.append(f"encoder {proto['encoder']}  ·  m = {proto['batch_size']}"
                  f"  ·  matcher {doc['matcher'].get('name')}", style="dim")
    # a panel's text must wrap inside its frame: on the CLI's soft-wrapping console it would be cropped
    console.print(Panel(header, title="forensics attribute", title_align="left", box=box.ROUNDED), soft_wrap=False)

    if verdict["generator"] is not None:
        line = Text.assemble(("Verdict: ", "bold"), (verdict["generator"], "bold green"),
                             f"   score {verdict['score']:.3f}")
        if verdict["margin"] is not None and len(doc["candidates"]) > 1:
            line.append(f"   margin {verdict['margin']:+.3f} over {doc['candidates'][1]['generator']}")
        if verdict.get("distance_ratio") is not None:
            line.append(f"   distance {verdict['distance_ratio']:.2f}× {verdict['generator']}'s spread")
    else:
        line = Text.assemble(("Verdict: ", "bold"), ("unknown", "bold yellow"))
    if verdict.get("reason"):
        line.append(f"\n  {verdict['reason']}", style="dim")
    note = lookalike_note(verdict["generator"], verdict.get("lookalikes"))
    if note:
        line.append(f"\n  {note}", style="yellow")
    console.print(line)
    if doc["partial_batch"]:
        console.print(Text(f"  warning: only {inp['n_images']} images, fewer than the protocol's batch of "
                           f"{proto['batch_size']}; C_T values shrink with fewer images, so scores "
                           "are less reliable", style="yellow"))

    table = Table(title="Candidates", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("generator", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("closest instance", style="dim", overflow="fold")
    for i, c in enumerate(doc["candidates"][:top], 1):
        style = "bold" if i == 1 and verdict["generator"] is not None else None
        table.add_row(str(i), c["generator"], f"{c['score']:.3f}", str(c.get("instance") or ""), style=style)
    console.print(table)

    render_curve(doc["curve"], console)
    if len(doc["batches"]) > 1:
        votes = [b["verdict"] or "unknown" for b in doc["batches"]]
        tally = ", ".join(f"{g} × {votes.count(g)}" for g in sorted(set(votes), key=lambda g: -votes.count(g)))
        console.print(Text(f"Per batch of {proto['batch_size']}: {tally} (verdict above is on the mean curve)",
                           style="dim"))
    tool = doc["tool"]
    console.print(Text(f"forensics {tool['forensics']} · torch {tool.get('torch', '?')} · reference side: "
                       f"{doc['reference']['origin']} · {doc['reference']['n_references']} reference fingerprints",
                       style="dim"))

def render_curve(curve: dict[str, Any], console) -> None:
    """The C_T-per-layer table: value, a bar centred on zero, the reading, how much of P_n counted."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    values = curve["values"]
    finite = [abs(v) for v in values if v is not None]
    scale = max(finite) if finite else 1.0
    ct = Table(title=f"C_T per layer   {sparkline(values)}", box=box.SIMPLE_HEAD, title_justify="left")
    name_width = max(len(name) for name in curve["layers"])
    # the bars take what the other columns leave (they need about 40 columns with the layer names)
    half = max(4, min(20, (console.width - name_width - 44) // 2))
    ct.add_column("layer", no_wrap=True, min_width=name_width)
    ct.add_column("C_T", justify="right", no_wrap=True)
    ct.add_column("copying ◄│► underfitting" if half >= 12 else "◄│►", no_wrap=True)
    ct.add_column("reading", no_wrap=True, min_width=12)
    ct.add_column("P_n counted" if half >= 16 else "P_n", justify="right", style="dim", no_wrap=True)
    colours = {"copying": "red", "underfitting": "cyan", "no evidence": "white", "undefined": "yellow"}
    for layer, v, r, w in zip(curve["layers"], values, curve["readings"], curve["counted_weight"]):
        ct.add_row(layer, "—" if v is None else f"{v:+.2f}", bar(v, scale, half), Text(r, style=colours[r]),
                   "" if w is None else f"{100 * w:.0f}%")
    console.print(ct)
    for layer, reason in curve.get("undefined", {}).items():
        console.print(Text(f"  {layer}: undefined — {reason}", style="yellow"))


MEMO_SCHEMA = "forensics.memorization/1"


def copying_level(readings: Sequence[str]) -> str:
    """Summarise where along the depth copying shows: early layers see colour and texture, late ones meaning."""
    n = len(readings)
    hits = [i for i, r in enumerate(readings) if r == "copying"]
    if not hits:
        return "none"
    if len(hits) == n:
        return "every layer (near-exact copies)"
    third = max(1, n // 3)
    early = any(i < third for i in hits)
    late = any(i >= n - third for i in hits)
    if early and not late:
        return "low-level (early layers: colour, texture)"
    if late and not early:
        return "semantic (late layers: content, meaning)"
    return "mixed (" + ", ".join(str(i) for i in hits) + ")"


def protocol_section(protocol) -> dict[str, Any]:
    """A report's record of the protocol (or combination) it was made under: name, digest, encoder(s),
    batch size, the full record, and for a combination each combined protocol's full record."""
    section = {"name": protocol.name, "digest": protocol.digest,
               "encoder": " + ".join(p.encoder.name for p in protocol.parts), "batch_size": protocol.batch_size,
               "record": protocol.to_dict()}
    if len(protocol.parts) > 1:
        section["parts"] = [p.to_dict() for p in protocol.parts]
    return section


def copying_levels(protocol, readings: Sequence[str]) -> str:
    """:func:`copying_level` along each encoder's depth; for a combination, one per combined protocol."""
    if len(protocol.parts) == 1:
        return copying_level(readings)
    return "; ".join(f"{part.name}: {copying_level(readings[a:b])}" for part, a, b in part_spans(protocol))


def memorization_document(*, input_path: str, input_sha256: str, protocol, curve, reference_origin: str | None,
                          partial: bool) -> dict[str, Any]:
    """The versioned JSON of ``forensics memorization`` (schema ``forensics.memorization/1``): tool,
    created, input, protocol, curve (values, readings, counted_weight, undefined), level, partial_batch."""
    cd = curve.to_dict()
    cd["readings"] = [reading(v) for v in curve.fingerprint.values]
    return {
        "schema": MEMO_SCHEMA, "tool": tool_versions(), "created": utc_now(),
        "input": {"path": input_path, "n_images": curve.n_images, "sha256": input_sha256},
        "protocol": protocol_section(protocol),
        "curve": cd, "level": copying_levels(protocol, cd["readings"]), "partial_batch": partial,
        "thresholds": {"copying_below": COPYING_BELOW, "underfitting_above": UNDERFIT_ABOVE},
        "reference": {"origin": reference_origin},
    }


def render_memorization(doc: dict[str, Any], console) -> None:
    from rich import box
    from rich.panel import Panel
    from rich.text import Text

    inp, proto = doc["input"], doc["protocol"]
    header = Text()
    header.append(f"{inp['n_images']} images", style="bold")
    header.append(f" from {inp['path']}  (sha256 {inp['sha256'][7:19]})\n")
    header.append(f"protocol {proto['name']}  digest {proto['digest'][7:19]}  ·  encoder "
                  f"{proto['encoder']}", style="dim")
    console.print(Panel(header, title="forensics memorization", title_align="left", box=box.ROUNDED), soft_wrap=False)
    level = doc["level"]
    style = "bold red" if "copying" in doc["curve"]["readings"] else "bold green"
    console.print(Text.assemble(("Copying: ", "bold"), (level, style)))
    console.print(Text(f"  C_T < {COPYING_BELOW:g}: generated images sit closer to the training set than fresh data "
                       f"does (copying); > {UNDERFIT_ABOVE:g}: farther (underfitting)", style="dim"))
    if doc["partial_batch"]:
        console.print(Text(f"  warning: fewer images than the protocol's batch of {proto['batch_size']}; "
                           "|C_T| shrinks with fewer images", style="yellow"))
    render_curve(doc["curve"], console)
