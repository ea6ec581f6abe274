"""InvMM on the project's memorizing MNIST network: does it memorize, does InvMM find it, at what cost.

    python benchmarks/invmm_eval.py beta
    python benchmarks/invmm_eval.py memorizes   [--model mnist-dup] [--samples 500]
    python benchmarks/invmm_eval.py separation  [--ordinary 40] [--set max_steps=2000 ...]
    python benchmarks/invmm_eval.py membership  [--model mnist-ddpm] [--ordinary 40] [--heldout 40] [--out F]
    python benchmarks/invmm_eval.py agreement   [--samples 500]
    python benchmarks/invmm_eval.py cost        [--images 8] [--steps 100]
    python benchmarks/invmm_eval.py amp         [--model mnist-dup] [--steps 50]

Each part prints a JSON summary (and writes it with ``--out FILE``):

``beta``
    Why pixel correlation and β = 0.985 on the digits: the highest correlation between two distinct
    training digits and between a held-out digit and its nearest training digit, against copies with
    pixel noise and shifted by one pixel.
``memorizes``
    Before InvMM: the share of the model's DDIM samples (50 steps, η = 0) that are near-copies
    (pixel correlation ≥ β) of one of the 10 repeated training images, against the share that are
    near-copies of any other training image.
``separation``
    InvMM scores of the 10 repeated images T[0], T[400], …, T[3600] against ``--ordinary`` other training
    images (a seeded draw): AUC (the chance a repeated image scores lower than an ordinary one, ties ½;
    +∞ for never reproduced), per-group median, IQR and success rate.
``membership``
    Ordinary training images against held-out P_n images, on ``--model`` (both zoo networks): AUC near 0.5
    means InvMM measures memorization, not membership. When no image of either group is reproduced the
    official score is +∞ for all and its AUC is ½ by ties, so the summary adds continuous reads each
    inversion records, success or not (the best verification similarity reached, the last one, the KL
    where it stopped), each with its AUC that members read as more memorized. With ``--out F`` each half
    is kept in ``F``'s ``.members.json`` / ``.heldout.json`` and read back on a rerun.
``agreement``
    The set-level measure beside it: ``forensics memorization`` (C_T per layer, default protocol) on the
    model's DDIM samples, with the share of them that copy a repeated image.
``cost``
    Seconds per image for a fixed number of steps, one image at a time against ``--group`` images
    together, and the split between optimisation steps and verification.
``amp``
    Whether bf16 autocast keeps the score on the CPU: the 10 repeated images inverted in float32 and
    again with the optimisation's network calls under ``torch.autocast("cpu", bfloat16)`` (the same seed,
    so the same noise; verification is never autocast), per image success, score, steps and time, beside
    float32 at the next seed (how far the noise drawn alone moves a score); then ``--steps`` optimisation
    steps of the 10 timed three times each way, alternating, so that a shared machine's load moves both
    alike.

Threads: torch runs on one thread (``--threads``), set before any work; the machine may be busy, so cost
figures are ratios measured in one process, against each other.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPEATED = [0, 400, 800, 1200, 1600, 2000, 2400, 2800, 3200, 3600]


def auc_lower(a: list[float], b: list[float]) -> float:
    """P(x < y) + ½ P(x = y) for x from ``a``, y from ``b`` (+∞ compares equal to +∞)."""
    wins = sum((x < y) + 0.5 * (x == y) for x in a for y in b)
    return wins / (len(a) * len(b))


def describe(scores: list[float]) -> dict:
    finite = np.array([s for s in scores if math.isfinite(s)])
    return {"n": len(scores), "success_rate": len(finite) / len(scores),
            "median": float(np.median(scores)) if len(scores) else None,
            "iqr": [float(np.quantile(scores, 0.25, method="nearest")),
                    float(np.quantile(scores, 0.75, method="nearest"))] if len(scores) else None,
            "finite_median": float(np.median(finite)) if len(finite) else None}


def auc_higher(a: list[float], b: list[float]) -> float:
    """P(x > y) + ½ P(x = y) for x from ``a``, y from ``b``."""
    return auc_lower(b, a)


def auc_interval(a: list[float], b: list[float], higher: bool, seed: int, draws: int = 2000) -> list[float]:
    """A percentile bootstrap 95 % interval of the AUC (each group resampled with replacement, seeded)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not higher:
        a, b = -a, -b
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(draws):
        x, y = rng.choice(a, len(a))[:, None], rng.choice(b, len(b))[None, :]
        aucs.append(float(np.mean((x > y) + 0.5 * (x == y))))
    return [float(np.quantile(aucs, 0.025)), float(np.quantile(aucs, 0.975))]


def spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "iqr": [float(np.quantile(v, 0.25)), float(np.quantile(v, 0.75))],
            "min": float(v.min()), "max": float(v.max())}


def run_invmm(images: np.ndarray, args) -> tuple[list[float], dict]:
    import forensics

    t0 = time.perf_counter()
    result = forensics.invmm(images, model=args.model, preset=args.preset, settings=overrides(args.set),
                             seed=args.seed, group=args.group)
    inv = result.inversions
    return result.scores, {"seconds": time.perf_counter() - t0, "timing": result.timing.to_dict(),
                           "preset": result.preset, "settings": dict(result.settings),
                           "steps": [r.steps for r in inv], "success": [bool(r.success) for r in inv],
                           # the continuous reads every inversion records, success or not
                           "best_similarity": [float(r.best_similarity) for r in inv],
                           "last_similarity": [float(r.similarity) for r in inv],
                           "last_kl": [float(r.kl) for r in inv], "last_lambda": [float(r.lam) for r in inv]}


def run_invmm_saved(images: np.ndarray, args, name: str) -> tuple[list[float], dict]:
    """``run_invmm``, kept in ``--out``'s ``.NAME.json`` beside it and read back on a rerun with the same
    model, images, seed, preset and overrides (a long run resumes at the half it stopped in)."""
    from forensics.io.hashing import sha256_array

    key = {"model": args.model, "preset": args.preset, "set": list(args.set), "seed": args.seed,
           "group": args.group, "images": sha256_array(np.ascontiguousarray(images))}
    path = None if args.out is None else args.out.with_suffix(f".{name}.json")
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"[{name}: read back from {path}]", file=sys.stderr)
            return [float(s) for s in saved["scores"]], saved["cost"]
    scores, cost = run_invmm(images, args)
    if path is not None:
        from forensics.io.atomic import write_text_atomic

        write_text_atomic(path, json.dumps({"key": key, "scores": scores, "cost": cost}, default=float) + "\n")
    return scores, cost


def overrides(pairs: list[str]) -> dict:
    from forensics.cli.invmm import _parse_settings

    return _parse_settings(pairs)


def ddim_samples(model_name: str, n: int, seed: int) -> np.ndarray:
    import torch

    from forensics.api import _diffusion_model
    from forensics.inversion.measure import ddim_sample

    model = _diffusion_model(model_name, device="cpu", registry=None)
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, n, 100):
            x = ddim_sample(model, torch.randn((min(100, n - i), *model.sample_shape), generator=g), 50)
            out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy())
    return np.concatenate(out)


def nearest_training(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def unit(a):
        a = a.reshape(len(a), -1).astype(np.float64)
        a = a - a.mean(1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    c = unit(samples) @ unit(train).T
    return c.argmax(1), c.max(1)


def part_beta(args) -> dict:
    from forensics.zoo.data import mnist_split

    train, _, test, _ = mnist_split()

    def unit(a):
        a = a.reshape(len(a), -1).astype(np.float64)
        a = a - a.mean(1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    z = unit(train)
    c = z @ z.T
    np.fill_diagonal(c, -1)
    nearest = c.max(1)
    out = {"nearest_distinct_training_max": float(nearest.max()),
           "nearest_distinct_training_q999": float(np.quantile(nearest, 0.999)),
           "heldout_to_nearest_training_max": float((unit(test) @ z.T).max(1).max())}
    rng = np.random.default_rng(args.seed)
    x = train[:500].astype(np.float64)
    for sigma in (4, 8, 12.75):
        noisy = np.clip(x + rng.normal(0, sigma, x.shape), 0, 255)
        out[f"noisy_copy_sigma_{sigma}_min"] = float((unit(noisy) * z[:500]).sum(1).min())
    out["shift_1px_median"] = float(np.median((unit(np.roll(train[:500], 1, axis=2)) * z[:500]).sum(1)))
    return out


def part_memorizes(args) -> dict:
    from forensics.inversion.similarity import PIXEL_CORRELATION_BETA
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    samples = ddim_samples(args.model, args.samples, args.seed)
    best, corr = nearest_training(samples, train)
    repeated = np.isin(best, REPEATED)
    near = corr >= PIXEL_CORRELATION_BETA
    return {"model": args.model, "samples": len(samples), "beta": PIXEL_CORRELATION_BETA,
            "near_copies_of_repeated": float(np.mean(near & repeated)),
            "near_copies_of_other_training": float(np.mean(near & ~repeated)),
            "nearest_is_repeated": float(np.mean(repeated)),
            "repeated_images_copied": sorted({int(b) for b in best[near & repeated]})}


def part_separation(args) -> dict:
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    rng = np.random.default_rng(args.seed)
    others = rng.choice(np.setdiff1d(np.arange(len(train)), REPEATED), args.ordinary, replace=False)
    s_rep, c_rep = run_invmm(train[REPEATED], args)
    s_ord, c_ord = run_invmm(train[others], args)
    return {"model": args.model, "repeated": describe(s_rep), "ordinary": describe(s_ord),
            "auc": auc_lower(s_rep, s_ord), "ordinary_indices": others.tolist(),
            "scores": {"repeated": s_rep, "ordinary": s_ord}, "cost": {"repeated": c_rep, "ordinary": c_ord}}


def part_membership(args) -> dict:
    from forensics.zoo.data import mnist_split

    train, _, test, _ = mnist_split()
    rng = np.random.default_rng(args.seed + 1)
    members = rng.choice(np.setdiff1d(np.arange(len(train)), REPEATED), args.ordinary, replace=False)
    held = rng.choice(len(test), args.heldout, replace=False)
    s_mem, c_mem = run_invmm_saved(train[members], args, "members")
    s_out, c_out = run_invmm_saved(test[held], args, "heldout")
    # the official score is +inf for every image never reproduced, so where neither group is, its AUC is ½
    # by ties alone; the continuous reads ask whether members come any nearer to being reproduced: the
    # best verification similarity an image reached (the lowest of its 8 samples, at its best check) and
    # the KL where it stopped (lower: the Gaussian stayed nearer N(0, I) while its x̂₀ stayed sharp)
    reads = {}
    for key, higher in (("best_similarity", True), ("last_similarity", True), ("last_kl", False)):
        a, b = c_mem[key], c_out[key]
        reads[key] = {"auc_members_more_memorized": auc_higher(a, b) if higher else auc_lower(a, b),
                      "auc_bootstrap_95": auc_interval(a, b, higher, args.seed),
                      "members": spread(a), "heldout": spread(b)}
    return {"model": args.model, "preset": c_mem["preset"], "settings": c_mem["settings"], "seed": args.seed,
            "member_indices": members.tolist(), "heldout_indices": held.tolist(),
            "members": describe(s_mem), "heldout": describe(s_out),
            "auc_members_lower": auc_lower(s_mem, s_out), "continuous": reads,
            # the AUC's standard deviation when members and held-out images are alike (Mann–Whitney, no ties)
            "auc_null_sd": math.sqrt((len(s_mem) + len(s_out) + 1) / (12 * len(s_mem) * len(s_out))),
            "seconds": {"members": c_mem["seconds"], "heldout": c_out["seconds"]},
            "timing": {"members": c_mem["timing"], "heldout": c_out["timing"]},
            "scores": {"members": s_mem, "heldout": s_out},
            "per_image": {"members": {k: c_mem[k] for k in ("steps", "best_similarity", "last_similarity", "last_kl")},
                          "heldout": {k: c_out[k] for k in ("steps", "best_similarity", "last_similarity", "last_kl")}}}


def part_agreement(args) -> dict:
    import forensics
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    samples = ddim_samples(args.model, args.samples, args.seed)
    best, corr = nearest_training(samples, train)
    result = forensics.memorization(samples)
    return {"model": args.model, "samples": len(samples), "level": result.level,
            "readings": result.readings, "layers": [lv.layer for lv in result.curve.layers],
            "curve": [lv.value for lv in result.curve.layers],
            "share_copying_a_repeated_image": float(np.mean(np.isin(best, REPEATED) & (corr >= 0.985)))}


def part_cost(args) -> dict:
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    images = train[np.setdiff1d(np.arange(len(train)), REPEATED)[: args.images]]
    fixed = overrides(args.set) | {"max_steps": args.steps}
    import forensics

    # one throwaway call first: imports, the model's load and torch's first-call set-up would otherwise
    # be charged to whichever grouping runs first (1.7-1.9 s here, a 1.5x "speedup" that was only that)
    forensics.invmm(images[:1], model=args.model, preset=args.preset,
                    settings=fixed | {"max_steps": 2, "check_every": 2, "verify_steps": 2, "verify_samples": 2},
                    seed=args.seed, group=1)
    out = {}
    for group in (1, args.group or 8):
        import forensics

        t0 = time.perf_counter()
        r = forensics.invmm(images, model=args.model, preset=args.preset, settings=fixed, seed=args.seed,
                            group=group)
        out[f"group_{group}"] = {"seconds_per_image": (time.perf_counter() - t0) / len(images),
                                 "timing": r.timing.to_dict()}
    out["batching_speedup"] = out["group_1"]["seconds_per_image"] / out[f"group_{args.group or 8}"]["seconds_per_image"]
    return {"model": args.model, "images": len(images), "steps": args.steps, **out}


def part_amp(args) -> dict:
    import torch

    from forensics.api import _diffusion_model, invmm_settings
    from forensics.inversion.measure import invert
    from forensics.inversion.similarity import make_pixel_correlation
    from forensics.zoo.data import mnist_split

    train = mnist_split()[0]
    targets = torch.from_numpy(train[REPEATED]).float().div(127.5).sub(1.0).unsqueeze(1)
    model = _diffusion_model(args.model, device="cpu", registry=None)
    settings = invmm_settings(args.preset or model.default_preset, overrides(args.set))
    judge = make_pixel_correlation(threshold=settings.threshold)
    out = {}
    # fp32 again at the next seed: how far the score moves with the noise drawn alone, the yardstick for bf16
    for name, dtype, seed in (("fp32", None, args.seed), ("bf16", torch.bfloat16, args.seed),
                              ("fp32_next_seed", None, args.seed + 1)):
        t0 = time.perf_counter()
        inv, timing = invert(model, targets, similarity=judge, settings=settings, seed=seed,
                             group=args.group or len(REPEATED), autocast_dtype=dtype)
        out[name] = {"seconds": time.perf_counter() - t0, "timing": timing.to_dict(),
                     "success": [bool(r.success) for r in inv], "scores": [float(r.score) for r in inv],
                     "steps": [r.steps for r in inv], "best_similarity": [float(r.best_similarity) for r in inv],
                     "describe": describe([float(r.score) for r in inv])}
        print(f"[{name}: {out[name]['seconds']:.1f} s]", file=sys.stderr)
    # the time per optimisation step, the two alternating over rounds (a shared machine's load moves both alike):
    # verification is not autocast, so only the steps can differ
    rounds = {"fp32": [], "bf16": []}
    timed = settings.replace(max_steps=args.steps, check_every=args.steps + 1)
    for _ in range(3):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            _, timing = invert(model, targets, similarity=judge, settings=timed, seed=args.seed,
                               group=args.group or len(REPEATED), autocast_dtype=dtype)
            rounds[name].append(timing.optimisation_seconds / args.steps)
    for name in rounds:
        out[name]["seconds_per_step_rounds"] = rounds[name]
    a, b, c = out["fp32"], out["bf16"], out["fp32_next_seed"]

    def moved(x, y):
        both = [i for i in range(len(REPEATED)) if x["success"][i] and y["success"][i]]
        diff = [abs(x["scores"][i] - y["scores"][i]) for i in both]
        rel = [abs(x["scores"][i] - y["scores"][i]) / x["scores"][i] for i in both]
        return {"same_success": x["success"] == y["success"],
                "same_steps": sum(p == q for p, q in zip(x["steps"], y["steps"])),
                "abs_score_difference": spread(diff) if diff else None,
                "relative_score_difference": spread(rel) if rel else None,
                "rank_correlation": float(np.corrcoef(np.argsort(np.argsort(x["scores"])),
                                                      np.argsort(np.argsort(y["scores"])))[0, 1])}

    return {"model": args.model, "settings": settings.to_dict(), "seed": args.seed, **out,
            "bf16_against_fp32": moved(a, b), "next_seed_against_fp32": moved(a, c),
            "bf16_time_ratio": b["seconds"] / a["seconds"],
            "bf16_step_time_ratio": float(np.median(rounds["bf16"]) / np.median(rounds["fp32"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["beta", "memorizes", "separation", "membership", "agreement", "cost", "amp"])
    ap.add_argument("--model", default="mnist-dup")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], help="InvMM parameter NAME=VALUE (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group", type=int, default=None)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--ordinary", type=int, default=40)
    ap.add_argument("--heldout", type=int, default=40)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = globals()[f"part_{args.part}"](args)
    summary.update({"part": args.part, "threads": args.threads, "wall_seconds": round(time.perf_counter() - t0, 1)})
    text = json.dumps(summary, indent=1, default=float)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
