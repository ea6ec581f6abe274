"""The default protocol, ``mnist-effnet-vit-pixel``: the three offline protocols read as one fingerprint.

EfficientNet-Lite0 alone can take a GAN left out of the registry for the other GAN; the MNIST ViT tells
the two GANs apart but fingerprints the rest weakly; the low-level image statistics (``mnist-pixel``) tell
the diffusion network's samplers apart where JPEG has smoothed what the encoders see. Their curves end to
end do all three: the tests below state what the default must do with any honest zoo. The shipped zoo's
figures under it are printed by ``benchmarks/zoo_figures.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from forensics.match import available_matchers, leave_generator_out, leave_one_out, make_matcher
from forensics.zoo.catalog import HELDOUT_INSTANCE, samples_dir

PROTOCOL = "mnist-effnet-vit-pixel"
PARTS = ["mnist-effnet-lite0", "mnist-vit", "mnist-pixel"]
GANS = ("dcgan", "sngan")
# the three samplers of the zoo's one diffusion network: the only generators that may pass for each other
ONE_NETWORK = {"ddpm", "ddim", "pndm"}
# Leave-one-out floor, as under each part (test_embedded_default.py): chance is 1/9 at 9 generators; the
# floor leaves room for a retrained zoo to move a few runs.
LOO_FLOOR = 0.9


def test_the_default_is_the_combination_of_the_three_offline_protocols(bundled_registry, zoo_reference_sets):
    assert bundled_registry.default_protocol == PROTOCOL
    combo = bundled_registry.protocol(PROTOCOL)
    assert [p.name for p in combo.parts] == PARTS
    assert len(combo.layers) == sum(len(bundled_registry.protocol(p).layers) for p in PARTS)
    refs = bundled_registry.enrolled(PROTOCOL)
    assert {(r.generator, r.provenance["input_sha256"]) for r in refs} == zoo_reference_sets
    assert len(refs) == len(zoo_reference_sets)
    assert not [w for w in bundled_registry.warnings if PROTOCOL in w]  # every zoo set is under both


@pytest.mark.slow
@pytest.mark.parametrize("matcher", ["alpha", "cosine"])
def test_leave_one_out_is_above_its_floor_and_never_names_a_wrong_generator(bundled_registry, plugin_host,
                                                                            matcher):
    result = leave_one_out(bundled_registry.enrolled(PROTOCOL), matcher)
    assert result.correct >= LOO_FLOOR * result.n, result.predictions
    assert result.open_set["answered_wrong"] == 0, result.predictions


@pytest.mark.slow
@pytest.mark.parametrize("matcher", ["alpha", "cosine", "svm"])
def test_a_left_out_generator_is_never_named_as_another_network(bundled_registry, plugin_host, matcher):
    # the reason for the combination: a GAN left out is not named as the other GAN; and only the samplers
    # of the one diffusion network may pass for each other (or be named as the network, their family)
    result = leave_generator_out(bundled_registry.enrolled(PROTOCOL), matcher)
    named = {g: p["attributed_to"] for g, p in result["per_generator"].items() if p["attributed_to"]}
    assert all(g in ONE_NETWORK and set(others) <= ONE_NETWORK | {"ddpm-net"} for g, others in named.items()), named
    assert all(p["family"] == p["attributed_to"].get("ddpm-net", 0) for p in result["per_generator"].values())


@pytest.mark.slow
def test_the_shipped_calibration_is_current_and_its_lookalikes_share_a_network(bundled_registry, plugin_host):
    # a lookalike is a left-out generator that the thresholds let through as an enrolled one; calibration
    # records it, and every verdict naming that generator says so
    from forensics.match.calibration import POOL_RULE, pool_applies

    refs = bundled_registry.enrolled(PROTOCOL)
    for name in available_matchers():
        m = make_matcher(name, calibration=bundled_registry.calibration(PROTOCOL, name)).fit(refs)
        assert m.calibration["source"] == "recorded", name
        # the pool over every kept condition and size is recorded under the current rule, adopted or not
        pooled = m.calibration["pooled"]
        assert pooled["rule"] == POOL_RULE and isinstance(pooled["adopted"], bool), name
        assert pool_applies(pooled, refs) == pooled["adopted"], name
        assert (m.calibration.get("thresholds_from") == "pooled") == pooled["adopted"], name
        lookalikes = m.calibration["lookalikes"]
        assert all(g in ONE_NETWORK and set(others) <= ONE_NETWORK for g, others in lookalikes.items()), name


@pytest.fixture(scope="module")
def alpha(bundled_registry):
    m = make_matcher("alpha", calibration=bundled_registry.calibration(PROTOCOL, "alpha"))
    return m.fit(bundled_registry.enrolled(PROTOCOL))


@pytest.mark.slow
def test_held_out_sets_of_the_two_gans_and_the_demo_are_ranked_first(shipped_engine, bundled_registry, alpha,
                                                                       plugin_host):
    results = {}
    for g in ("ddpm", *GANS):
        curve = shipped_engine.curves(np.load(samples_dir() / g / f"{HELDOUT_INSTANCE}.npz")["images"])[0]
        assert curve.fingerprint.protocol_digest == bundled_registry.protocol(PROTOCOL).digest
        results[g] = alpha.attribute(curve.fingerprint.vector())
        assert results[g].candidates[0].generator == g and results[g].verdict in (g, None), results[g].reason
    # `make demo` attributes the DDPM held-out set under the default: it must come out named
    assert results["ddpm"].verdict == "ddpm", results["ddpm"].reason


@pytest.mark.slow
def test_noisy_copies_of_t_come_back_unknown(shipped_engine, bundled_registry, alpha, plugin_host):
    from forensics.curation import curate, pick
    from forensics.engine import load_reference_set

    train = load_reference_set(bundled_registry.protocol(PARTS[0]).train)
    noisy = curate(train[pick(len(train), 500, seed=0)], "noise", seed=0)
    result = alpha.attribute(shipped_engine.curves(noisy)[0].fingerprint.vector())
    assert result.verdict is None, result.reason
