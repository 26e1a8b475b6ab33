"""What every LLM engine of Docmatix generation speaks: requests in, generations or failures out, in order.

A failing request is a ``GenerationFailure`` whose ``reason`` is a stable slug (it becomes a drop reason in
the accounting), never an exception; only configuration problems raise, at construction, as
``EngineConfigError``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

from curation.errors import CurationError
from curation.generation.docmatix.untrusted import clean_text
from curation.recipe.generation import EngineConfig, OpenAIEngineConfig, TransformersEngineConfig, VllmEngineConfig

FAILURE_REASONS = (
    "timeout",
    "rate_limited",
    "connection",
    "invalid_response",
    "context_too_long",
    "response_too_large",
    "image_unreadable",  # an image of the request could not be decoded or fitted to the engine's bounds
    "engine_error",
)  # plus "http_<status code>"


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), roles system/user/assistant
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    json_schema: dict | None = None  # structured output, when the engine is configured for it
    # encoded images (JPEG, PNG, ...) shown with the last user message, after its text; only engines whose
    # ``image_identity()`` is not None take them
    images: tuple[bytes, ...] = ()

    def message_dicts(self) -> list[dict[str, str]]:
        """The messages as text (what every engine sends for a request without images)."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def image_message_index(self) -> int:
        """The message the images go with: the last user message."""
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index][0] == "user":
                return index
        raise ValueError("a request with images needs a user message")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | whatever the engine reports
    repairs: tuple[str, ...] = ()  # what the pipeline repaired in the reply (curation.generation.docmatix.untrusted)


@dataclass(frozen=True)
class GenerationFailure:
    reason: str  # a slug from FAILURE_REASONS or "http_<code>"
    detail: str


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers" | "openai" | "vllm"

    def identity(self) -> dict:
        """JSON-able; what would change the outputs (model + fingerprint, endpoint, dtype, ...): cache keys."""
        ...

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation | GenerationFailure]:
        """One result per request, in order."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` by the model's tokenizer when the engine holds one locally, else None."""
        ...

    def image_identity(self) -> dict | None:
        """None when the engine takes no images; else JSON-able settings that change how images reach the model
        (size bounds, re-encoding): cache keys of requests with images add it to ``identity()``."""
        ...

    def close(self) -> None: ...


class EngineConfigError(CurationError, ValueError):
    """An engine cannot be built from its configuration; the message names the field, on one line."""


def one_line(exc: BaseException | str, limit: int = 500) -> str:
    """An exception as a short single line (failure details end up in reject logs)."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(clean_text(text)[0].split())  # a server's error message is untrusted text too
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CONTEXT_PHRASES = ("maximum context length", "maximum model length", "context length", "context window")


def looks_like_context_overflow(message: str) -> bool:
    """True for the servers' and vLLM's 'prompt too long' messages (e.g. vLLM: 'The decoder prompt (length N)
    is longer than the maximum model length of M'; OpenAI/vllm serve: "This model's maximum context length is")."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CONTEXT_PHRASES)


# Weight files larger than this are fingerprinted by their size and sampled blocks (start, middle, end)
# rather than read in full: hashing tens of GB at every engine start would cost minutes, and any retrained
# or re-quantized checkpoint differs in all three blocks.
_FULL_HASH_LIMIT = 64 * 1024 * 1024
_SAMPLE_BLOCK = 1024 * 1024


def _file_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(_SAMPLE_BLOCK), b""):
                digest.update(block)
        else:
            digest.update(f"sampled:{size}".encode())
            for offset in (0, size // 2, size - _SAMPLE_BLOCK):
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE_BLOCK))
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _fingerprint(directory: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _mtime in stamp:
        digest.update(f"{name}\0{size}\0{_file_digest(Path(directory) / name, size)}\n".encode())
    return digest.hexdigest()


def fingerprint_model_dir(directory: str | os.PathLike) -> str:
    """sha256 over a model directory's top-level files (config, weights, tokenizer, chat template; hidden files
    and ``*.md`` left out). Computed once per process for an unchanged directory."""
    root = Path(directory).resolve()
    stamp = tuple(
        (entry.name, (stat := entry.stat()).st_size, stat.st_mtime_ns)
        for entry in sorted(root.iterdir(), key=lambda p: p.name)
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix != ".md"
    )
    return _fingerprint(str(root), stamp)


def require_model_dir(model: str | os.PathLike, field: str = "engine.model") -> Path:
    """The model directory, resolved, or an EngineConfigError naming ``field``."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EngineConfigError(f"{field}: no such directory: {path}")
    if not (path / "config.json").is_file():
        raise EngineConfigError(f"{field}: {path} holds no config.json (not a transformers model directory)")
    return path.resolve()


def make_engine(cfg: EngineConfig) -> Engine:
    """The engine for one of the recipe's engine configs, by its config class; engine modules import here so that
    torch/transformers/openai/vllm load only when used."""
    if isinstance(cfg, TransformersEngineConfig):
        from curation.generation.engines.transformers_engine import TransformersEngine

        return TransformersEngine(cfg)
    if isinstance(cfg, OpenAIEngineConfig):
        from curation.generation.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg)
    if isinstance(cfg, VllmEngineConfig):
        from curation.generation.engines.vllm_engine import VllmEngine

        return VllmEngine(cfg)
    raise EngineConfigError(
        f"engine.type: no engine implements {type(cfg).__name__} (expected transformers, openai or vllm)"
    )
