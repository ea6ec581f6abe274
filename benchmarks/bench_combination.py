"""What reading several encoders costs: one 500-image query under the default combination against its parts.

The default protocol ``mnist-effnet-vit-pixel`` embeds a query with EfficientNet-Lite0 (128 px), with the
project's MNIST ViT (28 px) and as low-level image statistics (28 px), then scores the three curves against
their shipped reference sides. This
times, in one process on the same bundled held-out set, one :func:`forensics.attribute` call (what
``forensics attribute`` does after start-up: open the registry, fit the matcher, build the encoder,
load the shipped reference side, embed, score, match) under:

- ``effnet``: ``mnist-effnet-lite0`` alone (the baseline: the default before the combination);
- ``vit``: ``mnist-vit`` alone;
- ``pixel``: ``mnist-pixel`` alone;
- ``two``: ``mnist-effnet-vit``, the first two joined (the default before ``mnist-pixel``);
- ``combined``: ``mnist-effnet-vit-pixel``, all three (the default).

A first call of each (not timed) pays the one-off costs (imports, first-call allocations); rounds then
alternate the protocols to spread the machine's noise. The reference-side cache is off, so every call reads
the shipped files as a fresh process would.

    .venv/bin/python benchmarks/bench_combination.py              # 3 rounds, all torch threads
    .venv/bin/python benchmarks/bench_combination.py --threads 1  # as the test suite runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import forensics  # noqa: E402

NAMES = {"effnet": "mnist-effnet-lite0", "vit": "mnist-vit", "pixel": "mnist-pixel", "two": "mnist-effnet-vit",
         "combined": "mnist-effnet-vit-pixel"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--set", default="ddpm", help="the zoo generator whose held-out set is the query")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = forensics.open_registry(ROOT / "registry")
    images = ROOT / "registry" / "mnist-effnet-lite0" / "samples" / args.set / "heldout.npz"

    def attribute(name: str) -> forensics.AttributionResult:
        return forensics.attribute(images, protocol=name, registry=registry, cache=False)

    first = {}
    for key, name in NAMES.items():  # warm-up, timed apart: imports and first-call allocations
        start = time.perf_counter()
        attribute(name)
        first[key] = time.perf_counter() - start
    times: dict[str, list[float]] = {key: [] for key in NAMES}
    results = {}
    for _ in range(args.rounds):
        for key, name in NAMES.items():
            start = time.perf_counter()
            results[key] = attribute(name)
            times[key].append(time.perf_counter() - start)
    joined = [v for key in ("effnet", "vit", "pixel") for v in results[key].curve.fingerprint.values]
    assert list(results["combined"].curve.fingerprint.values) == joined, \
        "the combined curve is not its parts' end to end"
    print(f"{results['effnet'].input.n_images} images of the {args.set} held-out set, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} rounds")
    base = float(np.median(times["effnet"]))
    print(f"{'protocol':10} {'first s':>8} {'median s':>9} {'min s':>7} {'max s':>7} {'vs effnet':>10} verdict")
    for key in NAMES:
        t = times[key]
        print(f"{key:10} {first[key]:8.2f} {np.median(t):9.2f} {min(t):7.2f} {max(t):7.2f} "
              f"{np.median(t) / base:9.2f}x {results[key].verdict.label}")
    print("combined curve = effnet's values, then vit's, then pixel's: checked")


if __name__ == "__main__":
    main()
