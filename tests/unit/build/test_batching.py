"""RecordPipeline: samples wait at batched steps, go through in batches, and leave in their input order."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.build.accounting import Accounting
from curation.build.features import MinhashStager
from curation.build.messages import staged_stem
from curation.build.partition import Features, RecordPipeline
from curation.sample import Drop, Sample
from curation.steps.contract import BatchedStep, RecordStep, StepContext
from shards import ShardWriter
from shards.reader import iter_shard
from tests.helpers import sft_record

Calls = list[tuple[str, list[str]]]  # (step label, keys of the batch), in call order, shared by the steps


def mark(sample: Sample, label: str) -> Sample:
    """The sample with ``label`` appended to its record's trail (meta["trail"]): which steps it went through."""
    record = sample.record
    trail = record.meta.get("trail") or []
    assert isinstance(trail, list)
    meta = {**record.meta, "trail": [*trail, label]}
    return Sample(record.model_copy(update={"meta": meta}), sample.origin, sample.infos)


class Batched(BatchedStep):
    """No ``config``: instantiated here only, registered nowhere."""

    def __init__(self, label: str, work: Path, batch_size: int, calls: Calls, drop: Collection[str] = ()) -> None:
        super().__init__(cfg=None, context=StepContext(label, work))
        self.batch_size = batch_size
        self.calls = calls
        self.drop = set(drop)

    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        self.calls.append((self.context.label, [s.record.key for s in samples]))
        return ["too_vague" if s.record.key in self.drop else mark(s, self.context.label) for s in samples]

    def sizes(self) -> list[int]:
        return [len(keys) for label, keys in self.calls if label == self.context.label]


class Plain(RecordStep):
    def __init__(self, label: str, work: Path, drop: Collection[str] = ()) -> None:
        super().__init__(cfg=None, context=StepContext(label, work))
        self.drop = set(drop)

    def __call__(self, sample: Sample) -> Sample | str:
        return "too_short" if sample.record.key in self.drop else mark(sample, self.context.label)


@dataclass
class Run:
    pipeline: RecordPipeline
    acc: Accounting
    writer: ShardWriter
    drops: list[tuple[str, str | None, str, str]] = field(default_factory=list)  # (step, key, reason, origin)

    def feed(self, numbers: range) -> None:
        for i in numbers:
            self.pipeline.feed(Sample(sft_record(i, n_images=i % 2, source="src"), f"row:{i}"))

    def written(self) -> int:
        return self.acc.steps["write"].output["src"]

    def records(self) -> list[tuple[str, str, list[str]]]:
        """(key, origin, trail) of every written sample, in shard order."""
        self.writer.close()
        out = []
        for info in self.writer.shards:
            origins = pq.read_table(self.writer.directory / info.sidecar).column("origin").to_pylist()
            for record, origin in zip(iter_shard(self.writer.directory / info.name), origins, strict=True):
                trail = record.meta.get("trail") or []
                assert isinstance(trail, list)
                out.append((record.key, origin, [str(t) for t in trail]))
        return out


def run(tmp_path: Path, steps: list[RecordStep]) -> Run:
    labels = [s.context.label for s in steps]
    acc = Accounting(["probe", *labels, "write"])
    writer = ShardWriter(tmp_path / "staged", staged_stem, max_samples=4)
    result: Run

    def dropped(step: str, drop: Drop) -> None:
        acc.drop(step, drop.source, drop.reason, drop.count)
        result.drops.append((step, drop.key, drop.reason, drop.origin))

    features = Features([], MinhashStager([]))
    pipeline = RecordPipeline("src", list(zip(labels, steps, strict=True)), acc, writer, "sft", dropped, features)
    result = Run(pipeline, acc, writer)
    return result


def key(i: int) -> str:
    return f"sft_{i:04d}"


def chunks(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def test_samples_wait_at_a_batched_step_until_the_batch_is_full(tmp_path: Path):
    calls: Calls = []
    step = Batched("llm", tmp_path, 3, calls)
    r = run(tmp_path, [step])
    r.feed(range(2))
    assert calls == [] and r.written() == 0
    assert r.acc.steps["llm"].input["src"] == 0
    r.feed(range(2, 3))
    assert calls == [("llm", [key(0), key(1), key(2)])] and r.written() == 3
    r.feed(range(3, 7))
    assert step.sizes() == [3, 3] and r.written() == 6
    r.pipeline.finish()
    assert step.sizes() == [3, 3, 1] and r.written() == 7
    assert [k for k, _, _ in r.records()] == [key(i) for i in range(7)]
    assert r.acc.check() == []


def test_finish_flushes_partial_batches_in_step_order(tmp_path: Path):
    calls: Calls = []
    r = run(tmp_path, [Batched("first", tmp_path, 3, calls), Batched("second", tmp_path, 4, calls)])
    r.feed(range(7))
    assert calls == [
        ("first", [key(0), key(1), key(2)]),
        ("first", [key(3), key(4), key(5)]),
        ("second", [key(0), key(1), key(2), key(3)]),
    ]
    assert r.written() == 4  # 4 and 5 wait at "second", 6 at "first"
    r.pipeline.finish()
    assert calls[3:] == [("first", [key(6)]), ("second", [key(4), key(5), key(6)])]
    assert [k for k, _, _ in r.records()] == [key(i) for i in range(7)]
    assert r.acc.check() == []


LAYOUTS = {
    "batched": "B",
    "two batched in a row": "BB",
    "record, two batched, record": "RBBR",
    "batched, record, batched": "BRB",
}
OTHER_SIZE = {1: 3, 2: 7, 3: 2, 7: 1}


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_written_order_is_the_input_order_whatever_the_batch_sizes(tmp_path: Path, size: int, layout: str):
    calls: Calls = []
    sizes = iter([size, OTHER_SIZE[size]])
    steps: list[RecordStep] = [
        Batched(f"b{i}", tmp_path, next(sizes), calls) if kind == "B" else Plain(f"r{i}", tmp_path)
        for i, kind in enumerate(layout)
    ]
    r = run(tmp_path, steps)
    r.feed(range(10))
    r.pipeline.finish()
    labels = [s.context.label for s in steps]
    assert r.records() == [(key(i), f"row:{i}", labels) for i in range(10)]
    for step in steps:
        if isinstance(step, Batched):
            assert step.sizes() == chunks(10, step.batch_size)
            assert [k for label, keys in calls if label == step.context.label for k in keys] == [
                key(i) for i in range(10)
            ]
    assert r.acc.check() == []
    assert r.acc.summary()["sources"]["src"] == {"input": 10, "output": 10, "dropped": {}}


def test_drops_inside_a_batch_are_counted_and_the_rest_continue_in_order(tmp_path: Path):
    calls: Calls = []
    first = Batched("llm", tmp_path, 3, calls, drop={key(1), key(4), key(8)})
    second = Batched("judge", tmp_path, 2, calls, drop={key(9)})
    steps: list[RecordStep] = [first, Plain("length", tmp_path, drop={key(5)}), second]
    r = run(tmp_path, steps)
    r.feed(range(10))
    r.pipeline.finish()
    assert first.sizes() == [3, 3, 3, 1]
    assert second.sizes() == [2, 2, 2]  # 0 2 | 3 6 | 7 9: what the first two steps kept, in order
    kept = [0, 2, 3, 6, 7]
    assert r.records() == [(key(i), f"row:{i}", ["llm", "length", "judge"]) for i in kept]
    assert r.drops == [
        ("llm", key(1), "too_vague", "row:1"),
        ("llm", key(4), "too_vague", "row:4"),
        ("length", key(5), "too_short", "row:5"),
        ("llm", key(8), "too_vague", "row:8"),
        ("judge", key(9), "too_vague", "row:9"),
    ]
    assert r.acc.check() == []
    counts = {s["step"]: s["sources"]["src"] for s in r.acc.to_dict()["steps"]}
    assert counts["llm"] == {"input": 10, "output": 7, "dropped": {"too_vague": 3}}
    assert counts["length"] == {"input": 7, "output": 6, "dropped": {"too_short": 1}}
    assert counts["judge"] == {"input": 6, "output": 5, "dropped": {"too_vague": 1}}
    assert counts["write"] == {"input": 5, "output": 5, "dropped": {}}


def test_a_batch_that_drops_everything_writes_nothing_and_stays_exact(tmp_path: Path):
    calls: Calls = []
    step = Batched("llm", tmp_path, 4, calls, drop={key(i) for i in range(6)})
    r = run(tmp_path, [step, Plain("after", tmp_path)])
    r.feed(range(6))
    r.pipeline.finish()
    assert step.sizes() == [4, 2]
    assert r.records() == [] and r.writer.shards == []
    assert [d[1] for d in r.drops] == [key(i) for i in range(6)]
    assert r.acc.check() == []
    assert r.acc.steps["after"].input["src"] == 0
