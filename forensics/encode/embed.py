"""Running an encoder over a set of images: batched, every requested layer from one forward pass.

Images are either one uint8 array (N, H, W[, C]) or a sequence of image files (decoded as
:func:`forensics.io.images.decode_image` decodes them). With
``workers > 0`` decoding and preprocessing run in worker processes (a torch DataLoader) while the model
works on the previous batch. :func:`iter_embed` streams embeddings batch by batch; :func:`embed` fills one
array per layer and can keep them in the on-disk cache (:mod:`forensics.encode.cache`). Results do not depend on
the batch size: every image is preprocessed on its own terms and encoders run in inference mode.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from forensics.encode.encoder import Encoder, Preprocessing, preprocess
from forensics.errors import ForensicsError, PluginError, UsageError
from forensics.io.images import ImageInput as Images
from forensics.io.images import check_image_input, decode_image, images_digest, is_file_list

__all__ = ["AMP_DTYPES", "Images", "Progress", "embed", "forward_batch", "iter_embed", "preprocess_batches"]

Progress = Callable[[int, int], None]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _Batches(torch.utils.data.Dataset):
    """Batch ``i`` of the images, preprocessed: what a worker process returns."""

    def __init__(self, images: Images, prep: Preprocessing, batch_size: int):
        self.images, self.prep, self.batch_size = images, prep, batch_size
        self.paths = is_file_list(images)

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> torch.Tensor:
        chunk = self.images[i * self.batch_size:(i + 1) * self.batch_size]
        if self.paths:  # files may differ in size: each is resized on its own
            return torch.cat([preprocess(decode_image(p)[None], self.prep) for p in chunk])
        return preprocess(chunk, self.prep)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _batches(images: Images, prep: Preprocessing, batch_size: int, workers: int,
             pin: bool) -> Iterator[torch.Tensor]:
    dataset = _Batches(images, prep, batch_size)
    if workers <= 0:
        for i in range(len(dataset)):
            yield dataset[i]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         worker_init_fn=_worker_init, pin_memory=pin, prefetch_factor=2)
    yield from loader


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise UsageError(f"amp must be one of {', '.join(AMP_DTYPES)} or None, not {amp!r}")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _float32(device: torch.device, amp: str | None):
    """Without ``amp``, float32 convolutions on CUDA as on the CPU, where the registry's references were
    embedded. cuDNN's default lets convolutions run in TF32 (10-bit mantissas): on an H200 with that
    default, the bundled demo's C_T moved by 0.40 and 0.49 in EfficientNet's first two layers against
    the CPU, while the ViT (matrix products, no TF32 by default) agreed to 0.01."""
    if amp is not None or device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


def iter_embed(encoder: Encoder, images: Images, *, layers: Sequence[str] | None = None, batch_size: int = 64,
               workers: int = 0, amp: str | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Stream embeddings: yields ``(start, [array (b, dim) per layer])`` for each batch, in order."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size}")
    check_image_input(images)
    names = encoder.check_layers(layers)
    device = torch.device(getattr(encoder, "device", "cpu"))
    start = 0
    for pixels in _batches(images, encoder.preprocessing, batch_size, workers, pin=device.type == "cuda"):
        yield start, forward_batch(encoder, pixels, names, amp=amp)
        start += len(pixels)


def preprocess_batches(images: Images, prep: Preprocessing, batch_size: int) -> Iterator[torch.Tensor]:
    """The preprocessed batches of ``images`` (in this process), exactly as :func:`iter_embed` forms them."""
    return _batches(images, prep, batch_size, 0, pin=False)


def forward_batch(encoder: Encoder, pixels: torch.Tensor, names: Sequence[str], *,
                  amp: str | None = None) -> list[np.ndarray]:
    """One preprocessed batch through the encoder at ``names`` (checked layer names, in depth order): one
    float32 array (b, dim) per layer. What :func:`iter_embed` runs per batch (and the Ray engine's actors)."""
    from forensics.plugins import stdout_to_stderr

    device = torch.device(getattr(encoder, "device", "cpu"))
    try:  # what an encoder prints per batch goes to stderr, never into a --json document on stdout
        with torch.inference_mode(), _autocast(device, amp), _float32(device, amp), stdout_to_stderr():
            feats = encoder.forward_layers(pixels.to(device, non_blocking=True), names)
    except ForensicsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the encoder's own failure, said as one line naming it
        raise _broken(encoder, f"failed on a batch of {len(pixels)} images: {type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    return _checked(encoder, feats, names, len(pixels), amp)


def _broken(encoder: Encoder, what: str) -> PluginError:
    """The error of an encoder that broke its contract (:meth:`Encoder.forward_layers`), naming its plugin."""
    from forensics.plugins import broken

    return broken("encoders", encoder.name, what)


def _checked(encoder: Encoder, feats: Any, names: Sequence[str], rows: int, amp: str | None) -> list[np.ndarray]:
    """``forward_layers``' answer as float32 arrays, checked against its contract: one (rows, dim) tensor per
    requested layer, in order, every value finite."""
    dims = {layer.name: layer.dim for layer in encoder.layers}
    if not isinstance(feats, (list, tuple)) or len(feats) != len(names):
        got = f"{len(feats)} embeddings" if isinstance(feats, (list, tuple)) else f"a {type(feats).__name__}"
        raise _broken(encoder, f"returned {got} for {len(names)} layers ({', '.join(names)})")
    out = []
    for name, f in zip(names, feats):
        if not isinstance(f, torch.Tensor):
            raise _broken(encoder, f"returned a {type(f).__name__} at {name}, not a torch tensor")
        if f.ndim != 2 or f.shape[0] != rows or f.shape[1] != dims[name]:
            raise _broken(encoder, f"returned shape {tuple(f.shape)} at {name} for {rows} images; it declares "
                                   f"{dims[name]} values there, so ({rows}, {dims[name]})")
        a = f.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(a).all():
            hint = " (under --amp fp16, which overflows: try --amp bf16)" if amp == "fp16" else ""
            raise _broken(encoder, f"returned NaN or infinite values at {name}{hint}")
        out.append(a)
    return out


def embed(encoder: Encoder, images: Images, *, layers: Sequence[str] | None = None, batch_size: int = 64,
          progress: Progress | None = None, workers: int = 0, cache: bool = False, amp: str | None = None,
          images_hash: str | None = None) -> list[np.ndarray]:
    """Embed ``images`` (a uint8 array (N, H, W[, C]) or a list of image files) at ``layers`` (all when None).

    Returns one float32 array (N, dim) per layer, in the encoder's depth order. ``progress(done, total)``
    is called after each batch. ``workers``: processes that decode and preprocess (0: in this process).
    ``amp``: ``"bf16"`` or ``"fp16"`` to autocast the forward pass (meant for CUDA). ``cache``: read and
    write the on-disk embedding cache (:mod:`forensics.encode.cache`); only the layers not found there are
    computed, from one forward pass. ``images_hash``: the images' content hash when the caller has it.
    """
    names = encoder.check_layers(layers)
    n = len(images)
    dims = {layer.name: layer.dim for layer in encoder.layers}
    results: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    store = None
    if cache and n:
        from forensics.encode.cache import EmbeddingCache, embedding_key, encoder_record

        store = EmbeddingCache()
        digest = images_hash or images_digest(images)
        record = encoder_record(encoder)
        for name in names:
            keys[name] = embedding_key(images=digest, encoder=record, layer=name, amp=amp)
            hit = store.get(keys[name], rows=n)
            if hit is not None and hit.shape[1:] == (dims[name],):  # (a plugin that changed a layer's size
                results[name] = hit                                   # without its identity: computed anew)
    todo = [name for name in names if name not in results]
    if todo:
        out = {name: np.empty((n, dims[name]), np.float32) for name in todo}
        for start, feats in iter_embed(encoder, images, layers=todo, batch_size=batch_size, workers=workers,
                                       amp=amp):
            for name, f in zip(todo, feats):
                out[name][start:start + len(f)] = f
            if progress is not None:
                progress(min(start + len(feats[0]), n), n)
        results.update(out)
        if store is not None:
            try:
                for name in todo:
                    store.put(keys[name], out[name], what={"images": digest, "encoder": encoder.name, "layer": name,
                                                           "amp": amp})
            except (OSError, UsageError) as exc:  # a read-only cache folder (refused as an output), a full disk:
                # the embeddings serve as computed
                warnings.warn(f"embeddings computed but not cached ({exc}); the next run computes them again "
                              "(set FORENSICS_CACHE_DIR to a writable folder)", stacklevel=2)
    elif progress is not None:
        progress(n, n)
    return [results[name] for name in names]
