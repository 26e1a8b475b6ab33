"""Image checks: full decode, and side / aspect-ratio bounds from the probed sizes."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from curation.sample import Sample


class ImageDecode:
    """Decode every image fully (catches truncated and corrupt files that a header probe accepts)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def __call__(self, sample: Sample) -> Sample | str:
        for data in sample.record.image_list():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                return "image_too_many_pixels"
            except Exception:  # PIL raises many types for corrupt data; all mean the same here
                return "image_corrupt"
        return sample


class ImageSize:
    def __init__(self, cfg) -> None:
        self.cfg = cfg

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
