"""Ray's own ``RAY_ADDRESS`` is checked as ``--ray-address`` is: where no Ray answers, one line at once.

With ``RAY_ADDRESS`` naming a cluster that is not running, ``--engine ray`` (no ``--ray-address``) went into
Ray's own retries: a log line on stderr every few seconds, for minutes, and SIGTERM did not end it. No Ray
instance starts in these tests.
"""

from __future__ import annotations

import socket

import pytest

from forensics.errors import UsageError


@pytest.fixture
def ray_not_started(monkeypatch):
    """Ray as in a fresh process (another module's instance may be up), whose ``ray.init`` must not be reached."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    reached: list[dict] = []

    def init(**kwargs):
        reached.append(kwargs)
        raise AssertionError("ray.init was reached")

    monkeypatch.setattr(ray, "init", init)
    return reached


def free_port() -> int:
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def test_a_ray_address_in_the_environment_where_nothing_answers_fails_at_once(monkeypatch, ray_not_started):
    from forensics.distributed import connect

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(UsageError, match=r"no Ray cluster answers at 127\.0\.0\.1:\d+ .*check RAY_ADDRESS, or unset "
                                         "it") as info:
        connect(None)
    assert "\n" not in str(info.value) and "--ray-address" not in str(info.value)
    assert ray_not_started == []


def test_a_ray_address_in_the_environment_that_is_no_address_is_named_as_such(monkeypatch, ray_not_started):
    from forensics.distributed import connect

    monkeypatch.setenv("RAY_ADDRESS", "garbage")
    with pytest.raises(UsageError, match=r"^RAY_ADDRESS takes auto, HOST:PORT or ray://HOST:PORT, not 'garbage'$"):
        connect(None)
    assert ray_not_started == []


def test_the_command_line_address_wins_over_the_environment(monkeypatch, ray_not_started):
    from forensics.distributed import connect

    monkeypatch.setenv("RAY_ADDRESS", "garbage")
    port = free_port()
    with pytest.raises(UsageError, match=rf"no Ray cluster answers at 127\.0\.0\.1:{port} .*check --ray-address"):
        connect(f"127.0.0.1:{port}")
