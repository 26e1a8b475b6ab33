"""Process one partition: read -> probe -> record steps -> staged shards, with exact accounting.

Output goes to ``_work/pNNNNN.tmp/`` and is renamed to ``_work/pNNNNN/`` when complete, so a killed
worker leaves nothing that a rerun would mistake for finished work.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curation.accounting import Accounting
from curation.faults import crash_point
from curation.features import MinhashStager, add_image_hashes, minhash_steps, needed_hashes
from curation.readers import Partition, make_reader
from curation.recipe import BuildRecipe
from curation.rejects import RejectsWriter
from curation.sample import Drop, Sample
from curation.steps import build_steps
from shards import ShardWriter
from shards.atomic import atomic_write_json
from shards.imageinfo import ImageProbeError, probe_image
from shards.tokens import make_token_counter
from shards.writer import DuplicateKeyError

UNIQUE_KEY = "unique_key"  # the always-on global step: keys are unique across the dataset
ProgressFn = Callable[[int, int], None]  # (samples read, samples dropped) since the last call


def partition_dir(work: Path, gid: int) -> Path:
    return work / f"p{gid:05d}"


def step_names(recipe: BuildRecipe) -> tuple[list[str], list[str]]:
    """(record-level accounting steps in order, global steps in order)."""
    from curation.recipe import GLOBAL_STEPS
    from curation.steps import step_label

    record = ["read", "probe"]
    glob = [UNIQUE_KEY]
    for i, s in enumerate(recipe.steps):
        (glob if s.step in GLOBAL_STEPS else record).append(step_label(recipe.steps, i))
    return [*record, "write"], glob


def process_partition(task: dict[str, Any], progress: ProgressFn | None = None) -> dict[str, Any]:
    recipe = BuildRecipe.model_validate(task["recipe"])
    part = Partition(**task["partition"])
    gid: int = task["gid"]
    work = Path(task["work"])
    final = partition_dir(work, gid)
    # A per-attempt staging name: an orphaned worker of a killed run can never rename a rerun's files.
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    source = next(s for s in recipe.sources if s.name == part.source)
    reader = make_reader(source)
    steps = build_steps(recipe.steps, {"work": work})
    names, _ = step_names(recipe)
    acc = Accounting(names)
    out = recipe.output
    writer = ShardWriter(
        tmp,
        lambda i: f"{i:06d}",
        max_samples=out.max_samples_per_shard,
        max_bytes=out.max_bytes_per_shard,
        pair_image_ext=out.pair_image_format,
        token_counter=make_token_counter(recipe.tokenizer.type, recipe.tokenizer.path),
        score_keys=out.sidecar_scores,
    )
    rejects = RejectsWriter(tmp / "rejects", "p", max_samples=out.max_samples_per_shard) if out.rejects else None
    started = time.perf_counter()
    pending_in = pending_drop = 0
    features = _Features(needed_hashes(recipe), MinhashStager(minhash_steps(recipe)))

    def dropped(step: str, drop: Drop) -> None:
        nonlocal pending_drop
        acc.drop(step, drop.source, drop.reason, drop.count)
        pending_drop += drop.count
        if rejects is not None and drop.count == 1:  # bulk drops are counts only
            rejects.add(step, drop)

    for item in reader.read(part):
        name = part.source
        n = item.count if isinstance(item, Drop) else 1
        acc.inp("read", name, n)
        pending_in += n
        if progress is not None and pending_in >= 256:
            progress(pending_in, pending_drop)
            pending_in = pending_drop = 0
        if isinstance(item, Drop):
            dropped("read", item)
            continue
        acc.out("read", name)
        crash_point("record")
        _run_record(item, name, steps, acc, writer, out.kind, dropped, features)
    writer.close()
    features.minhash.write(tmp)
    reject_shards = rejects.close() if rejects is not None else []
    if progress is not None and (pending_in or pending_drop):
        progress(pending_in, pending_drop)
    problems = acc.check()
    if problems:  # a bug, not bad data: stop loudly
        raise RuntimeError(f"accounting broken in partition {gid}: {problems[:3]}")
    stats = {
        "gid": gid,
        "partition": part.to_dict(),
        "accounting": acc.to_dict(),
        "shards": [s.model_dump() for s in writer.shards],
        "rejects": [s.model_dump() for s in reject_shards],
        "seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_json(tmp / "stats.json", stats)
    crash_point("partition_staged")
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt finished this partition first; its output is identical
        if not (final / "stats.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return {"gid": gid, "seconds": stats["seconds"]}


class _Features:
    def __init__(self, hashes: list[str], minhash: MinhashStager) -> None:
        self.hashes = hashes
        self.minhash = minhash


def _run_record(
    sample: Sample, source: str, steps, acc: Accounting, writer: ShardWriter, kind: str, dropped, features: _Features
) -> None:
    acc.inp("probe", source)
    try:
        sample.infos = [probe_image(b) for b in sample.record.image_list()]
    except ImageProbeError as exc:
        dropped("probe", Drop(exc.reason, source, sample.origin, sample.record.key, str(exc), sample.record))
        return
    acc.out("probe", source)
    for label, step in steps:
        acc.inp(label, source)
        result = step(sample)
        if isinstance(result, str):
            dropped(label, Drop(result, source, sample.origin, sample.record.key, "", sample.record))
            return
        sample = result
        acc.out(label, source)
    acc.inp("write", source)
    record = sample.record
    if record.kind != kind:
        dropped("write", Drop("wrong_kind", source, sample.origin, record.key, f"{record.kind} != {kind}", record))
        return
    try:
        add_image_hashes(sample, features.hashes)
        where = writer.write(record, sample.infos, sample.origin, sample.image_hashes)
    except UnicodeEncodeError as exc:  # lone surrogates (e.g. "\ud800" in JSON input) cannot be stored as UTF-8
        dropped("write", Drop("invalid_unicode", source, sample.origin, record.key, str(exc)[:300], record))
        return
    except DuplicateKeyError as exc:
        dropped("write", Drop("duplicate_key", source, sample.origin, record.key, str(exc), record))
        return
    except (OSError, ValueError, SyntaxError) as exc:  # pair re-encoding of an image that only looked fine
        dropped("write", Drop("image_corrupt", source, sample.origin, record.key, str(exc), record))
        return
    features.minhash.add(record, where)
    acc.out("write", source)


def read_partition_stats(work: Path, gid: int) -> dict[str, Any]:
    return json.loads((partition_dir(work, gid) / "stats.json").read_text())
