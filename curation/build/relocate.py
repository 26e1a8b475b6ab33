"""Relocatable builds: what a build records says what its inputs are, never where they are.

A build records paths in three places: the recipe in ``dataset.json`` (and the recipe hash), the plan
(``_work/plan.json``, the partitions in ``stats.json``) and each sample's ``origin`` (sidecar and rejects). All
three are written relative to the build's **input root**: the recipe's ``inputs_root`` when it declares one,
else the deepest folder holding every source's ``path`` and ``image_root``. A path outside the root stays
absolute. The inputs themselves are identified by content (:func:`input_identity`), so the same inputs under
another folder, on another machine, give the same recipe hash, the same plan and byte-identical output, and a
rebuild into the same ``--out`` resumes.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.file_digest import file_identity
from curation.sources import make_reader

GLOB_CHARS = "*?["
MAX_INPUT_FILES = 1_000_000  # bounds what one source path can make the plan list and hash
HASH_THREADS = 4


@dataclass(frozen=True)
class Relocator:
    """Rewrites absolute paths under ``root`` as paths relative to it (``root`` itself becomes ``"."``)."""

    root: str | None

    def path(self, text: str) -> str:
        """``text`` with a leading ``root`` made relative; any other string unchanged."""
        root = self.root
        if root is None or not text.startswith(root):
            return text
        if text == root:
            return "."
        if root == os.sep:
            return text[1:]
        return text[len(root) + 1 :] if text[len(root)] == os.sep else text

    def text(self, text: str) -> str:
        """``text`` (an error message, say) with every absolute path under ``root`` made relative."""
        root = self.root
        if root is None or root == os.sep or root not in text:
            return text
        return text.replace(root + os.sep, "")

    def doc(self, value: Any) -> Any:
        """A JSON document with every string relocated (values only, keys unchanged)."""
        if self.root is None:
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


def path_folder(path: str) -> str:
    """The folder a recipe path stands in: itself for a folder, its parent for a file, the part before the
    first wildcard for a glob."""
    if any(ch in path for ch in GLOB_CHARS):
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in GLOB_CHARS))
        return str(Path(*parts[:fixed]))
    return path if os.path.isdir(path) else os.path.dirname(path)


def source_paths(recipe: Any) -> list[str]:
    """The local paths of the recipe's sources: each ``path`` and ``image_root``."""
    found = []
    for src in recipe.sources:
        for name in ("path", "image_root"):
            path = local_path(getattr(src, name, None))
            if path is not None:
                found.append(path)
    return found


def input_root(recipe: Any) -> str | None:
    """The build's input root (module docstring), or None when no source has a local path."""
    declared = getattr(recipe, "inputs_root", None)
    if declared:
        return os.path.normpath(declared)
    folders = [path_folder(p) for p in source_paths(recipe)]
    return os.path.commonpath(folders) if folders else None


def relocator(recipe: Any) -> Relocator:
    return Relocator(input_root(recipe))


def input_identity(recipe: Any, where: Relocator) -> dict[str, list[Any]]:
    """What every source reads, by content: relative path -> [size, sha256] of each file a source's ``path``
    names (a file, the files of a folder, a glob's matches), or of the files its reader names
    (``Reader.identity_files``). A folder holding a built dataset is identified by its manifest (``dataset.json``
    lists every shard's sha256). Images found through ``image_root`` are not listed: their bytes go into the
    output, where each one's sha256 is recorded."""
    files: list[Path] = []
    for src in recipe.sources:
        path = local_path(src.path)
        if path is not None:
            named = make_reader(src).identity_files()
            files.extend(_named_files(path, src.name) if named is None else named)
    with ThreadPoolExecutor(HASH_THREADS) as pool:  # hashing reads files; hashlib lets go of the GIL
        identities = list(pool.map(file_identity, files))
    return dict(sorted((where.path(str(f)), list(ident)) for f, ident in zip(files, identities, strict=True)))


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
