"""Test inputs for the ``pdfa`` reader: real PDFs with text (written here, no extra dependency), optionally
password-protected (PDF standard security handler, revision 2, RC4), their OCR JSON in the PDFA and IDL
layouts, and webdataset tars of them in the real layouts (``pdfa-eng-train-0000.tar``, ``idl-train-00000.tar``
with ``.tif``/``.ocr`` members, ``_info.json``), with planted defects.

``make_pdfa_inputs`` returns what each planted sample should become, so tests assert on outcomes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

Bbox = tuple[float, float, float, float]  # x, y, w, h normalised to [0, 1], y from the top
LETTER = (612.0, 792.0)
LANDSCAPE = (792.0, 612.0)
POSTER = (2000.0, 1000.0)  # 4167 x 2083 px at 150 dpi: above max_side 2940


@dataclass
class PdfPage:
    lines: list[tuple[str, Bbox]] = field(default_factory=list)  # in reading order
    size: tuple[float, float] = LETTER


# ---- PDF writing ---------------------------------------------------------------------------------
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _content(page: PdfPage) -> bytes:
    width, height = page.size
    ops = []
    for text, (x, y, _, h) in page.lines:
        size = max(4.0, h * height * 0.8)
        baseline = height - (y + h) * height + 0.2 * h * height
        ops.append(f"BT /F1 {size:.2f} Tf {x * width:.2f} {baseline:.2f} Td ({_escape(text)}) Tj ET")
    return "\n".join(ops).encode("latin-1")


def make_pdf(pages: list[PdfPage], password: str | None = None) -> bytes:
    """A PDF whose pages show their lines in Helvetica at the lines' boxes. With ``password``, the file is
    encrypted (RC4, 40 bits) with that user password: it cannot be opened without it."""
    n = len(pages)
    # objects: 1 catalog, 2 page tree, 3 font, then (page, content) per page
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    file_id = hashlib.md5(repr([(p.lines, p.size) for p in pages]).encode()).digest()
    encrypt = None
    if password is not None:
        perms = -44
        owner_key = hashlib.md5((b"owner" + _PAD)[:32]).digest()[:5]
        o_entry = _rc4(owner_key, (password.encode() + _PAD)[:32])
        file_key = hashlib.md5(
            (password.encode() + _PAD)[:32] + o_entry + perms.to_bytes(4, "little", signed=True) + file_id
        ).digest()[:5]
        u_entry = _rc4(file_key, _PAD)
        encrypt = (file_key, f"<< /Filter /Standard /V 1 /R 2 /O <{o_entry.hex()}> /U <{u_entry.hex()}> /P {perms} >>")
    for i, page in enumerate(pages):
        page_obj, content_obj = 4 + 2 * i, 5 + 2 * i
        w, h = page.size
        objects[page_obj] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w:g} {h:g}] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_obj} 0 R >>"
        ).encode()
        stream = _content(page)
        if encrypt is not None:
            key = hashlib.md5(encrypt[0] + content_obj.to_bytes(3, "little") + b"\x00\x00").digest()[:10]
            stream = _rc4(key, stream)
        objects[content_obj] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    if encrypt is not None:
        objects[len(objects) + 1] = encrypt[1].encode()
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objects[num] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    trailer = f"<< /Size {size} /Root 1 0 R /ID [<{file_id.hex()}> <{file_id.hex()}>]"
    if encrypt is not None:
        trailer += f" /Encrypt {size - 1} 0 R"
    out += f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


# ---- OCR JSON ------------------------------------------------------------------------------------
def _shuffled(lines: list[tuple[str, Bbox]]) -> list[tuple[str, Bbox]]:
    """The lines in an order that is not reading order (reversed, then the halves swapped)."""
    rev = lines[::-1]
    return rev[len(rev) // 2 :] + rev[: len(rev) // 2]


def pdfa_page(lines: list[tuple[str, Bbox]]) -> dict:
    lines = _shuffled(lines)
    words, word_bbox, word_slice, line_pos = [], [], [], []
    for i, (text, (x, y, _, h)) in enumerate(lines):
        start = len(words)
        for k, word in enumerate(text.split() or [""]):
            words.append(word)
            word_bbox.append([x + k * 0.01, y, 0.01, h])
            line_pos.append([i, k])
        word_slice.append([start, len(words)])
    return {
        "lines": {
            "text": [t for t, _ in lines],
            "bbox": [list(b) for _, b in lines],
            "score": [1.0] * len(lines),
            "word_slice": word_slice,
        },
        "words": {"text": words, "bbox": word_bbox, "score": [1.0] * len(words), "line_pos": line_pos},
        "images_bbox": [],
        "images_bbox_no_text_overlap": [],
    }


def idl_page(lines: list[tuple[str, Bbox]]) -> dict:
    lines = _shuffled(lines)
    poly = [
        [{"X": x, "Y": y}, {"X": x + w, "Y": y}, {"X": x + w, "Y": y + h}, {"X": x, "Y": y + h}]
        for _, (x, y, w, h) in lines
    ]
    return {
        "text": [t for t, _ in lines],
        "bbox": [list(b) for _, b in lines],
        "score": [0.98] * len(lines),
        "poly": poly,
    }


def pdfa_json(pages: list[list[tuple[str, Bbox]]]) -> bytes:
    return json.dumps({"pages": [pdfa_page(p) for p in pages]}).encode()


def idl_json(pages: list[list[tuple[str, Bbox]]]) -> bytes:
    return json.dumps({"pages": [idl_page(p) for p in pages]}).encode()


def tif(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (40, 52), seed % 256).save(buf, "TIFF")
    return buf.getvalue()


# ---- tars ----------------------------------------------------------------------------------------
def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with fixed metadata, members in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            info.uname = info.gname = "user"
            tar.addfile(info, io.BytesIO(data))
    return path


def cut_tar(path: Path, member: str, keep_data_bytes: int = 100) -> None:
    """Cut the tar off ``keep_data_bytes`` into the data of ``member`` (a copy that stopped downloading)."""
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data
    path.write_bytes(path.read_bytes()[: offset + keep_data_bytes])


def text_lines(tag: str, n: int, top: float = 0.1) -> list[tuple[str, Bbox]]:
    """``n`` lines, one per row, top to bottom."""
    return [(f"{tag} line {i + 1}", (0.1, top + i * 0.05, 0.6, 0.03)) for i in range(n)]


# The reading-order page: a title, a row of two cells whose boxes are not level (the right one sits a bit
# higher: sorting by y alone would read it first), a row of three close to each other, a footer.
ORDER_PAGE = [
    ("Annual Report", (0.3, 0.05, 0.4, 0.05)),
    ("Left cell", (0.1, 0.204, 0.3, 0.03)),
    ("Right cell", (0.6, 0.2, 0.3, 0.03)),
    ("a", (0.1, 0.3, 0.1, 0.03)),
    ("b", (0.3, 0.297, 0.1, 0.03)),
    ("c", (0.5, 0.302, 0.1, 0.03)),
    ("Second paragraph starts here", (0.1, 0.36, 0.8, 0.03)),
    ("and ends here.", (0.1, 0.4, 0.5, 0.03)),
    ("Page 1", (0.45, 0.95, 0.1, 0.02)),
]
ORDER_TEXT = "\n".join(t for t, _ in ORDER_PAGE)


@dataclass
class Expected:
    """What a planted sample becomes: ``reason`` (a drop at read, or at the step with ``at_step``) or kept
    with ``pages`` (record pages), ``pdf_pages``, ``json_pages``, the rendered ``sizes`` at 150 dpi and
    the transcription ``answers``."""

    reason: str | None = None
    at_step: bool = False
    pages: int = 0
    pdf_pages: int = 0
    json_pages: int = 0
    variant: str = "pdfa"
    sizes: list[tuple[int, int]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    pdf: bytes = b""


def _px(size: tuple[float, float], dpi: int = 150, max_side: int = 2940) -> tuple[int, int]:
    scale = min(dpi / 72, max_side / max(size))
    return round(size[0] * scale), round(size[1] * scale)


def make_pdfa_inputs(root: Path) -> dict[str, Expected]:
    """Under ``root/tars``: ``pdfa-eng-train-0000.tar`` (12 planted cases), ``pdfa-eng-train-0001.tar`` (cut
    off inside its 3rd sample: 2 read, 1 ``shard_damaged``), ``idl-train-00000.tar`` (2 IDL samples with
    ``.tif``/``.ocr``), ``_info.json``. Returns key -> what it should become."""
    tars = root / "tars"
    exp: dict[str, Expected] = {}
    members: list[tuple[str, bytes]] = []

    def kept(key, pdf_pages: list[PdfPage], json_pages, variant="pdfa", exts=("json", "pdf"), extra=()):
        pdf = make_pdf(pdf_pages)
        doc_json = (pdfa_json if variant == "pdfa" else idl_json)(json_pages)
        n = min(len(pdf_pages), len(json_pages))
        texts = ["\n".join(t for t, _ in lines if t.strip()) for lines in json_pages[:n]]
        with_text = [i for i in range(n) if texts[i]]
        exp[key] = Expected(
            pages=n,
            pdf_pages=len(pdf_pages),
            json_pages=len(json_pages),
            variant=variant,
            sizes=[_px(pdf_pages[i].size) for i in with_text],
            answers=[texts[i] for i in with_text],
            pdf=pdf,
            reason=None if with_text else "no_text",
            at_step=not with_text,
        )
        data = {"json": doc_json, "pdf": pdf, **dict(extra)}
        return [(f"{key}.{ext}", data[ext]) for ext in exts]

    def dropped(key, reason, sample_members):
        exp[key] = Expected(reason=reason)
        return sample_members

    two = [PdfPage(ORDER_PAGE), PdfPage(text_lines("p2", 3), LANDSCAPE)]
    members += kept("0000001", two, [ORDER_PAGE, text_lines("p2", 3)])
    # the PDF has MORE pages than its JSON: kept with the JSON's 2 pages
    three = [PdfPage(text_lines(f"more p{i}", 2)) for i in range(3)]
    members += kept("0000002", three, [text_lines(f"more p{i}", 2) for i in range(2)])
    # the PDF has FEWER pages than its JSON: the JSON's pages cut to the PDF's 1
    members += kept("0000003", [PdfPage(text_lines("fewer", 2))], [text_lines(f"fewer p{i}", 2) for i in range(3)])
    members += dropped(
        "0000004", "pdf_corrupt", [("0000004.json", pdfa_json([text_lines("x", 1)])), ("0000004.pdf", b"%PDF-1.4\n<<")]
    )
    secret = make_pdf([PdfPage(text_lines("secret", 2))], password="s3cret")
    members += dropped(
        "0000005", "pdf_encrypted", [("0000005.json", pdfa_json([text_lines("secret", 2)])), ("0000005.pdf", secret)]
    )
    members += dropped("0000006", "missing_member:json", [("0000006.pdf", make_pdf([PdfPage(text_lines("j", 1))]))])
    members += dropped("0000007", "missing_member:pdf", [("0000007.json", pdfa_json([text_lines("p", 1)]))])
    one_page = make_pdf([PdfPage(text_lines("bad json", 1))])
    members += dropped(
        "0000008", "invalid_ocr_json", [("0000008.json", b'{"pages": [{"lines": '), ("0000008.pdf", one_page)]
    )
    wrong_shape = json.dumps({"pages": [{"lines": {"text": ["no boxes"]}}]}).encode()
    members += dropped("0000009", "invalid_ocr_json", [("0000009.json", wrong_shape), ("0000009.pdf", one_page)])
    # no text at all (an empty page and a page of blank lines): kept by the reader, no_text at the step
    blank = [[], [("  ", (0.1, 0.1, 0.2, 0.03))]]
    members += kept("0000010", [PdfPage(), PdfPage()], blank)
    five = [PdfPage(text_lines(f"five p{i}", 1)) for i in range(5)]
    members += kept("0000011", five, [text_lines(f"five p{i}", 1) for i in range(5)])
    # page 2 has no text (skipped, image too); page 3 is a poster above max_side
    mixed = [PdfPage(text_lines("m1", 2), LANDSCAPE), PdfPage(), PdfPage(text_lines("poster", 2), POSTER)]
    members += kept("0000012", mixed, [text_lines("m1", 2), [], text_lines("poster", 2)])
    write_tar(tars / "pdfa-eng-train-0000.tar", members)

    cut: list[tuple[str, bytes]] = []
    for i, key in enumerate(["0000101", "0000102"]):
        cut += kept(key, [PdfPage(text_lines(f"cut {i}", 1))], [text_lines(f"cut {i}", 1)])
    cut += [(f"{k}.{e}", d) for k in ("0000103", "0000104") for e, d in (("json", b"{}"), ("pdf", one_page * 4))]
    write_tar(tars / "pdfa-eng-train-0001.tar", cut)
    cut_tar(tars / "pdfa-eng-train-0001.tar", "0000103.pdf")
    exp["_damaged"] = Expected(reason="shard_damaged")  # one sample: 0000103 (0000104 is past the cut)

    idl: list[tuple[str, bytes]] = []
    idl_pages = [[("IDL memo", (0.1, 0.1, 0.3, 0.04)), ("To: all staff", (0.1, 0.16, 0.4, 0.03))], text_lines("idl", 2)]
    idl += kept(
        "klpb0135",
        [PdfPage(p) for p in idl_pages],
        idl_pages,
        variant="idl",
        exts=("json", "ocr", "pdf", "tif"),
        extra={"ocr": b'{"raw": "textract output"}', "tif": tif(1)},
    )
    idl += kept(
        "klpb0136",
        [PdfPage(text_lines("idl two", 1))],
        [text_lines("idl two", 1)],
        variant="idl",
        exts=("pdf", "tif", "json", "ocr"),
        extra={"ocr": b"{}", "tif": tif(2)},
    )
    write_tar(tars / "idl-train-00000.tar", idl)
    info = {"splits": {"train": {"filenames": ["pdfa-eng-train-0000.tar"], "shard_lengths": [12], "num_samples": 12}}}
    (tars / "_info.json").write_text(json.dumps(info))
    return exp
