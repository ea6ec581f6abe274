"""What an approximate nearest-neighbour search does to C_T and to verdicts, on the zoo's sample sets.

For every zoo set (9 generators × run0–run2 and the held-out set, 500 images each) under the two
protocols of the default combination (``mnist-effnet-lite0``, 9 layers; ``mnist-vit``, 8 layers), C_T
is computed with the exact search and with each search of :mod:`forensics.distributed.search`:

- **score**: the shipped (exact) reference side, only the queries' nearest-training distances found by
  the approximate search (a registry built exactly, queries searched approximately);
- **fit+score**: the reference side refitted with the same search (the held-out set P_n's distances
  approximate too), then the queries as above (a registry built with the approximate search).

It prints |ΔC_T| per layer (the largest over the 36 sets, and the mean) and counts verdict changes
(the ``alpha`` matcher with the registry's calibration, on the combination's joined curve): on the 9
held-out sets, and on the 27 enrolled runs queried as they are. The exact search in shards is checked
to give the exact values bit for bit. Embeddings go through the embedding cache, so a second run only
searches. About 10 minutes the first time on 2 busy cores (embedding 23,000 images twice), ~2 after.

    .venv/bin/python benchmarks/search_error.py
    .venv/bin/python benchmarks/search_error.py --json > search_error.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTS = ("mnist-effnet-lite0", "mnist-vit")
COMBINATION = "mnist-effnet-vit"


def searches():
    from forensics.distributed.search import ShardedSearch

    return {
        "exact, shards of 64": ShardedSearch(shard_rows=64),
        "faiss-flat": ShardedSearch(backend="faiss-flat"),
        "faiss-hnsw M=32 ef=16": ShardedSearch(backend="faiss-hnsw", hnsw_m=32, ef_search=16),
        "faiss-ivf nprobe=1": ShardedSearch(backend="faiss-ivf", nprobe=1),
        "faiss-ivf nprobe=4": ShardedSearch(backend="faiss-ivf", nprobe=4),
    }


def value(ref, q, params) -> float | None:
    from forensics.errors import StatisticError

    try:
        return float(ref.score(q, **params).value)
    except StatisticError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--raw", help="also write every C_T value (per set, layer, search, mode) to this JSON file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from forensics.distributed.search import fit_with_search, with_search
    from forensics.engine import Engine, load_reference_set
    from forensics.io.images import load_images
    from forensics.match import make_matcher
    from forensics.protocol import Fingerprint
    from forensics.registry import Registry
    from forensics.zoo.catalog import read_manifest, samples_dir

    reg = Registry.open(ROOT / "registry")
    sets = read_manifest(samples_dir(reg.path))
    started = time.time()
    found: dict[str, dict] = {}  # part → {"exact": [[value per layer] per set], name: {"score": …, "fit": …}}
    for part in PARTS:
        proto = reg.protocol(part)
        engine = Engine(proto, shipped_dir=reg.reference_dir(part))
        refs = engine.reference_side()
        train = engine.embed(load_reference_set(proto.train), "T", cache=True, images_hash=proto.train.sha256)
        test = engine.embed(load_reference_set(proto.test), "P_n", cache=True, images_hash=proto.test.sha256)
        queries = [engine.embed(load_images(z.path)[0], z.generator, cache=True) for z in sets]
        params = engine.score_params
        exact = [[value(r, q[i], params) for i, r in enumerate(refs)] for q in queries]
        out = {"exact": exact, "layers": list(proto.layers)}
        for name, search in searches().items():
            scored = [with_search(r, search) for r in refs]
            refit = [fit_with_search(t, p, search, **engine.fit_params) for t, p in zip(train, test)]
            out[name] = {"score": [[value(r, q[i], params) for i, r in enumerate(scored)] for q in queries],
                         "fit": [[value(r, q[i], params) for i, r in enumerate(refit)] for q in queries]}
            print(f"{part}: {name} done ({time.time() - started:.0f} s)", file=sys.stderr)
        found[part] = out
    if args.raw:
        Path(args.raw).write_text(json.dumps(found))

    combo = reg.protocol(COMBINATION)
    matcher = make_matcher("alpha", calibration=reg.calibration(COMBINATION, "alpha")).fit(reg.enrolled(COMBINATION))

    def verdict(curves_by_part: dict[str, list], k: int) -> str | None:
        values = [v for part in PARTS for v in curves_by_part[part][k]]
        return matcher.attribute(Fingerprint.from_values(combo.digest, values).vector()).named  # or the family

    heldout = [k for k, z in enumerate(sets) if z.instance == "heldout"]
    runs = [k for k, z in enumerate(sets) if z.instance != "heldout"]
    exact_curves = {p: found[p]["exact"] for p in PARTS}
    report = {"sets": len(sets), "parts": {p: found[p]["layers"] for p in PARTS}, "searches": {}}
    for name in searches():
        row: dict = {}
        for mode in ("score", "fit"):
            per_layer, undefined_changed = {}, 0
            for part in PARTS:
                a = found[part]["exact"]
                b = found[part][name][mode]
                for i, layer in enumerate(found[part]["layers"]):
                    diffs = []
                    for x, y in zip(a, b):
                        if (x[i] is None) != (y[i] is None):
                            undefined_changed += 1
                        elif x[i] is not None:
                            diffs.append(abs(x[i] - y[i]))
                    per_layer[f"{part}/{layer}"] = {"max": max(diffs, default=0.0),
                                                    "mean": float(np.mean(diffs)) if diffs else 0.0}
            approx = {p: found[p][name][mode] for p in PARTS}
            changed_h = [sets[k].generator for k in heldout if verdict(approx, k) != verdict(exact_curves, k)]
            changed_r = [f"{sets[k].generator}/{sets[k].instance}" for k in runs
                         if verdict(approx, k) != verdict(exact_curves, k)]
            row[mode] = {"per_layer": per_layer, "max": max(v["max"] for v in per_layer.values()),
                         "undefined_changed": undefined_changed, "verdicts_changed_heldout": changed_h,
                         "verdicts_changed_runs": changed_r}
        report["searches"][name] = row
    report["exact_verdicts_heldout"] = {sets[k].generator: verdict(exact_curves, k) for k in heldout}
    report["seconds"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{len(sets)} zoo sets × {sum(len(v) for v in report['parts'].values())} layers "
          f"({', '.join(PARTS)}); |ΔC_T| against the exact search; verdicts: alpha on {COMBINATION}")
    print(f"{'search':24} {'mode':6} {'max |ΔC_T|':>11} {'mean':>8} {'undef±':>6}  verdicts changed "
          "(9 held-out; 27 runs)")
    for name, row in report["searches"].items():
        for mode, r in row.items():
            mean = np.mean([v["mean"] for v in r["per_layer"].values()])
            print(f"{name:24} {mode:6} {r['max']:11.4g} {mean:8.3g} {r['undefined_changed']:6d}  "
                  f"{len(r['verdicts_changed_heldout'])} {r['verdicts_changed_heldout'] or ''}; "
                  f"{len(r['verdicts_changed_runs'])} {r['verdicts_changed_runs'] or ''}")
    worst = report["searches"]["faiss-ivf nprobe=1"]["score"]["per_layer"]
    print("per layer, faiss-ivf nprobe=1 (score): " + ", ".join(f"{k} {v['max']:.3g}" for k, v in worst.items()))
    print(f"({report['seconds']} s)")


if __name__ == "__main__":
    main()
