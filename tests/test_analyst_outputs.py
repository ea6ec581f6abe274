"""What an analyst reads from ``attribute`` and ``memorization``, checked where it once broke or misled:
a report piped into a reader that leaves early, the HTML saying what the terminal says, outputs refused
before the run rather than after it, and error lines that say what to do."""

from __future__ import annotations

import io

import numpy as np

from forensics.cli.commands import run
from test_cli_ux import VIT, cli, fake_engine, labelled  # noqa: F401 - fake_engine is a fixture


def run_cli(*args) -> str:
    """The command's stdout, its exit code 0."""
    done = cli(*args)
    assert done.exit_code == 0, done.output
    return done.stdout


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


def test_the_html_says_what_the_terminal_says_of_a_remainder_batch(fake_engine, tmp_path):
    # 1,300 images: two full batches, and the last 300 attributed as a batch of their own; the terminal said
    # so, the HTML did not (its reader saw 1,300 images and "per batch of 500: × 2")
    import forensics
    from forensics.report.html import attribution_page

    np.savez(tmp_path / "set.npz", images=labelled((1, 500), (1, 500), (2, 300)))
    terminal = run_cli("attribute", tmp_path / "set.npz", "-p", VIT)
    said = next(line.strip() for line in terminal.splitlines() if "The last 300 images" in line)
    result = forensics.attribute(tmp_path / "set.npz", protocol=VIT)
    page = attribution_page(result, plots=False).html()
    assert said in " ".join(page.split()), said
