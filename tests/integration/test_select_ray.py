"""The selection engine's ``ray`` launcher against a real local Ray (2 CPUs, 2 fake GPUs), started once.

A fake trial program stands in for ``run_trial``: it keeps the trial contract (``trial.json`` in,
``result.json`` written last, exit 0) and leaves evidence in its directory: ``count`` (attempts started),
``starts.jsonl`` (per attempt, at its start: pid, parent pid, its child's pid, CUDA_VISIBLE_DEVICES, the
processes of earlier attempts still alive), and, with ``live``, the other trials running at the same time
(the trials of one test share a ``live`` directory, one file per running trial holding its GPUs).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from curation.recipe.selection import RayLauncherConfig
from curation.selection.engine import run_trials
from curation.selection.launchers import make_launcher
from curation.selection.launchers.process import TrialOutcome, TrialTask
from curation.selection.launchers.ray import RAY_MARKER, RayLauncher, ray_misfit
from curation.selection.store import TrialStore

FAKE_TRIAL = r"""
import json, os, subprocess, sys, threading, time
from pathlib import Path

def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

d = Path(sys.argv[1])
spec = json.loads((d / "trial.json").read_text())
n = int((d / "count").read_text()) + 1 if (d / "count").exists() else 1
(d / "count").write_text(str(n))
earlier = [json.loads(line) for line in (d / "starts.jsonl").read_text().splitlines()] if n > 1 else []
stale = [p for s in earlier for p in (s["pid"], s["child"]) if p and alive(p)]
child = None
if spec.get("child"):  # a training subprocess, in the trial's process group
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid
gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
start = {"n": n, "pid": os.getpid(), "ppid": os.getppid(), "child": child, "gpus": gpus, "stale_alive": stale}
with open(d / "starts.jsonl", "a") as f:
    f.write(json.dumps(start) + "\n")
parent = os.environ.get("CURATION_PARENT_PID")
if parent and spec.get("watch_parent", True):  # what run_trial does: exit when its launcher is gone
    def watch():
        while os.getppid() == int(parent):
            time.sleep(0.05)
        os._exit(137)
    threading.Thread(target=watch, daemon=True).start()
print(f"fake trial {d.name} run {n} CUDA_VISIBLE_DEVICES={gpus!r}", flush=True)
print(f"fake trial {d.name} on stderr", file=sys.stderr, flush=True)
if n <= spec.get("crash_first_n_attempts", 0):
    print("crashing on purpose", flush=True)
    sys.exit(3)
if n <= spec.get("hang_first_n_attempts", 0):
    time.sleep(120)
if spec.get("live"):  # wait (up to 30 s) until 2 trials run at once, then look at who runs for a while
    live = Path(spec["live"])
    (live / d.name).write_text(gpus or "")
    seen, hold_until, end = [], None, time.time() + 30
    while time.time() < end and (hold_until is None or time.time() < hold_until):
        now = {}
        for p in live.iterdir():
            try:
                now[p.name] = p.read_text()
            except OSError:  # it just finished
                pass
        seen.append(now)
        if hold_until is None and len(now) >= 2:
            hold_until = time.time() + 0.5
        time.sleep(0.02)
    (live / d.name).unlink()
    (d / "seen.json").write_text(json.dumps(seen))
time.sleep(spec.get("sleep", 0))
if spec.get("exit", 0):
    print(f"failing with {spec['exit']}", flush=True)
    sys.exit(spec["exit"])
(d / "result.json").write_text(json.dumps({"score": spec.get("score", 0.0), "attempt": n}))
"""

KILL_GRACE = 1.0


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray of this test module (never another Ray running on the machine: ``address="local"``)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    context = ray.init(
        address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
    )
    try:
        yield context
    finally:
        ray.shutdown()


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    path = tmp_path / "fake_trial.py"
    path.write_text(FAKE_TRIAL)
    return [sys.executable, str(path)]


def _launcher(fake: list[str], **cfg: Any) -> RayLauncher:
    return RayLauncher(RayLauncherConfig(type="ray", **cfg), command_prefix=fake, kill_grace=KILL_GRACE)


def _tasks(root: Path, specs: dict[str, dict[str, Any]]) -> list[TrialTask]:
    tasks = []
    for tid, spec in specs.items():
        d = root / "trials" / tid
        d.mkdir(parents=True, exist_ok=True)
        (d / "trial.json").write_text(json.dumps(spec))
        tasks.append(TrialTask(tid, d))
    return tasks


def _count(task: TrialTask) -> int:
    f = task.directory / "count"
    return int(f.read_text()) if f.exists() else 0


def _starts(task: TrialTask) -> list[dict[str, Any]]:
    f = task.directory / "starts.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pids(task: TrialTask) -> list[int]:
    """Every process an attempt of this trial started (the trial and its child)."""
    return [p for s in _starts(task) for p in (s["pid"], s["child"]) if p]


# ---- num_gpus ----------------------------------------------------------------------------------------
def test_gpu_trials_get_distinct_gpus_from_ray_two_at_a_time(tmp_path: Path, fake: list[str], ray_cluster: Any):
    live = tmp_path / "live"
    live.mkdir()
    tasks = _tasks(tmp_path, {f"g{i}": {"live": str(live), "score": i} for i in range(4)})
    # half a CPU each: the CPUs would let 4 run at once, the 2 GPUs let 2
    launcher = _launcher(fake, num_gpus=1, num_cpus=0.5)
    records = run_trials(tasks, launcher, TrialStore(tmp_path / "trials.db"), 0)
    assert {i: r.result for i, r in records.items()} == {f"g{i}": {"score": i, "attempt": 1} for i in range(4)}
    for task in tasks:
        (start,) = _starts(task)
        assert start["gpus"] in ("0", "1")  # set by Ray, one GPU
        seen = json.loads((task.directory / "seen.json").read_text())
        assert max(len(now) for now in seen) == 2  # another trial ran beside it, never two others
        for now in seen:  # the trials running at one time hold distinct GPUs
            assert len(set(now.values())) == len(now) and now.get(task.id, start["gpus"]) == start["gpus"]
        header = (task.directory / "trial.log").read_text().splitlines()[0]
        assert header.startswith("===== attempt ") and f"CUDA_VISIBLE_DEVICES='{start['gpus']}'" in header
        assert not (task.directory / RAY_MARKER).exists()


def test_cpu_trials_see_no_gpu(tmp_path: Path, fake: list[str], ray_cluster: Any):
    tasks = _tasks(tmp_path, {"cpu": {}})
    (outcome,) = list(_launcher(fake, num_gpus=0).run(tasks))
    assert outcome.ok and _starts(tasks[0])[0]["gpus"] == ""


def test_no_node_that_fits_a_trial(ray_cluster: Any):
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    assert ray_misfit(RayLauncherConfig(type="ray", num_gpus=2, num_cpus=2), nodes) is None
    message = ray_misfit(RayLauncherConfig(type="ray", num_gpus=4), nodes)
    assert message == "a trial needs num_gpus=4 and num_cpus=1, no Ray node has that (nodes: {CPU: 2, GPU: 2})"
    with pytest.warns(UserWarning, match="no Ray node has that"):  # connected to a Ray, which may grow
        _launcher([], num_gpus=4)._connect(ray)


# ---- logs and failures -------------------------------------------------------------------------------
def test_logs_reasons_and_a_retried_crash(tmp_path: Path, fake: list[str], ray_cluster: Any):
    specs = {
        "fine": {"score": 1.0},
        "flaky": {"crash_first_n_attempts": 1, "score": 3.0},
        "broken": {"exit": 5},
        "slow": {"sleep": 60, "child": True},
    }
    tasks = _tasks(tmp_path, specs)
    events: list[tuple[str, dict[str, Any]]] = []
    launcher = _launcher(fake, num_cpus=0.5, timeout=2.0)
    records = run_trials(tasks, launcher, TrialStore(tmp_path / "trials.db"), 1, lambda n, p: events.append((n, p)))
    fine, flaky, broken, slow = (records[t.id] for t in tasks)

    assert (fine.status, fine.result) == ("ok", {"score": 1.0, "attempt": 1})
    assert (flaky.status, flaky.result, _count(tasks[1])) == ("ok", {"score": 3.0, "attempt": 2}, 2)
    assert (broken.status, broken.attempts, _count(tasks[2])) == ("failed", 2, 2)  # 1 + 1 retry, bounded
    assert (slow.status, slow.attempts, _count(tasks[3])) == ("failed", 2, 2)
    assert (broken.error or "").startswith("exit_5\n") and "failing with 5" in (broken.error or "")
    assert (slow.error or "").startswith("timeout\n")
    assert all(_gone(pid) for pid in _pids(tasks[3]))  # the timed-out trial and its child
    assert sorted(p["id"] for n, p in events if n == "retry") == ["broken", "flaky", "slow"]
    assert {p["id"]: p["reason"] for n, p in events if n == "failed"} == {"broken": "exit_5", "slow": "timeout"}

    for task, record in zip(tasks, (fine, flaky, broken, slow), strict=True):
        log = task.directory / "trial.log"
        assert record.log == log
        text = log.read_text()  # every attempt: a header, the trial's stdout and stderr
        assert text.count("===== attempt ") == _count(task)
        for n in range(1, _count(task) + 1):
            assert f"fake trial {task.id} run {n} CUDA_VISIBLE_DEVICES=''" in text
        assert text.count(f"fake trial {task.id} on stderr") == _count(task)
    assert "crashing on purpose" in (tasks[1].directory / "trial.log").read_text()


def test_a_directory_the_ray_node_does_not_see_is_a_clear_launch_error(tmp_path: Path, ray_cluster: Any):
    task = TrialTask("elsewhere", tmp_path / "not-shared")  # no trial.json there, as on a node without the mount
    (outcome,) = list(_launcher([sys.executable, "-c", "pass"]).run([task]))
    assert (outcome.ok, outcome.reason) == (False, "launch_error")
    log = outcome.log.read_text()
    assert "not-shared/trial.json is not there on Ray node" in log
    assert "must be on a filesystem shared by the driver and every Ray node" in log


def test_a_killed_ray_worker_fails_the_attempt_which_is_retried(tmp_path: Path, fake: list[str], ray_cluster: Any):
    # the victim does not watch its parent: the launcher itself must kill what the dead worker left
    specs = {"victim": {"hang_first_n_attempts": 1, "child": True, "watch_parent": False, "score": 2.0}}
    specs |= {f"bystander{i}": {"sleep": 0.5, "score": i} for i in range(3)}
    tasks = _tasks(tmp_path, specs)
    victim = tasks[0]
    killed: list[int] = []

    def kill_the_worker() -> None:
        _wait_for(lambda: len(_starts(victim)) == 1 and (victim.directory / RAY_MARKER).exists())
        worker = psutil.Process(_starts(victim)[0]["ppid"])
        assert "ray" in " ".join(worker.cmdline()).lower()  # the Ray worker running the trial
        killed.append(worker.pid)
        worker.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    events: list[tuple[str, dict[str, Any]]] = []
    launcher = _launcher(fake, num_cpus=1)
    records = run_trials(tasks, launcher, TrialStore(tmp_path / "trials.db"), 1, lambda n, p: events.append((n, p)))
    killer.join()

    assert killed
    assert all(r.status == "ok" for r in records.values())  # the sweep went on
    assert records["victim"].result == {"score": 2.0, "attempt": 2}
    assert [p["reason"] for n, p in events if n == "retry"] == ["launch_error"]
    first, second = _starts(victim)
    assert second["stale_alive"] == []  # the retry started once the first attempt's processes were gone
    assert _gone(first["pid"]) and _gone(first["child"])
    log = (victim.directory / "trial.log").read_text()
    assert f"===== launch_error: the Ray worker running the trial died (worker pid {killed[0]} on " in log
    assert "; the processes it left were killed\n" in log  # by the launcher: the victim ignores its parent
    assert log.count("===== attempt ") == 2 and not (victim.directory / RAY_MARKER).exists()


# ---- interrupts --------------------------------------------------------------------------------------
def test_closing_the_run_kills_running_trials_and_drops_queued_ones(tmp_path: Path, fake: list[str], ray_cluster: Any):
    long = {"sleep": 120, "child": True, "watch_parent": False}
    tasks = _tasks(tmp_path, {"quick": {}, "long1": long, "long2": long, "long3": long})
    run = _launcher(fake, num_cpus=1).run(list(tasks))  # 2 CPUs: 2 at once
    first: TrialOutcome = next(run)
    assert first.id == "quick" and first.ok
    _wait_for(lambda: sum(_count(t) for t in tasks[1:]) == 2)
    started = [t for t in tasks[1:] if _count(t)]
    queued = next(t for t in tasks[1:] if not _count(t))
    _wait_for(lambda: all((t.directory / RAY_MARKER).exists() and _starts(t) for t in started))
    t0 = time.monotonic()
    run.close()  # what Ctrl-C does to the engine's loop
    assert time.monotonic() - t0 < 10
    pids = [p for t in started for p in _pids(t)]
    assert len(pids) == 4
    _wait_for(lambda: all(_gone(p) for p in pids), timeout=5)
    time.sleep(1.0)
    assert _count(queued) == 0  # cancelled before it started
    assert not any((t.directory / RAY_MARKER).exists() for t in tasks)


def test_an_exception_in_the_engine_stops_the_trials(tmp_path: Path, fake: list[str], ray_cluster: Any):
    tasks = _tasks(tmp_path, {"quick": {}, "long": {"sleep": 120, "child": True, "watch_parent": False}})
    store = TrialStore(tmp_path / "trials.db")

    def on_event(name: str, payload: dict[str, Any]) -> None:
        if name == "ok":
            _wait_for(lambda: len(_starts(tasks[1])) == 1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(tasks, _launcher(fake, num_cpus=1), store, 0, on_event)
    _wait_for(lambda: all(_gone(p) for p in _pids(tasks[1])), timeout=5)
    long = store.get("long")
    assert long is not None and long.status == "running"  # until a rerun resets it


_DRIVER = """
import sys
from pathlib import Path
import ray
from curation.recipe.selection import RayLauncherConfig
from curation.selection.engine import run_trials
from curation.selection.launchers.process import TrialTask
from curation.selection.launchers.ray import RayLauncher
from curation.selection.store import TrialStore

address, root, prefix = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
ray.init(address=address, log_to_driver=False, logging_level="WARNING")
tasks = [TrialTask(d.name, d) for d in sorted((root / "trials").iterdir())]
launcher = RayLauncher(RayLauncherConfig(type="ray", num_cpus=1), command_prefix=prefix, kill_grace=1.0)
run_trials(tasks, launcher, TrialStore(root / "trials.db"), 0)
"""


def test_ctrl_c_in_a_driver_kills_its_trials(tmp_path: Path, fake: list[str], ray_cluster: Any):
    long = {"sleep": 120, "child": True, "watch_parent": False}
    tasks = _tasks(tmp_path, {"a": long, "b": long})
    address = ray_cluster.address_info["gcs_address"]
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, address, str(tmp_path), *fake])
    try:
        _wait_for(lambda: all(len(_starts(t)) == 1 for t in tasks))
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=30) != 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    _wait_for(lambda: all(_gone(p) for t in tasks for p in _pids(t)), timeout=5)


# ---- a whole selection sweep -------------------------------------------------------------------------
def test_a_selection_sweep_on_ray_decides_as_the_local_launcher(
    tmp_path: Path, ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
):
    from curation.recipe import validate_recipe
    from curation.selection.sweep import run_selection
    from tests.integration.test_select import _decisions, _recipe

    def sweep(name: str, launcher: dict[str, Any]) -> dict[str, Any]:
        root = tmp_path / name
        root.mkdir()
        data = _recipe(root, root / "trained.txt", launcher=launcher, final_all_candidates=False)
        data["categories"] = data["categories"][:1]  # color: a helpful and a poisoned candidate
        return run_selection(validate_recipe(data), root / "sweep", progress=False)

    ray_runs: list[int] = []
    ray_run = RayLauncher.run

    def counted(self: RayLauncher, tasks: list[TrialTask]) -> Iterator[TrialOutcome]:
        ray_runs.append(len(tasks))
        return ray_run(self, tasks)

    monkeypatch.setattr(RayLauncher, "run", counted)
    on_ray = sweep("ray", {"type": "ray", "num_cpus": 1})
    assert sum(ray_runs) == 3  # the trials went to Ray
    local = sweep("local", {"type": "local", "max_concurrent": 2})
    assert _decisions(on_ray) == _decisions(local) == {"color_good": "accepted", "color_poison": "rejected"}
    assert on_ray["progression"] == local["progression"]
    assert [c["name"] for c in on_ray["selected_components"]] == ["base", "color_good"]
    assert _scores(on_ray) == _scores(local) == {"color_good": 55.0, "color_poison": 40.0}
    for name in ("ray", "local"):  # baseline, 2 candidates (the merged baseline is the color_good trial)
        assert len((tmp_path / name / "trained.txt").read_text().splitlines()) == 3


def _scores(doc: dict[str, Any]) -> dict[str, float]:
    return {c["name"]: c["score"] for cat in doc["categories"] for c in cat["candidates"]}


def test_make_launcher(tmp_path: Path):
    pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    launcher = make_launcher(RayLauncherConfig(type="ray", num_gpus=1), tmp_path)
    assert isinstance(launcher, RayLauncher) and launcher.command_prefix is None  # the worker's interpreter
