"""img2dataset output for the ``img2dataset`` reader's tests: ``img2dataset.download`` itself fetches a URL list from
a loopback server (URLs that 404, answer a web page, or time out) into its webdataset, parquet and files layouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.laion_data import image_server, write_images

N_IMAGES = 6
PER_SHARD = 5
FAILED = {"download_failed:http_404": 1, "resize_failed": 1, "download_failed:timeout": 1}
N_URLS = N_IMAGES + sum(FAILED.values())
FORMATS = ("webdataset", "parquet", "files")


def url_list(path: Path, base: str) -> list[dict]:
    urls = [f"{base}/{i}.jpg" for i in range(N_IMAGES)]
    urls += [f"{base}/missing.jpg", f"{base}/page.jpg", f"{base}/slow/0.jpg"]  # 404, a web page, too slow (3 s)
    rows = [{"url": u, "caption": f"caption number {i}", "similarity": 0.25 + i / 100} for i, u in enumerate(urls)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def img2dataset_download(url_list: Path, out: Path, output_format: str, hide: Path) -> subprocess.Popen:
    """``img2dataset.download`` itself, with its logger and pool processes, in a subprocess (it sets a SIGINT handler
    of its own). ``hide`` holds a ``torch`` that is not there: img2dataset never uses torch, but webdataset imports it
    when it can, which would double the seconds each of its three processes spends importing."""
    code = (
        "import img2dataset, sys; img2dataset.download(url_list=sys.argv[1], output_folder=sys.argv[2], "
        "output_format=sys.argv[3], input_format='parquet', caption_col='caption', "
        "save_additional_columns=['similarity'], resize_mode='no', skip_reencode=True, thread_count=16, "
        f"timeout=2, number_sample_per_shard={PER_SHARD}, processes_count=1)"
    )
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": path}
    with (out.parent / f"{output_format}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(url_list), str(out), output_format], stdout=log, stderr=log, env=env
        )


def download_formats(root: Path) -> dict:
    """The same URL list downloaded by ``img2dataset.download`` into ``root/<format>`` for each output format (the
    three at once): {"root", "served": image name -> the bytes served, "captions": URL -> caption}."""
    write_images(root / "www", N_IMAGES)
    served = {f"{i}.jpg": (root / "www" / f"{i}.jpg").read_bytes() for i in range(N_IMAGES)}
    (root / "hide").mkdir()
    (root / "hide" / "torch.py").write_text('raise ModuleNotFoundError("hidden by the test", name="torch")\n')
    with image_server(root / "www") as base:
        rows = url_list(root / "urls.parquet", base)
        runs = {fmt: img2dataset_download(root / "urls.parquet", root / fmt, fmt, root / "hide") for fmt in FORMATS}
        try:
            for run in runs.values():
                run.wait(timeout=120)
        finally:
            for run in runs.values():
                if run.poll() is None:
                    run.kill()
                    run.wait()
    for fmt, run in runs.items():
        assert run.returncode == 0, (root / f"{fmt}.log").read_text()[-3000:]
    captions = {r["url"]: r["caption"] for r in rows}
    return {"root": root, "served": served, "captions": captions}


def recipe(path: Path | str, **source) -> dict:
    """A recipe reading the download at ``path`` (a folder or an s3:// prefix) as source ``web``."""
    return {
        "name": "i2d",
        "sources": [{"name": "web", "reader": "img2dataset", "path": str(path), **source}],
        "output": {"kind": "pair", "rejects": True, "sidecar_scores": ["similarity"]},
    }


class CountedFile:
    """A file that counts the bytes read and remembers every seek (from, to)."""

    def __init__(self, path: Path, log: dict) -> None:
        self.f = path.open("rb")
        self.log = log

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def fileno(self) -> int:
        return self.f.fileno()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.log["read"] += len(data)
        return data

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        before = self.f.tell()
        after = self.f.seek(offset, whence)
        self.log["seeks"].append((before, after))
        return after
