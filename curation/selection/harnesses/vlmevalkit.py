"""VLMEvalKit's output, as its current code writes it (``run.py``, ``vlmeval/smp/status_report.py``,
``vlmeval/smp/file.py``, the MCQ / yes-no / VQA evaluators): each dataset's metrics from its newest run, and the
per-item values of the evaluators' result files."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.selection.harnesses import files
from curation.selection.harnesses.files import (
    _cell_number,
    _close,
    _files,
    _item_value,
    _mean,
    _mtime,
    _read_json,
    _read_table,
    _run_id,
)
from curation.selection.items import ItemScore

# run.py: results go to {work_dir}/{model}/{eval_id}/ (a run folder, recognised by files._run_id), and every file
# of a finished dataset (and status.json) is then symlinked into {work_dir}/{model}/.
_TABLE_SUFFIXES = ("_acc.csv", "_acc.json", "_score.csv", "_score.json")
_ITEM_EXTS = (".tsv", ".json", ".xlsx")  # get_pred_file_format: PRED_FORMAT xlsx (default), tsv, json
_JUDGE_NAMES = {"chatgpt-0125": "openai", "gpt-4-0125": "gpt4"}  # image_mcq.py: the judge's name in file names


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
                    values.update(_table_metrics(_read_table(tables[kind], files.MAX_SUMMARY_BYTES), kind))
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
    table = _read_table(path, files.MAX_ITEMS_BYTES)
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
            add(
                _overall_name(split, n_splits),
                _item_id(r.get("index"), path, i),
                _flag(r.get("hit"), path, i, "hit"),
                i,
            )
    elif kind == "yorn" and "MME" in name and {"category", "image_path", "score"} <= columns:
        images: dict[str, dict[str, list[float]]] = {}
        for i, r in enumerate(table, 2):
            image = _item_id(r.get("image_path"), path, i, "image_path")
            images.setdefault(str(r.get("category")), {}).setdefault(image, []).append(
                _flag(r.get("score"), path, i, "score")
            )
        for category, per_image in images.items():
            if all(len(s) == 2 for s in per_image.values()):  # MME_rating pairs each image's two questions
                values[category] = {img: 100 * ((s[0] + s[1]) / 2 + s[0] * s[1]) for img, s in per_image.items()}
    elif kind == "yorn" and {"index", "score"} <= columns:
        if not any(x in name for x in ("MME", "Hallusion", "POPE", "AMBER", "VSR-zeroshot")):  # default_rating
            for i, r in enumerate(table, 2):
                add("Overall", _item_id(r.get("index"), path, i), 100 * _flag(r.get("score"), path, i, "score"), i)
    elif kind == "vqa" and {"index", "eval_match"} <= columns:
        for i, r in enumerate(table, 2):
            hit = _vqa_hit(name, _match_list(r.get("eval_match"), path, i))
            add("Overall", _item_id(r.get("index"), path, i), 100 * hit, i)
    rows: list[ItemScore] = []
    for metric, per_item in sorted(values.items()):
        parsed = ds.metrics.get(metric)
        if parsed is None or not per_item or not _close(_mean(per_item.values()), parsed):
            continue
        rows.extend(ItemScore(name, item, metric, value) for item, value in per_item.items())
    return rows
