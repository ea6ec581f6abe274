"""Benchmark: how long the paper's protocol (``he2024-cifar10-vitb16``) takes to build its reference side.

The first ``forensics attribute … --protocol he2024-cifar10-vitb16`` embeds CIFAR-10's 60,000 images (T =
50,000, P_n = 10,000) at all 12 blocks of ViT-B/16 and fits C_T on each block; later runs read the cached
reference side and embed only the query. This script times both parts on a sample and extrapolates
(wall time, and this process's CPU time: on a machine busy with other jobs, the latter is what the run
would take on a core of its own):

1. ``embed()`` of ``--images`` CIFAR-sized (32 px) uint8 images through the protocol's own preprocessing
   (resize 256, crop 224, mean = std = 0.5), all 12 blocks, random weights (the speed is the same with the
   real ones), after one warm-up batch;
2. C_T fitted on one block's worth of features of the protocol's sizes (T 50,000 × 768, P_n 10,000 × 768,
   PCA 64, k = 10), random numbers (``--fit-rows`` fewer rows to go faster, scaled up linearly).

    python benchmarks/bench_paper_protocol.py --images 100
    python benchmarks/bench_paper_protocol.py --device cuda --amp bf16 --images 2000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

PROTOCOL = "he2024-cifar10-vitb16"
N_REFERENCE = 60_000
N_LAYERS = 12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default=None, choices=[None, "bf16", "fp16"])
    ap.add_argument("--fit-rows", type=int, default=50_000, help="rows of T in the C_T fit (P_n: a fifth)")
    args = ap.parse_args()

    from forensics.encode.embed import embed
    from forensics.encode.encoder import Preprocessing
    from forensics.plugins import PluginHost
    from forensics.registry import Registry
    from forensics.stats.ct.statistic import FittedCT

    proto = Registry.open(None).protocol(PROTOCOL)
    factory = PluginHost(autoload=False).get("encoders", proto.encoder.name).obj
    encoder = factory(weights="random", device=args.device)
    encoder.preprocessing = Preprocessing.from_dict(proto.encoder.preprocessing)
    layers = list(proto.encoder.layers)
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    embed(encoder, images[: args.batch_size], layers=layers, batch_size=args.batch_size, amp=args.amp)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    embed(encoder, images, layers=layers, batch_size=args.batch_size, amp=args.amp)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    per_image = (time.perf_counter() - start) / args.images
    cpu_per_image = (time.process_time() - cpu) / args.images

    rng = np.random.default_rng(1)
    train = rng.standard_normal((args.fit_rows, 768), dtype=np.float32)
    test = rng.standard_normal((args.fit_rows // 5, 768), dtype=np.float32)
    params = dict(proto.statistic.params)
    start, cpu = time.perf_counter(), time.process_time()
    FittedCT.fit(train, test, k=params["k"], distance=params["distance"], projection=params["projection"],
                 seed=params["seed"], **({"device": args.device} if args.device != "cpu" else {}))
    fit_layer = (time.perf_counter() - start) * 50_000 / args.fit_rows
    cpu_fit_layer = (time.process_time() - cpu) * 50_000 / args.fit_rows

    figures = {
        "machine": platform.processor() or platform.machine(), "device": args.device, "amp": args.amp,
        "torch_threads": torch.get_num_threads(), "images_timed": args.images,
        "embed_s_per_100_images": round(100 * per_image, 2), "images_per_s": round(1 / per_image, 2),
        "fit_s_per_layer": round(fit_layer, 2),
        "extrapolated_reference_side_min": round((N_REFERENCE * per_image + N_LAYERS * fit_layer) / 60, 1),
        "extrapolated_query_500_s": round(500 * per_image, 1),
        # CPU time of this process: what the wall time would be on cores of its own (a busy machine's wall
        # time counts the other jobs' turns too)
        "cpu_s_per_100_images": round(100 * cpu_per_image, 2), "cpu_fit_s_per_layer": round(cpu_fit_layer, 2),
        "extrapolated_reference_side_cpu_min": round((N_REFERENCE * cpu_per_image + N_LAYERS * cpu_fit_layer) / 60,
                                                     1),
        "extrapolated_query_500_cpu_s": round(500 * cpu_per_image, 1),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
