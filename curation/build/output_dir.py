"""The output directory of a build or a mixture: its layout, its state, its lock, what of it this toolkit owns.

One lifecycle for both: ``state()`` (changes nothing) -> ``lock()`` -> ``start()`` (clears an earlier build,
records the plan) -> the work -> ``finish()`` (card, work directory removed, run log).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from shards.atomic import atomic_write_json, remove_stale_tmp
from shards.manifest import MANIFEST_NAME, STATS_NAME, read_manifest

WORK = "_work"
LOGS = "_logs"
LOCK = ".lock"
DATASETS = "_datasets"  # a mixture's sub-builds
PLAN = "plan.json"
CARD_NAME = "README.md"  # the dataset card


def shard_file_pattern(prefixes: set[str]) -> re.Pattern[str]:
    """The names of the shard files a build with these shard prefixes writes (tar, sidecar, stats, embeddings)."""
    names = "|".join(re.escape(p) for p in sorted(prefixes)) or "(?!)"
    embeddings = r"emb\.[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*\.(?:image|text)\.npy"  # shards.embeddings
    return re.compile(rf"^(?:{names})-(?:rejects-)?\d{{6}}\.(?:tar|parquet|stats\.json|{embeddings})$")


class BuildState(StrEnum):
    """Where an output directory stands for a recipe (and, in a result, what the build did)."""

    FRESH = "fresh"  # nothing there (or nothing left of a failed start): build from the start
    RESUME = "resume"  # an interrupted build of this recipe: finished partitions are kept
    COMPLETE = "complete"  # a finished build of this recipe: nothing to do
    CLEAR = "clear"  # an earlier build to replace (--overwrite)


class OutputDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.work = self.root / WORK
        self.logs = self.root / LOGS
        self.plan_path = self.work / PLAN

    # -- state (reads only)
    def state(self, recipe_sha256: str, overwrite: bool) -> BuildState:
        """Raises CurationError when the directory holds something that ``overwrite`` does not allow replacing."""
        out = self.root
        if out.exists() and not out.is_dir():
            raise CurationError(f"--out {out} is a file, not a directory")
        if not out.exists():
            return BuildState.FRESH
        if (out / MANIFEST_NAME).is_file():
            try:
                theirs = read_manifest(out).recipe_sha256
            except ValueError as exc:
                if not overwrite:
                    raise CurationError(f"{out}: {exc}; pass --overwrite to replace it") from None
                return BuildState.CLEAR
            if theirs == recipe_sha256 and not overwrite:
                return BuildState.COMPLETE
            if not overwrite:
                raise CurationError(
                    f"{out} holds a build of a different recipe (recipe sha256 {theirs[:12]}, this one "
                    f"{recipe_sha256[:12]}); pass --overwrite to replace it or choose another --out"
                )
            return BuildState.CLEAR
        if self.plan_path.is_file():
            if self.recorded_plan().get("recipe_sha256") == recipe_sha256 and not overwrite:
                return BuildState.RESUME
            if not overwrite:
                raise CurationError(
                    f"{out} holds an unfinished build of a different recipe; pass --overwrite to discard it"
                )
            return BuildState.CLEAR
        owned, foreign = self._owned_and_foreign()
        if foreign:
            raise CurationError(
                f"--out {out} is not empty and holds no build of this toolkit; choose an empty directory"
            )
        return BuildState.CLEAR if owned else BuildState.FRESH  # e.g. an empty _work/ left by a failed start

    def recorded_plan(self) -> dict[str, Any]:
        """The plan an unfinished build recorded ({} when there is none or it cannot be read)."""
        with contextlib.suppress(OSError, ValueError):
            plan = json.loads(self.plan_path.read_text())
            if isinstance(plan, dict):
                return plan
        return {}

    def recorded_plan_sha256(self) -> str | None:
        """The plan sha256 a finished build recorded in its stats."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return json.loads((self.root / STATS_NAME).read_text())["plan_sha256"]
        return None

    # -- lifecycle
    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CurationError(f"--out {self.root}: cannot create the directory ({exc.strerror})") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One build per output directory; the OS drops the lock when the process dies, even by kill -9."""
        path = self.root / LOCK
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CurationError(
                    f"another build is running in {self.root}; wait for it or choose another --out"
                ) from None
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # while still holding it: no lock file is left behind
                fcntl.flock(f, fcntl.LOCK_UN)

    def start(self, state: BuildState, plan: dict[str, Any], keep: tuple[str, ...] = ()) -> None:
        """Under the lock: clear an earlier build (but the entries in ``keep``), record ``plan`` (kept as it is
        on resume) and remove what killed attempts left half-written."""
        if state == BuildState.CLEAR:
            self.clear(keep)
        if state != BuildState.RESUME or not self.plan_path.is_file():
            self.work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.plan_path, plan)
        remove_stale_tmp(self.root)
        remove_stale_tmp(self.root / "rejects")

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Delete what earlier builds wrote here (except the entries named in ``keep``); refuse (deleting
        nothing) if anything else is present."""
        owned, foreign = self._owned_and_foreign()
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise CurationError(
                f"{self.root} holds files this toolkit did not write ({shown}); refusing to overwrite it"
            )
        for path in owned:
            if path.name in keep:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def finish(self, card: bool = True) -> None:
        """After the manifest: the dataset card, then the work directory goes."""
        if card:
            self.write_card()
        shutil.rmtree(self.work, ignore_errors=True)

    def finish_complete(self) -> None:
        """A build killed after writing dataset.json (complete) but before its card and clean-up: finish those."""
        if self.work.exists() or (self.root / LOCK).exists() or not (self.root / CARD_NAME).is_file():
            with self.lock():
                self.write_card(only_missing=True)
                shutil.rmtree(self.work, ignore_errors=True)

    def write_card(self, only_missing: bool = False) -> None:
        """The dataset card (README.md, Hugging Face style), written by every build after its manifest."""
        from curation.report.card import write_dataset_card

        if not (only_missing and (self.root / CARD_NAME).is_file()):
            write_dataset_card(self.root)

    def write_log(self, entry: dict[str, Any]) -> Path:
        """A run log in ``_logs/`` (timings and what this run did; never part of the output's identity)."""
        self.logs.mkdir(exist_ok=True)
        now = datetime.now(UTC)
        path = self.logs / f"build-{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
        atomic_write_json(path, {"finished_at": now.isoformat(), **entry})
        return path

    # -- ownership
    def _prefixes(self) -> set[str]:
        """Shard prefixes of the build(s) recorded here (the manifest and/or the unfinished plan)."""
        found = set()
        with contextlib.suppress(FileNotFoundError, ValueError):
            found.add(read_manifest(self.root).name)
        found.add(self.recorded_plan().get("prefix", ""))
        return {p for p in found if isinstance(p, str) and p}

    def _owned_and_foreign(self) -> tuple[list[Path], list[str]]:
        """Entries this toolkit wrote, and the names of everything else (never deleted)."""
        out = self.root
        prefixes = self._prefixes()
        shard = shard_file_pattern(prefixes)
        singles = {MANIFEST_NAME, STATS_NAME, *(f"{p}.wids.json" for p in prefixes)}
        if (out / MANIFEST_NAME).is_file():  # a build's card and report; a README.md elsewhere is the user's
            singles |= {CARD_NAME, "audit.html", "audit.md"}
        tmp = re.compile(r"^\..+\.tmp$")
        owned: list[Path] = []
        foreign: list[str] = []
        for child in sorted(out.iterdir()):
            if child.is_symlink():  # whatever it points to is not ours: never write or delete through a link
                foreign.append(child.name)
                continue
            if child.name in (LOCK, LOGS):
                continue
            if (child.name in (WORK, DATASETS) and child.is_dir()) or (
                child.name == "subsets"
                and child.is_dir()
                and all(c.name.endswith(".wids.json") for c in child.iterdir())
            ):
                owned.append(child)
            elif child.name == "rejects" and child.is_dir():
                bad = [
                    f"rejects/{c.name}"
                    for c in child.iterdir()
                    if not (c.is_file() and (shard.match(c.name) or tmp.match(c.name)))
                ]
                (foreign.extend(bad) if bad else owned.append(child))
            elif child.is_file() and (child.name in singles or shard.match(child.name) or tmp.match(child.name)):
                owned.append(child)
            else:
                foreign.append(child.name + ("/" if child.is_dir() else ""))
        return owned, foreign
