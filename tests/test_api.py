"""The library API (``import forensics``): each job's result equals the document the command line prints
with ``--json``, options are checked before any embedding, and the package lists what it exports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import forensics
from forensics.cli.commands import app
from forensics.errors import UsageError

SAMPLES = "registry/mnist-effnet-lite0/samples"
VIT = "mnist-vit"  # the cheap shipped protocol (28 px ViT); the default combination is the slow lane's


@pytest.fixture(autouse=True)
def _bundled_plugins_only(plugin_host):
    yield plugin_host


@pytest.fixture(scope="module")
def root(bundled_registry):
    return bundled_registry.path.parent


def cli_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def without_created(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "created"}


# -- attribution ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_attribute_equals_the_cli_document_under_the_default_protocol(root):
    path = root / SAMPLES / "ddpm" / "heldout.npz"
    result = forensics.attribute(path)
    doc = result.to_dict()
    assert without_created(doc) == without_created(cli_json("attribute", path))
    assert result.protocol.name == forensics.open_registry().default_protocol
    assert result.verdict.generator == doc["verdict"]["generator"]
    assert result.verdict.generator in (None, "ddpm")  # a held-out set is never named as another generator
    assert json.loads(json.dumps(doc)) == doc  # plain JSON, as printed


@pytest.mark.slow
def test_attribute_of_a_path_or_an_array_is_the_cli_document(root):
    path = root / SAMPLES / "kde-copier" / "heldout.npz"
    from_path = forensics.attribute(path, protocol=VIT)
    assert without_created(from_path.to_dict()) == without_created(cli_json("attribute", path, "-p", VIT))
    images = np.load(path)["images"]
    from_array = forensics.attribute(images, protocol=VIT)
    assert from_array.input.path is None and from_array.input.sha256 == from_path.input.sha256
    a, b = from_array.to_dict(), from_path.to_dict()
    for doc in (a, b):
        doc.pop("created")
        doc["input"].pop("path")
    assert a == b
    # the result's typed view is its document's
    assert from_path.verdict.generator == b["verdict"]["generator"]
    assert list(from_path.curve.fingerprint.values) == b["curve"]["values"]
    assert [lv.reading for lv in from_path.curve.layers] == b["curve"]["readings"]
    assert [c.generator for c in from_path.candidates] == [c["generator"] for c in b["candidates"]]


@pytest.mark.slow
def test_several_batches_are_attributed_alone_and_by_their_mean_curve(root):
    from forensics.match import make_matcher
    from forensics.stats.base import get_statistic

    a = np.load(root / SAMPLES / "kde-copier" / "heldout.npz")["images"]
    b = np.load(root / SAMPLES / "gmm" / "heldout.npz")["images"]
    m = len(a)
    result = forensics.attribute(np.concatenate([a, b, b[: m // 2]]), protocol=VIT)  # the remainder is left out
    assert len(result.batches) == 2 and not result.partial_batch
    vectors = [batch.curve.fingerprint.vector() for batch in result.batches]
    np.testing.assert_array_equal(result.curve.fingerprint.vector(), np.mean(vectors, axis=0))
    statistic = get_statistic(result.protocol.statistic.name)
    assert [lv.reading for lv in result.curve.layers] == [statistic.reading(v) for v in result.curve.fingerprint.values]
    assert result.curve.n_images == 2 * m
    reg = forensics.open_registry()
    matcher = make_matcher("alpha", calibration=reg.calibration(VIT, "alpha")).fit(reg.enrolled(VIT))
    for batch, v in zip(result.batches, vectors):  # each batch answered on its own curve
        assert batch.verdict == matcher.attribute(v).verdict
    assert result.attribution.verdict == matcher.attribute(result.curve.fingerprint.vector()).verdict
    assert [d["verdict"] for d in result.to_dict()["batches"]] == [batch.verdict for batch in result.batches]


def test_a_few_images_from_a_file_or_an_array_give_the_cli_document(root, tmp_path):
    # fewer images than m: one partial batch, flagged in the document
    images = np.load(root / SAMPLES / "gmm" / "heldout.npz")["images"][:60]
    np.save(tmp_path / "few.npy", images)
    from_path = forensics.attribute(tmp_path / "few.npy", protocol=VIT)
    assert without_created(from_path.to_dict()) == without_created(cli_json("attribute", tmp_path / "few.npy",
                                                                             "-p", VIT))
    assert from_path.partial_batch and len(from_path.batches) == 1 and from_path.curve.n_images == 60
    from_array = forensics.attribute(images, protocol=VIT)
    a, b = from_array.to_dict(), from_path.to_dict()
    assert a["input"] == {**b["input"], "path": None}
    assert without_created({**a, "input": None}) == without_created({**b, "input": None})


# -- memorization ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_memorization_equals_the_cli_document(root):
    path = root / SAMPLES / "kde-copier" / "heldout.npz"
    result = forensics.memorization(path, protocol=VIT)
    doc = result.to_dict()
    assert without_created(doc) == without_created(cli_json("memorization", path, "-p", VIT))
    statistic = get_statistic_of(result)
    assert doc["thresholds"] == dict(statistic.reading_thresholds)
    assert result.readings == [statistic.reading(v) for v in result.curve.fingerprint.values]
    assert result.level == doc["level"] and result.copying == ("copying" in result.readings)


def get_statistic_of(result):
    from forensics.stats.base import get_statistic

    return get_statistic(result.protocol.statistic.name)


@pytest.mark.slow
def test_exact_copies_of_the_training_set_read_as_copying_at_every_layer():
    from forensics.engine import load_reference_set

    protocol = forensics.open_protocol(VIT)
    train = load_reference_set(protocol.train)
    copies = train[np.random.default_rng(0).choice(len(train), protocol.batch_size, replace=False)]
    result = forensics.memorization(copies, protocol=VIT)
    assert set(result.readings) == {"copying"} and result.level.startswith("every layer")


# -- options are checked before the work ----------------------------------------------------------
@pytest.fixture
def no_embedding(monkeypatch):
    """Embedding fails the test: a job that should have refused its options first must not get there."""
    from forensics.engine import Engine

    def refuse(*args, **kwargs):
        raise AssertionError("embedded before checking the options")

    monkeypatch.setattr(Engine, "embed", refuse)


@pytest.mark.parametrize("options, message", [
    ({"matcher": "nope"}, "no matcher named 'nope'"),
    ({"amp": "int4"}, "--amp takes bf16 or fp16"),
    ({"protocol": "nope"}, "no protocol 'nope'"),
    ({"device": "tpu"}, "tpu"),
])
def test_attribute_refuses_bad_options_before_embedding(root, no_embedding, options, message):
    with pytest.raises(forensics.ForensicsError, match=message):
        forensics.attribute(root / SAMPLES / "gmm" / "heldout.npz", **{"protocol": VIT, **options})


def test_memorization_refuses_bad_options_before_embedding(root, no_embedding):
    with pytest.raises(UsageError, match="--amp takes bf16 or fp16"):
        forensics.memorization(root / SAMPLES / "gmm" / "heldout.npz", protocol=VIT, amp="fp8")


@pytest.mark.parametrize("images, message", [
    (np.zeros((4, 28, 28), dtype=object), "must be numbers"),
    ("no/such/folder", "does not exist"),
])
def test_bad_images_are_a_usage_error(images, message):
    with pytest.raises(UsageError, match=message):
        forensics.attribute(images, protocol=VIT)


def test_evaluate_and_calibrate_refuse_an_unknown_matcher():
    with pytest.raises(UsageError, match="unknown matcher 'nearest'"):
        forensics.evaluate(matchers=["nearest"])
    with pytest.raises(UsageError, match="unknown matcher 'nearest'"):
        forensics.calibrate(matchers=["nearest"])


def test_evaluate_equals_the_cli_document():
    from forensics.registry.papercurves import PROTOCOL_NAME

    result = forensics.evaluate(protocol=PROTOCOL_NAME, matchers=["alpha"])
    assert result.to_dict() == cli_json("registry", "evaluate", "-p", PROTOCOL_NAME, "-m", "alpha")
    (protocol,) = result.protocols
    (alpha,) = protocol.matchers
    assert alpha.evaluation.n == protocol.n_instances == 18


def test_curate_of_an_array_records_how_it_was_made(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    result = forensics.curate(images, "noise", count=10, seed=3, out=tmp_path / "noisy.npz")
    assert result.images.shape == (10, 8, 8) and result.subset["count"] == 10
    np.testing.assert_array_equal(np.load(tmp_path / "noisy.npz")["images"], result.images)
    assert result.to_dict()["sha256"] == forensics.curate(images, "noise", count=10, seed=3).sha256
    with pytest.raises(UsageError, match="must end in .npz"):
        forensics.curate(images, "noise", out=tmp_path / "noisy.png")


# -- the package's surface ------------------------------------------------------------------------
def test_the_package_lists_and_resolves_its_api():
    listed = dir(forensics)
    for name in ("attribute", "memorization", "enroll", "remove", "evaluate", "calibrate", "curate",
                 "open_registry", "open_protocol", "AttributionResult", "MemorizationResult", "Verdict",
                 "ForensicsError", "UsageError", "RegistryError", "ProtocolMismatch", "WeightsError",
                 "PluginError", "StatisticError", "hookimpl", "ct_score"):
        assert name in forensics.__all__ and name in listed, name
    for name in forensics.__all__:
        assert getattr(forensics, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        forensics.nope  # noqa: B018


def test_importing_forensics_loads_nothing_heavy():
    code = "import sys, forensics; print(sorted(m for m in ('numpy', 'torch', 'pluggy', 'rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
