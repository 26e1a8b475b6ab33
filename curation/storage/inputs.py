"""Recipe inputs named by URL. Not read yet: a recipe path that is a URL is a clear recipe error."""

from __future__ import annotations

from typing import Any

from curation.errors import RecipeError
from curation.storage.urls import is_url


def url_paths(recipe: Any) -> list[tuple[str, str]]:
    """(dotted field, value) of every recipe path that is a URL (sources, tokenizer, benchmarks, models)."""
    from curation.recipe.loading import _path_slots

    data = recipe.model_dump(mode="json")
    found = []
    for container, key in _path_slots(data):
        value = container.get(key)
        if isinstance(value, str) and is_url(value):
            name = container.get("name")
            found.append(
                (f"sources.{name}.{key}" if isinstance(name, str) and key in ("path", "image_root") else key, value)
            )
    return found


def check_inputs(recipe: Any) -> None:
    """A recipe path that is a URL (``s3://...``) is refused with the fix, never taken for a relative path."""
    found = url_paths(recipe)
    if found:
        key, value = found[0]
        raise RecipeError(
            f"{key}: {value}: inputs are read from local paths only (object storage is for --out and for reading "
            "builds); copy the inputs to a local folder first (e.g. aws s3 sync) and name that folder"
        )
