"""Diffusion schedules and samplers over a generic noise-prediction callable.

Every sampler takes ``eps_fn(x, t) -> eps`` where ``x`` is a float tensor (N, C, H, W) and ``t`` a
long tensor (N,) of integer training timesteps in 0..T-1, plus a :class:`Schedule`. Nothing here
knows about a particular network, so InvMM (and anything else) can reuse the samplers.

Samplers:
- :func:`ddpm_ancestral` — DDPM ancestral sampling (posterior variance, "fixed small"), on all T
  steps or on an evenly respaced subsequence (Nichol & Dhariwal respacing).
- :func:`ddim` — DDIM (Song et al.) with ``eta`` (0 = deterministic given the starting noise).
- :func:`pndm` — PNDM's pseudo linear multistep method: 4th-order Adams–Bashforth on eps with the
  DDIM transfer, warm-started by three pseudo Runge–Kutta steps (F-PNDM, as diffusers' scheduler
  does by default) or by one pseudo improved-Euler step (LDM's PLMS sampler).

All samplers are deterministic for a given ``seed`` (CPU ``torch.Generator``) and the same thread
settings; ``x_T`` may be passed instead of drawing it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """Discrete variance schedule; ``alphas_cumprod[t]`` is ᾱ_t for t = 0..T-1."""

    betas: np.ndarray

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas.astype(np.float64))

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        return cls(np.linspace(beta_start, beta_end, T, dtype=np.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> Schedule:
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
        ac = f / f[0]
        return cls(np.clip(1 - ac[1:] / ac[:-1], 0, 0.999))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float32)[t].view(-1, *([1] * (x0.dim() - 1)))
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise


def timesteps(T: int, steps: int | None) -> list[int]:
    """Descending timesteps: all of T-1..0, or ``steps`` evenly spaced ones from T-1 down to 0."""
    if steps is None or steps >= T:
        return list(range(T - 1, -1, -1))
    ts = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(np.int64))
    return [int(t) for t in ts[::-1]]


def _walk(schedule: Schedule, steps: int | None):
    """The sampling steps: (t, t_prev, ᾱ_t, ᾱ_prev) along :func:`timesteps`, with ``t_prev`` None and
    ᾱ_prev = 1 on the last step (to x_0)."""
    ac = schedule.alphas_cumprod
    ts = timesteps(schedule.T, steps)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        yield t, t_prev, float(ac[t]), float(ac[t_prev]) if t_prev is not None else 1.0


def _x0_from_eps(x, eps, a_t):
    return (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5


def _eps_from_x0(x, x0, a_t):
    return (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5


def _start(shape, seed, x_T, generator):
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    x = torch.randn(shape, generator=g) if x_T is None else x_T.clone().float()
    return x, g


def _call(eps_fn, x, t):
    return eps_fn(x, torch.full((x.shape[0],), int(t), dtype=torch.long))


def _predict(eps_fn, x, t, a_t, clip):
    eps = _call(eps_fn, x, t)
    x0 = _x0_from_eps(x, eps, a_t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = _eps_from_x0(x, x0, a_t)
    return eps, x0


@torch.no_grad()
def ddpm_ancestral(eps_fn: EpsFn, schedule: Schedule, shape, seed: int = 0, steps: int | None = None,
                   clip: bool = True, x_T: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ancestral sampling, x_T -> x_0 (posterior variance β̃; no noise on the last step)."""
    x, g = _start(shape, seed, x_T, generator)
    for t, t_prev, a_t, a_prev in _walk(schedule, steps):
        beta = 1.0 - a_t / a_prev
        _, x0 = _predict(eps_fn, x, t, a_t, clip)
        mean = (a_prev ** 0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
        if t_prev is not None:
            var = beta * (1 - a_prev) / (1 - a_t)
            x = mean + var ** 0.5 * torch.randn(shape, generator=g)
        else:
            x = mean
    return x


@torch.no_grad()
def ddim(eps_fn: EpsFn, schedule: Schedule, shape, seed: int = 0, steps: int = 50, eta: float = 0.0,
         clip: bool = True, x_T: torch.Tensor | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM sampling; with ``eta=0`` the map x_T -> x_0 is deterministic."""
    x, g = _start(shape, seed, x_T, generator)
    for t, t_prev, a_t, a_prev in _walk(schedule, steps):
        eps, x0 = _predict(eps_fn, x, t, a_t, clip)
        sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
        x = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0 and t_prev is not None:
            x = x + sigma * torch.randn(shape, generator=g)
    return x


def _transfer(x, eps, a_t, a_prev, clip):
    """PNDM's transfer φ (its eq. 9), which is the deterministic DDIM step from ᾱ_t to ᾱ_prev."""
    x0 = _x0_from_eps(x, eps, a_t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = _eps_from_x0(x, x0, a_t)
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


PNDM_WARMUPS = ("prk", "euler")


@torch.no_grad()
def pndm(eps_fn: EpsFn, schedule: Schedule, shape, seed: int = 0, steps: int = 50, clip: bool = True,
         x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
         warmup: str = "prk") -> torch.Tensor:
    """PNDM (Liu et al. 2022): 4th-order pseudo linear multistep on eps with the transfer φ.

    The multistep formula needs three earlier eps values. ``warmup="prk"`` (F-PNDM, the paper's
    method and diffusers' ``PNDMScheduler`` default) makes the first three steps pseudo Runge–Kutta
    steps of four evaluations each, through the half-way timestep, so ``steps + 9`` evaluations in all.
    ``warmup="euler"`` starts with one pseudo improved-Euler step and raises the order one step at a
    time (LDM's PLMS sampler; ``steps + 1`` evaluations).
    """
    if warmup not in PNDM_WARMUPS:
        raise ValueError(f"unknown PNDM warm-up {warmup!r}; use one of {', '.join(PNDM_WARMUPS)}")
    x, _ = _start(shape, seed, x_T, generator)
    hist: list[torch.Tensor] = []  # the eps evaluated at the start of each earlier step, newest last
    for t, t_prev, a_t, a_prev in _walk(schedule, steps):
        e = _call(eps_fn, x, t)
        if warmup == "prk" and len(hist) < 3 and t_prev is not None:
            # pseudo RK4: the stages use φ from x_t, with the midpoint as the half step
            t_mid = (t + t_prev) // 2
            a_mid = float(schedule.alphas_cumprod[t_mid])
            e2 = _call(eps_fn, _transfer(x, e, a_t, a_mid, clip), t_mid)
            e3 = _call(eps_fn, _transfer(x, e2, a_t, a_mid, clip), t_mid)
            e4 = _call(eps_fn, _transfer(x, e3, a_t, a_prev, clip), t_prev)
            e_p = (e + 2 * e2 + 2 * e3 + e4) / 6
        elif not hist:
            if t_prev is None:
                e_p = e
            else:  # pseudo improved Euler (one extra evaluation)
                e_p = (e + _call(eps_fn, _transfer(x, e, a_t, a_prev, clip), t_prev)) / 2
        elif len(hist) == 1:
            e_p = (3 * e - hist[-1]) / 2
        elif len(hist) == 2:
            e_p = (23 * e - 16 * hist[-1] + 5 * hist[-2]) / 12
        else:
            e_p = (55 * e - 59 * hist[-1] + 37 * hist[-2] - 9 * hist[-3]) / 24
        hist = (hist + [e])[-3:]
        x = _transfer(x, e_p, a_t, a_prev, clip)
    return x


SAMPLERS = {"ddpm": ddpm_ancestral, "ddim": ddim, "pndm": pndm}
