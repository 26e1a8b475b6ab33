"""One build per prefix: a lock object ``<prefix>/_lock``, created with a conditional write and held as a lease.

- Taking it: ``PUT _lock`` with ``If-None-Match: *``: of two builds, exactly one write succeeds (the store
  answers the other 412). A store without conditional writes (501) falls back to write-then-read-back.
- Holding it: a thread rewrites it every ``lease/3`` seconds with ``If-Match: <its ETag>``, so its last-modified
  time (the store's clock) stays within the lease. A rewrite that loses means another build took it over: the
  holder stops before publishing anything more (:meth:`BucketLock.check`).
- Taking over: a lock whose build died (kill -9, a lost machine) is taken over with ``If-Match`` on its ETag:
  at once when its owner ran on this machine (same boot) and its process is gone, else once it has not been
  refreshed for ``lease`` seconds, as the store's own clock tells (no clock of ours is compared with it).
- Releasing it: ``DELETE _lock`` with ``If-Match``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from curation.errors import CurationError
from curation.storage.store import NotSupported, ObjectInfo, PreconditionFailed, Store

LOCK = "_lock"


def _boot_id() -> str:
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
    return ""


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (Linux: clock ticks since boot), '' when unknown or gone."""
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[19]
    return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or _process_start(pid) in ("", started)


class BucketLock:
    def __init__(self, store: Store, lease_seconds: int = 60) -> None:
        self.store = store
        self.lease = lease_seconds
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _body(self) -> bytes:
        pid = os.getpid()
        doc = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "pid": pid,
            "pid_start": _process_start(pid),
            "lease_seconds": self.lease,
            "tool": "vlm-curation",
        }
        return json.dumps(doc, sort_keys=True).encode()

    # -- taking it
    def acquire(self) -> None:
        for _ in range(3):
            try:
                self.etag = self.store.put_bytes(LOCK, self._body(), if_none_match=True).etag
                return
            except NotSupported:
                self.etag = self._acquire_unconditionally()
                return
            except PreconditionFailed:
                pass
            held = self.store.get_bytes(LOCK)
            if held is None:
                continue  # released meanwhile: try again
            data, info = held
            doc = _parse(data)
            if not self._stale(doc, info):
                raise CurationError(self._refusal(doc))
            try:  # take over the dead build's lock, unless someone else just did
                self.etag = self.store.put_bytes(LOCK, self._body(), if_match=info.etag).etag
                return
            except PreconditionFailed:
                continue
        raise CurationError(f"{self.store.url}: could not take the build lock ({LOCK}); another build is starting")

    def _acquire_unconditionally(self) -> str:
        """A store without conditional writes: write when absent or stale, then read back after a pause."""
        held = self.store.get_bytes(LOCK)
        if held is not None and not self._stale(_parse(held[0]), held[1]):
            raise CurationError(self._refusal(_parse(held[0])))
        info = self.store.put_bytes(LOCK, self._body())
        self._stop.wait(1.0)
        back = self.store.get_bytes(LOCK)
        if back is None or _parse(back[0]).get("owner") != self.owner:
            raise CurationError(self._refusal(_parse(back[0]) if back else {}))
        return info.etag

    def _stale(self, doc: dict[str, Any], info: ObjectInfo) -> bool:
        if doc.get("boot_id") and doc.get("boot_id") == _boot_id() and doc.get("host") == socket.gethostname():
            pid = doc.get("pid")
            if isinstance(pid, int) and not _alive(pid, str(doc.get("pid_start") or "")):
                return True  # its build died on this machine
        lease = doc.get("lease_seconds")
        lease = lease if isinstance(lease, int | float) and lease > 0 else self.lease
        if info.modified is None or info.now is None:
            return False
        return info.now - info.modified > lease

    def _refusal(self, doc: dict[str, Any]) -> str:
        who = f"host {doc.get('host', '?')}, pid {doc.get('pid', '?')}"
        return (
            f"another build is running into {self.store.url} ({who}; lock object {self.store.url.child(LOCK)}); "
            "wait for it or choose another --out (a lock left by a build killed on another machine expires "
            f"{doc.get('lease_seconds', self.lease)}s after its last refresh)"
        )

    # -- holding it
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._mutex:
                if self.lost or self.etag is None:
                    return
                try:
                    self.etag = self.store.put_bytes(LOCK, self._body(), if_match=self.etag).etag
                except PreconditionFailed:
                    self.lost = True
                    return
                except NotSupported:
                    self.etag = self.store.put_bytes(LOCK, self._body()).etag
                except CurationError:
                    pass  # a passing failure: the next beat tries again, the lease allows two misses

    def check(self) -> None:
        """Raise if another build took the lock over (this one stalled past its lease): publish nothing more."""
        if self.lost:
            raise CurationError(
                f"{self.store.url}: this build lost its lock (not refreshed within {self.lease}s; another build "
                "took it over); stopped before publishing more"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            if self.etag is not None and not self.lost:
                self.store.delete_if(LOCK, self.etag)
            self.etag = None

    @contextlib.contextmanager
    def held(self) -> Iterator[BucketLock]:
        self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="bucket-lock", daemon=True)
        self._thread.start()
        try:
            yield self
        except BaseException:
            with contextlib.suppress(CurationError):  # the error that stopped the build is the one to report
                self.release()
            raise
        self.release()


def _parse(data: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        doc = json.loads(data)
        if isinstance(doc, dict):
            return doc
    return {}
