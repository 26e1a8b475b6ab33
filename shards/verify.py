"""Re-check a built dataset: shard, sidecar and stats files against the manifest (sha256, sizes, sample
counts in tar vs sidecar vs stats vs manifest, key order), the totals, the wids index, files the manifest
does not list, stray temporary files, and the accounting identities (per step, between steps, per source).

Every finding is one line in :attr:`VerifyReport.problems`; nothing here raises on a damaged dataset."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import TMP_SUFFIX, sha256_file
from shards.embeddings import EmbeddingsError, load_embeddings, rows_per_sample
from shards.manifest import STATS_NAME, DatasetManifest, ManifestError, ShardInfo, read_manifest
from shards.reader import TruncatedShardError, iter_members

# Manifest totals: summed over the shard entries (samples, bytes), counted (shards), or summed over the
# per-shard stats files (the rest).
TOTAL_KEYS = ("samples", "bytes", "shards", "images", "text_tokens", "answer_tokens")
_STATS_TOTALS = ("images", "text_tokens", "answer_tokens")


@dataclass
class VerifyReport:
    directory: Path
    shards_checked: int = 0  # the dataset's shards (rejects shards are counted apart)
    samples_checked: int = 0  # the dataset's samples read from the tars
    rejects_checked: int = 0  # rejects shards (``output.rejects``)
    rejects_samples_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """``8 shards, 457 samples (+ 5 rejects shards)``."""
        text = f"{self.shards_checked} shards, {self.samples_checked:,} samples"
        if self.rejects_checked:
            text += f" (+ {self.rejects_checked} rejects shards)"
        return text


def verify_dataset(directory: Path, check_members: bool = True) -> VerifyReport:
    directory = Path(directory)
    report = VerifyReport(directory)
    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ManifestError) as exc:
        report.problems.append(str(exc))
        return report
    shard_stats: list[dict[str, Any] | None] = []
    for shard in manifest.shards:
        report.shards_checked += 1
        stats, samples = _check_shard(directory, shard, check_members, report.problems)
        report.samples_checked += samples
        shard_stats.append(stats)
    for shard in manifest.rejects:
        report.rejects_checked += 1
        _, samples = _check_shard(directory, shard, check_members, report.problems)
        report.rejects_samples_checked += samples
    _check_wids_index(directory, manifest, report.problems)
    _check_unlisted(directory, manifest, report.problems)
    stray = sorted(p.name for p in directory.rglob(f"*{TMP_SUFFIX}"))
    if stray:
        report.problems.append(f"temporary files left behind: {', '.join(stray[:5])}")
    _check_totals(manifest, shard_stats, report.problems)
    try:
        _check_accounting(manifest.accounting, sum(s.samples for s in manifest.shards), report.problems)
        _check_plan(directory, manifest.accounting, report.problems)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        report.problems.append(f"accounting is malformed ({type(exc).__name__}: {exc})")
    return report


def _check_shard(
    directory: Path, shard: ShardInfo, check_members: bool, problems: list[str]
) -> tuple[dict[str, Any] | None, int]:
    """Check one shard's tar, sidecar and stats file; returns (its stats, samples read from the tar)."""
    stats = _check_stats(directory, shard, problems)
    path = directory / shard.name
    tar_ok = path.is_file()
    if not tar_ok:
        problems.append(f"{shard.name}: missing")
    else:
        if path.stat().st_size != shard.bytes:
            problems.append(f"{shard.name}: size {path.stat().st_size} != manifest {shard.bytes}")
        if sha256_file(path) != shard.sha256:
            problems.append(f"{shard.name}: sha256 differs from the manifest")
    sidecar_path = directory / shard.sidecar
    if not sidecar_path.is_file():
        problems.append(f"{shard.sidecar}: missing sidecar")
        return stats, 0
    if shard.sidecar_sha256 is not None and sha256_file(sidecar_path) != shard.sidecar_sha256:
        problems.append(f"{shard.sidecar}: sha256 differs from the manifest")
    try:
        sidecar = pq.read_table(sidecar_path, columns=["key", "n_images"] if shard.embeddings else ["key"])
    except (pa.ArrowException, OSError, KeyError) as exc:
        problems.append(f"{shard.sidecar}: unreadable sidecar ({_one_line(str(exc))})")
        return stats, 0
    sidecar_keys = sidecar.column("key").to_pylist()
    if len(sidecar_keys) != shard.samples:
        problems.append(f"{shard.sidecar}: {len(sidecar_keys)} rows != manifest {shard.samples}")
    if shard.embeddings:
        _check_embeddings(directory, shard, sidecar.column("n_images").to_pylist(), problems)
    if not (check_members and tar_ok):
        return stats, 0
    try:
        tar_keys = [key for key, _ in iter_members(path)]
    except TruncatedShardError as exc:
        problems.append(str(exc))
        return stats, exc.samples_read
    if tar_keys != sidecar_keys:
        problems.append(f"{shard.name}: tar keys differ from sidecar keys (count or order)")
    return stats, len(tar_keys)


def _check_embeddings(directory: Path, shard: ShardInfo, n_images: list[int], problems: list[str]) -> None:
    """Each embeddings file the manifest lists: present, its sha256, and one row per sample or image."""
    for name, entry in sorted((shard.embeddings or {}).items()):
        path = directory / entry.file
        if not path.is_file():
            problems.append(f"{entry.file}: missing embeddings {name!r} of {shard.name}")
            continue
        if sha256_file(path) != entry.sha256:
            problems.append(f"{entry.file}: sha256 differs from the manifest")
            continue
        want = (sum(rows_per_sample(entry.per, n_images)), entry.dim)
        try:
            shape = load_embeddings(path).shape
        except EmbeddingsError as exc:
            problems.append(f"{entry.file}: {_one_line(str(exc))}")
            continue
        if shape != want or entry.rows != want[0]:
            problems.append(f"{entry.file}: shape {shape}, the sidecar and manifest want {want}")


def _check_stats(directory: Path, shard: ShardInfo, problems: list[str]) -> dict[str, Any] | None:
    path = directory / shard.stats
    if not path.is_file():
        problems.append(f"{shard.stats}: missing stats file")
        return None
    try:
        stats = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        problems.append(f"{shard.stats}: unreadable stats file ({_one_line(str(exc))})")
        return None
    if not isinstance(stats, dict):
        problems.append(f"{shard.stats}: unreadable stats file (not a JSON object)")
        return None
    expected = {"samples": shard.samples, "bytes": shard.bytes, "sha256": shard.sha256}
    if shard.sidecar_sha256 is not None:
        expected["sidecar_sha256"] = shard.sidecar_sha256
    for key, want in expected.items():
        if stats.get(key) != want:
            problems.append(f"{shard.stats}: {key} {stats.get(key)!r} != manifest {want!r}")
    return stats


def _check_wids_index(directory: Path, manifest: DatasetManifest, problems: list[str]) -> None:
    if not manifest.wids_index:
        return
    path = directory / manifest.wids_index
    if not path.is_file():
        problems.append(f"{manifest.wids_index}: missing wids index")
        return
    try:
        index = json.loads(path.read_bytes())
        listed = [(s["url"], s["nsamples"]) for s in index["shardlist"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{manifest.wids_index}: unreadable wids index ({type(exc).__name__}: {_one_line(str(exc))})")
        return
    if listed != [(s.name, s.samples) for s in manifest.shards]:
        problems.append(f"{manifest.wids_index}: does not match the manifest's shard list")


def _check_unlisted(directory: Path, manifest: DatasetManifest, problems: list[str]) -> None:
    """Tars the manifest does not list: a loader globbing ``*.tar`` would read them."""
    listed = {s.name for s in [*manifest.shards, *manifest.rejects]}
    found = [p.name for p in directory.glob("*.tar")]
    if (directory / "rejects").is_dir():
        found += [f"rejects/{p.name}" for p in (directory / "rejects").glob("*.tar")]
    listed |= {e.file for s in manifest.shards for e in (s.embeddings or {}).values()}
    found += [p.name for p in directory.glob("*.emb.*.npy")]
    unlisted = sorted(n for n in found if n not in listed)
    if unlisted:
        more = f" (+ {len(unlisted) - 5} more)" if len(unlisted) > 5 else ""
        problems.append(f"shard files not listed in the manifest: {', '.join(unlisted[:5])}{more}")


def _check_totals(manifest: DatasetManifest, shard_stats: list[dict[str, Any] | None], problems: list[str]) -> None:
    computed: dict[str, int | None] = {
        "samples": sum(s.samples for s in manifest.shards),
        "bytes": sum(s.bytes for s in manifest.shards),
        "shards": len(manifest.shards),
    }
    complete = all(s is not None for s in shard_stats)  # a missing stats file is reported already
    for key in _STATS_TOTALS:
        values = [s.get(key) for s in shard_stats if s is not None]
        ints = [v for v in values if isinstance(v, int)]
        if not complete:
            computed[key] = None
        elif len(ints) == len(values):
            computed[key] = sum(ints)
        else:
            problems.append(f"shard stats lack an integer {key!r} (needed for totals.{key})")
            computed[key] = None
    for key in TOTAL_KEYS:
        want = computed[key]
        if key not in manifest.totals:
            problems.append(f"totals.{key} missing from the manifest")
        elif want is not None and manifest.totals[key] != want:
            problems.append(f"totals.{key} {manifest.totals[key]} != sum over shards {want}")


def _check_accounting(acc: dict[str, Any], samples: int, problems: list[str]) -> None:
    """input + added == output + dropped for every step and source (``added``: a mixture's repeats); each
    step's output is the next step's input; the per-source summary agrees with the steps; the sources'
    outputs add up to the dataset's samples."""
    steps = acc.get("steps", [])
    for entry in steps:
        for source, c in entry["sources"].items():
            _check_identity(c, f"accounting step {entry['step']!r}, source {source!r}", problems)
    for a, b in pairwise(steps):
        for source in sorted(set(a["sources"]) | set(b["sources"])):
            out = a["sources"].get(source, {}).get("output", 0)
            inp = b["sources"].get(source, {}).get("input", 0)
            if out != inp:
                problems.append(
                    f"accounting source {source!r}: step {a['step']!r} output {out} != step {b['step']!r} input {inp}"
                )
    sources = acc.get("sources", {})
    for source, c in sources.items():
        _check_identity(c, f"accounting for source {source!r}", problems)
        if not steps:
            continue
        first = steps[0]["sources"].get(source, {}).get("input", 0)
        last = steps[-1]["sources"].get(source, {}).get("output", 0)
        by_reason: Counter[str] = Counter()
        for entry in steps:
            by_reason.update(entry["sources"].get(source, {}).get("dropped", {}))
        summary_dropped = {r: n for r, n in c.get("dropped", {}).items() if n}
        if (c["input"], c["output"]) != (first, last) or summary_dropped != {r: n for r, n in by_reason.items() if n}:
            problems.append(f"accounting for source {source!r}: the summary does not match the steps")
    if sources:
        output = sum(c["output"] for c in sources.values())
        if output != samples:
            problems.append(f"accounting: sources output {output} samples, the dataset holds {samples}")


def _check_plan(directory: Path, acc: dict[str, Any], problems: list[str]) -> None:
    """Every input row the plan counted entered the first step: per partition (its own accounting) and per
    source (the dataset's). A row that vanished inside a reader shows here even when every step balances."""
    path = directory / STATS_NAME
    partitions = json.loads(path.read_text()).get("partitions") if path.is_file() else None
    if partitions is None:  # shards written without a build, or a mixture (its inputs are checked on their own)
        return
    planned: Counter[str] = Counter()
    for p in partitions:
        planned[p["source"]] += p["rows"]
        first = p["accounting"]["steps"][0]["sources"].get(p["source"], {}).get("input", 0)
        if first != p["rows"]:
            problems.append(f"partition {p['partition']} ({p['source']}): planned {p['rows']} rows, {first} were read")
    steps = acc.get("steps", [])
    read = {source: c["input"] for source, c in steps[0]["sources"].items()} if steps else {}
    for source in sorted(set(planned) | set(read)):
        if planned[source] != read.get(source, 0):
            problems.append(f"source {source!r}: planned {planned[source]} rows, {read.get(source, 0)} were read")


def _check_identity(c: dict[str, Any], where: str, problems: list[str]) -> None:
    """input + added == output + dropped."""
    dropped = sum(c.get("dropped", {}).values())
    added = sum(c.get("added", {}).values())
    if c["input"] + added != c["output"] + dropped:
        plus = f" + added {added}" if added else ""
        problems.append(f"{where}: input {c['input']}{plus} != output {c['output']} + dropped {dropped}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
