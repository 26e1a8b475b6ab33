"""Bounded file access shared by the harness parsers: a symlink-safe walk of an output folder, size-checked reads
of JSON, JSON lines and result tables (CSV / TSV / JSON / XLSX), and number coercion. Bad input is a CurationError
naming the file (and line or row), never a traceback.

The size limits are read from this module at call time (tests lower them here).
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curation.errors import CurationError

MAX_SUMMARY_BYTES = 64 << 20
"""Largest results / status / score file read (each is read whole; real ones are kilobytes to a few megabytes)."""
MAX_ITEMS_BYTES = 512 << 20
"""Largest per-item file read (an lmms-eval samples file, a VLMEvalKit per-item result table)."""
MAX_WALK_ENTRIES = 200_000
"""Most files and folders looked at under one output folder."""
_REL_TOL = 1e-9  # an items' mean must equal the harness's own aggregate this closely to be kept

# VLMEvalKit's run folders (see vlmevalkit.py); the walk prefers a file's path through one of them.
# run.py: results go to {work_dir}/{model}/{eval_id}/, eval_id = build_eval_id() = "T%Y%m%d-%H%M%S" (vlmeval/smp/
# file.py; before 2026-04 "T%Y%m%d_G<commit>", the commit "unknown" outside a git checkout), and every file of a
# finished dataset (and status.json) is then symlinked into {work_dir}/{model}/.
_NEW_RUN = re.compile(r"^T(\d{8})-(\d{6})$")
_OLD_RUN = re.compile(r"^T(\d{8})_G\w+$")


def _run_id(name: str) -> str | None:
    """A run folder's time stamp (``YYYYMMDDHHMMSS``; an old-style folder has only its day); None for another
    folder."""
    if m := _NEW_RUN.match(name):
        return m.group(1) + m.group(2)
    if m := _OLD_RUN.match(name):
        return m.group(1)
    return None


def _files(root: Path, label: str) -> list[Path]:
    """Every file under ``root`` once (sorted), following symlinked folders but entering each folder once (a link
    loop ends there) and only after every real folder (so a folder is named by its own path, not by a link to it).
    A file reached through several paths (a symlink beside its target) is listed once, by the path whose folder is
    a VLMEvalKit run folder when there is one, else the first path met."""
    root = Path(root)
    if not root.is_dir():
        return []
    seen_dirs: set[tuple[int, int]] = set()
    by_real: dict[str, Path] = {}
    folders, linked = [root], []  # linked folders wait until no real one is left
    entries = 0
    while folders or linked:
        folder = folders.pop() if folders else linked.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise CurationError(f"{label}: cannot list {folder} ({exc.strerror or exc})") from None
        for entry in children:
            entries += 1
            if entries > MAX_WALK_ENTRIES:
                raise CurationError(f"{label}: more than {MAX_WALK_ENTRIES} files and folders under {root}")
            try:
                if entry.is_dir():
                    (linked if entry.is_symlink() else folders).append(Path(entry.path))
                    continue
                if not entry.is_file():
                    continue
            except OSError:
                continue
            path = Path(entry.path)
            real = os.path.realpath(path)
            known = by_real.get(real)
            if known is None or (_run_id(path.parent.name) and not _run_id(known.parent.name)):
                by_real[real] = path
    return sorted(by_real.values())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _check_size(path: Path, limit: int, label: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CurationError(f"{label}: cannot read {path} ({exc.strerror or exc})") from None
    if size > limit:
        raise CurationError(f"{label}: {path} is {size} bytes, over the {limit}-byte limit for this file; not read")


def _read_json(path: Path, label: str, limit: int | None = None) -> Any:
    _check_size(path, MAX_SUMMARY_BYTES if limit is None else limit, label)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CurationError(f"{label}: {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (OSError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise CurationError(f"{label}: {path} is not readable JSON ({exc})") from None


def _number(value: object) -> float | None:
    """A finite JSON number (not a bool) as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_REL_TOL)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def _item_value(value: object) -> float | None:
    """A per-item value: a finite number, or a bool as 0/1."""
    return float(value) if isinstance(value, bool) else _number(value)


def _jsonl(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; a line that is not a UTF-8 JSON object is a CurationError."""
    _check_size(path, MAX_ITEMS_BYTES, label)
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise CurationError(f"{label}: {path}:{lineno}: not UTF-8") from None
                except (json.JSONDecodeError, RecursionError, ValueError) as exc:
                    raise CurationError(f"{label}: {path}:{lineno}: not JSON ({exc})") from None
                if not isinstance(obj, dict):
                    raise CurationError(
                        f"{label}: {path}:{lineno}: a JSON object was expected, not {type(obj).__name__}"
                    )
                yield lineno, obj
    except OSError as exc:
        raise CurationError(f"{label}: cannot read {path} ({exc.strerror or exc})") from None


def _cell_number(value: object) -> float | None:
    """A table cell as a finite float: a number (not a bool) or a numeric string; None otherwise."""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            return None
    return _number(value)


def _read_table(path: Path, limit: int) -> list[dict[str, Any]]:
    """A VLMEvalKit table as rows: ``.csv`` / ``.tsv`` (pandas ``to_csv``, QUOTE_ALL), ``.json`` (``dump_json``:
    a DataFrame as a list of records; a dict as one row), ``.xlsx`` (needs openpyxl)."""
    label = "VLMEvalKit"
    _check_size(path, limit, label)
    if path.suffix == ".xlsx":
        return _read_xlsx(path)
    if path.suffix == ".json":
        doc = _read_json(path, label, limit)
        if isinstance(doc, dict):
            return [doc]
        if isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
            return doc
        raise CurationError(f"VLMEvalKit: {path} must hold a list of row objects (or one object)")
    csv.field_size_limit(max(csv.field_size_limit(), min(limit, 1 << 30)))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    except UnicodeDecodeError as exc:
        raise CurationError(f"VLMEvalKit: {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (OSError, csv.Error) as exc:
        raise CurationError(f"VLMEvalKit: {path} is not a readable table ({exc})") from None


def _read_xlsx(path: Path) -> list[dict[str, Any]]:
    try:
        openpyxl = importlib.import_module("openpyxl")
    except ImportError:
        raise CurationError(
            f"VLMEvalKit: {path} is an .xlsx file and openpyxl is not installed: `pip install openpyxl`, or run "
            f"VLMEvalKit with PRED_FORMAT=tsv (or json) so its per-item files are .tsv"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            sheet_rows = book.worksheets[0].iter_rows(values_only=True)
            header = [str(c) if c is not None else "" for c in next(sheet_rows, ())]
            return [dict(zip(header, row, strict=False)) for row in sheet_rows if any(c is not None for c in row)]
        finally:
            book.close()
    except CurationError:
        raise
    except Exception as exc:  # openpyxl raises zipfile, XML and its own errors on a damaged file
        raise CurationError(f"VLMEvalKit: {path} is not a readable .xlsx file ({type(exc).__name__}: {exc})") from None
