"""``judge``: an LLM or VLM rates each turn (``per: turn``) or each sample (``per: sample``) of sft records on
named criteria, one request per (turn or sample, criterion).

- Requests: the system prompt, then the criterion's template filled with the turn (``prompts``); criteria with
  ``images`` also show the sample's images (the first ``max_images``). A sample without images gets no request
  for such a criterion: its rating is None, counted as ``skipped_no_images``.
- Replies: from the generation cache, else the engine (``CachedGenerator``: bounded, repaired, stored at once),
  then ``parse.parse_rating``. A reply with no rating on the scale (or cut at ``max_reply_chars``) is a recorded
  outcome: the rating is None and the request is counted in ``judge_unparsed`` (by cause in ``unparsed``); the
  sample is kept or dropped (``judge_unparsed``) as ``on_unparsed`` says. A failed request drops the sample as
  ``judge_failed:<reason>``, or (``on_failure: keep``) leaves its rating None, counted in ``failures``. No rating
  is ever made up.
- Meta: ``ratings.<criterion>``: one rating per turn (``per: sample``: the sample's rating for every turn), None
  where there is none; other criteria in ``ratings`` (a reader's, another judge's) are kept. ``<criterion>_min``
  and ``<criterion>_mean`` over the rated turns (None when no turn is rated) are the sidecar scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from curation.errors import CurationError
from curation.generation.cached import RUN_COUNTS, CachedGenerator, Result, engine_resources
from curation.generation.docmatix.cache import GenerationCache, default_cache_dir
from curation.generation.docmatix.untrusted import max_reply_chars, replace_surrogates
from curation.generation.engines import ChatRequest, Generation, GenerationFailure, make_engine
from curation.generation.engines.base import require_model_dir
from curation.generation.judge.parse import parse_rating
from curation.generation.judge.presets import SYSTEM
from curation.generation.judge.prompts import exchange, rating_schema, user_message
from curation.recipe import EngineConfig, JudgeCriterion, JudgeStep, TransformersEngineConfig
from curation.sample import Sample
from curation.steps.contract import BatchedStep, Resources, StepContext
from schemas import SftRecord, Turn

COUNTS = ("samples", "turns", "requests", "prompt_tokens", "completion_tokens", "rated", "judge_unparsed",
          "skipped_no_images", "json_fallbacks")  # fmt: skip
RUN_ONLY = (*RUN_COUNTS, "engine_seconds")
UNPARSED = "judge_unparsed"
FAILED = "judge_failed:"


@dataclass
class _Ask:
    """One request of a sample: its criterion and the turns its rating covers."""

    criterion: int
    turns: list[int]
    request: ChatRequest


@dataclass
class _Plan:
    """A sample's requests, and its ratings as they are read."""

    sample: Sample
    asks: list[_Ask] = field(default_factory=list)


def _engine_config(cfg: JudgeStep) -> EngineConfig:
    """The engine config, asked for structured output in ``json_mode`` where the engine has it."""
    if cfg.json_mode and not isinstance(cfg.engine, TransformersEngineConfig):
        return cfg.engine.model_copy(update={"structured_output": True})
    return cfg.engine


def _image_criteria(cfg: JudgeStep) -> list[str]:
    return [c.name for c in cfg.resolved_criteria() if c.images]


class Judge(BatchedStep):
    config = JudgeStep
    kinds: ClassVar[frozenset[str] | None] = frozenset({"sft"})
    drop_reasons: ClassVar[dict[str, str]] = {
        UNPARSED: "a reply held no rating on the criterion's scale (on_unparsed: drop)",
        FAILED: (
            "a judge request failed (on_failure: drop); the reason after the colon: timeout, rate_limited, "
            "http_NNN, connection, invalid_response, context_too_long, response_too_large, image_unreadable, "
            "engine_error"
        ),
    }
    run_only_report_keys: ClassVar[tuple[str, ...]] = RUN_ONLY

    @classmethod
    def resources(cls, cfg: JudgeStep, models: Mapping[str, Any]) -> Resources:
        return engine_resources(cfg.engine)

    @classmethod
    def check_inputs(cls, cfg: JudgeStep, where: str, models: Mapping[str, Any]) -> None:
        """A local transformers model must be a vision-language model when a criterion needs the images (the
        config is read, not the weights); vLLM and endpoints are checked when the engine starts, or answer."""
        from curation.generation.engines.transformers_engine import is_vision_model

        needs = _image_criteria(cfg)
        engine = cfg.engine
        if needs and isinstance(engine, TransformersEngineConfig):
            try:
                vision = is_vision_model(require_model_dir(engine.model))
            except CurationError as exc:
                raise CurationError(f"{where}.{exc}") from None
            if not vision:
                raise CurationError(_text_only(where, needs, engine.model))

    def __init__(self, cfg: JudgeStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.batch_size = cfg.batch_size
        self.criteria: list[JudgeCriterion] = cfg.resolved_criteria()
        self.engine = make_engine(_engine_config(cfg))
        needs = _image_criteria(cfg)
        if needs and self.engine.image_identity() is None:
            self.engine.close()
            raise CurationError(_text_only(f"step {context.label}", needs, cfg.engine.model))
        self.cache = GenerationCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir("judge"))
        self.counts: Counter[str] = Counter()
        self.repairs: Counter[str] = Counter()
        self.generator = CachedGenerator(
            self.engine, self.cache, max_reply_chars(cfg.sampling.max_tokens), self.counts, self.repairs
        )
        self.unparsed: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.histogram: dict[str, Counter[str]] = {c.name: Counter() for c in self.criteria}
        self.system = cfg.system if cfg.system is not None else SYSTEM
        self.schemas = [rating_schema(*c.scale) if cfg.json_mode and c.scale else None for c in self.criteria]

    # -- requests -------------------------------------------------------------------------------------
    def _plan(self, sample: Sample) -> _Plan:
        record = sample.record
        assert isinstance(record, SftRecord)  # kinds: sft
        self.counts["samples"] += 1
        self.counts["turns"] += len(record.turns)
        turns = self._sendable(record.turns)
        units = [[i] for i in range(len(turns))] if self.cfg.per == "turn" else [list(range(len(turns)))]
        images = tuple(record.images[: self.cfg.max_images])
        plan = _Plan(sample)
        s = self.cfg.sampling
        for index, criterion in enumerate(self.criteria):
            if criterion.images and not images:
                self.counts["skipped_no_images"] += len(units)
                continue
            for unit in units:
                text = user_message(criterion, exchange([turns[i] for i in unit]), self.cfg.json_mode)
                request = ChatRequest(
                    messages=(("system", self.system), ("user", text)),
                    max_tokens=s.max_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    seed=s.seed,
                    json_schema=self.schemas[index],
                    images=images if criterion.images else (),
                )
                plan.asks.append(_Ask(index, unit, request))
        return plan

    def _sendable(self, turns: list[Turn]) -> list[Turn]:
        """Turns every engine can send: lone surrogates replaced (counted per sample in ``repairs``)."""
        sendable = [
            Turn.model_construct(user=replace_surrogates(t.user), assistant=replace_surrogates(t.assistant))
            for t in turns
        ]
        if any(a.user != b.user or a.assistant != b.assistant for a, b in zip(sendable, turns, strict=True)):
            self.repairs["prompt_invalid_unicode"] += 1
        return sendable

    # -- the batch ------------------------------------------------------------------------------------
    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        plans = [self._plan(s) for s in samples]
        results = self.generator.run([ask.request for plan in plans for ask in plan.asks])
        out: list[Sample | str] = []
        position = 0
        for plan in plans:
            own = results[position : position + len(plan.asks)]
            position += len(plan.asks)
            out.append(self._finish(plan, own))
        return out

    def _rating(self, criterion: JudgeCriterion, result: Generation) -> int | None:
        """The rating a reply holds, or None (counted by cause)."""
        assert criterion.scale is not None  # resolved
        # a reply cut at max_reply_chars, or at max_tokens, lost its end, where the rating is ("Rating: 1" may be
        # the start of "Rating: 10")
        if "truncated" in result.repairs or result.finish_reason == "length":
            self.unparsed["truncated"] += 1
            return None
        parsed = parse_rating(result.text, *criterion.scale, json_mode=self.cfg.json_mode)
        self.counts["json_fallbacks"] += parsed.json_fallback
        if parsed.rating is None:
            self.unparsed[parsed.outcome] += 1
        return parsed.rating

    def _finish(self, plan: _Plan, results: list[Result]) -> Sample | str:
        record = plan.sample.record
        assert isinstance(record, SftRecord)
        ratings: list[list[int | None]] = [[None] * len(record.turns) for _ in self.criteria]
        failed: list[str] = []
        unparsed = 0
        for ask, result in zip(plan.asks, results, strict=True):
            if isinstance(result, GenerationFailure):
                self.failures[result.reason] += 1
                failed.append(result.reason)
                continue
            criterion = self.criteria[ask.criterion]
            rating = self._rating(criterion, result)
            if rating is None:
                unparsed += 1
                continue
            self.counts["rated"] += 1
            self.histogram[criterion.name][str(rating)] += 1
            for turn in ask.turns:
                ratings[ask.criterion][turn] = rating
        self.counts[UNPARSED] += unparsed
        if failed and self.cfg.on_failure == "drop":
            return f"{FAILED}{failed[0]}"
        if unparsed and self.cfg.on_unparsed == "drop":
            return UNPARSED
        self._write(record, ratings)
        return plan.sample

    def _write(self, record: SftRecord, ratings: list[list[int | None]]) -> None:
        meta = record.meta
        given = meta.get("ratings")
        merged: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
        for criterion, values in zip(self.criteria, ratings, strict=True):
            merged[criterion.name] = values
            numbers = [v for v in values if v is not None]
            meta[f"{criterion.name}_min"] = min(numbers) if numbers else None
            meta[f"{criterion.name}_mean"] = round(sum(numbers) / len(numbers), 4) if numbers else None
        meta["ratings"] = merged

    # -- reporting ------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Counts of this partition (requests, not samples, for ratings, unparsed replies and failures); the
        ``RUN_ONLY`` ones describe this run (cache hits, engine time)."""
        return {
            "engine": self.engine.name,
            **{k: self.counts[k] for k in (*COUNTS, *RUN_COUNTS)},
            "unparsed": dict(sorted(self.unparsed.items())),
            "failures": dict(sorted(self.failures.items())),
            "repairs": dict(sorted(self.repairs.items())),
            "ratings": {name: dict(sorted(h.items(), key=lambda kv: int(kv[0]))) for name, h in self.histogram.items()},
            "engine_seconds": round(self.generator.engine_seconds, 3),
        }

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        """Rates of a judge over a run's wall-clock ``seconds`` (and over the engine's own time)."""
        engine = report.get("engine_seconds") or 0.0
        requests = report.get("requests", 0)
        per_s = (lambda n: round(n / seconds, 2)) if seconds else (lambda n: None)
        rates = {
            "samples": report.get("samples", 0),
            "generated_requests": report.get("generated_requests", 0),
            "cached_requests": report.get("cached_requests", 0),
            "samples_per_s": per_s(report.get("samples", 0)),
            "requests_per_s": per_s(requests),
            "prompt_tokens_per_s": per_s(report.get("generated_prompt_tokens", 0)),
            "generated_tokens_per_s": per_s(report.get("generated_completion_tokens", 0)),
            "engine_seconds": engine,
            "generated_tokens_per_engine_s": round(report.get("generated_completion_tokens", 0) / engine, 1)
            if engine
            else None,
            "unparsed_rate": round(report.get(UNPARSED, 0) / requests, 4) if requests else None,
        }
        rates["summary"] = (
            f"{rates['samples']:,} samples judged ({rates['generated_requests']:,} requests generated, "
            f"{rates['cached_requests']:,} from the cache), {rates['samples_per_s'] or 0:.2f} samples/s, "
            f"{rates['generated_tokens_per_s'] or 0:,.0f} generated tokens/s; {report.get(UNPARSED, 0):,} replies "
            f"without a rating, {sum(report.get('failures', {}).values()):,} failed requests"
        )
        return rates

    def close(self) -> None:
        self.engine.close()
        self.cache.close()


def _text_only(where: str, criteria: list[str], model: str) -> str:
    return (
        f"{where}: the criteria {', '.join(criteria)} need the images, but the engine's model {model} takes no "
        "images (give a vision-language model, or judge only text criteria)"
    )
