"""The terminal views of the library's results (rich): an attribution and a memorization report.

They only read the result objects of :mod:`forensics.results` (whose ``to_dict()`` is the JSON
report); nothing here computes a figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from forensics.io.hashing import short
from forensics.report import cluster_text, counted
from forensics.match import lookalike_note

if TYPE_CHECKING:
    from rich.console import Console

    from forensics.engine import Curve
    from forensics.results import AttributionResult, MemorizationResult

_SPARK = "▁▂▃▄▅▆▇█"


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


def thresholds_text(thresholds: Mapping[str, float]) -> str:
    """A statistic's reading cut-offs as a phrase: ``copying below -4, underfitting above 4``; mean-z's
    ``differs_beyond`` by the reading it gives (``underfitting beyond ±2``)."""
    return ", ".join(f"underfitting beyond ±{value:g}" if name == "differs_beyond" else
                     f"{name.replace('_', ' ')} {value:g}" for name, value in thresholds.items())


def reading_rules_text(spans: Sequence[tuple[str, int, int, Mapping[str, float]]]) -> str:
    """How a curve's layers are read, from :func:`forensics.results.reading_spans`: one statistic's
    :func:`thresholds_text`, or for a combination whose statistics read differently each with the protocols
    it holds for (``mnist-effnet-lite0, mnist-vit: copying below -2, underfitting above 2; mnist-pixel:
    underfitting beyond ±2``)."""
    rules: dict[str, list[str]] = {}
    for name, _first, _stop, thresholds in spans:
        rules.setdefault(thresholds_text(thresholds), []).append(name)
    if len(rules) == 1:
        return next(iter(rules))
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in rules.items())


def printable(text: str) -> str:
    """``text`` as it can be written in UTF-8: a file name's undecodable bytes (kept by Python as lone
    surrogates) become ``\\udcXX`` escapes instead of failing the write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _source(result: AttributionResult | MemorizationResult) -> str:
    where = printable(result.input.path) if result.input.path is not None else "an array"
    skipped = skipped_text(result.input.to_dict())
    return f" from {where}  (sha256 {short(result.input.sha256)})" + (f"; {skipped}" if skipped else "") + "\n"


def skipped_text(record: Mapping[str, Any]) -> str:
    """What reading a folder skipped, from a report's ``input``: ``skipped 1 hidden, 500 not an image`` (the
    report is the record: stderr's note alone is lost with the terminal), or ""."""
    skipped = sorted((reason, n) for reason, n in (record.get("skipped") or {}).items() if n)
    return ("skipped " + ", ".join(f"{n:,} {reason}" for reason, n in skipped)) if skipped else ""


def _encoders(result: AttributionResult | MemorizationResult) -> str:
    return " + ".join(p.encoder.name for p in result.protocol.parts)


def render_attribution(result: AttributionResult, console: Console, *, top: int = 6) -> None:
    """Print an attribution as the terminal report: the verdict, the candidates, the curve."""
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    proto = result.protocol
    verdict = result.verdict
    candidates = result.candidates
    header = Text()
    header.append(counted(result.input.n_images, "image"), style="bold")
    header.append(_source(result))
    header.append("protocol ", style="dim")
    header.append(proto.name, style="bold")
    header.append(f"  digest {short(proto.digest)}\n", style="dim")
    header.append(f"encoder {_encoders(result)}  ·  m = {proto.batch_size}"
                  f"  ·  matcher {result.matcher.get('name')}", style="dim")
    # a panel's text must wrap inside its frame: on the CLI's soft-wrapping console it would be cropped
    console.print(Panel(header, title="forensics attribute", title_align="left", box=box.ROUNDED), soft_wrap=False)

    if verdict.generator is not None:
        line = Text.assemble(("Verdict: ", "bold"), (verdict.generator, "bold green"), f"   score {verdict.score:.3f}")
        if verdict.margin is not None and len(candidates) > 1:
            line.append(f"   margin {verdict.margin:+.3f} over {candidates[1].generator}")
        if verdict.distance_ratio is not None:
            line.append(f"   distance {verdict.distance_ratio:.2f}× {verdict.generator}'s spread")
    elif verdict.family is not None:
        line = Text.assemble(("Verdict: ", "bold"), "the family ", (verdict.family, "bold green"),
                             f" — {family_text(verdict.family_members)}")
        if verdict.score is not None and candidates:
            line.append(f"   score {verdict.score:.3f} ({candidates[0].generator})")
    else:
        line = Text.assemble(("Verdict: ", "bold"), ("unknown", "bold yellow"))
    if verdict.reason:
        line.append(f"\n  {verdict.reason}", style="dim")
    # a family's lookalikes are those of its best member: calibration saw them named as it
    note = lookalike_note(verdict.generator or (candidates[0].generator if verdict.family and candidates else None),
                          verdict.lookalikes)
    if note:
        line.append(f"\n  {note}", style="yellow")
    doc = result.to_dict()
    for said in (operating_points_text(doc["verdict"]), resampling_text(doc["verdict"])):
        if said:
            text, warn = said
            line.append(f"\n  {text}", style="yellow" if warn else "dim")
    console.print(line)
    console.print(Text("  " + assumed_text(doc), style="dim"))

    table = Table(title="Candidates", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("generator", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("closest instance", style="dim", overflow="fold")
    for i, c in enumerate(candidates[:top], 1):
        style = "bold" if (i == 1 and verdict.generator is not None) or c.generator in verdict.family_members else None
        table.add_row(str(i), escape(c.generator), f"{float(c.score):.3f}", escape(str(c.instance or "")), style=style)
    console.print(table)

    from forensics.results import protocol_section, statistic_label

    render_curve(result.curve, console, statistic_label(protocol_section(result.protocol)))
    if len(result.batches) > 1:
        tally = ", ".join(f"{g} × {n}" for g, n in result.batch_votes)
        console.print(Text(f"Per batch of {proto.batch_size}: {tally} (verdict above is on the mean curve)",
                           style="dim"))
    if (rest := remainder_text(result)) is not None:
        console.print(Text(rest, style="yellow"))
    render_warnings(result.warnings, console)
    tool = result.provenance.tool
    console.print(Text(f"forensics {tool['forensics']} · torch {tool.get('torch', '?')} · {compute_text(result)}"
                       f" · reference side: {result.reference_origin} · {len(result.references)} reference "
                       "fingerprints", style="dim"))


def remainder_text(result: AttributionResult) -> str | None:
    """The answer to the images after the last full batch, attributed as a batch of their own, in one line
    (None: no such remainder)."""
    rest = result.remainder
    if rest is None:
        return None
    how = (f"matched against the references redrawn at {rest.compared_at} images" if rest.compared_at
           else f"fewer than {result.protocol.batch_size}: less reliable")
    return f"The last {rest.curve.n_images} images, a batch of their own: {rest.label} ({how}; not in the mean curve)"


def render_warnings(warnings: Sequence[str], console: Console) -> None:
    """A report's warnings, each on its own line: the report is the record, so what stderr said is in it too."""
    from rich.text import Text

    for line in warnings:
        console.print(Text(f"warning: {line}", style="yellow"))


def family_text(members: Sequence[str]) -> str:
    """What a family verdict leaves open, after its name: ``ddim or pndm; its samplers are not told apart
    here`` (the generators of one family are one network under several samplers)."""
    from forensics.results import members_text

    which = f"{members_text(members)}; " if members else ""
    return f"{which}its samplers are not told apart here"


def assumed_text(doc: Mapping[str, Any]) -> str:
    """What an attribution's verdict assumed, in one line: the condition of the images (and how it was
    known), the batch size of the references it was matched against and the operating point of the open-set
    thresholds."""
    at = doc.get("compared_at")
    size = (f"against references of {counted(at, 'image')}" + (" redrawn from the enrolled instances' per-image records"
                                                     if any(r.get("batch_size") == at for r in doc.get("redrawn", ()))
                                                     else "")
            if at else "against references of another batch size (not comparable)")
    point = ((doc.get("matcher") or {}).get("open_set") or {}).get("operating_point")
    thresholds = f"; open-set thresholds of the {point} operating point" if point else ""
    cond = doc.get("condition") or {}
    made = processing_text(cond)
    alike = "; each set scored against T and P_n processed alike" if scored_alike(cond) else ""
    return (f"Assumed: {condition_text(cond)}; matched {size}"
            + (f" (their images processed alike by {made}{alike})" if made else "") + thresholds)


def scored_alike(cond: Mapping[str, Any]) -> bool:
    """Whether the records matched under a report's condition were scored against T and P_n put through a
    processing (``condition.processing``'s ``reference``), as the query's images then are."""
    recorded = [cond.get("processing") or {}, *((part.get("processing") or {}) for part in cond.get("mixture", ()))]
    return any(m.get("reference", "none") != "none" for made in recorded for m in made.values())


#: how many kinds of processing the one-line condition of a mixture names (the JSON has every one)
MIXTURE_SHOWN = 6


def condition_text(cond: Mapping[str, Any], each: str = "each image matched as its own") -> str:
    """The condition of a report's images and how it was known: ``images jpeg90: re-saved as JPEG at
    quality 90, read from the files (JPEG quality 90 read from …)``; for files processed in several ways,
    what was done with ``each`` and how many images are under each condition."""
    name, source = cond.get("name", "none"), cond.get("source")
    # "assumed" (nothing says otherwise) goes unsaid: the line it stands in begins "Assumed:"
    how = {"files": ", read from the files", "declared": ", declared"}.get(source, "")
    what = "as generated" if name == "none" else f"{name}: {cond.get('description', '')}"
    if cond.get("mixture"):
        parts = [f"{part['count']} " + ("as generated" if part["name"] == "none" else part["name"])
                 for part in cond["mixture"]]
        if len(parts) > MIXTURE_SHOWN:  # the rest are in the JSON; a line of every kind would run on for a page
            more = len(parts) - MIXTURE_SHOWN
            parts = [*parts[:MIXTURE_SHOWN], f"and {more} more kind{'s' * (more > 1)} (JSON condition.mixture)"]
        what = f"processed in several ways, {each}: " + ", ".join(parts)
    # what was read, or done to the images as declared (a resize back to the generators' size); not the
    # detail of a mixture read from the files (a clause per kind), nor what repeats the line's own words
    detail = cond.get("detail") or ""
    detail = detail.removesuffix("; assumed as generated").removeprefix("as declared").removeprefix("; ")
    if cond.get("mixture"):
        detail = ""
    return f"images {what}{how}" + (f" ({detail})" if detail else "")


def processing_text(cond: Mapping[str, Any]) -> str:
    """What processed the reference images under a report's condition (``condition.processing``), as
    ``Pillow 13.0.0 (libjpeg-turbo 3.2.0, libwebp 1.6.0)``; each distinct one once; empty when not recorded."""
    from forensics.conditions import describe_codecs

    recorded = [cond.get("processing") or {}, *((part.get("processing") or {}) for part in cond.get("mixture", ()))]
    return "; ".join(dict.fromkeys(describe_codecs(m) for made in recorded for m in made.values()))


def memorization_assumed_text(doc: Mapping[str, Any]) -> str:
    """What a memorization curve assumed, in one line: the images' condition, and T and P_n put through it."""
    cond = doc.get("condition") or {}
    made = processing_text(cond)
    if cond.get("mixture"):
        each = ("the images of each kind scored against T and P_n put through the same processing"
                + (f" (by {made})" if made else "") + " and the parts' C_T combined")
        return f"Assumed: {condition_text(cond, each)}"
    if cond.get("name", "none") == "none":
        return f"Assumed: {condition_text(cond)}"
    # where the statistic could not be fitted on T and P_n so processed, they were taken as they are
    as_is = sorted(p for p, m in (cond.get("processing") or {}).items() if m.get("reference") == "none")
    unfit = "their processed side cannot be fitted: see the warnings"
    if as_is and len(as_is) == len(cond.get("processing") or {}):
        return f"Assumed: {condition_text(cond)}; T and P_n as they are ({unfit})"
    alike = "; T and P_n put through the same processing" + (f" (by {made})" if made else "")
    if as_is:
        alike += f", but as they are for {', '.join(as_is)} ({unfit})"
    return f"Assumed: {condition_text(cond)}{alike} before C_T was taken"


def operating_points_text(verdict: Mapping[str, Any]) -> tuple[str, bool] | None:
    """How the answer depends on the operating point, in one line, and whether it does (None when
    calibration recorded no operating points): ``the same at every operating point``, or each point's answer."""
    from forensics.results import answer_label

    at = verdict.get("at_operating_points") or {}
    if not at:
        return None
    labels = {p: answer_label(v.get("generator"), v.get("family")) for p, v in at.items()}
    if len(set(labels.values())) == 1:
        return "the same at every operating point", False
    return "depends on the operating point: " + " · ".join(f"{p} → {label}" for p, label in labels.items()), True


def resampling_text(verdict: Mapping[str, Any]) -> tuple[str, bool] | None:
    """How the answer held over bootstrap resamples of the batch's images, in one line, and whether it failed
    to (None when not resampled): ``ddpm ranks first in 97 of 100 resamples of the images``; with nothing
    named, the generators most often first."""
    res = verdict.get("resampling")
    if not res:
        return None
    n = res["resamples"]
    if verdict.get("generator") is not None:
        return f"{verdict['generator']} ranks first in {res['leads']} of {n} resamples of the images", False
    if verdict.get("family") is not None:
        return f"a generator of {verdict['family']} ranks first in {res['leads']} of {n} resamples of the images", False
    firsts = ", ".join(f"{g} {k}" for g, k in list(res["first"].items())[:3])
    return f"ranked first in {n} resamples of the images: {firsts}", res.get("leads") is not None


def evaluation_scope(protocol: Mapping[str, Any]) -> str:
    """What one protocol's evaluation was made at, after "leave-one-out": the batch size and condition the
    instances were redrawn at, and the operating point of the open-set verdicts when not the default."""
    from forensics.match.calibration import DEFAULT_OPERATING_POINT

    at = ""
    if protocol.get("redrawn"):
        cond = f", {protocol['condition']}" if protocol.get("condition", "none") != "none" else ""
        at = f" at batches of {protocol['batch_size']}{cond} (sub-batches from the per-image records)"
    if protocol.get("operating_point", DEFAULT_OPERATING_POINT) != DEFAULT_OPERATING_POINT:
        at += f", {protocol['operating_point']} operating point"
    return at


def compute_text(result: AttributionResult | MemorizationResult) -> str:
    """Where the curve was computed, and in which precision: ``device cpu, float32``, ``device cuda, amp bf16``
    or, on a Ray cluster, ``the Ray 2.60.0 cluster at local (1 node, 2 actors), device cpu, float32``."""
    compute = result.compute
    amp = compute.get("amp")
    cluster = cluster_text(compute)
    return f"{cluster + ', ' if cluster else ''}device {compute.get('device')}, {'amp ' + amp if amp else 'float32'}"


def render_curve(curve: Curve, console: Console, label: str = "C_T") -> None:
    """The per-layer table of the statistic ``label`` names (C_T): value, a bar centred on zero, the reading, how
    much of P_n counted."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from forensics.results import value_heading

    values = list(curve.fingerprint.values)
    names = [lv.layer for lv in curve.layers]
    finite = [abs(v) for v in values if v is not None]
    scale = max(finite) if finite else 1.0
    ct = Table(title=f"{label} per layer   {sparkline(values)}", box=box.SIMPLE_HEAD, title_justify="left")
    name_width = max(len("layer"), *(len(name) for name in names))  # short names (c1) must not fold the heading
    # the bars take what the other columns leave (they need about 40 columns with the layer names)
    half = max(4, min(20, (console.width - name_width - 44) // 2))
    shown = ["—" if v is None else f"{v:+.2f}" for v in values]
    # on a narrow terminal the layer names fold, never the values (a value cut to "+1…" reads as another)
    ct.add_column("layer", overflow="fold", min_width=min(name_width, 12))
    ct.add_column(value_heading(label), justify="right", no_wrap=True, min_width=max(map(len, shown)))
    ct.add_column("copying ◄│► underfitting" if half >= 12 else "◄│►", no_wrap=True)
    ct.add_column("reading", no_wrap=True, min_width=12)
    ct.add_column("P_n counted" if half >= 16 else "P_n", justify="right", style="dim", no_wrap=True, min_width=4)
    colours = {"copying": "red", "underfitting": "cyan", "no evidence": "white", "undefined": "yellow"}
    for lv, v, text in zip(curve.layers, values, shown):
        w = lv.counted_weight
        ct.add_row(escape(lv.layer), text, bar(v, scale, half),
                   Text(lv.reading, style=colours.get(lv.reading, "white")), "" if w is None else f"{100 * w:.0f}%")
    console.print(ct)
    for line in undefined_lines((lv.layer, lv.value is None, lv.undefined_reason) for lv in curve.layers):
        console.print(Text(f"  {line}", style="yellow"))


def undefined_lines(layers: Iterable[tuple[str, bool, str | None]]) -> list[str]:
    """Why layers are undefined, from ``(layer, undefined, reason)`` for every layer in order: one line per run
    of adjacent layers undefined for the same reason (``a/x.0 … a/x.7 (8 layers): undefined — mean-z needs at
    least 2 generated images, got 1``), not one per layer: a combination's statistic undefined at every one of
    its layers says it once."""
    runs: list[list[Any]] = []
    adjacent = False
    for layer, undefined, reason in layers:
        if undefined and adjacent and runs[-1][2] == reason:
            runs[-1][1], runs[-1][3] = layer, runs[-1][3] + 1
        elif undefined:
            runs.append([layer, layer, reason, 1])
        adjacent = undefined
    return [f"{first}: undefined — {reason}" if k == 1 else f"{first} … {last} ({k} layers): undefined — {reason}"
            for first, last, reason, k in runs]


def render_memorization(result: MemorizationResult, console: Console) -> None:
    """Print a memorization result: the level at which copying shows, and the curve."""
    from rich import box
    from rich.panel import Panel
    from rich.text import Text

    proto = result.protocol
    header = Text()
    header.append(counted(result.input.n_images, "image"), style="bold")
    header.append(_source(result))
    header.append(f"protocol {proto.name}  digest {short(proto.digest)}  ·  encoder {_encoders(result)}  ·  "
                  f"{compute_text(result)}", style="dim")
    console.print(Panel(header, title="forensics memorization", title_align="left", box=box.ROUNDED), soft_wrap=False)
    style = "bold red" if result.copying else "bold green"
    console.print(Text.assemble(("Copying: ", "bold"), (result.level, style)))
    if result.thresholds:
        from forensics.results import reading_spans

        console.print(Text(f"  read with {reading_rules_text(reading_spans(result.protocol))}", style="dim"))
    console.print(Text("  " + memorization_assumed_text(result.to_dict()), style="dim"))
    from forensics.results import protocol_section, statistic_label

    render_curve(result.curve, console, statistic_label(protocol_section(result.protocol)))
    if result.parts:
        from forensics.results import copying_levels

        console.print(Text("The parts combined, each against T and P_n processed as its images were:", style="bold"))
        for name, part in result.parts:
            values = list(part.fingerprint.values)
            console.print(Text(f"  {part.n_images} {'as generated' if name == 'none' else name}  {sparkline(values)}  "
                               f"copying: {copying_levels(result.protocol, [lv.reading for lv in part.layers])}"))
    render_warnings(result.warnings, console)


OPEN_SET_COLUMN = "open set: right · family · wrong · unknown"


def open_set_text(open_set: Mapping[str, Any] | None) -> str:
    """A matcher's leave-one-out open-set verdicts as one cell (:data:`OPEN_SET_COLUMN`): answered right,
    answered with the generator's family (not which of its generators), answered wrong, unknown."""
    os_ = open_set or {}
    return " · ".join(str(os_.get(k, "—")) for k in ("answered_right", "answered_family", "answered_wrong", "unknown"))


def left_out_text(left_out: Mapping[str, Any] | None) -> str:
    """Leave-generator-out as one cell: runs "unknown" of n, those that named their own generator's
    family (another generator of it still enrolled), and those named as a sibling of it, when any did."""
    lgo = left_out or {}
    notes = [f"family {lgo['family']}"] if lgo.get("family") else []
    if lgo.get("sibling"):
        notes.append(f"{lgo['sibling']} named as a sibling")
    return f"{lgo.get('unknown', '—')}/{lgo.get('n', '—')}" + (f" ({'; '.join(notes)})" if notes else "")


def pooled_line(evaluation: Mapping[str, Any]) -> str | None:
    """Where a matcher's evaluation answered with pooled thresholds (``pooled_cells``), one line saying so."""
    cells = evaluation.get("pooled_cells")
    if not cells:
        return None
    return (f"{evaluation['matcher']}: open-set thresholds pooled over the {cells} (condition, batch size) cells "
            "`registry calibrate` pooled, each fold's chosen without its own points")


def resampling_line(evaluation: Mapping[str, Any]) -> str | None:
    """Where a matcher's evaluation held its answers to the resampling rule (``resampling``), one line saying
    so and how many names it turned into "unknown"."""
    found = evaluation.get("resampling")
    if not found:
        return None
    left_out = ((evaluation.get("leave_generator_out") or {}).get("resampling") or {}).get("turned_unknown", 0)
    return (f"{evaluation['matcher']}: every answer held to the resampling rule as `attribute` holds a batch (a name "
            f"stands where it ranks first in most of {found['resamples']} resamples of the batch's images, seed "
            f"{found['seed']}): it turned {found['turned_unknown']} leave-one-out and {left_out} left-out-generator "
            "answers into \"unknown\"")


def stability_line(matcher: str, stability: Mapping[str, Any]) -> str:
    """How far a matcher's open-set thresholds moved with one run dropped, as one line."""
    parts = []
    for k, t in stability["thresholds"].items():
        if t["full"] is None and t["min"] is None:
            continue
        full = "unused" if t["full"] is None else f"{t['full']:.3g}"
        moved = "" if t["min"] is None else f"{t['min']:.3g}–{t['max']:.3g}"
        unused = f", unused {t['unused']}×" if t["unused"] else ""
        parts.append(f"{k.replace('_', ' ')} {full} (one run dropped: {moved}{unused})")
    return f"{matcher} thresholds: " + ("; ".join(parts) if parts else "not calibrated")
