"""A pool of trial processes on this machine, packed onto its GPUs."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

from curation.recipe.selection import LocalLauncherConfig
from curation.selection.launchers.process import (
    TrialOutcome,
    TrialProcess,
    TrialTask,
    default_command_prefix,
    escalate,
    finish_trial,
    kill_all,
    launch_error,
    start_trial,
    terminate,
    visible_gpus,
)


class LocalLauncher:
    """A pool of ``cfg.max_concurrent`` trial processes on this machine.

    Each trial gets ``task.gpus`` distinct GPUs of ``gpus`` (default: :func:`visible_gpus`) through
    CUDA_VISIBLE_DEVICES (empty for CPU trials); a GPU is never given to two trials at once, and a task
    needing more GPUs than exist fails at once with ``launch_error``. ``cfg.timeout`` kills a trial's process
    group (``timeout``); an interrupted run (Ctrl-C, or the consumer closing the iterator) kills the running
    trials before the exception goes on."""

    def __init__(
        self,
        cfg: LocalLauncherConfig,
        command_prefix: list[str] | None = None,
        gpus: list[str] | None = None,
        kill_grace: float = 10.0,
        poll_s: float = 0.01,
    ) -> None:
        self.cfg = cfg
        self.command_prefix = command_prefix or default_command_prefix()
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self.kill_grace = kill_grace
        self.poll_s = poll_s

    def run(self, tasks: list[TrialTask]) -> Iterator[TrialOutcome]:
        free = list(self.gpus)
        pending: deque[TrialTask] = deque()
        running: list[TrialProcess] = []
        taken = 0
        try:
            while True:
                pending.extend(tasks[taken:])
                taken = len(tasks)
                for task in [t for t in pending if t.gpus > len(self.gpus)]:
                    pending.remove(task)
                    yield launch_error(task, f"needs {task.gpus} GPUs, {len(self.gpus)} visible ({self.gpus})")
                if not pending and not running and taken == len(tasks):
                    return
                while len(running) < self.cfg.max_concurrent and (task := _first_fitting(pending, len(free))):
                    pending.remove(task)
                    gpus, free = free[: task.gpus], free[task.gpus :]
                    started = start_trial(
                        task, self.command_prefix, {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}, self.cfg.timeout, gpus
                    )
                    if isinstance(started, TrialOutcome):
                        free += gpus
                        yield started
                    else:
                        running.append(started)
                for p in [p for p in running if p.proc.poll() is not None]:
                    running.remove(p)
                    free += p.gpus
                    yield finish_trial(p)
                self._enforce_timeouts(running)
                time.sleep(self.poll_s)
        finally:
            kill_all(running, self.kill_grace)

    def _enforce_timeouts(self, running: list[TrialProcess]) -> None:
        now = time.monotonic()
        for p in running:
            if p.deadline is not None and now >= p.deadline and not p.timed_out:
                p.timed_out = True
                terminate(p)
            escalate(p, self.kill_grace)


def _first_fitting(pending: deque[TrialTask], n_free: int) -> TrialTask | None:
    return next((t for t in pending if t.gpus <= n_free), None)


# ---- Ray ---------------------------------------------------------------------------------------------
