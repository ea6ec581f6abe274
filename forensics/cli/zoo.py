"""``forensics zoo …``: the generator zoo of the embedded default — list it, enrol it, rebuild it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from forensics.cli.common import (
    OPT_DEVICE, OPT_JSON, OPT_PROTOCOL, OPT_REGISTRY, OPT_WEIGHTS, err, handle_errors, out, print_json,
)
from forensics.errors import UsageError

app = typer.Typer(name="zoo", no_args_is_help=True,
                  help="The generator zoo trained on the embedded MNIST split: list, enrol, retrain, resample.")

_GENERATOR = typer.Option(None, "--generator", "-g", help="Only this generator (repeatable; default: all).")
_SAMPLES = typer.Option(None, "--samples", help="Sample-set folder (default: the registry's "
                                                "mnist-effnet-lite0/samples).")


def _folder(samples: Path | None, registry: Path | None) -> Path:
    from forensics.zoo.catalog import samples_dir

    return samples.expanduser() if samples is not None else samples_dir(registry)


def _enrolled(reg, protocol: str) -> dict[str, set[str]]:
    """generator → the input hashes of its enrolled instances under ``protocol``."""
    return {name: {i.provenance.get("input_sha256") for i in entry.instances}
            for name, entry in reg.generator_entries(protocol).items()}


@app.command("list")
@handle_errors
def list_(samples: Optional[Path] = _SAMPLES, protocol: Optional[str] = OPT_PROTOCOL,
          registry: Optional[Path] = OPT_REGISTRY, json_out: bool = OPT_JSON):
    """List the zoo's sample sets with their quality figures and whether each is enrolled in a protocol.

    Example: forensics zoo list --protocol mnist-effnet-lite0
    """
    from rich.table import Table

    from forensics.io.images import load_images
    from forensics.registry.store import Registry
    from forensics.zoo.catalog import read_manifest

    folder = _folder(samples, registry)
    instances = read_manifest(folder)
    reg = Registry.open(registry)
    pname = reg.resolve_protocol(protocol)
    enrolled = _enrolled(reg, pname)
    rows = []
    for z in instances:
        digest = load_images(z.path)[1] if z.path.is_file() else None
        rows.append({"generator": z.generator, "instance": z.instance, "seed": z.seed, "file": str(z.path),
                     "present": z.path.is_file(), "quality": z.quality,
                     "enrolled": digest is not None and digest in enrolled.get(z.generator, set())})
    if json_out:
        print_json({"schema": "forensics.zoo-list/1", "samples": str(folder), "protocol": pname, "instances": rows})
        return
    table = Table(title=f"zoo sample sets in {folder}", title_justify="left")
    for col, justify in (("generator", "left"), ("instance", "left"), ("seed", "right"), ("fd_pca", "right"),
                         ("nn_ratio", "right"), ("ct_pixel", "right"), (f"enrolled in {pname}", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        q = r["quality"]
        state = "yes" if r["enrolled"] else ("[red]file missing[/]" if not r["present"] else "no")
        table.add_row(r["generator"], r["instance"], str(r["seed"]), *(str(q.get(k, "—")) for k in
                                                                       ("fd_pca", "nn_ratio", "ct_pixel")), state)
    out.print(table)
    if instances:
        ref = instances[0].quality.get("fd_pca_test")
        out.print(f"fd_pca, nn_ratio, ct_pixel: pixel-space quality against T (forensics/zoo/README.md); "
                  f"a fresh real set scores fd_pca {ref}, nn_ratio 1, ct_pixel ≈ 0.")


@app.command()
@handle_errors
def enroll(
    protocol: Optional[str] = OPT_PROTOCOL,
    generator: Optional[list[str]] = _GENERATOR,
    instance: Optional[list[str]] = typer.Option(None, "--instance", "-i",
                                                 help="Enrol this instance (repeatable; default: run0, run1, run2; "
                                                      "'heldout' is the query set and best kept out)."),
    samples: Optional[Path] = _SAMPLES,
    device: str = OPT_DEVICE,
    weights: Optional[str] = OPT_WEIGHTS,
    registry: Optional[Path] = OPT_REGISTRY,
    json_out: bool = OPT_JSON,
):
    """Enrol the zoo's sample sets in a protocol; sets already enrolled there are skipped.

    One encoder serves every set, so enrolling the 27 reference instances costs one start-up. Under a
    combination, the sets are enrolled under each protocol it combines.
    Example: forensics zoo enroll --protocol mnist-effnet-lite0
    """
    from forensics.io.images import load_images
    from forensics.engine import Engine, one_encoder_weights
    from forensics.registry.store import Registry
    from forensics.zoo.catalog import read_manifest, select

    folder = _folder(samples, registry)
    chosen = select(read_manifest(folder), generator, instance)
    reg = Registry.open(registry)
    pname = reg.resolve_protocol(protocol)
    one_encoder_weights(reg.protocol(pname), weights)
    parts = reg.protocol(pname).parts
    done, skipped = [], 0
    for proto in parts:  # a combination reads its protocols' instances: enrol under each
        enrolled = _enrolled(reg, proto.name)
        todo = []
        for z in chosen:
            if not z.path.is_file():
                raise _missing(z.path)
            images, digest = load_images(z.path)
            if digest in enrolled.get(z.generator, set()):
                continue
            if len(images) < proto.batch_size:
                raise UsageError(f"{z.path} holds {len(images)} images; protocol {proto.name} needs batches of "
                                 f"{proto.batch_size}")
            todo.append((z, images, digest))
        skipped += len(chosen) - len(todo)
        if not todo:
            continue
        engine = Engine(proto, device=device, weights=weights, shipped_dir=reg.reference_dir(proto.name))
        for z, images, digest in todo:
            fps = [c.fingerprint for c in engine.curves(images, what=f"{z.generator}/{z.instance}", partial=False)]
            command = ["forensics", "zoo", "enroll", "--protocol", proto.name, "--generator", z.generator,
                       "--instance", z.instance]
            provenance = {"input_sha256": digest, "n_images": int(len(images)), "input": str(z.path),
                          "command": " ".join(shlex.quote(a) for a in command),
                          "note": f"zoo instance {z.generator}/{z.instance}, seed {z.seed}"}
            ids = reg.enroll(proto.name, z.generator, fps, provenance)
            done.append({"protocol": proto.name, "generator": z.generator, "instance": z.instance, "ids": ids})
            if not json_out:
                err.print(f"enrolled {z.generator}/{z.instance} under {proto.name} as {', '.join(ids)}")
    if json_out:
        print_json({"schema": "forensics.zoo-enroll/1", "protocol": pname, "enrolled": done, "skipped": skipped})
    else:
        where = pname if len(parts) == 1 else f"{pname} ({', '.join(p.name for p in parts)})"
        out.print(f"{len(done)} zoo set(s) enrolled under {where}; {skipped} already there")


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

    from forensics.io.images import load_images
    from forensics.engine import Engine, load_reference_set
    from forensics.protocol import part_spans
    from forensics.registry.store import Registry
    from forensics.zoo.catalog import read_manifest, select
    from forensics.zoo.quality import encoder_quality

    folder = _folder(samples, registry)
    instances = read_manifest(folder)
    instances = select(instances, generator, sorted({z.instance for z in instances}))
    reg = Registry.open(registry)
    pname = reg.resolve_protocol(protocol)
    layers = list(reg.protocol(pname).layers)
    name = layer if layer is not None else layers[-1]
    if name not in layers:
        raise UsageError(f"protocol {pname} has no layer {name!r}; it has {', '.join(layers)}")
    at = layers.index(name)
    # under a combination, the protocol that holds the layer, and the layer's index there
    proto, index = next((part, at - a) for part, a, b in part_spans(reg.protocol(pname)) if a <= at < b)
    engine = Engine(proto, device=device, weights=weights, shipped_dir=reg.reference_dir(proto.name))
    reference = engine.reference_side()[index]
    test = engine.embed(load_reference_set(proto.test), "held-out set P_n", cache=True,
                        images_hash=proto.test.sha256)[index]
    sets = []
    for z in instances:
        if not z.path.is_file():
            raise _missing(z.path)
        sets.append(engine.embed(load_images(z.path)[0], f"{z.generator}/{z.instance}")[index])
    rows = [{"generator": z.generator, "instance": z.instance, **q}
            for z, q in zip(instances, encoder_quality(reference, sets, test))]
    if json_out:
        print_json({"schema": "forensics.zoo-quality/1", "protocol": pname, "layer": name, "instances": rows})
        return
    table = Table(title=f"zoo quality in {pname}, layer {name} (P_n, a fresh real set: fd "
                        f"{rows[0]['fd_test'] if rows else '—'}, nn_ratio 1)", title_justify="left")
    for col, justify in (("generator", "left"), ("instance", "left"), ("fd", "right"), ("nn_ratio", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        table.add_row(r["generator"], r["instance"], f"{r['fd']:.4g}", f"{r['nn_ratio']:.3f}")
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
):
    """Attribute every generator's held-out set (never enrolled) against the protocol's references.

    For each set and matcher: the top candidate, the runner-up, the score and margin, and the open-set
    verdict with the registry's calibrated thresholds; with each set's share of P_n counted.
    Example: forensics zoo heldout --protocol mnist-effnet-lite0
    """
    import numpy as np
    from rich import box
    from rich.table import Table

    from forensics.io.images import load_images
    from forensics.match.matcher import available_matchers, make_matcher
    from forensics.engine import make_engine
    from forensics.registry.store import Registry
    from forensics.zoo.catalog import read_manifest, select

    folder = _folder(samples, registry)
    chosen = select(read_manifest(folder), generator, ["heldout"])
    reg = Registry.open(registry)
    pname = reg.resolve_protocol(protocol)
    proto = reg.protocol(pname)
    references = reg.enrolled(pname)
    if not references:
        raise UsageError(f"protocol {pname} has no enrolled references; run `forensics zoo enroll --protocol {pname}`")
    names = list(matcher) if matcher else available_matchers()
    unknown = sorted(set(names) - set(available_matchers()))
    if unknown:
        raise UsageError(f"unknown matcher {unknown[0]!r}; `forensics plugins` lists the installed ones")
    matchers = {n: make_matcher(n, calibration=reg.calibration(pname, n)).fit(references) for n in names}
    engine = make_engine(proto, reference_dir=reg.reference_dir, device=device, weights=weights)
    rows = []
    for z in chosen:
        if not z.path.is_file():
            raise _missing(z.path)
        curve = engine.curves(load_images(z.path)[0], what=f"{z.generator}/{z.instance}", partial=False)[0]
        counted = [lv.counted_weight for lv in curve.layers if lv.counted_weight is not None]
        row = {"generator": z.generator, "file": str(z.path), "curve": list(curve.fingerprint.values),
               "counted_weight_mean": float(np.mean(counted)) if counted else None, "matchers": {}}
        for n, m in matchers.items():
            a = m.attribute(curve.fingerprint.vector())
            row["matchers"][n] = {"top": a.candidates[0].generator, "top_right": a.candidates[0].generator == z.generator,
                                  "runner_up": a.candidates[1].generator if len(a.candidates) > 1 else None,
                                  **a.to_dict()}
        rows.append(row)
    summary = {n: {"top_right": sum(r["matchers"][n]["top_right"] for r in rows),
                   "verdict_right": sum(r["matchers"][n]["verdict"] == r["generator"] for r in rows),
                   "verdict_unknown": sum(r["matchers"][n]["verdict"] is None for r in rows),
                   "verdict_wrong": sum(r["matchers"][n]["verdict"] not in (None, r["generator"]) for r in rows),
                   "n": len(rows)} for n in names}
    if json_out:
        print_json({"schema": "forensics.zoo-heldout/1", "protocol": pname, "sets": rows, "summary": summary})
        return
    for n in names:
        # compact (no vertical rules) so that the eight columns fit an 80-column terminal unabridged
        table = Table(title=f"held-out sets under {pname}, matcher {n}", title_justify="left",
                      box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False)
        for col, justify in (("set", "left"), ("top", "left"), ("score", "right"), ("margin", "right"),
                             # distance in the top candidate's spreads; the share of P_n's weight counted
                             ("runner-up", "left"), ("dist.", "right"), ("verdict", "left"), ("P_n", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for r in rows:
            a = r["matchers"][n]
            top = a["top"] if a["top_right"] else f"[red]{a['top']}[/]"
            verdict = a["verdict"] or "unknown"
            if a["verdict"] not in (None, r["generator"]):
                verdict = f"[red]{verdict}[/]"
            if a["lookalikes"]:  # only a named verdict carries them
                verdict += "*"
            margin = "—" if a["margin"] is None else f"{a['margin']:+.3g}"
            cw = "—" if r["counted_weight_mean"] is None else f"{r['counted_weight_mean']:.2f}"
            distance = "—" if a["distance_ratio"] is None else f"{a['distance_ratio']:.2f}×"
            table.add_row(r["generator"], top, f"{a['score']:.4f}", margin, a["runner_up"] or "—", distance, verdict, cw)
        out.print(table)
        if any(r["matchers"][n]["lookalikes"] for r in rows):
            out.print("* not exclusive: at calibration, a left-out generator's runs were named this verdict "
                      "(`forensics registry calibrate` lists them)")
        s = summary[n]
        out.print(f"{n}: top candidate right {s['top_right']}/{s['n']}; verdicts: {s['verdict_right']} right, "
                  f"{s['verdict_unknown']} unknown, {s['verdict_wrong']} wrong")


def _missing(path: Path) -> UsageError:
    return UsageError(f"zoo sample set {path} is missing; rebuild it with `forensics zoo train` "
                      f"(see forensics/zoo/README.md)")


@app.command()
@handle_errors
def train(
    generator: str = typer.Argument(..., help="vae, dcgan, sngan, pixelcnn, gmm, kde-copier, ddpm-net (the diffusion "
                                              "network), or a sampler of it: ddpm, ddim, pndm."),
    seed: int = typer.Option(0, "--seed", help="Seed: 0, 1, 2 make run0..run2, 3 makes heldout."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Override the training iterations (resumes)."),
    threads: int = typer.Option(1, "--threads", help="Torch threads (1 reproduces the shipped sets bit for bit)."),
    samples: Optional[Path] = _SAMPLES,
    ckpt_dir: Optional[Path] = typer.Option(None, "--ckpt-dir", help="Checkpoints (default $FORENSICS_ZOO_CKPT "
                                                                     "or /tmp/zoo); training resumes from them."),
    registry: Optional[Path] = OPT_REGISTRY,
):
    """Train one zoo generator on T (resuming from its checkpoint) and write its sample set.

    Example: forensics zoo train vae --seed 1
    """
    import torch

    from forensics.zoo import train as zoo_train

    if generator not in zoo_train.GENERATORS:
        raise UsageError(f"unknown zoo generator {generator!r}; choose from {', '.join(zoo_train.GENERATORS)}")
    torch.set_num_threads(threads)
    folder = _folder(samples, registry)
    meta = zoo_train.run(generator, seed, folder, None, ckpt_dir or zoo_train.DEFAULT_CKPT,
                         folder.parent / "models" / "ddpm.safetensors", {"iters": iters} if iters else {})
    if meta is None:
        out.print(f"trained {generator}; its weights are in {folder.parent / 'models'}")
    else:
        out.print(f"wrote {folder / meta['file']} (quality {meta['quality']}); run `forensics zoo manifest` "
                  f"to record it")


@app.command()
@handle_errors
def manifest(samples: Optional[Path] = _SAMPLES, registry: Optional[Path] = OPT_REGISTRY):
    """Rewrite MANIFEST.json from the sample sets' records (checks every file's sha256).

    Example: forensics zoo manifest
    """
    from forensics.zoo import train as zoo_train

    try:
        path = zoo_train.write_manifest(_folder(samples, registry))
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    out.print(f"wrote {path}")
