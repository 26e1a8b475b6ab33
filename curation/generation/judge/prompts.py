"""A judge request: the system prompt, a criterion's template filled with a turn (or a sample's turns), and the
answer format the parser reads (``Rating: N`` on the last line, or a JSON object with ``json_mode``)."""

from __future__ import annotations

from typing import Any

from curation.recipe.generation import JudgeCriterion
from schemas import Turn

TEXT_FORMAT = (
    "Give a one-sentence reason first. Then, on the last line, write exactly `Rating: N`, where N is an integer "
    "from {min} to {max}."
)
JSON_FORMAT = (
    'Answer with a JSON object only: {{"reason": "<one sentence>", "rating": <an integer from {min} to {max}>}}.'
)


def rating_schema(low: int, high: int) -> dict[str, Any]:
    """The JSON schema of a reply in ``json_mode`` (structured output where the engine has it)."""
    return {
        "title": "rating",
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": 300},  # leaves the rating room within max_tokens (256)
            "rating": {"type": "integer", "minimum": low, "maximum": high},
        },
        "required": ["reason", "rating"],
        "additionalProperties": False,
    }


def exchange(turns: list[Turn]) -> dict[str, str]:
    """The template fields of one turn, or of a sample's turns (questions and answers joined by blank lines)."""
    return {
        "question": "\n\n".join(t.user for t in turns),
        "answer": "\n\n".join(t.assistant for t in turns),
        "conversation": "\n".join(f"User: {t.user}\nAssistant: {t.assistant}" for t in turns),
    }


def user_message(criterion: JudgeCriterion, fields: dict[str, str], json_mode: bool) -> str:
    """The criterion's prompt with the exchange and its scale filled in, then the answer format."""
    assert criterion.prompt is not None and criterion.scale is not None  # a resolved criterion
    low, high = criterion.scale
    prompt = criterion.prompt.format(**fields, min=low, max=high)  # values are inserted, never parsed
    answer_format = (JSON_FORMAT if json_mode else TEXT_FORMAT).format(min=low, max=high)
    return f"{prompt.rstrip()}\n\n{answer_format}"
