"""The out-of-core MinHash-LSH search (curation.dedup.lsh) against a brute-force greedy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.dedup.lsh import MAX_BUCKET_PAIRS, Banding, SignatureSearch, banding_for
from curation.dedup.minhash import greedy_text_dedup

PERM = 32


def _planted(n: int, seed: int, exact_share: float = 0.1) -> np.ndarray:
    """Random signatures; ~40% are copies of an earlier one sharing 60-100% of its hash values (some exact)."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**63, size=(n, PERM), dtype=np.uint64)
    for j in range(1, n):
        if rng.random() < 0.4:
            i = int(rng.integers(0, j))
            shared = PERM if rng.random() < exact_share else int(rng.integers(int(0.6 * PERM), PERM + 1))
            cols = rng.permutation(PERM)[:shared]
            sigs[j, cols] = sigs[i, cols]
    return sigs


def _reference(sigs: np.ndarray, groups: list[int], threshold: float, banding: Banding, verify: bool) -> list[int]:
    """Each sample against every earlier kept one of its group that shares a band: the earliest similar wins."""
    keys = [
        [sigs[j, b * banding.rows : (b + 1) * banding.rows].tobytes() for b in range(banding.bands)]
        for j in range(len(sigs))
    ]
    kept: list[int] = []
    result = []
    for j in range(len(sigs)):
        match = -1
        for i in kept:
            if groups[i] != groups[j] or not any(a == b for a, b in zip(keys[i], keys[j], strict=True)):
                continue
            if not verify or np.count_nonzero(sigs[i] == sigs[j]) / PERM >= threshold:
                match = i
                break
        if match < 0:
            kept.append(j)
        result.append(match)
    return result


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("verify", [True, False])
def test_the_search_equals_the_greedy_reference(threshold: float, verify: bool):
    sigs = _planted(300, seed=int(threshold * 100))
    groups = [int(g) for g in np.random.default_rng(1).integers(0, 2, len(sigs))]
    banding = banding_for(threshold, PERM)
    expected = _reference(sigs, groups, threshold, banding, verify)
    found = greedy_text_dedup(list(sigs), threshold, PERM, groups, verify=verify)
    assert found == expected
    assert sum(m >= 0 for m in found) > 10  # planted copies are found


def test_a_chosen_banding_is_used_and_checked():
    sigs = _planted(200, seed=3)
    groups = [0] * len(sigs)
    for banding in (Banding(4, 8), Banding(16, 2), Banding(1, 32)):
        assert greedy_text_dedup(list(sigs), 0.8, PERM, banding=banding) == _reference(sigs, groups, 0.8, banding, True)
    with pytest.raises(ValueError, match="do not fit"):
        greedy_text_dedup(list(sigs), 0.8, PERM, banding=Banding(5, 8))


def test_exact_copies_follow_what_their_first_occurrence_matched():
    base = np.arange(PERM, dtype=np.uint64)
    near = base.copy()
    near[:4] += 1000  # 28/32 = 0.875 of base
    far = near.copy()
    far[4:9] += 1000  # 23/32 of base, 27/32 of near
    sigs = [base, near, near.copy(), far, near.copy(), None]
    # near is dropped (base); its exact copies follow it to base; far is kept at 0.8 (near is gone)
    assert greedy_text_dedup(sigs, 0.8, PERM) == [-1, 0, 0, -1, 0, -1]
    # with near kept (threshold above its similarity), its exact copies match near itself
    assert greedy_text_dedup(sigs, 0.9, PERM) == [-1, -1, 1, -1, 1, -1]


def test_a_huge_bucket_meets_only_its_first_samples(tmp_path: Path):
    """Samples sharing one band value with thousands of others are compared with the bucket's first
    MAX_BUCKET_PAIRS only: candidates stay linear in the bucket's size."""
    rng = np.random.default_rng(5)
    n = MAX_BUCKET_PAIRS * 4
    sigs = rng.integers(0, 2**63, size=(n, PERM), dtype=np.uint64)
    sigs[:, :8] = 7  # every sample shares band 0 (8 rows) and nothing else
    db = tmp_path / "s.duckdb"
    con = SignatureSearch.create(db, memory_mb=64, threads=1)
    con.register("t", pa.table({"pos": np.arange(n), "grp": np.zeros(n, np.int64), "sig": [s.tobytes() for s in sigs]}))
    con.execute("INSERT INTO sigs SELECT * FROM t")
    con.close()
    pairs = SignatureSearch(db, PERM).run(0.2, Banding(4, 8), verify=False)
    # unverified: everything after the first is a duplicate of sample 0
    assert pairs[:, 0].tolist() == list(range(1, n)) and set(pairs[:, 1].tolist()) == {0}
    assert not list(tmp_path.glob("*.band-*.parquet"))  # candidate files are removed


def test_the_search_stays_within_a_small_memory_limit(tmp_path: Path):
    """64 MB of DuckDB memory for 20,000 signatures of 1 KB (20 MB, plus bands and candidates): it spills."""
    perm = 128
    rng = np.random.default_rng(9)
    n = 20_000
    sigs = rng.integers(0, 2**63, size=(n, perm), dtype=np.uint64)
    copies = rng.choice(np.arange(1, n), size=500, replace=False)
    originals = np.setdiff1d(np.arange(n), copies)
    for j in copies:
        sigs[j] = sigs[int(rng.choice(originals[originals < j]))]
        sigs[j, :10] = rng.integers(0, 2**63, size=10, dtype=np.uint64)  # 118/128 shared
    db = tmp_path / "s.duckdb"
    con = SignatureSearch.create(db, memory_mb=64, threads=2)
    con.register("t", pa.table({"pos": np.arange(n), "grp": np.zeros(n, np.int64), "sig": [s.tobytes() for s in sigs]}))
    con.execute("INSERT INTO sigs SELECT * FROM t")
    con.close()
    pairs = SignatureSearch(db, perm, memory_mb=64, threads=2).run(0.8, banding_for(0.8, perm))
    assert set(pairs[:, 0].tolist()) == set(copies.tolist())


def test_banding_matches_the_lsh_s_curve_choice():
    assert banding_for(0.7, 128) == Banding(20, 6)
    assert banding_for(0.8, 128) == Banding(14, 9)
    assert banding_for(0.99, 128).bands >= 2  # one band would win: the highest threshold giving two
    with pytest.raises(ValueError):
        banding_for(1.5, 128)


@pytest.mark.parametrize("chunk_count", [2, 3, 4, 7])
def test_every_chunk_layout_finds_exactly_the_brute_force_pairs(tmp_path: Path, chunk_count: int):
    """Fewer chunks than max_distance + 1 probe every value within the radius: still exact."""
    from curation.dedup.image_search import HashSearch
    from curation.dedup.index import all_pairs_image_dedup

    rng = np.random.default_rng(chunk_count)
    hashes = [int(h) for h in rng.integers(0, 2**63, size=400, dtype=np.uint64)]
    for j in range(1, len(hashes)):
        if rng.random() < 0.4:
            flips = rng.choice(64, int(rng.integers(0, 9)), replace=False)
            hashes[j] = hashes[int(rng.integers(0, j))] ^ sum(1 << int(b) for b in flips)
    signed = [h - (1 << 64) if h >= 1 << 63 else h for h in hashes]
    db = tmp_path / "h.duckdb"
    con = HashSearch.create(db, memory_mb=64, threads=1)
    n = len(signed)
    con.register("t", pa.table({"pos": np.arange(n), "grp": np.zeros(n, np.int64), "h": signed, "rest": [[]] * n}))
    con.execute("INSERT INTO hashes SELECT pos, grp, h, rest::BIGINT[] FROM t")
    con.close()
    pairs = HashSearch(db).run(6, chunk_count=chunk_count)
    expected = all_pairs_image_dedup([(h,) for h in hashes], 6)
    found = [-1] * n
    for later, earlier in pairs.tolist():
        found[later] = earlier
    assert found == expected and sum(m >= 0 for m in found) > 50
