"""Local executor: N worker processes over partitions; progress flows back through a queue."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from curation.partition import process_partition

_QUEUE: Any = None
_PARENT: int | None = None


def _init_worker(q: Any) -> None:
    global _QUEUE, _PARENT
    _QUEUE = q
    _PARENT = os.getppid()


def _report(n_in: int, n_drop: int) -> None:
    if os.getppid() != _PARENT:  # the build was killed: stop instead of working on as an orphan
        os._exit(1)
    try:
        _QUEUE.put((n_in, n_drop))
    except (OSError, EOFError, BrokenPipeError):
        os._exit(1)


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    return process_partition(task, _report)


def run_local(
    tasks: list[dict[str, Any]],
    workers: int,
    on_progress: Callable[[int, int], None],
    on_done: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``tasks``; with one worker, in this process (easy to debug, no start-up cost)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            on_done(process_partition(task, on_progress))
        return
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(q,)
        ) as pool:
            pending = {pool.submit(_run_task, t) for t in tasks}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(q, on_progress)
                for fut in done:
                    on_done(fut.result())
            _drain(q, on_progress)


def _drain(q: Any, on_progress: Callable[[int, int], None]) -> None:
    while True:
        try:
            n_in, n_drop = q.get_nowait()
        except queue.Empty:
            return
        on_progress(n_in, n_drop)
