"""The local executor gives partitions whose models may use a GPU one worker per visible GPU slot, each
seeing only its own GPU(s); without a visible GPU they run on the CPU workers asked for."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pytest

from curation.build.executors.local import gpu_slots, run_local
from curation.build.messages import PartitionResult
from curation.steps.contract import Resources


@pytest.mark.parametrize(
    ("visible", "gpus", "slots"),
    [
        (["0", "1"], 1.0, ["0", "1"]),
        (["0", "1"], 0.5, ["0", "0", "1", "1"]),
        (["0", "1", "2", "3"], 2.0, ["0,1", "2,3"]),
        (["0", "1", "2"], 2.0, ["0,1"]),
        (["0", "1"], 4.0, ["0,1"]),
        ([], 1.0, []),
        (["0"], 0.0, []),
    ],
)
def test_gpu_slots(visible, gpus, slots):
    assert gpu_slots(visible, gpus) == slots


@dataclass(frozen=True)
class _Task:
    gid: int
    resources: Resources = field(default_factory=Resources)


def _report_gpus(task: _Task) -> PartitionResult:
    time.sleep(0.3)  # long enough that both workers take tasks
    return PartitionResult(task.gid, 0.0, {"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()})


def _run(tasks: list[_Task], workers: int) -> list[PartitionResult]:
    done: list[PartitionResult] = []
    run_local(tasks, workers, lambda *_: None, done.append, run_task=_report_gpus)  # type: ignore[arg-type]
    return sorted(done, key=lambda r: r.gid)


def test_each_gpu_worker_sees_only_its_own_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    tasks = [_Task(i, Resources(gpus=1.0, gpu_optional=True)) for i in range(6)]
    results = _run(tasks, workers=8)  # --workers sizes CPU workers: GPU work gets one worker per GPU
    by_pid: dict[int, set[str]] = {}
    for r in results:
        by_pid.setdefault(r.placement["pid"], set()).add(r.placement["gpus"])
    assert {g for gs in by_pid.values() for g in gs} == {"3", "5"}
    assert len(by_pid) == 2 and all(len(gs) == 1 for gs in by_pid.values())


def test_without_a_visible_gpu_the_cpu_workers_run_it(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    tasks = [_Task(i, Resources(gpus=1.0, gpu_optional=True)) for i in range(4)]
    results = _run(tasks, workers=2)
    assert {r.placement["gpus"] for r in results} == {""}
    assert len({r.placement["pid"] for r in results}) <= 2
