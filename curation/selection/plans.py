"""Ablation plans: parse a plan's REPLACE blocks, map them onto a config with a sweep spec, expand into variants.

A plan (markdown, often wrapped in HTML divs) holds blocks like::

    ### Ablation A
    - **Ablated Part**: Rank of low-rank updates
    - **Action**: REPLACE
    - **Replacement**:
      - 8
      - 16
    - **Metrics**: accuracy

A sweep spec says where each ablated part lives in the unablated ``base`` config (a dotted key), what a
replacement text means (``values``, else the text parsed as a YAML scalar) and which evaluator key each plan
metric is. ``expand`` turns every (block, replacement) into a full config.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from curation.errors import CurationError, RecipeError
from curation.recipe import load_yaml, read_text_file
from curation.recipe.common import _Strict

SUPPORTED_ACTIONS = ("REPLACE",)


class PlanError(CurationError):
    """An ablation plan that cannot be parsed, or that a sweep spec cannot expand."""


@dataclass
class Ablation:
    """One block of a plan: ``name`` is its heading, ``replacements`` and ``metrics`` are as written."""

    name: str
    part: str
    action: str
    replacements: list[str]
    metrics: list[str]


@dataclass
class Variant:
    """One ablated configuration: ``config`` is the base with the part's key set to the replacement's value."""

    ablation: str
    part: str
    replacement: str
    config: dict[str, Any]


# ---- text helpers ------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    """Case- and whitespace-insensitive form of a name (parts, metrics, replacement texts)."""
    return " ".join(text.split()).casefold()


def _demojibake(line: str) -> str:
    """Undo UTF-8 read as cp1252 (``ðŸ“‹`` -> 📋); lines that are not such mojibake are returned unchanged."""
    if line.isascii():
        return line
    try:
        return line.encode("cp1252").decode("utf-8")
    except UnicodeError:
        return line


def _unmark(text: str) -> str:
    """Strip whitespace and one pair of surrounding markdown marks (``**x**``, ``__x__``, `` `x` ``)."""
    text = text.strip()
    for mark in ("**", "__", "`"):
        if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
            return text[len(mark) : -len(mark)].strip()
    return text


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NULLS = ("~", "null", "Null", "NULL")


def parse_value(text: str) -> Any:
    """A replacement text as a config value: a decimal number (``1e-4`` too), a YAML bool/null/quoted string,
    else the text itself (``1:1``, ``010``, ``2024-01-01`` and ``a: b`` stay text, not YAML's surprises)."""
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        return int(stripped) if re.fullmatch(r"[+-]?\d+", stripped) else float(stripped)
    try:
        value = load_yaml(stripped)
    except yaml.YAMLError:
        return stripped
    if value is None:
        return None if stripped in _NULLS else stripped
    return value if isinstance(value, str | bool) else stripped


def _canon(text: str) -> tuple[str, Any]:
    """Identity of a replacement text: numbers by value (``0.1`` == ``0.10``), the rest by normalized text."""
    value = parse_value(text)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", float(value))
    return ("text", _norm(text))


# ---- parsing -----------------------------------------------------------------------------------------
_HEADING = re.compile(r"^ {0,3}#{2,6}(?:\s+(?P<text>.*?))?(?:\s+#+)?\s*$")
_PLAN_HEADER = re.compile(
    r"<h\d[^>]*>[^<]*\bablation\s+plans?\s*</h\d>|^\s*#{1,6}\s+\W*ablation\s+plans?\W*$", re.IGNORECASE
)
_BOLD_FIELD = re.compile(r"^\s*(?:[-*+]\s+)?\*\*(?P<key>[^*:]+?)\s*(?::\s*\*\*|\*\*\s*:)\s*(?P<rest>.*?)\s*$")
_PLAIN_FIELD = re.compile(
    r"^\s*(?:[-*+]\s+)?(?P<key>ablated\s+part|action|replacements?|metrics?)\s*:\s*(?P<rest>.*?)\s*$", re.IGNORECASE
)
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?P<value>.*?)\s*$")
_FIELDS = {
    "ablated part": "part",
    "action": "action",
    "replacement": "replacements",
    "replacements": "replacements",
    "metric": "metrics",
    "metrics": "metrics",
}
_LABELS = {"part": "Ablated Part", "action": "Action", "replacements": "Replacement", "metrics": "Metrics"}


def _plan_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the plan section: after the last "Ablation Plan" header up to its closing
    ``</div>``; the whole text when there is no such header."""
    lines = [_demojibake(line) for line in text.lstrip("\ufeff").splitlines()]
    headers = [i for i, line in enumerate(lines) if _PLAN_HEADER.search(line)]
    start = headers[-1] + 1 if headers else 0
    out = []
    for i in range(start, len(lines)):
        if headers and lines[i].strip().lower().startswith("</div"):
            break
        out.append((i + 1, lines[i]))
    return out


def _split(text: str) -> list[str]:
    return [v for v in (_unmark(p) for p in re.split(r"[,;]", text)) if v]


def _parse_block(name: str, lines: list[str], where: str) -> Ablation:
    fields: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in lines:
        if not line.strip():
            continue
        match = _BOLD_FIELD.match(line) or _PLAIN_FIELD.match(line)
        if match:
            current = _FIELDS.get(_norm(match["key"]))
            if current in fields:
                raise PlanError(f"{where}: field {_LABELS[current]!r} is given twice")
            if current is not None:
                fields[current] = (match["rest"], [])
            continue
        item = _ITEM.match(line)
        if item and current is not None and item["value"]:
            fields[current][1].append(item["value"])
    missing = [_LABELS[f] for f in _LABELS if f not in fields]
    if missing:
        raise PlanError(f"{where}: missing {', '.join(repr(m) for m in missing)}")

    def single(field: str) -> str:
        inline, items = fields[field]
        values = [_unmark(v) for v in ([inline] if inline else []) + items if _unmark(v)]
        if len(values) != 1:
            got = "nothing" if not values else f"{len(values)} values"
            raise PlanError(f"{where}: {_LABELS[field]!r} needs one value, got {got}")
        return values[0]

    part, action = single("part"), single("action").upper()
    if action not in SUPPORTED_ACTIONS:
        raise PlanError(f"{where}: action {action!r} is not supported; only {', '.join(SUPPORTED_ACTIONS)} is")
    inline, items = fields["replacements"]
    replacements = _split(inline) + [v for v in (_unmark(i) for i in items) if v]
    if not replacements:
        raise PlanError(f"{where}: 'Replacement' lists no values")
    repeated = sorted({r for r in replacements if replacements.count(r) > 1})
    if repeated:
        raise PlanError(f"{where}: replacement {repeated[0]!r} is listed twice")
    inline, items = fields["metrics"]
    metrics = list(dict.fromkeys(_split(inline) + [m for i in items for m in _split(i)]))
    if not metrics:
        raise PlanError(f"{where}: 'Metrics' lists no metrics")
    return Ablation(name=name, part=part, action=action, replacements=replacements, metrics=metrics)


def parse_plan(text: str, source: str = "plan") -> list[Ablation]:
    """The REPLACE blocks of a plan, in order. Errors name the block, its line and the problem."""
    blocks: list[tuple[str, int, list[str]]] = []
    for lineno, line in _plan_lines(text):
        heading = _HEADING.match(line)
        if heading:
            name = _unmark(heading["text"] or "")
            if not name:
                raise PlanError(f"{source}: line {lineno}: a block heading with no name")
            blocks.append((name, lineno, []))
        elif blocks:
            blocks[-1][2].append(line)
    if not blocks:
        raise PlanError(
            f"{source}: no ablation blocks found (expected '### <name>' headings, each followed by "
            "'- **Ablated Part**:', '- **Action**:', '- **Replacement**:' and '- **Metrics**:' lines)"
        )
    ablations, seen = [], {}
    for name, lineno, lines in blocks:
        where = f"{source}: ablation {name!r} (line {lineno})"
        if name in seen:
            raise PlanError(f"{where}: another block (line {seen[name]}) has the same name")
        seen[name] = lineno
        ablations.append(_parse_block(name, lines, where))
    return ablations


def load_plan(path: str | Path) -> list[Ablation]:
    """``parse_plan`` of a plan file."""
    return parse_plan(read_text_file(path, "plan", PlanError), source=str(path))


# ---- the sweep spec ----------------------------------------------------------------------------------
def _json_problem(value: Any, path: str) -> str | None:
    """Why ``value`` (at ``path``) is not plain JSON, or None."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, not a JSON number"
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _json_problem(v, f"{path}.{i}"))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: key {key!r} is not a string (quote it)"
            if problem := _json_problem(item, f"{path}.{key}"):
                return problem
        return None
    return f"{path} is a {type(value).__name__}, not a JSON value (quote it)"


def _slot(config: dict[str, Any], key: str) -> tuple[Any, str | int]:
    """(container, key) that the dotted ``key`` names in ``config``; LookupError saying where it breaks."""
    node: Any = config
    walked: list[str] = []
    slot: tuple[Any, str | int] = (config, key)
    for part in key.split("."):
        here = ".".join(walked) or "the base"
        if isinstance(node, dict):
            if part not in node:
                hint = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                raise LookupError(
                    f"key {key!r} is not in the base: {here} has no {part!r}"
                    + (f"; did you mean {'.'.join([*walked, hint[0]])!r}?" if hint else f" (it has: {', '.join(node)})")
                )
            slot = (node, part)
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise LookupError(
                    f"key {key!r} is not in the base: {here} is a list of {len(node)}; {part!r} is no index"
                )
            slot = (node, int(part))
        else:
            raise LookupError(f"key {key!r} is not in the base: {here} is a {type(node).__name__}, not a mapping")
        walked.append(part)
        container: Any = slot[0]  # a dict (str key) or a list (int index)
        node = container[slot[1]]
    return slot


class PartMapping(_Strict):
    """Where an ablated part lives in the base config and, optionally, what each replacement text means."""

    key: str = Field(description="Dotted path into the base, e.g. trainer.peft.r (list items by index: a.0.b).")
    values: dict[str, Any] | None = Field(
        default=None,
        description="Replacement text -> config value (matched ignoring case and spacing; numbers by value). "
        "A replacement not listed is parsed as a YAML scalar: 0.05 -> 0.05, LoRA -> 'LoRA'.",
    )

    @field_validator("key")
    @classmethod
    def _dotted(cls, key: str) -> str:
        if not key or any(not p.strip() or p != p.strip() for p in key.split(".")):
            raise ValueError(f"{key!r} is not a dotted path like trainer.peft.r")
        return key

    @field_validator("values", mode="before")
    @classmethod
    def _texts(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        out: dict[str, Any] = {}
        seen: dict[tuple[str, Any], str] = {}
        for key, value in values.items():
            if key is None or not isinstance(key, str | int | float):
                raise ValueError(f"key {key!r} is not a replacement text")
            text = str(key)
            if (problem := _json_problem(value, text)) is not None:
                raise ValueError(problem)
            if (canon := _canon(text)) in seen:
                raise ValueError(f"{seen[canon]!r} and {text!r} name the same replacement")
            seen[canon] = text
            out[text] = value
        return out


def _unique(what: str, names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not name.strip():
            raise ValueError(f"an empty {what} name")
        if _norm(name) in seen:
            raise ValueError(f"{seen[_norm(name)]!r} and {name!r} are the same {what} (case and spacing ignored)")
        seen[_norm(name)] = name


class SweepSpec(_Strict):
    """How a plan's ablations apply to a config: ``base`` is the unablated config, ``parts`` map each ablated
    part (as the plan writes it; case and spacing ignored) to a key in it, ``metrics`` map the plan's metric
    names to the evaluator's metric keys, each variant runs once per seed."""

    name: str = Field(min_length=1)
    base: dict[str, Any] = Field(description="The unablated config, any JSON-able mapping.")
    parts: dict[str, PartMapping] = Field(min_length=1)
    metrics: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("base")
    @classmethod
    def _json(cls, base: dict[str, Any]) -> dict[str, Any]:
        if (problem := _json_problem(base, "base")) is not None:
            raise ValueError(problem.removeprefix("base.").removeprefix("base: "))
        return base

    @field_validator("parts")
    @classmethod
    def _in_base(cls, parts: dict[str, PartMapping], info: ValidationInfo) -> dict[str, PartMapping]:
        _unique("part", list(parts))
        base = info.data.get("base")
        if isinstance(base, dict):
            for name, mapping in parts.items():
                try:
                    _slot(base, mapping.key)
                except LookupError as exc:
                    raise ValueError(f"{name!r}: {exc}") from None
        return parts

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, metrics: dict[str, str]) -> dict[str, str]:
        _unique("metric", list(metrics))
        return metrics

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice")
        return seeds


def _format_validation(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            fields = list((PartMapping if len(loc) == 3 and loc[0] == "parts" else SweepSpec).model_fields)
            hint = difflib.get_close_matches(loc[-1], fields, n=1)
            msg = f"unknown key {loc[-1]!r}; " + (
                f"did you mean {hint[0]!r}?" if hint else f"valid: {', '.join(fields)}"
            )
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{'.'.join(loc) or '<spec>'}: {msg}")
    if len(exc.errors()) > 5:
        lines.append(f"... and {len(exc.errors()) - 5} more")
    return "; ".join(lines)


def validate_spec(data: Any, source: str = "spec") -> SweepSpec:
    """A ``SweepSpec`` from a mapping; RecipeError naming the field path otherwise."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a sweep spec is a YAML mapping, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {_format_validation(exc)}") from None


def load_spec(path: str | Path) -> SweepSpec:
    """A sweep spec from a YAML file."""
    text = read_text_file(path, "sweep spec")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return validate_spec(data, source=str(path))


# ---- expansion ---------------------------------------------------------------------------------------
def unablated(spec: SweepSpec) -> dict[str, Any]:
    """The reference config (a copy of the base), run once beside the variants."""
    return copy.deepcopy(spec.base)


def _mapping(spec: SweepSpec, ablation: Ablation) -> PartMapping:
    by_norm = {_norm(name): mapping for name, mapping in spec.parts.items()}
    if _norm(ablation.part) in by_norm:
        return by_norm[_norm(ablation.part)]
    names = {_norm(name): name for name in spec.parts}
    hint = difflib.get_close_matches(_norm(ablation.part), list(names), n=1)
    raise PlanError(
        f"ablation {ablation.name!r}: ablated part {ablation.part!r} is not mapped in the spec; "
        f"mapped parts: {', '.join(repr(n) for n in spec.parts)}"
        + (f"; did you mean {names[hint[0]]!r}?" if hint else "")
    )


def _value(mapping: PartMapping, text: str) -> Any:
    wanted = _canon(text)
    for key, value in (mapping.values or {}).items():
        if _canon(key) == wanted:
            return copy.deepcopy(value)
    return parse_value(text)


def expand(spec: SweepSpec, ablations: list[Ablation]) -> list[Variant]:
    """One variant per (ablation, replacement), in plan order; PlanError for an unmapped part or a bad key."""
    variants = []
    for ablation in ablations:
        if ablation.action.upper() not in SUPPORTED_ACTIONS:
            raise PlanError(f"ablation {ablation.name!r}: action {ablation.action!r} is not supported; only REPLACE is")
        mapping = _mapping(spec, ablation)
        for text in ablation.replacements:
            config = unablated(spec)
            try:
                container, key = _slot(config, mapping.key)
            except LookupError as exc:
                raise PlanError(f"ablation {ablation.name!r}: part {ablation.part!r}: {exc}") from None
            container[key] = _value(mapping, text)
            variants.append(Variant(ablation=ablation.name, part=ablation.part, replacement=text, config=config))
    return variants


def _plan_metrics(ablations: list[Ablation]) -> list[str]:
    return list(dict.fromkeys(m for a in ablations for m in a.metrics))


def metric_keys(spec: SweepSpec, ablations: list[Ablation]) -> dict[str, str]:
    """Plan metric name -> the evaluator's metric key, for the plan's metrics the spec maps."""
    by_norm = {_norm(name): key for name, key in spec.metrics.items()}
    return {m: by_norm[_norm(m)] for m in _plan_metrics(ablations) if _norm(m) in by_norm}


def unmapped_metrics(spec: SweepSpec, ablations: list[Ablation]) -> list[str]:
    """The plan's metrics that the spec does not map (reported, not an error), in plan order."""
    mapped = metric_keys(spec, ablations)
    return [m for m in _plan_metrics(ablations) if m not in mapped]
