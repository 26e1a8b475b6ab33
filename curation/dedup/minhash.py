"""Near-duplicate texts: word-shingle MinHash signatures (datasketch) and greedy MinHash-LSH deduplication
(:mod:`curation.dedup.lsh`)."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import cast

import numpy as np
import pyarrow as pa
from datasketch import MinHash

from curation.dedup import search_db
from curation.dedup.lsh import Banding, SignatureSearch, banding_for

# datasketch >= 2.0 permutation scheme: 64-bit affine permutations, collision-free, uint64 hash values.
SCHEME = "affine64"
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int) -> set[bytes]:
    """The set of ``n``-word shingles of ``text`` (lowercased ``\\w+`` words joined by a space, UTF-8).

    Texts shorter than ``n`` words give one shingle of all their words; texts without words none.
    """
    if n < 1:
        raise ValueError(f"shingle size must be >= 1, got {n}")
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    """datasketch draws the permutations from a seeded RNG in every constructor; reuse them instead."""
    # cast: datasketch declares the attribute as any array-like; it is the (2, num_perm) uint64 array
    return cast(np.ndarray, MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations)


def minhash_signature(text: str, num_perm: int = 128, shingle_words: int = 3, seed: int = 1) -> np.ndarray | None:
    """MinHash hash values (``num_perm`` uint64) of the word shingles of ``text``; None if it has no words."""
    items = shingles(text, shingle_words)
    if not items:
        return None
    m = MinHash(num_perm=num_perm, seed=seed, permutations=_permutations(num_perm, seed), scheme=SCHEME)
    m.update_batch(items)
    return m.hashvalues


def greedy_text_dedup(
    signatures: Sequence[np.ndarray | None],
    threshold: float,
    num_perm: int = 128,
    groups: Sequence[Hashable] | None = None,
    banding: Banding | None = None,
    verify: bool = True,
) -> list[int]:
    """Per sample (in dataset order) ``-1`` if kept, else the index of the earliest kept sample whose
    estimated Jaccard similarity is ``>= threshold`` (and, if ``groups`` is given, of the same group), found
    through LSH with ``banding`` (default: :func:`banding_for` the threshold). In memory, for tests and small
    inputs: the build runs the same :class:`SignatureSearch` over its staged signatures.
    ``None`` signatures (no words) are always kept."""
    if groups is not None and len(groups) != len(signatures):
        raise ValueError(f"groups has {len(groups)} entries for {len(signatures)} signatures")
    positions = [i for i, sig in enumerate(signatures) if sig is not None]
    for i in positions:
        if len(signatures[i]) != num_perm:  # type: ignore[arg-type]  # not None: filtered above
            raise ValueError(f"signature {i} has {len(signatures[i])} values, expected num_perm={num_perm}")  # type: ignore[arg-type]
    keys = [None if groups is None else groups[i] for i in positions]
    rows = pa.table(
        {
            "pos": pa.array(range(len(positions)), pa.int64()),
            "grp": pa.array(search_db.group_codes(keys), pa.int64()),
            "sig": pa.array([np.asarray(signatures[i], dtype=np.uint64).tobytes() for i in positions], pa.binary()),
        }
    )
    layout = banding or banding_for(threshold, num_perm)
    found = search_db.search_rows(
        SignatureSearch, rows, lambda db: SignatureSearch(db, num_perm).run(threshold, layout, verify)
    )
    return search_db.matches(found, positions, len(signatures))
