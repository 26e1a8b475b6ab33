"""The ``docmatix_generate`` step: PDF text -> question/answer pairs from an LLM (three engines, one step)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from curation.recipe.common import Label, PathStr, _check_unique, _Strict


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
