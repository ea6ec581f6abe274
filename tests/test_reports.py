"""The reports people read: matplotlib plots whose labels can be read (nothing cut, nothing overlapping),
the same self-contained HTML page for ``attribute``, ``memorization`` and ``registry evaluate`` with
``--html``, one PNG per plot with ``--plots``, a page that still reads without matplotlib, and the pages
as a real browser (headless Chromium, when installed) shows them."""

from __future__ import annotations

import base64
import json
from html import escape
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from forensics.cli.commands import app
from forensics.extras import MissingExtra
from forensics.report import html as H
from forensics.report import plots as P

pytest.importorskip("matplotlib")

LONG = [f"a-generator-with-a-rather-long-name-{i}" for i in range(4)]


def run(args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


@pytest.fixture(scope="module")
def toy_registry(tmp_path_factory):
    """A registry of one toy protocol (6 layers) and four generators with long names, three instances
    each, enrolled as curves (nothing is embedded)."""
    from forensics.protocol import DataRef, EncoderRef, Fingerprint, Protocol, StatisticRef
    from forensics.registry import Registry

    sha = "sha256:" + "ab" * 32
    proto = Protocol(
        name="toy", train=DataRef("digits", "train", 100, sha), test=DataRef("digits", "test", 50, sha),
        encoder=EncoderRef("tiny", sha, "random", tuple(f"encoder.blocks.{i}.attention_output" for i in range(6)),
                           "mean", {"size": 8, "resize": 8, "interpolation": "bilinear", "mean": [0.5] * 3,
                                    "std": [0.5] * 3}),
        statistic=StatisticRef("ct", {"k": 3, "distance": "cosine", "projection": None, "tau": None, "seed": 0}),
        batch_size=10, description="a toy protocol")
    reg = Registry.open(tmp_path_factory.mktemp("reports") / "reg", create=True)
    reg.add_protocol(proto, default=True)
    rng = np.random.default_rng(0)
    for k, name in enumerate(LONG):
        base = np.sin(np.arange(6) * (k + 1) / 3) * 3 + k
        curves = [tuple(float(v) for v in base + rng.normal(0, 0.3, 6)) for _ in range(3)]
        reg.enroll("toy", name, [Fingerprint.from_values(proto.digest, c) for c in curves],
                   {"input_sha256": "sha256:" + f"{k:02x}" * 32, "n_images": 10})
    return reg.path


@pytest.fixture(scope="module")
def results():
    """A real attribution (the default combination, 100 held-out DDPM digits) and memorization (mnist-vit)
    of the bundled registry: the shipped reference sides, so only the 100 queries are embedded."""
    import forensics
    from forensics import plugins
    from forensics.zoo.catalog import samples_dir

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        images = np.load(samples_dir() / "ddpm" / "heldout.npz")["images"][:100]
        yield (forensics.attribute(images, protocol="mnist-effnet-vit-pixel"),
               forensics.memorization(images, protocol="mnist-vit"))
    finally:
        plugins.reset(old)


# -- the plots --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers", [3, 17, pytest.param(60, marks=pytest.mark.slow),
                                      pytest.param(250, marks=pytest.mark.slow)])
def test_layer_names_are_never_cut_and_never_overlap(n_layers):
    """However many layers and however long their names, a combination's included: every label inside the
    figure, none over another (the hand-drawn SVG cut 'mnist-effnet-li…' and piled names on each other)."""
    half = n_layers // 2 or 1
    layers = ([f"mnist-effnet-lite0/blocks.{i}.conv_pwl.long_suffix" for i in range(half)]
              + [f"mnist-vit/blocks.{i}" for i in range(n_layers - half)])[:n_layers]
    rng = np.random.default_rng(n_layers)
    refs = {g: [list(rng.normal(0, 3, n_layers)) for _ in range(3)] for g in LONG}
    query = [None if i == 1 else float(v) for i, v in enumerate(rng.normal(0, 3, n_layers))]
    parts = {"250 as generated": list(rng.normal(0, 3, n_layers)),
             "250 jpeg90": [None, *rng.normal(0, 3, n_layers - 1)]}  # the curves a combined one was made of
    readings = ["copying", "undefined"] + ["no evidence"] * (n_layers - 2)
    with_parts = P.memorization_figure(layers, query, readings, {"copying_below": -2.0}, parts=parts)
    legends = [*with_parts.legends, *(ax.get_legend() for ax in with_parts.axes if ax.get_legend())]
    assert set(parts) <= {t.get_text() for legend in legends for t in legend.get_texts()}
    for fig in (P.curves_figure(layers, query, refs, LONG, scores={g: 0.5 for g in LONG}),
                P.memorization_figure(layers, query, readings, {"copying_below": -2.0, "underfitting_above": 2.0}),
                with_parts):
        assert P.layout_problems(fig) == []
        shown = [t.get_text() for t in fig.axes[-1].get_xticklabels() if t.get_text()]
        assert shown and all(len(s) <= 28 for s in shown)
        assert len(shown) == n_layers or n_layers > 100  # every name while they can be read; one in k beyond


@pytest.mark.parametrize("n", [8, 9, 10, 20])
def test_no_generator_is_drawn_in_the_grey_of_every_other_run(n):
    # grey is the curve plot's colour for every other enrolled run and the reading "no evidence": the 8th of
    # tab10 is grey, and the eighth generator's panel showed nothing of its own
    from matplotlib.colors import to_rgb

    palette = P.colours([f"g{i}" for i in range(n)])
    assert all(len(set(to_rgb(c))) > 1 for c in palette.values()), palette
    assert len(set(palette.values())) == min(n, len(set(palette.values())))
    assert len(set(palette.values())) >= min(n, 9)  # distinct while the qualitative map has hues to give


def test_a_curve_whose_values_span_hundreds_keeps_its_small_layers_readable():
    # a combination's mean-z layers reach the hundreds: on one linear axis C_T's layers and their ±2 bands
    # flatten to a line; beyond ±12 the axis turns symmetric-log, linear within ±3, and says so
    layers = [f"enc/blocks.{i}" for i in range(6)] + [f"pixel/stat.{i}" for i in range(6)]
    wide = [1.5, -2.5, 0.4, 2.2, -0.8, 1.0, 75.0, -1500.0, 30.0, -12.5, 4.0, 250.0]
    narrow = [1.5, -2.5, 0.4, 2.2, -0.8, 1.0] * 2
    readings = ["no evidence"] * 12
    for values, log in ((wide, True), (narrow, False)):
        refs = {g: [values] for g in ("g", "h", "i", "j")}
        for fig in (P.curves_figure(layers, values, refs, list(refs)),  # four panels, a label beside each
                    P.memorization_figure(layers, values, readings, {"copying_below": -2.0, "underfitting_above": 2.0})):
            ax = fig.axes[0]
            assert all((a.get_yscale() == "symlog") is log and ("log beyond" in a.get_ylabel()) is log
                       for a in fig.axes)
            lo, hi = ax.get_ylim()
            assert lo <= min(values) and hi >= max(values)  # every value in view
            assert P.layout_problems(fig) == []


def test_the_layout_check_sees_what_is_cut_or_overlapping():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_xticks(range(10), [f"overlapping-label-{i}" for i in range(10)])  # flat, far too long
    ax.text(2.0, 0.5, "a title drawn off the figure's edge", transform=ax.transAxes)
    problems = P.layout_problems(fig)
    assert any("overlap" in p for p in problems) and any("cut by the figure's edge" in p for p in problems)


@pytest.mark.parametrize("n", [2, 9, pytest.param(24, marks=pytest.mark.slow)])
def test_heat_map_ranking_and_confusion_are_readable(n):
    names = [f"{LONG[0]}-{i}" for i in range(n)]
    rng = np.random.default_rng(n)
    sim = rng.random((n, n))
    confusion = rng.integers(0, 4, (n, n)).tolist()
    for fig in (P.heatmap_figure(names, sim), P.confusion_figure(names, confusion),
                P.ranking_figure([(g, float(s)) for g, s in zip(names, sorted(rng.random(n), reverse=True))],
                                 verdict=names[0], threshold=0.4),
                P.accuracy_figure([(g, 0.5, None) for g in names[:4]])):
        assert P.layout_problems(fig) == []


def test_a_png_is_the_same_bytes_every_time_and_carries_no_date_or_version():
    import matplotlib

    draw = lambda: P.heatmap_figure(LONG, np.eye(4))  # noqa: E731
    first, again = P.png(draw()), P.png(draw())
    assert first == again and first.startswith(b"\x89PNG")
    assert b"Software" not in first and matplotlib.__version__.encode() not in first
    assert b"tIME" not in first and P.png_size(first)[0] > 600


def test_plots_ignore_the_users_matplotlib_settings(monkeypatch):
    import matplotlib

    draw = lambda: P.png(P.ranking_figure([("a", 0.5), ("b", 0.25)]))  # noqa: E731
    plain = draw()
    monkeypatch.setitem(matplotlib.rcParams, "axes.facecolor", "red")
    monkeypatch.setitem(matplotlib.rcParams, "font.size", 20)
    assert draw() == plain


# -- the pages, from the command line ----------------------------------------------------------------
def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_registry_evaluate_writes_the_html_report_and_one_png_per_plot(toy_registry, tmp_path):
    html, plots = tmp_path / "evaluation.html", tmp_path / "plots"
    r = run(["registry", "evaluate", "--registry", toy_registry, "-m", "alpha", "-m", "cosine", "--json",
             "--html", html, "--plots", plots])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout stays the JSON document alone
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page.split("<pre>")[0]
    files = sorted(p.name for p in plots.iterdir())
    assert files == ["accuracy-toy.png", "confusion-toy-alpha.png", "confusion-toy-cosine.png"]
    assert sorted(embedded_pngs(page)) == sorted(p.read_bytes() for p in plots.iterdir())  # the same pictures
    assert "Registry evaluation" in page and "toy · alpha: confusion" in page
    assert escape(json.dumps(doc, indent=2)) in page  # the record is the JSON document, whole
    assert "3 plot(s) written to" in r.stderr and "HTML report written to" in r.stderr


def test_without_matplotlib_the_page_falls_back_and_plots_are_refused_in_one_line(toy_registry, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    r = run(["registry", "evaluate", "--registry", toy_registry, "-m", "alpha", "--plots", tmp_path / "p"])
    assert r.exit_code == 1 and r.stdout == "", r.output  # a missing extra, as for every job that needs one
    (line,) = r.stderr.splitlines()
    assert "plots" in line and "needs matplotlib" in line and "[plots]'" in line and "pip install" in line
    with pytest.raises(MissingExtra, match=r"needs matplotlib.*\[plots\]"):  # the API alike
        P.require()
    assert not (tmp_path / "p").exists()
    html = tmp_path / "e.html"
    r = run(["registry", "evaluate", "--registry", toy_registry, "-m", "alpha", "--html", html])
    assert r.exit_code == 0, r.output
    page = html.read_text()
    assert "Plots need matplotlib" in page and page.count("Plots need matplotlib") == 1
    assert "<img" not in page and "<table><tr><th>true \\ predicted</th>" in page


def test_bad_plots_folder_is_refused_before_the_run(toy_registry, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run(["registry", "evaluate", "--registry", toy_registry, "--plots", a_file])
    assert r.exit_code == 2 and "is a file, not a folder" in r.stderr, r.output


def test_the_core_does_not_import_matplotlib():
    code = ("import sys, forensics.cli.commands, forensics.report.html, forensics.report.plots\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at start-up'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_attribution_and_memorization_pages_show_their_plots(results, tmp_path):
    attribution, memorization = results
    page = H.attribution_page(attribution)
    assert [f for f, _ in page.figures] == ["curves.png", "ranking.png", "similarity.png"]
    text = page.html()
    # the default's table is titled by both of its statistics, and keeps every layer's full name
    assert len(embedded_pngs(text)) == 3 and "Attribution: " in text and "C_T · mean-z per layer" in text
    assert "mnist-effnet-lite0/blocks.6" in text and "mnist-pixel/spectrum.8" in text
    written = page.write(html=tmp_path / "a.html", plots_dir=tmp_path / "a")
    assert {p.name for p in written} == {"a.html", "curves.png", "ranking.png", "similarity.png"}
    mem = H.memorization_page(memorization)
    assert [f for f, _ in mem.figures] == ["curve.png"] and f"Copying: {memorization.level}" in mem.html()
    fallback = H.attribution_page(attribution, plots=False).html()
    assert "<img" not in fallback and fallback.count("<svg") == 2 and "Plots need matplotlib" in fallback


# -- in a real browser ------------------------------------------------------------------------------
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const box = document.documentElement;
  const probe = {images: imgs.length, broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length,
    overflow: box.scrollWidth - box.clientWidth,
    outside: imgs.filter(i => i.getBoundingClientRect().right > box.clientWidth + 1).length,
    svgs: document.querySelectorAll('svg').length};
  const p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(probe);
  document.body.appendChild(p);
});
</script></body>"""


def chromium(args, tmp_path):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def browse(page: str, tmp_path, name: str, width: int) -> tuple[dict, np.ndarray]:
    """What Chromium makes of a page ``width`` pixels wide: the probe's measures, and a screenshot."""
    from PIL import Image

    shot = tmp_path / f"{name}-{width}.png"
    probed = tmp_path / f"{name}.html"
    probed.write_text(page.replace("</body>", PROBE))   # the probe's line lands below the record: not in view
    dom = chromium([f"--window-size={width},2400", f"--screenshot={shot}", "--dump-dom", probed.as_uri()],
                   tmp_path).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"')), np.asarray(Image.open(shot).convert("RGB"))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_every_report_renders_in_a_real_browser(results, toy_registry, tmp_path):
    """Each page as Chromium shows it, wide and narrow: every plot decoded, nothing wider than the window,
    and a screenshot that is a page, not a blank."""
    import forensics

    attribution, memorization = results
    pages = {"attribution": H.attribution_page(attribution), "memorization": H.memorization_page(memorization),
             "evaluation": H.evaluation_page(forensics.evaluate(registry=toy_registry, matchers=["alpha"]))}
    keep = os.environ.get("FORENSICS_KEEP_SCREENSHOTS")  # a folder: the screenshots are copied there to look at
    for name, page in pages.items():
        for width in (1280, 640) if name == "attribution" else (1280,):
            probe, shot = browse(page.html(), tmp_path, name, width)
            assert probe["images"] == len(page.figures) > 0 and probe["broken"] == 0, (name, probe)
            assert probe["overflow"] <= 0 and probe["outside"] == 0, (name, width, probe)
            ink = (shot < 235).any(axis=2)
            assert ink.mean() > 0.03, (name, width, ink.mean())                  # not blank
            assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 64, name          # plots, not just text
            assert not ink[:, -4:].any(), (name, width)                             # nothing runs off the right
            if keep:
                shutil.copy(tmp_path / f"{name}-{width}.png", keep)


def test_a_curve_table_heads_its_values_by_the_statistic_that_computed_them():
    from forensics.results import statistic_label, value_heading

    def section(*statistics):
        parts = [{"statistic": {"name": s}} for s in statistics]
        return {"parts": parts} if len(parts) > 1 else {"record": parts[0]}

    assert value_heading(statistic_label(section("ct"))) == "C_T"
    assert value_heading(statistic_label(section("mean-z"))) == "mean-z"
    assert value_heading(statistic_label(section("ct", "ct"))) == "C_T"
    assert value_heading(statistic_label(section("ct", "mean-z"))) == "value"  # two statistics: no one name


def test_the_assumed_condition_reads_once_and_says_what_was_done():
    from forensics.report.terminal import MIXTURE_SHOWN, condition_text

    array = condition_text({"name": "none", "source": "default",
                            "detail": "an array of pixels carries no record of its processing; assumed as generated"})
    assert array == "images as generated (an array of pixels carries no record of its processing)"
    # a declared condition's resize back to the generators' size is what was done to the images: said
    resized = condition_text({"name": "none", "source": "declared", "detail": "as declared; the images, 56×56, "
                              "brought back to the 28×28 the generators write (bicubic)"})
    assert resized.startswith("images as generated, declared (the images, 56×56, brought back to the 28×28")
    assert condition_text({"name": "none", "source": "declared", "detail": "as declared"}) == \
        "images as generated, declared"
    kinds = [{"name": "none", "count": 40}] + [{"name": f"jpeg{q}", "count": 1} for q in range(70, 100, 2)]
    many = condition_text({"name": "none", "source": "files", "detail": "; ".join(["a clause per kind"] * 16),
                           "mixture": kinds})
    assert "40 as generated" in many and f"and {len(kinds) - MIXTURE_SHOWN} more kinds (JSON condition.mixture)" in many
    assert "a clause per kind" not in many and len(many) < 200


def test_curve_table_of_short_layer_names_keeps_its_heading_whole_at_80_columns():
    """An encoder plugin's layers named `c1`, `c2` folded the `layer` heading into "la / ye / r" on a standard
    terminal (the bars took the width the heading needs)."""
    import io

    from rich.console import Console

    from forensics.engine import Curve, LayerValue
    from forensics.protocol import Fingerprint
    from forensics.report.terminal import render_curve

    values = (7.58, -8.28)
    curve = Curve(Fingerprint("sha256:" + "0" * 64, values),
                  tuple(LayerValue(f"c{i + 1}", v, 0.75, reading="underfitting") for i, v in enumerate(values)), 100)
    out = io.StringIO()
    render_curve(curve, Console(file=out, width=80))
    lines = out.getvalue().splitlines()
    assert any(line.split()[:1] == ["layer"] for line in lines), out.getvalue()
    assert all(len(line) <= 80 for line in lines)
