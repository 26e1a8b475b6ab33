"""Trials as Slurm jobs, submitted with submitit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe.selection import SlurmLauncherConfig
from curation.selection.launchers.process import (
    TrialOutcome,
    TrialTask,
    absolute_task,
    launch_error,
    run_trial_blocking,
)


# ---- Slurm (submitit) --------------------------------------------------------------------------------
def _submitit_job(task: TrialTask, command_prefix: list[str] | None, env: dict[str, str]) -> TrialOutcome:
    """The function a submitit job runs: the trial, with submitit's timeout signal turned into ``timeout``.

    It never raises an Exception (the debug executor would open a debugger): failures are outcomes."""
    t0 = time.monotonic()
    try:
        return run_trial_blocking(task, command_prefix, env)
    except Exception as e:
        reason = "timeout" if "timed-out" in str(e) else "launch_error"
        outcome = launch_error(task, f"submitit job: {e!r}", time.monotonic() - t0)
        return TrialOutcome(task.id, False, reason, outcome.seconds, outcome.log)


class SlurmLauncher:
    """One submitit job per trial: Slurm (``cfg.executor: slurm``), or submitit's local / debug executors.

    Job files go to ``folder/<job id>/``. Jobs whose function did not return (cancelled, node failure, out of
    memory, time limit) give ``timeout`` (state TIMEOUT), ``oom`` (OUT_OF_MEMORY) or ``launch_error``, with
    submitit's message in the trial log."""

    def __init__(
        self,
        cfg: SlurmLauncherConfig,
        folder: Path,
        command_prefix: list[str] | None = None,
        poll_s: float | None = None,
    ) -> None:
        try:
            import submitit  # an optional dependency
        except ImportError as e:
            raise CurationError("the slurm launcher needs submitit: pip install submitit") from e

        self.cfg = cfg
        self.command_prefix = command_prefix
        self.poll_s = poll_s if poll_s is not None else (5.0 if cfg.executor == "slurm" else 0.1)
        try:
            self.executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cfg.executor)
        except RuntimeError as e:  # no srun here
            raise CurationError(f"launcher slurm: {e} (executor: local or debug runs jobs without Slurm)") from e
        self.executor.update_parameters(
            timeout_min=cfg.timeout_min,
            gpus_per_node=cfg.gpus_per_node,
            cpus_per_task=cfg.cpus_per_task,
            mem_gb=cfg.mem_gb,
            nodes=1,
            tasks_per_node=1,
            slurm_partition=cfg.partition,
            slurm_additional_parameters=cfg.additional_parameters or None,
        )

    def run(self, tasks: list[TrialTask]) -> Iterator[TrialOutcome]:
        env = {} if self.cfg.gpus_per_node > 0 else {"CUDA_VISIBLE_DEVICES": ""}
        jobs: list[tuple[Any, TrialTask, float]] = []
        taken = 0
        try:
            while True:
                while taken < len(tasks):
                    task = absolute_task(tasks[taken])
                    taken += 1
                    self.executor.update_parameters(name=f"trial-{task.id}")
                    try:
                        job = self.executor.submit(_submitit_job, task, self.command_prefix, env)
                    except Exception as e:  # sbatch refused the job, ...
                        yield launch_error(task, f"submitit submit failed: {e!r}")
                        continue
                    jobs.append((job, task, time.monotonic()))
                if not jobs and taken == len(tasks):
                    return
                finished = [j for j in jobs if j[0].done()]
                for item in finished:
                    jobs.remove(item)
                    yield _job_outcome(*item)
                if not finished:
                    time.sleep(self.poll_s)
        finally:
            for job, _, _ in jobs:
                job.cancel(check=False)


def _job_outcome(job: Any, task: TrialTask, t0: float) -> TrialOutcome:
    try:
        outcome = job.result()
    except Exception as e:
        state = str(job.state)
        reason = "timeout" if "TIMEOUT" in state else "oom" if "OUT_OF_MEMORY" in state else "launch_error"
        failed = launch_error(task, f"submitit job {job.job_id} ended {state}: {e}", time.monotonic() - t0)
        return TrialOutcome(task.id, False, reason, failed.seconds, failed.log)
    return outcome


# ---- choosing one ------------------------------------------------------------------------------------
