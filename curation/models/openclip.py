"""An open_clip model from a local weights file (``pretrained=<path>``). open_clip's transforms need
torchvision; where either is missing the stage fails with one line saying what to install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.errors import CurationError
from curation.models.base import Embedder
from curation.models.images import bound_aspect
from curation.models.spec import ModelSpec
from curation.models.torch_utils import torch_dtype, unit_rows


def import_open_clip() -> Any:
    try:
        import open_clip  # pyright: ignore[reportMissingImports]  # optional: pip install open_clip_torch
    except ImportError as exc:
        raise CurationError(
            f"kind open_clip needs the open_clip package ({exc}): pip install open_clip_torch (needs torchvision), "
            "or convert the model to a transformers CLIP directory and use kind: clip"
        ) from None
    return open_clip


class OpenClipEmbedder(Embedder):
    """``open_clip.create_model_and_transforms(arch, pretrained=path)``; its eval transform per image."""

    def __init__(self, spec: ModelSpec, kind: str, device: str, dtype: str, fingerprint: str) -> None:
        super().__init__(spec, kind, device, dtype, fingerprint)
        import torch

        open_clip = import_open_clip()
        if not spec.arch:
            raise CurationError(f"model {spec.path}: kind open_clip needs arch (e.g. ViT-B-32)")
        path = Path(spec.path)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=str(path), device=device)
            tokenizer = open_clip.get_tokenizer(spec.arch)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise CurationError(
                f"cannot load open_clip {spec.arch} from {path}: {' '.join(str(exc).split())[:200]}; check that "
                "arch matches the weights"
            ) from None
        self.model = model.to(torch_dtype(dtype)).eval()
        self.transform = preprocess
        self.tokenizer = tokenizer
        self.modalities = frozenset({"image", "text"})
        self.max_text_tokens = int(getattr(model, "context_length", 77))
        visual = model.visual
        size = getattr(visual, "image_size", None)
        self.input_side = int(size[0] if isinstance(size, tuple | list) else size) if size else None
        with torch.inference_mode():
            side = self.input_side or 224
            probe = model.encode_image(torch.zeros(1, 3, side, side, device=device, dtype=torch_dtype(dtype)))
        self.dim = int(probe.shape[-1])

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(bound_aspect(image)).numpy()  # a banner's shortest-edge resize would be gigabytes

    def _forward_images(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, dtype=torch_dtype(self.dtype), non_blocking=True)
            return unit_rows(self.model.encode_image(x))

    def _forward_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            return unit_rows(self.model.encode_text(tokens))

    def logit_scale(self) -> float | None:
        return float(self.model.logit_scale.detach().float().exp().item())
