"""An existing img2dataset download as a source (``reader: img2dataset``): LAION, COYO or DataComp subsets
that someone already fetched with img2dataset, read as ``pair`` records with every URL accounted for.

img2dataset writes, per shard ``NNNNN`` of its output folder, ``NNNNN.parquet`` with EVERY input row
(``url``, ``caption``, ``key``, ``status``, ``error_message``, sizes, ``exif``, the hash, extra columns),
``NNNNN_stats.json`` once the shard is done, and the images in one of three layouts (``format``):

- ``webdataset``: ``NNNNN.tar`` with ``KEY.<ext>`` (+ ``KEY.txt``, ``KEY.json``) for the successes only;
- ``parquet``: the images are a binary column (``jpg``, ``png`` or ``webp``) of ``NNNNN.parquet`` itself;
- ``files``: a folder ``NNNNN/`` with ``KEY.<ext>`` (+ ``KEY.txt``, ``KEY.json``) for the successes.

One partition per shard: its parquet's rows in parquet order (img2dataset writes them in completion order),
counted from the parquet footer at plan time, plus the rows its ``_stats.json`` counts that the parquet lacks
(img2dataset writes no row for a sample whose writing raised). A success becomes a ``pair`` record; a failed
row a drop with img2dataset's status and error (``curation.sources.download.failures.row_failure``), so that
samples + drops = the URLs img2dataset was given. The tar is untrusted input: its headers are indexed once,
only the members of the shard's successes are kept, and each is read through ``shards.reader.read_member``
(regular files only, size checked against a cap and against the file before it is read). A shard whose
parquet is missing or unreadable is a plan-time error; a tar that is gone or cut off gives drops for the rows
it cannot give.

The tar is read lazily, forward: a row's member is looked for by reading headers on from where the last look
stopped (remembering the successes' members it passes), so a tar whose members are in parquet order, as
img2dataset writes them, is read once, in order.

The folder may be a prefix in a bucket (``s3://bucket/downloads``), read in place: its top level is listed once
(``curation.storage.inputs.list_top``: never the millions of images of a ``files`` download), the parquet files by
ranges, a tar streamed, a ``files`` shard folder listed once and each image read with its size checked first. The
build is the one the same folder on local disk gives; the plan identifies the parquet and stats objects by their
(size, ETag).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.recipe.sources import Img2datasetSource
from curation.sample import Drop, Sample
from curation.sources.base import (
    IMAGE_FILE_DROP_REASONS,
    RECORD_DROP_REASONS,
    InputPath,
    Partition,
    Reader,
    image_file_drop_reason,
    load_image_file,
    sanitize_key,
    to_jsonable,
)
from curation.sources.download.failures import DOWNLOAD_DROP_REASONS, row_failure
from curation.sources.parquet import open_parquet, row_batches
from curation.storage.inputs import SMALL_BLOCK, list_top, object_info, open_url, parse_input, read_object
from curation.storage.urls import is_url
from schemas import RecordError, parse_record
from shards.reader import MAX_MEMBER_BYTES, ClampedFile, MemberError, open_regular, read_member

IMAGE_EXTS = ("jpg", "png", "webp")  # img2dataset's encode formats: the tar member / file extension, the column
HASH_COLUMNS = ("sha256", "md5", "sha512")  # img2dataset's compute_hash
SIZE_COLUMNS = ("width", "height", "original_width", "original_height")
# Columns img2dataset writes itself; any other column came from save_additional_columns.
OWN_COLUMNS = frozenset(
    {"url", "caption", "key", "status", "error_message", "exif", "txt", "json", "__index_level_0__"}
    | set(SIZE_COLUMNS)
    | set(HASH_COLUMNS)
    | set(IMAGE_EXTS)
)
MAX_META_CHARS = 4096  # a meta value (exif, an extra column) is kept when its JSON is at most this long ...
MAX_EXTRA_COLUMNS = 32  # ... and at most this many extra columns are kept
MAX_STATS_BYTES = 1 << 20  # a shard's _stats.json is a few hundred bytes
RAW_CHARS = 1000  # of a failed row's url and caption, kept with its drop
IMAGE_BATCH_ROWS = 16  # rows per batch where the parquet holds the images (the parquet format)
_SHARD_FILE = re.compile(r"^(\d+)(\.parquet|\.tar|_stats\.json|\.tfrecord)$")
_SHARD_DIR = re.compile(r"^\d+$")
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


@dataclass
class _Layout:
    """What the top level of a folder holds, by shard name (``00000``)."""

    parquet: set[str] = field(default_factory=set)
    tar: set[str] = field(default_factory=set)
    stats: set[str] = field(default_factory=set)
    tfrecord: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def looks_like_img2dataset(self) -> bool:
        return bool(self.stats) or (bool(self.parquet) and bool(self.tar | self.folders | self.tfrecord))


def scan_layout(root: Path) -> _Layout:
    """The img2dataset shard files directly in ``root`` (never recursive: a ``files`` download holds
    millions of files in its shard folders)."""
    layout = _Layout()
    with os.scandir(root) as entries:
        for entry in entries:
            if _SHARD_FILE.match(entry.name) is not None:
                _add_file(layout, entry.name)
            elif _SHARD_DIR.match(entry.name) and entry.is_dir():
                layout.folders.add(entry.name)
    return layout


def scan_url_layout(names: list[str], folders: list[str]) -> _Layout:
    """``scan_layout`` of a prefix in a bucket, from its top-level listing (``list_top``): the shard folders of
    a ``files`` download are its common prefixes."""
    layout = _Layout()
    for name in names:
        _add_file(layout, name)
    layout.folders.update(f for f in folders if _SHARD_DIR.match(f))
    return layout


def _add_file(layout: _Layout, name: str) -> None:
    if (m := _SHARD_FILE.match(name)) is not None:
        getattr(layout, {".parquet": "parquet", ".tar": "tar", "_stats.json": "stats"}.get(m[2], "tfrecord")).add(m[1])


def looks_like_img2dataset(path: str | Path) -> bool:
    """Whether ``path`` is a folder (or a prefix in a bucket) that looks like img2dataset output (for the hints
    of other readers)."""
    try:
        if is_url(path):
            return scan_url_layout(*list_top(str(path))).looks_like_img2dataset()
        return Path(path).is_dir() and scan_layout(Path(path)).looks_like_img2dataset()
    except (OSError, CurationError):
        return False


class Img2datasetReader(Reader):
    config = Img2datasetSource
    drop_reasons: ClassVar[dict[str, str]] = {
        "download_failed:": DOWNLOAD_DROP_REASONS["download_failed:"],
        "resize_failed": "img2dataset's failed_to_resize: it could not decode or resize the body (not an image)",
        "download_missing": (
            "a success whose image is not in the shard's tar, folder or parquet column (the tar or folder may be "
            "gone), or a row the shard's _stats.json counts that its parquet lacks"
        ),
        "shard_damaged": (
            "a success whose image lies where img2dataset's tar is cut off, garbled or unreadable (the tar is read "
            "up to the damage)"
        ),
        "file_unreadable": "a damaged page of a shard's parquet: the rest of the shard's rows",
        "not_a_regular_file": "the image is a link, device or FIFO (a tar member or a file of a folder); never read",
        "member_too_large": f"an image tar member or parquet value over {MAX_MEMBER_BYTES >> 30} GiB; never read",
        "image_file_too_large": IMAGE_FILE_DROP_REASONS["image_file_too_large"],
        "unreadable_image_file": IMAGE_FILE_DROP_REASONS["unreadable_image_file"],
        **RECORD_DROP_REASONS,
    }

    reads_urls = True  # the top level listed once, parquet by ranges, tars streamed, images read one GET each

    def __init__(self, source: Img2datasetSource) -> None:
        self.source = source
        self.root = Path(source.path)  # a local folder (never a URL: a Path collapses its "//")
        # A prefix in a bucket, as the build's relocation names it: file names are joined to it as strings.
        self.url = parse_input(source.path, f"sources.{source.name}.path").url if is_url(source.path) else None

    @property
    def location(self) -> str:
        """The folder or prefix, as errors name it."""
        return self.url if self.url is not None else str(self.root)

    def _at(self, name: str) -> InputPath:
        """A file of the folder: a Path locally, a URL (str) in a bucket."""
        return f"{self.url}/{name}" if self.url is not None else self.root / name

    def _layout(self) -> _Layout | None:
        """The folder's top level; None when there is no such folder (or prefix)."""
        if self.url is None:
            return scan_layout(self.root) if self.root.is_dir() else None
        names, folders = list_top(self.url)
        return scan_url_layout(names, folders) if names or folders else None

    def record_kind(self) -> str:
        return "pair"

    # ---- plan --------------------------------------------------------------------------------------------
    def plan(self) -> list[Partition]:
        src, root = self.source, self.location
        where = f"sources.{src.name}.path"
        layout = self._layout()
        if layout is None:
            if self.url is not None:
                what = "an object, not a prefix" if object_info(self.url) is not None else "no such object or prefix"
            else:
                what = "no such directory" if not self.root.exists() else "not a directory"
            raise CurationError(f"{where}: {root}: {what} (reader: img2dataset reads img2dataset's output folder)")
        if not layout.looks_like_img2dataset():
            hint = " (a dataset built by this toolkit: use reader: shards)" if self._has_manifest() else ""
            raise CurationError(
                f"{where}: {root} is not img2dataset output: no NNNNN_stats.json, or NNNNN.parquet next to "
                f"NNNNN.tar files or NNNNN/ folders{hint}"
            )
        fmt = self._format(layout)
        data = {"webdataset": layout.tar, "files": layout.folders, "parquet": set()}[fmt]
        names = sorted(layout.parquet | layout.stats | data, key=lambda s: (int(s), s))
        parts = []
        for shard in names:
            parquet = f"{shard}.parquet"
            if shard not in layout.parquet:
                have = ", ".join(
                    n for n in (f"{shard}_stats.json", f"{shard}.tar", f"{shard}/") if self._exists(layout, shard, n)
                )
                raise CurationError(
                    f"{where}: shard {shard} has no {parquet} (found {have}): img2dataset's per-shard parquet lists "
                    "every row and its status; without it the shard cannot be accounted for"
                )
            meta = open_parquet(self._at(parquet), src.name)
            columns = set(meta.schema_arrow.names)
            spec: dict[str, Any] = {"shard": shard, "file": parquet, "format": fmt, "bytes": _size(self._at(parquet))}
            if fmt == "parquet":
                image_column = next((c for c in IMAGE_EXTS if c in columns), None)
                if image_column is None:
                    raise CurationError(
                        f"{where}: {self._at(parquet)} has no image column ({', '.join(IMAGE_EXTS)}): not the parquet "
                        "output format of img2dataset"
                    )
                spec["image_column"] = image_column
            missing = [c for c in ("url", "key", "status") if c not in columns]
            if missing:
                what = f"has no {', '.join(missing)} column: not img2dataset's"
                raise CurationError(f"{where}: {self._at(parquet)} {what}")
            rows = meta.metadata.num_rows
            counted = _stats_count(self._at(f"{shard}_stats.json")) if self._may_have_stats(layout, shard) else None
            spec["unlisted"] = max(0, (counted or 0) - rows)  # rows img2dataset counted but wrote no parquet row for
            parts.append(Partition(src.name, len(parts), rows + spec["unlisted"], spec))
        return parts

    def identity_files(self) -> Sequence[InputPath] | None:
        """The per-shard parquet and stats files: they list every row with its status and the image's sha256 where
        img2dataset computed one; the tars and image folders (the bulk) are not hashed into the plan. In a bucket,
        always these objects (identified by (size, ETag), never read): every object under the prefix would be
        the millions of images of a ``files`` download."""
        layout = self._layout()
        if layout is None:
            return None  # the plan names the problem
        names = [f"{s}.parquet" for s in layout.parquet] + [f"{s}_stats.json" for s in layout.stats]
        if self.url is not None:
            return sorted(f"{self.url}/{name}" for name in names)
        if self._format(layout) == "parquet":
            return None  # the images are in the parquet files
        return sorted(self.root / name for name in names)

    def _has_manifest(self) -> bool:
        if self.url is not None:
            return object_info(f"{self.url}/dataset.json") is not None
        return (self.root / "dataset.json").is_file()

    def _exists(self, layout: _Layout, shard: str, name: str) -> bool:
        if self.url is None:
            return _exists(self.root, name)
        return shard in {f"{shard}_stats.json": layout.stats, f"{shard}.tar": layout.tar}.get(name, layout.folders)

    def _may_have_stats(self, layout: _Layout, shard: str) -> bool:
        """Whether to read the shard's stats file: locally always (a missing one reads as none); in a bucket only
        when the listing has it (no request for an object that is not there)."""
        return self.url is None or shard in layout.stats

    def _format(self, layout: _Layout) -> str:
        chosen = self.source.format
        if layout.tfrecord and chosen == "auto":
            raise CurationError(
                f"sources.{self.source.name}.path: {self.location} holds img2dataset's tfrecord output, which is not "
                "read: download as webdataset, parquet or files"
            )
        if chosen != "auto":
            return chosen
        if layout.tar:
            return "webdataset"
        if layout.folders:
            return "files"
        return "parquet"  # the plan checks that each parquet has the image column

    def partition_origin(self, partition: Partition) -> str:
        return str(self._at(partition.spec["file"]))  # the build records it relative to its input root

    # ---- read --------------------------------------------------------------------------------------------
    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec, name = partition.spec, self.source.name
        fmt, shard, parquet = spec["format"], spec["shard"], spec["file"]
        path = str(self._at(parquet))
        groups = _all_row_groups(self._at(parquet), name)
        images: _Images
        if fmt == "webdataset":
            images = _TarImages(self._at(f"{shard}.tar"), f"{shard}.tar", self._success_keys(parquet, groups))
        elif fmt == "files":
            images = _FolderImages(self.root, shard) if self.url is None else _ObjectImages(self.url, shard)
        else:
            images = _ColumnImages(spec["image_column"])
        emitted = 0
        with images:
            for rows in row_batches(path, groups, batch_size=_batch_rows(fmt)):
                if isinstance(rows, str):  # a damaged parquet page: the rest of the shard's rows, counted
                    n = partition.rows - emitted
                    if n > 0:
                        yield Drop("file_unreadable", name, path, None, rows, count=n)
                    return
                for row in rows:
                    if emitted >= partition.rows:  # a --limit can cut a partition short
                        return
                    yield self._item(row, shard, f"{path}#{emitted}", images)
                    emitted += 1
        if emitted < partition.rows:  # rows _stats.json counts that the parquet lacks
            n = min(spec.get("unlisted", 0), partition.rows - emitted)
            if n > 0:
                detail = f"{shard}_stats.json counts {n} more rows than {parquet} lists"
                yield Drop("download_missing", name, str(self._at(f"{shard}_stats.json")), None, detail, count=n)

    def _success_keys(self, parquet: str, groups: list[int]) -> set[str]:
        """The img2dataset keys of the shard's successes: the tar members worth remembering."""
        keys: set[str] = set()
        for rows in row_batches(str(self._at(parquet)), groups, ["key", "status"]):
            if isinstance(rows, str):
                break  # the main pass meets the same damage and counts it
            keys.update(str(r["key"]) for r in rows if r.get("status") == "success" and r.get("key") is not None)
        return keys

    def _item(self, row: dict[str, Any], shard: str, origin: str, images: _Images) -> Sample | Drop:
        name = self.source.name
        i2d_key = row.get("key")
        key_ok = isinstance(i2d_key, str) and _KEY_OK.match(i2d_key) is not None
        key = sanitize_key(f"{name}-{shard}-{i2d_key}") if key_ok else None
        if (failure := row_failure(row)) is not None:
            return Drop(failure[0], name, origin, key, failure[1], raw=_raw(row))
        if not key_ok:
            detail = f"img2dataset key {str(i2d_key)[:100]!r} is not a plain name (digits, letters, '_', '-')"
            return Drop("invalid_record:key", name, origin, None, detail, raw=_raw(row))
        assert isinstance(i2d_key, str)
        try:
            image = images.get(i2d_key, row)
        except _NoImage as exc:
            return Drop(exc.reason, name, origin, key, exc.detail)
        caption = row.get("caption")
        data = {
            "key": key,
            "source": name,
            "meta": _meta(row, shard),
            "image": image,
            "caption": "" if caption is None else str(caption),
        }
        try:
            record = parse_record("pair", data)
        except RecordError as exc:
            return Drop(exc.drop_reason, name, origin, key, str(exc)[:500])
        return Sample(record, origin)


# ---- where the images are ------------------------------------------------------------------------------
class _NoImage(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:500]


class _Images(contextlib.AbstractContextManager):
    def get(self, key: str, row: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        return None


class _ColumnImages(_Images):
    """``format: parquet``: the image is a value of the row."""

    def __init__(self, column: str) -> None:
        self.column = column

    def get(self, key: str, row: dict[str, Any]) -> bytes:
        value = row.get(self.column)
        if not isinstance(value, bytes) or not value:
            raise _NoImage("download_missing", f"img2dataset listed a success with no {self.column!r} value")
        if len(value) > MAX_MEMBER_BYTES:
            raise _NoImage("member_too_large", f"{self.column!r} value of {len(value):,} bytes")
        return value


class _FolderImages(_Images):
    """``format: files``: ``NNNNN/KEY.<ext>``, each checked before it is read (``load_image_file``); img2dataset
    writes no links, and a symlinked image is never followed (as tar members, it could name any file)."""

    def __init__(self, root: Path, shard: str) -> None:
        self.root, self.shard = root, shard

    def get(self, key: str, row: dict[str, Any]) -> bytes:
        for ext in IMAGE_EXTS:
            path, rel = self.root / self.shard / f"{key}.{ext}", f"{self.shard}/{key}.{ext}"
            try:
                if stat.S_ISLNK(path.lstat().st_mode):
                    raise _NoImage("not_a_regular_file", f"{rel} is a symlink; never followed")
                return load_image_file(str(path), None)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _NoImage(image_file_drop_reason(exc), str(exc).replace(str(path), rel)) from None
        detail = f"img2dataset listed a success without its file {self.shard}/{key}.{{{','.join(IMAGE_EXTS)}}}"
        raise _NoImage("download_missing", detail)


class _ObjectImages(_Images):
    """``format: files`` in a bucket: the shard folder ``NNNNN/`` listed once (its direct objects), then each image
    read with one GET, its size checked before its body (``load_image_file`` under the URL: the cap and drop
    reasons of a local file). A bucket has no links or FIFOs; an object gone since the listing is missing."""

    def __init__(self, root: str, shard: str) -> None:
        self.root, self.shard = root, shard
        self.names: set[str] | None = None  # listed at the first image asked for

    def get(self, key: str, row: dict[str, Any]) -> bytes:
        if self.names is None:
            self.names = set(list_top(f"{self.root}/{self.shard}", remember=False)[0])
        for ext in IMAGE_EXTS:
            name = f"{key}.{ext}"
            if name not in self.names:
                continue
            rel = f"{self.shard}/{name}"
            try:
                return load_image_file(rel, self.root)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _NoImage(image_file_drop_reason(exc), str(exc).replace(f"{self.root}/{rel}", rel)) from None
        detail = f"img2dataset listed a success without its file {self.shard}/{key}.{{{','.join(IMAGE_EXTS)}}}"
        raise _NoImage("download_missing", detail)


class _TarImages(_Images):
    """``format: webdataset``: the members ``KEY.<ext>`` of ``NNNNN.tar`` (a local file or an object streamed
    from a bucket), each read only after ``read_member``'s checks. The headers are read lazily: a row's member is
    looked for from where the last look stopped, remembering the successes' members passed on the way, so a tar
    in parquet order (img2dataset writes both in completion order) is read once, forward. A member not found is
    ``shard_damaged`` when the tar is damaged before its end (all before the damage is still read), else
    ``download_missing``. Where a key has two image members (img2dataset writes one), the first in the tar is
    read."""

    def __init__(self, path: InputPath, tar_name: str, keys: set[str]) -> None:
        self.name = tar_name
        self.wanted = {f"{k}.{ext}" for k in keys for ext in IMAGE_EXTS}
        self.members: dict[str, tarfile.TarInfo] = {}  # the wanted members passed so far
        self.problem: tuple[str, str] | None = None  # (reason, detail) for members not found
        self.ended = False  # the headers were read to the end of the archive (or to the damage)
        self.files = contextlib.ExitStack()
        self.raw: BinaryIO | None = None
        self.tar: tarfile.TarFile | None = None
        self.size = 0
        try:
            if isinstance(path, str):
                self.raw = cast(BinaryIO, self.files.enter_context(open_url(path)))
            else:
                self.raw = self.files.enter_context(open_regular(path))
        except FileNotFoundError:
            self._stop("download_missing", f"{tar_name} is missing")
            return
        except OSError as exc:
            self._stop("shard_damaged", f"{tar_name}: cannot read it ({exc.strerror or exc})")
            return
        clamped = ClampedFile(self.raw)
        self.size = clamped.size
        try:
            self.tar = tarfile.open(fileobj=cast(BinaryIO, clamped), mode="r:")  # noqa: SIM115 - closed in __exit__
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._damaged(exc)
            return
        except BaseException:  # a failing store (a one-line CurationError): nothing left open
            self.files.close()
            raise
        self.files.callback(self.tar.close)

    def _stop(self, reason: str, detail: str) -> None:
        self.problem, self.ended = (reason, detail), True

    def _damaged(self, exc: BaseException) -> None:
        self._stop("shard_damaged", f"{self.name}: damaged after {len(self.members)} images ({exc})")

    def _find(self, names: list[str]) -> tarfile.TarInfo | None:
        """The first of ``names`` among the members: one passed already, else the next headers are read until it
        comes (or the archive ends)."""
        for n in names:
            if n in self.members:
                return self.members[n]
        while not self.ended:
            assert self.tar is not None and self.raw is not None  # opened, else ended
            try:
                info = self.tar.next()
                self.tar.members.clear()  # pyright: ignore[reportAttributeAccessIssue] - tarfile keeps each header
                if info is None:
                    self.ended = True
                    # tarfile stops silently at a cut; a whole tar ends with a zero block
                    self.raw.seek(self.tar.offset)
                    if self.raw.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                        raise tarfile.ReadError("no end-of-archive marker (cut off)")
                    return None
            except (tarfile.TarError, OSError, EOFError) as exc:
                self._damaged(exc)
                return None
            if info.name in self.wanted:
                self.members.setdefault(info.name, info)  # a name twice (img2dataset writes it once): the first
                if info.name in names:
                    return self.members[info.name]
        return None

    def get(self, key: str, row: dict[str, Any]) -> bytes:
        info = self._find([f"{key}.{ext}" for ext in IMAGE_EXTS])
        if info is None:
            if self.problem is not None:
                raise _NoImage(*self.problem)
            raise _NoImage("download_missing", f"img2dataset listed a success without its member in {self.name}")
        assert self.tar is not None  # members come from it
        try:
            return read_member(self.tar, info, self.size, MAX_MEMBER_BYTES)
        except MemberError as exc:  # not a regular file, or over the cap
            raise _NoImage(exc.reason, f"{self.name}: {exc}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:  # runs past the end of the file
            raise _NoImage("shard_damaged", f"{self.name}: {exc}") from None

    def __exit__(self, *exc: object) -> None:
        self.files.close()


# ---- helpers ---------------------------------------------------------------------------------------------
def _meta(row: dict[str, Any], shard: str) -> dict[str, Any]:
    """A bounded, JSON-able subset of the row: url, img2dataset's key and shard, sizes, hash, exif (a JSON
    string, when at most MAX_META_CHARS), and up to MAX_EXTRA_COLUMNS extra columns (each when its JSON is at
    most MAX_META_CHARS); the names of extra columns left out are listed in ``omitted``."""
    meta: dict[str, Any] = {"url": row.get("url"), "img2dataset_key": row.get("key"), "shard": shard}
    for c in (*SIZE_COLUMNS, *HASH_COLUMNS):
        value = row.get(c)
        if isinstance(value, int | str) and not isinstance(value, bool) and len(str(value)) <= 128:
            meta[c] = value
    omitted = []
    exif = row.get("exif")
    if isinstance(exif, str) and exif:
        if len(exif) <= MAX_META_CHARS:
            meta["exif"] = exif
        else:
            omitted.append("exif")
    extras = [c for c in row if c not in OWN_COLUMNS and c not in meta and c != "omitted"]
    for i, c in enumerate(extras):
        value = to_jsonable(row[c])
        if i < MAX_EXTRA_COLUMNS and len(json.dumps(value)) <= MAX_META_CHARS:
            meta[c] = value
        else:
            omitted.append(c)
    if omitted:
        meta["omitted"] = omitted[:MAX_EXTRA_COLUMNS]
    return {k: v for k, v in meta.items() if v is not None}


def _raw(row: dict[str, Any]) -> dict[str, Any]:
    """What a failed row's drop keeps (in rejects/): its URL, key and caption, cut short."""
    out = {"url": row.get("url"), "img2dataset_key": row.get("key"), "caption": row.get("caption")}
    return {k: (v[:RAW_CHARS] if isinstance(v, str) else to_jsonable(v)) for k, v in out.items() if v is not None}


def _batch_rows(fmt: str) -> int:
    return IMAGE_BATCH_ROWS if fmt == "parquet" else 512


def _all_row_groups(path: InputPath, source: str) -> list[int]:
    if isinstance(path, str):  # the footer of an object; a failing store is a CurationError, never a lost shard
        try:
            with open_url(path, SMALL_BLOCK) as f:
                return list(range(pq.read_metadata(f).num_row_groups))
        except (pa.ArrowException, OSError):
            return []
    try:
        return list(range(open_parquet(path, source).metadata.num_row_groups))
    except CurationError:
        return []  # changed since the plan: the read stage counts the rows as missing


def _size(path: InputPath) -> int:
    if isinstance(path, str):
        info = object_info(path)
        if info is None:
            raise CurationError(f"{path}: no such object")
        return info.size
    return path.stat().st_size


def _exists(root: Path, name: str) -> bool:
    return (root / name.rstrip("/")).exists()


def _stats_count(path: InputPath) -> int | None:
    """The ``count`` of a shard's ``_stats.json`` (the rows img2dataset was given), or None when there is no
    readable one (a shard without stats is read from its parquet alone)."""
    try:
        if isinstance(path, str):
            doc = json.loads(read_object(path, MAX_STATS_BYTES))
        else:
            with open_regular(path) as f:
                doc = json.loads(f.read(MAX_STATS_BYTES + 1)[:MAX_STATS_BYTES])
    except (OSError, ValueError):
        return None
    count = doc.get("count") if isinstance(doc, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 1 << 40 else None


__all__ = ["Img2datasetReader", "looks_like_img2dataset"]
