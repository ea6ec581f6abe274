"""The zoo's diffusion network, as the product runs it (InvMM inverts it): a compact ε-prediction UNet
on 28 × 28 digits and the weights files of the two trained networks.

``mnist-ddpm`` is the network the zoo's DDPM, DDIM and PNDM sets were sampled from (trained on T);
``mnist-dup`` is the same architecture trained on T with ten of its images repeated 100 times each, a
model that memorizes those ten (``docs/zoo.md``). Training lives apart, in
:mod:`forensics.zoo.training.generators` (the ``zoo`` extra).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forensics.inversion.model import DiffusionModel

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, groups=8):
        super().__init__()
        self.n1, self.n2 = nn.GroupNorm(groups, cin), nn.GroupNorm(groups, cout)
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.t = nn.Linear(tdim, cout)
        self.sc = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(temb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.sc(x)


class SmallUNet(nn.Module):
    """Compact UNet on 28x28: 28 (c1) -> 14 (c2) -> 7 (c2) and back, one ResBlock per level."""

    def __init__(self, c1: int = 32, c2: int = 64, tdim: int = 128):
        super().__init__()
        self.tdim = tdim
        self.temb = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inc = nn.Conv2d(1, c1, 3, 1, 1)
        self.d1 = _ResBlock(c1, c1, tdim)
        self.down1 = nn.Conv2d(c1, c1, 3, 2, 1)    # 14
        self.d2 = _ResBlock(c1, c2, tdim)
        self.down2 = nn.Conv2d(c2, c2, 3, 2, 1)    # 7
        self.m1 = _ResBlock(c2, c2, tdim)
        self.m2 = _ResBlock(c2, c2, tdim)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.u2 = _ResBlock(2 * c2, c2, tdim)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.u1 = _ResBlock(c2 + c1, c1, tdim)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, 1, 1))

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.tdim))
        h1 = self.d1(self.inc(x), temb)                 # 28, c1
        h2 = self.d2(self.down1(h1), temb)              # 14, c2
        h = self.m2(self.m1(self.down2(h2), temb), temb)  # 7, c2
        h = self.u2(torch.cat([self.up2(h), h2], 1), temb)   # 14
        h = self.u1(torch.cat([self.up1(h), h1], 1), temb)   # 28
        return self.out(h)


# ---------------------------------------------------------------- the networks as InvMM sees them
MODELS_SUBDIR = "mnist-effnet-lite0/models"
"""Where the bundled registry keeps the zoo's diffusion networks."""

NETWORKS = {
    "mnist-ddpm": ("ddpm.safetensors",
                   "the zoo's diffusion network (trained on T; the DDPM, DDIM and PNDM sets were sampled from it)"),
    "mnist-dup": ("mnist-dup.safetensors",
                  "the same network trained on T with T[0], T[400], …, T[3600] repeated 100 times: it memorizes "
                  "those ten digits"),
}
"""The zoo's diffusion networks by name: weights file in the bundled registry's models folder, description."""

ARCH = {"c1": 16, "c2": 32, "tdim": 128}
"""The architecture both networks share (``forensics.zoo.training.generators.SETTINGS``)."""


def linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t of the zoo's linear schedule (DDPM's), float64."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def network_path(name: str, registry=None):
    """The weights file of the zoo network ``name``: in ``registry`` when given, else the first of the
    user registry and the bundled one that holds it (the bundled path when neither does)."""
    from forensics.errors import UsageError
    from forensics.registry.store import registry_layers

    if name not in NETWORKS:
        raise UsageError(f"unknown zoo network {name!r}; choose from {', '.join(NETWORKS)}")
    files = [root / MODELS_SUBDIR / NETWORKS[name][0] for root in registry_layers(registry)]
    return next((f for f in files if f.is_file()), files[-1])


def load_network(path, device="cpu") -> SmallUNet:
    """A :class:`SmallUNet` from a safetensors file of the zoo's architecture, frozen, in eval mode.
    Raises UsageError (one line) when the file is missing or is not such a network."""
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from forensics.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"diffusion weights {path} not found")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        c1, c2, tdim = state["inc.weight"].shape[0], state["m1.c1.weight"].shape[0], state["temb.0.weight"].shape[0]
        net = SmallUNet(int(c1), int(c2), int(tdim))
        net.load_state_dict(state)
    except (KeyError, RuntimeError, IndexError, ValueError) as exc:
        # torch lists the keys missing or unexpected on the lines after its first: say them, shortened
        lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()] or [type(exc).__name__]
        said = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        raise UsageError(f"{path} does not hold the zoo's diffusion UNet ({said[:200]})") from None
    net.requires_grad_(False)
    return net.eval().to(device)



class ZooDiffusion(DiffusionModel):
    """The zoo's ε-prediction UNet (:class:`SmallUNet`) as InvMM's pixel-space model: 28 × 28 grey digits,
    the linear β schedule (1e-4 … 0.02, T = 1,000), InvMM's official DDIM spacing, the ``mnist`` preset."""

    default_preset = "mnist"

    def __init__(self, net: nn.Module, *, name: str, device: torch.device):
        self.net = net
        self.name = name
        self.device = device
        self.alphas_cumprod = linear_alphas_cumprod().to(device)
        self.sample_shape = (1, 28, 28)
        self.image_shape = (1, 28, 28)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition=None) -> torch.Tensor:
        return self.net(x_t, t)
