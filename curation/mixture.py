"""Mixture builds: components drawn from built datasets, each sampled to its target, shuffled globally.

1. Datasets: existing builds (``path``) or build recipes built first into ``<out>/_datasets/<alias>``
   (resumable like any build).
2. Selection (deterministic, from the sidecars only): per component, ``floor(epochs)`` whole repeats of
   every sample plus a seeded subsample for the fraction. Share targets are answer tokens: the subsample is
   the prefix of a seeded order whose answer tokens come closest to what is left of the target.
3. Shuffle, out of core: every selected copy gets a seeded rank; DuckDB sorts the ranks (spilling to disk
   when large); pass 1 streams each input shard once and scatters the copies into position-range buckets;
   pass 2 loads one bucket at a time (``output.bucket_bytes``), in position order, into the mixture shards.

A killed mixture build keeps its finished sub-builds; the mixing stage (steps 2-3) runs again from the start.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import __version__
from curation.accounting import Accounting
from curation.drop_reasons import check_declared
from curation.errors import CurationError
from curation.executors import check_executor
from curation.faults import crash_point
from curation.output_dir import DATASETS, PLAN, BuildState, OutputDir
from curation.plan import check_tokenizer
from curation.recipe import Component, DatasetRef, MixtureRecipe, load_recipe, recipe_hash
from curation.runner import BuildResult, build, shard_totals
from shards import ShardWriter, read_manifest
from shards.atomic import atomic_write_json, content_sha256
from shards.codec import decode_sample
from shards.manifest import MANIFEST_NAME, STATS_NAME, DatasetManifest, write_wids_index
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.tokens import make_token_counter


@dataclass
class ComponentPlan:
    component: Component
    dataset: str
    rows: pa.Table  # shard, idx, key, source, answer_tokens of the available samples, in dataset order
    target_tokens: float | None = None  # share components (and, once known, every component)
    repeats: int = 0
    sampled: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # the fractional subsample

    @property
    def available(self) -> int:
        return self.rows.num_rows

    @property
    def available_tokens(self) -> int:
        return int(np.sum(self.rows.column("answer_tokens").to_numpy()))

    def output_samples(self) -> int:
        return self.repeats * self.available + len(self.sampled)


# canonical_json's encoding, built once: ranks are computed per row and per output copy.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def _rank(seed: int, *parts: str | int) -> int:
    """A stable 63-bit rank: blake2b of the canonical JSON of (seed, *parts) as plain ints and strings (not
    Python's hash, numpy's generators or ``repr``, whose form differs between numpy and Python scalars)."""
    plain = [seed, *parts]
    if not all(type(x) in (int, str) for x in plain):
        raise TypeError(f"ranks hash plain ints and strings only, got {[type(x).__name__ for x in plain]}")
    h = hashlib.blake2b(_CANONICAL(plain).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


class HasDatasets(Protocol):
    """A recipe naming datasets (a mixture, a selection sweep, an ablation's trial configuration)."""

    @property
    def datasets(self) -> dict[str, DatasetRef]: ...


def resolve_datasets(
    recipe: HasDatasets,
    out: Path,
    workers: int | None,
    progress: bool,
    executor: str = "local",
    address: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """The directory of each dataset: given paths as they are; recipes and inline builds built (or resumed)
    under ``out/_datasets/`` with the given executor. A sub-build of another recipe version there is replaced
    only with ``overwrite``, as any build is."""

    dirs: dict[str, Path] = {}
    for alias, ref in recipe.datasets.items():
        if ref.path is not None:
            path = Path(ref.path)
            if not (path / MANIFEST_NAME).is_file():
                raise CurationError(f"datasets.{alias}.path: {path} is not a built dataset (no {MANIFEST_NAME})")
            dirs[alias] = path
            continue
        assert ref.build is not None or ref.recipe is not None  # DatasetRef holds exactly one of path, recipe, build
        sub = ref.build if ref.build is not None else load_recipe(str(ref.recipe), ref.set)
        if sub.kind != "build":
            raise CurationError(f"datasets.{alias}.recipe: {ref.recipe} is a {sub.kind} recipe; expected a build")
        target = out / DATASETS / alias
        if target.resolve() != out.resolve() / DATASETS / alias:  # a symlink on the way: not ours to write
            raise CurationError(
                f"datasets.{alias}: {target} resolves to {target.resolve()}, outside {out}; a mixture builds its "
                "datasets only inside its own --out"
            )
        try:  # an up-to-date sub-build is kept even with overwrite; only another version is replaced
            OutputDir(target).state(recipe_hash(sub), overwrite=False)
            replace = False
        except CurationError as exc:
            if not overwrite:
                raise CurationError(
                    f"datasets.{alias}: {exc} (remove {target} to rebuild it, or pass --overwrite to curate build)"
                ) from None
            replace = True
        build(sub, target, workers=workers, overwrite=replace, progress=progress, executor=executor, address=address)
        dirs[alias] = target
    return dirs


def _component_rows(manifest_dir: Path, component: Component) -> pa.Table:
    manifest = read_manifest(manifest_dir)
    sidecars = [str(manifest_dir / s.sidecar) for s in manifest.shards]
    if not sidecars:
        return pa.table({"shard": [], "idx": [], "key": [], "source": [], "answer_tokens": []})
    con = duckdb.connect()
    table = con.sql(
        """
        SELECT shard, "index" AS idx, key, source, answer_tokens FROM read_parquet($files)
        WHERE list_contains($sources, source) ORDER BY shard, "index"
        """,
        params={"files": sidecars, "sources": component.source_names()},
    ).to_arrow_table()
    con.close()
    return table


def plan_components(
    recipe: MixtureRecipe, dirs: dict[str, Path], out: Path
) -> tuple[list[ComponentPlan], float, dict[str, Any]]:
    """Decide every component's copies; returns the plans, the mixture's answer-token size and the
    datasets' identities."""
    mix_tokenizer = recipe.tokenizer.model_dump(mode="json")
    identities = {}
    for alias, path in dirs.items():
        m = read_manifest(path)
        theirs = (m.recipe or {}).get("tokenizer", {"type": "regex", "path": None})
        if {k: theirs.get(k) for k in mix_tokenizer} != mix_tokenizer:
            raise CurationError(
                f"datasets.{alias}: built with tokenizer {theirs}, but the mixture counts tokens with {mix_tokenizer}; "
                "shares would not add up: rebuild it with the same tokenizer or set the mixture's tokenizer"
            )
        shown = str(path.relative_to(out)) if path.is_relative_to(out) else str(path)  # no absolute out paths
        identities[alias] = {"path": shown, "recipe_sha256": m.recipe_sha256, "samples": m.totals["samples"]}
    _one_kind(dirs)
    plans = []
    for i, c in enumerate(recipe.components):
        rows = _component_rows(dirs[c.dataset], c)
        if rows.num_rows == 0:
            accounting = read_manifest(dirs[c.dataset]).accounting.get("sources", {})
            known = [s for s in c.source_names() if s in accounting]
            if known:
                why = "; ".join(
                    f"{s}: {accounting[s]['input']} read, all dropped ({accounting[s]['dropped']})" for s in known
                )
                raise CurationError(f"components.{i} ({c.name}): no samples left in dataset {c.dataset!r} ({why})")
            raise CurationError(
                f"components.{i} ({c.name}): dataset {c.dataset!r} has no source {c.source_names()}; its sources: "
                f"{', '.join(sorted(accounting)) or 'none'}"
            )
        plans.append(ComponentPlan(c, c.dataset, rows))
    fixed = [p for p in plans if p.component.target.answer_share is None]
    shares = [p for p in plans if p.component.target.answer_share is not None]
    for p in fixed:
        _plan_fixed(recipe.seed, p)
    fixed_tokens = sum(_copies_tokens(p) for p in fixed)
    share_sum = sum(p.component.target.answer_share for p in shares)
    if not shares:
        total = float(fixed_tokens)
    elif fixed:
        total = fixed_tokens / (1.0 - share_sum / 100.0)
    else:
        total = float(recipe.total_answer_tokens or sum(p.available_tokens for p in plans))
    norm = 100.0 if fixed else share_sum  # all shares: they are read as proportions of their sum
    for p in shares:
        if p.available_tokens == 0:
            raise CurationError(f"component {p.component.name}: its samples hold no answer tokens to share")
        p.target_tokens = total * p.component.target.answer_share / norm
        _plan_tokens(recipe.seed, p)
    return plans, total, identities


def _order(seed: int, p: ComponentPlan) -> np.ndarray:
    keys = p.rows.column("key").to_pylist()
    ranks = np.array([_rank(seed, "pick", p.component.name, k) for k in keys], dtype=np.int64)
    return np.argsort(ranks, kind="stable")


def _plan_fixed(seed: int, p: ComponentPlan) -> None:
    t = p.component.target
    n = p.available
    if t.samples is not None:
        p.repeats, extra = divmod(t.samples, n)
    else:
        assert t.epochs is not None  # a target is exactly one of answer_share, samples, epochs
        p.repeats = math.floor(t.epochs)
        extra = round((t.epochs - p.repeats) * n)
    p.sampled = np.sort(_order(seed, p)[:extra])


def _plan_tokens(seed: int, p: ComponentPlan) -> None:
    tokens = p.rows.column("answer_tokens").to_numpy()
    assert p.target_tokens is not None  # set for share components before they are planned
    p.repeats = int(p.target_tokens // p.available_tokens)
    rest = p.target_tokens - p.repeats * p.available_tokens
    order = _order(seed, p)
    cumulative = np.concatenate([[0], np.cumsum(tokens[order])])
    take = int(np.argmin(np.abs(cumulative - rest)))  # the prefix closest to what is left of the target
    p.sampled = np.sort(order[:take])


def _copies_tokens(p: ComponentPlan) -> int:
    tokens = p.rows.column("answer_tokens").to_numpy()
    return int(p.repeats * tokens.sum() + tokens[p.sampled].sum())


def _selection_table(recipe: MixtureRecipe, plans: list[ComponentPlan], dirs: dict[str, Path]) -> pa.Table:
    cols: dict[str, list[Any]] = {k: [] for k in ("rank", "component", "dataset", "shard", "idx", "key", "repeat")}
    for p in plans:
        shard = p.rows.column("shard").to_pylist()
        idx = p.rows.column("idx").to_pylist()
        key = p.rows.column("key").to_pylist()
        copies = [(r, rep) for rep in range(p.repeats) for r in range(p.available)]
        copies += [(int(r), p.repeats) for r in p.sampled]
        for r, rep in copies:
            cols["rank"].append(_rank(recipe.seed, "shuffle", p.component.name, key[r], rep))
            cols["component"].append(p.component.name)
            cols["dataset"].append(str(dirs[p.dataset] / shard[r]))
            cols["shard"].append(shard[r])
            cols["idx"].append(idx[r])
            cols["key"].append(key[r])
            cols["repeat"].append(rep)
    return pa.table(
        {
            "rank": pa.array(cols["rank"], pa.int64()),
            "component": pa.array(cols["component"], pa.string()),
            "tar": pa.array(cols["dataset"], pa.string()),
            "idx": pa.array(cols["idx"], pa.int32()),
            "key": pa.array(cols["key"], pa.string()),
            "repeat": pa.array(cols["repeat"], pa.int32()),
        }
    )


def _mixture_key(component: str, key: str, repeat: int) -> str:
    from curation.readers.base import sanitize_key

    return sanitize_key(f"{component}__{key}" + (f"__r{repeat}" if repeat else ""))


def _shuffle_and_write(recipe: MixtureRecipe, selection: pa.Table, work: Path, out: Path) -> list[Any]:
    """Out-of-core shuffle: sort ranks in DuckDB, scatter copies to position buckets, write bucket by bucket."""
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{work / 'duckdb'}'")
    con.register("selection", selection)
    con.execute(
        "CREATE TABLE placed AS SELECT *, row_number() OVER (ORDER BY rank, component, key, repeat) - 1 AS pos "
        "FROM selection"
    )
    (total,) = con.execute("SELECT count(*) FROM placed").fetchone() or (0,)
    tars = [r[0] for r in con.execute("SELECT DISTINCT tar FROM placed ORDER BY tar").fetchall()]
    copies_per_tar = dict(con.execute("SELECT tar, count(*) FROM placed GROUP BY tar").fetchall())
    # Bytes the copies will take (a repeated sample counts as often as it is copied).
    copy_bytes = sum(Path(t).stat().st_size * copies_per_tar[t] / max(1, _samples_in(t)) for t in tars)
    buckets = max(1, math.ceil(copy_bytes / recipe.output.bucket_bytes))
    bucket_dir = work / "buckets"
    bucket_dir.mkdir(parents=True, exist_ok=True)
    files = [open(bucket_dir / f"{b:05d}.tar", "wb") for b in range(buckets)]  # noqa: SIM115
    streams = [TarStream(f) for f in files]
    try:
        for tar in tars:  # pass 1: each input shard read once, in order
            wanted: dict[int, list[int]] = {}
            for idx, pos in con.execute(
                "SELECT idx, pos FROM placed WHERE tar = ? ORDER BY idx, pos", [tar]
            ).fetchall():
                wanted.setdefault(idx, []).append(pos)
            for i, (_key, members) in enumerate(iter_members(Path(tar))):
                for pos in wanted.get(i, ()):
                    streams[pos * buckets // total].add_sample(f"{pos:012d}", members)
    finally:
        for s, f in zip(streams, files, strict=True):
            s.close()
            f.close()
    writer = ShardWriter(
        out,
        recipe.shard_prefix(),
        max_samples=recipe.output.max_samples_per_shard,
        max_bytes=recipe.output.max_bytes_per_shard,
        token_counter=make_token_counter(recipe.tokenizer.type, recipe.tokenizer.path),
    )
    for b in range(buckets):  # pass 2: one bucket in memory at a time, in position order
        path = bucket_dir / f"{b:05d}.tar"
        members_at = {int(k): m for k, m in iter_members(path)}
        lo, hi = -(-b * total // buckets), -(-(b + 1) * total // buckets)
        rows = con.execute(
            "SELECT pos, component, key, repeat FROM placed WHERE pos >= ? AND pos < ? ORDER BY pos", [lo, hi]
        ).fetchall()
        for pos, component, key, repeat in rows:
            record = decode_sample(key, members_at.pop(pos))
            meta = {**record.meta, "mixture": {"component": component, "source": record.source, "key": key}}
            if repeat:
                meta["mixture"]["repeat"] = repeat
            record = record.model_copy(update={"key": _mixture_key(component, key, repeat), "source": component})
            record.meta = meta
            writer.write(record, origin=f"{component}:{key}" + (f"#r{repeat}" if repeat else ""))
        if members_at:
            raise RuntimeError(f"bucket {b} held {len(members_at)} samples outside its positions (a bug)")
        path.unlink()
        crash_point("mixture_bucket")
    con.close()
    return writer.close()


def _samples_in(tar: str) -> int:
    stats = Path(tar).with_suffix(".stats.json")
    return int(json.loads(stats.read_text())["samples"]) if stats.is_file() else 1


def build_mixture(
    recipe: MixtureRecipe,
    out: Path,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> BuildResult:
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
        state = target.state(rhash, overwrite)
        target.start(state, {"recipe_sha256": rhash, "prefix": recipe.shard_prefix()}, keep=(DATASETS,))
        _restart_mixing(target, recipe.shard_prefix())
        check_tokenizer(recipe.tokenizer)
        dirs = resolve_datasets(recipe, target.root, workers, progress, executor, address, overwrite)
        plans, total_tokens, identities = plan_components(recipe, dirs, target.root)
        selection = _selection_table(recipe, plans, dirs)
        shards = _shuffle_and_write(recipe, selection, target.work, target.root)
        manifest = _manifest(recipe, rhash, target.root, shards, plans, total_tokens, identities, dirs)
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


def _restart_mixing(target: OutputDir, prefix: str) -> None:
    """The mixing stage starts over: its work files and shards go; finished sub-builds in _datasets/ stay."""
    for child in target.work.iterdir():
        if child.name != PLAN:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for stale in target.root.glob(f"{prefix}-[0-9]*"):
        stale.unlink()


def _manifest(
    recipe: MixtureRecipe,
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
        kind=_one_kind(dirs),
        tool_version=__version__,
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=rhash,
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


def _one_kind(dirs: dict[str, Path]) -> str:
    kinds = {read_manifest(d).kind for d in dirs.values()}
    if len(kinds) != 1:
        raise CurationError(f"a mixture's datasets must hold one record kind; they hold {', '.join(sorted(kinds))}")
    return kinds.pop()
