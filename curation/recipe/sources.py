"""Sources: where a build reads its input (one model per reader)."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from curation.recipe.common import DOTTED_NAME_PATTERN, NAME_MAX, NOT_IDENTITY, WHEN_SET, Label, PathStr, _Strict
from curation.sources.obelics.filters import ObelicsFilterConfig
from schemas import KINDS

RecordKind = Literal["pair", "interleaved", "pdf", "sft"]


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
    name: Annotated[
        str,
        Field(pattern=DOTTED_NAME_PATTERN, max_length=NAME_MAX, description="Source name, used in accounting."),
    ]
    category: Category | None = Field(
        default=None, description="Table 3 task category (the Cauldron reader fills it in for the 50 known configs)."
    )
    limit: int | None = Field(default=None, ge=0, description="Read at most this many input rows of this source.")
    partition_size: int = Field(default=10_000, ge=1, description="Input rows per partition (the unit of work/resume).")
    license: str | None = Field(
        default=None, description="The source's licence as declared (shown in the dataset card)."
    )
    citation: str | None = Field(default=None, description="How to cite the source (shown in the dataset card).")


RECORD_FIELDS = {"pair": ("key", "image", "caption"), "sft": ("key", "images", "turns")}


def _check_field_names(fields: dict[str, str], valid: tuple[str, ...], what: str) -> None:
    for name in fields:
        if name not in valid:
            hint = difflib.get_close_matches(name, valid, n=1)
            raise ValueError(
                f"fields: {name!r} is not {what}"
                + (f"; did you mean {hint[0]!r}?" if hint else f"; valid: {', '.join(valid)}")
            )


class _RowSource(SourceBase):
    if TYPE_CHECKING:  # declared by each subclass (a field here would change the models)
        record: Literal["pair", "sft"]
        fields: dict[str, str]

    @model_validator(mode="after")
    def _known_fields(self) -> _RowSource:
        _check_field_names(self.fields, RECORD_FIELDS[self.record], f"a field of {self.record} records")
        return self


class JsonlSource(_RowSource):
    reader: Literal["jsonl"]
    path: PathStr = Field(description="A .jsonl file, a directory of them, or a glob.")
    record: Literal["pair", "sft"] = "pair"
    image_root: PathStr | None = Field(default=None, description="Directory that relative image paths start from.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Record field -> input field, e.g. {caption: text, image: file_name, key: id}.",
    )
    keep_extra: bool = Field(default=True, description="Keep unmapped input fields in the record's meta.")


class ParquetSource(_RowSource):
    reader: Literal["parquet"]
    path: PathStr = Field(description="A .parquet file, a directory of them, or a glob.")
    record: Literal["pair", "sft"] = "pair"
    image_root: PathStr | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    keep_extra: bool = True


class ShardsSource(SourceBase):
    reader: Literal["shards"]
    path: PathStr = Field(description="A dataset directory built by this toolkit.")


class Img2datasetSource(SourceBase):
    """An existing img2dataset download (LAION, COYO, DataComp subsets fetched by img2dataset) -> ``pair``
    records; every row of its per-shard parquet is a sample or a drop (failed downloads included). One partition
    per img2dataset shard (``partition_size`` is not used)."""

    reader: Literal["img2dataset"]
    path: PathStr = Field(description="img2dataset's output folder (NNNNN.parquet + NNNNN_stats.json per shard).")
    format: Literal["auto", "webdataset", "parquet", "files"] = Field(
        default="auto",
        description="img2dataset's output_format; auto: NNNNN.tar files -> webdataset, NNNNN/ folders -> files, "
        "else parquet (the images in a jpg/png/webp column).",
    )


class PdfaSource(SourceBase):
    """PDFA (``pdfa-eng-wds``) or IDL (``idl-wds``) webdataset tars: ``KEY.pdf`` + ``KEY.json`` OCR lines."""

    reader: Literal["pdfa"]
    path: PathStr = Field(description="A .tar file, a directory of them, or a glob.")
    variant: Literal["auto", "pdfa", "idl"] = Field(
        default="auto", description="JSON layout; auto-detected per sample."
    )
    max_pages: int | None = Field(default=None, ge=1, description="Drop documents with more pages (Docmatix used 4).")
    mode: Literal["improved", "original"] = Field(
        default="improved",
        description="improved: lines in reading order, pages counted from the PDF; original: as Docmatix was "
        "generated (the JSON's line order, pages counted from the JSON, every JSON page kept).",
        json_schema_extra=WHEN_SET,
    )


PAPER_LAION_SIZES = [1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000, 100_000_000]


class LaionFilters(_Strict):
    """Metadata filters, each a drop reason; a filter whose column is absent from every file is skipped and
    reported. ``None`` turns a filter off."""

    min_similarity: float | None = Field(
        default=0.28, description="CLIP image-text similarity minimum (low_similarity)."
    )
    nsfw_tags: list[str] = Field(default=["NSFW"], description="Drop rows with these NSFW tags (original layout).")
    max_punsafe: float | None = Field(default=0.5, description="Drop rows above this punsafe (joined layout).")
    max_pwatermark: float | None = Field(default=0.8, description="Drop rows above this pwatermark (watermark).")
    min_side: int | None = Field(default=64, ge=1, description="Declared WIDTH/HEIGHT; unknown sizes pass (too_small).")
    max_aspect_ratio: float | None = Field(default=3.0, ge=1.0)
    min_words: int | None = Field(default=2, ge=0, description="Caption words (caption_too_short).")
    max_words: int | None = Field(default=None, ge=1, description="Caption words (caption_too_long).")
    languages: list[str] | None = Field(default=None, description="Keep these LANGUAGE values (multi/nolang parts).")
    min_aesthetic: float | None = Field(
        default=None, description="AESTHETIC_SCORE / aesthetic minimum (low_aesthetic)."
    )
    dedup_urls: bool = Field(default=True, description="Keep one row per URL (the first in hash order): duplicate_url.")


class Img2datasetOptions(_Strict):
    """Passed to img2dataset.download (called for real, one shard per partition)."""

    image_size: int = Field(default=512, ge=16)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(default=95, ge=1, le=100)
    thread_count: int = Field(default=64, ge=1)
    timeout: int = Field(
        default=10, ge=1, description="Seconds per attempt of a URL: the whole response, redirects included."
    )
    retries: int = Field(default=0, ge=0)
    samples_per_shard: int = Field(default=10_000, ge=1, description="Rows per download partition; divides every size.")
    disallowed_header_directives: list[str] | None = Field(
        default=None, description="X-Robots-Tag opt-outs honoured; null = img2dataset's default (noai, noimageai, ...)."
    )
    user_agent_token: str | None = None


class LaionSource(SourceBase):
    """LAION metadata parquet -> filtered, hash-ordered nested subsets -> img2dataset -> pair records."""

    reader: Literal["laion"]
    path: PathStr = Field(description="LAION metadata: a .parquet file, a directory of them, or a glob.")
    sizes: list[int] = Field(default=PAPER_LAION_SIZES, description="Nested subset sizes (each a prefix of the next).")
    seed: int = Field(default=0, description="Seeds the hash order that picks the subsets.")
    filters: LaionFilters = Field(default_factory=LaionFilters)
    download: Img2datasetOptions = Field(default_factory=Img2datasetOptions)
    cache_dir: PathStr | None = Field(
        default=None,
        description="Selections and downloads are cached here [default: $VLM_CURATION_CACHE or ~/.cache/vlm-curation].",
        json_schema_extra=NOT_IDENTITY,  # found by content wherever it is
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
    path: PathStr = Field(description="OBELICS parquet: a file, a directory of them, or a glob.")
    filters: ObelicsFilterConfig = Field(default_factory=ObelicsFilterConfig)
    max_url_occurrences: int | None = Field(
        default=10, ge=1, description="Remove image URLs seen more often corpus-wide."
    )
    common_words: PathStr | None = Field(default=None, description="A larger common-words list (one word per line).")
    download: Img2datasetOptions = Field(default_factory=Img2datasetOptions)
    cache_dir: PathStr | None = Field(
        default=None,
        description="URL counts and downloads are cached here [default: $VLM_CURATION_CACHE or ~/.cache/vlm-curation].",
        json_schema_extra=NOT_IDENTITY,  # found by content wherever it is
    )


class CauldronSource(SourceBase):
    """The Cauldron / Docmatix layout (``images``: list of Image, ``texts``: list of {user, assistant, source})
    -> ``sft`` records. ``path`` is a local root in the HF layout (``<config>/train-*.parquet``, read directly
    by row groups) or anything ``datasets`` opens: a dataset saved with ``save_to_disk``, a local dataset
    directory, or a hub id (when online)."""

    reader: Literal["cauldron"]
    path: PathStr = Field(
        description="Local root (<config>/*.parquet), a saved dataset, a dataset directory or hub id."
    )
    config: str | None = Field(default=None, description="Config (subset) name [default: the source name].")
    split: str = Field(default="train", description="Split to read (parquet files named <split>-*.parquet).")
    image_root: PathStr | None = Field(default=None, description="Directory that relative image paths start from.")

    def config_name(self) -> str:
        return self.config or self.name


class FineVisionSource(SourceBase):
    """FineVision (``images``, ``texts`` of {user, assistant}, ``source``, per-turn ratings 1-5 on four axes and
    their minimum) -> ``sft`` records with the ratings in meta. ``path`` is a local root in the hub layout
    (``<subset>/train-*.parquet``, read by row groups) or anything ``datasets`` opens, as for ``cauldron``."""

    reader: Literal["finevision"]
    path: PathStr = Field(description="Local root (<subset>/train-*.parquet), a saved dataset or dataset directory.")
    config: Label | None = Field(default=None, description="Subset (a folder), e.g. sharegpt4v(coco) [default: name].")
    split: str = Field(default="train", description="Split to read (parquet files named <split>-*.parquet).")
    image_root: PathStr | None = Field(default=None, description="Directory that relative image paths start from.")
    null_ratings: Literal["drop", "unrated"] = Field(
        default="drop",
        description="A null per-turn rating: drop the row (invalid_rating), or keep the turn unrated (null in "
        "meta.ratings, as a judge's unparsed rating; the minimum is over the rated turns).",
    )

    def config_name(self) -> str:
        return self.config or self.name


class LlavaSource(SourceBase):
    """LLaVA-665K / ShareGPT4V conversation JSON (a list) or JSONL (OpenHermes-style text-only sets)
    -> ``sft`` records. ``<image>`` placeholders are removed from the turns; records without an image are
    text-only samples; missing image files are drops."""

    reader: Literal["llava"]
    path: PathStr = Field(description="A .json (list) or .jsonl file, a directory of them, or a glob.")
    image_root: PathStr | None = Field(default=None, description="Directory that the records' image paths start from.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Input field names: key (id), image, conversations; or user + assistant (+ system) for "
        "single-turn instruction records, e.g. {user: query, assistant: response}.",
    )
    keep_extra: bool = Field(default=True, description="Keep unmapped input fields in the record's meta.")

    @model_validator(mode="after")
    def _known_fields(self) -> LlavaSource:
        valid = ("key", "image", "conversations", "user", "assistant", "system")
        _check_field_names(self.fields, valid, "a LLaVA field")
        if ("user" in self.fields) != ("assistant" in self.fields):
            raise ValueError("fields: single-turn records need both 'user' and 'assistant'")
        return self


Source = Annotated[
    JsonlSource
    | ParquetSource
    | ShardsSource
    | Img2datasetSource
    | PdfaSource
    | LaionSource
    | ObelicsSource
    | CauldronSource
    | LlavaSource
    | FineVisionSource,
    Field(discriminator="reader"),
]


assert set(KINDS) == {"pair", "interleaved", "pdf", "sft"}
