"""LLaVA-style inputs built end to end: a 665K-like mix, ShareGPT4V, OpenHermes/chat JSON lines and MetaMathQA
with two workers; exact accounting; the LLaVA export and its round trip through the reader; `curate export`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.export.llava import export_llava
from curation.recipe import LlavaSource, validate_recipe
from curation.sources.base import sanitize_key
from curation.sources.llava.reader import LlavaReader
from schemas import SftRecord
from shards import iter_dataset, verify_dataset
from shards.manifest import read_manifest
from tests.builds import CLI
from tests.helpers import jpeg
from tests.llava_data import LlavaTree, draw_image, gpt, human, make_llava_tree


def llava_recipe(tree: LlavaTree) -> dict:
    llava = {"reader": "llava", "image_root": str(tree.image_root), "partition_size": 4}
    return {
        "kind": "build",
        "name": "llava_mix",
        "sources": [
            {**llava, "name": "llava665k", "path": str(tree.llava665k)},
            {**llava, "name": "sharegpt4v", "path": str(tree.sharegpt4v)},
            {
                "name": "text",
                "reader": "llava",
                "path": str(tree.text_dir),
                "partition_size": 2,
                "category": "text_only",
            },
            {
                "name": "metamath",
                "reader": "llava",
                "path": str(tree.metamath),
                "fields": {"user": "query", "assistant": "response"},
                "category": "reasoning_maths",
            },
        ],
        "output": {"kind": "sft", "max_samples_per_shard": 4},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[LlavaTree, Path]:
    root = tmp_path_factory.mktemp("llava")
    tree = make_llava_tree(root / "inputs")
    out = root / "ds"
    build(validate_recipe(llava_recipe(tree)), out, workers=2, progress=False)
    return tree, out


def records_of(directory: Path) -> list[SftRecord]:
    records = list(iter_dataset(directory))
    assert all(isinstance(r, SftRecord) for r in records)
    return records  # type: ignore[return-value]


def test_accounting_is_exact(built):
    tree, out = built
    m = read_manifest(out)
    for name, exp in tree.expected.items():
        assert m.accounting["sources"][name] == {"input": exp.input, "output": exp.output, "dropped": exp.dropped}
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["partitions"]) == 4 + 2 + 3 + 1  # 13 and 6 rows by 4; 4 + 2 lines by 2; 3 rows
    for p in stats["partitions"]:  # every partition read exactly the rows it planned
        read = next(s for s in p["accounting"]["steps"] if s["step"] == "read")["sources"][p["source"]]
        assert read["input"] == p["rows"]
    assert verify_dataset(out).ok


def test_samples(built):
    tree, out = built
    records = records_of(out)
    for name, exp in tree.expected.items():
        mine = [r for r in records if r.source == name]
        assert [r.key for r in mine] == exp.keys
        assert sum(not r.images for r in mine) == exp.text_only
        assert sum(len(r.images) for r in mine) == exp.images
        by_key = {r.key: r for r in mine}
        for key, turns in exp.turns.items():
            assert [t.model_dump() for t in by_key[key].turns] == turns
        assert {k: r.meta["system"] for k, r in by_key.items() if "system" in r.meta} == exp.system
        # every record with an input id keeps it in meta.source_id; its key is "<source>-<id>" (sanitized)
        assert {k: r.meta["source_id"] for k, r in by_key.items() if "source_id" in r.meta} == exp.source_ids
        assert all(k == sanitize_key(f"{name}-{i}") for k, i in exp.source_ids.items())
    for r in records:
        paths = r.meta.get("image_paths")
        refs = [] if paths is None else [paths] if isinstance(paths, str) else paths
        assert r.images == [tree.image_bytes[ref] for ref in refs]  # the files' bytes, exactly
        assert all("<image>" not in t.user for t in r.turns)
    by_key = {r.key: r for r in records}
    assert len(by_key) == len(records)
    assert by_key["llava665k-000000033471"].meta == {
        "image_paths": "coco/train2017/000000033471.jpg",
        "source_id": "000000033471",
    }
    assert [t.user for t in by_key["llava665k-000000033471"].turns][:2] == [
        "What are the colors of the bus in the image?",
        "What feature can be seen on the back of the bus?",
    ]
    assert by_key["llava665k-12345"].meta == {"model": "", "source_id": 12345}  # the int id, as it was
    text_only = [r for r in records if r.source == "llava665k" and not r.images]
    assert {r.key for r in text_only} == {"llava665k-12345", "llava665k-i6IyJda_0"}
    sanitized = next(r for r in records if r.key.startswith("llava665k-textvqa_"))
    assert sanitized.key == sanitize_key("llava665k-textvqa/0054c91397f2fe05.1")
    assert sanitized.meta["source_id"] == "textvqa/0054c91397f2fe05.1"
    assert by_key["sharegpt4v-Tom_Hanks"].meta == {
        "image_paths": "web-celebrity/images/Tom_Hanks.jpg",
        "source_id": "Tom_Hanks",
    }
    assert "«Café de Flore»" in by_key["sharegpt4v-sa_1234"].turns[0].assistant  # UTF-8 kept through the Latin-1 scan
    assert (
        by_key["text-a4f0c2e8-2b36-4f0b-9f5e-3d9c0b1e2f11"].meta["source_id"] == "a4f0c2e8-2b36-4f0b-9f5e-3d9c0b1e2f11"
    )
    assert by_key["metamath-MetaMathQA-395K-0000-000000000"].meta == {
        "type": "GSM_Rephrased",
        "original_question": "Add 12 and 30.",
    }


def test_export_round_trip(built, tmp_path):
    _, out = built
    records = records_of(out)
    dest = tmp_path / "export"
    counts = export_llava(out, dest)
    n_images = sum(len(r.images) for r in records)
    assert counts == {"records": len(records), "images": n_images, "text_only": sum(not r.images for r in records)}
    doc = json.loads((dest / "llava.json").read_text())
    assert [e["id"] for e in doc] == [r.key for r in records]
    assert len(list((dest / "images").iterdir())) == n_images
    entries = {e["id"]: e for e in doc}
    assert entries["llava665k-000000052846"] == {  # the id is the dataset key (the input id with its source name)
        "id": "llava665k-000000052846",
        "image": "images/llava665k-000000052846.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhere is the cat positioned in the image?"},
            {"from": "gpt", "value": "The cat is positioned on top of the back of the couch in the living room."},
        ],
    }
    assert entries["llava665k-2412345"]["image"] == "images/llava665k-2412345.png"  # the image's real format
    assert entries["llava665k-multi_0001"]["image"] == [
        "images/llava665k-multi_0001_0.jpg",
        "images/llava665k-multi_0001_1.jpg",
    ]
    assert entries["llava665k-multi_0001"]["conversations"][0]["value"].startswith("<image>\n<image>\nWhat do")
    assert "image" not in entries["llava665k-12345"]
    assert entries["text-openhermes2_5-0000-000000000"]["conversations"][0]["from"] == "system"

    back = LlavaReader(LlavaSource(name="back", reader="llava", path=str(dest / "llava.json"), image_root=str(dest)))
    items = [i for p in back.plan() for i in back.read(p)]
    assert all(not hasattr(i, "reason") for i in items), [i for i in items if hasattr(i, "reason")]

    # Read back, every exported id is an input id of the source "back": the key gets that name, and
    # meta.source_id is the original dataset key.
    back_records = [i.record for i in items]
    assert [r.key for r in back_records] == [sanitize_key(f"back-{r.key}") for r in records]
    assert [r.key for r in back_records] == [f"back-{r.key}" for r in records]  # all short, valid keys: no hash
    assert all(r.source == "back" for r in back_records)

    def essence(r: SftRecord) -> tuple:
        return [t.model_dump() for t in r.turns], r.images, r.meta.get("system")

    assert [(r.meta["source_id"], *essence(r)) for r in back_records] == [(r.key, *essence(r)) for r in records]

    again = tmp_path / "again"
    export_llava(out, again)
    assert (again / "llava.json").read_bytes() == (dest / "llava.json").read_bytes()  # deterministic
    with pytest.raises(CurationError, match="is not empty; pass --overwrite"):
        export_llava(out, dest)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(CurationError, match=r"holds files an export did not write \(notes.txt\)"):
        export_llava(out, dest, overwrite=True)
    (dest / "notes.txt").unlink()
    assert export_llava(out, dest, overwrite=True) == counts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "export"]  # no staging left behind


def test_export_refuses_other_kinds(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg())
    (tmp_path / "in" / "c.jsonl").write_text(json.dumps({"id": "a", "image": "a.jpg", "caption": "a dog"}) + "\n")
    recipe = {
        "name": "pairs",
        "sources": [
            {
                "name": "c",
                "reader": "jsonl",
                "path": str(tmp_path / "in" / "c.jsonl"),
                "image_root": str(tmp_path / "in"),
            }
        ],
        "output": {"kind": "pair"},
    }
    build(validate_recipe(recipe), tmp_path / "pairs", progress=False)
    with pytest.raises(CurationError, match="holds pair records; the llava export needs sft records"):
        export_llava(tmp_path / "pairs", tmp_path / "x")
    with pytest.raises(CurationError, match="is not a built dataset"):
        export_llava(tmp_path / "in", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_curate_export_cli(built, tmp_path):
    _, out = built
    dest = tmp_path / "cli"
    res = subprocess.run(
        [*CLI, "export", str(out), "--format", "llava", "--out", str(dest)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "records" in res.stdout and (dest / "llava.json").is_file() and any((dest / "images").iterdir())
    res = subprocess.run(
        [*CLI, "export", str(out), "--format", "llava", "--out", str(dest)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "is not empty; pass --overwrite" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(
        [*CLI, "export", str(out), "--format", "llava", "--out", str(dest), "--overwrite"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_export_image_names_never_collide(tmp_path):
    """Key ``c-a`` with two images writes ``c-a_0``/``c-a_1``; a later key ``c-a_0`` with one image gets another
    name."""
    images = tmp_path / "in"
    for i, name in enumerate(["x.jpg", "y.jpg", "z.jpg"]):
        draw_image(images / name, i)
    rows = [
        {"id": "a", "image": ["x.jpg", "y.jpg"], "conversations": [human("<image>\n<image>\nQ"), gpt("A")]},
        {"id": "a_0", "image": "z.jpg", "conversations": [human("<image>\nQ"), gpt("A")]},
    ]
    (tmp_path / "c.json").write_text(json.dumps(rows))
    recipe = {
        "name": "c",
        "sources": [{"name": "c", "reader": "llava", "path": str(tmp_path / "c.json"), "image_root": str(images)}],
        "output": {"kind": "sft"},
    }
    build(validate_recipe(recipe), tmp_path / "ds", progress=False)
    export_llava(tmp_path / "ds", tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "llava.json").read_text())
    assert [e["id"] for e in doc] == ["c-a", "c-a_0"]
    assert [e["image"] for e in doc] == [["images/c-a_0.jpg", "images/c-a_1.jpg"], "images/c-a_0-1.jpg"]
    assert (tmp_path / "out" / "images" / "c-a_0-1.jpg").read_bytes() == (images / "z.jpg").read_bytes()


def test_sources_sharing_ids_keep_all_samples(tmp_path):
    """LLaVA-665K and ShareGPT4V share COCO ids, and many sets number from 0: the same ids in two sources of one
    build are two samples each, never a duplicate_key drop."""
    images = tmp_path / "images"
    ids = [0, 1, "000000033471"]
    for i in range(2 * len(ids)):
        draw_image(images / f"{i}.jpg", i)
    paths = {}
    for s, name in enumerate(["llava665k", "sharegpt4v"]):
        rows = [
            {"id": id_, "image": f"{s * len(ids) + j}.jpg", "conversations": [human(f"<image>\n{name} Q{j}"), gpt("A")]}
            for j, id_ in enumerate(ids)
        ]
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(rows))
    recipe = validate_recipe(
        {
            "name": "shared_ids",
            "sources": [
                {"name": n, "reader": "llava", "path": str(p), "image_root": str(images), "partition_size": 2}
                for n, p in paths.items()
            ],
            "output": {"kind": "sft"},
        }
    )
    out = tmp_path / "ds"
    build(recipe, out, workers=2, progress=False)
    m = read_manifest(out)
    for name in paths:
        assert m.accounting["sources"][name] == {"input": 3, "output": 3, "dropped": {}}
    records = records_of(out)
    assert sorted(r.key for r in records) == sorted(sanitize_key(f"{n}-{i}") for n in paths for i in ids)
    for name in paths:
        mine = [r for r in records if r.source == name]
        assert [r.meta["source_id"] for r in mine] == ids  # the same input ids in both sources
        assert [r.turns[0].user for r in mine] == [f"{name} Q{j}" for j in range(len(ids))]
    assert verify_dataset(out).ok
