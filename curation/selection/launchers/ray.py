"""Trials as Ray tasks: each starts the trial process on a node with the GPUs it needs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe.selection import RayLauncherConfig
from curation.selection.launchers.process import (
    TrialOutcome,
    TrialTask,
    absolute_task,
    default_command_prefix,
    escalate,
    finish_trial,
    kill_all,
    log_path,
    start_trial,
    terminate,
)
from shards.atomic import atomic_write_json

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
                    task = absolute_task(task)
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
        with log_path(task).open("a") as f:
            f.write(f"===== {reason}: {' '.join(message.split())}\n")
        return TrialOutcome(task.id, False, reason, seconds, log_path(task))

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
    started = start_trial(task, command_prefix or default_command_prefix(), env, timeout)
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
                terminate(started)
            escalate(started, kill_grace)
            time.sleep(_RAY_POLL_S)
    except BaseException:
        kill_all([started], kill_grace)
        marker.unlink(missing_ok=True)
        raise
    outcome = finish_trial(started)  # kills what the trial left in its group
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
