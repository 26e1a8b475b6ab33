"""External evaluators run as commands: lmms-eval, VLMEvalKit, or any command writing ``metrics.json``; their result
files are parsed into ``{"<benchmark>/<metric>": value}``."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
from pathlib import Path

from curation.errors import CurationError
from curation.recipe.selection import CommandEvaluatorConfig, HarnessEvaluatorConfig
from curation.selection.launchers.process import log_tail

LOG_TAIL_CHARS = 4000
_EVAL_ID = re.compile(r"^T\d{8}_G\w+$")  # VLMEvalKit's per-run folder: T{YYYYMMDD}_G{commit}


# ---- lmms-eval ---------------------------------------------------------------------------------------
def parse_lmms_eval(output_dir: Path) -> dict[str, float]:
    """The newest ``{output_path}/{model}/{date}_results.json``: ``results[task]["<metric>,<filter>"]`` ->
    ``"<task>/<metric>"`` (``"<task>/<metric>,<filter>"`` for a filter other than ``none``); stderr entries,
    the alias and non-numeric values are skipped."""
    files = [p for p in Path(output_dir).rglob("*_results.json") if p.is_file()]
    if not files:
        raise CurationError(f"lmms-eval: no *_results.json under {output_dir}")
    newest = max(files, key=lambda p: (p.stat().st_mtime, p.name))
    try:
        doc = json.loads(newest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurationError(f"lmms-eval: {newest} is not readable JSON ({exc})") from None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict):
        raise CurationError(f"lmms-eval: {newest} has no 'results' object")
    out: dict[str, float] = {}
    for task, values in results.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            number = _number(value)
            if key == "alias" or metric.endswith("_stderr") or number is None:
                continue
            out[f"{task}/{metric if filt in ('', 'none') else key}"] = number
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# ---- VLMEvalKit ----------------------------------------------------------------------------------------
def parse_vlmevalkit(output_dir: Path) -> dict[str, float]:
    """VLMEvalKit's ``{work_dir}/{model}/[T{date}_G{commit}/]{model}_{dataset}_acc.csv`` and ``..._score.csv``
    (the newest file per dataset): an acc table's ``Overall`` column (per ``split`` row when there are several:
    ``Overall_<split>``; a table without ``Overall`` gives its numeric columns), a score table's numeric columns
    (MME: ``perception``, ``reasoning``, each subtask, and ``total`` = perception + reasoning). Values as written:
    multiple-choice accuracies are fractions (0-1), MME scores points (max 2800)."""
    newest: dict[tuple[str, str], Path] = {}
    for suffix in ("_acc", "_score"):
        for path in Path(output_dir).rglob(f"*{suffix}.csv"):
            if not path.is_file():
                continue
            key = (_vlmeval_dataset(path, suffix), suffix)
            if key not in newest or _mtime(path) > _mtime(newest[key]):
                newest[key] = path
    if not newest:
        raise CurationError(f"VLMEvalKit: no *_acc.csv or *_score.csv under {output_dir}")
    out: dict[str, float] = {}
    for (dataset, suffix), path in sorted(newest.items()):
        rows = _read_csv(path)
        values = _acc_table(rows) if suffix == "_acc" else _numeric_columns(rows)
        if suffix == "_score" and "perception" in values and "reasoning" in values:
            values["total"] = values["perception"] + values["reasoning"]
        out.update({f"{dataset}/{k}": v for k, v in values.items()})
    return out


def _mtime(path: Path) -> float:
    return path.resolve().stat().st_mtime


def _vlmeval_dataset(path: Path, suffix: str) -> str:
    """``{model}_{dataset}{suffix}.csv`` -> dataset; the model is the folder name (above a T..._G... run folder)."""
    stem = path.name[: -len(f"{suffix}.csv")]
    folder = path.parent
    model = folder.parent.name if _EVAL_ID.match(folder.name) else folder.name
    return stem[len(model) + 1 :] if stem.startswith(f"{model}_") and len(stem) > len(model) + 1 else stem


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CurationError(f"VLMEvalKit: {path} is not a readable CSV ({exc})") from None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _acc_table(rows: list[dict[str, str]]) -> dict[str, float]:
    """``Overall`` (one row) or ``Overall_<split>`` per row; the numeric columns of a table without Overall."""
    if not rows or "Overall" not in rows[0]:
        return _numeric_columns(rows)
    out: dict[str, float] = {}
    for row in rows:
        value = _float(row.get("Overall"))
        if value is None:
            continue
        split = (row.get("split") or "").strip()
        out["Overall" if len(rows) == 1 or split in ("", "none") else f"Overall_{split}"] = value
    return out


def _numeric_columns(rows: list[dict[str, str]]) -> dict[str, float]:
    """A one-row table's numeric columns (VLMEvalKit's ``d2df``); nothing for other shapes."""
    if len(rows) != 1:
        return {}
    return {k: v for k, text in rows[0].items() if k and (v := _float(text)) is not None}


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
