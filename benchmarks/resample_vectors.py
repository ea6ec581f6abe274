"""How fast the curves of many subsets of a set's images come from their per-image records.

Resampling a batch (`attribute`, `registry evaluate`) and redrawing the enrolled runs at another size
(`registry calibrate`, `registry evaluate --batch-size`) need only the curve's values of thousands of subsets.
Each statistic that offers ``subset_values`` (C_T, mean-z) gives them without a result object per subset and
cell (:meth:`forensics.engine.Engine.vectors_from_records`); the baseline, in the same process right before, is
the full curves of the same subsets (:meth:`~forensics.engine.Engine.curves_from_records`), read as vectors as
before. The two must agree to the last bit, and the script checks they do.

One thread (``FORENSICS_THREADS=1``, ``OMP_NUM_THREADS=1``, set here before numpy loads): the work is numpy on
small arrays, and on a shared machine more threads only spin. Run::

    .venv/bin/python benchmarks/resample_vectors.py                   # the default protocol, 100 resamples
    .venv/bin/python benchmarks/resample_vectors.py --resamples 400 --sizes 100,500 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("FORENSICS_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default=None, help="protocol (default: the registry's default)")
    ap.add_argument("--condition", default="none", help="the records' condition (default none)")
    ap.add_argument("--resamples", type=int, default=100, help="bootstrap resamples per size (default 100)")
    ap.add_argument("--sizes", default="100,500", help="images per resample, comma-separated (default 100,500)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each, the best kept (default 3)")
    a = ap.parse_args()

    from forensics import api
    from forensics.engine import make_engine
    from forensics.match.resampling import bootstrap_rows

    reg = api.open_registry()
    name = reg.resolve_protocol(a.protocol)
    engine = make_engine(reg.protocol(name), reference_dir=reg.reference_dir)
    refs = reg.enrolled(name)
    records = list(reg.records(name, refs[:1], a.condition)[0][refs[0].instance])
    n = records[0].shape[0]
    engine.vectors_from_records(records, [None])  # the reference side loaded before anything is timed
    print(f"{name}: {len(engine.protocol.layers)} layers, records of {refs[0].generator}/{refs[0].instance} under "
          f"{a.condition} ({n} images); {a.resamples} resamples per size, best of {a.repeats}, one thread")
    print(f"{'size':>6} {'curves (before)':>16} {'values alone':>14} {'ratio':>7}  same")
    for size in (int(s) for s in a.sizes.split(",")):
        subsets = bootstrap_rows([np.arange(min(size, n))], resamples=a.resamples)

        def best(fn):
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
            return min(times), out

        t_curves, curves = best(lambda: np.array([c.fingerprint.vector()
                                                  for c in engine.curves_from_records(records, subsets)]))
        t_values, values = best(lambda: engine.vectors_from_records(records, subsets))
        same = np.array_equal(curves, values)
        print(f"{min(size, n):>6} {t_curves * 1e3 / a.resamples:>13.2f} ms {t_values * 1e3 / a.resamples:>11.3f} ms "
              f"{t_curves / t_values:>6.1f}×  {'yes' if same else 'NO'}")
        if not same:
            raise SystemExit("the values differ from the curves': a statistic's subset_values is wrong")


if __name__ == "__main__":
    main()
