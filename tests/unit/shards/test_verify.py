"""verify_dataset finds every kind of damage, one line each, and never raises on a damaged dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation.build.rejects import RejectsWriter
from curation.sample import Drop
from shards import ManifestError, read_manifest
from shards.atomic import sha256_file
from shards.manifest import MANIFEST_NAME, DatasetManifest, ShardInfo, write_wids_index
from shards.verify import verify_dataset
from shards.writer import PARQUET_OPTIONS
from tests.helpers import sft_record, write_shards
from tests.unit.shards.test_shards import records_of, shard_totals


def accounting(written: int, dropped_at_probe: int = 2) -> dict:
    """An exact accounting: read -> probe -> write, one source."""
    read = written + dropped_at_probe
    steps = [
        {"step": "read", "sources": {"src": {"input": read, "output": read, "dropped": {}}}},
        {
            "step": "probe",
            "sources": {"src": {"input": read, "output": written, "dropped": {"image_empty": dropped_at_probe}}},
        },
        {"step": "write", "sources": {"src": {"input": written, "output": written, "dropped": {}}}},
    ]
    summary = {"src": {"input": read, "output": written, "dropped": {"image_empty": dropped_at_probe}}}
    return {"steps": steps, "sources": summary}


def make_manifest(directory: Path, shards: list[ShardInfo], rejects: list[ShardInfo] = ()) -> DatasetManifest:
    manifest = DatasetManifest(
        name="ds",
        kind="sft",
        tool_version="test",
        recipe={"name": "ds"},
        recipe_sha256="0" * 64,
        shards=shards,
        rejects=list(rejects),
        totals=shard_totals(directory, shards),
        accounting=accounting(sum(s.samples for s in shards)),
        wids_index=write_wids_index(directory, "ds", shards),
    )
    manifest.write(directory)
    return manifest


def edit_manifest(directory: Path, change) -> None:
    doc = json.loads((directory / MANIFEST_NAME).read_text())
    change(doc)
    (directory / MANIFEST_NAME).write_text(json.dumps(doc))


def write_rejects(directory: Path, n: int, per_shard: int) -> list[ShardInfo]:
    writer = RejectsWriter(directory / "rejects", "ds", max_samples=per_shard, folder="rejects")
    for i in range(n):
        record = sft_record(100 + i)
        writer.add("probe", Drop("image_empty", "src", f"in.jsonl:{i}", record.key, "zero-byte image", record))
    return writer.close()


@pytest.fixture
def built(tmp_path) -> tuple[Path, DatasetManifest]:
    directory = tmp_path / "built"
    shards = write_shards(directory, records_of("sft", 9), max_samples=4)
    rejects = write_rejects(directory, 5, per_shard=2)
    return directory, make_manifest(directory, shards, rejects)


def test_a_good_dataset_passes_with_separate_counters(built):
    directory, manifest = built
    report = verify_dataset(directory)
    assert report.problems == []
    assert (report.shards_checked, report.samples_checked) == (3, 9)
    assert (report.rejects_checked, report.rejects_samples_checked) == (3, 5)
    assert report.summary() == "3 shards, 9 samples (+ 3 rejects shards)"
    assert all(s.sidecar_sha256 == sha256_file(directory / s.sidecar) for s in manifest.shards)


def test_summary_without_rejects(tmp_path):
    shards = write_shards(tmp_path, records_of("sft", 3))
    make_manifest(tmp_path, shards)
    report = verify_dataset(tmp_path)
    assert report.ok and report.rejects_checked == 0
    assert report.summary() == "1 shards, 3 samples"


# -- (a) sidecars ------------------------------------------------------------------------------------


def test_sidecar_sha256_is_in_stats_and_manifest(built):
    directory, manifest = built
    for s in manifest.shards:
        stats = json.loads((directory / s.stats).read_text())
        assert stats["sidecar_sha256"] == s.sidecar_sha256 == sha256_file(directory / s.sidecar)
    assert read_manifest(directory).shards == manifest.shards


def test_a_tampered_sidecar_is_caught(built):
    directory, manifest = built
    shard = manifest.shards[1]
    path = directory / shard.sidecar
    table = pq.read_table(path)
    tokens = table.schema.get_field_index("text_tokens")
    table = table.set_column(tokens, table.schema.field(tokens), pc.add(table.column(tokens), 1000))
    pq.write_table(table, path, **PARQUET_OPTIONS)  # same keys, same row count: only the hash tells
    report = verify_dataset(directory)
    assert report.problems == [f"{shard.sidecar}: sha256 differs from the manifest"]


def test_an_unreadable_sidecar_is_a_problem_not_a_crash(built):
    directory, manifest = built
    shard = manifest.shards[0]
    (directory / shard.sidecar).write_bytes(b"PAR1 garbage")
    report = verify_dataset(directory)
    assert report.problems[0] == f"{shard.sidecar}: sha256 differs from the manifest"
    assert report.problems[1].startswith(f"{shard.sidecar}: unreadable sidecar (")
    assert len(report.problems) == 2


def test_a_manifest_without_sidecar_hashes_still_loads_and_verifies(built):
    directory, _ = built

    def drop_hashes(doc):
        for s in [*doc["shards"], *doc["rejects"]]:
            s.pop("sidecar_sha256", None)

    edit_manifest(directory, drop_hashes)
    manifest = read_manifest(directory)
    assert {s.sidecar_sha256 for s in manifest.shards} == {None}
    assert ShardInfo.from_stats("x", {"sha256": "0", "samples": 1, "bytes": 2}).sidecar_sha256 is None
    assert verify_dataset(directory).problems == []


# -- (b) stats files -------------------------------------------------------------------------------


def test_a_deleted_stats_file_is_caught(built):
    directory, manifest = built
    (directory / manifest.shards[2].stats).unlink()
    (directory / manifest.rejects[0].stats).unlink()
    report = verify_dataset(directory)
    assert report.problems == [
        f"{manifest.shards[2].stats}: missing stats file",
        f"{manifest.rejects[0].stats}: missing stats file",
    ]


@pytest.mark.parametrize(("key", "value"), [("samples", 99), ("bytes", 1), ("sha256", "f" * 64)])
def test_stats_that_disagree_with_the_manifest_are_caught(built, key, value):
    directory, manifest = built
    shard = manifest.shards[0]
    stats = json.loads((directory / shard.stats).read_text())
    old = stats[key]
    stats[key] = value
    (directory / shard.stats).write_text(json.dumps(stats))
    report = verify_dataset(directory)
    assert report.problems == [f"{shard.stats}: {key} {value!r} != manifest {old!r}"]


def test_an_unreadable_stats_file_is_a_problem(built):
    directory, manifest = built
    (directory / manifest.shards[0].stats).write_text("{oops")
    report = verify_dataset(directory)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{manifest.shards[0].stats}: unreadable stats file (")


# -- (c) totals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["samples", "bytes", "shards", "images", "text_tokens", "answer_tokens"])
def test_wrong_totals_are_caught(built, key):
    directory, manifest = built
    right = manifest.totals[key]
    edit_manifest(directory, lambda doc: doc["totals"].update({key: right + 1}))
    report = verify_dataset(directory)
    assert report.problems == [f"totals.{key} {right + 1} != sum over shards {right}"]


def test_missing_totals_are_caught(built):
    directory, _ = built
    edit_manifest(directory, lambda doc: doc["totals"].pop("images"))
    assert verify_dataset(directory).problems == ["totals.images missing from the manifest"]


def test_totals_are_the_sums_of_the_stats(built):
    directory, manifest = built
    stats = [json.loads((directory / s.stats).read_text()) for s in manifest.shards]
    assert manifest.totals["images"] == sum(s["images"] for s in stats) > 0
    assert manifest.totals["text_tokens"] == sum(s["text_tokens"] for s in stats) > 0


# -- (d) accounting --------------------------------------------------------------------------------


def test_a_step_that_loses_samples_is_caught(built):
    directory, _ = built

    def lose(doc):
        doc["accounting"]["steps"][1]["sources"]["src"]["dropped"]["image_empty"] = 1
        doc["accounting"]["sources"]["src"]["dropped"]["image_empty"] = 1
        doc["accounting"]["sources"]["src"]["input"] = 10

    edit_manifest(directory, lose)
    report = verify_dataset(directory)
    assert report.problems == [
        "accounting step 'probe', source 'src': input 11 != output 9 + dropped 1",
        "accounting for source 'src': the summary does not match the steps",
    ]


def test_steps_that_do_not_chain_are_caught(built):
    directory, _ = built

    def unchain(doc):
        write = doc["accounting"]["steps"][2]["sources"]["src"]
        write["input"] = write["output"] = 12

    edit_manifest(directory, unchain)
    report = verify_dataset(directory)
    assert report.problems == [
        "accounting source 'src': step 'probe' output 9 != step 'write' input 12",
        "accounting for source 'src': the summary does not match the steps",
    ]


def test_a_source_summary_that_breaks_the_identity_is_caught(built):
    directory, _ = built
    edit_manifest(directory, lambda doc: doc["accounting"]["sources"]["src"].update({"input": 12}))
    report = verify_dataset(directory)
    assert report.problems[0] == "accounting for source 'src': input 12 != output 9 + dropped 2"


def test_accounting_output_must_match_the_dataset(built):
    directory, _ = built

    def more(doc):
        acc = doc["accounting"]
        for entry in acc["steps"]:  # one more sample through every step: consistent, but not what was written
            entry["sources"]["src"]["input"] += 1
            entry["sources"]["src"]["output"] += 1
        acc["sources"]["src"]["input"] += 1
        acc["sources"]["src"]["output"] += 1

    edit_manifest(directory, more)
    assert verify_dataset(directory).problems == ["accounting: sources output 10 samples, the dataset holds 9"]


def test_malformed_accounting_is_a_problem_not_a_crash(built):
    directory, _ = built
    edit_manifest(directory, lambda doc: doc["accounting"]["steps"][0]["sources"]["src"].pop("input"))
    report = verify_dataset(directory)
    assert report.problems == ["accounting is malformed (KeyError: 'input')"]


# -- (e) files the manifest does not list ----------------------------------------------------------


def test_unlisted_tars_are_reported(built):
    directory, manifest = built
    shutil.copy(directory / manifest.shards[0].name, directory / "ds-000003.tar")
    shutil.copy(directory / manifest.rejects[0].name, directory / "rejects" / "ds-rejects-000009.tar")
    report = verify_dataset(directory)
    assert report.problems == ["shard files not listed in the manifest: ds-000003.tar, rejects/ds-rejects-000009.tar"]


# -- (f) wids index --------------------------------------------------------------------------------


def test_a_missing_wids_index_is_a_problem_not_a_crash(built):
    directory, _ = built
    (directory / "ds.wids.json").unlink()
    assert verify_dataset(directory).problems == ["ds.wids.json: missing wids index"]


def test_an_unreadable_wids_index_is_a_problem(built):
    directory, _ = built
    (directory / "ds.wids.json").write_text('{"shardlist": 3}')
    (problem,) = verify_dataset(directory).problems
    assert problem.startswith("ds.wids.json: unreadable wids index (TypeError")


# -- (h) the manifest itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "Expecting property name enclosed in double quotes"),
        (b"", "Expecting value"),
        (b"{}", "name: Field required"),
        (b"[1, 2]", "top level: Input should be a valid dictionary"),
        (b'{"name": 3}', "name: Input should be a valid string"),
        (b"\xff\xfe\x00garbage", None),
    ],
)
def test_a_corrupt_manifest_is_one_problem_line(tmp_path, content, problem):
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith(f"{path}: not a valid dataset.json (") and message.endswith(")")
    assert "\n" not in message
    if problem:
        assert problem in message
    report = verify_dataset(tmp_path)
    assert report.problems == [message]


def test_wrong_types_in_the_manifest(built):
    directory, _ = built
    edit_manifest(directory, lambda doc: doc["shards"][1].update({"samples": "many"}))
    with pytest.raises(ManifestError, match=r"\(shards\.1\.samples: Input should be a valid integer"):
        read_manifest(directory)
    edit_manifest(directory, lambda doc: doc.update({"totals": [1]}))
    (problem,) = verify_dataset(directory).problems
    assert "not a valid dataset.json (" in problem


def test_no_manifest_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)
    assert verify_dataset(tmp_path).problems == [f"{tmp_path} is not a built dataset (no dataset.json)"]


# -- existing checks keep working with the new ones ------------------------------------------------


def test_a_missing_shard_is_one_problem(built):
    directory, manifest = built
    (directory / manifest.shards[2].name).unlink()
    assert verify_dataset(directory).problems == [f"{manifest.shards[2].name}: missing"]


def test_damage_in_rejects_is_reported(built):
    directory, manifest = built
    reject = manifest.rejects[1]
    data = bytearray((directory / reject.name).read_bytes())
    data[700] ^= 0xFF
    (directory / reject.name).write_bytes(bytes(data))
    report = verify_dataset(directory)
    assert f"{reject.name}: sha256 differs from the manifest" in report.problems
    assert report.rejects_checked == 3 and report.shards_checked == 3


def test_a_sidecar_with_fewer_rows_is_caught(built):
    directory, manifest = built
    shard = manifest.shards[0]
    table = pq.read_table(directory / shard.sidecar).slice(0, 2)
    pq.write_table(table, directory / shard.sidecar, **PARQUET_OPTIONS)
    problems = verify_dataset(directory).problems
    assert f"{shard.sidecar}: 2 rows != manifest 4" in problems
    assert f"{shard.name}: tar keys differ from sidecar keys (count or order)" in problems
