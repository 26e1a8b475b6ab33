"""Device and dtype resolution, and GPU discovery without torch."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from curation.errors import CurationError
from curation.models import devices
from curation.models.devices import resolve_device, resolve_dtype, visible_gpus


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", ["0", "1"]),
        (" 2 ", ["2"]),
        ("", []),
        ("-1", []),
        ("GPU-8d2f1c3e-aaaa,MIG-1234", ["GPU-8d2f1c3e-aaaa", "MIG-1234"]),
        ("0,-1,2", ["0"]),  # CUDA ignores everything after an invalid id
    ],
)
def test_visible_gpus_parses_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == expected


def _fake_smi(folder: Path, body: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_visible_gpus_asks_nvidia_smi_when_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus() == []  # no nvidia-smi on PATH
    _fake_smi(tmp_path, 'printf "0\\n1\\n"')
    assert visible_gpus() == ["0", "1"]
    _fake_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert visible_gpus() == []


def test_importing_the_package_does_not_import_torch():
    code = "import sys, curation.models, curation.models.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "False"


def test_resolve_device(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(devices, "_cuda_count", lambda: 0)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(CurationError, match=r"device cuda: torch sees no GPU.*set device: auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(CurationError, match="torch sees no GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(devices, "_cuda_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(CurationError, match=r"cuda:2: torch sees 2 GPU"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "auto:1", "CUDA", "cuda:", ""])
def test_resolve_device_refuses_malformed_strings(bad: str):
    with pytest.raises(CurationError, match="auto, cpu, cuda"):
        resolve_device(bad)


def test_cuda_without_a_gpu_with_the_real_torch():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(CurationError, match="torch sees no GPU"):
        resolve_device("cuda")


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("float16", "cuda") == "float16"
    with pytest.raises(CurationError, match="float16 on device cpu"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(CurationError, match="not a dtype"):
        resolve_dtype("fp8", "cuda")


def test_prefetch_only_where_it_costs_the_model_nothing(monkeypatch: pytest.MonkeyPatch):
    import torch

    from curation.models.torch_utils import spare_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not spare_cores("cpu")  # torch's threads take every core
    assert spare_cores("cuda:0")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert spare_cores("cpu")
