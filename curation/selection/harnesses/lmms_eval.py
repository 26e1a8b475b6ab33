"""lmms-eval's output, as lmms-eval 0.6/0.7 write it (``lmms_eval/loggers/evaluation_tracker.py``,
``lmms_eval/evaluator_utils.py``): the newest results file's metrics and standard errors, and the per-item values
of its samples files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.selection.harnesses.files import _close, _files, _item_value, _jsonl, _mean, _mtime, _number, _read_json
from curation.selection.items import ItemScore

# Upstream (lmms_eval/evaluator_utils.py, consolidate_results): a task's entry holds "alias", "<metric>,<filter>",
# "<metric>_stderr,<filter>", "<metric>_stderr_clt,<filter>", "<metric>_stderr_clustered,<filter>" (a number or
# "N/A"), with --repeats > 1 the stability statistics "<metric>_{expected_accuracy,...},<filter>", and with
# --baseline (lmms_eval/evaluator.py) "paired_baseline", "paired_baseline_score", "paired_ci_lower",
# "paired_ci_upper", "paired_pvalue". lmms-eval's own table (lmms_eval/utils.py, make_table) prints only the plain
# "<metric>,<filter>" entries as rows; stderrs, stability statistics and paired fields are columns of those rows.
_STDERR_KINDS = ("stderr_clustered", "stderr_clt", "stderr")  # longest suffix first
_STABILITY_SUFFIXES = ("_expected_accuracy", "_consensus_accuracy", "_internal_variance", "_consistency_rate")
_LMMS_STAMP = re.compile(r"^\d{8}_\d{6}")  # utils.get_datetime_str: %Y%m%d_%H%M%S
# Registered metrics whose default aggregation is "mean" (lmms_eval/api/metrics.py, register_metric): the
# aggregation of a metric_list entry without one, and of the default metrics of a task without a metric_list.
_LMMS_MEAN_METRICS = frozenset({"acc", "acc_norm", "acc_mutual_info", "acc_all", "exact_match", "anls"})


def _lmms_key(key: str) -> tuple[str, str, str] | None:
    """``"<metric>,<filter>"`` -> (metric, filter, kind) with kind ``metric`` or a stderr kind; None for the other
    fields (alias, samples, paired_*, stability statistics, a group's ``" "`` marker)."""
    metric, sep, filt = key.partition(",")
    if not sep or not metric or metric.startswith("paired_") or metric in ("alias", "samples"):
        return None
    for kind in _STDERR_KINDS:
        if metric.endswith(f"_{kind}"):
            return metric[: -len(kind) - 1], filt, kind
    if metric.endswith(_STABILITY_SUFFIXES):
        return None
    return metric, filt, "metric"


def _lmms_name(metric: str, filt: str) -> str:
    return metric if filt in ("", "none") else f"{metric},{filt}"


@dataclass(frozen=True)
class _LmmsRun:
    path: Path
    doc: dict[str, Any]

    @property
    def stamp(self) -> str:
        return self.path.name[: -len("_results.json")]

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Tasks and groups: ``results`` (which lmms-eval fills with every task and group), then any group only in
        ``groups`` (the group table printed beside it)."""
        results = self.doc["results"]
        yield from ((name, values) for name, values in results.items() if isinstance(values, dict))
        groups = self.doc.get("groups")
        if isinstance(groups, dict):
            yield from (
                (name, values) for name, values in groups.items() if name not in results and isinstance(values, dict)
            )


def _lmms_newest(output_dir: Path) -> _LmmsRun:
    """The newest ``{output_path}/{model}/{date}_results.json``: by the date in its name (as lmms-eval's own
    job scheduler picks the latest run), then by modification time."""
    files = [p for p in _files(output_dir, "lmms-eval") if p.name.endswith("_results.json")]
    if not files:
        raise CurationError(f"lmms-eval: no *_results.json under {output_dir}")

    def order(p: Path) -> tuple[str, float, str]:
        stamp = _LMMS_STAMP.match(p.name)
        return (stamp.group(0) if stamp else "", _mtime(p), str(p))

    newest = max(files, key=order)
    doc = _read_json(newest, "lmms-eval")
    if not isinstance(doc, dict):
        raise CurationError(f"lmms-eval: {newest} must hold a JSON object, not a {type(doc).__name__}")
    if not isinstance(doc.get("results"), dict):
        raise CurationError(f"lmms-eval: {newest} has no 'results' object")
    return _LmmsRun(newest, doc)


def _lmms_metrics(run: _LmmsRun) -> dict[str, float]:
    out: dict[str, float] = {}
    for task, values in run.entries():
        for key, value in values.items():
            parts = _lmms_key(key)
            number = _number(value)
            if parts is not None and parts[2] == "metric" and number is not None:
                out[f"{task}/{_lmms_name(parts[0], parts[1])}"] = number
    return out


def parse_lmms_eval(output_dir: Path) -> dict[str, float]:
    """The newest ``{output_path}/{model}/{date}_results.json``: every ``<metric>,<filter>`` entry of a task or
    group with a finite number -> ``"<task>/<metric>"`` (``"<task>/<metric>,<filter>"`` for a filter other than
    ``none``). Standard errors (see :func:`lmms_eval_stderrs`), ``alias``, ``samples``, the ``--repeats``
    stability statistics (EA, CA, IV, CR: columns of a metric's row in lmms-eval's table, not metrics) and the
    ``--baseline`` ``paired_*`` fields are not metrics. A group's aggregated metrics are the group's own
    (``"<group>/<metric>"``), as lmms-eval prints them among the tasks."""
    return _lmms_metrics(_lmms_newest(output_dir))


def lmms_eval_stderrs(output_dir: Path) -> dict[str, dict[str, float]]:
    """The standard errors beside :func:`parse_lmms_eval`'s metrics (same results file): metric key ->
    ``{"stderr": .., "stderr_clt": .., "stderr_clustered": ..}``, numeric ones only ("N/A" is left out); a metric
    without any numeric standard error is absent."""
    run = _lmms_newest(output_dir)
    metrics = _lmms_metrics(run)
    out: dict[str, dict[str, float]] = {}
    for task, values in run.entries():
        for key, value in values.items():
            parts = _lmms_key(key)
            number = _number(value)
            if parts is None or parts[2] == "metric" or number is None:
                continue
            name = f"{task}/{_lmms_name(parts[0], parts[1])}"
            if name in metrics:
                out.setdefault(name, {})[parts[2]] = number
    return out


def lmms_eval_items(output_dir: Path) -> list[ItemScore]:
    """Per-item values from the newest run's ``{date}_samples_{task}.jsonl`` (written with ``--log_samples``;
    none without it): one row per line and metric, ``item`` = ``str(doc_id)``, for each metric whose aggregation
    is a mean (``configs[task]["metric_list"]``'s ``aggregation: mean``; without one, a registered metric whose
    default is the mean) and whose key :func:`parse_lmms_eval` returns. A bool counts 0/1 (as lmms-eval's mean
    counts it). A metric is left out whole when an item's value is not a number (MME's dicts, summed per category,
    are not a mean of items) or when its items' mean is not the results file's value. A task with several filters
    writes one line per filter and doc, in the order of its ``filter_list``: the k-th line of a doc is the k-th
    filter."""
    run = _lmms_newest(output_dir)
    metrics = _lmms_metrics(run)
    configs = run.doc.get("configs")
    configs = configs if isinstance(configs, dict) else {}
    tasks = list(configs) or [t for t, _ in run.entries()]
    rows: list[ItemScore] = []
    for task in tasks:
        samples = run.path.parent / f"{run.stamp}_samples_{task}.jsonl"
        if samples.is_file():
            config = configs.get(task)
            rows.extend(_lmms_task_items(run, task, samples, config if isinstance(config, dict) else {}, metrics))
    return rows


def _lmms_filters(run: _LmmsRun, task: str, config: dict[str, Any]) -> list[str]:
    """The task's filter names in the order lmms-eval applies them: its config's ``filter_list``, else the order
    of the filters among the task's result keys (``none`` for a task without a filter_list)."""
    listed = config.get("filter_list")
    if (
        isinstance(listed, list)
        and listed
        and all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in listed)
    ):
        return [f["name"] for f in listed]
    values = run.doc["results"].get(task)
    order: list[str] = []
    for key in values if isinstance(values, dict) else {}:
        parts = _lmms_key(key)
        if parts is not None and parts[2] == "metric" and parts[1] not in order:
            order.append(parts[1])
    return order or ["none"]


def _lmms_is_mean(config: dict[str, Any], metric: str) -> bool:
    listed = config.get("metric_list")
    if isinstance(listed, list):
        for entry in listed:
            if isinstance(entry, dict) and entry.get("metric") == metric:
                aggregation = entry.get("aggregation")
                return aggregation == "mean" if aggregation is not None else metric in _LMMS_MEAN_METRICS
        return False
    return metric in _LMMS_MEAN_METRICS


def _lmms_task_items(
    run: _LmmsRun, task: str, path: Path, config: dict[str, Any], metrics: dict[str, float]
) -> list[ItemScore]:
    filters = _lmms_filters(run, task, config)
    wanted: dict[tuple[str, str], str] = {}  # (metric, filter) -> the metric's name among the keys
    for key in run.doc["results"].get(task) or {}:
        parts = _lmms_key(key)
        if parts is None or parts[2] != "metric" or parts[1] not in filters:
            continue
        name = _lmms_name(parts[0], parts[1])
        if f"{task}/{name}" in metrics and _lmms_is_mean(config, parts[0]):
            wanted[parts[:2]] = name
    seen: dict[str, int] = {}
    values: dict[tuple[str, str], dict[str, float]] = {key: {} for key in wanted}
    broken: set[tuple[str, str]] = set()
    for lineno, obj in _jsonl(path, "lmms-eval"):
        doc_id = obj.get("doc_id")
        if isinstance(doc_id, bool) or not isinstance(doc_id, int | str):
            raise CurationError(f"lmms-eval: {path}:{lineno}: no doc_id (got {doc_id!r})")
        item = str(doc_id)
        k = seen.get(item, 0)
        if k >= len(filters):
            raise CurationError(
                f"lmms-eval: {path}:{lineno}: doc_id {item} appears {k + 1} times; task {task} has "
                f"{len(filters)} filter(s) ({', '.join(filters)}), one line per filter"
            )
        seen[item] = k + 1
        for (m, f), per_item in values.items():
            if f != filters[k] or m not in obj or (m, f) in broken:
                continue
            number = _item_value(obj[m])
            if number is None:
                broken.add((m, f))
            else:
                per_item[item] = number
    short = [item for item, n in seen.items() if n != len(filters)]
    if short:
        raise CurationError(
            f"lmms-eval: {path}: doc_id {short[0]} has {seen[short[0]]} line(s); task {task} has {len(filters)} "
            f"filter(s) ({', '.join(filters)}), one line per filter"
        )
    rows: list[ItemScore] = []
    for key, per_item in values.items():
        name = wanted[key]
        if key in broken or not per_item or not _close(_mean(per_item.values()), metrics[f"{task}/{name}"]):
            continue
        rows.extend(ItemScore(task, item, name, value) for item, value in per_item.items())
    return rows
