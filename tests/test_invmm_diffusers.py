"""The diffusers adapter for InvMM (plugins/forensics_diffusers), on tiny randomly initialised models built from
configs and saved with ``save_pretrained`` into a temporary folder: nothing is downloaded.

Properties: ᾱ_t and the DDIM timesteps are the scheduler's own; ε_θ is the UNet's (v-prediction converted as
diffusers converts it); the measure's DDIM verification walks the same chain as the diffusers pipeline; the
soft prompt's condition is differentiable and, with one-hot weights, is the text encoder's states for those
tokens; the empty prompt is the pipeline's; encode/decode are the autoencoder's; bad folders and schedules are
refused in one line."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

import diffusers
import forensics_diffusers as fd
import transformers

from forensics.errors import UsageError
from forensics.extras import MissingExtra
from forensics.inversion.model import SoftPrompt, official_ddim_timesteps

T_PIXEL = 100  # a short schedule keeps the pixel model's tests quick


def _pixel_unet(**overrides) -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
               norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D"))
    cfg.update(overrides)
    return diffusers.UNet2DModel(**cfg)


def _tokenizer() -> transformers.CLIPTokenizer:
    """A byte-level CLIP tokenizer over the 256 byte symbols (and their word-final forms), no merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _sd_parts(scheduler=None):
    tokenizer = _tokenizer()
    torch.manual_seed(1)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16)
    # Stable Diffusion v1's published scheduler: PNDM, scaled-linear β, set_alpha_to_one false, steps_offset 1
    scheduler = scheduler or diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler)


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T_PIXEL, clip_sample=False)
    diffusers.DDPMPipeline(unet=_pixel_unet(), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    pipe = diffusers.StableDiffusionPipeline(**_sd_parts(), safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(folder)
    # as the published v1 configs: PNDM has no clip_sample, but the file says false, which DDIM reads
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "clip_sample": False}))
    return folder


@pytest.fixture(scope="module")
def sd(sd_dir):
    return fd.load_diffusers(sd_dir)


def _one_line_usage(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# -- the pixel-space UNet ------------------------------------------------------------------------------------

def test_pixel_pipeline_schedule_and_timesteps_are_the_schedulers(pixel_dir):
    model = fd.load_diffusers(pixel_dir)
    assert type(model) is fd.DiffusersUNetModel
    scheduler = diffusers.DDPMScheduler.from_pretrained(pixel_dir, subfolder="scheduler", local_files_only=True)
    assert model.alphas_cumprod.dtype == torch.float64
    assert torch.equal(model.alphas_cumprod, scheduler.alphas_cumprod.double())
    assert model.sample_shape == model.image_shape == (3, 8, 8)
    for steps in (1, 7, 10, 50):
        ddim = diffusers.DDIMScheduler.from_config(scheduler.config)
        ddim.set_timesteps(steps)
        assert model.ddim_timesteps(steps) == ddim.timesteps.tolist()
    official = fd.load_diffusers(pixel_dir, timesteps="official")
    assert official.ddim_timesteps(10) == official_ddim_timesteps(T_PIXEL, 10)
    assert model.describe()["timesteps_from"] == "scheduler" and model.describe()["final_alpha_cumprod"] == 1.0


def test_pixel_predict_noise_is_the_unets_and_the_model_is_frozen(pixel_dir):
    model = fd.load_diffusers(pixel_dir)
    assert not any(p.requires_grad for p in model.unet.parameters()) and not model.unet.training
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g, requires_grad=True)
    t = torch.tensor([0, 41, T_PIXEL - 1])
    eps = model.predict_noise(x, t)
    with torch.no_grad():
        assert torch.equal(eps.detach(), model.unet(x, t).sample)
    eps.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(model.encode(x.detach()), x.detach()) and torch.equal(model.decode(x.detach()), x.detach())


def test_verification_walks_the_pipelines_ddim_chain(pixel_dir):
    """The measure's DDIM (over the adapter's timesteps and ᾱ) gives what diffusers' own DDIMScheduler.step loop
    gives, when the pipeline's last step lands on x̂₀ (set_alpha_to_one) and x̂₀ is not clipped on the way."""
    from forensics.inversion.measure import ddim_sample

    model = fd.load_diffusers(pixel_dir)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    steps = 10
    scheduler = diffusers.DDIMScheduler.from_config(model.scheduler_config)
    assert scheduler.config.set_alpha_to_one and not scheduler.config.clip_sample
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model.unet(x, t).sample, t, x, eta=0.0).prev_sample
        ours = ddim_sample(model, x_T, steps)
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=2e-5, rtol=1e-5)


def test_v_prediction_is_converted_to_epsilon_as_diffusers_does():
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T_PIXEL, prediction_type="v_prediction",
                                        clip_sample=False)
    model = fd.DiffusersUNetModel(_pixel_unet(), scheduler)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler.set_timesteps(10)
    with torch.no_grad():
        for step in (0, 37, T_PIXEL - 1):
            t = torch.full((2,), step)
            eps = model.predict_noise(x, t)
            a = model.alphas_cumprod[step].float()
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            expected = scheduler.step(model.unet(x, t).sample, step, x).pred_original_sample
            torch.testing.assert_close(x0, expected, atol=1e-5, rtol=1e-5)


def test_refused_schedules_and_unets():
    with pytest.raises(UsageError) as excinfo:
        fd.DiffusersUNetModel(_pixel_unet(), diffusers.DDPMScheduler(num_train_timesteps=10, prediction_type="sample"))
    _one_line_usage(excinfo, "prediction_type", "'sample'", "epsilon")
    with pytest.raises(UsageError) as excinfo:
        fd.DiffusersUNetModel(_pixel_unet(), diffusers.FlowMatchEulerDiscreteScheduler())
    _one_line_usage(excinfo, "alphas_cumprod")
    with pytest.raises(UsageError) as excinfo:
        fd.DiffusersUNetModel(_pixel_unet(), diffusers.DDIMScheduler(num_train_timesteps=10,
                                                                      rescale_betas_zero_snr=True))
    _one_line_usage(excinfo, "zero terminal SNR")
    with pytest.raises(UsageError) as excinfo:
        fd.DiffusersUNetModel(_pixel_unet(out_channels=1), diffusers.DDPMScheduler(num_train_timesteps=10))
    _one_line_usage(excinfo, "output channels")


# -- latent models ---------------------------------------------------------------------------------------------

def test_ldm_pipeline_with_a_vq_autoencoder(tmp_path):
    torch.manual_seed(2)
    vq = diffusers.VQModel(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=3,
                           norm_num_groups=8, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, num_vq_embeddings=16, vq_embed_dim=3,
                           sample_size=16, scaling_factor=0.5)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T_PIXEL, clip_sample=False)
    diffusers.LDMPipeline(vqvae=vq, unet=_pixel_unet(), scheduler=scheduler).save_pretrained(tmp_path)
    model = fd.load_diffusers(tmp_path)
    assert type(model) is fd.DiffusersLatentModel
    assert model.sample_shape == (3, 8, 8) and model.image_shape == (3, 16, 16)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = model.encode(images)
        torch.testing.assert_close(z, model.vae.encode(images).latents * 0.5)
        torch.testing.assert_close(model.decode(z), model.vae.decode(z / 0.5).sample)
    assert model.decode(z).shape == images.shape


def test_stable_diffusion_encode_decode_are_the_autoencoders(sd):
    assert type(sd) is fd.StableDiffusionModel
    assert sd.sample_shape == (4, 8, 8) and sd.image_shape == (3, 16, 16)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    factor = sd.vae.config.scaling_factor
    with torch.no_grad():
        z = sd.encode(images)
        torch.testing.assert_close(z, sd.vae.encode(images).latent_dist.mode() * factor)
        torch.testing.assert_close(sd.decode(z), sd.vae.decode(z / factor).sample)
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\)"):
        sd.encode(torch.zeros(1, 3, 8, 8))


# -- Stable Diffusion's soft prompt --------------------------------------------------------------------------

def test_stable_diffusion_schedule_is_its_schedulers(sd, sd_dir):
    pndm = diffusers.PNDMScheduler.from_pretrained(sd_dir, subfolder="scheduler", local_files_only=True)
    assert torch.equal(sd.alphas_cumprod, pndm.alphas_cumprod.double())
    ddim = diffusers.DDIMScheduler.from_config(pndm.config)
    ddim.set_timesteps(50)
    assert sd.ddim_timesteps(50) == ddim.timesteps.tolist()
    assert not sd.clip_sample
    assert sd.ddim_timesteps(50)[-1] == 1  # steps_offset 1, as LDM's "uniform" DDIM: 981, 961, …, 1
    # the published config's last DDIM step lands on ᾱ_0, not on x̂₀ (recorded for reports)
    assert sd.final_alpha_cumprod == pytest.approx(float(pndm.alphas_cumprod[0]))


def test_verification_ends_where_the_pipelines_last_step_does_at_alpha_0(sd):
    """With Stable Diffusion's set_alpha_to_one = false, the pipeline's last DDIM step returns
    √ᾱ_0·x̂₀ + √(1−ᾱ_0)·ε̂ (as the official LDM sampler, whose last ᾱ_prev is ᾱ_0); the measure verifies on that
    same latent, decoded."""
    from forensics.inversion.measure import ddim_sample

    steps, cond = 5, sd.null_condition(2)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(10))
    scheduler = diffusers.DDIMScheduler.from_config(sd.scheduler_config)
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = sd.unet(x, t, encoder_hidden_states=cond).sample
            out = scheduler.step(eps, t, x, eta=0.0)
            x = out.prev_sample
        a0 = sd.final_alpha_cumprod
        torch.testing.assert_close(x, a0 ** 0.5 * out.pred_original_sample + (1 - a0) ** 0.5 * eps)
        ours = ddim_sample(sd, x_T, steps, condition=cond)
        torch.testing.assert_close(ours, sd.decode(x).clamp(-1, 1), atol=2e-5, rtol=1e-5)


def test_soft_prompt_and_the_empty_prompt_are_the_pipelines(sd, sd_dir):
    assert sd.soft_prompt == SoftPrompt(length=75, vocab_size=len(sd.tokenizer), tau=2.0)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, local_files_only=True)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("", "cpu", 1, False)
    null = sd.null_condition(3)
    assert null.shape == (3, 77, 32)
    torch.testing.assert_close(null, expected.expand(3, -1, -1))


def test_condition_with_one_hot_weights_is_the_text_encoders_states(sd):
    vocab, length = sd.soft_prompt.vocab_size, sd.soft_prompt.length
    ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(5))
    weights = torch.nn.functional.one_hot(ids, vocab).float()
    empty = sd.prompt_ids[0]
    full = torch.cat([empty[:1].expand(2, 1), ids, empty[-1:].expand(2, 1)], dim=1)
    with torch.no_grad():
        got = sd.condition(weights)
        expected = sd.text_encoder(full)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not sd.token_embedding._forward_hooks  # the injection hook is removed again


def test_condition_is_differentiable_in_the_token_weights(sd):
    logits = torch.randn(2, sd.soft_prompt.length, sd.soft_prompt.vocab_size,
                         generator=torch.Generator().manual_seed(6), requires_grad=True)
    states = sd.condition(torch.softmax(logits, dim=-1))
    assert states.shape == (2, 77, 32)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    sd.predict_noise(x, torch.tensor([10, 900]), states).square().mean().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in sd.text_encoder.parameters())
    with pytest.raises(ValueError, match="token weights"):
        sd.condition(torch.zeros(2, 5, sd.soft_prompt.vocab_size))


def test_stable_diffusion_predict_noise_is_the_unets(sd):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([3, 999])
    cond = sd.null_condition(2)
    with torch.no_grad():
        torch.testing.assert_close(sd.predict_noise(x, t, cond), sd.unet(x, t, encoder_hidden_states=cond).sample)
    with pytest.raises(ValueError, match="condition"):
        sd.predict_noise(x, t)


def test_guided_verification_on_each_device_matches_the_cpu(sd, sd_dir, torch_device):
    """Everything the measure touches (ᾱ indexing, the prompt's token ids, the soft prompt's table, the
    autoencoder) follows the model onto its device."""
    from forensics.inversion.measure import ddim_sample

    model = sd if torch_device == "cpu" else fd.load_diffusers(sd_dir, device=torch_device)
    assert model.alphas_cumprod.device.type == torch.device(torch_device).type
    weights = torch.softmax(torch.randn(2, 75, model.soft_prompt.vocab_size,
                                        generator=torch.Generator().manual_seed(11)), dim=-1)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        got = ddim_sample(model, x_T.to(torch_device), 4, condition=model.condition(weights.to(torch_device)),
                          null_condition=model.null_condition(2), guidance=3.0)
        expected = ddim_sample(sd, x_T, 4, condition=sd.condition(weights), null_condition=sd.null_condition(2),
                               guidance=3.0)
    assert got.shape == (2, 3, 16, 16) and got.abs().max() <= 1
    torch.testing.assert_close(got.cpu(), expected, atol=1e-3, rtol=1e-3)


# -- loading and the plugin host -------------------------------------------------------------------------------

def test_accepts_recognises_diffusers_folders(pixel_dir, sd_dir, tmp_path):
    assert fd.accepts(pixel_dir) and fd.accepts(str(sd_dir))
    unet_only = tmp_path / "unet"
    _pixel_unet().save_pretrained(unet_only)
    assert not fd.accepts(unet_only)  # no scheduler config yet
    diffusers.DDPMScheduler(num_train_timesteps=T_PIXEL).save_pretrained(unet_only)
    assert fd.accepts(unet_only)
    assert type(fd.load_diffusers(unet_only)) is fd.DiffusersUNetModel
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "ViTModel"}))
    (other / "scheduler_config.json").write_text("{}")
    assert not fd.accepts(other)
    assert not fd.accepts(pixel_dir / "model_index.json") and not fd.accepts(tmp_path / "missing")
    assert not fd.accepts(None)


def test_loader_refusals_are_one_line(tmp_path, pixel_dir, monkeypatch):
    with pytest.raises(UsageError) as excinfo:
        fd.load()
    _one_line_usage(excinfo, "path")
    with pytest.raises(UsageError) as excinfo:
        fd.load(path=pixel_dir, scale=2)
    _one_line_usage(excinfo, "scale")
    with pytest.raises(UsageError) as excinfo:
        fd.load(path=pixel_dir, dtype="float8")
    _one_line_usage(excinfo, "dtype")
    with pytest.raises(UsageError) as excinfo:
        fd.load_diffusers(tmp_path / "missing")
    _one_line_usage(excinfo, "not a folder")
    damaged = tmp_path / "damaged"
    shutil.copytree(pixel_dir, damaged)
    for weights in (damaged / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    with pytest.raises(UsageError) as excinfo:
        fd.load_diffusers(damaged)
    _one_line_usage(excinfo, "UNet2DModel", "unet")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(UsageError) as excinfo:
        fd.load_diffusers(tmp_path)
    _one_line_usage(excinfo, "StableDiffusionXLPipeline", "StableDiffusionPipeline")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingExtra) as excinfo:  # a failed run (exit 1), as every missing extra
        fd.load(path=pixel_dir)
    _one_line_usage(excinfo, "pip install 'forensics-attribution[diffusers]'")


def test_the_plugin_registers_its_loader_with_the_host(pixel_dir):
    from forensics import plugins

    host = plugins.PluginHost(autoload=False, entry_points=False)
    host.add(fd, "diffusers")
    provided = host.get("diffusion_models", "diffusers")
    assert provided.obj.accepts(pixel_dir) and not provided.obj.accepts(pixel_dir / "scheduler")
    model = provided.obj(path=str(pixel_dir), device="cpu", dtype="float32")
    assert model.describe()["class"] == "DiffusersUNetModel" and model.name == str(pixel_dir)


# -- InvMM end to end ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_invmm_runs_on_a_tiny_stable_diffusion(sd):
    """A few optimisation steps and two checks through the measure: soft prompt and noise move, the network does
    not, and the run is reproducible for a seed."""
    from forensics.inversion.measure import InvMMSettings, invert
    from forensics.inversion.similarity import PixelCorrelation

    settings = InvMMSettings(noise_batch=2, check_every=2, max_steps=4, verify_samples=2, verify_steps=3,
                             guidance=(1.0, 3.0), similarity="pixel-correlation")
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    before = [p.clone() for p in sd.unet.parameters()]
    runs = [invert(sd, images, similarity=PixelCorrelation(threshold=1.1), settings=settings, seed=4)[0][0]
            for _ in range(2)]
    first, second = runs
    assert not first.success and first.score == float("inf") and first.steps == 4 and len(first.checks) == 2
    assert first.samples.shape == (2, 16, 16, 3)
    assert first.mu.abs().sum() > 0 and first.logvar.abs().sum() > 0
    assert torch.equal(first.mu, second.mu) and first.similarities == second.similarities
    assert all(torch.equal(a, b) for a, b in zip(before, sd.unet.parameters()))


def test_a_bin_saved_model_loads_quietly_and_a_pickle_with_code_is_refused_in_one_line(tmp_path, capfd):
    """Models saved as .bin (older checkpoints, the paper's LDM among them) made diffusers log "An error occurred
    while trying to fetch …" on stderr before loading them fine; a .bin that torch's safe loading refuses said
    only "Unable to load weights from checkpoint file"."""
    import os

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T_PIXEL, clip_sample=False)
    folder = tmp_path / "bin"
    diffusers.DDPMPipeline(unet=_pixel_unet(), scheduler=scheduler).save_pretrained(folder, safe_serialization=False)
    capfd.readouterr()
    fd.load_diffusers(folder)
    assert "error" not in capfd.readouterr().err.lower()

    class Code:
        def __reduce__(self):
            return (os.getcwd, ())

    weights = folder / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)  # tensors only, as diffusers saved it
    state["code"] = Code()
    torch.save(state, weights)
    with pytest.raises(UsageError, match="holds more than tensors .* convert a trusted copy to .safetensors"):
        fd.load_diffusers(folder)
    assert "error" not in capfd.readouterr().err.lower()
