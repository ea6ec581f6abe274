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
from rich.markup import escape

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

def env_debug() -> bool:
    return os.environ.get("FORENSICS_DEBUG", "") not in ("", "0")


STATE = {"debug": env_debug(), "quiet": False}


def esc(value: Any) -> str:
    """``value`` as text that rich prints as it is: a user's path or name may hold ``[red]`` or ``[/x]``,
    which rich would otherwise read as markup (dropping it, or failing on it)."""
    from forensics.report.terminal import printable

    return escape(printable(str(value)))


def one_line(message: str) -> str:
    """The first line of ``message``: an error or warning is one line on stderr."""
    from forensics.report.terminal import printable

    return printable(next((line.strip() for line in str(message).splitlines() if line.strip()), ""))


def error_line(message: str) -> None:
    """Print ``error: message`` as one line on stderr, the message verbatim (never read as markup)."""
    from rich.text import Text

    err.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    """Print one error line on stderr and exit."""
    error_line(message)
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
            fail(one_line(str(exc)) or type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:  # stdout's reader left (`--json | head`): quietly, as the terminal report's console
            _stdout_gone()
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug (ours, or a plugin's: then named): one line unless debugging
            from forensics.plugins import blamed

            if STATE["debug"]:
                raise
            who = blamed(exc.__traceback__)
            if who is not None:
                fail(f"plugin {who.name} ({who.distribution or who.module}) failed: {type(exc).__name__}: "
                     f"{one_line(str(exc))}; fix or uninstall it, or leave it out with "
                     f"FORENSICS_DISABLE_PLUGINS={who.name} (--debug shows the traceback)", 1)
            fail(f"unexpected {type(exc).__name__}: {one_line(str(exc))} (run with --debug for the traceback)", 1)

    return wrapper


def _stdout_gone() -> None:
    """Point stdout at the null device once its reader has left, so that nothing written or flushed later
    (at exit) fails again; what rich's console does on a broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout with no file behind it (a test's capture): nothing left to flush
        pass


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def confirmed(yes: bool, what: str, size: str | None = None) -> bool:
    """Whether to remove ``what`` ("3 cache entries", of ``size`` "1.2 MB" when given): yes with ``--yes``, else
    the user's answer on a terminal; off a terminal, where nobody can answer, a usage error saying to add ``--yes``."""
    from forensics.errors import UsageError

    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"{what} would be removed; add --yes to remove without asking (stdin is not a terminal)")
    return typer.confirm(f"Remove {what}{f' ({size})' if size else ''}?", default=False, err=True)


def progress_bar(*, quiet: bool | None = None):
    """A rich progress display on stderr and the callback ``(what, done, total)`` that feeds it (the
    library's ``progress=``, :mod:`forensics.api`): one line per step, from the first second of a run,
    each with a spinner and its time; counted steps (decoding, embedding, fitting) with a bar, ``done/total``
    and the time left. ``total == 0`` is a step of unknown length begun; ``done == total > 0`` ends a step.

    Shown only when stderr is a terminal, and not with the global ``--quiet`` (``quiet`` overrides it): a
    piped or redirected run prints no progress at all. The display is transient: the report replaces it.
    """
    from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Counted(ProgressColumn):
        """``done/total · time left`` for a counted step; nothing for a step of unknown length."""

        def render(self, task) -> Text:
            if not task.fields.get("counted") or task.total is None:
                return Text("")
            left = "" if task.finished or task.time_remaining is None else \
                f" · {int(task.time_remaining) // 60}:{int(task.time_remaining) % 60:02d} left"
            return Text(f"{int(task.completed)}/{int(task.total)}{left}", style="progress.download")

    quiet = STATE.get("quiet", False) if quiet is None else quiet
    progress = Progress(SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"),
                        BarColumn(bar_width=30), Counted(), TimeElapsedColumn(), console=err, transient=True,
                        disable=quiet or not err.is_terminal)
    tasks: dict[str, int] = {}
    unknown_length: set[str] = set()

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = progress.add_task(esc(what), total=total if total > 0 else None, counted=total > 0)
            if total <= 0:
                unknown_length.add(what)
        if total <= 0:
            return  # begun, of unknown length: its spinner turns and its time runs
        if what in unknown_length:  # over
            progress.update(tasks[what], completed=total, total=total)
        else:
            progress.update(tasks[what], completed=done, total=total)

    from forensics.io.download import report_to

    report_to(update)  # a download (weights, a data set) is a step of this display too
    return progress, update


REGISTRY_HELP = ("Registry folder, read and written as it is (default: $FORENSICS_REGISTRY, else your user "
                 "registry over the bundled one; writes go to the user registry).")

# Options that several commands share, declared once so that they read and behave the same everywhere.
OPT_REGISTRY = typer.Option(None, "--registry", help=REGISTRY_HELP)


def complete_protocol(incomplete: str) -> list[str]:
    """Shell completion of ``--protocol``: the protocols of the registry ($FORENSICS_REGISTRY, else the
    default one) whose names start with what was typed; nothing when the registry cannot be read."""
    try:
        from forensics.api import open_registry

        return [name for name in sorted(open_registry().protocols) if name.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion never fails the shell
        return []


OPT_PROTOCOL = typer.Option(None, "--protocol", "-p", help="Protocol name (default: the registry's default protocol).",
                            autocompletion=complete_protocol)
OPT_DEVICE = typer.Option("cpu", "--device", help="Torch device for the encoder and the statistic: cpu, cuda, cuda:1.")
OPT_WEIGHTS = typer.Option(None, "--weights", help="Encoder weights file, when not found otherwise.")
OPT_NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the reference cache.")
OPT_WORKERS = typer.Option(0, "--workers", min=0, help="Processes that decode and preprocess images.")
OPT_AMP = typer.Option(None, "--amp", help="Autocast the encoder on CUDA: bf16 or fp16.")
OPT_ENGINE = typer.Option("local", "--engine", help="Where to compute: local (this process), or ray (a Ray cluster: "
                          "the same values; needs the extra 'ray', whose install command a run without it prints).")
OPT_RAY_ADDRESS = typer.Option(None, "--ray-address", help="The Ray cluster for --engine ray (auto, ray://HOST:10001, "
                               "HOST:6379); default: a new local Ray instance.")
OPT_JSON = typer.Option(False, "--json", help="Print JSON to stdout (stable schema) instead of tables.")
OPT_HTML = typer.Option(None, "--html", help="Also write a self-contained HTML report here.")
OPT_PLOTS = typer.Option(None, "--plots", help="Also write each plot as a PNG file into this folder (needs the extra "
                         "'plots').")
OPT_OFFLINE = typer.Option(False, "--offline", help="Download nothing (weights, data sets): use only what is on "
                           "this machine (also FORENSICS_OFFLINE=1 or HF_HUB_OFFLINE=1).")


def use_offline(flag: bool) -> None:
    """A command's ``--offline``: downloads off for this run (``forensics --offline`` sets it for every command)."""
    if flag:
        from forensics.io.download import set_offline

        set_offline(True)


OPT_CONDITIONS = typer.Option("all", "--conditions", help="Post-processing conditions to keep per-image records "
                              "under: all, none, or names, comma-separated (none, jpeg98, jpeg95 … jpeg70 every 5, "
                              "webp90 … webp75, resize2, resize0.5, crop90, resize2+jpeg90 …; any jpegQ or webpQ, "
                              "a resampling+re-encoding).")
OPT_CONDITION = typer.Option("auto", "--condition", help="What happened to the images: auto (read from the files: "
                             "JPEG or WebP quality, size; an .npz's 'conditions', one per image; else as generated), "
                             "none, or a condition (jpeg90, resize2, crop90, resize0.5+jpeg75, …).")
OPT_OPERATING_POINT = typer.Option("balanced", "--operating-point", help="Which calibrated thresholds decide "
                                   "\"unknown\": balanced (best balanced accuracy), named (name more, at the price of "
                                   "letting more unenrolled generators through) or cautious (the reverse).")
OPT_DROP_REPEATS = typer.Option(False, "--drop-repeats", help="Leave out images that repeat an earlier image of the "
                                "set pixel for pixel (a file kept twice); by default they are counted and warned of.")
OPT_DROP_ENROLLED = typer.Option(False, "--drop-enrolled", help="Leave out images an enrolled instance was made "
                                 "from (matched with their own reference curve, they make the verdict lean toward "
                                 "it); by default they are counted and warned of.")
OPT_NO_RECURSIVE = typer.Option(False, "--no-recursive", help="Read only the folder's own files, not its "
                                "subfolders' (by default a folder is searched recursively).")


def distribution_version() -> tuple[str, str]:
    """The installed distribution that provides the ``forensics`` command, and its version (what pip
    installed, which ``forensics --version`` prints); ``forensics.__version__`` when none is installed."""
    from importlib import metadata

    import forensics

    names = metadata.packages_distributions().get("forensics") or []
    for name in dict.fromkeys(names):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
        if any(ep.group == "console_scripts" and ep.value.startswith("forensics.cli") for ep in dist.entry_points):
            return dist.metadata["Name"], dist.version
    return "forensics", forensics.__version__


def input_notes(path: Any, skipped: Any) -> None:
    """A note on stderr of what reading the folder ``path`` skipped (``{reason: how many}``: hidden
    entries, files that are not images, links to folders, subfolders with ``--no-recursive``)."""
    if not skipped:
        return
    what = ", ".join(f"{n} {reason}" for reason, n in dict(skipped).items())
    err.print(f"[yellow]note:[/] skipped in {esc(path)}: {esc(what)}", soft_wrap=True)  # one line


def batch_notes(result: Any, *, warnings: bool = True) -> None:
    """On stderr: a note when the remainder after the last full batch was attributed as a batch of its own, and
    the result's warnings (those of its batching among them: images left out, a batch too small or not
    comparable), unless ``warnings`` is false because the report about to be printed on this terminal holds
    them."""
    n, m = result.input.n_images, result.protocol.batch_size
    rest = result.remainder
    if rest is not None:
        how = (f"matched against the references redrawn at {rest.compared_at} images" if rest.compared_at else
               f"with fewer than {m} images it is less reliable")
        err.print(f"[yellow]note:[/] the last {rest.curve.n_images} of {n:,} images were attributed as a batch of "
                  f"their own ({esc(rest.label)}; {how}); it is not in the mean curve", soft_wrap=True)
    for line in result.warnings if warnings else ():
        err.print(f"[yellow]warning:[/] {esc(line)}", soft_wrap=True)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """:func:`warnings.showwarning` for the command line: a library's warning (NumPy, torch, Pillow) as one
    line on stderr, never its source line or a multi-line text; the whole warning under ``--debug``."""
    from rich.text import Text

    if STATE["debug"]:
        import warnings

        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    text = one_line(str(message)) or category.__name__
    # a library's own kind (DeprecationWarning, a torch or Pillow class) says where it comes from; the plain
    # UserWarning, which forensics' own warnings are, says nothing
    kind = "" if category is UserWarning else f" ({category.__name__})"
    err.print(Text.assemble(("warning:", "yellow"), f" {text}{kind}"), highlight=False, soft_wrap=True)


def check_output(path: Any) -> None:
    """Refuse an output path before the run, not after it: whatever
    :func:`forensics.io.atomic.check_output_path` refuses (a symlink, a device or FIFO, a folder, a missing
    folder, a name too long). A name that is not UTF-8 is written as given and shown with escapes."""
    try:
        from forensics.io.atomic import check_output_path
    except ImportError:  # pragma: no cover - only before the io package's hardening (issue 26) is in
        return
    check_output_path(path)


def check_reports(html_out: Any, plots_dir: Any, evidence: Any = None) -> None:
    """Refuse what ``--html`` / ``--plots`` ask for before the run, not after it: ``--plots`` without the extra
    'plots' (a missing extra, exit 1, as :func:`forensics.extras.require` says it), then the output paths
    (:func:`forensics.report.html.check_outputs`), which must stay apart from ``evidence``, the images read."""
    if html_out is None and plots_dir is None:
        return
    from forensics.report.html import check_outputs

    check_outputs(html_out, plots_dir, evidence=evidence)


def write_reports(page: str, result: Any, html_out: Any, plots_dir: Any) -> None:
    """Write what ``--html`` / ``--plots`` asked for, from the page builder ``page`` of
    :mod:`forensics.report.html` (e.g. ``"attribution_page"``), one line on stderr per output."""
    if html_out is None and plots_dir is None:
        return
    from forensics.report import html

    for line in html.write_outputs(getattr(html, page)(result), html_out, plots_dir):
        err.print(esc(line))
