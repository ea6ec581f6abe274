"""Which low-level statistics tell two generators apart beyond how far their own runs lie apart? (issue 25)

A generator left out of the references is named as another when its batches lie within that generator's
spread. For one pair of the zoo's generators (by default the diffusion network's samplers DDIM and PNDM, which
are named for each other when one is left out), this embeds each of their sets (``run0``–``run2`` and
``heldout``, 500 images each) with the ``pixel-statistics`` encoder under each condition and prints, per
statistic, the gap between the two generators' mean batch values against

- the spread of their runs' batch means (the root of the two generators' variances over their four sets): a
  ratio far above 1 separates the generators by more than their runs differ, which is what keeps a left-out
  one from lying within the other's spread;
- one batch's standard error of the mean (the noise a batch of 500 carries): how many standard errors apart.

Nothing in the tool changes; the registry's sample sets are read as shipped.

    .venv/bin/python benchmarks/statistic_separation.py --pair ddim,pndm --conditions none,resize2,resize0.5,jpeg85

One thread (FORENSICS_THREADS=1), as the other measurements; a few seconds a condition.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

os.environ.setdefault("FORENSICS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETS = ("run0", "run1", "run2", "heldout")


@functools.cache
def encoder():
    from forensics.plugins import get_encoder_factory

    return get_encoder_factory("pixel-statistics")()


def statistics(images: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """The ``pixel-statistics`` encoder's layer names and each image's values, (N, layers)."""
    from forensics.encode.encoder import preprocess

    enc = encoder()
    pixels = preprocess(images, enc.preprocessing)
    return enc.layer_names, np.hstack([v.numpy() for v in enc.forward_layers(pixels, enc.layer_names)])


def separation(means: dict[str, np.ndarray], errors: np.ndarray, pair: tuple[str, str]) -> list[tuple]:
    """(statistic index, gap / runs' spread, gap / one batch's standard error, runs' spread / standard error)."""
    a, b = (means[g] for g in pair)  # (sets, statistics) each
    gap = np.abs(a.mean(axis=0) - b.mean(axis=0))
    spread = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return [(k, gap[k] / spread[k], gap[k] / errors[k], spread[k] / errors[k]) for k in range(len(gap))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="ddim,pndm", help="two zoo generators (default ddim,pndm)")
    ap.add_argument("--conditions", default="none,resize2,resize0.5,jpeg85",
                    help="post-processing conditions (forensics.conditions), comma-separated")
    ap.add_argument("--samples", type=Path, default=ROOT / "registry" / "mnist-effnet-lite0" / "samples")
    a = ap.parse_args()
    from forensics.conditions import get_condition

    pair = tuple(a.pair.split(","))
    if len(pair) != 2:
        sys.exit("--pair takes two generators, e.g. ddim,pndm")
    for condition in a.conditions.split(","):
        process = get_condition(condition)
        means: dict[str, np.ndarray] = {}
        errors = []
        for g in pair:
            rows = []
            for s in SETS:
                images = np.load(a.samples / g / f"{s}.npz")["images"]
                names, values = statistics(process.apply(images))
                rows.append(values.mean(axis=0))
                errors.append(values.std(axis=0, ddof=1) / np.sqrt(len(values)))
            means[g] = np.array(rows)
        found = separation(means, np.mean(errors, axis=0), pair)
        print(f"\n{condition}: {pair[0]} against {pair[1]}, {len(SETS)} sets of each")
        print(f"  {'statistic':16s} {'gap / runs':>10s} {'gap / batch SE':>14s} {'runs / batch SE':>15s}")
        for k, over_runs, over_se, runs_se in sorted(found, key=lambda r: -np.nan_to_num(r[1])):
            print(f"  {names[k]:16s} {over_runs:10.2f} {over_se:14.2f} {runs_se:15.2f}")


if __name__ == "__main__":
    main()
