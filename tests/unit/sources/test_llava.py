"""The LLaVA reader: conversation parsing rules, streaming partitions of JSON lists and JSON lines, drops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import curation.sources.llava.json_list as llava
from curation.build.plan import plan_partitions
from curation.errors import CurationError, RecipeError
from curation.recipe import LlavaSource, validate_recipe
from curation.sample import Drop, Sample
from curation.sources.base import Partition, sanitize_key
from curation.sources.llava.conversation import Malformed, parse_turns, strip_image_tags
from curation.sources.llava.reader import LlavaReader
from tests.llava_data import draw_image, gpt, human


def source(path: Path, **kw: Any) -> LlavaSource:
    return LlavaSource.model_validate({"name": "llava", "reader": "llava", "path": str(path), **kw})


def llava_key(raw_id: Any) -> str:
    """The key of a record with id ``raw_id`` in the source named ``llava``: ids are dataset-local, so keys carry
    the source name."""
    return sanitize_key(f"llava-{raw_id}")


def read_all(reader: LlavaReader, parts: list[Partition] | None = None) -> list[Sample | Drop]:
    items: list[Sample | Drop] = []
    for p in parts if parts is not None else reader.plan():
        got = list(reader.read(p))
        assert len(got) == p.rows, f"partition {p.index} declared {p.rows} rows and yielded {len(got)}"
        items.extend(got)
    return items


def by_key(items: list[Sample | Drop]) -> dict[str, Sample | Drop]:
    return {(i.record.key if isinstance(i, Sample) else i.key): i for i in items}


# ---- parsing rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<image>\nWhat is this?", "What is this?"),
        ("What is this?\n<image>", "What is this?"),
        ("<image>\n<image>\nCompare them.", "Compare them."),
        ("First\n<image>\nsecond", "First\nsecond"),
        ("Compare <image> and <image>.", "Compare and ."),
        ("<image>", ""),
        ("No tag here ", "No tag here "),
    ],
)
def test_strip_image_tags(text, expected):
    assert strip_image_tags(text) == expected


def test_parse_turns_sharegpt_chat_and_system():
    turns, system = parse_turns([human("Q1"), gpt("A1"), human("Q2"), gpt("A2")])
    assert turns == [{"user": "Q1", "assistant": "A1"}, {"user": "Q2", "assistant": "A2"}] and system is None
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert parse_turns(messages, "messages") == ([{"user": "Q", "assistant": "A"}], "Be brief.")
    mixed = [{"from": "system", "value": "S"}, {"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]
    assert parse_turns(mixed) == ([{"user": "Q", "assistant": "A"}], "S")


def test_lima_alternating_strings():
    assert parse_turns(["Q", "A", "Q2", "A2"]) == (
        [{"user": "Q", "assistant": "A"}, {"user": "Q2", "assistant": "A2"}],
        None,
    )


@pytest.mark.parametrize(
    ("conversation", "detail"),
    [
        ([], "'conversations' is empty"),
        ({"from": "human"}, "'conversations' is a dict, not a list"),
        ([gpt("A"), human("Q")], "starts with an assistant turn (turn 0)"),
        ([human("Q"), human("Q again"), gpt("A")], "two user turns in a row (turns 0 and 1)"),
        ([human("Q"), gpt("A"), human("Q2")], "the last user turn (turn 2) has no answer"),
        ([human("Q"), gpt("A"), gpt("A2"), human("Q")], "turn 2 is an assistant turn where a user turn belongs"),
        ([human("Q"), {"from": "system", "value": "S"}], "turn 1 is a system turn where an assistant turn belongs"),
        ([{"from": "system", "value": "S"}], "holds only a system turn"),
        ([human("Q"), {"from": "gpt", "value": None}], "turn 1 (gpt) has a NoneType value, not a string"),
        ([human("Q"), {"from": "gpt", "value": ["A"]}], "turn 1 (gpt) has a list value, not a string"),
        ([human("Q"), {"from": "tool", "value": "x"}], "turn 1 has an unknown role 'tool'"),
        ([human("Q"), {"speaker": "gpt", "text": "A"}], "turn 1 has neither 'from' nor 'role'"),
        (["Q", "A", "Q2"], "the last user turn (turn 2) has no answer"),
        (["Q", human("A")], "turn 0 is a str, not an object"),
    ],
)
def test_malformed_conversations(conversation, detail):
    with pytest.raises(Malformed) as exc:
        parse_turns(conversation)
    assert exc.value.reason == "malformed_conversation"
    assert detail in str(exc.value)


def write_json(path: Path, value: Any, indent: int | None = 2) -> Path:
    path.write_text(json.dumps(value, indent=indent, ensure_ascii=False))
    return path


def test_llava_records_become_sft_samples(tmp_path):
    images = tmp_path / "images"
    coco = draw_image(images / "coco/train2017/000000000001.jpg", 1)
    vg = draw_image(images / "vg/VG_100K_2/7.png", 2)
    coco_ref, vg_ref = "coco/train2017/000000000001.jpg", "vg/VG_100K_2/7.png"
    rows = [
        {"id": "000000000001", "image": coco_ref, "conversations": [human("<image>\nQ?"), gpt("A")]},
        {"id": 7, "image": vg_ref, "conversations": [human("Where?\n<image>"), gpt("Here"), human("Why?"), gpt("So")]},
        {"id": 8, "model": "", "conversations": [human("Text <image> kept?"), gpt("Yes")]},
        {"id": "a.b/c", "image": [coco_ref, vg_ref], "conversations": [human("<image>\n<image>\nBoth?"), gpt("Yes")]},
        {"conversations": [{"from": "system", "value": "Sys"}, human("Q"), gpt("A")], "source": "x"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"id": 0, "conversations": [human("Zero?"), gpt("A valid id")]},  # a falsy id is still an id
        {"id": "", "conversations": [human("Empty?"), gpt("No id")]},  # an empty id is none: the default key
    ]
    reader = LlavaReader(source(write_json(tmp_path / "mix.json", rows), image_root=str(images)))
    items = read_all(reader)
    assert all(isinstance(i, Sample) for i in items), items
    recs = [i.record for i in items]
    assert [r.key for r in recs] == [
        "llava-000000000001",
        "llava-7",
        "llava-8",
        sanitize_key("llava-a.b/c"),
        "llava-mix-0000-000000004",  # no id: source, file stem, file and row numbers
        "llava-mix-0000-000000005",
        "llava-0",
        "llava-mix-0000-000000007",
    ]
    assert recs[3].key.startswith("llava-a_b_c-") and recs[3].key != sanitize_key("a.b/c")
    assert all(r.source == "llava" for r in recs)
    assert recs[0].images == [coco] and recs[0].turns[0].user == "Q?"
    assert recs[0].meta == {"image_paths": "coco/train2017/000000000001.jpg", "source_id": "000000000001"}
    assert recs[1].images == [vg] and [t.user for t in recs[1].turns] == ["Where?", "Why?"]
    assert recs[1].meta == {"image_paths": "vg/VG_100K_2/7.png", "source_id": 7}  # the raw id: an int stays an int
    assert recs[2].images == [] and recs[2].turns[0].user == "Text <image> kept?"  # text-only: text untouched
    assert recs[2].meta == {"model": "", "source_id": 8}
    assert recs[3].images == [coco, vg] and recs[3].turns[0].user == "Both?"
    assert recs[3].meta == {
        "image_paths": ["coco/train2017/000000000001.jpg", "vg/VG_100K_2/7.png"],
        "source_id": "a.b/c",
    }
    assert recs[4].meta == {"system": "Sys", "source": "x"} and recs[4].turns[0].user == "Q"  # no id: no source_id
    assert recs[5].turns[0].assistant == "Hello" and recs[5].meta == {}
    assert recs[6].meta == {"source_id": 0}
    assert recs[7].meta == {} and recs[7].turns[0].user == "Empty?"
    assert items[0].origin == f"{tmp_path / 'mix.json'}[0]"


def test_keep_extra_false_and_mapped_fields(tmp_path):
    rows = [{"uid": "k1", "dialog": [human("Q"), gpt("A")], "sys": "S", "extra": 1}]
    fields = {"key": "uid", "conversations": "dialog", "system": "sys"}
    reader = LlavaReader(source(write_json(tmp_path / "d.json", rows), fields=fields, keep_extra=False))
    [item] = read_all(reader)
    assert item.record.key == "llava-k1"  # the mapped key field gets the source name too
    assert item.record.meta == {"system": "S", "source_id": "k1"}  # keep_extra=False still keeps the input id
    reader = LlavaReader(source(tmp_path / "d.json", fields={"conversations": "turns"}))
    [drop] = read_all(reader)
    assert isinstance(drop, Drop) and drop.reason == "malformed_conversation" and "no 'turns' field" in drop.detail


def test_single_turn_instruction_records(tmp_path):
    rows = [
        {"query": "1+1?", "response": "2", "type": "GSM", "sys": "Math tutor."},
        {"query": "2+2?", "response": 4, "type": "GSM"},
        {"query": "3+3?", "type": "GSM"},
    ]
    fields = {"user": "query", "assistant": "response", "system": "sys"}
    items = read_all(LlavaReader(source(write_json(tmp_path / "MetaMathQA-395K.json", rows), fields=fields)))
    ok, not_str, missing = items
    assert ok.record.turns[0].model_dump() == {"user": "1+1?", "assistant": "2"}
    assert ok.record.meta == {"type": "GSM", "system": "Math tutor."}
    assert ok.record.key == "llava-MetaMathQA-395K-0000-000000000"
    assert (not_str.reason, not_str.detail) == ("malformed_conversation", "field 'response' is a int, not a string")
    assert (missing.reason, missing.detail) == ("malformed_conversation", "field 'response' is missing")


def test_image_drops(tmp_path):
    images = tmp_path / "images"
    draw_image(images / "ocr_vqa/images/ok.jpg", 1)
    (images / "ocr_vqa/images/adir.jpg").mkdir()
    conv = [human("<image>\nQ"), gpt("A")]
    rows = [
        {"id": "ok", "image": "ocr_vqa/images/ok.jpg", "conversations": conv},
        {"id": "gone", "image": "ocr_vqa/images/0439023521.jpg", "conversations": conv},
        {"id": "dir", "image": "ocr_vqa/images/adir.jpg", "conversations": conv},
        {"id": "num", "image": 3, "conversations": conv},
        {"id": "empty_list", "image": ["ok.jpg", ""], "conversations": conv},
        "not an object",
    ]
    items = read_all(LlavaReader(source(write_json(tmp_path / "x.json", rows), image_root=str(images))))
    assert isinstance(items[0], Sample)
    assert items[0].record.key == "llava-ok"
    reasons = [(i.key, i.reason) for i in items[1:]]
    assert reasons == [  # drops carry the same keys as samples would
        ("llava-gone", "missing_image_file"),
        ("llava-dir", "unreadable_image_file"),
        ("llava-num", "invalid_image_field"),
        ("llava-empty_list", "invalid_image_field"),
        ("llava-x-0000-000000005", "invalid_json"),  # no id could be read: the default key
    ]
    assert "0439023521.jpg" in items[1].detail and items[1].origin.endswith("x.json[1]")
    assert items[5].detail == "a JSON string, not an object"


# ---- streaming partitions -----------------------------------------------------------------------------------
def conv_rows(n: int, pad: int = 0) -> list[dict[str, Any]]:
    """Text-only records of varied sizes with non-ASCII text (multi-byte UTF-8 across chunk boundaries)."""
    return [
        {
            "id": f"r{i:04d}",
            "model": "",
            "conversations": [human(f"Frage {i}: {'ü' * (i % 7)}" + "é犬" * (i % 50)), gpt(f"Antwort {i} ✓" * pad)],
        }
        for i in range(n)
    ]


def gpt_text(row: dict[str, Any]) -> str:
    return row["conversations"][1]["value"]


def keys_and_turns(items: list[Sample | Drop]) -> list[tuple[str, Any]]:
    return [
        (i.record.key, [t.model_dump() for t in i.record.turns]) if isinstance(i, Sample) else (i.key, i.reason)
        for i in items
    ]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_list_partitions_concatenate_to_the_whole_file(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(llava, "CHUNK", chunk)  # tiny reads: every element straddles buffer boundaries
    rows = conv_rows(23)
    path = write_json(tmp_path / "conv.json", rows, indent)
    reader = LlavaReader(source(path, partition_size=5))
    parts = reader.plan()
    assert [p.rows for p in parts] == [5, 5, 5, 5, 3]
    raw = path.read_bytes()
    for p in parts:  # each offset is where the partition's first element starts
        first = rows[p.spec["start"]]
        assert json.JSONDecoder().raw_decode(raw.decode("latin-1"), p.spec["offset"])[0]["id"] == first["id"]
    got = keys_and_turns(read_all(reader, parts))
    expected = [
        (llava_key(r["id"]), [{"user": r["conversations"][0]["value"], "assistant": r["conversations"][1]["value"]}])
        for r in rows
    ]
    assert got == expected
    assert got == keys_and_turns(read_all(LlavaReader(source(path, partition_size=1000))))


def test_a_big_json_list_streams_in_chunks(tmp_path):
    rows = conv_rows(400, pad=500)  # ~3 MB: several real 1 MiB chunks
    path = write_json(tmp_path / "big.json", rows)
    assert path.stat().st_size > 2 * llava.CHUNK
    reader = LlavaReader(source(path, partition_size=150))
    parts = reader.plan()
    assert [p.rows for p in parts] == [150, 150, 100]
    assert [k for k, _ in keys_and_turns(read_all(reader, parts))] == [llava_key(r["id"]) for r in rows]


def broken_list(tmp_path: Path, broken: str) -> Path:
    """Nine records; the fifth element replaced by ``broken`` text."""
    parts = [json.dumps(r, ensure_ascii=False) for r in conv_rows(9)]
    parts[4] = broken
    path = tmp_path / "broken.json"
    path.write_text("[\n" + ",\n".join(parts) + "\n]\n")
    return path


@pytest.mark.parametrize(
    "broken",
    [
        '{"id": "r0004", "conversations": tru}',
        '{"id": "r0004" "conversations": []}',
        '{"id": "r0004", "conversations": [], }',
        '{"id": "\\x"}',
        "tru",
    ],
)
@pytest.mark.parametrize("size", [2, 4, 100])
def test_a_broken_element_is_one_drop_and_the_rest_is_read(tmp_path, monkeypatch, broken, size):
    monkeypatch.setattr(llava, "CHUNK", 16)
    reader = LlavaReader(source(broken_list(tmp_path, broken), partition_size=size))
    items = read_all(reader)
    assert sum(p.rows for p in reader.plan()) == 9
    assert [type(i).__name__ for i in items] == ["Sample"] * 4 + ["Drop"] + ["Sample"] * 4
    assert items[4].reason == "invalid_json" and items[4].origin.endswith("broken.json[4]")
    assert items[4].raw["text"] == broken


def test_invalid_utf8_in_an_element_is_invalid_json(tmp_path):
    path = tmp_path / "bad_utf8.json"
    good = json.dumps(conv_rows(1)[0]).encode()
    path.write_bytes(
        b"[" + good + b',{"id": "x\xff\xfe", "conversations": []},' + good.replace(b"r0000", b"r0001") + b"]"
    )
    items = read_all(LlavaReader(source(path)))
    assert [type(i).__name__ for i in items] == ["Sample", "Drop", "Sample"]
    assert items[1].reason == "invalid_json" and "UnicodeDecodeError" in items[1].detail


R4, R5 = (json.dumps(r, ensure_ascii=False) for r in conv_rows(6)[4:])


@pytest.mark.parametrize(
    ("broken", "good", "detail"),
    [
        ('{"id": "r0004", "conversations": "unterminated}', 4, "an element never ends"),
        (f"{R4} {R5}", 5, "expected ',' or ']' after the element, found '{'"),  # r0004 is read, then a comma is missing
    ],
)
@pytest.mark.parametrize("size", [1, 3, 5, 100])
def test_a_structural_break_makes_one_drop_for_the_rest(tmp_path, broken, good, detail, size):
    reader = LlavaReader(source(broken_list(tmp_path, broken), partition_size=size))
    parts = reader.plan()
    items = read_all(reader, parts)
    assert sum(p.rows for p in parts) == good + 1
    assert [i.record.key for i in items[:-1]] == [f"llava-r{i:04d}" for i in range(good)]
    drop = items[-1]
    assert drop.reason == "invalid_json" and detail in drop.detail and "unreadable from byte" in drop.detail


@pytest.mark.parametrize(
    ("text", "rows", "detail"),
    [
        ('[{"id": "a", "conversations": []}', 2, "the file ends before the list's closing ']'"),
        ('[{"id": "a", "conversations": []},', 2, "the file ends before the list's closing ']'"),
        ('[{"id": "a", "conversations": []}] trailing', 2, "data after the list's closing ']'"),
        ("[]", 0, None),
        ("  \n", 0, None),
        ('[{"id": "a", "conversations": []},]', 1, None),  # a trailing comma is tolerated
    ],
)
def test_list_ends(tmp_path, text, rows, detail):
    path = tmp_path / "ends.json"
    path.write_text(text)
    items = read_all(LlavaReader(source(path)))
    assert len(items) == rows
    if detail:
        assert items[-1].reason == "invalid_json" and detail in items[-1].detail


def test_a_file_cut_after_planning_keeps_the_accounting_exact(tmp_path):
    rows = conv_rows(10)
    path = write_json(tmp_path / "cut.json", rows)
    reader = LlavaReader(source(path, partition_size=4))
    parts = reader.plan()
    raw = path.read_bytes()
    path.write_bytes(raw[: raw.index(b'"r0006"')])  # cut inside element 6, after planning
    items = read_all(reader, parts)  # each partition still yields its planned rows
    assert [i.record.key for i in items if isinstance(i, Sample)] == [f"llava-r{i:04d}" for i in range(6)]
    drops = [(i.origin.rsplit("[", 1)[1], i.reason) for i in items if isinstance(i, Drop)]
    assert drops == [
        ("6]", "invalid_json"),
        ("7]", "file_unreadable"),
        ("8]", "invalid_json"),
        ("9]", "file_unreadable"),
    ]
    path.unlink()
    gone = list(reader.read(parts[0]))
    assert len(gone) == 4 and {d.reason for d in gone} == {"file_unreadable"} and "FileNotFoundError" in gone[0].detail


def test_jsonl_partitions_blank_lines_and_bad_lines(tmp_path):
    rows = conv_rows(12)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(3, "")
    lines.insert(6, '{"id": "cut", "conv')
    lines.insert(9, "[1, 2]")
    path = tmp_path / "convs.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    reader = LlavaReader(source(path, partition_size=4))
    parts = reader.plan()
    assert [p.rows for p in parts] == [4, 4, 4, 2]
    items = read_all(reader, parts)
    drops = [(i.origin.rsplit(":", 1)[1], i.reason) for i in items if isinstance(i, Drop)]
    assert drops == [("6", "invalid_json"), ("9", "invalid_json")]
    assert [i.record.key for i in items if isinstance(i, Sample)] == [llava_key(r["id"]) for r in rows]
    assert [i.record.meta["source_id"] for i in items if isinstance(i, Sample)] == [r["id"] for r in rows]


def test_a_json_file_of_lines_and_files_that_are_neither(tmp_path):
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in conv_rows(3)) + "\n")
    items = read_all(LlavaReader(source(tmp_path / "lines.json")))
    assert [i.record.key for i in items] == ["llava-r0000", "llava-r0001", "llava-r0002"]
    (tmp_path / "obj.json").write_text(json.dumps({"data": conv_rows(2)}, indent=2))
    with pytest.raises(CurationError, match="neither a JSON list nor JSON lines"):
        LlavaReader(source(tmp_path / "obj.json")).plan()
    (tmp_path / "num.json").write_text("42")
    with pytest.raises(CurationError, match="not a JSON list"):
        LlavaReader(source(tmp_path / "num.json")).plan()


def test_directories_and_globs(tmp_path):
    (tmp_path / "d").mkdir()
    write_json(tmp_path / "d" / "b.json", conv_rows(3))
    (tmp_path / "d" / "a.jsonl").write_text(json.dumps(conv_rows(1)[0]).replace("r0000", "z") + "\n")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    items = read_all(LlavaReader(source(tmp_path / "d", partition_size=2)))
    assert [i.record.key for i in items] == ["llava-z", "llava-r0000", "llava-r0001", "llava-r0002"]
    items = read_all(LlavaReader(source(f"{tmp_path}/d/*.json")))
    assert len(items) == 3
    with pytest.raises(CurationError, match="no such file"):
        LlavaReader(source(tmp_path / "nothing.json")).plan()


def test_limit_truncates_partitions(tmp_path):
    path = write_json(tmp_path / "conv.json", conv_rows(23))
    recipe = validate_recipe(
        {
            "name": "t",
            "sources": [{"name": "llava", "reader": "llava", "path": str(path), "partition_size": 5}],
            "output": {"kind": "sft"},
        }
    )
    parts = plan_partitions(recipe, limit=12)
    assert [p.rows for p in parts] == [5, 5, 2]
    reader = LlavaReader(recipe.sources[0])
    assert [i.record.key for i in read_all(reader, parts)] == [f"llava-r{i:04d}" for i in range(12)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"conversation": "c"}, "'conversation' is not a LLaVA field; did you mean 'conversations'?"),
        ({"caption": "c"}, "'caption' is not a LLaVA field"),
        ({"user": "query"}, "single-turn records need both 'user' and 'assistant'"),
    ],
)
def test_field_mapping_errors(tmp_path, fields, message):
    recipe = {
        "name": "t",
        "sources": [{"name": "llava", "reader": "llava", "path": str(tmp_path), "fields": fields}],
        "output": {"kind": "sft"},
    }
    with pytest.raises(RecipeError, match="sources") as exc:
        validate_recipe(recipe)
    assert message in str(exc.value)


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_an_element_over_the_limit_is_skipped_by_its_structure_alone(tmp_path, monkeypatch, chunk):
    """Brackets, quotes and escapes inside the big element's strings, cut anywhere by the chunks, do not end it."""
    monkeypatch.setattr(llava, "CHUNK", chunk)
    monkeypatch.setattr(llava, "MAX_RECORD_BYTES", 300)
    rows = conv_rows(2)
    big = json.dumps({"id": "big", "t": ['a"]}[{\\ ,' * 40, {"x": "]]]"}]})
    path = tmp_path / "big.json"
    path.write_text(f"[{json.dumps(rows[0])},\n{big} ,{json.dumps(rows[1])}]")
    reader = LlavaReader(source(path, partition_size=1))
    items = read_all(reader)
    assert [type(i).__name__ for i in items] == ["Sample", "Drop", "Sample"]
    assert items[1].reason == "record_too_large" and f"{len(big):,} bytes" in items[1].detail
    assert items[1].raw["text"].startswith('{"id": "big"')  # the reject keeps the element's head


@pytest.mark.parametrize("sep", ["\r", "\r\n", "\n"])
def test_a_json_file_of_lines_is_recognised_whatever_its_line_ends(tmp_path, sep):
    rows = [json.dumps(r) for r in conv_rows(3)]
    rows[1] = '{"id": "r0001", "n": NaN}'  # the first line decides the format; a bad later line is a drop
    path = tmp_path / "lines.json"
    path.write_bytes(b"\xef\xbb\xbf" + sep.join(rows).encode() + sep.encode())
    items = read_all(LlavaReader(source(path, partition_size=2)))
    assert [type(i).__name__ for i in items] == ["Sample", "Drop", "Sample"]
    assert items[1].reason == "invalid_json" and "NaN is not valid JSON" in items[1].detail


def test_a_first_line_that_is_one_broken_object_still_means_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"id": "a", "n": ' + "9" * 5000 + "}\n" + json.dumps(conv_rows(1)[0]) + "\n")
    items = read_all(LlavaReader(source(path)))
    assert [type(i).__name__ for i in items] == ["Drop", "Sample"] and "4300 digits" in items[0].detail
