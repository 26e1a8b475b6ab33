"""The transformers engine: a local model directory, batched ``model.generate`` (CPU with tiny models, or a GPU).

- Prompts come from the tokenizer's chat template; a tokenizer without one gets ``FALLBACK_CHAT_TEMPLATE``
  (``identity()["chat_template"] == "fallback"`` then, so cached generations do not mix the two).
- Requests are batched (``batch_size``) among requests with the same sampling settings (``generate`` takes one
  setting per call), left-padded, and seeded per batch with ``torch.manual_seed(seed + batch index)``, ``seed``
  being the batch's first request's (sampling draws from one generator per ``generate`` call).
- ``json_schema`` is ignored: transformers has no constrained decoding here, so structured output is a property
  of the openai and vllm engines only (``identity()["structured_output"]`` is always False).
- A vision-language model (a config ``AutoModelForImageTextToText`` maps: Qwen2-VL, Idefics3, SmolVLM, LLaVA,
  Gemma 3, ...) is driven by its processor (``AutoProcessor``): messages as content parts, a request's images as
  ``{"type": "image"}`` entries after the text of its last user message, ``processor.apply_chat_template``, then
  the processor's own call (image placeholders expanded, pixel values) and ``model.generate``. Requests with
  and without images are batched apart. ``identity()["vision"]`` is True then. A text-only model takes no
  images (``image_identity()`` is None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from curation.generation.engines.base import (
    ChatRequest,
    EngineConfigError,
    Generation,
    GenerationFailure,
    fingerprint_model_dir,
    one_line,
    require_model_dir,
)
from curation.generation.engines.images import ImageInputError, decode

# Used only when the tokenizer has no chat template: "<role>: <content>" lines, then "assistant:".
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
Result = Generation | GenerationFailure
T = TypeVar("T")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def is_vision_model(model_dir: str | Path) -> bool:
    """Whether the directory's config is one ``AutoModelForImageTextToText`` loads (reads the config only)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    try:
        config = AutoConfig.from_pretrained(Path(model_dir), local_files_only=True)
    except Exception as exc:  # unknown model type, unreadable config
        raise EngineConfigError(f"engine.model: cannot read the config of {model_dir}: {one_line(exc)}") from None
    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


@dataclass
class _Prompt:
    """A request on its way to a vision-language model: its rendered prompt and decoded images."""

    index: int
    text: str
    images: list[Any]


def _halving(batch: list[T], run: Callable[[list[T]], list[Result]]) -> list[Result]:
    """``run(batch)``; when it raises (out of memory, a processor's refusal), the halves, until the request(s) at
    fault are alone and fail as ``engine_error``."""
    try:
        return run(batch)
    except Exception as exc:
        if len(batch) == 1:
            return [GenerationFailure("engine_error", one_line(exc))]
        middle = len(batch) // 2
        return _halving(batch[:middle], run) + _halving(batch[middle:], run)


class TransformersEngine:
    name = "transformers"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.model_dir = require_model_dir(cfg.model)
        self.device = _device(cfg.device)
        self.vision = is_vision_model(self.model_dir)
        self.processor: Any = None  # the vision-language model's processor
        try:
            self._load()
        except EngineConfigError:
            raise
        except Exception as exc:  # missing/corrupt files, unknown architecture, no such device
            raise EngineConfigError(f"engine.model: cannot load {self.model_dir}: {one_line(exc)}") from None
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_template = None if self.tokenizer.chat_template or self.vision else FALLBACK_CHAT_TEMPLATE
        self.eos_ids = self._eos_ids()
        text_config = self.model.config.get_text_config() if self.vision else self.model.config
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        self._fingerprint = fingerprint_model_dir(self.model_dir)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        cfg = self.cfg
        kwargs = {
            "local_files_only": True,
            "trust_remote_code": cfg.trust_remote_code,
            "dtype": cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype),
        }
        if self.vision:
            from curation.selection.families import chat_template, load_processor

            self.processor = load_processor(self.model_dir)
            if not chat_template(self.processor):
                raise EngineConfigError(f"engine.model: the processor of {self.model_dir} has no chat template")
            self.tokenizer = self.processor.tokenizer
            # Any: transformers' declared types miss what the model does (.to(device), .generate); None once closed
            self.model: Any = AutoModelForImageTextToText.from_pretrained(self.model_dir, **kwargs)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.model_dir, local_files_only=True, trust_remote_code=cfg.trust_remote_code, padding_side="left"
            )
            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs)
        self.model.to(self.device)

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def identity(self) -> dict:
        identity = {
            "engine": self.name,
            "model": str(self.model_dir),
            "fingerprint": self._fingerprint,
            "dtype": self.cfg.dtype,
            "chat_template": "fallback" if self.chat_template else "model",
            "structured_output": False,
        }
        return {**identity, "vision": True} if self.vision else identity

    def image_identity(self) -> dict | None:
        return {"images": "processor"} if self.vision else None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def render(self, request: ChatRequest) -> str:
        if self.vision:
            return self.processor.apply_chat_template(
                self._content_parts(request), add_generation_prompt=True, tokenize=False
            )
        return self.tokenizer.apply_chat_template(
            request.message_dicts(), chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    @staticmethod
    def _content_parts(request: ChatRequest) -> list[dict[str, Any]]:
        """The messages as a processor's chat template takes them: lists of typed parts, the images last."""
        messages = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in request.messages]
        if request.images:
            messages[request.image_message_index()]["content"] += [{"type": "image"} for _ in request.images]
        return messages

    def generate(self, requests: Sequence[ChatRequest]) -> list[Result]:
        if self.vision:
            return self._generate_vision(requests)
        results: list[Result | None] = [None] * len(requests)
        groups: dict[tuple[int, float, float], list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            if request.images:
                detail = f"{self.model_dir} is a text-only model: it takes no images"
                results[index] = GenerationFailure("engine_error", detail)
                continue
            try:
                ids = self.tokenizer(self.render(request), add_special_tokens=False, verbose=False)["input_ids"]
            except Exception as exc:  # a template that rejects these messages
                results[index] = GenerationFailure("engine_error", one_line(exc))
                continue
            if self.max_positions is not None and len(ids) >= self.max_positions:
                detail = f"prompt of {len(ids)} tokens, the model holds {self.max_positions} positions"
                results[index] = GenerationFailure("context_too_long", detail)
                continue
            key = (request.max_tokens, request.temperature, request.top_p)
            groups.setdefault(key, []).append((index, ids))
        batch_index = 0
        for group in groups.values():
            for start in range(0, len(group), self.cfg.batch_size):
                batch = group[start : start + self.cfg.batch_size]
                first = requests[batch[0][0]]

                def run(part: list[tuple[int, list[int]]], first: ChatRequest = first, number: int = batch_index):
                    return self._generate_batch(first, part, number)

                for (index, _), result in zip(batch, _halving(batch, run), strict=True):
                    results[index] = result
                batch_index += 1
        return results  # type: ignore[return-value]

    def _generate_batch(self, first: ChatRequest, batch: list[tuple[int, list[int]]], batch_index: int) -> list[Result]:
        encoded = self.tokenizer.pad({"input_ids": [ids for _, ids in batch]}, return_tensors="pt")
        return self._sample(first, dict(encoded), batch_index)

    def _sample(self, first: ChatRequest, inputs: dict[str, Any], batch_index: int) -> list[Result]:
        """``model.generate`` on left-padded ``inputs`` with ``first``'s sampling settings; one result per row."""
        import torch

        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        for name, value in inputs.items():  # pixel values in the model's dtype
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                inputs[name] = value.to(self.model.dtype)
        width = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        max_new_tokens = first.max_tokens
        if self.max_positions is not None:  # generation stops at the model's last position ("length")
            max_new_tokens = min(max_new_tokens, self.max_positions - width)
        sampling = first.temperature > 0
        if first.seed is not None:
            torch.manual_seed(first.seed + batch_index)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=first.temperature if sampling else None,
                top_p=first.top_p if sampling else None,
                top_k=0 if sampling else None,  # nucleus sampling only, as vLLM and OpenAI do
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, width:].tolist()
        return [self._generation(row, int(n)) for row, n in zip(new_tokens, prompt_tokens, strict=True)]

    # -- vision-language models ----------------------------------------------------------------------
    def _generate_vision(self, requests: Sequence[ChatRequest]) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        groups: dict[tuple[int, float, float, bool], list[_Prompt]] = {}
        for index, request in enumerate(requests):
            try:
                prompt = _Prompt(index, self.render(request), [decode(image) for image in request.images])
            except ImageInputError as exc:
                results[index] = GenerationFailure("image_unreadable", one_line(str(exc)))
                continue
            except Exception as exc:  # a template that rejects these messages
                results[index] = GenerationFailure("engine_error", one_line(exc))
                continue
            key = (request.max_tokens, request.temperature, request.top_p, bool(request.images))
            groups.setdefault(key, []).append(prompt)
        batch_index = 0
        for group in groups.values():
            for start in range(0, len(group), self.cfg.batch_size):
                batch = group[start : start + self.cfg.batch_size]
                first = requests[batch[0].index]

                def run(part: list[_Prompt], first: ChatRequest = first, number: int = batch_index) -> list[Result]:
                    return self._vision_batch(first, part, number)

                for prompt, result in zip(batch, _halving(batch, run), strict=True):
                    results[prompt.index] = result
                batch_index += 1
        return results  # type: ignore[return-value]

    def _vision_batch(self, first: ChatRequest, batch: list[_Prompt], batch_index: int) -> list[Result]:
        """The processor on the batch (placeholders expanded, pixel values), then ``_sample``; prompts over the
        model's positions fail alone as ``context_too_long`` and the others run without them."""
        images = [p.images for p in batch] if first.images else None
        inputs = self.processor(text=[p.text for p in batch], images=images, return_tensors="pt", padding=True)
        lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        if self.max_positions is not None and max(lengths) >= self.max_positions:
            fits = [p for p, n in zip(batch, lengths, strict=True) if n < self.max_positions]
            done = iter(self._vision_batch(first, fits, batch_index) if fits else [])
            detail = "prompt of {} tokens, the model holds {} positions"
            return [
                next(done) if n < self.max_positions
                else GenerationFailure("context_too_long", detail.format(n, self.max_positions))
                for n in lengths
            ]  # fmt: skip
        return self._sample(first, dict(inputs), batch_index)

    def _generation(self, row: list[int], prompt_tokens: int) -> Generation:
        """Completion = generated ids up to and including the first eos; what follows is padding."""
        stop = next((i for i, token in enumerate(row) if token in self.eos_ids), None)
        completion = row if stop is None else row[: stop + 1]
        text = self.tokenizer.decode(completion, skip_special_tokens=True)
        return Generation(text, prompt_tokens, len(completion), "length" if stop is None else "stop")

    def close(self) -> None:
        import torch

        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
