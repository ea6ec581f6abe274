"""Does a new run lie farther from its generator than calibration expects? (issue 25)

Calibration measures the distance ratio of each enrolled run held out against the generator's other runs
(n − 1 of them, its spread measured on them too), and chooses the ratio threshold on those points. A query
from a run never enrolled meets all n: its nearest run is the nearest of more, and the spread it is divided by
comes from the nearest *other* of more — which shrinks faster, so the ratio comes out larger than the same run
would have had in calibration. This measures it on the query sets of ``robust_attribution.py`` (its sets and
records cache): per (condition, m′), calibration's ratios for its right answers, and for the query batches
ranked right their ratio as the tool computes it and with one of their generator's enrolled runs left out in
turn (the median over which), the way calibration saw its held-out runs. Nothing in the tool changes.

    .venv/bin/python benchmarks/ratio_bias.py --records-cache ~/.cache/forensics/robust-records

One thread (FORENSICS_THREADS=1), as the other measurements; about 3 minutes on the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("FORENSICS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robust_attribution as R  # noqa: E402


def ratios_at(matchers, refs, condition: str, size: int, sets, proto, engine, cache, batches: int):
    """(calibration's right-answer ratios, the query batches' ratios as deployed, the same with one of their
    generator's runs left out — median over which) at (condition, size)."""
    from forensics import api

    full, _ = matchers.at(condition, size)
    at_m = condition == "none" and size == proto.batch_size  # the enrolled curves themselves, no redraw
    redrawn = None if at_m else matchers.redraw(condition, size)
    references = refs if at_m else list(redrawn.references)
    queries = None if at_m else redrawn.queries
    points = full.held_out_points if full.held_out_points is not None else full.calibration_points(references)
    calibrated = np.array([p[2] for p in points.answer], float)
    without: dict[str, object] = {}

    def left_out(instance: str):
        # the matcher refitted without one enrolled run, as calibration holds one out (closed set: its ratio only)
        if instance not in without:
            rest = [r for r in references if r.instance != instance]
            kept = None if queries is None else {k: v for k, v in queries.items() if k != instance}
            without[instance] = full.clone(open_set=False).fit(rest, kept)
        return without[instance]

    deployed, held = [], []
    for gen, _, images in sets:
        _, kept, scorer = R.query_records(images, condition, proto, engine, matchers, cache)
        own = [r.instance for r in references if r.generator == gen]
        for b in range(min(batches, len(images) // size)):
            parts = [np.arange(b * size, (b + 1) * size)]
            vec = api.mean_curve(scorer.curves_from_records(kept, parts), proto).fingerprint.vector()
            if full.rank(vec)[0].generator != gen:
                continue
            deployed.append(full.distance_ratio(vec, gen))
            held.append(float(np.median([left_out(i).distance_ratio(vec, gen) for i in own])))
    return calibrated, np.array(deployed, float), np.array(held, float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", type=Path, default=None, help="the new query sets (default: robust_attribution's)")
    ap.add_argument("--records-cache", type=Path, default=None)
    ap.add_argument("--conditions", default="none,jpeg95,jpeg75")
    ap.add_argument("--sizes", default="200,500")
    ap.add_argument("--batches", type=int, default=2, help="disjoint batches per set and size (default 2)")
    a = ap.parse_args()

    proto, refs, engine, matchers = R.default_matching("alpha")
    enrolled = {r.generator for r in refs}
    sets = [s for s in R.query_sets(a.sets or R.default_sets()) if s[0] in enrolled]
    print("| condition | m′ | calibration: right answers, median ratio (points) | query batches ranked right | "
          "as the tool measures them: median · above calibration's 90th percentile | one of their runs left out: "
          "median · above it |")
    print("|---|---|---|---|---|---|")
    for condition in a.conditions.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            cal, dep, held = ratios_at(matchers, refs, condition, size, sets, proto, engine, a.records_cache,
                                       a.batches)
            top = np.percentile(cal, 90)
            print(f"| {condition} | {size} | {np.median(cal):.3f} ({len(cal)}) | {len(dep)} | "
                  f"{np.median(dep):.3f} · {np.mean(dep > top):.0%} | {np.median(held):.3f} · {np.mean(held > top):.0%} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
