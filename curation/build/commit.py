"""Commit staged partitions into the final ``NAME-000000.tar`` series, in dataset order.

Idempotent: a final shard whose ``.tar`` exists is done (the tar is renamed into place last). Staged
shards without global drops are renamed (no copy); shards with global drops are rewritten without them.

A rewrite does not parse the staged tar: the partition's writer recorded where each sample starts
(``sample_offsets`` in the staged stats), so runs of kept samples are copied as raw byte ranges (the bytes
``TarStream`` would write for them again). Only single samples are parsed, each from its own range: dropped
ones (for the rejects, and to check that the cuts fall between samples) and the kept ones a
:class:`ShardRewrite` may change (to offer them to it).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.build.faults import crash_point
from curation.build.messages import Staged, StagedShard
from curation.build.rejects import RejectsWriter
from curation.sample import Drop
from curation.steps.contract import GlobalDrop, GlobalDrops, ShardRewrite, Where
from shards.atomic import tmp_path
from shards.codec import decode_sample
from shards.embeddings import embedding_file_name, load_embeddings, select_rows, write_embeddings
from shards.manifest import ShardInfo
from shards.reader import MAX_MEMBER_BYTES, MemberError, open_regular, read_member, split_name
from shards.splice import SpliceWriter
from shards.tarstream import BLOCK, TarStream
from shards.tokens import TokenCounter, count_record, make_token_counter
from shards.writer import SAMPLE_OFFSETS, turn_columns, write_shard_metadata

_REJECT_SUFFIXES = (".parquet", ".stats.json", ".tar")  # the tar last: a shard is complete once its tar exists
Tokenizer = tuple[str, str | None]  # (type, path) of the recipe's tokenizer: grown samples are counted again


def _done(out: Path, stem: str) -> ShardInfo | None:
    if not (out / f"{stem}.tar").exists():
        return None
    return ShardInfo.from_stats(stem, json.loads((out / f"{stem}.stats.json").read_text()))


@dataclass(frozen=True)
class ShardCommit:
    """One final shard: the staged shard it comes from, its name, and what it loses and how it changes."""

    staged: StagedShard
    stem: str
    dropped: dict[str, GlobalDrop]  # key -> why a global step dropped it
    rewrites: tuple[ShardRewrite, ...]  # of this shard only, applied in order
    tokenizer: Tokenizer

    @property
    def unchanged(self) -> bool:
        return not self.dropped and not self.rewrites


def plan_commit(
    staged: list[StagedShard],
    prefix: str,
    drops: GlobalDrops,
    rewrites: list[ShardRewrite] | None = None,
    tokenizer: Tokenizer = ("regex", None),
) -> list[ShardCommit]:
    """The final shards in dataset order (staged shards that lost every sample have none)."""
    plan: list[ShardCommit] = []
    changing = [(r, r.shards()) for r in rewrites or ()]  # once per rewrite, not once per shard
    for shard in staged:
        dropped = drops.get(shard.where, {})
        if dropped and len(dropped) >= shard.info.samples:
            continue
        mine = tuple(r.only(shard.where) for r, wheres in changing if shard.where in wheres)
        plan.append(ShardCommit(shard, f"{prefix}-{len(plan):06d}", dropped, mine, tokenizer))
    return plan


def commit_shard(out: Path, item: ShardCommit) -> ShardInfo:
    """Move one staged shard into place (renamed when unchanged, rewritten otherwise). Idempotent, and
    independent of every other shard: executors may run many at once, on any node that mounts ``out``."""
    info = _done(out, item.stem)
    if info is not None:
        return info
    staged = item.staged
    table = pq.read_table(staged.sidecar)
    stats = json.loads(staged.stats.read_text())
    extra: dict[str, object] = {"reencoded_images": stats.get("reencoded_images", 0)}  # never the sample offsets
    if item.unchanged:
        extra |= _commit_embeddings(staged, stats, out, item.stem, None)
        info = write_shard_metadata(
            out, item.stem, table=table, sha256=staged.info.sha256, size=staged.info.bytes, extra_stats=extra
        )
        os.replace(staged.tar, out / info.name)
        return info
    return _rewrite(item, out, table, stats.get(SAMPLE_OFFSETS), extra)


def commit_shards(
    plan: list[ShardCommit],
    out: Path,
    run_all: Callable[[Callable[..., ShardInfo], list[tuple]], Iterator[ShardInfo]] | None = None,
) -> list[ShardInfo]:
    """The final shards, in order. ``run_all`` runs ``commit_shard`` over the shards and yields the results
    in order (default: here, one after another)."""
    run_all = run_all or (lambda fn, args: (fn(*a) for a in args))
    final: list[ShardInfo] = []
    for info in run_all(commit_shard, [(out, item) for item in plan]):
        final.append(info)
        crash_point("commit_shard")
    if len(final) != len(plan):
        raise RuntimeError(f"the commit returned {len(final)} shards for a plan of {len(plan)} (a bug)")
    return final


def shards_by_partition(plan: list[ShardCommit], final: list[ShardInfo]) -> dict[int, list[ShardInfo]]:
    """The final shards each partition produced (partitions whose samples all left have none)."""
    by_partition: dict[int, list[ShardInfo]] = {}
    for item, info in zip(plan, final, strict=True):
        by_partition.setdefault(item.staged.partition, []).append(info)
    return by_partition


def _rewrite(item: ShardCommit, out: Path, table: pa.Table, offsets: object, extra: dict) -> ShardInfo:
    """Write the shard without its dropped samples and with its rewritten ones: runs of kept samples are
    copied as byte ranges; a kept sample a rewrite may change is parsed from its range and offered to it."""
    tmp = tmp_path(out / f"{item.stem}.tar")
    where = item.staged.where
    counter: TokenCounter | None = None
    grown: dict[str, dict[str, Any]] = {}
    axes = _turn_rating_axes(table)
    with (
        _StagedSamples.open(item.staged, table, offsets) as samples,
        open(tmp, "wb", buffering=0) as f,
        SpliceWriter(f, samples.src) as sink,
    ):
        tar = _TarCopy(sink)
        changing = set().union(*(r.changes(where) for r in item.rewrites))
        run = 0  # the kept samples [run, i) are not written yet
        for i, key in enumerate(samples.keys):
            if key in item.dropped:
                samples.members(i)  # parsed only to check the bounds of the runs around it
                samples.copy(run, i, tar)
                run = i + 1
                continue
            if key not in changing:
                continue
            patched = _apply(item.rewrites, where, key, samples.members(i))
            if patched is None:
                continue
            samples.copy(run, i, tar)
            run = i + 1
            nbytes = tar.add_sample(key, patched)
            counter = counter or make_token_counter(*item.tokenizer)
            record = decode_sample(key, patched)
            grown[key] = _sidecar_counts(record, nbytes, counter)
            if axes is not None:  # the build keeps per-turn columns: the grown conversation's
                grown[key] |= turn_columns(counter, record, axes)
        samples.copy(run, len(samples.keys), tar)
        tar.close()
        sha256 = sink.finish()
    crash_point("rewrite_tar_written")
    dropped = pa.array(sorted(item.dropped), pa.string())
    gone = pc.is_in(table.column("key"), dropped)  # pyright: ignore[reportAttributeAccessIssue]  # generated functions
    kept = table.filter(pc.invert(gone))  # pyright: ignore[reportAttributeAccessIssue]  # generated functions
    if grown:
        kept = _update_rows(kept, grown)
    keep = [not g for g in gone.to_pylist()]
    extra = extra | _commit_embeddings(item.staged, json.loads(item.staged.stats.read_text()), out, item.stem, keep)
    index = kept.schema.get_field_index("index")
    kept = kept.set_column(index, kept.schema.field(index), pa.array(range(kept.num_rows), pa.int32()))
    info = write_shard_metadata(out, item.stem, table=kept, sha256=sha256, size=tar.size, extra_stats=extra)
    os.replace(tmp, out / info.name)
    return info


def _commit_embeddings(
    staged: StagedShard, stats: dict, out: Path, stem: str, keep: list[bool] | None
) -> dict[str, object]:
    """The staged shard's embedding files under the final name (before its tar appears): renamed when every
    sample stays (``keep`` None), else rewritten with the kept samples' rows. Their stats entries."""
    entries = stats.get("embeddings") or {}
    if not entries:
        return {}
    n_images = pq.read_table(staged.sidecar, columns=["n_images"]).column("n_images").to_pylist()
    final: dict[str, object] = {}
    for name, entry in sorted(entries.items()):
        source = staged.folder / entry["file"]
        target = out / embedding_file_name(stem, name)
        if keep is None:
            _link_or_copy(source, target)
            final[name] = {**entry, "file": target.name}
            continue
        vectors = select_rows(load_embeddings(source), entry["per"], n_images, keep)
        final[name] = write_embeddings(out, stem, name, vectors).model_dump()
    return {"embeddings": final}


def _link_or_copy(source: Path, target: Path) -> None:
    """Place a staged file under its final name and keep the staged one: a commit killed after this reruns
    the global steps, which read the staged embeddings again (a hard link costs nothing; a copy where the
    file system has none)."""
    if target.exists():
        return
    tmp = tmp_path(target)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class _TarCopy(TarStream):
    """A :class:`TarStream` that also appends byte ranges of the staged tar of ours (whole samples)."""

    def __init__(self, sink: SpliceWriter) -> None:
        super().__init__(sink)
        self._sink = sink

    def copy(self, offset: int, length: int) -> None:
        self._sink.copy(offset, length)
        self.size += length


@dataclass(frozen=True)
class _StagedSamples:
    """A staged shard's samples as byte ranges of its tar: sample ``i`` is ``starts[i]:starts[i + 1]``, from
    the offsets its writer recorded (``ShardWriter(record_offsets=True)``), checked by :meth:`open`."""

    shard: StagedShard
    src: BinaryIO
    keys: list[str]
    payload: list[int]  # the sidecar's ``bytes``: the sizes of each sample's members, summed
    starts: list[int]

    @classmethod
    @contextmanager
    def open(cls, shard: StagedShard, sidecar: pa.Table, offsets: object) -> Iterator[_StagedSamples]:
        """Check the offsets against the sidecar and the tar before trusting them: their count and order, and
        the end-of-archive blocks after the last sample. A sample that is parsed (:meth:`members`) is checked
        exactly, so every cut a copy makes is: a copied run starts at 0 or after a parsed sample and ends at
        the end of the data (the last sample, parsed here) or at a parsed (dropped or rewritten) one. Offsets
        inside a run are never used. A mismatch is a bug or a changed file: RuntimeError."""
        keys: list[str] = sidecar.column("key").to_pylist()
        with open_regular(shard.tar) as src:
            if not isinstance(offsets, list) or not all(type(o) is int for o in offsets):
                raise _untrusted(shard, f"its stats hold no {SAMPLE_OFFSETS} (a list of integers)")
            if sidecar.column("index").to_pylist() != list(range(len(keys))):
                raise _untrusted(shard, "its sidecar rows are not in tar order")
            if len(offsets) != len(keys) + 1:
                raise _untrusted(shard, f"{len(offsets)} offsets for {len(keys)} samples (want one more)")
            if offsets[0] != 0 or any(a >= b for a, b in pairwise(offsets)) or any(o % BLOCK for o in offsets):
                raise _untrusted(shard, "the offsets are not increasing block boundaries from 0")
            fd = src.fileno()
            end = offsets[-1]
            if end > os.fstat(fd).st_size - 2 * BLOCK or os.pread(fd, 2 * BLOCK, end) != bytes(2 * BLOCK):
                raise _untrusted(shard, f"no end-of-archive blocks at byte {end:,}")
            samples = cls(shard, src, keys, sidecar.column("bytes").to_pylist(), offsets)
            if keys:
                samples.members(len(keys) - 1)  # the end of the last sample, where every copy may end
            yield samples

    def members(self, i: int) -> dict[str, bytes]:
        """Sample ``i``'s members (extension -> bytes), parsed from its byte range alone; the range must hold
        exactly the members of its key, as many bytes as its sidecar row counts."""
        key, start, end = self.keys[i], self.starts[i], self.starts[i + 1]
        self.src.seek(start)
        data = self.src.read(end - start)
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for info in tar:
                    parts = split_name(info.name)
                    if parts is None or parts[0] != key or parts[1] in members:
                        raise tarfile.ReadError(f"it holds member {info.name!r}")
                    members[parts[1]] = read_member(tar, info, len(data), MAX_MEMBER_BYTES)
                if tar.offset != len(data):
                    raise tarfile.ReadError(f"its members end at byte {start + tar.offset:,}")
        except (tarfile.TarError, MemberError) as exc:
            raise _untrusted(self.shard, f"bytes {start:,} to {end:,} are not sample {key!r} ({exc})") from None
        if sum(map(len, members.values())) != self.payload[i]:
            raise _untrusted(self.shard, f"bytes {start:,} to {end:,} are not all of sample {key!r}")
        return members

    def copy(self, first: int, stop: int, tar: _TarCopy) -> None:
        """Append samples ``first`` to ``stop - 1`` to ``tar`` as they are."""
        tar.copy(self.starts[first], self.starts[stop] - self.starts[first])


def _untrusted(shard: StagedShard, why: str) -> RuntimeError:
    return RuntimeError(f"staged shard {shard.tar}: {why}; its recorded {SAMPLE_OFFSETS} cannot be trusted")


def _apply(
    rewrites: tuple[ShardRewrite, ...], where: Where, key: str, members: dict[str, bytes]
) -> dict[str, bytes] | None:
    changed = None
    for rewrite in rewrites:
        changed = rewrite.apply(where, key, changed or members) or changed
    return changed


def _sidecar_counts(record, nbytes: int, counter) -> dict[str, int]:
    text_tokens, answer_tokens = count_record(counter, record)
    return {
        "turns": record.num_turns(),
        "text_tokens": text_tokens,
        "answer_tokens": answer_tokens,
        "bytes": nbytes,
    }


def _turn_rating_axes(table: pa.Table) -> list[str] | None:
    """The rating axes a sidecar keeps per turn (None: it has no per-turn columns)."""
    if "turn_ratings" not in table.schema.names:
        return None
    return sorted({axis for row in table.column("turn_ratings").to_pylist() for axis, _ in row or ()})


def _update_rows(table: pa.Table, grown: dict[str, dict[str, Any]]) -> pa.Table:
    keys = table.column("key").to_pylist()
    per_turn = [c for c in ("turn_answer_tokens", "turn_ratings") if c in table.schema.names]
    for column in ("turns", "text_tokens", "answer_tokens", "bytes", *per_turn):
        i = table.schema.get_field_index(column)
        values = table.column(column).to_pylist()
        values = [grown[k][column] if k in grown else v for k, v in zip(keys, values, strict=True)]
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    return table


def commit_rejects(staged: Staged, out: Path, prefix: str, drops: GlobalDrops) -> list[ShardInfo]:
    """Partition rejects (renamed), then rejects of global steps (rewritten, deterministic)."""
    rdir = out / "rejects"
    rdir.mkdir(parents=True, exist_ok=True)
    infos: list[ShardInfo] = []
    for index, shard in enumerate(staged.rejects()):
        stem = f"{prefix}-rejects-{index:06d}"
        for suffix, path in zip(_REJECT_SUFFIXES, (shard.sidecar, shard.stats, shard.tar), strict=True):
            if path.exists():
                os.replace(path, rdir / f"{stem}{suffix}")
        infos.append(ShardInfo.from_stats(stem, shard.info.model_dump(), folder="rejects"))
    if drops:
        first_global = len(infos)
        # A killed attempt may have left global rejects: everything but the partition rejects just placed goes.
        placed = {f"{prefix}-rejects-{i:06d}{suffix}" for i in range(first_global) for suffix in _REJECT_SUFFIXES}
        for stale in rdir.glob(f"{prefix}-rejects-*"):
            if stale.name not in placed:
                stale.unlink()
        writer = RejectsWriter(rdir, prefix, start_index=first_global, folder="rejects")
        for shard in staged.shards():
            dropped = drops.get(shard.where, {})
            if not dropped:
                continue
            sidecar = pq.read_table(shard.sidecar, columns=["key", "index", "bytes", "origin"])
            offsets = json.loads(shard.stats.read_text()).get(SAMPLE_OFFSETS)
            with _StagedSamples.open(shard, sidecar, offsets) as samples:
                for i, (key, origin) in enumerate(zip(samples.keys, sidecar.column("origin").to_pylist(), strict=True)):
                    drop = dropped.get(key)
                    if drop is not None:
                        record = decode_sample(key, samples.members(i))
                        writer.add(drop.step, Drop(drop.reason, drop.source, origin, key, drop.detail, record))
        infos.extend(writer.close())
    return infos
