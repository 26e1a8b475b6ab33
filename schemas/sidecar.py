"""Arrow schema of the per-shard parquet sidecar: one row per sample, read by the audit (DuckDB)."""

from __future__ import annotations

import pyarrow as pa

SIDECAR_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("index", pa.int32(), nullable=False, metadata={"doc": "position of the sample in its shard"}),
        pa.field("n_images", pa.int32(), nullable=False),
        pa.field("widths", pa.list_(pa.int32())),
        pa.field("heights", pa.list_(pa.int32())),
        pa.field("image_sha256", pa.list_(pa.string())),
        pa.field("image_formats", pa.list_(pa.string())),
        pa.field("text_tokens", pa.int64(), nullable=False),
        pa.field("answer_tokens", pa.int64(), nullable=False),
        pa.field("turns", pa.int32(), nullable=False, metadata={"doc": "supervised answers (QA pairs)"}),
        pa.field("pages", pa.int32(), metadata={"doc": "pdf pages; null for other kinds"}),
        pa.field("bytes", pa.int64(), nullable=False, metadata={"doc": "payload bytes of the sample's members"}),
        pa.field("origin", pa.string(), metadata={"doc": "where the sample was read from"}),
        pa.field(
            "image_phash",
            pa.list_(pa.int64()),
            metadata={"doc": "64-bit perceptual hash (pHash) per image, as signed int64; null when not computed"},
        ),
        pa.field(
            "image_dhash",
            pa.list_(pa.int64()),
            metadata={"doc": "64-bit difference hash (dHash) per image, as signed int64; null when not computed"},
        ),
        pa.field(
            "scores",
            pa.map_(pa.string(), pa.float64()),
            metadata={"doc": "numeric meta values named by output.sidecar_scores (e.g. LAION similarity)"},
        ),
    ]
)

# Per-turn columns, present only in the sidecars of builds that keep per-turn ratings (a judge step, or
# ``output.turn_ratings``): the audit's turn-level what-if (turns, samples and answer tokens kept at a threshold).
TURN_FIELDS = [
    pa.field(
        "turn_answer_tokens",
        pa.list_(pa.int64()),
        metadata={"doc": "answer tokens of each turn (sft); null for other kinds"},
    ),
    pa.field(
        "turn_ratings",
        pa.map_(pa.string(), pa.list_(pa.float64())),
        metadata={"doc": "per-turn ratings by axis (meta.ratings), parallel to the turns; null entries: unrated"},
    ),
]


def sidecar_schema(turn_columns: bool = False) -> pa.Schema:
    """The sidecar schema, with the per-turn columns when the build keeps per-turn ratings."""
    schema = SIDECAR_SCHEMA
    for f in TURN_FIELDS if turn_columns else []:
        schema = schema.append(f)
    return schema
