"""Cheap image facts for sidecars and filters: format by magic bytes, size from the header, sha256."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Our names for formats (also the tar member extension used for pair images).
_PIL_TO_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
EXT_TO_PIL = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


class ImageProbeError(ValueError):
    """The bytes are not an image we can read; ``reason`` is the drop reason."""

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


def probe_image(data: bytes) -> ImageInfo:
    """Read format and size from the header (no full decode). Raises :class:`ImageProbeError`."""
    if not data:
        raise ImageProbeError("image_empty", "zero-byte image")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageProbeError("image_unreadable", f"not an image (starts with {data[:8]!r})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageProbeError("image_unreadable", f"unreadable {fmt} header: {exc}") from None
    return ImageInfo(fmt, int(width), int(height), hashlib.sha256(data).hexdigest())


def reencode(data: bytes, ext: str, quality: int = 95) -> bytes:
    """Re-encode an image to ``ext`` (jpg/png/webp), deterministically."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if ext == "jpg" and im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        out = io.BytesIO()
        params = {"quality": quality} if ext in ("jpg", "webp") else {}
        im.save(out, EXT_TO_PIL[ext], **params)
        return out.getvalue()
