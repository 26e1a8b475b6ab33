"""Tars that lie never crash anything: a ``shards`` source, a ``pdfa`` source, ``curate inspect`` and
``curate export`` on hostile tars (lying and sparse size headers, cut-off tars, links, devices, FIFOs and
directories as members, ``../`` and absolute names, duplicate and 250-character names, members that do not
decode, files that are not tars). The bar: a drop with a reason or a one-line error (exit 2, no traceback);
exact accounting (``verify`` passes, the audit's input equals the rows planned); nothing written outside
``--out``; no allocation the size of a lying header."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.report.audit import audit
from curation.sample import Drop
from curation.sources.pdfa import PdfaReader
from curation.sources.shards import ShardsReader
from shards.codec import encode_record
from shards.manifest import DatasetManifest, ShardInfo
from shards.verify import verify_dataset
from tests.builds import CLI
from tests.helpers import sft_record
from tests.pdfa_data import PdfPage, make_pdf, pdfa_json, text_lines

GIB3 = 3 << 30


# ---- raw tar members -----------------------------------------------------------------------------
@dataclass(frozen=True)
class M:
    """A member to write as is: any type, any name, any (claimed) size."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    claimed: int | None = None  # the size the header states, when it lies


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def raw(m: M) -> bytes:
    info = tarfile.TarInfo(m.name)
    info.type, info.linkname, info.mode = m.type, m.linkname, 0o644
    info.size = m.claimed if m.claimed is not None else (len(m.data) if m.type == tarfile.REGTYPE else 0)
    return info.tobuf(tarfile.PAX_FORMAT) + _pad(m.data)


def sparse(name: str, realsize: int = GIB3) -> bytes:
    """A GNU sparse member: one stored block standing for ``realsize`` bytes (mostly holes)."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, tarfile.BLOCKSIZE
    h = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    h[386:410] = b"%011o\0" % 0 + b"%011o\0" % tarfile.BLOCKSIZE  # the sparse map: data at 0, one block
    h[483:495] = b"%011o\0" % realsize
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + bytes(tarfile.BLOCKSIZE)


def pax_claiming(size: int = GIB3) -> bytes:
    """A PAX extended header whose own size claims ``size`` bytes."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    return info.tobuf(tarfile.USTAR_FORMAT) + _pad(b"20 path=evil.json\n")


def tar(*parts: bytes) -> bytes:
    return b"".join(parts) + bytes(2 * tarfile.BLOCKSIZE)


def members_of(sample: dict[str, bytes], key: str) -> list[M]:
    return [M(f"{key}.{ext}", sample[ext]) for ext in sorted(sample)]


def good(i: int, key: str | None = None) -> bytes:
    record = sft_record(i)
    return b"".join(raw(m) for m in members_of(encode_record(record), key or record.key))


def sft_json(**changes) -> bytes:
    body = {"kind": "sft", "source": "src", "meta": "{}", "turns": [{"user": "q", "assistant": "a"}], **changes}
    return json.dumps(body).encode()


def sample(key: str, json_member: bytes, images: bytes = msgpack.packb([])) -> bytes:
    return raw(M(f"{key}.images.mp", images)) + raw(M(f"{key}.json", json_member))


# ---- datasets, builds and the CLI ----------------------------------------------------------------
def dataset(directory: Path, data: bytes, samples: int, kind: str = "sft") -> Path:
    """A built dataset of one shard holding ``data``; its manifest's sha256 and size match that shard."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ds-000000.tar").write_bytes(data)
    shard = ShardInfo(
        name="ds-000000.tar",
        sidecar="ds-000000.parquet",
        stats="ds-000000.stats.json",
        sha256=hashlib.sha256(data).hexdigest(),
        samples=samples,
        bytes=len(data),
    )
    DatasetManifest(
        name="ds",
        kind=kind,
        tool_version="test",
        recipe={"name": "ds"},
        recipe_sha256="0" * 64,
        shards=[shard],
        totals={"samples": samples},
    ).write(directory)
    return directory


def tree(root: Path, skip: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*") if skip not in (p, *p.parents)}


def recipe_of(source: dict, kind: str) -> Any:
    return validate_recipe({"name": "again", "sources": [source], "output": {"kind": kind}})


def source_of(spec: dict, kind: str) -> Any:
    return recipe_of(spec, kind).sources[0]


def run_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: dict, kind: str) -> dict:
    """Build ``source`` into ``tmp_path/out`` (from ``tmp_path/cwd``); check verify, the plan-vs-audit
    accounting and that nothing appeared outside ``out``; the audit's row of the source."""
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recipe = recipe_of(source, kind)
    before = tree(tmp_path, out)
    result = build(recipe, out, workers=1, progress=False)
    assert tree(tmp_path, out) == before
    report = verify_dataset(out)
    assert report.ok, report.problems
    planned = json.loads((out / "stats.json").read_text())
    row = audit(out)["sources"][source["name"]]
    assert row["input"] == sum(p["rows"] for p in planned["partitions"])
    assert row["input"] == row["samples"] + sum(row["dropped"].values())
    assert result.manifest.totals["samples"] == row["samples"]
    return row


def curate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0]


# ---- the shards source ---------------------------------------------------------------------------
TWO = (good(1), good(2))


def link(kind: bytes, target: str = "") -> bytes:
    return raw(M("x.json", type=kind, linkname=target))


# A member that is not a regular file, between two good samples: never read or followed, its sample dropped.
NOT_REGULAR = {
    "symlink": link(tarfile.SYMTYPE, "/etc/passwd"),
    "hardlink": link(tarfile.LNKTYPE, "sft_0001.json"),
    "fifo": link(tarfile.FIFOTYPE),
    "char_device": link(tarfile.CHRTYPE),
    "block_device": link(tarfile.BLKTYPE),
    "directory": link(tarfile.DIRTYPE),
    "sparse_3gib": sparse("x.json"),
}


@pytest.mark.parametrize("case", sorted(NOT_REGULAR))
def test_a_member_that_is_no_regular_file_drops_its_sample(tmp_path, monkeypatch, case):
    src = dataset(tmp_path / "src", tar(TWO[0], NOT_REGULAR[case], TWO[1]), 3)
    row = run_build(tmp_path, monkeypatch, {"name": "prev", "reader": "shards", "path": str(src)}, "sft")
    assert (row["input"], row["samples"], row["dropped"]) == (3, 2, {"not_a_regular_file": 1})


# A sample that does not decode (or has a key that is no key), before a good one.
UNDECODABLE = {
    "dotdot_name": good(1, "../../escaped"),
    "absolute_name": good(1, "/tmp/escaped"),
    "name_250": good(1, "k" * 250),
    "bad_msgpack": sample("a", sft_json(), b"\xc1"),
    "msgpack_extra_data": sample("a", sft_json(), msgpack.packb([]) + b"\x01"),
    "msgpack_not_a_list": sample("a", sft_json(), msgpack.packb(7)),
    "msgpack_strings": sample("a", sft_json(), msgpack.packb(["not bytes"])),
    "bad_json": sample("a", b"{not json"),
    "json_not_an_object": sample("a", b"[1, 2]"),
    "json_missing_field": sample("a", b'{"kind": "sft"}'),
    "json_wrong_types": sample("a", sft_json(turns=[{"user": 5, "assistant": None}])),
    "json_bad_utf8": sample("a", b'{"kind": "sft", "source": "\xff\xfe"}'),
    "json_lone_surrogate": sample("a", sft_json(source="\ud800")),
    "meta_not_json": sample("a", sft_json(meta="{nope")),
    "unknown_kind": sample("a", sft_json(kind="video")),
    "no_json_member": raw(M("a.images.mp", msgpack.packb([]))),
}


@pytest.mark.parametrize("case", sorted(UNDECODABLE))
def test_a_sample_that_does_not_decode_is_dropped_and_the_next_is_read(tmp_path, monkeypatch, case):
    src = dataset(tmp_path / "src", tar(UNDECODABLE[case], TWO[1]), 2)
    row = run_build(tmp_path, monkeypatch, {"name": "prev", "reader": "shards", "path": str(src)}, "sft")
    assert (row["input"], row["samples"], row["dropped"]) == (2, 1, {"undecodable_sample": 1})


CUT = tar(TWO[0], TWO[1])[: len(TWO[0]) + 700]
# name: (shard bytes, samples its manifest plans, samples kept, drops)
DAMAGED = {
    "size_claims_3gib": (tar(TWO[0], raw(M("z.json", b"{}", claimed=GIB3))), 2, 1, {"shard_damaged": 1}),
    "pax_header_claims_3gib": (tar(pax_claiming(), TWO[0]), 1, 0, {"shard_damaged": 1}),
    "truncated": (CUT, 2, 1, {"shard_damaged": 1}),
    "fewer_samples_than_planned": (tar(TWO[0]), 3, 1, {"shard_damaged": 2}),
    "more_samples_than_planned": (tar(*TWO), 1, 1, {}),
    "duplicate_names": (tar(TWO[0], *TWO), 3, 2, {"duplicate_key": 1}),
    "empty_file": (b"", 2, 0, {"shard_damaged": 2}),
    "zeros": (bytes(10240), 2, 0, {"shard_damaged": 2}),
    "not_a_tar": (b"hello, I am not a tar\n" * 100, 2, 0, {"shard_damaged": 2}),
    "gzip": (gzip.compress(tar(*TWO)), 2, 0, {"shard_damaged": 2}),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_shard_gives_what_it_holds_and_drops_for_the_rest(tmp_path, monkeypatch, case):
    data, planned, kept, drops = DAMAGED[case]
    src = dataset(tmp_path / "src", data, planned)
    row = run_build(tmp_path, monkeypatch, {"name": "prev", "reader": "shards", "path": str(src)}, "sft")
    assert (row["input"], row["samples"], row["dropped"]) == (planned, kept, drops)


@pytest.mark.timeout(60)
def test_a_shard_that_is_a_fifo_is_damage_not_a_hang(tmp_path, monkeypatch):
    src = dataset(tmp_path / "src", tar(*TWO), 2)
    (src / "ds-000000.tar").unlink()
    os.mkfifo(src / "ds-000000.tar")
    assert_one_line_error(curate("inspect", str(src), cwd=tmp_path), "not a regular file")
    row = run_build(tmp_path, monkeypatch, {"name": "prev", "reader": "shards", "path": str(src)}, "sft")
    assert (row["input"], row["samples"], row["dropped"]) == (2, 0, {"shard_damaged": 2})


def test_a_member_over_the_cap_is_dropped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr("curation.sources.shards.MAX_MEMBER_BYTES", 1000)
    big = sample("big", sft_json(), msgpack.packb([b"x" * 5000]))
    src = dataset(tmp_path / "src", tar(TWO[0], big, TWO[1]), 3)
    row = run_build(tmp_path, monkeypatch, {"name": "prev", "reader": "shards", "path": str(src)}, "sft")
    assert (row["samples"], row["dropped"]) == (2, {"member_too_large": 1})


def test_a_manifest_naming_files_outside_its_directory_is_a_user_error(tmp_path):
    src = dataset(tmp_path / "src", tar(TWO[0]), 1)
    doc = json.loads((src / "dataset.json").read_text())
    doc["shards"][0]["name"] = "../../etc/passwd"
    (src / "dataset.json").write_text(json.dumps(doc))
    res = curate("inspect", str(src), cwd=tmp_path)
    assert_one_line_error(res, "is not a relative path inside the dataset directory")


LYING = {"size_claims_3gib": tar(raw(M("a.json", b"{}", claimed=GIB3))), "sparse_3gib": tar(sparse("a.json"))}


def peak_of(fn: Callable[[], list]) -> tuple[list, int]:
    """What ``fn`` returns, and the most memory Python held while it ran."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("case", sorted(LYING))
def test_lying_sizes_allocate_nothing_like_them(tmp_path, case):
    src = dataset(tmp_path / "src", LYING[case], 1)
    reader = ShardsReader(source_of({"name": "prev", "reader": "shards", "path": str(src)}, "sft"))
    items, peak = peak_of(lambda: [i for p in reader.plan() for i in reader.read(p)])
    assert [type(i) for i in items] == [Drop] and peak < 16 << 20


# ---- the pdfa source -----------------------------------------------------------------------------
PDF = make_pdf([PdfPage(text_lines("p", 2))])
OCR = pdfa_json([text_lines("p", 2)])


def doc(key: str, pdf: bytes = PDF, ocr: bytes = OCR) -> bytes:
    return raw(M(f"{key}.json", ocr)) + raw(M(f"{key}.pdf", pdf))


def pdfa_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *tars: bytes) -> dict:
    folder = tmp_path / "tars"
    folder.mkdir()
    for i, data in enumerate(tars):
        (folder / f"docs-{i:04d}.tar").write_bytes(data)
    return run_build(tmp_path, monkeypatch, {"name": "pdfa", "reader": "pdfa", "path": str(folder)}, "pdf")


# The PDF member of the middle document is no regular file: it belongs to no sample and is never read.
ODD_PDF = {
    "symlink": raw(M("odd.pdf", type=tarfile.SYMTYPE, linkname="/etc/passwd")),
    "hardlink": raw(M("odd.pdf", type=tarfile.LNKTYPE, linkname="a.pdf")),
    "fifo": raw(M("odd.pdf", type=tarfile.FIFOTYPE)),
    "char_device": raw(M("odd.pdf", type=tarfile.CHRTYPE)),
    "block_device": raw(M("odd.pdf", type=tarfile.BLKTYPE)),
    "directory": raw(M("odd.pdf", type=tarfile.DIRTYPE)),
    "sparse_3gib": sparse("odd.pdf"),
}


@pytest.mark.parametrize("case", sorted(ODD_PDF))
def test_a_pdf_member_that_is_no_regular_file_is_missing(tmp_path, monkeypatch, case):
    odd = raw(M("odd.json", OCR)) + ODD_PDF[case]
    row = pdfa_build(tmp_path, monkeypatch, tar(doc("a"), odd, doc("b")))
    assert (row["input"], row["samples"], row["dropped"]) == (3, 2, {"missing_member:pdf": 1})


LYING_PDF = raw(M("z.json", OCR)) + raw(M("z.pdf", PDF, claimed=GIB3))
# name: (tars, documents kept, drops); every document the plan counts is kept or dropped
PDFA_CASES = {
    "dotdot_name": ((tar(doc("a"), doc("../../escaped"), doc("b")),), 3, {}),
    "absolute_name": ((tar(doc("a"), doc("/tmp/escaped"), doc("b")),), 3, {}),
    "name_250": ((tar(doc("a"), doc("k" * 250), doc("b")),), 3, {}),
    "duplicate_names": ((tar(doc("a"), doc("a"), doc("b")),), 2, {"duplicate_key": 1}),
    "bad_json": ((tar(doc("a"), doc("odd", ocr=b"{nope")),), 1, {"invalid_ocr_json": 1}),
    "bad_utf8_json": ((tar(doc("a"), doc("odd", ocr=b'{"pages": ["\xff"]}')),), 1, {"invalid_ocr_json": 1}),
    "size_claims_3gib": ((tar(doc("a"), doc("b"), LYING_PDF),), 2, {"shard_damaged": 1}),
    "truncated": ((tar(doc("a"), doc("b"), doc("c"))[: len(doc("a")) * 2 + 700],), 2, {"shard_damaged": 1}),
    "zeros_beside_a_good_tar": ((bytes(10240), tar(doc("g"))), 1, {}),
}


@pytest.mark.parametrize("case", sorted(PDFA_CASES))
def test_a_hostile_pdfa_tar_is_drops_with_reasons(tmp_path, monkeypatch, case):
    tars, kept, drops = PDFA_CASES[case]
    row = pdfa_build(tmp_path, monkeypatch, *tars)
    assert (row["samples"], row["dropped"]) == (kept, drops)


def test_a_pdf_over_the_cap_is_dropped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr("curation.sources.pdfa.MAX_MEMBER_BYTES", len(PDF) - 1)
    row = pdfa_build(tmp_path, monkeypatch, tar(doc("a"), doc("b")))
    assert (row["samples"], row["dropped"]) == (0, {"member_too_large": 2})


SPARSE_PDF = raw(M("odd.json", OCR)) + sparse("odd.pdf")
PDFA_LYING = {
    "pax_header_claims_3gib": (tar(doc("a"), doc("b"), pax_claiming()), ["kept", "shard_damaged"]),
    "sparse_3gib": (tar(doc("a"), SPARSE_PDF, doc("b")), ["kept", "missing_member:pdf", "kept"]),
}


@pytest.mark.parametrize("case", sorted(PDFA_LYING))
def test_a_pdfa_tar_claiming_3gib_allocates_nothing_like_it(tmp_path, case):
    data, outcomes = PDFA_LYING[case]
    (tmp_path / "docs.tar").write_bytes(data)
    reader = PdfaReader(source_of({"name": "pdfa", "reader": "pdfa", "path": str(tmp_path / "docs.tar")}, "pdf"))
    items, peak = peak_of(lambda: [i for p in reader.plan() for i in reader.read(p)])
    assert [getattr(i, "reason", "kept") for i in items] == outcomes and peak < 16 << 20


@pytest.mark.parametrize(
    "content",
    [b"", b"not a tar at all\n" * 50, gzip.compress(tar(doc("a"))), pax_claiming()],
    ids=["empty", "text", "gzip", "pax_header_claims_3gib"],
)
def test_a_pdfa_file_that_is_no_tar_is_a_one_line_error(tmp_path, content):
    tars = tmp_path / "tars"
    tars.mkdir()
    (tars / "docs-0000.tar").write_bytes(content)
    recipe = {
        "name": "p",
        "sources": [{"name": "pdfa", "reader": "pdfa", "path": str(tars)}],
        "output": {"kind": "pdf"},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = curate("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(res, "docs-0000.tar is not a readable tar file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "tars"]


# ---- inspect and export --------------------------------------------------------------------------
INSPECT_EXPORT = {
    "bad_msgpack": (lambda: tar(TWO[0], sample("sft_bad", sft_json(), b"\xc1"), TWO[1]), "does not decode"),
    "symlink": (lambda: tar(TWO[0], raw(M("x.json", type=tarfile.SYMTYPE, linkname="/etc/passwd"))), "symlink"),
    "truncated": (lambda: tar(TWO[0], TWO[1])[: len(TWO[0]) + 700], "damaged tar after 1 samples"),
    "size_claims_3gib": (lambda: tar(TWO[0], raw(M("z.json", b"{}", claimed=GIB3))), "damaged tar after 1 samples"),
    "pair_in_an_sft_dataset": (lambda: tar(TWO[0], sample("p", sft_json(kind="pair"))), "does not decode"),
}


@pytest.mark.parametrize("case", sorted(INSPECT_EXPORT))
def test_inspect_shows_what_it_can_then_one_line(tmp_path, case):
    make, needle = INSPECT_EXPORT[case]
    src = dataset(tmp_path / "src", make(), 3)
    res = curate("inspect", str(src), "-n", "5", cwd=tmp_path)
    assert_one_line_error(res, needle.replace("does not decode", "cannot be shown"), "curate verify")
    assert "sft_0001" in res.stdout  # the sample before the damage was shown


@pytest.mark.parametrize("case", sorted(INSPECT_EXPORT))
def test_export_stops_with_one_line_and_leaves_out_as_it_was(tmp_path, case):
    make, needle = INSPECT_EXPORT[case]
    src = dataset(tmp_path / "src", make(), 3)
    res = curate("export", str(src), "--format", "llava", "--out", str(tmp_path / "llava"), cwd=tmp_path)
    assert_one_line_error(res, needle, "export stopped after 1 records")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_inspect_shows_markup_and_escape_sequences_as_text(tmp_path):
    body = sft_json(turns=[{"user": "[/red] [bold]not markup", "assistant": "\x1b[31mnot red\x1b[0m"}])
    src = dataset(tmp_path / "src", tar(sample("a", body)), 1)
    res = curate("inspect", str(src), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "[/red] [bold]not markup" in res.stdout and "\\x1b[31mnot red" in res.stdout
    assert "\x1b" not in res.stdout
