"""Show a few samples of a build (or its rejects) in a readable form."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from curation.errors import CurationError
from schemas import InterleavedRecord, PairRecord, PdfRecord, Record, RecordError, SftRecord
from shards import probe_image, read_manifest
from shards.codec import decode_sample
from shards.imageinfo import ImageProbeError
from shards.reader import MemberError, TarSample, TruncatedShardError, iter_samples


def _images(images: list[bytes]) -> str:
    out = []
    for data in images:
        try:
            i = probe_image(data)
            out.append(f"{i.format} {i.width}x{i.height} ({len(data):,} B)")
        except ImageProbeError as exc:
            out.append(f"unreadable ({exc})")
    return ", ".join(out) or "none"


# Control characters are shown escaped: a sample's text must not drive the terminal (ANSI escape sequences).
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c != 0x09} | {0x0A: "\\n"}


def _clip(text: str, n: int = 300) -> str:
    text = text.translate(_CONTROL)
    return text if len(text) <= n else text[:n] + "…"


def describe(record: Record) -> str:
    lines = [f"source: {_clip(record.source, 200)}", f"images: {_images(record.image_list())}"]
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
    """Print up to ``n`` samples (or rejects). A damaged shard or a sample that does not decode stops it with
    a :class:`CurationError` naming the shard and the sample, after what could be shown was printed."""
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
        for sample in itertools.islice(iter_samples(Path(directory) / shard.name), n - shown):
            try:
                title, body = _reject_panel(sample) if rejects else _sample_panel(sample)
            except (RecordError, MemberError) as exc:
                where = f"{Path(directory) / shard.name}: sample {sample.key[:200]!r}"
                raise CurationError(f"{where} cannot be shown ({exc}); run `curate verify {directory}`") from None
            console.print(Panel(body, title=title, subtitle=escape(shard.name)))
            shown += 1
        if shown >= n:
            break
    if not shown:
        console.print("no rejects were kept (set output.rejects: true)" if rejects else "the dataset is empty")
    return shown


def _sample_panel(sample: TarSample) -> tuple[str, str]:
    if sample.problem is not None:
        raise sample.problem
    record = decode_sample(sample.key, sample.members, validate=True)
    return f"{escape(record.key)} ({record.kind})", escape(describe(record))


def _reject_panel(sample: TarSample) -> tuple[str, str]:
    if sample.problem is not None:
        raise sample.problem
    try:
        info = json.loads(sample.members["reject.json"])
        fields = [("step", info["step"], 100), ("reason", info["reason"], 100), ("origin", info["origin"], 300)]
        if info.get("detail"):
            fields.append(("detail", info["detail"], 200))
        body = "\n".join(f"{name}: {_clip(str(value), n)}" for name, value, n in fields)
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        raise RecordError("reject.json", "bad_reject_member", f"{type(exc).__name__}: {exc}") from None
    return escape(sample.key), escape(body)
