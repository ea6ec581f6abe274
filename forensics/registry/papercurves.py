"""The paper's own fingerprints as a protocol: He et al. 2024's published CIFAR-10 C_T curves.

The public release of the official code (github ``JackHe313/LayerChoice``, commit "submited version",
2024-07-31) holds the C_T-per-layer curves of their fingerprinting experiment: 6 generators (BigGAN-Deep,
ContraGAN, SNGAN — three training runs each — and the ``google/ddpm-cifar10-32`` network sampled with
DDPM, DDIM and PNDM, three sampling runs each), one curve per batch of 500 images. This module turns
``Ffull_score.txt`` (2 ``*_train_batch`` references and 1 ``*_test_batch`` query per generator) into the
registry protocol :data:`PROTOCOL_NAME`, whose record says exactly how the curves were made, with the
run id of each curve (from ``model_ct_scores.txt``) and its role in the paper's split in its provenance.

The bundled registry holds the result of the import, and :func:`export_paper` writes the release's two
files it came from back out of it, byte for byte (checked against the SHA-256 the import recorded), so
the project can always show that its curves are the published ones. A user who has CIFAR-10 and the
ViT-B/16 in21k weights can attribute against it::

    forensics registry import-paper PAPER_CURVES_DIR      # the release's files; registry/ already holds it
    FORENSICS_CIFAR10_DIR=~/data forensics attribute my_500_images/ --protocol he2024-cifar10-vitb16
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics.errors import RegistryError, UsageError
from forensics.io.atomic import write_atomic
from forensics.io.hashing import sha256_bytes, sha256_file
from forensics.protocol import DataRef, EncoderRef, Fingerprint, Protocol, StatisticRef

PROTOCOL_NAME = "he2024-cifar10-vitb16"
REPOSITORY = "JackHe313/LayerChoice"
COMMIT = 'commit "submited version", 2024-07-31 (public release of the official code)'
CURVES_FILE = "Ffull_score.txt"
RUNS_FILE = "model_ct_scores.txt"
FID_FILE = "fid_scores_fid_score.txt"
SMALL_FILE = "Fsmall_score.txt"

# Their class names → registry generator names and descriptions.
GENERATORS = {
    "BigGAN": ("BigGAN", "BigGAN-Deep trained on CIFAR-10 (PyTorch-StudioGAN); 3 training runs"),
    "ContraGAN": ("ContraGAN", "ContraGAN trained on CIFAR-10 (PyTorch-StudioGAN); 3 training runs"),
    "SNGAN": ("SNGAN", "SNGAN trained on CIFAR-10 (PyTorch-StudioGAN); 3 training runs"),
    "ddpm": ("DDPM", "google/ddpm-cifar10-32 sampled with the DDPM sampler; 3 sampling runs"),
    "ddim": ("DDIM", "google/ddpm-cifar10-32 sampled with the DDIM sampler; 3 sampling runs"),
    "pndm": ("PNDM", "google/ddpm-cifar10-32 sampled with the PNDM sampler; 3 sampling runs"),
}

# The generators that share a model (the release's three samplers of one diffusion network): their family.
FAMILIES = {"DDPM": "ddpm-cifar10-32", "DDIM": "ddpm-cifar10-32", "PNDM": "ddpm-cifar10-32"}

_LINE = re.compile(r"^\s*([A-Za-z0-9_.+-]+?)\s*:?\s*\[(.*)\]\s*$")


def protocol() -> Protocol:
    """The protocol record of the published curves (ALGORITHMS.md §3 and the release's README)."""
    return Protocol(
        name=PROTOCOL_NAME,
        description="He et al. 2024 published fingerprints: CIFAR-10, ViT-B/16 in21k CLS per block, C_T per layer",
        train=DataRef(dataset="cifar10", split="train", count=50000, sha256=None),
        test=DataRef(dataset="cifar10", split="test", count=10000, sha256=None),
        encoder=EncoderRef(
            name="vit_base_patch16_224.orig_in21k",
            weights=None,
            weights_source="timm vit_base_patch16_224.orig_in21k = google/vit-base-patch16-224-in21k",
            layers=tuple(f"blocks.{i}" for i in range(12)),
            pooling="cls",
            preprocessing={"size": 224, "resize": 256, "interpolation": "bilinear",
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        ),
        statistic=StatisticRef("ct", {"k": 10, "distance": "cosine", "projection": 64, "tau": None, "seed": 0}),
        batch_size=500,
        notes={
            "source": f"github {REPOSITORY}, {COMMIT}: {CURVES_FILE} (curves), {RUNS_FILE} (run ids)",
            "how": ("C_T of each block's CLS token (blocks 1..12 = blocks.0..blocks.11; the patch-embedding layer "
                    "left out) of google/vit-base-patch16-224-in21k; PCA to 64 dimensions fitted on the CIFAR-10 "
                    "train set (T, 50,000 images); k = 10 k-means cells fitted on T; distance 1 - |cos|; "
                    "cell threshold tau = 20/m; held-out set P_n = the CIFAR-10 test set (10,000 images); "
                    "batches of m = 500 generated 32x32 images, short side resized to 256 and centre-cropped "
                    "to 224, normalised with mean = std = 0.5; undefined values would be 0 (none are)"),
            "data_hashes": ("not recorded: the CIFAR-10 arrays were not hashed by the authors; the cifar10 "
                            "data-set plugin checks the user's copy instead"),
            "weights": "not hashed here (no ViT weights on this machine); weights_source names them exactly",
            "kmeans_seed": ("the authors' k-means seed is not published; seed 0 is ours, so recomputed curves "
                            "match theirs in shape, not to the last digit"),
            "split": ("the paper's 'full' split: 2 references (provenance role train_batch) and 1 query "
                      "(role test_batch) per generator; 1-NN with alpha = 0.5 gets 6/6 queries right"),
            "svm": "no sub-batch curves exist for these generators: the svm matcher trains on the 3 curves each",
        },
    )


@dataclass(frozen=True)
class PaperCurve:
    label: str        # their label in Ffull_score.txt, e.g. "BigGAN_train_batch"
    generator: str    # registry name, e.g. "BigGAN"
    role: str         # "train_batch" or "test_batch"
    run: str | None   # run id from model_ct_scores.txt, e.g. "BigGAN_48_16"
    values: tuple[float | None, ...]
    line: int


def _parse_values(text: str, where: str) -> tuple[float | None, ...]:
    values: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            v = float(item)
        except ValueError:
            raise RegistryError(f"{where}: {item!r} is not a number") from None
        values.append(None if math.isnan(v) else v)
    return tuple(values)


def parse_curves(path: str | Path) -> list[tuple[str, tuple[float | None, ...], int]]:
    """``(label, values, line)`` of every ``label[:] [v, v, …]`` line of a curves file."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise RegistryError(f"{path}: line {n}: expected 'name: [v, v, …]'")
        out.append((m.group(1), _parse_values(m.group(2), f"{path}: line {n}"), n))
    return out


def read_paper_curves(src: str | Path) -> list[PaperCurve]:
    """The 18 curves of ``Ffull_score.txt`` with their generator, role and run id."""
    src = Path(src)
    cfile, rfile = src / CURVES_FILE, src / RUNS_FILE
    if not cfile.is_file():
        raise UsageError(f"{cfile} not found: point at the paper-curves folder (it holds {CURVES_FILE})")
    runs = {values: label for label, values, _ in parse_curves(rfile)} if rfile.is_file() else {}
    curves = []
    for label, values, line in parse_curves(cfile):
        cls, _, role = label.partition("_")
        if cls not in GENERATORS or role not in ("train_batch", "test_batch"):
            raise RegistryError(f"{cfile}: line {line}: unexpected label {label!r} "
                                f"(expected one of {', '.join(GENERATORS)} + _train_batch/_test_batch)")
        curves.append(PaperCurve(label, GENERATORS[cls][0], role, runs.get(values), values, line))
    return curves


def _fid(src: Path, run: str | None) -> float | None:
    """The FID the release lists for the sample folder of a run (BigGAN_48_16 ↔ …_21_48_16, ddpm_1 ↔ ddpm1)."""
    ffile = src / FID_FILE
    if run is None or not ffile.is_file():
        return None
    cls, _, tag = run.partition("_")
    for line in ffile.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        folder = parts[0].rstrip("/")
        if (cls in GENERATORS and cls[0].isupper() and f"-{cls}" in folder and folder.endswith(f"_{tag}/fake")) \
                or folder.endswith(f"/{cls}{tag}"):
            return float(parts[1])
    return None


def import_paper(src: str | Path, registry: Any = None, *, overwrite: bool = False,
                 make_default: bool = True) -> dict[str, Any]:
    """Write the protocol and its 6 generator files into ``registry`` (a :class:`Registry` or a path).

    Existing generators of the protocol are replaced only with ``overwrite``.
    """
    from forensics.registry.store import Registry

    src = Path(src)
    curves = read_paper_curves(src)
    reg = registry if isinstance(registry, Registry) else Registry.open(registry, create=True)
    proto = protocol()
    n_layers = len(proto.layers)
    for c in curves:
        if len(c.values) != n_layers:
            raise RegistryError(f"{src / CURVES_FILE}: line {c.line}: {len(c.values)} values, expected {n_layers}")
    existing = reg.generators.get(PROTOCOL_NAME, {}) if PROTOCOL_NAME in reg.protocols else {}
    if existing and not overwrite:
        raise UsageError(f"protocol {PROTOCOL_NAME!r} already has generators ({', '.join(sorted(existing))}); "
                         "pass --overwrite to replace them")
    reg.add_protocol(proto, default=make_default and reg.default_protocol is None)
    if make_default and reg.default_protocol is None:
        reg.set_default(PROTOCOL_NAME)
    for name in sorted(existing):
        reg.remove(PROTOCOL_NAME, name)
    small = {values: label for label, values, _ in parse_curves(src / SMALL_FILE)} \
        if (src / SMALL_FILE).is_file() else None
    source_sha = sha256_file(src / CURVES_FILE)
    runs_sha = sha256_file(src / RUNS_FILE) if (src / RUNS_FILE).is_file() else None
    by_gen: dict[str, list[PaperCurve]] = {}
    for c in curves:
        by_gen.setdefault(c.generator, []).append(c)
    written = {}
    descriptions = {g: d for g, d in GENERATORS.values()}
    for gen, items in by_gen.items():
        counts: dict[str, int] = {}
        ids = []
        for c in items:
            counts[c.role] = counts.get(c.role, 0) + 1
            ids.append(c.run or f"{gen}_{c.role}_{counts[c.role]}")
        fps = [Fingerprint.from_values(proto.digest, c.values) for c in items]
        # one enrol call per curve, so each instance keeps its own provenance
        for iid, fp, c in zip(ids, fps, items):
            prov = {
                "by": f"He et al. 2024 ({REPOSITORY}); imported with `forensics registry import-paper`",
                "input_sha256": None,
                "n_images": proto.batch_size,
                "note": "published curve; the generated images were not released, so no input hash",
                "role": c.role,
                "split": {"full": "query" if c.role == "test_batch" else "reference",
                          "small": None if small is None else (
                              ("query" if small[c.values].endswith("test_batch") else "reference")
                              if c.values in small else "unused")},
                "run": c.run,
                "fid": _fid(src, c.run),
                "source": {"repository": REPOSITORY, "commit": COMMIT, "file": CURVES_FILE, "line": c.line,
                           "label": c.label, "sha256": source_sha,
                           "run_ids_from": RUNS_FILE if c.run else None, "run_ids_sha256": runs_sha},
            }
            reg.enroll(PROTOCOL_NAME, gen, [fp], prov, description=descriptions[gen], ids=[iid],
                       family=FAMILIES.get(gen))
        written[gen] = ids
    return {"protocol": PROTOCOL_NAME, "digest": proto.digest, "generators": written,
            "n_curves": len(curves), "registry": str(reg.path)}


def export_paper(registry: Any, dest: str | Path) -> Path:
    """Write :data:`CURVES_FILE` and :data:`RUNS_FILE` of the release into the folder ``dest`` from the
    protocol's entries in ``registry`` (a :class:`Registry`), byte for byte as published; returns ``dest``.

    Each file is rebuilt from the curves, labels, lines and run ids the import recorded and must hash to
    the SHA-256 recorded with them: a :class:`RegistryError` says which file differs (a curve edited by
    hand, or entries from another source).
    """
    refs = sorted(registry.enrolled(PROTOCOL_NAME), key=lambda r: r.provenance["source"]["line"])
    if not refs:
        raise RegistryError(f"protocol {PROTOCOL_NAME!r} holds no curves: nothing to export")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    source = refs[0].provenance["source"]
    files = {
        CURVES_FILE: ("".join(f"{r.provenance['source']['label']}: {list(r.fingerprint.values)}\n" for r in refs),
                      source["sha256"]),
        RUNS_FILE: ("".join(f"{r.provenance['run']} {list(r.fingerprint.values)}\n" for r in refs),
                    source.get("run_ids_sha256")),
    }
    for name, (text, recorded) in files.items():
        data = text.encode("utf-8")
        if sha256_bytes(data) != recorded:
            raise RegistryError(f"{name} rebuilt from protocol {PROTOCOL_NAME!r} does not hash to the recorded "
                                f"{recorded}: the registry's curves are not the published ones")
        write_atomic(dest / name, lambda f, data=data: f.write(data))
    return dest


def paper_split(references: Sequence[Any], which: str = "full") -> tuple[list[Any], list[Any]]:
    """(references, queries) of the paper's "full" split (2 + 1 per generator) or "small" one (1 + 1)."""
    role = lambda r: (r.provenance.get("split") or {}).get(which)  # noqa: E731
    return [r for r in references if role(r) == "reference"], [r for r in references if role(r) == "query"]
