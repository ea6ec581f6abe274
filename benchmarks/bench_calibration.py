"""Benchmark of open-set calibration (forensics.match.calibrate) as registries grow.

Calibration attributes every reference twice, once with itself left out and once with its whole
generator left out, and measures each answer's distance ratio against the spreads of what was left.
Three ways of computing the same points run in the same process on the same seeded synthetic curves:

- ``exact``: the shipped fast path of the similarity matchers (``alpha``), one similarity matrix, and
  only the left-out curve's own generator's spread recomputed per query;
- ``respread``: ``exact`` plus every spread recomputed from the kept n−1 curves per query (O(n²)
  each), the cost the fast path avoids;
- ``refit``: the default every plugin matcher gets (``forensics.match.refit_points``), one refit per
  left-out query (leave-one-out forced at every size here; beyond ``LOO_LIMIT`` references it holds out
  folds).

It prints seconds and the ratios against ``exact``, and checks that all three give the same points.

Then the threshold search on calibration points of the size a calibration at m′ has (16 sub-batches per
instance: about 850 points on the default): the thresholds of every operating point (balanced, named,
cautious) from one table, against the balanced point alone, in the same process; the balanced thresholds
must be the same. Last, the search's pass counts over 65³ triples from a histogram's suffix sums (the tool)
against each point tested at each triple (how they were counted before), from 850 to 86,000 points; the
counts must be the same. Run it on one thread: ``FORENSICS_THREADS=1 OMP_NUM_THREADS=1``.

    .venv/bin/python benchmarks/bench_calibration.py            # n = 50, 200, 400 references (~1.5 min)
    .venv/bin/python benchmarks/bench_calibration.py --quick    # n = 50, 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forensics.match import EnrolledCurve, generator_spreads, make_matcher, pairwise_distances, refit_points  # noqa: E402
from forensics.protocol import Fingerprint  # noqa: E402

DIGEST = "sha256:" + "0" * 64


def synthetic_refs(n: int, generators: int = 20, layers: int = 12, seed: int = 0) -> list[EnrolledCurve]:
    """``n`` curves of ``generators`` generators: a random smooth shape each, plus run-to-run noise."""
    rng = np.random.default_rng(seed)
    shapes = np.cumsum(rng.normal(0, 1, (generators, layers)), axis=1)
    refs = []
    for i in range(n):
        g = i % generators
        v = shapes[g] + rng.normal(0, 0.4, layers)
        refs.append(EnrolledCurve(f"g{g:02d}", f"run{i // generators}", Fingerprint.from_values(DIGEST, v.tolist())))
    return refs


def respread_seconds(refs) -> float:
    """What a fast path that recomputed spreads would add: every spread recomputed from the kept n−1
    curves for each left-out query (:func:`forensics.match.generator_spreads` on the kept block)."""
    x = np.stack([r.fingerprint.vector() for r in refs])
    labels = np.array([r.generator for r in refs], dtype=object)
    dist = pairwise_distances(x, x)
    t0 = time.perf_counter()
    for i in range(len(refs)):
        keep = np.arange(len(refs)) != i
        generator_spreads(dist[np.ix_(keep, keep)], labels[keep])
    return time.perf_counter() - t0


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small registries only")
    args = ap.parse_args()
    sizes = [50, 100] if args.quick else [50, 200, 400]
    print("open-set calibration of the alpha matcher: seconds (ratio to exact)")
    print(f"{'n refs':>7} {'exact':>9} {'respread':>18} {'refit':>18}  same points")
    for n in sizes:
        refs = synthetic_refs(n)
        m = make_matcher("alpha")
        t_exact, exact = timed(m.calibration_points, refs)
        t_respread = t_exact + respread_seconds(refs)
        t_refit, refit = timed(lambda: refit_points(m, refs, loo_limit=n))
        a, u, ga, gu = exact.answer, exact.unknown, refit.answer, refit.unknown
        same = (np.allclose(sorted(a), sorted(ga), rtol=0, atol=1e-12)
                and np.allclose(sorted(u), sorted(gu), rtol=0, atol=1e-12))
        print(f"{n:>7} {t_exact:>9.3f} {t_respread:>9.3f} ({t_respread / t_exact:>5.1f}×) "
              f"{t_refit:>9.3f} ({t_refit / t_exact:>5.1f}×)  {'yes' if same else 'NO'}")
    threshold_search([300, 850] if args.quick else [300, 850, 1700])
    pass_counts([850, 5000] if args.quick else [850, 5000, 20000, 86000])


def threshold_search(sizes: list[int]) -> None:
    """The grid search for every operating point against the balanced point alone (best of 3 runs each)."""
    from forensics.match.calibration import _best_thresholds

    print("\nthreshold search: seconds, every operating point (one table) vs balanced alone")
    print(f"{'points':>7} {'balanced':>9} {'all three':>18}  balanced the same")
    for n in sizes:
        rng = np.random.default_rng(n)
        k = int(n * 0.4)
        answer = np.c_[rng.normal(0.7, 0.1, k), np.abs(rng.normal(0.05, 0.03, k)), np.exp(rng.normal(0, 0.5, k))]
        unknown = np.c_[rng.normal(0.6, 0.1, n - k), np.abs(rng.normal(0.03, 0.03, n - k)),
                        np.exp(rng.normal(0.5, 0.5, n - k))]
        one = min(timed(_best_thresholds, answer, unknown, ("balanced",))[0] for _ in range(3))
        every = min(timed(_best_thresholds, answer, unknown)[0] for _ in range(3))
        alone = _best_thresholds(answer, unknown, ("balanced",))["balanced"]
        same = alone == _best_thresholds(answer, unknown)["balanced"]
        print(f"{n:>7} {one:>9.3f} {every:>9.3f} ({every / one:>5.2f}×)  {'yes' if same else 'NO'}")


def pass_counts(sizes: list[int]) -> None:
    """What the grid search counts — how many points pass each (ratio, score, margin) triple of 65 cuts
    each — from a histogram's suffix sums (the tool) against each point tested at each triple (the way it
    was counted before, one ratio cut at a time), best of 3 runs each. 86,000 points is about what one set
    of thresholds pooled over the default's 24 kept conditions at 4 batch sizes would search."""
    from forensics.match.calibration import _cuts, _passing_counts

    def point_by_point(values, cuts):
        return np.stack([((values[None, None, :, 0] >= cuts[0][:, None, None])
                          & (values[None, None, :, 1] >= cuts[1][None, :, None])
                          & (values[None, None, :, 2] >= tr)).sum(axis=2) for tr in cuts[2]])

    print("\npass counts over 65³ triples: seconds, point by point (before) vs histogram (now)")
    print(f"{'points':>7} {'before':>9} {'now':>9} {'speed-up':>9}  the same counts")
    for n in sizes:
        rng = np.random.default_rng(n)
        values = np.c_[rng.normal(0.6, 0.1, n), np.abs(rng.normal(0.04, 0.03, n)), -np.exp(rng.normal(0, 0.5, n))]
        cuts = [_cuts(values[:, k]) for k in range(3)]
        before = min(timed(point_by_point, values, cuts)[0] for _ in range(3 if n <= 20000 else 1))
        now = min(timed(_passing_counts, values, cuts)[0] for _ in range(3))
        same = np.array_equal(point_by_point(values, cuts), _passing_counts(values, cuts))
        print(f"{n:>7} {before:>9.3f} {now:>9.4f} {before / now:>8.0f}×  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
