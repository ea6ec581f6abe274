"""Building a timm encoder: the layers' sizes come from the user cache once a build has recorded them there,
equal to those of the meta-device pass, and a missing, stale or damaged record is recomputed; the
embeddings do not depend on where the sizes came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forensics.testing import sample_images

VIT = "vit_tiny_patch16_224.augreg_in21k"


@pytest.fixture(scope="module")
def factories():
    from forensics.plugins import PluginHost

    return PluginHost(autoload=False).collect("encoders")


@pytest.fixture
def cache(monkeypatch, tmp_path):
    root = tmp_path / "cache"
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(root))
    return root


@pytest.fixture
def meta_passes(monkeypatch):
    """Counts the meta-device passes (the declared_layers calls) of every timm encoder."""
    from forensics_timm.base import TimmEncoder

    calls = []
    original = TimmEncoder.declared_layers

    def counted(self, *args, **kwargs):
        calls.append(self.entry.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TimmEncoder, "declared_layers", counted)
    return calls


def build(factories, name=VIT, **options):
    options = {"weights": "random", "image_size": 32, **options}
    return factories[name].obj(**options)


def records(cache):
    return sorted((cache / "layers").glob("*.json"))


def test_a_second_build_reads_the_sizes_the_first_recorded(factories, cache, meta_passes):
    first = build(factories)
    assert meta_passes == [VIT] and len(records(cache)) == 1
    second = build(factories)
    assert meta_passes == [VIT]  # no second meta pass
    assert second.layers == first.layers
    kwargs = second.model_kwargs(32)
    assert second.declared_layers(kwargs, 32) == second.layers  # what the meta pass says, size by size
    assert [layer.dim for layer in second.layers] == [192] * 12


def test_the_listing_and_the_build_share_the_record(factories, cache, meta_passes):
    spec = factories[VIT].obj.describe(image_size=32)
    assert meta_passes == [VIT] and len(records(cache)) == 1
    assert build(factories).layers == spec.layers and meta_passes == [VIT]


def test_every_option_the_sizes_depend_on_has_its_own_record(factories, cache, meta_passes):
    a, b = build(factories), build(factories, image_size=48)
    c = build(factories, pooling="mean")
    assert len(meta_passes) == 3 and len(records(cache)) == 3
    assert a.layers == b.layers == c.layers  # a ViT's widths do not depend on them, but the key cannot know
    lite = build(factories, "tf_efficientnet_lite0", image_size=64)
    assert [layer.dim for layer in lite.layers] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert build(factories, "tf_efficientnet_lite0", image_size=64).layers == lite.layers
    assert len(meta_passes) == 4 and len(records(cache)) == 4


def _edit(field, value):
    def change(record):
        record = dict(record)
        record[field] = value
        return json.dumps(record)
    return change


def _key(field, value):
    def change(record):
        record = dict(record, key=dict(record["key"]))
        record["key"][field] = value
        return json.dumps(record)
    return change


def _row(i, row):
    def change(record):
        layers = list(record["layers"])
        layers[i] = row
        return json.dumps(dict(record, layers=layers))
    return change


DAMAGE = {
    "not JSON": lambda record: "{\"format\": 1, \"key\"",
    "empty": lambda record: "",
    "not an object": lambda record: json.dumps([record]),
    "another format": _edit("format", 99),
    "another timm": _key("timm", "0.0.1"),
    "another source": _key("source", "0" * 64),
    "another size": _key("size", 224),
    "a layer missing": lambda record: json.dumps(dict(record, layers=record["layers"][:-1])),
    "a wrong name": _row(0, ["blocks.x", 192]),
    "a zero size": _row(3, ["blocks.3", 0]),
    "a size as text": _row(3, ["blocks.3", "192"]),
    "a fractional size": _row(3, ["blocks.3", 192.5]),
    "a size as bool": _row(3, ["blocks.3", True]),
    "a row too long": _row(3, ["blocks.3", 192, 1]),
}


@pytest.fixture(scope="module")
def recorded(factories, tmp_path_factory):
    """A ViT built once (its record written under a folder of its own): the encoder, the record's path, key
    and contents."""
    import os

    from forensics_timm.base import widths_path

    old = os.environ.get("FORENSICS_CACHE_DIR")
    os.environ["FORENSICS_CACHE_DIR"] = str(tmp_path_factory.mktemp("widths"))
    try:
        encoder = build(factories)
        key = encoder.widths_key(encoder.model_kwargs(32), 32)
        path = widths_path(encoder.entry.architecture, key)
        return encoder, path, key, json.loads(path.read_text())
    finally:
        if old is None:
            os.environ.pop("FORENSICS_CACHE_DIR")
        else:
            os.environ["FORENSICS_CACHE_DIR"] = old


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_stale_or_damaged_record_is_not_read(recorded, tmp_path, damage):
    from forensics_timm.base import read_widths

    encoder, _, key, record = recorded
    names = encoder.tap_names(encoder.model)
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    assert read_widths(path, key, names) == encoder.layers  # the record as written reads back
    path.write_text(DAMAGE[damage](record))
    assert read_widths(path, key, names) is None


def test_a_damaged_record_is_measured_again_and_rewritten(recorded, factories, cache, meta_passes):
    encoder, path, key, record = recorded
    from forensics_timm.base import widths_path

    here = widths_path(encoder.entry.architecture, key)
    here.parent.mkdir(parents=True)
    here.write_text(DAMAGE["a zero size"](record))
    again = build(factories)
    assert meta_passes == [VIT] and again.layers == encoder.layers
    assert json.loads(here.read_text()) == record  # recorded again, whole
    assert records(cache) == [here]


def test_a_cache_folder_that_cannot_be_written_only_costs_the_meta_pass(factories, tmp_path, monkeypatch,
                                                                         meta_passes):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(blocker))
    a, b = build(factories), build(factories)
    assert a.layers == b.layers and len(meta_passes) == 2
    assert blocker.read_text() == "a file where the cache folder should be"


def test_the_embeddings_do_not_depend_on_where_the_sizes_came_from(factories, cache, meta_passes):
    from forensics.encode.embed import embed

    images = sample_images(n=5, size=40)
    measured = build(factories)  # meta pass
    recorded = build(factories)  # from the cache
    assert meta_passes == [VIT]
    assert measured.identity() == recorded.identity()
    assert measured.weights.digest == recorded.weights.digest
    for a, b in zip(embed(measured, images), embed(recorded, images)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_the_bundled_default_encoder_reads_its_record(factories, cache, meta_passes):
    """The default protocol's EfficientNet-Lite0 with its real weights: its layers from the record equal
    those of the meta pass, and its embeddings are the same to the last bit."""
    from forensics.encode.embed import embed

    images = sample_images(n=3, size=28)
    first = factories["tf_efficientnet_lite0"].obj(image_size=128)
    second = factories["tf_efficientnet_lite0"].obj(image_size=128)
    assert meta_passes == ["tf_efficientnet_lite0"] and first.layers == second.layers
    for a, b in zip(embed(first, images), embed(second, images)):
        assert np.array_equal(a, b)


# -- a model built to receive weights draws no random values --------------------------------------
def _kept(encoder):
    """Every tensor the encoder's model keeps: its state and its non-persistent buffers, by name."""
    out = dict(encoder.model.state_dict())
    out.update({f"{name}<np>": b for name, b in encoder.model.named_buffers() if name not in out})
    return out


@pytest.mark.parametrize("name, options", [
    (VIT, {"image_size": 32}),
    ("resnet18.tv_in1k", {"image_size": 48}),
    ("tf_efficientnet_lite0", {"image_size": 64}),
    pytest.param("swin_tiny_patch4_window7_224.ms_in1k", {}, marks=pytest.mark.slow),
    pytest.param("inception_v3.tv_in1k", {"image_size": 75}, marks=pytest.mark.slow),
    pytest.param("openclip_vit_b_32.openai", {"image_size": 32}, marks=pytest.mark.slow),
])
def test_a_model_built_for_weights_is_the_model_built_the_usual_way(factories, cache, tmp_path, monkeypatch,
                                                                      name, options):
    """Each bundled family, with a weights file: the model built without drawing its initial values (which
    the weights replace) keeps the same tensors, bit for bit, as one built after drawing them, and embeds
    the same."""
    from safetensors.torch import save_file

    from forensics.encode.embed import embed
    from forensics_timm.base import SkipRandomFill

    donor = factories[name].obj(weights="random", seed=1, **options)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in donor.model.state_dict().items()}, str(path))
    verdicts = []
    check = SkipRandomFill.all_replaced_by
    monkeypatch.setattr(SkipRandomFill, "all_replaced_by",
                        lambda self, model, state: verdicts.append(check(self, model, state)) or verdicts[-1])
    skipping = factories[name].obj(weights=str(path), **options)
    assert verdicts == [True]  # built without drawing
    monkeypatch.setattr(SkipRandomFill, "all_replaced_by", lambda self, model, state: False)
    usual = factories[name].obj(weights=str(path), **options)
    assert skipping.weights == usual.weights and skipping.weights.digest == donor.weights.digest
    a, b = _kept(skipping), _kept(usual)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    images = sample_images(n=2, size=options.get("image_size", 224))
    for x, y in zip(embed(skipping, images), embed(usual, images)):
        assert np.array_equal(x, y)


def _built(make):
    from forensics_timm.base import SkipRandomFill

    with SkipRandomFill() as skipped:
        model = make()
    return skipped, model


def test_values_drawn_and_not_replaced_make_it_build_the_usual_way():
    class Drawn(torch.nn.Module):  # a buffer drawn at random that no weights file holds
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer("noise", torch.empty(4).normal_(), persistent=False)

    class Derived(torch.nn.Module):  # a value computed from a draw that is then dropped
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer("scale", torch.nn.init.uniform_(torch.empty(2)) * 2, persistent=False)

    skipped, plain = _built(lambda: torch.nn.Linear(3, 2))
    assert len(skipped.unfilled) == 2 and skipped.all_replaced_by(plain, dict(plain.state_dict()))
    skipped, plain = _built(lambda: torch.nn.Linear(3, 2))
    assert not skipped.all_replaced_by(plain, {"weight": torch.zeros(2, 3)})  # the bias would stay undrawn
    for make in (Drawn, Derived):
        skipped, model = _built(make)
        assert not skipped.all_replaced_by(model, dict(model.state_dict())), make.__name__
    # outside the mode nothing changes
    torch.manual_seed(0)
    a = torch.empty(3).normal_()
    torch.manual_seed(0)
    assert torch.equal(a, torch.empty(3).normal_())


def test_building_with_weights_leaves_the_callers_random_state_alone(factories, cache, tmp_path):
    from safetensors.torch import save_file

    donor = build(factories)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in donor.model.state_dict().items()}, str(path))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    factories[VIT].obj(weights=str(path), image_size=32)
    assert torch.equal(torch.rand(3), expected)
