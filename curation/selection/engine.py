"""Run a sweep's trials through a launcher, with the store as the memory of what is done: a finished trial
is never run again.

A trial already ``ok`` in the store is a cache hit and is not run. The others run; a failed attempt is
retried up to ``retries`` more times in this run (its retry is queued while the other trials go on), and a
trial failing every attempt is recorded ``failed`` with its log and the tail of it; the sweep never raises
for a failed trial. Rows left ``running`` by a killed sweep are reset to ``pending`` first, so a rerun
resumes. Each run gives failed trials a fresh budget of attempts (the store's ``attempts`` keeps counting).

Events (``on_event(name, payload)``, every payload with ``id``): ``cached`` {result}, ``started``
{attempt}, ``ok`` {attempt, seconds, result}, ``retry`` {attempt (the next one), reason}, ``failed``
{attempt, reason, error, log}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curation.selection.launchers.process import Launcher, TrialOutcome, TrialTask, log_tail
from curation.selection.store import TrialRecord, TrialStore

RESULT_NAME = "result.json"
_ERROR_LINES = 40

OnEvent = Callable[[str, dict[str, Any]], None]


def _read_result(directory: Path) -> dict[str, Any] | None:
    try:
        result = json.loads((directory / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _error_text(reason: str, log: Path) -> str:
    """The reason and the last lines of the trial log (where the last attempt is)."""
    lines = log_tail(log).splitlines()[-_ERROR_LINES:]
    return "\n".join([reason, *lines])


def _prepare(task: TrialTask, store: TrialStore) -> None:
    """Before an attempt: no stale result from an earlier one, and the store says running."""
    (task.directory / RESULT_NAME).unlink(missing_ok=True)
    store.mark_running(task.id, task.directory / "trial.log")


def run_trials(
    tasks: list[TrialTask],
    launcher: Launcher,
    store: TrialStore,
    retries: int,
    on_event: OnEvent | None = None,
) -> dict[str, TrialRecord]:
    """Run ``tasks`` (cache hits skipped, failures retried) and return every task's record by id."""
    emit = on_event or (lambda name, payload: None)
    by_id = {t.id: t for t in tasks}
    if len(by_id) != len(tasks):
        raise ValueError("duplicate trial ids")
    store.reset_running()
    store.add_pending(list(by_id))
    queue: list[TrialTask] = []
    attempt: dict[str, int] = {}
    for task in tasks:
        record = store.get(task.id)
        if record is not None and record.status == "ok":
            emit("cached", {"id": task.id, "result": record.result})
            continue
        _prepare(task, store)
        attempt[task.id] = 1
        queue.append(task)
        emit("started", {"id": task.id, "attempt": 1})
    waiting = {t.id for t in queue}
    outcomes = launcher.run(queue) if queue else iter(())
    try:  # on any exception (Ctrl-C) the launcher is closed, which stops its running trials
        for outcome in outcomes:
            if outcome.id not in waiting:
                continue  # not ours, or a second outcome for one attempt: a launcher bug, ignored
            waiting.discard(outcome.id)
            retry = _record_outcome(by_id[outcome.id], outcome, attempt[outcome.id], retries, store, emit)
            if retry:
                _prepare(retry, store)
                attempt[retry.id] += 1
                waiting.add(retry.id)
                queue.append(retry)
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
    for id in sorted(waiting):  # the launcher ended without their outcome
        store.mark_failed(id, "no_outcome", 0.0)
        emit("failed", {"id": id, "attempt": attempt[id], "reason": "no_outcome", "error": "no_outcome", "log": None})
    return {t.id: _recorded(store, t.id) for t in tasks}


def _record_outcome(
    task: TrialTask, outcome: TrialOutcome, attempt: int, retries: int, store: TrialStore, emit: OnEvent
) -> TrialTask | None:
    """Store one outcome; returns the task when it is to be tried again."""
    reason = outcome.reason
    if outcome.ok:
        result = _read_result(task.directory)
        if result is not None:
            store.mark_ok(task.id, result, outcome.seconds)
            emit("ok", {"id": task.id, "attempt": attempt, "seconds": outcome.seconds, "result": result})
            return None
        reason = "no_result"
    error = _error_text(reason, outcome.log)
    store.mark_failed(task.id, error, outcome.seconds)
    if attempt <= retries:
        emit("retry", {"id": task.id, "attempt": attempt + 1, "reason": reason})
        return task
    emit("failed", {"id": task.id, "attempt": attempt, "reason": reason, "error": error, "log": outcome.log})
    return None


def _recorded(store: TrialStore, id: str) -> TrialRecord:
    record = store.get(id)
    assert record is not None, id
    return record
