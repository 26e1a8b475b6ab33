"""The per-URL fetch of every img2dataset download (LAION and OBELICS), strict at the network boundary.

img2dataset's own ``download_image`` hands any URL to ``urllib.request.urlopen``, so ``file://``, ``ftp://``
and ``data:`` URLs are read; its ``timeout`` bounds each socket operation, not a response (a server sending
one byte a second never times out); any body is read into memory; and OpenCV decodes whatever image comes
back (a 100 KB PNG can declare 30000x30000 pixels: ~2 GB and 10 s to decode). ``fetch_image`` replaces it,
with the same signature and results:

- only ``http``/``https`` URLs of at most ``MAX_URL_CHARS``, and only redirects to such URLs, are fetched
  (our own opener has no file, ftp or data handler at all); non-ASCII paths are percent-encoded (UTF-8);
- ``timeout`` bounds each attempt as a whole, headers, body and redirects included: a watchdog thread
  shuts a connection's socket down at its deadline (TLS handshakes are bounded per read only);
- a body over ``MAX_BODY_BYTES`` (declared or read) or an empty body fails, and so does an image whose
  header declares more than ``MAX_IMAGE_PIXELS`` pixels, before anything decodes it.

Failure messages start with a stable category (``timeout: ...``, see ``curation.sources.download.failures``), which
names the drop: ``download_failed:<category>``.

img2dataset offers no hook for its fetch: ``GuardedDownloader``, the Downloader we build, swaps
``img2dataset.downloader.download_image`` for ``fetch_image`` while it downloads a shard (also inside
img2dataset's Ray tasks, which unpickle it and so import this module).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import http.client
import inspect
import io
import itertools
import math
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, cast

from PIL import Image

from curation.sources.download.failures import Refused, to_uri, url_problem

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # importing img2dataset imports albumentations
from img2dataset import downloader as i2d_downloader

MAX_BODY_BYTES = 32 << 20
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb threshold (~9459 x 9459)
# img2dataset's user agent, so that servers see the same client
_BROWSER = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
_READ_CHUNK = 1 << 16


# --------------------------------------------------------------------------------------------------
# Whole-response deadlines


class _Watchdog:
    """Shuts each watched socket down at its deadline, which ends any read blocked on it (one daemon
    thread per process, started on first use)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), sock))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                sock = heapq.heappop(self._heap)[2]
            with contextlib.suppress(OSError):  # closed already: the download finished in time
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.__init__)  # a forked child has no watchdog thread, maybe a held lock


class _CappedResponse(http.client.HTTPResponse):
    """A response whose whole-body ``read()`` refuses more than ``MAX_BODY_BYTES`` (also the body of a
    redirect, which urllib reads and discards)."""

    def read(self, amt: int | None = None) -> bytes:
        if amt is not None:
            return super().read(amt)
        if self.length is not None:  # Content-Length: too long is refused unread, too short raises
            if self.length > MAX_BODY_BYTES:
                self.close()
                raise Refused("too_large", f"Content-Length {self.length} over {MAX_BODY_BYTES} bytes")
            return super().read()
        chunks, size = [], 0
        while chunk := super().read(_READ_CHUNK):  # chunked, or until the server closes
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                self.close()
                raise Refused("too_large", f"body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class _DeadlineMixin:
    """Connects as usual, then has the watchdog shut the socket down at ``deadline``."""

    deadline: float = math.inf
    response_class = _CappedResponse
    sock: socket.socket

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if math.isfinite(self.deadline):
            _WATCHDOG.watch(self.sock, self.deadline)


class _HTTPConnection(_DeadlineMixin, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineMixin, http.client.HTTPSConnection):
    pass


def _connection_factory(cls: type, req: urllib.request.Request) -> Any:
    """``cls`` for ``req``'s deadline; its connect timeout is what is left of it (a redirect's hop too)."""
    deadline = getattr(req, "deadline", math.inf)

    def make(host: str, timeout: Any = None, **kwargs: Any) -> Any:
        if isinstance(timeout, int | float) and math.isfinite(deadline):
            timeout = max(min(timeout, deadline - time.monotonic()), 0.001)
        conn = cls(host, timeout=timeout, **kwargs)
        conn.deadline = deadline
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_connection_factory(_HTTPConnection, req), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> Any:
        context = self._context  # pyright: ignore[reportAttributeAccessIssue]  # typeshed omits _context
        return self.do_open(_connection_factory(_HTTPSConnection, req), req, context=context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib itself refuses ``file:``, but follows ``ftp:``),
    within the first request's deadline."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        problem = url_problem(newurl)
        if problem is not None:
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl[:200]!r}: {problem}", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            cast(Any, new).deadline = getattr(req, "deadline", math.inf)  # ours: Request does not declare it
        return new


def _opener() -> urllib.request.OpenerDirector:
    """urllib's opener for http and https only: no file, ftp or data handler."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),  # the environment's proxies, as urlopen
        urllib.request.UnknownHandler(),
        _HTTPHandler(),
        _HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _RedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _opener()


# --------------------------------------------------------------------------------------------------
# The fetch


def fetch_image(
    row: tuple[Any, Any], timeout: float, user_agent_token: str | None, disallowed_header_directives: Any
) -> tuple[Any, io.BytesIO | None, str | None]:
    """img2dataset's ``download_image`` contract: ``(key, url)`` -> ``(key, body or None, error or None)``."""
    key, url = row
    deadline = time.monotonic() + timeout
    try:
        data = _fetch(url, timeout, deadline, user_agent_token, disallowed_header_directives)
        if time.monotonic() > deadline:  # the watchdog may have cut a body that ends at a close
            raise Refused("timeout", f"the download took longer than {timeout} s")
        _check_body(data)
    except Exception as exc:  # every failure is a result, as in img2dataset
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()
        return key, None, describe_failure(exc, timeout, time.monotonic() > deadline)
    return key, io.BytesIO(data), None


def _fetch(url: Any, timeout: float, deadline: float, token: str | None, directives: Any) -> bytes:
    problem = url_problem(url)
    if problem is not None:
        raise Refused("invalid_url", problem)
    agent = _BROWSER + (f" (compatible; {token}; +https://github.com/rom1504/img2dataset)" if token else "")
    try:
        request = urllib.request.Request(to_uri(url), headers={"User-Agent": agent})
    except (ValueError, UnicodeError) as exc:
        raise Refused("invalid_url", str(exc)) from exc
    request.deadline = deadline  # type: ignore[attr-defined]
    with _OPENER.open(request, timeout=timeout) as response:
        if directives and i2d_downloader.is_disallowed(response.headers, token, directives):
            raise Refused("opted_out", "Use of image disallowed by X-Robots-Tag directive")
        return response.read()


def _check_body(data: bytes) -> None:
    """Refuse an empty body and an image declaring more than ``MAX_IMAGE_PIXELS`` (read from its header
    only); anything else, images PIL does not know included, is for img2dataset's decoder to judge."""
    if not data:
        raise Refused("empty_body", "the server sent no bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise Refused("too_many_pixels", str(exc)) from exc
    except Exception:  # not an image PIL reads: the decoder says so (resize_failed)
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise Refused("too_many_pixels", f"{width}x{height} pixels (at most {MAX_IMAGE_PIXELS})")


def describe_failure(exc: BaseException, timeout: float, late: bool) -> str:
    """``<category>: <what happened>`` for a failed attempt. ``late``: it ended past its deadline, so unless
    it is a refusal of ours or an HTTP status (which a cut connection cannot forge), the watchdog ended it."""
    if isinstance(exc, Refused):
        return str(exc)
    detail = str(exc).strip().replace("\n", " ")[:500] or type(exc).__name__
    if late and not isinstance(exc, urllib.error.HTTPError):
        return f"timeout: no complete response within {timeout} s ({detail})"
    return f"{_category_of(exc)}: {detail}"


_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


# the first match names a failure (RemoteDisconnected is a ConnectionResetError too: it comes first)
_EXCEPTION_CATEGORIES: list[tuple[type | tuple[type, ...], str]] = [
    (TimeoutError, "timeout"),
    (socket.gaierror, "unreachable"),
    ((ssl.SSLError, ssl.CertificateError), "tls_error"),
    ((http.client.RemoteDisconnected, http.client.BadStatusLine), "no_response"),
    ((ConnectionResetError, BrokenPipeError, ConnectionAbortedError), "connection_reset"),
    (http.client.IncompleteRead, "incomplete_body"),
    ((http.client.InvalidURL, UnicodeError), "invalid_url"),
    (http.client.HTTPException, "bad_response"),
]


def _category_of(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return _http_error_category(exc)
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, str):  # e.g. "no host given"
        return "invalid_url"
    for types, category in _EXCEPTION_CATEGORIES:
        if isinstance(reason, types):
            return category
    if isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS:
        return "unreachable"
    return "other"


def _http_error_category(exc: urllib.error.HTTPError) -> str:
    text = str(exc)
    if 300 <= exc.code < 400:
        if "not allowed" in text or "redirect to" in text:
            return "redirect_refused"
        if "infinite loop" in text:
            return "redirect_loop"
    return f"http_{exc.code}"


# --------------------------------------------------------------------------------------------------
# Installing it into img2dataset


_STOCK_SIGNATURE = ["row", "timeout", "user_agent_token", "disallowed_header_directives"]
if list(inspect.signature(i2d_downloader.download_image).parameters) != _STOCK_SIGNATURE:
    raise ImportError(
        "img2dataset.downloader.download_image changed its signature; curation.sources.download.fetch replaces it "
        "and must be updated for this img2dataset version"
    )


class _Swap:
    """``img2dataset.downloader.download_image`` is ``fetch_image`` while at least one shard downloads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._stock: Any = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._stock = i2d_downloader.download_image
                i2d_downloader.download_image = fetch_image
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    i2d_downloader.download_image = self._stock


_SWAP = _Swap()


class GuardedDownloader(i2d_downloader.Downloader):
    """img2dataset's Downloader, fetching every URL with ``fetch_image``."""

    def download_shard(self, row: Any) -> None:
        with _SWAP.installed():
            super().download_shard(row)
