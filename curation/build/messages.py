"""The typed messages between a build's stages.

plan -> :class:`PartitionTask` (one per partition, to a worker process or a Ray task) -> the worker stages
shards and writes :class:`PartitionStats` -> :class:`PartitionResult` back to the driver, which reads every
partition's stats once (:meth:`Staged.read`) and hands the :class:`StagedShard` s to the global steps and the
commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from curation.build.relocate import Relocator
from curation.recipe import BuildRecipe
from curation.sources import Partition
from curation.steps.contract import Resources
from shards.atomic import atomic_write_json
from shards.manifest import ShardInfo

STATS_FILE = "stats.json"


def partition_dir(work: Path, gid: int) -> Path:
    """Where partition ``gid`` is staged (renamed into place when complete)."""
    return work / f"p{gid:05d}"


def stale_staging(work: Path) -> list[Path]:
    """Staging directories of killed attempts (``pNNNNN.tmp-<pid>-<random>``): never a finished partition."""
    return sorted(work.glob("p*.tmp-*"))


def staged_stem(number: int) -> str:
    """The file stem of a partition's staged shard ``number`` (``000003``: ``000003.tar``, ``.parquet``...)."""
    return f"{number:06d}"


class WorkChannel(Protocol):
    """How a partition task that may run away from the driver's disk hands its partition over (a build into a
    bucket on Ray: ``curation.storage.work.PartitionChannel``)."""

    def claim(self, work: Path) -> None:
        """Mark ``work`` as the driver's (a node that sees the mark shares its disk and stages there)."""
        ...

    def stage_on_worker(self, work: Path) -> tuple[Path, bool]:
        """Where to stage on this node, and whether that folder is the node's own (cleared once published)."""
        ...

    def publish(self, folder: Path) -> None:
        """Hand the finished partition ``folder`` over (the driver copies it into its ``work`` if it lacks it)."""
        ...

    def share(self, paths: Iterable[str]) -> dict[str, str]:
        """In the driver: hand the plan's files over; {path: the key a node fetches it by}."""
        ...

    def fetch(self, path: str, key: str) -> str:
        """On a node: where to read the plan's file ``path`` here (itself when this node sees it)."""
        ...


@dataclass(frozen=True)
class PartitionTask:
    """One partition to process, sent to a worker process or a Ray task (pickled)."""

    recipe: BuildRecipe
    partition: Partition
    gid: int
    work: Path
    resources: Resources = field(default_factory=Resources)  # what the task needs of the machine it runs on
    where: Relocator = field(default_factory=lambda: Relocator(None))  # origins are recorded relative to the input root
    channel: WorkChannel | None = None  # set: the task publishes its finished partition (the driver's disk not needed)
    copies: dict[str, str] = field(default_factory=dict)  # URL -> the driver's copy (a node without it makes its own)
    plan_files: dict[str, str] = field(default_factory=dict)  # with a channel: the plan's files -> their keys there

    @property
    def label(self) -> str:
        return f"partition {self.gid} (source {self.partition.source!r}, #{self.partition.index})"


@dataclass(frozen=True)
class PartitionResult:
    gid: int
    seconds: float
    placement: dict[str, Any] = field(default_factory=dict)  # where it ran: host, pid, GPUs, Ray node (run log)


class SidecarRef(NamedTuple):
    """A staged shard's sidecar, as the global steps query it (in dataset order: partition, shard number)."""

    partition: int
    number: int
    path: Path


@dataclass(frozen=True)
class StagedShard:
    """A shard a partition staged in its work directory, and its position in dataset order."""

    partition: int
    number: int
    folder: Path
    info: ShardInfo

    @property
    def where(self) -> tuple[int, int]:
        return (self.partition, self.number)

    @property
    def tar(self) -> Path:
        return self.folder / self.info.name

    @property
    def sidecar(self) -> Path:
        return self.folder / self.info.sidecar

    @property
    def stats(self) -> Path:
        return self.folder / self.info.stats

    @property
    def ref(self) -> SidecarRef:
        return SidecarRef(self.partition, self.number, self.sidecar)


class PartitionStats(BaseModel):
    """What a partition leaves in ``stats.json`` when it is done: written once by its worker, read once by
    the driver."""

    model_config = ConfigDict(extra="forbid")
    gid: int
    partition: Partition
    accounting: dict[str, Any]  # ``Accounting.to_dict()``
    shards: list[ShardInfo]
    rejects: list[ShardInfo]
    reports: dict[str, dict[str, Any]]
    seconds: float

    def write(self, folder: Path) -> None:
        atomic_write_json(folder / STATS_FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, work: Path, gid: int) -> PartitionStats:
        return cls.model_validate(json.loads((partition_dir(work, gid) / STATS_FILE).read_text()))

    @staticmethod
    def is_done(work: Path, gid: int) -> bool:
        return (partition_dir(work, gid) / STATS_FILE).is_file()

    def staged_shards(self, work: Path) -> list[StagedShard]:
        folder = partition_dir(work, self.gid)
        staged = []
        for number, info in enumerate(self.shards):
            if info.name != f"{staged_stem(number)}.tar":
                raise RuntimeError(f"partition {self.gid}: staged shard {number} is named {info.name} (a bug)")
            staged.append(StagedShard(self.gid, number, folder, info))
        return staged

    def staged_rejects(self, work: Path) -> list[StagedShard]:
        folder = partition_dir(work, self.gid) / "rejects"
        return [StagedShard(self.gid, number, folder, info) for number, info in enumerate(self.rejects)]


@dataclass(frozen=True)
class Staged:
    """Every partition's stats, read once after the partitions ran, in dataset order."""

    partitions: list[PartitionStats]
    work: Path

    @classmethod
    def read(cls, work: Path, gids: list[int]) -> Staged:
        return cls([PartitionStats.read(work, g) for g in gids], work)

    def shards(self) -> list[StagedShard]:
        return [s for p in self.partitions for s in p.staged_shards(self.work)]

    def rejects(self) -> list[StagedShard]:
        return [s for p in self.partitions for s in p.staged_rejects(self.work)]

    def sidecars(self) -> list[SidecarRef]:
        return [s.ref for s in self.shards()]
