"""Finding an encoder's weights without ever downloading them.

Order: an explicit local file; a weights package installed with pip (the plugin says which); the
timm / open_clip / Hugging Face cache when the user has the files already; random initialisation only
when asked for by the name ``"random"``. Anything else is a :class:`WeightsError` that says how to
provide the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from forensics.encoders import WeightsInfo
from forensics.errors import WeightsError
from forensics.hashing import sha256_tensors

RANDOM = "random"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or from a torch file with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass the path of a .safetensors or .pt file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def hf_cached_file(repo_id: str, filenames: Iterable[str] = ("model.safetensors", "open_clip_model.safetensors",
                                                               "pytorch_model.bin")) -> Path | None:
    """A file of ``repo_id`` already in the local Hugging Face cache, or None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def apply_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, where: str,
                     adapt: Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]] | None = None,
                     ignore_missing: Iterable[str] = ()) -> None:
    """Load ``state`` into ``model`` strictly (only the classifier head may be missing); say what does not fit."""
    if adapt is not None:
        state = adapt(state, model)
    result = model.load_state_dict(state, strict=False)
    ignore = tuple(ignore_missing)
    missing = [k for k in result.missing_keys if not k.startswith(ignore)] if ignore else list(result.missing_keys)
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (first: {missing[0]})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected (first: {result.unexpected_keys[0]})")
        raise WeightsError(f"weights from {where} do not fit this model: {'; '.join(parts)}")


def weights_info(model: torch.nn.Module, source: str, detail: str) -> WeightsInfo:
    return WeightsInfo(source=source, digest=sha256_tensors(model.state_dict().items()), detail=detail)


def random_init(model_factory: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    """Build a model under a fixed seed, leaving the global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_factory()
