"""OBELICS documents as a source.

``plan()`` counts image URLs across the corpus out of core (DuckDB; cached by content) to find the
overused ones, and splits the files into partitions of whole row groups. ``read()`` parses and cleans
every document of its partition with the original OBELICS rules (``curation.sources.obelics``), downloads the
distinct image URLs of the surviving documents as one img2dataset shard (cached: never fetched twice),
joins the images back by URL, removes the images that failed (texts made adjacent are merged with
"\\n\\n", as in OBELICS) and drops a document left without an image. A downloaded image whose real size
fails the image rules (``min_side``, ``max_side``, ``max_aspect_ratio``) is removed too: the metadata has
the sizes the crawl saw, a server may now send a 1x1 pixel. Output: ``interleaved`` records.

With ``filters.mode: original`` the URLs are counted as the original counted them: over the documents that pass
``original_first_pass`` (its paragraph, image and document rules), after its image rules. That is one more pass
over the corpus, in ``plan()``, cached like the count.

Documents in a bucket (``path: s3://...``) are read in place: the count projects each object's ``images`` column
(ranged reads of that column only) into local parquet files for DuckDB, and a partition reads its row groups by
ranges.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.file_digest import file_sha256
from curation.recipe import ObelicsSource
from curation.sample import Drop, Sample
from curation.sources.base import InputPath, Partition, Reader, default_key, expand_inputs
from curation.sources.download.failures import row_failure
from curation.sources.download.img2dataset import download_shard
from curation.sources.laion.reader import _short_hash, files_identity, source_cache
from curation.sources.obelics import ObelicsDocument, WordLists, clean_document, count_image_urls
from curation.sources.obelics.document import PARAGRAPH_SEPARATOR
from curation.sources.obelics.filters import DOCUMENT_DROP_REASONS, check_image, original_first_pass
from curation.sources.obelics.models import LEVELS, MODEL_PATH_FIELDS, check_text_models, forget_changed
from curation.sources.obelics.signals import WORDLIST_NAMES
from curation.sources.parquet import parquet_input, row_group_partitions, streaming
from curation.storage.urls import is_url
from schemas import InterleavedRecord
from shards.reader import MAX_MEMBER_BYTES, MemberError, read_member


class ObelicsReader(Reader):
    config = ObelicsSource
    input_suffixes = (".parquet",)
    reads_urls = True  # row groups read by ranges; the URL count reads the ``images`` column only
    plan_file_fields = ("overused",)  # the overused URLs, in the driver's cache
    drop_reasons: ClassVar[dict[str, str]] = {
        "invalid_document": (
            "a row that is not an OBELICS document (a missing column, texts and images not parallel, metadata "
            "that is not JSON, both or neither of text and image at a position)"
        ),
        **DOCUMENT_DROP_REASONS,
        "no_image_downloaded": (
            "no image of the document was downloaded and kept (each failed image is counted by reason in "
            "`meta.images_failed`: `download_failed:<category>`, `image_too_small`, ...)"
        ),
    }

    def __init__(self, source: Any) -> None:
        self.source = source

    def record_kind(self) -> str:
        return "interleaved"

    def input_identity(self) -> dict[str, Any]:
        """The sha256 of the files of the filters' model rules (``filters.document.lang_id.model`` -> digest),
        each loaded once here (a missing package or a missing or invalid model fails the plan on one line), and
        of the ``common_words`` list."""
        found = check_text_models(self.source.filters, f"sources.{self.source.name}.filters")
        identity = {f"filters.{name}": digest for name, digest in found.items()}
        if self.source.common_words:
            identity["common_words"] = file_sha256(self.source.common_words)
        return identity

    def _settings(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The source's settings by content, for cache keys: where its files are is left out (the corpus, the
        word list and the models count by their sha256), so moved inputs find their cached counts and images."""
        settings = self.source.model_dump(mode="json", exclude={"path", "cache_dir", "common_words"})
        for level in LEVELS:
            for rule, fields in MODEL_PATH_FIELDS.items():
                model = settings["filters"][level].get(rule)
                if isinstance(model, dict):
                    settings["filters"][level][rule] = {k: v for k, v in model.items() if k not in fields}
        return {**settings, "inputs": inputs}

    def plan(self) -> list[Partition]:
        src = self.source
        inputs = self.input_identity()  # first: a bad model fails before the corpus is read
        files = expand_inputs(src.path, self.input_suffixes, src.name)  # local Paths or URLs
        identity = files_identity(files)
        settings = self._settings(inputs)
        key: list[Any] = [identity, src.max_url_occurrences]
        if src.filters.mode == "original":  # counted over the first pass's survivors: depends on every filter
            wordlists = self._wordlists()
            key += [settings["filters"], {n: sorted(getattr(wordlists, n)) for n in WORDLIST_NAMES}, inputs]
        overused_name = f"{_short_hash(key)}.parquet"
        overused_path = source_cache(src) / "obelics-urls" / overused_name
        if not overused_path.is_file():
            overused_path.parent.mkdir(parents=True, exist_ok=True)
            limit = src.max_url_occurrences
            table = (
                self._count_urls(files, limit + 1, overused_path.with_suffix(f".work-{uuid.uuid4().hex[:8]}"))
                if limit
                else pa.table({"url": pa.array([], pa.string())})
            )
            tmp = overused_path.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")  # two plans at once never share one
            pq.write_table(table.select(["url"]), tmp)
            tmp.replace(overused_path)
        download_root = source_cache(src) / "obelics-download" / _short_hash([identity, settings])
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
        forget_changed()  # a model file replaced since this process loaded it is loaded again
        overused = set(pq.read_table(spec["overused"]).column("url").to_pylist())  # already only the overused
        wordlists = self._wordlists()
        kept: list[tuple[str, str, ObelicsDocument, Counter]] = []
        row_number, emitted = spec["first_row"], 0
        # 1. parse and clean every document (drops are final; survivors wait for their images)
        for batch in _document_batches(spec["file"], spec["row_groups"]):
            for row in batch:
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
        fetched, failures = self._fetched(out, urls)
        # 3. join back by URL
        tar_file = out / "00000.tar"
        tar_size = tar_file.stat().st_size if tar_file.is_file() else 0
        with tarfile.open(tar_file) if tar_file.is_file() else contextlib.nullcontext() as tar:
            members = {m.name: m for m in tar.getmembers()} if tar is not None else {}
            ext = src.download.encode_format
            for key, origin, doc, removed in kept:
                failed: Counter[str] = Counter()
                texts: list[str | None] = []
                images: list[bytes | None] = []
                for text, url in zip(doc.texts, doc.images, strict=True):
                    if text is not None:
                        if texts and texts[-1] is not None:
                            texts[-1] += PARAGRAPH_SEPARATOR + text
                        else:
                            texts.append(text)
                            images.append(None)
                        continue
                    assert url is not None  # an ObelicsDocument holds a text or an image at each position
                    member = members.get(f"{fetched[url]}.{ext}") if url in fetched else None
                    if member is None:
                        failed[failures.get(url, "download_missing")] += 1
                        continue
                    image = _image_bytes(tar, member, tar_size, failed)
                    if image is None:
                        continue
                    texts.append(None)
                    images.append(image)
                if not any(im is not None for im in images):
                    yield Drop("no_image_downloaded", src.name, origin, key, json.dumps(dict(failed)))
                    continue
                meta = {"url": doc.url, "images_failed": dict(failed), "removed": dict(removed)}
                record = InterleavedRecord.model_construct(
                    key=key, source=src.name, meta=meta, texts=texts, images=images
                )
                yield Sample(record, origin)

    def _wordlists(self) -> WordLists:
        wordlists = WordLists.default()
        if self.source.common_words:
            wordlists = wordlists.replace(common_words=WordLists.read(self.source.common_words))
        return wordlists

    def _count_urls(self, files: list[InputPath], min_count: int, work: Path) -> pa.Table:
        """The image URLs seen at least ``min_count`` times (``count_image_urls``): in every document, or with
        ``mode: original`` in the documents that pass ``original_first_pass``. DuckDB counts local files in place;
        the URL lists of first-pass survivors, and the ``images`` column of an object in a bucket (DuckDB's own S3
        reader is an extension it downloads at run time), are written to parquet files under ``work`` first."""
        original = self.source.filters.mode == "original"
        local = [f for f in files if isinstance(f, Path)]
        if not original and len(local) == len(files):
            return self._counted(local, min_count)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            counted: list[Path] = []
            for index, file in enumerate(files):
                if isinstance(file, Path) and not original:
                    counted.append(file)
                    continue
                out = work / f"{index:05d}.parquet"
                self._write_urls(file, out, original)
                counted.append(out)
            return self._counted(counted, min_count)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _counted(self, files: list[Path], min_count: int) -> pa.Table:
        import duckdb

        try:
            return count_image_urls(files, min_count=min_count)
        except duckdb.Error as exc:  # not OBELICS documents: no images column, a damaged file
            detail = str(exc).splitlines()[0][:300]
            raise CurationError(
                f"sources.{self.source.name}: cannot count the documents' image URLs: {detail}"
            ) from None

    def _write_urls(self, file: InputPath, out: Path, original: bool) -> None:
        """``file``'s image URLs as one ``images`` list per document: as stored, or (``original``) those of the
        documents ``original_first_pass`` keeps."""
        schema = pa.schema([("images", pa.list_(pa.string()))])
        wordlists = self._wordlists() if original else None
        try:
            with parquet_input(file) as source, pq.ParquetWriter(out, schema) as writer:
                columns = None if original else ["images"]
                threads = not is_url(str(file))  # from a bucket: chunks in order, one read-ahead serving the next
                for batch in streaming(source).iter_batches(batch_size=256, columns=columns, use_threads=threads):
                    if wordlists is None:
                        writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                        continue
                    urls = [self._first_pass_urls(row, wordlists) for row in batch.to_pylist()]
                    writer.write_table(pa.table({"images": urls}, schema=schema))
        except (pa.ArrowException, OSError) as exc:
            raise CurationError(f"sources.{self.source.name}: cannot read the image URLs of {file}: {exc}") from None

    def _first_pass_urls(self, row: dict[str, Any], wordlists: WordLists) -> list[str]:
        try:
            doc = ObelicsDocument.from_row(row)
        except ValueError:
            return []  # an invalid_document: never counted
        first, _, _ = original_first_pass(doc, self.source.filters, wordlists)
        return [] if first is None else [url for url in first.images if url is not None]

    def _fetched(self, out: Path, urls: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """url -> img2dataset key of the successes; url -> reason of the failures. A downloaded image whose real
        size fails the image rules fails too (the metadata has the sizes the crawl saw, not what came back)."""
        table = out / "00000.parquet"
        if not (out / "00000_stats.json").is_file() or not table.is_file():
            return {}, dict.fromkeys(urls, "download_failed:no_output")
        fetched, failures = {}, {}
        for row in pq.read_table(table).to_pylist():
            url = row["url"]
            failure = row_failure(row)
            filters = self.source.filters
            if failure is None and (reason := check_image(_real_size(row), filters.image, mode=filters.mode)):
                failure = reason, "real size"
            if failure is None:
                fetched[url] = row["key"]
            else:
                failures[url] = failure[0]
        return fetched, failures


def _document_batches(file: str, row_groups: list[int]) -> Iterator[list[dict[str, Any]]]:
    """The rows of some row groups of a local file or an object in a bucket (read by ranges), in batches."""
    with parquet_input(file) as source:
        batches = streaming(source).iter_batches(batch_size=256, row_groups=row_groups, use_threads=not is_url(file))
        for batch in batches:
            yield batch.to_pylist()


def _real_size(row: dict[str, Any]) -> dict[str, Any]:
    """The decoded size img2dataset recorded, as image metadata (no format: the bytes decoded)."""
    return {"original_width": row.get("original_width"), "original_height": row.get("original_height")}


def _image_bytes(tar: Any, member: Any, tar_size: int, failed: Counter[str]) -> bytes | None:
    """The member's bytes, or None when it cannot be read (counted in ``failed``)."""
    try:
        return read_member(tar, member, tar_size, MAX_MEMBER_BYTES)
    except (MemberError, tarfile.ReadError) as exc:  # not a regular file, too large, or cut off
        failed[exc.reason if isinstance(exc, MemberError) else "shard_damaged"] += 1
        return None
