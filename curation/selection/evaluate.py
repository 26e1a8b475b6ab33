"""The built-in evaluator: benchmarks are datasets built by this toolkit whose ``sft`` records carry their references
in ``meta``; a model's answers to ``turns[0].user`` are scored with :mod:`curation.selection.metrics`."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe.selection import BenchmarkSet, BuiltinEvaluatorConfig
from curation.selection.items import ItemScore
from curation.selection.metrics import MME_CATEGORIES, anls, extract_choice, mme_answer, mme_scores, vqa_accuracy
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


def _choice(rec: SftRecord, prediction: str) -> str | None:
    options: Any = rec.meta["options"]
    return extract_choice(prediction, {str(k): str(v) for k, v in options.items()})


def _choice_correct(rec: SftRecord, prediction: str) -> bool:
    return _choice(rec, prediction) == _refs(rec)[0].strip().upper()


def _multiple_choice(records: Sequence[SftRecord], predictions: Sequence[str]) -> dict[str, float]:
    correct = unparsed = 0
    for rec, pred in zip(records, predictions, strict=True):
        letter = _choice(rec, pred)
        if letter is None:
            unparsed += 1
        elif letter == _refs(rec)[0].strip().upper():
            correct += 1
    return {"accuracy": 100.0 * correct / len(records), "unparsed": float(unparsed)}


def benchmark_items(bench: str, records: Sequence[SftRecord], predictions: Sequence[str]) -> list[ItemScore]:
    """Per-item values of the benchmark's metrics that are means over items (their mean is the metric
    ``score_benchmark`` reports): accuracy and ANLS per record (key = item); MME per image
    (``<subtask>/<image_id>``), weighted so that the mean over a subtask's images is its acc + acc+ and the
    mean over a category's (or all) images is the category's (or the total) sum of subtask scores. A multiple
    choice benchmark's ``unparsed`` is a count, so it has no per-item values."""
    metric = records[0].meta["metric"]
    pairs = list(zip(records, predictions, strict=True))
    if metric == "vqa_accuracy":
        return [ItemScore(bench, r.key, "accuracy", 100.0 * vqa_accuracy(p, _refs(r))) for r, p in pairs]
    if metric == "anls":
        return [ItemScore(bench, r.key, "anls", 100.0 * anls(p, _refs(r))) for r, p in pairs]
    if metric == "multiple_choice":
        return [ItemScore(bench, r.key, "accuracy", 100.0 * _choice_correct(r, p)) for r, p in pairs]
    if metric == "mme":
        return _mme_items(bench, [_mme_item(r, p) for r, p in pairs])
    raise ValueError(f"unknown metric {metric!r}")


def _mme_items(bench: str, answers: list[tuple[str, str, str, bool]]) -> list[ItemScore]:
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    category = {}
    for subtask, image_id, cat, correct in answers:
        images[subtask][image_id].append(correct)
        category[subtask] = cat
    per_image: list[tuple[str, str, float]] = []  # (subtask, item, acc + acc+ share of the subtask's mean)
    for subtask, by_image in images.items():
        questions = sum(len(a) for a in by_image.values())
        for image_id, correct in by_image.items():
            acc = 100.0 * sum(correct) * len(by_image) / questions  # the subtask's acc is the mean of these
            per_image.append((subtask, f"{subtask}/{image_id}", acc + 100.0 * all(correct)))
    counts = {s: len(by_image) for s, by_image in images.items()}
    out = [ItemScore(bench, item, subtask, value) for subtask, item, value in per_image]
    for group in (*MME_CATEGORIES, "total"):
        members = [row for row in per_image if group == "total" or category[row[0]] == group]
        out += [ItemScore(bench, item, group, value * len(members) / counts[s]) for s, item, value in members]
    return out


@dataclass
class Evaluated:
    """What the built-in evaluator gives: ``{"<benchmark>/<metric>": value}`` and the per-item values."""

    metrics: dict[str, float] = field(default_factory=dict)
    items: list[ItemScore] = field(default_factory=list)


def evaluate_builtin(cfg: BuiltinEvaluatorConfig, predict: PredictFn) -> Evaluated:
    """The metrics over ``cfg.benchmarks`` and their per-item values, predicting in batches of ``cfg.batch_size``."""
    out = Evaluated()
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
            out.metrics[f"{bench.name}/{name}"] = value
        out.items += benchmark_items(bench.name, records, predictions)
    return out


def write_eval(path: Path, metrics: dict[str, float], score: float | None) -> None:
    """Write ``{"metrics": ..., "score": ...}`` atomically."""
    atomic_write_json(Path(path), {"metrics": metrics, "score": score})
