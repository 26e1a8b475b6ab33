"""The build recipe: sources -> steps -> output."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from curation.recipe.common import (
    NAME_MAX,
    NAME_PATTERN,
    NOT_IDENTITY,
    NOT_RECORDED,
    WHEN_SET,
    PathStr,
    StepBase,
    _check_unique,
    _Strict,
)
from curation.recipe.models import (
    MODEL_STEPS,
    ClipScoreStep,
    EmbeddingDecontaminateStep,
    EmbedStep,
    KeepTopStep,
    ModelConfig,
    ModelName,
    SemanticDedupStep,
)
from curation.recipe.sources import RecordKind, Source
from curation.recipe.steps import RESERVED_STEP_NAMES, GlobalStepBase, Step, step_label
from curation.recipe.storage import Storage

MAX_SOURCES = 1_000
"""Sources of one build: each is planned and accounted for separately, at least one partition each. A corpus of
many files is one source whose path is a directory or a glob."""


# ---- output and the recipe ----------------------------------------------------------------------
class Output(_Strict):
    kind: RecordKind = Field(description="Record kind of every sample in the dataset.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=NAME_MAX, description="Shard prefix (recipe name)."
    )
    max_samples_per_shard: int = Field(default=10_000, ge=1)
    max_bytes_per_shard: int = Field(default=1 << 30, ge=1024)
    pair_image_format: Literal["jpg", "png", "webp"] = Field(
        default="jpg", description="Pair images are stored as KEY.<format>; other formats are re-encoded."
    )
    rejects: bool = Field(default=False, description="Also write dropped samples (with reasons) to rejects/ shards.")
    sidecar_scores: list[str] = Field(
        default_factory=list, description="Numeric meta keys copied into the sidecar's `scores` column."
    )
    turn_ratings: list[str] = Field(
        default_factory=list,
        description="Per-turn rating axes (meta.ratings, e.g. FineVision's relevance) kept per turn in the "
        "sidecars, for the audit's turn-level what-if; a judge step's criteria are kept without being listed.",
        json_schema_extra=WHEN_SET,
    )
    image_hashes: list[Literal["phash", "dhash"]] = Field(
        default_factory=list,
        description="Perceptual hashes stored per image in the sidecars (also computed when a step needs them).",
    )


class Tokenizer(_Strict):
    """Counts text and answer tokens in the sidecars (and so the mixture shares)."""

    type: Literal["regex", "tokenizer_json", "transformers"] = Field(
        default="regex",
        description="regex: words and punctuation (fast default); tokenizer_json: a local tokenizer.json "
        "(tokenizers); transformers: a local tokenizer directory (AutoTokenizer, offline).",
    )
    path: PathStr | None = Field(default=None, description="tokenizer.json file or tokenizer directory.")

    @model_validator(mode="after")
    def _path(self) -> Tokenizer:
        if self.type != "regex" and not self.path:
            raise ValueError(f"tokenizer.path is required for type {self.type!r}")
        if self.type == "regex" and self.path:
            raise ValueError("tokenizer.path is only used with type tokenizer_json or transformers")
        return self


class BuildRecipe(_Strict):
    kind: Literal["build"] = "build"
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    description: str = ""
    seed: int = 0
    sources: Annotated[list[Source], Field(min_length=1)]
    steps: list[Step] = Field(default_factory=list)
    output: Output
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    models: dict[ModelName, ModelConfig] = Field(
        default_factory=dict,
        description="Models the steps run (embed, clip_score, ...), by name; local paths only.",
        json_schema_extra=WHEN_SET,
    )
    vars: dict[str, str | int | float] = Field(
        default_factory=dict,
        description="Values substituted for ${name} in the recipe's strings (--set vars.x=...).",
        json_schema_extra=NOT_IDENTITY,  # already substituted into the fields that use them
    )
    storage: Storage | None = Field(
        default=None,
        description="Object storage options for s3:// inputs and --out (endpoint, region, profile, retries); never "
        "credentials. Not part of the build's identity, nor recorded in dataset.json.",
        json_schema_extra=NOT_RECORDED,
    )
    inputs_root: PathStr | None = Field(
        default=None,
        description=(
            "The folder the build records input paths relative to (recipe, plan, sample origins), so moved inputs "
            "make the same build [default: the deepest folder holding every source's path and image_root]."
        ),
        json_schema_extra=WHEN_SET,
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _not_too_many(cls, sources: Any) -> Any:
        if isinstance(sources, list) and len(sources) > MAX_SOURCES:  # said before 10,000 sources are validated
            raise ValueError(
                f"{len(sources):,} sources; a build takes at most {MAX_SOURCES:,} (one source can read a directory "
                "or a glob of many files)"
            )
        return sources

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[Any]) -> list[Any]:
        _check_unique("source", [s.name for s in sources])
        return sources

    @model_validator(mode="after")
    def _models_named(self) -> BuildRecipe:
        """Each model step names a model of ``models``; steps over stored embeddings follow an embed step."""
        stored: dict[tuple[str, str], int] = {}
        for i, step in enumerate(self.steps):
            if not isinstance(step, MODEL_STEPS):
                continue
            model = step.model
            if model not in self.models:
                hint = _did_you_mean(
                    model, sorted(self.models), f"declare it under models: (have: {sorted(self.models)})"
                )
                raise ValueError(f"steps.{i}.model: no model named {model!r}; {hint}")
            if isinstance(step, EmbedStep):
                for modality in [m for m, on in (("image", step.image), ("text", step.text)) if on]:
                    if (model, modality) in stored:
                        raise ValueError(
                            f"steps.{i}: the {modality} embeddings of {model!r} are already stored by "
                            f"steps.{stored[(model, modality)]} (one {model}.{modality} per shard); drop one"
                        )
                    stored[(model, modality)] = i
            want = {SemanticDedupStep: lambda s: s.embedding, EmbeddingDecontaminateStep: lambda s: "image"}
            for cls, modality in want.items():
                if isinstance(step, cls) and (model, modality(step)) not in stored:
                    raise ValueError(
                        f"steps.{i} ({step.step}) reads the stored {modality(step)} embeddings of {model!r}: add an "
                        f"earlier step `embed` with model: {model} and {modality(step)}: true"
                    )
        return self

    @model_validator(mode="after")
    def _keep_top_fraction(self) -> BuildRecipe:
        """``clip_score.keep_top_fraction`` is a global step: it becomes a keep_top step after the record steps
        (so the recipe's dump, which has the keep_top step, builds the same thing)."""
        for i, step in enumerate(self.steps):
            if isinstance(step, ClipScoreStep) and step.keep_top_fraction is not None:
                label = step_label(self.steps, i)
                first_global = next(
                    (j for j, s in enumerate(self.steps) if isinstance(s, GlobalStepBase)), len(self.steps)
                )
                if len(f"{label}_top") > NAME_MAX:
                    raise ValueError(
                        f"steps.{i}: name the step in {NAME_MAX - 4} characters or fewer (its keep_top "
                        "step is named <name>_top)"
                    )
                top = KeepTopStep(
                    step="keep_top",
                    name=f"{label}_top",
                    score=step.score_names(label)[0],
                    fraction=step.keep_top_fraction,
                    lowest=False,
                )
                self.steps[i] = step.model_copy(update={"keep_top_fraction": None})
                self.steps.insert(first_global, top)
        return self

    @model_validator(mode="after")
    def _no_merge_of_rated_turns(self) -> BuildRecipe:
        """merge_qa appends other samples' turns without their per-turn ratings: with ratings (a judge, a
        FineVision source, output.turn_ratings) the lists would stop matching the turns."""
        merge = next((i for i, s in enumerate(self.steps) if getattr(s, "step", None) == "merge_qa"), None)
        if merge is None:
            return self
        rated = [f"steps.{i} (judge)" for i, s in enumerate(self.steps) if getattr(s, "step", None) == "judge"]
        rated += [f"sources.{s.name} (finevision)" for s in self.sources if getattr(s, "reader", None) == "finevision"]
        rated += ["output.turn_ratings"] if self.output.turn_ratings else []
        if rated:
            raise ValueError(
                f"steps.{merge} (merge_qa) would append turns without their per-turn ratings, which "
                f"{', '.join(rated)} keep(s); merge before rating, in another build, or drop merge_qa"
            )
        return self

    @model_validator(mode="after")
    def _scores_exist(self) -> BuildRecipe:
        """A keep_top step ranks a score the sidecars will hold: output.sidecar_scores, or an earlier step's."""
        known = set(self.output.sidecar_scores)
        for i, step in enumerate(self.steps):
            if isinstance(step, KeepTopStep) and step.score not in known:
                hint = _did_you_mean(step.score, sorted(known), f"known scores: {sorted(known) or 'none'}")
                raise ValueError(
                    f"steps.{i}.score: no earlier step writes {step.score!r} and output.sidecar_scores does not "
                    f"list it; {hint}"
                )
            if isinstance(step, StepBase):
                known |= set(step.score_names(step_label(self.steps, i)))
        return self

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
            if isinstance(step, GlobalStepBase):
                seen_global = i
            elif seen_global is not None:
                raise ValueError(
                    f"steps.{i} ({step.step}) comes after the global step steps.{seen_global} "
                    f"({self.steps[seen_global].step}); global steps run over the whole dataset and must come last"
                )
        return self

    def shard_prefix(self) -> str:
        return self.output.name or self.name


def _did_you_mean(name: str, names: list[str], otherwise: str) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean {close[0]!r}?" if close else otherwise
