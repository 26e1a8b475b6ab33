"""The dataset card (README.md of a build) and `compare` (what changed between two builds)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from curation.build.runner import build
from curation.mixture.build import build_mixture
from curation.recipe import validate_recipe
from curation.report.audit import audit
from curation.report.card import dataset_card, size_category, write_dataset_card
from curation.report.compare import compare, render_compare_markdown, render_compare_table
from tests.helpers import png

LICENSED = [("alpha", {"license": "cc-by-4.0", "citation": "Alpha et al. 2024"}), ("beta", {"license": "mit"})]
SOURCES = [*LICENSED, ("gamma", {})]


def _rows(path: Path, name: str, n: int, words: Callable[[int], int], images: bool = False) -> None:
    """``n`` one-turn conversations whose answers are ``words(i)`` times "yes" (regex: one token each)."""
    with open(path, "w") as f:
        for i in range(n):
            row: dict[str, Any] = {
                "id": f"{name}-{i}",
                "turns": [{"user": f"question {i}?", "assistant": "yes " * words(i)}],
            }
            if images:
                (path.parent / f"{name}-{i}.png").write_bytes(png(seed=i))
                row["images"] = [f"{name}-{i}.png"]
            f.write(json.dumps(row) + "\n")


def _recipe(root: Path, sources: list[tuple[str, dict]], min_words: int) -> Any:
    return validate_recipe(
        {
            "name": "demo",
            "description": "A small test build.",
            "sources": [
                {
                    "name": s,
                    "reader": "jsonl",
                    "record": "sft",
                    "path": str(root / f"{s}.jsonl"),
                    "image_root": str(root),
                    "fields": {"key": "id"},
                    "partition_size": 100,
                    **extra,
                }
                for s, extra in sources
            ],
            "steps": [{"step": "text_length", "min_words": min_words, "field": "answers"}],
            "output": {"kind": "sft", "max_samples_per_shard": 4},
        }
    )


def _inputs(root: Path, alpha_rows: int, delta: bool = False) -> Path:
    root.mkdir(parents=True)
    _rows(root / "alpha.jsonl", "alpha", alpha_rows, lambda i: i % 5 + 1)  # answers of 1..5 words
    _rows(root / "beta.jsonl", "beta", 6, lambda i: 3, images=True)
    _rows(root / "gamma.jsonl", "gamma", 4, lambda i: 4)
    if delta:
        _rows(root / "delta.jsonl", "delta", 3, lambda i: 5)
    return root


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """a: alpha (10 rows), beta, gamma, min 2 words; a2: the same again; b: alpha with 15 rows, delta added,
    min 3 words; empty: every sample dropped."""
    tmp = tmp_path_factory.mktemp("card")
    ina, inb = _inputs(tmp / "in-a", 10), _inputs(tmp / "in-b", 15, delta=True)
    return {
        "a": build(_recipe(ina, SOURCES, 2), tmp / "a", progress=False).out,
        "a2": build(_recipe(ina, SOURCES, 2), tmp / "a2", progress=False).out,
        "b": build(_recipe(inb, [*SOURCES, ("delta", {"license": "mit"})], 3), tmp / "b", progress=False).out,
        "empty": build(_recipe(ina, SOURCES, 100), tmp / "empty", progress=False).out,
        "licensed": build(_recipe(ina, LICENSED[:1], 2), tmp / "licensed", progress=False).out,
    }


def _header(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _table_rows(card: str, headers: str) -> dict[str, list[str]]:
    lines = card.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {headers} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


def test_card_header_and_sources_table_match_the_audit(builds):
    path = write_dataset_card(builds["a"])
    assert path == builds["a"] / "README.md"
    card = path.read_text()
    header = _header(card)
    assert header["pretty_name"] == "demo"
    assert header["license"] == "other" and header["license_name"] == "mixed"
    assert header["license_details"] == "Mixed licences: alpha: cc-by-4.0; beta: mit; gamma: not declared"
    assert header["size_categories"] == ["n<1K"]
    assert header["task_categories"] == ["image-text-to-text", "visual-question-answering"]  # beta has images
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "demo-*.tar"}]}]
    assert header["tags"] == ["webdataset", "vlm-curation", "sft"]
    assert "A small test build." in card and "curate build" in card and 'hf_features("sft")' in card

    report = audit(builds["a"])
    rows = _table_rows(card, "source | reader")
    assert set(rows) == set(report["sources"]) == {"alpha", "beta", "gamma"}
    for name, s in report["sources"].items():
        _, reader, _, _, _, inputs, samples, answer, share = rows[name]
        assert reader == "jsonl"
        assert (int(inputs.replace(",", "")), int(samples), int(answer)) == (
            s["input"],
            s["samples"],
            s["answer_tokens"],
        )
        assert float(share) == s["mix_pct"]
    assert (rows["alpha"][3], rows["alpha"][4]) == ("cc-by-4.0", "Alpha et al. 2024")
    assert rows["gamma"][3] == "not declared"
    # exact numbers: alpha keeps answers of 2..5 words (twice), beta 6 x 3, gamma 4 x 4
    assert [(s["samples"], s["answer_tokens"]) for s in report["sources"].values()] == [(8, 28), (6, 18), (4, 16)]
    assert _table_rows(card, "step | reason")["text_length"] == ["text_length", "too_few_words", "2"]
    sizes = _table_rows(card, " | total")
    assert sizes["samples"][1] == "18" and sizes["answer tokens"][1] == "62" and sizes["images"][1] == "6"


def test_card_is_deterministic(builds):
    first = write_dataset_card(builds["a"]).read_bytes()
    assert write_dataset_card(builds["a"]).read_bytes() == first
    # a rebuild of the same recipe elsewhere writes the same card
    assert write_dataset_card(builds["a2"]).read_bytes() == first
    assert not list(builds["a"].glob(".README.md*"))  # no temporary left behind


def test_card_single_licence_and_empty_build(builds):
    assert _header(dataset_card(builds["licensed"]))["license"] == "cc-by-4.0"
    card = write_dataset_card(builds["empty"]).read_text()
    header = _header(card)
    assert header["size_categories"] == ["n<1K"] and header["license"] == "other"
    assert header["task_categories"] == ["image-text-to-text"]  # no images kept
    assert "0 samples in 0" in card
    assert {k: v[6] for k, v in _table_rows(card, "source | reader").items()} == {
        "alpha": "0",
        "beta": "0",
        "gamma": "0",
    }


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 12_345, 2_000_000, 10**13)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
        "n>1T",
    ]


def test_compare_reports_exact_changes(builds):
    doc = compare(builds["a"], builds["b"])
    assert not doc["same_recipe"] and doc["changed"]
    assert doc["sources_added"] == ["delta"] and doc["sources_removed"] == []
    s = doc["sources"]
    # alpha: 15 rows, answers of 3..5 words kept (3 each): 9 samples, 36 answer tokens
    assert s["alpha"]["samples"] == {"a": 8, "b": 9, "delta": 1, "pct": 12.5}
    assert s["alpha"]["answer_tokens"] == {"a": 28, "b": 36, "delta": 8, "pct": 28.57}
    assert s["beta"]["samples"]["delta"] == 0 and s["beta"]["answer_tokens"] == {
        "a": 18,
        "b": 18,
        "delta": 0,
        "pct": 0.0,
    }
    assert s["delta"]["status"] == "added" and s["delta"]["samples"] == {"a": 0, "b": 3, "delta": 3, "pct": None}
    assert s["delta"]["answer_tokens"]["b"] == 15
    assert s["beta"]["images"] == {"a": 6, "b": 6, "delta": 0, "pct": 0.0}
    ra, rb = audit(builds["a"]), audit(builds["b"])
    for name in ("alpha", "beta", "gamma"):
        share = s[name]["mix_pct"]
        assert (share["a"], share["b"]) == (ra["sources"][name]["mix_pct"], rb["sources"][name]["mix_pct"])
        assert share["delta"] == pytest.approx(share["b"] - share["a"])
    assert doc["dropped"] == {"too_few_words": {"a": 2, "b": 6, "delta": 4, "pct": 200.0}}
    assert doc["dropped_by_step"]["text_length"]["too_few_words"]["delta"] == 4
    assert doc["totals"]["samples"] == {"a": 18, "b": 22, "delta": 4, "pct": pytest.approx(22.22)}
    assert doc["totals"]["answer_tokens"]["delta"] == 23 and doc["totals"]["input"]["delta"] == 8
    # shards: a holds alpha 2 + beta 2 + gamma 1; b alpha 3 + beta 2 + gamma 1 + delta 1
    shards = doc["shards"]
    assert shards["by_name"]["added"] == ["demo-000005.tar", "demo-000006.tar"]
    assert shards["by_name"]["removed"] == [] and len(shards["by_name"]["changed"]) == 5
    assert shards["by_content"]["identical"] == 3  # beta's and gamma's shards, renumbered
    assert len(shards["by_content"]["added"]) == 4 and len(shards["by_content"]["removed"]) == 2
    md = render_compare_markdown(doc)
    assert "| alpha | kept | 8 | 9 | +1 | +12.5% |" in md and "Sources added: delta" in md
    out = io.StringIO()
    render_compare_table(doc, Console(file=out, width=250))
    assert "too_few_words" in out.getvalue() and "delta" in out.getvalue()


def test_compare_identical_builds(builds):
    for other in ("a", "a2"):
        doc = compare(builds["a"], builds[other])
        assert doc["same_recipe"] and not doc["changed"]
        assert doc["sources_added"] == doc["sources_removed"] == []
        assert all(d["delta"] == 0 for s in doc["sources"].values() for k, d in s.items() if k != "status")
        assert len(doc["shards"]["by_name"]["identical"]) == 5 and doc["shards"]["by_content"]["identical"] == 5
        assert doc["shards"]["by_content"]["added"] == doc["shards"]["by_content"]["removed"] == []
        assert "no change" in render_compare_markdown(doc)


def test_mixture_card_and_compare(builds, tmp_path):
    def mix(share: float, out: str) -> Path:
        recipe = validate_recipe(
            {
                "kind": "mixture",
                "name": "mix",
                "seed": 3,
                "datasets": {"a": {"path": str(builds["a"])}},
                "components": [
                    {"name": "alpha", "dataset": "a", "target": {"answer_share": share}},
                    {"name": "beta", "dataset": "a", "target": {"answer_share": 100.0 - share}},
                ],
                "output": {"max_samples_per_shard": 8},
            }
        )
        return build_mixture(recipe, tmp_path / out, progress=False).out

    m1, m2 = mix(50.0, "m1"), mix(70.0, "m2")
    card = write_dataset_card(m1).read_text()
    header = _header(card)
    assert header["license"] == "other" and "alpha: cc-by-4.0; beta: mit" in header["license_details"]
    assert header["configs"][0]["data_files"][0]["path"] == "mix-*.tar"
    assert "## Mixture" in card and "50% of answer tokens" in card
    rows = _table_rows(card, "source | reader")
    assert rows["alpha"][1] == "mixture of a" and rows["alpha"][3] == "cc-by-4.0"
    assert rows["alpha"][4] == "Alpha et al. 2024"
    doc = compare(m1, m2)
    ach = doc["mixture"]["alpha"]["achieved_share"]
    achieved = [audit(m)["mixture"]["alpha"]["achieved_share"] for m in (m1, m2)]
    assert [ach["a"], ach["b"]] == achieved and ach["b"] > ach["a"]  # tiny inputs: shares are coarse
    assert ach["delta"] == pytest.approx(achieved[1] - achieved[0])
    assert doc["mixture"]["alpha"]["target_share"] == {"a": pytest.approx(50.0), "b": pytest.approx(70.0)}
    assert "mixture: achieved shares" in render_compare_markdown(doc)


def test_every_build_writes_its_card_and_a_users_readme_is_never_taken_for_ours(tmp_path):
    import subprocess

    from tests.builds import CLI

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": f"r{i}", "turns": [{"user": "q?", "assistant": f"a {i}"}]}) + "\n" for i in range(3))
    )
    recipe = {"name": "carded", "sources": [{"name": "s", "reader": "jsonl", "record": "sft", "path": str(rows),
              "license": "mit"}], "output": {"kind": "sft"}}  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert subprocess.run([*CLI, "build", str(path), "--out", str(out), "-q"]).returncode == 0
    assert "license: mit" in (out / "README.md").read_text()
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    run = subprocess.run([*CLI, "build", str(path), "--out", str(mine), "-q"], capture_output=True, text=True)
    assert run.returncode == 2 and (mine / "README.md").read_text() == "my notes"
