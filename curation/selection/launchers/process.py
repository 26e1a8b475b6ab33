"""Launchers: run trial processes (``python -m curation.selection.run_trial TRIAL_DIR``) locally, on Ray or on Slurm.

A launcher takes :class:`TrialTask` s and yields a :class:`TrialOutcome` per task as trials finish, in any
order. The task list is read as the run goes: tasks the consumer appends to it between outcomes (retries)
are run too, and the iterator ends once every task in the list has its outcome.

Each attempt appends a header line and the trial process's stdout and stderr to ``<trial_dir>/trial.log``.
Trials run in their own session (process group), which a timeout or an interrupted sweep kills as a whole
(SIGTERM, then SIGKILL after a grace period); processes a finished trial leaves in its group are killed.
Trials get ``CURATION_PARENT_PID`` in their environment: a trial runner should exit when its parent is gone
(``os.getppid() != CURATION_PARENT_PID``), so a sweep killed with SIGKILL leaves no trial running behind it.

Failure reasons: ``exit_<code>``, ``killed_<SIGNAL>``, ``timeout``, ``launch_error`` (the process could not be
started, needs more GPUs than exist, or the Ray task / Slurm job failed around it) and ``oom``. The OOM
heuristic: the process died of SIGKILL (returncode -9, or 137 from a shell) that the launcher did not send
(the kernel's OOM killer is what sends an unexpected SIGKILL), or it failed and this attempt's log tail says
``out of memory`` (any case: CUDA's "CUDA out of memory", the kernel's "Out of memory: Killed process"),
``OutOfMemoryError`` or ``MemoryError``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

LOG_NAME = "trial.log"
_OOM_TEXT = re.compile(r"out of memory|OutOfMemoryError|MemoryError", re.IGNORECASE)
_TAIL_BYTES = 8192


def default_command_prefix() -> list[str]:
    """The trial command without its directory argument."""
    return [sys.executable, "-m", "curation.selection.run_trial"]


@dataclass(frozen=True)
class TrialTask:
    """One trial to run: its id, its directory (holding ``trial.json``) and the GPUs it needs."""

    id: str
    directory: Path
    gpus: int = 0


@dataclass(frozen=True)
class TrialOutcome:
    """How one attempt ended; ``seconds`` is the trial process's wall time."""

    id: str
    ok: bool
    reason: str
    seconds: float
    log: Path


class Launcher(Protocol):
    def run(self, tasks: list[TrialTask]) -> Iterator[TrialOutcome]: ...


# ---- one trial process -------------------------------------------------------------------------------
@dataclass
class TrialProcess:
    """A started trial process and what is needed to finish it."""

    task: TrialTask
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    offset: int
    t0: float
    deadline: float | None
    gpus: list[str] = field(default_factory=list)
    term_sent: float | None = None
    killed_by_us: bool = False
    timed_out: bool = False


def log_path(task: TrialTask) -> Path:
    return task.directory / LOG_NAME


def _open_log(task: TrialTask, command: list[str], env: dict[str, str]) -> tuple[IO[bytes], int]:
    """Open the trial log for appending and write this attempt's header; returns the file and the header's offset."""
    task.directory.mkdir(parents=True, exist_ok=True)
    log = log_path(task).open("ab")
    offset = log.tell()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    gpus = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<inherited>"))
    header = f"===== attempt {now} host={socket.gethostname()} CUDA_VISIBLE_DEVICES={gpus!r} $ {shlex.join(command)}\n"
    log.write(header.encode())
    log.flush()
    return log, offset


def launch_error(task: TrialTask, message: str, seconds: float = 0.0) -> TrialOutcome:
    """Append ``message`` to the trial log and return a ``launch_error`` outcome."""
    task.directory.mkdir(parents=True, exist_ok=True)
    with log_path(task).open("a") as f:
        f.write(f"===== launch_error: {message}\n")
    return TrialOutcome(task.id, False, "launch_error", seconds, log_path(task))


def start_trial(
    task: TrialTask, prefix: list[str], env: dict[str, str], timeout: float | None, gpus: list[str] | None = None
) -> TrialProcess | TrialOutcome:
    """Start the trial process (own session, output to the log); a launch_error outcome when that fails."""
    command = [*prefix, str(task.directory)]
    full_env = {**os.environ, **env, "CURATION_PARENT_PID": str(os.getpid())}
    log, offset = _open_log(task, command, env)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    except OSError as e:
        log.close()
        return launch_error(task, f"cannot start {command[0]}: {e}")
    deadline = None if timeout is None else t0 + timeout
    return TrialProcess(task, proc, log, offset, t0, deadline, gpus or [])


def _signal_group(p: TrialProcess, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.proc.pid, sig)


def terminate(p: TrialProcess) -> None:
    """Ask the trial's process group to stop (SIGTERM); :func:`escalate` kills it after the grace period."""
    if p.term_sent is None:
        p.term_sent = time.monotonic()
        p.killed_by_us = True
        _signal_group(p, signal.SIGTERM)


def escalate(p: TrialProcess, grace: float) -> None:
    if p.term_sent is not None and time.monotonic() - p.term_sent >= grace:
        _signal_group(p, signal.SIGKILL)


def kill_all(procs: list[TrialProcess], grace: float) -> None:
    """Stop every process group: SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; closes the logs."""
    for p in procs:
        terminate(p)
    end = time.monotonic() + grace
    while any(p.proc.poll() is None for p in procs) and time.monotonic() < end:
        time.sleep(0.02)
    for p in procs:
        _signal_group(p, signal.SIGKILL)  # also stray children that outlived the leader
        p.proc.wait()
        p.log.close()


def log_tail(log: Path, offset: int = 0, n_bytes: int = _TAIL_BYTES) -> str:
    """The last ``n_bytes`` of ``log`` after ``offset`` (as text, undecodable bytes replaced)."""
    try:
        with log.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - n_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def classify(returncode: int, tail: str, timed_out: bool = False, killed_by_us: bool = False) -> str:
    """The outcome reason of a finished process (see the module docstring for the OOM heuristic)."""
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) and not killed_by_us:
        return "oom"
    if _OOM_TEXT.search(tail):
        return "oom"
    if returncode < 0:
        try:
            return f"killed_{signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed_{-returncode}"
    return f"exit_{returncode}"


def finish_trial(p: TrialProcess) -> TrialOutcome:
    """The outcome of a reaped process; closes its log and kills what it left in its group (GPU holders)."""
    seconds = time.monotonic() - p.t0
    _signal_group(p, signal.SIGKILL)
    p.log.close()
    rc = p.proc.returncode
    tail = "" if rc == 0 else log_tail(log_path(p.task), p.offset)
    reason = classify(rc, tail, p.timed_out, p.killed_by_us)
    return TrialOutcome(p.task.id, reason == "ok", reason, seconds, log_path(p.task))


def run_trial_blocking(
    task: TrialTask,
    command_prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    kill_grace: float = 10.0,
) -> TrialOutcome:
    """Run one trial in this process and wait for it (what a Ray task or a Slurm job does).

    An exception while waiting (an interrupt, a cancelled Ray task, submitit's timeout signal) kills the
    trial's process group and is raised again."""
    started = start_trial(task, command_prefix or default_command_prefix(), env or {}, timeout)
    if isinstance(started, TrialOutcome):
        return started
    try:
        try:
            started.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            started.timed_out = True
            terminate(started)
            try:
                started.proc.wait(kill_grace)
            except subprocess.TimeoutExpired:
                _signal_group(started, signal.SIGKILL)
                started.proc.wait()
    except BaseException:
        kill_all([started], kill_grace)
        raise
    return finish_trial(started)


# ---- local -------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """GPU ids from CUDA_VISIBLE_DEVICES when set, else one per ``nvidia-smi -L`` line, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        return [] if ids[:1] == ["-1"] else ids
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def absolute_task(task: TrialTask) -> TrialTask:
    return TrialTask(task.id, task.directory.absolute(), task.gpus)
