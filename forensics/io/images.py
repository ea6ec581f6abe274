"""Images in: the one place where image files are decoded, image arrays normalised and image sets hashed.

:func:`load_images` reads the image sets a user points at (a folder of PNG/JPEG files, or an .npz / .npy
array) as one uint8 array, (N, H, W) for grey sets or (N, H, W, 3) for colour ones, with the content hash
that reports and registry entries record. Images of different sizes in one folder are brought to one size
with the protocol's own resize and centre crop (the step the encoder would take anyway). The embedding
reads through the same functions: :func:`decode_image` for a list of files, :func:`as_rgb_uint8` for what
an encoder is given, :func:`images_digest` for its cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from forensics.errors import UsageError
from forensics.io.hashing import sha256_array, sha256_bytes, sha256_images, sha256_json

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}

#: what the embedding takes: one uint8 array (N, H, W[, C]), or a sequence of image files
ImageInput = Union[np.ndarray, Sequence[Union[str, Path]]]


def load_images(path: str | Path, *, size: int | None = None, resize: int | None = None,
                workers: int = 0) -> tuple[np.ndarray, str]:
    """Read an image set; return ``(images, sha256)``.

    ``size`` / ``resize`` (the protocol's crop size and short-side resize) are used only when a folder
    holds images of different sizes. ``workers`` > 0 decodes a folder's files in that many processes.
    The hash is of the decoded pixels, taken before any resize: :func:`~forensics.io.hashing.sha256_images`
    for a folder, :func:`~forensics.io.hashing.sha256_array` for an array file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{path} does not exist; give a folder of PNG/JPEG images or an .npz/.npy file")
    if path.is_dir():
        return _load_folder(path, size=size, resize=resize, workers=workers)
    if path.suffix in (".npz", ".npy"):
        array = _read_array(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"{path} is one image; attribution needs a set — give the folder that holds it")
    else:
        raise UsageError(f"cannot read {path}: expected a folder of images, an .npz or an .npy file")
    images = as_uint8_images(array, str(path))
    return images, sha256_array(images)


def _read_array(path: Path) -> np.ndarray:
    """The image array of an .npz (its 'images', or its only array) or an .npy file, never unpickling."""
    import zipfile

    magic = {".npz": b"PK", ".npy": b"\x93NUMPY"}[path.suffix]
    with open(path, "rb") as f:
        if f.read(len(magic)) != magic:
            raise UsageError(f"{path} is not an {path.suffix} file (it does not start as one); write one with "
                             f"numpy.savez(path, images=uint8_array)")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise UsageError(f"{path} holds arrays {keys}; name the image array 'images'")
            return data[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # a truncated download, or object arrays (which would need unpickling)
        if "pickle" in str(exc):
            reason = "it holds Python objects, not numbers"
        elif isinstance(exc, (zipfile.BadZipFile, EOFError)):
            reason = "damaged or cut short"
        else:
            reason = str(exc).split("\n")[0]
        raise UsageError(f"{path} is not a readable {path.suffix} image array ({reason}); write one with "
                         f"numpy.savez(path, images=uint8_array)") from None


def as_uint8_images(array: np.ndarray, where: str = "array") -> np.ndarray:
    """Check and normalise an image array to uint8 (N, H, W) or (N, H, W, C)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise UsageError(f"{where}: images must be numbers, got dtype {array.dtype}")
        finite = np.isfinite(array).all()
        if not finite or array.min() < 0 or array.max() > 255 or not np.all(array == np.round(array)):
            raise UsageError(f"{where}: images must be uint8 or whole numbers in 0..255 (got {array.dtype} "
                             f"in [{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]); scale float images by 255 first")
        array = array.astype(np.uint8)
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.ascontiguousarray(array.transpose(0, 2, 3, 1))  # channels first -> last
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (3, 4)):
        raise UsageError(f"{where}: expected images shaped (N, H, W) or (N, H, W, 3); got {array.shape}")
    if array.ndim == 4 and array.shape[-1] == 4:
        array = np.ascontiguousarray(array[..., :3])
    if len(array) == 0:
        raise UsageError(f"{where}: holds no images")
    return array


def decode_image(file: str | Path) -> np.ndarray:
    """One file → uint8 pixels: (H, W) for grey images (16-bit and float grey converted), else (H, W, 3)
    RGB (palette, alpha and CMYK images converted by Pillow). Grey repeated to three channels is exactly
    Pillow's own conversion to RGB, so either way an encoder sees the same pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            im.load()
            if im.mode in ("I;16", "I", "F"):
                im = im.convert("L")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy takes it as it is
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"cannot decode {file}: {exc}") from exc


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
    return sha256_json([sha256_bytes(Path(p).read_bytes()) for p in images])


def _load_folder(folder: Path, *, size: int | None, resize: int | None, workers: int) -> tuple[np.ndarray, str]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder} holds no PNG/JPEG images")
    if workers > 0 and len(files) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            decoded = list(pool.map(decode_image, files, chunksize=max(1, len(files) // (4 * workers))))
    else:
        decoded = [decode_image(file) for file in files]
    if any(a.ndim == 3 for a in decoded):
        decoded = [as_rgb_uint8(a[None])[0] for a in decoded]  # a colour set: grey images in colour too
    digest = sha256_images(decoded)
    shapes = {a.shape for a in decoded}
    if len(shapes) == 1:
        return np.stack(decoded), digest
    if size is None or resize is None:
        raise UsageError(f"{folder} holds images of {len(shapes)} different sizes; they can be read only under a "
                         "protocol, which says how to resize them")
    return np.stack([_fit(a, size=size, resize=resize) for a in decoded]), digest


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
