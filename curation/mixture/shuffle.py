"""The out-of-core shuffle: every selected copy gets a seeded rank; DuckDB sorts the ranks (spilling to disk
when large); pass 1 streams each input shard once and scatters the copies into position-range buckets; pass 2
loads one bucket at a time (``output.bucket_bytes``), in position order, into the mixture shards."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.build.faults import crash_point
from curation.recipe import MixtureRecipe
from shards import ShardWriter
from shards.codec import decode_sample
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.tokens import make_token_counter


def mixture_key(component: str, key: str, repeat: int) -> str:
    from curation.sources.base import sanitize_key

    return sanitize_key(f"{component}__{key}" + (f"__r{repeat}" if repeat else ""))


def shuffle_and_write(recipe: MixtureRecipe, selection: pa.Table, work: Path, out: Path) -> list[Any]:
    """Out-of-core shuffle: sort ranks in DuckDB, scatter copies to position buckets, write bucket by bucket."""
    con = duckdb.connect(config={"temp_directory": str(work / "duckdb")})  # a setting, not SQL: any path works
    con.register("selection", selection)
    con.execute(
        "CREATE TABLE placed AS SELECT *, row_number() OVER (ORDER BY rank, component, key, repeat) - 1 AS pos "
        "FROM selection"
    )
    (total,) = con.execute("SELECT count(*) FROM placed").fetchone() or (0,)
    tars = [r[0] for r in con.execute("SELECT DISTINCT tar FROM placed ORDER BY tar").fetchall()]
    copies_per_tar = dict(con.execute("SELECT tar, count(*) FROM placed GROUP BY tar").fetchall())
    # Bytes the copies will take (a repeated sample counts as often as it is copied).
    copy_bytes = sum(Path(t).stat().st_size * copies_per_tar[t] / max(1, _samples_in(t)) for t in tars)
    buckets = max(1, math.ceil(copy_bytes / recipe.output.bucket_bytes))
    bucket_dir = work / "buckets"
    bucket_dir.mkdir(parents=True, exist_ok=True)
    files = [open(bucket_dir / f"{b:05d}.tar", "wb") for b in range(buckets)]  # noqa: SIM115
    streams = [TarStream(f) for f in files]
    try:
        for tar in tars:  # pass 1: each input shard read once, in order
            wanted: dict[int, list[int]] = {}
            for idx, pos in con.execute(
                "SELECT idx, pos FROM placed WHERE tar = ? ORDER BY idx, pos", [tar]
            ).fetchall():
                wanted.setdefault(idx, []).append(pos)
            for i, (_key, members) in enumerate(iter_members(Path(tar))):
                for pos in wanted.get(i, ()):
                    streams[pos * buckets // total].add_sample(f"{pos:012d}", members)
    finally:
        for s, f in zip(streams, files, strict=True):
            s.close()
            f.close()
    writer = ShardWriter(
        out,
        recipe.shard_prefix(),
        max_samples=recipe.output.max_samples_per_shard,
        max_bytes=recipe.output.max_bytes_per_shard,
        token_counter=make_token_counter(recipe.tokenizer.type, recipe.tokenizer.path),
    )
    for b in range(buckets):  # pass 2: one bucket in memory at a time, in position order
        path = bucket_dir / f"{b:05d}.tar"
        members_at = {int(k): m for k, m in iter_members(path)}
        lo, hi = -(-b * total // buckets), -(-(b + 1) * total // buckets)
        rows = con.execute(
            "SELECT pos, component, key, repeat FROM placed WHERE pos >= ? AND pos < ? ORDER BY pos", [lo, hi]
        ).fetchall()
        for pos, component, key, repeat in rows:
            record = decode_sample(key, members_at.pop(pos))
            meta = {**record.meta, "mixture": {"component": component, "source": record.source, "key": key}}
            if repeat:
                meta["mixture"]["repeat"] = repeat
            record = record.model_copy(update={"key": mixture_key(component, key, repeat), "source": component})
            record.meta = meta
            writer.write(record, origin=f"{component}:{key}" + (f"#r{repeat}" if repeat else ""))
        if members_at:
            raise RuntimeError(f"bucket {b} held {len(members_at)} samples outside its positions (a bug)")
        path.unlink()
        crash_point("mixture_bucket")
    con.close()
    return writer.close()


def _samples_in(tar: str) -> int:
    stats = Path(tar).with_suffix(".stats.json")
    return int(json.loads(stats.read_text())["samples"]) if stats.is_file() else 1
