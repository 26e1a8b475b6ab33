"""PDFA (``pdfa-eng-wds``) and IDL (``idl-wds``) webdataset tars -> ``pdf`` records.

A sample is ``KEY.pdf`` + ``KEY.json`` (the OCR lines of each page); IDL samples also carry ``KEY.tif``
and ``KEY.ocr``, which are ignored. Members are grouped the webdataset way: the key is the member path
up to the first dot of its file name (a leading ``./`` removed), the extension the rest (lower-cased);
consecutive members with the same key form one sample, and a repeated extension starts a new sample.
Members whose file name has no dot, and members that are not plain regular files (links, devices, FIFOs,
directories, sparse files), belong to no sample and are never read. Member sizes are checked before a
member is read (:func:`shards.reader.read_member`): over :data:`MAX_MEMBER_BYTES` is a drop, past the end
of the file is damage.

The OCR JSON comes in two layouts, detected per sample (``variant: auto``) from its first page, or fixed
by the source's ``variant``:

- PDFA: ``{"pages": [{"lines": {"text": [...], "bbox": [[x, y, w, h]], ...}, "words": ..., ...}]}``
- IDL:  ``{"pages": [{"text": [...], "bbox": [[x, y, w, h]], "score": ..., "poly": ...}]}``

Each page's lines are stored in reading order (:func:`reading_order`). ``meta`` gets ``pages_json`` (pages
in the JSON), ``pages_pdf`` (pages of the PDF, counted by pypdfium2) and ``variant`` (``pdfa``, ``idl``, or
``unknown`` for a JSON with no pages). The two counts can differ (a known quirk of PDFA): such documents
are kept, with the JSON's pages cut to the PDF's page count when the PDF has fewer.

The source's ``mode: original`` reads as the published Docmatix generation did: lines in the JSON's stored
order, ``max_pages`` counted from the JSON's ``pages``, and every JSON page kept (never cut to the PDF's
count); ``meta`` also gets ``pdfa_mode: original`` (``docmatix_generate`` reads it: docs/docmatix.md).

Partition = one tar. ``plan()`` reads the tar headers once (no member data) and counts its samples; a tar
that cannot be opened at all is an error naming the file. A tar cut off later (or changed after planning)
is read up to the damage, and every sample the plan counted beyond it becomes a ``shard_damaged`` drop.
A sample is only emitted once the next sample starts or the end-of-archive marker is seen, so a sample
whose last members were cut off is counted as damaged, not read half.

Drop reasons, checked in this order: ``missing_member:pdf``, ``missing_member:json``, ``member_too_large``
(the PDF or JSON member is over the cap), ``invalid_ocr_json``
(not JSON, or not the layout above), ``pdf_encrypted`` (needs a password), ``pdf_corrupt`` (pypdfium2
cannot open it, or it has no pages), ``too_many_pages`` (the PDF, or with ``mode: original`` the JSON, has more
than ``max_pages`` pages).
"""

from __future__ import annotations

import math
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from curation.errors import CurationError
from curation.recipe import PdfaSource
from curation.sample import Drop, Sample
from curation.sources.base import RECORD_DROP_REASONS, Partition, Reader, expand_inputs, sanitize_key
from curation.sources.jsontext import JsonRecordError, loads_bytes
from curation.storage.inputs import READ_BLOCK, SMALL_BLOCK, object_info, open_url
from curation.storage.urls import is_url
from schemas import PageLine, RecordError, parse_record
from shards.reader import ClampedFile, MemberError, member_kind, open_regular, read_member

# webdataset's ``base_plus_ext``: key = path up to the first dot of the file name, extension = the rest.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_PASSWORD_ERRORS = (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY)
_RAW_LIMIT = 10_000  # characters of a bad JSON member kept for rejects/
# A PDF or OCR JSON member bigger than this is dropped unread: PDFA/IDL documents are typically a few MB,
# and pypdfium2 holds a whole PDF in memory next to its bytes.
MAX_MEMBER_BYTES = 256 << 20


# ---- reading order -------------------------------------------------------------------------------
def reading_order(lines: list[PageLine]) -> list[PageLine]:
    """Lines top to bottom, and left to right within a visual row.

    Lines are taken by their top edge (``y``; ties by ``x``, then input order). The first line not yet
    placed opens a row; each following line joins that row while its vertical centre ``y + h/2`` lies
    within the vertical extent ``[y, y + h]`` of the line that opened it; the first line that does not
    opens the next row. Rows are output top to bottom, each sorted by ``x`` (ties: the order above). So
    lines of one visual row whose boxes are a little higher or lower than each other still read left to
    right, and lines of consecutive rows never mix. Multi-column pages are read row by row across the
    columns: the rule knows nothing of columns.
    """
    ranked = sorted(enumerate(lines), key=lambda item: (item[1].bbox[1], item[1].bbox[0], item[0]))
    rows: list[list[tuple[int, PageLine]]] = []
    band_top = band_bottom = 0.0
    for index, line in ranked:
        _, y, _, h = line.bbox
        centre = y + h / 2
        if rows and band_top <= centre <= band_bottom:
            rows[-1].append((index, line))
        else:
            rows.append([(index, line)])
            band_top, band_bottom = y, y + h
    ordered: list[PageLine] = []
    for row in rows:
        ordered.extend(line for _, line in sorted(row, key=lambda item: (item[1].bbox[0], item[0])))
    return ordered


# ---- the OCR JSON --------------------------------------------------------------------------------
class OcrJsonError(ValueError):
    """The JSON member is not JSON, or not one of the two layouts."""


def _variant_of(page: Any) -> str:
    if isinstance(page, dict) and isinstance(page.get("lines"), dict):
        return "pdfa"
    if isinstance(page, dict) and "text" in page:
        return "idl"
    raise OcrJsonError("page 0 has neither a 'lines' object (PDFA) nor a 'text' list (IDL)")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_ocr_json(
    data: bytes, variant: str = "auto", *, stored_order: bool = False
) -> tuple[list[list[PageLine]], str]:
    """(lines of each page in reading order, or in the JSON's order with ``stored_order``, the variant).
    Raises :class:`OcrJsonError`."""
    try:
        doc = loads_bytes(data)  # strict and bounded, as every input JSON
    except JsonRecordError as exc:
        raise OcrJsonError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pages"), list):
        raise OcrJsonError("expected an object with a 'pages' list")
    pages = doc["pages"]
    if variant == "auto":
        variant = _variant_of(pages[0]) if pages else "unknown"
    out = []
    for i, page in enumerate(pages):
        if not isinstance(page, dict):
            raise OcrJsonError(f"pages[{i}] is a {type(page).__name__}, not an object")
        holder = page.get("lines") if variant == "pdfa" else page
        where = f"pages[{i}].lines" if variant == "pdfa" else f"pages[{i}]"
        if not isinstance(holder, dict):
            raise OcrJsonError(f"{where} is not an object (variant {variant})")
        texts, boxes = holder.get("text"), holder.get("bbox")
        if not isinstance(texts, list) or not isinstance(boxes, list):
            raise OcrJsonError(f"{where}: 'text' and 'bbox' must be lists (variant {variant})")
        if len(texts) != len(boxes):
            raise OcrJsonError(f"{where}: {len(texts)} texts but {len(boxes)} bboxes")
        lines = []
        for j, (text, box) in enumerate(zip(texts, boxes, strict=True)):
            if not isinstance(text, str):
                raise OcrJsonError(f"{where}.text[{j}] is a {type(text).__name__}, not a string")
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise OcrJsonError(f"{where}.bbox[{j}] is not [x, y, w, h] of finite numbers")
            x, y, w, h = (float(v) for v in box)
            lines.append(PageLine(text=text, bbox=(x, y, w, h)))
        out.append(lines if stored_order else reading_order(lines))
    return out, variant


# ---- the PDF -------------------------------------------------------------------------------------
class PdfOpenError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


def pdf_page_count(data: bytes) -> int:
    """Pages of a PDF, counted by pypdfium2. Raises :class:`PdfOpenError` (``pdf_encrypted`` or
    ``pdf_corrupt``)."""
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        raise PdfOpenError("pdf_encrypted" if code in _PASSWORD_ERRORS else "pdf_corrupt", str(exc)) from None
    try:
        n = len(doc)
    finally:
        doc.close()
    if n < 1:
        raise PdfOpenError("pdf_corrupt", "the PDF has no pages")
    return n


# ---- the tar -------------------------------------------------------------------------------------
def _groups(tar: tarfile.TarFile, *, strict: bool) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) per sample, grouped the webdataset way.

    ``strict`` (reading): a damaged tar raises ``tarfile.ReadError`` (also when it merely lacks its
    end-of-archive marker) before the sample being read is yielded. Not strict (planning): the groups seen
    before the damage are yielded, the one being read included, and iteration stops there."""
    key: str | None = None
    members: dict[str, tarfile.TarInfo] = {}
    try:
        for info in tar:
            if member_kind(info) is not None:  # links, devices, directories, sparse files: never read
                continue
            name = info.name
            while name.startswith("./"):
                name = name[2:]
            m = _MEMBER_NAME.match(name)
            if m is None:
                continue
            k, ext = m.group(1), m.group(2).lower()
            if key is not None and (k != key or ext in members):
                yield key, members
                members = {}
            key = k
            members[ext] = info
        if strict:
            # tarfile stops silently at a cut-off or garbled header; a complete tar has a zero block there.
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker (the tar is cut off or damaged)")
    except (tarfile.TarError, OSError, EOFError):
        if strict:
            raise
    if key is not None:
        yield key, members


def _open_tar_file(path: Path | str, block_size: int = READ_BLOCK) -> Any:
    """A local tar (a regular file only) or a tar streamed from a bucket (``block_size``: its read-ahead)."""
    return open_url(path, block_size) if isinstance(path, str) and is_url(path) else open_regular(Path(path))


def count_samples(path: Path | str, source: str) -> int:
    """Samples in a tar, from its headers only. A tar that cannot be opened is a :class:`CurationError`;
    one damaged further on counts the samples seen before the damage (reading them reports the rest). A tar
    in a bucket is read by ranges around each header (``SMALL_BLOCK`` of read-ahead), never whole."""
    try:
        with (
            _open_tar_file(path, SMALL_BLOCK) as raw,
            tarfile.open(fileobj=cast(BinaryIO, ClampedFile(raw)), mode="r:") as tar,
        ):
            return sum(1 for _ in _groups(tar, strict=False))
    except (tarfile.TarError, OSError, EOFError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CurationError(f"sources.{source}: {path} is not a readable tar file ({detail})") from None


class PdfaReader(Reader):
    config = PdfaSource
    input_suffixes = (".tar",)
    drop_reasons: ClassVar[dict[str, str]] = {
        "missing_member:pdf": "a sample without a `.pdf` member (members that are not regular files are ignored)",
        "missing_member:json": "a sample without a `.json` member (members that are not regular files are ignored)",
        "member_too_large": f"the PDF or OCR JSON member is over {MAX_MEMBER_BYTES >> 20} MiB; never read",
        "invalid_ocr_json": "the OCR JSON member is not JSON, or not the PDFA or IDL layout",
        "pdf_encrypted": "the PDF is password-protected",
        "pdf_corrupt": "pypdfium2 cannot open the PDF, or it has no pages",
        "too_many_pages": "more pages than the source's `max_pages`: the PDF's, or with `mode: original` the JSON's",
        "shard_damaged": (
            "the samples the plan counted beyond where a tar is damaged: cut off, a garbled header, a member that "
            "runs past the end of the file, no end-of-archive marker, fewer samples than planned"
        ),
        **RECORD_DROP_REASONS,
    }

    reads_urls = True  # the plan reads the tar headers by ranges; a partition streams its tar

    def __init__(self, source) -> None:
        self.source = source

    def record_kind(self) -> str:
        return "pdf"

    def plan(self) -> list[Partition]:
        """One partition per tar (its samples counted from the headers); empty tars are skipped."""
        parts: list[Partition] = []
        for file_index, path in enumerate(expand_inputs(self.source.path, self.input_suffixes, self.source.name)):
            n = count_samples(path, self.source.name)
            if n:
                size = _size(path)
                spec = {"file": str(path), "file_index": file_index, "bytes": size}
                parts.append(Partition(self.source.name, len(parts), n, spec))
        return parts

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        path = partition.spec["file"]
        name = self.source.name
        emitted = 0
        try:
            with (
                _open_tar_file(path) as raw,
                tarfile.open(fileobj=cast(BinaryIO, ClampedFile(raw)), mode="r:") as tar,
            ):
                for key, members in _groups(tar, strict=True):
                    if emitted >= partition.rows:  # a --limit can cut a partition short
                        return
                    item = self._item(tar, path, key, members)  # may raise on a cut-off member
                    emitted += 1
                    yield item
        except (tarfile.TarError, OSError, EOFError) as exc:
            detail = f"{path}: damaged tar after {emitted} samples ({exc})"[:500]
            for _ in range(partition.rows - emitted):
                yield Drop("shard_damaged", name, path, None, detail)
            return
        for _ in range(partition.rows - emitted):
            yield Drop("shard_damaged", name, path, None, f"{path}: the tar holds fewer samples than planned")

    def _item(self, tar: tarfile.TarFile, path: str, raw_key: str, members: dict[str, tarfile.TarInfo]):
        src = self.source
        origin = f"{path}:{raw_key}"
        key = sanitize_key(raw_key)
        for ext in ("pdf", "json"):
            if ext not in members:
                detail = f"sample {raw_key!r} has members {sorted(members)}"
                return Drop(f"missing_member:{ext}", src.name, origin, key, detail)
        try:
            pdf = _read_member(tar, members["pdf"])
            text = _read_member(tar, members["json"])
        except MemberError as exc:
            return Drop(exc.reason, src.name, origin, key, str(exc)[:500])
        original = src.mode == "original"
        try:
            pages, variant = parse_ocr_json(text, src.variant, stored_order=original)
        except OcrJsonError as exc:
            raw = {"json": text[:_RAW_LIMIT].decode("utf-8", "replace")}
            return Drop("invalid_ocr_json", src.name, origin, key, str(exc)[:500], raw=raw)
        try:
            pages_pdf = pdf_page_count(pdf)
        except PdfOpenError as exc:
            return Drop(exc.reason, src.name, origin, key, str(exc)[:500])
        counted, what = (len(pages), "OCR JSON") if original else (pages_pdf, "PDF")
        if src.max_pages is not None and counted > src.max_pages:
            detail = f"the {what} has {counted} pages (max_pages {src.max_pages})"
            return Drop("too_many_pages", src.name, origin, key, detail)
        meta: dict[str, Any] = {"pages_json": len(pages), "pages_pdf": pages_pdf, "variant": variant}
        if original:
            meta["pdfa_mode"] = "original"
        if key != raw_key:
            meta["source_id"] = raw_key  # the tar's key, before it was made a valid key
        data = {
            "key": key,
            "source": src.name,
            "meta": meta,
            "pdf": pdf,
            "pages": [{"lines": lines} for lines in (pages if original else pages[:pages_pdf])],
        }
        try:
            record = parse_record("pdf", data)
        except RecordError as exc:
            return Drop(exc.drop_reason, src.name, origin, key, str(exc))
        return Sample(record, origin)


def _size(path: Path | str) -> int:
    if isinstance(path, str) and is_url(path):
        info = object_info(path)
        if info is None:
            raise CurationError(f"{path}: no such object")
        return info.size
    return Path(path).stat().st_size


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """The member's bytes; :class:`MemberError` over the cap, ``tarfile.ReadError`` past the end of the file."""
    size = cast(ClampedFile, tar.fileobj).size  # fileobj: the ClampedFile it was opened on
    return read_member(tar, info, size, MAX_MEMBER_BYTES)
