"""Weights found in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, where torchvision and timm
keep what they fetched from a URL) are checked, as torch hub's ``check_hash`` does, against the sha256 digits
the published file's name carries: a truncated or damaged copy is refused in one line, never loaded as the
model. Offline: nothing is fetched, the folder is a temporary one."""

from __future__ import annotations

import hashlib

import pytest
import torch

from forensics.encode.weights import Sources, resolve
from forensics.errors import WeightsError


@pytest.fixture
def checkpoints(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FORENSICS_OFFLINE", "1")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def saved(folder, stem: str, *, name_digest: str | None = None):
    """A state dict saved as torch hub names a published file: ``stem-<first 8 hex of its sha256>.pth``."""
    path = folder / "tmp.pth"
    torch.save({"w": torch.arange(6.0)}, path)
    digest = name_digest or hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    final = folder / f"{stem}-{digest}.pth"
    path.rename(final)
    return final, f"https://download.example.org/models/{final.name}"


def test_a_torch_hub_copy_whose_bytes_match_its_name_is_used(checkpoints):
    path, url = saved(checkpoints, "net")
    found = resolve("net", None, Sources(urls=(url,), download=False))
    assert found.path == path and found.source == "cache" and "torch hub" in found.detail


def test_a_damaged_torch_hub_copy_is_refused_in_one_line_and_left_in_place(checkpoints):
    path, url = saved(checkpoints, "net")
    path.write_bytes(path.read_bytes()[:-10])  # a download that stopped short
    with pytest.raises(WeightsError) as info:
        resolve("net", None, Sources(urls=(url,), download=False))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not the file published under that name" in message
    assert path.is_file()  # nothing of the user's is deleted


def test_a_name_without_a_digest_is_not_checked(checkpoints):
    path = checkpoints / "M36_384.pth"  # timm's cfg URLs without a digest in the name
    torch.save({"w": torch.zeros(2)}, path)
    found = resolve("m36", None, Sources(urls=("https://example.org/M36_384.pth",), download=False))
    assert found.path == path
