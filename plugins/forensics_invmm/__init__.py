"""Bundled InvMM plugin: the zoo's diffusion networks and the copy similarities.

Diffusion models
    ``mnist-dup`` — the memorizing network: the zoo's UNet trained on T with ten of its digits repeated 100
    times each; ``mnist-ddpm`` — the zoo's diffusion network the DDPM / DDIM / PNDM sets came from; and
    ``zoo-unet``, which opens any ``.safetensors`` file of that architecture (``--model path/to/net.safetensors``).
    All run in pixel space on 28 × 28 grey digits with the linear β schedule (1e-4 … 0.02, T = 1,000).
Copy similarities
    ``pixel-correlation`` (β 0.985, the MNIST default) and ``sscd`` (the paper's, from the user's TorchScript
    file, β 0.5); see :mod:`forensics.inversion.similarity`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forensics.hookspecs import RegisterDiffusionModel, RegisterSimilarity, hookimpl

# Nothing here imports torch until a model or similarity is built: the plugin host loads every plugin to
# find any name, and a command that fails on a wrong name should fail at once.


def _device(device: Any):
    from forensics.encode.devices import torch_device

    return torch_device(device)


def _named(name: str):
    def load(*, path: str | None = None, device: str = "cpu", registry: str | None = None):
        from forensics.errors import UsageError
        from forensics.zoo.unet import ZooDiffusion, load_network, network_path

        file = Path(path) if path is not None else network_path(name, registry)
        if path is None and not file.is_file():
            raise UsageError(f"the {name} network's weights are not in the registry ({file}); rebuild them with "
                             f"`forensics zoo train {'ddpm-dup' if name == 'mnist-dup' else 'ddpm-net'} "
                             f"--registry {file.parents[2]}` (docs/zoo.md)")
        dev = _device(device)
        return ZooDiffusion(load_network(file, dev), name=name, device=dev)

    return load


def load_zoo_unet(*, path: str | None = None, device: str = "cpu"):
    from forensics.errors import UsageError
    from forensics.zoo.unet import ZooDiffusion, load_network

    if path is None:
        raise UsageError("zoo-unet opens a weights file: pass --model path/to/network.safetensors")
    dev = _device(device)
    return ZooDiffusion(load_network(path, dev), name=str(path), device=dev)


def _accepts_safetensors(path: str | Path) -> bool:
    """A ``.safetensors`` file whose tensors are the zoo UNet's (checked from the header, no weights read)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except Exception:  # noqa: BLE001 - not ours
        return False
    return {"inc.weight", "temb.0.weight", "m1.c1.weight", "out.2.weight"} <= keys


load_zoo_unet.accepts = _accepts_safetensors  # type: ignore[attr-defined]


def pixel_correlation(*, threshold: float | None = None):
    from forensics.inversion.similarity import make_pixel_correlation

    return make_pixel_correlation(threshold=threshold)


def sscd(*, threshold: float | None = None, path: str | Path | None = None, size: int | None = None):
    from forensics.inversion.similarity import make_sscd

    return make_sscd(threshold=threshold, path=path, size=size)


@hookimpl
def forensics_diffusion_models(register: RegisterDiffusionModel) -> None:
    from forensics.zoo.unet import NETWORKS

    for name, (_, description) in NETWORKS.items():
        register(name, _named(name), description=description)
    register("zoo-unet", load_zoo_unet, description="any .safetensors file of the zoo's 28×28 UNet")


@hookimpl
def forensics_copy_similarities(register: RegisterSimilarity) -> None:
    register("pixel-correlation", pixel_correlation,
             description="Pearson correlation of pixels, β 0.985 (MNIST digits)")
    register("sscd", sscd, description="SSCD descriptors from your TorchScript file, β 0.5 (the paper's)")
