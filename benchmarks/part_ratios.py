"""Would the distance ratio tell left-out generators apart better part by part? (issue 25)

The default combines three protocols into one curve (EfficientNet's C_T, the ViT's C_T, the pixel statistics'
mean-z), and a verdict names a generator only when the query lies within its spread on that whole curve (the
distance ratio). A generator left out of the references is mostly named as its sibling sampler (DDIM for
PNDM and back), which the pixel statistics alone tell apart. This measures, on the query sets of
``robust_attribution.py`` (its sets and records cache), the distance ratio to the top candidate on the whole
curve and on each part's layers alone (each part's own spreads, as the matcher measures them: a query of one
batch against the nearest other instance), for the batches answered right with every generator enrolled and
for the batches of each generator left out. It prints how well each ratio separates the two (the AUC: the
chance that a left-out batch lies farther than a right answer) and what a ratio test on the pixel part would
cost. Nothing in the tool changes.

    .venv/bin/python benchmarks/part_ratios.py --records-cache ~/.cache/forensics/robust-records

One thread (FORENSICS_THREADS=1), as the other measurements.
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


def part_spreads(matcher, refs, queries, parts):
    """Each part's generator spreads as the fitted ``matcher`` measures them on the whole curve."""
    from forensics.match.similarity import generator_spreads, pairwise_distances, query_spreads

    x, labels = matcher._curves, matcher._curve_labels
    out = []
    for a, b in parts:
        if queries is None:
            out.append(generator_spreads(pairwise_distances(x[:, a:b], x[:, a:b]), labels))
        else:
            out.append(query_spreads(x[:, a:b], labels, [r.instance for r in refs],
                                     {k: [matcher._query(q)[a:b] for q in v] for k, v in queries.items()}))
    return out


def part_ratios(matcher, spreads, parts, vec, generator) -> list[float]:
    v = matcher._query(vec)
    own = matcher._curves[matcher._curve_labels == generator]
    return [float(np.linalg.norm(own[:, a:b] - v[a:b], axis=1).min() / spreads[i][generator])
            for i, (a, b) in enumerate(parts)]


def auc(near, far) -> float:
    """The chance that a ``far`` value exceeds a ``near`` one (ties count half)."""
    near, far = np.asarray(near)[:, None], np.asarray(far)[None, :]
    return float((near < far).mean() + 0.5 * (near == far).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", type=Path, default=None)
    ap.add_argument("--records-cache", type=Path, default=None)
    ap.add_argument("--conditions", default="none,jpeg95,jpeg90,jpeg75,resize2,resize0.5,crop90")
    ap.add_argument("--sizes", default="100,200,300,500")
    a = ap.parse_args()

    from forensics import api
    from forensics.match import make_matcher
    from forensics.match.batchsize import layer_weights

    proto, refs, engine, matchers = R.default_matching("alpha")
    edges = np.cumsum([0, *(len(p.layers) for p in proto.parts)])
    parts = list(zip(edges[:-1], edges[1:]))
    names = [p.name for p in proto.parts]
    generators = sorted({r.generator for r in refs})
    sets = R.query_sets(a.sets or R.default_sets())
    rows = []  # (kind, own generator, overall ratio, part ratios, the verdict)
    for condition in a.conditions.split(","):
        for size in map(int, a.sizes.split(",")):
            full, _ = matchers.at(condition, size)
            if condition == "none" and size == proto.batch_size:
                cell, queries = refs, None
            else:
                redrawn = matchers.redraw(condition, size)
                cell, queries = list(redrawn.references), redrawn.queries
            fits = {"all": (full, part_spreads(full, cell, queries, parts))}
            for g in generators:
                rest = [r for r in cell if r.generator != g]
                fit = (make_matcher("alpha").fit(rest) if queries is None else
                       api._weighted_matcher("alpha", layer_weights(rest, queries)).fit(rest, queries))
                fits[g] = (fit, part_spreads(fit, rest, queries, parts))
            for gen, _, images in sets:
                _, kept, scorer = R.query_records(images, condition, proto, engine, matchers, a.records_cache)
                for b in range(1 if size >= proto.batch_size else min(3, len(images) // size)):
                    batch = [np.arange(b * size, (b + 1) * size)]
                    vec = api.mean_curve(scorer.curves_from_records(kept, batch), proto).fingerprint.vector()
                    for who in ("all", gen):
                        fit, spreads = fits[who]
                        answer = fit.attribute(vec)
                        top = answer.candidates[0].generator
                        if who == "all" and top != gen:
                            continue
                        rows.append(("right" if who == "all" else "left out", gen, answer.distance_ratio,
                                     part_ratios(fit, spreads, parts, vec, top), answer.verdict))
            print(f"{condition} m'={size}: {len(rows)} batches so far", file=sys.stderr, flush=True)
    right = [r for r in rows if r[0] == "right"]
    left = [r for r in rows if r[0] == "left out"]
    siblings = [r for r in left if r[1] in ("ddim", "pndm")]
    print(f"\n{len(right)} batches ranked right with every generator enrolled; {len(left)} batches of a "
          f"generator left out ({len(siblings)} of DDIM or PNDM)\n")
    print("| distance ratio on | right: median · 90th percentile | left out: median | AUC, all left out | "
          "AUC, DDIM/PNDM left out |\n|---|---|---|---|---|")
    measures = [("the whole curve", lambda r: r[2])]
    measures += [(f"{n} alone", lambda r, i=i: r[3][i]) for i, n in enumerate(names)]
    measures += [("the largest of the parts", lambda r: max(r[3])),
                 (f"the larger of the whole and {names[-1]}", lambda r: max(r[2], r[3][-1]))]
    for label, f in measures:
        near, far = [f(r) for r in right], [f(r) for r in left]
        print(f"| {label} | {np.median(near):.2f} · {np.percentile(near, 90):.2f} | {np.median(far):.2f} | "
              f"{auc(near, far):.3f} | {auc(near, [f(r) for r in siblings]):.3f} |")
    named = [r for r in right if r[4] == r[1]]
    through = [r for r in left if r[4] is not None]
    print(f"\nA test on {names[-1]}'s ratio besides the verdict's thresholds: | threshold | batches named right "
          "that it would turn unknown | left-out batches named as another that it would catch |\n|---|---|---|")
    for t in (1.2, 1.5, 2.0, 2.5):
        print(f"| {t} | {sum(r[3][-1] > t for r in named)} of {len(named)} | "
              f"{sum(r[3][-1] > t for r in through)} of {len(through)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
