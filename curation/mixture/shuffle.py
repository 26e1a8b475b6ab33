"""The out-of-core shuffle: every selected copy gets a seeded rank; DuckDB sorts the ranks (spilling to disk
when large); pass 1 streams each input shard once and scatters the copies into position-range buckets; pass 2
loads one bucket at a time (``output.bucket_bytes``), in position order, into the mixture shards.

Both passes resume after a kill. Pass 1 ends by writing ``scattered.json`` (what it scattered: the selection's
fingerprint, the bucket count); a rerun with the same fingerprint skips it. Pass 2 writes ``written.json`` after
each bucket: the mixture shards finished so far and the position the next shard starts at; a rerun keeps those
shards, deletes any later one, and goes on from that position. A bucket is deleted once every copy in it is in a
finished shard, so the disk holds about one copy of the mixture, as without resuming."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.build.faults import crash_point
from curation.recipe import MixtureRecipe
from shards import ShardWriter
from shards.atomic import atomic_write_json, fsync_file
from shards.codec import decode_sample
from shards.manifest import ShardInfo
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.tokens import make_token_counter, tokenizer_fingerprint


def mixture_key(component: str, key: str, repeat: int) -> str:
    from curation.sources.base import sanitize_key

    return sanitize_key(f"{component}__{key}" + (f"__r{repeat}" if repeat else ""))


SCATTERED = "scattered.json"
WRITTEN = "written.json"
BUCKETS = "buckets"


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
    bucket_dir = work / BUCKETS
    tokenizer = tokenizer_fingerprint(recipe.tokenizer.type, recipe.tokenizer.path)  # the shards' token counts
    scattered = {"selection": _fingerprint(selection, tars), "buckets": buckets, "total": total, "tokenizer": tokenizer}
    if _read_json(work / SCATTERED) != scattered:  # pass 1 (again): nothing of an earlier scatter is kept
        for record in (SCATTERED, WRITTEN):  # first: a pass 1 killed half-way is never taken for a whole one
            (work / record).unlink(missing_ok=True)
        shutil.rmtree(bucket_dir, ignore_errors=True)
        _scatter(con, tars, total, buckets, bucket_dir)
        atomic_write_json(work / SCATTERED, scattered)
    done = _read_json(work / WRITTEN) or {"shards": [], "next": 0}
    kept = [ShardInfo.model_validate(s) for s in done["shards"]]
    _remove_shards_from(out, recipe.shard_prefix(), len(kept))  # a shard begun after the last record: again
    writer = ShardWriter(
        out,
        recipe.shard_prefix(),
        max_samples=recipe.output.max_samples_per_shard,
        max_bytes=recipe.output.max_bytes_per_shard,
        token_counter=make_token_counter(recipe.tokenizer.type, recipe.tokenizer.path),
        start_index=len(kept),
    )
    start = shard_start = int(done["next"])
    for b in range(buckets):  # pass 2: one bucket in memory at a time, in position order
        lo, hi = -(-b * total // buckets), -(-(b + 1) * total // buckets)
        if hi <= start:
            continue  # written into finished shards before a kill (and deleted)
        path = bucket_dir / f"{b:05d}.tar"
        members_at = {int(k): m for k, m in iter_members(path)}
        rows = con.execute(
            "SELECT pos, component, key, repeat FROM placed WHERE pos >= ? AND pos < ? ORDER BY pos",
            [max(lo, start), hi],
        ).fetchall()
        for pos, component, key, repeat in rows:
            record = decode_sample(key, members_at.pop(pos))
            meta = {**record.meta, "mixture": {"component": component, "source": record.source, "key": key}}
            if repeat:
                meta["mixture"]["repeat"] = repeat
            record = record.model_copy(update={"key": mixture_key(component, key, repeat), "source": component})
            record.meta = meta
            writer.write(record, origin=f"{component}:{key}" + (f"#r{repeat}" if repeat else ""))
            if writer.between_shards():
                shard_start = pos + 1
        if any(p >= start for p in members_at):
            raise RuntimeError(f"bucket {b} held {len(members_at)} samples outside its positions (a bug)")
        finished = writer.finished()  # waits for the shards closed so far: on disk, whole
        atomic_write_json(work / WRITTEN, {"shards": [s.model_dump() for s in kept + finished], "next": shard_start})
        for old in range(b + 1):  # buckets whose copies are all in finished shards
            if -(-(old + 1) * total // buckets) <= shard_start:
                (bucket_dir / f"{old:05d}.tar").unlink(missing_ok=True)
        crash_point("mixture_bucket")
    con.close()
    return kept + writer.close()


def _scatter(con: duckdb.DuckDBPyConnection, tars: list[str], total: int, buckets: int, bucket_dir: Path) -> None:
    """Pass 1: each input shard read once, in order, its copies appended to the buckets of their positions."""
    bucket_dir.mkdir(parents=True, exist_ok=True)
    files = [open(bucket_dir / f"{b:05d}.tar", "wb") for b in range(buckets)]  # noqa: SIM115
    streams = [TarStream(f) for f in files]
    try:
        for tar in tars:
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
    for f in files:
        fsync_file(Path(f.name))


def _fingerprint(selection: pa.Table, tars: list[str]) -> str:
    """What pass 1 scattered: the selection (every copy's component, key, repeat, rank and input sample) and the
    input shards' sha256s (a dataset rebuilt under the same path is other samples)."""
    h = hashlib.sha256()
    with pa.PythonFile(_HashSink(h), mode="w") as sink, pa.ipc.new_stream(sink, selection.schema) as stream:
        stream.write_table(selection, max_chunksize=1 << 16)  # hashed as it is serialized: never all in memory
    for tar in tars:
        stats = Path(tar).with_suffix(".stats.json")
        h.update(stats.read_bytes() if stats.is_file() else tar.encode())
    return h.hexdigest()


class _HashSink(io.RawIOBase):
    """A write-only file that hashes what is written to it."""

    def __init__(self, h: Any) -> None:
        super().__init__()
        self.h = h

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.h.update(data)
        return memoryview(data).nbytes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove_shards_from(out: Path, prefix: str, index: int) -> None:
    """The mixture's shard files numbered ``index`` and on (and any temporary file): written after the last
    record of pass 2, so written again."""
    for f in out.glob(f"{prefix}-[0-9]*"):
        number = f.name[len(prefix) + 1 :].split(".", 1)[0]
        if not number.isdigit() or int(number) >= index:
            f.unlink()


def _samples_in(tar: str) -> int:
    stats = Path(tar).with_suffix(".stats.json")
    return int(json.loads(stats.read_text())["samples"]) if stats.is_file() else 1
