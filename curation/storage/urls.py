"""URLs versus local paths: a URL (``scheme://...``) is never taken for a relative path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from curation.errors import CurationError

SCHEMES = ("s3",)  # what builds can be published to and read from
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_url(value: str | Path) -> bool:
    """Whether ``value`` names a URL (``scheme://...``), not a file. A ``Path`` never does (it has lost a slash)."""
    return isinstance(value, str) and _URL.match(value) is not None


@dataclass(frozen=True)
class StoreURL:
    """``s3://bucket/prefix``: the prefix without leading or trailing slashes ('' for the bucket's root)."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def key(self, rel: str = "") -> str:
        """The object key of ``rel`` (a path relative to the prefix)."""
        return "/".join(p for p in (self.prefix, rel) if p)

    def path(self, rel: str = "") -> str:
        """``bucket/key``, as s3fs names objects."""
        return "/".join(p for p in (self.bucket, self.prefix, rel) if p)

    def child(self, rel: str) -> StoreURL:
        return StoreURL(self.scheme, self.bucket, self.key(rel.strip("/")))

    def __str__(self) -> str:
        return self.url


def parse_url(value: str, what: str = "--out") -> StoreURL:
    """A supported storage URL, or a one-line :class:`CurationError` naming ``what`` and the fix."""
    m = _URL.match(value)
    if m is None:
        raise CurationError(f"{what} {value!r} is not a URL")
    scheme = m.group(1).lower()
    if scheme not in SCHEMES:
        raise CurationError(
            f"{what} {value}: {scheme}:// is not supported (object storage: {', '.join(s + '://' for s in SCHEMES)}; "
            "anything else: a local path)"
        )
    rest = value[m.end() :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise CurationError(f"{what} {value}: {bucket!r} is not a valid bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts) or "\\" in prefix or any(not p.isprintable() for p in parts):
        raise CurationError(f"{what} {value}: the prefix must be a plain path (no '.', '..', '\\\\' or controls)")
    return StoreURL(scheme, bucket, "/".join(parts))


def local_path(value: str, what: str) -> Path:
    """A command argument that must be a local path: a URL is a one-line error, never a folder named ``s3:``."""
    if is_url(value):
        raise CurationError(f"{what} {value}: this command writes or reads a local path only; give a local directory")
    return Path(value)
