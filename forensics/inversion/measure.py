"""InvMM (Ma et al., ICCV 2025): how memorized one image is by a diffusion model, by inverting the model.

For a target x₀ the measure learns a diagonal Gaussian N(μ, diag σ²) over the model's starting noise such
that noise drawn from it makes the model reproduce x₀, while staying as close to N(0, I) as it can. The
score is KL(N(μ, σ²) ‖ N(0, I)) (a mean over dimensions) at the first check where every verification
sample is a copy of x₀; +∞ when that never happens within the step budget. Lower = more memorized.
Exactly as ``ALGORITHMS.md`` §4 and the official code (``Maryeon/InvMM``, ``ddpm/inverion.py``):

* μ, log σ² shaped like x₀ (in model space), starting at 0; only they (and a soft prompt's logits) are
  optimised, by Adam at lr 0.1, for up to 2,000 steps; the model is frozen.
* Sensitivity loss: n = μ + σ·ε for a batch of ε ~ N(0, I), one t ~ U{0 … T-1} per noise sample,
  x_t = √ᾱ_t x₀ + √(1-ᾱ_t) n, x̂₀ = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε_θ(x_t, t) (not clipped), loss = the mean
  of (x̂₀ − x₀)² over every element. Normality loss: ½ mean(μ² + σ² − log σ² − 1). Loss = sensitivity +
  λ·normality, λ₀ = 1, with the λ from before the step's update.
* Adaptive λ: a check at every step with (step + 1) % C == 0 (step > 0). p_now = the mean of the last 100
  sensitivity losses, p_prev starts at +∞. At a check, λ ← max(λ/2, 0) if p_prev − p_now < ξ, else
  λ ← λ + δ; then p_prev ← p_now. On every other step λ ← λ + δ.
* Verification at each check (no gradients): 8 noises from the current Gaussian, deterministic DDIM
  (η = 0) over :meth:`~forensics.inversion.model.DiffusionModel.ddim_timesteps`, the last x̂₀ decoded and
  clipped; success when every sample's copy similarity to x₀ is ≥ β — at any one of the guidance scales
  (Stable Diffusion tries 1 … 7).
* A text-conditioned model also learns a soft prompt: logits (tokens × vocabulary) from 0, turned into
  token weights by Gumbel-softmax at τ, one draw per noise sample per step, one fresh draw per check.

Several targets run in one optimisation (:func:`invert`'s ``group``): each has its own parameters,
λ, losses and random stream (seeded by ``seed`` and its position in the input), and the loss is the sum of
the targets' losses, so each target's gradients, Adam moments and decisions are those it would have alone;
the grouping changes only how many network evaluations share a batch. A target that succeeds leaves the
group. The official code inverts one image at a time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from forensics.errors import UsageError
from forensics.inversion.model import CopySimilarity, DiffusionModel, check_images

SEED_STRIDE = 1_000_003
"""Target i of a run seeded s draws from ``torch.Generator().manual_seed(s * SEED_STRIDE + i)``."""


@dataclass(frozen=True)
class InvMMSettings:
    """Every parameter of the measure (``ALGORITHMS.md`` §4); the defaults are the paper's DDPM CIFAR-10."""

    noise_batch: int = 32
    """noise samples per optimisation step (32 for 32×32 DDPM; 16 for latent models and Stable Diffusion)"""
    check_every: int = 50
    """C: steps between checks (λ halving test and verification)"""
    delta: float = 1e-4
    """δ: λ's increase per step (and at a check whose loss still dropped by ξ or more)"""
    xi: float = 1e-3
    """ξ: the absolute drop of the mean sensitivity loss between checks below which λ is halved"""
    lr: float = 0.1
    """Adam's learning rate (no schedule)"""
    max_steps: int = 2000
    """the step budget; no success within it scores +∞"""
    lambda0: float = 1.0
    """λ at the first step"""
    window: int = 100
    """how many of the latest sensitivity losses p_now averages"""
    verify_samples: int = 8
    """verification samples per check; every one must be a copy"""
    verify_steps: int = 200
    """DDIM steps of a verification sample (η = 0)"""
    guidance: tuple[float, ...] = (1.0,)
    """classifier-free guidance scales tried at verification (text-conditioned models); success at any"""
    similarity: str = "sscd"
    """the copy similarity (a registered name: ``forensics invmm --list``)"""
    threshold: float | None = None
    """β; None takes the similarity's own"""
    gumbel_tau: float | None = None
    """Gumbel-softmax temperature of the soft prompt; None takes the model's (2.0 for Stable Diffusion)"""

    def __post_init__(self):
        ints = {"noise_batch": 1, "check_every": 2, "max_steps": 1, "window": 1, "verify_samples": 1,
                "verify_steps": 1}
        for name, least in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value < 2 ** 31:
                raise ValueError(f"InvMM setting {name} must be a whole number from {least} to 2**31 - 1, got "
                                 f"{value!r}")
        for name in ("delta", "xi", "lr", "lambda0"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0 or (name == "lr" and value == 0):
                raise ValueError(f"InvMM setting {name} must be a finite number ≥ 0 (lr > 0), got {value!r}")
        if not self.guidance or any(not isinstance(g, (int, float)) or not math.isfinite(g) for g in self.guidance):
            raise ValueError(f"InvMM setting guidance must be a non-empty list of numbers, got {self.guidance!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"InvMM setting threshold must be a finite number, got {self.threshold!r}")
        if self.gumbel_tau is not None and not self.gumbel_tau > 0:
            raise ValueError(f"InvMM setting gumbel_tau must be > 0, got {self.gumbel_tau!r}")

    def replace(self, **changes: Any) -> InvMMSettings:
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown InvMM setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.__dataclass_fields__)}")
        if "guidance" in changes:
            scales = changes["guidance"]
            scales = [scales] if isinstance(scales, (int, float)) else scales
            if isinstance(scales, (str, bytes)) or not isinstance(scales, (list, tuple)) or not all(
                    isinstance(g, (int, float)) and not isinstance(g, bool) for g in scales):
                raise ValueError(f"InvMM setting guidance must be a number or a list of numbers, got {scales!r}")
            changes["guidance"] = tuple(float(g) for g in scales)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guidance"] = list(self.guidance)
        return d


_PAPER = InvMMSettings()
PRESETS: dict[str, InvMMSettings] = {
    # DDPM on CIFAR-10 32×32 (the paper's Table; official ddpm/inverion.py)
    "ddpm-cifar10": _PAPER,
    # latent diffusion on CelebA-HQ / FFHQ: DDIM 50, then the first-stage decoder
    "ldm-faces": _PAPER.replace(noise_batch=16, check_every=10, delta=5e-4, verify_steps=50),
    # Stable Diffusion v1.4 and v2.1: soft prompt, DDIM 50 at guidance 1 … 7, success at any scale
    "sd-v1": _PAPER.replace(noise_batch=16, check_every=50, delta=1e-3, verify_steps=50,
                            guidance=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)),
    "sd-v2": _PAPER.replace(noise_batch=16, check_every=50, delta=1e-3, verify_steps=50,
                            guidance=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)),
    # the zoo's 28×28 MNIST networks (mnist-dup, mnist-ddpm): the DDPM settings with the pixel-correlation
    # similarity (SSIM and encoder cosines do not separate copies from near neighbours on digits), DDIM 50
    # at verification (the zoo's own DDIM), and 1,000 steps with noise batch 8: at that budget the 10
    # digits mnist-dup repeats were all reproduced and none of 40 ordinary training digits (AUC 1.00),
    # at about 27 s per never-reproduced image on one CPU thread against ~2 min at the paper's 2,000 × 32;
    # at 300 steps only 3 of the 10 were (AUC 0.65). docs/invmm.md gives the measurements behind all three
    "mnist": _PAPER.replace(similarity="pixel-correlation", verify_steps=50, max_steps=1000, noise_batch=8),
}
"""Named settings: the paper's (``ALGORITHMS.md`` §4 table) and the embedded MNIST model's."""


@dataclass
class Check:
    """One check of one target: the step, λ after its update, p_now, the KL, and the verification."""

    step: int
    lam: float
    sensitivity: float
    kl: float
    similarity: float
    """the lowest similarity of the verification samples (at the best guidance scale)"""
    guidance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _num(x: float) -> float | None:
    """A float as JSON holds it: None where it is NaN or infinite (an optimisation that diverged)."""
    return float(x) if math.isfinite(x) else None


@dataclass
class Inversion:
    """The outcome for one target image."""

    index: int
    score: float
    """KL at success (a mean over dimensions); +inf if the inversion never succeeded"""
    success: bool
    steps: int
    """optimisation steps run (the step of success, or the budget)"""
    seconds: float
    """wall time from the start of its group until it finished"""
    kl: float
    """the KL when it stopped (the score at success)"""
    lam: float
    """λ when it stopped"""
    similarity: float
    """the lowest verification similarity at the last check (at the best guidance scale); nan if never checked"""
    best_similarity: float
    """the highest of those over all checks; nan if never checked"""
    similarities: list[float]
    """each verification sample's similarity at the last check"""
    guidance: float | None
    """the guidance scale of the last check's best verification"""
    samples: np.ndarray | None
    """the last check's verification samples, uint8 (n, H, W) or (n, H, W, C); None if never checked"""
    checks: list[Check] = field(default_factory=list)
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the score is null when the inversion never succeeded (JSON has no infinity)."""
        finite = self.success and math.isfinite(self.score)

        return {"index": self.index, "score": float(self.score) if finite else None, "success": self.success,
                "steps": self.steps, "seconds": round(self.seconds, 3), "kl": _num(self.kl), "lambda": _num(self.lam),
                "similarity": _num(self.similarity), "best_similarity": _num(self.best_similarity),
                "similarities": [_num(s) for s in self.similarities], "guidance": self.guidance,
                "checks": [c.to_dict() for c in self.checks]}


@dataclass
class Timing:
    """Where a run's time went: optimisation steps against verification (DDIM sampling + similarity)."""

    optimisation_seconds: float = 0.0
    verification_seconds: float = 0.0
    steps: int = 0
    """optimisation steps run, summed over groups"""
    checks: int = 0
    """verifications run, summed over groups"""

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


Progress = Callable[[dict[str, Any]], None]
"""Called after every step with ``{"index", "step", "max_steps", "lam", "loss", "best_similarity", "done",
"success"}`` for each target still running (and once more when it finishes)."""


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) as a mean over dimensions: ½ mean(μ² + σ² − log σ² − 1), over every axis but
    the first (one value per target)."""
    per = mu ** 2 + logvar.exp() - logvar - 1
    return 0.5 * per.flatten(1).mean(1)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂₀ = √(1/ᾱ) x_t − √(1/ᾱ − 1) ε, the official form; ``alpha_bar`` float64, broadcast over x_t's
    trailing axes, coefficients cast to x_t's dtype after the square root (as the official ``extract``)."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    a = alpha_bar.reshape(shape)
    return (1.0 / a).sqrt().to(x_t.dtype) * x_t - (1.0 / a - 1.0).sqrt().to(x_t.dtype) * eps


class LambdaSchedule:
    """λ of the adaptive weighting, with p_prev and the window of sensitivity losses, for one target."""

    def __init__(self, settings: InvMMSettings):
        self.s = settings
        self.lam = float(settings.lambda0)
        self.p_prev = math.inf
        self.losses: deque[float] = deque(maxlen=settings.window)

    @property
    def p_now(self) -> float:
        return sum(self.losses) / len(self.losses)

    def is_check(self, step: int) -> bool:
        return step > 0 and (step + 1) % self.s.check_every == 0

    def update(self, step: int, sensitivity: float) -> bool:
        """Record ``step``'s sensitivity loss and move λ; True when ``step`` is a check."""
        self.losses.append(float(sensitivity))
        if not self.is_check(step):
            self.lam += self.s.delta
            return False
        p_now = self.p_now
        if self.p_prev - p_now < self.s.xi:
            self.lam = max(self.lam / 2, 0.0)
        else:
            self.lam += self.s.delta
        self.p_prev = p_now
        return True


def _gumbel_weights(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Gumbel-softmax (soft) of ``logits`` with noise from ``generator``, as ``F.gumbel_softmax`` draws it."""
    gumbels = -torch.empty(logits.shape, device=logits.device, dtype=logits.dtype).exponential_(
        generator=generator).log()
    return torch.softmax((logits + gumbels) / tau, dim=-1)


def predicted_noise(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, condition: Any = None) -> torch.Tensor:
    """``model.predict_noise(x, t, condition)``, checked: a model that fails, predicts another shape, or
    predicts NaN or infinite noise from a finite ``x`` is a :class:`PluginError` naming it (NaN noise
    otherwise reads as "never reproduced", a verdict the model never gave)."""
    from forensics.errors import ForensicsError, PluginError

    name = getattr(model, "name", "") or type(model).__name__
    try:
        eps = model.predict_noise(x, t, condition)
    except ForensicsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own failure, said as one line naming it
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"diffusion model {name} failed to predict the noise: {type(exc).__name__}: {text}") \
            from exc
    if not torch.is_tensor(eps) or tuple(eps.shape) != tuple(x.shape):
        got = f"shape {tuple(eps.shape)}" if torch.is_tensor(eps) else f"a {type(eps).__name__}"
        raise PluginError(f"diffusion model {name} predicted noise of {got} for x_t of shape {tuple(x.shape)}: "
                          "the model is broken (its sample_shape does not match what it computes)")
    if not bool(torch.isfinite(eps).all()):
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > _RAN_OFF:  # fed what no model expects
            raise _diverged()
        raise PluginError(f"diffusion model {name} predicted NaN or infinite noise: it is broken, or overflows in its "
                          "precision (a float16 model: load it in float32 or bfloat16)")
    return eps


#: |x_t| beyond which the noisy images InvMM feeds the model mean its Gaussian ran off (a run keeps them near ±5)
_RAN_OFF = 1e4


def _diverged(step: int | None = None) -> Exception:
    from forensics.errors import UsageError

    at = f" at step {step}" if step is not None else ""
    return UsageError(f"InvMM diverged{at}: the Gaussian's μ or log σ² ran off, so its loss and samples are no "
                      "longer finite numbers; lower the learning rate (--set lr=)")


def ddim_sample(model: DiffusionModel, x_T: torch.Tensor, steps: int, *, condition: Any = None,
                null_condition: Any = None, guidance: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from ``x_T`` over ``model.ddim_timesteps(steps)``: images in [-1, 1]
    (decoded, clipped). x̂₀ is not clipped along the way; the last step goes to
    ``model.final_alpha_cumprod`` (1: the sample is x̂₀ at the last timestep, as the official DDPM code). With
    ``guidance`` ≠ 1, ε = ε_u + g (ε_c − ε_u) with ε_u from ``null_condition``."""
    ab = model.alphas_cumprod.to(device=x_T.device, dtype=torch.float64)
    ts = model.ddim_timesteps(steps)
    x = x_T
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        eps = predicted_noise(model, x, tt, condition)
        if guidance != 1.0:
            eps_u = predicted_noise(model, x, tt, null_condition)
            eps = eps_u + guidance * (eps - eps_u)
        eps = eps.to(x.dtype)
        x0 = x0_from_eps(x, eps, ab[tt])
        a_next = ab[int(ts[i + 1])] if i + 1 < len(ts) else \
            torch.tensor(float(model.final_alpha_cumprod), dtype=torch.float64, device=x.device)
        x = a_next.sqrt().to(x.dtype) * x0 + (1.0 - a_next).sqrt().to(x.dtype) * eps
    # the sample: x̂₀ at the last timestep when the walk ends at ᾱ = 1 (exactly, not through 1·x̂₀ + 0·ε)
    last = x0 if float(model.final_alpha_cumprod) == 1.0 else x
    return model.decode(last).clamp(-1.0, 1.0)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (n, C, H, W) → uint8 (n, H, W) for one channel, (n, H, W, C) otherwise."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


class _Target:
    """One target's state while its group runs."""

    def __init__(self, index: int, settings: InvMMSettings, seed: int, device: torch.device):
        self.index = index
        self.schedule = LambdaSchedule(settings)
        self.generator = torch.Generator(device=device).manual_seed(seed * SEED_STRIDE + index)
        self.checks: list[Check] = []
        self.done = False
        self.success = False
        self.steps = 0
        self.seconds = 0.0
        self.kl = math.nan
        self.last_similarities: list[float] = []
        self.last_guidance: float | None = None
        self.samples: np.ndarray | None = None
        self.best_similarity = -math.inf
        self.loss = math.nan
        self.mu: torch.Tensor | None = None  # the Gaussian at success (the group's tensors move on)
        self.logvar: torch.Tensor | None = None


def invert(model: DiffusionModel, images: torch.Tensor, *, similarity: CopySimilarity,
           settings: InvMMSettings | None = None, seed: int = 0, group: int | None = None,
           progress: Progress | None = None, autocast_dtype: torch.dtype | None = None,
           indices: Sequence[int] | None = None) -> tuple[list[Inversion], Timing]:
    """Invert ``model`` for each image; one :class:`Inversion` per image, in input order, and the timing.

    ``images``: float (N, *model.image_shape) in [-1, 1] at the model's resolution. ``similarity``: the
    copy similarity, β its threshold unless ``settings.threshold`` is set. ``group``: how many targets
    optimise together (default all). ``seed``: the run's seed; target i's randomness depends only on
    (seed, its index), so results do not depend on ``group``. ``autocast_dtype``: run the optimisation's network calls under
    ``torch.autocast`` at that dtype (bf16, on CUDA or the CPU); verification never autocasts, so success is
    judged on float32 samples. ``indices``: the targets' indices (default 0 … N-1),
    which seed them and label the results.
    """
    settings = settings or PRESETS["ddpm-cifar10"]
    check_images(images, model.image_shape, "target images")
    n_targets = images.shape[0]
    indices = list(range(n_targets)) if indices is None else [int(i) for i in indices]
    if len(indices) != n_targets:
        raise ValueError(f"{len(indices)} indices for {n_targets} images")
    if model.soft_prompt is None and any(g != 1.0 for g in settings.guidance):
        raise UsageError(f"guidance scales {list(settings.guidance)} need a text-conditioned model; "
                         f"{model.name or type(model).__name__} is unconditional (use guidance 1)")
    group = n_targets if group is None else int(group)
    if group < 1:
        raise ValueError(f"group must be at least 1, got {group}")
    threshold = similarity.threshold if settings.threshold is None else float(settings.threshold)
    timing = Timing()
    results: list[Inversion] = []
    for start in range(0, n_targets, group):
        chunk = slice(start, min(start + group, n_targets))
        results.extend(_invert_group(model, images[chunk].to(model.device), indices[chunk], similarity,
                                     threshold, settings, seed, progress, autocast_dtype, timing))
    return results, timing


def _invert_group(model, images, indices, similarity, threshold, settings, seed, progress, autocast_dtype,
                  timing):
    device = model.device
    t_start = time.perf_counter()
    with torch.no_grad():
        x0 = model.encode(images).float()
        targets01 = (images.float().clamp(-1, 1) + 1) / 2
    k = x0.shape[0]
    shape = tuple(x0.shape[1:])
    ab = model.alphas_cumprod.to(device=device, dtype=torch.float64)
    T = model.num_timesteps
    n = settings.noise_batch
    states = [_Target(i, settings, seed, device) for i in indices]

    mu = torch.zeros_like(x0, requires_grad=True)
    logvar = torch.zeros_like(x0, requires_grad=True)
    params = [mu, logvar]
    prompt = model.soft_prompt
    logits = None
    tau = None
    if prompt is not None:
        tau = float(settings.gumbel_tau or prompt.tau)
        logits = torch.zeros((k, prompt.length, prompt.vocab_size), device=device, requires_grad=True)
        params = [logits, mu, logvar]
    optimiser = torch.optim.Adam(params, lr=settings.lr)
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype is not None \
        else None

    def network(x, t, cond):
        if autocast is None:
            return predicted_noise(model, x, t, cond)
        with autocast():
            return predicted_noise(model, x, t, cond).float()

    for step in range(settings.max_steps):
        active = [j for j, s in enumerate(states) if not s.done]
        if not active:
            break
        t0 = time.perf_counter()
        rows = torch.as_tensor(active, device=device)
        eps = torch.stack([torch.randn((n, *shape), generator=states[j].generator, device=device) for j in active])
        ts = torch.stack([torch.randint(0, T, (n,), generator=states[j].generator, device=device) for j in active])
        std = logvar[rows].div(2).exp().unsqueeze(1)
        noise = eps * std + mu[rows].unsqueeze(1)                        # (a, n, *shape)
        x0a = x0[rows].unsqueeze(1).expand_as(noise)
        a_t = ab[ts].reshape(len(active), n, *([1] * len(shape)))
        x_t = a_t.sqrt().float() * x0a + (1 - a_t).sqrt().float() * noise
        cond = None
        if logits is not None:
            weights = torch.stack([_gumbel_weights(logits[j].expand(n, -1, -1), tau, states[j].generator)
                                   for j in active])
            cond = model.condition(weights.flatten(0, 1))
        flat_t = ts.flatten()
        eps_hat = network(x_t.flatten(0, 1), flat_t, cond).to(x_t.dtype)
        x0_hat = x0_from_eps(x_t.flatten(0, 1), eps_hat, ab[flat_t]).reshape(noise.shape)
        sensitivity = (x0_hat - x0a).pow(2).flatten(1).mean(1)           # (a,)
        kl = kl_normal(mu[rows], logvar[rows])                           # (a,)
        lams = torch.tensor([states[j].schedule.lam for j in active], device=device, dtype=kl.dtype)
        loss = (sensitivity + lams * kl).sum()
        if not bool(torch.isfinite(loss)):  # μ or log σ² ran off: every later step and check would be NaN, read as ∞
            raise _diverged(step + 1)
        optimiser.zero_grad(set_to_none=False)
        loss.backward()
        optimiser.step()
        timing.optimisation_seconds += time.perf_counter() - t0
        timing.steps += 1
        sens = sensitivity.detach().cpu().tolist()
        kls = kl.detach().cpu().tolist()
        checking = []
        for pos, j in enumerate(active):
            st = states[j]
            st.steps = step + 1
            st.loss = sens[pos] + st.schedule.lam * kls[pos]
            if st.schedule.update(step, sens[pos]):
                checking.append(j)
        if checking:
            t1 = time.perf_counter()
            _verify(model, states, checking, step, mu, logvar, logits, tau, targets01, similarity, threshold,
                    settings)
            timing.verification_seconds += time.perf_counter() - t1
            timing.checks += 1
        now = time.perf_counter() - t_start
        for j in active:
            st = states[j]
            if st.done or step + 1 == settings.max_steps:
                st.done = True
                st.seconds = now
            if progress is not None:
                progress({"index": st.index, "step": step + 1, "max_steps": settings.max_steps,
                          "lam": st.schedule.lam, "loss": st.loss,
                          "best_similarity": st.best_similarity if st.checks else None,
                          "done": st.done, "success": st.success})

    with torch.no_grad():
        final_kl = kl_normal(mu, logvar).cpu().tolist()
    out = []
    for j, st in enumerate(states):
        kl_at = st.kl if st.success else final_kl[j]
        last = st.checks[-1] if st.checks else None
        out.append(Inversion(
            index=st.index, score=st.kl if st.success else math.inf, success=st.success, steps=st.steps,
            seconds=st.seconds, kl=kl_at, lam=st.schedule.lam,
            similarity=last.similarity if last else math.nan,
            best_similarity=st.best_similarity if st.checks else math.nan,
            similarities=st.last_similarities, guidance=st.last_guidance, samples=st.samples, checks=st.checks,
            mu=st.mu if st.success else mu[j].detach().cpu().clone(),
            logvar=st.logvar if st.success else logvar[j].detach().cpu().clone()))
    return out


def _similarities(similarity: Any, samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The copy similarity of each sample to the target, checked: one number a sample, none NaN. A similarity
    plugin that fails, or answers otherwise (one score for eight samples would pass them all), is a
    :class:`PluginError` naming it, never a verdict."""
    from forensics.errors import ForensicsError, PluginError

    name = getattr(similarity, "name", "") or type(similarity).__name__
    try:
        sims = similarity(samples, target)
    except ForensicsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's own failure, said as one line naming it
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"copy similarity {name} failed: {type(exc).__name__}: {text}; fix or uninstall its "
                          "plugin, or choose another --similarity") from exc
    n = len(samples)
    nan = torch.is_tensor(sims) and bool(torch.isnan(sims.float()).any()) and bool(torch.isfinite(samples).all())
    if not torch.is_tensor(sims) or tuple(sims.shape) != (n,) or nan:  # (NaN samples: NaN, never a copy)
        got = f"shape {tuple(sims.shape)}" if torch.is_tensor(sims) else f"a {type(sims).__name__}"
        got += " with NaN" if nan else ""
        raise PluginError(f"copy similarity {name} gave {got} for {n} samples, not one number each: the "
                          "similarity is broken; fix or uninstall its plugin, or choose another --similarity")
    return sims.detach().float().cpu()


@torch.no_grad()
def _verify(model, states, checking, step, mu, logvar, logits, tau, targets01, similarity, threshold, settings):
    """Verify each target in ``checking`` after ``step``: its samples, similarities, and success."""
    v = settings.verify_samples
    for j in checking:
        st = states[j]
        x_T = torch.randn((v, *mu.shape[1:]), generator=st.generator, device=mu.device) \
            * logvar[j].div(2).exp() + mu[j]
        cond = null = None
        if logits is not None:
            weights = _gumbel_weights(logits[j].unsqueeze(0), tau, st.generator)  # one fresh prompt draw
            cond = model.condition(weights.expand(v, -1, -1))
            null = model.null_condition(v)
        best = None
        for g in settings.guidance:
            images = ddim_sample(model, x_T, settings.verify_steps, condition=cond, null_condition=null,
                                 guidance=float(g))
            sims = _similarities(similarity, (images.float() + 1) / 2, targets01[j])
            lowest = float(sims.min())
            if best is None or lowest > best[0]:
                best = (lowest, float(g), sims, images)
            if lowest >= threshold:
                break
        lowest, g, sims, images = best
        passed = lowest >= threshold
        kl = float(kl_normal(mu[j:j + 1], logvar[j:j + 1])[0])
        st.checks.append(Check(step=step + 1, lam=st.schedule.lam, sensitivity=st.schedule.p_now, kl=kl,
                               similarity=lowest, guidance=g, passed=passed))
        st.best_similarity = max(st.best_similarity, lowest)
        st.last_similarities = [float(s) for s in sims]
        st.last_guidance = g
        st.samples = _to_uint8(images)
        if passed:
            st.success = True
            st.done = True
            st.kl = kl
            st.mu = mu[j].detach().cpu().clone()
            st.logvar = logvar[j].detach().cpu().clone()
