"""Every bundled plugin passes the contract suites that forensics offers plugin authors.

Encoders: one small member of each family, built with random weights at a small input size. The C_T
statistic and the alpha, cosine and svm matchers, each as the plugin host provides it; and each suite
names what a broken plugin breaks."""

from __future__ import annotations

import pytest

import numpy as np

from forensics.match import Candidate, Matcher
from forensics.testing import (
    EncoderContract, MatcherContract, StatisticContract, check_encoder, check_matcher, check_statistic,
    sample_images,
)


CASES = {
    "vit-cls": ("vit_tiny_patch16_224.augreg_in21k", {"image_size": 32}),
    "vit-mean": ("deit_tiny_patch16_224.fb_in1k", {"image_size": 32, "pooling": "mean"}),
    "swin": ("swin_tiny_patch4_window7_224.ms_in1k", {"image_size": 32}),
    "resnet": ("resnet18.tv_in1k", {"image_size": 32}),
    "inception": ("inception_v3.tv_in1k", {"image_size": 75}),
    "inception-channel-mean": ("inception_v3.tv_in1k", {"image_size": 75, "pooling": "channel_mean"}),
    "efficientnet": ("tf_efficientnet_lite0", {"image_size": 32}),
    "clip": ("openclip_vit_b_32.openai", {"image_size": 32}),
}


def build(name, options):
    from forensics.plugins import PluginHost

    factory = PluginHost(autoload=False).get("encoders", name).obj
    return factory(weights="random", **options)


class TestBundledEncoders(EncoderContract):
    @pytest.fixture(scope="class", params=list(CASES), ids=list(CASES))
    @classmethod
    def encoder(cls, request):
        name, options = CASES[request.param]
        return build(name, options)

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls):
        return sample_images(n=3, size=24)


def test_check_encoder_names_a_broken_layer_size():
    encoder = build("resnet18.tv_in1k", {"image_size": 32})
    from forensics.encode.encoder import Layer

    encoder.layers = (*encoder.layers[:-1], Layer("layer4", 7))
    with pytest.raises(AssertionError, match="layer4"):
        check_encoder(encoder, sample_images(n=2, size=24))


class TestBundledStatistic(StatisticContract):
    @pytest.fixture(scope="class")
    @classmethod
    def statistic(cls):
        from forensics.plugins import PluginHost

        return PluginHost(autoload=False).get("statistics", "ct").obj

    @pytest.fixture(scope="class")
    @classmethod
    def params(cls):
        return {"k": 5}  # 200 points of P_n: 40 per cell


def bundled_matcher(name):
    """``factory(**options)`` for the bundled matcher ``name``, as the plugin host provides it."""
    from forensics.plugins import PluginHost

    factory = PluginHost(autoload=False).get("matchers", name).obj

    def make(**options):
        matcher = factory(**options)
        matcher.name = name
        return matcher

    return make


class TestBundledNearestNeighbourMatchers(MatcherContract):
    @pytest.fixture(scope="class", params=["alpha", "cosine"])
    @classmethod
    def matcher_factory(cls, request):
        return bundled_matcher(request.param)


class TestBundledSVMMatcher(MatcherContract):
    # libsvm stops at its tolerance (1e-3, on the dual) along a path that follows the row order: decision
    # values move by about 1e-3 with the order of the references
    reference_order_atol = 1e-2

    @pytest.fixture(scope="class")
    @classmethod
    def matcher_factory(cls):
        return bundled_matcher("svm")


def test_check_statistic_names_a_score_that_depends_on_the_batch_order():
    from forensics.plugins import PluginHost

    ct = PluginHost(autoload=False).get("statistics", "ct").obj

    class FirstPointCounts:
        def __init__(self, fitted):
            self.fitted = fitted

        def score(self, generated, **params):
            return self.fitted.score(generated[: len(generated) // 2], **params)

        def to_arrays(self):
            return self.fitted.to_arrays()

        def to(self, device):
            return self

    class OrderSensitive(type(ct)):
        def fit(self, train, test, **params):
            return FirstPointCounts(super().fit(train, test, **params))

    with pytest.raises(AssertionError, match="shuffling the generated batch"):
        check_statistic(OrderSensitive(), params={"k": 5})


def test_check_statistic_scores_with_what_batch_params_returns():
    from forensics.plugins import PluginHost

    ct = PluginHost(autoload=False).get("statistics", "ct").obj

    class ListParams(type(ct)):
        def batch_params(self, params, batch_size):
            return [("batch_size", batch_size)]  # not a mapping

    with pytest.raises(AssertionError, match="batch_params\\(\\) must return a mapping"):
        check_statistic(ListParams(), params={"k": 5})


def test_check_matcher_names_a_calibration_that_differs_from_refitting():
    class Nearest(Matcher):
        def fit_curves(self, curves, labels, instances):
            self.curves, self.labels = curves, labels

        def candidates(self, curve):
            d = np.linalg.norm(self.curves - curve, axis=1)
            return [Candidate(str(g), -float(d[self.labels == g].min())) for g in sorted(set(self.labels))]

        def calibration_points(self, references):  # a "fast path" that forgets the left-out generators
            points = super().calibration_points(references)
            return type(points)(points.answer, points.unknown[:1], points.held_out, [])

    with pytest.raises(AssertionError, match="calibration_points"):
        check_matcher(Nearest)
