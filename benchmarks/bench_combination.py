"""What reading two encoders costs: one 500-image query under the default combination against its parts.

The default protocol ``mnist-effnet-vit`` embeds a query with EfficientNet-Lite0 (128 px) and with the
project's MNIST ViT (28 px), then scores both curves against their shipped reference sides. This
times, in one process on the same bundled held-out set, the curve of one batch under:

- ``effnet``: ``mnist-effnet-lite0`` alone (the baseline: the default before the combination);
- ``vit``: ``mnist-vit`` alone;
- ``combined``: ``mnist-effnet-vit``, both of the above joined.

Engines are built and their reference sides loaded before timing (a one-off cost, also printed), so
the figures are the per-query cost. Rounds alternate the three to spread the machine's noise.

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

from forensics.engine import make_engine  # noqa: E402
from forensics.registry.store import Registry  # noqa: E402

NAMES = {"effnet": "mnist-effnet-lite0", "vit": "mnist-vit", "combined": "mnist-effnet-vit"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--set", default="ddpm", help="the zoo generator whose held-out set is the query")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    reg = Registry.open(ROOT / "registry")
    images = np.load(ROOT / "registry" / "mnist-effnet-lite0" / "samples" / args.set / "heldout.npz")["images"]
    engines, setup = {}, {}
    for key, name in NAMES.items():
        start = time.perf_counter()
        engine = make_engine(reg.protocol(name), reference_dir=reg.reference_dir, use_cache=False)
        for part in getattr(engine, "engines", [engine]):
            part.reference_side()
            part.encoder
        engines[key], setup[key] = engine, time.perf_counter() - start
    for key, engine in engines.items():  # warm-up: first-call allocations, lazy imports
        engine.curves(images[:50])
    times: dict[str, list[float]] = {key: [] for key in NAMES}
    curves = {}
    for _ in range(args.rounds):
        for key, engine in engines.items():
            start = time.perf_counter()
            curves[key] = engine.curves(images, partial=False)[0]
            times[key].append(time.perf_counter() - start)
    joined = list(curves["effnet"].fingerprint.values) + list(curves["vit"].fingerprint.values)
    assert list(curves["combined"].fingerprint.values) == joined, "the combined curve is not its parts' end to end"
    print(f"{len(images)} images of the {args.set} held-out set, torch threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds")
    base = float(np.median(times["effnet"]))
    print(f"{'engine':10} {'set-up s':>9} {'median s':>9} {'min s':>7} {'max s':>7} {'vs effnet':>10}")
    for key in NAMES:
        t = times[key]
        print(f"{key:10} {setup[key]:9.2f} {np.median(t):9.2f} {min(t):7.2f} {max(t):7.2f} "
              f"{np.median(t) / base:9.2f}x")
    print("combined curve = effnet's values then vit's: checked")


if __name__ == "__main__":
    main()
