"""Process one partition: read -> probe -> record steps -> staged shards, with exact accounting.

Output goes to ``_work/pNNNNN.tmp-<pid>-<random>/`` and is renamed to ``_work/pNNNNN/`` when complete, so a killed
worker leaves nothing that a rerun would mistake for finished work.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from curation.build.accounting import Accounting
from curation.build.faults import crash_point
from curation.build.features import MinhashStager, add_image_hashes, minhash_steps, needed_hashes
from curation.build.messages import PartitionResult, PartitionStats, PartitionTask, partition_dir, staged_stem
from curation.build.rejects import RejectsWriter
from curation.errors import CurationError, is_disk_full
from curation.recipe import BuildRecipe
from curation.sample import Drop, Sample
from curation.sources import Partition, Reader, make_reader
from curation.steps import BatchedStep, RecordStep, build_steps, is_global, step_class, step_label
from curation.storage.copies import localize_on_this_node
from curation.storage.inputs import set_options as set_input_options
from shards import ShardWriter
from shards.imageinfo import ImageProbeError, probe_image
from shards.tokens import make_token_counter
from shards.writer import DuplicateKeyError

ProgressFn = Callable[[int, int], None]  # (samples read, samples dropped) since the last call
READ, PROBE, WRITE = "read", "probe", "write"  # the accounting steps of the build itself, around the record steps


def record_step_names(recipe: BuildRecipe) -> list[str]:
    """The accounting steps a partition counts, in order: read, probe, the record steps, write."""
    steps = [step_label(recipe.steps, i) for i, s in enumerate(recipe.steps) if not is_global(s)]
    return [READ, PROBE, *steps, WRITE]


def process_partition(task: PartitionTask, progress: ProgressFn | None = None) -> PartitionResult:
    recipe, part, gid, work = task.recipe, task.partition, task.gid, task.work
    final = partition_dir(work, gid)
    # A per-attempt staging name: an orphaned worker of a killed run can never rename a rerun's files.
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    source = next(s for s in recipe.sources if s.name == part.source)
    set_input_options(recipe.storage)  # inputs in a bucket: this worker's own connection, its own credentials
    localize_on_this_node(recipe, task.copies)  # recipe files from a bucket, where this node lacks the driver's copy
    reader = make_reader(source)
    if task.channel is not None:  # files of the plan in the driver's cache: here, or copied from the bucket
        for name in (n for n in reader.plan_file_fields if n in part.spec):
            part.spec[name] = task.channel.fetch(part.spec[name], task.plan_files[part.spec[name]])
    steps = build_steps(recipe.steps, work, (recipe.tokenizer.type, recipe.tokenizer.path), recipe.models)
    acc = Accounting(record_step_names(recipe))
    out = recipe.output
    writer = ShardWriter(
        tmp,
        staged_stem,
        max_samples=out.max_samples_per_shard,
        max_bytes=out.max_bytes_per_shard,
        pair_image_ext=out.pair_image_format,
        token_counter=make_token_counter(recipe.tokenizer.type, recipe.tokenizer.path),
        score_keys=[*out.sidecar_scores, *step_scores(recipe)],
        turn_ratings=turn_rating_axes(recipe),
        record_offsets=True,  # the commit copies kept samples as byte ranges
        embedding_dims={name: dim for _, step in steps for name, dim in step.stored_embeddings().items()},
    )
    rejects = RejectsWriter(tmp / "rejects", "p", max_samples=out.max_samples_per_shard) if out.rejects else None
    started = time.perf_counter()
    pending_in = pending_drop = 0
    features = Features(needed_hashes(recipe), MinhashStager(minhash_steps(recipe)))

    def dropped(step: str, drop: Drop) -> None:
        nonlocal pending_drop
        drop.detail = task.where.text(drop.detail)  # e.g. a missing image file's path
        acc.drop(step, drop.source, drop.reason, drop.count)
        pending_drop += drop.count
        if rejects is not None and drop.count == 1:  # bulk drops are counts only
            rejects.add(step, drop)

    pipeline = RecordPipeline(part.source, steps, acc, writer, out.kind, dropped, features)
    for item in read_every_row(reader, part):
        item.origin = task.where.path(item.origin)  # the build records where its inputs are relative to their root
        name = part.source
        n = item.count if isinstance(item, Drop) else 1
        acc.inp(READ, name, n)
        pending_in += n
        if progress is not None and pending_in >= 256:
            progress(pending_in, pending_drop)
            pending_in = pending_drop = 0
        if isinstance(item, Drop):
            dropped(READ, item)
            continue
        acc.out(READ, name)
        crash_point("record")
        pipeline.feed(item)
    pipeline.finish()
    for _, step in steps:
        step.close()
    writer.close()
    features.minhash.write(tmp)
    reject_shards = rejects.close() if rejects is not None else []
    if progress is not None and (pending_in or pending_drop):
        progress(pending_in, pending_drop)
    problems = acc.check()
    if problems:  # a bug, not bad data: stop loudly
        raise RuntimeError(f"accounting broken in partition {gid}: {problems[:3]}")
    stats = PartitionStats(
        gid=gid,
        partition=part,
        accounting=acc.to_dict(),
        shards=writer.shards,
        rejects=reject_shards,
        reports=_step_reports(steps),
        seconds=round(time.perf_counter() - started, 3),
    )
    stats.write(tmp)
    crash_point("partition_staged")
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt finished this partition first; its output is identical
        if not PartitionStats.is_done(work, gid):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if task.channel is not None:  # the driver may not see this disk: the partition goes through the channel
        crash_point("partition_publish")
        task.channel.publish(final)
    return PartitionResult(gid, stats.seconds, placement())


def placement() -> dict[str, Any]:
    """Where this partition ran, for the run log: host, process and the GPUs it could see."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"host": socket.gethostname(), "pid": os.getpid(), **({"gpus": gpus} if gpus is not None else {})}


def read_every_row(reader: Reader, part: Partition) -> Iterator[Sample | Drop]:
    """The reader's items, holding it to the plan: every planned row leaves as a sample or a drop, whatever
    the reader does. Rows it could not account for (it raised, or ended early because the input changed since
    the plan) are dropped with the reason; more rows than planned is a bug in the reader."""
    seen = 0
    items = reader.read(part)
    failure: Drop | None = None
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except CurationError:  # a deliberate one-line stop (e.g. a source that cannot be opened at all)
            raise
        except Exception as exc:  # any other failure would lose the partition's remaining rows: count them
            if is_disk_full(exc):  # the environment, not the data: stop; the rerun resumes
                raise
            detail = f"{type(exc).__name__}: {exc}"[:500]
            failure = Drop("reader_error", part.source, reader.partition_origin(part), None, detail)
            break
        seen += item.count if isinstance(item, Drop) else 1
        yield item
    if seen > part.rows:
        raise RuntimeError(f"reader of source {part.source!r} gave {seen} rows for a partition of {part.rows} (a bug)")
    if seen < part.rows:
        detail = f"the plan counted {part.rows} rows, the reader gave {seen}"
        missing = failure or Drop("rows_missing", part.source, reader.partition_origin(part), None, detail)
        yield dataclasses.replace(missing, count=part.rows - seen)


@dataclass(frozen=True)
class Features:
    """Per-sample features the global steps need, computed here: image hash methods and MinHash staging."""

    hashes: list[str]
    minhash: MinhashStager


DropFn = Callable[[str, Drop], None]  # (accounting step, drop)


@dataclass
class RecordPipeline:
    """probe -> record steps -> write, for one sample at a time, except at batched steps (an LLM generating
    for many documents per call): samples wait there until ``batch_size`` are gathered (or the partition
    ends), go through the step together, and continue in their original order."""

    source: str
    steps: list[tuple[str, RecordStep]]
    acc: Accounting
    writer: ShardWriter
    kind: str
    dropped: DropFn
    features: Features
    waiting: dict[int, list[Sample]] = field(default_factory=dict)  # step position -> samples gathered for it

    def feed(self, sample: Sample) -> None:
        self.acc.inp(PROBE, self.source)
        try:
            sample.infos = [probe_image(b) for b in sample.record.image_list()]
        except ImageProbeError as exc:
            r = sample.record
            self.dropped(PROBE, Drop(exc.reason, self.source, sample.origin, r.key, str(exc), r))
            return
        self.acc.out(PROBE, self.source)
        self._run_from(0, sample)

    def finish(self) -> None:
        """Run what is still waiting at batched steps, in step order."""
        for position in range(len(self.steps)):
            if self.waiting.get(position):
                self._flush(position)

    def _run_from(self, position: int, sample: Sample) -> None:
        for i in range(position, len(self.steps)):
            label, step = self.steps[i]
            if isinstance(step, BatchedStep):
                batch = self.waiting.setdefault(i, [])
                batch.append(sample)
                if len(batch) >= step.batch_size:
                    self._flush(i)
                return
            self.acc.inp(label, self.source)
            result = step(sample)
            if isinstance(result, str):
                self.dropped(label, Drop(result, self.source, sample.origin, sample.record.key, "", sample.record))
                return
            sample = result
            self.acc.out(label, self.source)
        self._write(sample)

    def _flush(self, position: int) -> None:
        label, step = self.steps[position]
        assert isinstance(step, BatchedStep)  # only batched steps gather samples
        batch, self.waiting[position] = self.waiting[position], []
        self.acc.inp(label, self.source, len(batch))
        for sample, result in zip(batch, step.process_batch(batch), strict=True):
            if isinstance(result, str):
                self.dropped(label, Drop(result, self.source, sample.origin, sample.record.key, "", sample.record))
                continue
            self.acc.out(label, self.source)
            self._run_from(position + 1, result)

    def _write(self, sample: Sample) -> None:
        source, record = self.source, sample.record
        self.acc.inp(WRITE, source)
        if record.kind != self.kind:
            self.dropped(
                WRITE, Drop("wrong_kind", source, sample.origin, record.key, f"{record.kind} != {self.kind}", record)
            )
            return
        try:
            add_image_hashes(sample, self.features.hashes)
            where = self.writer.write(
                record, sample.infos, sample.origin, sample.image_hashes, sample.stored(self.writer.embedding_dims)
            )
        except UnicodeEncodeError as exc:  # lone surrogates (e.g. "\ud800" in JSON input) cannot be stored as UTF-8
            self.dropped(WRITE, Drop("invalid_unicode", source, sample.origin, record.key, str(exc)[:300], record))
            return
        except DuplicateKeyError as exc:
            self.dropped(WRITE, Drop("duplicate_key", source, sample.origin, record.key, str(exc), record))
            return
        except (OSError, ValueError, SyntaxError) as exc:  # pair re-encoding of an image that only looked fine
            if isinstance(exc, OSError) and exc.errno is not None:  # the system failed writing (a full disk, an
                raise  # I/O error), not the image: Pillow's decoding errors carry no errno
            self.dropped(WRITE, Drop("image_corrupt", source, sample.origin, record.key, str(exc), record))
            return
        self.features.minhash.add(record, where)
        self.acc.out(WRITE, source)


def turn_rating_axes(recipe: BuildRecipe) -> list[str]:
    """The rating axes the sidecars keep per turn: ``output.turn_ratings`` and the judge steps' criteria."""
    axes = list(recipe.output.turn_ratings)
    for step in recipe.steps:
        declared: Callable[[], list[str]] | None = getattr(step, "turn_rating_axes", None)
        axes += declared() if declared is not None else []
    return list(dict.fromkeys(axes))


def step_scores(recipe: BuildRecipe) -> list[str]:
    """The sidecar scores the recipe's steps write, in step order."""
    return [name for i, s in enumerate(recipe.steps) for name in step_class(s).scores(s, step_label(recipe.steps, i))]


def _step_reports(steps: list[tuple[str, RecordStep]]) -> dict[str, Any]:
    """What steps report about their work (e.g. generation counts and timings), by step label."""
    reports = {label: step.report() for label, step in steps}
    return {label: report for label, report in reports.items() if report is not None}
