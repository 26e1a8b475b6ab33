"""Session-wide settings.

- Ray reads RAY_AUTH_MODE once per process and its token check must agree between a driver and the Ray it joins
  or starts: every Ray of the test session (``ray.init`` here, ``ray start`` clusters, CLI subprocesses) runs with
  the same settings, set before any test imports Ray.
- SIGINT as a terminal has it: a non-interactive shell starts a background job with SIGINT ignored, every child
  inherits that, and a child Python then raises no KeyboardInterrupt, neither on a test's Ctrl-C nor on Ray's
  cancel of a task (which interrupts the worker the same way). The product rightly keeps an ignored SIGINT
  ignored; the suite restores the default once, here, for everything it starts.
- The toolkit's default cache lives in the user's home: the suite points it at a temporary directory.
- The suite runs on pytest-xdist workers (``-n`` in pyproject.toml). Each test file stays on one worker (its
  module fixtures, a reference build say, are made once), and the files that start Ray share one group: one Ray
  at a time on the machine (a head takes fixed ports, such as the Ray client's and the dashboard agent's).
"""

import atexit
import functools
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

from tests.ray_cluster import ENV

os.environ.update(ENV)
# A build whose accounting holds a drop reason that nothing running at its step declares fails (the runner checks it
# with curation.build.drop_reasons.undeclared; outside the tests it warns).
os.environ.setdefault("VLM_CURATION_STRICT_DROPS", "1")
# The toolkit's caches (embeddings, generations) default to ~/.cache/vlm-curation: the suite never writes there.
if "VLM_CURATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="vlm-curation-test-cache-")
    os.environ["VLM_CURATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# What marks a test file that starts Ray: a cluster, ``ray.init``, a build or launcher on the ray executor.
_STARTS_RAY = re.compile(r"ray_cluster|RayCluster|ray\.init|[\"']ray[\"']")


@functools.cache
def _xdist_group(path: Path) -> str:
    return "ray" if _STARTS_RAY.search(path.read_text()) else str(path)


def _group(item) -> str:
    """The file's group; a slow test that shares no module fixture with its file is a group of its own (the two
    workers then share the long tests instead of one of them waiting on a file)."""
    group = _xdist_group(item.path)
    if group != "ray" and item.get_closest_marker("slow") is not None:
        fixtures = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for defs in (fixtures.name2fixturedefs.values() if fixtures else []) for d in defs}
        if not scopes & {"module", "class", "package"}:
            return item.nodeid
    return group


def pytest_collection_modifyitems(config, items):
    import pytest

    groups = {item.nodeid: _group(item) for item in items}
    # The Ray group is the longest: first, so that one worker starts on it while the other takes the rest.
    items.sort(key=lambda item: groups[item.nodeid] != "ray")
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
