"""Fault injection for the crash-resume tests: ``VLM_CURATION_CRASH_AT=point:n`` kills the process
with SIGKILL the n-th time ``point`` is reached (counted per process). Unset in normal use."""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "VLM_CURATION_CRASH_AT"
_hits: Counter[str] = Counter()


def crash_point(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
