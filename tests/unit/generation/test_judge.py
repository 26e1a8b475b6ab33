"""The judge step on its own: parsing replies, prompts, config errors, and ``process_batch`` against the loopback
OpenAI-compatible server and vLLM's contract double (outcomes, meta, counts, the cache)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from curation.errors import CurationError
from curation.generation.judge.parse import parse_rating
from curation.generation.judge.presets import PRESETS
from curation.generation.judge.prompts import exchange, user_message
from curation.generation.judge.step import Judge
from curation.recipe import JudgeCriterion, JudgeStep
from curation.sample import Sample
from curation.steps.contract import StepContext
from schemas import SftRecord, Turn
from tests.llm_models import shared_tiny_causal_lm
from tests.openai_server import ScriptedOpenAIServer, error_body, message_text
from tests.vllm_double import images_of, install_vllm_double, text_of

# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reply", "rating", "outcome"),
    [
        ("The answer is on topic.\nRating: 4", 4, "ok"),
        ("Fine.\n**Rating:** 5\n", 5, "ok"),
        ("Mostly.\nrating = 3/5", 3, "ok"),
        ('{"reason": "ok", "rating": 2}', 2, "ok"),
        ('```json\n{"reason": "ok", "rating": 1}\n```', 1, "ok"),
        ('Reason first.\n{"rating": 4.0}', 4, "ok"),
        ("Rating: 0", None, "out_of_range"),
        ("Rating: 6", None, "out_of_range"),
        ('{"rating": 9}', None, "out_of_range"),
        ("I would give it a 4.", None, "no_rating"),
        ("Rating: 4 because it is good", None, "no_rating"),
        ("Rating: 4\nActually, let me reconsider.", None, "no_rating"),
        ('{"rating": true}', None, "no_rating"),
        ('{"rating": "4"}', None, "no_rating"),
        ("Rating: four", None, "no_rating"),
        ("", None, "no_rating"),
        ("{" * 50_000, None, "no_rating"),
        ("Rating: " + "9" * 5000, None, "no_rating"),
    ],
)
def test_parse_rating_is_strict(reply, rating, outcome):
    parsed = parse_rating(reply, 1, 5)
    assert (parsed.rating, parsed.outcome) == (rating, outcome)


def test_json_mode_counts_fallbacks():
    assert parse_rating('{"reason": "x", "rating": 3}', 1, 5, json_mode=True).json_fallback is False
    assert parse_rating("x\nRating: 3", 1, 5, json_mode=True).json_fallback is True
    assert parse_rating("x\nRating: 3", 1, 5, json_mode=False).json_fallback is False
    assert parse_rating("Rating: 10", 0, 10).rating == 10


# ---------------------------------------------------------------- prompts and config

OPENAI = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "judge"}


def judge_config(**fields: Any) -> JudgeStep:
    return JudgeStep.model_validate({"step": "judge", "engine": OPENAI, "criteria": list(PRESETS), **fields})


def test_presets_and_custom_criteria_resolve():
    cfg = judge_config(
        criteria=["relevance", {"name": "visual_dependency", "scale": [0, 10]}, {"name": "ocr", "prompt": "{answer}?"}]
    )
    relevance, visual, ocr = cfg.resolved_criteria()
    assert (relevance.images, relevance.scale, relevance.prompt) == (False, (1, 5), PRESETS["relevance"].prompt)
    assert (visual.images, visual.scale) == (True, (0, 10))
    assert (ocr.images, ocr.scale) == (False, (1, 5))
    assert cfg.score_names("judge") == [
        "relevance_min", "relevance_mean", "visual_dependency_min", "visual_dependency_mean", "ocr_min", "ocr_mean",
    ]  # fmt: skip
    assert Judge.scores(cfg, "judge") == cfg.score_names("judge")


def test_user_message_fills_the_template_and_asks_for_the_format():
    criterion = JudgeCriterion(name="relevance").resolved()
    turns = [Turn(user="What is {x}?", assistant="Braces {} stay.")]
    text = user_message(criterion, exchange(turns), json_mode=False)
    assert "Question:\n<<<\nWhat is {x}?\n>>>" in text and "Braces {} stay." in text
    assert "1: unrelated" in text and "5: directly" in text
    assert text.endswith("write exactly `Rating: N`, where N is an integer from 1 to 5.")
    as_json = user_message(criterion, exchange(turns), json_mode=True)
    assert as_json.endswith('{"reason": "<one sentence>", "rating": <an integer from 1 to 5>}.')
    both = exchange([Turn(user="a", assistant="b"), Turn(user="c", assistant="d")])
    assert both == {
        "question": "a\n\nc",
        "answer": "b\n\nd",
        "conversation": "User: a\nAssistant: b\nUser: c\nAssistant: d",
    }


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        (["relevanse"], "unknown preset 'relevanse'; did you mean 'relevance'?"),
        ([{"name": "ocr"}], "criterion 'ocr': give a prompt"),
        ([{"name": "ocr", "prompt": "no fields"}], "must contain {question}, {answer} or {conversation}"),
        ([{"name": "ocr", "prompt": "{answer} {score}"}], "unknown field {score}"),
        ([{"name": "ocr", "prompt": "{answer} }"}], "Single '}'"),
        ([{"name": "relevance", "scale": [5, 1]}], "[low, high] with 0 <= low < high <= 100"),
        ([{"name": "Bad-Name", "prompt": "{answer}"}], "String should match pattern"),
        (["relevance", "relevance"], "repeated: relevance"),
        ([], "at least 1 item"),
    ],
)
def test_bad_criteria_are_one_line_errors(criteria, message):
    with pytest.raises(ValidationError) as caught:
        judge_config(criteria=criteria)
    assert message in str(caught.value)


# ---------------------------------------------------------------- the step


def png(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(out, "PNG")
    return out.getvalue()


def sample(key: str, turns: list[tuple[str, str]], images: int = 1, meta: dict | None = None) -> Sample:
    record = SftRecord(
        key=key,
        source="demo",
        meta=meta or {},
        images=[png(c) for c in ("red", "blue", "green")[:images]],
        turns=[Turn(user=u, assistant=a) for u, a in turns],
    )
    return Sample(record, "test")


CRITERION_OF = {
    "Rate how relevant": "relevance",
    "Rate the formatting": "formatting",
    "Rate how much the question": "visual_dependency",
    "Rate how well the question": "image_correspondence",
}


def asked(body: dict) -> tuple[str, str, str]:
    """(criterion, question, answer) of a judge request, read back from its prompt."""
    text = message_text(body["messages"][-1])
    criterion = next(name for start, name in CRITERION_OF.items() if text.startswith(start))
    question, answer = re.findall(r"<<<\n(.*?)\n>>>", text, re.DOTALL)
    return criterion, question, answer


def scripted(body: dict) -> Any:
    """Ratings from the answer text: 'r<criterion initial><N>' tokens; 'garbled' answers get no rating,
    'boom' answers fail."""
    criterion, _, answer = asked(body)
    if "boom" in answer:
        return 500, error_body(500, "judge crashed")
    if "garbled" in answer and criterion == "formatting":
        return "This reply forgot the rating."
    found = re.search(rf"r{criterion[0]}(\d+)", answer)
    return f"Judged.\nRating: {found.group(1) if found else 3}"


def make_step(server: ScriptedOpenAIServer, tmp_path: Path, **fields: Any) -> Judge:
    engine = {**OPENAI, "base_url": server.base_url, "max_retries": 1, "timeout": 5.0, **fields.pop("engine", {})}
    cfg = JudgeStep.model_validate(
        {"step": "judge", "engine": engine, "criteria": list(PRESETS), "cache_dir": str(tmp_path / "cache"), **fields}
    )
    return Judge(cfg, StepContext("judge", tmp_path))


def test_per_turn_ratings_meta_and_counts(tmp_path):
    samples = [
        sample("a", [("Q1?", "rr5 rf4 rv2 ri1"), ("Q2?", "rr3 rf2 rv4 ri5")], meta={"ratings": {"shipped": [9, 9]}}),
        sample("b", [("Text only?", "rr4 garbled")], images=0),
    ]
    with ScriptedOpenAIServer(scripted) as server:
        step = make_step(server, tmp_path)
        a, b = step.process_batch(samples)
        report = step.report()
        step.close()
    assert isinstance(a, Sample) and isinstance(b, Sample)
    assert a.record.meta["ratings"] == {
        "shipped": [9, 9],  # a reader's ratings stay
        "relevance": [5, 3],
        "formatting": [4, 2],
        "visual_dependency": [2, 4],
        "image_correspondence": [1, 5],
    }
    assert (a.record.meta["relevance_min"], a.record.meta["relevance_mean"]) == (3, 4.0)
    assert (a.record.meta["image_correspondence_min"], a.record.meta["image_correspondence_mean"]) == (1, 3.0)
    meta = b.record.meta
    assert meta["ratings"] == {"relevance": [4], "formatting": [None], "visual_dependency": [None],
                               "image_correspondence": [None]}  # fmt: skip
    assert meta["formatting_min"] is None and meta["formatting_mean"] is None and meta["relevance_min"] == 4
    assert len(server.chat_requests) == 8 + 2  # no image criteria for a sample without images
    assert report["requests"] == 10 and report["rated"] == 9 and report["judge_unparsed"] == 1
    assert report["unparsed"] == {"no_rating": 1} and report["skipped_no_images"] == 2
    assert report["ratings"]["relevance"] == {"3": 1, "4": 1, "5": 1}
    assert report["generated_requests"] == 10 and report["cached_requests"] == 0
    images = [r.images for r in server.chat_requests if asked(r.body)[0] == "visual_dependency"]
    assert all(len(i) == 1 and i[0][0] == "image/png" for i in images)
    assert not any(r.images for r in server.chat_requests if asked(r.body)[0] == "relevance")


def test_unparsed_and_failed_outcomes_keep_or_drop(tmp_path):
    batch = [
        sample("garbled", [("Q?", "garbled")]),
        sample("boom", [("Q?", "boom")]),
        sample("fine", [("Q?", "rr2")]),
    ]

    def run(**fields: Any) -> tuple[list, dict, int]:
        with ScriptedOpenAIServer(scripted) as server:
            step = make_step(server, tmp_path / str(len(fields)) / "_".join(map(str, fields.values())), **fields)
            out = step.process_batch([sample(s.record.key, [(t.user, t.assistant) for t in s.record.turns])
                                      for s in batch])  # fmt: skip
            report = step.report()
            step.close()
        return out, report, len(server.chat_requests)

    out, report, asked_n = run()
    assert [o if isinstance(o, str) else "kept" for o in out] == ["kept", "judge_failed:http_500", "kept"]
    assert report["failures"] == {"http_500": 4}  # failed requests, one per criterion
    assert asked_n == 4 + 4 * 2 + 4  # the failing requests retried once (max_retries 1)
    out, report, _ = run(on_unparsed="drop", on_failure="keep")
    assert [o if isinstance(o, str) else "kept" for o in out] == ["judge_unparsed", "kept", "kept"]
    kept = out[1].record.meta
    assert kept["ratings"]["relevance"] == [None] and kept["relevance_min"] is None  # never a made-up rating
    assert report["judge_unparsed"] == 1 and report["failures"] == {"http_500": 4}


def test_per_sample_one_request_a_criterion_rates_every_turn(tmp_path):
    with ScriptedOpenAIServer(scripted) as server:
        step = make_step(server, tmp_path, per="sample", criteria=["relevance"])
        (out,) = step.process_batch([sample("s", [("Q1?", "rr2"), ("Q2?", "plain"), ("Q3?", "x")])])
        step.close()
    (only,) = server.chat_requests
    _, question, answer = asked(only.body)
    assert question == "Q1?\n\nQ2?\n\nQ3?" and answer == "rr2\n\nplain\n\nx"
    assert out.record.meta["ratings"]["relevance"] == [2, 2, 2] and out.record.meta["relevance_mean"] == 2.0


def test_a_rerun_asks_the_engine_nothing(tmp_path):
    batch = lambda: [sample("a", [("Q?", "rr4")]), sample("b", [("Q?", "rr1 boom")])]  # noqa: E731
    with ScriptedOpenAIServer(scripted) as server:
        first = make_step(server, tmp_path, on_failure="keep")
        first.process_batch(batch())
        first.close()
        asked_first = len(server.chat_requests)
        again = make_step(server, tmp_path, on_failure="keep")
        out = again.process_batch(batch())
        report = again.report()
        again.close()
    retried = server.chat_requests[asked_first:]
    assert len(retried) == 4 * 2 and all("boom" in asked(r.body)[2] for r in retried)  # failures are not cached
    assert report["cached_requests"] == 4 and report["generated_requests"] == 0
    assert out[0].record.meta["ratings"]["relevance"] == [4]


def test_json_mode_asks_for_the_schema_and_reads_json(tmp_path):
    def as_json(body: dict) -> str:
        criterion = asked(body)[0]
        if criterion == "formatting":
            return "Rating: 2"  # no JSON: read by the fallback, counted
        return json.dumps({"reason": "ok", "rating": 5 if criterion == "relevance" else 1})

    with ScriptedOpenAIServer(as_json) as server:
        step = make_step(server, tmp_path, json_mode=True)
        (out,) = step.process_batch([sample("j", [("Q?", "A.")])])
        report = step.report()
        step.close()
    formats = [r.body["response_format"] for r in server.chat_requests]
    assert all(f["type"] == "json_schema" and f["json_schema"]["name"] == "rating" for f in formats)
    assert formats[0]["json_schema"]["schema"]["properties"]["rating"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 5,
    }
    assert out.record.meta["ratings"]["relevance"] == [5] and out.record.meta["ratings"]["formatting"] == [2]
    assert report["json_fallbacks"] == 1


def test_vllm_judge_gets_pil_images_and_structured_outputs(tmp_path, monkeypatch):
    def respond(conversation: list[dict], params: Any) -> str:
        images = images_of(conversation)
        rating = 5 if images and images[0].getpixel((0, 0)) == (255, 0, 0) else 2
        return json.dumps({"reason": text_of(conversation[-1]["content"])[:20], "rating": rating})

    double = install_vllm_double(monkeypatch, respond)
    cfg = JudgeStep.model_validate(
        {"step": "judge", "engine": {"type": "vllm", "model": "some/vlm"}, "json_mode": True,
         "criteria": ["relevance", "image_correspondence"], "cache_dir": str(tmp_path / "cache")}
    )  # fmt: skip
    step = Judge(cfg, StepContext("judge", tmp_path))
    (out,) = step.process_batch([sample("v", [("Q?", "A."), ("Q2?", "A2.")])])
    step.close()
    assert out.record.meta["ratings"] == {"relevance": [2, 2], "image_correspondence": [5, 5]}
    params = [p for call in double.chat_calls for p in call.sampling_params]
    assert all(p.structured_outputs.json["title"] == "rating" and p.temperature == 0.0 for p in params)
    with_images = [c for call in double.chat_calls for c in call.conversations if images_of(c)]
    assert len(with_images) == 2 and all(len(images_of(c)) == 1 for c in with_images)


def test_text_only_engines_refuse_image_criteria(tmp_path, tmp_path_factory, monkeypatch):
    install_vllm_double(monkeypatch, lambda conversation, params: "Rating: 3", multimodal=False)
    vllm_cfg = JudgeStep.model_validate(
        {"step": "judge", "engine": {"type": "vllm", "model": "some/llm"}, "cache_dir": str(tmp_path / "cache"),
         "criteria": ["relevance", "visual_dependency"]}
    )  # fmt: skip
    with pytest.raises(CurationError, match=r"^step judge: the criteria visual_dependency need the images"):
        Judge(vllm_cfg, StepContext("judge", tmp_path))
    Judge(vllm_cfg.model_copy(update={"criteria": vllm_cfg.criteria[:1]}), StepContext("judge", tmp_path)).close()

    model = shared_tiny_causal_lm(tmp_path_factory)
    tf_cfg = JudgeStep.model_validate(
        {"step": "judge", "engine": {"type": "transformers", "model": str(model)}, "criteria": list(PRESETS)}
    )
    with pytest.raises(CurationError) as caught:
        Judge.check_inputs(tf_cfg, "steps.1", {})
    assert str(caught.value).startswith("steps.1: the criteria visual_dependency, image_correspondence need the images")
    with pytest.raises(CurationError, match=r"^steps\.1\.engine\.model: no such directory"):
        Judge.check_inputs(tf_cfg.model_copy(update={"engine": tf_cfg.engine.model_copy(update={"model": "/nope"})}),
                           "steps.1", {})  # fmt: skip


def test_a_rating_out_of_another_denominator_is_no_rating():
    from curation.generation.judge.parse import parse_rating

    assert parse_rating("Fine.\nRating: 4/5", 1, 5).rating == 4
    for reply in ("Fine.\nRating: 3/10", "Fine.\nrating = 2/1", "Fine.\nRating: 8/10"):
        assert parse_rating(reply, 1, 5).outcome == "no_rating", reply
