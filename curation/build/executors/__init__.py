"""Executors run a build's partition tasks: ``local`` (a process pool on this machine) or ``ray`` (one Ray
task per partition on a Ray cluster). Both run ``curation.build.partition.process_partition`` on the same
``PartitionTask`` s and leave the same files, so the output does not depend on the executor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from curation.build.executors.local import run_local
from curation.build.messages import PartitionResult, PartitionTask
from curation.errors import CurationError
from curation.sources import Partition, Reader
from curation.steps.contract import Resources

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    kind: str
    threads: int  # CPU threads the driver may use for its own work (the global steps)

    def run(
        self,
        tasks: list[PartitionTask],
        on_progress: Callable[[int, int], None],
        on_done: Callable[[PartitionResult], None],
    ) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def download(self, reader: Reader, partitions: list[Partition]) -> None:
        """Fetch the downloads of ``partitions`` before they run, where this executor distributes them itself."""

    def imap(self, fn: Callable[..., Any], args: list[tuple], label: Callable[[tuple], str]) -> Iterator[Any]:
        """``fn(*a)`` for each of ``args``, results in order (``label(a)`` names one in errors)."""
        ...

    def call(self, fn: Callable[..., Any], args: tuple, resources: Resources) -> Any:
        """``fn(*args)`` once, where ``resources`` are (a GPU for a model)."""
        ...


class LocalExecutor:
    kind = "local"

    def __init__(self, workers: int | None) -> None:
        self.workers = workers or 1
        self.threads = self.workers

    def run(
        self,
        tasks: list[PartitionTask],
        on_progress: Callable[[int, int], None],
        on_done: Callable[[PartitionResult], None],
    ) -> None:
        run_local(tasks, self.workers, on_progress, on_done)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "workers": self.workers}

    def download(self, reader: Reader, partitions: list[Partition]) -> None:
        """Nothing ahead: each partition task downloads its own slice."""

    def imap(self, fn: Callable[..., Any], args: list[tuple], label: Callable[[tuple], str]) -> Iterator[Any]:
        """In this process, one after another (the work it is used for is disk-bound)."""
        return (fn(*a) for a in args)

    def call(self, fn: Callable[..., Any], args: tuple, resources: Resources) -> Any:
        """In this process: it sees this machine's GPUs, like the workers."""
        return fn(*args)


class PartitionsOnly(LocalExecutor):
    """``executor`` for the partition tasks only; everything else (step preparation, global-step tasks, the
    commit) runs in this process, on the driver's own disk, and nothing is downloaded ahead: each partition task
    downloads its own slice, on its node. For a build into a bucket on Ray: the partitions reach the driver
    through the bucket, and nothing else needs the nodes to see its disk."""

    def __init__(self, executor: Executor) -> None:
        self.inner = executor
        self.kind = executor.kind
        self.threads = executor.threads

    def run(
        self,
        tasks: list[PartitionTask],
        on_progress: Callable[[int, int], None],
        on_done: Callable[[PartitionResult], None],
    ) -> None:
        self.inner.run(tasks, on_progress, on_done)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "partitions_only": True}


def check_executor(kind: str, address: str | None) -> None:
    """A bad executor choice fails before a build writes anything."""
    if kind not in EXECUTORS:
        raise CurationError(f"unknown executor {kind!r}; choose one of: {', '.join(EXECUTORS)}")
    if kind == "local" and address is not None:
        raise CurationError("--address names a Ray cluster; it needs --executor ray")


@contextmanager
def open_executor(kind: str = "local", workers: int | None = None, address: str | None = None) -> Iterator[Executor]:
    """The executor named ``kind``; for ``ray``, connected to the cluster at ``address`` (None: ``RAY_ADDRESS``
    or a Ray started on this machine) for the duration."""
    check_executor(kind, address)
    if kind == "local":
        yield LocalExecutor(workers)
    else:
        from curation.build.executors.ray_executor import RayExecutor

        with RayExecutor(workers, address) as executor:
            yield executor


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "PartitionsOnly", "check_executor", "open_executor"]
