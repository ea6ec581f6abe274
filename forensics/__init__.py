"""forensics: which generator made these images, and are they copies of training data?

The public API::

    from forensics import ct_score
    result = ct_score(train, test, generated, k=10, distance="cosine", projection=64)
    result.value          # C_T: << 0 copying, ~0 no evidence, >> 0 underfitting

Names are imported on first use, so that ``import forensics`` (and the command line) starts fast.
"""

from __future__ import annotations

import importlib

from forensics.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "ct_score": "forensics.stats.ct",
    "FittedCT": "forensics.stats.ct",
    "CTResult": "forensics.stats.ct",
    "CellResult": "forensics.stats.ct",
    "Protocol": "forensics.protocol",
    "Combination": "forensics.protocol",
    "Fingerprint": "forensics.protocol",
    "Encoder": "forensics.encode.encoder",
}

__all__ = ["hookimpl", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'forensics' has no attribute {name!r}")
