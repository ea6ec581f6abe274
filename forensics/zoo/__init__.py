"""Generator zoo for the offline embedded default protocol (MNIST).

See ``forensics/zoo/README.md``. ``forensics.zoo.data.mnist_split`` defines the fixed T / P_n split.
"""
from .data import mnist_split

__all__ = ["mnist_split"]
