"""Trials: a virtual mixture (which samples of which shards, in training order; nothing copied), a trainer
config, an evaluator config and a seed, identified by the content hash of the four.

``<sweep>/trials/<id>/trial.json`` describes a trial; ``python -m curation.selection.run_trial DIR`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.recipe import Component, DatasetRef, MixtureRecipe, Tokenizer
from shards import read_manifest
from shards.atomic import atomic_write_json, content_sha256, tmp_path

MIXTURE_NAME = "mixture.parquet"
TRIAL_NAME = "trial.json"
RESULT_NAME = "result.json"


def dataset_identity(path: Path) -> str:
    """What a built dataset holds: its recipe's identity and every shard's sha256 (a recipe hash alone says
    nothing of the data once builds are relocatable: the same recipe over other bytes is the same recipe)."""
    m = read_manifest(path)
    return content_sha256({"recipe": m.recipe_sha256, "shards": [s.sha256 for s in m.shards]})


@dataclass(frozen=True)
class VirtualMixture:
    """Components over built datasets; ``identity`` is the content hash of what the selection depends on."""

    components: tuple[Component, ...]
    dirs: dict[str, Path]
    seed: int
    tokenizer: Tokenizer

    @property
    def identity(self) -> str:
        datasets = {alias: dataset_identity(path) for alias, path in sorted(self.dirs.items())}
        used = sorted({c.dataset for c in self.components})
        return content_sha256(
            {
                "datasets": {a: datasets[a] for a in used},
                "components": [c.model_dump(mode="json") for c in self.components],
                "seed": self.seed,
                "tokenizer": self.tokenizer.model_dump(mode="json"),
            }
        )

    def write(self, path: Path) -> dict[str, Any]:
        """The manifest parquet (tar, idx, repeat, component, key) in training order; per-component counts."""
        from curation.mixture.sampling import plan_components, selection_table

        recipe = MixtureRecipe(
            kind="mixture",
            name="trial",
            seed=self.seed,
            datasets={alias: DatasetRef(path=str(p)) for alias, p in self.dirs.items()},
            components=list(self.components),
            tokenizer=self.tokenizer,
        )
        plans, total_tokens, _ = plan_components(recipe, self.dirs, path.parent)
        table = selection_table(recipe, plans, self.dirs).sort_by([("rank", "ascending"), ("component", "ascending")])
        table = pa.table(
            {
                "tar": table.column("tar"),
                "idx": table.column("idx"),
                "repeat": table.column("repeat"),
                "component": table.column("component"),
                "key": table.column("key"),
            }
        )
        tmp = tmp_path(path)
        pq.write_table(table, tmp)
        tmp.replace(path)
        return {
            "samples": table.num_rows,
            "planned_answer_tokens": round(total_tokens, 1),
            "components": {p.component.name: p.output_samples() for p in plans},
        }


def trial_id(mixture: VirtualMixture, trainer: dict, evaluator: dict, score: dict, seed: int) -> str:
    """The content hash of (mixture, trainer config, evaluator config, seed) [and the score formula]."""
    return content_sha256(
        {"mixture": mixture.identity, "trainer": trainer, "evaluator": evaluator, "score": score, "seed": seed}
    )[:16]


def prepare_trial(
    trials_dir: Path, mixture: VirtualMixture, trainer: dict, evaluator: dict, score: dict, seed: int, label: str
) -> tuple[str, Path]:
    """Write the trial's directory (mixture manifest and trial.json) unless it exists; (id, directory)."""
    tid = trial_id(mixture, trainer, evaluator, score, seed)
    directory = trials_dir / tid
    if (directory / TRIAL_NAME).is_file():
        return tid, directory
    directory.mkdir(parents=True, exist_ok=True)
    counts = mixture.write(directory / MIXTURE_NAME)
    atomic_write_json(
        directory / TRIAL_NAME,
        {
            "id": tid,
            "label": label,
            "mixture": MIXTURE_NAME,
            "mixture_identity": mixture.identity,
            "mixture_counts": counts,
            "components": [c.model_dump(mode="json") for c in mixture.components],
            "trainer": trainer,
            "evaluator": evaluator,
            "score": score,
            "seed": seed,
        },
    )
    return tid, directory
