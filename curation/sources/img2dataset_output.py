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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

from curation.errors import CurationError
from curation.recipe.sources import Img2datasetSource
from curation.sample import Drop, Sample
from curation.sources.base import (
    IMAGE_FILE_DROP_REASONS,
    RECORD_DROP_REASONS,
    Partition,
    Reader,
    image_file_drop_reason,
    load_image_file,
    sanitize_key,
    to_jsonable,
)
from curation.sources.download.failures import DOWNLOAD_DROP_REASONS, row_failure
from curation.sources.parquet import open_parquet, row_batches
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
            if (m := _SHARD_FILE.match(entry.name)) is not None:
                getattr(
                    layout, {".parquet": "parquet", ".tar": "tar", "_stats.json": "stats"}.get(m[2], "tfrecord")
                ).add(m[1])
            elif _SHARD_DIR.match(entry.name) and entry.is_dir():
                layout.folders.add(entry.name)
    return layout


def looks_like_img2dataset(path: str | Path) -> bool:
    """Whether ``path`` is a folder that looks like img2dataset output (for the hints of other readers)."""
    try:
        return Path(path).is_dir() and scan_layout(Path(path)).looks_like_img2dataset()
    except OSError:
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

    def __init__(self, source: Img2datasetSource) -> None:
        self.source = source
        self.root = Path(source.path)

    def record_kind(self) -> str:
        return "pair"

    # ---- plan --------------------------------------------------------------------------------------------
    def plan(self) -> list[Partition]:
        src, root = self.source, self.root
        where = f"sources.{src.name}.path"
        if not root.is_dir():
            what = "no such directory" if not root.exists() else "not a directory"
            raise CurationError(f"{where}: {root}: {what} (reader: img2dataset reads img2dataset's output folder)")
        layout = scan_layout(root)
        if not layout.looks_like_img2dataset():
            hint = " (a dataset built by this toolkit: use reader: shards)" if (root / "dataset.json").is_file() else ""
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
                have = ", ".join(n for n in (f"{shard}_stats.json", f"{shard}.tar", f"{shard}/") if _exists(root, n))
                raise CurationError(
                    f"{where}: shard {shard} has no {parquet} (found {have}): img2dataset's per-shard parquet lists "
                    "every row and its status; without it the shard cannot be accounted for"
                )
            meta = open_parquet(root / parquet, src.name)
            columns = set(meta.schema_arrow.names)
            spec: dict[str, Any] = {"shard": shard, "file": parquet, "format": fmt, "bytes": _size(root / parquet)}
            if fmt == "parquet":
                image_column = next((c for c in IMAGE_EXTS if c in columns), None)
                if image_column is None:
                    raise CurationError(
                        f"{where}: {root / parquet} has no image column ({', '.join(IMAGE_EXTS)}): not the parquet "
                        "output format of img2dataset"
                    )
                spec["image_column"] = image_column
            missing = [c for c in ("url", "key", "status") if c not in columns]
            if missing:
                raise CurationError(f"{where}: {root / parquet} has no {', '.join(missing)} column: not img2dataset's")
            rows = meta.metadata.num_rows
            counted = _stats_count(root / f"{shard}_stats.json")
            spec["unlisted"] = max(0, (counted or 0) - rows)  # rows img2dataset counted but wrote no parquet row for
            parts.append(Partition(src.name, len(parts), rows + spec["unlisted"], spec))
        return parts

    def identity_files(self) -> list[Path] | None:
        """The per-shard parquet and stats files: they list every row with its status and the image's sha256 where
        img2dataset computed one; the tars and image folders (the bulk) are not hashed into the plan."""
        if not self.root.is_dir():
            return None  # the plan names the problem
        layout = scan_layout(self.root)
        if self._format(layout) == "parquet":
            return None  # the images are in the parquet files
        names = [f"{s}.parquet" for s in layout.parquet] + [f"{s}_stats.json" for s in layout.stats]
        return sorted(self.root / name for name in names)

    def _format(self, layout: _Layout) -> str:
        chosen = self.source.format
        if layout.tfrecord and chosen == "auto":
            raise CurationError(
                f"sources.{self.source.name}.path: {self.root} holds img2dataset's tfrecord output, which is not read: "
                "download as webdataset, parquet or files"
            )
        if chosen != "auto":
            return chosen
        if layout.tar:
            return "webdataset"
        if layout.folders:
            return "files"
        return "parquet"  # the plan checks that each parquet has the image column

    def partition_origin(self, partition: Partition) -> str:
        return str(self.root / partition.spec["file"])  # the build records it relative to its input root

    # ---- read --------------------------------------------------------------------------------------------
    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec, name = partition.spec, self.source.name
        fmt, shard, parquet = spec["format"], spec["shard"], spec["file"]
        groups = _all_row_groups(self.root / parquet, name)
        images: _Images
        if fmt == "webdataset":
            images = _TarImages(self.root, f"{shard}.tar", self._success_keys(parquet, groups))
        elif fmt == "files":
            images = _FolderImages(self.root, shard)
        else:
            images = _ColumnImages(spec["image_column"])
        emitted = 0
        with images:
            for rows in row_batches(str(self.root / parquet), groups, batch_size=_batch_rows(fmt)):
                if isinstance(rows, str):  # a damaged parquet page: the rest of the shard's rows, counted
                    n = partition.rows - emitted
                    if n > 0:
                        yield Drop("file_unreadable", name, str(self.root / parquet), None, rows, count=n)
                    return
                for row in rows:
                    if emitted >= partition.rows:  # a --limit can cut a partition short
                        return
                    yield self._item(row, shard, f"{self.root / parquet}#{emitted}", images)
                    emitted += 1
        if emitted < partition.rows:  # rows _stats.json counts that the parquet lacks
            n = min(spec.get("unlisted", 0), partition.rows - emitted)
            if n > 0:
                detail = f"{shard}_stats.json counts {n} more rows than {parquet} lists"
                yield Drop("download_missing", name, str(self.root / f"{shard}_stats.json"), None, detail, count=n)

    def _success_keys(self, parquet: str, groups: list[int]) -> set[str]:
        """The img2dataset keys of the shard's successes: the tar members worth indexing."""
        keys: set[str] = set()
        for rows in row_batches(str(self.root / parquet), groups, ["key", "status"]):
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


class _TarImages(_Images):
    """``format: webdataset``: the members ``KEY.<ext>`` of ``NNNNN.tar``, indexed once by their headers (only
    the successes' members are kept), each read only after ``read_member``'s checks."""

    def __init__(self, root: Path, tar_name: str, keys: set[str]) -> None:
        self.name = tar_name
        self.members: dict[str, tarfile.TarInfo] = {}
        self.problem: tuple[str, str] | None = None  # (reason, detail) for members not found
        self.raw: BinaryIO | None = None
        self.tar: tarfile.TarFile | None = None
        self.size = 0
        try:
            self.raw = open_regular(root / tar_name)
        except FileNotFoundError:
            self.problem = ("download_missing", f"{tar_name} is missing")
            return
        except OSError as exc:
            self.problem = ("shard_damaged", f"{tar_name}: cannot read it ({exc.strerror or exc})")
            return
        clamped = ClampedFile(self.raw)
        self.size = clamped.size
        wanted = {f"{k}.{ext}" for k in keys for ext in IMAGE_EXTS}
        try:
            self.tar = tarfile.open(fileobj=cast(BinaryIO, clamped), mode="r:")  # noqa: SIM115 - closed in __exit__
            while (info := self.tar.next()) is not None:
                self.tar.members.clear()  # pyright: ignore[reportAttributeAccessIssue] - tarfile keeps each header
                if info.name in wanted:
                    self.members[info.name] = info
            self.raw.seek(self.tar.offset)  # tarfile stops silently at a cut; a whole tar ends with a zero block
            if self.raw.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker (cut off)")
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.problem = ("shard_damaged", f"{tar_name}: damaged after {len(self.members)} images ({exc})")

    def get(self, key: str, row: dict[str, Any]) -> bytes:
        info = next((self.members[n] for ext in IMAGE_EXTS if (n := f"{key}.{ext}") in self.members), None)
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
        if self.tar is not None:
            self.tar.close()
        if self.raw is not None:
            self.raw.close()


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


def _all_row_groups(path: Path, source: str) -> list[int]:
    try:
        return list(range(open_parquet(path, source).metadata.num_row_groups))
    except CurationError:
        return []  # changed since the plan: the read stage counts the rows as missing


def _size(path: Path) -> int:
    return path.stat().st_size


def _exists(root: Path, name: str) -> bool:
    return (root / name.rstrip("/")).exists()


def _stats_count(path: Path) -> int | None:
    """The ``count`` of a shard's ``_stats.json`` (the rows img2dataset was given), or None when there is no
    readable one (a shard without stats is read from its parquet alone)."""
    try:
        with open_regular(path) as f:
            doc = json.loads(f.read(MAX_STATS_BYTES + 1)[:MAX_STATS_BYTES])
    except (OSError, ValueError):
        return None
    count = doc.get("count") if isinstance(doc, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 1 << 40 else None


__all__ = ["Img2datasetReader", "looks_like_img2dataset"]
