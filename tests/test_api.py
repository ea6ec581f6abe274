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


pytestmark = pytest.mark.usefixtures("plugin_host")  # the bundled plugins only, whatever else is installed


@pytest.fixture(scope="module")
def root(bundled_registry):
    return bundled_registry.layer_of(bundled_registry.default_protocol).parent  # the checkout


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
    # the remainder, half a batch, is attributed as a partial batch of its own, outside the mean curve
    result = forensics.attribute(np.concatenate([a, b, b[: m // 2]]), protocol=VIT)
    assert len(result.batches) == 3 and not result.partial_batch and result.left_out == 0
    assert result.remainder is result.batches[2] and result.remainder.partial and result.remainder.curve.n_images == m // 2
    full = result.batches[:2]
    vectors = [batch.curve.fingerprint.vector() for batch in full]
    np.testing.assert_array_equal(result.curve.fingerprint.vector(), np.mean(vectors, axis=0))
    statistic = get_statistic(result.protocol.statistic.name)
    assert [lv.reading for lv in result.curve.layers] == [statistic.reading(v) for v in result.curve.fingerprint.values]
    assert result.curve.n_images == 2 * m
    reg = forensics.open_registry()
    matcher = make_matcher("alpha", calibration=reg.calibration(VIT, "alpha")).fit(reg.enrolled(VIT))
    for batch, v in zip(result.batches, vectors + [result.remainder.curve.fingerprint.vector()]):
        assert batch.verdict == matcher.attribute(v).verdict  # each batch answered on its own curve
    assert result.attribution.verdict == matcher.attribute(result.curve.fingerprint.vector()).verdict
    assert [d["verdict"] for d in result.to_dict()["batches"]] == [batch.verdict for batch in result.batches]
    assert [d["partial"] for d in result.to_dict()["batches"]] == [False, False, True]
    assert sorted(result.batch_votes) == sorted(  # the full batches' votes
        (g, [batch.label for batch in full].count(g)) for g in {batch.label for batch in full})


@pytest.mark.slow
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
    # what the HTML report draws of the registry: the generators' mean similarities, symmetric
    names, matrix = from_path.generator_similarity()
    assert names == sorted({r.generator for r in from_path.references}) and matrix.shape == (len(names),) * 2
    np.testing.assert_allclose(matrix, matrix.T, rtol=1e-12)


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


def test_memorization_of_fewer_images_than_a_batch_says_so_in_its_json(root):
    images = np.load(root / SAMPLES / "kde-copier" / "heldout.npz")["images"][:60]
    doc = forensics.memorization(images, protocol=VIT).to_dict()
    assert doc["partial_batch"] is True
    assert [w for w in doc["warnings"] if "60 images, fewer than the protocol's batch of 500" in w]


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
    ([np.zeros((28, 28), np.uint8)] * 4, "not a list: for a list of arrays, pass np.stack"),
])
def test_bad_images_are_a_usage_error(images, message):
    with pytest.raises(UsageError, match=message):
        forensics.attribute(images, protocol=VIT)
    with pytest.raises(UsageError, match=message):
        forensics.memorization(images, protocol=VIT)


def test_a_one_dimensional_array_file_is_not_read_as_that_many_images(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(392_000, np.uint8))  # over the images-per-run limit, were it images
    with pytest.raises(UsageError, match=r"expected images shaped \(N, H, W\) or \(N, H, W, C\) .*; got \(392000,\)"):
        forensics.memorization(tmp_path / "flat.npy", protocol=VIT)
    with pytest.raises(UsageError, match="--workers takes a number of processes of at least 0"):
        forensics.memorization(tmp_path / "flat.npy", protocol=VIT, workers=-1)


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_workers_that_are_no_number_of_processes_are_refused_for_an_array_too(workers):
    """An array in memory decodes nothing, yet workers=-1 (joblib's "all cores") must not pass unnoticed."""
    images = np.zeros((100, 28, 28), np.uint8)
    for call in (forensics.attribute, forensics.memorization):
        with pytest.raises(UsageError, match="--workers takes a number of processes of at least 0"):
            call(images, protocol=VIT, workers=workers)


def test_a_weights_file_that_does_not_read_says_what_to_pass(tmp_path):
    from forensics.encode.weights import load_state_dict
    from forensics.errors import WeightsError

    with pytest.raises(UsageError, match="does not exist; pass the path of a .safetensors or .pt state dict"):
        forensics.attribute(tmp_path, protocol=VIT, weights=str(tmp_path / "gone.safetensors"))  # a bad value: exit 2
    for name in ("junk.pt", "junk.safetensors"):
        (tmp_path / name).write_bytes(b"junk")
        with pytest.raises(WeightsError, match="is it the weights file, whole\\? Pass a .safetensors file or a "
                                               ".pt/.pth state dict"):
            load_state_dict(tmp_path / name)


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
    # the registry evaluated, named as read: the user registry (not written yet) over the bundled one, whose
    # curves these are, not the user registry's folder alone as if it had been
    from forensics.registry import bundled_registry_path

    assert result.registry.endswith(f"(over {bundled_registry_path()})"), result.registry


def test_curate_of_an_array_records_how_it_was_made(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    result = forensics.curate(images, "noise", count=10, seed=3, out=tmp_path / "noisy.npz")
    assert result.images.shape == (10, 8, 8) and result.subset["count"] == 10
    np.testing.assert_array_equal(np.load(tmp_path / "noisy.npz")["images"], result.images)
    assert result.to_dict()["sha256"] == forensics.curate(images, "noise", count=10, seed=3).sha256
    with pytest.raises(UsageError, match="must end in .npz"):
        forensics.curate(images, "noise", out=tmp_path / "noisy.png")


# -- the registry's contents, plugins and encoders -----------------------------------------------
@pytest.fixture
def paper_registry(tmp_path):
    """A registry holding only a copy of the bundled paper protocol, as its default."""
    import shutil

    from forensics.registry.papercurves import PROTOCOL_NAME

    target = tmp_path / "reg"
    target.mkdir()
    shutil.copytree(forensics.open_registry().layer_of(PROTOCOL_NAME) / PROTOCOL_NAME, target / PROTOCOL_NAME)
    forensics.Registry.open(target, create=True).set_default(PROTOCOL_NAME)
    return target


def test_list_protocols_equals_the_cli_document():
    result = forensics.list_protocols()
    assert result.to_dict() == cli_json("registry", "list")
    reg = forensics.open_registry()
    assert [p.name for p in result.protocols] == sorted(reg.protocols)
    assert [p.name for p in result.protocols if p.default] == [reg.default_protocol]
    for p in result.protocols:
        assert p.generators == {g: len(e.instances) for g, e in reg.generator_entries(p.name).items()}
        assert (p.combines is None) == (len(reg.protocol(p.name).parts) == 1)


def test_show_protocol_equals_the_cli_document_and_names_the_generators_it_knows(paper_registry):
    from forensics.registry.papercurves import PROTOCOL_NAME

    result = forensics.show_protocol(registry=paper_registry)
    assert result.protocol.name == PROTOCOL_NAME  # the registry's default
    assert result.to_dict() == cli_json("registry", "show", "--registry", paper_registry)
    one = forensics.show_protocol(PROTOCOL_NAME, generator="DDPM", registry=paper_registry)
    assert list(one.generators) == ["DDPM"]
    assert one.to_dict() == cli_json("registry", "show", PROTOCOL_NAME, "-g", "DDPM", "--registry", paper_registry)
    with pytest.raises(UsageError, match="no generator 'nope'.*known: BigGAN, ContraGAN"):
        forensics.show_protocol(generator="nope", registry=paper_registry)


def test_validate_registry_returns_the_problems_the_cli_prints_and_exits_on(paper_registry):
    from forensics.registry.papercurves import PROTOCOL_NAME

    sound = forensics.validate_registry(paper_registry)
    assert sound.ok and sound.n_protocols == 1 and sound.n_instances == 18
    assert sound.to_dict() == cli_json("registry", "validate", "--registry", paper_registry)
    gfile = paper_registry / PROTOCOL_NAME / "generators" / "DDPM.yaml"
    gfile.write_text(gfile.read_text().replace("curve: [", "curve: [0.5, ", 1))  # one value too many
    broken = forensics.validate_registry(paper_registry)
    assert not broken.ok and any("DDPM.yaml" in p and "values" in p for p in broken.problems)
    result = CliRunner().invoke(app, ["registry", "validate", "--registry", str(paper_registry), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout) == broken.to_dict()


def test_diff_registry_equals_the_cli_document(paper_registry, tmp_path):
    before = tmp_path / "before"
    forensics.open_registry(paper_registry).copy_to(before)
    assert forensics.diff_registry(str(before), registry=paper_registry).changes == ()
    forensics.remove("PNDM", registry=paper_registry)
    result = forensics.diff_registry(str(before), registry=paper_registry)
    assert [(c["change"], c["what"], c["generator"]) for c in result.changes] == [("removed", "generator", "PNDM")]
    assert result.to_dict() == cli_json("registry", "diff", before, "--registry", paper_registry)
    assert result.old == str(before) and result.new == paper_registry.resolve()


def test_diff_registry_of_a_git_revision_that_does_not_exist_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot read the registry at git revision 'no-such-revision'"):
        forensics.diff_registry("git:no-such-revision")


@pytest.mark.slow
def test_import_paper_equals_the_cli_document_and_refuses_to_overwrite_unasked(tmp_path):
    from forensics.registry.papercurves import PROTOCOL_NAME, export_paper

    src = export_paper(forensics.open_registry(), tmp_path / "paper-curves")
    result = forensics.import_paper(src, registry=tmp_path / "a")
    assert result.n_curves == sum(len(ids) for ids in result.generators.values()) == 18
    assert forensics.open_registry(tmp_path / "a").default_protocol == PROTOCOL_NAME
    assert result.to_dict() == {**cli_json("registry", "import-paper", src, "--registry", tmp_path / "b"),
                                "registry": str(result.registry)}
    with pytest.raises(UsageError, match="pass --overwrite"):
        forensics.import_paper(src, registry=tmp_path / "a")
    assert forensics.import_paper(src, registry=tmp_path / "a", overwrite=True).generators == result.generators


def test_set_default_protocol_is_what_the_registry_then_reads(paper_registry):
    from forensics.registry.papercurves import PROTOCOL_NAME

    assert forensics.set_default_protocol(PROTOCOL_NAME, registry=paper_registry) == PROTOCOL_NAME
    assert forensics.open_registry(paper_registry).default_protocol == PROTOCOL_NAME
    with pytest.raises(UsageError, match="no protocol 'nope'"):
        forensics.set_default_protocol("nope", registry=paper_registry)
    assert forensics.open_registry(paper_registry).default_protocol == PROTOCOL_NAME


def test_list_plugins_equals_the_cli_document():
    result = forensics.list_plugins()
    assert result.to_dict() == cli_json("plugins")
    provided = {kind for p in result.plugins if p.error is None for kind, names in p.provides.items() if names}
    assert {"encoders", "statistics", "matchers", "datasets"} <= provided


def test_list_encoders_equals_the_cli_document_and_refuses_unknown_names():
    result = forensics.list_encoders(["tf_efficientnet_lite0"])
    assert result.to_dict() == cli_json("encoders", "tf_efficientnet_lite0")
    (entry,) = result.encoders
    assert entry["name"] == "tf_efficientnet_lite0" and entry["layers"] and "error" not in entry
    with pytest.raises(UsageError, match="no encoder named nope"):
        forensics.list_encoders(["nope"])


def test_an_encoder_without_describe_is_described_by_building_it_with_random_weights():
    from forensics.encode.encoder import Encoder, Layer, Preprocessing, WeightsInfo, describe_encoder
    from forensics.hookspecs import DescribingFactory

    class Tiny(Encoder):
        name, family, pooling = "tiny", "toy", "mean"
        layers = (Layer("a", 3),)
        preprocessing = Preprocessing(size=8, resize=8)
        weights = WeightsInfo("random", "sha256:" + "0" * 64)

        def forward_layers(self, pixels, layers):
            return [pixels.mean(dim=(2, 3))]

    def make(*, weights=None, device="cpu", **options):
        return Tiny()

    assert not isinstance(make, DescribingFactory)
    spec = describe_encoder("tiny", make, "a toy")
    assert (spec.family, spec.description, spec.layers) == ("toy", "a toy", (Layer("a", 3),))
    assert spec.weights.startswith("unknown")
    make.describe = lambda **options: spec  # the optional part of the factory's contract
    assert isinstance(make, DescribingFactory) and describe_encoder("tiny", make) is spec


# -- the package's surface ------------------------------------------------------------------------
def test_the_package_lists_and_resolves_its_api():
    listed = dir(forensics)
    for name in ("attribute", "memorization", "enroll", "remove", "evaluate", "calibrate", "curate",
                 "open_registry", "open_protocol", "list_protocols", "show_protocol", "validate_registry",
                 "diff_registry", "import_paper", "set_default_protocol", "list_plugins", "list_encoders", "AttributionResult", "MemorizationResult", "Verdict",
                 "ForensicsError", "UsageError", "RegistryError", "ProtocolMismatch", "WeightsError",
                 "PluginError", "StatisticError", "hookimpl", "ct_score"):
        assert name in forensics.__all__ and name in listed, name
    for name in forensics.__all__:
        assert getattr(forensics, name) is not None, name
    # what the module's own code imports is not its API
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib"} & set(dir(forensics))
    assert (forensics.bundled_registry_path() / "registry.yaml").is_file()  # where the demo sets of an install lie
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        forensics.nope  # noqa: B018


def test_importing_forensics_loads_nothing_heavy():
    code = "import sys, forensics; print(sorted(m for m in ('numpy', 'torch', 'pluggy', 'rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_arguments_of_the_wrong_kind_are_usage_errors_and_one_name_is_not_read_letter_by_letter(tmp_path):
    from pathlib import Path

    from forensics.registry import default_registry_path

    images = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(UsageError, match="condition is \"auto\""):
        forensics.attribute(images, protocol=VIT, condition=None)
    with pytest.raises(UsageError, match="registry is a folder's path or a Registry"):
        forensics.open_registry(3)
    with pytest.raises(UsageError, match="older_than is a duration of at least 0"):
        forensics.clear_cache(older_than=-5)
    with pytest.raises(UsageError, match="--batch-size takes a number of images of at least 1, not 0"):
        forensics.evaluate(protocol=VIT, batch_size=0)
    reg = forensics.open_registry(default_registry_path())
    assert forensics.validate_registry(reg).ok  # the Registry open_registry gives, as every call takes it
    assert forensics.diff_registry(Path(default_registry_path()), registry=reg).changes == ()
    assert [e["name"] for e in forensics.list_encoders("vit_mnist_tiny.forensics").encoders] == \
        ["vit_mnist_tiny.forensics"]


def test_a_broken_plugin_matcher_is_left_out_of_every_matcher_jobs_and_fails_only_when_named(
        paper_registry, register_plugin):
    """`registry evaluate` / `registry calibrate` with no --matcher run every registered matcher: one broken
    third-party matcher stopped both for all; now it is left out with its one-line cause, and fails when named."""
    import types
    import warnings

    from forensics import hookimpl
    from forensics.errors import PluginError
    from forensics.match import SimilarityMatcher

    class Raising(SimilarityMatcher):
        def fit_curves(self, *args):
            raise RuntimeError("fit exploded")

    register_plugin(types.SimpleNamespace(forensics_matchers=hookimpl(lambda register: register("m-raise", Raising))),
                    "shoddy")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        evaluation = forensics.evaluate(registry=paper_registry)
    assert "alpha" in [m["matcher"] for m in evaluation.to_dict()["protocols"][0]["matchers"]]
    assert any("matcher m-raise left out of the evaluation: the m-raise matcher failed to fit: RuntimeError"
               in str(w.message) for w in seen)
    calibration = forensics.calibrate(registry=paper_registry)
    assert "alpha" in calibration.matchers and "failed to fit" in calibration.skipped["m-raise"]
    for job in (forensics.evaluate, forensics.calibrate):
        with pytest.raises(PluginError, match="the m-raise matcher failed to fit"):
            job(registry=paper_registry, matchers=["m-raise"])
