"""Docmatix generation end to end: PDFA tars -> docmatix_generate -> sft shards, with each engine that runs
here (a loopback OpenAI-compatible server with scripted answers, a tiny random transformers model, the vLLM
adapter against its contract double), both filter sets exactly, resume without generating twice."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.build.runner import build
from curation.recipe import load_recipe, validate_recipe
from shards import read_manifest, verify_dataset
from shards.reader import iter_dataset
from tests.builds import CLI
from tests.docmatix_data import DOCS, make_docmatix_tars, scripted_answer
from tests.openai_server import ScriptedOpenAIServer


def _prompt_text(request: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in request["messages"])


def _respond(request: dict[str, Any]) -> Any:
    return scripted_answer(_prompt_text(request))


def _recipe(tars: Path, engine: dict, cache: Path, filters: str = "improved", **step) -> dict:
    data = yaml.safe_load((Path(__file__).parents[2] / "recipes" / "docmatix.yaml").read_text())
    data["vars"]["pdfa"] = str(tars)
    data["sources"][0]["partition_size"] = 4
    gen = data["steps"][0]
    gen.update(engine=engine, filters=filters, cache_dir=str(cache), batch_documents=3, dpi=20, **step)
    gen["chunking"]["max_tokens"] = 2000
    return data


def _openai(server: ScriptedOpenAIServer, **extra) -> dict:
    return {"type": "openai", "base_url": server.base_url, "model": "scripted", "max_retries": 1, **extra}


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> Path:
    return make_docmatix_tars(tmp_path_factory.mktemp("docmatix-in"))


def _outcomes(out: Path, filters: str) -> None:
    """Every document ends as its scripted expectation: kept pairs exactly, or its drop reason."""
    records = {r.meta["source_id"]: r for r in iter_dataset(out)}
    m = read_manifest(out)
    dropped = m.accounting["sources"]["pdfa"]["dropped"]
    want_drops: dict[str, int] = {}
    for i, doc in enumerate(DOCS):
        want = doc.v1 if filters == "docmatix-v1" else doc.improved
        key = f"PDFA key: {i:06d}"
        if isinstance(want, str):
            want_drops[want] = want_drops.get(want, 0) + 1
            assert key not in records, doc.name
        else:
            r = records[key]
            assert [(t.user, t.assistant) for t in r.turns] == want, doc.name
            assert len(r.images) == doc.pages and r.meta["engine"] == "openai"
            assert r.meta["prompt_id"] in {
                "comprehensive",
                "per_section",
                "analysis",
                "summary_and_detail",
                "general_wording",
            }
    assert dropped == want_drops
    report = m.reports["docmatix_generate"]
    want_discarded: dict[str, int] = {}
    for doc in DOCS:
        for rule, n in (doc.v1_discarded if filters == "docmatix-v1" else doc.improved_discarded).items():
            want_discarded[rule] = want_discarded.get(rule, 0) + n
    assert report["discarded"] == dict(sorted(want_discarded.items()))
    assert report["failures"] == {"http_500": 1}
    assert verify_dataset(out).ok


@pytest.mark.parametrize("filters", ["improved", "docmatix-v1"])
def test_openai_engine_with_both_filter_sets(tars, tmp_path, filters):
    with ScriptedOpenAIServer(_respond) as server:
        recipe = validate_recipe(_recipe(tars, _openai(server), tmp_path / "cache", filters))
        result = build(recipe, tmp_path / "out", workers=2, progress=False)
    _outcomes(result.out, filters)
    c = result.manifest.accounting["sources"]["pdfa"]
    assert c["input"] == len(DOCS) == c["output"] + sum(c["dropped"].values())


def test_generation_from_ray_tasks_is_the_local_build(tars, tmp_path):
    """docmatix_generate inside Ray tasks (a Ray the build starts): same requests answered, same dataset."""
    pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    with ScriptedOpenAIServer(_respond) as server:
        local = build(
            validate_recipe(_recipe(tars, _openai(server), tmp_path / "c1")), tmp_path / "local", progress=False
        )
        on_ray = build(
            validate_recipe(_recipe(tars, _openai(server), tmp_path / "c2")),
            tmp_path / "ray",
            executor="ray",
            progress=False,
        )
    _outcomes(on_ray.out, "improved")
    assert on_ray.manifest.accounting == local.manifest.accounting
    assert [s.sha256 for s in on_ray.manifest.shards] == [s.sha256 for s in local.manifest.shards]


def test_resume_never_generates_twice(tars, tmp_path):
    """Killed after the first batch of generations: the rerun asks the model only for the rest, and a rebuild
    from scratch (--overwrite) asks for nothing, all from the generation cache."""
    with ScriptedOpenAIServer(_respond) as server:
        data = _recipe(tars, _openai(server), tmp_path / "cache")
        path = tmp_path / "docmatix.yaml"
        path.write_text(yaml.safe_dump(data))
        out = tmp_path / "out"
        env = {**os.environ, "VLM_CURATION_CRASH_AT": "generation_batch:1"}
        crashed = subprocess.run([*CLI, "build", str(path), "--out", str(out), "-q"], env=env, capture_output=True)
        assert crashed.returncode != 0 and not (out / "dataset.json").exists()
        first = len(server.chat_requests)
        assert first > 0
        done = subprocess.run([*CLI, "build", str(path), "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        bodies = [r.body for r in server.chat_requests]
        unique_prompts = {json.dumps(b["messages"]) for b in bodies}
        failing = sum(1 for b in bodies if "DOC-FAILING" in _prompt_text(b))
        assert len(bodies) - failing == len(unique_prompts) - 1  # every other prompt was generated exactly once
        assert "documents/s" in done.stderr and "from the cache" in done.stderr
        before = len(server.chat_requests)
        again = subprocess.run([*CLI, "build", str(path), "--out", str(out), "--overwrite", "-q"], capture_output=True)
        assert again.returncode == 0
        # a rebuild asks the model again only for what failed
        assert all("DOC-FAILING" in _prompt_text(r.body) for r in server.chat_requests[before:])
    _outcomes(out, "improved")


def test_structured_output_json(tars, tmp_path):
    def respond(request: dict[str, Any]) -> Any:
        answer = scripted_answer(_prompt_text(request))
        if isinstance(answer, tuple):
            return answer
        from curation.generation.docmatix.parse import parse_qa

        return json.dumps({"qa": [{"question": q, "answer": a} for q, a in parse_qa(answer)]})

    with ScriptedOpenAIServer(respond) as server:
        recipe = validate_recipe(_recipe(tars, _openai(server, structured_output=True), tmp_path / "cache"))
        result = build(recipe, tmp_path / "out", progress=False)
        assert all("response_format" in r.body for r in server.chat_requests)
    assert result.manifest.reports["docmatix_generate"]["json_fallbacks"] == 0
    records = {r.meta["source_id"]: r for r in iter_dataset(result.out)}
    assert [(t.user, t.assistant) for t in records["PDFA key: 000000"].turns] == DOCS[0].improved


def test_transformers_engine_on_a_tiny_model(tars, tmp_path):
    """A random model writes noise: assert the plumbing (requests, tokens, accounting) and the cache."""
    from tests.llm_models import make_tiny_causal_lm

    model = make_tiny_causal_lm(tmp_path / "model")
    engine = {"type": "transformers", "model": str(model), "device": "cpu", "batch_size": 4}
    data = _recipe(
        tars, engine, tmp_path / "cache", sampling={"max_tokens": 24, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    )
    result = build(validate_recipe(data), tmp_path / "out", progress=False)
    m = result.manifest
    report = m.reports["docmatix_generate"]
    readable = [d for d in DOCS if d.name != "long"]
    assert report["documents"] == len(readable) and report["requests"] == report["chunks"] >= len(readable)
    assert 0 < report["completion_tokens"] <= 24 * report["requests"]
    c = m.accounting["sources"]["pdfa"]
    assert c["input"] == len(DOCS) == c["output"] + sum(c["dropped"].values())
    assert c["dropped"]["too_many_pages"] == 1
    log = json.loads(result.log.read_text())["steps"]["docmatix_generate"]
    assert log["generated_requests"] == report["requests"] and log["throughput"]["generated_tokens_per_s"] > 0
    again = build(validate_recipe(data), tmp_path / "out2", progress=False)  # same prompts: all cached
    log2 = json.loads(again.log.read_text())["steps"]["docmatix_generate"]
    assert log2["generated_requests"] == 0 and log2["cached_requests"] == report["requests"]
    digest = lambda d: sorted((p.name, p.read_bytes()) for p in d.glob("docmatix-*"))  # noqa: E731
    assert digest(result.out) == digest(again.out)


def test_vllm_adapter_through_the_step(tars, tmp_path, monkeypatch):
    """The vLLM engine (against the contract double of vLLM's API) gives the same outcomes as the others."""
    from tests.vllm_double import install_vllm_double

    def respond(conversation: list[dict], params: Any) -> str:
        answer = scripted_answer("\n".join(m["content"] for m in conversation))
        return "Q1: Is it ok?\nA1: Yes." if isinstance(answer, tuple) else answer

    double = install_vllm_double(monkeypatch, respond)
    engine = {"type": "vllm", "model": "some/model"}
    result = build(validate_recipe(_recipe(tars, engine, tmp_path / "cache")), tmp_path / "out", progress=False)
    records = {r.meta["source_id"]: r for r in iter_dataset(result.out)}
    assert [(t.user, t.assistant) for t in records["PDFA key: 000000"].turns] == DOCS[0].improved
    assert records["PDFA key: 000000"].meta["engine"] == "vllm"
    assert double.chat_calls and double.llm_kwargs[0]["model"] == "some/model"


def test_recipe_is_valid_and_engines_switch_by_set(tmp_path):
    r = load_recipe("docmatix", ["steps.0.engine={type: openai, base_url: 'http://x/v1', model: m}"])
    assert r.steps[0].engine.type == "openai" and r.sources[0].max_pages == 4
    assert len(r.steps[0].prompts.variants) == 5


def test_curate_build_docmatix_by_name(tars, tmp_path):
    """As a user runs it: the built-in recipe by name, the engine chosen with --set; the audit shows the QA counts
    and the discard reasons."""
    with ScriptedOpenAIServer(_respond) as server:
        engine = f"{{type: openai, base_url: '{server.base_url}', model: scripted, max_retries: 0}}"
        run = subprocess.run(
            [*CLI, "build", "docmatix", "--out", str(tmp_path / "out"), "-q", "--set", f"vars.pdfa={tars}",
             "--set", f"steps.0.engine={engine}", "--set", f"steps.0.cache_dir={tmp_path / 'cache'}"],
            capture_output=True, text=True,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "documents/s" in run.stderr
    audit = subprocess.run([*CLI, "audit", str(tmp_path / "out")], capture_output=True, text=True).stdout
    assert "generated QA pairs" in audit and "discarded: url_or_filename" in audit and "too_many_pages" in audit
