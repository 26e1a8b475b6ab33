"""What every model step shares: its model (loaded once per worker process), the embedding cache, and the
vectors of a batch of samples -- reused from an earlier step of the same model, read from the cache, or
computed in one model call per batch.

Vectors are rounded to float16 before anything uses them (scores, classifier heads, the shards, the cache),
so a score computed from a cached vector equals the one computed fresh: a rebuild that hits the cache gives
the same shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curation.errors import CurationError
from curation.models.embedding_cache import EmbeddingCache, cache_namespace, default_cache_dir
from curation.models.spec import ModelSpec
from curation.recipe.models import ModelConfig
from curation.sample import Sample
from curation.steps.contract import BatchedStep, Resources, StepContext
from schemas import PairRecord, Record, SftRecord

MODEL_IMAGE_UNREADABLE = "model_image_unreadable"
MODEL_DROP_REASONS = {MODEL_IMAGE_UNREADABLE: "the model's image processing could not read an image"}
RUN_COUNTS = ("images_embedded", "images_cached", "texts_embedded", "texts_cached", "model_seconds")
SCORE_DECIMALS = 6  # scores are stored rounded: decisions at a threshold do not hinge on the last float bits


def model_config(models: Mapping[str, Any], name: str) -> ModelConfig:
    cfg = models.get(name)
    if not isinstance(cfg, ModelConfig):  # the recipe validates the name; a bug if not
        raise RuntimeError(f"no model {name!r} among the recipe's models")
    return cfg


def model_spec(cfg: ModelConfig) -> ModelSpec:
    return ModelSpec(
        path=cfg.path,
        kind=cfg.kind,
        device=cfg.device,
        dtype=cfg.dtype,
        arch=cfg.arch,
        image_size=cfg.image_size,
        mean=cfg.mean,
        std=cfg.std,
        fast_jpeg_decode=cfg.fast_jpeg_decode,
    )


def model_resources(cfg: ModelConfig) -> Resources:
    """A GPU (or a share of one) unless the model is pinned to the CPU; executors drop the request when the
    machine or cluster has no GPU and the device is ``auto`` (the same steps then run on CPU)."""
    if cfg.device == "cpu":
        return Resources()
    return Resources(gpus=cfg.gpus, gpu_optional=cfg.device == "auto")


def check_model(cfg: ModelConfig, where: str, needs_text: bool = False) -> None:
    """Before the build: the path holds a model of the declared kind (no weights are loaded)."""
    from curation.models.detect import check_kind

    try:
        kind = check_kind(cfg.path, cfg.kind)
    except CurationError as exc:
        raise CurationError(f"{where}: {exc}") from None
    if needs_text and kind == "torchscript":
        raise CurationError(
            f"{where}: model {cfg.path} is TorchScript and embeds images only; this step needs a "
            "CLIP, SigLIP or open_clip model (image and text)"
        )


def model_identity(cfg: ModelConfig) -> dict[str, Any]:
    """The model's fingerprint (files + preprocessing) for the build plan: other weights, another build."""
    from curation.models.detect import check_kind
    from curation.models.embedders import fingerprint_extra
    from curation.models.fingerprint import model_fingerprint

    spec = model_spec(cfg)
    kind = check_kind(cfg.path, cfg.kind)
    return {"model_fingerprint": model_fingerprint(cfg.path, kind, fingerprint_extra(spec, kind, cfg.dtype))}


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def turn_texts(record: Record, text_field: str) -> list[str]:
    """The texts a CLIP-like model compares with the images: a pair's caption; each sft turn's answer,
    question or both."""
    if isinstance(record, PairRecord):
        return [record.caption]
    if isinstance(record, SftRecord):
        pick = {
            "answer": lambda t: t.assistant,
            "question": lambda t: t.user,
            "both": lambda t: f"{t.user}\n{t.assistant}",
        }
        return [pick[text_field](t).strip() for t in record.turns]
    return []


class ModelStage:
    """One model of a step in a worker: loaded on first use, with the cache and the run's counts."""

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.counts: dict[str, float] = dict.fromkeys(RUN_COUNTS, 0)
        self._embedder: Any = None
        self._cache: EmbeddingCache | None = None

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from curation.models.embedders import load_embedder

            self._embedder = load_embedder(model_spec(self.cfg))
        return self._embedder

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    def _namespace(self, modality: str) -> str:
        e = self.embedder
        return cache_namespace(e.fingerprint, e.dtype, e.device, modality)

    def cache(self) -> EmbeddingCache | None:
        if not self.cfg.cache:
            return None
        if self._cache is None:
            directory = Path(self.cfg.cache_dir) if self.cfg.cache_dir else default_cache_dir()
            self._cache = EmbeddingCache(directory, self.dim)
        return self._cache

    def images(self, samples: list[Sample]) -> list[np.ndarray | str]:
        """Per sample: its images' float16 vectors (n_images, dim), or a drop reason. An earlier step's
        vectors of the same model are reused (``Sample.embeddings``)."""
        name = f"{self.name}.image"
        out: list[np.ndarray | str | None] = [s.embeddings.get(name) for s in samples]
        todo = [(i, s) for i, s in enumerate(samples) if out[i] is None]
        contents = {info.sha256: b for _, s in todo for info, b in zip(s.infos, s.record.image_list(), strict=True)}
        vectors, failed = self.image_vectors(contents)
        for i, sample in todo:
            shas = [info.sha256 for info in sample.infos]
            bad = [failed[h] for h in shas if h in failed]
            if bad:
                out[i] = MODEL_IMAGE_UNREADABLE
                continue
            rows = np.stack([vectors[h] for h in shas]) if shas else np.zeros((0, self.dim), np.float16)
            sample.embeddings[name] = rows
            sample.embedded_images = tuple(shas)
            out[i] = rows
        return [o if o is not None else MODEL_IMAGE_UNREADABLE for o in out]

    def image_vectors(self, images: dict[str, bytes]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """sha256 -> float16 vector of each image (cache first), and sha256 -> why the model could not read it."""
        return self._vectors("image", images, self._embed_images)

    def texts(self, texts: list[str]) -> np.ndarray:
        """Float16 vectors (len(texts), dim) of ``texts``."""
        if not texts:
            return np.zeros((0, self.dim), np.float16)
        shas = [text_sha256(t) for t in texts]
        vectors, _ = self._vectors("text", dict(zip(shas, texts, strict=True)), self._embed_texts)
        return np.stack([vectors[sha] for sha in shas])

    def _vectors(self, modality: str, contents: dict[str, Any], embed: Any) -> tuple[dict[str, np.ndarray], dict]:
        """sha256 -> float16 vector for every content (cache first), and sha256 -> why it failed."""
        cache = self.cache() if contents else None
        namespace = self._namespace(modality) if contents else ""
        found = cache.get_many(namespace, list(contents)) if cache is not None else {}
        missing = sorted(c for c in contents if c not in found)
        self.counts[f"{modality}s_cached"] += len(contents) - len(missing)
        failed: dict[str, str] = {}
        if missing:
            fresh, failed = embed(missing, [contents[c] for c in missing])
            self.counts[f"{modality}s_embedded"] += len(fresh)
            if cache is not None and fresh:
                cache.put_many(namespace, fresh)
            found |= fresh
        return found, failed

    def _embed_images(self, shas: list[str], images: list[bytes]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        import time

        started = time.perf_counter()
        fresh: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        size = self.cfg.batch_size  # samples may hold many images: a model call takes at most batch_size of them
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            result = self.embedder.embed_images(chunk)
            half = np.asarray(result.vectors, dtype=np.float16)
            ok = [i for i in range(len(chunk)) if i not in result.failed]
            fresh |= {shas[start + i]: half[row] for row, i in enumerate(ok)}
            failed |= {shas[start + i]: why for i, why in result.failed.items()}
        self.counts["model_seconds"] += time.perf_counter() - started
        return fresh, failed

    def _embed_texts(self, shas: list[str], texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        import time

        started = time.perf_counter()
        half = np.asarray(self.embedder.embed_texts(texts), dtype=np.float16)
        self.counts["model_seconds"] += time.perf_counter() - started
        return {sha: half[i] for i, sha in enumerate(shas)}, {}

    def report(self) -> dict[str, Any]:
        return {**self.counts, "model_seconds": round(self.counts["model_seconds"], 3)}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of float16 unit vectors, computed in float32 (stored vectors are unit length to fp16
    precision: normalised again so a score never exceeds 1)."""
    a32 = a.astype(np.float32)
    b32 = b.astype(np.float32)
    a32 /= np.maximum(np.linalg.norm(a32, axis=-1, keepdims=True), 1e-12)
    b32 /= np.maximum(np.linalg.norm(b32, axis=-1, keepdims=True), 1e-12)
    return np.sum(a32 * b32, axis=-1)


def rounded(value: float) -> float:
    return round(float(value), SCORE_DECIMALS)


class ModelStep(BatchedStep):
    """What the batched model steps share: their model (``cfg.model``) in a :class:`ModelStage`, batches of the
    model's ``batch_size``, its resources, checks and fingerprint, and the run's counts in the report."""

    drop_reasons: ClassVar[dict[str, str]] = MODEL_DROP_REASONS
    run_only_report_keys: ClassVar[tuple[str, ...]] = RUN_COUNTS
    needs_text: ClassVar[bool] = False  # the step embeds texts: a CLIP-like model, not TorchScript

    def __init__(self, cfg: Any, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.stage = ModelStage(cfg.model, model_config(context.models, cfg.model))
        self.batch_size = self.stage.cfg.batch_size
        self.unscored = 0  # samples without images (or texts): kept without a score

    @classmethod
    def resources(cls, cfg: Any, models: Mapping[str, Any]) -> Resources:
        return model_resources(model_config(models, cfg.model))

    @classmethod
    def check_inputs(cls, cfg: Any, where: str, models: Mapping[str, Any]) -> None:
        needs_text = cls.needs_text or bool(getattr(cfg, "text", False))
        check_model(model_config(models, cfg.model), f"{where} (model {cfg.model})", needs_text=needs_text)

    @classmethod
    def input_identity(cls, cfg: Any, models: Mapping[str, Any]) -> dict[str, Any]:
        return model_identity(model_config(models, cfg.model))

    def report(self) -> dict[str, Any]:
        return {**self.stage.report(), "unscored": self.unscored}

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        return model_throughput(report, seconds)

    def close(self) -> None:
        self.stage.close()


def model_throughput(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Images and texts per second of the whole run and of the model alone; the line ``curate build`` prints."""
    images = report.get("images_embedded", 0)
    model = report.get("model_seconds") or 0.0
    rates = {
        "images_embedded": images,
        "images_cached": report.get("images_cached", 0),
        "texts_embedded": report.get("texts_embedded", 0),
        "texts_cached": report.get("texts_cached", 0),
        "images_per_s": round(images / seconds, 1) if seconds else None,
        "model_images_per_s": round(images / model, 1) if model else None,
    }
    rates["summary"] = (
        f"{images:,} images embedded ({rates['images_cached']:,} from the cache), "
        f"{rates['texts_embedded']:,} texts ({rates['texts_cached']:,} cached)"
        + (f", {rates['images_per_s']:,} images/s" if rates["images_per_s"] else "")
    )
    return rates
