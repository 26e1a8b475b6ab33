"""Launchers: run trial processes (``python -m curation.select.run_trial TRIAL_DIR``) locally, on Ray or on Slurm.

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
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from curation.errors import CurationError
from curation.recipe.selection import LocalLauncherConfig, RayLauncherConfig, SlurmLauncherConfig
from shards.atomic import atomic_write_json

LOG_NAME = "trial.log"
_OOM_TEXT = re.compile(r"out of memory|OutOfMemoryError|MemoryError", re.IGNORECASE)
_TAIL_BYTES = 8192


def default_command_prefix() -> list[str]:
    """The trial command without its directory argument."""
    return [sys.executable, "-m", "curation.select.run_trial"]


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
class _Proc:
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


def _log_path(task: TrialTask) -> Path:
    return task.directory / LOG_NAME


def _open_log(task: TrialTask, command: list[str], env: dict[str, str]) -> tuple[IO[bytes], int]:
    """Open the trial log for appending and write this attempt's header; returns the file and the header's offset."""
    task.directory.mkdir(parents=True, exist_ok=True)
    log = _log_path(task).open("ab")
    offset = log.tell()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    gpus = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<inherited>"))
    header = f"===== attempt {now} host={socket.gethostname()} CUDA_VISIBLE_DEVICES={gpus!r} $ {shlex.join(command)}\n"
    log.write(header.encode())
    log.flush()
    return log, offset


def _launch_error(task: TrialTask, message: str, seconds: float = 0.0) -> TrialOutcome:
    """Append ``message`` to the trial log and return a ``launch_error`` outcome."""
    task.directory.mkdir(parents=True, exist_ok=True)
    with _log_path(task).open("a") as f:
        f.write(f"===== launch_error: {message}\n")
    return TrialOutcome(task.id, False, "launch_error", seconds, _log_path(task))


def _start(
    task: TrialTask, prefix: list[str], env: dict[str, str], timeout: float | None, gpus: list[str] | None = None
) -> _Proc | TrialOutcome:
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
        return _launch_error(task, f"cannot start {command[0]}: {e}")
    deadline = None if timeout is None else t0 + timeout
    return _Proc(task, proc, log, offset, t0, deadline, gpus or [])


def _signal_group(p: _Proc, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.proc.pid, sig)


def _terminate(p: _Proc) -> None:
    """Ask the trial's process group to stop (SIGTERM); :func:`_escalate` kills it after the grace period."""
    if p.term_sent is None:
        p.term_sent = time.monotonic()
        p.killed_by_us = True
        _signal_group(p, signal.SIGTERM)


def _escalate(p: _Proc, grace: float) -> None:
    if p.term_sent is not None and time.monotonic() - p.term_sent >= grace:
        _signal_group(p, signal.SIGKILL)


def _kill_all(procs: list[_Proc], grace: float) -> None:
    """Stop every process group: SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; closes the logs."""
    for p in procs:
        _terminate(p)
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


def _finish(p: _Proc) -> TrialOutcome:
    """The outcome of a reaped process; closes its log and kills what it left in its group (GPU holders)."""
    seconds = time.monotonic() - p.t0
    _signal_group(p, signal.SIGKILL)
    p.log.close()
    rc = p.proc.returncode
    tail = "" if rc == 0 else log_tail(_log_path(p.task), p.offset)
    reason = classify(rc, tail, p.timed_out, p.killed_by_us)
    return TrialOutcome(p.task.id, reason == "ok", reason, seconds, _log_path(p.task))


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
    started = _start(task, command_prefix or default_command_prefix(), env or {}, timeout)
    if isinstance(started, TrialOutcome):
        return started
    try:
        try:
            started.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            started.timed_out = True
            _terminate(started)
            try:
                started.proc.wait(kill_grace)
            except subprocess.TimeoutExpired:
                _signal_group(started, signal.SIGKILL)
                started.proc.wait()
    except BaseException:
        _kill_all([started], kill_grace)
        raise
    return _finish(started)


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
        running: list[_Proc] = []
        taken = 0
        try:
            while True:
                pending.extend(tasks[taken:])
                taken = len(tasks)
                for task in [t for t in pending if t.gpus > len(self.gpus)]:
                    pending.remove(task)
                    yield _launch_error(task, f"needs {task.gpus} GPUs, {len(self.gpus)} visible ({self.gpus})")
                if not pending and not running and taken == len(tasks):
                    return
                while len(running) < self.cfg.max_concurrent and (task := _first_fitting(pending, len(free))):
                    pending.remove(task)
                    gpus, free = free[: task.gpus], free[task.gpus :]
                    started = _start(
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
                    yield _finish(p)
                self._enforce_timeouts(running)
                time.sleep(self.poll_s)
        finally:
            _kill_all(running, self.kill_grace)

    def _enforce_timeouts(self, running: list[_Proc]) -> None:
        now = time.monotonic()
        for p in running:
            if p.deadline is not None and now >= p.deadline and not p.timed_out:
                p.timed_out = True
                _terminate(p)
            _escalate(p, self.kill_grace)


def _first_fitting(pending: deque[TrialTask], n_free: int) -> TrialTask | None:
    return next((t for t in pending if t.gpus <= n_free), None)


# ---- Ray ---------------------------------------------------------------------------------------------
RAY_MARKER = "ray_trial.json"
_RAY_POLL_S = 0.05


class RayLauncher:
    """One Ray task per trial (``cfg.num_gpus``, ``cfg.num_cpus``), running the trial command on a Ray worker.

    Ray sets CUDA_VISIBLE_DEVICES for GPU tasks (it is empty for ``num_gpus: 0``) and runs at most as many
    trials at once as the cluster's GPUs and CPUs allow. The trial directory must be on a filesystem that the
    driver and every Ray node share: the trial reads ``trial.json`` and writes its log and result there; a node
    that does not see ``trial.json`` fails the attempt with ``launch_error``, saying so in the trial log.

    Ray is imported when the launcher runs. It uses the Ray this process is connected to, else the cluster at
    ``cfg.address`` (or ``RAY_ADDRESS``), else a Ray it starts here (an error when no node of that one can fit
    a trial; a cluster that cannot is only warned about, as it may grow).

    Ray never retries a trial (the engine does). While a trial runs, ``<trial_dir>/ray_trial.json`` says where
    its process group is. An attempt whose Ray worker dies (killed, out of memory, its node lost) fails with
    ``launch_error`` (``oom`` when Ray's memory monitor killed it) and the Ray error in the trial log, once the
    launcher has killed what was left of the trial's process group on its node, so a retry never races it.
    Closing the iterator (Ctrl-C) cancels the tasks: each kills its trial's process group (SIGTERM, then
    SIGKILL after ``kill_grace``); a task still running ``kill_grace`` + 10 s later has its worker killed and
    its trial's group killed from a cleanup task on the node."""

    def __init__(self, cfg: RayLauncherConfig, command_prefix: list[str] | None = None, kill_grace: float = 10.0):
        if importlib.util.find_spec("ray") is None:
            raise CurationError("the ray launcher needs Ray: pip install 'vlm-curation[ray]'")
        self.cfg = cfg
        self.command_prefix = command_prefix  # None: the worker's own interpreter
        self.kill_grace = kill_grace

    def run(self, tasks: list[TrialTask]) -> Iterator[TrialOutcome]:
        import ray  # an optional dependency (the ``ray`` extra)

        self._connect(ray)
        trial = ray.remote(_ray_trial)
        options = {"num_gpus": self.cfg.num_gpus, "num_cpus": self.cfg.num_cpus, "max_retries": 0}
        env = {} if self.cfg.num_gpus > 0 else {"CUDA_VISIBLE_DEVICES": ""}
        refs: dict[Any, tuple[TrialTask, float]] = {}
        taken = 0
        try:
            while True:
                for task in tasks[taken:]:
                    task = _absolute(task)
                    call = trial.options(name=f"trial-{task.id}", **options)
                    ref = call.remote(task, self.command_prefix, env, self.cfg.timeout, self.kill_grace)
                    refs[ref] = (task, time.monotonic())
                taken = len(tasks)
                if not refs:
                    return
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task, t0 = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as e:  # the worker or its node died, the task raised or was cancelled
                        outcome = self._failed(ray, task, e, time.monotonic() - t0)
                    yield outcome
        finally:
            self._stop(ray, refs)

    def _connect(self, ray: Any) -> None:
        """Join (or start) Ray; an error when Ray was started here and none of its nodes fits a trial."""
        started = False
        if not ray.is_initialized():
            address = self.cfg.address or os.environ.get("RAY_ADDRESS") or "local"
            quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
            if address == "local":  # never some other Ray running on this machine (what address None would join)
                quiet["include_dashboard"] = False
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise CurationError(f"launcher ray: cannot connect to the Ray cluster at {address}: {e}") from None
            started = address == "local"
        try:
            message = ray_misfit(self.cfg, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        except Exception:  # no node list (a Ray client, say): Ray will tell
            message = None
        if message and started:
            raise CurationError(f"launcher ray: {message}")
        if message:
            warnings.warn(f"launcher ray: {message}; its trials wait until the cluster has one", stacklevel=3)

    def _failed(self, ray: Any, task: TrialTask, error: Exception, seconds: float) -> TrialOutcome:
        """The outcome of a task that returned no outcome, its message in the trial log; its leftovers killed."""
        info = _read_marker(task)
        where = f" (worker pid {info.get('worker_pid')} on {info.get('host')})" if info else ""
        cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
        text = " ".join(str(error).split()).rstrip(".")
        reason = "launch_error"
        if isinstance(cause, CurationError):  # the task's own check (no shared filesystem)
            message = str(cause)
        elif isinstance(error, ray.exceptions.OutOfMemoryError):
            reason, message = "oom", f"Ray's memory monitor killed the worker running the trial{where}: {text}"
        elif isinstance(error, ray.exceptions.WorkerCrashedError):
            message = f"the Ray worker running the trial died{where}, killed or out of memory: {text}"
        elif isinstance(error, ray.exceptions.NodeDiedError):
            message = f"the Ray node running the trial died{where}: {text}"
        elif isinstance(error, ray.exceptions.TaskCancelledError):
            message = f"the Ray task of the trial was cancelled{where}"
        else:
            message = f"the Ray task of the trial failed{where}: {cause or error!r}"
        if info and _kill_trial_groups(ray, [task], self.kill_grace):
            message += "; the processes it left were killed"
        task.directory.mkdir(parents=True, exist_ok=True)
        with _log_path(task).open("a") as f:
            f.write(f"===== {reason}: {' '.join(message.split())}\n")
        return TrialOutcome(task.id, False, reason, seconds, _log_path(task))

    def _stop(self, ray: Any, refs: dict[Any, tuple[TrialTask, float]]) -> None:
        """Cancel the unfinished tasks (each kills its trial); force what does not end in time, clean up after it."""
        if not refs:
            return
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)  # KeyboardInterrupt in the task (within a poll), which kills its trial's group
        late = list(refs)
        with contextlib.suppress(Exception):
            _, late = ray.wait(list(refs), num_returns=len(refs), timeout=self.kill_grace + 10)
        for ref in late:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)  # kills the worker; its trial's group is killed below
        _kill_trial_groups(ray, [task for task, _ in refs.values()], self.kill_grace)


def ray_misfit(cfg: RayLauncherConfig, nodes: list[dict[str, float]]) -> str | None:
    """Why no node (its Ray resources) can run a trial of ``cfg``; None when one can."""
    need = {"GPU": cfg.num_gpus, "CPU": cfg.num_cpus}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return None
    have = ", ".join(f"{{CPU: {n.get('CPU', 0.0):g}, GPU: {n.get('GPU', 0.0):g}}}" for n in nodes) or "none"
    need_text = f"num_gpus={cfg.num_gpus:g} and num_cpus={cfg.num_cpus:g}"
    return f"a trial needs {need_text}, no Ray node has that (nodes: {have})"


def _ray_trial(
    task: TrialTask, command_prefix: list[str] | None, env: dict[str, str], timeout: float | None, kill_grace: float
) -> TrialOutcome:
    """The Ray task: run one trial on this worker and wait for it.

    It polls, as a cancel's KeyboardInterrupt reaches the task only between Python bytecodes (a blocking wait
    would hold it back until the trial ends); any exception kills the trial's process group and goes on.
    ``<trial_dir>/ray_trial.json`` notes the group while it may be alive."""
    import ray

    if not (task.directory / "trial.json").is_file():
        node = ray.util.get_node_ip_address()
        raise CurationError(
            f"{task.directory / 'trial.json'} is not there on Ray node {socket.gethostname()} ({node}): the ray "
            "launcher runs trials in the sweep directory, which must be on a filesystem shared by the driver "
            "and every Ray node"
        )
    started = _start(task, command_prefix or default_command_prefix(), env, timeout)
    if isinstance(started, TrialOutcome):
        return started
    marker = task.directory / RAY_MARKER
    try:
        info = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "worker_pid": os.getpid(),
            "pgid": started.proc.pid,
        }
        atomic_write_json(marker, info)
        while started.proc.poll() is None:
            if started.deadline is not None and time.monotonic() >= started.deadline and not started.timed_out:
                started.timed_out = True
                _terminate(started)
            _escalate(started, kill_grace)
            time.sleep(_RAY_POLL_S)
    except BaseException:
        _kill_all([started], kill_grace)
        marker.unlink(missing_ok=True)
        raise
    outcome = _finish(started)  # kills what the trial left in its group
    marker.unlink(missing_ok=True)
    return outcome


def _read_marker(task: TrialTask) -> dict[str, Any] | None:
    try:
        info = json.loads((task.directory / RAY_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pgid"), int) and info.get("node_id") else None


def _kill_trial_groups(ray: Any, tasks: list[TrialTask], grace: float) -> bool:
    """Kill what is left of these trials' process groups (those with a marker), from a task on each one's node
    (num_cpus 0: it runs while the trials hold every CPU); True when a process was left. A node that is gone
    took its processes with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    kill = ray.remote(_ray_kill_group)
    refs = []
    for task in tasks:
        info = _read_marker(task)
        if info is None:
            continue
        strategy = NodeAffinitySchedulingStrategy(info["node_id"], soft=False)
        call = kill.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy, name=f"kill-trial-{task.id}")
        with contextlib.suppress(Exception):  # Ray is going away
            refs.append((task, call.remote(info["pgid"], str(task.directory), grace)))
    left = False
    for task, ref in refs:
        with contextlib.suppress(Exception):
            left = ray.get(ref, timeout=grace + 30) or left
        (task.directory / RAY_MARKER).unlink(missing_ok=True)
    return left


def _ray_kill_group(pgid: int, directory: str, grace: float) -> bool:
    """On the trial's node: SIGTERM to the trial's process group, SIGKILL after ``grace``; False when it was gone.

    The group is left alone when its leader's pid now runs something else (the pid was reused; then the group
    is empty, as a pid is not reused while a group of that id lives)."""
    with contextlib.suppress(OSError):  # no /proc, or the leader is gone (its group may live on)
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
        if cmdline and directory.encode() not in cmdline.split(b"\0"):  # empty: a zombie
            return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _absolute(task: TrialTask) -> TrialTask:
    return TrialTask(task.id, task.directory.absolute(), task.gpus)


# ---- Slurm (submitit) --------------------------------------------------------------------------------
def _submitit_job(task: TrialTask, command_prefix: list[str] | None, env: dict[str, str]) -> TrialOutcome:
    """The function a submitit job runs: the trial, with submitit's timeout signal turned into ``timeout``.

    It never raises an Exception (the debug executor would open a debugger): failures are outcomes."""
    t0 = time.monotonic()
    try:
        return run_trial_blocking(task, command_prefix, env)
    except Exception as e:
        reason = "timeout" if "timed-out" in str(e) else "launch_error"
        outcome = _launch_error(task, f"submitit job: {e!r}", time.monotonic() - t0)
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
                    task = _absolute(tasks[taken])
                    taken += 1
                    self.executor.update_parameters(name=f"trial-{task.id}")
                    try:
                        job = self.executor.submit(_submitit_job, task, self.command_prefix, env)
                    except Exception as e:  # sbatch refused the job, ...
                        yield _launch_error(task, f"submitit submit failed: {e!r}")
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
        failed = _launch_error(task, f"submitit job {job.job_id} ended {state}: {e}", time.monotonic() - t0)
        return TrialOutcome(task.id, False, reason, failed.seconds, failed.log)
    return outcome


# ---- choosing one ------------------------------------------------------------------------------------
def make_launcher(
    cfg: LocalLauncherConfig | RayLauncherConfig | SlurmLauncherConfig,
    sweep_dir: Path,
    command_prefix: list[str] | None = None,
    ray_address: str | None = None,
) -> Launcher:
    """The launcher a recipe's ``launcher`` config asks for (Slurm job files under ``<sweep>/slurm`` by default).
    A ``ray`` launcher without an address of its own joins ``ray_address`` (the command's ``--address``)."""
    if isinstance(cfg, LocalLauncherConfig):
        return LocalLauncher(cfg, command_prefix)
    if isinstance(cfg, RayLauncherConfig):
        if cfg.address is None and ray_address is not None:
            cfg = cfg.model_copy(update={"address": ray_address})
        return RayLauncher(cfg, command_prefix)
    return SlurmLauncher(cfg, Path(cfg.folder) if cfg.folder else Path(sweep_dir) / "slurm", command_prefix)
