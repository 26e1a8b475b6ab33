"""Loading recipes: YAML, variables, ``--set`` overrides, validation with readable errors, hashing, schema."""

from __future__ import annotations

import copy
import difflib
import os
import re
import stat
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from curation.errors import CurationError, RecipeError
from curation.recipe.build import BuildRecipe
from curation.recipe.common import NOT_IDENTITY, NOT_RECORDED, WHEN_SET
from curation.recipe.mixture import MixtureRecipe
from curation.recipe.selection import RECIPE_KINDS, SelectionRecipe
from curation.sources.obelics.models import (  # model files: sources.<name>.filters.<level>.<rule>.<key>
    LEVELS,
    MODEL_PATH_FIELDS,
)
from shards.atomic import content_sha256

# ---- loading ---------------------------------------------------------------------------------------
MAX_RECIPE_BYTES = 4 << 20  # recipes are hand-written YAML: kilobytes; 10,000 sources are ~1 MB
MAX_YAML_NODES = 1_000_000  # values after aliases are expanded: a "billion laughs" stops here, not in pydantic
MAX_YAML_DEPTH = 64  # recipes nest ~8 deep; what walks a recipe next (substitution, pydantic) recurses


class YamlLimitError(yaml.YAMLError):
    """A YAML document over MAX_YAML_NODES (aliases counted once per use) or MAX_YAML_DEPTH, or an alias
    inside the node it names."""


if TYPE_CHECKING:  # the C loader has the pure-Python one's API: type-check against that
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: 8x faster


class _Loader(_SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false (so `resize_mode: no` stays the string 'no'), and bounded:
    the composed document is measured as if its aliases were copies, and refused past the limits before
    anything is built from it."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expanded(node)
        return node


_SCALAR = (1, 1)  # a scalar's expanded size and height


def _check_expanded(root: yaml.Node) -> None:
    """YamlLimitError when ``root``, its aliases expanded, has more than MAX_YAML_NODES nodes or is deeper than
    MAX_YAML_DEPTH, or holds an alias to a node around it. One pass over the distinct nodes: each node's
    expanded size and height are computed once (post-order), however often aliases repeat it."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_nodes: set[int] = set()  # on the current path: an alias to one of these is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            sub = [_SCALAR if isinstance(c, yaml.ScalarNode) else measured[id(c)] for c in _children(node)]
            size, height = 1 + sum(n for n, _ in sub), 1 + max((h for _, h in sub), default=0)
            if size > MAX_YAML_NODES:
                raise YamlLimitError(
                    f"{_at(node.start_mark)}: expands to more than {MAX_YAML_NODES:,} values (each use of an "
                    "alias counts its whole node)"
                )
            if height > MAX_YAML_DEPTH:
                raise YamlLimitError(f"{_at(node.start_mark)}: nested deeper than {MAX_YAML_DEPTH} levels")
            measured[id(node)] = size, height
        elif id(node) in open_nodes:
            raise YamlLimitError(f"{_at(node.start_mark)}: an alias to a node that holds it (a cycle)")
        elif id(node) not in measured:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if not isinstance(c, yaml.ScalarNode))


def _at(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """One YAML document; ``yaml.YAMLError`` (:class:`YamlLimitError` past the limits) when it cannot be."""
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:  # the pure-Python composer (no libyaml) recurses per level
        raise YamlLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels") from None


def read_text_file(path: str | Path, what: str = "recipe", error: type[CurationError] = RecipeError) -> str:
    """A recipe-sized UTF-8 text file (a recipe, a sweep spec, a plan), or ``error`` saying
    "PATH: cannot read the WHAT (why)". Never opens a FIFO or a device: it could block, or never end."""

    def fail(why: str) -> CurationError:
        return error(f"{path}: cannot read the {what} ({why})")

    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise fail("a directory")
        if not stat.S_ISREG(mode):
            raise fail("not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    except ValueError as exc:  # a NUL byte in the name
        raise fail(str(exc)) from None
    if len(data) > MAX_RECIPE_BYTES:
        raise fail(f"larger than {MAX_RECIPE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None


def _exists(path: Path) -> bool:
    """Whether anything is at ``path``; False for a name the system refuses (too long, ...)."""
    try:
        path.stat()
    except (OSError, ValueError):
        return False
    return True


PATH_KEYS = ("path", "image_root", "cache_dir", "common_words")
BENCHMARK_PATH_KEYS = ("shards", "images", "questions", "parquet")
_VAR = re.compile(r"\$\{([^}]*)\}")


def _path_slots(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(container, key) of every filesystem path a recipe holds."""

    def dicts(items: Any) -> list[dict[str, Any]]:
        return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []

    if "inputs_root" in data:
        yield data, "inputs_root"
    for src in dicts(data.get("sources")):
        yield from ((src, k) for k in PATH_KEYS if k in src)
        yield from _filter_model_slots(src)
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict) and "path" in tokenizer:
        yield tokenizer, "path"
    models = data.get("models")
    for model in models.values() if isinstance(models, dict) else []:
        if isinstance(model, dict):
            yield from ((model, k) for k in ("path", "cache_dir") if k in model)
    for step in dicts(data.get("steps")):
        for bench in dicts(step.get("benchmarks")):
            yield from ((bench, k) for k in BENCHMARK_PATH_KEYS if k in bench)
        head = step.get("head")
        if isinstance(head, dict) and "path" in head:
            yield head, "path"
    trainer = data.get("trainer")
    if isinstance(trainer, dict) and trainer.get("type") == "reference" and "model" in trainer:
        yield trainer, "model"
    evaluator = data.get("evaluator")
    if isinstance(evaluator, dict):
        for bench in dicts(evaluator.get("benchmarks")):
            if "shards" in bench:
                yield bench, "shards"
    datasets = data.get("datasets")
    for entry in datasets.values() if isinstance(datasets, dict) else []:
        if isinstance(entry, dict) and "path" in entry:
            yield entry, "path"
        if isinstance(entry, dict) and isinstance(entry.get("build"), dict):
            yield from _path_slots(entry["build"])


def _filter_model_slots(src: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(container, key) of a source's filter model files: ``filters.document.lang_id.model``, ..."""
    filters = src.get("filters")
    if not isinstance(filters, dict):
        return
    for level in LEVELS:
        cfg = filters.get(level)
        if not isinstance(cfg, dict):
            continue
        for rule, keys in MODEL_PATH_FIELDS.items():
            model = cfg.get(rule)
            if isinstance(model, dict):
                yield from ((model, k) for k in keys if k in model)


def _is_filter_model_path(parts: list[str]) -> bool:
    """Whether ``--set`` names a filter model file: ``sources.<name>.filters.<level>.<rule>.<key>``."""
    return (
        len(parts) == 6
        and parts[0] == "sources"
        and parts[2] == "filters"
        and parts[3] in LEVELS
        and parts[5] in MODEL_PATH_FIELDS.get(parts[4], ())
    )


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe name -> its description."""
    out = {}
    for entry in sorted(resources.files("recipes").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            data = load_yaml(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(data.get("description", "")).strip()
    return out


def _read_recipe_text(ref: str) -> tuple[str, Path | None]:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or (_exists(path) and (path.is_file() or ref not in builtin_recipes())):
        if not _exists(path):
            raise RecipeError(f"recipe file not found: {ref}")
        return read_text_file(path), path.resolve().parent
    names = builtin_recipes()
    if ref not in names:
        hint = difflib.get_close_matches(ref, names, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else f"; built-in recipes: {', '.join(names)}"
        raise RecipeError(f"no recipe file or built-in recipe named {ref[:200]!r}{extra}")
    return (resources.files("recipes") / f"{ref}.yaml").read_text(), None


def _substitute_vars(data: dict[str, Any], base: Path | None, from_cwd: set[str]) -> None:
    """Replace ``${name}`` by ``vars.name`` in every string of the recipe (``$$`` is a literal ``$``), then
    make relative paths absolute: relative to the recipe file, or to the working directory for paths given
    by ``--set`` (directly, or through a variable set by ``--set vars.name=...``)."""
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        raise RecipeError(f"vars: expected a mapping of names to values, got {type(variables).__name__}")
    # Which variable each path starts with, before substitution (decides what a relative path is relative to).
    leading = {}
    for container, key in _path_slots(data):
        m = _VAR.match(container[key]) if isinstance(container[key], str) else None
        leading[id(container), key] = m.group(1) if m else None

    def sub(text: str, where: str) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in variables:
                hint = difflib.get_close_matches(name, [str(k) for k in variables], n=1)
                raise RecipeError(
                    f"{where}: unknown variable ${{{name}}}"
                    + (f"; did you mean ${{{hint[0]}}}?" if hint else "; define it under vars:")
                )
            return str(variables[name])

        return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")

    def walk(node: Any, where: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            here = f"{where}.{k}" if where else str(k)
            if isinstance(v, str):
                node[k] = sub(v, here)
            elif isinstance(v, dict | list) and here != "vars":
                walk(v, here)

    walk(data, "")
    for container, key in _path_slots(data):
        value = container[key]
        if not isinstance(value, str) or not value.strip() or Path(value).is_absolute() or "://" in value:
            continue
        var = leading.get((id(container), key))
        if var is not None and var in from_cwd:
            container[key] = str(Path(value).resolve())
        elif base is not None:
            container[key] = str((base / value).resolve())


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``dotted.path=value`` (value parsed as YAML). List items can be named by index or by their
    ``name`` field: ``sources.captions.path=...``."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected dotted.path=value")
    dotted, raw = assignment.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: cannot parse value {raw!r}: {' '.join(str(exc).split())}") from None
    parts = dotted.strip().split(".")
    if len(parts) > MAX_YAML_DEPTH:  # each part is a level of the recipe: the same bound as its YAML
        raise RecipeError(f"--set {dotted[:100]}...: deeper than {MAX_YAML_DEPTH} levels")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                if (
                    (
                        parts[-1] in (*PATH_KEYS, *BENCHMARK_PATH_KEYS)
                        or parts == ["inputs_root"]
                        or _is_filter_model_path(parts)
                    )
                    and parts[0] != "vars"
                    and isinstance(value, str)
                    and value.strip()  # a blank path stays blank: validation names it
                    and not Path(value).is_absolute()
                    and "${" not in value
                    and "://" not in value  # a URL (s3://...) is never a path relative to the working directory
                ):
                    value = str(Path(value).resolve())  # --set paths are relative to the working directory
                node[part] = value
            else:
                if part not in node or node[part] is None:
                    if parts[depth + 1].lstrip("-").isdigit():
                        hint = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                        raise RecipeError(
                            f"--set {dotted}: the recipe has no {where!r} list to index into"
                            + (f"; did you mean {hint[0]!r}?" if hint else "")
                        )
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(f"--set {dotted}: {'.'.join(parts[:depth])} is a value, not a section")


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(items) <= idx < len(items):
            raise RecipeError(f"--set {where}: index {idx} out of range (the list has {len(items)} items)")
        return idx
    names = [it.get("name") if isinstance(it, dict) else None for it in items]
    if part in names:
        return names.index(part)
    hint = difflib.get_close_matches(part, [n for n in names if n], n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else f"; names here: {[n for n in names if n]}"
    raise RecipeError(f"--set {where}: no item named {part!r}{extra}")


def _format_error(exc: ValidationError, data: dict[str, Any], model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors()[:5]:
        loc = _yaml_loc(data, list(err["loc"]))
        path = ".".join(str(p) for p in loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent_model = _model_at(model, data, loc[:-1])
            valid = sorted(parent_model.model_fields) if parent_model else []
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            msg = f"unknown key {loc[-1]!r}" + (
                f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(valid)}"
            )
        elif err["type"] == "union_tag_invalid":
            expected = err.get("ctx", {}).get("expected_tags", "")
            tags = [t.strip(" '") for t in str(expected).split(",")]
            hint = difflib.get_close_matches(str(err.get("ctx", {}).get("tag", "")), tags, n=1)
            msg = f"unknown type {err.get('ctx', {}).get('tag')!r}" + (
                f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {expected}"
            )
        elif err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            tags = [t.strip(" '") for t in str(expected).replace(" or ", ",").split(",")]
            hint = difflib.get_close_matches(str(err.get("input")), tags, n=1)
            msg = f"got {_short(err.get('input'))}, expected {expected}" + (
                f"; did you mean {hint[0]!r}?" if hint else ""
            )
        elif err["type"] == "union_tag_not_found":
            tag = err.get("ctx", {}).get("discriminator", "type").strip("'")
            msg = f"missing {tag!r}: say which {tag} this is"
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {_short(err['input'])})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{path or '<recipe>'}: {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more")
    return "; ".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line quotes a bad value, not a whole one."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def _yaml_loc(data: Any, loc: list[Any]) -> list[Any]:
    """Drop pydantic's union tags from an error location so it matches the YAML (sources.0.path)."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and part in (node.get("reader"), node.get("step")):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return out


def _model_at(model: type[BaseModel], data: Any, loc: list[Any]) -> type[BaseModel] | None:
    """The pydantic model that validates ``data`` at ``loc`` (a YAML path), for suggesting valid keys."""
    current: Any = model
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            current = _unwrap(current, node, want_item=True)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        current = _unwrap(current.model_fields[part].annotation, node, want_item=False)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, node: Any, want_item: bool) -> Any:
    """Strip Annotated/Optional; step into list items when ``want_item``; pick a union member by its tag."""
    from typing import get_args, get_origin

    for _ in range(10):
        origin, args = get_origin(annotation), get_args(annotation)
        if origin is list:
            if not want_item:
                return annotation
            annotation, want_item = args[0], False
            continue
        if not args:
            return annotation
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models and isinstance(node, dict):
            for m in models:
                for tag in ("reader", "step"):
                    if tag in m.model_fields and node.get(tag) in get_args(m.model_fields[tag].annotation):
                        return m
        if len(models) == 1:
            return models[0]
        annotation = args[0]
    return annotation


def load_recipe(ref: str, overrides: list[str] | None = None) -> Any:
    """Load a recipe by path or built-in name, apply ``--set`` overrides, validate."""
    text, base = _read_recipe_text(ref)
    try:
        data = load_yaml(text)
    except YamlLimitError as exc:
        raise RecipeError(f"{ref}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{ref}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{ref}: a recipe is a YAML mapping, got {type(data).__name__}")
    from_cwd = set()
    for assignment in overrides or []:
        apply_override(data, assignment)
        if assignment.startswith("vars.") and "=" in assignment:
            from_cwd.add(assignment.split("=", 1)[0].removeprefix("vars."))
    _substitute_vars(data, base, from_cwd)
    return validate_recipe(data, ref, substitute=False)


def validate_recipe(data: dict[str, Any], ref: str = "recipe", substitute: bool = True) -> Any:
    """A recipe from a mapping (e.g. built in Python); ``${name}`` variables are substituted first (relative
    paths stay relative to the working directory) unless the caller already did (``load_recipe``)."""
    if substitute and isinstance(data, dict):
        data = copy.deepcopy(data)
        _substitute_vars(data, None, set())
    kind = data.get("kind", "build")
    if not isinstance(kind, str) or kind not in RECIPE_KINDS:
        hint = difflib.get_close_matches(str(kind), RECIPE_KINDS, n=1)
        raise RecipeError(
            f"{ref}: kind: unknown recipe kind {kind!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(RECIPE_KINDS)}")
        )
    model = RECIPE_KINDS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{ref}: {_format_error(exc, data, model)}") from None


def identity_doc(recipe: BaseModel) -> dict[str, Any]:
    """The resolved recipe as JSON, without the settings marked :data:`NOT_IDENTITY` (how much memory a step
    may use changes how a build runs, never what it produces: changing it must not restart a build), nor the
    :data:`WHEN_SET` fields at their default."""
    doc = recipe.model_dump(mode="json")
    _strip_settings(recipe, doc, identity=True)
    return doc


def recipe_doc(recipe: BaseModel) -> dict[str, Any]:
    """The recipe as ``dataset.json`` records it: everything, but the :data:`WHEN_SET` fields at their default."""
    doc = recipe.model_dump(mode="json")
    _strip_settings(recipe, doc, identity=False)
    return doc


def _strip_settings(value: Any, doc: Any, identity: bool) -> None:
    if isinstance(value, BaseModel) and isinstance(doc, dict):
        for name, info in type(value).model_fields.items():
            key = info.serialization_alias or info.alias or name
            unset = info.json_schema_extra == WHEN_SET and getattr(value, name) == info.get_default(
                call_default_factory=True
            )
            if unset or (identity and info.json_schema_extra == NOT_IDENTITY) or info.json_schema_extra == NOT_RECORDED:
                doc.pop(key, None)
            elif key in doc:
                _strip_settings(getattr(value, name), doc[key], identity)
    elif isinstance(value, list | tuple) and isinstance(doc, list):
        for item, item_doc in zip(value, doc, strict=False):
            _strip_settings(item, item_doc, identity)
    elif isinstance(value, dict) and isinstance(doc, dict):
        for key, item in value.items():
            _strip_settings(item, doc.get(str(key)), identity)


def recipe_hash(recipe: BaseModel) -> str:
    """The resolved recipe's identity (:func:`identity_doc`, canonical JSON, sha256) with its paths as they are; a
    build records ``curation.build.plan.recipe_identity``, the same with its paths relative to its input root."""
    return content_sha256(identity_doc(recipe))


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of every recipe kind (``kind: build`` is the default)."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(BuildRecipe | MixtureRecipe | SelectionRecipe).json_schema()
    schema["$id"] = "vlm-curation/recipe.schema.json"
    schema["title"] = "vlm-curation recipe (build, mixture or selection)"
    return schema
