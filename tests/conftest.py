"""Session-wide settings.

- Ray reads RAY_AUTH_MODE once per process and its token check must agree between a driver and the Ray it joins
  or starts: every Ray of the test session (``ray.init`` here, ``ray start`` clusters, CLI subprocesses) runs with
  the same settings, set before any test imports Ray.
- SIGINT as a terminal has it: a non-interactive shell starts a background job with SIGINT ignored, every child
  inherits that, and a child Python then raises no KeyboardInterrupt, neither on a test's Ctrl-C nor on Ray's
  cancel of a task (which interrupts the worker the same way). The product rightly keeps an ignored SIGINT
  ignored; the suite restores the default once, here, for everything it starts.
- The toolkit's default cache lives in the user's home: the suite points it at a temporary directory.
"""

import atexit
import os
import shutil
import signal
import tempfile

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
