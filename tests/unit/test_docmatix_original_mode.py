"""The ``pdfa`` source's ``mode: original`` against the published Docmatix generation rules, on generated PDFA tars.

The reference below is written from the published rules of the Docmatix generation script (HuggingFace's
``docmatix`` repository, ``generation/llm_swarm_script.py``), reading the tars' JSON members itself (``json``
and ``tarfile``, none of our parsing):

- a page's text is its ``lines.text`` in the JSON's stored order, joined with ``' \\n '`` (empty and blank
  lines included); every page of the JSON's ``pages`` list is a page, empty ones included;
- a document whose JSON has more than 4 pages is skipped (the PDF is never looked at);
- pages are grouped into chunks joined with ``'\\nNEW PAGE\\n'``: a page over ``max_tokens`` skips the document;
  a chunk closes when the next page would take it over ``max_tokens`` tokens or ``max_pages`` pages; the next
  one starts with the last ``overlap`` pages, counted as the ``overlap`` pages just before the current one;
- every chunk is a request, whatever its text (a document of blank pages too); a document with no chunk
  makes no request.

The toolkit side is the real thing: the built-in ``docmatix`` recipe with ``sources.0.mode: original``, the
``pdfa`` reader, and the ``docmatix_generate`` step's preparation of a document (page texts, the no-text rule,
chunks, the messages). Token counts: both sides use the recipe's counter (the original used the model's).
"""

from __future__ import annotations

import json
import random
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.generation.docmatix.step import DocmatixGenerate, _Document
from curation.recipe import BuildRecipe, DocmatixGenerateStep, load_recipe, validate_recipe
from curation.recipe.loading import recipe_doc, recipe_hash
from curation.sample import Drop, Sample
from curation.sources.base import make_reader
from curation.steps.contract import StepContext
from schemas import PdfRecord
from shards.tokens import count_tokens
from tests.pdfa_data import Bbox, PdfPage, idl_json, make_pdf, pdfa_json, write_tar

ROOT = Path(__file__).parents[2]
N_DOCS = 300
SEED = 19
# (max_tokens, max_pages, overlap): the published settings, and tight ones that make the chunking loop work
CHUNKINGS = [(5000, 5, 1), (24, 2, 1), (40, 3, 2), (30, 2, 0)]
WORDS = ["budget", "council", "report", "annual", "figure", "table", "total", "city", "water", "plan", "page"]


# ---- the published rules, written out -----------------------------------------------------------------
def published_page_texts(doc: dict[str, Any]) -> list[str]:
    return [" \n ".join(page["lines"]["text"]) for page in doc["pages"]]


def published_chunks(pages: list[str], max_tokens: int, max_pages: int, overlap: int) -> list[str] | None:
    """The chunk texts; None when a page alone is over ``max_tokens`` (the document is skipped)."""
    tokens = [count_tokens(page) for page in pages]
    chunks: list[str] = []
    chunk: list[str] = []
    chunk_tokens = 0
    for i, page in enumerate(pages):
        if tokens[i] > max_tokens:
            return None
        if chunk_tokens + tokens[i] > max_tokens or len(chunk) + 1 > max_pages:
            if chunk:
                chunks.append("\nNEW PAGE\n".join(chunk))
            chunk = chunk[-overlap:] if overlap > 0 else []
            chunk_tokens = sum(tokens[max(0, i - overlap) : i])
        chunk.append(page)
        chunk_tokens += tokens[i]
    if chunk:
        chunks.append("\nNEW PAGE\n".join(chunk))
    return chunks


def published_outcome(doc: dict[str, Any], chunking: tuple[int, int, int]) -> str | list[str]:
    """The chunk texts sent for a document, or why none were: too_many_pages, page_too_long, no_text."""
    pages = published_page_texts(doc)
    if len(pages) > 4:
        return "too_many_pages"
    chunks = published_chunks(pages, *chunking)
    if chunks is None:
        return "page_too_long"
    return chunks or "no_text"


def tar_documents(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``KEY.json`` of the tars, decoded: what the published script read."""
    docs = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for info in tar:
                if info.name.endswith(".json"):
                    member = tar.extractfile(info)
                    assert member is not None
                    docs[info.name.split(".")[0]] = json.loads(member.read())
    return docs


# ---- the generated documents ----------------------------------------------------------------------------
@dataclass
class Generated:
    key: str
    pages: list[list[tuple[str, Bbox]]]  # the JSON's pages, each in reading order
    pdf_pages: int


def _line_text(rng: random.Random, long: bool) -> str:
    roll = rng.random()
    if roll < 0.08:
        return ""
    if roll < 0.12:
        return "   "
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14) if long else rng.randint(1, 6)))


def _page(rng: random.Random) -> list[tuple[str, Bbox]]:
    """Rows top to bottom, some of two lines whose boxes are not level; in reading order."""
    roll = rng.random()
    if roll < 0.07:
        return []  # an empty page
    if roll < 0.12:
        return [(rng.choice(["", " ", "  "]), (0.1, 0.1 + 0.1 * i, 0.5, 0.04)) for i in range(rng.randint(1, 3))]
    long = rng.random() < 0.15
    lines: list[tuple[str, Bbox]] = []
    for row in range(rng.randint(1, 6)):
        y = 0.05 + 0.12 * row
        if rng.random() < 0.3:  # a row of two: the right box sits a little higher or lower
            lines.append((_line_text(rng, long), (0.05, y, 0.4, 0.04)))
            lines.append((_line_text(rng, long), (0.55, y + rng.uniform(-0.01, 0.01), 0.4, 0.04)))
        else:
            lines.append((_line_text(rng, long), (rng.uniform(0.05, 0.3), y, 0.6, 0.04)))
    return lines


def make_corpus(root: Path, n: int = N_DOCS, seed: int = SEED) -> tuple[Path, list[Generated]]:
    """``n`` documents in three PDFA tars: JSON pages 0-6, PDF pages the same or 1-6, lines stored out of
    reading order (a random permutation, then ``pdfa_page``'s own shuffle)."""
    rng = random.Random(seed)
    docs: list[Generated] = []
    members: list[list[tuple[str, bytes]]] = [[], [], []]
    for i in range(n):
        json_pages = rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6])
        pdf_pages = json_pages if json_pages and rng.random() < 0.5 else rng.randint(1, 6)
        doc = Generated(f"{i:07d}", [_page(rng) for _ in range(json_pages)], pdf_pages)
        stored = [rng.sample(page, len(page)) for page in doc.pages]
        pdf = make_pdf([PdfPage()] * pdf_pages)
        members[i % 3] += [(f"{doc.key}.json", pdfa_json(stored)), (f"{doc.key}.pdf", pdf)]
        docs.append(doc)
    folder = root / "pdfa"
    for t, tar_members in enumerate(members):
        write_tar(folder / f"pdfa-eng-train-{t:06d}.tar", tar_members)
    return folder, docs


def improved_outcome(doc: Generated, chunking: tuple[int, int, int]) -> str | list[str]:
    """What the default mode should send: PDF pages counted, JSON pages cut to the PDF's, reading order."""
    if doc.pdf_pages > 4:
        return "too_many_pages"
    pages = [" \n ".join(text for text, _ in lines) for lines in doc.pages[: doc.pdf_pages]]
    if not any(page.strip() for page in pages):
        return "no_text"
    chunks = published_chunks(pages, *chunking)
    return "page_too_long" if chunks is None else chunks


# ---- the toolkit ----------------------------------------------------------------------------------------
def docmatix_recipe(tars: Path, mode: str | None, chunking: tuple[int, int, int] = CHUNKINGS[0]) -> BuildRecipe:
    """The built-in recipe, its source in ``mode`` (None: left out), an endpoint that is never called."""
    data = yaml.safe_load((ROOT / "recipes" / "docmatix.yaml").read_text())
    data["vars"]["pdfa"] = str(tars)
    if mode is not None:
        data["sources"][0]["mode"] = mode
    step = data["steps"][0]
    step["engine"] = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 0}
    step["chunking"] = dict(zip(("max_tokens", "max_pages", "overlap_pages"), chunking, strict=True))
    recipe = validate_recipe(data)
    assert isinstance(recipe, BuildRecipe)
    return recipe


def read_all(tars: Path, mode: str) -> dict[str, Sample | Drop]:
    reader = make_reader(docmatix_recipe(tars, mode).sources[0])
    out: dict[str, Sample | Drop] = {}
    for partition in reader.plan():
        for item in reader.read(partition):
            key = item.record.key if isinstance(item, Sample) else item.key
            assert key is not None
            out[key] = item
    return out


def toolkit_outcomes(
    items: dict[str, Sample | Drop], tars: Path, mode: str, chunking: tuple[int, int, int], work: Path
) -> dict[str, str | list[str]]:
    """Per document: the chunk texts the step would send, or the reader's or the step's drop reason."""
    cfg = docmatix_recipe(tars, mode, chunking).steps[0]
    assert isinstance(cfg, DocmatixGenerateStep)
    step = DocmatixGenerate(cfg, StepContext("docmatix_generate", work))
    out: dict[str, str | list[str]] = {}
    try:
        for key, item in items.items():
            if isinstance(item, Drop):
                out[key] = item.reason
                continue
            prepared = step._prepare(item)
            if isinstance(prepared, _Document):
                texts = [chunk.text for chunk in prepared.chunks]
                # each chunk text is what the user message carries
                for text, request in zip(texts, prepared.requests, strict=True):
                    assert request.messages[-1][1].count(text) >= 1
                out[key] = texts
            else:
                assert isinstance(prepared, str)
                out[key] = prepared
    finally:
        step.close()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Generated], dict[str, dict[str, Any]]]:
    tars, docs = make_corpus(tmp_path_factory.mktemp("docmatix-original"))
    return tars, docs, tar_documents(tars)


@pytest.fixture(scope="module")
def read(corpus) -> dict[str, dict[str, Sample | Drop]]:
    tars, _, _ = corpus
    return {mode: read_all(tars, mode) for mode in ("original", "improved")}


# ---- the tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda c: "tokens{}-pages{}-overlap{}".format(*c))
def test_original_mode_sends_exactly_the_published_chunks(corpus, read, chunking, tmp_path):
    tars, _, raw = corpus
    assert len(raw) == N_DOCS == len(read["original"])
    ours = toolkit_outcomes(read["original"], tars, "original", chunking, tmp_path)
    want = {key: published_outcome(doc, chunking) for key, doc in raw.items()}
    mismatches = [key for key in want if ours[key] != want[key]]
    assert not mismatches, [(k, ours[k], want[k]) for k in mismatches[:3]]
    # the corpus exercises every rule: kept documents, each kind of skip, split chunks (tight settings)
    kinds = Counter(v if isinstance(v, str) else "kept" for v in want.values())
    assert kinds["kept"] > 100 and kinds["too_many_pages"] > 20 and kinds["no_text"] > 5, kinds
    if chunking != CHUNKINGS[0]:
        assert kinds["page_too_long"] > 5, kinds
        assert sum(len(v) > 1 for v in want.values() if isinstance(v, list)) > 30


def test_original_mode_records_keep_the_jsons_pages_and_order(corpus, read):
    _, docs, raw = corpus
    for doc in docs:
        item = read["original"][doc.key]
        if len(doc.pages) > 4:
            assert isinstance(item, Drop) and item.reason == "too_many_pages"
            assert item.detail == f"the OCR JSON has {len(doc.pages)} pages (max_pages 4)"
            continue
        assert isinstance(item, Sample) and isinstance(item.record, PdfRecord)
        record = item.record
        assert [[line.text for line in page.lines] for page in record.pages] == [
            page["lines"]["text"] for page in raw[doc.key]["pages"]
        ]
        assert record.meta == {
            "pages_json": len(doc.pages),
            "pages_pdf": doc.pdf_pages,
            "variant": "pdfa" if doc.pages else "unknown",
            "pdfa_mode": "original",
        }


def test_improved_mode_differs_where_expected(corpus, read, tmp_path):
    """The default reads in reading order, counts the PDF's pages, cuts the JSON's to them and drops a
    document with no text; on this corpus each of these changes what is sent."""
    tars, docs, raw = corpus
    chunking = CHUNKINGS[0]
    improved = toolkit_outcomes(read["improved"], tars, "improved", chunking, tmp_path)
    original = {key: published_outcome(doc, chunking) for key, doc in raw.items()}
    assert {doc.key: improved_outcome(doc, chunking) for doc in docs} == improved
    why: Counter[str] = Counter()
    for doc in docs:
        key = doc.key
        if improved[key] == original[key]:
            continue
        if (len(doc.pages) > 4) != (doc.pdf_pages > 4):
            why["page_count_decides"] += 1
        elif original[key] != "no_text" and improved[key] == "no_text":
            why["no_text"] += 1
        elif doc.pdf_pages < len(doc.pages):
            why["pages_cut_to_the_pdf"] += 1
        else:
            assert isinstance(improved[key], list) and isinstance(original[key], list)
            assert sorted("".join(improved[key])) == sorted("".join(original[key]))  # the same lines, reordered
            why["reading_order"] += 1
    assert why["page_count_decides"] > 20 and why["reading_order"] > 50, why
    assert why["no_text"] > 2 and why["pages_cut_to_the_pdf"] > 10, why
    for doc in docs:  # in the improved records, every line is kept: only their order changes
        item = read["improved"][doc.key]
        if isinstance(item, Sample) and isinstance(item.record, PdfRecord):
            assert "pdfa_mode" not in item.record.meta
            assert len(item.record.pages) == min(len(doc.pages), doc.pdf_pages)


def test_mode_is_out_of_the_identity_of_recipes_that_leave_it_out(tmp_path):
    left_out, improved, original = (docmatix_recipe(tmp_path, m) for m in (None, "improved", "original"))
    assert recipe_hash(left_out) == recipe_hash(improved) != recipe_hash(original)
    assert recipe_doc(left_out) == recipe_doc(improved)
    assert "mode" not in recipe_doc(improved)["sources"][0]
    assert recipe_doc(original)["sources"][0]["mode"] == "original"
    # the way docs/docmatix.md selects it
    assert load_recipe("docmatix", ["sources.pdfa.mode=original"]).sources[0].mode == "original"
    assert load_recipe("docmatix").sources[0].mode == "improved"


def test_idl_layout_keeps_its_stored_order_in_original_mode(tmp_path):
    """Docmatix read PDFA only; an IDL JSON in ``mode: original`` gets the same rules (stored order, JSON pages)."""
    stored = [("second", (0.1, 0.5, 0.3, 0.04)), ("first", (0.1, 0.1, 0.3, 0.04)), ("", (0.1, 0.3, 0.3, 0.04))]
    raw = idl_json([stored])
    members = [("0000001.json", raw), ("0000001.pdf", make_pdf([PdfPage(), PdfPage()]))]
    write_tar(tmp_path / "idl" / "idl-train-00000.tar", members)
    texts = {}
    for mode in ("original", "improved"):
        (item,) = read_all(tmp_path / "idl", mode).values()
        assert isinstance(item, Sample) and isinstance(item.record, PdfRecord)
        texts[mode] = [line.text for line in item.record.pages[0].lines]
    assert texts["original"] == json.loads(raw)["pages"][0]["text"]
    assert texts["improved"] == ["first", "", "second"]


def test_the_tar_members_are_what_the_reference_reads(corpus):
    """The reference reads the tars with the standard library: one JSON per document, PDFA layout."""
    tars, docs, raw = corpus
    assert sorted(raw) == [doc.key for doc in docs]
    with tarfile.open(next(tars.glob("*.tar"))) as tar:
        first = tar.next()
        assert first is not None and first.name.endswith(".json")
    assert all(isinstance(page["lines"]["text"], list) for doc in raw.values() for page in doc["pages"])
