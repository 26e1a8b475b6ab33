"""PDFA / IDL webdataset tars: the ``pdfa`` reader, the ``pdf_to_transcription`` step and the built-in
``pdfa_transcription`` recipe, built for real from tars in the real layouts with planted defects."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import load_recipe, validate_recipe
from curation.sample import Drop, Sample
from curation.sources.base import make_reader
from curation.sources.pdfa import PdfaReader, reading_order
from curation.steps.contract import StepContext
from schemas import PageLine, PdfRecord, SftRecord
from shards import iter_dataset, read_manifest, verify_dataset
from shards.imageinfo import probe_image
from tests.builds import CLI, tree_digest
from tests.pdfa_data import (
    ORDER_PAGE,
    ORDER_TEXT,
    PdfPage,
    cut_tar,
    make_pdf,
    make_pdfa_inputs,
    pdfa_json,
    text_lines,
    write_tar,
)

PROMPT = "Transcribe the text of this page."
READ_DROPS = {
    "missing_member:pdf": 1,
    "missing_member:json": 1,
    "invalid_ocr_json": 2,
    "pdf_corrupt": 1,
    "pdf_encrypted": 1,
    "shard_damaged": 1,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdfa")
    return root / "tars", make_pdfa_inputs(root)


def source(path, **extra) -> dict:
    return {"name": "pdfa", "reader": "pdfa", "path": str(path), **extra}


def transcription_recipe(path, step: dict | None = None, **source_extra) -> dict:
    return {
        "name": "pdfa_tr",
        "sources": [source(path, **source_extra)],
        "steps": [{"step": "pdf_to_transcription", **(step or {})}, {"step": "text_length", "field": "answers"}],
        "output": {"kind": "sft", "rejects": True},
    }


def pdf_recipe(path, **source_extra) -> dict:
    return {"name": "pdfa_pdf", "sources": [source(path, **source_extra)], "output": {"kind": "pdf"}}


@pytest.fixture(scope="module")
def transcribed(inputs, tmp_path_factory) -> Path:
    tars, _ = inputs
    out = tmp_path_factory.mktemp("tr") / "ds"
    build(validate_recipe(transcription_recipe(tars)), out, progress=False)
    return out


def reject_rows(out: Path) -> list[dict]:
    return [r for s in read_manifest(out).rejects for r in pq.read_table(out / s.sidecar).to_pylist()]


def assert_exact(out: Path) -> dict:
    """Per source and per step: input = output + Σ dropped; returns the source's counts."""
    m = read_manifest(out)
    for step in m.accounting["steps"]:
        for name, c in step["sources"].items():
            assert c["input"] == c["output"] + sum(c["dropped"].values()), (step["step"], name)
    counts = m.accounting["sources"]["pdfa"]
    assert counts["input"] == counts["output"] + sum(counts["dropped"].values())
    assert m.totals["samples"] == counts["output"] == sum(1 for _ in iter_dataset(out))
    assert verify_dataset(out).ok
    return counts


# ---- reading order -------------------------------------------------------------------------------
def test_reading_order_is_top_to_bottom_then_left_to_right_within_a_row():
    lines = [PageLine(text=t, bbox=b) for t, b in ORDER_PAGE]
    shuffled = lines[::-1][4:] + lines[::-1][:4]
    assert [ln.text for ln in reading_order(shuffled)] == [t for t, _ in ORDER_PAGE]
    # what the tolerance is for: sorting by y alone reads the higher right cell before the left one
    naive = [ln.text for ln in sorted(shuffled, key=lambda ln: (ln.bbox[1], ln.bbox[0]))]
    assert naive.index("Right cell") < naive.index("Left cell") and naive[3:6] == ["b", "a", "c"]


def test_reading_order_keeps_rows_apart_and_is_stable():
    def line(text, x, y, h=0.02):
        return PageLine(text=text, bbox=(x, y, 0.1, h))

    # a row's extent is its first line's: the next row, just below, never mixes in
    rows = [line("r2 right", 0.5, 0.125), line("r1 right", 0.5, 0.1), line("r2 left", 0.1, 0.123), line("r1", 0.1, 0.1)]
    assert [ln.text for ln in reading_order(rows)] == ["r1", "r1 right", "r2 left", "r2 right"]
    # identical boxes keep their input order; zero-height boxes at the same y form one row
    same = [line("first", 0.1, 0.5), line("second", 0.1, 0.5), line("z2", 0.3, 0.7, 0), line("z1", 0.2, 0.7, 0)]
    assert [ln.text for ln in reading_order(same)] == ["first", "second", "z1", "z2"]
    assert reading_order([]) == []


# ---- plan ----------------------------------------------------------------------------------------
def test_plan_counts_the_samples_of_each_tar_exactly(inputs):
    tars, _ = inputs
    source_cfg = validate_recipe(pdf_recipe(tars)).sources[0]
    parts = make_reader(source_cfg).plan()
    assert [(Path(p.spec["file"]).name, p.rows) for p in parts] == [
        ("idl-train-00000.tar", 2),  # .tif and .ocr members belong to their sample
        ("pdfa-eng-train-0000.tar", 12),
        ("pdfa-eng-train-0001.tar", 3),  # cut off inside its 3rd sample: 3 seen, the 4th is gone
    ]
    assert [p.index for p in parts] == [0, 1, 2]


def test_a_tar_that_cannot_be_read_at_plan_time_is_an_error_naming_it(inputs, tmp_path):
    tars, _ = inputs
    bad = tmp_path / "in"
    shutil.copytree(tars, bad)
    (bad / "pdfa-eng-train-0002.tar").write_bytes(b"<html>not a tar</html>" * 40)
    with pytest.raises(CurationError, match=r"pdfa-eng-train-0002\.tar is not a readable tar file"):
        build(validate_recipe(pdf_recipe(bad)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    res = subprocess.run(
        [*CLI, "build", "pdfa_transcription", "--set", f"sources.pdfa.path={bad}", "--out", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "pdfa-eng-train-0002.tar" in res.stderr and "Traceback" not in res.stderr


def test_empty_tars_are_skipped_and_no_tars_is_an_error(tmp_path):
    write_tar(tmp_path / "a" / "empty.tar", [])
    src = validate_recipe(pdf_recipe(tmp_path / "a")).sources[0]
    assert PdfaReader(src).plan() == []
    (tmp_path / "b").mkdir()
    with pytest.raises(CurationError, match=r"no \.tar files"):
        PdfaReader(validate_recipe(pdf_recipe(tmp_path / "b")).sources[0]).plan()


# ---- the transcription build ---------------------------------------------------------------------
def test_transcription_build_accounts_for_every_planted_case(inputs, transcribed):
    _, expected = inputs
    counts = assert_exact(transcribed)
    assert counts["input"] == 17  # 12 + 3 planned from the cut tar + 2 IDL
    m = read_manifest(transcribed)
    read = next(s for s in m.accounting["steps"] if s["step"] == "read")["sources"]["pdfa"]
    assert read["dropped"] == READ_DROPS
    step = next(s for s in m.accounting["steps"] if s["step"] == "pdf_to_transcription")["sources"]["pdfa"]
    assert step["dropped"] == {"no_text": 1}
    kept = {k for k, e in expected.items() if e.reason is None}
    assert counts["output"] == len(kept) == 9
    assert {r.key for r in iter_dataset(transcribed)} == kept
    # every planted drop is in rejects/ with its reason and its key
    by_key = {r["sample_key"]: r["reason"] for r in reject_rows(transcribed) if r["sample_key"]}
    planted = {k: e.reason for k, e in expected.items() if e.reason and not k.startswith("_")}
    assert by_key == planted
    damaged = [r for r in reject_rows(transcribed) if r["reason"] == "shard_damaged"]
    assert len(damaged) == 1 and damaged[0]["origin"].endswith("pdfa-eng-train-0001.tar")


def test_transcriptions_are_the_pages_text_in_reading_order(inputs, transcribed):
    _, expected = inputs
    records = {r.key: r for r in iter_dataset(transcribed)}
    for key, record in records.items():
        exp = expected[key]
        assert isinstance(record, SftRecord)
        assert [t.user for t in record.turns] == [PROMPT] * len(exp.answers)
        assert [t.assistant for t in record.turns] == exp.answers, key
        assert len(record.images) == len(record.turns)
        assert record.meta == {
            "pages_json": exp.json_pages,
            "pages_pdf": exp.pdf_pages,
            "pages_rendered": len(exp.answers),
            "variant": exp.variant,
        }, key
    assert records["0000001"].turns[0].assistant == ORDER_TEXT  # the JSON lists these lines shuffled
    assert records["klpb0135"].turns[0].assistant == "IDL memo\nTo: all staff"


def test_rendered_pages_respect_dpi_and_max_side(inputs, transcribed):
    _, expected = inputs
    for record in iter_dataset(transcribed):
        infos = [probe_image(b) for b in record.images]
        assert {i.format for i in infos} == {"png"}
        assert [(i.width, i.height) for i in infos] == expected[record.key].sizes, record.key
    records = {r.key: r for r in iter_dataset(transcribed)}
    sizes = [(i.width, i.height) for i in map(probe_image, records["0000012"].images)]
    assert sizes == [(1650, 1275), (2940, 1470)]  # landscape letter at 150 dpi; a 2000x1000 pt poster capped
    # what is drawn is the page: dark text where the first line is (the title, centred near the top)
    page = Image.open(io.BytesIO(records["0000001"].images[0])).convert("L")
    assert page.crop((400, 70, 880, 150)).getextrema()[0] < 100  # black glyphs
    assert page.crop((0, 900, 1275, 1400)).getextrema()[0] > 200  # blank paper


def test_lower_dpi_smaller_max_side_and_jpeg(inputs, tmp_path):
    tars, expected = inputs
    recipe = transcription_recipe(tars, {"dpi": 72, "max_side": 700, "image_format": "jpg", "prompt": "Read it."})
    build(validate_recipe(recipe), tmp_path / "ds", progress=False)
    assert_exact(tmp_path / "ds")
    want = {(612, 792): (541, 700), (792, 612): (700, 541), (2000, 1000): (700, 350)}
    at_150 = {(1275, 1650): (612, 792), (1650, 1275): (792, 612), (2940, 1470): (2000, 1000)}
    for record in iter_dataset(tmp_path / "ds"):
        infos = [probe_image(b) for b in record.images]
        assert {i.format for i in infos} == {"jpg"} and {t.user for t in record.turns} == {"Read it."}
        assert [(i.width, i.height) for i in infos] == [want[at_150[s]] for s in expected[record.key].sizes]


def test_builtin_recipe_through_the_cli_is_deterministic(inputs, tmp_path):
    tars, _ = inputs
    out = tmp_path / "cli"
    res = subprocess.run(
        [*CLI, "build", "pdfa_transcription", "--set", f"sources.pdfa.path={tars}", "--out", str(out), "-q"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    counts = assert_exact(out)
    assert counts == {"input": 17, "output": 9, "dropped": {**READ_DROPS, "no_text": 1}}
    audit = json.loads(subprocess.run([*CLI, "audit", str(out), "-f", "json"], capture_output=True, text=True).stdout)
    assert audit["kind"] == "sft" and audit["sources"]["pdfa"]["images"] == 17
    # a second build of the same recipe (through the API, 2 workers): byte-identical outside _logs/
    recipe = load_recipe("pdfa_transcription", [f"sources.pdfa.path={tars}"])
    build(recipe, tmp_path / "again", workers=2, progress=False)
    assert tree_digest(tmp_path / "again") == tree_digest(out)
    assert any(name.endswith(".tar") for name in tree_digest(out))


# ---- pdf output ----------------------------------------------------------------------------------
def test_pdf_output_round_trips(inputs, tmp_path):
    tars, expected = inputs
    out = tmp_path / "pdf"
    build(validate_recipe(pdf_recipe(tars)), out, progress=False)
    counts = assert_exact(out)
    assert counts["dropped"] == READ_DROPS and counts["output"] == 10  # no step: the text-less document stays
    records = {r.key: r for r in iter_dataset(out)}
    for key, record in records.items():
        exp = expected[key]
        assert isinstance(record, PdfRecord)
        assert record.pdf == exp.pdf
        assert len(record.pages) == exp.pages
        assert record.meta == {"pages_json": exp.json_pages, "pages_pdf": exp.pdf_pages, "variant": exp.variant}
    assert [ln.text for ln in records["0000001"].pages[0].lines] == [t for t, _ in ORDER_PAGE]
    assert records["0000001"].pages[0].lines[1].bbox == (0.1, 0.204, 0.3, 0.03)
    # page-count mismatches are kept: the JSON's pages, cut to the PDF's count
    assert (len(records["0000002"].pages), len(records["0000003"].pages)) == (2, 1)
    assert [ln.text for ln in records["0000003"].pages[0].lines] == ["fewer p0 line 1", "fewer p0 line 2"]
    # the stored pdf dataset is itself a source: transcribing it gives the same as transcribing the tars
    again = {
        "name": "from_pdf",
        "sources": [{"name": "pdfa", "reader": "shards", "path": str(out)}],
        "steps": [{"step": "pdf_to_transcription"}],
        "output": {"kind": "sft"},
    }
    build(validate_recipe(again), tmp_path / "sft", progress=False)
    for record in iter_dataset(tmp_path / "sft"):
        assert [t.assistant for t in record.turns] == expected[record.key].answers


def test_max_pages_counts_the_pdf_pages(inputs, tmp_path):
    tars, _ = inputs
    out = tmp_path / "pdf"
    build(validate_recipe(pdf_recipe(tars, max_pages=2)), out, progress=False)
    counts = assert_exact(out)
    # counted from the PDF: 0000002 (PDF 3 pages, JSON 2), 0000011 (5) and 0000012 (3) go; 0000003 (PDF 1
    # page, JSON 3) stays
    assert counts["dropped"] == {**READ_DROPS, "too_many_pages": 3}
    keys = {r.key for r in iter_dataset(out)}
    assert "0000003" in keys and not keys & {"0000002", "0000011", "0000012"}


def test_limit_reads_a_prefix(inputs, tmp_path):
    tars, _ = inputs
    build(validate_recipe(pdf_recipe(tars)), tmp_path / "ds", limit=5, progress=False)
    counts = assert_exact(tmp_path / "ds")
    assert counts["input"] == 5
    assert [r.key for r in iter_dataset(tmp_path / "ds")] == ["klpb0135", "klpb0136", "0000001", "0000002", "0000003"]


# ---- the reader on its own -----------------------------------------------------------------------
def read_all(path: Path, **extra) -> list[Sample | Drop]:
    reader = PdfaReader(validate_recipe(pdf_recipe(path, **extra)).sources[0])
    parts = reader.plan()
    items = [item for p in parts for item in reader.read(p)]
    assert len(items) == sum(p.rows for p in parts)  # the contract: every planned row comes out
    return items


def outcome(item: Sample | Drop) -> str:
    return item.reason if isinstance(item, Drop) else "kept"


def test_the_variant_can_be_fixed(inputs):
    tars, _ = inputs
    idl = read_all(tars / "idl-train-00000.tar", variant="idl")
    assert [outcome(i) for i in idl] == ["kept", "kept"]
    assert [outcome(i) for i in read_all(tars / "idl-train-00000.tar", variant="pdfa")] == ["invalid_ocr_json"] * 2
    auto = [outcome(i) for i in read_all(tars / "pdfa-eng-train-0000.tar")]
    as_idl = [outcome(i) for i in read_all(tars / "pdfa-eng-train-0000.tar", variant="idl")]
    # every sample whose JSON was read is now invalid_ocr_json (the checks before it are unchanged)
    assert auto.count("kept") == 6 and "kept" not in as_idl
    assert as_idl.count("invalid_ocr_json") == 6 + 1 + 1 + 2  # kept, pdf_corrupt, pdf_encrypted, invalid before


def test_a_tar_cut_after_planning_still_gives_every_planned_row(inputs, tmp_path):
    tars, _ = inputs
    path = tmp_path / "pdfa-eng-train-0000.tar"
    shutil.copy(tars / "pdfa-eng-train-0000.tar", path)
    reader = PdfaReader(validate_recipe(pdf_recipe(path)).sources[0])
    (part,) = reader.plan()
    cut_tar(path, "0000005.pdf")  # a copy that stops in the middle of the 5th sample
    items = list(reader.read(part))
    assert len(items) == part.rows == 12
    assert [outcome(i) for i in items] == ["kept", "kept", "kept", "pdf_corrupt"] + ["shard_damaged"] * 8
    path.unlink()  # gone entirely: every planned row is a drop
    assert [outcome(i) for i in reader.read(part)] == ["shard_damaged"] * 12


def test_a_tar_without_its_end_marker_loses_only_its_last_sample(tmp_path):
    one = make_pdf([PdfPage(text_lines("x", 1))])
    members = [(f"{k}.{e}", d) for k in ("0000001", "0000002") for e, d in (("json", pdfa_json([[]])), ("pdf", one))]
    path = write_tar(tmp_path / "t.tar", members)
    whole = path.read_bytes()
    end = len(whole.rstrip(b"\0"))
    path.write_bytes(whole[: end + (-end % 512)])  # cut exactly after the last member: no zero blocks
    # the last sample could be missing members that were cut off: it is not read half
    assert [outcome(i) for i in read_all(path)] == ["kept", "shard_damaged"]


def test_members_are_grouped_the_webdataset_way(tmp_path):
    one = make_pdf([PdfPage(text_lines("x", 1))])
    doc = pdfa_json([text_lines("x", 1)])
    members = [
        ("./0000001.pdf", one),  # a leading ./ is not part of the key
        ("./0000001.JSON", doc),  # extensions are lower-cased
        ("README", b"no dot: part of no sample"),
        ("0000002.json", doc),
        ("0000002.pdf", one),
        ("0000002.pdf", one),  # a repeated extension starts a new sample (with the same key)
        ("sub/0000003.json", doc),  # keys keep their folder, made valid
        ("sub/0000003.pdf", one),
        ("klpb0135.tif", b"II*\0"),
    ]
    items = read_all(write_tar(tmp_path / "t.tar", members))
    assert [(outcome(i), i.record.key if isinstance(i, Sample) else i.key) for i in items][:3] == [
        ("kept", "0000001"),
        ("kept", "0000002"),
        ("missing_member:json", "0000002"),
    ]
    assert items[3].record.key.startswith("sub_0000003-") and items[3].record.meta["source_id"] == "sub/0000003"
    assert (outcome(items[4]), items[4].key) == ("missing_member:pdf", "klpb0135")
    assert len(items) == 5


# ---- the step on its own -------------------------------------------------------------------------
def test_transcription_step_on_records_from_anywhere(tmp_path):
    from curation.recipe import PdfToTranscriptionStep
    from curation.steps.pdf import PdfToTranscription

    cfg = PdfToTranscriptionStep(step="pdf_to_transcription", dpi=36, max_side=64)
    step = PdfToTranscription(cfg, StepContext("pdf_to_transcription", tmp_path))

    def record(pdf: bytes, pages: list[list[str]]) -> Sample:
        lines = [[{"text": t, "bbox": (0.1, 0.1 + 0.1 * i, 0.5, 0.05)} for i, t in enumerate(p)] for p in pages]
        return Sample(PdfRecord(key="k", source="s", pdf=pdf, pages=[{"lines": ln} for ln in lines]), "here")

    one_page = make_pdf([PdfPage(text_lines("x", 1))])
    # no pages_pdf in meta (not from the pdfa reader): pages the PDF lacks are left out
    out = step(record(one_page, [["first", "", "second"], ["not in the PDF"]]))
    assert isinstance(out, Sample) and [t.assistant for t in out.record.turns] == ["first\nsecond"]
    assert [(i.width, i.height) for i in out.infos] == [(49, 64)] and out.record.meta == {"pages_rendered": 1}
    assert step(record(one_page, [[" "], []])) == "no_text"
    assert step(record(one_page, [[], ["text only on a page the PDF lacks"]])) == "no_text"
    assert step(record(b"%PDF-1.4 broken", [["text"]])) == "pdf_unrenderable"
    assert step(record(make_pdf([PdfPage(text_lines("s", 1))], password="pw"), [["text"]])) == "pdf_unrenderable"
