"""The Cauldron and Docmatix: ``images`` (list of Image ``{bytes, path}``) + ``texts`` (list of ``{user, assistant,
source}``) rows -> ``sft`` records.

Two ways in, chosen in ``plan()`` and recorded in each partition's ``spec["mode"]``:

- ``parquet``: a local copy in the HF layout, ``<path>[/data]/<config>/<split>-*.parquet`` (or
  ``.../<config>/<split>/*.parquet``), read directly by whole row groups like the parquet reader;
- ``disk`` / ``load``: anything ``datasets`` opens (``save_to_disk`` output, a dataset directory, a hub id when
  online), split into contiguous row ranges; each worker re-opens the dataset (memory-mapped Arrow, cheap).
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.recipe import CauldronSource
from curation.sample import Drop, Sample
from curation.sources.base import (
    IMAGE_FIELD_DROP_REASONS,
    IMAGE_FILE_DROP_REASONS,
    RECORD_DROP_REASONS,
    Partition,
    Reader,
    build_record,
    sanitize_key,
)
from curation.sources.cauldron_catalog import category_of
from curation.sources.parquet import open_parquet, row_batches, row_group_partitions
from curation.storage.inputs import SMALL_BLOCK, NoSuchInput, expand_url, open_url, parent_url
from curation.storage.urls import is_url

COLUMNS = ("images", "texts")
BATCH_ROWS = 64  # rows can hold several large page images (Docmatix): keep Python-side batches small
SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class CauldronReader(Reader):
    config = CauldronSource
    drop_reasons: ClassVar[dict[str, str]] = {
        "file_unreadable": (
            "a damaged parquet page, or a dataset that can no longer be opened or read since the plan: the rest of "
            "its partition"
        ),
        **IMAGE_FILE_DROP_REASONS,  # images given by path
        **IMAGE_FIELD_DROP_REASONS,
        **RECORD_DROP_REASONS,
    }
    columns: ClassVar[tuple[str, ...]] = COLUMNS  # the columns a row is read with (more for FineVision)
    reads_urls = True  # the HF parquet layout in a bucket, by row groups (not save_to_disk folders or hub ids)

    def __init__(self, source: CauldronSource) -> None:
        self.source = source
        self.config_name = source.config_name()

    def record_kind(self) -> str:
        return "sft"

    def category(self) -> str | None:
        """The recipe's category, else the catalog's for a known Cauldron config."""
        return self.source.category or category_of(self.config_name)

    # ---- plan ------------------------------------------------------------------------------------
    def plan(self) -> list[Partition]:
        files = self._local_files()
        if files:
            for f in files:
                _require_texts(open_parquet(f, self.source.name).schema_arrow.names, f, self.source.name)
            extra = {"mode": "parquet", "config": self.config_name, "split": self.source.split}
            return row_group_partitions(self.source, files, lambda _i, _r: dict(extra))
        target = self._datasets_target()
        ds = open_dataset(target, self.source.name)
        _require_texts(ds.column_names, target["path"], self.source.name)
        size, n = self.source.partition_size, ds.num_rows
        return [
            Partition(
                self.source.name, i, min(size, n - start), {**target, "start": start, "stop": min(n, start + size)}
            )
            for i, start in enumerate(range(0, n, size))
        ]

    def _local_files(self) -> list[Any]:
        """Parquet files of the config and split in the HF layout; [] when the path is not such a tree."""
        if is_url(self.source.path):
            return self._url_files()
        root, split = Path(self.source.path), self.source.split
        for base in (root / self.config_name, root / "data" / self.config_name):
            if not base.is_dir():
                continue
            for pattern in (f"{split}-*.parquet", f"{split}/*.parquet"):
                files = sorted(f for f in base.glob(pattern) if f.is_file() and not f.name.startswith("."))
                if files:
                    return files
            present = sorted({f.name.split("-")[0] for f in base.glob("*.parquet")} | _subdirs_with_parquet(base))
            if present:
                raise CurationError(
                    f"sources.{self.source.name}: no {split!r} split under {base}{_hint(split, present, 'splits')}"
                )
        return []

    def _url_files(self) -> list[str]:
        """``_local_files`` in a bucket: ``<path>[/data]/<config>/<split>-*.parquet`` or ``.../<split>/*.parquet``.
        Only this layout is read from a bucket: anything else is a one-line error."""
        src, split = self.source, self.source.split
        root = src.path.rstrip("/")
        for base in (f"{root}/{self.config_name}", f"{root}/data/{self.config_name}"):
            for pattern in (f"{split}-*.parquet", f"{split}/*.parquet"):
                with contextlib.suppress(NoSuchInput):  # none there
                    return list(expand_url(f"{base}/{pattern}", (".parquet",), src.name))
        raise CurationError(
            f"sources.{src.name}.path: no {self.config_name}/{split}-*.parquet (or {self.config_name}/{split}/"
            f"*.parquet) under {root} or {root}/data; a bucket is read in the HF parquet layout only (save_to_disk "
            "folders and hub ids: local paths)"
        )

    def _datasets_target(self) -> dict[str, Any]:
        """What ``datasets`` should open, as a JSON-able spec; loud when the path is a local tree without the config."""
        src, root = self.source, Path(self.source.path)
        common = {"config": self.config_name, "split": src.split}
        if root.is_dir():
            for d in (root, root / self.config_name):
                if (d / "dataset_dict.json").is_file() or (d / "state.json").is_file():
                    return {"mode": "disk", "path": str(d), **common}
            declared = _readme_configs(root)
            if self.config_name in declared:
                return {"mode": "load", "path": str(root), "name": self.config_name, **common}
            present = sorted(set(declared) | _local_configs(root))
            if present:
                hint = _hint(self.config_name, present, "configs")
                raise CurationError(f"sources.{src.name}: no config {self.config_name!r} under {root}{hint}")
            # A plain dataset directory (data files, no configs): its default config, unless one was asked for.
            return {"mode": "load", "path": str(root), "name": src.config, **common}
        if root.exists():
            raise CurationError(f"sources.{src.name}.path: {root} is a file; expected a directory or a hub dataset id")
        first = Path(src.path.split("/", 1)[0])
        if not _HUB_ID.match(src.path) or first.is_dir() or src.path.startswith((".", "~")):
            raise CurationError(f"sources.{src.name}.path: no such directory: {src.path}")
        return {"mode": "load", "path": src.path, "name": self.config_name, **common}

    # ---- read ------------------------------------------------------------------------------------
    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        if partition.spec["mode"] == "parquet":
            return self._read_parquet(partition)
        return self._read_datasets(partition)

    def _read_parquet(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec = partition.spec
        path = spec["file"]
        image_root = self.source.image_root or (parent_url(path) if is_url(path) else str(Path(path).parent))
        row_number, emitted = spec["first_row"], 0
        try:
            names = _column_names(path)
        except (pa.ArrowException, OSError) as exc:
            yield from self._lost(partition.rows, path, f"{path}: {exc}")
            return
        columns = [c for c in self.columns if c in names]
        for rows in row_batches(path, spec["row_groups"], columns, BATCH_ROWS):
            if isinstance(rows, str):  # a damaged page: the rest of the partition is lost, counted
                yield from self._lost(partition.rows - emitted, path, rows)
                return
            for row in rows:
                if emitted >= partition.rows:  # a --limit can cut a partition short
                    return
                emitted += 1
                key = self._key(f"{spec['file_index']:04d}-{row_number:09d}")
                yield self.to_item(row, f"{path}#{row_number}", key, image_root)
                row_number += 1

    def _read_datasets(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec = partition.spec
        start = spec["start"]
        stop = start + partition.rows  # the plan's stop, or less under --limit
        local = Path(spec["path"])
        image_root = self.source.image_root or (str(local) if local.is_dir() else None)
        where = f"{spec['path']}:{spec['config']}[{spec['split']}]"
        emitted = 0
        try:
            ds = open_dataset(spec, self.source.name)
            # Arrow storage of an Image cell already is {bytes, path}: no decoding, and no cast (casting a nested
            # Image feature to decode=False rewrites the whole dataset into the cache).
            table_view = ds.select_columns([c for c in self.columns if c in ds.column_names]).with_format("arrow")
            for lo in range(start, stop, BATCH_ROWS):
                for i, row in enumerate(table_view[lo : min(lo + BATCH_ROWS, stop)].to_pylist(), lo):
                    emitted += 1
                    yield self.to_item(row, f"{where}#{i}", self._key(f"{i:09d}"), image_root)
        except (CurationError, pa.ArrowException, OSError) as exc:
            yield from self._lost(stop - start - emitted, where, str(exc))

    def _lost(self, n: int, origin: str, detail: str) -> Iterator[Drop]:
        for _ in range(n):
            yield Drop("file_unreadable", self.source.name, origin, None, detail[:500])

    def _key(self, position: str) -> str:
        split = self.source.split
        name = self.config_name
        return sanitize_key(f"{name}-{position}" if split == "train" else f"{name}-{split}-{position}")

    def to_item(self, row: dict[str, Any], origin: str, default_key: str, image_root: str | None) -> Sample | Drop:
        texts = row.get("texts")
        item = build_record(
            "sft",
            {"images": row.get("images"), "texts": texts},
            source=self.source.name,
            origin=origin,
            default_key=default_key,
            fields={"turns": "texts"},
            image_root=image_root,
            keep_extra=False,
        )
        if isinstance(item, Sample):
            texts = cast("list[dict[str, Any]]", texts)  # a Sample: build_record accepted them as turns
            item.record.meta.update(turn_meta(texts, self.config_name))
        return item


def _column_names(path: str) -> list[str]:
    if is_url(path):
        with open_url(path, SMALL_BLOCK) as f:  # the footer only
            return pq.read_schema(f).names
    return pq.ParquetFile(path).schema_arrow.names


def turn_meta(texts: list[dict[str, Any]], config: str) -> dict[str, Any]:
    """``config``, plus the turns' ``source`` values: one ``source_id`` when all agree (Docmatix: "PDFA key: 244"),
    else the list as ``turn_sources``."""
    meta: dict[str, Any] = {"config": config}
    sources = [t.get("source") for t in texts]
    if sources and all(s == sources[0] for s in sources) and sources[0] is not None:
        meta["source_id"] = sources[0]
    elif any(s is not None for s in sources):
        meta["turn_sources"] = sources
    return meta


def open_dataset(spec: dict[str, Any], source: str) -> Any:
    """The ``datasets.Dataset`` a ``disk``/``load`` spec names; every ``datasets`` failure as one-line CurationError."""
    import datasets

    path, split = spec["path"], spec["split"]
    with _quiet(datasets):
        try:
            if spec["mode"] == "disk":
                ds = datasets.load_from_disk(path)
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        splits = cast("list[str]", sorted(ds))  # a saved DatasetDict's split names are str
                        raise CurationError(
                            f"sources.{source}: no split {split!r} in {path}{_hint(split, splits, 'splits')}"
                        )
                    ds = ds[split]
                return ds
            return datasets.load_dataset(path, name=spec.get("name"), split=split)
        except CurationError:
            raise
        except Exception as exc:  # datasets raises many types (ValueError, FileNotFoundError, hub errors, ...)
            detail = " ".join(str(exc).split())[:400]
            what = f"{path!r} (config {spec.get('name') or 'default'}, split {split!r})"
            if not Path(path).exists():
                what += " (not a local directory: tried as a hub dataset id)"
            raise CurationError(
                f"sources.{source}: datasets cannot open {what}: {type(exc).__name__}: {detail}"
            ) from None


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No ``datasets`` progress bars inside a build (the runner has its own)."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _require_texts(columns: list[str], where: Any, source: str) -> None:
    if "texts" not in columns:
        raise CurationError(f"sources.{source}: {where} has no 'texts' column (columns: {', '.join(columns)})")


def _hint(name: str, present: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, present, n=1)
    shown = ", ".join(present[:30]) + (f", ... ({len(present)} in all)" if len(present) > 30 else "")
    return (f"; did you mean {close[0]!r}?" if close else "") + f" ({what} present: {shown})"


def _subdirs_with_parquet(d: Path) -> set[str]:
    return {s.name for s in d.iterdir() if s.is_dir() and next(s.glob("*.parquet"), None) is not None}


def _local_configs(root: Path) -> set[str]:
    """Config-like directories of a local tree: ``<root>[/data]/<name>/`` holding parquet files (directly or in a
    split directory). Split-named directories are a plain dataset's splits, not configs."""
    names: set[str] = set()
    for base in (root, root / "data"):
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if not d.is_dir() or d.name in SPLIT_NAMES or d == root / "data":
                continue
            if next(d.glob("*.parquet"), None) is not None or _subdirs_with_parquet(d):
                names.add(d.name)
    return names


def _readme_configs(root: Path) -> list[str]:
    """Config names declared in a dataset card's YAML header (``configs: [{config_name: ...}]``)."""
    import yaml

    from curation.recipe.loading import load_yaml

    readme = root / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return []
    try:
        header = load_yaml(match.group(1)) or {}  # bounded: a card is input, and may be an alias bomb
    except yaml.YAMLError:
        return []
    configs = header.get("configs") if isinstance(header, dict) else None
    return [str(c["config_name"]) for c in configs or [] if isinstance(c, dict) and "config_name" in c]
