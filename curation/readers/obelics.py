"""OBELICS documents as a source.

``plan()`` counts image URLs across the corpus out of core (DuckDB; cached by content) to find the
overused ones, and splits the files into partitions of whole row groups. ``read()`` parses and cleans
every document of its partition with the original OBELICS rules (``curation.obelics``), downloads the
distinct image URLs of the surviving documents as one img2dataset shard (cached: never fetched twice),
joins the images back by URL, removes the images that failed (texts made adjacent are merged with
"\\n\\n", as in OBELICS) and drops a document left without an image. Output: ``interleaved`` records.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.laion.download import download_shard
from curation.obelics import ObelicsDocument, WordLists, clean_document, count_image_urls
from curation.obelics.filters import PARAGRAPH_SEPARATOR
from curation.readers.base import Partition, default_key, expand_inputs
from curation.readers.laion import _short_hash, cache_root, error_category
from curation.readers.parquet import row_group_partitions
from curation.sample import Drop, Sample
from schemas import InterleavedRecord


class ObelicsReader:
    def __init__(self, source: Any) -> None:
        self.source = source

    def record_kind(self) -> str:
        return "interleaved"

    def plan(self) -> list[Partition]:
        src = self.source
        files = expand_inputs(src.path, (".parquet",), src.name)
        identity = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        overused_path = cache_root(src) / "obelics-urls" / f"{_short_hash([identity, src.max_url_occurrences])}.parquet"
        if not overused_path.is_file():
            overused_path.parent.mkdir(parents=True, exist_ok=True)
            limit = src.max_url_occurrences
            table = (
                count_image_urls(files, min_count=limit + 1) if limit else pa.table({"url": pa.array([], pa.string())})
            )
            pq.write_table(table.select(["url"]), overused_path.with_suffix(".tmp"))
            overused_path.with_suffix(".tmp").replace(overused_path)
        download_root = cache_root(src) / "obelics-download" / _short_hash([identity, src.model_dump(mode="json")])
        return row_group_partitions(
            src,
            files,
            lambda file_index, first: {
                "overused": str(overused_path),
                "download_dir": str(download_root / f"{file_index:05d}-{first:09d}"),
            },
        )

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        src, spec = self.source, partition.spec
        overused = set(pq.read_table(spec["overused"]).column("url").to_pylist())  # already only the overused
        wordlists = WordLists.default()
        if src.common_words:
            wordlists = wordlists.replace(common_words=WordLists.read(src.common_words))
        kept: list[tuple[str, str, ObelicsDocument, Counter]] = []
        row_number, emitted = spec["first_row"], 0
        # 1. parse and clean every document (drops are final; survivors wait for their images)
        batches = pq.ParquetFile(spec["file"]).iter_batches(batch_size=256, row_groups=spec["row_groups"])
        for batch in batches:
            for row in batch.to_pylist():
                if emitted >= partition.rows:
                    break
                emitted += 1
                key = default_key(self.source.name, spec["file"], spec["file_index"], row_number)
                origin = f"{spec['file']}#{row_number}"
                row_number += 1
                try:
                    doc = ObelicsDocument.from_row(row)
                except ValueError as exc:
                    yield Drop("invalid_document", src.name, origin, key, str(exc)[:300])
                    continue
                cleaned, reason, removed = clean_document(doc, src.filters, overused, wordlists)
                if cleaned is None:
                    yield Drop(reason or "filtered", src.name, origin, key, json.dumps(dict(removed))[:300])
                    continue
                kept.append((key, origin, cleaned, removed))
        if not kept:
            return
        # 2. one download of the distinct image URLs of the survivors
        urls = sorted({u for _, _, d, _ in kept for u in d.images if u is not None})
        out = Path(spec["download_dir"])
        if not (out / "00000_stats.json").is_file():
            download_shard(pa.table({"url": urls}), out, src.download, [])
        fetched, failures = self._fetched(out, src.download.encode_format)
        # 3. join back by URL
        with tarfile.open(out / "00000.tar") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for key, origin, doc, removed in kept:
                texts: list[str | None] = []
                images: list[bytes | None] = []
                failed: Counter[str] = Counter()
                for text, url in zip(doc.texts, doc.images, strict=True):
                    if text is not None:
                        if texts and texts[-1] is not None:
                            texts[-1] += PARAGRAPH_SEPARATOR + text
                        else:
                            texts.append(text)
                            images.append(None)
                        continue
                    member = members.get(f"{fetched[url]}.{src.download.encode_format}") if url in fetched else None
                    if member is None:
                        failed[failures.get(url, "download_missing")] += 1
                        continue
                    texts.append(None)
                    images.append(tar.extractfile(member).read())
                if not any(im is not None for im in images):
                    yield Drop("no_image_downloaded", src.name, origin, key, json.dumps(dict(failed)))
                    continue
                meta = {"url": doc.url, "images_failed": dict(failed), "removed": dict(removed)}
                record = InterleavedRecord.model_construct(
                    key=key, source=src.name, meta=meta, texts=texts, images=images
                )
                yield Sample(record, origin)

    @staticmethod
    def _fetched(out: Path, ext: str) -> tuple[dict[str, str], dict[str, str]]:
        """url -> img2dataset key of the successes; url -> reason of the failures."""
        fetched, failures = {}, {}
        for row in pq.read_table(out / "00000.parquet").to_pylist():
            if row["status"] == "success":
                fetched[row["url"]] = row["key"]
            elif row["status"] == "failed_to_download":
                failures[row["url"]] = f"download_failed:{error_category(row.get('error_message'))}"
            else:
                failures[row["url"]] = "resize_failed"
        return fetched, failures
