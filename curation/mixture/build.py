"""Mixture builds: components drawn from built datasets, each sampled to its target, shuffled globally.

1. Datasets: existing builds (``path``: a directory, or ``s3://...`` read through the local mirror) or build
   recipes built first into ``<out>/_datasets/<alias>`` (resumable like any build).
2. Selection (deterministic, from the sidecars only): per component, ``floor(epochs)`` whole repeats of
   every sample plus a seeded subsample for the fraction. Share targets are answer tokens: the subsample is
   the prefix of a seeded order whose answer tokens come closest to what is left of the target.
3. Shuffle, out of core: every selected copy gets a seeded rank; DuckDB sorts the ranks (spilling to disk
   when large); pass 1 streams each input shard once and scatters the copies into position-range buckets;
   pass 2 loads one bucket at a time (``output.bucket_bytes``), in position order, into the mixture shards.

A killed mixture build keeps its finished sub-builds, and its mixing stage resumes: step 2 is computed again
(from the sidecars: quick), step 3 goes on from what it recorded (``curation.mixture.shuffle``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curation import __version__
from curation.build.accounting import Accounting
from curation.build.drop_reasons import check_declared
from curation.build.executors import check_executor
from curation.build.output_dir import DATASETS, PLAN, BuildState, OutputDir
from curation.build.plan import check_tokenizer
from curation.build.runner import BuildResult, shard_totals
from curation.mixture.datasets import BuildOne, resolve_datasets
from curation.mixture.sampling import ComponentPlan, one_kind, plan_components, selection_table
from curation.mixture.shuffle import BUCKETS, SCATTERED, WRITTEN, shuffle_and_write
from curation.recipe import MixtureRecipe, recipe_hash
from curation.recipe.loading import recipe_doc
from curation.storage.copies import fetch_recipe_files
from shards import read_manifest
from shards.atomic import atomic_write_json, content_sha256
from shards.manifest import STATS_NAME, DatasetManifest, write_wids_index


def build_mixture(
    recipe: MixtureRecipe,
    out: Path,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    build_one: BuildOne | None = None,
) -> BuildResult:
    """Build the mixture into ``out``. ``build_one`` builds each sub-build (default: the local build; a mixture
    into a bucket publishes each one as it is done: ``curation.storage.publish.mixture_to_url``)."""
    check_executor(executor, address)
    target = OutputDir(Path(out))
    started = time.perf_counter()
    rhash = recipe_hash(recipe)
    state = target.state(rhash, overwrite)
    if state == BuildState.COMPLETE:
        target.finish_complete()
        return BuildResult(target.root, read_manifest(target.root), BuildState.COMPLETE)
    target.create()
    with target.lock():
        state = target.state(rhash, overwrite)  # again, now that we hold the lock
        if state == BuildState.COMPLETE:
            return BuildResult(target.root, read_manifest(target.root), BuildState.COMPLETE)
        target.start(state, {"recipe_sha256": rhash, "prefix": recipe.shard_prefix()}, keep=(DATASETS,))
        _clean_mixing(target)
        run = fetch_recipe_files(recipe)  # a tokenizer in a bucket: copied (the recipe as given is recorded)
        check_tokenizer(run.tokenizer)
        dirs = resolve_datasets(run, target.root, workers, progress, executor, address, overwrite, build_one)
        plans, total_tokens, identities = plan_components(run, dirs, target.root)
        selection = selection_table(run, plans, dirs)
        shards = shuffle_and_write(run, selection, target.work, target.root)
        manifest = _manifest(run, recipe_doc(recipe), rhash, target.root, shards, plans, total_tokens, identities, dirs)
        manifest.wids_index = write_wids_index(target.root, manifest.name, shards)
        atomic_write_json(target.root / STATS_NAME, {"accounting": manifest.accounting, "mixture": manifest.mixture})
        manifest.write(target.root)
        target.finish()
    seconds = time.perf_counter() - started
    ran = BuildState.RESUME if state == BuildState.RESUME else BuildState.FRESH
    log = target.write_log(
        {
            "state": str(ran),
            "seconds": round(seconds, 3),
            "samples": manifest.totals["samples"],
            "recipe_sha256": manifest.recipe_sha256,
        }
    )
    return BuildResult(target.root, manifest, ran, seconds=seconds, log=log)


def _clean_mixing(target: OutputDir) -> None:
    """What a killed mixing stage left that it cannot resume from goes (DuckDB's spill files); the scatter's
    buckets, its records and finished shards stay (``shuffle_and_write`` checks them), as do the sub-builds."""
    for child in target.work.iterdir():
        if child.name not in (PLAN, SCATTERED, WRITTEN, BUCKETS):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _manifest(
    recipe: MixtureRecipe,
    recorded: dict[str, Any],
    rhash: str,
    out: Path,
    shards: list[Any],
    plans: list[ComponentPlan],
    total_tokens: float,
    identities: dict[str, Any],
    dirs: dict[str, Path],
) -> DatasetManifest:
    totals = shard_totals(out, shards)
    acc = Accounting(["select"])
    counts = acc.steps["select"]
    achieved: dict[str, int] = {}
    for s in shards:
        table = pq.read_table(out / s.sidecar, columns=["source", "answer_tokens"])
        for source, tokens in zip(
            table.column("source").to_pylist(), table.column("answer_tokens").to_pylist(), strict=True
        ):
            achieved[source] = achieved.get(source, 0) + tokens
    all_tokens = sum(achieved.values())
    components: dict[str, Any] = {}
    categories: dict[str, str] = {}
    for p in plans:
        c = p.component
        name = c.name
        unique = len(set(range(p.available)) if p.repeats else set(p.sampled.tolist()))
        counts.input[name] += p.available
        counts.output[name] += p.output_samples()
        if p.available - unique:
            counts.dropped[name]["not_sampled"] += p.available - unique
        if p.output_samples() - unique:
            counts.added[name]["repeated"] += p.output_samples() - unique
        category = c.category or read_manifest(dirs[p.dataset]).categories.get(c.source_names()[0])
        if category:
            categories[name] = category
        target = c.target.model_dump(exclude_none=True)
        entry = {
            "dataset": p.dataset,
            "sources": c.source_names(),
            "category": category,
            "target": target,
            "available_samples": p.available,
            "available_answer_tokens": p.available_tokens,
            "epochs": round(p.output_samples() / p.available, 4),
            "samples": p.output_samples(),
            "answer_tokens": achieved.get(name, 0),
            "achieved_share": round(100.0 * achieved.get(name, 0) / all_tokens, 4) if all_tokens else 0.0,
        }
        if c.target.answer_share is not None and p.target_tokens is not None:
            entry["target_share"] = round(100.0 * p.target_tokens / total_tokens, 4)
            entry["target_answer_tokens"] = round(p.target_tokens, 1)
        components[name] = entry
    problems = acc.check()
    if problems:
        raise RuntimeError(f"mixture accounting broken (a bug): {problems[:3]}")
    check_declared(recipe, acc.summary())
    return DatasetManifest(
        name=recipe.shard_prefix(),
        kind=one_kind(dirs),
        tool_version=__version__,
        recipe=recorded,
        recipe_sha256=rhash,
        tokenizer_fingerprint=check_tokenizer(recipe.tokenizer),
        shards=shards,
        totals=totals,
        accounting=acc.summary(),
        categories=categories,
        mixture={
            "seed": recipe.seed,
            "total_answer_tokens": all_tokens,
            "planned_answer_tokens": round(total_tokens, 1),
            "datasets": identities,
            "selection_sha256": content_sha256([sorted(components.items())]),
            "components": components,
        },
    )
