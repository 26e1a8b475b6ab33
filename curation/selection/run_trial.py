"""Run one trial in its own process: ``python -m curation.selection.run_trial TRIAL_DIR``.

Train (the reference trainer, or any command: {mixture} {output} {seed} {trial_dir} filled in; it must write
``{output}/metrics.json``), then evaluate (built-in benchmarks with the trained model, lmms-eval, VLMEvalKit or
a command), then score; ``result.json`` is written last. Exit 0 on success; any failure exits nonzero with
the reason in the log (the launcher keeps the log and the engine retries).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe.selection import ScoreConfig
from curation.selection.items import ITEMS_NAME, write_items
from curation.selection.trials import MIXTURE_NAME, RESULT_NAME, TRIAL_NAME
from shards.atomic import atomic_write_json


def _fill(command: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for part in command:
        for name, value in values.items():
            part = part.replace("{" + name + "}", value)
        out.append(part)
    return out


def train(trial: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Train the trial's model into ``<trial_dir>/train``; its metrics. The reference trainer runs in this
    process, or under torchrun when it asks for several processes (``<trial_dir>/train/trainer.json``)."""
    cfg = trial["trainer"]
    output = directory / "train"
    output.mkdir(exist_ok=True)
    if cfg["type"] == "reference":
        import torch

        from curation.recipe.selection import ReferenceTrainerConfig
        from curation.selection.trainer import train as reference_train

        reference = ReferenceTrainerConfig.model_validate(cfg)
        processes = reference.processes
        if processes == "auto":  # one per GPU in CUDA_VISIBLE_DEVICES, 1 on CPU
            gpus = torch.cuda.device_count() if reference.device != "cpu" and torch.cuda.is_available() else 0
            processes = max(1, gpus)
        if processes == 1:
            return reference_train(reference, directory / MIXTURE_NAME, output, trial["seed"])
        config = output / "trainer.json"
        atomic_write_json(config, reference.model_dump(mode="json"))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        args = ["--mixture", str(directory / MIXTURE_NAME), "--config", str(config), "--output", str(output)]
        command = [*torchrun, "-m", "curation.selection.trainer", *args, "--seed", str(trial["seed"])]
        sys.stdout.flush()
        sys.stderr.flush()
        run = subprocess.run(command)  # its output: this process's stdout/stderr (the trial log)
        if run.returncode != 0:
            raise CurationError(f"torchrun of the reference trainer ({processes} ranks) exited with {run.returncode}")
    else:
        values = {"mixture": str(directory / MIXTURE_NAME), "output": str(output), "seed": str(trial["seed"]),
                  "trial_dir": str(directory)}  # fmt: skip
        run = subprocess.run(_fill(cfg["command"], values), env={**os.environ, **cfg.get("env", {})})
        if run.returncode != 0:
            raise CurationError(f"training command exited with {run.returncode}")
    metrics = output / "metrics.json"
    if not metrics.is_file():
        raise CurationError(f"training command wrote no {metrics}")
    return json.loads(metrics.read_text())


def evaluate(trial: dict[str, Any], directory: Path) -> dict[str, float]:
    """The trained model's metrics; their per-item values go to ``<trial_dir>/items.parquet``. Nothing an
    earlier attempt evaluated is read: its ``eval/`` and items are removed first."""
    cfg = trial["evaluator"]
    output = directory / "train"
    (directory / ITEMS_NAME).unlink(missing_ok=True)
    if (directory / "eval").is_symlink():  # never follow a link out of the trial directory
        (directory / "eval").unlink()
    shutil.rmtree(directory / "eval", ignore_errors=True)
    if cfg["type"] == "builtin":
        from curation.recipe.selection import BuiltinEvaluatorConfig
        from curation.selection.evaluate import evaluate_builtin
        from curation.selection.predict import make_predict_fn

        ev = BuiltinEvaluatorConfig.model_validate(cfg)
        base = trial["trainer"].get("model", str(output))
        predict = make_predict_fn(output, base, ev.max_new_tokens, ev.batch_size)
        evaluated = evaluate_builtin(ev, predict)
        write_items(directory / ITEMS_NAME, evaluated.items)
        return evaluated.metrics
    from curation.recipe.selection import CommandEvaluatorConfig, HarnessEvaluatorConfig
    from curation.selection.harnesses import harness_items, run_harness

    model = CommandEvaluatorConfig if cfg["type"] == "command" else HarnessEvaluatorConfig
    eval_dir = directory / "eval"
    eval_dir.mkdir(exist_ok=True)
    metrics = run_harness(model.model_validate(cfg), output, eval_dir, directory / "trial.log")
    try:
        items = harness_items(cfg["type"], eval_dir, metrics)
    except CurationError as exc:  # the metrics stand; decisions fall back to the per-seed scores
        print(f"warning: no per-item results ({exc})", file=sys.stderr)
        items = []
    write_items(directory / ITEMS_NAME, items)
    return metrics


def _exit_with_parent() -> None:
    """A sweep killed with SIGKILL cannot stop its trials: each watches its launcher (CURATION_PARENT_PID) and
    exits when it is gone, so it never races the rerun in the same trial directory."""
    parent = os.environ.get("CURATION_PARENT_PID")
    if not parent:
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != int(parent):
                os._exit(137)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(directory: Path) -> int:
    from curation.selection.metrics import score

    _exit_with_parent()
    trial = json.loads((directory / TRIAL_NAME).read_text())
    started = time.perf_counter()
    train_metrics = train(trial, directory)
    trained = time.perf_counter()
    metrics = evaluate(trial, directory)
    value = score(metrics, ScoreConfig.model_validate(trial["score"]))
    atomic_write_json(
        directory / RESULT_NAME,
        {
            "id": trial["id"],
            "train": train_metrics,
            "metrics": metrics,
            "score": value,
            "seconds": {"train": round(trained - started, 3), "evaluate": round(time.perf_counter() - trained, 3)},
        },
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m curation.selection.run_trial TRIAL_DIR")
    try:
        sys.exit(main(Path(sys.argv[1])))
    except CurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
