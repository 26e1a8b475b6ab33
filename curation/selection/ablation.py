"""Ablation sweeps: ``curate sweep PLAN.md --spec SPEC.yaml``.

The plan (the format of tests/fixtures/ablation_plans/*.md; docs/selection.md) names ablated parts and
their replacement values;
the spec maps each part to a key of the unablated trial configuration (``base``) and the plan's metrics to
the evaluator's. Every (replacement, seed) and the unablated configuration become trials of the same engine
as Individual Select (cached, retried, resumable); the report gives each replacement against the unablated
trial, per metric.

``base`` holds: ``datasets`` (as in a mixture), ``components``, ``trainer``, ``evaluator``, ``score``, and
optionally ``launcher``, ``retries``, ``tokenizer``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from rich.console import Console

from curation.errors import CurationError
from curation.recipe.build import Tokenizer
from curation.recipe.common import _Strict
from curation.recipe.mixture import Component, DatasetAlias, DatasetRef, name_inline_builds
from curation.recipe.selection import EvaluatorConfig, LauncherConfig, LocalLauncherConfig, ScoreConfig, TrainerConfig
from shards.atomic import atomic_write_bytes, atomic_write_json


class TrialConfig(_Strict):
    datasets: Annotated[dict[DatasetAlias, DatasetRef], Field(min_length=1)]
    components: Annotated[list[Component], Field(min_length=1)]
    trainer: TrainerConfig
    evaluator: EvaluatorConfig
    score: ScoreConfig
    launcher: LauncherConfig = Field(default_factory=lambda: LocalLauncherConfig(type="local"))
    retries: int = Field(default=1, ge=0)
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)

    @model_validator(mode="before")
    @classmethod
    def _inline_build_names(cls, data: Any) -> Any:
        return name_inline_builds(data)


def _config(data: dict[str, Any], what: str) -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CurationError(f"{what}: {where}: {first['msg']}") from None


def run_ablation(
    plan: Path,
    spec_path: Path,
    out: Path,
    *,
    workers: int | None = None,
    console: Console | None = None,
    executor: str = "local",
    address: str | None = None,
) -> dict:
    from curation.build.output_dir import OutputDir
    from curation.mixture.datasets import resolve_datasets
    from curation.selection.engine import run_trials
    from curation.selection.launchers import make_launcher
    from curation.selection.launchers.process import TrialTask
    from curation.selection.plans import expand, load_plan, load_spec, metric_keys, unablated, unmapped_metrics
    from curation.selection.store import TrialStore
    from curation.selection.sweep import STORE_NAME, console_events
    from curation.selection.trials import VirtualMixture, prepare_trial
    from curation.storage.copies import fetch_recipe_files

    console = console or Console(stderr=True)
    ablations = load_plan(plan)
    spec = load_spec(spec_path)
    variants = expand(spec, ablations)
    base = _config(unablated(spec), "spec base")
    configs: list[tuple[str, str | None, str | None, TrialConfig]] = [("unablated", None, None, base)]
    for v in variants:
        cfg = _config(v.config, f"ablation {v.ablation!r}, replacement {v.replacement!r}")
        if cfg.datasets != base.datasets:
            raise CurationError(
                f"ablation {v.ablation!r}: the datasets cannot be ablated (map the part to another key)"
            )
        configs.append((v.ablation, v.part, v.replacement, cfg))
    target = OutputDir(Path(out))
    out = target.root
    target.create()
    with target.lock():
        dirs = resolve_datasets(base, out, workers, True, executor, address)
        # a trainer model or benchmarks in a bucket: copied into the cache
        configs = [(name, part, replacement, fetch_recipe_files(cfg)) for name, part, replacement, cfg in configs]
        store = TrialStore(out / STORE_NAME)
        launcher = make_launcher(base.launcher, out, ray_address=address)
        tasks, rows = {}, []
        for ablation, part, replacement, cfg in configs:
            ids = []
            for seed in spec.seeds:
                mixture = VirtualMixture(tuple(cfg.components), dirs, seed, cfg.tokenizer)
                label = "unablated" if part is None else f"{ablation}: {part} = {replacement}"
                tid, directory = prepare_trial(
                    out / "trials", mixture, cfg.trainer.model_dump(mode="json"), cfg.evaluator.model_dump(mode="json"),
                    cfg.score.model_dump(mode="json"), seed, label,
                )  # fmt: skip
                gpus = getattr(cfg.launcher, "gpus_per_trial", None) or int(getattr(cfg.launcher, "num_gpus", 0) or 0)
                tasks[tid] = TrialTask(tid, directory, gpus)
                ids.append(tid)
            rows.append({"ablation": ablation, "part": part, "replacement": replacement, "trials": ids})
        records = run_trials(list(tasks.values()), launcher, store, base.retries, console_events(console))
    mapping = metric_keys(spec, ablations)
    for row in rows:
        ok = [res for t in row["trials"] if records[t].status == "ok" and (res := records[t].result) is not None]
        row["failed"] = [{"trial": t, "error": records[t].error, "log": str(records[t].log)} for t in row["trials"]
                         if records[t].status != "ok"]  # fmt: skip
        row["score"] = statistics.fmean(r["score"] for r in ok) if ok else None
        keys = sorted(set().union(*(r["metrics"] for r in ok))) if ok else []
        row["metrics"] = {k: statistics.fmean(r["metrics"][k] for r in ok if k in r["metrics"]) for k in keys}
    reference = rows[0]
    for row in rows[1:]:
        row["delta"] = None if row["score"] is None or reference["score"] is None else row["score"] - reference["score"]
        row["metric_deltas"] = {
            k: v - reference["metrics"][k] for k, v in row["metrics"].items() if k in reference["metrics"]
        }
    doc = {
        "plan": str(plan),
        "spec": spec.name,
        "seeds": spec.seeds,
        "metric_keys": mapping,
        "unmapped_metrics": unmapped_metrics(spec, ablations),
        "unablated": reference,
        "variants": rows[1:],
    }
    atomic_write_json(out / "ablation_report.json", doc)
    atomic_write_bytes(out / "ablation_report.md", ablation_markdown(doc).encode())
    return doc


def ablation_markdown(doc: dict[str, Any]) -> str:
    """The report as markdown (the audit report's renderer)."""
    from curation.report.audit_page import Section, render_markdown

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    ref = doc["unablated"]
    head = Section("summary", f"Ablation sweep: {doc['spec']}")
    head.text(f"Plan: {doc['plan']}; seeds {doc['seeds']}.")
    head.text(f"Unablated score: {fmt(ref['score'])}")
    parts = [head]
    shown = [k for k in doc["metric_keys"].values() if k] or sorted(ref["metrics"])
    for ablation in dict.fromkeys(v["ablation"] for v in doc["variants"]):
        rows = [v for v in doc["variants"] if v["ablation"] == ablation]
        sec = Section(ablation, f"{ablation}: {rows[0]['part']}")
        table = []
        for v in rows:
            cells = [f"{fmt(v['metrics'].get(k))} ({fmt(v['metric_deltas'].get(k))})" for k in shown]
            score = "failed" if v["score"] is None else fmt(v["score"])
            table.append([str(v["replacement"]), score, fmt(v.get("delta")), *cells])
        sec.table(
            "against the unablated trial", ["replacement", "score", "Δ score", *[f"{k} (Δ)" for k in shown]], table
        )
        parts.append(sec)
    if doc["unmapped_metrics"]:
        parts[-1].text("Plan metrics the spec does not map (not reported): " + ", ".join(doc["unmapped_metrics"]))
    return render_markdown(head.title, parts)
