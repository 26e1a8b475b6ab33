"""CLIP and SigLIP from a local save_pretrained directory (transformers, PIL image processors).

Images go through the directory's own image processor one at a time (the PIL backend: no torchvision), the
tokenizer is loaded on the first text call (a SigLIP tokenizer may need sentencepiece; images do not).
SigLIP's text tower was trained on ids padded to ``max_length`` without a mask and pools the last position,
so its texts are padded that way and only ``input_ids`` are passed, as its own tokenizer returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.errors import CurationError
from curation.models.base import Embedder
from curation.models.images import bound_aspect
from curation.models.spec import ModelSpec
from curation.models.torch_utils import pooled, quiet_loading, torch_dtype, unit_rows

LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError, AttributeError)


class HFEmbedder(Embedder):
    """``CLIPModel`` / ``SiglipModel``: image and text towers in one shared space."""

    def __init__(self, spec: ModelSpec, kind: str, device: str, dtype: str, fingerprint: str) -> None:
        super().__init__(spec, kind, device, dtype, fingerprint)
        from transformers import AutoImageProcessor, CLIPModel, SiglipModel

        path = Path(spec.path)
        model_cls: Any = CLIPModel if kind == "clip" else SiglipModel
        try:
            v5 = _transformers_major() >= 5
            with quiet_loading():
                dtype_kw = {"dtype" if v5 else "torch_dtype": torch_dtype(dtype)}
                model = model_cls.from_pretrained(path, local_files_only=True, **dtype_kw)
                slow: dict[str, Any] = {"backend": "pil"} if v5 else {"use_fast": False}  # no torchvision needed
                processor: Any = AutoImageProcessor.from_pretrained(path, local_files_only=True, **slow)
        except LOAD_ERRORS as exc:
            raise CurationError(f"cannot load the {kind} model in {path}: {_line(exc)}") from None
        self.model = model.to(device).eval()
        self.processor = processor
        self._tokenizer: Any = None
        config = model.config
        self.dim = int(config.projection_dim if kind == "clip" else config.vision_config.hidden_size)
        self.max_text_tokens = int(config.text_config.max_position_embeddings)
        self.modalities = frozenset({"image", "text"})
        self.input_side = _input_size(processor)
        self._shortest_edge = bool(_size_get(getattr(processor, "size", None), "shortest_edge"))

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        if self._shortest_edge:
            image = bound_aspect(image)
        return self.processor(images=[image], return_tensors="np")["pixel_values"][0]

    def _forward_images(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, dtype=self.model.dtype, non_blocking=True)
            return unit_rows(pooled(self.model.get_image_features(pixel_values=x)))

    def _forward_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tok = self.tokenizer()
        if self.kind == "siglip":
            enc = tok(
                texts, padding="max_length", truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
            )
            inputs = {"input_ids": enc["input_ids"]}
        else:
            enc = tok(texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt")
            inputs = {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}
        with torch.inference_mode():
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            return unit_rows(pooled(self.model.get_text_features(**inputs)))

    def tokenizer(self) -> Any:
        """The directory's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.spec.path, local_files_only=True)
            except LOAD_ERRORS as exc:
                raise CurationError(
                    f"cannot load the tokenizer in {self.spec.path}: {_line(exc)} "
                    "(a SigLIP tokenizer needs: pip install sentencepiece)"
                ) from None
        return self._tokenizer

    def logit_scale(self) -> float | None:
        return float(self.model.logit_scale.detach().float().exp().item())


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _size_get(size: Any, key: str) -> Any:
    """A processor's size entry: a dict in transformers 4, a SizeDict (attributes) in 5."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _input_size(processor: Any) -> int | None:
    """The side the processor hands the model (its crop, else its resize target)."""
    sizes = [getattr(processor, "crop_size", None)] if getattr(processor, "do_center_crop", False) else []
    for size in [*sizes, getattr(processor, "size", None)]:
        for key in ("height", "shortest_edge"):
            value = _size_get(size, key)
            if value:
                return int(value)
    return None


def _line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]
