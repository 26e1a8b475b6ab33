"""Download LAION partitions with img2dataset's own Ray distribution: one Ray task per img2dataset shard
(``img2dataset.distributor.ray_download``, the remote function of its ``ray_distributor``), run by the
build's driver before the partition tasks start (``LaionReader.download_with_ray``).

Shard ``k`` is exactly partition ``k``'s rows of the selection: every partition gets its own input parquet
(img2dataset's Reader starts a new shard at each file of a directory, counting from the least shard id); the
partitions in between that need nothing get a one-row stand-in and are skipped as ``done_shards``. All shards
are written to a staging folder next to the partitions' download folders (so on the same filesystem, which
every Ray node must mount, as for the partition tasks); as each task finishes, the driver renames its
``NNNNN.tar`` and ``NNNNN.parquet`` into the partition's ``download_dir`` as ``00000.*`` and its
``NNNNN_stats.json`` last: a killed stage resumes with the shards that have no stats file.

``ray_distributor`` itself would ``ray.get`` every task at once and raise on the first failure, so this
module submits the same remote function and collects each task on its own. A shard that fails (img2dataset's
Downloader reports a failure, or Ray gives up on the task after its retries) is left without output and
logged: its partition task then downloads it itself, exactly as on the local path (same Downloader, same
drop reasons), so a failure here costs time, never data. When no shard produced output and every one failed
in Ray itself (e.g. img2dataset missing on the workers), the cluster cannot run img2dataset: that raises.

Ray is imported only inside the functions (the ``ray`` extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.sources.download.img2dataset import make_downloader, make_reader, shard_name

_TARGET = shard_name(0)  # read() expects img2dataset shard 00000 in every download_dir
_BATCH = 65_536  # selection rows per read while writing the shards' inputs
_POLL_SECONDS = 0.5  # finished shards are put in place about this often


@dataclass(frozen=True)
class ShardSlice:
    """Rows ``start:stop`` of the selection, downloaded as img2dataset shard ``shard_id`` into ``out``."""

    shard_id: int
    start: int
    stop: int
    out: Path


def download_slices(
    selection: Path, slices: list[ShardSlice], opts: Any, extra_columns: list[str], stage: Path
) -> dict[int, str]:
    """Download every slice as one Ray task (img2dataset's ``ray_download``) and put its output into
    ``slice.out``. Returns the failed shards (shard id -> error), which their partition tasks download.
    Needs ``ray.init()`` done; ``stage`` is a scratch folder (removed first and at the end)."""
    import ray

    if not slices:
        return {}
    if not ray.is_initialized():
        raise RuntimeError("download_slices runs in a Ray driver: call ray.init() first")
    ids = [s.shard_id for s in slices]
    if len(set(ids)) != len(ids) or min(ids) < 0 or any(s.stop <= s.start for s in slices):
        raise ValueError(f"shard slices need distinct shard ids >= 0 and rows: {slices}")
    shutil.rmtree(stage, ignore_errors=True)  # what a killed stage left; its finished shards are in place
    inputs, tmp, staged = stage / "input", stage / "tmp", stage / "out"
    for d in (inputs, tmp, staged):
        d.mkdir(parents=True)
    # img2dataset's Reader prints its progress
    with open(stage.parent / f"{stage.name}.log", "a") as log, contextlib.redirect_stdout(log):
        caption, done = _write_inputs(selection, slices, inputs)
        per_shard = max(s.stop - s.start for s in slices)
        reader = make_reader(inputs, caption, extra_columns, per_shard, done, tmp, min(s.shard_id for s in slices))
        downloader = make_downloader(opts, staged, reader.column_list, caption, per_shard)
        failures = _run(reader, downloader, {s.shard_id: s for s in slices}, staged, log)
    shutil.rmtree(stage, ignore_errors=True)
    return failures


def _write_inputs(selection: Path, slices: list[ShardSlice], inputs: Path) -> tuple[bool, set[int]]:
    """One parquet per shard id from the least to the greatest (named so that they sort by id), streamed out
    of the selection: the slice's rows, or a one-row stand-in for an id in between that has nothing to
    download (returned as done shards)."""
    pf = pq.ParquetFile(selection)
    todo = sorted(slices, key=lambda s: s.start)
    writers: dict[int, pq.ParquetWriter] = {}
    stand_in: pa.Table | None = None
    pos, i = 0, 0
    for batch in pf.iter_batches(batch_size=_BATCH):
        table = pa.Table.from_batches([batch])
        if stand_in is None:
            stand_in = table.slice(0, 1)
        lo_batch, hi_batch = pos, pos + table.num_rows
        while i < len(todo) and todo[i].start < hi_batch:
            s = todo[i]
            lo, hi = max(s.start, lo_batch), min(s.stop, hi_batch)
            if hi > lo:
                if s.shard_id not in writers:
                    writers[s.shard_id] = pq.ParquetWriter(inputs / f"{s.shard_id:09d}.parquet", table.schema)
                writers[s.shard_id].write_table(table.slice(lo - lo_batch, hi - lo))
            if s.stop > hi_batch:
                break
            writers.pop(s.shard_id).close()
            i += 1
        pos = hi_batch
        if i == len(todo):
            break
    if i < len(todo):
        raise ValueError(f"{selection} has {pos} rows; shard {todo[i].shard_id} needs rows up to {todo[i].stop}")
    wanted = {s.shard_id for s in slices}
    done = set(range(min(wanted), max(wanted) + 1)) - wanted
    for k in done:
        pq.write_table(stand_in, inputs / f"{k:09d}.parquet")
    return "caption" in pf.schema_arrow.names, done


def _run(reader: Any, downloader: Any, slices: dict[int, ShardSlice], staged: Path, log: Any) -> dict[int, str]:
    import ray
    import ray.exceptions
    from img2dataset import distributor

    remote = distributor.ray_download.options(
        runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": os.environ.get("NO_ALBUMENTATIONS_UPDATE", "1")}}
    )
    shared = ray.put(downloader)
    running = {remote.remote(shared, task): task[0] for task in reader}  # task: (shard id, its feather file)
    if set(running.values()) != set(slices):
        raise RuntimeError(f"img2dataset's Reader made shards {sorted(running.values())}, expected {sorted(slices)}")
    failures: dict[int, str] = {}
    ray_errors: set[int] = set()
    while running:
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=_POLL_SECONDS)
        for ref in ready:
            k = running.pop(ref)
            try:
                ok, _ = ray.get(ref)
                error = None if ok else "img2dataset's Downloader failed on the shard (traceback in the worker log)"
            except (ray.exceptions.RaySystemError, ray.exceptions.LocalRayletDiedError):
                raise  # the cluster itself is gone
            except ray.exceptions.RayError as exc:  # the task raised, or its worker/node died on every try
                cause = getattr(exc, "cause", None) or exc  # a task's own exception, else Ray's
                error = f"{type(cause).__name__}: {str(cause).strip()[:2000]}"
                ray_errors.add(k)
            if (staged / f"{shard_name(k)}_stats.json").is_file():  # img2dataset finished the shard anyway
                _install(staged, k, slices[k].out)
                continue
            failures[k] = error or "img2dataset wrote no stats for the shard"
            print(f"img2dataset shard {k} -> {slices[k].out}: {failures[k]}", file=log, flush=True)
    if failures and len(failures) == len(slices) and set(failures) == ray_errors:
        first = failures[min(failures)].splitlines()[0]
        raise CurationError(
            f"every img2dataset download task failed on the Ray cluster ({len(failures)} shards), e.g.: {first}"
        )
    return failures


def _install(staged: Path, k: int, out: Path) -> None:
    """Rename staged shard ``k`` into ``out`` as shard 00000, the stats file last."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".tar", ".parquet"):
        src, dst = staged / f"{shard_name(k)}{suffix}", out / f"{_TARGET}{suffix}"
        if src.is_file():
            os.replace(src, dst)
        else:
            dst.unlink(missing_ok=True)
    os.replace(staged / f"{shard_name(k)}_stats.json", out / f"{_TARGET}_stats.json")
