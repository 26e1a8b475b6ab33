"""The step contract: everything the build runner needs to know of a recipe step is declared by the step's own
class, and a step is found by the class of its recipe config (``ImageDecodeStep`` -> ``ImageDecode``), never by
a name or a string. Three kinds:

- :class:`RecordStep`: one sample in, the sample (maybe changed) or a drop reason out, in the workers.
- :class:`BatchedStep`: samples gathered into batches for one call (an LLM, a model), in the workers.
- :class:`GlobalStep`: over the staged sidecars of the whole build, in the driver, after every partition.

Adding a step is one module with its class plus its config model in ``curation/recipe/steps.py`` (see
docs/architecture.md, "Adding a step").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from curation.recipe.steps import GlobalStepBase
from curation.registry import register_by_config
from curation.sample import Sample

if TYPE_CHECKING:
    from curation.build.messages import SidecarRef

_BY_CONFIG: dict[type[Any], type[Step]] = {}


@dataclass(frozen=True)
class Resources:
    """What one partition task needs of its machine while the step runs (a Ray task asks for it)."""

    cpus: float = 1.0
    gpus: float = 0.0
    gpu_optional: bool = False  # a model on device auto: without any GPU, the same work runs on CPU

    def joined(self, other: Resources) -> Resources:
        """Enough for both (steps of one partition run in the same process, one after another)."""
        gpus = max(self.gpus, other.gpus)
        optional = bool(gpus) and all(r.gpu_optional or not r.gpus for r in (self, other))
        return Resources(max(self.cpus, other.cpus), gpus, optional)

    def without_gpus(self) -> Resources:
        return Resources(self.cpus)


@dataclass(frozen=True)
class StepContext:
    """What a step instance may use of its build: its accounting label, the build's work directory (indexes
    prepared before the partitions, caches), the recipe's tokenizer (type, path) and its models."""

    label: str
    work: Path
    tokenizer: tuple[str, str | None] = ("regex", None)
    models: Mapping[str, Any] = field(default_factory=dict)  # the recipe's models: (name -> ModelConfig)


class Step(ABC):
    """Declared by every step class (class attributes; the defaults suit a plain filter):

    - ``config``: the recipe model it implements (registers the class);
    - ``drop_reasons``: every reason it can emit, with a one-line meaning (a key ending in ``:`` is a prefix:
      ``contaminated_image:`` stands for ``contaminated_image:<benchmark>``);
    - ``kinds``: the record kinds it accepts (None: any); ``converts``: (from kind, to kind) when it changes it;
    - ``resources(cfg)``: what the worker needs to run it (CPUs, GPUs), for executors that place tasks.
    """

    config: ClassVar[type[Any]]  # a recipe step model (pydantic)
    drop_reasons: ClassVar[dict[str, str]] = {}
    kinds: ClassVar[frozenset[str] | None] = None
    converts: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config = cls.__dict__.get("config")
        if config is not None and issubclass(cls, GlobalStep) != issubclass(config, GlobalStepBase):
            # the recipe orders steps by it
            raise TypeError(f"{cls.__name__} and its config {config.__name__} disagree on being a global step")
        register_by_config(_BY_CONFIG, cls)

    @classmethod
    def kind_error(cls, cfg: Any, kind: str) -> str | None:
        """Why this step cannot take ``kind`` records (as configured), or None."""
        if cls.kinds is not None and kind not in cls.kinds:
            return f"needs {' or '.join(sorted(cls.kinds))} records"
        return None

    @classmethod
    def output_kind(cls, kind: str) -> str:
        return cls.converts[1] if cls.converts is not None and cls.converts[0] == kind else kind

    @classmethod
    def resources(cls, cfg: Any, models: Mapping[str, Any]) -> Resources:
        """What a worker running this step needs (a GPU for a model on ``cuda``); one CPU by default."""
        return Resources()

    @classmethod
    def check_inputs(cls, cfg: Any, where: str, models: Mapping[str, Any]) -> None:
        """Before anything is written: the step's own inputs exist and are usable (raise CurationError)."""
        return None

    @classmethod
    def input_identity(cls, cfg: Any, models: Mapping[str, Any]) -> dict[str, Any]:
        """What the build plan records of the step's inputs beyond its config (e.g. a model's fingerprint), so
        a changed input is a changed build."""
        return {}

    @classmethod
    def prepare(cls, cfg: Any, label: str, work: Path, models: Mapping[str, Any]) -> None:
        """Once per build, before the partitions run: build-wide inputs (e.g. a benchmark index in ``work``)."""
        return None

    @classmethod
    def scores(cls, cfg: Any, label: str) -> list[str]:
        """The sidecar scores the step writes (into the record's meta and the sidecar ``scores`` map): by
        default what its config declares (``StepBase.score_names``), which the recipe also checks against."""
        names: Callable[[str], list[str]] | None = getattr(cfg, "score_names", None)
        return list(names(label)) if names is not None else []

    @classmethod
    def image_hashes(cls, cfg: Any) -> set[str]:
        """Perceptual-hash methods the workers must compute into the sidecars for this step."""
        return set()

    @classmethod
    def minhash_text(cls, cfg: Any) -> str | None:
        """The text (``qa``, ``questions``, ``answers``) whose MinHash signatures the workers must stage."""
        return None


class RecordStep(Step):
    """A step run on each sample in the workers."""

    # Report keys that describe one run (cache hits, timings), not the output: kept out of dataset.json.
    run_only_report_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, context: StepContext) -> None:
        self.cfg = cfg
        self.context = context

    @abstractmethod
    def __call__(self, sample: Sample) -> Sample | str:
        """The sample (maybe changed), or the reason it is dropped."""

    def report(self) -> dict[str, Any] | None:
        """What the step reports about its work in this partition (numbers add up across partitions)."""
        return None

    def stored_embeddings(self) -> dict[str, int]:
        """The embeddings (name -> dim) the step puts in ``Sample.embeddings`` to be stored beside each shard
        (``shards.embeddings``)."""
        return {}

    def close(self) -> None:
        """Release what the step holds (engines, caches) at the end of a partition."""

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        """Rates for the run log, from the merged report of a run of ``seconds``; a ``summary`` among them is the
        one line ``curate build`` prints about the step."""
        return None


class BatchedStep(RecordStep):
    """A step that takes samples in batches of ``batch_size`` (the partition's last batch may be smaller);
    results come back in the order of the batch."""

    batch_size: int

    def __call__(self, sample: Sample) -> Sample | str:
        return self.process_batch([sample])[0]

    @abstractmethod
    def process_batch(self, samples: list[Sample]) -> list[Sample | str]: ...


@dataclass(frozen=True)
class GlobalDrop:
    """Why a global step drops one staged sample."""

    source: str
    step: str
    reason: str
    detail: str
    other_source: str | None = None  # the source of the sample this one duplicates (per-source-pair reports)


Where = tuple[int, int]  # (partition id, shard number)
GlobalDrops = dict[Where, dict[str, GlobalDrop]]


class ShardRewrite(ABC):
    """Changes a global step makes to samples it keeps (``merge_qa`` grows conversations), applied by the
    commit when it writes the final shards. Picklable: the commit may run on other processes or nodes."""

    @abstractmethod
    def shards(self) -> set[Where]:
        """The staged shards (partition, shard number) it changes."""

    @abstractmethod
    def changes(self, where: Where) -> set[str]:
        """The keys of the samples it may change in one staged shard (the commit copies the others as bytes)."""

    @abstractmethod
    def only(self, where: Where) -> ShardRewrite:
        """The part of it that concerns one staged shard (what a commit task needs to carry)."""

    @abstractmethod
    def apply(self, where: Where, key: str, members: dict[str, bytes]) -> dict[str, bytes] | None:
        """The sample's new members, or None when it leaves ``key`` unchanged."""


Imap = Callable[[Callable[..., Any], list[tuple], Callable[[tuple], str]], Iterator[Any]]


@dataclass(frozen=True)
class GlobalContext:
    """What a global step may use of its build: the work directory (its indexes and spill files go under
    it), how many threads the driver may use, and ``imap``, which runs independent tasks on the executor's
    workers (Ray tasks on a cluster; in this process on the local executor) and yields their results in order."""

    work: Path
    threads: int = 1
    imap: Imap | None = None


@dataclass
class GlobalFindings:
    """What a global step decided: the samples it drops and, optionally, how it rewrites kept ones."""

    drops: GlobalDrops = field(default_factory=dict)
    rewrite: ShardRewrite | None = None


class GlobalStep(Step):
    """A step over the whole build's staged sidecars, in dataset order; it sees no sample an earlier global
    step dropped."""

    @classmethod
    @abstractmethod
    def find(
        cls, cfg: Any, label: str, sidecars: list[SidecarRef], already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        """The samples it drops (and the rewrites of kept samples), given those already dropped."""


def step_class(cfg: Any) -> type[Step]:
    """The class implementing a recipe step config."""
    import curation.steps.catalog  # noqa: F401 - registers every step class

    return _BY_CONFIG[type(cfg)]


def registered_steps() -> dict[type[Any], type[Step]]:
    import curation.steps.catalog  # noqa: F401 - registers every step class

    return dict(_BY_CONFIG)
