"""Bundled CLIP encoders through open_clip: the visual tower's blocks, CLS token per block.

Only the visual tower is built (the text tower is never needed). Layer names are module paths inside the
tower (``transformer.resblocks.0`` … ``transformer.resblocks.{depth-1}``); the embedding of a block is its
CLS token (He et al.) or, with ``pooling="mean"``, the mean of its patch tokens. Preprocessing is
open_clip's own: resize the short side to the input size (bicubic), centre crop, CLIP mean/std.

Public names are lower case, ``openclip_<model>.<pretrained tag>`` (open_clip's ``ViT-B-32`` with tag
``openai`` is ``openclip_vit_b_32.openai``). Weights come from an explicit file (an open_clip state dict,
whole or visual-only), or the Hugging Face cache when the user has the open_clip files there; else, unless
offline, the file open_clip itself would load (``open_clip_model.safetensors``, else
``open_clip_pytorch_model.bin``, of the model's ``hf_hub`` repo) is fetched once into that cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from forensics.encode.encoder import Encoder, EncoderSpec, Layer, Preprocessing
from forensics.errors import UsageError
from forensics.hookspecs import RegisterEncoder, hookimpl
from forensics.encode.weights import (RANDOM, Sources, apply_state_dict, availability, load_state_dict, random_init,
                               resolve, weights_info)

# public name -> (open_clip model name, pretrained tag, description)
MODELS = {
    "openclip_vit_b_32.openai": ("ViT-B-32", "openai", "CLIP ViT-B/32 (OpenAI), visual tower"),
    "openclip_vit_b_16.openai": ("ViT-B-16", "openai", "CLIP ViT-B/16 (OpenAI), visual tower"),
    "openclip_vit_l_14.openai": ("ViT-L-14", "openai", "CLIP ViT-L/14 (OpenAI), visual tower"),
    "openclip_vit_b_32.laion2b_s34b_b79k": ("ViT-B-32", "laion2b_s34b_b79k", "CLIP ViT-B/32 (LAION-2B), visual tower"),
}
POOLINGS = ("cls", "mean")
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip():
    from forensics.extras import require

    return require("openclip", "an openclip_* encoder")


def _sources(model: str, tag: str) -> Sources:
    cfg = _open_clip().get_pretrained_cfg(model, tag) or {}
    # open_clip's form: "org/name/" (its default files) or "org/name/file" (that file)
    parts = (cfg.get("hf_hub") or "").strip("/").split("/")
    hub, filename = "/".join(parts[:2]), "/".join(parts[2:])
    files = (filename, *(f for f in OPEN_CLIP_FILES if f != filename)) if filename else OPEN_CLIP_FILES
    return Sources(hf_ids=(hub,) if hub else (), hf_filenames=files,
                   how=f"open_clip's own URL cache is not read (its OpenAI files are TorchScript archives): export "
                       f"the state dict of open_clip.create_model({model!r}, pretrained={tag!r}) to a "
                       f".safetensors file instead")


def _build_tower(model: str, tag: str, image_size: int | None):
    open_clip = _open_clip()
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise UsageError(f"open_clip has no model {model!r}")
    vision = dict(cfg["vision_cfg"])
    if image_size is not None:
        vision["image_size"] = int(image_size)
    if "timm_model_name" in vision and vision["timm_model_name"]:
        raise UsageError(f"{model} has a timm visual tower; use the timm encoders for it")
    quick_gelu = bool((open_clip.get_pretrained_cfg(model, tag) or {}).get("quick_gelu", cfg.get("quick_gelu", False)))
    return _build_vision_tower(cfg["embed_dim"], CLIPVisionCfg(**vision), quick_gelu=quick_gelu)


def _preprocessing(model: str, tag: str, size: int) -> Preprocessing:
    cfg = _open_clip().get_pretrained_cfg(model, tag) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return Preprocessing(size=size, resize=size, interpolation=cfg.get("interpolation", "bicubic"), mean=mean,
                         std=std)


def _visual_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The visual tower's tensors of a whole-CLIP state dict (``visual.*``), or a visual-only one as is."""
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return state


def _resample_pos(state: dict[str, torch.Tensor], tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    pos = state.get("positional_embedding")
    if pos is not None and pos.shape != tower.positional_embedding.shape:
        from timm.layers import resample_abs_pos_embed

        state = dict(state)
        state["positional_embedding"] = resample_abs_pos_embed(
            pos[None], new_size=tower.grid_size, num_prefix_tokens=1)[0]
    return state


class OpenClipVisual(Encoder):
    """The visual tower of an open_clip model, CLS token (or mean patch token) of every block."""

    family = "clip"

    def __init__(self, name: str, *, weights: str | None = None, device: str = "cpu", pooling: str = "cls",
                 image_size: int | None = None, seed: int = 0):
        if name not in MODELS:
            raise UsageError(f"unknown open_clip encoder {name!r}")
        if pooling not in POOLINGS:
            raise UsageError(f"pooling for {name} must be one of {POOLINGS}, not {pooling!r}")
        model, tag, _ = MODELS[name]
        tower = random_init(lambda: _build_tower(model, tag, image_size), seed=seed)
        if weights == RANDOM:
            source, detail = "random", f"open_clip {model} visual tower random init, seed={seed}"
        else:
            found = resolve(name, weights, _sources(model, tag))
            state = _resample_pos(_visual_state(load_state_dict(found.path)), tower)
            apply_state_dict(tower, state, where=found.detail)
            source, detail = found.source, found.detail
        tower.eval()
        self.model = tower
        self.name = name
        self.pooling = pooling
        self.options = {k: v for k, v in (("pooling", None if pooling == "cls" else pooling),
                                          ("image_size", image_size), ("seed", seed or None)) if v is not None}
        self.layers = tuple(Layer(f"transformer.resblocks.{i}", tower.transformer.width)
                            for i in range(len(tower.transformer.resblocks)))
        self.preprocessing = _preprocessing(model, tag, int(tower.image_size[0]))
        self.weights = weights_info(tower, source, detail)
        self.to(device)

    def to(self, device):
        super().to(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        names = self.check_layers(layers)
        out = self.model.forward_intermediates(
            pixels.to(self.device), indices=[int(n.rsplit(".", 1)[1]) for n in names], stop_early=True,
            intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
        if self.pooling == "cls":
            return [p[:, 0].float() for p in out["image_intermediates_prefix"]]
        return [s.mean(dim=1).float() for s in out["image_intermediates"]]


def describe(name: str, **options: Any) -> EncoderSpec:
    model, tag, description = MODELS[name]
    cfg = _open_clip().get_model_config(model)
    vision = cfg["vision_cfg"]
    size = int(options.get("image_size") or vision["image_size"])
    width = int(vision["width"])
    return EncoderSpec(name=name, family="clip", description=description,
                       layers=tuple(Layer(f"transformer.resblocks.{i}", width) for i in range(int(vision["layers"]))),
                       preprocessing=_preprocessing(model, tag, size), pooling=options.get("pooling") or "cls",
                       poolings=POOLINGS, weights=availability(name, _sources(model, tag)))


def _factory(name: str):
    def make(*, weights: str | None = None, device: str = "cpu", **options) -> OpenClipVisual:
        return OpenClipVisual(name, weights=weights, device=device, **options)

    make.__doc__ = f"{MODELS[name][2]}. Options: pooling ('cls'|'mean'), image_size, seed (random init)."
    make.describe = lambda **options: describe(name, **options)  # type: ignore[attr-defined]
    return make


@hookimpl
def forensics_encoders(register: RegisterEncoder) -> None:
    for name, (_, _, description) in MODELS.items():
        register(name, _factory(name), description=description)
