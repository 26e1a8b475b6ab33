"""Previews of kept and rejected samples per source: DuckDB picks them from the sidecars, then only the
shards that hold them are read, each up to its last needed sample."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import duckdb
import msgpack
from PIL import Image

from shards import reader
from shards.codec import PAIR_IMAGE_EXTS
from shards.manifest import DatasetManifest, ShardInfo

MAX_IMAGES = 2
THUMB = 256
MAX_TEXT = 300
MAX_TEXTS = 4
NO_REJECTS = "no rejects kept: set output.rejects"

KEPT_SQL = """
SELECT filename, source, min_by(key, file_row_number, ?) AS keys, NULL AS reason
FROM read_parquet(?, filename = true, file_row_number = true) GROUP BY filename, source
"""
REJECTED_SQL = """
SELECT filename, source, min_by(key, file_row_number, ?) AS keys, reason
FROM read_parquet(?, filename = true, file_row_number = true) GROUP BY filename, source, reason
"""
DETAIL_SQL = "SELECT key, source, step, reason, detail FROM read_parquet(?) WHERE key IN (SELECT unnest(?))"


def previews(directory: Path, manifest: DatasetManifest, per_source: int = 3) -> dict[str, dict[str, Any]]:
    """{source: {"kept": [item], "rejected": [item], "note": str | None}}; item: {key, images, texts, ...}."""
    directory = Path(directory)
    con = duckdb.connect()
    try:
        kept = _pick(con, directory, manifest.shards, KEPT_SQL, per_source, per_reason=False)
        rejected = _pick(con, directory, manifest.rejects, REJECTED_SQL, per_source, per_reason=True)
        details = _details(con, directory, manifest.rejects, rejected)
    finally:
        con.close()
    kept_items = _read(directory, kept)
    rejected_items = _read(directory, rejected)
    rejects_on = bool((manifest.recipe.get("output") or {}).get("rejects")) or bool(manifest.rejects)
    out: dict[str, dict[str, Any]] = {}
    for source in sorted({s for s, _ in kept} | {s for s, _ in rejected} | set(manifest.categories)):
        rej = []
        for shard, key in rejected.get_keys(source):
            item = rejected_items[(shard, key)]
            item.update(details.get(key, {}))
            rej.append(item)
        note = None if rejects_on else NO_REJECTS
        if rejects_on and not rej:
            note = "no samples of this source rejected"
        out[source] = {
            "kept": [kept_items[(shard, key)] for shard, key in kept.get_keys(source)],
            "rejected": rej,
            "note": note,
        }
    return out


class Picks(dict):
    """{(source, index): (shard name, key)}, iterated as (source, n)."""

    def get_keys(self, source: str) -> list[tuple[str, str]]:
        return [v for (s, _), v in sorted(self.items()) if s == source]


def _pick(
    con: duckdb.DuckDBPyConnection, directory: Path, shards: list[ShardInfo], sql: str, n: int, per_reason: bool
) -> Picks:
    """The first `n` samples per source in shard order (rejects: one per reason first, then the next ones)."""
    picks = Picks()
    if not shards or n <= 0:
        return picks
    files = {str(directory / s.sidecar): (i, s.name) for i, s in enumerate(shards)}
    firsts: dict[str, list[tuple[int, int, str, str | None]]] = {}
    for filename, source, keys, reason in con.execute(sql, [n, list(files)]).fetchall():
        rank, _ = files[filename]
        for pos, key in enumerate(keys):
            firsts.setdefault(source, []).append((rank, pos, key, reason))
    for source, rows in firsts.items():
        rows.sort()
        chosen = _distinct_reasons_first(rows, n) if per_reason else rows[:n]
        for i, (rank, _, key, _) in enumerate(chosen):
            picks[(source, i)] = (shards[rank].name, key)
    return picks


def _distinct_reasons_first(rows: list[tuple[int, int, str, str | None]], n: int) -> list[tuple]:
    seen: set[str | None] = set()
    first = [r for r in rows if r[3] not in seen and not seen.add(r[3])]
    rest = [r for r in rows if r not in first]
    return sorted((first + rest)[:n])


def _details(
    con: duckdb.DuckDBPyConnection, directory: Path, shards: list[ShardInfo], picks: Picks
) -> dict[str, dict[str, Any]]:
    names = {name for name, _ in picks.values()}
    files = [str(directory / s.sidecar) for s in shards if s.name in names]
    if not files:
        return {}
    keys = [key for _, key in picks.values()]
    rows = con.execute(DETAIL_SQL, [files, keys]).fetchall()
    return {k: {"step": step, "reason": r, "detail": (detail or "")[:MAX_TEXT]} for k, _, step, r, detail in rows}


def _read(directory: Path, picks: Picks) -> dict[tuple[str, str], dict[str, Any]]:
    """Render the picked samples, opening only their shards and stopping after each shard's last pick."""
    wanted: dict[str, set[str]] = {}
    for shard, key in picks.values():
        wanted.setdefault(shard, set()).add(key)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for shard, keys in wanted.items():
        left = set(keys)
        for key, members in reader.iter_members(directory / shard):
            if key in left:
                out[(shard, key)] = render_members(key, members)
                left.discard(key)
                if not left:
                    break
        for key in left:  # listed by the sidecar, missing from the tar
            out[(shard, key)] = {"key": key, "images": [], "texts": ["(not found in its shard)"]}
    return out


def render_members(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """{key, kind, images: [data URI], texts: [str]} of a sample's tar members (kept or rejected)."""
    body = _json(members.get("json"))
    images: list[bytes] = [members[e] for e in PAIR_IMAGE_EXTS if e in members]
    if "images.mp" in members:
        with contextlib.suppress(ValueError, msgpack.UnpackException):
            images += [im for im in msgpack.unpackb(members["images.mp"]) if im]
    texts: list[str] = []
    if "txt" in members:
        texts.append(members["txt"].decode("utf-8", "replace"))
    for turn in body.get("turns") or []:
        texts += [f"Q: {turn.get('user', '')}", f"A: {turn.get('assistant', '')}"]
    texts += [t for t in body.get("texts") or [] if t]
    for page in body.get("pages") or []:
        texts += [" ".join(ln.get("text", "") for ln in page.get("lines", []))]
    if not texts and "raw.json" in members:
        texts.append("raw: " + members["raw.json"].decode("utf-8", "replace"))
    if "pdf" in members:
        texts.insert(0, f"(pdf, {len(body.get('pages') or [])} pages, {len(members['pdf']):,} bytes)")
    return {
        "key": key,
        "kind": body.get("kind"),
        "images": [thumbnail(im) for im in images[:MAX_IMAGES]],
        "texts": [_truncate(t) for t in texts[:MAX_TEXTS]],
    }


def thumbnail(data: bytes) -> str:
    """A <= 256 px JPEG (PNG when transparent) data URI, or '' for bytes Pillow cannot decode."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.thumbnail((THUMB, THUMB))
            transparent = im.mode in ("RGBA", "LA", "P")
            im = im.convert("RGBA" if transparent else "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG" if transparent else "JPEG", quality=80)
    except Exception:  # rejected samples hold broken images on purpose
        return ""
    mime = "image/png" if transparent else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _json(data: bytes | None) -> dict[str, Any]:
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
