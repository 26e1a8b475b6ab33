"""Selection sweeps (``kind: selection``): Individual Select over categories of candidate datasets, each trial a
fine-tune and an evaluation; and the trainer, evaluator and launcher configs that ablation sweeps share."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from curation.recipe.build import BuildRecipe, Tokenizer
from curation.recipe.common import (
    DOTTED_NAME_PATTERN,
    NAME_MAX,
    NAME_PATTERN,
    NOT_IDENTITY,
    PathStr,
    _check_unique,
    _Strict,
)
from curation.recipe.mixture import Component, DatasetAlias, DatasetRef, MixtureRecipe, name_inline_builds
from curation.recipe.steps import Benchmark, DecontaminationMatch


# ---- trainer -------------------------------------------------------------------------------------
class PeftConfig(_Strict):
    method: Literal["lora", "dora", "none"] = Field(default="lora", description="none: train all parameters.")
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ReferenceTrainerConfig(_Strict):
    """transformers + PEFT on any ``AutoModelForImageTextToText`` directory, loss on answer tokens only."""

    type: Literal["reference"]
    model: str = Field(description="A local model directory (model + processor).")
    peft: PeftConfig = Field(default_factory=PeftConfig)
    epochs: float = Field(default=1.0, gt=0.0, description="Passes over the trial's mixture (fractions allowed).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    neftune_alpha: float | None = Field(default=None, gt=0.0, description="NEFTune noise on input embeddings (e.g. 5).")
    max_length: int = Field(default=2048, ge=16, description="Tokens per sample (longer ones are truncated).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field(default="auto", description="auto (cuda when visible, else cpu), cpu, cuda.")
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=1,
        description='Processes per trial through torchrun (data parallel); "auto" = one per visible GPU, 1 on CPU.',
    )


class CommandTrainerConfig(_Strict):
    """Any training command. It is run as ``command`` with these placeholders filled: {mixture} (the trial's
    mixture manifest, a parquet of shard paths and sample indices in training order), {output} (a
    directory to write into), {seed}, {trial_dir}. It must write {output}/metrics.json (a JSON object) and
    exit 0; the built-in evaluator then loads the model from {output} (or use a command evaluator)."""

    type: Literal["command"]
    command: Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = Field(default_factory=dict)


TrainerConfig = Annotated[ReferenceTrainerConfig | CommandTrainerConfig, Field(discriminator="type")]


# ---- evaluator -----------------------------------------------------------------------------------
class BenchmarkSet(_Strict):
    """An evaluation set: a dataset built by this toolkit whose ``sft`` records carry their references in
    ``meta`` (``metric``: vqa_accuracy | anls | multiple_choice | mme; ``references``; ``options``; MME's
    ``subtask``, ``image_id``, ``category``)."""

    name: str = Field(pattern=DOTTED_NAME_PATTERN, max_length=NAME_MAX)
    shards: PathStr = Field(description="A dataset directory built by this toolkit.")
    limit: int | None = Field(default=None, ge=1, description="Evaluate on the first N samples only.")


class ScoreConfig(_Strict):
    """How a trial's metrics become one score: each metric (``benchmark/metric``) times its scale, then the
    mean (the paper: MME total / 28 to 0-100, then the average of the four benchmarks)."""

    metrics: dict[str, float] = Field(
        description="benchmark/metric -> scale, e.g. {mme/total: 0.0357, vqa/accuracy: 100}."
    )
    aggregate: Literal["mean"] = "mean"


class BuiltinEvaluatorConfig(_Strict):
    type: Literal["builtin"]
    benchmarks: Annotated[list[BenchmarkSet], Field(min_length=1)]
    max_new_tokens: int = Field(default=16, ge=1)
    batch_size: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _unique(self) -> BuiltinEvaluatorConfig:
        _check_unique("benchmark", [b.name for b in self.benchmarks])
        return self


class HarnessEvaluatorConfig(_Strict):
    """lmms-eval or VLMEvalKit run as a command (placeholders {model} = the trained output, {output}); their
    result files are parsed: lmms-eval ``{output}/**/*_results.json``, VLMEvalKit ``*_acc.csv`` and
    ``*_score.csv``."""

    type: Literal["lmms_eval", "vlmevalkit"]
    command: Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = Field(default_factory=dict)


class CommandEvaluatorConfig(_Strict):
    """Any command that writes {output}/metrics.json as {"benchmark/metric": value, ...}."""

    type: Literal["command"]
    command: Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = Field(default_factory=dict)


EvaluatorConfig = Annotated[
    BuiltinEvaluatorConfig | HarnessEvaluatorConfig | CommandEvaluatorConfig, Field(discriminator="type")
]


# ---- launcher ------------------------------------------------------------------------------------
class LocalLauncherConfig(_Strict):
    """A pool over the visible GPUs: ``max_concurrent`` trials of ``gpus_per_trial`` GPUs each (set through
    CUDA_VISIBLE_DEVICES); CPU trials when there is no GPU (``gpus_per_trial: 0``)."""

    type: Literal["local"]
    gpus_per_trial: int = Field(default=0, ge=0)
    max_concurrent: int = Field(default=1, ge=1)
    timeout: float | None = Field(default=None, gt=0, description="Seconds before a trial is killed (timeout).")


class RayLauncherConfig(_Strict):
    """One Ray task per trial, with ``num_gpus`` GPUs (Ray sets CUDA_VISIBLE_DEVICES) and ``num_cpus`` CPUs; the
    sweep directory must be on a filesystem shared by the driver and every Ray node."""

    type: Literal["ray"]
    address: str | None = Field(
        default=None,
        description="The Ray cluster (host:port or ray://host:port) [default: RAY_ADDRESS, else a Ray started "
        "here]; unused when this process is connected to Ray already.",
    )
    num_gpus: float = Field(
        default=0, ge=0, description="GPUs per trial (a fraction shares a GPU; 0: CUDA_VISIBLE_DEVICES is empty)."
    )
    num_cpus: float = Field(default=1, gt=0, description="Ray CPUs per trial.")
    timeout: float | None = Field(default=None, gt=0, description="Seconds before a trial is killed (timeout).")


class SlurmLauncherConfig(_Strict):
    """submitit: one Slurm job per trial."""

    type: Literal["slurm"]
    partition: str | None = None
    gpus_per_node: int = Field(default=1, ge=0)
    cpus_per_task: int = Field(default=8, ge=1)
    mem_gb: int = Field(default=64, ge=1)
    timeout_min: int = Field(default=240, ge=1)
    folder: str | None = Field(default=None, description="submitit logs [default: <sweep>/slurm].")
    additional_parameters: dict[str, Any] = Field(default_factory=dict)
    executor: Literal["slurm", "local", "debug"] = Field(
        default="slurm", description="local/debug: submitit without Slurm."
    )


LauncherConfig = Annotated[LocalLauncherConfig | RayLauncherConfig | SlurmLauncherConfig, Field(discriminator="type")]


# ---- the sweep -----------------------------------------------------------------------------------
class Candidate(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    components: Annotated[list[Component], Field(min_length=1)]


class Category(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    candidates: Annotated[list[Candidate], Field(min_length=1)]


class Baseline(_Strict):
    components: Annotated[list[Component], Field(min_length=1)]


class DecisionConfig(_Strict):
    """How a candidate is judged against its baseline, on the seeds both ran (paired). ``tolerance``: accepted
    when the mean score delta >= -``tolerance`` ("comparable" counts). ``interval``: accepted when the
    bootstrap interval of the delta (over items and seeds) lies above -``tolerance``, rejected when it lies
    below, otherwise another seed of both trials runs, up to ``max_seeds``, then the delta decides."""

    rule: Literal["tolerance", "interval"] = "tolerance"
    tolerance: float = Field(default=0.0, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Coverage of the delta's interval.")
    min_seeds: int = Field(
        default=1,
        ge=1,
        description="interval rule: seeds before an interval may decide (1: the items' noise only; 2 or more "
        "include the seed-to-seed noise of training).",
    )
    max_seeds: int = Field(default=3, ge=1, description="interval rule: seeds a candidate may use at most.")
    resamples: int = Field(default=2000, ge=100, le=100_000, description="Bootstrap resamples per comparison.")


class ContaminationConfig(DecontaminationMatch):
    """Every trial's mixture is checked against the benchmarks its evaluator scores (the built-in evaluator's
    own; for lmms-eval, VLMEvalKit or a command, the benchmark data listed here). ``flag``: overlapping
    training samples are counted and named in the report; ``refuse``: a trial whose mixture overlaps is not
    run (the sweep stops before training it); ``off``: no check."""

    action: Literal["flag", "refuse", "off"] = "flag"
    benchmarks: list[Benchmark] = Field(
        default_factory=list, description="The benchmark data an external evaluator scores (built or raw)."
    )

    @model_validator(mode="after")
    def _unique(self) -> ContaminationConfig:
        _check_unique("contamination benchmark", [b.name for b in self.benchmarks])
        return self


class SelectionRecipe(_Strict):
    kind: Literal["selection"]
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    description: str = ""
    seed: int = 0
    vars: dict[str, str | int | float] = Field(default_factory=dict, json_schema_extra=NOT_IDENTITY)  # substituted
    datasets: Annotated[dict[DatasetAlias, DatasetRef], Field(min_length=1)]
    baseline: Baseline
    categories: Annotated[list[Category], Field(min_length=1)]
    trainer: TrainerConfig
    evaluator: EvaluatorConfig
    score: ScoreConfig
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="One trial per seed; decisions on the mean."
    )
    launcher: LauncherConfig = Field(default_factory=lambda: LocalLauncherConfig(type="local"))
    retries: int = Field(default=1, ge=0, description="Extra attempts of a failed trial.")
    final_all_candidates: bool = Field(default=False, description="Also train baseline + every candidate (Table 5).")
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)

    @model_validator(mode="before")
    @classmethod
    def _inline_build_names(cls, data: Any) -> Any:
        return name_inline_builds(data)

    @model_validator(mode="after")
    def _consistent(self) -> SelectionRecipe:
        _check_unique("category", [c.name for c in self.categories])
        _check_unique("candidate", [c.name for cat in self.categories for c in cat.candidates])
        components = [
            *self.baseline.components,
            *(x for cat in self.categories for c in cat.candidates for x in c.components),
        ]
        for comp in components:
            if comp.dataset not in self.datasets:
                raise ValueError(f"component {comp.name}: no dataset {comp.dataset!r} under datasets")
        _check_unique("seed", [str(s) for s in self.seeds])
        gate = self.contamination
        if self.evaluator.type == "builtin" and gate.benchmarks:
            raise ValueError(
                "contamination.benchmarks is for lmms_eval, vlmevalkit and command evaluators; the built-in "
                "evaluator's benchmarks are checked already"
            )
        if self.evaluator.type != "builtin" and gate.action == "refuse" and not gate.benchmarks:
            raise ValueError(
                "contamination.action is refuse, but nothing names the benchmark data this evaluator scores: "
                "list it under contamination.benchmarks"
            )
        if self.decision.min_seeds > self.decision.max_seeds:
            raise ValueError(
                f"decision.min_seeds ({self.decision.min_seeds}) exceeds max_seeds ({self.decision.max_seeds})"
            )
        if self.decision.rule == "interval" and self.decision.max_seeds < len(self.seeds):
            raise ValueError(
                f"decision.max_seeds ({self.decision.max_seeds}) is below the {len(self.seeds)} seeds listed; "
                "raise max_seeds or list fewer seeds"
            )
        return self


RECIPE_KINDS: dict[str, type[BaseModel]] = {
    "build": BuildRecipe,
    "mixture": MixtureRecipe,
    "selection": SelectionRecipe,
}
