"""Recipe files in a bucket that a build reads whole (a tokenizer, a model, benchmark files, a word list, a
classifier head, a language-id or KenLM model): copied once into the cache, and the build reads the copy.

These are loaded by libraries that read local files (transformers, fastText, KenLM, torch), so unlike a source's
inputs they are not streamed. :func:`localize` replaces each such URL of a recipe by its copy,
``$VLM_CURATION_CACHE/objects/<key>/<name>``, where ``key`` is the content identity of what the URL names (each
object's name under it, size and ETag): the same objects under another bucket or prefix are the same copy, the
recipe the build records (``$cache/objects/<key>/<name>``) and its hash are the same, and an object replaced in
the bucket is another copy and another build. A copy appears whole or not at all (downloaded aside, each object
pinned to the ETag it was listed with, then renamed into place), so a killed copy is made again by the rerun.

A Ray node that does not see the driver's cache makes its own copy of the same URL
(:func:`localize_on_this_node`, with the URLs the driver copied, sent with each partition task)."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from curation.build.output_dir import LOGS, WORK
from curation.cache import cache_root
from curation.errors import CurationError, RecipeError
from curation.storage.inputs import GLOB_CHARS, Listed, list_url, open_url
from curation.storage.lock import LOCK
from curation.storage.urls import is_url
from shards.atomic import content_sha256
from shards.manifest import MANIFEST_NAME

COPIES = "objects"  # under the cache root
R = TypeVar("R", bound=BaseModel)
COPY_BLOCK = 8 << 20  # read-ahead of each object's streamed copy
# What the readers stream instead: a source's inputs, the build's input root, a mixture's datasets (mirrored).
STREAMED = ("inputs_root",)


@dataclass(frozen=True)
class _Listed:
    """What a URL names, as its copy will hold it: (name under the copy's folder, object) pairs."""

    key: str  # the copy's content key
    name: str  # the copy's folder or file name (the URL's last part)
    single: bool  # one object (the copy is a file) or a prefix (a folder)
    objects: list[tuple[str, Listed]]


def _listing(url: str, what: str) -> _Listed:
    if any(ch in url.split("://", 1)[1] for ch in GLOB_CHARS):
        raise RecipeError(f"{what}: {url}: a glob; name one object or one folder (prefix)")
    found, single = list_url(url, what, hidden_folders=False)
    base = url.rstrip("/")
    name = posixpath.basename(base) or "bucket"
    if single:
        objects = [(name, found[0])]
    else:  # hidden names (.cache/, .gitattributes) are not part of a model or a benchmark
        objects = [(f.url[len(base) + 1 :], f) for f in found]
        objects = [(rel, f) for rel, f in objects if not any(p.startswith(".") for p in rel.split("/"))]
        if any(rel == MANIFEST_NAME for rel, _ in objects):  # a built dataset: its run logs and lock are not it
            objects = [(rel, f) for rel, f in objects if rel != LOCK and not rel.startswith((f"{WORK}/", f"{LOGS}/"))]
    for rel, f in objects:
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\x00" in rel:  # "a//b", "../x": not a file under the copy
            raise CurationError(f"{what}: {f.url}: an object name that cannot be a file under {url}")
    key = content_sha256([name, single, [(rel, f.size, f.etag) for rel, f in objects]])[:16]
    return _Listed(key, name, single, objects)


def copy_of(url: str, what: str, expect_key: str | None = None) -> Path:
    """The local copy of what ``url`` names (one object, or every object under a prefix, hidden names left out),
    made now unless it exists. A glob is a RecipeError: these fields name one file or one folder. With
    ``expect_key``, objects that changed since that copy was made are an error (a node must read what the
    driver planned with)."""
    listed = _listing(url, what)
    if expect_key is not None and listed.key != expect_key:
        raise CurationError(f"{what}: {url} changed in the bucket since the build began; run the build again")
    root = cache_root() / COPIES
    done = root / listed.key
    if not done.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{listed.key}.", suffix=".tmp", dir=root))
        try:
            for rel, f in listed.objects:
                local = tmp / listed.name if listed.single else tmp / listed.name / rel
                if not local.resolve().is_relative_to(tmp.resolve()):  # bounded: never a file outside the copy
                    raise CurationError(f"{what}: {f.url}: an object name that cannot be a file under {url}")
                local.parent.mkdir(parents=True, exist_ok=True)
                with open_url(f.url, COPY_BLOCK, etag=f.etag) as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_BLOCK)
            try:
                os.rename(tmp, done)
            except OSError:
                if not done.is_dir():  # else another process made the same copy first: keep that one
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return done / listed.name


def _slots(recipe: BaseModel) -> Iterator[tuple[Any, str, str]]:
    """(owner, field or key, dotted name) of each file path a build recipe holds (``loading._path_slots``): the
    owner is the model object (or dict) holding it, so a value is replaced in place, its settings kept as set."""
    from curation.recipe.loading import _path_slots

    data = recipe.model_dump(mode="json")
    owners: dict[int, tuple[Any, str]] = {}

    def walk(value: Any, doc: Any, dotted: str) -> None:
        if isinstance(value, BaseModel) and isinstance(doc, dict):
            owners[id(doc)] = (value, dotted)
            for k, v in doc.items():
                walk(getattr(value, k, None), v, f"{dotted}.{k}".lstrip("."))
        elif isinstance(value, dict) and isinstance(doc, dict):
            owners[id(doc)] = (value, dotted)
            for k, v in doc.items():
                walk(value.get(k), v, f"{dotted}.{k}".lstrip("."))
        elif isinstance(value, list | tuple) and isinstance(doc, list):
            for i, (item, d) in enumerate(zip(value, doc, strict=False)):
                name = d.get("name") if isinstance(d, dict) else None
                walk(item, d, f"{dotted}.{name if isinstance(name, str) else i}")

    walk(recipe, data, "")
    for container, key in _path_slots(data):
        owner = owners.get(id(container))
        if owner is not None:
            yield owner[0], key, f"{owner[1]}.{key}".lstrip(".")


def _get(owner: Any, key: str) -> Any:
    return owner.get(key) if isinstance(owner, dict) else getattr(owner, key, None)


def _set(owner: Any, key: str, value: str) -> None:
    if isinstance(owner, dict):
        owner[key] = value
    else:
        object.__setattr__(owner, key, value)  # in place: the field stays "set" as the user set it


def copied_fields(recipe: BaseModel) -> Iterator[tuple[Any, str, str, str]]:
    """(owner, key, dotted name, URL) of each recipe path that is a URL read whole (not streamed by a reader)."""
    for owner, key, dotted in _slots(recipe):
        value = _get(owner, key)
        if not isinstance(value, str) or not is_url(value) or key in STREAMED:
            continue
        if dotted.startswith("sources.") and key in ("path", "image_root"):
            continue
        if dotted.startswith("datasets."):
            continue
        yield owner, key, dotted, value


_origins: dict[str, str] = {}  # local copy -> the URL it is a copy of (this process's copies)


def localize(recipe: R) -> R:
    """``recipe`` with each URL read whole replaced by its local copy (:func:`copy_of`): a copy of the recipe
    (the caller's keeps its URLs, as a mixture records its inline builds), or ``recipe`` itself when it has none."""
    fields = list(copied_fields(recipe))
    if not fields:
        return recipe
    local_recipe = recipe.model_copy(deep=True)
    for owner, key, dotted, url in copied_fields(local_recipe):
        if key == "cache_dir":
            raise RecipeError(f"{dotted}: {url}: a cache is a local folder (or give none: $VLM_CURATION_CACHE)")
        local = str(copy_of(url, dotted))
        _origins[local] = url
        _set(owner, key, local)
    return local_recipe


def fetch_recipe_files(recipe: R) -> R:
    """:func:`localize` with the recipe's ``storage:`` options, for commands that read no sources (a selection
    sweep's trainer model and benchmarks, an ablation's, a mixture's tokenizer)."""
    from curation.storage.inputs import set_options

    set_options(getattr(recipe, "storage", None))
    return localize(recipe)


def copies_in(recipe: BaseModel) -> dict[str, str]:
    """{URL: local copy} of the copies ``recipe`` reads (what a partition task on another node needs)."""
    found = {}
    for owner, key, _ in _slots(recipe):
        value = _get(owner, key)
        if isinstance(value, str) and value in _origins:
            found[_origins[value]] = value
    return found


def localize_on_this_node(recipe: BaseModel, copies: dict[str, str]) -> None:
    """In a partition task (``recipe`` is its own copy): where this node does not see the driver's copy of a URL,
    make its own, of the same objects (the same key, under this node's cache), and point ``recipe`` at it."""
    moved = {
        local: str(copy_of(url, "a recipe file", expect_key=Path(local).parent.name))
        for url, local in copies.items()
        if not os.path.exists(local)
    }
    if not moved:
        return
    for owner, key, _ in _slots(recipe):
        value = _get(owner, key)
        if isinstance(value, str) and value in moved:
            _set(owner, key, moved[value])
