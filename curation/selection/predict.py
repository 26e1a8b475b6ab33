"""Answers of a trained model: load what the trainer wrote (a PEFT adapter on its base model, or a full model)
and answer each record's first question with its images, greedily."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from curation.errors import CurationError
from curation.selection.data import answer_end_ids, collate_prompts, pad_token_id
from curation.selection.families import load_model, load_processor
from curation.selection.trainer import ADAPTER_DIR, quiet_peft, resolve_device
from schemas import SftRecord

PROMPT_MAX_LENGTH = 4096


def _has_processor(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def load_trained(output: Path, base_model: str) -> tuple[Any, Any]:
    """(model, processor) from a trainer's output: ``output/adapter`` (or ``output``) holding a PEFT adapter,
    merged into ``base_model``, or a full model directory."""
    output = Path(output)
    for directory in (output / ADAPTER_DIR, output):
        if (directory / "adapter_config.json").is_file():
            from peft import PeftModel

            if not (Path(base_model) / "config.json").is_file():
                raise CurationError(f"no base model directory at {base_model} for the adapter in {directory}")
            base = load_model(base_model)
            with quiet_peft():
                model = PeftModel.from_pretrained(base, directory).merge_and_unload()
            source = directory if _has_processor(directory) else Path(base_model)
            return model, load_processor(source)
        if (directory / "config.json").is_file():
            model = load_model(directory)
            source = directory if _has_processor(directory) else Path(base_model)
            return model, load_processor(source)
    raise CurationError(f"no trained model under {output} (neither {ADAPTER_DIR}/ nor a model directory)")


def _stop_ids(processor: Any, model: Any) -> list[int]:
    """End-of-sequence ids: the generation config's, the tokenizer's eos and the token closing an answer
    (the chat template's end-of-turn token, see ``data.answer_end_ids``)."""
    tokenizer = processor.tokenizer
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.update(answer_end_ids(processor))
    return sorted(ids)


@torch.inference_mode()
def answer(model: Any, processor: Any, records: list[SftRecord], max_new_tokens: int) -> list[str]:
    """Greedy answers to ``turns[0].user`` (with the record's images) for one batch."""
    device = next(model.parameters()).device
    batch = collate_prompts(records, processor, PROMPT_MAX_LENGTH)
    batch = {k: v.to(device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    generated = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=_stop_ids(processor, model),
        pad_token_id=pad_token_id(processor),
    )
    new = generated[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def make_predict_fn(
    output: Path, base_model: str, max_new_tokens: int, batch_size: int, device: str = "auto"
) -> Callable[[list[SftRecord]], list[str]]:
    """A function answering records, in batches of ``batch_size``, with the model trained into ``output``."""
    model, processor = load_trained(output, base_model)
    model.to(resolve_device(device)).eval()

    def predict(records: list[SftRecord]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(records), batch_size):
            out += answer(model, processor, records[start : start + batch_size], max_new_tokens)
        return out

    return predict
