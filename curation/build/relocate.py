"""Relocatable builds: what a build records says what its inputs are, never where they are.

A build records paths in three places: the recipe in ``dataset.json`` (and the recipe hash), the plan
(``_work/plan.json``, the partitions in ``stats.json``) and each sample's ``origin`` (sidecar and rejects). All
three are written relative to the build's **input root**: the recipe's ``inputs_root`` when it declares one,
else the deepest folder holding every source's ``path`` and ``image_root``. A path outside the root stays
absolute. The inputs themselves are identified by content (:func:`input_identity`), so the same inputs under
another folder, on another machine, give the same recipe hash, the same plan and byte-identical output, and a
rebuild into the same ``--out`` resumes.

Inputs in a bucket (``s3://bucket/prefix/...``, ``curation.storage.inputs``) are recorded the same way, relative
to the deepest URL prefix holding every source's URL (same bucket), and identified by the store's content
identity, (size, ETag), never read for it: the same objects under another bucket or prefix give the same build.
A recipe mixing local paths and URLs records its URLs whole (the root is the local one).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from curation.cache import cache_root
from curation.errors import CurationError
from curation.file_digest import file_identities
from curation.sources import make_reader
from curation.storage.inputs import (
    common_url,
    content_identity,
    refuse_urls,
    set_options,
    url_folder,
    url_identity,
)
from curation.storage.urls import is_url

GLOB_CHARS = "*?["
MAX_INPUT_FILES = 1_000_000  # bounds what one source path can make the plan list and hash


@dataclass(frozen=True)
class Relocator:
    """Rewrites paths under ``root`` as relative to it (``root`` itself becomes ``"."``), and paths under one of
    ``caches`` as ``$cache/...`` (a cache is found by content, wherever it is: the plan must not say where)."""

    root: str | None
    caches: tuple[str, ...] = ()

    @cached_property
    def _prefixes(self) -> list[tuple[str, str]]:
        """(prefix, what replaces it), longest first: a cache inside the input root is still a cache."""
        found = [(cache.rstrip("/"), "$cache") for cache in self.caches]
        if self.root is not None and self.root.rstrip("/"):
            found.append((self.root.rstrip("/"), ""))
        return sorted(found, key=lambda item: -len(item[0]))

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        """A prefix inside a text, at a path boundary (``/mnt/data/in`` is not under ``/data/in``)."""
        if not self._prefixes:
            return None
        alternatives = "|".join(re.escape(prefix) for prefix, _ in self._prefixes)
        return re.compile(rf"(?<![\w.\-/~])({alternatives})/")

    def path(self, text: str) -> str:
        """``text`` with a leading root or cache made relative; any other string unchanged."""
        for prefix, label in self._prefixes:
            if text == prefix:
                return label or "."
            if text.startswith(prefix + "/"):
                rest = text[len(prefix) + 1 :]
                return f"{label}/{rest}" if label else rest
        return text

    def text(self, text: str) -> str:
        """``text`` (an error message, say) with every path under the root or a cache made relative."""
        if self._pattern is None:
            return text
        labels = dict(self._prefixes)
        return self._pattern.sub(lambda m: f"{labels[m.group(1)]}/" if labels[m.group(1)] else "", text)

    def doc(self, value: Any) -> Any:
        """A JSON document with every string relocated (values only, keys unchanged)."""
        if not self._prefixes:
            return value
        if isinstance(value, str):
            return self.path(value)
        if isinstance(value, dict):
            return {k: self.doc(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.doc(v) for v in value]
        return value


def local_path(value: Any) -> str | None:
    """``value`` when it is an absolute local path (not a URL or a hub id), else None."""
    if not isinstance(value, str) or "://" in value or not os.path.isabs(value):
        return None
    return value


def input_path(value: Any) -> str | None:
    """``value`` when it names a source's input by an absolute local path or an object storage URL, else None."""
    if isinstance(value, str) and is_url(value):
        return value
    return local_path(value)


def path_folder(path: str) -> str:
    """The folder a recipe path stands in: itself for a folder, its parent for a file, the part before the
    first wildcard for a glob (a URL: an object's parent, a prefix itself; ``url_folder``)."""
    if is_url(path):
        return url_folder(path)
    if any(ch in path for ch in GLOB_CHARS):
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in GLOB_CHARS))
        return str(Path(*parts[:fixed]))
    return path if os.path.isdir(path) else os.path.dirname(path)


def source_paths(recipe: Any) -> list[str]:
    """The local paths and URLs of the recipe's sources: each ``path`` and ``image_root``."""
    found = []
    for src in recipe.sources:
        for name in ("path", "image_root"):
            path = input_path(getattr(src, name, None))
            if path is not None:
                found.append(path)
    return found


def input_root(recipe: Any) -> str | None:
    """The build's input root (module docstring), or None when no source has a local path or a URL (or the
    URLs are in different buckets)."""
    declared = getattr(recipe, "inputs_root", None)
    if declared:
        return declared.rstrip("/") if is_url(declared) else os.path.normpath(declared)
    paths = source_paths(recipe)
    local = [path_folder(p) for p in paths if not is_url(p)]
    if local:
        return os.path.commonpath(local)
    if not paths:
        return None
    set_options(getattr(recipe, "storage", None))  # where the URLs are: the recipe's store
    return common_url([path_folder(p) for p in paths])


def relocator(recipe: Any) -> Relocator:
    """The recipe's input root (``/`` records nothing relative: no root) and its caches."""
    root = input_root(recipe)
    caches = {str(cache_root())} | {
        str(cache_root(c)) for src in recipe.sources if (c := getattr(src, "cache_dir", None))
    }
    return Relocator(None if root in (None, os.sep) else root, tuple(sorted(caches)))


def input_identity(recipe: Any, where: Relocator) -> dict[str, list[Any]]:
    """What every source reads, by content: relative path -> [size, sha256] of each file a source's ``path``
    names (a file, the files of a folder, a glob's matches), or of the files its reader names
    (``Reader.identity_files``). A folder holding a built dataset is identified by its manifest (``dataset.json``
    lists every shard's sha256). Images found through ``image_root`` are not listed: their bytes go into the
    output, where each one's sha256 is recorded."""
    files: list[Path] = []
    objects: dict[str, tuple[int, str]] = {}
    for src in recipe.sources:
        if is_url(src.path):  # the store's identity, (size, ETag), from the listing: nothing is read
            refuse_urls(src)
            named_urls = make_reader(src).identity_files()
            if named_urls is None:
                objects.update(url_identity(src.path, src.name))
            else:
                objects.update({str(f): content_identity(f) for f in named_urls})
            continue
        path = local_path(src.path)
        if path is not None:
            named = make_reader(src).identity_files()
            files.extend(_named_files(path, src.name) if named is None else [Path(f) for f in named])
    identities = file_identities(files)
    found = [(where.path(str(f)), list(ident)) for f, ident in zip(files, identities, strict=True)]
    found += [(where.path(url), list(ident)) for url, ident in objects.items()]
    return dict(sorted(found))


def _named_files(path: str, source: str) -> Iterable[Path]:
    p = Path(path)
    if any(ch in path for ch in GLOB_CHARS):
        candidates: Iterable[Path] = (Path(f) for f in glob.iglob(path, recursive=True))
    elif (p / "dataset.json").is_file():
        return [p / "dataset.json"]
    elif p.is_dir():
        candidates = (f for f in p.rglob("*") if not any(part.startswith(".") for part in f.relative_to(p).parts))
    else:
        candidates = [p]
    files = []
    for f in candidates:
        if f.name.startswith(".") or not f.is_file():  # hidden files and folders (caches, locks) are not data
            continue
        files.append(f)
        if len(files) > MAX_INPUT_FILES:
            raise CurationError(
                f"sources.{source}.path ({path}) names more than {MAX_INPUT_FILES:,} files; point it at the data "
                "files, not at a folder of images"
            )
    return sorted(files)
