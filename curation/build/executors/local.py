"""Local executor: N worker processes over partitions; progress flows back through a queue.

Workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent decides), exit on their own
when the parent dies (kill -9 of the build must not leave orphans working), and are terminated by the
parent when it is interrupted. Finished partitions are kept either way, so a rerun resumes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import resource_tracker
from typing import Any

from curation.build.messages import PartitionResult, PartitionTask
from curation.build.partition import process_partition
from curation.models.devices import visible_gpus

_QUEUE: Any = None


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(q: Any, parent: int, gpu_slots: Any = None) -> None:
    global _QUEUE
    _QUEUE = q
    if gpu_slots is not None:  # before anything imports torch: the worker sees only its own GPU(s)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_slots.get_nowait()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while spawning us
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def _report(n_in: int, n_drop: int) -> None:
    _QUEUE.put((n_in, n_drop))


def _run_task(task: PartitionTask) -> PartitionResult:
    return process_partition(task, _report)


def gpu_slots(visible: list[str], gpus_per_worker: float) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each GPU worker: one worker per GPU, a GPU shared by ``1 / gpus`` workers
    for a fraction, or consecutive groups of GPUs for a worker that needs several."""
    if not visible or gpus_per_worker <= 0:
        return []
    if gpus_per_worker < 1:
        share = max(1, int(1 / gpus_per_worker + 1e-9))
        return [gpu for gpu in visible for _ in range(share)]
    size = min(math.ceil(gpus_per_worker), len(visible))  # asking for more than there are: one worker, all of them
    return [",".join(visible[i : i + size]) for i in range(0, len(visible) - size + 1, size)]


def run_local(
    tasks: list[PartitionTask],
    workers: int,
    on_progress: Callable[[int, int], None],
    on_done: Callable[[PartitionResult], None],
    run_task: Callable[[PartitionTask], PartitionResult] | None = None,
) -> None:
    """Run ``tasks``; with one worker, in this process (easy to debug, no start-up cost). Partitions whose
    steps run a model on a GPU get one worker per visible GPU slot (``gpu_slots``), each seeing only its own
    GPU(s) through ``CUDA_VISIBLE_DEVICES``; without a visible GPU they run on ``workers`` CPU workers."""
    needed = tasks[0].resources if tasks else None
    slots = gpu_slots(visible_gpus(), needed.gpus) if needed is not None and needed.gpus else []
    if slots:
        workers = len(slots)
    if (workers <= 1 or len(tasks) <= 1) and run_task is None:
        for task in tasks:
            on_done(process_partition(task, on_progress))
        return
    ctx = mp.get_context("spawn")
    # Children inherit the signal mask: with SIGINT blocked while they start, a Ctrl-C during their start-up
    # stays pending until their initializer ignores it (no half-started worker prints a traceback).
    # resource_tracker.ensure_running() unblocks SIGINT after starting its own process: start it (and the
    # queue that needs it) before blocking.
    resource_tracker.ensure_running()
    q = ctx.Queue()
    slot_queue = None
    if slots:
        slot_queue = ctx.Queue()
        for slot in slots[: min(workers, len(tasks))]:
            slot_queue.put(slot)
    pool: ProcessPoolExecutor | None = None
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(tasks)),
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(q, os.getpid(), slot_queue),
            )
            pending = {pool.submit(run_task or _run_task, t) for t in tasks}  # spawns the workers
        finally:
            # A Ctrl-C that came while they started is raised here, inside the outer try: the workers still
            # starting are stopped below, not left to fail on the queue this process is about to release.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(q, on_progress)
            for fut in done:
                on_done(fut.result())
        _drain(q, on_progress)
        pool.shutdown(wait=True)
    except BaseException:  # Ctrl-C or a failed partition: stop the others now, not after the queue drains
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    q.close()


def _drain(q: Any, on_progress: Callable[[int, int], None]) -> None:
    while True:
        try:
            n_in, n_drop = q.get_nowait()
        except queue.Empty:
            return
        on_progress(n_in, n_drop)
