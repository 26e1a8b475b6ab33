"""LAION downloads through img2dataset's Ray distribution (``LaionReader.download_with_ray``) give exactly the
records and drops of the local path (img2dataset in the partition task), on a real local Ray and a loopback
image server: failures with the same reasons, truncated partitions, resume, failed Ray tasks."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from curation.recipe import LaionSource
from curation.sample import Sample
from curation.sources.base import Partition
from curation.sources.laion.reader import LaionReader
from tests.laion_data import image_server, write_images, write_metadata

N = 16  # selected rows: 4 download partitions of 4
PLANTED = {"download_failed:http_404", "resize_failed", "download_failed:timeout", "download_failed:opted_out"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a driver connection another module left open
        ray.shutdown()
    # address="local": a Ray of our own, never one that `ray start` left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(metadata dir, hits per path): 16 served rows, of which one 404s, one is an HTML page, one answers after
    the timeout and one opts out with X-Robots-Tag."""
    root = tmp_path_factory.mktemp("laion")
    hits: Counter = Counter()
    write_images(root / "www", N)
    with image_server(root / "www", hits) as base:
        write_metadata(root / "meta", base, N, special={9: "slow", 10: "optout"})
        (root / "www" / "5.jpg").unlink()
        (root / "www" / "7.jpg").write_bytes((root / "www" / "page.jpg").read_bytes())
        yield root / "meta", hits


def reader(meta: Path, cache: Path) -> LaionReader:
    return LaionReader(
        LaionSource(
            name="laion",
            reader="laion",
            path=str(meta),
            sizes=[8, N],
            cache_dir=str(cache),
            download={"samples_per_shard": 4, "thread_count": 4, "timeout": 2, "resize_mode": "no"},
        )
    )


def truncate(p: Partition, rows: int) -> Partition:
    """As the runner cuts the last partition of a ``--limit``."""
    return Partition(p.source, p.index, rows, {**p.spec, "limit_rows": rows, "stop": p.spec["start"] + rows})


def outcome(r: LaionReader, parts: list[Partition], cache: Path) -> dict[int, list[tuple]]:
    """Everything read() yields per partition, in order; download paths relative to the cache (two caches are
    compared)."""
    out: dict[int, list[tuple]] = {}
    for p in parts:
        rows = out.setdefault(p.index, [])
        for item in r.read(p):
            if isinstance(item, Sample):
                rec = item.record
                meta = json.dumps(rec.meta, sort_keys=True)
                rows.append(("sample", rec.key, rec.image, rec.caption, meta, item.origin))
            else:
                origin = item.origin.replace(str(cache), "<cache>")
                rows.append(("drop", item.reason, item.source, origin, item.key, item.detail, item.count))
    return out


def flat(result: dict[int, list[tuple]]) -> list[tuple]:
    return [row for rows in result.values() for row in rows]


def downloads(parts: list[Partition]) -> list[Partition]:
    return [p for p in parts if p.spec["kind"] == "download"]


def flaky_ray_download(ray, modes: dict[int, str]):
    """img2dataset's ``ray_download`` with injected failures per shard id: ``raise`` (the task fails), ``status``
    (the Downloader reports a failure and writes nothing), ``late`` (it downloads, then reports a failure)."""

    def run(downloader, shard):  # a closure: pickled by value for the workers
        mode = modes.get(shard[0])
        if mode == "raise":
            raise RuntimeError(f"injected failure of shard {shard[0]}")
        if mode == "status":
            return False, shard
        status, row = downloader(shard)
        return (False, shard) if mode == "late" else (status, row)

    return ray.remote(run)


@pytest.fixture(scope="module")
def local_outcome(server, tmp_path_factory):
    """The local path: every partition downloads in read()."""
    meta, _ = server
    cache = tmp_path_factory.mktemp("local-cache")
    r = reader(meta, cache)
    result = outcome(r, r.plan(), cache)
    reasons = {row[1] for row in flat(result) if row[0] == "drop"}
    assert reasons >= PLANTED and sum(row[0] == "sample" for row in flat(result)) == N - len(PLANTED)
    return result


@pytest.mark.slow
def test_ray_download_is_the_local_path_and_resumes(ray_cluster, server, local_outcome, tmp_path):
    meta, hits = server
    r = reader(meta, tmp_path / "cache")
    parts = r.plan()
    assert len(downloads(parts)) == 4
    r.download_with_ray(parts)
    dirs = [Path(p.spec["download_dir"]) for p in downloads(parts)]
    for d in dirs:
        assert sorted(f.name for f in d.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert not (dirs[0].parent / "ray-stage").exists()
    stamps = [(d / "00000_stats.json").stat().st_mtime_ns for d in dirs]
    fetched = sum(hits.values())
    # the same records, bytes and drops (reasons, keys, details) as the local path; read() fetches nothing
    assert outcome(r, parts, tmp_path / "cache") == local_outcome
    assert sum(hits.values()) == fetched
    # a second call (a resumed build) has nothing left to download
    r.download_with_ray(parts)
    assert sum(hits.values()) == fetched
    assert [(d / "00000_stats.json").stat().st_mtime_ns for d in dirs] == stamps


@pytest.mark.slow
def test_truncated_and_gapped_partitions(ray_cluster, server, tmp_path):
    """A --limit cuts the last partition short; a partition already done is not passed (a resumed build):
    shard k is exactly partition k's rows, the others are skipped as img2dataset's done shards."""
    meta, _ = server
    local, ray_reader = reader(meta, tmp_path / "local"), reader(meta, tmp_path / "ray")
    parts = downloads(ray_reader.plan())
    cut = [parts[0], parts[1], truncate(parts[2], 3)]
    ray_reader.download_with_ray([cut[0], cut[2]])  # partition 1 "finished earlier": not given
    assert not Path(cut[1].spec["download_dir"]).exists()
    rows = json.loads((Path(cut[2].spec["download_dir"]) / "00000_stats.json").read_text())["count"]
    assert rows == 3
    ray_reader.download_with_ray(cut)  # now 1 only
    local_cut = downloads(local.plan())
    local_cut = [local_cut[0], local_cut[1], truncate(local_cut[2], 3)]
    expected = outcome(local, local_cut, tmp_path / "local")
    assert [len(rows) for rows in expected.values()] == [4, 4, 3]
    assert outcome(ray_reader, cut, tmp_path / "ray") == expected


@pytest.mark.slow
def test_failed_ray_tasks_are_downloaded_by_their_partitions(ray_cluster, server, local_outcome, tmp_path, monkeypatch):
    from img2dataset import distributor

    meta, hits = server
    cache = tmp_path / "cache"
    r = reader(meta, cache)
    parts = r.plan()
    real = distributor.ray_download
    monkeypatch.setattr(
        distributor, "ray_download", flaky_ray_download(ray_cluster, {1: "raise", 2: "status", 3: "late"})
    )
    r.download_with_ray(parts)  # no exception: the build goes on
    dirs = [Path(p.spec["download_dir"]) for p in downloads(parts)]
    assert [(d / "00000_stats.json").is_file() for d in dirs] == [True, False, False, True]
    assert not (dirs[2] / "00000.tar").exists()
    log = (cache / "laion-download").rglob("ray-stage.log")
    assert "RuntimeError: injected failure of shard 1" in next(log).read_text()
    # shard 3 reported a failure after finishing its output: installed; shards 1 and 2 are downloaded by
    # their partitions (read()), as on the local path: the outcome is the local one, nothing lost
    fetched = sum(hits.values())
    monkeypatch.setattr(distributor, "ray_download", real)
    stamp = (dirs[0] / "00000_stats.json").stat().st_mtime_ns
    assert outcome(r, parts, cache) == local_outcome
    assert sum(hits.values()) > fetched  # the failed shards were fetched by read()
    assert (dirs[0] / "00000_stats.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_cluster_that_cannot_run_img2dataset_raises(ray_cluster, server, tmp_path, monkeypatch):
    from img2dataset import distributor

    from curation.errors import CurationError

    meta, _ = server
    r = reader(meta, tmp_path / "cache")
    parts = downloads(r.plan())[:2]
    monkeypatch.setattr(distributor, "ray_download", flaky_ray_download(ray_cluster, {0: "raise", 1: "raise"}))
    with pytest.raises(CurationError, match="every img2dataset download task failed on the Ray cluster"):
        r.download_with_ray(parts)
    assert not any((Path(p.spec["download_dir"]) / "00000_stats.json").exists() for p in parts)


def test_nothing_to_download_does_not_touch_ray(tmp_path, monkeypatch):
    """Only metadata drops, or every partition already downloaded: no Ray call (here Ray cannot be imported)."""
    meta = tmp_path / "meta"
    write_metadata(meta, "http://127.0.0.1:9", N)
    r = reader(meta, tmp_path / "cache")
    parts = r.plan()
    for p in downloads(parts):
        d = Path(p.spec["download_dir"])
        d.mkdir(parents=True)
        (d / "00000_stats.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r.download_with_ray(parts)
    r.download_with_ray([p for p in parts if p.spec["kind"] != "download"])
    r.download_with_ray([])
    with pytest.raises(ImportError):
        (Path(parts[0].spec["download_dir"]) / "00000_stats.json").unlink()
        r.download_with_ray(parts)
