"""Tiny deterministic models for tests, the demo and benchmarks, built offline in well under a second:
random CLIP and SigLIP directories with their real processors (PIL image processors, a word-level
tokenizer built in code), a TorchScript near-duplicate embedder, and random scoring heads."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from curation.models.torch_utils import quiet_loading

WORDS = " ".join(
    (
        "a an the of on in under with at and to photo picture image drawing painting of red blue green yellow",
        "black white small large old new wooden metal dog cat bird horse house car boat tree street city river",
        "mountain person people man woman child sitting standing running next near view night day sunny cloudy",
    )
).split()


def _tokenizer(specials: list[str], template: str, max_length: int, **tokens: Any) -> Any:
    """A lower-casing word-level tokenizer over WORDS with ``specials`` first (ids 0, 1, ...)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=tokens["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, vocab[s]) for s in specials]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **tokens)


def _vision(image_size: int, patch_size: int, hidden_size: int, layers: int, heads: int, mlp_ratio: int) -> dict:
    return {
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * mlp_ratio,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bar, and no warning that transformers 5.25 emits while diffing SigLIP's config against a
    default one whose token ids (CLIP's 49406/49407) lie outside the default vocabulary."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with quiet_loading():
            yield
    finally:
        logging.set_verbosity(level)


TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
MAX_TEXT_TOKENS = 16


def make_tiny_clip(
    directory: Path,
    image_size: int = 32,
    dim: int = 32,
    *,
    patch_size: int = 8,
    hidden_size: int = 32,
    layers: int = 1,
    heads: int = 2,
    mlp_ratio: int = 2,
    seed: int = 0,
) -> Path:
    """A random ``CLIPModel`` + ``CLIPProcessor`` (CLIPImageProcessor, shortest-edge resize and centre crop)
    in ``directory``; ``dim`` is the projection width. The keyword sizes scale the vision tower (a ViT-B/16:
    hidden 768, 12 layers, 12 heads, mlp_ratio 4, patch 16, image 224)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    specials = ["<unk>", "<|endoftext|>", "<|startoftext|>"]  # eos id 1: CLIP pools at the first eos
    tok = _tokenizer(
        specials,
        "<|startoftext|> $A <|endoftext|>",
        MAX_TEXT_TOKENS,
        unk_token="<unk>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    text = {**TEXT, "vocab_size": len(tok), "max_position_embeddings": MAX_TEXT_TOKENS}
    text |= {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 1}
    config = CLIPConfig(
        text_config=text,
        vision_config=_vision(image_size, patch_size, hidden_size, layers, heads, mlp_ratio),
        projection_dim=dim,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    with _quiet():
        model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(directory)
    return directory


def make_tiny_siglip(
    directory: Path,
    image_size: int = 32,
    dim: int = 32,
    *,
    patch_size: int = 8,
    layers: int = 1,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    """A random ``SiglipModel`` + ``SiglipProcessor`` (SiglipImageProcessor: a fixed-size resize) in
    ``directory``; ``dim`` is the width of both towers (SigLIP's image embedding is the vision hidden size).
    The tokenizer is a fast word-level one: SigLIP's own is sentencepiece, which needs a trained model file;
    like it, this one ends texts with ``</s>``, pads with ``</s>`` and returns no attention mask."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    specials = ["<pad>", "</s>", "<unk>"]
    tok = _tokenizer(
        specials,
        "$A </s>",
        MAX_TEXT_TOKENS,
        unk_token="<unk>",
        eos_token="</s>",
        pad_token="</s>",
        model_input_names=["input_ids"],
    )
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    text = {**TEXT, "hidden_size": dim, "intermediate_size": 2 * dim, "num_attention_heads": heads}
    text |= {"vocab_size": len(tok), "max_position_embeddings": MAX_TEXT_TOKENS, "projection_size": dim}
    text |= {"bos_token_id": None, "eos_token_id": 1, "pad_token_id": 1}
    config = SiglipConfig(
        text_config=text,
        vision_config=_vision(image_size, patch_size, dim, layers, heads, 2),
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
    with _quiet():
        model.save_pretrained(directory)
    SiglipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(directory)
    return directory


def make_downsample_embedder(path: Path, grid: int = 8) -> Path:
    """A TorchScript near-duplicate embedder: channel mean, ``grid`` x ``grid`` average pool, per-image mean
    removed, L2-normalised. Resizing, JPEG re-encoding, light crops and brightness barely move its vector;
    different images land far apart -- enough for a dedup test that can fail. Load with image_size 64 or so."""
    import torch

    class Downsample(torch.nn.Module):
        def __init__(self, grid: int) -> None:
            super().__init__()
            self.grid = grid

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gray = x.mean(dim=1, keepdim=True)
            pooled = torch.nn.functional.adaptive_avg_pool2d(gray, (self.grid, self.grid)).flatten(1)
            centred = pooled - pooled.mean(dim=1, keepdim=True)
            return torch.nn.functional.normalize(centred, dim=1, eps=1e-12)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Downsample(grid)), str(path))
    return path


def make_head(path: Path, in_dim: int, layout: str = "linear", seed: int = 0, hidden: tuple[int, ...] = (16,)) -> Path:
    """A random head (safetensors): ``linear`` -> ``weight`` (1, in_dim) + ``bias``; ``mlp`` -> LAION-style
    ``layers.0``, ``layers.2``, ... through ``hidden`` widths to one output."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    widths = [in_dim, 1] if layout == "linear" else [in_dim, *hidden, 1]
    tensors: dict[str, np.ndarray] = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        prefix = "" if layout == "linear" else f"layers.{2 * i}."
        tensors[f"{prefix}weight"] = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        tensors[f"{prefix}bias"] = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m curation.models.tiny DIR``: tiny random models to try the model steps without downloading
    any: ``DIR/clip`` (CLIP), ``DIR/siglip`` (SigLIP), ``DIR/sscd.pt`` (TorchScript copy-detection stand-in,
    image_size 64) and ``DIR/aesthetic.safetensors`` (an MLP head over the CLIP embeddings)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m curation.models.tiny", description=main.__doc__)
    ap.add_argument("directory", type=Path)
    args = ap.parse_args(argv)
    root: Path = args.directory
    clip = make_tiny_clip(root / "clip")
    make_tiny_siglip(root / "siglip")
    make_downsample_embedder(root / "sscd.pt")
    from transformers import CLIPConfig

    dim = int(CLIPConfig.from_pretrained(clip).projection_dim or 0)
    make_head(root / "aesthetic.safetensors", dim, layout="mlp")
    print(f"wrote {root}/clip, {root}/siglip, {root}/sscd.pt (image_size 64), {root}/aesthetic.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
