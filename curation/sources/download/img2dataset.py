"""Download one img2dataset shard in this process: img2dataset's own Reader, Downloader, Resizer and
WebDatasetSampleWriter, as its pool workers run them. ``img2dataset.download()`` would start a logger and
a pool process per call (seconds of imports each); our executor already spreads partitions over processes.

``make_reader`` and ``make_downloader`` build those objects from our ``Img2datasetOptions`` for both paths
(the Downloader fetches each URL with ``curation.sources.download.fetch``, not with img2dataset's own fetch):
``download_shard`` here, and ``curation.sources.download.ray_download`` (img2dataset's Ray distributor, one Ray task
per shard) when builds run on Ray. Called inside a Ray task (a partition of a build on Ray: OBELICS
documents, or a LAION shard the driver's Ray stage failed on), ``download_shard`` hands the shard to
img2dataset's Ray task (``ray_download``) too, so every img2dataset download of a Ray build is one of
img2dataset's own Ray tasks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# img2dataset.download's default: X-Robots-Tag directives that opt an image out of AI use
DEFAULT_OPT_OUTS = ["noai", "noimageai", "noindex", "noimageindex"]
# img2dataset.download's default: shard file names have 5 digits (00000.tar)
OOM_SHARD_COUNT = 5


def shard_name(shard_id: int) -> str:
    """The file stem img2dataset gives shard ``shard_id`` (``00000``)."""
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


def _quiet_imports() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations checks the network per process


def make_reader(
    url_list: Path,
    caption: bool,
    extra_columns: list[str],
    per_shard: int,
    done_shards: set[int],
    tmp: Path,
    start_shard_id: int = 0,
) -> Any:
    """img2dataset's Reader of a parquet file (or a directory of them, in name order: each file starts a new
    shard) with columns ``url``, optionally ``caption``, and ``extra_columns``; it writes one feather per shard
    to ``tmp``, skipping ``done_shards``; shard ids count from ``start_shard_id``."""
    _quiet_imports()
    from img2dataset.reader import Reader

    return Reader(
        str(url_list),
        "parquet",
        "url",
        "caption" if caption else None,
        None,
        None,
        extra_columns or None,
        per_shard,
        done_shards,
        str(tmp),
        start_shard_id,
    )


def make_downloader(opts: Any, output_folder: Path, column_list: list[str], caption: bool, per_shard: int) -> Any:
    """img2dataset's Downloader (webdataset writer, sha256, exif) with the Resizer and the download options of
    ``opts`` (``Img2datasetOptions``), fetching with ``curation.sources.download.fetch`` (http(s) only, ``timeout`` per
    whole attempt, size and pixel limits); it writes shard N as ``output_folder/NNNNN.tar|.parquet|_stats.json``."""
    _quiet_imports()
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    from curation.sources.download.fetch import GuardedDownloader

    resizer = Resizer(
        image_size=opts.image_size,
        resize_mode=opts.resize_mode,
        resize_only_if_bigger=opts.resize_only_if_bigger,
        encode_quality=opts.encode_quality,
        encode_format=opts.encode_format,
    )
    directives = DEFAULT_OPT_OUTS if opts.disallowed_header_directives is None else opts.disallowed_header_directives
    return GuardedDownloader(
        sample_writer_class=WebDatasetSampleWriter,
        resizer=resizer,
        thread_count=opts.thread_count,
        save_caption=caption,
        extract_exif=True,
        output_folder=str(output_folder),
        column_list=column_list,
        timeout=opts.timeout,
        number_sample_per_shard=per_shard,
        oom_shard_count=OOM_SHARD_COUNT,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format=opts.encode_format,
        retries=opts.retries,
        user_agent_token=opts.user_agent_token,
        disallowed_header_directives=directives or None,
    )


def download_shard(table: pa.Table, out: Path, opts: Any, extra_columns: list[str]) -> None:
    """Download the ``url`` (and ``caption``) rows of ``table`` into ``out`` as img2dataset shard 00000
    (``00000.tar``, ``00000.parquet`` with every row and its status, ``00000_stats.json`` when done)."""
    out.mkdir(parents=True, exist_ok=True)
    with _fds_to(out.parent / f"{out.name}.log"):  # img2dataset prints progress
        slice_path = out.parent / f"{out.name}.input.parquet"
        pq.write_table(table, slice_path)
        tmp = out.parent / f"{out.name}.tmp"
        tmp.mkdir(exist_ok=True)
        per_shard = max(table.num_rows, 1)  # everything is img2dataset's shard 00000
        caption = "caption" in table.column_names
        reader = make_reader(slice_path, caption, extra_columns, per_shard, set(), tmp)
        downloader = make_downloader(opts, out, reader.column_list, caption, per_shard)
        on_ray = _img2dataset_ray_task()
        for shard in reader:
            if on_ray is not None:
                on_ray(downloader, shard)
            else:
                downloader(shard)
        shutil.rmtree(tmp, ignore_errors=True)


def _img2dataset_ray_task() -> Callable[[Any, Any], None] | None:
    """Inside a Ray task: a function running one img2dataset shard as img2dataset's own Ray task, on this node:
    it writes into the calling task's ``out``, which need not be on storage the nodes share."""
    ray = sys.modules.get("ray")  # never imported here: only a Ray worker has it loaded already
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    from img2dataset import distributor
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)

    def _on_ray(downloader: Any, shard: Any) -> None:
        try:  # the calling task waits without holding its CPU (Ray releases it during ray.get)
            ray.get(distributor.ray_download.options(scheduling_strategy=here).remote(downloader, shard))
        except ray.exceptions.RayError:  # that worker or node died: download here instead, as locally
            downloader(shard)

    return _on_ray


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
