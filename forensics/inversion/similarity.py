"""The bundled copy similarities of InvMM's verification (:class:`forensics.inversion.model.CopySimilarity`).

``pixel-correlation``
    Pearson correlation of the pixels of a sample and the target (over every channel and pixel). The
    offline default of the MNIST preset: on the 28×28 digits of T, two distinct training digits correlate
    at most 0.981 (over all 4,000 × 3,999 pairs) and a held-out digit with its nearest training digit at
    most 0.980, while a copy with N(0, 8²) grey-level noise keeps ≥ 0.992, so β = 0.985 calls a sample a
    copy only when it is nearer the target than any two distinct digits of the data (``docs/invmm.md``).
    SSIM and encoder cosines do not separate copies from near neighbours on these digits.
``sscd``
    The paper's judge: SSCD descriptors (Pizzi et al. 2022, ``sscd_disc_large``) from the user's TorchScript
    file; images resized to the model's resolution (or ``size``), ImageNet normalisation, grey repeated to
    three channels, the dot product of the descriptors, β = 0.5. Nothing is downloaded: pass the file
    (``--similarity-file`` / ``path=``) or set ``FORENSICS_SSCD``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from forensics.errors import UsageError
from forensics.inversion.model import CopySimilarity

PIXEL_CORRELATION_BETA = 0.985
SSCD_BETA = 0.5
SSCD_ENV = "FORENSICS_SSCD"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(samples: torch.Tensor, target: torch.Tensor) -> None:
    if samples.dim() != 4 or target.dim() != 3 or tuple(samples.shape[1:]) != tuple(target.shape):
        raise ValueError(f"copy similarity needs samples (n, C, H, W) and a target (C, H, W) of the same size, "
                         f"got {tuple(samples.shape)} and {tuple(target.shape)}")


class PixelCorrelation(CopySimilarity):
    """Pearson correlation of pixels; a constant image (no variance) correlates 0 with anything."""

    name = "pixel-correlation"
    bounds = (-1.0, 1.0)

    def __init__(self, threshold: float = PIXEL_CORRELATION_BETA):
        self.threshold = float(threshold)

    def __call__(self, samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(samples, target)
        a = samples.flatten(1).double()
        b = target.flatten().double().unsqueeze(0)
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        denom = a.norm(dim=1) * b.norm(dim=1)
        corr = (a * b).sum(1) / denom.clamp_min(1e-12)
        return torch.where(denom > 0, corr, torch.zeros_like(corr)).float()


class SSCDSimilarity(CopySimilarity):
    """Dot product of SSCD descriptors from a TorchScript model (loaded once, frozen, on the samples' device)."""

    name = "sscd"
    bounds = (-1.0, 1.0)  # a dot product of unit descriptors

    def __init__(self, path: str | Path | None = None, threshold: float = SSCD_BETA, size: int | None = None):
        path = path or os.environ.get(SSCD_ENV, "").strip() or None
        if path is None:
            raise UsageError("the sscd similarity needs the SSCD TorchScript file (sscd_disc_large.torchscript.pt "
                             "from github.com/facebookresearch/sscd-copy-detection): pass --similarity-file PATH "
                             f"or set {SSCD_ENV}, or use --similarity pixel-correlation")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            what = "is a folder, not the file" if self.path.is_dir() else "not found"
            raise UsageError(f"SSCD TorchScript file {self.path} {what}; pass the path of "
                             f"sscd_disc_large.torchscript.pt")
        try:
            self.model = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001 - a damaged file, reported in one line
            raise UsageError(f"{self.path} is not a TorchScript model ({type(exc).__name__}); "
                             f"pass the SSCD .torchscript.pt file") from None
        self.threshold = float(threshold)
        self.size = size
        self._device: torch.device | None = None

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(images.shape[-2:]) != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(samples, target)
        if self._device != samples.device:
            self.model = self.model.to(samples.device)
            self._device = samples.device
        feats = self.model(self._prepare(torch.cat([target.unsqueeze(0), samples]).float()))
        return (feats[1:] @ feats[0]).float()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "file": str(self.path), "size": self.size}


def make_pixel_correlation(*, threshold: float | None = None) -> CopySimilarity:
    return PixelCorrelation(PIXEL_CORRELATION_BETA if threshold is None else threshold)


def make_sscd(*, threshold: float | None = None, path: str | Path | None = None,
              size: int | None = None) -> CopySimilarity:
    return SSCDSimilarity(path, SSCD_BETA if threshold is None else threshold, size)
