"""Cheap image facts for sidecars and filters: format by magic bytes, size from the header, sha256."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Our names for formats (also the tar member extension used for pair images).
_PIL_TO_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
EXT_TO_PIL = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


# Every ``ImageProbeError.reason`` (the drop reasons of the build's ``probe`` stage), with its meaning.
PROBE_DROP_REASONS = {
    "image_empty": "a zero-byte image",
    "image_unreadable": "not an image (no known magic bytes), or a header PIL cannot read",
    "image_too_many_pixels": "the header declares more than 2 × PIL's `Image.MAX_IMAGE_PIXELS` (a decompression bomb)",
}


class ImageProbeError(ValueError):
    """The bytes are not an image we can read; ``reason`` is the drop reason (a key of PROBE_DROP_REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int
    sha256: str


def sniff_format(data: bytes) -> str | None:
    """Format from magic bytes, without decoding."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


@contextmanager
def _open(data: bytes, fmt: str) -> Iterator[Image.Image]:
    """``Image.open`` without PIL's decompression-bomb warning (printed to stderr, or an exception under
    ``-W error``); images above PIL's error threshold (``2 * Image.MAX_IMAGE_PIXELS``) raise
    :class:`ImageProbeError` ``image_too_many_pixels``. Only the header is read here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageProbeError("image_too_many_pixels", f"{fmt} image too large: {exc}") from None
    with im:
        yield im


def probe_image(data: bytes) -> ImageInfo:
    """Read format and size from the header (no full decode). Raises :class:`ImageProbeError`."""
    if not data:
        raise ImageProbeError("image_empty", "zero-byte image")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageProbeError("image_unreadable", f"not an image (starts with {data[:8]!r})")
    try:
        with _open(data, fmt) as im:
            width, height = im.size
    except ImageProbeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageProbeError("image_unreadable", f"unreadable {fmt} header: {exc}") from None
    return ImageInfo(fmt, int(width), int(height), hashlib.sha256(data).hexdigest())


_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer (``I;16*``, ``I``: the 0..65535 range) or float (``F``: 0..255) grayscale image
    as mode ``L``, scaled rather than clipped (``convert`` would turn most of a 16-bit image white)."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr8 = np.clip(np.nan_to_num(arr), 0, 255).round()
    else:
        arr8 = np.clip(arr.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(arr8.astype(np.uint8))


def _for_format(im: Image.Image, ext: str) -> Image.Image:
    """``im`` in a mode that ``ext`` stores faithfully."""
    if ext == "png":
        if im.mode == "I":  # PNG stores 16 bits, not 32
            return Image.fromarray(np.clip(np.asarray(im), 0, 65535).astype(np.uint16))
        if im.mode == "F":
            return _to_8bit(im)
        if im.mode not in _PNG_MODES:  # CMYK, YCbCr, LAB, HSV, PA, ...
            return im.convert("RGBA" if im.has_transparency_data else "RGB")
        return im
    if im.mode in _HIGH_DEPTH or im.mode == "F":
        return _to_8bit(im)
    if ext == "jpg" and im.mode not in ("RGB", "L"):
        return im.convert("RGB")  # alpha dropped, palette expanded, CMYK converted
    return im  # webp converts other modes to RGB/RGBA itself


def reencode(data: bytes, ext: str, quality: int = 95) -> bytes:
    """Re-encode an image to ``ext`` (jpg/png/webp), deterministically. High bit depths are scaled to
    8 bits for jpg/webp (16 bits kept for png)."""
    with _open(data, sniff_format(data) or "image") as im:
        im.load()
        im = _for_format(im, ext)
        out = io.BytesIO()
        params = {"quality": quality} if ext in ("jpg", "webp") else {}
        im.save(out, EXT_TO_PIL[ext], **params)
        return out.getvalue()
