"""The build runner: plan partitions -> process them (resumable) -> global steps -> commit -> manifest.

Guarantees (tested): exact accounting, resume after kill -9 with byte-identical output, atomic shards,
determinism independent of the number of workers, bounded memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from curation import __version__
from curation.accounting import Accounting
from curation.commit import Growth, commit_rejects, commit_shards
from curation.errors import CurationError, RecipeError
from curation.executors import Executor, check_executor, open_executor
from curation.faults import crash_point
from curation.partition import UNIQUE_KEY, partition_dir, read_partition_stats, step_names
from curation.progress import BuildProgress
from curation.readers import Partition, make_reader
from curation.recipe import BuildRecipe, step_label
from curation.steps import GlobalStep, RecordStep, is_global, step_class
from curation.steps.contract import registered_steps
from curation.steps.dedup import GlobalDrops, UniqueKey
from curation.steps.merge import Patches, stage_merged_turns
from shards.atomic import atomic_write_json, content_sha256, remove_stale_tmp
from shards.manifest import MANIFEST_NAME, STATS_NAME, DatasetManifest, read_manifest, write_wids_index
from shards.tokens import TokenizerError, make_token_counter, tokenizer_fingerprint

WORK = "_work"
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
            (out / LOCK).unlink(missing_ok=True)  # while still holding it: no lock file is left behind
            fcntl.flock(f, fcntl.LOCK_UN)


def _prefixes(out: Path) -> set[str]:
    """Shard prefixes of the build(s) recorded in ``out`` (its manifest and/or its unfinished plan)."""
    found = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        found.add(read_manifest(out).name)
    with contextlib.suppress(OSError, ValueError):
        found.add(json.loads((out / WORK / "plan.json").read_text())["prefix"])
    return {p for p in found if p}


def _owned_and_foreign(out: Path) -> tuple[list[Path], list[str]]:
    """Entries of ``out`` this toolkit wrote, and the names of everything else (never deleted)."""
    names = "|".join(re.escape(p) for p in sorted(_prefixes(out))) or "(?!)"
    shard = re.compile(rf"^(?:{names})-(?:rejects-)?\d{{6}}\.(?:tar|parquet|stats\.json)$")
    singles = {MANIFEST_NAME, STATS_NAME, *(f"{p}.wids.json" for p in _prefixes(out))}
    if (out / MANIFEST_NAME).is_file():  # a build's card and report; a README.md elsewhere is the user's
        singles |= {CARD_NAME, "audit.html", "audit.md"}
    tmp = re.compile(r"^\..+\.tmp$")
    owned: list[Path] = []
    foreign: list[str] = []
    for child in sorted(out.iterdir()):
        if child.is_symlink():  # whatever it points to is not ours: never write or delete through a link
            foreign.append(child.name)
            continue
        if child.name in (LOCK, LOGS):
            continue
        if (child.name in (WORK, "_datasets") and child.is_dir()) or (
            child.name == "subsets" and child.is_dir() and all(c.name.endswith(".wids.json") for c in child.iterdir())
        ):
            owned.append(child)
        elif child.name == "rejects" and child.is_dir():
            inner = list(child.iterdir())
            bad = [
                f"rejects/{c.name}" for c in inner if not (c.is_file() and (shard.match(c.name) or tmp.match(c.name)))
            ]
            (foreign.extend(bad) if bad else owned.append(child))
        elif child.is_file() and (child.name in singles or shard.match(child.name) or tmp.match(child.name)):
            owned.append(child)
        else:
            foreign.append(child.name + ("/" if child.is_dir() else ""))
    return owned, foreign


def _clear_build(out: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete what earlier builds wrote here (except the entries named in ``keep``); refuse (deleting
    nothing) if anything else is present."""
    owned, foreign = _owned_and_foreign(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise CurationError(f"{out} holds files this toolkit did not write ({shown}); refusing to overwrite it")
    for path in owned:
        if path.name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def output_state(out: Path, rhash: str, overwrite: bool) -> str:
    """fresh | resume | complete | clear (an earlier build to replace). Changes nothing."""
    if out.exists() and not out.is_dir():
        raise CurationError(f"--out {out} is a file, not a directory")
    if not out.exists():
        return "fresh"
    manifest_path, plan_path = out / MANIFEST_NAME, out / WORK / "plan.json"
    if manifest_path.is_file():
        try:
            theirs = read_manifest(out).recipe_sha256
        except ValueError as exc:
            if not overwrite:
                raise CurationError(f"{out}: {exc}; pass --overwrite to replace it") from None
            return "clear"
        if theirs == rhash and not overwrite:
            return "complete"
        if not overwrite:
            raise CurationError(
                f"{out} holds a build of a different recipe (recipe sha256 {theirs[:12]}, this one {rhash[:12]}); "
                "pass --overwrite to replace it or choose another --out"
            )
        return "clear"
    if plan_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(plan_path.read_text()).get("recipe_sha256") == rhash and not overwrite:
                return "resume"
        if not overwrite:
            raise CurationError(
                f"{out} holds an unfinished build of a different recipe; pass --overwrite to discard it"
            )
        return "clear"
    owned, foreign = _owned_and_foreign(out)
    if foreign:
        raise CurationError(f"--out {out} is not empty and holds no build of this toolkit; choose an empty directory")
    return "clear" if owned else "fresh"  # e.g. an empty _work/ left by a failed start


def _check_sources_outside(recipe: BuildRecipe, out: Path) -> None:
    for src in recipe.sources:
        path = Path(src.path.split("*")[0] or ".").resolve()
        if path == out or out in path.parents or (path.is_dir() and path in out.parents):
            raise CurationError(
                f"sources.{src.name}.path ({src.path}) and --out ({out}) overlap; the build would read its own output"
            )


def _check_kinds(recipe: BuildRecipe, readers: dict[str, Any]) -> None:
    """Follow each source's record kind through the steps, as each step class declares what it takes and
    makes, to the output kind."""
    for src in recipe.sources:
        kind = readers[src.name].record_kind()
        for i, step in enumerate(recipe.steps):
            cls = step_class(step)
            problem = cls.kind_error(step, kind)
            if problem:
                raise RecipeError(
                    f"steps.{i} ({step.step}) {problem}, but source {src.name!r} has {kind} records at this step; "
                    "convert them first (e.g. pair_to_sft) or change the step"
                )
            kind = cls.output_kind(kind)
        if kind != recipe.output.kind:
            fixes = [
                get_args(cfg.model_fields["step"].annotation)[0]  # the step's type, as a recipe names it
                for cfg, cls in registered_steps().items()
                if cls.converts == (kind, recipe.output.kind)
            ]
            fix = f" (add a {fixes[0]!r} step)" if fixes else ""
            raise RecipeError(
                f"sources.{src.name}: produces {kind!r} records but output.kind is {recipe.output.kind!r}{fix}"
            )


def check_tokenizer(tokenizer: Any) -> str:
    """Load the recipe's tokenizer once here (a bad one fails before anything is written); its fingerprint."""
    try:
        make_token_counter(tokenizer.type, tokenizer.path)
        return tokenizer_fingerprint(tokenizer.type, tokenizer.path)
    except TokenizerError as exc:
        raise RecipeError(str(exc)) from None


def _check_step_inputs(recipe: BuildRecipe) -> None:
    for i, step in enumerate(recipe.steps):
        step_class(step).check_inputs(step, f"steps.{i}")


def _prepare_steps(recipe: BuildRecipe, work: Path) -> None:
    """Build-wide inputs of steps, made once before the partitions run (e.g. benchmark indexes)."""
    for i, step in enumerate(recipe.steps):
        step_class(step).prepare(step, step_label(recipe.steps, i), work)


def plan_partitions(recipe: BuildRecipe, limit: int | None) -> list[Partition]:
    readers = {s.name: make_reader(s) for s in recipe.sources}
    _check_kinds(recipe, readers)
    _check_step_inputs(recipe)
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
    workers: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> BuildResult:
    """Build ``recipe`` into ``out``. ``executor`` runs the partitions: ``local`` (``workers`` processes,
    default 1) or ``ray`` (one task per partition on the cluster at ``address``; ``workers`` caps how many run
    at once, default: as many as the cluster has CPUs for). The output does not depend on either."""
    check_executor(executor, address)
    out = Path(out).resolve()
    started = time.perf_counter()
    identity = recipe.model_dump(mode="json")
    if limit is not None:
        identity["limit"] = limit
    rhash = content_sha256(identity)  # = recipe_hash(recipe) when there is no --limit
    _check_sources_outside(recipe, out)
    # Everything that can fail on bad configuration or inputs happens before anything is written.
    state = output_state(out, rhash, overwrite)
    plan = plan_partitions(recipe, limit)
    plan_doc = {
        "recipe_sha256": rhash,
        "prefix": recipe.shard_prefix(),
        "tokenizer": check_tokenizer(recipe.tokenizer),  # a changed tokenizer file is a changed input
        "partitions": [p.to_dict() for p in plan],
    }
    if state == "complete":
        recorded = _recorded_plan_sha256(out)
        if recorded is not None and recorded != content_sha256(plan_doc):
            raise CurationError(
                f"{out} was built from this recipe, but its inputs have changed since; pass --overwrite to rebuild"
            )
        finish_complete(out)
        return BuildResult(out, read_manifest(out), "complete")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CurationError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    with build_lock(out), open_executor(executor, workers, address) as ex:
        return _build_locked(recipe, out, rhash, plan, plan_doc, ex, overwrite, progress, started)


CARD_NAME = "README.md"


def finish_complete(out: Path) -> None:
    """A build killed after writing dataset.json (complete) but before its card and clean-up: finish those."""
    if (out / WORK).exists() or (out / LOCK).exists() or not (out / CARD_NAME).is_file():
        with build_lock(out):
            write_card(out, only_missing=True)
            shutil.rmtree(out / WORK, ignore_errors=True)


def write_card(out: Path, only_missing: bool = False) -> None:
    """The dataset card (README.md, Hugging Face style), written by every build after its manifest."""
    from curation.card import write_dataset_card

    if not (only_missing and (out / CARD_NAME).is_file()):
        write_dataset_card(out)


def _recorded_plan_sha256(out: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((out / STATS_NAME).read_text())["plan_sha256"]
    return None


def _build_locked(
    recipe: BuildRecipe,
    out: Path,
    rhash: str,
    plan: list[Partition],
    plan_doc: dict[str, Any],
    ex: Executor,
    overwrite: bool,
    progress: bool,
    started: float,
) -> BuildResult:
    state = output_state(out, rhash, overwrite)  # again, now that we hold the lock
    if state == "complete":
        return BuildResult(out, read_manifest(out), "complete")
    if state == "clear":
        _clear_build(out)
        state = "fresh"
    work = out / WORK
    plan_path = work / "plan.json"
    if state == "resume":
        if json.loads(plan_path.read_text()) != plan_doc:
            raise CurationError(
                f"the inputs changed since the interrupted build in {out} started; pass --overwrite to start over"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan_doc)
    remove_stale_tmp(out)
    remove_stale_tmp(out / "rejects")
    for stale in work.glob("p*.tmp-*"):  # staging of a killed attempt
        shutil.rmtree(stale, ignore_errors=True)

    _prepare_steps(recipe, work)
    recipe_doc = recipe.model_dump(mode="json")
    tasks, skipped_rows = [], 0
    for gid, p in enumerate(plan):
        if (partition_dir(work, gid) / "stats.json").is_file():
            skipped_rows += p.rows
            continue
        tasks.append({"recipe": recipe_doc, "partition": p.to_dict(), "gid": gid, "work": str(work)})
    total_rows = sum(p.rows for p in plan)
    pending = {t["gid"] for t in tasks}
    for src in recipe.sources:  # downloads that the executor distributes itself (img2dataset on Ray)
        ex.download(make_reader(src), [p for g, p in enumerate(plan) if g in pending and p.source == src.name])
    with BuildProgress(total_rows, recipe.name, enabled=progress) as bar:
        bar.skip(skipped_rows)
        ex.run(tasks, bar.advance, lambda _r: None)

    gids = list(range(len(plan)))
    acc = Accounting(step_names(recipe)[0])
    per_partition = []
    for gid in gids:
        pstats = read_partition_stats(work, gid)
        acc.merge(Accounting.from_dict(pstats["accounting"]))
        per_partition.append({"partition": gid, **pstats["partition"], "accounting": pstats["accounting"]})
    for src in recipe.sources:  # a source cut off by --limit still shows, with 0 inputs
        acc.steps["read"].input[src.name] += 0
    drops, duplicate_pairs, patches = _run_global_steps(recipe, work, gids, acc)
    problems = acc.check()
    if problems:
        raise RuntimeError(f"accounting identity broken (a bug): {problems[:3]}")

    prefix = recipe.shard_prefix()
    grow = Growth(patches, work / "merged_turns.sqlite", recipe.tokenizer.type, recipe.tokenizer.path)
    shards, by_partition = commit_shards(
        work, out, prefix, gids, drops, grow, lambda fn, args: ex.imap(fn, args, lambda a: f"shard {a[2].stem}")
    )
    rejects = commit_rejects(work, out, prefix, gids, drops) if recipe.output.rejects else []
    remove_stale_tmp(out)  # left by a commit task whose worker died before its retry (Ray) finished the shard
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
        duplicates=duplicate_pairs,
        categories=_categories(recipe),
        reports=_without_run_only(
            recipe, merge_reports([read_partition_stats(work, g).get("reports", {}) for g in gids])
        ),
    )
    done_now = {t["gid"] for t in tasks}
    run_reports = merge_reports([read_partition_stats(work, g).get("reports", {}) for g in gids if g in done_now])
    manifest.wids_index = write_wids_index(out, prefix, shards)
    manifest.subsets = _write_subsets(recipe, plan, by_partition, out, prefix)
    # Deterministic per-partition accounting (timings live in _logs/ only).
    atomic_write_json(
        out / STATS_NAME,
        {"accounting": summary, "partitions": per_partition, "plan_sha256": content_sha256(plan_doc)},
    )
    crash_point("before_manifest")
    manifest.write(out)  # the build is complete once dataset.json exists
    crash_point("after_manifest")
    write_card(out)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    log = _write_log(
        out,
        manifest,
        state,
        ex.describe(),
        seconds,
        len(plan) - len(tasks),
        total_rows - skipped_rows,
        _with_throughput(recipe, run_reports, seconds),
    )
    return BuildResult(
        out, manifest, "resumed" if state == "resume" else "fresh", len(plan), len(plan) - len(tasks), seconds, log
    )


def _run_global_steps(
    recipe: BuildRecipe, work: Path, gids: list[int], acc: Accounting
) -> tuple[GlobalDrops, dict[str, dict[str, dict[str, int]]], Patches]:
    """``unique_key`` (always), then the recipe's global steps, each over what the previous ones kept.
    Returns the drops, per step how many samples of each source duplicated a sample of which source, and the
    conversations that ``merge_qa`` grows."""
    _, global_labels = step_names(recipe)
    configs: dict[str, Any] = {UNIQUE_KEY: None}
    configs.update({step_label(recipe.steps, i): s for i, s in enumerate(recipe.steps) if is_global(s)})
    sidecars = [
        (gid, int(s["name"].split(".")[0]), partition_dir(work, gid) / s["sidecar"])
        for gid in gids
        for s in read_partition_stats(work, gid)["shards"]
    ]
    drops: GlobalDrops = {}
    patches: Patches = {}
    pairs: dict[str, dict[str, dict[str, int]]] = {}
    previous = acc.step_names[-1]
    for label in global_labels:
        acc.merge(Accounting([label]))
        counts = acc.steps[label]
        for source, n in acc.steps[previous].output.items():
            counts.input[source] += n
        found_drops, grown = _global_step(configs[label], label, sidecars, drops, work)
        for where, heads in grown.items():
            patches.setdefault(where, {}).update(heads)
        for where, found in found_drops.items():
            for key, drop in found.items():
                drops.setdefault(where, {})[key] = drop
                counts.dropped[drop.source][drop.reason] += 1
                if drop.other_source is not None:
                    per = pairs.setdefault(label, {}).setdefault(drop.source, {})
                    per[drop.other_source] = per.get(drop.other_source, 0) + 1
        for source in counts.input:
            counts.output[source] = counts.input[source] - sum(counts.dropped[source].values())
        previous = label
    pairs_sorted = {k: {s: dict(sorted(v.items())) for s, v in sorted(d.items())} for k, d in pairs.items()}
    if patches:
        paths = {(g, n): p.with_name(f"{n:06d}.tar") for g, n, p in sidecars}
        stage_merged_turns(patches, paths, work / "merged_turns.sqlite")
    return drops, pairs_sorted, patches


def _global_step(cfg: Any, label: str, sidecars: list, drops: GlobalDrops, work: Path) -> tuple[GlobalDrops, Patches]:
    """What one global step drops, and the conversations it grows; ``None`` is the always-on unique_key."""
    cls = UniqueKey if cfg is None else step_class(cfg)
    assert issubclass(cls, GlobalStep)
    return cls.find(cfg, label, sidecars, drops, work)


def _categories(recipe: BuildRecipe) -> dict[str, str]:
    """Source -> task category: declared in the recipe, or known to the reader (the Cauldron's 50 configs)."""
    out = {}
    for src in recipe.sources:
        category = src.category
        if category is None:
            reader = make_reader(src)
            category = reader.category()
        if category:
            out[src.name] = category
    return out


def _write_subsets(
    recipe: BuildRecipe, plan: list[Partition], by_partition: dict[int, list[Any]], out: Path, prefix: str
) -> dict[str, dict[str, Any]]:
    """Nested subsets declared by sources (LAION sizes): the shards of the source's first n partitions."""
    subsets: dict[str, dict[str, Any]] = {}
    for src in recipe.sources:
        reader = make_reader(src)
        gids = [g for g, p in enumerate(plan) if p.source == src.name and p.spec.get("kind") == "download"]
        for label, n_partitions in reader.subsets().items():
            shards = [s for g in gids[:n_partitions] for s in by_partition[g]]
            name = f"{src.name}-{label}"
            (out / "subsets").mkdir(exist_ok=True)
            index = write_wids_index(out / "subsets", name, shards, url_prefix="../")
            subsets[name] = {
                "shards": [s.name for s in shards],
                "samples": sum(s.samples for s in shards),
                "complete": n_partitions <= len(gids),  # False when the selection had fewer rows than the size
                "wids_index": f"subsets/{index}",
            }
    return subsets


def _totals(out: Path, shards: list[Any]) -> dict[str, int]:
    totals = {"samples": 0, "bytes": 0, "shards": len(shards), "images": 0, "text_tokens": 0, "answer_tokens": 0}
    for s in shards:
        stats = json.loads((out / s.stats).read_text())
        totals["samples"] += stats["samples"]
        totals["bytes"] += stats["bytes"]
        for k in ("images", "text_tokens", "answer_tokens"):
            totals[k] += stats[k]
    return totals


def merge_reports(reports: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Step reports of several partitions as one: numbers (and nested counters) added up."""

    def add(into: dict[str, Any], more: dict[str, Any]) -> None:
        for k, v in more.items():
            if isinstance(v, dict):
                add(into.setdefault(k, {}), v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                into[k] = round(into.get(k, 0) + v, 6)
            else:
                into.setdefault(k, v)

    merged: dict[str, dict[str, Any]] = {}
    for partition in reports:
        for label, report in partition.items():
            add(merged.setdefault(label, {}), report)
    return merged


def _record_step_classes(recipe: BuildRecipe) -> dict[str, type[RecordStep]]:
    classes = {step_label(recipe.steps, i): step_class(s) for i, s in enumerate(recipe.steps)}
    return {label: cls for label, cls in classes.items() if issubclass(cls, RecordStep)}


def _without_run_only(recipe: BuildRecipe, reports: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The manifest keeps what the output depends on, not what a particular run did (cache hits, timings)."""
    classes = _record_step_classes(recipe)
    return {
        label: {k: v for k, v in r.items() if k not in classes[label].run_only_report_keys}
        for label, r in reports.items()
    }


def _with_throughput(recipe: BuildRecipe, reports: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Each step's report of this run, with the rates its class derives from it (for the run log)."""
    classes = _record_step_classes(recipe)
    out = {}
    for label, report in reports.items():
        rates = classes[label].throughput(report, seconds)
        out[label] = report if rates is None else {**report, "throughput": rates}
    return out


def _write_log(
    out: Path,
    manifest: DatasetManifest,
    state: str,
    executor: dict[str, Any],
    seconds: float,
    skipped: int,
    rows_done: int,
    reports: dict[str, dict[str, Any]] | None = None,
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
            "executor": executor,
            "seconds": round(seconds, 3),
            "partitions_skipped": skipped,
            "input_rows_processed": rows_done,
            "rows_per_second": round(rows_done / seconds, 1) if seconds else None,
            "samples": manifest.totals["samples"],
            "recipe_sha256": manifest.recipe_sha256,
            "steps": reports or {},
        },
    )
    return path
