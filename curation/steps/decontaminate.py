"""Benchmark decontamination: drop training samples that show a benchmark image or ask a benchmark question.

The runner prepares each step's benchmark index once (``prepare_benchmarks``: perceptual hashes of every
benchmark image and the benchmark questions, in ``_work/decontaminate/<step>.parquet``); every worker loads
it and checks its samples independently (a record step, so it runs in parallel).

Reasons name the benchmark: ``contaminated_image:<bench>``, ``contaminated_question:<bench>`` and
``contaminated_image_and_question:<bench>`` (the accounting then holds per-source, per-benchmark counts).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.recipe import Benchmark, DecontaminateStep
from curation.sample import Sample
from curation.sources.jsontext import MAX_RECORD_BYTES, JsonRecordError, iter_lines, loads_bytes
from curation.steps.contract import RecordStep, StepContext
from schemas import SftRecord
from shards.atomic import tmp_path
from shards.reader import open_regular

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_WORD = re.compile(r"\w+")


def index_path(work: Path, label: str) -> Path:
    return work / "decontaminate" / f"{label}.parquet"


def ngrams(text: str, n: int) -> tuple[int, frozenset[tuple[str, ...]]]:
    """(number of words, the set of word n-grams) of a lowercased text; texts shorter than n give one gram."""
    words = _WORD.findall(text.casefold())
    if not words:
        return 0, frozenset()
    if len(words) < n:
        return len(words), frozenset([tuple(words)])
    return len(words), frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def check_benchmarks(cfg: DecontaminateStep, where: str) -> None:
    """Fail before the build starts when a benchmark's files are missing."""
    for bench in cfg.benchmarks:
        for key in ("shards", "images", "questions"):
            value = getattr(bench, key)
            if value is None:
                continue
            path = Path(value)
            ok = (
                (path / "dataset.json").is_file()
                if key == "shards"
                else (path.is_dir() if key == "images" else path.is_file())
            )
            if not ok:
                what = {"shards": "a built dataset", "images": "a directory", "questions": "a jsonl file"}[key]
                raise CurationError(f"{where}.benchmarks.{bench.name}.{key}: {value} is not {what}")


def _bench_items(bench: Benchmark, method: str) -> Iterator[tuple[str, int | None, str | None]]:
    """("image", hash, None) and ("question", None, text) items of one benchmark."""
    from curation.dedup.hashing import image_hash, to_signed

    if bench.shards:
        from shards.reader import iter_dataset

        for record in iter_dataset(Path(bench.shards)):
            for data in record.image_list():
                try:
                    yield "image", to_signed(image_hash(data, method)), None
                except ValueError:
                    continue  # an undecodable benchmark image cannot match anything
            if isinstance(record, SftRecord):
                for turn in record.turns:
                    yield "question", None, turn.user
        return
    if bench.images:
        for path in sorted(p for p in Path(bench.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                yield "image", to_signed(image_hash(path.read_bytes(), method)), None
            except ValueError:
                continue
    if bench.questions:
        with open_regular(Path(bench.questions)) as f:
            for line in iter_lines(f):
                where = f"{bench.questions}, the line at byte {line.offset}"  # blank lines are not counted
                if line.too_large:
                    raise CurationError(f"{where}: longer than {MAX_RECORD_BYTES} bytes")
                try:
                    row = loads_bytes(line.data)
                except JsonRecordError as exc:
                    raise CurationError(f"{where}: not valid JSON ({exc})") from None
                question = row.get("question") if isinstance(row, dict) else None
                if isinstance(question, str) and question.strip():
                    yield "question", None, question


def prepare_benchmarks(cfg: DecontaminateStep, label: str, work: Path) -> Path:
    """Hash the benchmark images and collect the questions, once per build (reused on resume)."""
    path = index_path(work, label)
    if path.is_file():
        return path
    cols: dict[str, list[Any]] = {"benchmark": [], "kind": [], "hash": [], "text": []}
    for bench in cfg.benchmarks:
        for kind, h, text in _bench_items(bench, cfg.hash):
            cols["benchmark"].append(bench.name)
            cols["kind"].append(kind)
            cols["hash"].append(h)
            cols["text"].append(text)
    table = pa.table(
        {
            "benchmark": pa.array(cols["benchmark"], pa.string()),
            "kind": pa.array(cols["kind"], pa.string()),
            "hash": pa.array(cols["hash"], pa.int64()),
            "text": pa.array(cols["text"], pa.string()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


class Decontaminate(RecordStep):
    """The record step: loads the benchmark index prepared for its step in the build's work directory."""

    config = DecontaminateStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "contaminated_image:": "an image within max_distance of the named benchmark's image (match: image...)",
        "contaminated_question:": "a question overlapping the named benchmark's question (match: ...question)",
        "contaminated_image_and_question:": "both, with the same benchmark (match: image_and_question)",
        "image_corrupt": "an image that does not decode when it is hashed for the comparison",
    }

    @classmethod
    def check_inputs(cls, cfg: DecontaminateStep, where: str, models: Mapping[str, Any]) -> None:
        check_benchmarks(cfg, where)

    @classmethod
    def prepare(cls, cfg: DecontaminateStep, label: str, work: Path, models: Mapping[str, Any]) -> None:
        prepare_benchmarks(cfg, label, work)

    @classmethod
    def image_hashes(cls, cfg: DecontaminateStep) -> set[str]:
        return set() if cfg.match == "question" else {cfg.hash}

    def __init__(self, cfg: DecontaminateStep, context: StepContext) -> None:
        from curation.dedup.hashing import to_unsigned
        from curation.dedup.index import MultiIndexHash

        super().__init__(cfg, context)
        self.order = {b.name: i for i, b in enumerate(cfg.benchmarks)}
        table = pq.read_table(index_path(context.work, context.label)).to_pylist()
        self.image_index = MultiIndexHash(cfg.max_distance)
        self.image_bench: list[str] = []
        self.questions: list[tuple[str, frozenset]] = []
        for row in table:
            if row["kind"] == "image":
                self.image_index.add(len(self.image_bench), to_unsigned(row["hash"]))
                self.image_bench.append(row["benchmark"])
            else:
                words, grams = ngrams(row["text"], cfg.ngram)
                if words >= cfg.min_question_words:
                    self.questions.append((row["benchmark"], grams))
        self.by_gram = self._index_rarest_grams()

    def _index_rarest_grams(self) -> dict[tuple[str, ...], list[int]]:
        """Index each benchmark question under its k - m + 1 rarest n-grams only (k grams, m = the overlap it
        needs): by pigeonhole a match shares at least one of them, so common grams ("what is the") never
        fan out to every question, and the matches are exactly those of a full index."""
        frequency: dict[tuple[str, ...], int] = {}
        for _, grams in self.questions:
            for g in grams:
                frequency[g] = frequency.get(g, 0) + 1
        by_gram: dict[tuple[str, ...], list[int]] = {}
        for qid, (_, grams) in enumerate(self.questions):
            needed = math.ceil(self.cfg.min_overlap * len(grams) - 1e-9)
            for g in sorted(grams, key=lambda g: (frequency[g], g))[: len(grams) - needed + 1]:
                by_gram.setdefault(g, []).append(qid)
        return by_gram

    def _image_hits(self, sample: Sample) -> set[str]:
        from curation.build.features import add_image_hashes
        from curation.dedup.hashing import to_unsigned

        if self.cfg.match == "question" or not sample.record.image_list() or not self.image_bench:
            return set()
        add_image_hashes(sample, [self.cfg.hash])  # reused by the writer's sidecar
        hits = set()
        for h in sample.image_hashes[self.cfg.hash]:
            hits.update(self.image_bench[i] for i in self.image_index.query(to_unsigned(h)))
        return hits

    def _question_hits(self, sample: Sample) -> set[str]:
        record = sample.record
        if self.cfg.match == "image" or not isinstance(record, SftRecord) or not self.questions:
            return set()
        hits = set()
        for turn in record.turns:
            words, grams = ngrams(turn.user, self.cfg.ngram)
            if words < self.cfg.min_question_words:
                continue
            candidates = {qid for g in grams for qid in self.by_gram.get(g, ())}
            for qid in candidates:
                bench, bench_grams = self.questions[qid]
                if len(grams & bench_grams) / len(bench_grams) >= self.cfg.min_overlap - 1e-9:
                    hits.add(bench)
        return hits

    def reasons(self, sample: Sample) -> list[str]:
        """Every benchmark the sample matches, as drop reasons in the recipe's benchmark order
        (``["image_corrupt"]`` when an image does not decode)."""
        try:
            images = self._image_hits(sample)
        except ValueError:
            return ["image_corrupt"]
        questions = self._question_hits(sample)
        both = images & questions
        match = self.cfg.match
        found = []
        for bench in sorted(images | questions, key=self.order.__getitem__):
            if bench in both:
                found.append(f"contaminated_image_and_question:{bench}")
            elif bench in images and match in ("image", "image_or_question"):
                found.append(f"contaminated_image:{bench}")
            elif bench in questions and match in ("question", "image_or_question"):
                found.append(f"contaminated_question:{bench}")
        return found

    def __call__(self, sample: Sample) -> Sample | str:
        found = self.reasons(sample)
        return found[0] if found else sample
