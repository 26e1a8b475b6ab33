"""curation.dedup: perceptual hashes of real (Pillow-drawn) images, exact multi-index Hamming search against
brute force, greedy image and text deduplication semantics."""

from __future__ import annotations

import io
import random
import struct
import zlib

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from curation.dedup.hashing import HASH_METHODS, hamming, image_hash, image_hash_pil, to_signed, to_unsigned
from curation.dedup.index import MultiIndexHash, all_pairs_image_dedup, greedy_image_dedup
from curation.dedup.minhash import greedy_text_dedup, minhash_signature, shingles

N_DISTINCT = 100
N_PLANTED = 20  # originals that get transformed copies


def drawing(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A distinct RGB picture: a smooth random colour field, 4-8 filled shapes, a caption, pixel noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    gy, gx = (int(v) for v in rng.integers(2, 7, 2))
    field = rng.integers(0, 256, (gy, gx, 3), dtype=np.uint8)
    im = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 5, w // 2)), y0 + int(rng.integers(h // 5, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            draw.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(6, 16)))
    font = ImageFont.load_default(size=int(rng.integers(18, 36)))
    draw.text((int(rng.integers(0, w // 2)), int(rng.integers(0, h - 40))), f"sample {seed}", fill="white", font=font)
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-10, 11, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str = "PNG", **params) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def brighten(im: Image.Image, levels: int = 10) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + levels, 0, 255).astype(np.uint8))


TRANSFORMS = {
    "exact": lambda im: encode(im),
    "half": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "double": lambda im: encode(im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC)),
    "jpeg_q60": lambda im: encode(im, "JPEG", quality=60),
    "png_to_jpeg": lambda im: encode(Image.open(io.BytesIO(encode(im))), "JPEG"),
    "brighter": lambda im: encode(brighten(im)),
}


@pytest.fixture(scope="module")
def drawings() -> list[Image.Image]:
    return [drawing(seed) for seed in range(N_DISTINCT)]


@pytest.fixture(scope="module")
def pngs(drawings: list[Image.Image]) -> list[bytes]:
    return [encode(im) for im in drawings]


# --- hashing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", HASH_METHODS)
def test_hash_is_imagehash_bits_as_unsigned_int(method: str) -> None:
    im = drawing(7, size=(120, 90)).convert("L")  # small and L: no reduction, so exactly imagehash's bits
    ref = {"phash": imagehash.phash, "dhash": imagehash.dhash}[method](im)
    h = image_hash_pil(im, method)
    assert h == int(str(ref), 16)
    assert 0 <= h < 1 << 64
    assert image_hash(encode(im), method) == h


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown hash method"):
        image_hash(encode(drawing(0)), "ahash")


@pytest.mark.parametrize(
    "data",
    [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated_jpeg"],
    ids=["empty", "text", "png_magic_only", "truncated_jpeg"],
)
def test_undecodable_bytes_raise_value_error(data: bytes | str) -> None:
    if data == "truncated_jpeg":
        full = encode(drawing(1), "JPEG")
        data = full[: len(full) // 2]
    with pytest.raises(ValueError, match="cannot hash image"):
        image_hash(data)


def test_decompression_bomb_is_a_value_error() -> None:
    data = bytearray(encode(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", 20_000, 20_000)  # IHDR declares 400 MP (> 2 * Image.MAX_IMAGE_PIXELS)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(ValueError, match="too many pixels"):
        image_hash(bytes(data))


@pytest.mark.parametrize("method", HASH_METHODS)
def test_modes_are_converted_sensibly(method: str) -> None:
    im = drawing(3)
    gray = im.convert("L")
    rgb_h, gray_h = image_hash(encode(im), method), image_hash(encode(gray), method)
    rgba = im.copy()
    rgba.putalpha(255)
    assert image_hash(encode(rgba), method) == rgb_h
    half_transparent = im.copy()
    half_transparent.putalpha(Image.linear_gradient("L").resize(im.size))
    # alpha dropped like a loader's convert("RGB") (and shards.imageinfo.reencode) does
    assert image_hash(encode(half_transparent), method) == rgb_h
    la = gray.copy()
    la.putalpha(128)
    assert image_hash(encode(la), method) == gray_h
    palette = im.quantize(256)
    assert image_hash(encode(palette), method) == image_hash_pil(palette.convert("RGB"), method)
    assert hamming(image_hash(encode(palette), method), rgb_h) <= 4
    # 16-bit grayscale is scaled (>> 8), not clipped to white
    i16 = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    assert Image.open(io.BytesIO(encode(i16))).mode.startswith("I;16")
    assert image_hash(encode(i16), method) == gray_h
    assert image_hash_pil(i16.convert("I"), method) == gray_h
    assert image_hash_pil(gray.convert("F"), method) == gray_h
    assert image_hash(encode(im.convert("CMYK"), "TIFF"), method) == rgb_h
    assert hamming(image_hash(encode(im.convert("CMYK"), "JPEG", quality=90), method), rgb_h) <= 4
    assert hamming(image_hash(encode(im, "GIF"), method), rgb_h) <= 4
    assert image_hash(encode(im.convert("1")), method) == image_hash_pil(im.convert("1").convert("L"), method)


@pytest.mark.parametrize("method", HASH_METHODS)
def test_big_jpeg_reduced_decode_matches_full_decode(method: str) -> None:
    data = encode(drawing(5).resize((2400, 1800), Image.Resampling.BICUBIC), "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as full:
        ref = int(str({"phash": imagehash.phash, "dhash": imagehash.dhash}[method](full)), 16)
    assert hamming(image_hash(data, method), ref) <= 4
    assert hamming(image_hash(data, method), image_hash(encode(drawing(5)), method)) <= 4


def test_signed_round_trip() -> None:
    rng = np.random.default_rng(0)
    values = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, (1 << 64) - 1]
    values += [int(v) for v in rng.integers(0, 1 << 64, 200, dtype=np.uint64)]
    for v in values:
        s = to_signed(v)
        assert -(1 << 63) <= s < 1 << 63
        assert to_unsigned(s) == v
        assert to_unsigned(v) == v
        assert int(np.array([s], dtype=np.int64).view(np.uint64)[0]) == v  # int64 column bits == the hash
    assert to_signed(1 << 63) == -(1 << 63)
    assert to_signed((1 << 64) - 1) == -1
    assert to_signed(np.uint64((1 << 64) - 1)) == -1
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            to_signed(bad)
    for bad in (-(1 << 63) - 1, 1 << 64):
        with pytest.raises(ValueError):
            to_unsigned(bad)


def test_hamming_ints_and_arrays() -> None:
    a, b = (1 << 64) - 1, 0b1011
    assert hamming(a, b) == 61
    assert hamming(to_signed(a), b) == 61
    assert hamming(a, a) == 0
    arr = np.array([0, 1, (1 << 64) - 1], dtype=np.uint64)
    assert hamming(arr, 0).tolist() == [0, 1, 64]
    assert hamming(arr.view(np.int64), np.uint64(1)).tolist() == [1, 0, 63]
    assert hamming(arr[:, None], arr[None, :]).shape == (3, 3)


# --- image dedup on real images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", HASH_METHODS)
def test_distinct_drawings_are_far_apart_and_all_kept(method: str, pngs: list[bytes]) -> None:
    hashes = np.array([image_hash(p, method) for p in pngs], dtype=np.uint64)
    dist = hamming(hashes[:, None], hashes[None, :])
    np.fill_diagonal(dist, 64)
    assert dist.min() > 10
    samples = [(int(h),) for h in hashes]
    assert greedy_image_dedup(samples, 4) == [-1] * len(pngs)
    assert greedy_image_dedup(samples, 10) == [-1] * len(pngs)


@pytest.fixture(scope="module")
def planted(drawings: list[Image.Image], pngs: list[bytes]) -> tuple[list[tuple[int, str]], list[bytes]]:
    """Every distinct drawing, then (shuffled) each transformed copy of the first ``N_PLANTED``."""
    copies = [(i, name) for i in range(N_PLANTED) for name in TRANSFORMS]
    random.Random(0).shuffle(copies)
    return copies, list(pngs) + [TRANSFORMS[name](drawings[i]) for i, name in copies]


@pytest.mark.parametrize("method", HASH_METHODS)
def test_planted_copies_are_found(method: str, planted: tuple[list[tuple[int, str]], list[bytes]]) -> None:
    copies, data = planted
    samples = [(image_hash(d, method),) for d in data]
    result = greedy_image_dedup(samples, 4)
    assert result[:N_DISTINCT] == [-1] * N_DISTINCT
    found = {(i, name): result[N_DISTINCT + k] for k, (i, name) in enumerate(copies)}
    assert found == {key: key[0] for key in copies}
    assert all_pairs_image_dedup(samples, 4) == result


def test_multi_image_samples(drawings: list[Image.Image]) -> None:
    a, b, c = (image_hash(encode(drawings[i])) for i in (0, 1, 2))
    a2 = image_hash(TRANSFORMS["jpeg_q60"](drawings[0]))
    b2 = image_hash(TRANSFORMS["half"](drawings[1]))
    samples = [
        (a, b),  # 0 kept
        (a2, b2),  # 1 near copy of 0
        (a, c),  # 2 first image matches, second does not: kept
        (b, a),  # 3 same images, other order: kept
        (a,),  # 4 a prefix of 0 (other image count): kept
        (),  # 5 no images: kept
        (),  # 6 kept as well
        (a2,),  # 7 copy of 4
        (a2, c, b),  # 8 kept
        (a, c, b2),  # 9 copy of 8
    ]
    expected = [-1, 0, -1, -1, -1, -1, -1, 4, -1, 8]
    assert greedy_image_dedup(samples, 4) == expected
    assert all_pairs_image_dedup(samples, 4) == expected


def test_groups() -> None:
    samples = [(10,), (10,), (11,), (10,), (1 << 40,)]
    groups = ["train", "test", "train", "test", "train"]
    assert greedy_image_dedup(samples, 2, groups) == [-1, -1, 0, 1, -1]
    assert all_pairs_image_dedup(samples, 2, groups) == [-1, -1, 0, 1, -1]
    assert greedy_image_dedup(samples, 2) == [-1, 0, 0, 0, -1]
    with pytest.raises(ValueError, match="groups"):
        greedy_image_dedup(samples, 2, groups[:2])


def test_greedy_compares_with_kept_samples_only() -> None:
    a, b, c = 0, 0b1111, 0b1111_1111  # a~b (4), b~c (4), a !~ c (8)
    for dedup in (greedy_image_dedup, all_pairs_image_dedup):
        assert dedup([(a,), (b,), (c,)], 4) == [-1, 0, -1]
        assert dedup([(b,), (a,), (c,)], 4) == [-1, 0, 0]
        # the earliest kept match wins, not the closest
        assert dedup([(0,), (0b111,), (0b110,)], 2) == [-1, -1, 0]


def test_signed_hashes_accepted() -> None:
    h = (1 << 64) - 5
    assert greedy_image_dedup([(h,), (to_signed(h ^ 1),)], 1) == [-1, 0]
    assert all_pairs_image_dedup([(h,), (to_signed(h ^ 1),)], 1) == [-1, 0]


# --- multi-index hashing == brute force --------------------------------------------------------------------------


def _flip(h: int, k: int, rng: np.random.Generator) -> int:
    for bit in rng.choice(64, size=k, replace=False):
        h ^= 1 << int(bit)
    return h


def random_samples(rng: np.random.Generator, n: int, r: int, images: int = 1) -> list[tuple[int, ...]]:
    """Hashes with sparse bits (so chunks collide often and distances spread around ``r``), plus planted
    copies of earlier samples with 0..r+2 bits flipped per image."""
    samples: list[tuple[int, ...]] = []
    for _ in range(n):
        if samples and rng.random() < 0.4:
            src = samples[int(rng.integers(0, len(samples)))]
            samples.append(tuple(_flip(h, int(rng.integers(0, r + 3)), rng) for h in src))
        else:
            bits = rng.random((images, 64)) < rng.choice([0.1, 0.5])
            samples.append(tuple(int.from_bytes(np.packbits(row).tobytes(), "big") for row in bits))
    return samples


@pytest.mark.parametrize("r", range(17))
def test_multi_index_equals_brute_force(r: int) -> None:
    rng = np.random.default_rng(1000 + r)
    samples = random_samples(rng, 1500, r)
    greedy = greedy_image_dedup(samples, r)
    assert greedy == all_pairs_image_dedup(samples, r)
    assert 0 < sum(x >= 0 for x in greedy) < len(samples)  # both outcomes exercised

    multi = random_samples(rng, 400, r, images=3) + [()] * 3
    groups = [int(g) for g in rng.integers(0, 3, len(multi))]
    assert greedy_image_dedup(multi, r, groups) == all_pairs_image_dedup(multi, r, groups)

    # the index itself: every query against every indexed hash
    index = MultiIndexHash(r)
    flat = np.array([s[0] for s in samples[:800]], dtype=np.uint64)
    for i, h in enumerate(flat):
        index.add(i, int(h))
    assert len(index) == len(flat)
    for q in [s[0] for s in samples[800:1000]]:
        assert index.query(q) == np.flatnonzero(hamming(flat, np.uint64(q)) <= r).tolist()


def test_multi_index_edges() -> None:
    index = MultiIndexHash(3)
    assert index.query(123) == []
    index.add(5, 7)
    index.add(2, 7)  # same hash, another id
    index.add(9, (1 << 64) - 1)
    assert index.query(7 ^ 0b111) == [2, 5]
    assert index.query((1 << 64) - 1) == [9]
    assert len(index) == 3
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            index.query(bad)
    with pytest.raises(ValueError):
        MultiIndexHash(64)
    with pytest.raises(ValueError):
        MultiIndexHash(-1)
    small = MultiIndexHash(2, bits=16)
    small.add(0, 0xFFFF)
    assert small.query(0xFFFC) == [0]
    with pytest.raises(ValueError):
        small.add(1, 1 << 16)


# --- text dedup --------------------------------------------------------------------------------------------------

QA = (
    "Question: What is the man on the left holding in his right hand? "
    "Answer: He is holding a black umbrella and a paper bag from the bakery across the street."
)
OTHER = [
    "Question: How many dogs are playing in the park near the river? Answer: There are three dogs chasing a ball.",
    "Question: What does the sign above the door say? Answer: The sign says the shop is closed on Sundays.",
    "Question: Which animal is sleeping on the sofa in the living room? Answer: A grey cat is asleep there.",
    "Describe the image. A snowy mountain road at dawn with two hikers carrying orange backpacks uphill.",
    "Question: What colour is the bus? Answer: The bus is yellow with a blue stripe along its side.",
]


VOCABULARY = "red blue green small large old new wooden dog cat house car tree street city river mountain"


def test_shingles() -> None:
    assert shingles("", 3) == set()
    assert shingles("  ?! ", 3) == set()
    assert shingles("Hello, World", 3) == {b"hello world"}
    assert shingles("a b c d", 3) == {b"a b c", b"b c d"}
    assert shingles("A b C", 3) == shingles("a, B; c!", 3) == {b"a b c"}
    assert shingles("Über straße", 1) == {"über".encode(), "straße".encode()}
    with pytest.raises(ValueError):
        shingles("a b", 0)


def test_signature() -> None:
    sig = minhash_signature(QA)
    assert sig is not None
    assert sig.dtype == np.uint64
    assert sig.shape == (128,)
    assert np.array_equal(sig, minhash_signature(QA.upper()))
    assert minhash_signature(QA, num_perm=64).shape == (64,)
    assert not np.array_equal(sig, minhash_signature(QA, seed=2))
    assert minhash_signature("") is None
    assert minhash_signature(" ... ") is None


def test_text_near_duplicates() -> None:
    assert len(QA.split()) == 30
    one_word = QA.replace("umbrella", "parasol")
    case_punct = QA.upper().replace("?", " !").replace(".", "")
    texts = [QA, *OTHER, one_word, "", case_punct, OTHER[2], "", QA + " Thanks a lot for asking."]
    sigs = [minhash_signature(t) for t in texts]
    expected = [-1, -1, -1, -1, -1, -1, 0, -1, 0, 3, -1, 0]
    assert greedy_text_dedup(sigs, 0.7) == expected
    # groups: only compared within a group
    groups = ["a"] * 6 + ["b"] * 6
    assert greedy_text_dedup(sigs, 0.7, groups=groups) == [-1] * 6 + [-1, -1, 6, -1, -1, 6]
    assert greedy_text_dedup(sigs, 0.99) == [-1, -1, -1, -1, -1, -1, -1, -1, 0, 3, -1, -1]


def test_text_dedup_many_distinct_texts_kept() -> None:
    rng = random.Random(0)
    words = VOCABULARY.split()
    texts = [f"Question {i}: " + " ".join(rng.choice(words) for _ in range(30)) for i in range(300)]
    sigs = [minhash_signature(t) for t in texts]
    assert greedy_text_dedup(sigs, 0.7) == [-1] * len(texts)
    copies = [t.replace("Question", "question", 1) + " ok" for t in texts[:50]]
    assert greedy_text_dedup(sigs + [minhash_signature(t) for t in copies], 0.7) == [-1] * 300 + list(range(50))


def test_text_dedup_checks_signatures() -> None:
    with pytest.raises(ValueError, match="num_perm"):
        greedy_text_dedup([minhash_signature(QA, num_perm=64)], 0.7)
    with pytest.raises(ValueError, match="groups"):
        greedy_text_dedup([None, None], 0.7, groups=["a"])


@pytest.mark.parametrize("max_distance", [0, 1, 3, 4, 7, 12])
def test_vectorised_single_image_path_equals_brute_force_with_exact_copies_and_groups(max_distance):
    """Many exact copies, near copies and chains, in three groups: the vectorised single-image path (used by
    greedy_image_dedup) gives exactly the brute-force answer."""
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    hashes = []
    for _ in range(1500):
        h = int(base[rng.integers(0, len(base))])
        for _ in range(int(rng.integers(0, max_distance + 3))):  # some within range, some just beyond
            h ^= 1 << int(rng.integers(0, 64))
        hashes.append(h)
    samples = [(h,) for h in hashes]
    groups = [int(g) for g in rng.integers(0, 3, size=len(samples))]
    assert greedy_image_dedup(samples, max_distance, groups) == all_pairs_image_dedup(samples, max_distance, groups)
    assert greedy_image_dedup(samples, max_distance) == all_pairs_image_dedup(samples, max_distance)
