"""The model rules of the OBELICS filters, as a recipe names them: language identification (fastText) and
perplexity (KenLM, optionally SentencePiece-tokenized), at document level (as OBELICS ran them) and, off by
default as in the original, at paragraph level::

    filters:
      document:
        lang_id: {model: models/lid.176.bin, language: en, min_score: 0.8}
        perplexity: {model: models/en.arpa.bin, max: 1500, tokenizer: models/en.sp.model}

What is scored and how: :mod:`curation.text_models`. The model paths are recipe paths (relative to the recipe
file); the files are checked and hashed when the build is planned, and their sha256 is part of the build's
identity. Python users may still pass any callable as ``lang_id_scorer`` / ``perplexity_scorer`` (thresholds
``min_lang_id`` / ``max_perplexity``); a config holds a model or a hook for each rule, never both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from curation.text_models import (
    FastTextLangId,
    KenLMPerplexity,
    Normalization,
    file_signature,
    forget_changed,
    lang_id_model,
    perplexity_model,
)

LEVELS = ("paragraph", "document")
# Each model rule's path fields (the recipe's path slots: curation.recipe.loading._path_slots).
MODEL_PATH_FIELDS = {"lang_id": ("model",), "perplexity": ("model", "tokenizer")}
DEFAULT_MIN_LANG_ID = 0.8
DEFAULT_MAX_PERPLEXITY = 1_500.0
# curation.recipe.common.WHEN_SET (a field added after recipes were first hashed: out of a recipe's identity while
# at its default). Spelled out: importing curation.recipe here would be circular (it imports the filters).
WHEN_SET: JsonDict = {"identity": "when_set"}


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("an empty path; give the model file")
    return value


ModelPath = Annotated[str, AfterValidator(_not_blank)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LangIdFilter(_Strict):
    """Keep a text when a fastText language-id model's top label is ``language`` with probability >=
    ``min_score`` (OBELICS: ``lid.176.bin``, ``en``, 0.8)."""

    model: ModelPath = Field(description="fastText model file (.bin or .ftz), e.g. lid.176.bin.")
    language: str = Field(
        default="en", min_length=1, pattern=r"^[A-Za-z0-9_\-]+$", description="The label to keep (without __label__)."
    )
    min_score: float = Field(default=DEFAULT_MIN_LANG_ID, ge=0.0, le=1.0, description="Keep at >= this probability.")

    @field_validator("language", mode="before")
    @classmethod
    def _without_prefix(cls, value: Any) -> Any:
        return value.removeprefix("__label__") if isinstance(value, str) else value


class PerplexityFilter(_Strict):
    """Keep a text whose KenLM perplexity is <= ``max`` (OBELICS: the Wikipedia ``en.arpa.bin`` with its
    ``en.sp.model``, 1500)."""

    model: ModelPath = Field(description="KenLM model file: ARPA text or a build_binary output.")
    max: float = Field(default=DEFAULT_MAX_PERPLEXITY, gt=0.0, description="Keep at <= this perplexity.")
    tokenizer: ModelPath | None = Field(
        default=None, description="SentencePiece model the KenLM model was trained on (e.g. en.sp.model)."
    )
    normalization: Normalization = Field(
        default="obelics",
        description="obelics: as OBELICS (case and accents kept); ccnet: CCNet's (lowercased, accents removed).",
    )


def check_model_settings(cfg: Any) -> None:
    """One way per rule: a model config or a Python hook, and the hook's threshold left alone with a model."""
    for rule, hook, threshold, default in (
        ("lang_id", "lang_id_scorer", "min_lang_id", DEFAULT_MIN_LANG_ID),
        ("perplexity", "perplexity_scorer", "max_perplexity", DEFAULT_MAX_PERPLEXITY),
    ):
        if getattr(cfg, rule) is None:
            continue
        if getattr(cfg, hook) is not None:
            raise ValueError(f"give {rule} (a model file) or {hook} (a Python callable), not both")
        if getattr(cfg, threshold) != default:
            field = "min_score" if rule == "lang_id" else "max"
            raise ValueError(f"{threshold} is the threshold of {hook}; with {rule} set, use {rule}.{field}")


def lang_id_fails(cfg: Any, text: str) -> bool:
    """Whether ``text`` fails the language-id rule of a paragraph or document config (its model, else its hook)."""
    rule: LangIdFilter | None = cfg.lang_id
    if rule is not None:
        return lang_id_model(rule.model).score(text, rule.language) < rule.min_score
    return cfg.lang_id_scorer is not None and cfg.min_lang_id is not None and cfg.lang_id_scorer(text) < cfg.min_lang_id


def perplexity_fails(cfg: Any, text: str) -> bool:
    """Whether ``text`` fails the perplexity rule of a paragraph or document config (its model, else its hook)."""
    rule: PerplexityFilter | None = cfg.perplexity
    if rule is not None:
        return perplexity_model(rule.model, rule.tokenizer, rule.normalization).perplexity(text) > rule.max
    return (
        cfg.perplexity_scorer is not None
        and cfg.max_perplexity is not None
        and cfg.perplexity_scorer(text) > cfg.max_perplexity
    )


def model_rules(filters: Any) -> list[tuple[str, LangIdFilter | PerplexityFilter]]:
    """The model rules an ``ObelicsFilterConfig`` turns on: (``"document.lang_id"``, rule), ..."""
    found: list[tuple[str, LangIdFilter | PerplexityFilter]] = []
    for level in LEVELS:
        cfg = getattr(filters, level)
        for name in MODEL_PATH_FIELDS:
            rule = getattr(cfg, name, None)
            if rule is not None:
                found.append((f"{level}.{name}", rule))
    return found


_checked: dict[tuple[Any, ...], dict[str, str]] = {}


def check_text_models(filters: Any, where: str = "filters") -> dict[str, str]:
    """Load every model rule's files once (a missing package or a missing or invalid file fails here, on one
    line) and return their sha256 by field (``"document.lang_id.model"`` -> hex digest): what the build records
    of them. Each file version is checked and hashed once per process."""
    from curation.file_digest import file_sha256  # hashed once per file version

    out: dict[str, str] = {}
    for name, rule in model_rules(filters):
        here = f"{where}.{name}"
        paths = {"model": rule.model}
        if isinstance(rule, PerplexityFilter) and rule.tokenizer is not None:
            paths["tokenizer"] = rule.tokenizer
        key = (type(rule).__name__, getattr(rule, "normalization", None), file_signature(*paths.values()))
        if key not in _checked:
            if isinstance(rule, LangIdFilter):
                FastTextLangId(rule.model, here)
            else:
                KenLMPerplexity(rule.model, rule.tokenizer, rule.normalization, here, lazy=True)
            _checked[key] = {field: file_sha256(Path(path)) for field, path in paths.items()}
        out.update({f"{name}.{field}": digest for field, digest in _checked[key].items()})
    return out


__all__ = [
    "LangIdFilter",
    "PerplexityFilter",
    "check_model_settings",
    "check_text_models",
    "forget_changed",
    "lang_id_fails",
    "model_rules",
    "perplexity_fails",
]
