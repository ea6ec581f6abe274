"""Post-processing conditions: what happened to a generator's images between the generator and the analyst.

Evidence rarely arrives as the generator wrote it: it was re-saved as JPEG, resized, cropped. Each of
these moves an encoder's early layers, and so the C_T curve, enough to name the wrong generator when a
processed set is compared with fingerprints of unprocessed sets (docs/findings.md measures which layers
move, and by how much). The remedy here is to compare like with like: an enrolled instance keeps its
per-image records under each condition of :data:`CONDITIONS` (its own images put through the same
processing, :mod:`forensics.registry.records`, scored against T and P_n put through it too:
:func:`reference_condition`), and a query is matched against the instances under the condition it arrived
in, scored alike — read from the files where they say it (a JPEG's quantisation tables give its quality, a
lossy WebP its quantiser, the images' size a resampling), else as the analyst declares it (``--condition``),
else "none" (as generated). Files that arrived processed in several ways (some re-saved or resized, some
not) each keep their own condition, and a batch of them is matched against the instances redrawn with as
many images under each (:func:`mixed`, :data:`Mixture`), each kind's images scored against its own T and P_n
and the parts combined by the statistic. ``memorization``, which has no instances, puts T and P_n through
the query's condition alike (:class:`forensics.engine.Engine`'s ``condition``), each kind's for files
processed in several ways.

Each condition is a deterministic function of uint8 images ((N, H, W) or (N, H, W, C)): a re-encoding, a
resampling round trip, or a resampling with a re-encoding at the resampled size (``resize2+jpeg90``);
``none`` is the identity, and a lossless re-save (PNG) changes nothing, so it needs no condition of its own.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from forensics.errors import UsageError

NONE = "none"


def _each(images: np.ndarray, fn: Callable[[Any], Any]) -> np.ndarray:
    from PIL import Image

    out = [np.asarray(fn(Image.fromarray(im))) for im in np.asarray(images, dtype=np.uint8)]
    return np.stack(out).astype(np.uint8)


Step = Callable[[Any], Any]
"""One step of a condition on one PIL image."""


def _reencoded(fmt: str, quality: int) -> Step:
    """An image saved in ``fmt`` at ``quality`` by PIL (its other settings as they come), decoded."""
    def one(im: Any) -> Any:
        from PIL import Image

        buf = io.BytesIO()
        im.save(buf, format=fmt, quality=quality)
        buf.seek(0)
        with Image.open(buf) as back:
            return back.convert(im.mode)
    return one


def jpeg(quality: int) -> Step:
    """Re-encoded as baseline JPEG at ``quality`` (libjpeg's standard tables, 4:2:0 for colour), decoded."""
    return _reencoded("JPEG", quality)


def webp(quality: int) -> Step:
    """Re-encoded as lossy WebP at ``quality`` (libwebp through PIL, its other settings as they come), decoded."""
    return _reencoded("WEBP", quality)


def scaled(sides: tuple[int, int], factor: float) -> tuple[int, int]:
    """Two sides (in either order) scaled by ``factor`` as the resampling conditions scale them."""
    return max(1, round(sides[0] * factor)), max(1, round(sides[1] * factor))


def resize(factor: float) -> Step:
    """The first half of a resampling round trip: a bicubic resize by ``factor``."""
    return lambda im: im.resize(scaled(im.size, factor), _bicubic())


def crop(share: float) -> Step:
    """The first half of a crop: the centred part keeping ``share`` of each side."""
    def one(im: Any) -> Any:
        w, h = im.size
        cw, ch = scaled((w, h), share)
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch))
    return one


@dataclass(frozen=True)
class Condition:
    """A named post-processing and what it is, in words. A re-encoding has ``encode`` (and its quality); a
    resampling has ``resample``, the first half of a round trip (to ``scale`` times the sides; the second
    half brings the image back to its size, bicubic); a combination (``resize2+jpeg90``) has both: the image
    is re-encoded at the resampled size, as a resized image is saved, then brought back."""

    name: str
    description: str
    encode: Step | None = None
    jpeg_quality: int | None = None
    webp_quality: int | None = None
    resample: Step | None = None
    scale: float | None = None  # a resampling: the side of its intermediate image over the original's
    resampling: str | None = None  # a resampling or a combination: the name of its resampling
    encoding: str | None = None  # a re-encoding or a combination: the name of its re-encoding

    def apply(self, images: np.ndarray) -> np.ndarray:
        """The images ((N, H, W) or (N, H, W, C) uint8) put through this condition."""
        if self.encode is None and self.resample is None:
            return np.asarray(images)

        def one(im: Any) -> Any:
            size = im.size
            if self.resample is not None:
                im = self.resample(im)
            if self.encode is not None:
                im = self.encode(im)
            return im.resize(size, _bicubic()) if self.resample is not None else im
        return _each(images, one)


def _reencoding(name: str, description: str, encode: Step, **quality: int) -> Condition:
    return Condition(name, description, encode, **quality, encoding=name)


def _resampling(name: str, description: str, resample: Step, scale: float) -> Condition:
    return Condition(name, description, resample=resample, scale=scale, resampling=name)


def combined(resampling: Condition, encoding: Condition) -> Condition:
    """``encoding`` applied at the size ``resampling`` leaves, before the image is brought back: a resized image
    saved as JPEG or WebP, as a platform serves it, brought back to the generators' size."""
    if resampling.resample is None or resampling.encode is not None or encoding.encode is None \
            or encoding.resample is not None:
        raise UsageError(f"a combined condition is a resampling and then a re-encoding (e.g. resize2+jpeg90), not "
                         f"{resampling.name}+{encoding.name}")
    return Condition(f"{resampling.name}+{encoding.name}", f"{resampling.description}; {encoding.description} "
                     "in between, at the resampled size", encoding.encode, encoding.jpeg_quality, encoding.webp_quality,
                     resampling.resample, resampling.scale, resampling.name, encoding.name)


_SINGLE: dict[str, Condition] = {c.name: c for c in [
    Condition(NONE, "as the generator wrote them (or saved losslessly, e.g. PNG)"),
    *[_reencoding(f"jpeg{q}", f"re-saved as JPEG at quality {q}", jpeg(q), jpeg_quality=q)
      for q in (98, 95, 90, 85, 80, 75, 70)],
    *[_reencoding(f"webp{q}", f"re-saved as lossy WebP at quality {q}", webp(q), webp_quality=q)
      for q in (90, 85, 80, 75)],
    _resampling("resize2", "resized up ×2 and back (bicubic)", resize(2.0), 2.0),
    _resampling("resize0.5", "resized down ×0.5 and back (bicubic)", resize(0.5), 0.5),
    _resampling("crop90", "a centred crop of 90 % of each side, resized back", crop(0.9), 0.9),
]}

COMBINED = ("jpeg90", "jpeg75", "webp80")
"""The re-encodings kept after each resampling in :data:`CONDITIONS` (any other combination can be named and
kept too: :func:`get_condition`)."""

CONDITIONS: dict[str, Condition] = {**_SINGLE, **{
    c.name: c for c in (combined(r, _SINGLE[e]) for r in _SINGLE.values() if r.resample is not None for e in COMBINED)}}
"""Every condition an instance keeps records under by default (``"all"``), by name."""

JPEG_TOLERANCE = 2
"""How far (in libjpeg quality) a query's JPEG quality may lie from the kept condition it is matched under
without a warning: the farthest any quality from 70 to 99 lies from one of :data:`CONDITIONS` (98, and every
5 from 95 to 70; 100 quantises nothing and is matched as generated, :func:`lossless`). Five is too far: on
the default, held-out sets at quality 85 matched as 90 were named right in 14 of 36 batches of 200–500
images, as 85 in 20 (docs/robustness.md)."""


JPEG_STEP_TOLERANCE = 0.3
"""How far (|ln| of the ratio of libjpeg's quantisation steps) a query's JPEG quality may lie from the kept
condition it is matched under without a warning, beside :data:`JPEG_TOLERANCE`. Near the top one quality
is a large step (97 quantises 1.5 times as coarsely as 98): on the default, held-out sets at 85 matched as
90 (ratio 0.41) and at 97 matched as 98 (0.41) were named less often and wrongly more often than matched as
themselves, at 75 as 80 and at 96 as 95 (0.22) about as often (docs/robustness.md)."""


def step_ratio(quality: int, other: int) -> float:
    """|ln| of the ratio of libjpeg's quantisation steps at two qualities (a step of at least 1)."""
    return abs(math.log(max(ijg_scale(quality), 1) / max(ijg_scale(other), 1)))


@functools.lru_cache(maxsize=1024)
def get_condition(name: str) -> Condition:
    """The condition ``name``: one of :data:`CONDITIONS`; a re-encoding at any quality from 1 to 100
    (``jpeg88``, ``webp60``); or a resampling and a re-encoding joined by "+" (``crop90+webp80``)."""
    if name in CONDITIONS:
        return CONDITIONS[name]
    first, plus, second = name.partition("+")
    if plus and first in _SINGLE and _SINGLE[first].resample is not None:
        return combined(_SINGLE[first], get_condition(second))
    for fmt, make in (("jpeg", jpeg), ("webp", webp)):
        if name.startswith(fmt) and name[4:].isdigit() and str(int(name[4:])) == name[4:] and 1 <= int(name[4:]) <= 100:
            quality = int(name[4:])
            return _reencoding(name, f"re-saved as {'JPEG' if fmt == 'jpeg' else 'lossy WebP'} at quality {quality}",
                               make(quality), **{f"{fmt}_quality": quality})
    raise UsageError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}, any jpegQ or webpQ (Q 1–100), or "
                     "a resampling and a re-encoding joined by '+' (e.g. crop90+webp80)")


def reference_condition(name: str) -> str:
    """What T and P_n are put through when records of images under the condition ``name`` are scored — the
    rule for records a registry does not keep yet (those it keeps say what they were scored against:
    :meth:`forensics.registry.Registry.record_reference`): the same condition, like with like. Processed images
    scored against T and P_n as they are lie far from both, all generators' alike, and their C_T curves crowd
    together; scored against T and P_n processed alike, what sets a generator apart shows again
    (docs/robustness.md, "T and P_n through the query's processing"). ``none``: T and P_n as they are."""
    return get_condition(name).name


def codecs() -> dict[str, str]:
    """The versions of what applies the conditions: Pillow, and the JPEG and WebP libraries it was built with."""
    import PIL
    from PIL import features

    def version(feature: str) -> str | None:
        try:
            return features.version(feature)
        except ValueError:  # a Pillow that does not know the feature
            return None

    found = {"pillow": PIL.__version__}
    turbo = version("libjpeg_turbo")
    jpeg = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {version('jpg')}" if version("jpg") else None
    for key, value in (("jpeg", jpeg), ("webp", version("webp"))):
        if value is not None:
            found[key] = value
    return found


def describe_codecs(found: dict[str, str]) -> str:
    """``Pillow 13.0.0 (libjpeg-turbo 3.2.0, libwebp 1.6.0)`` of :func:`codecs` or a registry's record of it."""
    libs = [found["jpeg"]] if found.get("jpeg") else []
    libs += [f"libwebp {found['webp']}"] if found.get("webp") else []
    return f"Pillow {found.get('pillow', '?')}" + (f" ({', '.join(libs)})" if libs else "")


@functools.lru_cache(maxsize=256)
def processing_digest(name: str) -> str:
    """What this machine makes of a fixed probe under the condition ``name``, as a digest: grey and colour
    images (a smooth ramp with seeded noise on it, at the sizes of MNIST and CIFAR-10) put through it. Two
    machines with the same digest process images alike under ``name``; another Pillow, libjpeg or libwebp may
    not (records made by one are then not comparable with records made by the other)."""
    from forensics.io.hashing import sha256_bytes

    rng = np.random.default_rng(20261205)
    probes = []
    for shape in ((3, 28, 28), (3, 32, 32, 3)):
        ramp = np.linspace(0, 255, shape[2])[None, None, :] * np.linspace(0.2, 1.0, shape[1])[None, :, None]
        ramp = ramp.reshape(ramp.shape + (1,) * (len(shape) - 3))
        probes.append(np.clip(ramp + rng.normal(0, 24, shape), 0, 255).astype(np.uint8))
    out = [np.ascontiguousarray(get_condition(name).apply(p)) for p in probes]
    return sha256_bytes(b"".join(f"{name}|{o.shape}|{o.dtype}|".encode() + o.tobytes() for o in out))


def applicable() -> list[str]:
    """Every condition a reference side can be put through when the query's condition is read from its files
    (``memorization``): :data:`CONDITIONS`, and JPEG and lossy WebP at every quality, alone and after each
    resampling, so that the files' own quality is matched, not the nearest kept one."""
    resamplings = [n for n, c in _SINGLE.items() if c.resample is not None]
    qualities = [f"{codec}{q}" for codec in ("jpeg", "webp") for q in range(1, 101)]
    return list(dict.fromkeys([*CONDITIONS, *qualities, *(f"{r}+{q}" for r in resamplings for q in qualities)]))


def _plain(names: Sequence[str]) -> list[str]:
    """The conditions of ``names`` that resample nothing: as generated and the re-encodings at the generators'
    size."""
    return [n for n in names if get_condition(n).resample is None]


def parse_conditions(text: str | Sequence[str] | None) -> list[str]:
    """Condition names from ``"all"``, ``"none"``, a comma-separated list or a sequence; ``none`` always
    first (the enrolled curve itself)."""
    if text is None or text == "all":
        names = list(CONDITIONS)
    else:
        names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for n in names:
        get_condition(n)
    return [NONE] + [n for n in dict.fromkeys(names) if n != NONE]


def parse_mixture(text: str, size: int) -> Mixture | None:
    """A batch of ``size`` images processed in several ways, as ``registry evaluate --condition`` names it:
    conditions separated by ``/``, each with an optional share after ``:`` (``none/jpeg90``: half each;
    ``none:3/jpeg90:1``: three quarters as generated); None for one condition (no ``/``)."""
    if "/" not in text:
        return None
    shares: dict[str, float] = {}
    for part in text.split("/"):
        name, _, share = part.strip().partition(":")
        try:
            weight = float(share) if share else 1.0
        except ValueError:
            weight = -1.0
        if not math.isfinite(weight) or weight <= 0 or name in shares:
            raise UsageError(f"cannot read the mixture {text!r}: name each condition once, each with an optional "
                             "positive share after ':' (none/jpeg90, none:3/jpeg90:1)")
        get_condition(name)
        shares[name] = weight
    found = scaled_mixture(tuple(shares.items()), size)
    if len(found) < 2:
        raise UsageError(f"the mixture {text!r} leaves a batch of {size} images under one condition: give each "
                         "condition a share large enough for one image at least")
    return found


# -- reading the condition from the files ---------------------------------------------------------
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
"""The JPEG standard's (Annex K) luminance quantisation table, which libjpeg scales by quality."""


def ijg_scale(quality: int) -> int:
    """The percentage by which libjpeg scales the standard tables at ``quality`` (1–100)."""
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def ijg_table(quality: int) -> np.ndarray:
    """libjpeg's luminance table at ``quality`` (1–100)."""
    return np.clip((_IJG_LUMA * ijg_scale(quality) + 50) // 100, 1, 255)


def jpeg_quality(table: Sequence[int]) -> tuple[int, bool]:
    """(the libjpeg quality whose luminance table is closest to ``table``, whether it is that table
    exactly). Compared as sorted values, so the table's order (natural or zigzag) does not matter."""
    got = np.sort(np.asarray(list(table), dtype=np.int64))
    errors = [(int(np.abs(np.sort(ijg_table(q)) - got).sum()), -q) for q in range(1, 101)]
    err, neg_q = min(errors)
    return -neg_q, err == 0


class JpegFile(NamedTuple):
    """What a JPEG file's header says of its encoding."""

    quality: int       # the libjpeg quality whose luminance table is nearest the file's
    exact: bool        # the table is exactly libjpeg's at that quality (else another encoder wrote it)
    subsampled: bool   # colour whose chroma was stored at lower resolution (4:2:2, 4:2:0): lost at any quality


class TiffJpegFile(JpegFile):
    """What a JPEG-compressed TIFF's JPEGTables say of its encoding (as :class:`JpegFile`)."""

    __slots__ = ()


def file_jpeg(path: str | Path) -> JpegFile | None:
    """What an image file's JPEG header says (:class:`JpegFile`), None when it is not a JPEG. Read once per
    state of the file (its modification time, size and inode): a folder is read kind by kind and as a whole.
    A JPEG-compressed TIFF is read from its JPEGTables (TIFF tag 347, where the quantisation tables of its
    JPEG strips are kept); one whose tables cannot be read is None here and :func:`file_tiff_jpeg` says so.
    Chroma subsampled at quality 100 counts only where the decoded image has colour: a grey image saved as
    colour has flat chroma, which subsampling leaves as it is (the same pixels as the grey file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _jpeg_header(str(path), (st.st_mtime_ns, st.st_size, st.st_ino))


def dqt_tables(data: bytes) -> dict[int, list[int]]:
    """The quantisation tables (table id → 64 steps, in the stream's zigzag order) of the DQT segments in a
    JPEG stream's bytes (``data`` from its SOI marker: a file, or a TIFF's JPEGTables), up to its first scan."""
    tables: dict[int, list[int]] = {}
    if data[:2] != b"\xff\xd8":
        return tables
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in (0xD9, 0xDA) or length < 2:  # the end, or the first scan: no tables after it here
            break
        if marker == 0xDB:
            seg, at = data[pos + 4:pos + 2 + length], 0
            while at < len(seg):
                wide, tq = seg[at] >> 4, seg[at] & 15
                n = 128 if wide else 64
                body = seg[at + 1:at + 1 + n]
                if len(body) < n:
                    break
                tables[tq] = [int.from_bytes(body[i:i + 2], "big") for i in range(0, n, 2)] if wide else list(body)
                at += 1 + n
        pos += 2 + length
    return tables


#: TIFF tags read for a JPEG-compressed TIFF: Compression, Photometric, JPEGTables, YCbCrSubSampling
_TIFF_COMPRESSION, _TIFF_PHOTOMETRIC, _TIFF_JPEG_TABLES, _TIFF_YCBCR_SUBSAMPLING = 259, 262, 347, 530


def _tiff_jpeg(im: Any) -> tuple[dict[int, list[int]], bool] | None:
    """(the quantisation tables, whether chroma is subsampled) of a JPEG-compressed TIFF open in Pillow; None
    when it is not one. Its tables are empty when its JPEGTables tag holds none (old-style JPEG, compression 6)."""
    tags = getattr(im, "tag_v2", None)
    if im.format != "TIFF" or tags is None or tags.get(_TIFF_COMPRESSION) not in (6, 7):
        return None
    raw = tags.get(_TIFF_JPEG_TABLES)
    tables = dqt_tables(bytes(raw)) if isinstance(raw, (bytes, bytearray)) else {}
    sampling = tuple(tags.get(_TIFF_YCBCR_SUBSAMPLING) or (2, 2))
    return tables, tags.get(_TIFF_PHOTOMETRIC) == 6 and sampling != (1, 1)


def _grey(im: Any) -> bool:
    """Whether a colour image (open in Pillow, not yet decoded) decodes to R = G = B everywhere."""
    rgb = np.asarray(im.convert("RGB"))
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


@functools.lru_cache(maxsize=1 << 17)
def _jpeg_header(path: str, stamp: tuple[int, int, int]) -> JpegFile | None:
    from PIL import Image, JpegImagePlugin

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                tables = getattr(im, "quantization", None) or {}
                subsampled = im.mode not in ("L", "1") and JpegImagePlugin.get_sampling(im) > 0
                kind = JpegFile
            elif (tiff := _tiff_jpeg(im)) is not None:
                (tables, subsampled), kind = tiff, TiffJpegFile
                subsampled = subsampled and im.mode not in ("L", "1")
            else:
                return None
            if 0 not in tables:
                return None
            quality, exact = jpeg_quality(tables[0])
            if subsampled and exact and quality == 100 and _grey(im):  # flat chroma: subsampling lost nothing
                subsampled = False
    except (OSError, ValueError):
        return None
    return kind(quality, exact, subsampled)


def file_tiff_jpeg(path: str | Path) -> bool:
    """Whether an image file is a JPEG-compressed TIFF whose quantisation tables cannot be read (no
    JPEGTables): lossy at a quality nothing in the file says."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            found = _tiff_jpeg(im)
    except (OSError, ValueError):
        return False
    return found is not None and 0 not in found[0]


def file_webp(path: str | Path) -> str | None:
    """"lossy" or "lossless" as a WebP file's chunks say (a VP8 or a VP8L bitstream), None when it is not
    a WebP file. Read from the RIFF chunk headers alone; nothing is decoded."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return None
            for _ in range(64):  # VP8X, ICCP, ANIM, ALPH … before the bitstream; a file holds a few chunks
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
                if kind == b"VP8 ":
                    return "lossy"
                if kind == b"VP8L":
                    return "lossless"
                if kind == b"ANMF":  # an animation: its first frame's chunks follow the frame's 16-byte header
                    f.seek(16, 1)
                    continue
                f.seek(length + (length & 1), 1)
    except OSError:
        return None
    return None


class _BoolDecoder:
    """VP8's boolean entropy decoder (RFC 6386, section 7), enough to read a frame header."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 2
        self.value = (data[0] << 8) | data[1] if len(data) >= 2 else 0
        self.range, self.bits = 255, 0

    def bit(self, prob: int = 128) -> int:
        split = 1 + (((self.range - 1) * prob) >> 8)
        if self.value >= split << 8:
            out, self.range, self.value = 1, self.range - split, self.value - (split << 8)
        else:
            out, self.range = 0, split
        while self.range < 128:
            self.value, self.range, self.bits = self.value << 1, self.range << 1, self.bits + 1
            if self.bits == 8:
                self.bits = 0
                self.value |= self.data[self.pos] if self.pos < len(self.data) else 0
                self.pos += 1
        return out

    def literal(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def skip_signed(self, n: int) -> None:  # a flagged, signed field: flag, n bits, sign
        if self.bit():
            self.literal(n + 1)


def webp_quantiser(data: bytes) -> int | None:
    """The base quantiser index (0–127, coarser as it grows) in the key frame header of a lossy WebP
    file's bytes: the luma AC index, which libwebp sets from the quality (and from the image's content),
    None when there is no lossy key frame to read."""
    at = data.find(b"VP8 ", 12)
    frame = data[at + 8:] if at >= 0 else b""
    if len(frame) < 12 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":  # not a key frame
        return None
    b = _BoolDecoder(frame[10:])
    b.literal(2)  # colour space, clamping
    if b.bit():  # segmentation
        update_map, update_data = b.bit(), b.bit()
        if update_data:
            b.bit()  # absolute or delta values
            for _ in range(4):
                b.skip_signed(7)  # quantiser per segment
            for _ in range(4):
                b.skip_signed(6)  # loop filter level per segment
        if update_map:
            for _ in range(3):
                if b.bit():
                    b.literal(8)
    b.literal(1 + 6 + 3)  # filter type, level, sharpness
    if b.bit() and b.bit():  # loop filter deltas, updated
        for _ in range(8):
            b.skip_signed(6)
    b.literal(2)  # DCT partitions
    return b.literal(7)


def webp_requantised(path: str | Path, qualities: Sequence[int]) -> dict[int, int] | None:
    """How far a lossy WebP file's quantiser index lies from that of the same image re-encoded at each of
    ``qualities`` (libwebp through PIL): 0 at the quality it was written at with those settings, whatever the
    image (the index depends on the content as well as on the quality, so it is compared with its own
    re-encoding, not with a table). None when the file has no lossy frame to read."""
    from PIL import Image

    data = Path(path).read_bytes()
    found = webp_quantiser(data)
    if found is None:
        return None
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode)
    moved = {}
    for quality in qualities:
        buf = io.BytesIO()
        im.save(buf, format="WEBP", quality=quality)
        again = webp_quantiser(buf.getvalue())
        if again is not None:
            moved[quality] = abs(found - again)
    return moved


def nearest_webp(files: Sequence[str | Path], available: Sequence[str], sample: int = 16) -> tuple[str, float] | None:
    """The kept WebP condition whose re-encoding keeps the files' quantiser index best (:func:`webp_quality`
    over the kept qualities), with that median change; None if none is kept or none can be read."""
    kept = {q: n for n in _plain(available) if (q := get_condition(n).webp_quality) is not None}
    found = webp_quality(files, list(kept), sample)
    return None if found is None else (kept[found[0]], found[1])


def webp_quality(files: Sequence[str | Path], qualities: Sequence[int] = range(1, 101),
                 sample: int = 16) -> tuple[int, float] | None:
    """(the quality of ``qualities`` whose re-encoding moves the files' quantiser index least — the median
    change over up to ``sample`` files; the middle of the qualities that tie —, that median); None when no
    file can be read. The index moves about one step per quality step near the files' own quality (on digits
    written by PIL: 0 at it, 1–2 one away, 3–5 three away), so more than 20 qualities are searched coarse to
    fine: every fifth, then the four on either side of the best."""
    files = list(files)[:sample]
    ordered = sorted(set(qualities))

    def least(among: Sequence[int]) -> tuple[int, float] | None:
        moved = [m for m in (webp_requantised(f, among) for f in files) if m]
        scored = {q: float(np.median([m[q] for m in moved if q in m])) for q in among if any(q in m for m in moved)}
        if not scored:
            return None
        best = min(scored.values())
        ties = [q for q in sorted(scored) if scored[q] == best]
        return ties[len(ties) // 2], best

    if len(ordered) <= 20:
        return least(ordered)
    coarse = least(ordered[::5])
    if coarse is None:
        return None
    return least([q for q in ordered if abs(q - coarse[0]) <= 4])


WEBP_TOLERANCE = 1
"""How far (median change of the quantiser index, :func:`nearest_webp`) a lossy WebP set may lie from the kept
WebP condition it is matched under without a warning. On 30 digits written by PIL, files re-encoded at their
own quality change by 0 (median; at most 5 for one file at 75, 1 at 90), at 5 qualities away by 3 to 9 (70 and
80 at 75, 85 and 95 at 90); on the default's query sets, quality 85 matched as 90 was named wrong 8 times in 151
batches, as itself never (docs/robustness.md)."""


def resample(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Images brought to ``size`` (height, width) by the bicubic resampling the conditions use: the second
    half of a resize or crop round trip, for images that arrive after the first half only."""
    height, width = size
    return _each(images, lambda im: im.resize((width, height), _bicubic()))


def _bicubic() -> Any:
    from PIL import Image

    return Image.BICUBIC


def lossless(jpeg: JpegFile) -> bool:
    """Whether a JPEG file changed nothing the encoders see: every quantisation step 1 (libjpeg's quality
    100), and no chroma subsampled where the image has colour (:func:`file_jpeg`) — only the rounding of its transform is left, and it is matched as
    generated. (On the default, the 9 held-out sets saved at quality 100 were named right 9 of 9 times as
    generated and 1 of 9 as 95; at 98 neither holds, and 98 is kept: docs/robustness.md.)"""
    return jpeg.exact and jpeg.quality == 100 and not jpeg.subsampled


Mixture = tuple[tuple[str, int], ...]
"""Images processed in several ways, as a batch holds them: (condition, how many images), most first."""


def mixture_of(conditions: Sequence[str] | Counter[str]) -> Mixture:
    """The :data:`Mixture` of images whose conditions are ``conditions`` (one per image, or counted already):
    each condition and its count, most first (then by name); conditions counted 0 left out."""
    counts = conditions if isinstance(conditions, Counter) else Counter(conditions)
    return tuple(sorted(((n, k) for n, k in counts.items() if k), key=lambda kv: (-kv[1], kv[0])))


def mixture_name(mixture: Mixture) -> str:
    """A mixture in words, for reports and keys: ``none 250 + jpeg90 250``."""
    return " + ".join(f"{n} {k}" for n, k in mixture)


def scaled_mixture(mixture: Mixture, size: int) -> Mixture:
    """``mixture`` in the same proportions for a batch of ``size`` images (largest remainders; conditions
    that round to no image dropped): the mixture a mean curve of several batches stands for at ``size``."""
    total = sum(k for _, k in mixture)
    exact = [(n, k * size / total) for n, k in mixture]
    counts = Counter({n: int(math.floor(x)) for n, x in exact})
    for n, x in sorted(exact, key=lambda nx: (-(nx[1] - math.floor(nx[1])), nx[0]))[:size - sum(counts.values())]:
        counts[n] += 1
    return mixture_of(counts)


@dataclass(frozen=True)
class Detected:
    """The condition a query is matched under, and why: ``source`` is "declared", "files" (read from the
    input: its files' headers, its images' size) or "default". ``warning``: what makes that condition a guess
    (a quality far from every kept one, files that disagree, tables another encoder wrote, JPEG files with no
    JPEG condition kept, lossy WebP, a size no resampling condition gives), one line, or None.
    ``resample_to``: (height, width) the images are brought to before they are embedded — the size the
    enrolled generators wrote, when the images arrive at another — or None. ``withhold``: why no generator
    may be named under this condition (the references cannot stand for it: lossy WebP), or None.
    ``mixture``: files that arrived processed in different ways (some re-saved as JPEG or resized, some
    not) — the condition of each image in reading order, every one kept by the references, ``name`` then the
    most common; None when one condition stands for them all."""

    name: str
    source: str
    detail: str
    warning: str | None = None
    resample_to: tuple[int, int] | None = None
    withhold: str | None = None
    mixture: tuple[str, ...] | None = None

    def of(self, rows: slice = slice(None)) -> str | Mixture:
        """The condition the images ``rows`` (in reading order) are matched under: ``name``, or for a
        mixture the :data:`Mixture` of those rows (a condition's name where they all share one)."""
        if self.mixture is None:
            return self.name
        found = mixture_of(self.mixture[rows])
        return found[0][0] if len(found) == 1 else found

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "source": self.source, "detail": self.detail,
               "description": get_condition(self.name).description}
        if self.resample_to is not None:
            out["resampled_to"] = list(self.resample_to)
        if self.mixture is not None:
            out["mixture"] = [{"name": n, "count": k, "description": get_condition(n).description}
                              for n, k in mixture_of(self.mixture)]
        return out


def records_hint(condition: str) -> str:
    """How to keep records under ``condition`` for the enrolled instances, for a warning that it is missing."""
    return (f"`forensics registry records NAME IMAGES --conditions {condition}` keeps records under it for the "
            f"instances enrolled from IMAGES, `forensics zoo enroll --conditions {condition}` for the zoo's")


def nearest_jpeg(quality: int, available: Sequence[str]) -> str | None:
    """The available JPEG condition nearest in quality (the higher on a tie), None if there is none."""
    found = {n: get_condition(n).jpeg_quality for n in _plain(available)}
    jpegs = [(abs(q - quality), -q, n) for n, q in found.items() if q is not None]
    return min(jpegs)[2] if jpegs else None


def detect(files: Sequence[str | Path] | None, available: Sequence[str], *,
           sizes: Sequence[tuple[int, int]] = (), native: tuple[int, int] | None = None,
           mixtures: bool = False, image_sizes: Sequence[tuple[int, int]] = ()) -> Detected:
    """The condition of a query read from its input. JPEGs say their quality (the most common one among the
    files; the nearest JPEG condition in ``available`` is taken); images of another size than the one the
    enrolled generators write (``native``, (height, width); ``sizes``: the sizes the images came in) were
    resampled on the way: they are brought back to it (:func:`resample`, ``resample_to``) and matched under
    the resampling condition of the nearest scale, combined with their re-encoding where it is kept
    (:func:`geometry`). Anything else is "none"; an array (``files`` None) says nothing but its size.
    ``mixtures``: files that were processed in different ways — re-encoded or not, and with several sizes
    (``image_sizes``: each image's, in reading order; the images already brought back to ``native`` each)
    resampled or not — are each read as what they are (:func:`mixed`) rather than all as the most common."""
    if native is None or not sizes or len(sizes) == 1 and tuple(sizes[0]) == tuple(native):
        return mixed(files, available) if mixtures else _encoding(files, available)
    if len(sizes) > 1:
        if mixtures and image_sizes:
            return mixed(files, available, image_sizes=image_sizes, native=native)
        found = _encoding(files, available)
        return replace(found, warning="; ".join(filter(None, [found.warning, mixed_sizes(sizes, native)])))
    size = tuple(sizes[0])
    return geometry(files, (int(size[0]), int(size[1])), native, available)


def mixed_sizes(sizes: Sequence[tuple[int, int]], native: tuple[int, int]) -> str:
    """The warning for images that come in several sizes (height, width): their size says nothing."""
    names = ", ".join(f"{w}×{h}" for h, w in sorted(sizes)[:4]) + (", …" if len(sizes) > 4 else "")
    return (f"the images come in {len(sizes)} sizes ({names}), each brought back to the {native[1]}×{native[0]} the "
            "generators write (bicubic), but all matched under one condition: attribute each size on its own")


#: how far (on a log scale) a width-to-height ratio may stray from the generators' before the images are said to
#: have been stretched: the rounding of a resize or crop of 28 pixels moves it by under 4 %
ASPECT_TOLERANCE = 0.04


def geometry(files: Sequence[str | Path] | None, size: tuple[int, int], native: tuple[int, int],
             available: Sequence[str]) -> Detected:
    """Images of ``size`` (height, width) where the enrolled generators write ``native`` went through one
    half of a resampling: they are brought back to ``native`` (the other half) and matched under the
    resampling condition whose scale is nearest theirs (a ×2 resize, a ×0.5 one, a 90 % crop; a crop and a
    resize to the same size cannot be told apart). Files re-encoded at that size (JPEG, lossy WebP) are
    matched under the combination of that resampling and the nearest re-encoding kept with it
    (``resize2+jpeg90``)."""
    scale = math.sqrt(size[0] / native[0] * size[1] / native[1])
    pick = min((c for c in _SINGLE.values() if c.resample is not None),
               key=lambda c: (abs(math.log(scale / c.scale)), c.name))
    shown, generated = f"{size[1]}×{size[0]}", f"{native[1]}×{native[0]}"
    detail = (f"the images are {shown}, the generators write {generated} (×{scale:.3g}): brought back to "
              f"{generated} (bicubic) and matched as {pick.name}"
              + (" (a crop and a resize to that size leave one size: read as the crop)" if pick.name.startswith("crop")
                 else ""))
    warnings = []
    if abs(math.log(size[1] / size[0] * native[0] / native[1])) > ASPECT_TOLERANCE:  # stretched or squeezed
        warnings.append(f"the images are {shown}, of another shape than the {generated} the generators write "
                        f"(width to height {size[1] / size[0]:.3g} against {native[1] / native[0]:.3g}): they were "
                        f"stretched or cut unevenly, which no kept condition does; brought back to {generated} and "
                        f"matched as {pick.name} (×{pick.scale:g}), a guess")
    elif size != scaled(native, pick.scale):
        warnings.append(f"the images are {shown}, ×{scale:.3g} the {generated} the generators write, which "
                        f"{pick.name} (×{pick.scale:g}) is not: matched as {pick.name}, a guess")
    name = pick.name
    kept = {c.encoding: n for n in available if (c := get_condition(n)).resampling == pick.name and c.encoding}
    # re-encoded at the resampled size: among the re-encodings kept with it (the files read once); only when
    # none is kept for theirs are they read again, for what they are
    found = _encoding(files, [NONE, *kept]) if kept else None
    if found is not None and found.name != NONE:
        name = kept[found.name]
        detail = f"{detail}; {found.detail}: matched as {name}"
    elif found is None or found.warning or found.withhold:
        found = _encoding(files, available)
    if name not in available:
        warnings.append(f"the references keep no records under {name}: the images, brought back to {generated}, are "
                        f"matched as generated, which they are not ({records_hint(name)})")
        name = NONE
    if found.name != NONE and name in (pick.name, NONE):
        warnings.append(f"the files were also re-encoded ({found.detail}); the references keep no records under "
                        f"{pick.name}+{found.name}: matched as {name} alone ({records_hint(f'{pick.name}+{found.name}')})")
    warnings += [found.warning] if found.warning else []
    return Detected(name, "files", detail, "; ".join(warnings) or None, resample_to=native,
                    withhold=found.withhold if name in (pick.name, NONE) else None)


def _webp(files: Sequence[str | Path], available: Sequence[str]) -> Detected:
    """The condition of files none of which is a JPEG: lossy WebP (the kept WebP quality whose re-encoding
    keeps their quantiser, :func:`nearest_webp`), else "none"."""
    lossy = [f for f in files if file_webp(f) == "lossy"]
    share = f"{len(lossy)} of the {len(files)} files are lossy WebP"
    if not lossy:
        tiffs = sum(file_tiff_jpeg(f) for f in files)
        return Detected(NONE, "files", f"none of the {len(files)} files is a JPEG; assumed as generated", None if not tiffs
                        else f"{tiffs} of the {len(files)} files are JPEG-compressed TIFF, lossy at a quality they do not "
                             "record (no JPEGTables): matched as generated, which they are not; declare what they went "
                             "through with --condition (e.g. jpeg75)")
    if 2 * len(lossy) < len(files):
        return Detected(NONE, "files", f"none of the {len(files)} files is a JPEG; assumed as generated",
                        f"{share}: matched as generated, which they are not; attribute each kind of file on its own")
    found = nearest_webp(lossy, available)
    if found is None:  # matched as generated they are named wrong (docs/robustness.md): withheld
        kept = any(get_condition(n).webp_quality is not None for n in _plain(available))
        said = (f"{share}, but none has a lossy frame whose quality can be read" if kept else
                f"{share}, a re-encoding the references keep no condition for")
        return Detected(NONE, "files", f"{share}, none a JPEG; matched as generated, and no generator named",
                        f"{said}: no generator is named (`--condition none` matches them as generated all the same)",
                        withhold=f"{said} (as generated, lossy WebP is named wrong)")
    name, change = found
    quality = get_condition(name).webp_quality
    detail = (f"{share}; re-encoded at WebP quality {quality} their quantiser index moves by {change:g} (median), "
              "the least of the kept qualities")
    warnings = []
    if change > WEBP_TOLERANCE:
        kept = sorted(q for n in _plain(available) if (q := get_condition(n).webp_quality) is not None)
        own = webp_quality(lossy)
        about = (f"; they are about quality {own[0]} (moved by {own[1]:g} re-encoded at it): "
                 + records_hint(f"webp{own[0]}") if own is not None and own[1] <= WEBP_TOLERANCE else "")
        warnings.append(f"the WebP files match no kept WebP quality ({', '.join(map(str, kept))}): their quantiser "
                        f"moves by {change:g} re-encoded at {quality}, the nearest; matched as {name}, a guess{about}")
    if len(lossy) < len(files):
        warnings.append(f"{len(files) - len(lossy)} of the {len(files)} files are not lossy WebP: all are matched as "
                        f"{name}; attribute each kind of file on its own")
    return Detected(name, "files", detail, "; ".join(warnings) or None)


def _kind(path: str | Path) -> tuple[Any, ...]:
    """What a file's header says of its encoding, as a key that groups files encoded alike: a JPEG's
    quality (and whether it quantises at all), lossy WebP, or anything else (PNG, lossless WebP, …)."""
    jpeg = file_jpeg(path)
    if jpeg is not None:
        return ("jpeg", jpeg.quality, jpeg.exact, lossless(jpeg))
    return ("webp",) if file_webp(path) == "lossy" else ("other",)


def mixed(files: Sequence[str | Path] | None, available: Sequence[str], *,
          image_sizes: Sequence[tuple[int, int]] = (), native: tuple[int, int] | None = None) -> Detected:
    """The condition of files that may have been processed in different ways — half a folder re-saved as
    JPEG 90, the rest PNG as generated. Files encoded alike (:func:`_kind`) are read together as
    :func:`_encoding` reads a folder; when they fall under two or more of the kept conditions, each image
    keeps its own (``mixture``) and the set is matched against references whose images are processed in the
    same proportions (each a sub-batch whose images are put through the conditions in the batch's counts).
    Images of several sizes (``image_sizes``, each image's, in reading order; each already brought back to
    ``native``, the size the generators write) are also grouped by size, a size other than ``native`` read
    as :func:`geometry` reads a folder of it (the resampling that size says, with its re-encoding).
    When every kind falls under one condition (PNG and JPEG 100, which quantises nothing; JPEG 88 and 90,
    both nearest the kept 90) that condition stands for them all, with only what each kind's reading warns
    of. When one kind cannot be matched as itself (lossy WebP whose quality cannot be read), as
    :func:`_encoding` reads them: all under the most common condition, with a warning that they differ."""
    def as_one() -> Detected:  # read only where needed: a lossy WebP reading re-encodes files
        whole = _encoding(files, available)
        if image_sizes and native is not None and len(set(image_sizes)) > 1:
            whole = replace(whole, warning="; ".join(filter(None, [whole.warning,
                                                                    mixed_sizes(sorted(set(image_sizes)), native)])))
        return whole

    if not files or len(files) < 2:
        return as_one()
    kinds: dict[tuple[Any, ...], list[int]] = {}
    for i, f in enumerate(files):
        size = tuple(image_sizes[i]) if image_sizes and native is not None else None
        kinds.setdefault((None if size == tuple(native or ()) else size, *_kind(f)), []).append(i)
    if len(kinds) < 2:
        return as_one()

    def reading(key: tuple[Any, ...], group: list[str | Path]) -> Detected:
        size = key[0]
        return _encoding(group, available) if size is None else geometry(group, size, native, available)

    read = {k: reading(k, [files[i] for i in rows]) for k, rows in kinds.items()}
    if any(d.withhold for d in read.values()):
        return as_one()
    each: list[str] = [NONE] * len(files)
    for k, rows in kinds.items():
        for i in rows:
            each[i] = read[k].name
    counts = mixture_of(each)
    name = counts[0][0]
    order = sorted(kinds, key=lambda k: (-len(kinds[k]), str(k)))
    if len(kinds) > MAX_KINDS_SAID:  # files of many sizes: one clause per condition, its sizes summed up
        by: dict[str, list[tuple[Any, ...]]] = {}
        for k in order:
            by.setdefault(read[k].name, []).append(k)

        def summed(ks: list[tuple[Any, ...]]) -> str:
            sizes = sorted({k[0] for k in ks if k[0] is not None})
            n = sum(len(kinds[k]) for k in ks)
            return (f"{n} of the {len(files)} files" + (f", of {len(sizes)} sizes from {sizes[0][1]}×{sizes[0][0]} to "
                                                          f"{sizes[-1][1]}×{sizes[-1][0]}" if len(sizes) > 1 else ""))

        detail = "; ".join(f"{summed(ks)} as {c}: as the most common of them, {read[ks[0]].detail}"
                           for c, ks in by.items())
        warnings = [f"{summed(ks)}: as the most common of them, {read[ks[0]].warning}" for ks in by.values()
                    if any(read[k].warning for k in ks)]
    else:
        detail = "; ".join(f"{len(kinds[k])} as {read[k].name}: {read[k].detail}" for k in order)
        warnings = [f"{len(kinds[k])} of the {len(files)} files: {read[k].warning}" for k in order if read[k].warning]
    return Detected(name, "files", detail, "; ".join(warnings) or None,
                    mixture=tuple(each) if len(counts) > 1 else None)


#: above this many kinds of file (size and encoding), a reading says one clause per condition, not per kind
MAX_KINDS_SAID = 6


def _encoding(files: Sequence[str | Path] | None, available: Sequence[str]) -> Detected:
    """The condition the files' encoding says: a JPEG's quality, else "none" (:func:`detect`)."""
    if not files:
        return Detected(NONE, "default", "an array of pixels carries no record of its processing; assumed as generated")
    found = [file_jpeg(f) for f in files]
    qualities = Counter(None if j is None else j.quality for j in found)
    foreign = sum(j is not None and not j.exact for j in found)
    jpegs = sum(n for q, n in qualities.items() if q is not None)
    if jpegs == 0:
        return _webp(files, available)
    (quality, count), = [(q, n) for q, n in qualities.most_common() if q is not None][:1]
    mixed = f"; {len(files) - count} of {len(files)} files differ" if count < len(files) else ""
    def differ(matched_as: str) -> str:
        return (f"{len(files) - count} of the {len(files)} files are not JPEG at quality {quality}, the most "
                f"common: all are matched as {matched_as}; attribute each kind of file on its own")
    if all(lossless(j) for j in found if j is not None and j.quality == quality):
        return Detected(NONE, "files", f"JPEG quality {quality} read from the quantisation tables of {count} of "
                                       f"{len(files)} files{mixed}: every step 1, nothing quantised; matched as "
                                       "generated", differ("generated") if count < len(files) else None)
    name = nearest_jpeg(quality, available)
    if name is None:
        return Detected(NONE, "files", f"{jpegs} of {len(files)} files are JPEG (quality {quality}) but the "
                                       f"references keep no JPEG condition; matched as generated{mixed}",
                        f"the images are JPEG (quality {quality}) but the references keep no JPEG condition: "
                        f"matched as generated, which re-encoded images are not ({records_hint(f'jpeg{quality}')})")
    warnings = []
    near = get_condition(name).jpeg_quality
    if abs(near - quality) > JPEG_TOLERANCE:
        kept = sorted(q for n in _plain(available) if (q := get_condition(n).jpeg_quality) is not None)
        warnings.append(f"JPEG quality {quality} lies more than {JPEG_TOLERANCE} from every quality the references "
                        f"keep ({', '.join(map(str, kept))}): matched as {name}, which it is not; "
                        + records_hint(f"jpeg{quality}"))
    elif (step := step_ratio(quality, near)) > JPEG_STEP_TOLERANCE:
        how = "coarsely" if quality < near else "finely"
        warnings.append(f"JPEG quality {quality} quantises {math.exp(step):.2g}× as {how} as {near}, the nearest "
                        f"quality the references keep: matched as {name}, which it is not")
    if quality == 100 and any(j is not None and j.quality == 100 and j.exact and j.subsampled for j in found):
        warnings.append(f"the JPEG files at quality 100 store their colour (chroma) subsampled (4:2:0 or 4:2:2), which "
                        f"loses colour detail: not lossless, so matched as {name}; save them with subsampling=0 (4:4:4) "
                        "to keep them as generated")
    if foreign:
        warnings.append(f"{foreign} of the {jpegs} JPEG files have quantisation tables other than libjpeg's (another "
                        f"encoder: a camera or an image editor): their quality is the nearest libjpeg quality, and "
                        f"{name} is libjpeg's processing, not theirs")
    if count < len(files):
        warnings.append(differ(name))
    tiffs = sum(isinstance(j, TiffJpegFile) for j in found)
    within = f" ({tiffs} of them JPEG-compressed TIFF, read from their JPEGTables)" if tiffs else ""
    return Detected(name, "files", f"JPEG quality {quality} read from the quantisation tables of {count} of "
                                   f"{len(files)} files{within}{mixed}", "; ".join(warnings) or None)
