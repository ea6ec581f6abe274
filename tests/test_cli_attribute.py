"""`forensics attribute` and `forensics memorization` end to end, through the command line, on a small
protocol made here: scikit-learn's digits as T / P_n, a randomly initialised tiny ViT (asked for by name),
and four generators made from the training set by curated transforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from forensics.cli.commands import app
from forensics.report.terminal import thresholds_text

PROTOCOL = ["protocol", "create", "digits-vit", "--dataset", "digits", "--encoder", "vit_tiny_patch16_224.augreg_in21k",
            "--weights", "random", "--option", "image_size=32", "--k", "3", "--projection", "16",
            "--batch-size", "100", "--default", "--description", "test protocol"]
GENERATORS = ("rotate", "shuffle", "noise", "background-noise")


def run(args, **kw):
    result = CliRunner().invoke(app, args, **kw)
    return result


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry with the protocol and four generators × 3 instances of 100 images."""
    from forensics import plugins
    from forensics.curation import curate
    from forensics_datasets import load_digits

    old = plugins.reset(plugins.PluginHost(autoload=False))
    root = tmp_path_factory.mktemp("reg")
    reg = root / "registry"
    data = root / "data"
    data.mkdir()
    train = load_digits("train")
    try:
        r = run([*PROTOCOL, "--registry", str(reg)])
        assert r.exit_code == 0, r.output
        for i, kind in enumerate(GENERATORS):
            images = curate(train[:300], kind, seed=i)
            np.savez(data / f"{kind}.npz", images=images)
            r = run(["registry", "enroll", kind, str(data / f"{kind}.npz"), "--registry", str(reg),
                     "--conditions", "none,jpeg90"])  # each condition fits T and P_n put through it: one
            assert r.exit_code == 0, r.output
            query = curate(train[300:400], kind, seed=100 + i)
            np.savez(data / f"query-{kind}.npz", images=query)
        np.savez(data / "copies.npz", images=train[500:600])
        yield reg, data
    finally:
        plugins.reset(old)


def test_protocol_create_wrote_a_valid_registry(registry, plugin_host):
    reg, _ = registry
    r = run(["registry", "validate", "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    r = run(["registry", "list", "--registry", str(reg), "--json"])
    listing = json.loads(r.stdout)
    assert listing["default_protocol"] == "digits-vit"
    assert listing["protocols"][0]["generators"] == {g: 3 for g in sorted(GENERATORS)}


def test_attribute_json_names_the_generator(registry, plugin_host, tmp_path):
    reg, data = registry
    html = tmp_path / "report.html"
    r = run(["attribute", str(data / "query-rotate.npz"), "--registry", str(reg), "--json", "--html", str(html)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "forensics.attribution/1"
    assert doc["verdict"]["generator"] == "rotate", doc["candidates"]
    assert doc["candidates"][0]["generator"] == "rotate"
    assert doc["verdict"]["margin"] > 0
    assert doc["verdict"]["distance_ratio"] >= 0  # in units of rotate's spread between its own runs
    assert [c["score"] for c in doc["candidates"]] == sorted((c["score"] for c in doc["candidates"]), reverse=True)
    assert doc["curve"]["layers"] == [f"blocks.{i}" for i in range(12)] and len(doc["curve"]["values"]) == 12
    assert doc["protocol"]["name"] == "digits-vit" and doc["protocol"]["digest"].startswith("sha256:")
    assert doc["input"]["n_images"] == 100 and doc["input"]["sha256"].startswith("sha256:")
    assert doc["tool"]["forensics"] and doc["partial_batch"] is False
    assert doc["compute"] == {"device": "cpu", "amp": None, "engine": "local"}  # both move the curve: the report records them
    page = html.read_text()
    # three plots (curves, ranking, heat map): PNG with matplotlib, hand-drawn SVG without
    assert page.startswith("<!doctype html>") and page.count("<img") + page.count("<svg") >= 3
    assert "rotate's spread" in page
    assert "computed on cpu, float32" in page


def test_attribute_at_an_operating_point_uses_its_thresholds_and_says_so(registry, plugin_host, tmp_path):
    reg, data = registry
    docs = {}
    for point in ("balanced", "named", "cautious"):
        r = run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg), "--json",
                 "--operating-point", point])
        assert r.exit_code == 0, r.output
        docs[point] = json.loads(r.stdout)
        cal = docs[point]["matcher"]["open_set"]
        assert cal["operating_point"] == point
        assert {k: cal[k] for k in ("score", "margin", "distance_ratio")} == \
            {k: cal["operating_points"][point][k] for k in ("score", "margin", "distance_ratio")}
        if point != "balanced":
            assert f"{point} operating point" in docs[point]["verdict"]["reason"]
        at = docs[point]["verdict"]["at_operating_points"]
        verdict = docs[point]["verdict"]
        assert at[point] == {"generator": verdict["generator"], "family": verdict["family"]}
    # each run says what the others answer
    for point, doc in docs.items():
        for other in docs:
            assert doc["verdict"]["at_operating_points"][other] == docs[other]["verdict"]["at_operating_points"][other]
    # the same curve and ranking at every point: only the thresholds differ
    assert len({json.dumps(d["candidates"]) for d in docs.values()}) == 1
    assert len({json.dumps(d["curve"]) for d in docs.values()}) == 1
    # the report's Assumed line says which point answered, the default's too
    html = tmp_path / "cautious.html"
    text = run(["attribute", str(data / "query-noise.npz"), "--registry", str(reg), "--operating-point", "cautious",
                "--html", str(html)], env={"COLUMNS": "300"}).stdout
    assert "open-set thresholds of the cautious operating point" in text
    assert "the same at every operating point" in text or "depends on the operating point: balanced →" in text
    assert "open-set thresholds of the cautious operating point" in html.read_text()
    assert "open-set thresholds of the balanced operating point" in run(
        ["attribute", str(data / "query-noise.npz"), "--registry", str(reg)], env={"COLUMNS": "300"}).stdout


def test_memorization_records_device_and_precision(registry, plugin_host):
    reg, data = registry
    r = run(["memorization", str(data / "copies.npz"), "--registry", str(reg), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["compute"] == {"device": "cpu", "amp": None, "engine": "local"}
    r = run(["memorization", str(data / "copies.npz"), "--registry", str(reg)], env={"COLUMNS": "200"})
    assert "device cpu, float32" in r.stdout


def test_autocast_on_the_cpu_is_refused_in_one_line_before_any_work(registry, plugin_host):
    import time

    reg, data = registry
    for command in ("attribute", "memorization"):
        start = time.monotonic()
        r = run([command, str(data / "copies.npz"), "--registry", str(reg), "--amp", "bf16"])
        assert r.exit_code == 2 and r.stdout == "" and time.monotonic() - start < 3, r.output
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "--amp bf16 is refused on the CPU" in lines[0] and "slower" in lines[0], r.stderr


def test_paths_with_markup_or_not_utf8_are_read_and_written_whole(registry, plugin_host, tmp_path):
    """A folder and an --html name that are not UTF-8, and rich markup in them: the run completes, the
    report is written where asked, and the messages name the paths as they are (undecodable bytes escaped)."""
    import os

    reg, data = registry
    odd = tmp_path / os.fsdecode(b"[red]caf\xe9 [/x]")  # "[/x]" spans two folders: "…[" and "x]"
    odd.mkdir(parents=True)
    np.save(odd / "q.npy", np.load(data / "query-rotate.npz")["images"])
    html = odd / os.fsdecode(b"r\xff[bold].html")
    r = run(["attribute", str(odd / "q.npy"), "--registry", str(reg), "--html", str(html)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert html.is_file() and "Attribution: rotate" in html.read_text()
    assert "[red]caf\\udce9 [/x]" in r.stdout.replace("\n", "")
    assert r.stderr.strip().endswith("r\\udcff[bold].html"), r.stderr


def test_attribute_terminal_report(registry, plugin_host):
    reg, data = registry
    r = run(["attribute", str(data / "query-shuffle.npz"), "--registry", str(reg)], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    assert "Verdict: shuffle" in r.stdout
    assert "margin" in r.stdout and "C_T per layer" in r.stdout and "blocks.11" in r.stdout
    assert "shuffle's spread" in r.stdout


def test_fewer_images_than_m_are_attributed_with_a_warning(registry, plugin_host, tmp_path):
    reg, data = registry
    small = np.load(data / "query-noise.npz")["images"][:60]
    np.save(tmp_path / "small.npy", small)
    r = run(["attribute", str(tmp_path / "small.npy"), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["partial_batch"] is True


def test_memorization_reads_exact_copies_as_copying(registry, plugin_host):
    reg, data = registry
    r = run(["memorization", str(data / "copies.npz"), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "forensics.memorization/1"
    assert set(doc["curve"]["readings"]) == {"copying"} and doc["level"].startswith("every layer")
    r = run(["memorization", str(data / "copies.npz"), "--registry", str(reg)], env={"COLUMNS": "160"})
    assert "Copying: every layer" in r.stdout
    assert thresholds_text(doc["thresholds"]) in r.stdout  # the report names the statistic's own cut-offs


def test_memorization_compares_processed_images_with_t_and_p_n_processed_alike(registry, plugin_host, tmp_path):
    from PIL import Image

    from forensics import api
    from forensics.conditions import get_condition
    from forensics.schemas import validate
    from forensics_datasets import load_digits

    reg, data = registry
    copies = np.load(data / "copies.npz")["images"]  # 100 of T
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for i, im in enumerate(copies):
        Image.fromarray(im).save(folder / f"{i:03d}.jpg", quality=62)
    r = run(["memorization", str(folder), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    # its own quality, not the nearest one a registry keeps records under: T and P_n can be put through any
    assert (doc["condition"]["name"], doc["condition"]["source"]) == ("jpeg62", "files") and not doc["warnings"]
    from forensics.conditions import codecs, processing_digest  # what put T and P_n through it: this machine

    assert doc["condition"]["processing"] == {"digits-vit": {"digest": processing_digest("jpeg62"), **codecs(),
                                                             "reference": "jpeg62"}}
    # each copy lies at distance 0 from its own training image processed alike: copying at every layer
    assert set(doc["curve"]["readings"]) == {"copying"}
    assert doc["reference"]["origin"].startswith("computed")  # T and P_n processed, fitted, cached once
    again = api.memorization(folder, registry=reg)
    assert again.reference_origin.endswith(".npz") and again.curve.fingerprint.vector() == pytest.approx(
        doc["curve"]["values"])
    # the cache ties what was fitted and embedded under the condition to the protocol (`forensics cache list`)
    from forensics.engine import processed_hash, reference_key
    from forensics.io.hashing import short
    from forensics.registry import Registry

    proto = Registry.open(reg).protocol("digits-vit")
    tied = [i for i in api.list_cache(registry=reg).items if "digits-vit" in i.protocols]
    assert f"{short(reference_key(proto, 'jpeg62'), 24)}.npz" in {i.path.name for i in tied}
    assert {(i.images, i.reference_set) for i in tied if i.kind == "embeddings"} >= {
        (processed_hash(proto.train.sha256, "jpeg62"), "T"), (processed_hash(proto.test.sha256, "jpeg62"), "P_n")}
    # fresh data processed alike reads 0 at every layer: P_n itself, put through the condition, is the null
    held_out = get_condition("jpeg62").apply(load_digits("test"))
    null = api.memorization(held_out, registry=reg, condition="jpeg62")
    assert np.allclose(null.curve.fingerprint.vector(), 0.0, atol=0.01)  # 0 but for the Z-score's continuity term
    # copies served at twice their size: brought back to T's size, T and P_n through the same round trip
    up = tmp_path / "up"
    up.mkdir()
    for i, im in enumerate(copies):
        Image.fromarray(im).resize((2 * im.shape[1], 2 * im.shape[0]), Image.BICUBIC).save(up / f"{i:03d}.png")
    resized = api.memorization(up, registry=reg)
    assert resized.condition["name"] == "resize2" and resized.condition["resampled_to"] == list(copies.shape[1:3])
    assert set(resized.readings) == {"copying"}
    # the report says what was assumed; --condition none takes T and P_n as they are
    text = run(["memorization", str(folder), "--registry", str(reg)], env={"COLUMNS": "200"}).stdout
    assert "Assumed: images jpeg62: re-saved as JPEG at quality 62, read from the files" in text
    from forensics.conditions import describe_codecs

    alike = f"T and P_n put through the same processing (by {describe_codecs(codecs())}) before C_T was taken"
    assert alike in text.replace("\n", " ")
    html = tmp_path / "copying.html"
    assert run(["memorization", str(folder), "--registry", str(reg), "--html", str(html)]).exit_code == 0
    assert alike in html.read_text("utf-8")
    plain = json.loads(run(["memorization", str(folder), "--registry", str(reg), "--json", "--condition",
                            "none"]).stdout)
    assert plain["condition"]["name"] == "none" and plain["reference"]["origin"] != doc["reference"]["origin"]


def test_reading_thresholds_are_rendered_whatever_a_statistic_names_them():
    assert thresholds_text({"far_below": -1.5, "near": 0.25}) == "far below -1.5, near 0.25"
    assert thresholds_text({}) == ""


def test_registry_from_environment(registry, plugin_host, monkeypatch):
    reg, data = registry
    monkeypatch.setenv("FORENSICS_REGISTRY", str(reg))
    r = run(["attribute", str(data / "query-noise.npz"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["protocol"]["name"] == "digits-vit"


@pytest.mark.parametrize("args, code, message", [
    (["attribute", "no/such/dir"], 2, "does not exist"),
    (["attribute", "{data}/copies.npz", "--protocol", "nope"], 2, "nope"),
    (["attribute", "{data}/copies.npz", "--matcher", "nope"], 2, "no matcher named 'nope'"),
    (["curate", "digits:train", "--kind", "blur", "--out", "{data}/x.npz"], 2, "unknown curated kind"),
    (["attribute", "{data}/copies.npz", "--operating-point", "bold"], 2,
     "unknown operating point 'bold': choose one of balanced, named, cautious"),
])
def test_errors_are_one_line_with_exit_codes(registry, plugin_host, args, code, message):
    reg, data = registry
    args = [a.replace("{data}", str(data)) for a in args]
    if args[0] != "curate":
        args += ["--registry", str(reg)]
    r = run(args)
    assert r.exit_code == code, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


def test_debug_shows_the_traceback(registry, plugin_host):
    reg, _ = registry
    r = run(["--debug", "attribute", "no/such/dir", "--registry", str(reg)])
    assert r.exit_code != 0 and r.exception is not None and type(r.exception).__name__ == "UsageError"


def test_curate_writes_a_set(plugin_host, tmp_path):
    from forensics.io.hashing import short

    out = tmp_path / "rot.npz"
    r = run(["curate", "digits:train", "--kind", "rotate", "--count", "20", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["n_images"] == 20 and np.load(out)["images"].shape == (20, 8, 8)
    # without --json, as every command: one line for a person, the same set written
    again = tmp_path / "again.npz"
    r = run(["curate", "digits:train", "--kind", "rotate", "--count", "20", "--out", str(again)])
    assert r.exit_code == 0, r.output
    assert not r.stdout.lstrip().startswith("{") and "wrote 20 copies of digits:train (kind rotate)" in r.stdout
    assert f"sha256 {short(info['sha256'])}…" in r.stdout  # the digest once, not "sha256 sha256:…"
    assert np.array_equal(np.load(again)["images"], np.load(out)["images"])


def test_attribute_a_folder_of_pngs_with_worker_processes(registry, plugin_host, tmp_path):
    from PIL import Image

    reg, data = registry
    for i, image in enumerate(np.load(data / "query-rotate.npz")["images"]):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    r = run(["attribute", str(tmp_path), "--registry", str(reg), "--json", "--workers", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"]["generator"] == "rotate" and doc["input"]["n_images"] == 100
    r = run(["attribute", str(tmp_path), "--registry", str(reg), "--amp", "int4"])
    assert r.exit_code == 2 and "--amp takes bf16 or fp16" in r.stderr


def test_a_verdict_with_lookalikes_says_it_is_not_exclusive(registry, plugin_host):
    # the reports render what the result holds: a named verdict with lookalikes gets a "not exclusive"
    # line in the terminal and a caution in the HTML page; without them, neither
    import dataclasses
    import io

    from rich.console import Console

    import forensics
    from forensics.report.html import attribution_html
    from forensics.report.terminal import render_attribution

    reg, data = registry
    result = forensics.attribute(data / "query-rotate.npz", registry=reg)
    assert result.verdict.generator == "rotate" and result.verdict.lookalikes == {}

    def terminal(r):
        out = io.StringIO()
        render_attribution(r, Console(file=out, width=200))
        return out.getvalue()

    assert "not exclusive" not in terminal(result) and "Caution" not in attribution_html(result)
    flagged = dataclasses.replace(result, attribution=dataclasses.replace(result.attribution,
                                                                          lookalikes={"shuffle": [2, 3]}))
    text = terminal(flagged)
    assert "not exclusive" in text and "2 of 3 shuffle runs were named rotate" in text
    assert "Caution:</b> not exclusive" in attribution_html(flagged)


def test_reports_wrap_on_a_narrow_terminal_instead_of_cropping(registry, plugin_host):
    # the CLI's console soft-wraps plain lines (long paths stay whole for the terminal to wrap), which
    # inside a panel would crop the header's end: the input's hash and the matcher's name
    import io

    from rich.console import Console

    import forensics
    from forensics.io.hashing import short
    from forensics.report.terminal import render_attribution, render_memorization

    reg, data = registry
    for job, render in ((forensics.attribute, render_attribution), (forensics.memorization, render_memorization)):
        result = job(data / "query-rotate.npz", registry=reg)
        text = io.StringIO()
        render(result, Console(file=text, width=80, soft_wrap=True))  # a standard terminal
        lines = text.getvalue().splitlines()
        header = lines[:next(i for i, line in enumerate(lines) if line.startswith("╰")) + 1]
        assert all(len(line) <= 80 for line in header), header
        assert short(result.input.sha256) in "".join(line.strip("│ ") for line in header), header
        if job is forensics.attribute:
            words = " ".join(header).split()
            assert words[words.index("matcher") + 1] == "alpha", header
        assert "…" not in text.getvalue(), text.getvalue()  # no table cell cut short either


def test_memorization_of_files_processed_in_several_ways_scores_each_kind_against_t_and_p_n_processed_alike(
        registry, plugin_host, tmp_path, monkeypatch):
    from PIL import Image

    from forensics import api
    from forensics.schemas import validate
    from forensics_datasets import load_digits

    reg, data = registry
    copies = np.load(data / "copies.npz")["images"]  # 100 of T

    def folder(name, images, kinds):
        out = tmp_path / name
        out.mkdir()
        for i, (im, kind) in enumerate(zip(images, kinds)):
            Image.fromarray(im).save(out / f"{i:03d}.{'png' if kind == 'none' else 'jpg'}",
                                     **({} if kind == "none" else {"quality": 62}))
        return out

    kinds = ["none" if i % 3 else "jpeg62" for i in range(len(copies))]  # 66 as generated, 34 re-saved, interleaved
    mixed = folder("mixed", copies, kinds)
    result = api.memorization(mixed, registry=reg)
    assert result.condition["mixture"][0]["name"] == "none" and [(m["name"], m["count"]) for m in
                                                                 result.condition["mixture"]] == [("none", 66),
                                                                                                  ("jpeg62", 34)]
    assert not result.warnings and [name for name, _ in result.parts] == ["none", "jpeg62"]
    # each part is the curve of its files alone, scored against T and P_n processed as they were
    for name, part in result.parts:
        alone = folder(f"only-{name}", copies[[k == name for k in kinds]], [name] * kinds.count(name))
        own = api.memorization(alone, registry=reg)
        assert own.condition["name"] == name and own.curve.fingerprint.values == part.fingerprint.values
    # the curve combines the parts' Z-like values, each weighted by the square root of its effective size
    # m·n / (m + n) against the n points of P_n, so that they read as one batch of them all
    values = np.array([part.fingerprint.vector() for _, part in result.parts])
    n = len(load_digits("test"))
    h = np.array([k * n / (k + n) for k in (66, 34)])
    weights = np.sqrt(h * (100 * n / (100 + n))) / h.sum()
    assert np.allclose(result.curve.fingerprint.vector(), weights @ values, rtol=1e-12, atol=1e-12)
    assert set(result.readings) == {"copying"} and result.curve.n_images == len(copies)
    doc = result.to_dict()
    validate(doc)
    assert [p["n_images"] for p in doc["parts"]] == [66, 34] and all(p["level"] for p in doc["parts"])
    assert doc["condition"]["mixture"][1]["processing"]["digits-vit"]["digest"]
    text = run(["memorization", str(mixed), "--registry", str(reg)], env={"COLUMNS": "200"}).stdout
    assert ("processed in several ways, the images of each kind scored against T and P_n put through the same "
            "processing") in text.replace("\n", " ") and "66 as generated" in text and "34 jpeg62" in text
    html = tmp_path / "mixed.html"
    assert run(["memorization", str(mixed), "--registry", str(reg), "--html", str(html)]).exit_code == 0
    assert "The parts combined" in html.read_text("utf-8")
    # the same images as an array, declared image by image: the same parts and curve
    as_read = np.stack([np.asarray(Image.open(f)) for f in sorted(mixed.iterdir())])
    declared = api.memorization(as_read, registry=reg, condition=kinds)
    assert declared.condition["source"] == "declared" and declared.curve.fingerprint.values == \
        result.curve.fingerprint.values and [n for n, _ in declared.parts] == ["none", "jpeg62"]
    # files of several sizes: each brought back to T's size and scored against T and P_n put through its resampling
    sized = tmp_path / "sized"
    sized.mkdir()
    for i, im in enumerate(copies):
        up = Image.fromarray(im)
        (up.resize((2 * im.shape[1], 2 * im.shape[0]), Image.BICUBIC) if i % 2 else up).save(sized / f"{i:03d}.png")
    resized = api.memorization(sized, registry=reg)
    assert [(m["name"], m["count"]) for m in resized.condition["mixture"]] == [("none", 50), ("resize2", 50)]
    assert set(resized.readings) == {"copying"} and [name for name, _ in resized.parts] == ["none", "resize2"]
    # fresh data in both kinds reads 0: P_n whole as generated and P_n whole re-saved, each part its own null
    held_out = load_digits("test")
    null = api.memorization(folder("null", np.concatenate([held_out, held_out]),
                                   ["none"] * len(held_out) + ["jpeg62"] * len(held_out)), registry=reg)
    assert len(null.parts) == 2 and np.allclose(null.curve.fingerprint.vector(), 0.0, atol=0.02)
    # a statistic that cannot combine parts: all under one condition, the JPEG files', warned of, as before
    from forensics_ct import CTStatistic

    monkeypatch.delattr(CTStatistic, "combine")
    one = api.memorization(mixed, registry=reg)
    assert not one.parts and one.condition["name"] == "jpeg62" and "mixture" not in one.condition
    assert any("attribute each kind of file on its own" in w for w in one.warnings)
    one = api.memorization(as_read, registry=reg, condition=kinds)
    assert not one.parts and one.condition["name"] == "none" and any(
        "declared image by image (66 as none, 34 as jpeg62), but all taken as none" in w for w in one.warnings)


def test_repeated_images_are_found_pixel_for_pixel():
    from forensics.io.images import repeated

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    near = images[1].copy()
    near[3, 3] ^= 1  # one grey level apart: not a repeat
    stack = np.stack([images[0], images[1], images[0], near, images[1], images[0], images[2]])
    assert repeated(stack).tolist() == [False, False, True, False, True, True, False]
    assert not repeated(images).any() and repeated(images[:0]).shape == (0,)


def test_an_image_digest_is_its_pixels_and_shape_a_grey_image_in_rgb_the_same():
    import hashlib

    from forensics.io.hashing import image_digests

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 6, 4), dtype=np.uint8)
    found = image_digests(grey)
    assert found.shape == (3, 16) and found.dtype == np.uint8 and len({d.tobytes() for d in found}) == 3
    # an independent reference: BLAKE2b-128 of the dtype, shape and C-ordered pixels
    assert found[0].tobytes() == hashlib.blake2b(f"|u1{(6, 4)}".encode() + grey[0].tobytes(), digest_size=16).digest()
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert np.array_equal(image_digests(as_rgb), found)  # the same image, read from an RGB file
    tinted = as_rgb.copy()
    tinted[0, 0, 0, 2] ^= 1
    assert not np.array_equal(image_digests(tinted)[0], found[0]) and np.array_equal(image_digests(tinted)[1:], found[1:])
    assert not np.array_equal(image_digests(grey.reshape(3, 4, 6)), found)  # the same bytes, another shape
    assert image_digests(grey[:0]).shape == (0, 16)


def test_images_repeated_in_a_set_are_warned_of_or_dropped_and_the_rest_scored_exactly(registry, plugin_host,
                                                                                    tmp_path):
    from PIL import Image

    from forensics import api
    from forensics.schemas import validate

    reg, data = registry
    query = np.load(data / "query-noise.npz")["images"]
    again = np.concatenate([query[:80], query[10:30]])  # 20 images a second time, at the end
    np.savez(tmp_path / "again.npz", images=again)
    np.savez(tmp_path / "distinct.npz", images=query[:80])
    r = run(["attribute", str(tmp_path / "again.npz"), "--registry", str(reg), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc)
    assert doc["input"]["n_images"] == 100 and doc["input"]["repeats"] == {"images": 20, "dropped": False}
    assert any("20 of the 100 images repeat an earlier image" in w and "--drop-repeats" in w for w in doc["warnings"])
    assert "20 of the 100 images repeat" in run(["attribute", str(tmp_path / "again.npz"), "--registry",
                                                 str(reg)], env={"COLUMNS": "200"}).stderr
    dropped = json.loads(run(["attribute", str(tmp_path / "again.npz"), "--registry", str(reg), "--json",
                              "--drop-repeats"]).stdout)
    validate(dropped)
    distinct = json.loads(run(["attribute", str(tmp_path / "distinct.npz"), "--registry", str(reg), "--json"]).stdout)
    assert dropped["input"]["n_images"] == 80 and dropped["input"]["repeats"] == {"images": 20, "dropped": True}
    assert "repeats" not in distinct["input"] and not any("repeat" in w for w in distinct["warnings"])
    # what is left is the batch of the distinct images, to the last bit
    assert dropped["curve"]["values"] == distinct["curve"]["values"]
    assert dropped["candidates"] == distinct["candidates"] and dropped["verdict"] == distinct["verdict"]

    # a folder: each file keeps its own condition, the repeats' files dropped with them (a repeat saved
    # in the same format as its first; one re-saved otherwise differs in its pixels and is no repeat)
    folder = tmp_path / "folder"
    folder.mkdir()
    source = [*range(80), *range(10, 30)]
    for i, (image, k) in enumerate(zip(again, source)):
        Image.fromarray(image).save(folder / f"{i:03d}.{'jpg' if k % 4 == 0 else 'png'}",
                                    **({"quality": 62} if k % 4 == 0 else {}))
    mixed = api.memorization(folder, registry=reg, drop_repeats=True)
    assert mixed.input.n_images == 80 and mixed.input.repeats == 20 and mixed.input.repeats_dropped
    assert len(mixed.input.files) == 80 and all(int(f.stem) < 80 for f in map(Path, mixed.input.files))
    kept = tmp_path / "kept"
    kept.mkdir()
    for f in sorted(folder.iterdir())[:80]:
        (kept / f.name).write_bytes(f.read_bytes())
    alone = api.memorization(kept, registry=reg)
    assert mixed.condition["mixture"] == alone.condition["mixture"]
    assert np.array_equal(mixed.curve.fingerprint.vector(), alone.curve.fingerprint.vector())

    # a declared condition per image is kept with its image
    declared = ["jpeg62" if k % 4 == 0 else "none" for k in source]
    with_names = api.memorization(again, registry=reg, condition=declared, drop_repeats=True)
    assert [(m["name"], m["count"]) for m in with_names.condition["mixture"]] == [("none", 60), ("jpeg62", 20)]

    same = np.repeat(query[:1], 50, axis=0)
    np.savez(tmp_path / "same.npz", images=same)
    r = run(["attribute", str(tmp_path / "same.npz"), "--registry", str(reg), "--drop-repeats"])
    assert r.exit_code == 2 and "hold 1 distinct image: too few to score without repeats" in r.stderr


def test_images_an_instance_was_enrolled_from_are_counted_and_dropped_on_request(registry, plugin_host, tmp_path):
    """A query holding images an enrolled instance was made from matches them with their own reference curve:
    each such image is recognised by its pixels (whatever file it was read from), counted per instance, warned
    of, and left out with --drop-enrolled; the very set an instance was made from tests nothing."""
    from PIL import Image

    from forensics.registry import Registry
    from forensics.schemas import validate

    reg, data = registry
    rotate, fresh = np.load(data / "rotate.npz")["images"], np.load(data / "query-rotate.npz")["images"]
    refs = [r for r in Registry.open(reg).enrolled("digits-vit") if r.generator == "rotate"]
    batch = {int(r.provenance.get("batch", 0)): f"rotate/{r.instance}" for r in refs}
    own = json.loads(run(["attribute", str(data / "rotate.npz"), "--registry", str(reg), "--json"]).stdout)
    validate(own)
    assert own["input"]["enrolled"] == {"images": 300, "instances": {b: 100 for b in batch.values()},
                                        "dropped": False}
    said = [w for w in own["warnings"] if "enrolled instances were made from" in w]
    assert len(said) == 1 and said[0].startswith("all 300 images are, pixel for pixel, images enrolled instances "
                                                 "were made from")
    assert "tests nothing" in said[0]

    def folder(name, images):  # grey digits saved as RGB PNG files: the same images
        where = tmp_path / name
        where.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).convert("RGB").save(where / f"{i:03d}.png")
        return str(where)

    mixed = folder("mixed", np.concatenate([fresh, rotate[100:130]]))
    doc = json.loads(run(["attribute", mixed, "--registry", str(reg), "--json"]).stdout)
    validate(doc)
    assert doc["input"]["enrolled"] == {"images": 30, "instances": {batch[1]: 30}, "dropped": False}
    assert [w for w in doc["warnings"] if "enrolled instances were made from" in w] == [
        f"30 of the 130 images are, pixel for pixel, images enrolled instances were made from ({batch[1]} (30)): if "
        "taken from those sets, they are matched with their own reference curves and lean the verdict toward them "
        "(run again with --drop-enrolled); a generator that copies its training data may draw them again"]
    dropped = json.loads(run(["attribute", mixed, "--registry", str(reg), "--json", "--drop-enrolled"]).stdout)
    validate(dropped)
    alone = json.loads(run(["attribute", folder("fresh", fresh), "--registry", str(reg), "--json"]).stdout)
    assert dropped["input"]["n_images"] == 100 and dropped["input"]["enrolled"]["dropped"] is True
    assert "enrolled" not in alone["input"] and not any("enrolled instances" in w for w in alone["warnings"])
    assert dropped["curve"]["values"] == alone["curve"]["values"] and dropped["verdict"] == alone["verdict"]
    r = run(["attribute", str(data / "rotate.npz"), "--registry", str(reg), "--drop-enrolled"])
    assert r.exit_code == 2 and "too few others to attribute" in r.stderr


def test_enrolled_images_are_told_from_their_digests_kept_backfilled_or_broken(registry, plugin_host, tmp_path):
    """Instances enrolled before their images' digests were kept are recognised by their whole set only, and
    get the digests from `registry records` without any embedding; an enrolment that repeats another
    instance's images is warned of; a digests file that fails its check is reported without stopping the
    attribution."""
    import shutil

    import yaml

    import forensics.engine as engines
    from forensics import api
    from forensics.registry import Registry

    reg, data = registry
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    rotate, fresh = np.load(data / "rotate.npz")["images"], np.load(data / "query-rotate.npz")["images"]
    gfile = copy / "digits-vit" / "generators" / "rotate.yaml"
    doc = yaml.safe_load(gfile.read_text())
    for inst in doc["instances"]:  # as enrolled before the digests were kept
        del inst["provenance"]["image_digests"]
        (copy / "digits-vit" / "records" / "rotate" / inst["id"] / "images.npy").unlink()
    gfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    np.savez(tmp_path / "part.npz", images=np.concatenate([fresh, rotate[:20]]))
    assert api.attribute(tmp_path / "part.npz", registry=copy).input.enrolled_images == 0  # cannot be told
    checked = api.validate_registry(copy)
    assert checked.ok and [w for w in checked.warnings if "keep no digests" in w] == [
        "digits-vit: 3 of 12 instances keep no digests of the images they were made from (" + ", ".join(
            f"rotate/{i['id']}" for i in doc["instances"]) + "), so a query holding some of those images is not "
        "told, only one that is the whole set; `forensics registry records NAME IMAGES` keeps them, embedding nothing"]
    whole = api.attribute(data / "rotate.npz", registry=copy).input  # the whole set, by its hash
    assert whole.enrolled_images == 300 and len(whole.enrolled) == 3
    assert set(whole.enrolled.values()) == {100}  # each holds its batch of m = 100, not the whole input
    shown = run(["registry", "show", "digits-vit", "--generator", "rotate", "--registry", str(copy)]).stdout
    assert shown.count("100 of 300") == 3, shown  # and `registry show` says so of each

    def embeds(*args, **kwargs):
        raise AssertionError("the digests alone need no embedding")

    real, engines.fingerprints_and_records = engines.fingerprints_and_records, embeds
    try:
        assert len(api.add_records(data / "rotate.npz", "rotate", registry=copy, conditions="none,jpeg90")) == 3
    finally:
        engines.fingerprints_and_records = real
    first, other = sorted((r for r in Registry.open(copy).enrolled("digits-vit") if r.generator == "rotate"),
                          key=lambda r: int(r.provenance.get("batch", 0)))[:2]
    part = api.attribute(tmp_path / "part.npz", registry=copy).input
    assert part.enrolled == {f"rotate/{first.instance}": 20} and part.enrolled_images == 20

    np.savez(tmp_path / "new.npz", images=np.concatenate([fresh[:60], rotate[:40]]))
    enrolled = api.enroll(tmp_path / "new.npz", "newcomer", registry=copy, conditions="none")
    assert [w for w in enrolled.warnings if "enrolled from" in w] == [
        f"40 of these images are, pixel for pixel, images rotate/{first.instance} was enrolled from: unless the "
        "generator draws them again (a copy of its training data, say), shared images make two instances look "
        "alike (the generator's spread shrinks, or two generators look alike); then remove the new instances "
        "(`forensics registry remove newcomer --instance ID`) and enrol images no instance holds"]
    assert api.attribute(tmp_path / "new.npz", registry=copy).input.enrolled == {
        f"rotate/{first.instance}": 40, f"newcomer/{enrolled.instances[0]}": 100}

    # an image one instance holds twice counts once; a blank image, which any generator may draw, is no one's
    blank = np.zeros_like(fresh[:3])
    np.savez(tmp_path / "twice.npz", images=np.concatenate([fresh[:70], blank, rotate[:1], rotate[:1]]))
    unseen = np.load(data / "query-noise.npz")["images"][:96]
    np.savez(tmp_path / "held-twice.npz", images=np.concatenate([unseen, rotate[:1], rotate[:1], blank[:2]]))
    twice = api.enroll(tmp_path / "held-twice.npz", "twice", registry=copy, conditions="none")
    assert api.attribute(tmp_path / "twice.npz", registry=copy).input.enrolled == {
        f"rotate/{first.instance}": 2, f"newcomer/{enrolled.instances[0]}": 60 + 2, f"twice/{twice.instances[0]}": 2}

    records = copy / "digits-vit" / "records" / "rotate"
    (records / first.instance / "images.npy").write_bytes((records / other.instance / "images.npy").read_bytes())
    checked = api.validate_registry(copy)
    assert not checked.ok and any(f"rotate/{first.instance}: image digests file images.npy" in p for p in checked.problems)
    broken = api.attribute(tmp_path / "part.npz", registry=copy)
    assert f"rotate/{first.instance}" not in broken.input.enrolled and broken.verdict  # (the newcomer's still are)
    assert any(w.startswith(f"digits-vit/rotate/{first.instance}: image digests file images.npy") and
               "is not the one its provenance records" in w for w in broken.warnings)


def test_an_enrolment_of_files_that_read_as_re_encoded_is_warned_of(registry, plugin_host, tmp_path):
    """Files whose headers say JPEG (or lossy WebP) are enrolled as the generator wrote them, and said to be:
    a set re-saved after the generator wrote it has another curve than the generator's own."""
    import shutil

    from PIL import Image

    from forensics import api

    reg, data = registry
    copy = tmp_path / "registry"
    shutil.copytree(reg, copy)
    images = np.load(data / "query-noise.npz")["images"]
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(images):  # every fourth re-saved as JPEG 80
        Image.fromarray(image).save(folder / f"{i:03d}.{'jpg' if i % 4 == 0 else 'png'}",
                                    **({"quality": 80} if i % 4 == 0 else {}))
    said = api.enroll(folder, "resaved", registry=copy, conditions="none").warnings
    assert [w for w in said if "re-encoded" in w] == [
        "25 of the 100 files read as re-encoded (25 jpeg80, from their headers): enrolled as the generator wrote "
        "them, which is right where it writes such files; if they were re-saved since, remove the instances and "
        "enrol the files it wrote (a re-encoded set's curve is not its own)"]
    lossless = tmp_path / "lossless"
    lossless.mkdir()
    for i, image in enumerate(np.load(data / "query-shuffle.npz")["images"]):
        Image.fromarray(image).save(lossless / f"{i:03d}.png")
    assert not [w for w in api.enroll(lossless, "lossless", registry=copy, conditions="none").warnings
                if "re-encoded" in w]


def test_a_copy_made_before_image_digests_were_kept_is_said_to_hide_them_and_refreshed(registry, plugin_host,
                                                                                       tmp_path):
    """A user registry that copied a bundled generator file (to enrol a further run over it) before the bundled
    instances kept their images' digests hides them: `registry validate` says so, and `registry refresh` brings
    them in, after which a query holding some of those images is told."""
    import shutil

    import yaml

    from forensics import api
    from forensics.registry import Registry

    reg, data = registry
    below = tmp_path / "bundled"
    shutil.copytree(reg, below)
    user = tmp_path / "user"
    rotate, fresh = np.load(data / "rotate.npz")["images"], np.load(data / "query-rotate.npz")["images"]
    np.savez(tmp_path / "another-run.npz", images=np.load(data / "query-shuffle.npz")["images"])
    api.enroll(tmp_path / "another-run.npz", "rotate", registry=Registry.open(user, create=True, below=[below]),
               conditions="none")
    copy = user / "digits-vit" / "generators" / "rotate.yaml"
    doc = yaml.safe_load(copy.read_text())
    bundled = [i["id"] for i in yaml.safe_load((below / "digits-vit" / "generators" / "rotate.yaml").read_text())[
        "instances"]]
    for inst in doc["instances"]:
        if inst["id"] in bundled:  # as copied by a version that kept no image digests
            del inst["provenance"]["image_digests"]
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    layered = Registry.open(user, below=[below])
    assert any("hides" in w and "has changed since it was copied" in w for w in layered.warnings)
    np.savez(tmp_path / "part.npz", images=np.concatenate([fresh, rotate[:20]]))
    assert api.attribute(tmp_path / "part.npz", registry=layered).input.enrolled_images == 0
    api.refresh(registry=layered, generator="rotate")
    layered = Registry.open(user, below=[below])
    assert not any("hides" in w for w in layered.warnings)
    assert api.attribute(tmp_path / "part.npz", registry=layered).input.enrolled_images == 20


def test_batches_named_as_different_generators_warn_that_the_overall_verdict_speaks_for_none(registry, plugin_host,
                                                                                            tmp_path):
    from forensics import api

    reg, data = registry
    rotate, shuffle = (np.load(data / f"query-{k}.npz")["images"] for k in ("rotate", "shuffle"))
    np.savez(tmp_path / "two.npz", images=np.concatenate([rotate, shuffle]))
    result = api.attribute(tmp_path / "two.npz", registry=reg)
    assert [b.attribution.verdict for b in result.batches] == ["rotate", "shuffle"]  # each batch its own
    (mixed,) = [w for w in result.warnings if "are named differently" in w]
    assert "(rotate × 1, shuffle × 1)" in mixed and "the overall verdict, on their mean curve, speaks for none" in mixed
    np.savez(tmp_path / "same.npz", images=np.concatenate([rotate, rotate[::-1]]))  # one generator twice
    same = api.attribute(tmp_path / "same.npz", registry=reg)
    assert [b.attribution.verdict for b in same.batches] == ["rotate", "rotate"]
    assert not [w for w in same.warnings if "are named differently" in w]
