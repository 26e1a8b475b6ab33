"""Tiny random causal language models built offline, for the generation engines' tests.

``make_tiny_causal_lm`` trains a real byte-level BPE tokenizer (``tokenizers``) on a small built-in corpus,
wraps it as a ``transformers`` fast tokenizer with special tokens and a Jinja chat template, and saves a random
``LlamaForCausalLM`` beside it: a directory ``AutoTokenizer`` / ``AutoModelForCausalLM`` (and vLLM) load like a
hub checkpoint. Nothing is downloaded. A build takes well under a second and is reused by later calls in the
same process (and by later runs pointing at the same directory).
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS, PAD = "<s>", "<|end|>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)
VOCAB_SIZE = 512
MAX_POSITIONS = 2048

# Phi-3 style: <s><|system|>\n...<|end|>\n<|user|>\n...<|end|>\n<|assistant|>\n
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = (
    "You are reading text extracted from a multi-page PDF document. Pages are separated by a NEW PAGE line.",
    "Write question and answer pairs about the text, in the form Q1: ... A1: ... Q2: ... A2: ...",
    "If the text holds nothing interesting, answer unanswerable.",
    "Q1: What is the total amount due? A1: The total amount due is $1,234.56 (USD).",
    "Q2: Who signed the letter? A2: It was signed by Dr. Jane Smith, Ph.D., on 12/03/2021.",
    "Q3: Which page lists the results? A3: Page 2; see Table 1 [results] and Figure 3 {chart}.",
    "NEW PAGE\nInvoice #4471 - Acme Corp. 42 Main Street, Springfield; tel: +1 (555) 010-9999.",
    "NEW PAGE\nThe quick brown fox jumps over the lazy dog! Is it 3.5% or 7%? Yes: 100% <sure>.",
    'JSON: {"qa": [{"question": "What?", "answer": "That."}]} key=value & a|b ~ c ^ d * e / f \\ g `h` @i',
    "System: you are a helpful assistant. User: summarize the report. Assistant: The report says...",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 2020 2021 2022 2023 2024 January February March April May June",
)


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return tokenizer


def make_tiny_causal_lm(directory: Path, seed: int = 0) -> Path:
    """Build (once) a tokenizer + random ``LlamaForCausalLM`` into ``directory``; return it.

    An existing complete build with the same seed is reused (the ``.tiny-lm.json`` marker is written last).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    marker = directory / ".tiny-lm.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed}:
        return directory
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    marker.write_text(json.dumps({"seed": seed}))
    return directory


def shared_tiny_causal_lm(tmp_path_factory, seed: int = 0) -> Path:
    """The session's tiny model: built on first use under pytest's base temp dir, reused afterwards."""
    return make_tiny_causal_lm(tmp_path_factory.getbasetemp() / f"tiny-causal-lm-{seed}", seed=seed)
