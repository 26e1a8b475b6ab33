"""The decontamination step's question index: indexing each benchmark question under its rarest n-grams
only gives exactly the matches of a full comparison, also when most n-grams are shared by everything."""

from __future__ import annotations

import json
import random

import pytest

from curation.recipe import DecontaminateStep
from curation.sample import Sample
from curation.steps.contract import StepContext
from curation.steps.decontaminate import Decontaminate, ngrams, prepare_benchmarks
from schemas import SftRecord, Turn

WORDS = ["what", "is", "the", "value", "of", "x", "in", "figure", "shown", "here", "bar", "red"]


def _question(rng: random.Random) -> str:
    return "what is the " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


@pytest.mark.parametrize(("ngram", "min_overlap"), [(3, 0.8), (2, 0.5), (1, 1.0), (3, 0.34)])
def test_rarest_gram_index_matches_a_full_comparison(tmp_path, ngram, min_overlap):
    rng = random.Random(ngram * 100 + int(min_overlap * 10))
    bench = [_question(rng) for _ in range(300)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in bench))
    cfg = DecontaminateStep.model_validate(
        {
            "step": "decontaminate",
            "match": "question",
            "ngram": ngram,
            "min_overlap": min_overlap,
            "min_question_words": 3,
            "benchmarks": [{"name": "b", "questions": str(tmp_path / "q.jsonl")}],
        }
    )
    prepare_benchmarks(cfg, "d", tmp_path)
    step = Decontaminate(cfg, StepContext("d", tmp_path))
    bench_grams = [g for q in bench if (w := ngrams(q, ngram))[0] >= 3 for g in [w[1]]]
    found = 0
    for i in range(400):
        q = bench[i % len(bench)] if i % 10 == 0 else _question(rng)
        record = SftRecord.model_construct(
            key=f"k{i}", source="s", meta={}, images=[], turns=[Turn(user=q, assistant="a")]
        )
        words, grams = ngrams(q, ngram)
        expected = words >= 3 and any(len(grams & g) / len(g) >= min_overlap for g in bench_grams)
        got = step(Sample(record, "")) == "contaminated_question:b"
        assert got == expected, q
        found += got
    assert found >= 40  # the verbatim copies at least
