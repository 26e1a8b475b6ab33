"""What identifies a model's outputs: the bytes of its files plus the settings that change its vectors.

A stage records the fingerprint next to what it computed, so a cache or a resumed build never mixes vectors of
two models (or of one model preprocessed two ways). Files are hashed once per version (``curation.file_digest``):
a worker that runs many partitions, and every later build, hashes the weights once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.file_digest import file_sha256

# What transformers reads from a save_pretrained directory: configs, tokenizers, preprocessors, torch weights
# (safetensors preferred, as transformers does; TF/Flax/ONNX copies are never loaded, so never hashed).
CONFIG_SUFFIXES = frozenset({".json", ".txt", ".model", ".tiktoken", ".jinja", ".spm"})
SAFETENSORS = ".safetensors"
TORCH_WEIGHTS = frozenset({".bin", ".pt", ".pth"})


def model_files(path: Path) -> list[Path]:
    """The files of a model that its outputs depend on: the file itself, or a directory's configs, tokenizer,
    preprocessor and torch weights (one level of subfolders; hidden entries skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CurationError(f"model path {path} does not exist; point the stage at a local model file or directory")
    found: list[Path] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif entry.is_file():
            found.append(entry)
    has_safetensors = any(p.suffix == SAFETENSORS for p in found)
    weights = {SAFETENSORS} if has_safetensors else TORCH_WEIGHTS
    return [p for p in found if p.suffix in CONFIG_SUFFIXES or p.suffix in weights]


def model_fingerprint(path: str | Path, kind: str, extra: dict[str, Any] | None = None) -> str:
    """sha256 hex over ``kind``, each model file's relative name and sha256, and ``extra`` (canonical JSON:
    preprocessing settings, the dtype) -- equal content gives an equal fingerprint, wherever it lives."""
    root = Path(path)
    files = model_files(root)
    if not files:
        raise CurationError(f"model directory {root} holds no config or weights file; is it a save_pretrained output?")
    h = hashlib.sha256()
    h.update(f"kind={kind}\n".encode())
    for file in files:
        name = "" if file == root else file.relative_to(root).as_posix()  # a single file: its name is no content
        h.update(f"{name}\0{file_sha256(file)}\n".encode())
    h.update(json.dumps(extra or {}, sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


__all__ = ["model_files", "model_fingerprint"]
