"""Fetching weights and public data sets on first use, as timm, open_clip and torchvision do, and never
when the user says offline.

Weights come from the Hugging Face Hub through ``huggingface_hub.hf_hub_download`` into the standard
Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), where timm
and open_clip keep theirs: a file fetched once is found there by every later run, offline. ``HF_ENDPOINT``
(a mirror) is honoured. A downloaded file is checked against the digest the hub published for it (the
sha256 of an LFS file, the git blob id of a small one) each time it is used: a file that does not match
is refused, and left where it is — nothing of the user's is deleted. A file of torch hub's checkpoint folder
is checked against the sha256 digits its name carries (torch hub's convention).

A download that fails is one line that names the HTTP status the server answered (or the cause: a dropped
connection, a server that never answers, a cache folder that cannot be written) and what to do;
huggingface_hub retries on its own, and of its log lines only the first is said, as one warning line.

Offline: the command line's ``--offline``, ``FORENSICS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``. Then nothing is
downloaded, and what is missing is a one-line error that names the file and how to get it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from forensics.errors import ForensicsError, WeightsError

_TRUE = ("1", "on", "yes", "true")
_FORCED: dict[str, bool] = {"offline": False}
_REPORT: dict[str, Callable[[str, int, int], None] | None] = {"to": None}
OFFLINE_HOW = "--offline, FORENSICS_OFFLINE=1 or HF_HUB_OFFLINE=1"


def report_to(progress: Callable[[str, int, int], None] | None) -> None:
    """Report downloads to ``progress(what, done, total)`` (the library's progress callback: bytes of a
    weights file; ``total == 0`` for a download of unknown length, begun, and ``done == total`` when it is
    over) instead of the libraries' own tqdm bars. The command line's progress display registers itself."""
    _REPORT["to"] = progress


def report(what: str, done: int, total: int) -> None:
    """Tell the registered progress callback, if any (see :func:`report_to`)."""
    if _REPORT["to"] is not None:
        _REPORT["to"](what, done, total)


def _reporting_tqdm(what: str):
    """A tqdm class for ``hf_hub_download`` that shows nothing itself and feeds :func:`report`; None when no
    callback is registered (huggingface_hub's own bars then show, as for timm)."""
    if _REPORT["to"] is None:
        return None
    from tqdm import tqdm

    class Reporting(tqdm):  # counts in MB: the display shows done/total
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done, self.size = int(kwargs.get("initial") or 0), int(kwargs.get("total") or 0)
            self.send()

        def send(self):
            total = -(-self.size // 1_000_000)  # MB, rounded up
            report(what, total if self.done >= self.size else self.done // 1_000_000, total)

        def update(self, n=1):
            self.done += int(n or 0)
            self.send()

        def close(self):
            if not self.size:  # of unknown length: over now
                report(what, 1, 1)
            super().close()

    return Reporting


def set_offline(flag: bool) -> None:
    """Forbid downloads for this process (the command line's ``--offline``; set on every invocation)."""
    _FORCED["offline"] = bool(flag)


def offline() -> bool:
    """Whether downloads are off: ``--offline`` (:func:`set_offline`), ``FORENSICS_OFFLINE`` or ``HF_HUB_OFFLINE``,
    read now (not when a library was imported)."""
    if _FORCED["offline"]:
        return True
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("FORENSICS_OFFLINE", "HF_HUB_OFFLINE"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub itself resolves it (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hf_endpoint() -> str | None:
    """``HF_ENDPOINT`` as it is now (a mirror, or a test's local hub); None for huggingface_hub's default."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why the host of ``url`` cannot be reached (its name does not resolve, a connection is refused or times
    out), or None when it can or a proxy stands between (then only the request itself can tell). A download
    that would only retry for half a minute, its library logging each try, is told at once instead."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as exc:
        return f"{parts.hostname}: {exc.strerror or type(exc).__name__}"
    return None


def split_revision(repo_id: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` (timm's form) → ``("org/name", "rev")``; no ``@`` → revision None."""
    repo, _, revision = repo_id.partition("@")
    return repo, revision or None


def hf_cached(repo_id: str, filenames: Iterable[str]) -> tuple[Path, str] | None:
    """``(path, filename)`` of the first of ``filenames`` of ``repo_id`` already in the Hugging Face cache, or
    None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    repo, revision = split_revision(repo_id)
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found), filename
    return None


def published_digest(path: Path) -> str | None:
    """The digest the hub published for a file of the Hugging Face cache: the name of the blob it points at
    (an LFS file's sha256, 64 hex digits, or a small file's git blob id, 40). None for a file that is not a
    cache blob (a snapshot copied by hand, ``HF_HUB_DISABLE_SYMLINKS``)."""
    name = Path(os.path.realpath(path)).name
    return name if re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{40}", name) else None


def check_published_digest(path: Path, what: str) -> None:
    """Refuse a cached hub file whose bytes are not the ones the hub published (a truncated, damaged or
    tampered download). Nothing is deleted: the error says where the file is and how to fetch it again."""
    expected = published_digest(path)
    if expected is None:
        return
    real = Path(os.path.realpath(path))
    if len(expected) == 64:
        h = hashlib.sha256()
    else:  # a git blob id: sha1 of "blob <size>\0" and the bytes
        h = hashlib.sha1()
        h.update(f"blob {real.stat().st_size}\0".encode())
    with open(real, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != expected:
        raise WeightsError(f"{what} at {path} is not the file the hub published (digest {expected[:12]}, the file's "
                           f"{h.hexdigest()[:12]}): it is refused and left in place; delete {real} and run again "
                           "to fetch it anew, or pass --weights PATH")


#: torch hub's name for a published checkpoint, ``name-<first hex digits of its sha256>.ext`` (torchvision's and
#: timm's releases use 8); fewer digits are not taken for a digest ("vit.g.16-600e.pth.tar")
_TORCH_HUB_DIGEST = re.compile(r"-([0-9a-f]{8,64})\.")


def check_torch_hub_digest(path: Path, what: str) -> None:
    """Refuse a file of torch hub's checkpoint folder whose sha256 does not begin with the digits its name
    carries (torch hub's own convention, which its ``check_hash`` checks): a truncated or damaged download.
    A name without such digits is not checked. Nothing is deleted: the error says where the file is."""
    found = _TORCH_HUB_DIGEST.search(path.name)
    if found is None:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if not h.hexdigest().startswith(found.group(1)):
        raise WeightsError(f"{what} at {path} is not the file published under that name (its sha256 begins "
                           f"{found.group(1)}, the file's {h.hexdigest()[:len(found.group(1))]}): it is refused and "
                           f"left in place; delete it and run again, or pass --weights PATH")


def _no_such_file(exc: Exception) -> bool:
    """Whether ``exc`` is huggingface_hub saying the repo has no such file (a 404 of the hub), not that the hub
    could not be reached (``LocalEntryNotFoundError``, an ``EntryNotFoundError`` too), whatever its version."""
    import huggingface_hub.errors as errors

    local = getattr(errors, "LocalEntryNotFoundError", None)
    remote = getattr(errors, "RemoteEntryNotFoundError", None) or getattr(errors, "EntryNotFoundError", None)
    return remote is not None and isinstance(exc, remote) and not (local is not None and isinstance(exc, local))


#: an OSError of these numbers under a failed download is the cache folder's (full, read-only, not a folder)
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                           errno.ENAMETOOLONG})


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc


def _failure(exc: BaseException) -> tuple[str, str]:
    """What went wrong under a failed ``hf_hub_download``, and what to do about it. huggingface_hub wraps a
    500, a refused request or a full disk in "cannot find the requested files in the local cache. Please
    check your connection": the HTTP status the server answered, else the innermost error, says what happened."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    answered = [e for e in chain if isinstance(getattr(getattr(e, "response", None), "status_code", None), int)]
    local = [e for e in chain if isinstance(e, OSError) and e.errno in _LOCAL_ERRNOS]
    said = answered[0] if answered else local[0] if local else chain[-1]
    reason = " ".join(str(said).split()) or type(said).__name__
    if len(reason) > 300:  # whole sentences, when there are some
        cut = reason[:300]
        reason = cut[:cut.rfind(". ") + 1] if ". " in cut else cut + "…"
    if not answered:
        timed_out = any(isinstance(e, TimeoutError) or type(e).__name__.endswith("Timeout") for e in chain)
        advice = (f"the Hugging Face cache {hf_cache_dir()} cannot be written: free space there, or point HF_HOME "
                  "(or HF_HUB_CACHE) at a folder that can" if local else
                  "the server took the connection but did not answer in time, on any try: check the connection "
                  "or the mirror (HF_ENDPOINT); HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT give it longer"
                  if timed_out else "check the connection (HF_ENDPOINT for a mirror)")
        return f"{type(said).__name__}: {reason}", advice
    status = said.response.status_code
    try:  # the hub sends a file's bytes from another server (its CDN): a refusal there is no matter of the repo's
        elsewhere = _host(str(said.response.request.url)) != _host(hf_endpoint() or "https://huggingface.co")
    except (AttributeError, RuntimeError):  # a response without its request
        elsewhere = False
    if elsewhere:
        return (f"HTTP {status} from {_host(str(said.response.request.url))}, where the hub sent the download: "
                f"{reason}"), "try again later"
    advice = ("the server failed: try again later" if status >= 500 else
              "the repo is private or gated, or not there: log in if you have access (`hf auth login`, or HF_TOKEN)"
              if status in (401, 403) else
              "the hub has no such repo or revision (HF_ENDPOINT for a mirror)" if status == 404 else
              "the hub limits how often it is asked: try again later (logged in, with HF_TOKEN, the limit is higher)"
              if status == 429 else
              "check the connection (HF_ENDPOINT for a mirror)")
    return f"HTTP {status}: {reason}", advice


log = logging.getLogger(__name__)
_QUIET = {"depth": 0, "handlers": []}
_QUIET_LOCK = threading.Lock()


class _FirstRetry(logging.Handler):
    """Says huggingface_hub's first notice of a download (a retry, a resumed transfer) once, as one line:
    against a server that does not answer, its retries take minutes, which should not pass unexplained."""

    def __init__(self, what: str):
        super().__init__(logging.WARNING)
        self.what, self.said = what, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.said:
            self.said = True
            first = " ".join(record.getMessage().splitlines()[0].split()) if record.getMessage() else "a retry"
            log.warning("%s: %s; trying again (for minutes, where the server does not answer)", self.what, first)


@contextlib.contextmanager
def _quiet_hub(what: str):
    """huggingface_hub's own log lines held back for the duration (each retry of a failed request is two lines
    on stderr), the first of them said once as one line of ours (:class:`_FirstRetry`): the error that ends
    the download says what happened, in one line. Downloads in several threads at once: the library's own
    handlers are put back when the last one ends."""
    hub = logging.getLogger("huggingface_hub")
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            _QUIET["handlers"] = list(hub.handlers)
            for handler in _QUIET["handlers"]:
                hub.removeHandler(handler)
        _QUIET["depth"] += 1
    first = _FirstRetry(what)
    hub.addHandler(first)
    try:
        yield
    finally:
        hub.removeHandler(first)
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                for handler in _QUIET["handlers"]:
                    hub.addHandler(handler)


def hf_download(repo_id: str, filenames: Iterable[str], *, what: str) -> tuple[Path, str]:
    """Fetch the first of ``filenames`` that ``repo_id`` has (``org/name`` or ``org/name@revision``) into the
    Hugging Face cache, as timm and open_clip do, and return ``(path, filename)``. A file already cached is
    not fetched again. Offline, or when the hub cannot be reached or has none of them: a
    :class:`WeightsError` that names the files and how to get them."""
    filenames = tuple(filenames)
    cached = hf_cached(repo_id, filenames)
    if cached is not None:
        check_published_digest(cached[0], f"{what} ({repo_id}/{cached[1]})")
        return cached
    if offline():
        raise WeightsError(f"{what}: {repo_id}/{filenames[0]} is not in the Hugging Face cache ({hf_cache_dir()}) and "
                           f"downloads are off ({OFFLINE_HOW}); run once online to fetch it, or "
                           f"`hf download {split_revision(repo_id)[0]} {filenames[0]}` on a machine that is, or pass "
                           "--weights PATH")
    from huggingface_hub import hf_hub_download

    from forensics import __version__

    endpoint = hf_endpoint() or "https://huggingface.co"
    why = unreachable(endpoint)
    if why is not None:
        raise WeightsError(f"{what}: cannot download {repo_id}/{filenames[0]}: {endpoint} cannot be reached ({why}); "
                           "check the connection (HF_ENDPOINT for a mirror), or pass --weights PATH")
    repo, revision = split_revision(repo_id)
    for filename in filenames:
        try:
            with _quiet_hub(f"downloading {repo}/{filename}"):
                path = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=str(hf_cache_dir()),
                                            endpoint=hf_endpoint(), library_name="forensics",
                                            library_version=__version__,
                                            tqdm_class=_reporting_tqdm(f"downloading {repo}/{filename} (MB)")))
        except Exception as exc:  # the hub unreachable, a repo not found, a refused request: one line
            if _no_such_file(exc):
                continue
            reason, advice = _failure(exc)
            raise WeightsError(f"{what}: cannot download {repo_id}/{filename} from {endpoint} ({reason}); {advice}, "
                               "or pass --weights PATH") from None
        check_published_digest(path, f"{what} ({repo_id}/{filename}, just downloaded)")
        return path, filename
    raise WeightsError(f"{what}: the Hugging Face repo {repo_id} has none of {', '.join(filenames)}; "
                       "pass --weights PATH")


def offline_error(what: str, how: str) -> ForensicsError:
    """The one-line error for something that would be downloaded, were downloads not off."""
    return ForensicsError(f"{what} is not on this machine and downloads are off ({OFFLINE_HOW}); {how}")
