"""The example plugin runs the contract test suite that forensics offers every encoder plugin."""

import pytest

from forensics.testing import EncoderContract
from forensics_example_encoder import make


class TestColourPyramid(EncoderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def encoder(cls):
        return make(image_size=32)
