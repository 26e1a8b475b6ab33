"""LLaVA-style conversations (LLaVA-665K, ShareGPT4V, OpenHermes, MetaMathQA, chat ``messages``) as turns:
the roles, the ``<image>`` tags and the image references, checked strictly."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_IMAGE_TAG = re.compile(r"\s*<image>\s*")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# ---- conversations ------------------------------------------------------------------------------------------
class Malformed(ValueError):
    """A record that cannot become an sft record; ``reason`` is the drop reason."""

    def __init__(self, detail: str, reason: str = "malformed_conversation") -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass
class Conversation:
    """What a LLaVA-style row holds, before its images are loaded."""

    image_refs: list[str]
    image_value: Any
    turns: list[dict[str, str]]
    system: str | None
    used: set[str] = field(default_factory=set)


def strip_image_tags(text: str) -> str:
    """Remove ``<image>`` placeholders with their adjoining newline(s): a tag between lines leaves one newline,
    one inside a line a space."""
    if "<image>" not in text:
        return text
    return _IMAGE_TAG.sub(lambda m: "\n" if "\n" in m.group() else " ", text).strip()


def _image_refs(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    refs = value if isinstance(value, list) else [value]
    if not all(isinstance(r, str) and r for r in refs):
        raise Malformed(
            f"{name!r} must be a path or a list of paths, got {json.dumps(value)[:200]}", "invalid_image_field"
        )
    return refs


def _role_and_text(item: Any, i: int) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise Malformed(f"turn {i} is a {type(item).__name__}, not an object")
    if "from" in item:
        raw_role, text = item["from"], item.get("value")
    elif "role" in item:
        raw_role, text = item["role"], item.get("content")
    else:
        raise Malformed(f"turn {i} has neither 'from' nor 'role'")
    role = _ROLES.get(raw_role.lower()) if isinstance(raw_role, str) else None
    if role is None:
        raise Malformed(f"turn {i} has an unknown role {raw_role!r}")
    if not isinstance(text, str):
        raise Malformed(f"turn {i} ({raw_role}) has a {type(text).__name__} value, not a string")
    return role, text


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def parse_turns(conversation: Any, name: str = "conversations") -> tuple[list[dict[str, str]], str | None]:
    """(user/assistant turns, leading system prompt) of a ShareGPT (``from``/``value``) or chat (``role``/
    ``content``) list, or of plain alternating strings (LIMA). Raises :class:`Malformed` naming what is wrong."""
    if not isinstance(conversation, list):
        raise Malformed(f"{name!r} is a {type(conversation).__name__}, not a list")
    if not conversation:
        raise Malformed(f"{name!r} is empty")
    if all(isinstance(item, str) for item in conversation):  # LIMA: alternating user/assistant strings
        roles = ("user", "assistant")
        items = [(roles[i % 2], item) for i, item in enumerate(conversation)]
    else:
        items = [_role_and_text(item, i) for i, item in enumerate(conversation)]
    system = None
    first = 0
    if items[0][0] == "system":
        system, first = items[0][1], 1
    if first == len(items):
        raise Malformed(f"{name!r} holds only a system turn")
    turns: list[dict[str, str]] = []
    for i in range(first, len(items), 2):
        role, text = items[i]
        if role != "user":
            if i == first:
                raise Malformed(f"the conversation starts with {_a(role)} turn (turn {i})")
            raise Malformed(f"turn {i} is {_a(role)} turn where a user turn belongs")
        if i + 1 == len(items):
            raise Malformed(f"the last user turn (turn {i}) has no answer")
        next_role, answer = items[i + 1]
        if next_role == "user":
            raise Malformed(f"two user turns in a row (turns {i} and {i + 1})")
        if next_role != "assistant":
            raise Malformed(f"turn {i + 1} is {_a(next_role)} turn where an assistant turn belongs")
        turns.append({"user": text, "assistant": answer})
    return turns, system


def _string_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise Malformed(f"field {name!r} is {what}")
    return value


def parse_conversation(row: dict[str, Any], fields: dict[str, str]) -> Conversation:
    """A LLaVA-style row as a :class:`Conversation`; raises :class:`Malformed`. ``fields`` maps key, image,
    conversations, user, assistant and system to the row's field names."""
    key_name = fields.get("key", "id")
    image_name = fields.get("image") or next((n for n in ("image", "images") if n in row), "image")
    used = {key_name, image_name}
    image_value = row.get(image_name)
    refs = _image_refs(image_value, image_name)
    system: str | None = None
    if "user" in fields:  # single-turn instruction records (MetaMathQA, Alpaca)
        used |= {fields["user"], fields["assistant"]}
        user, assistant = _string_field(row, fields["user"]), _string_field(row, fields["assistant"])
        turns = [{"user": user, "assistant": assistant}]
    else:
        conv_name = fields.get("conversations")
        if conv_name is None:
            conv_name = next((n for n in ("conversations", "messages") if n in row), None)
            if conv_name is None:
                raise Malformed("no 'conversations' or 'messages' list")
        elif conv_name not in row:
            raise Malformed(f"no {conv_name!r} field")
        used.add(conv_name)
        turns, system = parse_turns(row[conv_name], conv_name)
    if "system" in fields:
        used.add(fields["system"])
        column = row.get(fields["system"])
        if system is None and isinstance(column, str) and column:
            system = column
    if refs:
        for t in turns:
            t["user"] = strip_image_tags(t["user"])
    return Conversation(refs, image_value, turns, system, used)
