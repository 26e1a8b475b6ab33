"""A real Ray cluster on this machine for tests: ``ray start --head`` plus worker nodes, each node in its own
process session (so one node can be killed without touching the others, nor any other Ray on the machine).

Never ``ray stop``: it kills every Ray process of the machine, including other test sessions'. The test
process itself runs with ``ENV`` (set by ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Ray >= 2.5x turns on token authentication for `ray start` clusters; a loopback test cluster goes without.
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@dataclass
class LocalRayCluster:
    temp_dir: Path
    port: int = field(default_factory=free_port)
    nodes: list[subprocess.Popen] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set on every node (e.g. where its tasks stage)

    @property
    def address(self) -> str:
        return f"{self._ip()}:{self.port}"

    def _ip(self) -> str:
        from ray.util import get_node_ip_address

        return get_node_ip_address()

    def _start(self, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, **ENV, **self.env}
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        proc = subprocess.Popen(
            [_ray_cli(), "start", "--block", "--temp-dir", str(self.temp_dir), *ports, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the node's daemons share this session: killpg stops exactly this node
        )
        self.nodes.append(proc)
        return proc

    def start_head(self, num_cpus: int = 1) -> None:
        self._start(
            [
                "--head",
                "--port",
                str(self.port),
                "--num-cpus",
                str(num_cpus),
                "--include-dashboard",
                "false",
                "--ray-client-server-port",
                str(free_port()),
            ]
        )
        self.wait_for(1)

    def add_worker(self, num_cpus: int = 1, resources: str | None = None, num_gpus: int = 0) -> subprocess.Popen:
        """A worker node; ``num_gpus`` declares GPUs it does not have (Ray schedules on the declaration)."""
        alive = self.alive()
        extra = ["--resources", resources] if resources else []
        extra += ["--num-gpus", str(num_gpus)] if num_gpus else []
        proc = self._start(["--address", self.address, "--num-cpus", str(num_cpus), *extra])
        self.wait_for(alive + 1)
        return proc

    def alive(self) -> int:
        """Nodes alive, as the cluster's GCS sees them (connects this process as a driver for the moment)."""
        import ray

        connected = ray.is_initialized()
        if not connected:
            ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
        try:
            return sum(1 for node in ray.nodes() if node.get("Alive"))
        finally:
            if not connected:
                ray.shutdown()

    def wait_for(self, n: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test Ray cluster did not reach {n} nodes in {timeout:.0f}s")
            time.sleep(1.0)

    def kill_node(self, proc: subprocess.Popen) -> None:
        """SIGKILL every process of one node (its raylet, agents and workers started under it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def shutdown(self) -> None:
        for proc in reversed(self.nodes):
            self.kill_node(proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_cluster(workers: int = 1, env: dict[str, str] | None = None) -> LocalRayCluster:
    """A head (1 CPU) and ``workers`` worker nodes (1 CPU each) on this machine, ``env`` set on each."""
    # Ray's socket paths must stay short: a short directory under /tmp, not pytest's tmp_path.
    cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="rt", dir="/tmp")), env=dict(env or {}))
    try:
        cluster.start_head()
        for _ in range(workers):
            cluster.add_worker()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster
