"""The second offline protocol, ``mnist-vit``: the project's own ViT trained on T, and its registry.

The encoder's weights ship inside the package (``forensics/zoo/weights``); the reference side ships in the
registry, so each curve here costs one pass of 500 digits through a 1.6 M-parameter ViT at 28 px. The
shipped zoo's figures under this protocol are printed by ``benchmarks/zoo_figures.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from forensics.engine import build_encoder
from forensics.io.hashing import sha256_file
from forensics.match import make_matcher
from forensics.stats.base import get_statistic
from forensics.testing import EncoderContract, sample_images
from forensics.zoo import encoder as vit_mnist
from forensics.zoo.catalog import HELDOUT_INSTANCE, samples_dir
from forensics.zoo.data import mnist_split

PROTOCOL = "mnist-vit"
ENCODER = "vit_mnist_tiny.forensics"
COPIER = "kde-copier"  # copies training images and adds pixel noise (σ ≈ 13 grey levels)
# Accuracy floor on P_n, which training never sees: a ViT that has learnt the digits classifies 95 % of
# MNIST's held-out digits even from 4,000 training images; below it the encoder is not the trained one.
MIN_TEST_ACCURACY = 0.95


def test_registry_validates_with_both_offline_protocols(bundled_registry, zoo_reference_sets):
    assert bundled_registry.validate() == []
    assert bundled_registry.default_protocol == "mnist-effnet-vit-pixel"  # which combines this protocol
    refs = bundled_registry.enrolled(PROTOCOL)
    assert {(r.generator, r.provenance["input_sha256"]) for r in refs} == zoo_reference_sets
    assert len(refs) == len(zoo_reference_sets)
    assert all(len(r.fingerprint.values) == len(bundled_registry.protocol(PROTOCOL).layers) for r in refs)


def test_shipped_weights_are_the_protocols(bundled_registry, plugin_host):
    proto = bundled_registry.protocol(PROTOCOL)
    assert proto.encoder.name == ENCODER
    encoder = build_encoder(proto.encoder)
    assert encoder.weights.source == "package"
    assert encoder.weights.digest == proto.encoder.weights
    record = json.loads((Path(vit_mnist.weights_path()).parent / vit_mnist.RECORD_FILE).read_text())
    assert record["file_sha256"] == sha256_file(vit_mnist.weights_path())
    assert record["encoder_digest"] == proto.encoder.weights


def test_encoder_is_listed_with_its_own_preprocessing(plugin_host):
    factory = plugin_host.get("encoders", ENCODER).obj
    spec = factory.describe()
    assert spec.weights.startswith("package:")
    assert spec.preprocessing == vit_mnist.PREPROCESSING
    assert [layer.name for layer in spec.layers] == [f"blocks.{i}" for i in range(vit_mnist.ARCH_KWARGS["depth"])]


def test_own_preprocessing_follows_another_input_size(plugin_host):
    encoder = plugin_host.get("encoders", ENCODER).obj(image_size=56)
    prep = encoder.preprocessing
    assert (prep.size, prep.resize, prep.mean, prep.std) == (56, 56, vit_mnist.PREPROCESSING.mean,
                                                             vit_mnist.PREPROCESSING.std)


@pytest.mark.slow
def test_shipped_encoder_classifies_the_held_out_digits():
    _, _, test_x, test_y = mnist_split()
    accuracy = float((vit_mnist.predict(vit_mnist.load_classifier(), test_x) == test_y).mean())
    assert accuracy >= MIN_TEST_ACCURACY, accuracy


@pytest.mark.slow
def test_exact_training_copies_are_copying_at_every_layer(shipped_engine):
    from forensics.curation import pick
    from forensics.engine import load_reference_set

    train = load_reference_set(shipped_engine.protocol.train)
    subset = pick(len(train), shipped_engine.protocol.batch_size, seed=0)
    curve = shipped_engine.curves(train[subset])[0]
    assert {layer.reading for layer in curve.layers} == {"copying"}, curve.fingerprint.values


def test_the_noisy_copier_reads_as_copying_and_trained_generators_do_not(bundled_registry, plugin_host):
    # the finding this protocol exists for: EfficientNet reads the noisy copier as underfitting; this
    # encoder, trained on T, reads it as copying from block 2 on. Every trained generator reads no copying
    # anywhere, and its curve ends higher than it starts (deeper layers see farther from the data).
    reading = get_statistic(bundled_registry.protocol(PROTOCOL).statistic.name).reading
    for ref in bundled_registry.enrolled(PROTOCOL):
        values = ref.fingerprint.values
        readings = [reading(v) for v in values]
        if ref.generator == COPIER:
            assert set(readings[2:]) == {"copying"}, values
        else:
            assert "copying" not in readings and values[-1] > values[0], (ref.generator, values)


@pytest.mark.slow
def test_the_held_out_copier_reads_as_copying_in_the_deep_layers(shipped_engine):
    images = np.load(samples_dir() / COPIER / f"{HELDOUT_INSTANCE}.npz")["images"]
    curve = shipped_engine.curves(images)[0]
    assert {layer.reading for layer in curve.layers[2:]} == {"copying"}, curve.fingerprint.values


@pytest.mark.slow
def test_an_engine_on_a_torch_device_runs_the_statistic_there_with_the_same_curve(shipped_engine, bundled_registry,
                                                                                torch_device):
    # "cpu:0" is a torch device that is not the engine's default "cpu": the encoder and the statistic's
    # searches run through the device code a GPU runs, on the shipped reference side. On a GPU the
    # encoder's convolutions round differently, so the embeddings (and the curve) differ a little.
    from forensics.engine import Engine

    device = "cpu:0" if torch_device == "cpu" else torch_device
    engine = Engine(bundled_registry.protocol(PROTOCOL), device=device, use_cache=False,
                    shipped_dir=bundled_registry.reference_dir(PROTOCOL))
    assert all(r.device is not None and r.device.type == torch_device for r in engine.reference_side())
    assert all(r.device is None for r in shipped_engine.reference_side())
    images = np.load(samples_dir() / "vae" / f"{HELDOUT_INSTANCE}.npz")["images"]
    want = shipped_engine.curves(images)[0].fingerprint.values
    got = engine.curves(images)[0].fingerprint.values
    assert got == pytest.approx(want, abs=1e-12 if torch_device == "cpu" else 0.02), np.subtract(got, want)


def test_an_absent_or_unknown_device_is_a_one_line_usage_error(bundled_registry):
    import torch

    from forensics.errors import UsageError
    from forensics.engine import Engine

    proto = bundled_registry.protocol(PROTOCOL)
    with pytest.raises(UsageError, match="unknown device 'gpu'.*use cpu, cuda or cuda:N"):
        Engine(proto, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="sees no CUDA GPU.*use --device cpu"):
            Engine(proto, device="cuda")


@pytest.mark.slow
def test_a_held_out_sample_set_ranks_its_generator_first(shipped_engine, bundled_registry, plugin_host):
    curve = shipped_engine.curves(np.load(samples_dir() / "ddpm" / f"{HELDOUT_INSTANCE}.npz")["images"])[0]
    matcher = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    result = matcher.fit(bundled_registry.enrolled(PROTOCOL)).attribute(curve.fingerprint.vector())
    assert matcher.calibration["source"] == "recorded"  # the shipped calibration is today's references'
    assert result.candidates[0].generator == "ddpm" and result.verdict in ("ddpm", None), result.reason
    if result.verdict is not None:  # named only within the calibrated distance of the generator's runs
        assert result.distance_ratio <= matcher.calibration["distance_ratio"]


class TestShippedViT(EncoderContract):
    """The encoder contract, on the real shipped weights."""

    @pytest.fixture(scope="class")
    @classmethod
    def encoder(cls):
        from forensics.plugins import PluginHost

        return PluginHost(autoload=False).get("encoders", ENCODER).obj()

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls):
        return sample_images(n=3, size=28)
