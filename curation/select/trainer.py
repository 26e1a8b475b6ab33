"""The reference trainer: transformers + PEFT (LoRA/DoRA or full fine-tuning), NEFTune, AdamW with warmup
and decay, loss on answer tokens only, streaming a trial's mixture manifest. A loop a reader can hold in
their head (nanoGPT-style), no ``Trainer``.

CLI: ``python -m curation.select.trainer --mixture M --config trainer.json --output DIR --seed N``
(``trainer.json`` = ``ReferenceTrainerConfig.model_dump()``); writes ``DIR/adapter`` and ``DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from curation.errors import CurationError
from curation.recipe.selection import PeftConfig, ReferenceTrainerConfig
from curation.select.data import IGNORE_INDEX, collate, iter_mixture, mixture_size
from schemas import SftRecord
from shards.atomic import atomic_write_json

ADAPTER_DIR = "adapter"
METRICS_NAME = "metrics.json"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CurationError(f"device {device!r} asked for, but no CUDA device is visible")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it, else float32."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def load_base(model_dir: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, processor) from a local directory, never from a hub."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise CurationError(f"no model directory at {path} (expected a config.json from save_pretrained)")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return model, processor


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft (0.21) reads transformers' deprecated ``is_gradient_checkpointing``: not our warning to show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def apply_peft(model: Any, cfg: PeftConfig) -> Any:
    """LoRA or DoRA adapters (``all-linear`` or named modules); method ``none`` trains every parameter."""
    if cfg.method == "none":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.method == "dora",
        bias="none",
    )
    with quiet_peft():
        return get_peft_model(model, lora)


def plan_steps(cfg: ReferenceTrainerConfig, n: int) -> int:
    """Optimizer steps: ceil(epochs * n / (batch_size * gradient_accumulation)), capped by max_steps."""
    steps = math.ceil(cfg.epochs * n / (cfg.batch_size * cfg.gradient_accumulation))
    return max(1, min(steps, cfg.max_steps or steps))


def stream(mixture: Path) -> Iterator[SftRecord]:
    """The mixture's records, epoch after epoch, in manifest order."""
    for _ in itertools.count():
        yield from iter_mixture(mixture)


def batches(mixture: Path, batch_size: int) -> Iterator[list[SftRecord]]:
    records = stream(mixture)
    while True:
        yield list(itertools.islice(records, batch_size))


def _optimizer(model: Any, cfg: ReferenceTrainerConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms (1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)


def _save(model: Any, processor: Any, directory: Path) -> None:
    """PEFT: the adapter only; full fine-tuning: the whole model. The processor goes beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def _loss_summary(losses: list[float]) -> dict[str, float | None]:
    if not losses:
        return {"train_loss_first": None, "train_loss_last": None, "train_loss_mean_last_10pct": None}
    tail = losses[-max(1, math.ceil(0.1 * len(losses))) :]
    return {
        "train_loss_first": round(losses[0], 6),
        "train_loss_last": round(losses[-1], 6),
        "train_loss_mean_last_10pct": round(sum(tail) / len(tail), 6),
    }


def _backward(
    model: Any,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    scaler: torch.amp.GradScaler,
    cfg: ReferenceTrainerConfig,
) -> float | None:
    """Forward and backward of one micro-batch (its loss scaled for accumulation); its loss, or None when it
    has no answer tokens left (truncated away)."""
    if not (batch["labels"] != IGNORE_INDEX).any():
        return None
    batch = {k: v.to(device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    loss = model(**batch).loss
    scaler.scale(loss / cfg.gradient_accumulation).backward()
    return loss.item()


def train(cfg: ReferenceTrainerConfig, mixture: Path, output: Path, seed: int) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on the mixture; write ``output/adapter`` then ``output/metrics.json`` (last)."""
    from transformers import get_scheduler
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    mixture, output = Path(mixture), Path(output)
    n = mixture_size(mixture)
    if n == 0:
        raise CurationError(f"the mixture {mixture} is empty: nothing to train on")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(seed)
    model, processor = load_base(cfg.model, dtype)
    model = apply_peft(model, cfg.peft).to(device)
    model.train()
    neftune = activate_neftune(model, cfg.neftune_alpha) if cfg.neftune_alpha else None

    steps = plan_steps(cfg, n)
    optimizer = _optimizer(model, cfg)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * steps), num_training_steps=steps
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and dtype == torch.float16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    samples = 0
    started = time.perf_counter()
    micro = batches(mixture, cfg.batch_size)
    for _ in range(steps):
        step_losses = []
        for _ in range(cfg.gradient_accumulation):
            records = next(micro)
            samples += len(records)
            loss = _backward(model, collate(records, processor, cfg.max_length), device, dtype, scaler, cfg)
            if loss is not None:
                step_losses.append(loss)
        if step_losses:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            losses.append(sum(step_losses) / len(step_losses))
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    seconds = time.perf_counter() - started

    if neftune is not None:
        deactivate_neftune(model, neftune)
    model.eval()
    _save(model, processor, output / ADAPTER_DIR)
    metrics = {
        "steps": steps,
        "samples_seen": samples,
        **_loss_summary(losses),
        "seconds": round(seconds, 3),
        "samples_per_second": round(samples / seconds, 3) if seconds else None,
        "steps_per_second": round(steps / seconds, 3) if seconds else None,
        "parameters_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters_total": sum(p.numel() for p in model.parameters()),
        "device": str(device),
    }
    atomic_write_json(output / METRICS_NAME, metrics)
    return metrics


def _read_config(path: Path) -> ReferenceTrainerConfig:
    """A trainer.json (``ReferenceTrainerConfig.model_dump()``; ``type`` may be left out)."""
    try:
        return ReferenceTrainerConfig.model_validate({"type": "reference", **json.loads(path.read_text())})
    except (OSError, ValueError, TypeError) as exc:  # ValidationError and JSONDecodeError are ValueErrors
        raise CurationError(f"trainer config {path}: {str(exc).replace(chr(10), '; ')}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.select.trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--mixture", type=Path, required=True, help="the mixture manifest (parquet)")
    parser.add_argument("--config", type=Path, required=True, help="a ReferenceTrainerConfig as JSON")
    parser.add_argument("--output", type=Path, required=True, help="where adapter/ and metrics.json go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        cfg = _read_config(args.config)
        args.output.mkdir(parents=True, exist_ok=True)
        metrics = train(cfg, args.mixture, args.output, args.seed)
    except CurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
