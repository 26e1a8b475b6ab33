"""Image bytes -> an RGB PIL image, bounded: the header's size is checked before any pixel is decoded, so a
decompression bomb costs a header read; any mode (palette, alpha, CMYK, 16-bit) comes out as 8-bit RGB."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_HIGH_DEPTH = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

MAX_ASPECT = 4.0  # longer/shorter side kept before a shortest-edge resize (its centre crop is far inside)


class ImageRejected(Exception):
    """An image that does not embed; the message is its one-line reason."""


def decode_rgb(data: bytes, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` to RGB, refusing more than ``max_pixels`` from the header. ``min_side`` (the model's input
    side): a large JPEG is decoded at a reduced DCT scale whose sides stay >= 2 x ``min_side`` (far cheaper)."""
    if not data:
        raise ImageRejected("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning: under -W error
        raise ImageRejected(f"too many pixels: {_line(exc)}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not a readable image: unknown format or corrupt header") from None
    except Exception as exc:  # PIL raises many types for unreadable headers; all mean the same here
        raise ImageRejected(f"not a readable image: {_line(exc)}") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageRejected(f"too many pixels: {width}x{height} > {max_pixels:,}")
        if width < 1 or height < 1:
            raise ImageRejected(f"empty image: {width}x{height}")
        try:
            if min_side is not None and im.format == "JPEG":
                # libjpeg's 1/2, 1/4, 1/8 scales, keeping >= 2x the input side: the resize still antialiases
                im.draft(None, (2 * min_side, 2 * min_side))
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im) or im)
        except Exception as exc:  # truncated or corrupt data
            raise ImageRejected(f"cannot decode: {_line(exc)}") from None
    return rgb


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited on white (as the CLIP/SigLIP processors do), 16-bit scaled."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH:
        arr = np.asarray(im)
        if im.mode == "F":
            arr8 = np.clip(np.nan_to_num(arr), 0, 255).round()
        else:
            arr8 = np.clip(arr.astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(arr8.astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info) or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def bound_aspect(image: Image.Image) -> Image.Image:
    """Centre-crop a banner-shaped image to MAX_ASPECT: a shortest-edge resize of a 1x40000 image would
    allocate gigabytes; CLIP's square centre crop lies well inside what is kept, so its input is unchanged."""
    w, h = image.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return image
    if w > h:
        keep = int(MAX_ASPECT * h)
        left = (w - keep) // 2
        return image.crop((left, 0, left + keep, h))
    keep = int(MAX_ASPECT * w)
    top = (h - keep) // 2
    return image.crop((0, top, w, top + keep))


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
