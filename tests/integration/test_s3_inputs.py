"""Recipe inputs in a bucket (moto's server on loopback, IAM authentication on; tests/s3_server.py), streamed: the
demo built from s3:// URLs is the demo built from local files, byte for byte (its stats.json's plan_sha256 aside:
the inputs are identified by ETag there), and the same objects under another bucket and prefix give the same build;
parquet is read by ranges (the plan reads footers only); a built dataset in a bucket is a ``shards`` source, its
shards verified; PDFA tars stream; a missing object, a missing bucket and wrong credentials are one-line errors
before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="s3fs is not installed (the optional `s3` extra)")
pytest.importorskip("moto", reason="moto is not installed (the dev extra)")

import pyarrow as pa
import pyarrow.parquet as pq

from curation.build.plan import plan_build
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.sample import Drop, Sample
from curation.sources import base, make_reader
from curation.storage.inputs import PARQUET_BLOCK, check_inputs, open_url
from tests.builds import CLI, demo_recipe, make_inputs, tree_digest, write_recipe
from tests.cauldron_data import make_cauldron
from tests.laion_data import image_server, write_images, write_metadata
from tests.llava_data import make_llava_tree
from tests.pdfa_data import make_pdfa_inputs
from tests.s3_server import BUCKET, ThrottlingProxy

pytestmark = pytest.mark.timeout(300)
OTHER = "vlm-elsewhere"


@pytest.fixture(scope="module")
def s3(s3):
    """The server, with a second bucket."""
    s3.client().create_bucket(Bucket=OTHER)
    return s3


def _upload(s3, root: Path, bucket: str, prefix: str, skip: tuple[str, ...] = ()) -> None:
    client = s3.client()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not rel.startswith(skip):
            client.upload_file(str(f), bucket, f"{prefix}/{rel}")


@pytest.fixture(scope="module")
def inputs(s3, tmp_path_factory) -> Path:
    """The demo's inputs, locally and in two places in the store: s3://vlm-test/in and s3://vlm-elsewhere/v2/in."""
    root = tmp_path_factory.mktemp("inputs")
    make_inputs(root, n_captions=100, n_conversations=30)
    _upload(s3, root, BUCKET, "in")
    _upload(s3, root, OTHER, "v2/in")
    return root


def _local_recipe(inputs: Path) -> dict:
    return demo_recipe(inputs, sources__0__partition_size=40, sources__1__partition_size=15)


def _url_recipe(url: str) -> dict:
    recipe = _local_recipe(Path("/unused"))
    recipe["sources"][0]["path"] = f"{url}/captions.jsonl"
    recipe["sources"][0]["image_root"] = f"{url}/images"
    recipe["sources"][1]["path"] = f"{url}/conversations.parquet"
    return recipe


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "demo"
    build(validate_recipe(_local_recipe(inputs)), out, workers=1, progress=False)
    return out


def test_the_demo_from_a_bucket_is_the_demo_from_local_files(s3, aws_env, inputs, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from_url = build(validate_recipe(_url_recipe(f"s3://{BUCKET}/in")), tmp_path / "url", workers=1, progress=False)
    elsewhere = tmp_path / "elsewhere"
    build(validate_recipe(_url_recipe(f"s3://{OTHER}/v2/in")), elsewhere, workers=2, progress=False)  # 2 processes
    local, url = tree_digest(reference), tree_digest(from_url.out)
    assert url == tree_digest(elsewhere)  # the same objects under another bucket and prefix: the same build
    assert set(local) == set(url) and {k for k in local if local[k] != url[k]} == {"stats.json"}
    ref_stats, url_stats = (json.loads((d / "stats.json").read_text()) for d in (reference, from_url.out))
    assert ref_stats.pop("plan_sha256") != url_stats.pop("plan_sha256")  # inputs by sha256 there, by ETag here
    assert ref_stats == url_stats
    manifest = json.loads((from_url.out / "dataset.json").read_text())
    assert [s["path"] for s in manifest["recipe"]["sources"]] == ["captions.jsonl", "conversations.parquet"]
    assert manifest["recipe"]["sources"][0]["image_root"] == "images"
    assert from_url.manifest.totals["samples"] > 0
    plan = json.loads((from_url.out / "stats.json").read_text())["partitions"][0]["spec"]
    assert plan["file"] == "captions.jsonl"  # the plan holds relative names, never a URL's bucket or a credential
    again = build(validate_recipe(_url_recipe(f"s3://{BUCKET}/in")), tmp_path / "url", workers=1, progress=False)
    assert again.state == "complete"  # the same objects (ETags) are the same inputs
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert s3.secret.encode() not in written and s3.key.encode() not in written
    assert not (tmp_path / "s3:").exists()  # never a local folder named s3:


def test_parquet_is_read_by_ranges_and_the_plan_reads_footers_only(s3, aws_env, tmp_path, monkeypatch):
    rows_per_group, groups, image_bytes = 4, 24, 256 << 10  # 24 row groups of ~1 MiB of incompressible bytes
    table = pa.table(
        {
            "image": [os.urandom(image_bytes) for _ in range(rows_per_group * groups)],
            "caption": [f"row {i}" for i in range(rows_per_group * groups)],
        }
    )
    local = tmp_path / "rows.parquet"
    pq.write_table(table, local, row_group_size=rows_per_group, compression="none")
    s3.client().upload_file(str(local), BUCKET, "big/rows.parquet")
    size = local.stat().st_size

    def recipe(path: str):
        source = {"name": "rows", "reader": "parquet", "path": path, "record": "pair", "partition_size": 8}
        return validate_recipe({"name": "r", "sources": [source], "output": {"kind": "pair"}})

    with ThrottlingProxy(s3.port) as proxy:  # forwards everything, counting the bytes the server sends back
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        plan = plan_build(recipe(f"s3://{BUCKET}/big/rows.parquet"), None)
        planned = proxy.sent(f"{BUCKET}/big/rows.parquet")
        assert len(plan.partitions) == groups // 2 and plan.rows == rows_per_group * groups
        assert 0 < planned < 128 << 10, planned  # the footer (and nothing of the 24 MiB of row groups)
        reader = make_reader(recipe(f"s3://{BUCKET}/big/rows.parquet").sources[0])
        items = list(reader.read(plan.partitions[5]))
        read = proxy.sent(f"{BUCKET}/big/rows.parquet") - planned
    assert len(items) == 8 and all(isinstance(i, Sample) for i in items)
    two_groups = 2 * rows_per_group * image_bytes
    assert two_groups <= read <= two_groups + PARQUET_BLOCK + (128 << 10) < size // 6, (read, size)
    local_reader = make_reader(recipe(str(local)).sources[0])
    expected = list(local_reader.read(local_reader.plan()[5]))
    assert [(i.record.key, i.record.caption, i.record.image) for i in items if isinstance(i, Sample)] == [
        (i.record.key, i.record.caption, i.record.image) for i in expected if isinstance(i, Sample)
    ]


def test_an_image_object_over_the_cap_is_dropped_unread(s3, aws_env, inputs, monkeypatch):
    monkeypatch.setattr(base, "MAX_IMAGE_FILE_BYTES", 2000)  # most demo images are larger
    recipe = validate_recipe(_url_recipe(f"s3://{BUCKET}/in"))
    check_inputs(recipe)
    reader = make_reader(recipe.sources[0])
    items = list(reader.read(reader.plan()[0]))
    reasons = {i.reason for i in items if isinstance(i, Drop)}
    assert "image_file_too_large" in reasons and "missing_image_file" in reasons
    assert all(len(i.record.image) <= 2000 for i in items if isinstance(i, Sample))


def test_a_built_dataset_in_a_bucket_is_a_shards_source(s3, aws_env, reference, tmp_path):
    _upload(s3, reference, BUCKET, "built/demo", skip=("_logs",))

    def again(path: str) -> dict:
        source = {"name": "again", "reader": "shards", "path": path}
        return {"name": "again", "sources": [source], "output": {"kind": "sft", "max_samples_per_shard": 60}}

    local = build(validate_recipe(again(str(reference))), tmp_path / "local", workers=1, progress=False)
    url = build(validate_recipe(again(f"s3://{BUCKET}/built/demo")), tmp_path / "url", workers=1, progress=False)
    a, b = tree_digest(local.out), tree_digest(url.out)
    assert {k for k in a if a[k] != b[k]} == {"stats.json"} and url.manifest.totals == local.manifest.totals
    # a shard whose bytes differ from its manifest is never read: every sample of it is a shard_corrupt drop
    client = s3.client()
    for key in [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="built/demo/")["Contents"]]:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        if key.endswith("demo-000001.tar"):
            body = body[:5000] + bytes([body[5000] ^ 1]) + body[5001:]
        client.put_object(Bucket=BUCKET, Key=key.replace("built/demo/", "built/bad/"), Body=body)
    bad = build(validate_recipe(again(f"s3://{BUCKET}/built/bad")), tmp_path / "bad", workers=1, progress=False)
    corrupt = next(s for s in json.loads((reference / "dataset.json").read_text())["shards"] if "000001" in s["name"])
    dropped = json.loads((bad.out / "stats.json").read_text())["accounting"]
    assert f'"shard_corrupt": {corrupt["samples"]}' in json.dumps(dropped)


def test_pdfa_tars_stream_from_a_bucket(s3, aws_env, tmp_path):
    make_pdfa_inputs(tmp_path)
    _upload(s3, tmp_path / "tars", BUCKET, "pdfa/tars")

    def items(path: str, root: str) -> list[tuple]:
        recipe = {"name": "p", "sources": [{"name": "pdfa", "reader": "pdfa", "path": path}], "output": {"kind": "pdf"}}
        reader = make_reader(validate_recipe(recipe).sources[0])
        found = []
        for part in reader.plan():
            for item in reader.read(part):
                where = item.origin.removeprefix(root)
                found.append((where, item.reason) if isinstance(item, Drop) else (where, item.record.model_dump_json()))
        return found

    local = items(str(tmp_path / "tars"), str(tmp_path / "tars"))
    assert items(f"s3://{BUCKET}/pdfa/tars", f"s3://{BUCKET}/pdfa/tars") == local
    assert ("/pdfa-eng-train-0001.tar", "shard_damaged") in local  # the cut-off tar: read up to the damage


def test_the_cauldron_layout_in_a_bucket_reads_as_the_local_one(s3, aws_env, tmp_path):
    make_cauldron(
        tmp_path / "cauldron",
        {"ai2d": 10},
        files_per_config=2,
        bad={"ai2d": ["missing_image_file", "null_texts"]},
        path_images={"ai2d": 2},  # image files beside the parquet: read from the bucket too
    )
    _upload(s3, tmp_path / "cauldron", BUCKET, "cauldron")

    def items(path: str) -> list[tuple]:
        recipe = {"name": "c", "sources": [{"name": "c", "reader": "cauldron", "path": path, "config": "ai2d"}]}
        reader = make_reader(validate_recipe({**recipe, "output": {"kind": "sft"}}).sources[0])
        found = []
        for part in reader.plan():
            for item in reader.read(part):
                where = item.origin.removeprefix(path)
                found.append((where, item.reason) if isinstance(item, Drop) else (where, item.record.model_dump_json()))
        return found

    local = items(str(tmp_path / "cauldron"))
    assert items(f"s3://{BUCKET}/cauldron") == local and len(local) == 10
    assert {r for _, r in local} >= {"missing_image_file", "invalid_record:turns"}


def test_llava_json_lists_and_lines_stream_from_a_bucket(s3, aws_env, tmp_path):
    tree = make_llava_tree(tmp_path / "llava")
    _upload(s3, tmp_path / "llava", BUCKET, "llava")

    def items(root: str) -> list[tuple]:
        found = []
        for name, path, extra in [
            ("llava665k", tree.llava665k, {"image_root": f"{root}/images"}),  # an indented JSON list with images
            ("text", tree.text_dir, {}),  # a folder of JSON lines
        ]:
            rel = path.relative_to(tmp_path / "llava").as_posix()
            source = {"name": name, "reader": "llava", "path": f"{root}/{rel}", "partition_size": 3, **extra}
            reader = make_reader(
                validate_recipe({"name": "l", "sources": [source], "output": {"kind": "sft"}}).sources[0]
            )
            for part in reader.plan():
                for item in reader.read(part):
                    where = item.origin.removeprefix(root)
                    found.append((where, item.reason if isinstance(item, Drop) else item.record.model_dump_json()))
        return found

    local = items(str(tmp_path / "llava"))
    assert items(f"s3://{BUCKET}/llava") == local
    assert "missing_image_file" in {r for _, r in local}


def test_laion_metadata_in_a_bucket_selects_what_local_metadata_selects(s3, aws_env, tmp_path):
    planted = write_metadata(tmp_path / "meta", "http://127.0.0.1:9", 12)
    _upload(s3, tmp_path / "meta", BUCKET, "laion/meta")

    def selection(path: str) -> tuple[list[dict], list]:
        source = {"name": "laion", "reader": "laion", "path": path, "sizes": [4, 8], "cache_dir": str(tmp_path / "c")}
        source["download"] = {"samples_per_shard": 4}
        recipe = validate_recipe({"name": "l", "sources": [source], "output": {"kind": "pair"}})
        check_inputs(recipe)
        parts = make_reader(recipe.sources[0]).plan()
        rows = pq.read_table(parts[0].spec["selection"]).drop(["origin_file"]).to_pylist()
        return rows, [(p.rows, p.spec.get("dropped")) for p in parts]

    local = selection(str(tmp_path / "meta"))
    assert selection(f"s3://{BUCKET}/laion/meta") == local
    assert local[1][-1][1] == {**planted, "not_selected": 4}  # 12 good rows, the largest size 8
    assert list((tmp_path / "c").rglob("selected.parquet"))  # one per identity: by sha256 locally, by ETag here
    assert not list((tmp_path / "c").rglob("inputs"))  # the copies are gone once the selection is made


@pytest.mark.parametrize("mode", ["improved", "original"])
def test_obelics_documents_in_a_bucket_build_what_local_documents_build(s3, aws_env, mode, tmp_path):
    """The URL count reads each object's ``images`` column (or, in original mode, its first pass) by ranges; the
    partitions read their row groups by ranges; the images come from the loopback server as for local documents."""
    from tests.integration.test_obelics_build import paragraph, row

    write_images(tmp_path / "www", 8)
    with image_server(tmp_path / "www") as base:
        docs = [
            row([("text", paragraph(i % 6)), ("image", f"{base}/{i % 5}.jpg"), ("text", paragraph((i + 1) % 6))])
            for i in range(9)
        ] + [row([("text", paragraph(2)), ("image", f"{base}/missing.jpg")]), {"texts": ["not a document"]}]
        (tmp_path / "docs").mkdir()
        for k in range(2):  # two files, several row groups each
            pq.write_table(pa.Table.from_pylist(docs[k::2]), tmp_path / "docs" / f"part-{k}.parquet", row_group_size=2)
        _upload(s3, tmp_path / "docs", BUCKET, f"obelics-{mode}/docs")

        def obelics(path: str, out: Path) -> Path:
            source = {
                "name": "obelics",
                "reader": "obelics",
                "path": path,
                "partition_size": 3,
                "max_url_occurrences": 1,  # 0.jpg to 3.jpg are used twice (removed), 4.jpg once
                "cache_dir": str(tmp_path / f"cache-{out.name}"),
                "filters": {
                    "mode": mode,
                    "paragraph": {"min_common_words": None},
                    "document": {"min_common_words": None},
                },
                "download": {"thread_count": 4, "timeout": 2, "resize_mode": "no"},
            }
            recipe = {"name": "obelics", "sources": [source], "output": {"kind": "interleaved"}}
            return build(validate_recipe(recipe), out, workers=1, progress=False).out

        local = obelics(str(tmp_path / "docs"), tmp_path / "local")
        from_url = obelics(f"s3://{BUCKET}/obelics-{mode}/docs", tmp_path / "url")
    ours, theirs = tree_digest(from_url), tree_digest(local)
    assert {k for k in ours if ours[k] != theirs.get(k)} == {"stats.json"}  # its plan_sha256: ETags, not sha256s
    manifest = json.loads((from_url / "dataset.json").read_text())
    dropped = manifest["accounting"]["sources"]["obelics"]["dropped"]
    assert dropped["invalid_document"] == 1 and sum(dropped.values()) == 10  # the overused URLs' and the 404's
    assert manifest["recipe"]["sources"][0]["path"] == "."  # relative to the input root: the prefix itself
    assert manifest["accounting"] == json.loads((local / "dataset.json").read_text())["accounting"]


def _word_tokenizer(path: Path, words: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def test_recipe_files_in_a_bucket_are_copied_once_and_recorded_by_content(s3, aws_env, tmp_path, monkeypatch):
    """A tokenizer and a benchmark (its questions file and its image folder) named by URL: copied into the cache
    once, keyed by the objects' content; the build is the build of the same local files (its recorded recipe
    aside: ``$cache/objects/<key>/...``), the same objects in another bucket give the same build, byte for byte,
    and a replaced object is another build."""
    from tests.sft_data import make_benchmark_inputs

    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "cache"))
    train, benches, _ = make_benchmark_inputs(tmp_path / "in")
    _word_tokenizer(tmp_path / "tok" / "tokenizer.json", ["what", "is", "the", "a", "of", "image"])
    for bucket, prefix in ((BUCKET, "files"), (OTHER, "v2/files")):
        _upload(s3, benches["mathvista"], bucket, f"{prefix}/mathvista")
        _upload(s3, tmp_path / "tok", bucket, f"{prefix}/tok")

    def recipe(root: str) -> dict:
        mathvista = {"name": "mathvista", "images": f"{root}/mathvista/images"}
        mathvista["questions"] = f"{root}/mathvista/questions.jsonl"
        source = {"name": "train", "reader": "jsonl", "record": "sft", "path": str(train["train"])}
        source.update(image_root=str(train["train"].parent / "train"), fields={"key": "id"}, partition_size=16)
        return {
            "name": "decontam",
            "sources": [source],
            "steps": [{"step": "decontaminate", "benchmarks": [mathvista]}],
            "output": {"kind": "sft", "rejects": True},
            "tokenizer": {"type": "tokenizer_json", "path": f"{root}/tok/tokenizer.json"},
        }

    local_files = tmp_path / "local-files"
    shutil.copytree(benches["mathvista"], local_files / "mathvista")
    shutil.copytree(tmp_path / "tok", local_files / "tok")
    local = build(validate_recipe(recipe(str(local_files))), tmp_path / "local", workers=1, progress=False)
    url = build(validate_recipe(recipe(f"s3://{BUCKET}/files")), tmp_path / "url", workers=2, progress=False)
    other = build(validate_recipe(recipe(f"s3://{OTHER}/v2/files")), tmp_path / "other", workers=1, progress=False)
    assert tree_digest(url.out) == tree_digest(other.out)  # where the objects are is not what they are
    ours, theirs = tree_digest(url.out), tree_digest(local.out)
    assert {k for k in ours if ours[k] != theirs[k]} <= {"dataset.json", "stats.json", "README.md"}
    assert url.manifest.accounting == local.manifest.accounting
    dropped = url.manifest.accounting["sources"]["train"]["dropped"]
    assert any(reason.startswith("contaminated_image:mathvista") for reason in dropped), dropped
    assert url.manifest.totals["text_tokens"] == local.manifest.totals["text_tokens"]  # the same tokenizer's counts
    recorded = json.loads((url.out / "dataset.json").read_text())["recipe"]
    assert recorded["tokenizer"]["path"].startswith("$cache/objects/")
    assert recorded["tokenizer"]["path"].endswith("/tokenizer.json")
    assert recorded["steps"][0]["benchmarks"][0]["images"].endswith("/images")
    assert len(list((tmp_path / "cache" / "objects").iterdir())) == 3  # one copy each, shared by both buckets
    assert not list((tmp_path / "cache" / "objects").glob(".*"))  # no copy left half made
    # another tokenizer under the same URL: another copy, another build (refused without --overwrite)
    _word_tokenizer(tmp_path / "tok2" / "tokenizer.json", ["what", "is"])
    s3.client().upload_file(str(tmp_path / "tok2" / "tokenizer.json"), BUCKET, "files/tok/tokenizer.json")
    with pytest.raises(CurationError, match=r"another recipe|--overwrite"):
        build(validate_recipe(recipe(f"s3://{BUCKET}/files")), tmp_path / "url", workers=1, progress=False)
    missing = recipe(f"s3://{BUCKET}/files")
    missing["tokenizer"]["path"] = f"s3://{BUCKET}/files/tok/nope.json"
    with pytest.raises(CurationError) as err:
        build(validate_recipe(missing), tmp_path / "missing", workers=1, progress=False)
    assert str(err.value).startswith("tokenizer.path: no such object or prefix: s3://")
    assert not (tmp_path / "missing").exists()


def test_a_node_without_the_drivers_copy_makes_its_own(s3, aws_env, tmp_path, monkeypatch):
    """A partition task on a Ray node that does not see the driver's cache copies the same URL into its own."""
    from curation.storage.copies import copies_in, localize_on_this_node

    _word_tokenizer(tmp_path / "tok" / "tokenizer.json", ["a", "b"])
    _upload(s3, tmp_path / "tok", BUCKET, "node/tok")
    source = {"name": "s", "reader": "jsonl", "path": str(tmp_path / "x.jsonl")}
    doc = {"name": "r", "sources": [source], "output": {"kind": "pair"}}
    doc["tokenizer"] = {"type": "tokenizer_json", "path": f"s3://{BUCKET}/node/tok/tokenizer.json"}
    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "driver"))
    given = validate_recipe(doc)
    recipe = check_inputs(given)
    assert given.tokenizer.path == doc["tokenizer"]["path"]  # the recipe given keeps its URL
    copies = copies_in(recipe)
    driver_copy = recipe.tokenizer.path
    assert copies == {f"s3://{BUCKET}/node/tok/tokenizer.json": driver_copy}
    assert driver_copy.startswith(str(tmp_path / "driver" / "objects"))
    on_node = recipe.model_copy(deep=True)
    localize_on_this_node(on_node, copies)
    assert on_node.tokenizer.path == driver_copy  # it sees the driver's copy: nothing to do
    shutil.rmtree(tmp_path / "driver")
    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "node"))
    localize_on_this_node(on_node, copies)
    assert on_node.tokenizer.path == str(tmp_path / "node") + driver_copy.removeprefix(str(tmp_path / "driver"))
    assert Path(on_node.tokenizer.path).read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    # replaced in the bucket since the driver copied it: a node never reads other bytes than the driver planned with
    _word_tokenizer(tmp_path / "tok2" / "tokenizer.json", ["c"])
    _upload(s3, tmp_path / "tok2", BUCKET, "node/tok")
    shutil.rmtree(tmp_path / "node")
    with pytest.raises(CurationError, match=r"changed in the bucket since the build began"):
        localize_on_this_node(recipe.model_copy(deep=True), copies)
    # an object whose name cannot be a file under the copy
    s3.client().put_object(Bucket=BUCKET, Key="node/bad/a//b.json", Body=b"{}")
    doc["tokenizer"] = {"type": "transformers", "path": f"s3://{BUCKET}/node/bad"}
    with pytest.raises(CurationError, match=r"cannot be a file under"):
        check_inputs(validate_recipe(doc))
    assert not list((tmp_path / "node").rglob("b.json"))


def test_a_mixture_with_a_tokenizer_in_a_bucket_records_its_url_and_is_complete_when_rerun(
    s3, aws_env, inputs, tmp_path, monkeypatch
):
    """A mixture (and its inline build) whose tokenizer is named by URL: the sub-build records the copy and is
    found complete again (its identity is computed from the copy, as it records it); the mixture records the URL
    it was given."""

    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "cache"))
    _word_tokenizer(tmp_path / "tok" / "tokenizer.json", ["describe", "the", "image", "a", "shape"])
    _upload(s3, tmp_path / "tok", BUCKET, "mixtok")
    tokenizer = {"type": "tokenizer_json", "path": f"s3://{BUCKET}/mixtok/tokenizer.json"}
    sub = {k: v for k, v in _local_recipe(inputs).items() if k != "kind"} | {"tokenizer": tokenizer}
    doc = {
        "kind": "mixture",
        "name": "mix",
        "datasets": {"d": {"build": sub}},
        "components": [
            {"name": "captions", "dataset": "d", "target": {"epochs": 1}},
            {"name": "conversations", "dataset": "d", "target": {"epochs": 1}},
        ],
        "tokenizer": tokenizer,
    }
    recipe_file = write_recipe(tmp_path / "mix.yaml", doc)
    cmd = [*CLI, "build", str(recipe_file), "--out", str(tmp_path / "mix"), "-q"]
    crash = {**os.environ, "VLM_CURATION_CRASH_AT": "mixture_bucket"}
    killed = subprocess.run(cmd, capture_output=True, text=True, env=crash)
    assert killed.returncode != 0 and not (tmp_path / "mix" / "dataset.json").exists()
    sub_file = tmp_path / "mix" / "_datasets" / "d" / "dataset.json"
    sub_manifest, built_at = json.loads(sub_file.read_text()), sub_file.stat().st_mtime_ns
    assert sub_manifest["recipe"]["tokenizer"]["path"].startswith("$cache/objects/")
    rerun = subprocess.run(cmd, capture_output=True, text=True)  # the sub-build is found complete, as recorded
    assert rerun.returncode == 0, rerun.stderr
    assert sub_file.stat().st_mtime_ns == built_at
    manifest = json.loads((tmp_path / "mix" / "dataset.json").read_text())
    assert manifest["recipe"]["tokenizer"]["path"] == tokenizer["path"]  # the mixture records what it was given
    assert manifest["recipe"]["datasets"]["d"]["build"]["tokenizer"]["path"] == tokenizer["path"]
    assert manifest["totals"]["text_tokens"] == sub_manifest["totals"]["text_tokens"]


def test_a_sweeps_trainer_model_and_benchmark_in_a_bucket_are_copied(s3, aws_env, reference, tmp_path, monkeypatch):
    """A selection sweep's reference-trainer model (a folder) and builtin-evaluator benchmark (a build) named by
    URL: copied before the trials are prepared; a build's run logs and lock are not part of its copy."""
    from curation.storage.copies import fetch_recipe_files
    from tests.integration.test_select import _recipe as selection_recipe

    monkeypatch.setenv("VLM_CURATION_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "tiny"}')
    (model / "sub" / "weights.safetensors").write_bytes(os.urandom(3000))
    (model / ".cache").mkdir()
    (model / ".cache" / "junk").write_text("not the model")
    _upload(s3, model, BUCKET, "sweep/model")
    _upload(s3, reference, BUCKET, "sweep/bench")
    s3.client().put_object(Bucket=BUCKET, Key="sweep/bench/_logs/build-1.json", Body=b"{}")
    doc = selection_recipe(tmp_path, tmp_path / "trained.txt")
    doc["trainer"] = {"type": "reference", "model": f"s3://{BUCKET}/sweep/model"}
    doc["evaluator"] = {"type": "builtin", "benchmarks": [{"name": "b", "shards": f"s3://{BUCKET}/sweep/bench"}]}
    recipe = fetch_recipe_files(validate_recipe(doc))
    copied_model, copied_bench = Path(recipe.trainer.model), Path(recipe.evaluator.benchmarks[0].shards)
    assert copied_model.is_relative_to(tmp_path / "cache" / "objects") and copied_model.name == "model"
    assert sorted(p.relative_to(copied_model).as_posix() for p in copied_model.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/weights.safetensors",
    ]
    assert (copied_model / "sub" / "weights.safetensors").read_bytes() == (
        model / "sub" / "weights.safetensors"
    ).read_bytes()
    assert tree_digest(copied_bench) == tree_digest(reference)
    assert not (copied_bench / "_logs").exists()


def test_an_object_replaced_while_it_is_read_is_an_os_error_never_a_mix_of_versions(s3, aws_env):
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="changing.bin", Body=os.urandom(3 << 20))
    with open_url(f"s3://{BUCKET}/changing.bin", 1 << 20) as f:
        f.read(1000)
        client.put_object(Bucket=BUCKET, Key="changing.bin", Body=os.urandom(3 << 20))
        f.seek(2 << 20)
        with pytest.raises(OSError, match="changed while it was read"):  # readers make drops of it, as locally
            f.read(1000)


def test_a_missing_object_a_missing_bucket_and_wrong_credentials_are_one_line_errors(
    s3, aws_env, inputs, tmp_path, monkeypatch
):
    missing = _url_recipe(f"s3://{BUCKET}/in")
    missing["sources"][1]["path"] = f"s3://{BUCKET}/in/nope.parquet"
    with pytest.raises(CurationError) as err:
        build(validate_recipe(missing), tmp_path / "a", workers=1, progress=False)
    assert str(err.value) == f"sources.conversations.path: no such object or prefix: s3://{BUCKET}/in/nope.parquet"
    no_bucket = _url_recipe("s3://no-such-bucket-here/in")
    with pytest.raises(CurationError, match=r"^sources.captions.path: .*the bucket 'no-such-bucket-here' does not"):
        build(validate_recipe(no_bucket), tmp_path / "b", workers=1, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written
    # wrong credentials: one line naming the field, no secret, nothing written
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(CurationError) as err:
        build(validate_recipe(_url_recipe(f"s3://{BUCKET}/in")), tmp_path / "c", workers=1, progress=False)
    line = str(err.value)
    assert line.startswith("sources.captions.path: s3://") and "access denied" in line and "\n" not in line, line
    assert "wrong-secret" not in line and s3.secret not in line
    assert not (tmp_path / "c").exists()
