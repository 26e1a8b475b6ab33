"""External evaluators run as commands (lmms-eval, VLMEvalKit, or any command writing ``metrics.json``): running
one and reading its metrics ``{"<benchmark>/<metric>": value}`` and per-item :class:`ItemScore` rows with the
parser of its type."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from pathlib import Path

from curation.errors import CurationError
from curation.recipe.selection import CommandEvaluatorConfig, HarnessEvaluatorConfig
from curation.selection.harnesses.files import _close, _number, _read_json
from curation.selection.harnesses.lmms_eval import lmms_eval_items, parse_lmms_eval
from curation.selection.harnesses.vlmevalkit import parse_vlmevalkit, vlmevalkit_items
from curation.selection.items import COMMAND_ITEMS_NAME, ItemScore, read_items_jsonl
from curation.selection.launchers.process import log_tail

__all__ = ["harness_items", "parse_metrics_json", "run_harness"]

LOG_TAIL_CHARS = 4000


def harness_items(cfg_type: str, output_dir: Path, metrics: dict[str, float] | None = None) -> list[ItemScore]:
    """The per-item rows of an external evaluator's output. A command evaluator's optional ``items.jsonl``
    keeps, as the harness readers do, only the metrics of ``metrics`` whose items average to their value."""
    if cfg_type == "lmms_eval":
        return lmms_eval_items(output_dir)
    if cfg_type == "vlmevalkit":
        return vlmevalkit_items(output_dir)
    if cfg_type == "command":
        rows = read_items_jsonl(output_dir / COMMAND_ITEMS_NAME)
        if metrics is None:
            return rows
        by_key: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            by_key[row.key].append(row.value)
        kept = {k for k, v in by_key.items() if k in metrics and _close(sum(v) / len(v), metrics[k])}
        return [row for row in rows if row.key in kept]
    raise CurationError(f"no per-item reader for evaluator type {cfg_type!r}")


def run_harness(
    cfg: HarnessEvaluatorConfig | CommandEvaluatorConfig, model_dir: Path, output_dir: Path, log: Path
) -> dict[str, float]:
    """Run ``cfg.command`` ({model}, {output} filled; ``cfg.env`` added; output appended to ``log``), then parse
    its results. A failed command raises CurationError with the tail of the log."""
    output_dir, log = Path(output_dir), Path(log)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    fill = {"{model}": str(model_dir), "{output}": str(output_dir)}
    command = [_fill(arg, fill) for arg in cfg.command]
    env = {**os.environ, **{k: _fill(v, fill) for k, v in cfg.env.items()}}
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(command)}\n".encode())
        f.flush()
        try:
            rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
        except OSError as exc:
            raise CurationError(f"{cfg.type} evaluator: cannot run {command[0]!r} ({exc})") from None
    if rc != 0:
        tail = log_tail(log, n_bytes=LOG_TAIL_CHARS)
        raise CurationError(f"{cfg.type} evaluator exited with {rc}; the end of {log}:\n{tail}")
    if cfg.type == "lmms_eval":
        return parse_lmms_eval(output_dir)
    if cfg.type == "vlmevalkit":
        return parse_vlmevalkit(output_dir)
    return parse_metrics_json(output_dir / "metrics.json")


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def parse_metrics_json(path: Path) -> dict[str, float]:
    """A command evaluator's ``metrics.json``: an object of ``"benchmark/metric": number``."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"command evaluator: it exited 0 but wrote no {path} (a regular file)")
    doc = _read_json(path, "command evaluator")
    if not isinstance(doc, dict):
        raise CurationError(f"command evaluator: {path} must hold a JSON object, got {type(doc).__name__}")
    out: dict[str, float] = {}
    for key, value in doc.items():
        number = _number(value)
        if number is None:
            raise CurationError(f"command evaluator: {path}: {key!r} is {value!r}, not a finite number")
        out[key] = number
    return out
