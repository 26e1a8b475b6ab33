"""Re-check a built dataset: shard hashes and sizes, sample counts in tar vs sidecar vs manifest,
key order, the wids index, stray temporary files, and the accounting identity."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from shards.atomic import TMP_SUFFIX, sha256_file
from shards.manifest import read_manifest
from shards.reader import TruncatedShardError, iter_members


@dataclass
class VerifyReport:
    directory: Path
    shards_checked: int = 0
    samples_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(directory: Path, check_members: bool = True) -> VerifyReport:
    directory = Path(directory)
    report = VerifyReport(directory)
    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ValueError) as exc:
        report.problems.append(str(exc))
        return report
    for shard in [*manifest.shards, *manifest.rejects]:
        path = directory / shard.name
        report.shards_checked += 1
        if not path.is_file():
            report.problems.append(f"{shard.name}: missing")
            continue
        if path.stat().st_size != shard.bytes:
            report.problems.append(f"{shard.name}: size {path.stat().st_size} != manifest {shard.bytes}")
        if sha256_file(path) != shard.sha256:
            report.problems.append(f"{shard.name}: sha256 differs from the manifest")
        sidecar_path = directory / shard.sidecar
        if not sidecar_path.is_file():
            report.problems.append(f"{shard.sidecar}: missing sidecar")
            continue
        sidecar_keys = pq.read_table(sidecar_path, columns=["key"]).column("key").to_pylist()
        if len(sidecar_keys) != shard.samples:
            report.problems.append(f"{shard.sidecar}: {len(sidecar_keys)} rows != manifest {shard.samples}")
        if check_members:
            try:
                tar_keys = [key for key, _ in iter_members(path)]
            except TruncatedShardError as exc:
                report.problems.append(str(exc))
                continue
            report.samples_checked += len(tar_keys)
            if tar_keys != sidecar_keys:
                report.problems.append(f"{shard.name}: tar keys differ from sidecar keys (count or order)")
    if manifest.wids_index:
        index = json.loads((directory / manifest.wids_index).read_text())
        listed = [(s["url"], s["nsamples"]) for s in index["shardlist"]]
        if listed != [(s.name, s.samples) for s in manifest.shards]:
            report.problems.append(f"{manifest.wids_index}: does not match the manifest's shard list")
    stray = sorted(p.name for p in directory.rglob(f"*{TMP_SUFFIX}"))
    if stray:
        report.problems.append(f"temporary files left behind: {', '.join(stray[:5])}")
    total = sum(s.samples for s in manifest.shards)
    if total != manifest.totals.get("samples"):
        report.problems.append(f"totals.samples {manifest.totals.get('samples')} != sum over shards {total}")
    for source, acc in manifest.accounting.get("sources", {}).items():
        dropped = sum(acc.get("dropped", {}).values())
        if acc["input"] != acc["output"] + dropped:
            report.problems.append(
                f"accounting for source {source!r}: input {acc['input']} != output {acc['output']} + dropped {dropped}"
            )
    return report
