"""JSON and YAML that arrive inside other inputs are parsed as strictly and as boundedly as input records:
OBELICS metadata columns, benchmark question files, a Cauldron dataset card's YAML header."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from curation.errors import CurationError
from curation.recipe import Benchmark
from curation.sources.cauldron import _readme_configs
from curation.sources.obelics.document import ObelicsDocument
from curation.steps.decontaminate import _bench_items

DEEP = "[" * 5000 + "]" * 5000
HOSTILE = {"deep": DEEP, "digits": "[" + "9" * 5000 + "]", "nan": "[NaN]", "not_utf8": b'["\xff"]'}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_obelics_metadata_is_a_value_error_for_that_document(case: str):
    row = {
        "images": [None],
        "texts": ["a paragraph"],
        "metadata": HOSTILE[case],
        "general_metadata": "{}",
    }
    with pytest.raises(ValueError, match="'metadata' is not valid JSON"):
        ObelicsDocument.from_row(row)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_benchmark_question_file_is_one_line(tmp_path: Path, case: str):
    path = tmp_path / "questions.jsonl"
    line = HOSTILE[case]
    path.write_bytes(b'{"question": "fine?"}\n\n' + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(CurationError, match=r"questions.jsonl, the line at byte 23: not valid JSON") as err:
        list(_bench_items(Benchmark(name="b", questions=str(path)), "phash"))
    assert "\n" not in str(err.value)


def test_a_dataset_card_alias_bomb_is_refused_quickly(tmp_path: Path):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
             for i in range(20)]  # fmt: skip
    (tmp_path / "README.md").write_text("---\n" + "\n".join(bomb) + "\nconfigs: [{config_name: ai2d}]\n---\n")
    started = time.monotonic()
    assert _readme_configs(tmp_path) == []
    assert time.monotonic() - started < 10
