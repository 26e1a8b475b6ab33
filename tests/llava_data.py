"""LLaVA-style inputs in their real layouts: a LLaVA-1.5 665K-like mix (its six image roots), a ShareGPT4V-like
file (its extra roots), OpenHermes-style and chat ``messages`` JSON lines, and a MetaMathQA-like JSON list."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

LLAVA_ROOTS = ["coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K", "vg/VG_100K_2"]
SHAREGPT4V_ROOTS = [
    "sam/images",
    "llava/llava_pretrain/images/00013",
    "share_textvqa/images",
    "web-celebrity/images",
    "web-landmark/images",
    "wikiart/images",
]


def draw_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small drawing saved as JPEG or PNG (by the file's suffix); returns the bytes written."""
    im = Image.new("RGB", size, (seed * 53 % 256, seed * 97 % 256, 120))
    draw = ImageDraw.Draw(im)
    draw.rectangle((2, 2, 2 + seed % 15, 12), fill=(255, 255, 255))
    draw.line((0, size[1] - 1, size[0] - 1, seed % size[1]), fill=(0, 0, 0), width=2)
    out = io.BytesIO()
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    im.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())
    return out.getvalue()


def human(text: str) -> dict[str, str]:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict[str, str]:
    return {"from": "gpt", "value": text}


@dataclass
class Expected:
    """What a build of one source must produce."""

    input: int
    dropped: dict[str, int]
    keys: list[str]  # kept samples, in input order
    source_ids: dict[str, Any] = field(default_factory=dict)  # key -> meta["source_id"] (the input id), every keyed one
    text_only: int = 0
    images: int = 0
    turns: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # key -> turns, for a few samples
    system: dict[str, str] = field(default_factory=dict)  # key -> system prompt

    @property
    def output(self) -> int:
        return len(self.keys)


@dataclass
class LlavaTree:
    image_root: Path
    llava665k: Path
    sharegpt4v: Path
    text_dir: Path  # OpenHermes-style + chat messages JSON lines
    metamath: Path
    expected: dict[str, Expected]
    image_bytes: dict[str, bytes]  # relative path -> bytes on disk


HAIKU = "Crisp leaves drift and fall,\nGolden light on quiet paths,\nThe year exhales slow."


def llava665k_records() -> list[dict[str, Any]]:
    coco, gqa, ocr, textvqa = LLAVA_ROOTS[:4]
    return [
        {
            "id": "000000033471",
            "image": f"{coco}/000000033471.jpg",
            "conversations": [
                human("<image>\nWhat are the colors of the bus in the image?"),
                gpt("The bus in the image is white and red."),
                human("What feature can be seen on the back of the bus?"),
                gpt("The back of the bus features an advertisement."),
                human("Is the bus driving down the street or pulled off to the side?"),
                gpt("The bus is driving down the street, which is crowded with people and other vehicles."),
            ],
        },
        {
            "id": "000000052846",
            "image": f"{coco}/000000052846.jpg",
            "conversations": [
                human("Where is the cat positioned in the image?\n<image>"),
                gpt("The cat is positioned on top of the back of the couch in the living room."),
            ],
        },
        {
            "id": "2354786",
            "image": f"{gqa}/2354786.jpg",
            "conversations": [
                human("<image>\nIs the sky dark?\nAnswer the question using a single word or phrase."),
                gpt("Yes"),
                human("What is on the white wall?"),
                gpt("Pipe"),
            ],
        },
        {
            "id": "B00005R8BC",
            "image": f"{ocr}/B00005R8BC.jpg",
            "conversations": [
                human("<image>\nWho wrote this book?\nAnswer the question using a single word or phrase."),
                gpt("Donna Kooler"),
                human("What is the genre of this book?"),
                gpt("Crafts, Hobbies & Home"),
                human("Is this a financial book?"),
                gpt("No"),
            ],
        },
        {  # its image is missing on disk, as some OCR-VQA images are
            "id": "0439023521",
            "image": f"{ocr}/0439023521.jpg",
            "conversations": [human("<image>\nWho is the author of this book?"), gpt("Suzanne Collins")],
        },
        {
            "id": "e5d1a1c3b2f5a4e6",
            "image": f"{textvqa}/e5d1a1c3b2f5a4e6.jpg",
            "conversations": [
                human("What is the brand of this camera?\nReference OCR token: dakota, digital\n<image>"),
                gpt("Dakota"),
            ],
        },
        {
            "id": "2376521",
            "image": "vg/VG_100K/2376521.jpg",
            "conversations": [
                human("<image>\nProvide a one-sentence caption for the provided image."),
                gpt("A man is riding a bike down the road."),
            ],
        },
        {
            "id": "2412345",
            "image": "vg/VG_100K_2/2412345.png",
            "conversations": [
                human(
                    "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: a kite."
                ),
                gpt("[0.12, 0.34, 0.56, 0.78]"),
            ],
        },
        {  # text-only ShareGPT conversation with an int id
            "id": 12345,
            "model": "",
            "conversations": [
                human("Write a haiku about autumn."),
                gpt(HAIKU),
            ],
        },
        {
            "id": "i6IyJda_0",
            "model": "",
            "conversations": [
                human("How do I reverse a list in Python?"),
                gpt("Use `my_list.reverse()` in place, or `my_list[::-1]` for a reversed copy."),
                human("And a string?"),
                gpt('Strings are immutable, so use slicing: `"abc"[::-1]`.'),
            ],
        },
        {  # malformed: starts with the assistant
            "id": "bad_start_0",
            "model": "",
            "conversations": [gpt("Hello! How can I help?"), human("Tell me a joke.")],
        },
        {  # an id that is not a valid key: "llava665k-<id>" is sanitized; the input id is kept in meta.source_id
            "id": "textvqa/0054c91397f2fe05.1",
            "image": f"{textvqa}/0054c91397f2fe05.jpg",
            "conversations": [human("<image>\nwhat number is on the player's jersey?"), gpt("22")],
        },
        {  # two images (LLaVA-OneVision style): two tags
            "id": "multi_0001",
            "image": [f"{coco}/000000033471.jpg", f"{gqa}/2354786.jpg"],
            "conversations": [
                human("<image>\n<image>\nWhat do these two pictures have in common?"),
                gpt("Both show a street scene."),
            ],
        },
    ]


def sharegpt4v_records() -> list[dict[str, Any]]:
    paths = [
        ("sa_1234", "sam/images/sa_1234.jpg", "A busy café terrace in Paris — «Café de Flore» — with people sitting."),
        ("000133588", "llava/llava_pretrain/images/00013/000133588.jpg", "A plate of sushi: 寿司 with wasabi."),
        ("0a1b2c3d", "share_textvqa/images/0a1b2c3d.jpg", "A street sign reading 'Main St'."),
        ("Tom_Hanks", "web-celebrity/images/Tom_Hanks.jpg", "A portrait of the actor Tom Hanks smiling."),
        ("Eiffel_Tower", "web-landmark/images/Eiffel_Tower.jpg", "The Eiffel Tower at dusk, lit in gold."),
        ("starry-night", "wikiart/images/vincent-van-gogh_the-starry-night.jpg", "Swirling blue night sky."),
    ]
    return [
        {
            "id": key,
            "image": path,
            "conversations": [human("<image>\nWhat do you see happening in this image?"), gpt(c)],
        }
        for key, path, c in paths
    ]


SYSTEM = "You are an AI assistant. You will be given a task. You must generate a detailed and long answer."


def openhermes_lines() -> list[str]:
    def turn(role: str, value: str, weight: float | None) -> dict[str, Any]:
        return {"from": role, "value": value, "weight": weight}

    rows = [
        {
            "conversations": [
                turn("system", SYSTEM, None),
                turn("human", "Translate 'good morning' into German.", None),
                turn("gpt", "'Good morning' in German is 'Guten Morgen'.", 1.0),
            ],
            "source": "airoboros2.2",
            "category": "orca",
            "id": None,
        },
        {
            "conversations": [
                turn("human", "What is 17 * 23?", None),
                turn("gpt", "17 * 23 = 391.", 1.0),
            ],
            "source": "CamelAI",
            "id": "a4f0c2e8-2b36-4f0b-9f5e-3d9c0b1e2f11",
        },
        {  # malformed: two user turns in a row
            "conversations": [
                turn("human", "Hi", None),
                turn("human", "Are you there?", None),
                turn("gpt", "Yes.", 1.0),
            ],
            "source": "CamelAI",
            "id": "dup-user-1",
        },
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(2, '{"conversations": [{"from": "human", "value": "cut off')  # a truncated line: invalid_json
    return lines


def chat_lines() -> list[str]:
    rows = [
        {
            "prompt_id": "p1",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ],
        },
        {
            "prompt_id": "p2",
            "messages": [
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "7."},
                {"role": "user", "content": "And an even one?"},
            ],
        },  # malformed: the last user turn has no answer
    ]
    return [json.dumps(r) for r in rows]


def metamath_records() -> list[dict[str, Any]]:
    return [
        {
            "query": "What is the sum of 12 and 30?",
            "response": "12 + 30 = 42.\nThe answer is: 42",
            "type": "GSM_Rephrased",
            "original_question": "Add 12 and 30.",
        },
        {
            "query": "If x + 3 = 10, what is x?",
            "response": "x = 10 - 3 = 7.\nThe answer is: 7",
            "type": "MATH_AnsAug",
            "original_question": "Solve x + 3 = 10.",
        },
        {"query": "A question without a response", "response": None, "type": "MATH_SV"},  # malformed
    ]


def make_llava_tree(root: Path) -> LlavaTree:
    """Write all inputs under ``root``; returns their paths and what a build must produce from them."""
    image_root = root / "images"
    image_bytes: dict[str, bytes] = {}
    llava = llava665k_records()
    sharegpt = sharegpt4v_records()
    refs = sorted(
        {
            r
            for rec in llava + sharegpt
            for r in ([rec["image"]] if isinstance(rec.get("image"), str) else rec.get("image", []))
        }
    )
    missing = "ocr_vqa/images/0439023521.jpg"
    for seed, ref in enumerate(refs):
        if ref != missing:
            image_bytes[ref] = draw_image(image_root / ref, seed, (32 + seed, 24 + 2 * seed))
    for sub in LLAVA_ROOTS + SHAREGPT4V_ROOTS:
        (image_root / sub).mkdir(parents=True, exist_ok=True)

    llava_path = root / "llava_v1_5_mix665k.json"
    llava_path.write_text(json.dumps(llava, indent=2, ensure_ascii=False))  # the released file is indented
    sharegpt_path = root / "sharegpt4v_instruct_gpt4-vision_cap100k.json"
    sharegpt_path.write_text(json.dumps(sharegpt, ensure_ascii=False))  # one line
    text_dir = root / "text"
    text_dir.mkdir()
    (text_dir / "openhermes2_5.jsonl").write_text("\n".join(openhermes_lines()) + "\n\n")  # a trailing blank line
    (text_dir / "ultrachat.jsonl").write_text("\n".join(chat_lines()) + "\n")
    metamath_path = root / "MetaMathQA-395K.json"
    metamath_path.write_text(json.dumps(metamath_records(), indent=4))

    # Records with an id get the key "<source name>-<id>" (sanitized); the rest the default key. The expected keys
    # below are for the source names of tests/integration/test_llava_build.py (the keys of ``expected``).
    raw = "llava665k-textvqa/0054c91397f2fe05.1"
    sanitized = "llava665k-textvqa_0054c91397f2fe05_1-" + hashlib.sha1(raw.encode()).hexdigest()[:12]
    llava_ids: list[Any] = [
        "000000033471",
        "000000052846",
        "2354786",
        "B00005R8BC",
        "e5d1a1c3b2f5a4e6",
        "2376521",
        "2412345",
        12345,
        "i6IyJda_0",
        "textvqa/0054c91397f2fe05.1",
        "multi_0001",
    ]
    llava_keys = [f"llava665k-{i}" for i in llava_ids[:9]] + [sanitized, "llava665k-multi_0001"]
    openhermes_id = "a4f0c2e8-2b36-4f0b-9f5e-3d9c0b1e2f11"
    expected = {
        "llava665k": Expected(
            input=13,
            dropped={"missing_image_file": 1, "malformed_conversation": 1},
            keys=llava_keys,
            source_ids=dict(zip(llava_keys, llava_ids, strict=True)),
            text_only=2,
            images=10,
            turns={
                "llava665k-000000052846": [
                    {
                        "user": "Where is the cat positioned in the image?",
                        "assistant": "The cat is positioned on top of the back of the couch in the living room.",
                    }
                ],
                "llava665k-e5d1a1c3b2f5a4e6": [
                    {
                        "user": "What is the brand of this camera?\nReference OCR token: dakota, digital",
                        "assistant": "Dakota",
                    }
                ],
                "llava665k-multi_0001": [
                    {"user": "What do these two pictures have in common?", "assistant": "Both show a street scene."}
                ],
                "llava665k-12345": [
                    {
                        "user": "Write a haiku about autumn.",
                        "assistant": HAIKU,
                    }
                ],
            },
        ),
        "sharegpt4v": Expected(
            input=6,
            dropped={},
            keys=[f"sharegpt4v-{r['id']}" for r in sharegpt],
            source_ids={f"sharegpt4v-{r['id']}": r["id"] for r in sharegpt},
            images=6,
        ),
        "text": Expected(
            input=6,
            dropped={"invalid_json": 1, "malformed_conversation": 2},
            keys=[
                "text-openhermes2_5-0000-000000000",
                f"text-{openhermes_id}",
                "text-ultrachat-0001-000000000",  # chat lines have a prompt_id, no id: default keys
            ],
            source_ids={f"text-{openhermes_id}": openhermes_id},
            text_only=3,
            system={"text-openhermes2_5-0000-000000000": SYSTEM, "text-ultrachat-0001-000000000": "Answer briefly."},
        ),
        "metamath": Expected(
            input=3,
            dropped={"malformed_conversation": 1},
            keys=["metamath-MetaMathQA-395K-0000-000000000", "metamath-MetaMathQA-395K-0000-000000001"],
            text_only=2,
            turns={
                "metamath-MetaMathQA-395K-0000-000000001": [
                    {"user": "If x + 3 = 10, what is x?", "assistant": "x = 10 - 3 = 7.\nThe answer is: 7"}
                ]
            },
        ),
    }
    return LlavaTree(image_root, llava_path, sharegpt_path, text_dir, metamath_path, expected, image_bytes)
