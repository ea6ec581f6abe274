"""Vision Transformers (ViT, DeiT, DINO) and Swin, through timm's ``forward_intermediates``.

ViT: every block's output is one layer (``blocks.0`` … ``blocks.{depth-1}``); the embedding of a block is
its CLS token (He et al.'s official choice) or, with ``pooling="mean"``, the mean of its patch tokens. The
patch-embedding output is left out: its CLS token is the same for every image.

``vit_mnist_tiny.forensics`` is the project's own small ViT, trained on the MNIST T of the ``mnist-vit``
protocol by ``python -m forensics.zoo.training.encoder``; its weights ship inside the forensics package.

Swin: every stage's output is one layer (``layers.0`` … ``layers.3``), globally average pooled.

All requested layers come from one forward pass that stops after the deepest one requested.
"""

from __future__ import annotations

from typing import Any

import torch

from forensics_timm.base import ModelEntry, TimmEncoder, global_average


def _resample_pos_embed(state, model):
    """Let weights trained at 224 px load into a model built for another input size."""
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state = dict(state)
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=model.patch_embed.grid_size,
                                                    num_prefix_tokens=prefix)
    return state


class ViTEncoder(TimmEncoder):
    """A timm Vision Transformer embedding the CLS token (or mean patch token) of every block."""

    family = "vit"
    poolings = ("cls", "mean")

    def model_kwargs(self, image_size: int | None) -> dict[str, Any]:
        kwargs = super().model_kwargs(image_size)
        if image_size is not None:
            kwargs["img_size"] = int(image_size)
        return kwargs

    def input_size(self, model, image_size):
        return int(model.patch_embed.img_size[0])

    def head_prefixes(self):
        return ("head",)

    def adapt_state(self, state, model):
        return _resample_pos_embed(super().adapt_state(state, model), model)

    @classmethod
    def tap_names(cls, model):
        return [f"blocks.{i}" for i in range(len(model.blocks))]

    def run(self, model, x, names):
        out = model.forward_intermediates(
            x, indices=[int(n.split(".")[1]) for n in names], return_prefix_tokens=True, norm=False,
            stop_early=True, output_fmt="NLC", intermediates_only=True)
        return list(out)  # (patch tokens, prefix tokens) per block; pooled in pool()

    def pool(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        spatial, prefix = x
        return prefix[:, 0] if self.pooling == "cls" else spatial.mean(dim=1)


class SwinEncoder(TimmEncoder):
    """A timm Swin Transformer: one layer per stage (``layers.i``), globally average pooled."""

    family = "swin"
    poolings = ("avg",)

    def model_kwargs(self, image_size):
        kwargs = super().model_kwargs(image_size)
        if image_size is not None:
            kwargs["img_size"] = int(image_size)
        return kwargs

    def head_prefixes(self):
        return ("head",)

    @classmethod
    def tap_names(cls, model):
        return [f"layers.{i}" for i in range(len(model.layers))]

    def run(self, model, x, names):
        return model.forward_intermediates(x, indices=[int(n.split(".")[1]) for n in names], norm=False,
                                           stop_early=True, output_fmt="NCHW", intermediates_only=True)

    def pool(self, x):
        return global_average(x)


VIT_MODELS = {
    "vit_base_patch16_224.orig_in21k": "ViT-B/16, ImageNet-21k (He et al.'s fingerprinting encoder)",
    "vit_large_patch16_224.orig_in21k": "ViT-L/16, ImageNet-21k",
    "vit_huge_patch14_224.orig_in21k": "ViT-H/14, ImageNet-21k",
    "deit_tiny_patch16_224.fb_in1k": "DeiT-Tiny/16, ImageNet-1k",
    "deit_small_patch16_224.fb_in1k": "DeiT-Small/16, ImageNet-1k",
    "deit_base_patch16_224.fb_in1k": "DeiT-Base/16, ImageNet-1k",
    "vit_small_patch16_224.dino": "DINO ViT-S/16 (self-supervised)",
    "vit_base_patch16_224.dino": "DINO ViT-B/16 (self-supervised)",
    "vit_tiny_patch16_224.augreg_in21k": "ViT-Ti/16, ImageNet-21k (small; handy with weights='random' in tests)",
}

SWIN_MODELS = {
    "swin_tiny_patch4_window7_224.ms_in1k": "Swin-T, ImageNet-1k (microsoft/swin-tiny-patch4-window7-224)",
    "swin_base_patch4_window7_224.ms_in22k_ft_in1k": "Swin-B, ImageNet-22k then 1k "
                                                     "(microsoft/swin-base-patch4-window7-224)",
    "swin_large_patch4_window7_224.ms_in22k_ft_in1k": "Swin-L, ImageNet-22k then 1k "
                                                      "(microsoft/swin-large-patch4-window7-224)",
}


def project_vit() -> ModelEntry:
    """The ViT the project trains on MNIST's T (``forensics.zoo.training.encoder``); weights ship with forensics."""
    from forensics.zoo import encoder as trained

    size = trained.ARCH_KWARGS
    return ModelEntry(
        name="vit_mnist_tiny.forensics", architecture=trained.ARCHITECTURE,
        description=(f"ViT trained by the project on the 4,000 MNIST digits of T (patch {size['patch_size']}, "
                     f"{size['depth']} blocks, width {size['embed_dim']}, 28 px): the mnist-vit protocol's encoder"),
        package=("forensics-attribution", trained.weights_path), extra_kwargs=dict(size),
        preprocessing=trained.PREPROCESSING, hub=False,
        how=("rebuild them with `python -m forensics.zoo.training.encoder --seed 0` "
             "(the zoo extra; about 16 min on 2 CPU cores)"))


def entries() -> list[tuple[type[TimmEncoder], ModelEntry]]:
    out: list[tuple[type[TimmEncoder], ModelEntry]] = []
    for models, cls in ((VIT_MODELS, ViTEncoder), (SWIN_MODELS, SwinEncoder)):
        for name, description in models.items():
            arch, tag = name.split(".", 1)
            out.append((cls, ModelEntry(name=name, architecture=arch, description=description, pretrained_tag=tag)))
    out.append((ViTEncoder, project_vit()))
    return out
