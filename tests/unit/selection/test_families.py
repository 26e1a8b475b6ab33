"""The reference trainer on real VLM families: tiny random models built offline from each family's config,
model and processor classes with its real chat template (``curation.selection.tiny_models``).

For each family (Idefics3, SmolVLM, LLaVA-1.5, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Gemma 3), tests named
``test_<family>_...``:
  - ``loss_mask_covers_exactly_the_answers``: multi-turn and multi-image records; an answer ends with the
    family's end-of-turn token (LLaVA-1.5's template has none: the eos is added);
  - ``images_reach_the_model``: pixel values, the image tokens per image, and the logits depend on them;
  - ``lora_targets_resolve``: "all-linear" and a named list, LoRA and DoRA, only adapters train;
  - ``trains_saves_and_reloads``: trainer.train steps, and a trained adapter reloads with identical logits;
  - ``answers_for_the_builtin_evaluator``: one string per record.
Then the pre-flight errors.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from curation.errors import CurationError
from curation.recipe.selection import PeftConfig, ReferenceTrainerConfig
from curation.selection import predict, trainer
from curation.selection.data import IGNORE_INDEX, collate, image_token_ids
from curation.selection.families import load_model, load_processor, preflight
from curation.selection.tiny_models import FAMILIES, TinyFamily, build_tiny
from schemas import SftRecord, Turn
from tests.unit.selection.test_tiny_vlm import COLORS, color_dataset, color_png, write_manifest

QUESTION = "What color is the image?"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def models(root) -> Callable[[str], Path]:
    """family -> its tiny model directory, built once."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family == "smolvlm":  # SmolVLMProcessor refuses to start without it
            pytest.importorskip("num2words", reason="SmolVLMProcessor needs the num2words package")
        if family not in built:
            built[family] = build_tiny(family, root / "models" / family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def mixture(root) -> Path:
    dataset = color_dataset(root / "data", "colors", 6, seed=4)
    return write_manifest(dataset, root / "mixture.parquet", seed=1)


@pytest.fixture(scope="module")
def trained(models, mixture, root) -> Callable[[str], tuple[Path, dict]]:
    """family -> (output, metrics) of a 3-step trainer.train run (LoRA on all-linear), run once."""
    runs: dict[str, tuple[Path, dict]] = {}

    def get(family: str) -> tuple[Path, dict]:
        if family not in runs:
            output = root / "runs" / family
            runs[family] = output, trainer.train(_cfg(models(family)), mixture, output, seed=0)
        return runs[family]

    return get


def _cfg(model: Path, **overrides: Any) -> ReferenceTrainerConfig:
    base = {"type": "reference", "model": str(model), "max_steps": 3, "batch_size": 2, "learning_rate": 5e-3}
    return ReferenceTrainerConfig.model_validate({**base, "device": "cpu", "max_length": 512, **overrides})


def _png(color: str, seed: int = 0) -> bytes:
    return color_png(COLORS[color], random.Random(seed))


def _record(key: str, images: list[bytes], *turns: tuple[str, str]) -> SftRecord:
    return SftRecord(key=key, source="t", images=images, turns=[Turn(user=u, assistant=a) for u, a in turns])


RECORDS = [
    _record("two-turns", [_png("red")], (QUESTION, "red"), ("Describe the image.", "A red square.")),
    _record("text-only", [], ("Yes or no?", "yes")),
    _record("two-images", [_png("blue"), _png("green", 1)], ("Which colors?", "blue and green")),
]


def _answers(record: SftRecord, family: TinyFamily) -> str:
    return "".join(family.answer_prefix + turn.assistant + family.end_of_turn for turn in record.turns)


def _runs(labels: torch.Tensor) -> int:
    """Contiguous runs of kept labels (one per answer)."""
    kept = (labels != IGNORE_INDEX).int().tolist()
    return sum(1 for i, k in enumerate(kept) if k and (i == 0 or not kept[i - 1]))


# ---- the checks, run for each family -------------------------------------------------------------
def _loss_mask_covers_exactly_the_answers(family: TinyFamily, models, **_: Any) -> None:
    processor = load_processor(models(family.name))
    assert type(processor).__name__ == family.processor_class
    batch = collate(RECORDS, processor, max_length=2048)
    for row, record in enumerate(RECORDS):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert processor.tokenizer.decode(kept) == _answers(record, family), record.key
        assert _runs(labels) == len(record.turns)
        assert torch.equal(kept, batch["input_ids"][row][labels != IGNORE_INDEX])
        assert (batch["attention_mask"][row][labels != IGNORE_INDEX] == 1).all()


def _images_reach_the_model(family: TinyFamily, models, **_: Any) -> None:
    directory = models(family.name)
    processor, model = load_processor(directory), load_model(directory)
    assert type(model).__name__ == family.model_class
    batch = collate(RECORDS, processor, max_length=2048)
    assert batch["pixel_values"].abs().sum() > 0
    ids = torch.tensor(image_token_ids(processor))
    per_row = torch.isin(batch["input_ids"], ids).sum(dim=1).tolist()
    assert per_row == [family.image_tokens, 0, 2 * family.multi_image_tokens]
    with torch.no_grad():
        out = model(**batch)  # transformers checks the image features against the image tokens
        other = model(**{**batch, "pixel_values": -batch["pixel_values"]})  # padding images stay zero
    assert torch.isfinite(out.loss)
    answers = batch["labels"] != IGNORE_INDEX
    assert not torch.allclose(out.logits[answers][:2], other.logits[answers][:2])  # row 0's answer sees its image


def _lora_targets_resolve(family: TinyFamily, models, **_: Any) -> None:
    for peft in [
        PeftConfig(method="lora", target_modules="all-linear"),
        PeftConfig(method="dora", target_modules=["q_proj", "v_proj"]),
    ]:
        model = trainer.apply_peft(load_model(models(family.name)), peft)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in name for name in trainable), family.name
        adapted = {name.split(".lora_")[0] for name in trainable}
        if isinstance(peft.target_modules, list):
            assert {name.rsplit(".", 1)[-1] for name in adapted} == {"q_proj", "v_proj"}
            assert any("lora_magnitude_vector" in name for name in trainable)  # DoRA
        else:
            assert len(adapted) > 2 * model.config.get_text_config().num_hidden_layers
            assert not any(name.endswith("lm_head") for name in adapted)


def _trains_saves_and_reloads(family: TinyFamily, models, trained, root: Path, **_: Any) -> None:
    directory = models(family.name)
    output, metrics = trained(family.name)
    assert metrics["steps"] == 3 and metrics["train_loss_first"] is not None
    assert (output / "adapter" / "adapter_config.json").is_file()

    # one step in memory, saved as the trainer saves it, reloaded as the evaluator loads it: the same logits
    torch.manual_seed(0)
    model, processor = trainer.load_base(str(directory), torch.float32)
    model = trainer.apply_peft(model, PeftConfig(method="lora", target_modules="all-linear"))
    batch = collate(RECORDS, processor, max_length=2048)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    model.eval()
    saved = root / "saved" / family.name
    trainer._save(model, processor, saved / trainer.ADAPTER_DIR)
    reloaded, reprocessor = predict.load_trained(saved, str(directory))
    assert type(reprocessor).__name__ == family.processor_class
    with torch.no_grad():
        want, got = model(**batch).logits, reloaded(**batch).logits
        base = load_model(directory)(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # the merge rounds (float32)
    assert (got - base).abs().max() > 1e-3  # the adapter changed something


def _answers_for_the_builtin_evaluator(family: TinyFamily, models, trained, **_: Any) -> None:
    output, _metrics = trained(family.name)
    answer = predict.make_predict_fn(output, str(models(family.name)), max_new_tokens=3, batch_size=2, device="cpu")
    answers = answer([*RECORDS, _record("one-more", [_png("red", 2)], (QUESTION, "red"))])
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    assert answer([]) == []


CHECKS = [
    _loss_mask_covers_exactly_the_answers,
    _images_reach_the_model,
    _lora_targets_resolve,
    _trains_saves_and_reloads,
    _answers_for_the_builtin_evaluator,
]


def _named(family: TinyFamily, check: Callable[..., None]) -> Callable[..., None]:
    def test(models, trained, root, family: TinyFamily = family) -> None:
        check(family, models=models, trained=trained, root=root)

    test.__name__ = f"test_{family.name}{check.__name__}"
    test.__doc__ = f"{family.model_class}: {check.__name__.strip('_').replace('_', ' ')}."
    return test


# test_idefics3_loss_mask_covers_exactly_the_answers, ..., test_gemma3_answers_for_the_builtin_evaluator
for _family in FAMILIES.values():
    for _check in CHECKS:
        _test = _named(_family, _check)
        globals()[_test.__name__] = _test


# ---- pre-flight ----------------------------------------------------------------------------------
def _png_of(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_preflight_passes_every_family_on_good_records(models, family):
    preflight(models(family), RECORDS)


def test_preflight_refuses_a_model_directory_without_a_chat_template(models, mixture, root):
    bare = root / "no-template"
    shutil.copytree(models("llava"), bare)
    for name in ("chat_template.jinja", "chat_template.json"):
        (bare / name).unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CurationError, match="no chat template"):
        preflight(bare, RECORDS)
    with pytest.raises(CurationError, match="no chat template"):  # before any training step
        trainer.train(_cfg(bare), mixture, root / "no-template-run", seed=0)
    assert not (root / "no-template-run" / "adapter").exists()


def test_preflight_refuses_model_types_the_trainer_cannot_train(root):
    from transformers import LlamaConfig, Pix2StructConfig

    text_only = root / "text-only"
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        text_only
    )
    with pytest.raises(CurationError, match="'llama' is not a vision-language model"):
        preflight(text_only, RECORDS)
    encoder_decoder = root / "encoder-decoder"
    Pix2StructConfig().save_pretrained(encoder_decoder)
    with pytest.raises(CurationError, match="'pix2struct' is an encoder-decoder"):
        preflight(encoder_decoder, RECORDS)
    with pytest.raises(CurationError, match="no model directory"):
        preflight(root / "nowhere", RECORDS)


def test_preflight_refuses_records_the_processor_cannot_take(models):
    qwen = models("qwen2_vl")
    thin = _record("thin", [_png_of(2, 600)], (QUESTION, "red"))  # Qwen2-VL's resize refuses ratios over 200
    with pytest.raises(CurationError, match=r"record 'thin'.*Qwen2VLProcessor cannot encode it.*aspect ratio"):
        preflight(qwen, [RECORDS[0], thin])
    broken = _record("broken", [b"not an image"], (QUESTION, "red"))
    with pytest.raises(CurationError, match="record 'broken': image 0 does not decode"):
        preflight(qwen, [broken])
    many = _record("many", [_png("red")] * 4, (QUESTION, "red"))  # 4 x 16 image tokens
    with pytest.raises(CurationError, match=r"record 'many': its 4 images take 64 tokens.*max_length 60"):
        preflight(qwen, [many], max_length=60)
    preflight(qwen, [many], max_length=200)


def test_video_sub_processors_load_without_torchvision_and_save_their_config(models, tmp_path):
    """Qwen2-VL's processor requires a video sub-processor; without torchvision a stand-in refusing videos takes
    its place and saves the family's video-processor config, so the directory stays loadable elsewhere."""
    from transformers.utils.import_utils import is_torchvision_available

    processor = load_processor(models("qwen2_vl"))
    saved = processor.video_processor.to_dict()
    assert saved["video_processor_type"] == "Qwen2VLVideoProcessor" and saved["patch_size"] == 4
    processor.save_pretrained(tmp_path)
    again = load_processor(tmp_path)
    assert again.video_processor.to_dict() == saved
    assert "video_processor" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    if not is_torchvision_available():
        with pytest.raises(CurationError, match="videos are not supported"):
            processor.video_processor.preprocess([])


def test_llava_eos_follows_every_answer_even_one_that_ends_in_eos_text(models):
    """LLaVA-1.5's template closes answers with nothing: the eos is added after each, decided once per processor,
    not from the record's own first answer (which here ends in the eos text itself)."""
    processor = load_processor(models("llava"))
    eos = processor.tokenizer.eos_token
    record = _record("eos-text", [_png("red")], (QUESTION, f"red {eos}"), ("And?", "nothing else"))
    batch = collate([record], processor, max_length=2048)
    labels = batch["labels"][0]
    assert _runs(labels) == 2
    kept = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert kept.count(eos) == 3  # the one in the text, and one closing each answer
