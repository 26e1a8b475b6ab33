"""The connection to an S3-compatible store (s3fs over aiobotocore): options, bounded retries, one-line errors.

Options come from the recipe's ``storage:`` block where a command has a recipe, else from the standard AWS
environment that botocore reads by itself: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_MAX_ATTEMPTS``. Credentials are never copied anywhere: not into a manifest, a card,
a log or an error message."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

from curation.errors import CurationError
from curation.recipe.storage import Storage
from curation.storage.urls import StoreURL

DEFAULT_MAX_ATTEMPTS = 8
SHA256_META = "sha256"  # x-amz-meta-sha256: the object's sha256, set by every upload of ours
MULTIPART_FROM = 100 << 20  # s3fs uploads files from this size in parts (completed last: the object appears whole)
_ACCESS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
    "403",
}
_THROTTLE = {"SlowDown", "503", "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded"}


class PreconditionFailed(Exception):
    """A conditional write or delete lost: the object exists (If-None-Match) or changed (If-Match)."""


class NotSupported(Exception):
    """The store does not implement a request (conditional writes on an older S3-compatible server)."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    sha256: str | None = None  # from our metadata (head only; listings carry no metadata)
    modified: float | None = None  # seconds since the epoch, the store's clock
    now: float | None = None  # the store's clock when it answered (its Date header)


def _s3fs() -> Any:
    try:
        import s3fs
    except ImportError:
        raise CurationError("s3:// URLs need s3fs: pip install 'vlm-curation[s3]' (or pip install s3fs)") from None
    return s3fs


def max_attempts(options: Storage | None) -> int:
    if options is not None and options.max_attempts is not None:
        return options.max_attempts
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "")))
    return DEFAULT_MAX_ATTEMPTS


def _error_code(exc: BaseException) -> tuple[str, str]:
    """(code, message) of the botocore error behind ``exc`` (s3fs translates them into OSErrors)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        if isinstance(response, dict) and "Error" in response:
            err = response["Error"]
            code = str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return code, " ".join(str(err.get("Message") or "").split())
        e = e.__cause__ or e.__context__
    return "", ""


def _exc_chain_names(exc: BaseException) -> set[str]:
    names: set[str] = set()
    e: BaseException | None = exc
    while e is not None and type(e).__name__ not in names:
        names.add(type(e).__name__)
        e = e.__cause__ or e.__context__
    return names


class Store:
    """The objects under one ``s3://bucket/prefix``; every path argument is relative to that prefix."""

    def __init__(self, url: StoreURL, options: Storage | None = None) -> None:
        self.url = url
        self.options = options
        self.attempts = max_attempts(options)
        s3fs = _s3fs()
        kwargs: dict[str, Any] = {
            "config_kwargs": {"retries": {"max_attempts": self.attempts, "mode": "standard"}},
            "use_listings_cache": False,
            "skip_instance_cache": True,
        }
        if options is not None:
            if options.endpoint_url:
                kwargs["endpoint_url"] = options.endpoint_url
            if options.profile:
                kwargs["profile"] = options.profile
            if options.anon:
                kwargs["anon"] = True
            if options.region:
                kwargs["client_kwargs"] = {"region_name": options.region}
        self.fs = s3fs.S3FileSystem(**kwargs)
        self.fs.retries = 1  # botocore's standard retry mode bounds the attempts (``attempts``); s3fs adds none

    @property
    def endpoint(self) -> str:
        """Where requests go (for messages): the configured endpoint or AWS's default."""
        if self.options is not None and self.options.endpoint_url:
            return self.options.endpoint_url
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"

    # -- errors
    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Any failure of a request is one line: what was being done, where, and what to fix."""
        try:
            yield
        except (CurationError, PreconditionFailed, NotSupported):
            raise
        except Exception as exc:
            raise CurationError(self.describe(exc, doing)) from None

    def describe(self, exc: BaseException, doing: str) -> str:
        code, message = _error_code(exc)
        where = f"{self.url} ({doing})"
        names = _exc_chain_names(exc)
        if "NoCredentialsError" in names or "PartialCredentialsError" in names:
            return (
                f"{where}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                "or storage.anon for a public bucket"
            )
        if code == "NoSuchBucket" or (code == "404" and doing == "checking the bucket"):
            return f"{where}: the bucket {self.url.bucket!r} does not exist at {self.endpoint}"
        if code in _ACCESS:
            detail = f"{code}: {message}" if message and code != "403" else "403 Forbidden"
            return (
                f"{where}: access denied ({detail}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
                f"AWS_PROFILE) and the bucket's permissions at {self.endpoint}"
            )
        if code in _THROTTLE:
            return (
                f"{where}: the store is throttling ({code}: {message or 'Slow Down'}) and still was after "
                f"{self.attempts} attempts; rerun later (finished work is kept) or raise AWS_MAX_ATTEMPTS / "
                "storage.max_attempts"
            )
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError"}:
            return f"{where}: cannot reach {self.endpoint} (after {self.attempts} attempts); check AWS_ENDPOINT_URL"
        if names & {"ReadTimeoutError", "TimeoutError"}:
            return f"{where}: {self.endpoint} did not answer in time (after {self.attempts} attempts)"
        if code:
            return f"{where}: {code}" + (f": {message}" if message else "")
        text = " ".join(str(exc).split())[:300]
        return f"{where}: {type(exc).__name__}" + (f": {text}" if text else "")

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One request; 412 and 501 become :class:`PreconditionFailed` and :class:`NotSupported`."""
        try:
            return self.fs.call_s3(method, Bucket=self.url.bucket, **kwargs)
        except Exception as exc:
            code, _ = _error_code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(code) from None
            if code in ("NotImplemented", "501"):
                raise NotSupported(code) from None
            raise

    # -- reads
    def check(self) -> None:
        """The bucket exists and these credentials may list it (one request; a clear error otherwise)."""
        with self.errors("checking the bucket"):
            self._call("list_objects_v2", Prefix=self.url.key(), MaxKeys=1)

    def list(self, rel: str = "") -> dict[str, ObjectInfo]:
        """Every object under ``rel`` (recursive): path relative to the prefix -> size and ETag."""
        base = self.url.key(rel)
        prefix = f"{base}/" if base else ""
        found: dict[str, ObjectInfo] = {}
        token: str | None = None
        with self.errors(f"listing {self.url.child(rel) if rel else self.url}"):
            while True:
                page = self._call("list_objects_v2", Prefix=prefix, **({"ContinuationToken": token} if token else {}))
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    name = key[len(self.url.key()) + 1 :] if self.url.prefix else key
                    if name and not name.endswith("/"):
                        found[name] = ObjectInfo(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
                if not page.get("IsTruncated"):
                    return found
                token = page.get("NextContinuationToken")

    def head(self, rel: str) -> ObjectInfo | None:
        with self.errors(f"reading {self.url.child(rel)}"):
            try:
                r = self._call("head_object", Key=self.url.key(rel))
            except FileNotFoundError:
                return None
        return _info(r, int(r.get("ContentLength", 0)))

    def get_bytes(self, rel: str) -> tuple[bytes, ObjectInfo] | None:
        with self.errors(f"reading {self.url.child(rel)}"):
            try:
                r = self._call("get_object", Key=self.url.key(rel))
            except FileNotFoundError:
                return None
            data = _read_body(self.fs, r)
        return data, _info(r, len(data))

    def get_file(self, rel: str, local: Path) -> None:
        """Download into ``local`` (through a temporary name: a killed download leaves no partial file)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self.errors(f"downloading {self.url.child(rel)}"):
                self.fs.get_file(self.url.path(rel), str(tmp))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    # -- writes
    def put_file(self, local: Path, rel: str, sha256: str) -> None:
        """Upload one file as one object (one PUT; a large one in parts, completed last), its sha256 in metadata."""
        size = local.stat().st_size
        with self.errors(f"uploading {self.url.child(rel)}"):
            self.fs.put_file(str(local), self.url.path(rel), Metadata={SHA256_META: sha256})
            if size >= MULTIPART_FROM:  # s3fs does not re-raise a failed multipart upload: check it arrived
                got = self.head(rel)
                if got is None or got.size != size or got.sha256 != sha256:
                    raise OSError(f"the multipart upload of {rel} did not complete")

    def put_bytes(
        self, rel: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        """One small object; conditional on its absence or on its current ETag (raises PreconditionFailed)."""
        cond: dict[str, str] = {}
        if if_none_match:
            cond["IfNoneMatch"] = "*"
        if if_match is not None:
            cond["IfMatch"] = f'"{if_match}"'
        with self.errors(f"writing {self.url.child(rel)}"):
            r = self._call("put_object", Key=self.url.key(rel), Body=data, **cond)
        return _info(r, len(data))

    def delete(self, rels: list[str]) -> None:
        keys = [self.url.key(r) for r in rels]
        with self.errors(f"deleting under {self.url}"):
            for start in range(0, len(keys), 1000):
                chunk = keys[start : start + 1000]
                r = self._call("delete_objects", Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
                if r.get("Errors"):
                    first = r["Errors"][0]
                    raise OSError(f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}")

    def delete_if(self, rel: str, etag: str) -> None:
        """Delete ``rel`` if it still has ``etag`` (a store without conditional deletes: unconditionally)."""
        with self.errors(f"deleting {self.url.child(rel)}"):
            try:
                self._call("delete_object", Key=self.url.key(rel), IfMatch=f'"{etag}"')
            except NotSupported:
                self._call("delete_object", Key=self.url.key(rel))
            except FileNotFoundError:
                pass


def _read_body(fs: Any, response: dict[str, Any]) -> bytes:
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with response["Body"] as stream:
            return await stream.read()

    return cast(bytes, sync(fs.loop, read))


def _info(response: dict[str, Any], size: int) -> ObjectInfo:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    modified = response.get("LastModified")
    now = None
    with contextlib.suppress(TypeError, ValueError):
        now = parsedate_to_datetime(headers["date"]).timestamp()
    return ObjectInfo(
        size=size,
        etag=str(response.get("ETag", "")).strip('"'),
        sha256=(response.get("Metadata") or {}).get(SHA256_META),
        modified=modified.timestamp() if modified is not None else None,
        now=now,
    )


def open_store(url: StoreURL, options: Storage | None = None, check: bool = True) -> Store:
    """A :class:`Store` for ``url``, its bucket checked (exists, these credentials may list it)."""
    store = Store(url, options)
    if check:
        store.check()
    return store
