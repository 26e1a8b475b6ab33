"""``docmatix_generate``: a ``pdf`` record becomes an ``sft`` record of LLM-generated question/answer pairs.

Per document: page texts (OCR lines joined with ' \\n ') -> chunks of at most ``max_tokens`` and
``max_pages`` pages with ``overlap_pages`` (joined with '\\nNEW PAGE\\n'; a single page over the limit drops
the document as ``page_too_long``) -> one prompt variant chosen from the document key -> one request per
chunk. Requests of ``batch_documents`` documents go to the engine together; finished generations are
stored in the generation cache at once (a rerun reuses them), failures drop the document as
``generation_failed:<reason>``. Outputs are parsed (Q#/A#, or JSON with structured output) and filtered
(every discarded pair counted by rule); kept pairs become the turns, the rendered pages the images.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from curation.docmatix.cache import GenerationCache, default_cache_dir, request_key
from curation.docmatix.engines import ChatRequest, Generation, GenerationFailure, make_engine
from curation.docmatix.filters import apply_filters
from curation.docmatix.parse import parse_qa, parse_qa_json
from curation.docmatix.text import JSON_SCHEMA, Chunk, build_messages, choose_variant, chunk_pages, page_texts
from curation.faults import crash_point
from curation.recipe import DocmatixGenerateStep
from curation.sample import Sample
from curation.steps.pdf import RenderError, render_pages
from schemas import PdfRecord, SftRecord, Turn
from shards.imageinfo import ImageProbeError, probe_image
from shards.tokens import make_token_counter

# Counts that depend only on the inputs and the generations (the same for a resumed build) ...
COUNTS = ("documents", "chunks", "requests", "prompt_tokens", "completion_tokens", "pairs_parsed", "pairs_kept",
          "json_fallbacks")  # fmt: skip
# ... and what this run did (throughput; they live in the run log only).
RUN_COUNTS = ("generated_requests", "cached_requests", "generated_prompt_tokens", "generated_completion_tokens")
RUN_ONLY = (*RUN_COUNTS, "engine_seconds")


class _Document:
    """A document on its way through the step: its chunks and their requests."""

    def __init__(self, sample: Sample, chunks: list[Chunk], variant_id: str, requests: list[ChatRequest]) -> None:
        self.sample = sample
        self.chunks = chunks
        self.variant_id = variant_id
        self.requests = requests
        self.keys: list[str] = []


class DocmatixGenerate:
    takes_context = True

    def __init__(self, cfg: DocmatixGenerateStep, context: dict[str, Any]) -> None:
        self.cfg = cfg
        self.batch_size = cfg.batch_documents
        self.engine = make_engine(cfg.engine)
        self.identity = self.engine.identity()
        tokenizer = context.get("tokenizer") or ("regex", None)
        self._fallback_counter = make_token_counter(*tokenizer)
        self.cache = GenerationCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir())
        self.counts: Counter[str] = Counter()
        self.discarded: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.engine_seconds = 0.0

    # -- tokens ---------------------------------------------------------------------------------------
    def _count(self, text: str) -> int:
        n = self.engine.count_tokens(text)
        return self._fallback_counter(text) if n is None else n

    # -- the batch ------------------------------------------------------------------------------------
    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        results: list[Sample | str | _Document] = [self._prepare(s) for s in samples]
        docs = [d for d in results if isinstance(d, _Document)]
        generations = self._generate([r for d in docs for r in d.requests], docs)
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
        pages = page_texts(record)
        if not any(p.strip() for p in pages):
            return "no_text"
        chunks = chunk_pages(pages, self._count, self.cfg.chunking)
        if chunks is None:
            return "page_too_long"
        variant = choose_variant(record.key, self.cfg.prompts.variants)
        s = self.cfg.sampling
        schema = JSON_SCHEMA if getattr(self.cfg.engine, "structured_output", False) else None
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

    def _generate(self, requests: list[ChatRequest], docs: list[_Document]) -> list[Generation | GenerationFailure]:
        """Cached generations, and the engine for the rest; new generations are stored at once."""
        keys = [request_key(self.identity, r) for r in requests]
        cached = self.cache.get_many(sorted(set(keys)))
        todo: dict[str, int] = {}  # key -> the first request with it (identical chunks are generated once)
        for i, k in enumerate(keys):
            if k not in cached and k not in todo:
                todo[k] = i
        self.counts["requests"] += len(requests)
        self.counts["cached_requests"] += sum(1 for k in keys if k in cached)
        if todo:
            started = time.perf_counter()
            fresh = self.engine.generate([requests[i] for i in todo.values()])
            self.engine_seconds += time.perf_counter() - started
            self.cache.put_many([(k, g) for k, g in zip(todo, fresh, strict=True) if isinstance(g, Generation)])
            crash_point("generation_batch")
            for k, g in zip(todo, fresh, strict=True):
                if isinstance(g, Generation):
                    cached[k] = g
                    self.counts["generated_requests"] += 1
                    self.counts["generated_prompt_tokens"] += g.prompt_tokens
                    self.counts["generated_completion_tokens"] += g.completion_tokens
            failures = {k: g for k, g in zip(todo, fresh, strict=True) if isinstance(g, GenerationFailure)}
        else:
            failures = {}
        out = [cached.get(k) or failures[k] for k in keys]
        for g in out:
            if isinstance(g, Generation):
                self.counts["prompt_tokens"] += g.prompt_tokens
                self.counts["completion_tokens"] += g.completion_tokens
        return out

    def _finish(self, doc: _Document, generations: list[Generation | GenerationFailure]) -> Sample | str:
        failed = [g for g in generations if isinstance(g, GenerationFailure)]
        if failed:
            self.failures[failed[0].reason] += 1
            return f"generation_failed:{failed[0].reason}"
        record = doc.sample.record
        source_text = "\n".join(c.text for c in doc.chunks)
        kept: list[tuple[str, str]] = []
        discarded: Counter[str] = Counter()
        for generation in generations:
            pairs = None
            if getattr(self.cfg.engine, "structured_output", False):
                pairs = parse_qa_json(generation.text)
                if pairs is None:
                    self.counts["json_fallbacks"] += 1
            if pairs is None:
                pairs = parse_qa(generation.text)
            self.counts["pairs_parsed"] += len(pairs)
            result = apply_filters(pairs, self.cfg.filters, source_text, self.cfg.grounding)
            kept += result.kept
            discarded.update(result.discarded)
        self.discarded.update(discarded)
        self.counts["pairs_kept"] += len(kept)
        if not kept:
            return "no_qa_pairs" if not sum(discarded.values()) else "all_pairs_discarded"
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
            "engine_seconds": round(self.engine_seconds, 3),
        }

    def close(self) -> None:
        self.engine.close()
        self.cache.close()
