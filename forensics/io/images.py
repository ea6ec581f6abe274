"""Images in: the one place where image files are decoded, image arrays normalised and image sets hashed.

:func:`load_images` reads the image sets a user points at (a folder of image files: PNG, JPEG, GIF, BMP, WebP,
TIFF; or an .npz / .npy array) as one uint8 array, (N, H, W) for grey sets or (N, H, W, 3) for colour ones,
with the content hash that reports and registry entries record. Images of different sizes in one folder are brought to one size
with the protocol's own resize and centre crop (the step the encoder would take anyway). The embedding
reads through the same functions: :func:`decode_image` for a list of files, :func:`as_rgb_uint8` for what
an encoder is given, :func:`images_digest` for its cache key.

Files are decoded to what their pixels mean, in 0..255: EXIF orientation applied first; 16-bit grey images
scaled (value/257, rounded: an 8-bit image saved as 16-bit reads back identical; 16-bit colour as Pillow reads
it, its high byte: identical too, within 1 of that otherwise); float images in [0, 1]
scaled by 255 (other floats, and NaN, refused); palette, bilevel and grey-with-alpha images whose colours are
all grey read as grey, so that the same pixels give the same content hash whatever the file's mode. Only the
first frame of a multi-frame file (a multi-page TIFF, an animated GIF or WebP) is read, and alpha is dropped:
:attr:`ImageSet.notes` says so in one line each where a file holds several frames or real transparency.

A folder is searched recursively (``recursive=False``: its own files only), in one deterministic order:
sorted by path relative to the folder. Hidden files and folders (names starting with ``.``), files that are
not images by their suffix, and links to folders (never followed) are skipped, and
:func:`read_image_set` says what it skipped.

An .npz may name beside its 'images' what happened to each one, ``conditions`` (one condition name per
image, in order: ``none``, ``jpeg90``, …), which ``attribute`` and ``memorization`` take as declared.

Limits, checked from the headers before anything is decoded or allocated: pixels per image
(``FORENSICS_MAX_PIXELS``, default 4096×4096) and images per run (``FORENSICS_MAX_IMAGES``, default
100,000); an array file must also hold the bytes its header declares. Only regular files are read: a FIFO
or a device given as input is refused without being opened.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import tokenize  # numpy parses an .npy header with it: a damaged one raises TokenError
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from forensics.errors import ForensicsError, UsageError
from forensics.io.atomic import _show
from forensics.io.hashing import image_digests, sha256_array, sha256_bytes, sha256_images, sha256_json

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
ARRAY_SUFFIXES = {".npz", ".npy"}

#: pixels one image may have (width × height, from its header), unless FORENSICS_MAX_PIXELS says otherwise
DEFAULT_MAX_PIXELS = 4096 * 4096
#: images one set may hold (files in a folder, rows of an array file), unless FORENSICS_MAX_IMAGES says otherwise
DEFAULT_MAX_IMAGES = 100_000


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{name} must be a positive whole number, not {raw[:40]!r}")
    return value


def max_pixels() -> int:
    """Pixels one image may have: ``FORENSICS_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`."""
    return _limit("FORENSICS_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_images() -> int:
    """Images one set may hold: ``FORENSICS_MAX_IMAGES`` or :data:`DEFAULT_MAX_IMAGES`."""
    return _limit("FORENSICS_MAX_IMAGES", DEFAULT_MAX_IMAGES)


def _check_pixels(width: int, height: int, where: str) -> None:
    if width <= 0 or height <= 0:
        raise UsageError(f"{where}: images of {width}×{height} pixels hold nothing to attribute")
    limit = max_pixels()
    if width * height > limit:
        raise UsageError(f"{where}: an image of {width}×{height} pixels is over the limit of {limit:,} pixels per "
                         f"image; set FORENSICS_MAX_PIXELS to raise it")


def _check_count(count: int, where: str) -> None:
    limit = max_images()
    if count > limit:
        raise UsageError(f"{where}: {count:,} images are over the limit of {limit:,} per run; "
                         f"set FORENSICS_MAX_IMAGES to raise it")


def _stat(path: Path) -> os.stat_result:
    """``os.stat`` with every failure a one-line UsageError (missing, a name too long, no permission...)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):  # a folder's file too: "does not exist" would send the analyst to the folder
            raise UsageError(f"{_show(path)} is a link to nothing ({_show(Path(os.readlink(path)))} is not there); "
                             "repair or remove the link") from None
        raise UsageError(f"{_show(path)} does not exist; give a folder of PNG/JPEG images or an .npz/.npy "
                         "file") from None
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, ELOOP, EACCES, ENOTDIR; ValueError: a NUL byte
        looped = getattr(exc, "errno", None) == errno.ELOOP
        loop = "; links that lead back to themselves: repair or remove them" if looped else ""
        raise UsageError(f"cannot read {_show(path)}: {getattr(exc, 'strerror', None) or exc}{loop}") from None


def _regular_file(path: Path) -> os.stat_result:
    """Refuse, without opening it, anything but a regular file: a FIFO would block, a device never end.
    Returns its ``os.stat``."""
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{_show(path)} is not a regular file (a FIFO, device or socket); give an image file, "
                         "a folder of them or an .npz/.npy file")
    return st

#: what the embedding takes: one uint8 array (N, H, W[, C]), or a sequence of image files
ImageInput = Union[np.ndarray, Sequence[Union[str, Path]]]


#: ``progress(done, total)``: images decoded so far, out of how many
DecodeProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageSet:
    """An image set as :func:`read_image_set` read it: the images, their content hash, and for a folder
    the files read (in reading order) and what was skipped, by reason (paths relative to the folder)."""

    images: np.ndarray
    sha256: str
    files: tuple[Path, ...] = ()
    skipped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    recursive: bool | None = None  # None: not a folder
    sizes: tuple[tuple[int, int], ...] = ()  # the (height, width) the images came in, before any resize
    image_sizes: tuple[tuple[int, int], ...] = ()  # of several sizes: each image's, in reading order
    conditions: tuple[str, ...] = ()  # an .npz's 'conditions': what happened to each image, as its writer says
    notes: tuple[str, ...] = ()  # what reading the files left out (frames after the first, transparency): one line each

    def __post_init__(self) -> None:
        if not self.sizes and self.images.ndim >= 3:
            object.__setattr__(self, "sizes", ((int(self.images.shape[1]), int(self.images.shape[2])),))

    def skipped_counts(self) -> dict[str, int]:
        """How many entries were skipped, by reason (only reasons that occurred)."""
        return {reason: len(paths) for reason, paths in self.skipped.items() if paths}


def load_images(path: str | Path, *, size: int | None = None, resize: int | None = None,
                workers: int = 0, recursive: bool = True,
                progress: DecodeProgress | None = None) -> tuple[np.ndarray, str]:
    """Read an image set; return ``(images, sha256)`` (:func:`read_image_set` says more)."""
    found = read_image_set(path, size=size, resize=resize, workers=workers, recursive=recursive, progress=progress)
    return found.images, found.sha256


def check_workers(workers: object) -> int:
    """``workers`` if it is a number of decoding processes (0: decode in this process), else a one-line
    :class:`~forensics.errors.UsageError`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"--workers takes a number of processes of at least 0 (0: decode here), not {workers!r}")
    return workers


def read_image_set(path: str | Path, *, size: int | None = None, resize: int | None = None, workers: int = 0,
                   recursive: bool = True, progress: DecodeProgress | None = None,
                   native: tuple[int, int] | None = None, single: bool = False) -> ImageSet:
    """Read an image set: a folder of image files (searched recursively unless ``recursive`` is False,
    see the module docstring), or an .npz / .npy array.

    ``size`` / ``resize`` (the protocol's crop size and short-side resize) are used only when a folder
    holds images of different sizes; ``native`` ((height, width): the size the enrolled generators write)
    instead brings each image of another size back to it with the conditions' bicubic resampling
    (:func:`forensics.conditions.resample`: the second half of the resize or crop it went through). ``workers``
    > 0 decodes a folder's files in that many processes; ``progress(done, total)`` hears how many files are decoded. The hash is of the decoded pixels, taken
    before any resize: :func:`~forensics.io.hashing.sha256_images` for a folder (in reading order),
    :func:`~forensics.io.hashing.sha256_array` for an array file. ``single``: an image file is a set of one
    (for a measure of each image on its own, InvMM); else it is refused, since a fingerprint is of a set.
    """
    check_workers(workers)
    path = Path(path).expanduser()
    if stat.S_ISDIR(_stat(path).st_mode):
        return _load_folder(path, size=size, resize=resize, workers=workers, recursive=recursive,
                            progress=progress, native=native)
    _regular_file(path)
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        array, conditions = _read_array(path)
    elif suffix in IMAGE_SUFFIXES and single:
        image, frames, transparent = _decode(path)
        return ImageSet(as_uint8_images(image[None], _show(path)), sha256_images([image]), (path,),
                        notes=_notes([path], [frames], [transparent], path.parent))
    elif suffix in IMAGE_SUFFIXES:
        raise UsageError(f"{_show(path)} is one image; the tool reads sets of images — give the folder that holds it")
    else:
        raise UsageError(f"cannot read {_show(path)}: expected a folder of images, an .npz or an .npy file")
    images = as_uint8_images(array, _show(path))
    if conditions is not None and len(conditions) != len(images):  # an empty array too: it names none of them
        raise UsageError(f"{_show(path)} names {len(conditions)} conditions for {len(images)} images: its 'conditions' "
                         "must name one per image, in order (or be left out)")
    return ImageSet(images, sha256_array(images), conditions=conditions or ())


#: the longest condition name an .npz's 'conditions' may hold (``resize0.5+jpeg100`` is 17)
MAX_CONDITION_NAME = 32


def _read_array(path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """The image array of an .npz (its 'images', or its only array) or an .npy file, never unpickling, and
    an .npz's 'conditions' beside 'images' (one condition name per image: what happened to it; unicode
    strings, or bytes read as ASCII), else None.

    The .npy header (of the file, or of the .npz member) is read first: what it declares must be numbers
    (the conditions: short strings, one per image), within the limits and present in the file, before numpy
    allocates anything."""
    import zipfile

    suffix = path.suffix.lower()
    where = _show(path)
    magic = {".npz": b"PK", ".npy": b"\x93NUMPY"}[suffix]
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as exc:  # no permission, an I/O error: one line, not an unexpected error
        advice = "; make it readable to this user (chmod a+r)" if isinstance(exc, PermissionError) else ""
        raise UsageError(f"cannot read {where}: {exc.strerror or exc}{advice}") from None
    if head != magic:
        raise UsageError(f"{where} is not an {suffix} file (it does not start as one); write one with "
                         f"numpy.savez(path, images=uint8_array)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a numpy warning on reading is a damaged file, never stderr noise
            if suffix == ".npy":
                with open(path, "rb") as f:
                    _check_npy_header(f, os.fstat(f.fileno()).st_size, where)
                return np.load(path, allow_pickle=False), None
            with zipfile.ZipFile(path) as archive:
                members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
                keys = list(members)
                key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None and not keys:
                    raise UsageError(f"{where} holds no arrays; write one with numpy.savez(path, images=uint8_array)")
                if key is None:
                    shown = ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
                    raise UsageError(f"{where} holds arrays {shown}; name the image array 'images'")
                named = [key] + (["conditions"] if key == "images" and "conditions" in members else [])
                for name in named:
                    info = members[name]
                    if not info.filename.endswith(".npy"):
                        raise ValueError(f"its member {info.filename[:60]!r} is not an array")
                    with archive.open(info) as f:
                        (_check_npy_header if name == key else _check_conditions_header)(f, info.file_size, where)
            with np.load(path, allow_pickle=False) as data:
                return data[key], _condition_names(data["conditions"], where) if len(named) > 1 else None
    except ForensicsError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            RuntimeError, KeyError, TypeError, SyntaxError, tokenize.TokenError, OverflowError, MemoryError,
            Warning) as exc:
        # a truncated download, a damaged or foreign zip, a header numpy cannot parse, object arrays
        if "pickle" in str(exc) or "object" in str(exc).lower():
            reason = "it holds Python objects, not numbers"
        elif isinstance(exc, (zipfile.BadZipFile, EOFError)):
            reason = "damaged or cut short"
        else:
            reason = (str(exc).split("\n")[0] or type(exc).__name__)[:200]
        raise UsageError(f"{where} is not a readable {suffix} image array ({reason}); write one with "
                         f"numpy.savez(path, images=uint8_array)") from None


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy header (read from ``f``, left just after it) declares."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _check_npy_header(f, size: int, where: str) -> None:
    """Read an .npy header from ``f`` (``size`` bytes in all) and refuse what it declares when it is not
    numbers, is over the limits or is more than the file holds."""
    shape, dtype = _npy_header(f)
    if dtype.hasobject or dtype.kind not in "uif":
        what = "it holds Python objects, not numbers" if dtype.hasobject else f"images must be numbers, not {dtype}"
        raise UsageError(f"{where} is not a readable image array ({what}); write one with "
                         "numpy.savez(path, images=uint8_array)")
    if len(shape) not in (3, 4):  # before its first axis is read as a number of images
        raise UsageError(f"{where}: expected images shaped (N, H, W) or (N, H, W, C) with C = 1, 3 or 4 (alpha dropped); got {tuple(shape)}")
    _check_count(int(shape[0]), where)
    first = len(shape) == 4 and shape[1] in (1, 3) and shape[-1] not in (1, 3, 4)
    height, width = (shape[2], shape[3]) if first else (shape[1], shape[2])
    if shape[0] > 0:
        _check_pixels(int(width), int(height), where)
    declared = math.prod(int(n) for n in shape) * dtype.itemsize
    held = size - f.tell()
    if declared > held:
        raise UsageError(f"{where} is damaged or cut short: its header declares {declared:,} bytes of images, "
                         f"it holds {max(held, 0):,}")


def _check_conditions_header(f, size: int, where: str) -> None:
    """Refuse an .npz's 'conditions' member (read from ``f``, ``size`` bytes in all) that is not one short
    string per image — a 1-D array of unicode strings of at most :data:`MAX_CONDITION_NAME` characters —,
    is over the images limit or is more than the member holds."""
    shape, dtype = _npy_header(f)
    write = "numpy.savez(path, images=…, conditions=np.array(['none', 'jpeg90', …]))"
    if dtype.hasobject or dtype.kind not in "US":
        what = "Python objects (dtype object)" if dtype.hasobject else f"of dtype {dtype}, not strings"
        raise UsageError(f"{where}: its 'conditions' must be condition names, one per image, as an array of strings "
                         f"({write}): these are {what}")
    if len(shape) != 1 or dtype.itemsize > (4 if dtype.kind == "U" else 1) * MAX_CONDITION_NAME:
        raise UsageError(f"{where}: its 'conditions' must be condition names, one per image ({write})")
    _check_count(int(shape[0]), where)
    if int(shape[0]) * dtype.itemsize > size - f.tell():
        raise UsageError(f"{where} is damaged or cut short: its 'conditions' declare more than it holds")


def _condition_names(values: np.ndarray, where: str) -> tuple[str, ...]:
    """An .npz's 'conditions' as names: unicode strings as they are, bytes (as h5py and older code write
    them) read as ASCII."""
    if values.dtype.kind != "S":
        return tuple(str(c) for c in values)
    try:
        return tuple(c.decode("ascii") for c in values.tolist())
    except UnicodeDecodeError:
        raise UsageError(f"{where}: its 'conditions' are bytes (dtype {values.dtype}) that are not ASCII; write them "
                         "as strings (np.array(['none', 'jpeg90', …]))") from None


def as_uint8_images(array: np.ndarray, where: str = "array") -> np.ndarray:
    """Check and normalise an image array to uint8 (N, H, W) or (N, H, W, C): integers, or floats holding
    whole numbers, in 0..255 (nothing rescaled), channels first or last."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if array.dtype.kind not in "uif":
            raise UsageError(f"{where}: images must be numbers, got dtype {array.dtype}")
        if array.size == 0:
            raise UsageError(f"{where}: holds no images (shape {array.shape})")
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finite = bool(np.isfinite(array).all())
            low, high = array.min(), array.max()
            whole = finite and bool(np.all(array == np.round(array)))
        if not finite or low < 0 or high > 255 or not whole:
            shown = "with NaN or infinite values" if not finite else f"in [{float(low):.3g}, {float(high):.3g}]"
            raise UsageError(f"{where}: images must be uint8 or whole numbers in 0..255 (got {array.dtype} "
                             f"{shown}); {_to_uint8_advice(array.dtype, finite, float(low), float(high))}")
        array = array.astype(np.uint8)
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.ascontiguousarray(array.transpose(0, 2, 3, 1))  # channels first -> last
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (3, 4)):
        raise UsageError(f"{where}: expected images shaped (N, H, W) or (N, H, W, C) with C = 1, 3 or 4 (alpha dropped); got {array.shape}")
    if array.ndim == 4 and array.shape[-1] == 4:
        array = np.ascontiguousarray(array[..., :3])
    if len(array) == 0:
        raise UsageError(f"{where}: holds no images")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise UsageError(f"{where}: images of {array.shape[2]}×{array.shape[1]} pixels hold nothing to attribute")
    return array


def _to_uint8_advice(dtype: np.dtype, finite: bool, low: float, high: float) -> str:
    """What to do with an image array that is not 0..255, by what it holds (nothing is rescaled unasked: the
    scale is the writer's to say)."""
    if not finite:
        return "replace the NaN or infinite values, or leave those images out"
    if dtype.kind in "iu" and dtype.itemsize == 2 and low >= 0:
        return ("16-bit images: divide by 257 and round first (np.round(a / 257).astype(np.uint8)), as a 16-bit "
                "PNG is read")
    if dtype.kind == "f" and low >= 0 and high <= 1:
        return "float images in [0, 1]: multiply by 255 and round first (np.round(a * 255).astype(np.uint8))"
    if dtype.kind == "f" and low >= -1 and high <= 1:
        return ("images in [-1, 1] (a generator's tanh output): map them to 0..255 first "
                "(np.round((a + 1) * 127.5).astype(np.uint8))")
    if low >= 0 and high <= 255:
        return "round them to whole numbers first (np.round(a).astype(np.uint8))"
    return "bring them to 0..255 as their writer scaled them first, then save them as uint8"


GREY_TOLERANCE = 2
"""How far apart (in grey levels) the channels of a pixel of a grey image may come back from a codec that stores
colour: a grey digit saved as lossy WebP (quality 50 to 90) reads back with channels 1 apart, as JPEG 0 apart."""


def in_colour(images: np.ndarray) -> np.ndarray:
    """Which images are in colour: a boolean mask over the first axis, true where two of the red, green and blue
    channels differ by more than :data:`GREY_TOLERANCE` somewhere (a grey image read as RGB, its channels equal or
    a codec's rounding apart, is not; alpha is not looked at). Grey sets, (N, H, W) or one channel, are in colour
    nowhere."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] < 3:
        return np.zeros(len(images), dtype=bool)
    out = np.zeros(len(images), dtype=bool)
    for i, image in enumerate(images):  # one image at a time: no copy of a large set in wider integers
        rgb = image[..., :3].astype(np.int16)
        out[i] = bool((np.abs(rgb[..., 0] - rgb[..., 1]).max() > GREY_TOLERANCE)
                      or (np.abs(rgb[..., 1] - rgb[..., 2]).max() > GREY_TOLERANCE)
                      or (np.abs(rgb[..., 0] - rgb[..., 2]).max() > GREY_TOLERANCE))
    return out


def repeated(images: np.ndarray) -> np.ndarray:
    """Which images repeat an earlier image of the set pixel for pixel (a boolean mask over the first axis;
    the first of each group is not a repeat): :func:`repeat_of` ≥ 0."""
    return repeat_of(images) >= 0


def repeat_of(images: np.ndarray) -> np.ndarray:
    """For each image, the index of the earlier image of the set it repeats pixel for pixel, -1 for none (the
    first of each group). Each image's digest (:func:`~forensics.io.hashing.image_digests`) once, equal
    digests compared in full."""
    first: dict[bytes, list[int]] = {}
    out = np.full(len(images), -1, dtype=np.int64)
    for i, (image, digest) in enumerate(zip(images, image_digests(images))):
        kin = first.setdefault(digest.tobytes(), [])
        same = next((j for j in kin if np.array_equal(images[j], image)), None)
        if same is not None:
            out[i] = same
        else:
            kin.append(i)
    return out


def decode_image(file: str | Path) -> np.ndarray:
    """One file → uint8 pixels: (H, W) for grey images, else (H, W, 3) RGB (:func:`_decode`)."""
    return _decode(file)[0]


def _decode(file: str | Path) -> tuple[np.ndarray, int, bool]:
    """One file → (uint8 pixels: (H, W) for grey images, else (H, W, 3) RGB; how many frames the file holds,
    of which only the first is read; whether it carries transparency, alpha below 255 somewhere, dropped).

    EXIF orientation is applied first. 16-bit grey images are scaled to 8 bits (value/257, rounded; 16-bit
    colour is Pillow's, the high byte: the same for an 8-bit image saved as 16-bit, within 1 otherwise), float
    images in [0, 1] by 255 (other floats, NaN included, are refused), 32-bit integer images are taken as
    they are when they hold 0..255 (else refused). Palette, bilevel and grey+alpha images read as grey when
    all their colours are grey, else as RGB; alpha and CMYK are converted by Pillow. Grey repeated to three
    channels is exactly Pillow's own conversion to RGB, so either way an encoder sees the same pixels.
    Only a regular file is opened; its size is checked from the header before anything is decoded."""
    from PIL import Image, ImageOps

    file = Path(file)
    where = _show(file)
    if _regular_file(file).st_size == 0:  # Pillow's "cannot identify image file" says nothing of why
        raise UsageError(f"cannot decode {where}: the file is empty (0 bytes: a copy or download cut short?); "
                         "repair it, or move it out of the images (a set is read whole: no image file is left out "
                         "unsaid)")
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # FORENSICS_MAX_PIXELS raised above Pillow's own bomb limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd EXIF or palettes are harmless here
            with Image.open(file) as im:
                _check_pixels(*im.size, where)  # from the header: nothing decoded yet
                frames = int(getattr(im, "n_frames", 1) or 1)  # a multi-page TIFF, an animated GIF or WebP
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _pixels(im, where), frames, _transparent(im)
    except ForensicsError:
        raise
    except PermissionError:  # not a damaged file: "repair it" would send the analyst the wrong way
        raise UsageError(f"cannot read {where}: permission denied; make it readable to this user (chmod a+r) or move "
                         "it out of the images (a set is read whole: no image file is left out unsaid)") from None
    except Image.DecompressionBombError as exc:
        raise UsageError(f"{where}: {str(exc).splitlines()[0][:200]}; set FORENSICS_MAX_PIXELS to raise the "
                         "limit") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many kinds on hostile files
        reason = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200]
        raise UsageError(f"cannot decode {where}: {reason}; repair it, or move it out of the images (a set is read "
                         "whole: no image file is left out unsaid)") from None


def _transparent(im) -> bool:
    """Whether a decoded Pillow image has alpha below 255 somewhere (an alpha band, or a transparent colour)."""
    bands = im.getbands()
    alpha = "A" if "A" in bands else "a" if "a" in bands else None
    if alpha is not None:
        return im.getchannel(alpha).getextrema()[0] < 255
    if "transparency" not in im.info:
        return False
    try:
        return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    except (ValueError, OSError):  # a mode Pillow cannot take to RGBA: its transparency is not read either
        return False


def _notes(files: Sequence[Path], frames: Sequence[int], transparent: Sequence[bool], folder: Path) -> tuple[str, ...]:
    """The one-line warnings for what reading ``files`` left out: frames after the first of a multi-frame file,
    and transparency (alpha dropped), with counts and what to do."""
    notes = []
    several = [(f, k) for f, k in zip(files, frames) if k > 1]
    if several:
        shown = ", ".join(f"{_relative(f, folder)} {k} frames" for f, k in several[:3]) + (", …" if len(several) > 3 else "")
        left = sum(k for _, k in several) - len(several)
        said = (f"{_relative(several[0][0], folder)} holds {several[0][1]} frames" if len(several) == 1 else
                f"{len(several)} of the {len(files)} files hold several frames ({shown})")
        notes.append(f"{said}: only the first frame of each file is read, {left} frames left out; to read every "
                     "frame, extract them to one image file each (e.g. with Pillow's ImageSequence) and give that folder")
    if (clear := sum(map(bool, transparent))):
        notes.append(f"{clear} of the {len(files)} images carry transparency (alpha below 255), which is dropped: "
                     "their colour is read as if opaque, so content drawn in the alpha channel is lost; flatten them "
                     "onto their background first (e.g. Pillow's Image.alpha_composite onto white) and give those")
    return tuple(notes)


def _relative(file: Path, folder: Path) -> str:
    """``file``'s path in ``folder``, for a one-line note: a newline or control character in it escaped."""
    try:
        return _show(file.relative_to(folder).as_posix(), 60)
    except ValueError:
        return _show(file.name, 60)


def _pixels(im, where: str) -> np.ndarray:
    """A decoded Pillow image → uint8 (H, W) or (H, W, 3), as :func:`decode_image` documents."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy takes it as it is
    if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):  # Pillow opens some 16-bit PNGs as I
        values = np.asarray(im).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise UsageError(f"{where}: a 16-bit image with values outside 0..65535")
        return ((values + 128) // 257).astype(np.uint8)
    if mode == "I":
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 255:
            raise UsageError(f"{where}: a 32-bit integer image with values in [{values.min()}, {values.max()}] has "
                             "no 0..255 scale; save it as an 8- or 16-bit image")
        return values.astype(np.uint8)
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UsageError(f"{where}: a float image with NaN or infinite values; save it with values in [0, 1]")
        if values.min() < 0 or values.max() > 1:
            raise UsageError(f"{where}: a float image with values in [{values.min():.3g}, {values.max():.3g}]; "
                             "float images are read as [0, 1] — scale it into [0, 1] or save it as 8-bit")
        return np.rint(values * 255).astype(np.uint8)
    if mode in ("1", "LA", "La"):
        return np.array(im.convert("L"), dtype=np.uint8)
    rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    if mode in ("P", "PA") and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])  # a grey palette: the same pixels as the grey file
    return rgb


def as_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) with C in 1, 3, 4 → (N, H, W, 3): grey repeated, alpha dropped.
    What an encoder is given; anything else is a :class:`UsageError`."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise UsageError(f"images must be uint8 (0-255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise UsageError(f"images must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return images


def is_file_list(images: ImageInput) -> bool:
    """Whether ``images`` is a (non-empty) sequence of image files rather than an array."""
    return not isinstance(images, np.ndarray) and len(images) > 0 and isinstance(images[0], (str, Path))


def check_image_input(images: ImageInput) -> None:
    """Refuse what the embedding cannot take: an array that :func:`as_rgb_uint8` refuses, or neither an
    array nor a sequence."""
    if isinstance(images, np.ndarray):
        as_rgb_uint8(images[:1])
    elif not isinstance(images, Sequence):
        raise UsageError(f"images must be a uint8 array or a list of image files, not {type(images).__name__}")


def images_digest(images: ImageInput) -> str:
    """Content hash of an image input: of the pixels for an array (as :func:`load_images` records it), of
    the file bytes for a list of files (cheap: nothing decoded; a re-encoded file is another input)."""
    if isinstance(images, np.ndarray):
        return sha256_array(images)
    for p in images:
        _regular_file(Path(p))
    return sha256_json([sha256_bytes(Path(p).read_bytes()) for p in images])


#: why :func:`scan_folder` skips an entry
SKIP_HIDDEN = "hidden"
SKIP_NOT_IMAGE = "not an image"
SKIP_FOLDER = "subfolder (not searched: recursive off)"
SKIP_LINKED_FOLDER = "link to a folder (not followed)"


def scan_folder(folder: str | Path, *, recursive: bool = True) -> tuple[list[Path], dict[str, list[str]]]:
    """The image files of ``folder`` in reading order (sorted by their path relative to ``folder``), and
    what was skipped by reason (relative paths, sorted): hidden entries (a name starting with ``.``) and
    everything under a hidden folder, files whose suffix is not an image's, links to folders (never
    followed: a link could loop or lead out of the folder), and subfolders when ``recursive`` is False.
    An entry that cannot be listed is a :class:`UsageError`: images are never dropped silently."""
    folder = Path(folder)
    files: list[Path] = []
    skipped: dict[str, list[str]] = {}

    def skip(reason: str, entry: Path) -> None:
        skipped.setdefault(reason, []).append(entry.relative_to(folder).as_posix())

    pending = [folder]
    while pending:
        here = pending.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            raise UsageError(f"cannot read {_show(here)}: {exc.strerror or exc}") from None
        for entry in entries:
            item = Path(entry.path)
            if entry.name.startswith("."):
                skip(SKIP_HIDDEN, item)
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_link = entry.is_symlink()
            except OSError:
                is_dir, is_link = False, False
            if is_dir:
                if is_link:
                    skip(SKIP_LINKED_FOLDER, item)
                elif recursive:
                    pending.append(item)
                else:
                    skip(SKIP_FOLDER, item)
            elif item.suffix.lower() in IMAGE_SUFFIXES:
                files.append(item)
            else:
                skip(SKIP_NOT_IMAGE, item)
    files.sort(key=lambda p: p.relative_to(folder).parts)
    return files, {reason: sorted(paths) for reason, paths in skipped.items()}


def _skipped_said(skipped: Mapping[str, Sequence[str]]) -> str:
    """What a folder's scan skipped, in words for an error: ``: skipped 500 files (500 .heic)`` or ""."""
    if not any(skipped.values()):
        return ""
    parts = []
    for reason, paths in skipped.items():
        if reason == SKIP_NOT_IMAGE:
            kinds = Counter(Path(p).suffix.lower() or "no suffix" for p in paths)
            said = ", ".join(f"{k} {s}" for s, k in sorted(kinds.items(), key=lambda sk: (-sk[1], sk[0]))[:5])
            parts.append(f"{len(paths)} not images by their suffix ({said}{', …' if len(kinds) > 5 else ''})")
        elif paths:
            parts.append(f"{len(paths)} {reason}")
    return ": skipped " + "; ".join(parts)


def _load_folder(folder: Path, *, size: int | None, resize: int | None, workers: int, recursive: bool = True,
                 progress: DecodeProgress | None = None, native: tuple[int, int] | None = None) -> ImageSet:
    files, skipped = scan_folder(folder, recursive=recursive)
    if not files:
        more = "" if recursive or SKIP_FOLDER not in skipped else " (its subfolders were not searched: recursive off)"
        raise UsageError(f"{_show(folder)} holds no PNG/JPEG or other image files{more}{_skipped_said(skipped)}; the "
                         f"files read as images are {', '.join(sorted(IMAGE_SUFFIXES))}: convert others to PNG")
    _check_count(len(files), _show(folder))
    for file in files:  # a FIFO named x.png would block the run, a device never end: refused, not opened
        _regular_file(file)
    total = len(files)
    every = max(1, total // 100)  # about a hundred reports, whatever the number of files
    decoded: list[np.ndarray] = []
    frames: list[int] = []
    transparent: list[bool] = []
    if progress is not None:
        progress(0, total)

    def keep(found: tuple[np.ndarray, int, bool]) -> None:
        decoded.append(found[0])
        frames.append(found[1])
        transparent.append(found[2])
        if progress is not None and (len(decoded) % every == 0 or len(decoded) == total):
            progress(len(decoded), total)

    if workers > 0 and total > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for found in pool.map(_decode, files, chunksize=max(1, min(64, total // (4 * workers)))):
                keep(found)
    else:
        for file in files:
            keep(_decode(file))
    notes = _notes(files, frames, transparent, folder)
    if any(a.ndim == 3 for a in decoded):
        decoded = [as_rgb_uint8(a[None])[0] for a in decoded]  # a colour set: grey images in colour too
    digest = sha256_images(decoded)
    shapes = {a.shape for a in decoded}
    found = {reason: tuple(paths) for reason, paths in skipped.items()}
    if len(shapes) == 1:
        return ImageSet(np.stack(decoded), digest, tuple(files), found, recursive, notes=notes)
    each = tuple((int(a.shape[0]), int(a.shape[1])) for a in decoded)
    sizes = tuple(sorted(set(each)))
    if native is not None:
        from forensics.conditions import resample

        native = (int(native[0]), int(native[1]))
        back = [a if a.shape[:2] == native else resample(a[None], native)[0] for a in decoded]
        return ImageSet(np.stack(back), digest, tuple(files), found, recursive, sizes, each, notes=notes)
    if size is None or resize is None:
        shown = ", ".join(f"{h}×{w}" for h, w in sizes[:3]) + (", …" if len(sizes) > 3 else "")
        raise UsageError(f"{_show(folder)} holds images of {len(sizes)} different sizes ({shown}), and this command "
                         "reads images of one size (only a protocol's says how to resize them): bring them to one "
                         "size first")
    return ImageSet(np.stack([_fit(a, size=size, resize=resize) for a in decoded]), digest, tuple(files), found,
                    recursive, sizes, each, notes=notes)


def _fit(image: np.ndarray, *, size: int, resize: int) -> np.ndarray:
    """Resize the short side to ``resize`` (bicubic, antialiased) and centre-crop ``size``."""
    from PIL import Image

    im = Image.fromarray(image)
    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
