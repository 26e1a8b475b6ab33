"""Semantic near-duplicates: rows whose stored embeddings have cosine similarity >= ``threshold``, kept-first in
dataset order, searched out of core over float16 embedding blocks (memory-mapped ``.npy`` shards).

The rule (the same greedy kept-first rule as the other dedup steps, :mod:`curation.dedup.search_db`): rows are
taken in increasing row order; row ``j`` is dropped when some earlier row ``i < j`` that is *kept* (not itself
dropped, not ``excluded``) has ``cosine(i, j) >= threshold`` (and the same group, when groups are given); its
``duplicate_of`` is the smallest such kept ``i``. In a chain a~b~c where b is dropped as a copy of a, c is kept
unless it is within the threshold of a (or of another kept row) itself.

``cosine(i, j)`` is computed in float64 from the stored float16 values (each row re-normalised), so the
decision does not depend on float32 rounding: every search below only proposes *candidate* pairs, with a
margin of :data:`MARGIN` under the threshold, and each candidate is re-checked in float64.

Rows that cannot be compared (a zero or non-finite norm: NaN/inf components, all zeros) are never dropped and
never an anchor, like ``excluded`` rows.

The search keeps only the *anchors*, the rows kept so far, and processes the rows in chunks in row order: each
chunk is searched against the anchors of earlier chunks, then exhaustively against itself, resolved, and its kept
rows join the anchors. Decisions of earlier rows are final when a chunk is resolved, so the matches stream out in
row order and memory holds the anchors (at most the embeddings' own float16 size), one chunk and its candidates.

Methods:

- ``exact``: the anchors as float16 in memory, searched by brute force (faiss' blocked BLAS inner product over
  pieces of :data:`PIECE` anchors converted to float32 one at a time): the exact answer, O(n^2 dim) time.
- ``ivf``: the anchors in a faiss ``IndexIVFScalarQuantizer`` with fp16 storage (not by residual, so the stored
  values are exactly the embeddings' float16 values), the coarse quantizer trained (spherical k-means, ``nlist``
  ~4 sqrt(n) lists) on a seeded sample of 32 rows per list; a planning pass assigns every row to its lists and
  reserves each list's room, so the index is allocated once: 2 bytes per dimension plus 16-48 bytes per row
  (measured: 1.11x the float16 embeddings at 1M x 512, the process's fixed overhead included); each chunk is then
  range-searched in ``nprobe`` (default 4) of the lists. Approximate: a pair is missed when its two rows fall in
  lists not probed (with ``nprobe = nlist`` the answer is exact). Never a false pair (every candidate is
  re-checked).
- ``clusters`` (SemDeDup-style, for very large sets): spherical k-means into ``nlist`` clusters (seeded, trained on
  a sample); each row goes to its nearest centroid and the rule above runs exactly *within* each cluster. Pairs
  across cluster boundaries are missed (approximate, like SemDeDup), so a row whose only earlier near copy sits in
  another cluster is kept, and ``duplicate_of`` is the smallest kept row of the same cluster. The rows are spilled,
  bucketed by cluster, to ``work`` (as large as the float16 embeddings plus 16 bytes per row); memory is one bucket
  (~64 MiB, more if a single cluster is larger) plus the sample.
- ``auto``: ``exact`` below ``exact_below`` rows, else ``ivf``.

The blocks are read once per pass: ``exact`` one pass, ``clusters`` three (count, sample, assign and spill),
``ivf`` four (count, sample, plan, search); each block's memory map is dropped once read, so yield shard-sized
blocks (a single huge memory map stays resident as it is read). A chunk whose rows are nearly all copies of each
other yields up to chunk^2 candidate pairs (2048^2 for ``exact``, 1024^2 for ``ivf``): ~100 MiB at worst. With
groups, candidates from other groups are found and then discarded.

Results are deterministic for a given input, ``seed`` and ``threads``. While the iterator runs, faiss' OpenMP
thread count is set to ``threads`` (process-wide; restored when it ends). Needs ``faiss`` (faiss-cpu).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Method = Literal["auto", "exact", "ivf", "clusters"]
METHODS = ("auto", "exact", "ivf", "clusters")

MARGIN = 1e-3  # candidates are searched this far under the threshold (float32 and fp16 rounding), then re-checked
PIECE = 16_384  # anchors converted to float32 at a time by the exact search (32 MiB at 512 dimensions)
EXACT_CHUNK = 2048  # rows per chunk of the exact search (also searched against itself)
IVF_CHUNK = 1024  # rows per chunk of the ivf search (each also searched against itself exactly)
VERIFY = 4096  # candidate pairs re-checked in float64 at a time
BUCKET_BYTES = 64 << 20  # the clusters method's spill buckets
MAX_BUCKETS = 256  # files open at once while spilling (beyond 16 GiB of rows, buckets grow past BUCKET_BYTES)
IVF_NITER = 8  # k-means iterations of the coarse quantizer
POINTS_PER_LIST = 32  # training sample per list / cluster
CLUSTERS_SAMPLE = 65_536  # the clusters method's k-means sample, at least (128 MiB at 512 dimensions)


@dataclass(frozen=True)
class EmbeddingBlock:
    """A run of consecutive rows: ``vectors`` (n, dim) float16 (may be a ``np.memmap``; other float dtypes are
    cast to float16), their global ``rows`` (int64, increasing in dataset order across blocks), and optionally
    their ``groups`` (int32; only rows of the same group can be duplicates; None = one group)."""

    vectors: np.ndarray
    rows: np.ndarray
    groups: np.ndarray | None = None


@dataclass(frozen=True)
class SemanticMatch:
    """A dropped ``row``, the earliest kept row it is within the threshold of, and their float64 cosine."""

    row: int
    duplicate_of: int
    cosine: float


def semantic_duplicates(
    blocks: Callable[[], Iterator[EmbeddingBlock]],
    dim: int,
    threshold: float,
    method: Method = "auto",
    *,
    exact_below: int = 100_000,
    nlist: int | None = None,
    nprobe: int | None = None,
    threads: int = 1,
    seed: int = 0,
    work: Path | None = None,
    excluded: np.ndarray | None = None,
) -> Iterator[SemanticMatch]:
    """The rows to drop as semantic near-duplicates, in increasing row order (see the module docstring).

    Row ``j`` is dropped when an earlier row ``i < j`` that is kept (not dropped, not in ``excluded``, not an
    unusable row) has ``cosine(i, j) >= threshold`` (float64, from the float16 values, each row re-normalised)
    and, when ``groups`` are given, the same group; ``duplicate_of`` is the smallest such ``i``. A row similar only
    to a dropped row is kept. Rows with a zero or non-finite norm are never dropped and never anchors.

    ``blocks`` is called once per pass over the data (up to three: count, training sample, search) and must
    yield the same blocks in row order each time. ``method``: ``exact`` (brute force), ``ivf`` (faiss IVF, fp16
    storage; ``nlist`` default ~4 sqrt(n), ``nprobe`` default 4; ``nprobe = nlist`` is exact), ``clusters``
    (SemDeDup: exact within k-means clusters, pairs across clusters missed; ``nlist`` default n / 1000;
    spills to ``work``, a temporary directory when None) or ``auto`` (exact below ``exact_below`` rows, else
    ivf). ``threads``: faiss' OpenMP threads. ``excluded``: row ids already dropped by earlier steps.

    Raises ValueError on a threshold outside (0, 1], an unknown method, a block whose shape does not match
    ``dim``, rows that do not increase, or groups of the wrong length (the shape checks as the blocks are read).
    """
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    for name, value in (("nlist", nlist), ("nprobe", nprobe)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    skip = _excluded(excluded)
    return _run(blocks, int(dim), float(threshold), method, exact_below, nlist, nprobe, threads, seed, work, skip)


def _excluded(excluded: np.ndarray | None) -> np.ndarray:
    if excluded is None:
        return np.empty(0, dtype=np.int64)
    arr = np.asarray(excluded)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("excluded must be a 1-d array of integer row ids")
    return np.unique(arr.astype(np.int64))


def _run(
    blocks: Callable[[], Iterator[EmbeddingBlock]],
    dim: int,
    threshold: float,
    method: Method,
    exact_below: int,
    nlist: int | None,
    nprobe: int | None,
    threads: int,
    seed: int,
    work: Path | None,
    excluded: np.ndarray,
) -> Iterator[SemanticMatch]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        if method == "exact":
            found = _greedy(_chunks(blocks, dim, EXACT_CHUNK, excluded), _FlatStore(dim), threshold)
        else:
            n = _count(blocks, dim)
            if method == "auto":
                method = "exact" if n < exact_below else "ivf"
            if method == "exact":
                found = _greedy(_chunks(blocks, dim, EXACT_CHUNK, excluded), _FlatStore(dim), threshold)
            elif method == "ivf":
                found = _ivf(blocks, dim, n, threshold, nlist, nprobe, seed, excluded)
            else:
                found = _clusters(blocks, dim, n, threshold, nlist, seed, work, excluded)
        for rows, anchors, cosines in found:
            for row, anchor, cosine in zip(rows.tolist(), anchors.tolist(), cosines.tolist(), strict=True):
                yield SemanticMatch(row, anchor, cosine)
    finally:
        faiss.omp_set_num_threads(before)


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class _Chunk:
    """Consecutive rows: float16 ``vectors`` (a copy), ``rows``, ``groups``, which rows can be compared
    (``usable``: finite, non-zero, not excluded) and their float32 re-normalised ``unit`` vectors."""

    vectors: np.ndarray
    rows: np.ndarray
    groups: np.ndarray | None
    usable: np.ndarray
    unit: np.ndarray


def _make_chunk(vectors: np.ndarray, rows: np.ndarray, groups: np.ndarray | None, excluded: np.ndarray) -> _Chunk:
    unit = vectors.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", unit, unit))
    usable = np.isfinite(norms) & (norms > 0)
    if excluded.size:
        at = np.searchsorted(excluded, rows)
        hit = at < excluded.size
        hit[hit] = excluded[at[hit]] == rows[hit]
        usable &= ~hit
    unit[~usable] = 0.0
    unit[usable] /= norms[usable, None]
    return _Chunk(vectors, rows, groups, usable, unit)


def _checked(block: EmbeddingBlock, dim: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    vectors, rows, groups = block.vectors, np.asarray(block.rows), block.groups
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"embedding block of shape {vectors.shape}, expected (rows, {dim})")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(f"embeddings must be floating point (float16), got {vectors.dtype}")
    if rows.shape != (len(vectors),):
        raise ValueError(f"block of {len(vectors)} vectors with rows of shape {rows.shape}")
    rows = rows.astype(np.int64, copy=False)
    if rows.size and (rows[0] <= last or np.any(np.diff(rows) <= 0)):
        raise ValueError("rows must increase strictly in dataset order, across blocks")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != rows.shape:
            raise ValueError(f"block of {len(rows)} rows with groups of shape {groups.shape}")
        groups = groups.astype(np.int32, copy=False)
    return vectors, rows, groups


def _chunks(
    blocks: Callable[[], Iterator[EmbeddingBlock]], dim: int, size: int, excluded: np.ndarray
) -> Iterator[_Chunk]:
    """The blocks' rows re-cut into chunks of ``size`` rows (copies: a block's memory map is released once read)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    have, last, grouped = 0, -1, None

    def flush() -> _Chunk:
        vectors = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        groups = np.concatenate([p[2] for p in parts]) if grouped else None  # type: ignore[misc]
        parts.clear()
        return _make_chunk(vectors, rows, groups, excluded)

    for block in blocks():
        vectors, rows, groups = _checked(block, dim, last)
        if grouped is None and len(rows):
            grouped = groups is not None
        if len(rows) and grouped != (groups is not None):
            raise ValueError("either every block has groups or none has")
        if len(rows):
            last = int(rows[-1])
        start = 0
        while start < len(rows):
            take = min(size - have, len(rows) - start)
            stop = start + take
            parts.append(
                (
                    np.array(vectors[start:stop], dtype=np.float16),
                    rows[start:stop].copy(),
                    None if groups is None else groups[start:stop].copy(),
                )
            )
            have += take
            start = stop
            if have == size:
                yield flush()
                have = 0
        del vectors, block
    if have:
        yield flush()


def _count(blocks: Callable[[], Iterator[EmbeddingBlock]], dim: int) -> int:
    """Rows in the blocks (checks shapes and order; reads no vector)."""
    n, last = 0, -1
    for block in blocks():
        _, rows, _ = _checked(block, dim, last)
        if len(rows):
            last = int(rows[-1])
        n += len(rows)
    return n


def _sample(blocks: Callable[[], Iterator[EmbeddingBlock]], dim: int, n: int, size: int, seed: int) -> np.ndarray:
    """Float32 unit vectors of ``size`` rows drawn (seeded) from the ``n``, unusable rows left out."""
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    x = np.empty((len(picks), dim), dtype=np.float32)  # filled and normalised in place: one copy at a time
    offset = 0
    for block in blocks():
        vectors = block.vectors
        lo, hi = np.searchsorted(picks, [offset, offset + len(vectors)])
        if hi > lo:
            x[lo:hi] = vectors[picks[lo:hi] - offset]
        offset += len(vectors)
        del vectors, block
    if offset != n:
        raise ValueError(f"the blocks held {n} rows, then {offset}: they must be the same on every call")
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    ok = np.isfinite(norms) & (norms > 0)
    if not ok.all():
        x, norms = x[ok], norms[ok]
    x /= norms[:, None]
    return x


# ---------------------------------------------------------------------------------------------------- search


def _range_pairs(queries: np.ndarray, base: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(query, base) index pairs whose float32 inner product is > ``radius`` (faiss, blocked BLAS)."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    res = faiss.RangeSearchResult(len(queries))
    faiss.range_search_inner_product(
        faiss.swig_ptr(queries), faiss.swig_ptr(base), queries.shape[1], len(queries), len(base), radius, res
    )
    lims = faiss.rev_swig_ptr(res.lims, len(queries) + 1).astype(np.int64)
    labels = faiss.rev_swig_ptr(res.labels, int(lims[-1])).copy() if lims[-1] else np.empty(0, np.int64)
    return np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims)), labels


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise float64 cosine of two (k, dim) arrays of float16 values (exactly 1.0 for identical rows)."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), VERIFY):
        x = a[s : s + VERIFY].astype(np.float64)
        y = b[s : s + VERIFY].astype(np.float64)
        out[s : s + VERIFY] = (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.clip(out, -1.0, 1.0)


class _Grow:
    """A 1-d array appended to in place (capacity doubles)."""

    def __init__(self, dtype: Any) -> None:
        self.data = np.empty(1024, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.size]


class _Store:
    """The anchors (kept rows so far): their row ids, groups, and a search structure over their vectors."""

    def __init__(self) -> None:
        self.rows = _Grow(np.int64)
        self.groups = _Grow(np.int32)

    @property
    def size(self) -> int:
        return self.rows.size

    def add(self, chunk: _Chunk, keep: np.ndarray) -> None:
        self.rows.extend(chunk.rows[keep])
        if chunk.groups is not None:
            self.groups.extend(chunk.groups[keep])
        self._add(chunk, keep)

    def _add(self, chunk: _Chunk, keep: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, chunk: _Chunk, idx: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``idx``, anchor) candidate pairs for the chunk's rows ``idx``: every pair with cosine >=
        threshold, and some below."""
        raise NotImplementedError

    def vectors(self, anchors: np.ndarray) -> np.ndarray:
        """The stored (float16) values of some anchors."""
        raise NotImplementedError


class _FlatStore(_Store):
    """Anchors as float16 in memory, in pieces of :data:`PIECE` rows; brute-force search."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.pieces: list[np.ndarray] = []
        self.inv: list[np.ndarray] = []  # 1 / norm per anchor, float32, per piece
        self.filled = 0  # rows in the last piece

    def _add(self, chunk: _Chunk, keep: np.ndarray) -> None:
        vectors = chunk.vectors[keep]
        inv = 1.0 / np.linalg.norm(vectors.astype(np.float32), axis=1)
        start = 0
        while start < len(vectors):
            if not self.pieces or self.filled == PIECE:
                self.pieces.append(np.empty((PIECE, self.dim), dtype=np.float16))
                self.inv.append(np.empty(PIECE, dtype=np.float32))
                self.filled = 0
            take = min(PIECE - self.filled, len(vectors) - start)
            self.pieces[-1][self.filled : self.filled + take] = vectors[start : start + take]
            self.inv[-1][self.filled : self.filled + take] = inv[start : start + take]
            self.filled += take
            start += take

    def search(self, chunk: _Chunk, idx: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        unit = np.ascontiguousarray(chunk.unit[idx])
        qs, anchors = [], []
        for p, (piece, inv) in enumerate(zip(self.pieces, self.inv, strict=True)):
            count = self.filled if p == len(self.pieces) - 1 else PIECE
            base = piece[:count].astype(np.float32)
            base *= inv[:count, None]
            q, a = _range_pairs(unit, base, threshold - MARGIN)
            qs.append(q)
            anchors.append(a + p * PIECE)
        if not qs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(qs), np.concatenate(anchors)

    def vectors(self, anchors: np.ndarray) -> np.ndarray:
        out = np.empty((len(anchors), self.dim), dtype=np.float16)
        piece = anchors // PIECE
        for p in np.unique(piece).tolist():
            at = piece == p
            out[at] = self.pieces[p][anchors[at] - p * PIECE]
        return out


class _IvfStore(_Store):
    """Anchors in a faiss IVF index with fp16 storage of the raw float16 values (lossless, not by residual).

    :meth:`plan` first assigns every row to its lists and reserves each list's room for all its rows: the lists
    then never reallocate while the anchors are added (growing them would leave up to half again of the index
    resident in spare capacity and freed buffers)."""

    def __init__(self, dim: int, train: np.ndarray, nlist: int, nprobe: int, seed: int) -> None:
        import faiss

        super().__init__()
        self.dim = dim
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFScalarQuantizer(
            self.quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
        )
        self.index.cp.niter = IVF_NITER
        self.index.cp.seed = seed
        self.index.cp.spherical = True
        self.index.cp.min_points_per_centroid = min(POINTS_PER_LIST, max(1, len(train) // nlist))  # no warning
        self.index.cp.max_points_per_centroid = max(256, -(-len(train) // nlist))
        self.index.train(train)
        self.index.make_direct_map()  # array map: anchors are numbered 0.. in order, reconstructable
        self.index.nprobe = nprobe
        self.nprobe = nprobe
        # the lists of every row, from plan(): all nprobe when that is small next to a row, else the nearest only
        self.keep_lists = nprobe if nprobe * 4 * 16 <= dim * 2 else 1
        self.lists = np.empty((0, self.keep_lists), dtype=np.int32)
        self.position = 0  # of the next chunk's first row
        self.min_norm = math.inf

    def _lists(self, unit: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` nearest lists of unit vectors, nearest first."""
        return self.quantizer.search(np.ascontiguousarray(unit, dtype=np.float32), count)[1]

    def plan(self, chunks: Iterator[_Chunk]) -> None:
        """Assign the usable rows of ``chunks`` (the same as the search's, in order) to their lists; reserve room."""
        import faiss

        parts, counts = [], np.zeros(self.index.nlist, dtype=np.int64)
        for chunk in chunks:
            lists = np.full((len(chunk.rows), self.keep_lists), -1, dtype=np.int32)
            idx = np.flatnonzero(chunk.usable)
            if idx.size:
                lists[idx] = self._lists(chunk.unit[idx], self.keep_lists)
                counts += np.bincount(lists[idx, 0], minlength=len(counts))
            parts.append(lists)
        self.lists = np.concatenate(parts) if parts else self.lists
        assert self.index.invlists is not None
        invlists = faiss.downcast_InvertedLists(self.index.invlists)
        for lst in np.flatnonzero(counts).tolist():
            invlists.resize(lst, int(counts[lst]))  # std::vector keeps its capacity when shrunk back
            invlists.resize(lst, 0)

    def _add(self, chunk: _Chunk, keep: np.ndarray) -> None:
        import faiss

        kept = np.flatnonzero(keep)
        if kept.size:
            raw = np.ascontiguousarray(chunk.vectors[kept], dtype=np.float32)
            self.min_norm = min(self.min_norm, float(np.linalg.norm(raw, axis=1).min()))
            nearest = self.lists[self.position + kept, 0].astype(np.int64)
            self.index.add_core(len(raw), faiss.swig_ptr(raw), None, faiss.swig_ptr(nearest))
        self.position += len(chunk.rows)

    def search(self, chunk: _Chunk, idx: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        unit = np.ascontiguousarray(chunk.unit[idx])
        if self.keep_lists == self.nprobe:
            lists = self.lists[self.position + idx].astype(np.int64)
        else:
            lists = self._lists(unit, self.nprobe)
        # stored values are not re-normalised: their inner product with a unit query is norm x cosine
        radius = threshold * self.min_norm - MARGIN
        zeros = np.zeros(lists.shape, dtype=np.float32)  # coarse distances: unused without residuals
        search = self.index.range_search_preassigned  # faiss' numpy wrapper (its stub shows the C signature)
        lims, _, labels = search(unit, radius, lists, zeros)  # pyright: ignore[reportCallIssue]
        return np.repeat(np.arange(len(unit), dtype=np.int64), np.diff(lims.astype(np.int64))), labels.astype(np.int64)

    def vectors(self, anchors: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.ascontiguousarray(anchors, dtype=np.int64))


Found = tuple[np.ndarray, np.ndarray, np.ndarray]  # dropped rows, the kept rows they duplicate, cosines


def _greedy(chunks: Iterator[_Chunk], store: _Store, threshold: float) -> Iterator[Found]:
    """The kept-first rule over chunks in row order: per chunk, the matches (in row order) and then its kept
    rows join ``store``."""
    for chunk in chunks:
        alive = chunk.usable.copy()
        dup = np.full(len(chunk.rows), -1, dtype=np.int64)
        cos = np.zeros(len(chunk.rows), dtype=np.float64)
        # 1. against the anchors of earlier chunks: any anchor wins (all are earlier than the chunk's rows)
        idx = np.flatnonzero(alive)
        if store.size and idx.size:
            q, a = store.search(chunk, idx, threshold)
            j = idx[q]
            if chunk.groups is not None:
                same = chunk.groups[j] == store.groups.view[a]
                j, a = j[same], a[same]
            c = _cosines(chunk.vectors[j], store.vectors(a))
            hit = c >= threshold
            j, a, c = j[hit], a[hit], c[hit]
            order = np.lexsort((a, j))  # per row, the smallest anchor (anchors are numbered in row order)
            j, a, c = j[order], a[order], c[order]
            first = np.ones(len(j), dtype=bool)
            first[1:] = j[1:] != j[:-1]
            j, a, c = j[first], a[first], c[first]
            dup[j] = store.rows.view[a]
            cos[j] = c
            alive[j] = False
        # 2. within the chunk, between rows not yet dropped: sequential kept-first
        idx = np.flatnonzero(alive)
        if idx.size > 1:
            unit = chunk.unit[idx]
            later, earlier = _range_pairs(unit, unit, threshold - MARGIN)
            keep = earlier < later
            later, earlier = idx[later[keep]], idx[earlier[keep]]
            if chunk.groups is not None:
                same = chunk.groups[later] == chunk.groups[earlier]
                later, earlier = later[same], earlier[same]
            c = _cosines(chunk.vectors[later], chunk.vectors[earlier])
            hit = c >= threshold
            later, earlier, c = later[hit], earlier[hit], c[hit]
            order = np.lexsort((earlier, later))
            later, earlier, c = later[order], earlier[order], c[order]
            starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]]) if len(later) else np.empty(0, np.int64)
            ends = np.r_[starts[1:], len(later)] if len(later) else starts
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                candidates = earlier[s:e]
                kept = alive[candidates]
                if kept.any():
                    k = int(np.argmax(kept))  # the smallest kept earlier row
                    row = int(later[s])
                    alive[row] = False
                    dup[row] = chunk.rows[candidates[k]]
                    cos[row] = c[s + k]
        store.add(chunk, alive)
        dropped = np.flatnonzero(dup >= 0)
        if dropped.size:
            yield chunk.rows[dropped], dup[dropped], cos[dropped]


# ---------------------------------------------------------------------------------------------------- methods


def default_nlist(n: int, method: Method) -> int:
    """``ivf``: ~4 sqrt(n) lists; ``clusters``: one cluster per ~1,000 rows."""
    if method == "clusters":
        return max(1, round(n / 1000))
    return max(1, min(round(4 * math.sqrt(n)), n // POINTS_PER_LIST))


def _ivf(
    blocks: Callable[[], Iterator[EmbeddingBlock]],
    dim: int,
    n: int,
    threshold: float,
    nlist: int | None,
    nprobe: int | None,
    seed: int,
    excluded: np.ndarray,
) -> Iterator[Found]:
    if n == 0:
        return
    lists = nlist or default_nlist(n, "ivf")
    train = _sample(blocks, dim, n, lists * POINTS_PER_LIST, seed)
    if not len(train):
        return  # no usable row: nothing can be a duplicate
    lists = min(lists, len(train))
    probe = min(lists, nprobe or 4)
    store = _IvfStore(dim, train, lists, probe, seed)
    del train
    store.plan(_chunks(blocks, dim, IVF_CHUNK, excluded))
    yield from _greedy(_chunks(blocks, dim, IVF_CHUNK, excluded), store, threshold)


def _clusters(
    blocks: Callable[[], Iterator[EmbeddingBlock]],
    dim: int,
    n: int,
    threshold: float,
    nlist: int | None,
    seed: int,
    work: Path | None,
    excluded: np.ndarray,
) -> Iterator[Found]:
    import faiss

    if n == 0:
        return
    k = nlist or default_nlist(n, "clusters")
    train = _sample(blocks, dim, n, max(k * POINTS_PER_LIST, CLUSTERS_SAMPLE), seed)
    if not len(train):
        return
    k = min(k, len(train))
    kmeans = faiss.Kmeans(
        dim,
        k,
        niter=20,
        seed=seed,
        spherical=True,
        verbose=False,
        max_points_per_centroid=max(256, -(-len(train) // k)),
        min_points_per_centroid=min(POINTS_PER_LIST, max(1, len(train) // k)),
    )
    kmeans.train(train)
    del train
    record = np.dtype([("row", "<i8"), ("group", "<i4"), ("cluster", "<i4"), ("vec", "<f2", (dim,))])
    buckets = max(1, min(k, MAX_BUCKETS, -(-n * record.itemsize // BUCKET_BYTES)))
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="semantic-clusters-", dir=work))
    try:
        paths = [folder / f"bucket-{b:05d}.bin" for b in range(buckets)]
        grouped = False
        with _Files(paths) as files:
            for chunk in _chunks(blocks, dim, IVF_CHUNK, excluded):
                idx = np.flatnonzero(chunk.usable)
                if not idx.size:
                    continue
                _, assigned = kmeans.index.search(np.ascontiguousarray(chunk.unit[idx]), 1)
                rec = np.empty(idx.size, dtype=record)
                rec["row"] = chunk.rows[idx]
                rec["group"] = 0 if chunk.groups is None else chunk.groups[idx]
                grouped = chunk.groups is not None
                rec["cluster"] = assigned[:, 0]
                rec["vec"] = chunk.vectors[idx]
                bucket = rec["cluster"] % buckets
                order = np.argsort(bucket, kind="stable")
                rec, bucket = rec[order], bucket[order]
                cuts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1], True])
                for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
                    rec[s:e].tofile(files[int(bucket[s])])
        found: list[Found] = []
        for path in paths:
            rec = np.fromfile(path, dtype=record)
            path.unlink()
            rec = rec[np.argsort(rec["cluster"], kind="stable")]  # rows stay in order within a cluster
            cuts = np.flatnonzero(np.r_[True, rec["cluster"][1:] != rec["cluster"][:-1], True])
            for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
                if e - s < 2:
                    continue
                part = rec[s:e]
                chunks = (
                    _make_chunk(
                        np.ascontiguousarray(part["vec"][c : c + EXACT_CHUNK]),
                        part["row"][c : c + EXACT_CHUNK].copy(),
                        part["group"][c : c + EXACT_CHUNK].copy() if grouped else None,
                        np.empty(0, np.int64),
                    )
                    for c in range(0, len(part), EXACT_CHUNK)
                )
                found.extend(_greedy(chunks, _FlatStore(dim), threshold))
            del rec
        if found:
            rows = np.concatenate([f[0] for f in found])
            order = np.argsort(rows, kind="stable")
            yield (
                rows[order],
                np.concatenate([f[1] for f in found])[order],
                np.concatenate([f[2] for f in found])[order],
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Files:
    """Append-mode binary files, closed together."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.files: list[Any] = []

    def __enter__(self) -> list[Any]:
        self.files = [open(p, "ab") for p in self.paths]  # noqa: SIM115 - closed in __exit__
        return self.files

    def __exit__(self, *exc: object) -> None:
        for f in self.files:
            f.close()
