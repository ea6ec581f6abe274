"""The default protocol, ``mnist-effnet-vit``: the two offline protocols read as one fingerprint.

EfficientNet-Lite0 alone names a GAN left out of the registry as the other GAN; the MNIST ViT tells the
two GANs apart but fingerprints the rest weakly. Their curves end to end do both. The figures asserted
here were measured with `forensics registry evaluate -p mnist-effnet-vit` and `forensics zoo heldout`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forensics.match.matcher import available_matchers, leave_generator_out, leave_one_out, make_matcher

PROTOCOL = "mnist-effnet-vit"
PARTS = ["mnist-effnet-lite0", "mnist-vit"]


def test_the_default_is_the_combination_of_both_offline_protocols(bundled_registry):
    assert bundled_registry.default_protocol == PROTOCOL
    combo = bundled_registry.protocol(PROTOCOL)
    assert [p.name for p in combo.parts] == PARTS and len(combo.layers) == 9 + 8
    refs = bundled_registry.enrolled(PROTOCOL)
    assert len(refs) == 27 and len({r.generator for r in refs}) == 9
    assert not [w for w in bundled_registry.warnings if PROTOCOL in w]  # every zoo set is under both


@pytest.mark.parametrize("matcher, expected", [("alpha", (27, 25, 0, 2)), ("cosine", (25, 25, 0, 2))])
def test_leave_one_out(bundled_registry, plugin_host, matcher, expected):
    # cosine misses a DDPM run (named ddim) and an SNGAN run (named dcgan); 26 / 26-0-1 with DCGAN at
    # 18,000 iterations. svm measured 23 / 22-1-4 (two of either ODE sampler named as the other; left out
    # of the suite, its 27 refits take 17 s). EfficientNet alone: alpha 27 / 26-0-1, cosine 23 / 22-0-5, svm 27 / 26-0-1.
    # With SNGAN at 9,000 iterations: alpha 27 / 25-0-2, cosine 26 / 25-0-2, svm 24 / 21-2-4; with the
    # PixelCNN at 9,000 iterations: alpha 27 / 24-0-3, cosine 25 / 24-0-3; with the DDPM network at
    # 15,000 iterations: alpha 27 / 25-0-2, cosine 23 / 23-0-4, svm 27 / 25-0-2
    result = leave_one_out(bundled_registry.enrolled(PROTOCOL), matcher)
    o = result.open_set
    assert (result.correct, o["answered_right"], o["answered_wrong"], o["unknown"]) == expected


@pytest.mark.parametrize("matcher, unknown, gans_named", [("alpha", 25, 0), ("cosine", 25, 0), ("svm", 25, 0)])
def test_a_left_out_gan_is_no_longer_named_as_the_other(bundled_registry, plugin_host, matcher, unknown,
                                                         gans_named):
    # EfficientNet alone, before the DDPM network's second stage: 21/27 with alpha and svm, every run of
    # either GAN named as the other. Measured here: 25/27 with alpha and svm, a DDIM run named pndm and
    # a PNDM run named ddim; cosine the same (23/27, two of either, with DCGAN at 18,000 iterations).
    # With SNGAN at 9,000 iterations cosine named three of the six GAN runs as the other GAN (22/27);
    # trained to 18,000 with a decaying rate, SNGAN moved away from DCGAN (a left-out DCGAN run lay
    # 3.4-3.7 of SNGAN's spreads from it, was 2.3-2.8; 2.6-2.8 now that DCGAN's decay stage brought it
    # nearer, still beyond the calibrated 1.89). The two ODE samplers moved nearer the data with the
    # network's second stage, and nearer each other (26/27 with every matcher at 15,000 iterations)
    result = leave_generator_out(bundled_registry.enrolled(PROTOCOL), matcher)
    assert result["unknown"] == unknown, result["per_generator"]
    gans = {g: result["per_generator"][g]["attributed_to"] for g in ("dcgan", "sngan")}
    assert sum(sum(named.values()) for named in gans.values()) == gans_named, gans


# at calibration, one left-out run of either ODE sampler passes as the other: measured, recorded and said
ODE_LOOKALIKES = {"ddim": {"pndm": [1, 3]}, "pndm": {"ddim": [1, 3]}}


def test_the_shipped_calibration_is_current_and_lists_the_ode_samplers_as_lookalikes(bundled_registry,
                                                                                     plugin_host):
    refs = bundled_registry.enrolled(PROTOCOL)
    # svm's recorded them while its threshold was 1.89 spreads or a margin below 0.114 (SNGAN at 9,000
    # iterations); it calibrates to 1.40 spreads now, which turns both runs away
    expected = {"alpha": ODE_LOOKALIKES, "cosine": ODE_LOOKALIKES, "svm": {}}
    for name in available_matchers():
        m = make_matcher(name, calibration=bundled_registry.calibration(PROTOCOL, name)).fit(refs)
        assert m.calibration["source"] == "recorded" and m.calibration["lookalikes"] == expected[name], name


@pytest.fixture(scope="module")
def alpha(bundled_registry):
    m = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    return m.fit(bundled_registry.enrolled(PROTOCOL))


def test_held_out_sets_of_the_two_gans_and_the_demo_are_named(shipped_engine, bundled_registry, alpha,
                                                                plugin_host):
    samples = Path(bundled_registry.path) / PARTS[0] / "samples"
    results = {}
    for g in ("ddpm", "dcgan", "sngan"):
        curve = shipped_engine.curves(np.load(samples / g / "heldout.npz")["images"])[0]
        assert curve.fingerprint.protocol_digest == bundled_registry.protocol(PROTOCOL).digest
        results[g] = alpha.attribute(curve.fingerprint.vector())
    # `make demo`: measured ddpm, score 0.715, margin 0.141 over ddim, 1.23 of ddpm's spreads
    assert results["ddpm"].verdict == "ddpm" and results["ddpm"].margin > 0.1
    assert results["ddpm"].candidates[1].generator in {"ddim", "pndm"}
    for g in ("dcgan", "sngan"):
        assert results[g].verdict == g and results[g].lookalikes == {}, results[g].reason


def test_noisy_copies_of_t_come_back_unknown(shipped_engine, bundled_registry, alpha, plugin_host):
    # measured: nearest gmm, 7.0 of its spreads away against the calibrated 1.94 (EfficientNet alone: the
    # kde-copier at 3.46)
    from forensics.curate import curate, pick
    from forensics.engine import load_reference_set

    train = load_reference_set(bundled_registry.protocol(PARTS[0]).train)
    noisy = curate(train[pick(len(train), 500, seed=0)], "noise", seed=0)
    result = alpha.attribute(shipped_engine.curves(noisy)[0].fingerprint.vector())
    assert result.verdict is None and result.distance_ratio > 5, result.reason
