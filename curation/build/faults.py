"""Fault injection for the crash-resume tests: ``VLM_CURATION_CRASH_AT=point:n`` kills the process
with SIGKILL the n-th time ``point`` is reached (counted per process). Unset in normal use.

With ``VLM_CURATION_CRASH_ONCE=PATH`` as well, only the first process to get there dies (it creates
``PATH`` first): a retried task (a Ray worker started afresh) then runs through."""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "VLM_CURATION_CRASH_AT"
ONCE_ENV = "VLM_CURATION_CRASH_ONCE"
_hits: Counter[str] = Counter()


def crash_point(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] >= int(nth or 1) and _first_to_crash():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_to_crash() -> bool:
    marker = os.environ.get(ONCE_ENV)
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
