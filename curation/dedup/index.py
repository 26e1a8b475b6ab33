"""Near-duplicate search over 64-bit image hashes: multi-index hashing and greedy sample deduplication.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing",
CVPR 2012): the ``bits`` are split into ``max_distance + 1`` disjoint chunks. Two hashes within Hamming
distance ``r`` differ in at most ``r`` bits, so by pigeonhole at least one of the ``r + 1`` chunks is
identical: looking up each chunk of the query in a ``chunk value -> ids`` table finds every true neighbour,
and checking the full distance of those candidates removes the false ones. The search is exact.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from curation.dedup.hashing import HASH_BITS, to_unsigned


class MultiIndexHash:
    """Exact radius-``max_distance`` Hamming search over ``bits``-bit hashes (unsigned ints).

    The chunk tables hold distinct hashes rather than ids (a hash -> ids dict maps hits back), so candidates
    are verified with one xor and popcount each, without an id -> hash lookup: verification dominates the
    query time, since a table bucket holds about ``len(self) / 2**chunk_bits`` unrelated hashes.
    """

    def __init__(self, max_distance: int, bits: int = HASH_BITS) -> None:
        if bits < 1:
            raise ValueError(f"bits must be positive, got {bits}")
        if not 0 <= max_distance < bits:
            raise ValueError(f"max_distance must be in [0, {bits}), got {max_distance}")
        self.max_distance = max_distance
        self.bits = bits
        chunks = max_distance + 1
        widths = [bits // chunks + (1 if i < bits % chunks else 0) for i in range(chunks)]
        shifts = [sum(widths[i + 1 :]) for i in range(chunks)]
        self._chunks = [(shift, (1 << w) - 1) for shift, w in zip(shifts, widths, strict=True)]
        self._tables: list[dict[int, list[int]]] = [{} for _ in range(chunks)]
        self._ids: dict[int, list[int]] = {}  # hash -> ids added with it
        self._len = 0

    def _check(self, h: int) -> int:
        h = int(h)
        if h < 0 or h >> self.bits:
            raise ValueError(f"hash {h} is not an unsigned {self.bits}-bit value")
        return h

    def add(self, item_id: int, h: int) -> None:
        """Index ``h`` under ``item_id`` (ids are not checked for uniqueness)."""
        h = self._check(h)
        self._len += 1
        ids = self._ids.get(h)
        if ids is not None:  # already in the chunk tables
            ids.append(item_id)
            return
        self._ids[h] = [item_id]
        for table, (shift, mask) in zip(self._tables, self._chunks, strict=True):
            key = (h >> shift) & mask
            bucket = table.get(key)
            if bucket is None:
                table[key] = [h]
            else:
                bucket.append(h)

    def query(self, h: int) -> list[int]:
        """Ids of the indexed hashes within ``max_distance`` of ``h``, ascending."""
        h = self._check(h)
        r = self.max_distance
        hits: set[int] = set()  # a near hash can share several chunks with h
        for table, (shift, mask) in zip(self._tables, self._chunks, strict=True):
            bucket = table.get((h >> shift) & mask)
            if bucket:
                close = [x for x in bucket if (x ^ h).bit_count() <= r]
                if close:
                    hits.update(close)
        if not hits:
            return []
        return sorted(i for x in hits for i in self._ids[x])

    def __len__(self) -> int:
        return self._len


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS}), got {max_distance}")


def _groups(n: int, groups: Sequence[Hashable] | None) -> Sequence[Hashable]:
    if groups is None:
        return [None] * n
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} samples")
    return groups


def _unsigned(sample: Sequence[int]) -> tuple[int, ...]:
    """Hashes as unsigned ints (int64-stored hashes accepted: same bits)."""
    return tuple(to_unsigned(h) for h in sample)


def greedy_image_dedup(
    samples: Sequence[Sequence[int]], max_distance: int, groups: Sequence[Hashable] | None = None
) -> list[int]:
    """Per sample (in dataset order) ``-1`` if kept, else the index of the earliest earlier kept sample it
    duplicates: the same number (> 0) of images, image ``i`` within ``max_distance`` of image ``i`` for
    every ``i``, and (if ``groups`` is given) the same group. Samples are compared only with those kept so
    far, so in a chain A~B~C with A !~ C both A and C are kept. Samples with no images are always kept.

    One :class:`MultiIndexHash` per (group, image count) indexes the first image of each kept sample;
    candidates are verified on the others.
    """
    _check_distance(max_distance)
    group_list = _groups(len(samples), groups)
    unsigned = [_unsigned(sample) for sample in samples]
    single = [i for i, h in enumerate(unsigned) if len(h) == 1]
    result = [-1] * len(samples)
    # Single-image samples (nearly all of them) never meet multi-image ones: the vectorised path.
    if single:
        codes: dict[Hashable, int] = {}
        hashes = np.array([unsigned[i][0] for i in single], dtype=np.uint64)
        gcodes = np.array([codes.setdefault(group_list[i], len(codes)) for i in single], dtype=np.int64)
        for local, match in enumerate(greedy_single_image_dedup(hashes, max_distance, gcodes)):
            if match >= 0:
                result[single[local]] = single[int(match)]
    indexes: dict[tuple[Hashable, int], tuple[MultiIndexHash, dict[int, tuple[int, ...]]]] = {}
    for i, (hashes, group) in enumerate(zip(unsigned, group_list, strict=True)):
        if len(hashes) < 2:
            continue
        key = (group, len(hashes))
        entry = indexes.get(key)
        if entry is None:
            entry = indexes[key] = (MultiIndexHash(max_distance), {})
        index, kept = entry
        match = -1
        for j in index.query(hashes[0]):
            if all((a ^ b).bit_count() <= max_distance for a, b in zip(hashes[1:], kept[j][1:], strict=True)):
                match = j
                break
        if match < 0:
            index.add(i, hashes[0])
            kept[i] = hashes
        result[i] = match
    return result


def greedy_single_image_dedup(hashes: np.ndarray, max_distance: int, groups: np.ndarray | None = None) -> np.ndarray:
    """:func:`greedy_image_dedup` for one hash per sample, vectorised: the multi-index candidate pairs of
    all samples at once (per chunk, equal (group, chunk value) runs of a sort), verified with popcount,
    then the greedy kept-first pass over the true near pairs only. Exact copies are folded first (an exact
    copy is always dropped: its first occurrence, or what that one duplicates, is kept and within 0 bits).
    Returns, per sample, -1 or the index of the earliest earlier kept sample it duplicates."""
    n = len(hashes)
    hashes = np.asarray(hashes, dtype=np.uint64)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if n == 0:
        return np.empty(0, np.int64)
    # 1. fold exact copies onto their first occurrence
    order = np.lexsort((np.arange(n), hashes, groups))
    g_sorted, h_sorted = groups[order], hashes[order]
    starts = np.ones(n, bool)
    starts[1:] = (g_sorted[1:] != g_sorted[:-1]) | (h_sorted[1:] != h_sorted[:-1])
    run = np.cumsum(starts) - 1
    first = order[starts]  # the first sample of each distinct (group, hash), per run
    representative = np.empty(n, np.int64)
    representative[order] = first[run]
    unique = np.sort(first)  # distinct (group, hash) in dataset order
    u_hash, u_group = hashes[unique], groups[unique]
    # 2. candidate pairs (positions in `unique`, i < j) sharing a chunk, verified
    chunks = max_distance + 1
    widths = [HASH_BITS // chunks + (1 if c < HASH_BITS % chunks else 0) for c in range(chunks)]
    pairs = []
    shift = HASH_BITS
    for width in widths:
        shift -= width
        value = (u_hash >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        by_key = np.lexsort((np.arange(len(unique)), value, u_group))
        key_g, key_v = u_group[by_key], value[by_key]
        active = np.arange(len(by_key) - 1)
        step = 1
        while active.size:  # pairs at distance `step` within equal-key runs; shrink to the runs still long enough
            same = (key_g[active] == key_g[active + step]) & (key_v[active] == key_v[active + step])
            active = active[same]
            if active.size:
                i, j = by_key[active], by_key[active + step]
                close = np.bitwise_count(u_hash[i] ^ u_hash[j]) <= max_distance
                pairs.append(np.stack([np.minimum(i, j)[close], np.maximum(i, j)[close]]))
            step += 1
            active = active[active + step < len(by_key)]
    match_u = np.full(len(unique), -1, np.int64)
    if pairs:
        edges = np.unique(np.concatenate(pairs, axis=1), axis=1)  # sorted by (i, j): a pair found in 2 chunks once
        edges = edges[:, np.lexsort((edges[0], edges[1]))]  # by j, then i ascending
        kept = np.ones(len(unique), bool)
        for i, j in zip(edges[0].tolist(), edges[1].tolist(), strict=True):  # only the true near pairs
            if match_u[j] < 0 and kept[i]:
                match_u[j], kept[j] = i, False
    # 3. back to samples: a representative takes its own match; an exact copy matches its representative,
    # or what the representative matched when that one was dropped
    position = np.empty(n, np.int64)
    position[unique] = np.arange(len(unique))
    rep_match = match_u[position[representative]]
    rep_as_match = np.where(rep_match >= 0, unique[np.maximum(rep_match, 0)], representative)
    return np.where(representative == np.arange(n), np.where(rep_match >= 0, rep_as_match, -1), rep_as_match)


def all_pairs_image_dedup(
    samples: Sequence[Sequence[int]], max_distance: int, groups: Sequence[Hashable] | None = None
) -> list[int]:
    """:func:`greedy_image_dedup` by brute force: each sample against every kept sample of its (group,
    image count), vectorised with numpy. Quadratic; the reference for tests and benchmarks."""
    _check_distance(max_distance)
    result: list[int] = []
    # (group, image count) -> [kept hashes (capacity x count uint64), kept ids, number kept]
    kept: dict[tuple[Hashable, int], list] = {}
    for i, (sample, group) in enumerate(zip(samples, _groups(len(samples), groups), strict=True)):
        hashes = _unsigned(sample)
        if not hashes:
            result.append(-1)
            continue
        key = (group, len(hashes))
        entry = kept.get(key)
        if entry is None:
            entry = kept[key] = [np.empty((16, len(hashes)), np.uint64), np.empty(16, np.int64), 0]
        arr, ids, n = entry
        row = np.array(hashes, dtype=np.uint64)
        close = (np.bitwise_count(arr[:n] ^ row) <= max_distance).all(axis=1)
        hits = np.flatnonzero(close)
        if hits.size:
            result.append(int(ids[hits[0]]))  # kept rows are in dataset order: the first is the earliest
            continue
        if n == len(ids):
            arr = entry[0] = np.concatenate([arr, np.empty_like(arr)])
            ids = entry[1] = np.concatenate([ids, np.empty_like(ids)])
        arr[n], ids[n] = row, i
        entry[2] = n + 1
        result.append(-1)
    return result
