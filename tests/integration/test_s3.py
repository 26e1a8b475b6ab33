"""Builds into an S3-compatible bucket (moto's server on loopback, IAM authentication on; tests/s3_server.py):
the CLI as a user runs it, objects byte-identical to the same build on local disk, kill -9 during the build and
the publish then rerun, one build per prefix, clear errors for wrong credentials, a missing bucket, an
unreachable endpoint and a throttling store, never a partial visible shard, credentials never written."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

pytest.importorskip("s3fs", reason="s3fs is not installed (the optional `s3` extra)")
pytest.importorskip("moto", reason="moto is not installed (the dev extra)")

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import load_recipe, validate_recipe
from shards.manifest import DatasetManifest
from tests.builds import CLI, demo_recipe, make_inputs, tree_digest, write_recipe
from tests.s3_server import BUCKET, MotoServer, ThrottlingProxy

pytestmark = pytest.mark.timeout(300)


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


class VisibleBuildWatch:
    """Polls the bucket while builds run (its own client, in a thread): at no moment may a visible dataset.json
    list an object that is missing or whose size or sha256 differs from what it records (a partial shard)."""

    def __init__(self, s3: MotoServer, prefixes: list[str]) -> None:
        import threading

        self.client = s3.client()
        self.prefixes = prefixes
        self.problems: list[str] = []
        self.checks = 0  # listings that showed a dataset.json (and were checked)
        self.seen: dict[tuple[str, str], str] = {}  # (key, etag) -> sha256: an object is read once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> VisibleBuildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for prefix in self.prefixes:
                self._check(prefix)
            self._stop.wait(0.01)

    def _check(self, prefix: str) -> None:
        c = self.client
        try:  # the manifest first: everything it lists was published before it, so the listing after shows it
            manifest = c.get_object(Bucket=BUCKET, Key=f"{prefix}/dataset.json")["Body"].read()
        except c.exceptions.NoSuchKey:
            return
        listed = {
            o["Key"][len(prefix) + 1 :]: (o["Size"], o["ETag"])
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
            for o in page.get("Contents", [])
        }
        self.checks += 1
        m = DatasetManifest.model_validate_json(manifest)
        for shard in [*m.shards, *m.rejects]:
            for name, size, sha in (
                (shard.name, shard.bytes, shard.sha256),
                (shard.sidecar, None, shard.sidecar_sha256),
            ):
                if name not in listed:
                    self.problems.append(f"{prefix}: dataset.json lists {name}, which is missing")
                    continue
                if size is not None and listed[name][0] != size:
                    self.problems.append(f"{prefix}/{name}: {listed[name][0]} bytes, dataset.json says {size}")
                key = (f"{prefix}/{name}", listed[name][1])
                if key not in self.seen:
                    body = c.get_object(Bucket=BUCKET, Key=key[0])["Body"].read()
                    self.seen[key] = hashlib.sha256(body).hexdigest()
                if sha is not None and self.seen[key] != sha:
                    self.problems.append(f"{prefix}/{name}: its sha256 differs from dataset.json's")
            if shard.stats not in listed:
                self.problems.append(f"{prefix}: dataset.json lists {shard.stats}, which is missing")


def _made(s3: MotoServer, prefix: str, stage: Path, phase: str, name: str) -> int:
    """How far a build got: final shards in its stage (the commit), or objects of it in the bucket (the publish)."""
    if phase == "commit":
        return len(list(stage.glob(f"{name}-[0-9]*.tar")))
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("Contents", [])
    names = [o["Key"][len(prefix) + 1 :] for o in listed]
    return len([n for n in names if not n.startswith(("_work/", "_logs/")) and n != "_lock"])


@pytest.mark.slow
def test_kill_9_at_random_moments_of_the_commit_and_the_publish_then_rerun(
    s3, aws_env, recipe_file, reference, tmp_path
):
    """Seeded: each round kills the build (SIGKILL) at a random moment of its publish (after the k-th object
    appeared in the bucket, plus a random delay; k up to every object, dataset.json included: a kill during the
    clean-up) or of its commit (after the k-th final shard appeared in the stage, plus a random delay), then
    reruns it. A watcher polls the bucket meanwhile: never a visible dataset.json over a missing or partial shard. Every
    rerun converges on the objects of the uninterrupted local build."""
    import random
    import time

    from curation.storage.publish import publish_order, stage_dir
    from curation.storage.urls import parse_url

    rng = random.Random(20)
    manifest = DatasetManifest.model_validate_json((reference / "dataset.json").read_bytes())
    n_objects, n_shards = len(publish_order(reference)), len(manifest.shards)
    rounds = [f"random-{i}" for i in range(4)]
    cache = tmp_path / "cache"
    landed = []
    with VisibleBuildWatch(s3, rounds) as watch:
        for i, prefix in enumerate(rounds):
            url = f"s3://{BUCKET}/{prefix}"
            phase, started = ("publish", "commit")[i % 2], time.monotonic()
            k = rng.randint(1, n_shards if phase == "commit" else n_objects)
            delay = rng.uniform(0, 0.05)
            stage = cache / "stage" / stage_dir(parse_url(url)).name  # the stage of the build's own cache
            proc = subprocess.Popen(
                [*CLI, "build", str(recipe_file), "--out", url, "-q"],
                env=s3.env(VLM_CURATION_CACHE=str(cache)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            while proc.poll() is None and _made(s3, prefix, stage, phase, manifest.name) < k:
                assert time.monotonic() - started < 180, (phase, k)
                time.sleep(0.005)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            landed.append((phase, k, proc.returncode))
            assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
            again = _curate(s3, cache, "build", str(recipe_file), "--out", url, "-q")
            assert again.returncode == 0, again.stderr[-2000:]
            assert _digest(s3.objects(BUCKET, prefix)) == tree_digest(reference), (phase, k)
    assert not watch.problems, watch.problems[:5]
    assert watch.checks > 0 and sum(rc == -signal.SIGKILL for *_, rc in landed) >= 3, landed


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


@pytest.mark.slow
def test_a_build_on_a_two_node_ray_cluster_into_the_bucket(
    s3, aws_env, inputs, recipe_file, reference, tmp_path, monkeypatch
):
    """The store is the only channel between the nodes and the driver: every node stages in a folder of its own
    ($VLM_CURATION_WORKER_STAGE, never the driver's stage) and publishes each partition it finishes to the bucket's
    _work/; the driver copies every partition down, commits and publishes: the same objects as the local build.
    A mixture's sub-build goes the same way (under its own prefix _datasets/sub/)."""
    pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    from curation.storage import publish as publishing
    from curation.storage.publish import mixture_to_url
    from curation.storage.urls import parse_url
    from tests.ray_cluster import start_cluster

    pulled: list[int] = []
    pull = publishing.pull_missing_partition
    monkeypatch.setattr(
        publishing, "pull_missing_partition", lambda store, work, gid: (pulled.append(gid), pull(store, work, gid))
    )
    nodes = tmp_path / "node-stage"
    cluster = start_cluster(workers=1, env={"VLM_CURATION_WORKER_STAGE": str(nodes)})
    try:
        result = _build(recipe_file, f"s3://{BUCKET}/ray", executor="ray", address=cluster.address)
        built = list(pulled)
        mixture = validate_recipe(_mixture(inputs, str(reference)))
        mixture_to_url(
            mixture, parse_url(f"s3://{BUCKET}/ray-mix"), progress=False, executor="ray", address=cluster.address
        )
    finally:
        cluster.shutdown()
    assert result.state == "fresh" and result.log is not None
    log = json.loads(result.log.read_text())
    assert log["executor"]["kind"] == "ray" and log["executor"]["partitions_only"]
    assert sorted(built) == list(range(result.partitions)) == sorted(p["gid"] for p in log["partitions"])
    assert nodes.is_dir() and not [p for p in nodes.rglob("p*") if p.is_dir()]  # each node's copy went once published
    assert _digest(s3.objects(BUCKET, "ray")) == tree_digest(reference)
    # the mixture's sub-build is the reference's recipe: its partitions came down the same way, the same bytes
    assert sorted(pulled[len(built) :]) == list(range(result.partitions))
    assert _logless(_digest(s3.objects(BUCKET, "ray-mix/_datasets/sub"))) == tree_digest(reference)
    assert "dataset.json" in s3.objects(BUCKET, "ray-mix")


# -- mixtures
def _publish_local(s3: MotoServer, directory: Path, prefix: str) -> str:
    """A finished local build put into the bucket as a build into it publishes itself (dataset.json last)."""
    from curation.storage.publish import publish
    from curation.storage.store import open_store
    from curation.storage.urls import parse_url

    url = f"s3://{BUCKET}/{prefix}"
    publish(open_store(parse_url(url)), directory)
    return url


def _mixture(inputs: Path, demo: str) -> dict:
    """Captions from a built dataset (``demo``: a directory or a URL), conversations from an inline sub-build."""
    sub = _recipe(inputs)
    sub.pop("kind")
    return {
        "kind": "mixture",
        "name": "mix",
        "seed": 3,
        "datasets": {"demo": {"path": demo}, "sub": {"build": sub}},
        "components": [
            {"name": "captions", "dataset": "demo", "target": {"epochs": 1.5}},
            {"name": "conversations", "dataset": "sub", "target": {"samples": 50}},
        ],
        "output": {"max_samples_per_shard": 64},
    }


def _without_paths(manifest: bytes) -> dict:
    """A mixture's dataset.json less what names where its datasets are (the recipe, and its hash)."""
    doc = json.loads(manifest)
    for key in ("recipe", "recipe_sha256"):
        doc.pop(key)
    for ident in doc["mixture"]["datasets"].values():
        ident.pop("path")
    return doc


def _logless(digest: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digest.items() if "_logs" not in k.split("/")}


def test_a_mixture_of_datasets_in_the_bucket_into_the_bucket(s3, aws_env, inputs, reference, tmp_path):
    """The mixture (its sub-build under _datasets/ included) is published like a build, its dataset in the bucket
    read through the mirror: the same bytes as the same mixture from the local dataset into a local directory."""
    from curation.mixture.build import build_mixture

    demo_url = _publish_local(s3, reference, "mixsrc")
    local = build_mixture(validate_recipe(_mixture(inputs, str(reference))), tmp_path / "local", progress=False)
    recipe = write_recipe(tmp_path / "mix.yaml", _mixture(inputs, demo_url))
    url = f"s3://{BUCKET}/mix"
    # killed while mixing, after its sub-build was published; resumed on another machine (another cache)
    killed = _curate(
        s3, tmp_path / "one", "build", str(recipe), "--out", url, "-q", VLM_CURATION_CRASH_AT="mixture_bucket"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "_datasets/sub/dataset.json" in s3.objects(BUCKET, "mix") and "dataset.json" not in s3.objects(BUCKET, "mix")
    cache = tmp_path / "cache"
    done = _curate(s3, cache, "build", str(recipe), "--out", url, "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    objects = s3.objects(BUCKET, "mix")
    assert len([k for k in objects if k.startswith("_datasets/sub/_logs/")]) == 1  # copied down, not built again
    assert not [k for k in objects if k.startswith("_work/") or "/_work/" in k or k == "_lock"]
    theirs = _logless(_digest(objects))
    ours = _logless(tree_digest(local.out))
    differ = {k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k)}
    assert differ == {"dataset.json", "stats.json", "README.md"}, differ  # every shard, sidecar, index the same
    # ... and those three only where they name the dataset: its URL, or the hash of the recipe that names it
    assert _without_paths(objects["dataset.json"]) == _without_paths((local.out / "dataset.json").read_bytes())
    stats = [json.loads(objects["stats.json"]), json.loads((local.out / "stats.json").read_text())]
    paths = [[ident.pop("path") for ident in st["mixture"]["datasets"].values()] for st in stats]
    assert paths == [[demo_url, "_datasets/sub"], [str(reference), "_datasets/sub"]] and stats[0] == stats[1]
    cards = [objects["README.md"].decode(), (local.out / "README.md").read_text()]
    assert [[line for line in c.splitlines() if "recipe sha256" not in line] for c in cards] == [
        [line for line in c.splitlines() if "recipe sha256" not in line] for c in cards[::-1]
    ]
    assert json.loads(objects["dataset.json"])["mixture"]["datasets"]["demo"]["path"] == demo_url
    ok = _curate(s3, cache, "verify", url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    again = _curate(s3, cache, "build", str(recipe), "--out", url)
    assert again.returncode == 0 and "already built" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_a_selection_sweep_over_candidate_datasets_in_the_bucket(s3, aws_env, tmp_path):
    """Trials read the candidates through the mirror: the same trials (ids) and decisions as over local copies."""
    from curation.selection.sweep import run_selection
    from tests.integration.test_select import _decisions
    from tests.integration.test_select import _recipe as selection_recipe

    local, bucket = (selection_recipe(tmp_path, tmp_path / "trained.txt") for _ in range(2))
    for alias, ref in local["datasets"].items():
        built = build(validate_recipe({"name": alias, **ref["build"]}), tmp_path / "built" / alias, progress=False)
        local["datasets"][alias] = {"path": str(built.out)}
        bucket["datasets"][alias] = {"path": _publish_local(s3, built.out, f"candidates/{alias}")}
    docs = [
        run_selection(validate_recipe(r), tmp_path / name, progress=False) for name, r in (("a", local), ("b", bucket))
    ]
    expected = {"color_good": "accepted", "color_poison": "rejected", "shape_good": "accepted", "neutral": "accepted"}
    assert _decisions(docs[0]) == _decisions(docs[1]) == expected
    trials = [sorted(p.name for p in (tmp_path / name / "trials").iterdir()) for name in ("a", "b")]
    assert trials[0] == trials[1] and len(trials[0]) == 7
    selected = validate_recipe(yaml.safe_load((tmp_path / "b" / "selected_mixture.yaml").read_text()))
    assert selected.datasets["base"].path == f"s3://{BUCKET}/candidates/base"  # a mixture recipe to build as it is


@pytest.mark.slow
def test_a_laion_build_into_the_bucket_is_the_local_build_and_its_subsets_open_by_url(
    s3, aws_env, tmp_path, monkeypatch
):
    """LAION downloading for real from a loopback image server, into the bucket, then into a local directory with
    the downloads gone (fetched again): the same bytes; a nested subset's wids index opens from the bucket."""
    import shutil
    from collections import Counter

    import wids
    import wids.wids_dl as dl

    from curation.storage.mirror import wids_s3_handler
    from tests.laion_data import image_server, write_images, write_metadata

    hits: Counter = Counter()
    write_images(tmp_path / "www", 12)
    sets = [
        f"sources.laion.path={tmp_path / 'meta'}",
        "sources.laion.sizes=[4, 12]",
        f"sources.laion.cache_dir={tmp_path / 'cache'}",
        "sources.laion.download.samples_per_shard=4",
        "sources.laion.download.timeout=2",
        "sources.laion.download.resize_mode=no",
    ]
    args = [a for s in sets for a in ("--set", s)]
    url = f"s3://{BUCKET}/laion"
    with image_server(tmp_path / "www", hits) as base:
        write_metadata(tmp_path / "meta", base, 12)
        (tmp_path / "www" / "5.jpg").unlink()  # a 404: a drop, the same in both
        bucket = _curate(s3, tmp_path / "c1", "build", "laion_subsets", "--out", url, "-q", *args)
        assert bucket.returncode == 0, bucket.stderr[-3000:]
        fetched = sum(hits.values())
        shutil.rmtree(tmp_path / "cache" / "laion-download")
        local = _curate(s3, tmp_path / "c2", "build", "laion_subsets", "--out", str(tmp_path / "local"), "-q", *args)
        assert local.returncode == 0, local.stderr[-3000:]
    assert fetched >= 12 and sum(hits.values()) >= 2 * fetched - 1  # both builds downloaded
    objects = s3.objects(BUCKET, "laion")
    assert _digest(objects) == tree_digest(tmp_path / "local")
    m = DatasetManifest.model_validate_json(objects["dataset.json"])
    assert m.totals["samples"] == 11 and sorted(m.subsets) == ["laion-12", "laion-4"]
    monkeypatch.setitem(dl.default_cmds, "s3", wids_s3_handler())
    small = m.subsets["laion-4"]
    ds = wids.ShardListDataset(f"{url}/{small['wids_index']}", cache_dir=str(tmp_path / "wids"))
    assert len(ds) == small["samples"] and ds[0]["__key__"] == next(iter(read_keys(tmp_path / "local")))


def read_keys(directory: Path) -> list[str]:
    from shards import iter_dataset

    return [r.key for r in iter_dataset(directory)]


def test_the_plans_files_reach_a_node_that_does_not_see_the_drivers_cache(s3, aws_env, tmp_path, monkeypatch):
    """On Ray into a bucket, a partition reads what the plan made in the driver's cache (OBELICS's overused URLs,
    LAION's selection) from the bucket when its node does not see that disk: once per node, the same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.build.messages import PartitionTask
    from curation.build.partition import process_partition
    from curation.build.plan import plan_build
    from curation.storage.urls import parse_url
    from curation.storage.work import PartitionChannel
    from tests.integration.test_obelics_build import paragraph, row

    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "driver-cache"))
    (tmp_path / "docs").mkdir()
    docs = [row([("text", paragraph(1)), ("image", "http://127.0.0.1:9/a.jpg")])] * 3  # one URL used 3 times
    docs.append({"texts": ["not a document"], "images": [None], "metadata": "[]", "general_metadata": "{}"})
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "docs" / "d.parquet")
    source = {"name": "o", "reader": "obelics", "path": str(tmp_path / "docs"), "max_url_occurrences": 2}
    recipe = validate_recipe({"name": "o", "sources": [source], "output": {"kind": "interleaved"}})
    plan = plan_build(recipe, None)
    (part,) = plan.partitions
    driver_file = Path(part.spec["overused"])
    assert pq.read_table(driver_file).column("url").to_pylist() == ["http://127.0.0.1:9/a.jpg"]
    channel = PartitionChannel.new(parse_url(f"s3://{BUCKET}/plan-files"), None)
    shared = channel.share([str(driver_file)])
    assert channel.share([str(driver_file)]) == shared  # content-addressed: copied once
    original = driver_file.read_bytes()
    driver_file.rename(tmp_path / "elsewhere.parquet")  # this "node" does not see the driver's cache
    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "node-cache"))
    task = PartitionTask(recipe, part, 0, tmp_path / "work", channel=channel, plan_files=shared)
    (tmp_path / "work").mkdir()
    process_partition(task)  # every document dropped before any download: only the overused URLs are read
    copied = Path(task.partition.spec["overused"])
    assert copied.is_relative_to(tmp_path / "node-cache") and copied.read_bytes() == original
    pushed = s3.objects(BUCKET, "plan-files/_work")
    assert "p00000/stats.json" in pushed  # the partition handed over through the bucket
    assert [k for k in pushed if k.startswith("plan-files/")] == [shared[str(driver_file)].removeprefix("_work/")]
