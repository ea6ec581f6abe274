"""The Ray engine: :class:`forensics.engine.Engine`'s work on a Ray cluster, with the same values.

Embedding (:meth:`RayEngine.embed`) is a Ray Data pipeline over *shards* of the image set (row ranges
that are whole multiples of the batch size, so the encoder sees exactly the batches the local engine
feeds it)::

    ray.data.from_items([{start, stop}, …])              one row per shard
      .map_batches(_read_shard, tasks)                   decode / slice and preprocess, in parallel
      .map_batches(_EncoderActor, ActorPoolStrategy)     the encoder: one actor per GPU, or CPU workers

Each actor embeds its shards batch by batch with :func:`forensics.encode.embed.forward_batch` and, when
the embeddings are to be cached, writes them as shards of the embedding cache itself (one ``.npy`` per
layer per shard); the driver writes each layer's index when every shard is in. Without the cache (query
images), the embeddings come back to the driver. The fitted reference side is one Ray task per layer,
which reads that layer's shards from the cache; a query's per-layer statistic is a task per layer and
group of batches. Fitting and scoring call the statistic exactly as the local engine does.

The cache folder (``$FORENSICS_CACHE_DIR``) must be one every node of the cluster sees (a shared file
system) when the cluster has more than one machine: actors write shards there and tasks read them.

Values equal the local engine's to the last bit when the encoder runs with the same number of torch
threads (some CPU kernels sum in another order with another thread count): each CPU actor uses the
driver's count unless ``threads`` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from forensics.engine import Engine
from forensics.errors import StatisticError, UsageError

#: preprocessed pixels of one shard are kept near this size (a Ray Data block)
PIXEL_BYTES = 64 << 20


# -- pieces that run on the cluster -----------------------------------------------------------------
def _read_shard(batch: dict[str, np.ndarray], *, sources: list, prep: Any, batch_size: int) -> dict[str, np.ndarray]:
    """Ray Data task: the preprocessed pixels of one shard (rows start…stop of image set ``job``), formed
    batch by batch as the local engine forms them."""
    import ray
    import torch

    from forensics.encode.embed import preprocess_batches

    kind, data = sources[int(batch["job"][0])]
    (start,), (stop,) = batch["start"], batch["stop"]
    chunk = ray.get(data)[int(start):int(stop)] if kind == "ref" else [str(p) for p in batch["paths"][0]]
    pixels = torch.cat(list(preprocess_batches(chunk, prep, batch_size)))
    return {"job": batch["job"], "start": batch["start"], "stop": batch["stop"], "pixels": pixels.numpy()[None]}


class _EncoderActor:
    """Ray Data actor: holds the encoder (sent once from the driver) and embeds shards of pixels."""

    def __init__(self, *, encoder: list, layers: Sequence[Sequence[str]], batch_size: int, amp: str | None,
                 device: str, threads: int | None, store: str | None, keys: Sequence[Sequence[str]] | None):
        import ray
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.encoder = ray.get(encoder[0])
        if device != "cpu":
            self.encoder.to(device)
        self.layers, self.batch_size, self.amp = [tuple(names) for names in layers], int(batch_size), amp
        self.store = None
        if store is not None:
            from forensics.encode.cache import EmbeddingCache

            self.store, self.keys = EmbeddingCache(store), [list(k) for k in keys or ()]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from forensics.encode.embed import forward_batch

        job = int(batch["job"][0])
        names = self.layers[job]
        pixels = np.array(batch["pixels"][0], dtype=np.float32, copy=True)  # writable, for torch
        feats: list[list[np.ndarray]] = [[] for _ in names]
        for s in range(0, len(pixels), self.batch_size):
            out = forward_batch(self.encoder, torch.from_numpy(pixels[s:s + self.batch_size]), names, amp=self.amp)
            for have, f in zip(feats, out):
                have.append(f)
        arrays = [np.concatenate(f) for f in feats]
        start = int(batch["start"][0])
        result: dict[str, np.ndarray] = {"job": batch["job"], "start": batch["start"], "stop": batch["stop"]}
        if self.store is not None:
            shards = [self.store.write_shard(key, start, a).to_dict() for key, a in zip(self.keys[job], arrays)]
            result["shards"] = np.array([json.dumps(shards)])
        else:
            for i, a in enumerate(arrays):
                result[f"f{i}"] = a[None]
        return result


def _layer_embeddings(source: tuple) -> np.ndarray:
    """A layer's embeddings in a task: read from the embedding cache's shards, or an object's value."""
    kind, where = source
    if kind == "cache":
        from forensics.encode.cache import EmbeddingCache

        root, key, rows = where
        array = EmbeddingCache(root).get(key, rows=rows)
        if array is None:
            raise RuntimeError(f"embedding cache entry {key} under {root} cannot be read on this node; the cache "
                               "folder must be on a file system every node of the cluster sees")
        return array
    if type(where).__name__ == "ObjectRef":  # an array sent through the object store, inside the argument
        import ray

        return ray.get(where)
    return where


def _fit_layer(statistic: Any, fit_params: dict, device: str | None, train: tuple, test: tuple) -> Any:
    """Ray task: the statistic fitted at one layer, as the local engine fits it."""
    t, p = _layer_embeddings(train), _layer_embeddings(test)
    return statistic.fit(t, p, **fit_params, **({"device": device} if device else {}))


def _score_layer(ref: Any, score_params: dict, device: str | None, queries: list[np.ndarray]) -> list[Any]:
    """Ray task: one layer's statistic for a group of query batches; an undefined value as its message."""
    import ray

    if device:
        ref = ref.to(device)
    out: list[Any] = []
    for q in ray.get(list(queries)):
        try:
            out.append(ref.score(q, **score_params))
        except StatisticError as exc:
            out.append(("undefined", str(exc)))
    return out


def _records_layer(ref: Any, device: str | None, queries: np.ndarray) -> np.ndarray:
    """Ray task: one layer's per-image records of a run of query images."""
    if device:
        ref = ref.to(device)
    return ref.records(queries)


# -- the engine ----------------------------------------------------------------------------------
class RayEngine(Engine):
    """An :class:`~forensics.engine.Engine` whose embedding, fitting and scoring run on Ray (see the
    module docstring). ``address``: the cluster (None: a local Ray instance); ``actors``: encoder actors
    (default: one per GPU with ``device="cuda"``, else the cluster's CPUs over ``threads``); ``threads``:
    torch threads per CPU actor (default: the driver's, which keeps values bit-identical to the local
    engine's); ``shard_rows``: images per shard (default: a multiple of the batch size near
    :data:`PIXEL_BYTES` of pixels, and at least two shards per actor). The other options are
    :class:`Engine`'s; ``workers`` is not used (Ray Data tasks preprocess; a folder's files are decoded before,
    by the caller, in its own worker processes)."""

    def __init__(self, protocol: Any, *, address: str | None = None, actors: int | None = None,
                 threads: int | None = None, shard_rows: int | None = None, device: str = "cpu", **options: Any):
        import torch

        from forensics.distributed import connect, starts_local

        if device != "cpu" and not str(device).startswith("cuda"):
            raise UsageError(f"--engine ray runs on cpu or cuda (one GPU per actor), not {device!r}")
        if actors is not None and actors < 1:
            raise UsageError(f"actors must be at least 1, not {actors}")
        if str(device).startswith("cuda") and starts_local(address) and not torch.cuda.is_available():
            # said before seconds of starting Ray, only to find the cluster it started has no GPU
            raise UsageError("--device cuda with --engine ray starts a local Ray instance, and this machine has no "
                             "CUDA GPU: give --ray-address of a cluster with GPUs, or --device cpu")
        # the driver builds and checks the encoder on its CPU; the actors move it to their GPU
        super().__init__(protocol, device="cpu", **options)
        local = starts_local(address)
        self.ray = connect(address)
        # as given; a connection made before (by the caller) by the cluster's own address
        self.address = address or os.environ.get("RAY_ADDRESS") or (
            "local" if local else str(self.ray.get_runtime_context().gcs_address))
        self.ray_device = "cuda" if str(device).startswith("cuda") else "cpu"
        resources = self.ray.cluster_resources()
        if self.ray_device == "cuda" and resources.get("GPU", 0) < 1:
            raise UsageError("--device cuda with --engine ray needs GPUs in the Ray cluster; it has none")
        self.threads = int(threads) if threads else torch.get_num_threads()
        widest = max((node.get("Resources", {}).get("CPU", 0) for node in self.ray.nodes() if node.get("Alive")),
                     default=0)
        if self.ray_device == "cpu" and widest < self.threads:
            # an actor asking for more CPUs than any node has is never placed: the pipeline waited for ever
            raise UsageError(f"each Ray encoder actor runs torch at {self.threads} threads (the driver's count, which "
                             f"keeps the values bit-identical) and so needs {self.threads} CPUs of one node, but the "
                             f"Ray cluster's largest node has {widest:g}: give --threads {max(1, int(widest))} or "
                             "fewer (or FORENSICS_THREADS)")
        if actors is None:
            actors = int(resources.get("GPU", 0)) if self.ray_device == "cuda" else \
                int(resources.get("CPU", 1)) // self.threads
        self.actors = max(1, int(actors))
        self.shard_rows = shard_rows
        self.local = sum(1 for node in self.ray.nodes() if node.get("Alive")) <= 1  # one machine
        self._remote_refs: list[Any] | None = None
        self._encoder_ref: Any = None

    @property
    def cluster(self) -> dict[str, Any]:
        """What a report records of the cluster (``compute.ray``): its address as given (``local``: a Ray instance
        this run started; joined through a connection the caller made, the cluster's GCS address), Ray's version, the
        nodes alive, and the encoder actors and each one's torch threads."""
        return {"address": self.address, "version": str(self.ray.__version__),
                "nodes": sum(1 for node in self.ray.nodes() if node.get("Alive")), "actors": self.actors,
                "threads": self.threads}

    def _statistic_device(self) -> str | None:
        return self.ray_device if self.ray_device != "cpu" and self.statistic.devices else None

    # -- embedding --------------------------------------------------------------------------------
    def _shards(self, n: int, encoder: Any) -> list[tuple[int, int]]:
        bs = self.batch_size
        if self.shard_rows:
            rows = max(1, math.ceil(int(self.shard_rows) / bs)) * bs
        else:
            size = encoder.preprocessing.size
            per_batch = bs * 3 * size * size * 4
            rows = max(1, PIXEL_BYTES // per_batch) * bs
            spread = math.ceil(math.ceil(n / (2 * self.actors)) / bs) * bs  # at least two shards an actor
            rows = max(bs, min(rows, spread))
        return [(s, min(n, s + rows)) for s in range(0, n, rows)]

    def _run(self, jobs: Sequence[tuple[Any, Sequence[str], str, Sequence[str] | None]],
             root: str | None) -> list[list[dict[str, Any]]]:
        """One pipeline over every job ``(images, layer names, what, cache keys or None)``: per job, the
        rows the actors return, in order. With ``root`` the actors write the layers' shards to the
        embedding cache there under the keys; else the rows carry the embeddings ``f0``, ``f1``, …"""
        ray = self.ray
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        encoder = self.encoder()
        if self._encoder_ref is None:
            self._encoder_ref = ray.put(encoder)
        items, sources = [], []
        for j, (images, _, _, _) in enumerate(jobs):
            array = isinstance(images, np.ndarray)
            sources.append(("ref", ray.put(images)) if array else ("files", None))
            # a list of files travels with its shards, each shard's names in its row
            items += [{"job": j, "start": a, "stop": b, "paths": [] if array else [str(p) for p in images[a:b]]}
                      for a, b in self._shards(len(images), encoder)]
        gpu = self.ray_device == "cuda"
        # an actor's forensics error (an encoder plugin breaking its contract, an image that does not decode)
        # comes back as itself, not as Ray Data's UserCodeException, which keeps only its text
        ray.data.DataContext.get_current().raise_original_map_exception = True
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # reading: real CPUs beside GPU actors; beside CPU actors, the cores those hold (a task asking for
        # a CPU would wait for ever behind actors that hold them all)
        ds = ds.map_batches(_read_shard, batch_size=1, batch_format="numpy", zero_copy_batch=True,
                            fn_kwargs={"sources": sources, "prep": encoder.preprocessing,
                                       "batch_size": self.batch_size},
                            num_cpus=1 if gpu else 0,
                            compute=TaskPoolStrategy(size=len(items) if gpu else min(self.actors, len(items))))
        encode = dict(batch_size=1, batch_format="numpy", zero_copy_batch=True,
                      fn_constructor_kwargs={"encoder": [self._encoder_ref], "layers": [list(job[1]) for job in jobs],
                                             "batch_size": self.batch_size, "amp": self.amp,
                                             "device": self.ray_device, "threads": None if gpu else self.threads,
                                             "store": root, "keys": [list(job[3] or ()) for job in jobs] if root
                                             else None},
                      compute=ActorPoolStrategy(size=min(self.actors, len(items))),
                      num_cpus=1 if gpu else self.threads, num_gpus=1 if gpu else 0)
        ds = _map_actors(ds, encode, restart=not self.local)
        rows: list[list[dict[str, Any]]] = [[] for _ in jobs]
        try:
            with _unlogged_forensics_errors():
                for row in ds.iter_rows():
                    j = int(row["job"])
                    rows[j].append(row)
                    if self.progress is not None:
                        self.progress(jobs[j][2], int(row["stop"]), len(jobs[j][0]))
        except Exception as exc:  # an image that does not decode, an encoder plugin that breaks its contract:
            cause = _forensics_cause(exc)  # their one line, not Ray's wrapper
            if cause is not None:
                raise cause from None
            raise
        return rows

    def embed(self, images: Any, what: str = "images", *, cache: bool = False,
              images_hash: str | None = None) -> list[np.ndarray]:
        """The local engine's :meth:`Engine.embed`, computed by the Ray pipeline: one float32 array per
        protocol layer; ``cache`` reads and writes the embedding cache (the missing layers only)."""
        (sources,) = self._embed([(images, what, images_hash)], cache=cache)
        return [_layer_embeddings(s) for s in sources]

    def _embed(self, sets: Sequence[tuple[Any, str, str | None]], *, cache: bool) -> list[list[tuple]]:
        """Embed image sets ``(images, what, content hash or None)`` at the protocol's layers, in one
        pipeline. Per set and layer, where the embeddings are: ``("cache", (root, key, rows))`` for an
        entry of the embedding cache (not read here), else ``("array", array)``."""
        from forensics.encode.cache import EmbeddingCache, Shard, embedding_key, encoder_record
        from forensics.io.images import check_image_input, images_digest

        encoder = self.encoder()
        names = encoder.check_layers(self.protocol.layers)
        dims = encoder.layer_dims(names)
        for images, _, _ in sets:
            check_image_input(images)
        cached = cache and self.use_cache
        store = EmbeddingCache() if cached else None
        root = str(store.root) if store is not None else None
        out: list[list[tuple]] = []
        jobs, todo_of = [], []
        for images, what, digest in sets:
            n = len(images)
            if n == 0:
                out.append([("array", np.empty((0, dims[name]), np.float32)) for name in names])
                continue
            if store is None:
                out.append([])
                jobs.append((images, names, what, None))
                todo_of.append((len(out) - 1, names, None, None))
                continue
            digest = digest or images_digest(images)
            record = encoder_record(encoder)
            keys = {name: embedding_key(images=digest, encoder=record, layer=name, amp=self.amp) for name in names}
            out.append([("cache", (root, keys[name], n)) for name in names])
            todo = [name for name in names if store.index(keys[name], rows=n) is None]
            if todo:
                jobs.append((images, todo, what, [keys[name] for name in todo]))
                todo_of.append((len(out) - 1, todo, keys, digest))
            elif self.progress is not None:
                self.progress(what, n, n)
        if not jobs:
            return out
        rows = self._run(jobs, root)
        for (images, _, _, _), (i, todo, keys, digest), got in zip(jobs, todo_of, rows):
            if store is None:
                out[i] = [("array", np.concatenate([np.asarray(r[f"f{k}"]) for r in got])) for k in range(len(todo))]
                continue
            written: dict[str, list[Shard]] = {name: [] for name in todo}
            for row in got:
                for name, shard in zip(todo, json.loads(str(row["shards"]))):
                    written[name].append(Shard(**shard))
            for name in todo:
                folder = store.path(keys[name])
                missing = [s.file for s in written[name] if not (folder / s.file).is_file()]
                if missing:
                    raise UsageError(f"the Ray workers wrote embedding shards this machine cannot see (e.g. "
                                     f"{folder / missing[0]}); put FORENSICS_CACHE_DIR on a file system every "
                                     "node shares")
                store.write_index(keys[name], written[name], rows=len(images), dim=dims[name],
                                  what={"images": digest, "encoder": encoder.name, "layer": name, "amp": self.amp})
        return out

    # -- the reference side -----------------------------------------------------------------------
    def _fit_reference(self, layers: Sequence[str], device: str | None) -> list[Any]:
        """Embed T and P_n on the cluster in one pipeline (through the embedding cache) and fit each layer
        in a Ray task that reads its shards there."""
        ray = self.ray
        (train, t_hash), (test, p_hash) = self.reference_sets()
        t_src, p_src = self._embed([(train, "training set T", t_hash), (test, "held-out set P_n", p_hash)], cache=True)
        device = self._statistic_device()
        fit = ray.remote(num_gpus=1 if device else 0)(_fit_layer)
        statistic = ray.put(self.statistic)

        def arg(src: tuple) -> tuple:  # an array goes through the object store once
            return (src[0], ray.put(src[1])) if src[0] == "array" else src

        futures = [fit.remote(statistic, self.fit_params, device, arg(t), arg(p)) for t, p in zip(t_src, p_src)]
        refs = []
        for i, future in enumerate(futures):
            refs.append(_get(ray, future))
            if self.progress is not None:
                self.progress(f"fitting {self.protocol.statistic.name}", i + 1, len(layers))
        return refs

    def _forget_reference(self) -> None:
        super()._forget_reference()
        self._remote_refs = None  # the reference side in the object store: the copied engine's

    # -- curves -----------------------------------------------------------------------------------
    def _reference_objects(self) -> list[Any]:
        if self._remote_refs is None:
            self._remote_refs = [self.ray.put(ref) for ref in self.reference_side()]
        return self._remote_refs

    def _run_length(self, n: int, layers: int) -> int:
        """How many consecutive items (batches, or images) one task of one layer takes: about two tasks per
        CPU of the cluster over all ``layers``, none empty."""
        cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        return max(1, math.ceil(n / max(1, math.ceil(2 * cpus / max(1, layers)))))

    def _score(self, batches: list[list[np.ndarray]]) -> list[list[Any]]:
        """Per batch, per layer: the statistic's score (or a StatisticError), from tasks of one layer and a
        group of consecutive batches each."""
        ray = self.ray
        refs = self._reference_objects()
        n_layers = len(refs)
        size = self._run_length(len(batches), n_layers)
        device = self._statistic_device()
        score = ray.remote(num_gpus=1 if device else 0)(_score_layer)
        futures = {}
        for layer in range(n_layers):
            for g in range(0, len(batches), size):
                queries = [ray.put(np.ascontiguousarray(b[layer])) for b in batches[g:g + size]]
                futures[layer, g] = score.remote(refs[layer], self.score_params, device, queries)
        results: list[list[Any]] = [[None] * n_layers for _ in batches]
        for (layer, g), future in futures.items():
            for i, r in enumerate(_get(ray, future)):
                results[g + i][layer] = StatisticError(r[1]) if isinstance(r, tuple) else r
        return results

    def _records_of(self, embeddings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer, the images' per-image records, from tasks of one layer and a run of consecutive images
        each (as :meth:`_score` groups batches), joined in order."""
        ray = self.ray
        refs = self._reference_objects()
        n = len(embeddings[0]) if len(embeddings) else 0
        size = self._run_length(n, len(refs))
        device = self._statistic_device()
        task = ray.remote(num_gpus=1 if device else 0)(_records_layer)
        futures = [[task.remote(ref, device, ray.put(np.ascontiguousarray(e[s:s + size]))) for s in range(0, n, size)]
                   for ref, e in zip(refs, embeddings)]
        return [np.concatenate([_get(ray, f) for f in layer]) for layer in futures]


def _map_actors(ds: Any, options: dict[str, Any], *, restart: bool) -> Any:
    """``ds.map_batches(_EncoderActor, **options)``. On a cluster, Ray Data restarts an actor whose node is
    lost (and Ray's core then logs, at error level, that a restart needs the constructor's arguments); on
    a cluster of one machine there is no other node to restart onto, so restarts are off and the log is
    not written.
    (Ray 2.60 takes ``max_restarts`` only through its deprecated ``ray_remote_args``; without them, the
    default.)"""
    if not restart:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return ds.map_batches(_EncoderActor, **options, max_restarts=0)
        except TypeError:  # a Ray without ray_remote_args
            pass
    return ds.map_batches(_EncoderActor, **options)


def _forensics_cause(exc: BaseException) -> Any:
    """The forensics error a Ray failure wraps (a task's ``RayTaskError``, or Ray Data's ``UserCodeException``
    around an actor's error, in either's ``cause`` or exception chain), or None."""
    from forensics.errors import ForensicsError

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # a RayTaskError: the error raised in the task (first, as it is
        if isinstance(e, ForensicsError) and not isinstance(cause, BaseException):  # one too, its text Ray's)
            return e
        todo += [e.__context__, e.__cause__, cause]
    return None


@contextlib.contextmanager
def _unlogged_forensics_errors() -> Iterator[None]:
    """Ray Data logs a task's error on stderr (its traceback, and that it may be a Ray bug) before raising it;
    a forensics error (one line that says what to do, printed by the command) is not logged (under
    ``FORENSICS_DEBUG`` it is)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:  # (a record logged while the error is handled: that error)
        import sys

        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return exc is None or _forensics_cause(exc) is None

    if os.environ.get("FORENSICS_DEBUG", "") not in ("", "0"):
        yield
        return
    handlers = logging.getLogger("ray.data").handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def _get(ray: Any, future: Any) -> Any:
    """A task's result; a forensics error raised in it comes back as itself (one line), not wrapped."""
    try:
        return ray.get(future)
    except ray.exceptions.RayTaskError as exc:
        cause = _forensics_cause(exc)
        if cause is not None:
            raise cause from None
        raise
