"""Per-item evaluation results: one row per (benchmark, item, metric), the raw material of paired decisions.

Every evaluator leaves one table per trial (``<trial>/items.parquet``): the built-in evaluator from its own
predictions, lmms-eval from its ``*_samples_<task>.jsonl``, VLMEvalKit from its per-item result files. A row
holds an item's value of a metric that is the mean of its items' values (accuracy, ANLS, VQA accuracy, an MME
subtask's per-image acc + acc+), so a benchmark metric can be recomputed on any resample of the items, and
two trials can be compared item by item. ``item`` is an id stable across trials (a record key, a doc id, an
index), so candidate and baseline pair up on the same questions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from shards.atomic import tmp_path

ITEMS_NAME = "items.parquet"
COMMAND_ITEMS_NAME = "items.jsonl"  # what a command evaluator may write beside its metrics.json
MAX_ITEMS_FILE_BYTES = 1 << 30
MAX_LINE_CHARS = 1 << 16  # one item's row is a few dozen characters
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("benchmark", pa.string(), nullable=False),
        pa.field("item", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ItemScore:
    """One item's value of one metric: ``benchmark/metric`` is the metric's name among a trial's metrics."""

    benchmark: str
    item: str
    metric: str
    value: float

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.metric}"


def items_table(items: Iterable[ItemScore]) -> pa.Table:
    """The rows as a table; a non-finite value or a repeated (benchmark, item, metric) is a ValueError."""
    rows = list(items)
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        if not math.isfinite(row.value):
            raise ValueError(f"{row.key} item {row.item!r}: {row.value} is not a finite number")
        ident = (row.benchmark, row.item, row.metric)
        if ident in seen:
            raise ValueError(f"{row.key} item {row.item!r} appears twice")
        seen.add(ident)
    return pa.table(
        {
            "benchmark": pa.array([r.benchmark for r in rows], pa.string()),
            "item": pa.array([r.item for r in rows], pa.string()),
            "metric": pa.array([r.metric for r in rows], pa.string()),
            "value": pa.array([float(r.value) for r in rows], pa.float64()),
        },
        schema=ITEMS_SCHEMA,
    )


def write_items(path: Path, items: Iterable[ItemScore]) -> int:
    """Write the rows atomically; returns how many."""
    table = items_table(items)
    tmp = tmp_path(Path(path))
    pq.write_table(table, tmp)
    tmp.replace(path)
    return table.num_rows


def read_items(path: Path) -> list[ItemScore]:
    """The rows of an items file ([] when there is none: an evaluator without per-item output)."""
    try:
        table = pq.read_table(path, schema=ITEMS_SCHEMA)
    except FileNotFoundError:
        return []
    return [ItemScore(**row) for row in table.to_pylist()]


def read_items_jsonl(path: Path) -> list[ItemScore]:
    """A command evaluator's per-item file: one ``{"benchmark", "item", "metric", "value"}`` object per line
    ([] when it wrote none). A malformed line is a CurationError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    if path.stat().st_size > MAX_ITEMS_FILE_BYTES:
        raise CurationError(f"{path} holds more than {MAX_ITEMS_FILE_BYTES:,} bytes of per-item results")
    rows: list[ItemScore] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""), 1):
                if len(line) > MAX_LINE_CHARS:
                    raise CurationError(f"{path}, line {number}: longer than {MAX_LINE_CHARS:,} characters")
                if line.strip():
                    rows.append(_item_row(line, f"{path}, line {number}"))
        except UnicodeDecodeError as exc:
            raise CurationError(f"{path} is not UTF-8 ({exc})") from None
    try:
        items_table(rows)
    except ValueError as exc:
        raise CurationError(f"{path}: {exc}") from None
    return rows


def _item_row(line: str, where: str) -> ItemScore:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an over-long integer, deep nesting
        raise CurationError(f"{where}: not JSON ({str(exc)[:200]})") from None
    fields = ("benchmark", "item", "metric", "value")
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise CurationError(f"{where}: want an object with exactly {', '.join(fields)}")
    value = obj["value"]
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer beyond float range
        number = math.nan
    if not math.isfinite(number):
        raise CurationError(f"{where}: value {str(value)[:40]} is not a finite number")
    names = [obj[k] for k in fields[:3]]
    if not all(isinstance(n, str) and n for n in names) or "/" in obj["benchmark"]:
        raise CurationError(f"{where}: benchmark, item and metric must be non-empty strings (no '/' in benchmark)")
    return ItemScore(obj["benchmark"], obj["item"], obj["metric"], number)
