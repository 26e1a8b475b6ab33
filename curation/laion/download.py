"""Download one img2dataset shard in this process: img2dataset's own Reader, Downloader, Resizer and
WebDatasetSampleWriter, as its pool workers run them. ``img2dataset.download()`` would start a logger and
a pool process per call (seconds of imports each); our executor already spreads partitions over processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# img2dataset.download's default: X-Robots-Tag directives that opt an image out of AI use
DEFAULT_OPT_OUTS = ["noai", "noimageai", "noindex", "noimageindex"]


def download_shard(table: pa.Table, out: Path, opts: Any, extra_columns: list[str]) -> None:
    """Download the ``url`` (and ``caption``) rows of ``table`` into ``out`` as img2dataset shard 00000
    (``00000.tar``, ``00000.parquet`` with every row and its status, ``00000_stats.json`` when done)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations checks the network per process
    out.mkdir(parents=True, exist_ok=True)
    with _fds_to(out.parent / f"{out.name}.log"):  # img2dataset prints progress
        from img2dataset.downloader import Downloader
        from img2dataset.reader import Reader
        from img2dataset.resizer import Resizer
        from img2dataset.writer import WebDatasetSampleWriter

        slice_path = out.parent / f"{out.name}.input.parquet"
        pq.write_table(table, slice_path)
        tmp = out.parent / f"{out.name}.tmp"
        tmp.mkdir(exist_ok=True)
        per_shard = max(table.num_rows, 1)  # everything is img2dataset's shard 00000
        caption = "caption" if "caption" in table.column_names else None
        reader = Reader(
            str(slice_path), "parquet", "url", caption, None, None, extra_columns or None, per_shard, set(), str(tmp), 0
        )
        resizer = Resizer(
            image_size=opts.image_size,
            resize_mode=opts.resize_mode,
            resize_only_if_bigger=opts.resize_only_if_bigger,
            encode_quality=opts.encode_quality,
            encode_format=opts.encode_format,
        )
        directives = (
            DEFAULT_OPT_OUTS if opts.disallowed_header_directives is None else opts.disallowed_header_directives
        )
        downloader = Downloader(
            sample_writer_class=WebDatasetSampleWriter,
            resizer=resizer,
            thread_count=opts.thread_count,
            save_caption=caption is not None,
            extract_exif=True,
            output_folder=str(out),
            column_list=reader.column_list,
            timeout=opts.timeout,
            number_sample_per_shard=per_shard,
            oom_shard_count=5,
            compute_hash="sha256",
            verify_hash_type=None,
            encode_format=opts.encode_format,
            retries=opts.retries,
            user_agent_token=opts.user_agent_token,
            disallowed_header_directives=directives or None,
        )
        for shard in reader:
            downloader(shard)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _fds_to(path: Path) -> Iterator[None]:
    """Send this process's (and its children's) stdout/stderr to ``path`` for the duration."""
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
