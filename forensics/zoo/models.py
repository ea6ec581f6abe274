"""Networks of the generator zoo (all small, CPU-trainable on 28x28 MNIST).

Pixel convention: networks see images in [-1, 1] (GANs, diffusion) or [0, 1] (VAE);
``to_uint8`` / ``from_uint8`` convert.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


def from_uint8(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return torch.from_numpy(np.asarray(x, dtype=np.float32)).unsqueeze(1) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 1, 28, 28) in [-1, 1] -> uint8 (N, 28, 28), rounded and clipped."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.squeeze(1).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------- VAE
class ConvVAE(nn.Module):
    """Convolutional VAE with a Bernoulli (BCE) decoder on [0, 1] intensities."""

    def __init__(self, zdim: int = 16, ch: int = 32):
        super().__init__()
        self.zdim = zdim
        self.enc = nn.Sequential(
            nn.Conv2d(1, ch, 4, 2, 1), nn.ReLU(),           # 14
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.ReLU(),      # 7
            nn.Flatten(), nn.Linear(2 * ch * 49, 256), nn.ReLU(),
            nn.Linear(256, 2 * zdim),
        )
        self.dec_fc = nn.Sequential(nn.Linear(zdim, 256), nn.ReLU(), nn.Linear(256, 2 * ch * 49), nn.ReLU())
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.ReLU(),  # 14
            nn.ConvTranspose2d(ch, 1, 4, 2, 1),                  # 28 (logits)
        )
        self.ch = ch

    def encode(self, x01):
        mu, logvar = self.enc(x01).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        h = self.dec_fc(z).view(-1, 2 * self.ch, 7, 7)
        return self.dec(h)

    def loss(self, x01):
        mu, logvar = self.encode(x01)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.decode(z)
        rec = F.binary_cross_entropy_with_logits(logits, x01, reduction="sum") / x01.shape[0]
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x01.shape[0]
        return rec + kl, rec, kl

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Decoder means of z ~ N(0, I), returned in [-1, 1]."""
        z = torch.randn(n, self.zdim, generator=generator)
        return torch.sigmoid(self.decode(z)) * 2 - 1


# ---------------------------------------------------------------- DCGAN
class DCGANGenerator(nn.Module):
    def __init__(self, zdim: int = 64, ch: int = 64):
        super().__init__()
        self.zdim = zdim
        self.fc = nn.Sequential(nn.Linear(zdim, 2 * ch * 49, bias=False), nn.BatchNorm1d(2 * ch * 49), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),  # 14
            nn.ConvTranspose2d(ch, 1, 4, 2, 1), nn.Tanh(),                                       # 28
        )
        self.ch = ch

    def forward(self, z):
        return self.net(self.fc(z).view(-1, 2 * self.ch, 7, 7))


class DCGANDiscriminator(nn.Module):
    def __init__(self, ch: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, ch, 4, 2, 1), nn.LeakyReLU(0.2),                                    # 14
            nn.Conv2d(ch, 2 * ch, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2),  # 7
            nn.Flatten(), nn.Linear(2 * ch * 49, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(1)


# ---------------------------------------------------------------- SNGAN (hinge loss, "standard CNN")
class SNGANGenerator(nn.Module):
    """Upsample+conv generator (SNGAN's standard-CNN style): z -> 7x7 -> 14x14 -> 28x28.

    Differs from the DCGAN generator: nearest upsampling + 3x3 convolutions instead of transposed
    convolutions, a 3x3 output convolution, wider bottleneck (4·ch at 7x7).
    """

    def __init__(self, zdim: int = 64, ch: int = 32):
        super().__init__()
        self.zdim, self.ch = zdim, ch
        self.fc = nn.Sequential(nn.Linear(zdim, 4 * ch * 49), nn.BatchNorm1d(4 * ch * 49), nn.ReLU())
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4 * ch, ch, 3, 1, 1),
            nn.BatchNorm2d(ch), nn.ReLU(),                                                   # 14
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch // 2, 3, 1, 1),
            nn.BatchNorm2d(ch // 2), nn.ReLU(),                                              # 28
            nn.Conv2d(ch // 2, 1, 3, 1, 1), nn.Tanh(),
        )

    def forward(self, z):
        return self.net(self.fc(z).view(-1, 4 * self.ch, 7, 7))


class SNGANDiscriminator(nn.Module):
    """Spectral-norm CNN discriminator (3x3 / 4x4-stride-2 pairs, LeakyReLU 0.1, no batch norm)."""

    def __init__(self, ch: int = 32):
        super().__init__()
        sn = spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(1, ch // 2, 3, 1, 1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(ch // 2, ch, 4, 2, 1)), nn.LeakyReLU(0.1),       # 14
            sn(nn.Conv2d(ch, ch, 3, 1, 1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(ch, 2 * ch, 4, 2, 1)), nn.LeakyReLU(0.1),        # 7
            nn.Flatten(), sn(nn.Linear(2 * ch * 49, 1)),
        )

    def forward(self, x):
        return self.net(x).squeeze(1)


# ---------------------------------------------------------------- small UNet for DDPM (eps-prediction)
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
