"""Does embedding get faster with more Ray workers? And what does each image and each search cost?

Part 1 (scaling): the default protocol's EfficientNet-Lite0 (real weights, 128 px) embeds the same zoo
images (every layer, one torch thread per worker) with the local engine, then with the Ray engine at
1 and then 2 encoder actors on a local Ray instance of ``--cpus`` CPUs. Per run: the wall time of the
whole call (actors started, images read, embedded, returned) and the steady rate, images per second
between the first and the last shard done (what more workers buy once they run). The machine's load
average is printed: on a shared 2-core machine with another job on one core, two workers cannot make
two cores' worth.

Part 2 (``--costs``): the per-image and per-pair figures ``docs/scaling.md`` extrapolates from:
ViT-B/16 (random weights, 224 px, all 12 blocks) on this CPU per image; C_T's query search (nanoseconds
per query × training-point pair, 64 dimensions); C_T's fit per layer (PCA of 768-dim T, k-means, the
held-out search) at two sizes.

    .venv/bin/python benchmarks/ray_scaling.py                      # part 1, 2,000 images
    .venv/bin/python benchmarks/ray_scaling.py --costs --skip-scaling
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROTOCOL = "mnist-effnet-lite0"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def zoo_images(n: int) -> np.ndarray:
    from forensics.io.images import load_images
    from forensics.zoo.catalog import read_manifest, samples_dir

    sets = read_manifest(samples_dir(ROOT / "registry"))
    images = np.concatenate([load_images(z.path)[0] for z in sets[: -(-n // 500)]])
    return images[:n]


def timed_embed(engine, images) -> dict:
    marks: list[tuple[float, int]] = []
    engine.progress = lambda what, done, total: marks.append((time.perf_counter(), done))
    start = time.perf_counter()
    out = engine.embed(images)
    wall = time.perf_counter() - start
    steady = None
    if len(marks) >= 2 and marks[-1][0] > marks[0][0]:
        steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    return {"wall_s": wall, "images_per_s": len(images) / wall, "steady_images_per_s": steady,
            "shards": len(marks), "out": out}


def scaling(args) -> None:
    import ray
    import torch

    from forensics.distributed.ray_engine import RayEngine
    from forensics.engine import Engine
    from forensics.registry import Registry

    torch.set_num_threads(1)
    proto = Registry.open(ROOT / "registry").protocol(PROTOCOL)
    images = zoo_images(args.images)
    print(f"{len(images)} zoo images under {PROTOCOL} ({proto.encoder.name}, {len(proto.layers)} layers), "
          f"1 torch thread per worker; load average before: {load()}")
    local = Engine(proto, use_cache=False)
    local.encoder()
    base = timed_embed(local, images)
    print(f"local engine          : {base['wall_s']:7.1f} s  {base['images_per_s']:6.1f} images/s")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    for actors in args.actors:
        engine = RayEngine(proto, actors=actors, threads=1, use_cache=False, shard_rows=args.shard_rows)
        engine.encoder()
        runs = [timed_embed(engine, images) for _ in range(args.repeats)]
        same = all(np.array_equal(a, b) for r in runs for a, b in zip(r["out"], base["out"]))
        for r in runs:
            print(f"ray, {actors} actor(s)     : {r['wall_s']:7.1f} s  {r['images_per_s']:6.1f} images/s end to end, "
                  f"{r['steady_images_per_s'] or float('nan'):6.1f} images/s steady ({r['shards']} shards); "
                  f"load {load()}; equal to local: {same}")
    ray.shutdown()


def costs(args) -> None:
    import torch

    from forensics.encode.embed import embed
    from forensics.plugins import PluginHost
    from forensics.stats.ct.statistic import FittedCT

    torch.set_num_threads(1)
    vit = PluginHost(autoload=False).get("encoders", "vit_base_patch16_224.orig_in21k").obj(weights="random")
    images = np.random.default_rng(0).integers(0, 256, (args.vit_images, 224, 224, 3), dtype=np.uint8)
    embed(vit, images[:2], batch_size=2)  # warm-up
    start = time.perf_counter()
    out = embed(vit, images, batch_size=8)
    per = (time.perf_counter() - start) / len(images)
    print(f"ViT-B/16, all {len(out)} blocks, CPU, 1 thread: {per:.3f} s per image ({1 / per:.2f} images/s); "
          f"load {load()}")

    decode_cost(vit.preprocessing)
    rng = np.random.default_rng(0)
    for n_train, n_test in ((40_000, 10_000), (160_000, 10_000)):
        t = rng.standard_normal((n_train, 768)).astype(np.float32)
        p = rng.standard_normal((n_test, 768)).astype(np.float32)
        start = time.perf_counter()
        fitted = FittedCT.fit(t, p, k=10, distance="cosine", projection=64, seed=0)
        fit_s = time.perf_counter() - start
        q = rng.standard_normal((500, 768)).astype(np.float32)
        fitted.score(q)
        reps = 5
        start = time.perf_counter()
        for _ in range(reps):
            fitted.score(q)
        score_s = (time.perf_counter() - start) / reps
        pairs = 500 * n_train / 10
        print(f"C_T, 768 → 64 dims, k = 10, T = {n_train:,}, P_n = {n_test:,}: fit {fit_s:.2f} s; one 500-query batch "
              f"{score_s * 1e3:.1f} ms ≈ {score_s / pairs * 1e9:.2f} ns per query × training pair; load {load()}")


def decode_cost(prep) -> None:
    """Decoding a 512 × 512 JPEG (quality 90) and preprocessing it to the encoder's 224 px: the CPU work that
    feeds a GPU, per image."""
    import tempfile

    from PIL import Image

    from forensics.encode.encoder import preprocess
    from forensics.io.images import decode_image

    y, x = np.mgrid[0:512, 0:512]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(32):  # smooth colour fields with texture: JPEGs of a usual size (~40-80 kB)
            base = np.stack([np.sin(x / (20 + i)) , np.cos(y / (30 + i)), np.sin((x + y) / 50)], -1) * 100 + 128
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            paths.append(Path(tmp) / f"{i}.jpg")
            Image.fromarray(img).save(paths[-1], quality=90)
        size = np.mean([q.stat().st_size for q in paths])
        preprocess(decode_image(paths[0])[None], prep)
        start = time.perf_counter()
        for q in paths:
            preprocess(decode_image(q)[None], prep)
        per = (time.perf_counter() - start) / len(paths)
    print(f"decode a 512 × 512 JPEG ({size / 1e3:.0f} kB) and preprocess to {prep.size} px: {per * 1e3:.1f} ms per image "
          f"on one core; load {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--shard-rows", type=int, default=128, help="images per shard (a multiple of 64)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--costs", action="store_true", help="also part 2: per-image and per-pair costs")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--vit-images", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("FORENSICS_DISABLE_PLUGIN_AUTOLOAD", "1")
    if not args.skip_scaling:
        scaling(args)
    if args.costs:
        costs(args)


if __name__ == "__main__":
    main()
