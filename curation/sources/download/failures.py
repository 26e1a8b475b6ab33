"""What a download may fetch, and the stable reasons of failed downloads (no heavy imports: the readers
use ``error_category`` to name their drops).

A failure message of ``curation.sources.download.fetch`` starts with its category (``timeout: no complete response
within 10 s``); ``error_category`` reads that prefix, or else img2dataset's own wording (the messages of
shards downloaded before our fetch existed). The drop reason is ``download_failed:<category>``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_URL_CHARS = 8192  # RFC 9110 asks servers to take at least 8000 octets; longer ones are not web images
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"  # reserved characters and "%": existing escapes stay as they are
_CATEGORY_PREFIX = re.compile(r"^([a-z][a-z0-9_]*): ")

# category -> what it means (``http_NNN``: the server answered with that status)
CATEGORIES = {
    "invalid_url": "not an http(s) URL with a host, malformed, or longer than MAX_URL_CHARS; never requested",
    "redirect_refused": "redirected to a URL that is not fetched (file:, ftp:, data:, ...); not followed",
    "redirect_loop": "redirects that loop, or more than urllib's 10",
    "timeout": "no complete response within the download timeout (per attempt, headers to last byte)",
    "unreachable": "connection refused, host unknown or unreachable",
    "tls_error": "the TLS handshake or certificate check failed",
    "no_response": "the server closed the connection before a status line",
    "connection_reset": "the connection was reset during the response",
    "incomplete_body": "fewer body bytes than the Content-Length declared",
    "bad_response": "a response HTTP cannot parse (header line too long, too many headers, ...)",
    "too_large": "a body over MAX_BODY_BYTES, declared or sent",
    "empty_body": "a success status with no body bytes",
    "too_many_pixels": "an image header declaring more than MAX_IMAGE_PIXELS (a decompression bomb)",
    "opted_out": "an X-Robots-Tag directive disallows the use (noai, ...)",
    "other": "anything else (the message is in the drop's detail)",
}


# The drops of a download (reason -> meaning); ``download_failed:`` stands for ``download_failed:<category>``, a
# key of CATEGORY_MEANINGS (``http_NNN``: the server answered with that status).
DOWNLOAD_DROP_REASONS = {
    "download_failed:": "the image download failed; the category after the colon is listed under download failures",
    "resize_failed": "img2dataset could not decode or resize the body (not an image)",
    "download_missing": "img2dataset listed a success without its files, or left a row out",
}
# Every category of ``download_failed:<category>``: ours, HTTP statuses, and the readers' own ``no_output``.
CATEGORY_MEANINGS = {
    **{k: v for k, v in CATEGORIES.items() if k != "other"},
    "invalid_url": f"{CATEGORIES['invalid_url']} (also a success in a cache made before this fetch)",
    "http_NNN": "the server answered with that status (`http_404`, `http_500`, ...)",
    "no_output": "img2dataset wrote no shard for the partition",
    "other": CATEGORIES["other"],
}


class Refused(Exception):
    """A download we refuse or give up on, with its category."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category


def url_problem(url: object) -> str | None:
    """Why ``url`` is not fetched, or None for an http(s) URL with a host."""
    if not isinstance(url, str) or not url.strip():
        return "empty URL"
    if len(url) > MAX_URL_CHARS:
        return f"URL of {len(url)} characters (at most {MAX_URL_CHARS})"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        return f"malformed URL: {exc}"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return f"scheme {parts.scheme[:20]!r} is not fetched (http and https only)"
    if not parts.hostname:
        return "URL without a host"
    return None


def to_uri(url: str) -> str:
    """``url`` with its path and query percent-encoded as a browser sends them (non-ASCII as UTF-8, spaces
    and the other characters a URI cannot hold); the fragment is never sent."""
    parts = urlsplit(url.strip())
    path, query = (quote(p, safe=_PATH_SAFE) for p in (parts.path, parts.query))
    return urlunsplit(parts._replace(path=path or "/", query=query, fragment=""))


def error_category(message: str | None) -> str:
    """A short, stable reason for a download error message."""
    m = (message or "").strip()
    prefix = _CATEGORY_PREFIX.match(m)
    if prefix and (prefix.group(1) in CATEGORIES or re.fullmatch(r"http_\d{3}", prefix.group(1))):
        return prefix.group(1)
    low = m.lower()
    if match := re.search(r"http error (\d{3})", low):
        return f"http_{match.group(1)}"
    if "x-robots-tag" in low or "disallowed" in low:
        return "opted_out"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "connection refused" in low or "name or service not known" in low or "urlopen error" in low:
        return "unreachable"
    return "other"


def row_failure(row: dict[str, Any]) -> tuple[str, str] | None:
    """The drop reason and detail of a row of img2dataset's output that is not a usable image, or None. A URL
    we never fetch is refused even as a success: a cached shard may predate ``curation.sources.download.fetch``."""
    if (problem := url_problem(row.get("url"))) is not None:
        return "download_failed:invalid_url", problem
    message = str(row.get("error_message"))[:300]
    if row.get("status") == "failed_to_download":
        return f"download_failed:{error_category(row.get('error_message'))}", message
    if row.get("status") != "success":
        return "resize_failed", message
    return None
