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

from typing import TYPE_CHECKING, Any

from forensics.hookspecs import RegisterEncoder, hookimpl

if TYPE_CHECKING:
    from forensics.encode.encoder import EncoderSpec, Preprocessing
    from forensics.encode.weights import Sources
    from forensics_openclip.visual import OpenClipVisual

# Nothing here imports torch or open_clip until an encoder is described or built (forensics_openclip.visual
# holds the model): the plugin host loads every plugin to find any name, and a command that fails on a
# wrong name should fail at once.

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
    from forensics.encode.weights import Sources

    cfg = _open_clip().get_pretrained_cfg(model, tag) or {}
    # open_clip's form: "org/name/" (its default files) or "org/name/file" (that file)
    parts = (cfg.get("hf_hub") or "").strip("/").split("/")
    hub, filename = "/".join(parts[:2]), "/".join(parts[2:])
    files = (filename, *(f for f in OPEN_CLIP_FILES if f != filename)) if filename else OPEN_CLIP_FILES
    return Sources(hf_ids=(hub,) if hub else (), hf_filenames=files,
                   how=f"open_clip's own URL cache is not read (its OpenAI files are TorchScript archives): export "
                       f"the state dict of open_clip.create_model({model!r}, pretrained={tag!r}) to a "
                       f".safetensors file instead")


def _preprocessing(model: str, tag: str, size: int) -> Preprocessing:
    from forensics.encode.encoder import Preprocessing

    cfg = _open_clip().get_pretrained_cfg(model, tag) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return Preprocessing(size=size, resize=size, interpolation=cfg.get("interpolation", "bicubic"), mean=mean,
                         std=std)


def describe(name: str, **options: Any) -> EncoderSpec:
    from forensics.encode.encoder import EncoderSpec, Layer
    from forensics.encode.weights import availability

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
        from forensics_openclip.visual import OpenClipVisual

        return OpenClipVisual(name, weights=weights, device=device, **options)

    make.__doc__ = f"{MODELS[name][2]}. Options: pooling ('cls'|'mean'), image_size, seed (random init)."
    make.describe = lambda **options: describe(name, **options)  # type: ignore[attr-defined]
    return make


@hookimpl
def forensics_encoders(register: RegisterEncoder) -> None:
    for name, (_, _, description) in MODELS.items():
        register(name, _factory(name), description=description)


def __getattr__(name: str) -> Any:
    """The model's names (``OpenClipVisual`` …) stay importable from here, loaded on first use."""
    if name in ("OpenClipVisual", "_build_tower", "_visual_state", "_resample_pos"):
        from forensics_openclip import visual

        return getattr(visual, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
