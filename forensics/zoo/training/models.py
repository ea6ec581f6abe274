"""Networks of the generator zoo (all small, CPU-trainable on 28x28 MNIST).

Pixel convention: networks see images in [-1, 1] (GANs, diffusion) or [0, 1] (VAE);
``to_uint8`` / ``from_uint8`` convert.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

# the diffusion network's UNet lives with the product, which InvMM runs
from forensics.zoo.unet import SmallUNet, timestep_embedding  # noqa: F401


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


# ---------------------------------------------------------------- PixelCNN (autoregressive)
class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only pixels above, and left in the same row (raster order).

    Type ``"A"`` (the first layer) also hides the centre pixel, type ``"B"`` lets it through: one grey
    channel needs no colour masks.
    """

    def __init__(self, mask_type: str, cin: int, cout: int, k: int, dilation: int = 1):
        super().__init__(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask type must be 'A' or 'B', not {mask_type!r}")
        mask = torch.ones_like(self.weight)
        c = k // 2
        mask[:, :, c, c + (mask_type == "B"):] = 0
        mask[:, :, c + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding, dilation=self.dilation)


class _PixelBlock(nn.Module):
    """Residual block of the PixelCNN: 1x1 down, masked 3x3 (type B, optionally dilated), 1x1 up."""

    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.dilation = dilation
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * ch, ch, 1), nn.ReLU(),
                                 MaskedConv2d("B", ch, ch, 3, dilation), nn.ReLU(), nn.Conv2d(ch, 2 * ch, 1))

    def forward(self, x):
        return x + self.net(x)


class PixelCNN(nn.Module):
    """PixelCNN (van den Oord et al. 2016) over 256 grey levels: masked 7x7 (A), residual blocks of
    masked 3x3 (B), a 256-way softmax per pixel. Input in [-1, 1], output logits (N, 256, H, W).

    The plain (not gated) architecture: it has the original's blind spot above-right of each pixel.

    With ``classes``, it is class-conditional as the conditional PixelCNN of van den Oord et al.
    (2016, "Conditional Image Generation with PixelCNN Decoders") is: a learned per-class bias on the
    channels after the input layer and after every block (zero at the start). A bias is the same at
    every pixel, so it tells each pixel the class without showing it any pixel after it. ``sample``
    then first draws each image's class from ``class_counts`` (the training classes' frequencies, a
    buffer saved with the weights), so the model as a whole is still an unconditional generator of its
    training distribution.
    """

    def __init__(self, ch: int = 16, blocks: int = 6, levels: int = 256, dilations: list[int] | None = None,
                 classes: int | None = None):
        super().__init__()
        dilations = list(dilations) if dilations is not None else [1] * blocks
        if len(dilations) != blocks:
            raise ValueError(f"{blocks} blocks need {blocks} dilations, not {len(dilations)}")
        self.levels = levels
        self.classes = classes
        self.inp = MaskedConv2d("A", 1, 2 * ch, 7)
        self.blocks = nn.Sequential(*[_PixelBlock(ch, d) for d in dilations])
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * ch, 2 * ch, 1), nn.ReLU(), nn.Conv2d(2 * ch, levels, 1))
        if classes:
            self.emb = nn.ModuleList(nn.Embedding(classes, 2 * ch) for _ in range(1 + blocks))
            for e in self.emb:
                nn.init.zeros_(e.weight)
            self.register_buffer("class_counts", torch.ones(classes, dtype=torch.long))

    def forward(self, x, y=None):
        """Logits for images ``x``; a class-conditional model also needs their classes ``y`` (N,)."""
        if not self.classes:
            return self.out(self.blocks(self.inp(x)))
        if y is None:
            raise ValueError(f"this PixelCNN is conditioned on {self.classes} classes: pass each image's class")
        h = self.inp(x) + self.emb[0](y)[:, :, None, None]
        for block, emb in zip(self.blocks, self.emb[1:]):
            h = block(h) + emb(y)[:, :, None, None]
        return self.out(h)

    def loss(self, x, y=None):
        """Mean negative log-likelihood per pixel (nats) of images ``x`` in [-1, 1] (of class ``y``)."""
        target = ((x + 1) * 127.5).round().long().squeeze(1)
        return F.cross_entropy(self.forward(x, y), target)

    @property
    def reach(self) -> int:
        """How many rows above (and columns either side) one output pixel can see."""
        return self.inp.kernel_size[0] // 2 + sum(b.dilation for b in self.blocks)

    def draw_classes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` classes drawn with replacement in proportion to ``class_counts``."""
        p = self.class_counts.double()
        return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, size: int = 28,
               y: torch.Tensor | None = None) -> torch.Tensor:
        """Ancestral sampling in raster order at temperature 1; returns (n, 1, size, size) in [-1, 1].

        A class-conditional model samples class ``y`` (default: ``draw_classes`` from ``generator``,
        before any pixel). Each step runs the network only on the window that pixel's receptive field
        covers (``reach`` rows up, ``reach`` columns either side): the same logits as the whole image,
        to float rounding, without the rows below and the columns out of reach.
        """
        if self.classes and y is None:
            y = self.draw_classes(n, generator)
        r = self.reach
        x = torch.zeros(n, 1, size, size)
        for i in range(size):
            top = max(0, i - r)
            for j in range(size):
                left = max(0, j - r)
                window = x[:, :, top:i + 1, left:min(size, j + r + 1)]
                logits = self.forward(window, y)[:, :, i - top, j - left]
                level = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
                x[:, 0, i, j] = level.float() / 127.5 - 1
        return x

