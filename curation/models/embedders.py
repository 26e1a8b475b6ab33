"""Loading an embedder: the kind checked against the path, the device and dtype resolved, the files
fingerprinted, and the model loaded once per process per (spec, fingerprint) -- a worker that runs many
partitions loads it once, and a model whose files changed is loaded again."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.models.base import Embedder
from curation.models.detect import check_kind, detect_kind
from curation.models.devices import resolve_device, resolve_dtype
from curation.models.fingerprint import model_fingerprint
from curation.models.spec import KINDS, EmbedResult, ModelSpec

_loaded: dict[tuple[ModelSpec, str], Embedder] = {}
_lock = threading.Lock()


def load_embedder(spec: ModelSpec) -> Embedder:
    """The embedder ``spec`` names, memoized per process. Raises CurationError for a missing path, a wrong
    kind, a bad device/dtype or a model that does not load."""
    check_spec(spec)
    kind = check_kind(spec.path, spec.kind)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    fingerprint = model_fingerprint(spec.path, kind, fingerprint_extra(spec, kind, dtype))
    key = (spec, fingerprint)
    with _lock:  # two threads asking at once load once
        embedder = _loaded.get(key)
        if embedder is None:
            for old in [k for k in _loaded if k[0] == spec]:  # its files changed: drop the stale model
                _loaded.pop(old).close()
            embedder = _construct(spec, kind, device, dtype, fingerprint)
            _loaded[key] = embedder
    return embedder


def fingerprint_extra(spec: ModelSpec, kind: str, dtype: str) -> dict[str, Any]:
    """What besides the files changes the vectors: the dtype, and a TorchScript/open_clip model's preprocessing
    (a transformers directory's preprocessing is in its hashed preprocessor config)."""
    extra: dict[str, Any] = {"dtype": dtype}
    if spec.fast_jpeg_decode:
        extra["fast_jpeg_decode"] = True
    if kind == "torchscript":
        extra |= {"image_size": spec.image_size, "mean": list(spec.mean), "std": list(spec.std), "resize": "bilinear"}
    if kind == "open_clip":
        extra |= {"arch": spec.arch}
    return extra


def check_spec(spec: ModelSpec) -> None:
    """Settings that are wrong whatever is on disk."""
    where = f"model {spec.path}"
    if spec.kind not in KINDS:
        raise CurationError(f"{where}: kind {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.kind == "torchscript" and not spec.image_size:
        raise CurationError(f"{where}: kind torchscript needs image_size (the square side the model takes)")
    if spec.image_size is not None and not 1 <= spec.image_size <= 4096:
        raise CurationError(f"{where}: image_size {spec.image_size} is outside 1..4096")
    if spec.kind == "open_clip" and not spec.arch:
        raise CurationError(f"{where}: kind open_clip needs arch (the open_clip architecture, e.g. ViT-B-32)")
    if len(spec.mean) != 3 or len(spec.std) != 3 or any(s <= 0 for s in spec.std):
        raise CurationError(f"{where}: mean and std need 3 values each (RGB), std > 0; got {spec.mean}, {spec.std}")
    if spec.max_image_pixels < 1:
        raise CurationError(f"{where}: max_image_pixels must be positive, got {spec.max_image_pixels}")


def _construct(spec: ModelSpec, kind: str, device: str, dtype: str, fingerprint: str) -> Embedder:
    if kind in ("clip", "siglip"):
        from curation.models.hf import HFEmbedder

        return HFEmbedder(spec, kind, device, dtype, fingerprint)
    if kind == "torchscript":
        from curation.models.torchscript import TorchScriptEmbedder

        return TorchScriptEmbedder(spec, kind, device, dtype, fingerprint)
    if kind == "open_clip":
        from curation.models.openclip import OpenClipEmbedder

        return OpenClipEmbedder(spec, kind, device, dtype, fingerprint)
    raise CurationError(f"model {Path(spec.path)}: kind {kind!r} is not one of {', '.join(KINDS)}")


def clear_cache() -> None:
    """Forget every loaded embedder (tests; frees the models once nothing else holds them)."""
    with _lock:
        for embedder in _loaded.values():
            embedder.close()
        _loaded.clear()


__all__ = ["EmbedResult", "Embedder", "ModelSpec", "clear_cache", "detect_kind", "load_embedder"]
