"""Tiny models, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.models import tiny


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def clip_dir(models_dir: Path) -> Path:
    return tiny.make_tiny_clip(models_dir / "clip")


@pytest.fixture(scope="session")
def siglip_dir(models_dir: Path) -> Path:
    return tiny.make_tiny_siglip(models_dir / "siglip")


@pytest.fixture(scope="session")
def downsample_path(models_dir: Path) -> Path:
    return tiny.make_downsample_embedder(models_dir / "downsample.pt")
