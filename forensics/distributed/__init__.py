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
import sys
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


#: HTTP/2's client connection preface and an empty SETTINGS frame: what a gRPC client sends first
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _reachable(address: str | None, timeout: float = 5.0, *, given: str = "--ray-address") -> None:
    """Refuse a cluster address where no Ray answers, in seconds: Ray itself would retry for minutes, logging
    as it goes. The host must accept a connection on the port and speak gRPC there (HTTP/2: its server's
    first frame is a SETTINGS frame), as a Ray head's GCS (HOST:6379) and Ray Client (ray://HOST:10001) do;
    a web server (the dashboard's 8265), a proxy or another service does not. ``given``: where the address
    came from (``--ray-address``, or Ray's own ``RAY_ADDRESS``), as the messages name it."""
    import socket

    if address is None or address in ("auto", "local"):
        return
    fix = "check --ray-address, or drop it to start a local Ray instance" if given == "--ray-address" else \
        f"check {given}, or unset it to start a local Ray instance"
    if "://" in address and not address.startswith("ray://"):
        raise UsageError(f"{given} takes auto, HOST:PORT or ray://HOST:PORT, not {address!r} (the dashboard's "
                         "http:// address is not where Ray is reached)")
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{given} takes auto, HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            first = b""
            while len(first) < 9:
                got = conn.recv(9 - len(first))
                if not got:
                    break
                first += got
    except OSError as exc:
        if isinstance(exc, (socket.timeout, TimeoutError)) and "first" in locals():
            first = b""  # connected, but nothing came back
        else:
            raise UsageError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); {fix}") from None
    if len(first) < 9 or first[3] != 4:
        raise UsageError(f"something answers at {address}, but not Ray (no gRPC there): check the port of {given} — "
                         "a Ray head is reached at HOST:6379 or ray://HOST:10001 (8265 is its dashboard)")


def starts_local(address: str | None) -> bool:
    """Whether :func:`connect` with ``address`` starts a new local Ray instance on this machine (no address, no
    ``RAY_ADDRESS``, and no connection made before), rather than reaching a cluster."""
    if address or os.environ.get("RAY_ADDRESS"):
        return False
    ray = sys.modules.get("ray")
    return ray is None or not ray.is_initialized()


def connect(address: str | None = None) -> Any:
    """Ray, connected: to the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``),
    or to a new local one when None. A connection made before (by the caller, or a test's ``ray.init``)
    is reused. Ray's own logging is kept to errors unless ``FORENSICS_DEBUG`` is set."""
    ray = require_ray()
    debug = os.environ.get("FORENSICS_DEBUG", "") not in ("", "0")
    level = logging.INFO if debug else logging.ERROR
    if not ray.is_initialized():
        if address:
            _reachable(address)
        else:  # Ray's own RAY_ADDRESS: a cluster that does not answer there had Ray retry for minutes, logging
            _reachable(os.environ.get("RAY_ADDRESS") or None, given="RAY_ADDRESS")
        try:
            # no address (nor Ray's own RAY_ADDRESS): a new local instance, as the help says — never a cluster
            # that `ray start` left running here, which Ray would join (it may span machines without the cache)
            ray.init(address=address or (None if os.environ.get("RAY_ADDRESS") else "local"), include_dashboard=False,
                     log_to_driver=debug, logging_level=level, runtime_env={"env_vars": _worker_env()})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            env = None if address else os.environ.get("RAY_ADDRESS")
            where = f"the Ray cluster at {address or env}" if address or env else "a local Ray instance"
            fix = "check --ray-address (or drop it for a local instance)" if not env else \
                "check Ray's RAY_ADDRESS in the environment (or unset it for a local instance)"
            raise UsageError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                             f"{fix}") from None
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
