"""LAION subsets as a source.

``plan()`` selects metadata rows out of core (``curation.sources.laion.metadata``; cached by content) and splits
the selection into download partitions of ``download.samples_per_shard`` rows, plus one partition of
bulk drops for the rows the filters removed. ``read()`` of a download partition downloads its slice with
img2dataset in-process (``curation.sources.download.img2dataset``: one img2dataset shard, kept once finished,
so a killed download resumes without refetching a finished shard) and converts the output in rank order: successes
become ``pair`` records, failures become drops with reasons. On Ray, ``download_with_ray`` fetches the pending
partitions first with img2dataset's Ray distribution (``curation.sources.download.ray_download``), into the same
places, so ``read()`` only converts. Subset boundaries fall on partition boundaries.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq

from curation.cache import cache_root
from curation.recipe import LaionSource
from curation.sample import Drop, Sample
from curation.sources.base import Partition, Reader, Subset, expand_inputs, sanitize_key
from curation.sources.download.failures import DOWNLOAD_DROP_REASONS, row_failure
from curation.sources.download.img2dataset import download_shard
from curation.sources.laion.metadata import METADATA_DROP_REASONS, select_metadata
from curation.storage.inputs import content_identity, download
from schemas import PairRecord
from shards.atomic import content_sha256
from shards.reader import MAX_MEMBER_BYTES, MemberError, read_member

# selection columns carried through img2dataset (it reserves original_width/height for the real download)
META_COLUMNS = ["rank", "similarity", "punsafe", "pwatermark", "declared_width", "declared_height", "license"]


def files_identity(files: list[Any]) -> list[tuple[str, int, str]]:
    """(name, size, sha256) of each input file: caches are found again when the inputs move (by content). An
    object in a bucket: (name, size, ``etag:<ETag>``)."""
    return [(posixpath.basename(f) if isinstance(f, str) else f.name, *content_identity(f)) for f in files]


@contextlib.contextmanager
def local_copies(files: list[Any], where: Path) -> Iterator[list[Path]]:
    """The metadata files as local paths: local files as they are, objects in a bucket downloaded into ``where``
    (removed on exit). The selection scans every row three times (counts, first URLs, the ordered copy) with
    DuckDB, whose own S3 reader is an extension it downloads at run time: one streamed copy per object, kept only
    while the selection runs (the selection itself is cached by the objects' ETags), costs one read of each."""
    urls = [f for f in files if isinstance(f, str)]
    if not urls:
        yield [Path(f) for f in files]
        return
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    try:
        local = []
        for i, f in enumerate(files):
            if isinstance(f, str):
                copy = where / f"{i:05d}.parquet"
                download(f, copy)
                local.append(copy)
            else:
                local.append(Path(f))
        yield local
    finally:
        shutil.rmtree(where, ignore_errors=True)


def source_cache(source: Any) -> Path:
    """The cache of a source with a ``cache_dir`` setting."""
    return cache_root(source.cache_dir)


def subset_label(n: int) -> str:
    for unit, div in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def _short_hash(obj: Any) -> str:
    """A short content hash naming a cache directory."""
    return content_sha256(obj)[:16]


class LaionReader(Reader):
    config = LaionSource
    input_suffixes = (".parquet",)
    downloads_with_ray = True
    # Metadata in a bucket is copied into the cache for the selection, then deleted (``_selection``).
    reads_urls = True
    plan_file_fields = ("selection",)  # the selected rows, in the driver's cache
    drop_reasons: ClassVar[dict[str, str]] = {
        **METADATA_DROP_REASONS,
        **DOWNLOAD_DROP_REASONS,
        "not_a_regular_file": "img2dataset's tar holds the image or caption as a link or device; never read",
        "member_too_large": f"the image or caption member of img2dataset's tar is over {MAX_MEMBER_BYTES >> 30} GiB",
        "shard_damaged": "the image or caption member runs past the end of img2dataset's tar (cut off)",
    }

    def __init__(self, source: Any) -> None:
        self.source = source

    def record_kind(self) -> str:
        return "pair"

    def _selection(self) -> tuple[Path, dict[str, Any]]:
        src = self.source
        files = expand_inputs(src.path, self.input_suffixes, src.name)
        identity = {
            "files": files_identity(files),
            "filters": src.filters.model_dump(),
            "max_rows": max(src.sizes),
            "seed": src.seed,
        }
        sel_dir = source_cache(src) / "laion-select" / _short_hash(identity)
        path = sel_dir / "selected.parquet"
        stats = path.with_suffix(".json")
        if not stats.is_file() or not path.is_file():
            with local_copies(files, sel_dir / "inputs") as local:
                select_metadata(local, src.filters, max(src.sizes), src.seed, path, [str(f) for f in files])
        return path, json.loads(stats.read_text())

    def plan(self) -> list[Partition]:
        src = self.source
        path, stats = self._selection()
        per = src.download.samples_per_shard
        download_dir = (
            source_cache(src)
            / "laion-download"
            / _short_hash(
                {"selection": path.parent.name, "selected": stats["selected"], "download": src.download.model_dump()}
            )
        )
        parts = []
        for k in range(math.ceil(stats["selected"] / per)):
            start, stop = k * per, min(stats["selected"], (k + 1) * per)
            spec = {
                "kind": "download",
                "selection": str(path),
                "start": start,
                "stop": stop,
                "download_dir": str(download_dir / f"{k:05d}"),
            }
            parts.append(Partition(src.name, len(parts), stop - start, spec))
        dropped = sum(stats["dropped"].values())
        if dropped:  # last, so that --limit N takes the first N selected rows
            spec = {"kind": "metadata_drops", "dropped": stats["dropped"], "skipped_filters": stats["skipped_filters"]}
            parts.append(Partition(src.name, len(parts), dropped, spec))
        return parts

    def subsets(self, planned: list[Partition]) -> list[Subset]:
        """One per size: the leading download partitions that make it up."""
        per = self.source.download.samples_per_shard
        downloads = [i for i, p in enumerate(planned) if p.spec["kind"] == "download"]
        return [Subset(subset_label(n), downloads[: n // per], n // per <= len(downloads)) for n in self.source.sizes]

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec, name = partition.spec, self.source.name
        if spec["kind"] == "metadata_drops":
            remaining = partition.rows  # --limit may cut this partition short
            for reason, n in sorted(spec["dropped"].items()):
                take = min(n, remaining)
                if take:
                    yield Drop(reason, name, "metadata", None, "dropped by the metadata selection", count=take)
                remaining -= take
            return
        out = Path(spec["download_dir"])
        stop = spec["start"] + partition.rows
        if not (out / "00000_stats.json").is_file():  # local executor, or a shard the Ray stage failed on
            self._download(Path(spec["selection"]), spec["start"], stop, out)
        yield from self._convert(out, spec["start"], stop)

    def download_with_ray(self, partitions: list[Partition]) -> None:
        """Download the given download partitions that have no ``00000_stats.json`` yet with img2dataset's
        Ray distribution (one Ray task per partition: ``curation.sources.download.ray_download``), in the driver of a
        Ray build before its partition tasks start; Ray must be initialized. Each partition's output lands
        where ``read()`` looks for it (``download_dir/00000.tar|.parquet|_stats.json``, its
        ``start:start+rows`` rows, a truncated partition included), so ``read()`` then only converts. A shard
        whose task failed gets no output: ``read()`` downloads it in the partition task, as locally. Nothing to
        do: Ray is not used."""
        todo = [
            p
            for p in partitions
            if p.spec.get("kind") == "download"
            and p.rows > 0
            and not (Path(p.spec["download_dir"]) / "00000_stats.json").is_file()
        ]
        if not todo:
            return
        from curation.sources.download.ray_download import ShardSlice, download_slices

        groups: dict[tuple[str, Path], list[ShardSlice]] = {}
        for p in todo:
            out = Path(p.spec["download_dir"])
            start = p.spec["start"]
            groups.setdefault((p.spec["selection"], out.parent), []).append(
                ShardSlice(p.index, start, start + p.rows, out)
            )
        for (selection, root), slices in groups.items():
            download_slices(Path(selection), slices, self.source.download, META_COLUMNS, root / "ray-stage")

    def _download(self, selection: Path, start: int, stop: int, out: Path) -> None:
        table = pq.read_table(selection).slice(start, stop - start)
        download_shard(table, out, self.source.download, META_COLUMNS)

    def _convert(self, out: Path, start: int, stop: int) -> Iterator[Sample | Drop]:
        name, ext = self.source.name, self.source.download.encode_format
        stats_file, table_file, tar_file = out / "00000_stats.json", out / "00000.parquet", out / "00000.tar"
        if not stats_file.is_file() or not table_file.is_file():
            for _ in range(stop - start):
                yield Drop("download_failed:no_output", name, str(out), None, "img2dataset wrote no shard")
            return
        rows = sorted(pq.read_table(table_file).to_pylist(), key=lambda r: r["rank"])
        seen = set()
        tar_size = tar_file.stat().st_size if tar_file.is_file() else 0
        with tarfile.open(tar_file) if tar_file.is_file() else contextlib.nullcontext() as tar:
            members = {m.name: m for m in tar.getmembers()} if tar is not None else {}
            for row in rows:
                rank = int(row["rank"])
                seen.add(rank)
                key = sanitize_key(f"{name}-{rank:010d}")
                origin = f"{row.get('url')}"
                if (failure := row_failure(row)) is not None:
                    yield Drop(failure[0], name, origin, key, failure[1])
                    continue
                image, caption = members.get(f"{row['key']}.{ext}"), members.get(f"{row['key']}.txt")
                if image is None or caption is None:
                    yield Drop("download_missing", name, origin, key, "img2dataset listed a success without files")
                    continue
                assert tar is not None  # the members found come from it
                try:
                    image_bytes = read_member(tar, image, tar_size, MAX_MEMBER_BYTES)
                    caption_bytes = read_member(tar, caption, tar_size, MAX_MEMBER_BYTES)
                except (MemberError, tarfile.ReadError) as exc:  # not a regular file, too large, or cut off
                    reason = exc.reason if isinstance(exc, MemberError) else "shard_damaged"
                    yield Drop(reason, name, origin, key, str(exc)[:300])
                    continue
                meta = {
                    "url": row.get("url"),
                    "sha256": row.get("sha256"),
                    **{c: row.get(c) for c in META_COLUMNS if c != "rank"},
                    "rank": rank,
                    "width": row.get("width"),
                    "height": row.get("height"),
                }
                record = PairRecord.model_construct(
                    key=key,
                    source=name,
                    meta={k: v for k, v in meta.items() if v is not None},
                    image=image_bytes,
                    caption=caption_bytes.decode("utf-8"),
                )
                yield Sample(record, origin)
        for _ in range(stop - start - len(seen)):
            yield Drop("download_missing", name, str(out), None, "row missing from img2dataset's output")
