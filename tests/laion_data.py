"""LAION test inputs in the real layouts, and a loopback image server."""

from __future__ import annotations

import functools
import http.server
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: Counter  # set per server: requests per path

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        if self.path.startswith("/slow/"):
            time.sleep(3)  # longer than the test's img2dataset timeout
            self.path = self.path[len("/slow") :]
        if self.path.startswith("/optout/"):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("X-Robots-Tag", "noai")
            data = (Path(self.directory) / self.path[len("/optout/") :]).read_bytes()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


@contextmanager
def image_server(root: Path, hits: Counter | None = None) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1; yields the base URL. /slow/<f> answers late, /optout/<f> sends noai.
    ``hits`` (if given) counts requests per path."""
    handler = type("Handler", (_Handler,), {"hits": hits if hits is not None else Counter()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_images(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        b = io.BytesIO()
        Image.new("RGB", (200 + i, 150), ((i * 37) % 256, (i * 91) % 256, 80)).save(b, "JPEG", quality=90)
        (root / f"{i}.jpg").write_bytes(b.getvalue())
    (root / "page.jpg").write_text("<html><body>a web page, not an image</body></html>")


def write_metadata(directory: Path, base: str, n_good: int, special: dict[int, str] | None = None) -> dict[str, int]:
    """Two parquet parts: an "original"-layout part and a "joined"-layout part (different column order and
    types, nulls, ``__index_level_0__``). Returns the planted drops by reason."""
    directory.mkdir(parents=True, exist_ok=True)
    half = n_good // 2
    special = special or {}
    urls = [f"{base}/{special[i]}/{i}.jpg" if i in special else f"{base}/{i}.jpg" for i in range(n_good)]
    orig = {
        "SAMPLE_ID": list(range(half + 4)),
        "URL": [*urls[:half], f"{base}/0.jpg", f"{base}/1.jpg", f"{base}/2.jpg", None],
        "TEXT": [f"a photo of thing number {i}" for i in range(half)] + ["dup of zero", "nsfw row", "x", "no url"],
        "HEIGHT": pa.array([150.0] * half + [150.0, 150.0, 150.0, None], pa.float64()),
        "WIDTH": pa.array([200.0 + i for i in range(half)] + [200.0, 201.0, 202.0, None], pa.float64()),
        "LICENSE": ["?"] * (half + 4),
        "NSFW": ["UNLIKELY"] * half + ["UNLIKELY", "NSFW", "UNLIKELY", "UNLIKELY"],
        "similarity": [0.35] * (half + 4),
    }
    pq.write_table(pa.table(orig), directory / "part-00000-aaaa-c000.snappy.parquet")
    rest = urls[half:]
    joined = {
        "__index_level_0__": list(range(len(rest) + 3)),
        "URL": [*rest, f"{base}/{n_good + 1}.jpg", f"{base}/{n_good + 2}.jpg", f"{base}/{n_good + 3}.jpg"],
        "TEXT": [f"an image showing item {i}" for i in range(half, n_good)] + ["low sim", "watermarked", "tiny"],
        "WIDTH": pa.array([200 + i for i in range(half, n_good)] + [300, 300, 20], pa.int32()),
        "HEIGHT": pa.array([150] * len(rest) + [300, 300, 20], pa.int32()),
        "similarity": [0.33] * len(rest) + [0.1, 0.33, 0.33],
        "hash": list(range(len(rest) + 3)),
        "punsafe": pa.array([0.01] * (len(rest) + 3), pa.float32()),
        "pwatermark": pa.array([0.1] * len(rest) + [0.1, 0.95, 0.1], pa.float32()),
    }
    pq.write_table(pa.table(joined), directory / "part-00001-bbbb-c000.snappy.parquet")
    return {
        "duplicate_url": 1,
        "nsfw_tag": 1,
        "caption_too_short": 1,
        "missing_url": 1,
        "low_similarity": 1,
        "watermark": 1,
        "too_small": 1,
    }
