"""Record validation names the bad field; the exported JSON Schemas are up to date."""

from __future__ import annotations

import copy
import json

import pytest

from schemas import (
    InterleavedRecord,
    PairRecord,
    PdfRecord,
    RecordError,
    SftRecord,
    parse_record,
)
from schemas.export import JSON_DIR, record_json_schemas
from schemas.records import KINDS

VALID = {
    "pair": {"key": "k-1", "source": "laion", "meta": {"url": "u"}, "image": b"\xff\xd8\xff", "caption": "a dog"},
    "sft": {"key": "k_2", "source": "cauldron", "images": [b"\x89PNG"], "turns": [{"user": "q", "assistant": "a"}]},
    "interleaved": {"key": "K3", "source": "obelics", "texts": ["t", None], "images": [None, b"\x89PNG"]},
    "pdf": {
        "key": "0154727",
        "source": "pdfa",
        "pdf": b"%PDF-1.4",
        "pages": [{"lines": [{"text": "hello", "bbox": [0.1, 0.2, 0.3, 0.04]}]}, {"lines": []}],
    },
}
_DROP = object()  # marks a field to remove
CLASSES = {"pair": PairRecord, "sft": SftRecord, "interleaved": InterleavedRecord, "pdf": PdfRecord}


def _with(kind: str, **changes) -> dict:
    data = copy.deepcopy(VALID[kind])
    for name, value in changes.items():
        if value is _DROP:
            del data[name]
        else:
            data[name] = value
    return data


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_records_parse_to_their_class(kind):
    record = parse_record(kind, copy.deepcopy(VALID[kind]))
    assert type(record) is CLASSES[kind]
    assert record.kind == kind
    assert record.key == VALID[kind]["key"]


def test_every_kind_has_a_valid_example():
    assert set(VALID) == set(KINDS)


# (kind, data, expected field)
BAD = {
    # keys: no dots (webdataset splits member names at the first dot), no slashes, not empty
    "pair-key-dot": ("pair", _with("pair", key="img.001"), "key"),
    "sft-key-dot": ("sft", _with("sft", key="a.b"), "key"),
    "interleaved-key-dot": ("interleaved", _with("interleaved", key="doc.1"), "key"),
    "pdf-key-dot": ("pdf", _with("pdf", key="0154727.pdf"), "key"),
    "pair-key-slash": ("pair", _with("pair", key="dir/k"), "key"),
    "pair-key-empty": ("pair", _with("pair", key=""), "key"),
    "pair-key-int": ("pair", _with("pair", key=17), "key"),
    # wrong types and missing fields
    "pair-caption-int": ("pair", _with("pair", caption=42), "caption"),
    "pair-caption-missing": ("pair", _with("pair", caption=_DROP), "caption"),
    "pair-image-missing": ("pair", _with("pair", image=_DROP), "image"),
    "pair-image-int": ("pair", _with("pair", image=7), "image"),
    "pair-source-empty": ("pair", _with("pair", source=""), "source"),
    "pair-meta-not-dict": ("pair", _with("pair", meta=["a"]), "meta"),
    "pair-meta-not-json": ("pair", _with("pair", meta={"when": object()}), "meta.when"),
    "pair-extra-field": ("pair", _with("pair", url="http://x"), "url"),
    "sft-empty-turns": ("sft", _with("sft", turns=[]), "turns"),
    "sft-turns-missing": ("sft", _with("sft", turns=_DROP), "turns"),
    "sft-turn-missing-answer": (
        "sft",
        _with("sft", turns=[{"user": "q", "assistant": "a"}, {"user": "q"}]),
        "turns.1.assistant",
    ),
    "sft-turn-answer-int": ("sft", _with("sft", turns=[{"user": "q", "assistant": 3}]), "turns.0.assistant"),
    "sft-turn-extra": ("sft", _with("sft", turns=[{"user": "q", "assistant": "a", "from": "gpt"}]), "turns.0.from"),
    "sft-image-int": ("sft", _with("sft", images=[b"\x89PNG", 5]), "images.1"),
    "sft-images-not-list": ("sft", _with("sft", images=3), "images"),
    "interleaved-length-mismatch": ("interleaved", _with("interleaved", texts=["a", None, "b"]), ("texts", "images")),
    "interleaved-both-set": ("interleaved", _with("interleaved", texts=["a", "b"]), ("texts", "images")),
    "interleaved-neither-set": ("interleaved", _with("interleaved", images=[None, None]), ("texts", "images")),
    "interleaved-empty": ("interleaved", _with("interleaved", texts=[], images=[]), ("texts", "images")),
    "interleaved-text-int": ("interleaved", _with("interleaved", texts=[1, None]), "texts.0"),
    "pdf-bbox-3": (
        "pdf",
        _with("pdf", pages=[{"lines": [{"text": "t", "bbox": [0.1, 0.2, 0.3]}]}]),
        "pages.0.lines.0.bbox",
    ),
    "pdf-bbox-5": (
        "pdf",
        _with("pdf", pages=[{"lines": []}, {"lines": [{"text": "t", "bbox": [0, 0, 1, 1, 1]}]}]),
        "pages.1.lines.0.bbox",
    ),
    "pdf-bbox-str": (
        "pdf",
        _with("pdf", pages=[{"lines": [{"text": "t", "bbox": [0, 0, 1, "x"]}]}]),
        "pages.0.lines.0.bbox",
    ),
    "pdf-line-text-missing": ("pdf", _with("pdf", pages=[{"lines": [{"bbox": [0, 0, 1, 1]}]}]), "pages.0.lines.0.text"),
    "pdf-pages-missing": ("pdf", _with("pdf", pages=_DROP), "pages"),
    "pdf-pdf-int": ("pdf", _with("pdf", pdf=1), "pdf"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_names_the_field(case):
    kind, data, expected = BAD[case]
    with pytest.raises(RecordError) as info:
        parse_record(kind, data)
    err = info.value
    accepted = expected if isinstance(expected, tuple) else (expected,)
    # a bbox of the wrong length may be reported at the bbox or at its missing/extra item
    assert any(err.field == f or err.field.startswith(f + ".") for f in accepted), (case, err.field, str(err))
    top = err.field.split(".", 1)[0]
    assert err.drop_reason == f"invalid_record:{top}"
    assert top in {f.split(".", 1)[0] for f in accepted}
    assert str(err).startswith(f"{err.field}: ")
    assert err.reason  # a slug such as string_type, missing, too_short
    assert isinstance(err, ValueError)


def test_wrong_type_message_says_what_was_given():
    with pytest.raises(RecordError) as info:
        parse_record("pair", _with("pair", caption=42))
    assert info.value.field == "caption"
    assert info.value.reason == "string_type"
    assert "got int" in str(info.value)
    assert info.value.drop_reason == "invalid_record:caption"


def test_interleaved_position_error_names_the_position():
    with pytest.raises(RecordError) as info:
        parse_record("interleaved", _with("interleaved", texts=["a", "b"]))
    assert "position 1" in str(info.value)
    with pytest.raises(RecordError) as info:
        parse_record("interleaved", _with("interleaved", texts=["a", None, "c"]))
    assert "3" in info.value.detail and "2" in info.value.detail


def test_unknown_kind():
    with pytest.raises(RecordError) as info:
        parse_record("video", VALID["pair"])
    assert info.value.field == "kind"
    assert info.value.reason == "unknown_kind"
    assert info.value.drop_reason == "invalid_record:kind"


@pytest.mark.parametrize(
    ("field", "drop_reason"),
    [
        ("turns.2.assistant", "invalid_record:turns"),
        ("caption", "invalid_record:caption"),
        ("pages.0.lines.3.bbox.1", "invalid_record:pages"),
        ("", "invalid_record:record"),
    ],
)
def test_drop_reason_is_the_top_level_field(field, drop_reason):
    err = RecordError(field, "some_reason", "detail")
    assert err.drop_reason == drop_reason
    assert err.field == field
    assert err.reason == "some_reason"


def test_validation_keeps_values_exactly():
    record = parse_record("interleaved", copy.deepcopy(VALID["interleaved"]))
    assert record.texts == ["t", None]
    assert record.images == [None, b"\x89PNG"]
    pdf = parse_record("pdf", copy.deepcopy(VALID["pdf"]))
    assert pdf.pages[0].lines[0].bbox == (0.1, 0.2, 0.3, 0.04)
    assert len(pdf.pages) == 2


def test_json_schema_files_are_not_stale():
    expected = record_json_schemas()
    on_disk = {p.name: p.read_text() for p in sorted(JSON_DIR.glob("*.json"))}
    fix = "the JSON Schemas in schemas/json are stale; regenerate them with `python -m schemas.export`"
    assert sorted(on_disk) == sorted(expected), fix
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name}: {fix}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_json_schema_describes_the_kind(kind):
    schema = json.loads(record_json_schemas()[f"{kind}.schema.json"])
    assert schema["$id"] == f"vlm-curation/{kind}.schema.json"
    assert schema["properties"]["kind"] == {"const": kind, "type": "string"}
    assert schema["additionalProperties"] is False
    assert {"key", "source"} <= set(schema["required"])
    assert schema["properties"]["key"]["pattern"] == r"^[A-Za-z0-9_\-]{1,200}$"
