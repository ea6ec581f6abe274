"""``forensics zoo …``: the generator zoo of the embedded default — list it, enrol it, rebuild it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forensics.cli.common import (
    OPT_DEVICE, OPT_JSON, OPT_PROTOCOL, OPT_REGISTRY, OPT_WEIGHTS, err, esc, handle_errors, out, print_json,
)
from forensics.cli.common import progress_bar
from forensics.cli.common import OPT_CONDITIONS, OPT_ENGINE, OPT_OPERATING_POINT, OPT_RAY_ADDRESS
from forensics.errors import UsageError

app = typer.Typer(name="zoo", no_args_is_help=True,
                  help="The generator zoo trained on the embedded MNIST split: list, enrol, retrain, resample.\n\n"
                       "Example: forensics zoo list")

_GENERATOR = typer.Option(None, "--generator", "-g", help="Only this generator (repeatable; default: all).")
_SAMPLES = typer.Option(None, "--samples", help="Sample-set folder (default: the registry's "
                                                "mnist-effnet-lite0/samples).")


def _folder(samples: Path | None, registry: Path | None) -> Path:
    """The sample-set folder that ``train`` and ``manifest`` write: ``--samples``, else the one in the
    registry written to (``--registry``, ``$FORENSICS_REGISTRY``, else the user registry, never the bundled
    one)."""
    from forensics.registry import registry_layers
    from forensics.zoo.catalog import samples_dir

    return samples.expanduser() if samples is not None else samples_dir(registry_layers(registry)[0])


@app.command("list")
@handle_errors
def list_(samples: Optional[Path] = _SAMPLES, protocol: Optional[str] = OPT_PROTOCOL,
          registry: Optional[Path] = OPT_REGISTRY, json_out: bool = OPT_JSON):
    """List the zoo's sample sets with their quality figures and whether each is enrolled in a protocol.

    Example: forensics zoo list --protocol mnist-effnet-lite0
    """
    from rich.table import Table

    from forensics.api import zoo_list

    result = zoo_list(protocol=protocol, registry=registry, samples=samples)
    if json_out:
        print_json(result.to_dict())
        return
    folder, pname, rows = result.samples, result.protocol, result.rows
    table = Table(title=f"zoo sample sets in {esc(folder)}", title_justify="left")
    for col, justify in (("generator", "left"), ("instance", "left"), ("seed", "right"), ("fd_pca", "right"),
                         ("nn_ratio", "right"), ("ct_pixel", "right"), (f"enrolled in {esc(pname)}", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        q = r["quality"]
        state = "yes" if r["enrolled"] else ("[red]file missing[/]" if not r["present"] else "no")
        table.add_row(esc(r["generator"]), esc(r["instance"]), esc(r["seed"]), *(esc(q.get(k, "—")) for k in
                                                                       ("fd_pca", "nn_ratio", "ct_pixel")), state)
    out.print(table)
    if rows:
        ref = rows[0]["quality"].get("fd_pca_test")
        out.print(f"fd_pca, nn_ratio, ct_pixel: pixel-space quality against T (forensics/zoo/README.md); "
                  f"a fresh real set scores fd_pca {ref}, nn_ratio 1, ct_pixel ≈ 0.", markup=False)


@app.command()
@handle_errors
def enroll(
    protocol: Optional[str] = OPT_PROTOCOL,
    generator: Optional[list[str]] = _GENERATOR,
    instance: Optional[list[str]] = typer.Option(None, "--instance", "-i",
                                                 help="Enrol this instance (repeatable; default: every run<seed>; "
                                                      "'heldout' is the query set and best kept out)."),
    samples: Optional[Path] = _SAMPLES,
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
    engine: str = OPT_ENGINE,
    ray_address: Optional[str] = OPT_RAY_ADDRESS,
    conditions: str = OPT_CONDITIONS,
    rescore: bool = typer.Option(False, "--rescore", help="Compute the records the enrolled sets keep under "
                                 "--conditions again, scored against T and P_n as this version scores them, and "
                                 "replace them all at once (records kept by an earlier version)."),
):
    """Enrol the zoo's sample sets in a protocol, each with per-image records under --conditions.

    A set enrolled there already is given the records it lacks under --conditions (checked to give back
    its enrolled curve), else skipped: `--conditions jpeg60` keeps a new condition for every enrolled zoo
    instance. One encoder serves every set, so the reference instances cost one start-up. Under a
    combination, the sets are enrolled under each protocol it combines. With --rescore the records kept
    under --conditions are scored again (resampled and re-encoded images against T and P_n put through the
    same processing) and replaced, every instance of a protocol at once.
    Example: forensics zoo enroll --protocol mnist-effnet-lite0
    """
    from forensics.api import zoo_enroll

    def tell(done: dict) -> None:
        if not json_out:
            err.print(f"enrolled {done['generator']}/{done['instance']} under {done['protocol']} as "
                      f"{', '.join(done['ids'])}", markup=False)

    progress, update = progress_bar()
    with progress:
        result = zoo_enroll(protocol=protocol, registry=registry, generators=generator, instances=instance,
                            samples=samples, device=device, weights=weights, on_enrolled=tell, progress=update,
                            engine=engine, ray_address=ray_address, conditions=conditions, rescore=rescore)
    for line in result.warnings:  # (on stderr, also beside --json: its "warnings" say the same)
        err.print(f"[yellow]warning:[/] {esc(line)}", soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
    else:
        where = result.protocol if len(result.parts) == 1 else f"{result.protocol} ({', '.join(result.parts)})"
        added = sorted({c for d in result.recorded if not d.get("rescored") for c in d["conditions"]})
        again = sorted({c for d in result.recorded if d.get("rescored") for c in d["conditions"]})
        n_again = sum(1 for d in result.recorded if d.get("rescored"))
        out.print(f"{len(result.enrolled)} zoo set(s) enrolled under {where}"
                  + (f"; {len(result.recorded) - n_again} given records under {', '.join(added)}" if added else "")
                  + (f"; {n_again} scored again under {', '.join(again)}" if again else "")
                  + f"; {result.skipped} already there"
                  + (f"; the digests of their images kept for {result.hashed} instance(s)" if result.hashed else ""),
                  markup=False)


@app.command()
@handle_errors
def quality(
    protocol: Optional[str] = OPT_PROTOCOL,
    generator: Optional[list[str]] = _GENERATOR,
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Protocol layer (default: the deepest; "
                                        "under a combination, its last protocol's)."),
    samples: Optional[Path] = _SAMPLES,
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """How close each zoo set sits to T in a protocol encoder's space: Fréchet distance and nearest-neighbour ratio.

    Measured in the statistic's own space of one layer (PCA fitted on T; unit vectors for the cosine
    distance), against P_n as the fresh-data reference; under a combination, a layer named
    <protocol>/<layer>. Example: forensics zoo quality --protocol mnist-vit
    """
    from rich.table import Table

    from forensics.api import zoo_quality

    progress, update = progress_bar()
    with progress:
        result = zoo_quality(protocol=protocol, registry=registry, generators=generator, layer=layer,
                             samples=samples, device=device, weights=weights, progress=update)
    if json_out:
        print_json(result.to_dict())
        return
    pname, name, rows = result.protocol, result.layer, result.rows
    table = Table(title=f"zoo quality in {esc(pname)}, layer {esc(name)} (P_n, a fresh real set: fd "
                        f"{rows[0]['fd_test'] if rows else '—'}, nn_ratio 1)", title_justify="left")
    for col, justify in (("generator", "left"), ("instance", "left"), ("fd", "right"), ("nn_ratio", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        table.add_row(esc(r["generator"]), esc(r["instance"]), f"{r['fd']:.4g}", f"{r['nn_ratio']:.3f}")
    out.print(table)


@app.command()
@handle_errors
def heldout(
    protocol: Optional[str] = OPT_PROTOCOL,
    generator: Optional[list[str]] = _GENERATOR,
    matcher: Optional[list[str]] = typer.Option(None, "--matcher", "-m",
                                                help="Matcher(s), repeatable (default: every registered one)."),
    samples: Optional[Path] = _SAMPLES,
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
    operating_point: str = OPT_OPERATING_POINT,
):
    """Attribute every generator's held-out set (never enrolled) against the protocol's references.

    For each set and matcher: the top candidate, the runner-up, the score and margin, and the open-set
    verdict with the registry's calibrated thresholds; with each set's share of P_n counted.
    Example: forensics zoo heldout --protocol mnist-effnet-lite0
    """
    from rich import box
    from rich.table import Table

    from forensics.api import zoo_heldout
    from forensics.match.calibration import DEFAULT_OPERATING_POINT
    from forensics.results import members_text

    progress, update = progress_bar()
    with progress:
        result = zoo_heldout(protocol=protocol, registry=registry, generators=generator, matchers=matcher,
                             samples=samples, device=device, weights=weights, progress=update,
                             operating_point=operating_point)
    if json_out:
        print_json(result.to_dict())
        return
    pname, names = result.protocol, result.matchers
    rows = [s.to_dict() for s in result.sets]
    for n in names:
        # compact (no vertical rules) so that the eight columns fit an 80-column terminal unabridged
        point = "" if operating_point == DEFAULT_OPERATING_POINT else f", {operating_point} operating point"
        table = Table(title=f"held-out sets under {pname}, matcher {n}{point}", title_justify="left",
                      box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False)
        for col, justify in (("set", "left"), ("top", "left"), ("score", "right"), ("margin", "right"),
                             # distance in the top candidate's spreads; the share of P_n's weight counted
                             ("runner-up", "left"), ("dist.", "right"), ("verdict", "left"), ("P_n", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        families: dict[str, set[str]] = {}
        for r in rows:
            a = r["matchers"][n]
            top = esc(a["top"]) if a["top_right"] else f"[red]{esc(a['top'])}[/]"
            family = a.get("family") if a["verdict"] is None else None   # named, but not which of its members
            verdict = esc(a["verdict"] or family or "unknown") + ("†" if family else "")
            if family:
                families.setdefault(family, set()).update(a["family_members"])
            if a["verdict"] not in (None, r["generator"]) or (family and r["generator"] not in a["family_members"]):
                verdict = f"[red]{verdict}[/]"
            if a["lookalikes"]:  # only a verdict that named a generator or family carries them
                verdict += "*"
            margin = "—" if a["margin"] is None else f"{a['margin']:+.3g}"
            cw = "—" if r["counted_weight_mean"] is None else f"{r['counted_weight_mean']:.2f}"
            distance = "—" if a["distance_ratio"] is None else f"{a['distance_ratio']:.2f}×"
            table.add_row(esc(r["generator"]), top, f"{a['score']:.4f}", margin, esc(a["runner_up"] or "—"), distance,
                          verdict, cw)
        out.print(table)
        if any(r["matchers"][n]["lookalikes"] for r in rows):
            out.print("* not exclusive: at calibration, a left-out generator's runs were named this verdict "
                      "(`forensics registry calibrate` lists them)")
        if families:
            named = "; ".join(f"{f} ({members_text(sorted(m))})" for f, m in sorted(families.items()))
            out.print(f"† a family named, not which of its generators (its samplers are not told apart): {named}",
                      markup=False)
        s = result.summary(n)
        by_family = f"{s['verdict_family']} its family (not which generator), " if s["verdict_family"] else ""
        out.print(f"{n}: top candidate right {s['top_right']}/{s['n']}; verdicts: {s['verdict_right']} right, "
                  f"{by_family}{s['verdict_unknown']} unknown, {s['verdict_wrong']} wrong", markup=False)


@app.command()
@handle_errors
def train(
    generator: str = typer.Argument(..., help="vae, dcgan, sngan, pixelcnn, gmm, kde-copier, ddpm-net (the diffusion "
                                              "network), or a sampler of it: ddpm, ddim, pndm."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed S makes run<S> (a reference run), but 3 makes heldout."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Override the training iterations (resumes)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads (1 reproduces the shipped sets bit for "
                                "bit)."),
    samples: Optional[Path] = _SAMPLES,
    ckpt_dir: Optional[Path] = typer.Option(None, "--ckpt-dir", help="Checkpoints (default $FORENSICS_ZOO_CKPT "
                                                                     "or /tmp/zoo); training resumes from them."),
    registry: Optional[Path] = OPT_REGISTRY,
    force: bool = typer.Option(False, "--force", help="Write even where the set (or the network's weights) "
                               "exists; in the user registry a new set hides the bundled one, which stays."),
):
    """Train one zoo generator on T (resuming from its checkpoint) and write its sample set.

    The set goes to the user registry (or --registry, --samples), never into the bundled one, and an
    existing set is never overwritten without --force. Example: forensics zoo train vae --seed 1
    """
    import torch

    from forensics.registry import registry_layers
    from forensics.zoo.catalog import samples_dir
    from forensics.zoo.training import generators as zoo_train

    if generator not in zoo_train.GENERATORS:
        raise UsageError(f"unknown zoo generator {generator!r}; choose from {', '.join(zoo_train.GENERATORS)}")
    folder = _folder(samples, registry)
    # read from the nearest layer that has them (the bundled network), written to the first
    folders = [folder] + ([samples_dir(root) for root in registry_layers(registry)[1:]] if samples is None else [])
    network = "mnist-dup.safetensors" if generator == "ddpm-dup" else "ddpm.safetensors"
    if generator in ("ddpm-net", "ddpm-dup"):
        target = folder.parent / "models" / network
        existing = [f.parent / "models" / network for f in folders]
    else:
        target = folder / generator / f"{zoo_train.instance_name(seed)}.npz"
        existing = [f / generator / target.name for f in folders]
    existing = [f for f in existing if f.is_file()]
    if existing and not force:  # checked before minutes of training
        raise UsageError(f"{existing[0]} exists and `zoo train` does not overwrite it; pass --force to write a new "
                         f"one to {target}" + (" (it then hides the bundled one)" if existing[0] != target else ""))
    networks = [f.parent / "models" / network for f in folders]
    weights = target if target.suffix != ".npz" else next((m for m in networks if m.is_file()), networks[0])
    torch.set_num_threads(threads)
    meta = zoo_train.run(generator, seed, folder, None, ckpt_dir or zoo_train.DEFAULT_CKPT, weights,
                         {"iters": iters} if iters else {})
    if meta is None:
        out.print(f"trained {generator}; its weights are in {folder.parent / 'models'}", markup=False)
    else:
        out.print(f"wrote {folder / meta['file']} (quality {meta['quality']}); run `forensics zoo manifest` "
                  f"to record it", markup=False)


@app.command()
@handle_errors
def manifest(samples: Optional[Path] = _SAMPLES, registry: Optional[Path] = OPT_REGISTRY):
    """Rewrite MANIFEST.json from the sample sets' records (checks every file's sha256).

    Example: forensics zoo manifest
    """
    from forensics.zoo.catalog import write_manifest

    folder = _folder(samples, registry)
    if not any(folder.glob("*/*.json")):  # a fresh user registry: nothing retrained yet
        raise UsageError(f"no zoo sample sets recorded in {folder}: `forensics zoo train GENERATOR --seed N` "
                         "writes them there (the bundled sets are recorded already); --samples names another folder")
    try:
        path = write_manifest(folder)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    out.print(f"wrote {path}", markup=False)
