"""Session-wide settings. Ray reads RAY_AUTH_MODE once per process and its token check must agree between a
driver and the Ray it joins or starts: every Ray of the test session (``ray.init`` here, ``ray start``
clusters, CLI subprocesses) runs with the same settings, set before any test imports Ray."""

import os

from tests.ray_cluster import ENV

os.environ.update(ENV)
