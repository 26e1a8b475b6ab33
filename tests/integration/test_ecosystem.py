"""Guarantee 6: every record kind, written by ShardWriter, loads round-trip exact with
``webdataset.WebDataset``, ``wids.ShardListDataset`` and ``datasets.load_dataset("webdataset")``.

Each reader's output is turned back into records here (not with ``shards.codec``) and compared with
the records that were written, field by field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import msgpack
import pytest
import webdataset as wds
import wids

from schemas import InterleavedRecord, PairRecord, PdfRecord, Record, SftRecord
from shards.hf import hf_features
from shards.manifest import write_wids_index
from shards.reader import iter_members
from tests.helpers import dumps, interleaved_record, pair_record, pdf_record, png, sft_record, write_shards

N = 11
MAX_SAMPLES = 4  # several shards, so readers cross shard boundaries

# Images per sample of the mixed sft dataset: text-only and multi-image, with images among the first
# five samples of the first shard (from which `datasets` infers the features).
MIXED = [0, 2, 0, 0, 3, 0, 1, 0, 0, 2, 0]

DATASETS = {
    "pair": (lambda: [pair_record(i) for i in range(N)], {"pair_image_ext": "jpg"}),
    "pair_png": (
        lambda: [pair_record(i, image=png((14, 10 + i), seed=i)) for i in range(N)],
        {"pair_image_ext": "png"},
    ),
    "interleaved": (lambda: [interleaved_record(i) for i in range(N)], {}),
    "pdf": (lambda: [pdf_record(i) for i in range(N)], {}),
    "sft_multi_image": (lambda: [sft_record(i, n_images=2 + i % 3) for i in range(N)], {}),
    "sft_one_image": (lambda: [sft_record(i, n_images=1) for i in range(N)], {}),
    "sft_text_only": (lambda: [sft_record(i, n_images=0) for i in range(N)], {}),
    "sft_mixed": (lambda: [sft_record(i, n_images=n) for i, n in enumerate(MIXED)], {}),
}


@dataclass
class Built:
    records: list[Record]
    tars: list[Path]
    wids_index: Path
    image_ext: str
    root: Path


def build(root: Path, records: list[Record], max_samples: int = MAX_SAMPLES, **writer_kwargs) -> Built:
    shards = write_shards(root / "ds", records, name="eco", max_samples=max_samples, **writer_kwargs)
    index = write_wids_index(root / "ds", "eco", shards)
    return Built(
        records=records,
        tars=[root / "ds" / s.name for s in shards],
        wids_index=root / "ds" / index,
        image_ext=writer_kwargs.get("pair_image_ext", "jpg"),
        root=root,
    )


@pytest.fixture(scope="module", params=sorted(DATASETS))
def built(request, tmp_path_factory) -> Built:
    make, kwargs = DATASETS[request.param]
    return build(tmp_path_factory.mktemp(request.param), make(), **kwargs)


def expected_members(record: Record, image_ext: str) -> set[str]:
    return {
        "pair": {image_ext, "txt", "json"},
        "sft": {"images.mp", "json"},
        "interleaved": {"images.mp", "json"},
        "pdf": {"pdf", "json"},
    }[record.kind]


def rebuild(key: str, fields: dict, image_ext: str) -> Record:
    """A record from decoded member values: json (dict), images.mp (list of bytes), txt (str), image, pdf."""
    body = fields["json"]
    assert isinstance(body["meta"], str), "meta must stay a JSON string"
    common = {"key": key, "source": body["source"], "meta": json.loads(body["meta"])}
    kind = body["kind"]
    if kind == "pair":
        return PairRecord(**common, image=fields[image_ext], caption=fields["txt"])
    if kind == "sft":
        return SftRecord(**common, images=list(fields["images.mp"]), turns=body["turns"])
    if kind == "interleaved":
        stored = list(fields["images.mp"])
        assert len(stored) == sum(t is None for t in body["texts"])
        it = iter(stored)
        return InterleavedRecord(
            **common, texts=body["texts"], images=[next(it) if t is None else None for t in body["texts"]]
        )
    if kind == "pdf":
        return PdfRecord(**common, pdf=fields["pdf"], pages=body["pages"])
    raise AssertionError(f"unknown kind {kind!r}")


def decode_raw(raw: dict[str, bytes]) -> dict:
    """Decode raw member bytes the way a consumer would, images left as bytes."""
    out: dict = {}
    for ext, data in raw.items():
        if ext == "json":
            out[ext] = json.loads(data)
        elif ext == "txt":
            out[ext] = data.decode("utf-8")
        elif ext == "images.mp":
            out[ext] = msgpack.unpackb(data)
        else:
            out[ext] = data
    return out


def check_raw_sample(raw: dict[str, bytes], record: Record, image_ext: str) -> None:
    """Member names and exact bytes of one sample, as any tar reader sees it."""
    assert set(raw) == expected_members(record, image_ext)
    body = json.loads(raw["json"])
    assert body["kind"] == record.kind
    assert body["source"] == record.source
    assert isinstance(body["meta"], str)
    assert json.loads(body["meta"]) == record.meta
    if record.kind == "pair":
        assert raw[image_ext] == record.image
        assert raw["txt"].decode("utf-8") == record.caption
    elif record.kind == "pdf":
        assert raw["pdf"] == record.pdf
    else:
        images = msgpack.unpackb(raw["images.mp"])
        assert isinstance(images, list)
        assert images == record.image_list()


def user_fields(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if not k.startswith("__")}


# -- (a) webdataset ----------------------------------------------------------------------------------


def test_webdataset_raw_members_exact(built):
    samples = list(wds.WebDataset([str(p) for p in built.tars], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [r.key for r in built.records]
    for sample, record in zip(samples, built.records, strict=True):
        check_raw_sample(user_fields(sample), record, built.image_ext)


def test_webdataset_decoded_round_trip(built):
    # .decode() with no image handler: json, txt and msgpack decoded, images and pdf stay bytes
    samples = list(wds.WebDataset([str(p) for p in built.tars], shardshuffle=False).decode())
    for sample in samples:
        fields = user_fields(sample)
        assert isinstance(fields["json"], dict)
        for ext in ("jpg", "png", "pdf"):
            if ext in fields:
                assert isinstance(fields[ext], bytes)
    rebuilt = [rebuild(s["__key__"], user_fields(s), built.image_ext) for s in samples]
    assert dumps(rebuilt) == dumps(built.records)


# -- (b) wids -------------------------------------------------------------------------------------------


def test_wids_by_index(built, tmp_path):
    ds = wids.ShardListDataset(str(built.wids_index), cache_dir=str(tmp_path / "wids"), transformations=[])
    assert len(ds) == len(built.records)
    order = [*range(len(ds) - 1, -1, -2), *range(0, len(ds), 2)]  # backwards, then forwards: random access
    for i in order:
        sample = ds[i]
        record = built.records[i]
        assert sample["__key__"] == record.key
        raw = {k.removeprefix("."): v.getvalue() for k, v in user_fields(sample).items()}
        check_raw_sample(raw, record, built.image_ext)
        assert dumps([rebuild(sample["__key__"], decode_raw(raw), built.image_ext)]) == dumps([record])


# -- (c) Hugging Face datasets ---------------------------------------------------------------------------


def load_hf(built: Built, cache: Path, features: datasets.Features | None = None) -> datasets.Dataset:
    return datasets.load_dataset(
        "webdataset",
        data_files={"train": [str(p) for p in built.tars]},
        split="train",
        cache_dir=str(cache),
        features=features,
    )


def test_hf_datasets_round_trip(built, tmp_path):
    ds = load_hf(built, tmp_path / "hf")
    assert len(ds) == len(built.records)
    assert ds["__key__"] == [r.key for r in built.records]
    assert ds.features["json"]["meta"] == datasets.Value("string")
    if built.records[0].kind == "pair":
        assert isinstance(ds.features[built.image_ext], datasets.Image)
        ds = ds.cast_column(built.image_ext, datasets.Image(decode=False))  # the stored bytes, undecoded
    raw_meta = {key: json.loads(m["json"])["meta"] for tar in built.tars for key, m in iter_members(tar)}
    rebuilt = []
    for row in ds:
        fields = user_fields(row)
        assert set(fields) == expected_members(built.records[0], built.image_ext)
        assert fields["json"]["meta"] == raw_meta[row["__key__"]]  # the meta JSON string, exactly
        if built.image_ext in fields:
            fields[built.image_ext] = fields[built.image_ext]["bytes"]
        rebuilt.append(rebuild(row["__key__"], fields, built.image_ext))
    assert dumps(rebuilt) == dumps(built.records)


def test_hf_datasets_round_trip_with_explicit_features(built, tmp_path):
    """``shards.hf.hf_features(kind)`` types every kind exactly, with nothing inferred."""
    kind = built.records[0].kind
    ds = load_hf(built, tmp_path / "hf", hf_features(kind, built.image_ext or "jpg", decode_images=False))
    rebuilt = []
    for row in ds:
        fields = user_fields(row)
        if built.image_ext in fields:
            fields[built.image_ext] = fields[built.image_ext]["bytes"]
        rebuilt.append(rebuild(row["__key__"], fields, built.image_ext))
    assert dumps(rebuilt) == dumps(built.records)


def _text_only_first(tmp_path: Path) -> tuple[Built, list]:
    records = [sft_record(i, n_images=0 if i < 5 else 1 + i % 2) for i in range(8)]
    built = build(tmp_path, records, max_samples=100)  # one shard: its first five samples have no image
    assert len(built.tars) == 1
    return built, records


@pytest.mark.xfail(
    strict=True,
    raises=datasets.exceptions.DatasetGenerationError,
    reason=(
        "known limitation of datasets' webdataset builder: features are inferred from the first 5 samples "
        "of the first shard; when those are all text-only sft (images.mp == []), the list item type is null "
        "and the later samples with image bytes cannot be cast (pass features=hf_features('sft'))"
    ),
)
def test_hf_datasets_text_only_first_five_then_images(tmp_path):
    built, records = _text_only_first(tmp_path)
    ds = load_hf(built, tmp_path / "hf")
    rebuilt = [rebuild(row["__key__"], user_fields(row), "jpg") for row in ds]
    assert dumps(rebuilt) == dumps(records)


def test_hf_features_fix_text_only_first_five(tmp_path):
    built, records = _text_only_first(tmp_path)
    ds = load_hf(built, tmp_path / "hf", hf_features("sft"))
    rebuilt = [rebuild(row["__key__"], user_fields(row), "jpg") for row in ds]
    assert dumps(rebuilt) == dumps(records)


def test_fixture_data_covers_what_it_claims():
    """The datasets above hold what the module docstring promises (varying meta keys, non-ASCII, ...)."""
    records = DATASETS["sft_mixed"][0]()
    assert any(len(r.images) > 1 for r in records[:5]) and any(not r.images for r in records[:5])
    metas = [set(r.meta) for r in records]
    assert len({frozenset(m) for m in metas}) > 2
    captions = [r.caption for r in DATASETS["pair"][0]()]
    assert all(len(c) > 500 and not c.isascii() for c in captions)
    assert any(t is None for t in DATASETS["interleaved"][0]()[0].texts)
    jpg = DATASETS["pair"][0]()[0].image
    assert jpg[:3] == b"\xff\xd8\xff"
