"""The build runner: plan partitions -> process them (resumable) -> global steps -> commit -> manifest.

Guarantees (tested): exact accounting, resume after kill -9 with byte-identical output, atomic shards,
determinism independent of the number of workers, bounded memory.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation import __version__
from curation.accounting import Accounting
from curation.commit import GlobalDrops, commit_rejects, commit_shards
from curation.errors import CurationError, RecipeError
from curation.executors import run_local
from curation.faults import crash_point
from curation.partition import partition_dir, read_partition_stats, step_names
from curation.progress import BuildProgress
from curation.readers import Partition, make_reader
from curation.recipe import BuildRecipe, recipe_hash
from curation.steps.dedup import find_exact_image_duplicates
from shards.atomic import atomic_write_json, remove_stale_tmp
from shards.manifest import MANIFEST_NAME, DatasetManifest, read_manifest, write_wids_index

WORK = "_work"
STATS_NAME = "stats.json"
LOGS = "_logs"


@dataclass
class BuildResult:
    out: Path
    manifest: DatasetManifest
    state: str  # fresh | resumed | complete
    partitions: int = 0
    partitions_skipped: int = 0
    seconds: float = 0.0
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


LOCK = ".lock"


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """One build per output directory; the OS drops the lock when the process dies, even by kill -9."""
    with open(out / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CurationError(f"another build is running in {out}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clear_build(out: Path) -> None:
    for child in out.iterdir():
        if child.name in (LOGS, LOCK):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_output(out: Path, rhash: str, overwrite: bool) -> str:
    """fresh | resume | complete; refuses a directory holding another recipe's build or foreign files."""
    manifest_path, plan_path = out / MANIFEST_NAME, out / WORK / "plan.json"
    if manifest_path.is_file():
        theirs = read_manifest(out).recipe_sha256
        if theirs == rhash and not overwrite:
            return "complete"
        if not overwrite:
            raise CurationError(
                f"{out} holds a build of a different recipe (recipe sha256 {theirs[:12]}, this one {rhash[:12]}); "
                "pass --overwrite to replace it or choose another --out"
            )
        _clear_build(out)
        return "fresh"
    if plan_path.is_file():
        theirs = json.loads(plan_path.read_text()).get("recipe_sha256", "")
        if theirs == rhash and not overwrite:
            return "resume"
        if not overwrite:
            raise CurationError(
                f"{out} holds an unfinished build of a different recipe; pass --overwrite to discard it"
            )
        _clear_build(out)
        return "fresh"
    if out.exists() and not out.is_dir():
        raise CurationError(f"--out {out} is a file, not a directory")
    if out.exists() and any(p.name not in (LOGS, LOCK) for p in out.iterdir()):
        raise CurationError(f"--out {out} is not empty and holds no build of this toolkit; choose an empty directory")
    return "fresh"


def _check_kinds(recipe: BuildRecipe, readers: dict[str, Any]) -> None:
    for src in recipe.sources:
        kind = readers[src.name].record_kind()
        for step in recipe.steps:
            if step.step == "pair_to_sft" and kind == "pair":
                kind = "sft"
        if kind != recipe.output.kind:
            fix = " (add a 'pair_to_sft' step)" if (kind, recipe.output.kind) == ("pair", "sft") else ""
            raise RecipeError(
                f"sources.{src.name}: produces {kind!r} records but output.kind is {recipe.output.kind!r}{fix}"
            )


def plan_partitions(recipe: BuildRecipe, limit: int | None) -> list[Partition]:
    readers = {s.name: make_reader(s) for s in recipe.sources}
    _check_kinds(recipe, readers)
    plan: list[Partition] = []
    remaining = limit
    for src in recipe.sources:
        src_left = src.limit
        for p in readers[src.name].plan():
            rows = p.rows
            for cap in (src_left, remaining):
                if cap is not None:
                    rows = min(rows, cap)
            if rows <= 0:
                break
            if rows < p.rows:
                p = _truncate(p, rows)
            plan.append(p)
            src_left = None if src_left is None else src_left - rows
            remaining = None if remaining is None else remaining - rows
    return plan


def _truncate(p: Partition, rows: int) -> Partition:
    spec = dict(p.spec)
    spec["limit_rows"] = rows
    if "stop" in spec:
        spec["stop"] = spec["start"] + rows
    return Partition(p.source, p.index, rows, spec)


def build(
    recipe: BuildRecipe,
    out: Path,
    *,
    workers: int = 1,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildResult:
    out = Path(out).resolve()
    started = time.perf_counter()
    identity = recipe.model_dump(mode="json")
    if limit is not None:
        identity["limit"] = limit
    rhash = recipe_hash(recipe) if limit is None else _hash_dict(identity)
    if out.is_dir() and not (out / MANIFEST_NAME).exists() and not (out / WORK).exists():
        prepare_output(out, rhash, overwrite)  # refuses foreign files before we put a lock file there
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out):
        return _build_locked(recipe, out, rhash, workers, limit, overwrite, progress, started)


def _build_locked(
    recipe: BuildRecipe,
    out: Path,
    rhash: str,
    workers: int,
    limit: int | None,
    overwrite: bool,
    progress: bool,
    started: float,
) -> BuildResult:
    state = prepare_output(out, rhash, overwrite)
    if state == "complete":
        return BuildResult(out, read_manifest(out), "complete")
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    for stale in work.glob("p*.tmp-*"):  # staging of a killed attempt
        shutil.rmtree(stale, ignore_errors=True)
    plan_path = work / "plan.json"
    plan = plan_partitions(recipe, limit)
    plan_doc = {"recipe_sha256": rhash, "partitions": [p.to_dict() for p in plan]}
    if state == "resume":
        if json.loads(plan_path.read_text()) != plan_doc:
            raise CurationError(
                f"the inputs changed since the interrupted build in {out} started; pass --overwrite to start over"
            )
    else:
        atomic_write_json(plan_path, plan_doc)

    recipe_doc = recipe.model_dump(mode="json")
    tasks, skipped_rows = [], 0
    for gid, p in enumerate(plan):
        if (partition_dir(work, gid) / "stats.json").is_file():
            skipped_rows += p.rows
            continue
        tasks.append({"recipe": recipe_doc, "partition": p.to_dict(), "gid": gid, "work": str(work)})
    total_rows = sum(p.rows for p in plan)
    with BuildProgress(total_rows, recipe.name, enabled=progress) as bar:
        bar.skip(skipped_rows)
        run_local(tasks, workers, bar.advance, lambda _r: None)

    gids = list(range(len(plan)))
    acc = Accounting(step_names(recipe)[0])
    per_partition = []
    for gid in gids:
        pstats = read_partition_stats(work, gid)
        acc.merge(Accounting.from_dict(pstats["accounting"]))
        per_partition.append({"partition": gid, **pstats["partition"], "accounting": pstats["accounting"]})
    drops = _run_global_steps(recipe, work, gids, acc)
    problems = acc.check()
    if problems:
        raise RuntimeError(f"accounting identity broken (a bug): {problems[:3]}")

    prefix = recipe.shard_prefix()
    shards = commit_shards(work, out, prefix, gids, drops)
    rejects = commit_rejects(work, out, prefix, gids, drops) if recipe.output.rejects else []
    totals = _totals(out, shards)
    summary = acc.summary()
    for source, s in summary["sources"].items():
        if s["input"] != s["output"] + sum(s["dropped"].values()):
            raise RuntimeError(f"accounting identity broken for source {source} (a bug)")
    manifest = DatasetManifest(
        name=prefix,
        kind=recipe.output.kind,
        tool_version=__version__,
        recipe=recipe_doc,
        recipe_sha256=rhash,
        shards=shards,
        rejects=rejects,
        totals=totals,
        accounting=summary,
    )
    manifest.wids_index = write_wids_index(out, prefix, shards)
    # Deterministic per-partition accounting (timings live in _logs/ only).
    atomic_write_json(out / STATS_NAME, {"accounting": summary, "partitions": per_partition})
    crash_point("before_manifest")
    manifest.write(out)  # the build is complete once dataset.json exists
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    log = _write_log(out, manifest, state, workers, seconds, len(plan) - len(tasks), total_rows - skipped_rows)
    return BuildResult(
        out, manifest, "resumed" if state == "resume" else "fresh", len(plan), len(plan) - len(tasks), seconds, log
    )


def _hash_dict(doc: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _run_global_steps(recipe: BuildRecipe, work: Path, gids: list[int], acc: Accounting) -> GlobalDrops:
    _, global_labels = step_names(recipe)
    drops: GlobalDrops = {}
    previous = acc.step_names[-1]
    for label in global_labels:
        acc.merge(Accounting([label]))
        counts = acc.steps[label]
        for source, n in acc.steps[previous].output.items():
            counts.input[source] += n
        found: dict[tuple[int, int], dict[str, str]] = {}
        if not drops:  # a repeated exact dedup finds nothing new
            sidecars = [
                (gid, int(s["name"].split(".")[0]), partition_dir(work, gid) / s["sidecar"])
                for gid in gids
                for s in read_partition_stats(work, gid)["shards"]
            ]
            found = find_exact_image_duplicates(sidecars)
        for where, keys in found.items():
            for key, source in keys.items():
                drops.setdefault(where, {})[key] = (source, label)
                counts.dropped[source]["duplicate_image"] += 1
        for source in counts.input:
            counts.output[source] = counts.input[source] - sum(counts.dropped[source].values())
        previous = label
    return drops


def _totals(out: Path, shards: list[Any]) -> dict[str, int]:
    totals = {"samples": 0, "bytes": 0, "shards": len(shards), "images": 0, "text_tokens": 0, "answer_tokens": 0}
    for s in shards:
        stats = json.loads((out / s.stats).read_text())
        totals["samples"] += stats["samples"]
        totals["bytes"] += stats["bytes"]
        for k in ("images", "text_tokens", "answer_tokens"):
            totals[k] += stats[k]
    return totals


def _write_log(
    out: Path, manifest: DatasetManifest, state: str, workers: int, seconds: float, skipped: int, rows_done: int
) -> Path:
    logs = out / LOGS
    logs.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    path = logs / f"build-{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    atomic_write_json(
        path,
        {
            "finished_at": now.isoformat(),
            "state": state,
            "workers": workers,
            "seconds": round(seconds, 3),
            "partitions_skipped": skipped,
            "input_rows_processed": rows_done,
            "rows_per_second": round(rows_done / seconds, 1) if seconds else None,
            "samples": manifest.totals["samples"],
            "recipe_sha256": manifest.recipe_sha256,
        },
    )
    return path
