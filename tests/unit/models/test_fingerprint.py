"""Fingerprints follow file content, not file names or times; a file is hashed once per version."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from curation import file_digest
from curation.errors import CurationError
from curation.models.fingerprint import model_files, model_fingerprint


def _model(folder: Path, weights: bytes = b"w" * 3000) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "clip"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "pytorch_model.bin").write_bytes(b"old copy")  # not loaded when safetensors exist
    (folder / "README.md").write_text("docs")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.json").write_text("{}")
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / "sub" / "deeper").mkdir()
    (folder / "sub" / "deeper" / "a.json").write_text("{}")
    return folder


def test_files_taken(tmp_path: Path):
    names = [p.relative_to(tmp_path / "m").as_posix() for p in model_files(_model(tmp_path / "m"))]
    assert names == ["config.json", "model.safetensors", "sub/tokenizer.json"]


def test_content_decides(tmp_path: Path):
    a = model_fingerprint(_model(tmp_path / "a"), "clip")
    assert a == model_fingerprint(_model(tmp_path / "b"), "clip")  # same bytes elsewhere
    assert a != model_fingerprint(_model(tmp_path / "c", b"v" * 3000), "clip")
    assert a != model_fingerprint(tmp_path / "a", "siglip")
    assert a != model_fingerprint(tmp_path / "a", "clip", {"dtype": "bfloat16"})
    assert model_fingerprint(tmp_path / "a", "clip", {"x": 1, "y": 2}) == model_fingerprint(
        tmp_path / "a", "clip", {"y": 2, "x": 1}
    )
    (tmp_path / "a" / "README.md").write_text("other docs")
    assert a == model_fingerprint(tmp_path / "a", "clip")


def test_a_changed_weight_file_changes_it_and_a_touch_does_not(tmp_path: Path, monkeypatch):
    folder = _model(tmp_path / "m")
    weights = folder / "model.safetensors"
    before = model_fingerprint(folder, "clip")
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    hashed: list[object] = []
    real = file_digest._hash
    monkeypatch.setattr(file_digest, "_hash", lambda p: hashed.append(p) or real(p))
    assert model_fingerprint(folder, "clip") == before
    assert hashed == [str(weights.resolve())]  # the touched file was hashed again, to the same digest
    assert model_fingerprint(folder, "clip") == before
    assert hashed == [str(weights.resolve())]  # and then not again
    weights.write_bytes(b"x" * 3000)
    assert model_fingerprint(folder, "clip") != before


def test_single_file_and_errors(tmp_path: Path):
    file = tmp_path / "model.pt"
    file.write_bytes(b"abc")
    moved = tmp_path / "other" / "renamed.pt"
    moved.parent.mkdir()
    shutil.copy(file, moved)
    assert model_fingerprint(file, "torchscript") == model_fingerprint(moved, "torchscript")
    assert model_fingerprint(file, "torchscript") != model_fingerprint(file, "torchscript", {"image_size": 224})
    assert len(model_fingerprint(file, "torchscript")) == 64
    with pytest.raises(CurationError, match="does not exist"):
        model_fingerprint(tmp_path / "missing", "clip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurationError, match="holds no config or weights"):
        model_fingerprint(tmp_path / "empty", "clip")
