"""Which kind a model path is, from what is on disk (``config.json``'s ``model_type``, a TorchScript archive's
layout), so ``kind: auto`` works and a wrong path or kind fails with one line that says what to fix."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from curation.errors import CurationError

HF_KINDS = {"clip": "clip", "siglip": "siglip"}  # config.json model_type -> kind
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".jit")


def detect_kind(path: str | Path) -> str:
    """``clip``, ``siglip`` (a save_pretrained directory) or ``torchscript`` (a ``torch.jit.save`` file)."""
    p = Path(path)
    if not p.exists():
        raise CurationError(
            f"model path {p} does not exist; set the model path to a local directory or file (nothing is downloaded)"
        )
    if p.is_dir():
        return _directory_kind(p)
    if is_torchscript(p):
        return "torchscript"
    if p.suffix in (".safetensors", ".bin") or _is_zip(p):
        raise CurationError(
            f"model {p} is a weights file, not a TorchScript archive: for open_clip weights set kind: open_clip and "
            "arch; for another torch model export it with torch.jit.script/trace and torch.jit.save"
        )
    raise CurationError(
        f"model {p} is neither a model directory (config.json) nor a TorchScript archive; give a CLIP or SigLIP "
        "save_pretrained directory, a torch.jit.save file, or set kind: open_clip with arch"
    )


def check_kind(path: str | Path, kind: str) -> str:
    """``kind`` if ``path`` can hold that kind; a CurationError naming the mismatch otherwise."""
    p = Path(path)
    if kind == "auto":
        return detect_kind(p)
    if not p.exists():
        raise CurationError(f"model path {p} does not exist; set the model path to a local {kind} model")
    if kind in HF_KINDS.values():
        if not p.is_dir():
            raise CurationError(f"model {p} is a file; kind {kind} needs a save_pretrained directory (config.json)")
        found = _directory_kind(p)
        if found != kind:
            raise CurationError(f"model {p} is a {found} model, not {kind}; set kind: {found} (or auto)")
        return kind
    if not p.is_file():
        what = "a torch.jit.save file" if kind == "torchscript" else "a weights file (.pt, .bin, .safetensors)"
        raise CurationError(f"model {p} is a directory; kind {kind} needs {what}")
    if kind == "torchscript" and not is_torchscript(p):
        raise CurationError(
            f"model {p} is not a TorchScript archive (a torch.save state dict?); export the model with "
            "torch.jit.script or torch.jit.trace and save it with torch.jit.save"
        )
    return kind


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` zip holds compiled code (``*/code/``) and ``constants.pkl``; ``torch.save`` does not."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _directory_kind(p: Path) -> str:
    config = p / "config.json"
    if not config.is_file():
        raise CurationError(
            f"model directory {p} has no config.json; give a CLIP or SigLIP directory written by save_pretrained "
            "(or a TorchScript file, or kind: open_clip with a weights file)"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CurationError(f"cannot read {config}: {exc}; it should be the config.json of save_pretrained") from None
    kind = HF_KINDS.get(str(model_type))
    if kind is None:
        raise CurationError(
            f"model {p} has model_type {model_type!r}; the embedders take clip or siglip directories "
            "(or TorchScript / open_clip files with kind: torchscript / open_clip)"
        )
    return kind
