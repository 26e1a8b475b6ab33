"""PDF steps: ``pdf_to_transcription`` turns a ``pdf`` record into an ``sft`` record (Idefics3 stage 2).

Each page that has text becomes one rendered image and one turn: the user asks ``prompt``, the assistant
answers with the page's lines joined by newlines, in the record's order (the ``pdfa`` reader stores lines
in reading order). Lines that are empty or only whitespace are left out; a page left with no text is
skipped, image included; a document with no text at all is dropped (``no_text``). Only the first
``min(len(pages), PDF pages)`` pages are used.

Rendering: pypdfium2 at ``dpi`` (a page of ``w x h`` points becomes ``round(w * dpi / 72) x round(h * dpi
/ 72)`` pixels), scaled down when the longest side would exceed ``max_side`` so that it is exactly
``max_side`` (aspect kept, the other side rounded), never scaled up. Pages are rendered directly at that
scale (no resampling; the extra edge pixel that pypdfium2's rounding up can add is cut off), rotated
as the page's /Rotate says, and encoded as PNG, or JPEG at quality 90, with fixed settings, so
the same PDF gives the same bytes. A PDF that pypdfium2 cannot open or render is dropped
(``pdf_unrenderable``).
"""

from __future__ import annotations

import io
from typing import ClassVar

import pypdfium2 as pdfium

from curation.recipe.steps import PdfToTranscriptionStep
from curation.sample import Sample
from curation.steps.contract import RecordStep
from schemas import PdfRecord, SftRecord, Turn
from shards.imageinfo import ImageProbeError, probe_image

JPEG_QUALITY = 90


def page_pixels(width_pt: float, height_pt: float, dpi: int, max_side: int) -> tuple[int, int, float]:
    """(width, height, scale) of a page rendered at ``dpi``, its longest side at most ``max_side``."""
    scale = dpi / 72
    longest = max(width_pt, height_pt)
    if longest * scale > max_side:
        scale = max_side / longest
    w, h = round(width_pt * scale), round(height_pt * scale)
    if max(w, h) > max_side:  # float rounding at the boundary
        w, h = min(w, max_side), min(h, max_side)
    return max(1, w), max(1, h), scale


class RenderError(ValueError):
    pass


def _encode(image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "png":
        image.convert("RGB").save(buf, "PNG")
    else:
        image.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def render_pages(
    pdf: bytes, pages: list[tuple[int, str]], dpi: int, max_side: int, image_format: str
) -> list[tuple[bytes, str]]:
    """(encoded image, text) of each ``(page index, text)`` whose page exists in the PDF. Raises
    :class:`RenderError`."""
    try:
        doc = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError as exc:
        raise RenderError(str(exc)) from None
    try:
        n_pages = len(doc)
        out = []
        for i, text in pages:
            if i >= n_pages:
                break
            page = doc[i]
            try:
                width_pt, height_pt = page.get_size()
                if not (width_pt > 0 and height_pt > 0):
                    raise RenderError(f"page {i} has size {width_pt} x {height_pt}")
                w, h, scale = page_pixels(width_pt, height_pt, dpi, max_side)
                image = page.render(scale=scale).to_pil()  # pyright: ignore[reportArgumentType]  # pdfium: float scale
            finally:
                page.close()
            # pypdfium2 sizes the bitmap with ceil(); the extra edge pixel (if any) is cut off.
            if image.size != (w, h):
                image = image.crop((0, 0, w, h)) if image.width >= w and image.height >= h else image.resize((w, h))
            out.append((_encode(image, image_format), text))
        return out
    except (pdfium.PdfiumError, OSError, ValueError) as exc:
        raise RenderError(str(exc)) from None
    finally:
        doc.close()


class PdfToTranscription(RecordStep):
    config = PdfToTranscriptionStep
    converts: ClassVar[tuple[str, str] | None] = ("pdf", "sft")
    drop_reasons: ClassVar[dict[str, str]] = {
        "no_text": "no page of the PDF has transcribed text",
        "pdf_unrenderable": "pdfium cannot render the pages",
    }

    def __call__(self, sample: Sample) -> Sample | str:
        r = sample.record
        if not isinstance(r, PdfRecord):
            return sample
        c = self.cfg
        texts: list[tuple[int, str]] = []
        for i, page in enumerate(r.pages):
            text = "\n".join(line.text for line in page.lines if line.text.strip())
            if text:
                texts.append((i, text))
        if not texts:
            return "no_text"
        try:
            rendered = render_pages(r.pdf, texts, c.dpi, c.max_side, c.image_format)
            infos = [probe_image(image) for image, _ in rendered]
        except (RenderError, ImageProbeError):
            return "pdf_unrenderable"
        if not rendered:  # the text was on pages the PDF does not have
            return "no_text"
        sft = SftRecord.model_construct(
            key=r.key,
            source=r.source,
            meta={**r.meta, "pages_rendered": len(rendered)},
            images=[image for image, _ in rendered],
            turns=[Turn.model_construct(user=c.prompt, assistant=text) for _, text in rendered],
        )
        return Sample(sft, sample.origin, infos)
