"""The encoder interface: images in, one embedding per layer out, from one forward pass.

An encoder declares everything that makes its embeddings reproducible — its layers (real module paths,
as timm names them, with their embedding sizes), its preprocessing, its pooling and the identity of its
weights — and all of it enters the protocol of any fingerprint computed with it.

Images reach an encoder as uint8 arrays, (N, H, W) or (N, H, W, C) with C in {1, 3, 4}; the core turns
them into the encoder's input with :func:`preprocess` (a named, deterministic resize mode), so every
encoder treats images the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from forensics.errors import UsageError
from forensics.hookspecs import DescribingFactory, EncoderFactory
from forensics.io.hashing import short
from forensics.io.images import as_rgb_uint8

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Layer:
    """One layer an encoder can embed at: its module path (``blocks.3``) and embedding size."""

    name: str
    dim: int


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become the encoder's input.

    Resize the short side to ``resize`` with ``interpolation`` (antialiased), centre-crop ``size`` ×
    ``size``, scale to [0, 1], normalise by ``mean``/``std``. Grey images are repeated to three channels,
    an alpha channel is dropped.
    """

    size: int
    resize: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        if not (0 < self.size <= self.resize):
            raise UsageError(f"preprocessing needs 0 < size <= resize, got size={self.size} resize={self.resize}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(size=int(d["size"]), resize=int(d["resize"]), interpolation=str(d["interpolation"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))


@dataclass(frozen=True)
class WeightsInfo:
    """Where an encoder's weights came from and their content digest (of the tensors, not the file)."""

    source: str  # "file" | "package" | "cache" | "random"
    digest: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def preprocess(images: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """uint8 images → normalised float32 tensor (N, 3, size, size) as ``prep`` says. Deterministic."""
    rgb = as_rgb_uint8(images)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    if min(h, w) != prep.resize:
        scale = prep.resize / min(h, w)
        new = (max(prep.resize, round(h * scale)), max(prep.resize, round(w * scale)))
        if prep.interpolation == "nearest":
            x = F.interpolate(x, size=new, mode="nearest")
        else:
            x = F.interpolate(x, size=new, mode=prep.interpolation, align_corners=False, antialias=True)
        if prep.interpolation == "bicubic":
            x = x.clamp_(0.0, 1.0)
    h, w = x.shape[-2:]
    top, left = (h - prep.size) // 2, (w - prep.size) // 2
    x = x[..., top:top + prep.size, left:left + prep.size]
    mean = torch.tensor(prep.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


class Encoder(abc.ABC):
    """Base class of every encoder plugin.

    Subclasses set :attr:`name`, :attr:`layers` (all layers the model offers, in depth order),
    :attr:`preprocessing`, :attr:`weights`, :attr:`pooling`, and implement :meth:`forward_layers`.
    """

    name: str
    layers: tuple[Layer, ...]
    preprocessing: Preprocessing
    weights: WeightsInfo
    pooling: str
    device: torch.device = torch.device("cpu")
    #: the model family (``vit``, ``swin``, ``resnet``, ``inception``, ``efficientnet``, ``clip``, ...)
    family: str = ""
    #: the factory options this encoder was built with (JSON-able; a protocol records them)
    options: dict[str, Any] = {}

    @abc.abstractmethod
    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        """Embed a preprocessed batch at ``layers`` (a subset of :attr:`layers`' names, in depth order)
        in one forward pass. Returns one (B, dim) float tensor per requested layer, in that order."""

    # -- shared behaviour ------------------------------------------------------------------------
    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def check_layers(self, layers: Sequence[str] | None) -> tuple[str, ...]:
        """The requested layers in depth order (all when None); unknown names are a :class:`UsageError`."""
        if layers is None:
            return self.layer_names
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise UsageError(f"encoder {self.name} has no layer {', '.join(unknown)}; "
                             f"its layers are {', '.join(self.layer_names)}")
        wanted = set(layers)
        return tuple(name for name in self.layer_names if name in wanted)

    def identity(self, layers: Sequence[str] | None = None) -> dict[str, Any]:
        """Everything about this encoder that a protocol must record."""
        return {
            "name": self.name,
            "weights": self.weights.digest,
            "weights_source": self.weights.source,
            "layers": list(self.check_layers(layers)),
            "pooling": self.pooling,
            "preprocessing": self.preprocessing.to_dict(),
        }

    def layer_dims(self, layers: Sequence[str] | None = None) -> dict[str, int]:
        """Embedding size of each requested layer (all when None)."""
        dims = {layer.name: layer.dim for layer in self.layers}
        return {name: dims[name] for name in self.check_layers(layers)}

    def to(self, device: str | torch.device) -> Encoder:
        self.device = torch.device(device)
        return self


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder declares without being built: for listings (``forensics encoders``).

    ``weights`` says where its weights would come from on this machine: ``"file: PATH"``,
    ``"package: NAME"``, ``"cache: PATH"``, or ``"missing: how to supply them"``.
    """

    name: str
    family: str
    description: str
    layers: tuple[Layer, ...]
    preprocessing: Preprocessing
    pooling: str
    poolings: tuple[str, ...]
    weights: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "description": self.description,
                "layers": [{"name": layer.name, "dim": layer.dim} for layer in self.layers],
                "pooling": self.pooling, "poolings": list(self.poolings),
                "preprocessing": self.preprocessing.to_dict(), "weights": self.weights}


def describe_encoder(name: str, factory: EncoderFactory, description: str = "") -> EncoderSpec:
    """Describe an encoder cheaply: through the factory's ``describe()`` when it is a
    :class:`DescribingFactory`, else by building it with random weights (never downloading anything)."""
    if isinstance(factory, DescribingFactory):
        spec = factory.describe()
        if not spec.description and description:
            spec = replace(spec, description=description)
        return spec
    encoder = factory(weights="random")
    own = encoder.weights  # an encoder whose weights do not come from anywhere (none learned) says so when built
    weights = (f"{own.source}: {own.detail or short(own.digest)}" if own.source != "random" else
               "unknown (the plugin does not say; build it to find out)")
    return EncoderSpec(name=name, family=encoder.family, description=description,
                       layers=tuple(encoder.layers), preprocessing=encoder.preprocessing,
                       pooling=encoder.pooling, poolings=(encoder.pooling,), weights=weights)
