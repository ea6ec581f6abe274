"""A local stand-in for the Hugging Face Hub and a plain file server, for tests that must never touch the
network: ``HF_ENDPOINT`` points at it, and a data set's download URL can be patched to it.

It answers what ``huggingface_hub.hf_hub_download`` asks: ``HEAD`` and ``GET`` of
``/{repo_id}/resolve/{revision}/{filename}``, with the headers the hub sends (``X-Repo-Commit``, ``ETag``,
and for LFS files ``X-Linked-Etag`` / ``X-Linked-Size``, the file's sha256 and size); a missing file is a 404
with ``X-Error-Code: EntryNotFound``, a missing repo ``RepoNotFound``. Plain files (``add_file``) are
served at their path. Every request is logged in :attr:`FakeHub.requests`, so a test can check that a
second run asked for nothing.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    """A Hugging Face Hub and file server on 127.0.0.1, started with ``with FakeHub() as hub:``."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.lying: dict[tuple[str, str], str] = {}  # (repo, file) -> the sha256 announced instead of the true one
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    # -- content ---------------------------------------------------------------------------------
    def add_model_file(self, repo_id: str, filename: str, data: bytes, *, announce_sha256: str | None = None) -> None:
        """Serve ``data`` as ``filename`` of model repo ``repo_id`` (an LFS file: its sha256 is its ETag);
        ``announce_sha256`` makes the hub announce another digest than the bytes it sends."""
        self.repos.setdefault(repo_id, {})[filename] = data
        if announce_sha256 is not None:
            self.lying[(repo_id, filename)] = announce_sha256

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (e.g. ``/cifar-10-python.tar.gz``); returns its URL."""
        self.files["/" + path.lstrip("/")] = data
        return self.url + "/" + path.lstrip("/")

    @property
    def url(self) -> str:
        assert self._server is not None, "start the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- serving ---------------------------------------------------------------------------------
    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((handler.command, path))
        if path in self.files:
            return self._send(handler, 200, self.files[path], {}, body)
        if "/resolve/" not in path:
            return self._send(handler, 404, b"not found", {}, body)
        repo_id, rest = path.lstrip("/").split("/resolve/", 1)
        revision, _, filename = rest.partition("/")
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        if repo_id not in self.repos:
            return self._send(handler, 404, b"repo not found", {"X-Error-Code": "RepoNotFound"}, body)
        files = self.repos[repo_id]
        if revision not in ("main", commit) or filename not in files:
            return self._send(handler, 404, b"entry not found",
                              {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, body)
        data = files[filename]
        sha = self.lying.get((repo_id, filename), hashlib.sha256(data).hexdigest())
        headers = {"X-Repo-Commit": commit, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                   "X-Linked-Size": str(len(data))}
        return self._send(handler, 200, data, headers, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        start = 0
        if body and status == 200 and handler.headers.get("Range", "").startswith("bytes="):
            start = int(handler.headers["Range"][6:].split("-")[0] or 0)
            status = 206 if start else 200
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        if body:
            handler.wfile.write(data[start:])


def cifar10_archive(train, test) -> tuple[bytes, dict[str, str]]:
    """A CIFAR-10 Python-release archive (``cifar-10-python.tar.gz`` layout) of uint8 images (N, 32, 32, 3):
    ``train`` split over ``data_batch_1`` … ``data_batch_5``, ``test`` as ``test_batch``. Returns the archive
    and the md5 of each file in it (``"archive"``: of the archive), what torchvision's CIFAR10 records."""
    import io
    import pickle
    import tarfile

    import numpy as np

    def batch(images) -> bytes:
        data = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1))
        return pickle.dumps({b"batch_label": b"tiny", b"labels": [0] * len(images), b"data": data,
                             b"filenames": [b"x.png"] * len(images)}, protocol=4)

    files = {f"data_batch_{i + 1}": batch(part) for i, part in enumerate(np.array_split(np.asarray(train), 5))}
    files["test_batch"] = batch(test)
    files["batches.meta"] = pickle.dumps({b"label_names": [b"x"] * 10}, protocol=4)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    md5["archive"] = hashlib.md5(archive).hexdigest()
    return archive, md5
