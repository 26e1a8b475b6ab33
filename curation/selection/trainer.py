"""The reference trainer: transformers + PEFT (LoRA/DoRA or full fine-tuning), NEFTune, AdamW with warmup
and decay, loss on answer tokens only, streaming a trial's mixture manifest. A loop a reader can hold in
their head (nanoGPT-style), no ``Trainer``.

CLI: ``python -m curation.selection.trainer --mixture M --config trainer.json --output DIR --seed N``
(``trainer.json`` = ``ReferenceTrainerConfig.model_dump()``); writes ``DIR/adapter`` and ``DIR/metrics.json``.

Data parallel under torchrun (``python -m torch.distributed.run --nproc_per_node=N -m curation.selection.trainer
...``; WORLD_SIZE > 1): one process per GPU (``cuda:LOCAL_RANK``, NCCL) or per CPU share (gloo), each rank
streaming every WORLD_SIZE-th row of the manifest, gradients averaged by ``DistributedDataParallel``;
``batch_size`` is per rank (a step sees ``batch_size * WORLD_SIZE * gradient_accumulation`` samples). Rank 0
writes the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from curation.errors import CurationError
from curation.recipe.selection import PeftConfig, ReferenceTrainerConfig
from curation.selection.data import IGNORE_INDEX, collate, iter_mixture, mixture_size, pad_token_id
from curation.selection.families import load_model, load_processor, preflight
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


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job: rank 0 of 1 outside one."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _watch_parents() -> None:
    """A rank exits when its torchrun agent is gone, or the sweep's launcher (CURATION_PARENT_PID, see
    ``run_trial``) is: a killed trial leaves no rank training on in its directory."""
    agent = os.getppid()
    launcher = int(os.environ.get("CURATION_PARENT_PID") or 0)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != agent or (launcher and not alive(launcher)):
                os._exit(137)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """(ranks, this rank's device). Under torchrun (WORLD_SIZE > 1): the process group (NCCL on
    ``cuda:LOCAL_RANK``, gloo on CPU), destroyed at the end; otherwise rank 0 of 1 on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Ranks(), device
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise CurationError(f"local rank {local} has no GPU: {torch.cuda.device_count()} visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _watch_parents()
    try:
        yield Ranks(rank, world), device
    finally:
        if owned:
            dist.destroy_process_group()


def rank_manifest(mixture: Path, ranks: Ranks, directory: Path) -> tuple[Path, int]:
    """(manifest, rows) of this rank's share: rows ``rank, rank + world, ...`` of the mixture, which is first
    padded to a multiple of ``world`` by repeating its first rows (as ``DistributedSampler`` does; at most
    ``world - 1`` extra rows an epoch), so every rank has ``ceil(n / world)`` rows and micro-batch ``k`` of
    the ranks together covers rows ``[k * B * world, (k + 1) * B * world)``: the training order is kept."""
    table = pq.read_table(mixture)
    n = table.num_rows
    share = math.ceil(n / ranks.world)
    path = directory / f"rank{ranks.rank}.parquet"
    pq.write_table(table.take([(ranks.rank + i * ranks.world) % n for i in range(share)]), path)
    return path, share


def needs_unused_search(model: Any, processor: Any, device: torch.device) -> bool:
    """Whether DistributedDataParallel must look for unused parameters: some trainable parameter gets no
    gradient from a one-token text-only forward (a VLM's adapted vision tower on text-only batches). The
    probe leaves the random state and the gradients as they were."""
    ids = torch.tensor([[pad_token_id(processor)]], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum().backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    return unused


def load_base(model_dir: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, processor) from a local directory, never from a hub (``families.load_model`` and
    ``load_processor``: a clear CurationError for a model type the trainer cannot train)."""
    model = load_model(model_dir, dtype)
    return model, load_processor(model_dir)


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
    always: bool = False,
) -> float | None:
    """Forward and backward of one micro-batch (its loss scaled for accumulation); its loss, or None when it
    has no answer tokens left (truncated away). Such a batch is skipped, unless ``always`` (DDP: every rank
    takes part in each gradient all-reduce): then a zero loss goes backward."""
    empty = not (batch["labels"] != IGNORE_INDEX).any()
    if empty and not always:
        return None
    batch = {k: v.to(device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    if empty:  # the loss of no tokens is NaN: zero gradients through the logits instead
        del batch["labels"]
        scaler.scale(model(**batch).logits.mean() * 0.0).backward()
        return None
    loss = model(**batch).loss
    scaler.scale(loss / cfg.gradient_accumulation).backward()
    return loss.item()


def _step_loss(step_losses: list[float], ranks: Ranks, device: torch.device) -> float | None:
    """The mean loss of a step's micro-batches (those with answer tokens), over all ranks; None if none had."""
    if ranks.world == 1:
        return sum(step_losses) / len(step_losses) if step_losses else None
    total = torch.tensor([sum(step_losses), len(step_losses)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total[0] / total[1]).item() if total[1] else None


def train(cfg: ReferenceTrainerConfig, mixture: Path, output: Path, seed: int) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on the mixture; write ``output/adapter`` then ``output/metrics.json`` (last).
    Under torchrun, data parallel (see the module's docstring); only rank 0 writes."""
    mixture, output = Path(mixture), Path(output)
    n = mixture_size(mixture)
    if n == 0:
        raise CurationError(f"the mixture {mixture} is empty: nothing to train on")
    # fail fast, before the weights load: the model type, processor, chat template and the first batch
    preflight(cfg.model, list(itertools.islice(iter_mixture(mixture), cfg.batch_size)), cfg.max_length)
    with distributed(resolve_device(cfg.device)) as (ranks, device):
        if ranks.world == 1:
            return _train(cfg, mixture, n, output, seed, ranks, device)
        with tempfile.TemporaryDirectory(prefix="curation-rank") as tmp:
            share, rows = rank_manifest(mixture, ranks, Path(tmp))
            return _train(cfg, share, rows, output, seed, ranks, device)


def _train(
    cfg: ReferenceTrainerConfig, mixture: Path, n: int, output: Path, seed: int, ranks: Ranks, device: torch.device
) -> dict[str, Any]:
    """The loop, on this rank's ``n`` rows of the mixture."""
    from transformers import get_scheduler
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(seed)  # the same on every rank: the same initial adapters, dropout and noise streams
    model, processor = load_base(cfg.model, dtype)
    model = apply_peft(model, cfg.peft).to(device)
    model.train()
    net = model
    if ranks.world > 1:
        unused = needs_unused_search(model, processor, device)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
        if ranks.main:
            print(f"data parallel: {ranks.world} ranks on {device.type}, find_unused_parameters={unused}", flush=True)
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
        for i in range(cfg.gradient_accumulation):
            records = next(micro)
            samples += len(records)
            batch = collate(records, processor, cfg.max_length)
            last = i == cfg.gradient_accumulation - 1  # DDP: all-reduce the gradients once a step
            with contextlib.nullcontext() if net is model or last else net.no_sync():
                loss = _backward(net, batch, device, dtype, scaler, cfg, always=net is not model)
            if loss is not None:
                step_losses.append(loss)
        step_loss = _step_loss(step_losses, ranks, device)
        if step_loss is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            losses.append(step_loss)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    seconds = time.perf_counter() - started
    samples *= ranks.world  # every rank saw as many

    if neftune is not None:
        deactivate_neftune(model, neftune)
    model.eval()
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
        "world_size": ranks.world,
    }
    if ranks.main:
        _save(model, processor, output / ADAPTER_DIR)
        atomic_write_json(output / METRICS_NAME, metrics)
    return metrics


def _read_config(path: Path) -> ReferenceTrainerConfig:
    """A trainer.json (``ReferenceTrainerConfig.model_dump()``; ``type`` may be left out)."""
    try:
        return ReferenceTrainerConfig.model_validate({"type": "reference", **json.loads(path.read_text())})
    except (OSError, ValueError, TypeError) as exc:  # ValidationError and JSONDecodeError are ValueErrors
        raise CurationError(f"trainer config {path}: {str(exc).replace(chr(10), '; ')}") from None


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None  # the module has a docstring
    parser = argparse.ArgumentParser(prog="python -m curation.selection.trainer", description=__doc__.split("\n")[0])
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
    if int(os.environ.get("RANK", "0")) == 0:  # other torchrun ranks: nothing to say
        print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
