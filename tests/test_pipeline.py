"""From images to curves under a protocol: reference side cached, checks against the protocol record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from forensics.errors import ProtocolMismatch, UsageError
from forensics.engine import Engine, cache_dir, compute_fingerprints, make_protocol

pytestmark = pytest.mark.slow  # every test builds on a protocol whose reference side embeds 1,797 digits

ENCODER = "vit_tiny_patch16_224.augreg_in21k"
OPTIONS = {"image_size": 32}
STAT = {"k": 3, "distance": "cosine", "projection": 16, "seed": 0}


@pytest.fixture(scope="module")
def protocol():
    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        yield make_protocol("digits-vit-tiny", dataset="digits", encoder=ENCODER, encoder_options=OPTIONS,
                            weights="random", statistic_params=STAT, batch_size=100,
                            description="digits under a random tiny ViT, for tests")
    finally:
        plugins.reset(old)


def load_split(split):
    import forensics_datasets

    return forensics_datasets.load_digits(split)


def test_protocol_records_everything(protocol):
    d = protocol.to_dict()
    assert d["train"]["count"] == 1438 and d["test"]["count"] == 359
    assert d["train"]["sha256"].startswith("sha256:")
    assert d["encoder"]["weights_source"] == "random" and d["encoder"]["options"] == OPTIONS
    assert d["encoder"]["layers"] == [f"blocks.{i}" for i in range(12)]
    assert d["statistic"] == {"name": "ct", "params": {**STAT, "tau": None}}
    assert d["encoder"]["preprocessing"]["size"] == 32
    renamed = protocol.with_name("other")
    assert renamed.digest == protocol.digest
    changed = dataclasses.replace(protocol, batch_size=200)
    assert changed.digest != protocol.digest
    assert protocol.differences(changed) == ["batch_size: 100 vs 200"]
    with pytest.raises(ProtocolMismatch, match="batch_size"):
        protocol.require_same(changed)


@pytest.fixture(scope="module")
def warm(protocol):
    """Fit the protocol's reference side once into the (private) cache; later engines load it."""
    from forensics import plugins

    old = plugins.reset(plugins.PluginHost(autoload=False))
    try:
        engine = Engine(protocol)
        engine.reference_side()
        yield engine
    finally:
        plugins.reset(old)


def test_copies_read_as_copying_and_noise_as_underfitting(protocol, warm, plugin_host):
    engine = Engine(protocol)
    assert engine.reference_side() and engine.reference_origin.endswith(".npz")
    train = load_split("train")
    copies = engine.curves(train[:100])
    assert len(copies) == 1
    values = np.array(copies[0].fingerprint.values, dtype=float)
    assert np.all(values < -2.0), values
    noise = np.random.default_rng(0).integers(0, 256, (100, 8, 8), dtype=np.uint8)
    noisy = np.array(engine.curves(noise)[0].fingerprint.values, dtype=object)
    defined = [v for v in noisy if v is not None]
    assert defined and all(v > 2.0 for v in defined), noisy


def test_reference_side_is_cached_and_damage_recomputed(protocol, plugin_host, tmp_path, monkeypatch):
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path))
    batch = load_split("test")[:100]
    first = Engine(protocol)
    a = first.curves(batch)[0].fingerprint
    assert first.reference_origin.startswith("computed, cached at")
    files = list((cache_dir() / "reference").glob("*.npz"))
    assert len(files) == 1
    second = Engine(protocol)
    b = second.curves(batch)[0].fingerprint
    assert second.reference_origin == str(files[0])
    assert a == b
    files[0].write_bytes(b"truncated")
    third = Engine(protocol)
    c = third.curves(batch)[0].fingerprint
    assert third.reference_origin.startswith("computed") and c == a


def test_shipped_reference_is_used_first(protocol, warm, plugin_host, tmp_path):
    from forensics.engine import reference_key, save_reference
    from forensics.io.hashing import short
    from forensics.registry.reference import record

    engine = Engine(protocol)
    path = tmp_path / "reference" / f"{short(reference_key(protocol), 24)}.npz"  # where a registry ships it
    record(save_reference(path, engine.reference_side(), protocol.layers))  # with its digest beside it
    shipped = Engine(protocol, use_cache=False, shipped_dir=tmp_path / "reference")
    batch = load_split("train")[100:200]
    assert shipped.curves(batch)[0].fingerprint == engine.curves(batch)[0].fingerprint
    assert shipped.reference_origin == str(path)


def test_embedding_batch_size_does_not_change_the_curve(protocol, warm, plugin_host):
    batch = load_split("train")[:100]
    a = Engine(protocol, batch_size=7).curves(batch)[0].fingerprint.vector()
    b = Engine(protocol, batch_size=100).curves(batch)[0].fingerprint.vector()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_fingerprints_per_full_batch(protocol, warm, plugin_host):
    images = load_split("train")[:250]
    fps = compute_fingerprints(images, protocol)
    assert len(fps) == 2 and all(fp.protocol_digest == protocol.digest for fp in fps)
    with pytest.raises(UsageError, match="at least one full batch of 100"):
        compute_fingerprints(images[:50], protocol)


def test_protocol_checks_data_and_weights(protocol, plugin_host):
    from forensics.protocol import DataRef

    other_data = dataclasses.replace(protocol, train=DataRef("digits", "train", 1438, "sha256:" + "0" * 64))
    with pytest.raises(ProtocolMismatch, match="not the protocol's"):
        Engine(other_data, use_cache=False).curves(load_split("test")[:100])
    other_weights = dataclasses.replace(protocol, encoder=dataclasses.replace(
        protocol.encoder, options={**OPTIONS, "seed": 1}))
    with pytest.raises(ProtocolMismatch, match="weights found"):
        Engine(other_weights, use_cache=False).encoder()


def test_an_unreadable_shipped_reference_is_an_error_not_a_silent_refit(protocol, warm, plugin_host, tmp_path):
    from forensics.errors import ForensicsError
    from forensics.engine import reference_key
    from forensics.io.hashing import short

    from forensics.registry import reference as shipped_side

    shipped = tmp_path / "reference"
    shipped.mkdir()
    (shipped / f"{short(reference_key(protocol), 24)}.npz").write_bytes(b"from another version")
    with pytest.raises(ForensicsError, match="no digest recorded"):  # an unrecorded file is refused first
        Engine(protocol, shipped_dir=shipped).reference_side()
    shipped_side.record(shipped / f"{short(reference_key(protocol), 24)}.npz")  # its digest, as shipping records
    with pytest.raises(ForensicsError, match="cannot be read by this version"):
        Engine(protocol, shipped_dir=shipped).reference_side()
    assert (shipped / f"{short(reference_key(protocol), 24)}.npz").exists()  # never deleted


def test_damaged_reference_files_are_detected(tmp_path):
    from forensics.io.atomic import save_npz_atomic
    from forensics.engine import _read_npz

    arrays = {"__layers__": np.array(["a", "bb"]), "0/train": np.arange(12.0).reshape(3, 4),
              "0/distance": np.array("cosine"), "0/k": np.array(3), "0/empty": np.empty((0, 5), np.float32)}
    for compressed in (False, True):
        path = save_npz_atomic(tmp_path / f"r{compressed}.npz", arrays, compressed=compressed)
        got = _read_npz(path)
        assert got.keys() == arrays.keys()
        assert all(got[k].dtype == v.dtype and np.array_equal(got[k], v) for k, v in arrays.items())
    path = tmp_path / "rFalse.npz"
    raw = bytearray(path.read_bytes())
    raw[raw.find(np.arange(12.0).tobytes()) + 5] ^= 0xFF  # one damaged byte inside an array: the zip CRC
    path.write_bytes(bytes(raw))
    assert _read_npz(path, remove=False) is None and path.exists()
    assert _read_npz(path) is None and not path.exists()
