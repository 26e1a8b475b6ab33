"""A contract double of the part of vLLM's offline API the vllm engine uses, installable as ``vllm``.

vLLM has no CPU wheel, so CI cannot run it; this double holds the adapter to vLLM's documented contract instead.
It mirrors vLLM's main branch as documented at https://docs.vllm.ai/en/latest/ (the structured-outputs API
that replaced guided decoding in v0.12), from the sources:

- ``vllm/entrypoints/llm.py`` (commit 10fdb8f0d75a): ``LLM.__init__(model, *, ...explicit keywords...,
  **kwargs)`` where ``**kwargs`` go to ``EngineArgs`` (an unknown one is a ``TypeError``);
  ``LLM.chat(messages, sampling_params=None, use_tqdm=True, lora_request=None, chat_template=None,
  chat_template_content_format="auto", add_generation_prompt=True, continue_final_message=False, tools=None,
  chat_template_kwargs=None, tokenization_kwargs=None, mm_processor_kwargs=None)``: one conversation (a list of
  ``{"role", "content"}`` dicts) or a list of them; one ``SamplingParams`` for all or a list of the same length;
  returns ``RequestOutput``s in input order; ``LLM.get_tokenizer()``.
- ``vllm/sampling_params.py`` (commit 00388f6573cc): ``SamplingParams`` (a msgspec Struct: unknown keywords are a
  ``TypeError``) with ``structured_outputs: StructuredOutputsParams | None``; ``StructuredOutputsParams(json=...,
  regex=..., choice=..., grammar=..., json_object=..., structural_tag=...)``, exactly one constraint.
- ``vllm/outputs.py``: ``RequestOutput(request_id, prompt, prompt_token_ids, ..., outputs, finished)`` and
  ``CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs, finish_reason, stop_reason)``.
- A prompt longer than ``max_model_len`` fails the whole call with vLLM's ``ValueError`` ("The decoder prompt
  (length N) is longer than the maximum model length of M. ...").
- Multi-modal chat (``vllm/entrypoints/chat_utils.py``, ``MM_PARSER_MAP``): a message's ``content`` is a string
  or a list of parts, ``{"type": "text", "text": str}``, ``{"type": "image_pil", "image_pil": PIL.Image.Image}``
  or ``{"type": "image_url", "image_url": {"url": str}}``; an unknown part type, or a part without its field, is
  a ``ValueError``. Images on a text-only model (``multimodal=False``: ``llm_engine.model_config.
  is_multimodal_model`` is False) fail the call, as do more images in one prompt than ``limit_mm_per_prompt``
  (``{"image": N}``; vLLM's default 999). The double's template renders each image as ``<image>`` (one token).

``api="guided"`` mimics vLLM before v0.12 instead (v0.10 docs): ``SamplingParams(guided_decoding=
GuidedDecodingParams(json=...))`` and no ``StructuredOutputsParams``.

Tokens are whitespace-separated words (ids from a running vocabulary), so counts are easy to predict.
"""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# LLM.__init__'s explicit keyword-only parameters (llm.py above) and a subset of EngineArgs fields for **kwargs.
LLM_KEYWORDS = frozenset(
    {
        "runner", "convert", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
        "allowed_local_media_path", "allowed_media_domains", "tensor_parallel_size", "dtype", "quantization",
        "revision", "tokenizer_revision", "seed", "gpu_memory_utilization", "swap_space", "cpu_offload_gb",
        "enforce_eager", "enable_return_routed_experts", "disable_custom_all_reduce", "hf_token", "hf_overrides",
        "mm_processor_kwargs", "pooler_config", "structured_outputs_config", "profiler_config", "attention_config",
        "kv_cache_memory_bytes", "compilation_config", "logits_processors",
    }
)  # fmt: skip
ENGINE_ARGS = frozenset(
    {
        "max_model_len", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill",
        "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend", "kv_cache_dtype",
        "block_size", "load_format", "download_dir", "disable_log_stats", "limit_mm_per_prompt", "max_logprobs",
        "generation_config", "served_model_name", "worker_cls", "kv_transfer_config",
    }
)  # fmt: skip
CHAT_PARAMETERS = (
    "sampling_params", "use_tqdm", "lora_request", "chat_template", "chat_template_content_format",
    "add_generation_prompt", "continue_final_message", "tools", "chat_template_kwargs", "tokenization_kwargs",
    "mm_processor_kwargs",
)  # fmt: skip
SAMPLING_FIELDS = frozenset(
    {
        "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
        "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
        "prompt_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
        "include_stop_str_in_output", "output_kind", "logit_bias", "allowed_token_ids", "extra_args", "bad_words",
        "thinking_token_budget",
    }
)  # fmt: skip

Responder = Callable[[list[dict], Any], "str | tuple[str, str]"]


class _StructParams:
    """Keyword-checked parameters: unknown names raise ``TypeError`` like msgspec/pydantic dataclasses do."""

    FIELDS: frozenset[str] = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - self.FIELDS)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {unknown[0]!r}")
        self.__dict__.update(kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).FIELDS:
            return None
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class StructuredOutputsParams(_StructParams):
    FIELDS = frozenset(
        {"json", "regex", "choice", "grammar", "json_object", "disable_any_whitespace",
         "disable_additional_properties", "whitespace_pattern", "structural_tag"}
    )  # fmt: skip
    CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        count = sum(kwargs.get(name) is not None for name in self.CONSTRAINTS)
        if count != 1:
            raise ValueError(f"You must use exactly one kind of structured outputs constraint, got {count}")


class GuidedDecodingParams(StructuredOutputsParams):
    FIELDS = StructuredOutputsParams.FIELDS | {"backend", "disable_fallback"}


class SamplingParams(_StructParams):
    FIELDS = SAMPLING_FIELDS | {"structured_outputs"}
    STRUCTURED_FIELD = "structured_outputs"
    STRUCTURED_CLASS: type = StructuredOutputsParams

    def __init__(self, **kwargs: Any) -> None:
        defaults = {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16, "seed": None}
        super().__init__(**{**defaults, **kwargs})
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        constraint = getattr(self, self.STRUCTURED_FIELD)
        if constraint is not None and not isinstance(constraint, self.STRUCTURED_CLASS):
            raise TypeError(f"{self.STRUCTURED_FIELD} must be {self.STRUCTURED_CLASS.__name__}")

    @property
    def constraint(self) -> Any:
        return getattr(self, self.STRUCTURED_FIELD)


class LegacySamplingParams(SamplingParams):
    FIELDS = SAMPLING_FIELDS | {"guided_decoding"}
    STRUCTURED_FIELD = "guided_decoding"
    STRUCTURED_CLASS = GuidedDecodingParams


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int | None = 0


class WordTokenizer:
    """Whitespace words as tokens; ``encode`` adds a BOS id (0) unless ``add_special_tokens=False``."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<s>": 0}

    def encode(self, text: str, truncation: bool | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:  # fmt: skip
        ids = [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]
        return [0, *ids] if add_special_tokens else ids


@dataclass
class ChatCall:
    conversations: list[list[dict]]
    sampling_params: list[Any]
    kwargs: dict[str, Any]


@dataclass
class VllmDouble:
    """What the adapter did: ``LLM(...)`` keywords per instance, every ``chat`` call."""

    responder: Responder
    api: str = "current"
    multimodal: bool = True  # llm_engine.model_config.is_multimodal_model: a text-only model rejects images
    llm_kwargs: list[dict[str, Any]] = field(default_factory=list)
    chat_calls: list[ChatCall] = field(default_factory=list)


IMAGE_LIMIT_DEFAULT = 999  # vLLM's limit_mm_per_prompt for each modality when unset
MM_PROCESSOR_MISSING = "Resolving modality 'image' requires a multimodal processor but none is available."


def text_of(content: str | list[dict]) -> str:
    """A message's content as the double's template renders it: text parts, and ``<image>`` per image."""
    if isinstance(content, str):
        return content
    return " ".join(part["text"] if part["type"] == "text" else "<image>" for part in content)


def images_of(conversation: list[dict]) -> list[Any]:
    """The images of a conversation, in order (PIL images, or the URLs of ``image_url`` parts)."""
    found = []
    for message in conversation:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "image_pil":
                found.append(part["image_pil"])
            elif part["type"] == "image_url":
                found.append(part["image_url"]["url"])
    return found


def _check_parts(content: Any) -> None:
    """vLLM's content-part parsing, for the part types the double knows (see the module docstring)."""
    from PIL import Image

    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise TypeError(f"message content is a str or a list of parts, got {type(content).__name__}")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_pil" and isinstance(part.get("image_pil"), Image.Image):
            continue
        url = part.get("image_url") if kind == "image_url" else None
        if isinstance(url, dict) and isinstance(url.get("url"), str):
            continue
        raise ValueError(f"Unknown or malformed multimodal content part: {part!r}")


def _render(conversation: list[dict]) -> str:
    """The chat template the double 'applies' (Phi-3 style)."""
    turns = "".join(f"<|{m['role']}|> {text_of(m['content'])} <|end|> " for m in conversation)
    return f"<s> {turns}<|assistant|>"


def _make_llm_class(double: VllmDouble, sampling_class: type) -> type:
    request_ids = itertools.count()

    class LLM:
        def __init__(self, model: str, **kwargs: Any) -> None:
            unknown = sorted(set(kwargs) - LLM_KEYWORDS - ENGINE_ARGS)
            if unknown:
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
            double.llm_kwargs.append({"model": model, **kwargs})
            self.model = model
            self.max_model_len = kwargs.get("max_model_len")
            self.image_limit = (kwargs.get("limit_mm_per_prompt") or {}).get("image", IMAGE_LIMIT_DEFAULT)
            self._tokenizer = WordTokenizer()
            model_config = types.SimpleNamespace(is_multimodal_model=double.multimodal)
            self.llm_engine = types.SimpleNamespace(model_config=model_config)

        def get_tokenizer(self) -> WordTokenizer:
            return self._tokenizer

        def chat(self, messages: Any, *args: Any, **kwargs: Any) -> list[RequestOutput]:
            if len(args) > len(CHAT_PARAMETERS):
                raise TypeError(f"LLM.chat() takes {len(CHAT_PARAMETERS) + 2} positional arguments")
            bound = dict(zip(CHAT_PARAMETERS, args, strict=False))
            for name, value in kwargs.items():
                if name not in CHAT_PARAMETERS:
                    raise TypeError(f"LLM.chat() got an unexpected keyword argument {name!r}")
                if name in bound:
                    raise TypeError(f"LLM.chat() got multiple values for argument {name!r}")
                bound[name] = value
            conversations = self._conversations(messages)
            params = self._params(bound.get("sampling_params"), len(conversations))
            for conversation in conversations:  # vLLM parses every conversation's media before running any
                count = len(images_of(conversation))
                if count and not double.multimodal:
                    raise ValueError(MM_PROCESSOR_MISSING)
                if count > self.image_limit:
                    raise ValueError(f"At most {self.image_limit} image(s) may be provided in one prompt.")
            double.chat_calls.append(ChatCall(conversations, params, bound))
            prompts = [_render(c) for c in conversations]
            prompt_ids = [self._tokenizer.encode(p, add_special_tokens=False) for p in prompts]
            for ids in prompt_ids:  # vLLM validates every prompt before running any
                if self.max_model_len is not None and len(ids) > self.max_model_len:
                    raise ValueError(
                        f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                        f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number of "
                        "text tokens."
                    )
            return [
                self._output(str(next(request_ids)), prompt, ids, conversation, sp)
                for prompt, ids, conversation, sp in zip(prompts, prompt_ids, conversations, params, strict=True)
            ]

        @staticmethod
        def _conversations(messages: Any) -> list[list[dict]]:
            if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
                raise TypeError("messages must be a conversation or a sequence of conversations")
            conversations = [messages] if isinstance(messages[0], dict) else list(messages)
            for conversation in conversations:
                for message in conversation:
                    if not isinstance(message, dict) or "role" not in message or "content" not in message:
                        raise TypeError(f"each message is a dict with 'role' and 'content', got {message!r}")
                    _check_parts(message["content"])
            return conversations

        @staticmethod
        def _params(sampling_params: Any, n: int) -> list[Any]:
            if sampling_params is None:
                return [sampling_class()] * n
            if isinstance(sampling_params, sampling_class):
                return [sampling_params] * n
            params = list(sampling_params)
            if len(params) != n:
                raise ValueError("The lengths of prompts and params must be the same.")
            for p in params:
                if not isinstance(p, sampling_class):
                    raise TypeError(f"sampling_params must be {sampling_class.__name__}, got {type(p).__name__}")
            return params

        def _output(self, request_id: str, prompt: str, ids: list[int], conversation: list[dict], params: Any):
            answer = double.responder(conversation, params)
            text, finish = (answer, "stop") if isinstance(answer, str) else answer
            words = text.split()
            if params.max_tokens is not None and len(words) > params.max_tokens:
                words, finish = words[: params.max_tokens], "length"
                text = " ".join(words)
            token_ids = [self._tokenizer.vocab.setdefault(w, len(self._tokenizer.vocab)) for w in words]
            completion = CompletionOutput(0, text, token_ids, finish_reason=finish)
            return RequestOutput(request_id, prompt, ids, None, [completion], True)

    return LLM


def install_vllm_double(
    monkeypatch: Any, responder: Responder, api: str = "current", multimodal: bool = True
) -> VllmDouble:
    """Put the double into ``sys.modules`` as ``vllm`` and ``vllm.sampling_params`` (undone by ``monkeypatch``).

    ``responder(conversation, sampling_params) -> text | (text, finish_reason)`` plays the model (a message's
    content may be a list of parts: ``text_of``, ``images_of``).
    ``api``: "current" (``structured_outputs``) or "guided" (``guided_decoding``, before v0.12).
    ``multimodal``: False plays a text-only model (images are refused).
    """
    if api not in ("current", "guided"):
        raise ValueError(f"api: current or guided, got {api!r}")
    double = VllmDouble(responder, api, multimodal)
    sampling_class = SamplingParams if api == "current" else LegacySamplingParams
    package = types.ModuleType("vllm")
    package.__path__ = []  # a package, so `import vllm.sampling_params` works
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.SamplingParams = sampling_class
    if api == "current":
        sampling.StructuredOutputsParams = StructuredOutputsParams
    else:
        sampling.GuidedDecodingParams = GuidedDecodingParams
    outputs = types.ModuleType("vllm.outputs")
    outputs.RequestOutput, outputs.CompletionOutput = RequestOutput, CompletionOutput
    package.LLM = _make_llm_class(double, sampling_class)
    package.SamplingParams = sampling_class
    package.RequestOutput = RequestOutput
    package.sampling_params, package.outputs = sampling, outputs
    monkeypatch.setitem(sys.modules, "vllm", package)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    monkeypatch.setitem(sys.modules, "vllm.outputs", outputs)
    return double
