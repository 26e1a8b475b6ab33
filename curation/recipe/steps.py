"""Steps: what a build does to each sample (one model per step type)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from curation.recipe.common import (
    DOTTED_NAME_PATTERN,
    NAME_MAX,
    NOT_IDENTITY,
    GlobalStepBase,
    PathStr,
    StepBase,
    _check_bounds,
    _check_unique,
    _Strict,
)
from curation.recipe.generation import DocmatixGenerateStep, JudgeStep
from curation.recipe.models import (
    SCORE_PATTERN,
    ClipScoreStep,
    EmbeddingClassifierStep,
    EmbeddingDecontaminateStep,
    EmbedStep,
    KeepTopStep,
    SemanticDedupStep,
)

# ---- steps ---------------------------------------------------------------------------------------
RESERVED_STEP_NAMES = ("read", "probe", "write", "unique_key")


def step_label(steps: list[Any], i: int) -> str:
    """Accounting label of ``steps[i]``: its name, or its type with a suffix when the type repeats."""
    step = steps[i]
    if step.name:
        return step.name
    same = [j for j, s in enumerate(steps) if s.step == step.step and not s.name]
    return step.step if len(same) == 1 else f"{step.step}#{same.index(i) + 1}"


class TextLengthStep(StepBase):
    step: Literal["text_length"]
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int = Field(0, ge=0)
    max_words: int | None = Field(None, ge=1)
    field: Literal["all", "caption", "answers", "questions"] = Field(
        "all", description="Which text: all of it, the caption (pair), or the answers/questions (sft)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> TextLengthStep:
        _check_bounds("min_chars", self.min_chars, "max_chars", self.max_chars)
        _check_bounds("min_words", self.min_words, "max_words", self.max_words)
        return self


class ImageDecodeStep(StepBase):
    step: Literal["image_decode"]


class ImageSizeStep(StepBase):
    step: Literal["image_size"]
    min_side: int = Field(1, ge=1)
    max_side: int | None = Field(None, ge=1)
    max_aspect_ratio: float | None = Field(None, ge=1.0)

    @model_validator(mode="after")
    def _bounds(self) -> ImageSizeStep:
        _check_bounds("min_side", self.min_side, "max_side", self.max_side)
        return self


class PairToSftStep(StepBase):
    step: Literal["pair_to_sft"]
    prompt: str = Field("Describe the image.", description="The user turn; the caption becomes the answer.")


class PdfToTranscriptionStep(StepBase):
    """A ``pdf`` record becomes an ``sft`` record: rendered page images, one turn per page (prompt -> the
    page's text in reading order), as in Idefics3's pretraining stage 2."""

    step: Literal["pdf_to_transcription"]
    dpi: int = Field(150, ge=10, le=600)
    max_side: int = Field(2940, ge=64, description="Longest side of a rendered page, in pixels.")
    prompt: str = Field("Transcribe the text of this page.", description="The user turn of every page.")
    image_format: Literal["png", "jpg"] = "png"


class ExactImageDedupStep(GlobalStepBase):
    step: Literal["exact_image_dedup"]


class QaFilterStep(StepBase):
    """Conversation checks on ``sft`` records; a sample with any failing turn is dropped with the reason."""

    step: Literal["qa_filter"]
    min_question_chars: int = Field(0, ge=0, description="Text-only turns need a question; image turns may be empty.")
    max_question_chars: int | None = Field(None, ge=1)
    min_answer_chars: int = Field(1, ge=0)
    max_answer_chars: int | None = Field(None, ge=1)
    min_turns: int = Field(1, ge=0)
    max_turns: int | None = Field(None, ge=1)
    repeated_turns: Literal["drop", "keep"] = Field(
        "drop", description="drop: a conversation repeating a (question, answer) turn is dropped (repeated_turn)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> QaFilterStep:
        _check_bounds("min_question_chars", self.min_question_chars, "max_question_chars", self.max_question_chars)
        _check_bounds("min_answer_chars", self.min_answer_chars, "max_answer_chars", self.max_answer_chars)
        _check_bounds("min_turns", self.min_turns, "max_turns", self.max_turns)
        return self


class ScoreFilterStep(StepBase):
    """Bounds on a score. ``level: sample``: a sample whose meta number ``score`` (e.g. relevance_min,
    clip_score) is below ``min`` or above ``max`` is dropped. ``level: turn`` (sft): the turns whose rating
    ``meta.ratings[score]`` (e.g. relevance) is out of bounds are removed; the sample stays while a turn remains."""

    step: Literal["score_filter"]
    score: str = Field(
        pattern=SCORE_PATTERN,
        max_length=NAME_MAX,
        description="sample: a meta number (relevance_min, clip_score, ...); turn: a rating axis (relevance, ...).",
    )
    min: float | None = Field(None, allow_inf_nan=False, description="Keep scores >= min.")
    max: float | None = Field(None, allow_inf_nan=False, description="Keep scores <= max.")
    level: Literal["sample", "turn"] = Field("sample", description="Filter whole samples, or turns (sft).")
    missing: Literal["keep", "drop"] = Field("keep", description="A sample without the score: kept, or dropped.")

    @model_validator(mode="after")
    def _bounds(self) -> ScoreFilterStep:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g}); nothing could pass")
        return self


class _SearchMemory(GlobalStepBase):
    memory_mb: int = Field(
        512,
        ge=64,
        le=1 << 20,
        description="DuckDB's memory for the search (the process peaks about 400 MiB above it); beyond it, it "
        "spills under _work. Not part of the recipe's identity: changing it resumes a build.",
        json_schema_extra=NOT_IDENTITY,
    )


class NearDupImagesStep(_SearchMemory):
    """Perceptual near-duplicate images across the build (global): a sample whose images are all within
    ``max_distance`` bits of an earlier sample's images (same count, same order) is dropped."""

    step: Literal["near_dup_images"]
    hash: Literal["phash", "dhash"] = "phash"
    max_distance: int = Field(
        8,
        ge=0,
        le=32,
        description="Hamming distance between 64-bit hashes (8 finds 96% of 5% crops; see docs/dedup.md).",
    )
    scope: Literal["all", "source"] = Field("all", description="all: across every source; source: within each.")


class NearDupTextStep(_SearchMemory):
    """MinHash-LSH near-duplicate conversations (global, out of core): a sample sharing an LSH band with an
    earlier kept sample whose estimated Jaccard similarity of word shingles is >= ``threshold`` is dropped."""

    step: Literal["near_dup_text"]
    threshold: float = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard of word shingles; 0.75 finds 97% of copies whose true Jaccard is 0.80-0.85.",
    )
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_words: int = Field(3, ge=1, le=16)
    text: Literal["qa", "questions", "answers"] = "qa"
    scope: Literal["all", "source"] = "all"
    same_images: bool = Field(
        False, description="Only count texts as duplicates when the samples also share their images (sha256)."
    )
    bands: int | None = Field(
        None, ge=1, le=1024, description="LSH bands (with rows); default: chosen for the threshold."
    )
    rows: int | None = Field(None, ge=1, le=1024, description="Hash values per band (with bands).")
    verify: bool = Field(
        True,
        description="Check each candidate pair's estimated Jaccard against the threshold; false: a shared band is "
        "enough (DataTrove's rule: more recall, less precision).",
    )

    @model_validator(mode="after")
    def _banding(self) -> NearDupTextStep:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) must be <= num_perm ({self.num_perm})")
        return self


class Benchmark(_Strict):
    """An evaluation set: one of our built datasets (``shards``), or an image folder plus a questions jsonl
    (``{"image": relative path, "question": text}`` per line; either may be absent)."""

    name: str = Field(pattern=DOTTED_NAME_PATTERN, max_length=NAME_MAX)
    shards: PathStr | None = Field(None, description="A dataset directory built by this toolkit (sft or pair).")
    images: PathStr | None = Field(None, description="A folder of benchmark images (all image files, recursively).")
    questions: PathStr | None = Field(None, description="A jsonl of benchmark questions (and their image paths).")

    @model_validator(mode="after")
    def _one_layout(self) -> Benchmark:
        if self.shards and (self.images or self.questions):
            raise ValueError(f"benchmark {self.name!r}: give either shards or images/questions, not both")
        if not (self.shards or self.images or self.questions):
            raise ValueError(f"benchmark {self.name!r}: give shards, or images and/or questions")
        return self


class DecontaminationMatch(_Strict):
    """When a training sample matches a benchmark item: an image within ``max_distance`` bits of a benchmark
    image's perceptual hash, or a question sharing ``min_overlap`` of a benchmark question's word n-grams.
    Shared by the decontaminate step and the selection engine's contamination check."""

    match: Literal["image_or_question", "image", "question", "image_and_question"] = "image_or_question"
    hash: Literal["phash", "dhash"] = "phash"
    max_distance: int = Field(default=4, ge=0, le=32)
    ngram: int = Field(default=3, ge=1, le=16, description="Question overlap is measured on word n-grams.")
    min_overlap: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Share of a benchmark question's n-grams found in a training question."
    )
    min_question_words: int = Field(
        default=5, ge=1, description="Shorter questions ('What is this?') never match on text alone."
    )


class DecontaminateStep(StepBase, DecontaminationMatch):
    """Drop training samples that show a benchmark image (perceptual hash within ``max_distance``) or ask a
    benchmark question (word n-gram overlap), with per-benchmark reasons."""

    step: Literal["decontaminate"]
    benchmarks: Annotated[list[Benchmark], Field(min_length=1)]

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, benchmarks: list[Benchmark]) -> list[Benchmark]:
        _check_unique("benchmark", [b.name for b in benchmarks])
        return benchmarks


class MergeQaStep(GlobalStepBase):
    """QA pairs on the same image(s) become one multi-turn conversation (the Cauldron convention): samples of
    a source with identical images (sha256) merge into the first, in dataset order (global)."""

    step: Literal["merge_qa"]
    scope: Literal["source", "all"] = Field("source", description="Merge within each source, or across sources.")
    max_turns: int | None = Field(None, ge=1, description="Start a new conversation after this many turns.")


Step = Annotated[
    TextLengthStep
    | ImageDecodeStep
    | ImageSizeStep
    | PairToSftStep
    | PdfToTranscriptionStep
    | ExactImageDedupStep
    | QaFilterStep
    | ScoreFilterStep
    | NearDupImagesStep
    | NearDupTextStep
    | DecontaminateStep
    | MergeQaStep
    | DocmatixGenerateStep
    | JudgeStep
    | EmbedStep
    | ClipScoreStep
    | EmbeddingClassifierStep
    | KeepTopStep
    | SemanticDedupStep
    | EmbeddingDecontaminateStep,
    Field(discriminator="step"),
]
