"""A tiny, real Idefics3 model directory built offline (tokenizer trained on the spot, random seeded weights):
loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``, ~1e5 parameters, for tests and demos."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
IMAGE, FAKE, GLOBAL, EOU = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
SPECIAL_TOKENS = [PAD, BOS, EOS, FAKE, IMAGE, GLOBAL, EOU]

# Idefics3's own chat template (HuggingFaceM4/Idefics3-8B-Llama3).
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
SHAPES = ["circle", "square", "triangle"]
VOCAB_SIZE = 384
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
# A wider text init (0.2, not 0.02) gives logits a usable range, so frozen-head LoRA can drive the loss down.
TEXT = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "initializer_range": 0.2,
}
PATCH_SIZE, SCALE_FACTOR = 8, 2


def corpus() -> list[str]:
    """Short questions and answers about colored shapes, options, yes/no and digits."""
    lines = ["What color is the shape?", "What color is the image?", "Describe the image.", "Which shape is it?"]
    lines += ["Answer with the option's letter from the given choices directly.", "Yes", "No", "yes", "no"]
    lines += [f"Options: A. {a} B. {b} C. {c} D. {d}" for a, b, c, d in itertools.permutations(COLORS[:4])]
    for color, shape in itertools.product(COLORS, SHAPES):
        lines += [
            f"A {color} {shape} on a white background.",
            f"Is there a {color} {shape} in the image? Answer yes or no.",
            f"The {shape} is {color}.",
            f"{color} {color.capitalize()} {shape} {shape.capitalize()}",
        ]
    lines += [f"How many shapes are there? {d}" for d in range(10)]
    lines += [" ".join(str(d) for d in range(10)), "A B C D", "The answer is A. The answer is B. C. D."]
    return lines * 4


def train_tokenizer(
    special_tokens: list[str], vocab_size: int = VOCAB_SIZE, **tokens: str | list[str] | dict[str, str] | None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes) trained on ``corpus()`` with ``special_tokens`` first (ids 0, 1, ...);
    ``tokens`` name them for the tokenizer (``bos_token=...``, ``extra_special_tokens=...``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048, padding_side="right", **tokens)


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The BPE of ``train_tokenizer`` with Idefics3's special tokens."""
    return train_tokenizer(
        SPECIAL_TOKENS,
        vocab_size,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[FAKE, IMAGE, GLOBAL, EOU],
    )


def build_config(tokenizer: PreTrainedTokenizerFast, image_size: int) -> Idefics3Config:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))}
    text = {
        "model_type": "llama",
        **TEXT,
        "num_key_value_heads": TEXT["num_attention_heads"],
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "tie_word_embeddings": False,
    }
    vision = {**VISION, "image_size": image_size, "patch_size": PATCH_SIZE}
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        pad_token_id=ids["pad"],  # pyright: ignore[reportCallIssue]  # transformers configs accept **kwargs
        tie_word_embeddings=False,
    )


def image_seq_len(image_size: int) -> int:
    return (image_size // PATCH_SIZE) ** 2 // SCALE_FACTOR**2


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int) -> Idefics3Processor:
    """One ``image_size`` square tile per image (no splitting): ``image_seq_len(image_size)`` image tokens."""
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len(image_size),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_idefics3(directory: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny Idefics3 model + processor into ``directory`` (created) and return it."""
    if image_size % (PATCH_SIZE * SCALE_FACTOR):
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE * SCALE_FACTOR}, got {image_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config)
    eou = tokenizer.convert_tokens_to_ids(EOU)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[eou, tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    build_processor(tokenizer, image_size).save_pretrained(directory)
    return directory
