"""Which copies of which samples a mixture takes (deterministic, from the sidecars only): per component,
``floor(epochs)`` whole repeats of every sample plus a seeded subsample for the fraction. Share targets are
answer tokens: the subsample is the prefix of a seeded order whose answer tokens come closest to what is left
of the target."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curation.build.plan import check_tokenizer
from curation.errors import CurationError
from curation.recipe import Component, MixtureRecipe
from shards import read_manifest


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


def rank(seed: int, *parts: str | int) -> int:
    """A stable 63-bit rank: blake2b of the canonical JSON of (seed, *parts) as plain ints and strings (not
    Python's hash, numpy's generators or ``repr``, whose form differs between numpy and Python scalars)."""
    plain = [seed, *parts]
    if not all(type(x) in (int, str) for x in plain):
        raise TypeError(f"ranks hash plain ints and strings only, got {[type(x).__name__ for x in plain]}")
    h = hashlib.blake2b(_CANONICAL(plain).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


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
    from curation.mixture.datasets import shown_paths

    mix_tokenizer = recipe.tokenizer.model_dump(mode="json")
    mix_fingerprint = check_tokenizer(recipe.tokenizer)
    identities = {}
    shown = shown_paths(recipe, dirs, out)  # no absolute out paths, no mirror paths: a URL as the recipe gives it
    for alias, path in dirs.items():
        m = read_manifest(path)
        theirs = (m.recipe or {}).get("tokenizer", {"type": "regex", "path": None})
        same = (  # the counts' identity; a build from before it was recorded: the tokenizer as its recipe named it
            m.tokenizer_fingerprint == mix_fingerprint
            if m.tokenizer_fingerprint is not None
            else {k: theirs.get(k) for k in mix_tokenizer} == mix_tokenizer
        )
        if not same:
            raise CurationError(
                f"datasets.{alias}: built with tokenizer {theirs}, but the mixture counts tokens with {mix_tokenizer}; "
                "shares would not add up: rebuild it with the same tokenizer or set the mixture's tokenizer"
            )
        identities[alias] = {"path": shown[alias], "recipe_sha256": m.recipe_sha256, "samples": m.totals["samples"]}
    one_kind(dirs)
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
    ranks = np.array([rank(seed, "pick", p.component.name, k) for k in keys], dtype=np.int64)
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


def one_kind(dirs: dict[str, Path]) -> str:
    kinds = {read_manifest(d).kind for d in dirs.values()}
    if len(kinds) != 1:
        raise CurationError(f"a mixture's datasets must hold one record kind; they hold {', '.join(sorted(kinds))}")
    return kinds.pop()


def selection_table(recipe: MixtureRecipe, plans: list[ComponentPlan], dirs: dict[str, Path]) -> pa.Table:
    cols: dict[str, list[Any]] = {k: [] for k in ("rank", "component", "dataset", "shard", "idx", "key", "repeat")}
    for p in plans:
        shard = p.rows.column("shard").to_pylist()
        idx = p.rows.column("idx").to_pylist()
        key = p.rows.column("key").to_pylist()
        copies = [(r, rep) for rep in range(p.repeats) for r in range(p.available)]
        copies += [(int(r), p.repeats) for r in p.sampled]
        for r, rep in copies:
            cols["rank"].append(rank(recipe.seed, "shuffle", p.component.name, key[r], rep))
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
