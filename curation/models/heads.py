"""A small scoring head over embeddings (an aesthetic or NSFW predictor): Linear layers read from a state
dict and applied in numpy float64, so a score does not depend on the device or torch at all.

``linear``: one ``*.weight`` (out, in) and an optional bias. ``mlp``: the 2-D weights in the order of the
numbers in their keys (``layers.0``, ``layers.2``, ... as LAION's improved aesthetic predictor names its
``Linear(768,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout, Linear(64,16), Linear(16,1)``),
``activation`` between them (none for LAION's). Dropout has no weights, so a trained model's state dict is all
this needs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curation.errors import CurationError
from curation.models.fingerprint import model_fingerprint

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class HeadSpec:
    path: str
    layout: Literal["linear", "mlp"] = "linear"
    activation: Literal["none", "relu", "gelu"] = "none"  # between MLP layers (LAION's aesthetic predictor: none)
    normalize_input: bool = True  # L2-normalise embeddings first (the aesthetic predictor expects it)
    output: Literal["raw", "sigmoid", "softmax"] = "raw"
    output_index: int = 0  # which output unit is the score (e.g. an NSFW class)


@dataclass(frozen=True)
class Layer:
    weight: np.ndarray  # (out, in) float64
    bias: np.ndarray | None  # (out,) float64


class Head:
    """Scores (n,) float64 for (n, in_dim) embeddings."""

    def __init__(self, spec: HeadSpec, layers: list[Layer], fingerprint: str) -> None:
        self.spec, self.layers, self.fingerprint = spec, layers, fingerprint
        self.in_dim = int(layers[0].weight.shape[1])
        self.out_dim = int(layers[-1].weight.shape[0])

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise CurationError(
                f"head {self.spec.path} takes {self.in_dim}-dim embeddings, got shape {tuple(x.shape)}; "
                "pair it with the embedder it was trained on"
            )
        if self.spec.normalize_input:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norms > 0, norms, 1.0)
        for i, layer in enumerate(self.layers):
            x = x @ layer.weight.T
            if layer.bias is not None:
                x = x + layer.bias
            if i < len(self.layers) - 1:
                x = _activate(x, self.spec.activation)
        if self.spec.output == "sigmoid":
            x = 1.0 / (1.0 + np.exp(-x))
        elif self.spec.output == "softmax":
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x = x / x.sum(axis=1, keepdims=True)
        return np.ascontiguousarray(x[:, self.spec.output_index])


def load_head(spec: HeadSpec) -> Head:
    """Read and check a head file; CurationError for a missing file, a file that is not a state dict, or
    layers whose shapes do not chain."""
    path = Path(spec.path)
    if not path.is_file():
        raise CurationError(f"head {path} does not exist; set the head path to a .safetensors or .pt state dict")
    if spec.layout not in ("linear", "mlp"):
        raise CurationError(f"head {path}: layout {spec.layout!r} is not linear or mlp")
    if spec.activation not in ("none", "relu", "gelu") or spec.output not in ("raw", "sigmoid", "softmax"):
        raise CurationError(f"head {path}: activation {spec.activation!r} / output {spec.output!r} not supported")
    tensors = _read_state_dict(path)
    layers = _linear(path, tensors) if spec.layout == "linear" else _mlp(path, tensors)
    out_dim = layers[-1].weight.shape[0]
    if not 0 <= spec.output_index < out_dim:
        raise CurationError(f"head {path}: output_index {spec.output_index} but the head has {out_dim} output(s)")
    extra = {k: getattr(spec, k) for k in ("layout", "activation", "normalize_input", "output", "output_index")}
    return Head(spec, layers, model_fingerprint(path, "head", extra))


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return {k: np.asarray(v, dtype=np.float64) for k, v in load_file(str(path)).items()}
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise CurationError(f"head {path} is not a readable safetensors file: {_line(exc)}") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise CurationError(f"head {path}: expected a .safetensors, .pt, .pth or .bin state dict")
    import torch

    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors of many kinds: all mean "not a plain state dict"
        raise CurationError(
            f"head {path} is not a plain state dict (torch.load(weights_only=True) failed: {_line(exc)}); "
            "save model.state_dict() with torch.save or safetensors"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CurationError(f"head {path} holds a {type(obj).__name__}, not a state dict of tensors")
    return {str(k): v.detach().to(torch.float64).numpy() for k, v in obj.items()}


def _pairs(path: Path, tensors: dict[str, np.ndarray]) -> list[tuple[str, Layer]]:
    """(weight key, Layer) for every 2-D weight, in key-number order; any other tensor is an error."""
    layers: list[tuple[str, Layer]] = []
    used: set[str] = set()
    for key, value in tensors.items():
        if not key.endswith("weight") or value.ndim != 2:
            continue
        bias_key = key[: -len("weight")] + "bias"
        bias = tensors.get(bias_key)
        if bias is not None and bias.shape != (value.shape[0],):
            raise CurationError(f"head {path}: {bias_key} has shape {bias.shape}, {key} needs ({value.shape[0]},)")
        layers.append((key, Layer(value, bias)))
        used |= {key, bias_key}
    extra = sorted(set(tensors) - used)
    if extra:
        shapes = ", ".join(f"{k} {tuple(tensors[k].shape)}" for k in extra[:4])
        raise CurationError(f"head {path}: unexpected tensors {shapes}; a head holds only Linear weights and biases")
    if not layers:
        raise CurationError(f"head {path} holds no 2-D *.weight tensor (a Linear layer's (out, in) matrix)")
    return sorted(layers, key=lambda kl: (tuple(int(n) for n in re.findall(r"\d+", kl[0])), kl[0]))


def _linear(path: Path, tensors: dict[str, np.ndarray]) -> list[Layer]:
    pairs = _pairs(path, tensors)
    if len(pairs) != 1:
        keys = ", ".join(k for k, _ in pairs)
        raise CurationError(f"head {path}: layout linear needs exactly one *.weight, found {keys}; use layout: mlp")
    return [pairs[0][1]]


def _mlp(path: Path, tensors: dict[str, np.ndarray]) -> list[Layer]:
    pairs = _pairs(path, tensors)
    for (key_a, a), (key_b, b) in itertools.pairwise(pairs):
        if b.weight.shape[1] != a.weight.shape[0]:
            raise CurationError(
                f"head {path}: {key_a} {tuple(a.weight.shape)} outputs {a.weight.shape[0]} but {key_b} "
                f"{tuple(b.weight.shape)} takes {b.weight.shape[1]}; the layers do not chain"
            )
    return [layer for _, layer in pairs]


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0.0)
    if activation == "gelu":  # exact (erf) GELU, torch.nn.GELU's default
        from scipy.special import erf

        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    return x


def _line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]
