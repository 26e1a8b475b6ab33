"""Every built-in recipe that keeps images guarantees they decode: a full decode of every frame, so truncated
files and broken later frames of an animated image are drops, never kept samples."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from curation.build.runner import build
from curation.recipe import ImageDecodeStep, load_recipe
from curation.recipe.loading import builtin_recipes
from curation.sample import Sample
from curation.steps.contract import StepContext
from curation.steps.image import ImageDecode
from schemas import SftRecord, Turn
from shards.reader import iter_dataset
from shards.verify import verify_dataset
from tests.helpers import png

MAKES_ITS_OWN_IMAGES = {"docmatix_generate", "pdf_to_transcription"}  # pages rendered with pdfium


def _apng(broken_frame: bool) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    data = bytearray(buf.getvalue())
    if broken_frame:  # damage the second frame's data: the first frame still loads
        at = data.find(b"fdAT") + 8
        data[at : at + 20] = bytes(b ^ 0x5A for b in data[at : at + 20])
    return bytes(data)


def _truncated_png() -> bytes:
    return png((64, 64), seed=3)[:-40]


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_builtin_recipe_that_keeps_images_decodes_them(name: str):
    recipe = load_recipe(name)
    if recipe.kind != "build" or recipe.output.kind == "pdf":
        return
    steps = {s.step for s in recipe.steps}
    assert "image_decode" in steps or steps & MAKES_ITS_OWN_IMAGES, f"{name} keeps images it never decodes"


@pytest.mark.parametrize(
    ("image", "verdict"),
    [(_apng(False), "kept"), (_apng(True), "image_corrupt"), (_truncated_png(), "image_corrupt"), (png(), "kept")],
    ids=["apng", "apng_broken_frame", "truncated_png", "png"],
)
def test_image_decode_decodes_every_frame(image: bytes, verdict: str):
    record = SftRecord(key="k", source="s", images=[image], turns=[Turn(user="q", assistant="a")])
    result = ImageDecode(ImageDecodeStep(step="image_decode"), StepContext("image_decode", Path(".")))(
        Sample(record, "o")
    )
    assert (result if isinstance(result, str) else "kept") == verdict


def test_llava665k_drops_images_that_do_not_decode(tmp_path: Path):
    images = {"good.png": png(), "truncated.png": _truncated_png(), "broken.png": _apng(True)}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    rows = [
        {"id": name.split(".")[0], "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A picture."}
        ]}
        for name in images
    ]  # fmt: skip
    (tmp_path / "llava_v1_5_mix665k.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    build(load_recipe("llava665k", [f"vars.llava={tmp_path}"]), out, progress=False)
    assert verify_dataset(out).ok
    assert [r.key for r in iter_dataset(out)] == ["llava665k-good"]
    dropped = json.loads((out / "dataset.json").read_text())["accounting"]["sources"]["llava665k"]["dropped"]
    assert dropped == {"image_corrupt": 2}
