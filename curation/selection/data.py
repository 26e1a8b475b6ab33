"""A trial's training data: stream a mixture manifest's samples out of our shard tars by seeking, and collate
them into chat-formatted model inputs with the loss on the answer tokens only.

The manifest is a parquet with ``tar`` (a shard path), ``idx`` (the sample's index in that tar), ``repeat``,
``component`` (and optionally ``key``), one row per training sample, in training order.
"""

from __future__ import annotations

import bisect
import io
import tarfile
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from curation.errors import CurationError
from curation.selection.families import images_per_sample
from schemas import SftRecord, Turn
from shards.codec import decode_sample

IGNORE_INDEX = -100
MANIFEST_COLUMNS = ("tar", "idx", "repeat", "component")
TEXT_OUTPUTS = {"input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets"}
TOKEN_OUTPUTS = ("token_type_ids", "mm_token_type_ids")  # per-token; see token_outputs


@dataclass
class TarIndex:
    """Where each sample's members lie in a tar: sample ``i`` is ``keys[i]``, member ``exts[j]`` of it starts at
    ``offsets[i * len(exts) + j]`` and has ``sizes[...]`` bytes (our shards: one member set per dataset).
    About 100 bytes per sample."""

    keys: list[str]
    exts: tuple[str, ...]
    offsets: array
    sizes: array

    def members(self, i: int) -> list[tuple[str, int, int]]:
        n = len(self.exts)
        return [(ext, self.offsets[i * n + j], self.sizes[i * n + j]) for j, ext in enumerate(self.exts)]


def index_tar(path: Path) -> TarIndex:
    """One pass over a tar's headers (the data is skipped): each sample's key and its members' offsets."""
    index = TarIndex([], (), array("q"), array("q"))
    current: dict[str, tuple[int, int]] = {}

    def flush() -> None:
        exts = tuple(sorted(current))
        if not index.exts:
            index.exts = exts
        elif exts != index.exts:
            raise CurationError(f"{path}: sample {index.keys[-1]!r} has members {exts}, others {index.exts}")
        for ext in exts:
            index.offsets.append(current[ext][0])
            index.sizes.append(current[ext][1])
        current.clear()

    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if not info.isfile() or "." not in base:
                    continue
                key, ext = base.split(".", 1)
                if not index.keys or index.keys[-1] != key:
                    if current:
                        flush()
                    index.keys.append(key)
                current[ext] = (info.offset_data, info.size)
    except (OSError, tarfile.TarError) as exc:
        raise CurationError(f"cannot index shard {path}: {exc}") from None
    if current:
        flush()
    return index


class ShardReader:
    """Random access to samples of many tars: each tar indexed once (when first read), a few files kept open."""

    def __init__(self, max_open: int = 8) -> None:
        self._indexes: dict[str, TarIndex] = {}
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        self._max_open = max_open

    def _file(self, tar: str) -> BinaryIO:
        f = self._files.pop(tar, None)
        if f is None:
            f = open(tar, "rb")  # noqa: SIM115 (kept open across calls, closed by close())
            if len(self._files) >= self._max_open:
                self._files.popitem(last=False)[1].close()
        self._files[tar] = f
        return f

    def read(self, tar: str, idx: int) -> tuple[str, dict[str, bytes]]:
        """(key, {ext: bytes}) of sample ``idx`` of ``tar``."""
        if tar not in self._indexes:
            self._indexes[tar] = index_tar(Path(tar))
        index = self._indexes[tar]
        if not 0 <= idx < len(index.keys):
            raise CurationError(f"{tar} has {len(index.keys)} samples; the mixture asks for sample {idx}")
        f = self._file(tar)
        out = {}
        for ext, offset, size in index.members(idx):
            f.seek(offset)
            out[ext] = f.read(size)
        return index.keys[idx], out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def mixture_size(manifest: Path) -> int:
    """Rows (training samples) of a mixture manifest."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise CurationError(f"no mixture manifest at {manifest}")
    return pq.ParquetFile(manifest).metadata.num_rows


def iter_mixture(manifest: Path, batch_rows: int = 1024) -> Iterator[SftRecord]:
    """The manifest's records in training order (repeats included), one sample in memory at a time."""
    file = pq.ParquetFile(Path(manifest))
    missing = [c for c in MANIFEST_COLUMNS if c not in file.schema_arrow.names]
    if missing:
        raise CurationError(f"mixture manifest {manifest} lacks columns {missing}")
    columns = ["tar", "idx", *(["key"] if "key" in file.schema_arrow.names else [])]
    reader = ShardReader()
    try:
        for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
            rows = batch.to_pydict()
            keys = rows.get("key") or [None] * batch.num_rows
            for tar, idx, expected in zip(rows["tar"], rows["idx"], keys, strict=True):
                key, members = reader.read(tar, idx)
                if expected is not None and key != expected:
                    raise CurationError(f"{tar} sample {idx} is {key!r}, the mixture expects {expected!r}")
                record = decode_sample(key, members)
                if not isinstance(record, SftRecord):
                    raise CurationError(f"{tar} sample {idx} is a {record.kind} record; training needs sft")
                yield record
    finally:
        reader.close()


# ---- collation -----------------------------------------------------------------------------------
# How a record becomes model inputs, for every family alike: the processor's chat template renders the
# conversation (the images open the first user message), the processor itself expands the image placeholders
# and tokenizes, and the labels keep the answers only. An answer is the text its turn adds after the
# generation prompt, trailing whitespace excluded, so it ends with the template's end-of-turn token
# (<end_of_utterance>, <|im_end|>, <end_of_turn>): the model learns to stop. A template with no end-of-turn
# token (LLaVA-1.5's) gets the tokenizer's eos after each answer, as the family's own training had it.
def messages(record: SftRecord, turns: int | None = None) -> list[dict[str, Any]]:
    """Chat messages of the first ``turns`` turns (all by default); the images open the first user message."""
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(record.turns[:turns]):
        images = [{"type": "image"} for _ in record.images] if i == 0 else []
        out.append({"role": "user", "content": [*images, {"type": "text", "text": turn.user}]})
        out.append({"role": "assistant", "content": [{"type": "text", "text": turn.assistant}]})
    return out


def _render(processor: Any, msgs: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
        raise CurationError(f"the {type(processor).__name__} has no chat template")
    return processor.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=False)


def _ends_with_special_token(tokenizer: Any, text: str) -> bool:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return False
    added = tokenizer.added_tokens_decoder.get(ids[-1])
    return ids[-1] in tokenizer.all_special_ids or (added is not None and added.special)


_CLOSES_ANSWERS: dict[int, tuple[weakref.ref, bool]] = {}  # id(processor) -> (the processor, the answer)


def template_closes_answers(processor: Any) -> bool:
    """Whether the chat template ends each answer with a special token (an end-of-turn token). Decided once per
    processor on a probe answer, never from a record's own text (an answer that happens to end in "</s>")."""
    known = _CLOSES_ANSWERS.get(id(processor))
    if known is not None and known[0]() is processor:
        return known[1]
    probe = SftRecord(key="probe", source="probe", turns=[Turn(user="Say yes.", assistant="yes")])
    full, [(start, end)] = _rendered_spans(processor, probe)
    closes = _ends_with_special_token(processor.tokenizer, full[start:end])
    _CLOSES_ANSWERS[id(processor)] = (weakref.ref(processor), closes)
    return closes


def answer_spans(processor: Any, record: SftRecord) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each answer (its end-of-turn token included,
    trailing whitespace excluded): the text a turn adds after the generation prompt. Where the template closes
    answers with no special token, the tokenizer's eos is inserted after each (and belongs to the answer)."""
    full, spans = _rendered_spans(processor, record)
    if not spans or template_closes_answers(processor):
        return full, spans
    eos = processor.tokenizer.eos_token
    if not eos:
        raise CurationError("the chat template ends answers with no special token and the tokenizer has no eos")
    shifted, added = [], 0
    for start, end in spans:
        full = full[: end + added] + eos + full[end + added :]
        shifted.append((start + added, end + added + len(eos)))
        added += len(eos)
    return full, shifted


def _rendered_spans(processor: Any, record: SftRecord) -> tuple[str, list[tuple[int, int]]]:
    msgs = messages(record)
    full = _render(processor, msgs)
    spans = []
    for i in range(len(record.turns)):
        prompt = _render(processor, msgs[: 2 * i + 1], generation_prompt=True)
        upto = _render(processor, msgs[: 2 * i + 2])
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise CurationError("the chat template does not render conversation prefixes as prefixes")
        spans.append((len(prompt), len(prompt) + len(upto[len(prompt) :].rstrip())))
    return full, spans


def answer_end_ids(processor: Any) -> list[int]:
    """The token that closes an answer (the template's end-of-turn token, or the eos ``answer_spans`` adds):
    generation stops there. Empty if answers end with ordinary text."""
    probe = SftRecord(key="probe", source="probe", turns=[Turn(user="Say yes.", assistant="yes")])
    full, [(start, end)] = answer_spans(processor, probe)
    ids = processor.tokenizer(full[start:end], add_special_tokens=False)["input_ids"]
    return ids[-1:] if ids and _ends_with_special_token(processor.tokenizer, full[start:end]) else []


def image_token_ids(processor: Any) -> list[int]:
    """The ids the processor expands image placeholders into (what the model replaces with image features)."""
    ids = getattr(processor, "image_token_ids", None) or [getattr(processor, "image_token_id", None)]
    return [int(i) for i in ids if i is not None]


def token_outputs(processor: Any) -> list[str]:
    """Per-token processor outputs the model takes besides input_ids and attention_mask (Qwen2-VL's
    ``mm_token_type_ids``, Gemma 3's ``token_type_ids``): truncated and padded with the ids."""
    names = getattr(processor, "model_input_names", None) or []
    return [n for n in TOKEN_OUTPUTS if n in names]


@dataclass
class Encoded:
    """One sample's token ids, labels (None for prompts), per-token extras (name -> ids, e.g.
    ``mm_token_type_ids``) and the processor's image tensors (name -> tensor)."""

    input_ids: list[int]
    labels: list[int] | None
    images: dict[str, torch.Tensor]
    tokens: dict[str, list[int]] = field(default_factory=dict)


def _images(record: SftRecord) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in record.images]


def _process(processor: Any, text: str, record: SftRecord) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"add_special_tokens": False, "return_offsets_mapping": True}
    if record.images:
        kwargs["return_text_replacement_offsets"] = True
        return processor(text=[text], images=[_images(record)], **kwargs)
    return processor(text=[text], **kwargs)


def _shift(spans: list[tuple[int, int]], replacements: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Character spans of the rendered text -> spans in the text the processor tokenized (placeholders such as
    ``<image>`` expanded), as transformers' own assistant-mask code shifts them."""
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    return [
        (start + gained[bisect.bisect_right(ends, start)], end + gained[bisect.bisect_right(ends, end)])
        for start, end in spans
    ]


def _truncate(ids: list[int], max_length: int, image_ids: list[int]) -> int:
    """Where to cut: ``max_length``, but never inside the image tokens (the model needs them all)."""
    if len(ids) <= max_length:
        return len(ids)
    wanted = set(image_ids)
    marked = [pos for pos, token in enumerate(ids) if token in wanted]
    return max(max_length, marked[-1] + 1) if marked else max_length


def encode(record: SftRecord, processor: Any, max_length: int, prompt_only: bool = False) -> Encoded:
    """Token ids and answer-only labels of a record; with ``prompt_only``, the first question and the
    generation prompt (for answering), without labels."""
    if prompt_only:
        text = _render(processor, messages(record, 1)[:1], generation_prompt=True)
        spans: list[tuple[int, int]] = []
    else:
        text, spans = answer_spans(processor, record)
    out = _process(processor, text, record)
    ids = list(out["input_ids"][0])
    replacements = out.get("text_replacement_offsets")
    if record.images and replacements is None:
        raise CurationError(
            f"the {type(processor).__name__} does not report where it expands image placeholders "
            "(return_text_replacement_offsets): the answers cannot be located in its tokens"
        )
    spans = _shift(spans, replacements[0] if replacements else [])
    labels = None
    if not prompt_only:
        labels = [IGNORE_INDEX] * len(ids)
        for pos, (start, end) in enumerate(out["offset_mapping"][0]):
            if any(start < e and end > s for s, e in spans):
                labels[pos] = ids[pos]
    cut = _truncate(ids, max_length, image_token_ids(processor))
    extras = token_outputs(processor)
    tokens = {name: [int(v) for v in out[name][0]][:cut] for name in extras if name in out}
    images = {
        k: torch.as_tensor(np.asarray(v)) for k, v in out.items() if k not in TEXT_OUTPUTS and k not in TOKEN_OUTPUTS
    }
    return Encoded(ids[:cut], None if labels is None else labels[:cut], images, tokens)


def _pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad every dimension of ``t`` at its end up to ``shape``."""
    pad: list[int] = []
    for have, want in zip(reversed(t.shape), reversed(shape), strict=True):
        pad += [0, want - have]
    return torch.nn.functional.pad(t, pad)


def _stack_images(encoded: list[Encoded], per_sample: bool) -> dict[str, torch.Tensor]:
    """Image tensors of a batch. ``per_sample`` (Idefics2/3, SmolVLM: ``pixel_values`` is sample, image,
    channel, height, width): each tensor zero-padded to the batch's largest (zero images are padding to the
    model) and stacked, text-only samples getting all-zero entries. Otherwise (one row per image or patch:
    LLaVA, LLaVA-OneVision's (image, crop, ...), Qwen2-VL's patches with ``image_grid_thw``): concatenated,
    each zero-padded to the largest beyond its first dimension."""
    names = sorted({k for e in encoded for k in e.images})
    out: dict[str, torch.Tensor] = {}
    for name in names:
        present = [e.images[name] for e in encoded if name in e.images]
        shape = tuple(max(t.shape[d] for t in present) for d in range(present[0].dim()))
        if not per_sample:
            out[name] = torch.cat([_pad_to(t, (t.shape[0], *shape[1:])) for t in present])
            continue
        empty = torch.zeros(shape, dtype=present[0].dtype)
        out[name] = torch.cat([_pad_to(e.images[name], shape) if name in e.images else empty for e in encoded])
    return out


def pad_batch(
    encoded: list[Encoded], pad_id: int, side: str = "right", per_sample_images: bool = False
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels (when encoded with them), per-token extras (padded with 0) and image
    tensors of a batch."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    extras = {name: torch.zeros((len(encoded), width), dtype=torch.long) for e in encoded for name in e.tokens}
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, cols] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, cols] = 1
        if e.labels is not None:
            labels[i, cols] = torch.tensor(e.labels, dtype=torch.long)
        for name, values in e.tokens.items():
            extras[name][i, cols] = torch.tensor(values, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, **extras, **_stack_images(encoded, per_sample_images)}
    if any(e.labels is not None for e in encoded):
        batch["labels"] = labels
    return batch


def pad_token_id(processor: Any) -> int:
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise CurationError("the tokenizer has neither a pad nor an eos token")
    return int(pad)


def collate(records: list[SftRecord], processor: Any, max_length: int) -> dict[str, torch.Tensor]:
    """A training batch: chat-formatted inputs, right-padded, ``labels`` = -100 except on answer tokens."""
    encoded = [encode(r, processor, max_length) for r in records]
    return pad_batch(encoded, pad_token_id(processor), per_sample_images=images_per_sample(processor))


def collate_prompts(records: list[SftRecord], processor: Any, max_length: int) -> dict[str, torch.Tensor]:
    """A generation batch: each record's first question (with its images) and the generation prompt,
    left-padded."""
    encoded = [encode(r, processor, max_length, prompt_only=True) for r in records]
    return pad_batch(encoded, pad_token_id(processor), side="left", per_sample_images=images_per_sample(processor))
