"""Contamination-gated trials: every trial's mixture is checked against exactly the benchmarks its evaluator
scores, with the decontaminate step's matcher (perceptual image hashes, question n-grams), before it trains.

Each shard a mixture draws from is checked once per sweep (all its samples), and the result kept in
``<sweep>/contamination/`` keyed by the shard's sha256 and the check's settings; a trial then only looks up
the samples it uses. A trial's finding (``contamination.json`` in its directory) counts the overlapping
training samples per benchmark and names the first ones; the report shows it beside the decision.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.recipe import DecontaminateStep, SelectionRecipe
from curation.recipe.steps import Benchmark, DecontaminationMatch
from curation.sample import Sample
from shards.atomic import atomic_write_json, content_sha256
from shards.codec import decode_sample
from shards.manifest import read_manifest
from shards.reader import iter_members

FINDING_NAME = "contamination.json"
EXAMPLES = 20  # overlapping training samples named per trial


def evaluator_benchmarks(recipe: SelectionRecipe) -> list[Benchmark]:
    """The benchmark data the trials are scored on: the built-in evaluator's sets, else the recipe's list."""
    evaluator = recipe.evaluator
    if evaluator.type == "builtin":
        return [Benchmark(name=b.name, shards=b.shards, images=None, questions=None) for b in evaluator.benchmarks]
    return list(recipe.contamination.benchmarks)


class ContaminationCheck:
    """The sweep's check: a matcher over its benchmarks and a per-shard cache of what matched."""

    def __init__(self, recipe: SelectionRecipe, sweep: Path) -> None:
        from curation.steps.contract import StepContext
        from curation.steps.decontaminate import Decontaminate, check_benchmarks, prepare_benchmarks

        self.action = recipe.contamination.action
        self.benchmarks = evaluator_benchmarks(recipe)
        self.work = sweep / "contamination"
        self._shards: dict[str, dict[str, list[str]]] = {}
        self._matcher: Decontaminate | None = None
        self.key = ""
        self.method = recipe.contamination.hash
        if self.action != "off" and self.benchmarks:
            settings = recipe.contamination.model_dump(include=set(DecontaminationMatch.model_fields))
            cfg = DecontaminateStep(step="decontaminate", benchmarks=self.benchmarks, **settings)
            check_benchmarks(cfg, "contamination")
            # the settings and what the benchmark files hold now: a rebuilt benchmark is checked afresh
            self.key = content_sha256([cfg.model_dump(mode="json"), [_content(b) for b in self.benchmarks]])[:16]
            prepare_benchmarks(cfg, self.key, self.work)
            self._matcher = Decontaminate(cfg, StepContext(self.key, self.work))

    def _sidecar_hashes(self, tar: Path) -> dict[str, list[int]]:
        """The image hashes the shard's sidecar already holds (a build that recorded them): no image decoded."""
        column = f"image_{self.method}"
        try:
            table = pq.read_table(tar.with_suffix(".parquet"), columns=["key", column])
        except (OSError, ValueError, KeyError):  # no sidecar, or one without that column
            return {}
        keys, hashes = table.column("key").to_pylist(), table.column(column).to_pylist()
        return {k: h for k, h in zip(keys, hashes, strict=True) if h is not None and None not in h}

    @property
    def enabled(self) -> bool:
        return self._matcher is not None

    @property
    def identity(self) -> str:
        """What a trial's finding was made by: the action and, when enabled, the settings and benchmarks."""
        return f"{self.action}:{self.key}" if self.enabled else f"{self.action}:unchecked"

    def check_trial(self, directory: Path, mixture: Path, label: str) -> dict[str, Any]:
        """The trial's finding (written to its directory; read back when already there). With ``refuse``, a
        contaminated mixture is a CurationError naming the overlap."""
        path = directory / FINDING_NAME
        try:
            finding = json.loads(path.read_text())
        except (OSError, ValueError):
            finding = None
        if not isinstance(finding, dict) or finding.get("check") != self.identity:  # absent, or another check's
            finding = {"check": self.identity, **self._finding(mixture)}
            atomic_write_json(path, finding)
        if self.action == "refuse" and finding.get("samples"):
            shown = ", ".join(f"{e['key']} ({e['reason']})" for e in finding["examples"][:5])
            raise CurationError(
                f"trial {label}: {finding['samples']} training samples overlap the benchmarks it is evaluated on "
                f"({_counts(finding['by_benchmark'])}; e.g. {shown}); contamination.action is refuse"
            )
        return finding

    def _finding(self, mixture: Path) -> dict[str, Any]:
        if not self.enabled:
            why = "off" if self.action == "off" else "the evaluator names no benchmark data (contamination.benchmarks)"
            return {"checked": False, "why": why}
        table = pq.read_table(mixture, columns=["tar", "key"])
        pairs = sorted(set(zip(table.column("tar").to_pylist(), table.column("key").to_pylist(), strict=True)))
        examples, by_benchmark, samples = [], Counter(), 0
        for tar, key in pairs:
            reasons = self._shard(tar).get(key)
            if not reasons:
                continue
            samples += 1
            by_benchmark.update(r.rsplit(":", 1)[-1] for r in reasons)  # a sample counts for every benchmark
            if len(examples) < EXAMPLES:
                examples.append({"key": key, "shard": Path(tar).name, "reason": ", ".join(reasons)})
        return {
            "checked": True,
            "benchmarks": [b.name for b in self.benchmarks],
            "samples": samples,
            "of": len(pairs),
            "by_benchmark": dict(sorted(by_benchmark.items())),
            "examples": examples,
        }

    def _shard(self, tar: str) -> dict[str, list[str]]:
        """key -> reasons (one per benchmark) for the samples of one shard that match (checked once, cached)."""
        if tar not in self._shards:
            cache = self.work / f"{self.key}-{_shard_sha256(Path(tar))}.hits.json"  # key -> reasons
            try:
                self._shards[tar] = json.loads(cache.read_text())
            except (OSError, ValueError):
                self._shards[tar] = self._scan(Path(tar))
                atomic_write_json(cache, self._shards[tar])
        return self._shards[tar]

    def _scan(self, tar: Path) -> dict[str, list[str]]:
        assert self._matcher is not None  # only an enabled check scans
        known = self._sidecar_hashes(tar)
        hits = {}
        for key, members in iter_members(tar):
            sample = Sample(decode_sample(key, members), origin=str(tar))
            if key in known:
                sample.image_hashes[self.method] = known[key]
            reasons = [r for r in self._matcher.reasons(sample) if r != "image_corrupt"]
            if reasons:
                hits[key] = reasons
        return hits


def _shard_sha256(tar: Path) -> str:
    """The shard's sha256 from its dataset's manifest (its content identity), else its path and size."""
    try:
        for shard in read_manifest(tar.parent).shards:
            if shard.name == tar.name:
                return shard.sha256[:16]
    except (OSError, ValueError):
        pass
    stat = tar.stat()
    return content_sha256([str(tar.resolve()), stat.st_size, stat.st_mtime_ns])[:16]


def _content(bench: Benchmark) -> list[Any]:
    """What identifies a benchmark's data: a built dataset's shard hashes, else the files' sizes and times."""
    if bench.shards:
        try:
            return [s.sha256 for s in read_manifest(Path(bench.shards)).shards]
        except (OSError, ValueError):
            return [str(bench.shards)]
    files = [Path(bench.questions)] if bench.questions else []
    if bench.images:
        files += sorted(p for p in Path(bench.images).rglob("*") if p.is_file())
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _counts(by_benchmark: dict[str, int]) -> str:
    return ", ".join(f"{n} with {bench}" for bench, n in by_benchmark.items())


def merge_findings(findings: list[dict[str, Any]]) -> dict[str, Any]:
    """One mixture's finding over its seeds (each seed samples its own mixture): the seed that trained on the
    most overlapping samples (its counts, per benchmark, and examples)."""
    checked = [f for f in findings if f.get("checked")]
    if not checked:
        return findings[0] if findings else {"checked": False, "why": "no trial"}
    return max(checked, key=lambda f: f["samples"])
