"""A command of the CLI run in this process, as the CLI tests run them: its arguments as strings, its exit
code checked (``code``), the click result returned for its output."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

runner = CliRunner()


def invoked(app: Any, *args: Any, code: int = 0) -> Any:
    """``app`` (a typer app) run with ``args``; asserts that it exits with ``code``."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result
