"""The OBELICS build end to end: real-layout parquet, the original filters, img2dataset downloads from a
loopback server joined back by URL, interleaved shards, exact accounting."""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.slow
def test_obelics_build_with_language_id_and_perplexity_models(tmp_path):
    """Both model rules on at document level, named in a recipe file by relative paths: a fastText model trained
    here (English vs a generated language), a KenLM model over the SentencePiece pieces of one document."""
    pytest.importorskip("fasttext")  # the text_models extra (in .[dev]: CI runs this)
    pytest.importorskip("kenlm")
    import sentencepiece as spm

    from curation.recipe import load_recipe
    from curation.text_models import normalize_obelics
    from schemas import InterleavedRecord
    from tests.text_model_data import foreign_text, train_lang_id, train_sentencepiece, write_arpa

    models = tmp_path / "recipe" / "models"
    models.mkdir(parents=True)
    train_lang_id(models / "lid.bin")
    sp_model = train_sentencepiece(models / "en.sp", SENTENCES, vocab_size=150)
    kept_text = paragraph(0) + "\n\n" + paragraph(1)
    tokenizer = spm.SentencePieceProcessor(model_file=str(sp_model))
    pieces = set(tokenizer.encode(normalize_obelics(kept_text), out_type=str))
    # Every piece of the kept document's text 10^-1.5 (perplexity 31.6), any other piece <unk> at 10^-6.
    unigrams = {"<unk>": (-6.0, 0.0), "<s>": (-99.0, 0.0), "</s>": (-1.5, 0.0)} | {p: (-1.5, 0.0) for p in pieces}
    write_arpa(models / "en.arpa", unigrams, {("<unk>", "<unk>"): -6.0})
    write_images(tmp_path / "www", 4)
    with image_server(tmp_path / "www") as base:
        img1 = f"{base}/1.jpg"
        rows = [
            row([("text", paragraph(0)), ("image", f"{base}/0.jpg"), ("text", paragraph(1)), ("image", img1)]),
            row([("text", paragraph(2)), ("image", f"{base}/2.jpg")]),  # English, half its pieces unknown: perplexity
            row([("text", foreign_text()), ("image", f"{base}/3.jpg")]),  # the generated language: language id
        ]
        (tmp_path / "data").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
        recipe = tmp_path / "recipe" / "obelics.yaml"
        recipe.write_text(
            "name: obelics_models\n"
            "sources:\n"
            "  - name: obelics\n"
            "    reader: obelics\n"
            f"    path: {tmp_path / 'data'}\n"
            f"    cache_dir: {tmp_path / 'cache'}\n"
            "    filters:\n"
            "      paragraph: {min_common_words: null, min_stopwords: null}  # the generated language has none\n"
            "      document:\n"
            "        min_common_words: null\n"
            "        min_stopwords: null\n"
            "        lang_id: {model: models/lid.bin, language: en, min_score: 0.8}\n"
            "        perplexity: {model: models/en.arpa, max: 100, tokenizer: models/en.sp.model}\n"
            "    download: {thread_count: 4, timeout: 2, resize_mode: 'no'}\n"
            "output: {kind: interleaved, rejects: true}\n"
        )
        m = build(load_recipe(str(recipe)), tmp_path / "ds", workers=2, progress=False).manifest
    acc = m.accounting["sources"]["obelics"]
    assert acc["input"] == 3 and acc["output"] == 1
    assert acc["dropped"] == {"doc_perplexity": 1, "doc_lang_id": 1}
    (doc,) = list(iter_dataset(tmp_path / "ds"))
    assert isinstance(doc, InterleavedRecord) and doc.texts[0] == paragraph(0) and doc.texts[2] == paragraph(1)


@pytest.mark.parametrize("mode", ["improved", "original"])
def test_files_that_are_not_obelics_documents_are_one_line_errors_or_drops(mode, tmp_path):
    """Not parquet at all: the URL count names the source on one line (no traceback), in both modes. Parquet
    without the ``images`` column: one line too where every document's URLs are counted (improved); in original
    mode the first pass reads each row as a document, and every row is an ``invalid_document`` drop."""
    (tmp_path / "docs").mkdir()
    pq.write_table(pa.table({"texts": [["a paragraph"]] * 3}), tmp_path / "docs" / "a.parquet")
    recipe = {
        "name": "o",
        "sources": [{"name": "o", "reader": "obelics", "path": str(tmp_path / "docs"), "filters": {"mode": mode}}],
        "output": {"kind": "interleaved"},
    }
    (tmp_path / "r.json").write_text(json.dumps(recipe))

    def run() -> subprocess.CompletedProcess:
        cmd = [*CLI, "build", str(tmp_path / "r.json"), "-o", str(tmp_path / "out"), "-q"]
        return subprocess.run(cmd, capture_output=True, text=True)

    def one_line_error(done: subprocess.CompletedProcess) -> None:
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: sources.o: cannot"), done.stderr
        assert not (tmp_path / "out").exists()

    no_images = run()
    if mode == "improved":
        one_line_error(no_images)
    else:
        assert no_images.returncode == 0, no_images.stderr
        accounting = json.loads((tmp_path / "out" / "dataset.json").read_text())["accounting"]["sources"]["o"]
        assert accounting == {"input": 3, "output": 0, "dropped": {"invalid_document": 3}}
        shutil.rmtree(tmp_path / "out")
    (tmp_path / "docs" / "a.parquet").write_bytes(b"not parquet")
    one_line_error(run())
