"""Train the zoo's generators on T and write their sample sets.

    python -m forensics.zoo.training.generators <generator> --seed S [--out DIR] [--instance NAME]
    python -m forensics.zoo.training.generators ddpm-net --seed 0     # trains + exports the DDPM network
    python -m forensics.zoo.training.generators ddim --seed 1         # samples from the exported DDPM
    python -m forensics.zoo.training.generators manifest              # (re)writes MANIFEST.json

Generators: see ``GENERATORS``. Trained ones checkpoint under ``--ckpt-dir`` (default /tmp/zoo) and
resume from there; a finished run is not retrained. Each call writes
``DIR/<generator>/<instance>.npz`` (key ``images``: uint8 (m, 28, 28)) and ``<instance>.json``
(seed, settings, timings, quality). Instance names: seed S -> ``run<S>``, but seed 3 -> ``heldout`` (the query set).
Everything is CPU and single-threaded by default (``--threads``) so reruns reproduce bit-for-bit on the
same machine/torch build.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from forensics.zoo.catalog import SAMPLES_SUBDIR, SET_SIZE, file_sha256, write_manifest
from forensics.zoo.data import mnist_split
from forensics.zoo.quality import quality

from . import models as M
from . import samplers as S

REPO = Path(__file__).resolve().parents[3]
DEFAULT_OUT = REPO / "registry" / SAMPLES_SUBDIR
DEFAULT_WEIGHTS = DEFAULT_OUT.parent / "models" / "ddpm.safetensors"
DUP_WEIGHTS = DEFAULT_OUT.parent / "models" / "mnist-dup.safetensors"
DEFAULT_CKPT = Path(os.environ.get("FORENSICS_ZOO_CKPT", "/tmp/zoo"))
M_IMAGES = SET_SIZE

# Default settings of every generator (recorded in each instance's json).
SETTINGS = {
    # 12,000 iterations: 30,000 brought the sets little nearer the data for 2.5x the time
    "vae": {"zdim": 16, "ch": 32, "iters": 12000, "batch": 64, "lr": 1e-3,
            "sample": "decoder mean of z~N(0,I)"},
    # the last 9,000 of the 27,000 iterations decay the learning rate to zero by a cosine (`learning_rate`)
    "dcgan": {"zdim": 64, "ch": 32, "iters": 27000, "decay_from": 18000, "batch": 64, "lr": 2e-4,
              "betas": (0.5, 0.999),
              "loss": "BCE", "ema": 0.999, "sample": "EMA generator, BN on the sampled batch of 500"},
    # the second half of the 18,000 iterations decays the learning rate to zero by a cosine; shorter runs
    # drew unsteady distributions (one training run of six far from the other five)
    "sngan": {"zdim": 64, "ch": 32, "iters": 18000, "decay_from": 9000, "batch": 64, "lr": 2e-4,
              "betas": (0.5, 0.999),
              "n_dis": 1, "ema": 0.999, "sample": "EMA generator, BN on the sampled batch of 500",
              "loss": "hinge", "arch": "upsample+conv3x3 G with BN; spectral-norm CNN D (LeakyReLU 0.1)"},
    # dilated blocks: each pixel sees 17 rows up (9 undilated, which drew stroke fragments) for the same
    # multiply-adds per training step. Class-conditional (`classes`): each sampled image's class is drawn
    # from T's class counts. The second half of the iterations decays the learning rate by a cosine.
    "pixelcnn": {"ch": 16, "blocks": 6, "levels": 256, "iters": 18000, "decay_from": 9000, "batch": 32,
                 "lr": 1e-3,
                 "sample": "ancestral, raster order, temperature 1; "
                           "each image's class drawn from T's class frequencies",
                 "arch": "masked 7x7 (A) to 32 channels, 6 residual blocks (1x1, masked 3x3 B, 1x1), 256-way softmax",
                 "dilations": [1, 2, 4, 1, 2, 4], "classes": 10},
    "gmm": {"pca_dims": 50, "components": 40, "covariance": "full",
            "sample": "GMM in PCA-50 pixel space, inverse PCA"},
    "kde-copier": {"sigma": 0.1,
                   "sample": "uniform training image + N(0, sigma^2) pixel noise on [-1,1], clipped"},
    # 30,000 iterations in two stages: at 15,000 a warm restart (the live weights take the EMA's, Adam and
    # its 500-step warm-up start afresh, the noise stream is reseeded with seed + 1,000 * stage), so stage 2
    # depends only on stage 1's EMA weights; the pixel evals of stage 1 had stalled over its last 4,000
    "ddpm-net": {"unet_c1": 16, "unet_c2": 32, "tdim": 128, "schedule": "linear 1e-4..0.02", "T": 1000,
                 "iters": 30000, "restarts": [15000], "batch": 64, "lr": 5e-4, "warmup": 500, "ema": 0.999,
                 "grad_clip": 1.0, "eval_every": 2000},
    # The memorizing network InvMM is measured on (`--model mnist-dup`): ddpm-net's architecture and
    # optimiser trained on T with 10 of its images repeated 100 times each, as the InvMM code's `--dup`
    # does -- the first digit of each class in T's order, T[0], T[400], ..., T[3600] -- so that one
    # training image in five is one of the ten. One stage, no warm restart.
    "ddpm-dup": {"unet_c1": 16, "unet_c2": 32, "tdim": 128, "schedule": "linear 1e-4..0.02", "T": 1000,
                 "iters": 20000, "restarts": [], "batch": 64, "lr": 5e-4, "warmup": 500, "ema": 0.999,
                 "grad_clip": 1.0, "eval_every": 2000,
                 "dup_indices": [0, 400, 800, 1200, 1600, 2000, 2400, 2800, 3200, 3600], "dup_copies": 100},
    # all 1,000 steps, as diffusers' DDPMPipeline (the paper's) does by default; respaced to 200, the
    # samples sit farther from the data
    "ddpm": {"sampler": "ddpm_ancestral", "steps": 1000, "clip": True,
             "note": "ancestral sampling, posterior variance, all 1000 steps"},
    "ddim": {"sampler": "ddim", "steps": 50, "eta": 0.0, "clip": True},
    # PNDM does not clip x̂0: diffusers' PNDMScheduler, which ran the paper's PNDM, has no such option,
    # while its DDIM and DDPM schedulers clip (clip_sample=True). Clipped, PNDM would be a second 50-step
    # solver of DDIM's clipped ODE and draw DDIM's distribution. Its first three steps are pseudo
    # Runge-Kutta steps (F-PNDM), as in that scheduler's default (skip_prk_steps=False), then 4th-order
    # pseudo linear multistep.
    "pndm": {"sampler": "pndm (F-PNDM)", "steps": 50, "clip": False, "warmup": "prk"},
}
DIFFUSION_SAMPLERS = {"ddpm", "ddim", "pndm"}
# The three samplers share one network, so each draws its noise from its own stream: from one stream,
# DDIM and PNDM (two solvers of the same ODE) would turn the same x_T into nearly the same images, and
# run k of one class would be a near-duplicate of run k of the other -- a coincidence no real pair of
# deployments shares.
SAMPLING_SEED_BASE = {"ddpm": 10_000, "ddim": 20_000, "pndm": 30_000}


def sampling_seed(gen: str, seed: int) -> int:
    return SAMPLING_SEED_BASE.get(gen, 10_000) + seed
GENERATORS = list(SETTINGS)


def instance_name(seed: int) -> str:
    return "heldout" if seed == 3 else f"run{seed}"


def _seed_all(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def _log(msg: str):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class _Data:
    """T in [-1, 1] with its class labels, served in per-epoch permutations seeded by the run's seed."""

    def __init__(self, seed: int, dup_indices=(), dup_copies: int = 1):
        tr, labels, _, _ = mnist_split()
        if dup_indices:  # each listed image appears dup_copies times in all
            extra = np.repeat(np.asarray(dup_indices), dup_copies - 1)
            tr, labels = np.concatenate([tr, tr[extra]]), np.concatenate([labels, labels[extra]])
        self.x = M.from_uint8(tr)  # [-1, 1]
        self.y = torch.as_tensor(labels, dtype=torch.long)
        self.seed = seed

    def _index(self, it: int, bs: int) -> torch.Tensor:
        per_epoch = len(self.x) // bs
        epoch, k = divmod(it, per_epoch)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.x), generator=g)[k * bs:(k + 1) * bs]

    def batch(self, it: int, bs: int) -> torch.Tensor:
        return self.x[self._index(it, bs)]

    def labelled_batch(self, it: int, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(it, bs)
        return self.x[i], self.y[i]


def _ckpt_path(ckpt_dir: Path, gen: str, seed: int) -> Path:
    return ckpt_dir / gen / f"seed{seed}.pt"


def _save_ckpt(path: Path, it: int, modules: dict, extra: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"it": it, "rng": torch.get_rng_state(), "extra": extra or {}}
    state.update({k: v.state_dict() for k, v in modules.items()})
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_ckpt(path: Path, modules: dict) -> tuple[int, dict]:
    if not path.exists():
        return 0, {}
    state = torch.load(path, weights_only=True)
    for k, v in modules.items():
        v.load_state_dict(state[k])
    torch.set_rng_state(state["rng"])
    _log(f"resumed {path} at iteration {state['it']}")
    return int(state["it"]), state.get("extra", {})


def _loop(name, seed, ckpt_dir, iters, modules, step_fn, every_s=60.0, on_eval=None, eval_every=0):
    """Generic resumable training loop; returns (train seconds so far, extra dict)."""
    path = _ckpt_path(ckpt_dir, name, seed)
    start, extra = _load_ckpt(path, modules)
    secs = float(extra.get("train_seconds", 0.0))
    t_last = time.time()
    t_ck = t_last
    for it in range(start, iters):
        info = step_fn(it)
        now = time.time()
        secs += now - t_last
        t_last = now
        if (it + 1) % 250 == 0:
            _log(f"{name} seed{seed} it {it + 1}/{iters} {info} ({secs:.0f}s)")
        if on_eval is not None and eval_every and (it + 1) % eval_every == 0:
            extra.setdefault("evals", []).append({"it": it + 1, **on_eval()})
            _log(f"{name} seed{seed} eval {extra['evals'][-1]}")
            t_last = time.time()
        if now - t_ck > every_s or it + 1 == iters:
            extra["train_seconds"] = secs
            _save_ckpt(path, it + 1, modules, extra)
            t_ck = time.time()
    extra["train_seconds"] = secs
    return secs, extra


# ------------------------------------------------------------------ generators
def learning_rate(cfg: dict, it: int) -> float:
    """The learning rate at iteration ``it``: ``cfg["lr"]``, then, from ``cfg["decay_from"]`` (if set) to
    ``cfg["iters"]``, a cosine down to zero. A function of the iteration alone, so a run resumed from a
    checkpoint, or extended from a shorter run's last checkpoint, equals one trained straight through."""
    start = cfg.get("decay_from")
    if start is None or it < start:
        return cfg["lr"]
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * (it - start) / (cfg["iters"] - start)))


def _set_lr(lr: float, *optimizers):
    for opt in optimizers:
        for grp in opt.param_groups:
            grp["lr"] = lr


def _fit_and_sample(name, seed, ckpt_dir, cfg, model, loss_fn):
    """Adam on ``loss_fn(batch in [-1, 1], its class labels) -> (loss, log text)`` for the configured
    iterations (resumable), then ``model.sample`` from the sampling seed. The model must be built right
    after ``_seed_all``."""
    data = _Data(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])

    def step(it):
        _set_lr(learning_rate(cfg, it), opt)
        loss, info = loss_fn(*data.labelled_batch(it, cfg["batch"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return info

    secs, _ = _loop(name, seed, ckpt_dir, cfg["iters"], {"model": model, "opt": opt}, step)
    model.eval()
    g = torch.Generator().manual_seed(10_000 + seed)
    return M.to_uint8(model.sample(M_IMAGES, g)), secs


def train_vae(seed, ckpt_dir, cfg):
    _seed_all(seed)
    model = M.ConvVAE(cfg["zdim"], cfg["ch"])

    def loss_fn(x, _labels):
        loss, rec, kl = model.loss((x + 1) / 2)
        return loss, f"loss {loss.item():.1f} rec {rec.item():.1f} kl {kl.item():.1f}"

    return _fit_and_sample("vae", seed, ckpt_dir, cfg, model, loss_fn)


def train_pixelcnn(seed, ckpt_dir, cfg):
    _seed_all(seed)
    model = M.PixelCNN(cfg["ch"], cfg["blocks"], cfg["levels"], cfg.get("dilations"), cfg.get("classes"))
    if model.classes:  # sampling draws classes as often as T has them
        model.class_counts.copy_(torch.bincount(torch.as_tensor(mnist_split()[1]), minlength=model.classes))

    def loss_fn(x, labels):
        loss = model.loss(x, labels if model.classes else None)
        return loss, f"nll {loss.item():.3f} nats/pixel"

    return _fit_and_sample("pixelcnn", seed, ckpt_dir, cfg, model, loss_fn)


def _gan(name, seed, ckpt_dir, cfg, G, D, loss_kind):
    _seed_all(seed)
    data = _Data(seed)
    oG = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    oD = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    bs, n_dis = cfg["batch"], cfg.get("n_dis", 1)
    G_ema = copy.deepcopy(G)
    G_ema.requires_grad_(False)

    def step(it):
        _set_lr(learning_rate(cfg, it), oG, oD)
        for k in range(n_dis):
            real = data.batch(it * n_dis + k, bs)
            with torch.no_grad():
                fake = G(torch.randn(bs, G.zdim))
            dr, df = D(real), D(fake)
            if loss_kind == "bce":
                lD = F.binary_cross_entropy_with_logits(dr, torch.ones_like(dr)) + \
                    F.binary_cross_entropy_with_logits(df, torch.zeros_like(df))
            else:
                lD = F.relu(1 - dr).mean() + F.relu(1 + df).mean()
            oD.zero_grad()
            lD.backward()
            oD.step()
        df = D(G(torch.randn(bs, G.zdim)))
        lG = F.binary_cross_entropy_with_logits(df, torch.ones_like(df)) if loss_kind == "bce" else -df.mean()
        oG.zero_grad()
        lG.backward()
        oG.step()
        d = min(cfg["ema"], (1 + it) / (10 + it))
        with torch.no_grad():
            for pe, p in zip(G_ema.parameters(), G.parameters()):
                pe.mul_(d).add_(p, alpha=1 - d)
        return f"lD {lD.item():.3f} lG {lG.item():.3f}"

    secs, _ = _loop(name, seed, ckpt_dir, cfg["iters"], {"G": G, "G_ema": G_ema, "D": D, "oG": oG, "oD": oD},
                    step)
    # EMA generator; batch norm uses the statistics of the sampled batch (train mode), since the
    # running statistics belong to the live generator, not to the averaged weights.
    G_ema.train()
    g = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        x = G_ema(torch.randn(M_IMAGES, G.zdim, generator=g))
    return M.to_uint8(x), secs


def train_dcgan(seed, ckpt_dir, cfg):
    _seed_all(seed)
    return _gan("dcgan", seed, ckpt_dir, cfg, M.DCGANGenerator(cfg["zdim"], cfg["ch"]),
                M.DCGANDiscriminator(cfg["ch"]), "bce")


def train_sngan(seed, ckpt_dir, cfg):
    _seed_all(seed)
    return _gan("sngan", seed, ckpt_dir, cfg, M.SNGANGenerator(cfg["zdim"], cfg["ch"]),
                M.SNGANDiscriminator(cfg["ch"]), "hinge")


def train_gmm(seed, ckpt_dir, cfg):
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    t0 = time.time()
    tr, _, _, _ = mnist_split()
    X = tr.reshape(len(tr), -1).astype(np.float64) / 127.5 - 1
    pca = PCA(cfg["pca_dims"], random_state=seed).fit(X)
    gm = GaussianMixture(cfg["components"], covariance_type=cfg["covariance"], random_state=seed,
                         reg_covar=1e-4).fit(pca.transform(X))
    gm.random_state = 10_000 + seed
    z, _ = gm.sample(M_IMAGES)
    z = z[np.random.default_rng(10_000 + seed).permutation(M_IMAGES)]  # sample() groups by component
    x = torch.from_numpy(pca.inverse_transform(z).reshape(-1, 1, 28, 28)).float()
    return M.to_uint8(x), time.time() - t0


def train_kde_copier(seed, ckpt_dir, cfg):
    t0 = time.time()
    tr, _, _, _ = mnist_split()
    g = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randint(0, len(tr), (M_IMAGES,), generator=g)
    x = M.from_uint8(tr[idx.numpy()])
    x = x + cfg["sigma"] * torch.randn(x.shape, generator=g)
    return M.to_uint8(x), time.time() - t0


# ------------------------------------------------------------------ diffusion
def ddpm_schedule(cfg=None) -> S.Schedule:
    cfg = cfg or SETTINGS["ddpm-net"]
    return S.Schedule.linear(cfg["T"])


def load_ddpm(path: Path | str = DEFAULT_WEIGHTS) -> tuple[M.SmallUNet, S.Schedule]:
    """Load the exported DDPM (EMA weights) and its schedule; ``model(x, t)`` predicts eps."""
    from safetensors.torch import load_file

    cfg = SETTINGS["ddpm-net"]
    net = M.SmallUNet(cfg["unet_c1"], cfg["unet_c2"], cfg["tdim"])
    net.load_state_dict(load_file(str(path)))
    net.eval()
    return net, ddpm_schedule(cfg)


def _eps_fn(net):
    def f(x, t):
        return net(x, t)
    return f


def sample_diffusion(net, sched, which: str, seed: int, n: int = M_IMAGES, batch: int = 500,
                     cfg: dict | None = None) -> np.ndarray:
    cfg = cfg or SETTINGS[which]
    g = torch.Generator().manual_seed(sampling_seed(which, seed))
    out = []
    for i in range(0, n, batch):
        shape = (min(batch, n - i), 1, 28, 28)
        if which == "ddpm":
            x = S.ddpm_ancestral(_eps_fn(net), sched, shape, steps=cfg["steps"], clip=cfg["clip"], generator=g)
        elif which == "ddim":
            x = S.ddim(_eps_fn(net), sched, shape, steps=cfg["steps"], eta=cfg["eta"], clip=cfg["clip"], generator=g)
        elif which == "pndm":
            x = S.pndm(_eps_fn(net), sched, shape, steps=cfg["steps"], clip=cfg["clip"], generator=g,
                       warmup=cfg["warmup"])
        else:
            raise ValueError(which)
        out.append(M.to_uint8(x))
    return np.concatenate(out)


def train_ddpm(seed, ckpt_dir, cfg, weights: Path, name: str = "ddpm"):
    _seed_all(seed)
    data = _Data(seed, cfg.get("dup_indices", ()), cfg.get("dup_copies", 1))
    net = M.SmallUNet(cfg["unet_c1"], cfg["unet_c2"], cfg["tdim"])
    ema = M.SmallUNet(cfg["unet_c1"], cfg["unet_c2"], cfg["tdim"])
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    sched = ddpm_schedule(cfg)
    bs = cfg["batch"]

    restarts = sorted(cfg.get("restarts", []))

    def step(it):
        if it in restarts:
            warm_restart(it)
        stage_start = max([0] + [r for r in restarts if r <= it])
        x0 = data.batch(it, bs)
        t = torch.randint(0, sched.T, (bs,))
        noise = torch.randn_like(x0)
        loss = F.mse_loss(net(sched.q_sample(x0, t, noise), t), noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
        _set_lr(cfg["lr"] * min(1.0, (it + 1 - stage_start) / cfg.get("warmup", 500)), opt)
        opt.step()
        d = min(cfg["ema"], (1 + it) / (10 + it))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(p, alpha=1 - d)
        return f"loss {loss.item():.4f}"

    def warm_restart(it):
        """Start stage ``restarts.index(it) + 1`` from the EMA weights alone: everything else is fresh."""
        net.load_state_dict(ema.state_dict())
        opt.state.clear()  # Adam's moments and step counts; the learning rate is set at every step
        torch.manual_seed(seed + 1_000 * (restarts.index(it) + 1))
        _log(f"ddpm seed{seed} warm restart at iteration {it} from the EMA weights")

    def on_eval():
        ema.eval()
        rng = torch.get_rng_state()
        x = sample_diffusion(ema, sched, "ddim", seed=999, n=200, batch=200,
                             cfg={"steps": 25, "eta": 0.0, "clip": True})
        torch.set_rng_state(rng)
        q = quality(x)
        return {k: q[k] for k in ("fd_pca", "nn_ratio", "ct_pixel")}

    secs, extra = _loop(name, seed, ckpt_dir, cfg["iters"], {"net": net, "ema": ema, "opt": opt}, step,
                        on_eval=on_eval, eval_every=cfg["eval_every"])
    from safetensors.torch import save_file

    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(weights),
              metadata={"settings": json.dumps(cfg), "seed": str(seed), "iters": str(cfg["iters"]),
                        "train_seconds": f"{secs:.0f}"})
    os.chmod(weights, 0o644)
    _log(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB)")
    return secs, extra


# ------------------------------------------------------------------ output
def write_instance(out: Path, gen: str, instance: str, images: np.ndarray, meta: dict):
    assert images.dtype == np.uint8 and images.shape == (M_IMAGES, 28, 28), (images.dtype, images.shape)
    d = out / gen
    d.mkdir(parents=True, exist_ok=True)
    npz = d / f"{instance}.npz"
    np.savez_compressed(npz, images=images)
    meta = dict(meta, generator=gen, instance=instance, file=f"{gen}/{instance}.npz", sha256=file_sha256(npz),
                m=len(images), quality=quality(images))
    (d / f"{instance}.json").write_text(json.dumps(meta, indent=1) + "\n")
    _log(f"wrote {npz}: quality {meta['quality']}")
    return meta


def run(gen: str, seed: int, out: Path, instance: str | None, ckpt_dir: Path, weights: Path,
        overrides: dict) -> dict | None:
    cfg = dict(SETTINGS[gen], **overrides)
    instance = instance or instance_name(seed)
    env = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads()}
    t0 = time.time()
    if gen in ("ddpm-net", "ddpm-dup"):
        if gen == "ddpm-dup" and weights == DEFAULT_WEIGHTS:
            weights = DUP_WEIGHTS
        secs, extra = train_ddpm(seed, ckpt_dir, cfg, weights, name="ddpm" if gen == "ddpm-net" else gen)
        info = {"generator": "ddpm-network" if gen == "ddpm-net" else gen, "seed": seed, "settings": cfg, "train_seconds": round(secs),
                "evals": extra.get("evals", []),
                "weights": str(weights.relative_to(REPO)) if weights.is_relative_to(REPO) else str(weights),
                "weights_sha256": file_sha256(weights), "env": env}
        weights.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
        return None
    if gen in DIFFUSION_SAMPLERS:
        net, sched = load_ddpm(weights)
        images = sample_diffusion(net, sched, gen, seed, cfg=cfg)
        train_secs = json.loads((weights.parent / "ddpm.json").read_text())["train_seconds"] \
            if (weights.parent / "ddpm.json").exists() else None
        meta = {"seed": seed, "sampling_seed": sampling_seed(gen, seed), "settings": cfg,
                "network": {"weights": "models/ddpm.safetensors", "sha256": file_sha256(weights),
                            "settings": SETTINGS["ddpm-net"]},
                "train_seconds": train_secs, "sample_seconds": round(time.time() - t0, 1), "env": env}
        return write_instance(out, gen, instance, images, meta)
    fn = {"vae": train_vae, "dcgan": train_dcgan, "sngan": train_sngan, "pixelcnn": train_pixelcnn,
          "gmm": train_gmm, "kde-copier": train_kde_copier}[gen]
    images, secs = fn(seed, ckpt_dir, cfg)
    meta = {"seed": seed, "sampling_seed": 10_000 + seed, "settings": cfg, "train_seconds": round(secs, 1),
            "total_seconds": round(time.time() - t0, 1), "env": env}
    return write_instance(out, gen, instance, images, meta)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m forensics.zoo.training.generators", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generator", choices=GENERATORS + ["manifest"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="sample-set root (default: registry samples)")
    ap.add_argument("--instance", default=None, help="instance name (default run<seed>, seed 3 = heldout)")
    ap.add_argument("--ckpt-dir", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="DDPM safetensors path")
    ap.add_argument("--iters", type=int, default=None, help="override the training iterations")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.generator == "manifest":
        write_manifest(a.out)
        return 0
    overrides = {"iters": a.iters} if a.iters is not None else {}
    run(a.generator, a.seed, a.out, a.instance, a.ckpt_dir, a.weights, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
