"""Keys up to the 200-character limit: member names past tar's 100-byte field take a PAX header, and the
shard's size in the manifest counts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.recipe import validate_recipe
from shards.reader import iter_dataset
from shards.verify import verify_dataset
from tests.helpers import png


@pytest.mark.parametrize("kind", ["pair", "sft"])
def test_keys_of_every_length_give_shards_that_verify(tmp_path: Path, kind: str):
    (tmp_path / "img.png").write_bytes(png())
    keys = [("k" * n) for n in (1, 90, 95, 96, 99, 100, 150, 190, 200)]
    rows = [
        {"id": key, "image": "img.png", "caption": "a caption", "texts": [{"user": "q?", "assistant": "a."}]}
        for key in keys
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = {"key": "id"} if kind == "pair" else {"key": "id", "images": "image", "turns": "texts"}
    source = {"name": "s", "reader": "jsonl", "path": str(tmp_path / "in.jsonl"), "record": kind, "fields": fields}
    source["image_root"] = str(tmp_path)
    recipe = validate_recipe({"kind": "build", "name": "keys", "sources": [source], "output": {"kind": kind}}, "t")
    out = tmp_path / "out"
    build(recipe, out, workers=1, progress=False)
    report = verify_dataset(out)
    assert report.ok, report.problems
    manifest = json.loads((out / "dataset.json").read_text())
    for shard in manifest["shards"]:
        assert (out / shard["name"]).stat().st_size == shard["bytes"]
    assert sorted(r.key for r in iter_dataset(out)) == sorted(keys)
