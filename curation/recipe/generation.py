"""The LLM steps: ``docmatix_generate`` (PDF text -> question/answer pairs) and ``judge`` (ratings of sft turns),
three engines for both."""

from __future__ import annotations

import difflib
import string
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from curation.generation.judge.presets import PRESETS
from curation.recipe.common import WHEN_SET, Label, PathStr, StepBase, _check_unique, _Strict


class TransformersEngineConfig(_Strict):
    """A local model directory loaded with transformers (``AutoModelForCausalLM``), batched ``generate``."""

    type: Literal["transformers"]
    model: str = Field(description="A local model directory (config, weights, tokenizer with a chat template).")
    device: str = Field(default="auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:N.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate() call.")
    trust_remote_code: bool = False


class OpenAIEngineConfig(_Strict):
    """Any OpenAI-compatible chat-completions endpoint (vllm serve, TGI, SGLang, hosted APIs)."""

    type: Literal["openai"]
    base_url: str = Field(description="e.g. http://localhost:8000/v1")
    model: str = Field(description="The model name the endpoint serves.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    concurrency: int = Field(default=16, ge=1, description="Requests in flight at once.")
    timeout: float = Field(
        default=300.0, gt=0, description="Seconds per request: a deadline on the whole request, retries included."
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        description="Retries per request (backoff, or Retry-After) on connection errors, 408/409/429 and 5xx.",
    )
    structured_output: bool = Field(default=False, description="Ask for JSON ({qa: [{question, answer}]}) by schema.")
    max_image_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest image sent as it is (judge); larger ones are re-encoded (JPEG, or PNG with alpha) to fit.",
        json_schema_extra=WHEN_SET,
    )
    max_image_side: int = Field(
        default=2048,
        ge=32,
        description="Longest image side sent, in pixels; larger images are scaled down.",
        json_schema_extra=WHEN_SET,
    )


class VllmEngineConfig(_Strict):
    """vLLM offline batches (``vllm.LLM.chat``); the ``[gpu]`` extra, GPU machines only."""

    type: Literal["vllm"]
    model: str = Field(description="A model directory or hub id vLLM can load.")
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=256)
    dtype: str = "auto"
    batch_size: int = Field(default=512, ge=1, description="Prompts per LLM.chat() call (vLLM schedules them itself).")
    structured_output: bool = Field(default=False, description="Constrain the output to the QA JSON schema.")
    trust_remote_code: bool = False
    limit_images_per_prompt: int | None = Field(
        default=None,
        ge=1,
        description="vLLM's limit_mm_per_prompt for images (vLLM's default when unset: 999).",
        json_schema_extra=WHEN_SET,
    )


EngineConfig = Annotated[TransformersEngineConfig | OpenAIEngineConfig | VllmEngineConfig, Field(discriminator="type")]


class SamplingConfig(_Strict):
    max_tokens: int = Field(default=2000, ge=1, description="Docmatix used 2000.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0


class ChunkingConfig(_Strict):
    """Pages are grouped into chunks of at most ``max_tokens`` and ``max_pages``, consecutive chunks sharing
    ``overlap_pages`` pages (Docmatix: 5,000 tokens, 5 pages, 1 page)."""

    max_tokens: int = Field(default=5000, ge=1)
    max_pages: int = Field(default=5, ge=1)
    overlap_pages: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> ChunkingConfig:
        if self.overlap_pages >= self.max_pages:
            raise ValueError(f"overlap_pages ({self.overlap_pages}) must be less than max_pages ({self.max_pages})")
        return self


class PromptVariant(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    role: str = Field(description="What this variant asks for; fills {role} in the system template.")
    examples: str = Field(default="", description="Example Q#/A# pairs; fills {examples} in the system template.")


class PromptsConfig(_Strict):
    """The system template (with {role} and {examples}), the user template (with {text}) and the variants;
    one variant is chosen per document, deterministically from its key."""

    system: str
    user: str
    variants: Annotated[list[PromptVariant], Field(min_length=1)]

    @model_validator(mode="after")
    def _placeholders(self) -> PromptsConfig:
        for name, text, needed in (("system", self.system, ("{role}",)), ("user", self.user, ("{text}",))):
            for placeholder in needed:
                if placeholder not in text:
                    raise ValueError(f"prompts.{name} must contain {placeholder}")
        _check_unique("prompt variant", [v.id for v in self.variants])
        return self


class GroundingConfig(_Strict):
    """Keep a pair only when its answer is found (fuzzily) in the source text."""

    min_score: float = Field(default=80.0, ge=0.0, le=100.0, description="rapidfuzz partial_ratio, 0-100.")
    min_answer_chars: int = Field(default=4, ge=1, description="Shorter answers (yes, 12) are not checked.")


class DocmatixGenerateStep(_Strict):
    """A ``pdf`` record becomes an ``sft`` record: its text in chunks -> one of the prompt variants -> an LLM ->
    Q#/A# (or JSON) parsing -> filters (counted by rule) -> rendered page images + the kept pairs as turns.
    Generations persist as they complete (resumable per document)."""

    name: Label | None = Field(default=None, description="Label in the accounting (defaults to the step type).")
    step: Literal["docmatix_generate"]
    engine: EngineConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    prompts: PromptsConfig
    filters: Literal["improved", "docmatix-v1"] = Field(
        default="improved",
        description="docmatix-v1: the published rules exactly; improved: keeps decimals, abbreviations.",
    )
    grounding: GroundingConfig | None = Field(default=None, description="Optional: answers must appear in the text.")
    batch_documents: int = Field(default=16, ge=1, description="Documents gathered per engine call.")
    dpi: int = Field(default=150, ge=10, le=600)
    max_side: int = Field(default=2940, ge=64, description="Longest side of a rendered page, in pixels.")
    image_format: Literal["png", "jpg"] = "png"
    cache_dir: PathStr | None = Field(
        default=None,
        description="Where generations persist [default: $VLM_CURATION_CACHE or ~/.cache/vlm-curation]/docmatix.",
    )


# ---- judge ---------------------------------------------------------------------------------------
JUDGE_FIELDS = frozenset({"question", "answer", "conversation", "min", "max"})
CRITERION_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


def _check_template(prompt: str) -> str:
    """A criterion prompt: plain ``{name}`` fields from JUDGE_FIELDS only, and some text of the exchange."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(prompt) if name is not None]
    except ValueError as exc:  # a lone '{' or '}'
        raise ValueError(f"{exc} (write a literal brace as '{{{{' or '}}}}')") from None
    for name, spec, conversion in fields:
        if name not in JUDGE_FIELDS or spec or conversion:
            raise ValueError(f"unknown field {{{name}}}; fields: {', '.join(sorted(JUDGE_FIELDS))}")
    if not {name for name, _, _ in fields} & {"question", "answer", "conversation"}:
        raise ValueError("must contain {question}, {answer} or {conversation}")
    return prompt


class JudgeCriterion(_Strict):
    """A criterion to rate. Unset fields of a preset's name come from the preset; another name needs a prompt."""

    name: str = Field(pattern=CRITERION_PATTERN, description="Names the ratings (meta.ratings.<name>, <name>_min).")
    prompt: str | None = Field(
        default=None, description="Template: {question} {answer} {conversation} {min} {max}; the preset's if unset."
    )
    images: bool | None = Field(default=None, description="Show the sample's images too [preset's, else false].")
    scale: tuple[int, int] | None = Field(default=None, description="Lowest and highest rating [preset's, else 1-5].")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt: str | None) -> str | None:
        return None if prompt is None else _check_template(prompt)

    @field_validator("scale")
    @classmethod
    def _scale(cls, scale: tuple[int, int] | None) -> tuple[int, int] | None:
        if scale is not None and not 0 <= scale[0] < scale[1] <= 100:
            raise ValueError(f"[low, high] with 0 <= low < high <= 100, got {list(scale)}")
        return scale

    @model_validator(mode="after")
    def _known(self) -> JudgeCriterion:
        if self.prompt is None and self.name not in PRESETS:
            raise ValueError(f"criterion {self.name!r}: give a prompt (it is no preset: {', '.join(PRESETS)})")
        return self

    def resolved(self) -> JudgeCriterion:
        """This criterion with every field set (from its preset where unset)."""
        preset = PRESETS.get(self.name)
        return self.model_copy(
            update={
                "prompt": self.prompt if self.prompt is not None else preset.prompt if preset else None,
                "images": self.images if self.images is not None else bool(preset and preset.images),
                "scale": self.scale or (preset.scale if preset else (1, 5)),
            }
        )


class JudgeSamplingConfig(_Strict):
    max_tokens: int = Field(default=256, ge=1, description="A short reason and the rating.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0


class JudgeStep(StepBase):
    """An LLM/VLM rates each turn (``per: turn``) or each sample (``per: sample``) of sft records on named
    criteria: ``meta.ratings.<criterion>`` (one rating per turn, None where no rating could be read) and the
    sidecar scores ``<criterion>_min`` and ``<criterion>_mean`` over the rated turns."""

    step: Literal["judge"]
    engine: EngineConfig
    criteria: Annotated[list[JudgeCriterion], Field(min_length=1)] = Field(
        description="Preset names (relevance, formatting, visual_dependency, image_correspondence) or criteria."
    )
    per: Literal["turn", "sample"] = Field(default="turn", description="One rating per turn, or one per sample.")
    system: str | None = Field(default=None, description="The system prompt [the built-in judge's].")
    json_mode: bool = Field(
        default=False, description="Ask for JSON {reason, rating}, by schema where the engine can (openai, vllm)."
    )
    sampling: JudgeSamplingConfig = Field(default_factory=JudgeSamplingConfig)
    max_images: int | None = Field(default=None, ge=1, description="Images shown per request: the first N [all].")
    on_unparsed: Literal["keep", "drop"] = Field(
        default="keep", description="A reply without a rating in range: keep the sample (rating None), or drop it."
    )
    on_failure: Literal["drop", "keep"] = Field(
        default="drop", description="A failed request (timeout, HTTP 5xx, ...): drop the sample, or keep it unrated."
    )
    batch_size: int = Field(default=16, ge=1, description="Samples gathered per engine call.")
    cache_dir: PathStr | None = Field(
        default=None,
        description="Where replies persist [default: $VLM_CURATION_CACHE or ~/.cache/vlm-curation]/judge.",
    )

    @field_validator("criteria", mode="before")
    @classmethod
    def _presets(cls, criteria: object) -> object:
        """A preset's name stands for ``{name: <preset>}``."""
        if not isinstance(criteria, list):
            return criteria
        for item in criteria:
            if isinstance(item, str) and item not in PRESETS:
                close = difflib.get_close_matches(item, list(PRESETS), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                presets = ", ".join(PRESETS)
                raise ValueError(f"unknown preset {item!r}; {hint}presets: {presets} (or give {{name, prompt}})")
        return [{"name": item} if isinstance(item, str) else item for item in criteria]

    @field_validator("criteria")
    @classmethod
    def _unique(cls, criteria: list[JudgeCriterion]) -> list[JudgeCriterion]:
        _check_unique("criterion", [c.name for c in criteria])
        return criteria

    def resolved_criteria(self) -> list[JudgeCriterion]:
        """Every criterion with all its fields set."""
        return [c.resolved() for c in self.criteria]

    def score_names(self, label: str) -> list[str]:
        return [f"{c.name}_{stat}" for c in self.criteria for stat in ("min", "mean")]

    def turn_rating_axes(self) -> list[str]:
        """The ``meta.ratings`` axes it writes per turn (kept per turn in the sidecars, for the audit)."""
        return [c.name for c in self.criteria]
