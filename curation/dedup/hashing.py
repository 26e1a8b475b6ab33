"""64-bit perceptual image hashes (imagehash, ``hash_size=8``) as Python ints, and Hamming distances.

Hashes are unsigned 64-bit ints whose most significant bit is the first bit of imagehash's bit array, so
``int(str(imagehash.phash(im)), 16) == image_hash_pil(im)`` up to the decode shortcuts below. Parquet has no
uint64 in every reader, so they are stored as int64 (:func:`to_signed` / :func:`to_unsigned`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import imagehash
import numpy as np
from PIL import Image

HASH_METHODS = ("phash", "dhash")
HASH_BITS = 64
_HASH_SIZE = 8
_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)
# Images are shrunk (JPEG DCT scaling, then an integer box ``reduce``) to no less than this many pixels on
# each axis before imagehash's LANCZOS resize to 32x32 (phash) or 9x8 (dhash): the box pre-reduction barely
# changes the hash but skips decoding and filtering megapixels.
_DECODE_MIN = 128
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_FUNCS: dict[str, Callable[..., imagehash.ImageHash]] = {"phash": imagehash.phash, "dhash": imagehash.dhash}


def _check_method(method: str) -> Callable[..., imagehash.ImageHash]:
    try:
        return _FUNCS[method]
    except KeyError:
        raise ValueError(f"unknown hash method {method!r}; expected one of {HASH_METHODS}") from None


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """High-bit-depth grayscale as ``L``, scaled like ``shards.imageinfo.reencode`` does (16-bit >> 8, float
    clipped to 0..255) so a 16-bit PNG and its 8-bit re-encode hash alike (``convert("L")`` would clip)."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr8 = np.clip(np.nan_to_num(arr), 0, 255).round()
    else:
        arr8 = np.clip(arr.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(arr8.astype(np.uint8), "L")


def _normalise(im: Image.Image) -> Image.Image:
    """``im`` as a small ``L`` image: the pixels a training loader's ``convert("RGB")`` would see (alpha
    dropped, palette expanded, CMYK converted), in luma, box-reduced to at least ``_DECODE_MIN`` per axis."""
    if im.mode in _HIGH_DEPTH or im.mode == "F":
        im = _to_8bit_gray(im)
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if im.mode != "L":
        im = im.convert("L")
    fx, fy = max(1, im.width // _DECODE_MIN), max(1, im.height // _DECODE_MIN)
    if fx > 1 or fy > 1:
        im = im.reduce((fx, fy))
    return im


def _to_int(h: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(h.hash.ravel()).tobytes(), "big")


def image_hash_pil(image: Image.Image, method: str = "phash") -> int:
    """Unsigned 64-bit perceptual hash of a PIL image (any mode)."""
    func = _check_method(method)
    return _to_int(func(_normalise(image), hash_size=_HASH_SIZE))


def image_hash(data: bytes, method: str = "phash") -> int:
    """Unsigned 64-bit perceptual hash of encoded image bytes (the first frame of animations).

    JPEGs are decoded straight to luma at a reduced DCT scale (``Image.draft``), which makes hashing big
    photos several times faster. Raises ``ValueError`` if the bytes cannot be decoded.
    """
    func = _check_method(method)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format in ("JPEG", "MPO"):
                    im.draft("L", (_DECODE_MIN, _DECODE_MIN))
                im.load()
                small = _normalise(im)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"cannot hash image: too many pixels ({exc})") from exc
    except Exception as exc:  # PIL raises many exception types for corrupt or truncated data
        raise ValueError(f"cannot hash image: undecodable bytes ({type(exc).__name__}: {exc})") from exc
    return _to_int(func(small, hash_size=_HASH_SIZE))


def to_signed(h: int) -> int:
    """An unsigned 64-bit hash as the int64 with the same bits (for parquet int64 columns)."""
    h = int(h)
    if not 0 <= h <= _U64:
        raise ValueError(f"not an unsigned 64-bit value: {h}")
    return h - (1 << 64) if h >> 63 else h


def to_unsigned(h: int) -> int:
    """Inverse of :func:`to_signed`; unsigned values pass through unchanged."""
    h = int(h)
    if not _I64_MIN <= h <= _U64:
        raise ValueError(f"not a 64-bit value: {h}")
    return h & _U64


def _as_u64(a: int | np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype == np.int64:
        return arr.view(np.uint64)  # int64 storage: same bits
    if arr.dtype == object:
        return np.array([to_unsigned(x) for x in arr.ravel()], dtype=np.uint64).reshape(arr.shape)
    return arr.astype(np.uint64)


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> int | np.ndarray:
    """Number of differing bits; ints (signed or unsigned 64-bit) give an int, arrays broadcast."""
    if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
        return (to_unsigned(a) ^ to_unsigned(b)).bit_count()
    return np.bitwise_count(_as_u64(a) ^ _as_u64(b))
