"""Recipe inputs in object storage: a source's ``path`` (and ``image_root``) may be an ``s3://bucket/key`` URL.

The readers that declare ``Reader.reads_urls`` list and read their inputs in place, streamed: nothing is copied
whole to local disk (LAION's metadata aside: ``curation.sources.laion.reader``). This module is their one way in:

- :func:`expand_url` lists what a URL names (one object, every object under a prefix, a glob's matches), sorted
  and filtered as ``expand_inputs`` does local files; :func:`url_identity` gives what the build plan records of
  them: (size, ETag), the store's own content identity, instead of hashing;
- :func:`open_url` opens one object for reading: an s3fs file whose reads are ranged GETs with a bounded
  read-ahead (``block_size``), pinned to the ETag it had when opened (s3fs sends ``If-Match``), so an object
  replaced while it is read fails instead of mixing two versions;
- :func:`read_object` reads one small object whole (an image under an ``image_root`` URL, a manifest), its
  size checked before its body is read.

Connections come from ``curation.storage.store`` (bounded retries, one-line errors) with the recipe's
``storage:`` options (:func:`set_options`; the plan and each partition worker set them from the recipe) and
credentials from the environment of the process that reads: never from a plan, a spec or a recipe.

A request that fails for the environment (credentials, a missing bucket, an unreachable or throttling store) is
a one-line :class:`CurationError` that stops the build (a rerun resumes); an object that is missing or changed
since the plan is an ``OSError``, which readers turn into drops as they do for local files."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import io
import os
import posixpath
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from curation.errors import CurationError, RecipeError
from curation.storage.store import ObjectInfo, Store, _error_code
from curation.storage.urls import StoreURL, is_url, parse_url

READ_BLOCK = 4 << 20  # read-ahead of a streamed object: each ranged GET reading forward asks for this much
SMALL_BLOCK = 64 << 10  # for headers and footers read at plan time (tar headers, parquet footers)
PARQUET_BLOCK = 1 << 20  # pyarrow asks for exact column chunks: read-ahead only joins the small ones nearby
MAX_MANIFEST_BYTES = 256 << 20  # a dataset.json read from a bucket (a manifest lists every shard)
MAX_INPUT_OBJECTS = 1_000_000  # bounds what one source URL can make the plan list (as MAX_INPUT_FILES locally)
GLOB_CHARS = "*?["
_MISSING = ("NoSuchKey", "404", "NotFound", "KeyTooLongError", "InvalidURI")  # no such object (or no such key)
MAX_KEY_BYTES = 1024  # S3's limit on a key: a longer name (from the input) names no object
_CHANGED = ("PreconditionFailed", "412", "InvalidRange", "416")

_options: Any = None  # the recipe's ``storage:`` block (curation.recipe.storage.Storage) or None
_stores: dict[tuple[Any, ...], Store] = {}
_stores_lock = threading.Lock()
_known: dict[str, ObjectInfo] = {}  # URL -> what a listing or a HEAD said of it, in this process


class NoSuchInput(CurationError):
    """A source URL names no object (a missing object or prefix, a glob without matches)."""


def set_options(options: Any) -> None:
    """The ``storage:`` options of the recipe whose inputs this process reads (None: the environment only)."""
    global _options
    if options != _options:
        _options = options
        _known.clear()


def store_for(url: StoreURL) -> Store:
    """The connection to ``url``'s bucket, made once per process, options and environment."""
    env = hashlib.sha256(repr(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))).encode())
    opts = _options.model_dump_json() if _options is not None else None
    key = (os.getpid(), url.scheme, url.bucket, opts, env.hexdigest())  # s3fs is not fork-safe: one per process
    with _stores_lock:  # the threads of a reader's ``in_order`` ask at once: one connection for all of them
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(StoreURL(url.scheme, url.bucket, ""), _options)
    return store


@dataclass(frozen=True)
class Listed:
    """One object a source URL names."""

    url: str
    size: int
    etag: str


def parse_input(url: str, what: str) -> StoreURL:
    """A source URL as a :class:`StoreURL`; an unsupported scheme or a bad bucket is a one-line RecipeError."""
    try:
        return parse_url(url, what)
    except CurationError as exc:
        raise RecipeError(str(exc)) from None


def _url(u: StoreURL, key: str) -> str:
    return f"{u.scheme}://{u.bucket}" + (f"/{key}" if key else "")


def _head(store: Store, key: str, doing: str) -> ObjectInfo | None:
    with store.errors(doing):
        try:
            r = store._call("head_object", Key=key)
        except FileNotFoundError:
            return None
    return ObjectInfo(int(r.get("ContentLength", 0)), str(r.get("ETag", "")).strip('"'))


def _list(store: Store, prefix: str, what: str, doing: str) -> Iterator[tuple[str, ObjectInfo]]:
    """(key, info) of every object under ``prefix`` (recursive; folder markers left out), in key order."""
    token: str | None = None
    seen = 0
    with store.errors(doing):
        while True:
            page = store._call("list_objects_v2", Prefix=prefix, **({"ContinuationToken": token} if token else {}))
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if key.endswith("/"):
                    continue
                seen += 1
                if seen > MAX_INPUT_OBJECTS:
                    raise CurationError(
                        f"{what} ({_url(store.url, prefix)}) names more than {MAX_INPUT_OBJECTS:,} objects; point it "
                        "at the data files, not at a folder of images"
                    )
                yield key, ObjectInfo(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")


def _glob_parts(pattern: str) -> tuple[str, list[str]]:
    """(the fixed key prefix before the first wildcard part, the parts from there on)."""
    parts = pattern.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(ch in p for ch in GLOB_CHARS))
    return "/".join(parts[:fixed]), parts[fixed:]


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """``glob.glob(recursive=True)`` on key parts: ``**`` spans any number of parts, a wildcard never matches
    a leading dot (hidden names need a pattern that starts with one)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(
            _glob_match(parts[i:], rest) for i in range(len(parts) + 1) if not any(p.startswith(".") for p in parts[:i])
        )
    if not parts:
        return False
    name = parts[0]
    if name.startswith(".") and not head.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, head) and _glob_match(parts[1:], rest)


def _sort_key(listed: Listed) -> list[str]:
    return listed.url.split("/")  # as local Paths sort: part by part


def list_url(url: str, what: str, *, hidden_folders: bool) -> tuple[list[Listed], bool]:
    """What ``url`` names: (objects, whether it is one object). A prefix names every object under it (with
    ``hidden_folders=False`` none under a folder whose name starts with a dot), a glob its matches. Missing
    objects and bad URLs are one-line errors; so is any failing request."""
    u = parse_input(url, what)
    store = store_for(u)
    doing = f"listing {url}"
    if any(ch in u.prefix for ch in GLOB_CHARS):
        fixed, pattern = _glob_parts(u.prefix)
        found = []
        for key, info in _list(store, f"{fixed}/" if fixed else "", what, doing):
            parts = key[len(fixed) + 1 :].split("/") if fixed else key.split("/")
            if _glob_match(parts, pattern):
                found.append(Listed(_url(u, key), info.size, info.etag))
    else:
        info = _head(store, u.prefix, f"reading {url}") if u.prefix else None
        if info is not None:
            _known[url] = info
            return [Listed(url, info.size, info.etag)], True
        base = f"{u.prefix}/" if u.prefix else ""
        found = [
            Listed(_url(u, key), info.size, info.etag)
            for key, info in _list(store, base, what, doing)
            if hidden_folders or not any(p.startswith(".") for p in key[len(base) :].split("/")[:-1])
        ]
        if not found:
            raise NoSuchInput(f"{what}: no such object or prefix: {url}")
    for f in found:
        _known[f.url] = ObjectInfo(f.size, f.etag)
    return sorted(found, key=_sort_key), False


def expand_url(url: str, suffixes: tuple[str, ...], source: str) -> list[str]:
    """``expand_inputs`` for a URL: the objects it names with one of ``suffixes`` (one object: whatever its
    name), hidden names left out, sorted; loud when there are none."""
    what = f"sources.{source}.path"
    found, single = list_url(url, what, hidden_folders=True)
    if single:
        return [found[0].url]
    names = [f.url for f in found if f.url.endswith(suffixes) and not posixpath.basename(f.url).startswith(".")]
    if not names:
        raise NoSuchInput(f"{what}: no {'/'.join(suffixes)} files under {url}")
    return names


def url_identity(url: str, source: str) -> dict[str, tuple[int, str]]:
    """What the build plan records of the objects ``url`` names: URL -> (size, ``etag:<ETag>``). As for a local
    path: a glob's matches, one object, or every object under a prefix (hidden names and folders left out),
    except that a built dataset (a prefix holding ``dataset.json``) is identified by its manifest alone."""
    what = f"sources.{source}.path"
    u = parse_input(url, what)
    if not any(ch in u.prefix for ch in GLOB_CHARS):
        manifest = f"{url.rstrip('/')}/dataset.json"
        info = object_info(manifest)
        if info is not None:
            return {manifest: (info.size, f"etag:{info.etag}")}
    found, _ = list_url(url, what, hidden_folders=False)
    return {f.url: (f.size, f"etag:{f.etag}") for f in found if not posixpath.basename(f.url).startswith(".")}


def object_info(url: str) -> ObjectInfo | None:
    """Size and ETag of one object (None: there is none), from this process's listings or one HEAD."""
    if url in _known:
        return _known[url]
    u = parse_input(url, "URL")
    info = _head(store_for(u), u.prefix, f"reading {url}") if u.prefix else None
    if info is not None:
        _known[url] = info
    return info


def content_identity(path: Path | str) -> tuple[int, str]:
    """(size, sha256) of a local file; (size, ``etag:<ETag>``) of an object in a bucket (never read for it)."""
    if isinstance(path, str) and is_url(path):
        info = object_info(path)
        if info is None:
            raise NoSuchInput(f"no such object: {path}")
        return info.size, f"etag:{info.etag}"
    from curation.file_digest import file_identity

    return file_identity(path)


def download(url: str, local: Path) -> None:
    """Copy one object to ``local`` (streamed; through a temporary name: a killed copy leaves no partial file)."""
    u = parse_input(url, "URL")
    store_for(u).get_file(u.prefix, local)


def url_folder(url: str) -> str:
    """The folder a source URL stands in (``relocate.path_folder`` for URLs): the part before the first wildcard
    for a glob, the parent of an object, else the URL itself (a prefix)."""
    u = parse_input(url, "URL")
    if any(ch in u.prefix for ch in GLOB_CHARS):
        return _url(u, _glob_parts(u.prefix)[0])
    if url.endswith("/") or not u.prefix:
        return u.url
    return parent_url(u.url) if object_info(u.url) is not None else u.url


def parent_url(url: str) -> str:
    """``s3://bucket/a/b`` -> ``s3://bucket/a`` (``s3://bucket`` stays)."""
    head, _, rest = url.partition("://")
    return f"{head}://{posixpath.dirname(rest.rstrip('/'))}" if "/" in rest.rstrip("/") else url.rstrip("/")


def common_url(urls: list[str]) -> str | None:
    """The deepest URL every one of ``urls`` is under (None: they are in different buckets)."""
    parsed = [parse_input(u, "URL") for u in urls]
    if not parsed or len({(p.scheme, p.bucket) for p in parsed}) != 1:
        return None
    parts = [p.prefix.split("/") if p.prefix else [] for p in parsed]
    common: list[str] = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return _url(parsed[0], "/".join(common))


def join_url(root: str, ref: str) -> str | None:
    """``ref`` (a relative name from the input, e.g. an image file) under the URL ``root``; None when it leaves
    the bucket (``../..``)."""
    u = parse_input(root, "image_root")
    if "\x00" in ref:
        raise ValueError("embedded null byte")  # as a local path with one: an invalid image field
    key = posixpath.normpath("/".join(p for p in (u.prefix, ref) if p))
    if key in (".", "..") or key.startswith(("../", "/")) or len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES:
        return None
    return _url(u, key)


# ---- reading ---------------------------------------------------------------------------------------------------
class StreamedObject(io.RawIOBase):
    """An object opened for reading (``seek``/``read``/``tell``, ``size``): reads are ranged GETs through s3fs's
    read-ahead cache, pinned to the object's ETag. Failures of the environment become one-line
    :class:`CurationError`; a missing or changed object an ``OSError`` (see the module docstring)."""

    def __init__(self, store: Store, url: str, raw: Any) -> None:
        super().__init__()
        self._store, self.name, self._raw = store, url, raw
        self.size: int = int(raw.size)
        self.etag: str = str(raw.details.get("ETag", "")).strip('"')

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        with translated(self._store, self.name):
            return self._raw.read(-1 if size is None else size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with translated(self._store, self.name):
            return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._raw.close()
        super().close()


@contextlib.contextmanager
def translated(store: Store, url: str) -> Iterator[None]:
    """Store failures as the module docstring says: missing or changed objects are OSErrors, the rest one line."""
    try:
        yield
    except CurationError:
        raise
    except Exception as exc:
        code, _ = _error_code(exc)
        if isinstance(exc, FileNotFoundError) or code in _MISSING:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), url) from None
        if code in _CHANGED:
            raise OSError(errno.ESTALE, "the object changed while it was read", url) from None
        raise CurationError(store.describe(exc, f"reading {url}")) from None


@contextlib.contextmanager
def open_url(url: str, block_size: int = READ_BLOCK, etag: str | None = None) -> Iterator[StreamedObject]:
    """One object, open for streamed reading (``block_size``: the read-ahead of each ranged GET). With ``etag``,
    an object that no longer has it is an ``OSError`` (it changed since an earlier read, e.g. a verification)."""
    u = parse_input(url, "URL")
    store = store_for(u)
    with translated(store, url):
        raw = store.fs.open(u.path(), "rb", block_size=block_size, cache_type="readahead")
    f = StreamedObject(store, url, raw)
    try:
        if etag is not None and f.etag != etag:
            raise OSError(errno.ESTALE, "the object changed since it was verified", url)
        yield f
    finally:
        f.close()


def open_input(path: str, block_size: int = READ_BLOCK) -> Any:
    """A source file for reading: ``open(path, "rb")`` for a local path, :func:`open_url` for a URL."""
    return open_url(path, block_size) if is_url(path) else open(path, "rb")


def read_object(url: str, max_bytes: int, too_large: type[OSError] | None = None) -> bytes:
    """One object's bytes (one GET): its size is checked before its body is read. Over ``max_bytes`` raises
    ``too_large(reason, detail)`` (an ``ImageFileError``) or an ``OSError(EFBIG)``; missing: FileNotFoundError."""
    from fsspec.asyn import sync

    u = parse_input(url, "URL")
    if not u.prefix:
        raise IsADirectoryError(errno.EISDIR, "is a directory", url)
    store = store_for(u)

    async def get() -> tuple[int, bytes | None]:
        r = await store.fs._call_s3("get_object", Bucket=u.bucket, Key=u.prefix)
        size = int(r.get("ContentLength", 0))
        async with r["Body"] as stream:
            if size > max_bytes:
                return size, None  # closed unread
            return size, await stream.read()

    with translated(store, url):
        size, data = cast("tuple[int, bytes | None]", sync(store.fs.loop, get))
    if data is None:
        detail = f"{url}: {size} bytes > {max_bytes}"
        if too_large is not None:
            raise too_large("image_file_too_large", detail)  # type: ignore[call-arg]
        raise OSError(errno.EFBIG, detail)
    if len(data) != size:
        raise OSError(errno.EIO, f"{url}: {len(data)} of {size} bytes read")
    return data


# ---- the recipe ------------------------------------------------------------------------------------------------
def url_paths(recipe: Any) -> list[tuple[str, str]]:
    """(dotted field, value) of every recipe path that is a URL (sources, tokenizer, benchmarks, models)."""
    from curation.recipe.loading import _path_slots

    data = recipe.model_dump(mode="json")
    found = []
    for container, key in _path_slots(data):
        value = container.get(key)
        if isinstance(value, str) and is_url(value):
            name = container.get("name")
            found.append(
                (f"sources.{name}.{key}" if isinstance(name, str) and key in ("path", "image_root") else key, value)
            )
    return found


def check_inputs(recipe: Any) -> Any:
    """Before anything is read or written: the recipe's ``storage:`` options become this process's, and every
    recipe path that is a URL is one the build can read, with a supported scheme (never taken for a relative
    path): a source's ``path`` or ``image_root``, streamed by its reader; ``inputs_root``; any other path (a
    tokenizer, a model, benchmark files, a word list) is read whole, so it is copied into the cache. Returns the
    recipe to build, which points at the copies (``curation.storage.copies.localize``). Each URL gets a request
    first: wrong credentials, a missing bucket or a missing input are one line naming the recipe field, before
    anything is written (an ``image_root`` prefix may be empty: its images are then missing, as under an empty
    local folder)."""
    from curation.storage.copies import localize

    set_options(getattr(recipe, "storage", None))
    _known.clear()  # a new plan sees the store as it is now
    sources = {s.name: s for s in getattr(recipe, "sources", [])}
    for key, value in url_paths(recipe):
        parts = key.split(".")
        if key == "inputs_root":
            parse_input(value, key)
            continue
        src = sources.get(parts[1]) if len(parts) == 3 and parts[0] == "sources" else None
        if src is None or parts[2] not in ("path", "image_root"):
            continue  # read whole: copied into the cache below
        refuse_urls(src)
        _check_url(key, value, must_exist=parts[2] == "path")
    return localize(recipe)


def _check_url(key: str, value: str, must_exist: bool) -> None:
    """One listing request under ``value`` (its fixed part, for a glob)."""
    u = parse_input(value, key)
    store = store_for(u)
    prefix = _glob_parts(u.prefix)[0] if any(ch in u.prefix for ch in GLOB_CHARS) else u.prefix
    try:
        with store.errors(f"checking {value}"):
            page = store._call("list_objects_v2", Prefix=prefix, MaxKeys=1)
    except CurationError as exc:
        raise CurationError(f"{key}: {exc}") from None
    if must_exist and not page.get("Contents"):
        raise NoSuchInput(f"{key}: no such object or prefix: {value}")


def refuse_urls(source: Any) -> None:
    """A source whose reader does not stream from object storage, given a URL: a one-line RecipeError."""
    from curation.sources.base import reader_class

    cls = reader_class(source)
    for name in ("path", "image_root"):
        value = getattr(source, name, None)
        if isinstance(value, str) and is_url(value) and not cls.reads_urls:
            raise RecipeError(
                f"sources.{source.name}.{name}: {value}: the {source.reader} reader reads local paths only (URLs: "
                f"{', '.join(url_readers())}); copy the inputs to a local folder first (e.g. aws s3 sync)"
            )


def url_readers() -> list[str]:
    from curation.sources.base import reader_classes

    return sorted(name for name, cls in reader_classes().items() if cls.reads_urls)


def list_top(url: str, remember: bool = True) -> tuple[list[str], list[str]]:
    """The names directly under the prefix ``url``: (objects, folders), each sorted. One paginated listing with a
    delimiter, never recursive (a folder of an img2dataset ``files`` download holds millions of images), bounded
    as :func:`_list` is; the objects' (size, ETag) are remembered for :func:`object_info`. Failing requests are
    one-line errors; a prefix with nothing under it gives ([], [])."""
    u = parse_input(url, "URL")
    store = store_for(u)
    prefix = f"{u.prefix}/" if u.prefix else ""
    names: list[str] = []
    folders: list[str] = []
    token: str | None = None
    with store.errors(f"listing {url}"):
        while True:
            page = store._call(
                "list_objects_v2", Prefix=prefix, Delimiter="/", **({"ContinuationToken": token} if token else {})
            )
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                name = key[len(prefix) :]
                if name:  # a folder marker (the prefix itself) is no object of it
                    names.append(name)
                    if remember:  # not a folder of images: this process would keep an entry per image
                        _known[_url(u, key)] = ObjectInfo(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
            for common in page.get("CommonPrefixes", []):
                folder = str(common["Prefix"])[len(prefix) :].rstrip("/")
                if folder:
                    folders.append(folder)
            if len(names) + len(folders) > MAX_INPUT_OBJECTS:
                raise CurationError(
                    f"{url} holds more than {MAX_INPUT_OBJECTS:,} objects and folders; point it at the data files, "
                    "not at a folder of images"
                )
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
    return sorted(names), sorted(folders)
