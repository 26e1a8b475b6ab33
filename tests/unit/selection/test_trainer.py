"""The reference trainer and predictions: a tiny Idefics3 learns the toy colour task (held-out accuracy >= 90%,
untrained near chance) with LoRA, DoRA, full fine-tuning and NEFTune; metrics, epochs, errors and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.recipe.selection import ReferenceTrainerConfig
from curation.selection.predict import load_trained, make_predict_fn
from curation.selection.tiny_vlm import build_tiny_idefics3
from curation.selection.trainer import plan_steps, train
from schemas import SftRecord, Turn
from shards.reader import iter_dataset
from tests.unit.selection.test_tiny_vlm import color_dataset, write_manifest

METRIC_KEYS = {
    "steps",
    "samples_seen",
    "train_loss_first",
    "train_loss_last",
    "train_loss_mean_last_10pct",
    "seconds",
    "samples_per_second",
    "parameters_trainable",
    "device",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trainer")
    train_set = color_dataset(root / "data", "train", 300, seed=1)
    return {
        "model": build_tiny_idefics3(root / "model"),
        "heldout": color_dataset(root / "data", "heldout", 60, seed=2),
        "mixture": write_manifest(train_set, root / "mixture.parquet", seed=7),
        "root": root,
    }


def _cfg(task: dict[str, Path], **overrides) -> ReferenceTrainerConfig:
    base = {
        "type": "reference",
        "model": str(task["model"]),
        "epochs": 10,
        "max_steps": 200,
        "batch_size": 8,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.05,
        "device": "cpu",
    }
    return ReferenceTrainerConfig.model_validate({**base, **overrides})


def _accuracy(task: dict[str, Path], output: Path) -> float:
    records = list(iter_dataset(task["heldout"]))
    answers = make_predict_fn(output, str(task["model"]), max_new_tokens=4, batch_size=32)(records)
    return sum(a == r.turns[0].assistant for a, r in zip(answers, records, strict=True)) / len(records)


@pytest.fixture(scope="module")
def lora_run(task) -> tuple[Path, dict]:
    output = task["root"] / "lora"
    return output, train(_cfg(task), task["mixture"], output, seed=0)


def test_the_untrained_model_is_near_chance(task):
    assert _accuracy(task, task["model"]) <= 0.5  # three colours: chance is 1/3


def test_lora_learns_the_colours(task, lora_run):
    output, metrics = lora_run
    assert set(metrics) >= METRIC_KEYS and json.loads((output / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == 200 and metrics["samples_seen"] == 1600 and metrics["device"] == "cpu"
    assert metrics["train_loss_first"] > 4 and metrics["train_loss_mean_last_10pct"] < 0.5
    assert 10_000 < metrics["parameters_trainable"] < 25_000  # adapters only
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert not (output / "adapter" / "model.safetensors").exists()
    assert _accuracy(task, output) >= 0.9


def test_predict_batches_mix_text_only_and_image_records(task, lora_run):
    records = list(iter_dataset(task["heldout"]))[:3]
    text_only = SftRecord(key="t", source="t", turns=[Turn(user="Say yes.", assistant="yes")])
    predict = make_predict_fn(lora_run[0], str(task["model"]), max_new_tokens=4, batch_size=4)
    answers = predict([records[0], text_only, records[1], records[2]])
    assert len(answers) == 4 and isinstance(answers[1], str)
    assert [answers[0], answers[2], answers[3]] == [r.turns[0].assistant for r in records]
    assert predict([]) == []


def test_neftune_changes_the_loss_but_still_learns(task, lora_run):
    output = task["root"] / "neftune"
    metrics = train(_cfg(task, neftune_alpha=5.0), task["mixture"], output, seed=0)
    assert metrics["train_loss_first"] != lora_run[1]["train_loss_first"]  # same seed, same data: the noise
    assert metrics["train_loss_mean_last_10pct"] < 0.5
    assert _accuracy(task, output) >= 0.9
    model, _ = load_trained(output, str(task["model"]))
    assert not hasattr(model.get_input_embeddings(), "neftune_noise_alpha")  # the hook is not saved


@pytest.mark.parametrize("method", ["dora", "none"])
def test_dora_and_full_fine_tuning_run(task, lora_run, method):
    output = task["root"] / method
    metrics = train(_cfg(task, peft={"method": method}, max_steps=30), task["mixture"], output, seed=0)
    assert metrics["steps"] == 30 and metrics["train_loss_last"] < metrics["train_loss_first"]
    if method == "dora":  # LoRA's matrices plus one magnitude vector per adapted layer
        assert metrics["parameters_trainable"] > lora_run[1]["parameters_trainable"]
        assert json.loads((output / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    else:
        assert metrics["parameters_trainable"] == 104_624  # every parameter
        assert (output / "adapter" / "model.safetensors").is_file()
    answers = make_predict_fn(output, str(task["model"]), 4, 8)(list(iter_dataset(task["heldout"]))[:5])
    assert len(answers) == 5 and all(isinstance(a, str) for a in answers)


def test_training_is_seeded(task, tmp_path):
    cfg = _cfg(task, max_steps=8, peft={"method": "lora", "dropout": 0.1})
    first = train(cfg, task["mixture"], tmp_path / "a", seed=3)
    again = train(cfg, task["mixture"], tmp_path / "b", seed=3)
    other = train(cfg, task["mixture"], tmp_path / "c", seed=4)
    assert first["train_loss_last"] == again["train_loss_last"] != other["train_loss_last"]


def test_fractional_epochs_and_gradient_accumulation(task, tmp_path):
    cfg = _cfg(task, epochs=0.5, max_steps=None, scheduler="linear")
    assert plan_steps(cfg, 300) == 19  # ceil(0.5 * 300 / 8)
    metrics = train(cfg, task["mixture"], tmp_path / "half", seed=0)
    assert metrics["steps"] == 19 and metrics["samples_seen"] == 152
    accumulated = _cfg(task, epochs=0.5, max_steps=None, gradient_accumulation=2, batch_size=4, scheduler="constant")
    metrics = train(accumulated, task["mixture"], tmp_path / "accumulated", seed=0)
    assert metrics["steps"] == 19 and metrics["samples_seen"] == 152
    assert plan_steps(_cfg(task, epochs=3, max_steps=50), 300) == 50  # max_steps caps


def test_clear_errors(task, tmp_path):
    with pytest.raises(CurationError, match="no model directory"):
        train(_cfg(task, model=str(tmp_path / "nowhere")), task["mixture"], tmp_path / "out", seed=0)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(task["mixture"]).slice(0, 0), empty)
    with pytest.raises(CurationError, match="is empty"):
        train(_cfg(task), empty, tmp_path / "out", seed=0)
    with pytest.raises(CurationError, match="no mixture manifest"):
        train(_cfg(task), tmp_path / "missing.parquet", tmp_path / "out", seed=0)
    with pytest.raises(CurationError, match="no trained model"):
        load_trained(tmp_path / "out", str(task["model"]))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_text_only_records_train_beside_images(task, tmp_path):
    """Batches mixing text-only and image records (zero images stand in for the missing ones)."""
    rows = [{"id": f"t{i}", "turns": [{"user": "Say yes.", "assistant": "yes"}]} for i in range(8)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {
        "name": "t",
        "reader": "jsonl",
        "record": "sft",
        "path": str(tmp_path / "t.jsonl"),
        "fields": {"key": "id"},
    }
    recipe = validate_recipe({"name": "t", "sources": [source], "output": {"kind": "sft"}})
    text = write_manifest(build(recipe, tmp_path / "t", progress=False).out, tmp_path / "t.parquet", component="t")
    both = pa.concat_tables([pq.read_table(task["mixture"]).slice(0, 16), pq.read_table(text)])
    pq.write_table(both.take([0, 16, 1, 17, 2, 18, 3, 19, *range(4, 16), *range(20, 24)]), tmp_path / "mixed.parquet")
    metrics = train(_cfg(task, max_steps=3), tmp_path / "mixed.parquet", tmp_path / "out", seed=0)
    assert metrics["steps"] == 3 and metrics["samples_seen"] == 24 and metrics["train_loss_last"] > 0


def test_the_cli(task, tmp_path):
    config = tmp_path / "trainer.json"
    config.write_text(json.dumps(_cfg(task, max_steps=5, batch_size=4).model_dump()))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "curation.selection.trainer", "--mixture", str(task["mixture"])]
    run = subprocess.run(
        [*command, "--config", str(config), "--output", str(output), "--seed", "1"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["steps"] == 5 and json.loads(run.stdout.strip().splitlines()[-1]) == metrics
    config.write_text(json.dumps({"model": str(tmp_path / "nowhere"), "batch_size": 0}))
    bad = subprocess.run([*command, "--config", str(config), "--output", str(output)], capture_output=True, text=True)
    assert bad.returncode == 2 and "error: trainer config" in bad.stderr and "batch_size" in bad.stderr
