"""Tiny random-initialised models of real VLM families, built offline for tests: each family's own config,
model and processor classes, its chat template as the family ships it, a byte-level BPE trained on the spot
(``tiny_vlm.corpus``) with the family's special tokens, 32x32 images, 1-2 layers of width 32-48.

``build_tiny(family, directory, seed)`` writes a directory that ``AutoModelForImageTextToText`` and
``families.load_processor`` load. ``FAMILIES[name].image_tokens`` is how many image tokens a 32x32 image
becomes in ``input_ids`` (derived from the config below: a test checks the processor against it).

Chat templates (verbatim): Idefics3 from ``tiny_vlm``; SmolVLM2's from transformers' ``processing_smolvlm``
(``DEFAULT_CHAT_TEMPLATE`` as of transformers #38105, the template of HuggingFaceTB/SmolVLM2-*); LLaVA-1.5's
from llava-hf/llava-1.5-7b-hf (as transformers' ``tests/models/llava/test_processing_llava.py`` quotes it);
LLaVA-OneVision's from transformers' ``convert_llava_onevision_weights_to_hf.py`` (the llava-hf/llava-onevision-*
conversions); Qwen2-VL's (Qwen/Qwen2-VL-7B-Instruct, as transformers' Qwen2-VL processor tests quote it; Qwen2.5-VL
ships the same); Gemma 3's from google/gemma-3-4b-it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curation.selection import tiny_vlm
from curation.selection.families import no_video_processor

IMAGE_SIZE = 32
# A wider text init (0.2, not 0.02) gives logits a usable range (as in tiny_vlm).
TEXT = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
PATCH = 8  # 32x32 images: 4x4 patches

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _text(tokenizer: Any, model_type: str, **overrides: Any) -> dict[str, Any]:
    heads = TEXT["num_attention_heads"]
    return {
        "model_type": model_type,
        **TEXT,
        "num_key_value_heads": heads,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 512,
        "initializer_range": 0.2,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        **overrides,
    }


def _video(cls_name: str, **kwargs: Any) -> Any:
    """The family's real video processor where torchvision is installed, else the stand-in saving its config."""
    from transformers.utils.import_utils import is_torchvision_available

    if is_torchvision_available():
        import transformers

        return getattr(transformers, cls_name)(**kwargs)
    return no_video_processor({"video_processor_type": cls_name, **kwargs})


def _save(
    directory: Path,
    config: Any,
    model_cls: Any,
    processor: Any,
    seed: int,
    stop: list[int],
    adjust: Callable[[Any], None] | None = None,
) -> Path:
    from transformers import GenerationConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        if adjust is not None:
            adjust(model)
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=stop, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# ---- the families --------------------------------------------------------------------------------
def build_idefics3(directory: Path, seed: int = 0) -> Path:
    return tiny_vlm.build_tiny_idefics3(directory, seed=seed, image_size=IMAGE_SIZE)


def build_smolvlm(directory: Path, seed: int = 0) -> Path:
    """SmolVLM2 (``SmolVLMForConditionalGeneration``): Idefics3's layout, SmolVLM2's tokens and template."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, SmolVLMProcessor

    specials = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<end_of_utterance>", "<fake_token_around_image>"]
    specials += ["<image>", "<global-img>", "<video>"]
    tok = tiny_vlm.train_tokenizer(
        specials,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
            "video_token": "<video>",
        },
    )
    image_processor = SmolVLMImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    video = _video("SmolVLMVideoProcessor", size={"longest_edge": IMAGE_SIZE})
    seq_len = (IMAGE_SIZE // PATCH) ** 2 // 4  # scale_factor 2
    processor = SmolVLMProcessor(image_processor, tok, video, image_seq_len=seq_len, chat_template=SMOLVLM_TEMPLATE)
    config = SmolVLMConfig(
        vision_config={**VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        text_config=_text(tok, "llama", rms_norm_eps=1e-5),
        scale_factor=2,
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
    )
    return _save(directory, config, SmolVLMForConditionalGeneration, processor, seed, _ids(tok, "<end_of_utterance>"))


def build_llava(directory: Path, seed: int = 0) -> Path:
    """LLaVA-1.5: a CLIP vision tower, a Llama (Vicuna) text model, ``CLIPImageProcessor``."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_vlm.train_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["<image>"],
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",  # CLS dropped: num_additional_image_tokens 1 - 1
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        text_config=_text(tok, "llama", rms_norm_eps=1e-5),
        image_token_index=processor.image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return _save(directory, config, LlavaForConditionalGeneration, processor, seed, _ids(tok, "</s>"))


def _qwen_tokenizer(extra: list[str]) -> Any:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra]
    return tiny_vlm.train_tokenizer(
        specials, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=specials[3:]
    )


def build_llava_onevision(directory: Path, seed: int = 0) -> Path:
    """LLaVA-OneVision: a SigLIP vision tower, a Qwen2 text model, anyres with one 32x32 grid point."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    tok = _qwen_tokenizer(["<image>", "<video>"])
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE]]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=pinpoints
    )
    video = _video("LlavaOnevisionVideoProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video,
        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        text_config=_text(tok, "qwen2", rms_norm_eps=1e-6),
        image_token_index=processor.image_token_id,
        video_token_index=processor.video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    stop = _ids(tok, "<|im_end|>", "<|endoftext|>")
    return _save(directory, config, LlavaOnevisionForConditionalGeneration, processor, seed, stop)


QWEN_PATCH, QWEN_MERGE = 4, 2  # 32x32 images: 8x8 patches of 4 px, merged 2x2 into 16 tokens


def _build_qwen(directory: Path, seed: int, version: str) -> Path:
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    tok = _qwen_tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    pixels = {"shortest_edge": (QWEN_PATCH * QWEN_MERGE) ** 2, "longest_edge": IMAGE_SIZE * IMAGE_SIZE}
    image_processor = Qwen2VLImageProcessorPil(
        size=pixels, patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, temporal_patch_size=2
    )
    video = _video("Qwen2VLVideoProcessor", size=pixels, patch_size=QWEN_PATCH, merge_size=QWEN_MERGE)
    processor_cls = getattr(transformers, "Qwen2VLProcessor" if version == "2" else "Qwen2_5_VLProcessor")
    processor = processor_cls(image_processor, tok, video, chat_template=QWEN2_VL_TEMPLATE)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [head_dim // 6] * 3}
    text = _text(tok, "qwen2_vl_text" if version == "2" else "qwen2_5_vl_text", rope_parameters=rope)
    vision: dict[str, Any] = {
        "depth": 1,
        "num_heads": 2,
        "patch_size": QWEN_PATCH,
        "spatial_merge_size": QWEN_MERGE,
        "temporal_patch_size": 2,
    }
    if version == "2":
        vision |= {"embed_dim": 32, "hidden_size": TEXT["hidden_size"], "mlp_ratio": 2}
        config_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        window = QWEN_PATCH * QWEN_MERGE * 2  # windows of 2x2 merged tokens
        vision |= {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": TEXT["hidden_size"]}
        vision |= {"window_size": window, "fullatt_block_indexes": [0]}
        config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    vision_start, vision_end, image_pad, video_pad = _ids(
        tok, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    )
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=image_pad,
        video_token_id=video_pad,
        vision_start_token_id=vision_start,
        vision_end_token_id=vision_end,
        tie_word_embeddings=False,
    )
    return _save(directory, config, model_cls, processor, seed, _ids(tok, "<|im_end|>", "<|endoftext|>"))


def build_qwen2_vl(directory: Path, seed: int = 0) -> Path:
    return _build_qwen(directory, seed, "2")


def build_qwen2_5_vl(directory: Path, seed: int = 0) -> Path:
    return _build_qwen(directory, seed, "2.5")


GEMMA3_MM_TOKENS = 4  # 4x4 patches average-pooled to 2x2 tokens


def build_gemma3(directory: Path, seed: int = 0) -> Path:
    """Gemma 3: a SigLIP vision tower pooled to ``GEMMA3_MM_TOKENS`` tokens, a Gemma 3 text model."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"]
    specials += ["<end_of_image>", "<image_soft_token>"]
    tok = tiny_vlm.train_tokenizer(
        specials,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "start_of_turn_token": "<start_of_turn>",
            "end_of_turn_token": "<end_of_turn>",
        },
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=GEMMA3_MM_TOKENS, chat_template=GEMMA3_TEMPLATE
    )
    boi, eoi, image = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    text = _text(tok, "gemma3_text", head_dim=TEXT["hidden_size"] // TEXT["num_attention_heads"], sliding_window=64)
    text.pop("model_type")
    config = Gemma3Config(
        text_config=text,
        vision_config={"model_type": "siglip_vision_model", **VISION, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        mm_tokens_per_image=GEMMA3_MM_TOKENS,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
        tie_word_embeddings=False,
    )
    stop = _ids(tok, "<eos>", "<end_of_turn>")

    def project_images(model: Any) -> None:
        # Gemma 3 initialises its image projection (a bare Parameter, not adaptable by LoRA) to zeros: images
        # would not reach the text model until trained. A pretrained Gemma 3 has it trained; random here.
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.2)

    return _save(directory, config, Gemma3ForConditionalGeneration, processor, seed, stop, project_images)


@dataclass(frozen=True)
class TinyFamily:
    """A family's tiny build and what a test should see of it."""

    name: str
    model_class: str
    processor_class: str
    build: Callable[[Path, int], Path]
    image_tokens: int  # image tokens in input_ids of a record with one 32x32 image
    multi_image_tokens: int  # ... per image of a record with several
    answer_prefix: str  # what the template puts between the generation prompt and the answer
    end_of_turn: str  # the token closing an answer (the template's, or the eos the collator adds)


_GRID = IMAGE_SIZE // PATCH  # 4x4 patches
_QWEN_TOKENS = (IMAGE_SIZE // QWEN_PATCH) ** 2 // QWEN_MERGE**2
_FAMILIES = [
    TinyFamily(
        "idefics3", "Idefics3ForConditionalGeneration", "Idefics3Processor", build_idefics3,
        _GRID**2 // 4, _GRID**2 // 4, " ", "<end_of_utterance>",
    ),
    TinyFamily(
        "smolvlm", "SmolVLMForConditionalGeneration", "SmolVLMProcessor", build_smolvlm,
        _GRID**2 // 4, _GRID**2 // 4, " ", "<end_of_utterance>",
    ),
    # no end-of-turn token in LLaVA-1.5's template: the collator adds the eos
    TinyFamily(
        "llava", "LlavaForConditionalGeneration", "LlavaProcessor", build_llava, _GRID**2, _GRID**2, " ", "</s>"
    ),
    # anyres: one image = the base view (16) + the 32x32 grid crop (16) + a newline token per crop row (4);
    # several images: the base view + one newline each
    TinyFamily(
        "llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
        build_llava_onevision, 2 * _GRID**2 + _GRID, _GRID**2 + 1, "", "<|im_end|>",
    ),
    TinyFamily(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", build_qwen2_vl,
        _QWEN_TOKENS, _QWEN_TOKENS, "", "<|im_end|>",
    ),
    TinyFamily(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", build_qwen2_5_vl,
        _QWEN_TOKENS, _QWEN_TOKENS, "", "<|im_end|>",
    ),
    TinyFamily(
        "gemma3", "Gemma3ForConditionalGeneration", "Gemma3Processor", build_gemma3,
        GEMMA3_MM_TOKENS, GEMMA3_MM_TOKENS, "", "<end_of_turn>",
    ),
]  # fmt: skip
FAMILIES = {f.name: f for f in _FAMILIES}


def build_tiny(family: str, directory: Path, seed: int = 0) -> Path:
    """Write the tiny model + processor of ``family`` (a key of ``FAMILIES``) into ``directory``."""
    return FAMILIES[family].build(Path(directory), seed)
