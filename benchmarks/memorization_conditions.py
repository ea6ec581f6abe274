"""Copying under post-processing: memorization of processed sets, T and P_n as they are against processed alike.

Sets: 500 exact copies of T (drawn at random, seed 0) and the shipped held-out sets of the zoo's VAE, DCGAN
and noisy copier. Each is written as files under each processing (the writers of ``robust_attribution.py``:
``jpeg90``, ``jpeg75``, ``webp80``, ``up2`` — resized ×2 with PIL's bicubic —, ``down2+jpeg75`` — ×0.5, then
JPEG 75 at that size) and read back by ``forensics.memorization`` twice: with ``condition="none"`` (T and P_n
as they are: the tool before it read the condition) and with the default ``"auto"`` (the condition read from
the files, T and P_n put through it). Each row: the set, the processing, the curve both ways, its reading.
Folders processed in several ways (``half-jpeg90``, ``half-webp80``, … as ``robust_attribution.py`` writes them:
every other image processed, the rest PNG) are read a third way: all as the one condition the files' headers
give (the tool before it scored each kind against T and P_n processed alike and combined the parts).

    FORENSICS_THREADS=1 python benchmarks/memorization_conditions.py --protocol mnist-effnet-lite0
    FORENSICS_THREADS=1 python benchmarks/memorization_conditions.py --protocol mnist-vit
    FORENSICS_THREADS=1 python benchmarks/memorization_conditions.py --conditions half-jpeg90,half-jpeg75,half-webp80
    FORENSICS_THREADS=1 python benchmarks/memorization_conditions.py --time     # what the first run costs

The first run under each condition fits the processed reference side and caches it. ``--time`` measures that
in one process against an empty cache folder: 500 copies of T at JPEG 75, memorized as generated (the shipped
reference side) twice, then under ``jpeg75`` three times (the first fits and caches), then half of them at
JPEG 75 declared image by image (two parts, both reference sides cached) twice; best of each, and ratios.
Threads: one (FORENSICS_THREADS=1 before torch starts), so that a busy machine does not spin.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("FORENSICS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="mnist-effnet-lite0")
    ap.add_argument("--conditions", default="jpeg90,jpeg75,webp80,up2,down2+jpeg75")
    ap.add_argument("--time", action="store_true", help="time the first and later runs under a condition, then stop")
    a = ap.parse_args()
    if a.time:
        scratch = tempfile.mkdtemp(prefix="forensics-cache-")  # an empty cache: the first run's cost is measured
        os.environ["FORENSICS_CACHE_DIR"] = scratch  # before forensics reads it
        try:
            return timing(a.protocol)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    from robust_attribution import as_query

    from forensics import api
    from forensics.conditions import applicable, detect
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    samples = ROOT / "registry" / "mnist-effnet-lite0" / "samples"
    sets = {"copies of T": train[np.random.default_rng(0).choice(len(train), 500, replace=False)],
            **{f"{g} heldout": np.load(samples / g / "heldout.npz")["images"] for g in ("vae", "dcgan", "kde-copier")}}

    def shown(result) -> str:
        return " ".join(f"{v:+5.1f}" for v in result.curve.fingerprint.vector()) + f" | {result.level}"

    for name, images in sets.items():
        print(f"{name}, as generated: {shown(api.memorization(images, protocol=a.protocol, condition='none'))}",
              flush=True)
        for condition in a.conditions.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                folder, _ = as_query(images, condition, Path(tmp) / "q")
                before = api.memorization(folder, protocol=a.protocol, condition="none")
                after = api.memorization(folder, protocol=a.protocol)
                one = None
                if condition.startswith("half-"):  # all as the one condition the files' headers give
                    read = detect(sorted(Path(folder).iterdir()), applicable()).name
                    one = (read, api.memorization(folder, protocol=a.protocol, condition=read))
            print(f"  {condition:13s} T as they are:   {shown(before)}", flush=True)
            if one is not None:
                print(f"  {'':13s} all as {one[0]}: {shown(one[1])}", flush=True)
            alike = "each kind alike" if after.parts else f"alike ({after.condition['name']})"
            print(f"  {'':13s} {alike}: {shown(after)}", flush=True)
    return 0


def timing(protocol: str) -> int:
    import time

    from forensics import api
    from forensics.conditions import get_condition
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    copies = train[np.random.default_rng(0).choice(len(train), 500, replace=False)]
    processed = get_condition("jpeg75").apply(copies)

    def seconds(images, condition) -> float:
        start = time.perf_counter()
        api.memorization(images, protocol=protocol, condition=condition)
        return time.perf_counter() - start

    plain = min(seconds(copies, "none") for _ in range(2))
    first = seconds(processed, "jpeg75")
    cached = min(seconds(processed, "jpeg75") for _ in range(2))
    # half of them JPEG 75, declared image by image: two parts, each against its own (cached) reference side
    half = np.where(np.arange(len(copies))[:, None, None] % 2 == 1, processed, copies)
    kinds = ["jpeg75" if i % 2 else "none" for i in range(len(copies))]
    mixed = min(seconds(half, kinds) for _ in range(2))
    print(f"{protocol}: as generated {plain:.1f} s; jpeg75 first {first:.1f} s ({first / plain:.1f}×), "
          f"cached {cached:.1f} s ({cached / plain:.2f}×); half jpeg75, each kind alike {mixed:.1f} s "
          f"({mixed / plain:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
