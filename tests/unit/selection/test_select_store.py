"""The trial store: records round-trip, failed attempts count, resume resets running rows, several processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from curation.selection.store import TrialStore

_WRITER = """
import sys
from pathlib import Path
from curation.selection.store import TrialStore

store, n, me = TrialStore(Path(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
for i in range(n):
    store.mark_running(f"{me}-{i}", f"/logs/{me}-{i}")
    store.mark_ok(f"{me}-{i}", {"score": i, "by": me}, 0.5)
    store.mark_failed("shared", f"from {me}", 0.1)
    assert store.get("shared") is not None
"""


def test_records_round_trip(tmp_path: Path):
    with TrialStore(tmp_path / "trials.db") as store:
        assert store.get("a") is None
        store.mark_running("a", tmp_path / "a" / "trial.log")
        rec = store.get("a")
        assert rec is not None and rec.status == "running" and rec.attempts == 0
        assert rec.log == tmp_path / "a" / "trial.log" and rec.started is not None and rec.finished is None
        store.mark_failed("a", "exit_3\nboom", 1.5)
        rec = store.get("a")
        assert rec is not None and (rec.status, rec.attempts, rec.error, rec.seconds) == (
            "failed",
            1,
            "exit_3\nboom",
            1.5,
        )
        assert rec.log == tmp_path / "a" / "trial.log"  # kept from mark_running
        store.mark_running("a", tmp_path / "a" / "trial.log")
        store.mark_ok("a", {"score": 1.25, "metrics": {"vqa/accuracy": 0.5}}, 2.0)
        rec = store.get("a")
        assert rec is not None and (rec.status, rec.attempts, rec.error) == ("ok", 1, None)
        assert rec.result == {"score": 1.25, "metrics": {"vqa/accuracy": 0.5}} and rec.seconds == 2.0
        assert rec.finished is not None and rec.finished >= rec.started
    with TrialStore(tmp_path / "trials.db") as again:  # persisted
        assert again.get("a") == rec


def test_reset_running_and_pending(tmp_path: Path):
    store = TrialStore(tmp_path / "trials.db")
    store.add_pending(["a", "b", "c", "d"])
    store.mark_running("a", "la")
    store.mark_failed("b", "x", 0.0)
    store.mark_running("b", "lb")  # a retry, killed
    store.mark_ok("c", {}, 0.0)
    store.add_pending(["a", "b", "c", "d", "e"])  # known rows untouched
    assert {r.id: r.status for r in store.all()} == {
        "a": "running",
        "b": "running",
        "c": "ok",
        "d": "pending",
        "e": "pending",
    }
    assert store.reset_running() == 2
    records = {r.id: r for r in store.all()}
    assert [records[i].status for i in "abcde"] == ["pending", "pending", "ok", "pending", "pending"]
    assert records["b"].attempts == 1  # unchanged by the reset
    assert [r.id for r in store.all()] == ["a", "b", "c", "d", "e"]


def test_several_processes_write_one_store(tmp_path: Path):
    db = tmp_path / "trials.db"
    TrialStore(db).close()
    n, writers = 40, ["w0", "w1", "w2"]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(n), w]) for w in writers]
    reader = TrialStore(db)
    while any(p.poll() is None for p in procs):  # reading while they write (WAL)
        assert all(r.status in ("running", "ok", "failed") for r in reader.all())
        time.sleep(0.01)
    assert [p.returncode for p in procs] == [0, 0, 0]
    records = {r.id: r for r in reader.all()}
    assert len(records) == n * len(writers) + 1
    assert records["shared"].attempts == n * len(writers)  # no lost increment
    assert records["w1-7"].result == {"score": 7, "by": "w1"} and records["w1-7"].status == "ok"
