"""Plan a build: check the recipe against its sources and steps, then cut the sources into partitions.

Everything that can fail on bad configuration or inputs fails here, before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from curation.build.relocate import Relocator, input_identity, relocator
from curation.errors import CurationError, RecipeError
from curation.recipe import BuildRecipe, step_label
from curation.recipe.loading import identity_doc
from curation.sources import Partition, Reader, make_reader
from curation.steps import step_class
from curation.steps.contract import GlobalStep, Resources, registered_steps
from curation.storage.inputs import check_inputs as check_url_inputs
from curation.storage.urls import is_url
from shards.atomic import content_sha256
from shards.tokens import TokenizerError, make_token_counter, tokenizer_fingerprint


@dataclass(frozen=True)
class BuildPlan:
    """The partitions of a build and the identity of its inputs (``doc`` is recorded in ``_work/plan.json``;
    a resumed build must find the same)."""

    recipe_sha256: str
    partitions: list[Partition]
    doc: dict[str, Any]
    resources: Resources = field(default_factory=Resources)  # per partition task: its record steps' needs, joined
    where: Relocator = field(default_factory=lambda: Relocator(None))  # records input paths relative to the input root

    @property
    def sha256(self) -> str:
        return content_sha256(self.doc)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)


def recipe_identity(recipe: BuildRecipe, limit: int | None) -> str:
    """The recipe's sha256 (= ``recipe_hash(recipe)`` without ``--limit``; a limited build is another build), its
    paths relative to the input root (``curation.build.relocate``): where the inputs are is not what they are."""
    identity = relocator(recipe).doc(identity_doc(recipe))
    if limit is not None:
        identity["limit"] = limit
    return content_sha256(identity)


def plan_build(recipe: BuildRecipe, limit: int | None) -> BuildPlan:
    recipe = check_url_inputs(recipe)  # the storage options for the reads; recipe files in a bucket copied
    partitions = plan_partitions(recipe, limit)
    rhash = recipe_identity(recipe, limit)
    where = relocator(recipe)
    doc = {
        "recipe_sha256": rhash,
        "prefix": recipe.shard_prefix(),
        "inputs": input_identity(recipe, where),  # changed input bytes are a changed build, moved ones are not
        "tokenizer": check_tokenizer(recipe.tokenizer),  # a changed tokenizer file is a changed input
        "partitions": where.doc([p.to_dict() for p in partitions]),
    }
    inputs = step_inputs(recipe)
    if inputs:  # e.g. model fingerprints: changed weights are a changed build
        doc["step_inputs"] = where.doc(inputs)
    models = source_inputs(recipe)
    if models:  # e.g. the OBELICS filters' language-id and perplexity models: a changed model is a changed build
        doc["source_inputs"] = models
    return BuildPlan(rhash, partitions, doc, partition_resources(recipe), where)


Call = Callable[[Callable[..., Any], tuple, Resources], Any]  # run fn(*args) where the resources are


def step_inputs(recipe: BuildRecipe) -> dict[str, Any]:
    """What each step records of its inputs beyond its config (``Step.identity``), by step label."""
    steps = recipe.steps
    found = {step_label(steps, i): step_class(s).input_identity(s, recipe.models) for i, s in enumerate(steps)}
    return {label: identity for label, identity in found.items() if identity}


def source_inputs(recipe: BuildRecipe) -> dict[str, Any]:
    """What each source records of its inputs beyond its files (``Reader.input_identity``), by source name."""
    found = {src.name: make_reader(src).input_identity() for src in recipe.sources}
    return {name: identity for name, identity in found.items() if identity}


def partition_resources(recipe: BuildRecipe) -> Resources:
    """What a worker needs to run the recipe's record and batched steps (global steps run in the driver)."""
    needed = Resources()
    for step in recipe.steps:
        cls = step_class(step)
        if not issubclass(cls, GlobalStep):
            needed = needed.joined(cls.resources(step, recipe.models))
    return needed


def check_sources_outside(recipe: BuildRecipe, out: Path) -> None:
    for src in recipe.sources:
        if is_url(src.path):  # in a bucket: never under a local --out
            continue
        path = Path(src.path.split("*")[0] or ".").resolve()
        if path == out or out in path.parents or (path.is_dir() and path in out.parents):
            raise CurationError(
                f"sources.{src.name}.path ({src.path}) and --out ({out}) overlap; the build would read its own output"
            )


def check_tokenizer(tokenizer: Any) -> str:
    """Load the recipe's tokenizer once here (a bad one fails before anything is written); its fingerprint."""
    try:
        make_token_counter(tokenizer.type, tokenizer.path)
        return tokenizer_fingerprint(tokenizer.type, tokenizer.path)
    except TokenizerError as exc:
        raise RecipeError(str(exc)) from None


def plan_partitions(recipe: BuildRecipe, limit: int | None) -> list[Partition]:
    """Every source's partitions in recipe order, cut to the source's ``limit`` and the build's ``limit``."""
    readers = {s.name: make_reader(s) for s in recipe.sources}
    check_kinds(recipe, readers)
    for i, step in enumerate(recipe.steps):
        step_class(step).check_inputs(step, f"steps.{i}", recipe.models)
    plan: list[Partition] = []
    remaining = limit
    for src in recipe.sources:
        src_left = src.limit
        for p in readers[src.name].plan():
            rows = min([p.rows, *(cap for cap in (src_left, remaining) if cap is not None)])
            if rows <= 0:
                break
            plan.append(p if rows == p.rows else readers[src.name].truncate(p, rows))
            src_left = None if src_left is None else src_left - rows
            remaining = None if remaining is None else remaining - rows
    return plan


def check_kinds(recipe: BuildRecipe, readers: dict[str, Reader]) -> None:
    """Follow each source's record kind through the steps, as each step class declares what it takes and
    makes, to the output kind."""
    for src in recipe.sources:
        kind = readers[src.name].record_kind()
        for i, step in enumerate(recipe.steps):
            cls = step_class(step)
            problem = cls.kind_error(step, kind)
            if problem:
                raise RecipeError(
                    f"steps.{i} ({step.step}) {problem}, but source {src.name!r} has {kind} records at this step; "
                    "convert them first (e.g. pair_to_sft) or change the step"
                )
            kind = cls.output_kind(kind)
        if kind != recipe.output.kind:
            fixes = [
                get_args(cfg.model_fields["step"].annotation)[0]  # the step's type, as a recipe names it
                for cfg, cls in registered_steps().items()
                if cls.converts == (kind, recipe.output.kind)
            ]
            fix = f" (add a {fixes[0]!r} step)" if fixes else ""
            raise RecipeError(
                f"sources.{src.name}: produces {kind!r} records but output.kind is {recipe.output.kind!r}{fix}"
            )


def prepare_steps(recipe: BuildRecipe, work: Path, call: Call | None = None) -> None:
    """Build-wide inputs of steps, made once before the partitions run (e.g. benchmark indexes). A step whose
    preparation runs a model on a GPU (embedding benchmark images) is prepared through ``call``: on Ray, a task
    with the step's resources, so its vectors come from the same kind of device as the workers'."""
    for i, step in enumerate(recipe.steps):
        cls = step_class(step)
        args = (step, step_label(recipe.steps, i), work, recipe.models)
        needed = cls.resources(step, recipe.models)
        if call is not None and needed.gpus:
            call(prepare_step, args, needed)
        else:
            prepare_step(*args)


def prepare_record_steps(recipe: BuildRecipe, work: Path) -> None:
    """The preparations the partition tasks read (a record step's benchmark index), made in ``work`` by a node
    that stages on its own disk (a build into a bucket on Ray); a global step's is the driver's alone."""
    for i, step in enumerate(recipe.steps):
        if not issubclass(step_class(step), GlobalStep):
            prepare_step(step, step_label(recipe.steps, i), work, recipe.models)


def prepare_step(step: Any, label: str, work: Path, models: Any) -> None:
    """One step's preparation (a plain function: what an executor ships to a Ray task)."""
    step_class(step).prepare(step, label, work, models)
