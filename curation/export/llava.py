"""Export a built ``sft`` dataset as LLaVA training data: ``llava.json`` (a JSON list) + ``images/``.

The layout is what LLaVA / ShareGPT4V training code reads with ``image_folder`` = the output directory, and what
:class:`curation.sources.llava.reader.LlavaReader` reads back (``image_root`` = the output directory).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from schemas import RecordError, SftRecord
from shards.codec import decode_sample
from shards.imageinfo import ImageProbeError, probe_image
from shards.manifest import ShardInfo, read_manifest
from shards.reader import TarSample, TruncatedShardError, iter_samples

LLAVA_JSON = "llava.json"
IMAGES = "images"
IMAGE_TAG = "<image>\n"


def export_llava(dataset_dir: Path, out_dir: Path, overwrite: bool = False) -> dict[str, int]:
    """Write ``out_dir/llava.json`` and ``out_dir/images/`` in dataset order; returns counts {records, images,
    text_only}. All of it is staged next to ``out_dir`` and renamed into place at the end: an interrupted export
    leaves ``out_dir`` as it was."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir).absolute()
    try:
        manifest = read_manifest(dataset_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise CurationError(str(exc)) from None
    if manifest.kind != "sft":
        raise CurationError(f"{dataset_dir} holds {manifest.kind} records; the llava export needs sft records")
    _check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / IMAGES).mkdir(parents=True)
    counts = {"records": 0, "images": 0, "text_only": 0}
    try:
        used: set[str] = set()
        with open(staging / LLAVA_JSON, "w", encoding="utf-8") as f:
            f.write("[")
            for record in _records(dataset_dir, manifest.shards, counts):
                entry = _entry(record, staging / IMAGES, used)
                f.write(("\n" if counts["records"] == 0 else ",\n") + json.dumps(entry, ensure_ascii=False))
                counts["records"] += 1
                counts["images"] += len(record.images)
                counts["text_only"] += not record.images
            f.write("\n]\n")
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _records(dataset_dir: Path, shards: list[ShardInfo], counts: dict[str, int]) -> Iterator[SftRecord]:
    """The dataset's records, checked: a damaged shard or a sample that does not decode as an ``sft`` record
    stops the export with a :class:`CurationError` naming it (``--out`` is then left as it was)."""
    for shard in shards:
        path = dataset_dir / shard.name
        try:
            for sample in iter_samples(path):
                yield _record(path, sample)
        except (TruncatedShardError, _Unexportable) as exc:
            stopped = f"export stopped after {counts['records']} records, --out left as it was"
            raise CurationError(f"{exc}; {stopped}; run `curate verify {dataset_dir}`") from None


class _Unexportable(ValueError):
    """A sample that is not an sft record (the message names the shard and the sample)."""


def _record(path: Path, sample: TarSample) -> SftRecord:
    where = f"{path}: sample {sample.key[:200]!r}"
    if sample.problem is not None:
        raise _Unexportable(f"{where}: {sample.problem}")
    try:
        record = decode_sample(sample.key, sample.members, validate=True)
    except RecordError as exc:
        raise _Unexportable(f"{where} does not decode ({exc})") from None
    if not isinstance(record, SftRecord):
        raise _Unexportable(f"{where} is a {record.kind} record, not sft")
    return record


def _entry(record: SftRecord, images_dir: Path, used: set[str]) -> dict[str, Any]:
    """One LLaVA record; writes its images."""
    names = []
    for i, data in enumerate(record.images):
        try:
            ext = probe_image(data).format
        except ImageProbeError as exc:
            raise CurationError(f"sample {record.key}: image {i} is unreadable ({exc})") from None
        stem = record.key if len(record.images) == 1 else f"{record.key}_{i}"
        name = _unique(stem, ext, used)
        (images_dir / name).write_bytes(data)
        names.append(f"{IMAGES}/{name}")
    conversations = []
    system = record.meta.get("system")
    if isinstance(system, str):
        conversations.append({"from": "system", "value": system})
    for j, turn in enumerate(record.turns):
        tags = IMAGE_TAG * len(names) if j == 0 else ""
        conversations.append({"from": "human", "value": tags + turn.user})
        conversations.append({"from": "gpt", "value": turn.assistant})
    entry: dict[str, Any] = {"id": record.key}
    if names:
        entry["image"] = names[0] if len(names) == 1 else names
    entry["conversations"] = conversations
    return entry


def _unique(stem: str, ext: str, used: set[str]) -> str:
    """``stem.ext``, or with a ``-N`` suffix when an earlier record took that name (key ``a`` with two images
    writes ``a_0``; a later key ``a_0`` must not overwrite it)."""
    name, n = f"{stem}.{ext}", 1
    while name in used:
        name, n = f"{stem}-{n}.{ext}", n + 1
    used.add(name)
    return name


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CurationError(f"--out {out_dir} is a file, not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise CurationError(f"--out {out_dir} is not empty; pass --overwrite to replace an earlier export")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in (LLAVA_JSON, IMAGES))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise CurationError(f"--out {out_dir} holds files an export did not write ({shown}); refusing to replace it")


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the staged export to ``out_dir``; an earlier export there is moved aside first, then deleted."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}.tmp")
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            os.rename(out_dir, old)
        else:
            out_dir.rmdir()
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging directories left by killed exports to the same place."""
    for p in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        if p.is_dir() and (p.name.startswith(f".{out_dir.name}.export-") or p.name.startswith(f".{out_dir.name}.old-")):
            shutil.rmtree(p, ignore_errors=True)
