"""The reference trainer data parallel under torchrun, on CPU (gloo, 2 ranks): the ranks' share of the mixture,
a run of the CLI (rank 0 writes a loadable adapter, the loss falls) and a trial asking for 2 processes (one rank
on text-only records, the other on image records whose answers are truncated away)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.recipe.selection import ReferenceTrainerConfig
from curation.selection import run_trial
from curation.selection.predict import load_trained
from curation.selection.tiny_vlm import build_tiny_idefics3
from curation.selection.trainer import Ranks, rank_manifest
from curation.selection.trials import MIXTURE_NAME
from tests.unit.selection.test_tiny_vlm import color_dataset, write_manifest

SAMPLES = 45  # odd: the second rank's share is padded with the first row


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return {
        "model": build_tiny_idefics3(root / "model"),
        "mixture": write_manifest(color_dataset(root / "data", "train", SAMPLES, seed=1), root / "mix.parquet", seed=7),
        "root": root,
    }


@pytest.fixture
def one_thread(monkeypatch) -> dict[str, str]:
    """The children's environment: one intra-op thread each (two ranks share two cores)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CURATION_PARENT_PID", raising=False)
    return dict(os.environ)


def _cfg(task: dict[str, Path], **overrides) -> ReferenceTrainerConfig:
    base = {
        "type": "reference",
        "model": str(task["model"]),
        "epochs": 10,
        "max_steps": 20,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.05,
        "device": "cpu",
    }
    return ReferenceTrainerConfig.model_validate({**base, **overrides})


def test_each_rank_takes_every_world_th_row_padded(task, tmp_path):
    keys = pq.read_table(task["mixture"], columns=["key"])["key"].to_pylist()
    shares = [rank_manifest(task["mixture"], Ranks(rank, 2), tmp_path) for rank in (0, 1)]
    assert [rows for _, rows in shares] == [23, 23]
    first, second = (pq.read_table(path, columns=["key"])["key"].to_pylist() for path, _ in shares)
    assert first == keys[0::2] and second == [*keys[1::2], keys[0]]  # 45 rows: one repeated to make 46
    interleaved = [key for pair in zip(first, second, strict=True) for key in pair]
    assert interleaved[:SAMPLES] == keys  # micro-batch k of the ranks together: the next rows in training order
    assert pq.read_table(shares[0][0]).schema == pq.read_table(task["mixture"]).schema


def test_torchrun_two_ranks_on_cpu(task, tmp_path, one_thread):
    config = tmp_path / "trainer.json"
    config.write_text(json.dumps(_cfg(task).model_dump()))
    output = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["--mixture", str(task["mixture"]), "--config", str(config), "--output", str(output), "--seed", "0"]
    run = subprocess.run(
        [*torchrun, "-m", "curation.selection.trainer", *args], env=one_thread, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert json.loads(run.stdout.strip().splitlines()[-1]) == metrics  # printed once, by rank 0
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    assert metrics["steps"] == 20 and metrics["samples_seen"] == 20 * 4 * 2
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert "find_unused_parameters=True" in run.stdout  # text-only batches would leave the vision adapters idle
    model, _ = load_trained(output, str(task["model"]))
    assert not any(name.startswith("module.") for name, _ in model.named_parameters())  # saved unwrapped


def _text_manifest(root: Path, n: int) -> Path:
    """A mixture of ``n`` text-only records ("Say yes." -> "yes": 25 tokens)."""
    rows = [{"id": f"t{i}", "turns": [{"user": "Say yes.", "assistant": "yes"}]} for i in range(n)]
    (root / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "t", "reader": "jsonl", "record": "sft", "path": str(root / "t.jsonl"), "fields": {"key": "id"}}
    recipe = validate_recipe({"name": "t", "sources": [source], "output": {"kind": "sft"}})
    return write_manifest(build(recipe, root / "t", progress=False).out, root / "t.parquet", component="t")


def test_a_trial_with_two_processes_goes_through_torchrun(task, tmp_path, one_thread):
    """Rank 0 gets image rows only, cut before their answers by max_length 30 (38 tokens; the image's are kept):
    it sends zero gradients; rank 1 gets text-only rows, which leave the vision adapters unused."""
    directory = tmp_path / "trial"
    directory.mkdir()
    both = pa.concat_tables([pq.read_table(task["mixture"]).slice(0, 24), pq.read_table(_text_manifest(tmp_path, 24))])
    pq.write_table(both.take([row for i in range(24) for row in (i, 24 + i)]), directory / MIXTURE_NAME)
    trainer = _cfg(task, epochs=1, max_steps=None, max_length=30, processes=2).model_dump()
    metrics = run_trial.train({"trainer": trainer, "seed": 3}, directory)
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 6 and metrics["samples_seen"] == 48  # ceil(24 rows a rank / 4) steps, 2 ranks
    assert metrics["train_loss_first"] > metrics["train_loss_last"] > 0  # rank 1's losses, gathered by rank 0
    assert json.loads((directory / "train" / "trainer.json").read_text())["processes"] == 2
    assert (directory / "train" / "adapter" / "adapter_config.json").is_file()
