"""Per-sample features that global steps need, computed in the workers (in parallel) and staged for the
second pass: perceptual image hashes (stored in the sidecars) and MinHash signatures of texts (staged next
to the partition's shards, deleted with ``_work``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.recipe import BuildRecipe, step_label
from curation.sample import Sample
from schemas import Record, SftRecord


def needed_hashes(recipe: BuildRecipe) -> list[str]:
    """Hash methods the sidecars must carry for this recipe: the output's, and what its steps declare."""
    from curation.steps import step_class

    methods = set(recipe.output.image_hashes)
    for step in recipe.steps:
        methods |= step_class(step).image_hashes(step)
    return sorted(methods)


def minhash_steps(recipe: BuildRecipe) -> list[tuple[str, str, Any]]:
    """(label, text, config) of the steps whose MinHash signatures the workers stage."""
    from curation.steps import step_class

    found = []
    for i, step in enumerate(recipe.steps):
        text = step_class(step).minhash_text(step)
        if text is not None:
            found.append((step_label(recipe.steps, i), text, step))
    return found


def add_image_hashes(sample: Sample, methods: list[str]) -> None:
    """Fill ``sample.image_hashes`` for ``methods`` not computed yet (raises ValueError on undecodable images)."""
    from curation.dedup.hashing import image_hash, to_signed

    images = sample.record.image_list()
    for method in methods:
        if method not in sample.image_hashes:
            sample.image_hashes[method] = [to_signed(image_hash(b, method)) for b in images]


def conversation_text(record: Record, which: str) -> str:
    """The text of a record that text dedup compares: questions, answers, or both (``qa``)."""
    if isinstance(record, SftRecord):
        parts = []
        for t in record.turns:
            if which in ("qa", "questions"):
                parts.append(t.user)
            if which in ("qa", "answers"):
                parts.append(t.assistant)
        return "\n".join(parts)
    texts, answers = record.texts_for_tokens()
    return "\n".join(answers if which == "answers" else texts)


def minhash_file(label: str) -> str:
    return f"minhash-{label}.parquet"


class MinhashStager:
    """Collects (shard, index, signature) per near_dup_text step while a partition is written."""

    def __init__(self, steps: list[tuple[str, str, Any]]) -> None:
        self.steps = steps
        self.rows: dict[str, dict[str, list[Any]]] = {
            label: {"shard": [], "index": [], "sig": []} for label, _, _ in steps
        }

    def add(self, record: Record, where: tuple[str, int]) -> None:
        if not self.steps:
            return  # importing the MinHash code costs ~0.5 s per process (datasketch pulls in scipy)
        from curation.dedup.minhash import minhash_signature

        for label, text, cfg in self.steps:
            sig = minhash_signature(conversation_text(record, text), cfg.num_perm, cfg.shingle_words)
            rows = self.rows[label]
            rows["shard"].append(where[0])
            rows["index"].append(where[1])
            rows["sig"].append(None if sig is None else np.asarray(sig, dtype=np.uint64).tobytes())

    def write(self, directory: Path) -> None:
        for label, rows in self.rows.items():
            table = pa.table(
                {
                    "shard": pa.array(rows["shard"], pa.string()),
                    "index": pa.array(rows["index"], pa.int32()),
                    "sig": pa.array(rows["sig"], pa.binary()),
                }
            )
            pq.write_table(table, directory / minhash_file(label))
