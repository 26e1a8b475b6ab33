"""The transformers engine: a local model directory, batched ``model.generate`` (CPU with tiny models, or a GPU).

- Prompts come from the tokenizer's chat template; a tokenizer without one gets ``FALLBACK_CHAT_TEMPLATE``
  (``identity()["chat_template"] == "fallback"`` then, so cached generations do not mix the two).
- Requests are batched (``batch_size``) among requests with the same sampling settings (``generate`` takes one
  setting per call), left-padded, and seeded per batch with ``torch.manual_seed(seed + batch index)``, ``seed``
  being the batch's first request's (sampling draws from one generator per ``generate`` call).
- ``json_schema`` is ignored: transformers has no constrained decoding here, so structured output is a property
  of the openai and vllm engines only (``identity()["structured_output"]`` is always False).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from curation.generation.engines.base import (
    ChatRequest,
    EngineConfigError,
    Generation,
    GenerationFailure,
    fingerprint_model_dir,
    one_line,
    require_model_dir,
)

# Used only when the tokenizer has no chat template: "<role>: <content>" lines, then "assistant:".
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class TransformersEngine:
    name = "transformers"

    def __init__(self, cfg: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.model_dir = require_model_dir(cfg.model)
        self.device = _device(cfg.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.model_dir, local_files_only=True, trust_remote_code=cfg.trust_remote_code, padding_side="left"
            )
            # Any: transformers' declared types miss what the model does (.to(device), .generate); None once closed
            self.model: Any = AutoModelForCausalLM.from_pretrained(
                self.model_dir,
                local_files_only=True,
                trust_remote_code=cfg.trust_remote_code,
                dtype=cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype),
            )
            self.model.to(self.device)
        except Exception as exc:  # missing/corrupt files, unknown architecture, no such device
            raise EngineConfigError(f"engine.model: cannot load {self.model_dir}: {one_line(exc)}") from None
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_template = None if self.tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
        self.eos_ids = self._eos_ids()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._fingerprint = fingerprint_model_dir(self.model_dir)

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def identity(self) -> dict:
        return {
            "engine": self.name,
            "model": str(self.model_dir),
            "fingerprint": self._fingerprint,
            "dtype": self.cfg.dtype,
            "chat_template": "fallback" if self.chat_template else "model",
            "structured_output": False,
        }

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def render(self, request: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(
            request.message_dicts(), chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation | GenerationFailure]:
        results: list[Generation | GenerationFailure | None] = [None] * len(requests)
        groups: dict[tuple[int, float, float], list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
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
                for index, result in zip(
                    [i for i, _ in batch], self._run_batch(requests, batch, batch_index), strict=True
                ):
                    results[index] = result
                batch_index += 1
        return results  # type: ignore[return-value]

    def _run_batch(
        self, requests: Sequence[ChatRequest], batch: list[tuple[int, list[int]]], batch_index: int
    ) -> list[Generation | GenerationFailure]:
        try:
            return self._generate_batch(requests, batch, batch_index)
        except Exception as exc:  # e.g. out of memory: halve the batch until the request(s) at fault are alone
            if len(batch) == 1:
                return [GenerationFailure("engine_error", one_line(exc))]
            middle = len(batch) // 2
            return self._run_batch(requests, batch[:middle], batch_index) + self._run_batch(
                requests, batch[middle:], batch_index
            )

    def _generate_batch(
        self, requests: Sequence[ChatRequest], batch: list[tuple[int, list[int]]], batch_index: int
    ) -> list[Generation | GenerationFailure]:
        import torch

        first = requests[batch[0][0]]
        encoded = self.tokenizer.pad({"input_ids": [ids for _, ids in batch]}, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device)
        max_new_tokens = first.max_tokens
        if self.max_positions is not None:  # generation stops at the model's last position ("length")
            max_new_tokens = min(max_new_tokens, self.max_positions - max(len(ids) for _, ids in batch))
        sampling = first.temperature > 0
        if first.seed is not None:
            torch.manual_seed(first.seed + batch_index)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=first.temperature if sampling else None,
                top_p=first.top_p if sampling else None,
                top_k=0 if sampling else None,  # nucleus sampling only, as vLLM and OpenAI do
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        return [self._generation(row, len(ids)) for row, (_, ids) in zip(new_tokens, batch, strict=True)]

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
