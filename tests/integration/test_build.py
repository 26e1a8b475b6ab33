"""The build runner's guarantees: exact accounting, determinism, resume after kill -9, atomic shards."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.errors import CurationError, RecipeError
from curation.recipe import validate_recipe
from shards import iter_dataset, read_manifest, verify_dataset
from shards.atomic import sha256_file
from tests.builds import CLI, demo_recipe, make_inputs, tree_digest, write_recipe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("inputs")
    planted = make_inputs(root, n_captions=600, n_conversations=120)
    return root, planted


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """An uninterrupted single-worker build everything else is compared with."""
    root, _ = inputs
    out = tmp_path_factory.mktemp("ref") / "ds"
    build(validate_recipe(demo_recipe(root)), out, workers=1, progress=False)
    return out


def test_accounting_is_exact_and_finds_every_planted_defect(inputs, reference):
    _, planted = inputs
    m = read_manifest(reference)
    cap = m.accounting["sources"]["captions"]
    assert cap["input"] == 601  # 600 lines + one broken JSON line
    for reason, n in planted.items():
        assert cap["dropped"].get(reason, 0) == n, reason
    assert cap["output"] == cap["input"] - sum(planted.values())
    conv = m.accounting["sources"]["conversations"]
    assert conv == {"input": 120, "output": 120, "dropped": {}}
    for step in m.accounting["steps"]:
        for source, c in step["sources"].items():
            assert c["input"] == c["output"] + sum(c["dropped"].values()), (step["step"], source)
    assert m.totals["samples"] == cap["output"] + conv["output"] == sum(1 for _ in iter_dataset(reference))
    assert verify_dataset(reference).ok
    stats = json.loads((reference / "stats.json").read_text())
    assert stats["accounting"] == m.accounting
    assert sum(p["rows"] for p in stats["partitions"]) == cap["input"] + conv["input"]
    for p in stats["partitions"]:  # each partition's own accounting is exact too
        read = next(s for s in p["accounting"]["steps"] if s["step"] == "read")["sources"][p["source"]]
        assert read["input"] == p["rows"]


def test_rejects_hold_every_dropped_sample_with_its_reason(reference):
    m = read_manifest(reference)
    rows = [r for s in m.rejects for r in pq.read_table(reference / s.sidecar).to_pylist()]
    dropped = sum(sum(s["dropped"].values()) for s in m.accounting["sources"].values())
    assert len(rows) == dropped
    reasons = {}
    for r in rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    assert reasons == {k: v for k, v in m.accounting["sources"]["captions"]["dropped"].items()}


def test_two_workers_give_byte_identical_output(inputs, reference, tmp_path):
    root, _ = inputs
    build(validate_recipe(demo_recipe(root)), tmp_path / "ds", workers=2, progress=False)
    assert tree_digest(tmp_path / "ds") == tree_digest(reference)


def test_rerun_of_a_complete_build_does_nothing(inputs, reference):
    root, _ = inputs
    before = tree_digest(reference)
    result = build(validate_recipe(demo_recipe(root)), reference, progress=False)
    assert result.state == "complete"
    assert tree_digest(reference) == before


def _visible_shards_are_complete(out: Path) -> None:
    """Readers never see partial shards: every visible tar has its sidecar and matching stats."""
    for tar in out.rglob("*.tar"):
        if "_work" in tar.parts:
            continue
        stats = json.loads(tar.with_name(tar.name[:-4] + ".stats.json").read_text())
        assert tar.with_name(tar.name[:-4] + ".parquet").is_file()
        assert sha256_file(tar) == stats["sha256"], tar


@pytest.mark.parametrize(
    "crash_at",
    ["record:150", "partition_staged:3", "commit_shard:2", "rewrite_tar_written:1", "before_manifest:1"],
)
def test_resume_after_kill_9_is_byte_identical(crash_at, inputs, reference, tmp_path):
    root, _ = inputs
    recipe = write_recipe(tmp_path / "demo.yaml", demo_recipe(root))
    out = tmp_path / "ds"
    env = {**os.environ, "VLM_CURATION_CRASH_AT": crash_at}
    killed = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not (out / "dataset.json").exists()
    _visible_shards_are_complete(out)
    done = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stderr
    assert tree_digest(out) == tree_digest(reference)


def test_killed_after_its_manifest_a_build_finishes_its_card_and_cleanup(inputs, reference, tmp_path):
    """dataset.json marks a build complete; a kill before the card and the clean-up is finished by the rerun."""
    root, _ = inputs
    recipe = write_recipe(tmp_path / "demo.yaml", demo_recipe(root))
    out = tmp_path / "ds"
    env = {**os.environ, "VLM_CURATION_CRASH_AT": "after_manifest:1"}
    killed = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL and (out / "dataset.json").exists()
    assert (out / "_work").exists() and not (out / "README.md").exists()
    done = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], capture_output=True, text=True)
    assert done.returncode == 0 and "already built" in done.stderr
    assert tree_digest(out) == tree_digest(reference)


def test_resume_skips_finished_partitions(inputs, tmp_path):
    root, _ = inputs
    recipe = write_recipe(tmp_path / "demo.yaml", demo_recipe(root))
    out = tmp_path / "ds"
    env = {**os.environ, "VLM_CURATION_CRASH_AT": "partition_staged:4"}
    subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], env=env, capture_output=True)
    finished = sorted(p.name for p in (out / "_work").iterdir() if p.is_dir() and ".tmp" not in p.name)
    assert finished == ["p00000", "p00001", "p00002"]
    subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], check=True, capture_output=True)
    log = json.loads(next((out / "_logs").glob("build-*.json")).read_text())
    assert log["partitions_skipped"] == 3
    assert log["input_rows_processed"] == 721 - 300  # 3 partitions of 100 lines were done


@pytest.mark.slow
def test_resume_after_kill_9_at_random_moments(inputs, reference, tmp_path):
    root, _ = inputs
    recipe = write_recipe(tmp_path / "demo.yaml", demo_recipe(root))
    rng = random.Random(7)
    for attempt in range(3):
        out = tmp_path / f"ds{attempt}"
        kills = 0
        for _ in range(6):
            proc = subprocess.Popen(
                [*CLI, "build", str(recipe), "--out", str(out), "-q", "--workers", "2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(rng.uniform(0.5, 3.0))
            if proc.poll() is None:
                if kills % 2:  # only the main process, as an OOM killer would: workers are orphaned
                    os.kill(proc.pid, signal.SIGKILL)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
            if (out / "dataset.json").exists():
                break
            _visible_shards_are_complete(out)
        subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], check=True, capture_output=True)
        assert tree_digest(out) == tree_digest(reference), f"attempt {attempt} after {kills} kills"


def test_limit_builds_a_prefix_of_the_full_build(inputs, reference, tmp_path):
    root, _ = inputs
    build(validate_recipe(demo_recipe(root)), tmp_path / "small", limit=250, progress=False)
    small = [r.key for r in iter_dataset(tmp_path / "small")]
    full = [r.key for r in iter_dataset(reference)]
    assert 0 < len(small) < len(full)
    assert full[: len(small)] == small
    assert read_manifest(tmp_path / "small").accounting["sources"]["captions"]["input"] == 250


def test_refuses_an_output_directory_holding_another_recipe(inputs, reference, tmp_path):
    root, _ = inputs
    other = validate_recipe(demo_recipe(root, steps__2__min_side=64))
    with pytest.raises(CurationError, match=r"different recipe.*--overwrite"):
        build(other, reference, progress=False)
    assert verify_dataset(reference).ok  # untouched
    out = tmp_path / "ds"
    build(validate_recipe(demo_recipe(root)), out, progress=False)
    result = build(other, out, overwrite=True, progress=False)
    assert result.state == "fresh"
    assert read_manifest(out).accounting["sources"]["captions"]["dropped"]["image_too_small"] > 8


def test_refuses_a_foreign_non_empty_directory(inputs, tmp_path):
    root, _ = inputs
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(CurationError, match="not empty"):
        build(validate_recipe(demo_recipe(root)), tmp_path, overwrite=True, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_missing_input_path_is_a_clear_error(inputs, tmp_path):
    root, _ = inputs
    recipe = validate_recipe(demo_recipe(root, sources__0__path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(CurationError, match=r"sources\.captions\.path: no such file or directory"):
        build(recipe, tmp_path / "ds", progress=False)


def test_kind_mismatch_names_the_fix(inputs, tmp_path):
    root, _ = inputs
    recipe = demo_recipe(root)
    recipe["steps"] = [s for s in recipe["steps"] if s["step"] != "pair_to_sft"]
    with pytest.raises(RecipeError, match="pair_to_sft"):
        build(validate_recipe(recipe), tmp_path / "ds", progress=False)


def test_truncated_shard_in_a_shards_source_becomes_drops(reference, tmp_path):
    src = tmp_path / "src"
    build(
        validate_recipe(
            {
                "name": "copy",
                "sources": [{"name": "prev", "reader": "shards", "path": str(reference)}],
                "output": {"kind": "sft", "max_samples_per_shard": 50},
            }
        ),
        src,
        progress=False,
    )
    m = read_manifest(src)
    victim = src / m.shards[1].name
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    build(
        validate_recipe(
            {
                "name": "reshard",
                "sources": [{"name": "prev", "reader": "shards", "path": str(src)}],
                "output": {"kind": "sft"},
            }
        ),
        out,
        progress=False,
    )
    acc = read_manifest(out).accounting["sources"]["prev"]
    assert acc["input"] == m.totals["samples"]
    lost = acc["dropped"]["shard_damaged"]
    assert 0 < lost <= m.shards[1].samples
    assert acc["output"] == m.totals["samples"] - lost


def test_zero_byte_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    recipe = validate_recipe(
        {
            "name": "e",
            "sources": [{"name": "s", "reader": "jsonl", "path": str(tmp_path / "empty.jsonl")}],
            "output": {"kind": "pair"},
        }
    )
    result = build(recipe, tmp_path / "ds", progress=False)
    assert result.manifest.totals["samples"] == 0 and verify_dataset(tmp_path / "ds").ok
    (tmp_path / "empty.parquet").write_bytes(b"")
    recipe = validate_recipe(
        {
            "name": "e",
            "sources": [{"name": "s", "reader": "parquet", "path": str(tmp_path / "empty.parquet")}],
            "output": {"kind": "pair"},
        }
    )
    with pytest.raises(CurationError, match="cannot read parquet file"):
        build(recipe, tmp_path / "ds2", progress=False)


def test_jsonl_wrong_types_and_pair_output(tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(img)
    lines = [
        {"image": "a.png", "caption": "fine"},
        {"image": "a.png", "caption": ["not", "a", "string"]},
        {"image": 7, "caption": "image is a number"},
        {"caption": "no image at all"},
        [1, 2, 3],
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    recipe = validate_recipe(
        {
            "name": "p",
            "sources": [
                {"name": "s", "reader": "jsonl", "path": str(tmp_path / "in.jsonl"), "image_root": str(tmp_path)}
            ],
            "output": {"kind": "pair"},
        }
    )
    m = build(recipe, tmp_path / "ds", progress=False).manifest
    assert m.accounting["sources"]["s"] == {
        "input": 5,
        "output": 1,
        "dropped": {"invalid_image_field": 1, "invalid_json": 1, "invalid_record:caption": 1, "missing_field:image": 1},
    }
    (record,) = list(iter_dataset(tmp_path / "ds"))
    assert record.image[:3] == b"\xff\xd8\xff"  # the png was stored as the dataset's jpg


def test_a_second_concurrent_build_into_the_same_directory_is_refused(inputs, tmp_path):
    from curation.build.output_dir import OutputDir

    root, _ = inputs
    out = tmp_path / "ds"
    out.mkdir()
    with OutputDir(out).lock(), pytest.raises(CurationError, match="another build is running"):
        build(validate_recipe(demo_recipe(root)), out, progress=False)
    assert build(validate_recipe(demo_recipe(root)), out, progress=False).state == "fresh"


def test_overwrite_never_deletes_files_the_toolkit_did_not_write(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "ds"
    build(validate_recipe(demo_recipe(root)), out, progress=False)
    (out / "MYNOTES.txt").write_text("precious")
    (out / "mydir").mkdir()
    (out / "mydir" / "f").write_text("p")
    before = tree_digest(out)
    other = validate_recipe(demo_recipe(root, steps__2__min_side=64))
    with pytest.raises(CurationError, match=r"did not write \(MYNOTES.txt, mydir/\)"):
        build(other, out, overwrite=True, progress=False)
    assert tree_digest(out) == before and verify_dataset(out).ok


def test_overwrite_with_a_broken_recipe_keeps_the_old_build(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "ds"
    build(validate_recipe(demo_recipe(root)), out, progress=False)
    before = tree_digest(out)
    broken = validate_recipe(demo_recipe(root, sources__0__path=str(tmp_path / "typo.jsonl")))
    with pytest.raises(CurationError, match="no such file"):
        build(broken, out, overwrite=True, progress=False)
    assert tree_digest(out) == before


def test_a_failed_start_leaves_the_output_directory_usable(inputs, tmp_path):
    root, _ = inputs
    out = tmp_path / "fresh"
    with pytest.raises(CurationError, match="no such file"):
        build(validate_recipe(demo_recipe(root, sources__0__path=str(tmp_path / "typo.jsonl"))), out, progress=False)
    assert not out.exists()
    out.mkdir()
    (out / "_work").mkdir()  # what an older version left behind after a failed start
    assert build(validate_recipe(demo_recipe(root)), out, progress=False).state == "fresh"
    assert not (out / ".lock").exists()


def test_output_inside_a_source_or_a_file_is_refused(inputs, reference, tmp_path):
    root, _ = inputs
    as_dir = validate_recipe(demo_recipe(root, sources__1__path=str(root)))  # every parquet under root
    with pytest.raises(CurationError, match="overlap; the build would read its own output"):
        build(as_dir, root / "out", progress=False)
    copy = {
        "name": "copy",
        "sources": [{"name": "prev", "reader": "shards", "path": str(reference)}],
        "output": {"kind": "sft"},
    }
    with pytest.raises(CurationError, match="overlap"):
        build(validate_recipe(copy), reference, overwrite=True, progress=False)
    assert verify_dataset(reference).ok
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CurationError, match="is a file, not a directory"):
        build(validate_recipe(demo_recipe(root)), tmp_path / "afile", progress=False)
    with pytest.raises(CurationError, match="cannot create the directory"):
        build(validate_recipe(demo_recipe(root)), tmp_path / "afile" / "sub", progress=False)


def test_changed_inputs_are_noticed_on_rerun(tmp_path):
    make_inputs(tmp_path / "in", n_captions=60, n_conversations=10)
    recipe = validate_recipe(demo_recipe(tmp_path / "in"))
    build(recipe, tmp_path / "ds", progress=False)
    with open(tmp_path / "in" / "captions.jsonl", "a") as f:
        f.write('{"id": "new", "file": "img_00001.jpg", "text": "one more caption"}\n')
    with pytest.raises(CurationError, match="inputs have changed"):
        build(recipe, tmp_path / "ds", progress=False)
    assert (
        build(recipe, tmp_path / "ds", overwrite=True, progress=False).manifest.accounting["sources"]["captions"][
            "input"
        ]
        == 62
    )


def _pairs(tmp_path: Path, rows: list, **recipe_changes) -> tuple:
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), (9, 8, 7)).save(tmp_path / "b.png")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = {
        "name": "p",
        "sources": [{"name": "s", "reader": "jsonl", "path": str(tmp_path / "in.jsonl"), "image_root": str(tmp_path)}],
        "output": {"kind": "pair"},
    }
    recipe.update(recipe_changes)
    m = build(validate_recipe(recipe), tmp_path / "ds", progress=False).manifest
    return m, list(iter_dataset(tmp_path / "ds"))


def test_distinct_input_ids_stay_distinct_keys(tmp_path):
    ids = ["猫", "犬", "a.b", "a/b", "a b", "x" * 250, "x" * 250 + "y", "ok-id"]
    m, records = _pairs(tmp_path, [{"key": i, "image": "a.png", "caption": f"caption {n}"} for n, i in enumerate(ids)])
    assert m.accounting["sources"]["s"] == {"input": 8, "output": 8, "dropped": {}}
    assert len({r.key for r in records}) == 8
    by_caption = {r.caption: r for r in records}
    assert by_caption["caption 7"].key == "ok-id" and "source_id" not in by_caption["caption 7"].meta
    assert by_caption["caption 0"].meta["source_id"] == "猫"


def test_keys_are_unique_across_the_whole_dataset(tmp_path):
    rows = [{"key": "same" if i % 3 == 0 else f"k{i}", "image": "a.png", "caption": f"c {i}"} for i in range(9)]
    m, records = _pairs(tmp_path, rows, output={"kind": "pair", "max_samples_per_shard": 1})  # one sample per shard
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)) == 7
    assert m.accounting["sources"]["s"]["dropped"] == {"duplicate_key": 2}
    assert [r.caption for r in records if r.key == "same"] == ["c 0"]  # the first one wins


def test_parquet_values_that_are_not_json_go_to_meta_as_json(tmp_path):
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(img)
    table = pa.table(
        {
            "image": [str(img)],
            "caption": ["fine"],
            "ts": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5)]),
            "price": pa.array([decimal.Decimal("1.50")]),
            "blob": pa.array([b"\x00\x01"]),
            "score": pa.array([float("nan")]),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    recipe = {
        "name": "p",
        "sources": [{"name": "s", "reader": "parquet", "path": str(tmp_path / "in.parquet")}],
        "output": {"kind": "pair"},
    }
    build(validate_recipe(recipe), tmp_path / "ds", progress=False)
    (record,) = list(iter_dataset(tmp_path / "ds"))
    assert record.meta == {"ts": "2024-01-02T03:04:05", "price": "1.50", "blob": "AAE=", "score": None}


def test_lone_surrogates_are_a_drop_not_a_crash(tmp_path):
    rows = [{"image": "a.png", "caption": "fine"}, {"image": "b.png", "caption": "bad \ud800 text"}]
    m, records = _pairs(tmp_path, rows, output={"kind": "pair", "rejects": True})
    assert m.accounting["sources"]["s"]["dropped"] == {"invalid_unicode": 1}
    assert [r.caption for r in records] == ["fine"] and verify_dataset(tmp_path / "ds").ok


def test_text_field_that_does_not_fit_the_kind_is_a_recipe_error(inputs, tmp_path):
    root, _ = inputs
    recipe = demo_recipe(root)
    recipe["steps"].insert(4, {"step": "text_length", "field": "caption", "name": "caption_length"})
    with pytest.raises(RecipeError, match="'caption' needs pair records"):
        build(validate_recipe(recipe), tmp_path / "ds", progress=False)


def test_a_source_cut_off_by_limit_still_shows(inputs, tmp_path):
    root, _ = inputs
    m = build(validate_recipe(demo_recipe(root)), tmp_path / "ds", limit=50, progress=False).manifest
    assert m.accounting["sources"]["conversations"] == {"input": 0, "output": 0, "dropped": {}}


def test_duplicate_image_rejects_name_the_real_origin_and_the_kept_sample(reference):
    m = read_manifest(reference)
    rows = [r for s in m.rejects for r in pq.read_table(reference / s.sidecar).to_pylist()]
    dups = [r for r in rows if r["reason"] == "duplicate_image"]
    assert dups and all(r["origin"].endswith(tuple(f":{n}" for n in range(1, 10_000))) for r in dups)
    assert all(r["detail"].startswith("same images as cap") and "captions.jsonl:" in r["detail"] for r in dups)
