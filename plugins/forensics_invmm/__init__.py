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

import torch

from forensics.hookspecs import RegisterDiffusionModel, RegisterSimilarity, hookimpl
from forensics.inversion.model import DiffusionModel
from forensics.inversion.similarity import make_pixel_correlation, make_sscd


class ZooDiffusion(DiffusionModel):
    """The zoo's ε-prediction UNet (:class:`forensics.zoo.unet.SmallUNet`) as a pixel-space model."""

    def __init__(self, net: torch.nn.Module, *, name: str, device: torch.device):
        from forensics.zoo.unet import linear_alphas_cumprod

        self.net = net
        self.name = name
        self.device = device
        self.alphas_cumprod = linear_alphas_cumprod().to(device)
        self.sample_shape = (1, 28, 28)
        self.image_shape = (1, 28, 28)
        self.default_preset = "mnist"

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any = None) -> torch.Tensor:
        return self.net(x_t, t)


def _device(device: Any) -> torch.device:
    from forensics.encode.devices import torch_device

    return torch_device(device)


def _named(name: str):
    def load(*, path: str | None = None, device: str = "cpu", registry: str | None = None) -> ZooDiffusion:
        from forensics.zoo.unet import load_network, network_path

        file = Path(path) if path is not None else network_path(name, registry)
        if path is None and not file.is_file():
            from forensics.errors import UsageError

            raise UsageError(f"the {name} network's weights are not in the registry ({file}); rebuild them with "
                             f"`forensics zoo train {'ddpm-dup' if name == 'mnist-dup' else 'ddpm-net'} "
                             f"--registry {file.parents[2]}` (docs/zoo.md)")
        dev = _device(device)
        return ZooDiffusion(load_network(file, dev), name=name, device=dev)

    return load


def load_zoo_unet(*, path: str | None = None, device: str = "cpu") -> ZooDiffusion:
    from forensics.errors import UsageError
    from forensics.zoo.unet import load_network

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


@hookimpl
def forensics_diffusion_models(register: RegisterDiffusionModel) -> None:
    from forensics.zoo.unet import NETWORKS

    for name, (_, description) in NETWORKS.items():
        register(name, _named(name), description=description)
    register("zoo-unet", load_zoo_unet, description="any .safetensors file of the zoo's 28×28 UNet")


@hookimpl
def forensics_copy_similarities(register: RegisterSimilarity) -> None:
    register("pixel-correlation", make_pixel_correlation,
             description="Pearson correlation of pixels, β 0.985 (MNIST digits)")
    register("sscd", make_sscd, description="SSCD descriptors from your TorchScript file, β 0.5 (the paper's)")
