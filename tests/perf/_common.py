"""Shared helpers of the benchmark scripts in tests/perf (not a pytest module)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parents[1]
RESULTS = PERF_DIR / "results"
CAPTION_WORDS = (
    "a photo of the red blue green small large old new wooden metal dog cat house car tree street city river "
    "mountain person people sitting standing next to on in under with at night during day sunny cloudy view"
)
WORDS = CAPTION_WORDS.split(" ")


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    versions = {}
    for dist in ("vlm-curation", "webdataset", "pyarrow", "duckdb", "pandas", "numpy", "pillow", "psutil"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": mem,
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions,
        "loadavg_at_end": loadavg(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def loadavg() -> list[float]:
    """1/5/15-minute load averages: other work on the machine makes timings noisy."""
    return [round(x, 2) for x in os.getloadavg()]


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def noise_jpeg(seed: int, target_bytes: int, size: tuple[int, int] = (480, 360), quality: int = 85) -> bytes:
    """A distinct, photo-ish (smooth colour blobs plus grain) JPEG of about ``target_bytes``.

    The grain amplitude is bisected so the encoded size lands within a few percent of the target.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    grain = rng.normal(0.0, 1.0, base.shape).astype(np.float32)

    def encode(amp: float) -> bytes:
        arr = np.clip(base + amp * grain, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    lo, hi = 0.0, 64.0
    best = encode(lo)
    for _ in range(20):
        mid = (lo + hi) / 2
        data = encode(mid)
        if abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if abs(len(data) - target_bytes) <= target_bytes * 0.02:
            break
        if len(data) < target_bytes:
            lo = mid
        else:
            hi = mid
    return best


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / (1 << 20):,.1f} MiB"


class TreeRssSampler(threading.Thread):
    """Polls the summed RSS of a process and its descendants; remembers the peak and a timeline (used by the
    benchmarks that run real builds).

    Every ``pss_interval`` s it also sums PSS (proportional set size: shared pages split between the
    processes sharing them), which does not double-count the libraries every worker maps.
    """

    def __init__(self, pid: int, interval: float, pss_interval: float = 0.25, include_root: bool = True) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.include_root = include_root  # False: only its descendants (``pid`` is a measuring wrapper)
        self.interval = interval
        self.pss_interval = pss_interval
        self.peak = 0
        self.peak_procs = 0
        self.peak_pss = 0
        self.samples = 0
        self.timeline: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        last_pss = -self.pss_interval
        while not self._stop_event.is_set():
            total, procs = 0, 0
            try:
                members = [*([self.proc] if self.include_root else []), *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            for p in members:
                try:
                    total += p.memory_info().rss
                    procs += 1
                except psutil.Error:
                    pass
            now = time.perf_counter() - t0
            if procs:
                self.samples += 1
                self.timeline.append((now, total))
                if total > self.peak:
                    self.peak, self.peak_procs = total, procs
            if now - last_pss >= self.pss_interval:
                last_pss = now
                pss = 0
                for p in members:
                    with contextlib.suppress(psutil.Error, AttributeError):
                        pss += p.memory_full_info().pss
                self.peak_pss = max(self.peak_pss, pss)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
