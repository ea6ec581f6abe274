"""Generator zoo for the offline embedded default protocol (MNIST).

What the product reads at run time, kept light:

- :mod:`.data`: the fixed T / P_n split (:func:`mnist_split`), the data of every MNIST protocol;
- :mod:`.encoder`: the project's MNIST ViT (architecture, preprocessing, shipped weights);
- :mod:`.catalog`: the shipped sample sets and their ``MANIFEST.json``;
- :mod:`.quality`: how near a sample set sits to T, in pixels or in an encoder's space.

The code that trained the zoo is :mod:`forensics.zoo.training` (the ``zoo`` extra). See
``docs/zoo.md``.
"""
from .data import mnist_split

__all__ = ["mnist_split"]
