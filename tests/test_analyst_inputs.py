"""Evidence as it arrives, read by ``attribute`` and ``memorization``: arrays and files an analyst is given,
each either read as its pixels mean or refused in one line that says what to do with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forensics.errors import UsageError
from forensics.io.images import as_uint8_images
from test_cli_ux import VIT, fake_engine, labelled  # noqa: F401 - fake_engine is a fixture


@pytest.mark.parametrize("array, advice", [
    (np.full((2, 4, 4), 40000, np.uint16), r"16-bit images: divide by 257 and round first"),
    (np.full((2, 4, 4), 0.5, np.float32), r"float images in \[0, 1\]: multiply by 255 and round first"),
    (np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 4, 4), r"images in \[-1, 1\] .*\(a \+ 1\) \* 127\.5"),
    (np.full((2, 4, 4), 12.5), r"round them to whole numbers first"),
    (np.full((2, 4, 4), np.nan), r"replace the NaN or infinite values"),
    (np.full((2, 4, 4), 1000, np.int32), r"bring them to 0\.\.255 as their writer scaled them"),
])
def test_an_array_not_in_0_255_is_refused_with_what_to_do_for_what_it_holds(array, advice):
    # a uint16 array (a 16-bit export) was told to "scale float images by 255", a [-1, 1] float array (a
    # generator's own output) too: advice that makes things worse
    with pytest.raises(UsageError, match=advice) as refused:
        as_uint8_images(array, "set.npz")
    assert "\n" not in str(refused.value) and str(refused.value).startswith("set.npz: images must be uint8")
    if "scale float images by 255" in str(refused.value):
        pytest.fail(str(refused.value))


def test_the_advice_given_for_a_16_bit_array_reads_it_as_the_16_bit_png_reader_does(tmp_path):
    # following the advice gives the very pixels the same images saved as 16-bit PNG read as
    from PIL import Image

    from forensics.io.images import decode_image

    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    wide = grey.astype(np.uint16) * 257 + np.uint16(100)  # not exactly 257 × an 8-bit value
    Image.fromarray(wide).save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png"), np.round(wide / 257).astype(np.uint8))


def test_the_repeats_warning_names_which_files_repeat_which(fake_engine, tmp_path):
    # "1 of the 121 images repeat an earlier image" left the analyst to find the file kept twice among 121
    from PIL import Image

    import forensics

    images = labelled((1, 120))
    folder = tmp_path / "case"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    Image.fromarray(images[7]).save(folder / "sub" / "copy of 007.png")
    (line,) = [w for w in forensics.attribute(folder, protocol=VIT).warnings if "repeat" in w]
    assert "1 of the 121 images repeat an earlier image" in line and "e.g. sub/copy of 007.png repeats 007.png" in line
    np.savez(tmp_path / "set.npz", images=np.concatenate([images, images[[3, 3, 4, 5]]]))
    (line,) = [w for w in forensics.attribute(tmp_path / "set.npz", protocol=VIT).warnings if "repeat" in w]
    assert ("e.g. image 120 repeats image 3, image 121 repeats image 3, image 122 repeats image 4, … (counting from 0)"
            in line), line


def test_repeat_of_points_each_repeat_at_the_first_of_its_group():
    from forensics.io.images import repeat_of, repeated

    images = np.zeros((6, 4, 4), np.uint8)
    images[1] = images[4] = 1
    images[3] = 2
    assert repeat_of(images).tolist() == [-1, -1, 0, -1, 1, 0]
    assert repeated(images).tolist() == [False, False, True, False, True, True]


def test_in_colour_is_true_where_the_red_green_and_blue_channels_differ():
    from forensics.io.images import in_colour

    grey = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    assert in_colour(grey).tolist() == [False] * 4
    assert in_colour(grey[..., None]).tolist() == [False] * 4
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert in_colour(rgb).tolist() == [False] * 4  # a grey image read as RGB is grey
    rgba = np.concatenate([rgb, np.arange(4 * 9, dtype=np.uint8).reshape(4, 3, 3, 1)], axis=-1)
    assert in_colour(rgba).tolist() == [False] * 4  # alpha is not colour
    rgb[1, 2, 0, 2] += 3  # one blue value of one pixel, beyond a codec's rounding
    rgb[2, 1, 1, 0] += 2  # as lossy WebP gives a grey image back: a level or two apart
    rgb[3, ..., 0] = 0
    assert in_colour(rgb).tolist() == [False, True, False, True]


def test_a_grey_image_saved_as_lossy_webp_or_jpeg_reads_back_grey(tmp_path):
    # WebP stores colour planes whatever the image: a grey digit comes back with channels a level apart
    from PIL import Image

    from forensics.io.images import in_colour, read_image_set

    digits = labelled((1, 6))
    digits[:, 5:20, 5:20] = np.arange(15 * 15, dtype=np.uint8).reshape(15, 15)  # edges for the codecs to blur
    for kind, options in (("webp", {"quality": 50}), ("jpg", {"quality": 75})):
        (tmp_path / kind).mkdir()
        for i, image in enumerate(digits):
            Image.fromarray(image).convert("RGB").save(tmp_path / kind / f"{i}.{kind}", **options)
        read = read_image_set(tmp_path / kind).images
        assert read.shape[:3] == digits.shape and not in_colour(read).any(), kind


def test_a_query_in_colour_against_generators_that_made_grey_images_is_warned_of(fake_engine):
    # a tinted copy of a grey generator's images came back "unknown", far from every generator, with no word
    # of why; the enrolled instances record whether their images were in colour, and a query unlike all is said
    import forensics

    refs = forensics.open_registry().enrolled(VIT)
    assert {r.provenance.get("image_colour") for r in refs} == {False}  # the bundled zoo: grey digits
    grey = labelled((1, 500))
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    tinted = as_rgb.copy()
    tinted[..., 2] = 200  # blue where the digits are black

    def colour_warnings(images):
        return [w for w in forensics.attribute(images, protocol=VIT).warnings if "colour" in w]

    assert colour_warnings(grey) == [] and colour_warnings(as_rgb) == []
    (line,) = colour_warnings(tinted)
    assert line.startswith("500 of the 500 images are in colour, and every generator enrolled under mnist-vit made "
                           "grey images") and "\n" not in line
    as_rgb[:7] = tinted[:7]
    (line,) = colour_warnings(as_rgb)
    assert line.startswith("7 of the 500 images are in colour")
    # asked whether they copy T, the generators stand for T (as for its size): a tinted copy lies away from it
    (line,) = [w for w in forensics.memorization(tinted, protocol=VIT).warnings if "colour" in w]
    assert "made grey images, as T's are: a copy of a training image in other colours lies away from it, so " \
           "copying may read as none" in line
    assert not [w for w in forensics.memorization(grey, protocol=VIT).warnings if "colour" in w]


def test_the_colour_warning_needs_every_instance_to_say_and_to_agree():
    from types import SimpleNamespace

    from forensics.api import _colour_unlike

    def refs(*colours):
        return [SimpleNamespace(provenance={} if c is None else {"image_colour": c}) for c in colours]

    grey, tinted = np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 4, 3), np.uint8)
    tinted[0, 0, 0, 0] = 9
    assert _colour_unlike(tinted, refs(False, False), "p").startswith("1 of the 3 images are in colour")
    assert _colour_unlike(grey, refs(True, True), "p").startswith(
        "the images are grey, and every generator enrolled under p made colour images")
    for alike in ((grey, refs(False)), (tinted, refs(True)), (tinted, refs(True, False)), (grey, refs(True, None)),
                  (tinted, refs(False, None)), (tinted, [])):
        assert _colour_unlike(*alike, "p") is None


def test_a_broken_link_among_the_images_is_named_as_one(tmp_path):
    # it read "case/zz.png does not exist; give a folder of PNG/JPEG images or an .npz/.npy file", to an
    # analyst who had given a folder
    from PIL import Image

    from forensics.io.images import read_image_set

    (tmp_path / "case").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "case" / "a.png")
    (tmp_path / "case" / "zz.png").symlink_to(tmp_path / "gone" / "x.png")
    with pytest.raises(UsageError) as refused:
        read_image_set(tmp_path / "case")
    said = str(refused.value)
    assert said.startswith(f"{tmp_path / 'case' / 'zz.png'} is a link to nothing") and "repair or remove the link" in said
    assert "give a folder" not in said
    (tmp_path / "link.npz").symlink_to(tmp_path / "gone.npz")  # given itself: the same line
    with pytest.raises(UsageError, match="is a link to nothing"):
        read_image_set(tmp_path / "link.npz")


def test_an_empty_image_file_is_said_to_be_empty(tmp_path):
    from PIL import Image

    from forensics.io.images import read_image_set

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(UsageError, match=r"b\.png: the file is empty \(0 bytes: a copy or download cut short\?\); "
                                         r"repair it, or move it out of the images"):
        read_image_set(tmp_path)


def test_an_unreadable_image_file_is_said_to_be_unreadable_not_damaged(tmp_path, monkeypatch):
    # "cannot decode x.png: [Errno 13] Permission denied: 'x.png'; repair it, …": nothing to repair. (As root
    # no mode bit refuses a read, so the refusal the system would give is raised where the file is opened.)
    import os

    from PIL import Image

    from forensics.io.images import read_image_set

    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    (tmp_path / "b.png").chmod(0)
    if os.geteuid() == 0:
        opened = Image.open

        def refuse(file, *args, **kwargs):
            if Path(file).name == "b.png":
                raise PermissionError(13, "Permission denied", str(file))
            return opened(file, *args, **kwargs)

        monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(UsageError) as refused:
        read_image_set(tmp_path)
    said = str(refused.value)
    assert said.startswith(f"cannot read {tmp_path / 'b.png'}: permission denied; make it readable") and "repair" not in said


def test_an_unreadable_array_file_is_one_clear_line(tmp_path, monkeypatch):
    # an .npz this user may not read was an "unexpected PermissionError" (exit 1), not one line saying what to do
    import builtins
    import os

    import forensics.io.images as images
    from forensics.io.images import read_image_set

    np.savez(tmp_path / "set.npz", images=np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "set.npz").chmod(0)
    if os.geteuid() == 0:  # as root no mode bit refuses a read: the refusal the system would give, where it opens

        def refuse(file, *args, **kwargs):
            if Path(file).name == "set.npz":
                raise PermissionError(13, "Permission denied", str(file))
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(images, "open", refuse, raising=False)
    with pytest.raises(UsageError, match=r"cannot read .*set\.npz: Permission denied; make it readable to this user"):
        read_image_set(tmp_path / "set.npz")


def test_links_in_a_loop_among_the_images_say_what_to_do(tmp_path):
    from PIL import Image

    from forensics.io.images import read_image_set

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "c.png")
    (tmp_path / "c.png").symlink_to(tmp_path / "b.png")
    with pytest.raises(UsageError, match=r"cannot read .*b\.png: Too many levels of symbolic links; links that lead "
                                         r"back to themselves: repair or remove them"):
        read_image_set(tmp_path)


def test_the_repeats_warning_stays_one_line_whatever_the_file_names(fake_engine, tmp_path):
    from PIL import Image

    import forensics

    images = labelled((1, 120))
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    Image.fromarray(images[0]).save(tmp_path / "copy\nof 000.png")
    (line,) = [w for w in forensics.attribute(tmp_path, protocol=VIT).warnings if "repeat" in w]
    assert "\n" not in line and "copy\\nof 000.png repeats 000.png" in line


def test_a_multi_frame_note_stays_one_line_whatever_the_file_name(tmp_path):
    from PIL import Image

    from forensics.io.images import read_image_set

    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 80, 160)]
    frames[0].save(tmp_path / "anim\nation.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (note,) = read_image_set(tmp_path).notes
    assert "\n" not in note and note.startswith("anim\\nation.gif holds 3 frames")


def test_16_bit_colour_reads_as_documented(tmp_path):
    # the docstring said every 16-bit image is value/257 rounded; colour is Pillow's high byte: the same pixels
    # for an 8-bit image saved as 16-bit, within 1 otherwise
    tifffile = pytest.importorskip("tifffile")
    from forensics.io.images import decode_image

    eight = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 7 % 256).astype(np.uint8)
    tifffile.imwrite(tmp_path / "saved.tif", eight.astype(np.uint16) * 257, photometric="rgb")
    np.testing.assert_array_equal(decode_image(tmp_path / "saved.tif"), eight)
    wide = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 97 % 65536).astype(np.uint16)
    tifffile.imwrite(tmp_path / "wide.tif", wide, photometric="rgb")
    rounded = np.round(wide / 257).astype(int)
    assert np.abs(decode_image(tmp_path / "wide.tif").astype(int) - rounded).max() <= 1
