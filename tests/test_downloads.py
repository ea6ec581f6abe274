"""Weights and public data fetched on first use, and the user's own data (issue 27).

Nothing here touches the network: a local Hugging Face Hub and file server (tests/fakehub.py) is started
in the test, ``HF_ENDPOINT`` points at it, torchvision's CIFAR-10 URL and checksums are patched to a tiny
archive it serves, and every cache is a temporary folder. The stand-in for ViT-B/16 in21k is timm's
ViT-Ti/16 (``vit_tiny_patch16_224.augreg_in21k``) built at 32 px with random weights, served as the hub's
``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from fakehub import FakeHub, cifar10_archive

from forensics.errors import ForensicsError, ProtocolMismatch, WeightsError

TINY = "vit_tiny_patch16_224.augreg_in21k"
TINY_REPO = "timm/vit_tiny_patch16_224.augreg_in21k"


def smooth_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n`` colour images of smooth random shapes (a 4×4 field scaled up, plus a little noise)."""
    rng = np.random.default_rng(seed)
    low = rng.normal(128, 50, (n, 4, 4, 3))
    big = np.repeat(np.repeat(low, size // 4, axis=1), size // 4, axis=2) + rng.normal(0, 8, (n, size, size, 3))
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_weights():
    """The stand-in encoder's weights as the hub serves them (safetensors bytes), and their tensor digest."""
    from safetensors.torch import save

    from forensics.plugins import host

    encoder = host().get("encoders", TINY).obj(weights="random", seed=5, image_size=32)
    data = save({k: v.contiguous() for k, v in encoder.model.state_dict().items()})
    return data, encoder.weights.digest


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """Downloads on, against the local hub; the Hugging Face and forensics caches in ``tmp_path``."""
    import huggingface_hub.constants as hf_constants

    from forensics.io import download

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for name in ("HF_HUB_OFFLINE", "FORENSICS_OFFLINE", "FORENSICS_CIFAR10_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(download._FORCED, "offline", False)
    monkeypatch.setitem(download._REPORT, "to", None)
    return hub


def fresh_caches(monkeypatch, tmp_path, name: str) -> None:
    """Point the Hugging Face and forensics caches at new, empty folders: a machine that has fetched nothing."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / name / "hf"))
    monkeypatch.setenv("FORENSICS_CACHE_DIR", str(tmp_path / name / "cache"))


def tiny_factory():
    from forensics.plugins import host

    return host().get("encoders", TINY).obj


def serve_cifar(hub: FakeHub, monkeypatch, train: np.ndarray, test: np.ndarray) -> dict[str, str]:
    """Serve a tiny CIFAR-10 archive and point torchvision's CIFAR10 (URL, md5s) at it."""
    from torchvision.datasets import CIFAR10

    archive, md5 = cifar10_archive(train, test)
    monkeypatch.setattr(CIFAR10, "url", hub.add_file("/cifar-10-python.tar.gz", archive))
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5["archive"])
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    return md5


# -- weights ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_weights_are_fetched_once_then_found_in_the_cache_offline(online, tiny_weights, monkeypatch):
    from forensics.io.download import report_to, set_offline

    data, digest = tiny_weights
    online.add_model_file(TINY_REPO, "model.safetensors", data)
    make = tiny_factory()
    assert make.describe(image_size=32).weights.startswith("download:")  # a listing never downloads
    assert online.requests == []
    steps = []
    report_to(lambda what, done, total: steps.append((what, done, total)))
    encoder = make(image_size=32)
    assert steps[0][0] == f"downloading {TINY_REPO}/model.safetensors (MB)"
    assert steps[-1][1] == steps[-1][2] == -(-len(data) // 1_000_000)  # the progress display hears it end
    assert encoder.weights.digest == digest and encoder.weights.source == "cache"
    assert ("GET", f"/{TINY_REPO}/resolve/main/model.safetensors") in online.requests
    asked = len(online.requests)
    set_offline(True)
    again = make(image_size=32)
    assert again.weights.digest == digest and len(online.requests) == asked  # nothing asked again
    assert make.describe(image_size=32).weights.startswith("cache")


def test_offline_without_the_file_is_one_line_naming_it(online, monkeypatch):
    from forensics.io.download import set_offline

    for switch in ("flag", "env"):
        if switch == "flag":
            set_offline(True)
        else:
            set_offline(False)
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(WeightsError) as info:
            tiny_factory()(image_size=32)
        message = str(info.value)
        assert "\n" not in message and "downloads are off" in message
        assert f"{TINY_REPO}/model.safetensors" in message and "--weights" in message and "hf download" in message
    assert online.requests == []


def test_a_local_file_wins_over_the_hub(online, tiny_weights, tmp_path):
    data, digest = tiny_weights
    online.add_model_file(TINY_REPO, "model.safetensors", b"never fetched")
    path = tmp_path / "mine.safetensors"
    path.write_bytes(data)
    encoder = tiny_factory()(weights=str(path), image_size=32)
    assert encoder.weights.source == "file" and encoder.weights.digest == digest
    assert online.requests == []


def test_a_download_unlike_its_published_digest_is_refused_and_kept(online, tiny_weights):
    data, _ = tiny_weights
    online.add_model_file(TINY_REPO, "model.safetensors", data, announce_sha256="0" * 64)
    for attempt in range(2):  # just downloaded, then found in the cache: refused both times
        with pytest.raises(WeightsError) as info:
            tiny_factory()(image_size=32)
        assert "\n" not in str(info.value) and "not the file the hub published" in str(info.value)
    blobs = list((online_cache() / f"models--{TINY_REPO.replace('/', '--')}" / "blobs").iterdir())
    assert [b.name for b in blobs] == ["0" * 64] and blobs[0].stat().st_size == len(data)  # left in place


def online_cache():
    from pathlib import Path

    import huggingface_hub.constants as hf_constants

    return Path(hf_constants.HF_HUB_CACHE)


@pytest.mark.slow
def test_weights_unlike_the_protocols_digest_are_refused(online, tiny_weights):
    from forensics.engine import build_encoder
    from forensics.protocol import EncoderRef

    data, digest = tiny_weights
    online.add_model_file(TINY_REPO, "model.safetensors", data)
    ref = EncoderRef.from_identity(tiny_factory()(weights="random", seed=9, image_size=32).identity(),
                                   {"image_size": 32})
    ref = dataclasses.replace(ref, weights_source="cache")  # the protocol records another digest
    with pytest.raises(ProtocolMismatch, match="not the protocol's"):
        build_encoder(ref)


def test_a_repo_the_hub_does_not_have_is_one_line(online):
    with pytest.raises(WeightsError) as info:
        tiny_factory()(image_size=32)
    message = str(info.value)
    assert "\n" not in message and "cannot download" in message and online.url in message


def test_a_hub_that_cannot_be_reached_is_said_at_once_not_after_half_a_minute_of_retries(online, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    import huggingface_hub

    def retries(*args, **kwargs):
        raise AssertionError("the hub library was asked, and would have retried")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retries)
    with pytest.raises(WeightsError) as info:
        tiny_factory()(image_size=32)
    message = str(info.value)
    assert "\n" not in message and f"http://127.0.0.1:{port} cannot be reached (127.0.0.1: " in message


# -- CIFAR-10 -----------------------------------------------------------------------------------------
def test_cifar10_is_fetched_by_torchvision_checked_and_reused_offline(online, monkeypatch, tmp_path):
    from forensics.io.download import report_to, set_offline
    from forensics_datasets import cifar10_cache, load_cifar10

    train, test = smooth_images(50, 1), smooth_images(20, 2)
    serve_cifar(online, monkeypatch, train, test)
    steps = []
    report_to(lambda what, done, total: steps.append((done, total)))
    assert np.array_equal(load_cifar10("train"), train)
    assert steps == [(0, 0), (1, 1)]  # a step of unknown length, begun and over
    asked = len(online.requests)  # torchvision asks twice: for a redirect, then for the archive
    assert asked and set(online.requests) == {("GET", "/cifar-10-python.tar.gz")}
    assert np.array_equal(load_cifar10("test"), test)
    assert len(online.requests) == asked  # fetched once, both splits
    assert (cifar10_cache() / "cifar-10-batches-py" / "data_batch_5").is_file()
    set_offline(True)
    assert np.array_equal(load_cifar10("test"), test)
    assert len(online.requests) == asked
    # a damaged file of the cached copy is found by its md5; offline it cannot be fetched again
    batch = cifar10_cache() / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ForensicsError) as info:
        load_cifar10("test")
    assert "\n" not in str(info.value) and "downloads are off" in str(info.value)
    assert "FORENSICS_CIFAR10_DIR" in str(info.value)


def test_a_cifar10_archive_unlike_its_md5_is_refused(online, monkeypatch):
    from torchvision.datasets import CIFAR10

    from forensics_datasets import load_cifar10

    serve_cifar(online, monkeypatch, smooth_images(10, 1), smooth_images(5, 2))
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)
    with pytest.raises(ForensicsError) as info:
        load_cifar10("train")
    assert "\n" not in str(info.value) and "cannot fetch CIFAR-10" in str(info.value)


def test_a_local_cifar10_copy_is_checked_against_its_published_checksums(online, monkeypatch, tmp_path):
    import tarfile

    from forensics_datasets import BINARY_BATCH_BYTES, load_cifar10

    train, test = smooth_images(10, 1), smooth_images(5, 2)
    archive, _ = cifar10_archive(train, test)
    (tmp_path / "c.tgz").write_bytes(archive)
    with tarfile.open(tmp_path / "c.tgz") as tar:
        tar.extractall(tmp_path / "mine", filter="data")
    monkeypatch.setenv("FORENSICS_CIFAR10_DIR", str(tmp_path / "mine"))
    with pytest.raises(ForensicsError, match="does not match CIFAR-10's published md5"):  # torchvision's real md5s
        load_cifar10("train")
    serve_cifar(online, monkeypatch, train, test)  # the md5s of this copy
    assert np.array_equal(load_cifar10("train"), train)
    assert online.requests == []  # a local copy is never fetched
    # the binary release publishes no per-file checksum: its sizes are checked
    (tmp_path / "bin" / "cifar-10-batches-bin").mkdir(parents=True)
    (tmp_path / "bin" / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\x00" * (BINARY_BATCH_BYTES - 1))
    monkeypatch.setenv("FORENSICS_CIFAR10_DIR", str(tmp_path / "bin"))
    with pytest.raises(ForensicsError, match="damaged or missing"):
        load_cifar10("test")


# -- the paper's protocol, end to end, with tiny stand-ins --------------------------------------------
def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from forensics.cli.commands import run

    capsys.readouterr()
    code = run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def save_pngs(folder, images) -> str:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return str(folder)


@pytest.mark.slow
def test_the_paper_protocol_fetches_weights_and_cifar10_builds_the_reference_and_attributes(
        online, tiny_weights, monkeypatch, tmp_path, capsys):
    """As `forensics attribute my_500_images/ --protocol he2024-cifar10-vitb16` on a machine online: the
    protocol names CIFAR-10 and a hub encoder; the first run fetches both, fits and caches the reference
    side, and attributes; a later run offline reads only caches; offline on a bare machine, one line."""
    data, digest = tiny_weights
    online.add_model_file(TINY_REPO, "model.safetensors", data)
    train, test = smooth_images(300, 1), smooth_images(150, 2)
    serve_cifar(online, monkeypatch, train, test)
    reg = str(tmp_path / "registry")
    code, out, err = cli(capsys, "protocol", "create", "tiny-paper", "--dataset", "cifar10", "--encoder", TINY,
                         "--option", "image_size=32", "--k", "3", "--batch-size", "100", "--registry", reg)
    assert code == 0, err
    record = yaml.safe_load((tmp_path / "registry" / "tiny-paper" / "protocol.yaml").read_text())["protocol"]
    assert record["encoder"]["weights"] == digest and record["train"]["count"] == 300
    copies, other = train[np.random.default_rng(3).permutation(300)[:200]], smooth_images(200, 7) // 2
    for name, images in (("copier", copies), ("dimmer", other)):
        code, _, err = cli(capsys, "registry", "enroll", name, save_pngs(tmp_path / name, images), "-p", "tiny-paper",
                           "--registry", reg)
        assert code == 0, err
    query = save_pngs(tmp_path / "query", train[np.random.default_rng(4).permutation(300)[:100]])

    fresh_caches(monkeypatch, tmp_path, "bare")  # a machine that has fetched nothing
    before = len(online.requests)
    code, out, err = cli(capsys, "attribute", query, "-p", "tiny-paper", "--registry", reg, "--json")
    assert code == 0, err
    first = json.loads(out)
    fetched = online.requests[before:]
    assert ("GET", f"/{TINY_REPO}/resolve/main/model.safetensors") in fetched
    assert ("GET", "/cifar-10-python.tar.gz") in fetched
    assert first["reference"]["origin"].startswith("computed, cached at")
    assert first["candidates"][0]["generator"] == "copier"

    before = len(online.requests)
    code, out, err = cli(capsys, "--offline", "attribute", query, "-p", "tiny-paper", "--registry", reg, "--json")
    assert code == 0, err
    second = json.loads(out)
    assert online.requests[before:] == []  # weights, data and reference side all from the caches
    assert second["reference"]["origin"] == first["reference"]["origin"].removeprefix("computed, cached at ")
    assert second["curve"]["values"] == first["curve"]["values"]

    fresh_caches(monkeypatch, tmp_path, "bare-offline")
    code, out, err = cli(capsys, "attribute", query, "-p", "tiny-paper", "--registry", reg, "--offline")
    assert code == 1 and out == "" and online.requests[before:] == []
    assert len(err.strip().splitlines()) == 1 and TINY_REPO in err and "downloads are off" in err


# -- your own data --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_protocol_from_your_own_folders_and_a_generator_enrolled_from_its_folder(tmp_path, capsys):
    reg = str(tmp_path / "registry")
    mine = smooth_images(120, 1, size=16)
    train = save_pngs(tmp_path / "data" / "train", mine[:80])
    heldout = save_pngs(tmp_path / "data" / "heldout", mine[80:])
    code, out, err = cli(capsys, "protocol", "create", "mine", "--train", train, "--heldout", heldout, "--encoder",
                         TINY, "--weights", "random", "--option", "image_size=32", "--k", "2", "--tau", "0.25",
                         "--batch-size", "20", "--registry", reg, "--json")
    assert code == 0, err
    created = json.loads(out)
    pfile = tmp_path / "registry" / "mine" / "protocol.yaml"
    record = yaml.safe_load(pfile.read_text())
    assert record["protocol"]["train"]["dataset"] == "folder" and record["protocol"]["train"]["count"] == 80
    assert record["protocol"]["train"]["options"]["path"] == str((tmp_path / "data" / "train").resolve())
    for name, images in (("copier", mine[np.random.default_rng(2).permutation(80)[:40]]),
                         ("blurry", smooth_images(40, 9, size=16) // 3)):
        code, out, err = cli(capsys, "registry", "enroll", name, save_pngs(tmp_path / name, images), "-p", "mine",
                             "--registry", reg, "--json")
        assert code == 0, err
        assert len(json.loads(out)["instances"]) == 2
    query = save_pngs(tmp_path / "query", mine[np.random.default_rng(5).permutation(80)[:20]])
    code, out, err = cli(capsys, "attribute", query, "-p", "mine", "--registry", reg, "--json", "--no-cache")
    assert code == 0, err
    assert json.loads(out)["candidates"][0]["generator"] == "copier"

    # the folders moved: the record's path is edited, the protocol (its digest) is the same one
    (tmp_path / "data").rename(tmp_path / "moved")
    text = pfile.read_text().replace(str((tmp_path / "data").resolve()), str((tmp_path / "moved").resolve()))
    pfile.write_text(text)
    code, out, err = cli(capsys, "registry", "validate", "--registry", reg)
    assert code == 0, err + out
    code, out, err = cli(capsys, "attribute", query, "-p", "mine", "--registry", reg, "--json", "--no-cache")
    assert code == 0, err
    assert json.loads(out)["protocol"]["digest"] == created["digest"]


def test_own_data_is_named_by_content_not_location():
    from forensics.protocol import DataRef

    a = DataRef("folder", "train", 10, "sha256:" + "1" * 64, {"path": "/one", "size": 32, "resize": 32})
    b = DataRef("folder", "train", 10, "sha256:" + "1" * 64, {"path": "/two", "size": 32, "resize": 32})
    assert a.to_dict() == b.to_dict() and a.record() != b.record()
    assert a.record()["options"]["path"] == "/one"
    assert DataRef.from_dict(a.record(), "train") == a


def test_protocol_create_needs_one_kind_of_reference_set(tmp_path, capsys):
    reg = str(tmp_path / "registry")
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", TINY, "--registry", reg)
    assert code == 2 and "--train and --heldout" in err
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", TINY, "--dataset", "digits", "--train",
                       str(tmp_path), "--heldout", str(tmp_path), "--registry", reg)
    assert code == 2 and "not both" in err
    assert not (tmp_path / "registry").exists()


def test_protocol_create_refuses_a_batch_in_which_no_cell_can_count(tmp_path, capsys):
    # a C_T cell counts when it holds more than τ·m of a batch's m images: with the default τ = 20/m a
    # batch of 20 never has one, nor does any batch with τ ≥ 1 — every fingerprint would fail to score
    reg = str(tmp_path / "registry")
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", TINY, "--dataset", "digits",
                       "--batch-size", "20", "--registry", reg)
    assert code == 2 and "--batch-size 20 is too small" in err and "--tau below 1" in err
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", TINY, "--dataset", "digits",
                       "--batch-size", "100", "--tau", "1", "--registry", reg)
    assert code == 2 and "--tau 1 asks a cell to hold more than all" in err
    assert not (tmp_path / "registry").exists()  # refused before anything was hashed or written


@pytest.mark.parametrize("args, said", [
    (["--tau", "nan"], "--tau takes a share of the batch from 0 to below 1"),
    (["--tau", "-1"], "--tau takes a share of the batch from 0 to below 1"),
    (["--seed", "-1"], "--seed takes a whole number of at least 0"),
    (["--option", "foo=bar"], "encoder vit_mnist_tiny.forensics takes no option foo; its options: "),
    (["--option", "device=cuda"], "give the encoder's device as --device"),
])
def test_protocol_create_refuses_settings_no_fit_could_use_before_any_work(tmp_path, capsys, args, said):
    reg = str(tmp_path / "registry")
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", "vit_mnist_tiny.forensics", "--dataset",
                       "digits", "--batch-size", "100", *args, "--registry", reg)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "registry").exists()


def test_protocol_create_refuses_more_cells_than_images_and_an_option_value_the_encoder_refuses(tmp_path, capsys):
    reg = str(tmp_path / "registry")
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", "vit_mnist_tiny.forensics", "--dataset",
                       "digits", "--batch-size", "100", "--k", "1000", "--ship-reference", "--registry", reg)
    assert code == 2 and "--k 1000 cells need at least 1000 training and 1000 held-out images" in err, err
    code, _, err = cli(capsys, "protocol", "create", "x", "--encoder", "vit_mnist_tiny.forensics", "--dataset",
                       "digits", "--option", "image_size=abc", "--registry", reg)
    assert code == 2 and "encoder vit_mnist_tiny.forensics refused --option image_size='abc'" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "registry" / "x").exists()  # nothing written


def test_open_clip_weights_come_from_the_file_open_clip_would_load(online):
    from forensics_openclip import OPEN_CLIP_FILES, _sources

    from forensics.encode.weights import availability

    sources = _sources("ViT-B-32", "openai")  # open_clip's hf_hub: "timm/vit_base_patch32_clip_224.openai/"
    assert sources.hf_ids == ("timm/vit_base_patch32_clip_224.openai",) and sources.hf_filenames == OPEN_CLIP_FILES
    assert availability("openclip_vit_b_32.openai", sources).startswith("download:")
    assert online.requests == []


def test_own_reference_images_no_longer_where_the_protocol_says_are_a_registry_matter(tmp_path):
    from forensics.errors import RegistryError
    from forensics_datasets import load_folder

    with pytest.raises(RegistryError, match=r"the protocol's held-out images \(P_n\) are not at .*gone, where its "
                                            r"protocol.yaml says they are: move them back, or edit that path"):
        load_folder("test", path=str(tmp_path / "gone"))
