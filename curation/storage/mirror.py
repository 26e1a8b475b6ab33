"""Reading a build in a bucket: its objects copied into a local mirror, where the local code reads them.

``curate verify``, ``audit``, ``inspect``, ``compare`` and ``export`` run unchanged on the mirror
``$VLM_CURATION_CACHE/mirror/<sha256(url)[:16]>/``, and so do mixtures, selection sweeps and ablations on a
dataset given by URL. Each copies what it reads: verify and export everything the prefix holds (so an object the
manifest lists but the bucket lacks is a verify problem, and a tar it does not list is one too), audit and
compare the manifests, stats and sidecars, inspect the first shards, a mixture or a sweep the shards (checked
against the manifest's sha256). An object already mirrored with the same size and ETag is not downloaded
again; a mirrored file the bucket no longer has is removed. Work objects (``_work/``), run logs and the lock
are never copied."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Literal

from curation.build.output_dir import LOGS, WORK
from curation.cache import cache_root
from curation.errors import CurationError
from curation.recipe.storage import Storage
from curation.storage.lock import LOCK
from curation.storage.store import ObjectInfo, Store, open_store
from curation.storage.urls import StoreURL, parse_url
from shards.atomic import atomic_write_json, sha256_file
from shards.manifest import MANIFEST_NAME, STATS_NAME, DatasetManifest

Want = Literal["all", "tables", "samples", "rejects", "shards"]
INDEX = "mirror-index.json"  # beside the mirror: what was copied (size, ETag) per object


def mirror_dir(url: StoreURL) -> Path:
    return cache_root() / "mirror" / hashlib.sha256(url.url.encode()).hexdigest()[:16]


def mirror(
    value: str, want: Want = "all", samples: int = 3, what: str = "DATASET", options: Storage | None = None
) -> Path:
    """A local copy of the build at URL ``value`` holding what a command reads (see the module docstring).
    ``shards`` (a mixture's or a selection's dataset): the manifest, ``stats.json`` and each shard's tar, sidecar
    and stats, each new copy checked against the sha256 the manifest records (a build replaced while it was read
    is an error, never a mix of two builds)."""
    url = parse_url(value, what)
    store = open_store(url, options)
    objects = {k: v for k, v in store.list().items() if k != LOCK and not k.startswith((f"{WORK}/", f"{LOGS}/"))}
    if MANIFEST_NAME not in objects:
        raise CurationError(f"{url} is not a built dataset (no {MANIFEST_NAME})")
    root = mirror_dir(url)
    root.mkdir(parents=True, exist_ok=True)
    index_path = root.with_name(root.name + "." + INDEX)
    index: dict[str, list] = {}
    with contextlib.suppress(OSError, ValueError):
        index = json.loads(index_path.read_text())
    _sync(store, root, {MANIFEST_NAME: objects[MANIFEST_NAME]}, index)
    try:
        manifest = DatasetManifest.model_validate_json((root / MANIFEST_NAME).read_bytes())
    except ValueError:
        manifest = None  # the local reader reports what is wrong with it
    chosen = {k: v for k, v in objects.items() if _wanted(k, want, manifest, samples)}
    if want == "shards":
        if manifest is None:
            raise CurationError(f"{url}: its {MANIFEST_NAME} is not valid; `curate verify {url}` says why")
        listed = {f for s in manifest.shards for f in (s.name, s.sidecar, s.stats)}
        lacking = sorted(listed - set(objects))
        if lacking:
            raise CurationError(
                f"{url}: {MANIFEST_NAME} lists {lacking[0]}, which the bucket lacks"
                + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else "")
                + f"; `curate verify {url}` checks the build"
            )
    _sync(store, root, chosen, index, remove=set(objects) if want != "all" else None, check=_sha256s(manifest, want))
    atomic_write_json(index_path, index)
    return root


def _sha256s(manifest: DatasetManifest | None, want: Want) -> dict[str, str]:
    """What the objects must hash to, where a copy is checked (``shards``) against its manifest."""
    if want != "shards" or manifest is None:
        return {}
    found = {s.name: s.sha256 for s in manifest.shards}
    found |= {s.sidecar: s.sidecar_sha256 for s in manifest.shards if s.sidecar_sha256}
    return found


def _wanted(key: str, want: Want, manifest: DatasetManifest | None, samples: int) -> bool:
    if want == "all" or key == MANIFEST_NAME:
        return True
    if manifest is None:
        return False
    if want == "tables":  # the audit and compare read sidecars and stats, never tars nor embeddings
        return not key.endswith((".tar", ".npy"))
    if want == "shards":  # what a mixture or a selection reads: the shards, never rejects nor embeddings
        return key == STATS_NAME or any(key in (s.name, s.sidecar, s.stats) for s in manifest.shards)
    shards = manifest.rejects if want == "rejects" else manifest.shards
    needed, total = set(), 0
    for s in shards:
        if total >= samples:
            break
        needed.add(s.name)
        total += s.samples
    return key in needed


def _sync(
    store: Store,
    root: Path,
    objects: dict[str, ObjectInfo],
    index: dict[str, list],
    remove: set[str] | None = None,
    check: dict[str, str] | None = None,
) -> None:
    """Download what changed; with ``remove`` None (a full copy), delete mirrored files the bucket lacks, else
    those not in ``remove`` (the bucket's keys): a partial copy keeps what it has of the current objects. A new
    copy of a key in ``check`` must hash to its sha256 there."""
    for key, info in sorted(objects.items()):
        local = root / key
        if local.is_file() and local.stat().st_size == info.size and index.get(key) == [info.size, info.etag]:
            continue
        index.pop(key, None)
        store.get_file(key, local)
        expected = (check or {}).get(key)
        if expected is not None and sha256_file(local) != expected:
            local.unlink()
            raise CurationError(
                f"{store.url.child(key)} is not the object its {MANIFEST_NAME} lists (sha256 differs): the build was "
                "replaced while it was read? Run the command again"
            )
        index[key] = [info.size, info.etag]
    keep = set(objects) if remove is None else remove
    for p in sorted(root.rglob("*"), reverse=True):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in keep:
            p.unlink()
            index.pop(rel, None)
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def remove_mirror(url: StoreURL) -> None:
    root = mirror_dir(url)
    shutil.rmtree(root, ignore_errors=True)
    root.with_name(root.name + "." + INDEX).unlink(missing_ok=True)


def wids_s3_handler():
    """A wids download handler for ``s3://`` URLs through s3fs and the AWS environment (endpoint included):
    ``wids.wids_dl.default_cmds["s3"] = wids_s3_handler()`` lets ``wids.ShardListDataset("s3://.../NAME.wids.json")``
    open a build in a bucket (wids' own handler runs the AWS CLI)."""

    def download(remote: str, local: str) -> str:
        url = parse_url(remote, "wids shard")
        store = Store(StoreURL(url.scheme, url.bucket, ""))
        store.get_file(url.prefix, Path(local))
        return local

    return download
