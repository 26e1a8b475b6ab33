"""``docmatix_generate``: a ``pdf`` record becomes an ``sft`` record of LLM-generated question/answer pairs.

Per document: page texts (OCR lines joined with ' \\n ') -> chunks of at most ``max_tokens`` and
``max_pages`` pages with ``overlap_pages`` (joined with '\\nNEW PAGE\\n'; a single page over the limit drops
the document as ``page_too_long``) -> one prompt variant chosen from the document key -> one request per
chunk. Requests of ``batch_documents`` documents go to the engine together; finished generations are
stored in the generation cache at once (a rerun reuses them), failures drop the document as
``generation_failed:<reason>``. Model output is untrusted: every generation is repaired before it is stored or
used (``curation.generation.docmatix.untrusted``: lone surrogates, control characters, bogus token counts; each repair
counted by kind in ``repairs``), a reply longer than ``max_reply_chars`` drops its document as
``generation_too_long``, and at most ``MAX_PAIRS`` pairs per document reach the filters (the rest are discarded
as ``too_many_pairs``). Outputs are parsed (Q#/A#, or JSON with structured output) and filtered (every discarded
pair counted by rule); kept pairs become the turns, the rendered pages the images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from curation.generation.cached import RUN_COUNTS, CachedGenerator, engine_resources
from curation.generation.docmatix.cache import GenerationCache, default_cache_dir
from curation.generation.docmatix.filters import apply_filters
from curation.generation.docmatix.parse import parse_qa, parse_qa_json
from curation.generation.docmatix.text import (
    JSON_SCHEMA,
    Chunk,
    build_messages,
    choose_variant,
    chunk_pages,
    page_texts,
)
from curation.generation.docmatix.untrusted import clean_text, max_reply_chars, replace_surrogates
from curation.generation.engines import ChatRequest, Generation, GenerationFailure, make_engine
from curation.recipe import DocmatixGenerateStep, TransformersEngineConfig
from curation.sample import Sample
from curation.steps.contract import BatchedStep, Resources, StepContext
from curation.steps.pdf import RenderError, render_pages
from schemas import PdfRecord, SftRecord, Turn
from shards.imageinfo import ImageProbeError, probe_image
from shards.tokens import make_token_counter

# Counts that depend only on the inputs and the generations (the same for a resumed build) ...
COUNTS = ("documents", "chunks", "requests", "prompt_tokens", "completion_tokens", "pairs_parsed", "pairs_kept",
          "json_fallbacks")  # fmt: skip
# ... and what this run did (throughput; they live in the run log only).
RUN_ONLY = (*RUN_COUNTS, "engine_seconds")
MAX_PAIRS = 100  # question/answer pairs of one document that reach the filters (turns of one sample)
Result = Generation | GenerationFailure


class _Document:
    """A document on its way through the step: its chunks and their requests."""

    def __init__(self, sample: Sample, chunks: list[Chunk], variant_id: str, requests: list[ChatRequest]) -> None:
        self.sample = sample
        self.chunks = chunks
        self.variant_id = variant_id
        self.requests = requests
        self.keys: list[str] = []


class DocmatixGenerate(BatchedStep):
    config = DocmatixGenerateStep
    converts: ClassVar[tuple[str, str] | None] = ("pdf", "sft")
    kinds: ClassVar[frozenset[str] | None] = frozenset({"pdf"})
    drop_reasons: ClassVar[dict[str, str]] = {
        "no_text": "no page with text (a source with `mode: original`: no page)",
        "page_too_long": "a page alone is longer than a chunk",
        "generation_failed:": (
            "the engine failed for a chunk; the reason after the colon: timeout, rate_limited, http_NNN, connection, "
            "invalid_response, context_too_long, response_too_large (the endpoint's response body was over the "
            "cap, and was not read), engine_error"
        ),
        "generation_too_long": "a reply longer than max_reply_chars (a server ignoring max_tokens)",
        "no_qa_pairs": "the replies hold no question/answer pair",
        "all_pairs_discarded": (
            "every parsed pair was discarded by the filters (pairs discarded inside a kept document are counted "
            f"by rule in `reports`; pairs beyond the {MAX_PAIRS}th of a document are discarded as `too_many_pairs`)"
        ),
        "pdf_unrenderable": "pdfium cannot render the pages",
    }
    run_only_report_keys: ClassVar[tuple[str, ...]] = RUN_ONLY

    @classmethod
    def resources(cls, cfg: DocmatixGenerateStep, models: Mapping[str, Any]) -> Resources:
        """The GPUs of a local model (``engine_resources``)."""
        return engine_resources(cfg.engine)

    def __init__(self, cfg: DocmatixGenerateStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.batch_size = cfg.batch_documents
        self.engine = make_engine(cfg.engine)
        self.identity = self.engine.identity()
        self._fallback_counter = make_token_counter(*context.tokenizer)
        self.cache = GenerationCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir())
        self.counts: Counter[str] = Counter()
        self.discarded: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        # requests whose generation needed each repair (documents, for prompt_invalid_unicode)
        self.repairs: Counter[str] = Counter()
        self.max_chars = max_reply_chars(cfg.sampling.max_tokens)
        self.generator = CachedGenerator(self.engine, self.cache, self.max_chars, self.counts, self.repairs)

    # -- tokens ---------------------------------------------------------------------------------------
    def _count(self, text: str) -> int:
        n = self.engine.count_tokens(text)
        return self._fallback_counter(text) if n is None else n

    # -- the batch ------------------------------------------------------------------------------------
    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        results: list[Sample | str | _Document] = [self._prepare(s) for s in samples]
        docs = [d for d in results if isinstance(d, _Document)]
        # cached generations, and the engine for the rest (repaired and stored at once)
        generations = self.generator.run([r for d in docs for r in d.requests])
        out: list[Sample | str] = []
        position = 0
        for item in results:
            if not isinstance(item, _Document):
                out.append(item)
                continue
            own = generations[position : position + len(item.requests)]
            position += len(item.requests)
            out.append(self._finish(item, own))
        return out

    def _prepare(self, sample: Sample) -> Sample | str | _Document:
        record = sample.record
        if not isinstance(record, PdfRecord):
            return sample  # not a document: passes unchanged (the output kind check catches mistakes)
        self.counts["documents"] += 1
        pages = self._sendable(page_texts(record))
        # a pdfa source in `mode: original` sends a document of blank pages too, as Docmatix did
        original = record.meta.get("pdfa_mode") == "original"
        if not (pages if original else any(p.strip() for p in pages)):
            return "no_text"
        chunks = chunk_pages(pages, self._count, self.cfg.chunking)
        if chunks is None:
            return "page_too_long"
        variant = choose_variant(record.key, self.cfg.prompts.variants)
        s = self.cfg.sampling
        schema = JSON_SCHEMA if self._structured_output() else None
        requests = [
            ChatRequest(
                messages=build_messages(self.cfg.prompts, variant, chunk.text),
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
                json_schema=schema,
            )
            for chunk in chunks
        ]
        self.counts["chunks"] += len(chunks)
        return _Document(sample, chunks, variant.id, requests)

    def _sendable(self, pages: list[str]) -> list[str]:
        """Page texts every engine can send: a lone surrogate (from a ``\\ud800`` escape in the OCR JSON) would
        fail the request on every run (counted per document in ``repairs.prompt_invalid_unicode``)."""
        sendable = [replace_surrogates(page) for page in pages]
        if sendable != pages:
            self.repairs["prompt_invalid_unicode"] += 1
        return sendable

    def _pairs(self, generation: Generation) -> list[tuple[str, str]]:
        """Parsed pairs; strings decoded from JSON are repaired like reply text (counted in ``repairs``)."""
        pairs = None
        if self._structured_output():
            pairs = parse_qa_json(generation.text)
            if pairs is None:
                self.counts["json_fallbacks"] += 1
        if pairs is None:
            return parse_qa(generation.text)  # its text is repaired already
        cleaned: list[tuple[str, str]] = []
        repairs: set[str] = set()
        for question, answer in pairs:
            (question, q_repairs), (answer, a_repairs) = clean_text(question), clean_text(answer)
            repairs.update(q_repairs, a_repairs)
            cleaned.append((question, answer))
        self.repairs.update(repairs - set(generation.repairs))
        return cleaned

    def _finish(self, doc: _Document, generations: list[Result]) -> Sample | str:
        failed = [g for g in generations if isinstance(g, GenerationFailure)]
        if failed:
            self.failures[failed[0].reason] += 1
            return f"generation_failed:{failed[0].reason}"
        texts = [g for g in generations if isinstance(g, Generation)]
        if any("truncated" in g.repairs for g in texts):
            return "generation_too_long"
        source_text = "\n".join(c.text for c in doc.chunks)
        kept: list[tuple[str, str]] = []
        discarded: Counter[str] = Counter()
        room = MAX_PAIRS
        for generation in texts:
            pairs = self._pairs(generation)
            self.counts["pairs_parsed"] += len(pairs)
            if len(pairs) > room:
                discarded["too_many_pairs"] += len(pairs) - room
                pairs = pairs[:room]
            room -= len(pairs)
            result = apply_filters(pairs, self.cfg.filters, source_text, self.cfg.grounding)
            kept += result.kept
            discarded.update(result.discarded)
        self.discarded.update(discarded)
        self.counts["pairs_kept"] += len(kept)
        if not kept:
            return "no_qa_pairs" if not sum(discarded.values()) else "all_pairs_discarded"
        return self._render(doc, kept, discarded)

    def _render(self, doc: _Document, kept: list[tuple[str, str]], discarded: Counter[str]) -> Sample | str:
        record = doc.sample.record
        assert isinstance(record, PdfRecord)  # _prepare passes other records through before any document is made
        pages = [(i, "") for i in range(len(record.pages))]
        try:
            rendered = render_pages(record.pdf, pages, self.cfg.dpi, self.cfg.max_side, self.cfg.image_format)
            infos = [probe_image(image) for image, _ in rendered]
        except (RenderError, ImageProbeError):
            return "pdf_unrenderable"
        if not rendered:
            return "pdf_unrenderable"
        meta = {
            **record.meta,
            "source_id": f"PDFA key: {record.meta.get('source_id', record.key)}",
            "prompt_id": doc.variant_id,
            "engine": self.engine.name,
            "model": self.identity.get("model"),
            "chunks": len(doc.chunks),
            "pairs_discarded": dict(sorted(discarded.items())),
        }
        sft = SftRecord.model_construct(
            key=record.key,
            source=record.source,
            meta=meta,
            images=[image for image, _ in rendered],
            turns=[Turn.model_construct(user=q, assistant=a) for q, a in kept],
        )
        return Sample(sft, doc.sample.origin, infos)

    # -- reporting ------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Counts of this partition; the ``RUN_ONLY`` ones describe this run (cache hits, engine time)."""
        return {
            "engine": self.engine.name,
            **{k: self.counts[k] for k in (*COUNTS, *RUN_COUNTS)},
            "discarded": dict(sorted(self.discarded.items())),
            "failures": dict(sorted(self.failures.items())),
            "repairs": dict(sorted(self.repairs.items())),
            "engine_seconds": round(self.generator.engine_seconds, 3),
        }

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        """Rates of a generation step over a run's wall-clock ``seconds`` (and over the engine's own time)."""
        engine = report.get("engine_seconds") or 0.0
        discarded = report.get("discarded", {})
        parsed = report.get("pairs_parsed", 0)
        rates = {
            "documents": report.get("documents", 0),
            "generated_requests": report.get("generated_requests", 0),
            "cached_requests": report.get("cached_requests", 0),
            "documents_per_s": round(report.get("documents", 0) / seconds, 3) if seconds else None,
            "prompt_tokens_per_s": round(report.get("generated_prompt_tokens", 0) / seconds, 1) if seconds else None,
            "generated_tokens_per_s": round(report.get("generated_completion_tokens", 0) / seconds, 1)
            if seconds
            else None,
            "engine_seconds": engine,
            "generated_tokens_per_engine_s": round(report.get("generated_completion_tokens", 0) / engine, 1)
            if engine
            else None,
            "pairs_parsed": parsed,
            "pairs_kept": report.get("pairs_kept", 0),
            "discard_rate_by_rule": {r: round(n / parsed, 4) for r, n in sorted(discarded.items())} if parsed else {},
        }
        rates["summary"] = (
            f"{rates['documents']:,} documents ({rates['generated_requests']:,} requests generated, "
            f"{rates['cached_requests']:,} from the cache), {rates['documents_per_s'] or 0:.2f} documents/s, "
            f"{rates['prompt_tokens_per_s'] or 0:,.0f} prompt and {rates['generated_tokens_per_s'] or 0:,.0f} "
            f"generated tokens/s; {rates['pairs_kept']:,} of {parsed:,} QA pairs kept"
        )
        return rates

    def _structured_output(self) -> bool:
        """Whether the engine is asked for JSON by schema (the transformers engine has no such option)."""
        engine = self.cfg.engine
        return not isinstance(engine, TransformersEngineConfig) and engine.structured_output

    def close(self) -> None:
        self.engine.close()
        self.cache.close()
