"""Evidence as it arrives: what image files say of their processing, and what reading them leaves out.

Each test builds tiny image files with Pillow and checks what is read from them: the condition a folder
reads as (a JPEG's quality, JPEG inside a TIFF, chroma subsampling that loses nothing on grey content), the
one-line warnings for what reading leaves out (frames after the first, transparency) or for a declared
condition the files contradict, and the errors for an .npz's 'conditions' that cannot be taken.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from forensics.errors import UsageError
from forensics.io.images import read_image_set
from forensics.results import ImageInput

KEPT = ["none", "jpeg98", "jpeg95", "jpeg90", "jpeg75", "resize2", "resize2+jpeg90"]


def _digits(n: int = 6, size: int = 28, seed: int = 0) -> np.ndarray:
    """Grey digit-like images: a bright blob on black, with some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 6) ** 2))
        out.append(np.clip(blob + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8))
    return np.stack(out)


def _folder(tmp_path, name, images, suffix=".png", **save):
    folder = tmp_path / name
    folder.mkdir()
    files = []
    for i, a in enumerate(images):
        files.append(folder / f"{i:03d}{suffix}")
        Image.fromarray(a).save(files[-1], **save)
    return folder, files


def _record(files=(), n=None, sizes=((28, 28),), conditions=(), path="q"):
    n = len(files) if n is None else n
    return ImageInput(path, n, "sha256:0", files=tuple(files), sizes=tuple(sizes), conditions=tuple(conditions))


# -- 1: chroma subsampling decided by what it loses -----------------------------------------------------
def test_grey_content_saved_as_subsampled_rgb_jpeg_100_reads_as_generated(tmp_path):
    from forensics.conditions import detect, file_jpeg

    grey = _digits()
    _, files = _folder(tmp_path, "rgb420", [np.stack([a] * 3, -1) for a in grey], ".jpg", quality=100)  # 4:2:0
    assert Image.open(files[0]).mode == "RGB"
    assert file_jpeg(files[0]).subsampled is False  # flat chroma: subsampling lost nothing
    found = detect(files, KEPT)
    assert found.name == "none" and found.warning is None and "nothing quantised" in found.detail
    # the same pixels decode alike: the grey JPEG at 100 reads as generated too
    _, grey_files = _folder(tmp_path, "grey", grey, ".jpg", quality=100)
    assert detect(grey_files, KEPT).name == "none"


def test_colour_content_subsampled_at_jpeg_100_is_not_lossless_and_says_why(tmp_path):
    from forensics.conditions import detect, file_jpeg

    rng = np.random.default_rng(1)
    colour = [np.stack([a, np.roll(a, 3, 1), rng.integers(0, 256, a.shape).astype(np.uint8)], -1) for a in _digits()]
    _, files = _folder(tmp_path, "colour420", colour, ".jpg", quality=100)
    assert file_jpeg(files[0]).subsampled is True
    found = detect(files, KEPT)
    assert found.name == "jpeg98"
    assert "subsampled" in found.warning and "subsampling=0" in found.warning
    _, files444 = _folder(tmp_path, "colour444", colour, ".jpg", quality=100, subsampling=0)
    assert detect(files444, KEPT).name == "none"


# -- 2 and 10: frames after the first, and GIF ----------------------------------------------------------
def test_multi_frame_files_are_read_first_frame_with_a_warning_naming_them(tmp_path):
    frames = [Image.fromarray(a) for a in _digits(4)]
    folder = tmp_path / "multi"
    folder.mkdir()
    frames[0].save(folder / "all.tif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:3])
    Image.fromarray(_digits(1, seed=5)[0]).save(folder / "one.png")
    found = read_image_set(folder)
    assert len(found.images) == 3  # one image per file, as before
    (note,) = found.notes
    assert note.startswith("2 of the 3 files hold several frames")
    assert "all.tif 4 frames" in note and "anim.gif 3 frames" in note and "5 frames left out" in note
    assert "extract them to one image file each" in note
    # a set of ordinary files says nothing
    plain, _ = _folder(tmp_path, "plain", _digits(3))
    assert read_image_set(plain).notes == ()


def test_the_api_reading_hands_on_the_notes(tmp_path, toy_protocol):
    from forensics.api import read_images

    folder = tmp_path / "multi"
    folder.mkdir()
    frames = [Image.fromarray(a) for a in _digits(3)]
    frames[0].save(folder / "all.tif", save_all=True, append_images=frames[1:])
    data, record, notes = read_images(folder, toy_protocol())
    assert len(data) == record.n_images == 1
    assert notes == ("all.tif holds 3 frames: only the first frame of each file is read, 2 frames left out; to read "
                     "every frame, extract them to one image file each (e.g. with Pillow's ImageSequence) and give "
                     "that folder",)
    assert read_images(np.zeros((2, 8, 8), np.uint8), toy_protocol())[2] == ()


def test_gif_files_are_images(tmp_path):
    from forensics.io.images import scan_folder

    grey = _digits(3)
    folder, _ = _folder(tmp_path, "gif", grey, ".gif")
    files, skipped = scan_folder(folder)
    assert len(files) == 3 and not skipped
    found = read_image_set(folder)
    assert np.array_equal(found.images, grey)  # lossless palette data: the same pixels


def test_a_folder_with_no_image_files_says_what_was_skipped(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("a.heic", "b.heic", "notes.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    with pytest.raises(UsageError) as err:
        read_image_set(folder)
    message = str(err.value)
    assert "\n" not in message
    assert "holds no PNG/JPEG or other image files" in message
    assert "3 not images by their suffix (2 .heic, 1 .txt)" in message and "1 hidden" in message
    assert ".gif" in message and "convert others to PNG" in message


# -- 3: JPEG inside a TIFF ------------------------------------------------------------------------------
def test_jpeg_compressed_tiff_reads_its_quality_from_its_tables(tmp_path):
    from forensics.conditions import TiffJpegFile, detect, file_jpeg

    _, files = _folder(tmp_path, "tiffjpeg", _digits(), ".tif", compression="jpeg", quality=75)
    assert file_jpeg(files[0]) == (75, True, False) and isinstance(file_jpeg(files[0]), TiffJpegFile)
    found = detect(files, KEPT)
    assert found.name == "jpeg75" and "JPEG-compressed TIFF" in found.detail
    _, plain = _folder(tmp_path, "tiffraw", _digits(), ".tif")  # an uncompressed TIFF stays as generated
    assert detect(plain, KEPT).name == "none" and detect(plain, KEPT).warning is None


def test_jpeg_compressed_tiff_without_readable_tables_is_warned_of(tmp_path, monkeypatch):
    from forensics import conditions

    monkeypatch.setattr(conditions, "dqt_tables", lambda data: {})  # a TIFF whose JPEGTables hold no DQT
    _, files = _folder(tmp_path, "tiffjpeg", _digits(), ".tif", compression="jpeg", quality=75)
    found = conditions.detect(files, KEPT)
    assert found.name == "none"
    assert "JPEG-compressed TIFF" in found.warning and "--condition" in found.warning and "\n" not in found.warning


# -- 4: a declared condition the files contradict --------------------------------------------------------
def test_a_declared_condition_the_jpeg_files_contradict_is_used_with_a_warning(tmp_path):
    from forensics.api import _condition

    _, jpegs = _folder(tmp_path, "jpeg90", _digits(), ".jpg", quality=90)
    found = _condition("none", _record(jpegs), KEPT, (28, 28))
    assert found.name == "none" and found.source == "declared"
    assert found.warning.startswith("declared none, but the files read as jpeg90 (JPEG quality 90")
    assert found.warning.endswith("the declared condition was used")
    _, jpegs75 = _folder(tmp_path, "jpeg75", _digits(), ".jpg", quality=75)
    assert "read as jpeg75" in _condition("jpeg90", _record(jpegs75), KEPT, (28, 28)).warning
    assert "read as jpeg90" in _condition("resize2", _record(jpegs), KEPT, (28, 28)).warning
    # declared as the files say: nothing to warn of
    assert _condition("jpeg90", _record(jpegs), KEPT, (28, 28)).warning is None


def test_a_declared_condition_the_pngs_or_their_size_contradict_is_warned_of(tmp_path):
    from forensics.api import _condition

    _, pngs = _folder(tmp_path, "png", _digits())
    found = _condition("jpeg90", _record(pngs), KEPT, (28, 28))
    assert found.name == "jpeg90" and found.warning.startswith("declared jpeg90, but the files read as none")
    assert _condition("none", _record(pngs), KEPT, (28, 28)).warning is None
    _, big = _folder(tmp_path, "up2", _digits(size=56))
    found = _condition("none", _record(big, sizes=((56, 56),)), KEPT, (28, 28))
    assert found.name == "none" and found.resample_to == (28, 28)
    assert "read as resize2" in found.warning and "56×56" in found.warning
    assert _condition("resize2", _record(big, sizes=((56, 56),)), KEPT, (28, 28)).warning is None
    # an array carries no record of its encoding: declaring one for it is not contradicted
    assert _condition("jpeg90", _record(n=4), KEPT, (28, 28)).warning is None


def test_a_declared_condition_over_an_npz_s_own_conditions_is_warned_of():
    from forensics.api import _condition

    record = _record(n=4, conditions=["jpeg90"] * 3 + ["none"])
    found = _condition("none", record, KEPT, (28, 28))
    assert found.name == "none" and found.mixture is None
    assert found.warning == ("declared none, but the .npz's own 'conditions' name jpeg90 3 + none 1: the declared "
                             "condition was used")
    assert _condition("auto", record, KEPT, (28, 28), mixtures=True).warning is None


# -- 7: transparency --------------------------------------------------------------------------------------
def test_transparency_is_dropped_as_before_but_warned_of(tmp_path):
    folder = tmp_path / "alpha"
    folder.mkdir()
    for i, a in enumerate(_digits(3)):  # the digit in alpha, white colour: a "transparent PNG" export
        Image.fromarray(np.dstack([np.full_like(a, 255)] * 3 + [a])).save(folder / f"{i}.png")
    Image.fromarray(np.dstack([_digits(1)[0]] * 3 + [np.full((28, 28), 255, np.uint8)])).save(folder / "opaque.png")
    found = read_image_set(folder)
    assert (found.images[:3] == 255).all()  # what is read is unchanged: alpha dropped
    (note,) = found.notes
    assert note.startswith("3 of the 4 images carry transparency (alpha below 255), which is dropped")
    assert "flatten them onto their background first" in note
    opaque, _ = _folder(tmp_path, "opaque", [np.dstack([a] * 3 + [np.full_like(a, 255)]) for a in _digits(2)])
    assert read_image_set(opaque).notes == ()


# -- 9: an .npz's 'conditions' ------------------------------------------------------------------------------
def test_an_empty_conditions_array_is_refused_like_a_wrong_length(tmp_path):
    images = _digits(4)
    np.savez(tmp_path / "empty.npz", images=images, conditions=np.array([], dtype="<U8"))
    with pytest.raises(UsageError, match="names 0 conditions for 4 images"):
        read_image_set(tmp_path / "empty.npz")


def test_conditions_as_bytes_are_read_as_ascii_names_and_other_dtypes_are_named(tmp_path):
    images = _digits(2)
    np.savez(tmp_path / "bytes.npz", images=images, conditions=np.array([b"none", b"jpeg90"]))
    assert read_image_set(tmp_path / "bytes.npz").conditions == ("none", "jpeg90")
    np.savez(tmp_path / "latin.npz", images=images, conditions=np.array([b"n\xe9", b"none"]))
    with pytest.raises(UsageError, match=r"'conditions' are bytes \(dtype \|S4\) that are not ASCII"):
        read_image_set(tmp_path / "latin.npz")
    np.savez(tmp_path / "ints.npz", images=images, conditions=np.array([0, 1]))
    with pytest.raises(UsageError, match=r"must be condition names.*these are of dtype int64, not strings"):
        read_image_set(tmp_path / "ints.npz")
    np.savez(tmp_path / "objects.npz", images=images, conditions=np.array(["none", "none"], dtype=object))
    with pytest.raises(UsageError, match=r"these are Python objects \(dtype object\)"):
        read_image_set(tmp_path / "objects.npz")


def test_a_condition_the_registry_does_not_keep_is_said_to_come_from_the_npz():
    from forensics.api import _condition

    record = _record(n=4, conditions=["none", "none", "jpeg60", "jpeg60"], path="set.npz")
    with pytest.raises(UsageError) as err:
        _condition("auto", record, KEPT, (28, 28), mixtures=True)
    message = str(err.value)
    assert message.startswith("set.npz: its 'conditions' name 'jpeg60' (2 image(s), the first image 3)")
    assert "registry records" in message and "--condition jpeg75" in message and "\n" not in message


def test_images_of_another_shape_are_said_to_be_stretched_not_only_resized():
    # 56×28 from 28×28 is no resize by any one factor: matched as the nearest resampling, but the warning says
    # the shape changed (it said only "×1.41, a guess"); images of the generators' shape keep the plain rule
    from forensics.conditions import geometry

    kept = ["none", "resize2", "resize0.5", "crop90"]
    stretched = geometry(None, (28, 56), (28, 28), kept)
    assert "of another shape than the 28×28" in stretched.warning and "width to height 2 against 1" in stretched.warning
    for size in ((56, 56), (14, 14), (25, 25)):  # the kept resamplings, exactly: nothing to say
        assert geometry(None, size, (28, 28), kept).warning is None, size
    assert "another shape" not in geometry(None, (26, 26), (28, 28), kept).warning  # a scale no condition has
