"""Bundled encoders built on timm: the Vision Transformer family (ViT, DeiT, DINO).

Every block's output is one layer (``blocks.0`` … ``blocks.{depth-1}``); the embedding of a block is its
CLS token (He et al.'s official choice) or, with ``pooling="mean"``, the mean of its patch tokens. The
patch-embedding output is left out: its CLS token is the same for every image. All requested blocks come
from one forward pass (timm's ``forward_intermediates``), which stops after the deepest one requested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from forensics.encoders import Encoder, Layer, Preprocessing
from forensics.errors import UsageError, WeightsError
from forensics.hookspecs import hookimpl
from forensics.weights import RANDOM, apply_state_dict, hf_cached_file, load_state_dict, random_init, weights_info

# public name -> (timm architecture.tag, what it is)
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
POOLINGS = ("cls", "mean")


def _timm():
    import timm

    return timm


class TimmViT(Encoder):
    """A timm Vision Transformer embedding the CLS token (or mean patch token) of every block."""

    def __init__(self, name: str, *, weights: str | None = None, device: str = "cpu", pooling: str = "cls",
                 image_size: int | None = None, seed: int = 0):
        if pooling not in POOLINGS:
            raise UsageError(f"pooling for {name} must be one of {POOLINGS}, not {pooling!r}")
        timm = _timm()
        kwargs = {"pretrained": False, "num_classes": 0}
        if image_size is not None:
            kwargs["img_size"] = int(image_size)
        cfg = timm.models.get_pretrained_cfg(name)
        model = random_init(lambda: timm.create_model(name, **kwargs), seed=seed)
        if weights == RANDOM:
            source, detail = "random", f"timm {name} random init, seed={seed}"
        else:
            if weights is not None:
                state, source, detail = load_state_dict(weights), "file", str(weights)
            else:
                cached = hf_cached_file(cfg.hf_hub_id) if cfg is not None and cfg.hf_hub_id else None
                if cached is None:
                    raise WeightsError(
                        f"no weights for {name} on this machine: pass --weights PATH (a .safetensors or .pt "
                        f"state dict), put {cfg.hf_hub_id if cfg else name} in the Hugging Face cache, or ask "
                        f"for weights=random explicitly")
                state = load_state_dict(cached)
                source, detail = "cache", str(cached)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            apply_state_dict(model, state, where=detail, adapt=_resample_pos_embed, ignore_missing=("head",))
        model.eval()
        self.model = model
        self.name = name
        self.pooling = pooling
        self.layers = tuple(Layer(f"blocks.{i}", model.embed_dim) for i in range(len(model.blocks)))
        size = model.patch_embed.img_size[0]
        crop_pct = cfg.crop_pct if cfg is not None and cfg.crop_pct else 1.0
        self.preprocessing = Preprocessing(
            size=size, resize=int(math.floor(size / crop_pct)),
            interpolation=cfg.interpolation if cfg is not None else "bicubic",
            mean=tuple(cfg.mean) if cfg is not None else (0.5, 0.5, 0.5),
            std=tuple(cfg.std) if cfg is not None else (0.5, 0.5, 0.5))
        self.weights = weights_info(model, source, detail)
        self.to(device)

    def to(self, device):
        super().to(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        names = self.check_layers(layers)
        indices = [int(n.split(".")[1]) for n in names]
        out = self.model.forward_intermediates(
            pixels.to(self.device), indices=indices, return_prefix_tokens=True, norm=False,
            stop_early=True, output_fmt="NLC", intermediates_only=True)
        result = []
        for spatial, prefix in out:
            result.append(prefix[:, 0] if self.pooling == "cls" else spatial.mean(dim=1))
        return [r.float() for r in result]


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


def _factory(name: str):
    def make(*, weights: str | None = None, device: str = "cpu", **options) -> TimmViT:
        return TimmViT(name, weights=weights, device=device, **options)

    make.__doc__ = f"{VIT_MODELS[name]}. Options: pooling ('cls'|'mean'), image_size, seed (random init)."
    return make


@hookimpl
def forensics_encoders(register):
    for name, description in VIT_MODELS.items():
        register(name, _factory(name), description=description)
