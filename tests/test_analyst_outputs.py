"""What an analyst reads from ``attribute`` and ``memorization``, checked where it once broke or misled:
a report piped into a reader that leaves early, the HTML saying what the terminal says, outputs refused
before the run rather than after it, and error lines that say what to do."""

from __future__ import annotations

import io

import numpy as np

from forensics.cli.commands import run
from test_cli_ux import VIT, fake_engine, labelled  # noqa: F401 - fake_engine is a fixture


class _ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone (``forensics … --json | head`` once head has its lines)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_json_into_a_closed_pipe_ends_quietly_not_as_an_unexpected_error(fake_engine, tmp_path, monkeypatch,
                                                                         capsys):
    np.savez(tmp_path / "set.npz", images=labelled((1, 120)))
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    code = run(["attribute", str(tmp_path / "set.npz"), "-p", VIT, "--json"])
    said = capsys.readouterr().err
    # as the terminal report does (rich's console on a broken pipe): exit 1, and no error line blaming the tool
    assert code == 1
    assert "unexpected" not in said and "BrokenPipe" not in said and "error:" not in said, said
