"""An example encoder plugin: an image's colour layout at four scales, from one pass.

Layer ``pool.k`` is the image average-pooled to k × k cells (3·k² values), computed coarse from fine, so
every layer comes from one pass over the pixels. No learned weights: nothing to find or download.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from forensics.encode.encoder import Encoder, Layer, Preprocessing, WeightsInfo
from forensics.errors import UsageError
from forensics.io.hashing import sha256_json
from forensics.hookspecs import RegisterEncoder, hookimpl

NAME = "example_colour_pyramid"
GRIDS = (16, 8, 4, 2)


class ColourPyramid(Encoder):
    family = "example"
    pooling = "avg"

    def __init__(self, *, weights: str | None = None, device: str = "cpu", image_size: int = 64):
        if weights not in (None, "random"):
            raise UsageError(f"{NAME} has no weights to load (got {weights!r})")
        if image_size % GRIDS[0]:
            raise UsageError(f"image_size must be a multiple of {GRIDS[0]}, not {image_size}")
        self.name = NAME
        self.options = {"image_size": image_size} if image_size != 64 else {}
        self.layers = tuple(Layer(f"pool.{k}", 3 * k * k) for k in GRIDS)
        self.preprocessing = Preprocessing(size=image_size, resize=image_size, interpolation="bilinear")
        self.weights = WeightsInfo(source="package", digest=sha256_json({"encoder": NAME, "parameters": []}),
                                   detail="forensics-example-encoder (no learned parameters)")
        self.to(device)

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        names = self.check_layers(layers)
        x = F.adaptive_avg_pool2d(pixels.to(self.device), GRIDS[0])
        maps = {}
        for k in GRIDS:  # coarse from fine: one pass
            x = x if x.shape[-1] == k else F.avg_pool2d(x, x.shape[-1] // k)
            maps[f"pool.{k}"] = x.flatten(1).float()
        return [maps[n] for n in names]


def make(*, weights: str | None = None, device: str = "cpu", **options) -> ColourPyramid:
    return ColourPyramid(weights=weights, device=device, **options)


@hookimpl
def forensics_encoders(register: RegisterEncoder) -> None:
    register(NAME, make, description="Example plugin: colour layout at 16/8/4/2 cells")
