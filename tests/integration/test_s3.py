"""Builds into an S3-compatible bucket (moto's server on loopback, IAM authentication on; tests/s3_server.py):
the CLI as a user runs it, objects byte-identical to the same build on local disk, kill -9 during the build and
the publish then rerun, one build per prefix, clear errors for wrong credentials, a missing bucket, an
unreachable endpoint and a throttling store, never a partial visible shard, credentials never written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="s3fs is not installed (the optional `s3` extra)")
pytest.importorskip("moto", reason="moto is not installed (the dev extra)")

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import load_recipe, validate_recipe
from shards.manifest import DatasetManifest
from tests.builds import CLI, demo_recipe, make_inputs, tree_digest, write_recipe
from tests.s3_server import BUCKET, MotoServer, ThrottlingProxy, start_moto

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def s3():
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    make_inputs(root, n_captions=160, n_conversations=40)
    return root


def _recipe(inputs: Path) -> dict:
    return demo_recipe(inputs, sources__0__partition_size=60, sources__1__partition_size=20)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    build(validate_recipe(_recipe(inputs)), out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def recipe_file(inputs, tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe") / "demo.yaml", _recipe(inputs))


def _curate(s3: MotoServer, cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``curate ARGS`` as a user runs it: a process of its own, the standard AWS variables set."""
    return subprocess.run(
        [*CLI, *args], env=s3.env(VLM_CURATION_CACHE=str(cache), **env), capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def aws_env(s3, monkeypatch):
    """This process's environment pointed at the server, for the in-process calls."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3


def _build(recipe_file: Path, url: str, **kwargs):
    from curation.storage.publish import build_to_url
    from curation.storage.urls import parse_url

    return build_to_url(load_recipe(str(recipe_file)), parse_url(url), progress=False, **kwargs)


def _digest(objects: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in objects.items() if not k.startswith("_logs/")}


def _no_partial_visible_build(s3: MotoServer, prefix: str) -> None:
    """What a reader sees: a dataset.json (if any) whose every listed object is there, whole."""
    objects = s3.objects(BUCKET, prefix)
    if "dataset.json" not in objects:
        return
    m = DatasetManifest.model_validate_json(objects["dataset.json"])
    for shard in [*m.shards, *m.rejects]:
        assert hashlib.sha256(objects[shard.name]).hexdigest() == shard.sha256, shard.name
        assert shard.sidecar in objects and shard.stats in objects


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and res.stderr.startswith("error: "), res.stderr[-2000:]
    return " ".join(res.stderr.split())


def test_demo_into_a_bucket_then_verify_inspect_audit(s3, aws_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from curation.cli.app import app

    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    runs = [done := _curate(s3, cache, "demo", "--out", f"s3://{BUCKET}/demo")]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "next: curate inspect s3://" in done.stdout
    runs.append(ok := _curate(s3, cache, "verify", f"s3://{BUCKET}/demo"))
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 8 shards, 457 samples"), ok.stdout + ok.stderr
    assert not (tmp_path / "s3:").exists()  # never a local folder named s3:
    objects = s3.objects(BUCKET, "demo")
    assert not [k for k in objects if k.startswith("_work/") or k == "_lock"]
    # the same build on local disk, with its report, from the demo's own inputs: byte-identical objects
    inputs = cache / "demo-inputs"
    spec = load_recipe(
        "demo",
        [
            f"sources.captions.path={inputs / 'captions.jsonl'}",
            f"sources.captions.image_root={inputs / 'images'}",
            f"sources.conversations.path={inputs / 'conversations.parquet'}",
        ],
    )
    from curation.report.audit_page import write_audit_report

    local = tmp_path / "local"
    build(spec, local, workers=2, progress=False)
    write_audit_report(local)
    assert _digest(objects) == tree_digest(local)
    # credentials are never written: not in an object, the cache (stage, mirror, logs) or the output
    written = b"".join(objects.values()) + b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
    for secret in (s3.secret, s3.key):
        assert secret.encode() not in written and all(secret not in r.stdout + r.stderr for r in runs)
    # the reading commands on the bucket (in this process: the same code as the CLI's)
    cli = CliRunner()
    shown = cli.invoke(app, ["inspect", f"s3://{BUCKET}/demo", "-n", "2"])
    assert shown.exit_code == 0 and shown.stdout.count("demo-000000.tar") == 2, shown.stdout
    audit = cli.invoke(app, ["audit", f"s3://{BUCKET}/demo", "-f", "json"])
    assert audit.exit_code == 0 and json.loads(audit.stdout)["totals"]["samples"] == 457
    compare = cli.invoke(app, ["audit", f"s3://{BUCKET}/demo", "--compare", str(local), "-f", "json"])
    assert compare.exit_code == 0, compare.stdout
    # a trainer opens the shards by URL with wids (an s3 handler through s3fs and the same environment)
    import wids
    import wids.wids_dl as dl

    from curation.storage.mirror import wids_s3_handler

    monkeypatch.setitem(dl.default_cmds, "s3", wids_s3_handler())
    ds = wids.ShardListDataset(f"s3://{BUCKET}/demo/demo.wids.json", cache_dir=str(tmp_path / "wids"))
    assert len(ds) == 457 and ".json" in ds[0]
    # a missing object is a verify problem, never a traceback
    s3.client().delete_object(Bucket=BUCKET, Key="demo/demo-000003.tar")
    bad = cli.invoke(app, ["verify", f"s3://{BUCKET}/demo"])
    assert bad.exit_code == 1 and "demo-000003.tar: missing" in bad.stderr


@pytest.mark.parametrize("crash_at", ["publish:middle", "publish:manifest"])
def test_kill_9_during_the_publish_then_rerun_is_identical(crash_at, s3, aws_env, recipe_file, reference, tmp_path):
    from curation.storage.publish import publish_order

    # the n-th object published: one in the middle, or dataset.json (everything else is there)
    n = len(publish_order(reference))
    crash_at = f"publish_object:{n // 2 if crash_at.endswith('middle') else n}"
    prefix = f"kill-{crash_at.replace(':', '-')}"
    url = f"s3://{BUCKET}/{prefix}"
    cache = tmp_path / "cache"
    killed = _curate(s3, cache, "build", str(recipe_file), "--out", url, "-q", VLM_CURATION_CRASH_AT=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _no_partial_visible_build(s3, prefix)
    assert "dataset.json" not in s3.objects(BUCKET, prefix)
    again = _curate(s3, cache, "build", str(recipe_file), "--out", url, "-q")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _digest(s3.objects(BUCKET, prefix)) == tree_digest(reference)


def test_a_killed_build_resumes_on_another_machine_from_the_bucket(s3, aws_env, recipe_file, reference, tmp_path):
    """Another machine has no stage: the partitions the bucket's _work/ holds are not processed again."""
    url = f"s3://{BUCKET}/elsewhere"
    crash = "partition_staged:3"
    killed = _curate(s3, tmp_path / "one", "build", str(recipe_file), "--out", url, "-q", VLM_CURATION_CRASH_AT=crash)
    assert killed.returncode == -signal.SIGKILL
    work = [k for k in s3.objects(BUCKET, "elsewhere") if k.startswith("_work/") and k.endswith("/stats.json")]
    assert len(work) == 2  # two partitions finished and were copied up before the kill
    result = _build(recipe_file, url)  # this process's cache: no stage of that build
    assert result.state == "resume" and result.partitions_skipped == 2
    assert _digest(s3.objects(BUCKET, "elsewhere")) == tree_digest(reference)
    assert _build(recipe_file, url).state == "complete"


def test_a_second_build_into_the_same_prefix_is_refused(s3, aws_env, recipe_file, reference, tmp_path):
    from curation.storage.lock import BucketLock
    from curation.storage.store import open_store
    from curation.storage.urls import parse_url

    url = f"s3://{BUCKET}/locked"
    with BucketLock(open_store(parse_url(url))).held():  # a running build (a live process) holds the prefix
        refused = _curate(s3, tmp_path / "c", "build", str(recipe_file), "--out", url, "-q")
    assert "another build is running into s3://" in _one_line_error(refused)
    # the lock of a build killed on this machine is taken over at once
    dead = _curate(s3, tmp_path / "c", "build", str(recipe_file), "--out", url, "-q", VLM_CURATION_CRASH_AT="record:5")
    assert dead.returncode == -signal.SIGKILL and "_lock" in s3.objects(BUCKET, "locked")
    assert _build(recipe_file, url).state == "resume"  # its plan was in the bucket already
    assert _digest(s3.objects(BUCKET, "locked")) == tree_digest(reference)


def test_wrong_credentials_missing_bucket_and_no_endpoint_are_one_line_errors(
    s3, aws_env, recipe_file, tmp_path, monkeypatch
):
    from curation.storage.mirror import mirror

    url = f"s3://{BUCKET}/errors"
    wrong_key = _curate(s3, tmp_path, "build", str(recipe_file), "--out", url, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1")
    assert "access denied (InvalidAccessKeyId" in _one_line_error(wrong_key)
    with monkeypatch.context() as m:
        m.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(CurationError, match=r"access denied \(SignatureDoesNotMatch"):
            mirror(url)
    with pytest.raises(CurationError, match="the bucket 'no-such-bucket' does not exist"):
        _build(recipe_file, "s3://no-such-bucket/x")
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        m.setenv("AWS_MAX_ATTEMPTS", "2")
        with pytest.raises(CurationError, match=r"cannot reach http://127\.0\.0\.1:9"):
            mirror(url)
    assert not s3.objects(BUCKET, "errors")
    with pytest.raises(CurationError, match="gs:// is not supported"):
        _build(recipe_file, "gs://bucket/x")
    from typer.testing import CliRunner

    from curation.cli.app import app

    monkeypatch.chdir(tmp_path)
    for args in (["select", "sel", "--out", url], ["schema", "--out", url], ["export", url, "-f", "llava", "-o", url]):
        res = CliRunner().invoke(app, args)
        assert isinstance(res.exception, CurationError) and "local" in str(res.exception), args
    assert not (tmp_path / "s3:").exists()


def test_a_throttling_store_is_retried_and_one_that_never_stops_is_a_clear_error(
    s3, aws_env, recipe_file, reference, monkeypatch
):
    url = f"s3://{BUCKET}/throttled"
    with ThrottlingProxy(s3.port, first=1, every=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
        assert _build(recipe_file, url).state == "fresh"
        assert proxy.throttled >= 3
    assert _digest(s3.objects(BUCKET, "throttled")) == tree_digest(reference)
    url = f"s3://{BUCKET}/throttled-forever"
    with ThrottlingProxy(s3.port, every=1) as proxy:  # every PUT: listing works, no object can be written
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        with pytest.raises(CurationError, match=r"throttling \(SlowDown.*after 2 attempts"):
            _build(recipe_file, url)
    assert not s3.objects(BUCKET, "throttled-forever")


def test_a_url_input_is_a_recipe_error(s3, aws_env, inputs, tmp_path):
    recipe = _recipe(inputs)
    recipe["sources"][1]["path"] = f"s3://{BUCKET}/inputs/conversations.parquet"
    with pytest.raises(CurationError, match=r"sources\.conversations\.path: s3://.*local paths only"):
        _build(write_recipe(tmp_path / "r.yaml", recipe), f"s3://{BUCKET}/inputs-out")


@pytest.mark.slow
def test_a_build_on_a_two_node_ray_cluster_into_the_bucket(s3, aws_env, recipe_file, reference):
    """The partition tasks write into the driver's stage (the nodes share this machine's disk); the driver copies
    each finished partition up and publishes: the same objects as the local build."""
    pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    from tests.ray_cluster import start_cluster

    cluster = start_cluster(workers=1)
    try:
        result = _build(recipe_file, f"s3://{BUCKET}/ray", executor="ray", address=cluster.address)
    finally:
        cluster.shutdown()
    assert result.state == "fresh" and result.log is not None
    assert json.loads(result.log.read_text())["executor"]["kind"] == "ray"
    assert _digest(s3.objects(BUCKET, "ray")) == tree_digest(reference)
