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
