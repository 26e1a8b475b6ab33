"""The OpenAI-compatible engine: chat completions against any endpoint (``vllm serve``, TGI, SGLang, hosted
APIs) through the ``openai`` client, ``concurrency`` requests in flight, results in request order.

The endpoint is untrusted. ``timeout`` is a deadline on a request's whole life from the moment it takes one of
the ``concurrency`` slots (connecting, waiting, reading a body however slowly it drips, and every retry with its
backoff), not the client's per-read timeout: requests run as asyncio tasks on the engine's own event loop, each
under ``asyncio.wait_for``. Each attempt opens its own connection (``Connection: close``). Retries (``max_retries``:
exponential backoff with jitter, honouring ``retry-after-ms``/``Retry-After``) are this module's own, on
connection errors, 408/409/429 and 5xx, and only while the deadline leaves time for the wait. A successful
response's body is read up to ``untrusted.max_response_bytes`` and parsed here, every field checked (the body of
an error status is read by the client itself: only the deadline bounds it). What fails becomes a
``GenerationFailure``: ``timeout``, ``rate_limited``, ``http_<status>``, ``connection`` (refused, reset, a body
shorter than its Content-Length), ``response_too_large``, ``invalid_response`` (not JSON, no choices, no
string content) or ``context_too_long`` (a 400 whose message says the prompt exceeds the context, as vLLM's
server words it). The reply's text is repaired by the step (``curation.generation.docmatix.untrusted``).

A request's images become ``image_url`` content parts with data URIs (``images.data_uri``: JPEG/PNG/WebP within
``max_image_bytes`` and ``max_image_side`` as they are, others re-encoded); one that cannot be sent fails that
request as ``image_unreadable``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from curation.generation.docmatix.untrusted import max_response_bytes
from curation.generation.engines.base import (
    ChatRequest,
    EngineConfigError,
    Generation,
    GenerationFailure,
    looks_like_context_overflow,
    one_line,
)
from curation.generation.engines.images import ImageInputError, data_uri

SCHEMA_NAME = "qa_pairs"
BACKOFF_START = 0.5  # seconds before the first retry, doubling up to BACKOFF_MAX
BACKOFF_MAX = 8.0
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
T = TypeVar("T")


class _Outcome(Exception):
    """An attempt ended in ``failure``; ``retry``: another attempt may succeed (after ``wait`` seconds when
    the server said so)."""

    def __init__(self, failure: GenerationFailure, retry: bool = False, wait: float | None = None) -> None:
        super().__init__(failure.detail)
        self.failure, self.retry, self.wait = failure, retry, wait


class _EventLoop:
    """An event loop on a daemon thread: requests run there whichever thread calls ``generate``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="openai-engine", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, or ``Retry-After`` in seconds), else None."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name)) * scale
        except (TypeError, ValueError):  # absent, or an HTTP date: the backoff decides
            continue
        if 0 <= seconds < float("inf"):
            return seconds
    return None


def backoff(attempt: int, wait: float | None) -> float:
    """Seconds before retry number ``attempt + 1``: the server's word, else exponential with jitter."""
    if wait is not None:
        return wait
    return min(BACKOFF_MAX, BACKOFF_START * 2**attempt) * (1 - 0.25 * random.random())


def _number(value: Any) -> Any:
    return 0 if value is None else value  # servers may leave usage out; anything else is checked by the step


def parse_completion(body: bytes) -> Generation | GenerationFailure:
    """A ``chat.completion`` body as a Generation, checking each field it uses (the client would construct a
    response object from any JSON without validation)."""
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as exc:
        return GenerationFailure("invalid_response", f"the body is not JSON: {one_line(exc, 200)}")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return GenerationFailure("invalid_response", "the response holds no choices")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return GenerationFailure("invalid_response", "the response's message has no content")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    return Generation(
        text=content,
        prompt_tokens=_number(usage.get("prompt_tokens")),
        completion_tokens=_number(usage.get("completion_tokens")),
        finish_reason=choice.get("finish_reason") or "unknown",
    )


def _http_library(response: Any) -> Any:
    """The HTTP library under this ``openai`` release (httpx, or httpx2 from openai 3 on), for its errors."""
    return sys.modules[type(response.http_response).__module__.partition(".")[0]]


async def _read_body(response: Any, limit: int) -> bytes:
    """The response body, or an ``_Outcome`` once it passes ``limit`` bytes or the connection breaks."""
    declared = str(response.headers.get("content-length") or "")
    if declared.isdigit() and int(declared) > limit:
        raise _Outcome(GenerationFailure("response_too_large", f"Content-Length {declared} > {limit} bytes"))
    http = _http_library(response)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _Outcome(GenerationFailure("response_too_large", f"the body passed {limit} bytes"))
            chunks.append(chunk)
    except http.TimeoutException as exc:
        raise _Outcome(GenerationFailure("timeout", one_line(exc))) from None
    except http.RequestError as exc:  # reset mid-body, fewer bytes than the Content-Length, bad compression
        raise _Outcome(GenerationFailure("connection", one_line(exc)), retry=True) from None
    return b"".join(chunks)


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg: Any) -> None:
        import openai

        if not cfg.base_url.startswith(("http://", "https://")):
            raise EngineConfigError(f"engine.base_url: expected an http(s) URL, got {cfg.base_url!r}")
        self.cfg = cfg
        self._events = _EventLoop()
        self.client = openai.AsyncOpenAI(
            base_url=cfg.base_url,
            api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
            timeout=cfg.timeout,  # per read; the deadline of each request is enforced in _one
            max_retries=0,  # retries are _one's, inside the deadline
            # a fresh connection per attempt: bytes a broken response leaves behind (a Content-Length shorter
            # than its body) would otherwise be read as the next request's response
            default_headers={"Connection": "close"},
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

    def image_identity(self) -> dict:
        """Images go as data URIs; whether the served model takes them is the endpoint's word (an HTTP 400)."""
        return {"max_image_bytes": self.cfg.max_image_bytes, "max_image_side": self.cfg.max_image_side}

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation | GenerationFailure]:
        if not requests:
            return []
        # arguments (images encoded) in the calling thread, not on the event loop the requests share
        return self._events.run(self._all([self._prepare(r) for r in requests]))

    def _prepare(self, request: ChatRequest) -> tuple[dict[str, Any], int] | GenerationFailure:
        """(arguments, response byte limit) of a request, or its failure when an image cannot be sent."""
        try:
            return self._arguments(request), max_response_bytes(request.max_tokens)
        except ImageInputError as exc:
            return GenerationFailure("image_unreadable", one_line(str(exc)))

    async def _all(
        self, prepared: list[tuple[dict[str, Any], int] | GenerationFailure]
    ) -> list[Generation | GenerationFailure]:
        slots = asyncio.Semaphore(self.cfg.concurrency)

        async def in_slot(item: tuple[dict[str, Any], int] | GenerationFailure) -> Generation | GenerationFailure:
            if isinstance(item, GenerationFailure):
                return item
            async with slots:
                return await self._one(item)

        return list(await asyncio.gather(*(in_slot(p) for p in prepared)))  # gather keeps the order

    def _messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        """The chat messages; a request's images go with its last user message as ``image_url`` content parts
        holding data URIs, after the text (``images.data_uri``: bounded, re-encoded where needed)."""
        messages: list[dict[str, Any]] = list(request.message_dicts())
        if request.images:
            index = request.image_message_index()
            parts: list[dict[str, Any]] = [{"type": "text", "text": messages[index]["content"]}]
            for image in request.images:
                url = data_uri(image, self.cfg.max_image_bytes, self.cfg.max_image_side)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            messages[index] = {"role": messages[index]["role"], "content": parts}
        return messages

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": self._messages(request),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if self.cfg.structured_output and request.json_schema is not None:
            name = request.json_schema.get("title")
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name if isinstance(name, str) else SCHEMA_NAME, "schema": request.json_schema},
            }
        return arguments

    async def _one(self, prepared: tuple[dict[str, Any], int]) -> Generation | GenerationFailure:
        """Attempts until one succeeds, a failure is final, retries run out or the deadline would pass. A retry
        cut short by the deadline reports the failure that called for it (the server's 503 says more than the
        timeout that ended the retry)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.timeout
        arguments, limit = prepared
        attempt, last = 0, None
        while True:
            try:
                return await asyncio.wait_for(self._attempt(arguments, limit), deadline - loop.time())
            except TimeoutError:
                return last or GenerationFailure("timeout", f"no complete response in {self.cfg.timeout:g}s")
            except _Outcome as outcome:
                last, wait = outcome.failure, backoff(attempt, outcome.wait)
                if not outcome.retry or attempt >= self.cfg.max_retries or loop.time() + wait >= deadline:
                    return last
            except Exception as exc:  # a bug or an exotic error: this request fails, the batch goes on
                return GenerationFailure("engine_error", one_line(exc))
            await asyncio.sleep(wait)
            attempt += 1

    async def _attempt(self, arguments: dict[str, Any], limit: int) -> Generation:
        """One HTTP exchange; failures raise ``_Outcome``."""
        import openai

        try:
            async with self.client.chat.completions.with_streaming_response.create(**arguments) as response:
                body = await _read_body(response, limit)
        except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
            raise _Outcome(GenerationFailure("timeout", one_line(exc))) from None
        except openai.APIStatusError as exc:
            raise _status_outcome(exc) from None
        except openai.APIConnectionError as exc:
            raise _Outcome(GenerationFailure("connection", one_line(exc)), retry=True) from None
        except openai.APIError as exc:  # a response the client itself refuses
            raise _Outcome(GenerationFailure("invalid_response", one_line(exc))) from None
        result = parse_completion(body)
        if isinstance(result, GenerationFailure):
            raise _Outcome(result)
        return result

    def close(self) -> None:
        try:
            self._events.run(self.client.close())
        finally:
            self._events.stop()


def _status_outcome(exc: Any) -> _Outcome:
    """An HTTP error status as a failure: 429 ``rate_limited``, a context overflow, else ``http_<status>``."""
    status = exc.status_code
    if status == 429:
        failure = GenerationFailure("rate_limited", one_line(exc))
    elif status == 400 and looks_like_context_overflow(str(exc.message)):
        failure = GenerationFailure("context_too_long", one_line(exc))
    else:
        failure = GenerationFailure(f"http_{status}", one_line(exc))
    retry = status in RETRY_STATUSES or status >= 500
    return _Outcome(failure, retry, retry_after(exc.response.headers) if retry else None)
