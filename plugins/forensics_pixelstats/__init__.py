"""Low-level image statistics as a fingerprint: the ``pixel-statistics`` encoder and the ``mean-z`` statistic.

C_T compares each generated image's distance to the training set with fresh data's, one number per layer: it
says how near the images lie to T, not how their low-level make-up differs from real images'. Generators
leave that make-up behind — their intensity histogram, their edges, the power spectrum their up-sampling
and sampling leave (Durall et al. 2020, Frank et al. 2020, on GAN spectra) — and two samplers of one
network differ there where their C_T curves, once JPEG has smoothed the texture, no longer do
(docs/robustness.md, "Low-level statistics").

``pixel-statistics`` embeds an image as one number per "layer", each a statistic of its luminance (the mean
of its channels, in [0, 1], after the protocol's resize and crop):

- ``intensity.0`` … ``intensity.7``: the share of its pixels in each eighth of [0, 1];
- ``gradient.x``, ``gradient.y``: the mean absolute difference between horizontal (vertical) neighbours;
- ``spectrum.1`` … ``spectrum.8``: the log of its mean power (|FFT|² / pixels, the image's mean removed) in
  eight equal rings of spatial frequency from 0 to √2/2 cycles per pixel (1e-8 added before the log);
- ``saturated.low``, ``saturated.high``: the share of its pixels at the darkest and at the brightest value a
  file can hold (luminance within half a grey level of 0, of 1). A generator clips what it writes to the
  range, and how much of an image it pushes to the ends is its own (McCloskey & Albright 2019 tell GAN
  images from camera images by it); unlike the first intensity bin, which counts everything darker than
  1/8, it counts exactly the pixels the generator left at the end of the range, which a resampling round
  trip leaves where their neighbours are alike (docs/robustness.md, "Pixels at the ends of the range").

No weights: the definition is the identity (its digest, :data:`DEFINITION`, is what a protocol records).

``mean-z`` scores a one-dimensional layer: Welch's two-sample Z of the batch's mean against P_n's,
(mean_G − mean_P) / √(s_G²/m + s_P²/n). Like C_T's Z scores it grows with √m where the generator differs, and
is about N(0, 1) for a batch of fresh data. Each image's record is its value, so any sub-batch's Z is computed
from the records exactly. A value beyond ±2 reads "underfitting" (the images' statistic departs from real
data's); it never reads "copying": a mean cannot tell copies of T from fresh images.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forensics.encode.encoder import Encoder, EncoderSpec, Layer, Preprocessing, WeightsInfo
from forensics.errors import StatisticError, UsageError
from forensics.hookspecs import RegisterEncoder, RegisterStatistic, hookimpl

BINS = 8
BANDS = 8
SATURATED = 0.5 / 255  # within half a grey level of either end of the range
LAYERS = (tuple(f"intensity.{k}" for k in range(BINS)) + ("gradient.x", "gradient.y")
          + tuple(f"spectrum.{k}" for k in range(1, BANDS + 1)) + ("saturated.low", "saturated.high"))
#: what the encoder computes, versioned: its digest stands for weights in a protocol
DEFINITION = (f"pixel-statistics/2: luminance = mean of channels in [0,1]; intensity: {BINS} equal bins of [0,1] "
              f"(share of pixels); gradient: mean |difference| of horizontal, vertical neighbours; spectrum: "
              f"log(1e-8 + mean |FFT(x - mean)|^2 / pixels) in {BANDS} equal rings of radius 0..sqrt(2)/2 cycles/pixel; "
              f"saturated: share of pixels with luminance <= 0.5/255, >= 1 - 0.5/255")
DIGEST = "sha256:" + hashlib.sha256(DEFINITION.encode()).hexdigest()
NAME = "pixel-statistics"


def _preprocessing(image_size: int) -> Preprocessing:
    return Preprocessing(size=image_size, resize=image_size, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                         std=(1.0, 1.0, 1.0))


def _image_size(options: Mapping[str, Any]) -> int:
    unknown = sorted(set(options) - {"image_size"})
    if unknown:
        raise UsageError(f"encoder {NAME} takes the option image_size only, not {', '.join(unknown)}")
    size = options.get("image_size", 28)
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise UsageError(f"{NAME}: image_size must be an integer of at least 4, got {size!r}")
    return size


def _rings(size: int) -> torch.Tensor:
    """Each FFT coefficient's ring (0 … BANDS − 1) by its radial frequency r = √(kx² + ky²)/N cycles per pixel:
    ring j holds v = BANDS · r / (√2/2) in (j, j + 1], a coefficient on an edge in the inner ring (⌈v⌉ − 1), the
    constant term in ring 0, the corner in the last. Found in integers (v = √(2·BANDS²·(kx² + ky²)) / N), so
    that no rounding moves a coefficient on an edge: at N = 28 the four at (±7, ±7), v = 4 exactly, lie in ring
    3, as the bundled mnist-pixel references and enrolled curves were computed (tests/test_pixelstats)."""
    k = [i if i < (size + 1) // 2 else i - size for i in range(size)]  # the FFT's integer frequencies

    def ring(a: int, b: int) -> int:
        x = 2 * BANDS * BANDS * (a * a + b * b)
        s = math.isqrt(x)
        ceiling = -(-s // size) if s * s == x else s // size + 1  # ⌈√x / N⌉
        return min(max(ceiling - 1, 0), BANDS - 1)

    return torch.tensor([[ring(a, b) for b in k] for a in k], dtype=torch.long)


class PixelStatistics(Encoder):
    """The ``pixel-statistics`` encoder (module docstring)."""

    family = "statistics"
    pooling = "none"

    def __init__(self, *, weights: str | None = None, device: str = "cpu", **options: Any):
        if weights not in (None, "random"):
            raise UsageError(f"encoder {NAME} has no weights; do not pass --weights ({weights!r})")
        self.image_size = _image_size(options)
        self.options = dict(options)
        self.name = NAME
        self.layers = tuple(Layer(name, 1) for name in LAYERS)
        self.preprocessing = _preprocessing(self.image_size)
        self.weights = WeightsInfo(source="package", digest=DIGEST, detail="no weights: computed statistics")
        self.to(device)
        self._ring = _rings(self.image_size)

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        wanted = self.check_layers(layers)
        x = pixels.to(torch.float64).mean(dim=1)  # (B, H, W) luminance in [0, 1]
        b, h, w = x.shape
        if (h, w) != (self.image_size, self.image_size):
            raise UsageError(f"{NAME} expects {self.image_size}×{self.image_size} inputs, got {h}×{w}")
        bins = torch.clamp((x * BINS).long(), 0, BINS - 1).reshape(b, -1)
        shares = torch.zeros(b, BINS, dtype=torch.float64, device=x.device).scatter_add_(
            1, bins, torch.ones_like(bins, dtype=torch.float64))
        shares /= h * w
        gx = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(1, 2))
        gy = (x[:, 1:, :] - x[:, :-1, :]).abs().mean(dim=(1, 2))
        power = torch.fft.fft2(x - x.mean(dim=(1, 2), keepdim=True)).abs().square() / (h * w)
        rings = self._ring.reshape(-1).to(x.device)  # (on the pixels' device: a GPU too)
        sums = torch.zeros(b, BANDS, dtype=torch.float64, device=x.device).scatter_add_(
            1, rings.expand(b, -1), power.reshape(b, -1))
        counts = torch.bincount(rings, minlength=BANDS).to(torch.float64)
        spectrum = torch.log(1e-8 + sums / counts)
        low = (x <= SATURATED).to(torch.float64).mean(dim=(1, 2))
        high = (x >= 1.0 - SATURATED).to(torch.float64).mean(dim=(1, 2))
        values = {**{f"intensity.{k}": shares[:, k] for k in range(BINS)}, "gradient.x": gx, "gradient.y": gy,
                  **{f"spectrum.{k + 1}": spectrum[:, k] for k in range(BANDS)},
                  "saturated.low": low, "saturated.high": high}
        return [values[name].reshape(b, 1).to(torch.float32).to(self.device) for name in wanted]


def make_pixel_statistics(*, weights: str | None = None, device: str = "cpu", **options: Any) -> PixelStatistics:
    """Low-level statistics of each image's luminance: intensity histogram, mean gradients, power spectrum
    rings, pixels at the ends of the range (no weights). Option: image_size (default 28)."""
    return PixelStatistics(weights=weights, device=device, **options)


def _describe(**options: Any) -> EncoderSpec:
    size = _image_size(options)
    return EncoderSpec(name=NAME, family="statistics", description=make_pixel_statistics.__doc__.split("\n")[0],
                       layers=tuple(Layer(name, 1) for name in LAYERS), preprocessing=_preprocessing(size),
                       pooling="none", poolings=("none",), weights="package: none needed (computed statistics)")


make_pixel_statistics.describe = _describe  # type: ignore[attr-defined]


# -- the statistic ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanZ:
    """Welch's Z of a batch's mean against P_n's, with the two means; ``counted_weight`` is None (no cells)."""

    value: float
    mean: float
    reference_mean: float
    counted_weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "mean": self.mean, "reference_mean": self.reference_mean}


def _column(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 1:
        raise StatisticError(f"mean-z scores one-dimensional layers (a {NAME} encoder's); {name} has shape {a.shape}")
    if not np.isfinite(a).all():
        raise StatisticError(f"{name} holds non-finite values")
    return a[:, 0]


class FittedMeanZ:
    """mean-z fitted on one layer's P_n (T is not used: fresh data is the null)."""

    def __init__(self, mean: float, var: float, n: int):
        self.mean, self.var, self.n_test = float(mean), float(var), int(n)

    @classmethod
    def fit(cls, train: Any, test: Any) -> FittedMeanZ:
        _column(train, "T")
        p = _column(test, "P_n")
        if len(p) < 2:
            raise StatisticError("mean-z needs at least 2 P_n points")
        return cls(p.mean(), p.var(ddof=1), len(p))

    def records(self, generated: Any) -> np.ndarray:
        """Each generated row's value, as an (m, 1) float64 array: a sub-batch's Z is its rows' records' Z."""
        return _column(generated, "generated")[:, None].copy()

    def score(self, generated: Any, **_: Any) -> MeanZ:
        return self.score_records(self.records(generated))

    def score_records(self, records: Any, **params: Any) -> MeanZ:
        return self.score_subsets(records, [None], **params)[0]

    def score_subsets(self, records: Any, subsets: Sequence[np.ndarray | None], **_: Any) -> list[MeanZ]:
        values = np.asarray(records, dtype=np.float64).reshape(len(records), -1)[:, 0]
        out = []
        for rows in subsets:
            v = values if rows is None else values[rows]
            if len(v) < 2:
                raise StatisticError(f"mean-z needs at least 2 generated images, got {len(v)}")
            se = math.sqrt(v.var(ddof=1) / len(v) + self.var / self.n_test)
            if se == 0.0:
                raise StatisticError("mean-z is undefined: the batch and P_n are both constant in this statistic")
            out.append(MeanZ(float((v.mean() - self.mean) / se), float(v.mean()), self.mean))
        return out

    def subset_values(self, records: Any, subsets: Sequence[np.ndarray | None], **_: Any) -> np.ndarray:
        """The value of :meth:`score_subsets` for each subset, to the last bit, NaN where it is undefined:
        the subsets of one size as the rows of one array, their means and variances taken row by row."""
        values = np.asarray(records, dtype=np.float64).reshape(len(records), -1)[:, 0]
        rows = [np.arange(len(values)) if r is None else np.asarray(r) for r in subsets]
        out = np.full(len(rows), np.nan)
        sizes = np.array([len(r) for r in rows])
        for size in np.unique(sizes[sizes >= 2]):
            which = np.flatnonzero(sizes == size)
            v = values[np.stack([rows[j] for j in which])]
            se = np.sqrt(v.var(axis=1, ddof=1) / int(size) + self.var / self.n_test)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[which] = np.where(se == 0.0, np.nan, (v.mean(axis=1) - self.mean) / np.where(se == 0.0, 1.0, se))
        return out

    def scoring_part(self) -> FittedMeanZ:
        """What scoring records needs of this fit: all of it (P_n's mean, variance and size; T is not kept), so
        that a registry ships it for records under a condition as it does C_T's (a few hundred bytes a layer)."""
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"format": np.array(1), "mean": np.array(self.mean), "var": np.array(self.var),
                "n_test": np.array(self.n_test)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FittedMeanZ:
        if int(arrays["format"]) != 1:
            raise ValueError(f"mean-z arrays of format {int(arrays['format'])}, this version reads 1")
        return cls(float(arrays["mean"]), float(arrays["var"]), int(arrays["n_test"]))


class MeanZStatistic:
    """The ``mean-z`` statistic plugin (module docstring)."""

    fit_params: tuple[str, ...] = ()
    score_params: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = {}
    devices = False
    layer_dim = 1  # one number per image and layer
    reading_thresholds = {"differs_beyond": 2.0}

    def reading(self, value: float | None) -> str:
        if value is None:
            return "undefined"
        return "underfitting" if abs(value) > self.reading_thresholds["differs_beyond"] else "no evidence"

    def combine(self, values: Sequence[float | None], counts: Sequence[int], n_test: int) -> float | None:
        """One batch's value from parts scored apart (images processed in several ways): Stouffer's sum,
        √(m_c/m)·Z_c over the parts whose value is defined."""
        defined = [(v, n) for v, n in zip(values, counts) if v is not None and n > 0]
        if not defined:
            return None
        total = sum(n for _, n in defined)
        return float(sum(v * math.sqrt(n / total) for v, n in defined))

    def fit(self, train: Any, test: Any, **_: Any) -> FittedMeanZ:
        return FittedMeanZ.fit(train, test)

    def from_arrays(self, arrays: Mapping[str, np.ndarray]) -> FittedMeanZ:
        return FittedMeanZ.from_arrays(arrays)


@hookimpl
def forensics_encoders(register: RegisterEncoder) -> None:
    register(NAME, make_pixel_statistics, description=make_pixel_statistics.__doc__.split("\n")[0])


@hookimpl
def forensics_statistics(register: RegisterStatistic) -> None:
    register("mean-z", MeanZStatistic(), description="Welch's Z of a batch's mean against P_n's, per one-dimensional "
                                                     "layer (low-level image statistics)")
