"""What every command shares: the two consoles, error handling, JSON output.

Data goes to stdout (``out``); progress, warnings and errors go to stderr (``err``). A
:class:`~forensics.errors.ForensicsError` becomes one line on stderr and its exit code (1 for a failed
run, 2 for wrong usage); the traceback is shown only with ``--debug`` or ``FORENSICS_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

def env_debug() -> bool:
    return os.environ.get("FORENSICS_DEBUG", "") not in ("", "0")


STATE = {"debug": env_debug()}


def fail(message: str, code: int = 1) -> None:
    """Print one error line on stderr and exit."""
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn expected errors into one line and an exit code; show tracebacks only in debug mode."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from forensics.errors import ForensicsError

        try:
            return fn(*args, **kwargs)
        except ForensicsError as exc:
            if STATE["debug"]:
                raise
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: one line unless debugging
            if STATE["debug"]:
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)

    return wrapper


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def progress_bar():
    """A rich progress display on stderr and a callback ``(what, done, total)`` that feeds it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=not err.is_terminal)
    tasks: dict[str, int] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = progress.add_task(f"embedding {what}" if "fitting" not in what else what, total=total)
        progress.update(tasks[what], completed=done, total=total)

    return progress, update


REGISTRY_HELP = "Registry folder (default: $FORENSICS_REGISTRY, else the bundled registry/)."

# Options that several commands share, declared once so that they read and behave the same everywhere.
OPT_REGISTRY = typer.Option(None, "--registry", help=REGISTRY_HELP)
OPT_PROTOCOL = typer.Option(None, "--protocol", "-p", help="Protocol name (default: the registry's default protocol).")
OPT_DEVICE = typer.Option("cpu", "--device", help="Torch device for the encoder and the statistic: cpu, cuda, cuda:1.")
OPT_WEIGHTS = typer.Option(None, "--weights", help="Encoder weights file, when not found otherwise.")
OPT_NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the reference cache.")
OPT_WORKERS = typer.Option(0, "--workers", min=0, help="Processes that decode and preprocess images.")
OPT_AMP = typer.Option(None, "--amp", help="Autocast the encoder on CUDA: bf16 or fp16.")
OPT_JSON = typer.Option(False, "--json", help="Print JSON to stdout (stable schema) instead of tables.")
