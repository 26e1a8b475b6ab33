"""What the generation steps share around an engine: the generation cache, repairs of untrusted replies, counts.

``CachedGenerator.run(requests)`` answers each request from the cache (``docmatix.cache``) where it can, asks the
engine for the rest (identical requests once), repairs every reply where it enters the pipeline
(``docmatix.untrusted.sanitize_generation``: a reply over ``max_chars`` is cut and marked ``truncated``) and
stores the finished generations at once, before anything else is done with them (a killed build reruns only
what was not generated; failures are not stored, a rerun retries them). The crash point ``generation_batch``
(``VLM_CURATION_CRASH_AT``) fires right after a batch is stored, for the resume tests.

Cache keys are ``request_key(identity, request)`` with the engine's ``identity()``; for a request with images,
the identity also holds the engine's ``image_identity()`` (how images reach the model), so the keys of
text-only requests do not depend on image settings.

Counts (a ``Counter`` the caller may share): ``requests``, ``cached_requests``, ``generated_requests``, the
prompt and completion tokens of all results (``prompt_tokens``, ``completion_tokens``) and of those generated
in this run (``generated_prompt_tokens``, ``generated_completion_tokens``); ``repairs`` per kind, in requests;
``engine_seconds``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from curation.build.faults import crash_point
from curation.generation.docmatix.cache import GenerationCache, request_key
from curation.generation.docmatix.untrusted import sanitize_generation
from curation.generation.engines import ChatRequest, Engine, Generation, GenerationFailure
from curation.recipe import EngineConfig, TransformersEngineConfig, VllmEngineConfig
from curation.steps.contract import Resources

Result = Generation | GenerationFailure
RUN_COUNTS = ("generated_requests", "cached_requests", "generated_prompt_tokens", "generated_completion_tokens")


def engine_resources(engine: EngineConfig) -> Resources:
    """The GPUs of a local model: vLLM's tensor-parallel size, or one for transformers on ``cuda`` (``device:
    auto`` uses a GPU only where one happens to be visible, so it asks for none); none for an endpoint."""
    if isinstance(engine, VllmEngineConfig):
        return Resources(gpus=float(engine.tensor_parallel_size))
    if isinstance(engine, TransformersEngineConfig) and engine.device.startswith("cuda"):
        return Resources(gpus=1.0)
    return Resources()


class CachedGenerator:
    def __init__(
        self,
        engine: Engine,
        cache: GenerationCache,
        max_chars: int,
        counts: Counter[str] | None = None,
        repairs: Counter[str] | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.max_chars = max_chars
        self.identity = engine.identity()
        images = engine.image_identity()
        self.image_identity = None if images is None else {**self.identity, "images": images}
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.repairs: Counter[str] = Counter() if repairs is None else repairs
        self.engine_seconds = 0.0

    def key(self, request: ChatRequest) -> str:
        identity = self.image_identity if request.images and self.image_identity is not None else self.identity
        return request_key(identity, request)

    def run(self, requests: Sequence[ChatRequest]) -> list[Result]:
        """One result per request, in order: cached generations, and the engine's for the rest."""
        keys = [self.key(r) for r in requests]
        cached = {k: self.accept(g) for k, g in self.cache.get_many(sorted(set(keys))).items()}
        todo: dict[str, int] = {}  # key -> the first request with it (identical requests are generated once)
        for i, k in enumerate(keys):
            if k not in cached and k not in todo:
                todo[k] = i
        self.counts["requests"] += len(requests)
        self.counts["cached_requests"] += sum(1 for k in keys if k in cached)
        failures: dict[str, GenerationFailure] = {}
        if todo:
            fresh = dict(zip(todo, self._ask([requests[i] for i in todo.values()]), strict=True))
            self.cache.put_many([(k, g) for k, g in fresh.items() if isinstance(g, Generation)])
            crash_point("generation_batch")
            for k, g in fresh.items():
                if isinstance(g, Generation):
                    cached[k] = g
                    self.counts["generated_requests"] += 1
                    self.counts["generated_prompt_tokens"] += g.prompt_tokens
                    self.counts["generated_completion_tokens"] += g.completion_tokens
                else:
                    failures[k] = g
        out = [cached.get(k) or failures[k] for k in keys]
        for g in out:
            if isinstance(g, Generation):
                self.counts["prompt_tokens"] += g.prompt_tokens
                self.counts["completion_tokens"] += g.completion_tokens
                self.repairs.update(g.repairs)
        return out

    def _ask(self, requests: list[ChatRequest]) -> list[Result]:
        """The engine's results for ``requests``, each repaired (``accept``) before anything else sees it."""
        started = time.perf_counter()
        results = self.engine.generate(requests)
        self.engine_seconds += time.perf_counter() - started
        if len(results) != len(requests):  # an engine bug: fail these requests, not the build
            detail = f"the engine returned {len(results)} results for {len(requests)} requests"
            return [GenerationFailure("engine_error", detail)] * len(requests)
        return [self.accept(r) for r in results]

    def accept(self, result: object) -> Result:
        """Where a reply enters the pipeline: a repaired Generation, or a failure (what is neither)."""
        if isinstance(result, GenerationFailure):
            return result
        if isinstance(result, Generation):
            repaired = sanitize_generation(result, self.max_chars)
            if repaired is not None:
                return repaired
        return GenerationFailure("invalid_response", f"not a text generation: {type(result).__name__}")
