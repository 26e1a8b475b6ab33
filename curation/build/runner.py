"""The build runner: plan -> process the partitions (resumable) -> global steps -> commit -> manifest.

Guarantees (tested): exact accounting, resume after kill -9 with byte-identical output, atomic shards,
determinism independent of the number of workers and of the executor, bounded memory. Each stage below is
one function; what a source or a step does is declared by its reader or step class, never named here.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation import __version__
from curation.build.accounting import Accounting
from curation.build.commit import commit_rejects, commit_shards, plan_commit, shards_by_partition
from curation.build.drop_reasons import check_declared
from curation.build.executors import Executor, PartitionsOnly, check_executor, open_executor
from curation.build.faults import crash_point
from curation.build.global_steps import GlobalOutcome, run_global_steps
from curation.build.messages import (
    PartitionResult,
    PartitionStats,
    PartitionTask,
    Staged,
    WorkChannel,
    partition_dir,
    stale_staging,
)
from curation.build.output_dir import BuildState, OutputDir
from curation.build.partition import READ, record_step_names
from curation.build.plan import BuildPlan, check_sources_outside, plan_build, prepare_steps, recipe_identity
from curation.build.progress import BuildProgress
from curation.build.step_reports import merge_reports, output_reports, run_reports
from curation.errors import CurationError
from curation.recipe import BuildRecipe
from curation.recipe.loading import recipe_doc
from curation.sources import make_reader
from curation.steps.contract import GlobalContext
from curation.storage.copies import copies_in
from curation.storage.inputs import check_inputs as check_url_inputs
from shards.atomic import atomic_write_json, remove_stale_tmp
from shards.manifest import STATS_NAME, DatasetManifest, ShardInfo, read_manifest, write_wids_index


@dataclass
class BuildResult:
    out: Path
    manifest: DatasetManifest
    state: BuildState  # fresh | resume | complete
    partitions: int = 0
    partitions_skipped: int = 0
    seconds: float = 0.0
    log: Path | None = None


def build(
    recipe: BuildRecipe,
    out: Path,
    *,
    workers: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    on_staged: Callable[[Path], None] | None = None,
    plan: BuildPlan | None = None,
    channel: WorkChannel | None = None,
) -> BuildResult:
    """Build ``recipe`` into ``out``. ``executor`` runs the partitions: ``local`` (``workers`` processes,
    default 1) or ``ray`` (one task per partition on the cluster at ``address``; ``workers`` caps how many run
    at once, default: as many as the cluster has CPUs for). The output does not depend on either.

    ``on_staged`` (object storage, ``curation.storage.publish``) is called in the driver with each finished piece
    of the work directory: the recorded plan, then each partition's directory as its result arrives (before the
    commit moves anything out of it). ``plan``: the plan when the caller made it already (the same recipe and
    ``limit``). ``channel`` (a build into a bucket on Ray): each partition task publishes its partition through
    it, staging on its own node when it does not see ``out``; ``on_staged`` then copies in what ``out`` lacks,
    and everything but the partition tasks runs in this process (:class:`PartitionsOnly`)."""
    check_executor(executor, address)
    started = time.perf_counter()
    target = OutputDir(Path(out))
    recipe = check_url_inputs(recipe)  # before the recipe's identity: it records the copies of recipe files
    check_sources_outside(recipe, target.root)
    state = target.state(recipe_identity(recipe, limit), overwrite)
    plan = plan or plan_build(recipe, limit)
    if state == BuildState.COMPLETE:
        recorded = target.recorded_plan_sha256()
        if recorded is not None and recorded != plan.sha256:
            raise CurationError(
                f"{target.root} was built from this recipe, but its inputs have changed since; "
                "pass --overwrite to rebuild"
            )
        target.finish_complete()
        return BuildResult(target.root, read_manifest(target.root), BuildState.COMPLETE)
    target.create()
    with target.lock(), open_executor(executor, workers, address) as opened:
        ex: Executor = opened if channel is None else PartitionsOnly(opened)
        state = target.state(plan.recipe_sha256, overwrite)  # again, now that we hold the lock
        if state == BuildState.COMPLETE:
            return BuildResult(target.root, read_manifest(target.root), BuildState.COMPLETE)
        if state == BuildState.RESUME and target.recorded_plan() != plan.doc:
            raise CurationError(
                f"the inputs changed since the interrupted build in {target.root} started; "
                "pass --overwrite to start over"
            )
        target.start(state, plan.doc)
        if channel is not None:
            channel.claim(target.work)
        if on_staged is not None:
            on_staged(target.plan_path)
        return _run_stages(recipe, target, plan, ex, state, progress, started, on_staged, channel)


def _run_stages(
    recipe: BuildRecipe,
    target: OutputDir,
    plan: BuildPlan,
    ex: Executor,
    state: BuildState,
    progress: bool,
    started: float,
    on_staged: Callable[[Path], None] | None = None,
    channel: WorkChannel | None = None,
) -> BuildResult:
    prepare_steps(recipe, target.work, ex.call)
    results = process_partitions(recipe, target.work, plan, ex, progress, on_staged, channel)
    done_now = {r.gid for r in results}
    staged = Staged.read(target.work, list(range(len(plan.partitions))))
    acc = count_partitions(recipe, staged)
    outcome = run_global_steps(recipe, staged, acc, GlobalContext(target.work, ex.threads, ex.imap))
    check_declared(recipe, acc.summary())
    shards, rejects, by_partition = commit(recipe, target.root, staged, outcome, ex)
    manifest = write_manifest(recipe, target.root, plan, staged, acc, outcome, shards, rejects, by_partition)
    target.finish()
    seconds = time.perf_counter() - started
    done_reports = merge_reports([p.reports for p in staged.partitions if p.gid in done_now])
    ran = BuildState.RESUME if state == BuildState.RESUME else BuildState.FRESH
    log = target.write_log(
        {
            "state": str(ran),
            "executor": ex.describe(),
            "seconds": round(seconds, 3),
            "partitions_skipped": len(plan.partitions) - len(done_now),
            "input_rows_processed": (rows := sum(plan.partitions[g].rows for g in done_now)),
            "rows_per_second": round(rows / seconds, 1) if seconds else None,
            "slowest_partition_seconds": max((r.seconds for r in results), default=None),
            "samples": manifest.totals["samples"],
            "recipe_sha256": manifest.recipe_sha256,
            "steps": run_reports(recipe, done_reports, seconds),
            "partitions": [{"gid": r.gid, "seconds": r.seconds, **r.placement} for r in results],
        }
    )
    skipped = len(plan.partitions) - len(done_now)
    return BuildResult(target.root, manifest, ran, len(plan.partitions), skipped, seconds, log)


def process_partitions(
    recipe: BuildRecipe,
    work: Path,
    plan: BuildPlan,
    ex: Executor,
    progress: bool,
    on_staged: Callable[[Path], None] | None = None,
    channel: WorkChannel | None = None,
) -> list[PartitionResult]:
    """Run the partitions not finished by an earlier attempt; what each of them reported back (and, as each
    arrives, its finished directory to ``on_staged``)."""
    for stale in stale_staging(work):
        shutil.rmtree(stale, ignore_errors=True)
    copies = copies_in(recipe)
    pending_parts = [(gid, p) for gid, p in enumerate(plan.partitions) if not PartitionStats.is_done(work, gid)]
    readers = {src.name: make_reader(src) for src in recipe.sources}
    shared = (  # the nodes may not see the driver's disk: the plan's files go through the bucket
        channel.share(p.spec[f] for _, p in pending_parts for f in readers[p.source].plan_file_fields if f in p.spec)
        if channel is not None
        else {}
    )
    tasks = [
        PartitionTask(recipe, p, gid, work, plan.resources, plan.where, channel, copies, shared)
        for gid, p in pending_parts
    ]
    pending = {t.gid for t in tasks}
    results: list[PartitionResult] = []

    def done(result: PartitionResult) -> None:
        results.append(result)
        if on_staged is not None:
            on_staged(partition_dir(work, result.gid))

    for src in recipe.sources:  # downloads that the executor distributes itself (img2dataset on Ray)
        ex.download(readers[src.name], [t.partition for t in tasks if t.partition.source == src.name])
    with BuildProgress(plan.rows, recipe.name, enabled=progress) as bar:
        bar.skip(sum(p.rows for g, p in enumerate(plan.partitions) if g not in pending))
        ex.run(tasks, bar.advance, done)
    return results


def count_partitions(recipe: BuildRecipe, staged: Staged) -> Accounting:
    """The partitions' accounting added up (a source cut off by ``--limit`` still shows, with 0 inputs)."""
    acc = Accounting(record_step_names(recipe))
    for p in staged.partitions:
        acc.merge(Accounting.from_dict(p.accounting))
    for src in recipe.sources:
        acc.steps[READ].input[src.name] += 0
    return acc


def commit(
    recipe: BuildRecipe, out: Path, staged: Staged, outcome: GlobalOutcome, ex: Executor
) -> tuple[list[ShardInfo], list[ShardInfo], dict[int, list[ShardInfo]]]:
    """The final shards (on the executor), the rejects, and which shards each partition produced."""
    tokenizer = (recipe.tokenizer.type, recipe.tokenizer.path)
    plan = plan_commit(staged.shards(), recipe.shard_prefix(), outcome.drops, outcome.rewrites, tokenizer)
    shards = commit_shards(plan, out, lambda fn, args: ex.imap(fn, args, lambda a: f"shard {a[1].stem}"))
    rejects = commit_rejects(staged, out, recipe.shard_prefix(), outcome.drops) if recipe.output.rejects else []
    remove_stale_tmp(out)  # left by a commit task whose worker died before its retry (Ray) finished the shard
    return shards, rejects, shards_by_partition(plan, shards)


def write_manifest(
    recipe: BuildRecipe,
    out: Path,
    plan: BuildPlan,
    staged: Staged,
    acc: Accounting,
    outcome: GlobalOutcome,
    shards: list[ShardInfo],
    rejects: list[ShardInfo],
    by_partition: dict[int, list[ShardInfo]],
) -> DatasetManifest:
    """The build's stats, then its manifest: the build is complete once ``dataset.json`` exists."""
    problems = acc.check()
    if problems:
        raise RuntimeError(f"accounting identity broken (a bug): {problems[:3]}")
    summary = acc.summary()
    manifest = DatasetManifest(
        name=recipe.shard_prefix(),
        kind=recipe.output.kind,
        tool_version=__version__,
        recipe=plan.where.doc(recipe_doc(recipe)),
        recipe_sha256=plan.recipe_sha256,
        tokenizer_fingerprint=plan.doc["tokenizer"],
        shards=shards,
        rejects=rejects,
        totals=shard_totals(out, shards),
        accounting=summary,
        duplicates=outcome.duplicate_pairs,
        categories=source_categories(recipe),
        reports=output_reports(recipe, merge_reports([p.reports for p in staged.partitions])),
    )
    manifest.wids_index = write_wids_index(out, manifest.name, shards)
    manifest.subsets = write_subsets(recipe, plan, by_partition, out)
    per_partition = [
        {"partition": p.gid, **plan.doc["partitions"][p.gid], "accounting": p.accounting}  # as planned: relocated
        for p in staged.partitions
    ]
    # Deterministic per-partition accounting (timings live in _logs/ only).
    atomic_write_json(
        out / STATS_NAME, {"accounting": summary, "partitions": per_partition, "plan_sha256": plan.sha256}
    )
    crash_point("before_manifest")
    manifest.write(out)
    crash_point("after_manifest")
    return manifest


def source_categories(recipe: BuildRecipe) -> dict[str, str]:
    """Source -> task category: declared in the recipe, or known to the reader (the Cauldron's 50 configs)."""
    categories = {src.name: src.category or make_reader(src).category() for src in recipe.sources}
    return {name: category for name, category in categories.items() if category}


def write_subsets(
    recipe: BuildRecipe, plan: BuildPlan, by_partition: dict[int, list[ShardInfo]], out: Path
) -> dict[str, dict[str, Any]]:
    """Nested subsets that sources declare (LAION sizes), each with its own wids index under ``subsets/``."""
    subsets: dict[str, dict[str, Any]] = {}
    for src in recipe.sources:
        gids = [g for g, p in enumerate(plan.partitions) if p.source == src.name]
        for subset in make_reader(src).subsets([plan.partitions[g] for g in gids]):
            shards = [s for i in subset.partitions for s in by_partition.get(gids[i], [])]
            name = f"{src.name}-{subset.label}"
            (out / "subsets").mkdir(exist_ok=True)
            index = write_wids_index(out / "subsets", name, shards, url_prefix="../")
            subsets[name] = {
                "shards": [s.name for s in shards],
                "samples": sum(s.samples for s in shards),
                "complete": subset.complete,  # False when the selection had fewer rows than the size
                "wids_index": f"subsets/{index}",
            }
    return subsets


def shard_totals(out: Path, shards: list[ShardInfo]) -> dict[str, int]:
    """The manifest's totals, from the shards' stats files."""
    totals = {"samples": 0, "bytes": 0, "shards": len(shards), "images": 0, "text_tokens": 0, "answer_tokens": 0}
    for s in shards:
        stats = json.loads((out / s.stats).read_text())
        for key in ("samples", "bytes", "images", "text_tokens", "answer_tokens"):
            totals[key] += stats[key]
    return totals
