"""Object storage without a server: URLs, the recipe's storage block, what is ours under a prefix, the publish
order, and the CLI never taking a URL for a local path."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.errors import CurationError, RecipeError
from curation.recipe import load_recipe
from curation.recipe.loading import recipe_doc, recipe_hash
from curation.storage.publish import owned, publish_order
from curation.storage.urls import is_url, local_path, parse_url


def test_urls_are_told_from_paths_and_checked():
    assert is_url("s3://bucket/x") and is_url("gs://b/x") and not is_url("s3:/bucket/x") and not is_url("out/s3")
    assert not is_url(Path("s3://bucket/x"))  # a Path has lost a slash already: never a URL
    url = parse_url("s3://my-bucket//builds/v3/")
    assert (url.bucket, url.prefix, url.url, url.key("dataset.json")) == (
        "my-bucket",
        "builds/v3",
        "s3://my-bucket/builds/v3",
        "builds/v3/dataset.json",
    )
    assert parse_url("s3://my-bucket").key("a") == "a"
    with pytest.raises(CurationError, match="gs:// is not supported"):
        parse_url("gs://bucket/x")
    with pytest.raises(CurationError, match="not a valid bucket name"):
        parse_url("s3://B/x")
    with pytest.raises(CurationError, match="plain path"):
        parse_url("s3://bucket/a/../b")
    with pytest.raises(CurationError, match="local path only"):
        local_path("s3://bucket/x", "--out")


def test_the_storage_block_is_neither_identity_nor_recorded_and_holds_no_secret():
    plain = load_recipe("demo", [])
    stored = load_recipe("demo", ["storage.endpoint_url=http://127.0.0.1:9000", "storage.max_attempts=3"])
    assert recipe_hash(plain) == recipe_hash(stored)
    assert "storage" not in recipe_doc(stored) and recipe_doc(plain) == recipe_doc(stored)
    for key in ("aws_secret_access_key", "aws_access_key_id", "token"):
        with pytest.raises(RecipeError, match="credentials never go in a recipe") as exc:
            load_recipe("demo", [f"storage.{key}=hunter2"])
        assert "hunter2" not in str(exc.value)


def test_only_what_this_toolkit_writes_is_ours():
    prefixes = {"demo"}
    for key in ("dataset.json", "demo-000003.tar", "demo-000003.parquet", "demo-000003.stats.json", "README.md",
                "rejects/demo-rejects-000000.tar", "subsets/demo-small.wids.json", "demo.wids.json", "_work/p00001/x",
                "_lock", "_logs/build-1.json"):  # fmt: skip
        assert owned(key, prefixes), key
    for key in ("notes.txt", "other-000000.tar", "rejects/notes.txt", "deep/demo-000000.tar", "subsets/x.tar"):
        assert not owned(key, prefixes), key
    assert not owned("README.md", prefixes, manifest=False)  # without a build, a README is the user's


def test_the_publish_order_puts_each_tar_after_its_sidecar_and_the_manifest_last(tmp_path):
    from curation.build.runner import build
    from tests.builds import demo_recipe, make_inputs

    make_inputs(tmp_path / "in", n_captions=60, n_conversations=20)
    from curation.recipe import validate_recipe

    out = tmp_path / "ds"
    build(validate_recipe(demo_recipe(tmp_path / "in", output__max_samples_per_shard=30)), out, progress=False)
    order = publish_order(out)
    assert order[-1] == "dataset.json" and order[-2] == "stats.json"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "_logs" not in p.parts}
    assert sorted(order) == sorted(files)
    for i, name in enumerate(order):
        if name.endswith(".tar"):
            stem = name[: -len(".tar")]
            assert order.index(f"{stem}.parquet") < i and order.index(f"{stem}.stats.json") < i


def test_a_partition_task_stages_on_the_drivers_disk_only_where_it_sees_the_drivers_mark(tmp_path, monkeypatch):
    """A build into a bucket on Ray: a node stages in the driver's _work/ when it finds the driver's token there
    (the same disk), else in a folder of its own (removed once published): $VLM_CURATION_WORKER_STAGE, or the same
    path on its own disk. The channel travels pickled, with no credential in it."""
    import os
    import pickle

    from curation.build.executors.ray_executor import NODE_ONLY_ENV
    from curation.recipe.storage import Storage
    from curation.storage.work import WORKER_STAGE_ENV, PartitionChannel, stage_name

    url = parse_url("s3://bucket/builds/v1")
    work = tmp_path / "stage" / "_work"
    channel = PartitionChannel.new(url, Storage(endpoint_url="http://127.0.0.1:9000"))
    assert pickle.loads(pickle.dumps(channel)) == channel and WORKER_STAGE_ENV in NODE_ONLY_ENV
    monkeypatch.delenv(WORKER_STAGE_ENV, raising=False)
    assert channel.stage_on_worker(work) == (work, True)  # unmarked: another machine's disk, at the same path
    channel.claim(work)
    assert channel.stage_on_worker(work) == (work, False)  # the driver's own folder
    assert PartitionChannel.new(url, None).stage_on_worker(work) == (work, True)  # another build's mark
    monkeypatch.setenv(WORKER_STAGE_ENV, str(tmp_path / "node"))
    own = tmp_path / "node" / stage_name(url) / "_work"
    dead, live = own / "p00001.tmp-999999999-0a1b2c3d", own / f"p00002.tmp-{os.getpid()}-0a1b2c3d"
    for folder in (dead, live):
        folder.mkdir(parents=True)
    assert channel.stage_on_worker(work) == (own, True)
    assert not dead.exists() and live.is_dir()  # a killed attempt's staging is swept, a live one's kept
