"""The commit's rewrite copies kept samples as byte ranges of the staged tar (``sample_offsets``): the output is
byte for byte what writing the kept samples afresh gives, and offsets that do not match the tar are refused."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from curation.build.commit import ShardCommit, commit_rejects, commit_shard, plan_commit
from curation.build.messages import PartitionStats, Staged, StagedShard, partition_dir, staged_stem
from curation.sources import Partition
from curation.steps.contract import GlobalDrop, ShardRewrite, Where
from schemas import PairRecord, Record
from shards import ShardWriter
from shards.codec import decode_sample, encode_record
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.writer import SAMPLE_OFFSETS
from tests.helpers import interleaved_record, pair_record, pdf_record, sft_record

LONG = 3  # the sample whose key needs a PAX long-name header
N = 12


def records() -> list[Record]:
    """Samples of 2 to 3 members each, of every kind, one with a 150-character key."""
    makers = [pair_record, lambda i: sft_record(i, n_images=1 + i % 3), interleaved_record, pdf_record]
    out = [makers[i % len(makers)](i) for i in range(N)]
    out[LONG] = pair_record(LONG).model_copy(update={"key": "k" * 150})
    return out


@dataclass(frozen=True)
class Recaption(ShardRewrite):
    """Gives chosen pair samples a new caption."""

    keys: frozenset[str]

    def shards(self) -> set[Where]:
        return {(0, 0)}

    def changes(self, where: Where) -> set[str]:
        return set(self.keys)

    def only(self, where: Where) -> Recaption:
        return self

    def apply(self, where: Where, key: str, members: dict[str, bytes]) -> dict[str, bytes] | None:
        if key not in self.keys:
            return None
        record = decode_sample(key, members)
        assert isinstance(record, PairRecord)
        return encode_record(record.model_copy(update={"caption": f"a new caption for {key[:8]}"}))


@pytest.fixture
def staged(tmp_path: Path) -> Staged:
    folder = partition_dir(tmp_path / "_work", 0)
    with ShardWriter(folder, staged_stem, record_offsets=True) as writer:
        for i, record in enumerate(records()):
            writer.write(record, origin=f"in.jsonl:{i}")
    PartitionStats(
        gid=0, partition=Partition("a", 0, 0), accounting={}, shards=writer.shards, rejects=[], reports={}, seconds=0
    ).write(folder)
    return Staged.read(tmp_path / "_work", [0])


@pytest.fixture
def shard(staged: Staged) -> StagedShard:
    return staged.shards()[0]


def drop(shard: StagedShard, *numbers: int) -> dict[Where, dict[str, GlobalDrop]]:
    keys = [k for k, _ in iter_members(shard.tar)]
    return {shard.where: {keys[i]: GlobalDrop("a", "unique_key", "duplicate_key", f"dup {i}") for i in numbers}}


def fresh(shard: StagedShard, dropped: set[str], patches: dict[str, dict[str, bytes]]) -> bytes:
    """What the commit wrote before it copied byte ranges: every kept sample parsed and added again."""
    buf = io.BytesIO()
    tar = TarStream(buf)
    for key, members in iter_members(shard.tar):
        if key not in dropped:
            tar.add_sample(key, patches.get(key, members))
    tar.close()
    return buf.getvalue()


def commit(out: Path, item: ShardCommit) -> bytes:
    out.mkdir(exist_ok=True)
    info = commit_shard(out, item)
    stats = json.loads((out / info.stats).read_text())
    assert SAMPLE_OFFSETS not in stats  # the final shards never carry the staged offsets
    assert stats["bytes"] == (out / info.name).stat().st_size
    return (out / info.name).read_bytes()


@pytest.mark.parametrize(
    "numbers",
    [(0,), (5,), (N - 1,), (LONG,), (2, LONG, 4), (0, 5, 7, 8, 9, N - 1), (1, 2, 4, 5, 6, 7, 8, 9, 10, 11)],
    ids=["first", "middle", "last", "long_key", "around_long_key", "first_middle_run_last", "all_but_two"],
)
def test_the_rewritten_tar_is_the_kept_samples_written_afresh(shard: StagedShard, tmp_path: Path, numbers):
    drops = drop(shard, *numbers)
    (item,) = plan_commit([shard], "ds", drops)
    assert commit(tmp_path / "out", item) == fresh(shard, set(drops[shard.where]), {})


def test_a_patched_sample_is_parsed_from_its_range_and_written_again(shard: StagedShard, tmp_path: Path):
    keys = [k for k, _ in iter_members(shard.tar)]
    patched = frozenset({keys[0], keys[LONG], keys[8]})
    drops = drop(shard, 1, 9, N - 1)
    (item,) = plan_commit([shard], "ds", drops, [Recaption(patched)])
    rewrite = Recaption(patched)
    members = dict(iter_members(shard.tar))
    patches = {k: p for k in patched if (p := rewrite.apply(shard.where, k, members[k])) is not None}
    assert set(patches) == patched
    assert commit(tmp_path / "out", item) == fresh(shard, set(drops[shard.where]), patches)


def test_rejects_of_global_drops_are_read_from_their_ranges(staged: Staged, shard: StagedShard, tmp_path: Path):
    drops = drop(shard, 0, LONG, 7, N - 1)
    infos = commit_rejects(staged, tmp_path / "out", "ds", drops)
    (rejected,) = [dict(iter_members(tmp_path / "out" / i.name)) for i in infos]
    members = dict(iter_members(shard.tar))
    assert len(rejected) == 4
    for key, drop_ in drops[shard.where].items():
        got = next(m for k, m in rejected.items() if k.endswith(key))
        assert decode_sample(key, got) == decode_sample(key, members[key])
        assert json.loads(got["reject.json"])["detail"] == drop_.detail


def second_member(shard: StagedShard, number: int) -> int:
    """Where the header of sample ``number``'s second member starts."""
    with tarfile.open(shard.tar) as tar:
        headers = [(m.name.split(".", 1)[0], m.offset) for m in tar.getmembers()]
    key = list(dict.fromkeys(k for k, _ in headers))[number]
    return [offset for k, offset in headers if k == key][1]


def tamper(shard: StagedShard, change) -> None:
    stats = json.loads(shard.stats.read_text())
    stats[SAMPLE_OFFSETS] = change(stats[SAMPLE_OFFSETS], shard)
    shard.stats.write_text(json.dumps(stats))


TAMPERED = {
    "missing": (lambda o, s: None, (5,), "hold no sample_offsets"),
    "one_short": (lambda o, s: o[:-1], (5,), "offsets for 12 samples"),
    "not_from_0": (lambda o, s: [512, *o[1:]], (5,), "increasing block boundaries"),
    "unaligned": (lambda o, s: [*o[:4], o[4] + 1, *o[5:]], (5,), "increasing block boundaries"),
    "not_a_header": (lambda o, s: [*o[:5], o[5] + 512, *o[6:]], (5,), "not sample|not all of"),
    "past_the_end": (lambda o, s: [*o[:-1], o[-1] + 512], (5,), "end-of-archive|not all of|members end"),
    # a header of the right key, but not the sample's first: caught by parsing the sample beside the cut
    "late_start_dropped": (lambda o, s: [*o[:5], second_member(s, 5), *o[6:]], (5,), "not all of sample"),
    "late_start_kept": (lambda o, s: [*o[:6], second_member(s, 6), *o[7:]], (5,), "not sample"),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_offsets_that_do_not_match_the_tar_are_refused(shard: StagedShard, tmp_path: Path, name: str):
    change, numbers, message = TAMPERED[name]
    tamper(shard, change)
    (item,) = plan_commit([shard], "ds", drop(shard, *numbers))
    with pytest.raises(RuntimeError, match=message) as caught:
        commit_shard(tmp_path, item)
    assert str(shard.tar) in str(caught.value)
    assert not (tmp_path / f"{item.stem}.tar").exists()


def test_an_offset_inside_a_copied_run_is_never_used(shard: StagedShard, tmp_path: Path):
    """Only the bounds of copied runs matter (each is checked by parsing the sample beside it): an offset
    inside a run, even a wrong one, changes nothing the commit writes."""
    drops = drop(shard, 5)
    expected = fresh(shard, set(drops[shard.where]), {})
    tamper(shard, lambda o, s: [*o[:2], o[2] + 512, *o[3:]])
    (item,) = plan_commit([shard], "ds", drops)
    assert commit(tmp_path / "out", item) == expected
