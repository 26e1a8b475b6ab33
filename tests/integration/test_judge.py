"""Judged builds of the demo's own conversations end to end: the ``judge`` step through ``build()`` and the CLI
against a loopback OpenAI-compatible server (real HTTP; scripted ratings, some malformed, some slow, some HTTP
500s), a resumed build that asks the server nothing twice, and a tiny VLM through the transformers engine."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from curation.build.runner import build
from curation.recipe import validate_recipe
from schemas import SftRecord
from shards import read_manifest, verify_dataset
from shards.reader import iter_dataset
from tests.builds import CLI, make_inputs
from tests.openai_server import ScriptedOpenAIServer, error_body, message_text

CRITERIA = ("relevance", "formatting", "visual_dependency", "image_correspondence")
IMAGE_CRITERIA = ("visual_dependency", "image_correspondence")  # the others are asked without the images
OPENINGS = {
    "Rate how relevant": "relevance",
    "Rate the formatting": "formatting",
    "Rate how much the question": "visual_dependency",
    "Rate how well the question": "image_correspondence",
}
TOTAL = "How many shapes are there in total?"  # the question of the demo's two-image conversations


def rating(criterion: str, question: str, answer: str, images: int) -> int:
    """The scripted judge's rating of an exchange (what the test expects back in meta)."""
    digest = hashlib.sha256(f"{criterion}|{question}|{answer}|{images}".encode()).digest()
    return 1 + digest[0] % 5


def expected(criterion: str, question: str, answer: str, images: int) -> int | str | None:
    """What the build should record: a rating, None (no reply with a rating, or no images), or 'failed'."""
    if criterion in IMAGE_CRITERIA and not images:
        return None
    if criterion == "image_correspondence" and question == TOTAL:
        return "failed"
    if criterion == "formatting" and answer == "Green.":
        return None  # the reply holds no rating
    if criterion == "relevance" and answer.startswith("Red"):
        return None  # out of range
    return rating(criterion, question, answer, images if criterion in IMAGE_CRITERIA else 0)


class Judge:
    """The scripted server's side: answers from the prompt; counts what it serves per distinct request."""

    def __init__(self) -> None:
        self.served: Counter[str] = Counter()  # successful answers per distinct request
        self.transient: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> Any:
        text = message_text(body["messages"][-1])
        criterion = next(name for opening, name in OPENINGS.items() if text.startswith(opening))
        question, answer = re.findall(r"<<<\n(.*?)\n>>>", text, re.DOTALL)
        images = (
            sum(1 for part in body["messages"][-1]["content"] if part["type"] == "image_url")
            if isinstance(body["messages"][-1]["content"], list)
            else 0
        )
        key = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
        outcome = expected(criterion, question, answer, images)
        if outcome == "failed":
            return 500, error_body(500, "judge overloaded")
        with self.lock:
            if criterion == "visual_dependency" and question == "Describe the image." and key not in self.transient:
                self.transient.add(key)  # the first attempt fails, the retry succeeds
                return 503, error_body(503, "warming up")
            self.served[key] += 1
        if criterion == "formatting" and answer == "Green.":
            return "The answer is short and clean."
        if criterion == "relevance" and answer.startswith("Red"):
            return "Judged.\nRating: 7"
        reply = f"It is what it is.\nRating: {rating(criterion, question, answer, images)}"
        return ("sleep", 0.03, reply) if criterion == "visual_dependency" and images == 1 else reply


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("judge-demo")
    make_inputs(root, n_captions=4, n_conversations=30)
    return root


def recipe(inputs: Path, engine: dict, cache: Path, **judge: Any) -> dict:
    """A judged build of the demo's conversations (docs/judges.md shows the same recipe)."""
    return {
        "kind": "build",
        "name": "demo_judged",
        "sources": [
            {
                "name": "conversations",
                "reader": "parquet",
                "path": str(inputs / "conversations.parquet"),
                "record": "sft",
                "fields": {"images": "images", "turns": "texts"},
                "partition_size": 10,
            }
        ],
        "steps": [
            {
                "step": "judge",
                "engine": engine,
                "criteria": list(CRITERIA),
                "batch_size": 4,
                "cache_dir": str(cache),
                **judge,
            },
        ],
        "output": {"kind": "sft", "max_samples_per_shard": 100},
    }


def openai(server: ScriptedOpenAIServer) -> dict:
    return {"type": "openai", "base_url": server.base_url, "model": "judge", "concurrency": 8, "max_retries": 2}


def rows(inputs: Path) -> list[dict]:
    return pq.read_table(inputs / "conversations.parquet").to_pylist()


def check_outputs(out: Path, inputs: Path) -> None:
    """Every conversation ends as the script says: dropped when a request failed, else rated exactly."""
    planned = rows(inputs)
    failing = [r for r in planned if any(t["user"] == TOTAL for t in r["texts"])]
    m = read_manifest(out)
    counts = m.accounting["sources"]["conversations"]
    assert counts["input"] == len(planned) == counts["output"] + sum(counts["dropped"].values())
    assert counts["dropped"] == {"judge_failed:http_500": len(failing)} and failing
    records = list(iter_dataset(out))
    assert len(records) == counts["output"]
    for record in records:
        assert isinstance(record, SftRecord)
        for criterion in CRITERIA:
            want = [expected(criterion, t.user, t.assistant, len(record.images)) for t in record.turns]
            assert record.meta["ratings"][criterion] == want, (record.key, criterion)
            numbers = [v for v in want if isinstance(v, int)]
            assert record.meta[f"{criterion}_min"] == (min(numbers) if numbers else None)
            assert record.meta[f"{criterion}_mean"] == (round(sum(numbers) / len(numbers), 4) if numbers else None)
    unparsed = Counter()  # requests whose reply holds no rating, in every sample (dropped ones too)
    for row in planned:
        for criterion in CRITERIA:
            if row["images"] or criterion not in IMAGE_CRITERIA:
                outcomes = [expected(criterion, t["user"], t["assistant"], len(row["images"])) for t in row["texts"]]
                unparsed[criterion] += outcomes.count(None)
    report = m.reports["judge"]
    assert report["judge_unparsed"] == sum(unparsed.values()) > 0
    assert report["unparsed"] == {"no_rating": unparsed["formatting"], "out_of_range": unparsed["relevance"]}
    assert report["failures"] == {"http_500": len(failing)}
    sidecar_scores: dict[str, dict[str, float]] = {}
    for shard in m.shards:
        for row in pq.read_table(out / shard.sidecar, columns=["key", "scores"]).to_pylist():
            sidecar_scores[row["key"]] = dict(row["scores"])
    for record in records:
        want = {f"{c}_{s}": record.meta[f"{c}_{s}"] for c in CRITERIA for s in ("min", "mean")}
        assert sidecar_scores[record.key] == {k: float(v) for k, v in want.items() if v is not None}
    assert verify_dataset(out).ok


def test_judged_build_of_the_demo_conversations(inputs, tmp_path):
    script = Judge()
    with ScriptedOpenAIServer(script, retry_after_ms=5) as server:
        result = build(validate_recipe(recipe(inputs, openai(server), tmp_path / "cache")), tmp_path / "out",
                       workers=2, progress=False)  # fmt: skip
        bodies = [r.body for r in server.chat_requests]
        images = [image for r in server.chat_requests for image in r.images]
    check_outputs(result.out, inputs)
    assert set(script.served.values()) == {1}  # identical requests (the text-only samples') asked once
    assert images and {mime for mime, _, _ in images} == {"image/png"}  # the demo's PNGs, as they are
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 256 for b in bodies)
    log = json.loads(result.log.read_text())["steps"]["judge"]
    assert log["generated_requests"] == len(script.served) and log["cached_requests"] > 0
    assert "samples judged" in log["throughput"]["summary"]


def test_a_resumed_build_asks_nothing_twice(inputs, tmp_path):
    """Killed after the first batch of judgements: the rerun asks only for the rest; a rebuild from scratch
    (--overwrite) asks again only for what failed (failures are not cached)."""
    script = Judge()
    with ScriptedOpenAIServer(script, retry_after_ms=5) as server:
        path = tmp_path / "judged.yaml"
        path.write_text(yaml.safe_dump(recipe(inputs, openai(server), tmp_path / "cache")))
        out = tmp_path / "out"
        env = {**os.environ, "VLM_CURATION_CRASH_AT": "generation_batch:1"}
        crashed = subprocess.run([*CLI, "build", str(path), "--out", str(out), "-q"], env=env, capture_output=True)
        assert crashed.returncode != 0 and not (out / "dataset.json").exists()
        first = sum(script.served.values())
        assert first > 0
        done = subprocess.run([*CLI, "build", str(path), "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "samples judged" in done.stderr and "from the cache" in done.stderr
        assert set(script.served.values()) == {1}  # nothing judged twice across the crash
        before = len(server.chat_requests)
        again = subprocess.run([*CLI, "build", str(path), "--out", str(out), "--overwrite", "-q"], capture_output=True)
        assert again.returncode == 0
        asked_again = server.chat_requests[before:]
        assert asked_again and all(TOTAL in message_text(r.body["messages"][-1]) for r in asked_again)
        assert set(script.served.values()) == {1}
    check_outputs(out, inputs)


def test_a_tiny_vlm_judges_through_the_transformers_engine(inputs, tmp_path):
    """A random VLM writes noise: assert the plumbing (images through the processor, every reply an unparsed
    outcome, never a rating) and that a rebuild is served from the cache."""
    from curation.selection.tiny_models import build_tiny

    model = build_tiny("qwen2_vl", tmp_path / "vlm")
    engine = {"type": "transformers", "model": str(model), "device": "cpu", "batch_size": 8}
    criteria = [  # short prompts: the tiny model holds 512 positions (the presets fail as context_too_long)
        {"name": "relevance", "prompt": "Q: {question}\nA: {answer}\nRelevant ({min}-{max})?"},
        {"name": "match", "prompt": "Q: {question}\nA: {answer}\nDoes it match the image?", "images": True},
    ]
    data = recipe(inputs, engine, tmp_path / "cache", criteria=criteria, system="Judge.", sampling={"max_tokens": 6})
    data["sources"][0]["partition_size"] = 6
    data["sources"][0]["limit"] = 6
    result = build(validate_recipe(data), tmp_path / "out", progress=False)
    report = result.manifest.reports["judge"]
    records = list(iter_dataset(result.out))
    turns = sum(len(r.turns) for r in records)
    with_images = sum(len(r.turns) for r in records if r.images)
    assert len(records) == 6 and report["failures"] == {}
    assert report["requests"] == turns + with_images == report["judge_unparsed"] and report["rated"] == 0
    assert all(set(r.meta["ratings"]["relevance"]) == {None} for r in records)
    assert all(r.meta["relevance_min"] is None for r in records)
    log = json.loads(result.log.read_text())["steps"]["judge"]
    assert log["generated_requests"] > 0 and log["throughput"]["generated_tokens_per_s"] > 0
    again = build(validate_recipe(data), tmp_path / "out2", progress=False)
    log2 = json.loads(again.log.read_text())["steps"]["judge"]
    assert log2["generated_requests"] == 0 and log2["cached_requests"] == report["requests"]
