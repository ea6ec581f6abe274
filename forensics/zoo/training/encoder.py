"""Train the small Vision Transformer of the ``mnist-vit`` protocol, on T only.

    python -m forensics.zoo.training.encoder --seed 0                 # trains, then writes the shipped weights
    python -m forensics.zoo.training.encoder --seed 0 --epochs 2 --out /tmp/vit-try   # a quick trial elsewhere

The network, its preprocessing and the weights' location are :mod:`forensics.zoo.encoder`'s. It is trained
as a 10-class classifier on the 4,000 training digits of :func:`forensics.zoo.data.mnist_split`. P_n (the
1,000 held-out digits) is never trained on: it is evaluated once, at the end, and recorded. He et al.
fingerprint with a ViT fine-tuned on their own data; this is its offline stand-in, trained by the project.

The only augmentation is a random translation of up to ±2 px (zero padding), the standard one for MNIST.
Noise, rotation, block shuffles and the like are left out on purpose: they would teach the encoder to
ignore exactly the low-level changes that the curated memorization sets probe.

Training is deterministic given the seed and the thread count; it checkpoints after every epoch under
``--ckpt-dir`` (default ``/tmp/forensics-vit``) and resumes from there. The final weights (classifier head
included) go to ``forensics/zoo/weights/vit_mnist.safetensors`` with a json record beside it (seed,
settings, epochs, wall time, accuracies, digests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from forensics.encode.encoder import preprocess
from forensics.errors import UsageError
from forensics.zoo.encoder import (ARCH_KWARGS, ARCHITECTURE, NUM_CLASSES, PREPROCESSING, RECORD_FILE, WEIGHTS_DIR,
                                   WEIGHTS_FILE, build_model, predict)

SETTINGS: dict[str, Any] = {
    "epochs": 40, "batch": 64, "optimizer": "AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.05,
    "warmup_epochs": 3, "schedule": "linear warm-up, then cosine to 0 (per step)", "grad_clip": 1.0,
    "drop_path": 0.1, "label_smoothing": 0.0, "translate_px": 2,
    "augmentation": "random translation only (zero padding); no noise, rotation or shuffling",
}
DEFAULT_CKPT = Path(os.environ.get("FORENSICS_VIT_CKPT", "/tmp/forensics-vit"))


def translate(x: torch.Tensor, shift: int, generator: torch.Generator, background: torch.Tensor) -> torch.Tensor:
    """Shift each image of ``x`` (B, C, H, W) by its own random offset in [-shift, shift]² pixels;
    uncovered pixels take ``background`` (per channel)."""
    b, c, h, w = x.shape
    padded = background.view(1, c, 1, 1).expand(b, c, h + 2 * shift, w + 2 * shift).clone()
    padded[:, :, shift:shift + h, shift:shift + w] = x
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def lr_at(step: int, steps_per_epoch: int, cfg: dict[str, Any]) -> float:
    """Learning rate at a global step: linear warm-up, then cosine decay to 0."""
    warm = cfg["warmup_epochs"] * steps_per_epoch
    total = cfg["epochs"] * steps_per_epoch
    if step < warm:
        return cfg["lr"] * (step + 1) / warm
    return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(seed: int, *, cfg: dict[str, Any] | None = None, ckpt_dir: Path = DEFAULT_CKPT,
          threads: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or resume) the classifier on T; returns the model and a record of the run."""
    from forensics.zoo.data import mnist_split

    cfg = {**SETTINGS, **(cfg or {})}
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_x, train_y, _, _ = mnist_split()
    x_all = preprocess(train_x, PREPROCESSING)
    y_all = torch.from_numpy(train_y)
    background = torch.tensor([(0.0 - m) / s for m, s in zip(PREPROCESSING.mean, PREPROCESSING.std)])
    model = build_model(drop_path=cfg["drop_path"])
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=tuple(cfg["betas"]))
    steps_per_epoch = len(x_all) // cfg["batch"]  # the last partial batch of each epoch is dropped
    path = ckpt_dir / f"seed{seed}.pt"
    start, seconds, history = 0, 0.0, []
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["settings"] != json.dumps(cfg, sort_keys=True):
            raise UsageError(f"checkpoint {path} was made with other settings; delete it to start afresh")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, seconds, history = int(state["epoch"]), float(state["seconds"]), list(state["history"])
        _log(f"resumed {path} after epoch {start}")
    for epoch in range(start, cfg["epochs"]):
        t0 = time.perf_counter()
        model.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(x_all), generator=g)
        loss_sum, correct, seen = 0.0, 0, 0
        for k in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + k, steps_per_epoch, cfg)
            idx = order[k * cfg["batch"]:(k + 1) * cfg["batch"]]
            x = translate(x_all[idx], cfg["translate_px"], g, background)
            logits = model(x)
            loss = F.cross_entropy(logits, y_all[idx], label_smoothing=cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_all[idx]).sum())
            seen += len(idx)
        seconds += time.perf_counter() - t0
        history.append([epoch + 1, loss_sum / seen, correct / seen, seconds])
        _log(f"epoch {epoch + 1}/{cfg['epochs']} loss {loss_sum / seen:.4f} train-acc {correct / seen:.4f} "
             f"({seconds:.0f}s)")
        _checkpoint(path, {"epoch": epoch + 1, "seconds": seconds, "history": history, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                           "settings": json.dumps(cfg, sort_keys=True)})
    model.eval()
    return model, {"seed": seed, "settings": cfg, "epochs": cfg["epochs"], "train_seconds": round(seconds, 1),
                   "threads": threads, "history": [{"epoch": e, "loss": round(l, 5), "train_acc": round(a, 5),
                                                    "seconds": round(s, 1)} for e, l, a, s in history]}


def export(model: torch.nn.Module, record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Evaluate on T and P_n, then write the weights (safetensors) and the json record into ``out``."""
    import timm
    from safetensors.torch import save_file

    from forensics.io.hashing import sha256_file, sha256_tensors
    from forensics.zoo.data import mnist_split

    train_x, train_y, test_x, test_y = mnist_split()
    pred_test = predict(model, test_x)
    per_class = {str(c): round(float((pred_test[test_y == c] == c).mean()), 4) for c in range(NUM_CLASSES)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE))
    record = {
        **record,
        "architecture": ARCHITECTURE, "arch_kwargs": ARCH_KWARGS, "num_classes": NUM_CLASSES,
        "preprocessing": PREPROCESSING.to_dict(),
        "data": "forensics.zoo.data.mnist_split(): trained on T (4,000 digits) only; P_n (1,000) evaluated only",
        "train_accuracy": round(float((predict(model, train_x) == train_y).mean()), 4),
        "test_accuracy": round(float((pred_test == test_y).mean()), 4),
        "test_accuracy_per_class": per_class,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "file_sha256": sha256_file(out / WEIGHTS_FILE),
        "encoder_digest": sha256_tensors((k, v) for k, v in state.items() if not k.startswith("head.")),
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m forensics.zoo.training.encoder",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help=f"default {SETTINGS['epochs']}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads slow down six-fold "
                             "when another process holds a core)")
    parser.add_argument("--ckpt-dir", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the weights and record go")
    args = parser.parse_args(argv)
    cfg = {} if args.epochs is None else {"epochs": args.epochs}
    t0 = time.time()
    try:
        model, record = train(args.seed, cfg=cfg, ckpt_dir=args.ckpt_dir, threads=args.threads)
    except UsageError as exc:
        raise SystemExit(f"error: {exc}") from None
    record = export(model, record, args.out)
    _log(f"P_n accuracy {record['test_accuracy']:.4f}, T accuracy {record['train_accuracy']:.4f}, "
         f"{record['train_seconds']:.0f}s of training ({time.time() - t0:.0f}s this call); "
         f"wrote {args.out / WEIGHTS_FILE}")


if __name__ == "__main__":
    main()
