"""Self-contained HTML reports (one file: plots embedded as PNG, no script, no network) for case files,
and the same plots as PNG files for slides.

A report is a :class:`Page`: headings, text, tables, plots and the JSON record, built in order. A plot is
drawn by a function of :mod:`forensics.report.plots` (matplotlib, the extra ``plots``) the first time the
page needs it, embedded in the HTML as a base64 PNG and kept under its name, so that ``--plots DIR``
writes the very same pictures (``DIR/<name>.png``). Without matplotlib a page still reads: a plot falls
back to what the caller gives (a hand-drawn SVG, a table) and the page says once how to get the plots.

The reports here read result objects and compute nothing:

- :func:`attribution_page` — the query curve over each top candidate's enrolled curves, the similarity
  ranking, the registry's generator-by-generator heat map (He et al. 2024, Fig. 6b), C_T per layer;
- :func:`memorization_page` — C_T per layer over the copying and underfitting bands;
- :func:`evaluation_page` — per protocol, each matcher's accuracy and its leave-one-out confusion matrix;
- :func:`invmm_page` — InvMM's scores, and for each image its target beside its verification samples.

Another report is built the same way::

    page = Page("forensics invmm: …")
    page.heading("…")
    page.plot("loss", lambda: my_figure(...), alt="…", fallback="<p>…</p>")
    page.table(["column", …], rows)
    page.record(result.to_dict())
    page.write(html=path, plots_dir=folder)   # either may be None

with ``my_figure`` drawn like those of :mod:`forensics.report.plots` (decorated ``@plots.styled``,
``plots.figure(height)`` for the canvas, :func:`forensics.report.plots.layer_axis` for layer names)
and tested with :func:`forensics.report.plots.layout_problems`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forensics.errors import UsageError
from forensics.match import lookalike_note
from forensics.report import cluster_text
from forensics.report import plots as P
from forensics.report.terminal import (
    OPEN_SET_COLUMN, evaluation_scope, left_out_text, open_set_text, operating_points_text, pooled_line, printable,
    remainder_text, resampling_line, resampling_text, stability_line, undefined_lines,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from forensics.results import AttributionResult, EvaluationResult, InvMMResult, MemorizationResult

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]

STYLE = """body{font-family:'DejaVu Sans',Verdana,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left;
overflow-wrap:normal}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.5em 0}figure img{max-width:100%;height:auto;display:block}
figcaption{color:#666;font-size:.85em}
pre{background:#f6f6f6;padding:1em;font-size:11px;white-space:pre-wrap;overflow-wrap:anywhere}
.dim{color:#777}.warn{color:#8a6d00}.note{background:#fff8e0;padding:.4em .8em;border-left:3px solid #e0b000}"""


def _esc(x: Any) -> str:
    # a path that is not UTF-8 (undecodable bytes kept as surrogates) is shown with them escaped
    return html.escape(printable(str(x)), quote=True)


def slug(name: str) -> str:
    """A plot's name as a file name: letters, digits, ``.``, ``_`` and ``-``, nothing else."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", printable(name)).strip("-.")
    return text or "plot"


def _code_spans(escaped: str) -> str:
    """Escaped text with each span between a pair of backticks set as ``<code>`` (an odd one left as it is)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


class Page:
    """An HTML report being built, part by part; see the module's docstring.

    ``plots``: whether to draw plots (default: when matplotlib is installed). Each plot is drawn once,
    when added; :attr:`figures` keeps (file name, PNG bytes) for :meth:`write`."""

    def __init__(self, title: str, *, plots: bool | None = None) -> None:
        self.title = title
        self.draw = P.available() if plots is None else plots
        self.parts: list[str] = []
        self.figures: list[tuple[str, bytes]] = []
        self._noted = False

    # -- parts -------------------------------------------------------------------------------------
    def heading(self, text: str, level: int = 2) -> Page:
        self.parts.append(f"<h{level}>{_esc(text)}</h{level}>")
        return self

    def text(self, text: str, *, cls: str | None = None) -> Page:
        """A paragraph of plain text (escaped); a `command` between backticks, as the terminal shows it,
        set as code."""
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{_code_spans(_esc(text))}</p>")
        return self

    def raw(self, markup: str) -> Page:
        """Markup the caller built (and escaped, with :func:`_esc`)."""
        self.parts.append(markup)
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = ()) -> Page:
        """A table of plain cells (escaped); the columns at ``numeric`` are right-aligned."""
        head = "".join(f"<th>{_esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f'<td{" class=num" if j in numeric else ""}>{_esc(c)}</td>'
                                        for j, c in enumerate(row)) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def plot(self, name: str, draw: Callable[[], Figure], *, alt: str, caption: str | None = None,
             fallback: str | None = None) -> Page:
        """A plot drawn by ``draw()`` (a matplotlib figure), embedded as PNG and kept as ``<name>.png``;
        without matplotlib, ``fallback`` (markup) and, once per page, how to install the plots."""
        if not self.draw:
            if not self._noted:
                self.parts.append(f'<p class="note">Plots need matplotlib, which the extra '
                                  f"'{P.EXTRA}' installs: <code>{_esc(P.install_hint())}</code>.</p>")
                self._noted = True
            if fallback:
                self.parts.append(fallback)
            return self
        data = P.png(draw())
        file = self._file_name(name)
        self.figures.append((file, data))
        w, h = P.png_size(data)
        scale = 96 / P.DPI   # CSS pixels per PNG pixel: the plot at its size in inches
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure id="{_esc(file[:-4])}"><img alt="{_esc(alt)}" width="{round(w * scale)}" '
                          f'height="{round(h * scale)}" src="data:image/png;base64,'
                          f'{base64.b64encode(data).decode("ascii")}">{cap}</figure>')
        return self

    def record(self, doc: Any, *, heading: str = "Reproducibility record") -> Page:
        """The JSON document, in full, as the report's record."""
        self.heading(heading)
        self.parts.append(f"<pre>{_esc(json.dumps(doc, indent=2))}</pre>")
        return self

    def _file_name(self, name: str) -> str:
        base, taken = slug(name), {f for f, _ in self.figures}
        file, k = f"{base}.png", 2
        while file in taken:
            file, k = f"{base}-{k}.png", k + 1
        return file

    # -- output ------------------------------------------------------------------------------------
    def html(self) -> str:
        body = "\n".join(self.parts)
        return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{_esc(self.title)}</title>\n<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")

    def write(self, *, html: str | os.PathLike[str] | None = None,
              plots_dir: str | os.PathLike[str] | None = None) -> list[Path]:
        """Write the page (``html``) and each plot as ``plots_dir/<name>.png``, each file atomically;
        returns the paths written."""
        from forensics.io.atomic import write_atomic, write_text_atomic

        written = []
        if plots_dir is not None:
            folder = Path(plots_dir)
            for file, data in self.figures:
                written.append(write_atomic(folder / file, lambda f, d=data: f.write(d)))
        if html is not None:
            written.append(write_text_atomic(html, self.html()))
        return written


def check_outputs(html_out: str | os.PathLike[str] | None, plots_dir: str | os.PathLike[str] | None, *,
                  evidence: str | os.PathLike[str] | None = None) -> None:
    """Refuse, before any work, an ``--html`` file or a ``--plots`` folder that cannot be written, and
    ``--plots`` without matplotlib (one line naming the extra). ``evidence``: the images the run reads (a file
    or folder), which an output must not replace (``--html`` the input file) or join (``--plots`` inside the
    folder: its PNGs would be read as images by the next run on it)."""
    from forensics.io.atomic import check_output_path

    if evidence is not None:
        _check_apart(html_out, plots_dir, Path(evidence))
    if html_out is not None:
        check_output_path(html_out)
    if plots_dir is None:
        return
    if html_out is not None and Path(plots_dir).absolute() == Path(html_out).absolute():
        raise UsageError(f"--plots {printable(str(plots_dir))} is the --html file's own path: the plots' folder would "
                         "take its place; give the plots a folder of their own")
    P.require()
    folder = Path(plots_dir)
    shown = printable(str(folder))
    if folder.is_symlink() and not folder.is_dir():
        raise UsageError(f"--plots {shown} is a link to nothing; give a folder")
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"--plots {shown} is a file, not a folder; give a folder (made if missing)")
    else:
        existing = next((p for p in folder.absolute().parents if p.exists()), Path("/"))
        if not existing.is_dir():
            raise UsageError(f"--plots {shown}: {printable(str(existing))} is not a folder")
    _probe_folder(folder, f"--plots {shown}")


def _check_apart(html_out: str | os.PathLike[str] | None, plots_dir: str | os.PathLike[str] | None,
                 evidence: Path) -> None:
    """Refuse an ``--html`` that is the evidence file itself, or a ``--plots`` folder that is, or lies in, the
    evidence folder (:func:`check_outputs`)."""
    try:
        if not evidence.exists():
            return  # the read says what is missing
        where = evidence.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the system refuses: the read says so
        return
    shown = printable(str(evidence))
    if html_out is not None and (Path(html_out).resolve() == where or _same_file(Path(html_out), evidence)):
        raise UsageError(f"--html {printable(str(html_out))} is the images' own file: the report would replace the "
                         "evidence; give another file")
    if plots_dir is not None and where.is_dir():
        folder = Path(plots_dir).resolve()
        if folder == where or where in folder.parents:
            raise UsageError(f"--plots {printable(str(plots_dir))} lies in the images' folder {shown}: its PNG files "
                             "would be read as images by the next run on it; give a folder outside it")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file (a hard link too); False where either is missing or unreadable."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _probe_folder(folder: Path, said: str) -> None:
    """Make ``folder`` where missing and write an empty file in it, as writing the plots will, then take back
    what was made: permissions alone cannot tell (root passes them, /proc or a read-only mount still refuse)."""
    import tempfile

    made: list[Path] = []
    try:
        for missing in reversed([p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]):
            missing.mkdir()
            made.append(missing)
        fd, tmp = tempfile.mkstemp(prefix=".forensics-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{said}: cannot write there ({exc.strerror or exc}); choose another folder") from None
    finally:
        for folder_made in reversed(made):
            try:
                folder_made.rmdir()
            except OSError:
                pass


def write_outputs(page: Page, html_out: str | os.PathLike[str] | None,
                  plots_dir: str | os.PathLike[str] | None) -> list[str]:
    """Write what was asked of ``page`` and return one line per output, for the user."""
    lines = []
    if plots_dir is not None:
        page.write(plots_dir=plots_dir)
        lines.append(f"{len(page.figures)} plot(s) written to {printable(str(plots_dir))} as PNG")
    if html_out is not None:
        page.write(html=html_out)
        lines.append(f"HTML report written to {printable(str(html_out))}")
    return lines


# -- the hand-drawn fallbacks (no matplotlib) ---------------------------------------------------------
def curves_svg(layers: Sequence[str], query: Sequence[float | None], references: Sequence[tuple[str, str, np.ndarray]],
               colours: dict[str, str], width: int = 720, height: int = 360) -> str:
    """The query curve (black) over the enrolled curves, as SVG; layer names shortened and slanted."""
    names, groups = P.layer_groups(layers)
    labels = [P.shorten(s, 18) for s in names]
    longest = max((len(s) for s in labels), default=1)
    pad_l, pad_r, pad_t, pad_b = 56, 150, 24, 16 + int(longest * 6.2 * 0.7)
    height = max(height, pad_t + 200 + pad_b)
    q = np.array([np.nan if v is None else v for v in query], dtype=float)
    every = [q[np.isfinite(q)]] + [np.asarray(r[2], dtype=float) for r in references]
    every = [a[np.isfinite(a)] for a in every]
    lo = min((float(np.min(a)) for a in every if len(a)), default=0.0)
    hi = max((float(np.max(a)) for a in every if len(a)), default=1.0)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = (hi - lo) or 1.0
    n = len(layers)
    x = lambda i: pad_l + (width - pad_l - pad_r) * (i / max(1, n - 1))  # noqa: E731
    y = lambda v: pad_t + (height - pad_t - pad_b) * (1 - (v - lo) / span)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             'font-family="sans-serif" style="max-width:100%;height:auto" '
             f'viewBox="0 0 {width} {height}">']
    parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999" '
                 'stroke-dasharray="4 3"/>')
    for t in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{pad_l - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    step = max(1, int(np.ceil(n * 13 / max(1, width - pad_l - pad_r))))
    for i in range(0, n, step):
        parts.append(f'<text transform="translate({x(i) + 3:.1f},{height - pad_b + 10}) rotate(45)">'
                     f'{_esc(labels[i])}</text>')
    for name, first, end in groups:
        parts.append(f'<text x="{(x(first) + x(end - 1)) / 2:.1f}" y="{pad_t - 8}" text-anchor="middle" '
                     f'fill="#555">{_esc(P.shorten(name, 24))}</text>')
        if first:
            parts.append(f'<line x1="{(x(first - 1) + x(first)) / 2:.1f}" x2="{(x(first - 1) + x(first)) / 2:.1f}" '
                         f'y1="{pad_t}" y2="{height - pad_b}" stroke="#555" stroke-dasharray="2 2"/>')
    for gen, _inst, curve in references:
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(curve) if np.isfinite(v))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours.get(gen, "#888")}" stroke-opacity="0.45" '
                     'stroke-width="1.5"/>')
    pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(q) if np.isfinite(v))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#000" stroke-width="3"/>')
    legend = [("query", "#000")] + [(g, c) for g, c in colours.items()]
    for j, (label, colour) in enumerate(legend):
        yy = pad_t + 14 * j + 6
        parts.append(f'<line x1="{width - pad_r + 10}" x2="{width - pad_r + 30}" y1="{yy}" y2="{yy}" '
                     f'stroke="{colour}" stroke-width="3"/><text x="{width - pad_r + 34}" y="{yy + 4}">'
                     f'{_esc(P.shorten(label, 18))}</text>')
    parts.append(f'<text x="12" y="{pad_t + (height - pad_t - pad_b) / 2:.0f}" transform="rotate(-90 12 '
                 f'{pad_t + (height - pad_t - pad_b) / 2:.0f})" text-anchor="middle">C_T</text></svg>')
    return "".join(parts)


def ranking_svg(candidates: Sequence[dict[str, Any]], colours: dict[str, str], width: int = 520,
                named: Sequence[str] = ()) -> str:
    """The candidates' scores as bars (the fallback of the ranking plot); the bars of ``named`` (the
    verdict, or the generators of the family it named) outlined."""
    row = 22
    height = row * len(candidates) + 10
    scores = [c["score"] for c in candidates]
    lo, hi = (min(0.0, min(scores)), max(scores)) if scores else (0.0, 1.0)
    span = (hi - lo) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12" '
             'font-family="sans-serif">']
    for i, c in enumerate(candidates):
        w = (width - 220) * (c["score"] - lo) / span
        outline = ' stroke="#000" stroke-width="1.6"' if c["generator"] in named else ""
        parts.append(f'<text x="130" y="{i * row + 16}" text-anchor="end">{_esc(P.shorten(c["generator"], 18))}</text>'
                     f'<rect x="136" y="{i * row + 4}" width="{max(w, 1):.1f}" height="{row - 6}" '
                     f'fill="{colours.get(c["generator"], "#888")}"{outline}/>'
                     f'<text x="{140 + w:.1f}" y="{i * row + 16}">{c["score"]:.3f}</text>')
    return "".join(parts) + "</svg>"


def matrix_table(names: Sequence[str], matrix: Any, *, fmt: str = ".2f", corner: str = "") -> str:
    """A square matrix as an HTML table, each cell shaded by its value (the fallback of a heat map)."""
    m = np.asarray(matrix, dtype=float)
    lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 1.0)
    span = (hi - lo) or 1.0
    head = f"<th>{_esc(corner)}</th>" + "".join(f"<th>{_esc(n)}</th>" for n in names)
    rows = []
    for i, name in enumerate(names):
        cells = "".join(f'<td class=num style="background:rgb({int(255 - 150 * (v - lo) / span)},'
                        f'{int(255 - 150 * (v - lo) / span)},255)">{format(v, fmt)}</td>' for v in m[i])
        rows.append(f"<tr><th>{_esc(name)}</th>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


# -- attribution ----------------------------------------------------------------------------------
def _curve_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    curve = doc["curve"]
    weights = curve.get("counted_weight") or [None] * len(curve["layers"])
    return [(layer, "—" if v is None else f"{v:+.3f}", reading, "" if w is None else f"{100 * w:.0f}%")
            for layer, v, reading, w in zip(curve["layers"], curve["values"], curve["readings"], weights)]


def _source_line(doc: dict[str, Any]) -> str:
    from forensics.report import counted
    from forensics.report.terminal import skipped_text

    where = doc["input"]["path"]
    src = f" from <code>{_esc(where)}</code>" if where is not None else " from an array"
    skipped = skipped_text(doc["input"])
    src += f" ({_esc(skipped)})" if skipped else ""
    return (f"{_esc(counted(doc['input']['n_images'], 'image'))}{src} (<span class=dim>{_esc(doc['input']['sha256'])}</span>)"
            f"<br>protocol <b>{_esc(doc['protocol']['name'])}</b> <span class=dim>{_esc(doc['protocol']['digest'])}"
            f"</span> · encoder {_esc(doc['protocol']['encoder'])} · m = {_esc(doc['protocol']['batch_size'])}")


def _compute_line(doc: dict[str, Any]) -> str:
    compute = doc.get("compute") or {}
    where = _esc(compute.get("device"))
    cluster = cluster_text(compute)
    where = f"{_esc(cluster)}'s {where}" if cluster else where
    return f"computed on {where}, {_esc(compute.get('amp') or 'float32')}"


def attribution_page(result: AttributionResult, *, top: int = 4, plots: bool | None = None) -> Page:
    """The report of one attribution: the verdict, the query curve over each of the ``top`` best
    candidates' enrolled curves, the similarity ranking, the registry's generator-by-generator
    similarity, C_T per layer, and the JSON record."""
    from forensics.report.terminal import assumed_text, family_text
    from forensics.results import answer_label

    doc = result.to_dict()
    verdict = doc["verdict"]
    family, members = verdict.get("family"), verdict.get("family_members") or []
    title = answer_label(verdict["generator"], family)
    page = Page(f"forensics attribution: {title}", plots=plots)
    references = [(r.generator, r.instance, r.fingerprint.vector()) for r in result.references]
    gens = sorted({g for g, _, _ in references})
    palette = P.colours(gens) if page.draw else {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(gens)}
    by_generator: dict[str, list[Any]] = {g: [] for g in gens}
    for g, _inst, curve in references:
        by_generator[g].append(curve)
    order = [c["generator"] for c in doc["candidates"]]
    scores = {c["generator"]: c["score"] for c in doc["candidates"]}

    page.heading(f"Attribution: {title}" if family is None or verdict["generator"] is not None else
                 f"Attribution: the family {family} — {family_text(members)}", 1)
    margin = "" if verdict["margin"] is None else f" · margin {verdict['margin']:+.3f}"
    if margin and len(doc["candidates"]) > 1:  # of the best candidate over the runner-up, as the terminal says
        first, second = (_esc(c["generator"]) for c in doc["candidates"][:2])
        margin += f" over {second}" if verdict["generator"] is not None else f" ({first} over {second})"
    score = "" if verdict["score"] is None else f" · score {verdict['score']:.3f}"
    if verdict["score"] is not None and verdict["generator"] is None and doc["candidates"]:
        score += f" ({_esc(doc['candidates'][0]['generator'])})"   # a family's: its best member's
    if verdict.get("distance_ratio") is not None and verdict["generator"] is not None:
        margin += f" · distance {verdict['distance_ratio']:.2f}× {_esc(verdict['generator'])}'s spread"
    page.raw(f"<p>{_source_line(doc)} · matcher {_esc(doc['matcher'].get('name'))}{score}{margin}"
             f"<br><span class=dim>{_compute_line(doc)}</span></p>")
    page.text(verdict.get("reason") or "", cls="dim")
    points, resamples = operating_points_text(verdict), resampling_text(verdict)
    if points:
        page.text(points[0][0].upper() + points[0][1:] + ".", cls="warn" if points[1] else "dim")
    if resamples:  # it may begin with a generator's name, which keeps its case
        page.text("Resampled: " + resamples[0] + ".", cls="warn" if resamples[1] else "dim")
    best = doc["candidates"][0]["generator"] if family is not None and doc["candidates"] else None
    note = lookalike_note(verdict["generator"] or best, verdict.get("lookalikes"))  # a family's: its best member's
    if note:
        page.raw(f"<p><b>Caution:</b> {_esc(note)}</p>")
    page.text(assumed_text(doc) + ".", cls="dim")
    for line in doc.get("warnings") or ():  # a batch too small or not comparable among them
        page.text(line, cls="warn")

    from forensics.results import statistic_label, value_heading

    shown = order[:top]
    label = statistic_label(doc["protocol"])
    page.heading("Query curve over the top candidates' enrolled curves")
    page.plot("curves", lambda: P.curves_figure(doc["curve"]["layers"], doc["curve"]["values"], by_generator, order,
                                                scores=scores, top=top, palette=palette, label=label),
              alt=f"{label} per layer of the query over the enrolled curves of {', '.join(shown)}",
              caption="Black: the query. Colour: the candidate's enrolled runs. Grey: every other enrolled run.",
              fallback=curves_svg(doc["curve"]["layers"], doc["curve"]["values"], references, palette))
    threshold = None
    open_set = doc["matcher"].get("open_set")
    if isinstance(open_set, dict) and open_set.get("calibrated") and open_set.get("score") is not None:
        threshold = float(open_set["score"])
    page.heading("Similarity ranking")
    named = [verdict["generator"]] if verdict["generator"] is not None else list(members)
    page.plot("ranking", lambda: P.ranking_figure([(c["generator"], c["score"]) for c in doc["candidates"]],
                                                  verdict=named, threshold=threshold, palette=palette),
              alt="each generator's similarity score, best first",
              caption="Each generator scored against its closest enrolled run; " + (
                  "the verdict outlined." if verdict["generator"] is not None or family is None else
                  f"the generators of the family named ({', '.join(members)}) outlined."),
              fallback=ranking_svg(doc["candidates"], palette, named=named))
    # the figures as text, as the terminal lists them: what a case file quotes (the closest instance is nowhere else)
    page.table(["#", "generator", "score", "closest instance"],
               [(i, c["generator"], f"{c['score']:.3f}", c.get("instance") or "")
                for i, c in enumerate(doc["candidates"], 1)], numeric=(0, 2))
    names, matrix = result.generator_similarity()
    page.heading("How alike the registry's generators are")
    page.plot("similarity", lambda: P.heatmap_figure(names, matrix),
              alt="mean similarity between every pair of enrolled generators",
              caption="Mean similarity between the enrolled runs of each pair of generators under this "
                      "protocol (diagonal: between a generator's own runs). Generators alike here are hard "
                      "to tell apart.",
              fallback=matrix_table(names, matrix))
    if len(result.batches) > 1:
        tally = ", ".join(f"{g} × {n}" for g, n in result.batch_votes)
        page.text(f"Per batch of {doc['protocol']['batch_size']}: {tally} (the verdict above is on the mean curve).")
    if (rest := remainder_text(result)) is not None:
        page.text(rest + ".", cls="warn")
    page.heading(f"{label} per layer")
    page.table(["layer", value_heading(label), "reading", "P_n counted"], _curve_rows(doc),
               numeric=(1, 3))
    page.record(doc)
    return page


def attribution_html(result: AttributionResult) -> str:
    """The whole report page for one attribution (:func:`attribution_page`), as HTML."""
    return attribution_page(result).html()


# -- memorization ---------------------------------------------------------------------------------
def memorization_page(result: MemorizationResult, *, plots: bool | None = None) -> Page:
    """The report of a memorization run: where copying shows, C_T per layer over the copying and
    underfitting bands, the table, and the JSON record."""
    doc = result.to_dict()
    page = Page(f"forensics memorization: {doc['level']}", plots=plots)
    page.heading(f"Copying: {doc['level']}", 1)
    page.raw(f"<p>{_source_line(doc)}<br><span class=dim>{_compute_line(doc)}</span></p>")
    thresholds = doc.get("thresholds") or {}
    from forensics.results import reading_spans

    spans = reading_spans(result.protocol)
    if thresholds:
        from forensics.report.terminal import reading_rules_text

        page.text(f"Read with {reading_rules_text(spans)}: |C_T| > 2 is significant; below the copying line "
                  "the images sit closer to the training set than fresh data does.", cls="dim")
    from forensics.report.terminal import memorization_assumed_text

    page.text(memorization_assumed_text(doc) + ".", cls="dim")
    for line in doc.get("warnings") or ():  # a set smaller than the protocol's batch among them
        page.text(line, cls="warn")
    curve = doc["curve"]
    from forensics.results import statistic_label, value_heading

    what = statistic_label(doc["protocol"])
    page.heading(f"{what} per layer")
    parts = {f"{p['n_images']} {'as generated' if p['condition'] == 'none' else p['condition']}": p["curve"]["values"]
             for p in doc.get("parts") or ()}
    page.plot("curve", lambda: P.memorization_figure(curve["layers"], curve["values"], curve["readings"], thresholds,
                                                     parts=parts, label=what,
                                                     spans=[(a, b, t) for _, a, b, t in spans]),
              alt=f"{what} per layer, each point coloured by its reading",
              caption="Early layers see colour and texture, late layers meaning. Red band: copying; blue "
                      "band: underfitting; a hollow mark: undefined (no cell held enough images)."
                      + (" Grey: each kind of file alone, the parts the curve combines." if parts else ""),
              fallback=curves_svg(curve["layers"], curve["values"],
                                  [(label, "", np.array([np.nan if v is None else v for v in values], dtype=float))
                                   for label, values in parts.items()],
                                  {label: "#888" for label in parts}))
    page.table(["layer", value_heading(what), "reading", "P_n counted"], _curve_rows(doc),
               numeric=(1, 3))
    undefined = curve.get("undefined") or {}
    for line in undefined_lines((layer, layer in undefined, undefined.get(layer)) for layer in curve["layers"]):
        page.text(line, cls="warn")
    if doc.get("parts"):
        page.heading("The parts combined")
        page.text("Each kind of file scored against T and P_n put through the same processing; the curve above "
                  "combines them, weighted so that they read as one batch of them all would.",
                  cls="dim")
        rows = [(layer, *("—" if values[j] is None else f"{values[j]:+.3f}" for values in parts.values()))
                for j, layer in enumerate(curve["layers"])]
        page.table(["layer", *parts], rows, numeric=tuple(range(1, len(parts) + 1)))
        for label, part in zip(parts, doc["parts"]):
            page.text(f"{label}: copying {part['level']}.")
    page.record(doc)
    return page


# -- registry evaluate ----------------------------------------------------------------------------
def evaluation_page(result: EvaluationResult, *, plots: bool | None = None) -> Page:
    """The report of ``registry evaluate``: per protocol, each matcher's leave-one-out accuracy, open-set
    verdicts and leave-generator-out rate, and its confusion matrix; then the JSON record."""
    doc = result.to_dict()
    page = Page("forensics registry evaluation", plots=plots)
    page.heading("Registry evaluation", 1)
    page.raw(f"<p>registry <code>{_esc(doc['registry'])}</code>: {len(doc['protocols'])} protocol(s), every "
             "enrolled instance attributed with itself left out (leave-one-out).</p>")
    for p in doc["protocols"]:
        page.heading(f"{p['protocol']}: {p['n_instances']} instances of {p['n_generators']} generators — "
                     f"leave-one-out{evaluation_scope(p)}")
        page.raw(f"<p class=dim>protocol digest <code>{_esc(p['digest'])}</code></p>")
        rows, bars = [], []
        # the paper's own split (test_batch), where the registry records one: a column only where it does
        with_split = any("correct" in (m.get("split") or {}) for m in p["matchers"])
        for m in p["matchers"]:
            if m.get("error"):
                rows.append((m["matcher"], "—", "—", f"error: {m['error']}", "", "")[:6 if with_split else 5])
                continue
            os_ = m.get("open_set") or {}
            lgo = m.get("leave_generator_out") or {}
            split = m.get("split") or {}
            rows.append((m["matcher"], f"{m['loo_accuracy']:.3f}", f"{m['correct']}/{m['n']}",
                         open_set_text(os_), left_out_text(lgo),
                         f"{split['correct']}/{split['n']}" if "correct" in split else "—")[:6 if with_split else 5])
            bars.append((m["matcher"], m["loo_accuracy"], lgo.get("unknown_rate")))
        page.table(["matcher", "LOO accuracy", "right / n", OPEN_SET_COLUMN, "generator left out: unknown",
                    "split (test_batch)"][:6 if with_split else 5], rows, numeric=(1, 2, 4, 5))
        if bars:
            page.plot(f"accuracy-{p['protocol']}", lambda bars=bars: P.accuracy_figure(bars),
                      alt=f"leave-one-out accuracy and leave-generator-out unknown rate per matcher on {p['protocol']}")
        for line in filter(None, [*map(pooled_line, p["matchers"]), *map(resampling_line, p["matchers"])]):
            page.text(line, cls="dim")
        for m in p["matchers"]:
            if "calibration_stability" in m:
                page.text(stability_line(m["matcher"], m["calibration_stability"]), cls="dim")
        for m in p["matchers"]:
            conf = m.get("confusion")
            if not conf or m.get("error") or not conf.get("labels"):
                continue
            page.heading(f"{p['protocol']} · {m['matcher']}: confusion (rows true, columns predicted)", 3)
            page.plot(f"confusion-{p['protocol']}-{m['matcher']}",
                      lambda conf=conf: P.confusion_figure(conf["labels"], conf["matrix"]),
                      alt=f"confusion matrix of {m['matcher']} on {p['protocol']}",
                      caption=f"{m['correct']} of {m['n']} instances named right ({m['loo_accuracy']:.3f}); "
                              "off the diagonal: which generator each miss was named as.",
                      fallback=matrix_table(conf["labels"], conf["matrix"], fmt=".0f", corner="true \\ predicted"))
    page.record(doc)
    return page


def image_strip(images: Sequence[np.ndarray], *, scale: int = 3, gap: int = 2) -> str:
    """uint8 images (H, W) or (H, W, C) of one size side by side, as an inline PNG ``<img>`` (Pillow, no
    matplotlib), each enlarged ``scale`` times with nearest-neighbour so that pixels stay pixels."""
    import io

    from PIL import Image

    tiles = [np.asarray(im, dtype=np.uint8) for im in images]
    h, w = tiles[0].shape[:2]
    rgb = [np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t[..., :3] for t in tiles]
    canvas = np.full((h, len(rgb) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, t in enumerate(rgb):
        canvas[:, i * (w + gap):i * (w + gap) + w] = t
    im = Image.fromarray(canvas).resize((canvas.shape[1] * scale, h * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return (f'<img class="strip" alt="target and samples" width="{im.width}" height="{im.height}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">')


def invmm_page(result: InvMMResult, *, plots: bool | None = None) -> Page:
    """InvMM: the scores and best similarities of every image, then each image's target beside the
    verification samples of its last check, with their similarities."""
    doc = result.to_dict()
    sim = doc["similarity"]
    page = Page(f"forensics invmm: {result.input.n_images} images, {doc['model']['name']}", plots=plots)
    page.heading(f"InvMM: {result.input.n_images} images against {doc['model']['name']}", level=1)
    s = doc["summary"]
    page.text(f"{s['succeeded']} of {s['n_images']} images reproduced within {doc['settings']['max_steps']} steps"
              + (f"; median score {s['median_score']:.4g}" if s["median_score"] is not None else "")
              + ". The score is the KL divergence from N(0, I) of the noise distribution that makes the model "
                "reproduce the image (lower = more memorized); ∞ = never reproduced.")
    page.text(f"preset {result.preset} · similarity {sim['name']} (β {sim['threshold']:g}) · seed {result.seed} · "
              f"{doc['compute']['device']} · {result.seconds:.1f} s (optimisation "
              f"{doc['timing']['optimisation_seconds']:.1f} s, verification {doc['timing']['verification_seconds']:.1f} s)",
              cls="dim")
    for line in doc.get("warnings") or ():
        page.text(line, cls="warn")
    page.plot("invmm-scores", lambda: P.invmm_figure(result.scores, [r.success for r in result.inversions],
                                                     [r["best_similarity"] for r in doc["images"]],
                                                     float(sim["threshold"])),
              alt="InvMM scores and best verification similarities")
    named = any("file" in r for r in doc["images"])  # a folder: each image names its file
    page.table(["image", *(["file"] if named else []), "score", "reproduced", "steps", "best similarity", "seconds"],
               [[r["index"], *([r.get("file", "")] if named else []),
                 "∞" if r["score"] is None else f"{r['score']:.4g}", "yes" if r["success"] else "no",
                 r["steps"], "—" if r["best_similarity"] is None else f"{r['best_similarity']:.4f}",
                 f"{r['seconds']:.1f}"] for r in doc["images"]],
               numeric=(0, 2, 4, 5, 6) if named else (0, 1, 3, 4, 5))
    page.heading("Each image: the target, then the samples of its last verification")
    for inv, row, target in zip(result.inversions, doc["images"], result.targets):
        page.heading(f"image {inv.index}" + (f" ({row['file']})" if "file" in row else "") + ": "
                     + (f"score {inv.score:.4g} at step {inv.steps}" if inv.success
                        else f"not reproduced in {inv.steps} steps"), level=3)
        if inv.samples is None:
            page.text("no verification ran (fewer steps than one check)", cls="dim")
            continue
        page.raw(image_strip([target, *inv.samples]))
        sims = ", ".join("—" if v is None else f"{v:.4f}" for v in row["similarities"])
        page.text(f"similarities to the target: {sims}"
                  + (f" (guidance {row['guidance']:g})" if row["guidance"] not in (None, 1.0) else ""), cls="dim")
    page.record(doc)
    return page
