"""The open_clip visual tower as a forensics encoder (torch and open_clip load with this module, on first use
of an ``openclip_*`` encoder; :mod:`forensics_openclip` names the models without them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forensics.encode.encoder import Encoder, Layer
from forensics.encode.weights import RANDOM, apply_state_dict, load_state_dict, random_init, resolve, weights_info
from forensics.errors import UsageError
from forensics_openclip import MODELS, POOLINGS, _open_clip, _preprocessing, _sources


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
        build = lambda: _build_tower(model, tag, image_size)  # noqa: E731
        if weights == RANDOM:
            tower = random_init(build, seed=seed)
            source, detail = "random", f"open_clip {model} visual tower random init, seed={seed}"
        else:
            from forensics_timm.base import SkipRandomFill

            found = resolve(name, weights, _sources(model, tag))
            state = load_state_dict(found.path)
            with SkipRandomFill() as skipped:  # the weights replace every value drawn: draw none
                tower = random_init(build, seed=seed)  # (and leave the caller's random state alone)
            state = _resample_pos(_visual_state(state), tower)
            if not skipped.all_replaced_by(tower, state):  # something else was to be drawn: build as always
                tower = random_init(build, seed=seed)
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
