"""The output directory: its state for a recipe, what ``clear()`` may delete, the lock and the lifecycle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from curation.build.output_dir import CARD_NAME, LOCK, LOGS, PLAN, WORK, BuildState, OutputDir
from curation.errors import CurationError
from shards.manifest import MANIFEST_NAME, STATS_NAME, DatasetManifest

MINE, THEIRS = "a" * 64, "b" * 64


def write_plan(root: Path, sha: str = MINE, prefix: str = "ds") -> None:
    (root / WORK).mkdir(parents=True, exist_ok=True)
    (root / WORK / PLAN).write_text(json.dumps({"recipe_sha256": sha, "prefix": prefix}))


def write_manifest(root: Path, sha: str = MINE, name: str = "ds") -> None:
    root.mkdir(parents=True, exist_ok=True)
    DatasetManifest(
        name=name, kind="sft", tool_version="0", recipe={}, recipe_sha256=sha, shards=[], totals={"samples": 0}
    ).write(root)


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "out"


# -- state


def test_a_missing_or_empty_directory_is_fresh(root: Path):
    assert OutputDir(root).state(MINE, overwrite=False) == BuildState.FRESH
    root.mkdir()
    assert OutputDir(root).state(MINE, overwrite=False) == BuildState.FRESH
    touch(root / LOCK)  # a lock and run logs are not a build
    touch(root / LOGS / "build-1.json")
    assert OutputDir(root).state(MINE, overwrite=True) == BuildState.FRESH


def test_a_file_instead_of_a_directory_is_refused(root: Path):
    touch(root)
    with pytest.raises(CurationError, match="is a file, not a directory"):
        OutputDir(root).state(MINE, overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_file_is_refused_and_nothing_is_deleted(root: Path, overwrite: bool):
    touch(root / "notes.txt", "mine")
    before = names(root)
    with pytest.raises(CurationError, match="not empty and holds no build"):
        OutputDir(root).state(MINE, overwrite=overwrite)
    with pytest.raises(CurationError, match=re.escape("notes.txt")):
        OutputDir(root).clear()
    assert names(root) == before and (root / "notes.txt").read_text() == "mine"


def test_an_empty_work_dir_left_by_a_failed_start_is_cleared(root: Path):
    (root / WORK).mkdir(parents=True)
    assert OutputDir(root).state(MINE, overwrite=False) == BuildState.CLEAR


def test_an_unfinished_build_resumes_only_for_the_same_recipe(root: Path):
    write_plan(root, MINE)
    out = OutputDir(root)
    assert out.state(MINE, overwrite=False) == BuildState.RESUME
    assert out.state(MINE, overwrite=True) == BuildState.CLEAR
    with pytest.raises(CurationError, match="unfinished build of a different recipe"):
        out.state(THEIRS, overwrite=False)
    assert out.state(THEIRS, overwrite=True) == BuildState.CLEAR


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_an_unreadable_plan_counts_as_another_recipe(root: Path, text: str):
    touch(root / WORK / PLAN, text)
    out = OutputDir(root)
    assert out.recorded_plan() == {}
    with pytest.raises(CurationError, match="different recipe"):
        out.state(MINE, overwrite=False)
    assert out.state(MINE, overwrite=True) == BuildState.CLEAR


def test_recorded_plan_of_a_missing_plan_is_empty(root: Path):
    assert OutputDir(root).recorded_plan() == {}
    write_plan(root, MINE, "px")
    assert OutputDir(root).recorded_plan() == {"recipe_sha256": MINE, "prefix": "px"}


def test_a_finished_build_is_complete_for_its_recipe_only(root: Path):
    write_manifest(root, MINE)
    out = OutputDir(root)
    assert out.state(MINE, overwrite=False) == BuildState.COMPLETE
    assert out.state(MINE, overwrite=True) == BuildState.CLEAR
    with pytest.raises(CurationError, match=f"different recipe .*{THEIRS[:12]}"):
        out.state(THEIRS, overwrite=False)
    assert out.state(THEIRS, overwrite=True) == BuildState.CLEAR


def test_a_broken_manifest_needs_overwrite(root: Path):
    touch(root / MANIFEST_NAME, "{broken")
    out = OutputDir(root)
    with pytest.raises(CurationError, match="--overwrite"):
        out.state(MINE, overwrite=False)
    assert out.state(MINE, overwrite=True) == BuildState.CLEAR


# -- clear


def build_leftovers(root: Path) -> None:
    """Everything a finished build with prefix ``ds`` (and an unfinished one with ``px``) may leave."""
    write_manifest(root, MINE, "ds")
    write_plan(root, THEIRS, "px")
    for stem in ("ds-000000", "px-000001"):
        for ext in ("tar", "parquet", "stats.json"):
            touch(root / f"{stem}.{ext}")
    for ext in ("tar", "parquet", "stats.json"):
        touch(root / "rejects" / f"ds-rejects-000000.{ext}")
    touch(root / "rejects" / ".ds-rejects-000001.tar.123.tmp")
    touch(root / "subsets" / "small.wids.json")
    for name in ("ds.wids.json", "px.wids.json", STATS_NAME, CARD_NAME, "audit.html", "audit.md", ".x.tmp"):
        touch(root / name)


def test_clear_deletes_everything_the_toolkit_wrote(root: Path):
    build_leftovers(root)
    touch(root / LOGS / "build-1.json")
    touch(root / LOCK)
    OutputDir(root).clear()
    assert names(root) == {LOGS, f"{LOGS}/build-1.json", LOCK}


def test_clear_keeps_the_entries_named_in_keep(root: Path):
    build_leftovers(root)
    OutputDir(root).clear(keep=("rejects", "ds-000000.tar"))
    left = {n for n in names(root) if "/" not in n}
    assert left == {"rejects", "ds-000000.tar"}
    assert (root / "rejects" / "ds-rejects-000000.tar").is_file()


@pytest.mark.parametrize(
    "foreign",
    [
        "notes.txt",
        "other-000000.tar",  # a shard of a prefix not recorded here
        "ds-0000001.tar",  # seven digits: not a shard name
        "rejects/photo.jpg",
        "subsets/readme.txt",
        "mydir/",
    ],
)
def test_clear_refuses_and_deletes_nothing_when_anything_else_is_present(root: Path, foreign: str):
    build_leftovers(root)
    (root / foreign).mkdir(parents=True) if foreign.endswith("/") else touch(root / foreign)
    before = names(root)
    with pytest.raises(CurationError, match="did not write"):
        OutputDir(root).clear()
    assert names(root) == before


def test_a_symlink_is_never_ours(root: Path, tmp_path: Path):
    build_leftovers(root)
    target = touch(tmp_path / "elsewhere" / "ds-000009.tar", "precious")
    (root / "ds-000009.tar").symlink_to(target)
    before = names(root)
    with pytest.raises(CurationError, match=re.escape("ds-000009.tar")):
        OutputDir(root).clear()
    assert names(root) == before and target.read_text() == "precious"


def test_a_card_without_a_manifest_is_the_users(root: Path):
    write_plan(root, MINE, "ds")
    touch(root / "ds-000000.tar")
    touch(root / CARD_NAME, "my notes")
    with pytest.raises(CurationError, match=re.escape(CARD_NAME)):
        OutputDir(root).clear()
    assert (root / CARD_NAME).read_text() == "my notes" and (root / "ds-000000.tar").is_file()


# -- lock and lifecycle


def test_the_lock_is_exclusive_and_leaves_no_file(root: Path):
    root.mkdir()
    first, second = OutputDir(root), OutputDir(root)
    with first.lock():
        assert (root / LOCK).exists()
        with pytest.raises(CurationError, match="another build is running"), second.lock():
            pass
    assert not (root / LOCK).exists()
    with second.lock():  # free again
        pass
    assert not (root / LOCK).exists()


def test_start_on_clear_clears_then_records_the_plan(root: Path):
    build_leftovers(root)
    out = OutputDir(root)
    assert out.state(MINE, overwrite=True) == BuildState.CLEAR
    out.start(BuildState.CLEAR, {"recipe_sha256": MINE, "prefix": "new"})
    assert names(root) == {WORK, f"{WORK}/{PLAN}"}
    assert out.recorded_plan() == {"recipe_sha256": MINE, "prefix": "new"}


def test_start_on_resume_keeps_the_recorded_plan_and_removes_stale_tmp(root: Path):
    write_plan(root, MINE, "ds")
    touch(root / "ds-000000.tar")
    touch(root / ".ds-000001.tar.99.tmp")
    touch(root / "rejects" / ".ds-rejects-000000.tar.99.tmp")
    out = OutputDir(root)
    out.start(BuildState.RESUME, {"recipe_sha256": MINE, "prefix": "changed"})
    assert out.recorded_plan() == {"recipe_sha256": MINE, "prefix": "ds"}
    assert (root / "ds-000000.tar").is_file()
    assert not (root / ".ds-000001.tar.99.tmp").exists()
    assert list((root / "rejects").iterdir()) == []


def test_start_fresh_records_the_plan(root: Path):
    root.mkdir()
    out = OutputDir(root)
    out.start(BuildState.FRESH, {"recipe_sha256": MINE, "prefix": "ds"})
    assert json.loads((root / WORK / PLAN).read_text()) == {"recipe_sha256": MINE, "prefix": "ds"}


def test_finish_without_card_removes_the_work_dir(root: Path):
    write_plan(root, MINE)
    touch(root / WORK / "p00000" / "000000.tar")
    OutputDir(root).finish(card=False)
    assert not (root / WORK).exists() and not (root / CARD_NAME).exists()


def test_write_log_writes_json_under_logs(root: Path):
    root.mkdir()
    path = OutputDir(root).write_log({"state": "fresh", "seconds": 1.5})
    assert path.parent == root / LOGS and path.suffix == ".json"
    entry = json.loads(path.read_text())
    assert entry["state"] == "fresh" and entry["seconds"] == 1.5 and entry["finished_at"]
