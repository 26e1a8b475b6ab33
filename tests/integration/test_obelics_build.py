"""The OBELICS build end to end: real-layout parquet, the original filters, img2dataset downloads from a
loopback server joined back by URL, interleaved shards, exact accounting."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.recipe import validate_recipe
from shards import iter_dataset, verify_dataset
from tests.builds import CLI
from tests.laion_data import image_server, write_images

SENTENCES = [
    "The old library in the middle of the town was built more than a hundred years ago.",
    "It has a large reading room where people come to study, to write and to meet their friends.",
    "In the summer the garden behind the building is open, and children can play there in the shade.",
    "Most of the books were given by families who lived in the houses along the river.",
    "Today the staff are working on a plan to bring the collection into the new century.",
    "They want to keep the spirit of the place while making it easier for everyone to use.",
]


def paragraph(k: int) -> str:
    """Two sentences; paragraphs 0, 1 and 2 share none (so a document of two of them repeats no 5-gram)."""
    return " ".join(SENTENCES[(2 * k + i) % len(SENTENCES)] for i in range(2))


def image_meta(url: str) -> dict:
    return {
        "document_url": "https://example.org/page",
        "unformatted_src": url,
        "src": url,
        "format": "jpg",
        "original_width": 300,
        "original_height": 200,
    }


def row(items: list[tuple[str, str]], url: str = "https://example.org/doc") -> dict:
    texts = [v if k == "text" else None for k, v in items]
    images = [v if k == "image" else None for k, v in items]
    metadata = [image_meta(v) if k == "image" else None for k, v in items]
    general = {"url": url, "warc_filename": "crawl.warc.gz", "warc_record_offset": 1, "warc_record_length": 2}
    return {"images": images, "texts": texts, "metadata": json.dumps(metadata), "general_metadata": json.dumps(general)}


@pytest.mark.slow
def test_obelics_build_filters_downloads_and_joins_back(tmp_path):
    write_images(tmp_path / "www", 12)
    with image_server(tmp_path / "www") as base:
        img = lambda i: f"{base}/{i}.jpg"  # noqa: E731
        rows = [
            row([("text", paragraph(0)), ("image", img(0)), ("text", paragraph(1)), ("image", img(1))]),  # good
            row(
                [("text", paragraph(2)), ("image", f"{base}/missing.jpg"), ("text", paragraph(3)), ("image", img(2))]
            ),  # one image 404s: removed, texts merged, document kept
            row([("text", paragraph(4)), ("image", f"{base}/gone.jpg")]),  # its only image 404s: dropped
            row([("text", "Too short."), ("image", img(3))]),  # too few words
            row([("text", paragraph(1) + "\n\nEND_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"), ("image", img(4))]),
            row([("text", paragraph(3)), ("image", img(9)), ("image", img(5))]),  # img(9) is overused
            row([("text", paragraph(4)), ("image", img(9)), ("image", img(6))]),
            row([("text", paragraph(5)), ("image", img(9)), ("image", img(7))]),
        ]
        bad = row([("text", paragraph(0)), ("image", img(8))])
        bad["texts"] = bad["texts"][:1]  # not parallel: malformed
        rows.append(bad)
        (tmp_path / "data").mkdir()
        schema = pa.schema(
            [
                ("images", pa.list_(pa.string())),
                ("texts", pa.list_(pa.string())),
                ("metadata", pa.string()),
                ("general_metadata", pa.string()),
            ]
        )
        pq.write_table(
            pa.Table.from_pylist(rows, schema=schema),
            tmp_path / "data" / "train-00000-of-00001.parquet",
            row_group_size=4,
        )
        recipe = {
            "name": "obelics",
            "sources": [
                {
                    "name": "obelics",
                    "reader": "obelics",
                    "path": str(tmp_path / "data"),
                    "partition_size": 4,
                    "max_url_occurrences": 2,
                    "cache_dir": str(tmp_path / "cache"),
                    "filters": {"paragraph": {"min_common_words": None}, "document": {"min_common_words": None}},
                    "download": {"thread_count": 4, "timeout": 2, "resize_mode": "no"},
                }
            ],
            "output": {"kind": "interleaved", "rejects": True},
        }
        m = build(validate_recipe(recipe), tmp_path / "ds", workers=2, progress=False).manifest
        # the built-in recipe, as the README documents it: same shards (the downloads are cached)
        cli = subprocess.run(
            [
                *CLI,
                "build",
                "obelics",
                "--out",
                str(tmp_path / "cli"),
                "-q",
                "--set",
                f"sources.obelics.path={tmp_path / 'data'}",
                "--set",
                f"sources.obelics.cache_dir={tmp_path / 'cache'}",
                "--set",
                "sources.obelics.partition_size=4",
                "--set",
                "sources.obelics.max_url_occurrences=2",
                "--set",
                "sources.obelics.download.thread_count=4",
                "--set",
                "sources.obelics.download.timeout=2",
                "--set",
                "sources.obelics.download.resize_mode=no",
            ],
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 0, cli.stderr
    acc = m.accounting["sources"]["obelics"]
    assert acc["input"] == 9
    # "Too short." is removed as a paragraph, which leaves that document without text
    assert acc["dropped"] == {"doc_no_text": 1, "invalid_document": 1, "no_image_downloaded": 1}
    assert acc["output"] == 6 and verify_dataset(tmp_path / "ds").ok
    records = {r.meta["url"]: r for r in iter_dataset(tmp_path / "ds")}
    docs = list(iter_dataset(tmp_path / "ds"))
    assert len(docs) == 6 and len(records) == 1  # all rows share the same document url in this test
    first = docs[0]
    assert [t is None for t in first.texts] == [False, True, False, True]
    assert all(im[:3] == b"\xff\xd8\xff" for im in first.images if im is not None)
    second = docs[1]  # the 404 image was removed and the texts around it merged
    assert [t is None for t in second.texts] == [False, True]
    assert second.texts[0] == paragraph(2) + "\n\n" + paragraph(3)
    assert second.meta["images_failed"] == {"download_failed:http_404": 1}
    assert "END_OF_DOCUMENT" not in docs[2].texts[0]
    for doc in docs[3:]:  # the overused URL is gone, the other image stays
        assert sum(im is not None for im in doc.images) == 1 and doc.meta["removed"]["image_overused_url"] == 1
    ours = {p.name: p.read_bytes() for p in (tmp_path / "ds").glob("*.tar")}
    assert ours == {p.name: p.read_bytes() for p in (tmp_path / "cli").glob("*.tar")}
