"""The reader contract and the helpers readers share."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import errno
import glob
import hashlib
import math
import re
import stat
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args

from curation.errors import CurationError
from curation.registry import register_by_config
from curation.sample import Drop, Sample
from curation.storage.urls import is_url
from schemas import RecordError, parse_record

T = TypeVar("T")

_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")
MAX_IMAGE_FILE_BYTES = 256 << 20  # far above any training image; bounds what one input path can make us read

# Drop reasons of the shared helpers below (reason -> one-line meaning; a key ending in ":" is a prefix), for the
# readers that use them to declare (``Reader.drop_reasons``; the registry: ``curation.build.drop_reasons``).
RECORD_DROP_REASONS = {
    "invalid_record:": "the row does not make a valid record of its kind (the field after the colon)",
}
IMAGE_FILE_DROP_REASONS = {  # ``load_image_file`` / ``image_file_drop_reason``
    "missing_image_file": "the named image file does not exist",
    "unreadable_image_file": (
        "the named image file cannot be read, for any reason: a directory, no permission, a name too long, "
        "a symlink loop, an I/O error, a file that grew while it was read"
    ),
    "not_a_regular_file": "the named image file is a FIFO, device or socket; never read",
    "image_file_too_large": f"the named image file is over {MAX_IMAGE_FILE_BYTES >> 20} MiB; never read",
}
IMAGE_FIELD_DROP_REASONS = {  # ``as_image_bytes`` through ``build_record``
    "invalid_image_field": (
        "an image field of the wrong type (not bytes, a path, a list of paths or an `{bytes, path}` struct)"
    ),
}
BUILD_RECORD_DROP_REASONS = {  # ``build_record``
    "missing_field:image": "a pair record without an image field",
    **IMAGE_FILE_DROP_REASONS,
    **IMAGE_FIELD_DROP_REASONS,
    **RECORD_DROP_REASONS,
}


InputPath = Path | str  # a local file (Path) or an object in a bucket (its s3:// URL, a str: a Path would lose a "/")


@dataclass(frozen=True)
class Partition:
    """A unit of work: ``rows`` input rows of one source, described by a JSON-able ``spec``."""

    source: str
    index: int
    rows: int
    spec: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "index": self.index, "rows": self.rows, "spec": self.spec}


@dataclass(frozen=True)
class Subset:
    """A nested subset of a source: the positions of the partitions (in the source's plan) that make it up,
    and whether the source had enough rows for the size it names."""

    label: str
    partitions: list[int]
    complete: bool


_BY_CONFIG: dict[type[Any], type[Reader]] = {}


class Reader(ABC):
    """The source contract: a reader plans its input into partitions with exact row counts and reads one
    partition; what a source may add (a category, nested subsets, its own Ray downloads) has a default here.
    A reader class is found from the class of its recipe source (``config = JsonlSource``), as steps are."""

    config: ClassVar[type[Any]]  # the recipe source model it reads (registers the class)
    # The file name endings ``plan()`` lists under the source's ``path`` (``expand_inputs``); () when it lists none.
    input_suffixes: ClassVar[tuple[str, ...]] = ()

    # Whether ``download_with_ray`` fetches pending partitions through Ray before the partition tasks run.
    downloads_with_ray: ClassVar[bool] = False
    # Whether ``path`` and ``image_root`` may be ``s3://`` URLs: the reader lists and streams its inputs from object
    # storage (``curation.storage.inputs``). Any other reader given a URL is a one-line RecipeError (``make_reader``).
    reads_urls: ClassVar[bool] = False
    # The spec fields of a partition that name a file ``plan()`` made in the driver's cache and ``read()`` opens
    # (LAION's selection, OBELICS's overused URLs): on Ray into a bucket they reach the nodes through the bucket.
    plan_file_fields: ClassVar[tuple[str, ...]] = ()
    # Every drop reason ``read()`` can emit, with a one-line meaning (a key ending in ":" is a prefix:
    # ``invalid_record:`` stands for ``invalid_record:<field>``); a reader adds those of the shared helpers it
    # uses (``BUILD_RECORD_DROP_REASONS``, ...). No reason is common to all readers: ``reader_error`` and
    # ``rows_missing`` come from the read stage around every reader (``curation.build.drop_reasons``).
    drop_reasons: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_by_config(_BY_CONFIG, cls)

    def __init__(self, source: Any) -> None:
        self.source = source

    @abstractmethod
    def plan(self) -> list[Partition]: ...

    @abstractmethod
    def read(self, partition: Partition) -> Iterator[Sample | Drop]: ...

    @abstractmethod
    def record_kind(self) -> str: ...

    def identity_files(self) -> Sequence[InputPath] | None:
        """The files that identify this source's input by content (their size and sha256 go into the build plan):
        by default those its ``path`` names with one of ``input_suffixes`` (what ``plan()`` reads), or None (none
        declared: every file the path names). A reader whose input is mostly bulk it identifies otherwise
        (img2dataset's tars, listed with their sizes in its parquet) names the smaller files."""
        if not self.input_suffixes:
            return None
        return expand_inputs(self.source.path, self.input_suffixes, self.source.name)

    def category(self) -> str | None:
        """The task category of the source's samples when the reader knows it (the Cauldron's configs)."""
        return None

    def input_identity(self) -> dict[str, Any]:
        """What the source reads beyond its ``path`` that decides its output, by content (e.g. the sha256 of the
        OBELICS filters' model files); recorded in the build's plan, so a changed file is a changed build."""
        return {}

    def partition_origin(self, partition: Partition) -> str:
        """Where a partition's rows come from, for drops that stand for rows the reader could not give."""
        where = partition.spec.get("file") or partition.spec.get("path")
        return f"{where}" if where else f"{partition.source} partition {partition.index}"

    def truncate(self, partition: Partition, rows: int) -> Partition:
        """The first ``rows`` rows of ``partition`` (``--limit``, a source's ``limit``). Readers read
        ``partition.rows`` rows, so the spec stays as planned."""
        return dataclasses.replace(partition, rows=rows)

    def subsets(self, planned: list[Partition]) -> list[Subset]:
        """Nested subsets the source declares over its planned partitions (LAION sizes)."""
        return []

    def download_with_ray(self, partitions: list[Partition]) -> None:
        """Fetch what ``partitions`` need with the source's own Ray distribution (``downloads_with_ray``)."""
        raise NotImplementedError(f"{type(self).__name__} has no Ray download stage")


def expand_inputs(path: str, suffixes: tuple[str, ...], source: str) -> list[InputPath]:
    """Files named by a file path, a directory (recursively) or a glob; sorted; loud when empty. A URL names
    objects the same way (one object, a prefix, a glob: ``curation.storage.inputs.expand_url``)."""
    if is_url(path):
        from curation.storage.inputs import expand_url

        return list(expand_url(path, suffixes, source))
    p = Path(path)
    if any(ch in path for ch in "*?["):
        found = [Path(f) for f in glob.glob(path, recursive=True)]
    elif p.is_dir():
        found = list(p.rglob("*"))
    elif p.is_file():
        return [p]
    elif p.exists():
        raise CurationError(f"sources.{source}.path: {path} is not a regular file (a FIFO, device or socket)")
    else:
        raise CurationError(f"sources.{source}.path: no such file or directory: {path}")
    # Regular files only (a FIFO named like an input would block the plan forever), each once: a glob's ``**``
    # follows symlinked folders, and a link loop would list the same file under ever longer names.
    files, seen = [], set()
    named = (f for f in found if f.name.endswith(suffixes) and not f.name.startswith("."))
    for f in sorted(named, key=lambda f: (len(f.parts), f)):  # the shortest name of a file is the one kept
        with contextlib.suppress(OSError):
            info = f.stat()
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                files.append(f)
    files.sort()
    if not files:
        raise CurationError(f"sources.{source}.path: no {'/'.join(suffixes)} files under {path}")
    return list(files)


def sanitize_key(value: Any) -> str:
    """A valid sample key for an input id. Ids that are already valid stay as they are; any other id gets
    a hash suffix, so distinct ids never collapse into one key ('a.b' and 'a/b' differ)."""
    text = str(value)
    if _KEY_OK.match(text):
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{_KEY_BAD.sub('_', text)[:180]}-{digest}"


def default_key(source: str, file: str, file_index: int, row: int) -> str:
    """The key of an input row without an id: source, file stem, file number and row number, so keys never
    collide across sources (two sources each reading a ``train.jsonl``)."""
    stem = sanitize_key(Path(file).stem)
    prefix = source if stem == source else f"{source}-{stem}"
    return sanitize_key(f"{prefix}-{file_index:04d}-{row:09d}")


def to_jsonable(value: Any) -> Any:
    """Input values (parquet timestamps, decimals, bytes, NaN, ...) as JSON values for ``meta``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)  # Decimal, timedelta, UUID, ...


class ImageFileError(OSError):
    """An image file named in the input that is not taken; ``reason`` is its drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def load_image_file(ref: str, image_root: str | None) -> bytes:
    """Read an image file named in the input: a regular file of at most ``MAX_IMAGE_FILE_BYTES``, checked
    before reading (a FIFO would block, ``/dev/zero`` never ends). Raises OSError; ``image_file_drop_reason``
    names the drop. Under an ``image_root`` URL, a relative ``ref`` is an object of the bucket, its size
    checked before its body is read (``curation.storage.inputs.read_object``)."""
    if image_root and is_url(image_root) and not Path(ref).is_absolute():
        return _load_image_object(ref, image_root)
    path = Path(ref)
    if not path.is_absolute() and image_root:
        path = Path(image_root) / path
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):
        raise ImageFileError("not_a_regular_file", f"{path}: not a regular file (a FIFO, device or socket)")
    if info.st_size > MAX_IMAGE_FILE_BYTES:
        raise ImageFileError("image_file_too_large", f"{path}: {info.st_size} bytes > {MAX_IMAGE_FILE_BYTES}")
    with path.open("rb") as f:
        data = f.read(info.st_size + 1)  # one byte more: the file may have grown since stat
    if len(data) > info.st_size:
        raise ImageFileError("unreadable_image_file", f"{path}: changed while it was read")
    return data


def _load_image_object(ref: str, image_root: str) -> bytes:
    from curation.storage.inputs import join_url, read_object

    url = join_url(image_root, ref)
    if url is None:  # a name that leaves the bucket or that no key can have
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", f"{image_root.rstrip('/')}/{ref}")
    return read_object(url, MAX_IMAGE_FILE_BYTES, ImageFileError)


def image_file_drop_reason(exc: OSError) -> str:
    """The drop reason of an image file that could not be read: any OSError, not only the usual ones (a
    name too long, a symlink loop, an I/O error on a network filesystem)."""
    if isinstance(exc, ImageFileError):
        return exc.reason
    return "missing_image_file" if isinstance(exc, FileNotFoundError) else "unreadable_image_file"


URL_IMAGE_FETCHES = 16  # rows made at once per worker when their images are objects of a bucket (one GET each)


def fetches_at_once(image_root: str | None) -> int:
    """How many rows a reader makes at once: one after the other from local files; under an ``image_root`` URL,
    ``URL_IMAGE_FETCHES`` (each image is one GET: latency-bound, so one at a time would wait on every round trip)."""
    return URL_IMAGE_FETCHES if image_root and is_url(image_root) else 1


def in_order(calls: Iterable[Callable[[], T]], at_once: int) -> Iterator[T]:
    """The result of each call, in order, with up to ``at_once`` calls running ahead in threads (a failing call
    raises in order too). Threads, not processes: the work is waiting on the store (s3fs's event loop serves
    every thread's requests at once)."""
    if at_once <= 1:
        for call in calls:
            yield call()
        return
    calls = iter(calls)
    with ThreadPoolExecutor(at_once, thread_name_prefix="fetch") as pool:
        pending: deque[Future[T]] = deque()
        try:
            while True:
                try:
                    call = next(calls)
                except StopIteration:
                    break
                except Exception:  # the input failed (a file cut off): the calls made before it come first
                    while pending:
                        yield pending.popleft().result()
                    raise
                pending.append(pool.submit(call))
                if len(pending) >= at_once:  # at most at_once items held: each may hold its images
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a consumer that stops early (a --limit) or a failure: nothing left running
            for future in pending:
                future.cancel()


def as_image_bytes(value: Any, image_root: str | None) -> bytes:
    """Image bytes from raw bytes, a path string, or an HF Image struct ``{bytes, path}``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return load_image_file(value["path"], image_root)
        raise ValueError("image struct has neither bytes nor path")
    if isinstance(value, str):
        return load_image_file(value, image_root)
    raise TypeError(f"expected image bytes or a path, got {type(value).__name__}")


def build_record(
    kind: str,
    row: dict[str, Any],
    *,
    source: str,
    origin: str,
    default_key: str,
    fields: dict[str, str],
    image_root: str | None,
    keep_extra: bool,
) -> Sample | Drop:
    """Map an input row to a record of ``kind`` (``pair`` or ``sft``); every failure is a Drop."""
    names = {"key": "key", "image": "image", "caption": "caption", "images": "images", "turns": "turns"}
    names.update(fields)
    used = set()

    def take(field_name: str) -> Any:
        col = names[field_name]
        used.add(col)
        return row.get(col)

    raw_key = take("key")
    key = sanitize_key(raw_key) if raw_key not in (None, "") else default_key
    keep_id = raw_key not in (None, "") and key != str(raw_key)
    try:
        if kind == "pair":
            image_ref = take("image")
            if image_ref is None or image_ref == "":
                return Drop("missing_field:image", source, origin, key, f"no {names['image']!r} field")
            data: dict[str, Any] = {"image": as_image_bytes(image_ref, image_root), "caption": take("caption")}
        else:
            refs = take("images")
            refs = [] if refs is None else (refs if isinstance(refs, list) else [refs])
            data = {"images": [as_image_bytes(r, image_root) for r in refs], "turns": _turns(take("turns"))}
    except OSError as exc:
        return Drop(image_file_drop_reason(exc), source, origin, key, str(exc))
    except (TypeError, ValueError) as exc:
        return Drop("invalid_image_field", source, origin, key, str(exc))
    meta = {k: to_jsonable(v) for k, v in row.items() if k not in used} if keep_extra else {}
    if keep_id:
        meta["source_id"] = to_jsonable(raw_key)  # the input id, before it was made a valid key
    try:
        record = parse_record(kind, {"key": key, "source": source, "meta": meta, **data})
    except RecordError as exc:
        return Drop(exc.drop_reason, source, origin, key, str(exc))
    return Sample(record, origin)


def _turns(value: Any) -> Any:
    """Keep the conversation fields of each turn (Cauldron turns also carry a per-turn ``source``)."""
    if isinstance(value, list):
        return [{"user": t.get("user"), "assistant": t.get("assistant")} if isinstance(t, dict) else t for t in value]
    return value


class RowReader(Reader):
    """Shared by readers of row-shaped inputs (jsonl, parquet): rows become records via ``build_record``."""

    drop_reasons: ClassVar[dict[str, str]] = BUILD_RECORD_DROP_REASONS

    def __init__(self, source: Any) -> None:
        self.source = source

    def record_kind(self) -> str:
        return self.source.record

    def to_item(self, row: dict[str, Any], origin: str, default_key: str) -> Sample | Drop:
        src = self.source
        return build_record(
            src.record,
            row,
            source=src.name,
            origin=origin,
            default_key=default_key,
            fields=src.fields,
            image_root=src.image_root,
            keep_extra=src.keep_extra,
        )


def reader_classes() -> dict[str, type[Reader]]:
    """The reader registry: a source's ``reader`` name (as recipes write it) -> the class that reads it."""
    from curation.sources.catalog import READERS  # importing it registers every reader class

    return {get_args(cls.config.model_fields["reader"].annotation)[0]: cls for cls in READERS}


def reader_class(source: Any) -> type[Reader]:
    """The class that reads ``source`` (a recipe source), without opening anything."""
    import curation.sources.catalog  # noqa: F401 - registers every reader class

    return _BY_CONFIG[type(source)]


def make_reader(source: Any) -> Reader:
    """The reader of ``source``; a URL given to a reader that reads local paths only is a one-line RecipeError."""
    from curation.storage.inputs import refuse_urls

    refuse_urls(source)
    return reader_class(source)(source)
