"""External evaluators run as commands: lmms-eval, VLMEvalKit, or any command writing ``metrics.json``; their result
files are parsed into ``{"<benchmark>/<metric>": value}``, and their per-item files into :class:`ItemScore` rows
whose ``benchmark/metric`` is one of those keys (a metric that is the mean of its items).

Both harnesses are read as their current code writes (lmms-eval 0.6/0.7: ``lmms_eval/loggers/evaluation_tracker.py``,
``lmms_eval/evaluator_utils.py``; VLMEvalKit: ``run.py``, ``vlmeval/smp/status_report.py``, ``vlmeval/smp/file.py``,
the MCQ / yes-no / VQA evaluators). Output folders are walked once, following symlinked folders but never into the
same folder twice, and a file reached through several links counts once (VLMEvalKit links every result of its
newest run into the model folder). Every file is size-checked before it is read; bad input is a CurationError naming
the file (and line or row), never a traceback.
"""

from __future__ import annotations

import ast
import csv
import importlib
import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe.selection import CommandEvaluatorConfig, HarnessEvaluatorConfig
from curation.selection.items import COMMAND_ITEMS_NAME, ItemScore, read_items_jsonl
from curation.selection.launchers.process import log_tail

LOG_TAIL_CHARS = 4000
MAX_SUMMARY_BYTES = 64 << 20
"""Largest results / status / score file read (each is read whole; real ones are kilobytes to a few megabytes)."""
MAX_ITEMS_BYTES = 512 << 20
"""Largest per-item file read (an lmms-eval samples file, a VLMEvalKit per-item result table)."""
MAX_WALK_ENTRIES = 200_000
"""Most files and folders looked at under one output folder."""
_REL_TOL = 1e-9  # an items' mean must equal the harness's own aggregate this closely to be kept


# ---- files ----------------------------------------------------------------------------------------------------
def _files(root: Path, label: str) -> list[Path]:
    """Every file under ``root`` once (sorted), following symlinked folders but entering each folder once (a link
    loop ends there) and only after every real folder (so a folder is named by its own path, not by a link to it).
    A file reached through several paths (a symlink beside its target) is listed once, by the path whose folder is
    a VLMEvalKit run folder when there is one, else the first path met."""
    root = Path(root)
    if not root.is_dir():
        return []
    seen_dirs: set[tuple[int, int]] = set()
    by_real: dict[str, Path] = {}
    folders, linked = [root], []  # linked folders wait until no real one is left
    entries = 0
    while folders or linked:
        folder = folders.pop() if folders else linked.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise CurationError(f"{label}: cannot list {folder} ({exc.strerror or exc})") from None
        for entry in children:
            entries += 1
            if entries > MAX_WALK_ENTRIES:
                raise CurationError(f"{label}: more than {MAX_WALK_ENTRIES} files and folders under {root}")
            try:
                if entry.is_dir():
                    (linked if entry.is_symlink() else folders).append(Path(entry.path))
                    continue
                if not entry.is_file():
                    continue
            except OSError:
                continue
            path = Path(entry.path)
            real = os.path.realpath(path)
            known = by_real.get(real)
            if known is None or (_run_id(path.parent.name) and not _run_id(known.parent.name)):
                by_real[real] = path
    return sorted(by_real.values())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _check_size(path: Path, limit: int, label: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CurationError(f"{label}: cannot read {path} ({exc.strerror or exc})") from None
    if size > limit:
        raise CurationError(f"{label}: {path} is {size} bytes, over the {limit}-byte limit for this file; not read")


def _read_json(path: Path, label: str, limit: int | None = None) -> Any:
    _check_size(path, MAX_SUMMARY_BYTES if limit is None else limit, label)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CurationError(f"{label}: {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (OSError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise CurationError(f"{label}: {path} is not readable JSON ({exc})") from None


def _number(value: object) -> float | None:
    """A finite JSON number (not a bool) as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_REL_TOL)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


# ---- lmms-eval ----------------------------------------------------------------------------------------------------
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


def _item_value(value: object) -> float | None:
    """A per-item value: a finite number, or a bool as 0/1."""
    return float(value) if isinstance(value, bool) else _number(value)


def _jsonl(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; a line that is not a UTF-8 JSON object is a CurationError."""
    _check_size(path, MAX_ITEMS_BYTES, label)
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise CurationError(f"{label}: {path}:{lineno}: not UTF-8") from None
                except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                    raise CurationError(f"{label}: {path}:{lineno}: not JSON ({exc})") from None
                if not isinstance(obj, dict):
                    raise CurationError(
                        f"{label}: {path}:{lineno}: a JSON object was expected, not {type(obj).__name__}"
                    )
                yield lineno, obj
    except OSError as exc:
        raise CurationError(f"{label}: cannot read {path} ({exc.strerror or exc})") from None


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


# ---- VLMEvalKit ----------------------------------------------------------------------------------------------------
# run.py: results go to {work_dir}/{model}/{eval_id}/, eval_id = build_eval_id() = "T%Y%m%d-%H%M%S" (vlmeval/smp/
# file.py; before 2026-04 "T%Y%m%d_G<commit>", the commit "unknown" outside a git checkout), and every file of a
# finished dataset (and status.json) is then symlinked into {work_dir}/{model}/.
_NEW_RUN = re.compile(r"^T(\d{8})-(\d{6})$")
_OLD_RUN = re.compile(r"^T(\d{8})_G\w+$")
_TABLE_SUFFIXES = ("_acc.csv", "_acc.json", "_score.csv", "_score.json")
_ITEM_EXTS = (".tsv", ".json", ".xlsx")  # get_pred_file_format: PRED_FORMAT xlsx (default), tsv, json
_JUDGE_NAMES = {"chatgpt-0125": "openai", "gpt-4-0125": "gpt4"}  # image_mcq.py: the judge's name in file names


def _run_id(name: str) -> str | None:
    """A run folder's time stamp (``YYYYMMDDHHMMSS``; an old-style folder has only its day); None for another
    folder."""
    if m := _NEW_RUN.match(name):
        return m.group(1) + m.group(2)
    if m := _OLD_RUN.match(name):
        return m.group(1)
    return None


@dataclass
class _VlmRun:
    """A run folder (or, in the flat layout of older VLMEvalKit, the model folder) and what it holds."""

    folder: Path
    model: str
    stamp: str  # "" for a model folder
    files: list[Path] = field(default_factory=list)
    status: dict[str, Any] | None = None  # status.json's "datasets"
    tables: dict[str, dict[str, Path]] = field(default_factory=dict)  # dataset -> "_acc"/"_score" -> newest file

    def order(self) -> tuple[str, float, str]:
        return (self.stamp, max((_mtime(p) for p in self.files), default=0.0), str(self.folder))


@dataclass(frozen=True)
class _VlmDataset:
    name: str
    run: _VlmRun
    metrics: dict[str, float]
    judge: str | None


def _status_finished(entry: object) -> bool:
    """status.json's ``done`` with metrics, no skip_reason and no error_message (upsert_dataset_status writes
    ``done`` also for a skipped or failed dataset)."""
    return (
        isinstance(entry, dict)
        and entry.get("status") == "done"
        and not entry.get("skip_reason")
        and not entry.get("error_message")
        and isinstance(entry.get("metrics"), dict)
        and bool(entry["metrics"])
    )


def _vlm_runs(output_dir: Path) -> list[_VlmRun]:
    runs: dict[Path, _VlmRun] = {}
    for path in _files(output_dir, "VLMEvalKit"):
        folder = path.parent
        run = runs.get(folder)
        if run is None:
            stamp = _run_id(folder.name)
            model = folder.parent.name if stamp is not None else folder.name
            run = runs[folder] = _VlmRun(folder, model, stamp or "")
        run.files.append(path)
    for run in runs.values():
        for path in run.files:
            if path.name == "status.json":
                doc = _read_json(path, "VLMEvalKit")
                datasets = doc.get("datasets") if isinstance(doc, dict) else None
                if not isinstance(datasets, dict):
                    raise CurationError(f"VLMEvalKit: {path} has no 'datasets' object")
                run.status = datasets
                continue
            suffix = next((s for s in _TABLE_SUFFIXES if path.name.endswith(s)), None)
            if suffix is None:
                continue
            kind = suffix.rsplit(".", 1)[0]
            stem = path.name[: -len(suffix)]
            dataset = stem[len(run.model) + 1 :] if stem.startswith(f"{run.model}_") else stem
            if not dataset:
                continue
            known = run.tables.setdefault(dataset, {}).get(kind)
            if known is None or _mtime(path) > _mtime(known):
                run.tables[dataset][kind] = path
    return sorted(runs.values(), key=_VlmRun.order, reverse=True)


def _vlmeval_select(output_dir: Path) -> dict[str, _VlmDataset]:
    """Each dataset from its newest run that gives it: status.json's metrics where the run's status.json lists it
    as finished, nothing where it lists it unfinished (an older run may give it), else the run's acc / score
    tables."""
    chosen: dict[str, _VlmDataset] = {}
    for run in _vlm_runs(output_dir):
        status = run.status or {}
        for dataset, entry in sorted(status.items()):
            if dataset in chosen or not _status_finished(entry):
                continue  # an unfinished dataset: nothing from this run (its files there are not used either)
            judge = entry.get("judge_model")
            # the metrics are the table evaluate() returned and wrote: a yes/no _score table, else an _acc table
            kind = "_score" if set(run.tables.get(dataset, {})) == {"_score"} else "_acc"
            metrics = _status_metrics(entry["metrics"], kind)
            chosen[dataset] = _VlmDataset(dataset, run, metrics, judge if isinstance(judge, str) else None)
        for dataset, tables in sorted(run.tables.items()):
            if dataset in chosen or dataset in status:
                continue
            values: dict[str, float] = {}
            for kind in ("_acc", "_score"):
                if kind in tables:
                    values.update(_table_metrics(_read_table(tables[kind], MAX_SUMMARY_BYTES), kind))
            chosen[dataset] = _VlmDataset(dataset, run, values, None)
    if not chosen:
        raise CurationError(
            f"VLMEvalKit: no *_acc.csv, *_acc.json, *_score.csv, *_score.json or finished dataset in a status.json "
            f"under {output_dir}"
        )
    return chosen


def parse_vlmevalkit(output_dir: Path) -> dict[str, float]:
    """VLMEvalKit's ``{work_dir}/{model}/{run}/`` (``run`` = ``T%Y%m%d-%H%M%S``, older ``T%Y%m%d_G<commit>``, or
    none in the oldest flat layout), each dataset from its newest run (by the run folder's time stamp, then by
    modification time); the files run.py links into the model folder count once.

    Where the run has a ``status.json`` listing the dataset as finished (``done`` with metrics, neither skipped nor
    failed), its ``metrics`` (flattened by VLMEvalKit as ``dim=val|...|col``) are rebuilt into the table they came
    from and named like that table's file; a dataset listed unfinished is taken from an older run. Otherwise the
    run's ``{model}_{dataset}_acc.csv|json`` (``.json`` with ``EVAL_FORMAT=json``) and ``..._score.csv|json``.

    Naming, from a table: an acc table's ``Overall`` column (per ``split`` row when there are several:
    ``Overall_<split>``); a one-row table without ``Overall`` gives its numeric columns (MME: ``perception``,
    ``reasoning``, each subtask, and ``total`` = perception + reasoning). Status metrics that are not a table
    (a nested dict: ``a|b``; duplicate keys ``...#n``) keep VLMEvalKit's flattened key: ``<dataset>/<key>``.
    Values as written: multiple-choice accuracies are fractions (0-1), VQA and yes/no scores points (0-100),
    MME points (max 2800)."""
    chosen = _vlmeval_select(output_dir)
    return {f"{name}/{k}": v for name, ds in sorted(chosen.items()) for k, v in ds.metrics.items()}


def _cell_number(value: object) -> float | None:
    """A table cell as a finite float: a number (not a bool) or a numeric string; None otherwise."""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            return None
    return _number(value)


def _overall_name(split: object, n_splits: int) -> str:
    text = "" if split is None else str(split).strip()
    return "Overall" if n_splits <= 1 or text in ("", "none", "nan") else f"Overall_{text}"


def _acc_table(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``Overall`` (one row) or ``Overall_<split>`` per row; the numeric columns of a table without Overall."""
    if not rows or "Overall" not in rows[0]:
        return _numeric_columns(rows)
    out: dict[str, float] = {}
    for row in rows:
        value = _cell_number(row.get("Overall"))
        if value is not None:
            out[_overall_name(row.get("split"), len(rows))] = value
    return out


def _numeric_columns(rows: list[dict[str, Any]]) -> dict[str, float]:
    """A one-row table's numeric columns (VLMEvalKit's ``d2df``); nothing for other shapes."""
    if len(rows) != 1:
        return {}
    return {str(k): v for k, cell in rows[0].items() if k and (v := _cell_number(cell)) is not None}


def _table_metrics(rows: list[dict[str, Any]], kind: str) -> dict[str, float]:
    values = _acc_table(rows) if kind == "_acc" else _numeric_columns(rows)
    if "perception" in values and "reasoning" in values and "total" not in values:
        values["total"] = values["perception"] + values["reasoning"]
    return values


def _status_metrics(metrics: dict[str, Any], kind: str) -> dict[str, float]:
    """status.json's flattened metrics (``flatten_summary_metrics``: a DataFrame row's non-numeric columns as
    ``col=val`` dims joined by ``|`` before each numeric column) rebuilt into rows and named as the ``kind`` table
    file would be (:func:`_table_metrics`); keys that are not of that form are kept as they are."""
    numbers = {str(k): n for k, v in metrics.items() if (n := _cell_number(v)) is not None}
    rows: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for key, number in numbers.items():
        *dims, column = key.split("|")
        if "#" in key or not column or any("=" not in d for d in dims):
            return numbers
        pairs = tuple((name, value) for name, _, value in (d.partition("=") for d in dims))
        rows.setdefault(pairs, dict(pairs))[column] = number
    return _table_metrics(list(rows.values()), kind)


def _read_table(path: Path, limit: int) -> list[dict[str, Any]]:
    """A VLMEvalKit table as rows: ``.csv`` / ``.tsv`` (pandas ``to_csv``, QUOTE_ALL), ``.json`` (``dump_json``:
    a DataFrame as a list of records; a dict as one row), ``.xlsx`` (needs openpyxl)."""
    label = "VLMEvalKit"
    _check_size(path, limit, label)
    if path.suffix == ".xlsx":
        return _read_xlsx(path)
    if path.suffix == ".json":
        doc = _read_json(path, label, limit)
        if isinstance(doc, dict):
            return [doc]
        if isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
            return doc
        raise CurationError(f"VLMEvalKit: {path} must hold a list of row objects (or one object)")
    csv.field_size_limit(max(csv.field_size_limit(), min(limit, 1 << 30)))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    except UnicodeDecodeError as exc:
        raise CurationError(f"VLMEvalKit: {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (OSError, csv.Error) as exc:
        raise CurationError(f"VLMEvalKit: {path} is not a readable table ({exc})") from None


def _read_xlsx(path: Path) -> list[dict[str, Any]]:
    try:
        openpyxl = importlib.import_module("openpyxl")
    except ImportError:
        raise CurationError(
            f"VLMEvalKit: {path} is an .xlsx file and openpyxl is not installed: `pip install openpyxl`, or run "
            f"VLMEvalKit with PRED_FORMAT=tsv (or json) so its per-item files are .tsv"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            sheet_rows = book.worksheets[0].iter_rows(values_only=True)
            header = [str(c) if c is not None else "" for c in next(sheet_rows, ())]
            return [dict(zip(header, row, strict=False)) for row in sheet_rows if any(c is not None for c in row)]
        finally:
            book.close()
    except CurationError:
        raise
    except Exception as exc:  # openpyxl raises zipfile, XML and its own errors on a damaged file
        raise CurationError(f"VLMEvalKit: {path} is not a readable .xlsx file ({type(exc).__name__}: {exc})") from None


def vlmevalkit_items(output_dir: Path) -> list[ItemScore]:
    """Per-item values from the result files VLMEvalKit's evaluators leave in the run folder that
    :func:`parse_vlmevalkit` took each dataset from (``.tsv`` / ``.json``, or ``.xlsx`` with openpyxl: their
    PRED_FORMAT), ``benchmark`` = the dataset, ``item`` = the question's ``index``:

    - multiple choice (``image_mcq.py``): ``{model}_{dataset}_{judge}_result``'s ``hit`` (0/1) -> ``Overall``
      (``Overall_<split>`` with several splits), the mean of hits (not for MMT / MMSci / MMVP, scored otherwise);
    - yes/no (``image_yorn.py``): ``{model}_{dataset}_auxmatch``'s ``score`` -> ``Overall`` (score x 100); for MME
      one row per image and subtask, ``item`` = its ``image_path``, value = 100 x (mean of its two answers + both
      right), whose mean is the subtask's acc + acc+ (Hallusion, POPE, AMBER, VSR: not a mean of items, none);
    - VQA (``image_vqa.py``): ``{model}_{dataset}_results``'s ``eval_match`` -> ``Overall``, 100 x the item's hit
      (DocVQA / InfoVQA: ANLS, 1 - min distance, 0 below 0.5; ChartQA / OCRVQA: best match; else the mean).

    A metric is kept only when its items' mean equals the parsed value (otherwise the file is not what produced
    it); a dataset without such a file gives no rows."""
    chosen = _vlmeval_select(output_dir)
    known = set(chosen)
    for ds in chosen.values():
        known.update(ds.run.tables)
        known.update(ds.run.status or {})
    rows: list[ItemScore] = []
    for _, ds in sorted(chosen.items()):
        rows.extend(_vlm_dataset_items(ds, known))
    return rows


def _vlm_item_file(ds: _VlmDataset, known: set[str]) -> tuple[str, Path] | None:
    """(kind, file): the dataset's per-item result file in its run folder, skipping files of longer dataset
    names that start with this one (``MMBench`` vs ``MMBench_DEV_EN``)."""
    prefix = f"{ds.run.model}_{ds.name}_"
    shadows = [f"{ds.run.model}_{d}_" for d in known if d != ds.name and d.startswith(f"{ds.name}_")]
    found: dict[str, list[Path]] = {"mcq": [], "yorn": [], "vqa": []}
    for path in ds.run.files:
        if path.suffix not in _ITEM_EXTS or not path.name.startswith(prefix):
            continue
        if any(path.name.startswith(s) for s in shadows):
            continue
        middle = path.name[len(prefix) : -len(path.suffix)]
        if middle == "auxmatch":
            found["yorn"].append(path)
        elif middle == "results":
            found["vqa"].append(path)
        elif middle.endswith("_result") and len(middle) > len("_result") and "_vanilla" not in middle:
            found["mcq"].append(path)
    judge = _JUDGE_NAMES.get(ds.judge or "", ds.judge or "exact_matching")
    for kind, paths in found.items():
        if paths:
            preferred = [p for p in paths if p.name == f"{prefix}{judge}_result{p.suffix}"]
            return kind, max(preferred or paths, key=lambda p: (_mtime(p), p.name))
    return None


def _item_id(value: object, path: Path, row: int, column: str = "index") -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = "" if value is None or isinstance(value, bool) else str(value).strip()
    if not text:
        raise CurationError(f"VLMEvalKit: {path}: row {row}: no {column}")
    return text


def _flag(value: object, path: Path, row: int, column: str) -> float:
    """A 0/1 or a score cell: a bool, a number, or their text (``True``, ``1``, ``0.5``)."""
    if isinstance(value, str) and value.strip() in ("True", "False"):
        return 1.0 if value.strip() == "True" else 0.0
    number = _item_value(value) if not isinstance(value, str) else _cell_number(value)
    if number is None:
        raise CurationError(f"VLMEvalKit: {path}: row {row}: {column} {value!r} is not a number")
    return number


def _match_list(value: object, path: Path, row: int) -> list[float]:
    """A VQA row's ``eval_match`` (a list; in a .tsv its Python text, ``[1.0, 0.0]`` or ``[True, False]``)."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            try:
                parsed = ast.literal_eval(value) if len(value) < 1 << 20 else None
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                parsed = None
    numbers = [_item_value(x) for x in parsed] if isinstance(parsed, list) else []
    if not numbers or any(n is None for n in numbers):
        raise CurationError(f"VLMEvalKit: {path}: row {row}: eval_match {str(value)[:80]!r} is not a list of numbers")
    return [n for n in numbers if n is not None]


def _vqa_hit(dataset: str, match: list[float]) -> float:
    """vqa_eval.hit_calculate, per item."""
    if "TextVQA" in dataset:
        return _mean(match)
    if "DocVQA" in dataset or "InfoVQA" in dataset:
        anls = 1 - min(match)
        return 0.0 if anls < 0.5 else anls
    if "ChartQA" in dataset or "OCRVQA" in dataset:
        return max(match)
    return _mean(match)


def _vlm_dataset_items(ds: _VlmDataset, known: set[str]) -> list[ItemScore]:
    found = _vlm_item_file(ds, known)
    if found is None:
        return []
    kind, path = found
    table = _read_table(path, MAX_ITEMS_BYTES)
    columns = set(table[0]) if table else set()
    values: dict[str, dict[str, float]] = {}  # metric -> item -> value

    def add(metric: str, item: str, value: float, row: int) -> None:
        per_item = values.setdefault(metric, {})
        if item in per_item:
            raise CurationError(f"VLMEvalKit: {path}: row {row}: item {item!r} appears twice for {metric}")
        per_item[item] = value

    name = ds.name
    if kind == "mcq" and {"index", "hit"} <= columns and not ("MMT" in name or "MMSci" in name or name == "MMVP"):
        splits = [r.get("split") if "split" in columns else "none" for r in table]
        n_splits = len({"" if s is None else str(s) for s in splits})
        for i, (r, split) in enumerate(zip(table, splits, strict=True), 2):
            add(_overall_name(split, n_splits), _item_id(r["index"], path, i), _flag(r["hit"], path, i, "hit"), i)
    elif kind == "yorn" and "MME" in name and {"category", "image_path", "score"} <= columns:
        images: dict[str, dict[str, list[float]]] = {}
        for i, r in enumerate(table, 2):
            image = _item_id(r["image_path"], path, i, "image_path")
            images.setdefault(str(r["category"]), {}).setdefault(image, []).append(_flag(r["score"], path, i, "score"))
        for category, per_image in images.items():
            if all(len(s) == 2 for s in per_image.values()):  # MME_rating pairs each image's two questions
                values[category] = {img: 100 * ((s[0] + s[1]) / 2 + s[0] * s[1]) for img, s in per_image.items()}
    elif kind == "yorn" and {"index", "score"} <= columns:
        if not any(x in name for x in ("MME", "Hallusion", "POPE", "AMBER", "VSR-zeroshot")):  # default_rating
            for i, r in enumerate(table, 2):
                add("Overall", _item_id(r["index"], path, i), 100 * _flag(r["score"], path, i, "score"), i)
    elif kind == "vqa" and {"index", "eval_match"} <= columns:
        for i, r in enumerate(table, 2):
            hit = _vqa_hit(name, _match_list(r["eval_match"], path, i))
            add("Overall", _item_id(r["index"], path, i), 100 * hit, i)
    rows: list[ItemScore] = []
    for metric, per_item in sorted(values.items()):
        parsed = ds.metrics.get(metric)
        if parsed is None or not per_item or not _close(_mean(per_item.values()), parsed):
            continue
        rows.extend(ItemScore(name, item, metric, value) for item, value in per_item.items())
    return rows


def harness_items(cfg_type: str, output_dir: Path) -> list[ItemScore]:
    """The per-item rows of an external evaluator's output (a command evaluator's optional ``items.jsonl``)."""
    if cfg_type == "lmms_eval":
        return lmms_eval_items(output_dir)
    if cfg_type == "vlmevalkit":
        return vlmevalkit_items(output_dir)
    if cfg_type == "command":
        return read_items_jsonl(output_dir / COMMAND_ITEMS_NAME)
    raise CurationError(f"no per-item reader for evaluator type {cfg_type!r}")


# ---- running ----------------------------------------------------------------------------------------------
def run_harness(
    cfg: HarnessEvaluatorConfig | CommandEvaluatorConfig, model_dir: Path, output_dir: Path, log: Path
) -> dict[str, float]:
    """Run ``cfg.command`` ({model}, {output} filled; ``cfg.env`` added; output appended to ``log``), then parse
    its results. A failed command raises CurationError with the tail of the log."""
    output_dir, log = Path(output_dir), Path(log)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    fill = {"{model}": str(model_dir), "{output}": str(output_dir)}
    command = [_fill(arg, fill) for arg in cfg.command]
    env = {**os.environ, **{k: _fill(v, fill) for k, v in cfg.env.items()}}
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(command)}\n".encode())
        f.flush()
        try:
            rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
        except OSError as exc:
            raise CurationError(f"{cfg.type} evaluator: cannot run {command[0]!r} ({exc})") from None
    if rc != 0:
        tail = log_tail(log, n_bytes=LOG_TAIL_CHARS)
        raise CurationError(f"{cfg.type} evaluator exited with {rc}; the end of {log}:\n{tail}")
    if cfg.type == "lmms_eval":
        return parse_lmms_eval(output_dir)
    if cfg.type == "vlmevalkit":
        return parse_vlmevalkit(output_dir)
    return parse_metrics_json(output_dir / "metrics.json")


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def parse_metrics_json(path: Path) -> dict[str, float]:
    """A command evaluator's ``metrics.json``: an object of ``"benchmark/metric": number``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CurationError(f"command evaluator: it exited 0 but wrote no {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurationError(f"command evaluator: {path} is not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CurationError(f"command evaluator: {path} must hold a JSON object, got {type(doc).__name__}")
    out: dict[str, float] = {}
    for key, value in doc.items():
        number = _number(value)
        if number is None:
            raise CurationError(f"command evaluator: {path}: {key!r} is {value!r}, not a finite number")
        out[key] = number
    return out
