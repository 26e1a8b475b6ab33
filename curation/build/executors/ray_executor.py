"""Ray executor: one Ray task per input partition, on an existing Ray cluster or a Ray started here.

Each task runs ``process_partition`` exactly as a local worker does, writing its partition's staged shards
into ``--out/_work`` (which must be on a filesystem every node mounts); the driver then runs the global
steps and the commit. A task whose worker process or node dies is retried by Ray (``MAX_RETRIES``); a
partition is renamed into place only when complete and a second finisher is discarded, so retries and
reruns after a dead driver give the same bytes. Ray is imported only here (the ``ray`` extra).

A build into a bucket needs no shared filesystem: each task stages on its own node and publishes its partition
to the bucket (``PartitionTask.channel``), the driver copies it down, and runs everything else itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from curation import __version__
from curation.build.messages import PartitionResult, PartitionTask, partition_dir
from curation.build.partition import process_partition
from curation.build.plan import prepare_record_steps
from curation.errors import CurationError
from curation.sources import Partition, Reader
from curation.steps.contract import Resources

MAX_RETRIES = 3  # Ray re-runs a task whose worker process or node died this many times
POLL_SECONDS = 0.2
ENV_PREFIX = "VLM_CURATION_"  # the driver's toolkit settings travel to the tasks
HEAD_RESOURCE = "node:__internal_head__"  # a resource only Ray's head node has
NODE_ONLY_ENV = frozenset({"VLM_CURATION_WORKER_STAGE"})  # set on a node for that node: never the driver's value


class _Progress:
    """A Ray actor adding up the rows the tasks report. A retried partition's earlier attempt is taken back,
    so the progress bar never counts a row twice."""

    def __init__(self) -> None:
        self.attempts: dict[int, tuple[str, int, int]] = {}  # gid -> (attempt, rows in, rows dropped)
        self.n_in = self.n_drop = 0

    def add(self, gid: int, attempt: str, n_in: int, n_drop: int) -> None:
        seen, done_in, done_drop = self.attempts.get(gid, (attempt, 0, 0))
        if seen != attempt:  # a retry: its predecessor's rows are processed again
            self.n_in, self.n_drop = self.n_in - done_in, self.n_drop - done_drop
            done_in = done_drop = 0
        self.attempts[gid] = (attempt, done_in + n_in, done_drop + n_drop)
        self.n_in += n_in
        self.n_drop += n_drop

    def take(self) -> tuple[int, int]:
        taken = (self.n_in, self.n_drop)
        self.n_in = self.n_drop = 0
        return taken


def _run_partition(task: PartitionTask, progress: Any, driver_version: str) -> PartitionResult:
    """What a Ray task runs: checks that this node can do the work, then the partition."""
    import ray

    node = ray.util.get_node_ip_address()
    if __version__ != driver_version:
        raise CurationError(
            f"Ray node {node} has vlm-curation {__version__}, the driver {driver_version}; "
            "install the same version on every node"
        )
    work = task.work
    own = False
    if task.channel is not None:  # a build into a bucket: this node stages on its own disk if it must
        work, own = task.channel.stage_on_worker(work)
        if own:  # its step inputs (a benchmark index) are prepared here, as the driver prepared them in its own
            prepare_record_steps(task.recipe, work)
            task = dataclasses.replace(task, work=work)
    elif not work.is_dir():
        raise CurationError(
            f"Ray node {node} cannot see the build directory {work}: --out must be on a filesystem that every "
            "node mounts at the same path (NFS, Lustre, a FUSE mount of object storage)"
        )
    attempt = uuid.uuid4().hex
    result = process_partition(task, lambda n_in, n_drop: progress.add.remote(task.gid, attempt, n_in, n_drop))
    if own:  # published: the driver copies it from the bucket
        shutil.rmtree(partition_dir(work, task.gid), ignore_errors=True)
    where = {**result.placement, "ray_node": ray.get_runtime_context().get_node_id()}
    return dataclasses.replace(result, placement=where)


class RayExecutor:
    kind = "ray"

    def __init__(self, workers: int | None, address: str | None) -> None:
        if importlib.util.find_spec("ray") is None:
            raise CurationError("--executor ray needs Ray on this machine: pip install 'vlm-curation[ray]'")
        self.workers = workers  # None: as many partitions at once as the cluster has CPUs for
        self.threads = min(workers or os.cpu_count() or 1, os.cpu_count() or 1)  # the driver's own work
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def connect(self) -> None:
        """Join the cluster (or start a Ray here when no address is known); once, when there is work."""
        import ray

        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.address is None:  # "local": a Ray of our own, never another user's Ray on this machine
                ray.init(address="local", include_dashboard=False, **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CurationError(f"cannot connect to the Ray cluster at {self.address}: {exc}") from None
        self._started = True

    def describe(self) -> dict[str, Any]:
        import ray

        if not ray.is_initialized():
            return {"kind": self.kind, "address": self.address, "workers": self.workers}
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {
            "kind": self.kind,
            "address": self.address or "local",
            "workers": self.workers,
            "nodes": len(nodes),
            "cpus": int(ray.cluster_resources().get("CPU", 0)),
        }

    def download(self, reader: Reader, partitions: list[Partition]) -> None:
        """Sources that download (LAION via img2dataset) fetch their pending partitions with their own Ray
        distribution before the partition tasks start; the tasks then read the finished downloads."""
        if partitions and reader.downloads_with_ray:
            self.connect()
            reader.download_with_ray(partitions)

    def _remote(self, fn: Callable[..., Any], resources: Resources | None = None) -> Any:
        import ray

        needed = resources or Resources()
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) and k not in NODE_ONLY_ENV}
        return ray.remote(fn).options(
            num_cpus=needed.cpus,
            num_gpus=needed.gpus,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,  # an exception is a bug or bad input: the same on every try
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": env} if env else None,
        )

    def run(
        self,
        tasks: list[PartitionTask],
        on_progress: Callable[[int, int], None],
        on_done: Callable[[PartitionResult], None],
    ) -> None:
        if not tasks:
            return
        self.connect()
        import ray

        needed = _on_this_cluster(ray, tasks[0].resources)  # one recipe: every partition task needs the same
        _check_feasible(ray, needed)
        remote = self._remote(_run_partition, needed)
        # On the head node: the driver may be off the cluster, and the head lives as long as the cluster does.
        progress: Any = ray.remote(num_cpus=0, resources={HEAD_RESOURCE: 0.001})(_Progress).remote()  # an actor
        waiting = deque(tasks)
        running: dict[Any, PartitionTask] = {}
        limit = self.workers or len(tasks)
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    task = waiting.popleft()
                    running[remote.remote(task, progress, __version__)] = task
                done, _ = ray.wait(list(running), num_returns=len(running), timeout=POLL_SECONDS)
                on_progress(*ray.get(progress.take.remote()))
                for ref in done:
                    task = running.pop(ref)
                    on_done(_result(ray, ref, task.label))
            on_progress(*ray.get(progress.take.remote()))
        except BaseException:  # Ctrl-C or a failed partition: stop the others; finished ones are kept
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(progress)

    def call(self, fn: Callable[..., Any], args: tuple, resources: Resources) -> Any:
        """``fn(*args)`` as one Ray task asking for ``resources`` (dropped GPUs on a cluster without any)."""
        self.connect()
        import ray

        needed = _on_this_cluster(ray, resources)
        _check_feasible(ray, needed)
        return _result(ray, self._remote(fn, needed).remote(*args), getattr(fn, "__qualname__", "a task"))

    def imap(self, fn: Callable[..., Any], args: list[tuple], label: Callable[[tuple], str]) -> Iterator[Any]:
        """``fn(*a)`` for each of ``args`` as Ray tasks (at most ``workers`` at once), results in order."""
        if not args:
            return
        self.connect()
        import ray

        remote = self._remote(fn)
        limit = self.workers or len(args)
        refs = [remote.remote(*a) for a in args[:limit]]
        i = -1
        try:
            for i, a in enumerate(args):
                if i + limit < len(args):
                    refs.append(remote.remote(*args[i + limit]))
                yield _result(ray, refs[i], label(a))
        except BaseException:
            for ref in refs[i + 1 :]:
                ray.cancel(ref, force=True)
            raise


def _on_this_cluster(ray: Any, needed: Resources) -> Resources:
    """A GPU request of models on ``device: auto`` is dropped on a cluster without any GPU: they run on CPU."""
    if needed.gpus and needed.gpu_optional and not ray.cluster_resources().get("GPU", 0):
        return needed.without_gpus()
    return needed


def _check_feasible(ray: Any, needed: Resources) -> None:
    """A task asking for more than any node has would wait forever: say so instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if needed.gpus and not any(n.get("GPU", 0) >= needed.gpus for n in nodes):
        largest = max((n.get("GPU", 0) for n in nodes), default=0)
        raise CurationError(
            f"the recipe's steps need {needed.gpus:g} GPU(s) per partition (a local model on cuda or vLLM), but no "
            f"node of the Ray cluster has that many (the most on one node: {largest:g}); add GPU nodes, or run the "
            "model behind an OpenAI-compatible server (engine type: openai)"
        )


def _result(ray: Any, ref: Any, what: str) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # raised inside the task: the task's own exception
        cause = exc.cause
        if isinstance(cause, CurationError):
            raise CurationError(str(cause)) from None
        raise exc.as_instanceof_cause() from None
    except ray.exceptions.RayError as exc:  # the worker or its node died on every try, or Ray failed
        raise CurationError(
            f"{what} failed on the Ray cluster "
            f"{MAX_RETRIES + 1} times ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "finished work is kept: run the build again to resume"
        ) from None
