"""The built-in evaluator: benchmarks are datasets built by this toolkit whose ``sft`` records carry their references
in ``meta``; a model's answers to ``turns[0].user`` are scored with :mod:`curation.selection.metrics`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe.selection import BenchmarkSet, BuiltinEvaluatorConfig
from curation.selection.metrics import anls, extract_choice, mme_answer, mme_scores, vqa_accuracy
from schemas import SftRecord
from shards.atomic import atomic_write_json
from shards.manifest import ManifestError
from shards.reader import TruncatedShardError, iter_dataset

PredictFn = Callable[[list[SftRecord]], list[str]]
"""The model's answers to each record's ``turns[0].user``, with the record's images (one string per record)."""

METRICS = ("vqa_accuracy", "anls", "multiple_choice", "mme")


def load_benchmark(bench: BenchmarkSet) -> list[SftRecord]:
    """The first ``limit`` records of a benchmark, checked: sft records, one known ``meta.metric``, references."""
    path = Path(bench.shards)
    try:
        records = list(itertools.islice(iter_dataset(path), bench.limit))
    except (FileNotFoundError, ManifestError, TruncatedShardError) as exc:
        raise CurationError(f"benchmark {bench.name}: {exc}") from None
    if not records:
        raise CurationError(f"benchmark {bench.name}: {path} holds no records")
    metric = None
    checked: list[SftRecord] = []
    for rec in records:
        if not isinstance(rec, SftRecord):
            raise CurationError(f"benchmark {bench.name}: record {rec.key} is a {rec.kind} record, not sft")
        checked.append(rec)
        this = _check_record(bench.name, rec)
        if metric is None:
            metric = this
        elif this != metric:
            raise CurationError(
                f"benchmark {bench.name}: mixed metrics ({metric!r} and {this!r} at record {rec.key}); "
                "one metric per benchmark"
            )
    return checked


def _check_record(bench: str, rec: SftRecord) -> str:
    """The record's metric, after checking the meta fields that metric needs."""
    where = f"benchmark {bench}: record {rec.key}"
    meta = rec.meta
    metric = meta.get("metric")
    if metric is None:
        raise CurationError(f"{where}: no meta.metric (one of {', '.join(METRICS)})")
    if metric not in METRICS:
        raise CurationError(f"{where}: unknown meta.metric {metric!r} (known: {', '.join(METRICS)})")
    refs = meta.get("references")
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise CurationError(f"{where}: meta.references must be a non-empty list of strings, got {refs!r}")
    if metric == "multiple_choice":
        options = meta.get("options")
        if not isinstance(options, dict) or not options:
            raise CurationError(f"{where}: meta.options must be an object of letter -> text, got {options!r}")
    if metric == "mme":
        for field in ("subtask", "image_id", "category"):
            if meta.get(field) in (None, ""):
                raise CurationError(f"{where}: MME records need meta.{field}")
    return str(metric)


def score_benchmark(records: Sequence[SftRecord], predictions: Sequence[str]) -> dict[str, float]:
    """A benchmark's metrics: vqa_accuracy -> accuracy (0-100); anls -> anls (0-100); multiple_choice ->
    accuracy (0-100) and unparsed (count); mme -> total, perception, cognition and per-subtask scores."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    if not records:
        raise ValueError("no records to score")
    metric = records[0].meta["metric"]
    n = len(records)
    if metric == "vqa_accuracy":
        total = sum(vqa_accuracy(p, _refs(r)) for r, p in zip(records, predictions, strict=True))
        return {"accuracy": 100.0 * total / n}
    if metric == "anls":
        total = sum(anls(p, _refs(r)) for r, p in zip(records, predictions, strict=True))
        return {"anls": 100.0 * total / n}
    if metric == "multiple_choice":
        return _multiple_choice(records, predictions)
    if metric == "mme":
        return mme_scores(_mme_item(r, p) for r, p in zip(records, predictions, strict=True))
    raise ValueError(f"unknown metric {metric!r}")


def _refs(rec: SftRecord) -> list[str]:
    refs: Any = rec.meta["references"]
    return [str(r) for r in refs]


def _mme_item(rec: SftRecord, prediction: str) -> tuple[str, str, str, bool]:
    meta = rec.meta
    correct = mme_answer(prediction) == _refs(rec)[0].strip().lower()
    return str(meta["subtask"]), str(meta["image_id"]), str(meta["category"]), correct


def _multiple_choice(records: Sequence[SftRecord], predictions: Sequence[str]) -> dict[str, float]:
    correct = unparsed = 0
    for rec, pred in zip(records, predictions, strict=True):
        options: Any = rec.meta["options"]
        letter = extract_choice(pred, {str(k): str(v) for k, v in options.items()})
        if letter is None:
            unparsed += 1
        elif letter == _refs(rec)[0].strip().upper():
            correct += 1
    return {"accuracy": 100.0 * correct / len(records), "unparsed": float(unparsed)}


def evaluate_builtin(cfg: BuiltinEvaluatorConfig, predict: PredictFn) -> dict[str, float]:
    """``{"<benchmark>/<metric>": value}`` over ``cfg.benchmarks``, predicting in batches of ``cfg.batch_size``."""
    out: dict[str, float] = {}
    for bench in cfg.benchmarks:
        records = load_benchmark(bench)
        predictions: list[str] = []
        for start in range(0, len(records), cfg.batch_size):
            batch = records[start : start + cfg.batch_size]
            answers = list(predict(batch))
            if len(answers) != len(batch):
                raise CurationError(f"benchmark {bench.name}: the model gave {len(answers)} answers for {len(batch)}")
            predictions.extend(str(a) for a in answers)
        for name, value in score_benchmark(records, predictions).items():
            out[f"{bench.name}/{name}"] = value
    return out


def write_eval(path: Path, metrics: dict[str, float], score: float | None) -> None:
    """Write ``{"metrics": ..., "score": ...}`` atomically."""
    atomic_write_json(Path(path), {"metrics": metrics, "score": score})
