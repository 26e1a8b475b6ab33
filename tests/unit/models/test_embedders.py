"""Loading every kind from the tiny builders, the vectors they give, and the failures they report."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.errors import CurationError
from curation.models import EmbedResult, ModelSpec, detect_kind, load_embedder
from curation.models.embedders import clear_cache
from tests.unit.models.pictures import encode, jpegs, photo


def _spec(path: Path, **kwargs: object) -> ModelSpec:
    if path.suffix == ".pt":
        kwargs.setdefault("image_size", 32)
    return ModelSpec(str(path), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["clip", "siglip", "torchscript"])
def kind_path(request: pytest.FixtureRequest, clip_dir: Path, siglip_dir: Path, downsample_path: Path):
    return request.param, {"clip": clip_dir, "siglip": siglip_dir, "torchscript": downsample_path}[request.param]


def _assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_each_kind_loads_auto_detected_and_embeds(kind_path: tuple[str, Path]):
    kind, path = kind_path
    assert detect_kind(path) == kind
    embedder = load_embedder(_spec(path))
    assert (embedder.kind, embedder.device, embedder.dtype) == (kind, "cpu", "float32")
    assert embedder.dim == (64 if kind == "torchscript" else 32)
    assert embedder.input_side == 32  # read from the processor (or image_size): large JPEGs decode at 1/2..1/8
    assert load_embedder(_spec(path)) is embedder  # memoized per process
    assert load_embedder(_spec(path, kind=kind)).kind == kind
    result = embedder.embed_images(jpegs(5))
    assert result.failed == {}
    _assert_unit_rows(result.vectors, 5, embedder.dim)
    if kind == "torchscript":
        assert embedder.modalities == frozenset({"image"})
        assert embedder.logit_scale() is None and embedder.max_text_tokens is None
    else:
        assert embedder.modalities == frozenset({"image", "text"})
        assert embedder.max_text_tokens == 16
        assert embedder.logit_scale() == pytest.approx(np.exp(2.6592) if kind == "clip" else 1.0, rel=1e-4)
        texts = ["a photo of a dog", "A RED CAR", "", " ".join(["tree"] * 100)]  # the last is truncated
        vectors = embedder.embed_texts(texts)
        _assert_unit_rows(vectors, 4, embedder.dim)
        assert not np.allclose(vectors[0], vectors[1])
        np.testing.assert_array_equal(vectors, embedder.embed_texts(texts))
        assert embedder.embed_texts([]).shape == (0, embedder.dim)


def test_deterministic_and_batch_independent(kind_path: tuple[str, Path]):
    _, path = kind_path
    embedder = load_embedder(_spec(path))
    images = jpegs(6, start=10)
    first = embedder.embed_images(images).vectors
    np.testing.assert_array_equal(first, embedder.embed_images(images).vectors)  # bit for bit
    one_by_one = np.concatenate([embedder.embed_images([im]).vectors for im in images])
    np.testing.assert_allclose(first, one_by_one, atol=1e-5)


@pytest.mark.parametrize("prefetch", [True, False])
def test_iter_equals_per_batch_calls_and_counts_forwards(
    kind_path: tuple[str, Path], prefetch: bool, monkeypatch: pytest.MonkeyPatch
):
    _, path = kind_path
    embedder = load_embedder(_spec(path))
    monkeypatch.setattr(embedder, "prefetch", prefetch)  # True: the GPU path, batch k+1 prepared during batch k
    batches = [jpegs(4, 20), [b"not an image", *jpegs(2, 30)], [], jpegs(3, 40), [b""]]
    calls = embedder.forward_calls
    streamed = list(embedder.embed_images_iter(iter(batches)))
    assert embedder.forward_calls == calls + 3  # no forward for a batch with nothing to embed
    assert len(streamed) == len(batches)
    for got, batch in zip(streamed, batches, strict=True):
        want = embedder.embed_images(batch)
        np.testing.assert_array_equal(got.vectors, want.vectors)
        assert got.failed == want.failed
    assert set(streamed[1].failed) == {0} and streamed[1].vectors.shape[0] == 2
    assert streamed[2].vectors.shape == (0, embedder.dim) and streamed[4].failed.keys() == {0}
    assert list(embedder.embed_images_iter([])) == []


def test_prefetch_prepares_the_next_batch_before_the_forward(clip_dir: Path, monkeypatch: pytest.MonkeyPatch):
    embedder = load_embedder(_spec(clip_dir))
    monkeypatch.setattr(embedder, "prefetch", True)
    events: list[str] = []
    submit, forward = embedder._submit, embedder._forward_images

    def logged_submit(images: list[bytes]):
        events.append(f"submit {len(images)}")
        return submit(images)

    def logged_forward(pixels: np.ndarray) -> np.ndarray:
        events.append(f"forward {len(pixels)}")
        return forward(pixels)

    monkeypatch.setattr(embedder, "_submit", logged_submit)
    monkeypatch.setattr(embedder, "_forward_images", logged_forward)
    list(embedder.embed_images_iter([jpegs(1), jpegs(2), jpegs(3)]))
    assert events == ["submit 1", "submit 2", "forward 1", "submit 3", "forward 2", "forward 3"]


def test_abandoned_iteration_is_harmless(clip_dir: Path, monkeypatch: pytest.MonkeyPatch):
    embedder = load_embedder(_spec(clip_dir))
    monkeypatch.setattr(embedder, "prefetch", True)
    it = embedder.embed_images_iter(jpegs(2, i) for i in range(0, 20, 2))
    assert isinstance(next(it), EmbedResult)
    it.close()
    assert embedder.embed_images(jpegs(1)).vectors.shape == (1, 32)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_bad_images_fail_alone(kind_path: tuple[str, Path]):
    _, path = kind_path
    embedder = load_embedder(_spec(path))
    good = jpegs(3, 50)
    truncated = good[0][: len(good[0]) // 2]
    images = [good[0], truncated, _png_header(100_000, 100_000), good[1], b"\x00" * 50, good[2], _png_header(30, 20)]
    result = embedder.embed_images(images)
    assert set(result.failed) == {1, 2, 4, 6}
    assert "cannot decode" in result.failed[1]
    assert "too many pixels" in result.failed[2]
    assert "not a readable image" in result.failed[4]
    assert "cannot decode" in result.failed[6]  # a header without pixel data
    assert result.ok_indices(len(images)) == [0, 3, 5]
    np.testing.assert_allclose(result.vectors, embedder.embed_images(good).vectors, atol=1e-5)
    assert all("\n" not in reason and len(reason) < 260 for reason in result.failed.values())


def test_pixel_cap_is_checked_on_the_header(clip_dir: Path):
    embedder = load_embedder(_spec(clip_dir, max_image_pixels=80 * 60))
    small, large = encode(photo(1, (80, 60))), encode(photo(1, (81, 60)))
    result = embedder.embed_images([small, large])
    assert result.failed == {1: "too many pixels: 81x60 > 4,800"}


def test_odd_modes_and_shapes_embed(clip_dir: Path, downsample_path: Path):
    base = photo(3, (96, 64))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16))
    images = [
        encode(rgba, "PNG"),
        encode(palette, "PNG"),
        encode(base.convert("LA"), "PNG"),
        encode(base.convert("CMYK"), "JPEG"),
        encode(sixteen, "PNG"),
        encode(base.convert("1"), "PNG"),
        encode(base, "WEBP"),
        encode(base.resize((2000, 4)), "PNG"),  # a banner: centre-cropped before CLIP's shortest-edge resize
        encode(base.resize((1, 1)), "PNG"),
    ]
    for path in (clip_dir, downsample_path):
        result = load_embedder(_spec(path)).embed_images(images)
        assert result.failed == {}
        assert result.vectors.shape[0] == len(images)


def test_sixteen_bit_is_scaled_not_saturated(downsample_path: Path):
    embedder = load_embedder(_spec(downsample_path))
    gray = photo(4, (96, 64)).convert("L")
    sixteen = Image.fromarray(np.asarray(gray, np.uint16) * 257)
    eight, wide = embedder.embed_images([encode(gray, "PNG"), encode(sixteen, "PNG")]).vectors
    assert float(eight @ wide) > 0.999


def test_bfloat16_on_cpu(clip_dir: Path):
    full = load_embedder(_spec(clip_dir))
    half = load_embedder(_spec(clip_dir, dtype="bfloat16"))
    assert half.dtype == "bfloat16" and half.fingerprint != full.fingerprint
    images = jpegs(3)
    a, b = full.embed_images(images).vectors, half.embed_images(images).vectors
    assert b.dtype == np.float32
    assert np.min(np.sum(a * b, axis=1)) > 0.98


def test_a_changed_model_is_loaded_again(tmp_path: Path):
    from curation.models.tiny import make_tiny_clip

    path = make_tiny_clip(tmp_path / "clip", seed=1)
    first = load_embedder(_spec(path))
    make_tiny_clip(path, seed=2)
    second = load_embedder(_spec(path))
    assert second is not first and second.fingerprint != first.fingerprint
    clear_cache()
    assert load_embedder(_spec(path)) is not second


# ---- errors ------------------------------------------------------------------------------------------------------
def test_missing_and_wrong_paths(tmp_path: Path, clip_dir: Path, siglip_dir: Path):
    import torch

    with pytest.raises(CurationError, match=r"missing does not exist.*nothing is downloaded"):
        load_embedder(ModelSpec(str(tmp_path / "missing")))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CurationError, match=r"bert has model_type 'bert'.*clip or siglip"):
        load_embedder(ModelSpec(str(bert)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurationError, match=r"empty has no config.json.*save_pretrained"):
        load_embedder(ModelSpec(str(tmp_path / "empty")))
    state = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2, 2)}, state)
    with pytest.raises(CurationError, match=r"state.pt is a weights file, not a TorchScript archive"):
        load_embedder(ModelSpec(str(state)))
    with pytest.raises(CurationError, match=r"state.pt is not a TorchScript archive.*torch.jit.save"):
        load_embedder(ModelSpec(str(state), kind="torchscript", image_size=32))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CurationError, match="neither a model directory"):
        load_embedder(ModelSpec(str(text)))
    with pytest.raises(CurationError, match=r"is a siglip model, not clip; set kind: siglip"):
        load_embedder(ModelSpec(str(siglip_dir), kind="clip"))
    with pytest.raises(CurationError, match=r"kind torchscript needs a torch\.jit\.save file"):
        load_embedder(ModelSpec(str(clip_dir), kind="torchscript", image_size=32))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(CurationError, match=r"cannot load the clip model in .*broken"):
        load_embedder(ModelSpec(str(broken)))


def test_bad_settings(clip_dir: Path, downsample_path: Path):
    with pytest.raises(CurationError, match="not a device"):
        load_embedder(ModelSpec(str(clip_dir), device="gpu"))
    with pytest.raises(CurationError, match="dtype float16 on device cpu"):
        load_embedder(ModelSpec(str(clip_dir), device="cpu", dtype="float16"))
    with pytest.raises(CurationError, match="needs image_size"):
        load_embedder(ModelSpec(str(downsample_path), kind="torchscript"))
    with pytest.raises(CurationError, match="kind 'bogus' is not one of"):
        load_embedder(ModelSpec(str(clip_dir), kind="bogus"))  # type: ignore[arg-type]
    with pytest.raises(CurationError, match="mean and std"):
        load_embedder(ModelSpec(str(downsample_path), image_size=32, std=(0.0, 1.0, 1.0)))


def test_cuda_without_gpu(clip_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from curation.models import devices

    monkeypatch.setattr(devices, "_cuda_count", lambda: 0)
    with pytest.raises(CurationError, match=r"device cuda: torch sees no GPU.*set device: auto or cpu"):
        load_embedder(ModelSpec(str(clip_dir), device="cuda"))


def test_torchscript_embeds_images_only(downsample_path: Path):
    embedder = load_embedder(_spec(downsample_path))
    with pytest.raises(CurationError, match=r"downsample.pt \(torchscript\) embeds images only"):
        embedder.embed_texts(["a dog"])


def test_torchscript_with_a_wrong_input_contract(tmp_path: Path):
    import torch

    class Flat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten()

    path = tmp_path / "flat.pt"
    torch.jit.save(torch.jit.script(Flat()), str(path))
    with pytest.raises(CurationError, match=r"returns shape \(3072,\) for one image"):
        load_embedder(ModelSpec(str(path), image_size=32))


def test_open_clip_missing_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"x" * 10)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(CurationError, match=r"pip install open_clip_torch \(needs torchvision\)"):
        load_embedder(ModelSpec(str(weights), kind="open_clip", arch="ViT-B-32"))
    with pytest.raises(CurationError, match="kind open_clip needs arch"):
        load_embedder(ModelSpec(str(weights), kind="open_clip"))
