"""InvMM's measure, part by part, against hand-worked values and exact toy models (ALGORITHMS.md §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forensics.inversion.measure import (
    PRESETS, InvMMSettings, LambdaSchedule, ddim_sample, invert, kl_normal, x0_from_eps,
)
from forensics.inversion.model import CopySimilarity, DiffusionModel, official_ddim_timesteps
from forensics.inversion.similarity import PixelCorrelation, SSCDSimilarity


def linear_ab(T=1000):
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)


class Memorizer(DiffusionModel):
    """The exact ε-predictor of a data distribution that is one point x*: ε(x_t, t) = (x_t − √ᾱ x*)/√(1−ᾱ).
    Every x̂₀ it predicts is x*, and DDIM from any noise lands on x*: a model that memorized x* perfectly."""

    def __init__(self, x_star: torch.Tensor):
        self.x_star = x_star
        self.alphas_cumprod = linear_ab()
        self.sample_shape = tuple(x_star.shape)
        self.image_shape = tuple(x_star.shape)
        self.name = "memorizer"
        self.net = torch.nn.Linear(2, 2)  # a frozen "network" whose weights must never move
        self.net.requires_grad_(False)
        self.calls = 0

    def predict_noise(self, x_t, t, condition=None):
        self.calls += 1
        a = self.alphas_cumprod[t].float().view(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - a.sqrt() * self.x_star) / (1 - a).sqrt()


class Threshold(CopySimilarity):
    """Pixel closeness: 1 − max |sample − target|; β 0.99."""

    name = "closeness"

    def __init__(self, threshold=0.99):
        self.threshold = threshold

    def __call__(self, samples, target):
        return 1 - (samples - target).abs().flatten(1).max(1).values


def images(*values, shape=(1, 4, 4)):
    return torch.stack([torch.full(shape, float(v)) for v in values])


SMALL = InvMMSettings(noise_batch=4, check_every=5, max_steps=30, verify_samples=3, verify_steps=10,
                      similarity="closeness")


# -- the parts ------------------------------------------------------------------------------------
def test_kl_is_the_mean_over_dimensions_of_the_closed_form():
    mu = torch.tensor([[1.0, 0.0, -2.0, 0.5]])
    logvar = torch.tensor([[0.0, math.log(4.0), 0.0, -1.0]])
    hand = 0.5 * np.mean([1 + 1 - 0 - 1, 0 + 4 - math.log(4) - 1, 4 + 1 - 0 - 1, 0.25 + math.exp(-1) + 1 - 1])
    assert kl_normal(mu, logvar).item() == pytest.approx(hand, rel=1e-6)
    # the same as torch's KL between the diagonal Gaussians, divided by the dimension
    q = torch.distributions.Normal(mu, (logvar / 2).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert kl_normal(mu, logvar).item() == pytest.approx(torch.distributions.kl_divergence(q, p).mean().item(),
                                                         rel=1e-6)
    assert kl_normal(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_lambda_schedule_on_a_scripted_loss_sequence():
    """C = 3, δ = 0.1, ξ = 0.5, window 2, λ₀ = 1; checks at steps 2, 5, 8 (step > 0, (step + 1) % C == 0)."""
    s = LambdaSchedule(InvMMSettings(check_every=3, delta=0.1, xi=0.5, window=2))
    losses = [5, 4, 3, 3, 3, 3, 3, 3, 2.9]
    lams, checks = [], []
    for step, loss in enumerate(losses):
        checks.append(s.update(step, loss))
        lams.append(s.lam)
    # step 2: p_now 3.5, p_prev +inf → +δ; step 5: p_now 3.0, drop 0.5 is not < ξ → +δ;
    # step 8: p_now 2.95, drop 0.05 < ξ → λ halves
    expected = [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 0.9]
    assert lams == pytest.approx(expected)
    assert checks == [False, False, True, False, False, True, False, False, True]
    assert s.p_prev == pytest.approx(2.95)


def test_lambda_never_goes_negative_and_step_zero_is_never_a_check():
    s = LambdaSchedule(InvMMSettings(check_every=2, delta=0.0, xi=10.0, lambda0=1.0))
    assert not s.update(0, 1.0)  # (0 + 1) % 1 ... step 0 is excluded whatever C is
    for step in range(1, 40):
        s.update(step, 1.0)
    assert 0.0 <= s.lam < 1e-5


def test_official_ddim_spacing():
    ts = official_ddim_timesteps(1000, 200)
    assert ts[0] == 999 and ts[-1] == 4 and len(ts) == 200 and all(a - b == 5 for a, b in zip(ts, ts[1:]))
    assert official_ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert official_ddim_timesteps(1000, 50)[-1] == 19  # linspace(-1, 999, 51)[1] = 19
    with pytest.raises(ValueError):
        official_ddim_timesteps(1000, 0)


def test_x0_from_eps_inverts_the_forward_process():
    ab = linear_ab()
    x0 = torch.randn(5, 1, 3, 3)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 200, 600, 999])
    a = ab[t].float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(x0_from_eps(x_t, eps, ab[t]), x0, atol=5e-4)


def test_ddim_of_a_perfect_memorizer_lands_on_its_image_from_any_noise():
    x_star = torch.rand(1, 4, 4) * 2 - 1
    model = Memorizer(x_star)
    out = ddim_sample(model, torch.randn(6, 1, 4, 4) * 3, 25)
    assert torch.allclose(out, x_star.clamp(-1, 1).expand_as(out), atol=1e-4)
    assert model.calls == 25  # one network evaluation per DDIM step


def test_ddim_matches_a_hand_written_loop():
    """An arbitrary ε-predictor: DDIM η=0 over the official spacing, the sample x̂₀ at t = 4, clipped."""

    class Tanh(Memorizer):
        def predict_noise(self, x_t, t, condition=None):
            return torch.tanh(x_t * 0.7 + t.float().view(-1, 1, 1, 1) / 1000)

    model = Tanh(torch.zeros(1, 2, 2))
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    ab = linear_ab()
    ts = list(range(999, 3, -5))
    x = x_T.clone()
    for i, t in enumerate(ts):
        eps = torch.tanh(x * 0.7 + t / 1000)
        a = ab[t].item()
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if i + 1 < len(ts):
            a_next = ab[ts[i + 1]].item()
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    assert torch.allclose(ddim_sample(model, x_T, 200), x0.clamp(-1, 1), atol=1e-4)


# -- the loop -------------------------------------------------------------------------------------
def test_a_memorized_image_succeeds_at_the_first_check_scoring_the_kl_then():
    x = images(0.3)
    model = Memorizer(x[0])
    events = []
    [res], timing = invert(model, x, similarity=Threshold(), settings=SMALL, seed=0, progress=events.append)
    assert res.success and res.steps == SMALL.check_every  # first check: step 4, after 5 steps
    assert len(res.checks) == 1 and res.checks[0].passed
    # the score is the KL of the Gaussian after the step that passed verification
    assert res.score == pytest.approx(kl_normal(res.mu[None], res.logvar[None]).item(), rel=1e-6)
    assert res.score == res.kl and res.score < 0.05
    assert res.similarity >= 0.99 and len(res.similarities) == SMALL.verify_samples
    assert res.samples.shape == (SMALL.verify_samples, 4, 4) and res.samples.dtype == np.uint8
    assert timing.steps == SMALL.check_every and timing.checks == 1
    assert events[-1]["done"] and events[-1]["success"] and events[-1]["step"] == SMALL.check_every


def test_the_first_step_loss_is_the_hand_worked_sensitivity_plus_lambda_times_kl():
    """For the memorizer x̂₀ ≡ x*, so the sensitivity loss is mean((x* − x₀)²) whatever the noise; at step 0,
    μ = log σ² = 0 and the KL is 0, so the loss is exactly that."""
    target = images(0.5)
    model = Memorizer(torch.full((1, 4, 4), -0.25))
    events = []
    invert(model, target, similarity=Threshold(), settings=SMALL.replace(max_steps=1), progress=events.append)
    assert events[0]["loss"] == pytest.approx(0.75 ** 2, rel=1e-5)
    assert events[0]["lam"] == pytest.approx(1 + SMALL.delta)


def test_never_copied_scores_infinity_and_null_in_json():
    x = images(0.8)
    model = Memorizer(torch.full((1, 4, 4), -0.8))  # memorized another image
    [res], timing = invert(model, x, similarity=Threshold(), settings=SMALL, seed=0)
    assert not res.success and res.score == math.inf and res.steps == SMALL.max_steps
    assert len(res.checks) == SMALL.max_steps // SMALL.check_every
    d = res.to_dict()
    assert d["score"] is None and d["success"] is False and math.isfinite(d["kl"])
    assert timing.checks == len(res.checks)


def test_only_mu_and_logvar_are_optimised_and_the_model_stays_frozen():
    x = images(0.1)
    model = Memorizer(torch.full((1, 4, 4), 0.4))
    before = [p.clone() for p in model.net.parameters()]
    [res], _ = invert(model, x, similarity=Threshold(), settings=SMALL.replace(max_steps=12))
    assert all(torch.equal(a, b) for a, b in zip(before, model.net.parameters()))
    assert all(p.grad is None for p in model.net.parameters())
    assert res.mu.shape == (1, 4, 4) and res.logvar.shape == (1, 4, 4)
    assert float(res.mu.abs().sum()) > 0 and float(res.logvar.abs().sum()) > 0  # both moved


def test_gradients_reach_mu_and_logvar_through_the_reparameterisation():
    """One step with lr small: μ moves against d(sensitivity)/dμ, which for the memorizer is 0 (x̂₀ ≡ x*)
    while the KL's gradient at μ = 0 is 0 too; with a non-memorizer the sensitivity pulls μ."""

    class Zero(Memorizer):
        def predict_noise(self, x_t, t, condition=None):
            return torch.zeros_like(x_t)  # x̂₀ = x_t/√ᾱ = x₀ + √((1−ᾱ)/ᾱ)·n: the loss grows with |n|

    model = Zero(torch.zeros(1, 4, 4))
    [res], _ = invert(model, images(0.0), similarity=Threshold(),
                      settings=SMALL.replace(max_steps=40, lr=0.05, check_every=1000))
    assert float(res.logvar.mean()) < -0.1  # the noise shrinks: the only way to lower this loss


def test_seeded_rerun_gives_the_same_result_and_grouping_does_not_change_it():
    xs = images(0.2, -0.4, 0.6)
    model = Memorizer(torch.full((1, 4, 4), 0.2))
    settings = SMALL.replace(max_steps=20)
    a, _ = invert(model, xs, similarity=Threshold(), settings=settings, seed=7)
    b, _ = invert(model, xs, similarity=Threshold(), settings=settings, seed=7)
    alone = [invert(model, xs[i:i + 1], similarity=Threshold(), settings=settings, seed=7, indices=[i])[0][0]
             for i in range(3)]
    grouped, _ = invert(model, xs, similarity=Threshold(), settings=settings, seed=7, group=2)
    for r in (b, alone, grouped):
        for x, y in zip(a, r):
            assert (x.success, x.steps) == (y.success, y.steps)
            assert x.score == y.score or abs(x.score - y.score) < 1e-6
            assert torch.allclose(x.mu, y.mu, atol=1e-6) and torch.allclose(x.logvar, y.logvar, atol=1e-6)
    assert [r.success for r in a] == [True, False, False]
    c, _ = invert(model, xs, similarity=Threshold(), settings=settings, seed=8)
    assert not torch.equal(a[1].mu, c[1].mu)


def test_settings_are_checked_and_presets_are_the_papers():
    with pytest.raises(ValueError, match="noise_batch"):
        InvMMSettings(noise_batch=0)
    with pytest.raises(ValueError, match="unknown InvMM setting"):
        PRESETS["mnist"].replace(steps=3)
    p = PRESETS
    assert (p["ddpm-cifar10"].noise_batch, p["ddpm-cifar10"].check_every, p["ddpm-cifar10"].delta,
            p["ddpm-cifar10"].verify_steps) == (32, 50, 1e-4, 200)
    assert (p["ldm-faces"].noise_batch, p["ldm-faces"].check_every, p["ldm-faces"].delta,
            p["ldm-faces"].verify_steps) == (16, 10, 5e-4, 50)
    for sd in ("sd-v1", "sd-v2"):
        assert (p[sd].noise_batch, p[sd].check_every, p[sd].delta, p[sd].verify_steps) == (16, 50, 1e-3, 50)
        assert p[sd].guidance == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    for name in ("ddpm-cifar10", "ldm-faces", "sd-v1", "sd-v2"):
        s = p[name]
        assert (s.lr, s.max_steps, s.xi, s.verify_samples, s.lambda0, s.window) == (0.1, 2000, 1e-3, 8, 1.0, 100)
    # the MNIST preset: the DDPM settings at the budget measured to separate (docs/invmm.md)
    m = p["mnist"]
    assert (m.lr, m.max_steps, m.noise_batch, m.check_every, m.delta, m.xi, m.verify_samples, m.verify_steps,
            m.similarity) == (0.1, 1000, 8, 50, 1e-4, 1e-3, 8, 50, "pixel-correlation")


def test_guidance_needs_a_conditional_model():
    from forensics.errors import UsageError

    with pytest.raises(UsageError, match="text-conditioned"):
        invert(Memorizer(torch.zeros(1, 4, 4)), images(0.0), similarity=Threshold(),
               settings=SMALL.replace(guidance=(1.0, 3.0)))


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="shape"):
        invert(Memorizer(torch.zeros(1, 4, 4)), torch.zeros(2, 1, 5, 5), similarity=Threshold(), settings=SMALL)


# -- the similarities -----------------------------------------------------------------------------
def test_pixel_correlation_is_pearson_and_zero_for_a_constant_image():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 6, 6, generator=g)
    samples = torch.stack([target, 1 - target, torch.rand(1, 6, 6, generator=g), torch.full((1, 6, 6), 0.3)])
    sims = PixelCorrelation()(samples, target)
    ref = [np.corrcoef(s.flatten().numpy(), target.flatten().numpy())[0, 1] for s in samples[:3]]
    assert sims[:3].tolist() == pytest.approx(ref, abs=1e-6)
    assert sims[3].item() == 0.0 and PixelCorrelation().threshold == 0.985


def test_sscd_from_a_torchscript_file(tmp_path):
    class Descriptor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3 * 8 * 8, 5)

        def forward(self, x):
            return torch.nn.functional.normalize(self.proj(x.flatten(1)), dim=1)

    torch.manual_seed(0)
    module = Descriptor().eval()
    path = tmp_path / "sscd.torchscript.pt"
    torch.jit.script(module).save(str(path))
    sim = SSCDSimilarity(path)
    assert sim.threshold == 0.5
    target = torch.rand(1, 8, 8)
    samples = torch.stack([target, torch.rand(1, 8, 8)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        f = module((torch.cat([target[None], samples]).expand(-1, 3, -1, -1) - mean) / std)
    assert sim(samples, target).tolist() == pytest.approx((f[1:] @ f[0]).tolist(), abs=1e-6)
    assert sim(samples, target)[0].item() == pytest.approx(1.0, abs=1e-6)


def test_sscd_without_its_file_says_what_to_pass(tmp_path, monkeypatch):
    from forensics.errors import UsageError

    monkeypatch.delenv("FORENSICS_SSCD", raising=False)
    with pytest.raises(UsageError, match="--similarity-file"):
        SSCDSimilarity()
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(UsageError, match="not a TorchScript"):
        SSCDSimilarity(bad)


# -- the contract, on the bundled zoo network and a third party's model -----------------------------------
from forensics.testing import DiffusionModelContract, check_diffusion_model  # noqa: E402


class TestZooNetwork(DiffusionModelContract):
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        from forensics.plugins import PluginHost

        return PluginHost(autoload=False).get("diffusion_models", "mnist-ddpm").obj(device="cpu")


def test_the_contract_catches_an_unfrozen_model_and_a_rising_schedule():
    model = Memorizer(torch.zeros(1, 4, 4))
    check_diffusion_model(model)

    class Unfrozen(Memorizer):
        def __init__(self, x):
            super().__init__(x)
            self.scale = torch.nn.Parameter(torch.ones(()))

        def predict_noise(self, x_t, t, condition=None):
            return super().predict_noise(x_t, t) * self.scale

    with pytest.raises(AssertionError, match="freeze"):
        check_diffusion_model(Unfrozen(torch.zeros(1, 4, 4)))
    rising = Memorizer(torch.zeros(1, 4, 4))
    rising.alphas_cumprod = rising.alphas_cumprod.flip(0)
    with pytest.raises(AssertionError, match="increase"):
        check_diffusion_model(rising)


def test_a_check_of_a_diverged_optimisation_is_json_with_nulls():
    import json

    from forensics.inversion.measure import Check

    doc = Check(step=50, lam=float("nan"), sensitivity=float("inf"), kl=float("nan"), similarity=0.2, guidance=1.0,
                passed=False).to_dict()
    assert doc == {"step": 50, "lam": None, "sensitivity": None, "kl": None, "similarity": 0.2, "guidance": 1.0,
                   "passed": False}
    json.dumps(doc, allow_nan=False)
