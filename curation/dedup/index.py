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
import pyarrow as pa

from curation.dedup.hashing import HASH_BITS, to_signed, to_unsigned


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
    duplicates: the same number (> 0) of images, image ``i`` within ``max_distance`` bits of image ``i`` for
    every ``i``, and (if ``groups`` is given) the same group. Samples are compared only with those kept so
    far, so in a chain A~B~C with A !~ C both A and C are kept. Samples with no images are always kept.

    In memory, for tests and small inputs: the build runs the same :class:`HashSearch` over its sidecars.
    """
    from curation.dedup import search_db
    from curation.dedup.image_search import HashSearch

    _check_distance(max_distance)
    group_list = _groups(len(samples), groups)
    positions = [i for i, sample in enumerate(samples) if len(sample)]
    signed = [[to_signed(to_unsigned(h)) for h in samples[i]] for i in positions]
    rows = pa.table(
        {
            "pos": pa.array(range(len(positions)), pa.int64()),
            "grp": pa.array(search_db.group_codes([(group_list[i], len(samples[i])) for i in positions]), pa.int64()),
            "h": pa.array([hashes[0] for hashes in signed], pa.int64()),
            "rest": pa.array([hashes[1:] for hashes in signed], pa.list_(pa.int64())),
        }
    )
    found = search_db.search_rows(HashSearch, rows, lambda db: HashSearch(db).run(max_distance))
    return search_db.matches(found, positions, len(samples))


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
