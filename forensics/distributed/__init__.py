"""Beyond one machine: the Ray engine, and nearest-neighbour search in shards.

:class:`RayEngine` computes what :class:`forensics.engine.Engine` computes — embeddings, the reference
side, curves — on a Ray cluster (a local one when no address is given): images are read and
preprocessed by Ray Data tasks, the encoder runs in an actor pool (one actor per GPU, or CPU workers),
each actor writes the per-layer embeddings of its images as shards of the embedding cache
(:mod:`forensics.encode.cache`, the format the local engine reads and writes), the statistic is fitted
per layer as Ray tasks that read those shards, and query batches are scored as tasks. The values are the
local engine's, to the last bit (the same batches, the same functions, the same thread count).

Ray is an optional extra (``pip install 'forensics-attribution[ray]'``); nothing here imports it until a Ray engine
is built. :mod:`forensics.distributed.search` is exact nearest-neighbour search over training points
cut into shards (in memory, on disk, or spread over Ray tasks), with FAISS as an approximate option.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from forensics.errors import UsageError

__all__ = ["RayEngine", "connect", "require_ray"]

INSTALL_HINT = "pip install 'forensics-attribution[ray]'"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line :class:`~forensics.extras.MissingExtra` (a failed run,
    exit 1, as every missing extra) naming the extra to install."""
    from forensics.extras import MissingExtra

    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(f"--engine ray needs Ray with Ray Data ({exc.name or 'ray'} is not installed): "
                         f"{INSTALL_HINT}, or use the local engine") from None
    return ray


def _worker_env() -> dict[str, str]:
    """The environment the cluster's workers need to act as this process does: the forensics settings and
    the offline switches (a local cluster inherits them; a remote one gets them through the job)."""
    keep = ("FORENSICS_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TIMM_", "TORCH_HOME", "HF_HOME")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a cluster address whose host does not answer: Ray itself would retry for minutes."""
    import socket

    if address is None or address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--ray-address takes auto, HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); check --ray-address, "
                         "or drop it to start a local Ray instance") from None


def connect(address: str | None = None) -> Any:
    """Ray, connected: to the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``),
    or to a new local one when None. A connection made before (by the caller, or a test's ``ray.init``)
    is reused. Ray's own logging is kept to errors unless ``FORENSICS_DEBUG`` is set."""
    ray = require_ray()
    debug = os.environ.get("FORENSICS_DEBUG", "") not in ("", "0")
    level = logging.INFO if debug else logging.ERROR
    if not ray.is_initialized():
        _reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=debug, logging_level=level,
                     runtime_env={"env_vars": _worker_env()})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise UsageError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                             "check --ray-address (or drop it for a local instance)") from None
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = debug
    return ray


def __getattr__(name: str) -> Any:
    if name == "RayEngine":  # the engine module imports torch; keep `import forensics.distributed` light
        from forensics.distributed.ray_engine import RayEngine

        return RayEngine
    raise AttributeError(name)
