"""LLM engines for Docmatix generation: transformers (local), any OpenAI-compatible endpoint, vLLM offline."""

from curation.generation.engines.base import (
    ChatRequest,
    Engine,
    EngineConfigError,
    Generation,
    GenerationFailure,
    fingerprint_model_dir,
    make_engine,
)

__all__ = [
    "ChatRequest",
    "Engine",
    "EngineConfigError",
    "Generation",
    "GenerationFailure",
    "fingerprint_model_dir",
    "make_engine",
]
