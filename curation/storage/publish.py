"""Builds into a bucket: the build runs in a local stage, then is published object by object, ``dataset.json``
last. Object stores have no rename, so nothing here relies on one:

1. the lock object ``<prefix>/_lock`` is taken (``curation.storage.lock``): a second build into the prefix is
   refused, as on a filesystem;
2. the bucket's state decides what to do, as ``OutputDir.state`` does for a directory: a complete build of this
   recipe (``dataset.json``) is left as it is, an unfinished one (``_work/plan.json``) resumes, a different one
   needs ``--overwrite``, objects this toolkit did not write are never replaced;
3. the local build (``curation.build.runner.build``, with every guarantee it has: resume after kill -9, exact
   accounting) runs in the stage ``$VLM_CURATION_CACHE/stage/<sha256(url)[:16]>``; the bucket's finished
   partitions under ``_work/`` are copied into the stage first, and each partition the build finishes is
   copied up, its ``stats.json`` last, so a rerun on another machine resumes too;
4. publishing: each shard's sidecar, stats and embeddings, then its tar (each one PUT; a large one in parts,
   completed last: an object is visible whole or not at all), the rejects, subsets, wids index, card, audit
   files and ``stats.json``, and ``dataset.json`` last. An object already there with the same size and sha256
   (object metadata) is not uploaded again, so a publish killed at any moment and rerun converges on the same
   objects. A ``dataset.json`` that differs from the new one is deleted before anything else is written;
5. clean-up: ``_work/`` and what an earlier build of this toolkit left that the new manifest does not list are
   deleted, the run log goes to ``_logs/``, the lock is released and the stage removed.

A reader (``curate verify``, a trainer) counts only what ``dataset.json`` lists; ``dataset.json`` appears after
everything it lists. A mixture (:func:`mixture_to_url`) goes the same way, each of its sub-builds published under
``_datasets/<alias>/`` as soon as it is done. On Ray the partition tasks publish their partitions themselves
(``curation.storage.work``): the nodes need the store, not the stage. See docs/storage.md."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.build.faults import crash_point
from curation.build.messages import STATS_FILE, PartitionStats
from curation.build.output_dir import CARD_NAME, DATASETS, LOGS, PLAN, WORK, BuildState, shard_file_pattern
from curation.build.plan import BuildPlan, plan_build
from curation.build.runner import BuildResult, build
from curation.cache import cache_root
from curation.errors import CurationError
from curation.recipe import BuildRecipe, MixtureRecipe, recipe_hash
from curation.recipe.storage import Storage
from curation.storage.inputs import check_inputs
from curation.storage.lock import LOCK, BucketLock
from curation.storage.store import ObjectInfo, Store, open_store
from curation.storage.urls import StoreURL
from curation.storage.work import PartitionChannel, partition_files, pull_missing_partition, pull_partition, stage_name
from shards.atomic import sha256_file
from shards.manifest import MANIFEST_NAME, STATS_NAME, DatasetManifest, ManifestError, read_manifest

WORK_PLAN = f"{WORK}/{PLAN}"
_PARTITION = re.compile(r"^_work/p(\d{5})/(.+)$")
_PARTITION_DIR = re.compile(r"^p\d{5}$")


def stage_dir(url: StoreURL) -> Path:
    """The local stage of builds into ``url``."""
    return cache_root() / "stage" / stage_name(url)


@dataclass(frozen=True)
class StagePlan:
    """What the bucket's state is judged by, for a mixture: its recipe's sha256 and the plan it records (a
    build's :class:`BuildPlan` has these too, and the sha256 of its inputs)."""

    recipe_sha256: str
    doc: dict[str, Any]
    sha256: str | None = None


Plan = BuildPlan | StagePlan


def build_to_url(
    recipe: BuildRecipe,
    url: StoreURL,
    *,
    workers: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    before_publish: Callable[[Path], None] | None = None,
) -> BuildResult:
    """Build ``recipe`` and publish it at ``url`` (see the module's docstring). ``before_publish`` may add files
    to the finished stage (the demo's audit report): they are published with the build."""
    recipe = check_inputs(recipe)
    store = open_store(url, recipe.storage)
    plan = plan_build(recipe, limit)  # the recipe and its inputs are checked before anything is written
    options = recipe.storage
    with BucketLock(store, options.lease_seconds if options else 60).held() as lock:
        state, objects, done = _claim(store, url, plan, overwrite)
        if done is not None:
            return done
        stage = stage_dir(url)
        prepare_stage(stage, plan)
        if state == BuildState.RESUME and not (stage / MANIFEST_NAME).is_file():
            pull_work(store, objects, stage)  # (a stage holding the finished build only needs publishing)
        channel = PartitionChannel.new(url, options) if executor == "ray" else None
        enabled = options.upload_partitions if options else True
        uploader = WorkUploader(store, stage, objects, enabled=enabled, channel=channel)
        uploader.push_finished()
        result = build(
            recipe,
            stage,
            workers=workers,
            limit=limit,
            progress=progress,
            executor=executor,
            address=address,
            on_staged=uploader,
            plan=plan,
            channel=channel,
        )
        if before_publish is not None:
            before_publish(stage)
        lock.check()
        publish(store, stage, lock)
        published = read_manifest(stage)
        clean_up(store, published, set(store.list()), _prefixes(store, objects, plan) | {published.name})
        upload_logs(store, stage)
    remove_stage(stage)
    if result.state == BuildState.COMPLETE:  # built by an earlier run, killed while publishing
        n = len(plan.partitions)
        return BuildResult(stage, published, BuildState.RESUME, n, n, result.seconds, result.log)
    state_ran = BuildState.RESUME if state == BuildState.RESUME else result.state
    return BuildResult(
        stage, published, state_ran, result.partitions, result.partitions_skipped, result.seconds, result.log
    )


def mixture_to_url(
    recipe: MixtureRecipe,
    url: StoreURL,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> BuildResult:
    """Build the mixture ``recipe`` and publish it at ``url``, as :func:`build_to_url` does a build: one lock, the
    bucket's state, a local stage. Each sub-build (``_datasets/<alias>``) is published as soon as it is done (its
    partitions copied to its own ``_work/`` meanwhile), so a rerun on another machine reuses it; the mixture's
    shards then, and its ``dataset.json`` last."""
    from curation.mixture.build import build_mixture

    options = recipe.storage
    store = open_store(url, options)
    rhash = recipe_hash(recipe)
    plan = StagePlan(rhash, {"recipe_sha256": rhash, "prefix": recipe.shard_prefix()})
    with BucketLock(store, options.lease_seconds if options else 60).held() as lock:
        state, objects, done = _claim(store, url, plan, overwrite)  # the sub-builds stay: an up-to-date one is reused
        if done is not None:
            return done
        stage = stage_dir(url)
        prepare_stage(stage, plan)
        if WORK_PLAN not in objects:  # a rerun finds an unfinished mixture of this recipe
            store.put_bytes(WORK_PLAN, json.dumps(plan.doc, sort_keys=True).encode())
        sub_builds = SubBuilds(store, lock, workers, progress, executor, address)
        result = build_mixture(
            recipe,
            stage,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
            executor=executor,
            address=address,
            build_one=sub_builds,
        )
        lock.check()
        publish(store, stage, lock)
        published = read_manifest(stage)
        clean_up(store, published, set(store.list()), _prefixes(store, objects, plan) | {published.name})
        upload_logs(store, stage)
    remove_stage(stage)
    ran = BuildState.RESUME if state == BuildState.RESUME or result.state == BuildState.COMPLETE else result.state
    return BuildResult(stage, published, ran, seconds=result.seconds, log=result.log)


class SubBuilds:
    """``build_one`` of a mixture into a bucket: each sub-build built in the stage like a build into
    ``<prefix>/_datasets/<alias>`` (its finished partitions copied to its ``_work/``, through the bucket on Ray),
    then published there at once, ``dataset.json`` last. One the bucket holds finished is copied into the stage
    instead of being built again (a rerun on another machine)."""

    def __init__(
        self, store: Store, lock: BucketLock, workers: int | None, progress: bool, executor: str, address: str | None
    ) -> None:
        self.store = store
        self.lock = lock
        self.options: Storage | None = store.options
        self.workers = workers
        self.progress = progress
        self.executor = executor
        self.address = address

    def __call__(self, alias: str, recipe: BuildRecipe, target: Path, replace: bool) -> None:
        url = self.store.url.child(f"{DATASETS}/{alias}")
        store = Store(url, self.options)
        objects = store.list()
        plan = plan_build(recipe, None)
        if not (target / MANIFEST_NAME).is_file() and not replace:
            self._pull(store, objects, plan, target)
        channel = PartitionChannel.new(url, self.options) if self.executor == "ray" else None
        enabled = self.options.upload_partitions if self.options else True
        uploader = WorkUploader(store, target, objects, enabled=enabled, channel=channel)
        uploader.push_finished()
        build(
            recipe,
            target,
            workers=self.workers,
            overwrite=replace,
            progress=self.progress,
            executor=self.executor,
            address=self.address,
            on_staged=uploader,
            plan=plan,
            channel=channel,
        )
        self.lock.check()
        publish(store, target, self.lock)
        store.delete(sorted(k for k in store.list(WORK)))
        upload_logs(store, target)

    def _pull(self, store: Store, objects: dict[str, ObjectInfo], plan: BuildPlan, target: Path) -> None:
        """What the bucket holds of this sub-build and the stage lacks: the finished build, or its partitions."""
        stats = _read_json(store, STATS_NAME) if MANIFEST_NAME in objects else None
        with contextlib.suppress(ManifestError, CurationError):
            if (
                isinstance(stats, dict)
                and stats.get("plan_sha256") == plan.sha256
                and _read_manifest(store).recipe_sha256 == plan.recipe_sha256
            ):
                remove_stage(target)
                for key in sorted(objects, key=lambda k: k == MANIFEST_NAME):  # dataset.json last
                    if key != LOCK and not key.startswith((f"{WORK}/", f"{LOGS}/")):
                        store.get_file(key, target / key)
                return
        recorded = target / WORK / PLAN
        here = json.loads(recorded.read_text()) if recorded.is_file() else plan.doc
        if here == plan.doc and _read_json(store, WORK_PLAN) == plan.doc:
            pull_work(store, objects, target)


# -- the bucket's state
def _claim(
    store: Store, url: StoreURL, plan: Plan, overwrite: bool
) -> tuple[BuildState, dict[str, ObjectInfo], BuildResult | None]:
    """Under the lock: where the bucket stands for ``plan``. A complete build there is tidied and returned (nothing
    to do); an earlier build to replace is cleared first (``_clear_for_new_build``)."""
    objects = store.list()
    state, manifest = bucket_state(store, objects, plan, overwrite)
    if state == BuildState.COMPLETE:
        assert manifest is not None
        clean_up(store, manifest, set(objects), _prefixes(store, objects, plan))
        return state, objects, BuildResult(stage_dir(url), manifest, BuildState.COMPLETE)
    if state == BuildState.CLEAR:
        _clear_for_new_build(store, objects, plan)
        objects = store.list()
    return state, objects, None


def bucket_state(
    store: Store, objects: dict[str, ObjectInfo], plan: Plan, overwrite: bool
) -> tuple[BuildState, DatasetManifest | None]:
    """What the prefix holds for this plan, as :meth:`OutputDir.state` tells it for a directory (raises
    CurationError for what ``overwrite`` does not allow replacing)."""
    url = store.url
    if MANIFEST_NAME in objects:
        try:
            manifest = _read_manifest(store)
        except ManifestError as exc:
            if not overwrite:
                raise CurationError(f"{url}: {exc}; pass --overwrite to replace it") from None
            return BuildState.CLEAR, None
        theirs = manifest.recipe_sha256
        if theirs == plan.recipe_sha256 and not overwrite:
            stats = _read_json(store, STATS_NAME)
            recorded = stats.get("plan_sha256") if isinstance(stats, dict) else None
            if recorded is not None and recorded != plan.sha256:
                raise CurationError(
                    f"{url} was built from this recipe, but its inputs have changed since; pass --overwrite to rebuild"
                )
            return BuildState.COMPLETE, manifest
        if not overwrite:
            raise CurationError(
                f"{url} holds a build of a different recipe (recipe sha256 {theirs[:12]}, this one "
                f"{plan.recipe_sha256[:12]}); pass --overwrite to replace it or choose another --out"
            )
        return BuildState.CLEAR, manifest
    if WORK_PLAN in objects:
        recorded_plan = _read_json(store, WORK_PLAN)
        same_recipe = isinstance(recorded_plan, dict) and recorded_plan.get("recipe_sha256") == plan.recipe_sha256
        if same_recipe and not overwrite:
            if recorded_plan != plan.doc:
                raise CurationError(
                    f"the inputs changed since the interrupted build in {url} started; pass --overwrite to start over"
                )
            return BuildState.RESUME, None
        if not overwrite:
            raise CurationError(
                f"{url} holds an unfinished build of a different recipe; pass --overwrite to discard it"
            )
        return BuildState.CLEAR, None
    foreign = [k for k in objects if not owned(k, _prefixes(store, objects, plan), manifest=False)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise CurationError(
            f"--out {url} is not empty and holds no build of this toolkit ({shown}); choose an empty prefix"
        )
    return (
        BuildState.CLEAR
        if any(k not in (LOCK,) and not k.startswith(f"{LOGS}/") for k in objects)
        else BuildState.FRESH
    ), None


def owned(key: str, prefixes: set[str], manifest: bool = True) -> bool:
    """Whether ``key`` (relative to the prefix) is an object this toolkit writes, as ``OutputDir`` tells files."""
    if key == LOCK or key.startswith((f"{WORK}/", f"{LOGS}/", f"{DATASETS}/")):
        return True
    shard = shard_file_pattern(prefixes)
    folder, _, name = key.rpartition("/")
    if folder == "subsets":
        return name.endswith(".wids.json")
    if folder == "rejects":
        return bool(shard.match(name))
    if folder:
        return False
    singles = {MANIFEST_NAME, STATS_NAME, *(f"{p}.wids.json" for p in prefixes)}
    if manifest:
        singles |= {CARD_NAME, "audit.html", "audit.md"}
    return name in singles or bool(shard.match(name))


def _prefixes(store: Store, objects: dict[str, ObjectInfo], plan: Plan) -> set[str]:
    """Shard prefixes of the builds recorded in the bucket (its manifest, its unfinished plan) and of this one."""
    found = {plan.doc.get("prefix", "")}
    if MANIFEST_NAME in objects:
        with contextlib.suppress(ManifestError, CurationError):
            found.add(_read_manifest(store).name)
    if WORK_PLAN in objects:
        doc = _read_json(store, WORK_PLAN)
        if isinstance(doc, dict):
            found.add(doc.get("prefix", ""))
    return {p for p in found if isinstance(p, str) and p}


def _clear_for_new_build(store: Store, objects: dict[str, ObjectInfo], plan: Plan) -> None:
    """--overwrite: the old manifest goes first (readers then see no build, never an old manifest over new
    shards), then the old work; the old shards are overwritten or deleted by the clean-up. Objects this toolkit
    did not write are refused, and nothing is deleted."""
    has_manifest = MANIFEST_NAME in objects
    prefixes = _prefixes(store, objects, plan)
    foreign = [k for k in objects if not owned(k, prefixes, manifest=has_manifest)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise CurationError(f"{store.url} holds objects this toolkit did not write ({shown}); refusing to overwrite it")
    if has_manifest:
        store.delete([MANIFEST_NAME])
    store.delete([k for k in objects if k.startswith(f"{WORK}/")])


def _read_manifest(store: Store, base: str = "") -> DatasetManifest:
    got = store.get_bytes(base + MANIFEST_NAME)
    if got is None:
        where = store.url.child(base) if base else store.url
        raise CurationError(f"{where} is not a built dataset (no {MANIFEST_NAME})")
    try:
        return DatasetManifest.model_validate_json(got[0])
    except ValueError as exc:
        raise ManifestError(
            f"{store.url.child(base + MANIFEST_NAME)}: not a valid {MANIFEST_NAME} ({exc.__class__.__name__})"
        ) from None


def _read_json(store: Store, rel: str) -> Any:
    got = store.get_bytes(rel)
    if got is None:
        return None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        return json.loads(got[0])
    return None


# -- the stage
def prepare_stage(stage: Path, plan: Plan) -> None:
    """Keep what the stage holds of this plan (an interrupted build, or a finished one not yet published);
    anything else in it is an older build's: removed (the stage is a cache, the bucket is the truth)."""
    keep = False
    if (stage / MANIFEST_NAME).is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            stats = json.loads((stage / STATS_NAME).read_text())
            same = read_manifest(stage).recipe_sha256 == plan.recipe_sha256
            keep = same and stats.get("plan_sha256") == plan.sha256  # (a mixture records no plan sha256)
    elif (stage / WORK_PLAN).is_file():
        with contextlib.suppress(OSError, ValueError):
            keep = json.loads((stage / WORK_PLAN).read_text()) == plan.doc
    if not keep:
        remove_stage(stage)
    stage.mkdir(parents=True, exist_ok=True)


def remove_stage(stage: Path) -> None:
    """The stage's files, but its run logs (small; the CLI reads the last one)."""
    if stage.is_dir():
        for child in stage.iterdir():
            if child.name == LOGS:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def pull_work(store: Store, objects: dict[str, ObjectInfo], stage: Path) -> None:
    """The bucket's finished partitions (and plan) that the stage lacks: a resumed build skips them."""
    work = stage / WORK
    if not (work / PLAN).is_file():
        store.get_file(WORK_PLAN, work / PLAN)
    by_partition: dict[int, list[str]] = {}
    for key in objects:
        m = _PARTITION.match(key)
        if m:
            by_partition.setdefault(int(m.group(1)), []).append(m.group(2))
    for gid, names in sorted(by_partition.items()):
        if STATS_FILE not in names or PartitionStats.is_done(work, gid):
            continue  # unfinished in the bucket, or here already
        pull_partition(store, work, gid, names)


class WorkUploader:
    """``on_staged`` of the build: copies the plan and each finished partition to the bucket's ``_work/``. With
    ``channel`` (Ray) the partition tasks copied their partitions up themselves: it copies down each one the
    stage lacks (its task ran on a node that does not share this disk)."""

    def __init__(
        self,
        store: Store,
        stage: Path,
        objects: dict[str, ObjectInfo],
        enabled: bool = True,
        channel: PartitionChannel | None = None,
    ) -> None:
        self.store = store
        self.stage = stage
        self.present = {k: v.size for k, v in objects.items() if k.startswith(f"{WORK}/")}
        self.enabled = enabled
        self.channel = channel

    def __call__(self, path: Path) -> None:
        if self.channel is not None and _PARTITION_DIR.match(path.name):  # (absent here when staged elsewhere)
            pull_missing_partition(self.store, path.parent, int(path.name[1:]))  # (nothing when it is here)
            return  # its task published it
        self._upload(path)

    def _upload(self, path: Path) -> None:
        if not self.enabled:
            return
        if path.is_file():
            self._put(path)
            return
        for f in partition_files(path):  # stats.json last
            self._put(f)

    def _put(self, path: Path) -> None:
        rel = path.relative_to(self.stage).as_posix()
        size = path.stat().st_size
        if self.present.get(rel) == size:
            return  # a partition is written once and never changes: the same name and size is the same object
        self.store.put_file(path, rel, sha256_file(path))
        self.present[rel] = size

    def push_finished(self) -> None:
        """Partitions an earlier attempt finished in this stage but never copied up (killed in between)."""
        work = self.stage / WORK
        if not self.enabled or not (work / PLAN).is_file():
            return
        self._upload(work / PLAN)
        for folder in sorted(work.glob("p[0-9][0-9][0-9][0-9][0-9]")):
            if (
                folder.is_dir()
                and (folder / STATS_FILE).is_file()
                and f"{WORK}/{folder.name}/{STATS_FILE}" not in self.present
            ):
                self._upload(folder)


# -- publishing
def publish_order(root: Path) -> list[str]:
    """Every file of the finished build in ``root`` in the order it is published: a mixture's sub-builds first
    (each in this order), each shard's sidecar, stats and embeddings before its tar, the rejects likewise,
    everything else, ``stats.json``, and ``dataset.json`` last. Work files, run logs and locks are not part of it."""
    manifest = read_manifest(root)
    order: list[str] = []
    datasets = root / DATASETS
    if datasets.is_dir():
        for sub in sorted(datasets.iterdir()):
            if (sub / MANIFEST_NAME).is_file():
                order += [f"{DATASETS}/{sub.name}/{rel}" for rel in publish_order(sub)]
    for s in [*manifest.shards, *manifest.rejects]:
        embeddings = [e.file for _, e in sorted((s.embeddings or {}).items())]
        order += [s.sidecar, s.stats, *embeddings, s.name]
    listed = set(order)
    rest = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        top = rel.split("/", 1)[0]
        if not p.is_file() or rel in listed or top in (WORK, LOGS, DATASETS, ".lock") or p.name.startswith("."):
            continue
        if rel not in (MANIFEST_NAME, STATS_NAME):
            rest.append(rel)
    return (
        [*order, *rest, STATS_NAME, MANIFEST_NAME] if (root / STATS_NAME).is_file() else [*order, *rest, MANIFEST_NAME]
    )


def known_sha256(root: Path) -> dict[str, str]:
    """The sha256 the manifests already record (tars, sidecars, embeddings): not read again to upload them."""
    known: dict[str, str] = {}

    def add(folder: str, manifest: DatasetManifest) -> None:
        base = f"{folder}/" if folder else ""
        for s in [*manifest.shards, *manifest.rejects]:
            known[base + s.name] = s.sha256
            if s.sidecar_sha256:
                known[base + s.sidecar] = s.sidecar_sha256
            for e in (s.embeddings or {}).values():
                known[base + e.file] = e.sha256

    add("", read_manifest(root))
    datasets = root / DATASETS
    if datasets.is_dir():
        for sub in sorted(datasets.iterdir()):
            if (sub / MANIFEST_NAME).is_file():
                add(f"{DATASETS}/{sub.name}", read_manifest(sub))
    return known


def publish(store: Store, root: Path, lock: BucketLock | None = None) -> tuple[int, int]:
    """Upload the finished build in ``root`` (see :func:`publish_order`); returns (uploaded, already there)."""
    order = publish_order(root)
    known = known_sha256(root)
    present = store.list()
    manifest_sha = sha256_file(root / MANIFEST_NAME)
    if MANIFEST_NAME in present:  # another manifest must not list objects that are about to change
        info = store.head(MANIFEST_NAME)
        if info is None or info.sha256 != manifest_sha:
            store.delete([MANIFEST_NAME])
            present.pop(MANIFEST_NAME, None)
    # A (sub-)build whose dataset.json is there already, the same, was published whole before it: skipped.
    done = _published_builds(store, root, present, order)
    uploaded = skipped = 0
    for rel in order:
        if lock is not None:
            lock.check()
        if any(rel.startswith(p) for p in done):
            skipped += 1
            continue
        local = root / rel
        sha = known.get(rel) or sha256_file(local)
        have = present.get(rel)
        if have is not None and have.size == local.stat().st_size:
            info = store.head(rel)
            if info is not None and info.sha256 == sha:
                skipped += 1
                continue
        crash_point("publish_object")
        store.put_file(local, rel, sha)
        uploaded += 1
    return uploaded, skipped


def _published_builds(store: Store, root: Path, present: dict[str, ObjectInfo], order: list[str]) -> list[str]:
    """The key prefixes ('' for the build itself, ``_datasets/<alias>/`` for a sub-build) whose ``dataset.json``
    the bucket holds with the sha256 of the local one: everything before it in the order is there already."""
    done = []
    for rel in order:
        if rel.rpartition("/")[2] == MANIFEST_NAME and rel in present:
            info = store.head(rel)
            if info is not None and info.sha256 == sha256_file(root / rel):
                done.append(rel[: -len(MANIFEST_NAME)])
    return [""] if "" in done else done


def clean_up(store: Store, manifest: DatasetManifest, present: set[str], prefixes: set[str]) -> None:
    """After ``dataset.json``: the work objects, and what earlier builds of this toolkit left that this build does
    not have (never an object this toolkit did not write, nor the lock or the run logs)."""
    keep = _listed(store, manifest)
    stale = [
        k
        for k in sorted(present)
        if k != LOCK
        and not k.startswith(f"{LOGS}/")
        and k not in keep
        and owned(k, prefixes | {manifest.name}, manifest=True)
    ]
    if stale:
        store.delete(stale)


def _listed(store: Store, manifest: DatasetManifest, base: str = "") -> set[str]:
    """The objects of the published build: what its manifest lists, and its other files (card, index, ...); for
    a mixture, those of each sub-build it names (and their run logs)."""
    keep = {MANIFEST_NAME, STATS_NAME, CARD_NAME, "audit.html", "audit.md"}
    for s in [*manifest.shards, *manifest.rejects]:
        keep |= {s.name, s.sidecar, s.stats, *(e.file for e in (s.embeddings or {}).values())}
    if manifest.wids_index:
        keep.add(manifest.wids_index)
    keep |= {str(v.get("wids_index")) for v in manifest.subsets.values() if v.get("wids_index")}
    keep = {base + k for k in keep}
    datasets = (manifest.mixture or {}).get("datasets")
    for alias, identity in (datasets or {}).items() if isinstance(datasets, dict) else ():
        sub = f"{DATASETS}/{alias}"
        if not isinstance(identity, dict) or identity.get("path") != sub:
            continue  # a dataset given by path or URL: not the mixture's own
        sub = f"{base}{sub}/"
        try:
            sub_manifest = _read_manifest(store, sub)
        except (ManifestError, CurationError):  # not readable: nothing of it is deleted
            keep |= set(store.list(sub.rstrip("/")))
            continue
        keep |= _listed(store, sub_manifest, sub) | set(store.list(f"{sub}{LOGS}"))
    return keep


def upload_logs(store: Store, stage: Path) -> None:
    """The run logs (never part of the build's identity) not in the bucket yet."""
    logs = stage / LOGS
    if not logs.is_dir():
        return
    present = store.list(LOGS)
    for p in sorted(logs.iterdir()):
        rel = f"{LOGS}/{p.name}"
        if p.is_file() and rel not in present:
            store.put_file(p, rel, sha256_file(p))
