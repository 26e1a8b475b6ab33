"""Models of a build (``models:``) and the steps that run them: embed, clip_score, embedding_classifier, and the
global keep_top, semantic_dedup and embedding_decontaminate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from curation.recipe.common import (
    DOTTED_NAME_PATTERN,
    NAME_MAX,
    NOT_IDENTITY,
    GlobalStepBase,
    PathStr,
    StepBase,
    _check_unique,
    _Strict,
)

DEVICE_PATTERN = r"^(auto|cpu|cuda)$"  # not cuda:N: GPU workers each see only their own GPU(s), as cuda
SCORE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"


class ModelConfig(_Strict):
    """A model loaded from a local path (never a hub): a transformers CLIP/SigLIP directory (with its
    processor), a TorchScript file (e.g. SSCD), or an open_clip checkpoint (``arch`` + weights file)."""

    path: PathStr = Field(description="Model directory (clip, siglip) or file (torchscript, open_clip weights).")
    kind: Literal["auto", "clip", "siglip", "torchscript", "open_clip"] = Field(
        "auto", description="auto: from the directory's config.json, or TorchScript for a file."
    )
    arch: str | None = Field(None, max_length=100, description="open_clip architecture, e.g. ViT-B-32.")
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="auto (a GPU when one is visible), cpu or cuda. Each GPU worker sees only its own GPU(s) "
        "(CUDA_VISIBLE_DEVICES); to pick GPUs, set CUDA_VISIBLE_DEVICES for the build.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on a GPU, float32 on CPU."
    )
    batch_size: int = Field(64, ge=1, le=8192, description="Samples per model call.")
    fast_jpeg_decode: bool = Field(
        False,
        description="Decode large JPEGs at a reduced scale (at least twice the model's input side): several times "
        "faster on large photos, vectors slightly different from the model's own preprocessing.",
    )
    gpus: float = Field(
        1.0,
        gt=0.0,
        le=8.0,
        description="GPUs a worker asks for when the model runs on a GPU (Ray; fractions share one).",
        json_schema_extra=NOT_IDENTITY,
    )
    image_size: int | None = Field(None, ge=8, le=4096, description="TorchScript: the square input side.")
    mean: tuple[float, float, float] = Field((0.485, 0.456, 0.406), description="TorchScript: input normalisation.")
    std: tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="TorchScript: input normalisation.")
    cache: bool = Field(
        True,
        description="Reuse embeddings computed before (by model fingerprint and content sha256).",
        json_schema_extra=NOT_IDENTITY,
    )
    cache_dir: PathStr | None = Field(
        None,
        description="Embedding cache (default: $VLM_CURATION_CACHE or ~/.cache/vlm-curation, /embeddings).",
        json_schema_extra=NOT_IDENTITY,
    )

    @model_validator(mode="after")
    def _kind_options(self) -> ModelConfig:
        if self.kind == "torchscript" and self.image_size is None:
            raise ValueError("a torchscript model needs image_size (the square side its input expects)")
        if self.kind == "open_clip" and not self.arch:
            raise ValueError("an open_clip model needs arch (e.g. ViT-B-32) besides the weights file in path")
        if self.arch and self.kind not in ("open_clip", "auto"):
            raise ValueError(f"arch is for open_clip models, not {self.kind}")
        return self


# the model's name is part of embedding file names (``<shard>.emb.<model>.image.npy``): the same rule as theirs
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$", max_length=64)]


def default_score(label: str) -> str:
    """A step's label as a score name (``clip_score#2`` -> ``clip_score_2``)."""
    return label.replace("#", "_")


class _ModelStep(StepBase):
    model: ModelName = Field(description="A model of the recipe's models: block.")


class EmbedStep(_ModelStep):
    """Image and/or text embeddings of every sample with a model, stored beside each shard
    (``<shard>.emb.<model>.image.npy`` / ``.text.npy``, float16)."""

    step: Literal["embed"]
    image: bool = Field(True, description="One row per image.")
    text: bool = Field(False, description="One row per sample: the caption (pair) or the first turn (sft).")
    text_field: Literal["answer", "question", "both"] = Field(
        "answer", description="sft: which text of the turn is embedded."
    )

    @model_validator(mode="after")
    def _something(self) -> EmbedStep:
        if not (self.image or self.text):
            raise ValueError("embed needs image: true or text: true (or both)")
        return self


class ClipScoreStep(_ModelStep):
    """Image-text cosine of a CLIP/SigLIP model, as the sidecar score ``score`` (default: the step's label);
    drops samples below ``min_score``. ``keep_top_fraction`` adds a global keep_top step right after the record
    steps: the best-scoring fraction of each source (DataComp's CLIP-score top 30%)."""

    step: Literal["clip_score"]
    score: str | None = Field(None, pattern=SCORE_PATTERN, max_length=NAME_MAX, description="Sidecar score name.")
    turns: Literal["first", "all"] = Field("first", description="sft: score the first turn, or the mean of all.")
    text_field: Literal["answer", "question", "both"] = Field("answer", description="sft: the text of a turn.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Drop samples scoring below (cosine).")
    keep_top_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="Keep this best-scoring fraction of each source (a global step)."
    )

    def score_names(self, label: str) -> list[str]:
        return [self.score or default_score(label)]


class ClassifierHead(_Strict):
    """A head over image embeddings, as a state dict file (.safetensors, or .pt/.pth/.bin weights only)."""

    path: PathStr
    layout: Literal["linear", "mlp"] = Field(
        "linear", description="mlp: the Linear layers in key order (LAION's aesthetic predictor layout)."
    )
    activation: Literal["none", "relu", "gelu"] = Field("none", description="Between the MLP's layers.")
    normalize_input: bool = Field(True, description="L2-normalise the embedding first.")
    output: Literal["raw", "sigmoid", "softmax"] = "raw"
    output_index: int = Field(0, ge=0, le=100_000, description="Which output unit is the score.")


class EmbeddingClassifierStep(_ModelStep):
    """A classifier head's score of each sample's images (e.g. aesthetics, NSFW) into the sidecar; drops
    samples outside [min, max]. Samples with several images take the ``combine`` of their images' scores."""

    step: Literal["embedding_classifier"]
    head: ClassifierHead
    score: str | None = Field(None, pattern=SCORE_PATTERN, max_length=NAME_MAX, description="Sidecar score name.")
    combine: Literal["mean", "min", "max", "first"] = "mean"
    min: float | None = Field(None, description="Drop samples scoring below.")
    max: float | None = Field(None, description="Drop samples scoring above.")

    def score_names(self, label: str) -> list[str]:
        return [self.score or default_score(label)]

    @model_validator(mode="after")
    def _bounds(self) -> EmbeddingClassifierStep:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class KeepTopStep(GlobalStepBase):
    """The best-scoring fraction of each source (or of the whole build) by a sidecar score (global); samples
    without the score are kept. Ties at the cut are broken by dataset order."""

    step: Literal["keep_top"]
    score: str = Field(pattern=SCORE_PATTERN, max_length=NAME_MAX)
    fraction: float = Field(ge=1e-6, le=1.0)
    per: Literal["source", "all"] = "source"
    lowest: bool = Field(False, description="Keep the lowest-scoring fraction instead (scores where less is better).")


class SemanticDedupStep(GlobalStepBase):
    """Near-duplicate samples by the cosine of stored embeddings (global): a sample within ``threshold`` of an
    earlier kept sample is dropped (keep-first in dataset order). Samples with several images compare the mean
    of their image embeddings; samples without images are never duplicates."""

    step: Literal["semantic_dedup"]
    model: ModelName = Field(description="Whose embeddings (an embed step of this model must come earlier).")
    embedding: Literal["image", "text"] = "image"
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Cosine at or above which samples are duplicates.")
    scope: Literal["all", "source"] = Field("all", description="all: across every source; source: within each.")
    method: Literal["auto", "exact", "ivf", "clusters"] = Field(
        "auto",
        description="exact: brute force; ivf: a faiss IVF index (fp16); clusters: SemDeDup-style k-means, exact "
        "within clusters; auto: exact below exact_below samples, ivf above.",
    )
    exact_below: int = Field(100_000, ge=1)
    nlist: int | None = Field(None, ge=1, le=1 << 20, description="ivf/clusters: lists or clusters (default: from N).")
    nprobe: int | None = Field(None, ge=1, le=1 << 20, description="ivf: lists searched per query.")
    threads: int = Field(
        2,
        ge=1,
        le=256,
        description="faiss threads. Part of the recipe, not taken from --workers: ivf and clusters train k-means, "
        "whose result may depend on the thread count, so the same recipe gives the same drops on any machine.",
    )


class EmbeddingBenchmark(_Strict):
    """Benchmark images: a dataset built by this toolkit (``shards``), an image folder, or parquet files with
    an image column (bytes, or Hugging Face's ``{bytes, path}`` struct)."""

    name: str = Field(pattern=DOTTED_NAME_PATTERN, max_length=NAME_MAX)
    shards: PathStr | None = None
    images: PathStr | None = Field(None, description="A folder of images (all image files, recursively).")
    parquet: PathStr | None = Field(None, description="A parquet file, or a folder of them (recursively).")
    image_column: str = Field("image", max_length=200, description="parquet: the image column.")

    @model_validator(mode="after")
    def _one_layout(self) -> EmbeddingBenchmark:
        given = [k for k in ("shards", "images", "parquet") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"benchmark {self.name!r}: give exactly one of shards, images, parquet (got {given})")
        return self


class EmbeddingDecontaminateStep(GlobalStepBase):
    """Drop training samples with an image within cosine ``threshold`` of a benchmark image (global), by the
    stored image embeddings of ``model``; the benchmark images are embedded once, with the same model."""

    step: Literal["embedding_decontaminate"]
    model: ModelName
    threshold: float = Field(0.95, gt=0.0, le=1.0)
    benchmarks: Annotated[list[EmbeddingBenchmark], Field(min_length=1)]
    max_images: int = Field(
        1_000_000, ge=1, le=100_000_000, description="At most this many images per benchmark (bounded input)."
    )

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, benchmarks: list[EmbeddingBenchmark]) -> list[EmbeddingBenchmark]:
        _check_unique("benchmark", [b.name for b in benchmarks])
        return benchmarks


MODEL_STEPS = (EmbedStep, ClipScoreStep, EmbeddingClassifierStep, SemanticDedupStep, EmbeddingDecontaminateStep)
"""Steps that name a model of the recipe."""
