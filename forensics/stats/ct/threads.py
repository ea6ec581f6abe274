"""Thread control for C_T: one-thread sections and a pool of single-threaded workers.

Small products, reductions and the d × d eigenproblem lose far more to waking and synchronising
threads than they gain, dramatically so on a busy machine, where a threaded BLAS waits on descheduled
threads. So the statistic splits its work into independent jobs (row groups of the covariance, row
blocks of the projection, k-means restarts, cells of the search), runs each on one thread, and spreads
the jobs over torch's configured number of threads (:func:`parallel`). Every job computes the same
thing on any thread, so results never depend on the thread count.

"One thread" (:func:`one_thread`) is set for the calling thread only: OpenMP's thread count is a
per-thread setting, and MKL and OpenBLAS have per-thread overrides (mkl_set_num_threads_local,
openblas_set_num_threads_local), so the rest of the process keeps its settings. Where the libraries do
not expose them, a process-wide switch is used, reference-counted under a lock so that concurrent users
restore the original setting exactly once.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable


def optional_torch():
    """The torch module, or None where it cannot be imported (numpy then does the work)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch


_LOCK = threading.Lock()
_NATIVE: list | None = None   # per-thread setters found, resolved once
_SHARED = {"depth": 0, "torch": 0, "limits": None}
_LOCAL = threading.local()    # per thread: depth of one_thread, torch's thread count outside it, worker flag


def per_thread_setters() -> list:
    """Per-thread thread-count setters of the libraries doing the work: torch's OpenMP runtime and
    MKL, numpy's OpenBLAS. Each entry is ``set(n) -> restore callable``. Empty when not all are found."""
    global _NATIVE
    if _NATIVE is not None:
        return _NATIVE
    with _LOCK:
        if _NATIVE is not None:
            return _NATIVE
        found: list = []
        try:
            found = _find_setters()
        except (OSError, AttributeError, ImportError, ValueError):  # pragma: no cover - other builds
            found = []
        _NATIVE = found
    return _NATIVE


def _find_setters() -> list:
    torch = optional_torch()
    names = {"linux": "libtorch_cpu.so", "darwin": "libtorch_cpu.dylib"}
    if torch is None or sys.platform not in names:  # pragma: no cover
        return []
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", names[sys.platform]))
    # symbols are looked up in libtorch_cpu and its dependencies: the OpenMP runtime torch really uses
    omp_get, omp_set = lib.omp_get_max_threads, lib.omp_set_num_threads
    omp_get.restype, omp_get.argtypes, omp_set.argtypes = ctypes.c_int, [], [ctypes.c_int]

    def openmp(n):
        torch.get_num_threads()  # torch sets a new thread's OpenMP count on first use: let it do so first
        before = omp_get()
        omp_set(n)
        return lambda: omp_set(before)

    setters = [openmp]
    if hasattr(lib, "MKL_Set_Num_Threads_Local"):
        mkl = lib.MKL_Set_Num_Threads_Local
        mkl.restype, mkl.argtypes = ctypes.c_int, [ctypes.c_int]

        def mkl_local(n):
            before = mkl(n)
            return lambda: mkl(before)

        setters.append(mkl_local)
    elif torch.backends.mkl.is_available():  # pragma: no cover - MKL without its per-thread setter
        return []
    blas = _openblas_local()
    if blas is None:  # pragma: no cover - numpy on another BLAS: no per-thread control known
        return []
    setters.append(blas)
    return setters


def _openblas_local():
    """numpy's OpenBLAS per-thread setter (OpenBLAS ≥ 0.3.27), or None."""
    from threadpoolctl import ThreadpoolController

    for controller in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if "numpy" not in controller.filepath:
            continue
        dynlib = controller.dynlib
        for name in ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local64_",
                     "scipy_openblas_set_num_threads_local"):
            if hasattr(dynlib, name):
                fn = getattr(dynlib, name)
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]

                def blas_local(n, fn=fn):
                    before = fn(n)
                    return lambda: fn(before)

                return blas_local
    return None


@contextmanager
def one_thread():
    """Torch (OpenMP, MKL) and numpy's BLAS on one thread inside the block, for the calling thread."""
    depth = getattr(_LOCAL, "depth", 0)
    if depth == 0:
        _LOCAL.threads = configured_threads()
    _LOCAL.depth = depth + 1
    try:
        setters = per_thread_setters()
        if setters:
            undo = [s(1) for s in setters]
            try:
                yield
            finally:
                for u in reversed(undo):
                    u()
        else:  # pragma: no cover - builds without per-thread setters
            with _process_wide_one_thread():
                yield
    finally:
        _LOCAL.depth = depth


def configured_threads() -> int:
    """Torch's thread count for the calling thread as configured (outside any :func:`one_thread`)."""
    if getattr(_LOCAL, "depth", 0):
        return _LOCAL.threads
    torch = optional_torch()
    return torch.get_num_threads() if torch is not None else 1


@contextmanager
def _process_wide_one_thread():
    torch = optional_torch()
    with _LOCK:
        if _SHARED["depth"] == 0:
            _SHARED["torch"] = torch.get_num_threads() if torch is not None else 0
            if torch is not None:
                torch.set_num_threads(1)
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                _SHARED["limits"] = None
            else:
                _SHARED["limits"] = threadpool_limits(1, user_api="blas")
        _SHARED["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _SHARED["depth"] -= 1
            if _SHARED["depth"] == 0:
                if _SHARED["limits"] is not None:
                    _SHARED["limits"].restore_original_limits()
                if torch is not None:
                    torch.set_num_threads(_SHARED["torch"])


def workers(items: int) -> int:
    """Worker threads for ``items`` independent single-threaded jobs: torch's configured thread count at
    most; one inside a worker (no nested pools) or where the one-thread switch is process-wide."""
    if getattr(_LOCAL, "worker", False) or not per_thread_setters():
        return 1
    return max(1, min(items, configured_threads()))


def parallel(fn: Callable[[Any], Any], jobs: list, costs: list | None = None) -> list:
    """``[fn(job) for job in jobs]``, each call on one thread, the calls spread over :func:`workers`
    threads (the costliest first): the calling thread and helpers from a pool kept for the process
    (starting threads costs milliseconds on a busy machine). Independent single-threaded jobs need no
    synchronisation, so they keep their speed on a busy machine, where a threaded BLAS waits on
    descheduled threads; and each job computes the same thing whichever thread runs it, so results never
    depend on the thread count. Calls from inside a job run serially (no nested pools)."""
    count = workers(len(jobs))
    outer = getattr(_LOCAL, "worker", False)
    _LOCAL.worker = True
    try:
        if count <= 1:
            out = []
            for job in jobs:
                with one_thread():
                    out.append(fn(job))
            return out
        order = iter(sorted(range(len(jobs)), key=lambda i: -(costs[i] if costs is not None else 0)))
        results: list = [None] * len(jobs)
        errors: list = []
        lock, finished, running = threading.Lock(), threading.Event(), [0]

        def runner() -> None:
            with one_thread():
                while True:
                    with lock:
                        i = None if errors else next(order, None)
                        if i is None:  # nothing left to start: the last one to stop says so
                            if running[0] == 0:
                                finished.set()
                            return
                        running[0] += 1
                    try:
                        results[i] = fn(jobs[i])
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                        with lock:
                            errors.append(exc)
                    finally:
                        with lock:
                            running[0] -= 1

        pool = _pool(count - 1)
        for _ in range(count - 1):
            pool.submit(runner)
        try:
            runner()  # the calling thread works too; a helper that starts late finds nothing left to do
            finished.wait()
        except BaseException as exc:  # e.g. KeyboardInterrupt: the helpers start nothing more
            with lock:
                errors.append(exc)
            raise
        if errors:
            raise errors[0]
        return results
    finally:
        _LOCAL.worker = outer


_POOL: dict = {"pool": None, "size": 0, "pid": 0}


def _pool(size: int):
    """The process's helper threads (at least ``size``), made again after a fork or when too small."""
    from concurrent.futures import ThreadPoolExecutor

    with _LOCK:
        if _POOL["pool"] is None or _POOL["pid"] != os.getpid() or _POOL["size"] < size:
            if _POOL["pool"] is not None and _POOL["pid"] == os.getpid():
                _POOL["pool"].shutdown(wait=False)
            _POOL.update(pool=ThreadPoolExecutor(size, thread_name_prefix="forensics-ct", initializer=_mark_worker),
                         size=size, pid=os.getpid())
        return _POOL["pool"]


def _mark_worker() -> None:
    _LOCAL.worker = True

