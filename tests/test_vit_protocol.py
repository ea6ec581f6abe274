"""The second offline protocol, ``mnist-vit``: the project's own ViT trained on T, and its registry.

The encoder's weights ship inside the package (``forensics/zoo/weights``); the reference side ships in the
registry, so each curve here costs one pass of 500 digits through a 1.6 M-parameter ViT at 28 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from forensics.io.hashing import sha256_file
from forensics.match.matcher import make_matcher
from forensics.engine import build_encoder
from forensics.testing import EncoderContract, sample_images
from forensics.zoo import encoder as vit_mnist
from forensics.zoo.data import mnist_split

PROTOCOL = "mnist-vit"
ENCODER = "vit_mnist_tiny.forensics"
GENERATORS = {"dcgan", "ddim", "ddpm", "gmm", "kde-copier", "pixelcnn", "pndm", "sngan", "vae"}
# measured 0.968 on P_n (forensics/zoo/weights/vit_mnist.json); the test keeps a margin
MIN_TEST_ACCURACY = 0.95


def test_registry_validates_with_both_offline_protocols(bundled_registry):
    assert bundled_registry.validate() == []
    assert bundled_registry.default_protocol == "mnist-effnet-vit"  # which combines this protocol
    refs = bundled_registry.enrolled(PROTOCOL)
    assert {r.generator for r in refs} == GENERATORS and len(refs) == 27
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


def test_shipped_encoder_classifies_the_held_out_digits():
    _, _, test_x, test_y = mnist_split()
    accuracy = float((vit_mnist.predict(vit_mnist.load_classifier(), test_x) == test_y).mean())
    assert accuracy >= MIN_TEST_ACCURACY, accuracy


def test_exact_training_copies_are_copying_at_every_layer(shipped_engine):
    from forensics.curate import pick
    from forensics.engine import load_reference_set

    train = load_reference_set(shipped_engine.protocol.train)
    subset = pick(len(train), shipped_engine.protocol.batch_size, seed=0)
    values = np.array(shipped_engine.curves(train[subset])[0].fingerprint.values, dtype=float)
    assert np.all(values < -8), values


def test_the_noisy_copier_reads_as_copying_and_trained_generators_do_not(bundled_registry):
    # the finding this protocol exists for: EfficientNet reads the kde-copier (training image + σ ≈ 13
    # noise) as underfitting; this encoder reads it as copying from block 2 on (block 1: −1.7 … −2.4 over
    # the enrolled instances), while every trained
    # generator reads no copying anywhere and rises with depth (measured over the
    # enrolled runs: +0.3…+2.8 in block 0, +2.9…+7.8 in block 7, a rise of at least 2.36; +0.3…+4.4
    # and +2.9…+8.5 with the unconditional PixelCNN)
    for ref in bundled_registry.enrolled(PROTOCOL):
        values = np.array(ref.fingerprint.values, dtype=float)
        if ref.generator == "kde-copier":
            assert np.all(values[2:] < -2) and values[1] < -1, values
        else:
            assert np.all(values > 0) and values[-1] > values[0] + 2, (ref.generator, values)


def test_in_the_deepest_layer_the_best_zoo_classes_sit_as_near_their_data_as_the_papers_generators(bundled_registry):
    # the paper's published curves (real CIFAR-10 generators, ViT-B/16) end at +1.77…+5.20; measured over
    # the enrolled runs, the zoo's ancestral DDPM ends at +2.90…+3.28, SNGAN +3.73…+4.85 (+5.05…+5.52
    # at 9,000 iterations), DDIM +4.53…+4.72, the VAE +4.61…+4.96; PNDM (+4.74…+5.20) reaches the top;
    # the PixelCNN, the farthest, ends at +7.50…+7.81 (+8.24…+8.56 before it was class-conditional;
    # registry/mnist-vit/FINDINGS.md)
    paper = [r.fingerprint.values[-1] for r in bundled_registry.enrolled("he2024-cifar10-vitb16")]
    assert len(paper) == 18
    low, high = min(paper), max(paper)
    last = {}
    for ref in bundled_registry.enrolled(PROTOCOL):
        last.setdefault(ref.generator, []).append(ref.fingerprint.values[-1])
    for generator in ("ddpm", "sngan", "ddim", "vae"):
        assert all(low <= v <= high for v in last[generator]), (generator, last[generator], (low, high))
    assert max(last["pndm"]) < high + 0.5, (last["pndm"], high)
    assert min(last["pixelcnn"]) > high + 2


def test_the_held_out_copier_reads_as_copying_in_the_deep_layers(shipped_engine, bundled_registry):
    samples = Path(bundled_registry.path) / "mnist-effnet-lite0" / "samples"
    values = np.array(shipped_engine.curves(np.load(samples / "kde-copier" / "heldout.npz")["images"])[0]
                      .fingerprint.values, dtype=float)
    assert np.all(values[2:] < -2) and values[-1] < -4, values  # measured −2.1 … −5.8 from block 1


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
    images = np.load(Path(bundled_registry.path) / "mnist-effnet-lite0" / "samples" / "vae" / "heldout.npz")["images"]
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


def test_a_held_out_sample_set_ranks_its_generator_first(shipped_engine, bundled_registry, plugin_host):
    samples = Path(bundled_registry.path) / "mnist-effnet-lite0" / "samples"
    images = np.load(samples / "ddpm" / "heldout.npz")["images"]
    curve = shipped_engine.curves(images)[0]
    matcher = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    result = matcher.fit(bundled_registry.enrolled(PROTOCOL)).attribute(curve.fingerprint.vector())
    # measured 0.184 over the VAE (0.064 with the DDPM network at 15,000 iterations, 0.16 before that)
    assert result.candidates[0].generator == "ddpm" and result.margin > 0.05
    # never a wrong name. The set lies 1.41 of DDPM's spreads from its nearest DDPM run: named ddpm under
    # the calibration shipped now (unknown beyond 1.69 spreads or below a margin of 0.054); it lay 0.71
    # away with the network at 15,000 iterations
    assert result.verdict in ("ddpm", None)
    assert matcher.calibration["source"] == "recorded"  # the shipped calibration is current
    assert (result.verdict is None) == (result.distance_ratio > matcher.calibration["distance_ratio"])


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
