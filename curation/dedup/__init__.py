"""Near-duplicate detection: perceptual image hashes with multi-index Hamming search, and MinHash-LSH texts."""

from curation.dedup.hashing import HASH_METHODS, hamming, image_hash, image_hash_pil, to_signed, to_unsigned
from curation.dedup.index import MultiIndexHash, all_pairs_image_dedup, greedy_image_dedup
from curation.dedup.minhash import greedy_text_dedup, minhash_signature, shingles

__all__ = [
    "HASH_METHODS",
    "MultiIndexHash",
    "all_pairs_image_dedup",
    "greedy_image_dedup",
    "greedy_text_dedup",
    "hamming",
    "image_hash",
    "image_hash_pil",
    "minhash_signature",
    "shingles",
    "to_signed",
    "to_unsigned",
]
