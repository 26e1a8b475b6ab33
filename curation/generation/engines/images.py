"""Images on their way to an engine: decoded within PIL's pixel bound, and, for an HTTP endpoint, fitted to a
byte budget and a longest side before they are base64-encoded into a data URI.

- ``decode``: RGB PIL images for local models (vLLM's ``image_pil`` content parts, a transformers processor);
- ``data_uri``: JPEG, PNG and WebP images within ``max_bytes`` and ``max_side`` are sent as they are (their
  format read from the magic bytes); any other image (GIF, BMP, TIFF, or one over a bound) is decoded, scaled
  down to ``max_side`` and re-encoded (PNG when it has transparency, else JPEG at quality 90), then scaled
  down further (×0.75, at most 8 times) until it fits ``max_bytes``.

An image that does not decode, or cannot fit, raises ``ImageInputError`` (the engine fails that request as
``image_unreadable``).
"""

from __future__ import annotations

import base64
import io
import warnings
from functools import lru_cache
from typing import Any

from shards.imageinfo import probe_image, sniff_format

MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}  # sent as they are
JPEG_QUALITY = 90
SHRINK = 0.75
MAX_SHRINKS = 8


class ImageInputError(ValueError):
    """An image a request carries cannot be given to the engine (one line: what is wrong)."""


def _open(data: bytes) -> Any:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"image too large: {exc}") from None
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, struct.error, ...)
        raise ImageInputError(f"image does not decode ({type(exc).__name__}: {exc})") from None
    return image


def _scaled(image: Any, max_side: int | None) -> Any:
    from PIL import Image

    if max_side is None or max(image.size) <= max_side:
        return image
    ratio = max_side / max(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.BICUBIC)


def decode(data: bytes, max_side: int | None = None) -> Any:
    """The image as an RGB ``PIL.Image`` (alpha composited on white), its longest side at most ``max_side``."""
    from PIL import Image

    image = _open(data)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return _scaled(image, max_side)


def _encode(image: Any, transparent: bool) -> tuple[str, bytes]:
    out = io.BytesIO()
    if transparent:
        image.save(out, "PNG", optimize=False)
        return "png", out.getvalue()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return "jpg", out.getvalue()


def fitted(data: bytes, max_bytes: int, max_side: int) -> tuple[str, bytes]:
    """(format, bytes) of the image as it is sent: unchanged when it is JPEG/PNG/WebP within both bounds."""
    fmt = sniff_format(data)
    if fmt in MIME and len(data) <= max_bytes:
        try:
            info = probe_image(data)
        except ValueError as exc:
            raise ImageInputError(f"unreadable {fmt} header: {exc}") from None
        if max(info.width, info.height) <= max_side:
            return fmt, data
    image = _open(data)
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if transparent else "RGB")
    image = _scaled(image, max_side)
    for _ in range(MAX_SHRINKS + 1):
        fmt, encoded = _encode(image, transparent)
        if len(encoded) <= max_bytes:
            return fmt, encoded
        image = _scaled(image, max(1, int(max(image.size) * SHRINK)))
    raise ImageInputError(f"image does not fit in {max_bytes} bytes even at {image.width}x{image.height}")


@lru_cache(maxsize=16)  # the same image goes with every turn and criterion of its sample
def data_uri(data: bytes, max_bytes: int, max_side: int) -> str:
    """``data:image/<format>;base64,...`` of the image as ``fitted`` sends it."""
    fmt, encoded = fitted(data, max_bytes, max_side)
    return f"data:{MIME[fmt]};base64,{base64.b64encode(encoded).decode('ascii')}"
