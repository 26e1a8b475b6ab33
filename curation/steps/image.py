"""Image checks: full decode, and side / aspect-ratio bounds from the probed sizes."""

from __future__ import annotations

import io
import warnings
from typing import ClassVar

from PIL import Image, ImageSequence

from curation.recipe.steps import ImageDecodeStep, ImageSizeStep
from curation.sample import Sample
from curation.steps.contract import RecordStep

# What one image may cost to decode, all frames together: PIL's own bomb threshold for a single frame.
MAX_DECODED_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


class ImageDecode(RecordStep):
    """Decode every image fully, every frame of an animated one (catches truncated and corrupt files, and broken
    later frames of an APNG/GIF/WebP, that a header probe and a first-frame load accept)."""

    config = ImageDecodeStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "image_corrupt": "an image (or one of its frames) does not decode",
        "image_too_many_pixels": "a frame over PIL's bomb threshold, or all frames together over twice it",
    }

    def __call__(self, sample: Sample) -> Sample | str:
        for data in sample.record.image_list():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data)) as im:
                        if im.format == "JPEG":  # one frame (MPO, several, is not "JPEG")
                            if im.width * im.height > MAX_DECODED_PIXELS:
                                return "image_too_many_pixels"
                            # At 1/8 scale libjpeg still entropy-decodes every block, so damaged data fails
                            # as at full size (tests/unit/steps/test_image_decode.py), for half the cost.
                            im.draft(None, (1, 1))
                            im.load()
                            continue
                        decoded = 0
                        for frame in ImageSequence.Iterator(im):
                            decoded += frame.width * frame.height
                            if decoded > MAX_DECODED_PIXELS:  # e.g. thousands of frames: a bomb in time
                                return "image_too_many_pixels"
                            frame.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                return "image_too_many_pixels"
            except Exception:  # PIL raises many types for corrupt data; all mean the same here
                return "image_corrupt"
        return sample


class ImageSize(RecordStep):
    config = ImageSizeStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "image_too_small": "an image's shorter side is below min_side",
        "image_too_large": "an image's longer side is above max_side",
        "aspect_ratio_too_high": "an image's long side over its short side is above max_aspect_ratio",
    }

    def __call__(self, sample: Sample) -> Sample | str:
        c = self.cfg
        for info in sample.infos:
            short, long = sorted((info.width, info.height))
            if short < c.min_side:
                return "image_too_small"
            if c.max_side is not None and long > c.max_side:
                return "image_too_large"
            if c.max_aspect_ratio is not None and long / max(short, 1) > c.max_aspect_ratio:
                return "aspect_ratio_too_high"
        return sample
