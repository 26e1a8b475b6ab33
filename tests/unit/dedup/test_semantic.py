"""curation.dedup.semantic: cosine near-duplicates of float16 embeddings, kept-first in row order, against a plain
O(n^2) float64 reference of the greedy rule."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from curation.dedup import semantic
from curation.dedup.semantic import EmbeddingBlock, SemanticMatch, semantic_duplicates

DIM = 48
THRESHOLD = 0.9
NOISE = (0.0, 0.1, 0.3, 0.45, 0.48, 0.5, 0.52, 0.7)  # copy = source + noise of this norm: cosine ~1/sqrt(1+e^2)


def reference(
    x: np.ndarray, threshold: float, groups: np.ndarray | None = None, excluded: set[int] | None = None
) -> dict[int, int]:
    """Row -> kept row it duplicates: every row compared with every earlier kept row, in float64."""
    v = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", v, v)
    usable = np.isfinite(sq) & (sq > 0)
    kept: list[int] = []
    out: dict[int, int] = {}
    for j in range(len(x)):
        if not usable[j] or j in (excluded or set()):
            continue
        if kept:
            k = np.array(kept)  # in increasing order: the first hit is the smallest kept row
            cosine = (v[k] @ v[j]) / np.sqrt(sq[k] * sq[j])
            cosine[(x[k] == x[j]).all(axis=1)] = 1.0  # identical rows: exactly 1, whatever the rounding
            hits = np.flatnonzero((cosine >= threshold) & (True if groups is None else groups[k] == groups[j]))
            if hits.size:
                out[j] = kept[hits[0]]
                continue
        kept.append(j)
    return out


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def planted(n: int = 2000, seed: int = 0, dim: int = DIM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 unit rows: random ones (pairwise cosine ~N(0, 1/dim), far below the threshold) and ~25% copies of
    an earlier row at the noise levels of NOISE (some straddle the threshold; 0 = an exact copy). Returns the
    rows, each copy's source (-1 for originals) and its noise level."""
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((n, dim)))
    source = np.full(n, -1)
    level = np.zeros(n)
    for j in range(20, n):
        if rng.random() < 0.25:
            i = int(rng.integers(0, j))
            e = float(rng.choice(NOISE))
            x[j] = unit(x[i] + e * unit(rng.standard_normal(dim)))
            source[j], level[j] = i, e
    return x.astype(np.float16), source, level


def as_blocks(
    x: np.ndarray, sizes: list[int] | None = None, groups: np.ndarray | None = None
) -> Callable[[], Iterator[EmbeddingBlock]]:
    """Blocks of the given sizes (cycled), rows numbered 0.. (one block when None)."""
    cuts = [0]
    while cuts[-1] < len(x):
        cuts.append(min(len(x), cuts[-1] + (sizes[(len(cuts) - 1) % len(sizes)] if sizes else len(x))))

    def blocks() -> Iterator[EmbeddingBlock]:
        for s, e in itertools.pairwise(cuts):
            yield EmbeddingBlock(x[s:e], np.arange(s, e, dtype=np.int64), None if groups is None else groups[s:e])

    return blocks


def as_dict(found: Iterator[SemanticMatch] | list[SemanticMatch]) -> dict[int, int]:
    found = list(found)
    rows = [m.row for m in found]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)  # increasing row order
    return {m.row: m.duplicate_of for m in found}


def check_valid(x: np.ndarray, found: list[SemanticMatch], threshold: float, groups: np.ndarray | None = None) -> None:
    """Every match is a true pair: an earlier row, not itself dropped, within the threshold, same group."""
    dropped = {m.row for m in found}
    v = unit(x.astype(np.float64))
    for m in found:
        assert m.duplicate_of < m.row and m.duplicate_of not in dropped
        cos = float(v[m.row] @ v[m.duplicate_of])
        assert cos >= threshold and m.cosine == pytest.approx(cos, abs=1e-9)
        assert groups is None or groups[m.row] == groups[m.duplicate_of]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return planted()


@pytest.fixture(scope="module")
def expected(data) -> dict[int, int]:
    return reference(data[0], THRESHOLD)


def test_reference_data_straddles_threshold(data, expected) -> None:
    x, source, level = data
    v = unit(x.astype(np.float64))
    copies = np.flatnonzero(source >= 0)
    cos = np.einsum("ij,ij->i", v[copies], v[source[copies]])
    assert ((cos > 0.88) & (cos < THRESHOLD)).sum() >= 20 and ((cos >= THRESHOLD) & (cos < 0.92)).sum() >= 20
    assert (level[copies] == 0).sum() > 0  # exact copies too
    # chains: copies whose source was dropped, some of them kept because nothing kept is near them
    chained = [j for j in copies if source[j] in expected]
    assert sum(j not in expected for j in chained) > 0 and sum(j in expected for j in chained) > 0


@pytest.mark.parametrize("sizes", [None, [1, 333, 7, 1024, 64], [4096]])
def test_exact_equals_reference(data, expected, sizes) -> None:
    x = data[0]
    found = list(semantic_duplicates(as_blocks(x, sizes), DIM, THRESHOLD, "exact"))
    assert as_dict(found) == expected
    check_valid(x, found, THRESHOLD)


def test_exact_at_other_thresholds(data) -> None:
    x = data[0][:800]
    for threshold in (0.5, 0.95, 1.0):
        assert as_dict(semantic_duplicates(as_blocks(x, [100]), DIM, threshold, "exact")) == reference(x, threshold)


def test_chain_keeps_the_row_similar_only_to_a_dropped_row() -> None:
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].T  # orthonormal rows
    theta = np.arccos(0.93)
    a = basis[0]
    b = np.cos(theta) * basis[0] + np.sin(theta) * basis[1]  # cos(a, b) = 0.93
    c = np.cos(2 * theta) * basis[0] + np.sin(2 * theta) * basis[1]  # cos(b, c) = 0.93, cos(a, c) = 0.73
    d = np.cos(theta) * c + np.sin(theta) * basis[2]  # cos(c, d) = 0.93: c is kept, so d is dropped onto c
    x = np.stack([basis[5], a, b, c, d]).astype(np.float16)
    for method in ("exact", "ivf", "clusters"):
        found = list(semantic_duplicates(as_blocks(x), DIM, THRESHOLD, method, nlist=1))
        assert as_dict(found) == {2: 1, 4: 3}, method
        assert found[0].cosine == pytest.approx(0.93, abs=2e-3)


def test_ivf_with_every_list_probed_equals_reference(data, expected) -> None:
    x = data[0]
    for sizes in (None, [977, 13]):
        found = list(semantic_duplicates(as_blocks(x, sizes), DIM, THRESHOLD, "ivf", nlist=16, nprobe=16))
        assert as_dict(found) == expected


def test_ivf_with_the_probed_lists_kept_from_the_planning_pass() -> None:
    x = planted(1500, seed=2, dim=256)[0]  # 256 dimensions: the 4 probed lists of each row are kept, not recomputed
    rng = np.random.default_rng(2)
    excluded = np.sort(rng.choice(len(x), 40, replace=False))
    want = reference(x, THRESHOLD, excluded=set(excluded.tolist()))
    found = semantic_duplicates(as_blocks(x, [300, 7]), 256, THRESHOLD, "ivf", nlist=4, nprobe=4, excluded=excluded)
    assert as_dict(found) == want


def test_ivf_default_probes_find_true_pairs_only(data, expected) -> None:
    x = data[0]
    found = list(semantic_duplicates(as_blocks(x), DIM, THRESHOLD, "ivf", nlist=32, nprobe=2))
    check_valid(x, found, THRESHOLD)
    assert len(found) >= 0.8 * len(expected)


def test_groups_and_excluded(data) -> None:
    x = data[0]
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 3, len(x)).astype(np.int32)
    excluded = np.sort(rng.choice(len(x), 100, replace=False))
    want = reference(x, THRESHOLD, groups, set(excluded.tolist()))
    assert want != reference(x, THRESHOLD, groups) and want != reference(x, THRESHOLD)
    for method, kw in (("exact", {}), ("ivf", {"nlist": 8, "nprobe": 8})):
        found = list(
            semantic_duplicates(as_blocks(x, [500, 3], groups), DIM, THRESHOLD, method, excluded=excluded, **kw)
        )
        assert as_dict(found) == want, method
    found = list(semantic_duplicates(as_blocks(x, [500], groups), DIM, THRESHOLD, "clusters", excluded=excluded))
    check_valid(x, found, THRESHOLD, groups)
    assert not {m.row for m in found} & set(excluded.tolist())
    assert not {m.duplicate_of for m in found} & set(excluded.tolist())


def test_excluded_row_is_neither_dropped_nor_an_anchor() -> None:
    x = np.tile(unit(np.arange(1, DIM + 1, dtype=np.float64)), (3, 1)).astype(np.float16)
    for method in ("exact", "ivf", "clusters"):
        found = list(semantic_duplicates(as_blocks(x), DIM, THRESHOLD, method, nlist=1, excluded=np.array([0])))
        assert [(m.row, m.duplicate_of, m.cosine) for m in found] == [(2, 1, 1.0)], method


def test_clusters_find_true_pairs_and_the_close_copies(data, expected) -> None:
    x, source, level = data
    found = list(semantic_duplicates(as_blocks(x, [700]), DIM, THRESHOLD, "clusters", nlist=4))
    check_valid(x, found, THRESHOLD)
    got = as_dict(found)
    # a copy within cosine 0.995 of a kept row is dropped unless k-means cut them apart (these random rows have no
    # cluster structure, so a few pairs straddle a boundary)
    close = [j for j in np.flatnonzero((source >= 0) & (level <= 0.1)) if source[j] not in got]
    assert len(close) > 50 and sum(j in got for j in close) >= 0.95 * len(close)
    assert len(got) >= 0.8 * len(expected)


def test_clusters_with_one_cluster_is_exact(data, expected) -> None:
    x = data[0]
    assert as_dict(semantic_duplicates(as_blocks(x, [333]), DIM, THRESHOLD, "clusters", nlist=1)) == expected


def test_clusters_spill_buckets_do_not_change_the_result(data, monkeypatch) -> None:
    x = data[0]
    one = list(semantic_duplicates(as_blocks(x), DIM, THRESHOLD, "clusters", nlist=6))
    monkeypatch.setattr(semantic, "BUCKET_BYTES", 20_000)  # 6 buckets, one per cluster, instead of 1
    assert list(semantic_duplicates(as_blocks(x), DIM, THRESHOLD, "clusters", nlist=6)) == one


def test_block_splits_do_not_change_the_result(data) -> None:
    x = data[0]
    for method, kw in (("ivf", {}), ("clusters", {"nlist": 5})):
        one = list(semantic_duplicates(as_blocks(x), DIM, THRESHOLD, method, **kw))
        split = list(semantic_duplicates(as_blocks(x, [1, 999, 17, 2048]), DIM, THRESHOLD, method, **kw))
        assert one == split, method


def test_float16_memmap_shards(tmp_path: Path, data, expected) -> None:
    x = data[0]
    paths = []
    for part, start in enumerate(range(0, len(x), 300)):
        path = tmp_path / f"emb-{part:03d}.npy"
        np.save(path, x[start : start + 300])
        paths.append((path, start))

    def blocks() -> Iterator[EmbeddingBlock]:
        for path, start in paths:
            vectors = np.load(path, mmap_mode="r")
            assert isinstance(vectors, np.memmap) and vectors.dtype == np.float16
            yield EmbeddingBlock(vectors, np.arange(start, start + len(vectors), dtype=np.int64))

    assert as_dict(semantic_duplicates(blocks, DIM, THRESHOLD, "exact")) == expected
    assert as_dict(semantic_duplicates(blocks, DIM, THRESHOLD, "ivf", nlist=8, nprobe=8)) == expected
    work = tmp_path / "work"
    found = list(semantic_duplicates(blocks, DIM, THRESHOLD, "clusters", nlist=3, work=work))
    check_valid(x, found, THRESHOLD)
    assert work.is_dir() and not any(work.iterdir())  # the spill files are removed


def test_sparse_row_ids(data) -> None:
    x = data[0][:600]
    ids = np.arange(600, dtype=np.int64) * 3 + 10

    def blocks() -> Iterator[EmbeddingBlock]:
        yield EmbeddingBlock(x[:250], ids[:250])
        yield EmbeddingBlock(x[250:], ids[250:])

    want = {int(ids[j]): int(ids[i]) for j, i in reference(x, THRESHOLD).items()}
    assert as_dict(semantic_duplicates(blocks, DIM, THRESHOLD, "exact")) == want
    excluded = ids[[5, 40, 41]]
    want = {int(ids[j]): int(ids[i]) for j, i in reference(x, THRESHOLD, excluded={5, 40, 41}).items()}
    assert as_dict(semantic_duplicates(blocks, DIM, THRESHOLD, "ivf", nlist=4, nprobe=4, excluded=excluded)) == want


def test_deterministic(data) -> None:
    x = data[0]
    for method, kw in (("ivf", {"nlist": 32, "nprobe": 2}), ("clusters", {"nlist": 6})):
        runs = [list(semantic_duplicates(as_blocks(x, [512]), DIM, THRESHOLD, method, seed=7, **kw)) for _ in range(2)]
        assert runs[0] == runs[1] and runs[0], method


def test_auto_chooses_by_size(data, expected) -> None:
    x = data[0]
    assert as_dict(semantic_duplicates(as_blocks(x), DIM, THRESHOLD)) == expected  # exact below 100,000
    small = semantic_duplicates(as_blocks(x), DIM, THRESHOLD, "auto", exact_below=100, nlist=4, nprobe=4)
    assert as_dict(small) == expected  # ivf, every list probed


def test_unusable_rows_never_match() -> None:
    base = unit(np.arange(1, DIM + 1, dtype=np.float64)).astype(np.float16)
    nan, inf, zero = base.copy(), base.copy(), np.zeros(DIM, np.float16)
    nan[3], inf[5] = np.nan, np.inf
    x = np.stack([nan, inf, zero, base, nan, zero, base, inf])
    for method in ("exact", "ivf", "clusters"):
        found = list(semantic_duplicates(as_blocks(x, [3]), DIM, THRESHOLD, method, nlist=1))
        assert [(m.row, m.duplicate_of) for m in found] == [(6, 3)], method
    only_bad = np.stack([nan, zero, inf])
    for method in ("exact", "ivf", "clusters"):
        assert list(semantic_duplicates(as_blocks(only_bad), DIM, THRESHOLD, method)) == []


def test_empty_input_and_no_duplicates() -> None:
    distinct = unit(np.random.default_rng(1).standard_normal((300, DIM))).astype(np.float16)
    for method in ("auto", "exact", "ivf", "clusters"):
        assert list(semantic_duplicates(lambda: iter(()), DIM, THRESHOLD, method)) == []
        assert list(semantic_duplicates(as_blocks(distinct, [100]), DIM, THRESHOLD, method, nlist=2)) == []


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, float("nan"), float("inf")])
def test_bad_threshold(threshold) -> None:
    with pytest.raises(ValueError, match="threshold"):
        semantic_duplicates(as_blocks(np.zeros((2, DIM), np.float16)), DIM, threshold)


def test_bad_arguments() -> None:
    x = planted(50)[0]
    with pytest.raises(ValueError, match="method"):
        semantic_duplicates(as_blocks(x), DIM, THRESHOLD, "hnsw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        semantic_duplicates(as_blocks(x), 0, THRESHOLD)
    with pytest.raises(ValueError, match="nprobe"):
        semantic_duplicates(as_blocks(x), DIM, THRESHOLD, "ivf", nprobe=0)
    for method in ("exact", "ivf", "clusters"):
        with pytest.raises(ValueError, match=r"shape \(50, 48\), expected \(rows, 32\)"):
            list(semantic_duplicates(as_blocks(x), 32, THRESHOLD, method))

    def backwards() -> Iterator[EmbeddingBlock]:
        yield EmbeddingBlock(x[:10], np.arange(10, 20))
        yield EmbeddingBlock(x[10:20], np.arange(0, 10))

    def short_groups() -> Iterator[EmbeddingBlock]:
        yield EmbeddingBlock(x, np.arange(50), np.zeros(49, np.int32))

    def short_rows() -> Iterator[EmbeddingBlock]:
        yield EmbeddingBlock(x, np.arange(49))

    for blocks, message in ((backwards, "increase"), (short_groups, "groups"), (short_rows, "rows")):
        for method in ("exact", "ivf"):
            with pytest.raises(ValueError, match=message):
                list(semantic_duplicates(blocks, DIM, THRESHOLD, method))
