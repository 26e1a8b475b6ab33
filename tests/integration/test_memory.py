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


_SEARCH = """
import resource, sys, tempfile
from pathlib import Path
import numpy as np, pyarrow as pa
from curation.dedup.image_search import HashSearch
from curation.dedup.lsh import SignatureSearch, banding_for

n, kind = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    db = Path(tmp) / "s.duckdb"
    for start in range(0, n, 20_000):  # filled in slices: the data never sits in this process at once
        m = min(20_000, n - start)
        if kind == "text":
            con = SignatureSearch.create(db, 64, 1) if start == 0 else None
            sigs = rng.integers(0, 2**63, size=(m, 128), dtype=np.uint64)
            sigs[1::50] = sigs[::50][: len(sigs[1::50])]  # 2% exact copies
            sigs[2::50, :100] = sigs[::50, :100][: len(sigs[2::50])]  # 2% sharing 100 of 128 values
            rows = pa.table({"pos": np.arange(start, start + m), "grp": np.zeros(m, np.int64),
                             "sig": [s.tobytes() for s in sigs]})
            table = "sigs"
        else:
            con = HashSearch.create(db, 64, 1) if start == 0 else None
            h = rng.integers(-2**63, 2**63 - 1, size=m, dtype=np.int64)
            h[1::50] = h[::50][: len(h[1::50])] ^ 5  # 2% within 2 bits
            rows = pa.table({"pos": np.arange(start, start + m), "grp": np.zeros(m, np.int64), "h": h,
                             "rest": pa.array([[]] * m, pa.list_(pa.int64()))})
            table = "hashes"
        from curation.dedup import search_db
        con = con or search_db.connect(db, 64, 1)
        con.register("rows", rows)
        con.execute(f"INSERT INTO {table} SELECT * FROM rows")
        con.close()
    if kind == "text":
        pairs = SignatureSearch(db, 128, 64, 1).run(0.75, banding_for(0.75, 128))
    else:
        pairs = HashSearch(db, 64, 1).run(4)
    assert len(pairs) >= n // 50, len(pairs)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_of_search(kind: str, n: int) -> float:
    out = subprocess.run([CLI[0], "-c", _SEARCH, str(n), kind], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "small", "large"), [("text", 40_000, 200_000), ("images", 200_000, 1_000_000)])
def test_the_global_searches_stay_within_their_memory_budget(kind: str, small: int, large: int):
    """With 64 MB for DuckDB, 5x the samples (200 MB of signatures, or 1M image hashes) raises the peak by less
    than that budget (DuckDB fills it, then spills to disk), not in proportion to the samples."""
    low = _peak_rss_of_search(kind, small)
    high = _peak_rss_of_search(kind, large)
    assert high - low < 64 and high / low < 1.35, (low, high)
