"""The three generation engines against real things: a tiny random transformers model built offline, a loopback
OpenAI-compatible server spoken to by the real ``openai`` client, and vLLM's documented API (contract double)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from curation.generation.engines import (
    ChatRequest,
    Engine,
    EngineConfigError,
    Generation,
    GenerationFailure,
    fingerprint_model_dir,
    make_engine,
)
from curation.generation.engines.vllm_engine import NOT_INSTALLED
from curation.recipe.generation import OpenAIEngineConfig, TransformersEngineConfig, VllmEngineConfig
from tests.llm_models import shared_tiny_causal_lm
from tests.openai_server import ScriptedOpenAIServer, error_body
from tests.vllm_double import install_vllm_double

SCHEMA = {
    "type": "object",
    "properties": {"qa": {"type": "array", "items": {"type": "object"}}},
    "required": ["qa"],
}


def request(user: str, max_tokens: int = 12, temperature: float = 0.7, seed: int | None = 0, **kw) -> ChatRequest:
    messages = (("system", "You read PDF text and write Q1: ... A1: ... pairs."), ("user", user))
    return ChatRequest(messages, max_tokens=max_tokens, temperature=temperature, top_p=0.95, seed=seed, **kw)


# ---------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return shared_tiny_causal_lm(tmp_path_factory)


@pytest.fixture(scope="module")
def tf_engine(tiny_model):
    engine = make_engine(TransformersEngineConfig(type="transformers", model=str(tiny_model), batch_size=2))
    yield engine
    engine.close()


def prompt_length(engine, req: ChatRequest) -> int:
    rendered = engine.tokenizer.apply_chat_template(req.message_dicts(), add_generation_prompt=True, tokenize=False)
    return len(engine.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_transformers_batches_in_order_with_token_counts(tf_engine):
    requests = [request("NEW PAGE " * (i + 1) + f"Q{i}: what is on page {i}?") for i in range(5)]
    results = tf_engine.generate(requests)

    assert isinstance(tf_engine, Engine) and tf_engine.name == "transformers"
    assert len(results) == 5 and all(isinstance(r, Generation) for r in results)
    lengths = [prompt_length(tf_engine, r) for r in requests]
    assert len(set(lengths)) == 5  # distinct prompts: the counts prove the order
    assert [r.prompt_tokens for r in results] == lengths
    for result in results:
        assert 1 <= result.completion_tokens <= 12
        assert result.finish_reason in ("stop", "length")
        if result.finish_reason == "length":
            assert result.completion_tokens == 12
    assert tf_engine.count_tokens("Q1: NEW PAGE") == len(tf_engine.tokenizer("Q1: NEW PAGE")["input_ids"])


def test_transformers_seeded_sampling_repeats_and_greedy_is_deterministic(tf_engine):
    requests = [request(f"Q{i}: summarize the invoice", temperature=1.0, seed=7) for i in range(3)]
    first, again = tf_engine.generate(requests), tf_engine.generate(requests)
    assert first == again
    other_seed = tf_engine.generate([request(r.messages[1][1], temperature=1.0, seed=8) for r in requests])
    assert [g.text for g in other_seed] != [g.text for g in first]

    greedy = [request(f"Q{i}: who signed?", temperature=0.0, seed=i) for i in range(3)]
    reseeded = [request(f"Q{i}: who signed?", temperature=0.0, seed=100 + i) for i in range(3)]
    assert tf_engine.generate(greedy) == tf_engine.generate(reseeded)


def test_transformers_eos_ends_a_completion_with_stop(tiny_model):
    engine = make_engine(TransformersEngineConfig(type="transformers", model=str(tiny_model), batch_size=4))
    try:
        probe = request("Q1: when?", temperature=0.0, max_tokens=1)
        rendered = engine.tokenizer(engine.render(probe), add_special_tokens=False, return_tensors="pt")
        first = int(engine.model(**rendered).logits[0, -1].argmax())
        eos = engine.tokenizer.eos_token_id
        head = engine.model.get_output_embeddings().weight.data
        head[eos] = 3 * head[first]  # eos now wins wherever `first` won: the model stops at once
        stopped, longer = engine.generate([request("Q1: when?", temperature=0.0), request("A much longer prompt.")])
    finally:
        engine.close()
    assert stopped == Generation("", stopped.prompt_tokens, 1, "stop")  # eos counted, padding after it not
    assert isinstance(longer, Generation) and longer.prompt_tokens != stopped.prompt_tokens


def test_transformers_context_too_long_fails_only_that_request(tf_engine):
    too_long = request(" ".join(str(i) for i in range(3000)))
    assert tf_engine.count_tokens(too_long.messages[1][1]) > 2048
    failed, ok = tf_engine.generate([too_long, request("Q1: short?")])
    assert isinstance(failed, GenerationFailure) and failed.reason == "context_too_long"
    assert "2048" in failed.detail
    assert isinstance(ok, Generation)


def test_transformers_configuration_errors(tmp_path):
    with pytest.raises(EngineConfigError, match=r"^engine\.model: no such directory: .*nowhere"):
        make_engine(TransformersEngineConfig(type="transformers", model=str(tmp_path / "nowhere")))
    with pytest.raises(EngineConfigError, match=r"^engine\.model: .*no config\.json"):
        make_engine(TransformersEngineConfig(type="transformers", model=str(tmp_path)))
    assert issubclass(EngineConfigError, ValueError)


def test_transformers_identity_and_fallback_chat_template(tiny_model, tf_engine, tmp_path):
    identity = tf_engine.identity()
    assert identity["engine"] == "transformers" and identity["chat_template"] == "model"
    assert identity["model"] == str(tiny_model.resolve()) and len(identity["fingerprint"]) == 64
    json.dumps(identity)

    bare = shutil.copytree(tiny_model, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    engine = make_engine(TransformersEngineConfig(type="transformers", model=str(bare)))
    try:
        assert engine.identity()["chat_template"] == "fallback"
        assert engine.identity()["fingerprint"] != identity["fingerprint"]
        assert engine.render(request("hi")).endswith("user: hi\nassistant:")
        assert isinstance(engine.generate([request("hi")])[0], Generation)
    finally:
        engine.close()


def test_fingerprint_follows_file_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "README.md").write_text("about")
    before = fingerprint_model_dir(tmp_path)
    (tmp_path / "README.md").write_text("about, edited")
    assert fingerprint_model_dir(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"\1" * 1000)
    assert fingerprint_model_dir(tmp_path) != before


# ---------------------------------------------------------------- openai


def openai_engine(server: ScriptedOpenAIServer, **overrides):
    settings = {"concurrency": 4, "timeout": 5.0, "max_retries": 0, "api_key_env": "TEST_ENGINES_KEY", **overrides}
    return make_engine(OpenAIEngineConfig(type="openai", base_url=server.base_url, model="served-model", **settings))


def run_openai(script, requests=None, **overrides):
    results, server, _ = timed_openai(script, requests, **overrides)
    return results, server


def timed_openai(script, requests=None, retry_after_ms: float | None = 10.0, **overrides):
    """Results, the server, and the seconds ``generate`` took (the engine's start left out)."""
    with ScriptedOpenAIServer(script, retry_after_ms=retry_after_ms) as server:
        engine = openai_engine(server, **overrides)
        try:
            started = time.perf_counter()
            results = engine.generate(requests or [request("Q1: what?")])
            seconds = time.perf_counter() - started
        finally:
            engine.close()
    return results, server, seconds


def test_openai_order_concurrency_key_and_usage(monkeypatch):
    monkeypatch.setenv("TEST_ENGINES_KEY", "sk-local-test")
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def script(body: dict) -> str:
        index = int(body["messages"][-1]["content"].split()[-1])
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.04 * (8 - index))  # early requests answer last
        with lock:
            in_flight[0] -= 1
        return f"Q1: question {index} A1: answer {index}"

    requests = [request(f"document number {i}", seed=i) for i in range(8)]
    results, server = run_openai(script, requests)

    assert [r.text for r in results] == [f"Q1: question {i} A1: answer {i}" for i in range(8)]
    assert 2 <= peak[0] <= 4
    assert all(r.finish_reason == "stop" for r in results)
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [(14, 6)] * 8  # the server's usage
    sent = server.chat_requests
    assert len(sent) == 8 and {r.authorization for r in sent} == {"Bearer sk-local-test"}
    body = next(r.body for r in sent if r.body["seed"] == 3)
    assert body["model"] == "served-model" and body["max_tokens"] == 12
    assert body["temperature"] == 0.7 and body["top_p"] == 0.95
    assert body["messages"] == [{"role": role, "content": text} for role, text in requests[3].messages]
    assert "response_format" not in body


def test_openai_without_key_sends_placeholder(monkeypatch):
    monkeypatch.delenv("TEST_ENGINES_KEY", raising=False)
    (result,), server = run_openai(["fine"], [request("x", seed=None)])
    assert result.text == "fine"
    assert server.chat_requests[0].authorization == "Bearer EMPTY"
    assert "seed" not in server.chat_requests[0].body


def test_openai_retries_recover_then_give_up():
    boom = (500, error_body(500, "engine overloaded"))
    (recovered,), server = run_openai([boom, "Q1: a A1: b"], max_retries=2)
    assert recovered.text == "Q1: a A1: b" and len(server.chat_requests) == 2

    (failed,), server = run_openai([boom] * 5, max_retries=2)
    assert failed.reason == "http_500" and "engine overloaded" in failed.detail
    assert len(server.chat_requests) == 3  # max_retries + 1 attempts

    (limited,), server = run_openai([(429, error_body(429, "slow down"))] * 5, max_retries=1)
    assert limited.reason == "rate_limited" and len(server.chat_requests) == 2


def test_openai_timeout_and_connection_failures():
    started = time.perf_counter()
    (timed_out,), _ = run_openai([("sleep", 3.0, "too late")], timeout=0.3)
    assert timed_out.reason == "timeout" and time.perf_counter() - started < 2.5

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = make_engine(
        OpenAIEngineConfig(type="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=0)
    )
    (refused,) = engine.generate([request("x")])
    engine.close()
    assert refused.reason == "connection"


def test_openai_timeout_bounds_the_whole_request():
    """A body dripped a byte every 50 ms never waits a read out (httpx's timeouts are per read): the timeout is
    a deadline on the request, retries included."""
    (dripped,), server, seconds = timed_openai([("drip", 0.05, "Q1: slowly A1: yes")] * 3, timeout=0.5, max_retries=2)
    assert dripped.reason == "timeout" and seconds < 1.0
    assert len(server.chat_requests) == 1  # the deadline passed: nothing is retried

    busy = [(503, error_body(503, "busy"))] * 50
    (failed,), server, seconds = timed_openai(busy, retry_after_ms=200, timeout=0.5, max_retries=40)
    assert failed.reason == "http_503" and seconds < 1.0
    assert len(server.chat_requests) == 3  # at 0, 0.2 and 0.4 s: a wait to 0.6 s would pass the deadline


def test_openai_retry_after_beyond_the_deadline_is_not_waited_for():
    script = [(429, error_body(429, "come back in a minute")), "never"]
    (limited,), server, seconds = timed_openai(script, retry_after_ms=60_000, timeout=2.0, max_retries=3)
    assert limited.reason == "rate_limited" and seconds < 1.0
    assert len(server.chat_requests) == 1


NO_CHOICES = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
NULL_CONTENT = json.dumps(
    {
        **NO_CHOICES,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}],
    }
)
TOO_LONG = "This model's maximum context length is 4096 tokens. However, you requested 6000 tokens."


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ((200, "this is not JSON"), "invalid_response"),
        ((200, NO_CHOICES), "invalid_response"),
        ((200, NULL_CONTENT), "invalid_response"),
        ((400, error_body(400, TOO_LONG)), "context_too_long"),
        ((404, error_body(404, "The model `served-model` does not exist.")), "http_404"),
    ],
)
def test_openai_bad_answers_become_failures(reply, reason):
    (result,), server = run_openai([reply, "never reached"], max_retries=3)
    assert isinstance(result, GenerationFailure) and result.reason == reason
    assert len(server.chat_requests) == 1  # none of these is retried


def test_openai_structured_output_sends_the_schema():
    requests = [request("Q?", json_schema=SCHEMA)]
    _, server = run_openai(['{"qa": []}'], requests, structured_output=True)
    assert server.chat_requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "qa_pairs", "schema": SCHEMA},
    }
    _, server = run_openai(['{"qa": []}'], requests, structured_output=False)
    assert "response_format" not in server.chat_requests[0].body


def test_openai_identity_and_config_errors():
    with ScriptedOpenAIServer([]) as server:
        engine = openai_engine(server, structured_output=True)
        assert isinstance(engine, Engine) and engine.count_tokens("anything") is None
        assert engine.identity() == {
            "engine": "openai",
            "base_url": server.base_url,
            "model": "served-model",
            "structured_output": True,
        }
        assert engine.generate([]) == []
        engine.close()
    with pytest.raises(EngineConfigError, match=r"^engine\.base_url: "):
        make_engine(OpenAIEngineConfig(type="openai", base_url="localhost:8000/v1", model="m"))


# ---------------------------------------------------------------- vllm (contract double)


def vllm_config(**overrides) -> VllmEngineConfig:
    return VllmEngineConfig(type="vllm", model="microsoft/Phi-3-small-8k-instruct", **overrides)


def echo(conversation: list[dict], params) -> str | tuple[str, str]:
    return f"Q1: about {conversation[-1]['content']} A1: yes"


def test_vllm_calls_chat_with_per_request_sampling_params(monkeypatch):
    double = install_vllm_double(monkeypatch, echo)
    engine = make_engine(vllm_config(batch_size=2, max_model_len=4096, dtype="bfloat16", tensor_parallel_size=2))
    requests = [request(f"doc{i}", max_tokens=4 if i == 4 else 50, seed=i) for i in range(5)]
    results = engine.generate(requests)

    assert double.llm_kwargs == [
        {
            "model": "microsoft/Phi-3-small-8k-instruct",
            "tensor_parallel_size": 2,
            "gpu_memory_utilization": 0.9,
            "max_model_len": 4096,
            "dtype": "bfloat16",
            "seed": 0,
            "trust_remote_code": False,
        }
    ]
    assert [len(call.conversations) for call in double.chat_calls] == [2, 2, 1]
    assert all(call.kwargs["use_tqdm"] is False for call in double.chat_calls)
    assert double.chat_calls[0].conversations[1] == requests[1].message_dicts()
    params = [p for call in double.chat_calls for p in call.sampling_params]
    assert [(p.max_tokens, p.temperature, p.top_p, p.seed) for p in params] == [
        (r.max_tokens, r.temperature, r.top_p, r.seed) for r in requests
    ]
    assert all(p.structured_outputs is None for p in params)

    assert [r.text for r in results[:4]] == [f"Q1: about doc{i} A1: yes" for i in range(4)]
    assert results[0] == Generation("Q1: about doc0 A1: yes", 18, 5, "stop")  # the double's word tokens
    assert results[4] == Generation("Q1: about doc4 A1:", 18, 4, "length")
    assert engine.count_tokens("three word text") == 3
    assert isinstance(engine, Engine) and engine.identity()["fingerprint"] is None
    engine.close()


@pytest.mark.parametrize("api", ["current", "guided"])
def test_vllm_structured_outputs(monkeypatch, api):
    double = install_vllm_double(monkeypatch, lambda conversation, params: '{"qa": []}', api=api)
    engine = make_engine(vllm_config(structured_output=True))
    (result,) = engine.generate([request("Q?", json_schema=SCHEMA)])
    engine.generate([request("no schema")])

    assert result.text == '{"qa": []}'
    with_schema, without = (call.sampling_params[0] for call in double.chat_calls)
    field = "structured_outputs" if api == "current" else "guided_decoding"
    assert getattr(with_schema, field).json == SCHEMA
    assert getattr(without, field) is None
    assert engine.identity()["structured_output"] is True


def test_vllm_too_long_prompt_is_isolated(monkeypatch):
    double = install_vllm_double(monkeypatch, echo)
    engine = make_engine(vllm_config(batch_size=8, max_model_len=256))
    requests = [request("short one"), request("word " * 300), request("short two")]
    first, failed, third = engine.generate(requests)

    assert failed.reason == "context_too_long" and "maximum model length of 256" in failed.detail
    assert first.text == "Q1: about short one A1: yes" and third.text == "Q1: about short two A1: yes"
    assert [len(call.conversations) for call in double.chat_calls] == [3, 1, 2, 1, 1]  # halved until alone


def test_vllm_local_model_identity(monkeypatch, tiny_model):
    double = install_vllm_double(monkeypatch, echo)
    engine = make_engine(VllmEngineConfig(type="vllm", model=str(tiny_model)))
    assert double.llm_kwargs[0]["model"] == str(tiny_model.resolve())
    assert engine.identity()["fingerprint"] == fingerprint_model_dir(tiny_model)


def test_vllm_missing_is_a_config_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(EngineConfigError) as caught:
        make_engine(vllm_config())
    assert str(caught.value) == NOT_INSTALLED


def test_vllm_double_enforces_the_documented_signatures(monkeypatch):
    install_vllm_double(monkeypatch, echo)
    import vllm
    from vllm.sampling_params import StructuredOutputsParams

    with pytest.raises(TypeError, match="unexpected keyword argument 'max_seq_len'"):
        vllm.LLM(model="m", max_seq_len=10)
    with pytest.raises(TypeError):
        vllm.SamplingParams(max_new_tokens=10)
    with pytest.raises(ValueError):
        StructuredOutputsParams(json=SCHEMA, regex=".*")
    llm = vllm.LLM(model="m")
    conversation = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="lengths of prompts and params"):
        llm.chat([conversation, conversation], sampling_params=[vllm.SamplingParams()])
    with pytest.raises(TypeError):
        llm.chat(conversation, show_progress=False)
    (single,) = llm.chat(conversation, vllm.SamplingParams(max_tokens=2), use_tqdm=False)
    assert single.outputs[0].text == "Q1: about" and single.outputs[0].finish_reason == "length"


def test_make_engine_rejects_unknown_types():
    class Other:
        type = "llamacpp"

    with pytest.raises(EngineConfigError, match=r"^engine\.type: "):
        make_engine(Other())
