"""``forensics registry …``: list, show, validate, enrol, remove, family, diff, evaluate, calibrate, import-paper."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from forensics.cli.common import (
    OPT_DEVICE, OPT_JSON, OPT_OFFLINE, OPT_PROTOCOL, OPT_REGISTRY, OPT_WEIGHTS, err, esc, fail, handle_errors, out,
    complete_protocol, print_json, progress_bar, use_offline,
)
from forensics.cli.common import OPT_CONDITIONS, OPT_NO_RECURSIVE, OPT_OPERATING_POINT, OPT_PLOTS, input_notes
from forensics.cli.common import OPT_ENGINE, OPT_RAY_ADDRESS, check_reports, write_reports
from forensics.report import counted

if TYPE_CHECKING:
    from forensics.results import EvaluationResult, ProtocolDetail, RegistryListing

app = typer.Typer(name="registry", no_args_is_help=True,
                  help="The fingerprint registry: list, show, validate, enrol and evaluate reference generators.\n\n"
                       "Example: forensics registry list")

def _fmt(v: Any, nd: int = 3) -> str:
    """A value as a listing shows it: a dash for none, a digest shortened, a float to ``nd`` places."""
    from forensics.io.hashing import is_digest, short

    if v is None:
        return "—"
    if is_digest(v):
        return short(v)
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


# -- list / show / validate -----------------------------------------------------------------------
@app.command("list")
@handle_errors
def list_(registry: Optional[Path] = OPT_REGISTRY, json_out: bool = OPT_JSON):
    """List the protocols of the registry and their generators.

    Example: forensics registry list --json
    """
    from forensics.api import list_protocols

    from forensics.registry import registry_layers

    result = list_protocols(registry)
    if json_out:
        print_json(result.to_dict())
    else:
        _render_listing(result, registry_layers(registry)[1:])


#: below this many columns `registry list` shows each protocol as a block of two lines, not a table row: the
#: table's generator column would hold a few letters a line and run one protocol over thirty lines
LISTING_TABLE_WIDTH = 120


def _render_listing(result: RegistryListing, below: tuple[Path, ...] = ()) -> None:
    from rich.table import Table

    over = "".join(f" over {esc(p)}" for p in below)  # the user registry over the bundled one
    if out.width < LISTING_TABLE_WIDTH:
        out.print(f"registry {esc(result.registry)}{over}")
        for p in result.protocols:
            out.print(f"\n[bold]{esc(p.name)}[/]" + (" (default)" if p.default else "")
                      + f"  {esc(_fmt(p.digest))} · {esc(p.encoder)} · {p.n_layers} layers · m = {p.batch_size}")
            gens = ", ".join(f"{g} ({n}{', family ' + p.families[g] if g in p.families else ''})"
                             for g, n in p.generators.items())
            out.print("  " + (esc(gens) if gens else "[dim]no generators[/]"))
        return
    table = Table(title=f"registry {esc(result.registry)}{over}", title_justify="left")
    table.add_column("protocol", no_wrap=True)
    table.add_column("digest", no_wrap=True)
    for col in ("encoder", "layers", "m", "generators (instances)"):
        table.add_column(col, overflow="fold")
    for p in result.protocols:
        name = esc(p.name) + (" [bold](default)[/]" if p.default else "")
        gens = esc(", ".join(f"{g} ({n}{', family ' + p.families[g] if g in p.families else ''})"
                             for g, n in p.generators.items())) or "[dim]none[/]"
        table.add_row(name, esc(_fmt(p.digest)), esc(p.encoder), str(p.n_layers), str(p.batch_size), gens)
    out.print(table)


@app.command()
@handle_errors
def show(
    protocol: Optional[str] = typer.Argument(None, help="Protocol name (default: the registry's default)."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="Show this generator's instances in full."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Show a protocol's record, its generators and their instances with provenance.

    Example: forensics registry show he2024-cifar10-vitb16 --generator DDPM
    """
    from forensics.api import show_protocol

    result = show_protocol(protocol, generator=generator, registry=registry)
    if json_out:
        print_json(result.to_dict())
    else:
        _render_protocol(result, full_curves=generator is not None)


def _calibration_text(cal: dict, protocol: str) -> str:
    """One matcher's calibration (:func:`forensics.api.calibration_summary`) under ``protocol`` as a line of
    ``registry show``."""
    again = f"`forensics registry calibrate -p {protocol}`"
    if cal["thresholds_from"] == "stale":
        return f"made on other references: recalibrated at every fit (run {again})"
    if not cal["calibrated"]:
        return "not calibrated"
    pool = cal.get("pool") or {}
    when = f"unknown when {_unknown_when(cal)}"
    if cal["thresholds_from"] == "pooled":
        return f"{when}, for every batch (pooled over {pool['n_cells']} (condition, batch size) cells)"
    if pool.get("adopted"):  # adopted, yet not answering: chosen under an older rule
        return (f"{when} as generated at m, each other cell calibrated on its own (the pool over {pool['n_cells']} "
                f"cells was chosen under an older rule: run {again})")
    if pool and pool.get("balanced_accuracy") is not None:
        return (f"{when} as generated at m, each other cell calibrated on its own (the pool over "
                f"{pool['n_cells']} cells was not adopted: {_shortfall(pool)})")
    return f"{when} as generated at m, each other cell calibrated on its own"


def _shortfall(pool: Mapping[str, Any]) -> str:
    """How a declined pool fell behind each cell calibrated on its own (a record made before the paired check
    says no more than the two balanced accuracies)."""
    said = f"balanced accuracy {pool['balanced_accuracy']:.3f} pooled against {pool['own_balanced_accuracy']:.3f}"
    if pool.get("chance") is None:
        return said
    chance = f"{pool['chance']:.3f}" if pool["chance"] >= 0.001 else "less than 0.001"
    return (f"{said} with each cell's own ({pool['pool_lost']:,} held-out queries lost, {pool['pool_gained']:,} "
            f"gained: as far behind by chance {chance} of the time)")


def _held(provenance: Mapping[str, Any], m: int) -> str:
    """The images an instance holds: one batch of m of its input ("100 of 500", batch by batch, where the input
    held several); "—" where its provenance records no count."""
    n = provenance.get("n_images")
    if not isinstance(n, int) or isinstance(n, bool):
        return "—"
    return str(n) if n <= m else f"{m} of {n}"


def _render_protocol(result: ProtocolDetail, *, full_curves: bool) -> None:
    """A protocol's record, then a table of its generators' instances (their curves with ``full_curves``,
    else each instance's role)."""
    from rich.table import Table

    from forensics.conditions import describe_codecs

    proto, chosen = result.protocol, result.generators
    out.print(f"[bold]{esc(proto.name)}[/]  digest {esc(proto.digest)}")
    if proto.description:
        out.print(f"  {proto.description}", markup=False)
    if len(proto.parts) > 1:
        out.print(f"  combines  {esc(', '.join(p.name for p in proto.parts))}: a fingerprint is their curves end to end "
                  f"({len(proto.layers)} layers); instances are those enrolled under every one")
    for part in proto.parts:
        indent = "  " if part is proto else "    "
        if part is not proto:
            out.print(f"  [bold]{esc(part.name)}[/]  digest {esc(part.digest)}")
        enc, stat = part.encoder, part.statistic
        out.print(f"{indent}encoder   {enc.name} ({enc.weights_source}; weights {_fmt(enc.weights)}), pooling "
                  f"{enc.pooling}, {len(enc.layers)} layers {enc.layers[0]} … {enc.layers[-1]}", markup=False)
        out.print(f"{indent}prep      {dict(enc.preprocessing)}", markup=False)
        out.print(f"{indent}statistic {stat.name} {dict(stat.params)}; batch m = {part.batch_size}", markup=False)
        out.print(f"{indent}T         {part.train.dataset}:{part.train.split} ({part.train.count}, "
                  f"{_fmt(part.train.sha256)})   P_n {part.test.dataset}:{part.test.split} ({part.test.count}, "
                  f"{_fmt(part.test.sha256)})", markup=False)
        for key, value in dict(part.notes).items():
            out.print(f"{indent}[dim]{esc(key)}: {esc(value)}[/]")
        made = result.processing.get(part.name)
        if made:  # what processed the images of its records (`registry validate` checks it against this machine)
            by = sorted({describe_codecs(m) for m in made.values()})
            alike = sum(1 for m in made.values() if m.get("reference", "none") != "none")
            against = ("each scored against T and P_n processed alike" if alike == len(made) else
                       "scored against T and P_n as they are" if not alike else
                       f"{alike} of them scored against T and P_n processed alike, the others against them as they are")
            out.print(f"{indent}records   under {counted(len(made), 'condition')} besides none, made with {'; '.join(by)}; "
                      f"{against}", markup=False)
    for mname, cal in result.calibration.items():  # whose open-set thresholds answer
        out.print(f"  calibration {mname}: {_calibration_text(cal, proto.name)}", markup=False)
    instances = [inst for e in chosen.values() for inst in e.instances]
    # an instance id made from its input's hash says the input already
    inputs = any(inst.provenance.get("input_sha256") and not inst.id.startswith(_fmt(inst.provenance["input_sha256"]))
                 for inst in instances)
    roles = any(inst.provenance.get("role") for inst in instances)
    records = any(inst.records for inst in instances)  # a combination's are its protocols' (above)
    columns = ["generator", "instance", "created", "by", "images", *(["input"] if inputs else []),
               *(["records"] if records else []), *(["role"] if roles else [])]
    rows = [{"generator": g if k == 0 else "", "instance": inst.id, "created": str(inst.provenance.get("created", ""))[:10],
             "by": str(inst.provenance.get("by", "")), "images": _held(inst.provenance, proto.batch_size),
             "input": _fmt(inst.provenance.get("input_sha256")), "records": str(len(inst.records) or "—"),
             "role": str(inst.provenance.get("role") or "")} for g, e in chosen.items() for k, inst in enumerate(e.instances)]
    table = Table(title_justify="left", title=f"{len(chosen)} generator(s)")
    for col in columns:  # one line per instance, every name whole: only who enrolled it is cut short
        width = max([len(col), *(len(r[col]) for r in rows)])
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=None if col == "by" else width,
                         max_width=18 if col == "by" else None)
    for row in rows:
        table.add_row(*(esc(row[c]) for c in columns))
    out.print(table)
    if full_curves:  # a curve is one line of its own, wrapped by the terminal
        for g, e in chosen.items():
            for inst in e.instances:
                out.print(f"{g}/{inst.id}  C_T per layer: {' '.join(_fmt(v, 2) for v in inst.values)}", markup=False)
    families: dict[str, list[str]] = {}
    for g, e in chosen.items():
        if e.family:
            families.setdefault(e.family, []).append(g)
    for fam, members in families.items():  # the model they share (`forensics registry family`)
        out.print(f"family {fam}: {', '.join(members)}", markup=False)


@app.command()
@handle_errors
def validate(registry: Optional[Path] = OPT_REGISTRY, json_out: bool = OPT_JSON):
    """Check every registry file: schema, digests, NaN/inf, duplicate names, curve lengths. Exit 1 on problems.

    Example: forensics registry validate --registry ./registry
    """
    from forensics.api import validate_registry
    from forensics.registry import registry_layers

    result = validate_registry(registry)
    # the user registry over the bundled one, as `registry list` says it: the first alone may not even exist
    where = " over ".join(str(p) for p in (result.registry, *registry_layers(registry)[1:]))
    if json_out:
        print_json(result.to_dict())
    else:
        for p in result.problems:
            out.print(f"[red]✗[/] {esc(p)}")
        for w in result.warnings:
            out.print(f"[yellow]![/] {esc(w)}")
        if result.ok:
            out.print(f"[green]✓[/] {esc(where)}: {result.n_protocols} protocol(s), {result.n_instances} "
                      "instance(s), no problems")
    if not result.ok:  # as every failed run: one line on stderr, exit 1 (the problems are listed above)
        fail(f"{len(result.problems)} problem(s) in {where}; the first: {result.problems[0]}", 1)


@app.command("migrate-reference")
@handle_errors
def migrate_reference(protocol: Optional[str] = OPT_PROTOCOL, registry: Optional[Path] = OPT_REGISTRY):
    """Lay out the shipped reference sides to be memory-mapped (files in the older layout are read whole on
    every run): the same arrays, bit for bit; the registry's recorded digests are updated.

    Example: forensics registry migrate-reference --registry ./registry
    """
    from forensics.registry import Registry
    from forensics.registry.reference import migrate

    reg = Registry.open(registry)
    names = [protocol] if protocol else sorted(reg.protocols)
    with reg.lock():
        for name in names:
            reg.protocol(name)  # an unknown name fails here
            folder = reg.reference_dir(name)
            if not folder.is_dir():
                continue
            for path, rewritten in migrate(folder, name):
                err.print(f"{esc(str(path))}: {'rewritten, laid out to be mapped' if rewritten else 'already mapped'}")


@app.command("ship-scoring")
@handle_errors
def ship_scoring(protocol: Optional[str] = OPT_PROTOCOL, registry: Optional[Path] = OPT_REGISTRY,
                 device: str = OPT_DEVICE):
    """Ship what scoring the records kept under processed images needs, for every condition whose records are
    scored against T and P_n put through it (a few hundred KB each; T and P_n are fitted where this machine's
    cache lacks them, a minute or so each). Enrolment ships them itself: this is for records kept by a version
    that did not, or a registry copied without them. Without them such records are still scored, after fitting.

    Example: forensics registry ship-scoring --registry ./registry
    """
    from forensics import api

    progress, update = progress_bar()
    with progress:
        shipped = api.ship_scoring_sides(protocol=protocol, registry=registry, device=device, progress=update)
    for path in shipped:
        err.print(f"{esc(str(path))}: shipped (the part that scores records)")
    if not shipped:
        err.print("nothing to ship: every processed side the records are scored against is shipped already")

# -- enrol / remove -------------------------------------------------------------------------------
@app.command()
@handle_errors
def enroll(
    name: str = typer.Argument(..., help="Generator name (letters, digits, '_.+-'); new or existing."),
    images: Path = typer.Argument(..., help="Images it made: a folder of PNG/JPEG, or an .npz/.npy uint8 array."),
    protocol: Optional[str] = OPT_PROTOCOL,
    description: str = typer.Option("", "--description", help="One line about the generator (kept in its file)."),
    family: Optional[str] = typer.Option(None, "--family", help="The model it shares with other enrolled "
                                         "generators (the network several samplers run), e.g. ddpm-net; kept in "
                                         "its file (see `forensics registry family`)."),
    note: Optional[str] = typer.Option(None, "--note", help="A note kept with each instance's provenance."),
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
    offline: bool = OPT_OFFLINE,
    no_recursive: bool = OPT_NO_RECURSIVE,
    engine: str = OPT_ENGINE,
    ray_address: Optional[str] = OPT_RAY_ADDRESS,
    conditions: str = OPT_CONDITIONS,
):
    """Fingerprint IMAGES in batches of the protocol's m and store each batch as an instance of NAME.

    Under a combination, the instance is enrolled under every protocol it combines. A generator the
    registry does not know is enrolled from a folder of its images the same way. Each instance keeps
    per-image records under every post-processing condition (--conditions), so that sets of any size,
    re-encoded or resized, can be attributed to it; each condition embeds the images once more.

    Example: forensics registry enroll dcgan samples/dcgan.npz --protocol mnist-effnet-lite0
    """
    from forensics.api import enroll as run
    from forensics.provenance import utc_now

    use_offline(offline)
    progress, update = progress_bar()
    since = utc_now()
    try:
        with progress:
            result = run(images, name, protocol=protocol, registry=registry, description=description, note=note,
                         device=device, weights=weights, progress=update, recursive=not no_recursive,
                         engine=engine, ray_address=ray_address, conditions=conditions, family=family)
    except KeyboardInterrupt:
        fail(_interrupted_enrolment(name, protocol, registry, since), 130)
    input_notes(images, result.skipped)
    for line in [*result.warnings, *filter(None, [_conditions_lacking(name, images, result, registry)])]:
        err.print(f"[yellow]warning:[/] {esc(line)}", soft_wrap=True)
    if result.left_out:
        err.print(f"[yellow]note:[/] {result.n_images} images make {len(result.instances)} batch(es) of "
                  f"{result.batch_size}; "
                  f"the last {result.left_out} were left out")
    if result.n_undefined:
        err.print(f"[yellow]note:[/] {result.n_undefined} layer value(s) undefined (no cell passed the threshold), "
                  "stored as null")
    _recalibrate_note(result.protocol, registry)
    if json_out:
        print_json(result.to_dict())
    else:
        out.print(f"enrolled {len(result.instances)} instance(s) of [bold]{esc(name)}[/] under {esc(result.protocol)}: "
                  f"{esc(', '.join(result.instances))}"
                  + (f"; per-image records under {esc(', '.join(result.conditions))}" if result.conditions else ""))


def _conditions_lacking(name: str, images: Path, result: Any, registry: Optional[Path]) -> Optional[str]:
    """The conditions every other instance of the protocol keeps records under that the instances just enrolled
    do not (``--conditions``), as a warning: a query is matched under a condition only when every instance keeps
    it, so leaving one out stops it for all of them."""
    import shlex

    from forensics.registry import Registry

    reg = Registry.open(registry, strict=False)
    others = [r for r in reg.enrolled(result.protocol) if not (r.generator == name and r.instance in result.instances)]
    if not others:
        return None
    kept = set.intersection(*(set(reg.instance_record_conditions(result.protocol, r.generator, r.instance))
                              for r in others))
    lacking = sorted(kept - set(result.conditions))
    if not lacking:
        return None
    return (f"the other instances of {result.protocol} keep per-image records under {len(lacking)} condition(s) these "
            f"do not ({', '.join(lacking[:6])}{' …' if len(lacking) > 6 else ''}): no query under them is matched by "
            f"its condition until these keep them too (`forensics registry records {shlex.quote(name)} "
            f"{shlex.quote(str(images))} --protocol {result.protocol} --conditions {','.join(lacking)}`)")


def _interrupted_enrolment(name: str, protocol: Optional[str], registry: Optional[Path], since: str) -> str:
    """What an enrolment interrupted (Ctrl-C) since ``since`` left in the registry, as the error line says it:
    the instances of ``name`` it wrote, or nothing (an interrupted write removes what it had written)."""
    from forensics.errors import ForensicsError
    from forensics.registry import Registry

    try:
        reg = Registry.open(registry, strict=False)
        pname = reg.resolve_protocol(protocol)
        entry = reg.generator_entries(pname).get(name)
    except ForensicsError:
        return "interrupted"
    new = [i.id for i in entry.instances if str(i.provenance.get("created", "")) >= since] if entry else []
    if new:
        return (f"interrupted after the enrolment was written: {len(new)} instance(s) of {name} under {pname} "
                f"({', '.join(new)}) in {reg.path}")
    return f"interrupted: nothing was enrolled under {pname} in {reg.path}"


@app.command()
@handle_errors
def records(
    name: str = typer.Argument(..., help="The enrolled generator."),
    images: Path = typer.Argument(..., help="The images its instance(s) were enrolled from (same content hash)."),
    protocol: Optional[str] = OPT_PROTOCOL,
    conditions: str = OPT_CONDITIONS,
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
    no_recursive: bool = OPT_NO_RECURSIVE,
):
    """Keep per-image records for instances of NAME enrolled before records (or these conditions) were kept.

    IMAGES must be the images an instance was enrolled from (their hash is checked) and must give back its
    enrolled curve here; then the records under each condition it does not keep yet are written beside its
    generator file (those it keeps are left as they are), and the images' size and per-image digests where it
    records none (the digests, which tell a query holding some of these images, need no embedding). A
    generator of the bundled registry has its file copied into the user registry with the new records. Without
    --protocol: the default protocol where it holds NAME, else the one protocol NAME is enrolled under. For
    every zoo instance at once: forensics zoo enroll --conditions jpeg60.

    Example: forensics registry records dcgan samples/dcgan.npz --conditions none,jpeg90
    """
    from forensics.api import add_records as run
    from forensics.api import generator_protocol, open_registry

    reg = open_registry(registry)
    protocol, note = generator_protocol(name, protocol, registry=reg)  # the one protocol that holds it, if one
    if note:
        err.print(f"[yellow]note:[/] {esc(note)}", soft_wrap=True)
    progress, update = progress_bar()
    with progress:
        kept = run(images, name, protocol=protocol, registry=reg, conditions=conditions, device=device,
                   weights=weights, progress=update, recursive=not no_recursive)
    if json_out:
        print_json({"generator": name, "instances": {k: list(v) for k, v in kept.items()}})
    else:
        for iid, conds in kept.items():
            out.print(f"{esc(name)}/{esc(iid)} keeps records under: {esc(', '.join(conds))}")


@app.command()
@handle_errors
def remove(
    name: str = typer.Argument(..., help="Generator to remove (all its instances unless --instance)."),
    protocol: Optional[str] = OPT_PROTOCOL,
    instance: Optional[str] = typer.Option(None, "--instance", "-i", help="Remove only this instance."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Remove a generator, or one of its instances, from a protocol (from each one a combination combines).

    Example: forensics registry remove dcgan --instance 3fa9c2d1e0b4-0 --protocol mnist-effnet-lite0
    """
    from forensics.api import remove as run

    result = run(name, instance=instance, protocol=protocol, registry=registry)
    _recalibrate_note(result.protocol, registry)
    if json_out:
        print_json(result.to_dict())
    else:
        out.print(f"removed {len(result.removed)} instance(s) of {name} from {result.protocol}: "
                  f"{', '.join(result.removed)}", markup=False)


def _recalibrate_note(protocol: str, registry: Optional[Path]) -> None:
    """After an enrolment or removal under ``protocol``: a note naming the protocols (it, its parts, the
    combinations of them) whose recorded thresholds were made on other instances, and the command to redo them."""
    from forensics.match import references_digest
    from forensics.registry import Registry

    reg = Registry.open(registry, strict=False)
    if protocol not in reg.protocols:
        return
    parts = [p.name for p in reg.protocols[protocol].parts]
    names = dict.fromkeys([protocol, *parts, *(c for p in parts for c in reg.combinations_of(p))])
    stale = [n for n in names if n in reg.protocols and any(cal.get("references_digest") != references_digest(
        reg.enrolled(n)) for cal in reg.calibrations.get(n, {}).values())]
    if stale:
        err.print(f"[yellow]note:[/] the recorded open-set thresholds of {esc(', '.join(stale))} were made on the "
                  "instances before: recalibrate with "
                  + esc("; ".join(f"`forensics registry calibrate -p {n}`" for n in stale)), soft_wrap=True)


@app.command()
@handle_errors
def refresh(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", help="Only this generator (default: every one)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="Only this protocol (a combination: "
                                           "its protocols; default: every protocol).",
                                           autocompletion=complete_protocol),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Bring the user registry's copies of bundled generator files up to date after an upgrade.

    Enrolling an instance of a bundled generator, or keeping records for one (registry records, zoo
    enroll --conditions), copies its file into the user registry, where it hides the bundled file. When a
    new release changes the bundled file, each copy becomes that file again plus what the copy added:
    instances enrolled here, a family or description given here, and records under conditions the bundled
    file does not keep (dropped for an instance whose curve changed). A copy that adds nothing is removed.

    Example: forensics registry refresh
    """
    from forensics.api import refresh as run

    result = run(protocol=protocol, generator=name, registry=registry)
    if json_out:
        print_json(result.to_dict())
        return
    for c in result.copies:
        what = f"{c['protocol']}/{c['generator']}"
        if c["action"] == "current":
            out.print(f"{what}: up to date", markup=False)
            continue
        if c["action"] == "not-a-copy":
            err.print(f"{what}: not a copy of the bundled file of that name (no instance in common), which it "
                      f"hides: left as it is; enrol it under another name and remove this one", markup=False)
            continue
        kept = [f"{len(c['kept'])} instance(s)"] if c["kept"] else []
        kept += [f"records {', '.join(c['kept_records'])}"] if c["kept_records"] else []
        line = (f"{what}: copy removed (it added nothing to the bundled file)" if c["action"] == "removed" else
                f"{what}: updated from the bundled file ({len(c['from_below'])} instance(s) new or changed there); "
                f"kept {'; '.join(kept)}")
        if c["dropped_records"]:
            line += (f"; dropped records {', '.join(c['dropped_records'])} (the bundled file's instance changed): "
                     f"keep them again with `forensics zoo enroll --conditions …` or `forensics registry records`")
        out.print(line, markup=False)
    if not result.copies:
        out.print(f"no copies of bundled generator files in {result.registry}: nothing to refresh", markup=False)


@app.command("family")
@handle_errors
def family(
    name: str = typer.Argument(..., help="The enrolled generator."),
    family_name: Optional[str] = typer.Argument(None, metavar="[FAMILY]", help="The family to record: the model it "
                                                "shares with other enrolled generators (letters, digits, '_.+-'). "
                                                "Omit to show the family."),
    clear: bool = typer.Option(False, "--clear", help="Remove the generator's family."),
    protocol: Optional[str] = OPT_PROTOCOL,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Show, set or clear a generator's family: the model it shares with other enrolled generators.

    Generators of one family (one diffusion network under several samplers) can draw curves the matchers
    cannot tell apart; when calibration shows them taken for one another, the verdict names the family.
    Under a combination, the family is set under every protocol it combines. Nothing is re-enrolled. A
    generator of the bundled registry has its file copied into the user registry with the new family.
    Example: forensics registry family ddim ddpm-net --protocol mnist-effnet-lite0
    """
    from forensics.api import generator_family

    result = generator_family(name, family_name, clear=clear, protocol=protocol, registry=registry)
    if json_out:
        print_json(result.to_dict())
    else:
        now = result.family or "none"
        if family_name is None and not clear:
            out.print(f"{name} under {result.protocol}: family {now}", markup=False)
        elif result.changed:
            was = result.previous or ("none" if result.family else "not a valid family")  # a bad value reads as none
            out.print(f"{name} under {result.protocol}: family {was} → {now} (written under "
                      f"{', '.join(result.changed)} in {result.registry})", markup=False)
        else:
            out.print(f"{name} under {result.protocol}: family {now} already; nothing changed", markup=False)
    for problem in result.problems:
        err.print(f"[yellow]![/] {esc(problem)}")


# -- diff ---------------------------------------------------------------------------------------
@app.command()
@handle_errors
def diff(
    other: str = typer.Argument(..., help="The other registry state: a folder, or git:REV (the registry at a "
                                          "git revision, e.g. git:HEAD or git:main)."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """What two registry states disagree on: protocols, generators, instances, curves, provenance.

    Changes read from OTHER (old) to --registry (new). Example: forensics registry diff git:HEAD
    """
    from rich.table import Table

    from forensics.api import diff_registry
    from forensics.registry import registry_layers

    result = diff_registry(other, registry=registry)
    layers = registry_layers(registry)
    if other.startswith("git:") and Path(result.new) != layers[0]:  # the user registry is not in git
        err.print(f"[yellow]note:[/] {esc(layers[0])} is not in git: compared the bundled registry {esc(result.new)} "
                  f"at {esc(other[4:] or 'HEAD')} and now (a folder compares yours: forensics registry diff FOLDER)",
                  soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
        return
    if not result.changes:
        out.print(f"no differences: {result.old} → {result.new}", markup=False)
        return
    table = Table(title=f"{esc(result.old)} → {esc(result.new)}", title_justify="left")
    for col in ("change", "what", "protocol", "generator", "instance", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"added": "green", "removed": "red", "changed": "yellow"}
    for c in result.changes:
        table.add_row(f"[{colour[c['change']]}]{c['change']}[/]", esc(c["what"]), esc(c["protocol"] or ""),
                      esc(c["generator"] or ""), esc(c["instance"] or ""), esc(c["detail"]))
    out.print(table)


# -- evaluate / calibrate -------------------------------------------------------------------------
def _render_evaluation(result: EvaluationResult) -> None:
    from rich.table import Table

    from forensics.report.terminal import (
        OPEN_SET_COLUMN, evaluation_scope, left_out_text, open_set_text, pooled_line, resampling_line, stability_line,
    )

    for p in (p.to_dict() for p in result.protocols):
        at = esc(evaluation_scope(p))
        table = Table(title=f"{esc(p['protocol'])}: {p['n_instances']} instances of {p['n_generators']} generators "
                            f"— leave-one-out{at}", title_justify="left")
        for col in ("matcher", "LOO accuracy", "right / n", OPEN_SET_COLUMN,
                    "generator left out: unknown", "split (test_batch)"):
            table.add_column(col, justify="right" if col != "matcher" else "left", overflow="fold")
        for m in p["matchers"]:
            if m.get("error"):
                table.add_row(esc(m["matcher"]), "—", "—", f"[red]{esc(m['error'])}[/]", "", "")
                continue
            os_ = m.get("open_set") or {}
            lgo = m.get("leave_generator_out") or {}
            split = m.get("split") or {}
            table.add_row(
                esc(m["matcher"]), f"{m['loo_accuracy']:.3f}", f"{m['correct']}/{m['n']}",
                open_set_text(os_), left_out_text(lgo),
                f"{split['correct']}/{split['n']}" if "correct" in split else "—")
        out.print(table)
        sole = next(([lab for lab, row in zip(m["confusion"]["labels"], m["confusion"]["matrix"]) if not any(row)]
                     for m in p["matchers"] if not m.get("error") and m.get("confusion")), [])
        if sole:  # no instance of theirs left to name them: not counted (the generator left out tests them)
            out.print(f"leave-one-out leaves out {', '.join(sole)}: each has one instance, none left to name it "
                      "(enrol another run)", markup=False)
        for line in filter(None, [*map(pooled_line, p["matchers"]), *map(resampling_line, p["matchers"])]):
            out.print(line, markup=False)
        for m in p["matchers"]:
            if "calibration_stability" in m:
                out.print(stability_line(m["matcher"], m["calibration_stability"]), markup=False)
        for m in p["matchers"]:
            conf = m.get("confusion")
            if not conf or m.get("error"):
                continue
            labels, matrix = conf["labels"], conf["matrix"]
            ct = Table(title=f"{esc(p['protocol'])} · {esc(m['matcher'])}: confusion (rows true, columns predicted)",
                       title_justify="left")
            ct.add_column("true \\ predicted")
            for lab in labels:
                ct.add_column(esc(lab), justify="right")
            for i, lab in enumerate(labels):
                cells = [(f"[bold green]{v}[/]" if i == j and v else ("[red]" + str(v) + "[/]" if v else "[dim]·[/]"))
                         for j, v in enumerate(matrix[i])]
                ct.add_row(esc(lab), *cells)
            out.print(ct)


@app.command()
@handle_errors
def evaluate(
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="Evaluate this protocol only "
                                                                           "(default: every protocol)."),
    matcher: list[str] = typer.Option([], "--matcher", "-m", help="Matcher(s) to evaluate, repeatable "
                                                                  "(default: every registered matcher)."),
    stability: bool = typer.Option(False, "--stability", help="Also recalibrate with each reference left out "
                                   "in turn and report how far the open-set thresholds move (one calibration "
                                   "per reference: seconds to a minute per matcher)."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report here "
                                            "(each matcher's accuracy and confusion matrix)."),
    plots_dir: Optional[Path] = OPT_PLOTS,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Evaluate at this batch size m′: "
                                             "the instances redrawn from their per-image records, each held-out "
                                             "instance queried by 16 single sub-batches of m′."),
    condition: str = typer.Option("none", "--condition", help="Evaluate under this post-processing condition "
                                  "(jpeg90, resize2, resize0.5+jpeg75, …), from the instances' per-image records; "
                                  "conditions joined by / are batches processed in several ways (none/jpeg90: half "
                                  "each; none:3/jpeg90:1)."),
    operating_point: str = OPT_OPERATING_POINT,
):
    """Leave-one-out attribution over every enrolled instance, each matcher side by side.

    Reports LOO accuracy, n and the confusion matrix; the open-set verdicts (right, wrong, unknown);
    how often a generator left out entirely comes out "unknown"; and the paper's split where instances
    carry a role. Example: forensics registry evaluate --protocol he2024-cifar10-vitb16 --json
    """
    from forensics.api import evaluate as run

    check_reports(html_out, plots_dir)  # before the evaluation, not after
    progress, update = progress_bar()
    with progress:
        result = run(protocol=protocol, registry=registry, matchers=matcher, stability=stability, progress=update,
                     batch_size=batch_size, condition=condition, operating_point=operating_point)
    for name, why in result.skipped.items():
        err.print(f"[yellow]note:[/] {esc(name)} left out: {esc(why)}", soft_wrap=True)  # one line
    write_reports("evaluation_page", result, html_out, plots_dir)
    if json_out:
        print_json(result.to_dict())
    else:
        _render_evaluation(result)


def _interrupted_calibration(protocol: Optional[str], registry: Optional[Path], since: str) -> str:
    """What a calibration interrupted (Ctrl-C) since ``since`` left, as the error line says it: its file is
    written whole at the end, or not at all."""
    from forensics.errors import ForensicsError
    from forensics.registry import Registry
    from forensics.registry.schema import read_yaml
    from forensics.registry.store import CALIBRATION_FILE

    try:
        reg = Registry.open(registry, strict=False)
        cfile = reg.path / reg.resolve_protocol(protocol) / CALIBRATION_FILE
        created = str(read_yaml(cfile, str(cfile)).get("created", "")) if cfile.is_file() else ""
    except (ForensicsError, AttributeError):
        return "interrupted"
    if created >= since:
        return f"interrupted after the thresholds were recorded in {cfile}"
    return f"interrupted: no thresholds were recorded; {cfile} is as it was"


def _unknown_when(cal: dict) -> str:
    """A calibration's thresholds as the tests that make a verdict "unknown"."""
    tests = [f"score < {cal['score']:.4f}" if cal.get("score") is not None else None,
             f"margin < {cal['margin']:.4g}" if cal.get("margin") is not None else None,
             f"distance > {cal['distance_ratio']:.3f}× the named generator's spread"
             if cal.get("distance_ratio") is not None else None]
    tests = [t for t in tests if t]
    return " or ".join(tests) if tests else "never (no threshold applies)"


@app.command()
@handle_errors
def calibrate(
    protocol: Optional[str] = OPT_PROTOCOL,
    matcher: list[str] = typer.Option([], "--matcher", "-m", help="Matcher(s), repeatable (default: all; the "
                                      "others' recorded thresholds are kept while the references are unchanged)."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Calibrate the open-set thresholds ("unknown") from the references and record them in the registry.

    Writes <protocol>/calibration.yaml; matchers reuse it while the references are unchanged. Where the
    instances keep per-image records, one set of thresholds is chosen on every kept condition at 1/5 to all
    of the protocol's batch size, and answers every batch where it does not fall behind each cell's own
    thresholds on the cells' held-out queries (about 2 minutes on the default).
    Example: forensics registry calibrate --protocol he2024-cifar10-vitb16
    """
    from forensics.api import calibrate as run
    from forensics.match import lookalike_note
    from forensics.match.calibration import DEFAULT_OPERATING_POINT
    from forensics.provenance import utc_now

    progress, update = progress_bar()
    since = utc_now()
    try:
        with progress:
            result = run(protocol=protocol, registry=registry, matchers=matcher, progress=update)
    except KeyboardInterrupt:
        fail(_interrupted_calibration(protocol, registry, since), 130)
    records, path = result.matchers, result.file
    for mname, why in result.skipped.items():
        err.print(f"[yellow]note:[/] {esc(mname)} not calibrated: {esc(why)}")
    if json_out:
        print_json(result.to_dict())
    else:
        for mname, cal in records.items():
            if cal.get("calibrated"):
                pooled = cal.get("pooled") or {}
                on = (f"{pooled['n_answer']:,} + {pooled['n_unknown']:,} held-out queries of {pooled['n_cells']} "
                      f"(condition, batch size) cells pooled: {counted(len(pooled['conditions']), 'condition')} at "
                      f"{', '.join(map(str, pooled['sizes']))} images" if pooled.get("adopted") else
                      f"{cal['n_answer']} + {cal['n_unknown']} leave-one-out queries")
                out.print(f"{mname}: unknown when {_unknown_when(cal)} "
                          f"(balanced accuracy {cal['balanced_accuracy']:.3f} on {on})", markup=False)
                if pooled and not pooled.get("adopted"):
                    why = pooled.get("reason") or (
                        f"on every cell's held-out queries, {_shortfall(pooled)}")
                    out.print(f"  not pooled over its {pooled['n_cells']} (condition, batch size) cells: {why}; "
                              "each cell calibrated on its own", markup=False)
                for point, at in (cal.get("operating_points") or {}).items():
                    if point != cal.get("operating_point", DEFAULT_OPERATING_POINT):
                        out.print(f"  at the {point} operating point: unknown when {_unknown_when(at)} (answers "
                                  f"kept {at['answered_right']:.0%}, unknowns caught {at['unknown_right']:.0%})",
                                  markup=False)
                for g, seen in (cal.get("lookalikes") or {}).items():
                    out.print(f"  {g}: {lookalike_note(g, seen)}", markup=False)
                for g, taken in (cal.get("confusions") or {}).items():
                    named = ", ".join(f"{o} {k} of {n} times" for o, (k, n) in taken.items())
                    out.print(f"  {g}: held out, named {named}", markup=False)
            else:
                out.print(f"{mname}: not calibrated — {cal.get('reason')}", markup=False)
        err.print(f"written to {esc(path)}")


# -- the paper's curves ---------------------------------------------------------------------------
@app.command("import-paper")
@handle_errors
def import_paper(
    src: Path = typer.Argument(..., help="The paper-curves folder (holds Ffull_score.txt, model_ct_scores.txt)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the protocol's generators if present."),
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Import He et al. 2024's published CIFAR-10 curves as the protocol he2024-cifar10-vitb16.

    Example: forensics registry import-paper ../shared/reference/paper-curves --overwrite
    """
    from forensics.api import import_paper as run

    result = run(src, registry=registry, overwrite=overwrite)
    if json_out:
        print_json(result.to_dict())
    else:
        out.print(f"imported {result.n_curves} curves of {len(result.generators)} generators as {result.protocol} "
                  f"({_fmt(result.digest)}) into {result.registry}", markup=False)


@app.command("default")
@handle_errors
def default(
    protocol: Optional[str] = typer.Argument(None, help="Protocol to make the default (omit to print it)."),
    registry: Optional[Path] = OPT_REGISTRY,
):
    """Print or set the registry's default protocol.

    Example: forensics registry default he2024-cifar10-vitb16
    """
    from forensics.api import open_registry
    from forensics.errors import RegistryError
    from forensics.registry import Registry

    if protocol is None:
        out.print(open_registry(registry).default_protocol or "none", markup=False)
        return
    reg = Registry.open(registry, strict=False)  # a default naming a protocol that is gone is what this mends
    others = [p for p in reg.problems if ": default_protocol: " not in p]
    if others:
        more = f" (and {len(others) - 1} more; run `forensics registry validate`)" if len(others) > 1 else ""
        raise RegistryError(others[0] + more)
    reg.set_default(protocol)
    out.print(protocol, markup=False)
