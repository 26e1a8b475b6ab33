"""A build's work handed over through the bucket: its finished partitions under ``<prefix>/_work/pNNNNN/``.

A partition is copied up file by file, its ``stats.json`` (the marker of a finished partition) last, so a
partition whose ``stats.json`` is in the bucket is there whole; it is copied down through a temporary name and
renamed into place, so a stage never holds half a partition. Both directions serve two purposes:

- **resume elsewhere**: the driver copies each finished partition up (``WorkUploader`` in ``publish``), and a
  rerun on another machine copies them back into its own stage;
- **Ray across machines** (:class:`PartitionChannel`): with ``--executor ray`` into a bucket, each partition task
  stages its partition on its own node's disk and copies it up itself; the driver copies down each partition
  it does not have, before the global steps and the commit. The files the plan made in the driver's cache that
  partitions read (a LAION selection, OBELICS's overused URLs: ``Reader.plan_file_fields``) go the other way,
  through ``_work/plan-files/<sha256>/<name>``. The nodes need the store, never the driver's disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from curation.build.messages import STATS_FILE, PartitionStats, partition_dir
from curation.build.output_dir import WORK
from curation.cache import cache_root
from curation.errors import CurationError
from curation.recipe.storage import Storage
from curation.storage.store import Store, open_store
from curation.storage.urls import StoreURL
from shards.atomic import sha256_file

WORKER_STAGE_ENV = "VLM_CURATION_WORKER_STAGE"  # on a Ray node: where its partition tasks stage (never sent over)
PLAN_FILES = "plan-files"  # under _work/ in the bucket, and under a node's cache
DRIVER_MARK = "driver.json"  # in the driver's _work/: a node that sees it (the same token) shares its disk
_TMP = re.compile(r"^p\d{5}\.tmp-(\d+)-[0-9a-f]+$")


def stage_name(url: StoreURL) -> str:
    """The folder name of the local stage of builds into ``url`` (the same on every machine)."""
    return hashlib.sha256(url.url.encode()).hexdigest()[:16]


def partition_files(folder: Path) -> list[Path]:
    """A staged partition's files in the order they are copied: everything, then ``stats.json``."""
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name == STATS_FILE, str(p)))


def push_partition(store: Store, folder: Path, present: dict[str, int] | None = None) -> None:
    """Copy the finished partition ``folder`` (``.../pNNNNN``) to ``_work/pNNNNN/``, ``stats.json`` last. An
    object in ``present`` (key -> size) with the file's size is not copied again: a partition is written once."""
    for f in partition_files(folder):
        rel = f"{WORK}/{folder.name}/{f.relative_to(folder).as_posix()}"
        size = f.stat().st_size
        if present is not None and present.get(rel) == size:
            continue
        store.put_file(f, rel, sha256_file(f))
        if present is not None:
            present[rel] = size


def pull_partition(store: Store, work: Path, gid: int, names: Iterable[str]) -> None:
    """Copy partition ``gid`` (the files ``names`` under ``_work/pNNNNN/``, ``stats.json`` among them) from the
    bucket into ``work``: through a temporary name that a rerun sweeps (``stale_staging``), renamed into place."""
    final = partition_dir(work, gid)
    tmp = final.with_name(f"{final.name}.tmp-pull-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in sorted(names, key=lambda n: n == STATS_FILE):  # stats.json (the marker) last
        store.get_file(f"{WORK}/{final.name}/{name}", tmp / name)
    if PartitionStats.is_done(work, gid):  # finished here meanwhile (a node sharing this disk)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def pull_missing_partition(store: Store, work: Path, gid: int) -> None:
    """Partition ``gid`` from the bucket, where a partition task on another node published it."""
    if PartitionStats.is_done(work, gid):
        return
    rel = f"{WORK}/{partition_dir(work, gid).name}"
    names = [key[len(rel) + 1 :] for key in store.list(rel)]
    if STATS_FILE not in names:
        raise CurationError(
            f"partition {gid} finished on the Ray cluster but {store.url.child(rel)} holds no {STATS_FILE} (it was "
            "deleted meanwhile?); run the build again to resume"
        )
    pull_partition(store, work, gid, names)


@dataclass(frozen=True)
class PartitionChannel:
    """What a partition task of a build into a bucket needs to hand its partition over through the store: the
    URL, the recipe's storage options (never credentials: each node's own environment gives those) and the
    token of the driver's stage (a node that finds it in ``task.work`` shares the driver's disk)."""

    url: StoreURL
    options: Storage | None
    token: str

    @classmethod
    def new(cls, url: StoreURL, options: Storage | None) -> PartitionChannel:
        return cls(url, options, uuid.uuid4().hex)

    def claim(self, work: Path) -> None:
        """Mark ``work`` (the driver's ``_work/``) as the driver's: a node that reads this token there shares it."""
        work.mkdir(parents=True, exist_ok=True)
        (work / DRIVER_MARK).write_text(self.token)

    def stage_on_worker(self, work: Path) -> tuple[Path, bool]:
        """Where a partition task stages on this node, and whether that folder is the node's own (its partitions
        are removed once published): ``$VLM_CURATION_WORKER_STAGE/<stage>/_work``; else the driver's ``work``
        when this node sees it (the same disk); else the same path on this node's own disk."""
        root = os.environ.get(WORKER_STAGE_ENV)
        if root:
            own = Path(root) / stage_name(self.url) / WORK
        else:
            with contextlib.suppress(OSError):
                if (work / DRIVER_MARK).read_text() == self.token:
                    return work, False
            own = work
        try:
            own.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CurationError(
                f"node {socket.gethostname()} cannot create its stage {own} ({exc.strerror}); set {WORKER_STAGE_ENV} "
                "on the node to a writable directory"
            ) from None
        _sweep_dead_attempts(own)
        return own, True

    def publish(self, folder: Path) -> None:
        """Copy the finished partition ``folder`` to the bucket (``stats.json`` last)."""
        push_partition(open_store(self.url, self.options, check=False), folder)

    def share(self, paths: Iterable[str]) -> dict[str, str]:
        """In the driver: copy the plan's files (``paths``) to ``_work/plan-files/<sha256>/<name>``, each once
        (an object already there is not copied again); {path: its key}."""
        store = open_store(self.url, self.options, check=False)
        present = set(store.list(f"{WORK}/{PLAN_FILES}"))
        shared = {}
        for path in sorted(set(paths)):
            digest = sha256_file(Path(path))
            key = f"{WORK}/{PLAN_FILES}/{digest}/{Path(path).name}"
            if key not in present:
                store.put_file(Path(path), key, digest)
                present.add(key)
            shared[path] = key
        return shared

    def fetch(self, path: str, key: str) -> str:
        """On a node: ``path`` when it sees the driver's file, else the copy of it in the bucket (``key``), copied
        once into this node's cache."""
        if os.path.isfile(path):
            return path
        local = cache_root() / PLAN_FILES / key.split("/")[-2] / Path(path).name
        if not local.is_file():
            open_store(self.url, self.options, check=False).get_file(key, local)
        return str(local)


def _sweep_dead_attempts(work: Path) -> None:
    """Staging folders of attempts killed on this node (their process is gone): never a live attempt's."""
    for tmp in work.glob("p*.tmp-*"):
        m = _TMP.match(tmp.name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass
