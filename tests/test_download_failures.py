"""A download that fails, as a user meets it: the server drops the connection mid-file, answers 500 or 401,
or is not a hub at all (a proxy's HTML page with status 200). Each is one line that says what happened and
what to do, with none of huggingface_hub's own retry chatter, and leaves nothing in the cache that a later
run would trust; a later run against a working hub fetches the file whole.

Nothing touches the network: the hub is tests/fakehub.py on 127.0.0.1, the caches are temporary folders.
"""

from __future__ import annotations

import hashlib
import logging
import socket

import pytest

from fakehub import FakeHub

from forensics.errors import WeightsError

REPO = "org/tiny"
DATA = bytes(range(256)) * 4096  # 1 MiB, an LFS file of the hub


class FailingHub(FakeHub):
    """A hub that, while ``failure`` is set, drops each download after a third of the file (``"drop"``), answers
    every request with an HTTP status (``500``, ``401``) or with a proxy's HTML page and status 200
    (``"html"``), or sends the download to another host that refuses it (``"cdn403"``, an expired link)."""

    failure: str | int | None = None

    def _answer(self, handler, *, body):
        if self.failure == "cdn403":  # the hub sends the bytes from another host, which refuses them
            self.requests.append((handler.command, handler.path))
            if handler.path.startswith("/cdn/"):
                return self._send(handler, 403, b"Request has expired", {}, body)
            port = handler.headers["Host"].rsplit(":", 1)[1]
            sha = hashlib.sha256(DATA).hexdigest()
            handler.send_response(302)
            for key, value in {"Location": f"http://localhost:{port}/cdn{handler.path}", "X-Repo-Commit": "c" * 40,
                               "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(DATA)),
                               "Content-Length": "0"}.items():
                handler.send_header(key, value)
            handler.end_headers()
            return None
        if isinstance(self.failure, int):
            self.requests.append((handler.command, handler.path))
            return self._send(handler, self.failure, b"no", {}, body)
        if self.failure == "html":
            self.requests.append((handler.command, handler.path))
            return self._send(handler, 200, b"<html><body>Sign in to the proxy</body></html>",
                              {"Content-Type": "text/html"}, body)
        return super()._answer(handler, body=body)

    def _send(self, handler, status, data, headers, body):
        if self.failure == "drop" and body and status == 200 and len(data) == len(DATA):
            handler.send_response(200)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[:len(data) // 3])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        return FakeHub._send(handler, status, data, headers, body)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import time

    import huggingface_hub.constants as hf_constants

    from forensics.io import download

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for name in ("HF_HUB_OFFLINE", "FORENSICS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setitem(download._FORCED, "offline", False)
    monkeypatch.setitem(download._REPORT, "to", None)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub's back-off between its retries
    with FailingHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add_model_file(REPO, "model.safetensors", DATA)
        yield server


@pytest.fixture
def hub_log():
    """What huggingface_hub's own handler (on stderr: two lines a retry) is given to print, at WARNING or above."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("huggingface_hub")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def notices(caplog) -> list[str]:
    """What forensics said of the download while it went on (warning lines on the command line)."""
    return [r.getMessage() for r in caplog.records if r.name == "forensics.io.download"]


def fetch():
    from forensics.io.download import hf_download

    return hf_download(REPO, ["model.safetensors"], what="weights of tiny")


def cached_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts)


def test_a_download_dropped_mid_file_is_one_line_then_a_rerun_fetches_it_whole(hub, hub_log, caplog, tmp_path):
    from forensics.io.download import hf_cached

    hub.failure = "drop"
    with caplog.at_level(logging.WARNING):
        with pytest.raises(WeightsError) as info:
            fetch()
    message = str(info.value)
    assert "\n" not in message and "cannot download org/tiny/model.safetensors" in message
    assert "peer closed connection" in message and "check the connection" in message
    assert hub_log == []  # none of the library's "Trying to resume download..." lines, five times over
    (said,) = notices(caplog)  # the first retry, said once, in one line
    assert "\n" not in said and said.startswith("downloading org/tiny/model.safetensors: Error while downloading")
    assert "peer closed connection" in said and said.endswith("; trying again (for minutes, where the server does "
                                                             "not answer)")
    assert hf_cached(REPO, ["model.safetensors"]) is None  # the third it got is nothing a later run trusts
    assert not [name for name in cached_files(tmp_path) if not name.endswith(".incomplete")]
    hub.failure = None
    path, _ = fetch()
    assert path.read_bytes() == DATA and cached_files(tmp_path) == [hashlib.sha256(DATA).hexdigest()]


@pytest.mark.parametrize("status, says, advice", [(500, "HTTP 500", "the server failed: try again later"),
                                                  (401, "HTTP 401", "log in if you have access"),
                                                  (429, "HTTP 429", "the hub limits how often it is asked")])
def test_an_http_error_names_the_status_and_what_to_do(hub, hub_log, caplog, status, says, advice):
    hub.failure = status
    with caplog.at_level(logging.WARNING):
        with pytest.raises(WeightsError) as info:
            fetch()
    message = str(info.value)
    assert "\n" not in message and says in message
    assert advice in message
    assert "local cache" not in message  # not huggingface_hub's "cannot find the requested files in the local cache"
    assert hub_log == []
    assert len(notices(caplog)) == (0 if status == 401 else 1)  # a 500 or 429 is retried: said once; a 401 is not


def test_a_server_that_is_no_hub_answering_200_with_a_page_is_one_line(hub, hub_log, tmp_path):
    hub.failure = "html"
    with pytest.raises(WeightsError) as info:
        fetch()
    message = str(info.value)
    assert "\n" not in message and "does not seem to be served by a Hugging Face Hub" in message
    assert "HF_ENDPOINT" in message and cached_files(tmp_path) == []


def test_a_cache_folder_that_cannot_be_written_is_said_as_such_not_as_the_connection(hub, hub_log, monkeypatch,
                                                                                      tmp_path):
    import huggingface_hub.constants as hf_constants

    (tmp_path / "a_file").write_text("x")  # HF_HOME set to a path under a file: nothing can be made there
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "a_file" / "hub"))
    with pytest.raises(WeightsError) as info:
        fetch()
    message = str(info.value)
    assert "\n" not in message and "NotADirectoryError" in message
    assert f"the Hugging Face cache {tmp_path / 'a_file' / 'hub'} cannot be written" in message
    assert "HF_HOME" in message and "check the connection" not in message


def test_downloads_in_several_threads_put_the_hub_loggers_handlers_back_when_the_last_ends():
    from forensics.io.download import _quiet_hub

    logger = logging.getLogger("huggingface_hub")
    own = logging.StreamHandler()
    logger.addHandler(own)
    try:
        before = list(logger.handlers)
        first, second = _quiet_hub("a"), _quiet_hub("b")
        first.__enter__()
        second.__enter__()  # a second thread's download begins while the first is under way
        first.__exit__(None, None, None)
        assert own not in logger.handlers  # the second still downloads, quietly
        second.__exit__(None, None, None)
        assert logger.handlers == before
    finally:
        logger.removeHandler(own)


def test_a_refusal_by_the_server_the_hub_sent_the_download_to_is_not_blamed_on_the_repo(hub, hub_log):
    hub.failure = "cdn403"
    with pytest.raises(WeightsError) as info:
        fetch()
    message = str(info.value)
    assert "\n" not in message and "HTTP 403 from localhost:" in message
    assert "where the hub sent the download" in message
    assert "try again later" in message and "private or gated" not in message
    assert ("GET", "/cdn/org/tiny/resolve/main/model.safetensors") in hub.requests


def test_a_server_that_never_answers_is_said_as_such(hub, monkeypatch):
    # what huggingface_hub raises after its retries against a server that takes the connection and never answers
    # (six and a half minutes of them: mimicked here, not waited for)
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def hung(*args, **kwargs):
        try:
            raise TimeoutError("timed out")
        except TimeoutError as exc:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot "
                                          "find the requested files in the local cache.") from exc

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hung)
    with pytest.raises(WeightsError) as info:
        fetch()
    message = str(info.value)
    assert "\n" not in message and "(TimeoutError: timed out)" in message and "local cache" not in message
    assert "did not answer in time" in message and "HF_HUB_ETAG_TIMEOUT" in message
