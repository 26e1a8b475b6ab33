"""Bounded decoding to RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.models import ModelSpec, load_embedder
from curation.models.images import ImageRejected, decode_rgb, to_rgb
from tests.unit.models.pictures import encode, photo


def test_large_jpeg_decodes_at_a_reduced_scale_keeping_twice_the_input_side(downsample_path: Path):
    big = photo(7, (1024, 768))
    data = encode(big, quality=92)
    assert decode_rgb(data, 10**8).size == (1024, 768)
    assert decode_rgb(data, 10**8, min_side=64).size == (256, 192)  # 1/4 scale: 192 >= 2 x 64
    assert decode_rgb(data, 10**8, min_side=200).size == (1024, 768)  # 1/2 would give 384 < 400
    embedder = load_embedder(ModelSpec(str(downsample_path), image_size=64))
    jpeg, png = embedder.embed_images([data, encode(big, "PNG")]).vectors  # PNG: decoded in full
    assert float(jpeg @ png) > 0.995


def test_exif_orientation_is_applied():
    im = photo(8, (90, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = decode_rgb(encode(im, exif=exif.tobytes()), 10**8)
    assert rotated.size == (60, 90)


def test_modes_become_8bit_rgb():
    base = photo(9, (40, 30))
    la = base.convert("LA")
    la.putalpha(0)  # fully transparent: white, as the CLIP/SigLIP processors composite it
    assert np.asarray(to_rgb(la)).min() == 255
    sixteen = Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16))
    assert np.asarray(to_rgb(sixteen)).max() == 127  # scaled, not clipped to white
    for mode in ("1", "L", "P", "CMYK", "RGBA", "I", "F"):
        out = to_rgb(base.convert(mode))
        assert out.mode == "RGB" and out.size == base.size


@pytest.mark.parametrize("data", [b"", b"GIF89a\x01\x00", b"\xff\xd8\xff\xe0garbage"])
def test_unreadable_bytes_are_rejected(data: bytes):
    with pytest.raises(ImageRejected):
        decode_rgb(data, 10**8)
