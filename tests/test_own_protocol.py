"""A protocol made from your own folders (--train/--heldout), as its user meets it later."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from forensics.errors import ProtocolMismatch


def _pngs(folder, n, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def test_a_changed_training_folder_is_named_with_what_to_do(tmp_path):
    from forensics.engine import dataset_split, load_reference_set
    from forensics.io.hashing import sha256_array
    from forensics.protocol import DataRef

    folder = _pngs(tmp_path / "T", 4)
    options = {"path": str(folder), "size": 16, "resize": 16}
    ref = DataRef("folder", "train", 4, sha256_array(dataset_split("folder", "train", options)), options)
    assert len(load_reference_set(ref)) == 4

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "0000.png")  # one image replaced
    with pytest.raises(ProtocolMismatch) as changed:
        load_reference_set(ref)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "0009.png")  # one image added
    with pytest.raises(ProtocolMismatch) as added:
        load_reference_set(ref)
    for error in (changed.value, added.value):
        message = str(error)
        assert "\n" not in message and str(folder) in message and "protocol create" in message


def test_a_protocol_whose_cells_miss_the_heldout_set_says_its_settings_are_fixed(tmp_path, monkeypatch):
    # T holds dark and bright images, P_n only dark ones: with k = 2 one cell holds no held-out image, which
    # protocol create (without --ship-reference) cannot see; the first enrolment is where it shows
    import forensics
    from forensics.errors import StatisticError

    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    train, heldout = tmp_path / "T", tmp_path / "P"
    train.mkdir(), heldout.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        level = 20 if i % 2 else 230
        Image.fromarray((level + rng.integers(0, 20, (16, 16))).astype(np.uint8)).save(train / f"{i:03d}.png")
        Image.fromarray((20 + rng.integers(0, 20, (16, 16))).astype(np.uint8)).save(heldout / f"{i:03d}.png")
    registry = tmp_path / "registry"
    forensics.create_protocol("two-cells", train=train, heldout=heldout, encoder="pixel-statistics",
                              layers=["intensity.0"], k=2, distance="euclidean", tau=0.25, batch_size=10, registry=registry)
    samples = (20 + rng.integers(0, 20, (10, 16, 16))).astype(np.uint8)
    with pytest.raises(StatisticError) as failed:
        forensics.enroll(samples, "dark", protocol="two-cells", registry=registry, conditions="none")
    message = str(failed.value)
    assert "\n" not in message and "'two-cells'" in message and "protocol create" in message
    assert "no test points" in message
    assert not (registry / "two-cells" / "generators").exists()  # nothing half-written


def test_held_out_images_that_are_training_images_are_refused_even_a_few(tmp_path):
    # P_n stands for images the generators never saw: a shared image, even of another mode, is refused by name
    import forensics
    from forensics.errors import UsageError

    train, heldout = _pngs(tmp_path / "T", 12, seed=1), _pngs(tmp_path / "P", 12, seed=2)
    Image.open(train / "0003.png").convert("RGB").save(train / "0003.png")  # T read as RGB, P_n as grey
    Image.open(train / "0005.png").save(heldout / "shared.png")
    registry = tmp_path / "registry"
    with pytest.raises(UsageError) as refused:
        forensics.create_protocol("leaky", train=train, heldout=heldout, encoder="pixel-statistics",
                                  statistic="mean-z", batch_size=10, registry=registry)
    message = str(refused.value)
    assert "\n" not in message and "1 of the 13 held-out images is also" in message and "shared.png" in message
    assert not (registry / "leaky").exists()
    (heldout / "more").mkdir()  # several: each named where it lies, so that they can be removed, five at most
    for i in range(6):
        Image.open(train / f"{i + 6:04d}.png").save(heldout / "more" / f"seen{i}.png")
    with pytest.raises(UsageError) as refused:
        forensics.create_protocol("leaky", train=train, heldout=heldout, encoder="pixel-statistics",
                                  statistic="mean-z", batch_size=10, registry=registry)
    message = str(refused.value)
    assert "7 of the 19 held-out images are also" in message and "and 2 more" in message
    assert "more/seen0.png, more/seen1.png" in message
    (heldout / "shared.png").unlink()
    for i in range(6):
        (heldout / "more" / f"seen{i}.png").unlink()
    forensics.create_protocol("clean", train=train, heldout=heldout, encoder="pixel-statistics",
                              statistic="mean-z", batch_size=10, registry=registry)
    assert (registry / "clean" / "protocol.yaml").is_file()


def test_creating_the_same_protocol_from_moved_folders_records_where_they_now_are(tmp_path):
    # a folder's path is outside the digest: the same images elsewhere are the same protocol, and creating it
    # again from there must record the new place (it said "written" and kept the old one, which then failed)
    import yaml

    import forensics

    train, heldout = _pngs(tmp_path / "T", 12, seed=1), _pngs(tmp_path / "P", 12, seed=2)
    registry = tmp_path / "registry"
    first = forensics.create_protocol("mine", train=train, heldout=heldout, encoder="pixel-statistics",
                                      statistic="mean-z", batch_size=10, registry=registry, description="my data")
    heldout.rename(tmp_path / "moved")
    again = forensics.create_protocol("mine", train=train, heldout=tmp_path / "moved", encoder="pixel-statistics",
                                      statistic="mean-z", batch_size=10, registry=registry)
    record = yaml.safe_load((registry / "mine" / "protocol.yaml").read_text())
    assert record["digest"] == first.protocol.digest == again.protocol.digest
    assert record["protocol"]["test"]["options"]["path"] == str((tmp_path / "moved").resolve())
    assert record["protocol"]["train"]["options"]["path"] == str(train.resolve())
    assert record["protocol"]["description"] == "my data"  # the rest of its record stays as it was


def test_curating_a_training_folder_of_several_sizes_says_what_to_do(tmp_path):
    # curate takes no protocol, so "read only under a protocol" left its user nowhere to go
    import forensics
    from forensics.errors import UsageError

    train = _pngs(tmp_path / "T", 4)
    Image.open(train / "0001.png").resize((20, 20)).save(train / "0001.png")
    with pytest.raises(UsageError) as refused:
        forensics.curate(train, kind="copy", out=tmp_path / "copies.npz")
    message = str(refused.value)
    assert "\n" not in message and "16×16, 20×20" in message and "bring them to one size first" in message
    assert not (tmp_path / "copies.npz").exists()
