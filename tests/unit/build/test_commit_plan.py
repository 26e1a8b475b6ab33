"""The commit: staged partition shards -> the final ``<prefix>-NNNNNN`` series (renamed or rewritten) and rejects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.build.commit import commit_rejects, commit_shard, commit_shards, plan_commit, shards_by_partition
from curation.build.messages import PartitionStats, Staged, partition_dir, staged_stem
from curation.build.rejects import RejectsWriter
from curation.sample import Drop
from curation.sources import Partition
from curation.steps.contract import GlobalDrop, GlobalDrops, ShardRewrite, Where
from schemas import SftRecord, Turn
from shards import ShardWriter
from shards.atomic import sha256_file
from shards.codec import decode_sample, encode_record
from shards.manifest import ShardInfo
from shards.reader import iter_members
from shards.tokens import count_record, count_tokens
from tests.helpers import sft_record

# partition -> staged shards -> record numbers (keys sft_0000 .. sft_0008)
LAYOUT = {0: [[0, 1, 2], [3, 4]], 1: [[5, 6, 7], [8]]}


def key(i: int) -> str:
    return f"sft_{i:04d}"


def stage(work: Path, layout: dict[int, list[list[int]]], rejects: dict[int, list[str]] | None = None) -> Staged:
    """Stage partitions the way ``process_partition`` does: shards named by ``staged_stem``, then stats.json."""
    for gid, shards in layout.items():
        folder = partition_dir(work, gid)
        infos: list[ShardInfo] = []
        for number, numbers in enumerate(shards):
            with ShardWriter(folder, staged_stem, start_index=number, record_offsets=True) as writer:
                for i in numbers:
                    writer.write(sft_record(i, source="ab"[i % 2]), origin=f"in.jsonl:{i}")
            infos += writer.shards
        rw = RejectsWriter(folder / "rejects", "p")
        for k in (rejects or {}).get(gid, []):
            rw.add("filter", Drop("too_short", "a", f"in.jsonl:{k}", k, "short", sft_record(99, source="a")))
        stats = PartitionStats(
            gid=gid,
            partition=Partition("a", gid, 0),
            accounting={},
            shards=infos,
            rejects=rw.close(),
            reports={},
            seconds=0.0,
        )
        stats.write(folder)
    return Staged.read(work, sorted(layout))


def drops_of(*wheres_keys: tuple[Where, int]) -> GlobalDrops:
    drops: GlobalDrops = {}
    for where, i in wheres_keys:
        drops.setdefault(where, {})[key(i)] = GlobalDrop("ab"[i % 2], "unique_key", "duplicate_key", f"dup of {i}")
    return drops


def keys_in(tar: Path) -> list[str]:
    return [k for k, _ in iter_members(tar)]


@dataclass(frozen=True)
class ShoutAndAsk(ShardRewrite):
    """Upper-cases the conversation of chosen keys and appends a turn (a conversation that grows)."""

    keys: dict[Where, frozenset[str]] = field(default_factory=dict)

    def shards(self) -> set[Where]:
        return set(self.keys)

    def changes(self, where: Where) -> set[str]:
        return set(self.keys.get(where, frozenset()))

    def only(self, where: Where) -> ShoutAndAsk:
        return ShoutAndAsk({where: self.keys[where]} if where in self.keys else {})

    def apply(self, where: Where, key: str, members: dict[str, bytes]) -> dict[str, bytes] | None:
        if key not in self.keys.get(where, frozenset()):
            return None
        record = decode_sample(key, members)
        assert isinstance(record, SftRecord)
        turns = [Turn(user=t.user.upper(), assistant=t.assistant.upper()) for t in record.turns]
        turns.append(Turn(user="AND THE SKY?", assistant="BLUE AND VERY VERY WIDE TODAY"))
        return encode_record(record.model_copy(update={"turns": turns}))


@pytest.fixture
def staged(tmp_path: Path) -> Staged:
    return stage(tmp_path / "_work", LAYOUT)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def test_unchanged_shards_are_renamed_densely_in_dataset_order(staged: Staged, out: Path):
    before = {s.where: (s.tar, s.tar.read_bytes()) for s in staged.shards()}
    plan = plan_commit(staged.shards(), "ds", {})
    assert [(p.staged.where, p.stem, p.unchanged) for p in plan] == [
        ((0, 0), "ds-000000", True),
        ((0, 1), "ds-000001", True),
        ((1, 0), "ds-000002", True),
        ((1, 1), "ds-000003", True),
    ]
    final = commit_shards(plan, out)
    assert [f.name for f in final] == [f"ds-{i:06d}.tar" for i in range(4)]
    for item, info in zip(plan, final, strict=True):
        tar, data = before[item.staged.where]
        assert not tar.exists()
        assert (out / info.name).read_bytes() == data
        assert info.sha256 == item.staged.info.sha256 == sha256_file(out / info.name)
        assert info.samples == item.staged.info.samples and info.bytes == len(data)
        assert set(pq.read_table(out / info.sidecar).column("shard").to_pylist()) == {info.name}
    assert [k for f in final for k in keys_in(out / f.name)] == [key(i) for i in range(9)]


def test_a_shard_that_loses_every_sample_gets_no_final_shard(staged: Staged, out: Path):
    drops = drops_of(((0, 1), 3), ((0, 1), 4))
    plan = plan_commit(staged.shards(), "ds", drops)
    assert [(p.staged.where, p.stem) for p in plan] == [
        ((0, 0), "ds-000000"),
        ((1, 0), "ds-000001"),
        ((1, 1), "ds-000002"),
    ]
    final = commit_shards(plan, out)
    assert sorted(p.name for p in out.glob("*.tar")) == [f.name for f in final]
    assert [k for f in final for k in keys_in(out / f.name)] == [key(i) for i in (0, 1, 2, 5, 6, 7, 8)]
    assert shards_by_partition(plan, final) == {0: [final[0]], 1: final[1:]}


def test_shards_by_partition_leaves_out_a_partition_whose_samples_all_left(tmp_path: Path, out: Path):
    staged = stage(tmp_path / "_work", {0: [[0, 1]], 1: [[2], [3]], 2: [[4, 5]]})
    plan = plan_commit(staged.shards(), "ds", drops_of(((1, 0), 2), ((1, 1), 3)))
    final = commit_shards(plan, out)
    assert [f.name for f in final] == ["ds-000000.tar", "ds-000001.tar"]
    assert shards_by_partition(plan, final) == {0: [final[0]], 2: [final[1]]}


def test_a_shard_with_drops_is_rewritten_without_them(staged: Staged, out: Path):
    original = pq.read_table(staged.shards()[0].sidecar).to_pylist()
    plan = plan_commit(staged.shards(), "ds", drops_of(((0, 0), 1)))
    assert [p.unchanged for p in plan] == [False, True, True, True]
    info = commit_shards(plan, out)[0]
    tar = out / info.name
    assert keys_in(tar) == [key(0), key(2)]
    rows = pq.read_table(out / info.sidecar).to_pylist()
    assert [r["key"] for r in rows] == [key(0), key(2)] and [r["index"] for r in rows] == [0, 1]
    skip = {"index", "shard"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in rows] == [
        {k: v for k, v in r.items() if k not in skip} for r in (original[0], original[2])
    ]
    stats = json.loads((out / info.stats).read_text())
    assert stats["sha256"] == info.sha256 == sha256_file(tar)
    assert stats["bytes"] == info.bytes == tar.stat().st_size
    assert stats["samples"] == info.samples == 2
    assert stats["sidecar_sha256"] == sha256_file(out / info.sidecar)


def test_a_rewrite_changes_only_its_shard_and_the_sidecar_is_counted_again(staged: Staged, out: Path):
    target = key(6)
    rewrite = ShoutAndAsk({(1, 0): frozenset({target}), (9, 9): frozenset({key(0)})})
    before = {s.where: s.tar.read_bytes() for s in staged.shards()}
    old_rows = pq.read_table(staged.shards()[2].sidecar).to_pylist()
    plan = plan_commit(staged.shards(), "ds", {}, [rewrite])
    assert [len(p.rewrites) for p in plan] == [0, 0, 1, 0]
    assert plan[2].rewrites[0].shards() == {(1, 0)}  # only its part travels with the shard
    final = commit_shards(plan, out)
    for item, info in zip(plan, final, strict=True):
        if item.staged.where != (1, 0):
            assert (out / info.name).read_bytes() == before[item.staged.where]
    info = final[2]
    members = dict(iter_members(out / info.name))
    assert list(members) == [key(5), target, key(7)]
    grown = decode_sample(target, members[target])
    assert isinstance(grown, SftRecord)
    assert grown.turns[-1].assistant == "BLUE AND VERY VERY WIDE TODAY"
    shouted = [Turn(user=t.user.upper(), assistant=t.assistant.upper()) for t in sft_record(6).turns]
    assert grown.turns[:-1] == shouted
    assert decode_sample(key(5), members[key(5)]) == sft_record(5, source="b")
    rows = {r["key"]: r for r in pq.read_table(out / info.sidecar).to_pylist()}
    text_tokens, answer_tokens = count_record(count_tokens, grown)
    assert rows[target]["turns"] == len(sft_record(6).turns) + 1
    assert (rows[target]["text_tokens"], rows[target]["answer_tokens"]) == (text_tokens, answer_tokens)
    assert rows[target]["bytes"] == sum(len(b) for b in members[target].values())
    assert rows[target]["text_tokens"] > old_rows[1]["text_tokens"]
    for old in (old_rows[0], old_rows[2]):  # the other samples keep their counts
        assert {c: rows[old["key"]][c] for c in ("turns", "text_tokens", "bytes")} == {
            c: old[c] for c in ("turns", "text_tokens", "bytes")
        }
    stats = json.loads((out / info.stats).read_text())
    assert stats["text_tokens"] == sum(r["text_tokens"] for r in rows.values())
    assert stats["sha256"] == sha256_file(out / info.name)


def test_commit_shard_is_idempotent(staged: Staged, out: Path):
    plan = plan_commit(staged.shards(), "ds", drops_of(((1, 0), 5)), [ShoutAndAsk({(0, 1): frozenset({key(3)})})])
    first = [commit_shard(out, item) for item in plan]
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert not plan[0].staged.tar.exists()  # renamed: a second call cannot read it again
    assert [commit_shard(out, item) for item in plan] == first
    assert commit_shards(plan, out) == first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_commit_rejects_numbers_partition_rejects_then_global_ones(tmp_path: Path, out: Path):
    staged = stage(tmp_path / "_work", LAYOUT, rejects={0: ["short_a", "short_b"], 1: ["short_c"]})
    drops = drops_of(((0, 1), 4), ((1, 0), 6), ((0, 0), 0))
    final = commit_shards(plan_commit(staged.shards(), "ds", drops), out)
    assert [f.samples for f in final] == [2, 1, 2, 1]
    infos = commit_rejects(staged, out, "ds", drops)
    assert [i.name for i in infos] == [f"rejects/ds-rejects-{n:06d}.tar" for n in range(3)]
    assert [i.samples for i in infos] == [2, 1, 3]
    rows = [pq.read_table(out / i.sidecar).to_pylist() for i in infos]
    assert [[(r["sample_key"], r["step"], r["reason"]) for r in shard] for shard in rows] == [
        [("short_a", "filter", "too_short"), ("short_b", "filter", "too_short")],
        [("short_c", "filter", "too_short")],
        [(key(i), "unique_key", "duplicate_key") for i in (0, 4, 6)],  # in dataset order
    ]
    assert [(r["origin"], r["source"], r["detail"]) for r in rows[2]] == [
        (f"in.jsonl:{i}", "ab"[i % 2], f"dup of {i}") for i in (0, 4, 6)
    ]
    for info in infos:
        assert sha256_file(out / info.name) == info.sha256
    samples = list(iter_members(out / infos[2].name))
    assert [k.split("_", 1)[1] for k, _ in samples] == [key(i) for i in (0, 4, 6)]
    assert decode_sample(key(4), samples[1][1]) == sft_record(4, source="a")
    assert json.loads(samples[1][1]["reject.json"])["reason"] == "duplicate_key"
    again = commit_rejects(staged, out, "ds", drops)  # a rerun of the commit
    assert again == infos
    assert sorted(p.name for p in (out / "rejects").iterdir() if p.suffix == ".tar") == [
        f"ds-rejects-{n:06d}.tar" for n in range(3)
    ]
