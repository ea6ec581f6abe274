"""Hugging Face ``diffusers`` models for InvMM (the ``diffusers`` extra): pixel-space UNets, latent UNets with
their autoencoder, and Stable Diffusion with the soft prompt of ``ALGORITHMS.md`` §4. The adapters are in
:mod:`forensics_diffusers.models` (what InvMM reads from a diffusers model, and from where); this module only
registers the loader, so that the plugin host finds it without importing torch or diffusers.
"""

from __future__ import annotations

import os
from typing import Any

from forensics.hookspecs import RegisterDiffusionModel, hookimpl


def _models():
    import importlib

    return importlib.import_module("forensics_diffusers.models")


def load(*, path: str | os.PathLike | None = None, device: str = "cpu", **options: Any):
    """The plugin host's loader: ``load(path=FOLDER, device=..., dtype=..., timesteps=...)``
    (:func:`forensics_diffusers.models.load`)."""
    models = _models()

    return models.load(path=path, device=device, **options)


def accepts(path: Any) -> bool:
    """Whether ``path`` is a diffusers folder (:func:`forensics_diffusers.models.accepts`)."""
    models = _models()

    return models.accepts(path)


load.accepts = accepts  # type: ignore[attr-defined]


def __getattr__(name: str) -> Any:
    """The adapters and ``load_diffusers``, imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    models = _models()

    try:
        return getattr(models, name)
    except AttributeError:
        raise AttributeError(f"module 'forensics_diffusers' has no attribute {name!r}") from None


@hookimpl
def forensics_diffusion_models(register: RegisterDiffusionModel) -> None:
    register("diffusers", load, description="a Hugging Face diffusers folder: DDPM/DDIM/PNDM or LDM pipeline, "
                                            "Stable Diffusion (soft prompt), or a UNet2DModel with its scheduler")
