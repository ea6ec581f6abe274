"""The ``forensics`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forensics import __version__
from forensics.cli_common import REGISTRY_HELP, STATE, err, handle_errors, out, print_json

app = typer.Typer(
    name="forensics",
    help="Which known generator made these images, and are they copies of training data?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        out.print(f"forensics {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    if debug:
        STATE["debug"] = True


def _progress_bar():
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


@app.command()
@handle_errors
def attribute(
    images: Path = typer.Argument(..., help="A folder of PNG/JPEG images, or an .npz/.npy array of uint8 images."),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p",
                                           help="Protocol to attribute under (default: the registry's default)."),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
    matcher: str = typer.Option("alpha", "--matcher", "-m", help="Matcher: alpha (paper, α=0.5), cosine, svm, …"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (schema forensics.attribution/1)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the encoder: cpu, cuda, cuda:1."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Encoder weights file, when not found otherwise."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the reference cache."),
    top: int = typer.Option(6, "--top", min=1, help="How many candidates the terminal report lists."),
):
    """Attribute a batch of images to the generator in the registry whose fingerprint it matches.

    Example: forensics attribute registry/mnist-effnet-lite0/samples/heldout/dcgan.npz
    """
    import numpy as np

    from forensics.images import load_images
    from forensics.matching import make_matcher
    from forensics.pipeline import Engine
    from forensics.registry import Registry
    from forensics.report import attribution_document, render_attribution

    reg = Registry.open(registry)
    name = protocol or reg.default_protocol
    if name is None:
        raise_usage("the registry names no default protocol; pass --protocol (see `forensics registry list`)")
    proto = reg.protocol(name)
    references = reg.references(name)
    if not references:
        raise_usage(f"protocol {name!r} has no enrolled generators to attribute to")
    prep = proto.encoder.preprocessing
    data, digest = load_images(images, size=int(prep["size"]), resize=int(prep["resize"]))
    progress, update = _progress_bar()
    engine = Engine(proto, device=device, weights=weights, use_cache=not no_cache,
                    shipped_dir=reg.reference_dir(name), progress=update)
    with progress:
        curves = engine.curves(data)
    m = make_matcher(matcher)
    m.fit(references)
    batches = []
    for c in curves:
        batches.append({"values": list(c.fingerprint.values), "verdict": m.attribute(c.fingerprint.vector()).verdict})
    if len(curves) == 1:
        curve = curves[0]
    else:
        from forensics.pipeline import Curve, LayerValue
        from forensics.protocol import Fingerprint

        mean = np.mean([c.fingerprint.vector() for c in curves], axis=0)
        weights_ = [np.mean([lv.counted_weight or 0.0 for lv in layer]) for layer in zip(*(c.layers for c in curves))]
        layers = tuple(LayerValue(lv.layer, float(v), float(w)) for lv, v, w in zip(curves[0].layers, mean, weights_))
        curve = Curve(Fingerprint.from_values(proto.digest, mean.tolist()), layers, sum(c.n_images for c in curves))
    result = m.attribute(curve.fingerprint.vector())
    doc = attribution_document(
        input_path=str(images), n_images=len(data), input_sha256=digest, protocol=proto, curve=curve,
        batches=batches, attribution=result, matcher_info=m.describe(), reference_origin=engine.reference_origin,
        n_references=len(references), partial=len(data) < proto.batch_size)
    if json_out:
        print_json(doc)
    else:
        render_attribution(doc, out, top=top)


def raise_usage(message: str):
    from forensics.errors import UsageError

    raise UsageError(message)


@app.command()
@handle_errors
def plugins(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """List plugins, their versions and what each provides; broken ones with the cause.

    Example: forensics plugins --json
    """
    from rich.table import Table

    from forensics.plugins import host

    infos = host().describe()
    if json_out:
        print_json({"plugins": [i.to_dict() for i in infos]})
        return
    table = Table(title="forensics plugins", title_justify="left")
    for col in ("plugin", "version", "from", "provides", "status"):
        table.add_column(col)
    for info in infos:
        provides = "; ".join(f"{kind}: {', '.join(sorted(names))}" for kind, names in info.provides.items() if names)
        status = "[green]ok[/]" if info.error is None else f"[red]error:[/] {info.error}"
        source = "bundled" if info.bundled else (info.distribution or "registered")
        table.add_row(info.name, info.version or "", source, provides, status)
    out.print(table)


from forensics import cli_encoders, cli_registry  # noqa: E402

app.command("encoders")(cli_encoders.encoders)
app.add_typer(cli_registry.app, name="registry")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
