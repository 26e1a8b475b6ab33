"""``dataset.json``: what a build contains, how it was made, and its exact accounting."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_serializer

from shards.atomic import atomic_write_json

MANIFEST_NAME = "dataset.json"
STATS_NAME = "stats.json"  # a build's accounting per step and source, and per planned input partition
FORMAT = "vlm-curation/dataset"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """``dataset.json`` exists but is not a valid manifest (not JSON, or not the manifest's shape)."""


def _inside(path: str) -> str:
    """A manifest read from elsewhere names the files to read: they must lie inside the dataset directory."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or "\\" in path or "\0" in path:
        raise ValueError(f"{path!r} is not a relative path inside the dataset directory")
    return path


InsidePath = Annotated[str, AfterValidator(_inside)]
Per = Literal["sample", "image"]


class EmbeddingFile(BaseModel):
    """A shard's embeddings of one name (``shards.embeddings``), as its stats file and the manifest list them."""

    model_config = ConfigDict(extra="forbid")
    file: InsidePath
    sha256: str
    rows: int = Field(ge=0)
    dim: int = Field(ge=1)
    per: Per


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: InsidePath = Field(description="tar file name, relative to the dataset directory")
    sidecar: InsidePath
    stats: InsidePath
    sha256: str
    samples: int
    bytes: int
    sidecar_sha256: str | None = Field(default=None, description="sha256 of the sidecar parquet (absent in old builds)")
    embeddings: dict[str, EmbeddingFile] | None = Field(
        default=None, description="Embeddings stored beside the shard, by name (builds with an embed step)."
    )

    @model_serializer(mode="wrap")
    def _without_absent_embeddings(self, handler: Any) -> dict[str, Any]:
        """Builds without embeddings keep the manifest they always had (no ``embeddings: null``)."""
        data = handler(self)
        if data.get("embeddings") is None:
            data.pop("embeddings", None)
        return data

    @classmethod
    def from_stats(cls, stem: str, stats: dict[str, Any], folder: str = "") -> ShardInfo:
        """The manifest entry of shard ``stem`` (files ``<stem>.tar/.parquet/.stats.json`` in ``folder``)."""
        prefix = f"{folder}/" if folder else ""
        return cls(
            name=f"{prefix}{stem}.tar",
            sidecar=f"{prefix}{stem}.parquet",
            stats=f"{prefix}{stem}.stats.json",
            sha256=stats["sha256"],
            samples=stats["samples"],
            bytes=stats["bytes"],
            sidecar_sha256=stats.get("sidecar_sha256"),
            embeddings={
                name: EmbeddingFile(**{**entry, "file": f"{prefix}{entry['file']}"})
                for name, entry in stats["embeddings"].items()
            }
            if stats.get("embeddings")
            else None,
        )


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    name: str
    kind: str
    tool_version: str
    recipe: dict[str, Any]
    recipe_sha256: str
    tokenizer_fingerprint: str | None = Field(
        default=None, description="What identifies the token counts (regex-v1, or the tokenizer files' sha256)."
    )
    shards: list[ShardInfo]
    rejects: list[ShardInfo] = Field(default_factory=list)
    totals: dict[str, int]
    accounting: dict[str, Any] = Field(default_factory=dict)
    wids_index: str | None = None
    subsets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Nested subsets: name -> {shards, samples, wids_index}; each a prefix."
    )
    duplicates: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict,
        description="Per global dedup step: dropped sample's source -> source of the sample it duplicated -> count.",
    )
    categories: dict[str, str] = Field(default_factory=dict, description="Source -> task category (Table 3).")
    reports: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per step: what it reports about its work (e.g. generation counts)."
    )
    mixture: dict[str, Any] | None = Field(
        default=None, description="Mixture builds: per component its target, what was available and what was selected."
    )

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        atomic_write_json(path, self.model_dump(mode="json"))
        return path


def read_manifest(directory: Path) -> DatasetManifest:
    """The manifest of a built dataset. Raises FileNotFoundError (none) or :class:`ManifestError`."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a built dataset (no {MANIFEST_NAME})")
    return parse_manifest(path.read_bytes(), path)


def parse_manifest(data: bytes, path: Path | str) -> DatasetManifest:
    """A manifest from its bytes (``path`` names it in errors). Raises :class:`ManifestError`."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        detail = "nested too deep" if isinstance(exc, RecursionError) else _one_line(str(exc))
        raise ManifestError(f"{path}: not a valid {MANIFEST_NAME} ({detail})") from None
    try:
        return DatasetManifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise ManifestError(f"{path}: not a valid {MANIFEST_NAME} ({where}: {_one_line(first['msg'])})") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def write_wids_index(directory: Path, name: str, shards: list[ShardInfo], url_prefix: str = "") -> str:
    """The wids shard index (urls relative to the index file, behind ``url_prefix``)."""
    index = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": url_prefix + s.name, "nsamples": s.samples, "filesize": s.bytes} for s in shards],
    }
    filename = f"{name}.wids.json"
    atomic_write_json(directory / filename, index)
    return filename
