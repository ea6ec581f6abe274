"""A self-contained HTML report (inline SVG, no scripts, no network) for case files.

It shows what people expect to see: the query curve drawn over the reference curves of every generator,
the similarity ranking, the registry's generator-by-generator similarity heat map, and the full
reproducibility record (protocol, versions, input hash) of the JSON report. It reads an
:class:`~forensics.results.AttributionResult`; the page's record is that result's JSON document.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from forensics.match import lookalike_note
from forensics.report.terminal import printable

if TYPE_CHECKING:
    from forensics.results import AttributionResult

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def _esc(x: Any) -> str:
    # a path that is not UTF-8 (undecodable bytes kept as surrogates) is shown with them escaped
    return html.escape(printable(str(x)), quote=True)


def curves_svg(layers: Sequence[str], query: Sequence[float | None], references: Sequence[tuple[str, str, np.ndarray]],
               colours: dict[str, str], width: int = 720, height: int = 340) -> str:
    pad_l, pad_r, pad_t, pad_b = 56, 150, 16, 60
    q = np.array([np.nan if v is None else v for v in query], dtype=float)
    every = [q[np.isfinite(q)]] + [r[2] for r in references]
    lo = min(float(np.min(a)) for a in every if len(a))
    hi = max(float(np.max(a)) for a in every if len(a))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = (hi - lo) or 1.0
    n = len(layers)
    x = lambda i: pad_l + (width - pad_l - pad_r) * (i / max(1, n - 1))  # noqa: E731
    y = lambda v: pad_t + (height - pad_t - pad_b) * (1 - (v - lo) / span)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             'font-family="sans-serif">']
    parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999" '
                 'stroke-dasharray="4 3"/>')
    for t in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{pad_l - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    for i, name in enumerate(layers):
        parts.append(f'<text transform="translate({x(i):.1f},{height - pad_b + 12}) rotate(40)">{_esc(name)}</text>')
    for gen, _inst, curve in references:
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(curve))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[gen]}" stroke-opacity="0.45" '
                     'stroke-width="1.5"/>')
    pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(q) if np.isfinite(v))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#000" stroke-width="3"/>')
    legend = [("query", "#000")] + [(g, c) for g, c in colours.items()]
    for j, (label, colour) in enumerate(legend):
        yy = pad_t + 14 * j + 6
        parts.append(f'<line x1="{width - pad_r + 10}" x2="{width - pad_r + 30}" y1="{yy}" y2="{yy}" '
                     f'stroke="{colour}" stroke-width="3"/><text x="{width - pad_r + 34}" y="{yy + 4}">{_esc(label)}</text>')
    parts.append(f'<text x="12" y="{pad_t + (height - pad_t - pad_b) / 2:.0f}" transform="rotate(-90 12 '
                 f'{pad_t + (height - pad_t - pad_b) / 2:.0f})" text-anchor="middle">C_T</text></svg>')
    return "".join(parts)


def ranking_svg(candidates: Sequence[dict[str, Any]], colours: dict[str, str], width: int = 520) -> str:
    row = 22
    height = row * len(candidates) + 10
    scores = [c["score"] for c in candidates]
    lo, hi = min(0.0, min(scores)), max(scores) if scores else 1.0
    span = (hi - lo) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12" '
             'font-family="sans-serif">']
    for i, c in enumerate(candidates):
        w = (width - 220) * (c["score"] - lo) / span
        parts.append(f'<text x="130" y="{i * row + 16}" text-anchor="end">{_esc(c["generator"])}</text>'
                     f'<rect x="136" y="{i * row + 4}" width="{max(w, 1):.1f}" height="{row - 6}" '
                     f'fill="{colours.get(c["generator"], "#888")}"/>'
                     f'<text x="{140 + w:.1f}" y="{i * row + 16}">{c["score"]:.3f}</text>')
    return "".join(parts) + "</svg>"


def heatmap_svg(names: Sequence[str], matrix: np.ndarray, cell: int = 34) -> str:
    n = len(names)
    left, top = 120, 110
    width, height = left + cell * n + 10, top + cell * n + 10
    lo, hi = float(matrix.min()), float(matrix.max())
    span = (hi - lo) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             'font-family="sans-serif">']
    for i, name in enumerate(names):
        parts.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4:.0f}" text-anchor="end">{_esc(name)}</text>')
        parts.append(f'<text transform="translate({left + i * cell + cell / 2 + 4:.0f},{top - 6}) rotate(-60)">'
                     f'{_esc(name)}</text>')
        for j in range(n):
            t = (matrix[i, j] - lo) / span
            shade = int(255 - 200 * t)
            parts.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgb({shade},{shade},255)"><title>{_esc(names[i])} vs {_esc(names[j])}: '
                         f'{matrix[i, j]:.3f}</title></rect><text x="{left + j * cell + cell / 2:.0f}" '
                         f'y="{top + i * cell + cell / 2 + 4:.0f}" text-anchor="middle" font-size="9">'
                         f'{matrix[i, j]:.2f}</text>')
    return "".join(parts) + "</svg>"


def attribution_html(result: AttributionResult) -> str:
    """The whole report page for one attribution: the query curve over the enrolled curves, the ranking,
    the registry's generator-by-generator similarity, the curve's table and the JSON record."""
    doc = result.to_dict()
    references = [(r.generator, r.instance, r.fingerprint.vector()) for r in result.references]
    gens = sorted({g for g, _, _ in references})
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(gens)}
    verdict = doc["verdict"]
    title = verdict["generator"] or "unknown"
    names, matrix = result.generator_similarity()
    rows = "".join(f"<tr><td>{_esc(layer)}</td><td>{'—' if v is None else f'{v:+.3f}'}</td><td>{_esc(r)}</td></tr>"
                   for layer, v, r in zip(doc["curve"]["layers"], doc["curve"]["values"], doc["curve"]["readings"]))
    margin = "" if verdict["margin"] is None else f" · margin {verdict['margin']:+.3f}"
    score = "" if verdict["score"] is None else f" · score {verdict['score']:.3f}"
    if verdict.get("distance_ratio") is not None and verdict["generator"] is not None:
        margin += f" · distance {verdict['distance_ratio']:.2f}× {_esc(verdict['generator'])}'s spread"
    note = lookalike_note(verdict["generator"], verdict.get("lookalikes"))
    note = f"<p><b>Caution:</b> {_esc(note)}</p>" if note else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>forensics attribution: {_esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}}
pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:11px}}.dim{{color:#777}}</style></head><body>
<h1>Attribution: {_esc(title)}</h1>
<p>{_esc(doc['input']['n_images'])} images from <code>{_esc(doc['input']['path'])}</code>
(<span class="dim">{_esc(doc['input']['sha256'])}</span>)<br>protocol <b>{_esc(doc['protocol']['name'])}</b>
<span class="dim">{_esc(doc['protocol']['digest'])}</span> · matcher {_esc(doc['matcher'].get('name'))}{score}{margin}
<br><span class="dim">computed on {_esc(doc['compute']['device'])}, {_esc(doc['compute']['amp'] or 'float32')}</span></p>
<p class="dim">{_esc(verdict.get('reason') or '')}</p>{note}
<h2>Query curve over the reference fingerprints</h2>{curves_svg(doc['curve']['layers'], doc['curve']['values'], references, colours)}
<h2>Similarity ranking</h2>{ranking_svg(doc['candidates'], colours)}
<h2>How far apart the registry's generators are</h2>
<p class="dim">Mean similarity between instances of each pair of generators under this protocol.</p>
{heatmap_svg(names, matrix)}
<h2>C_T per layer</h2><table><tr><th>layer</th><th>C_T</th><th>reading</th></tr>{rows}</table>
<h2>Reproducibility record</h2><pre>{_esc(json.dumps(doc, indent=2))}</pre>
</body></html>
"""
