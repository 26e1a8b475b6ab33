"""Images reach the engines for real: data URIs (checked by the loopback server), vLLM's ``image_pil`` content
parts (checked by its contract double), a processor-driven tiny VLM; text-only requests keep their cache keys."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from curation.generation.docmatix.cache import request_key
from curation.generation.engines import ChatRequest, Generation, GenerationFailure, make_engine
from curation.generation.engines.images import ImageInputError, data_uri, decode, fitted
from curation.recipe.generation import OpenAIEngineConfig, TransformersEngineConfig, VllmEngineConfig
from curation.selection.tiny_models import FAMILIES, build_tiny
from tests.llm_models import shared_tiny_causal_lm
from tests.openai_server import ScriptedOpenAIServer
from tests.vllm_double import images_of, install_vllm_double, text_of


def encoded(color: str, size: tuple[int, int] = (32, 32), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt)
    return out.getvalue()


def noise(size: tuple[int, int], fmt: str) -> bytes:
    """An image that compresses badly (so byte budgets bite)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def request(text: str = "Rate it.", images: tuple[bytes, ...] = (), **kw) -> ChatRequest:
    messages = (("system", "You judge."), ("user", text))
    return ChatRequest(messages, max_tokens=8, temperature=0.0, top_p=1.0, seed=0, images=images, **kw)


# ---------------------------------------------------------------- cache keys


def test_text_only_cache_keys_are_unchanged_and_images_change_them():
    """The key of a text-only request is the one Docmatix caches were written with (frozen here)."""
    text = ChatRequest(
        (("system", "You write Q1: ... A1: ... pairs."), ("user", "NEW PAGE text")), 2000, 0.7, 1.0, 0, None
    )
    identity = {"engine": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m", "structured_output": False}
    assert request_key(identity, text) == "10d7d0df93f687fed1185f356184d21fef6e37a2eff8708dbf4196b70022f4f2"
    red, blue = encoded("red"), encoded("blue")
    keys = {request_key(identity, r) for r in (request(), request(images=(red,)), request(images=(blue,)))}
    assert len(keys) == 3
    assert request_key(identity, request(images=(red, blue))) != request_key(identity, request(images=(blue, red)))


# ---------------------------------------------------------------- bounding images


def test_small_jpeg_png_webp_are_sent_as_they_are():
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        data = encoded("green", (40, 30), fmt)
        assert fitted(data, 1 << 20, 64) == (
            {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}[mime],
            data,
        )
        assert data_uri(data, 1 << 20, 64) == f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_other_formats_large_sides_and_large_files_are_reencoded():
    gif = encoded("red", (40, 30), "GIF")
    fmt, data = fitted(gif, 1 << 20, 64)
    assert fmt == "jpg" and Image.open(io.BytesIO(data)).size == (40, 30)
    transparent = encoded((255, 0, 0, 0), (50, 20), "PNG", "RGBA")
    fmt, data = fitted(transparent, 1 << 20, 25)  # over the side: scaled, alpha kept in PNG
    assert fmt == "png" and Image.open(io.BytesIO(data)).size == (25, 10)
    big = noise((256, 256), "PNG")
    fmt, data = fitted(big, 20_000, 2048)
    assert fmt == "jpg" and len(data) <= 20_000 and len(big) > 20_000
    assert max(Image.open(io.BytesIO(data)).size) <= 256
    with pytest.raises(ImageInputError, match="does not decode"):
        fitted(b"<html>not an image</html>", 1 << 20, 64)
    with pytest.raises(ImageInputError, match="does not fit"):
        fitted(big, 300, 2048)  # not even a JPEG header fits


def test_decode_gives_rgb_within_the_side():
    image = decode(encoded((0, 0, 255, 0), (64, 16), "PNG", "RGBA"), max_side=32)
    assert image.mode == "RGB" and image.size == (32, 8) and image.getpixel((0, 0)) == (255, 255, 255)


# ---------------------------------------------------------------- openai


def openai_engine(server: ScriptedOpenAIServer, **overrides):
    settings = {"concurrency": 4, "timeout": 5.0, "max_retries": 0, **overrides}
    return make_engine(OpenAIEngineConfig(type="openai", base_url=server.base_url, model="vlm", **settings))


def test_openai_sends_images_as_data_uri_content_parts():
    red, gif, big = encoded("red"), encoded("blue", (80, 40), "GIF"), encoded("green", (300, 100), "JPEG")
    with ScriptedOpenAIServer(lambda body: "Rating: 3") as server:
        engine = openai_engine(server, max_image_side=128)
        try:
            results = engine.generate([request("text only"), request("with images", (red, gif, big))])
            assert engine.image_identity() == {"max_image_bytes": 4 * 1024 * 1024, "max_image_side": 128}
        finally:
            engine.close()
    assert all(isinstance(r, Generation) and r.text == "Rating: 3" for r in results)
    text_only, with_images = sorted(server.chat_requests, key=lambda r: len(r.images))
    assert text_only.body["messages"][1] == {"role": "user", "content": "text only"}
    parts = with_images.body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url", "image_url"]
    assert parts[0] == {"type": "text", "text": "with images"}
    assert with_images.body["messages"][0] == {"role": "system", "content": "You judge."}
    (m1, d1, s1), (m2, _, s2), (m3, _, s3) = with_images.images  # decoded by the server
    assert (m1, d1, s1) == ("image/png", red, (32, 32))
    assert (m2, s2) == ("image/jpeg", (80, 40))  # a GIF goes as JPEG
    assert (m3, s3) == ("image/jpeg", (128, 43))  # scaled to max_image_side
    assert with_images.body["max_tokens"] == 8


def test_openai_unreadable_image_fails_that_request_only():
    with ScriptedOpenAIServer(lambda body: "Rating: 4") as server:
        engine = openai_engine(server)
        try:
            bad, good = engine.generate(
                [request(images=(b"\x89PNG\r\n\x1a\nbroken",)), request(images=(encoded("red"),))]
            )
        finally:
            engine.close()
    assert isinstance(bad, GenerationFailure) and bad.reason == "image_unreadable"
    assert isinstance(good, Generation) and len(server.chat_requests) == 1


def test_openai_response_format_takes_the_schema_title():
    schema = {"title": "rating", "type": "object", "properties": {"rating": {"type": "integer"}}}
    with ScriptedOpenAIServer(lambda body: '{"rating": 2}') as server:
        engine = openai_engine(server, structured_output=True)
        try:
            engine.generate([request(json_schema=schema)])
        finally:
            engine.close()
    assert server.chat_requests[0].body["response_format"]["json_schema"] == {"name": "rating", "schema": schema}


# ---------------------------------------------------------------- vllm (contract double)


def describe(conversation: list[dict], params) -> str:
    images = images_of(conversation)
    return f"{len(images)} images {' '.join(str(i.size[0]) for i in images)}: {text_of(conversation[-1]['content'])}"


def test_vllm_sends_pil_images_as_chat_content_parts(monkeypatch):
    double = install_vllm_double(monkeypatch, describe)
    engine = make_engine(VllmEngineConfig(type="vllm", model="some/vlm", batch_size=8, limit_images_per_prompt=4))
    red, wide = encoded("red"), encoded("blue", (48, 16), "JPEG")
    results = engine.generate([request("plain"), request("look", (red, wide)), request("again", (red,))])
    assert [r.text for r in results if isinstance(r, Generation)] == [
        "0 images : plain",
        "2 images 32 48: look <image> <image>",
        "1 images 32: again <image>",
    ]
    (call,) = double.chat_calls
    assert call.conversations[0][1] == {"role": "user", "content": "plain"}
    parts = call.conversations[1][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_pil", "image_pil"]
    assert parts[1]["image_pil"].mode == "RGB" and parts[1]["image_pil"].getpixel((0, 0)) == (255, 0, 0)
    assert parts[1]["image_pil"] is call.conversations[2][1]["content"][1]["image_pil"]  # decoded once a batch
    assert double.llm_kwargs[0]["limit_mm_per_prompt"] == {"image": 4}
    assert engine.image_identity() == {"images": "image_pil", "limit_images_per_prompt": 4}


def test_vllm_image_failures_stay_with_their_requests(monkeypatch):
    install_vllm_double(monkeypatch, describe)
    engine = make_engine(VllmEngineConfig(type="vllm", model="some/vlm", limit_images_per_prompt=1))
    red = encoded("red")
    unreadable, too_many, fine = engine.generate(
        [request(images=(b"GIF89a...",)), request(images=(red, red)), request(images=(red,))]
    )
    assert isinstance(unreadable, GenerationFailure) and unreadable.reason == "image_unreadable"
    assert isinstance(too_many, GenerationFailure) and "At most 1 image" in too_many.detail
    assert isinstance(fine, Generation) and fine.text.startswith("1 images")


def test_vllm_text_only_model_takes_no_images(monkeypatch):
    install_vllm_double(monkeypatch, describe, multimodal=False)
    engine = make_engine(VllmEngineConfig(type="vllm", model="some/llm"))
    assert engine.image_identity() is None
    (failed,) = engine.generate([request(images=(encoded("red"),))])
    assert isinstance(failed, GenerationFailure) and "multimodal processor" in failed.detail


# ---------------------------------------------------------------- transformers: a tiny VLM


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("judge-vlm") / "qwen2_vl")


def test_transformers_vlm_runs_images_through_its_processor(tiny_vlm):
    engine = make_engine(TransformersEngineConfig(type="transformers", model=str(tiny_vlm), device="cpu", batch_size=4))
    try:
        assert engine.identity()["vision"] is True and engine.image_identity() == {"images": "processor"}
        red, blue = encoded("red"), encoded("blue")
        requests = [request("Rate it."), request("Rate it.", (red,)), request("Rate it.", (red, blue))]
        requests.append(request("Rate it.", (blue,)))
        text, one, two, other = engine.generate(requests)
        rendered = engine.render(requests[2])
        alone = engine.generate([requests[1]])[0]
    finally:
        engine.close()
    assert all(isinstance(r, Generation) for r in (text, one, two, other, alone))
    tokens = FAMILIES["qwen2_vl"].image_tokens + 2  # the image's tokens between <|vision_start|> and <|vision_end|>
    assert one.prompt_tokens == text.prompt_tokens + tokens and two.prompt_tokens == text.prompt_tokens + 2 * tokens
    assert rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert rendered.index("Rate it.") < rendered.index("<|vision_start|>")  # the text, then the images
    assert one.text != other.text  # the pixels reach the model: another image, another (greedy) reply
    assert alone == one  # batching (left padding) leaves a reply unchanged


def test_transformers_text_only_model_takes_no_images(tmp_path_factory):
    model = shared_tiny_causal_lm(tmp_path_factory)
    engine = make_engine(TransformersEngineConfig(type="transformers", model=str(model), device="cpu"))
    try:
        assert engine.image_identity() is None and "vision" not in engine.identity()
        (failed, fine) = engine.generate([request(images=(encoded("red"),)), request()])
    finally:
        engine.close()
    assert isinstance(failed, GenerationFailure) and "text-only" in failed.detail
    assert isinstance(fine, Generation)
