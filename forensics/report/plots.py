"""The reports' plots, drawn with matplotlib (the optional extra ``plots``).

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot: no global
state, no GUI backend (Agg renders it), nothing left open. They are drawn under matplotlib's default
style whatever the user's ``matplotlibrc`` says, with the fonts matplotlib ships, so one plot is the same
PNG on every machine with the same matplotlib; :func:`png` writes no date or software version into it.

Layer names are long (``mnist-effnet-lite0/blocks.3``) and many: :func:`layer_axis` draws them rotated,
at a size that keeps neighbours apart, one in k when there are too many to read, and names a
combination's protocols once, above the curve, instead of on every tick. :func:`layout_problems` lists
any text that the figure's edge cuts or that overlaps other text; the tests hold every plot to it, and
a new report's plots (``invmm``, …) can be held to it the same way.

matplotlib is imported only when a plot is drawn: :func:`require` raises a one-line
:class:`~forensics.errors.MissingExtra` naming the extra when it is missing.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

F = TypeVar("F", bound=Callable[..., Any])

#: the optional dependency group that installs matplotlib
EXTRA = "plots"
#: how the reports colour C_T readings, as the terminal report does
READING_COLOURS = {"copying": "#d62728", "underfitting": "#1f77b4", "no evidence": "#7f7f7f",
                   "undefined": "#bcbd22"}
QUERY_COLOUR = "#000000"
TITLE_PAD = 16.0     # points between an axes and its title when protocol names sit in between
WIDTH = 9.0          # inches: every plot is this wide, so they line up in the HTML page
DPI = 144            # pixels per inch of the PNGs (1.5× a screen's 96: crisp on high-density screens)


def distribution() -> str:
    """The name this package is installed under (what ``pip install`` takes), ``forensics`` when unknown."""
    try:
        from importlib.metadata import packages_distributions

        names = packages_distributions().get("forensics") or []
    except Exception:  # noqa: BLE001 - metadata of other packages may be broken; the hint still helps
        names = []
    return names[0] if names else "forensics"


def install_hint() -> str:
    """The command that installs the plots: ``pip install '<distribution>[plots]'``."""
    return f"pip install '{distribution()}[{EXTRA}]'"


def available() -> bool:
    """Whether matplotlib can be imported (the extra ``plots`` is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    """Raise a one-line :class:`~forensics.errors.MissingExtra` (exit 1, as for every extra a job needs) that
    names the extra when matplotlib is missing."""
    from forensics.extras import require as need

    need(EXTRA, "plots (--plots: each plot as a PNG file)")


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib's default style and a few settings of ours, whatever the user's rc files say."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context({
        "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
        "svg.hashsalt": "forensics", "path.simplify": True, "figure.dpi": DPI, "savefig.dpi": DPI,
    }):
        yield


def styled(draw: F) -> F:
    """Draw under :func:`_style` (rc settings are read when artists are made, so building counts too)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require()
        with _style():
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure(height: float, *, width: float = WIDTH) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def png(fig: Figure, *, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes: Agg, tight bounds (nothing cut), no timestamp or version in the file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with _style():
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08, facecolor="white",
                    metadata={"Software": None})
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG bytes, read from the IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per name (in the order given), from matplotlib's qualitative maps without their greys (grey
    is the plots' own colour for every other enrolled run and for "no evidence"): the same generator has the
    same colour in every plot of a page."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex, to_rgb

    cmap = colormaps["tab10" if len(names) <= 9 else "tab20"]
    hues = [to_hex(cmap(i)) for i in range(cmap.N) if len(set(to_rgb(cmap(i)))) > 1]  # R = G = B: a grey
    return {n: hues[i % len(hues)] for i, n in enumerate(names)}


def shorten(text: str, limit: int = 28) -> str:
    """``text`` cut in the middle with an ellipsis when longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[-(limit - 1 - head):]


def layer_groups(layers: Sequence[str]) -> tuple[list[str], list[tuple[str, int, int]]]:
    """A combination's layer names (``<protocol>/<layer>``) split into the layer names and the runs of
    consecutive layers of one protocol, as (protocol, first, last + 1); no runs when a name has no
    ``/``."""
    if not layers or not all("/" in name for name in layers):
        return list(layers), []
    heads, tails = zip(*(name.split("/", 1) for name in layers))
    groups: list[tuple[str, int, int]] = []
    for i, head in enumerate(heads):
        if groups and groups[-1][0] == head and groups[-1][2] == i:
            groups[-1] = (head, groups[-1][1], i + 1)
        else:
            groups.append((head, i, i + 1))
    return list(tails), groups


def _tick_plan(labels: Sequence[str], span_pt: float) -> tuple[float, float, int]:
    """(font size, rotation, step) that keep neighbouring tick labels apart over ``span_pt`` points of
    axis: flat when they fit side by side, else slanted at 45° or upright at 90°, the font as large as
    the spacing allows (6–9 pt), and one label in ``step`` when even 6 pt upright would overlap."""
    n = max(1, len(labels))
    spacing = span_pt / n
    longest = max((len(s) for s in labels), default=1)
    for rotation, room in ((0.0, None), (45.0, math.sin(math.radians(45))), (90.0, 1.0)):
        if rotation == 0.0:
            size = min(9.0, spacing / (0.62 * longest + 1.0))
        else:
            size = min(9.0, spacing * room / 1.35)
        if size >= 7.0 or (rotation == 90.0 and size >= 6.0):
            return size, rotation, 1
    step = math.ceil(6.0 * 1.35 / spacing)
    return 6.0, 90.0, step


def layer_axis(ax: Axes, layers: Sequence[str], *, span_in: float, ticklabels: bool = True,
               group_labels: bool = True) -> bool:
    """Put the layers on ``ax``'s x axis (positions 0 … n-1), readable however many and however long:
    see :func:`_tick_plan`. A combination's protocols are named once each just above the axes (when
    ``group_labels``), with a dotted line where one protocol's layers end. Returns whether names were put
    above the axes: a title then needs ``pad=TITLE_PAD`` to clear them."""
    names, groups = layer_groups(layers)
    labels = [shorten(s) for s in names]
    size, rotation, step = _tick_plan(labels, span_in * 72.0)
    ticks = list(range(0, len(labels), step))
    ax.set_xticks(ticks)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    if ticklabels:
        ax.set_xticklabels([labels[i] for i in ticks], fontsize=size, rotation=rotation,
                           ha="center" if rotation in (0.0, 90.0) else "right",
                           rotation_mode="anchor" if rotation == 45.0 else "default")
    else:
        ax.tick_params(axis="x", labelbottom=False)
    for _, first, _ in groups[1:]:
        ax.axvline(first - 0.5, color="#555555", lw=0.8, ls=":")
    if group_labels and len(groups) > 0:
        from matplotlib.transforms import blended_transform_factory

        trans = blended_transform_factory(ax.transData, ax.transAxes)
        per_layer = span_in * 72.0 / max(1, len(layers))
        for name, first, end in groups:
            room = per_layer * (end - first)               # points of axis this protocol spans
            fit = max(4, int(room / (0.62 * 8.0)))          # characters of 8 pt that fit in it
            ax.text((first + end - 1) / 2, 1.01, shorten(name, fit), transform=trans, ha="center", va="bottom",
                    fontsize=8, color="#333333")
        return True
    return False


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


#: a value axis turns logarithmic beyond ±LINEAR once some value passes ±LOG_BEYOND: a combination's
#: mean-z layers reach the hundreds, and on one linear scale with them C_T's layers and their ±2 bands are a
#: flat line
LOG_BEYOND = 12.0
LINEAR = 3.0


def _value_axis(ax: Axes, finite: np.ndarray, label: str) -> None:
    """The value axis of a curve plot: linear, or symmetric-logarithmic (linear within ±:data:`LINEAR`) where
    the values span far more than C_T's significance, its label saying which."""
    if finite.size and (top := float(np.max(np.abs(finite)))) > LOG_BEYOND:
        from matplotlib.ticker import FixedLocator, FuncFormatter

        ax.set_yscale("symlog", linthresh=LINEAR, linscale=1.5)
        # ticks at 0, at ±2 (where C_T turns significant) and at the powers of ten beyond: plain numbers, none
        # crowded into the linear part
        decades = [10.0 ** k for k in range(1, int(np.ceil(np.log10(top))) + 1)]
        ticks = sorted({0.0, 2.0, -2.0, *decades, *(-d for d in decades)})
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(FixedLocator([]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        label = f"{label}\nlinear to ±{LINEAR:g}, log beyond"  # two short lines: a panel is under 2 in. high
    ax.set_ylabel(label)


@styled
def curves_figure(layers: Sequence[str], query: Sequence[float | None],
                  references: Mapping[str, Sequence[Sequence[float | None]]], order: Sequence[str], *,
                  scores: Mapping[str, float] | None = None, top: int = 4,
                  palette: Mapping[str, str] | None = None, label: str = "C_T") -> Figure:
    """The query curve over each of the ``top`` first generators of ``order``: one panel per generator,
    its enrolled curves in its colour, every other enrolled curve faint grey behind, the query black.
    Panels share both axes; the layer names are under the last one."""
    shown = list(order)[:top] or list(references)[:top]
    palette = dict(palette or colours(sorted(references)))
    q = _finite(query)
    rows = max(1, len(shown))
    fig = figure(1.1 + 1.9 * rows)
    axes = fig.subplots(rows, 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    x = np.arange(len(layers))
    every = [q[np.isfinite(q)]] + [_finite(c) for cs in references.values() for c in cs]
    finite = np.concatenate([a[np.isfinite(a)] for a in every]) if every else np.zeros(1)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    pad = 0.06 * ((hi - lo) or 1.0)
    for k, (ax, gen) in enumerate(zip(axes, shown)):
        for other, curves in references.items():
            if other != gen:
                for c in curves:
                    ax.plot(x, _finite(c), color="#cccccc", lw=0.7, zorder=1)
        for j, c in enumerate(references.get(gen, ())):
            ax.plot(x, _finite(c), color=palette.get(gen, "#888888"), lw=1.6, alpha=0.9, zorder=2,
                    label=f"{gen} (enrolled)" if j == 0 else None)
        ax.plot(x, q, color=QUERY_COLOUR, lw=2.4, marker="o", ms=3, zorder=3, label="query")
        undefined = np.flatnonzero(~np.isfinite(q))
        if undefined.size:  # the matcher reads an undefined value as 0 (the paper's rule): shown there, hollow
            ax.plot(undefined, np.zeros(undefined.size), ls="", marker="o", ms=5, mfc="white", mec=QUERY_COLOUR,
                    zorder=3, label="query: undefined (read as 0)" if k == 0 else None)
        ax.axhline(0.0, color="#999999", lw=0.8, ls="--", zorder=0)
        _value_axis(ax, finite, label)
        ax.set_ylim(lo - pad, hi + pad)
        ax.grid(axis="y", color="#eeeeee", lw=0.6)
        ax.legend(loc="upper right", fontsize=7, frameon=False, ncols=2)
        named = layer_axis(ax, layers, span_in=WIDTH - 0.9, ticklabels=k == rows - 1, group_labels=k == 0)
        score = f" — score {scores[gen]:.3f}" if scores and gen in scores else ""
        ax.set_title(f"#{k + 1} {shorten(gen, 48)}{score}", loc="left", fontsize=9,
                     pad=TITLE_PAD if named else 6.0)
    return fig


@styled
def ranking_figure(candidates: Sequence[tuple[str, float]], *, verdict: str | Sequence[str] | None = None,
                   threshold: float | None = None, palette: Mapping[str, str] | None = None) -> Figure:
    """The candidates' scores as horizontal bars, best on top; the verdict's bar outlined (a sequence:
    each of the generators named, as those of a family verdict), the calibrated score threshold (below
    it: unknown) as a dashed line when the matcher has one."""
    outlined = {verdict} if isinstance(verdict, str) else set(verdict or ())
    names = [g for g, _ in candidates]
    scores = np.array([s for _, s in candidates], dtype=float)
    palette = dict(palette or colours(sorted(names)))
    fig = figure(1.4 + 0.3 * max(1, len(names)))
    ax = fig.subplots()
    y = np.arange(len(names))
    bars = ax.barh(y, scores, color=[palette.get(g, "#888888") for g in names], height=0.7)
    for bar, g in zip(bars, names):
        if g in outlined:
            bar.set_edgecolor("black")
            bar.set_linewidth(1.6)
    ax.set_yticks(y, [shorten(g, 32) for g in names])
    ax.invert_yaxis()
    marks = [0.0, *scores.tolist(), *([] if threshold is None else [float(threshold)])]
    lo, hi = min(marks), max(marks)
    span = (hi - lo) or 1.0
    ax.set_xlim(lo, hi + 0.14 * span)
    for yi, s in zip(y, scores):
        ax.text(max(s, 0.0) + 0.01 * span, yi, f"{s:.3f}", va="center", fontsize=8)
    if threshold is not None:
        ax.axvline(threshold, color="#444444", ls="--", lw=1)
        ax.text(threshold, 1.0, " unknown below", transform=ax.get_xaxis_transform(), fontsize=7, va="bottom",
                ha="left", color="#444444")
    ax.set_xlabel("similarity score (higher: closer)")
    ax.grid(axis="x", color="#eeeeee", lw=0.6)
    ax.set_axisbelow(True)
    return fig


def _matrix_figure(names: Sequence[str], matrix: np.ndarray, *, cmap: str, label: str, fmt: str,
                   xlabel: str | None = None, ylabel: str | None = None, zero: str | None = None,
                   vmin: float | None = None, vmax: float | None = None) -> Figure:
    n = len(names)
    labels = [shorten(s, 24) for s in names]
    longest = max((len(s) for s in labels), default=1)
    cell = min(0.55, max(0.22, 6.0 / max(1, n)))                  # inches per cell
    size = min(9.0, max(6.0, cell * 72 / 2.2))                      # tick font fitting one cell
    side = 0.75 + longest * size * 0.62 / 72                        # room for the row names (inches)
    width = min(WIDTH, side + n * cell + 1.5)
    height = 0.6 + side * 0.75 + n * cell
    fig = figure(height, width=width)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
    ax.set_yticks(range(n), labels, fontsize=size)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label(label)
    if n <= 16:
        norm = image.norm
        cm = image.get_cmap()
        for i in range(n):
            for j in range(n):
                v = float(matrix[i, j])
                r, g, b, _ = cm(norm(v))
                ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"
                text = zero if zero is not None and v == 0 else format(v, fmt)
                ax.text(j, i, text, ha="center", va="center", fontsize=max(5.5, size - 1.5), color=ink)
    return fig


@styled
def heatmap_figure(names: Sequence[str], matrix: np.ndarray, *, label: str = "mean similarity") -> Figure:
    """The registry's generators against each other (He et al. 2024, Fig. 6b): each cell the mean
    similarity between the two generators' enrolled curves, the diagonal within one generator."""
    m = np.asarray(matrix, dtype=float)
    return _matrix_figure(names, m, cmap="viridis", label=label, fmt=".2f")


@styled
def confusion_figure(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> Figure:
    """A leave-one-out confusion matrix: rows the true generator, columns the one the matcher named."""
    m = np.asarray(matrix, dtype=float)
    return _matrix_figure(labels, m, cmap="Blues", label="instances", fmt=".0f", xlabel="predicted",
                          ylabel="true", zero="·", vmin=0.0, vmax=max(1.0, float(m.max()) if m.size else 1.0))


@styled
def memorization_figure(layers: Sequence[str], values: Sequence[float | None], readings: Sequence[str],
                        thresholds: Mapping[str, float] | None = None,
                        parts: Mapping[str, Sequence[float | None]] | None = None, label: str = "C_T", *,
                        spans: Sequence[tuple[int, int, Mapping[str, float]]] | None = None) -> Figure:
    """C_T (or the statistics ``label`` names) per layer, each point in its reading's colour, over the bands the
    statistic reads as copying (below) and underfitting (above; mean-z's ``differs_beyond``: both sides); an
    undefined layer is a hollow mark on the zero line. ``spans`` ((first, stop, thresholds) per combined
    protocol, in curve order) gives each protocol's layers its own statistic's bands, else ``thresholds`` holds
    for every layer. ``parts`` (label → values): the curves a combined one was made of (files processed in
    several ways), thin grey."""
    from matplotlib.lines import Line2D

    v = _finite(values)
    x = np.arange(len(layers))
    fig = figure(3.6)
    ax = fig.subplots()
    drawn = {label: _finite(p) for label, p in (parts or {}).items()}
    finite = np.concatenate([v[np.isfinite(v)], *(p[np.isfinite(p)] for p in drawn.values())])
    spans = list(spans) if spans else [(0, len(layers), dict(thresholds or {}))]
    bands = [(a, b, *_bands(t)) for a, b, t in spans]
    marks = list(finite) + [t for *_, below, above in bands for t in (below, above) if t is not None] + [0.0]
    lo, hi = min(marks), max(marks)
    pad = 0.12 * ((hi - lo) or 1.0)
    lo, hi = lo - pad, hi + pad
    for a, b, low_reading, below, above in bands:
        left, right = (-0.5 if a == 0 else a - 0.5), (len(layers) - 0.5 if b >= len(layers) else b - 0.5)
        if below is not None:
            colour = READING_COLOURS[low_reading]
            ax.fill_between([left, right], lo, below, color=colour, alpha=0.08, lw=0)
            ax.plot([left, right], [below, below], color=colour, lw=0.8, ls="--")
        if above is not None:
            colour = READING_COLOURS["underfitting"]
            ax.fill_between([left, right], above, hi, color=colour, alpha=0.08, lw=0)
            ax.plot([left, right], [above, above], color=colour, lw=0.8, ls="--")
    ax.axhline(0.0, color="#999999", lw=0.8)
    styles = [(0, (4, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 3))]
    for (name, p), style in zip(drawn.items(), styles * (1 + len(drawn) // len(styles))):
        ax.plot(x, p, color="#8a8a8a", lw=1.0, ls=style, zorder=1, label=name)
    ax.plot(x, v, color=QUERY_COLOUR, lw=1.6, zorder=2)
    for reading, colour in READING_COLOURS.items():
        idx = [i for i, r in enumerate(readings) if r == reading]
        if not idx:
            continue
        if reading == "undefined":
            ax.scatter(idx, [0.0] * len(idx), s=40, facecolors="none", edgecolors=colour, lw=1.5, zorder=3)
        else:
            ax.scatter(idx, v[idx], s=30, color=colour, zorder=3)
    _value_axis(ax, finite, label)
    ax.set_ylim(lo, hi)
    ax.grid(axis="y", color="#eeeeee", lw=0.6)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=r) for r, c in READING_COLOURS.items()
               if r in readings]
    handles += [Line2D([], [], color="#8a8a8a", lw=1.0, ls=style, label=name)
                for name, style in zip(drawn, styles * (1 + len(drawn) // len(styles)))]
    # under the layer names, outside the axes: in their upper right it hid the points that sit highest
    fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False, ncols=len(handles) or 1)
    layer_axis(ax, layers, span_in=WIDTH - 0.9)
    return fig


def _bands(thresholds: Mapping[str, float]) -> tuple[str, float | None, float | None]:
    """A statistic's reading cut-offs as (what the band below reads as, its upper edge, the edge of the
    underfitting band above): C_T's copying below and underfitting above; mean-z's ``differs_beyond``,
    underfitting on both sides."""
    if "differs_beyond" in thresholds:
        t = abs(float(thresholds["differs_beyond"]))
        return "underfitting", -t, t
    return "copying", thresholds.get("copying_below"), thresholds.get("underfitting_above")


@styled
def accuracy_figure(rows: Sequence[tuple[str, float | None, float | None]]) -> Figure:
    """Per matcher: leave-one-out accuracy and the share of left-out generators' runs that came out
    "unknown", side by side (both higher is better)."""
    names = [shorten(r[0], 24) for r in rows]
    acc = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=float)
    unk = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=float)
    fig = figure(0.9 + 0.42 * max(1, len(rows)), width=WIDTH * 0.8)
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y - 0.18, np.nan_to_num(acc), height=0.34, color="#1f77b4", label="leave-one-out accuracy")
    ax.barh(y + 0.18, np.nan_to_num(unk), height=0.34, color="#ff7f0e", label="generator left out: unknown")
    for yi, a, u in zip(y, acc, unk):
        for dy, val in ((-0.18, a), (0.18, u)):
            ax.text((0.0 if np.isnan(val) else val) + 0.01, yi + dy, "—" if np.isnan(val) else f"{val:.2f}",
                    va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("share of instances")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=7, frameon=False)
    ax.grid(axis="x", color="#eeeeee", lw=0.6)
    ax.set_axisbelow(True)
    return fig


@styled
def invmm_figure(scores: Sequence[float], success: Sequence[bool], best_similarity: Sequence[float | None],
                 threshold: float) -> Figure:
    """InvMM's scores, one point per image: the KL of each reproduced image (log scale, lower = more
    memorized) on the left; on the right each image's best verification similarity against β, so the
    images never reproduced (score ∞) show how near they came."""
    fig = figure(3.0)
    ax_score, ax_sim = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    ok = [float(s) for s, good in zip(scores, success) if good]
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(ok))
    if ok:
        ax_score.scatter(np.array(ok), jitter, s=22, color="#d62728", alpha=0.8)
        if max(ok) / max(min(ok), 1e-12) > 20:
            ax_score.set_xscale("log")
    else:
        ax_score.text(0.5, 0.5, "no image reproduced: every score is ∞", transform=ax_score.transAxes,
                      ha="center", va="center", fontsize=8, color="#777777")
        ax_score.set_xticks([])
    ax_score.set_ylim(-0.5, 0.5)
    ax_score.set_yticks([])
    ax_score.set_xlabel("score: KL at success (lower = more memorized)")
    ax_score.set_title(f"{len(ok)} of {len(scores)} images reproduced", fontsize=8)
    sims = np.array([np.nan if v is None else float(v) for v in best_similarity], dtype=float)
    colours = ["#d62728" if good else "#1f77b4" for good in success]
    ax_sim.scatter(sims, np.random.default_rng(1).uniform(-0.15, 0.15, len(sims)), s=22, c=colours, alpha=0.8)
    ax_sim.axvline(threshold, color="#444444", lw=0.9, ls="--")
    ax_sim.text(threshold, 0.42, f"β {threshold:g} ", fontsize=7, va="top", ha="right")
    ax_sim.set_ylim(-0.5, 0.5)
    ax_sim.set_yticks([])
    ax_sim.set_xlabel("best verification similarity")
    ax_sim.set_title("red: reproduced · blue: never", fontsize=8)
    for ax in (ax_score, ax_sim):
        ax.grid(axis="x", color="#eeeeee", lw=0.6)
    return fig


def layout_problems(fig: Figure) -> list[str]:
    """Text that the figure's edge cuts, or that overlaps other text (tick labels, titles, legends, cell
    values): one line per problem; none means every label can be read. Draws the figure (Agg) to measure
    it; a rotated label is measured by its rotated rectangle, not the box around it (the boxes of two
    neighbouring slanted labels always overlap)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    with _style():
        canvas.draw()
        renderer = canvas.get_renderer()
        box = fig.bbox
        shapes = []
        problems = []
        for t in _drawn_texts(fig):
            e = t.get_window_extent(renderer)
            if e.x0 < box.x0 - 0.5 or e.y0 < box.y0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y1 > box.y1 + 0.5:
                problems.append(f"text {t.get_text()!r} is cut by the figure's edge")
            shapes.append((t.get_text(), e, _corners(t, e, renderer)))
    for i, (a, ea, pa) in enumerate(shapes):
        for b, eb, pb in shapes[i + 1:]:
            if ea.overlaps(eb) and _polygons_intersect(pa, pb):
                problems.append(f"texts {a!r} and {b!r} overlap")
    return problems


def _drawn_texts(fig: Figure) -> list[Any]:
    """Every text the figure draws: tick labels only of the ticks in view (an axis keeps spare ticks with
    stale labels that it does not draw), other texts when visible and not empty."""
    from matplotlib.axis import Tick
    from matplotlib.text import Text

    ticked = {id(t) for tick in fig.findobj(Tick) for t in (tick.label1, tick.label2)}
    texts = [t for t in fig.findobj(Text) if id(t) not in ticked]
    for ax in fig.axes:
        if ax.get_visible():
            for axis in (ax.xaxis, ax.yaxis):
                lo, hi = sorted(axis.get_view_interval())
                tol = 1e-9 * max(1.0, abs(hi - lo))
                for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                    if lo - tol <= tick.get_loc() <= hi + tol:
                        texts += [tick.label1, tick.label2]
    return [t for t in texts if t.get_visible() and t.get_text().strip()
            and (getattr(t, "axes", None) is None or t.axes.get_visible())]


def _corners(t: Any, e: Any, renderer: Any) -> np.ndarray:
    """The four corners (display coordinates) of a text's rotated rectangle: its unrotated width and
    height, turned by its angle about the centre of its box."""
    angle = t.get_rotation()
    if angle % 180 == 0 or angle % 180 == 90:
        return np.array([[e.x0, e.y0], [e.x1, e.y0], [e.x1, e.y1], [e.x0, e.y1]])
    t.set_rotation(0)
    flat = t.get_window_extent(renderer)
    t.set_rotation(angle)
    w, h = flat.width, flat.height
    cx, cy = (e.x0 + e.x1) / 2, (e.y0 + e.y1) / 2
    a = math.radians(angle)
    ux, uy = math.cos(a), math.sin(a)     # along the text
    vx, vy = -uy, ux                       # across it
    return np.array([[cx + sx * w / 2 * ux + sy * h / 2 * vx, cy + sx * w / 2 * uy + sy * h / 2 * vy]
                     for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def _polygons_intersect(p: np.ndarray, q: np.ndarray) -> bool:
    """Separating-axis test of two convex quadrilaterals (touching within half a pixel is no overlap)."""
    for poly in (p, q):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            norm = math.hypot(edge[0], edge[1]) or 1.0
            axis = np.array([-edge[1], edge[0]]) / norm
            pa, qa = p @ axis, q @ axis
            if pa.max() <= qa.min() + 0.5 or qa.max() <= pa.min() + 0.5:
                return False
    return True
