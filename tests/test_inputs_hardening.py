"""Inputs that cannot lie and outputs that cannot reach outside (issue 26, items 3, 6, 11, 14): real files,
real FIFOs and device nodes, the real command line in a subprocess; property tests of the readers."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from forensics.errors import ForensicsError, UsageError
from forensics.io.atomic import check_output_path, write_text_atomic
from forensics.io.hashing import sha256_array
from forensics.io.images import decode_image, load_images

ROOT = Path(__file__).resolve().parents[1]
DDPM = ROOT / "registry/mnist-effnet-lite0/samples/ddpm/heldout.npz"
CLI = Path(sys.executable).parent / "forensics"


def cli(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- item 6: pixels are read for what they mean ---------------------------------------------------
def test_16_bit_copy_of_a_shipped_set_reads_as_the_8_bit_set(tmp_path):
    images = np.load(DDPM)["images"][:12]
    (tmp_path / "8").mkdir(), (tmp_path / "16").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "8" / f"{i:02}.png")
        Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "16" / f"{i:02}.png")
    with Image.open(tmp_path / "16" / "00.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    eight, sixteen = load_images(tmp_path / "8"), load_images(tmp_path / "16")
    assert np.array_equal(sixteen[0], images) and sixteen[1] == eight[1]


def test_float_tiff_in_unit_range_is_scaled_and_others_refused(tmp_path):
    images = np.load(DDPM)["images"][:4]
    for i, image in enumerate(images):
        Image.fromarray((image / 255).astype(np.float32)).save(tmp_path / f"{i}.tif")
    got, _ = load_images(tmp_path)
    assert np.array_equal(got, images)  # not black
    for name, values in {"big.tif": np.full((5, 5), 3.0), "nan.tif": np.full((5, 5), np.nan)}.items():
        Image.fromarray(values.astype(np.float32)).save(tmp_path / name)
        with pytest.raises(UsageError, match=r"\[0, 1\]") as info:
            decode_image(tmp_path / name)
        assert "\n" not in str(info.value)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(6 * 4, dtype=np.uint8).reshape(4, 6) * 10
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90° clockwise
    Image.fromarray(pixels).save(tmp_path / "a.png", exif=exif)
    assert np.array_equal(decode_image(tmp_path / "a.png"), np.rot90(pixels, -1))


def test_same_pixels_same_hash_whatever_the_mode(tmp_path):
    grey = np.load(DDPM)["images"][:3]
    digests = {}
    for mode in ("L", "P", "LA", "I16"):
        folder = tmp_path / mode
        folder.mkdir()
        for i, image in enumerate(grey):
            im = Image.fromarray(image)
            if mode in ("P", "LA"):
                im = im.convert(mode)
            elif mode == "I16":
                im = Image.fromarray(image.astype(np.uint16) * 257)
            im.save(folder / f"{i}.png")
        digests[mode] = load_images(folder)
    for mode in ("P", "LA", "I16"):
        assert np.array_equal(digests[mode][0], grey) and digests[mode][1] == digests["L"][1], mode
    bilevel = (grey > 127).astype(np.uint8) * 255
    for sub, make in {"1": lambda b: Image.fromarray(b).convert("1"), "L1": Image.fromarray}.items():
        (tmp_path / sub).mkdir()
        for i, image in enumerate(bilevel):
            make(image).save(tmp_path / sub / f"{i}.png")
    assert load_images(tmp_path / "1")[1] == load_images(tmp_path / "L1")[1]


# -- item 11: budgets, checked from headers ---------------------------------------------------------
def _png_declaring(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header declares width × height (a decompression bomb's header)."""
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_pixel_budget_is_checked_from_the_header(tmp_path, monkeypatch):
    (tmp_path / "set").mkdir()
    _png_declaring(tmp_path / "set" / "bomb.png", 60000, 60000)  # 3.6 GP in 70 bytes
    assert (tmp_path / "set" / "bomb.png").stat().st_size < 200
    with pytest.raises(UsageError, match="FORENSICS_MAX_PIXELS"):
        load_images(tmp_path / "set")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setenv("FORENSICS_MAX_PIXELS", "1000")
    with pytest.raises(UsageError, match="64×64 pixels is over the limit of 1,000"):
        decode_image(tmp_path / "small.png")
    monkeypatch.setenv("FORENSICS_MAX_PIXELS", "4096")
    assert decode_image(tmp_path / "small.png").shape == (64, 64)
    monkeypatch.setenv("FORENSICS_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match="positive whole number"):
        decode_image(tmp_path / "small.png")


@pytest.mark.slow  # a CLI subprocess (torch import): ~5 s
def test_decompression_bomb_is_one_line_through_the_cli(tmp_path):
    (tmp_path / "set").mkdir()
    _png_declaring(tmp_path / "set" / "bomb.png", 30000, 30000)
    one_line_error(cli("attribute", str(tmp_path / "set")), 2, "FORENSICS_MAX_PIXELS")


def _npy_declaring(path: Path, shape: tuple, descr: str = "|u1", payload: bytes = b"\0" * 64) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(payload)


def test_array_headers_are_checked_before_allocating(tmp_path, monkeypatch):
    _npy_declaring(tmp_path / "huge.npy", (10**12, 28, 28))
    with pytest.raises(UsageError, match="FORENSICS_MAX_IMAGES"):
        load_images(tmp_path / "huge.npy")
    _npy_declaring(tmp_path / "short.npy", (50_000, 28, 28))  # within limits, but the bytes are not there
    with pytest.raises(UsageError, match="cut short"):
        load_images(tmp_path / "short.npy")
    _npy_declaring(tmp_path / "wide.npy", (1, 100_000, 100_000))
    with pytest.raises(UsageError, match="FORENSICS_MAX_PIXELS"):
        load_images(tmp_path / "wide.npy")
    # the same header inside an .npz member
    import zipfile
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("images.npy", (tmp_path / "huge.npy").read_bytes())
    with pytest.raises(UsageError, match="FORENSICS_MAX_IMAGES"):
        load_images(tmp_path / "huge.npz")
    np.save(tmp_path / "ten.npy", np.zeros((10, 4, 4), np.uint8))
    monkeypatch.setenv("FORENSICS_MAX_IMAGES", "9")
    with pytest.raises(UsageError, match="10 images are over the limit of 9"):
        load_images(tmp_path / "ten.npy")
    monkeypatch.setenv("FORENSICS_MAX_IMAGES", "10")
    assert load_images(tmp_path / "ten.npy")[0].shape == (10, 4, 4)


@pytest.mark.slow  # a CLI subprocess (torch import): ~5 s
def test_huge_npy_header_is_one_line_through_the_cli(tmp_path):
    _npy_declaring(tmp_path / "huge.npy", (10**12, 28, 28))
    one_line_error(cli("attribute", str(tmp_path / "huge.npy")), 2, "FORENSICS_MAX_IMAGES")


def test_images_per_run_limit_for_folders(tmp_path, monkeypatch):
    for i in range(5):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{i}.png")
    monkeypatch.setenv("FORENSICS_MAX_IMAGES", "4")
    with pytest.raises(UsageError, match="5 images are over the limit of 4"):
        load_images(tmp_path)


def test_fifo_and_devices_are_refused_never_opened(tmp_path):
    fifo = tmp_path / "in.npz"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        load_images(fifo)  # would block forever if opened
    with pytest.raises(UsageError, match="not a regular file"):
        load_images("/dev/zero")
    (tmp_path / "set").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "set" / "a.png")
    os.mkfifo(tmp_path / "set" / "b.png")
    with pytest.raises(UsageError, match="not a regular file"):
        load_images(tmp_path / "set")
    with pytest.raises(UsageError, match="not a regular file"):
        decode_image(tmp_path / "set" / "b.png")


@pytest.mark.slow  # a CLI subprocess (torch import): ~5 s
def test_fifo_through_the_cli_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "in.npz")
    one_line_error(cli("attribute", str(tmp_path / "in.npz"), timeout=60), 2, "not a regular file")


# -- item 14: bad inputs are usage errors, in one line ----------------------------------------------
def test_odd_inputs_are_one_line_usage_errors(tmp_path):
    np.save(tmp_path / "empty_float.npy", np.zeros((0, 8, 8), np.float32))
    np.save(tmp_path / "zero_size.npy", np.zeros((3, 0, 0), np.uint8))
    np.save(tmp_path / "nan.npy", np.full((2, 4, 4), np.nan, np.float32))
    np.save(tmp_path / "complex.npy", np.zeros((2, 4, 4), np.complex64))
    np.save(tmp_path / "timedelta.npy", np.zeros((2, 4, 4), "m8[s]"))
    expect = {"empty_float.npy": "holds no images", "zero_size.npy": "0×0 pixels", "nan.npy": "NaN",
              "complex.npy": "numbers", "timedelta.npy": "numbers"}
    for name, needle in expect.items():
        with pytest.raises(UsageError, match=needle) as info:
            load_images(tmp_path / name)
        assert "\n" not in str(info.value), name
    long = tmp_path / (("x" * 200 + "/") * 30) / "set.npz"  # longer than PATH_MAX
    with pytest.raises(UsageError, match="cannot read") as info:
        load_images(long)
    assert len(str(info.value)) < 400


@pytest.mark.slow  # a CLI subprocess (torch import): ~5 s
def test_nan_array_through_the_cli_leaks_no_numpy_warning(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((2, 4, 4), np.nan, np.float32))
    one_line_error(cli("attribute", str(tmp_path / "nan.npy")), 2, "NaN")


def test_upper_case_suffixes_are_accepted(tmp_path):
    images = np.load(DDPM)["images"][:5]
    with open(tmp_path / "A.NPZ", "wb") as f:  # (numpy would append .npz to a path)
        np.savez(f, images=images)
    with open(tmp_path / "B.NPY", "wb") as f:
        np.save(f, images)
    for name in ("A.NPZ", "B.NPY"):
        got, digest = load_images(tmp_path / name)
        assert np.array_equal(got, images) and digest == sha256_array(images), name


# -- item 3: output paths -----------------------------------------------------------------------------
def test_output_paths_that_cannot_be_replaced_are_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "link.html").symlink_to(target)
    (tmp_path / "dir.html").mkdir()
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "fifo.html")
    refused = {tmp_path / "link.html": "symbolic link", "/dev/null": "not a regular file",
               "/dev/full": "not a regular file", tmp_path / "dir.html": "a folder",
               tmp_path / "fifo.html": "not a regular file", tmp_path / "missing" / "r.html": "does not exist",
               tmp_path / "file" / "r.html": "cannot write", tmp_path / ("n" * 300 + ".html"): "too long|longer than",
               tmp_path / "bad\ud800.html": "cannot be encoded"}
    for path, needle in refused.items():
        with pytest.raises(UsageError, match=needle) as info:
            check_output_path(path)
        assert "\n" not in str(info.value)
    # write_atomic enforces the same: the link and the device are left as they were
    for path in (tmp_path / "link.html", Path("/dev/null")):
        with pytest.raises(UsageError):
            write_text_atomic(path, "report")
    assert (tmp_path / "link.html").is_symlink() and target.read_text() == "keep me"
    assert Path("/dev/null").is_char_device()
    ok = tmp_path / "ok.html"
    assert check_output_path(ok) == ok and not ok.exists()  # the probe leaves nothing behind
    assert list(tmp_path.glob(".*tmp")) == []
    write_text_atomic(tmp_path / ("m" * 250 + ".html"), "a long name still has room for its temporary file")


def test_curate_out_is_checked_before_the_run(tmp_path):
    np.savez(tmp_path / "src.npz", images=np.load(DDPM)["images"][:4])
    proc = cli("curate", str(tmp_path / "src.npz"), "--kind", "copy", "--out", "/dev/null")
    one_line_error(proc, 2, "/dev/null")
    assert Path("/dev/null").is_char_device()


# -- property tests: anything either loads as uint8 images or fails with the documented type --------
def _loads_or_refuses(path: Path) -> None:
    try:
        images, digest = load_images(path)
    except ForensicsError as exc:
        assert "\n" not in str(exc)
        return
    assert images.dtype == np.uint8 and images.ndim in (3, 4) and images.size > 0 and digest.startswith("sha256:")


def _valid_bytes(kind: str) -> bytes:
    import io
    buf = io.BytesIO()
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    if kind in ("png", "jpg"):
        Image.fromarray(pixels).save(buf, format={"png": "PNG", "jpg": "JPEG"}[kind])
    elif kind == "npy":
        np.save(buf, pixels[None])
    else:
        np.savez(buf, images=pixels[None])
    return buf.getvalue()


@pytest.mark.parametrize("damage", [(b"'fortran_order'", b"("), (b"'shape'", b"["), (b"}", b"{")])
def test_an_npy_header_with_unbalanced_brackets_is_a_usage_error(tmp_path, damage):
    # numpy tokenizes the header and raises tokenize.TokenError, not ValueError, on an unbalanced one
    raw = bytearray(_valid_bytes("npy"))
    marker, bracket = damage
    at = raw.index(marker) - (2 if marker.startswith(b"'") else 0)
    raw[at:at + 1] = bracket
    path = tmp_path / "damaged.npy"
    path.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="not a readable .npy image array"):
        load_images(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["png", "jpg", "npy", "npz"]), data=st.data())
def test_arbitrary_bytes_load_or_are_refused(tmp_path, kind, data):
    valid = _valid_bytes(kind)
    how = data.draw(st.sampled_from(["random", "prefix", "flip", "cut"]))
    if how == "random":
        blob = data.draw(st.binary(max_size=300))
    elif how == "prefix":
        blob = valid[:8] + data.draw(st.binary(max_size=300))
    elif how == "flip":
        blob = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 6))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    else:
        blob = valid[:data.draw(st.integers(0, len(valid)))]
    folder = tmp_path / f"case-{kind}-{abs(hash(blob))}"
    folder.mkdir(exist_ok=True)
    if kind in ("png", "jpg"):
        (folder / f"a.{kind}").write_bytes(blob)
        _loads_or_refuses(folder)
    else:
        (folder / f"a.{kind}").write_bytes(blob)
        _loads_or_refuses(folder / f"a.{kind}")


_DTYPES = st.sampled_from(["u1", "i1", "u2", "<i4", ">i4", "i8", "f2", "f4", "<f8", ">f8", "?", "c8"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(dtype=_DTYPES.map(np.dtype), shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0,
                                                                              max_side=5)))
def test_arbitrary_arrays_load_or_are_refused(tmp_path, array):
    path = tmp_path / f"a{abs(hash(array.tobytes()))}-{array.dtype.str}-{'x'.join(map(str, array.shape))}.npy"
    np.save(path, array)
    _loads_or_refuses(path)
    np.savez(path.with_suffix(".npz"), images=array)
    _loads_or_refuses(path.with_suffix(".npz"))
