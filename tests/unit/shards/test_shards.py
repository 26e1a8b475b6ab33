"""ShardWriter (determinism, splitting, sidecars, re-encoding, atomicity), the reader and verify_dataset."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import msgpack
import pyarrow.parquet as pq
import pytest
from PIL import Image

from schemas import SIDECAR_SCHEMA
from shards.atomic import sha256_file
from shards.imageinfo import sniff_format
from shards.manifest import DatasetManifest, ShardInfo, write_wids_index
from shards.reader import TruncatedShardError, iter_dataset, iter_members, iter_shard
from shards.tokens import count_tokens
from shards.verify import verify_dataset
from shards.writer import SAMPLE_OFFSETS, DuplicateKeyError, ShardWriter
from tests.helpers import (
    dumps,
    image_bytes,
    interleaved_record,
    jpeg,
    pair_record,
    pdf_record,
    png,
    sft_record,
    write_shards,
)

FACTORIES = {
    "pair": pair_record,
    "sft": lambda i: sft_record(i, n_images=i % 3),
    "interleaved": interleaved_record,
    "pdf": pdf_record,
}


def records_of(kind: str, n: int) -> list:
    return [FACTORIES[kind](i) for i in range(n)]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def sidecar_rows(directory: Path, shards: list[ShardInfo]) -> list[dict]:
    return [row for s in shards for row in pq.read_table(directory / s.sidecar).to_pylist()]


def shard_totals(directory: Path, shards: list[ShardInfo]) -> dict[str, int]:
    """The manifest totals, as the runner computes them from the per-shard stats files."""
    totals = {"samples": 0, "bytes": 0, "shards": len(shards), "images": 0, "text_tokens": 0, "answer_tokens": 0}
    for s in shards:
        stats = json.loads((directory / s.stats).read_text())
        for key in ("samples", "bytes", "images", "text_tokens", "answer_tokens"):
            totals[key] += stats[key]
    return totals


def write_manifest(directory: Path, shards: list[ShardInfo], kind: str, name: str = "ds") -> DatasetManifest:
    total = sum(s.samples for s in shards)
    manifest = DatasetManifest(
        name=name,
        kind=kind,
        tool_version="test",
        recipe={"name": name},
        recipe_sha256="0" * 64,
        shards=shards,
        totals=shard_totals(directory, shards),
        accounting={"sources": {"src": {"input": total, "output": total, "dropped": {}}}},
        wids_index=write_wids_index(directory, name, shards),
    )
    manifest.write(directory)
    return manifest


# -- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_same_records_give_byte_identical_files(tmp_path, kind):
    records = records_of(kind, 7)
    if kind == "pair":  # include the re-encoding path
        records[1] = pair_record(1, image=png((20, 10), seed=3))
    a = write_shards(tmp_path / "a", records, max_samples=3)
    b = write_shards(tmp_path / "b", records, max_samples=3)
    assert a == b
    files_a, files_b = files(tmp_path / "a"), files(tmp_path / "b")
    assert sorted(files_a) == [f"ds-{i:06d}.{ext}" for i in range(3) for ext in ("parquet", "stats.json", "tar")]
    assert files_a == files_b
    # no wall-clock values inside the shard: fixed mtime, owner and mode on every member
    with tarfile.open(tmp_path / "a" / "ds-000000.tar") as tar:
        infos = tar.getmembers()
    assert infos
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {
        (infos[0].mtime, infos[0].uid, infos[0].gid, infos[0].uname, infos[0].gname, infos[0].mode)
    }
    assert infos[0].mtime == 0


# -- splitting --------------------------------------------------------------------------------------


def test_split_by_max_samples(tmp_path):
    records = records_of("sft", 10)
    shards = write_shards(tmp_path, records, name="part", max_samples=4, start_index=5)
    assert [s.name for s in shards] == ["part-000005.tar", "part-000006.tar", "part-000007.tar"]
    assert [s.samples for s in shards] == [4, 4, 2]
    keys = [key for s in shards for key, _ in iter_members(tmp_path / s.name)]
    assert keys == [r.key for r in records]
    for s in shards:
        assert pq.read_metadata(tmp_path / s.sidecar).num_rows == s.samples
        stats = json.loads((tmp_path / s.stats).read_text())
        assert stats["samples"] == s.samples
        assert stats["shard"] == s.name
    rows = sidecar_rows(tmp_path, shards)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert [r["shard"] for r in rows] == [s.name for s in shards for _ in range(s.samples)]


def test_record_offsets_lists_where_each_sample_starts_and_changes_nothing_else(tmp_path):
    long_key = pair_record(1).model_copy(update={"key": "k" * 150})  # a PAX long-name header
    records = [pair_record(0), long_key, sft_record(2, n_images=3), interleaved_record(3), pdf_record(4)]
    shards = write_shards(tmp_path / "with", records, max_samples=3, record_offsets=True)
    plain = write_shards(tmp_path / "plain", records, max_samples=3)
    assert shards == plain
    for s in shards:
        stats = json.loads((tmp_path / "with" / s.stats).read_text())
        offsets = stats.pop(SAMPLE_OFFSETS)
        assert stats == json.loads((tmp_path / "plain" / s.stats).read_text())
        assert ShardInfo.from_stats(s.name.removesuffix(".tar"), {**stats, SAMPLE_OFFSETS: offsets}) == s
        for name in (s.name, s.sidecar):
            assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
        with tarfile.open(tmp_path / "with" / s.name) as tar:
            members = tar.getmembers()
        starts = {}  # key -> offset of its first header (a PAX header's, for a long name)
        for m in members:
            starts.setdefault(m.name.split(".", 1)[0], m.offset)
        end = members[-1].offset_data + -(-members[-1].size // 512) * 512
        assert offsets == [*starts.values(), end] and len(offsets) == s.samples + 1
        tail = (tmp_path / "with" / s.name).read_bytes()[end:]
        assert len(tail) >= 1024 and tail == bytes(len(tail))  # then only the end-of-archive blocks
    assert "k" * 150 in {k for s in shards for k, _ in iter_members(tmp_path / "with" / s.name)}


def test_split_by_max_bytes(tmp_path):
    records = [pair_record(i, image=image_bytes("JPEG", (24 + 8 * i, 24), seed=i)) for i in range(12)]
    per_sample = [len(r.image) + len(r.caption.encode()) for r in records]
    max_bytes = 3 * max(per_sample)
    shards = write_shards(tmp_path, records, max_bytes=max_bytes)
    assert len(shards) > 1
    assert sum(s.samples for s in shards) == len(records)
    for n, s in enumerate(shards):
        sizes = [r["bytes"] for r in pq.read_table(tmp_path / s.sidecar).to_pylist()]
        # a shard closes with the sample that reaches max_bytes, never earlier
        assert sum(sizes[:-1]) < max_bytes
        if n < len(shards) - 1:
            assert sum(sizes) >= max_bytes
        assert json.loads((tmp_path / s.stats).read_text())["payload_bytes"] == sum(sizes)
    assert [k for s in shards for k, _ in iter_members(tmp_path / s.name)] == [r.key for r in records]


# -- sidecar and stats -----------------------------------------------------------------------------


def _expected_tokens(texts):
    return sum(count_tokens(t) for t in texts)


def test_sidecar_columns_and_values(tmp_path):
    images = [png((16, 12), seed=1), jpeg((20, 10), seed=2), png((7, 31), seed=3)]
    sft = sft_record(4, n_images=0).model_copy(update={"images": images})
    pair = pair_record(1, image=jpeg((33, 21), seed=5))
    inter = interleaved_record(1)
    pdf = pdf_record(2)
    records = [sft, pair, inter, pdf]
    with ShardWriter(tmp_path, "mix") as writer:
        for r in records:
            writer.write(r, origin=f"input.parquet:{r.key}")
    (info,) = writer.shards
    table = pq.read_table(tmp_path / info.sidecar)
    assert table.schema.equals(SIDECAR_SCHEMA)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert list(rows) == [r.key for r in records]

    # payload bytes really are the sizes of the sample's tar members
    members = dict(iter_members(tmp_path / info.name))
    for key, row in rows.items():
        assert row["bytes"] == sum(len(v) for v in members[key].values())
        assert row["shard"] == "mix-000000.tar"
        assert row["origin"] == f"input.parquet:{key}"

    row = rows[sft.key]
    assert row["kind"] == "sft" and row["source"] == "cauldron" and row["index"] == 0
    assert row["n_images"] == 3
    assert row["widths"] == [16, 20, 7]
    assert row["heights"] == [12, 10, 31]
    assert row["image_sha256"] == [hashlib.sha256(b).hexdigest() for b in images]
    assert row["image_formats"] == ["png", "jpg", "png"]
    assert row["turns"] == len(sft.turns) == 2
    answers = [t.assistant for t in sft.turns]
    assert row["text_tokens"] == _expected_tokens([t.user for t in sft.turns] + answers)
    assert row["answer_tokens"] == _expected_tokens(answers)
    assert row["answer_tokens"] < row["text_tokens"]
    assert row["pages"] is None

    row = rows[pair.key]
    assert (row["kind"], row["index"], row["n_images"], row["turns"]) == ("pair", 1, 1, 1)
    assert (row["widths"], row["heights"], row["image_formats"]) == ([33], [21], ["jpg"])
    assert row["image_sha256"] == [hashlib.sha256(pair.image).hexdigest()]
    assert row["text_tokens"] == row["answer_tokens"] == count_tokens(pair.caption) > 0

    row = rows[inter.key]
    assert (row["kind"], row["n_images"], row["turns"], row["pages"]) == ("interleaved", 2, 0, None)
    assert (row["widths"], row["heights"]) == ([12, 9], [9, 12])
    assert row["image_sha256"] == [hashlib.sha256(b).hexdigest() for b in inter.images if b is not None]
    assert row["text_tokens"] == _expected_tokens([t for t in inter.texts if t is not None])

    row = rows[pdf.key]
    assert (row["kind"], row["n_images"], row["widths"], row["image_sha256"]) == ("pdf", 0, [], [])
    assert row["pages"] == len(pdf.pages) == 2
    assert row["turns"] == 0
    assert row["text_tokens"] == _expected_tokens([ln.text for p in pdf.pages for ln in p.lines])

    stats = json.loads((tmp_path / info.stats).read_text())
    assert stats["samples"] == 4
    assert stats["images"] == 3 + 1 + 2 + 0
    assert stats["text_tokens"] == sum(r["text_tokens"] for r in rows.values())
    assert stats["answer_tokens"] == sum(r["answer_tokens"] for r in rows.values())
    assert stats["payload_bytes"] == sum(r["bytes"] for r in rows.values())
    assert stats["sources"] == {"cauldron": 1, "laion": 1, "obelics": 1, "pdfa": 1}
    assert stats["reencoded_images"] == 0
    assert stats["sha256"] == info.sha256 == sha256_file(tmp_path / info.name)
    assert stats["bytes"] == info.bytes == (tmp_path / info.name).stat().st_size


# -- re-encoding ----------------------------------------------------------------------------------


def test_pair_images_are_reencoded_to_the_dataset_format(tmp_path):
    rgba_png = image_bytes("PNG", (18, 14), seed=7, mode="RGBA")
    records = [
        pair_record(0, image=png((20, 10), seed=1)),
        pair_record(1, image=jpeg((22, 11), seed=2)),
        pair_record(2, image=rgba_png),
    ]
    (info,) = write_shards(tmp_path, records, pair_image_ext="jpg")
    members = dict(iter_members(tmp_path / info.name))
    assert all(set(m) == {"jpg", "txt", "json"} for m in members.values())
    stored = [members[r.key]["jpg"] for r in records]
    assert all(sniff_format(b) == "jpg" for b in stored)
    assert stored[1] == records[1].image  # already a JPEG: kept byte for byte
    for original, data in zip(records, stored, strict=True):
        with Image.open(io.BytesIO(data)) as a, Image.open(io.BytesIO(original.image)) as b:
            assert a.size == b.size
    rows = pq.read_table(tmp_path / info.sidecar).to_pylist()
    assert [r["image_formats"] for r in rows] == [["jpg"]] * 3
    assert [r["image_sha256"] for r in rows] == [[hashlib.sha256(b).hexdigest()] for b in stored]
    assert [(r["widths"], r["heights"]) for r in rows] == [([20], [10]), ([22], [11]), ([18], [14])]
    assert json.loads((tmp_path / info.stats).read_text())["reencoded_images"] == 2


def test_pair_images_reencoded_to_png_dataset(tmp_path):
    records = [pair_record(0, image=jpeg((12, 8))), pair_record(1, image=png((12, 8)))]
    (info,) = write_shards(tmp_path, records, pair_image_ext="png")
    members = dict(iter_members(tmp_path / info.name))
    assert all(set(m) == {"png", "txt", "json"} for m in members.values())
    assert sniff_format(members[records[0].key]["png"]) == "png"
    assert members[records[1].key]["png"] == records[1].image
    assert json.loads((tmp_path / info.stats).read_text())["reencoded_images"] == 1


def test_bad_pair_image_ext_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pair_image_ext"):
        ShardWriter(tmp_path, "x", pair_image_ext="gif")


# -- keys and atomicity --------------------------------------------------------------------------


def test_duplicate_key_in_one_shard_raises(tmp_path):
    writer = ShardWriter(tmp_path, "dup")
    writer.write(sft_record(1))
    writer.write(sft_record(2))
    with pytest.raises(DuplicateKeyError, match="sft_0001"):
        writer.write(sft_record(1, n_images=2))
    (info,) = writer.close()
    assert [k for k, _ in iter_members(tmp_path / info.name)] == ["sft_0001", "sft_0002"]
    assert info.samples == 2


def test_open_shard_is_invisible_until_closed(tmp_path):
    writer = ShardWriter(tmp_path, "atom", max_samples=2)
    writer.write(sft_record(0))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith((".tar", ".parquet", ".stats.json"))]
    assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".tmp"), names
    writer.write(sft_record(1))  # shard 0 is full: it is finished on a background thread
    writer.write(sft_record(2))  # shard 1 is open
    deadline = time.monotonic() + 10
    while True:  # whenever the tar is visible, its sidecar and stats already are (renamed before it)
        visible = sorted(p.name for p in tmp_path.glob("*.tar"))
        if visible:
            assert (tmp_path / "atom-000000.parquet").is_file() and (tmp_path / "atom-000000.stats.json").is_file()
            break
        assert time.monotonic() < deadline, "the finished shard never became visible"
        time.sleep(0.001)
    assert visible == ["atom-000000.tar"]
    assert not (tmp_path / "atom-000001.parquet").exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) == 1
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["atom-000000.tar", "atom-000001.tar"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_abort_leaves_nothing_behind(tmp_path):
    writer = ShardWriter(tmp_path, "gone")
    for i in range(3):
        writer.write(pair_record(i))
    assert list(tmp_path.iterdir())
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    assert writer.shards == []


def test_abort_keeps_finished_shards(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "half", max_samples=2) as writer:
        for i in range(3):
            writer.write(pdf_record(i))
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "half-000000.parquet",
        "half-000000.stats.json",
        "half-000000.tar",
    ]
    assert [k for k, _ in iter_members(tmp_path / "half-000000.tar")] == ["0000000", "0000001"]


# -- reader --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["pair", "sft", "interleaved", "pdf"],
)
def test_reader_round_trip(tmp_path, kind):
    records = records_of(kind, 7)
    shards = write_shards(tmp_path, records, max_samples=3)
    assert len(shards) == 3
    got = [r for s in shards for r in iter_shard(tmp_path / s.name)]
    assert dumps(got) == dumps(records)
    write_manifest(tmp_path, shards, kind)
    assert dumps(iter_dataset(tmp_path)) == dumps(records)


def test_reader_round_trip_text_only_and_multi_image_sft(tmp_path):
    records = [sft_record(i, n_images=n) for i, n in enumerate([0, 3, 1, 0, 2])]
    (info,) = write_shards(tmp_path, records)
    got = list(iter_shard(tmp_path / info.name))
    assert [len(r.images) for r in got] == [0, 3, 1, 0, 2]
    assert dumps(got) == dumps(records)
    members = dict(iter_members(tmp_path / info.name))
    assert msgpack.unpackb(members[records[0].key]["images.mp"]) == []
    assert msgpack.unpackb(members[records[1].key]["images.mp"]) == records[1].images


def _sample_ends(path: Path) -> list[int]:
    """Offset where each sample's last member's data ends, in tar order."""
    ends: dict[str, int] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            ends[info.name.split(".", 1)[0]] = info.offset_data + info.size
    return list(ends.values())


def _read_until_error(path: Path) -> tuple[list, TruncatedShardError]:
    got = []
    with pytest.raises(TruncatedShardError) as info:
        for item in iter_members(path):
            got.append(item)
    return got, info.value


def test_truncated_shard_raises_with_samples_read(tmp_path):
    records = records_of("sft", 10)
    (info,) = write_shards(tmp_path / "ds", records)
    data = (tmp_path / "ds" / info.name).read_bytes()
    full = dict(iter_members(tmp_path / "ds" / info.name))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    got, err = _read_until_error(cut)
    assert err.samples_read == len(got)
    assert err.path == cut
    complete = sum(end <= len(data) // 2 for end in _sample_ends(tmp_path / "ds" / info.name))
    assert 0 < complete < len(records)
    assert err.samples_read in (complete - 1, complete)  # the last complete sample may not be known complete
    # what was read is exact
    assert [k for k, _ in got] == [r.key for r in records[: len(got)]]
    assert all(members == full[key] for key, members in got)


def test_truncation_at_any_block_is_detected(tmp_path):
    """Cutting at a 512-byte block boundary (a member boundary included) is never a clean end."""
    (info,) = write_shards(tmp_path / "ds", records_of("pair", 4))
    path = tmp_path / "ds" / info.name
    data = path.read_bytes()
    last_data_end = max(_sample_ends(path))
    cut = tmp_path / "cut.tar"
    silent = []
    for size in range(512, last_data_end + 512, 512):
        cut.write_bytes(data[:size])
        try:
            n = sum(1 for _ in iter_members(cut))
        except TruncatedShardError as exc:
            assert exc.samples_read <= 4
            continue
        silent.append((size, n))
    assert silent == []


# -- verify ----------------------------------------------------------------------------------------


@pytest.fixture
def built(tmp_path):
    directory = tmp_path / "built"
    records = records_of("sft", 9)
    shards = write_shards(directory, records, max_samples=4)
    write_manifest(directory, shards, "sft")
    return directory, shards


def test_verify_accepts_a_good_dataset(built):
    directory, _ = built
    report = verify_dataset(directory)
    assert report.problems == []
    assert report.ok
    assert report.shards_checked == 3
    assert report.samples_checked == 9


def test_verify_catches_a_tampered_shard(built):
    directory, shards = built
    path = directory / shards[1].name
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".images.mp") and m.size > 20)
    data = bytearray(path.read_bytes())
    data[member.offset_data + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_dataset(directory)
    assert not report.ok
    assert report.problems == [f"{shards[1].name}: sha256 differs from the manifest"]


def test_verify_catches_a_missing_shard(built):
    directory, shards = built
    (directory / shards[2].name).unlink()
    report = verify_dataset(directory)
    assert not report.ok
    assert report.problems == [f"{shards[2].name}: missing"]


def test_verify_catches_a_truncated_shard(built):
    directory, shards = built
    path = directory / shards[0].name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = verify_dataset(directory)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"{shards[0].name}: size {len(data) // 2} != manifest {len(data)}" in text
    assert f"{shards[0].name}: sha256 differs" in text
    assert "damaged tar" in text


def test_verify_catches_a_stray_temp_file(built):
    directory, _ = built
    (directory / ".built-000003.tar.4242.tmp").write_bytes(b"partial")
    report = verify_dataset(directory)
    assert not report.ok
    assert report.problems == ["temporary files left behind: .built-000003.tar.4242.tmp"]


def test_verify_catches_a_stale_wids_index(built):
    directory, shards = built
    write_wids_index(directory, "ds", shards[:2])
    report = verify_dataset(directory)
    assert report.problems == ["ds.wids.json: does not match the manifest's shard list"]


# -- our shards as a source (curation.sources.shards) ---------------------------------------------


def _shards_source(directory: Path, name: str = "prev"):
    from types import SimpleNamespace

    from curation.sources.shards import ShardsReader

    return ShardsReader(SimpleNamespace(name=name, path=str(directory), reader="shards"))


def _read_all(reader, partitions) -> list:
    return [item for p in partitions for item in reader.read(p)]


def test_shards_source_reads_a_good_dataset(built):
    from curation.sample import Sample

    directory, shards = built
    reader = _shards_source(directory)
    plan = reader.plan()
    assert [p.rows for p in plan] == [s.samples for s in shards]
    assert [(p.spec["sha256"], p.spec["bytes"]) for p in plan] == [(s.sha256, s.bytes) for s in shards]
    items = _read_all(reader, plan)
    assert all(isinstance(i, Sample) for i in items)
    assert [i.record.key for i in items] == [r.key for r in records_of("sft", 9)]
    assert {i.record.source for i in items} == {"prev"}


def test_shards_source_refuses_a_tampered_shard(built):
    from curation.sample import Drop, Sample

    directory, shards = built
    path = directory / shards[1].name
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
    data = bytearray(path.read_bytes())
    data[member.offset_data + 2] ^= 0x01  # same size, still a readable tar: only the hash tells
    path.write_bytes(bytes(data))
    assert len(list(iter_members(path))) == shards[1].samples

    reader = _shards_source(directory)
    plan = reader.plan()
    got = [list(reader.read(p)) for p in plan]
    assert all(isinstance(i, Sample) for i in got[0] + got[2])
    assert len(got[1]) == shards[1].samples == plan[1].rows
    assert all(isinstance(d, Drop) and d.reason == "shard_corrupt" and d.source == "prev" for d in got[1])
    assert all(str(path) in d.detail and "sha256" in d.detail for d in got[1])


def test_shards_source_tampered_shard_of_a_limited_partition(built):
    from curation.sources.base import Partition

    directory, shards = built
    path = directory / shards[0].name
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    reader = _shards_source(directory)
    p = reader.plan()[0]
    limited = Partition(p.source, p.index, 2, {**p.spec, "limit_rows": 2})
    assert [d.reason for d in reader.read(limited)] == ["shard_corrupt"] * 2


def test_shards_source_keeps_salvaging_a_truncated_shard(built):
    from curation.sample import Drop, Sample

    directory, shards = built
    path = directory / shards[0].name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    reader = _shards_source(directory)
    items = list(reader.read(reader.plan()[0]))
    assert len(items) == shards[0].samples
    samples = [i for i in items if isinstance(i, Sample)]
    drops = [i for i in items if isinstance(i, Drop)]
    assert samples and drops
    assert {d.reason for d in drops} == {"shard_damaged"}


def test_shards_source_missing_shard_is_damaged(built):
    directory, shards = built
    (directory / shards[2].name).unlink()
    reader = _shards_source(directory)
    assert [d.reason for d in reader.read(reader.plan()[2])] == ["shard_damaged"] * shards[2].samples


@pytest.mark.parametrize("content", ["{not json", "{}", '{"name": []}'])
def test_shards_source_with_a_corrupt_manifest_is_a_user_error(built, content):
    from curation.errors import CurationError

    directory, _ = built
    (directory / "dataset.json").write_text(content)
    with pytest.raises(CurationError, match=r"^sources\.prev\.path: .*dataset\.json: not a valid dataset\.json \("):
        _shards_source(directory)


def test_shards_source_without_a_manifest_is_a_user_error(tmp_path):
    from curation.errors import CurationError

    with pytest.raises(CurationError, match=r"^sources\.prev\.path: .* is not a built dataset"):
        _shards_source(tmp_path)
