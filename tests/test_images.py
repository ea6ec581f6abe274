"""Reading image sets: folders of any size and mode, .npz/.npy arrays, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from forensics.errors import UsageError
from forensics.io.hashing import sha256_array
from forensics.io.images import (
    as_rgb_uint8, as_uint8_images, check_image_input, decode_image, images_digest, load_images,
)


def test_npz_and_npy_roundtrip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    np.save(tmp_path / "b.npy", images)
    for name in ("a.npz", "b.npy"):
        got, digest = load_images(tmp_path / name)
        assert np.array_equal(got, images)
        assert digest == sha256_array(images)


def test_npz_needs_a_named_array_when_several(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UsageError, match="name the image array 'images'"):
        load_images(tmp_path / "x.npz")


def test_an_npz_may_name_each_images_condition_and_nothing_else_is_read_from_it(tmp_path, monkeypatch):
    import zipfile

    from forensics.io.images import read_image_set

    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, conditions=np.array(["none", "jpeg90", "none", "resize2+jpeg75"]))
    found = read_image_set(tmp_path / "a.npz")
    assert found.conditions == ("none", "jpeg90", "none", "resize2+jpeg75") and found.sha256 == sha256_array(images)
    assert read_image_set(tmp_path / "a.npz").images.tobytes() == images.tobytes()
    np.savez(tmp_path / "plain.npz", images=images)
    assert read_image_set(tmp_path / "plain.npz").conditions == ()
    # Python objects are refused from the header, before numpy would unpickle them
    np.savez(tmp_path / "objects.npz", images=images, conditions=np.array([{"a": 1}] * 4, dtype=object))
    unpickled = []
    monkeypatch.setattr("pickle.loads", lambda *a, **k: unpickled.append(a))
    with pytest.raises(UsageError, match="'conditions' must be condition names"):
        read_image_set(tmp_path / "objects.npz")
    assert not unpickled
    # a member cut short is refused before it is read
    with zipfile.ZipFile(tmp_path / "a.npz") as src, zipfile.ZipFile(tmp_path / "short.npz", "w") as dst:
        dst.writestr("images.npy", src.read("images.npy"))
        dst.writestr("conditions.npy", src.read("conditions.npy")[:-20])
    with pytest.raises(UsageError, match="cut short"):
        read_image_set(tmp_path / "short.npz")


def test_folder_of_mixed_modes_is_rgb_and_hash_is_of_pixels(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (10, 10), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(grey).save(tmp_path / "b.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "c.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "d.png")
    images, digest = load_images(tmp_path)
    assert images.shape == (4, 10, 10, 3) and images.dtype == np.uint8
    assert np.array_equal(images[1], np.repeat(grey[..., None], 3, -1))
    # the same pixels saved again (other compression) give the same hash
    Image.fromarray(rgb).save(tmp_path / "a.png", compress_level=0)
    assert load_images(tmp_path)[1] == digest


def test_folder_of_different_sizes_uses_protocol_resize(tmp_path):
    Image.fromarray(np.full((20, 30), 100, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(tmp_path / "b.jpg")
    with pytest.raises(UsageError, match="different sizes"):
        load_images(tmp_path)
    images, _ = load_images(tmp_path, size=16, resize=18)
    assert images.shape == (2, 16, 16)
    assert abs(int(images[0].mean()) - 100) <= 1 and abs(int(images[1].mean()) - 200) <= 2


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no PNG/JPEG"):
        load_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="cannot decode .*x.png.*; repair it, or move it out of the images"):
        load_images(tmp_path / "bad")
    with pytest.raises(UsageError, match=r"float images in \[0, 1\]: multiply by 255"):
        as_uint8_images(np.full((2, 4, 4), 0.5))
    with pytest.raises(UsageError, match="expected images shaped"):
        as_uint8_images(np.zeros((2, 4), np.uint8))


def test_unreadable_array_files_are_usage_errors_that_say_what_to_write(tmp_path):
    # never unpickled, never a raw numpy traceback: a text file, a cut-short download, object arrays
    images = np.zeros((3, 8, 8), np.uint8)
    np.savez(tmp_path / "good.npz", images=images)
    (tmp_path / "text.npz").write_text("not an array")
    (tmp_path / "text.npy").write_text("not an array")
    (tmp_path / "short.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:100])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    expect = {"text.npz": "is not an .npz file", "text.npy": "is not an .npy file",
              "short.npz": "damaged or cut short", "objects.npy": "holds Python objects",
              "objects.npz": "holds Python objects"}
    for name, message in expect.items():
        with pytest.raises(UsageError, match=message) as info:
            load_images(tmp_path / name)
        assert "numpy.savez(path, images=uint8_array)" in str(info.value) and "\n" not in str(info.value)


def test_channels_first_and_integral_floats_are_accepted():
    chw = np.random.default_rng(2).integers(0, 256, (3, 3, 8, 8)).astype(np.float64)
    out = as_uint8_images(chw)
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8


def test_folder_decoded_in_worker_processes_is_identical(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    serial = load_images(tmp_path)
    parallel = load_images(tmp_path, workers=2)
    assert np.array_equal(serial[0], parallel[0]) and serial[1] == parallel[1]


def _odd_modes(rng) -> dict:
    rgb = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    return {
        "L.png": rgb.convert("L"), "1.png": rgb.convert("1"), "P.png": rgb.convert("P"), "LA.png": rgb.convert("LA"),
        "RGBA.png": rgb.convert("RGBA"), "CMYK.tif": rgb.convert("CMYK"),
        "I.tif": Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.int32)),
    }


def test_decoded_files_in_colour_are_pillows_rgb_conversion(tmp_path):
    # load_images keeps grey images grey; what an encoder is given is the same as Pillow's RGB
    for name, image in _odd_modes(np.random.default_rng(4)).items():
        image.save(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            expected = np.array(im.convert("RGB"))
        pixels = decode_image(tmp_path / name)
        assert pixels.dtype == np.uint8 and pixels.ndim in (2, 3), name
        assert np.array_equal(as_rgb_uint8(pixels[None])[0], expected), name


def test_16_bit_and_float_files_are_scaled_not_clipped(tmp_path):
    # (16-bit and float files: tests/test_inputs_hardening.py has the whole story)
    rng = np.random.default_rng(6)
    values = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "I16.png")
    assert np.array_equal(decode_image(tmp_path / "I16.png"), ((values.astype(np.int64) + 128) // 257).astype(np.uint8))
    unit = rng.uniform(0, 1, (9, 11)).astype(np.float32)
    Image.fromarray(unit).save(tmp_path / "F.tif")
    assert np.array_equal(decode_image(tmp_path / "F.tif"), np.rint(unit.astype(np.float64) * 255).astype(np.uint8))


def test_array_digest_is_the_recorded_one_and_file_digest_is_of_bytes(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    assert images_digest(images) == load_images(tmp_path / "a.npz")[1]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    paths = sorted(tmp_path.glob("*.png"))
    digest = images_digest(paths)
    assert images_digest([str(p) for p in paths]) == digest
    assert images_digest(paths[::-1]) != digest  # an image set is ordered
    Image.fromarray(images[0]).save(paths[0], compress_level=0)  # same pixels, other bytes
    assert images_digest(paths) != digest


def test_what_an_encoder_is_given():
    grey = np.zeros((2, 5, 5), np.uint8)
    assert as_rgb_uint8(grey).shape == (2, 5, 5, 3)
    assert as_rgb_uint8(np.zeros((2, 5, 5, 4), np.uint8)).shape == (2, 5, 5, 3)
    with pytest.raises(UsageError, match="must be uint8"):
        as_rgb_uint8(grey.astype(np.float32))
    with pytest.raises(UsageError, match="C in 1, 3, 4"):
        as_rgb_uint8(np.zeros((2, 5, 5, 2), np.uint8))
    with pytest.raises(UsageError, match="list of image files"):
        check_image_input(42)


def test_files_of_many_sizes_are_read_in_one_clause_per_condition(tmp_path):
    """A folder of 40 images in 20 sizes near the generators' 28×28: each matched as the crop its size suggests,
    said once for them all with the range of sizes, not once per size (a 12 KB warning line before)."""
    from forensics.conditions import CONDITIONS, mixed

    files, sizes = [], []
    for i in range(40):
        h, w = 29 + i % 4, 29 + (i // 4) % 5
        Image.fromarray(np.full((h, w), i * 5, np.uint8)).save(tmp_path / f"{i:02d}.png")
        files.append(tmp_path / f"{i:02d}.png")
        sizes.append((h, w))
    found = mixed(files, list(CONDITIONS), image_sizes=sizes, native=(28, 28))
    assert found.name == "crop90" and found.warning.count("of the 40 files") == 1
    assert "40 of the 40 files, of 20 sizes from 29×29 to 33×32" in found.warning


def test_an_npz_with_no_arrays_says_how_to_write_one(tmp_path):
    from forensics.io.images import read_image_set

    np.savez(tmp_path / "empty.npz")
    with pytest.raises(UsageError, match="holds no arrays; write one with numpy.savez"):
        read_image_set(tmp_path / "empty.npz")
