"""A trial's training data: stream a mixture manifest's samples out of our shard tars by seeking, and collate
them into chat-formatted model inputs with the loss on the answer tokens only.

The manifest is a parquet with ``tar`` (a shard path), ``idx`` (the sample's index in that tar), ``repeat``,
``component`` (and optionally ``key``), one row per training sample, in training order.
"""

from __future__ import annotations

import bisect
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq
import torch

from curation.errors import CurationError
from schemas import SftRecord
from shards.codec import decode_sample

IGNORE_INDEX = -100
MANIFEST_COLUMNS = ("tar", "idx", "repeat", "component")

# One sample's members: extension -> (offset of the data in the tar, size).
SampleIndex = tuple[str, dict[str, tuple[int, int]]]


def index_tar(path: Path) -> list[SampleIndex]:
    """(key, {ext: (offset, size)}) per sample in tar order, from one pass over the headers (data is skipped)."""
    samples: list[SampleIndex] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (info.offset_data, info.size)
    except (OSError, tarfile.TarError) as exc:
        raise CurationError(f"cannot index shard {path}: {exc}") from None
    return samples


class ShardReader:
    """Random access to samples of many tars: each tar indexed once, a few file handles kept open."""

    def __init__(self, max_open: int = 8) -> None:
        self._indexes: dict[str, list[SampleIndex]] = {}
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
        if tar not in self._indexes:
            self._indexes[tar] = index_tar(Path(tar))
        index = self._indexes[tar]
        if not 0 <= idx < len(index):
            raise CurationError(f"{tar} has {len(index)} samples; the mixture asks for sample {idx}")
        key, members = index[idx]
        f = self._file(tar)
        out = {}
        for ext, (offset, size) in members.items():
            f.seek(offset)
            out[ext] = f.read(size)
        return key, out

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
def messages(record: SftRecord, turns: int | None = None) -> list[dict[str, Any]]:
    """Chat messages of the first ``turns`` turns (all by default); the images open the first user message."""
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(record.turns[:turns]):
        images = [{"type": "image"} for _ in record.images] if i == 0 else []
        out.append({"role": "user", "content": [*images, {"type": "text", "text": turn.user}]})
        out.append({"role": "assistant", "content": [{"type": "text", "text": turn.assistant}]})
    return out


def _render(processor: Any, msgs: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=False)


def answer_spans(processor: Any, record: SftRecord) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each answer (its end-of-turn marker included,
    trailing whitespace excluded): the text a turn adds after the generation prompt."""
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


@dataclass
class Encoded:
    """One sample's token ids, labels (or None) and image tensors (name -> tensor with a batch dim of 1)."""

    input_ids: list[int]
    labels: list[int] | None
    images: dict[str, torch.Tensor]


def _images(record: SftRecord) -> list[Any]:
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(b)).convert("RGB") for b in record.images]


def _process(processor: Any, text: str, record: SftRecord) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"add_special_tokens": False, "return_offsets_mapping": True}
    if record.images:
        kwargs["return_text_replacement_offsets"] = True
        return processor(text=[text], images=[_images(record)], **kwargs)
    return processor(text=[text], **kwargs)


def _shift(spans: list[tuple[int, int]], replacements: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Original character spans -> spans in the text with image placeholders expanded."""
    ends = [r["span"][1] for r in replacements]
    gained = [0]
    for r in replacements:
        gained.append(r["new_span"][1] - r["span"][1])
    return [tuple(c + gained[bisect.bisect_right(ends, c)] for c in span) for span in spans]  # type: ignore[misc]


def _truncate(ids: list[int], max_length: int, image_token_id: int | None) -> int:
    """Where to cut: ``max_length``, but never inside the image tokens (the model needs them all)."""
    if len(ids) <= max_length:
        return len(ids)
    if image_token_id is not None and image_token_id in ids:
        last = len(ids) - 1 - ids[::-1].index(image_token_id)
        return max(max_length, last + 1)
    return max_length


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
    spans = _shift(spans, replacements[0] if replacements else [])
    labels = None
    if not prompt_only:
        labels = [IGNORE_INDEX] * len(ids)
        for pos, (start, end) in enumerate(out["offset_mapping"][0]):
            if any(start < e and end > s for s, e in spans):
                labels[pos] = ids[pos]
    cut = _truncate(ids, max_length, getattr(processor, "image_token_id", None))
    images = {
        k: torch.as_tensor(v)
        for k, v in out.items()
        if k not in ("input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets", "token_type_ids")
    }
    return Encoded(ids[:cut], None if labels is None else labels[:cut], images)


def _pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad every dimension of ``t`` at its end up to ``shape``."""
    pad: list[int] = []
    for have, want in zip(reversed(t.shape), reversed(shape), strict=True):
        pad += [0, want - have]
    return torch.nn.functional.pad(t, pad)


def _stack_images(encoded: list[Encoded]) -> dict[str, torch.Tensor]:
    """Per-sample image tensors shaped (1, n_images, ...) (Idefics2/3 layout) are zero-padded (zero images are
    padding to the model) and stacked, text-only samples getting all-zero entries; other layouts are
    concatenated along their first dimension."""
    out: dict[str, torch.Tensor] = {}
    names = sorted({k for e in encoded for k in e.images})
    for name in names:
        present = [e.images[name] for e in encoded if name in e.images]
        if present[0].dim() >= 2 and all(t.shape[0] == 1 for t in present):
            shape = tuple(max(t.shape[d] for t in present) for d in range(present[0].dim()))
            empty = torch.zeros(shape, dtype=present[0].dtype)
            out[name] = torch.cat([_pad_to(e.images[name], shape) if name in e.images else empty for e in encoded])
        else:
            out[name] = torch.cat(present)
    return out


def pad_batch(encoded: list[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels (when encoded with them) and image tensors of a batch."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, cols] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, cols] = 1
        if e.labels is not None:
            labels[i, cols] = torch.tensor(e.labels, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, **_stack_images(encoded)}
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
    return pad_batch([encode(r, processor, max_length) for r in records], pad_token_id(processor))


def collate_prompts(records: list[SftRecord], processor: Any, max_length: int) -> dict[str, torch.Tensor]:
    """A generation batch: each record's first question (with its images) and the generation prompt,
    left-padded."""
    encoded = [encode(r, processor, max_length, prompt_only=True) for r in records]
    return pad_batch(encoded, pad_token_id(processor), side="left")
