"""Hugging Face ``diffusers`` models for InvMM: pixel-space UNets, latent UNets with their autoencoder, and Stable
Diffusion with the soft prompt of ``ALGORITHMS.md`` §4.

What InvMM reads from a diffusers model, and from where:

- ᾱ_t: the scheduler's own ``alphas_cumprod`` (any scheduler with one: DDPM, DDIM, PNDM, Euler, …; its config is
  converted to a :class:`diffusers.DDIMScheduler`, as ``DDIMPipeline`` does, and the two must agree).
- The verification timesteps: the scheduler's own, ``DDIMScheduler.from_config(config).set_timesteps(S)``
  (``timestep_spacing`` and ``steps_offset`` as the model was published), not InvMM's official spacing, unless
  the loader is asked for it (``timesteps="official"``).
- ε_θ(x_t, t): the UNet. ``prediction_type`` ``"epsilon"`` is used as is; ``"v_prediction"`` is converted
  exactly, ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t; anything else is refused.
- Latent models: x₀ = ``vae.encode(images)`` (the posterior's mode for an ``AutoencoderKL``, as InvMM's
  ``get_first_stage_encoding`` does; the unquantised latent for a ``VQModel``, as LDM's ``encode_first_stage``
  does) × ``scaling_factor``; images = ``vae.decode(z / scaling_factor)``, as the pipelines decode.
- Stable Diffusion's condition: the empty prompt tokenised as the pipeline does (BOS, EOS, padding to
  ``model_max_length``); the token embeddings of positions 1 … 75 are replaced by soft ones (token weights @ the
  text encoder's token embedding matrix) and the text encoder runs on the result, so gradients reach the
  weights. The unconditional branch is the empty prompt's states.

Where a diffusers pipeline and InvMM's verification differ (InvMM's sampler is the measure's, not the
pipeline's): the pipeline's last DDIM step goes to ``final_alpha_cumprod`` (1 when the scheduler's
``set_alpha_to_one`` is true, so it returns x̂₀ exactly; ᾱ_0 otherwise, as Stable Diffusion's config and the
official LDM sampler do, returning √ᾱ_0·x̂₀ + √(1−ᾱ_0)·ε̂ instead of x̂₀), and a scheduler with ``clip_sample``
clips every intermediate x̂₀, where InvMM clips only the final image. Both are recorded in
:meth:`DiffusersUNetModel.describe` (``final_alpha_cumprod``, ``clip_sample``).

Load with :func:`load_diffusers` (a folder saved by ``save_pretrained``: a pipeline with ``model_index.json``, or
a UNet folder with ``config.json`` and a scheduler config), or ``forensics invmm IMAGES --model PATH``.
Nothing is downloaded: folders are read with ``local_files_only``.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from forensics.errors import UsageError
from forensics.extras import MissingExtra
from forensics.inversion.model import DiffusionModel, SoftPrompt, check_images, official_ddim_timesteps

INSTALL = "pip install 'forensics-attribution[diffusers]'"

PIXEL_PIPELINES = ("DDPMPipeline", "DDIMPipeline", "PNDMPipeline")
LATENT_PIPELINES = ("LDMPipeline",)
TEXT_PIPELINES = ("StableDiffusionPipeline",)
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")
TEXT_ENCODER_CLASSES = ("CLIPTextModel",)
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEPS = ("scheduler", "official")
SOFT_PROMPT_TAU = 2.0
_MAX_CONFIG_BYTES = 1 << 20
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _libraries():
    """diffusers and transformers, or a one-line error saying how to install them."""
    try:
        import diffusers
        import transformers
    except ImportError as exc:  # a missing extra: a failed run (exit 1), as every missing extra
        raise MissingExtra(f"diffusers models need the diffusers extra ({exc.name or exc} is not installed): "
                           f"{INSTALL}") from None
    return diffusers, transformers


@contextmanager
def _quiet(*libraries):
    """Loading without the libraries' log lines and progress bars (a missing ``accelerate``, weight loading,
    and the *error*-level "An error occurred while trying to fetch …" diffusers logs for every model saved as
    ``.bin`` before it loads that file): the command line's stderr is for the run's own progress; errors still
    raise."""
    saved = []
    for library in libraries:
        log = library.utils.logging
        saved.append((log, log.get_verbosity(), log.is_progress_bar_enabled()))
        log.set_verbosity(log.CRITICAL)
        log.disable_progress_bar()
    try:
        yield
    finally:
        for log, verbosity, bars in saved:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()


def _frozen(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval().to(device)


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


class DiffusersUNetModel(DiffusionModel):
    """A pixel-space diffusers UNet (``UNet2DModel``) with its noise schedule.

    ``scheduler`` is any diffusers scheduler with ``alphas_cumprod``; its config becomes a ``DDIMScheduler``
    whose timesteps the verification walks (``timesteps="scheduler"``), or InvMM's official spacing
    (``timesteps="official"``). Subclasses use the same UNet call with a condition
    (``encoder_hidden_states``) and a latent space.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *, device: str | torch.device = "cpu",
                 timesteps: str = "scheduler", name: str = ""):
        diffusers, _ = _libraries()
        if type(unet).__name__ not in UNET_CLASSES:
            raise UsageError(f"InvMM's diffusers adapter takes a {' or '.join(UNET_CLASSES)}, "
                             f"not {type(unet).__name__}")
        if timesteps not in TIMESTEPS:
            raise UsageError(f"timesteps must be one of {', '.join(TIMESTEPS)}, not {timesteps!r}")
        self.device = torch.device(device)
        self.name = name
        self.unet = _frozen(unet, self.device)
        self.scheduler_class = type(scheduler).__name__
        self.scheduler_config = dict(scheduler.config)
        self.timesteps = timesteps
        ddim = self._ddim(diffusers)
        own = getattr(scheduler, "alphas_cumprod", None)
        if not torch.is_tensor(own):
            raise UsageError(f"{self.scheduler_class} has no alphas_cumprod (a flow-matching or continuous-time "
                             f"scheduler); InvMM needs a DDPM-style noise schedule")
        if own.shape != ddim.alphas_cumprod.shape or not torch.equal(own.float().cpu(), ddim.alphas_cumprod):
            raise UsageError(f"{self.scheduler_class}'s noise schedule does not convert to DDIM's; InvMM's "
                             f"diffusers adapter needs a scheduler whose alphas_cumprod DDIMScheduler reproduces")
        self.prediction_type = str(ddim.config.prediction_type)
        if self.prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"prediction_type {self.prediction_type!r} is not supported by InvMM's diffusers "
                             f"adapter; it needs {' or '.join(PREDICTION_TYPES)}")
        if float(ddim.alphas_cumprod[-1]) <= 0.0:
            raise UsageError("the noise schedule reaches alphas_cumprod = 0 (zero terminal SNR); InvMM's x̂₀ "
                             "divides by √ᾱ_t and cannot use it")
        self.alphas_cumprod = ddim.alphas_cumprod.to(torch.float64).to(self.device)
        #: where the pipeline's last DDIM step lands (1: on x̂₀; ᾱ_0 when ``set_alpha_to_one`` is false)
        self.final_alpha_cumprod = float(ddim.final_alpha_cumprod)
        #: whether the pipeline clips every intermediate x̂₀ (InvMM clips only the final image)
        self.clip_sample = bool(ddim.config.clip_sample) or bool(ddim.config.thresholding)
        cfg = unet.config
        channels = int(cfg.in_channels)
        out = int(cfg.out_channels)
        if out not in (channels, 2 * channels):
            raise UsageError(f"the UNet has {channels} input and {out} output channels; InvMM needs ε of the "
                             f"input's shape (or ε and a learned variance, twice as many)")
        if getattr(cfg, "num_class_embeds", None) or getattr(cfg, "class_embed_type", None):
            raise UsageError("class-conditional UNets are not supported by InvMM's diffusers adapter")
        self.sample_shape = (channels, *_size(cfg.sample_size))
        self.image_shape = self.sample_shape  # type: ignore[assignment]
        self.conditional_unet = type(unet).__name__ == "UNet2DConditionModel"

    def _ddim(self, diffusers=None):
        diffusers = diffusers or _libraries()[0]
        return diffusers.DDIMScheduler.from_config(self.scheduler_config)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any = None) -> torch.Tensor:
        dtype = self.unet.dtype
        t = t.to(self.device)
        kwargs = {}
        if self.conditional_unet:
            if condition is None:
                raise ValueError(f"{type(self).__name__} needs a condition (encoder_hidden_states) for its "
                                 f"UNet2DConditionModel")
            kwargs["encoder_hidden_states"] = condition.to(self.device, dtype)
        elif condition is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; got a condition")
        out = self.unet(x_t.to(self.device, dtype), t, **kwargs).sample
        out = out[:, : self.sample_shape[0]].to(x_t.dtype)
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The scheduler's own DDIM timesteps for ``steps`` steps (``timesteps="scheduler"``), descending, as the
        diffusers pipeline walks them; InvMM's official spacing with ``timesteps="official"``."""
        if self.timesteps == "official":
            return official_ddim_timesteps(self.num_timesteps, steps)
        if steps < 1:
            raise ValueError(f"DDIM steps must be at least 1, got {steps}")
        ddim = self._ddim()
        try:
            ddim.set_timesteps(int(steps))
        except ValueError as exc:
            raise ValueError(f"{steps} DDIM steps do not fit the scheduler: {exc}") from None
        return [int(t) for t in ddim.timesteps]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"scheduler": self.scheduler_class, "prediction_type": self.prediction_type,
                    "timesteps_from": self.timesteps,
                    "timestep_spacing": str(self.scheduler_config.get("timestep_spacing", "leading")),
                    "final_alpha_cumprod": self.final_alpha_cumprod, "clip_sample": self.clip_sample})
        return out


class DiffusersLatentModel(DiffusersUNetModel):
    """A latent diffusers UNet with its autoencoder: an ``AutoencoderKL`` (Stable Diffusion) or a ``VQModel``
    (LDM). x₀ = encode(images) × ``scaling_factor`` (the KL posterior's mode; the VQ encoder's unquantised
    latent), images = decode(z / ``scaling_factor``) (a VQ decoder quantises)."""

    default_preset = "ldm-faces"

    def __init__(self, unet: torch.nn.Module, scheduler: Any, vae: torch.nn.Module, *,
                 device: str | torch.device = "cpu", timesteps: str = "scheduler", name: str = ""):
        super().__init__(unet, scheduler, device=device, timesteps=timesteps, name=name)
        kind = type(vae).__name__
        if kind not in AUTOENCODER_CLASSES:
            raise UsageError(f"InvMM's diffusers adapter takes an {' or '.join(AUTOENCODER_CLASSES)} as the "
                             f"autoencoder, not {kind}")
        self.vae = _frozen(vae, self.device)
        self.vq = kind == "VQModel"
        cfg = vae.config
        self.scaling_factor = float(getattr(cfg, "scaling_factor", None) or 1.0)
        shift = getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        latent = int(cfg.latent_channels)
        if latent != self.sample_shape[0]:
            raise UsageError(f"the UNet takes {self.sample_shape[0]} channels but the autoencoder's latent has "
                             f"{latent}")
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.image_shape = (int(cfg.in_channels), self.sample_shape[1] * factor, self.sample_shape[2] * factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.image_shape)
        x = images.to(self.device, self.vae.dtype)
        encoded = self.vae.encode(x)
        z = encoded.latents if self.vq else encoded.latent_dist.mode()
        return ((z - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        z = x0.to(self.device, self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.to(x0.dtype)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"autoencoder": type(self.vae).__name__, "scaling_factor": self.scaling_factor})
        return out


class StableDiffusionModel(DiffusersLatentModel):
    """Stable Diffusion (v1, v2 with an ε- or v-predicting UNet) for InvMM, with a soft prompt of
    ``model_max_length − 2`` tokens (75 for CLIP) over the text encoder's vocabulary, τ = 2 (§4).

    :meth:`condition` mixes token weights into the token embedding matrix and puts the result at positions
    1 … 75 of the empty prompt's token embeddings (after BOS; the last position keeps its padding token), as
    InvMM's official code does with a hook on the embedding layer; the text encoder then runs with gradients
    flowing to the weights. :meth:`null_condition` is the empty prompt's states, as the pipeline computes them.
    """

    default_preset = "sd-v1"

    def __init__(self, unet: torch.nn.Module, scheduler: Any, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                 tokenizer: Any, *, device: str | torch.device = "cpu", timesteps: str = "scheduler",
                 name: str = "", tau: float = SOFT_PROMPT_TAU):
        super().__init__(unet, scheduler, vae, device=device, timesteps=timesteps, name=name)
        if not self.conditional_unet:
            raise UsageError("a Stable Diffusion pipeline needs a UNet2DConditionModel")
        if type(text_encoder).__name__ not in TEXT_ENCODER_CLASSES:
            raise UsageError(f"InvMM's soft prompt needs a {' or '.join(TEXT_ENCODER_CLASSES)} text encoder, "
                             f"not {type(text_encoder).__name__}")
        self.text_encoder = _frozen(text_encoder, self.device)
        self.tokenizer = tokenizer
        self.token_embedding = text_encoder.get_input_embeddings()
        length = int(tokenizer.model_max_length)
        enc = tokenizer("", padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        self.prompt_ids = enc.input_ids.to(self.device)
        self.prompt_mask = enc.attention_mask.to(self.device)
        if self.prompt_ids.shape[1] != length or length < 3:
            raise UsageError(f"the tokenizer gives {self.prompt_ids.shape[1]} tokens for the empty prompt, "
                             f"expected its model_max_length {length} (at least 3)")
        self.use_attention_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
        vocab = int(self.token_embedding.weight.shape[0])
        self.soft_prompt = SoftPrompt(length=length - 2, vocab_size=vocab, tau=float(tau))
        self._null: torch.Tensor | None = None

    def _encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids, attention_mask=mask if self.use_attention_mask else None)[0]

    def condition(self, token_weights: torch.Tensor) -> torch.Tensor:
        prompt = self.soft_prompt
        assert prompt is not None
        if (not torch.is_tensor(token_weights) or not token_weights.is_floating_point() or token_weights.dim() != 3
                or tuple(token_weights.shape[1:]) != (prompt.length, prompt.vocab_size)):
            got = tuple(token_weights.shape) if torch.is_tensor(token_weights) else type(token_weights).__name__
            raise ValueError(f"token weights must be a float tensor of shape (N, {prompt.length}, "
                             f"{prompt.vocab_size}), got {got}")
        n = token_weights.shape[0]
        table = self.token_embedding.weight
        soft = token_weights.to(self.device, table.dtype) @ table  # (N, length, hidden)

        def put_soft_tokens(module, args, output):
            return torch.cat([output[:, :1], soft.to(output.dtype), output[:, 1 + prompt.length:]], dim=1)

        mask = self.prompt_mask.clone()
        mask[:, 1:1 + prompt.length] = 1
        handle = self.token_embedding.register_forward_hook(put_soft_tokens)
        try:
            return self._encode_text(self.prompt_ids.expand(n, -1), mask.expand(n, -1))
        finally:
            handle.remove()

    def null_condition(self, n: int) -> torch.Tensor:
        if self._null is None:
            with torch.no_grad():
                self._null = self._encode_text(self.prompt_ids, self.prompt_mask)
        return self._null.expand(n, -1, -1)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        assert self.soft_prompt is not None
        out.update({"text_encoder": type(self.text_encoder).__name__, "soft_prompt_tokens": self.soft_prompt.length,
                    "vocab_size": self.soft_prompt.vocab_size})
        return out


# -- loading folders -------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object from a regular file, or None when there is none (or it is not one)."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_CONFIG_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _scheduler_dir(folder: Path) -> Path | None:
    for where in (folder, folder / "scheduler"):
        if (where / "scheduler_config.json").is_file():
            return where
    return None


def accepts(path: Any) -> bool:
    """Whether ``path`` is a folder this loader opens: a diffusers pipeline (``model_index.json``) or a UNet
    folder (``config.json`` of a UNet and a ``scheduler_config.json`` beside it or in ``scheduler/``). Reads two
    small JSON files at most; never imports diffusers."""
    try:
        folder = Path(os.fspath(path))
        if not folder.is_dir():
            return False
        if (folder / "model_index.json").is_file():
            return True
        config = _read_json(folder / "config.json")
        return bool(config) and config.get("_class_name") in UNET_CLASSES and _scheduler_dir(folder) is not None
    except (OSError, TypeError, ValueError):
        return False


def _dtype(value: Any) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if str(value) in _DTYPES:
        return _DTYPES[str(value)]
    raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, not {value!r}")


def _component(diffusers, transformers, folder: Path, index: Mapping[str, Any], names: tuple[str, ...],
               allowed: tuple[str, ...], dtype: torch.dtype | None):
    """Load the pipeline component listed under the first of ``names`` in ``model_index.json``."""
    name = next((n for n in names if isinstance(index.get(n), list) and len(index[n]) == 2 and index[n][1]), None)
    if name is None:
        raise UsageError(f"{folder}/model_index.json lists no {' or '.join(names)}")
    library, cls_name = index[name]
    if cls_name not in allowed:
        raise UsageError(f"{folder}: the {name} is a {cls_name}; InvMM's diffusers adapter takes "
                         f"{' or '.join(allowed)}")
    cls = getattr(transformers if library == "transformers" else diffusers, cls_name, None)
    if cls is None:
        raise UsageError(f"{folder}: this {library} has no {cls_name}; upgrade it ({INSTALL})")
    kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": True}
    if dtype is not None and library in ("diffusers", "transformers") and "Tokenizer" not in cls_name:
        kwargs["torch_dtype"] = dtype
    return _from_pretrained(cls, folder, **kwargs)


def _from_pretrained(cls, folder: Path, **kwargs: Any):
    """``cls.from_pretrained`` from a local folder; a missing or damaged file is a one-line error."""
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        where = folder / kwargs["subfolder"] if "subfolder" in kwargs else folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, pickle.UnpicklingError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # torch.load(weights_only=True) refused it: never loaded the unsafe way
            first = ("its pickled weights file holds more than tensors (code torch will not run when loading "
                     "safely); convert a trusted copy to .safetensors")
        raise UsageError(f"cannot load the {cls.__name__} in {where}: {first}") from None


def _scheduler(diffusers, where: Path, class_name: str | None = None):
    config = _read_json(where / "scheduler_config.json")
    if config is None:
        raise UsageError(f"{where} has no readable scheduler_config.json")
    class_name = class_name or str(config.get("_class_name", "DDPMScheduler"))
    cls = getattr(diffusers, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise UsageError(f"{where}: {class_name!r} is not a diffusers scheduler")
    return cls.from_config(config)


def load_diffusers(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: Any = None, *,
                   timesteps: str = "scheduler", name: str | None = None) -> DiffusersUNetModel:
    """Open a saved diffusers model for InvMM, offline.

    ``path``: a pipeline folder (``model_index.json``: ``StableDiffusionPipeline`` → :class:`StableDiffusionModel`;
    ``DDPMPipeline``/``DDIMPipeline``/``PNDMPipeline`` → :class:`DiffusersUNetModel`; ``LDMPipeline`` →
    :class:`DiffusersLatentModel`), or a ``UNet2DModel`` folder with a scheduler config. ``dtype``: ``None``
    (as saved), ``"float32"``, ``"float16"`` or ``"bfloat16"``. ``timesteps``: ``"scheduler"`` (the scheduler's
    own DDIM timesteps, as the pipeline) or ``"official"`` (InvMM's spacing)."""
    from forensics.encode.devices import torch_device

    diffusers, transformers = _libraries()
    device = torch_device(device)
    folder = Path(os.fspath(path))
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; a diffusers model is a folder saved by save_pretrained")
    torch_dtype = _dtype(dtype)
    if timesteps not in TIMESTEPS:
        raise UsageError(f"timesteps must be one of {', '.join(TIMESTEPS)}, not {timesteps!r}")
    with _quiet(diffusers, transformers):
        return _load(diffusers, transformers, folder, torch_dtype, device=device, timesteps=timesteps,
                     name=name or str(path))


def _load(diffusers, transformers, folder: Path, torch_dtype: torch.dtype | None, **common: Any):
    index = _read_json(folder / "model_index.json")
    if index is not None:
        pipeline = str(index.get("_class_name", ""))
        supported = PIXEL_PIPELINES + LATENT_PIPELINES + TEXT_PIPELINES
        if pipeline not in supported:
            raise UsageError(f"{folder} holds a {pipeline or 'diffusers pipeline without _class_name'}; InvMM's "
                             f"diffusers adapter opens {', '.join(supported)}")

        def part(names: tuple[str, ...], allowed: tuple[str, ...]):
            return _component(diffusers, transformers, folder, index, names, allowed, torch_dtype)

        unet = part(("unet",), ("UNet2DModel",) if pipeline not in TEXT_PIPELINES else ("UNet2DConditionModel",))
        sched_entry = index.get("scheduler")
        sched_class = sched_entry[1] if isinstance(sched_entry, list) and len(sched_entry) == 2 else None
        scheduler = _scheduler(diffusers, folder / "scheduler", sched_class)
        if pipeline in PIXEL_PIPELINES:
            return DiffusersUNetModel(unet, scheduler, **common)
        if pipeline in LATENT_PIPELINES:
            return DiffusersLatentModel(unet, scheduler, part(("vqvae", "vae"), AUTOENCODER_CLASSES), **common)
        return StableDiffusionModel(unet, scheduler, part(("vae",), AUTOENCODER_CLASSES),
                                    part(("text_encoder",), TEXT_ENCODER_CLASSES),
                                    part(("tokenizer",), TOKENIZER_CLASSES), **common)
    config = _read_json(folder / "config.json")
    where = _scheduler_dir(folder)
    if config is None or where is None:
        raise UsageError(f"{folder} is not a diffusers model: expected model_index.json (a saved pipeline) or "
                         f"config.json of a UNet with scheduler_config.json")
    kind = config.get("_class_name")
    if kind != "UNet2DModel":
        raise UsageError(f"{folder}/config.json describes a {kind}; a UNet folder must hold a UNet2DModel "
                         f"(a text-conditioned UNet needs its whole pipeline folder)")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    unet = _from_pretrained(diffusers.UNet2DModel, folder, **kwargs)
    return DiffusersUNetModel(unet, _scheduler(diffusers, where), **common)


def load(*, path: str | os.PathLike | None = None, device: str = "cpu", **options: Any) -> DiffusersUNetModel:
    """The plugin host's loader: ``load(path=FOLDER, device=..., dtype=..., timesteps=...)``."""
    if path is None:
        raise UsageError("the diffusers model loader needs a path: a folder saved by a diffusers pipeline's "
                         "save_pretrained")
    unknown = set(options) - {"dtype", "timesteps", "name"}
    if unknown:
        raise UsageError(f"unknown option(s) for diffusers models: {', '.join(sorted(unknown))}; "
                         f"known: dtype, timesteps, name")
    return load_diffusers(path, device=device, **options)


load.accepts = accepts  # type: ignore[attr-defined]
