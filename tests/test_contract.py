"""Every bundled encoder family passes the contract suite that forensics offers plugin authors.

One small member of each family is built with random weights at a small input size; every bundled name
is also checked to declare its layers (through ``describe()``, on the meta device)."""

from __future__ import annotations

import pytest

from forensics.testing import EncoderContract, check_encoder, sample_images


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
