"""A TorchScript image embedder (e.g. SSCD for copy detection): square bilinear resize (torchvision's default), mean/std
normalisation, (B, 3, H, W) in, (B, dim) out. No text tower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.errors import CurationError
from curation.models.base import Embedder
from curation.models.spec import ModelSpec
from curation.models.torch_utils import torch_dtype, unit_rows


class TorchScriptEmbedder(Embedder):
    """``torch.jit.load`` of a file; its output width is read from one probe forward at load."""

    def __init__(self, spec: ModelSpec, kind: str, device: str, dtype: str, fingerprint: str) -> None:
        super().__init__(spec, kind, device, dtype, fingerprint)
        import torch

        if spec.image_size is None or spec.image_size < 1:
            raise CurationError(f"model {spec.path}: kind torchscript needs image_size (the square input side)")
        path = Path(spec.path)
        try:
            model: Any = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise CurationError(
                f"model {path} does not load as TorchScript ({' '.join(str(exc).split())[:200]}); export it with "
                "torch.jit.script or torch.jit.trace and save it with torch.jit.save"
            ) from None
        self.model = model.eval()
        if dtype != "float32":
            self.model = self.model.to(torch_dtype(dtype))
        self.input_side = spec.image_size
        self._mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 3)
        self._std = np.asarray(spec.std, np.float32).reshape(1, 1, 3)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        side = self.input_side or 1
        try:
            out = self._raw_forward(np.zeros((1, 3, side, side), np.float32))
        except Exception as exc:  # a scripted model raises torch.jit.Error and others on the wrong input
            raise CurationError(
                f"model {self.spec.path} fails on a (1, 3, {side}, {side}) input: {' '.join(str(exc).split())[:200]};"
                " check image_size and that it takes normalised RGB batches"
            ) from None
        if out.ndim != 2 or out.shape[0] != 1:
            raise CurationError(
                f"model {self.spec.path} returns shape {tuple(out.shape)} for one image; an embedder returns "
                "(batch, dim)"
            )
        return int(out.shape[1])

    def _raw_forward(self, pixels: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, dtype=torch_dtype(self.dtype), non_blocking=True)
            out = self.model(x)
            if isinstance(out, tuple | list):
                out = out[0]
            return out

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        side = self.input_side or 1
        # bilinear, as torchvision's Resize on a PIL image (SSCD's published "skew_320" preprocessing)
        arr = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255.0
        return ((arr - self._mean) / self._std).transpose(2, 0, 1)

    def _forward_images(self, pixels: np.ndarray) -> np.ndarray:
        return unit_rows(self._raw_forward(pixels))
