"""The model layer of model stages: local models only (never a hub download), batched inference on a
device, one-line errors. torch and transformers are imported when a model is loaded, not here."""

from curation.models.base import Embedder
from curation.models.detect import detect_kind
from curation.models.devices import resolve_device, resolve_dtype, visible_gpus
from curation.models.embedders import load_embedder
from curation.models.fingerprint import model_fingerprint
from curation.models.heads import Head, HeadSpec, load_head
from curation.models.spec import EmbedResult, ModelSpec

__all__ = [
    "EmbedResult",
    "Embedder",
    "Head",
    "HeadSpec",
    "ModelSpec",
    "detect_kind",
    "load_embedder",
    "load_head",
    "model_fingerprint",
    "resolve_device",
    "resolve_dtype",
    "visible_gpus",
]
