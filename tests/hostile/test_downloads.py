"""Download servers that misbehave never crash a build, never lose a row, never hang it.

One loopback server (127.0.0.1 only; every handler ends by itself) misbehaves differently per URL: it
stalls, drips, resets, lies about Content-Length, sends HTML, nothing, a truncated JPEG, a 1x1 image, a
decompression bomb, a huge EXIF block, loops redirects, redirects to ``file:`` and ``ftp:``, answers 404,
500, 429 (and serves good images, directly and behind a redirect). The inputs add URLs that are
malformed, empty, ``file://``, ``data:``, 10 KB long, non-ASCII, or point at a closed port. One build of
the built-in ``laion_subsets`` recipe and one of ``obelics`` take them all at once: each URL is kept or
dropped with its own reason, the accounting is exact (``verify`` passes, the audit's input is the input's
row count), nothing is written outside ``--out`` and the cache, no ``file:`` path is ever opened, and the
slow servers are cut at the download timeout.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.build.runner import build
from curation.recipe import load_recipe
from curation.report.audit import audit
from curation.sources.download.failures import error_category, row_failure, to_uri, url_problem
from shards import iter_dataset
from shards.verify import verify_dataset
from tests.integration.test_obelics_build import paragraph, row

TIMEOUT = 2  # the recipes' download timeout, seconds
HOLD_LIMIT = 30.0  # no handler keeps a connection longer than this, whatever the client does
SLOW_CASES = ("stall", "drip")

# --------------------------------------------------------------------------------------------------
# What the server sends


def jpeg(seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 80)).save(out, "JPEG", quality=90)
    return out.getvalue()


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


@functools.cache
def png_bomb(side: int = 30_000) -> bytes:
    """A valid one-colour 1-bit PNG of ``side`` x ``side`` pixels: ~110 KB that decode to ~1 GB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    line = bytes(1 + (side + 7) // 8)  # filter byte 0, then the bits of one row
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(line) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB APP1 segment, near JPEG's 64 KB limit
    out = io.BytesIO()
    Image.new("RGB", (200, 150), (10, 200, 30)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


class _Hostile(http.server.BaseHTTPRequestHandler):
    """``/<case>/...``: the behaviour of ``case_<case>``; how long a slow case held its client is recorded."""

    stop: threading.Event
    secret: str
    held: dict[str, float]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        case = self.path.lstrip("/").split("/")[0].split("?")[0]
        getattr(self, f"case_{case}", self.case_missing)()

    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", length: int | None = None, **extra: str):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _client_gone(self) -> bool:
        """The client closed its end (an EOF is waiting), without consuming anything."""
        self.connection.setblocking(False)
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.connection.setblocking(True)

    def _hold(self, case: str, step: Callable[[int], None] | None = None) -> None:
        """Keep the client (calling ``step(i)`` every 0.5 s) until it leaves, the server stops, or
        ``HOLD_LIMIT``; record how long the client stayed."""
        started = time.monotonic()
        for i in range(int(HOLD_LIMIT / 0.5)):
            if self.stop.wait(0.5):
                return
            if self._client_gone():
                break
            try:
                if step is not None:
                    step(i)
            except OSError:
                break
        self.held[case] = time.monotonic() - started
        self.close_connection = True

    def case_ok(self) -> None:
        self._send(200, jpeg(len(self.path)))

    def case_missing(self) -> None:
        self._send(404, b"not found", "text/plain")

    def case_e500(self) -> None:
        self._send(500, b"oops", "text/plain")

    def case_e429(self) -> None:
        self._send(429, b"slow down", "text/plain", Retry_After="3600")

    def case_stall(self) -> None:  # reads the request, never answers
        self._hold("stall")

    def case_drip(self) -> None:  # one body byte every 0.5 s, far longer than the timeout
        body = jpeg(7)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()

        def drip(i: int) -> None:
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()

        self._hold("drip", drip)

    def case_drip_headers(self) -> None:  # a status line, then a header one byte every 0.5 s
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        self.wfile.flush()
        self._hold("drip_headers", lambda _: self.wfile.write(b"X") and self.wfile.flush())

    def case_huge_declared(self) -> None:  # declares 64 MiB, sends 1 KiB
        self._send(200, bytes(1024), length=64 << 20)
        self.close_connection = True

    def case_huge_unsized(self) -> None:  # no Content-Length: 40 MiB until the connection closes
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        for _ in range(40):
            try:
                self.wfile.write(bytes(1 << 20))
            except OSError:
                break
        self.close_connection = True

    def case_reset(self) -> None:  # half the body, then a TCP reset
        body = jpeg(3)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def case_close(self) -> None:  # closes before any header
        self.close_connection = True

    def case_long_length(self) -> None:  # declares 1000 bytes more than it sends
        body = jpeg(4)
        self._send(200, body, length=len(body) + 1000)
        self.close_connection = True

    def case_short_length(self) -> None:  # declares half of what it sends
        body = jpeg(5)
        self._send(200, body, length=len(body) // 2)

    def case_html(self) -> None:
        self._send(200, b"<html><body>a web page, not an image</body></html>", "text/html")

    def case_empty_body(self) -> None:
        self._send(200, b"", "text/plain")

    def case_zero_byte_image(self) -> None:
        self._send(200, b"")

    def case_truncated(self) -> None:
        body = jpeg(6)
        self._send(200, body[: len(body) * 2 // 3])

    def case_tiny(self) -> None:
        self._send(200, png((1, 1)), "image/png")

    def case_bomb(self) -> None:
        self._send(200, png_bomb(), "image/png")

    def case_exif(self) -> None:
        self._send(200, exif_jpeg())

    def case_moved(self) -> None:  # an ordinary redirect, followed
        self._send(301, b"", "text/plain", Location="/ok/moved.jpg")

    def case_loop(self) -> None:
        self._send(302, b"", "text/plain", Location="/loop/again.jpg")

    def case_to_file(self) -> None:
        self._send(302, b"", "text/plain", Location=f"file://{self.secret}")

    def case_to_ftp(self) -> None:
        self._send(302, b"", "text/plain", Location=f"ftp://127.0.0.1:{closed_port()}/x.jpg")


def wait_for_slow_clients(held: dict[str, float]) -> None:
    """Give the slow handlers a moment to see their clients gone (they look every 0.5 s)."""
    deadline = time.monotonic() + 2 * TIMEOUT
    while set(held) != set(SLOW_CASES) and time.monotonic() < deadline:
        time.sleep(0.1)


@contextmanager
def hostile_server(secret: Path) -> Iterator[tuple[str, dict[str, float]]]:
    """Serve ``_Hostile`` on 127.0.0.1; yields the base URL and the hold times of the slow cases."""
    stop, held = threading.Event(), {}
    handler = type("Handler", (_Hostile,), {"stop": stop, "secret": str(secret), "held": held})
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": 128})
    server = server_class(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", held
    finally:
        stop.set()  # ends the slow handlers at once
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# The cases: URL -> outcome (the drop reason, or "kept")

# served URLs, the same outcome from both readers; None: per reader (see the tests)
SERVED: dict[str, str | None] = {
    "ok": "kept",
    "stall": "download_failed:timeout",
    "drip": "download_failed:timeout",
    "reset": "download_failed:connection_reset",
    "close": "download_failed:no_response",
    "long_length": "download_failed:incomplete_body",
    "short_length": "resize_failed",  # a truncated JPEG: OpenCV refuses it
    "html": "resize_failed",
    "empty_body": "download_failed:empty_body",
    "zero_byte_image": "download_failed:empty_body",
    "truncated": "resize_failed",
    "tiny": None,
    "bomb": "download_failed:too_many_pixels",
    "exif": "kept",
    "moved": "kept",
    "loop": "download_failed:redirect_loop",
    "to_file": "download_failed:redirect_refused",
    "to_ftp": "download_failed:redirect_refused",
    "missing": "download_failed:http_404",
    "e500": "download_failed:http_500",
    "e429": "download_failed:http_429",
}

PNG_1X1 = "data:image/png;base64," + base64.b64encode(png((1, 1))).decode()


def input_urls(base: str, secret: Path) -> dict[str, tuple[str, str | None]]:
    """Bad URLs in the input itself: name -> (URL, outcome; None: per reader)."""
    return {
        "malformed": ("http://[::1/x.jpg", "download_failed:invalid_url"),
        "no_scheme": ("not a url at all", "download_failed:invalid_url"),
        "empty_url": ("", None),
        "file_secret": (f"file://{secret}", "download_failed:invalid_url"),
        "file_passwd": ("file:///etc/passwd", "download_failed:invalid_url"),
        "data_uri": (PNG_1X1, "download_failed:invalid_url"),
        "ten_kb": (f"{base}/ok/long.jpg?" + "q" * 10_240, "download_failed:invalid_url"),
        "non_ascii": (f"{base}/ok/bild-über-ß 猫.jpg", "kept"),
        "closed_port": (f"http://127.0.0.1:{closed_port()}/x.jpg", "download_failed:unreachable"),
    }


def all_cases(base: str, secret: Path, per_reader: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Every case: name -> (URL, outcome)."""
    cases = {name: (f"{base}/{name}/{name}.jpg", outcome) for name, outcome in SERVED.items()}
    inputs = input_urls(base, secret)
    assert not cases.keys() & inputs.keys()
    cases |= inputs
    return {name: (url, outcome or per_reader[name]) for name, (url, outcome) in cases.items()}


# --------------------------------------------------------------------------------------------------
# What a build may touch

_OPENED: list[str] = []
_WATCHED: set[str] = set()


def _audit_open(event: str, args: tuple) -> None:
    path = args[0] if event == "open" and _WATCHED and args else None
    if isinstance(path, str | bytes | os.PathLike) and os.fsdecode(path) in _WATCHED:
        _OPENED.append(os.fsdecode(path))


@functools.cache
def _install_audit_hook() -> None:
    sys.addaudithook(_audit_open)  # cannot be removed: it does nothing while nothing is watched


@contextmanager
def never_opened(*paths: Path) -> Iterator[None]:
    """Fail if this process opens one of ``paths`` meanwhile (the builds run with one worker: in here)."""
    _install_audit_hook()
    _WATCHED.update(str(p) for p in paths)
    _OPENED.clear()
    try:
        yield
    finally:
        _WATCHED.clear()
    assert not _OPENED, f"the build opened {_OPENED}"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@contextmanager
def writes_only_under(root: Path, *allowed: str) -> Iterator[None]:
    """Fail if anything appears in ``root`` outside its ``allowed`` folders; the working directory is an
    empty folder of ``root`` meanwhile, so a relative path written is caught too."""
    (root / "cwd").mkdir()
    before, cwd = tree(root), os.getcwd()
    os.chdir(root / "cwd")
    try:
        yield
    finally:
        os.chdir(cwd)
    new = {p for p in tree(root) - before if p.split(os.sep)[0] not in allowed}
    assert not new, f"written outside {allowed}: {sorted(new)[:10]}"


def secret_file(tmp_path: Path) -> Path:
    """A valid JPEG that would become a sample if a ``file:`` URL were ever read."""
    path = tmp_path / "secret.jpg"
    path.write_bytes(jpeg(99))
    return path


def check_bounded(held: dict[str, float], elapsed: float) -> None:
    """The slow servers were cut near the timeout (not at their own limit), the build soon after."""
    assert set(held) == set(SLOW_CASES), held
    # the server looks every 0.5 s and starts its clock after the client's: a little slack, far from HOLD_LIMIT
    assert all(TIMEOUT / 2 <= t <= TIMEOUT + 2 for t in held.values()), held
    assert elapsed < HOLD_LIMIT, elapsed


def check_accounting(out: Path, source: str, rows: int) -> dict[str, Any]:
    report = verify_dataset(out)
    assert report.ok, report.problems
    audited = audit(out)["sources"][source]
    assert audited["input"] == rows
    return audited


def rejects(out: Path) -> dict[str, tuple[str, str]]:
    """origin -> (reason, detail) of every rejected sample."""
    files = sorted((out / "rejects").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return {r["origin"]: (r["reason"], r["detail"]) for r in table.to_pylist()}


# --------------------------------------------------------------------------------------------------
# The builds


def _laion_metadata(directory: Path, urls: list[str]) -> None:
    directory.mkdir()
    n = len(urls)
    table = {
        "SAMPLE_ID": list(range(n)),
        "URL": urls,
        "TEXT": [f"a photo of case number {i}" for i in range(n)],
        "HEIGHT": pa.array([150.0] * n, pa.float64()),
        "WIDTH": pa.array([200.0] * n, pa.float64()),
        "LICENSE": ["?"] * n,
        "NSFW": ["UNLIKELY"] * n,
        "similarity": [0.35] * n,
    }
    pq.write_table(pa.table(table), directory / "part-00000.parquet")


@pytest.mark.timeout(120)
def test_laion_build_keeps_or_drops_every_url_of_a_hostile_server_in_bounded_time(tmp_path: Path):
    secret = secret_file(tmp_path)
    with hostile_server(secret) as (base, held):
        # the image_size step of the built-in recipe drops the real 1x1 image; selection drops the empty URL
        cases = all_cases(base, secret, {"tiny": "image_too_small", "empty_url": "missing_url"})
        _laion_metadata(tmp_path / "meta", [url for url, _ in cases.values()])
        downloads = len(cases) - 1
        recipe = load_recipe(
            "laion_subsets",
            [
                f"sources.laion.path={tmp_path / 'meta'}",
                f"sources.laion.cache_dir={tmp_path / 'cache'}",
                f"sources.laion.sizes=[{downloads}]",
                f"sources.laion.download.samples_per_shard={downloads}",
                f"sources.laion.download.thread_count={downloads}",
                f"sources.laion.download.timeout={TIMEOUT}",
                "output.rejects=true",
            ],
        )
        _build_watched(recipe, tmp_path, secret, held)
    out = tmp_path / "out"
    audited = check_accounting(out, "laion", len(cases))
    kept = {r.meta["url"] for r in iter_dataset(out)}
    dropped = rejects(out)
    outcome = {name: "kept" if url in kept else dropped.get(url, ("lost", ""))[0] for name, (url, _) in cases.items()}
    outcome["empty_url"] = dropped["metadata"][0]  # the selection's drops have no URL as their origin
    assert outcome == {name: expected for name, (_, expected) in cases.items()}
    expected_drops = Counter(o for _, o in cases.values() if o != "kept")
    assert sum(audited["dropped"].values()) + audited["samples"] == len(cases)
    assert audited["samples"] == sum(o == "kept" for _, o in cases.values())
    assert Counter(r for r, _ in dropped.values()) == expected_drops == Counter(audited["dropped"])


def _build_watched(recipe: Any, tmp_path: Path, secret: Path, held: dict[str, float]) -> None:
    """Build into ``tmp_path/out``: writes only under out/ and cache/, never a ``file:`` read, in bounded time."""
    started = time.monotonic()
    with writes_only_under(tmp_path, "out", "cache"), never_opened(secret, Path("/etc/passwd")):
        build(recipe, tmp_path / "out", workers=1, progress=False)
    elapsed = time.monotonic() - started
    wait_for_slow_clients(held)
    check_bounded(held, elapsed)


def _obelics_rows(base: str, cases: dict[str, tuple[str, str]]) -> list[dict]:
    """One document per case: text, the case's image, text, a good image; one more with only the secret."""
    rows = [
        row([("text", paragraph(0)), ("image", url), ("text", paragraph(1)), ("image", f"{base}/ok/doc{i}.jpg")])
        for i, (url, _) in enumerate(cases.values())
    ]
    rows.append(row([("text", paragraph(2)), ("image", cases["file_secret"][0])]))
    return rows


@pytest.mark.timeout(120)
def test_obelics_build_keeps_or_drops_every_image_of_a_hostile_server_in_bounded_time(tmp_path: Path):
    secret = secret_file(tmp_path)
    with hostile_server(secret) as (base, held):
        # the image rules apply to the real size too (1x1); an empty URL is a document's image, not a row
        cases = all_cases(base, secret, {"tiny": "image_too_small", "empty_url": "download_failed:invalid_url"})
        rows = _obelics_rows(base, cases)
        (tmp_path / "data").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
        recipe = load_recipe(
            "obelics",
            [
                f"sources.obelics.path={tmp_path / 'data'}",
                f"sources.obelics.cache_dir={tmp_path / 'cache'}",
                f"sources.obelics.download.thread_count={2 * len(cases)}",
                f"sources.obelics.download.timeout={TIMEOUT}",
                "output.rejects=true",
            ],
        )
        _build_watched(recipe, tmp_path, secret, held)
    out = tmp_path / "out"
    audited = check_accounting(out, "obelics", len(rows))
    docs = list(iter_dataset(out))
    assert audited["dropped"] == {"no_image_downloaded": 1} and len(docs) == len(cases)
    outcome = {}
    for name, doc in zip(cases, docs, strict=True):  # one document per case, in order
        failed = doc.meta["images_failed"]
        assert sum(im is not None for im in doc.images) == 2 - len(failed)  # the good image is always there
        outcome[name] = next(iter(failed)) if failed else "kept"
    assert outcome == {name: expected for name, (_, expected) in cases.items()}
    reason, detail = next(iter(rejects(out).values()))
    assert (reason, json.loads(detail)) == ("no_image_downloaded", {"download_failed:invalid_url": 1})


# --------------------------------------------------------------------------------------------------
# The pieces


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.org/a.jpg", None),
        ("HTTPS://example.org/a b.jpg", None),
        ("", "empty URL"),
        ("   ", "empty URL"),
        (None, "empty URL"),
        ("file:///etc/passwd", "scheme 'file' is not fetched (http and https only)"),
        ("ftp://example.org/a.jpg", "scheme 'ftp' is not fetched (http and https only)"),
        ("data:image/png;base64,AAAA", "scheme 'data' is not fetched (http and https only)"),
        ("//example.org/a.jpg", "scheme '' is not fetched (http and https only)"),
        ("http:///a.jpg", "URL without a host"),
        ("http://[::1/a.jpg", "malformed URL: Invalid IPv6 URL"),
        ("http://example.org:99999/a.jpg", "malformed URL: Port out of range 0-65535"),
        ("http://example.org/" + "a" * 9000, "URL of 9019 characters (at most 8192)"),
    ],
)
def test_only_http_urls_with_a_host_are_fetched(url: object, problem: str | None):
    assert url_problem(url) == problem


def test_urls_are_sent_as_a_browser_encodes_them():
    sent = "http://h/bild%20%C3%BCber%20%C3%9F.jpg?q=%E7%8C%AB&x=%20"
    assert to_uri("http://h/bild über ß.jpg?q=猫&x=%20#frag") == sent
    assert to_uri("http://h") == "http://h/"
    assert to_uri("http://h/a%2Fb;c=d") == "http://h/a%2Fb;c=d"  # escapes and reserved characters stay


@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("timeout: no complete response within 2 s (IncompleteRead(3 bytes read))", "timeout"),
        ("http_404: HTTP Error 404: Not Found", "http_404"),
        ("redirect_refused: HTTP Error 302: Found - Redirection to url 'file:///x' is not allowed", "redirect_refused"),
        ("made_up: something", "other"),
        # img2dataset's own wording, in shards downloaded before our fetch
        ("HTTP Error 404: Not Found", "http_404"),
        ("timed out", "timeout"),
        ("Use of image disallowed by X-Robots-Tag directive", "opted_out"),
        ("<urlopen error [Errno 111] Connection refused>", "unreachable"),
        ("IncompleteRead(5 bytes read, 3 more expected)", "other"),
        (None, "other"),
    ],
)
def test_error_categories(message: str | None, category: str):
    assert error_category(message) == category


def test_img2dataset_gets_its_own_fetch_back_after_a_shard():
    from curation.sources.download import fetch

    stock = fetch.i2d_downloader.download_image
    with fetch._SWAP.installed(), fetch._SWAP.installed():
        assert fetch.i2d_downloader.download_image is fetch.fetch_image
    assert fetch.i2d_downloader.download_image is stock


def test_a_cached_success_of_a_url_we_never_fetch_is_a_drop():
    """Shards img2dataset downloaded with its own fetch (before ours) may hold a ``file:`` URL's bytes."""
    assert row_failure({"url": "file:///etc/passwd", "status": "success"}) == (
        "download_failed:invalid_url",
        "scheme 'file' is not fetched (http and https only)",
    )
    assert row_failure({"url": "http://h/a.jpg", "status": "success"}) is None
    failed = {"url": "http://h/a.jpg", "status": "failed_to_resize", "error_message": "Image decoding error"}
    assert row_failure(failed) == ("resize_failed", "Image decoding error")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("case", "category"),
    [("drip_headers", "timeout"), ("huge_declared", "too_large"), ("huge_unsized", "too_large")],
)
def test_the_timeout_bounds_headers_too_and_bodies_are_capped(tmp_path: Path, case: str, category: str):
    from curation.sources.download.fetch import MAX_BODY_BYTES, fetch_image

    with hostile_server(secret_file(tmp_path)) as (base, held):
        started = time.monotonic()
        _, body, error = fetch_image((0, f"{base}/{case}/x.jpg"), TIMEOUT, None, None)
        elapsed = time.monotonic() - started
        while case == "drip_headers" and case not in held and time.monotonic() < started + 3 * TIMEOUT:
            time.sleep(0.1)  # the server looks for its client every 0.5 s
    assert body is None and error_category(error) == category, error
    assert elapsed < TIMEOUT + 1
    if case == "drip_headers":
        assert TIMEOUT / 2 <= held[case] <= TIMEOUT + 2
    if category == "too_large":
        assert str(MAX_BODY_BYTES) in error
