"""image_decode checks JPEGs at 1/8 scale: the same verdict as a full-size decode, on damaged files too."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from curation.recipe.steps import ImageDecodeStep
from curation.sample import Sample
from curation.steps.contract import StepContext
from curation.steps.image import ImageDecode
from schemas import PairRecord


def _jpegs() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i, (mode, progressive) in enumerate([("RGB", False), ("RGB", True), ("L", False), ("CMYK", False)]):
        pixels = rng.integers(0, 256, size=(96 + 8 * i, 128, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=85, progressive=progressive)
        out.append(buf.getvalue())
    return out


def _full_decode_verdict(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def _step_verdict(step: ImageDecode, data: bytes) -> bool:
    record = PairRecord(key="k", source="s", image=data, caption="c")
    return isinstance(step(Sample(record, "origin")), Sample)


def test_a_damaged_jpeg_gets_the_verdict_of_a_full_decode(tmp_path):
    step = ImageDecode(ImageDecodeStep(step="image_decode"), StepContext("image_decode", tmp_path))
    rng = random.Random(1)
    images = _jpegs()
    verdicts = {True: 0, False: 0}
    for _ in range(400):
        data = bytearray(rng.choice(images))
        if rng.random() < 0.4:
            data = data[: rng.randrange(len(data))]  # cut off
        else:
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)  # bytes flipped
        expected = _full_decode_verdict(bytes(data))
        assert _step_verdict(step, bytes(data)) == expected
        verdicts[expected] += 1
    assert verdicts[True] > 50 and verdicts[False] > 50  # both verdicts were exercised
    for data in images:
        assert _step_verdict(step, data)
