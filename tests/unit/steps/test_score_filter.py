"""score_filter: sample-level bounds on a meta score, turn-level bounds on per-turn ratings, with the removed turns and
answer tokens counted exactly (by hand below, and through a real build whose reports are summed over partitions)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.errors import RecipeError
from curation.recipe import ScoreFilterStep, validate_recipe
from curation.sample import Sample
from curation.steps.contract import StepContext, step_class
from curation.steps.score_filter import ScoreFilter
from schemas import SftRecord, Turn
from shards import iter_dataset, read_manifest
from shards.tokens import count_tokens
from tests.finevision_data import make_finevision, turn_filter_outcome


def step(tokenizer: tuple[str, str | None] = ("regex", None), **cfg: Any) -> ScoreFilter:
    config = ScoreFilterStep(step="score_filter", **cfg)
    assert step_class(config) is ScoreFilter
    return ScoreFilter(config, StepContext("score_filter", Path("."), tokenizer))


def sample(answers: list[str], meta: dict[str, Any]) -> Sample:
    turns = [Turn(user=f"question {i}?", assistant=a) for i, a in enumerate(answers)]
    return Sample(SftRecord(key="k", source="s", meta=meta, turns=turns), "origin")


# ---- sample level ----------------------------------------------------------------------------------------------------
def test_sample_level_bounds_are_inclusive():
    f = step(score="relevance_min", min=3, max=4)
    verdicts = [f(sample(["a"], {"relevance_min": v})) for v in (1, 2.99, 3, 4, 4.01, 5)]
    assert [v if isinstance(v, str) else "kept" for v in verdicts] == [
        "score_below_min", "score_below_min", "kept", "kept", "score_above_max", "score_above_max",
    ]  # fmt: skip
    assert f.report() == {"missing_kept": 0}


def test_sample_level_missing_and_invalid_scores():
    keep, drop = step(score="clip_score", min=0.3), step(score="clip_score", min=0.3, missing="drop")
    for meta in ({}, {"clip_score": None}, {"other": 1.0}):
        assert isinstance(keep(sample(["a"], dict(meta))), Sample)
        assert drop(sample(["a"], dict(meta))) == "score_missing"
    assert keep.report() == {"missing_kept": 3} and drop.report() == {"missing_kept": 0}
    for bad in ("0.9", True, [0.9], {"v": 1}):
        assert keep(sample(["a"], {"clip_score": bad})) == "score_invalid"
    s = sample(["a"], {})
    s.record.meta["clip_score"] = math.nan
    assert keep(s) == "score_invalid"


# ---- turn level ------------------------------------------------------------------------------------------------------
ANSWERS = ["Yes.", "The red car, parked.", "Two cats", "It is 42!"]  # regex tokens: 2, 6, 2, 4


def rated() -> Sample:
    return sample(
        ANSWERS,
        {
            "ratings": {"relevance": [5, 2, 4, 1], "formatting": [3, 3, 5, 2]},
            "relevance_min": 1,
            "formatting_min": 2,
            "relevance_mean": 3.0,
            "turn_sources": ["a", "b", "c", "d"],
            "config": "x",
        },
    )


def test_turn_level_removes_turns_and_updates_the_ratings():
    f = step(score="relevance", min=3, level="turn")
    out = f(rated())
    assert isinstance(out, Sample)
    assert [t.assistant for t in out.record.turns] == ["Yes.", "Two cats"]
    assert out.record.meta == {
        "ratings": {"relevance": [5, 4], "formatting": [3, 5]},
        "relevance_min": 4,
        "formatting_min": 3,
        "relevance_mean": 4.5,
        "turn_sources": ["a", "c"],
        "config": "x",
    }
    # a sample that loses every turn is dropped; its turns count as removed
    assert f(sample(["A b c", "D."], {"ratings": {"relevance": [1, 2]}})) == "no_turns_left"
    # all in bounds: unchanged; no ratings of the axis: kept (missing: keep)
    same = sample(["x"], {"ratings": {"relevance": [3]}, "relevance_min": 3})
    assert f(same) is same and same.record.meta == {"ratings": {"relevance": [3]}, "relevance_min": 3}
    assert isinstance(f(sample(["x"], {"ratings": {"formatting": [1]}})), Sample)
    assert isinstance(f(sample(["x"], {})), Sample)
    # by hand: turns 1 and 3 (6 + 4 tokens), then both turns of the emptied sample (3 + 2 tokens)
    assert f.report() == {"missing_kept": 2, "unrated_turns_kept": 0, "samples_changed": 1, "turns_removed": 4,
                          "answer_tokens_removed": 15}  # fmt: skip
    assert ScoreFilter.throughput(f.report(), 1.0) == {
        "summary": "4 turns (15 answer tokens) removed, 1 samples shortened; 2 samples without the score kept"
    }


def test_turn_level_max_missing_drop_and_invalid_ratings():
    f = step(score="formatting", max=3, level="turn", missing="drop")
    out = f(rated())
    assert isinstance(out, Sample)
    assert [t.assistant for t in out.record.turns] == ["Yes.", "The red car, parked.", "It is 42!"]
    assert out.record.meta["formatting_min"] == 2 and out.record.meta["relevance_min"] == 1
    assert f(sample(["x"], {"ratings": {"relevance": [1]}})) == "score_missing"
    assert f(sample(["x", "y"], {"ratings": {"formatting": [1]}})) == "score_invalid"  # not one per turn
    assert f(sample(["x", "y"], {"ratings": {"formatting": [1, "2"]}})) == "score_invalid"
    assert f(sample(["x", "y"], {"ratings": {"formatting": [1, 2], "relevance": [5]}})) == "score_invalid"
    assert f(sample(["x"], {"ratings": [1]})) == "score_missing"
    assert f.report()["turns_removed"] == 1 and f.report()["answer_tokens_removed"] == 2


def test_unrated_turns_follow_missing():
    """A null rating (a judge's unparsed reply) is an unrated turn: kept or removed as ``missing`` says; the minimum
    and mean are over the rated turns, null when none is left (as the judge step writes them)."""
    meta = {"ratings": {"relevance": [None, 2, 4], "formatting": [5, None, 1]}, "relevance_min": 2,
            "relevance_mean": 3.0, "formatting_min": 1}  # fmt: skip
    keep = step(score="relevance", min=3, level="turn")
    out = keep(sample(["a", "b c", "d"], json.loads(json.dumps(meta))))
    assert isinstance(out, Sample) and [t.assistant for t in out.record.turns] == ["a", "d"]
    assert out.record.meta == {"ratings": {"relevance": [None, 4], "formatting": [5, 1]}, "relevance_min": 4,
                               "relevance_mean": 4.0, "formatting_min": 1}  # fmt: skip
    assert keep.report()["unrated_turns_kept"] == 1 and keep.report()["turns_removed"] == 1
    drop = step(score="formatting", min=2, level="turn", missing="drop")
    out = drop(sample(["a", "b c", "d"], json.loads(json.dumps(meta))))
    assert isinstance(out, Sample) and [t.assistant for t in out.record.turns] == ["a"]
    assert out.record.meta["ratings"] == {"relevance": [None], "formatting": [5]}
    assert out.record.meta["relevance_min"] is None and out.record.meta["relevance_mean"] is None
    assert drop.report()["turns_removed"] == 2 and drop.report()["answer_tokens_removed"] == 3
    assert drop(sample(["a"], {"ratings": {"formatting": [None]}})) == "no_turns_left"


def test_answer_tokens_are_counted_with_the_recipe_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # nearly one token per byte: unlike the regex count
    tok.train_from_iterator(["zz qq"] * 5, trainers.BpeTrainer(vocab_size=260, initial_alphabet=alphabet))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    f = step(("tokenizer_json", str(path)), score="relevance", min=3, level="turn")
    f(rated())
    removed = [ANSWERS[1], ANSWERS[3]]
    assert f.report()["answer_tokens_removed"] == sum(len(tok.encode(a, add_special_tokens=False)) for a in removed)
    assert f.report()["answer_tokens_removed"] != 10  # not the regex count


def test_recipe_checks():
    base = {
        "name": "r",
        "sources": [{"name": "s", "reader": "jsonl", "path": "/x.jsonl"}],
        "output": {"kind": "pair"},
    }
    for cfg, message in (
        ({"score": "a"}, "give min, max or both"),
        ({"score": "a", "min": 4, "max": 3}, r"min \(4\) is greater than max \(3\)"),
        ({"score": "a b", "min": 1}, "score"),
        ({"score": "a", "min": 1, "level": "turns"}, "level"),
    ):
        with pytest.raises(RecipeError, match=message):
            validate_recipe({**base, "steps": [{"step": "score_filter", **cfg}]})
    turn = ScoreFilterStep(step="score_filter", score="relevance", min=3, level="turn")
    assert ScoreFilter.kind_error(turn, "pair") == "needs sft records at level turn"
    assert ScoreFilter.kind_error(turn, "sft") is None
    assert ScoreFilter.kind_error(ScoreFilterStep(step="score_filter", score="a", min=1), "pair") is None


# ---- through a build -------------------------------------------------------------------------------------------------
def test_a_build_sums_the_reports_and_the_sidecars_stay_exact(tmp_path):
    subsets = {"CoSyn_400k_chart": 19, "text_openhermes_2_5": 9}
    data = make_finevision(tmp_path / "fv", subsets, files_per_subset=2, row_group_size=2)
    recipe = {
        "kind": "build",
        "name": "judged",
        "sources": [
            {"name": n, "reader": "finevision", "path": str(data["root"]), "config": n, "partition_size": 2}
            for n in subsets
        ],
        "steps": [
            {"name": "relevance", "step": "score_filter", "score": "relevance", "min": 3, "level": "turn"},
            {"name": "formatting", "step": "score_filter", "score": "formatting", "min": 3, "level": "turn"},
            {"name": "visual", "step": "score_filter", "score": "visual_dependency_min", "min": 2},
        ],
        "output": {"kind": "sft", "max_samples_per_shard": 4, "sidecar_scores": ["relevance_min", "formatting_min"]},
    }
    # By hand: the two turn filters, then the sample-level bound on what they left.
    want: dict[str, dict[str, int]] = {}
    dropped: dict[str, dict[str, dict[str, int]]] = {}
    kept: dict[str, list[tuple[list[dict], dict[str, list[int]]]]] = {}
    no_visual = 0
    for subset in subsets:
        hand = turn_filter_outcome(data, subset, {"relevance": 3, "formatting": 3})
        for axis, report in hand["reports"].items():
            want[axis] = {k: want.get(axis, {}).get(k, 0) + v for k, v in report.items()}
        for axis in hand["dropped"].values():
            counts = dropped.setdefault(axis, {}).setdefault(subset, {})
            counts["no_turns_left"] = counts.get("no_turns_left", 0) + 1
        for turns, ratings in hand["kept"].values():
            if "visual_dependency" not in ratings:
                no_visual += 1  # text-only rows: no visual_dependency_min, kept (missing: keep)
            elif min(ratings["visual_dependency"]) < 2:
                counts = dropped.setdefault("visual", {}).setdefault(subset, {})
                counts["score_below_min"] = counts.get("score_below_min", 0) + 1
                continue
            kept.setdefault(subset, []).append((turns, ratings))
    assert all(want[a]["turns_removed"] and want[a]["samples_changed"] for a in want)  # the data exercises it
    assert dropped["visual"] and no_visual

    result = build(validate_recipe(recipe), tmp_path / "out", workers=2, progress=False)
    m = read_manifest(result.out)
    assert m.reports["relevance"] == want["relevance"] and m.reports["formatting"] == want["formatting"]
    assert m.reports["visual"] == {"missing_kept": no_visual}
    steps = {s["step"]: s["sources"] for s in m.accounting["steps"]}
    for label, by_source in dropped.items():
        for subset, reasons in by_source.items():
            assert steps[label][subset]["dropped"] == reasons, (label, subset)
    records = list(iter_dataset(result.out))
    for subset in subsets:
        got = [r for r in records if r.source == subset]
        assert [[t.model_dump() for t in r.turns] for r in got] == [t for t, _ in kept[subset]]
        assert [r.meta["ratings"] for r in got] == [r for _, r in kept[subset]]
        assert all(r.meta[f"{a}_min"] == min(r.meta["ratings"][a]) for r in got for a in r.meta["ratings"])
    # the writer recounted the kept turns and answer tokens
    answers = [t["assistant"] for s in kept.values() for turns, _ in s for t in turns]
    assert m.totals["answer_tokens"] == sum(count_tokens(a) for a in answers)
    sidecars = [pq.read_table(p).to_pylist() for p in sorted(result.out.glob("*.parquet"))]
    rows = [row for table in sidecars for row in table]
    assert sum(row["turns"] for row in rows) == len(answers)
    scores = {row["key"]: dict(row["scores"]) for row in rows}
    assert all(scores[r.key] == {"relevance_min": r.meta["relevance_min"], "formatting_min": r.meta["formatting_min"]}
               for r in records)  # fmt: skip


def test_a_minimum_without_per_turn_ratings_is_unknown_once_turns_go():
    meta = {"ratings": {"relevance": [5, 1]}, "relevance_min": 1, "formatting_min": 1, "turn_sources": ["a", "b"]}
    out = step(score="relevance", min=3, level="turn")(sample(["x", "y"], meta))
    assert isinstance(out, Sample)
    assert out.record.meta["relevance_min"] == 5 and out.record.meta["formatting_min"] is None
    assert out.record.meta["turn_sources"] == ["a"]
    short = {"ratings": {"relevance": [5, 1]}, "turn_sources": ["a"]}  # would stop matching the turns
    assert step(score="relevance", min=3, level="turn")(sample(["x", "y"], short)) == "score_invalid"
