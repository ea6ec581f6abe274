"""What every timm-built encoder shares: building the model, finding its weights, preprocessing, listing.

A family subclasses :class:`TimmEncoder` and says which modules are its layers (:meth:`tap_names`) and
how one forward pass yields the requested ones (:meth:`run`), pooled to one vector per image. Layer sizes
are read from a forward pass on the meta device (no memory, no compute), so a listing never builds a
real model. That pass costs more than building the model (0.1–0.2 CPU-s for a small one), so the sizes
it finds are kept in the user cache folder (``layers/``, one small JSON file per architecture, build
options, input size and pooling, keyed also by the torch and timm versions and this plugin's source) and
read from there by later builds; a missing, stale or damaged file is recomputed and rewritten (atomically).
The sizes only shape arrays: the embeddings are the same whichever way they were found.

A model built to receive weights skips drawing the random initial values those weights replace
(:class:`SkipRandomFill`), which is most of the cost of building it.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from forensics.encode.encoder import Encoder, EncoderSpec, Layer, Preprocessing
from forensics.errors import UsageError
from forensics.encode.weights import (RANDOM, Sources, apply_state_dict, availability, load_state_dict, random_init,
                               resolve, weights_info)

StateAdapter = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]


def _timm():
    import timm

    return timm


@dataclass(frozen=True)
class ModelEntry:
    """One bundled encoder: its public name, the timm architecture it builds and where weights may be."""

    name: str
    architecture: str
    description: str
    pretrained_tag: str | None = None  # the timm ``architecture.tag`` whose config (and cache) applies
    package: tuple[str, Callable[[], str]] | None = None
    adapt: StateAdapter | None = None
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the encoder's own preprocessing, for weights that timm's pretrained configs know nothing of
    preprocessing: Preprocessing | None = None
    #: False when the weights exist only in ``package`` (no timm / Hugging Face / torch hub cache to search)
    hub: bool = True
    #: extra advice for the "no weights" message
    how: str = ""

    @property
    def timm_name(self) -> str:
        return f"{self.architecture}.{self.pretrained_tag}" if self.pretrained_tag else self.architecture

    def sources(self) -> Sources:
        if not self.hub:
            return Sources(package=self.package, how=self.how)
        cfg = _timm().models.get_pretrained_cfg(self.timm_name)
        hf = (cfg.hf_hub_id,) if cfg is not None and cfg.hf_hub_id else ()  # "org/name", or "org/name@revision"
        urls = (cfg.url,) if cfg is not None and cfg.url else ()
        # weights that come from a pip package are that package's tensors: timm's hub port of the same network
        # would be other tensors than the protocols recorded, so it is looked up in the cache, never fetched
        return Sources(package=self.package, hf_ids=hf, hf_filenames=TIMM_HF_FILES, urls=urls, how=self.how,
                       download=self.package is None)


#: the files of a timm model repo on the Hugging Face Hub, in the order timm's own pretrained loading tries them
TIMM_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def preprocessing_from_cfg(cfg: Any, size: int) -> Preprocessing:
    """The model's own preprocessing (timm pretrained config), for input ``size``."""
    crop_pct = cfg.crop_pct if cfg is not None and cfg.crop_pct else 1.0
    return Preprocessing(
        size=size, resize=int(math.floor(size / crop_pct)),
        interpolation=cfg.interpolation if cfg is not None and cfg.interpolation in ("bilinear", "bicubic",
                                                                                      "nearest") else "bicubic",
        mean=tuple(float(v) for v in cfg.mean) if cfg is not None else (0.5, 0.5, 0.5),
        std=tuple(float(v) for v in cfg.std) if cfg is not None else (0.5, 0.5, 0.5))


def entry_preprocessing(entry: ModelEntry, size: int) -> Preprocessing:
    """The preprocessing of ``entry`` at input ``size``: its own when it declares one (the resize scaled
    with the size), else timm's pretrained config."""
    own = entry.preprocessing
    if own is not None:
        return own if own.size == size else replace(own, size=size, resize=round(own.resize * size / own.size))
    return preprocessing_from_cfg(_timm().models.get_pretrained_cfg(entry.timm_name), size)


def global_average(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, C); (B, C) stays."""
    return x.mean(dim=(2, 3)) if x.ndim == 4 else x


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W), the official InceptionV3 choice; a pooled (B, C) vector stays as it is."""
    return x.mean(dim=1).flatten(1) if x.ndim == 4 else x


POOLERS = {"avg": global_average, "channel_mean": channel_mean}


class TimmEncoder(Encoder):
    """An encoder built on a timm model. Subclasses set :attr:`family`, :attr:`poolings` and implement
    :meth:`tap_names` and :meth:`run`."""

    family = "timm"
    poolings: tuple[str, ...] = ("avg",)
    channels_last = False  # CNNs: NHWC is about 2× faster on CPU

    def __init__(self, entry: ModelEntry, *, weights: str | None = None, device: str = "cpu",
                 pooling: str | None = None, image_size: int | None = None, seed: int = 0):
        pooling = self.poolings[0] if pooling is None else pooling
        if pooling not in self.poolings:
            raise UsageError(f"pooling for {entry.name} must be one of {self.poolings}, not {pooling!r}")
        timm = _timm()
        self.entry = entry
        self.name = entry.name
        self.pooling = pooling
        self.options = {k: v for k, v in (("pooling", pooling if pooling != self.poolings[0] else None),
                                          ("image_size", image_size), ("seed", seed or None)) if v is not None}
        kwargs = self.model_kwargs(image_size)
        build = lambda: timm.create_model(entry.architecture, **kwargs)  # noqa: E731
        if weights == RANDOM:
            model = random_init(build, seed=seed)
            source, detail = "random", f"timm {entry.architecture} random init, seed={seed}"
        else:
            found = resolve(entry.name, weights, entry.sources())
            state = load_state_dict(found.path)
            with SkipRandomFill() as skipped:  # the weights replace every value drawn: draw none
                model = random_init(build, seed=seed)  # (and leave the caller's random state alone)
            if entry.adapt is not None:
                state = entry.adapt(state, model)
            state = self.adapt_state(state, model)
            if not skipped.all_replaced_by(model, state):  # something else was to be drawn: build as always
                model = random_init(build, seed=seed)
            apply_state_dict(model, state, where=found.detail, ignore_missing=self.head_prefixes())
            source, detail = found.source, found.detail
        model.eval()
        self.model = self.prune(model)
        self.weights = weights_info(self.model, source, detail)
        self.preprocessing = entry_preprocessing(entry, self.input_size(model, image_size))
        self.layers = self.known_layers(kwargs, self.preprocessing.size, self.model)
        self.to(device)

    # -- what a family says ----------------------------------------------------------------------
    def model_kwargs(self, image_size: int | None) -> dict[str, Any]:
        kwargs = {"pretrained": False, "num_classes": 0, **self.entry.extra_kwargs}
        return kwargs

    def input_size(self, model: torch.nn.Module, image_size: int | None) -> int:
        if image_size is not None:
            return int(image_size)
        return int(model.pretrained_cfg["input_size"][-1])

    def head_prefixes(self) -> tuple[str, ...]:
        return ("head", "fc", "classifier")

    def adapt_state(self, state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Drop classifier tensors (the model is built without a head)."""
        return {k: v for k, v in state.items() if not k.startswith(tuple(p + "." for p in self.head_prefixes()))}

    def prune(self, model: torch.nn.Module) -> torch.nn.Module:
        """Drop what no layer needs (the classifier is already gone: ``num_classes=0``)."""
        return model

    @classmethod
    def tap_names(cls, model: torch.nn.Module) -> list[str]:
        raise NotImplementedError

    def run(self, model: torch.nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        """One forward pass returning the (unpooled) outputs of ``names`` in order."""
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return POOLERS[self.pooling](x)

    # -- shared ------------------------------------------------------------------------------------
    def declared_layers(self, kwargs: dict[str, Any], size: int,
                        meta: torch.nn.Module | None = None) -> tuple[Layer, ...]:
        """Every layer and its size, from a forward pass of a copy of the model on the meta device."""
        timm = _timm()
        with torch.device("meta"):
            if meta is None:
                meta = self.prune(timm.create_model(self.entry.architecture, **kwargs))
            meta.eval()
            names = self.tap_names(meta)
            outs = self.run(meta, torch.empty(1, 3, size, size), names)
        return tuple(Layer(n, int(self.pool(o).shape[1])) for n, o in zip(names, outs))

    def widths_key(self, kwargs: dict[str, Any], size: int) -> dict[str, Any] | None:
        """Everything the layers' sizes depend on, JSON-able; None when the build options are not."""
        source = _source_digest(type(self))
        if source is None:
            return None
        key = {"format": WIDTHS_FORMAT, "encoder": f"{type(self).__module__}.{type(self).__qualname__}",
               "architecture": self.entry.architecture, "kwargs": kwargs, "size": int(size),
               "pooling": self.pooling, "torch": torch.__version__, "timm": _timm().__version__, "source": source}
        try:
            return json.loads(json.dumps(key, sort_keys=True, allow_nan=False))
        except (TypeError, ValueError):
            return None

    def known_layers(self, kwargs: dict[str, Any], size: int, model: torch.nn.Module,
                     meta: torch.nn.Module | None = None) -> tuple[Layer, ...]:
        """The layers and their sizes: from the user cache when a build with the same key recorded them
        there, else from :meth:`declared_layers` (the meta-device pass, on ``meta`` when given), then
        recorded. ``model`` names the layers, which a cached record must match."""
        key = self.widths_key(kwargs, size)
        path = None if key is None else widths_path(self.entry.architecture, key)
        if path is not None:
            cached = read_widths(path, key, self.tap_names(model))
            if cached is not None:
                return cached
        layers = self.declared_layers(kwargs, size, meta)
        if path is not None:
            write_widths(path, key, layers)
        return layers

    def to(self, device):
        super().to(device)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        return self

    @torch.inference_mode()
    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        names = self.check_layers(layers)
        x = pixels.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = self.run(self.model, x, names)
        return [self.pool(o).float() for o in outs]

    # -- listing -----------------------------------------------------------------------------------
    @classmethod
    def describe(cls, entry: ModelEntry, **options: Any) -> EncoderSpec:
        """What this encoder declares, without building or loading it."""
        shell = cls.__new__(cls)
        shell.entry = entry
        shell.pooling = options.get("pooling") or cls.poolings[0]
        kwargs = shell.model_kwargs(options.get("image_size"))
        timm = _timm()
        with torch.device("meta"):
            meta = timm.create_model(entry.architecture, **kwargs)
        size = shell.input_size(meta, options.get("image_size"))
        prep = entry_preprocessing(entry, size)
        return EncoderSpec(name=entry.name, family=cls.family, description=entry.description,
                           layers=shell.known_layers(kwargs, size, meta, meta), preprocessing=prep,
                           pooling=shell.pooling, poolings=cls.poolings,
                           weights=availability(entry.name, entry.sources()))


# -- a model built to receive weights --------------------------------------------------------------
#: the in-place random fills of torch (as tensor methods and as ``torch.nn.init`` functions)
RANDOM_FILLS = frozenset({
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.exponential_,
    torch.Tensor.bernoulli_, torch.Tensor.cauchy_, torch.Tensor.log_normal_, torch.Tensor.geometric_,
    torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.trunc_normal_, torch.nn.init.kaiming_uniform_,
    torch.nn.init.kaiming_normal_, torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_,
    torch.nn.init.orthogonal_, torch.nn.init.sparse_})


class SkipRandomFill(torch.overrides.TorchFunctionMode):
    """Build a model without drawing the random initial values that its weights will replace.

    Inside, the in-place random fills (:data:`RANDOM_FILLS`) leave their tensor as it is (allocated, not
    filled) and are remembered; everything else runs. Drawing them is most of the cost of building a model
    (25 of 34 CPU-ms for EfficientNet-Lite0, 380 of 890 for ViT-B/16 here). :meth:`all_replaced_by` then
    says whether every tensor left unfilled is storage of a value the state dict replaces whole; when one
    is not (a buffer drawn at random, a head the weights lack), the caller builds the model the usual way.
    Only this thread's torch calls pass through the mode.
    """

    def __init__(self):
        super().__init__()
        self.unfilled: list[torch.Tensor] = []  # kept alive: no later tensor can reuse their memory

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RANDOM_FILLS:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor):
                self.unfilled.append(target)
                return target
        return func(*args, **kwargs)

    def all_replaced_by(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
        """Whether loading ``state`` leaves ``model`` as if its random values had been drawn: every tensor
        left unfilled is replaced by ``state`` or is not kept by the model (a module built only to probe
        an option), and when some were not kept, every floating-point tensor the model keeps is replaced
        (none can hold a value computed from a draw). Forgets the tensors either way."""
        own = model.state_dict()
        replaced = {t.untyped_storage().data_ptr() for k, t in own.items()
                    if k in state and tuple(state[k].shape) == tuple(t.shape) and t.numel()}
        kept = [*own.values(), *_unrecorded_tensors(model)]
        kept_storage = {t.untyped_storage().data_ptr() for t in kept if t.numel()}
        dropped = False
        for t in self.unfilled:
            where = t.untyped_storage().data_ptr() if t.numel() else None
            if where is None or where in replaced:
                continue
            if where in kept_storage:
                self.unfilled.clear()
                return False
            dropped = True
        self.unfilled.clear()
        return not dropped or all(t.untyped_storage().data_ptr() in replaced for t in kept
                                  if t.is_floating_point() and t.numel())


def _unrecorded_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors ``model`` keeps outside its state dict: non-persistent buffers and plain attributes."""
    out = []
    for module in model.modules():
        out += [b for name, b in module._buffers.items()
                if b is not None and name in module._non_persistent_buffers_set]
        out += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    return out


# -- the layers' sizes, kept in the user cache -----------------------------------------------------
#: the version of a cached record of layer sizes; a record of another version is recomputed
WIDTHS_FORMAT = 1


@functools.lru_cache(maxsize=None)
def _source_digest(cls: type) -> str | None:
    """sha256 of the source files that define what ``cls`` taps and how it pools (its module and this one):
    a changed plugin never reads sizes recorded by another. None when a file cannot be read."""
    import hashlib
    import inspect

    h = hashlib.sha256()
    try:
        files = dict.fromkeys(inspect.getsourcefile(k) for k in cls.__mro__ if issubclass(k, TimmEncoder))
        for f in files:
            if f is None:
                return None
            h.update(open(f, "rb").read())
    except (OSError, TypeError):
        return None
    return h.hexdigest()


def widths_path(architecture: str, key: dict[str, Any]):
    """Where the sizes of the layers for ``key`` are kept: ``<cache>/layers/<architecture>-<key hash>.json``;
    None where the cache folder cannot be one (a file in its place): the sizes are then measured each time."""
    from forensics.encode.cache import cache_dir
    from forensics.errors import ForensicsError
    from forensics.io.hashing import sha256_json, short

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", architecture)[:80]
    try:
        return cache_dir() / "layers" / f"{name}-{short(sha256_json(key), 24)}.json"
    except ForensicsError:
        return None


def read_widths(path, key: dict[str, Any], names: Sequence[str]) -> tuple[Layer, ...] | None:
    """The layers recorded at ``path`` for ``key``, or None when there is no such file or it is not a valid
    record of exactly that key and of the layers ``names`` (any damage reads as no record)."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != WIDTHS_FORMAT or record.get("key") != key:
        return None
    rows = record.get("layers")
    if not isinstance(rows, list) or len(rows) != len(names):
        return None
    layers = []
    for row, name in zip(rows, names):
        if not (isinstance(row, list) and len(row) == 2 and row[0] == name and type(row[1]) is int and row[1] > 0):
            return None
        layers.append(Layer(name, row[1]))
    return tuple(layers)


def write_widths(path, key: dict[str, Any], layers: Sequence[Layer]) -> None:
    """Record ``layers`` for ``key`` at ``path`` (atomically); a cache folder that cannot be written to only
    means the sizes are computed again next time."""
    from forensics.io.atomic import write_text_atomic

    record = {"format": WIDTHS_FORMAT, "key": key, "layers": [[layer.name, layer.dim] for layer in layers]}
    try:
        write_text_atomic(path, json.dumps(record, sort_keys=True) + "\n")
    except (OSError, UsageError):
        pass


def sequential_run(steps: Sequence[tuple[str, torch.nn.Module]], x: torch.Tensor,
                   names: Sequence[str]) -> list[torch.Tensor]:
    """Run ``steps`` (name, module) in order, keep the outputs of ``names``, stop after the deepest one."""
    wanted = set(names)
    kept: dict[str, torch.Tensor] = {}
    for step_name, module in steps:
        x = module(x)
        if step_name in wanted:
            kept[step_name] = x
            if len(kept) == len(wanted):
                break
    return [kept[n] for n in names]


def make_factory(cls: type[TimmEncoder], entry: ModelEntry) -> Callable[..., TimmEncoder]:
    def make(*, weights: str | None = None, device: str = "cpu", **options) -> TimmEncoder:
        return cls(entry, weights=weights, device=device, **options)

    make.__doc__ = (f"{entry.description}. Options: pooling ({'|'.join(cls.poolings)}), image_size, "
                    f"seed (random init).")
    make.describe = lambda **options: cls.describe(entry, **options)  # type: ignore[attr-defined]
    make.entry = entry  # type: ignore[attr-defined]
    init = inspect.signature(cls.__init__)  # its options by name, so that a wrong one is told before any work
    make.__signature__ = init.replace(parameters=[p for n, p in init.parameters.items()  # type: ignore[attr-defined]
                                                  if n not in ("self", "entry")])
    return make
