"""Builds on a real Ray cluster (a head and a worker node started with ``ray start`` on this machine): the
same bytes as the local executor, a killed worker's partition retried, a dead driver resumed, exact
accounting, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import load_recipe, validate_recipe
from shards import read_manifest, verify_dataset
from tests.builds import CLI, demo_recipe, make_inputs, tree_digest, write_recipe
from tests.laion_data import image_server, write_images, write_metadata

ray = pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")

from tests.ray_cluster import LocalRayCluster, start_cluster  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def _recipe(root: Path) -> dict:
    """The demo recipe with small partitions (12 of them) and the global near-duplicate steps as well."""
    recipe = demo_recipe(root, sources__0__partition_size=60, sources__1__partition_size=30)
    recipe["steps"] += [
        {"step": "near_dup_images", "hash": "phash", "max_distance": 4, "scope": "all"},
        {"step": "near_dup_text", "threshold": 0.9, "text": "qa", "scope": "all"},
    ]
    return recipe


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(workers=1)  # tests/conftest.py set the Ray environment of the session (ENV)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    make_inputs(root, n_captions=480, n_conversations=120)
    return root


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    build(validate_recipe(_recipe(inputs)), out, workers=2, progress=False)
    return out


def _ray_build(recipe: Path, out: Path, cluster: LocalRayCluster, env: dict | None = None, *args: str):
    cmd = [*CLI, "build", str(recipe), "--out", str(out), "-q", "--executor", "ray", "--address", cluster.address]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def _log(out: Path) -> dict:
    return json.loads(max((out / "_logs").glob("build-*.json")).read_text())


def test_ray_build_is_byte_identical_to_local(cluster, inputs, reference, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(inputs))
    out = tmp_path / "ds"
    done = _ray_build(recipe, out, cluster)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == tree_digest(reference)
    m, ref = read_manifest(out), read_manifest(reference)
    assert m.accounting == ref.accounting and m.duplicates == ref.duplicates
    assert m.duplicates  # the global steps found something to compare
    assert verify_dataset(out).ok
    log = _log(out)
    assert log["executor"] == {"kind": "ray", "address": cluster.address, "workers": None, "nodes": 2, "cpus": 2}
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["partitions"]) == 12 and log["partitions_skipped"] == 0


@pytest.mark.parametrize("crash_at", ["record:30", "rewrite_tar_written:1"])
def test_a_killed_worker_process_is_retried(crash_at, cluster, inputs, reference, tmp_path):
    """SIGKILL of the Ray worker running a partition (after 30 records) or committing a shard (its rewritten
    tar written, not yet renamed): Ray runs the task again, and the build is the same as an uninterrupted one,
    accounting included."""
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(inputs))
    marker = tmp_path / "killed-once"
    env = {"VLM_CURATION_CRASH_AT": crash_at, "VLM_CURATION_CRASH_ONCE": str(marker)}
    out = tmp_path / "ds"
    done = _ray_build(recipe, out, cluster, env)
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # a worker really died
    assert tree_digest(out) == tree_digest(reference)
    assert read_manifest(out).accounting == read_manifest(reference).accounting


def test_a_partition_that_keeps_killing_its_worker_fails_clearly(cluster, inputs, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(inputs))
    out = tmp_path / "ds"
    done = _ray_build(recipe, out, cluster, {"VLM_CURATION_CRASH_AT": "partition_staged:1"}, "--workers", "1")
    assert done.returncode != 0
    assert "failed on the Ray cluster 4 times" in done.stderr and "run the build again to resume" in done.stderr
    assert "Traceback" not in done.stderr
    again = _ray_build(recipe, out, cluster)
    assert again.returncode == 0 and "resumed" in again.stderr, again.stderr


def test_a_dead_driver_resumes_without_redoing_finished_partitions(cluster, inputs, reference, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(inputs))
    out = tmp_path / "ds"
    driver = _build_until(recipe, out, cluster, 3, stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = _finished(out)
    assert not (out / "dataset.json").exists() and finished >= 3
    done = _ray_build(recipe, out, cluster)
    assert done.returncode == 0, done.stderr
    log = _log(out)
    assert log["state"] == "resume" and log["partitions_skipped"] >= finished
    assert tree_digest(out) == tree_digest(reference)


def _build_until(recipe: Path, out: Path, cluster: LocalRayCluster, partitions: int, **popen) -> subprocess.Popen:
    """A Ray build started in the background, returned once ``partitions`` of its partitions are finished."""
    cmd = [*CLI, "build", str(recipe), "--out", str(out), "-q", "--executor", "ray", "--address", cluster.address]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, **popen)
    deadline = time.monotonic() + 120
    while _finished(out) < partitions and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return driver


def _finished(out: Path) -> int:
    work = out / "_work"
    return sum(1 for p in work.glob("p[0-9]*") if ".tmp" not in p.name and (p / "stats.json").is_file())


def test_a_mixture_builds_its_datasets_on_ray(cluster, inputs, tmp_path):
    mixture = {
        "kind": "mixture",
        "name": "mix",
        "datasets": {"demo": {"build": {k: v for k, v in _recipe(inputs).items() if k not in ("kind", "name")}}},
        "components": [
            {"name": "captions", "dataset": "demo", "target": {"answer_share": 40}},
            {"name": "conversations", "dataset": "demo", "target": {"answer_share": 60}},
        ],
    }
    recipe = write_recipe(tmp_path / "mix.yaml", mixture)
    local = subprocess.run([*CLI, "build", str(recipe), "--out", str(tmp_path / "local"), "-q"], capture_output=True)
    assert local.returncode == 0, local.stderr
    on_ray = _ray_build(recipe, tmp_path / "ray", cluster)
    assert on_ray.returncode == 0, on_ray.stderr
    assert tree_digest(tmp_path / "ray") == tree_digest(tmp_path / "local")


def test_a_laion_build_downloads_through_img2dataset_on_ray(cluster, tmp_path):
    """LAION on Ray: img2dataset's Ray tasks download every partition's shard first (404s and HTML pages
    included), then the partition tasks convert; the dataset equals a local build's, downloads included."""
    write_images(tmp_path / "www", 12)
    hits: Counter = Counter()
    with image_server(tmp_path / "www", hits) as base:
        write_metadata(tmp_path / "meta", base, 12)
        (tmp_path / "www" / "5.jpg").unlink()
        (tmp_path / "www" / "7.jpg").write_bytes((tmp_path / "www" / "page.jpg").read_bytes())

        def recipe(cache: str) -> Path:
            source = {
                "name": "laion",
                "reader": "laion",
                "path": str(tmp_path / "meta"),
                "sizes": [4, 8, 12],
                "cache_dir": str(tmp_path / cache),
                "download": {"samples_per_shard": 4, "thread_count": 4, "timeout": 2, "resize_mode": "no"},
            }
            doc = {"name": "laion", "sources": [source], "output": {"kind": "pair", "rejects": True}}
            return write_recipe(tmp_path / f"{cache}.yaml", doc)

        local = subprocess.run(
            [*CLI, "build", str(recipe("lc")), "-o", str(tmp_path / "local"), "-q"], capture_output=True
        )
        assert local.returncode == 0, local.stderr
        fetched_locally = sum(hits.values())
        on_ray = _ray_build(recipe("rc"), tmp_path / "ray", cluster)
        assert on_ray.returncode == 0, on_ray.stderr
    assert sum(hits.values()) == 2 * fetched_locally  # each URL fetched once per build, by img2dataset on Ray
    assert any((tmp_path / "rc").rglob("ray-stage.log"))  # the Ray download stage ran
    ours, theirs = tree_digest(tmp_path / "ray"), tree_digest(tmp_path / "local")
    recipe_free = {k: v for k, v in ours.items() if k not in ("dataset.json", "README.md", "stats.json")}
    assert recipe_free == {k: v for k, v in theirs.items() if k not in ("dataset.json", "README.md", "stats.json")}
    assert read_manifest(tmp_path / "ray").accounting == read_manifest(tmp_path / "local").accounting


def test_an_obelics_build_downloads_through_img2dataset_ray_tasks(cluster, tmp_path):
    """OBELICS on Ray: each partition task parses its documents, then hands its URL shard to img2dataset's own
    Ray task (a nested task); the dataset equals a local build's, 404s included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.integration.test_obelics_build import paragraph, row

    write_images(tmp_path / "www", 8)
    with image_server(tmp_path / "www") as base:
        docs = [
            row([("text", paragraph(i % 6)), ("image", f"{base}/{i}.jpg"), ("text", paragraph((i + 1) % 6))])
            for i in range(7)
        ] + [row([("text", paragraph(2)), ("image", f"{base}/missing.jpg")])]
        (tmp_path / "data").mkdir()
        pq.write_table(pa.Table.from_pylist(docs), tmp_path / "data" / "train-00000-of-00001.parquet")

        def recipe(cache: str) -> Path:
            source = {
                "name": "obelics",
                "reader": "obelics",
                "path": str(tmp_path / "data"),
                "partition_size": 3,
                "cache_dir": str(tmp_path / cache),
                "filters": {"paragraph": {"min_common_words": None}, "document": {"min_common_words": None}},
                "download": {"thread_count": 4, "timeout": 2, "resize_mode": "no"},
            }
            doc = {"name": "obelics", "sources": [source], "output": {"kind": "interleaved"}}
            return write_recipe(tmp_path / f"{cache}.yaml", doc)

        local = subprocess.run(
            [*CLI, "build", str(recipe("lc")), "-o", str(tmp_path / "local"), "-q"], capture_output=True
        )
        assert local.returncode == 0, local.stderr
        on_ray = _ray_build(recipe("rc"), tmp_path / "ray", cluster)
        assert on_ray.returncode == 0, on_ray.stderr
    ours, theirs = tree_digest(tmp_path / "ray"), tree_digest(tmp_path / "local")
    skip = ("dataset.json", "README.md", "stats.json")
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    assert read_manifest(tmp_path / "ray").accounting == read_manifest(tmp_path / "local").accounting
    assert read_manifest(tmp_path / "ray").totals["images"] == 7


def test_downloads_inside_ray_tasks_are_img2dataset_ray_tasks_on_the_same_node(cluster, tmp_path):
    """A partition task's img2dataset task runs on the partition's node: it writes where the partition reads (the
    source's cache_dir), which need not be storage the nodes share."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from curation.sources.download.img2dataset import _img2dataset_ray_task

    assert _img2dataset_ray_task() is None  # in a driver (or without Ray): the Downloader runs here
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    try:
        assert _img2dataset_ray_task() is None

        def partition_task(report: str) -> str:
            def downloader(shard):  # img2dataset's Downloader, reporting the node it ran on
                Path(report).write_text(ray.get_runtime_context().get_node_id())
                return True, shard

            from img2dataset import distributor

            real, asked = distributor.ray_download, {}

            class Spy:  # what the task is scheduled with: the default policy often picks this node anyway
                def options(self, **kw):
                    asked.update(kw)
                    return real.options(**kw)

            distributor.ray_download = Spy()
            try:
                on_ray = _img2dataset_ray_task()
                assert on_ray is not None
                on_ray(downloader, (0, "shard"))
            finally:
                distributor.ray_download = real
            strategy = asked["scheduling_strategy"]
            assert (strategy.node_id, strategy.soft) == (ray.get_runtime_context().get_node_id(), False)
            return ray.get_runtime_context().get_node_id()

        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        assert len(nodes) == 2
        task = ray.remote(partition_task)
        for i, node in enumerate(nodes):
            report = tmp_path / f"{i}.txt"
            here = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
            assert ray.get(task.options(scheduling_strategy=here).remote(str(report))) == node
            assert report.read_text() == node, "the img2dataset task ran on another node than its partition task"
    finally:
        ray.shutdown()


def test_workers_caps_the_partitions_in_flight(cluster, inputs, reference, tmp_path):
    out = tmp_path / "ds"
    build(validate_recipe(_recipe(inputs)), out, workers=1, executor="ray", address=cluster.address, progress=False)
    assert tree_digest(out) == tree_digest(reference)
    assert _log(out)["executor"]["workers"] == 1
    assert not ray.is_initialized()  # the build disconnected from the cluster it joined


def test_address_without_ray_executor_is_an_error(inputs, tmp_path):
    with pytest.raises(CurationError, match=r"--address .* needs --executor ray"):
        build(validate_recipe(_recipe(inputs)), tmp_path / "ds", address="127.0.0.1:1", progress=False)
    assert not (tmp_path / "ds").exists()  # refused before anything was written


def test_a_node_without_the_build_directory_or_another_version_refuses(tmp_path):
    from curation import __version__
    from curation.build.executors import ray_executor
    from curation.build.messages import PartitionTask
    from curation.sources import Partition

    class Progress:
        class add:  # stands in for an actor method handle
            @staticmethod
            def remote(*_a):
                return None

    task = PartitionTask(load_recipe("demo"), Partition("s", 0, 1), 0, tmp_path / "elsewhere" / "_work")
    with pytest.raises(CurationError, match=r"cannot see the build directory .* every node mounts"):
        ray_executor._run_partition(task, Progress, __version__)
    with pytest.raises(CurationError, match="install the same version on every node"):
        ray_executor._run_partition(task, Progress, "0.0.0-other")


def test_a_task_needing_more_gpus_than_any_node_has_is_refused_not_left_waiting(cluster, tmp_path):
    """A recipe whose model wants a GPU, on a cluster without one: Ray would keep the task pending forever."""
    from curation.build.executors.ray_executor import RayExecutor
    from curation.build.messages import PartitionTask
    from curation.sources import Partition
    from curation.steps.contract import Resources

    (tmp_path / "_work").mkdir()
    task = PartitionTask(load_recipe("demo"), Partition("s", 0, 1), 0, tmp_path / "_work", Resources(gpus=1))
    with RayExecutor(None, cluster.address) as ex, pytest.raises(CurationError, match=r"need 1 GPU\(s\) per partition"):
        ex.run([task], lambda *_: None, lambda _r: None)


def test_without_ray_installed_the_executor_says_how_to_get_it(monkeypatch):
    import importlib.util

    from curation.build.executors import ray_executor

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else object())
    with pytest.raises(CurationError, match=r"pip install 'vlm-curation\[ray\]'"):
        ray_executor.RayExecutor(None, None)


def test_a_dead_worker_node_is_survived(cluster, inputs, reference, tmp_path):
    """A worker node killed (raylet, agents and workers, SIGKILL) in the middle of a build: its partitions
    run again on the nodes left, and the output is unchanged. (Last in this module: Ray takes a while to
    declare the dead node dead.)"""
    extra = cluster.add_worker()
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(inputs))
    out = tmp_path / "ds"
    driver = _build_until(recipe, out, cluster, 2, stderr=subprocess.PIPE, text=True)
    cluster.kill_node(extra)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert tree_digest(out) == tree_digest(reference)
