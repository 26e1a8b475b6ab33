"""Recipes are data: YAML validated by pydantic models, never evaluated.

A build recipe declares ``sources`` -> ``steps`` -> ``output``. Errors name the field path, the bad value
and, for misspelled keys or names, the closest valid one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.errors import RecipeError
from curation.obelics.filters import ObelicsFilterConfig
from schemas import KINDS
from shards.atomic import content_sha256

RecordKind = Literal["pair", "interleaved", "pdf", "sft"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- sources -------------------------------------------------------------------------------------
Category = Literal[
    "captioning",
    "real_world_vqa",
    "ocr_document",
    "chart_figure",
    "table",
    "reasoning_maths",
    "screenshot_to_code",
    "text_only",
]
"""The SFT task categories of Idefics3's Table 3."""


class SourceBase(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Source name, used in accounting.")]
    category: Category | None = Field(
        None, description="Table 3 task category (the Cauldron reader fills it in for the 50 known configs)."
    )
    limit: int | None = Field(None, ge=0, description="Read at most this many input rows of this source.")
    partition_size: int = Field(10_000, ge=1, description="Input rows per partition (the unit of work/resume).")


RECORD_FIELDS = {"pair": ("key", "image", "caption"), "sft": ("key", "images", "turns")}


class _RowSource(SourceBase):
    @model_validator(mode="after")
    def _known_fields(self) -> _RowSource:
        valid = RECORD_FIELDS[self.record]
        for name in self.fields:
            if name not in valid:
                hint = difflib.get_close_matches(name, valid, n=1)
                raise ValueError(
                    f"fields: {name!r} is not a field of {self.record} records"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; valid: {', '.join(valid)}")
                )
        return self


class JsonlSource(_RowSource):
    reader: Literal["jsonl"]
    path: str = Field(description="A .jsonl file, a directory of them, or a glob.")
    record: Literal["pair", "sft"] = "pair"
    image_root: str | None = Field(None, description="Directory that relative image paths start from.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Record field -> input field, e.g. {caption: text, image: file_name, key: id}.",
    )
    keep_extra: bool = Field(True, description="Keep unmapped input fields in the record's meta.")


class ParquetSource(_RowSource):
    reader: Literal["parquet"]
    path: str = Field(description="A .parquet file, a directory of them, or a glob.")
    record: Literal["pair", "sft"] = "pair"
    image_root: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    keep_extra: bool = True


class ShardsSource(SourceBase):
    reader: Literal["shards"]
    path: str = Field(description="A dataset directory built by this toolkit.")


class PdfaSource(SourceBase):
    """PDFA (``pdfa-eng-wds``) or IDL (``idl-wds``) webdataset tars: ``KEY.pdf`` + ``KEY.json`` OCR lines."""

    reader: Literal["pdfa"]
    path: str = Field(description="A .tar file, a directory of them, or a glob.")
    variant: Literal["auto", "pdfa", "idl"] = Field("auto", description="JSON layout; auto-detected per sample.")
    max_pages: int | None = Field(None, ge=1, description="Drop documents with more pages (Docmatix used 4).")


PAPER_LAION_SIZES = [1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000, 100_000_000]


class LaionFilters(_Strict):
    """Metadata filters, each a drop reason; a filter whose column is absent from every file is skipped and
    reported. ``None`` turns a filter off."""

    min_similarity: float | None = Field(0.28, description="CLIP image-text similarity minimum (low_similarity).")
    nsfw_tags: list[str] = Field(["NSFW"], description="Drop rows with these NSFW tags (original layout).")
    max_punsafe: float | None = Field(0.5, description="Drop rows above this punsafe (joined layout).")
    max_pwatermark: float | None = Field(0.8, description="Drop rows above this pwatermark (watermark).")
    min_side: int | None = Field(64, ge=1, description="Declared WIDTH/HEIGHT; unknown sizes pass (too_small).")
    max_aspect_ratio: float | None = Field(3.0, ge=1.0)
    min_words: int | None = Field(2, ge=0, description="Caption words (caption_too_short).")
    max_words: int | None = Field(None, ge=1, description="Caption words (caption_too_long).")
    languages: list[str] | None = Field(None, description="Keep these LANGUAGE values (multi/nolang parts).")
    min_aesthetic: float | None = Field(None, description="AESTHETIC_SCORE / aesthetic minimum (low_aesthetic).")
    dedup_urls: bool = Field(True, description="Keep one row per URL (the first in hash order): duplicate_url.")


class Img2datasetOptions(_Strict):
    """Passed to img2dataset.download (called for real, one shard per partition)."""

    image_size: int = Field(512, ge=16)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    thread_count: int = Field(64, ge=1)
    timeout: int = Field(10, ge=1, description="Seconds per URL.")
    retries: int = Field(0, ge=0)
    samples_per_shard: int = Field(10_000, ge=1, description="Rows per download partition; divides every size.")
    disallowed_header_directives: list[str] | None = Field(
        None, description="X-Robots-Tag opt-outs honoured; null = img2dataset's default (noai, noimageai, ...)."
    )
    user_agent_token: str | None = None


class LaionSource(SourceBase):
    """LAION metadata parquet -> filtered, hash-ordered nested subsets -> img2dataset -> pair records."""

    reader: Literal["laion"]
    path: str = Field(description="LAION metadata: a .parquet file, a directory of them, or a glob.")
    sizes: list[int] = Field(PAPER_LAION_SIZES, description="Nested subset sizes (each a prefix of the next).")
    seed: int = Field(0, description="Seeds the hash order that picks the subsets.")
    filters: LaionFilters = Field(default_factory=LaionFilters)
    download: Img2datasetOptions = Field(default_factory=Img2datasetOptions)
    cache_dir: str | None = Field(
        None,
        description="Selections and downloads are cached here [default: $VLM_CURATION_CACHE or ~/.cache/vlm-curation].",
    )

    @model_validator(mode="after")
    def _sizes(self) -> LaionSource:
        if not self.sizes or sorted(set(self.sizes)) != self.sizes or min(self.sizes) < 1:
            raise ValueError("sizes must be a non-empty, strictly increasing list of positive counts")
        bad = [n for n in self.sizes if n % self.download.samples_per_shard]
        if bad:
            raise ValueError(
                f"download.samples_per_shard ({self.download.samples_per_shard}) must divide every size; it does not "
                f"divide {bad[:3]}: subsets end on shard boundaries"
            )
        return self


class ObelicsSource(SourceBase):
    """OBELICS parquet documents -> the original OBELICS filters -> image downloads (img2dataset) joined
    back by URL -> ``interleaved`` records. ``partition_size`` counts documents (whole row groups)."""

    reader: Literal["obelics"]
    path: str = Field(description="OBELICS parquet: a file, a directory of them, or a glob.")
    filters: ObelicsFilterConfig = Field(default_factory=ObelicsFilterConfig)
    max_url_occurrences: int | None = Field(10, ge=1, description="Remove image URLs seen more often corpus-wide.")
    common_words: str | None = Field(None, description="A larger common-words list (one word per line).")
    download: Img2datasetOptions = Field(default_factory=Img2datasetOptions)
    cache_dir: str | None = None


class CauldronSource(SourceBase):
    """The Cauldron / Docmatix layout (``images``: list of Image, ``texts``: list of {user, assistant, source})
    -> ``sft`` records. ``path`` is a local root in the HF layout (``<config>/train-*.parquet``, read directly
    by row groups) or anything ``datasets`` opens: a dataset saved with ``save_to_disk``, a local dataset
    directory, or a hub id (when online)."""

    reader: Literal["cauldron"]
    path: str = Field(description="Local root (<config>/*.parquet), a saved dataset, a dataset directory or hub id.")
    config: str | None = Field(None, description="Config (subset) name [default: the source name].")
    split: str = Field("train", description="Split to read (parquet files named <split>-*.parquet).")
    image_root: str | None = Field(None, description="Directory that relative image paths start from.")

    def config_name(self) -> str:
        return self.config or self.name


class LlavaSource(SourceBase):
    """LLaVA-665K / ShareGPT4V conversation JSON (a list) or JSONL (OpenHermes-style text-only sets)
    -> ``sft`` records. ``<image>`` placeholders are removed from the turns; records without an image are
    text-only samples; missing image files are drops."""

    reader: Literal["llava"]
    path: str = Field(description="A .json (list) or .jsonl file, a directory of them, or a glob.")
    image_root: str | None = Field(None, description="Directory that the records' image paths start from.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Input field names: key (id), image, conversations; or user + assistant (+ system) for "
        "single-turn instruction records, e.g. {user: query, assistant: response}.",
    )
    keep_extra: bool = Field(True, description="Keep unmapped input fields in the record's meta.")

    @model_validator(mode="after")
    def _known_fields(self) -> LlavaSource:
        valid = ("key", "image", "conversations", "user", "assistant", "system")
        for name in self.fields:
            if name not in valid:
                hint = difflib.get_close_matches(name, valid, n=1)
                raise ValueError(
                    f"fields: {name!r} is not a LLaVA field"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; valid: {', '.join(valid)}")
                )
        if ("user" in self.fields) != ("assistant" in self.fields):
            raise ValueError("fields: single-turn records need both 'user' and 'assistant'")
        return self


Source = Annotated[
    JsonlSource
    | ParquetSource
    | ShardsSource
    | PdfaSource
    | LaionSource
    | ObelicsSource
    | CauldronSource
    | LlavaSource,
    Field(discriminator="reader"),
]


# ---- steps ---------------------------------------------------------------------------------------
RESERVED_STEP_NAMES = ("read", "probe", "write", "unique_key")


def step_label(steps: list[Any], i: int) -> str:
    """Accounting label of ``steps[i]``: its name, or its type with a suffix when the type repeats."""
    step = steps[i]
    if step.name:
        return step.name
    same = [j for j, s in enumerate(steps) if s.step == step.step and not s.name]
    return step.step if len(same) == 1 else f"{step.step}#{same.index(i) + 1}"


class StepBase(_Strict):
    name: str | None = Field(None, description="Label in the accounting (defaults to the step type).")


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


def _check_unique(what: str, names: list[str]) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")


def _check_bounds(low_name: str, low: int, high_name: str, high: int | None) -> None:
    if high is not None and low > high:
        raise ValueError(f"{low_name} ({low}) is greater than {high_name} ({high}); nothing could pass")


class PairToSftStep(StepBase):
    converts: ClassVar[tuple[str, str]] = ("pair", "sft")
    step: Literal["pair_to_sft"]
    prompt: str = Field("Describe the image.", description="The user turn; the caption becomes the answer.")


class PdfToTranscriptionStep(StepBase):
    """A ``pdf`` record becomes an ``sft`` record: rendered page images, one turn per page (prompt -> the
    page's text in reading order), as in Idefics3's pretraining stage 2."""

    converts: ClassVar[tuple[str, str]] = ("pdf", "sft")
    step: Literal["pdf_to_transcription"]
    dpi: int = Field(150, ge=10, le=600)
    max_side: int = Field(2940, ge=64, description="Longest side of a rendered page, in pixels.")
    prompt: str = Field("Transcribe the text of this page.", description="The user turn of every page.")
    image_format: Literal["png", "jpg"] = "png"


class ExactImageDedupStep(StepBase):
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


class NearDupImagesStep(StepBase):
    """Perceptual near-duplicate images across the build (global): a sample whose images are all within
    ``max_distance`` bits of an earlier sample's images (same count, same order) is dropped."""

    step: Literal["near_dup_images"]
    hash: Literal["phash", "dhash"] = "phash"
    max_distance: int = Field(4, ge=0, le=32, description="Hamming distance between 64-bit hashes.")
    scope: Literal["all", "source"] = Field("all", description="all: across every source; source: within each.")


class NearDupTextStep(StepBase):
    """MinHash-LSH near-duplicate conversations (global, datasketch): estimated Jaccard similarity of word
    shingles >= ``threshold`` to an earlier sample drops the later one."""

    step: Literal["near_dup_text"]
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_words: int = Field(3, ge=1, le=16)
    text: Literal["qa", "questions", "answers"] = "qa"
    scope: Literal["all", "source"] = "all"
    same_images: bool = Field(
        False, description="Only count texts as duplicates when the samples also share their images (sha256)."
    )


class Benchmark(_Strict):
    """An evaluation set: one of our built datasets (``shards``), or an image folder plus a questions jsonl
    (``{"image": relative path, "question": text}`` per line; either may be absent)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    shards: str | None = Field(None, description="A dataset directory built by this toolkit (sft or pair).")
    images: str | None = Field(None, description="A folder of benchmark images (all image files, recursively).")
    questions: str | None = Field(None, description="A jsonl of benchmark questions (and their image paths).")

    @model_validator(mode="after")
    def _one_layout(self) -> Benchmark:
        if self.shards and (self.images or self.questions):
            raise ValueError(f"benchmark {self.name!r}: give either shards or images/questions, not both")
        if not (self.shards or self.images or self.questions):
            raise ValueError(f"benchmark {self.name!r}: give shards, or images and/or questions")
        return self


class DecontaminateStep(StepBase):
    """Drop training samples that show a benchmark image (perceptual hash within ``max_distance``) or ask a
    benchmark question (word n-gram overlap), with per-benchmark reasons."""

    step: Literal["decontaminate"]
    benchmarks: Annotated[list[Benchmark], Field(min_length=1)]
    match: Literal["image_or_question", "image", "question", "image_and_question"] = "image_or_question"
    hash: Literal["phash", "dhash"] = "phash"
    max_distance: int = Field(4, ge=0, le=32)
    ngram: int = Field(3, ge=1, le=16, description="Question overlap is measured on word n-grams.")
    min_overlap: float = Field(
        0.8, gt=0.0, le=1.0, description="Share of a benchmark question's n-grams found in a training question."
    )
    min_question_words: int = Field(
        5, ge=1, description="Shorter questions ('What is this?') never match on text alone."
    )

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, benchmarks: list[Benchmark]) -> list[Benchmark]:
        _check_unique("benchmark", [b.name for b in benchmarks])
        return benchmarks


class MergeQaStep(StepBase):
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
    | NearDupImagesStep
    | NearDupTextStep
    | DecontaminateStep
    | MergeQaStep,
    Field(discriminator="step"),
]
GLOBAL_STEPS = {"exact_image_dedup", "near_dup_images", "near_dup_text", "merge_qa"}
STEP_CLASSES: dict[str, type[StepBase]] = {
    get_args(cls.model_fields["step"].annotation)[0]: cls for cls in get_args(get_args(Step)[0])
}


# ---- output and the recipe ----------------------------------------------------------------------
class Output(_Strict):
    kind: RecordKind = Field(description="Record kind of every sample in the dataset.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]+$", description="Shard prefix (recipe name).")
    max_samples_per_shard: int = Field(10_000, ge=1)
    max_bytes_per_shard: int = Field(1 << 30, ge=1024)
    pair_image_format: Literal["jpg", "png", "webp"] = Field(
        "jpg", description="Pair images are stored as KEY.<format>; other formats are re-encoded."
    )
    rejects: bool = Field(False, description="Also write dropped samples (with reasons) to rejects/ shards.")
    sidecar_scores: list[str] = Field(
        default_factory=list, description="Numeric meta keys copied into the sidecar's `scores` column."
    )
    image_hashes: list[Literal["phash", "dhash"]] = Field(
        default_factory=list,
        description="Perceptual hashes stored per image in the sidecars (also computed when a step needs them).",
    )


class Tokenizer(_Strict):
    """Counts text and answer tokens in the sidecars (and so the mixture shares)."""

    type: Literal["regex", "tokenizer_json", "transformers"] = Field(
        "regex",
        description="regex: words and punctuation (fast default); tokenizer_json: a local tokenizer.json "
        "(tokenizers); transformers: a local tokenizer directory (AutoTokenizer, offline).",
    )
    path: str | None = Field(None, description="tokenizer.json file or tokenizer directory.")

    @model_validator(mode="after")
    def _path(self) -> Tokenizer:
        if self.type != "regex" and not self.path:
            raise ValueError(f"tokenizer.path is required for type {self.type!r}")
        if self.type == "regex" and self.path:
            raise ValueError("tokenizer.path is only used with type tokenizer_json or transformers")
        return self


class BuildRecipe(_Strict):
    kind: Literal["build"] = "build"
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    description: str = ""
    seed: int = 0
    sources: Annotated[list[Source], Field(min_length=1)]
    steps: list[Step] = Field(default_factory=list)
    output: Output
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    vars: dict[str, str | int | float] = Field(
        default_factory=dict, description="Values substituted for ${name} in the recipe's strings (--set vars.x=...)."
    )

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[Any]) -> list[Any]:
        _check_unique("source", [s.name for s in sources])
        return sources

    @model_validator(mode="after")
    def _unique_step_names(self) -> BuildRecipe:
        labels = [step_label(self.steps, i) for i in range(len(self.steps))]
        for i, label in enumerate(labels):
            if label in RESERVED_STEP_NAMES:
                raise ValueError(f"steps.{i}: the name {label!r} is reserved for a built-in step; choose another")
            if labels.index(label) != i:
                raise ValueError(f"steps.{i}: the name {label!r} is already used by steps.{labels.index(label)}")
        return self

    @model_validator(mode="after")
    def _global_steps_last(self) -> BuildRecipe:
        seen_global = None
        for i, step in enumerate(self.steps):
            if step.step in GLOBAL_STEPS:
                seen_global = i
            elif seen_global is not None:
                raise ValueError(
                    f"steps.{i} ({step.step}) comes after the global step steps.{seen_global} "
                    f"({self.steps[seen_global].step}); global steps run over the whole dataset and must come last"
                )
        return self

    def shard_prefix(self) -> str:
        return self.output.name or self.name


# ---- mixtures -------------------------------------------------------------------------------------
class DatasetRef(_Strict):
    """A dataset a mixture draws from: an existing build (``path``), a build recipe (a file or built-in
    name, with ``set`` overrides), or a build written inline (``build``: sources, steps, output, ...); the
    last two are built first into ``<out>/_datasets/<alias>``."""

    path: str | None = Field(None, description="A dataset directory built by this toolkit.")
    recipe: str | None = Field(None, description="A build recipe file or built-in name, built before mixing.")
    set: list[str] = Field(default_factory=list, description="--set overrides for that recipe (dotted.path=value).")
    build: BuildRecipe | None = Field(None, description="A build recipe inline (its name defaults to the alias).")

    @model_validator(mode="after")
    def _one(self) -> DatasetRef:
        if sum(x is not None for x in (self.path, self.recipe, self.build)) != 1:
            raise ValueError("give exactly one of path (a built dataset), recipe or build (to build first)")
        if self.set and self.recipe is None:
            raise ValueError("set: overrides apply to a recipe")
        return self


class Target(_Strict):
    """Exactly one: a share of the mixture's answer tokens (in percent, Table 3's `% mix`), a number of
    samples, or a number of epochs over the component's samples."""

    answer_share: float | None = Field(None, gt=0.0, le=100.0, description="Percent of the mixture's answer tokens.")
    samples: int | None = Field(None, ge=0)
    epochs: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("answer_share", "samples", "epochs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of answer_share, samples or epochs (got {', '.join(given) or 'none'})")
        return self

    def kind(self) -> str:
        return next(k for k in ("answer_share", "samples", "epochs") if getattr(self, k) is not None)


class Component(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9\-]+(_[A-Za-z0-9\-]+)*$", description="No double underscores.")
    dataset: str = Field(description="An alias under datasets.")
    sources: list[str] | None = Field(None, description="Sources of that dataset [default: [name]].")
    category: Category | None = Field(None, description="[default: the category the dataset records]")
    target: Target

    def source_names(self) -> list[str]:
        return self.sources or [self.name]


class MixtureOutput(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]+$", description="Shard prefix (recipe name).")
    max_samples_per_shard: int = Field(10_000, ge=1)
    max_bytes_per_shard: int = Field(1 << 30, ge=1024)
    bucket_bytes: int = Field(
        256 << 20, ge=1 << 16, description="The out-of-core shuffle holds one bucket of this size in memory."
    )


class MixtureRecipe(_Strict):
    """Components drawn from built datasets, each up- or down-sampled to its target (whole-sample repeats,
    seeded subsampling), shuffled globally (seeded, out of core) into mixture shards."""

    kind: Literal["mixture"]
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    description: str = ""
    seed: int = 0
    vars: dict[str, str | int | float] = Field(default_factory=dict)
    datasets: Annotated[dict[str, DatasetRef], Field(min_length=1)]
    components: Annotated[list[Component], Field(min_length=1)]
    total_answer_tokens: int | None = Field(
        None,
        ge=1,
        description="Size of a mixture whose targets are all shares [default: the answer tokens available].",
    )
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    output: MixtureOutput = Field(default_factory=MixtureOutput)

    @model_validator(mode="before")
    @classmethod
    def _inline_build_names(cls, data: Any) -> Any:
        datasets = data.get("datasets") if isinstance(data, dict) else None
        if isinstance(datasets, dict):
            named = {
                alias: {**ref, "build": {"name": alias, **ref["build"]}}
                if isinstance(ref, dict) and isinstance(ref.get("build"), dict)
                else ref
                for alias, ref in datasets.items()
            }
            data = {**data, "datasets": named}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MixtureRecipe:
        _check_unique("component", [c.name for c in self.components])
        for i, c in enumerate(self.components):
            if c.dataset not in self.datasets:
                hint = difflib.get_close_matches(c.dataset, list(self.datasets), n=1)
                raise ValueError(
                    f"components.{i}.dataset: no dataset {c.dataset!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; datasets: {', '.join(self.datasets)}")
                )
        shares = [c.target.answer_share for c in self.components if c.target.answer_share is not None]
        fixed = len(shares) < len(self.components)
        if not fixed and not 95.0 <= sum(shares) <= 105.0:
            raise ValueError(
                f"the answer_share targets add up to {sum(shares):.2f}%; they should add up to 100% (they are "
                "read as proportions of their sum, so printed tables that round a little, e.g. 100.77%, are fine)"
            )
        if fixed and shares and sum(shares) >= 100.0:
            raise ValueError("answer_share targets take 100%, leaving nothing for the samples/epochs components")
        if fixed and self.total_answer_tokens is not None:
            raise ValueError(
                "total_answer_tokens only applies when every target is an answer_share (otherwise the samples/epochs "
                "components fix the size)"
            )
        return self

    def shard_prefix(self) -> str:
        return self.output.name or self.name


RECIPE_KINDS: dict[str, type[BaseModel]] = {"build": BuildRecipe, "mixture": MixtureRecipe}


# ---- loading ---------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false (so `resize_mode: no` stays the string 'no')."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


PATH_KEYS = ("path", "image_root", "cache_dir", "common_words")
BENCHMARK_PATH_KEYS = ("shards", "images", "questions")
_VAR = re.compile(r"\$\{([^}]*)\}")


def _path_slots(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(container, key) of every filesystem path a recipe holds."""

    def dicts(items: Any) -> list[dict[str, Any]]:
        return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []

    for src in dicts(data.get("sources")):
        yield from ((src, k) for k in PATH_KEYS if k in src)
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict) and "path" in tokenizer:
        yield tokenizer, "path"
    for step in dicts(data.get("steps")):
        for bench in dicts(step.get("benchmarks")):
            yield from ((bench, k) for k in BENCHMARK_PATH_KEYS if k in bench)
    datasets = data.get("datasets")
    for entry in datasets.values() if isinstance(datasets, dict) else []:
        if isinstance(entry, dict) and "path" in entry:
            yield entry, "path"
        if isinstance(entry, dict) and isinstance(entry.get("build"), dict):
            yield from _path_slots(entry["build"])


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe name -> its description."""
    out = {}
    for entry in sorted(resources.files("recipes").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            data = load_yaml(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(data.get("description", "")).strip()
    return out


def _read_recipe_text(ref: str) -> tuple[str, Path | None]:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file() or (path.exists() and ref not in builtin_recipes()):
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {ref}")
        return path.read_text(), path.resolve().parent
    names = builtin_recipes()
    if ref not in names:
        hint = difflib.get_close_matches(ref, names, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else f"; built-in recipes: {', '.join(names)}"
        raise RecipeError(f"no recipe file or built-in recipe named {ref!r}{extra}")
    return (resources.files("recipes") / f"{ref}.yaml").read_text(), None


def _substitute_vars(data: dict[str, Any], base: Path | None, from_cwd: set[str]) -> None:
    """Replace ``${name}`` by ``vars.name`` in every string of the recipe (``$$`` is a literal ``$``), then
    make relative paths absolute: relative to the recipe file, or to the working directory for paths given
    by ``--set`` (directly, or through a variable set by ``--set vars.name=...``)."""
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        raise RecipeError(f"vars: expected a mapping of names to values, got {type(variables).__name__}")
    # Which variable each path starts with, before substitution (decides what a relative path is relative to).
    leading = {}
    for container, key in _path_slots(data):
        m = _VAR.match(container[key]) if isinstance(container[key], str) else None
        leading[id(container), key] = m.group(1) if m else None

    def sub(text: str, where: str) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in variables:
                hint = difflib.get_close_matches(name, [str(k) for k in variables], n=1)
                raise RecipeError(
                    f"{where}: unknown variable ${{{name}}}"
                    + (f"; did you mean ${{{hint[0]}}}?" if hint else "; define it under vars:")
                )
            return str(variables[name])

        return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")

    def walk(node: Any, where: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            here = f"{where}.{k}" if where else str(k)
            if isinstance(v, str):
                node[k] = sub(v, here)
            elif isinstance(v, dict | list) and here != "vars":
                walk(v, here)

    walk(data, "")
    for container, key in _path_slots(data):
        value = container[key]
        if not isinstance(value, str) or not value or Path(value).is_absolute() or "://" in value:
            continue
        var = leading.get((id(container), key))
        if var is not None and var in from_cwd:
            container[key] = str(Path(value).resolve())
        elif base is not None:
            container[key] = str((base / value).resolve())


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``dotted.path=value`` (value parsed as YAML). List items can be named by index or by their
    ``name`` field: ``sources.captions.path=...``."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected dotted.path=value")
    dotted, raw = assignment.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: cannot parse value {raw!r}: {' '.join(str(exc).split())}") from None
    parts = dotted.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                if (
                    parts[-1] in (*PATH_KEYS, *BENCHMARK_PATH_KEYS)
                    and parts[0] != "vars"
                    and isinstance(value, str)
                    and value
                    and not Path(value).is_absolute()
                    and "${" not in value
                ):
                    value = str(Path(value).resolve())  # --set paths are relative to the working directory
                node[part] = value
            else:
                if part not in node or node[part] is None:
                    if parts[depth + 1].lstrip("-").isdigit():
                        hint = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                        raise RecipeError(
                            f"--set {dotted}: the recipe has no {where!r} list to index into"
                            + (f"; did you mean {hint[0]!r}?" if hint else "")
                        )
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"--set {dotted}: {'.'.join(parts[:depth])} is a value, not a section")


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(items) <= idx < len(items):
            raise RecipeError(f"--set {where}: index {idx} out of range (the list has {len(items)} items)")
        return idx
    names = [it.get("name") if isinstance(it, dict) else None for it in items]
    if part in names:
        return names.index(part)
    hint = difflib.get_close_matches(part, [n for n in names if n], n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else f"; names here: {[n for n in names if n]}"
    raise RecipeError(f"--set {where}: no item named {part!r}{extra}")


def _format_error(exc: ValidationError, data: dict[str, Any], model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors()[:5]:
        loc = _yaml_loc(data, list(err["loc"]))
        path = ".".join(str(p) for p in loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_model = _model_at(model, data, loc[:-1])
            valid = sorted(parent_model.model_fields) if parent_model else []
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            msg = f"unknown key {loc[-1]!r}" + (
                f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(valid)}"
            )
        elif err["type"] == "union_tag_invalid":
            expected = err.get("ctx", {}).get("expected_tags", "")
            tags = [t.strip(" '") for t in str(expected).split(",")]
            hint = difflib.get_close_matches(str(err.get("ctx", {}).get("tag", "")), tags, n=1)
            msg = f"unknown type {err['ctx'].get('tag')!r}" + (
                f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {expected}"
            )
        elif err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            tags = [t.strip(" '") for t in str(expected).replace(" or ", ",").split(",")]
            hint = difflib.get_close_matches(str(err.get("input")), tags, n=1)
            msg = f"got {err.get('input')!r}, expected {expected}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        elif err["type"] == "union_tag_not_found":
            tag = err.get("ctx", {}).get("discriminator", "type").strip("'")
            msg = f"missing {tag!r}: say which {tag} this is"
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{path or '<recipe>'}: {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more")
    return "; ".join(lines)


def _yaml_loc(data: Any, loc: list[Any]) -> list[Any]:
    """Drop pydantic's union tags from an error location so it matches the YAML (sources.0.path)."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and part in (node.get("reader"), node.get("step")):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return out


def _model_at(model: type[BaseModel], data: Any, loc: list[Any]) -> type[BaseModel] | None:
    """The pydantic model that validates ``data`` at ``loc`` (a YAML path), for suggesting valid keys."""
    current: Any = model
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            current = _unwrap(current, node, want_item=True)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        current = _unwrap(current.model_fields[part].annotation, node, want_item=False)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, node: Any, want_item: bool) -> Any:
    """Strip Annotated/Optional; step into list items when ``want_item``; pick a union member by its tag."""
    from typing import get_args, get_origin

    for _ in range(10):
        origin, args = get_origin(annotation), get_args(annotation)
        if origin is list:
            if not want_item:
                return annotation
            annotation, want_item = args[0], False
            continue
        if not args:
            return annotation
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models and isinstance(node, dict):
            for m in models:
                for tag in ("reader", "step"):
                    if tag in m.model_fields and node.get(tag) in get_args(m.model_fields[tag].annotation):
                        return m
        if len(models) == 1:
            return models[0]
        annotation = args[0]
    return annotation


def load_recipe(ref: str, overrides: list[str] | None = None) -> Any:
    """Load a recipe by path or built-in name, apply ``--set`` overrides, validate."""
    text, base = _read_recipe_text(ref)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{ref}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{ref}: a recipe is a YAML mapping, got {type(data).__name__}")
    from_cwd = set()
    for assignment in overrides or []:
        apply_override(data, assignment)
        if assignment.startswith("vars.") and "=" in assignment:
            from_cwd.add(assignment.split("=", 1)[0].removeprefix("vars."))
    _substitute_vars(data, base, from_cwd)
    return validate_recipe(data, ref)


def validate_recipe(data: dict[str, Any], ref: str = "recipe") -> Any:
    kind = data.get("kind", "build")
    if kind not in RECIPE_KINDS:
        hint = difflib.get_close_matches(str(kind), RECIPE_KINDS, n=1)
        raise RecipeError(
            f"{ref}: kind: unknown recipe kind {kind!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(RECIPE_KINDS)}")
        )
    model = RECIPE_KINDS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{ref}: {_format_error(exc, data, model)}") from None


def recipe_hash(recipe: BaseModel) -> str:
    """Identity of what a build produces: the resolved recipe, canonical JSON, sha256."""
    return content_sha256(recipe.model_dump(mode="json"))


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of every recipe kind (``kind: build`` is the default)."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(BuildRecipe | MixtureRecipe).json_schema()
    schema["$id"] = "vlm-curation/recipe.schema.json"
    schema["title"] = "vlm-curation recipe (build or mixture)"
    return schema


assert set(KINDS) == {"pair", "interleaved", "pdf", "sft"}
