"""The audit's turn-level what-if: builds that keep per-turn ratings (output.turn_ratings, judges) carry
per-turn columns in their sidecars, and the audit says how many turns, samples and answer tokens a turn-level
score_filter would keep at ratings 2-5 -- checked against the records, and against a real score_filter build."""

from __future__ import annotations

import pyarrow.parquet as pq

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.report.audit import audit
from curation.report.turn_ratings import THRESHOLDS
from shards import iter_dataset, read_manifest, verify_dataset
from shards.tokens import count_tokens
from tests.finevision_data import make_finevision

SUBSETS = {"sharegpt4v(coco)": 14, "text_openhermes_2_5": 6}
NAMES = {"sharegpt4v(coco)": "coco", "text_openhermes_2_5": "hermes"}


def _recipe(root, **output) -> dict:
    return {
        "kind": "build",
        "name": "fv",
        "sources": [
            {"name": n, "reader": "finevision", "path": str(root), "config": s, "partition_size": 5}
            for s, n in NAMES.items()
        ],
        "output": {"kind": "sft", "max_samples_per_shard": 4, **output},
    }


def test_turn_what_if_matches_the_records_and_a_real_filter(tmp_path):
    data = make_finevision(tmp_path / "fv", SUBSETS)
    out = build(
        validate_recipe(_recipe(data["root"], turn_ratings=["relevance"])), tmp_path / "out", progress=False
    ).out
    assert verify_dataset(out).ok
    sidecar = pq.read_table(out / read_manifest(out).shards[0].sidecar)
    assert {"turn_ratings", "turn_answer_tokens"} <= set(sidecar.schema.names)

    report = audit(out, scores=True)["turn_what_if"]
    assert list(report) == ["relevance"] and report["relevance"]["thresholds"] == list(THRESHOLDS)
    records = list(iter_dataset(out))
    for source in NAMES.values():
        mine = [r for r in records if r.source == source]
        for i, t in enumerate(THRESHOLDS):
            turns = samples = tokens = 0
            for r in mine:
                ratings = r.meta["ratings"].get("relevance") or [None] * len(r.turns)
                kept = [turn for turn, x in zip(r.turns, ratings, strict=True) if x is None or x >= t]
                turns += len(kept)
                samples += bool(kept)
                tokens += sum(count_tokens(turn.assistant) for turn in kept)
            got = report["relevance"]["sources"][source]["kept"][i]
            assert got == {"threshold": t, "turns": turns, "samples": samples, "answer_tokens": tokens}, (source, t)

    # the same numbers as a build that filters at 4
    filtered = _recipe(data["root"])
    filtered["steps"] = [{"step": "score_filter", "score": "relevance", "level": "turn", "min": 4}]
    done = build(validate_recipe(filtered), tmp_path / "f4", progress=False).out
    at4 = {s: w["kept"][THRESHOLDS.index(4)] for s, w in report["relevance"]["sources"].items()}
    real = audit(done)["sources"]
    for source, kept in at4.items():
        assert (kept["samples"], kept["turns"], kept["answer_tokens"]) == (
            real[source]["samples"],
            real[source]["qa_pairs"],
            real[source]["answer_tokens"],
        )


def test_builds_without_per_turn_ratings_keep_the_sidecar_as_it_was(tmp_path):
    data = make_finevision(tmp_path / "fv", SUBSETS)
    out = build(validate_recipe(_recipe(data["root"])), tmp_path / "out", progress=False).out
    assert "turn_ratings" not in pq.read_table(out / read_manifest(out).shards[0].sidecar).schema.names
    assert audit(out, scores=True)["turn_what_if"] == {}
