"""The vLLM engine: offline batches through ``vllm.LLM.chat`` (the ``[gpu]`` extra; CUDA machines only).

Written against vLLM's documented API (``LLM(...)``, ``LLM.chat(conversations, sampling_params=[...])``,
``SamplingParams``, ``RequestOutput``); CI cannot install vLLM, so tests run it against a contract double
(``tests/vllm_double.py``). Structured output uses ``SamplingParams(structured_outputs=StructuredOutputsParams(
json=schema))`` and falls back to ``guided_decoding=GuidedDecodingParams(json=schema)`` on vLLM releases before
the rename (the old name was removed in v0.12). vLLM rejects a whole ``chat`` call when one prompt is too long,
so a failing batch is split in halves until the failing requests are alone.

Images (a multi-modal model) go in the conversation as vLLM's ``{"type": "image_pil", "image_pil": <PIL image>}``
content parts (``vllm/entrypoints/chat_utils.py``: ``MM_PARSER_MAP``), after the text of the last user message;
vLLM applies the model's chat template and its multi-modal processor to them. ``limit_images_per_prompt`` sets
``LLM(limit_mm_per_prompt={"image": N})``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curation.generation.engines.base import (
    ChatRequest,
    EngineConfigError,
    Generation,
    GenerationFailure,
    fingerprint_model_dir,
    looks_like_context_overflow,
    one_line,
)
from curation.generation.engines.images import ImageInputError, decode

NOT_INSTALLED = "engine.type vllm: vllm is not installed (pip install 'vlm-curation[gpu]' on a CUDA machine)"
ENGINE_SEED = 0  # LLM(seed=...): fixed; each request carries its own sampling seed


def _structured_output_factory() -> tuple[str, Any] | None:
    """(SamplingParams keyword, params class) for JSON-schema constrained decoding, whichever this vLLM has."""
    try:
        from vllm.sampling_params import StructuredOutputsParams  # pyright: ignore[reportMissingImports]  # optional gpu extra
    except ImportError:
        try:
            from vllm.sampling_params import GuidedDecodingParams  # pyright: ignore[reportMissingImports]  # optional gpu extra
        except ImportError:
            return None
        return "guided_decoding", GuidedDecodingParams
    return "structured_outputs", StructuredOutputsParams


class VllmEngine:
    name = "vllm"

    def __init__(self, cfg: Any) -> None:
        try:
            import vllm  # pyright: ignore[reportMissingImports]  # optional gpu extra
        except ImportError:
            raise EngineConfigError(NOT_INSTALLED) from None
        self.cfg = cfg
        self._SamplingParams = vllm.SamplingParams
        self._structured = _structured_output_factory()
        if cfg.structured_output and self._structured is None:
            raise EngineConfigError("engine.structured_output: this vLLM has no structured (guided) decoding")
        local = Path(os.path.expanduser(cfg.model))
        self._fingerprint = fingerprint_model_dir(local) if local.is_dir() else None
        extra: dict[str, Any] = {}
        if cfg.limit_images_per_prompt is not None:
            extra["limit_mm_per_prompt"] = {"image": cfg.limit_images_per_prompt}
        try:
            self.llm: Any = vllm.LLM(  # None once closed
                model=str(local.resolve()) if local.is_dir() else cfg.model,
                tensor_parallel_size=cfg.tensor_parallel_size,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                max_model_len=cfg.max_model_len,
                dtype=cfg.dtype,
                seed=ENGINE_SEED,
                trust_remote_code=cfg.trust_remote_code,
                **extra,
            )
        except Exception as exc:  # vLLM raises many kinds (OSError, ValueError, RuntimeError without a GPU)
            raise EngineConfigError(f"engine.model: vLLM cannot load {cfg.model}: {one_line(exc)}") from None
        self.tokenizer = self.llm.get_tokenizer()

    def identity(self) -> dict:
        return {
            "engine": self.name,
            "model": self.cfg.model,
            "fingerprint": self._fingerprint,
            "dtype": self.cfg.dtype,
            "max_model_len": self.cfg.max_model_len,
            "structured_output": self.cfg.structured_output,
        }

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def image_identity(self) -> dict | None:
        """None for a model vLLM loaded as text-only (``llm_engine.model_config.is_multimodal_model``)."""
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        if getattr(model_config, "is_multimodal_model", True) is False:
            return None
        return {"images": "image_pil", "limit_images_per_prompt": self.cfg.limit_images_per_prompt}

    @staticmethod
    def conversation(request: ChatRequest, decoded: dict[bytes, Any] | None = None) -> list[dict[str, Any]]:
        """The request as ``LLM.chat`` takes it: text messages, and a request's images as ``image_pil`` content
        parts (RGB PIL images) after the text of its last user message, for the model's chat template.
        ``decoded``: images already decoded for this batch (the same image goes with several requests)."""
        messages: list[dict[str, Any]] = list(request.message_dicts())
        if request.images:
            decoded = {} if decoded is None else decoded
            index = request.image_message_index()
            parts: list[dict[str, Any]] = [{"type": "text", "text": messages[index]["content"]}]
            for image in request.images:
                if image not in decoded:
                    decoded[image] = decode(image)
                parts.append({"type": "image_pil", "image_pil": decoded[image]})
            messages[index] = {"role": messages[index]["role"], "content": parts}
        return messages

    def sampling_params(self, request: ChatRequest) -> Any:
        kwargs: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if self.cfg.structured_output and request.json_schema is not None and self._structured is not None:
            keyword, params = self._structured
            kwargs[keyword] = params(json=request.json_schema)
        return self._SamplingParams(**kwargs)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation | GenerationFailure]:
        results: list[Generation | GenerationFailure] = []
        for start in range(0, len(requests), self.cfg.batch_size):
            results.extend(self._chunk(requests[start : start + self.cfg.batch_size]))
        return results

    def _chunk(self, requests: Sequence[ChatRequest]) -> list[Generation | GenerationFailure]:
        """One ``chat`` call's worth: conversations built (images decoded once per chunk), then run."""
        decoded: dict[bytes, Any] = {}
        results: dict[int, Generation | GenerationFailure] = {}
        ready: list[tuple[int, ChatRequest, list[dict[str, Any]]]] = []
        for index, request in enumerate(requests):
            try:
                ready.append((index, request, self.conversation(request, decoded)))
            except ImageInputError as exc:
                results[index] = GenerationFailure("image_unreadable", one_line(str(exc)))
        if ready:
            generated = self._batch([(request, conversation) for _, request, conversation in ready])
            results.update(zip([index for index, _, _ in ready], generated, strict=True))
        return [results[index] for index in range(len(requests))]

    def _batch(self, batch: list[tuple[ChatRequest, list[dict[str, Any]]]]) -> list[Generation | GenerationFailure]:
        try:
            params = [self.sampling_params(r) for r, _ in batch]
            outputs = self.llm.chat([c for _, c in batch], sampling_params=params, use_tqdm=False)
        except Exception as exc:  # vLLM rejects the whole call: halve it until the request(s) at fault are alone
            if len(batch) > 1:
                middle = len(batch) // 2
                return self._batch(batch[:middle]) + self._batch(batch[middle:])
            reason = "context_too_long" if looks_like_context_overflow(str(exc)) else "engine_error"
            return [GenerationFailure(reason, one_line(exc))]
        if len(outputs) != len(batch):
            detail = f"vLLM returned {len(outputs)} outputs for {len(batch)} conversations"
            return [GenerationFailure("invalid_response", detail)] * len(batch)
        return [self._generation(output) for output in outputs]

    @staticmethod
    def _generation(output: Any) -> Generation | GenerationFailure:
        if not output.outputs:
            return GenerationFailure("invalid_response", "vLLM returned no completion")
        completion = output.outputs[0]
        return Generation(
            text=completion.text,
            prompt_tokens=len(output.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids or ()),
            finish_reason=completion.finish_reason or "unknown",
        )

    def close(self) -> None:
        self.llm = None
