"""The OpenAI-compatible engine: ``client.chat.completions.create`` against any endpoint (``vllm serve``, TGI,
SGLang, hosted APIs), ``concurrency`` requests in flight, results in request order.

Timeouts and retries are the ``openai`` client's own (``timeout``, ``max_retries``: exponential backoff with
jitter, honouring ``Retry-After``; it retries connection errors, timeouts, 408/409/429 and 5xx). What still
fails after them becomes a ``GenerationFailure``: ``timeout``, ``rate_limited``, ``http_<status>``,
``connection``, ``invalid_response`` (no choices, no content, a body that is no chat completion) or
``context_too_long`` (a 400 whose message says the prompt exceeds the context, as vLLM's server words it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from curation.docmatix.engines.base import (
    ChatRequest,
    EngineConfigError,
    Generation,
    GenerationFailure,
    looks_like_context_overflow,
    one_line,
)

SCHEMA_NAME = "qa_pairs"


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg: Any) -> None:
        import openai

        if not cfg.base_url.startswith(("http://", "https://")):
            raise EngineConfigError(f"engine.base_url: expected an http(s) URL, got {cfg.base_url!r}")
        self.cfg = cfg
        self.client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
        )

    def identity(self) -> dict:
        return {
            "engine": self.name,
            "base_url": self.cfg.base_url.rstrip("/"),
            "model": self.cfg.model,
            "structured_output": self.cfg.structured_output,
        }

    def count_tokens(self, text: str) -> None:
        return None  # the endpoint's tokenizer is not available locally

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation | GenerationFailure]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))  # map keeps the order of requests

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": request.message_dicts(),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if self.cfg.structured_output and request.json_schema is not None:
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": request.json_schema},
            }
        return arguments

    def _one(self, request: ChatRequest) -> Generation | GenerationFailure:
        import openai
        from openai.types.chat import ChatCompletion

        try:
            completion = self.client.chat.completions.create(**self._arguments(request))
        except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
            return GenerationFailure("timeout", one_line(exc))
        except openai.RateLimitError as exc:
            return GenerationFailure("rate_limited", one_line(exc))
        except openai.APIStatusError as exc:
            if exc.status_code == 400 and looks_like_context_overflow(str(exc.message)):
                return GenerationFailure("context_too_long", one_line(exc))
            return GenerationFailure(f"http_{exc.status_code}", one_line(exc))
        except openai.APIConnectionError as exc:
            return GenerationFailure("connection", one_line(exc))
        except (openai.APIResponseValidationError, ValueError) as exc:  # ValueError: a body that is not JSON
            return GenerationFailure("invalid_response", one_line(exc))
        except Exception as exc:
            return GenerationFailure("engine_error", one_line(exc))
        if not isinstance(completion, ChatCompletion):
            return GenerationFailure("invalid_response", f"not a chat completion: {one_line(repr(completion), 200)}")
        if not completion.choices:
            return GenerationFailure("invalid_response", "the response holds no choices")
        choice = completion.choices[0]
        if choice.message is None or choice.message.content is None:
            return GenerationFailure("invalid_response", "the response's message has no content")
        usage = completion.usage
        return Generation(
            text=choice.message.content,
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            finish_reason=choice.finish_reason or "unknown",
        )

    def close(self) -> None:
        self.client.close()
