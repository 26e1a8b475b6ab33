"""Which device and dtype a model stage runs on: checked up front, so a recipe asking for a GPU that is not
there fails with one line before any partition starts, not with a CUDA traceback in a worker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from curation.errors import CurationError

DTYPES = ("float32", "float16", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch (the driver plans GPU workers with it):
    ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi``'s indices, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        env = env.strip()
        if env in ("", "-1"):
            return []
        ids: list[str] = []
        for item in env.split(","):
            item = item.strip()
            if not item or item.startswith("-"):  # CUDA stops at the first invalid id
                break
            ids.append(item)
        return ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda[:N]`` is checked against what torch sees."""
    match = _DEVICE.match(device.strip()) if isinstance(device, str) else None
    if match is None:
        raise CurationError(f"device {device!r} is not a device: use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    name, index = match.group(1), match.group(2)
    if index is not None and name != "cuda":
        raise CurationError(f"device {device!r}: only cuda takes an index (cuda:N); use auto, cpu, cuda or cuda:N")
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "cuda" if _cuda_count() > 0 else "cpu"
    count = _cuda_count()
    if count == 0:
        raise CurationError(
            f"device {device}: torch sees no GPU (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
            "or a CPU-only torch); set device: auto or cpu"
        )
    if index is not None and int(index) >= count:
        raise CurationError(f"device {device}: torch sees {count} GPU(s) (cuda:0..cuda:{count - 1}); pick one of them")
    return device.strip()


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on a GPU, float32 on the CPU; float16 on the CPU is refused (slow or unsupported)."""
    on_gpu = device.startswith("cuda")
    if dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    if dtype not in DTYPES:
        raise CurationError(f"dtype {dtype!r} is not a dtype: use auto, {', '.join(DTYPES)}")
    if dtype == "float16" and not on_gpu:
        raise CurationError(
            f"dtype float16 on device {device}: half precision on the CPU is slow or unsupported; "
            "use float32 or bfloat16 there (or dtype: auto)"
        )
    return dtype


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
