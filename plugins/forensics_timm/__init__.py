"""Bundled encoders built on timm: ViT / DeiT / DINO, Swin, ResNet, InceptionV3, EfficientNet-Lite.

Names are timm's ``architecture.tag``; layer names are real module paths of the timm model (``blocks.3``,
``layers.2``, ``layer4``, ``Mixed_6e``). Every encoder's factory is
``factory(*, weights=None, device="cpu", **options)`` with the JSON-able options ``pooling``,
``image_size`` and ``seed`` (of a random initialisation), and carries ``factory.describe(**options)`` for
listings that must not build a model. Weights come from an explicit file, a pip weights package, or the
timm / Hugging Face / torch hub cache, in that order; else, unless offline, the model's file is fetched once
from the Hugging Face Hub into its cache, as timm's own pretrained loading does (not for weights that come
from a pip package); ``weights="random"`` only when asked for.
"""

from __future__ import annotations

from forensics.hookspecs import RegisterEncoder, hookimpl
from forensics_timm import cnn, vit
from forensics_timm.base import ModelEntry, TimmEncoder, make_factory
from forensics_timm.cnn import EfficientNetEncoder, InceptionEncoder, ResNetEncoder, map_efficientnet_lite
from forensics_timm.vit import SWIN_MODELS, VIT_MODELS, SwinEncoder, ViTEncoder

POOLINGS = ViTEncoder.poolings


def all_entries() -> list[tuple[type[TimmEncoder], ModelEntry]]:
    return [*vit.entries(), *cnn.entries()]


@hookimpl
def forensics_encoders(register: RegisterEncoder) -> None:
    for cls, entry in all_entries():
        register(entry.name, make_factory(cls, entry), description=entry.description)


__all__ = ["EfficientNetEncoder", "InceptionEncoder", "ModelEntry", "POOLINGS", "ResNetEncoder", "SWIN_MODELS",
           "SwinEncoder", "TimmEncoder", "VIT_MODELS", "ViTEncoder", "all_entries", "forensics_encoders",
           "map_efficientnet_lite"]
