"""probe_image on decompression bombs (header-only, no warning) and reencode of high-bit-depth images."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from shards.imageinfo import ImageProbeError, probe_image, reencode, sniff_format


def _save(im: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR is patched to declare ``width`` x ``height`` (the CRC fixed)."""
    data = bytearray(_save(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny real JPEG whose SOF0 segment is patched to declare ``width`` x ``height``."""
    im = Image.new("RGB", (8, 8), (1, 2, 3))
    out = io.BytesIO()
    im.save(out, "JPEG", progressive=False)
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture
def warnings_are_errors():
    """Any warning (PIL's DecompressionBombWarning included) fails the test, as under ``-W error``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- decompression bombs ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring], ids=["png", "jpeg"])
def test_a_huge_declared_size_is_a_probe_error_not_a_crash(make, capsys, warnings_are_errors):
    data = make(60_000, 60_000)  # 3.6e9 pixels: above PIL's error threshold (2 * MAX_IMAGE_PIXELS)
    with pytest.raises(ImageProbeError) as info:
        probe_image(data)
    assert info.value.reason == "image_too_many_pixels"
    assert "3600000000" in str(info.value)
    assert capsys.readouterr().err == ""


def test_png_declaring_100000_squared(warnings_are_errors):
    with pytest.raises(ImageProbeError) as info:
        probe_image(png_declaring(100_000, 100_000))
    assert info.value.reason == "image_too_many_pixels"
    assert str(info.value).startswith("png image too large")


@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring], ids=["png", "jpeg"])
def test_a_large_but_allowed_size_probes_without_a_warning(make, capsys, warnings_are_errors):
    # 10000 x 10000 = 1e8 pixels: between PIL's warning (~89M) and error (~179M) thresholds
    data = make(10_000, 10_000)
    info = probe_image(data)
    assert (info.width, info.height) == (10_000, 10_000)
    assert info.format == sniff_format(data)
    assert capsys.readouterr().err == ""


def test_the_threshold_follows_pil_max_image_pixels(monkeypatch, warnings_are_errors):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ok = _save(Image.new("RGB", (40, 40), (9, 9, 9)), "PNG")  # 1600 pixels: warning range, allowed
    assert (probe_image(ok).width, probe_image(ok).height) == (40, 40)
    assert sniff_format(reencode(ok, "jpg")) == "jpg"  # a full decode does not warn either
    with pytest.raises(ImageProbeError) as info:
        probe_image(_save(Image.new("RGB", (50, 50)), "PNG"))  # 2500 > 2 * 1000
    assert info.value.reason == "image_too_many_pixels"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit at all
    assert probe_image(png_declaring(100_000, 100_000)).width == 100_000


def test_other_probe_errors_are_unchanged():
    with pytest.raises(ImageProbeError) as info:
        probe_image(b"")
    assert info.value.reason == "image_empty"
    with pytest.raises(ImageProbeError) as info:
        probe_image(b"not an image at all")
    assert info.value.reason == "image_unreadable"
    data = bytearray(png_declaring(4, 4))
    data[29] ^= 0xFF  # bad IHDR CRC
    with pytest.raises(ImageProbeError) as info:
        probe_image(bytes(data))
    assert info.value.reason == "image_unreadable"


# -- re-encoding high bit depths ---------------------------------------------------------------------

GRADIENT = np.tile(np.linspace(0, 65535, 512).round().astype(np.uint16), (16, 1))  # 512 x 16, full range


def _high_depth(mode: str) -> bytes:
    if mode == "I;16":  # a 16-bit grayscale PNG (what Pillow opens as I;16)
        return _save(Image.fromarray(GRADIENT), "PNG")
    if mode == "I;16B":
        return _save(Image.frombytes("I;16B", (512, 16), GRADIENT.astype(">u2").tobytes()), "TIFF")
    if mode == "I":
        return _save(Image.fromarray(GRADIENT.astype(np.int32)), "TIFF")
    if mode == "F":  # float images hold 0..255
        return _save(Image.fromarray(GRADIENT.astype(np.float32) / 257), "TIFF")
    raise AssertionError(mode)


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.float64)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
@pytest.mark.parametrize("ext", ["jpg", "webp"])
def test_high_depth_images_keep_their_gradient(mode, ext):
    data = _high_depth(mode)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode
    out = reencode(data, ext)
    assert sniff_format(out) == ext
    px = _decoded(out)
    assert px.shape == (16, 512)
    assert len(np.unique(px)) > 150  # a gradient, not a clipped white image
    assert abs(px.mean() - 127.5) < 6
    row = px[8]
    assert row[:16].mean() < 20 and row[-16:].mean() > 235  # dark to light, left to right
    expected = GRADIENT[8].astype(np.float64) / 257
    assert np.abs(row - expected).mean() < 4


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_high_depth_to_png_keeps_16_bits(mode):
    out = reencode(_high_depth(mode), "png")
    with Image.open(io.BytesIO(out)) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im).astype(np.int64), GRADIENT.astype(np.int64))


def test_float_to_png_is_8_bit():
    out = reencode(_high_depth("F"), "png")
    with Image.open(io.BytesIO(out)) as im:
        assert im.mode == "L"
        assert len(np.unique(np.asarray(im))) > 150


def _palette_image() -> Image.Image:
    im = Image.new("P", (12, 10), 1)
    im.putpalette([0, 0, 0, 200, 30, 40, 20, 220, 90] + [0] * (256 * 3 - 9))
    im.paste(2, (0, 0, 6, 10))
    return im


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("RGBA", (12, 10), (200, 30, 40, 0)), "PNG"),
        (Image.new("LA", (12, 10), (90, 128)), "PNG"),
        (_palette_image(), "GIF"),
        (_palette_image(), "PNG"),
        (Image.new("CMYK", (12, 10), (10, 200, 30, 40)), "TIFF"),
        (Image.new("1", (12, 10), 1), "BMP"),
    ],
    ids=["rgba", "la", "p-gif", "p-png", "cmyk", "1-bit"],
)
@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_other_modes_still_reencode(image, fmt, ext):
    src = _save(image, fmt)
    out = reencode(src, ext)
    assert sniff_format(out) == ext
    with Image.open(io.BytesIO(out)) as got:
        assert got.size == (12, 10)
        if ext == "jpg":
            assert got.mode in ("RGB", "L")  # alpha dropped, palette expanded, CMYK converted
        got_rgb = np.asarray(got.convert("RGB"), dtype=np.int64)
    with Image.open(io.BytesIO(src)) as im:
        want_rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    assert np.abs(got_rgb - want_rgb).mean() < 8  # the colours survive (RGB of RGBA: alpha dropped)
