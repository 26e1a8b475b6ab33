"""The tiny offline Idefics3 model, the mixture reader and the collator (loss on answer tokens only).

Also home of the toy colour task that ``test_trainer.py`` trains on: 32x32 images of one colour (jittered,
speckled), "What color is the image?" -> the colour word, built into real shards by ``curation.build.runner.build``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.selection.data import IGNORE_INDEX, collate, collate_prompts, index_tar, iter_mixture
from curation.selection.tiny_vlm import build_tiny_idefics3
from schemas import SftRecord, Turn
from shards import read_manifest
from shards.reader import iter_dataset

COLORS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
QUESTION = "What color is the image?"


def color_png(rgb: tuple[int, int, int], rng: random.Random, size: int = 32) -> bytes:
    """A ``size`` square of one colour, jittered by up to ±30 per channel, with 40 speckles."""
    base = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in rgb)
    im = Image.new("RGB", (size, size), base)
    px = im.load()
    for _ in range(40):
        px[rng.randrange(size), rng.randrange(size)] = tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in base)
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def color_dataset(root: Path, name: str, n: int, seed: int) -> Path:
    """A built sft dataset of ``n`` colour questions (colours in turn), from a jsonl file + PNG files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = sorted(COLORS)
    with open(root / f"{name}.jsonl", "w") as f:
        for i in range(n):
            color = names[i % len(names)]
            (root / f"{name}-{i}.png").write_bytes(color_png(COLORS[color], rng))
            row = {
                "id": f"{name}-{i}",
                "images": [f"{name}-{i}.png"],
                "turns": [{"user": QUESTION, "assistant": color}],
            }
            f.write(json.dumps(row) + "\n")
    source = {"name": name, "reader": "jsonl", "record": "sft", "path": str(root / f"{name}.jsonl")}
    recipe = validate_recipe(
        {
            "name": name,
            "sources": [{**source, "image_root": str(root), "fields": {"key": "id"}}],
            "output": {"kind": "sft", "max_samples_per_shard": 64},
        }
    )
    return build(recipe, root / "built" / name, progress=False).out


def write_manifest(dataset: Path, path: Path, repeats: int = 1, seed: int = 0, component: str = "colors") -> Path:
    """A mixture manifest over every sample of ``dataset``, ``repeats`` times, shuffled (training order)."""
    rows = []
    for shard in read_manifest(dataset).shards:
        side = pq.read_table(dataset / shard.sidecar, columns=["key", "index"]).to_pydict()
        rows += [(str(dataset / shard.name), idx, key) for key, idx in zip(side["key"], side["index"], strict=True)]
    copies = [(tar, idx, rep, key) for rep in range(repeats) for tar, idx, key in rows]
    random.Random(seed).shuffle(copies)
    table = pa.table(
        {
            "tar": pa.array([c[0] for c in copies], pa.string()),
            "idx": pa.array([c[1] for c in copies], pa.int32()),
            "repeat": pa.array([c[2] for c in copies], pa.int32()),
            "component": pa.array([component] * len(copies), pa.string()),
            "key": pa.array([c[3] for c in copies], pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_idefics3(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny)


def _record(key: str, images: list[bytes], *turns: tuple[str, str]) -> SftRecord:
    return SftRecord(key=key, source="t", images=images, turns=[Turn(user=u, assistant=a) for u, a in turns])


def _png(color: str, seed: int = 0) -> bytes:
    return color_png(COLORS[color], random.Random(seed))


# ---- the model -----------------------------------------------------------------------------------
def test_builds_offline_and_loads_with_the_auto_classes(tiny, processor):
    from transformers import AutoModelForImageTextToText, Idefics3ForConditionalGeneration, Idefics3Processor

    model = AutoModelForImageTextToText.from_pretrained(tiny)
    assert isinstance(model, Idefics3ForConditionalGeneration)
    assert isinstance(processor, Idefics3Processor)
    n = sum(p.numel() for p in model.parameters())
    assert n == 104_624  # ~1e5: docs/selection.md quotes this number
    assert model.config.vision_config.image_size == 32 and model.config.scale_factor == 2
    assert processor.image_seq_len == 4 and processor.image_processor.do_image_splitting is False
    assert model.config.image_token_id == processor.image_token_id
    assert model.config.text_config.vocab_size == len(processor.tokenizer)

    tok = processor.tokenizer
    for word in ["red", "green", "blue", "yellow", "circle", "square", "triangle", "yes", "no", "A", "B", "C", "D"]:
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    for text in ["What color is the shape?", "Describe the image.", "0 1 2 3 4 5 6 7 8 9", "Ünïcode ✓ 猫"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: lossless
    for special in ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]:
        assert tok(special, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(special)]


def test_the_build_is_seeded(tiny, tmp_path):
    again = build_tiny_idefics3(tmp_path / "again", seed=0)
    other = build_tiny_idefics3(tmp_path / "other", seed=1)

    def digest(d: Path) -> str:
        return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(tiny) != digest(other)
    assert (again / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()


def _image_features(out: Any) -> torch.Tensor:
    """The projected image features of a forward pass: transformers >= 5.25 keeps them per image in
    ``out.image_outputs.pooler_output`` (``image_hidden_states`` is deprecated there); older releases have
    only ``image_hidden_states``."""
    image_outputs = getattr(out, "image_outputs", None)
    features = image_outputs.pooler_output if image_outputs is not None else out.image_hidden_states
    return torch.cat(list(features)) if isinstance(features, list | tuple) else features


def test_a_forward_pass_with_an_image_and_text(tiny, processor):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(io.BytesIO(_png("red")))
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 1, 3, 32, 32)
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 4  # one tile, 4 image tokens
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(out.loss) and _image_features(out).shape == (4, model.config.text_config.hidden_size)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] <= inputs["input_ids"].shape[1] + 3


# ---- collation -----------------------------------------------------------------------------------
def test_collate_puts_the_loss_on_the_answers_only(processor):
    tok = processor.tokenizer
    records = [
        _record("two-turns", [_png("red")], (QUESTION, "red"), ("Describe the image.", "A red square.")),
        _record("text-only", [], ("Yes or no?", "yes")),
        _record("two-images", [_png("blue"), _png("green", 1)], ("Which colors?", "blue and green")),
    ]
    batch = collate(records, processor, max_length=2048)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values", "pixel_attention_mask"}
    width = batch["input_ids"].shape[1]
    assert batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    assert batch["pixel_values"].shape == (3, 2, 3, 32, 32)  # padded to two images; zero images are padding
    assert batch["pixel_values"][1].abs().sum() == 0 and batch["pixel_values"][0, 1].abs().sum() == 0
    expected = [" red<end_of_utterance> A red square.<end_of_utterance>", " yes<end_of_utterance>"]
    expected.append(" blue and green<end_of_utterance>")
    for row, want in enumerate(expected):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert tok.decode(kept) == want
        # labels are the input ids where kept, and nothing past the padding
        assert torch.equal(kept, batch["input_ids"][row][labels != IGNORE_INDEX])
        assert (batch["attention_mask"][row][labels != IGNORE_INDEX] == 1).all()
    n_image_tokens = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert n_image_tokens == [4, 0, 8]
    text = tok.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
    assert text.startswith("<|begin_of_text|>User:<fake_token_around_image><global-img><image>")


def test_truncation_keeps_the_image_tokens(processor):
    record = _record("long", [_png("red")], (QUESTION, " ".join(["red"] * 50)))
    full = collate([record], processor, max_length=2048)
    prompt = int((full["labels"][0] != IGNORE_INDEX).nonzero()[0])  # tokens before the answer
    short = collate([record], processor, max_length=prompt + 5)
    assert full["input_ids"].shape[1] > prompt + 5 == short["input_ids"].shape[1]
    assert torch.equal(short["input_ids"][0], full["input_ids"][0, : prompt + 5])
    assert (short["labels"] != IGNORE_INDEX).sum() == 5
    image = (full["input_ids"][0] == processor.image_token_id).nonzero().flatten().tolist()
    cut = collate([record], processor, max_length=image[1])  # would cut through the image tokens
    assert cut["input_ids"].shape[1] == image[-1] + 1 and (cut["input_ids"] == processor.image_token_id).sum() == 4


def test_collate_prompts_is_left_padded_and_ends_with_the_generation_prompt(processor):
    records = [_record("a", [_png("red")], (QUESTION, "red")), _record("b", [], ("Say yes.", "yes"), ("x", "y"))]
    batch = collate_prompts(records, processor, max_length=512)
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].tolist() == [1, 1] and batch["attention_mask"][1, 0] == 0
    for row in batch["input_ids"]:
        assert processor.tokenizer.decode(row, skip_special_tokens=False).endswith("<end_of_utterance>\nAssistant:")


# ---- the mixture ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    return color_dataset(tmp_path_factory.mktemp("colors"), "colors", 150, seed=3)


def test_iter_mixture_streams_the_manifest_in_order_with_repeats(colors, tmp_path):
    assert len(read_manifest(colors).shards) == 3
    manifest = write_manifest(colors, tmp_path / "mix.parquet", repeats=2, seed=5)
    rows = pq.read_table(manifest).to_pydict()
    got = list(iter_mixture(manifest))
    assert [r.key for r in got] == rows["key"] and len(got) == 300
    by_key = {r.key: r for r in iter_dataset(colors)}
    for record in got:
        want = by_key[record.key]
        assert record.images == want.images and record.turns == want.turns and record.source == want.source
    assert sorted(r.key for r in got) == sorted(2 * list(by_key))


def test_the_tar_index_points_at_the_member_bytes(colors):
    shard = colors / read_manifest(colors).shards[1].name
    index = index_tar(shard)
    assert len(index.keys) == 64 and index.exts == ("images.mp", "json")
    assert len(index.offsets) == len(index.sizes) == 128
    members = {ext: (offset, size) for ext, offset, size in index.members(10)}
    with open(shard, "rb") as f:
        f.seek(members["json"][0])
        body = json.loads(f.read(members["json"][1]))
    assert body["kind"] == "sft" and body["turns"][0]["user"] == QUESTION and index.keys[10].startswith("colors-")


def test_iter_mixture_refuses_bad_manifests(colors, tmp_path):
    good = pq.read_table(write_manifest(colors, tmp_path / "good.parquet"))
    pq.write_table(good.drop(["repeat"]), tmp_path / "no-repeat.parquet")
    with pytest.raises(CurationError, match="lacks columns"):
        list(iter_mixture(tmp_path / "no-repeat.parquet"))
    keys = good.column("key").to_pylist()
    wrong = good.set_column(good.schema.get_field_index("key"), "key", pa.array(keys[1:] + keys[:1]))
    pq.write_table(wrong, tmp_path / "wrong-key.parquet")
    with pytest.raises(CurationError, match="the mixture expects"):
        list(iter_mixture(tmp_path / "wrong-key.parquet"))
    idx = good.schema.get_field_index("idx")
    pq.write_table(good.set_column(idx, "idx", pa.array([999] * good.num_rows, pa.int32())), tmp_path / "far.parquet")
    with pytest.raises(CurationError, match="asks for sample 999"):
        list(iter_mixture(tmp_path / "far.parquet"))
