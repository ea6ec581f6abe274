"""Benchmark of the C_T statistic (forensics.stats.ct) against a plain baseline built from the usual libraries.

Baseline ("what people reach for", as in dgm-eval / Meehan's code, all float64): scikit-learn
PCA(projection) fitted on the training set, KMeans(k, n_init, same seed) on it, then per cell a
scikit-learn NearestNeighbors(n_neighbors=1) on the cell's training points for its test and generated
points, and scipy's mannwhitneyu(L_Q, L_P, alternative='less') per cell.

Both run in the same process on the same seeded synthetic data (a Gaussian mixture; the generated set
mixes near-copies of training points with fresh samples) and with the same thread settings. It prints
per-phase times, one layer end to end, the floor (one float64 XᵀX of the training set), 12 layers with
the reference side cached exactly as the pipeline caches it (one .npz for all layers, laid out to be
memory-mapped, opened through forensics.engine; the previous layout, read as before, beside it), speed
ratios, the largest |difference| of C_T given the same cells, peak memory (resident set size measured in fresh subprocesses) and scaling with the training-set size and
the dimension; with --main-command also the README's main command, cold and warm; last, C_T of sub-batches
scored from per-image records (what redrawing the references at m′ repeats) against scipy per cell.

    .venv/bin/python benchmarks/bench_ct.py                   # the full run (several minutes)
    .venv/bin/python benchmarks/bench_ct.py --quick           # a smoke run (well under a minute)
    .venv/bin/python benchmarks/bench_ct.py --main-command    # also time `forensics attribute` (make demo)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forensics.stats import ct  # noqa: E402
from forensics.stats.ct import kmeans as km, pca, search, threads, tiles  # noqa: E402
from forensics import engine as pipeline  # noqa: E402
from forensics.io.atomic import save_npz_atomic  # noqa: E402

N_CENTRES = 20
DEMO = ROOT / "registry" / "mnist-effnet-lite0" / "samples" / "ddpm" / "heldout.npz"  # the Makefile's DEMO


# -- data ------------------------------------------------------------------------------------------
def make_layer(seed: int, l: int, n: int, m: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, test and generated float32 embeddings of one synthetic 'layer', built in float32 chunks
    (so that making them costs no more memory than holding them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(N_CENTRES, d)).astype(np.float32)
    spread = rng.uniform(0.3, 0.7, size=N_CENTRES).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, d), dtype=np.float32)
        for s in range(0, count, 8192):
            e = min(count, s + 8192)
            which = rng.integers(0, N_CENTRES, e - s)
            out[s:e] = centres[which] + spread[which, None] * rng.standard_normal((e - s, d), dtype=np.float32)
        return out

    train, test = draw(l), draw(n)
    copies = m // 5  # a fifth of the generated set are near-copies of training points
    gen = draw(m)
    pick = rng.choice(l, copies, replace=False)
    gen[:copies] = train[pick] + 0.05 * rng.standard_normal((copies, d), dtype=np.float32)
    return train, test, gen


# -- the baseline ----------------------------------------------------------------------------------
def baseline(train, test, gen, *, k, seed, n_init, projection, distance="euclidean", cells=None, times=None):
    """C_T as the plain libraries compute it (float64). ``cells``: given (train, test, gen) ids, or None
    for KMeans. ``times``: a dict that receives the phases' seconds."""
    from scipy.stats import mannwhitneyu
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    times = {} if times is None else times
    t0 = time.perf_counter()
    T, P, Q = (np.asarray(a, dtype=np.float64) for a in (train, test, gen))
    if projection is not None:
        pca = PCA(n_components=projection, random_state=seed).fit(T)
        T, P, Q = pca.transform(T), pca.transform(P), pca.transform(Q)
    t1 = time.perf_counter()
    if cells is None:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(T)
        tc, pc, qc = km.labels_, km.predict(P), km.predict(Q)
    else:
        tc, pc, qc = cells
    t2 = time.perf_counter()
    m, n = len(Q), len(P)
    tau = 20 / m
    num = den = 0.0
    for c in np.unique(tc):
        Tc, Pc, Qc = T[tc == c], P[pc == c], Q[qc == c]
        if distance == "cosine":  # 1 − |cos(x, t)| = min over ±t of the cosine distance
            nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(np.concatenate([Tc, -Tc]))
        else:
            nn = NearestNeighbors(n_neighbors=1).fit(Tc)
        lp = nn.kneighbors(Pc)[0][:, 0]
        if len(Qc) == 0 or not len(Qc) / m > tau:
            continue
        lq = nn.kneighbors(Qc)[0][:, 0]
        u = mannwhitneyu(lq, lp, alternative="less").statistic
        mq, np_ = len(lq), len(lp)
        z = (u - (mq * np_ / 2 - 0.5)) / np.sqrt(mq * np_ * (mq + np_ + 1) / 12)
        num += np_ / n * z
        den += np_ / n
    t3 = time.perf_counter()
    times.update(pca=t1 - t0, kmeans=t2 - t1, stat=t3 - t2, total=t3 - t0)
    return num / den


# -- ours, phase by phase (the same steps FittedCT.fit / score take) ----------------------------
def ours_phases(train, test, gen, *, k, seed, projection, device=None):
    """The steps FittedCT.fit / score take, timed one by one; ``device``: a torch device for the PCA,
    projections, k-means and searches (as ``fit(..., device=...)`` runs them), or None for the CPU path."""
    times = {}
    dev = ct.resolve_device(device)
    dims = min(projection, train.shape[1])
    t0 = time.perf_counter()
    rows = tiles.rows_for(train, dev)
    mean, comp = pca.pca(rows, dims)
    t1 = time.perf_counter()
    tp, pp = pca.project(rows, mean, comp), pca.project(tiles.rows_for(test, dev, keep=False), mean, comp)
    del rows
    t2 = time.perf_counter()
    centres = km.kmeans(tp, k, seed) if dev is None else km.kmeans_on(tp, k, seed, dev)
    t3 = time.perf_counter()
    tc, pc = km.assign(tp, centres), km.assign(pp, centres)
    if dev is None:
        threads.parallel(lambda c: search.Cell(tp[tc == c], "euclidean").nearest(pp[pc == c]), list(range(k)))
    else:
        for c in range(k):
            search.Cell(tp[tc == c], "euclidean").nearest(pp[pc == c], tiles.tiles_for(dev))
    t4 = time.perf_counter()
    ref = ct.FittedCT.fit(train, test, k=k, seed=seed, projection=projection, device=dev)
    t5 = time.perf_counter()
    ref.score(gen)
    t6 = time.perf_counter()
    times.update(pca=t1 - t0, project=t2 - t1, kmeans=t3 - t2, test_side=t4 - t3, fit=t5 - t4, score=t6 - t5)
    return times


def cached_phases(ref: ct.FittedCT, gen: np.ndarray, clock=time.perf_counter) -> dict:
    """The steps of FittedCT.score on a reference loaded from the cache, timed one by one by ``clock``
    (wall time by default; ``time.process_time`` for CPU time). ``cells``: the cells' search structures
    (their score rows and, for a cell the host search splits, its groups)."""
    times = {}
    t0 = clock()
    q = ref._prepare(gen)
    t1 = clock()
    qc = km.assign(q, ref._centres)
    t2 = clock()
    members = [np.flatnonzero(qc == c) for c in ref._cells]
    busy = [i for i in range(len(ref._cells)) if len(members[i])]
    threads.parallel(lambda i: ref._cell(i) if ref.device is not None else ref._cell(i)._split(), busy)
    t3 = clock()
    found = ref._nearest(members, q, busy)  # on the reference's device, if it has one
    t4 = clock()
    test_index = np.searchsorted(ref._cells, ref._test_cells)
    for i, lq in zip(busy, found):
        ct.mann_whitney_u(lq, ref._test_dist[test_index == i])
    t5 = clock()
    times.update(project=t1 - t0, assign=t2 - t1, cells=t3 - t2, search=t4 - t3, u=t5 - t4)
    return times


def covariance_floor(train) -> tuple[float, float]:
    """The product any exact PCA needs, one float64 XᵀX of the training set, timed two ways: as numpy
    computes it (BLAS syrk on the library's threads — what scikit-learn's covariance_eigh solver does)
    from a float64 copy made beforehand (not timed), and as forensics.stats.ct's PCA computes it (centred
    float64 blocks converted from the float32 data, syrk per row group on single-threaded workers)."""
    t64 = np.asarray(train, dtype=np.float64)
    t = time.perf_counter()
    t64.T @ t64
    numpy_time = time.perf_counter() - t
    del t64
    n, d = train.shape
    mean = train.mean(axis=0, dtype=np.float64)

    def accumulate(group):
        cov = np.zeros((d, d))
        buf = np.empty((max(1, min(group[1] - group[0], tiles._ROWS // d)), d))
        for s, e in tiles.row_blocks(group[1] - group[0], d):
            b = tiles.centred_block(train, group[0] + s, group[0] + e, mean, buf)
            cov += b.T @ b
        return cov

    t = time.perf_counter()
    threads.parallel(accumulate, tiles.row_groups(n, d))
    return numpy_time, time.perf_counter() - t


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def fmt(x: float) -> str:
    return f"{x:8.3f} s"


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


# -- memory (fresh subprocesses) -------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_child(which: str, l: int, n: int, m: int, d: int, k: int, n_init: int, projection: int) -> None:
    """One run in a fresh process: the peak resident set size during the call (Linux VmHWM, reset just
    before the call by writing 5 to /proc/self/clear_refs) against the resident size before it."""
    train, test, gen = make_layer(0, l, n, m, d)
    import torch  # noqa: F401  (imports are not the statistic's memory: both load the same libraries)
    from sklearn.cluster import KMeans  # noqa: F401
    ct.ct_score(train[:500], test[:200], gen[:200], k=k, projection=min(projection, d))
    baseline(train[:500], test[:200], gen[:200], k=k, seed=0, n_init=1, projection=min(projection, d))
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    if which == "ours":
        ct.ct_score(train, test, gen, k=k, projection=projection, seed=0)
    else:
        baseline(train, test, gen, k=k, seed=0, n_init=n_init, projection=projection)
    print(json.dumps({"rss_before_kib": before, "peak_kib": _status_kib("VmHWM"),
                      "data_mib": (train.nbytes + test.nbytes + gen.nbytes) / 2**20}))


def measure_memory(which: str, args, l, n, m, d) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", which, "--sizes", f"{l},{n},{m},{d}",
           "--k", str(args.k), "--n-init", str(args.n_init), "--projection", str(args.projection)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- the README's main command ---------------------------------------------------------------------
def main_command(repeats: int) -> None:
    """`forensics attribute` on the bundled 500-image sample (what `make demo` runs), in fresh processes:
    cold (empty user cache, first run) and warm (same cache, later runs)."""
    exe = Path(sys.executable).with_name("forensics")
    print(f"6. the README's main command: {exe.name} attribute {DEMO.relative_to(ROOT)} ({load()})")
    if not exe.exists() or not DEMO.exists():
        print("   (skipped: the forensics entry point or the bundled sample set is missing)\n")
        return
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FORENSICS_CACHE_DIR": cache}
        walls = []
        for _ in range(1 + repeats):
            t = time.perf_counter()
            subprocess.run([str(exe), "attribute", str(DEMO)], check=True, capture_output=True, env=env)
            walls.append(time.perf_counter() - t)
    print(f"   cold (empty cache): {fmt(walls[0])};  warm: " + ", ".join(fmt(w).strip() for w in walls[1:]))
    # the statistic's share of it: the shipped reference side read from the registry, 9 layers scored
    ref_dir = DEMO.parent.parent.parent / "reference"
    (path,) = ref_dir.glob("*.npz")
    arrays, t_load = timed(lambda: pipeline._read_npz(path, remove=False))
    layers = list(arrays["__layers__"])
    refs, t_unpack = timed(lambda: pipeline._unpack(arrays, layers, SimpleNamespace(
        from_arrays=ct.FittedCT.from_arrays)))
    rng = np.random.default_rng(0)
    queries = [rng.normal(size=(500, r.dim)).astype(np.float32) for r in refs]
    _, t_score = timed(lambda: [r.score(q) for r, q in zip(refs, queries)])
    print(f"   of which the statistic: reference read {t_load * 1e3:.0f} ms + unpacked {t_unpack * 1e3:.0f} ms, "
          f"{len(refs)} layers scored on 500 points {t_score * 1e3:.0f} ms (the rest: start-up, the encoder, "
          f"embedding the 500 images, matching, the report)\n")


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-init", type=int, default=10, help="k-means restarts, the same for both (dgm-eval: 10)")
    ap.add_argument("--projection", type=int, default=64)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--baseline-layers", type=int, default=2, help="layers the baseline is timed on (scaled)")
    ap.add_argument("--threads", type=int, default=0, help="BLAS/OpenMP/torch threads for both (0: defaults)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the one-layer comparison (fastest kept)")
    ap.add_argument("--cached-repeats", type=int, default=2, help="runs of the cached 12 layers (fastest kept)")
    ap.add_argument("--scaling-repeats", type=int, default=2)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--skip", default="", help="sections to leave out, e.g. 2,3,4 (1 always runs: the others "
                                                "compare with it; --no-scaling is --skip 5)")
    ap.add_argument("--main-command", action="store_true", help="also time the README's main command")
    ap.add_argument("--device", help="also time the statistic on this torch device (e.g. cuda), against the "
                                      "CPU path and the baseline of section 1")
    ap.add_argument("--memory-child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    skip = {int(v) for v in args.skip.split(",") if v.strip()} | ({5} if args.no_scaling else set())
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    km._KMEANS_INIT = args.n_init

    if args.memory_child:
        l, n, m, d = (int(v) for v in args.sizes.split(","))
        memory_child(args.memory_child, l, n, m, d, args.k, args.n_init, args.projection)
        return

    if args.quick:
        l, n, m, d = 5000, 1000, 1000, 128
        args.layers, args.baseline_layers, args.repeats, args.scaling_repeats = 3, 1, 1, 1
        args.cached_repeats = 1
        train_sizes, dims = (2000, 5000, 20000), (32, 128, 256)
    else:
        l, n, m, d = 50000, 10000, 10000, 768
        train_sizes, dims = (10000, 50000, 200000), (64, 256, 768, 1024)
    k, p = args.k, args.projection

    blas = [f"{i['internal_api']} {i.get('version')} ({i.get('architecture', '-')}, {i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    print("C_T benchmark: forensics.stats.ct vs scikit-learn PCA + KMeans + NearestNeighbors + scipy mannwhitneyu")
    print(f"machine: {os.cpu_count()} CPUs, {load()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); numpy BLAS: {blas[0] if blas else '?'}; per-thread "
          f"thread limits: {'yes' if threads.per_thread_setters() else 'no (process-wide switch)'}")
    print(f"data: l={l} train, n={n} test, m={m} generated, d={d} float32; PCA to {p}, k={k}, "
          f"k-means restarts n_init={args.n_init} for both, seed 0\n")

    train, test, gen = make_layer(0, l, n, m, d)
    # warm-up (imports, first calls) on a small slice, not timed
    ct.ct_score(train[:2000], test[:500], gen[:500], k=k, projection=min(p, d))
    baseline(train[:2000], test[:500], gen[:500], k=k, seed=0, n_init=1, projection=min(p, d))

    # 1. one layer, end to end: the two alternate, each timing is the fastest of --repeats runs
    R = args.repeats
    bt: dict = {}
    phases: dict = {}
    ours_total = floor_np = floor_ours = float("inf")
    ratios = []
    print(f"1. one layer, end to end (euclidean; each figure the fastest of {R} alternating runs; {load()})")
    for _ in range(R):
        times: dict = {}
        base_value = baseline(train, test, gen, k=k, seed=0, n_init=args.n_init, projection=p, times=times)
        bt = {key: min(v, bt.get(key, float("inf"))) for key, v in times.items()}
        ph = ours_phases(train, test, gen, k=k, seed=0, projection=p)
        phases = {key: min(v, phases.get(key, float("inf"))) for key, v in ph.items()}
        result, dt = timed(lambda: ct.ct_score(train, test, gen, k=k, projection=p, seed=0))
        ours_total = min(ours_total, dt)
        ratios.append(times["total"] / dt)
        if not args.quick:
            f_np, f_ours = covariance_floor(train)
            floor_np, floor_ours = min(floor_np, f_np), min(floor_ours, f_ours)
    print(f"   baseline: PCA {fmt(bt['pca'])} | KMeans {fmt(bt['kmeans'])} | NN + U per cell {fmt(bt['stat'])}"
          f" | total {fmt(bt['total'])}")
    print(f"   ours:     PCA {fmt(phases['pca'])} | project {fmt(phases['project'])} | k-means "
          f"{fmt(phases['kmeans'])} | test-side NN {fmt(phases['test_side'])}")
    print(f"             FittedCT.fit {fmt(phases['fit'])} | score {fmt(phases['score'])} | "
          f"ct_score total {fmt(ours_total)}")
    print(f"   speed-up, one layer end to end: {bt['total'] / ours_total:6.1f}x   (per run: "
          + ", ".join(f"{r:.1f}x" for r in ratios)
          + f"; C_T: ours {result.value:+.4f}, baseline on its own KMeans cells {base_value:+.4f})")
    if not args.quick:
        floor = min(floor_np, floor_ours)
        print(f"   floor, one float64 XᵀX of T ({l * d * d / 1e9:.1f} GFLOP): numpy syrk {fmt(floor_np).strip()}, "
              f"ours {fmt(floor_ours).strip()} ({l * d * d / floor_ours / 1e9:.0f} GFLOP/s) — the baseline's "
              f"total is {bt['total'] / floor:.1f}x the faster: no exact method can be faster than that")
        from sklearn.decomposition import PCA

        t64 = np.asarray(train, dtype=np.float64)
        solvers = {}
        for solver in ("covariance_eigh", "randomized", "full"):
            solvers[solver] = timed(lambda s=solver: PCA(p, svd_solver=s, random_state=0).fit(t64))[1]
        print("   scikit-learn PCA fit alone, by solver: " + ", ".join(f"{k_} {v:.3f} s" for k_, v in solvers.items())
              + f"  (the baseline uses 'auto' = {PCA(p).fit(t64[:20000])._fit_svd_solver} here; randomized "
              "was 'auto' for this shape before scikit-learn 1.5 and is not exact)")
        print(f"   ours, PCA alone: {phases['pca']:.3f} s\n")
        del t64
    else:
        print()

    # 2. exactness given the same cells
    if 2 not in skip:
        print("2. C_T given the same cells (baseline: sklearn PCA + NearestNeighbors + scipy, float64)")
        worst = 0.0
        for distance in ("euclidean", "cosine"):
            for proj in (p, None):
                ref = ct.FittedCT.fit(train, test, k=k, projection=proj, distance=distance, seed=0)
                cells = (ref.assign(train), ref.assign(test), ref.assign(gen))
                ours_v = ct.ct_score(train, test, gen, cells=cells, projection=proj, distance=distance).value
                base_v = baseline(train, test, gen, k=k, seed=0, n_init=1, projection=proj, distance=distance,
                                  cells=cells)
                diff = abs(ours_v - base_v)
                worst = max(worst, diff)
                print(f"   {distance:9s} projection={proj!s:4s}: ours {ours_v:+.12f} baseline {base_v:+.12f} "
                      f"|diff| {diff:.2e}")
        print(f"   max |difference| = {worst:.2e} ({'within' if worst <= 1e-9 else 'OVER'} 1e-9)\n")

    # 3. many layers, reference cached as the pipeline caches it
    if 3 not in skip:
        L, Lb = args.layers, min(args.baseline_layers, args.layers)
        print(f"3. {L} layers (different data per layer), reference side cached as the pipeline caches it: one "
              f".npz for all layers, mapped ({load()})")
        statistic = SimpleNamespace(from_arrays=ct.FittedCT.from_arrays)
        names = [f"layer{i}" for i in range(L)]
        with tempfile.TemporaryDirectory() as tmp:
            fit_time, refs, gens = 0.0, [], []
            for i in range(L):
                tr, te, g = (train, test, gen) if i == 0 else make_layer(i, l, n, m, d)
                ref, dt = timed(lambda tr=tr, te=te: ct.FittedCT.fit(tr, te, k=k, projection=p, seed=0))
                fit_time += dt
                refs.append(ref)
                gens.append(g)
            path = pipeline.save_reference(Path(tmp) / "reference.npz", refs, names)
            old_path = save_npz_atomic(Path(tmp) / "previous.npz", pipeline._pack(refs, names))  # previous layout
            size = path.stat().st_size
            del refs
            cached = read_time = previous = previous_read = float("inf")
            pipeline.load_reference(path, names, statistic)  # warm-up of both readers (first calls), not timed
            pipeline._unpack(pipeline._read_npz(old_path, remove=False), names, statistic)
            for _ in range(args.cached_repeats):  # this version and the previous layout, alternating
                pipeline.forget_opened()  # as a fresh process: map the file and check its sums again
                t = time.perf_counter()
                loaded = pipeline.load_reference(path, names, statistic)
                t_read = time.perf_counter() - t
                for ref, g in zip(loaded, gens):
                    ref.score(g)
                total = time.perf_counter() - t
                if total < cached:
                    cached, read_time = total, t_read
                t = time.perf_counter()
                loaded = pipeline._unpack(pipeline._read_npz(old_path, remove=False), names, statistic)
                t_read = time.perf_counter() - t
                for ref, g in zip(loaded, gens):
                    ref.score(g)
                total = time.perf_counter() - t
                if total < previous:
                    previous, previous_read = total, t_read
            # where the cached time goes, per layer (one more pass, phase by phase)
            pipeline.forget_opened()
            loaded = pipeline.load_reference(path, names, statistic)
            parts: dict = {}
            for ref, g in zip(loaded, gens):
                for key, v in cached_phases(ref, g).items():
                    parts[key] = parts.get(key, 0.0) + v
            on_device = cached_on_device(args, path, names, statistic, gens) if args.device else None
        base_layers = bt["total"]  # layer 0: the fastest of the runs above
        for i in range(1, Lb):
            tr, te, g = make_layer(i, l, n, m, d)
            _, dt = timed(lambda tr=tr, te=te, g=g: baseline(tr, te, g, k=k, seed=0, n_init=args.n_init, projection=p))
            base_layers += dt
        base_scaled = base_layers / Lb * L
        print(f"   baseline, everything per layer: {fmt(base_scaled)}  (timed on {Lb} layer(s): "
              f"{base_layers:.3f} s, scaled to {L})")
        print(f"   ours, fit once per layer:       {fmt(fit_time)}  (not part of the cached run)")
        print(f"   ours, cached (open .npz + score): {fmt(cached)}  ({cached / L * 1000:.0f} ms a layer; the fastest "
              f"of {args.cached_repeats})")
        print(f"     map the {size / 2**20:.0f} MiB .npz (every array in place, its word sums checked) and unpack {L} "
              f"references: {read_time * 1e3:.0f} ms")
        print(f"     the previous layout, read as before (every array copied, zip CRC checked): {previous_read * 1e3:.0f} ms; "
              f"with scoring {fmt(previous)} ({base_scaled / previous:.1f}x the baseline; this version "
              + (f"{previous / cached:.2f}x faster)" if cached <= previous else f"{cached / previous:.2f}x slower)"))
        print("     per layer: " + " | ".join(f"{key} {v / L * 1e3:.0f} ms" for key, v in parts.items()))
        print(f"   ours, uncached (fit + score):   {fmt(fit_time + cached)}")
        print(f"   speed-up, {L} layers cached: {base_scaled / cached:6.1f}x; uncached: "
              f"{base_scaled / (fit_time + cached):6.1f}x")
        if on_device is not None:
            total, first, dev_parts = on_device
            print(f"   on {args.device}, cached (read .npz + unpack + move to the device + score): {fmt(total)}  "
                  f"({total / L * 1000:.0f} ms a layer, the fastest of {args.cached_repeats}; the first, with the "
                  f"device's start-up: {first:.3f} s)")
            print("     per layer: " + " | ".join(f"{key} {v / L * 1e3:.0f} ms" for key, v in dev_parts.items()))
            print(f"   speed-up on {args.device}, {L} layers cached: {base_scaled / total:6.1f}x")
        print()

    # 4. memory
    if 4 not in skip:
        print("4. peak memory, one layer end to end (peak resident set size, Linux VmHWM, in a fresh subprocess each; "
              f"the data themselves are {(train.nbytes + test.nbytes + gen.nbytes) / 2**20:.0f} MiB float32)")
        for which in ("baseline", "ours"):
            mem = measure_memory(which, args, l, n, m, d)
            extra = (mem["peak_kib"] - mem["rss_before_kib"]) / 1024
            print(f"   {which:8s}: peak RSS {mem['peak_kib'] / 1024:7.0f} MiB, {extra:6.0f} MiB above the RSS "
                  f"before the call ({mem['rss_before_kib'] / 1024:.0f} MiB: interpreter, libraries, data)")
        print()

    scaling: dict = {}
    if 5 not in skip:
        # 5. scaling
        print(f"5. scaling, one layer end to end (n=m={n}, PCA {p}, k={k}; fastest of {args.scaling_repeats} "
              f"alternating runs; {load()})")
        print(f"   training-set size l (d = {d}):")
        for size in train_sizes:
            tr, te, g = make_layer(100 + size, size, n, m, d)
            to, tb = scaling_pair(tr, te, g, k, p, args)
            print(f"     l={size:7d}: ours {fmt(to)}  baseline {fmt(tb)}  ratio {tb / to:5.1f}x")
            if args.device:  # kept for section 7 (the device's scaling against the same baseline)
                scaling[("l", size)] = (tb, tr, te, g)
            del tr, te, g
        print(f"   dimension d (l = {l}):")
        for dim in dims:
            tr, te, g = make_layer(200 + dim, l, n, m, dim)
            to, tb = scaling_pair(tr, te, g, k, min(p, dim), args)
            print(f"     d={dim:5d}: ours {fmt(to)}  baseline {fmt(tb)}  ratio {tb / to:5.1f}x")
            if args.device:
                scaling[("d", dim)] = (tb, tr, te, g)
            del tr, te, g
        print()

    if args.main_command:
        main_command(repeats=2)
    if args.device:
        device_section(args, train, test, gen, k, p, bt["total"], ours_total, scaling)
    if 8 not in skip:
        records_section(train, test, gen, k, p, m, repeats=args.repeats)
    print(f"done ({load()})")


def records_section(train, test, gen, k: int, p: int, m: int, repeats: int, size: int = 200,
                    draws: int = 400) -> None:
    """8. What redrawing the references at m′ repeats: C_T of seeded sub-batches of ``size`` rows from one
    set's per-image records, against scipy's mannwhitneyu per cell on the same records and test distances."""
    from scipy.stats import mannwhitneyu

    ref = ct.FittedCT.fit(train, test, k=k, projection=p)
    records = ref.records(gen)
    arrays = ref.to_arrays()
    test_dist, test_cells, cells, n = arrays["test_dist"], arrays["test_cells"], arrays["cells"], len(arrays["test_dist"])
    rng = np.random.default_rng(0)

    def base(r: np.ndarray) -> float:
        tau = 20 / max(len(r), m) if len(r) < 20 * len(cells) else 20 / len(r)  # default_tau with the set's m
        num = den = 0.0
        for c in cells:
            lq, lp = r[r[:, 0] == c, 1], test_dist[test_cells == c]
            if not len(lq) / len(r) > tau:
                continue
            u = mannwhitneyu(lq, lp, alternative="less").statistic
            mq, np_ = len(lq), len(lp)
            num += np_ / n * (u - (mq * np_ / 2 - 0.5)) / np.sqrt(mq * np_ * (mq + np_ + 1) / 12)
            den += np_ / n
        return num / den

    rows = [rng.choice(len(records), size, replace=False) for _ in range(draws)]
    subs = [records[r] for r in rows]
    one_t = all_t = base_t = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        one = [ref.score_records(r, batch_size=m).value for r in subs]
        t1 = time.perf_counter()
        together = [c.value for c in ref.score_subsets(records, rows, batch_size=m)]
        t2 = time.perf_counter()
        theirs = [base(r) for r in subs]
        t3 = time.perf_counter()
        one_t, all_t, base_t = min(one_t, t1 - t0), min(all_t, t2 - t1), min(base_t, t3 - t2)
    assert one == together, "score_subsets must give each subset's score_records"
    worst = max(abs(a - b) for a, b in zip(one, theirs))
    print(f"8. {draws} sub-batches of {size} from the per-image records of {len(records)} generated points "
          f"(one layer, k={k}; what redrawing the references at m′ repeats per layer and instance)")
    print(f"   baseline (scipy mannwhitneyu per cell): {base_t / draws * 1e3:.3f} ms a sub-batch;  ours one by one "
          f"(score_records): {one_t / draws * 1e3:.3f} ms ({base_t / one_t:.1f}x);  together (score_subsets): "
          f"{all_t / draws * 1e3:.3f} ms ({base_t / all_t:.1f}x);  max |difference| {worst:.1e}\n")


def cached_on_device(args, path, names, statistic, gens) -> tuple[float, float, dict]:
    """Section 3's cached run with each loaded reference moved to ``args.device`` (as the pipeline moves a
    reference it read from a file): the fastest total, the first (CUDA start-up in it) and the phases."""
    totals = []
    for _ in range(1 + args.cached_repeats):
        t = time.perf_counter()
        pipeline.forget_opened()
        loaded = [r.to(args.device) for r in pipeline.load_reference(path, names, statistic)]
        for ref, g in zip(loaded, gens):
            ref.score(g)
        totals.append(time.perf_counter() - t)
    pipeline.forget_opened()
    loaded = [r.to(args.device) for r in pipeline.load_reference(path, names, statistic)]
    parts: dict = {}
    for ref, g in zip(loaded, gens):
        for key, v in cached_phases(ref, g).items():
            parts[key] = parts.get(key, 0.0) + v
    return min(totals[1:]), totals[0], parts


def device_section(args, train, test, gen, k: int, p: int, base_total: float, cpu_total: float,
                   scaling: dict) -> None:
    """7. The statistic with its covariance and searches on a torch device: phases, time, equality with
    the CPU path and with the baseline given the same cells, and scaling with the training-set size."""
    device, repeats = args.device, args.repeats
    ct.ct_score(train[:2000], test[:500], gen[:500], k=k, projection=min(p, train.shape[1]), device=device)  # warm-up
    print(f"7. on {device} (PCA, projection, k-means and the nearest-neighbour searches there; the float64 "
          f"re-check on the CPU; fastest of {repeats}; {load()})")
    phases: dict = {}
    on = float("inf")
    for _ in range(repeats):
        ph = ours_phases(train, test, gen, k=k, seed=0, projection=p, device=device)
        phases = {key: min(v, phases.get(key, float("inf"))) for key, v in ph.items()}
        result, dt = timed(lambda: ct.ct_score(train, test, gen, k=k, projection=p, seed=0, device=device))
        on = min(on, dt)
    print(f"   phases: PCA {fmt(phases['pca'])} | project {fmt(phases['project'])} | k-means "
          f"{fmt(phases['kmeans'])} | test-side NN {fmt(phases['test_side'])}")
    print(f"           FittedCT.fit {fmt(phases['fit'])} | score {fmt(phases['score'])} | ct_score total {fmt(on)}")
    print(f"   one layer end to end: {fmt(on)}  vs CPU path {fmt(cpu_total)} ({cpu_total / on:.1f}x), "
          f"vs baseline {fmt(base_total)} ({base_total / on:.1f}x)")
    ref = ct.FittedCT.fit(train, test, k=k, projection=p, seed=0, device=device)
    score_on = min(timed(lambda: ref.score(gen))[1] for _ in range(repeats))
    score_cpu = min(timed(lambda: ref.to(None).score(gen))[1] for _ in range(repeats))
    print(f"   score against a fitted reference: {fmt(score_on)} vs CPU path {fmt(score_cpu)} "
          f"({score_cpu / score_on:.1f}x)")
    worst_cpu = worst_base = 0.0
    for distance in ("euclidean", "cosine"):
        for proj in (p, None):
            dref = ct.FittedCT.fit(train, test, k=k, projection=proj, distance=distance, seed=0, device=device)
            cref = ct.FittedCT.fit(train, test, k=k, projection=proj, distance=distance, seed=0)
            v_dev, v_cpu = dref.score(gen).value, cref.score(gen).value
            cells = (dref.assign(train), dref.assign(test), dref.assign(gen))
            same = ct.ct_score(train, test, gen, cells=cells, projection=proj, distance=distance, device=device).value
            base_v = baseline(train, test, gen, k=k, seed=0, n_init=1, projection=proj, distance=distance, cells=cells)
            worst_cpu, worst_base = max(worst_cpu, abs(v_dev - v_cpu)), max(worst_base, abs(same - base_v))
            print(f"   {distance:9s} projection={proj!s:4s}: {device} {v_dev:+.12f}, CPU path {v_cpu:+.12f} "
                  f"(|diff| {abs(v_dev - v_cpu):.2e}); same cells as the baseline: {same:+.12f} vs {base_v:+.12f} "
                  f"(|diff| {abs(same - base_v):.2e})")
    print(f"   max |difference|: from the CPU path {worst_cpu:.2e}, from the baseline given the same cells "
          f"{worst_base:.2e} ({'within' if worst_base <= 1e-9 else 'OVER'} 1e-9)")
    if scaling:
        print(f"   scaling, one layer end to end on {device} against section 5's baseline (same data):")
        for (label, size), (tb, tr, te, g) in scaling.items():
            to = min(timed(lambda: ct.ct_score(tr, te, g, k=k, projection=min(p, tr.shape[1]), seed=0,
                                               device=device))[1] for _ in range(args.scaling_repeats))
            print(f"     {label}={size:7d}: {device} {fmt(to)}  baseline {fmt(tb)}  ratio {tb / to:5.1f}x")
    print()


def scaling_pair(tr, te, g, k, p, args) -> tuple[float, float]:
    """Fastest of --scaling-repeats alternating runs of ours and the baseline."""
    to = tb = float("inf")
    for _ in range(args.scaling_repeats):
        to = min(to, timed(lambda: ct.ct_score(tr, te, g, k=k, projection=p, seed=0))[1])
        tb = min(tb, timed(lambda: baseline(tr, te, g, k=k, seed=0, n_init=args.n_init, projection=p))[1])
    return to, tb


if __name__ == "__main__":
    main()
