"""The two things InvMM needs from outside: a diffusion model to invert, and a copy similarity to verify with.

Both are plugin points (:func:`forensics.hookspecs.forensics_diffusion_models`,
:func:`forensics.hookspecs.forensics_copy_similarities`). The measure itself
(:mod:`forensics.inversion.measure`) knows nothing of a particular network: it reads ᾱ_t from
:attr:`DiffusionModel.alphas_cumprod`, calls :meth:`DiffusionModel.predict_noise` and walks
:meth:`DiffusionModel.ddim_timesteps` to verify.

Conventions. *Images* are float tensors (N, C, H, W) in [-1, 1] at the model's pixel resolution
(:attr:`DiffusionModel.image_shape`). *Model space* is where the diffusion runs: the images themselves for a
pixel-space model, a latent for a latent model (:meth:`DiffusionModel.encode` / :meth:`DiffusionModel.decode`
map between them; :attr:`DiffusionModel.sample_shape` is the shape of one x₀ there). A *condition* is
whatever the model's network takes besides (x_t, t): ``None`` for an unconditional model, text-encoder
states for Stable Diffusion (built from soft token weights by :meth:`DiffusionModel.condition`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def official_ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The DDIM timesteps of InvMM's DDPM code: ``linspace(-1, T-1, S+1)`` cast to int (truncation toward
    zero), descending, without the final -1. For T = 1000, S = 200: 999, 994, …, 9, 4."""
    if steps < 1:
        raise ValueError(f"DDIM steps must be at least 1, got {steps}")
    grid = torch.linspace(-1, num_timesteps - 1, steps + 1).int().tolist()
    return [t for t in reversed(grid) if t >= 0]


@dataclass(frozen=True)
class SoftPrompt:
    """A text-conditioned model's learnable prompt (§4, Stable Diffusion): ``length`` tokens, each a
    distribution over a vocabulary of ``vocab_size`` entries. InvMM learns logits of shape
    (length, vocab_size) starting at 0 and turns them into token weights by Gumbel-softmax at ``tau``."""

    length: int
    vocab_size: int
    tau: float = 2.0


class DiffusionModel(ABC):
    """A frozen noise-prediction diffusion model, as InvMM sees it.

    Subclasses set :attr:`alphas_cumprod` (float64, shape (T,)), :attr:`sample_shape`, :attr:`image_shape`
    and :attr:`device`, and implement :meth:`predict_noise`. A latent model overrides :meth:`encode` and
    :meth:`decode`; a text-conditioned one returns a :class:`SoftPrompt` from :attr:`soft_prompt` and
    implements :meth:`condition` and :meth:`null_condition`. A model whose sampler has its own timesteps
    (a diffusers scheduler) overrides :meth:`ddim_timesteps`.

    The network must be frozen (no parameter requires grad) and in eval mode: InvMM optimises only the
    noise distribution (and the soft prompt), never the model.
    """

    #: the name it was loaded under (a registered name or a path), for reports
    name: str = ""
    #: ᾱ_t for t = 0 … T-1 (float64, on any device)
    alphas_cumprod: torch.Tensor
    #: shape of one x₀ in model space, e.g. (1, 28, 28) or (4, 64, 64)
    sample_shape: tuple[int, ...]
    #: shape of one image at the model's pixel resolution, (C, H, W)
    image_shape: tuple[int, int, int]
    device: torch.device = torch.device("cpu")
    #: the soft prompt of a text-conditioned model; None for an unconditional one
    soft_prompt: SoftPrompt | None = None
    #: ᾱ that the last DDIM step lands on: 1 (the sample is x̂₀ at the last timestep, as InvMM's DDPM code
    #: and diffusers' schedulers with ``set_alpha_to_one``), or ᾱ_0 (the LDM / Stable Diffusion samplers)
    final_alpha_cumprod: float = 1.0
    #: the preset (:data:`forensics.inversion.measure.PRESETS`) a run uses when none is named
    default_preset: str = "ddpm-cifar10"

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abstractmethod
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any = None) -> torch.Tensor:
        """ε_θ(x_t, t[, condition]): ``x_t`` (N, *sample_shape) float, ``t`` (N,) long in 0 … T-1, the
        condition batched like ``x_t`` (or None). Differentiable with respect to ``x_t`` and the condition."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, *image_shape) in [-1, 1] → x₀ in model space. Identity for a pixel-space model."""
        return images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x₀ in model space → images in [-1, 1] (not yet clipped). Identity for a pixel-space model."""
        return x0

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The descending timesteps of a ``steps``-step deterministic DDIM run; the sample is x̂₀ predicted
        at the last of them. Default: InvMM's official spacing (:func:`official_ddim_timesteps`)."""
        return official_ddim_timesteps(self.num_timesteps, steps)

    def condition(self, token_weights: torch.Tensor) -> Any:
        """Soft prompt → condition: ``token_weights`` (N, length, vocab_size), rows summing to 1, mixed into
        the text encoder's token embeddings. Differentiable. Only for a model with a :attr:`soft_prompt`."""
        raise NotImplementedError(f"{type(self).__name__} takes no text condition")

    def null_condition(self, n: int) -> Any:
        """The unconditional (empty prompt) condition, batched n times, for classifier-free guidance."""
        raise NotImplementedError(f"{type(self).__name__} takes no text condition")

    def describe(self) -> dict[str, Any]:
        """What reports record about the model (JSON-able)."""
        return {"name": self.name, "class": type(self).__name__, "timesteps": self.num_timesteps,
                "sample_shape": list(self.sample_shape), "image_shape": list(self.image_shape),
                "latent": tuple(self.sample_shape) != tuple(self.image_shape),
                "conditional": self.soft_prompt is not None}


class CopySimilarity(ABC):
    """How "the same image" is judged at verification: a score per sample, compared with :attr:`threshold`
    (β). InvMM succeeds when every verification sample scores ≥ β against the target.

    Inputs are float tensors in [0, 1]: ``samples`` (n, C, H, W) and ``target`` (C, H, W), both at the
    model's pixel resolution, on the model's device. Returns (n,) float similarities.
    """

    name: str = ""
    #: β: a sample counts as a copy of the target when its similarity is at least this
    threshold: float
    #: the lowest and highest similarity it can give, where it has such (a correlation's -1 and 1): a β outside
    #: them would make every sample a copy, or none
    bounds: tuple[float, float] | None = None

    @abstractmethod
    def __call__(self, samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}


def declared_problems(model: DiffusionModel) -> list[str]:
    """What ``model`` declares wrongly of its attributes (:class:`DiffusionModel`), one phrase each (empty: all
    well formed): checked when a plugin builds a model, before any image is read or brought to its shape."""
    problems = []

    def shape(name: str, length: int | None) -> None:
        value = getattr(model, name, None)
        ok = (isinstance(value, (tuple, list, torch.Size)) and len(value) > 0
              and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value))
        if not ok or (length is not None and len(value) != length):
            what = f"{length} positive whole numbers" if length is not None else "positive whole numbers"
            problems.append(f"{name} is {value!r}, not {what}")

    shape("image_shape", 3)
    shape("sample_shape", None)
    image = getattr(model, "image_shape", None)
    if not problems and image[0] not in (1, 3):
        problems.append(f"image_shape is {tuple(image)}: (C, H, W) with C 1 or 3 channels")
    ab = getattr(model, "alphas_cumprod", None)
    if not (torch.is_tensor(ab) and ab.dim() == 1 and ab.is_floating_point() and ab.numel() > 0):
        problems.append("alphas_cumprod is not a 1-d float tensor")
    elif not bool(((ab > 0) & (ab <= 1)).all()) or bool((ab[1:] > ab[:-1]).any()):
        problems.append("alphas_cumprod must lie in (0, 1] and not increase with t")
    return problems


def check_images(images: torch.Tensor, shape: Sequence[int], what: str = "images") -> None:
    """Raise ValueError unless ``images`` is a float tensor (N, *shape)."""
    if not torch.is_tensor(images) or not images.is_floating_point() or tuple(images.shape[1:]) != tuple(shape):
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{what} must be a float tensor of shape (N, {', '.join(map(str, shape))}), got {got}")
