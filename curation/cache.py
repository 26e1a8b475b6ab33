"""Where the toolkit caches what it can compute again (downloads, selections, generations, embeddings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """``override`` (a recipe's ``cache_dir``), else ``$VLM_CURATION_CACHE``, else ``~/.cache/vlm-curation``."""
    return Path(override or os.environ.get("VLM_CURATION_CACHE") or Path.home() / ".cache" / "vlm-curation")
