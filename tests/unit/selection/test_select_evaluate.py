"""The built-in evaluator over real eval datasets built by this toolkit (jsonl sft sources whose extra fields become
``meta``), a test double of the model answering from a table, exact metrics, batching and loud errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.recipe.selection import BenchmarkSet, BuiltinEvaluatorConfig
from curation.selection.evaluate import _mme_items, evaluate_builtin, load_benchmark, score_benchmark, write_eval
from curation.selection.metrics import mme_scores
from schemas import SftRecord
from tests.helpers import png

VQA_REFS = ["2"] * 3 + ["3"] * 7  # "two" scores 0.9, "3" scores 1.0
ROWS: dict[str, list[dict]] = {
    "vqa": [
        {"q": "How many dogs?", "a": "2", "metric": "vqa_accuracy", "references": VQA_REFS},
        {"q": "What color is the car?", "a": "red", "metric": "vqa_accuracy", "references": ["red"] * 10},
        {"q": "Is it raining?", "a": "no", "metric": "vqa_accuracy", "references": ["no"] * 10},
    ],
    "doc": [
        {"q": "What is the invoice number?", "a": "4411", "metric": "anls", "references": ["4411", "#4411"]},
        {"q": "Who signed it?", "a": "Jane Doe", "metric": "anls", "references": ["jane doe"]},
    ],
    "mc": [
        {"q": "Which animal? A. cat B. dog", "a": "B", "metric": "multiple_choice", "references": ["B"],
         "options": {"A": "cat", "B": "dog"}},
        {"q": "Which shape? A. circle B. square C. star", "a": "C", "metric": "multiple_choice", "references": ["C"],
         "options": {"A": "circle", "B": "square", "C": "star"}},
        {"q": "Which season? A. summer B. winter", "a": "A", "metric": "multiple_choice", "references": ["A"],
         "options": {"A": "summer", "B": "winter"}},
        {"q": "Which fruit? A. apple B. pear", "a": "B", "metric": "multiple_choice", "references": ["B"],
         "options": {"A": "apple", "B": "pear"}},
    ],
    "mme": [
        {"q": f"{sub} question {i} of {img}?", "a": ans, "metric": "mme", "references": [ans], "subtask": sub,
         "image_id": img, "category": cat}
        for sub, cat, img in [("color", "perception", "c1"), ("color", "perception", "c2"),
                              ("code_reasoning", "cognition", "r1"), ("code_reasoning", "cognition", "r2")]
        for i, ans in enumerate(["yes", "no"])
    ],
    "mixed": [
        {"q": "Q1?", "a": "x", "metric": "vqa_accuracy", "references": ["x"]},
        {"q": "Q2?", "a": "x", "metric": "vqa_accuracy", "references": ["x"]},
        {"q": "Q3?", "a": "x", "metric": "anls", "references": ["x"]},
    ],
    "nometric": [{"q": "Q?", "a": "x", "references": ["x"]}],
    "unknown": [{"q": "Q?", "a": "x", "metric": "bleu", "references": ["x"]}],
}  # fmt: skip

ANSWERS = {
    "How many dogs?": "Two.",  # 0.9
    "What color is the car?": "Red",  # 1.0
    "Is it raining?": "yes",  # 0.0
    "What is the invoice number?": "#4411",  # 1.0
    "Who signed it?": "Jane Do",  # 1 - 1/8 = 0.875
    "Which animal? A. cat B. dog": "The answer is B.",  # right
    "Which shape? A. circle B. square C. star": "(A)",  # wrong
    "Which season? A. summer B. winter": "summer",  # right, by option text
    "Which fruit? A. apple B. pear": "I am not sure",  # unparsed
    # color: c1 both right, c2 one right -> acc 75 + acc+ 50; code_reasoning: r1 both right, r2 none -> 50 + 50
    "color question 0 of c1?": "Yes",
    "color question 1 of c1?": "No.",
    "color question 0 of c2?": "Yes, it is.",
    "color question 1 of c2?": "yes",
    "code_reasoning question 0 of r1?": "yes",
    "code_reasoning question 1 of r1?": "no",
    "code_reasoning question 0 of r2?": "no",
    "code_reasoning question 1 of r2?": "maybe",
}


@pytest.fixture(scope="module")
def benches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One built dataset per benchmark, from a jsonl source with an image per question."""
    root = tmp_path_factory.mktemp("eval-sets")
    out = {}
    for name, rows in ROWS.items():
        src = root / f"{name}.jsonl"
        with open(src, "w") as f:
            for i, row in enumerate(rows):
                image = root / f"{name}-{i}.png"
                image.write_bytes(png(seed=i + 1))
                extra = {k: v for k, v in row.items() if k not in ("q", "a")}
                line = {
                    "id": f"{name}-{i}",
                    "images": [image.name],
                    "turns": [{"user": row["q"], "assistant": row["a"]}],
                }
                f.write(json.dumps({**line, **extra}) + "\n")
        recipe = validate_recipe(
            {
                "name": name,
                "sources": [
                    {
                        "name": name,
                        "reader": "jsonl",
                        "record": "sft",
                        "path": str(src),
                        "image_root": str(root),
                        "fields": {"key": "id"},
                    }
                ],
                "output": {"kind": "sft", "max_samples_per_shard": 3},
            }
        )
        out[name] = build(recipe, root / "built" / name, progress=False).out
    return out


class TableModel:
    """A test double of the model: answers each question from a table and records its batch sizes."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.batches: list[int] = []

    def __call__(self, records: list[SftRecord]) -> list[str]:
        self.batches.append(len(records))
        assert all(r.images for r in records)  # the records come with their images
        return [self.answers[r.turns[0].user] for r in records]


def _bench(benches: dict[str, Path], name: str, limit: int | None = None) -> BenchmarkSet:
    return BenchmarkSet(name=name, shards=str(benches[name]), limit=limit)


def test_evaluate_builtin_exact_metrics(benches: dict[str, Path]) -> None:
    cfg = BuiltinEvaluatorConfig(
        type="builtin", benchmarks=[_bench(benches, n) for n in ("vqa", "doc", "mc", "mme")], batch_size=3
    )
    model = TableModel(ANSWERS)
    evaluated = evaluate_builtin(cfg, model)
    metrics = evaluated.metrics
    assert metrics == pytest.approx(
        {
            "vqa/accuracy": 100 * (0.9 + 1.0 + 0.0) / 3,
            "doc/anls": 100 * (1.0 + 0.875) / 2,
            "mc/accuracy": 50.0,
            "mc/unparsed": 1.0,
            "mme/color": 125.0,
            "mme/color_acc": 75.0,
            "mme/color_acc_plus": 50.0,
            "mme/code_reasoning": 100.0,
            "mme/code_reasoning_acc": 50.0,
            "mme/code_reasoning_acc_plus": 50.0,
            "mme/perception": 125.0,
            "mme/cognition": 100.0,
            "mme/total": 225.0,
        }
    )
    assert model.batches == [3, 2, 3, 1, 3, 3, 2]  # 3 + 2 + 4 + 8 records in batches of 3
    # every metric that is a mean over items has per-item values whose mean is the metric
    by_key: dict[str, list[float]] = {}
    for row in evaluated.items:
        by_key.setdefault(row.key, []).append(row.value)
    assert set(by_key) == {k for k in metrics if not k.endswith(("_acc", "_acc_plus", "/unparsed"))}
    assert {k: sum(v) / len(v) for k, v in by_key.items()} == pytest.approx({k: metrics[k] for k in by_key})
    assert len(by_key["vqa/accuracy"]) == 3 and len(by_key["mme/total"]) == 4  # MME items are images


def test_mme_items_reproduce_the_scores_with_uneven_questions_per_image() -> None:
    answers = [  # (subtask, image, category, correct): image b has three questions, d only one
        ("color", "a", "perception", True), ("color", "a", "perception", True),
        ("color", "b", "perception", True), ("color", "b", "perception", False), ("color", "b", "perception", True),
        ("ocr", "c", "perception", False), ("ocr", "c", "perception", True),
        ("code", "d", "cognition", True), ("code", "e", "cognition", False), ("code", "e", "cognition", False),
    ]  # fmt: skip
    scores = mme_scores(answers)
    by_key: dict[str, list[float]] = {}
    for row in _mme_items("mme", answers):
        by_key.setdefault(row.metric, []).append(row.value)
    assert set(by_key) == {"color", "ocr", "code", "perception", "cognition", "total"}
    assert {k: sum(v) / len(v) for k, v in by_key.items()} == pytest.approx({k: scores[k] for k in by_key})


def test_load_benchmark_limit_and_meta(benches: dict[str, Path]) -> None:
    records = load_benchmark(_bench(benches, "mc", limit=2))
    assert [r.turns[0].user for r in records] == [ROWS["mc"][0]["q"], ROWS["mc"][1]["q"]]
    assert records[0].meta["options"] == {"A": "cat", "B": "dog"} and records[0].meta["references"] == ["B"]
    assert len(load_benchmark(_bench(benches, "mixed", limit=2))) == 2  # a prefix with one metric is fine


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mixed", "mixed metrics \\('vqa_accuracy' and 'anls' at record mixed-2\\)"),
        ("nometric", "record nometric-0: no meta.metric"),
        ("unknown", "unknown meta.metric 'bleu'"),
    ],
)
def test_load_benchmark_refuses_bad_sets(benches: dict[str, Path], name: str, message: str) -> None:
    with pytest.raises(CurationError, match=f"benchmark {name}: .*{message}"):
        load_benchmark(_bench(benches, name))


def test_load_benchmark_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(CurationError, match=r"benchmark gone: .*not a built dataset"):
        load_benchmark(BenchmarkSet(name="gone", shards=str(tmp_path / "nowhere")))


def test_predict_must_answer_every_record(benches: dict[str, Path]) -> None:
    cfg = BuiltinEvaluatorConfig(type="builtin", benchmarks=[_bench(benches, "vqa")])
    with pytest.raises(CurationError, match="1 answers for 3"):
        evaluate_builtin(cfg, lambda records: ["x"])


def test_score_benchmark_checks_lengths(benches: dict[str, Path]) -> None:
    records = load_benchmark(_bench(benches, "doc"))
    with pytest.raises(ValueError, match="1 predictions for 2 records"):
        score_benchmark(records, ["4411"])


def test_write_eval(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    write_eval(path, {"vqa/accuracy": 63.3}, 63.3)
    assert json.loads(path.read_text()) == {"metrics": {"vqa/accuracy": 63.3}, "score": 63.3}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temporary file left
