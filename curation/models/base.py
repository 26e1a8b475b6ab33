"""The embedder contract and what every kind shares: bounded decoding, a thread pool that decodes and
preprocesses the next batch while the model runs the current one, failures per image, text batching.

A kind implements ``_preprocess`` (one RGB image -> a (3, H, W) float32 array, in a pool thread: PIL and numpy
release the GIL) and ``_forward_images`` (a stacked batch -> (n, dim) L2-normalised float32 rows); text kinds
also ``_forward_texts``. Preprocessing is per image, so a vector never depends on its batch-mates' decoding.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from curation.errors import CurationError
from curation.models.images import ImageRejected, decode_rgb
from curation.models.spec import EmbedResult, ModelSpec
from curation.models.torch_utils import spare_cores

TEXT_BATCH = 256  # texts per forward: bounds activation memory for a long list
MAX_PREP_THREADS = 8

Prepared = list[Future[np.ndarray | str]]  # per image: its (3, H, W) input, or why it failed


class Embedder(ABC):
    """A loaded model that turns image bytes (and, for CLIP-like kinds, texts) into unit vectors."""

    spec: ModelSpec
    kind: str
    fingerprint: str
    dim: int
    device: str
    dtype: str
    modalities: frozenset[str]
    max_text_tokens: int | None
    forward_calls: int

    def __init__(self, spec: ModelSpec, kind: str, device: str, dtype: str, fingerprint: str) -> None:
        self.spec, self.kind, self.device, self.dtype, self.fingerprint = spec, kind, device, dtype, fingerprint
        self.modalities = frozenset({"image"})
        self.max_text_tokens = None
        self.forward_calls = 0
        self.input_side: int | None = None  # the model's input side: lets a large JPEG decode at a reduced scale
        self.prefetch = spare_cores(device)  # prepare batch k+1 during batch k's forward (see embed_images_iter)
        self._forward_lock = threading.Lock()  # one forward at a time, and an exact forward_calls
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    # ---- what a kind implements ------------------------------------------------------------------------------
    @abstractmethod
    def _preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> the model's (3, H, W) float32 input."""

    @abstractmethod
    def _forward_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 -> (n, dim) float32, L2-normalised rows."""

    def _forward_texts(self, texts: list[str]) -> np.ndarray:
        raise CurationError(
            f"model {self.spec.path} ({self.kind}) embeds images only; use a CLIP, SigLIP or open_clip model "
            "for a step that embeds texts"
        )

    def logit_scale(self) -> float | None:
        """The learned temperature of a contrastive image-text model (for reports); None where there is none."""
        return None

    # ---- the public calls ------------------------------------------------------------------------------------
    def embed_images(self, images: list[bytes]) -> EmbedResult:
        """One batch: one forward over the images that decode; the others land in ``failed``."""
        return self._run(self._submit(images))

    def embed_images_iter(self, batches: Iterable[list[bytes]]) -> Iterator[EmbedResult]:
        """One result per batch, in order. Each batch is decoded and preprocessed by a thread pool; on a GPU,
        batch k+1 is prepared while the model runs batch k, so decoding hides behind the model (``batches`` is
        then read one batch ahead). On the CPU the model already uses every core: preparing beside it would only
        oversubscribe them (torch's threads wait on each other), so there the pool works between forwards
        (``prefetch``: True on a GPU, or where torch leaves a core idle; settable)."""
        queue: deque[Prepared] = deque()
        ahead = 2 if self.prefetch else 1  # batches submitted to the pool before the oldest one runs
        try:
            for batch in batches:
                queue.append(self._submit(batch))
                if len(queue) >= ahead:
                    yield self._run(queue.popleft())
            while queue:
                yield self._run(queue.popleft())
        finally:
            for prepared in queue:  # an abandoned iteration leaves no work queued
                for future in prepared:
                    future.cancel()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 L2-normalised rows; each text truncated to the model's ``max_text_tokens``."""
        if "text" not in self.modalities:
            return self._forward_texts(list(texts))  # raises the kind's "images only" error
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            chunk = [str(t) for t in texts[start : start + TEXT_BATCH]]
            with self._forward_lock:
                self.forward_calls += 1
                parts.append(self._forward_texts(chunk))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    # ---- the pipeline ----------------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child has no pool threads
            threads = max(1, min(MAX_PREP_THREADS, os.cpu_count() or 1))
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embed-prep")
            self._pool_pid = os.getpid()
        return self._pool

    def _submit(self, images: list[bytes]) -> Prepared:
        pool = self._executor()
        return [pool.submit(self._prepare_one, data) for data in images]

    def _prepare_one(self, data: bytes) -> np.ndarray | str:
        try:
            side = self.input_side if self.spec.fast_jpeg_decode else None
            image = decode_rgb(bytes(data), self.spec.max_image_pixels, side)
            return np.ascontiguousarray(self._preprocess(image), dtype=np.float32)
        except ImageRejected as exc:
            return str(exc)
        except Exception as exc:  # the processor refusing an odd image: that image fails, not the batch
            return f"cannot preprocess: {' '.join(str(exc).split())[:200] or type(exc).__name__}"

    def _run(self, prepared: Prepared) -> EmbedResult:
        arrays: list[np.ndarray] = []
        failed: dict[int, str] = {}
        for i, future in enumerate(prepared):
            item = future.result()
            if isinstance(item, str):
                failed[i] = item
            else:
                arrays.append(item)
        if not arrays:
            return EmbedResult(np.zeros((0, self.dim), np.float32), failed)
        with self._forward_lock:
            self.forward_calls += 1
            vectors = self._forward_images(np.stack(arrays))
        return EmbedResult(np.ascontiguousarray(vectors, dtype=np.float32), failed)

    def close(self) -> None:
        """Stop the preprocessing threads (the model stays loaded)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
