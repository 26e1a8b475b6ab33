"""Running a selection sweep in a directory: datasets (built first when given as recipes), the trial store
(``trials.sqlite``), the launcher, Individual Select, the reports. Rerunning the same command resumes:
finished trials are cache hits, a killed sweep continues where it stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from curation.recipe import SelectionRecipe

STORE_NAME = "trials.sqlite"


def console_events(console: Console) -> Callable[[str, dict[str, Any]], None]:
    def on_event(kind: str, info: dict[str, Any]) -> None:
        tid = info.get("id", "")
        if kind == "ok":
            result = info.get("result") or {}
            console.print(f"trial {tid} done: score {result.get('score', float('nan')):.2f}")
        elif kind == "cached":
            console.print(f"trial {tid}: finished earlier (cached)")
        elif kind == "failed":
            console.print(f"[red]trial {tid} failed[/red] ({info.get('error', '')}); log: {info.get('log', '')}")
        elif kind in ("started", "retry"):
            console.print(f"trial {tid} {kind}")

    return on_event


def run_selection(
    recipe: SelectionRecipe,
    out: Path,
    *,
    workers: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    executor: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    from curation.build.output_dir import OutputDir
    from curation.mixture.datasets import resolve_datasets, shown_paths
    from curation.selection.individual import TrialRunner, individual_select
    from curation.selection.launchers import make_launcher
    from curation.selection.report import write_reports
    from curation.selection.store import TrialStore
    from curation.storage.copies import fetch_recipe_files

    console = console or Console(stderr=True)
    target = OutputDir(Path(out))
    out = target.root
    target.create()
    with target.lock():
        dirs = resolve_datasets(recipe, out, workers, progress, executor, address)
        recipe = fetch_recipe_files(recipe)  # a trainer model or benchmarks in a bucket: copied into the cache
        store = TrialStore(out / STORE_NAME)
        launcher = make_launcher(recipe.launcher, out, ray_address=address)
        runner = TrialRunner(recipe, out, dirs, launcher, store, console_events(console))
        doc = individual_select(runner, recipe)
        datasets = {alias: {"path": shown} for alias, shown in shown_paths(recipe, dirs).items()}
        files = write_reports(out, doc, datasets, recipe.seed)
    doc["files"] = {k: str(v) for k, v in files.items()}
    return doc
