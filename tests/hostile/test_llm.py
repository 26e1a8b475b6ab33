"""Docmatix generation against misbehaving LLM endpoints and untrusted model output.

The bar for every case: the build records the document as dropped with a clear reason (or keeps it repaired,
the repair counted), never crashes; the accounting is exact (``curate verify`` passes); a rerun gives the same
dataset and asks the endpoint only for what failed; each test runs in seconds (small timeouts). The endpoint is
``tests/openai_server.py`` on 127.0.0.1, its misbehaviours bounded in time.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.build.runner import build
from curation.generation.docmatix.cache import DB_NAME, GenerationCache
from curation.generation.docmatix.filters import DOCMATIX_V1_RULES, IMPROVED_RULES, _searcher, apply_filters
from curation.generation.docmatix.parse import PUBLISHED_QA, _published_matches, parse_qa, parse_qa_json
from curation.generation.docmatix.untrusted import clean_text, max_reply_chars, sanitize_generation
from curation.generation.engines import ChatRequest, Generation, GenerationFailure, make_engine
from curation.recipe import validate_recipe
from curation.recipe.generation import OpenAIEngineConfig
from curation.steps.contract import StepContext
from shards import read_manifest, verify_dataset
from shards.reader import iter_dataset
from tests.builds import CLI
from tests.docmatix_data import Doc, make_docmatix_tars
from tests.openai_server import ScriptedOpenAIServer, chat_completion, error_body

TIMEOUT = 1.5  # the deadline of a request in these tests: stalls cost this much


def _completion(content: Any) -> tuple[int, dict]:
    body = chat_completion("", {})
    body["choices"][0]["message"]["content"] = content
    return 200, body


# What a broken endpoint does, and the generation failure it must become.
MISBEHAVIOURS: dict[str, tuple[Any, str]] = {
    "stall": (("stall",), "timeout"),
    "drip": (("drip", 0.02, "Q1: Slowly? A1: Yes."), "timeout"),
    "reset": (("reset", "Q1: Reset? A1: Yes."), "connection"),
    "length_longer": (("length", 100, "Q1: Longer? A1: Yes."), "connection"),
    "length_shorter": (("length", -20, "Q1: Shorter? A1: Yes."), "invalid_response"),
    "invalid_json": ((200, '{"choices": [{"message": '), "invalid_response"),
    "not_an_object": ((200, "[1, 2, 3]"), "invalid_response"),
    "nested_body": ((200, "[" * 200_000 + "]" * 200_000), "invalid_response"),
    "no_choices": ((200, {**chat_completion("", {}), "choices": []}), "invalid_response"),
    "null_content": (_completion(None), "invalid_response"),
    "number_content": (_completion(42), "invalid_response"),
    "rate_limited": ((429, error_body(429, "slow down")), "rate_limited"),
    "server_error": ((500, error_body(500, "boom")), "http_500"),
    "unavailable": ((503, error_body(503, "overloaded")), "http_503"),
}

SURROGATES = "Q1: What is \ud800 here?\nA1: A lone \udfff mark."
CONTROLS = "Q1: Who\x00 signed\x1b it?\x07\r\nA1: The\x85 mayor\x7f.\tYes."
CROWDED = "".join(f"Q{i}: What is item {i}?\nA{i}: Item {i} is fine.\n" for i in range(1, 151))
TEN_THOUSAND = "".join(f"Q{i}: Question {i}?\nA{i}: Answer {i}.\n" for i in range(1, 10_001))

# Replies with a 200 status whose content is hostile, and what becomes of the document.
HOSTILE_CONTENT: dict[str, tuple[str, str | list[tuple[str, str]]]] = {
    "surrogates": (SURROGATES, [("What is \ufffd here?", "A lone \ufffd mark.")]),
    "controls": (CONTROLS, [("Who signed it?", "The mayor.\tYes.")]),
    "five_megabytes": ("Q1: How long?\nA1: " + "very " * 1_000_000, "generation_too_long"),
    "ten_thousand_pairs": (TEN_THOUSAND, "generation_too_long"),
    "crowded": (CROWDED, [(f"What is item {i}?", f"Item {i} is fine.") for i in range(1, 101)]),
    "plain": ("Q1: What is the title?\nA1: Annual review", [("What is the title?", "Annual review")]),
}


def request(user: str, max_tokens: int = 64) -> ChatRequest:
    return ChatRequest((("user", user),), max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0)


def by_name(replies: dict[str, Any]):
    """A server script answering each request by the case name its last message holds (always the same reply,
    so retries meet the same misbehaviour)."""

    def script(body: dict) -> Any:
        text = "\n".join(str(m.get("content")) for m in body["messages"])
        return next(reply for name, reply in replies.items() if f"DOC-{name.upper()} " in text or text == name)

    return script


def openai_engine(server: ScriptedOpenAIServer, **overrides: Any):
    settings = {"timeout": TIMEOUT, "max_retries": 2, "concurrency": 32, **overrides}
    return make_engine(OpenAIEngineConfig(type="openai", base_url=server.base_url, model="m", **settings))


# ---------------------------------------------------------------- the engine against each misbehaviour


def test_every_misbehaviour_fails_its_own_request_only_and_in_time():
    """All misbehaviours in one batch, with healthy requests among them: each fails with its reason within the
    deadline; the healthy ones are answered; no request runs past the deadline, retries included."""
    replies = {name: reply for name, (reply, _) in MISBEHAVIOURS.items()} | {"fine": "Q1: Fine? A1: Yes."}
    names = [*MISBEHAVIOURS, "fine", "fine"]
    with ScriptedOpenAIServer(by_name(replies)) as server:
        engine = openai_engine(server)
        started = time.perf_counter()
        results = engine.generate([request(name) for name in names])
        seconds = time.perf_counter() - started
        engine.close()
    assert seconds < TIMEOUT + 1.0
    for name, result in zip(names, results, strict=True):
        if name == "fine":
            assert isinstance(result, Generation) and result.text == "Q1: Fine? A1: Yes."
        else:
            assert isinstance(result, GenerationFailure), name
            assert result.reason == MISBEHAVIOURS[name][1], (name, result)
            assert "\n" not in result.detail and len(result.detail) <= 500
    attempts = [r.body["messages"][-1]["content"] for r in server.chat_requests]
    assert max(attempts.count(name) for name in MISBEHAVIOURS) <= 3  # max_retries + 1


def test_a_body_larger_than_the_limit_is_not_read(monkeypatch):
    from curation.generation.engines import openai_engine as module

    monkeypatch.setattr(module, "max_response_bytes", lambda max_tokens: 10_000)
    with ScriptedOpenAIServer(["x" * 20_000, ("unsized", "y" * 20_000)]) as server:
        engine = openai_engine(server, concurrency=1)
        declared, streamed = engine.generate([request("a"), request("b")])
        engine.close()
    assert declared.reason == "response_too_large" and "Content-Length" in declared.detail
    assert streamed.reason == "response_too_large"


def test_invalid_utf8_and_odd_metadata_are_taken_apart_not_fatal():
    body = '{"choices": [{"message": {"content": "Q1: Ok?\ud800 A1: Yes."}, "finish_reason": {"x": 1}}], '
    body += '"usage": {"prompt_tokens": 1e400, "completion_tokens": 100000000000000000000000}}'
    with ScriptedOpenAIServer([(200, body)]) as server:  # surrogates sent raw: bytes that are not UTF-8
        engine = openai_engine(server)
        (result,) = engine.generate([request("x")])
        engine.close()
    assert isinstance(result, Generation) and result.text.startswith("Q1: Ok?\ufffd")
    repaired = sanitize_generation(result, 1000)
    assert repaired is not None and repaired.repairs == ("invalid_metadata",)
    assert (repaired.prompt_tokens, repaired.completion_tokens, repaired.finish_reason) == (0, 0, "unknown")


# ---------------------------------------------------------------- repairs, parsing and filters


def test_clean_text_repairs_and_names_what_it_did():
    assert clean_text("plain\n\ttext") == ("plain\n\ttext", ())
    assert clean_text("a\ud800b\udfff") == ("a\ufffdb\ufffd", ("invalid_unicode",))
    assert clean_text("\ud83d\ude00 split pair") == ("\U0001f600 split pair", ("invalid_unicode",))
    assert clean_text("a\x00b\x1bc\x07d\x7fe\x85f\x9f") == ("abcdef", ("control_chars",))
    assert clean_text("one\r\ntwo\rthree") == ("one\ntwo\nthree", ("control_chars",))
    text, repairs = clean_text("\ud800\x00")
    assert text == "\ufffd" and repairs == ("invalid_unicode", "control_chars")
    text.encode("utf-8")


def test_sanitize_bounds_the_text_and_is_idempotent():
    limit = max_reply_chars(16)
    raw = Generation("Q1: \x00" + "z" * 10 * limit, 3, 16, "length")
    once = sanitize_generation(raw, limit)
    assert once is not None and len(once.text) <= limit
    assert once.repairs == ("control_chars", "truncated")
    assert sanitize_generation(once, limit) == once
    assert sanitize_generation(Generation(None, 0, 0, "stop"), limit) is None  # type: ignore[arg-type]


def test_cache_keeps_repairs_and_upgrades_an_old_cache(tmp_path):
    old = sqlite3.connect(tmp_path / DB_NAME)
    old.execute(
        "CREATE TABLE generations (key TEXT PRIMARY KEY, text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, finish_reason TEXT NOT NULL)"
    )
    old.execute("INSERT INTO generations VALUES ('old', 'Q1: a\x07 A1: b', 1, 2, 'stop')")
    old.commit()
    old.close()
    cache = GenerationCache(tmp_path)
    repaired = sanitize_generation(Generation("Q1: \ud800 A1: b", 1, 2, "stop"), 1000)
    assert repaired is not None
    cache.put_many([("new", repaired)])
    found = cache.get_many(["old", "new"])
    cache.close()
    assert found["old"] == Generation("Q1: a\x07 A1: b", 1, 2, "stop")  # the step repairs it when read
    assert found["new"] == repaired and found["new"].repairs == ("invalid_unicode",)


def test_the_published_pattern_in_linear_time():
    """``parse_qa`` finds exactly the pairs the published regex does (random texts over its alphabet), and a
    hostile 64,000-character text costs milliseconds where the regex needs half a minute."""
    rng = random.Random(7)
    alphabet = ["Q", "A", "1", "23", ":", " ", "\n", "x", "Q1: ", "A1: ", "Q2:", "A2:", "\t", "\u2003"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        published = [(q, a) for q, a, _ in PUBLISHED_QA.findall(text)]
        assert _published_matches(text) == published, text
    started = time.perf_counter()
    for hostile in ("Q1: " * 16_000, "Q1: A1" * 10_000, "Q1:" + "\n" * 64_000):
        parse_qa(hostile)
        parse_qa_json(hostile)
    parse_qa_json("[" * 100_000)  # deeply nested: not JSON of the QA shape
    assert time.perf_counter() - started < 0.5


def test_filters_match_the_published_rules_in_linear_time():
    rng = random.Random(11)
    alphabet = list("{}[]<>.\n aZ9_é")
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for name, pattern in (*DOCMATIX_V1_RULES, *IMPROVED_RULES):
            assert bool(pattern.search(text)) == bool(_searcher(pattern).search(text)), (name, text)
    started = time.perf_counter()
    for hostile in ("{" * 64_000, "[" * 64_000, "<" * 64_000, "a" * 64_000, "Q1" * 32_000):
        for rules in ("docmatix-v1", "improved"):
            apply_filters([(hostile, hostile)], rules)  # type: ignore[arg-type]
    assert time.perf_counter() - started < 0.5


# ---------------------------------------------------------------- builds


# Misbehaviours that end by themselves (the server answers, resets or closes): their outcome does not hang on
# the machine's speed, so the build below runs with a deadline no healthy request can reach on a loaded machine.
ENDING = {name: case for name, case in MISBEHAVIOURS.items() if name not in ("stall", "drip")}


def hostile_docs() -> list[Doc]:
    return [Doc(name, 1, "") for name in [*ENDING, *HOSTILE_CONTENT]]


def recipe(tars: Path, engine: dict, cache: Path, **step: Any) -> dict:
    data = yaml.safe_load((Path(__file__).parents[2] / "recipes" / "docmatix.yaml").read_text())
    data["vars"]["pdfa"] = str(tars)
    data["sources"][0]["partition_size"] = 64  # one partition, one engine batch: the bad among the good
    gen = data["steps"][0]
    gen.update(engine=engine, cache_dir=str(cache), batch_documents=64, dpi=20, **step)
    return data


def expected_drops() -> dict[str, int]:
    failed = [f"generation_failed:{reason}" for _, reason in ENDING.values()]
    return dict(Counter(failed + [want for _, want in HOSTILE_CONTENT.values() if isinstance(want, str)]))


def check_outcomes(out: Path) -> None:
    records = {r.meta["source_id"]: r for r in iter_dataset(out)}
    manifest = read_manifest(out)
    keys = {doc.name: f"PDFA key: {i:06d}" for i, doc in enumerate(hostile_docs())}
    for name, (_, want) in HOSTILE_CONTENT.items():
        if isinstance(want, list):
            assert [(t.user, t.assistant) for t in records[keys[name]].turns] == want, name
    assert len(records) == sum(isinstance(w, list) for _, w in HOSTILE_CONTENT.values())
    counts = manifest.accounting["sources"]["pdfa"]
    assert counts["dropped"] == expected_drops()
    assert counts["input"] == len(hostile_docs()) == counts["output"] + sum(counts["dropped"].values())
    report = manifest.reports["docmatix_generate"]
    assert report["repairs"] == {"control_chars": 1, "invalid_unicode": 1, "truncated": 2}
    assert report["discarded"] == {"too_many_pairs": 50}
    assert report["failures"] == dict(sorted(Counter(r for _, r in ENDING.values()).items()))
    assert verify_dataset(out).ok


def digest(out: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in out.glob("docmatix-*"))


def test_hostile_endpoint_build_rerun_and_verify(tmp_path):
    """One build through the CLI over a document per misbehaviour and per hostile content, all in one engine
    batch: exit 0 without a traceback, every document kept (repaired) or dropped by its reason, the dataset
    verifies; a rebuild from the generation cache gives the same dataset and resends only the failures."""
    tars = make_docmatix_tars(tmp_path / "in", hostile_docs())
    replies = {name: reply for name, (reply, _) in ENDING.items()}
    replies |= {name: content for name, (content, _) in HOSTILE_CONTENT.items()}
    with ScriptedOpenAIServer(by_name(replies)) as server:
        engine = {"type": "openai", "base_url": server.base_url, "model": "m", "timeout": 20.0, "max_retries": 1}
        path = tmp_path / "docmatix.yaml"
        path.write_text(yaml.safe_dump(recipe(tars, engine, tmp_path / "cache")))
        run = subprocess.run([*CLI, "build", str(path), "--out", str(tmp_path / "out"), "-q"], capture_output=True)
        stderr = run.stderr.decode("utf-8", "replace")
        assert run.returncode == 0 and "Traceback" not in stderr, stderr
        check_outcomes(tmp_path / "out")  # verify_dataset included: what `curate verify` checks

        before = len(server.chat_requests)
        again = build(validate_recipe(yaml.safe_load(path.read_text())), tmp_path / "again", progress=False)
        resent = {json.dumps(r.body["messages"]) for r in server.chat_requests[before:]}
    check_outcomes(again.out)
    assert again.manifest.accounting == read_manifest(tmp_path / "out").accounting
    assert again.manifest.reports == read_manifest(tmp_path / "out").reports
    assert digest(again.out) == digest(tmp_path / "out")
    assert all(any(f"DOC-{n.upper()} " in m for n in ENDING) for m in resent)  # only the failures
    assert len(resent) == len(ENDING)


def test_stalled_and_dripping_requests_end_at_the_deadline_in_a_build(tmp_path):
    """A request that never completes costs its document the deadline, not the build: both drop as
    ``generation_failed:timeout``, the healthy document of the same batch is kept, and a rerun asks again only
    for the two."""
    replies = {"stall": ("stall",), "drip": MISBEHAVIOURS["drip"][0], "plain": HOSTILE_CONTENT["plain"][0]}
    tars = make_docmatix_tars(tmp_path / "in", [Doc(name, 1, "") for name in replies])
    with ScriptedOpenAIServer(by_name(replies)) as server:
        engine = {"type": "openai", "base_url": server.base_url, "model": "m", "timeout": TIMEOUT, "max_retries": 3}
        data = validate_recipe(recipe(tars, engine, tmp_path / "cache"))
        started = time.perf_counter()
        first = build(data, tmp_path / "one", progress=False)
        assert time.perf_counter() - started < TIMEOUT + 3.0
        sent = len(server.chat_requests)
        second = build(data, tmp_path / "two", progress=False)
        assert (sent, len(server.chat_requests)) == (3, 5)
    for result in (first, second):
        counts = result.manifest.accounting["sources"]["pdfa"]
        assert counts["dropped"] == {"generation_failed:timeout": 2} and counts["output"] == 1
        assert verify_dataset(result.out).ok
    assert digest(first.out) == digest(second.out)


def test_structured_output_with_hostile_json(tmp_path):
    """JSON mode: deeply nested JSON falls back to Q#/A# parsing (counted); escapes that decode to lone
    surrogates or control characters are repaired in the pairs (counted)."""
    escaped = json.dumps({"qa": [{"question": "Who\u0000 is \ud800?", "answer": "Ann\u001b."}]})
    contents = {"nested": "[" * 30_000 + "]" * 30_000, "escaped": escaped}  # within max_reply_chars
    docs = [Doc(name, 1, "") for name in contents]
    tars = make_docmatix_tars(tmp_path / "in", docs)
    with ScriptedOpenAIServer(by_name(contents)) as server:
        engine = {"type": "openai", "base_url": server.base_url, "model": "m", "structured_output": True}
        result = build(validate_recipe(recipe(tars, engine, tmp_path / "cache")), tmp_path / "out", progress=False)
    records = list(iter_dataset(result.out))
    assert [(t.user, t.assistant) for t in records[0].turns] == [("Who is \ufffd?", "Ann.")]
    report = result.manifest.reports["docmatix_generate"]
    assert report["json_fallbacks"] == 1 and report["repairs"] == {"control_chars": 1, "invalid_unicode": 1}
    assert result.manifest.accounting["sources"]["pdfa"]["dropped"] == {"no_qa_pairs": 1}
    assert verify_dataset(result.out).ok


def test_vllm_output_is_repaired_and_bounded_too(tmp_path, monkeypatch):
    """The same boundary holds for the offline engines (vLLM's contract double here): 200 words of 100
    characters are within max_tokens 256 but past the 8,192 characters allowed."""
    from tests.vllm_double import install_vllm_double

    contents = {"controls": CONTROLS, "surrogates": SURROGATES, "endless": "Q1: Long?\nA1: " + ("x" * 99 + " ") * 200}

    def respond(conversation: list[dict], params: Any) -> str:
        text = "\n".join(m["content"] for m in conversation)
        return next(c for name, c in contents.items() if f"DOC-{name.upper()} " in text)

    install_vllm_double(monkeypatch, respond)
    tars = make_docmatix_tars(tmp_path / "in", [Doc(name, 1, "") for name in contents])
    engine = {"type": "vllm", "model": "some/model"}
    data = recipe(tars, engine, tmp_path / "cache", sampling={"max_tokens": 256, "temperature": 0.0})
    result = build(validate_recipe(data), tmp_path / "out", progress=False)
    turns = sorted((t.user, t.assistant) for r in iter_dataset(result.out) for t in r.turns)
    assert turns == sorted([*HOSTILE_CONTENT["controls"][1], *HOSTILE_CONTENT["surrogates"][1]])  # type: ignore[misc]
    assert result.manifest.accounting["sources"]["pdfa"]["dropped"] == {"generation_too_long": 1}
    assert result.manifest.reports["docmatix_generate"]["repairs"] == {
        "control_chars": 1,
        "invalid_unicode": 1,
        "truncated": 1,
    }


@pytest.mark.parametrize("content", [SURROGATES, CONTROLS])
def test_a_bad_reply_is_cached_repaired_so_a_rerun_sends_nothing(tmp_path, content):
    """The regression: a lone surrogate crashed the cache write, losing the batch on every rerun."""
    tars = make_docmatix_tars(tmp_path / "in", [Doc("bad", 1, ""), Doc("good", 1, "")])
    replies = {"bad": content, "good": "Q1: Fine?\nA1: Yes."}
    with ScriptedOpenAIServer(by_name(replies)) as server:
        engine = {"type": "openai", "base_url": server.base_url, "model": "m"}
        data = recipe(tars, engine, tmp_path / "cache")
        first = build(validate_recipe(data), tmp_path / "one", progress=False)
        sent = len(server.chat_requests)
        second = build(validate_recipe(data), tmp_path / "two", progress=False)
        assert len(server.chat_requests) == sent == 2
    assert first.manifest.accounting["sources"]["pdfa"]["output"] == 2
    assert first.manifest.reports == second.manifest.reports
    assert [r.turns for r in iter_dataset(first.out)] == [r.turns for r in iter_dataset(second.out)]


def test_a_cache_that_is_no_database_stops_the_build_with_one_line(tmp_path):
    tars = make_docmatix_tars(tmp_path / "in", [Doc("plain", 1, "")])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / DB_NAME).write_bytes(b"not a database, a truncated download " * 100)
    engine = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 0}
    path = tmp_path / "docmatix.yaml"
    path.write_text(yaml.safe_dump(recipe(tars, engine, tmp_path / "cache")))
    run = subprocess.run(
        [*CLI, "build", str(path), "--out", str(tmp_path / "out"), "-q"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: cache_dir: cannot use the generation cache") and run.stderr.count("\n") == 1


def test_a_prompt_with_a_lone_surrogate_is_sent_repaired(tmp_path):
    """OCR text with a ``\\ud800`` escape could never be sent (UTF-8 cannot encode it): every run would fail
    the request again. The step sends U+FFFD in its place and counts the document."""
    from curation.generation.docmatix.step import DocmatixGenerate
    from curation.sample import Sample
    from schemas import PdfRecord
    from schemas.records import Page, PageLine
    from tests.pdfa_data import PdfPage, make_pdf, text_lines

    lines = [PageLine(text="DOC-PLAIN a\ud800b", bbox=(0.1, 0.1, 0.5, 0.05))]
    pdf = make_pdf([PdfPage(text_lines("DOC-PLAIN", 1))])
    record = PdfRecord(key="000000", source="pdfa", pdf=pdf, pages=[Page(lines=lines)])
    with ScriptedOpenAIServer(by_name({"plain": HOSTILE_CONTENT["plain"][0]})) as server:
        engine = {"type": "openai", "base_url": server.base_url, "model": "m"}
        cfg = validate_recipe(recipe(tmp_path, engine, tmp_path / "cache")).steps[0]
        step = DocmatixGenerate(cfg, StepContext("docmatix_generate", tmp_path))
        (result,) = step.process_batch([Sample(record, "test")])
        step.close()
    assert isinstance(result, Sample) and [(t.user, t.assistant) for t in result.record.turns] == [
        ("What is the title?", "Annual review")
    ]
    assert "DOC-PLAIN a\ufffdb" in server.chat_requests[0].body["messages"][-1]["content"]
    assert step.report()["repairs"] == {"prompt_invalid_unicode": 1}
