"""Commit staged partitions into the final ``NAME-000000.tar`` series, in dataset order.

Idempotent: a final shard whose ``.tar`` exists is done (the tar is renamed into place last). Staged
shards without global drops are renamed (no copy); shards with global drops are rewritten without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.faults import crash_point
from curation.partition import partition_dir, read_partition_stats
from curation.rejects import RejectsWriter
from curation.sample import Drop
from curation.steps.dedup import GlobalDrops
from shards.atomic import HashingWriter, tmp_path
from shards.codec import decode_sample
from shards.manifest import ShardInfo
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.writer import write_shard_metadata


def _done(out: Path, stem: str) -> ShardInfo | None:
    if not (out / f"{stem}.tar").exists():
        return None
    return ShardInfo.from_stats(stem, json.loads((out / f"{stem}.stats.json").read_text()))


def commit_shards(
    work: Path, out: Path, prefix: str, gids: list[int], drops: GlobalDrops
) -> tuple[list[ShardInfo], dict[int, list[ShardInfo]]]:
    """The final shards in order, and which of them each partition produced."""
    final: list[ShardInfo] = []
    by_partition: dict[int, list[ShardInfo]] = {gid: [] for gid in gids}
    index = 0
    for gid in gids:
        pdir = partition_dir(work, gid)
        for staged in read_partition_stats(work, gid)["shards"]:
            number = int(staged["name"].split(".")[0])
            dropped = drops.get((gid, number), {})
            if dropped and len(dropped) >= staged["samples"]:
                continue
            stem = f"{prefix}-{index:06d}"
            index += 1
            info = _done(out, stem)
            if info is None:
                table = pq.read_table(pdir / staged["sidecar"])
                staged_stats = json.loads((pdir / staged["stats"]).read_text())
                extra = {"reencoded_images": staged_stats.get("reencoded_images", 0)}
                if not dropped:
                    info = write_shard_metadata(
                        out, stem, table=table, sha256=staged["sha256"], size=staged["bytes"], extra_stats=extra
                    )
                    os.replace(pdir / staged["name"], out / info.name)
                else:
                    info = _rewrite_without(pdir / staged["name"], out, stem, table, set(dropped), extra)
            final.append(info)
            by_partition[gid].append(info)
            crash_point("commit_shard")
    return final, by_partition


def _rewrite_without(src: Path, out: Path, stem: str, table: pa.Table, dropped: set[str], extra: dict) -> ShardInfo:
    tmp = tmp_path(out / f"{stem}.tar")
    with open(tmp, "wb") as f:
        hashing = HashingWriter(f)
        tar = TarStream(hashing)
        for key, members in iter_members(src):
            if key not in dropped:
                tar.add_sample(key, members)
        tar.close()
        f.flush()
        os.fsync(f.fileno())
    crash_point("rewrite_tar_written")
    kept = table.filter(pc.invert(pc.is_in(table.column("key"), pa.array(sorted(dropped), pa.string()))))
    index = kept.schema.get_field_index("index")
    kept = kept.set_column(index, kept.schema.field(index), pa.array(range(kept.num_rows), pa.int32()))
    info = write_shard_metadata(
        out, stem, table=kept, sha256=hashing.sha256.hexdigest(), size=hashing.size, extra_stats=extra
    )
    os.replace(tmp, out / info.name)
    return info


def commit_rejects(work: Path, out: Path, prefix: str, gids: list[int], drops: GlobalDrops) -> list[ShardInfo]:
    """Partition rejects (renamed), then rejects of global steps (rewritten, deterministic)."""
    rdir = out / "rejects"
    rdir.mkdir(parents=True, exist_ok=True)
    infos: list[ShardInfo] = []
    index = 0
    for gid in gids:
        pdir = partition_dir(work, gid) / "rejects"
        for staged in read_partition_stats(work, gid)["rejects"]:
            stem = f"{prefix}-rejects-{index:06d}"
            index += 1
            for suffix, name in (
                (".parquet", staged["sidecar"]),
                (".stats.json", staged["stats"]),
                (".tar", staged["name"]),
            ):
                if (pdir / name).exists():
                    os.replace(pdir / name, rdir / f"{stem}{suffix}")
            infos.append(ShardInfo.from_stats(stem, staged, folder="rejects"))
    if drops:
        for stale in rdir.glob(f"{prefix}-rejects-*"):
            if int(stale.name[len(prefix) + 9 : len(prefix) + 15]) >= index:
                stale.unlink()
        writer = RejectsWriter(rdir, prefix, start_index=index, folder="rejects")
        for gid in gids:
            pdir = partition_dir(work, gid)
            for staged in read_partition_stats(work, gid)["shards"]:
                dropped = drops.get((gid, int(staged["name"].split(".")[0])), {})
                if not dropped:
                    continue
                sidecar = pq.read_table(pdir / staged["sidecar"], columns=["key", "origin"])
                origins = dict(
                    zip(sidecar.column("key").to_pylist(), sidecar.column("origin").to_pylist(), strict=True)
                )
                for key, members in iter_members(pdir / staged["name"]):
                    drop = dropped.get(key)
                    if drop is not None:
                        record = decode_sample(key, members)
                        writer.add(drop.step, Drop(drop.reason, drop.source, origins[key], key, drop.detail, record))
        infos.extend(writer.close())
    return infos
