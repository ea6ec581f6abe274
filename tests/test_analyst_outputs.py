"""What an analyst reads from ``attribute`` and ``memorization``, checked where it once broke or misled:
a report piped into a reader that leaves early, the HTML saying what the terminal says, outputs refused
before the run rather than after it, and error lines that say what to do."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from forensics.cli.commands import run
from test_cli_ux import DDPM, VIT, cli, fake_engine, labelled, no_work  # noqa: F401 - fixtures


def run_cli(*args) -> str:
    """The command's stdout, its exit code 0."""
    done = cli(*args)
    assert done.exit_code == 0, done.output
    return done.stdout


class _ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone (``forensics … --json | head`` once head has its lines)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_json_into_a_closed_pipe_ends_quietly_not_as_an_unexpected_error(fake_engine, tmp_path, monkeypatch,
                                                                         capsys):
    np.savez(tmp_path / "set.npz", images=labelled((1, 120)))
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    code = run(["attribute", str(tmp_path / "set.npz"), "-p", VIT, "--json"])
    said = capsys.readouterr().err
    # as the terminal report does (rich's console on a broken pipe): exit 1, and no error line blaming the tool
    assert code == 1
    assert "unexpected" not in said and "BrokenPipe" not in said and "error:" not in said, said


def test_the_html_says_what_the_terminal_says_of_a_remainder_batch(fake_engine, tmp_path):
    # 1,300 images: two full batches, and the last 300 attributed as a batch of their own; the terminal said
    # so, the HTML did not (its reader saw 1,300 images and "per batch of 500: × 2")
    import forensics
    from forensics.report.html import attribution_page

    np.savez(tmp_path / "set.npz", images=labelled((1, 500), (1, 500), (2, 300)))
    terminal = run_cli("attribute", tmp_path / "set.npz", "-p", VIT)
    said = next(line.strip() for line in terminal.splitlines() if "The last 300 images" in line)
    result = forensics.attribute(tmp_path / "set.npz", protocol=VIT)
    page = attribution_page(result, plots=False).html()
    assert said in " ".join(page.split()), said


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no folder can be made")
def test_a_plots_folder_that_cannot_be_made_is_refused_before_the_run(no_work):
    # /proc passes a permission check (as root, anything does) but refuses a new folder: the run used to go
    # through the embedding and fail only when writing the first plot
    done = cli("attribute", DDPM, "-p", VIT, "--plots", "/proc/forensics-analyst/figs")
    assert done.exit_code == 2 and no_work == [], done.output
    assert "--plots /proc/forensics-analyst/figs: cannot write there" in " ".join(done.stderr.split())


def test_checking_a_plots_folder_leaves_nothing_behind(tmp_path):
    from forensics.report.html import check_outputs

    check_outputs(None, tmp_path / "new" / "deeper" / "figs")
    assert list(tmp_path.iterdir()) == []  # the folders are made when the plots are written, not before the run
    (tmp_path / "figs").mkdir()
    check_outputs(None, tmp_path / "figs")
    assert list((tmp_path / "figs").iterdir()) == []


def test_an_html_report_never_replaces_the_evidence_it_reports_on(no_work, tmp_path):
    np.savez(tmp_path / "set.npz", images=labelled((1, 120)))
    kept = (tmp_path / "set.npz").read_bytes()
    (tmp_path / "again.npz").hardlink_to(tmp_path / "set.npz")
    for html in (tmp_path / "set.npz", tmp_path / "sub" / ".." / "set.npz", tmp_path / "again.npz"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for command in ("attribute", "memorization"):
            done = cli(command, tmp_path / "set.npz", "-p", VIT, "--html", html)
            assert done.exit_code == 2 and no_work == [], done.output
            assert "is the images' own file: the report would replace the evidence" in " ".join(done.stderr.split())
    assert (tmp_path / "set.npz").read_bytes() == kept


def test_plots_are_never_written_among_the_images_the_next_run_reads(no_work, tmp_path):
    # curves.png, ranking.png, … in the evidence folder were read as three more images by the next run on it
    from PIL import Image

    (tmp_path / "case" / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "case" / "a.png")
    for plots in (tmp_path / "case", tmp_path / "case" / "figs", tmp_path / "case" / "sub" / ".." / "sub"):
        done = cli("attribute", tmp_path / "case", "-p", VIT, "--plots", plots)
        assert done.exit_code == 2 and no_work == [], done.output
        assert "lies in the images' folder" in " ".join(done.stderr.split())
    assert sorted(p.name for p in (tmp_path / "case").rglob("*")) == ["a.png", "sub"]
    from forensics.report.html import check_outputs

    check_outputs(None, tmp_path / "figs", evidence=tmp_path / "case")  # beside it: fine


def test_a_copying_level_of_layers_that_were_all_undefined_is_not_none():
    # one image: mean-z is undefined at every mnist-pixel layer, and memorization read "mnist-pixel: none",
    # an absence of copying it never measured
    from forensics.results import copying_level

    assert copying_level(["undefined"] * 18) == "undefined (no layer could be read)"
    assert copying_level(["no evidence", "undefined", "underfitting"]) == "none (1 of 3 layers undefined)"
    assert copying_level(["no evidence", "underfitting"]) == "none"
    assert copying_level(["copying", "undefined", "no evidence"]).startswith("low-level")


def test_the_html_lists_the_candidates_as_the_terminal_does(fake_engine, tmp_path):
    # the HTML showed the ranking only as a picture: no score to quote, no closest instance anywhere
    import forensics
    from forensics.report.html import attribution_page

    result = forensics.attribute(labelled((2, 120)), protocol=VIT)
    text = " ".join(re.sub(r"<[^>]+>", " ", attribution_page(result, plots=False).html()).split())
    for i, c in enumerate(result.candidates, 1):
        assert f"{i} {c.generator} {float(c.score):.3f} {c.instance}" in text


def _curve(readings: list[tuple[str, float | None, str | None]]):
    from forensics.engine import Curve, LayerValue
    from forensics.protocol import Fingerprint

    layers = tuple(LayerValue(name, v, None if v is None else 1.0, why, "undefined" if v is None else "no evidence")
                   for name, v, why in readings)
    return Curve(Fingerprint.from_values("sha256:" + "0" * 64, [v for _, v, _ in readings]), layers, 1)


def test_layers_undefined_for_one_reason_are_said_once_per_run_not_once_each():
    # one image under the default protocol: one identical line per mnist-pixel layer, under the table
    from rich.console import Console

    from forensics.report.terminal import render_curve

    why = "mean-z needs at least 2 generated images, got 1"
    curve = _curve([("a/0", 0.5, None), ("a/1", None, "no cell held enough images"), ("a/2", 0.1, None),
                    ("a/3", None, "no cell held enough images")]
                   + [(f"p/{i}", None, why) for i in range(18)])
    console = Console(record=True, width=200)
    render_curve(curve, console)
    lines = [line.strip() for line in console.export_text().splitlines() if "undefined —" in line]
    assert lines == ["a/1: undefined — no cell held enough images",  # a/2 between: not one run
                     "a/3: undefined — no cell held enough images",
                     f"p/0 … p/17 (18 layers): undefined — {why}"]


def test_the_html_says_undefined_layers_as_the_terminal_does(fake_engine):
    from dataclasses import replace

    import forensics
    from forensics.report.html import memorization_page

    result = forensics.memorization(labelled((1, 120)), protocol=VIT)
    names = [lv.layer for lv in result.curve.layers]
    why = "no cell held enough images"
    result = replace(result, curve=_curve([(n, None, why) for n in names]))
    text = " ".join(re.sub(r"<[^>]+>", " ", memorization_page(result, plots=False).html()).split())
    assert f"{names[0]} … {names[-1]} ({len(names)} layers): undefined — {why}" in text
    assert f"{names[1]}: undefined" not in text


def test_a_combinations_memorization_plot_shades_each_protocols_own_bands():
    # the default combines C_T (copying below -2) with mean-z (underfitting beyond ±2): the plot shaded the
    # whole width red below -2, so the mean-z layers' underfitting points sat in a band labelled copying
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    from forensics.report import plots as P

    ct, mean_z = {"copying_below": -2.0, "underfitting_above": 2.0}, {"differs_beyond": 2.0}
    fig = P.memorization_figure(["a/0", "a/1", "p/0", "p/1"], [-3.0, 0.5, -3.0, 3.0],
                                ["copying", "no evidence", "underfitting", "underfitting"], {**ct, **mean_z},
                                spans=[(0, 2, ct), (2, 4, mean_z)])
    below = {}  # the colour of the band under -2, by the layers it spans
    for band in fig.axes[0].collections:
        (xs, ys) = band.get_paths()[0].vertices.T if band.get_paths() else ([], [])
        if len(xs) and min(ys) < -2 and max(ys) <= -2 + 1e-9:
            below[(round(min(xs), 1), round(max(xs), 1))] = to_hex(band.get_facecolor()[0][:3])
    assert below == {(-0.5, 1.5): P.READING_COLOURS["copying"], (1.5, 3.5): P.READING_COLOURS["underfitting"]}


def test_memorization_says_which_protocols_read_which_way():
    import forensics
    from forensics.report.terminal import reading_rules_text
    from forensics.results import reading_spans

    said = reading_rules_text(reading_spans(forensics.open_protocol("mnist-effnet-vit-pixel")))
    assert said == ("mnist-effnet-lite0, mnist-vit: copying below -2, underfitting above 2; "
                    "mnist-pixel: underfitting beyond ±2")
    assert reading_rules_text(reading_spans(forensics.open_protocol(VIT))) == "copying below -2, underfitting above 2"


def test_copying_at_both_ends_names_the_layers_not_their_positions():
    # the kde-copier's held-out set read "mnist-vit: mixed (1, 2, 3, 4, 5, 6, 7)": numbers nobody is told the
    # meaning of, for copying at 7 of 8 layers
    import forensics
    from forensics.results import copying_level, copying_levels

    names = [f"blocks.{i}" for i in range(8)]
    assert (copying_level(["no evidence"] + ["copying"] * 7, names)
            == "mixed (early and late layers: blocks.1 … blocks.7; 7 of 8 layers)")
    vit = forensics.open_protocol(VIT)
    readings = ["copying", "no evidence", "copying", "copying", "no evidence", "no evidence", "no evidence", "copying"]
    assert copying_levels(vit, readings) == ("mixed (early and late layers: blocks.0, blocks.2 … blocks.3, blocks.7; "
                                             "4 of 8 layers)")


def test_the_html_says_whose_margin_over_whom(fake_engine):
    # the HTML's "margin +0.011" named neither side; under an unknown verdict nothing on the page said which
    # two candidates it separates
    from dataclasses import replace

    import forensics
    from forensics.report.html import attribution_page

    result = forensics.attribute(labelled((2, 120)), protocol=VIT)
    first, second = (c.generator for c in result.candidates[:2])
    text = lambda r: " ".join(re.sub(r"<[^>]+>", " ", attribution_page(r, plots=False).html()).split())  # noqa: E731
    assert f"margin {result.verdict.margin:+.3f} over {second}" in text(result)
    unknown = replace(result, attribution=replace(result.attribution, verdict=None, reason="unknown: too far"))
    assert f"margin {result.verdict.margin:+.3f} ({first} over {second})" in text(unknown)


def test_the_reports_record_what_reading_the_folder_skipped(fake_engine, tmp_path):
    # 20 PNGs attributed out of a folder of 500 HEIC files: only a stderr note said so, lost with the terminal;
    # neither the report on stdout nor the HTML case file did
    from PIL import Image

    import forensics
    from forensics.report.html import attribution_page, memorization_page

    folder = tmp_path / "case"
    folder.mkdir()
    for i, image in enumerate(labelled((1, 120))):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    for i in range(3):
        (folder / f"{i}.heic").write_bytes(b"heic")
    (folder / ".DS_Store").write_bytes(b"")
    said = "skipped 1 hidden, 3 not an image"
    assert said in " ".join(run_cli("attribute", folder, "-p", VIT).split())
    assert said in " ".join(run_cli("memorization", folder, "-p", VIT).split())
    html = lambda page: " ".join(re.sub(r"<[^>]+>", " ", page.html()).split())  # noqa: E731
    assert said in html(attribution_page(forensics.attribute(folder, protocol=VIT), plots=False))
    assert said in html(memorization_page(forensics.memorization(folder, protocol=VIT), plots=False))


def test_a_protocol_whose_statistic_never_reads_copying_is_not_said_to_find_none():
    # every memorization under the default said "mnist-pixel: none", as if it had looked for copying and found
    # none; its mean-z reads a difference either way as underfitting and never copying
    import forensics
    from forensics.results import copying_levels

    default = forensics.open_protocol("mnist-effnet-vit-pixel")
    assert copying_levels(default, ["no evidence"] * 9 + ["copying"] + ["no evidence"] * 7 + ["underfitting"] * 20) == (
        "mnist-effnet-lite0: none; mnist-vit: low-level (early layers: colour, texture); "
        "mnist-pixel: not read (mean-z never reads copying)")
    assert copying_levels(forensics.open_protocol("mnist-pixel"), ["no evidence"] * 20) == (
        "not read (mean-z never reads copying)")
    assert copying_levels(forensics.open_protocol(VIT), ["no evidence"] * 8) == "none"


def test_a_memorization_plot_with_parts_keeps_its_value_axis_label():
    # files processed in several ways: the value axis was labelled with the last part's name ("60 resize2")
    # instead of the statistic
    pytest.importorskip("matplotlib")
    from forensics.report import plots as P

    fig = P.memorization_figure(["a/0", "a/1"], [-3.0, 0.5], ["copying", "no evidence"],
                                {"copying_below": -2.0, "underfitting_above": 2.0},
                                parts={"60 as generated": [-2.5, 0.1], "60 resize2": [-3.5, 0.9]}, label="C_T")
    assert fig.axes[0].get_ylabel() == "C_T"


def test_the_memorization_legend_hides_no_point():
    # the legend sat in the axes' upper right, over the highest points of the last layers
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.legend import Legend

    from forensics.report import plots as P

    values = [3.0] * 30 + [14.0, 15.0, 16.0]
    fig = P.memorization_figure([f"a/{i}" for i in range(33)], values, ["underfitting"] * 33,
                                {"copying_below": -2.0, "underfitting_above": 2.0})
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = fig.axes[0]
    (legend,) = fig.findobj(Legend)
    box = legend.get_window_extent(canvas.get_renderer())
    points = ax.transData.transform(np.column_stack([np.arange(33), values]))
    assert not [i for i, (x, y) in enumerate(points) if box.contains(x, y)]
    assert P.layout_problems(fig) == []


def test_plots_and_html_at_one_path_are_refused_before_the_run(no_work, tmp_path):
    # the plots' folder was made there first, and the HTML then refused after the whole run
    done = cli("attribute", DDPM, "-p", VIT, "--html", tmp_path / "case.html", "--plots", tmp_path / "case.html")
    assert done.exit_code == 2 and no_work == [], done.output
    assert "is the --html file's own path" in " ".join(done.stderr.split())
    assert list(tmp_path.iterdir()) == []


def test_the_memorization_html_says_a_small_set_shrinks_c_t_once(fake_engine):
    # the warning said it, and a second line after it said it again in other words
    import forensics
    from forensics.report.html import memorization_page

    result = forensics.memorization(labelled((1, 120)), protocol=VIT)
    assert result.partial_batch
    text = " ".join(re.sub(r"<[^>]+>", " ", memorization_page(result, plots=False).html().split("<pre>")[0]).split())
    assert text.count("|C_T| shrinks with fewer images") == 1


def test_one_image_is_one_image_in_every_report(fake_engine, tmp_path):
    import forensics
    from forensics.report.html import attribution_page

    np.savez(tmp_path / "one.npz", images=labelled((1, 1)))
    for command in ("attribute", "memorization"):
        said = " ".join(run_cli(command, tmp_path / "one.npz", "-p", VIT).split())
        assert "1 image from" in said and "1 images" not in said
    page = attribution_page(forensics.attribute(tmp_path / "one.npz", protocol=VIT), plots=False).html()
    assert "1 image from" in " ".join(re.sub(r"<[^>]+>", " ", page).split())


def test_a_run_with_stdout_closed_is_refused_before_any_work(no_work, monkeypatch, capsys):
    # `forensics attribute x --json >&-`: an unexpected AttributeError after the whole run; the terminal
    # report vanished with exit 0
    monkeypatch.setattr("sys.stdout", None)
    for command in ("attribute", "memorization"):
        assert run([command, str(DDPM), "-p", VIT, "--json"]) == 2 and no_work == []
        assert "error: stdout is closed: the report would go nowhere" in capsys.readouterr().err


def test_a_statistic_whose_reading_refuses_extremes_keeps_its_copying_level(register_plugin):
    # asking a plugin's statistic whether it ever reads copying must not fail the report
    import types

    from forensics import hookimpl
    from forensics.results import _reads_copying
    from test_plugins import MeanGap

    class Fussy(MeanGap):
        def reading(self, value):
            if abs(value) > 1e6:
                raise ValueError("out of range")
            return "copying" if value < 0.5 else "no evidence"

    class Never(MeanGap):
        def reading(self, value):
            return "no evidence" if value is not None else "undefined"

    def forensics_statistics(register):
        register("fussy", Fussy())
        register("never", Never())

    register_plugin(types.SimpleNamespace(forensics_statistics=hookimpl(forensics_statistics)), "local")
    assert _reads_copying("fussy") and not _reads_copying("never") and _reads_copying("ct")
    assert not _reads_copying("mean-z")
