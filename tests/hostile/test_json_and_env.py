"""Hostile JSON and a hostile environment give a drop or one clear line, never a traceback.

JSON records (the ``jsonl`` reader, and the ``llava`` reader's JSON lines and JSON lists): a 5,000-digit
integer, nesting 950 deep, invalid UTF-8, NaN/Infinity, duplicate keys, a value that is not an object, a 50 MB
line, a byte order mark, CR-only line ends. Each bad record is one drop with its reason, the rest of the file
is read, and ``plan()`` and ``read()`` agree on the rows.

The environment and the CLI: a 300-character name, a recipe that is not UTF-8, an alias bomb, an empty path,
a full disk, and for every command inputs that are missing, empty, a directory, a FIFO, ``/dev/zero``,
not UTF-8, the wrong type, huge or deeply nested. The bar: exit 2 with one ``error:`` line on stderr (``verify``:
exit 1 with its ``problem:`` lines), no traceback, nothing written outside ``--out``, and ``verify`` passes on
whatever a build wrote.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from curation.build.runner import build
from curation.cli.app import main, os_error_message
from curation.recipe import JsonlSource, LlavaSource, validate_recipe
from curation.sample import Drop, Sample
from curation.sources.jsonl import JsonlReader
from curation.sources.jsontext import MAX_RECORD_BYTES
from curation.sources.llava.reader import LlavaReader
from shards.verify import verify_dataset
from tests.builds import CLI
from tests.helpers import png

pytestmark = pytest.mark.timeout(120)


# ---- JSON records ---------------------------------------------------------------------------------------
def _good(i: int) -> dict[str, Any]:
    """A record both readers keep: a pair for ``jsonl`` (its image exists), a conversation for ``llava``."""
    turns = [{"from": "human", "value": f"question {i}?"}, {"from": "gpt", "value": f"answer {i}."}]
    return {"id": f"g{i}", "image": "a.png", "caption": f"caption number {i}", "conversations": turns}


def _line(i: int) -> bytes:
    return json.dumps(_good(i)).encode()


HOSTILE: dict[str, tuple[bytes, str, str]] = {  # record text -> (reason, a piece of the detail)
    "int_5000_digits": (b'{"id": "x", "n": ' + b"7" * 5000 + b"}", "invalid_json", "4300 digits"),
    "nested_950_deep": (b'{"id": "x", "n": ' + b"[" * 950 + b"]" * 950 + b"}", "invalid_json", "nested deeper"),
    "nested_101_objects": (b'{"a": ' * 101 + b"1" + b"}" * 101, "invalid_json", "nested deeper than 100"),
    "invalid_utf8": (b'{"id": "x\xff\xfe"}', "invalid_json", "UnicodeDecodeError"),
    "utf8_encoded_surrogate": (b'{"id": "x\xed\xa0\x80"}', "invalid_json", "UnicodeDecodeError"),
    "nan": (b'{"id": "x", "score": NaN}', "invalid_json", "NaN is not valid JSON"),
    "infinity": (b'{"id": "x", "score": -Infinity}', "invalid_json", "-Infinity is not valid JSON"),
    "duplicate_keys": (b'{"id": "x", "caption": "a", "caption": "b"}', "invalid_json", "duplicate key 'caption'"),
    "nested_duplicate_keys": (b'{"id": "x", "m": {"k": 1, "k": 2}}', "invalid_json", "duplicate key 'k'"),
    "array": (b"[1, 2]", "invalid_json", "a JSON array, not an object"),
    "string": (b'"text"', "invalid_json", "a JSON string, not an object"),
    "number": (b"42", "invalid_json", "a JSON number, not an object"),
    "null": (b"null", "invalid_json", "a JSON null, not an object"),
    "bom_in_the_middle": (b"\xef\xbb\xbf" + _line(7), "invalid_json", ""),
}

FORMATS = ("jsonl", "llava_lines", "llava_list")


def _write(tmp_path: Path, fmt: str, records: list[bytes], *, sep: bytes = b"\n", head: bytes = b"") -> Path:
    """``records`` as a file of the format: one per line, or the elements of one JSON list."""
    (tmp_path / "a.png").write_bytes(png())
    if fmt == "llava_list":
        path = tmp_path / "in.json"
        path.write_bytes(head + b"[" + b",\n".join(records) + b"]\n")
    else:
        path = tmp_path / "in.jsonl"
        path.write_bytes(head + sep.join(records) + sep)
    return path


def _reader(fmt: str, path: Path, partition_size: int = 2) -> JsonlReader | LlavaReader:
    src: dict[str, Any] = {"name": "s", "path": str(path), "partition_size": partition_size}
    if fmt == "jsonl":
        src |= {"reader": "jsonl", "image_root": str(path.parent), "fields": {"key": "id"}}
        return JsonlReader(JsonlSource.model_validate(src))
    fields = {"key": "id", "image": "no_image"}  # text-only conversations: no image needed
    return LlavaReader(LlavaSource.model_validate({**src, "reader": "llava", "fields": fields}))


def _read_all(reader: JsonlReader | LlavaReader) -> list[Sample | Drop]:
    """Every item of every planned partition; each partition yields exactly the rows its plan counted."""
    items: list[Sample | Drop] = []
    for part in reader.plan():
        got = list(reader.read(part))
        assert len(got) == part.rows, f"partition {part.index}: planned {part.rows} rows, read {len(got)}"
        items.extend(got)
    return items


def _kinds(items: list[Sample | Drop]) -> list[str]:
    return ["kept" if isinstance(i, Sample) else i.reason for i in items]


@pytest.mark.parametrize(
    ("fmt", "case"),
    [
        (fmt, case)
        for case in sorted(HOSTILE)
        for fmt in FORMATS
        if (fmt, case) != ("llava_list", "bom_in_the_middle")  # a BOM inside a list breaks its structure
    ],
)
def test_a_hostile_json_record_is_one_drop_and_the_rest_is_read(tmp_path: Path, fmt: str, case: str) -> None:
    text, reason, detail = HOSTILE[case]
    items = _read_all(_reader(fmt, _write(tmp_path, fmt, [_line(0), text, _line(1)])))
    assert _kinds(items) == ["kept", reason, "kept"], [getattr(i, "detail", None) for i in items]
    assert detail in items[1].detail
    assert items[1].raw  # the reject keeps the record's text


@pytest.mark.parametrize("fmt", ["jsonl", "llava_lines"])
@pytest.mark.parametrize("sep", [b"\r", b"\r\n", b"\n\r", b"\r\r\n\n"], ids=["cr", "crlf", "lfcr", "mixed"])
@pytest.mark.parametrize("size", [1, 2, 100])
def test_cr_only_and_mixed_line_ends_plan_and_read_the_same_rows(tmp_path: Path, fmt: str, sep: bytes, size: int):
    items = _read_all(_reader(fmt, _write(tmp_path, fmt, [_line(i) for i in range(3)], sep=sep), size))
    assert _kinds(items) == ["kept"] * 3
    assert [i.origin.rsplit(":", 1)[1] for i in items] == ["1", "2", "3"]  # a line number counts records, not ends


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_byte_order_mark_at_the_start_of_the_file_is_skipped(tmp_path: Path, fmt: str) -> None:
    items = _read_all(_reader(fmt, _write(tmp_path, fmt, [_line(0), _line(1)], head=b"\xef\xbb\xbf")))
    assert _kinds(items) == ["kept", "kept"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_50_mb_record_is_a_drop_read_past_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    huge = b'{"id": "huge", "caption": "' + b"a" * (50 << 20) + b'"}'
    reader = _reader(fmt, _write(tmp_path, fmt, [_line(0), huge, _line(1)]), partition_size=1)
    del huge
    tracemalloc.start()
    try:  # planning, and reading the partition of the huge record alone
        parts = reader.plan()
        drop = list(reader.read(parts[1]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 45 << 20, f"peak {peak >> 20} MiB: the 50 MB record was held"
    assert _kinds(drop) == ["record_too_large"]
    assert f"{(50 << 20) + 29:,} bytes, over the {MAX_RECORD_BYTES >> 20} MiB limit" in drop[0].detail
    assert len(next(iter(drop[0].raw.values()))) == 10_000  # the reject keeps the head only
    assert _kinds(_read_all(reader)) == ["kept", "record_too_large", "kept"]


def test_a_list_element_over_the_limit_that_never_ends_is_the_end_of_the_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_bytes(b"[" + _line(0) + b',{"id": "x", "caption": "' + b"a" * (MAX_RECORD_BYTES + 10))
    items = _read_all(_reader("llava_list", path))
    assert _kinds(items) == ["kept", "invalid_json"] and "an element never ends" in items[1].detail


def test_a_build_over_every_hostile_record_accounts_for_each_and_verifies(tmp_path: Path, capsys) -> None:
    records = [_line(0), *(text for text, _, _ in HOSTILE.values()), _line(1) + b"\r" + _line(2)]
    path = _write(tmp_path, "jsonl", records)
    recipe = _recipe(tmp_path, sources=[_jsonl_source(path)])
    res = curate(capsys, "build", str(recipe), "--out", str(tmp_path / "out"), "-q")
    assert res.code == 0, res.err
    assert verify_dataset(tmp_path / "out").ok
    accounting = json.loads((tmp_path / "out" / "dataset.json").read_text())["accounting"]["sources"]["s"]
    expected: dict[str, int] = {}
    for _, reason, _ in HOSTILE.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert accounting["input"] == len(records) + 1  # the CR-separated pair is two records
    assert accounting["output"] == 3 and accounting["dropped"] == expected


# ---- the CLI, in process ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def curate(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``curate ARGS`` as its console script runs it (``main``: the errors it turns into exit codes)."""
    capsys.readouterr()
    handler = signal.getsignal(signal.SIGTERM)
    with mock.patch.object(sys, "argv", ["curate", *args]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            signal.signal(signal.SIGTERM, handler)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def tree(root: Path) -> set[str]:
    """Everything under ``root`` except ``out`` (where a command may write)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "out"}


def assert_one_line_error(res: Result, *pieces: str, code: int = 2) -> None:
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.code == code, res
    assert "Traceback" not in res.err + res.out
    prefix = "problem:" if code == 1 else "error:"
    assert len(lines) == 1 and lines[0].startswith(prefix), res.err
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])


def _jsonl_source(path: Path, name: str = "s") -> dict[str, Any]:
    return {"name": name, "reader": "jsonl", "path": str(path), "image_root": str(path.parent)}


def _recipe(tmp_path: Path, filename: str = "r.yaml", **changes: Any) -> Path:
    """A build recipe over a one-record JSON lines file, with ``changes`` applied to its top level."""
    data = tmp_path / "data.jsonl"
    if not data.exists():
        (tmp_path / "a.png").write_bytes(png())
        data.write_bytes(_line(0) + b"\n")
    doc = {"kind": "build", "name": "r", "sources": [_jsonl_source(data)], "output": {"kind": "pair"}, **changes}
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory, holding ``r.yaml`` (a valid build recipe) and its input."""
    monkeypatch.chdir(tmp_path)
    _recipe(tmp_path)
    return tmp_path


@pytest.fixture
def cli(work: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``curate ARGS`` in ``work``, checking that nothing was written there outside ``out``."""

    def run(*args: str) -> Result:
        before = tree(work)
        res = curate(capsys, *args)
        after = tree(work)
        assert after == before, f"written outside --out: {sorted(after ^ before)}"
        return res

    return run


def _alias_bomb() -> str:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^9 leaves
    return "kind: build\nname: bomb\nvars:\n" + "".join(f"  {x}\n" for x in levels) + "sources: *a9\n"


def _many_sources(n: int) -> str:
    sources = "".join(f"  - {{name: s{i}, reader: jsonl, path: data.jsonl}}\n" for i in range(n))
    return f"kind: build\nname: many\noutput: {{kind: pair}}\nsources:\n{sources}"


RECIPE_TEXTS: dict[str, tuple[str | bytes, str]] = {  # recipe file content -> a piece of the error line
    "empty": ("", "a recipe is a YAML mapping, got NoneType"),
    "a_list": ("- kind: build\n", "a recipe is a YAML mapping, got list"),
    "a_scalar": ("42\n", "a recipe is a YAML mapping, got int"),
    "kind_5": ("kind: 5\n", "unknown recipe kind 5"),
    "kind_a_list": ("kind: [build]\n", "unknown recipe kind ['build']"),
    "unknown_key": ("kind: build\nname: r\nsorces: []\n", "unknown key 'sorces'; did you mean 'sources'?"),
    "not_yaml": ("kind: build\nname: [\n", "not valid YAML"),
    "not_utf8": (b"kind: build\nname: \xff\xfe\n", "not UTF-8 text: byte 0xff at offset 18"),
    "huge": ("# " + "x" * (5 << 20) + "\n", "larger than 4 MiB"),
    "nested_2000_flow": ("kind: build\nname: " + "[" * 2000 + "]" * 2000 + "\n", "nest"),
    "nested_70_block": ("kind: build\nx:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 70)), "deeper than 64"),
    "alias_bomb": (_alias_bomb(), "expands to more than 1,000,000 values"),
    "alias_cycle": ("kind: build\nname: &a [*a]\n", "a cycle"),
    "10000_sources": (_many_sources(10_000), "10,000 sources; a build takes at most 1,000"),
}


@pytest.mark.parametrize("command", ["build", "select"])
@pytest.mark.parametrize("case", sorted(RECIPE_TEXTS))
def test_a_hostile_recipe_file_is_one_line(work: Path, cli, command: str, case: str) -> None:
    text, piece = RECIPE_TEXTS[case]
    path = work / f"{case}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_one_line_error(cli(command, str(path), "--out", "out"), piece)
    assert not (work / "out").exists()


def _fifo(work: Path) -> str:
    os.mkfifo(work / "fifo.yaml")
    return "fifo.yaml"


def _directory(work: Path) -> str:
    (work / "dir.yaml").mkdir()
    return "dir.yaml"


RECIPE_PATHS: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda w: "nope.yaml", "recipe file not found: nope.yaml"),
    "directory": (_directory, "dir.yaml: cannot read the recipe (a directory)"),
    "fifo": (_fifo, "fifo.yaml: cannot read the recipe (not a regular file)"),
    "dev_zero": (lambda w: "/dev/zero", "/dev/zero: cannot read the recipe (not a regular file)"),
    "name_300_characters": (lambda w: "x" * 300, "no recipe file or built-in recipe named"),
}


@pytest.mark.parametrize("command", ["build", "select"])
@pytest.mark.parametrize("case", sorted(RECIPE_PATHS))
def test_a_recipe_path_that_is_not_a_recipe_file_is_one_line(work: Path, cli, command: str, case: str) -> None:
    make, piece = RECIPE_PATHS[case]
    assert_one_line_error(cli(command, make(work), "--out", "out"), piece)


NAME_300 = "n" * 300
BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {  # top-level changes -> a piece of the error line
    "recipe_name_300": ({"name": NAME_300}, "name: String should have at most 100 characters"),
    "recipe_name_slash": ({"name": "a/b"}, "name: String should match pattern"),
    "recipe_name_dotdot": ({"name": ".."}, "name: String should match pattern"),
    "output_name_300": ({"output": {"kind": "pair", "name": NAME_300}}, "output.name: String should have at most"),
    "source_name_dotdot": ({"sources": [{"name": "..", "reader": "jsonl", "path": "d"}]}, "sources.0.name"),
    "source_name_slash": ({"sources": [{"name": "a/b", "reader": "jsonl", "path": "d"}]}, "sources.0.name"),
    "source_name_300": ({"sources": [{"name": NAME_300, "reader": "jsonl", "path": "d"}]}, "at most 100 characters"),
    "step_name_dotdot_slash": ({"steps": [{"step": "text_length", "name": "../x"}]}, "steps.0.name: a name is part"),
    "step_name_dotdot": ({"steps": [{"step": "text_length", "name": ".."}]}, "steps.0.name: a name is part"),
    "step_name_300": ({"steps": [{"step": "text_length", "name": NAME_300}]}, "at most 100 characters"),
    "sources_a_string": ({"sources": "data.jsonl"}, "sources: Input should be a valid list"),
    "sources_empty": ({"sources": []}, "sources: List should have at least 1 item"),
    "output_a_list": ({"output": ["pair"]}, "output: Input should be a valid dictionary"),
    "seed_a_string": ({"seed": "x"}, "seed: Input should be a valid integer"),
    "empty_path": ({"sources": [{"name": "s", "reader": "jsonl", "path": ""}]}, "sources.0.path: an empty path"),
    "blank_path": ({"sources": [{"name": "s", "reader": "jsonl", "path": "  "}]}, "sources.0.path: an empty path"),
    "blank_image_root": (
        {"sources": [{"name": "s", "reader": "jsonl", "path": "d", "image_root": " "}]},
        "sources.0.image_root: an empty path",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_a_bad_recipe_field_is_one_line_naming_it(work: Path, cli, case: str) -> None:
    changes, piece = BAD_FIELDS[case]
    res = cli("build", str(_recipe(work, "bad.yaml", **changes)), "--out", "out")
    assert_one_line_error(res, piece)
    assert len(res.err) < 1000  # a bad value is quoted short, not whole
    assert not (work / "out").exists()


@pytest.mark.parametrize(
    ("override", "piece"),
    [
        ("sources.s.path=", "sources.0.path: an empty path"),  # used to read every JSON file under the cwd
        ("sources.s.path=' '", "sources.0.path: an empty path"),
        ("sources.s.image_root=", "sources.0.image_root: an empty path"),
        ("vars.root=", "sources.0.path: an empty path"),  # through a variable
        ("sources.s.path=[1, [2]]", "sources.0.path: Input should be a valid string"),
        ("sources.s.path=" + "[" * 100 + "]" * 100, "nested deeper than 64"),
        ("name=" + NAME_300, "name: String should have at most 100 characters"),
        ("sources.s.name=..", "sources.0.name: String should match pattern"),
        ("a." * 100 + "b=1", "deeper than 64 levels"),  # the dotted path itself: it used to recurse and crash
        ("=1", "unknown key ''"),
    ],
)
def test_a_bad_set_override_is_one_line_naming_the_field(work: Path, cli, override: str, piece: str) -> None:
    path = _recipe(work, "v.yaml", vars={"root": "x"})
    doc = yaml.safe_load(path.read_text())
    doc["sources"][0]["path"] = "${root}"
    path.write_text(yaml.safe_dump(doc))
    assert_one_line_error(cli("build", str(path), "--out", "out", "--set", override), piece)


@pytest.mark.timeout(30)
def test_the_alias_bomb_is_refused_fast_in_a_real_process(tmp_path: Path) -> None:
    """In a real ``curate`` process: 10^9 leaves are refused in seconds (it ran > 300 s), no traceback."""
    (tmp_path / "bomb.yaml").write_text(_alias_bomb())
    res = subprocess.run([*CLI, "build", "bomb.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=25)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: bomb.yaml: line ") and "expands to more than" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


# ---- sweep: plans and specs ---------------------------------------------------------------------------
SPEC = "name: sw\nbase: {lr: 1}\nparts: {Learning rate: {key: lr, values: {low: 0.1}}}\n"
PLAN = "### Ablation 1\n- **Ablated Part**: Learning rate\n- **Action**: REPLACE\n- **Replacement**: low\n"
PLAN += "- **Metrics**: accuracy\n"

SWEEP_FILES: dict[str, tuple[bytes | None, str]] = {  # file content (None: the path is made otherwise) -> piece
    "empty": (b"", ""),
    "not_utf8": (b"name: \xff\n", "not UTF-8 text"),
    "huge": (b"#" * (5 << 20), "larger than 4 MiB"),
    "nested": (b"name: " + b"[" * 2000 + b"]" * 2000, ""),
    "alias_bomb": (_alias_bomb().encode(), ""),
    "directory": (None, "a directory"),
    "fifo": (None, "not a regular file"),
    "dev_zero": (None, "not a regular file"),
    "missing": (None, "No such file or directory"),
}


def _sweep_input(work: Path, case: str, name: str) -> str:
    content, _ = SWEEP_FILES[case]
    path = work / name
    if content is not None:
        path.write_bytes(content)
    elif case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "dev_zero":
        return "/dev/zero"
    return name


@pytest.mark.parametrize("which", ["plan", "spec"])
@pytest.mark.parametrize("case", sorted(SWEEP_FILES))
def test_a_hostile_sweep_plan_or_spec_is_one_line(work: Path, cli, which: str, case: str) -> None:
    (work / "spec.yaml").write_text(SPEC)
    (work / "plan.md").write_text(PLAN)
    target = _sweep_input(work, case, f"hostile.{'md' if which == 'plan' else 'yaml'}")
    plan, spec = (target, "spec.yaml") if which == "plan" else ("plan.md", target)
    assert_one_line_error(cli("sweep", plan, "--spec", spec, "--out", "out"), SWEEP_FILES[case][1])


# ---- audit, inspect, verify, export: dataset directories ------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset built from the hostile records of the JSON section: ``--compare``'s other side."""
    root = tmp_path_factory.mktemp("built")
    path = _write(root, "jsonl", [_line(0), *(text for text, _, _ in HOSTILE.values())])
    recipe = validate_recipe(
        {"kind": "build", "name": "b", "sources": [_jsonl_source(path)], "output": {"kind": "pair"}}
    )
    build(recipe, root / "out", progress=False)
    assert verify_dataset(root / "out").ok
    return root / "out"


def _dataset_json(content: bytes | None) -> Callable[[Path], str]:
    def make(work: Path) -> str:
        (work / "ds").mkdir()
        if content is not None:
            (work / "ds" / "dataset.json").write_bytes(content)
        return "ds"

    return make


def _dataset_json_fifo(work: Path) -> str:
    (work / "ds").mkdir()
    os.mkfifo(work / "ds" / "dataset.json")
    return "ds"


def _dataset_json_dir(work: Path) -> str:
    (work / "ds" / "dataset.json").mkdir(parents=True)
    return "ds"


def _a_file(work: Path) -> str:
    (work / "ds").write_text("{}")
    return "ds"


DATASETS: dict[str, Callable[[Path], str]] = {
    "missing": lambda w: "nope",
    "a_file": _a_file,
    "dev_zero": lambda w: "/dev/zero",
    "empty_dir": _dataset_json(None),
    "dataset_json_empty": _dataset_json(b""),
    "dataset_json_not_utf8": _dataset_json(b'{"name": "\xff"}'),
    "dataset_json_a_list": _dataset_json(b"[1, 2]"),
    "dataset_json_a_scalar": _dataset_json(b"5"),
    "dataset_json_wrong_types": _dataset_json(b'{"name": 5, "shards": "x", "totals": []}'),
    "dataset_json_huge": _dataset_json(b'{"name": "' + b"x" * (20 << 20) + b'"}'),
    "dataset_json_nested": _dataset_json(b"[" * 100_000 + b"]" * 100_000),
    "dataset_json_a_fifo": _dataset_json_fifo,
    "dataset_json_a_directory": _dataset_json_dir,
}


@pytest.mark.parametrize("command", ["audit", "inspect", "verify", "export", "audit --compare"])
@pytest.mark.parametrize("case", sorted(DATASETS))
def test_a_hostile_dataset_directory_is_one_line(work: Path, cli, built: Path, command: str, case: str) -> None:
    directory = DATASETS[case](work)
    args = {
        "export": ["export", directory, "--format", "llava", "--out", "out"],
        "audit --compare": ["audit", str(built), "--compare", directory],
    }.get(command, [command, directory])
    res = cli(*args)
    if command == "verify" and res.code == 1:  # the directory has a dataset.json: verify reports what is wrong
        assert "Traceback" not in res.err and res.err.startswith("problem:"), res
    else:
        assert_one_line_error(res)


# ---- writing: --out that cannot be written, a full disk -----------------------------------------------------
@pytest.mark.parametrize(
    ("args", "piece"),
    [
        (["schema", "--out", "/dev/full"], "/dev/full: No space left on device (ENOSPC); free space"),
        (["schema", "--out", "."], "Is a directory"),
        (["schema", "--out", "no/such/dir/x.json"], "No such file or directory"),
        (["build", "r.yaml", "--out", "/dev/zero"], "is a file, not a directory"),
        (["build", "r.yaml", "--out", "r.yaml"], "is a file, not a directory"),
        (["build", "r.yaml", "--out", "out/" + "x" * 300], "File name too long"),
        (["demo", "--out", "r.yaml"], "Not a directory"),
        (["demo", "--out", "/dev/zero"], "Not a directory"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line(cli, args: list[str], piece: str) -> None:
    assert_one_line_error(cli(*args), piece)


def test_an_audit_report_that_cannot_be_written_is_one_line_and_leaves_nothing(work: Path, cli, built: Path) -> None:
    (work / "report").mkdir()
    assert_one_line_error(cli("audit", str(built), "--html", "report"), "Is a directory")


def test_disk_full_errors_name_the_path_and_say_what_to_do() -> None:
    efbig = OSError(27, "File too large")
    assert os_error_message(efbig, Path("/data/out")) == (
        "/data/out: File too large (EFBIG); free space (or raise the quota or file-size limit) and rerun the same "
        "command: finished work is kept"
    )
    named = OSError(28, "No space left on device", "/data/out/x.tar")
    assert os_error_message(named, Path("/data/out")).startswith("/data/out/x.tar: No space left on device (ENOSPC);")
    assert os_error_message(OSError(13, "Permission denied", "/x")) == "/x: Permission denied (EACCES)"


def _noise_inputs(root: Path, n: int = 40) -> Path:
    """``n`` pairs with incompressible 96x96 PNGs (~28 KB each) and a recipe of 5-sample partitions."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.frombytes("RGB", (96, 96), os.urandom(96 * 96 * 3)).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"id": f"k{i}", "image": f"{i}.png", "caption": f"noise number {i}"}))
    (root / "in.jsonl").write_text("\n".join(lines) + "\n")
    source = {**_jsonl_source(root / "in.jsonl"), "image_root": str(root / "img"), "partition_size": 5}
    recipe = {"kind": "build", "name": "full", "sources": [source]}
    recipe["output"] = {"kind": "pair", "pair_image_format": "png", "max_samples_per_shard": 5}
    (root / "full.yaml").write_text(yaml.safe_dump(recipe))
    return root / "full.yaml"


def _ignore_sigxfsz_and_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _build(recipe: Path, out: Path, preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    cmd = [*CLI, "build", str(recipe), "--out", str(out), "-q", "--workers", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=preexec)


def test_a_file_size_limit_mid_build_is_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    recipe = _noise_inputs(tmp_path / "in")
    out = tmp_path / "out"
    res = _build(recipe, out, _ignore_sigxfsz_and_limit(64 << 10))  # shards of 5 PNGs are ~140 KB
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"error: {out}") and "(EFBIG); free space" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _build(recipe, out)
    assert res.returncode == 0, res.stderr
    assert verify_dataset(out).ok
    assert json.loads((out / "dataset.json").read_text())["totals"]["samples"] == 40


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root can mount one; the test is skipped where it may not)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}): needs root and CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_mid_build_is_one_line_and_the_rerun_after_freeing_space_resumes(small_tmpfs: Path) -> None:
    recipe = _noise_inputs(small_tmpfs.parent / "in")  # ~1.1 MB of incompressible images: more than the disk
    out = small_tmpfs / "out"
    res = _build(recipe, out)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"error: {out}") and "(ENOSPC); free space" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)  # space freed
    res = _build(recipe, out)
    assert res.returncode == 0, res.stderr
    assert "resumed" in res.stderr
    assert verify_dataset(out).ok
    assert json.loads((out / "dataset.json").read_text())["totals"]["samples"] == 40


# ---- commands without input ------------------------------------------------------------------------------
def test_recipes_and_schema_need_nothing_and_write_nothing(cli) -> None:
    assert cli("recipes").code == 0
    res = cli("schema")
    assert res.code == 0 and json.loads(res.out)["title"].startswith("vlm-curation recipe")


@pytest.mark.parametrize(
    "args",
    [["build"], ["build", "r.yaml", "--workers", "0"], ["build", "r.yaml", "--limit", "x"], ["nosuch"]],
)
def test_usage_errors_exit_2_with_clicks_one_error_line(cli, args: list[str]) -> None:
    res = cli(*args)
    assert res.code == 2 and "Traceback" not in res.err
    assert [line for line in res.err.splitlines() if line.startswith("Error:")], res.err
