"""Benchmark: every-layer extraction against the model's plain forward pass, on the same batch.

For each encoder: the plain forward (``encoder.model(x)``: the same network, classifier removed) and
``encoder.forward_layers(x, all layers)`` (every layer, pooled, from one pass) run alternately on one
preprocessed batch; the median of ``--repeats`` timings of each gives images per second and the ratio
extraction / plain (the target is at most 1.10). ``embed()`` end to end (uint8 images in, including
preprocessing) is timed once more.

    python benchmarks/bench_encoders.py                       # CPU: a ViT and a CNN
    python benchmarks/bench_encoders.py --device cuda --amp bf16 --encoder vit_base_patch16_224.orig_in21k \
        --batch-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

DEFAULT = ["vit_small_patch16_224.dino", "tf_efficientnet_lite0"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, *, device: str, batch_size: int, repeats: int, amp: str | None, warmup: int) -> dict:
    from forensics.encode.embed import AMP_DTYPES, embed
    from forensics.encode.encoder import preprocess
    from forensics.plugins import PluginHost

    factory = PluginHost(autoload=False).get("encoders", name).obj
    try:
        encoder = factory(device=device)
    except Exception:  # no real weights here: the speed is the same with random ones
        encoder = factory(weights="random", device=device)
    dev = torch.device(device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8)
    x = preprocess(images, encoder.preprocessing).to(dev)
    names = encoder.layer_names
    autocast = (lambda: torch.autocast(dev.type, dtype=AMP_DTYPES[amp])) if amp else contextlib.nullcontext

    def plain():
        with torch.inference_mode(), autocast():
            encoder.model(x)

    def layers():
        with torch.inference_mode(), autocast():
            encoder.forward_layers(x, names)

    def timed(fn) -> float:
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t

    for _ in range(warmup):
        plain()
        layers()
    t_plain, t_layers = [], []
    for _ in range(repeats):  # alternate, so that load on a shared machine hits both alike
        t_plain.append(timed(plain))
        t_layers.append(timed(layers))
    _sync(dev)
    t = time.perf_counter()
    embed(encoder, images, batch_size=batch_size, amp=amp)
    t_embed = time.perf_counter() - t
    mp, ml = statistics.median(t_plain), statistics.median(t_layers)
    return {"encoder": name, "weights": encoder.weights.source, "layers": len(names), "device": device,
            "amp": amp, "batch_size": batch_size, "input": encoder.preprocessing.size,
            "plain_img_s": round(batch_size / mp, 2), "all_layers_img_s": round(batch_size / ml, 2),
            "ratio": round(ml / mp, 3), "embed_end_to_end_img_s": round(batch_size / t_embed, 2),
            "plain_s": [round(v, 3) for v in t_plain], "all_layers_s": [round(v, 3) for v in t_layers]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", action="append", help=f"encoder name (repeatable; default {DEFAULT})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="one JSON object per encoder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), file=sys.stderr)
    for name in args.encoder or DEFAULT:
        result = bench(name, device=args.device, batch_size=args.batch_size, repeats=args.repeats, amp=args.amp,
                       warmup=args.warmup)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{name:40s} {result['layers']:3d} layers  batch {result['batch_size']:4d}  "
                  f"plain {result['plain_img_s']:9.2f} img/s  all layers {result['all_layers_img_s']:9.2f} img/s  "
                  f"ratio {result['ratio']:.3f}  embed() {result['embed_end_to_end_img_s']:9.2f} img/s "
                  f"[{result['weights']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
