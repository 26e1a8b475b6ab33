"""Guarantee 4, bounded memory: the peak RSS of a build does not grow with the dataset size."""

from __future__ import annotations

import subprocess

import pytest

from tests.builds import CLI, demo_recipe, make_inputs, write_recipe


def _peak_rss_of_build(tmp_path, n_captions: int) -> float:
    """Peak RSS (MiB) of a `curate build` run as the only child of a fresh Python (its RUSAGE_CHILDREN)."""
    root = tmp_path / f"in{n_captions}"
    make_inputs(root, n_captions=n_captions, n_conversations=n_captions // 5)
    recipe = demo_recipe(root)
    recipe["sources"][0]["partition_size"] = 500
    path = write_recipe(tmp_path / f"r{n_captions}.yaml", recipe)
    args = [*CLI, "build", str(path), "--out", str(tmp_path / f"out{n_captions}"), "-q"]
    code = (
        f"import resource, subprocess; subprocess.run({args!r}, check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([CLI[0], "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_peak_memory_is_flat_as_the_input_grows(tmp_path):
    small = _peak_rss_of_build(tmp_path, 1_000)
    large = _peak_rss_of_build(tmp_path, 5_000)
    assert large < 1024 and large / small < 1.25, (small, large)
