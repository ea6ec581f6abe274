"""The ``pixel-statistics`` encoder and the ``mean-z`` statistic (plugins/forensics_pixelstats).

The encoder's values against an independent numpy computation of each statistic; mean-z against scipy's
Welch test, its records against scoring the images again, its null distribution; both through the plugin
contracts; and a protocol of them, combined with a C_T protocol, from creation to attribution."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from forensics.errors import StatisticError, UsageError
from forensics.testing import EncoderContract, StatisticContract, sample_embeddings, sample_images


def host_get(kind, name):
    from forensics.plugins import PluginHost

    return PluginHost(autoload=False).get(kind, name).obj


def encoder(**options):
    return host_get("encoders", "pixel-statistics")(**options)


def numpy_statistics(images: np.ndarray) -> np.ndarray:
    """Each image's 20 statistics, computed here from their definitions (module docstring of the plugin)."""
    x = images.astype(np.float64) / 255.0
    if x.ndim == 4:
        x = x.mean(axis=3)
    n, h, w = x.shape
    hist = np.stack([np.histogram(np.minimum(i, 1 - 1e-12), bins=8, range=(0, 1))[0] for i in x]) / (h * w)
    gx = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))
    gy = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2))
    power = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True))) ** 2 / (h * w)
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")  # integer frequencies
    radius = np.hypot(fx, fy) / h  # cycles per pixel (h = w)
    v = radius / (math.sqrt(2) / 2) * 8
    ring = np.clip(np.ceil(v - 1e-9).astype(int) - 1, 0, 7)  # ring j holds v in (j, j + 1]: an edge in the inner one
    spec = np.log(1e-8 + np.stack([power[:, ring == k].mean(axis=1) for k in range(8)], axis=1))
    level = np.rint(x * 255)  # the grey level nearest each pixel's luminance
    ends = np.stack([(level == 0).mean(axis=(1, 2)), (level == 255).mean(axis=(1, 2))], axis=1)
    return np.hstack([hist, gx[:, None], gy[:, None], spec, ends])


def embed(enc, images):
    from forensics.encode.encoder import preprocess

    return np.hstack([e.numpy() for e in enc.forward_layers(preprocess(images, enc.preprocessing), enc.layer_names)])


@pytest.mark.parametrize("shape", [(5, 28, 28), (4, 28, 28, 3)], ids=["grey", "rgb"])
def test_each_statistic_is_its_definition(shape):
    images = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    images[0] = 0  # a blank image: one intensity bin, no gradient, no power
    images[1, :14] = 255  # half of an image at the top of the range
    got = embed(encoder(), images)
    assert got.shape == (shape[0], 20)
    assert got[0, -2] == 1.0 and got[1, -1] >= 0.5  # every pixel of the blank at the bottom; the top half at the top
    np.testing.assert_allclose(got, numpy_statistics(images), rtol=1e-5, atol=1e-6)
    assert np.allclose(got[:, :8].sum(axis=1), 1.0)  # the intensity shares of an image sum to one


def test_layers_options_and_identity():
    enc = encoder(image_size=16)
    assert enc.layer_names[:2] == ("intensity.0", "intensity.1") and enc.layer_names[-1] == "saturated.high"
    assert enc.layer_dims() == {name: 1 for name in enc.layer_names}
    assert enc.identity()["weights"] == encoder().identity()["weights"]  # the definition, not a size
    assert enc.preprocessing.size == 16
    only = enc.forward_layers(_pixels(2, 16), ["gradient.y"])
    assert len(only) == 1 and only[0].shape == (2, 1)
    with pytest.raises(UsageError, match="image_size"):
        encoder(pooling="mean")
    with pytest.raises(UsageError, match="image_size"):
        encoder(image_size=2)
    with pytest.raises(UsageError, match="no weights"):
        encoder(weights="some.safetensors")


def _pixels(n, size):
    import torch

    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


class TestPixelStatisticsEncoder(EncoderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def encoder(cls):
        return encoder(image_size=24)

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls):
        return sample_images(n=3, size=24)


class TestMeanZStatistic(StatisticContract):
    @pytest.fixture(scope="class")
    @classmethod
    def statistic(cls):
        return host_get("statistics", "mean-z")

    @pytest.fixture(scope="class")
    @classmethod
    def embeddings(cls):
        return sample_embeddings(dim=1)


def test_mean_z_is_welchs_statistic_and_its_records_score_any_subset_exactly():
    from scipy import stats

    rng = np.random.default_rng(2)
    train, test, generated = rng.normal(size=(300, 1)), rng.normal(size=(200, 1)), rng.normal(0.3, 2.0, (150, 1))
    fit = host_get("statistics", "mean-z").fit(train, test)
    want = stats.ttest_ind(generated[:, 0], test[:, 0], equal_var=False).statistic
    assert math.isclose(fit.score(generated).value, want, rel_tol=1e-12)
    records = fit.records(generated)
    subsets = [rng.choice(150, 40, replace=False) for _ in range(5)] + [None]
    for rows, got in zip(subsets, fit.score_subsets(records, subsets)):
        again = fit.score(generated if rows is None else generated[rows]).value
        assert got.value == again
    # records padded with more fields (a combination's records beside C_T's) read the same
    padded = np.hstack([records, np.full_like(records, np.nan)])
    assert fit.score_records(padded).value == fit.score(generated).value
    # the values alone (what resampling ranks), bit for bit, for subsets of every size, repeated rows among them
    many = [None, np.array([3]), np.array([4, 4]), *(rng.choice(150, size) for size in (2, 7, 40, 40, 150, 333))]
    values = fit.subset_values(padded, many)
    assert np.isnan(values[1])  # one image: undefined, as scoring it says
    for rows, value in zip(many[2:], values[2:]):
        assert value == fit.score(generated[rows]).value
    assert values[0] == fit.score(generated).value


def test_mean_z_of_fresh_data_is_standard_normal_and_grows_with_the_batch_where_it_differs():
    rng = np.random.default_rng(3)
    stat = host_get("statistics", "mean-z")
    null = [stat.fit(rng.normal(size=(10, 1)), rng.normal(size=(1000, 1))).score(rng.normal(size=(200, 1))).value
            for _ in range(400)]  # P_n and the batch both drawn afresh: the null of the two-sample test
    assert abs(np.mean(null)) < 0.15 and 0.88 < np.std(null) < 1.12
    fit = stat.fit(rng.normal(size=(10, 1)), rng.normal(size=(5000, 1)))
    shifted = {m: np.mean([fit.score(rng.normal(0.2, 1, (m, 1))).value for _ in range(50)]) for m in (100, 400)}
    assert 1.5 < shifted[400] / shifted[100] < 2.5  # about √4


def test_mean_z_refuses_what_it_cannot_score():
    stat = host_get("statistics", "mean-z")
    fit = stat.fit(np.zeros((10, 1)), np.arange(10.0)[:, None])
    with pytest.raises(StatisticError, match="one-dimensional"):
        stat.fit(np.zeros((10, 3)), np.zeros((10, 3)))
    with pytest.raises(StatisticError, match="at least 2 generated"):
        fit.score(np.ones((1, 1)))
    with pytest.raises(StatisticError, match="non-finite"):
        fit.score(np.array([[1.0], [np.nan]]))
    constant = stat.fit(np.zeros((10, 1)), np.zeros((10, 1)))
    with pytest.raises(StatisticError, match="constant"):
        constant.score(np.zeros((5, 1)))
    assert stat.reading(2.5) == stat.reading(-2.5) == "underfitting" and stat.reading(1.0) == "no evidence"
    assert "copying" not in {stat.reading(v) for v in np.linspace(-50, 50, 101)}


def test_combined_with_c_t_from_creation_to_attribution(tmp_path, plugin_host):
    """A mean-z protocol is created from the command line, combined with a C_T one, and a query's curve under
    the combination is its parts' curves, from the images and from the records alike."""
    from typer.testing import CliRunner

    from forensics import api
    from forensics.cli import app
    from forensics.curation import curate
    from forensics_datasets import load_digits

    reg = tmp_path / "registry"
    run = lambda *args: CliRunner().invoke(app, [*args, "--registry", str(reg)])  # noqa: E731
    r = run("protocol", "create", "digits-pixel", "--dataset", "digits", "--encoder", "pixel-statistics",
            "--option", "image_size=8", "--statistic", "mean-z", "--batch-size", "100")
    assert r.exit_code == 0, r.output
    r = run("protocol", "create", "digits-ct", "--dataset", "digits", "--encoder", "vit_mnist_tiny.forensics",
            "--k", "3", "--projection", "16", "--batch-size", "100")
    assert r.exit_code == 0, r.output
    r = run("protocol", "create", "digits-bad", "--dataset", "digits", "--encoder", "pixel-statistics",
            "--statistic", "no-such-statistic")
    assert r.exit_code == 2 and "no-such-statistic" in r.output
    # an encoder whose layers mean-z cannot score is refused before anything is embedded
    r = run("protocol", "create", "digits-bad", "--dataset", "digits", "--encoder", "vit_mnist_tiny.forensics",
            "--statistic", "mean-z", "--batch-size", "100")
    assert r.exit_code == 2 and "scores layers of size 1" in r.output and "blocks.0 (128)" in r.output
    assert not (reg / "digits-bad").exists()
    train = load_digits("train")
    for i, kind in enumerate(("rotate", "noise")):
        np.savez(tmp_path / f"{kind}.npz", images=curate(train[:200], kind, seed=i))
        for name in ("digits-pixel", "digits-ct"):
            r = run("registry", "enroll", kind, str(tmp_path / f"{kind}.npz"), "-p", name, "--conditions", "none,jpeg90")
            assert r.exit_code == 0, r.output
    r = run("protocol", "combine", "digits-both", "digits-ct", "digits-pixel", "--description", "both")
    assert r.exit_code == 0, r.output
    query = curate(train[200:350], "noise", seed=9)
    docs = {name: api.attribute(query, protocol=name, registry=reg).to_dict()
            for name in ("digits-ct", "digits-pixel", "digits-both")}
    both = docs["digits-both"]
    assert both["curve"]["values"] == docs["digits-ct"]["curve"]["values"] + docs["digits-pixel"]["curve"]["values"]
    assert both["candidates"][0]["generator"] == "noise"
    stored = api.open_registry(reg)
    refs = stored.enrolled("digits-both")
    records, problems = stored.records("digits-both", refs, "jpeg90")
    assert not problems and {a.shape for a in records.values()} == {(8 + 20, 100, 2)}
    mem = api.memorization(query, protocol="digits-both", registry=reg).to_dict()
    assert mem["thresholds"] == {"copying_below": -2.0, "underfitting_above": 2.0, "differs_beyond": 2.0}
    assert "copying" not in mem["curve"]["readings"][8:]
    json.dumps(both, allow_nan=False)


def test_a_coefficient_on_a_ring_edge_lies_in_the_inner_ring():
    """At 28 px the four coefficients at (±7, ±7) lie exactly on the edge between rings 3 and 4 (v = 4): in
    ring 3, as the bundled references and enrolled curves of mnist-pixel were computed."""
    from forensics_pixelstats import _rings

    rings = _rings(28)
    assert {int(rings[a, b]) for a in (7, -7) for b in (7, -7)} == {3}
    assert int(rings[0, 0]) == 0 and int(rings[14, 14]) == 7 and int(rings[0, 1]) == 0


@pytest.mark.parametrize("generator", ["dcgan", "ddpm", "pixelcnn", "gmm"])
def test_the_bundled_mnist_pixel_curves_come_back_from_their_images(generator):
    """What `attribute` computes of an enrolled run's images is its enrolled curve, to the last bit: the
    references and the queries are one computation (a change to it must re-enrol, not drift)."""
    import forensics
    from forensics.registry import Registry, default_registry_path

    reg = Registry.open(default_registry_path())
    for inst in reg.generators["mnist-pixel"][generator].instances:
        got = forensics.attribute(default_registry_path().parent / inst.provenance["input"], protocol="mnist-pixel",
                                  registry=reg).curve.fingerprint.values
        assert got == inst.values, inst.id


def test_a_protocol_made_with_another_definition_is_told_to_be_made_again():
    # a protocol recorded under pixel-statistics/1 (18 statistics) met this version's encoder: it was told to pass
    # --weights, which an encoder without weights cannot take
    from dataclasses import replace

    from forensics.engine import build_encoder
    from forensics.errors import ProtocolMismatch
    from forensics.protocol import EncoderRef

    ref = EncoderRef.from_identity(encoder().identity())
    assert build_encoder(ref).weights.digest == ref.weights  # its own definition builds
    with pytest.raises(ProtocolMismatch, match=r"make the protocol again \(`forensics protocol create`\)") as err:
        build_encoder(replace(ref, weights="sha256:" + "0" * 64))
    assert "--weights" not in str(err.value)
