"""Run the global steps over the staged sidecars: ``unique_key`` (always), then the recipe's global steps in
order, each over what the previous ones kept, with their counts added to the build's accounting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curation.build.accounting import Accounting
from curation.build.messages import Staged
from curation.recipe import BuildRecipe, step_label
from curation.steps import GlobalStep, is_global, step_class
from curation.steps.contract import GlobalContext, GlobalDrops, ShardRewrite
from curation.steps.dedup import UniqueKey

UNIQUE_KEY = "unique_key"  # the always-on global step: keys are unique across the dataset

PairCounts = dict[str, dict[str, dict[str, int]]]  # step -> source -> source it duplicated -> samples


@dataclass
class GlobalOutcome:
    drops: GlobalDrops = field(default_factory=dict)
    duplicate_pairs: PairCounts = field(default_factory=dict)
    rewrites: list[ShardRewrite] = field(default_factory=list)


def global_steps(recipe: BuildRecipe) -> list[tuple[str, type[GlobalStep], Any]]:
    """(label, class, config) of every global step in order; ``unique_key`` has no config."""
    steps: list[tuple[str, type[GlobalStep], Any]] = [(UNIQUE_KEY, UniqueKey, None)]
    for i, cfg in enumerate(recipe.steps):
        if is_global(cfg):
            cls = step_class(cfg)
            assert issubclass(cls, GlobalStep)  # registration checks that the config and the class agree
            steps.append((step_label(recipe.steps, i), cls, cfg))
    return steps


def run_global_steps(
    recipe: BuildRecipe, staged: Staged, acc: Accounting, context: GlobalContext | None = None
) -> GlobalOutcome:
    """``context`` defaults to the staging's work directory, one thread, tasks run in this process."""
    context = context or GlobalContext(staged.work)
    sidecars = staged.sidecars()
    outcome = GlobalOutcome()
    pairs: PairCounts = {}
    previous = acc.step_names[-1]
    for label, cls, cfg in global_steps(recipe):
        acc.merge(Accounting([label]))
        counts = acc.steps[label]
        for source, n in acc.steps[previous].output.items():
            counts.input[source] += n
        found = cls.find(cfg, label, sidecars, outcome.drops, context)
        if found.rewrite is not None:
            outcome.rewrites.append(found.rewrite)
        for where, drops in found.drops.items():
            for key, drop in drops.items():
                outcome.drops.setdefault(where, {})[key] = drop
                counts.dropped[drop.source][drop.reason] += 1
                if drop.other_source is not None:
                    per = pairs.setdefault(label, {}).setdefault(drop.source, {})
                    per[drop.other_source] = per.get(drop.other_source, 0) + 1
        for source in counts.input:
            counts.output[source] = counts.input[source] - sum(counts.dropped[source].values())
        previous = label
    outcome.duplicate_pairs = {k: {s: dict(sorted(v.items())) for s, v in sorted(d.items())} for k, d in pairs.items()}
    return outcome
