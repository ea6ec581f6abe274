"""Where `forensics attribute` spends its time on one machine, each part beside its floor.

A run on the protocol's 500 images (default: the Makefile's DEMO, a bundled held-out set, under the
registry's default protocol) is broken down into interpreter start, imports, registry, model build and
weights, decode, embed, reference load, statistic, match, resampling and render. Each part is set beside a floor
measured on this machine in the same process, right after it (the machines here are shared and their
speed varies 2–3× from minute to minute, so only same-process ratios mean anything):

- interpreter and imports: ``python -c pass``; ``import torch`` (an encoder needs torch, whatever else);
- registry: parsing the same YAML files with PyYAML's C loader, no checks;
- model build: copying the weights' bytes once at this machine's measured memory bandwidth;
- decode: ``np.load`` of the file and one sha256 of its pixels (a report records their hash);
- embed: the encoders' FLOPs (counted by torch on a small batch) at torch's measured float32 matmul rate;
- reference load: the reference files' bytes at memory bandwidth, and one sha256 of them (the check a
  shipped file must pass); beside it, the previous version's reader on the same files (sha256 of the file,
  then every array copied out of the zip with its CRC checked);
- statistic: a plain numpy + scikit-learn + scipy pipeline on the same fitted reference (projection,
  nearest centre, brute-force nearest training point per cell, ``mannwhitneyu``), and the search's FLOPs
  at the matmul rate;
- match: the distances of the curve to every enrolled curve in numpy; render: ``json.dumps`` of the report;
- resampling (the verdict held to bootstrap resamples of the batch, from its per-image records): beside it,
  the same resamples scored from their embeddings, what it would cost a statistic that keeps no records.

Each part's time is wall and CPU (process time) of the part alone (nested parts are subtracted). Then the
command itself is timed end to end (``forensics attribute … --json``, a fresh process). With
``--contention`` a last section starts a CPU-burning process and times the zoo's diffusion network and
the EfficientNet embedding in fresh processes under each thread setting and OpenMP wait policy.

Run it niced on a shared machine (it says so in its output)::

    nice -n 10 .venv/bin/python benchmarks/attribute_breakdown.py                  # ~2–5 min here
    nice -n 10 .venv/bin/python benchmarks/attribute_breakdown.py --contention     # + threads under load
    nice -n 10 .venv/bin/python benchmarks/attribute_breakdown.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FORENSICS = str(Path(PY).with_name("forensics"))
DEMO = ROOT / "registry" / "mnist-effnet-lite0" / "samples" / "ddpm" / "heldout.npz"


# -- helpers -------------------------------------------------------------------------------------
def load() -> str:
    try:
        return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "load average ?"


def child_env(threads: int | None, policy: str | None = None) -> dict:
    """The environment of a child process: thread settings explicit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
                "FORENSICS_THREADS"):
        env.pop(key, None)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   FORENSICS_THREADS=str(threads))
    if policy:
        env.update(OMP_WAIT_POLICY=policy, KMP_BLOCKTIME="0" if policy == "PASSIVE" else "200")
    return env


def wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def fmt(s: float) -> str:
    return f"{s * 1e3:8.0f} ms" if s < 10 else f"{s:8.2f} s "


# -- the measured run (a child process) ---------------------------------------------------------
class Phases:
    """Exclusive wall and CPU time per phase: a wrapped call's time less that of wrapped calls inside it."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.stack: list[list] = []

    def wrap(self, owner, name: str, phase: str):
        original = getattr(owner, name)
        phases = self

        def timed(*args, **kwargs):
            frame = [time.perf_counter(), time.process_time(), 0.0, 0.0]  # start, cpu start, nested wall, cpu
            phases.stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                phases.stack.pop()
                w, c = time.perf_counter() - frame[0], time.process_time() - frame[1]
                phases.add(phase, w - frame[2], c - frame[3])
                if phases.stack:
                    phases.stack[-1][2] += w
                    phases.stack[-1][3] += c

        setattr(owner, name, timed)
        return original

    def add(self, phase: str, w: float, c: float) -> None:
        self.wall[phase] = self.wall.get(phase, 0.0) + w
        self.cpu[phase] = self.cpu.get(phase, 0.0) + c


def run_modules(images: str) -> list[str]:
    """The top-level modules a run imports beyond the command line's own (found in a throwaway child)."""
    code = ("import sys, forensics.cli; before = set(sys.modules); import forensics; "
            f"forensics.attribute({images!r}).to_dict(); "
            "import json; print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before "
            "if not m.startswith('_') and '.' not in m})))")
    out = subprocess.run([PY, "-c", code], env=child_env(1), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(args) -> None:
    """One attribute run, phase by phase, then the floors; prints one JSON line."""
    t_start = time.perf_counter()
    c_start = time.process_time()
    import importlib

    import forensics.cli  # noqa: F401 - what the program imports before parsing its arguments
    for name in json.loads(args.modules):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import torch

    from forensics import api, engine as engines, match
    from forensics.match import resampling
    from forensics.plugins import host
    from forensics.registry import Registry

    host()  # the plugins, loaded as the run loads them (their imports are done above)
    imports = (time.perf_counter() - t_start, time.process_time() - c_start)
    threads = torch.get_num_threads()

    ph = Phases()
    ph.wrap(Registry, "open", "registry")
    ph.wrap(engines.Engine, "encoder", "model build")
    ph.wrap(engines.Engine, "reference_side", "reference load")
    ph.wrap(engines.Engine, "embed", "embed")
    ph.wrap(engines.Engine, "_score", "statistic")  # a batch scored from its embeddings
    ph.wrap(engines.Engine, "_records_of", "statistic")  # or its images' records, the search done once
    ph.wrap(api, "read_images", "decode")
    ph.wrap(api, "resample_vectors", "resampling")  # the batch drawn again from its records, and ranked
    ph.wrap(resampling, "first_ranked", "resampling")
    make = match.make_matcher

    def timed_matcher(*a, **k):
        m = make(*a, **k)
        ph.wrap(m, "fit", "match")
        ph.wrap(m, "attribute", "match")
        return m

    match.make_matcher = timed_matcher
    t0, c0 = time.perf_counter(), time.process_time()
    result = api.attribute(args.images, protocol=args.protocol)
    total = (time.perf_counter() - t0, time.process_time() - c0)
    t1, c1 = time.perf_counter(), time.process_time()
    doc = json.dumps(result.to_dict(), indent=2)
    ph.add("render", time.perf_counter() - t1, time.process_time() - c1)
    ph.add("other", total[0] - sum(ph.wall.values()) + ph.wall["render"],
           total[1] - sum(ph.cpu.values()) + ph.cpu["render"])
    out = {"threads": threads, "imports": imports, "phases": {k: (ph.wall[k], ph.cpu[k]) for k in ph.wall},
           "attribute_total": total, "verdict": result.attribution.verdict}
    out["floors"] = floors(args, result, doc)
    print("RESULT " + json.dumps(out))


def matmul_rate(torch, repeats: int = 5) -> float:
    """float32 GFLOP per CPU second of one 1024³ product on torch's configured threads (the fastest of
    ``repeats``)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        a @ b
        best = min(best, time.process_time() - t)
    return 2 * 1024 ** 3 / best / 1e9


def bandwidth(nbytes: int) -> float:
    """Bytes per CPU second of one copy of ``nbytes`` (memory to memory, warm), the fastest of 3."""
    import numpy as np

    src = np.ones(max(1, nbytes) // 8 + 1)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        np.copyto(dst, src)
        best = min(best, time.process_time() - t)
    return src.nbytes / best


def sha_rate(nbytes: int) -> float:
    import hashlib

    import numpy as np

    data = np.ones(max(1, nbytes) // 8 + 1)
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        hashlib.sha256(data).digest()
        best = min(best, time.process_time() - t)
    return data.nbytes / best


def floors(args, result, doc: str) -> dict:
    """Each part's floor, measured now, in this process, in CPU seconds (process time: on a shared machine
    the wall time of a part depends on who else runs; its CPU time far less)."""
    import hashlib

    import numpy as np
    import torch
    import yaml

    from forensics import api, engine as engines
    from forensics.registry import Registry

    out: dict = {}
    gflops = matmul_rate(torch)
    out["matmul_gflops"] = gflops
    reg = Registry.open()
    proto = reg.protocol(reg.resolve_protocol(args.protocol))

    # registry: the YAML alone
    files = [p for root in reg.layers for p in Path(root).rglob("*.yaml")]
    t = time.process_time()
    for p in files:
        yaml.load(p.read_bytes(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out["registry"] = time.process_time() - t

    # decode: np.load + one sha256
    t = time.process_time()
    with np.load(args.images) as data:
        pixels = data[data.files[0]]
    hashlib.sha256(np.ascontiguousarray(pixels)).digest()
    out["decode"] = time.process_time() - t

    engine = engines.make_engine(proto, reference_dir=reg.reference_dir)
    parts = getattr(engine, "engines", [engine])
    # model build: the weights' bytes, copied once
    param_bytes = sum(p.numel() * p.element_size() for e in parts for p in e.encoder().model.parameters()) \
        if all(hasattr(e.encoder(), "model") for e in parts) else 0
    out["model_bytes"] = param_bytes
    out["model build"] = param_bytes / bandwidth(param_bytes) if param_bytes else None

    # embed: FLOPs at the matmul rate
    from torch.utils.flop_counter import FlopCounterMode

    from forensics.encode.encoder import preprocess

    flops = 0.0
    for e in parts:
        enc = e.encoder()
        x = preprocess(pixels[:8], enc.preprocessing)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            enc.forward_layers(x, e.protocol.layers)
        flops += counter.get_total_flops() / 8 * len(pixels)
    out["embed_gflop"] = flops / 1e9
    out["embed"] = flops / (gflops * 1e9)

    # reference load: bytes at memory bandwidth, and one sha256 of them; the previous reader on the same files
    for e in parts:
        e.reference_side()
    paths = [Path(e.reference_origin) for e in parts if e.reference_origin and Path(e.reference_origin).is_file()]
    nbytes = sum(p.stat().st_size for p in paths)
    out["reference_bytes"] = nbytes
    out["reference load"] = nbytes / bandwidth(nbytes)
    out["reference_sha256"] = nbytes / sha_rate(nbytes)
    from forensics.registry.reference import file_sha256

    t = time.process_time()
    for e, p in zip(parts, paths):
        file_sha256(p)
        engines._unpack(engines._read_npz(p, remove=False), e.protocol.layers, e.statistic)
    out["reference_previous_reader"] = time.process_time() - t
    engines.forget_opened() if hasattr(engines, "forget_opened") else None
    t = time.process_time()
    for e in parts:
        engines.Engine(e.protocol, shipped_dir=e.shipped_dir).reference_side()
    out["reference_again_fresh"] = time.process_time() - t

    # statistic: the plain pipeline on the same reference and embeddings, and the search's FLOPs
    m = proto.batch_size
    embeddings = [e.embed(pixels[:m]) for e in parts]
    t = time.process_time()
    plain, search_flops = [], 0.0
    for e, embs in zip(parts, embeddings):
        for ref, q in zip(e.reference_side(), embs):
            arrays = ref.to_arrays()
            if "distance" not in arrays:  # not C_T (the default's pixel statistics, mean-z): scored as the tool does
                value = ref.score(q, **e.score_params).value
                plain.append(value)
                continue
            value, f = plain_ct(arrays, q)
            plain.append(value)
            search_flops += f
    out["statistic_plain"] = time.process_time() - t
    out["statistic"] = search_flops / (gflops * 1e9)
    ours = [v for c in result.curve.layers for v in [c.value]] if len(pixels) == m else None
    if ours is not None:
        diffs = [abs(a - b) for a, b in zip(ours, plain) if a is not None and b is not None]
        out["statistic_max_abs_diff"] = max(diffs) if diffs else None

    # resampling: the same resamples scored from their embeddings, as without per-image records
    from forensics.match.resampling import bootstrap_rows

    rows = bootstrap_rows([np.arange(m)])
    t = time.process_time()
    for e, embs in zip(parts, embeddings):
        e._score([[x[r] for x in embs] for r in rows])
    out["resampling_from_embeddings"] = time.process_time() - t
    out["resamples"] = len(rows)

    # match: numpy distances to every enrolled curve
    refs = np.array([r.fingerprint.vector() for r in result.references], dtype=float)
    q = np.asarray(result.curve.fingerprint.vector(), dtype=float)
    t = time.process_time()
    np.sqrt(((np.nan_to_num(refs) - np.nan_to_num(q)) ** 2).sum(axis=1)).argmin()
    out["match"] = time.process_time() - t

    # render: json.dumps of the same document
    d = json.loads(doc)
    t = time.process_time()
    json.dumps(d, indent=2)
    out["render"] = time.process_time() - t
    return out


def plain_ct(arrays: dict, q) -> tuple[float, float]:
    """C_T of ``q`` against a fitted reference, the plain way (numpy, scikit-learn, scipy), and the FLOPs of
    the brute-force search."""
    import numpy as np
    from scipy.stats import mannwhitneyu
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(q, dtype=np.float64)
    if "components" in arrays:
        x = (x - arrays["mean"]) @ arrays["components"]
    cosine = str(arrays["distance"]) == "cosine"
    if cosine:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    centres = arrays["centres"]
    cell_of = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    cells, offsets, train = arrays["cells"], arrays["offsets"], arrays["train"]
    test_dist, test_cells = arrays["test_dist"], arrays["test_cells"]
    m, n = len(x), len(test_dist)
    num = den = flops = 0.0
    for i, c in enumerate(cells):
        rows = x[cell_of == c]
        if len(rows) == 0:
            continue
        t = train[offsets[i]:offsets[i + 1]]
        flops += 2.0 * len(rows) * len(t) * t.shape[1]
        if cosine:
            dist = 1.0 - np.abs(rows @ t.T).max(axis=1)
        else:
            dist = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(t).kneighbors(rows)[0][:, 0]
        lp = test_dist[test_cells == c]
        u = mannwhitneyu(dist, lp, alternative="less").statistic
        mq, nq = len(dist), len(lp)
        z = (u - (mq * nq / 2 - 0.5)) / np.sqrt(mq * nq * (mq + nq + 1) / 12)
        if mq / m > 20.0 / m:
            num += nq / n * z
            den += nq / n
    return (num / den if den else float("nan")), flops


# -- contention: threads and wait policies in fresh processes ------------------------------------
CONTENTION = r"""
import os, sys, time, json
import torch
work = sys.argv[1]
reps = int(sys.argv[2])
auto = os.environ.get("BENCH_AUTO") == "1"
if auto:
    sys.path.insert(0, os.environ["BENCH_ROOT"])
    from forensics import cpu
    chosen = cpu.configure(None)
if work == "unet":
    from forensics.zoo.training.models import SmallUNet
    torch.manual_seed(0)
    net = SmallUNet(16, 32, 128).eval()
    x, t = torch.randn(8, 1, 28, 28), torch.randint(0, 1000, (8,))
    step = lambda: net(x, t)
else:
    import numpy as np
    from forensics.registry import Registry
    from forensics.engine import make_engine
    reg = Registry.open()
    eng = make_engine(reg.protocol("mnist-effnet-lite0"), reference_dir=reg.reference_dir)
    data = np.load(os.environ["BENCH_IMAGES"]); imgs = data[data.files[0]][:64]
    eng.encoder()
    step = lambda: eng.embed(imgs)
with torch.inference_mode():
    step()
    times = []
    for _ in range(reps):
        s = time.perf_counter(); step(); times.append(time.perf_counter() - s)
times.sort()
print("RESULT " + json.dumps({"threads": torch.get_num_threads(), "median": times[len(times) // 2],
                              "best": times[0], "policy": os.environ.get("OMP_WAIT_POLICY", "default")}))
"""


def burner(seconds: float) -> subprocess.Popen:
    """A process that burns one CPU (a Python busy loop) for at most ``seconds``."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    return subprocess.Popen([PY, "-c", code])


def contention(args) -> dict:
    """Each work under each thread setting, in fresh processes, the settings alternating over ``--rounds``
    rounds, first with no extra load, then with ``--burners`` CPU-burning processes running. Per setting:
    the median over the rounds of each run's median time per step, and the fastest step seen."""
    settings = [("1 thread", 1, None), ("2 threads (OpenMP default wait)", 2, None),
                ("2 threads, PASSIVE", 2, "PASSIVE"), ("auto (forensics.cpu), PASSIVE", None, "PASSIVE")]
    works = [("unet", "zoo diffusion net, batch 8", 30 if not args.quick else 8),
             ("effnet", "EfficientNet-Lite0 embed, 64 images", 3 if not args.quick else 1)]
    rounds = 1 if args.quick else args.rounds
    results: dict = {}
    for label, busy in (("no extra load", 0), (f"{args.burners} CPU burner(s)", args.burners)):
        procs = [burner(3600) for _ in range(busy)]
        try:
            time.sleep(0.5 if busy else 0)
            runs: dict = {}
            for _ in range(rounds):
                for work, what, reps in works:
                    for name, threads, policy in settings:
                        env = child_env(threads, policy)
                        env.update(BENCH_ROOT=str(ROOT), BENCH_IMAGES=str(args.images),
                                   BENCH_AUTO="1" if threads is None else "0")
                        try:
                            out = subprocess.run([PY, "-c", CONTENTION, work, str(reps)], env=env, check=True,
                                                 capture_output=True, text=True, timeout=args.timeout).stdout
                            r = json.loads(out.split("RESULT ", 1)[1])
                        except subprocess.TimeoutExpired:
                            r = {"threads": threads, "median": float("inf"), "best": float("inf")}
                        runs.setdefault((what, name), []).append(r)
            for (what, name), rs in runs.items():
                med = statistics.median(r["median"] for r in rs)
                best = min(r["best"] for r in rs)
                results.setdefault(label, {}).setdefault(what, {})[name] = {
                    "threads": rs[0]["threads"], "median_s": med, "best_s": best, "rounds": len(rs)}
                print(f"   {label:18s} {what:38s} {name:32s} threads {rs[0]['threads']}: median {med * 1e3:8.1f} ms, "
                      f"best {best * 1e3:8.1f} ms", flush=True)
            print(f"   ({load()})")
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return results


def reference_layers(args) -> dict:
    """12 cached layers against the plain pipeline, as ``bench_ct.py`` section 3 sizes them (l = 50,000,
    n = m = 10,000, d = 768, PCA 64, k = 10), but with the runs alternating in every round, so that each
    ratio compares moments of the same load: the baseline recomputing one layer (scikit-learn PCA,
    KMeans, NearestNeighbors, scipy's mannwhitneyu; times 12), this version opening the mapped file and
    scoring 12 layers, the same with the whole-cell search (no groups skipped: the search before the
    pruning, the same distances), and the same file without the cells' stored search layouts (each
    cell's score rows and groups built when opened, as before they were stored). Then where a cached
    layer's CPU time goes, phase by phase, with and without the pruning."""
    import numpy as np  # noqa: F401

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_ct import baseline, cached_phases, make_layer

    from forensics import engine as engines
    from forensics.io.mapped import save_mapped_npz
    from forensics.stats.ct import FittedCT, search

    import types

    layers = 2 if args.quick else 12
    l, n, m, d = (5000, 1000, 1000, 128) if args.quick else (50000, 10000, 10000, 768)
    statistic = types.SimpleNamespace(from_arrays=FittedCT.from_arrays)
    names = [f"layer{i}" for i in range(layers)]
    refs, gens, first = [], [], None
    for i in range(layers):
        tr, te, g = make_layer(i, l, n, m, d)
        refs.append(FittedCT.fit(tr, te, k=10, projection=64, seed=0))
        gens.append(g)
        if i == 0:
            first = (tr, te, g)
    rounds = 1 if args.quick else args.rounds
    out: dict = {"layers": layers, "sizes": [l, n, m, d], "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        new = engines.save_reference(Path(tmp) / "mapped.npz", refs, names)
        packed = engines._pack(refs, names)
        bare = save_mapped_npz(Path(tmp) / "bare.npz", {k: v for k, v in packed.items() if "/layout_" not in k})
        out["file_mib"] = {"stored": new.stat().st_size / 2 ** 20, "bare": bare.stat().st_size / 2 ** 20}
        del refs, packed

        def opened(path):
            def run():
                engines.forget_opened()  # as a fresh process would: map the file and check its sums
                loaded = engines.load_reference(path, names, statistic)
                t_open = time.perf_counter() - t0
                for ref, g in zip(loaded, gens):
                    ref.score(g)
                return t_open
            return run

        ours, built = opened(new), opened(bare)

        def unpruned():
            work = search._SPLIT_WORK
            search._SPLIT_WORK = 1 << 62  # no search is split (stored groups unused): the whole-cell search
            try:
                return ours()
            finally:
                search._SPLIT_WORK = work

        small = make_layer(99, 2000, 500, 500, d)
        baseline(*small, k=10, seed=0, n_init=10, projection=64)  # warm-up (its imports), not timed
        t0 = time.perf_counter()
        ours()  # warm-up (first imports, the first products), not timed
        t0 = time.perf_counter()
        built()
        for _ in range(rounds):
            row = {}
            t0, c0 = time.perf_counter(), time.process_time()
            baseline(*first, k=10, seed=0, n_init=10, projection=64)
            row["baseline_layer_s"], row["baseline_layer_cpu"] = time.perf_counter() - t0, time.process_time() - c0
            for key, run in (("ours", ours), ("unpruned", unpruned), ("built", built)):
                t0, c0 = time.perf_counter(), time.process_time()
                row[f"{key}_open_s"] = run()
                row[f"{key}_s"], row[f"{key}_cpu"] = time.perf_counter() - t0, time.process_time() - c0
            row["load"] = load()
            base = row["baseline_layer_cpu"] * layers
            print(f"   (CPU time: baseline {row['baseline_layer_cpu']:.2f} s a layer, this version "
                  f"{row['ours_cpu']:.3f} s = {base / row['ours_cpu']:.1f}x, whole-cell search "
                  f"{row['unpruned_cpu']:.3f} s = {base / row['unpruned_cpu']:.1f}x, without the stored layouts "
                  f"{row['built_cpu']:.3f} s = {base / row['built_cpu']:.1f}x)")
            out["rounds"].append(row)
            print(f"   round: baseline {row['baseline_layer_s']:.2f} s a layer (x{layers} = "
                  f"{row['baseline_layer_s'] * layers:.1f} s) | this version {row['ours_s']:.3f} s (open "
                  f"{row['ours_open_s'] * 1e3:.0f} ms) = {row['baseline_layer_s'] * layers / row['ours_s']:.1f}x | "
                  f"without the stored layouts {row['built_s']:.3f} s (open {row['built_open_s'] * 1e3:.0f} ms) = "
                  f"{row['baseline_layer_s'] * layers / row['built_s']:.1f}x ({row['load']})", flush=True)
    for key in ("ours", "unpruned", "built"):
        out[f"{key}_cpu_ratio_median"] = statistics.median(r["baseline_layer_cpu"] * layers / r[f"{key}_cpu"]
                                                           for r in out["rounds"])
        out[f"{key}_ratio_median"] = statistics.median(r["baseline_layer_s"] * layers / r[f"{key}_s"]
                                                       for r in out["rounds"])
    print(f"   median CPU-time ratio: this version {out['ours_cpu_ratio_median']:.1f}x, with the whole-cell search "
          f"{out['unpruned_cpu_ratio_median']:.1f}x, without the stored layouts {out['built_cpu_ratio_median']:.1f}x "
          f"(files {out['file_mib']['stored']:.0f} and {out['file_mib']['bare']:.0f} MiB)")
    print(f"   median wall-time ratio over {rounds} round(s): this version {out['ours_ratio_median']:.1f}x the "
          f"baseline, without the stored layouts {out['built_ratio_median']:.1f}x")
    # where a cached layer's CPU time goes (the file opened as above, its sums checked; the best of 3 passes)
    with tempfile.TemporaryDirectory() as tmp:
        path = engines.save_reference(Path(tmp) / "phases.npz", [FittedCT.fit(*first[:2], k=10, projection=64, seed=0)],
                                      names[:1])
        out["phases_ms"] = {}
        for label, work in (("pruned", search._SPLIT_WORK), ("whole-cell", 1 << 62)):
            saved, search._SPLIT_WORK = search._SPLIT_WORK, work
            try:
                passes = []
                for _ in range(3):
                    engines.forget_opened()
                    c0 = time.process_time()
                    ref = engines.load_reference(path, names[:1], statistic)[0]
                    opening = time.process_time() - c0
                    passes.append({"open": opening, **cached_phases(ref, first[2], clock=time.process_time)})
            finally:
                search._SPLIT_WORK = saved
            best = {k: min(p[k] for p in passes) * 1e3 for k in passes[0]}
            out["phases_ms"][label] = best
            print(f"   one cached layer, {label} search, CPU ms (best of 3): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in best.items()) + f"; total {sum(best.values()):.1f} ({load()})")
    return out


# -- the report -----------------------------------------------------------------------------------
ORDER = ["registry", "model build", "decode", "embed", "reference load", "statistic", "match", "resampling", "render",
         "other"]


def startup(args, env: dict, modules: list[str]) -> dict:
    imports_code = "import forensics.cli\n" + "".join(f"try:\n import {m}\nexcept ImportError:\n pass\n"
                                                       for m in modules)
    starts: dict = {"bare": [], "torch": [], "run": []}
    for _ in range(args.repeats):  # alternating
        starts["bare"].append(wall([PY, "-c", "pass"], env))
        starts["torch"].append(wall([PY, "-c", "import torch"], env))
        starts["run"].append(wall([PY, "-c", imports_code], env))
    med = {k: statistics.median(v) for k, v in starts.items()}
    print(f"\n1. start-up, fresh processes, median of {args.repeats} ({load()})")
    print(f"   interpreter (python -c pass)           {fmt(med['bare'])}")
    print(f"   imports of the run ({len(modules)} packages)      {fmt(med['run'] - med['bare'])}   floor "
          f"(import torch) {fmt(med['torch'] - med['bare'])}   ratio {(med['run'] - med['bare']) / max(1e-9, med['torch'] - med['bare']):5.2f}x")
    print(f"   packages: {', '.join(modules)}")
    return {**med, "modules": modules}


def phases(args, env: dict, modules: list[str]) -> dict:
    cmd = [PY, __file__, "--child", "--images", str(args.images), "--modules", json.dumps(modules)]
    if args.protocol:
        cmd += ["--protocol", args.protocol]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.split("RESULT ", 1)[1])
    fl = res["floors"]
    print(f"\n2. one run, phase by phase (a fresh process, torch at {res['threads']} thread(s); {load()}); "
          f"floors measured right after it, in the same process")
    print(f"   {'part':16s} {'wall':>11s} {'cpu':>11s} {'floor':>11s} {'cpu/floor':>9s}  floor (cpu) is")
    what = {"registry": "PyYAML C loader on the registry's YAML",
            "model build": f"{fl.get('model_bytes', 0) / 2**20:.1f} MiB of weights copied once",
            "decode": "np.load + one sha256 of the pixels",
            "embed": f"{fl['embed_gflop']:.1f} GFLOP at {fl['matmul_gflops']:.0f} GFLOP per CPU-s (1024³ fp32 matmul)",
            "reference load": f"{fl['reference_bytes'] / 2**20:.1f} MiB at memory bandwidth",
            "statistic": "the search's FLOPs at the matmul rate",
            "match": "numpy distances to the enrolled curves", "render": "json.dumps of the report", "other": "",
            "resampling": f"{fl['resamples']} bootstrap resamples from the batch's records, each ranked"}
    total_w = total_c = 0.0
    for k in ORDER:
        if k not in res["phases"]:
            continue
        w, c = res["phases"][k]
        total_w, total_c = total_w + w, total_c + c
        f = fl.get(k)
        ratio = f"{c / f:8.1f}x" if f else " " * 9
        print(f"   {k:16s} {fmt(w)} {fmt(c)} {fmt(f) if f else ' ' * 11} {ratio}  {what.get(k, '')}")
    print(f"   {'in-process total':16s} {fmt(total_w)} {fmt(total_c)}   (imports before it: {fmt(res['imports'][0])})")
    print(f"   reference load, CPU: the previous reader on the same files (sha256 of each file, every array copied "
          f"out with its CRC) {fmt(fl['reference_previous_reader'])}; this version, a fresh engine "
          f"{fmt(fl['reference_again_fresh'])} ({fl['reference_previous_reader'] / max(1e-9, fl['reference_again_fresh']):.1f}x faster); "
          f"one sha256 of the bytes {fmt(fl['reference_sha256'])}")
    print(f"   statistic, the plain numpy + scikit-learn + scipy pipeline on the same reference: "
          f"{fmt(fl['statistic_plain'])} CPU (ours {res['phases'].get('statistic', [0, 0])[1] / max(1e-9, fl['statistic_plain']):.2f}x of it"
          + (f"; max |C_T difference| {fl['statistic_max_abs_diff']:.1e})" if fl.get("statistic_max_abs_diff") is not None
             else ")"))
    if "resampling" in res["phases"]:
        print(f"   resampling, the same {fl['resamples']} resamples scored from their embeddings (no records): "
              f"{fmt(fl['resampling_from_embeddings'])} CPU (from the records "
              f"{fl['resampling_from_embeddings'] / max(1e-9, res['phases']['resampling'][1]):.0f}x faster)")
    return res


def command(args, env: dict, threads: int | None) -> dict:
    times = []
    cli_env = dict(env)
    for _ in range(args.repeats):
        t = wall([FORENSICS, *(["--threads", str(threads)] if threads else []), "attribute", str(args.images), "--json"]
                 + (["--protocol", args.protocol] if args.protocol else []), cli_env)
        times.append(t)
    print(f"\n3. `forensics attribute {Path(args.images).name} --json`, end to end: median {fmt(statistics.median(times))} "
          f"(runs: {', '.join(f'{t:.2f} s' for t in times)}; {load()})")
    return {"runs": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=str(DEMO), help="the images to attribute (default: the Makefile's DEMO)")
    ap.add_argument("--protocol", default=None, help="protocol (default: the registry's default)")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP/BLAS threads of the measured run "
                                                             "(default 1; 0: the machine's defaults)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each start-up measurement and of the command")
    ap.add_argument("--contention", action="store_true", help="also: threads and wait policies under a CPU burner")
    ap.add_argument("--reference-layers", action="store_true",
                    help="also: 12 cached layers against the plain pipeline (bench_ct's sizes), alternating")
    ap.add_argument("--burners", type=int, default=1, help="CPU-burning processes for --contention")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the --contention settings")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one contention run may take")
    ap.add_argument("--quick", action="store_true", help="one repeat of everything")
    ap.add_argument("--skip", default="", help="sections to leave out, e.g. 1,3")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--modules", help=argparse.SUPPRESS)
    ap.add_argument("--child-reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.child_reference:
        print("RESULT " + json.dumps(reference_layers(args)))
        return
    if args.quick:
        args.repeats = 1
    nice = os.nice(0)
    threads = args.threads or None
    env = child_env(threads, "PASSIVE")  # the wait policy the program sets for itself
    print(f"forensics attribute, broken down: {args.images} ({load()}; {os.cpu_count()} CPUs; this process at nice "
          f"{nice}{'' if nice else ' — run it under `nice -n 10` on a shared machine'})")
    print(f"threads: {threads or 'machine defaults'} (OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS, "
          f"FORENSICS_THREADS = {threads or 'unset'}); OpenMP wait policy: {env.get('OMP_WAIT_POLICY', 'default')}")
    report: dict = {"images": str(args.images), "nice": nice, "threads": threads, "cpus": os.cpu_count()}

    skip = {int(v) for v in args.skip.split(",") if v.strip()}
    modules = run_modules(str(args.images)) if {1, 2} - skip else []

    if 1 not in skip:
        report["startup"] = startup(args, env, modules)
    if 2 not in skip:
        report["run"] = phases(args, env, modules)
    if 3 not in skip:
        report["command"] = command(args, env, threads)
    if args.reference_layers:
        print(f"\n5. the cached reference side, 12 layers, against the plain pipeline (a fresh process, the same "
              f"threads; alternating; {load()})", flush=True)
        cmd = [PY, __file__, "--child-reference", *(["--quick"] if args.quick else []), "--rounds", str(args.rounds)]
        run = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        print("".join(line + "\n" for line in run.splitlines() if not line.startswith("RESULT ")), end="")
        report["reference_layers"] = json.loads(run.split("RESULT ", 1)[1])
    if args.contention:
        print(f"\n4. threads under contention: fresh processes, each setting in turn ({load()})")
        report["contention"] = contention(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
