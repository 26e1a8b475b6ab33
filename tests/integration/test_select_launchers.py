"""Trials through the launchers and the engine, with a fake trial program standing in for ``run_trial``.

The fake keeps the trial contract (``trial.json`` in, ``result.json`` written last, exit 0) and leaves
evidence in its directory: ``count`` (how many times it was started), ``runs.jsonl`` (start and end
times, pid, CUDA_VISIBLE_DEVICES of each run).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from curation.errors import CurationError
from curation.recipe.selection import LocalLauncherConfig, SlurmLauncherConfig
from curation.selection.engine import run_trials
from curation.selection.launchers import make_launcher
from curation.selection.launchers.local import LocalLauncher
from curation.selection.launchers.process import TrialOutcome, TrialTask, classify, visible_gpus
from curation.selection.store import TrialStore

FAKE_TRIAL = """
import json, os, signal, sys, threading, time
from pathlib import Path

d = Path(sys.argv[1])
spec = json.loads((d / "trial.json").read_text())
n = int((d / "count").read_text()) + 1 if (d / "count").exists() else 1
(d / "count").write_text(str(n))
parent = os.environ.get("CURATION_PARENT_PID")
if parent and spec.get("watch_parent", True):  # what run_trial should do: exit with its sweep
    def watch():
        while os.getppid() == int(parent):
            time.sleep(0.05)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()
if spec.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
t0 = time.time()
print(f"fake trial {d.name} run {n}", flush=True)
if n <= spec.get("crash_first_n_attempts", 0):
    print("crashing on purpose", flush=True)
    sys.exit(3)
time.sleep(spec.get("sleep", 0))
if spec.get("oom") == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
if spec.get("oom") == "cuda":
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
    sys.exit(1)
run = {"n": n, "t0": t0, "t1": time.time(), "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
with open(d / "runs.jsonl", "a") as f:
    f.write(json.dumps(run) + "\\n")
if spec.get("exit", 0):
    print(f"failing with {spec['exit']}", flush=True)
    sys.exit(spec["exit"])
if not spec.get("no_result"):
    (d / "result.json").write_text(json.dumps({"score": spec.get("score", 0.0), "attempt": n}))
"""


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    path = tmp_path / "fake_trial.py"
    path.write_text(FAKE_TRIAL)
    return [sys.executable, str(path)]


def _tasks(root: Path, specs: dict[str, dict[str, Any]], gpus: int = 0) -> list[TrialTask]:
    tasks = []
    for tid, spec in specs.items():
        d = root / "trials" / tid
        d.mkdir(parents=True, exist_ok=True)
        (d / "trial.json").write_text(json.dumps(spec))
        tasks.append(TrialTask(tid, d, spec.get("gpus", gpus)))
    return tasks


def _count(task: TrialTask) -> int:
    f = task.directory / "count"
    return int(f.read_text()) if f.exists() else 0


def _runs(task: TrialTask) -> list[dict[str, Any]]:
    f = task.directory / "runs.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def _local(fake: list[str], **kw: Any) -> LocalLauncher:
    gpus = kw.pop("gpus", [])
    return LocalLauncher(LocalLauncherConfig(type="local", **kw), command_prefix=fake, gpus=gpus, kill_grace=1.0)


def _max_overlap(runs: list[dict[str, Any]]) -> int:
    points = sorted([(r["t0"], 1) for r in runs] + [(r["t1"], -1) for r in runs], key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def test_success_then_cache_hit(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {"a": {"score": 1.5}, "b": {"score": 2.5}})
    store = TrialStore(tmp_path / "trials.db")
    events: list[tuple[str, dict[str, Any]]] = []
    records = run_trials(tasks, _local(fake, max_concurrent=2), store, 1, lambda n, p: events.append((n, p)))
    assert {i: (r.status, r.result) for i, r in records.items()} == {
        "a": ("ok", {"score": 1.5, "attempt": 1}),
        "b": ("ok", {"score": 2.5, "attempt": 1}),
    }
    assert sorted(n for n, _ in events) == ["ok", "ok", "started", "started"]
    assert records["a"].log == tasks[0].directory / "trial.log" and records["a"].seconds > 0
    log = records["a"].log.read_text()
    assert log.startswith("===== attempt ") and "fake trial a run 1" in log

    events.clear()
    again = run_trials(tasks, _local(fake, max_concurrent=2), store, 1, lambda n, p: events.append((n, p)))
    assert [_count(t) for t in tasks] == [1, 1]  # not launched again
    assert [n for n, _ in events] == ["cached", "cached"] and events[0][1]["result"]["score"] == 1.5
    assert again == records


def test_crash_retried_then_ok_and_persistent_failure_recorded(tmp_path: Path, fake: list[str]):
    specs = {"flaky": {"crash_first_n_attempts": 1, "score": 3.0}, "broken": {"exit": 5}, "fine": {"score": 1.0}}
    tasks = _tasks(tmp_path, specs)
    events: list[tuple[str, dict[str, Any]]] = []
    store = TrialStore(tmp_path / "trials.db")
    records = run_trials(tasks, _local(fake, max_concurrent=2), store, 1, lambda n, p: events.append((n, p)))

    flaky, broken, fine = records["flaky"], records["broken"], records["fine"]
    assert (flaky.status, flaky.attempts, flaky.result) == ("ok", 1, {"score": 3.0, "attempt": 2})
    assert fine.status == "ok" and _count(tasks[2]) == 1  # the sweep went on
    assert (broken.status, broken.attempts) == ("failed", 2) and _count(tasks[1]) == 2  # 1 + 1 retry
    assert broken.error is not None and broken.error.startswith("exit_5\n") and "failing with 5" in broken.error
    assert broken.log is not None and broken.log.read_text().count("===== attempt ") == 2
    assert flaky.log is not None and "crashing on purpose" in flaky.log.read_text()
    failed = [p for n, p in events if n == "failed"]
    assert len(failed) == 1 and failed[0]["id"] == "broken" and failed[0]["reason"] == "exit_5"
    assert sorted(p["id"] for n, p in events if n == "retry") == ["broken", "flaky"]

    # a rerun retries the failed trial again (a fresh budget) and keeps the successes cached
    records = run_trials(tasks, _local(fake), store, 0)
    assert records["broken"].attempts == 3 and [_count(t) for t in tasks] == [2, 3, 1]


def test_timeout_oom_and_missing_result(tmp_path: Path, fake: list[str]):
    specs = {
        "slow": {"sleep": 30},
        "killed": {"oom": "sigkill"},
        "cuda": {"oom": "cuda"},
        "silent": {"no_result": True},
        "stubborn": {"sleep": 30, "ignore_term": True},
    }
    tasks = _tasks(tmp_path, specs)
    store = TrialStore(tmp_path / "trials.db")
    t0 = time.monotonic()
    records = run_trials(tasks, _local(fake, max_concurrent=5, timeout=1.0), store, 0)
    assert time.monotonic() - t0 < 10
    reasons = {i: (r.status, r.error.splitlines()[0]) for i, r in records.items() if r.error}
    assert reasons == {
        "slow": ("failed", "timeout"),
        "killed": ("failed", "oom"),
        "cuda": ("failed", "oom"),
        "silent": ("failed", "no_result"),
        "stubborn": ("failed", "timeout"),  # SIGKILL after the grace period
    }
    assert "CUDA out of memory" in (records["cuda"].error or "")


def test_classify_heuristic():
    assert classify(0, "") == "ok"
    assert classify(-9, "") == "oom" and classify(137, "Killed\n") == "oom"
    assert classify(-9, "", killed_by_us=True) == "killed_SIGKILL"
    assert classify(1, "RuntimeError: CUDA out of memory.") == "oom"
    assert classify(-15, "") == "killed_SIGTERM" and classify(2, "usage") == "exit_2"
    assert classify(-15, "", timed_out=True) == "timeout"


def test_two_at_a_time(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {f"t{i}": {"sleep": 0.4} for i in range(5)})
    run_trials(tasks, _local(fake, max_concurrent=2), TrialStore(tmp_path / "trials.db"), 0)
    runs = [r for t in tasks for r in _runs(t)]
    assert len(runs) == 5 and _max_overlap(runs) == 2


def test_gpu_assignment(tmp_path: Path, fake: list[str]):
    specs = {f"g{i}": {"sleep": 0.3, "gpus": 1 + i % 2} for i in range(6)} | {"cpu": {}, "huge": {"gpus": 4}}
    tasks = _tasks(tmp_path, specs)
    launcher = _local(fake, max_concurrent=3, gpus=["3", "5", "7"])
    outcomes = {o.id: o for o in launcher.run(list(tasks))}
    assert outcomes["huge"].reason == "launch_error" and "needs 4 GPUs" in outcomes["huge"].log.read_text()
    assert all(o.ok for i, o in outcomes.items() if i != "huge")
    runs = {t.id: _runs(t)[0] for t in tasks if t.id != "huge"}
    assert runs["cpu"]["gpus"] == ""
    for tid, run in runs.items():
        ids = [g for g in run["gpus"].split(",") if g]
        assert len(ids) == len(set(ids)) == specs[tid].get("gpus", 0) and set(ids) <= {"3", "5", "7"}
    for a, ra in runs.items():  # trials running at the same time never share a GPU
        for b, rb in runs.items():
            if a < b and ra["t0"] < rb["t1"] and rb["t0"] < ra["t1"]:
                assert not set(ra["gpus"].split(",")) & set(rb["gpus"].split(",")) - {""}


def test_engine_overhead_is_small(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {f"t{i:02d}": {"score": i} for i in range(20)})
    store = TrialStore(tmp_path / "trials.db")
    t0 = time.monotonic()
    records = run_trials(tasks, _local(fake, max_concurrent=2), store, 0)
    wall = time.monotonic() - t0
    assert all(r.status == "ok" for r in records.values())
    process = sum(r.seconds or 0.0 for r in records.values())
    overhead = (wall - process / 2) / len(tasks)
    print(f"20 trials: wall {wall:.2f}s, process {process:.2f}s, overhead {overhead * 1000:.0f} ms/trial")
    assert overhead < 1.0


def test_closing_the_run_kills_running_trials(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {"quick": {}, "long": {"sleep": 60, "watch_parent": False}})
    run = _local(fake, max_concurrent=2).run(list(tasks))
    first: TrialOutcome = next(run)
    assert first.id == "quick"
    deadline = time.monotonic() + 10
    while _count(tasks[1]) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.close()  # what Ctrl-C does to the engine's loop
    log = tasks[1].directory / "trial.log"
    assert "fake trial long run 1" in log.read_text()
    assert not _runs(tasks[1]) and _no_live_run(tasks[1])  # killed, not left running


def test_an_exception_in_the_engine_stops_the_trials(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {"quick": {}, "long": {"sleep": 60, "watch_parent": False}})
    store = TrialStore(tmp_path / "trials.db")

    def on_event(name: str, payload: dict[str, Any]) -> None:
        if name == "ok":
            _wait_for(lambda: _count(tasks[1]) == 1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(tasks, _local(fake, max_concurrent=2), store, 0, on_event)
    assert _no_live_run(tasks[1])
    long = store.get("long")
    assert long is not None and long.status == "running"  # until a rerun resets it


_SWEEP = """
import sys
from pathlib import Path
from curation.errors import CurationError
from curation.recipe.selection import LocalLauncherConfig
from curation.selection.engine import run_trials
from curation.selection.launchers.local import LocalLauncher
from curation.selection.launchers.process import TrialTask

root, prefix = Path(sys.argv[1]), sys.argv[2:]
tasks = [TrialTask(d.name, d) for d in sorted((root / "trials").iterdir())]
launcher = LocalLauncher(LocalLauncherConfig(type="local", max_concurrent=2), command_prefix=prefix, gpus=[])
from curation.selection.store import TrialStore
run_trials(tasks, launcher, TrialStore(root / "trials.db"), 0)
"""


def _sweep(tmp_path: Path, fake: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _SWEEP, str(tmp_path), *fake])


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_killed_sweep_resumes(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {f"t{i}": {"sleep": 0.5, "score": i} for i in range(6)})
    store = TrialStore(tmp_path / "trials.db")
    sweep = _sweep(tmp_path, fake)
    _wait_for(lambda: sum(r.status == "ok" for r in store.all()) >= 2)
    sweep.kill()
    sweep.wait()
    done = {r.id for r in store.all() if r.status == "ok"}
    assert 2 <= len(done) < 6 and any(r.status == "running" for r in store.all())
    _wait_for(lambda: all(_no_live_run(t) for t in tasks))  # orphans exit with their sweep

    events: list[str] = []
    records = run_trials(tasks, _local(fake, max_concurrent=2), store, 0, lambda n, p: events.append(n))
    assert all(r.status == "ok" for r in records.values())
    assert events.count("cached") == len(done)
    for t in tasks:
        assert _count(t) == 1 if t.id in done else _count(t) >= 1
        assert records[t.id].result == {"score": int(t.id[1:]), "attempt": _count(t)}


def _no_live_run(task: TrialTask) -> bool:
    """No process of this trial alive (the fake writes its pid only at the end, so look at /proc)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(task.directory).encode() in cmdline:
                return False
    return True


def test_interrupted_sweep_kills_its_trials(tmp_path: Path, fake: list[str]):
    tasks = _tasks(tmp_path, {f"t{i}": {"sleep": 60, "watch_parent": False} for i in range(2)})
    sweep = _sweep(tmp_path, fake)
    _wait_for(lambda: all(_count(t) == 1 for t in tasks))
    sweep.send_signal(signal.SIGINT)  # Ctrl-C
    assert sweep.wait(timeout=15) != 0
    _wait_for(lambda: all(_no_live_run(t) for t in tasks), timeout=5)


# ---- the other launchers -------------------------------------------------------------------------
@pytest.mark.parametrize("executor", ["debug", "local"])
def test_submitit_executors(tmp_path: Path, fake: list[str], executor: str):
    pytest.importorskip("submitit", reason="submitit is not installed")
    cfg = SlurmLauncherConfig(type="slurm", executor=executor, gpus_per_node=0, cpus_per_task=1, mem_gb=1)
    launcher = make_launcher(cfg, tmp_path, command_prefix=fake)
    tasks = _tasks(tmp_path, {"good": {"score": 4.0}, "flaky": {"crash_first_n_attempts": 1}, "bad": {"exit": 7}})
    records = run_trials(tasks, launcher, TrialStore(tmp_path / "trials.db"), 1)
    assert records["good"].result == {"score": 4.0, "attempt": 1}
    assert (records["flaky"].status, records["flaky"].attempts) == ("ok", 1)
    assert records["bad"].status == "failed" and (records["bad"].error or "").startswith("exit_7")
    assert _runs(tasks[0])[0]["gpus"] == ""
    assert (tmp_path / "slurm").is_dir()  # submitit's job files


def test_slurm_without_slurm_is_a_clear_error(tmp_path: Path):
    pytest.importorskip("submitit", reason="submitit is not installed")
    if shutil.which("srun"):
        pytest.skip("this machine has Slurm")
    with pytest.raises(CurationError, match="srun"):
        make_launcher(SlurmLauncherConfig(type="slurm"), tmp_path)


def test_ray_launcher(tmp_path: Path, fake: list[str]):
    ray = pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    from curation.recipe.selection import RayLauncherConfig

    # address="local": a Ray of its own, never another one running on this machine (which address=None joins)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        launcher = make_launcher(RayLauncherConfig(type="ray", num_cpus=1), tmp_path, command_prefix=fake)
        tasks = _tasks(tmp_path, {"good": {"score": 4.0}, "flaky": {"crash_first_n_attempts": 1}})
        records = run_trials(tasks, launcher, TrialStore(tmp_path / "trials.db"), 1)
        assert records["good"].result == {"score": 4.0, "attempt": 1} and records["flaky"].status == "ok"
    finally:
        ray.shutdown()


def test_make_launcher_local(tmp_path: Path):
    launcher = make_launcher(LocalLauncherConfig(type="local", max_concurrent=3), tmp_path)
    assert isinstance(launcher, LocalLauncher) and launcher.cfg.max_concurrent == 3
    assert launcher.command_prefix == [sys.executable, "-m", "curation.selection.run_trial"]


def test_visible_gpus_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 4")
    assert visible_gpus() == ["2", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_a_ray_launcher_without_an_address_joins_the_commands_cluster(tmp_path: Path):
    pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    from curation.recipe.selection import RayLauncherConfig

    joined = make_launcher(RayLauncherConfig(type="ray"), tmp_path, ray_address="head:6379")
    own = make_launcher(RayLauncherConfig(type="ray", address="other:6379"), tmp_path, ray_address="head:6379")
    assert (joined.cfg.address, own.cfg.address) == ("head:6379", "other:6379")
