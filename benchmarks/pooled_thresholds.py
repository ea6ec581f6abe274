"""Open-set thresholds calibrated per (condition, m′) against thresholds pooled over groups of cells.

Without a pooled calibration the tool calibrates the matcher at each (condition, m′) a query comes in on
that cell's own calibration points (about 850 on the default), and near-ties make those thresholds jump
from cell to cell. Margins and distance ratios are in units of one batch's noise, so thresholds carry from
cell to cell; this script measures what pooling the calibration points of groups of cells answers, on the
query sets of ``robust_attribution.py`` (its held-out, ``--build`` sets and curated copies), batch for
batch, each variant only replacing the three thresholds. It is the evidence on which ``registry
calibrate`` came to pool every kept condition at every size (docs/robustness.md, "One set of thresholds
for every redrawn condition and size"); the pools here are over the conditions the queries are read as.

Two steps, each resumable:

    python benchmarks/pooled_thresholds.py embed --conditions none,jpeg95,jpeg90,jpeg85   # the query sets'
    python benchmarks/pooled_thresholds.py embed --conditions jpeg75,resize2,resize0.5,crop90   # records
    python benchmarks/pooled_thresholds.py measure --sizes 100,200,300,500 \\
        --pool 'cell;100|200|300|500;100|200,300|500;100,200,300|500;100,200,300,500'
    python benchmarks/pooled_thresholds.py measure --sizes 150,250,400 --pool 'cell;100,200,300,500'

``embed`` reads each set as ``attribute`` reads it (files for JPEG, the condition read from them; resampling
declared) and keeps its per-image records (``--records-cache``, default ``robust-records`` in the forensics
cache folder: about 20 minutes per four conditions here; two processes can fill it side by side); ``measure``
reads them back (embedding what is missing), then fits the matcher at every (condition read, size) of ``--sizes`` and of the
pools, for all generators and with each generator left out (recalibrated without it, as the benchmark does),
keeps every cell's calibration points, and answers each batch (up to 3 disjoint ones per set and size) under
every variant of ``--pool``: ``cell`` (each cell its own thresholds), or groups of sizes separated by ``|``, each group's
thresholds chosen on the points of all its sizes under every condition (a size in no group: the only
group's). Prints right · family · unknown · wrong and a left-out generator named as another, per kind of
condition and size. Threads: one (set before torch starts).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("FORENSICS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robust_attribution as RA  # noqa: E402

JPEG = ("none", "jpeg95", "jpeg90", "jpeg85", "jpeg75")


def records(cache: Path, conditions: list[str], curated: int, only: set[str] | None = None):
    """(generator, set name, condition, images' count, how they are matched, their records) for every query set
    under every condition, as ``robust_attribution.py`` reads them (its :func:`query_records`, kept in
    ``cache``: the first run embeds, later ones read back)."""
    proto, refs, engine, matchers = RA.default_matching()
    t0 = time.time()
    for gen, name, images in RA.query_sets(RA.default_sets(), curated=curated):
        if only is not None and name not in only:
            continue
        for condition in conditions:
            cond, kept, scorer = RA.query_records(images, condition, proto, engine, matchers, cache)
            print(f"{name} {gen} {condition} → {cond.name} [{time.time() - t0:.0f} s]", file=sys.stderr, flush=True)
            yield {"gen": gen, "name": name, "condition": condition, "n": len(images), "kept": kept, "scorer": scorer,
                   "under": cond.of(slice(0, len(images))), "withhold": cond.withhold}


def parse_pools(spec: str) -> list[tuple[str, list[list[int]] | None]]:
    """``cell;100|200,300|500`` → [("cell", None), ("100|200,300|500", [[100], [200, 300], [500]])]; a variant
    ``condition:…`` groups the sizes alike, each condition pooled on its own."""
    out = []
    for variant in spec.split(";"):
        sizes = variant.removeprefix("condition:")
        out.append((variant, None if variant == "cell" else
                    [[int(s) for s in group.split(",")] for group in sizes.split("|")]))
    return out


def measure(queries: list[dict], sizes: list[int], pools: list[tuple[str, list[list[int]] | None]],
            point: str = "balanced") -> None:
    from forensics import api
    from forensics.match import make_matcher
    from forensics.match.batchsize import layer_weights
    from forensics.match.calibration import _best_thresholds, refit_points

    proto, refs, engine, matchers = RA.default_matching()
    m = proto.batch_size
    generators = sorted({r.generator for r in refs})
    families = {r.generator: r.family for r in refs if r.family}
    unders = sorted({q["under"] for q in queries})
    cells = sorted({*sizes, *(s for _, groups in pools if groups for g in groups for s in g)})
    fitted, points = {}, {}
    t0 = time.time()
    for size in cells:
        for under in unders:
            for who in ["all", *generators]:
                if under == "none" and size == m:  # the enrolled curves themselves, exact leave-one-out
                    rest = refs if who == "all" else [r for r in refs if r.generator != who]
                    mt = make_matcher("alpha").fit(rest)
                    p = mt.calibration_points(rest)
                else:
                    red = matchers.redraw(under, size)
                    rest = list(red.references) if who == "all" else [r for r in red.references if r.generator != who]
                    weights = red.layer_weights if who == "all" else layer_weights(rest, red.queries)
                    mt = api._weighted_matcher("alpha", weights).fit(rest, red.queries)
                    p = refit_points(mt, rest, queries=red.queries)
                fitted[(under, size, who)] = mt.at_operating_point(point)
                points[(under, size, who)] = (np.array(p.answer), np.array(p.unknown))
        print(f"fitted and calibrated every condition at m′ = {size} [{time.time() - t0:.0f} s]", file=sys.stderr,
              flush=True)

    pooled: dict[tuple[str, int, str], tuple[float, float, float]] = {}

    def thresholds(variant: str, groups, under: str, size: int, who: str) -> tuple[float, float, float] | None:
        if groups is None:
            return None  # the cell's own calibration
        group = next((g for g in groups if size in g), groups[0] if len(groups) == 1 else None)
        if group is None:
            raise SystemExit(f"pool {variant!r} has no group for m′ = {size}")
        apart = variant.startswith("condition:")  # each condition its own pool
        key = (variant, group[0], who, under if apart else None)
        if key not in pooled:
            pooled_under = [under] if apart else unders
            a = np.concatenate([points[(c, s, who)][0] for c in pooled_under for s in group])
            u = np.concatenate([points[(c, s, who)][1] for c in pooled_under for s in group])
            pooled[key] = _best_thresholds(a, u, (point,))[point][:3]
        return pooled[key]

    def answer(mt, vec, triple, withhold, drawn):
        if triple is not None:
            mt = copy.copy(mt)
            mt.calibration = {**mt.calibration, "score": triple[0], "margin": triple[1], "distance_ratio": triple[2]}
        got = mt.attribute(vec)
        return got.withheld(withhold) if withhold is not None else api._resampled(got, mt, drawn)

    tables = {variant: defaultdict(Counter) for variant, _ in pools}
    for q in queries:
        curated = q["gen"].startswith("curated-")
        for size in sizes:
            if size > q["n"]:
                continue
            for b in range(1 if size >= m else min(3, q["n"] // size)):
                start = b * size
                parts = [np.arange(start + s, start + min(s + m, size)) for s in range(0, size, m)]
                vec = api.mean_curve(q["scorer"].curves_from_records(q["kept"], parts), proto).fingerprint.vector()
                drawn = api.resample_vectors(q["scorer"], q["kept"], parts).mean(axis=1)  # as attribute resamples the set
                at = min(size, m)
                row = ("curated copies" if curated else "sets",
                       "none and JPEG" if q["condition"] in JPEG else "resampled", size)
                for variant, groups in pools:
                    t = tables[variant][row]
                    mine = answer(fitted[(q["under"], at, "all")], vec,
                                  thresholds(variant, groups, q["under"], at, "all"), q["withhold"], drawn)
                    t[RA._outcome(mine, q["gen"], families)] += 1
                    if q["gen"] in generators:
                        left = answer(fitted[(q["under"], at, q["gen"])], vec,
                                      thresholds(variant, groups, q["under"], at, q["gen"]), q["withhold"], drawn)
                        t["left out " + RA._outcome(left, q["gen"], families)] += 1
    for variant, _ in pools:
        print(f"\n{variant} ({point}): right · family · unknown · wrong; left out named as another (→ unknown)")
        for (kind, conds, size), c in sorted(tables[variant].items()):
            if kind == "curated copies":
                print(f"  {kind:15s} {conds:14s} m′={size:4d}: named {c['right'] + c['family'] + c['wrong']} "
                      f"of {sum(c.values())}")
            else:
                print(f"  {kind:15s} {conds:14s} m′={size:4d}: {c['right']} · {c['family']} · {c['unknown']} · "
                      f"{c['wrong']}; {c['left out wrong'] + c['left out right']} (→ {c['left out unknown']})")
        shown = {(k[1], k[3]): tuple(round(x, 4) for x in v) for k, v in pooled.items()
                 if k[0] == variant and k[2] == "all"}
        if shown:
            print(f"  thresholds (score, margin, ratio) by the group's first size: {shown}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("embed", "measure"))
    ap.add_argument("--records-cache", type=Path, default=None,
                    help="where the query sets' per-image records are kept (default: robust-records in the "
                         "forensics cache folder)")
    ap.add_argument("--conditions", default="none,jpeg95,jpeg90,jpeg85,jpeg75,resize2,resize0.5,crop90")
    ap.add_argument("--curated", type=int, default=500)
    ap.add_argument("--operating-point", default="balanced",
                    help="the thresholds each variant answers at (balanced, named, cautious)")
    ap.add_argument("--only", default=None, help="comma-separated set names (e.g. heldout,vae-seed4): only these")
    ap.add_argument("--sizes", default="100,200,300,500")
    ap.add_argument("--pool", default="cell;100,200,300,500")
    a = ap.parse_args()
    from forensics.encode.cache import cache_dir

    found = records(a.records_cache or cache_dir() / "robust-records", a.conditions.split(","), a.curated,
                    None if a.only is None else set(a.only.split(",")))
    if a.step == "embed":
        for _ in found:
            pass
    else:
        measure(list(found), [int(s) for s in a.sizes.split(",")], parse_pools(a.pool), a.operating_point)
    return 0


if __name__ == "__main__":
    sys.exit(main())
