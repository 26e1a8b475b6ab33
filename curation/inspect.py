"""Show a few samples of a build (or its rejects) in a readable form."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from curation.errors import CurationError
from schemas import InterleavedRecord, PairRecord, PdfRecord, Record, SftRecord
from shards import probe_image, read_manifest
from shards.imageinfo import ImageProbeError
from shards.reader import TruncatedShardError, iter_members, iter_shard


def _images(images: list[bytes]) -> str:
    out = []
    for data in images:
        try:
            i = probe_image(data)
            out.append(f"{i.format} {i.width}x{i.height} ({len(data):,} B)")
        except ImageProbeError as exc:
            out.append(f"unreadable ({exc})")
    return ", ".join(out) or "none"


def _clip(text: str, n: int = 300) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[:n] + "…"


def describe(record: Record) -> str:
    lines = [f"source: {record.source}", f"images: {_images(record.image_list())}"]
    if isinstance(record, PairRecord):
        lines.append(f"caption: {_clip(record.caption)}")
    elif isinstance(record, SftRecord):
        for i, t in enumerate(record.turns):
            lines += [f"user[{i}]: {_clip(t.user)}", f"assistant[{i}]: {_clip(t.assistant)}"]
    elif isinstance(record, InterleavedRecord):
        for t in record.texts:
            lines.append("<image>" if t is None else f"text: {_clip(t, 120)}")
    elif isinstance(record, PdfRecord):
        lines.append(f"pdf: {len(record.pdf):,} B, {len(record.pages)} pages")
        for p, page in enumerate(record.pages[:2]):
            lines.append(f"page {p}: " + _clip(" / ".join(ln.text for ln in page.lines), 200))
    if record.meta:
        lines.append(f"meta: {_clip(json.dumps(record.meta, ensure_ascii=False), 200)}")
    return "\n".join(lines)


def inspect(directory: Path, n: int = 3, rejects: bool = False, console: Console | None = None) -> int:
    try:
        return _inspect(directory, n, rejects, console)
    except TruncatedShardError as exc:
        raise CurationError(f"{exc}; run `curate verify {directory}`") from None


def _inspect(directory: Path, n: int, rejects: bool, console: Console | None) -> int:
    console = console or Console()
    manifest = read_manifest(Path(directory))
    shards = manifest.rejects if rejects else manifest.shards
    shown = 0
    for shard in shards:
        path = Path(directory) / shard.name
        if rejects:
            for key, members in itertools.islice(iter_members(path), n - shown):
                info = json.loads(members["reject.json"])
                body = f"step: {info['step']}\nreason: {info['reason']}\norigin: {info['origin']}"
                if info.get("detail"):
                    body += f"\ndetail: {_clip(info['detail'], 200)}"
                console.print(Panel(body, title=key, subtitle=shard.name))
                shown += 1
        else:
            for record in itertools.islice(iter_shard(path), n - shown):
                console.print(Panel(describe(record), title=f"{record.key} ({record.kind})", subtitle=shard.name))
                shown += 1
        if shown >= n:
            break
    if not shown:
        console.print("no rejects were kept (set output.rejects: true)" if rejects else "the dataset is empty")
    return shown
